//! The heart: pending rows are fixed from the exchange's certain answers, on SQLite and PostgreSQL.

use ordersync::decide::VerdictWord;
use ordersync::reconcile::CheckResult;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use ordersync::db::{Source, Store, StoreError};
use ordersync::exchange::{Batch, Exchange, ExchangeError, ExchangeOrder};
use ordersync::metrics::Metrics;
use ordersync::order::OrderId;
use ordersync::reconcile::{Mode, Reconciler};
use ordersync::sandbox::Sandbox;
use tokio_util::sync::CancellationToken;

use crate::both;
use crate::harness::{config, config_with, dec, incident, open_order, reconciler, Backend, TestDb, INCIDENT};

async fn incident_orders_complete_with_the_exchange_figures_once(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let filled_at = incident(&db, &sandbox).await;
    let (reconciler, _) = reconciler(&db, &sandbox, &config(&db)).await;

    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.count(CheckResult::Corrected), 3);
    for (order_id, _, price) in INCIDENT {
        let trade = db.trade(order_id).await;
        assert_eq!(trade.status, "completed", "{order_id}");
        assert_eq!(trade.filled_at, Some(filled_at), "the exchange's fill time, not the clock");
        assert_eq!(trade.filled_price, Some(dec(price)));
        assert_eq!(trade.filled_size, Some(dec("100")));
    }
    let events = reconciler.store().events(None).await.unwrap();
    assert_eq!(events.len(), 3);
    for event in &events {
        assert_eq!((event.from_status.as_str(), event.to_status.as_deref()), ("pending", Some("completed")));
        assert_eq!((event.exchange_status.as_str(), event.source.as_str()), ("FILLED", "poll"));
        assert_eq!(event.exchange_fill_time, Some(filled_at));
        assert!(event.latency_seconds.unwrap() > 3600.0 * 24.0, "filled long ago: {:?}", event.latency_seconds);
        assert!(event.bot_id.is_some() && event.product_id.is_some());
    }

    let again = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert!(again.checked.is_empty(), "nothing is pending any more");
    assert_eq!(reconciler.store().events(None).await.unwrap().len(), 3, "a second pass changes nothing");
}
both!(incident_orders_complete_with_the_exchange_figures_once);

async fn a_dry_run_reports_all_three_and_changes_nothing(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let (reconciler, _) = reconciler(&db, &sandbox, &config(&db)).await;

    let report = reconciler.pass(Mode::DryRun, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.count(CheckResult::WouldCorrect), 3);
    assert_eq!(report.mismatches(), 3);
    for (order_id, _, _) in INCIDENT {
        assert_eq!(db.trade(order_id).await.status, "pending");
    }
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await, 0);
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_order_checks").await, 0);
}
both!(a_dry_run_reports_all_three_and_changes_nothing);

/// An exchange that lets the bot complete the order itself while ordersync is asking about it.
struct BotRacesUs {
    inner: Sandbox,
    db_sql: String,
    db: Arc<TestDb>,
}

#[async_trait]
impl Exchange for BotRacesUs {
    async fn orders(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        self.db.exec(&self.db_sql).await;
        self.inner.orders(ids).await
    }

    async fn order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.order(id).await
    }
}

async fn a_row_the_bot_completes_meanwhile_is_not_overwritten(backend: Backend) {
    let db = Arc::new(TestDb::with_trades(backend).await);
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let (order_id, _, _) = INCIDENT[0];
    let bot_sql = format!("UPDATE trades SET status = 'cancelled', filled_price = 1.5 WHERE order_id = '{order_id}'");
    let config = config(&db);
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let exchange = Arc::new(BotRacesUs { inner: sandbox.clone(), db_sql: bot_sql, db: db.clone() });
    let metrics = Metrics::standalone(config.stuck_after);
    let reconciler = Reconciler::new(store, exchange, metrics.clone(), crate::harness::settings(&config));

    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.count(CheckResult::RowChanged), 1);
    assert_eq!(report.count(CheckResult::Corrected), 2);
    let trade = db.trade(order_id).await;
    assert_eq!((trade.status.as_str(), trade.filled_price), ("cancelled", Some(dec("1.5"))), "the bot's write stands");
    let events = reconciler.store().events(Some(&OrderId::parse(order_id).unwrap())).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].outcome.as_str(), events[0].to_status.as_deref()), ("row_changed", None));
    assert!(events[0].note.as_deref().unwrap().contains("\"cancelled\""), "{:?}", events[0].note);
    // Counted only for the two corrections written: not for the row the bot changed.
    assert_eq!(metrics.mismatches.with_label_values(&["avnt-bot", "FILLED"]).get(), 1);
    assert_eq!(metrics.mismatches.with_label_values(&["moodeng-bot", "FILLED"]).get(), 1);
}
both!(a_row_the_bot_completes_meanwhile_is_not_overwritten);

