//! The bots' database: their `trades` table (the demo's schema plus a count of the bot's own writes), a
//! trigger that logs every change to a row, the bots' writes, the database faults, and the reads the
//! checker needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ordersync::exchange::types::WireOrder;
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{ConnectOptions, PgPool, Row, SqlitePool};

use crate::check::{Change, Event};

const HISTORY: &str = "faultrun_history";

const SQLITE_EXTRA: &str = "
ALTER TABLE trades ADD COLUMN bot_writes INTEGER NOT NULL DEFAULT 0;
CREATE TABLE faultrun_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL, old_status TEXT, new_status TEXT,
    old_bot_writes INTEGER, new_bot_writes INTEGER, filled_at TEXT, filled_price TEXT, filled_size TEXT,
    at TEXT NOT NULL
);
CREATE TRIGGER faultrun_update AFTER UPDATE ON trades BEGIN
    INSERT INTO faultrun_history (order_id, old_status, new_status, old_bot_writes, new_bot_writes, filled_at,
                                  filled_price, filled_size, at)
    VALUES (new.order_id, old.status, new.status, old.bot_writes, new.bot_writes, new.filled_at,
            CAST(new.filled_price AS TEXT), CAST(new.filled_size AS TEXT), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER faultrun_delete AFTER DELETE ON trades BEGIN
    INSERT INTO faultrun_history (order_id, old_status, new_status, at)
    VALUES (old.order_id, old.status, NULL, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;";

const PG_EXTRA: &str = "
ALTER TABLE trades ADD COLUMN bot_writes INTEGER NOT NULL DEFAULT 0;
CREATE TABLE faultrun_history (
    seq BIGSERIAL PRIMARY KEY, order_id TEXT NOT NULL, old_status TEXT, new_status TEXT,
    old_bot_writes INTEGER, new_bot_writes INTEGER, filled_at TEXT, filled_price TEXT, filled_size TEXT,
    at TEXT NOT NULL DEFAULT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
);
CREATE FUNCTION faultrun_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO faultrun_history (order_id, old_status, new_status) VALUES (OLD.order_id, OLD.status, NULL);
        RETURN OLD;
    END IF;
    INSERT INTO faultrun_history (order_id, old_status, new_status, old_bot_writes, new_bot_writes, filled_at,
                                  filled_price, filled_size)
    VALUES (NEW.order_id, OLD.status, NEW.status, OLD.bot_writes, NEW.bot_writes, NEW.filled_at::text,
            NEW.filled_price::text, NEW.filled_size::text);
    RETURN NEW;
END $$;
CREATE TRIGGER faultrun_log AFTER UPDATE OR DELETE ON trades FOR EACH ROW EXECUTE FUNCTION faultrun_log();";

/// The bots' own name for their connections, so the PostgreSQL fault terminates only ordersync's.
const BOT_APPLICATION: &str = "ordersync-fault-run-bots";

/// What a bot writes to its row.
#[derive(Debug, Clone)]
pub struct BotWrite {
    pub status: String,
    pub filled_at: Option<DateTime<Utc>>,
    pub price: Option<Decimal>,
    pub size: Option<Decimal>,
}

impl BotWrite {
    /// The exchange's outcome as the bot last heard it.
    pub fn outcome(wire: &WireOrder) -> BotWrite {
        let decimal = |text: &Option<String>| text.as_deref().and_then(|t| Decimal::from_str(t).ok());
        let size = decimal(&wire.filled_size).filter(|s| !s.is_zero());
        BotWrite {
            status: crate::check::word(&wire.status).unwrap_or("pending").to_string(),
            filled_at: wire
                .last_fill_time
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc()),
            price: size.and(decimal(&wire.average_filled_price)),
            size,
        }
    }
}

#[derive(Clone)]
pub enum BotDb {
    /// `journal`: the rollback journal beside the file, open only inside a write transaction.
    Sqlite {
        pool: SqlitePool,
        url: String,
        journal: PathBuf,
    },
    Postgres {
        pool: PgPool,
        url: String,
        admin: String,
        name: String,
    },
}

/// `database is locked` / `busy` from SQLite; on PostgreSQL a lock waited on past the bots' `lock_timeout`
/// (SQLSTATE 55P03).
pub fn is_locked(error: &sqlx::Error) -> bool {
    if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("55P03") {
        return true;
    }
    let text = error.to_string();
    text.contains("database is locked") || text.contains("database is busy")
}

/// Every timestamp form both databases give, read the way ordersync reads the bot's timestamps.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    ordersync::order::parse_timestamp(text).ok()
}

