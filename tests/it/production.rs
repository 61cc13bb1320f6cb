//! Months in production: orders the exchange never knew (backoff, the opt-in not-found policy), the brake on
//! mass corrections, observe-only, product conflicts, a steady pass that writes nothing, retention, and a bot
//! that keeps writing its SQLite file while ordersync settles.

use ordersync::decide::VerdictWord;
use ordersync::reconcile::CheckResult;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use ordersync::db::Store;
use ordersync::exchange::{Batch, Exchange, ExchangeError, ExchangeOrder};
use ordersync::metrics::Metrics;
use ordersync::order::OrderId;
use ordersync::reconcile::{Mode, Reconciler};
use ordersync::sandbox::{NewOrder, Sandbox};
use tokio_util::sync::CancellationToken;

use crate::harness::{config_with, dec, incident, open_order, settings, Backend, TestDb};

/// The simulator, counting what ordersync asks: List Orders requests and Get Order per id.
struct Counting {
    inner: Arc<dyn Exchange>,
    batches: AtomicUsize,
    singles: Mutex<HashMap<String, usize>>,
}

impl Counting {
    fn new(inner: Arc<dyn Exchange>) -> Arc<Counting> {
        Arc::new(Counting { inner, batches: AtomicUsize::new(0), singles: Mutex::default() })
    }

    fn singles(&self, id: &str) -> usize {
        self.singles.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Exchange for Counting {
    async fn orders(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.orders(ids).await
    }

    async fn order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        *self.singles.lock().unwrap().entry(id.to_string()).or_default() += 1;
        self.inner.order(id).await
    }

    async fn fills(&self, ids: &[OrderId]) -> Result<Vec<ordersync::exchange::ExchangeFill>, ExchangeError> {
        self.inner.fills(ids).await
    }
}

/// An exchange in an outage: List Orders fails with a 503, and Get Order answers 404 for everything (the
/// worst case: a 404 that means nothing).
struct Outage;

#[async_trait]
impl Exchange for Outage {
    async fn orders(&self, _ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        Err(ExchangeError::Transient("HTTP 503".into()))
    }

    async fn order(&self, _id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        Err(ExchangeError::NotFound)
    }
}

async fn reconciler_on(db: &TestDb, exchange: Arc<dyn Exchange>, file: &str) -> (Reconciler, Metrics) {
    let config = config_with(db, file);
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::standalone(config.stuck_after);
    (Reconciler::new(store, exchange, metrics.clone(), settings(&config)), metrics)
}

async fn pass(reconciler: &Reconciler) -> ordersync::reconcile::PassReport {
    reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap()
}

const GHOST: &str = "0c5e2f39-0000-4000-8000-000000000001";

async fn a_steady_pass_over_resting_orders_writes_nothing(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    for n in 0..40 {
        open_order(&db, &sandbox, &format!("bot{}", n % 4), chrono::Duration::minutes(30)).await;
    }
    let (reconciler, _) = reconciler_on(&db, Arc::new(sandbox.clone()), "").await;
    let written = || async {
        db.count("SELECT CAST(COALESCE(SUM(checks), 0) + COUNT(*) AS TEXT) FROM ordersync_order_checks").await
    };

    let first = pass(&reconciler).await;
    assert_eq!(first.count(CheckResult::Unchanged), 40);
    let after_first = written().await;
    assert_eq!(after_first, 80, "the first check of each order is written once");
    for _ in 0..3 {
        pass(&reconciler).await;
    }
    assert_eq!(written().await, after_first, "passes that found what the last one found wrote nothing");

    // Something changes: one order fills. Only its row is written.
    let id =
        db.rows("SELECT CAST(order_id AS TEXT) FROM trades ORDER BY order_id LIMIT 1").await[0][0].clone().unwrap();
    sandbox.fill(&id, None, None, None).unwrap();
    let report = pass(&reconciler).await;
    assert_eq!(report.count(CheckResult::Corrected), 1);
    assert_eq!(written().await, after_first + 1, "one check row changed");
}
crate::both!(a_steady_pass_over_resting_orders_writes_nothing);

async fn an_order_the_exchange_never_knew_backs_off_and_is_never_asked_one_by_one_each_pass(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(30)).await;
    db.insert_pending(GHOST, "alpha", "AVNT-USD", Utc::now() - chrono::Duration::minutes(30)).await;
    let exchange = Counting::new(Arc::new(sandbox.clone()));
    let (reconciler, metrics) = reconciler_on(&db, exchange.clone(), "poll_interval = \"30s\"\nflag_after = 1").await;

