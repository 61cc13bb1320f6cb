//! The reconciler: pending rows -> exchange -> `decide` -> `Store::write_batch`. `check_many` is the one
//! apply path: the poll loop, a manual reconcile of one order, due checks (a WebSocket update, or a poll
//! that found an order ended less than `grace` ago) and the check of recent terminal rows all end there.
//!
//! Deliberately not here: the decision itself (`decide.rs`), SQL (`db/`), HTTP and JSON. Cancellation is
//! honoured only between orders, never inside a batch write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::account::{AccountMap, Belongs, DEFAULT_ACCOUNT};
use crate::db::{
    Applied, CheckRecord, CheckState, ConflictKind, Correction, NewConflict, Source, Store, StoreError, Write, Written,
};
use crate::decide::{
    answer_for_error, complete_with_fills, decide, ended_at, ends_order, late, needs_fills, next_check, Action, Answer,
    Because, Context, DbStatus, EndSource, NotFoundPolicy, SettledBy, Unresolved, Verdict, VerdictWord,
};
use crate::exchange::{Exchange, ExchangeError, ExchangeOrder};
use crate::metrics::Metrics;
use crate::order::{OrderId, TradeRow};
use crate::replica::Ownership;

/// Terminal rows the exchange gave no settling answer for (still live, absent, no certain answer) are asked
/// about again after this long, not every pass...
pub const TERMINAL_RECHECK_AFTER: Duration = Duration::from_secs(300);
/// ... and given up after this many such answers in a row (ordersync never writes a terminal row; only the
/// count of the bot's own settlements and conflict detection are lost for it).
pub const TERMINAL_GIVE_UP_AFTER: u32 = 3;
/// Wake-ups (a WebSocket gap, a reconnect, a stall, a manual request) start at most one extra pass per this
/// long, however many arrive.
pub const WAKE_COALESCE: Duration = Duration::from_secs(5);
/// At most this many recent terminal rows are checked in one pass (the rest in the next ones).
pub const TERMINAL_CHECKS_PER_PASS: usize = 1000;

/// What the reconciler needs from the configuration (`SIGHUP` may swap it: read it where it is used).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub poll_interval: Duration,
    /// How long after the exchange ended an order the bot is given to write it itself.
    pub grace: Duration,
    pub flag_after: u32,
    pub batch_size: usize,
    /// Terminal rows created within this window are checked once against the exchange.
    pub verify_window: Duration,
    /// The opt-in policy for orders the exchange never knew (`None`: off, the default).
    pub not_found: Option<NotFoundPolicy>,
    /// The brake on mass corrections.
    pub brake: Brake,
    /// Everything runs and every number is exported, but nothing is ever written to the bot's table.
    pub observe_only: bool,
}

/// The 404 times kept for the not-found policy (its `after_checks` is at most this).
pub const NOT_FOUND_TIMES_KEPT: usize = 100;

/// Above this many corrections in a pass, the share rule of the brake applies as well.
pub const BRAKE_SHARE_FLOOR: usize = 10;

/// The brake on mass corrections: a wrong mapping (the wrong status word, the wrong account's key) could
/// make one pass rewrite thousands of rows. A pass that would correct more than `max_corrections` rows, or
/// more than `max_share` of the pending rows (once more than `BRAKE_SHARE_FLOOR`), writes no correction and
/// waits for an operator. Corrections from the WebSocket path since the pass began count too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Brake {
    pub max_corrections: usize,
    pub max_share: f64,
    /// An operator allowed any number (`reconcile --once --allow-mass-correction`).
    pub allowed: bool,
}

impl Default for Brake {
    fn default() -> Brake {
        Brake { max_corrections: 1000, max_share: 0.5, allowed: false }
    }
}

impl Brake {
    /// Whether `corrections` among `pending` rows is a mass correction.
    pub fn trips(&self, corrections: usize, pending: usize) -> bool {
        if self.allowed {
            return false;
        }
        let share = corrections > BRAKE_SHARE_FLOOR && corrections as f64 > self.max_share * pending as f64;
        corrections > self.max_corrections || share
    }
}

/// The brake held a pass's corrections.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Held {
    /// The corrections the pass would have written (WebSocket ones since the pass began included).
    pub would_correct: usize,
    /// The pending rows at the time (with those the WebSocket path corrected since the last pass began).
    pub pending: usize,
    pub max_corrections: usize,
    pub max_share: f64,
    pub since: DateTime<Utc>,
}

/// Why corrections are not written in an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// `observe_only`.
    Observe,
    /// The mass-correction brake.
    Brake,
}

/// The brake's state shared by the poll and WebSocket paths.
#[derive(Debug, Default)]
struct BrakeState {
    /// Engaged by the last pass (or a WebSocket batch since): corrections wait for an operator.
    held: Option<Held>,
    /// WebSocket corrections written since the current pass began.
    since_pass: usize,
    /// Pending rows at the last pass.
    pending: usize,
}

/// Write corrections, or only report what would be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
}

/// A pending row no configured account claims, as audit lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Unmatched {
    pub order_id: String,
    pub bot_id: Option<String>,
    /// What the row's account column holds, when the table has one.
    pub account: Option<String>,
}

/// One order checked: what the exchange said, what was decided, what happened.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub order_id: String,
    pub bot_id: Option<String>,
    pub product_id: Option<String>,
    pub db_status: String,
    /// `None` when the row's creation time cannot be read (`created_raw` then holds it as stored).
    pub created_at: Option<DateTime<Utc>>,
    pub created_raw: Option<String>,
    pub age_seconds: Option<i64>,
    /// The exchange's status word, when it gave one.
    pub exchange_status: Option<String>,
    pub verdict: VerdictWord,
    pub result: CheckResult,
    pub detail: Option<String>,
}

/// What a check did, in one word (`snake_case` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    /// The row was corrected.
    Corrected,
    /// A dry run or observe-only: it would have been corrected.
    WouldCorrect,
    /// The mass-correction brake held the correction.
    Held,
    /// The bot changed the row meanwhile: not overwritten.
    RowChanged,
    /// Another writer had already written the same terminal status.
    AlreadySettled,
    /// Nothing to write to the bot's row (its check state may be recorded).
    Unchanged,
    /// The account went to another replica mid-pass, which checks it now.
    NotWritten,
    /// Writing failed; the order was left as it was.
    Error,
}

impl CheckResult {
    pub const ALL: [CheckResult; 8] = [
        CheckResult::Corrected,
        CheckResult::WouldCorrect,
        CheckResult::Held,
        CheckResult::RowChanged,
        CheckResult::AlreadySettled,
        CheckResult::Unchanged,
        CheckResult::NotWritten,
        CheckResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Corrected => "corrected",
            CheckResult::WouldCorrect => "would_correct",
            CheckResult::Held => "held",
            CheckResult::RowChanged => "row_changed",
            CheckResult::AlreadySettled => "already_settled",
            CheckResult::Unchanged => "unchanged",
            CheckResult::NotWritten => "not_written",
            CheckResult::Error => "error",
        }
    }

    /// The row was corrected, now or by an earlier writer.
    pub fn settled(self) -> bool {
        matches!(self, CheckResult::Corrected | CheckResult::AlreadySettled)
    }
}

/// One order to decide on: its row, the exchange's answer, its check state, and an earlier sighting of it
/// ended that the check state may not hold yet (a WebSocket message).
pub struct Item<'r, 'a> {
    pub row: &'r TradeRow,
    pub answer: &'a Answer,
    pub state: Option<&'a CheckState>,
    pub hint: Option<(DateTime<Utc>, EndSource)>,
    /// The exchange answered some other order with an order in the same lookup: only then does a 404
    /// count towards the not-found policy.
    pub answering: bool,
}

/// Whether a lookup's answers hold at least one order (the exchange answered normally).
fn answering(answers: &HashMap<OrderId, Answer>) -> bool {
    answers.values().any(|answer| matches!(answer, Answer::Order(_)))
}

/// One order decided on, before its write.
pub struct Plan<'a> {
    row: &'a TradeRow,
    /// The account the row belongs to (its events carry it).
    account: String,
    action: Action,
    exchange_status: Option<String>,
    /// A bounded word for the exchange's answer.
    label: &'static str,
    /// When the exchange says it ended: when it ended, and how ordersync knows.
    ended: Option<(DateTime<Utc>, EndSource)>,
    /// The first sighting of it ended (this check, or an earlier one).
    seen: Option<(DateTime<Utc>, EndSource)>,
    /// The exchange's filled size and product, for a conflict's record.
    filled_size: Option<String>,
    exchange_product: Option<String>,
    /// The check state before this check (a check that changes nothing in it is not written).
    previous: Option<CheckState>,
    /// When to ask again (the backoff of unresolved orders).
    next_check_at: Option<DateTime<Utc>>,
    /// The 404s that count towards the not-found policy after this check.
    not_found_at: Vec<DateTime<Utc>>,
    checked: Checked,
    /// The check's span, from the decision to the commit (`check_span`).
    span: tracing::Span,
}

