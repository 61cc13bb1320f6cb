//! The SQL text ordersync runs, built once from the validated schema mapping. Only identifiers that passed
//! `SqlIdent` are spliced in; every value is a bind parameter (`$N`, which SQLite and PostgreSQL both read).

use crate::db::trades::{OptionalColumn, SqlIdent, StatusWords, TradesSchema};
use crate::db::{Backend, StoreError};
use crate::decide::Fill;
use crate::order::sqlite_timestamp;

/// ordersync's own migrations, one SQL file per backend, applied in order and recorded in
/// `ordersync_migrations` (not sqlx's `_sqlx_migrations`, which a bot using sqlx may own).
pub(super) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events_and_checks",
        sqlite: include_str!("../../migrations/sqlite/0001_events_and_checks.sql"),
        postgres: include_str!("../../migrations/postgres/0001_events_and_checks.sql"),
    },
    Migration {
        version: 2,
        name: "check_counts",
        sqlite: include_str!("../../migrations/sqlite/0002_check_counts.sql"),
        postgres: include_str!("../../migrations/postgres/0002_check_counts.sql"),
    },
    Migration {
        version: 3,
        name: "settlements",
        sqlite: include_str!("../../migrations/sqlite/0003_settlements.sql"),
        postgres: include_str!("../../migrations/postgres/0003_settlements.sql"),
    },
    Migration {
        version: 4,
        name: "backoff_and_not_found",
        sqlite: include_str!("../../migrations/sqlite/0004_backoff_and_not_found.sql"),
        postgres: include_str!("../../migrations/postgres/0004_backoff_and_not_found.sql"),
    },
    Migration {
        version: 5,
        name: "accounts",
        sqlite: include_str!("../../migrations/sqlite/0005_accounts.sql"),
        postgres: include_str!("../../migrations/postgres/0005_accounts.sql"),
    },
    Migration {
        version: 6,
        name: "leases",
        sqlite: include_str!("../../migrations/sqlite/0006_leases.sql"),
        postgres: include_str!("../../migrations/postgres/0006_leases.sql"),
    },
];

pub(super) const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS ordersync_migrations \
     (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)";
pub(super) const SELECT_MIGRATIONS: &str = "SELECT version FROM ordersync_migrations";
pub(super) const SELECT_FIRST_MIGRATION: &str = "SELECT applied_at FROM ordersync_migrations WHERE version = 1";
pub(super) const INSERT_MIGRATION: &str =
    "INSERT INTO ordersync_migrations (version, name, applied_at) VALUES ($1, $2, $3)";
/// Replicas starting together take turns migrating.
pub(super) const PG_MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7261736862)";

/// The statement as `backend` binds it fastest. SQLite takes `$1`, `$2` for names: binding each looks its
/// name up in a list as long as the statement's parameters, so a statement of n parameters costs n² to bind
/// (a 100-row event insert has 1,900; the lookups were a fifth of a settling pass's CPU time). Where every
/// `$n` appears once and in order, plain `?` binds the same values in the same order with no names; any
/// other statement is returned as it is. Quoted text and identifiers are left alone.
pub(super) fn positional(backend: Backend, sql: String) -> String {
    if backend != Backend::Sqlite {
        return sql;
    }
    let mut out = String::with_capacity(sql.len());
    let mut next = 1usize;
    let mut quote: Option<char> = None;
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' => {
                let mut digits = String::new();
                while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.parse::<usize>().ok() != Some(next) {
                    return sql;
                }
                next += 1;
                out.push('?');
            }
            None => out.push(c),
        }
    }
    out
}