    let first = pass(&reconciler).await;
    assert_eq!(exchange.singles(GHOST), 1, "a 404 is confirmed with Get Order");
    assert_eq!(first.deferred, 0);
    let state = reconciler.store().check_states(&[OrderId::parse(GHOST).unwrap()]).await.unwrap();
    let next = state.values().next().unwrap().next_check_at.expect("a backoff");
    let wait = (next - Utc::now()).num_seconds();
    assert!((25..=30).contains(&wait), "the first backoff is the poll interval: {wait}s");

    for _ in 0..5 {
        let report = pass(&reconciler).await;
        assert_eq!(report.deferred, 1);
        assert!(report.checked.iter().all(|c| c.order_id != GHOST), "not asked while it waits");
    }
    assert_eq!(exchange.singles(GHOST), 1, "never one request per order per pass");
    assert_eq!(metrics.deferred_orders.get(), 1);
    assert_eq!(metrics.flagged_orders.get(), 1, "a flagged order waiting is still flagged");

    // Its time comes: asked again (in the batch, then confirmed), and the backoff doubles.
    db.exec(&format!("UPDATE ordersync_order_checks SET next_check_at = NULL WHERE order_id = '{GHOST}'")).await;
    pass(&reconciler).await;
    assert_eq!(exchange.singles(GHOST), 2);
    let state = reconciler.store().check_states(&[OrderId::parse(GHOST).unwrap()]).await.unwrap();
    let wait = (state.values().next().unwrap().next_check_at.unwrap() - Utc::now()).num_seconds();
    assert!((55..=60).contains(&wait), "doubled: {wait}s");
    assert_eq!(db.trade(GHOST).await.status, "pending", "never guessed at without the policy");
}
crate::both!(an_order_the_exchange_never_knew_backs_off_and_is_never_asked_one_by_one_each_pass);

const POLICY: &str = "poll_interval = \"10ms\"\n[not_found]\nafter_checks = 3\nafter = \"0s\"\nwrite = \"failed\"";

/// Passes past every backoff (10, 20, 40 ms here).
async fn passes(reconciler: &Reconciler, n: usize) {
    for _ in 0..n {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        pass(reconciler).await;
    }
}

async fn the_not_found_policy_writes_off_an_order_coinbase_never_knew(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(30)).await;
    db.insert_pending(GHOST, "alpha", "AVNT-USD", Utc::now() - chrono::Duration::minutes(30)).await;
    let (reconciler, metrics) = reconciler_on(&db, Arc::new(sandbox.clone()), POLICY).await;

    passes(&reconciler, 2).await;
    assert_eq!(db.trade(GHOST).await.status, "pending", "two 404s are not enough");
    passes(&reconciler, 1).await;

    assert_eq!(db.trade(GHOST).await.status, "failed", "the third 404 while Coinbase answered the other order");
    let events = reconciler.store().events(Some(&OrderId::parse(GHOST).unwrap())).await.unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.reason.as_deref(), Some("not_found"));
    assert_eq!(event.end_source.as_deref(), Some("not_found_policy"));
    assert_eq!((event.fill_price.as_deref(), event.fill_size.as_deref()), (None, None), "no figures invented");
    let note = event.note.as_deref().unwrap();
    assert!(note.matches("+00:00").count() >= 3, "every 404's time: {note}");
    assert_eq!(metrics.written_off.with_label_values(&["alpha"]).get(), 1);
    assert_eq!(
        db.count(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_settlements WHERE order_id = '{GHOST}'")).await,
        0,
        "an order that never ended on the exchange is no settlement"
    );
    let open = db.count("SELECT CAST(COUNT(*) AS TEXT) FROM trades WHERE status = 'pending'").await;
    assert_eq!(open, 1, "the order Coinbase knows is left alone");
}
crate::both!(the_not_found_policy_writes_off_an_order_coinbase_never_knew);