impl BotDb {
    pub async fn create(kind: &str, dir: &Path, postgres: &str, seed: u64) -> anyhow::Result<BotDb> {
        if kind == "sqlite" {
            let path = dir.join("bot.db");
            // A bot's usual settings: the rollback journal (SQLite's default) and a 5 s busy timeout.
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new().max_connections(6).connect_with(options).await?;
            sqlx::raw_sql(ordersync::demo::BOT_SCHEMA).execute(&pool).await?;
            sqlx::raw_sql(SQLITE_EXTRA).execute(&pool).await?;
            let journal = dir.join("bot.db-journal");
            return Ok(BotDb::Sqlite { pool, url: format!("sqlite://{}", path.display()), journal });
        }
        let name = format!("fault_run_{seed}_{}", std::process::id());
        let admin = PgPool::connect(postgres).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        admin.close().await;
        // A bot's usual setting, as its 5 s busy timeout on SQLite: a lock waited on for 5 s fails the write.
        let options = PgConnectOptions::from_str(postgres)?
            .database(&name)
            .application_name(BOT_APPLICATION)
            .options([("lock_timeout", "5s")]);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::raw_sql(ordersync::demo::PG_BOT_SCHEMA).execute(&pool).await?;
        sqlx::raw_sql(PG_EXTRA).execute(&pool).await?;
        // ordersync's URL: the same database, without the bots' application name.
        let url = match url.split_once('?') {
            Some((base, _)) => base.to_string(),
            None => url,
        };
        Ok(BotDb::Postgres { pool, url, admin: postgres.to_string(), name })
    }

    pub fn url(&self) -> &str {
        match self {
            BotDb::Sqlite { url, .. } | BotDb::Postgres { url, .. } => url,
        }
    }

    pub fn redacted_url(&self) -> String {
        ordersync::db::redact_url(self.url())
    }

    pub async fn close(&self) {
        match self {
            BotDb::Sqlite { pool, .. } => pool.close().await,
            BotDb::Postgres { pool, .. } => pool.close().await,
        }
    }

    pub async fn drop_database(&self) {
        self.close().await;
        if let BotDb::Postgres { admin, name, .. } = self {
            if let Ok(admin) = PgPool::connect(admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
                admin.close().await;
            }
        }
    }