/// `($1, …, $cols), ($cols+1, …)`: `rows` groups of `cols` parameters, for a multi-row VALUES.
fn value_groups(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", (1..=cols).map(|c| format!("${}", r * cols + c)).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) const EVENT_COLUMNS: usize = 19;

/// `rows` events (`EVENT_COLUMNS` parameters each).
pub(super) fn insert_events(rows: usize) -> String {
    format!(
        "INSERT INTO ordersync_events (order_id, bot_id, product_id, from_status, to_status, exchange_status, \
         exchange_fill_time, fill_price, fill_size, detected_at, applied_at, source, outcome, latency_seconds, note, \
         ended_at, end_source, reason, account) VALUES {}",
        value_groups(rows, EVENT_COLUMNS)
    )
}

pub(super) const SETTLEMENT_COLUMNS: usize = 10;

/// `rows` settlements; one of an order already settled changes nothing (it is counted once): the ids of
/// those inserted come back.
pub(super) fn insert_settlements(rows: usize) -> String {
    format!(
        "INSERT INTO ordersync_settlements (order_id, bot_id, settled_by, exchange_status, ended_at, end_source, \
         settled_at, latency_seconds, late, backlog) VALUES {} ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
        value_groups(rows, SETTLEMENT_COLUMNS)
    )
}

pub(super) const CHECK_COLUMNS: usize = 13;

/// `rows` checks. A check whose `unresolved_in_a_row` is 1 extends the run of unresolved checks, one with
/// 0 ends it; when and how the order was first seen ended is kept from the first sighting.
pub(super) fn upsert_checks(rows: usize) -> String {
    format!(
        "INSERT INTO ordersync_order_checks (order_id, first_checked_at, last_checked_at, checks, \
         unresolved_in_a_row, last_exchange_status, last_verdict, last_error, flagged, ended_seen_at, \
         ended_seen_source, next_check_at, not_found_at) VALUES {} \
         ON CONFLICT (order_id) DO UPDATE SET last_checked_at = excluded.last_checked_at, \
         checks = ordersync_order_checks.checks + 1, \
         unresolved_in_a_row = CASE WHEN excluded.unresolved_in_a_row > 0 \
         THEN ordersync_order_checks.unresolved_in_a_row + 1 ELSE 0 END, \
         last_exchange_status = excluded.last_exchange_status, last_verdict = excluded.last_verdict, \
         last_error = excluded.last_error, flagged = excluded.flagged, \
         ended_seen_source = CASE WHEN ordersync_order_checks.ended_seen_at IS NULL \
         THEN excluded.ended_seen_source ELSE ordersync_order_checks.ended_seen_source END, \
         ended_seen_at = COALESCE(ordersync_order_checks.ended_seen_at, excluded.ended_seen_at), \
         next_check_at = excluded.next_check_at, not_found_at = excluded.not_found_at",
        value_groups(rows, CHECK_COLUMNS)
    )
}

pub(super) const SELECT_SETTLEMENTS_SINCE: &str = "SELECT order_id, bot_id, settled_by, exchange_status, ended_at, \
     end_source, settled_at, latency_seconds, late, backlog FROM ordersync_settlements WHERE settled_at >= $1 \
     ORDER BY settled_at, order_id";

pub(super) const SELECT_KNOWN_BOTS: &str = "SELECT DISTINCT bot_id FROM ordersync_settlements";

/// Each ordersync PostgreSQL session: UTC, a lock waited on for 2 s fails the statement, and a transaction
/// idle for 5 s (its process stopped mid-write) is ended by the server. One statement (`set_config` each).
pub(super) const PG_SESSION_SETUP: &str = "SELECT set_config('TimeZone', 'UTC', false), \
     set_config('lock_timeout', '2s', false), set_config('idle_in_transaction_session_timeout', '5s', false)";

/// Replicas: this one is alive (PostgreSQL only; times are the database's).
pub(super) const LEASE_HEARTBEAT: &str = "INSERT INTO ordersync_replicas (replica, seen_at) VALUES ($1, now()) \
     ON CONFLICT (replica) DO UPDATE SET seen_at = now()";
/// Replicas not seen for a day are forgotten (each run without a stable name adds one).
pub(super) const LEASE_FORGET: &str = "DELETE FROM ordersync_replicas WHERE seen_at < now() - interval '1 day'";
/// Replicas seen within `$1` seconds.
pub(super) const LEASE_LIVE: &str =
    "SELECT COUNT(*) FROM ordersync_replicas WHERE seen_at > now() - make_interval(secs => $1)";
/// A replica leaving says so, so the others need not wait for its lease to run out to count it gone.
pub(super) const LEASE_LEAVE: &str = "DELETE FROM ordersync_replicas WHERE replica = $1";
pub(super) const LEASE_ENSURE: &str = "INSERT INTO ordersync_leases (account) VALUES ($1) ON CONFLICT DO NOTHING";
/// Every account's lease: owner, epoch, and whether it is still held (by the database's clock).
pub(super) const LEASE_LIST: &str = "SELECT account, owner, epoch, COALESCE(expires_at > now(), FALSE) \
     FROM ordersync_leases ORDER BY account";
/// Take an account nobody holds; gives the new epoch.
pub(super) const LEASE_ACQUIRE: &str = "UPDATE ordersync_leases SET owner = $2, epoch = epoch + 1, \
     expires_at = now() + make_interval(secs => $3) \
     WHERE account = $1 AND (owner IS NULL OR expires_at IS NULL OR expires_at <= now()) RETURNING epoch";
/// Extend a lease still held at this epoch.
pub(super) const LEASE_RENEW: &str = "UPDATE ordersync_leases SET expires_at = now() + make_interval(secs => $4) \
     WHERE account = $1 AND owner = $2 AND epoch = $3 AND expires_at > now() RETURNING epoch";
pub(super) const LEASE_RELEASE: &str = "UPDATE ordersync_leases SET owner = NULL, expires_at = NULL \
     WHERE account = $1 AND owner = $2 AND epoch = $3";
/// The fence, in every write transaction: this replica still holds the account at this epoch. `FOR SHARE`
/// makes a successor's takeover wait for the transaction to end.
pub(super) const LEASE_FENCE: &str = "SELECT epoch FROM ordersync_leases \
     WHERE account = $1 AND owner = $2 AND epoch = $3 AND expires_at > now() FOR SHARE";

pub(super) const UPSERT_CONFLICT: &str = "INSERT INTO ordersync_conflicts (order_id, bot_id, product_id, row_status, \
     exchange_status, filled_size, found_at, kind, exchange_product_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (order_id) DO UPDATE SET row_status = excluded.row_status, \
     exchange_status = excluded.exchange_status, filled_size = excluded.filled_size, found_at = excluded.found_at, \
     kind = excluded.kind, exchange_product_id = excluded.exchange_product_id";

pub(super) const DELETE_CONFLICT: &str = "DELETE FROM ordersync_conflicts WHERE order_id = $1";

/// Retention, a slice at a time (short transactions on SQLite): check state of orders settled before `$1`
/// or whose last check found them done (corrected, changed by the bot, settled by it) before `$1`...
pub(super) const PRUNE_CHECKS: &str = "DELETE FROM ordersync_order_checks WHERE order_id IN (\
     SELECT order_id FROM ordersync_order_checks WHERE (last_checked_at < $1 \
     AND last_verdict IN ('corrected', 'row_changed', 'settled_by_bot')) \
     OR order_id IN (SELECT order_id FROM ordersync_settlements WHERE settled_at < $1) LIMIT $2)";
/// ... then the settlements themselves (the figures of `report` and the per-day counts) ...
pub(super) const PRUNE_SETTLEMENTS: &str = "DELETE FROM ordersync_settlements WHERE order_id IN (\
     SELECT order_id FROM ordersync_settlements WHERE settled_at < $1 LIMIT $2)";
/// ... and, only when asked, the audit events.
pub(super) const PRUNE_EVENTS: &str = "DELETE FROM ordersync_events WHERE id IN (\
     SELECT id FROM ordersync_events WHERE detected_at < $1 LIMIT $2)";

/// Orders whose backoff has them wait past `$1`.
pub(super) const SELECT_DEFERRED: &str =
    "SELECT order_id, flagged FROM ordersync_order_checks WHERE next_check_at > $1";

/// `$1, $2, … $count`.
fn placeholders(count: usize) -> String {
    (1..=count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

pub(super) fn select_checks(count: usize) -> String {
    let placeholders = placeholders(count);
    format!(
        "SELECT order_id, checks, unresolved_in_a_row, last_exchange_status, last_verdict, last_error, flagged, \
         last_checked_at, ended_seen_at, ended_seen_source, next_check_at, not_found_at FROM ordersync_order_checks \
         WHERE order_id IN ({placeholders})"
    )
}

/// Which events `select_events` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventFilter {
    All,
    /// `$1`: one order's.
    Order,
    /// `$1`: those the not-found policy wrote since then.
    WrittenOffSince,
}

pub(super) fn select_events(which: EventFilter) -> String {
    let filter = match which {
        EventFilter::All => "",
        EventFilter::Order => "WHERE order_id = $1 ",
        EventFilter::WrittenOffSince => "WHERE reason = 'not_found' AND detected_at >= $1 ",
    };
    format!(
        "SELECT order_id, bot_id, product_id, from_status, to_status, exchange_status, exchange_fill_time, \
         fill_price, fill_size, detected_at, applied_at, source, outcome, latency_seconds, note, ended_at, \
         end_source, reason, account FROM ordersync_events {filter}ORDER BY id"
    )
}

/// A column of the bot's table as the catalogue describes it. `pg` is PostgreSQL's type (SQLite has none
/// that matters: it compares and stores what it is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub pg: Option<PgType>,
}

/// A PostgreSQL column type: `information_schema.columns.data_type`, the underlying type's schema and name,
/// and an enum's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    pub data_type: String,
    pub udt_schema: String,
    pub udt_name: String,
    pub enum_labels: Vec<String>,
}