/// The span an order's check carries from the decision to the commit: which order, whose, and where the
/// news came from (a WebSocket event's order is followed by its id and `source = websocket`).
fn check_span(row: &TradeRow, account: &str, source: Source) -> tracing::Span {
    tracing::info_span!(
        "check",
        order_id = %row.order_id,
        bot = row.bot_id.as_deref().unwrap_or(""),
        account,
        source = source.as_str()
    )
}

/// Whether a check record would leave the check state as it is: the same exchange status and verdict, no
/// error, no flag, no new sighting, no backoff, no settlement. Such a check is not written (a steady pass over
/// resting orders writes nothing); unresolved checks about the order always are (they count towards a flag
/// and the backoff), while a check the exchange did not answer at all never is (`Plan::write`).
fn unchanged(previous: Option<&CheckState>, record: &CheckRecord) -> bool {
    let Some(p) = previous else { return false };
    let standing_product_conflict =
        |c: &NewConflict| c.kind == ConflictKind::Product && p.last_verdict == record.verdict.as_str();
    record.error.is_none()
        && !record.flagged
        && !record.settles
        && record.conflict.as_ref().is_none_or(standing_product_conflict)
        && record.next_check_at.is_none()
        && record.not_found_at.is_empty()
        && p.unresolved_in_a_row == 0
        && !p.flagged
        && p.next_check_at.is_none()
        && p.not_found_at.is_empty()
        && p.last_exchange_status.as_deref() == record.exchange_status
        && p.last_verdict == record.verdict.as_str()
        && (record.seen.is_none() || p.ended_seen.is_some())
}

impl Plan<'_> {
    fn corrects(&self) -> bool {
        matches!(self.action, Action::Correct { .. })
    }

    /// What to write for this order: nothing when the check changes nothing; a held correction (observe-only,
    /// the brake) is recorded as a check that saw the mismatch.
    fn write(&self, source: Source, now: DateTime<Utc>, hold: Option<Hold>) -> Option<Write<'_>> {
        // The exchange did not answer: nothing about the order changed, nothing is written.
        if let Action::Keep(Verdict::Unresolved { why: Unresolved::Unavailable(_), .. }) = &self.action {
            return None;
        }
        if let (Action::Correct { to, fill, because }, None) = (&self.action, hold) {
            return Some(Write::Correction(Correction {
                row: self.row,
                to: *to,
                fill,
                exchange_status: self.exchange_status.as_deref().unwrap_or(self.label),
                source,
                detected_at: now,
                seen: self.seen.unwrap_or((fill.ended_at, fill.end_source)),
                because,
                account: &self.account,
            }));
        }
        let (error, flagged) = match &self.action {
            Action::Keep(Verdict::Unresolved { why, flagged }) => (Some(why.describe()), *flagged),
            _ => (None, false),
        };
        let conflict = match &self.action {
            Action::Keep(Verdict::TerminalConflict) => Some(ConflictKind::Position),
            Action::Keep(Verdict::ProductConflict { .. }) => Some(ConflictKind::Product),
            _ => None,
        };
        let record = CheckRecord {
            row: self.row,
            exchange_status: self.exchange_status.as_deref(),
            verdict: self.action.verdict_word(),
            error,
            flagged,
            at: now,
            ended: self.ended,
            seen: self.seen,
            settles: matches!(self.action, Action::Keep(Verdict::SettledByBot)),
            conflict: conflict.map(|kind| NewConflict {
                kind,
                filled_size: self.filled_size.clone(),
                exchange_product_id: self.exchange_product.clone().unwrap_or_default(),
            }),
            clears_conflict: self
                .previous
                .as_ref()
                .is_some_and(|p| p.last_verdict == VerdictWord::ProductConflict.as_str())
                && conflict.is_none(),
            next_check_at: self.next_check_at,
            not_found_at: &self.not_found_at,
            account: &self.account,
        };
        (!unchanged(self.previous.as_ref(), &record)).then_some(Write::Check(record))
    }
}

/// The result of one pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// The pending orders checked.
    pub checked: Vec<Checked>,
    /// Recent terminal rows checked against the exchange: settled by the bot, or a terminal conflict.
    pub verified: Vec<Checked>,
    /// Pending rows left alone because they are younger than the grace period.
    pub too_young: usize,
    /// Unresolved pending rows not asked about in this pass: their backoff has them wait.
    pub deferred: usize,
    /// Pending rows of accounts another replica serves: checked there.
    #[serde(skip_serializing_if = "is_zero")]
    pub elsewhere: usize,
    /// Pending rows that belong to no configured account: left alone (never asked about, never written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<Unmatched>,
    /// Orders checked and found live and unchanged that the service loop does not list in `checked`.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: usize,
    /// The mass-correction brake held this pass's corrections: nothing was corrected.
    pub braked: Option<Held>,
    /// The pass was cancelled before every order was checked.
    pub interrupted: bool,
    /// Orders were due a check and the exchange gave no certain answer for any of them: a failed pass.
    pub failed: bool,
}

impl PassReport {
    pub fn count(&self, result: CheckResult) -> usize {
        self.checked.iter().filter(|c| c.result == result).count()
    }

    pub fn mismatches(&self) -> usize {
        self.checked.iter().filter(|c| c.verdict == VerdictWord::Mismatch).count()
    }

