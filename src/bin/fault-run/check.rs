//! The checker: the bot's table (and every change made to it, from a trigger), ordersync's events, the
//! simulator's ground truth and what the run did, compared at the end. Pure: everything it needs is
//! collected first.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

/// The exchange's final word on an order (`GET /sandbox/orders`, no faults).
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub status: String,
    pub filled_size: Decimal,
    pub average_price: Option<Decimal>,
    pub last_fill_time: Option<DateTime<Utc>>,
}

/// One change to a bot's row, as the trigger logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub order_id: String,
    pub old_status: String,
    /// `None`: the row was deleted.
    pub new_status: Option<String>,
    /// The bot counts its own writes in `bot_writes`: a change that did not move it was ordersync's.
    pub by_bot: bool,
    /// The row carried a bot's write before this change.
    pub after_bot_write: bool,
    pub filled_at: Option<DateTime<Utc>>,
    pub filled_price: Option<f64>,
    pub filled_size: Option<f64>,
    pub at: DateTime<Utc>,
}

/// One of ordersync's audit events.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub order_id: String,
    pub outcome: String,
    pub to_status: Option<String>,
    pub source: String,
    pub applied_at: Option<DateTime<Utc>>,
}

/// What the run did to one order, in the runner's words and clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderLog {
    pub lines: Vec<(DateTime<Utc>, String)>,
    /// When the exchange ended the order (the runner's clock, when the simulator confirmed).
    pub ended_at: Option<DateTime<Utc>>,
    /// The statuses the bot wrote, in order.
    pub bot_wrote: Vec<String>,
}

/// Everything the checker reads.
#[derive(Debug, Default)]
pub struct Collected {
    pub truth: HashMap<String, Truth>,
    /// The bot's rows at the end: order id and status.
    pub rows: HashMap<String, String>,
    pub changes: Vec<Change>,
    pub events: Vec<Event>,
    /// The events as read beside the last scrape of the counters (before ordersync was stopped).
    pub counted_events: Vec<Event>,
    pub logs: HashMap<String, OrderLog>,
    /// The last ordersync process: when it started and what its counters said at the end.
    pub final_start: DateTime<Utc>,
    pub corrections_counted: f64,
    pub mismatches_counted: f64,
    /// Exits of ordersync the run did not cause.
    pub crashes: Vec<String>,
    /// Bot writes that met `database is locked` after their own busy timeout: when each attempt began and
    /// when it failed.
    pub bot_lock_errors: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// When the run itself held the database locked longer than a bot's busy timeout (`DatabaseLong`).
    pub long_locks: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Faults the run failed to switch on or off: a run that missed its faults proves nothing.
    pub injection_errors: Vec<String>,
    /// When faults stopped.
    pub faults_until: DateTime<Utc>,
}

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub name: &'static str,
    pub found: usize,
    /// The first order that broke it, when an order did.
    pub first: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    pub verdicts: Vec<Verdict>,
    pub corrected: usize,
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    pub beyond_goal: usize,
    pub ended: usize,
    pub settled_by_bot: usize,
    /// Bot writes that gave up while the run's own long lock was held: the run's doing, not ordersync's.
    pub locked_by_the_run: usize,
}

impl Findings {
    pub fn first_broken(&self) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| v.found > 0)
    }
}

/// The bot's word for an exchange status (ordersync's default mapping), `None` while the order is live.
pub fn word(exchange_status: &str) -> Option<&'static str> {
    match exchange_status {
        "FILLED" => Some("completed"),
        "CANCELLED" => Some("cancelled"),
        "EXPIRED" => Some("expired"),
        "FAILED" => Some("failed"),
        _ => None,
    }
}

pub const PENDING: &str = "pending";
/// The sync-latency goal.
pub const GOAL_SECONDS: f64 = 120.0;

/// Whether a bot write that waited from `began` to `failed` waited on the run's own long lock: it began at
/// most a second before the lock was taken and gave up while it was held (with half a second for SQLite's
/// last sleep before it reports the lock). A write that waited seconds before the lock came is not excused.
fn under_long_lock(began: DateTime<Utc>, failed: DateTime<Utc>, long_locks: &[(DateTime<Utc>, DateTime<Utc>)]) -> bool {
    let (before, slack) = (chrono::Duration::seconds(1), chrono::Duration::milliseconds(500));
    long_locks.iter().any(|(from, to)| *from - before <= began && *from <= failed && failed <= *to + slack)
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        _ => false,
    }
}