    pub async fn insert_pending(&self, id: &str, bot: &str, product: &str, size: Decimal) -> Result<(), sqlx::Error> {
        let size = size.to_string();
        match self {
            BotDb::Sqlite { pool, .. } => {
                sqlx::query(
                    "INSERT INTO trades (order_id, bot_id, product_id, size, status) VALUES (?, ?, ?, ?, 'pending')",
                )
                .bind(id)
                .bind(bot)
                .bind(product)
                .bind(size)
                .execute(pool)
                .await?;
            }
            BotDb::Postgres { pool, .. } => {
                sqlx::query("INSERT INTO trades (order_id, bot_id, product_id, size, status) VALUES ($1, $2, $3, $4, 'pending')")
                    .bind(id)
                    .bind(bot)
                    .bind(product)
                    .bind(size)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The bot's write, unconditional as bots write, counting itself in `bot_writes`.
    pub async fn bot_write(&self, id: &str, write: &BotWrite) -> Result<(), sqlx::Error> {
        let price = write.price.map(|p| p.to_string());
        let size = write.size.map(|s| s.to_string());
        match self {
            BotDb::Sqlite { pool, .. } => {
                let at = write.filled_at.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string());
                sqlx::query(
                    "UPDATE trades SET status = ?, filled_at = COALESCE(?, filled_at), filled_price = COALESCE(?, filled_price), \
                     filled_size = COALESCE(?, filled_size), bot_writes = bot_writes + 1 WHERE order_id = ?",
                )
                .bind(&write.status)
                .bind(at)
                .bind(price)
                .bind(size)
                .bind(id)
                .execute(pool)
                .await?;
            }
            BotDb::Postgres { pool, .. } => {
                let at = write.filled_at.map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string());
                sqlx::query(
                    "UPDATE trades SET status = $1, filled_at = COALESCE($2::timestamp, filled_at), \
                     filled_price = COALESCE($3::numeric, filled_price), filled_size = COALESCE($4::numeric, filled_size), \
                     bot_writes = bot_writes + 1 WHERE order_id = $5",
                )
                .bind(&write.status)
                .bind(at)
                .bind(price)
                .bind(size)
                .bind(id)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// The database fault: on SQLite a bot holds the write lock for `length`; on PostgreSQL every connection
    /// of ordersync's is terminated.
    pub async fn disturb(&self, length: Duration) {
        match self {
            BotDb::Sqlite { .. } => {
                self.hold_long(length).await;
            }
            BotDb::Postgres { pool, .. } => {
                let _ = sqlx::query(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> $1",
                )
                .bind(BOT_APPLICATION)
                .execute(pool)
                .await;
            }
        }
    }

    /// A bot holds the lock for `length` (the long database fault: longer than ordersync waits for one). On
    /// SQLite the write lock; on PostgreSQL the table in EXCLUSIVE mode (reads go on, every write waits).
    /// Gives when it was held, from and to.
    pub async fn hold_long(&self, length: Duration) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        match self {
            BotDb::Sqlite { pool, .. } => {
                let mut conn = pool.acquire().await.ok()?;
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.ok()?;
                let from = Utc::now();
                tokio::time::sleep(length).await;
                let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
                Some((from, Utc::now()))
            }
            BotDb::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.ok()?;
                sqlx::query("LOCK TABLE trades IN EXCLUSIVE MODE").execute(&mut *tx).await.ok()?;
                let from = Utc::now();
                tokio::time::sleep(length).await;
                let _ = tx.commit().await;
                Some((from, Utc::now()))
            }
        }
    }

    /// Whether ordersync (process `pid`) is inside a write transaction: on SQLite it holds the rollback
    /// journal open, on PostgreSQL one of its sessions has a transaction id and is writing the bot's rows, the
    /// checks or the events (not a lease's renewal). Asked
    /// with the process stopped, the answer still holds when it is killed.
    pub async fn mid_write(&self, pid: u32) -> bool {
        match self {
            BotDb::Sqlite { journal, .. } => {
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
                fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| &target == journal))
            }
            BotDb::Postgres { pool, .. } => sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name <> $1 AND backend_xid IS NOT NULL \
                 AND (query LIKE '%trades%' OR query LIKE '%ordersync_order_checks%' OR query LIKE '%ordersync_events%'))",
            )
            .bind(BOT_APPLICATION)
            .fetch_one(pool)
            .await
            .unwrap_or(false),
        }
    }

    /// Write `cancelled` to a row without counting a bot write (`--tamper`).
    pub async fn tamper(&self, id: &str) -> Result<(), sqlx::Error> {
        match self {
            BotDb::Sqlite { pool, .. } => {
                sqlx::query("UPDATE trades SET status = 'cancelled' WHERE order_id = ?").bind(id).execute(pool).await?;
            }
            BotDb::Postgres { pool, .. } => {
                sqlx::query("UPDATE trades SET status = 'cancelled' WHERE order_id = $1")
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn rows(&self) -> Result<HashMap<String, String>, sqlx::Error> {
        let sql = "SELECT order_id, status FROM trades";
        let rows: Vec<(String, String)> = match self {
            BotDb::Sqlite { pool, .. } => sqlx::query_as(sql).fetch_all(pool).await?,
            BotDb::Postgres { pool, .. } => sqlx::query_as(sql).fetch_all(pool).await?,
        };
        Ok(rows.into_iter().collect())
    }

    pub async fn changes(&self) -> Result<Vec<Change>, sqlx::Error> {
        let sql = format!(
            "SELECT order_id, old_status, new_status, old_bot_writes, new_bot_writes, filled_at, filled_price, \
             filled_size, at FROM {HISTORY} ORDER BY seq"
        );
        type Raw = (
            String,
            Option<String>,
            Option<String>,
            Option<i32>,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
        );
        let rows: Vec<Raw> = match self {
            BotDb::Sqlite { pool, .. } => sqlx::query_as(&sql).fetch_all(pool).await?,
            BotDb::Postgres { pool, .. } => sqlx::query_as(&sql).fetch_all(pool).await?,
        };
        let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<f64>().ok());
        Ok(rows
            .into_iter()
            .map(|(order_id, old, new, old_writes, new_writes, filled_at, price, size, at)| Change {
                order_id,
                old_status: old.unwrap_or_default(),
                new_status: new,
                by_bot: new_writes > old_writes,
                after_bot_write: old_writes.unwrap_or(0) > 0,
                filled_at: filled_at.as_deref().and_then(parse_time),
                filled_price: number(price),
                filled_size: number(size),
                at: parse_time(&at).unwrap_or_default(),
            })
            .collect())
    }

    pub async fn events(&self) -> anyhow::Result<Vec<Event>> {
        let (sql_lite, sql_pg) = (
            "SELECT order_id, outcome, to_status, source, applied_at FROM ordersync_events ORDER BY id",
            "SELECT order_id, outcome, to_status, source, applied_at::text FROM ordersync_events ORDER BY id",
        );
        type Raw = (String, String, Option<String>, String, Option<String>);
        let rows: Vec<Raw> = match self {
            BotDb::Sqlite { pool, .. } => sqlx::query(sql_lite)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                .collect::<Result<_, sqlx::Error>>()?,
            BotDb::Postgres { pool, .. } => sqlx::query_as(sql_pg).fetch_all(pool).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(order_id, outcome, to_status, source, applied_at)| Event {
                order_id,
                outcome,
                to_status,
                source,
                applied_at: applied_at.as_deref().and_then(parse_time),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_each_form_the_databases_give() {
        let expected = DateTime::parse_from_rfc3339("2026-12-04T13:00:00.123Z").unwrap().to_utc();
        for text in [
            "2026-12-04T13:00:00.123Z",
            "2026-12-04T13:00:00.123+00:00",
            "2026-12-04 13:00:00.123+00",
            "2026-12-04 13:00:00.123",
            "2026-12-04 13:00:00.123000",
        ] {
            assert_eq!(parse_time(text), Some(expected), "{text}");
        }
        assert_eq!(parse_time("yesterday"), None);
    }
}