    /// Conflicts found in this pass: terminal rows the exchange ended otherwise, and rows naming another
    /// product than the exchange's order.
    pub fn conflicts(&self) -> impl Iterator<Item = &Checked> {
        self.checked.iter().chain(&self.verified).filter(|c| c.verdict.is_conflict())
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Failures that stop a whole pass (one order's failure never does).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading pending orders failed: {0}")]
    Store(#[from] StoreError),
    #[error("order {0} is not in the bot's table")]
    UnknownOrder(OrderId),
    #[error("order {order_id} belongs to account {account}, which another replica serves: ask that one")]
    Elsewhere { order_id: OrderId, account: String },
}

/// The Coinbase accounts: the rules that say whose a row is, and each account's exchange (its key, its
/// rate limiter). An order is asked about only with its own account's key, never by guess with another.
pub struct Accounts {
    map: AccountMap,
    exchanges: Vec<Arc<dyn Exchange>>,
    /// Which accounts this process serves now (replicas on PostgreSQL share them; otherwise all).
    ownership: Arc<Ownership>,
}

impl Accounts {
    /// One account, `default`, that every row belongs to, served by this process alone.
    pub fn single(exchange: Arc<dyn Exchange>) -> Accounts {
        let map = AccountMap::single(DEFAULT_ACCOUNT);
        let ownership = Arc::new(Ownership::solo(DEFAULT_ACCOUNT, map.names()));
        Accounts { map, exchanges: vec![exchange], ownership }
    }

    /// `exchanges` in the order of `map.names()`, served as `ownership` says.
    ///
    /// # Panics
    /// Never with what `app` builds; a count that differs is a programming error.
    pub fn new(map: AccountMap, exchanges: Vec<Arc<dyn Exchange>>, ownership: Arc<Ownership>) -> Accounts {
        assert_eq!(map.names().len(), exchanges.len(), "one exchange per account");
        Accounts { map, exchanges, ownership }
    }

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Whether this process serves the account `belongs` names now.
    pub fn serves(&self, belongs: Belongs) -> bool {
        match belongs {
            Belongs::To(index) => self.ownership.owns(self.map.name(index)),
            Belongs::Nowhere => false,
        }
    }

    /// Where `row` belongs.
    pub fn belongs(&self, row: &TradeRow) -> Belongs {
        self.map.belongs(row.account.as_deref(), row.bot_id.as_deref())
    }

    /// Each account's name and exchange.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Exchange>)> {
        self.map.names().iter().map(String::as_str).zip(self.exchanges.iter())
    }

    pub fn map(&self) -> &AccountMap {
        &self.map
    }
}

/// A batch looked up ahead: its check states as read before the lookup, and what the exchange said.
#[derive(Default)]
struct Prefetched {
    looked: Looked,
    states: HashMap<OrderId, CheckState>,
}

/// What a lookup across accounts found: an answer for every id, and which accounts answered with at least
/// one order (only then does a 404 from that account count towards the not-found policy).
#[derive(Default)]
pub struct Looked {
    pub answers: HashMap<OrderId, Answer>,
    answered: Vec<bool>,
}

impl Looked {
    /// Whether the account `belongs` names answered normally in this lookup.
    pub fn answering(&self, belongs: Belongs) -> bool {
        match belongs {
            Belongs::To(index) => self.answered.get(index).copied().unwrap_or(false),
            Belongs::Nowhere => false,
        }
    }
}

/// What a lookup makes of an id a List Orders answer left out. Absence proves nothing (the docs: confirm
/// with Get Order), but Get Order costs a request per order: an exchange that drops orders from its answers
/// must not turn each pass into one request per order.
#[derive(Debug, Clone)]
pub enum Absent {
    /// Confirm each with Get Order (the few orders the user channel said ended).
    Confirm,
    /// Confirm each except those in the set: orders the exchange answered for at their last check, so known to
    /// exist (their absence is the exchange's eventual consistency, and a 404 would be too). They are
    /// unresolved this time and asked again in the next pass's batch; left out again, they are confirmed.
    ConfirmUnless(HashSet<OrderId>),
    /// Take as not found without asking (terminal rows: only a positive answer matters there, and they are
    /// asked again later).
    NotFound,
}

/// Why an order the exchange answered for before and left out of a List Orders answer now is unresolved.
const LEFT_OUT: &str = "left out of the List Orders answer though the exchange answered for it before (absence \
     proves nothing): asked again, and confirmed with Get Order if left out again";

/// Why a row no account claims gets no answer.
const NO_ACCOUNT: &str = "the row belongs to no configured account: never asked with another account's key";

/// Look up orders, each with its own account's key (`lookup_with`),
/// the accounts side by side.
pub async fn lookup_accounts(accounts: &Accounts, ids: &[(OrderId, Belongs)], absent: &Absent) -> Looked {
    let mut groups: Vec<Vec<OrderId>> = vec![Vec::new(); accounts.exchanges.len()];
    let mut looked = Looked { answers: HashMap::with_capacity(ids.len()), answered: vec![false; groups.len()] };
    for (id, belongs) in ids {
        match belongs {
            Belongs::To(index) if *index < groups.len() && !accounts.serves(*belongs) => {
                let why = format!("account {} is another replica's: not asked here", accounts.map.name(*index));
                looked.answers.insert(id.clone(), Answer::Unavailable(why));
            }
            Belongs::To(index) if *index < groups.len() => groups[*index].push(id.clone()),
            _ => {
                looked.answers.insert(id.clone(), Answer::Ambiguous(NO_ACCOUNT.into()));
            }
        }
    }
    let running =
        groups.iter().enumerate().filter(|(_, ids)| !ids.is_empty()).map(|(index, ids)| async move {
            (index, lookup_with(accounts.exchanges[index].as_ref(), ids, absent).await)
        });
    for (index, found) in futures_util::future::join_all(running).await {
        looked.answered[index] = answering(&found);
        looked.answers.extend(found);
    }
    looked
}

/// Ask the exchange about `ids`: one batch lookup, then what `absent` says for each id the batch did not
/// return; FILLED answers without their figures are completed from List Fills. Every id gets an answer.
async fn lookup_with(exchange: &dyn Exchange, ids: &[OrderId], absent: &Absent) -> HashMap<OrderId, Answer> {
    let mut answers = HashMap::with_capacity(ids.len());
    // Only what can be a Coinbase order id is ever put in a request: a row holding `..`, `batch` or a client
    // order id is listed (unresolved, and flagged in time), never sent.
    let (sendable, unsendable): (Vec<OrderId>, Vec<OrderId>) = ids.iter().cloned().partition(OrderId::is_exchange_id);
    for id in unsendable {
        let why = format!("{:?} is not a Coinbase order id (a UUID): never sent to the exchange", id.as_str());
        answers.insert(id, Answer::Ambiguous(why));
    }
    for (ids, result) in orders_isolating(exchange, &sendable).await {
        answer_batch(exchange, &ids, result, absent, &mut answers).await;
    }
    complete_figures(exchange, &mut answers).await;
    answers
}

/// The ids one List Orders request asked about, and what it answered.
type BatchResult = (Vec<OrderId>, Result<crate::exchange::Batch, ExchangeError>);

/// List Orders for `ids`; when the exchange rejects the request (a 4xx: an id it cannot parse, a URL too
/// long), the halves are asked again until the ids it rejects are alone, so one bad order never poisons the
/// others. A timeout or 5xx stays one ambiguous answer for the whole batch.
fn orders_isolating<'a>(exchange: &'a dyn Exchange, ids: &'a [OrderId]) -> BoxFuture<'a, Vec<BatchResult>> {
    Box::pin(async move {
        if ids.is_empty() {
            return Vec::new();
        }
        match exchange.orders(ids).await {
            Err(ExchangeError::Rejected(why)) if ids.len() > 1 => {
                tracing::debug!(orders = ids.len(), %why, "the exchange rejected a batch; asking its halves");
                let (first, second) = ids.split_at(ids.len() / 2);
                let mut results = orders_isolating(exchange, first).await;
                results.extend(orders_isolating(exchange, second).await);
                results
            }
            result => vec![(ids.to_vec(), result)],
        }
    })
}

/// The answers one List Orders result gives `ids`.
async fn answer_batch(
    exchange: &dyn Exchange,
    ids: &[OrderId],
    result: Result<crate::exchange::Batch, ExchangeError>,
    absent: &Absent,
    answers: &mut HashMap<OrderId, Answer>,
) {
    match result {
        Ok(batch) => {
            for order in batch.orders {
                if ids.contains(&order.order_id) {
                    answers.insert(order.order_id.clone(), Answer::Order(order));
                }
            }
            for (raw_id, why) in batch.malformed {
                if let Ok(id) = OrderId::parse(&raw_id) {
                    answers.insert(id, Answer::Ambiguous(format!("malformed answer: {why}")));
                }
            }
            for id in ids {
                if !answers.contains_key(id) {
                    let answer = match absent {
                        Absent::ConfirmUnless(known) if known.contains(id) => Answer::Ambiguous(LEFT_OUT.into()),
                        Absent::Confirm | Absent::ConfirmUnless(_) => answer_of(exchange.order(id).await),
                        Absent::NotFound => Answer::NotFound,
                    };
                    answers.insert(id.clone(), answer);
                }
            }
        }
        Err(ExchangeError::Rejected(why)) if ids.len() == 1 => {
            tracing::warn!(order_id = %ids[0], %why, "the exchange rejects this order id; the others were asked without it");
            answers.insert(ids[0].clone(), Answer::Ambiguous(format!("the exchange rejects this order id: {why}")));
        }
        Err(error) => {
            // A whole answer lost (a timeout, a 5xx, a body unreadable as a whole) says nothing about any one
            // order: the orders' flags are not its to count.
            let answer = answer_for_error(&error, false);
            for id in ids {
                answers.insert(id.clone(), answer.clone());
            }
        }
    }
}

/// Complete FILLED answers that lack the fill time, average price or size from List Fills (one request
/// for all of them). When List Fills fails, the answers stay as they are: the status is still certain.
async fn complete_figures(exchange: &dyn Exchange, answers: &mut HashMap<OrderId, Answer>) {
    let lacking: Vec<OrderId> = answers
        .iter()
        .filter(|(_, answer)| matches!(answer, Answer::Order(order) if needs_fills(order)))
        .map(|(id, _)| id.clone())
        .collect();
    if lacking.is_empty() {
        return;
    }
    match exchange.fills(&lacking).await {
        Ok(fills) => {
            for id in &lacking {
                if let Some(Answer::Order(order)) = answers.get_mut(id) {
                    *order = complete_with_fills(order, &fills);
                }
            }
        }
        Err(error) => {
            tracing::warn!(orders = lacking.len(), %error, "List Fills failed; FILLED orders lacking figures are written without them");
        }
    }
}

/// The answer a single Get Order gives.
pub fn answer_of(result: Result<ExchangeOrder, ExchangeError>) -> Answer {
    match result {
        Ok(order) => Answer::Order(order),
        Err(error) => answer_for_error(&error, true),
    }
}

/// A check due at a time: an order the exchange ended, to look at once the bot had its grace period.
#[derive(Debug, Clone)]
struct Due {
    at: DateTime<Utc>,
    /// The earliest sighting of the order ended.
    seen: (DateTime<Utc>, EndSource),
    /// What the exchange said (a WebSocket update): enough to settle a row the bot already wrote.
    news: Option<ExchangeOrder>,
    source: Source,
}

/// Checks due at a time, one per order (the earliest sighting wins), run by `Reconciler::run_due`.
#[derive(Default)]
struct DueChecks {
    entries: Mutex<HashMap<OrderId, Due>>,
    changed: Notify,
}

impl DueChecks {
    fn schedule(&self, id: OrderId, due: Due) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get_mut(&id) {
            Some(existing) => {
                if due.seen.0 < existing.seen.0 {
                    existing.seen = due.seen;
                }
                existing.at = existing.at.min(due.at);
                if existing.news.is_none() {
                    existing.news = due.news;
                }
            }
            None => {
                entries.insert(id, due);
            }
        }
        drop(entries);
        self.changed.notify_one();
    }

    /// The entries due by `now` (at most `limit`), and when the next one is due.
    fn take_due(&self, now: DateTime<Utc>, limit: usize) -> (Vec<(OrderId, Due)>, Option<DateTime<Utc>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut ready: Vec<OrderId> =
            entries.iter().filter(|(_, due)| due.at <= now).map(|(id, _)| id.clone()).collect();
        ready.sort_by_key(|id| entries.get(id).map(|due| due.at));
        ready.truncate(limit);
        let taken = ready.into_iter().filter_map(|id| entries.remove(&id).map(|due| (id, due))).collect();
        let next = entries.values().map(|due| due.at).min();
        (taken, next)
    }

    fn next_due(&self) -> Option<DateTime<Utc>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).values().map(|due| due.at).min()
    }

    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Drives passes over the pending orders. Cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    store: Store,
    accounts: Arc<Accounts>,
    metrics: Metrics,
    settings: Arc<RwLock<Settings>>,
    wake: Arc<Notify>,
    due: Arc<DueChecks>,
    brake: Arc<Mutex<BrakeState>>,
    /// The number of the last pass begun (the `pass` span's id).
    passes: Arc<AtomicU64>,
    /// Pending orders whose checks have had no certain answer since the last one that saw them open, with
    /// the first such check (`Context::unanswered_since`). Kept in memory: nothing is written during an
    /// outage, and a restart forgets it (the latency is then measured from the first sighting).
    unanswered: Arc<Mutex<HashMap<OrderId, DateTime<Utc>>>>,
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