/// Where an ordersync write's figures differ from the exchange's, if they do. Times are compared to the
/// millisecond ordersync writes to SQLite.
fn figures_differ(change: &Change, truth: &Truth) -> Option<String> {
    let filled = !truth.filled_size.is_zero();
    let size = filled.then(|| truth.filled_size.to_f64()).flatten();
    let price = if filled { truth.average_price.and_then(|p| p.to_f64()) } else { None };
    let time_ok = match (change.filled_at, truth.last_fill_time) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() < Duration::milliseconds(1),
        _ => false,
    };
    let mut wrong = Vec::new();
    if !time_ok {
        wrong.push(format!("fill time {:?}, exchange {:?}", change.filled_at, truth.last_fill_time));
    }
    if !close(change.filled_price, price) {
        wrong.push(format!("price {:?}, exchange {price:?}", change.filled_price));
    }
    if !close(change.filled_size, size) {
        wrong.push(format!("size {:?}, exchange {size:?}", change.filled_size));
    }
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

struct Tally {
    name: &'static str,
    found: usize,
    first: Option<String>,
    detail: Option<String>,
}

impl Tally {
    fn new(name: &'static str) -> Tally {
        Tally { name, found: 0, first: None, detail: None }
    }

    fn hit(&mut self, order: &str, detail: impl FnOnce() -> String) {
        self.found += 1;
        if self.first.is_none() {
            self.first = Some(order.to_string());
            self.detail = Some(detail());
        }
    }

    fn verdict(self) -> Verdict {
        Verdict { name: self.name, found: self.found, first: self.first, detail: self.detail }
    }
}