async fn open_orders_stay_pending_and_unknown_ones_are_flagged_after_n_checks(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let open = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(20)).await;
    let weird = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(19)).await;
    sandbox.force_status(&weird, "UNKNOWN_ORDER_STATUS").unwrap();
    let ghost = "0c5e2f39-0000-4000-8000-000000000000";
    db.insert_pending(ghost, "alpha", "AVNT-USD", Utc::now() - chrono::Duration::minutes(18)).await;
    // Unresolved orders back off from the poll interval (10, 20, 40 ms here): each pass below is past it.
    let config = config_with(&db, "flag_after = 3\npoll_interval = \"10ms\"");
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config).await;

    let mut verdicts = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
        let verdict_of = |id: &str| report.checked.iter().find(|c| c.order_id == id).unwrap().verdict.as_str();
        verdicts.push((verdict_of(&open), verdict_of(&weird), verdict_of(ghost)));
    }

    assert_eq!(verdicts[0], ("in_sync", "unresolved", "unresolved"));
    assert_eq!(verdicts[1], ("in_sync", "unresolved", "unresolved"));
    assert_eq!(verdicts[2], ("in_sync", "flagged", "flagged"));
    for id in [open.as_str(), weird.as_str(), ghost] {
        assert_eq!(db.trade(id).await.status, "pending", "{id} is never guessed at");
    }
    let states = reconciler
        .store()
        .check_states(&[OrderId::parse(ghost).unwrap(), OrderId::parse(&open).unwrap()])
        .await
        .unwrap();
    let ghost_state = &states[&OrderId::parse(ghost).unwrap()];
    assert_eq!((ghost_state.checks, ghost_state.unresolved_in_a_row, ghost_state.flagged), (3, 3, true));
    assert!(ghost_state.last_error.as_deref().unwrap().contains("404"));
    assert!(!states[&OrderId::parse(&open).unwrap()].flagged);
    assert_eq!(metrics.order_checks.with_label_values(&["match"]).get(), 3);
    assert_eq!(metrics.order_checks.with_label_values(&["unknown"]).get(), 6);
    assert_eq!(metrics.flagged_orders.get(), 2);
}
both!(open_orders_stay_pending_and_unknown_ones_are_flagged_after_n_checks);

async fn a_terminal_row_is_never_moved_back(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let (order_id, _, _) = INCIDENT[1];
    db.exec(&format!("UPDATE trades SET status = 'cancelled' WHERE order_id = '{order_id}'")).await;
    let (reconciler, _) = reconciler(&db, &sandbox, &config(&db)).await;

    let checked = reconciler.reconcile_one(&OrderId::parse(order_id).unwrap(), Mode::Apply).await.unwrap();

    assert_eq!((checked.verdict, checked.result), (VerdictWord::TerminalConflict, CheckResult::Unchanged));
    assert_eq!(db.trade(order_id).await.status, "cancelled");
    assert!(reconciler.store().events(None).await.unwrap().is_empty());
}
both!(a_terminal_row_is_never_moved_back);