async fn the_not_found_policy_never_fires_in_an_outage_or_with_a_key_that_sees_nothing(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let known = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(30)).await;
    db.insert_pending(GHOST, "alpha", "AVNT-USD", Utc::now() - chrono::Duration::minutes(30)).await;

    // A key that sees nothing: every order answers 404, and no other order is ever answered.
    let blind = Sandbox::new(2);
    let (reconciler, metrics) = reconciler_on(&db, Arc::new(blind), POLICY).await;
    passes(&reconciler, 6).await;
    for id in [known.as_str(), GHOST] {
        assert_eq!(db.trade(id).await.status, "pending", "{id}");
    }
    // An outage: List Orders fails, Get Order answers 404 for everything.
    let (reconciler, _) = reconciler_on(&db, Arc::new(Outage), POLICY).await;
    passes(&reconciler, 6).await;
    for id in [known.as_str(), GHOST] {
        assert_eq!(db.trade(id).await.status, "pending", "{id}");
    }
    assert_eq!(metrics.written_off.with_label_values(&["alpha"]).get(), 0);
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await, 0);
}
crate::both!(the_not_found_policy_never_fires_in_an_outage_or_with_a_key_that_sees_nothing);

/// `n` orders FILLED on the simulator and pending in the table, plus `open` resting ones.
async fn stale(db: &TestDb, sandbox: &Sandbox, n: usize, open: usize) -> Vec<String> {
    let mut filled = Vec::new();
    for i in 0..n + open {
        let id = open_order(db, sandbox, "alpha", chrono::Duration::minutes(30)).await;
        if i < n {
            sandbox.fill(&id, None, None, None).unwrap();
            filled.push(id);
        }
    }
    filled
}

async fn the_brake_holds_a_mass_correction_until_an_operator_allows_it(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let filled = stale(&db, &sandbox, 15, 5).await;
    let (reconciler, metrics) = reconciler_on(&db, Arc::new(sandbox.clone()), "max_correction_share = 0.5").await;

    let report = pass(&reconciler).await;

    let held = report.braked.as_ref().expect("15 of 20 pending rows is more than half");
    assert_eq!((held.would_correct, held.pending), (15, 20));
    assert_eq!(report.count(CheckResult::Held), 15);
    assert_eq!(report.count(CheckResult::Corrected), 0);
    for id in &filled {
        assert_eq!(db.trade(id).await.status, "pending", "nothing written");
    }
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await, 0);
    assert_eq!((metrics.correction_brake.get(), metrics.corrections_held.get()), (1, 15));
    assert!(reconciler.brake_held().is_some(), "the sync-status API says so");

    // The WebSocket path is held too while the brake is engaged.
    reconciler.ended_news(sandbox_order(&sandbox, &filled[0]).await, Utc::now() - chrono::Duration::minutes(5));
    let due = reconciler.finish_due(&CancellationToken::new()).await;
    assert_eq!(due.iter().map(|c| c.result).collect::<Vec<_>>(), vec![CheckResult::Held]);
    assert_eq!(db.trade(&filled[0]).await.status, "pending");

    // An operator allows it (reconcile --once --allow-mass-correction runs this).
    let mut config = config_with(&db, "max_correction_share = 0.5");
    config.brake.allowed = true;
    let allowed =
        Reconciler::new(reconciler.store().clone(), Arc::new(sandbox.clone()), metrics.clone(), settings(&config));
    let report = pass(&allowed).await;
    assert_eq!(report.count(CheckResult::Corrected), 15);
    // The service's next pass finds nothing to hold and releases the brake.
    let report = pass(&reconciler).await;
    assert!(report.braked.is_none());
    assert_eq!((metrics.correction_brake.get(), metrics.corrections_held.get()), (0, 0));
}
crate::both!(the_brake_holds_a_mass_correction_until_an_operator_allows_it);

async fn sandbox_order(sandbox: &Sandbox, id: &str) -> ExchangeOrder {
    sandbox.order(&OrderId::parse(id).unwrap()).await.unwrap()
}

async fn websocket_corrections_count_towards_the_brake(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let filled = stale(&db, &sandbox, 3, 0).await;
    let (reconciler, metrics) = reconciler_on(&db, Arc::new(sandbox.clone()), "max_corrections_per_pass = 2").await;
    for id in &filled {
        reconciler.ended_news(sandbox_order(&sandbox, id).await, Utc::now() - chrono::Duration::minutes(5));
    }

    let due = reconciler.finish_due(&CancellationToken::new()).await;

    assert_eq!(due.iter().filter(|c| c.result == CheckResult::Held).count(), 3, "3 > 2 in one go: {due:?}");
    assert_eq!(metrics.correction_brake.get(), 1);
    for id in &filled {
        assert_eq!(db.trade(id).await.status, "pending");
    }
}
crate::both!(websocket_corrections_count_towards_the_brake);