fn seen_by(source: Source) -> EndSource {
    match source {
        Source::Poll => EndSource::SeenPoll,
        Source::Websocket => EndSource::SeenWebsocket,
        Source::Manual => EndSource::SeenManual,
    }
}

impl Reconciler {
    /// One account (`default`): every row is asked about with `exchange`.
    pub fn new(store: Store, exchange: Arc<dyn Exchange>, metrics: Metrics, settings: Settings) -> Reconciler {
        Reconciler::with_accounts(store, Accounts::single(exchange), metrics, settings)
    }

    /// Several accounts: each row is asked about with its own account's exchange.
    pub fn with_accounts(store: Store, accounts: Accounts, metrics: Metrics, settings: Settings) -> Reconciler {
        Reconciler {
            store,
            accounts: Arc::new(accounts),
            metrics,
            settings: Arc::new(RwLock::new(settings)),
            wake: Arc::new(Notify::new()),
            due: Arc::new(DueChecks::default()),
            brake: Arc::default(),
            passes: Arc::default(),
            unanswered: Arc::default(),
        }
    }

    /// The brake's hold, while engaged.
    pub fn brake_held(&self) -> Option<Held> {
        self.brake.lock().unwrap_or_else(|p| p.into_inner()).held.clone()
    }

    /// The settings in force now.
    pub fn settings(&self) -> Settings {
        *self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Run on `settings` from the next use on (`SIGHUP`).
    pub fn set_settings(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// Set the brake after a pass: engaged with `held`, or released.
    fn set_brake(&self, held: Option<Held>, pending: usize) {
        let mut state = self.brake.lock().unwrap_or_else(|p| p.into_inner());
        match &held {
            Some(held) => {
                self.metrics.correction_brake.set(1);
                self.metrics.corrections_held.set(i64::try_from(held.would_correct).unwrap_or(i64::MAX));
                tracing::error!(
                    would_correct = held.would_correct,
                    pending = held.pending,
                    max_corrections_per_pass = held.max_corrections,
                    max_correction_share = held.max_share,
                    "mass-correction brake engaged: this pass would correct too many rows, so it corrected none; \
                     check the status words and the key's account, then run `ordersync reconcile --once \
                     --allow-mass-correction` or raise max_corrections_per_pass"
                );
            }
            None => {
                self.metrics.correction_brake.set(0);
                self.metrics.corrections_held.set(0);
            }
        }
        state.held = held;
        state.pending = pending;
    }

    /// The hold for corrections outside a pass (WebSocket and due checks): observe-only, the engaged brake,
    /// or these `corrections` pushing the WebSocket path since the pass began over the brake's limit.
    fn hold_outside_pass(&self, corrections: usize) -> Option<Hold> {
        if self.settings().observe_only {
            return Some(Hold::Observe);
        }
        if corrections == 0 {
            return None;
        }
        let mut state = self.brake.lock().unwrap_or_else(|p| p.into_inner());
        if state.held.is_some() {
            return Some(Hold::Brake);
        }
        let total = state.since_pass + corrections;
        let brake = self.settings().brake;
        // Before the first pass the pending rows are not known: only the count applies.
        let pending = if state.pending == 0 { usize::MAX } else { state.pending };
        if brake.trips(total, pending) {
            state.held = Some(Held {
                would_correct: total,
                pending: state.pending,
                max_corrections: brake.max_corrections,
                max_share: brake.max_share,
                since: Utc::now(),
            });
            self.metrics.correction_brake.set(1);
            self.metrics.corrections_held.set(i64::try_from(total).unwrap_or(i64::MAX));
            tracing::error!(
                would_correct = total,
                "mass-correction brake engaged by the WebSocket path; corrections wait for an operator"
            );
            return Some(Hold::Brake);
        }
        state.since_pass = total;
        None
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Wait until some account could send a request under its rate limit now.
    async fn any_account_ready(&self) {
        let ready = self.accounts.exchanges.iter().map(|exchange| Box::pin(exchange.ready()));
        let _ = futures_util::future::select_all(ready).await;
    }

    /// The rows' ids, each with where it belongs.
    fn placed(&self, rows: &[TradeRow]) -> Vec<(OrderId, Belongs)> {
        rows.iter().map(|row| (row.order_id.clone(), self.accounts.belongs(row))).collect()
    }

    /// Ask the loop for a pass now rather than at the next tick (after a WebSocket gap, say).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// News that the exchange ended an order (a WebSocket update at `at`): check it once the bot had its
    /// grace period, at `at + grace`. Nothing is read or written now.
    pub fn ended_news(&self, order: ExchangeOrder, at: DateTime<Utc>) {
        if !ends_order(&order.status) {
            return;
        }
        let due = Due {
            at: at + chrono_duration(self.settings().grace),
            seen: (at, EndSource::SeenWebsocket),
            news: Some(order.clone()),
            source: Source::Websocket,
        };
        tracing::debug!(
            order_id = %order.order_id,
            status = order.status.as_str(),
            check_at = %due.at,
            "news: the order ended on the exchange; checked once the bot's grace is over"
        );
        self.due.schedule(order.order_id, due);
    }

    /// Checks waiting for their time.
    pub fn due_checks(&self) -> usize {
        self.due.len()
    }

    /// One pass over every pending order older than the grace period, oldest first, then over recent
    /// terminal rows not yet settled.
    ///
    /// # Errors
    /// Only when the pending orders cannot be read at all; a single order's failure is logged, counted,
    /// and the order left as it was.
    pub async fn pass(&self, mode: Mode, token: &CancellationToken) -> Result<PassReport, ReconcileError> {
        self.pass_with_progress(mode, token, &|_, _| {}).await
    }

    /// As `pass`, telling `progress(done, total)` after each pending order (for a progress bar).
    ///
    /// # Errors
    /// As `pass`.
    pub async fn pass_with_progress(
        &self,
        mode: Mode,
        token: &CancellationToken,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<PassReport, ReconcileError> {
        self.pass_inner(mode, token, progress, false).await
    }

    /// The span a pass's log lines carry: its number, its mode, and (once read) the pending orders.
    fn pass_span(&self, mode: Mode) -> tracing::Span {
        let pass = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
        let mode = match mode {
            Mode::Apply => "apply",
            Mode::DryRun => "dry_run",
        };
        tracing::info_span!("pass", pass, mode, orders = tracing::field::Empty)
    }

    /// A pass; with `brief`, orders found live and unchanged are counted in `omitted` rather than listed
    /// (the service loop keeps no list of 10,000 resting orders it does nothing with).
    async fn pass_inner(
        &self,
        mode: Mode,
        token: &CancellationToken,
        progress: &(dyn Fn(usize, usize) + Sync),
        brief: bool,
    ) -> Result<PassReport, ReconcileError> {
        let span = self.pass_span(mode);
        self.pass_body(mode, token, progress, brief).instrument(span).await
    }

    async fn pass_body(
        &self,
        mode: Mode,
        token: &CancellationToken,
        progress: &(dyn Fn(usize, usize) + Sync),
        brief: bool,
    ) -> Result<PassReport, ReconcileError> {
        let mut done = 0usize;
        let mut keep = |report: &mut PassReport, checked: Checked| {
            done += 1;
            if brief && checked.verdict == VerdictWord::InSync && checked.result == CheckResult::Unchanged {
                report.omitted += 1;
            } else {
                report.checked.push(checked);
            }
            done
        };
        let rows = match self.store.pending_orders().await {
            Ok(rows) => {
                self.metrics.database_up.set(1);
                rows
            }
            Err(error) => {
                self.metrics.database_up.set(0);
                return Err(error.into());
            }
        };
        for row in &rows {
            self.metrics.bot_label(row.bot_id.as_deref());
        }
        {
            let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            if !unanswered.is_empty() {
                let pending: HashSet<&OrderId> = rows.iter().map(|row| &row.order_id).collect();
                unanswered.retain(|id, _| pending.contains(id));
            }
        }
        // A row no account claims is never asked about with another account's key: reported, left alone.
        let (rows, unmatched): (Vec<TradeRow>, Vec<TradeRow>) =
            rows.into_iter().partition(|row| self.accounts.belongs(row) != Belongs::Nowhere);
        // Rows of accounts another replica serves are that replica's to check.
        let (rows, elsewhere): (Vec<TradeRow>, Vec<TradeRow>) =
            rows.into_iter().partition(|row| self.accounts.serves(self.accounts.belongs(row)));
        let elsewhere = elsewhere.len();
        // Said when the number changes, not on every pass of every replica.
        if !unmatched.is_empty()
            && self.metrics.unmatched_rows.get() != i64::try_from(unmatched.len()).unwrap_or(i64::MAX)
        {
            tracing::warn!(
                rows = unmatched.len(),
                "pending rows belong to no configured Coinbase account; left alone (ordersync audit lists them)"
            );
        }
        let unmatched: Vec<Unmatched> = unmatched
            .into_iter()
            .map(|row| Unmatched { order_id: row.order_id.to_string(), bot_id: row.bot_id, account: row.account })
            .collect();
        let pending = rows.len();
        tracing::Span::current().record("orders", pending);
        let cutoff = Utc::now() - chrono_duration(self.settings().grace);
        let (eligible, young): (Vec<TradeRow>, Vec<TradeRow>) =
            rows.into_iter().partition(|r| r.created_at.is_none_or(|at| at <= cutoff));
        let mut report = PassReport { too_young: young.len(), unmatched, elsewhere, ..PassReport::default() };
        // Unresolved orders whose backoff has them wait are not asked about in this pass.
        let waiting = match self.store.deferred(Utc::now()).await {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(%error, "reading the orders that wait for their backoff failed; asking about all");
                self.metrics.store_errors.inc();
                HashMap::new()
            }
        };
        let (due, deferred): (Vec<TradeRow>, Vec<TradeRow>) =
            eligible.into_iter().partition(|row| !waiting.contains_key(&row.order_id));
        report.deferred = deferred.len();
        let flagged_waiting = deferred.iter().filter(|row| waiting.get(&row.order_id) == Some(&true)).count();
        drop((deferred, waiting));
        // The WebSocket path's corrections since the last pass began count towards this pass's brake; those
        // made from now on count towards the next one.
        let since_pass = std::mem::take(&mut self.brake.lock().unwrap_or_else(|p| p.into_inner()).since_pass);
        // The rows the WebSocket path corrected since then were pending too, before this pass read the rows:
        // the share is of them all (a row is never counted as corrected without being counted as pending).
        let population = pending + since_pass;
        let brake = self.settings().brake;
        let mut certain = 0usize;
        let mut corrections = 0usize;
        let mut held: Vec<Plan> = Vec::new();
        let mut planned = 0usize;
        // The next batch's lookup runs while this batch is written, so the exchange and the database work
        // at the same time; lookups only read, so abandoning one on cancellation is harmless.
        let chunks: Vec<&[TradeRow]> = due.chunks(self.settings().batch_size.max(1)).collect();
        let mut next = chunks.first().map(|chunk| self.prefetch(chunk));
        for (index, chunk) in chunks.iter().enumerate() {
            let Some(mut lookup) = next.take() else { break };
            // A request that hangs is abandoned when the pass is cancelled: only reads are in flight here.
            let Prefetched { looked, states } = tokio::select! {
                biased;
                () = token.cancelled() => {
                    lookup.abort();
                    report.interrupted = true;
                    break;
                }
                prefetched = &mut lookup => prefetched.unwrap_or_default(),
            };
            // Cancelled as the answers came: nothing of this chunk is written.
            if token.is_cancelled() {
                report.interrupted = true;
                break;
            }
            next = chunks.get(index + 1).map(|chunk| self.prefetch(chunk));
            let answers = &looked.answers;
            certain += answers.values().filter(|answer| answer.is_certain()).count();
            let now = Utc::now();
            let no_answer = Answer::Unavailable("the exchange lookup gave no answer".into());
            let mut checks = Vec::with_capacity(chunk.len());
            for row in chunk.iter() {
                let answer = answers.get(&row.order_id).unwrap_or(&no_answer);
                let answering = looked.answering(self.accounts.belongs(row));
                let item = Item { row, answer, state: states.get(&row.order_id), hint: None, answering };
                let plan = self.plan(&item, Source::Poll, now);
                if plan.corrects() {
                    corrections += 1;
                    held.push(plan);
                } else {
                    checks.push(plan);
                }
            }
            drop((looked, states));
            planned += chunk.len();
            // Checks that correct nothing are written now; corrections as soon as the brake cannot trip
            // whatever the rest of the pass finds, and until then they wait.
            let observe = self.settings().observe_only.then_some(Hold::Observe);
            let at_most = since_pass + corrections + (due.len() - planned);
            if !brake.trips(at_most, population) {
                checks.append(&mut held);
            }
            for checked in self.apply(checks, mode, Source::Poll, observe).await {
                let done = keep(&mut report, checked);
                progress(done, due.len());
            }
            if token.is_cancelled() {
                report.interrupted = true;
                if let Some(lookup) = next.take() {
                    lookup.abort();
                }
                break;
            }
        }
        if !report.interrupted && !held.is_empty() {
            // Every order is decided: the brake knows the whole pass. Observe-only writes nothing anyway.
            let tripped = !self.settings().observe_only && brake.trips(since_pass + corrections, population);
            let hold = if self.settings().observe_only { Some(Hold::Observe) } else { tripped.then_some(Hold::Brake) };
            if tripped {
                report.braked = Some(Held {
                    would_correct: since_pass + corrections,
                    pending: population,
                    max_corrections: brake.max_corrections,
                    max_share: brake.max_share,
                    since: Utc::now(),
                });
            }
            for checked in self.apply(std::mem::take(&mut held), mode, Source::Poll, hold).await {
                let done = keep(&mut report, checked);
                progress(done, due.len());
            }
        }
        let unresolved_mismatches =
            report.checked.iter().filter(|c| c.verdict == VerdictWord::Mismatch && !c.result.settled()).count();
        let mut asked = due.len();
        if !report.interrupted {
            if mode == Mode::Apply {
                self.set_brake(report.braked.clone(), pending);
            }
            self.metrics.unresolved_mismatches.set(i64::try_from(unresolved_mismatches).unwrap_or(i64::MAX));
            let flagged = report.checked.iter().filter(|c| c.verdict == VerdictWord::Flagged).count() + flagged_waiting;
            self.metrics.flagged_orders.set(flagged as i64);
            self.metrics.deferred_orders.set(report.deferred as i64);
            self.metrics.unmatched_rows.set(i64::try_from(report.unmatched.len()).unwrap_or(i64::MAX));
            let (verified, answered) = self.verify_terminal(mode, token).await;
            asked += verified.len();
            certain += answered;
            report.verified = verified;
            report.interrupted = token.is_cancelled();
        }
        // Orders were asked about and not one certain answer came (every request failed, a refused key).
        report.failed = asked > 0 && certain == 0 && !report.interrupted;
        Ok(report)
    }

    /// Check recent terminal rows that are neither settled nor a known conflict: the bot's row right (settled
    /// by the bot), or ended otherwise on the exchange (a terminal conflict, never written). Rows without a
    /// settling answer are asked about again after `TERMINAL_RECHECK_AFTER`.
    /// Returns what was checked, and how many certain answers (an order, or not found) came.
    async fn verify_terminal(&self, mode: Mode, token: &CancellationToken) -> (Vec<Checked>, usize) {
        let now = Utc::now();
        let since = now - chrono_duration(self.settings().verify_window);
        let recheck = now - chrono_duration(TERMINAL_RECHECK_AFTER);
        let candidates =
            self.store.terminal_candidates(since, TERMINAL_CHECKS_PER_PASS, recheck, TERMINAL_GIVE_UP_AFTER).await;
        let rows: Vec<TradeRow> = match candidates {
            // Only this replica's accounts: another replica checks its own.
            Ok(rows) => rows.into_iter().filter(|row| self.accounts.serves(self.accounts.belongs(row))).collect(),
            Err(error) => {
                tracing::warn!(%error, "reading recent terminal rows failed; checking them next pass");
                self.metrics.store_errors.inc();
                return (Vec::new(), 0);
            }
        };
        let ids: Vec<OrderId> = rows.iter().map(|row| row.order_id.clone()).collect();
        let states = self.check_states(&ids).await;
        let mut checked = Vec::new();
        let mut answered = 0;
        for chunk in rows.chunks(self.settings().batch_size.max(1)) {
            if token.is_cancelled() {
                break;
            }
            // Only a positive answer settles a terminal row or shows a conflict: an order the batch did not
            // return is not confirmed one request at a time, it is asked about again later.
            let placed = self.placed(chunk);
            let looked = tokio::select! {
                looked = lookup_accounts(&self.accounts, &placed, &Absent::NotFound) => looked,
                () = token.cancelled() => break,
            };
            let answers = &looked.answers;
            answered += answers.values().filter(|answer| answer.is_certain()).count();
            let no_answer = Answer::Unavailable("the exchange lookup gave no answer".into());
            let items: Vec<Item> = chunk
                .iter()
                .map(|row| Item {
                    answering: looked.answering(self.accounts.belongs(row)),
                    row,
                    answer: answers.get(&row.order_id).unwrap_or(&no_answer),
                    state: states.get(&row.order_id),
                    hint: None,
                })
                .collect();
            checked.extend(self.check_many(&items, mode, Source::Poll).await);
        }
        (checked, answered)
    }

    /// Start looking up a batch in the background: its check states, then the exchange (an order left out
    /// of List Orders is confirmed with Get Order unless the exchange answered for it at its last check).
    fn prefetch(&self, chunk: &[TradeRow]) -> tokio::task::JoinHandle<Prefetched> {
        let placed = self.placed(chunk);
        let this = self.clone();
        tokio::spawn(async move {
            let ids: Vec<OrderId> = placed.iter().map(|(id, _)| id.clone()).collect();
            let states = match this.store.check_states(&ids).await {
                Ok(states) => states,
                Err(error) => {
                    // Without their history the checks would be written as if first (a flag, the 404s of
                    // the not-found policy forgotten): the batch is not asked, and nothing is written.
                    tracing::warn!(%error, orders = ids.len(), "reading check state failed; the batch is asked next pass");
                    this.metrics.store_errors.inc();
                    let why = format!("reading the orders' check state failed: {error}");
                    let answers = ids.into_iter().map(|id| (id, Answer::Unavailable(why.clone()))).collect();
                    return Prefetched { looked: Looked { answers, answered: Vec::new() }, states: HashMap::new() };
                }
            };
            let known = states.iter().filter(|(_, s)| s.last_exchange_status.is_some()).map(|(id, _)| id.clone());
            let looked = lookup_accounts(&this.accounts, &placed, &Absent::ConfirmUnless(known.collect())).await;
            Prefetched { looked, states }
        })
    }

    async fn check_states(&self, ids: &[OrderId]) -> HashMap<OrderId, CheckState> {
        match self.store.check_states(ids).await {
            Ok(states) => states,
            Err(error) => {
                // Without history an unresolved order is flagged later, never wrongly corrected.
                tracing::warn!(error = %error, "reading check state failed; counting unresolved checks from zero");
                self.metrics.store_errors.inc();
                HashMap::new()
            }
        }
    }

    /// Check one order now (a manual reconcile): read its row, ask the exchange, decide, apply. An operator
    /// asked: the grace period does not apply.
    ///
    /// # Errors
    /// `UnknownOrder` when the bot's table has no such order; `Store` when it cannot be read.
    pub async fn reconcile_one(&self, order_id: &OrderId, mode: Mode) -> Result<Checked, ReconcileError> {
        let row = self.store.trade(order_id).await?.ok_or_else(|| ReconcileError::UnknownOrder(order_id.clone()))?;
        let belongs = self.accounts.belongs(&row);
        if let Belongs::To(index) = belongs {
            if !self.accounts.serves(belongs) {
                let account = self.accounts.map.name(index).to_string();
                return Err(ReconcileError::Elsewhere { order_id: order_id.clone(), account });
            }
        }
        let mut answers = match belongs {
            Belongs::To(index) if index < self.accounts.exchanges.len() => {
                let exchange = self.accounts.exchanges[index].as_ref();
                let mut answers = HashMap::from([(order_id.clone(), answer_of(exchange.order(order_id).await))]);
                complete_figures(exchange, &mut answers).await;
                answers
            }
            _ => HashMap::from([(order_id.clone(), Answer::Ambiguous(NO_ACCOUNT.into()))]),
        };
        let answer = answers.remove(order_id).unwrap_or_else(|| Answer::Ambiguous("no answer".into()));
        let states = self.check_states(std::slice::from_ref(order_id)).await;
        // One order asked about alone: no other order answered with it, so a 404 here never counts.
        let item = Item { row: &row, answer: &answer, state: states.get(order_id), hint: None, answering: false };
        let mut checked = self.check_many(&[item], mode, Source::Manual).await;
        checked.pop().ok_or(ReconcileError::UnknownOrder(order_id.clone()))
    }

    /// Run the due checks as they fall due, until `token` is cancelled. Each round reads the rows, settles
    /// those the bot already wrote (from the news alone), and looks up the rest through the shared limiter,
    /// in batches: what is written comes from List Orders or Get Order, never from the WebSocket message.
    pub async fn run_due(&self, token: CancellationToken) {
        self.due_checks_until(&token, false).await;
    }

    /// Run the due checks until none is left (each falls due within `grace`), for a one-shot pass; returns
    /// what they did.
    pub async fn finish_due(&self, token: &CancellationToken) -> Vec<Checked> {
        self.due_checks_until(token, true).await
    }

    async fn due_checks_until(&self, token: &CancellationToken, until_empty: bool) -> Vec<Checked> {
        let mut done = Vec::new();
        loop {
            let next = self.due.next_due();
            if until_empty && next.is_none() {
                return done;
            }
            let now = Utc::now();
            if next.is_none_or(|at| at > now) {
                let pause = next.map_or(Duration::from_secs(3600), |at| (at - now).to_std().unwrap_or_default());
                tokio::select! {
                    () = token.cancelled() => return done,
                    () = tokio::time::sleep(pause) => {}
                    () = self.due.changed.notified() => {}
                }
                continue;
            }
            // Wait for the rate limit's turn first, then take everything due by then: what falls due while
            // waiting rides in the same request instead of waiting for the next turn.
            tokio::select! {
                () = token.cancelled() => return done,
                () = self.any_account_ready() => {}
            }
            let (taken, _) = self.due.take_due(Utc::now(), self.settings().batch_size.max(1));
            let span = tracing::info_span!("due", orders = taken.len());
            let checked = self.check_due(taken, token).instrument(span).await;
            if until_empty {
                done.extend(checked);
            }
        }
    }

    async fn check_due(&self, taken: Vec<(OrderId, Due)>, token: &CancellationToken) -> Vec<Checked> {
        let ids: Vec<OrderId> = taken.iter().map(|(id, _)| id.clone()).collect();
        let rows = match self.store.trades(&ids).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, orders = ids.len(), "reading rows for due checks failed; the poller will see them");
                self.metrics.store_errors.inc();
                return Vec::new();
            }
        };
        let words = self.store.words();
        // Rows the bot already wrote are settled from the news; pending ones need the exchange's figures.
        let mut lookups: Vec<(OrderId, Belongs)> = Vec::new();
        let mut answers: HashMap<OrderId, Answer> = HashMap::new();
        for (id, due) in &taken {
            let Some(row) = rows.get(id) else { continue };
            match (DbStatus::classify(&row.status, words), &due.news) {
                (DbStatus::Terminal(_), Some(news)) => {
                    answers.insert(id.clone(), Answer::Order(news.clone()));
                }
                (DbStatus::Other, _) => {}
                _ => lookups.push((id.clone(), self.accounts.belongs(row))),
            }
        }
        let mut looked = Looked::default();
        if !lookups.is_empty() {
            tokio::select! {
                found = lookup_accounts(&self.accounts, &lookups, &Absent::Confirm) => looked = found,
                () = token.cancelled() => return Vec::new(),
            }
        }
        answers.extend(looked.answers.drain());
        let checked_ids: Vec<OrderId> = answers.keys().cloned().collect();
        let states = self.check_states(&checked_ids).await;
        let mut checked = Vec::new();
        for source in [Source::Websocket, Source::Poll] {
            let items: Vec<Item> = taken
                .iter()
                .filter(|(_, due)| due.source == source)
                .filter_map(|(id, due)| {
                    let row = rows.get(id)?;
                    Some(Item {
                        answering: looked.answering(self.accounts.belongs(row)),
                        row,
                        answer: answers.get(id)?,
                        state: states.get(id),
                        hint: Some(due.seen),
                    })
                })
                .collect();
            if !items.is_empty() {
                checked.extend(self.check_many(&items, Mode::Apply, source).await);
            }
        }
        checked
    }

