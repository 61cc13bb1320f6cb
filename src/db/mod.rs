//! `Store`: the one interface over SQLite and PostgreSQL. Reads pending rows of the bot's table, applies
//! a correction and its event in one transaction, keeps per-order check state, runs ordersync's own
//! migrations. Every query is written once; `on_pool!` runs the same body on either pool type.
//!
//! Deliberately not here: deciding anything (that is `decide.rs`), and any table of the bot's other than
//! the mapped one. Only this module writes the bot's table.

mod lock;
mod sql;
pub mod trades;

pub use lock::InstanceLock;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, Row, SqlitePool};

use crate::db::trades::{StatusWords, TradesSchema};
use crate::decide::{late, Because, EndSource, Fill, SettledBy, Terminal};
use crate::order::{parse_timestamp, OrderId, TradeRow};

pub use sql::{BoundSchema, Column, PgType};

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL {url} cannot be read: {why}")]
    BadUrl { url: String, why: String },
    #[error("the database server refused {url}: {why}: check the database name, the role and its password")]
    Refused { url: String, why: String },
    #[error("the SQLite database {path} does not exist: point ORDERSYNC_DATABASE_URL at the bot's database file")]
    MissingFile { path: String },
    #[error(
        "another ordersync{} is already running on the SQLite database {database} (it holds {lock}): SQLite is one \
         machine's database and one ordersync serves it; stop the other one, or use PostgreSQL to run replicas",
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    AlreadyRunning { database: String, lock: String, pid: Option<u32> },
    #[error(
        "cannot create the lock file {path} beside the SQLite database: {source} (ordersync needs to write \
             in the database's directory, as SQLite does for its journal)"
    )]
    LockFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "table {table} does not exist in the database {url}: create it, or set trades.table to the bot's table \
         (or this role may not read it: GRANT SELECT ON {table})"
    )]
    MissingTable { table: String, url: String },
    #[error("the bot's table {table} does not fit the [trades] mapping:{}", problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Schema { table: String, problems: Vec<String> },
    #[error("ordersync migration {version} ({name}) failed: {source}")]
    Migrate {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database write failed, nothing of it kept: {0}")]
    Write(String),
    #[error("not written: account {account} is no longer this replica's (its lease went to another, or ran out)")]
    LeaseLost { account: String },
    #[error(
        "ordersync's tables in {url} are missing or not at the current version: run `ordersync migrate` with a \
         role that may create tables (or start serve without --no-migrate)"
    )]
    NotMigrated { url: String },
    #[error(
        "this role may not create or update ordersync's tables in {url} ({why}): run `ordersync migrate` as the \
         schema's owner, then run serve or reconcile with --no-migrate (README, Database roles)"
    )]
    MayNotMigrate { url: String, why: String },
}

/// Where an answer came from, as recorded in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Poll,
    Websocket,
    Manual,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Poll, Source::Websocket, Source::Manual];

    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Poll => "poll",
            Source::Websocket => "websocket",
            Source::Manual => "manual",
        }
    }
}

/// A correction to write: the row it was decided on, where it goes, and what the exchange said.
#[derive(Debug, Clone)]
pub struct Correction<'a> {
    pub row: &'a TradeRow,
    pub to: Terminal,
    pub fill: &'a Fill,
    pub exchange_status: &'a str,
    pub source: Source,
    pub detected_at: DateTime<Utc>,
    /// The first time ordersync saw the order ended, and how (kept in the check state).
    pub seen: (DateTime<Utc>, EndSource),
    /// Why: the exchange ended the order, or the not-found policy wrote it off.
    pub because: &'a Because,
    /// The Coinbase account whose key asked (`account::DEFAULT_ACCOUNT` with one key).
    pub account: &'a str,
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Write<'a> {
    Correction(Correction<'a>),
    Check(CheckRecord<'a>),
}

impl Write<'_> {
    /// The account the write is for.
    pub fn account(&self) -> &str {
        match self {
            Write::Correction(c) => c.account,
            Write::Check(c) => c.account,
        }
    }
}

/// What a write did. `settled` says whether this write settled the order (counted once, ever).
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Correction { applied: Applied, settled: Option<SettledBy> },
    Check { settled: Option<SettledBy> },
}

/// What a correction's write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The row was pending and now holds the exchange's outcome.
    Written {
        applied_at: DateTime<Utc>,
        /// From the time the order ended on the exchange to our commit (zero if the clocks disagree).
        latency: Duration,
        /// The order ended before ordersync first ran on this database: its latency is not ordersync's, and
        /// it is never late.
        backlog: bool,
    },
    /// The bot changed the row after we read it: nothing was overwritten. `now` is what it holds
    /// (`None` if the row is gone).
    RowChanged { now: Option<String> },
    /// The row already holds the status we would write (another path of ours, or the bot, got there
    /// first with the same outcome): nothing to write, no event.
    AlreadyApplied,
}

/// One check of an order that wrote nothing to the bot's row.
#[derive(Debug, Clone)]
pub struct CheckRecord<'a> {
    pub row: &'a TradeRow,
    pub exchange_status: Option<&'a str>,
    pub verdict: crate::decide::VerdictWord,
    /// Set when the check was unresolved; counts towards flagging.
    pub error: Option<String>,
    pub flagged: bool,
    pub at: DateTime<Utc>,
    /// When the exchange says the order ended: when it ended and how ordersync knows.
    pub ended: Option<(DateTime<Utc>, EndSource)>,
    /// The first time ordersync saw the order ended, and how, if it has (kept in the check state).
    pub seen: Option<(DateTime<Utc>, EndSource)>,
    /// The bot's row already holds the exchange's outcome: settle the order as the bot's.
    pub settles: bool,
    /// The bot's row disagrees with the exchange: record the conflict.
    pub conflict: Option<NewConflict>,
    /// A product conflict recorded earlier no longer holds: remove it.
    pub clears_conflict: bool,
    /// When to ask about this order again (`None`: the next pass).
    pub next_check_at: Option<DateTime<Utc>>,
    /// The 404s that count towards the not-found policy, oldest first (empty once the order is found).
    pub not_found_at: &'a [DateTime<Utc>],
    /// The account the row belongs to (its lease fences the write).
    pub account: &'a str,
}

/// Which accounts this process may write for, at which lease epoch (`replica::Ownership`). With a fence
/// that is `fenced`, every write transaction checks in the database, in the transaction, that this replica
/// still holds each account it writes for at that epoch; otherwise it writes nothing.
pub trait Fence: Send + Sync + std::fmt::Debug {
    fn replica(&self) -> &str;
    /// The epoch at which this replica holds `account`, while it does.
    fn epoch(&self, account: &str) -> Option<i64>;
    /// Whether writes are fenced at all (PostgreSQL replicas; never SQLite).
    fn fenced(&self) -> bool;
    /// The database says the lease is gone: stop acting for the account.
    fn lost(&self, account: &str);
}

/// A lease as `ordersync_leases` holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRow {
    pub account: String,
    pub owner: Option<String>,
    pub epoch: i64,
    /// Still held by the database's clock.
    pub held: bool,
}

/// What kind of disagreement a conflict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// A terminal row the exchange ended with another position (`decide::position_conflict`).
    Position,
    /// The bot's row names another product than the exchange's order.
    Product,
}

impl ConflictKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictKind::Position => "position",
            ConflictKind::Product => "product",
        }
    }

    pub fn parse(word: &str) -> ConflictKind {
        if word == "product" {
            ConflictKind::Product
        } else {
            ConflictKind::Position
        }
    }
}

/// A conflict to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConflict {
    pub kind: ConflictKind,
    /// The filled size as the exchange gave it.
    pub filled_size: Option<String>,
    /// The exchange's product id.
    pub exchange_product_id: String,
}