/// A row the WebSocket path corrected since the last pass began was pending too: the pass's share counts it
/// in the pending rows as well as in the corrections. Found by the replicas test: 3 corrected by the news,
/// then a pass correcting the other 9 of 9 pending read 12 corrections of 9 pending rows, and tripped a
/// brake set to allow every row (`max_correction_share = 1`).
async fn rows_the_websocket_path_corrected_count_as_pending_in_the_brakes_share(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    stale(&db, &sandbox, 0, 12).await;
    let (reconciler, _) = reconciler_on(&db, Arc::new(sandbox.clone()), "max_correction_share = 1.0").await;
    let first = pass(&reconciler).await;
    assert!(first.braked.is_none());
    let ids: Vec<String> = db
        .rows("SELECT order_id FROM trades ORDER BY order_id")
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    for id in &ids[..3] {
        sandbox.fill(id, None, None, None).unwrap();
        reconciler.ended_news(sandbox_order(&sandbox, id).await, Utc::now() - chrono::Duration::minutes(5));
    }
    let due = reconciler.finish_due(&CancellationToken::new()).await;
    assert_eq!(due.iter().filter(|c| c.result == CheckResult::Corrected).count(), 3, "{due:?}");
    for id in &ids[3..] {
        sandbox.fill(id, None, None, None).unwrap();
    }

    let report = pass(&reconciler).await;

    assert!(report.braked.is_none(), "12 corrections of the 12 rows pending since the last pass: {:?}", report.braked);
    assert_eq!(report.count(CheckResult::Corrected), 9);
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM trades WHERE status = 'pending'").await, 0);
}
crate::both!(rows_the_websocket_path_corrected_count_as_pending_in_the_brakes_share);

async fn observe_only_checks_and_counts_everything_and_writes_nothing_to_the_bots_table(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let (reconciler, metrics) = reconciler_on(&db, Arc::new(sandbox.clone()), "observe_only = true").await;

    let report = pass(&reconciler).await;

    assert_eq!(report.mismatches(), 3);
    assert_eq!(report.count(CheckResult::WouldCorrect), 3);
    for (order_id, _, _) in crate::harness::INCIDENT {
        assert_eq!(db.trade(order_id).await.status, "pending");
    }
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await, 0);
    assert_eq!(metrics.unresolved_mismatches.get(), 3, "exported: the mismatches stand");
    // A manual reconcile of one order writes nothing either.
    let one = OrderId::parse(crate::harness::INCIDENT[0].0).unwrap();
    let checked = reconciler.reconcile_one(&one, Mode::Apply).await.unwrap();
    assert_eq!(checked.result, CheckResult::WouldCorrect);
    assert_eq!(db.trade(one.as_str()).await.status, "pending");
}
crate::both!(observe_only_checks_and_counts_everything_and_writes_nothing_to_the_bots_table);

async fn a_product_the_bot_did_not_trade_is_a_conflict_never_written(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let new = NewOrder {
        product_id: "BTC-USD".into(),
        base_size: dec("1"),
        limit_price: dec("90000"),
        created_time: Some(Utc::now() - chrono::Duration::minutes(30)),
        ..NewOrder::default()
    };
    let id = sandbox.create_order(new).unwrap();
    sandbox.fill(&id, None, None, None).unwrap();
    db.insert_pending(&id, "alpha", "ETH-USD", Utc::now() - chrono::Duration::minutes(30)).await;
    let (reconciler, metrics) = reconciler_on(&db, Arc::new(sandbox.clone()), "").await;

    let report = pass(&reconciler).await;

    assert_eq!(report.checked[0].verdict, VerdictWord::ProductConflict);
    assert_eq!(db.trade(&id).await.status, "pending", "never written");
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await, 0);
    let conflicts = reconciler.store().conflicts().await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].kind, ordersync::db::ConflictKind::Product);
    assert_eq!(conflicts[0].exchange_product_id.as_deref(), Some("BTC-USD"));
    metrics.refresh_pending(reconciler.store()).await;
    assert_eq!(metrics.product_conflicts.with_label_values(&["alpha"]).get(), 1);
    assert_eq!(metrics.terminal_conflicts.with_label_values(&["alpha"]).get(), 0);

    // The bot fixes its row's product: the conflict clears and the order is corrected.
    db.exec(&format!("UPDATE trades SET product_id = 'BTC-USD' WHERE order_id = '{id}'")).await;
    let report = pass(&reconciler).await;
    assert_eq!(report.count(CheckResult::Corrected), 1);
    assert!(reconciler.store().conflicts().await.unwrap().is_empty());
}
crate::both!(a_product_the_bot_did_not_trade_is_a_conflict_never_written);

