//! Side by side with the strongest peer: sql_exporter (Go, Debian `prometheus-sql-exporter`), which runs
//! its queries on an interval and serves cached values as ordersync does, with the same pending-order
//! queries, and `ordersync serve` with its reconciler running (a pass every 10 s over 10,000 resting
//! orders), on the same 1M-row PostgreSQL table with 10,000 pending rows. Interleaved scrapes (one of each,
//! in turn, over keep-alive loopback); prints p50/p99 of each and both RSS figures.
//!
//!     cargo bench --bench peer     # needs prometheus-sql-exporter (apt) and PostgreSQL on 127.0.0.1:5432

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
const ROWS: usize = 1_000_000;
const PENDING: usize = 10_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The queries ordersync's pending gauges answer, as sql_exporter runs them: pending orders, the oldest
/// one's age and those older than 5 minutes, by bot.
fn sql_exporter_config(url: &str) -> String {
    format!(
        "jobs:
- name: pending_orders
  interval: '15s'
  connections:
  - '{url}?sslmode=disable'
  queries:
  - name: pending_orders
    help: Orders pending in the bot's table, by bot.
    labels: [bot_id]
    values: [pending, oldest_age_seconds, over_5m]
    query: |
      SELECT COALESCE(bot_id, '') AS bot_id, COUNT(*)::float8 AS pending,
             EXTRACT(EPOCH FROM (now() AT TIME ZONE 'utc') - MIN(created_at))::float8 AS oldest_age_seconds,
             COUNT(*) FILTER (WHERE created_at < (now() AT TIME ZONE 'utc') - interval '5 minutes')::float8 AS over_5m
      FROM trades WHERE status = 'pending' GROUP BY bot_id
"
    )
}

#[tokio::main]
async fn main() {
    let exporter = std::env::var("ORDERSYNC_SQL_EXPORTER").unwrap_or_else(|_| "prometheus-sql-exporter".into());
    if std::process::Command::new(&exporter).arg("-version").output().is_err() {
        println!("peer: {exporter} is not installed (apt-get install prometheus-sql-exporter); skipped");
        return;
    }
    let Some(db) = common::pg_trades(ROWS, PENDING).await else {
        println!("peer: no PostgreSQL server answers on DATABASE_URL; skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();

    // The pending orders rest on the exchange: every pass asks about all of them and writes nothing.
    let sandbox = Sandbox::new(1);
    common::place_orders(&sandbox, "bench-", PENDING, false);
    let key = CdpKey::generate("organizations/bench/apiKeys/bench");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, key.to_pem().unwrap().expose_secret()).unwrap();
    let keys = HashMap::from([(key.name().to_string(), key.public_key())]);
    let sim = server::spawn("127.0.0.1:0", ServerState::new(sandbox, keys, NonZeroU32::new(30)), token.clone())
        .await
        .unwrap();

    let ours_port = free_port();
    let mut ours = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
        .arg("serve")
        .env("ORDERSYNC_DATABASE_URL", &db)
        .env("ORDERSYNC_COINBASE_API_URL", format!("http://{sim}"))
        .env("ORDERSYNC_COINBASE_KEY_NAME", key.name())
        .env("ORDERSYNC_COINBASE_KEY_FILE", &key_file)
        .env("ORDERSYNC_COINBASE_RATE_LIMIT", "30")
        .env("ORDERSYNC_WEBSOCKET", "off")
        .env("ORDERSYNC_POLL_INTERVAL", "10s")
        .env("ORDERSYNC_LISTEN", format!("127.0.0.1:{ours_port}"))
        .env("ORDERSYNC_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let config = dir.path().join("sql_exporter.yml");
    std::fs::write(&config, sql_exporter_config(&db)).unwrap();
    let peer_port = free_port();
    let mut peer = tokio::process::Command::new(&exporter)
        .arg(format!("-config.file={}", config.display()))
        .arg(format!("-web.listen-address=127.0.0.1:{peer_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let ours_url = format!("http://127.0.0.1:{ours_port}/metrics");
    let peer_url = format!("http://127.0.0.1:{peer_port}/metrics");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        // Ready: a pass has finished and the gauges were refreshed since.
        let ours_ready = match client.get(&ours_url).send().await {
            Ok(response) => {
                let text = response.text().await.unwrap_or_default();
                let passes = text
                    .lines()
                    .find_map(|l| l.strip_prefix("ordersync_reconcile_runs_total{result=\"success\"} "))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                passes >= 1.0 && text.contains("ordersync_collector_success{collector=\"pending_orders\"} 1")
            }
            Err(_) => false,
        };
        let peer_ready = match client.get(&peer_url).send().await {
            Ok(response) => response.text().await.unwrap_or_default().contains("sql_pending_orders"),
            Err(_) => false,
        };
        if ours_ready && peer_ready {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the exporters did not start");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for _ in 0..50 {
        scrape(&client, &ours_url).await;
        scrape(&client, &peer_url).await;
    }
    let (mut ours_samples, mut peer_samples) = (Vec::with_capacity(SCRAPES), Vec::with_capacity(SCRAPES));
    for _ in 0..SCRAPES {
        let at = Instant::now();
        scrape(&client, &ours_url).await;
        ours_samples.push(at.elapsed());
        let at = Instant::now();
        scrape(&client, &peer_url).await;
        peer_samples.push(at.elapsed());
    }
    ours_samples.sort();
    peer_samples.sort();
    let passes = scrape(&client, &ours_url).await;
    let passes = passes
        .lines()
        .find_map(|l| l.strip_prefix("ordersync_reconcile_runs_total{result=\"success\"} "))
        .unwrap_or("?")
        .to_string();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("peer: {ROWS} rows, {PENDING} pending, PostgreSQL, {SCRAPES} interleaved scrapes each");
    println!("{:<28} {:>10} {:>10} {:>10}", "", "p50", "p99", "RSS");
    for (name, samples, pid) in [
        ("sql_exporter 0.4.5 (Go)", &peer_samples, peer.id().unwrap()),
        ("ordersync serve", &ours_samples, ours.id().unwrap()),
    ] {
        println!(
            "{name:<28} {:>7.3} ms {:>7.3} ms {:>7.1} MB",
            ms(common::quantile(samples, 0.5)),
            ms(common::quantile(samples, 0.99)),
            common::rss_mib(pid)
        );
    }
    println!("(ordersync's reconciler ran {passes} passes meanwhile)");
    let _ = ours.kill().await;
    let _ = peer.kill().await;
    token.cancel();
    common::drop_pg(&db).await;
}
