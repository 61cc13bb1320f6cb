//! The SQL text ordersync runs, built once from the validated schema mapping. Only identifiers that passed
//! `SqlIdent` are spliced in; every value is a bind parameter (`$N`, which SQLite and PostgreSQL both read).

use crate::config::{OptionalColumn, SqlIdent, StatusWords, TradesSchema};
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
];

pub(super) const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS ordersync_migrations \
     (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)";
pub(super) const SELECT_MIGRATIONS: &str = "SELECT version FROM ordersync_migrations";
pub(super) const SELECT_FIRST_MIGRATION: &str = "SELECT applied_at FROM ordersync_migrations WHERE version = 1";
pub(super) const INSERT_MIGRATION: &str =
    "INSERT INTO ordersync_migrations (version, name, applied_at) VALUES ($1, $2, $3)";
/// Replicas starting together take turns migrating.
pub(super) const PG_MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7261736862)";

pub(super) const INSERT_EVENT: &str = "INSERT INTO ordersync_events (order_id, bot_id, product_id, from_status, \
     to_status, exchange_status, exchange_fill_time, fill_price, fill_size, detected_at, applied_at, source, outcome, \
     latency_seconds, note, ended_at, end_source) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

/// One settled order; a second settlement of the same order changes nothing (it is counted once).
pub(super) const INSERT_SETTLEMENT: &str = "INSERT INTO ordersync_settlements (order_id, bot_id, settled_by, \
     exchange_status, ended_at, end_source, settled_at, latency_seconds, late, backlog) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (order_id) DO NOTHING";

pub(super) const SELECT_SETTLEMENTS_SINCE: &str = "SELECT order_id, bot_id, settled_by, exchange_status, ended_at, \
     end_source, settled_at, latency_seconds, late, backlog FROM ordersync_settlements WHERE settled_at >= $1 \
     ORDER BY settled_at, order_id";

pub(super) const SELECT_KNOWN_BOTS: &str = "SELECT DISTINCT bot_id FROM ordersync_settlements";

pub(super) const UPSERT_CONFLICT: &str = "INSERT INTO ordersync_conflicts (order_id, bot_id, product_id, row_status, \
     exchange_status, filled_size, found_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (order_id) DO UPDATE SET row_status = excluded.row_status, \
     exchange_status = excluded.exchange_status, filled_size = excluded.filled_size, found_at = excluded.found_at";

pub(super) const DELETE_CONFLICT: &str = "DELETE FROM ordersync_conflicts WHERE order_id = $1";

/// `$6` says whether this check was unresolved: it extends or resets the run of unresolved checks. `$8` and
/// `$9`, when and how the order was seen ended, are kept only if it is the first sighting.
pub(super) const UPSERT_CHECK: &str = "INSERT INTO ordersync_order_checks (order_id, first_checked_at, \
     last_checked_at, checks, unresolved_in_a_row, last_exchange_status, last_verdict, last_error, flagged, \
     ended_seen_at, ended_seen_source) VALUES ($1, $2, $2, 1, CASE WHEN $6 THEN 1 ELSE 0 END, $3, $4, $5, $7, $8, $9) \
     ON CONFLICT (order_id) DO UPDATE SET last_checked_at = excluded.last_checked_at, \
     checks = ordersync_order_checks.checks + 1, \
     unresolved_in_a_row = CASE WHEN $6 THEN ordersync_order_checks.unresolved_in_a_row + 1 ELSE 0 END, \
     last_exchange_status = excluded.last_exchange_status, last_verdict = excluded.last_verdict, \
     last_error = excluded.last_error, flagged = excluded.flagged, \
     ended_seen_source = CASE WHEN ordersync_order_checks.ended_seen_at IS NULL THEN excluded.ended_seen_source \
     ELSE ordersync_order_checks.ended_seen_source END, \
     ended_seen_at = COALESCE(ordersync_order_checks.ended_seen_at, excluded.ended_seen_at)";