async fn the_brake_observe_only_and_prune_through_the_binary(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let setup = crate::cli::setup_on(db, &sandbox).await;
    let run = |args: &'static [&'static str]| {
        let mut command = setup.command();
        command.args(args);
        async move { crate::cli::run(&mut command).await }
    };

    let loose = run(&["reconcile", "--allow-mass-correction"]).await;
    assert_eq!(loose.code, 2, "only for one pass: {}", loose.stderr);
    assert!(loose.stderr.contains("--once"), "{}", loose.stderr);

    let observed = run(&["--observe-only", "reconcile", "--once"]).await;
    assert_eq!(observed.code, 0, "{}", observed.stderr);
    let braked = run(&["--max-corrections-per-pass", "2", "reconcile", "--once"]).await;
    assert_eq!(braked.code, 1, "{}", braked.stderr);
    assert!(braked.stderr.contains("mass-correction brake held every correction"), "{}", braked.stderr);
    assert!(braked.stderr.contains("--allow-mass-correction"), "{}", braked.stderr);
    for (order_id, _, _) in crate::harness::INCIDENT {
        assert_eq!(setup.db.trade(order_id).await.status, "pending", "observe-only and the brake wrote nothing");
    }

    let allowed = run(&["--max-corrections-per-pass", "2", "reconcile", "--once", "--allow-mass-correction"]).await;
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(allowed.stdout.contains("3 corrected"), "{}", allowed.stdout);

    // Three months later: the settled orders' check state and settlements go; the events stay unless asked.
    let old = "2020-01-01T00:00:00+00:00";
    setup.db.exec(&format!("UPDATE ordersync_settlements SET settled_at = '{old}'")).await;
    setup.db.exec(&format!("UPDATE ordersync_order_checks SET last_checked_at = '{old}'")).await;
    setup.db.exec(&format!("UPDATE ordersync_events SET detected_at = '{old}'")).await;
    let inside = run(&["prune", "--older-than", "1h"]).await;
    assert_eq!(inside.code, 2, "inside the verify window: {}", inside.stderr);
    assert!(inside.stderr.contains("verify window"), "{}", inside.stderr);
    let pruned = run(&["prune", "--older-than", "90d"]).await;
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert!(
        pruned.stdout.contains("3 check states of settled orders, 3 settlements, 0 audit events"),
        "{}",
        pruned.stdout
    );
    let count = |table: &str| {
        let db = &setup.db;
        let sql = format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}");
        async move { db.count(&sql).await }
    };
    assert_eq!((count("ordersync_order_checks").await, count("ordersync_settlements").await), (0, 0));
    assert_eq!(count("ordersync_events").await, 3, "the audit events are kept");
    assert_eq!(count("trades").await, 3, "never a row of the bot's table");
    let events = run(&["prune", "--older-than", "90d", "--events"]).await;
    assert!(events.stdout.contains("3 audit events"), "{}", events.stdout);
    assert_eq!(count("ordersync_events").await, 0);
    for (order_id, _, _) in crate::harness::INCIDENT {
        assert_eq!(setup.db.trade(order_id).await.status, "completed");
    }
}
crate::both!(the_brake_observe_only_and_prune_through_the_binary);