async fn a_custom_schema_works_through_config_alone(backend: Backend) {
    let db = TestDb::empty(backend).await;
    let (timestamp, number) = match backend {
        Backend::Sqlite => ("TEXT", "TEXT"),
        Backend::Postgres => ("TIMESTAMPTZ", "DOUBLE PRECISION"),
    };
    db.exec(&format!(
        "CREATE TABLE bot_orders (exchange_order_id TEXT PRIMARY KEY, state TEXT NOT NULL, placed_at {timestamp} NOT NULL, \
         done_at {timestamp}, avg_px {number}, symbol TEXT)"
    ))
    .await;
    let sandbox = Sandbox::new(1);
    incident_in_custom_table(&db, &sandbox).await;
    let file = r#"
        [trades]
        table = "bot_orders"
        order_id = "exchange_order_id"
        status = "state"
        created_at = "placed_at"
        filled_at = "done_at"
        bot_id = ""
        product_id = "symbol"
        filled_price = "avg_px"
        filled_size = ""
        [trades.status_words]
        pending = "WAITING"
        completed = "DONE"
        cancelled = "CANCELED"
    "#;
    let config = config_with(&db, file);
    let (reconciler, _) = reconciler(&db, &sandbox, &config).await;

    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.count(CheckResult::Corrected), 3, "{report:?}");
    let rows = db
        .rows("SELECT state, CAST(avg_px AS TEXT), CAST(done_at AS TEXT) FROM bot_orders ORDER BY exchange_order_id")
        .await;
    for row in rows {
        assert_eq!(row[0].as_deref(), Some("DONE"));
        assert!(row[1].is_some() && row[2].is_some(), "{row:?}");
    }
}
both!(a_custom_schema_works_through_config_alone);

async fn incident_in_custom_table(db: &TestDb, sandbox: &Sandbox) {
    let scratch_placed = Utc::now() - chrono::Duration::hours(2);
    for (order_id, product, price) in INCIDENT {
        let new = ordersync::sandbox::NewOrder {
            order_id: Some(order_id.into()),
            product_id: product.into(),
            base_size: dec("100"),
            limit_price: dec(price),
            ..Default::default()
        };
        sandbox.create_order(new).unwrap();
        sandbox.fill(order_id, None, None, None).unwrap();
        let placed = match db.backend {
            Backend::Sqlite => format!("'{}'", scratch_placed.to_rfc3339()),
            Backend::Postgres => format!("'{}'::timestamptz", scratch_placed.to_rfc3339()),
        };
        db.exec(&format!(
            "INSERT INTO bot_orders (exchange_order_id, state, placed_at, symbol) VALUES ('{order_id}', 'WAITING', {placed}, '{product}')"
        ))
        .await;
    }
}

async fn a_missing_table_or_column_is_named(backend: Backend) {
    let db = TestDb::empty(backend).await;
    let schema = ordersync::db::trades::TradesSchema::default();
    let missing = Store::connect(&db.url, &schema).await.unwrap_err();
    assert!(matches!(missing, StoreError::MissingTable { .. }), "{missing}");
    assert!(missing.to_string().contains("table trades does not exist"), "{missing}");

    db.exec("CREATE TABLE trades (order_id TEXT, status TEXT, filled_at TEXT)").await;
    let error = Store::connect(&db.url, &schema).await.unwrap_err().to_string();
    assert!(error.contains("no column created_at: set trades.created_at"), "{error}");
}
both!(a_missing_table_or_column_is_named);

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let schema = ordersync::db::trades::TradesSchema::default();
    let error = Store::connect("postgres://bot:hunter2@127.0.0.1:1/trading", &schema).await.unwrap_err().to_string();
    assert!(error.starts_with("cannot connect to the database postgres://bot:***@127.0.0.1:1/trading"), "{error}");
    assert!(!error.contains("hunter2"));
    let error = Store::connect("sqlite:///nonexistent/dir/bot.db", &schema).await.unwrap_err().to_string();
    assert!(
        error.contains("the SQLite database /nonexistent/dir/bot.db does not exist: point ORDERSYNC_DATABASE_URL"),
        "{error}"
    );
}

/// An exchange that cancels the pass while answering about the second batch. The pass looks the second
/// batch up while writing the first, so the signal arrives with the first order's write in hand.
struct CancelsOnSecondLookup {
    inner: Sandbox,
    token: CancellationToken,
    calls: AtomicUsize,
}