/// What a mapped column holds, for the type its parameters are cast to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    OrderId,
    Status,
    Time,
    Figure,
}

/// How ordersync compares with and writes a column: the SQL type a text parameter is cast to on
/// PostgreSQL (`None` on SQLite, which takes text as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cast {
    to: Option<String>,
    /// A `uuid` column: only UUIDs can be looked up in it.
    uuid: bool,
    /// A time kept as text: compared as text in the form ordersync writes.
    text_time: bool,
}

impl Cast {
    const SQLITE: Cast = Cast { to: None, uuid: false, text_time: false };

    /// The type a column of `pg` type takes for `role`, or what is wrong with it.
    fn of(pg: &PgType, role: Role) -> Result<Cast, String> {
        let text = matches!(pg.data_type.as_str(), "text" | "character varying" | "character");
        let cast = |to: &str| Cast { to: Some(to.to_string()), uuid: false, text_time: false };
        match (role, pg.data_type.as_str()) {
            (Role::OrderId, "uuid") => Ok(Cast { uuid: true, ..cast("UUID") }),
            (Role::OrderId, _) if text => Ok(cast("TEXT")),
            (Role::OrderId, other) => {
                Err(format!("a column of type {other} cannot hold Coinbase order ids (use text, varchar or uuid)"))
            }
            (Role::Status, _) if text => Ok(cast("TEXT")),
            (Role::Status, "USER-DEFINED") if !pg.enum_labels.is_empty() => {
                Ok(cast(&format!("{}.{}", quote(&pg.udt_schema), quote(&pg.udt_name))))
            }
            (Role::Status, other) => Err(format!(
                "a column of type {other} ({}) cannot hold status words (use text, varchar or an enum)",
                pg.udt_name
            )),
            // A text parameter with an explicit UTC offset, cast to timestamptz, is stored right in a
            // `timestamp` column too (the session's time zone is UTC).
            (Role::Time, "timestamp with time zone" | "timestamp without time zone") => Ok(cast("TIMESTAMPTZ")),
            (Role::Time, _) if text => Ok(Cast { text_time: true, ..cast("TEXT") }),
            (Role::Time, other) => {
                Err(format!("a column of type {other} cannot hold a time of day (use timestamptz, timestamp or text)"))
            }
            (Role::Figure, "numeric") => Ok(cast("NUMERIC")),
            (Role::Figure, "double precision" | "real") => Ok(cast("DOUBLE PRECISION")),
            (Role::Figure, _) if text => Ok(cast("TEXT")),
            (Role::Figure, other) => Err(format!(
                "a column of type {other} cannot hold a price or size (use numeric, double precision or text)"
            )),
        }
    }

    /// `$n` as the column compares and stores it.
    fn param(&self, n: usize) -> String {
        match &self.to {
            Some(to) => format!("CAST(${n} AS {to})"),
            None => format!("${n}"),
        }
    }

    /// A text expression (a column of ordersync's own tables) as this column compares it.
    fn cast_text(&self, expr: &str) -> String {
        match &self.to {
            Some(to) => format!("CAST({expr} AS {to})"),
            None => expr.to_string(),
        }
    }
}

