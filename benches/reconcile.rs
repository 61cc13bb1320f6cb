//! Reconcile 10,000 pending orders against the simulator over HTTP, limited to 30 requests/s as Coinbase
//! is, with the client at 30 requests/s, on SQLite and (when it answers) PostgreSQL:
//!
//! - settle: 10,000 stale orders, FILLED on the exchange (brake allowed, as `--allow-mass-correction`).
//!   Target: <= 3 s; prints the requests used and the longest a write transaction held the database.
//! - steady: 10,000 resting orders (OPEN on the exchange), a pass after the first one. Target: <= 70
//!   requests and 0 rows written.
//!
//!     cargo bench --bench reconcile

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use ordersync::config::{FileConfig, Overrides};
use ordersync::db::Store;
use ordersync::exchange::auth::CdpKey;
use ordersync::exchange::coinbase::CoinbaseClient;
use ordersync::metrics::Metrics;
use ordersync::reconcile::{CheckResult, Mode, Reconciler};
use ordersync::sandbox::server::{self, ServerState};
use ordersync::sandbox::Sandbox;
use tokio_util::sync::CancellationToken;

const ORDERS: usize = 10_000;

fn requests(metrics: &Metrics) -> u64 {
    ["list_orders", "get_order", "list_fills"]
        .iter()
        .flat_map(|endpoint| {
            ["ok", "rate_limited", "transient", "not_found"]
                .map(|o| metrics.exchange_requests.with_label_values(&["default", endpoint, o]).get())
        })
        .sum()
}

/// What ordersync wrote to its check state and event log: the sum of every order's check count, plus the
/// rows, plus the events.
async fn rows_written(url: &str) -> i64 {
    let sql = "SELECT CAST(COALESCE(SUM(checks), 0) + COUNT(*) + (SELECT COUNT(*) FROM ordersync_events) AS BIGINT) \
               FROM ordersync_order_checks";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

async fn reconciler_on(url: &str, sim: std::net::SocketAddr, key: CdpKey) -> (Reconciler, Metrics) {
    let overrides = Overrides::default()
        .with("database-url", url.to_string())
        .with("grace", "0s")
        .with("coinbase-rate-limit", "30");
    let mut config =
        ordersync::config::resolve(&overrides, &FileConfig::default(), "defaults", &ordersync::config::System).unwrap();
    config.brake.allowed = true;
    let store = Store::connect(url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::standalone(config.stuck_after);
    let rate = NonZeroU32::new(config.coinbase.rate_limit).unwrap();
    let client = CoinbaseClient::new(&format!("http://{sim}"), key, rate, metrics.clone()).unwrap();
    (Reconciler::new(store, Arc::new(client), metrics.clone(), ordersync::app::settings(&config)), metrics)
}

/// A simulator limited to 30 requests/s holding `ORDERS` orders, FILLED when `filled`.
async fn simulator(filled: bool, token: &CancellationToken) -> (std::net::SocketAddr, CdpKey) {
    let sandbox = Sandbox::new(1);
    common::place_orders(&sandbox, "bench-", ORDERS, filled);
    let key = CdpKey::generate("organizations/bench/apiKeys/bench");
    let keys = HashMap::from([(key.name().to_string(), key.public_key())]);
    let addr = server::spawn("127.0.0.1:0", ServerState::new(sandbox, keys, NonZeroU32::new(30)), token.clone())
        .await
        .unwrap();
    (addr, key)
}

async fn database(backend: &str, dir: &std::path::Path, name: &str) -> Option<String> {
    if backend == "sqlite" {
        let path = dir.join(format!("{name}.db"));
        common::fill_trades(&path, ORDERS, ORDERS).await.close().await;
        Some(format!("sqlite://{}", path.display()))
    } else {
        common::pg_trades(ORDERS, ORDERS).await
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("reconcile: {ORDERS} pending orders, simulator and client at 30 requests/s (Coinbase's limit)");
    for backend in ["sqlite", "postgres"] {
        let token = CancellationToken::new();
        let Some(url) = database(backend, dir.path(), "settle").await else {
            println!("  {backend}: no PostgreSQL server answers; skipped");
            continue;
        };
        let (sim, key) = simulator(true, &token).await;
        let (reconciler, metrics) = reconciler_on(&url, sim, key).await;
        let started = Instant::now();
        let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
        let wall = started.elapsed();
        assert_eq!(report.count(CheckResult::Corrected), ORDERS, "every order corrected");
        println!(
            "  {backend:<8} settle {ORDERS} stale: {:.2} s (target <= 3 s), {} requests, longest write transaction \
             {:.1} ms ({} orders each)",
            wall.as_secs_f64(),
            requests(&metrics),
            reconciler.store().longest_write_transaction().as_secs_f64() * 1000.0,
            if backend == "sqlite" {
                ordersync::db::WRITES_PER_TRANSACTION
            } else {
                ordersync::db::PG_WRITES_PER_TRANSACTION
            },
        );
        reconciler.store().close().await;
        token.cancel();
        if backend == "postgres" {
            common::drop_pg(&url).await;
        }

        let token = CancellationToken::new();
        let url = database(backend, dir.path(), "steady").await.unwrap();
        let (sim, key) = simulator(false, &token).await;
        let (reconciler, metrics) = reconciler_on(&url, sim, key).await;
        reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
        let (before_requests, before_rows) = (requests(&metrics), rows_written(&url).await);
        let started = Instant::now();
        let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
        let wall = started.elapsed();
        assert_eq!(report.count(CheckResult::Unchanged), ORDERS);
        let used = requests(&metrics) - before_requests;
        let written = rows_written(&url).await - before_rows;
        println!(
            "  {backend:<8} steady pass over {ORDERS} resting: {used} requests (target <= 70), {written} rows written \
             (target 0), {:.2} s",
            wall.as_secs_f64()
        );
        reconciler.store().close().await;
        token.cancel();
        if backend == "postgres" {
            common::drop_pg(&url).await;
        }
    }
}
