//! The SLA report on a database with a known history: the figures are exactly right.

use chrono::{Duration, Utc};
use ordersync::db::Store;
use ordersync::report;

use crate::both;
use crate::harness::{config, Backend, TestDb};

/// Two days of history, one row per ended order: alpha yesterday 90 settled by the bot and 10 corrected
/// (latencies 1..=10 s); beta today 8 by the bot and 2 corrected (100 s, and 200 s: late); one correction
/// from long ago, out of range.
async fn known_history(db: &TestDb) -> Store {
    let config = config(db);
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let stamp = |at: chrono::DateTime<Utc>| match db.backend {
        Backend::Sqlite => format!("'{}'", at.to_rfc3339()),
        Backend::Postgres => format!("'{}'::timestamptz", at.to_rfc3339()),
    };
    let yesterday = now - Duration::days(1);
    let mut rows: Vec<(&str, &str, Option<f64>, chrono::DateTime<Utc>)> = Vec::new();
    rows.extend((0..90).map(|_| ("alpha", "bot", None, yesterday)));
    rows.extend((1..=10).map(|s| ("alpha", "ordersync", Some(f64::from(s)), yesterday)));
    rows.extend((0..8).map(|_| ("beta", "bot", None, now - Duration::minutes(6))));
    rows.push(("beta", "ordersync", Some(100.0), now - Duration::minutes(5)));
    rows.push(("beta", "ordersync", Some(200.0), now - Duration::minutes(4)));
    rows.push(("alpha", "ordersync", Some(1.0), now - Duration::days(400)));
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(n, (bot, by, latency, at))| {
            let ended = latency.map_or(*at, |l| *at - Duration::milliseconds((l * 1000.0) as i64));
            format!(
                "('order-{n}', '{bot}', '{by}', 'FILLED', {ended}, 'last_fill_time', {at}, {latency}, {late})",
                ended = stamp(ended),
                at = stamp(*at),
                latency = latency.map_or("NULL".to_string(), |l| l.to_string()),
                late = if latency.is_some_and(|l| l > 120.0) { "TRUE" } else { "FALSE" },
            )
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO ordersync_settlements (order_id, bot_id, settled_by, exchange_status, ended_at, end_source, \
         settled_at, latency_seconds, late) VALUES {}",
        values.join(", ")
    ))
    .await;
    store
}

async fn the_report_figures_are_exactly_right(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let store = known_history(&db).await;
    let until = Utc::now();
    let since = until - Duration::days(30);

    let settlements = store.settlements_since(since).await.unwrap();
    let report = report::build(&settlements, since, until);

    let o = &report.overall;
    let a = &o.accuracy;
    assert_eq!((a.settled, a.by_bot, a.by_ordersync, a.late), (110, 98, 12, 1), "the old row is out of range");
    assert_eq!(a.bot_accuracy, Some(98.0 / 110.0));
    assert_eq!(a.effective_accuracy, Some(109.0 / 110.0));
    assert_eq!((report.bot_accuracy_met, report.effective_accuracy_met), (Some(false), Some(false)));
    assert_eq!(o.corrections_by_status["FILLED"], 12);
    assert_eq!(o.latency.count, 12);
    assert_eq!(o.latency.p50_seconds, Some(6.0), "nearest rank: the 6th of 12");
    assert_eq!(o.latency.p95_seconds, Some(200.0));
    assert_eq!(o.latency.within_30s, Some(10.0 / 12.0));
    assert_eq!(o.latency.within_2m, Some(11.0 / 12.0));
    assert_eq!(o.latency.mean_seconds, Some((55.0 + 300.0) / 12.0));
    assert_eq!(report.latency_goals_met, Some(false), "200 s is over 2 minutes");
    let alpha = &report.per_bot["alpha"];
    assert_eq!((alpha.accuracy.bot_accuracy, alpha.accuracy.by_ordersync), (Some(0.9), 10));
    assert_eq!((alpha.accuracy.effective_accuracy, alpha.latency.p99_seconds), (Some(1.0), Some(10.0)));
    let beta = &report.per_bot["beta"];
    assert_eq!((beta.accuracy.bot_accuracy, beta.accuracy.effective_accuracy), (Some(0.8), Some(0.9)));
    assert_eq!(beta.latency.p50_seconds, Some(100.0));
    let today = until.format("%Y-%m-%d").to_string();
    assert_eq!(report.per_day[&today].accuracy.settled, 10);
    assert_eq!(report.per_day[&today].accuracy.by_ordersync, 2);
    assert_eq!(report.latency_bands.iter().map(|b| b.1).collect::<Vec<_>>(), vec![0, 4, 6, 1, 1, 0]);

    let html = report::html(&report);
    assert!(html.starts_with("<!DOCTYPE html>") && html.matches("<svg").count() == 3);
    assert!(!html.contains("src=") && !html.contains("<link"), "self-contained: nothing fetched");
    assert!(html.contains("89.091%") && html.contains("99.091%"), "both accuracy figures are shown");
    let text = report::text(&report);
    assert!(text.contains("Bot accuracy:       89.091% against 99.900%: MISSED (98 of 110"), "{text}");
    assert!(text.contains("Effective accuracy: 99.091% against 99.900%: MISSED (109 of 110"), "{text}");
}
both!(the_report_figures_are_exactly_right);

#[tokio::test]
async fn the_report_command_writes_json_and_html() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    known_history(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("sla.html");
    let bin = env!("CARGO_BIN_EXE_ordersync");
    let json = std::process::Command::new(bin)
        .args(["report", "--since", "30d", "--format", "json"])
        .env("ORDERSYNC_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["overall"]["accuracy"]["settled"], 110);
    assert_eq!(value["overall"]["accuracy"]["by_ordersync"], 12);
    assert_eq!(value["overall"]["accuracy"]["late"], 1);
    let written = std::process::Command::new(bin)
        .args(["report", "--since", "7d", "--format", "html", "--output"])
        .arg(&html)
        .env("ORDERSYNC_DATABASE_URL", &db.url)
        .status()
        .unwrap();
    assert!(written.success());
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
}