/// How a SQLite table keeps `created_at`, read off a row at start, so a cut-off compares in the same form
/// (and through the bot's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedForm {
    /// `2025-01-02 03:04:05` (what `datetime('now')` writes; also PostgreSQL text columns).
    Text,
    /// `2025-01-02T03:04:05…`
    IsoText,
    UnixSeconds,
    UnixMillis,
    JulianDay,
}

impl CreatedForm {
    /// The form of one stored value (`typeof` and its text).
    pub fn of(sqlite_type: &str, text: &str) -> CreatedForm {
        match (sqlite_type, text.parse::<f64>()) {
            ("integer" | "real", Ok(n)) if n < 1e7 => CreatedForm::JulianDay,
            ("integer" | "real", Ok(n)) if n >= 1e11 => CreatedForm::UnixMillis,
            ("integer" | "real", Ok(_)) => CreatedForm::UnixSeconds,
            _ if text.contains('T') => CreatedForm::IsoText,
            _ => CreatedForm::Text,
        }
    }

    /// `at` in this form.
    pub fn format(&self, at: chrono::DateTime<chrono::Utc>) -> String {
        match self {
            CreatedForm::Text => sqlite_timestamp(at),
            CreatedForm::IsoText => at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
            CreatedForm::UnixSeconds => at.timestamp().to_string(),
            CreatedForm::UnixMillis => at.timestamp_millis().to_string(),
            CreatedForm::JulianDay => format!("{:.8}", at.timestamp_millis() as f64 / 86_400_000.0 + 2_440_587.5),
        }
    }
}

/// A catalogue name as a quoted SQL identifier (names from the catalogue, never from input).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The mapping after checking it against the real table: optional columns the table lacks are dropped, and
/// each mapped column is compared and written through its own type.
#[derive(Debug, Clone)]
pub struct BoundSchema {
    config: TradesSchema,
    backend: Backend,
    bot_id: Option<SqlIdent>,
    product_id: Option<SqlIdent>,
    account: Option<SqlIdent>,
    filled_price: Option<(SqlIdent, Cast)>,
    filled_size: Option<(SqlIdent, Cast)>,
    order_id: Cast,
    status: Cast,
    created_at: Cast,
    filled_at: Cast,
    /// The row columns, qualified by `t.`.
    columns: String,
    /// How `created_at` is kept, where it is kept as text or numbers (SQLite, PostgreSQL text).
    created_form: CreatedForm,
}

/// One correction of the bot's row, as `update_many` writes it: the order, its terminal word, its figures.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowUpdate<'a> {
    pub order_id: &'a str,
    /// The bot's word for the terminal status.
    pub to: &'a str,
    pub fill: &'a Fill,
}

impl BoundSchema {
    /// Check the mapping against the table's columns (`None`: the table does not exist). Every problem is
    /// reported at once.
    pub(super) fn bind(
        config: &TradesSchema,
        backend: Backend,
        columns: Option<&[Column]>,
        url: &str,
    ) -> Result<BoundSchema, StoreError> {
        let table = config.table.as_str().to_string();
        let columns = columns.ok_or_else(|| StoreError::MissingTable { table: table.clone(), url: url.to_string() })?;
        // SQLite compares column names without case; PostgreSQL's quoted names are exact.
        let find = |name: &SqlIdent| {
            columns.iter().find(|column| match backend {
                Backend::Sqlite => column.name.eq_ignore_ascii_case(name.as_str()),
                Backend::Postgres => column.name == name.as_str(),
            })
        };
        let mut problems = Vec::new();
        let typed = |ident: &SqlIdent, key: &str, what: &str, role: Role, problems: &mut Vec<String>| match find(ident)
        {
            None => {
                problems.push(format!(
                    "no column {ident}: set trades.{key} to the column that holds {what} (a role that may not \
                     read a column does not see it)"
                ));
                None
            }
            Some(Column { pg: None, .. }) => Some(Cast::SQLITE),
            Some(Column { pg: Some(pg), .. }) => match Cast::of(pg, role) {
                Ok(cast) => Some(cast),
                Err(why) => {
                    problems.push(format!("column {ident} (trades.{key}): {why}"));
                    None
                }
            },
        };
        let order_id = typed(&config.order_id, "order_id", "the exchange order id", Role::OrderId, &mut problems);
        let status = typed(&config.status, "status", "the order status word", Role::Status, &mut problems);
        let created_at =
            typed(&config.created_at, "created_at", "when the bot placed the order", Role::Time, &mut problems);
        let filled_at = typed(&config.filled_at, "filled_at", "when the order filled", Role::Time, &mut problems);
        let mut optional = |column: &Option<OptionalColumn>, key: &str, what: &str, role: Option<Role>| match column {
            None => None,
            Some(column) if find(&column.name).is_some() => match role {
                None => Some((column.name.clone(), Cast::SQLITE)),
                Some(role) => typed(&column.name, key, what, role, &mut problems).map(|c| (column.name.clone(), c)),
            },
            Some(column) if column.explicit => {
                problems.push(format!("no column {}: set trades.{key} to the column that holds {what}", column.name));
                None
            }
            Some(_) => None,
        };
        let bot_id = optional(&config.bot_id, "bot_id", "the bot's name (or set it to \"\")", None).map(|c| c.0);
        let product_id =
            optional(&config.product_id, "product_id", "the product, e.g. AVNT-USD (or set it to \"\")", None)
                .map(|c| c.0);
        let account = optional(&config.account, "account", "each row's Coinbase account name (or leave it out)", None)
            .map(|c| c.0);
        let filled_price = optional(
            &config.filled_price,
            "filled_price",
            "the average fill price (or set it to \"\")",
            Some(Role::Figure),
        );
        let filled_size =
            optional(&config.filled_size, "filled_size", "the filled size (or set it to \"\")", Some(Role::Figure));
        if let Some(Column { pg: Some(pg), .. }) = find(&config.status) {
            let words = &config.words;
            let unknown: Vec<&str> =
                [&words.pending, &words.completed, &words.cancelled, &words.expired, &words.failed]
                    .into_iter()
                    .map(String::as_str)
                    .filter(|word| !pg.enum_labels.is_empty() && !pg.enum_labels.iter().any(|label| label == word))
                    .collect();
            if !unknown.is_empty() {
                problems.push(format!(
                    "status words {unknown:?} are not labels of the enum {} (its labels: {}): set \
                     [trades.status_words] to the bot's words",
                    pg.udt_name,
                    pg.enum_labels.join(", ")
                ));
            }
        }
        let (Some(order_id), Some(status), Some(created_at), Some(filled_at), true) =
            (order_id, status, created_at, filled_at, problems.is_empty())
        else {
            return Err(StoreError::Schema { table, problems });
        };
        let config = config.clone();
        let text = |column: &Option<SqlIdent>| match column {
            Some(name) => format!("CAST(t.{} AS TEXT)", name.quoted()),
            None => "CAST(NULL AS TEXT)".to_string(),
        };
        let columns = format!(
            "CAST(t.{} AS TEXT), CAST(t.{} AS TEXT), CAST(t.{} AS TEXT), {}, {}, {}",
            config.order_id.quoted(),
            config.status.quoted(),
            config.created_at.quoted(),
            text(&bot_id),
            text(&product_id),
            text(&account),
        );
        Ok(BoundSchema {
            config,
            backend,
            bot_id,
            product_id,
            account,
            filled_price,
            filled_size,
            order_id,
            status,
            created_at,
            filled_at,
            columns,
            created_form: CreatedForm::Text,
        })
    }

