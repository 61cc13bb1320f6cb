//! The reconciler: pending rows -> exchange -> `decide` -> `Store::write_batch`. `check_many` is the one
//! apply path: the poll loop, a manual reconcile of one order, and the WebSocket listener all end there.
//!
//! Deliberately not here: the decision itself (`decide.rs`), SQL (`db/`), HTTP and JSON. Cancellation is
//! honoured only between orders, never inside a batch write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Applied, CheckRecord, CheckState, Correction, Source, Store, StoreError, Write, Written};
use crate::decide::{decide, Action, Answer, DbStatus, Verdict};
use crate::exchange::{Exchange, ExchangeError};
use crate::metrics::Metrics;
use crate::order::{OrderId, TradeRow};

/// What the reconciler needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    pub grace: Duration,
    pub flag_after: u32,
    pub batch_size: usize,
}

/// Write corrections, or only report what would be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
}

/// One order checked: what the exchange said, what was decided, what happened.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub order_id: String,
    pub bot_id: Option<String>,
    pub product_id: Option<String>,
    pub db_status: String,
    pub created_at: DateTime<Utc>,
    pub age_seconds: i64,
    /// The exchange's status word, when it gave one.
    pub exchange_status: Option<String>,
    /// `in_sync`, `mismatch`, `unresolved`, `flagged`, `terminal_conflict`, `not_managed`.
    pub verdict: &'static str,
    /// `corrected`, `would_correct`, `row_changed`, `already_settled`, `unchanged`, or `error`.
    pub result: &'static str,
    pub detail: Option<String>,
}

/// One order decided on, before its write.
struct Plan<'a> {
    row: &'a TradeRow,
    action: Action,
    exchange_status: Option<String>,
    /// A bounded word for the exchange's answer.
    label: &'static str,
    bot: String,
    checked: Checked,
}

impl Plan<'_> {
    /// What to write for this order.
    fn write(&self, source: Source, now: DateTime<Utc>) -> Write<'_> {
        match &self.action {
            Action::Correct { to, fill } => Write::Correction(Correction {
                row: self.row,
                to: *to,
                fill,
                exchange_status: self.exchange_status.as_deref().unwrap_or(self.label),
                source,
                detected_at: now,
                bot: &self.bot,
            }),
            Action::Keep(verdict) => {
                let (error, flagged) = match verdict {
                    Verdict::Unresolved { why, flagged } => (Some(why.describe()), *flagged),
                    _ => (None, false),
                };
                Write::Check(CheckRecord {
                    order_id: &self.row.order_id,
                    exchange_status: self.exchange_status.as_deref(),
                    verdict: self.action.verdict_word(),
                    error,
                    flagged,
                    at: now,
                    bot: &self.bot,
                    outcome: self.action.outcome(),
                })
            }
        }
    }
}

/// The result of one pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub checked: Vec<Checked>,
    /// Pending rows left alone because they are younger than the grace period.
    pub too_young: usize,
    /// The pass was cancelled before every order was checked.
    pub interrupted: bool,
}

impl PassReport {
    pub fn count(&self, result: &str) -> usize {
        self.checked.iter().filter(|c| c.result == result).count()
    }

    pub fn mismatches(&self) -> usize {
        self.checked.iter().filter(|c| c.verdict == "mismatch").count()
    }
}

/// Failures that stop a whole pass (one order's failure never does).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading pending orders failed: {0}")]
    Store(#[from] StoreError),
    #[error("order {0} is not in the bot's table")]
    UnknownOrder(OrderId),
}

/// Ask the exchange about `ids`: one batch lookup, then Get Order for each id the batch did not return
/// (absence from a batch proves nothing). Every id gets an answer.
pub async fn lookup(exchange: &dyn Exchange, ids: &[OrderId]) -> HashMap<OrderId, Answer> {
    let mut answers = HashMap::with_capacity(ids.len());
    match exchange.orders(ids).await {
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
                    let answer = answer_of(exchange.order(id).await);
                    answers.insert(id.clone(), answer);
                }
            }
        }
        Err(error) => {
            for id in ids {
                answers.insert(id.clone(), Answer::Ambiguous(error.to_string()));
            }
        }
    }
    answers
}

