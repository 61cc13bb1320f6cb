//! THE status decision: (the row's status, the exchange's answer, the order's history and the time as
//! values) -> `Action`. Exchange truth wins, but only certain truth, and the bot goes first: a pending row
//! is corrected only `grace` after the order ended on the exchange. Also here: when an order ended
//! (`ended_at`), completing a FILLED answer from its fills, and resting versus blocking pending orders.
//!
//! Deliberately not here: I/O, reading the clock, SQL, JSON. Every other module that needs to know "what
//! do we do with this order" calls `decide`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::db::trades::StatusWords;
use crate::exchange::{ExchangeError, ExchangeFill, ExchangeOrder, ExchangeStatus};

/// The terminal statuses a bot's row can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Terminal {
    Completed,
    Cancelled,
    Expired,
    Failed,
}

impl Terminal {
    pub const ALL: [Terminal; 4] = [Terminal::Completed, Terminal::Cancelled, Terminal::Expired, Terminal::Failed];

    /// The bot's word for this status.
    pub fn word<'a>(&self, words: &'a StatusWords) -> &'a str {
        match self {
            Terminal::Completed => &words.completed,
            Terminal::Cancelled => &words.cancelled,
            Terminal::Expired => &words.expired,
            Terminal::Failed => &words.failed,
        }
    }
}

/// The row's status word, classified by the configured words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbStatus {
    Pending,
    Terminal(Terminal),
    /// A word ordersync was not told about: never touched.
    Other,
}

impl DbStatus {
    pub fn classify(word: &str, words: &StatusWords) -> DbStatus {
        if word == words.pending {
            return DbStatus::Pending;
        }
        Terminal::ALL
            .into_iter()
            .find(|terminal| terminal.word(words) == word)
            .map_or(DbStatus::Other, DbStatus::Terminal)
    }
}

/// What the exchange told us about one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Order(ExchangeOrder),
    /// Get Order answered 404.
    NotFound,
    /// No certain answer about this order: its fields unreadable, its id rejected, left out of a List Orders
    /// answer. The order's own trouble: counts towards its flag. Says why.
    Ambiguous(String),
    /// The exchange did not answer at all (a timeout, a 5xx, a rate limit, a refused key, a whole answer
    /// unreadable, not asked): the exchange's trouble, counted by the exchange metrics and alerts, never
    /// towards an order's flag, and nothing about the order is written. Says why.
    Unavailable(String),
}

impl Answer {
    /// Whether this is a certain answer (an order, or 404).
    pub fn is_certain(&self) -> bool {
        matches!(self, Answer::Order(_) | Answer::NotFound)
    }
}

/// What a failed request tells about the orders it asked for. `one_order`: the request was about one order
/// alone (Get Order, or a List Orders the exchange rejected until only this id was left), so an unreadable
/// or rejected answer is about that order; a whole answer unreadable is the exchange's trouble.
pub fn answer_for_error(error: &ExchangeError, one_order: bool) -> Answer {
    match error {
        ExchangeError::NotFound if one_order => Answer::NotFound,
        ExchangeError::Malformed(_) | ExchangeError::Rejected(_) if one_order => Answer::Ambiguous(error.to_string()),
        ExchangeError::NotFound
        | ExchangeError::Malformed(_)
        | ExchangeError::Rejected(_)
        | ExchangeError::Unauthorized(_)
        | ExchangeError::RateLimited { .. }
        | ExchangeError::Transient(_)
        | ExchangeError::NotOwner(_) => Answer::Unavailable(error.to_string()),
    }
}

/// The latency goal: an order's row is right within 2 minutes of the order ending on the exchange. An order
/// ordersync settles later than this is *late*, and counts against the effective accuracy.
pub const LATENCY_GOAL_MAX_SECONDS: f64 = 120.0;

/// Whether a correction this long after the order ended missed the latency goal.
pub fn late(latency_seconds: f64) -> bool {
    latency_seconds > LATENCY_GOAL_MAX_SECONDS
}

/// Who settled an ended order: each is settled exactly once, by one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SettledBy {
    /// The bot's row already held the right terminal status when ordersync checked it, or the bot wrote it
    /// within `grace` of the exchange's terminal event.
    Bot,
    /// ordersync had to write it: a correction, the mismatch the SLI is about.
    Ordersync,
    /// The bot's row ended it with another position (`position_conflict`): never written by ordersync, a
    /// miss of the bot, and late (the row is not right).
    Conflict,
}

impl SettledBy {
    pub const ALL: [SettledBy; 3] = [SettledBy::Bot, SettledBy::Ordersync, SettledBy::Conflict];

    pub fn as_str(&self) -> &'static str {
        match self {
            SettledBy::Bot => "bot",
            SettledBy::Ordersync => "ordersync",
            SettledBy::Conflict => "conflict",
        }
    }

    pub fn parse(word: &str) -> Option<SettledBy> {
        SettledBy::ALL.into_iter().find(|by| by.as_str() == word)
    }
}

/// Where the time an order ended on the exchange came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSource {
    /// The order's `last_fill_time` (FILLED orders).
    LastFillTime,
    /// The last `trade_time` of List Fills, when the order gave no `last_fill_time`.
    ListFills,
    /// The first time ordersync saw it ended, on the user channel (the message's timestamp).
    SeenWebsocket,
    /// The first poll that saw it ended.
    SeenPoll,
    /// The first manual check that saw it ended.
    SeenManual,
    /// The first check of the pending order that got no certain answer (a timeout, a 5xx, an unreadable
    /// reply) since the last one that saw it open, when that is earlier than the first sighting of its end:
    /// the order may have ended then, unseen, so an exchange outage counts in the sync latency.
    Unanswered,
    /// Not an end the exchange reported: the not-found policy wrote the order off (`NotFoundPolicy`) at the
    /// time of that check.
    NotFoundPolicy,
}

impl EndSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndSource::LastFillTime => "last_fill_time",
            EndSource::ListFills => "list_fills",
            EndSource::SeenWebsocket => "seen_websocket",
            EndSource::SeenPoll => "seen_poll",
            EndSource::SeenManual => "seen_manual",
            EndSource::Unanswered => "unanswered_check",
            EndSource::NotFoundPolicy => "not_found_policy",
        }
    }

    pub fn parse(word: &str) -> Option<EndSource> {
        [
            EndSource::LastFillTime,
            EndSource::ListFills,
            EndSource::SeenWebsocket,
            EndSource::SeenPoll,
            EndSource::SeenManual,
            EndSource::Unanswered,
            EndSource::NotFoundPolicy,
        ]
        .into_iter()
        .find(|source| source.as_str() == word)
    }
}