    /// Compare `created_at` in the form the table keeps it.
    pub(super) fn set_created_form(&mut self, form: CreatedForm) {
        self.created_form = form;
    }

    /// Whether `created_at` is kept as text or numbers (SQLite, or a PostgreSQL text column).
    pub(super) fn created_is_untyped(&self) -> bool {
        self.backend == Backend::Sqlite || self.created_at.text_time
    }

    /// The bot ids of the table (at most `$1`), when it has a bot column.
    pub(super) fn select_bots(&self) -> Option<String> {
        self.bot_id.as_ref().map(|bot| {
            format!("SELECT DISTINCT CAST(t.{} AS TEXT) FROM {} t LIMIT $1", bot.quoted(), self.config.table.quoted())
        })
    }

    /// A sample `created_at` value with its SQLite type, to learn its form.
    pub(super) fn select_created_sample(&self) -> String {
        let created_at = self.config.created_at.quoted();
        let kind = match self.backend {
            Backend::Sqlite => format!("typeof(t.{created_at})"),
            Backend::Postgres => "'text'".to_string(),
        };
        format!(
            "SELECT {kind}, CAST(t.{created_at} AS TEXT) FROM {} t WHERE t.{created_at} IS NOT NULL LIMIT 1",
            self.config.table.quoted()
        )
    }

    pub fn table(&self) -> &str {
        self.config.table.as_str()
    }

