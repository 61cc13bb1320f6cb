//! THE status decision: (the row's status, the exchange's answer, how often this order was unresolved
//! before) -> `Action`. Exchange truth wins, but only certain truth.
//!
//! Deliberately not here: I/O, clocks, SQL, JSON. Latency and timestamps of detection are the caller's.
//! Every other module that needs to know "what do we do with this order" calls `decide`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::config::StatusWords;
use crate::exchange::{ExchangeOrder, ExchangeStatus};

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
    /// No certain answer: timeout, 5xx, rate limit, unauthorized, unparseable body. Says why.
    Ambiguous(String),
}

/// What the exchange says happened, to be written to the bot's row as the exchange gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// The exchange's last fill time; `None` when it reported none (the row's fill time is then left alone).
    pub time: Option<DateTime<Utc>>,
    pub price: Option<Decimal>,
    pub size: Option<Decimal>,
}

/// Why an order could not be settled this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    NotFound,
    UnknownOrderStatus,
    UnrecognizedStatus(String),
    Ambiguous(String),
}

impl Unresolved {
    pub fn describe(&self) -> String {
        match self {
            Unresolved::NotFound => "the exchange does not know this order (404)".into(),
            Unresolved::UnknownOrderStatus => "the exchange answered UNKNOWN_ORDER_STATUS".into(),
            Unresolved::UnrecognizedStatus(word) => format!("the exchange answered an unknown status {word:?}"),
            Unresolved::Ambiguous(why) => format!("no certain answer: {why}"),
        }
    }
}

/// Nothing is written to the bot's row; this says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The row and the exchange agree (pending and live, or the same terminal status).
    InSync,
    /// No certain answer. `flagged` once it has happened `flag_after` times in a row.
    Unresolved { why: Unresolved, flagged: bool },
    /// The row is terminal and the exchange disagrees: a terminal row is never moved back.
    TerminalConflict,
    /// The row holds a word ordersync does not manage.
    NotManaged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The row says pending and the exchange is certain the order ended: write `to` and the fill.
    Correct {
        to: Terminal,
        fill: Fill,
    },
    Keep(Verdict),
}

/// How a check counts towards the accuracy SLI.
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
            Action::Correct { .. } | Action::Keep(Verdict::TerminalConflict) => Outcome::Mismatch,
            Action::Keep(Verdict::InSync) => Outcome::Match,
            Action::Keep(Verdict::Unresolved { .. } | Verdict::NotManaged) => Outcome::Unknown,
        }
    }

    /// A short word for audits and logs.
    pub fn verdict_word(&self) -> &'static str {
        match self {
            Action::Correct { .. } => "mismatch",
            Action::Keep(Verdict::InSync) => "in_sync",
            Action::Keep(Verdict::Unresolved { flagged: true, .. }) => "flagged",
            Action::Keep(Verdict::Unresolved { flagged: false, .. }) => "unresolved",
            Action::Keep(Verdict::TerminalConflict) => "terminal_conflict",
            Action::Keep(Verdict::NotManaged) => "not_managed",
        }
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

fn fill_of(order: &ExchangeOrder) -> Fill {
    let filled = !order.filled_size.is_zero();
    Fill {
        time: order.last_fill_time,
        price: if filled { order.average_filled_price } else { None },
        size: filled.then_some(order.filled_size),
    }
}

