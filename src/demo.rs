//! `ordersync demo`: the embedded default. A SQLite database with the default bot schema, the simulator
//! in-process behind real HTTP and a generated key, a few simulated bots that place orders and (like the
//! incident) miss some completion updates, and the real service reconciling them.
//!
//! Deliberately not here: any reconcile logic. The simulated bots write the bot's table as a bot would;
//! ordersync itself writes it only through `db/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppError, AppParts};
use crate::config::{AccountConfig, Config};
use crate::exchange::auth::CdpKey;
use crate::metrics::Metrics;
use crate::order::sqlite_timestamp;
use crate::sandbox::server::{self, ServerState};
use crate::sandbox::{NewOrder, Sandbox};

/// The bot schema of the incident, as the simulated bots create it.
pub const BOT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS trades (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id     TEXT NOT NULL UNIQUE,
    bot_id       TEXT,
    product_id   TEXT,
    side         TEXT NOT NULL DEFAULT 'BUY',
    size         TEXT,
    status       TEXT NOT NULL DEFAULT 'pending',
    created_at   TEXT NOT NULL DEFAULT (datetime('now')),
    filled_at    TEXT,
    filled_price REAL,
    filled_size  REAL
);
CREATE INDEX IF NOT EXISTS trades_pending ON trades (status, created_at);";

/// The same bot schema on PostgreSQL (the tests and benchmarks run on it).
pub const PG_BOT_SCHEMA: &str = "CREATE TABLE trades (
    id           BIGSERIAL PRIMARY KEY,
    order_id     TEXT NOT NULL UNIQUE,
    bot_id       TEXT,
    product_id   TEXT,
    side         TEXT NOT NULL DEFAULT 'BUY',
    size         TEXT,
    status       TEXT NOT NULL DEFAULT 'pending',
    created_at   TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    filled_at    TIMESTAMP,
    filled_price NUMERIC(20, 10),
    filled_size  NUMERIC(30, 10)
);
CREATE INDEX trades_pending ON trades (status, created_at);";

/// The incident's three orders: pending in the database for hours, FILLED on the exchange.
pub const INCIDENT_ORDERS: [(&str, &str, &str); 3] = [
    ("d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10", "AVNT-USD", "0.8373"),
    ("4ec285fe-0ef5-4012-ba2e-c1fde298d337", "MOODENG-USD", "0.2196"),
    ("137cd41e-605e-4e97-96ff-cdbc517da514", "AVNT-USD", "0.7794"),
];

/// The names of the demo's `count` simulated bots.
fn demo_bot_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|bot| {
            ["alpha", "beta", "gamma", "delta", "epsilon"]
                .get(bot)
                .map_or_else(|| format!("bot{bot}"), |n| n.to_string())
        })
        .collect()
}

/// The demo's bots that trade under the second account, `hedge`.
pub const DEMO_HEDGE_BOTS: [&str; 2] = ["beta", "delta"];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub database: PathBuf,
    pub bots: usize,
    /// Share of completions a bot never hears about.
    pub miss_rate: f64,
    pub order_every: Duration,
    pub seed: u64,
}

/// Open (creating if needed) a SQLite bot database with the default schema.
///
/// # Errors
/// When the file cannot be created or written.
pub async fn create_bot_database(path: &std::path::Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await?;
    sqlx::raw_sql(BOT_SCHEMA).execute(&pool).await?;
    Ok(pool)
}