/// The answer a single Get Order gives.
pub fn answer_of(result: Result<crate::exchange::ExchangeOrder, ExchangeError>) -> Answer {
    match result {
        Ok(order) => Answer::Order(order),
        Err(ExchangeError::NotFound) => Answer::NotFound,
        Err(error) => Answer::Ambiguous(error.to_string()),
    }
}

/// Drives passes over the pending orders. Cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    store: Store,
    exchange: Arc<dyn Exchange>,
    metrics: Metrics,
    settings: Settings,
    wake: Arc<Notify>,
}

impl Reconciler {
    pub fn new(store: Store, exchange: Arc<dyn Exchange>, metrics: Metrics, settings: Settings) -> Reconciler {
        Reconciler { store, exchange, metrics, settings, wake: Arc::new(Notify::new()) }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Ask the loop for a pass now rather than at the next tick (after a WebSocket gap, say).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One pass over every pending order older than the grace period, oldest first.
    ///
    /// # Errors
    /// Only when the pending orders cannot be read at all; a single order's failure is logged, counted,
    /// and the order left as it was.
    pub async fn pass(&self, mode: Mode, token: &CancellationToken) -> Result<PassReport, ReconcileError> {
        self.pass_with_progress(mode, token, &|_, _| {}).await
    }

    /// As `pass`, telling `progress(done, total)` after each order (for a progress bar).
    ///
    /// # Errors
    /// As `pass`.
    pub async fn pass_with_progress(
        &self,
        mode: Mode,
        token: &CancellationToken,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<PassReport, ReconcileError> {
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
        let cutoff = Utc::now() - chrono::Duration::from_std(self.settings.grace).unwrap_or_default();
        let (eligible, young): (Vec<TradeRow>, Vec<TradeRow>) = rows.into_iter().partition(|r| r.created_at <= cutoff);
        let mut report = PassReport { too_young: young.len(), ..PassReport::default() };
        let mut unresolved_mismatches = 0;
        // The next batch's lookup runs while this batch is written, so the exchange and the database work
        // at the same time; lookups only read, so abandoning one on cancellation is harmless.
        let chunks: Vec<&[TradeRow]> = eligible.chunks(self.settings.batch_size.max(1)).collect();
        let mut next = chunks.first().map(|chunk| self.prefetch(chunk));
        for (index, chunk) in chunks.iter().enumerate() {
            let Some(lookup) = next.take() else { break };
            if token.is_cancelled() {
                lookup.abort();
                report.interrupted = true;
                break;
            }
            let mut answers = lookup.await.unwrap_or_default();
            next = chunks.get(index + 1).map(|chunk| self.prefetch(chunk));
            let ids: Vec<OrderId> = chunk.iter().map(|row| row.order_id.clone()).collect();
            let states = self.check_states(&ids).await;
            let mut items = Vec::with_capacity(chunk.len());
            for row in chunk.iter() {
                if token.is_cancelled() {
                    report.interrupted = true;
                    break;
                }
                let answer = answers
                    .remove(&row.order_id)
                    .unwrap_or_else(|| Answer::Ambiguous("the exchange lookup gave no answer".into()));
                items.push((row, answer));
            }
            let batch: Vec<(&TradeRow, &Answer, Option<&CheckState>)> =
                items.iter().map(|(row, answer)| (*row, answer, states.get(&row.order_id))).collect();
            for checked in self.check_many(&batch, mode, Source::Poll).await {
                if checked.verdict == "mismatch" && !matches!(checked.result, "corrected" | "already_settled") {
                    unresolved_mismatches += 1;
                }
                report.checked.push(checked);
                progress(report.checked.len(), eligible.len());
            }
            if report.interrupted {
                if let Some(lookup) = next.take() {
                    lookup.abort();
                }
                break;
            }
        }
        if !report.interrupted {
            self.metrics.unresolved_mismatches.set(unresolved_mismatches);
            let flagged = report.checked.iter().filter(|c| c.verdict == "flagged").count();
            self.metrics.flagged_orders.set(flagged as i64);
        }
        Ok(report)
    }

    /// Start looking up a batch in the background.
    fn prefetch(&self, chunk: &[TradeRow]) -> tokio::task::JoinHandle<HashMap<OrderId, Answer>> {
        let ids: Vec<OrderId> = chunk.iter().map(|row| row.order_id.clone()).collect();
        let exchange = self.exchange.clone();
        tokio::spawn(async move { lookup(exchange.as_ref(), &ids).await })
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

    /// Check one order now (a manual reconcile): read its row, ask the exchange, decide, apply.
    ///
    /// # Errors
    /// `UnknownOrder` when the bot's table has no such order; `Store` when it cannot be read.
    pub async fn reconcile_one(&self, order_id: &OrderId, mode: Mode) -> Result<Checked, ReconcileError> {
        let row = self.store.trade(order_id).await?.ok_or_else(|| ReconcileError::UnknownOrder(order_id.clone()))?;
        let answer = answer_of(self.exchange.order(order_id).await);
        let states = self.check_states(std::slice::from_ref(order_id)).await;
        Ok(self.check(&row, &answer, states.get(order_id), mode, Source::Manual).await)
    }

    /// Decide on one row and answer, write the outcome (unless dry-run), count and log: `check_many` for one.
    pub async fn check(
        &self,
        row: &TradeRow,
        answer: &Answer,
        state: Option<&CheckState>,
        mode: Mode,
        source: Source,
    ) -> Checked {
        let mut checked = self.check_many(&[(row, answer, state)], mode, source).await;
        checked.pop().expect("check_many returns one result per order")
    }

    /// THE apply path: decide on each (row, answer, check state), write every outcome in one batch (unless
    /// dry-run), then count, log and report each. Poll, manual and WebSocket checks all come through here.
    pub async fn check_many(
        &self,
        items: &[(&TradeRow, &Answer, Option<&CheckState>)],
        mode: Mode,
        source: Source,
    ) -> Vec<Checked> {
        let now = Utc::now();
        let words = self.store.words();
        let plans: Vec<Plan> = items.iter().map(|(row, answer, state)| self.plan(row, answer, *state, now)).collect();
        let writes: Vec<Write<'_>> = match mode {
            Mode::DryRun => Vec::new(),
            Mode::Apply => plans.iter().map(|plan| plan.write(source, now)).collect(),
        };
        let mut written = self.store.write_batch(&writes).await.into_iter();
        let mut results = Vec::with_capacity(plans.len());
        for plan in plans {
            let outcome = if mode == Mode::Apply { written.next() } else { None };
            let mut checked = plan.checked;
            match (&plan.action, outcome) {
                (Action::Correct { to, .. }, None) => {
                    checked.result = "would_correct";
                    checked.detail = Some(format!("would set {} -> {}", plan.row.status, to.word(words)));
                }
                (Action::Correct { to, .. }, Some(Ok(Written::Correction(Applied::Written { latency, .. })))) => {
                    self.metrics.correction(plan.row, *to, to.word(words), source, latency);
                    checked.result = "corrected";
                    checked.detail = Some(format!("{} -> {}", plan.row.status, to.word(words)));
                }
                (Action::Correct { to, .. }, Some(Ok(Written::Correction(Applied::AlreadyApplied)))) => {
                    checked.result = "already_settled";
                    checked.detail = Some(format!("already {}", to.word(words)));
                }
                (Action::Correct { .. }, Some(Ok(Written::Correction(Applied::RowChanged { now })))) => {
                    tracing::info!(
                        order_id = %plan.row.order_id,
                        now = now.as_deref().unwrap_or("<deleted>"),
                        "the bot changed the order itself meanwhile; not overwritten"
                    );
                    checked.result = "row_changed";
                    checked.detail = Some(format!("the bot set it to {:?} meanwhile", now.unwrap_or_default()));
                }
                (_, Some(Err(error))) => self.store_failed(&mut checked, &plan.row.order_id, &error),
                (_, _) => {}
            }
            results.push(checked);
        }
        results
    }

    /// Decide on one order and count the check; nothing is written yet.
    fn plan<'a>(&self, row: &'a TradeRow, answer: &Answer, state: Option<&CheckState>, now: DateTime<Utc>) -> Plan<'a> {
        let words = self.store.words();
        let db = DbStatus::classify(&row.status, words);
        let unresolved_before = state.map_or(0, |s| u32::try_from(s.unresolved_in_a_row).unwrap_or(u32::MAX));
        let action = decide(db, answer, unresolved_before, self.settings.flag_after);
        let (exchange_status, label) = match answer {
            Answer::Order(order) => (Some(order.status.as_str().to_string()), order.status.label()),
            Answer::NotFound => (None, "NOT_FOUND"),
            Answer::Ambiguous(_) => (None, "AMBIGUOUS"),
        };
        self.metrics.check(action.outcome());
        let mut checked = Checked {
            order_id: row.order_id.to_string(),
            bot_id: row.bot_id.clone(),
            product_id: row.product_id.clone(),
            db_status: row.status.clone(),
            created_at: row.created_at,
            age_seconds: (now - row.created_at).num_seconds(),
            exchange_status: exchange_status.clone(),
            verdict: action.verdict_word(),
            result: "unchanged",
            detail: None,
        };
        match &action {
            Action::Correct { .. } => self.metrics.mismatch(row, label),
            Action::Keep(Verdict::Unresolved { why, flagged }) => {
                checked.detail = Some(why.describe());
                if *flagged {
                    tracing::warn!(order_id = %row.order_id, why = %why.describe(), "order flagged: no certain answer after repeated checks");
                } else {
                    tracing::debug!(order_id = %row.order_id, why = %why.describe(), "order unresolved this time");
                }
            }
            Action::Keep(_) => {}
        }
        Plan { row, action, exchange_status, label, bot: self.metrics.bot_label(row.bot_id.as_deref()), checked }
    }