    /// `(schema, table)` of a possibly qualified table name.
    pub(super) fn table_parts(config: &TradesSchema) -> (Option<&str>, &str) {
        match config.table.as_str().split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, config.table.as_str()),
        }
    }

    pub fn words(&self) -> &StatusWords {
        &self.config.words
    }

    /// Which optional columns are in use, for the start-up log.
    pub fn optional_columns(&self) -> Vec<&str> {
        let figures = [&self.filled_price, &self.filled_size].map(|column| column.as_ref().map(|(name, _)| name));
        [self.bot_id.as_ref(), self.product_id.as_ref(), self.account.as_ref()]
            .into_iter()
            .chain(figures)
            .flatten()
            .map(SqlIdent::as_str)
            .collect()
    }

    /// Whether `id` can be an order id of this table (a `uuid` column holds only UUIDs): others are
    /// not looked up, they are simply not there.
    pub(super) fn can_hold(&self, id: &str) -> bool {
        !self.order_id.uuid || uuid::Uuid::parse_str(id).is_ok()
    }

    fn select_rows(&self) -> String {
        format!("SELECT {} FROM {} t", self.columns, self.config.table.quoted())
    }

    /// Rows whose status is `$1`.
    pub(super) fn select_by_status(&self) -> String {
        format!("{} WHERE t.{} = {}", self.select_rows(), self.config.status.quoted(), self.status.param(1))
    }

    /// The row of order `$1`.
    pub(super) fn select_by_id(&self) -> String {
        format!("{} WHERE t.{} = {}", self.select_rows(), self.config.order_id.quoted(), self.order_id.param(1))
    }

    /// The status of order `$1`, as text.
    pub(super) fn select_status_by_id(&self) -> String {
        format!(
            "SELECT CAST(t.{} AS TEXT) FROM {} t WHERE t.{} = {}",
            self.config.status.quoted(),
            self.config.table.quoted(),
            self.config.order_id.quoted(),
            self.order_id.param(1)
        )
    }

    /// The rows of `count` order ids (`$1…$count`), whatever their status.
    pub(super) fn select_by_ids(&self, count: usize) -> String {
        let ids: Vec<String> = (1..=count).map(|n| self.order_id.param(n)).collect();
        format!("{} WHERE t.{} IN ({})", self.select_rows(), self.config.order_id.quoted(), ids.join(", "))
    }

    /// Terminal rows created since `$1` that are not settled yet, or whose conflict was recorded at another
    /// status (the bot changed the row since: checked again), oldest first, at most `$6`; `$2…$5` are the
    /// terminal words. A row the exchange gave no settling answer
    /// for is left out until `$8` (its last check is older), and for good after `$7` such checks in a row.
    pub(super) fn select_terminal_candidates(&self) -> String {
        let (order_id, status, created_at) =
            (self.config.order_id.quoted(), self.config.status.quoted(), self.config.created_at.quoted());
        let words: Vec<String> = (2..=5).map(|n| self.status.param(n)).collect();
        format!(
            "{from} WHERE t.{status} IN ({words}) AND t.{created_at} >= {since} \
             AND ((NOT EXISTS (SELECT 1 FROM ordersync_settlements s WHERE s.order_id = CAST(t.{order_id} AS TEXT)) \
             AND NOT EXISTS (SELECT 1 FROM ordersync_conflicts c WHERE c.order_id = CAST(t.{order_id} AS TEXT))) \
             OR EXISTS (SELECT 1 FROM ordersync_conflicts c WHERE c.order_id = CAST(t.{order_id} AS TEXT) \
             AND c.row_status <> CAST(t.{status} AS TEXT))) \
             AND NOT EXISTS (SELECT 1 FROM ordersync_order_checks k WHERE k.order_id = CAST(t.{order_id} AS TEXT) \
             AND k.unresolved_in_a_row > 0 AND (k.unresolved_in_a_row >= $7 OR k.last_checked_at > $8)) \
             ORDER BY t.{created_at} LIMIT $6",
            from = self.select_rows(),
            words = words.join(", "),
            since = self.created_at.param(1),
        )
    }

    /// As `select_terminal_candidates` on a database without ordersync's tables (a read-only audit): every
    /// terminal row created since `$1`, oldest first, at most `$6`.
    pub(super) fn select_terminal_rows(&self) -> String {
        let (status, created_at) = (self.config.status.quoted(), self.config.created_at.quoted());
        let words: Vec<String> = (2..=5).map(|n| self.status.param(n)).collect();
        format!(
            "{from} WHERE t.{status} IN ({words}) AND t.{created_at} >= {since} ORDER BY t.{created_at} LIMIT $6",
            from = self.select_rows(),
            words = words.join(", "),
            since = self.created_at.param(1),
        )
    }

    /// Recorded conflicts whose row still holds the status they were found with (looked up by the row's
    /// own key, so the bot's index serves it).
    pub(super) fn select_conflicts(&self) -> String {
        format!(
            "SELECT c.order_id, c.bot_id, c.product_id, c.row_status, c.exchange_status, c.filled_size, c.found_at, \
             c.kind, c.exchange_product_id \
             FROM ordersync_conflicts c JOIN {table} t ON t.{order_id} = {key} \
             AND CAST(t.{status} AS TEXT) = c.row_status ORDER BY c.found_at, c.order_id",
            table = self.config.table.quoted(),
            order_id = self.config.order_id.quoted(),
            key = self.order_id.cast_text("c.order_id"),
            status = self.config.status.quoted(),
        )
    }

    /// A time as this table's `created_at` compares it: in the form it is kept in (text or a number) where
    /// it is untyped, RFC 3339 for a PostgreSQL timestamp.
    pub(super) fn since_text(&self, at: chrono::DateTime<chrono::Utc>) -> String {
        if self.created_is_untyped() {
            self.created_form.format(at)
        } else {
            at.to_rfc3339()
        }
    }

    /// The conditional update of several corrections in one statement: each row whose order id is listed
    /// and that still holds the pending word gets its terminal word and the figures the exchange gave (a
    /// figure it did not give, `None`, leaves the column as it is). The corrections come as a VALUES list
    /// joined to the table by order id, so the statement costs the same per row however many there are (a
    /// `CASE` per column made SQLite compare every id with every other, to prepare and to run). Binds, in
    /// order, the returned values (text or NULL, cast in the SQL), then the pending word; returns the ids of
    /// the rows it changed.
    pub(super) fn update_many(&self, rows: &[RowUpdate<'_>]) -> (String, Vec<Option<String>>) {
        let mut values: Vec<Option<String>> = Vec::new();
        let mut param = |value: Option<String>| {
            values.push(value);
            values.len()
        };
        let figures: Vec<&(SqlIdent, Cast)> = [&self.filled_price, &self.filled_size].into_iter().flatten().collect();
        let mut groups = Vec::with_capacity(rows.len());
        for RowUpdate { order_id, to, fill } in rows {
            let time = fill.time.map(|at| {
                if self.backend == Backend::Sqlite || self.filled_at.text_time {
                    sqlite_timestamp(at)
                } else {
                    at.to_rfc3339()
                }
            });
            let mut group = vec![
                self.order_id.param(param(Some(order_id.to_string()))),
                self.status.param(param(Some(to.to_string()))),
                self.filled_at.param(param(time)),
            ];
            for (which, (_, cast)) in figures.iter().enumerate() {
                let value = if which == 0 && self.filled_price.is_some() { fill.price } else { fill.size };
                group.push(cast.param(param(value.map(|v| v.to_string()))));
            }
            groups.push(format!("({})", group.join(", ")));
        }
        let keep = |column: &SqlIdent, k: usize| format!("{c} = COALESCE(v.column{k}, t.{c})", c = column.quoted());
        let mut sets = vec![format!("{} = v.column2", self.config.status.quoted()), keep(&self.config.filled_at, 3)];
        for (offset, (column, _)) in figures.iter().enumerate() {
            sets.push(keep(column, 4 + offset));
        }
        let pending = self.status.param(values.len() + 1);
        // SQLite's planner, without statistics (ordersync never runs ANALYZE on the bot's database), would
        // search the bot's index on the status and test every pending row against the list: `+` keeps the
        // status out of index choice, so the rows are found by their ids.
        let status = self.config.status.quoted();
        let status_test = match self.backend {
            Backend::Sqlite => format!("+t.{status}"),
            Backend::Postgres => format!("t.{status}"),
        };
        let id = self.config.order_id.quoted();
        // RETURNING names the column bare: SQLite does not know the table's alias there.
        let sql = format!(
            "UPDATE {} AS t SET {} FROM (VALUES {}) AS v WHERE t.{id} = v.column1 AND {status_test} = {pending} \
             RETURNING CAST({id} AS TEXT)",
            self.config.table.quoted(),
            sets.join(", "),
            groups.join(", "),
        );
        (sql, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_binds_parameters_in_order_by_position_and_anything_else_as_written() {
        let sql = |s: &str| positional(Backend::Sqlite, s.to_string());
        assert_eq!(sql("INSERT INTO t VALUES ($1, $2), ($3, $4)"), "INSERT INTO t VALUES (?, ?), (?, ?)");
        assert_eq!(
            sql("UPDATE t SET s = CASE id WHEN CAST($1 AS TEXT) THEN $2 END WHERE id IN ($3) AND +s = $4"),
            "UPDATE t SET s = CASE id WHEN CAST(? AS TEXT) THEN ? END WHERE id IN (?) AND +s = ?"
        );
        // Ten and more: the number is read whole.
        let many: Vec<String> = (1..=12).map(|n| format!("${n}")).collect();
        assert_eq!(sql(&many.join(",")), ["?"; 12].join(","));
        // Quoted text and identifiers are not parameters.
        assert_eq!(sql("SELECT '$1', \"$x\" FROM t WHERE a = $1"), "SELECT '$1', \"$x\" FROM t WHERE a = ?");
        // Out of order, repeated or skipped: binding by position would change the meaning, so left alone.
        for kept in ["a = $2 AND b = $1", "a = $1 OR b = $1", "a = $1 AND b = $3", "a = $ AND b = $1"] {
            assert_eq!(sql(kept), kept);
        }
        assert_eq!(positional(Backend::Postgres, "a = $1".into()), "a = $1");
    }
    use crate::decide::EndSource;
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;

    fn sqlite(columns: &[&str]) -> Vec<Column> {
        columns.iter().map(|name| Column { name: name.to_string(), pg: None }).collect()
    }

    fn pg_type(data_type: &str, udt_name: &str, labels: &[&str]) -> Option<PgType> {
        Some(PgType {
            data_type: data_type.into(),
            udt_schema: "public".into(),
            udt_name: udt_name.into(),
            enum_labels: labels.iter().map(|l| l.to_string()).collect(),
        })
    }

    /// A production table: uuid ids, an enum status, timestamptz and a plain timestamp, numeric and
    /// double precision figures.
    fn production() -> Vec<Column> {
        let words = ["pending", "completed", "cancelled", "expired", "failed"];
        [
            ("order_id", pg_type("uuid", "uuid", &[])),
            ("status", pg_type("USER-DEFINED", "trade_status", &words)),
            ("created_at", pg_type("timestamp with time zone", "timestamptz", &[])),
            ("filled_at", pg_type("timestamp without time zone", "timestamp", &[])),
            ("bot_id", pg_type("text", "text", &[])),
            ("product_id", pg_type("character varying", "varchar", &[])),
            ("filled_price", pg_type("numeric", "numeric", &[])),
            ("filled_size", pg_type("double precision", "float8", &[])),
        ]
        .into_iter()
        .map(|(name, pg)| Column { name: name.into(), pg })
        .collect()
    }

    fn bound(backend: Backend, columns: &[Column]) -> Result<BoundSchema, StoreError> {
        BoundSchema::bind(&TradesSchema::default(), backend, Some(columns), "sqlite://x.db")
    }

    const ALL: [&str; 8] =
        ["order_id", "status", "created_at", "filled_at", "bot_id", "product_id", "filled_price", "filled_size"];

    fn fill(at: chrono::DateTime<Utc>) -> Fill {
        Fill {
            time: Some(at),
            price: Some(Decimal::new(8373, 4)),
            size: Some(Decimal::from(100)),
            ended_at: at,
            end_source: EndSource::LastFillTime,
            missing: Vec::new(),
        }
    }

    #[test]
    fn the_update_casts_to_each_columns_own_type_and_only_touches_rows_still_pending() {
        let schema = bound(Backend::Postgres, &production()).unwrap();
        let at = Utc.with_ymd_and_hms(2025, 10, 1, 10, 0, 3).unwrap();
        let id = "d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10";
        let (sql, values) = schema.update_many(&[RowUpdate { order_id: id, to: "filled", fill: &fill(at) }]);
        assert_eq!(
            sql,
            "UPDATE \"trades\" AS t SET \"status\" = v.column2, \"filled_at\" = COALESCE(v.column3, t.\"filled_at\"), \
             \"filled_price\" = COALESCE(v.column4, t.\"filled_price\"), \"filled_size\" = COALESCE(v.column5, \
             t.\"filled_size\") FROM (VALUES (CAST($1 AS UUID), CAST($2 AS \"public\".\"trade_status\"), \
             CAST($3 AS TIMESTAMPTZ), CAST($4 AS NUMERIC), CAST($5 AS DOUBLE PRECISION))) AS v \
             WHERE t.\"order_id\" = v.column1 AND t.\"status\" = CAST($6 AS \"public\".\"trade_status\") \
             RETURNING CAST(\"order_id\" AS TEXT)"
        );
        let values: Vec<&str> = values.iter().map(|v| v.as_deref().unwrap()).collect();
        assert_eq!(values, vec![id, "filled", "2025-10-01T10:00:03+00:00", "0.8373", "100"]);
        assert!(schema.select_by_status().ends_with("WHERE t.\"status\" = CAST($1 AS \"public\".\"trade_status\")"));
        assert!(schema.select_by_ids(2).ends_with("IN (CAST($1 AS UUID), CAST($2 AS UUID))"));
        assert!(schema.select_conflicts().contains("t.\"order_id\" = CAST(c.order_id AS UUID)"), "the bot's index");
        assert!(!schema.can_hold("batch") && schema.can_hold("d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10"));
    }

    #[test]
    fn sqlite_takes_text_as_it_is() {
        let schema = bound(Backend::Sqlite, &sqlite(&ALL)).unwrap();
        let (sql, _) = schema.update_many(&[RowUpdate { order_id: "a", to: "completed", fill: &fill(Utc::now()) }]);
        assert!(!sql.contains("CAST($"), "{sql}");
        assert!(schema.can_hold("any-text-id"));
    }

    #[test]
    fn figures_the_exchange_did_not_give_are_left_alone() {
        let schema = bound(Backend::Sqlite, &sqlite(&ALL[..4])).unwrap();
        let bare = Fill { time: None, price: Some(Decimal::ONE), size: Some(Decimal::ONE), ..fill(Utc::now()) };
        let (sql, values) = schema.update_many(&[RowUpdate { order_id: "a", to: "cancelled", fill: &bare }]);
        assert_eq!(
            sql,
            "UPDATE \"trades\" AS t SET \"status\" = v.column2, \"filled_at\" = COALESCE(v.column3, t.\"filled_at\") \
             FROM (VALUES ($1, $2, $3)) AS v WHERE t.\"order_id\" = v.column1 AND +t.\"status\" = $4 \
             RETURNING CAST(\"order_id\" AS TEXT)"
        );
        assert_eq!(values, vec![Some("a".to_string()), Some("cancelled".to_string()), None]);
        // Several rows: each its own figures, a figure not given is NULL and keeps its column.
        let schema = bound(Backend::Sqlite, &sqlite(&ALL)).unwrap();
        let timed = fill(Utc.with_ymd_and_hms(2025, 10, 1, 10, 0, 3).unwrap());
        let bare = Fill { time: None, price: None, size: Some(Decimal::ONE), ..fill(Utc::now()) };
        let (sql, values) = schema.update_many(&[
            RowUpdate { order_id: "a", to: "completed", fill: &timed },
            RowUpdate { order_id: "b", to: "cancelled", fill: &bare },
        ]);
        assert!(sql.contains("FROM (VALUES ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)) AS v"), "{sql}");
        assert!(sql.ends_with("+t.\"status\" = $11 RETURNING CAST(\"order_id\" AS TEXT)"), "{sql}");
        let b: Vec<Option<&str>> = values[5..].iter().map(Option::as_deref).collect();
        assert_eq!(b, [Some("b"), Some("cancelled"), None, None, Some("1")]);
    }

    #[test]
    fn every_problem_with_the_table_is_named_at_once() {
        let missing = BoundSchema::bind(&TradesSchema::default(), Backend::Sqlite, None, "sqlite://x.db").unwrap_err();
        assert!(missing.to_string().starts_with("table trades does not exist"), "{missing}");
        let error = bound(Backend::Sqlite, &sqlite(&["order_id", "status"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the bot's table trades does not fit the [trades] mapping:\n  \
             - no column created_at: set trades.created_at to the column that holds when the bot placed the order \
             (a role that may not read a column does not see it)\n  \
             - no column filled_at: set trades.filled_at to the column that holds when the order filled (a role \
             that may not read a column does not see it)"
        );
        let mut odd = production();
        odd[0].pg = pg_type("integer", "int4", &[]);
        odd[1].pg = pg_type("USER-DEFINED", "trade_status", &["open", "done"]);
        odd[6].pg = pg_type("bytea", "bytea", &[]);
        let error = bound(Backend::Postgres, &odd).unwrap_err().to_string();
        assert!(
            error
                .contains("column order_id (trades.order_id): a column of type integer cannot hold Coinbase order ids"),
            "{error}"
        );
        assert!(error.contains("are not labels of the enum trade_status (its labels: open, done)"), "{error}");
        assert!(error.contains("\"pending\", \"completed\""), "{error}");
        assert!(error.contains("column filled_price (trades.filled_price): a column of type bytea"), "{error}");
    }

    #[test]
    fn default_optional_columns_the_table_lacks_are_not_used() {
        let schema =
            bound(Backend::Sqlite, &sqlite(&["ORDER_ID", "status", "created_at", "filled_at", "bot_id"])).unwrap();
        assert_eq!(schema.optional_columns(), vec!["bot_id"]);
        assert!(schema.select_by_status().contains("CAST(NULL AS TEXT)"));
    }

    #[test]
    fn an_explicit_optional_column_must_exist() {
        let config = TradesSchema {
            product_id: Some(OptionalColumn { name: SqlIdent::parse("symbol").unwrap(), explicit: true }),
            ..TradesSchema::default()
        };
        let error = BoundSchema::bind(&config, Backend::Postgres, Some(&production()), "postgres://x").unwrap_err();
        assert!(error.to_string().contains("no column symbol: set trades.product_id"), "{error}");
    }
}