    /// THE apply path: decide on each item, write every outcome in one batch (unless dry-run), then count,
    /// log and report each. Poll, manual, due and terminal checks all come through here.
    pub async fn check_many(&self, items: &[Item<'_, '_>], mode: Mode, source: Source) -> Vec<Checked> {
        let now = Utc::now();
        let plans: Vec<Plan> = items.iter().map(|item| self.plan(item, source, now)).collect();
        let corrections = plans.iter().filter(|plan| plan.corrects()).count();
        let hold = match (mode, source) {
            (Mode::DryRun, _) => None,
            // An operator asked about one order: the brake is for mass corrections.
            (Mode::Apply, Source::Manual) => self.settings().observe_only.then_some(Hold::Observe),
            (Mode::Apply, _) => self.hold_outside_pass(corrections),
        };
        self.apply(plans, mode, source, hold).await
    }

    /// Write what the plans say (corrections only without a `hold`), then count, log and report each.
    async fn apply(&self, plans: Vec<Plan<'_>>, mode: Mode, source: Source, hold: Option<Hold>) -> Vec<Checked> {
        let now = Utc::now();
        let words = self.store.words();
        let writes: Vec<Option<Write<'_>>> = match mode {
            Mode::DryRun => plans.iter().map(|_| None).collect(),
            Mode::Apply => plans.iter().map(|plan| plan.write(source, now, hold)).collect(),
        };
        let to_write: Vec<Write<'_>> = writes.iter().flatten().cloned().collect();
        let mut written = self.store.write_batch(&to_write).await.into_iter();
        // A check that changed nothing was not written: it did what a written one would.
        let outcomes: Vec<Option<Result<Written, StoreError>>> = writes
            .iter()
            .map(|write| match (mode, write) {
                (Mode::DryRun, _) => None,
                (Mode::Apply, Some(_)) => written.next(),
                (Mode::Apply, None) => Some(Ok(Written::Check { settled: None })),
            })
            .collect();
        drop(writes);
        let mut results = Vec::with_capacity(plans.len());
        for (plan, outcome) in plans.into_iter().zip(outcomes) {
            let _entered = plan.span.enter();
            let mut checked = plan.checked;
            let bot = plan.row.bot_id.as_deref();
            match (&plan.action, outcome) {
                (Action::Correct { to, .. }, None) => {
                    checked.result = CheckResult::WouldCorrect;
                    checked.detail = Some(format!("would set {} -> {}", plan.row.status, to.word(words)));
                }
                (Action::Correct { to, .. }, Some(Ok(Written::Check { .. }))) => {
                    let (result, why) = match hold {
                        Some(Hold::Brake) => (CheckResult::Held, "held by the mass-correction brake"),
                        _ => (CheckResult::WouldCorrect, "observe-only"),
                    };
                    checked.result = result;
                    checked.detail = Some(format!("{why}: would set {} -> {}", plan.row.status, to.word(words)));
                }
                (
                    Action::Correct { to, fill, because },
                    Some(Ok(Written::Correction { applied: Applied::Written { latency, backlog, .. }, settled })),
                ) => {
                    let written_off = matches!(because, Because::NotFound { .. });
                    self.metrics.mismatch(plan.row, plan.label);
                    // A backlog order's latency is the time before ordersync ran, not ordersync's; an order
                    // written off never ended on the exchange.
                    self.metrics.correction(plan.row, *to, to.word(words), source, latency, backlog || written_off);
                    if let Because::NotFound { at } = because {
                        self.metrics.written_off.with_label_values(&[self.metrics.bot_label(bot).as_str()]).inc();
                        tracing::warn!(
                            order_id = %plan.row.order_id,
                            not_found_answers = at.len(),
                            first = %at.first().map(|t| t.to_rfc3339()).unwrap_or_default(),
                            to = to.word(words),
                            "not-found policy: Coinbase never knew this order; written off"
                        );
                    }
                    // A backlog order ended before ordersync first ran here: outside both SLIs.
                    if let (Some(by), false) = (settled, backlog) {
                        self.metrics.settled(bot, by, late(latency.as_secs_f64()));
                    }
                    if !fill.missing.is_empty() {
                        self.metrics.incomplete_fills.inc();
                        tracing::warn!(
                            order_id = %plan.row.order_id,
                            missing = %fill.missing.join(", "),
                            "completed a FILLED order without figures the exchange did not give (nor List Fills)"
                        );
                    }
                    checked.result = CheckResult::Corrected;
                    checked.detail = Some(match because {
                        Because::ExchangeEnded => format!("{} -> {}", plan.row.status, to.word(words)),
                        Because::NotFound { at } => format!(
                            "{} -> {}: written off by the not-found policy after {} answers of 404",
                            plan.row.status,
                            to.word(words),
                            at.len()
                        ),
                    });
                }
                (
                    Action::Correct { to, .. },
                    Some(Ok(Written::Correction { applied: Applied::AlreadyApplied, settled })),
                ) => {
                    if let Some(by) = settled {
                        self.metrics.settled(bot, by, false);
                    }
                    checked.result = CheckResult::AlreadySettled;
                    checked.detail = Some(format!("already {}", to.word(words)));
                }
                (
                    Action::Correct { .. },
                    Some(Ok(Written::Correction { applied: Applied::RowChanged { now }, .. })),
                ) => {
                    tracing::info!(
                        order_id = %plan.row.order_id,
                        now = now.as_deref().unwrap_or("<deleted>"),
                        "the bot changed the order itself meanwhile; not overwritten"
                    );
                    checked.result = CheckResult::RowChanged;
                    checked.detail = Some(format!("the bot set it to {:?} meanwhile", now.unwrap_or_default()));
                }
                (Action::Keep(verdict), Some(Ok(Written::Check { settled }))) => {
                    if let Some(by) = settled {
                        self.metrics.settled(bot, by, by == SettledBy::Conflict);
                    }
                    if let Verdict::Waiting { until } = verdict {
                        let seen = plan.seen.unwrap_or((now, seen_by(source)));
                        self.due.schedule(plan.row.order_id.clone(), Due { at: *until, seen, news: None, source });
                    }
                    if let Verdict::ProductConflict { exchange } = verdict {
                        tracing::error!(
                            order_id = %plan.row.order_id,
                            row_product = plan.row.product_id.as_deref().unwrap_or(""),
                            exchange_product = %exchange,
                            "product conflict: the exchange's order of this id is for another product; not written"
                        );
                    }
                    // Said once, when the conflict is new: the row is checked again after each restart.
                    let known = plan
                        .previous
                        .as_ref()
                        .is_some_and(|p| p.last_verdict == VerdictWord::TerminalConflict.as_str());
                    if matches!(verdict, Verdict::TerminalConflict) && !known {
                        tracing::error!(
                            order_id = %plan.row.order_id,
                            row = %plan.row.status,
                            exchange = plan.exchange_status.as_deref().unwrap_or(""),
                            "terminal conflict: the bot's row says one outcome, the exchange another; not written"
                        );
                    }
                }
                (_, Some(Err(error))) => self.store_failed(&mut checked, &plan.row.order_id, &error),
                (_, _) => {}
            }
            results.push(checked);
        }
        results
    }

    /// Keep the first unanswered check of a pending order since it was last seen open, and tell it when this
    /// answer shows the order ended (it is kept until the row leaves the pending ones: the end may wait
    /// for the bot's grace).
    fn unanswered(&self, id: &OrderId, answer: &Answer, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Answer::Ambiguous(_) | Answer::Unavailable(_) => {
                unanswered.entry(id.clone()).or_insert(now);
                None
            }
            Answer::Order(order) if ends_order(&order.status) => unanswered.get(id).copied(),
            Answer::Order(_) | Answer::NotFound => unanswered.remove(id),
        }
    }

    /// Decide on one order and count the check; nothing is written yet.
    fn plan<'r>(&self, item: &Item<'r, '_>, source: Source, now: DateTime<Utc>) -> Plan<'r> {
        let row = item.row;
        let account = match self.accounts.belongs(row) {
            Belongs::To(index) => self.accounts.map.name(index).to_string(),
            Belongs::Nowhere => String::new(),
        };
        let span = check_span(row, &account, source);
        let _entered = span.enter();
        let words = self.store.words();
        let db = DbStatus::classify(&row.status, words);
        let state = item.state;
        let unresolved_before = state.map_or(0, |s| u32::try_from(s.unresolved_in_a_row).unwrap_or(u32::MAX));
        let seen_before = match (state.and_then(|s| s.ended_seen), item.hint) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        let grace = if source == Source::Manual { Duration::ZERO } else { self.settings().grace };
        let not_found_before = state.map(|s| s.not_found_at.clone()).unwrap_or_default();
        let unanswered_since = (db == DbStatus::Pending).then(|| self.unanswered(&row.order_id, item.answer, now));
        let context = Context {
            now,
            grace: chrono_duration(grace),
            seen_by: seen_by(source),
            seen_before,
            unresolved_before,
            flag_after: self.settings().flag_after,
            flagged_before: state.is_some_and(|s| s.flagged),
            row_product: row.product_id.clone(),
            not_found_policy: self.settings().not_found,
            not_found_before,
            exchange_answering: item.answering,
            unanswered_since: unanswered_since.flatten(),
        };
        let action = decide(db, item.answer, &context);
        let (exchange_status, label, ended, filled_size, exchange_product) = match item.answer {
            Answer::Order(order) => {
                let ended = ends_order(&order.status).then(|| ended_at(order, &context));
                (
                    Some(order.status.as_str().to_string()),
                    order.status.label(),
                    ended,
                    order.filled_size.map(|s| s.to_string()),
                    Some(order.product_id.clone()),
                )
            }
            Answer::NotFound => (None, "NOT_FOUND", None, None, None),
            Answer::Ambiguous(_) => (None, "AMBIGUOUS", None, None, None),
            Answer::Unavailable(_) => (None, "UNAVAILABLE", None, None, None),
        };
        // The 404s that count towards the not-found policy: reset by an answer about the order, kept through
        // an answer that says nothing (an outage).
        // Kept only while the policy is on, and at most `NOT_FOUND_TIMES_KEPT` (the first and the latest).
        let mut not_found_at = match item.answer {
            _ if self.settings().not_found.is_none() => Vec::new(),
            Answer::NotFound if db == DbStatus::Pending => context.not_found_times(),
            Answer::Ambiguous(_) | Answer::Unavailable(_) => context.not_found_before.clone(),
            _ => Vec::new(),
        };
        if not_found_at.len() > NOT_FOUND_TIMES_KEPT {
            not_found_at.drain(1..not_found_at.len() - NOT_FOUND_TIMES_KEPT + 1);
        }
        let next_check_at = match &action {
            Action::Keep(Verdict::Unresolved { why, .. }) if db == DbStatus::Pending => {
                next_check(why, unresolved_before.saturating_add(1), self.settings().poll_interval, now)
            }
            _ => None,
        };
        let seen = ended.map(|_| context.first_seen());
        self.metrics.check(action.outcome());
        let mut checked = Checked {
            order_id: row.order_id.to_string(),
            bot_id: row.bot_id.clone(),
            product_id: row.product_id.clone(),
            db_status: row.status.clone(),
            created_at: row.created_at,
            created_raw: row.created_raw.clone(),
            age_seconds: row.age(now).map(|age| age.num_seconds()),
            exchange_status: exchange_status.clone(),
            verdict: action.verdict_word(),
            result: CheckResult::Unchanged,
            detail: None,
        };
        match &action {
            Action::Keep(Verdict::Unresolved { why, flagged }) => {
                checked.detail = Some(why.describe());
                // Said once, when the order becomes flagged; the flag stays in its check state and the gauge.
                if *flagged && !state.is_some_and(|s| s.flagged) {
                    tracing::warn!(order_id = %row.order_id, why = %why.describe(), "order flagged: no certain answer after repeated checks");
                } else {
                    tracing::debug!(order_id = %row.order_id, why = %why.describe(), "order unresolved this time");
                }
            }
            Action::Keep(Verdict::Waiting { until }) => {
                checked.detail = Some(format!("ended on the exchange; the bot has until {until} to write it"));
            }
            Action::Keep(Verdict::ProductConflict { exchange }) => {
                checked.detail = Some(format!(
                    "the row says product {} but the exchange's order is for {exchange}",
                    row.product_id.as_deref().unwrap_or("?")
                ));
            }
            Action::Keep(Verdict::TerminalConflict) => {
                checked.detail = Some(format!(
                    "the row says {} but the exchange says {}",
                    row.status,
                    exchange_status.as_deref().unwrap_or("?")
                ));
            }
            _ => {}
        }
        Plan {
            row,
            account,
            action,
            exchange_status,
            label,
            ended,
            seen,
            filled_size,
            exchange_product,
            previous: state.cloned(),
            next_check_at,
            not_found_at,
            checked,
            span: span.clone(),
        }
    }

    fn store_failed(&self, checked: &mut Checked, order_id: &OrderId, error: &StoreError) {
        if let StoreError::LeaseLost { .. } = error {
            // Not an error: the account went to another replica mid-pass, which checks the order now.
            tracing::debug!(order_id = %order_id, error = %error, "not written: the account is another replica's");
            checked.result = CheckResult::NotWritten;
            checked.detail = Some(error.to_string());
            return;
        }
        tracing::error!(order_id = %order_id, error = %error, "writing the check failed; order left as it was");
        self.metrics.store_errors.inc();
        checked.result = CheckResult::Error;
        checked.detail = Some(error.to_string());
    }

    /// Passes every poll interval (±10% jitter, so replicas drift apart) until `token` is cancelled. The
    /// pass in hand finishes its current order first. A pass that could check no order (every lookup
    /// failed) is a failed pass.
    pub async fn run(&self, token: CancellationToken) {
        loop {
            let started = Instant::now();
            let span = self.pass_span(Mode::Apply);
            let outcome = self.pass_body(Mode::Apply, &token, &|_, _| {}, true).instrument(span.clone()).await;
            // What the pass did is said inside its span.
            let entered = span.enter();
            match outcome {
                Ok(report) if report.failed => {
                    self.metrics.reconcile_runs.with_label_values(&["failure"]).inc();
                    tracing::error!(
                        orders = report.checked.len() + report.omitted,
                        "reconcile pass failed: the exchange gave no certain answer for any order; trying again next tick"
                    );
                }
                Ok(report) => {
                    self.metrics.reconcile_runs.with_label_values(&["success"]).inc();
                    self.metrics.last_successful_reconcile.set(Utc::now().timestamp_millis() as f64 / 1000.0);
                    tracing::debug!(
                        checked = report.checked.len() + report.omitted,
                        corrected = report.count(CheckResult::Corrected),
                        verified = report.verified.len(),
                        "reconcile pass done"
                    );
                }
                Err(error) => {
                    self.metrics.reconcile_runs.with_label_values(&["failure"]).inc();
                    tracing::error!(error = %error, "reconcile pass failed; trying again next tick");
                }
            }
            drop(entered);
            self.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
            crate::memory::release_free();
            let interval = self.settings().poll_interval.as_secs_f64();
            let pause = Duration::from_secs_f64(interval * rand::thread_rng().gen_range(0.9..=1.1));
            let next_tick = Instant::now() + pause;
            let woken = tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(pause) => false,
                () = self.wake.notified() => true,
            };
            if woken {
                // However many wake-ups arrive, at most one extra pass per WAKE_COALESCE; never later than
                // the pass the interval brings anyway.
                let rest = WAKE_COALESCE
                    .saturating_sub(started.elapsed())
                    .min(next_tick.saturating_duration_since(Instant::now()));
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(rest) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn each_check_result_is_written_as_its_json_form() {
        let mut seen = HashSet::new();
        for result in CheckResult::ALL {
            assert_eq!(serde_json::to_string(&result).unwrap(), format!("\"{}\"", result.as_str()));
            assert!(seen.insert(result.as_str()), "{result:?} said once");
        }
    }

    fn due(seconds: i64, seen: i64) -> Due {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Due {
            at: at + chrono::Duration::seconds(seconds),
            seen: (at + chrono::Duration::seconds(seen), EndSource::SeenWebsocket),
            news: None,
            source: Source::Websocket,
        }
    }

    #[test]
    fn one_due_check_per_order_keeping_the_earliest_sighting_and_time() {
        let checks = DueChecks::default();
        let id = OrderId::parse("a").unwrap();
        checks.schedule(id.clone(), due(20, 10));
        checks.schedule(id.clone(), due(15, 12));
        checks.schedule(OrderId::parse("b").unwrap(), due(30, 20));
        assert_eq!(checks.len(), 2);
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let (taken, next) = checks.take_due(start + chrono::Duration::seconds(16), 10);
        assert_eq!(taken.len(), 1);
        let (taken_id, taken_due) = &taken[0];
        assert_eq!(taken_id, &id);
        assert_eq!(taken_due.at, start + chrono::Duration::seconds(15));
        assert_eq!(taken_due.seen.0, start + chrono::Duration::seconds(10), "the earliest sighting");
        assert_eq!(next, Some(start + chrono::Duration::seconds(30)));
        assert_eq!(checks.take_due(start, 10).0.len(), 0, "nothing due yet");
    }
}