/// Run the demo until `token` is cancelled. `config` gives everything but the database and the exchange.
///
/// # Errors
/// When the database, the simulator or the service cannot start.
pub async fn run(mut config: Config, options: DemoOptions, token: CancellationToken) -> Result<(), AppError> {
    let bot_db = create_bot_database(&options.database).await.map_err(|e| {
        AppError::Config(format!("cannot create the demo database {}: {e}", options.database.display()))
    })?;
    let sandbox = Sandbox::new(options.seed);
    // Two Coinbase accounts, each with its own key and its own 30 requests/s: the bots of DEMO_HEDGE_BOTS
    // trade under `hedge`, the others (and the incident) under `main`.
    let main = CdpKey::generate("organizations/demo/apiKeys/main");
    let hedge = CdpKey::generate("organizations/demo/apiKeys/hedge");
    let keys =
        HashMap::from([(main.name().to_string(), main.public_key()), (hedge.name().to_string(), hedge.public_key())]);
    let state = ServerState::new(sandbox.clone(), keys, NonZeroU32::new(30));
    let sim_addr = server::spawn("127.0.0.1:0", state, token.child_token())
        .await
        .map_err(|e| AppError::Config(format!("cannot start the simulator: {e}")))?;
    seed_incident(&sandbox, &bot_db, main.name())
        .await
        .map_err(|e| AppError::Config(format!("cannot seed the demo database: {e}")))?;

    config.database_url = Some(format!("sqlite://{}", options.database.display()).into());
    config.coinbase.api_url = format!("http://{sim_addr}");
    let metrics = Metrics::new(prometheus::Registry::new(), config.stuck_after)
        .map_err(|e| AppError::Config(format!("registering metrics failed: {e}")))?;
    config.coinbase.ws_url = format!("ws://{sim_addr}{}", server::WS_PATH);
    let account = |name: &str, key: &CdpKey, bots: &[&str], default: bool| -> Result<AccountConfig, AppError> {
        let pem = key.to_pem().ok_or_else(|| AppError::Config("the demo key has no PEM form".into()))?;
        Ok(AccountConfig {
            name: name.into(),
            key_name: Some(key.name().to_string()),
            key_file: None,
            private_key: Some(pem),
            rate_limit: config.coinbase.rate_limit,
            bots: bots.iter().map(|b| b.to_string()).collect(),
            default,
        })
    };
    config.accounts = vec![account("main", &main, &[], true)?, account("hedge", &hedge, &DEMO_HEDGE_BOTS, false)?];
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| AppError::Listen { addr: config.listen, source })?;
    let parts = AppParts { listener: Some(listener), metrics: Some(metrics), ..AppParts::default() };
    let app = App::build(&config, parts).await?;
    print_banner(app.addr(), sim_addr, &options);

    for bot in 0..options.bots {
        let bot_name = demo_bot_names(options.bots).swap_remove(bot);
        let key = if DEMO_HEDGE_BOTS.contains(&bot_name.as_str()) { &hedge } else { &main };
        let bot = SimulatedBot {
            account: key.name().to_string(),
            name: bot_name,
            sandbox: sandbox.clone(),
            db: bot_db.clone(),
            miss_rate: options.miss_rate,
            every: options.order_every,
            rng: StdRng::seed_from_u64(options.seed.wrapping_add(bot as u64)),
        };
        tokio::spawn(bot.run(token.child_token()));
    }
    app.run(token).await
}

fn print_banner(addr: SocketAddr, sim_addr: SocketAddr, options: &DemoOptions) {
    use std::io::Write;
    // A closed standard output (a pipe whose reader left) must not stop the demo: write errors are ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ordersync demo is running (Ctrl-C to stop)");
    let _ = writeln!(out, "  metrics:        http://{addr}/metrics");
    let _ = writeln!(out, "  sync status:    http://{addr}/api/v1/trades/sync-status");
    let _ = writeln!(out, "  readiness:      http://{addr}/readyz");
    let _ = writeln!(out, "  bot database:   sqlite://{}", options.database.display());
    let hedge: Vec<&str> =
        DEMO_HEDGE_BOTS.iter().copied().filter(|bot| demo_bot_names(options.bots).iter().any(|b| b == bot)).collect();
    let _ = writeln!(
        out,
        "  accounts:       main (the default) and hedge (bots: {}), each with its own key and rate limit",
        if hedge.is_empty() { "none running".to_string() } else { hedge.join(", ") }
    );
    let _ =
        writeln!(out, "  simulator:      http://{sim_addr} (Coinbase Advanced Trade API, control API under /sandbox/)");
    let _ = writeln!(
        out,
        "  user channel:   ws://{sim_addr}{} (real-time updates; polling is the safety net)",
        server::WS_PATH
    );
    let _ = writeln!(
        out,
        "  {} simulated bots place an order every {:?}; each misses {:.0}% of its completions, which ordersync fixes.",
        options.bots,
        options.order_every,
        options.miss_rate * 100.0
    );
    let _ = out.flush();
}