/// One settled order as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct SettlementRow {
    pub order_id: String,
    pub bot_id: Option<String>,
    pub settled_by: SettledBy,
    pub exchange_status: String,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_source: Option<String>,
    pub settled_at: DateTime<Utc>,
    pub latency_seconds: Option<f64>,
    pub late: bool,
    /// Ended before ordersync first ran on this database.
    pub backlog: bool,
}

/// A terminal row the exchange ended otherwise, still holding the status it was found with.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConflictRow {
    pub kind: ConflictKind,
    pub order_id: String,
    pub bot_id: Option<String>,
    pub product_id: Option<String>,
    pub row_status: String,
    pub exchange_status: String,
    pub filled_size: Option<String>,
    pub found_at: DateTime<Utc>,
    /// The exchange's product id (product conflicts).
    pub exchange_product_id: Option<String>,
}

/// Where an order's checks stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckState {
    pub checks: i64,
    pub unresolved_in_a_row: i64,
    pub last_exchange_status: Option<String>,
    pub last_verdict: String,
    pub last_error: Option<String>,
    pub flagged: bool,
    pub last_checked_at: Option<DateTime<Utc>>,
    /// The first time ordersync saw the order ended, and how.
    pub ended_seen: Option<(DateTime<Utc>, EndSource)>,
    /// When an unresolved order is next asked about (`None`: the next pass).
    pub next_check_at: Option<DateTime<Utc>>,
    /// The 404s that count towards the not-found policy, oldest first.
    pub not_found_at: Vec<DateTime<Utc>>,
}

/// One row of the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub order_id: String,
    pub bot_id: Option<String>,
    pub product_id: Option<String>,
    pub from_status: String,
    pub to_status: Option<String>,
    pub exchange_status: String,
    pub exchange_fill_time: Option<DateTime<Utc>>,
    pub fill_price: Option<String>,
    pub fill_size: Option<String>,
    pub detected_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
    pub source: String,
    pub outcome: String,
    pub latency_seconds: Option<f64>,
    pub note: Option<String>,
    /// When the order ended on the exchange, and where that time came from (`decide::EndSource`).
    pub ended_at: Option<DateTime<Utc>>,
    pub end_source: Option<String>,
    /// `None` when the exchange ended the order; `not_found` when the not-found policy wrote it off.
    pub reason: Option<String>,
    /// The account whose key asked (`None` for events written before accounts existed).
    pub account: Option<String>,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A settlement to record: one per ended order, whoever settled it.
struct NewSettlement<'a> {
    row: &'a TradeRow,
    by: SettledBy,
    exchange_status: &'a str,
    /// When the order ended on the exchange, and where that came from.
    ended: Option<(DateTime<Utc>, EndSource)>,
    settled_at: DateTime<Utc>,
    latency: Option<f64>,
    late: bool,
    backlog: bool,
}

/// An event to record (a correction written, or one the bot's own change stopped).
struct NewEvent<'a> {
    correction: &'a Correction<'a>,
    to_status: Option<String>,
    applied_at: Option<DateTime<Utc>>,
    outcome: &'static str,
    latency: Option<f64>,
    note: Option<String>,
    reason: Option<&'static str>,
}

/// A check to record in the check state.
struct NewCheck<'a> {
    row: &'a TradeRow,
    at: DateTime<Utc>,
    exchange_status: Option<&'a str>,
    verdict: &'a str,
    error: Option<String>,
    flagged: bool,
    seen: Option<(DateTime<Utc>, EndSource)>,
    next_check_at: Option<DateTime<Utc>>,
    not_found_at: Option<String>,
}

/// What a transaction's orders add to ordersync's own tables: written together, three statements for the
/// whole transaction (or for one order, in a savepoint of its own).
#[derive(Default)]
struct OwnRows<'a> {
    events: Vec<NewEvent<'a>>,
    /// With the index of the write that settles.
    settlements: Vec<(usize, NewSettlement<'a>)>,
    checks: Vec<NewCheck<'a>>,
}

impl OwnRows<'_> {
    fn clear(&mut self) {
        self.events.clear();
        self.settlements.clear();
        self.checks.clear();
    }
}

/// Write `OwnRows` on a connection (`$conn`: a transaction or savepoint) and give the ids of the orders whose
/// settlement was inserted now. A macro so the same text serves both pool types inside `on_pool!`.
macro_rules! flush_own_rows {
    ($conn:expr, $rows:expr, $backend:expr) => {
        async {
            let rows: &OwnRows = $rows;
            let backend: Backend = $backend;
            if !rows.events.is_empty() {
                let text = sql::positional(backend, sql::insert_events(rows.events.len()));
                let mut query = sqlx::query(&text);
                for e in &rows.events {
                    let (c, fill) = (e.correction, e.correction.fill);
                    query = query
                        .bind(c.row.order_id.as_str())
                        .bind(c.row.bot_id.as_deref())
                        .bind(c.row.product_id.as_deref())
                        .bind(c.row.status.as_str())
                        .bind(e.to_status.as_deref())
                        .bind(c.exchange_status)
                        .bind(fill.time)
                        .bind(fill.price.map(|p| p.to_string()))
                        .bind(fill.size.map(|s| s.to_string()))
                        .bind(c.detected_at)
                        .bind(e.applied_at)
                        .bind(c.source.as_str())
                        .bind(e.outcome)
                        .bind(e.latency)
                        .bind(e.note.as_deref())
                        .bind(fill.ended_at)
                        .bind(fill.end_source.as_str())
                        .bind(e.reason)
                        .bind(c.account);
                }
                query.execute(&mut *$conn).await?;
            }
            let mut inserted: Vec<String> = Vec::new();
            if !rows.settlements.is_empty() {
                let text = sql::positional(backend, sql::insert_settlements(rows.settlements.len()));
                let mut query = sqlx::query_scalar::<_, String>(&text);
                for (_, s) in &rows.settlements {
                    query = query
                        .bind(s.row.order_id.as_str())
                        .bind(s.row.bot_id.as_deref())
                        .bind(s.by.as_str())
                        .bind(s.exchange_status)
                        .bind(s.ended.map(|(at, _)| at))
                        .bind(s.ended.map(|(_, source)| source.as_str()))
                        .bind(s.settled_at)
                        .bind(s.latency)
                        .bind(s.late)
                        .bind(s.backlog);
                }
                inserted = query.fetch_all(&mut *$conn).await?;
            }
            if !rows.checks.is_empty() {
                let text = sql::positional(backend, sql::upsert_checks(rows.checks.len()));
                let mut query = sqlx::query(&text);
                for k in &rows.checks {
                    query = query
                        .bind(k.row.order_id.as_str())
                        .bind(k.at)
                        .bind(k.at)
                        .bind(1i64)
                        .bind(i64::from(k.error.is_some()))
                        .bind(k.exchange_status)
                        .bind(k.verdict)
                        .bind(k.error.as_deref())
                        .bind(k.flagged)
                        .bind(k.seen.map(|(at, _)| at))
                        .bind(k.seen.map(|(_, by)| by.as_str()))
                        .bind(k.next_check_at)
                        .bind(k.not_found_at.as_deref());
                }
                query.execute(&mut *$conn).await?;
            }
            Ok::<Vec<String>, sqlx::Error>(inserted)
        }
    };
}

/// Run the same body on whichever pool the store holds. Both arms compile the body, so a query that does
/// not work on one backend fails to build, not at run time.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// The store over the bot's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    schema: Arc<BoundSchema>,
    url: String,
    /// When ordersync first ran on this database (its first migration): orders that ended before are
    /// backlog, never late.
    watched_since: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    /// ordersync's own tables are at the current migration. Until they are, reading them finds nothing
    /// (read-only commands work on a database never migrated) and nothing is written to them.
    ours: Arc<std::sync::atomic::AtomicBool>,
    /// The longest a write transaction lasted, begin to commit, in microseconds (the benchmark prints it).
    longest_write: Arc<std::sync::atomic::AtomicU64>,
    /// The lease fence every write transaction checks (replicas on PostgreSQL).
    fence: Option<Arc<dyn Fence>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).field("table", &self.schema.table()).finish()
    }
}