    fn store_failed(&self, checked: &mut Checked, order_id: &OrderId, error: &StoreError) {
        tracing::error!(order_id = %order_id, error = %error, "writing the check failed; order left as it was");
        self.metrics.store_errors.inc();
        checked.result = "error";
        checked.detail = Some(error.to_string());
    }

    /// Passes every poll interval (±10% jitter, so replicas drift apart) until `token` is cancelled. The
    /// pass in hand finishes its current order first.
    pub async fn run(&self, token: CancellationToken) {
        loop {
            let started = Instant::now();
            match self.pass(Mode::Apply, &token).await {
                Ok(report) => {
                    self.metrics.reconcile_runs.with_label_values(&["success"]).inc();
                    self.metrics.last_successful_reconcile.set(Utc::now().timestamp_millis() as f64 / 1000.0);
                    tracing::debug!(
                        checked = report.checked.len(),
                        corrected = report.count("corrected"),
                        "reconcile pass done"
                    );
                }
                Err(error) => {
                    self.metrics.reconcile_runs.with_label_values(&["failure"]).inc();
                    tracing::error!(error = %error, "reconcile pass failed; trying again next tick");
                }
            }
            self.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
            let interval = self.settings.poll_interval.as_secs_f64();
            let pause = Duration::from_secs_f64(interval * rand::thread_rng().gen_range(0.9..=1.1));
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}