/// A bot that keeps writing its SQLite file (with a 1 s busy timeout of its own) while ordersync settles
/// 10,000 orders never sees `database is locked`, and ordersync leaves the file's journal mode alone.
#[tokio::test]
async fn a_bot_writing_its_sqlite_file_is_never_locked_out_while_ordersync_settles_10000_orders() {
    const ORDERS: usize = 10_000;
    let db = TestDb::with_trades(Backend::Sqlite).await;
    db.exec("CREATE TABLE bot_log (id INTEGER PRIMARY KEY, at TEXT NOT NULL)").await;
    let sandbox = Sandbox::new(1);
    let placed = Utc::now() - chrono::Duration::minutes(30);
    let mut values = Vec::with_capacity(ORDERS);
    for _ in 0..ORDERS {
        let id = crate::harness::open_on_exchange(&sandbox, placed);
        sandbox.fill(&id, None, None, None).unwrap();
        values
            .push(format!("('{id}', 'alpha', 'AVNT-USD', '10', 'pending', '{}')", placed.format("%Y-%m-%d %H:%M:%S")));
    }
    db.exec(&format!(
        "INSERT INTO trades (order_id, bot_id, product_id, size, status, created_at) VALUES {}",
        values.join(", ")
    ))
    .await;
    let journal = || async { db.rows("PRAGMA journal_mode").await[0][0].clone().unwrap() };
    let before = journal().await;

    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(&db.url).unwrap().busy_timeout(std::time::Duration::from_secs(1));
    let bot = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let stop = CancellationToken::new();
    let writer = {
        let (bot, stop) = (bot.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut writes, mut errors) = (0usize, Vec::new());
            while !stop.is_cancelled() {
                match sqlx::query("INSERT INTO bot_log (at) VALUES (?)")
                    .bind(Utc::now().to_rfc3339())
                    .execute(&bot)
                    .await
                {
                    Ok(_) => writes += 1,
                    Err(error) => errors.push(format!("{error} at {}", Utc::now().format("%H:%M:%S%.3f"))),
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (writes, errors)
        })
    };
    let mut config = config_with(&db, "batch_size = 1000");
    config.brake.allowed = true;
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::standalone(config.stuck_after);
    let reconciler = Reconciler::new(store, Arc::new(sandbox.clone()), metrics, settings(&config));

    let report = pass(&reconciler).await;
    stop.cancel();
    let (writes, errors) = writer.await.unwrap();

    assert_eq!(report.count(CheckResult::Corrected), ORDERS);
    let longest = reconciler.store().longest_write_transaction();
    assert!(
        errors.is_empty(),
        "the bot saw {} errors, e.g. {:?}; longest write transaction {longest:?}",
        errors.len(),
        errors
    );
    assert!(writes > 10, "the bot kept writing: {writes}");
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM trades WHERE status = 'completed'").await, ORDERS as i64);
    assert_eq!(journal().await, before, "the journal mode is the bot's");
}

async fn one_orders_failed_write_loses_only_that_order(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let refused = crate::harness::INCIDENT[1].0;
    db.exec(&match backend {
        Backend::Sqlite => format!(
            "CREATE TRIGGER refuse BEFORE UPDATE ON trades WHEN NEW.order_id = '{refused}' \
             BEGIN SELECT RAISE(ABORT, 'the bot refuses this write'); END;"
        ),
        Backend::Postgres => format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.order_id = '{refused}' THEN RAISE EXCEPTION 'the bot refuses this write'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse BEFORE UPDATE ON trades FOR EACH ROW EXECUTE FUNCTION refuse();"
        ),
    })
    .await;
    let (reconciler, _) = reconciler_on(&db, Arc::new(sandbox.clone()), "").await;

    let report = pass(&reconciler).await;

    assert_eq!(report.count(CheckResult::Corrected), 2);
    assert_eq!(report.count(CheckResult::Error), 1);
    for (order_id, _, _) in crate::harness::INCIDENT {
        let expected = if order_id == refused { "pending" } else { "completed" };
        assert_eq!(db.trade(order_id).await.status, expected, "{order_id}");
    }
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await, 2, "one event per write");
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_settlements").await, 2);
}
crate::both!(one_orders_failed_write_loses_only_that_order);

/// CANCELLED, EXPIRED and FAILED orders wait out the grace period before they are corrected (through the
/// due checks): the brake holds them there too, by both of its rules.
async fn orders_that_end_without_a_fill_are_braked_after_their_grace_period_too(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let mut cancelled = Vec::new();
    for i in 0..20 {
        let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(30)).await;
        if i < 15 {
            sandbox.end(&id, "CANCELLED").unwrap();
            cancelled.push(id);
        }
    }
    let (reconciler, metrics) =
        reconciler_on(&db, Arc::new(sandbox.clone()), "grace = \"1s\"\nmax_correction_share = 0.5").await;

    let report = pass(&reconciler).await;
    assert_eq!(report.checked.iter().filter(|c| c.verdict == VerdictWord::Waiting).count(), 15);
    let due = reconciler.finish_due(&CancellationToken::new()).await;

    assert_eq!(due.iter().filter(|c| c.result == CheckResult::Held).count(), 15, "{due:?}");
    for id in &cancelled {
        assert_eq!(db.trade(id).await.status, "pending");
    }
    assert_eq!(metrics.correction_brake.get(), 1);
}
crate::both!(orders_that_end_without_a_fill_are_braked_after_their_grace_period_too);
