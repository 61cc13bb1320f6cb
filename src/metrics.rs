//! `Metrics`: every `ordersync_*` metric, registered on a `Registry` the app creates and passes in (never
//! the global one, so several apps run in one test process). Also the one place a correction is counted
//! and logged (`Metrics::correction`), and the gauge refresher that reads pending rows on its own schedule
//! so a scrape never waits on the database.
//!
//! Deliberately not here: HTTP (`http.rs` encodes the registry) and deciding anything.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::db::{ConflictKind, ConflictRow, Source, Store};
use crate::decide::{Outcome, PendingKind, SettledBy, Terminal};
use crate::order::{OrderId, TradeRow};

/// Thresholds of `ordersync_pending_orders_over_age`, in seconds.
pub const AGE_THRESHOLDS: [u64; 5] = [60, 300, 900, 3600, 21600];
/// Edges on 1 s (the sub-second goal), 30 s and 120 s (the incident's two goals).
pub const SYNC_LATENCY_BUCKETS: [f64; 13] =
    [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];
/// At most this many distinct `bot` (and `product`) label values; the rest are reported as `other`.
pub const MAX_LABEL_VALUES: usize = 100;

const COLLECTOR_PENDING: &str = "pending_orders";

/// Keeps a label's set of values bounded: the first `MAX_LABEL_VALUES` distinct values pass, later ones
/// become `other`; an empty or missing value is `none`.
#[derive(Debug, Default)]
pub struct LabelCap {
    seen: Mutex<HashSet<String>>,
    /// Every label handed out so far (`none` and `other` included).
    given: Mutex<HashSet<String>>,
}

impl LabelCap {
    pub fn label(&self, value: Option<&str>) -> String {
        self.label_first(value).0
    }

    /// The label, and whether it is handed out for the first time.
    pub fn label_first(&self, value: Option<&str>) -> (String, bool) {
        let label = match value {
            None | Some("") => "none".to_string(),
            Some(value) => {
                let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if seen.contains(value) {
                    value.to_string()
                } else if seen.len() < MAX_LABEL_VALUES {
                    seen.insert(value.to_string());
                    value.to_string()
                } else {
                    "other".to_string()
                }
            }
        };
        let first = self.given.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(label.clone());
        (label, first)
    }
}

/// An age by bot, computed at scrape time from a cached creation time, so it keeps growing even when the
/// refresher stalls (`ordersync_oldest_pending_order_age_seconds`, `ordersync_oldest_blocking_order_age_seconds`).
#[derive(Clone)]
struct OldestAge {
    desc: Desc,
    oldest: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Collector for OldestAge {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        let oldest = self.oldest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let vec = GaugeVec::new(Opts::new(self.desc.fq_name.clone(), self.desc.help.clone()), &["bot"])
            .expect("static metric definition");
        for (bot, created) in oldest.iter() {
            vec.with_label_values(&[bot.as_str()]).set((now - created).max(0.0));
        }
        vec.collect()
    }
}

/// The revision ordersync was built from (`git rev-parse --short=12 HEAD`, or `unknown`).
pub const REVISION: &str = env!("ORDERSYNC_GIT_SHA");

/// The day ordersync was built (UTC, `YYYY-MM-DD`; `SOURCE_DATE_EPOCH`'s when set).
pub const BUILD_DATE: &str = env!("ORDERSYNC_BUILD_DATE");

/// What `ordersync --version` prints after the name: version, revision and build date.
pub const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("ORDERSYNC_GIT_SHA"), ", built ", env!("ORDERSYNC_BUILD_DATE"), ")");

/// Every metric ordersync exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    bots: Arc<LabelCap>,
    products: Arc<LabelCap>,
    /// `stuck_after` in milliseconds (`SIGHUP` may change it).
    stuck_after_ms: Arc<AtomicU64>,
    pub pending_orders: IntGaugeVec,
    pub oldest_pending_timestamp: GaugeVec,
    oldest_pending: Arc<Mutex<BTreeMap<String, f64>>>,
    oldest_blocking: Arc<Mutex<BTreeMap<String, f64>>>,
    pub pending_over_age: IntGaugeVec,
    pub stuck_orders: IntGaugeVec,
    pub resting_orders: IntGaugeVec,
    pub unreadable_rows: IntGaugeVec,
    pub blocked_bots: IntGauge,
    pub terminal_conflicts: IntGaugeVec,
    pub product_conflicts: IntGaugeVec,
    pub written_off: IntCounterVec,
    pub deferred_orders: IntGauge,
    pub unmatched_rows: IntGauge,
    pub account_owner: IntGaugeVec,
    pub correction_brake: IntGauge,
    pub corrections_held: IntGauge,
    pub observe_only: IntGauge,
    pub settled: IntCounterVec,
    pub settled_late: IntCounterVec,
    pub incomplete_fills: IntCounter,
    pub mismatches: IntCounterVec,
    pub corrections: IntCounterVec,
    pub order_checks: IntCounterVec,
    pub unresolved_mismatches: IntGauge,
    pub flagged_orders: IntGauge,
    pub sync_latency: HistogramVec,
    pub reconcile_duration: Histogram,
    pub reconcile_runs: IntCounterVec,
    pub last_successful_reconcile: Gauge,
    pub exchange_requests: IntCounterVec,
    pub exchange_request_duration: HistogramVec,
    pub exchange_up: IntGaugeVec,
    pub database_up: IntGauge,
    pub collector_success: IntGaugeVec,
    pub collector_duration: GaugeVec,
    pub last_successful_collection: GaugeVec,
    pub store_errors: IntCounter,
    pub alert_emails: IntCounterVec,
    pub websocket_connected: IntGaugeVec,
    pub websocket_messages: IntCounterVec,
    pub websocket_reconnects: IntCounter,
    pub websocket_sequence_gaps: IntCounter,
    /// What each account's exchange last said, by account name.
    exchange: Arc<Mutex<BTreeMap<String, ExchangeContact>>>,
    names: Arc<Vec<String>>,
}