/// Put the incident's three orders in place: FILLED on the exchange hours ago (under `account`'s key),
/// pending in the database.
async fn seed_incident(sandbox: &Sandbox, db: &SqlitePool, account: &str) -> Result<(), sqlx::Error> {
    let placed = Utc::now() - chrono::Duration::hours(3);
    for (order_id, product, price) in INCIDENT_ORDERS {
        let price = Decimal::from_str(price).unwrap_or(Decimal::ONE);
        let new = NewOrder {
            order_id: Some(order_id.into()),
            product_id: product.into(),
            base_size: Decimal::from(100),
            limit_price: price,
            created_time: Some(placed),
            account: Some(account.into()),
            ..NewOrder::default()
        };
        if sandbox.create_order(new).is_ok() {
            let _ = sandbox.fill(order_id, None, Some(price), Some(placed + chrono::Duration::seconds(4)));
        }
        sqlx::query("INSERT OR IGNORE INTO trades (order_id, bot_id, product_id, size, status, created_at) VALUES ($1, 'incident', $2, '100', 'pending', $3)")
            .bind(order_id)
            .bind(product)
            .bind(sqlite_timestamp(placed))
            .execute(db)
            .await?;
    }
    Ok(())
}

/// A bot that places orders and hears of most, not all, completions.
struct SimulatedBot {
    name: String,
    /// The key (account) the bot trades under.
    account: String,
    sandbox: Sandbox,
    db: SqlitePool,
    miss_rate: f64,
    every: Duration,
    rng: StdRng,
}

impl SimulatedBot {
    async fn run(mut self, token: CancellationToken) {
        const PRODUCTS: [(&str, i64); 3] = [("AVNT-USD", 84), ("MOODENG-USD", 22), ("BTC-USD", 9_500_000)];
        loop {
            let (product, cents) = PRODUCTS[self.rng.gen_range(0..PRODUCTS.len())];
            let price = Decimal::new(cents, 2);
            let new = NewOrder {
                product_id: product.into(),
                base_size: Decimal::from(10),
                limit_price: price,
                account: Some(self.account.clone()),
                ..NewOrder::default()
            };
            if let Ok(order_id) = self.sandbox.create_order(new) {
                let inserted = sqlx::query("INSERT INTO trades (order_id, bot_id, product_id, size, status) VALUES ($1, $2, $3, '10', 'pending')")
                    .bind(&order_id)
                    .bind(&self.name)
                    .bind(product)
                    .execute(&self.db)
                    .await;
                if let Err(error) = inserted {
                    tracing::warn!(bot = %self.name, %error, "demo bot could not record its order");
                }
                let delay = Duration::from_millis(self.rng.gen_range(500..4000));
                let cancels = self.rng.gen_bool(0.1);
                let hears = !self.rng.gen_bool(self.miss_rate.clamp(0.0, 1.0));
                tokio::spawn(complete(self.sandbox.clone(), self.db.clone(), order_id, delay, cancels, hears));
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }
}

/// The exchange completes the order; the bot hears of it, or misses it as in the incident.
async fn complete(sandbox: Sandbox, db: SqlitePool, order_id: String, delay: Duration, cancels: bool, hears: bool) {
    tokio::time::sleep(delay).await;
    let ended = if cancels { sandbox.end(&order_id, "CANCELLED") } else { sandbox.fill(&order_id, None, None, None) };
    if ended.is_err() || !hears {
        return;
    }
    let (status, filled_at) =
        if cancels { ("cancelled", None) } else { ("completed", Some(sqlite_timestamp(sandbox.now()))) };
    let _ = sqlx::query("UPDATE trades SET status = $1, filled_at = $2 WHERE order_id = $3 AND status = 'pending'")
        .bind(status)
        .bind(filled_at)
        .bind(&order_id)
        .execute(&db)
        .await;
}
