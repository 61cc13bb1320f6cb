//! Test fixtures: a fresh database per test (a temp SQLite file, or a new PostgreSQL database dropped
//! afterwards), the bot's schema, the simulator, and `spawn_app` for the whole service on port 0.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ordersync::app::AppParts;
use ordersync::config::{Config, FileConfig, Overrides};
use ordersync::db::Store;
use ordersync::exchange::auth::CdpKey;
use ordersync::exchange::coinbase::{CoinbaseClient, RetryPolicy};
use ordersync::exchange::Exchange;
use ordersync::metrics::Metrics;
use ordersync::reconcile::{Reconciler, Settings};
use ordersync::sandbox::server::{self, ServerState};
use ordersync::sandbox::{NewOrder, Sandbox};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection, Row, SqliteConnection};
use tokio_util::sync::CancellationToken;

pub const INCIDENT: [(&str, &str, &str); 3] = ordersync::demo::INCIDENT_ORDERS;

static TRACING: Once = Once::new();

/// Logs stay silent unless `TEST_LOG=1`.
pub fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
            ordersync::telemetry::init(ordersync::config::LogFormat::Text, Some("debug,sqlx=warn"));
        }
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Run the async test body `name(backend)` once per backend, as `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::harness::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::harness::Backend::Postgres).await;
            }
        }
    };
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of its own for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn empty(backend: Backend) -> TestDb {
        init_tracing();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("bot.db");
                let url = format!("sqlite://{}", path.display());
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true);
                let mut connection = SqliteConnection::connect_with(&options).await.expect("create sqlite file");
                sqlx::query("SELECT 1").execute(&mut connection).await.unwrap();
                connection.close().await.unwrap();
                TestDb { backend, url, _dir: Some(dir), pg_name: None }
            }
            Backend::Postgres => {
                let name = format!("ordersync_test_{}", uuid::Uuid::new_v4().simple());
                let admin = admin_url();
                let mut connection = PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} (DATABASE_URL) is needed: {e}"));
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut connection).await.unwrap();
                connection.close().await.unwrap();
                let mut url = reqwest::Url::parse(&admin).unwrap();
                url.set_path(&name);
                TestDb { backend, url: url.to_string(), _dir: None, pg_name: Some(name) }
            }
        }
    }

    /// A database holding the incident's bot schema (`trades`).
    pub async fn with_trades(backend: Backend) -> TestDb {
        let db = TestDb::empty(backend).await;
        db.exec(match backend {
            Backend::Sqlite => ordersync::demo::BOT_SCHEMA,
            Backend::Postgres => PG_BOT_SCHEMA,
        })
        .await;
        db
    }

    /// Run SQL (several statements allowed) as the bot would, outside ordersync.
    pub async fn exec(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                pool.close().await;
            }
        }
    }

    /// Rows of a query, every column read as text (`CAST(… AS TEXT)` in the query).
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        fn read<R: Row>(rows: Vec<R>) -> Vec<Vec<Option<String>>>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            rows.iter().map(|row| (0..row.len()).map(|i| row.try_get(i).unwrap()).collect()).collect()
        }
        match self.backend {
            Backend::Sqlite => {
                let mut c = SqliteConnection::connect(&self.url).await.unwrap();
                read(sqlx::query(sql).fetch_all(&mut c).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
            }
            Backend::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.unwrap();
                read(sqlx::query(sql).fetch_all(&mut c).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
            }
        }
    }

    /// The bot places an order: a pending row created at `created_at`.
    pub async fn insert_pending(&self, order_id: &str, bot: &str, product: &str, created_at: DateTime<Utc>) {
        let created = match self.backend {
            Backend::Sqlite => format!("'{}'", created_at.format("%Y-%m-%d %H:%M:%S")),
            Backend::Postgres => format!("'{}'::timestamptz", created_at.to_rfc3339()),
        };
        self.exec(&format!(
            "INSERT INTO trades (order_id, bot_id, product_id, size, status, created_at) \
             VALUES ('{order_id}', '{bot}', '{product}', '100', 'pending', {created})"
        ))
        .await;
    }

    /// `(status, filled_at, filled_price, filled_size)` of a row of `trades`.
    pub async fn trade(&self, order_id: &str) -> TradeState {
        let rows = self
            .rows(&format!(
                "SELECT CAST(status AS TEXT), CAST(filled_at AS TEXT), CAST(filled_price AS TEXT), \
                 CAST(filled_size AS TEXT) FROM trades WHERE order_id = '{order_id}'"
            ))
            .await;
        let row = rows.into_iter().next().unwrap_or_else(|| panic!("no row {order_id}"));
        TradeState {
            status: row[0].clone().unwrap_or_default(),
            filled_at: row[1].as_deref().map(|t| ordersync::order::parse_timestamp(t).unwrap()),
            filled_price: row[2].as_deref().map(|p| Decimal::from_str(p).unwrap().normalize()),
            filled_size: row[3].as_deref().map(|s| Decimal::from_str(s).unwrap().normalize()),
        }
    }

    /// Migrate ordersync's tables as if ordersync had first run here at `at`: orders that ended after it
    /// are not backlog.
    pub async fn watched_since(&self, at: DateTime<Utc>) {
        let store = Store::connect(&self.url, &config(self).trades).await.unwrap();
        store.migrate().await.unwrap();
        store.close().await;
        self.exec(&format!("UPDATE ordersync_migrations SET applied_at = '{}' WHERE version = 1", at.to_rfc3339()))
            .await;
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.rows(sql).await[0][0].as_deref().unwrap().parse().unwrap()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeState {
    pub status: String,
    pub filled_at: Option<DateTime<Utc>>,
    pub filled_price: Option<Decimal>,
    pub filled_size: Option<Decimal>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop in a thread of its own: Drop cannot await, and the test's runtime may be shutting down.
            let handle = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    if let Ok(mut c) = PgConnection::connect(&admin_url()).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                    }
                });
            });
            let _ = handle.join();
        }
    }
}

pub use ordersync::demo::PG_BOT_SCHEMA;

/// One series' value in a scrape.
pub fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The configuration of a test: defaults, the test's database, a fast grace period.
pub fn config(db: &TestDb) -> Config {
    config_with(db, "")
}

/// As `config`, with a TOML file's text on top (a `grace` there replaces the tests' 0s; a
/// `max_correction_share` there replaces the tests' 1, which lets a pass correct every pending row: the tests
/// of the brake set it).
pub fn config_with(db: &TestDb, file: &str) -> Config {
    let unless = |key: &str, value: &str| {
        (!file.lines().any(|line| line.trim_start().starts_with(key))).then(|| value.to_string())
    };
    let mut overrides = Overrides::default().with("database-url", db.url.clone());
    if let Some(grace) = unless("grace", "0s") {
        overrides = overrides.with("grace", grace);
    }
    if let Some(share) = unless("max_correction_share", "1") {
        overrides = overrides.with("max-correction-share", share);
    }
    let file = FileConfig::parse(file, std::path::Path::new("test.toml")).unwrap();
    ordersync::config::resolve(&overrides, &file, "test.toml", &ordersync::config::System).unwrap()
}

pub fn settings(config: &Config) -> Settings {
    ordersync::app::settings(config)
}

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// Place the incident's three orders: filled on the exchange (at a known time) three hours ago, pending in
/// the bot's table. Returns the exchange fill time.
pub async fn incident(db: &TestDb, sandbox: &Sandbox) -> DateTime<Utc> {
    let filled_at = DateTime::parse_from_rfc3339("2025-10-01T10:00:03.250Z").unwrap().with_timezone(&Utc);
    incident_filled_at(db, sandbox, filled_at).await
}

/// As `incident`, with the exchange's fill time given.
pub async fn incident_filled_at(db: &TestDb, sandbox: &Sandbox, filled_at: DateTime<Utc>) -> DateTime<Utc> {
    let placed = Utc::now() - chrono::Duration::hours(3);
    for (order_id, product, price) in INCIDENT {
        let new = NewOrder {
            order_id: Some(order_id.into()),
            product_id: product.into(),
            base_size: dec("100"),
            limit_price: dec(price),
            created_time: Some(placed),
            ..NewOrder::default()
        };
        sandbox.create_order(new).unwrap();
        sandbox.fill(order_id, None, Some(dec(price)), Some(filled_at)).unwrap();
        let bot = if product.starts_with("AVNT") { "avnt-bot" } else { "moodeng-bot" };
        db.insert_pending(order_id, bot, product, placed).await;
    }
    filled_at
}

/// Place an OPEN order of 10 AVNT-USD at 0.84 on the simulator, created at `placed`; returns its id.
pub fn open_on_exchange(sandbox: &Sandbox, placed: DateTime<Utc>) -> String {
    let new = NewOrder {
        product_id: "AVNT-USD".into(),
        base_size: dec("10"),
        limit_price: dec("0.84"),
        created_time: Some(placed),
        ..NewOrder::default()
    };
    sandbox.create_order(new).unwrap()
}

/// Place an OPEN order on the simulator and a matching pending row.
pub async fn open_order(db: &TestDb, sandbox: &Sandbox, bot: &str, age: chrono::Duration) -> String {
    let placed = Utc::now() - age;
    let id = open_on_exchange(sandbox, placed);
    db.insert_pending(&id, bot, "AVNT-USD", placed).await;
    id
}

/// A reconciler over the in-process simulator.
pub async fn reconciler(db: &TestDb, sandbox: &Sandbox, config: &Config) -> (Reconciler, Metrics) {
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::standalone(config.stuck_after);
    let exchange: Arc<dyn Exchange> = Arc::new(sandbox.clone());
    (Reconciler::new(store, exchange, metrics.clone(), settings(config)), metrics)
}

/// The simulator over loopback HTTP with one accepted key; returns its URL and the key.
pub async fn sandbox_http(sandbox: &Sandbox, rate_limit: Option<u32>, token: &CancellationToken) -> (String, CdpKey) {
    let (url, mut keys) = sandbox_http_keys(sandbox, &["organizations/test/apiKeys/test"], rate_limit, token).await;
    (url, keys.remove(0))
}

/// The simulator over loopback HTTP accepting a key of each of these names (each its own account, with its
/// own rate limit); returns its URL and the keys, in order.
pub async fn sandbox_http_keys(
    sandbox: &Sandbox,
    names: &[&str],
    rate_limit: Option<u32>,
    token: &CancellationToken,
) -> (String, Vec<CdpKey>) {
    let keys: Vec<CdpKey> = names.iter().map(|name| CdpKey::generate(name)).collect();
    let accepted = keys.iter().map(|key| (key.name().to_string(), key.public_key())).collect::<HashMap<_, _>>();
    let state = ServerState::new(sandbox.clone(), accepted, rate_limit.and_then(NonZeroU32::new));
    let addr = server::spawn("127.0.0.1:0", state, token.child_token()).await.unwrap();
    (format!("http://{addr}"), keys)
}

/// Quick retries, so fault tests take milliseconds.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 6,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
    }
}

/// The real client pointed at the simulator.
pub fn client(url: &str, key: CdpKey, metrics: &Metrics) -> CoinbaseClient {
    CoinbaseClient::new(url, key, NonZeroU32::new(1000).unwrap(), metrics.clone()).unwrap().with_retry(fast_retry())
}

/// The whole service on port 0 against the simulator over HTTP.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub db: TestDb,
    pub sandbox: Sandbox,
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.unwrap()
    }

    pub async fn scrape(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// One series' value in a fresh scrape, e.g. `metric("ordersync_stuck_orders")`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        value(&self.scrape().await, series)
    }

    /// Wait (bounded) until `check` holds.
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..200 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for: {what}");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Start the service with `file` as extra config (e.g. `poll_interval = "1h"`).
pub async fn spawn_app(backend: Backend, file: &str) -> TestApp {
    spawn_app_on(TestDb::with_trades(backend).await, Sandbox::new(42), file).await
}

/// Start the service on a database and simulator the test has already filled.
pub async fn spawn_app_on(db: TestDb, sandbox: Sandbox, file: &str) -> TestApp {
    spawn_app_keyed(db, sandbox, file, false).await
}

/// As `spawn_app_on`; with `foreign_key`, ordersync signs with a key the simulator does not know (every
/// request answers 401).
pub async fn spawn_app_keyed(db: TestDb, sandbox: Sandbox, file: &str, foreign_key: bool) -> TestApp {
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let key = if foreign_key { CdpKey::generate("organizations/test/apiKeys/unknown") } else { key };
    let mut config = config_with(&db, file);
    config.coinbase.api_url = url.clone();
    let metrics = Metrics::new(prometheus::Registry::new(), config.stuck_after).unwrap();
    config.coinbase.ws_url = format!("ws{}{}", url.trim_start_matches("http"), server::WS_PATH);
    let exchange: Arc<dyn Exchange> = Arc::new(client(&url, key.clone(), &metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let parts = AppParts {
        exchange: Some(exchange),
        listener: Some(listener),
        metrics: Some(metrics),
        key: Some(key),
        ..AppParts::default()
    };
    let app = ordersync::app::App::build(&config, parts).await.unwrap();
    let addr = app.addr();
    let run_token = token.clone();
    let handle = tokio::spawn(async move {
        app.run(run_token).await.unwrap();
    });
    // As a script or a curl user would: the header every request that changes something must carry.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(ordersync::http::CSRF_HEADER, reqwest::header::HeaderValue::from_static("1"));
    let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
    TestApp { addr, db, sandbox, token, handle, http }
}

/// A tool from the environment variable `env` (scripts/test.sh sets it), else `name` on the PATH.
pub fn tool(name: &str, env: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| name.to_string())
}

/// Run a tool from the repository root; fail the test with its output unless it succeeds.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed (scripts/test.sh installs it): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {}:\n{text}", args.join(" "));
    text
}