/// What the exchange says happened, to be written to the bot's row as the exchange gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// The exchange's last fill time; `None` when it reported none (the row's fill time is then left alone).
    pub time: Option<DateTime<Utc>>,
    pub price: Option<Decimal>,
    pub size: Option<Decimal>,
    /// When the order ended on the exchange: sync latency is measured from here.
    pub ended_at: DateTime<Utc>,
    pub end_source: EndSource,
    /// Figures a FILLED order's answer (and List Fills) did not give: written as NULL, warned about, counted.
    pub missing: Vec<&'static str>,
}

/// Why a pending row is corrected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Because {
    /// The exchange ended the order (FILLED, CANCELLED, EXPIRED, FAILED).
    ExchangeEnded,
    /// The opt-in not-found policy: Coinbase answered 404 at each of these times (each while it answered
    /// other orders of the account normally), at least `after_checks` times over at least `after`.
    NotFound { at: Vec<DateTime<Utc>> },
}

/// The opt-in policy for orders the exchange never knew (`[not_found]` in the configuration): an order
/// Coinbase answered 404 for at least `after_checks` times, over at least `after`, each time while it
/// answered other orders of the same account, is written as `write`. Off unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFoundPolicy {
    pub after_checks: u32,
    pub after: chrono::Duration,
    /// Never `Completed`: a fill is never claimed for an order the exchange does not know.
    pub write: Terminal,
}

/// Unresolved orders whose answer is about the order itself (404, an unknown status word) are asked again
/// after `poll_interval × 2^(n-1)` for the n-th such answer in a row, at most this long.
pub const UNRESOLVED_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// When to ask about an unresolved order again: `None` is the next pass (an answer that says nothing about
/// this order, such as a timeout or a 5xx, is the exchange's trouble, not the order's); otherwise after an
/// exponential backoff from `poll` that doubles with each unresolved answer in a row (`in_a_row`, this one
/// included), capped at `UNRESOLVED_BACKOFF_MAX`.
pub fn next_check(
    why: &Unresolved,
    in_a_row: u32,
    poll: std::time::Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match why {
        Unresolved::NotFound | Unresolved::UnknownOrderStatus | Unresolved::UnrecognizedStatus(_) => {
            let doublings = in_a_row.saturating_sub(1).min(20);
            let wait = poll.saturating_mul(1u32 << doublings).min(UNRESOLVED_BACKOFF_MAX);
            Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
        }
        Unresolved::Ambiguous(_) | Unresolved::Unavailable(_) | Unresolved::StillLive(_) => None,
    }
}

/// Why an order could not be settled this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    NotFound,
    UnknownOrderStatus,
    UnrecognizedStatus(String),
    Ambiguous(String),
    /// The exchange did not answer at all (`Answer::Unavailable`).
    Unavailable(String),
    /// The row is terminal but the exchange still shows the order live (a cancel in flight, say).
    StillLive(String),
}

impl Unresolved {
    pub fn describe(&self) -> String {
        match self {
            Unresolved::NotFound => "the exchange does not know this order (404)".into(),
            Unresolved::UnknownOrderStatus => "the exchange answered UNKNOWN_ORDER_STATUS".into(),
            Unresolved::UnrecognizedStatus(word) => format!("the exchange answered an unknown status {word:?}"),
            Unresolved::Ambiguous(why) => format!("no certain answer: {why}"),
            Unresolved::Unavailable(why) => format!("the exchange did not answer: {why}"),
            Unresolved::StillLive(word) => format!("the row is terminal but the exchange still shows {word}"),
        }
    }
}

/// Nothing is written to the bot's row; this says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The row is pending and the order is live on the exchange.
    InSync,
    /// The row is terminal and agrees with how the exchange ended the order: settled by the bot.
    SettledByBot,
    /// The exchange ended the order less than `grace` ago: the bot is given until `until` to write it.
    Waiting { until: DateTime<Utc> },
    /// No certain answer. `flagged` once it has happened `flag_after` times in a row (an answer the exchange
    /// did not give at all neither counts nor ends the run: the order stays as its check state says).
    Unresolved { why: Unresolved, flagged: bool },
    /// The row is terminal and the exchange ended the order with another position (`position_conflict`): a
    /// terminal row is never written; the conflict is reported.
    TerminalConflict,
    /// The row holds a word ordersync does not manage.
    NotManaged,
    /// The bot's table names another product than the exchange's order (`exchange`): a conflict, never
    /// written.
    ProductConflict { exchange: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The row says pending, the exchange is certain the order ended, and the grace period is over: write
    /// `to` and the fill.
    Correct {
        to: Terminal,
        fill: Fill,
        because: Because,
    },
    Keep(Verdict),
}

/// How a check counts in `ordersync_order_checks_total` (an operational figure; the SLI is per order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match,
    Mismatch,
    Unknown,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Match, Outcome::Mismatch, Outcome::Unknown];

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::Unknown => "unknown",
        }
    }
}

impl Action {
    pub fn outcome(&self) -> Outcome {
        match self {
            Action::Correct { .. } | Action::Keep(Verdict::TerminalConflict | Verdict::ProductConflict { .. }) => {
                Outcome::Mismatch
            }
            Action::Keep(Verdict::InSync | Verdict::SettledByBot) => Outcome::Match,
            Action::Keep(Verdict::Waiting { .. } | Verdict::Unresolved { .. } | Verdict::NotManaged) => {
                Outcome::Unknown
            }
        }
    }

    /// The verdict in one word, for audits, the API, check state and logs.
    pub fn verdict_word(&self) -> VerdictWord {
        match self {
            Action::Correct { .. } => VerdictWord::Mismatch,
            Action::Keep(Verdict::InSync) => VerdictWord::InSync,
            Action::Keep(Verdict::SettledByBot) => VerdictWord::SettledByBot,
            Action::Keep(Verdict::Waiting { .. }) => VerdictWord::Waiting,
            Action::Keep(Verdict::Unresolved { flagged: true, .. }) => VerdictWord::Flagged,
            Action::Keep(Verdict::Unresolved { flagged: false, .. }) => VerdictWord::Unresolved,
            Action::Keep(Verdict::TerminalConflict) => VerdictWord::TerminalConflict,
            Action::Keep(Verdict::NotManaged) => VerdictWord::NotManaged,
            Action::Keep(Verdict::ProductConflict { .. }) => VerdictWord::ProductConflict,
        }
    }
}

/// A check's verdict in one word (`Action::verdict_word`): what audits (`--json`), `/api/`, the check state
/// (`last_verdict`) and logs show, in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictWord {
    /// A pending row the exchange says ended (corrected, or held, or would be in a dry run).
    Mismatch,
    InSync,
    SettledByBot,
    Waiting,
    Unresolved,
    Flagged,
    TerminalConflict,
    ProductConflict,
    NotManaged,
}

