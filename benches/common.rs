//! Shared by the benchmarks: a SQLite bot database filled fast, and small statistics.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

/// The Coinbase-like order id (a UUID) of the `n`-th bench order placed with `prefix`.
pub fn order_id(prefix: &str, n: usize) -> String {
    format!("{:08x}-0000-4000-8000-{n:012x}", seed(prefix))
}

fn seed(prefix: &str) -> u32 {
    prefix.bytes().fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(u32::from(b)))
}

/// Create the incident's bot schema with `rows` rows, of which the newest `pending` are pending (created an
/// hour ago, ids `order_id("bench-", n)`) and the rest completed.
pub async fn fill_trades(path: &Path, rows: usize, pending: usize) -> sqlx::SqlitePool {
    let pool = ordersync::demo::create_bot_database(path).await.expect("create the bench database");
    let completed = rows.saturating_sub(pending);
    let sql = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1) \
               INSERT INTO trades (order_id, bot_id, product_id, size, status, created_at, filled_at) \
               SELECT printf('%08x-0000-4000-8000-%012x', $4, i), 'bot' || (i % 5), 'AVNT-USD', '10', $2, \
               datetime('now', '-1 hour'), $3 FROM n";
    if completed > 0 {
        sqlx::query(sql)
            .bind(completed as i64)
            .bind("completed")
            .bind("2025-01-01 00:00:00")
            .bind(i64::from(seed("done-")))
            .execute(&pool)
            .await
            .unwrap();
    }
    if pending > 0 {
        sqlx::query(sql)
            .bind(pending as i64)
            .bind("pending")
            .bind(None::<String>)
            .bind(i64::from(seed("bench-")))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool
}

/// Resident memory of a process, in MiB, from /proc/<pid>/status (0 when it cannot be read).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A fresh PostgreSQL database (on `DATABASE_URL`'s server, by default the local one) holding the bot's
/// table with `rows` rows, the newest `pending` of them pending as in `fill_trades`. Returns its URL, or
/// `None` when no server answers.
pub async fn pg_trades(rows: usize, pending: usize) -> Option<String> {
    use sqlx::Connection;
    let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut connection = sqlx::PgConnection::connect(&admin).await.ok()?;
    let name = format!("ordersync_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut connection).await.ok()?;
    let mut url = reqwest::Url::parse(&admin).ok()?;
    url.set_path(&name);
    let url = url.to_string();
    let pool = sqlx::PgPool::connect(&url).await.ok()?;
    sqlx::raw_sql(ordersync::demo::PG_BOT_SCHEMA).execute(&pool).await.unwrap();
    let sql = "INSERT INTO trades (order_id, bot_id, product_id, size, status, created_at, filled_at) \
               SELECT lpad(to_hex($4::bigint), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), \
               'bot' || (i % 5), 'AVNT-USD', '10', $2, (now() AT TIME ZONE 'utc') - interval '1 hour', \
               CAST($3 AS TIMESTAMP) FROM generate_series(0, $1::bigint - 1) AS i";
    let completed = rows.saturating_sub(pending);
    if completed > 0 {
        sqlx::query(sql)
            .bind(completed as i64)
            .bind("completed")
            .bind(Some("2025-01-01 00:00:00"))
            .bind(i64::from(seed("done-")))
            .execute(&pool)
            .await
            .unwrap();
    }
    if pending > 0 {
        sqlx::query(sql)
            .bind(pending as i64)
            .bind("pending")
            .bind(None::<String>)
            .bind(i64::from(seed("bench-")))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE trades").execute(&pool).await.unwrap();
    pool.close().await;
    Some(url)
}

/// Drop a database `pg_trades` made.
pub async fn drop_pg(url: &str) {
    use sqlx::Connection;
    let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut connection).await;
    }
}

/// Place `count` orders of 10 AVNT at 1 on the simulator (UUIDs, distinct per `prefix`), filled at once when
/// `filled`.
pub fn place_orders(sandbox: &ordersync::sandbox::Sandbox, prefix: &str, count: usize, filled: bool) -> Vec<String> {
    (0..count)
        .map(|n| {
            // Coinbase order ids are UUIDs; the prefix's bytes make them distinct per caller.
            let id = order_id(prefix, n);
            let new = ordersync::sandbox::NewOrder {
                order_id: Some(id.clone()),
                product_id: "AVNT-USD".into(),
                base_size: rust_decimal::Decimal::TEN,
                limit_price: rust_decimal::Decimal::ONE,
                ..ordersync::sandbox::NewOrder::default()
            };
            sandbox.create_order(new).expect("a fresh simulator takes every order");
            if filled {
                sandbox.fill(&id, None, None, None).expect("an open order can be filled");
            }
            id
        })
        .collect()
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}
