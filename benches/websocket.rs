//! Real-time sync under load: 100 fills/s for 60 s through the simulator's user channel, polling at an
//! hour, on SQLite and PostgreSQL, with grace 0 and with the default grace (10 s), and the client at the
//! default rate limit (20 requests/s: the due checks batch their lookups). The bot never writes, so every
//! order is corrected. Prints p50/p99 of (commit - (exchange event + grace)): how long after the bot's
//! grace ran out the row was right. Target: p99 <= 100 ms on loopback.
//!
//!     cargo bench --bench websocket                          # 60 s per backend and grace
//!     ORDERSYNC_BENCH_SECONDS=10 cargo bench --bench websocket
//!
//! PostgreSQL: a scratch database is created on DATABASE_URL (default postgres://postgres@127.0.0.1/postgres).

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use ordersync::app::{App, AppParts};
use ordersync::config::{FileConfig, Overrides};
use ordersync::exchange::auth::CdpKey;
use ordersync::metrics::Metrics;
use ordersync::sandbox::server::{self, ServerState, WS_PATH};
use ordersync::sandbox::Sandbox;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

const RATE: u64 = 100;

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("ORDERSYNC_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    println!(
        "websocket: {RATE} fills/s for {seconds} s, polling at 1h, 20 requests/s; \
         latency = DB commit - (exchange event + grace)"
    );
    println!(
        "{:>10} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "backend", "grace", "fills", "p50", "p99", "max", "by poll", "requests"
    );
    let dir = tempfile::tempdir().unwrap();
    let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    for grace in ["0s", "10s"] {
        let sqlite = format!("sqlite://{}", dir.path().join(format!("bench-{grace}.db")).display());
        run("sqlite", &sqlite, seconds, grace).await;
        match PgConnection::connect(&admin).await {
            Ok(mut connection) => {
                let name = format!("ordersync_bench_{}_{}", std::process::id(), grace.trim_end_matches('s'));
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut connection).await.unwrap();
                let mut url = reqwest::Url::parse(&admin).unwrap();
                url.set_path(&name);
                run("postgres", url.as_str(), seconds, grace).await;
                sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut connection).await.unwrap();
            }
            Err(error) => println!("{:>10} skipped: {error}", "postgres"),
        }
    }
}

async fn run(backend: &str, url: &str, seconds: u64, grace: &str) {
    let fills = (RATE * seconds) as usize;
    let schema = if backend == "sqlite" {
        ordersync::demo::BOT_SCHEMA.to_string()
    } else {
        ordersync::demo::BOT_SCHEMA
            .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
            .replace("TEXT NOT NULL DEFAULT (datetime('now'))", "TIMESTAMPTZ NOT NULL DEFAULT now()")
            .replace("filled_at    TEXT", "filled_at    TIMESTAMPTZ")
    };
    if backend == "sqlite" {
        let options = url.parse::<sqlx::sqlite::SqliteConnectOptions>().unwrap().create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::raw_sql(&schema).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(&schema).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let sandbox = Sandbox::new(1);
    let ids = common::place_orders(&sandbox, "ws-bench-", fills, false);
    let rows: Vec<String> = ids.iter().map(|id| format!("('{id}', 'bench', 'AVNT-USD', '10', 'pending')")).collect();
    let insert = format!("INSERT INTO trades (order_id, bot_id, product_id, size, status) VALUES {}", rows.join(", "));
    if backend == "sqlite" {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::raw_sql(&insert).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(&insert).execute(&pool).await.unwrap();
        pool.close().await;
    }

    let key = CdpKey::generate("organizations/bench/apiKeys/bench");
    let token = CancellationToken::new();
    let keys = HashMap::from([(key.name().to_string(), key.public_key())]);
    let addr =
        server::spawn("127.0.0.1:0", ServerState::new(sandbox.clone(), keys, NonZeroU32::new(1000)), token.clone())
            .await
            .unwrap();
    let overrides = Overrides::default()
        .with("database-url", url.to_string())
        .with("poll-interval", "1h")
        .with("grace", grace)
        .with("coinbase-api-url", format!("http://{addr}"))
        .with("coinbase-ws-url", format!("ws://{addr}{WS_PATH}"));
    let config =
        ordersync::config::resolve(&overrides, &FileConfig::default(), "bench", &ordersync::config::System).unwrap();
    let metrics = Metrics::new(prometheus::Registry::new(), config.stuck_after).unwrap();
    let exchange = ordersync::app::coinbase_client(&config, key.clone(), &metrics).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let parts = AppParts {
        exchange: Some(exchange),
        listener: Some(listener),
        metrics: Some(metrics.clone()),
        key: Some(key),
        ..AppParts::default()
    };
    let app = App::build(&config, parts).await.unwrap();
    let store = app.store().clone();
    let handle = tokio::spawn(app.run(token.clone()));
    // Start once the first pass (every order OPEN) is done and the socket is subscribed.
    while metrics.reconcile_runs.with_label_values(&["success"]).get() == 0
        || metrics.websocket_connected.with_label_values(&["default"]).get() == 0
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let requests_before = sandbox.requests();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for id in &ids {
        ticker.tick().await;
        sandbox.fill(id, None, None, None).unwrap();
    }
    for _ in 0..600 {
        if store.pending_orders().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = sandbox.requests() - requests_before;
    let grace_seconds = ordersync::config::parse_duration(grace).unwrap().as_secs_f64();
    let events = store.events(None).await.unwrap();
    let mut latencies: Vec<Duration> = events
        .iter()
        .filter(|e| e.source == "websocket" && e.outcome == "applied")
        .filter_map(|e| e.latency_seconds.map(|l| Duration::from_secs_f64((l - grace_seconds).max(0.0))))
        .collect();
    latencies.sort();
    let by_poll = events.iter().filter(|e| e.source == "poll" && e.outcome == "applied").count();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{:>10} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        backend,
        grace,
        latencies.len(),
        ms(common::quantile(&latencies, 0.50)),
        ms(common::quantile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        by_poll,
        requests
    );
    token.cancel();
    let _ = handle.await;
}