/// What ordersync last heard from the exchange, for readiness.
#[derive(Debug, Default)]
struct ExchangeContact {
    /// The last authenticated answer (any REST answer but 401/403 and transient failures; a heartbeat).
    answered: Option<Instant>,
    /// A request was sent at least once.
    attempted: bool,
    /// Since when every REST request has failed (none answered since).
    rest_failing_since: Option<Instant>,
    /// The last answer was 401/403: the key was refused.
    rejected: Option<String>,
}

/// Where the exchange stands for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeHealth {
    /// Nothing was asked yet.
    NotContacted,
    /// Asked, and no authenticated answer ever came.
    NeverAnswered,
    /// The credentials were refused (401/403), with what the exchange said.
    Rejected(String),
    /// The last authenticated answer came this long ago.
    Answered(Duration),
    /// The user channel still answers, but every REST request has failed for this long.
    RestFailing(Duration),
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Create and register every metric on `registry`.
    ///
    /// # Errors
    /// Only if a metric is registered twice on the same registry.
    pub fn new(registry: Registry, stuck_after: Duration) -> Result<Metrics, prometheus::Error> {
        let oldest_pending = Arc::new(Mutex::new(BTreeMap::new()));
        let oldest_blocking = Arc::new(Mutex::new(BTreeMap::new()));
        let metrics = Metrics {
            bots: Arc::new(LabelCap::default()),
            products: Arc::new(LabelCap::default()),
            stuck_after_ms: Arc::new(AtomicU64::new(millis(stuck_after))),
            pending_orders: IntGaugeVec::new(
                opts("ordersync_pending_orders", "Orders the bot's database holds as pending right now, by bot and product."),
                &["bot", "product"],
            )?,
            oldest_pending_timestamp: GaugeVec::new(
                opts(
                    "ordersync_oldest_pending_order_timestamp_seconds",
                    "Creation time (Unix seconds) of the oldest order still pending in the bot's database, by bot.",
                ),
                &["bot"],
            )?,
            oldest_pending: oldest_pending.clone(),
            oldest_blocking: oldest_blocking.clone(),
            pending_over_age: IntGaugeVec::new(
                opts(
                    "ordersync_pending_orders_over_age",
                    "Orders pending for longer than `threshold` seconds right now: the age distribution of what is pending.",
                ),
                &["threshold"],
            )?,
            stuck_orders: IntGaugeVec::new(
                opts(
                    "ordersync_stuck_orders",
                    "Orders pending longer than ORDERSYNC_STUCK_AFTER while the exchange says they ended, gave no \
                     certain answer, or was never asked, by bot: each one may be blocking its bot. Resting orders \
                     (live on the exchange) are not stuck.",
                ),
                &["bot"],
            )?,
            resting_orders: IntGaugeVec::new(
                opts(
                    "ordersync_resting_orders",
                    "Pending orders the exchange last said are live (OPEN, PENDING, QUEUED, CANCEL_QUEUED, \
                     EDIT_QUEUED), by bot: the bot waiting on purpose; pages no one.",
                ),
                &["bot"],
            )?,
            unreadable_rows: IntGaugeVec::new(
                opts(
                    "ordersync_unreadable_rows",
                    "Pending rows whose creation time cannot be read as a time, by bot: reconciled like any other, \
                     their age unknown; they count as stuck unless resting.",
                ),
                &["bot"],
            )?,
            blocked_bots: IntGauge::with_opts(opts(
                "ordersync_blocked_bots",
                "Bots with at least one stuck order: these bots are likely not trading.",
            ))?,
            terminal_conflicts: IntGaugeVec::new(
                opts(
                    "ordersync_terminal_conflicts",
                    "Rows the bot marked terminal that the exchange ended with another position (cancelled by the \
                     bot, FILLED on Coinbase; or completed, CANCELLED with nothing filled), by bot, until the bot's \
                     row changes: ordersync never writes them.",
                ),
                &["bot"],
            )?,
            product_conflicts: IntGaugeVec::new(
                opts(
                    "ordersync_product_conflicts",
                    "Rows whose product column names another product than the exchange's order of that id, by bot, \
                     until the row changes: ordersync never writes them.",
                ),
                &["bot"],
            )?,
            written_off: IntCounterVec::new(
                opts(
                    "ordersync_orders_written_off_total",
                    "Pending orders the opt-in not-found policy wrote as its terminal word (Coinbase answered 404 \
                     for them repeatedly while answering other orders), by bot.",
                ),
                &["bot"],
            )?,
            deferred_orders: IntGauge::with_opts(opts(
                "ordersync_deferred_orders",
                "Unresolved pending orders (404, an unknown status word) the last pass did not ask about: their \
                 exponential backoff has them wait.",
            ))?,
            unmatched_rows: IntGauge::with_opts(opts(
                "ordersync_unmatched_rows",
                "Pending rows the last pass found belonging to no configured Coinbase account (by the account \
                 column, the bot patterns or the default account): never asked about with another account's key, \
                 never written; ordersync audit lists them.",
            ))?,
            account_owner: IntGaugeVec::new(
                opts(
                    "ordersync_account_owner",
                    "1 while this replica serves the account (holds its lease: calls Coinbase for it, listens to its \
                     user channel, writes its rows; always 1 on SQLite), 0 otherwise. Summed over the replicas: 1 \
                     per account, 0 while it changes hands.",
                ),
                &["account"],
            )?,
            correction_brake: IntGauge::with_opts(opts(
                "ordersync_correction_brake_engaged",
                "1 while the mass-correction brake holds every correction (a pass would correct more than \
                 max_corrections_per_pass rows or max_correction_share of the pending rows): an operator must look.",
            ))?,
            corrections_held: IntGauge::with_opts(opts(
                "ordersync_corrections_held",
                "Corrections the engaged mass-correction brake is holding (0 when it is released).",
            ))?,
            observe_only: IntGauge::with_opts(opts(
                "ordersync_observe_only",
                "1 when ordersync runs observe-only: it checks and exports everything and writes nothing to the \
                 bot's table.",
            ))?,
            settled: IntCounterVec::new(
                opts(
                    "ordersync_orders_settled_total",
                    "Ended orders (FILLED, CANCELLED, EXPIRED, FAILED) settled, each exactly once, by bot and by whom: \
                     by=\"bot\" when the bot's row was already right (or the bot wrote it within the grace period), \
                     by=\"ordersync\" when ordersync corrected it, by=\"conflict\" when the bot's terminal row \
                     ended it with another position. Bot accuracy = by=\"bot\" / all. Orders that ended before \
                     ordersync first ran on the database (backlog) are not counted.",
                ),
                &["bot", "by"],
            )?,
            settled_late: IntCounterVec::new(
                opts(
                    "ordersync_orders_settled_late_total",
                    "Ended orders whose row was not right within 2 minutes (the latency goal) of the order ending on \
                     the exchange (late corrections, and terminal conflicts), by bot. Effective accuracy = \
                     1 - late / ordersync_orders_settled_total.",
                ),
                &["bot"],
            )?,
            incomplete_fills: IntCounter::with_opts(opts(
                "ordersync_incomplete_fills_total",
                "FILLED orders completed without a figure (average price, filled size or fill time) that neither the \
                 order nor List Fills gave: the status was written, the figure left NULL.",
            ))?,
            mismatches: IntCounterVec::new(
                opts(
                    "ordersync_mismatches_total",
                    "Corrections written: the bot's row said pending while the exchange had ended the order (after the \
                     grace period), by bot and the exchange's status. Counted once per order, when the write commits.",
                ),
                &["bot", "exchange_status"],
            )?,
            corrections: IntCounterVec::new(
                opts("ordersync_corrections_total", "Corrections ordersync wrote to the bot's database."),
                &["bot", "to_status", "source"],
            )?,
            order_checks: IntCounterVec::new(
                opts(
                    "ordersync_order_checks_total",
                    "Checks of an order against the exchange by outcome (match, mismatch, unknown): an operational \
                     figure. The accuracy SLI is per order: ordersync_orders_settled_total.",
                ),
                &["outcome"],
            )?,
            unresolved_mismatches: IntGauge::with_opts(opts(
                "ordersync_unresolved_mismatches",
                "Mismatches found in the last pass and not fixed (dry-run, or the write failed).",
            ))?,
            flagged_orders: IntGauge::with_opts(opts(
                "ordersync_flagged_orders",
                "Pending orders the exchange gave no certain answer for, several checks in a row: look at them by hand.",
            ))?,
            sync_latency: HistogramVec::new(
                HistogramOpts::new(
                    "ordersync_sync_latency_seconds",
                    "Time from the order ending on the exchange (the last fill for FILLED; for CANCELLED, EXPIRED, \
                     FAILED the first sighting of it ended, or the first check of it the exchange left unanswered \
                     before that) to ordersync's commit of the correction.",
                )
                .buckets(SYNC_LATENCY_BUCKETS.to_vec()),
                &["source"],
            )?,
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new("ordersync_reconcile_duration_seconds", "Duration of one reconcile pass over all pending orders.")
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            )?,
            reconcile_runs: IntCounterVec::new(
                opts("ordersync_reconcile_runs_total", "Reconcile passes by result (success or failure)."),
                &["result"],
            )?,
            last_successful_reconcile: Gauge::with_opts(opts(
                "ordersync_last_successful_reconcile_timestamp_seconds",
                "When (Unix seconds) the last reconcile pass completed without failing.",
            ))?,
            exchange_requests: IntCounterVec::new(
                opts(
                    "ordersync_exchange_requests_total",
                    "Requests to the exchange API by account (its API key), endpoint and outcome.",
                ),
                &["account", "endpoint", "outcome"],
            )?,
            exchange_request_duration: HistogramVec::new(
                HistogramOpts::new("ordersync_exchange_request_duration_seconds", "Duration of requests to the exchange API.")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["endpoint"],
            )?,
            exchange_up: IntGaugeVec::new(
                opts(
                    "ordersync_exchange_up",
                    "1 if the exchange's last REST answer to the account's key was authenticated (even a 404), 0 if \
                     the request failed or the credentials were refused (401/403), by account; 0 on a replica that \
                     does not serve the account (take max across replicas).",
                ),
                &["account"],
            )?,
            database_up: IntGauge::with_opts(opts(
                "ordersync_database_up",
                "1 if the last query of the bot's database succeeded, 0 if it failed.",
            ))?,
            collector_success: IntGaugeVec::new(
                opts("ordersync_collector_success", "1 if the collector's last refresh succeeded, 0 if it failed."),
                &["collector"],
            )?,
            collector_duration: GaugeVec::new(
                opts("ordersync_collector_duration_seconds", "How long the collector's last refresh took."),
                &["collector"],
            )?,
            last_successful_collection: GaugeVec::new(
                opts(
                    "ordersync_last_successful_collection_timestamp_seconds",
                    "When (Unix seconds) the collector last refreshed successfully: how fresh the database gauges are.",
                ),
                &["collector"],
            )?,
            store_errors: IntCounter::with_opts(opts(
                "ordersync_store_errors_total",
                "Database errors while checking or correcting an order; the order was left as it was.",
            ))?,
            alert_emails: IntCounterVec::new(
                opts(
                    "ordersync_alert_emails_total",
                    "Alert e-mails about stuck orders by result: sent, failure (SMTP error; retried), suppressed (hourly cap).",
                ),
                &["result"],
            )?,
            websocket_connected: IntGaugeVec::new(
                opts(
                    "ordersync_websocket_connected",
                    "1 while subscribed to Coinbase's user channel (real-time order updates) with the account's key, \
                     0 otherwise, by account.",
                ),
                &["account"],
            )?,
            websocket_messages: IntCounterVec::new(
                opts("ordersync_websocket_messages_total", "Messages received on the user-channel WebSocket, by type."),
                &["type"],
            )?,
            websocket_reconnects: IntCounter::with_opts(opts(
                "ordersync_websocket_reconnects_total",
                "Times the WebSocket was lost (closed, failed or silent) and reconnected; each triggers a full resync.",
            ))?,
            websocket_sequence_gaps: IntCounter::with_opts(opts(
                "ordersync_websocket_sequence_gaps_total",
                "Jumps in the WebSocket's sequence numbers: messages were lost; each triggers a full resync.",
            ))?,
            exchange: Arc::new(Mutex::new(BTreeMap::new())),
            names: Arc::new(Vec::new()),
            registry,
        };
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(metrics.pending_orders.clone()),
            Box::new(metrics.oldest_pending_timestamp.clone()),
            Box::new(OldestAge {
                desc: Desc::new(
                    "ordersync_oldest_pending_order_age_seconds".into(),
                    "Age in seconds of the oldest order still pending in the bot's database (resting ones included), \
                     by bot, computed at scrape time."
                        .into(),
                    vec!["bot".into()],
                    Default::default(),
                )?,
                oldest: oldest_pending,
            }),
            Box::new(OldestAge {
                desc: Desc::new(
                    "ordersync_oldest_blocking_order_age_seconds".into(),
                    "Age in seconds of the bot's oldest pending order that is not resting (the exchange said it ended, \
                     gave no certain answer, or was never asked), by bot, computed at scrape time."
                        .into(),
                    vec!["bot".into()],
                    Default::default(),
                )?,
                oldest: oldest_blocking,
            }),
            Box::new(metrics.pending_over_age.clone()),
            Box::new(metrics.stuck_orders.clone()),
            Box::new(metrics.resting_orders.clone()),
            Box::new(metrics.unreadable_rows.clone()),
            Box::new(metrics.blocked_bots.clone()),
            Box::new(metrics.terminal_conflicts.clone()),
            Box::new(metrics.product_conflicts.clone()),
            Box::new(metrics.written_off.clone()),
            Box::new(metrics.deferred_orders.clone()),
            Box::new(metrics.unmatched_rows.clone()),
            Box::new(metrics.account_owner.clone()),
            Box::new(metrics.correction_brake.clone()),
            Box::new(metrics.corrections_held.clone()),
            Box::new(metrics.observe_only.clone()),
            Box::new(metrics.settled.clone()),
            Box::new(metrics.settled_late.clone()),
            Box::new(metrics.incomplete_fills.clone()),
            Box::new(metrics.mismatches.clone()),
            Box::new(metrics.corrections.clone()),
            Box::new(metrics.order_checks.clone()),
            Box::new(metrics.unresolved_mismatches.clone()),
            Box::new(metrics.flagged_orders.clone()),
            Box::new(metrics.sync_latency.clone()),
            Box::new(metrics.reconcile_duration.clone()),
            Box::new(metrics.reconcile_runs.clone()),
            Box::new(metrics.last_successful_reconcile.clone()),
            Box::new(metrics.exchange_requests.clone()),
            Box::new(metrics.exchange_request_duration.clone()),
            Box::new(metrics.exchange_up.clone()),
            Box::new(metrics.database_up.clone()),
            Box::new(metrics.collector_success.clone()),
            Box::new(metrics.collector_duration.clone()),
            Box::new(metrics.last_successful_collection.clone()),
            Box::new(metrics.store_errors.clone()),
            Box::new(metrics.alert_emails.clone()),
            Box::new(metrics.websocket_connected.clone()),
            Box::new(metrics.websocket_messages.clone()),
            Box::new(metrics.websocket_reconnects.clone()),
            Box::new(metrics.websocket_sequence_gaps.clone()),
        ];
        let build_info = IntGaugeVec::new(
            opts(
                "ordersync_build_info",
                "Always 1; labels say which ordersync version, git revision and build date is running.",
            ),
            &["version", "revision", "built"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION, BUILD_DATE]).set(1);
        collectors.push(Box::new(build_info));
        let mut names = Vec::new();
        for collector in collectors {
            names.extend(collector.desc().iter().map(|desc| desc.fq_name.clone()));
            metrics.registry.register(collector)?;
        }
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let metrics = Metrics { names: Arc::new(names), ..metrics };
        // Series that must exist from the start at 0, so rates and ratios are defined before anything happens.
        for outcome in Outcome::ALL {
            metrics.order_checks.with_label_values(&[outcome.as_str()]);
        }
        for result in ["success", "failure"] {
            metrics.reconcile_runs.with_label_values(&[result]);
        }
        for threshold in AGE_THRESHOLDS {
            metrics.pending_over_age.with_label_values(&[threshold.to_string().as_str()]);
        }
        for source in Source::ALL {
            metrics.sync_latency.with_label_values(&[source.as_str()]);
        }
        metrics.collector_success.with_label_values(&[COLLECTOR_PENDING]);
        for result in ["sent", "failure", "suppressed"] {
            metrics.alert_emails.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// A standalone set on a fresh registry (one-shot commands, tests).
    /// Count orders pending longer than `stuck_after` as stuck from the next refresh on.
    pub fn set_stuck_after(&self, stuck_after: Duration) {
        self.stuck_after_ms.store(millis(stuck_after), Ordering::Relaxed);
    }

    pub fn standalone(stuck_after: Duration) -> Metrics {
        Metrics::new(Registry::new(), stuck_after).expect("a fresh registry has no metric registered twice")
    }

    /// The name of every `ordersync_*` metric, whether or not it has a series yet (the text format leaves
    /// out labelled metrics with none).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The `bot` label of a bot id. A bot seen for the first time gets every per-bot counter an alert
    /// takes `increase()` or `rate()` of at 0, so its first increment is not hidden from Prometheus.
    pub fn bot_label(&self, bot: Option<&str>) -> String {
        let (label, first) = self.bots.label_first(bot);
        if first {
            for by in SettledBy::ALL {
                self.settled.with_label_values(&[label.as_str(), by.as_str()]);
                self.written_off.with_label_values(&[label.as_str()]);
            }
            self.settled_late.with_label_values(&[label.as_str()]);
            for status in ["FILLED", "CANCELLED", "EXPIRED", "FAILED"] {
                self.mismatches.with_label_values(&[label.as_str(), status]);
            }
        }
        label
    }

    /// Count one ended order settled (once per order: the store says when).
    pub fn settled(&self, bot: Option<&str>, by: SettledBy, late: bool) {
        let bot = self.bot_label(bot);
        self.settled.with_label_values(&[bot.as_str(), by.as_str()]).inc();
        if late {
            self.settled_late.with_label_values(&[bot.as_str()]).inc();
        }
    }

    /// Count one check of an order.
    pub fn check(&self, outcome: Outcome) {
        self.order_checks.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Count a correction written: pending in the database, ended on the exchange.
    pub fn mismatch(&self, row: &TradeRow, exchange_status: &str) {
        let bot = self.bot_label(row.bot_id.as_deref());
        self.mismatches.with_label_values(&[bot.as_str(), exchange_status]).inc();
    }

    /// The one place a correction is counted and logged. A backlog order (it ended before ordersync first
    /// ran on this database) is not observed in the sync-latency histogram: that wait was not ordersync's.
    pub fn correction(
        &self,
        row: &TradeRow,
        to: Terminal,
        to_word: &str,
        source: Source,
        latency: Duration,
        backlog: bool,
    ) {
        let bot = self.bot_label(row.bot_id.as_deref());
        let to_label = match to {
            Terminal::Completed => "completed",
            Terminal::Cancelled => "cancelled",
            Terminal::Expired => "expired",
            Terminal::Failed => "failed",
        };
        self.corrections.with_label_values(&[bot.as_str(), to_label, source.as_str()]).inc();
        if !backlog {
            self.sync_latency.with_label_values(&[source.as_str()]).observe(latency.as_secs_f64());
        }
        tracing::info!(
            order_id = %row.order_id,
            bot = row.bot_id.as_deref().unwrap_or(""),
            from = %row.status,
            to = to_word,
            source = source.as_str(),
            latency_seconds = latency.as_secs_f64(),
            backlog,
            "corrected order"
        );
    }

    /// The accounts' series exist from the first scrape: exchange not up, user channel not connected.
    pub fn accounts(&self, names: &[String]) {
        for name in names {
            self.exchange_up.with_label_values(&[name.as_str()]).set(0);
            self.websocket_connected.with_label_values(&[name.as_str()]).set(0);
            self.account_owner.with_label_values(&[name.as_str()]).set(0);
        }
    }

    /// Record one request to the exchange with `account`'s key. `answered`: the exchange gave an
    /// authenticated answer (not a transient failure); `rejected`: it refused the credentials (401/403), with
    /// what it said.
    pub fn exchange_request(
        &self,
        account: &str,
        endpoint: &str,
        outcome: &str,
        took: Duration,
        answered: bool,
        rejected: Option<&str>,
    ) {
        self.exchange_requests.with_label_values(&[account, endpoint, outcome]).inc();
        self.exchange_request_duration.with_label_values(&[endpoint]).observe(took.as_secs_f64());
        let up = self.exchange_up.with_label_values(&[account]);
        let mut contacts = self.exchange.lock().unwrap_or_else(|p| p.into_inner());
        let contact = contacts.entry(account.to_string()).or_default();
        contact.attempted = true;
        match rejected {
            Some(why) => {
                contact.rejected = Some(why.to_string());
                up.set(0);
            }
            None if answered => {
                contact.rejected = None;
                contact.rest_failing_since = None;
                contact.answered = Some(Instant::now());
                up.set(1);
            }
            None => {
                contact.rest_failing_since.get_or_insert_with(Instant::now);
                up.set(0);
            }
        }
    }

    /// An authenticated message from the exchange outside REST (a user-channel heartbeat to `account`'s
    /// key): the exchange is alive and takes the key. `ordersync_exchange_up` stays about REST.
    pub fn exchange_heard(&self, account: &str) {
        let mut contacts = self.exchange.lock().unwrap_or_else(|p| p.into_inner());
        let contact = contacts.entry(account.to_string()).or_default();
        contact.answered = Some(Instant::now());
        contact.attempted = true;
    }

    /// How long ago the exchange last gave `account`'s key an authenticated answer; `None` if it never has.
    pub fn since_exchange_contact(&self, account: &str) -> Option<Duration> {
        let contacts = self.exchange.lock().unwrap_or_else(|p| p.into_inner());
        contacts.get(account).and_then(|contact| contact.answered).map(|at| at.elapsed())
    }

    /// Where the exchange stands for `account`, for readiness: REST failing for `failing_after` is not ready
    /// even while the user channel's heartbeats come (the figures ordersync writes come from REST).
    pub fn exchange_health(&self, account: &str, failing_after: Duration) -> ExchangeHealth {
        let contacts = self.exchange.lock().unwrap_or_else(|p| p.into_inner());
        let none = ExchangeContact::default();
        let contact = contacts.get(account).unwrap_or(&none);
        let failing = contact.rest_failing_since.map(|since| since.elapsed()).filter(|d| *d >= failing_after);
        match (&contact.rejected, contact.answered, contact.attempted, failing) {
            (Some(why), _, _, _) => ExchangeHealth::Rejected(why.clone()),
            (None, None, true, _) => ExchangeHealth::NeverAnswered,
            (None, _, _, Some(failing)) => ExchangeHealth::RestFailing(failing),
            (None, Some(at), _, None) => ExchangeHealth::Answered(at.elapsed()),
            (None, None, false, None) => ExchangeHealth::NotContacted,
        }
    }

    /// Refresh the database-derived gauges from the pending rows (with what the exchange last said of each)
    /// and the terminal conflicts. Called by the refresher, never by a scrape.
    pub async fn refresh_pending(&self, store: &Store) {
        let started = Instant::now();
        let result = async {
            let rows = store.pending_orders().await?;
            // What the exchange last said of each, a thousand at a time (never a map of every order's state).
            let mut pending: Vec<(TradeRow, PendingKind)> = Vec::with_capacity(rows.len());
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let chunk: Vec<TradeRow> = rows.by_ref().take(1000).collect();
                let ids: Vec<OrderId> = chunk.iter().map(|row| row.order_id.clone()).collect();
                let states = store.check_states(&ids).await?;
                pending.extend(chunk.into_iter().map(|row| {
                    let last = states.get(&row.order_id).and_then(|s| s.last_exchange_status.as_deref());
                    let kind = PendingKind::of(last);
                    (row, kind)
                }));
            }
            let conflicts = store.conflicts().await?;
            Ok::<_, crate::db::StoreError>((pending, conflicts))
        }
        .await;
        let took = started.elapsed().as_secs_f64();
        self.collector_duration.with_label_values(&[COLLECTOR_PENDING]).set(took);
        match result {
            Ok((pending, conflicts)) => {
                self.set_pending(&pending, Utc::now());
                self.set_conflicts(&conflicts);
                self.database_up.set(1);
                self.collector_success.with_label_values(&[COLLECTOR_PENDING]).set(1);
                self.last_successful_collection
                    .with_label_values(&[COLLECTOR_PENDING])
                    .set(Utc::now().timestamp_millis() as f64 / 1000.0);
            }
            Err(error) => {
                tracing::warn!(error = %error, "refreshing pending-order gauges failed; serving the last values");
                self.database_up.set(0);
                self.collector_success.with_label_values(&[COLLECTOR_PENDING]).set(0);
            }
        }
    }

    /// Set `ordersync_terminal_conflicts` and `ordersync_product_conflicts` from the conflicts standing now.
    pub fn set_conflicts(&self, conflicts: &[ConflictRow]) {
        for (kind, gauge) in
            [(ConflictKind::Position, &self.terminal_conflicts), (ConflictKind::Product, &self.product_conflicts)]
        {
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            for conflict in conflicts.iter().filter(|c| c.kind == kind) {
                *counts.entry(self.bot_label(conflict.bot_id.as_deref())).or_default() += 1;
            }
            gauge.reset();
            for (bot, count) in &counts {
                gauge.with_label_values(&[bot.as_str()]).set(*count);
            }
        }
    }

    /// Set every pending-order gauge from the rows pending now, each with what the exchange last said of it.
    pub fn set_pending(&self, rows: &[(TradeRow, PendingKind)], now: DateTime<Utc>) {
        let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut oldest: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        let mut oldest_blocking: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        let mut over = [0i64; AGE_THRESHOLDS.len()];
        let mut stuck: BTreeMap<String, i64> = BTreeMap::new();
        let mut resting: BTreeMap<String, i64> = BTreeMap::new();
        let stuck_after = i64::try_from(self.stuck_after_ms.load(Ordering::Relaxed))
            .ok()
            .and_then(chrono::Duration::try_milliseconds)
            .unwrap_or(chrono::Duration::MAX);
        let keep_oldest = |map: &mut BTreeMap<String, DateTime<Utc>>, bot: &str, at: DateTime<Utc>| {
            let entry = map.entry(bot.to_string()).or_insert(at);
            if at < *entry {
                *entry = at;
            }
        };
        let mut unreadable: BTreeMap<String, i64> = BTreeMap::new();
        for (row, kind) in rows {
            let bot = self.bot_label(row.bot_id.as_deref());
            let product = self.products.label(row.product_id.as_deref());
            *counts.entry((bot.clone(), product)).or_default() += 1;
            // A row whose creation time cannot be read has no age: counted apart, and stuck unless resting.
            let age = row.age(now);
            match row.created_at {
                Some(created) => keep_oldest(&mut oldest, &bot, created),
                None => *unreadable.entry(bot.clone()).or_default() += 1,
            }
            for (slot, threshold) in over.iter_mut().zip(AGE_THRESHOLDS) {
                if age.is_some_and(|age| age > chrono::Duration::seconds(threshold as i64)) {
                    *slot += 1;
                }
            }
            match kind {
                PendingKind::Resting => *resting.entry(bot).or_default() += 1,
                PendingKind::Blocking => {
                    if let Some(created) = row.created_at {
                        keep_oldest(&mut oldest_blocking, &bot, created);
                    }
                    if age.is_none_or(|age| age > stuck_after) {
                        *stuck.entry(bot).or_default() += 1;
                    }
                }
            }
        }
        self.pending_orders.reset();
        for ((bot, product), count) in &counts {
            self.pending_orders.with_label_values(&[bot.as_str(), product.as_str()]).set(*count);
        }
        self.oldest_pending_timestamp.reset();
        for (bot, created) in &oldest {
            let seconds = created.timestamp_millis() as f64 / 1000.0;
            self.oldest_pending_timestamp.with_label_values(&[bot.as_str()]).set(seconds);
        }
        for (cache, source) in [(&self.oldest_pending, &oldest), (&self.oldest_blocking, &oldest_blocking)] {
            let mut cached = cache.lock().unwrap_or_else(|p| p.into_inner());
            cached.clear();
            for (bot, created) in source {
                cached.insert(bot.clone(), created.timestamp_millis() as f64 / 1000.0);
            }
        }
        for (count, threshold) in over.iter().zip(AGE_THRESHOLDS) {
            self.pending_over_age.with_label_values(&[threshold.to_string().as_str()]).set(*count);
        }
        for (gauge, counts) in
            [(&self.stuck_orders, &stuck), (&self.resting_orders, &resting), (&self.unreadable_rows, &unreadable)]
        {
            gauge.reset();
            for (bot, count) in counts {
                gauge.with_label_values(&[bot.as_str()]).set(*count);
            }
        }
        self.blocked_bots.set(stuck.len() as i64);
    }

    /// The text exposition of everything registered.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::OrderId;

    fn row(id: &str, bot: &str, minutes_old: i64, now: DateTime<Utc>) -> TradeRow {
        TradeRow {
            order_id: OrderId::parse(id).unwrap(),
            status: "pending".into(),
            created_at: Some(now - chrono::Duration::minutes(minutes_old)),
            created_raw: None,
            bot_id: Some(bot.into()),
            product_id: Some("AVNT-USD".into()),
            account: None,
        }
    }

    #[test]
    fn a_resting_order_is_never_stuck_however_old() {
        let metrics = Metrics::standalone(Duration::from_secs(300));
        let now = Utc::now();
        let rows = [
            (row("a", "alpha", 120, now), PendingKind::Resting),
            (row("b", "alpha", 1, now), PendingKind::Blocking),
            (row("c", "beta", 90, now), PendingKind::Resting),
        ];
        metrics.set_pending(&rows, now);
        assert_eq!(metrics.resting_orders.with_label_values(&["alpha"]).get(), 1);
        assert_eq!(metrics.resting_orders.with_label_values(&["beta"]).get(), 1);
        assert_eq!(metrics.blocked_bots.get(), 0);
        let text = metrics.encode();
        assert!(!text.contains("ordersync_stuck_orders{"), "{text}");
        assert!(text.contains("ordersync_oldest_pending_order_age_seconds{bot=\"alpha\"} 7200"), "{text}");
        assert!(text.contains("ordersync_oldest_blocking_order_age_seconds{bot=\"alpha\"} 60"), "{text}");
        assert!(!text.contains("ordersync_oldest_blocking_order_age_seconds{bot=\"beta\"}"), "{text}");
    }

    #[test]
    fn a_row_whose_age_cannot_be_read_is_counted_and_stuck() {
        let metrics = Metrics::standalone(Duration::from_secs(300));
        let now = Utc::now();
        let mut unreadable = row("a", "alpha", 0, now);
        (unreadable.created_at, unreadable.created_raw) = (None, Some("soon".into()));
        metrics.set_pending(&[(unreadable, PendingKind::Blocking)], now);
        assert_eq!(metrics.unreadable_rows.with_label_values(&["alpha"]).get(), 1);
        assert_eq!(metrics.stuck_orders.with_label_values(&["alpha"]).get(), 1, "age unknown: stuck");
        assert_eq!(metrics.pending_over_age.with_label_values(&["60"]).get(), 0, "no age to place it by");
    }

    #[test]
    fn a_bot_seen_for_the_first_time_has_its_counters_at_zero() {
        let metrics = Metrics::standalone(Duration::from_secs(300));
        metrics.bot_label(Some("alpha"));
        let text = metrics.encode();
        for series in [
            "ordersync_orders_settled_total{bot=\"alpha\",by=\"bot\"} 0",
            "ordersync_orders_settled_total{bot=\"alpha\",by=\"ordersync\"} 0",
            "ordersync_orders_settled_late_total{bot=\"alpha\"} 0",
            "ordersync_mismatches_total{bot=\"alpha\",exchange_status=\"FILLED\"} 0",
            "ordersync_mismatches_total{bot=\"alpha\",exchange_status=\"CANCELLED\"} 0",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        metrics.settled(Some("alpha"), SettledBy::Ordersync, true);
        metrics.settled(Some("alpha"), SettledBy::Bot, false);
        assert_eq!(metrics.settled.with_label_values(&["alpha", "ordersync"]).get(), 1);
        assert_eq!(metrics.settled.with_label_values(&["alpha", "bot"]).get(), 1);
        assert_eq!(metrics.settled_late.with_label_values(&["alpha"]).get(), 1);
    }

    #[test]
    fn readiness_follows_what_the_exchange_last_said() {
        let metrics = Metrics::standalone(Duration::from_secs(300));
        let health = || metrics.exchange_health("a", Duration::ZERO);
        assert_eq!(health(), ExchangeHealth::NotContacted);
        metrics.exchange_request("a", "get_order", "transient", Duration::ZERO, false, None);
        assert_eq!(health(), ExchangeHealth::NeverAnswered);
        assert_eq!(metrics.exchange_up.with_label_values(&["a"]).get(), 0);
        metrics.exchange_request("a", "get_order", "ok", Duration::ZERO, true, None);
        assert!(matches!(health(), ExchangeHealth::Answered(_)));
        assert_eq!(metrics.exchange_up.with_label_values(&["a"]).get(), 1);
        metrics.exchange_request("a", "get_order", "unauthorized", Duration::ZERO, false, Some("HTTP 401"));
        assert_eq!(health(), ExchangeHealth::Rejected("HTTP 401".into()));
        assert_eq!(metrics.exchange_up.with_label_values(&["a"]).get(), 0);
        metrics.exchange_heard("a");
        assert_eq!(
            metrics.exchange_up.with_label_values(&["a"]).get(),
            0,
            "a heartbeat does not make refused credentials work"
        );
        metrics.exchange_request("a", "get_order", "ok", Duration::ZERO, true, None);
        assert_eq!(metrics.exchange_up.with_label_values(&["a"]).get(), 1);
        // REST fails while heartbeats keep coming: not ready once it has failed for the bound.
        metrics.exchange_request("a", "list_orders", "transient", Duration::ZERO, false, None);
        metrics.exchange_heard("a");
        assert!(matches!(health(), ExchangeHealth::RestFailing(_)), "{:?}", health());
        assert!(matches!(metrics.exchange_health("a", Duration::from_secs(60)), ExchangeHealth::Answered(_)));
        assert_eq!(metrics.exchange_up.with_label_values(&["a"]).get(), 0, "about REST, whatever the heartbeats say");
        // Each account stands on its own: b's key was never used.
        assert_eq!(metrics.exchange_health("b", Duration::ZERO), ExchangeHealth::NotContacted);
        assert_eq!(metrics.since_exchange_contact("b"), None);
        assert!(metrics.since_exchange_contact("a").is_some());
    }

    #[test]
    fn label_values_are_capped() {
        let cap = LabelCap::default();
        for n in 0..MAX_LABEL_VALUES {
            assert_eq!(cap.label(Some(&format!("bot{n}"))), format!("bot{n}"));
        }
        assert_eq!(cap.label(Some("one-too-many")), "other");
        assert_eq!(cap.label(Some("bot7")), "bot7");
        assert_eq!(cap.label(None), "none");
    }

    #[test]
    fn pending_gauges_follow_the_rows() {
        let metrics = Metrics::standalone(Duration::from_secs(300));
        let now = Utc::now();
        let rows = [row("a", "alpha", 2, now), row("b", "alpha", 10, now), row("c", "beta", 120, now)]
            .map(|row| (row, PendingKind::Blocking));
        metrics.set_pending(&rows, now);
        assert_eq!(metrics.pending_orders.with_label_values(&["alpha", "AVNT-USD"]).get(), 2);
        assert_eq!(metrics.pending_over_age.with_label_values(&["60"]).get(), 3);
        assert_eq!(metrics.pending_over_age.with_label_values(&["300"]).get(), 2);
        assert_eq!(metrics.pending_over_age.with_label_values(&["3600"]).get(), 1);
        assert_eq!(metrics.stuck_orders.with_label_values(&["alpha"]).get(), 1);
        assert_eq!(metrics.stuck_orders.with_label_values(&["beta"]).get(), 1);
        assert_eq!(metrics.blocked_bots.get(), 2);
        let text = metrics.encode();
        assert!(text.contains("ordersync_oldest_pending_order_age_seconds{bot=\"beta\"} 7200"), "{text}");
        assert!(text.contains("ordersync_oldest_blocking_order_age_seconds{bot=\"beta\"} 7200"), "{text}");
        metrics.set_pending(&[], now);
        assert_eq!(metrics.blocked_bots.get(), 0);
        assert!(!metrics.encode().contains("ordersync_stuck_orders{"), "no stuck series left");
        assert!(!metrics.encode().contains("ordersync_pending_orders{"), "gone rows leave no stale series");
    }
}