#[async_trait]
impl Exchange for CancelsOnSecondLookup {
    async fn orders(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            self.token.cancel();
        }
        self.inner.orders(ids).await
    }

    async fn order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.order(id).await
    }
}

async fn shutdown_mid_pass_keeps_what_was_committed_and_nothing_half_done(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let config = config_with(&db, "batch_size = 1");
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let token = CancellationToken::new();
    let exchange = Arc::new(CancelsOnSecondLookup { inner: sandbox, token: token.clone(), calls: AtomicUsize::new(0) });
    let reconciler =
        Reconciler::new(store, exchange, Metrics::standalone(config.stuck_after), crate::harness::settings(&config));

    let report = reconciler.pass(Mode::Apply, &token).await.unwrap();

    assert!(report.interrupted);
    assert_eq!(report.count(CheckResult::Corrected), 1, "the order in hand before the signal committed");
    let completed = db.count("SELECT CAST(COUNT(*) AS TEXT) FROM trades WHERE status = 'completed'").await;
    let events = db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await;
    assert_eq!((completed, events), (1, 1), "every written row has its event and no more");
}
both!(shutdown_mid_pass_keeps_what_was_committed_and_nothing_half_done);

async fn a_manual_reconcile_is_recorded_as_manual(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config(&db)).await;
    let id = OrderId::parse(INCIDENT[2].0).unwrap();

    let checked = reconciler.reconcile_one(&id, Mode::Apply).await.unwrap();

    assert_eq!(checked.result, CheckResult::Corrected);
    let events = reconciler.store().events(Some(&id)).await.unwrap();
    assert_eq!(events[0].source, Source::Manual.as_str());
    assert_eq!(metrics.corrections.with_label_values(&["avnt-bot", "completed", "manual"]).get(), 1);
}
both!(a_manual_reconcile_is_recorded_as_manual);

async fn one_refused_write_fails_alone_and_the_rest_of_the_batch_commits(backend: Backend) {
    let db = TestDb::empty(backend).await;
    let (timestamp, number) = match backend {
        Backend::Sqlite => ("TEXT", "REAL"),
        Backend::Postgres => ("TIMESTAMPTZ", "NUMERIC"),
    };
    // The bot's own rule: no price above 100. Coinbase filled one order at 150.
    db.exec(&format!(
        "CREATE TABLE trades (order_id TEXT PRIMARY KEY, bot_id TEXT, product_id TEXT, size TEXT, status TEXT NOT NULL, \
         created_at {timestamp} NOT NULL, filled_at {timestamp}, filled_price {number} CHECK (filled_price < 100), filled_size {number})"
    ))
    .await;
    db.watched_since(Utc::now() - chrono::Duration::hours(1)).await;
    let sandbox = Sandbox::new(1);
    let mut ids = Vec::new();
    for price in ["0.84", "150", "0.22"] {
        let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(10)).await;
        sandbox.fill(&id, None, Some(dec(price)), None).unwrap();
        ids.push(id);
    }
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config(&db)).await;

    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();

    let result_of = |id: &str| report.checked.iter().find(|c| c.order_id == id).unwrap().result.as_str();
    assert_eq!((result_of(&ids[0]), result_of(&ids[1]), result_of(&ids[2])), ("corrected", "error", "corrected"));
    assert_eq!(db.trade(&ids[1]).await.status, "pending", "the refused order is left as it was");
    assert_eq!(db.trade(&ids[0]).await.status, "completed");
    assert_eq!(db.trade(&ids[2]).await.status, "completed");
    let events =
        db.count(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events WHERE order_id = '{}'", ids[1])).await;
    assert_eq!(events, 0, "no event for a write that did not happen");
    assert_eq!(metrics.store_errors.get(), 1);
    assert_eq!(metrics.unresolved_mismatches.get(), 1);
    assert_eq!(metrics.mismatches.with_label_values(&["alpha", "FILLED"]).get(), 2, "not the failed write");
    assert_eq!(metrics.settled.with_label_values(&["alpha", "ordersync"]).get(), 2);
}
both!(one_refused_write_fails_alone_and_the_rest_of_the_batch_commits);

