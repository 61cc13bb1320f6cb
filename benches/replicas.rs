//! Three replicas of `ordersync serve` (the release binary, real processes) share ten Coinbase accounts on
//! one PostgreSQL table of 100,000 pending orders (10,000 per account, by an account column). Once the
//! replicas have divided the accounts, the simulator ends every order at once; the benchmark prints how long
//! until the last row is settled, and, from the simulator's own log, the requests each account's key made
//! in its busiest one-second window (Coinbase allows 30).
//!
//!     cargo bench --bench replicas

mod common;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use ordersync::exchange::auth::CdpKey;
use ordersync::sandbox::server::{self, ServerState};
use ordersync::sandbox::{NewOrder, Sandbox};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

const ORDERS: usize = 100_000;
const ACCOUNTS: usize = 10;
const REPLICAS: usize = 3;
const RATE: u32 = 30;

async fn pending(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM trades WHERE status = 'pending'").fetch_one(pool).await.unwrap()
}

/// The accounts each replica serves, from `ordersync_account_owner`.
async fn owners(metrics: &[String]) -> Vec<usize> {
    let mut counts = Vec::new();
    for url in metrics {
        let text = match reqwest::get(url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        counts.push(text.lines().filter(|l| l.starts_with("ordersync_account_owner{") && l.ends_with(" 1")).count());
    }
    counts
}

#[tokio::main]
async fn main() {
    println!("replicas: {REPLICAS} x `ordersync serve`, {ACCOUNTS} accounts at {RATE} requests/s each, {ORDERS} pending orders, PostgreSQL");
    let Some(url) = common::pg_trades(ORDERS, ORDERS).await else {
        println!("  no PostgreSQL server answers; skipped");
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // Each row names its account: order n is account n % 10's.
    sqlx::raw_sql(
        "ALTER TABLE trades ADD COLUMN account TEXT; \
         UPDATE trades SET account = 'a' || (('x' || lpad(right(order_id, 12), 16, '0'))::bit(64)::bigint % 10); \
         ANALYZE trades",
    )
    .execute(&pool)
    .await
    .unwrap();

    let keys: Vec<CdpKey> =
        (0..ACCOUNTS).map(|i| CdpKey::generate(&format!("organizations/bench/apiKeys/a{i}"))).collect();
    let sandbox = Sandbox::new(1);
    let ids: Vec<String> = (0..ORDERS).map(|n| common::order_id("bench-", n)).collect();
    for (n, id) in ids.iter().enumerate() {
        let new = NewOrder {
            order_id: Some(id.clone()),
            product_id: "AVNT-USD".into(),
            base_size: rust_decimal::Decimal::TEN,
            limit_price: rust_decimal::Decimal::ONE,
            account: Some(keys[n % ACCOUNTS].name().to_string()),
            ..NewOrder::default()
        };
        sandbox.create_order(new).unwrap();
    }
    let token = CancellationToken::new();
    let accepted: HashMap<String, _> = keys.iter().map(|k| (k.name().to_string(), k.public_key())).collect();
    let addr =
        server::spawn("127.0.0.1:0", ServerState::new(sandbox.clone(), accepted, NonZeroU32::new(RATE)), token.clone())
            .await
            .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from(
        "max_corrections_per_pass = 1000000\nmax_correction_share = 1.0\n\n[coinbase]\nwebsocket = false\nrate_limit = 30\n\n\
         [trades]\naccount = \"account\"\n\n",
    );
    for (i, key) in keys.iter().enumerate() {
        let path = dir.path().join(format!("a{i}.pem"));
        std::fs::write(&path, key.to_pem().unwrap().expose_secret()).unwrap();
        config.push_str(&format!(
            "[[accounts]]\nname = \"a{i}\"\nkey_file = \"{}\"\nkey_name = \"{}\"\n\n",
            path.display(),
            key.name()
        ));
    }
    let config_path = dir.path().join("ordersync.toml");
    std::fs::write(&config_path, config).unwrap();

    let mut children = Vec::new();
    let mut metrics = Vec::new();
    for r in 0..REPLICAS {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
            .args(["--config", config_path.to_str().unwrap(), "serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-interval", "2s", "--grace", "0s"])
            .env("ORDERSYNC_DATABASE_URL", &url)
            .env("ORDERSYNC_COINBASE_API_URL", format!("http://{addr}"))
            .env("ORDERSYNC_REPLICA", format!("r{r}"))
            .env("ORDERSYNC_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
        metrics.push(format!("http://127.0.0.1:{port}/metrics"));
    }
    // Wait for the division: every account served, none by more than its share.
    let share = ACCOUNTS.div_ceil(REPLICAS);
    let started = Instant::now();
    loop {
        let counts = owners(&metrics).await;
        if counts.iter().sum::<usize>() == ACCOUNTS && counts.iter().all(|c| *c <= share) {
            println!(
                "  accounts per replica: {counts:?} (divided {:.1} s after start)",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the replicas never divided the accounts: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The exchange ends every order at once; from then on, every request is recorded.
    sandbox.record_requests();
    for id in &ids {
        sandbox.fill(id, None, None, None).unwrap();
    }
    let ended = Instant::now();
    while pending(&pool).await > 0 {
        assert!(ended.elapsed() < Duration::from_secs(600), "not settled within 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = ended.elapsed();
    let settlements: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ordersync_settlements").fetch_one(&pool).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ordersync_events").fetch_one(&pool).await.unwrap();
    let rss: Vec<String> =
        children.iter().map(|c| format!("{:.1}", common::rss_mib(c.id().unwrap_or_default()))).collect();

    // Each key's busiest one-second window, from the simulator's log.
    let received = sandbox.received();
    let mut per_key: BTreeMap<String, Vec<chrono::DateTime<chrono::Utc>>> = BTreeMap::new();
    for request in &received {
        per_key.entry(request.key.clone()).or_default().push(request.at);
    }
    let mut busiest = 0usize;
    for times in per_key.values_mut() {
        times.sort();
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= chrono::Duration::seconds(1) {
                start += 1;
            }
            busiest = busiest.max(end - start + 1);
        }
    }
    println!(
        "  settle {ORDERS} stale across {ACCOUNTS} accounts: {:.2} s from the exchange ending them to the last row \
         written, {} requests ({:.0} per account), {settlements} settlements, {events} events",
        settled.as_secs_f64(),
        received.len(),
        received.len() as f64 / ACCOUNTS as f64,
    );
    println!("  busiest one-second window of any account's key: {busiest} requests (limit {RATE})");
    println!("  RSS of the replicas after settling: {} MB", rss.join(" / "));
    assert_eq!(settlements, ORDERS as i64, "every order settled once");
    assert!(busiest <= RATE as usize, "an account's key went over its rate limit");

    for mut child in children {
        let _ = child.kill().await;
    }
    token.cancel();
    pool.close().await;
    common::drop_pg(&url).await;
}