/// Compare everything and give each invariant's count.
pub fn check(c: &Collected) -> Findings {
    let mut false_completions = Tally::new("false completions (written terminal, not how the exchange ended it)");
    let mut regressions = Tally::new("regressions (a terminal row moved)");
    let mut overwritten = Tally::new("bot writes overwritten");
    let mut lost = Tally::new("lost updates (ended on the exchange, still pending after settling)");
    let mut figures = Tally::new("figures that differ from the exchange's (fill time, price, size)");
    let mut unpaired = Tally::new("corrections without exactly one event, events without a correction");
    let mut deleted = Tally::new("bot rows deleted");
    let mut metrics = Tally::new("metrics against events (corrections, mismatches counted = events)");
    let mut crashes = Tally::new("ordersync exits the run did not cause");
    let mut locked = Tally::new("bot writes that met `database is locked` beyond their busy timeout");
    let mut uninjected = Tally::new("faults the run could not inject");

    let mut by_order: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for change in &c.changes {
        by_order.entry(change.order_id.as_str()).or_default().push(change);
    }
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for event in c.events.iter().filter(|e| e.outcome == "applied") {
        *applied.entry(event.order_id.as_str()).or_default() += 1;
    }
    let mut latencies = Vec::new();
    let mut beyond_goal = 0;
    for (order, changes) in &by_order {
        let truth = c.truth.get(*order);
        let mut ours = 0;
        for change in changes {
            let Some(new_status) = &change.new_status else {
                deleted.hit(order, || format!("deleted at {}", change.at));
                continue;
            };
            if change.by_bot {
                continue;
            }
            ours += 1;
            let expected = truth.and_then(|t| word(&t.status));
            if expected != Some(new_status.as_str()) {
                false_completions.hit(order, || {
                    format!("ordersync wrote {new_status:?}; the exchange: {:?}", truth.map(|t| &t.status))
                });
            }
            if change.old_status != PENDING {
                regressions.hit(order, || format!("ordersync moved {:?} to {new_status:?}", change.old_status));
            }
            if change.after_bot_write {
                overwritten.hit(order, || format!("ordersync wrote {new_status:?} over the bot's write"));
            }
            if let Some(truth) = truth {
                if let Some(why) = figures_differ(change, truth) {
                    figures.hit(order, || why);
                }
            }
            if let Some(ended) = c.logs.get(*order).and_then(|l| l.ended_at) {
                if ended <= c.faults_until {
                    let seconds = (change.at - ended).num_milliseconds() as f64 / 1000.0;
                    latencies.push(seconds);
                    if seconds > GOAL_SECONDS {
                        beyond_goal += 1;
                    }
                }
            }
        }
        let events = applied.get(order).copied().unwrap_or(0);
        if ours != events || ours > 1 {
            unpaired.hit(order, || format!("{ours} corrections, {events} events"));
        }
    }
    for (order, count) in &applied {
        if !by_order.contains_key(order) {
            unpaired.hit(order, || format!("0 corrections, {count} events"));
        }
    }
    let mut ended = 0;
    let mut settled_by_bot = 0;
    for (order, truth) in &c.truth {
        let Some(final_word) = word(&truth.status) else { continue };
        ended += 1;
        let row = c.rows.get(order).map(String::as_str);
        if row == Some(PENDING) {
            lost.hit(order, || format!("the exchange ended it {}; the row says pending", truth.status));
        }
        let log = c.logs.get(order);
        if let Some(last) = log.and_then(|l| l.bot_wrote.last()) {
            if row != Some(last.as_str()) {
                overwritten.hit(order, || format!("the bot wrote {last:?} last; the row says {row:?}"));
            }
            if last == final_word {
                settled_by_bot += 1;
            }
        }
    }
    // The last process's counters against the events it wrote.
    let since: Vec<&Event> =
        c.counted_events.iter().filter(|e| e.outcome == "applied" && e.applied_at >= Some(c.final_start)).collect();
    let events_since = since.len() as f64;
    if c.corrections_counted != events_since || c.mismatches_counted != events_since {
        metrics.hit("-", || {
            format!(
                "ordersync_corrections_total {} and ordersync_mismatches_total {}, events applied by that process {}",
                c.corrections_counted, c.mismatches_counted, events_since
            )
        });
    }
    for crash in &c.crashes {
        crashes.hit("-", || crash.clone());
    }
    let (by_the_run, others): (Vec<_>, Vec<_>) =
        c.bot_lock_errors.iter().partition(|(began, failed)| under_long_lock(*began, *failed, &c.long_locks));
    for (began, failed) in others {
        locked.hit("-", || format!("a bot write began {began}, gave up {failed}"));
    }
    for error in &c.injection_errors {
        uninjected.hit("-", || error.clone());
    }
    latencies.sort_by(f64::total_cmp);
    Findings {
        corrected: latencies.len(),
        latency_p50: percentile(&latencies, 0.5),
        latency_p99: percentile(&latencies, 0.99),
        beyond_goal,
        ended,
        settled_by_bot,
        locked_by_the_run: by_the_run.len(),
        verdicts: vec![
            false_completions.verdict(),
            regressions.verdict(),
            overwritten.verdict(),
            lost.verdict(),
            figures.verdict(),
            unpaired.verdict(),
            deleted.verdict(),
            metrics.verdict(),
            crashes.verdict(),
            locked.verdict(),
            uninjected.verdict(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + seconds, 0).unwrap()
    }

    const ID: &str = "6f1b8f36-0000-4000-8000-000000000001";

    fn filled() -> Truth {
        Truth {
            status: "FILLED".into(),
            filled_size: Decimal::from_str("2.5").unwrap(),
            average_price: Some(Decimal::from_str("0.8373").unwrap()),
            last_fill_time: Some(at(10)),
        }
    }

    fn ours(new_status: &str) -> Change {
        Change {
            order_id: ID.into(),
            old_status: PENDING.into(),
            new_status: Some(new_status.into()),
            by_bot: false,
            after_bot_write: false,
            filled_at: Some(at(10)),
            filled_price: Some(0.8373),
            filled_size: Some(2.5),
            at: at(15),
        }
    }

    fn applied() -> Event {
        Event {
            order_id: ID.into(),
            outcome: "applied".into(),
            to_status: Some("completed".into()),
            source: "poll".into(),
            applied_at: Some(at(15)),
        }
    }

    /// One FILLED order that ordersync corrected, by the book; `change` bends it.
    fn history(change: impl FnOnce(&mut Collected)) -> Findings {
        let mut c = Collected {
            final_start: at(0),
            faults_until: at(100),
            corrections_counted: 1.0,
            mismatches_counted: 1.0,
            ..Collected::default()
        };
        c.truth.insert(ID.into(), filled());
        c.rows.insert(ID.into(), "completed".into());
        c.changes.push(ours("completed"));
        c.events.push(applied());
        c.counted_events.push(applied());
        c.logs.insert(ID.into(), OrderLog { ended_at: Some(at(10)), ..OrderLog::default() });
        change(&mut c);
        check(&c)
    }

    fn broken(findings: &Findings) -> Vec<(&'static str, usize)> {
        findings.verdicts.iter().filter(|v| v.found > 0).map(|v| (v.name, v.found)).collect()
    }

    #[test]
    fn a_correction_by_the_book_breaks_nothing_and_counts_its_latency() {
        let findings = history(|_| {});
        assert_eq!(broken(&findings), []);
        assert_eq!((findings.corrected, findings.latency_p50, findings.beyond_goal), (1, Some(5.0), 0));
        assert_eq!(findings.ended, 1);
    }

    #[test]
    fn each_broken_invariant_is_found() {
        type Bend = Box<dyn FnOnce(&mut Collected)>;
        let cases: Vec<(&str, Bend)> = vec![
            ("false completions", Box::new(|c| c.truth.get_mut(ID).unwrap().status = "CANCELLED".into())),
            ("false completions", Box::new(|c| c.truth.get_mut(ID).unwrap().status = "OPEN".into())),
            ("regressions", Box::new(|c| c.changes[0].old_status = "cancelled".into())),
            (
                "bot writes overwritten",
                Box::new(|c| {
                    c.changes[0].after_bot_write = true;
                    c.logs.get_mut(ID).unwrap().bot_wrote.push("completed".into());
                }),
            ),
            (
                "bot writes overwritten",
                Box::new(|c| {
                    c.changes.push(Change { by_bot: true, new_status: Some("cancelled".into()), ..ours("x") });
                    c.logs.get_mut(ID).unwrap().bot_wrote.push("cancelled".into());
                }),
            ),
            (
                "lost updates",
                Box::new(|c| {
                    c.rows.insert(ID.into(), PENDING.into());
                }),
            ),
            ("figures", Box::new(|c| c.changes[0].filled_price = Some(0.84))),
            ("figures", Box::new(|c| c.changes[0].filled_at = Some(at(15)))),
            ("figures", Box::new(|c| c.changes[0].filled_size = None)),
            ("corrections without", Box::new(|c| c.events.clear())),
            ("corrections without", Box::new(|c| c.events.push(applied()))),
            ("corrections without", Box::new(|c| c.changes.clear())),
            ("bot rows deleted", Box::new(|c| c.changes.push(Change { new_status: None, ..ours("x") }))),
            ("metrics against events", Box::new(|c| c.corrections_counted = 0.0)),
            ("metrics against events", Box::new(|c| c.mismatches_counted = 2.0)),
            ("ordersync exits", Box::new(|c| c.crashes.push("exit status 101".into()))),
            ("database is locked", Box::new(|c| c.bot_lock_errors = vec![(at(20), at(25)), (at(30), at(35))])),
            (
                "database is locked",
                Box::new(|c| {
                    // Gave up after the run's own long lock was over: not the run's doing.
                    c.long_locks = vec![(at(18), at(24))];
                    c.bot_lock_errors = vec![(at(20), at(25))];
                }),
            ),
            (
                "database is locked",
                Box::new(|c| {
                    // Waited 3 s before the run's lock came: something else held the database then.
                    c.long_locks = vec![(at(18), at(25))];
                    c.bot_lock_errors = vec![(at(15), at(20))];
                }),
            ),
            ("faults the run could not inject", Box::new(|c| c.injection_errors.push("PUT /sandbox/faults".into()))),
        ];
        for (expected, bend) in cases {
            let findings = history(bend);
            let names = broken(&findings);
            assert!(names.iter().any(|(name, _)| name.contains(expected)), "{expected}: {names:?}");
            assert!(findings.first_broken().is_some());
        }
    }

    #[test]
    fn an_order_the_bot_settled_is_not_ordersyncs_and_a_late_write_over_ordersyncs_is_allowed() {
        let findings = history(|c| {
            c.changes.push(Change { by_bot: true, after_bot_write: false, ..ours("completed") });
            c.logs.get_mut(ID).unwrap().bot_wrote.push("completed".into());
        });
        assert_eq!(broken(&findings), []);
        assert_eq!(findings.settled_by_bot, 1);
    }

    #[test]
    fn a_bot_write_that_gave_up_under_the_runs_own_long_lock_is_not_held_against_ordersync() {
        let findings = history(|c| {
            c.long_locks = vec![(at(18), at(25))];
            c.bot_lock_errors = vec![(at(19), at(24)), (at(20), at(25))];
        });
        assert_eq!(broken(&findings), []);
        assert_eq!(findings.locked_by_the_run, 2);
    }

    #[test]
    fn latency_counts_only_orders_ended_while_faults_were_on_and_flags_the_slow() {
        let findings = history(|c| {
            c.changes[0].at = at(10 + 121);
        });
        assert_eq!((findings.beyond_goal, findings.latency_p99), (1, Some(121.0)));
        let findings = history(|c| c.faults_until = at(5));
        assert_eq!(findings.corrected, 0);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&values, 0.5), percentile(&values, 0.99)), (Some(50.0), Some(99.0)));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
