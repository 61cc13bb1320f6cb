//! Reconcile 10,000 stale pending orders (SQLite) against the simulator over HTTP, the simulator limited
//! to 30 requests/s as Coinbase is, with ordersync's default client settings (20 requests/s, 100 ids a
//! request). Prints wall time and requests used. Target: <= 10 s (one Get Order per order would need 333 s).
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
use ordersync::reconcile::{Mode, Reconciler};
use ordersync::sandbox::server::{self, ServerState};
use ordersync::sandbox::Sandbox;
use tokio_util::sync::CancellationToken;

const ORDERS: usize = 10_000;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let pool = common::fill_trades(&path, ORDERS, ORDERS).await;
    pool.close().await;

    let sandbox = Sandbox::new(1);
    common::place_orders(&sandbox, "bench-", ORDERS, true);
    let key = CdpKey::generate("organizations/bench/apiKeys/bench");
    let keys = HashMap::from([(key.name().to_string(), key.public_key())]);
    let token = CancellationToken::new();
    let addr =
        server::spawn("127.0.0.1:0", ServerState::new(sandbox.clone(), keys, NonZeroU32::new(30)), token.clone())
            .await
            .unwrap();

    let overrides = Overrides {
        database_url: Some(format!("sqlite://{}", path.display()).into()),
        grace: Some("0s".into()),
        ..Overrides::default()
    };
    let config = ordersync::config::resolve(&overrides, &FileConfig::default(), "defaults").unwrap();
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::standalone(config.stuck_after);
    let rate = NonZeroU32::new(config.coinbase.rate_limit).unwrap();
    let client = CoinbaseClient::new(&format!("http://{addr}"), key, rate, metrics.clone()).unwrap();
    let reconciler = Reconciler::new(store, Arc::new(client), metrics.clone(), ordersync::app::settings(&config));

    let started = Instant::now();
    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    let wall = started.elapsed();

    let requests: u64 = ["list_orders", "get_order"]
        .iter()
        .flat_map(|endpoint| {
            ["ok", "rate_limited", "transient", "not_found"]
                .map(|o| metrics.exchange_requests.with_label_values(&[endpoint, o]).get())
        })
        .sum();
    println!("reconcile: {ORDERS} stale pending orders, SQLite, simulator limited to 30 requests/s");
    println!("  client: {} requests/s, {} ids a request", config.coinbase.rate_limit, config.batch_size);
    println!("  corrected:        {}", report.count("corrected"));
    println!(
        "  wall time:        {:.2} s (target <= 10 s; one request per order at 30/s: {:.0} s)",
        wall.as_secs_f64(),
        ORDERS as f64 / 30.0
    );
    println!("  requests used:    {requests} (simulator served {})", sandbox.requests());
    println!("  orders/s:         {:.0}", ORDERS as f64 / wall.as_secs_f64());
    assert_eq!(report.count("corrected"), ORDERS, "every order corrected");
    token.cancel();
}
