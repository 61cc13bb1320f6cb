//! Shared by the benchmarks: a SQLite bot database filled fast, and small statistics.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

/// Create the incident's bot schema with `rows` rows, of which the newest `pending` are pending (created an
/// hour ago) and the rest completed. Ids are `bench-<n>`.
pub async fn fill_trades(path: &Path, rows: usize, pending: usize) -> sqlx::SqlitePool {
    let pool = ordersync::demo::create_bot_database(path).await.expect("create the bench database");
    let completed = rows.saturating_sub(pending);
    let sql = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1) \
               INSERT INTO trades (order_id, bot_id, product_id, size, status, created_at, filled_at) \
               SELECT 'bench-' || i, 'bot' || (i % 5), 'AVNT-USD', '10', $2, datetime('now', '-1 hour'), $3 FROM n";
    if completed > 0 {
        sqlx::query(sql)
            .bind(completed as i64)
            .bind("completed")
            .bind("2025-01-01 00:00:00")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE trades SET order_id = 'done-' || id").execute(&pool).await.unwrap();
    }
    if pending > 0 {
        sqlx::query(sql).bind(pending as i64).bind("pending").bind(None::<String>).execute(&pool).await.unwrap();
    }
    pool
}

/// Place `count` orders of 10 AVNT at 1 on the simulator (UUIDs, distinct per `prefix`), filled at once when
/// `filled`.
pub fn place_orders(sandbox: &ordersync::sandbox::Sandbox, prefix: &str, count: usize, filled: bool) -> Vec<String> {
    (0..count)
        .map(|n| {
            // Coinbase order ids are UUIDs; the prefix's bytes make them distinct per caller.
            let seed = prefix.bytes().fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(u32::from(b)));
            let id = format!("{seed:08x}-0000-4000-8000-{n:012x}");
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