impl VerdictWord {
    pub const ALL: [VerdictWord; 9] = [
        VerdictWord::Mismatch,
        VerdictWord::InSync,
        VerdictWord::SettledByBot,
        VerdictWord::Waiting,
        VerdictWord::Unresolved,
        VerdictWord::Flagged,
        VerdictWord::TerminalConflict,
        VerdictWord::ProductConflict,
        VerdictWord::NotManaged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerdictWord::Mismatch => "mismatch",
            VerdictWord::InSync => "in_sync",
            VerdictWord::SettledByBot => "settled_by_bot",
            VerdictWord::Waiting => "waiting",
            VerdictWord::Unresolved => "unresolved",
            VerdictWord::Flagged => "flagged",
            VerdictWord::TerminalConflict => "terminal_conflict",
            VerdictWord::ProductConflict => "product_conflict",
            VerdictWord::NotManaged => "not_managed",
        }
    }

    /// The verdict a stored word names (`as_str`'s inverse); `None` for any other word.
    pub fn parse(word: &str) -> Option<VerdictWord> {
        VerdictWord::ALL.into_iter().find(|verdict| verdict.as_str() == word)
    }

    /// A conflict: the row and the exchange disagree in a way ordersync never writes over.
    pub fn is_conflict(self) -> bool {
        matches!(self, VerdictWord::TerminalConflict | VerdictWord::ProductConflict)
    }
}