/// `$1, $2, … $count`.
fn placeholders(count: usize) -> String {
    (1..=count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

pub(super) fn select_checks(count: usize) -> String {
    let placeholders = placeholders(count);
    format!(
        "SELECT order_id, checks, unresolved_in_a_row, last_exchange_status, last_verdict, last_error, flagged, \
         last_checked_at, ended_seen_at, ended_seen_source FROM ordersync_order_checks WHERE order_id IN ({placeholders})"
    )
}

pub(super) fn select_events(one_order: bool) -> String {
    let filter = if one_order { "WHERE order_id = $1 " } else { "" };
    format!(
        "SELECT order_id, bot_id, product_id, from_status, to_status, exchange_status, exchange_fill_time, \
         fill_price, fill_size, detected_at, applied_at, source, outcome, latency_seconds, note, ended_at, \
         end_source FROM ordersync_events {filter}ORDER BY id"
    )
}

/// The mapping after checking it against the real table: optional columns the table lacks are dropped.
#[derive(Debug, Clone)]
pub struct BoundSchema {
    config: TradesSchema,
    backend: Backend,
    bot_id: Option<SqlIdent>,
    product_id: Option<SqlIdent>,
    filled_price: Option<SqlIdent>,
    filled_size: Option<SqlIdent>,
    select_by_status: String,
    select_by_id: String,
    select_status_by_id: String,
    /// `… FROM {table} t`, the row columns qualified by `t.` (for queries that join ordersync's tables).
    qualified_columns: String,
}

impl BoundSchema {
    /// Check the mapping against the table's columns (`None`: the table does not exist).
    pub(super) fn bind(
        config: &TradesSchema,
        backend: Backend,
        columns: Option<&[String]>,
        url: &str,
    ) -> Result<BoundSchema, StoreError> {
        let table = config.table.as_str().to_string();
        let columns = columns.ok_or_else(|| StoreError::MissingTable { table: table.clone(), url: url.to_string() })?;
        // SQLite compares column names without case; PostgreSQL's quoted names are exact.
        let has = |name: &SqlIdent| {
            columns.iter().any(|column| match backend {
                Backend::Sqlite => column.eq_ignore_ascii_case(name.as_str()),
                Backend::Postgres => column == name.as_str(),
            })
        };
        let required = [
            (&config.order_id, "order_id", "the exchange order id"),
            (&config.status, "status", "the order status word"),
            (&config.created_at, "created_at", "when the bot placed the order"),
            (&config.filled_at, "filled_at", "when the order filled"),
        ];
        for (column, key, what) in required {
            if !has(column) {
                return Err(StoreError::MissingColumn { table, column: column.to_string(), key, what });
            }
        }
        let optional = |column: &Option<OptionalColumn>, key: &'static str, what: &'static str| match column {
            None => Ok(None),
            Some(column) if has(&column.name) => Ok(Some(column.name.clone())),
            Some(column) if column.explicit => {
                Err(StoreError::MissingColumn { table: table.clone(), column: column.name.to_string(), key, what })
            }
            Some(_) => Ok(None),
        };
        let bot_id = optional(&config.bot_id, "bot_id", "the bot's name (or set it to \"\")")?;
        let product_id = optional(&config.product_id, "product_id", "the product, e.g. AVNT-USD (or set it to \"\")")?;
        let filled_price =
            optional(&config.filled_price, "filled_price", "the average fill price (or set it to \"\")")?;
        let filled_size = optional(&config.filled_size, "filled_size", "the filled size (or set it to \"\")")?;
        let config = config.clone();
        let columns_with = |prefix: &str| {
            let text = |column: &Option<SqlIdent>| match column {
                Some(name) => format!("CAST({prefix}{} AS TEXT)", name.quoted()),
                None => "CAST(NULL AS TEXT)".to_string(),
            };
            format!(
                "CAST({prefix}{} AS TEXT), CAST({prefix}{} AS TEXT), CAST({prefix}{} AS TEXT), {}, {}",
                config.order_id.quoted(),
                config.status.quoted(),
                config.created_at.quoted(),
                text(&bot_id),
                text(&product_id),
            )
        };
        let columns = columns_with("");
        let qualified_columns = columns_with("t.");
        let table = config.table.quoted();
        let select_by_status = format!("SELECT {columns} FROM {table} WHERE {} = $1", config.status.quoted());
        let select_by_id = format!("SELECT {columns} FROM {table} WHERE {} = $1", config.order_id.quoted());
        let select_status_by_id = format!(
            "SELECT CAST({} AS TEXT) FROM {table} WHERE {} = $1",
            config.status.quoted(),
            config.order_id.quoted()
        );
        Ok(BoundSchema {
            config,
            backend,
            bot_id,
            product_id,
            filled_price,
            filled_size,
            select_by_status,
            select_by_id,
            select_status_by_id,
            qualified_columns,
        })
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
        [&self.bot_id, &self.product_id, &self.filled_price, &self.filled_size]
            .into_iter()
            .flatten()
            .map(SqlIdent::as_str)
            .collect()
    }

    pub(super) fn select_by_status(&self) -> &str {
        &self.select_by_status
    }

    pub(super) fn select_by_id(&self) -> &str {
        &self.select_by_id
    }

    pub(super) fn select_status_by_id(&self) -> &str {
        &self.select_status_by_id
    }

    /// The rows of `count` order ids (`$1…$count`), whatever their status.
    pub(super) fn select_by_ids(&self, count: usize) -> String {
        format!(
            "SELECT {} FROM {} t WHERE CAST(t.{} AS TEXT) IN ({})",
            self.qualified_columns,
            self.config.table.quoted(),
            self.config.order_id.quoted(),
            placeholders(count)
        )
    }

    /// Terminal rows created since `$1` that are neither settled nor a known conflict at their present
    /// status, oldest first, at most `$6`; `$2…$5` are the terminal words. A row the bot changes after a
    /// conflict was recorded comes back, so it is checked again. A row the exchange gave no settling answer
    /// for is left out until `$8` (its last check is older), and for good after `$7` such checks in a row.
    pub(super) fn select_terminal_candidates(&self) -> String {
        let since = match self.backend {
            Backend::Sqlite => "$1",
            Backend::Postgres => "CAST($1 AS TIMESTAMPTZ)",
        };
        let (order_id, status, created_at) =
            (self.config.order_id.quoted(), self.config.status.quoted(), self.config.created_at.quoted());
        format!(
            "SELECT {columns} FROM {table} t WHERE t.{status} IN ($2, $3, $4, $5) AND t.{created_at} >= {since} \
             AND NOT EXISTS (SELECT 1 FROM ordersync_settlements s WHERE s.order_id = CAST(t.{order_id} AS TEXT)) \
             AND NOT EXISTS (SELECT 1 FROM ordersync_conflicts c WHERE c.order_id = CAST(t.{order_id} AS TEXT) \
             AND c.row_status = CAST(t.{status} AS TEXT)) \
             AND NOT EXISTS (SELECT 1 FROM ordersync_order_checks k WHERE k.order_id = CAST(t.{order_id} AS TEXT) \
             AND k.unresolved_in_a_row > 0 AND (k.unresolved_in_a_row >= $7 OR k.last_checked_at > $8)) \
             ORDER BY t.{created_at} LIMIT $6",
            columns = self.qualified_columns,
            table = self.config.table.quoted(),
        )
    }

    /// Recorded conflicts whose row still holds the status they were found with.
    pub(super) fn select_conflicts(&self) -> String {
        format!(
            "SELECT c.order_id, c.bot_id, c.product_id, c.row_status, c.exchange_status, c.filled_size, c.found_at \
             FROM ordersync_conflicts c JOIN {table} t ON CAST(t.{order_id} AS TEXT) = c.order_id \
             AND CAST(t.{status} AS TEXT) = c.row_status ORDER BY c.found_at, c.order_id",
            table = self.config.table.quoted(),
            order_id = self.config.order_id.quoted(),
            status = self.config.status.quoted(),
        )
    }

    /// The cut-off of `select_terminal_candidates` as the database compares it.
    pub(super) fn since_text(&self, at: chrono::DateTime<chrono::Utc>) -> String {
        match self.backend {
            Backend::Sqlite => sqlite_timestamp(at),
            Backend::Postgres => at.to_rfc3339(),
        }
    }

    /// The conditional update for a correction. Binds, in order: the new status word, then the returned
    /// values, then the order id and the pending word. Fill figures the exchange did not give, or the
    /// table has no column for, are left untouched.
    pub(super) fn update(&self, fill: &Fill) -> (String, Vec<String>) {
        let mut sets = vec![format!("{} = $1", self.config.status.quoted())];
        let mut values = Vec::new();
        let mut next = 2;
        // SQLite takes text and lets the column's affinity convert it; PostgreSQL needs the type spelt out.
        let param = |n: usize, pg_type: &str| match self.backend {
            Backend::Sqlite => format!("${n}"),
            Backend::Postgres => format!("CAST(${n} AS {pg_type})"),
        };
        if let Some(at) = fill.time {
            sets.push(format!("{} = {}", self.config.filled_at.quoted(), param(next, "TIMESTAMPTZ")));
            values.push(match self.backend {
                Backend::Sqlite => sqlite_timestamp(at),
                Backend::Postgres => at.to_rfc3339(),
            });
            next += 1;
        }
        for (column, value) in [(&self.filled_price, fill.price), (&self.filled_size, fill.size)] {
            if let (Some(column), Some(value)) = (column, value) {
                sets.push(format!("{} = {}", column.quoted(), param(next, "NUMERIC")));
                values.push(value.to_string());
                next += 1;
            }
        }
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = ${next} AND {} = ${}",
            self.config.table.quoted(),
            sets.join(", "),
            self.config.order_id.quoted(),
            self.config.status.quoted(),
            next + 1
        );
        (sql, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::EndSource;
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;

    fn bound(backend: Backend, columns: &[&str]) -> Result<BoundSchema, StoreError> {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        BoundSchema::bind(&TradesSchema::default(), backend, Some(&columns), "sqlite://x.db")
    }

    const ALL: [&str; 8] =
        ["order_id", "status", "created_at", "filled_at", "bot_id", "product_id", "filled_price", "filled_size"];

    #[test]
    fn the_update_only_touches_rows_still_pending() {
        let schema = bound(Backend::Postgres, &ALL).unwrap();
        let at = Utc.with_ymd_and_hms(2025, 10, 1, 10, 0, 3).unwrap();
        let fill = Fill {
            time: Some(at),
            price: Some(Decimal::new(8373, 4)),
            size: Some(Decimal::from(100)),
            ended_at: at,
            end_source: EndSource::LastFillTime,
            missing: Vec::new(),
        };
        let (sql, values) = schema.update(&fill);
        assert_eq!(
            sql,
            "UPDATE \"trades\" SET \"status\" = $1, \"filled_at\" = CAST($2 AS TIMESTAMPTZ), \
             \"filled_price\" = CAST($3 AS NUMERIC), \"filled_size\" = CAST($4 AS NUMERIC) \
             WHERE \"order_id\" = $5 AND \"status\" = $6"
        );
        assert_eq!(values, vec!["2025-10-01T10:00:03+00:00", "0.8373", "100"]);
    }

    #[test]
    fn figures_the_exchange_did_not_give_are_left_alone() {
        let schema = bound(Backend::Sqlite, &ALL[..4]).unwrap();
        let fill = Fill {
            time: None,
            price: Some(Decimal::ONE),
            size: Some(Decimal::ONE),
            ended_at: Utc::now(),
            end_source: EndSource::SeenPoll,
            missing: Vec::new(),
        };
        let (sql, values) = schema.update(&fill);
        assert_eq!(sql, "UPDATE \"trades\" SET \"status\" = $1 WHERE \"order_id\" = $2 AND \"status\" = $3");
        assert!(values.is_empty());
    }

    #[test]
    fn a_missing_table_or_required_column_is_named() {
        let missing = BoundSchema::bind(&TradesSchema::default(), Backend::Sqlite, None, "sqlite://x.db").unwrap_err();
        assert!(missing.to_string().starts_with("table trades does not exist"), "{missing}");
        let error = bound(Backend::Sqlite, &["order_id", "status", "filled_at"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "table trades has no column created_at: set trades.created_at in the config file to the column that \
             holds when the bot placed the order"
        );
    }

    #[test]
    fn default_optional_columns_the_table_lacks_are_not_used() {
        let schema = bound(Backend::Sqlite, &["ORDER_ID", "status", "created_at", "filled_at", "bot_id"]).unwrap();
        assert_eq!(schema.optional_columns(), vec!["bot_id"]);
        assert!(schema.select_by_status().contains("CAST(NULL AS TEXT)"));
    }

    #[test]
    fn an_explicit_optional_column_must_exist() {
        let config = TradesSchema {
            product_id: Some(OptionalColumn { name: SqlIdent::parse("symbol").unwrap(), explicit: true }),
            ..TradesSchema::default()
        };
        let columns: Vec<String> = ALL.iter().map(|c| c.to_string()).collect();
        let error = BoundSchema::bind(&config, Backend::Postgres, Some(&columns), "postgres://x").unwrap_err();
        assert!(error.to_string().contains("has no column symbol: set trades.product_id"), "{error}");
    }
}