/// An exchange whose List Orders rejects any request naming `poison` with a 400, as Coinbase does for an id
/// it cannot parse (or a URL too long).
struct RejectsOne {
    inner: Sandbox,
    poison: OrderId,
    requests: AtomicUsize,
}

#[async_trait]
impl Exchange for RejectsOne {
    async fn orders(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if ids.contains(&self.poison) {
            return Err(ExchangeError::Rejected("HTTP 400: {\"error\":\"INVALID_ARGUMENT\"}".into()));
        }
        self.inner.orders(ids).await
    }

    async fn order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        self.inner.order(id).await
    }
}

/// Rows whose order id cannot be a Coinbase order id (`..`, `batch`, a client order id, an uppercase or
/// unhyphenated UUID, a path) are listed and never sent; an id the exchange rejects (failing the whole List Orders request) is
/// isolated by splitting the batch; every other order of the batch is settled.
async fn one_bad_order_never_poisons_a_batch(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let poison = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(30)).await;
    let shouting = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(30)).await;
    sandbox.fill(&shouting, None, None, None).unwrap();
    db.exec(&format!("UPDATE trades SET order_id = '{}' WHERE order_id = '{shouting}'", shouting.to_uppercase())).await;
    // `../../accounts` and `a b` are not even safe order-id text: listed under their escaped form.
    let odd = ["..", "batch", "bot-7-client-id", "d1aaa054747d4f9a8e3f05fbf5e2cd10", "../../accounts", "a b"];
    for id in odd {
        db.insert_pending(id, "alpha", "AVNT-USD", Utc::now() - chrono::Duration::minutes(30)).await;
    }
    let config = config(&db);
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let exchange = Arc::new(RejectsOne {
        inner: sandbox.clone(),
        poison: OrderId::parse(&poison).unwrap(),
        requests: AtomicUsize::new(0),
    });
    let metrics = Metrics::standalone(config.stuck_after);
    let reconciler = Reconciler::new(store, exchange.clone(), metrics, crate::harness::settings(&config));

    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.count(CheckResult::Corrected), 3, "the incident is settled: {report:?}");
    let detail = |id: &str| report.checked.iter().find(|c| c.order_id == id).unwrap().detail.clone().unwrap();
    for id in odd.iter().copied().chain([shouting.to_uppercase().as_str()]) {
        assert!(detail(id).contains("is not a Coinbase order id (a UUID): never sent"), "{id}: {}", detail(id));
    }
    assert!(detail(&poison).contains("the exchange rejects this order id"), "{}", detail(&poison));
    assert!(detail(&poison).contains("INVALID_ARGUMENT"), "{}", detail(&poison));
    // One batch of four sendable ids: the whole, its halves, the poisoned half's halves.
    assert_eq!(exchange.requests.load(Ordering::SeqCst), 5);
    assert!(!report.failed);
}
both!(one_bad_order_never_poisons_a_batch);

/// However many wake-ups arrive (gaps, reconnects, stalls, manual requests), at most one extra full pass
/// starts per WAKE_COALESCE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_wake_ups_is_coalesced() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let config = config_with(&db, "poll_interval = \"1h\"");
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config).await;
    let token = CancellationToken::new();
    let running = reconciler.clone();
    let child = token.clone();
    let handle = tokio::spawn(async move { running.run(child).await });
    let passes = || metrics.reconcile_runs.with_label_values(&["success"]).get();
    while passes() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..200 {
        reconciler.wake();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 200 wake-ups over 2 s after the first pass: at most one more pass, at WAKE_COALESCE after the first.
    assert!(passes() <= 1, "no pass before WAKE_COALESCE: {}", passes());
    tokio::time::sleep(ordersync::reconcile::WAKE_COALESCE).await;
    assert_eq!(passes(), 2, "one pass for the whole storm");
    token.cancel();
    handle.await.unwrap();
}
