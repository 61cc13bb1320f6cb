//! Scrape latency of `/metrics` with 1k, 100k and 1M rows in the bot's table and (up to) 10k of them
//! pending, and the cost of the background refresh that feeds the gauges. Prints p50/p99 and RSS.
//! Targets: scrape p99 <= 2 ms and flat across table sizes; RSS <= 30 MB.
//!
//!     cargo bench --bench scrape

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ordersync::config::{FileConfig, Overrides};
use ordersync::metrics::Metrics;
use ordersync::sandbox::Sandbox;
use tokio_util::sync::CancellationToken;

const SCRAPES: usize = 2_000;

#[tokio::main]
async fn main() {
    println!("scrape: {SCRAPES} sequential GET /metrics per size over keep-alive loopback HTTP");
    println!("{:>10} {:>8} {:>10} {:>10} {:>12} {:>9}", "rows", "pending", "p50", "p99", "refresh", "RSS");
    for rows in [1_000usize, 100_000, 1_000_000] {
        let pending = rows.min(10_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.db");
        common::fill_trades(&path, rows, pending).await.close().await;

        let overrides = Overrides {
            database_url: Some(format!("sqlite://{}", path.display())),
            poll_interval: Some("1h".into()),
            ..Overrides::default()
        };
        let config = ordersync::config::resolve(&overrides, &FileConfig::default(), "defaults").unwrap();
        let metrics = Metrics::new(prometheus::Registry::new(), config.stuck_after).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // An exchange that knows none of the orders: the pass changes nothing, the table stays as filled.
        let exchange = Arc::new(Sandbox::new(1));
        let parts = ordersync::app::AppParts {
            exchange: Some(exchange),
            listener: Some(listener),
            metrics: Some(metrics.clone()),
            key: None,
        };
        let app = ordersync::app::App::build(&config, parts).await.unwrap();
        let url = format!("http://{}/metrics", app.addr());
        let store = app.store().clone();
        let token = CancellationToken::new();
        let handle = tokio::spawn(app.run(token.clone()));

        let refresh_started = Instant::now();
        metrics.refresh_pending(&store).await;
        let refresh = refresh_started.elapsed();

        let client = reqwest::Client::new();
        for _ in 0..50 {
            client.get(&url).send().await.unwrap().bytes().await.unwrap();
        }
        let mut samples = Vec::with_capacity(SCRAPES);
        for _ in 0..SCRAPES {
            let started = Instant::now();
            let body = client.get(&url).send().await.unwrap().bytes().await.unwrap();
            samples.push(started.elapsed());
            assert!(!body.is_empty());
        }
        samples.sort();
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
        println!(
            "{:>10} {:>8} {:>10} {:>10} {:>12} {:>6.1} MB",
            rows,
            pending,
            ms(common::quantile(&samples, 0.50)),
            ms(common::quantile(&samples, 0.99)),
            ms(refresh),
            common::rss_mib()
        );
        token.cancel();
        let _ = handle.await;
    }
    println!("(p50/p99 include the client's own time; RSS is this whole process: server, client and SQLite cache)");
}
