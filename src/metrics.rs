//! `Metrics`: every `ordersync_*` metric, registered on a `Registry` the app creates and passes in (never
//! the global one, so several apps run in one test process). Also the one place a correction is counted
//! and logged (`Metrics::correction`), and the gauge refresher that reads pending rows on its own schedule
//! so a scrape never waits on the database.
//!
//! Deliberately not here: HTTP (`http.rs` encodes the registry) and deciding anything.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::db::{Source, Store};
use crate::decide::{Outcome, Terminal};
use crate::order::TradeRow;

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
}

impl LabelCap {
    pub fn label(&self, value: Option<&str>) -> String {
        let value = match value {
            None | Some("") => return "none".to_string(),
            Some(value) => value,
        };
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() < MAX_LABEL_VALUES {
            seen.insert(value.to_string());
            value.to_string()
        } else {
            "other".to_string()
        }
    }
}

/// `ordersync_oldest_pending_order_age_seconds`, computed at scrape time from the cached creation time, so
/// it keeps growing even when the refresher stalls.
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

/// Every metric ordersync exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    bots: Arc<LabelCap>,
    products: Arc<LabelCap>,
    stuck_after: Duration,
    pub pending_orders: IntGaugeVec,
    pub oldest_pending_timestamp: GaugeVec,
    oldest_pending: Arc<Mutex<BTreeMap<String, f64>>>,
    pub pending_over_age: IntGaugeVec,
    pub stuck_orders: IntGaugeVec,
    pub blocked_bots: IntGauge,
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
    pub exchange_up: IntGauge,
    pub database_up: IntGauge,
    pub collector_success: IntGaugeVec,
    pub collector_duration: GaugeVec,
    pub last_successful_collection: GaugeVec,
    pub store_errors: IntCounter,
    pub alert_emails: IntCounterVec,
    pub websocket_connected: IntGauge,
    pub websocket_messages: IntCounterVec,
    pub websocket_reconnects: IntCounter,
    pub websocket_sequence_gaps: IntCounter,
    last_exchange_contact: Arc<Mutex<Option<Instant>>>,
    names: Arc<Vec<String>>,
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
        let metrics = Metrics {
            bots: Arc::new(LabelCap::default()),
            products: Arc::new(LabelCap::default()),
            stuck_after,
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
                    "Orders pending longer than the configured stuck-after threshold (ORDERSYNC_STUCK_AFTER), by bot: \
                     each one may be blocking its bot.",
                ),
                &["bot"],
            )?,
            blocked_bots: IntGauge::with_opts(opts(
                "ordersync_blocked_bots",
                "Bots with at least one stuck order: these bots are likely not trading.",
            ))?,
            mismatches: IntCounterVec::new(
                opts(
                    "ordersync_mismatches_total",
                    "Times the database said pending while the exchange said the order had ended: the sync path missed news.",
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
                    "Checks of an order against the exchange by outcome. Accuracy SLI = match / (match + mismatch); \
                     unknown (no certain answer) is left out of it.",
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
                    "Time from the exchange's completion of an order to ordersync's commit of it in the bot's database.",
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
                opts("ordersync_exchange_requests_total", "Requests to the exchange API by endpoint and outcome."),
                &["endpoint", "outcome"],
            )?,
            exchange_request_duration: HistogramVec::new(
                HistogramOpts::new("ordersync_exchange_request_duration_seconds", "Duration of requests to the exchange API.")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["endpoint"],
            )?,
            exchange_up: IntGauge::with_opts(opts(
                "ordersync_exchange_up",
                "1 if the last request to the exchange got an answer (even a 404), 0 if it failed.",
            ))?,
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
            websocket_connected: IntGauge::with_opts(opts(
                "ordersync_websocket_connected",
                "1 while subscribed to Coinbase's user channel (real-time order updates), 0 otherwise.",
            ))?,
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
            last_exchange_contact: Arc::new(Mutex::new(None)),
            names: Arc::new(Vec::new()),
            registry,
        };
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(metrics.pending_orders.clone()),
            Box::new(metrics.oldest_pending_timestamp.clone()),
            Box::new(OldestAge {
                desc: Desc::new(
                    "ordersync_oldest_pending_order_age_seconds".into(),
                    "Age in seconds of the oldest order still pending in the bot's database, by bot, computed at scrape time."
                        .into(),
                    vec!["bot".into()],
                    Default::default(),
                )?,
                oldest: oldest_pending,
            }),
            Box::new(metrics.pending_over_age.clone()),
            Box::new(metrics.stuck_orders.clone()),
            Box::new(metrics.blocked_bots.clone()),
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
            opts("ordersync_build_info", "Always 1; labels say which ordersync version and git revision is running."),
            &["version", "revision"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION]).set(1);
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
    pub fn standalone(stuck_after: Duration) -> Metrics {
        Metrics::new(Registry::new(), stuck_after).expect("a fresh registry has no metric registered twice")
    }

    /// The name of every `ordersync_*` metric, whether or not it has a series yet (the text format leaves
    /// out labelled metrics with none).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn bot_label(&self, bot: Option<&str>) -> String {
        self.bots.label(bot)
    }

    /// Count one check of an order.
    pub fn check(&self, outcome: Outcome) {
        self.order_checks.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Count a mismatch: pending in the database, ended on the exchange.
    pub fn mismatch(&self, row: &TradeRow, exchange_status: &str) {
        let bot = self.bot_label(row.bot_id.as_deref());
        self.mismatches.with_label_values(&[bot.as_str(), exchange_status]).inc();
    }

    /// The one place a correction is counted and logged.
    pub fn correction(&self, row: &TradeRow, to: Terminal, to_word: &str, source: Source, latency: Option<Duration>) {
        let bot = self.bot_label(row.bot_id.as_deref());
        let to_label = match to {
            Terminal::Completed => "completed",
            Terminal::Cancelled => "cancelled",
            Terminal::Expired => "expired",
            Terminal::Failed => "failed",
        };
        self.corrections.with_label_values(&[bot.as_str(), to_label, source.as_str()]).inc();
        if let Some(latency) = latency {
            self.sync_latency.with_label_values(&[source.as_str()]).observe(latency.as_secs_f64());
        }
        tracing::info!(
            order_id = %row.order_id,
            bot = row.bot_id.as_deref().unwrap_or(""),
            from = %row.status,
            to = to_word,
            source = source.as_str(),
            latency_seconds = latency.map(|l| l.as_secs_f64()),
            "corrected order"
        );
    }

    /// Record one request to the exchange.
    pub fn exchange_request(&self, endpoint: &str, outcome: &str, took: Duration, answered: bool) {
        self.exchange_requests.with_label_values(&[endpoint, outcome]).inc();
        self.exchange_request_duration.with_label_values(&[endpoint]).observe(took.as_secs_f64());
        self.exchange_up.set(i64::from(answered));
        if answered {
            *self.last_exchange_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    /// How long ago the exchange last answered; `None` if it never has.
    pub fn since_exchange_contact(&self) -> Option<Duration> {
        self.last_exchange_contact.lock().unwrap_or_else(|p| p.into_inner()).map(|at| at.elapsed())
    }

    /// Refresh the database-derived gauges from the pending rows. Called by the refresher, never by a scrape.
    pub async fn refresh_pending(&self, store: &Store) {
        let started = Instant::now();
        let result = store.pending_orders().await;
        let took = started.elapsed().as_secs_f64();
        self.collector_duration.with_label_values(&[COLLECTOR_PENDING]).set(took);
        match result {
            Ok(rows) => {
                self.set_pending(&rows, Utc::now());
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

    /// Set every pending-order gauge from the rows pending now.
    pub fn set_pending(&self, rows: &[TradeRow], now: DateTime<Utc>) {
        let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut oldest: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        let mut over = [0i64; AGE_THRESHOLDS.len()];
        let mut stuck: BTreeMap<String, i64> = BTreeMap::new();
        let stuck_after = chrono::Duration::from_std(self.stuck_after).unwrap_or(chrono::Duration::MAX);
        for row in rows {
            let bot = self.bot_label(row.bot_id.as_deref());
            let product = self.products.label(row.product_id.as_deref());
            *counts.entry((bot.clone(), product)).or_default() += 1;
            let entry = oldest.entry(bot.clone()).or_insert(row.created_at);
            if row.created_at < *entry {
                *entry = row.created_at;
            }
            let age = now - row.created_at;
            for (slot, threshold) in over.iter_mut().zip(AGE_THRESHOLDS) {
                if age > chrono::Duration::seconds(threshold as i64) {
                    *slot += 1;
                }
            }
            if age > stuck_after {
                *stuck.entry(bot).or_default() += 1;
            }
        }
        self.pending_orders.reset();
        for ((bot, product), count) in &counts {
            self.pending_orders.with_label_values(&[bot.as_str(), product.as_str()]).set(*count);
        }
        self.oldest_pending_timestamp.reset();
        let mut cached = self.oldest_pending.lock().unwrap_or_else(|p| p.into_inner());
        cached.clear();
        for (bot, created) in &oldest {
            let seconds = created.timestamp_millis() as f64 / 1000.0;
            self.oldest_pending_timestamp.with_label_values(&[bot.as_str()]).set(seconds);
            cached.insert(bot.clone(), seconds);
        }
        for (count, threshold) in over.iter().zip(AGE_THRESHOLDS) {
            self.pending_over_age.with_label_values(&[threshold.to_string().as_str()]).set(*count);
        }
        self.stuck_orders.reset();
        for (bot, count) in &stuck {
            self.stuck_orders.with_label_values(&[bot.as_str()]).set(*count);
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
            created_at: now - chrono::Duration::minutes(minutes_old),
            bot_id: Some(bot.into()),
            product_id: Some("AVNT-USD".into()),
        }
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
        let rows = [row("a", "alpha", 2, now), row("b", "alpha", 10, now), row("c", "beta", 120, now)];
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
        metrics.set_pending(&[], now);
        assert_eq!(metrics.blocked_bots.get(), 0);
        assert!(!metrics.encode().contains("ordersync_stuck_orders{"), "no stuck series left");
        assert!(!metrics.encode().contains("ordersync_pending_orders{"), "gone rows leave no stale series");
    }
}