/// The URL with any password replaced, for logs and errors.
/// The URL with any password hidden, for logs and errors: in the user part (`user:pw@`) and in the query
/// (`?password=`, `sslpassword=`), also when the URL does not parse.
pub fn redact_url(url: &str) -> String {
    // The user part, by text: everything between "://" and the last '@' before the path.
    let mut shown = url.to_string();
    if let Some(start) = shown.find("://").map(|i| i + 3) {
        let end = shown[start..].find(['/', '?']).map_or(shown.len(), |i| start + i);
        if let Some(at) = shown[start..end].rfind('@').map(|i| start + i) {
            if let Some(colon) = shown[start..at].find(':').map(|i| start + i) {
                shown.replace_range(colon + 1..at, "***");
            }
        }
    }
    // The query: the value of every parameter whose name mentions a password.
    if let Some(query_start) = shown.find('?') {
        let (head, query) = shown.split_at(query_start + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().contains("password") => format!("{name}=***"),
                _ => pair.to_string(),
            })
            .collect();
        shown = format!("{head}{}", query.join("&"));
    }
    shown
}

impl Store {
    /// Connect and check that the bot's table has the mapped columns.
    ///
    /// # Errors
    /// `Connect` when the database cannot be reached, `MissingTable`/`Schema` naming what to fix.
    pub async fn connect(url: &str, schema: &TradesSchema) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        // The server answered and refused (no such database or role, a wrong password): configuration, not
        // an outage.
        let connect_error = |source: sqlx::Error| match &source {
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("3D000" | "28000" | "28P01")) => {
                StoreError::Refused { url: shown.clone(), why: db.message().to_string() }
            }
            _ => StoreError::Connect { url: shown.clone(), source },
        };
        let bad_url = |source: sqlx::Error| StoreError::BadUrl { url: shown.clone(), why: source.to_string() };
        let pool = if url.starts_with("sqlite:") {
            // Never create the bot's database: a missing file is a wrong URL (a configuration error).
            let options = SqliteConnectOptions::from_str(url).map_err(bad_url)?;
            let path = options.get_filename();
            if path != std::path::Path::new(":memory:") && !path.exists() {
                return Err(StoreError::MissingFile { path: path.display().to_string() });
            }
            let options = options
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(false)
                // 256 KiB of page cache per connection (SQLite's default is 2 MiB): ordersync reads pending rows
                // through an index, and what it misses comes from the kernel's page cache. Per connection: the
                // bot is unaffected.
                .pragma("cache_size", "-256");
            let pool = SqlitePoolOptions::new()
                .max_connections(3)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .map_err(connect_error)?;
            Pool::Sqlite(pool)
        } else {
            let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        // Timestamps without zone are read and written as UTC. ordersync never waits long on a
                        // lock (a bot's long transaction, or a replica paused inside a write holding its lease
                        // row): the statement fails and is tried again next round. A transaction of ours left
                        // idle (its process stopped mid-write) is ended by the server, which frees its locks so
                        // another replica can take the account over.
                        sqlx::query(sql::PG_SESSION_SETUP).execute(connection).await.map(|_| ())
                    })
                })
                .connect_with(options)
                .await
                .map_err(connect_error)?;
            Pool::Postgres(pool)
        };
        let backend = match pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        };
        let columns = table_columns(&pool, schema).await?;
        let mut bound = BoundSchema::bind(schema, backend, columns.as_deref(), &shown)?;
        if bound.created_is_untyped() {
            let sample = bound.select_created_sample();
            let found: Option<(String, String)> = match &pool {
                Pool::Sqlite(pool) => sqlx::query_as(&sample).fetch_optional(pool).await?,
                Pool::Postgres(pool) => sqlx::query_as(&sample).fetch_optional(pool).await?,
            };
            if let Some((kind, text)) = found {
                bound.set_created_form(sql::CreatedForm::of(&kind, &text));
            }
        }
        let store = Store {
            pool,
            schema: Arc::new(bound),
            url: shown,
            watched_since: Arc::default(),
            ours: Arc::default(),
            longest_write: Arc::default(),
            fence: None,
        };
        store.read_watched_since().await;
        let current = store.migrations_current().await.unwrap_or(false);
        store.ours.store(current, std::sync::atomic::Ordering::Release);
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The database URL with its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn words(&self) -> &StatusWords {
        self.schema.words()
    }

    pub fn schema(&self) -> &BoundSchema {
        &self.schema
    }

    /// Apply ordersync's own migrations in one transaction; returns the names of those applied now.
    ///
    /// # Errors
    /// `Migrate` naming the migration that failed; nothing of it is kept.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let backend = self.backend();
        let applied = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            if backend == Backend::Postgres {
                // Replicas starting together wait their turn to migrate, however long it takes.
                sqlx::query("SET LOCAL lock_timeout = 0").execute(&mut *tx).await?;
                sqlx::query(sql::PG_MIGRATION_LOCK).execute(&mut *tx).await?;
            }
            sqlx::query(sql::CREATE_MIGRATIONS_TABLE).execute(&mut *tx).await?;
            let done: Vec<i64> = sqlx::query_scalar(sql::SELECT_MIGRATIONS).fetch_all(&mut *tx).await?;
            let mut applied = Vec::new();
            for migration in sql::MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
                let text = match backend {
                    Backend::Sqlite => migration.sqlite,
                    Backend::Postgres => migration.postgres,
                };
                let failed = |source| StoreError::Migrate { version: migration.version, name: migration.name, source };
                sqlx::raw_sql(text).execute(&mut *tx).await.map_err(failed)?;
                sqlx::query(sql::INSERT_MIGRATION)
                    .bind(migration.version)
                    .bind(migration.name)
                    .bind(Utc::now().to_rfc3339())
                    .execute(&mut *tx)
                    .await?;
                applied.push(format!("{:04}_{}", migration.version, migration.name));
            }
            tx.commit().await?;
            Ok::<_, StoreError>(applied)
        }
        .await)
        .map_err(|error| match refused_permission(&error) {
            true => StoreError::MayNotMigrate { url: self.url.clone(), why: error.to_string() },
            false => error,
        })?;
        self.read_watched_since().await;
        self.ours.store(true, std::sync::atomic::Ordering::Release);
        Ok(applied)
    }

    /// Fence every write transaction with `fence` (replicas on PostgreSQL): a write for an account this
    /// replica no longer holds at its epoch is not made.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Store {
        self.fence = Some(fence);
        self
    }

    /// This replica is alive (PostgreSQL).
    pub async fn lease_heartbeat(&self, replica: &str) -> Result<(), StoreError> {
        self.postgres(|pool| async move {
            sqlx::query(sql::LEASE_HEARTBEAT).bind(replica).execute(&pool).await?;
            sqlx::query(sql::LEASE_FORGET).execute(&pool).await?;
            Ok(())
        })
        .await
    }

    /// This replica leaves: the others stop counting it at once.
    pub async fn lease_leave(&self, replica: &str) -> Result<(), StoreError> {
        self.postgres(|pool| async move {
            sqlx::query(sql::LEASE_LEAVE).bind(replica).execute(&pool).await?;
            Ok(())
        })
        .await
    }

    /// Replicas seen within `lease`.
    pub async fn lease_live(&self, lease: Duration) -> Result<i64, StoreError> {
        self.postgres(|pool| async move {
            Ok(sqlx::query_scalar(sql::LEASE_LIVE).bind(lease.as_secs_f64()).fetch_one(&pool).await?)
        })
        .await
    }

    /// A lease row for each account.
    pub async fn lease_ensure(&self, accounts: &[String]) -> Result<(), StoreError> {
        self.postgres(|pool| async move {
            for account in accounts {
                sqlx::query(sql::LEASE_ENSURE).bind(account).execute(&pool).await?;
            }
            Ok(())
        })
        .await
    }

    /// Every account's lease.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        self.postgres(|pool| async move {
            let rows: Vec<(String, Option<String>, i64, bool)> =
                sqlx::query_as(sql::LEASE_LIST).fetch_all(&pool).await?;
            Ok(rows.into_iter().map(|(account, owner, epoch, held)| LeaseRow { account, owner, epoch, held }).collect())
        })
        .await
    }

    /// Take `account` if nobody holds it; the new epoch when taken.
    pub async fn lease_acquire(
        &self,
        account: &str,
        replica: &str,
        lease: Duration,
    ) -> Result<Option<i64>, StoreError> {
        self.postgres(|pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query(&lease_lock_timeout(lease)).execute(&mut *tx).await?;
            let epoch = sqlx::query_scalar(sql::LEASE_ACQUIRE)
                .bind(account)
                .bind(replica)
                .bind(lease.as_secs_f64())
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(epoch)
        })
        .await
    }

    /// Extend the lease held at `epoch`; `false` when it is no longer this replica's.
    pub async fn lease_renew(
        &self,
        account: &str,
        replica: &str,
        epoch: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.postgres(|pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query(&lease_lock_timeout(lease)).execute(&mut *tx).await?;
            let renewed: Option<i64> = sqlx::query_scalar(sql::LEASE_RENEW)
                .bind(account)
                .bind(replica)
                .bind(epoch)
                .bind(lease.as_secs_f64())
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(renewed.is_some())
        })
        .await
    }

    /// Let go of `account` (held at `epoch`).
    pub async fn lease_release(&self, account: &str, replica: &str, epoch: i64) -> Result<(), StoreError> {
        self.postgres(|pool| async move {
            sqlx::query(sql::LEASE_RELEASE).bind(account).bind(replica).bind(epoch).execute(&pool).await?;
            Ok(())
        })
        .await
    }

    /// Run `body` on the PostgreSQL pool; leases are PostgreSQL's alone.
    async fn postgres<'a, T, F, Fut>(&'a self, body: F) -> Result<T, StoreError>
    where
        F: FnOnce(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + 'a,
    {
        match &self.pool {
            Pool::Postgres(pool) => body(pool.clone()).await,
            Pool::Sqlite(_) => Err(StoreError::Write("leases are kept on PostgreSQL only".into())),
        }
    }

    /// The longest a write transaction of `write_batch` held the database, begin to commit.
    pub fn longest_write_transaction(&self) -> Duration {
        Duration::from_micros(self.longest_write.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn held_for(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.longest_write.fetch_max(micros, std::sync::atomic::Ordering::Relaxed);
        tracing::trace!(held_ms = took.as_secs_f64() * 1000.0, "write transaction committed");
    }

    /// Whether ordersync's own tables are there, at the current migration.
    pub fn has_own_tables(&self) -> bool {
        self.ours.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Learn when ordersync first ran here (its first migration); unknown before it is migrated.
    async fn read_watched_since(&self) {
        let text: Option<String> = on_pool!(self, pool => {
            sqlx::query_scalar(sql::SELECT_FIRST_MIGRATION).fetch_optional(pool).await.ok().flatten()
        });
        let since = text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
        *self.watched_since.lock().unwrap_or_else(|p| p.into_inner()) = since;
    }

    /// Whether an order that ended at `ended_at` ended before ordersync first ran here.
    fn backlog(&self, ended_at: DateTime<Utc>) -> bool {
        self.watched_since.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|since| ended_at < since)
    }

    /// Whether every migration ordersync knows has been applied.
    pub async fn migrations_current(&self) -> Result<bool, StoreError> {
        let done: Vec<i64> = on_pool!(self, pool => {
            match sqlx::query_scalar(sql::SELECT_MIGRATIONS).fetch_all(pool).await {
                Ok(done) => done,
                // No bookkeeping table yet: nothing applied.
                Err(sqlx::Error::Database(_)) => Vec::new(),
                Err(other) => return Err(other.into()),
            }
        });
        Ok(sql::MIGRATIONS.iter().all(|m| done.contains(&m.version)))
    }

    /// A cheap round trip.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Every pending row, oldest first. A row whose id or creation time cannot be read is skipped with a
    /// warning and left as it is.
    pub async fn pending_orders(&self) -> Result<Vec<TradeRow>, StoreError> {
        let sql = self.schema.select_by_status();
        let pending = self.words().pending.clone();
        // Streamed: each row is parsed as it arrives, so only the parsed rows are ever held at once.
        let mut rows: Vec<TradeRow> = Vec::new();
        on_pool!(self, pool => {
            let mut stream = sqlx::query(&sql).bind(&pending).fetch(pool);
            while let Some(row) = stream.try_next().await? {
                rows.extend(RawTrade::read(&row)?.parse_or_warn());
            }
        });
        // Oldest first; a row whose age is unknown comes before all (`None` sorts first).
        rows.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.order_id.cmp(&b.order_id)));
        Ok(rows)
    }

    /// One row of the bot's table by order id, whatever its status.
    pub async fn trade(&self, order_id: &OrderId) -> Result<Option<TradeRow>, StoreError> {
        if !self.schema.can_hold(order_id.as_str()) {
            return Ok(None);
        }
        let sql = self.schema.select_by_id();
        let raw: Option<RawTrade> = on_pool!(self, pool => {
            match sqlx::query(&sql).bind(order_id.as_str()).fetch_optional(pool).await? {
                Some(row) => Some(RawTrade::read(&row)?),
                None => None,
            }
        });
        Ok(raw.and_then(RawTrade::parse_or_warn))
    }

    /// Check state for the given orders (absent when never checked).
    pub async fn check_states(&self, ids: &[OrderId]) -> Result<HashMap<OrderId, CheckState>, StoreError> {
        let mut states = HashMap::with_capacity(ids.len());
        if !self.has_own_tables() {
            return Ok(states);
        }
        for chunk in ids.chunks(500) {
            let sql = sql::positional(self.backend(), sql::select_checks(chunk.len()));
            let rows: Vec<(String, CheckState)> = on_pool!(self, pool => {
                let mut query = sqlx::query(&sql).persistent(false);
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                query.fetch_all(pool).await?.iter().map(read_check).collect::<Result<_, sqlx::Error>>()?
            });
            for (id, state) in rows {
                if let Ok(id) = OrderId::parse(&id) {
                    states.insert(id, state);
                }
            }
        }
        Ok(states)
    }

    /// Write many checks in transactions of at most `WRITES_PER_TRANSACTION`, each write in a savepoint of
    /// its own: a correction's update, event, settlement and check state stand or fall together, one write's
    /// failure rolls back only that write, and a hundred orders cost one commit (on SQLite, one sync to disk
    /// instead of one per order).
    ///
    /// Returns one result per write, in order. If a transaction itself fails, each of its writes reports it.
    pub async fn write_batch(&self, writes: &[Write<'_>]) -> Vec<Result<Written, StoreError>> {
        let mut results = Vec::with_capacity(writes.len());
        if self.backend() == Backend::Postgres {
            // Row locks: transactions of different orders run side by side.
            for group in writes.chunks(PG_WRITES_PER_TRANSACTION * PG_CONCURRENT_TRANSACTIONS) {
                let mut running = Vec::with_capacity(PG_CONCURRENT_TRANSACTIONS);
                for slice in group.chunks(PG_WRITES_PER_TRANSACTION) {
                    running.push(self.write_transaction(slice));
                }
                for slice in futures_util::future::join_all(running).await {
                    results.extend(slice);
                }
            }
            return results;
        }
        // Short transactions: the bot's own writers never wait on ordersync for long (on SQLite a write
        // transaction locks the whole database).
        for slice in writes.chunks(WRITES_PER_TRANSACTION) {
            let began = std::time::Instant::now();
            results.extend(self.write_transaction(slice).await);
            if self.backend() == Backend::Sqlite {
                // SQLite is not fair to waiting writers: a bot's busy handler polls, and back-to-back
                // transactions could leave it no gap for longer than its busy timeout. Leave the database
                // free for as long as ordersync just held it.
                tokio::time::sleep(began.elapsed().max(MIN_SQLITE_PAUSE)).await;
            }
        }
        results
    }

    async fn write_transaction(&self, writes: &[Write<'_>]) -> Vec<Result<Written, StoreError>> {
        if writes.is_empty() {
            return Vec::new();
        }
        if !self.has_own_tables() {
            return writes.iter().map(|_| Err(StoreError::NotMigrated { url: self.url.clone() })).collect();
        }
        let schema = &self.schema;
        let pending = schema.words().pending.clone();
        // `Ok(Err(accounts))`: the fence found these accounts lost; nothing was written.
        type Batch = Result<Vec<Result<Written, StoreError>>, Vec<String>>;
        let batch: Result<Batch, sqlx::Error> = on_pool!(self, pool => {
            async {
                let store = self;
                // One order's write to the bot's row (and the conflict table) on `$conn`, the transaction or
                // a savepoint of it; what it adds to ordersync's own tables goes into `$own`.
                // The conditional update of the bot's rows for these writes' corrections, in one statement;
                // gives the ids of the rows it changed.
                macro_rules! update_rows {
                    ($conn:expr, $writes:expr) => {
                        async {
                            let rows: Vec<sql::RowUpdate<'_>> = $writes
                                .iter()
                                .filter_map(|write: &Write<'_>| match write {
                                    Write::Correction(c) => Some(sql::RowUpdate {
                                        order_id: c.row.order_id.as_str(),
                                        to: c.to.word(schema.words()),
                                        fill: c.fill,
                                    }),
                                    Write::Check(_) => None,
                                })
                                .collect();
                            if rows.is_empty() {
                                return Ok::<std::collections::HashSet<String>, sqlx::Error>(Default::default());
                            }
                            let (text, values) = schema.update_many(&rows);
                            let text = sql::positional(store.backend(), text);
                            let mut query = sqlx::query_scalar::<_, String>(&text).persistent(false);
                            for value in &values {
                                query = query.bind(value);
                            }
                            let changed: Vec<String> = query.bind(&pending).fetch_all(&mut *$conn).await?;
                            Ok(changed.into_iter().collect())
                        }
                    };
                }
                macro_rules! write_one {
                    ($conn:expr, $index:expr, $write:expr, $own:expr, $updated:expr) => {
                        async {
                            let own: &mut OwnRows = $own;
                            let updated: &std::collections::HashSet<String> = $updated;
                            match $write {
                                Write::Correction(correction) => {
                                    let row = correction.row;
                                    let to_word = correction.to.word(schema.words());
                                    let applied_at = Utc::now();
                                    let ended_at = correction.fill.ended_at;
                                    let applied = if updated.contains(row.order_id.as_str()) {
                                        let latency = (applied_at - ended_at).to_std().unwrap_or_default();
                                        Applied::Written { applied_at, latency, backlog: store.backlog(ended_at) }
                                    } else {
                                        let now = sqlx::query(&schema.select_status_by_id())
                                            .bind(row.order_id.as_str())
                                            .fetch_optional(&mut *$conn)
                                            .await?
                                            .map(|r| r.try_get::<Option<String>, _>(0))
                                            .transpose()?
                                            .flatten();
                                        if now.as_deref() == Some(to_word) {
                                            Applied::AlreadyApplied
                                        } else {
                                            Applied::RowChanged { now }
                                        }
                                    };
                                    let settles = record_correction($index, correction, &applied, to_word, own);
                                    Ok::<(Written, bool), sqlx::Error>((Written::Correction { applied, settled: None }, settles))
                                }
                                Write::Check(check) => {
                                    let row = check.row;
                                    if check.settles || check.clears_conflict {
                                        sqlx::query(sql::DELETE_CONFLICT)
                                            .bind(row.order_id.as_str())
                                            .execute(&mut *$conn)
                                            .await?;
                                    }
                                    if let Some(conflict) = &check.conflict {
                                        sqlx::query(sql::UPSERT_CONFLICT)
                                            .bind(row.order_id.as_str())
                                            .bind(row.bot_id.as_deref())
                                            .bind(row.product_id.as_deref())
                                            .bind(&row.status)
                                            .bind(check.exchange_status.unwrap_or_default())
                                            .bind(conflict.filled_size.as_deref())
                                            .bind(check.at)
                                            .bind(conflict.kind.as_str())
                                            .bind(&conflict.exchange_product_id)
                                            .execute(&mut *$conn)
                                            .await?;
                                    }
                                    let settles = record_check($index, check, own);
                                    Ok((Written::Check { settled: None }, settles))
                                }
                            }
                        }
                    };
                }
                let began = std::time::Instant::now();
                let mut tx = pool.begin().await?;
                // The fence: each account written for is still this replica's at its epoch, checked in this
                // transaction (its row lock holds a successor's takeover until the commit).
                let fence = store.fence.as_ref().filter(|fence| fence.fenced() && store.backend() == Backend::Postgres);
                let mut lost: Vec<String> = Vec::new();
                if let Some(fence) = fence {
                    let mut accounts: Vec<&str> = writes.iter().map(Write::account).collect();
                    accounts.sort_unstable();
                    accounts.dedup();
                    for account in accounts {
                        let held = match fence.epoch(account) {
                            Some(epoch) => sqlx::query_scalar::<_, i64>(sql::LEASE_FENCE)
                                .bind(account)
                                .bind(fence.replica())
                                .bind(epoch)
                                .fetch_optional(&mut *tx)
                                .await?
                                .is_some(),
                            None => false,
                        };
                        if !held {
                            lost.push(account.to_string());
                        }
                    }
                }
                if !lost.is_empty() {
                    // The lost accounts' writes are not made; the others are, in a transaction of their own.
                    tx.rollback().await?;
                    if let Some(fence) = fence {
                        for account in &lost {
                            fence.lost(account);
                        }
                    }
                    return Ok(Err(lost));
                }
                let mut own = OwnRows::default();
                let mut done: Vec<Result<(Written, bool), StoreError>> = Vec::with_capacity(writes.len());
                let mut inserted: Vec<String> = Vec::new();
                // First the whole transaction at once: each order's update, then ordersync's own rows in three
                // statements. If anything fails it is rolled back and written again an order at a time, each
                // in a savepoint, so that one failure loses only that order's write.
                let fast: Result<(), sqlx::Error> = async {
                    let updated = update_rows!(tx, writes).await?;
                    for (index, write) in writes.iter().enumerate() {
                        done.push(Ok(write_one!(tx, index, write, &mut own, &updated).await?));
                    }
                    inserted = flush_own_rows!(tx, &own, store.backend()).await?;
                    Ok(())
                }
                .await;
                if let Err(error) = fast {
                    tracing::debug!(%error, orders = writes.len(), "a write failed; writing the transaction again an order at a time");
                    tx.rollback().await?;
                    tx = pool.begin().await?;
                    (done, inserted) = (Vec::with_capacity(writes.len()), Vec::new());
                    for (index, write) in writes.iter().enumerate() {
                        own.clear();
                        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
                        let one: Result<(Written, bool), sqlx::Error> = async {
                            let updated = update_rows!(savepoint, std::slice::from_ref(write)).await?;
                            let written = write_one!(savepoint, index, write, &mut own, &updated).await?;
                            inserted.extend(flush_own_rows!(savepoint, &own, store.backend()).await?);
                            Ok(written)
                        }
                        .await;
                        match one {
                            Ok(written) => {
                                savepoint.commit().await?;
                                done.push(Ok(written));
                            }
                            Err(error) => {
                                savepoint.rollback().await?;
                                done.push(Err(StoreError::Query(error)));
                            }
                        }
                    }
                }
                tx.commit().await?;
                store.held_for(began.elapsed());
                Ok(Ok(settle_results(writes, done, inserted)))
            }
            .await
        });
        match batch {
            Ok(Ok(results)) => results,
            Ok(Err(lost)) => {
                let is_lost = |write: &Write<'_>| lost.iter().any(|account| account == write.account());
                let rest: Vec<Write<'_>> = writes.iter().filter(|w| !is_lost(w)).cloned().collect();
                let mut written = Box::pin(self.write_transaction(&rest)).await.into_iter();
                writes
                    .iter()
                    .map(|write| match is_lost(write) {
                        true => Err(StoreError::LeaseLost { account: write.account().to_string() }),
                        false => written.next().unwrap_or_else(|| Err(StoreError::Write("no result".into()))),
                    })
                    .collect()
            }
            Err(error) => {
                let message = error.to_string();
                writes.iter().map(|_| Err(StoreError::Write(message.clone()))).collect()
            }
        }
    }

    /// Settled orders since `since`, oldest first (for the report).
    pub async fn settlements_since(&self, since: DateTime<Utc>) -> Result<Vec<SettlementRow>, StoreError> {
        if !self.has_own_tables() {
            return Ok(Vec::new());
        }
        let rows = on_pool!(self, pool => {
            sqlx::query(sql::SELECT_SETTLEMENTS_SINCE)
                .bind(since)
                .fetch_all(pool)
                .await?
                .iter()
                .map(read_settlement)
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Every bot id ordersync knows: those of the bot's table (at most `limit`) and those it has settled
    /// orders of (`None`: rows without one).
    pub async fn known_bots(&self, limit: usize) -> Result<Vec<Option<String>>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut bots = Vec::new();
        if self.has_own_tables() {
            bots = on_pool!(self, pool => {
                sqlx::query_scalar::<_, Option<String>>(sql::SELECT_KNOWN_BOTS).fetch_all(pool).await?
            });
        }
        if let Some(sql) = self.schema.select_bots() {
            let table: Vec<Option<String>> = on_pool!(self, pool => {
                sqlx::query_scalar::<_, Option<String>>(&sql).bind(limit).fetch_all(pool).await?
            });
            bots.extend(table);
        }
        bots.sort();
        bots.dedup();
        Ok(bots)
    }

    /// Delete ordersync's own rows older than `before`: check state of settled orders, settlements, and the
    /// audit events when `events` is set. Never a row of the bot's table. Deleted a slice at a time, each
    /// its own short transaction.
    ///
    /// # Errors
    /// A query failed; what was deleted before stays deleted.
    pub async fn prune(&self, before: DateTime<Utc>, events: bool) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        if !self.has_own_tables() {
            return Err(StoreError::NotMigrated { url: self.url.clone() });
        }
        let mut steps =
            vec![(sql::PRUNE_CHECKS, &mut pruned.check_states), (sql::PRUNE_SETTLEMENTS, &mut pruned.settlements)];
        if events {
            steps.push((sql::PRUNE_EVENTS, &mut pruned.events));
        }
        for (text, count) in steps {
            loop {
                let began = std::time::Instant::now();
                let deleted = on_pool!(self, pool => {
                    sqlx::query(text).bind(before).bind(PRUNE_SLICE).execute(pool).await?.rows_affected()
                });
                *count += deleted;
                if deleted < u64::try_from(PRUNE_SLICE).unwrap_or(u64::MAX) {
                    break;
                }
                if self.backend() == Backend::Sqlite {
                    // As after a write transaction: leave the database free as long as it was held.
                    tokio::time::sleep(began.elapsed().max(MIN_SQLITE_PAUSE)).await;
                }
            }
        }
        Ok(pruned)
    }

    /// The orders whose backoff has them wait past `now` (not asked about in a pass before then), and
    /// whether each is flagged.
    pub async fn deferred(&self, now: DateTime<Utc>) -> Result<HashMap<OrderId, bool>, StoreError> {
        if !self.has_own_tables() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, bool)> = on_pool!(self, pool => {
            sqlx::query_as(sql::SELECT_DEFERRED).bind(now).fetch_all(pool).await?
        });
        Ok(rows.into_iter().filter_map(|(id, flagged)| Some((OrderId::parse(&id).ok()?, flagged))).collect())
    }

    /// Terminal conflicts whose row still holds the status they were found with, oldest first.
    pub async fn conflicts(&self) -> Result<Vec<ConflictRow>, StoreError> {
        if !self.has_own_tables() {
            return Ok(Vec::new());
        }
        let sql = self.schema.select_conflicts();
        let rows = on_pool!(self, pool => {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(ConflictRow {
                        kind: ConflictKind::parse(&row.try_get::<String, _>(7)?),
                        exchange_product_id: row.try_get(8)?,
                        order_id: row.try_get(0)?,
                        bot_id: row.try_get(1)?,
                        product_id: row.try_get(2)?,
                        row_status: row.try_get(3)?,
                        exchange_status: row.try_get(4)?,
                        filled_size: row.try_get(5)?,
                        found_at: row.try_get(6)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Terminal rows created since `since` that are neither settled nor a conflict at their present status,
    /// oldest first, at most `limit`; rows without a settling answer so far wait until their last check is
    /// older than `recheck_before`, and are given up after `give_up_after` such checks.
    pub async fn terminal_candidates(
        &self,
        since: DateTime<Utc>,
        limit: usize,
        recheck_before: DateTime<Utc>,
        give_up_after: u32,
    ) -> Result<Vec<TradeRow>, StoreError> {
        let ours = self.has_own_tables();
        let sql = if ours { self.schema.select_terminal_candidates() } else { self.schema.select_terminal_rows() };
        let words = self.words();
        let since = self.schema.since_text(since);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = Vec::new();
        on_pool!(self, pool => {
            let mut query = sqlx::query(&sql).bind(&since);
            for terminal in Terminal::ALL {
                query = query.bind(terminal.word(words));
            }
            query = query.bind(limit);
            if ours {
                query = query.bind(i64::from(give_up_after)).bind(recheck_before);
            }
            let mut stream = query.fetch(pool);
            while let Some(row) = stream.try_next().await? {
                rows.extend(RawTrade::read(&row)?.parse_or_warn());
            }
        });
        Ok(rows)
    }

    /// The rows of these order ids, whatever their status (absent: not in the bot's table).
    pub async fn trades(&self, ids: &[OrderId]) -> Result<HashMap<OrderId, TradeRow>, StoreError> {
        let mut trades = HashMap::with_capacity(ids.len());
        let ids: Vec<&OrderId> = ids.iter().filter(|id| self.schema.can_hold(id.as_str())).collect();
        for chunk in ids.chunks(500) {
            let sql = sql::positional(self.backend(), self.schema.select_by_ids(chunk.len()));
            on_pool!(self, pool => {
                let mut query = sqlx::query(&sql).persistent(false);
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                for row in query.fetch_all(pool).await? {
                    if let Some(trade) = RawTrade::read(&row)?.parse_or_warn() {
                        trades.insert(trade.order_id.clone(), trade);
                    }
                }
            });
        }
        Ok(trades)
    }

    /// The event log, oldest first; only one order's events when `order_id` is given.
    pub async fn events(&self, order_id: Option<&OrderId>) -> Result<Vec<EventRow>, StoreError> {
        if !self.has_own_tables() {
            return Ok(Vec::new());
        }
        let sql = sql::select_events(if order_id.is_some() { sql::EventFilter::Order } else { sql::EventFilter::All });
        let rows = on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            if let Some(id) = order_id {
                query = query.bind(id.as_str());
            }
            query.fetch_all(pool).await?.iter().map(read_event).collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// The events of orders the not-found policy wrote off since `since`, oldest first.
    pub async fn written_off_since(&self, since: DateTime<Utc>) -> Result<Vec<EventRow>, StoreError> {
        if !self.has_own_tables() {
            return Ok(Vec::new());
        }
        let sql = sql::select_events(sql::EventFilter::WrittenOffSince);
        let rows = on_pool!(self, pool => {
            sqlx::query(&sql).bind(since).fetch_all(pool).await?.iter().map(read_event).collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Close the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// At most this many orders' writes share one transaction on SQLite (`benches/reconcile.rs` measures how long
/// one holds the database's write lock)...
pub const WRITES_PER_TRANSACTION: usize = 100;
/// ... and on PostgreSQL, where a transaction locks only its rows.
pub const PG_WRITES_PER_TRANSACTION: usize = 250;

/// After each write transaction on SQLite, ordersync leaves the database free at least this long (and at
/// least as long as it held it).
const MIN_SQLITE_PAUSE: Duration = Duration::from_millis(5);

/// Write transactions ordersync runs at once on PostgreSQL (its pool holds 8 connections).
const PG_CONCURRENT_TRANSACTIONS: usize = 4;

/// A lease statement waits for a row lock (a paused writer's fence) at most a tenth of the lease: a round
/// stays well inside the time a lease counts as held locally.
fn lease_lock_timeout(lease: Duration) -> String {
    format!("SET LOCAL lock_timeout = '{}ms'", (lease.as_millis() / 10).max(100))
}

/// Rows deleted per statement when pruning.
const PRUNE_SLICE: i64 = 1000;

/// What `Store::prune` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub check_states: u64,
    pub settlements: u64,
    pub events: u64,
}

/// What a correction adds to ordersync's own tables: its event (unless the row already held the outcome),
/// its settlement, its check state. Returns whether it records a settlement.
fn record_correction<'a>(
    index: usize,
    correction: &'a Correction<'a>,
    applied: &Applied,
    to_word: &str,
    own: &mut OwnRows<'a>,
) -> bool {
    let fill = correction.fill;
    let not_found = match correction.because {
        Because::NotFound { at } => Some(at),
        Because::ExchangeEnded => None,
    };
    let mut notes = Vec::new();
    if let Some(at) = not_found {
        let times: Vec<String> = at.iter().map(|t| t.to_rfc3339()).collect();
        notes.push(format!(
            "not-found policy: Coinbase answered 404 at {} while it answered other orders of the account; \
             written off, no figures",
            times.join(", ")
        ));
    }
    if !fill.missing.is_empty() {
        notes.push(format!(
            "the exchange gave no {} (nor did List Fills): written without {}",
            fill.missing.join(", "),
            if fill.missing.len() == 1 { "it" } else { "them" }
        ));
    }
    if matches!(applied, Applied::Written { backlog: true, .. }) {
        notes.push(
            "the order ended before ordersync first ran on this database: backlog, outside the accuracy and \
             latency figures"
                .to_string(),
        );
    }
    let reason = not_found.map(|_| "not_found");
    match applied {
        Applied::Written { applied_at, latency, .. } => own.events.push(NewEvent {
            correction,
            to_status: Some(to_word.to_string()),
            applied_at: Some(*applied_at),
            outcome: "applied",
            latency: not_found.is_none().then_some(latency.as_secs_f64()),
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            reason,
        }),
        Applied::RowChanged { now } => own.events.push(NewEvent {
            correction,
            to_status: None,
            applied_at: None,
            outcome: "row_changed",
            latency: None,
            note: Some(match now {
                Some(word) => format!("the bot set the row to {word:?} after ordersync read it; left as is"),
                None => "the row was deleted after ordersync read it".to_string(),
            }),
            reason,
        }),
        Applied::AlreadyApplied => {}
    }
    // A correction settles the order as ordersync's; a row already holding the outcome (the bot, or another
    // path of ours that settled it first) as the bot's. An order written off by the not-found policy never
    // ended on the exchange: it is no settlement (the accuracy figures are about ended orders).
    let settlement = match applied {
        _ if not_found.is_some() => None,
        Applied::Written { applied_at, latency, backlog } => {
            Some((SettledBy::Ordersync, *applied_at, Some(latency.as_secs_f64()), *backlog))
        }
        Applied::AlreadyApplied => Some((SettledBy::Bot, correction.detected_at, None, false)),
        Applied::RowChanged { .. } => None,
    };
    if let Some((by, settled_at, latency, backlog)) = settlement {
        own.settlements.push((
            index,
            NewSettlement {
                row: correction.row,
                by,
                exchange_status: correction.exchange_status,
                ended: Some((fill.ended_at, fill.end_source)),
                settled_at,
                latency,
                late: !backlog && latency.is_some_and(late),
                backlog,
            },
        ));
    }
    own.checks.push(NewCheck {
        row: correction.row,
        at: correction.detected_at,
        exchange_status: Some(correction.exchange_status),
        verdict: match applied {
            Applied::Written { .. } => "corrected",
            Applied::RowChanged { .. } => "row_changed",
            Applied::AlreadyApplied => "settled_by_bot",
        },
        error: None,
        flagged: false,
        seen: Some(correction.seen),
        next_check_at: None,
        not_found_at: not_found.map(|at| join_times(at)),
    });
    settlement.is_some()
}

/// What a check that writes nothing to the bot's row adds to ordersync's own tables: its check state, and a
/// settlement when the bot's row was right (settled by the bot) or ended with another position (a
/// conflict: a miss of the bot, and late, whatever happens to the row later). Returns whether it records a
/// settlement.
fn record_check<'a>(index: usize, check: &'a CheckRecord<'a>, own: &mut OwnRows<'a>) -> bool {
    own.checks.push(NewCheck {
        row: check.row,
        at: check.at,
        exchange_status: check.exchange_status,
        verdict: check.verdict.as_str(),
        error: check.error.clone(),
        flagged: check.flagged,
        seen: check.seen,
        next_check_at: check.next_check_at,
        not_found_at: (!check.not_found_at.is_empty()).then(|| join_times(check.not_found_at)),
    });
    // A product conflict on a pending row settles nothing: the order is still open to the bot, and stuck
    // until a human looks.
    let settles = match (check.settles, &check.conflict) {
        (true, _) => Some((SettledBy::Bot, false)),
        (false, Some(c)) if c.kind == ConflictKind::Position => Some((SettledBy::Conflict, true)),
        (false, _) => None,
    };
    if let Some((by, late)) = settles {
        own.settlements.push((
            index,
            NewSettlement {
                row: check.row,
                by,
                exchange_status: check.exchange_status.unwrap_or_default(),
                ended: check.ended,
                settled_at: check.at,
                latency: None,
                late,
                backlog: false,
            },
        ));
    }
    settles.is_some()
}

/// Each write's result, with `settled` set for the writes whose settlement was inserted (`inserted`: the
/// order ids the insert returned). An order settled twice in one transaction is counted for its first
/// write only.
fn settle_results(
    writes: &[Write<'_>],
    done: Vec<Result<(Written, bool), StoreError>>,
    inserted: Vec<String>,
) -> Vec<Result<Written, StoreError>> {
    let mut inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    writes
        .iter()
        .zip(done)
        .map(|(write, result)| {
            let (written, settles) = result?;
            let (row, by) = match (write, &written) {
                (Write::Correction(c), Written::Correction { applied, .. }) => (
                    c.row,
                    if matches!(applied, Applied::AlreadyApplied) { SettledBy::Bot } else { SettledBy::Ordersync },
                ),
                (Write::Check(c), _) => (c.row, if c.settles { SettledBy::Bot } else { SettledBy::Conflict }),
                (Write::Correction(c), _) => (c.row, SettledBy::Ordersync),
            };
            let settled = (settles && inserted.remove(row.order_id.as_str())).then_some(by);
            Ok(match written {
                Written::Correction { applied, .. } => Written::Correction { applied, settled },
                Written::Check { .. } => Written::Check { settled },
            })
        })
        .collect()
}

/// Times as kept in `not_found_at`: RFC 3339, space-separated, oldest first.
fn join_times(times: &[DateTime<Utc>]) -> String {
    times.iter().map(|t| t.to_rfc3339()).collect::<Vec<_>>().join(" ")
}

/// The times `join_times` wrote; a word that is not a time is skipped.
fn split_times(text: Option<&str>) -> Vec<DateTime<Utc>> {
    text.unwrap_or_default()
        .split_whitespace()
        .filter_map(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .collect()
}

/// Whether the database refused for lack of privilege (PostgreSQL 42501) or a read-only file (SQLite 8).
fn refused_permission(error: &StoreError) -> bool {
    let source = match error {
        StoreError::Query(source) | StoreError::Migrate { source, .. } => source,
        _ => return false,
    };
    match source {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("42501" | "8")),
        _ => false,
    }
}

/// The columns of the bot's table with their types, `None` when it does not exist.
async fn table_columns(pool: &Pool, schema: &TradesSchema) -> Result<Option<Vec<Column>>, StoreError> {
    let (schema_name, table) = BoundSchema::table_parts(schema);
    let columns: Vec<Column> = match pool {
        Pool::Sqlite(pool) => {
            let names: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2)")
                .bind(table)
                .bind(schema_name.unwrap_or("main"))
                .fetch_all(pool)
                .await?;
            names.into_iter().map(|name| Column { name, pg: None }).collect()
        }
        Pool::Postgres(pool) => {
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT column_name::text, data_type::text, udt_schema::text, udt_name::text \
                 FROM information_schema.columns \
                 WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2",
            )
            .bind(schema_name)
            .bind(table)
            .fetch_all(pool)
            .await?;
            let mut columns = Vec::with_capacity(rows.len());
            for (name, data_type, udt_schema, udt_name) in rows {
                let enum_labels: Vec<String> = if data_type == "USER-DEFINED" {
                    sqlx::query_scalar(
                        "SELECT e.enumlabel::text FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid \
                         JOIN pg_namespace n ON n.oid = t.typnamespace \
                         WHERE n.nspname = $1 AND t.typname = $2 ORDER BY e.enumsortorder",
                    )
                    .bind(&udt_schema)
                    .bind(&udt_name)
                    .fetch_all(pool)
                    .await?
                } else {
                    Vec::new()
                };
                columns.push(Column { name, pg: Some(PgType { data_type, udt_schema, udt_name, enum_labels }) });
            }
            columns
        }
    };
    Ok((!columns.is_empty()).then_some(columns))
}

/// A row as the database gave it, before parsing.
struct RawTrade {
    order_id: Option<String>,
    status: Option<String>,
    created_at: Option<String>,
    bot_id: Option<String>,
    product_id: Option<String>,
    account: Option<String>,
}

impl RawTrade {
    fn read<R: Row>(row: &R) -> Result<RawTrade, sqlx::Error>
    where
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        Ok(RawTrade {
            order_id: row.try_get(0)?,
            status: row.try_get(1)?,
            created_at: row.try_get(2)?,
            bot_id: row.try_get(3)?,
            product_id: row.try_get(4)?,
            account: row.try_get(5)?,
        })
    }

    /// The row, with its creation time when it can be read (a row whose time cannot be read is still
    /// reconciled: its age is unknown). A row whose id cannot be an order id is still listed, under an
    /// escaped stand-in (`OrderId::unreadable`): checked, never sent, flagged in time.
    fn parse_or_warn(self) -> Option<TradeRow> {
        let raw_created = self.created_at.unwrap_or_default();
        let created_at = parse_timestamp(&raw_created).ok();
        let order_id = match self.order_id.as_deref().map(OrderId::parse) {
            Some(Ok(order_id)) => order_id,
            _ => {
                let stand_in = OrderId::unreadable(self.order_id.as_deref());
                tracing::debug!(order_id = %stand_in, "a row's order id cannot be an order id; listed, never sent");
                stand_in
            }
        };
        Some(TradeRow {
            order_id,
            status: self.status.unwrap_or_default(),
            created_raw: created_at.is_none().then_some(raw_created),
            created_at,
            bot_id: self.bot_id,
            product_id: self.product_id,
            account: self.account,
        })
    }
}

fn read_check<R: Row>(row: &R) -> Result<(String, CheckState), sqlx::Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok((
        row.try_get(0)?,
        CheckState {
            checks: row.try_get(1)?,
            unresolved_in_a_row: row.try_get(2)?,
            last_exchange_status: row.try_get(3)?,
            last_verdict: row.try_get(4)?,
            last_error: row.try_get(5)?,
            flagged: row.try_get(6)?,
            last_checked_at: row.try_get(7)?,
            ended_seen: {
                let at: Option<DateTime<Utc>> = row.try_get(8)?;
                let source: Option<String> = row.try_get(9)?;
                at.map(|at| (at, source.as_deref().and_then(EndSource::parse).unwrap_or(EndSource::SeenPoll)))
            },
            next_check_at: row.try_get(10)?,
            not_found_at: split_times(row.try_get::<Option<String>, _>(11)?.as_deref()),
        },
    ))
}

fn read_settlement<R: Row>(row: &R) -> Result<SettlementRow, sqlx::Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let by: String = row.try_get(2)?;
    Ok(SettlementRow {
        order_id: row.try_get(0)?,
        bot_id: row.try_get(1)?,
        settled_by: SettledBy::parse(&by).unwrap_or(SettledBy::Ordersync),
        exchange_status: row.try_get(3)?,
        ended_at: row.try_get(4)?,
        end_source: row.try_get(5)?,
        settled_at: row.try_get(6)?,
        latency_seconds: row.try_get(7)?,
        late: row.try_get(8)?,
        backlog: row.try_get(9)?,
    })
}

fn read_event<R: Row>(row: &R) -> Result<EventRow, sqlx::Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(EventRow {
        order_id: row.try_get(0)?,
        bot_id: row.try_get(1)?,
        product_id: row.try_get(2)?,
        from_status: row.try_get(3)?,
        to_status: row.try_get(4)?,
        exchange_status: row.try_get(5)?,
        exchange_fill_time: row.try_get(6)?,
        fill_price: row.try_get(7)?,
        fill_size: row.try_get(8)?,
        detected_at: row.try_get(9)?,
        applied_at: row.try_get(10)?,
        source: row.try_get(11)?,
        outcome: row.try_get(12)?,
        latency_seconds: row.try_get(13)?,
        note: row.try_get(14)?,
        ended_at: row.try_get(15)?,
        end_source: row.try_get(16)?,
        reason: row.try_get(17)?,
        account: row.try_get(18)?,
    })
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_wherever_the_url_holds_them() {
        for (url, shown) in [
            ("postgres://bot:s3cret@db:5432/trading", "postgres://bot:***@db:5432/trading"),
            (
                "postgres://bot@db/trading?password=s3cret&sslmode=require",
                "postgres://bot@db/trading?password=***&sslmode=require",
            ),
            ("postgres://bot:s3cret@db:bad/x", "postgres://bot:***@db:bad/x"),
            ("sqlite://x.db?password=s3cret", "sqlite://x.db?password=***"),
            ("postgres://bot@db/trading", "postgres://bot@db/trading"),
            ("postgres://a:p@ss@db/x?sslpassword=k", "postgres://a:***@db/x?sslpassword=***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
