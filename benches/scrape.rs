//! Scrape latency of a running `ordersync serve` with 1k, 100k and 1M rows in the bot's table and (up to)
//! 10k of them pending, and the service's own memory. The service runs as a child process against the
//! simulator in this process; its RSS is read from /proc/<pid>/status after the scrapes.
//! The reconciler runs at the default 30 s. Targets at 10k pending and 1M rows: p50 <= 0.5 ms, p99 <= 1 ms, RSS
//! <= 16 MB.
//!
//!     cargo bench --bench scrape
//!
//! ORDERSYNC_BENCH_SMAPS=1 prints the RSS split (anonymous, file), ORDERSYNC_BENCH_LOG sets the service's
//! log filter (`warn,ordersync::memory=debug` shows the heap after each gauge refresh), ORDERSYNC_BENCH_REFRESH
//! its gauge refresh.

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use ordersync::exchange::auth::CdpKey;
use ordersync::sandbox::server::{self, ServerState};
use ordersync::sandbox::Sandbox;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

const SCRAPES: usize = 2_000;

async fn value(client: &reqwest::Client, url: &str, series: &str) -> Option<f64> {
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::main]
async fn main() {
    println!("scrape: {SCRAPES} sequential GET /metrics per size, keep-alive loopback, against `ordersync serve`");
    println!("{:>10} {:>8} {:>10} {:>10} {:>14} {:>10}", "rows", "pending", "p50", "p99", "gauge refresh", "RSS");
    for rows in [1_000usize, 100_000, 1_000_000] {
        let pending = rows.min(10_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.db");
        common::fill_trades(&path, rows, pending).await.close().await;

        // The pending orders are open on the exchange, so the service's first pass changes nothing.
        let sandbox = Sandbox::new(1);
        common::place_orders(&sandbox, "bench-", pending, false);
        let key = CdpKey::generate("organizations/bench/apiKeys/bench");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.to_pem().unwrap().expose_secret()).unwrap();
        let token = CancellationToken::new();
        let keys = HashMap::from([(key.name().to_string(), key.public_key())]);
        let sim = server::spawn("127.0.0.1:0", ServerState::new(sandbox, keys, NonZeroU32::new(1000)), token.clone())
            .await
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
            .arg("serve")
            .env("ORDERSYNC_DATABASE_URL", format!("sqlite://{}", path.display()))
            .env("ORDERSYNC_COINBASE_API_URL", format!("http://{sim}"))
            .env("ORDERSYNC_COINBASE_KEY_NAME", key.name())
            .env("ORDERSYNC_COINBASE_KEY_FILE", &key_file)
            .env("ORDERSYNC_COINBASE_RATE_LIMIT", "30")
            .env("ORDERSYNC_WEBSOCKET", "off")
            .env("ORDERSYNC_POLL_INTERVAL", "30s")
            .env("ORDERSYNC_METRICS_REFRESH", std::env::var("ORDERSYNC_BENCH_REFRESH").unwrap_or_else(|_| "15s".into()))
            .env("ORDERSYNC_LISTEN", format!("127.0.0.1:{port}"))
            .env("ORDERSYNC_LOG", std::env::var("ORDERSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let client = reqwest::Client::new();
        // Wait for the first pass and a gauge refresh after it.
        let started = Instant::now();
        while value(&client, &url, "ordersync_reconcile_runs_total{result=\"success\"}").await.unwrap_or(0.0) < 1.0
            || value(&client, &url, "ordersync_collector_success{collector=\"pending_orders\"}").await != Some(1.0)
        {
            assert!(started.elapsed() < Duration::from_secs(300), "the service did not settle");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let refresh = value(&client, &url, "ordersync_collector_duration_seconds{collector=\"pending_orders\"}")
            .await
            .unwrap_or(0.0);

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
        let rss = common::rss_mib(child.id().unwrap());
        if std::env::var_os("ORDERSYNC_BENCH_SMAPS").is_some() {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
            for line in status.lines().filter(|l| l.starts_with("Rss") || l.starts_with("Threads")) {
                println!("    {line}");
            }
        }
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
        println!(
            "{:>10} {:>8} {:>10} {:>10} {:>14} {:>7.1} MB",
            rows,
            pending,
            ms(common::quantile(&samples, 0.50)),
            ms(common::quantile(&samples, 0.99)),
            format!("{:.1} ms", refresh * 1000.0),
            rss
        );
        let _ = child.kill().await;
        token.cancel();
    }
    println!("(p50/p99 include the client's own time; RSS is the ordersync process alone)");
}
