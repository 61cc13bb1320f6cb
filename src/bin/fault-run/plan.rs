//! The run's script, drawn from the seed alone: every order's life on the exchange, what its bot writes and
//! when, and the fault windows. Pure: the same seed, order count and length give the same plan (its digest
//! is printed), whatever the machine does with the timing.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

/// How an order ends on the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fate {
    Filled,
    Cancelled,
    Expired,
    Failed,
    /// Still open when the run ends (sometimes partly filled).
    Resting,
}

impl Fate {
    /// The end status the simulator is told (`None`: the last fill ends it, or nothing does).
    pub fn end_status(self) -> Option<&'static str> {
        match self {
            Fate::Cancelled => Some("CANCELLED"),
            Fate::Expired => Some("EXPIRED"),
            Fate::Failed => Some("FAILED"),
            Fate::Filled | Fate::Resting => None,
        }
    }
}

/// What the order's bot writes to its own row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Habit {
    /// The exchange's outcome, soon after the end (within the grace period).
    OnTime,
    /// The exchange's outcome, long after the end (ordersync has usually written it by then).
    Late,
    /// Nothing: the incident ordersync exists for.
    Never,
    /// `cancelled`, written locally around the time the exchange fills the order.
    Conflicting,
}

/// One step of an order's life, at an offset from the start of the run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// The bot inserts its pending row and places the order.
    Place,
    /// The exchange fills `size` at `price` (the order is FILLED when nothing is left).
    Fill { size: Decimal, price: Decimal },
    /// The exchange ends the order with this status.
    End(&'static str),
    /// The bot writes the exchange's outcome as it last heard it.
    BotWritesOutcome,
    /// The bot writes `cancelled` on its own.
    BotCancels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderPlan {
    pub id: String,
    pub bot: String,
    pub product: &'static str,
    pub size: Decimal,
    pub price: Decimal,
    pub fate: Fate,
    pub habit: Habit,
    /// In time order; `Place` first.
    pub steps: Vec<(Duration, Step)>,
}

/// A fault, switched on for a window (or, for the instant ones, at a moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    ServerErrors,
    /// 429s; `retry_after` seconds in the header, none when 0.
    RateLimited {
        retry_after: u64,
    },
    /// Answers slower than the client's 10 s timeout.
    Timeouts,
    Malformed,
    Truncated,
    UnknownStatus,
    /// Orders that exist answered as unknown (eventual consistency).
    NotFound,
    WsDrops,
    WsDuplicates,
    WsReorders,
    /// Every user-channel connection closed (instant).
    WsDisconnect,
    /// The user channel silent for the window.
    WsStall,
    /// SQLite: a bot holds the write lock for the window. PostgreSQL: ordersync's connections terminated
    /// (instant).
    Database,
    /// Longer than ordersync's 5 s wait for a lock, so its writes fail and must be made again. SQLite: a bot
    /// holds the write lock; PostgreSQL: a bot's transaction holds the table in EXCLUSIVE mode (ordersync's
    /// 2 s `lock_timeout` gives up).
    DatabaseLong,
    /// `kill -9` of ordersync; restarted after the window. `aimed`: at a moment ordersync is inside a write
    /// transaction (seen with the process stopped, so the kill lands there).
    Kill {
        aimed: bool,
    },
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ServerErrors => "REST 5xx",
            FaultKind::RateLimited { retry_after: 0 } => "429 without Retry-After",
            FaultKind::RateLimited { .. } => "429 with Retry-After",
            FaultKind::Timeouts => "timeouts",
            FaultKind::Malformed => "malformed bodies",
            FaultKind::Truncated => "truncated bodies",
            FaultKind::UnknownStatus => "unknown status words",
            FaultKind::NotFound => "404 for orders that exist",
            FaultKind::WsDrops => "user channel: drops (sequence gaps)",
            FaultKind::WsDuplicates => "user channel: duplicates",
            FaultKind::WsReorders => "user channel: reordering",
            FaultKind::WsDisconnect => "user channel: disconnects",
            FaultKind::WsStall => "user channel: stalls",
            FaultKind::Database => "database locked / connections terminated",
            FaultKind::DatabaseLong => "database locked beyond ordersync's lock wait",
            FaultKind::Kill { aimed: false } => "kill -9 of ordersync at a random moment",
            FaultKind::Kill { aimed: true } => "kill -9 of ordersync mid-write (aimed)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultWindow {
    pub kind: FaultKind,
    pub from: Duration,
    pub length: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plan {
    pub seed: u64,
    pub faults_for: Duration,
    pub orders: Vec<OrderPlan>,
    /// Sorted by start.
    pub faults: Vec<FaultWindow>,
    /// The simulator's clock against the host's, in milliseconds.
    pub clock_skew_ms: i64,
}

const PRODUCTS: [&str; 4] = ["BTC-USD", "ETH-USD", "AVNT-USD", "MOODENG-USD"];
const BOTS: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

/// The grace period the run gives ordersync: on-time bots write well inside it, late ones well after it.
pub const GRACE: Duration = Duration::from_secs(3);

fn secs(rng: &mut StdRng, from: f64, to: f64) -> Duration {
    Duration::from_secs_f64(rng.gen_range(from..to))
}

/// Between two of the run's database locks, at least a bot's busy timeout of free time: locks that follow
/// each other at once would add up to a wait no bot sits out (two 3 s locks in a row lock a bot out for 6 s),
/// which is the run's doing, not ordersync's. A window pushed past the end of the faults is dropped.
pub const LOCK_GAP: Duration = Duration::from_secs(5);

fn space_out_locks(faults: &mut Vec<FaultWindow>, faults_for: Duration) {
    let is_lock = |w: &FaultWindow| matches!(w.kind, FaultKind::Database | FaultKind::DatabaseLong);
    let (mut locks, others): (Vec<FaultWindow>, Vec<FaultWindow>) = faults.drain(..).partition(is_lock);
    locks.sort_by_key(|w| (w.from, w.length));
    let mut free_from = Duration::ZERO;
    for mut lock in locks {
        lock.from = lock.from.max(free_from);
        if lock.from + lock.length > faults_for {
            continue;
        }
        free_from = lock.from + lock.length + LOCK_GAP;
        faults.push(lock);
    }
    faults.extend(others);
}

impl Plan {
    /// The plan for `orders` orders placed over `faults_for`, with faults over the same time.
    pub fn draw(seed: u64, orders: usize, faults_for: Duration) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let span = faults_for.as_secs_f64().max(1.0);
        let clock_skew_ms = rng.gen_range(-4000..=4000);
        let orders = (0..orders).map(|_| draw_order(&mut rng, span)).collect();
        let mut faults = Vec::new();
        // Each kind comes back about every `every` seconds of the run, for `length` seconds: they overlap.
        let kinds: [(FaultKind, f64, f64, f64); 15] = [
            (FaultKind::ServerErrors, 12.0, 2.0, 8.0),
            (FaultKind::RateLimited { retry_after: 1 }, 20.0, 2.0, 6.0),
            (FaultKind::RateLimited { retry_after: 0 }, 20.0, 2.0, 6.0),
            (FaultKind::Timeouts, 30.0, 3.0, 12.0),
            (FaultKind::Malformed, 15.0, 2.0, 6.0),
            (FaultKind::Truncated, 15.0, 2.0, 6.0),
            (FaultKind::UnknownStatus, 15.0, 2.0, 6.0),
            (FaultKind::NotFound, 12.0, 3.0, 10.0),
            (FaultKind::WsDrops, 12.0, 3.0, 10.0),
            (FaultKind::WsDuplicates, 12.0, 3.0, 10.0),
            (FaultKind::WsReorders, 12.0, 3.0, 10.0),
            (FaultKind::WsDisconnect, 15.0, 0.0, 0.1),
            (FaultKind::WsStall, 20.0, 3.0, 15.0),
            (FaultKind::Database, 10.0, 0.5, 3.0),
            (FaultKind::DatabaseLong, 60.0, 6.0, 8.0),
        ];
        for (kind, every, shortest, longest) in kinds {
            let count = ((span / every).round() as usize).max(1);
            for _ in 0..count {
                let from = secs(&mut rng, 0.0, span);
                let length = if longest > shortest { secs(&mut rng, shortest, longest) } else { Duration::ZERO };
                // Every fault is over when the faulty part of the run ends.
                let length = length.min(faults_for.saturating_sub(from));
                faults.push(FaultWindow { kind, from, length });
            }
        }
        space_out_locks(&mut faults, faults_for);
        // kill -9 every 15 s or so, ordersync down for up to 3 s; the first well after the start. Every other
        // kill waits for a write transaction to be under way.
        let kills = ((span / 15.0).round() as usize).max(2);
        for n in 0..kills {
            let from = secs(&mut rng, (span * 0.1).min(5.0), span);
            let length = secs(&mut rng, 0.2, 3.0).min(faults_for.saturating_sub(from));
            faults.push(FaultWindow { kind: FaultKind::Kill { aimed: n % 2 == 1 }, from, length });
        }
        faults.sort_by_key(|w| (w.from, w.length));
        Plan { seed, faults_for, orders, faults, clock_skew_ms }
    }

    /// A short fingerprint of the whole plan, printed so that two runs of one seed can be compared.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // FNV-1a: stable across Rust versions and machines, unlike `DefaultHasher`.
        struct Fnv(u64);
        impl Hasher for Fnv {
            fn finish(&self) -> u64 {
                self.0
            }
            fn write(&mut self, bytes: &[u8]) {
                for byte in bytes {
                    self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
        self.hash(&mut hasher);
        hasher.finish()
    }

    /// The REST and user-channel fault rates in force at `at` (overlapping windows add up to the highest
    /// rate of each kind).
    pub fn rates_at(&self, at: Duration) -> ordersync::sandbox::Faults {
        let mut faults = ordersync::sandbox::Faults::default();
        for window in self.faults.iter().filter(|w| w.from <= at && at < w.from + w.length) {
            match window.kind {
                FaultKind::ServerErrors => faults.error_5xx_rate = 0.3,
                FaultKind::RateLimited { retry_after } => {
                    faults.rate_limit_rate = 0.2;
                    faults.retry_after_seconds = faults.retry_after_seconds.max(retry_after);
                }
                FaultKind::Timeouts => {
                    faults.latency_rate = 0.05;
                    faults.latency_ms = 11_000;
                }
                FaultKind::Malformed => faults.malformed_rate = 0.15,
                FaultKind::Truncated => faults.truncated_rate = 0.15,
                FaultKind::UnknownStatus => faults.unknown_status_rate = 0.1,
                FaultKind::NotFound => faults.not_found_rate = 0.2,
                FaultKind::WsDrops => faults.ws_drop_rate = 0.3,
                FaultKind::WsDuplicates => faults.ws_duplicate_rate = 0.3,
                FaultKind::WsReorders => faults.ws_reorder_rate = 0.3,
                FaultKind::WsDisconnect
                | FaultKind::WsStall
                | FaultKind::Database
                | FaultKind::DatabaseLong
                | FaultKind::Kill { .. } => {}
            }
        }
        faults
    }

    /// The moments the REST and user-channel rates change, in order.
    pub fn rate_changes(&self) -> Vec<Duration> {
        let mut at: Vec<Duration> = self
            .faults
            .iter()
            .filter(|w| w.length > Duration::ZERO)
            .flat_map(|w| [w.from, w.from + w.length])
            .filter(|t| *t <= self.faults_for)
            .collect();
        at.sort();
        at.dedup();
        at
    }
}

fn draw_order(rng: &mut StdRng, span: f64) -> OrderPlan {
    let id = uuid::Builder::from_random_bytes(rng.gen()).into_uuid().to_string();
    let bot = BOTS[rng.gen_range(0..BOTS.len())].to_string();
    let product = PRODUCTS[rng.gen_range(0..PRODUCTS.len())];
    let size = Decimal::new(rng.gen_range(1..=5000), 2);
    let price = Decimal::new(rng.gen_range(100..=900_000), 4);
    let fate = match rng.gen_range(0..100) {
        0..=54 => Fate::Filled,
        55..=74 => Fate::Cancelled,
        75..=79 => Fate::Expired,
        80..=82 => Fate::Failed,
        _ => Fate::Resting,
    };
    let habit = match (fate, rng.gen_range(0..100)) {
        (Fate::Resting, _) => Habit::Never,
        (Fate::Filled, 0..=9) => Habit::Conflicting,
        (_, 0..=54) => Habit::OnTime,
        (_, 55..=69) => Habit::Late,
        _ => Habit::Never,
    };
    // Placed within the first three quarters of the run; the exchange ends it 0.5 to 8 s later.
    let placed = secs(rng, 0.0, span * 0.75);
    let life = secs(rng, 0.5, 8.0);
    let ends = placed + life;
    let mut steps = vec![(placed, Step::Place)];
    // A price near the limit for each fill, in the product's ticks.
    // The lowest price is 0.0100, so this stays above zero.
    let fill_price = |rng: &mut StdRng| price - Decimal::new(rng.gen_range(0..50), 4);
    match fate {
        Fate::Filled => {
            let fills = rng.gen_range(1..=3usize);
            let mut left = size;
            for n in 1..fills {
                let part = (size * Decimal::new(rng.gen_range(10..40), 2)).round_dp(2).min(left - Decimal::new(1, 2));
                if part <= Decimal::ZERO {
                    break;
                }
                left -= part;
                let at = placed + life.mul_f64(n as f64 / fills as f64);
                steps.push((at, Step::Fill { size: part, price: fill_price(rng) }));
            }
            steps.push((ends, Step::Fill { size: left, price: fill_price(rng) }));
        }
        Fate::Cancelled | Fate::Expired | Fate::Failed | Fate::Resting => {
            if rng.gen_bool(0.4) && size > Decimal::new(1, 2) {
                let part = (size * Decimal::new(rng.gen_range(10..60), 2)).round_dp(2).max(Decimal::new(1, 2));
                let part = part.min(size - Decimal::new(1, 2));
                steps.push((placed + life / 2, Step::Fill { size: part, price: fill_price(rng) }));
            }
            if let Some(status) = fate.end_status() {
                steps.push((ends, Step::End(status)));
            }
        }
    }
    match habit {
        Habit::OnTime => steps.push((ends + secs(rng, 0.05, GRACE.as_secs_f64() * 0.6), Step::BotWritesOutcome)),
        Habit::Late => steps.push((ends + secs(rng, GRACE.as_secs_f64() + 5.0, 20.0), Step::BotWritesOutcome)),
        Habit::Never => {}
        // The bot cancels locally from 1.5 s before to 1.5 s after the exchange fills the order.
        Habit::Conflicting => {
            let at = (ends + Duration::from_millis(1500)).saturating_sub(secs(rng, 0.0, 3.0));
            steps.push((at.max(placed + Duration::from_millis(100)), Step::BotCancels));
        }
    }
    steps.sort_by_key(|(at, step)| (*at, matches!(step, Step::BotCancels | Step::BotWritesOutcome)));
    OrderPlan { id, bot, product, size, price, fate, habit, steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_plan_and_another_seed_another() {
        let a = Plan::draw(7, 500, Duration::from_secs(60));
        assert_eq!(a, Plan::draw(7, 500, Duration::from_secs(60)));
        assert_eq!(a.digest(), Plan::draw(7, 500, Duration::from_secs(60)).digest());
        let b = Plan::draw(8, 500, Duration::from_secs(60));
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.orders[0].id, b.orders[0].id);
    }

    #[test]
    fn a_plan_holds_every_fate_habit_and_fault() {
        let plan = Plan::draw(1, 2000, Duration::from_secs(120));
        for fate in [Fate::Filled, Fate::Cancelled, Fate::Expired, Fate::Failed, Fate::Resting] {
            assert!(plan.orders.iter().any(|o| o.fate == fate), "{fate:?}");
        }
        for habit in [Habit::OnTime, Habit::Late, Habit::Never, Habit::Conflicting] {
            assert!(plan.orders.iter().any(|o| o.habit == habit), "{habit:?}");
        }
        let names: std::collections::BTreeSet<&str> = plan.faults.iter().map(|w| w.kind.name()).collect();
        assert_eq!(names.len(), 17, "{names:?}");
        // Faults overlap: some moment has at least three REST or user-channel kinds on at once.
        let most = plan
            .rate_changes()
            .iter()
            .map(|at| plan.faults.iter().filter(|w| w.from <= *at && *at < w.from + w.length).count())
            .max();
        assert!(most >= Some(3), "{most:?}");
    }

    #[test]
    fn the_runs_database_locks_never_follow_each_other_within_a_bots_busy_timeout() {
        let plan = Plan::draw(7, 0, Duration::from_secs(600));
        let mut locks: Vec<&FaultWindow> =
            plan.faults.iter().filter(|w| matches!(w.kind, FaultKind::Database | FaultKind::DatabaseLong)).collect();
        locks.sort_by_key(|w| w.from);
        assert!(locks.len() > 40, "{}", locks.len());
        assert!(locks.iter().any(|w| w.kind == FaultKind::DatabaseLong));
        for pair in locks.windows(2) {
            assert!(pair[1].from >= pair[0].from + pair[0].length + LOCK_GAP, "{pair:?}");
        }
        assert!(locks.iter().all(|w| w.from + w.length <= plan.faults_for));
    }

    #[test]
    fn every_order_is_placed_first_and_its_fills_add_up() {
        let plan = Plan::draw(3, 1000, Duration::from_secs(60));
        for order in &plan.orders {
            assert_eq!(order.steps[0].1, Step::Place, "{order:?}");
            assert!(order.steps.windows(2).all(|w| w[0].0 <= w[1].0), "{order:?}");
            let filled: Decimal = order
                .steps
                .iter()
                .filter_map(|(_, s)| match s {
                    Step::Fill { size, .. } => Some(*size),
                    _ => None,
                })
                .sum();
            assert!(filled > Decimal::ZERO || order.fate != Fate::Filled, "{order:?}");
            assert_eq!(filled == order.size, order.fate == Fate::Filled, "{order:?}");
            assert!(order.steps.iter().all(|(_, s)| !matches!(s, Step::Fill { price, .. } if *price <= Decimal::ZERO)));
        }
    }

    #[test]
    fn rates_follow_the_windows_that_are_on() {
        let mut plan = Plan::draw(1, 0, Duration::from_secs(60));
        plan.faults = vec![
            FaultWindow {
                kind: FaultKind::ServerErrors,
                from: Duration::from_secs(10),
                length: Duration::from_secs(5),
            },
            FaultWindow {
                kind: FaultKind::RateLimited { retry_after: 1 },
                from: Duration::from_secs(12),
                length: Duration::from_secs(5),
            },
        ];
        assert_eq!(plan.rates_at(Duration::from_secs(9)), ordersync::sandbox::Faults::default());
        let both = plan.rates_at(Duration::from_secs(13));
        assert_eq!((both.error_5xx_rate, both.rate_limit_rate, both.retry_after_seconds), (0.3, 0.2, 1));
        assert_eq!(plan.rates_at(Duration::from_secs(16)).error_5xx_rate, 0.0);
        let secs: Vec<u64> = plan.rate_changes().iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 12, 15, 17]);
    }
}