impl std::fmt::Display for VerdictWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`: table columns (`{:<17}`) line up.
        f.pad(self.as_str())
    }
}

/// Map an exchange status to where it leaves the order: `Ok(None)` still live, `Ok(Some(t))` ended,
/// `Err` no certain status.
fn settle(status: &ExchangeStatus) -> Result<Option<Terminal>, Unresolved> {
    match status {
        ExchangeStatus::Pending
        | ExchangeStatus::Queued
        | ExchangeStatus::Open
        | ExchangeStatus::CancelQueued
        | ExchangeStatus::EditQueued => Ok(None),
        ExchangeStatus::Filled => Ok(Some(Terminal::Completed)),
        ExchangeStatus::Cancelled => Ok(Some(Terminal::Cancelled)),
        ExchangeStatus::Expired => Ok(Some(Terminal::Expired)),
        ExchangeStatus::Failed => Ok(Some(Terminal::Failed)),
        ExchangeStatus::UnknownOrderStatus => Err(Unresolved::UnknownOrderStatus),
        ExchangeStatus::Unrecognized(word) => Err(Unresolved::UnrecognizedStatus(word.clone())),
    }
}

/// Whether this status ends an order, so that it could correct a pending row. Live statuses and statuses
/// without a certain meaning never do.
pub fn ends_order(status: &ExchangeStatus) -> bool {
    matches!(settle(status), Ok(Some(_)))
}

/// A pending order by what the exchange last said of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    /// The exchange says the order is live (OPEN, PENDING, QUEUED, CANCEL_QUEUED, EDIT_QUEUED): the bot is
    /// waiting on purpose. Never stuck, pages no one.
    Resting,
    /// The exchange said it ended, gave no certain answer, or was never asked: this may block the bot.
    Blocking,
}

impl PendingKind {
    /// Classify by the last status word the exchange gave (`None`: never checked, or no answer).
    pub fn of(last_exchange_status: Option<&str>) -> PendingKind {
        match last_exchange_status.map(|word| settle(&ExchangeStatus::parse(word))) {
            Some(Ok(None)) => PendingKind::Resting,
            _ => PendingKind::Blocking,
        }
    }
}

/// What `decide` needs besides the row and the answer: the clock and the order's history, as values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub now: DateTime<Utc>,
    /// How long after the exchange ended an order the bot is given to write it itself.
    pub grace: chrono::Duration,
    /// What this check counts as when it is the first to see the order ended.
    pub seen_by: EndSource,
    /// The earliest time ordersync saw this order ended before this check (an earlier poll, or the
    /// WebSocket message that announced it), and by what.
    pub seen_before: Option<(DateTime<Utc>, EndSource)>,
    /// Checks in a row that were unresolved before this one.
    pub unresolved_before: u32,
    /// An order is flagged when this check makes `flag_after` unresolved checks in a row.
    pub flag_after: u32,
    /// The order's check state says it is flagged (it stays so while the exchange does not answer).
    pub flagged_before: bool,
    /// The product the bot's row names, when its table has a product column.
    pub row_product: Option<String>,
    /// The not-found policy, when configured.
    pub not_found_policy: Option<NotFoundPolicy>,
    /// The earlier 404s that count towards the policy, oldest first.
    pub not_found_before: Vec<DateTime<Utc>>,
    /// The exchange answered other orders of this account normally in the same round: only then does a
    /// 404 count (an outage or a key that sees nothing never does).
    pub exchange_answering: bool,
    /// The first check of this pending order that got no certain answer since the last one that saw it
    /// open (`EndSource::Unanswered`); `None` when the last check before this one had an answer.
    pub unanswered_since: Option<DateTime<Utc>>,
}

impl Context {
    /// A context at `now` with no history, no grace and the default flag threshold of 3.
    pub fn at(now: DateTime<Utc>, seen_by: EndSource) -> Context {
        Context {
            now,
            grace: chrono::Duration::zero(),
            seen_by,
            seen_before: None,
            unresolved_before: 0,
            flag_after: 3,
            flagged_before: false,
            row_product: None,
            not_found_policy: None,
            not_found_before: Vec::new(),
            exchange_answering: false,
            unanswered_since: None,
        }
    }

    /// The 404s that count towards the not-found policy once this check answered 404: the earlier ones,
    /// and this one if the exchange was answering other orders.
    pub fn not_found_times(&self) -> Vec<DateTime<Utc>> {
        let mut times = self.not_found_before.clone();
        if self.exchange_answering {
            times.push(self.now);
        }
        times
    }

    /// The earliest sighting of the order as ended: an earlier one, or this check.
    pub fn first_seen(&self) -> (DateTime<Utc>, EndSource) {
        match self.seen_before {
            Some((at, by)) if at <= self.now => (at, by),
            _ => (self.now, self.seen_by),
        }
    }

    /// The earliest the order can have ended unseen: the first sighting of its end, or the first unanswered
    /// check before it.
    pub fn earliest_end(&self) -> (DateTime<Utc>, EndSource) {
        let seen = self.first_seen();
        match self.unanswered_since {
            Some(at) if at < seen.0 => (at, EndSource::Unanswered),
            _ => seen,
        }
    }
}

/// When the order ended on the exchange: the last fill time for FILLED; for CANCELLED, EXPIRED and FAILED
/// (and a FILLED order without a fill time) the earliest moment ordersync saw it ended, or could have seen
/// it had the exchange answered (`Context::earliest_end`), never the last fill time (a partly filled order
/// that expires hours later ended when it expired).
pub fn ended_at(order: &ExchangeOrder, context: &Context) -> (DateTime<Utc>, EndSource) {
    match (&order.status, order.last_fill_time) {
        (ExchangeStatus::Filled, Some(at)) if order.fill_time_from_fills => (at, EndSource::ListFills),
        (ExchangeStatus::Filled, Some(at)) => (at, EndSource::LastFillTime),
        _ => context.earliest_end(),
    }
}

/// Whether a FILLED order's answer lacks figures that List Fills can give (fill time, average price, size).
pub fn needs_fills(order: &ExchangeOrder) -> bool {
    order.status == ExchangeStatus::Filled
        && (order.last_fill_time.is_none()
            || order.average_filled_price.is_none()
            || order.filled_size.is_none_or(|size| size.is_zero()))
}

/// Fill in what a FILLED order's answer lacks from its fills: the size is their sum, the average price is
/// weighted by size, the fill time is the last trade's. Figures the order gave are kept as given.
pub fn complete_with_fills(order: &ExchangeOrder, fills: &[ExchangeFill]) -> ExchangeOrder {
    let mut completed = order.clone();
    let fills: Vec<&ExchangeFill> = fills.iter().filter(|fill| fill.order_id == order.order_id).collect();
    let size: Decimal = fills.iter().map(|fill| fill.size).sum();
    if fills.is_empty() || size.is_zero() {
        return completed;
    }
    if completed.filled_size.is_none_or(|s| s.is_zero()) {
        completed.filled_size = Some(size);
    }
    if completed.average_filled_price.is_none() {
        let value: Decimal = fills.iter().map(|fill| fill.price * fill.size).sum();
        completed.average_filled_price = Some((value / size).normalize());
    }
    if completed.last_fill_time.is_none() {
        completed.last_fill_time = fills.iter().map(|fill| fill.trade_time).max();
        completed.fill_time_from_fills = true;
    }
    completed
}

fn fill_of(order: &ExchangeOrder, context: &Context) -> Fill {
    let filled = !order.filled().is_zero();
    let (ended_at, end_source) = ended_at(order, context);
    let mut missing = Vec::new();
    if order.status == ExchangeStatus::Filled {
        if order.last_fill_time.is_none() {
            missing.push("last_fill_time");
        }
        if order.average_filled_price.is_none() {
            missing.push("average_filled_price");
        }
        if !filled {
            missing.push("filled_size");
        }
    }
    Fill {
        time: order.last_fill_time,
        price: if filled { order.average_filled_price } else { None },
        size: filled.then(|| order.filled()),
        ended_at,
        end_source,
        missing,
    }
}

/// Whether a terminal row and the exchange's end disagree about the bot's position: the row says the order
/// ended without a fill (cancelled, expired, failed) and Coinbase FILLED it (a position the bot does not
/// know about), or the row says completed and Coinbase ended it with nothing filled (a position the bot
/// thinks it has). Other differences in the terminal word (cancelled against EXPIRED, completed against a
/// partly filled CANCELLED) leave the bot's position as it believes: the order is settled by the bot.
pub fn position_conflict(row: Terminal, exchange: Terminal, filled: Decimal) -> bool {
    match (row, exchange) {
        (Terminal::Cancelled | Terminal::Expired | Terminal::Failed, Terminal::Completed) => true,
        (Terminal::Completed, Terminal::Cancelled | Terminal::Expired | Terminal::Failed) => filled.is_zero(),
        _ => false,
    }
}

/// The not-found policy's correction, when every condition holds: a pending row, the policy configured,
/// this 404 counted (the exchange was answering other orders), at least `after_checks` counted 404s, the
/// first at least `after` ago.
fn not_found(db: DbStatus, context: &Context) -> Option<Action> {
    let policy = context.not_found_policy?;
    if db != DbStatus::Pending || !context.exchange_answering {
        return None;
    }
    let times = context.not_found_times();
    let first = *times.first()?;
    let enough = times.len() >= usize::try_from(policy.after_checks).unwrap_or(usize::MAX);
    if !enough || context.now - first < policy.after {
        return None;
    }
    let fill = Fill {
        time: None,
        price: None,
        size: None,
        ended_at: context.now,
        end_source: EndSource::NotFoundPolicy,
        missing: Vec::new(),
    };
    Some(Action::Correct { to: policy.write, fill, because: Because::NotFound { at: times } })
}

/// Decide what to do with one order.
pub fn decide(db: DbStatus, answer: &Answer, context: &Context) -> Action {
    let unresolved = |why: Unresolved| {
        let flagged = db == DbStatus::Pending && context.unresolved_before.saturating_add(1) >= context.flag_after;
        Action::Keep(Verdict::Unresolved { why, flagged })
    };
    let order = match answer {
        Answer::Order(order) => order,
        Answer::NotFound => return not_found(db, context).unwrap_or_else(|| unresolved(Unresolved::NotFound)),
        Answer::Ambiguous(why) => return unresolved(Unresolved::Ambiguous(why.clone())),
        Answer::Unavailable(why) => {
            let flagged = db == DbStatus::Pending && context.flagged_before;
            return Action::Keep(Verdict::Unresolved { why: Unresolved::Unavailable(why.clone()), flagged });
        }
    };
    if db != DbStatus::Other {
        if let Some(row_product) = context.row_product.as_deref() {
            if !order.product_id.is_empty() && !order.product_id.trim().eq_ignore_ascii_case(row_product.trim()) {
                return Action::Keep(Verdict::ProductConflict { exchange: order.product_id.clone() });
            }
        }
    }
    let ended = match settle(&order.status) {
        Ok(ended) => ended,
        Err(why) => return unresolved(why),
    };
    match (db, ended) {
        (DbStatus::Other, _) => Action::Keep(Verdict::NotManaged),
        (DbStatus::Pending, None) => Action::Keep(Verdict::InSync),
        (DbStatus::Pending, Some(to)) => {
            let fill = fill_of(order, context);
            // The bot's grace runs from when the end could be known: an end dated back over an outage
            // (`Unanswered`) still gives the bot its grace from the first sighting.
            let known = match fill.end_source {
                EndSource::Unanswered => context.first_seen().0,
                _ => fill.ended_at,
            };
            let until = known + context.grace;
            if context.now < until {
                Action::Keep(Verdict::Waiting { until })
            } else {
                Action::Correct { to, fill, because: Because::ExchangeEnded }
            }
        }
        (DbStatus::Terminal(row), Some(exchange)) if position_conflict(row, exchange, order.filled()) => {
            Action::Keep(Verdict::TerminalConflict)
        }
        (DbStatus::Terminal(_), Some(_)) => Action::Keep(Verdict::SettledByBot),
        (DbStatus::Terminal(_), None) => {
            Action::Keep(Verdict::Unresolved { why: Unresolved::StillLive(order.status.to_string()), flagged: false })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::OrderId;
    use chrono::TimeZone;
    use std::str::FromStr;

    fn fill_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 10, 1, 10, 0, 3).unwrap()
    }

    /// Ten minutes after the fill: past any grace period.
    fn later() -> DateTime<Utc> {
        fill_time() + chrono::Duration::minutes(10)
    }

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn order(status: ExchangeStatus, filled_size: &str, price: Option<&str>) -> ExchangeOrder {
        let filled = filled_size != "0";
        ExchangeOrder {
            order_id: OrderId::parse("d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10").unwrap(),
            product_id: "AVNT-USD".into(),
            status,
            created_time: None,
            last_fill_time: filled.then(fill_time),
            filled_size: Some(dec(filled_size)),
            average_filled_price: price.map(dec),
            fill_time_from_fills: false,
        }
    }

    fn context() -> Context {
        Context::at(later(), EndSource::SeenPoll)
    }

    fn db_states() -> Vec<DbStatus> {
        let mut states = vec![DbStatus::Pending, DbStatus::Other];
        states.extend(Terminal::ALL.map(DbStatus::Terminal));
        states
    }

    fn ended(status: &ExchangeStatus) -> Option<Terminal> {
        match status {
            ExchangeStatus::Filled => Some(Terminal::Completed),
            ExchangeStatus::Cancelled => Some(Terminal::Cancelled),
            ExchangeStatus::Expired => Some(Terminal::Expired),
            ExchangeStatus::Failed => Some(Terminal::Failed),
            _ => None,
        }
    }

    fn live(status: &ExchangeStatus) -> bool {
        use ExchangeStatus::*;
        matches!(status, Pending | Queued | Open | CancelQueued | EditQueued)
    }

    /// The whole table: every documented status plus an unknown word, against every DB state.
    #[test]
    fn every_exchange_status_against_every_db_state() {
        let mut statuses = ExchangeStatus::DOCUMENTED.to_vec();
        statuses.push(ExchangeStatus::Unrecognized("SETTLING".into()));
        for status in &statuses {
            for db in db_states() {
                let answer = Answer::Order(order(status.clone(), "100", Some("0.8373")));
                let expected = match (db, ended(status), live(status)) {
                    (_, None, false) => {
                        let why = match status {
                            ExchangeStatus::UnknownOrderStatus => Unresolved::UnknownOrderStatus,
                            other => Unresolved::UnrecognizedStatus(other.as_str().into()),
                        };
                        Action::Keep(Verdict::Unresolved { why, flagged: false })
                    }
                    (DbStatus::Other, _, _) => Action::Keep(Verdict::NotManaged),
                    (DbStatus::Pending, None, true) => Action::Keep(Verdict::InSync),
                    (DbStatus::Pending, Some(to), _) => {
                        // A FILLED order ended at its last fill; the others when first seen ended (now).
                        let (ended_at, end_source) = if to == Terminal::Completed {
                            (fill_time(), EndSource::LastFillTime)
                        } else {
                            (later(), EndSource::SeenPoll)
                        };
                        Action::Correct {
                            to,
                            fill: Fill {
                                time: Some(fill_time()),
                                price: Some(dec("0.8373")),
                                size: Some(Decimal::from(100)),
                                ended_at,
                                end_source,
                                missing: Vec::new(),
                            },
                            because: Because::ExchangeEnded,
                        }
                    }
                    // The answer has 100 filled: only a row that says no fill against FILLED is a conflict.
                    (
                        DbStatus::Terminal(Terminal::Cancelled | Terminal::Expired | Terminal::Failed),
                        Some(Terminal::Completed),
                        _,
                    ) => Action::Keep(Verdict::TerminalConflict),
                    (DbStatus::Terminal(_), Some(_), _) => Action::Keep(Verdict::SettledByBot),
                    (DbStatus::Terminal(_), None, true) => Action::Keep(Verdict::Unresolved {
                        why: Unresolved::StillLive(status.as_str().into()),
                        flagged: false,
                    }),
                };
                assert_eq!(decide(db, &answer, &context()), expected, "db {db:?}, status {status}");
            }
        }
    }

    #[test]
    fn filled_completes_with_the_exchange_figures() {
        let answer = Answer::Order(order(ExchangeStatus::Filled, "12.5", Some("0.2196")));
        let action = decide(DbStatus::Pending, &answer, &context());
        let Action::Correct { to, fill, .. } = action else { panic!("expected a correction, got {action:?}") };
        assert_eq!(to, Terminal::Completed);
        assert_eq!(fill.time, Some(fill_time()));
        assert_eq!(fill.price.map(|p| p.to_string()).as_deref(), Some("0.2196"));
        assert_eq!(fill.size.map(|s| s.to_string()).as_deref(), Some("12.5"));
        assert!(fill.missing.is_empty());
    }

    #[test]
    fn a_cancel_with_nothing_filled_writes_no_figures() {
        let answer = Answer::Order(order(ExchangeStatus::Cancelled, "0", None));
        let Action::Correct { to, fill, .. } = decide(DbStatus::Pending, &answer, &context()) else { panic!() };
        assert_eq!(to, Terminal::Cancelled);
        assert_eq!((fill.time, fill.price, fill.size), (None, None, None));
        assert!(fill.missing.is_empty(), "a cancel has no figures to miss");
    }

    #[test]
    fn a_partly_filled_expiry_keeps_the_partial_figures_but_ended_when_it_expired() {
        let answer = Answer::Order(order(ExchangeStatus::Expired, "40", Some("1.5")));
        let Action::Correct { to, fill, .. } = decide(DbStatus::Pending, &answer, &context()) else { panic!() };
        assert_eq!(to, Terminal::Expired);
        assert_eq!((fill.size, fill.time), (Some(Decimal::from(40)), Some(fill_time())));
        assert_eq!((fill.ended_at, fill.end_source), (later(), EndSource::SeenPoll), "not the last fill time");
    }

    #[test]
    fn the_end_of_a_cancel_is_the_earliest_sighting() {
        let seen = later() - chrono::Duration::seconds(40);
        let context = Context { seen_before: Some((seen, EndSource::SeenWebsocket)), ..context() };
        let answer = Answer::Order(order(ExchangeStatus::Cancelled, "0", None));
        let Action::Correct { fill, .. } = decide(DbStatus::Pending, &answer, &context) else { panic!() };
        assert_eq!((fill.ended_at, fill.end_source), (seen, EndSource::SeenWebsocket));
        let future =
            Context { seen_before: Some((later() + chrono::Duration::hours(1), EndSource::SeenPoll)), ..context };
        let Action::Correct { fill, .. } = decide(DbStatus::Pending, &answer, &future) else { panic!() };
        assert_eq!(fill.ended_at, later(), "a sighting after now is no sighting");
    }

    #[test]
    fn a_cancel_after_unanswered_checks_ended_no_later_than_the_first_of_them() {
        let blind = later() - chrono::Duration::seconds(74);
        let cancel = Answer::Order(order(ExchangeStatus::Cancelled, "0", None));
        let grace = chrono::Duration::seconds(10);
        let after_outage = Context { unanswered_since: Some(blind), grace, ..context() };
        // First seen now: the bot still has its grace from now, and the wait says so.
        assert_eq!(
            decide(DbStatus::Pending, &cancel, &after_outage),
            Action::Keep(Verdict::Waiting { until: later() + grace })
        );
        // Once the grace is over, the end is dated to the first unanswered check: the outage is in the latency.
        let graced =
            Context { now: later() + grace, seen_before: Some((later(), EndSource::SeenPoll)), ..after_outage };
        let Action::Correct { fill, .. } = decide(DbStatus::Pending, &cancel, &graced) else { panic!() };
        assert_eq!((fill.ended_at, fill.end_source), (blind, EndSource::Unanswered));
        // A sighting before the outage (the WebSocket's news) is earlier still, and wins.
        let news = later() - chrono::Duration::seconds(90);
        let with_news = Context { seen_before: Some((news, EndSource::SeenWebsocket)), ..graced.clone() };
        let Action::Correct { fill, .. } = decide(DbStatus::Pending, &cancel, &with_news) else { panic!() };
        assert_eq!((fill.ended_at, fill.end_source), (news, EndSource::SeenWebsocket));
        // A fill is dated by the exchange, outage or not.
        let filled = Answer::Order(order(ExchangeStatus::Filled, "1", Some("2")));
        let Action::Correct { fill, .. } = decide(DbStatus::Pending, &filled, &graced) else { panic!() };
        assert_eq!((fill.ended_at, fill.end_source), (fill_time(), EndSource::LastFillTime));
        assert_eq!(EndSource::parse("unanswered_check"), Some(EndSource::Unanswered));
    }

    #[test]
    fn the_bot_is_given_grace_after_the_exchange_ended_the_order() {
        let answer = Answer::Order(order(ExchangeStatus::Filled, "1", Some("2")));
        let grace = chrono::Duration::seconds(10);
        let at = |seconds| Context {
            grace,
            ..Context::at(fill_time() + chrono::Duration::seconds(seconds), EndSource::SeenWebsocket)
        };
        assert_eq!(
            decide(DbStatus::Pending, &answer, &at(9)),
            Action::Keep(Verdict::Waiting { until: fill_time() + grace })
        );
        assert!(matches!(decide(DbStatus::Pending, &answer, &at(10)), Action::Correct { .. }));
        // A cancel seen now waits for grace from now.
        let cancel = Answer::Order(order(ExchangeStatus::Cancelled, "0", None));
        assert!(matches!(decide(DbStatus::Pending, &cancel, &at(100)), Action::Keep(Verdict::Waiting { .. })));
        // The bot's own terminal row is never waited for: it settled.
        assert_eq!(
            decide(DbStatus::Terminal(Terminal::Completed), &answer, &at(0)),
            Action::Keep(Verdict::SettledByBot)
        );
    }

    #[test]
    fn a_filled_answer_without_figures_says_what_is_missing() {
        let mut bare = order(ExchangeStatus::Filled, "0", None);
        bare.filled_size = None;
        assert!(needs_fills(&bare));
        let Action::Correct { fill, .. } = decide(DbStatus::Pending, &Answer::Order(bare.clone()), &context()) else {
            panic!()
        };
        assert_eq!(fill.missing, vec!["last_fill_time", "average_filled_price", "filled_size"]);
        assert_eq!((fill.price, fill.size, fill.time), (None, None, None));
        assert_eq!(fill.end_source, EndSource::SeenPoll, "without a fill time, the first sighting");
        assert!(!needs_fills(&order(ExchangeStatus::Filled, "1", Some("2"))));
        assert!(!needs_fills(&order(ExchangeStatus::Cancelled, "0", None)), "only FILLED orders need figures");
    }

    #[test]
    fn fills_complete_what_the_answer_lacks() {
        let mut bare = order(ExchangeStatus::Filled, "0", None);
        bare.filled_size = None;
        let fill = |seconds: i64, price: &str, size: &str| ExchangeFill {
            order_id: bare.order_id.clone(),
            trade_time: fill_time() + chrono::Duration::seconds(seconds),
            price: dec(price),
            size: dec(size),
        };
        let other = ExchangeFill { order_id: OrderId::parse("other").unwrap(), ..fill(99, "9", "9") };
        // 60 at 0.80 and 40 at 0.85: 100 at an average of 0.82.
        let completed = complete_with_fills(&bare, &[fill(0, "0.80", "60"), fill(5, "0.85", "40"), other]);
        assert_eq!(completed.filled_size, Some(dec("100")));
        assert_eq!(completed.average_filled_price, Some(dec("0.82")));
        assert_eq!(completed.last_fill_time, Some(fill_time() + chrono::Duration::seconds(5)));
        assert!(!needs_fills(&completed));
        let Action::Correct { fill: written, .. } = decide(DbStatus::Pending, &Answer::Order(completed), &context())
        else {
            panic!()
        };
        assert_eq!(written.end_source, EndSource::ListFills);
        assert_eq!(complete_with_fills(&bare, &[]), bare, "no fills, nothing made up");
        // Figures the order gave are kept.
        let given = order(ExchangeStatus::Filled, "100", Some("0.9"));
        assert_eq!(complete_with_fills(&given, &[fill(0, "0.80", "60")]), given);
    }

    #[test]
    fn not_found_and_ambiguous_answers_never_change_anything_for_any_db_state() {
        for db in db_states() {
            for answer in [
                Answer::NotFound,
                Answer::Ambiguous("malformed answer: size".into()),
                Answer::Unavailable("HTTP 503".into()),
            ] {
                let action = decide(db, &answer, &context());
                assert!(
                    matches!(action, Action::Keep(Verdict::Unresolved { flagged: false, .. })),
                    "{db:?} {answer:?}"
                );
                assert_eq!(action.outcome(), Outcome::Unknown);
            }
        }
    }

    #[test]
    fn unresolved_pending_orders_are_flagged_on_the_nth_check_in_a_row() {
        let with = |before, flag_after| Context { unresolved_before: before, flag_after, ..context() };
        let flagged = |before| match decide(DbStatus::Pending, &Answer::NotFound, &with(before, 3)) {
            Action::Keep(Verdict::Unresolved { flagged, .. }) => flagged,
            other => panic!("{other:?}"),
        };
        assert_eq!((flagged(0), flagged(1), flagged(2), flagged(9)), (false, false, true, true));
        let unknown = Answer::Order(order(ExchangeStatus::UnknownOrderStatus, "0", None));
        assert!(matches!(
            decide(DbStatus::Pending, &unknown, &with(2, 3)),
            Action::Keep(Verdict::Unresolved { flagged: true, .. })
        ));
        assert!(matches!(
            decide(DbStatus::Pending, &Answer::NotFound, &with(0, 1)),
            Action::Keep(Verdict::Unresolved { flagged: true, .. })
        ));
    }

    #[test]
    fn the_exchange_not_answering_never_flags_an_order_and_a_flagged_one_stays_flagged() {
        let with = |before, flagged_before| Context { unresolved_before: before, flagged_before, ..context() };
        let flagged = |db, before, was| match decide(db, &Answer::Unavailable("HTTP 503".into()), &with(before, was)) {
            Action::Keep(Verdict::Unresolved { why: Unresolved::Unavailable(_), flagged }) => flagged,
            other => panic!("{other:?}"),
        };
        // Two unresolved checks before: a third about the order would flag it, the exchange's trouble does not.
        assert_eq!((flagged(DbStatus::Pending, 0, false), flagged(DbStatus::Pending, 2, false)), (false, false));
        // Flagged already: it stays flagged. Not flagged with more checks in a row than `flag_after` now asks
        // (it was lowered since): the stored state stands until a check about the order.
        assert_eq!((flagged(DbStatus::Pending, 3, true), flagged(DbStatus::Pending, 9, false)), (true, false));
        assert!(!flagged(DbStatus::Terminal(Terminal::Completed), 9, true), "only pending orders are flagged");
    }

    #[test]
    fn a_failed_request_is_the_orders_trouble_only_when_it_was_about_that_order_alone() {
        let errors = [
            ExchangeError::NotFound,
            ExchangeError::Malformed("size".into()),
            ExchangeError::Rejected("bad id".into()),
            ExchangeError::Unauthorized("HTTP 401".into()),
            ExchangeError::RateLimited { retry_after: None },
            ExchangeError::Transient("HTTP 503".into()),
            ExchangeError::NotOwner("lease".into()),
        ];
        let kind = |answer: Answer| match answer {
            Answer::NotFound => "not_found",
            Answer::Ambiguous(_) => "ambiguous",
            Answer::Unavailable(_) => "unavailable",
            Answer::Order(_) => "order",
        };
        let one: Vec<&str> = errors.iter().map(|e| kind(answer_for_error(e, true))).collect();
        let many: Vec<&str> = errors.iter().map(|e| kind(answer_for_error(e, false))).collect();
        assert_eq!(
            one,
            ["not_found", "ambiguous", "ambiguous", "unavailable", "unavailable", "unavailable", "unavailable"]
        );
        assert_eq!(many, ["unavailable"; 7], "a whole answer failing says nothing about any one order");
        assert!(Answer::NotFound.is_certain() && !Answer::Unavailable(String::new()).is_certain());
        assert!(!Answer::Ambiguous(String::new()).is_certain());
    }

    #[test]
    fn outcomes_of_checks() {
        let pending_open =
            decide(DbStatus::Pending, &Answer::Order(order(ExchangeStatus::Open, "0", None)), &context());
        let pending_filled =
            decide(DbStatus::Pending, &Answer::Order(order(ExchangeStatus::Filled, "1", Some("2"))), &context());
        let conflict = decide(
            DbStatus::Terminal(Terminal::Completed),
            &Answer::Order(order(ExchangeStatus::Cancelled, "0", None)),
            &context(),
        );
        assert_eq!(pending_open.outcome(), Outcome::Match);
        assert_eq!(pending_filled.outcome(), Outcome::Mismatch);
        assert_eq!(conflict.outcome(), Outcome::Mismatch);
        assert_eq!(conflict, Action::Keep(Verdict::TerminalConflict));
    }

    /// Every pair of a terminal row and a terminal exchange status, with and without a fill.
    #[test]
    fn a_conflict_is_a_position_the_bot_does_not_know_or_thinks_it_has() {
        use Terminal::*;
        for row in Terminal::ALL {
            for exchange in Terminal::ALL {
                for filled in [Decimal::ZERO, Decimal::from(4)] {
                    let expected = match (row, exchange) {
                        (Cancelled | Expired | Failed, Completed) => true,
                        (Completed, Cancelled | Expired | Failed) => filled.is_zero(),
                        _ => false,
                    };
                    assert_eq!(position_conflict(row, exchange, filled), expected, "{row:?} {exchange:?} {filled}");
                }
            }
        }
        let cancelled_nothing = Answer::Order(order(ExchangeStatus::Cancelled, "0", None));
        assert_eq!(
            decide(DbStatus::Terminal(Terminal::Completed), &cancelled_nothing, &context()),
            Action::Keep(Verdict::TerminalConflict)
        );
        let expired = Answer::Order(order(ExchangeStatus::Expired, "0", None));
        assert_eq!(
            decide(DbStatus::Terminal(Terminal::Cancelled), &expired, &context()),
            Action::Keep(Verdict::SettledByBot),
            "no position either way"
        );
    }

    #[test]
    fn only_terminal_statuses_end_an_order() {
        let mut statuses = ExchangeStatus::DOCUMENTED.to_vec();
        statuses.push(ExchangeStatus::Unrecognized("SETTLING".into()));
        for status in statuses {
            assert_eq!(ends_order(&status), ended(&status).is_some(), "{status}");
        }
    }

    #[test]
    fn resting_orders_are_the_live_ones_everything_else_may_block() {
        for status in ExchangeStatus::DOCUMENTED {
            let expected = if live(&status) { PendingKind::Resting } else { PendingKind::Blocking };
            assert_eq!(PendingKind::of(Some(status.as_str())), expected, "{status}");
        }
        assert_eq!(PendingKind::of(Some("SETTLING")), PendingKind::Blocking);
        assert_eq!(PendingKind::of(None), PendingKind::Blocking, "never checked");
    }

    #[test]
    fn end_sources_read_back() {
        for source in [
            EndSource::LastFillTime,
            EndSource::ListFills,
            EndSource::SeenWebsocket,
            EndSource::SeenPoll,
            EndSource::SeenManual,
            EndSource::NotFoundPolicy,
        ] {
            assert_eq!(EndSource::parse(source.as_str()), Some(source));
        }
        assert_eq!(EndSource::parse("clock"), None);
    }

    #[test]
    fn status_words_classify_by_configuration() {
        let words = StatusWords { pending: "OPEN".into(), completed: "DONE".into(), ..StatusWords::default() };
        assert_eq!(DbStatus::classify("OPEN", &words), DbStatus::Pending);
        assert_eq!(DbStatus::classify("DONE", &words), DbStatus::Terminal(Terminal::Completed));
        assert_eq!(DbStatus::classify("cancelled", &words), DbStatus::Terminal(Terminal::Cancelled));
        assert_eq!(DbStatus::classify("pending", &words), DbStatus::Other);
        assert_eq!(DbStatus::classify("Done", &words), DbStatus::Other, "words match exactly");
    }

    fn policy() -> NotFoundPolicy {
        NotFoundPolicy { after_checks: 3, after: chrono::Duration::minutes(30), write: Terminal::Failed }
    }

    /// A context for a 404 at `later()`: `earlier` counted 404s that many minutes before it.
    fn not_found_context(earlier: &[i64], answering: bool, policy: Option<NotFoundPolicy>) -> Context {
        Context {
            not_found_policy: policy,
            not_found_before: earlier.iter().map(|m| later() - chrono::Duration::minutes(*m)).collect(),
            exchange_answering: answering,
            ..context()
        }
    }

    #[test]
    fn the_not_found_policy_fires_exactly_when_every_condition_holds() {
        let fires = |db, earlier: &[i64], answering, policy| {
            matches!(
                decide(db, &Answer::NotFound, &not_found_context(earlier, answering, policy)),
                Action::Correct { to: Terminal::Failed, .. }
            )
        };
        // Three counted 404s over 30 minutes, the exchange answering others: written off.
        assert!(fires(DbStatus::Pending, &[30, 10], true, Some(policy())));
        // Off by default.
        assert!(!fires(DbStatus::Pending, &[30, 10], true, None));
        // Too few 404s, however long.
        assert!(!fires(DbStatus::Pending, &[300], true, Some(policy())));
        // Enough 404s, not long enough.
        assert!(!fires(DbStatus::Pending, &[29, 10], true, Some(policy())));
        // This 404 came while the exchange answered no other order (an outage, a key that sees nothing).
        assert!(!fires(DbStatus::Pending, &[60, 30, 10], false, Some(policy())));
        // Only pending rows.
        for db in [DbStatus::Other, DbStatus::Terminal(Terminal::Cancelled)] {
            assert!(!fires(db, &[30, 10], true, Some(policy())));
        }
        let action = decide(DbStatus::Pending, &Answer::NotFound, &not_found_context(&[30, 10], true, Some(policy())));
        let Action::Correct { fill, because: Because::NotFound { at }, .. } = action else { panic!("{action:?}") };
        assert_eq!(at.len(), 3, "every counted 404's time");
        assert_eq!(at.last(), Some(&later()));
        assert_eq!((fill.time, fill.price, fill.size), (None, None, None), "no figures are invented");
        assert_eq!(fill.end_source, EndSource::NotFoundPolicy);
        // A certain answer about the order never goes through the policy.
        let open = Answer::Order(order(ExchangeStatus::Open, "0", None));
        assert_eq!(
            decide(DbStatus::Pending, &open, &not_found_context(&[30, 10], true, Some(policy()))),
            Action::Keep(Verdict::InSync)
        );
    }

    #[test]
    fn unresolved_orders_back_off_exponentially_when_the_answer_is_about_the_order() {
        let poll = std::time::Duration::from_secs(30);
        let now = later();
        let wait = |why: &Unresolved, n| next_check(why, n, poll, now).map(|at| (at - now).num_seconds());
        assert_eq!(wait(&Unresolved::NotFound, 1), Some(30));
        assert_eq!(wait(&Unresolved::NotFound, 2), Some(60));
        assert_eq!(wait(&Unresolved::NotFound, 4), Some(240));
        assert_eq!(wait(&Unresolved::NotFound, 7), Some(1800), "capped");
        assert_eq!(wait(&Unresolved::NotFound, u32::MAX), Some(1800), "capped, no overflow");
        assert_eq!(wait(&Unresolved::UnknownOrderStatus, 2), Some(60));
        assert_eq!(wait(&Unresolved::UnrecognizedStatus("SETTLING".into()), 3), Some(120));
        // The exchange's trouble (timeouts, 5xx, 429): asked again at the next pass.
        assert_eq!(wait(&Unresolved::Ambiguous("malformed answer: size".into()), 5), None);
        assert_eq!(wait(&Unresolved::Unavailable("HTTP 503".into()), 5), None);
        assert_eq!(wait(&Unresolved::StillLive("OPEN".into()), 5), None);
    }

    #[test]
    fn a_product_the_bot_did_not_trade_is_a_conflict_never_written() {
        let with_product = |product: &str| Context { row_product: Some(product.into()), ..context() };
        let filled = Answer::Order(order(ExchangeStatus::Filled, "100", Some("0.8373")));
        for db in [DbStatus::Pending, DbStatus::Terminal(Terminal::Completed)] {
            assert_eq!(
                decide(db, &filled, &with_product("BTC-USD")),
                Action::Keep(Verdict::ProductConflict { exchange: "AVNT-USD".into() }),
                "{db:?}"
            );
        }
        assert!(matches!(decide(DbStatus::Pending, &filled, &with_product("AVNT-USD")), Action::Correct { .. }));
        assert!(matches!(decide(DbStatus::Pending, &filled, &with_product("avnt-usd")), Action::Correct { .. }));
        assert!(matches!(decide(DbStatus::Pending, &filled, &context()), Action::Correct { .. }), "no product column");
        assert_eq!(decide(DbStatus::Other, &filled, &with_product("BTC-USD")), Action::Keep(Verdict::NotManaged));
        let conflict = decide(DbStatus::Pending, &filled, &with_product("BTC-USD"));
        assert_eq!((conflict.outcome(), conflict.verdict_word()), (Outcome::Mismatch, VerdictWord::ProductConflict));
    }

    #[test]
    fn each_verdict_word_is_written_as_its_json_form() {
        let mut seen = std::collections::HashSet::new();
        for word in VerdictWord::ALL {
            assert_eq!(serde_json::to_string(&word).unwrap(), format!("\"{}\"", word.as_str()));
            assert!(seen.insert(word.as_str()), "{word:?} said once");
            assert_eq!(VerdictWord::parse(word.as_str()), Some(word));
        }
    }
}