/// Decide what to do with one order.
///
/// `unresolved_before` is how many checks in a row were unresolved before this one; an order is flagged
/// when this check makes it `flag_after`.
pub fn decide(db: DbStatus, answer: &Answer, unresolved_before: u32, flag_after: u32) -> Action {
    let unresolved = |why: Unresolved| {
        let flagged = db == DbStatus::Pending && unresolved_before.saturating_add(1) >= flag_after;
        Action::Keep(Verdict::Unresolved { why, flagged })
    };
    let order = match answer {
        Answer::Order(order) => order,
        Answer::NotFound => return unresolved(Unresolved::NotFound),
        Answer::Ambiguous(why) => return unresolved(Unresolved::Ambiguous(why.clone())),
    };
    let ended = match settle(&order.status) {
        Ok(ended) => ended,
        Err(why) => return unresolved(why),
    };
    match (db, ended) {
        (DbStatus::Other, _) => Action::Keep(Verdict::NotManaged),
        (DbStatus::Pending, None) => Action::Keep(Verdict::InSync),
        (DbStatus::Pending, Some(to)) => Action::Correct { to, fill: fill_of(order) },
        (DbStatus::Terminal(row), Some(exchange)) if row == exchange => Action::Keep(Verdict::InSync),
        (DbStatus::Terminal(_), _) => Action::Keep(Verdict::TerminalConflict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::OrderId;
    use chrono::TimeZone;
    use std::str::FromStr;

    const FLAG_AFTER: u32 = 3;

    fn fill_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 10, 1, 10, 0, 3).unwrap()
    }

    fn order(status: ExchangeStatus, filled_size: &str, price: Option<&str>) -> ExchangeOrder {
        let filled = filled_size != "0";
        ExchangeOrder {
            order_id: OrderId::parse("d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10").unwrap(),
            product_id: "AVNT-USD".into(),
            status,
            created_time: None,
            last_fill_time: filled.then(fill_time),
            filled_size: Decimal::from_str(filled_size).unwrap(),
            average_filled_price: price.map(|p| Decimal::from_str(p).unwrap()),
        }
    }

    fn check(db: DbStatus, answer: Answer, expected: &Action) {
        assert_eq!(&decide(db, &answer, 0, FLAG_AFTER), expected, "db {db:?}, answer {answer:?}");
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
                    (DbStatus::Pending, Some(to), _) => Action::Correct {
                        to,
                        fill: Fill {
                            time: Some(fill_time()),
                            price: Some(Decimal::from_str("0.8373").unwrap()),
                            size: Some(Decimal::from(100)),
                        },
                    },
                    (DbStatus::Terminal(row), Some(exchange), _) if row == exchange => Action::Keep(Verdict::InSync),
                    (DbStatus::Terminal(_), _, _) => Action::Keep(Verdict::TerminalConflict),
                };
                check(db, answer, &expected);
            }
        }
    }

    #[test]
    fn filled_completes_with_the_exchange_figures() {
        let action =
            decide(DbStatus::Pending, &Answer::Order(order(ExchangeStatus::Filled, "12.5", Some("0.2196"))), 0, 3);
        let Action::Correct { to, fill } = action else { panic!("expected a correction, got {action:?}") };
        assert_eq!(to, Terminal::Completed);
        assert_eq!(fill.time, Some(fill_time()));
        assert_eq!(fill.price.map(|p| p.to_string()).as_deref(), Some("0.2196"));
        assert_eq!(fill.size.map(|s| s.to_string()).as_deref(), Some("12.5"));
    }

    #[test]
    fn a_cancel_with_nothing_filled_writes_no_figures() {
        let action = decide(DbStatus::Pending, &Answer::Order(order(ExchangeStatus::Cancelled, "0", None)), 0, 3);
        assert_eq!(
            action,
            Action::Correct { to: Terminal::Cancelled, fill: Fill { time: None, price: None, size: None } }
        );
    }

    #[test]
    fn a_partly_filled_expiry_keeps_the_partial_figures() {
        let answer = Answer::Order(order(ExchangeStatus::Expired, "40", Some("1.5")));
        let Action::Correct { to, fill } = decide(DbStatus::Pending, &answer, 0, 3) else { panic!() };
        assert_eq!(to, Terminal::Expired);
        assert_eq!((fill.size, fill.time), (Some(Decimal::from(40)), Some(fill_time())));
    }

    #[test]
    fn not_found_and_ambiguous_answers_never_change_anything_for_any_db_state() {
        for db in db_states() {
            for answer in [Answer::NotFound, Answer::Ambiguous("HTTP 503".into())] {
                let action = decide(db, &answer, 0, FLAG_AFTER);
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
        let flagged = |before| match decide(DbStatus::Pending, &Answer::NotFound, before, 3) {
            Action::Keep(Verdict::Unresolved { flagged, .. }) => flagged,
            other => panic!("{other:?}"),
        };
        assert_eq!((flagged(0), flagged(1), flagged(2), flagged(9)), (false, false, true, true));
        let unknown = Answer::Order(order(ExchangeStatus::UnknownOrderStatus, "0", None));
        assert!(matches!(
            decide(DbStatus::Pending, &unknown, 2, 3),
            Action::Keep(Verdict::Unresolved { flagged: true, .. })
        ));
        assert!(matches!(
            decide(DbStatus::Pending, &Answer::NotFound, 0, 1),
            Action::Keep(Verdict::Unresolved { flagged: true, .. })
        ));
    }

    #[test]
    fn outcomes_feed_the_accuracy_sli() {
        let pending_open = decide(DbStatus::Pending, &Answer::Order(order(ExchangeStatus::Open, "0", None)), 0, 3);
        let pending_filled =
            decide(DbStatus::Pending, &Answer::Order(order(ExchangeStatus::Filled, "1", Some("2"))), 0, 3);
        let conflict = decide(
            DbStatus::Terminal(Terminal::Completed),
            &Answer::Order(order(ExchangeStatus::Cancelled, "0", None)),
            0,
            3,
        );
        assert_eq!(pending_open.outcome(), Outcome::Match);
        assert_eq!(pending_filled.outcome(), Outcome::Mismatch);
        assert_eq!(conflict.outcome(), Outcome::Mismatch);
        assert_eq!(conflict, Action::Keep(Verdict::TerminalConflict));
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
    fn status_words_classify_by_configuration() {
        let words = StatusWords { pending: "OPEN".into(), completed: "DONE".into(), ..StatusWords::default() };
        assert_eq!(DbStatus::classify("OPEN", &words), DbStatus::Pending);
        assert_eq!(DbStatus::classify("DONE", &words), DbStatus::Terminal(Terminal::Completed));
        assert_eq!(DbStatus::classify("cancelled", &words), DbStatus::Terminal(Terminal::Cancelled));
        assert_eq!(DbStatus::classify("pending", &words), DbStatus::Other);
        assert_eq!(DbStatus::classify("Done", &words), DbStatus::Other, "words match exactly");
    }
}
