//! The SLA report on a database with a known history: the figures are exactly right.

use chrono::{Duration, Utc};
use ordersync::db::Store;
use ordersync::report;

use crate::both;
use crate::harness::{config, Backend, TestDb};

/// Two days of history: alpha 990 matched + 10 mismatched checks yesterday, 500 matched today; beta 99
/// matched + 1 mismatched today; 5 checks without a certain answer. Corrections with known latencies.
async fn known_history(db: &TestDb) -> Store {
    let config = config(db);
    let store = Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let (today, yesterday) =
        (now.format("%Y-%m-%d").to_string(), (now - Duration::days(1)).format("%Y-%m-%d").to_string());
    let day = |d: &str| match db.backend {
        Backend::Sqlite => format!("'{d}'"),
        Backend::Postgres => format!("DATE '{d}'"),
    };
    db.exec(&format!(
        "INSERT INTO ordersync_check_counts (day, bot, outcome, checks) VALUES \
         ({y}, 'alpha', 'match', 990), ({y}, 'alpha', 'mismatch', 10), ({t}, 'alpha', 'match', 500), \
         ({t}, 'beta', 'match', 99), ({t}, 'beta', 'mismatch', 1), ({t}, 'beta', 'unknown', 5), \
         ('2000-01-01', 'alpha', 'mismatch', 1000)",
        y = day(&yesterday),
        t = day(&today)
    ))
    .await;
    // Latencies 1..=10 s for alpha (yesterday), 100 s and 200 s for beta (today); one from long ago.
    let mut values = Vec::new();
    let stamp = |at: chrono::DateTime<Utc>| match db.backend {
        Backend::Sqlite => format!("'{}'", at.to_rfc3339()),
        Backend::Postgres => format!("'{}'::timestamptz", at.to_rfc3339()),
    };
    for (n, (bot, latency, at)) in (1..=10)
        .map(|s| ("alpha", s as f64, now - Duration::days(1)))
        .chain([
            ("beta", 100.0, now - Duration::minutes(5)),
            ("beta", 200.0, now - Duration::minutes(4)),
            ("alpha", 1.0, now - Duration::days(400)),
        ])
        .enumerate()
    {
        values.push(format!(
            "('order-{n}', '{bot}', 'AVNT-USD', 'pending', 'completed', 'FILLED', {at}, {at}, 'poll', 'applied', {latency})",
            at = stamp(at)
        ));
    }
    db.exec(&format!(
        "INSERT INTO ordersync_events (order_id, bot_id, product_id, from_status, to_status, exchange_status, \
         detected_at, applied_at, source, outcome, latency_seconds) VALUES {}",
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

    let counts = store.check_counts(&since.format("%Y-%m-%d").to_string()).await.unwrap();
    let events = store.applied_events_since(since).await.unwrap();
    let report = report::build(&counts, &events, since, until);

    let o = &report.overall;
    assert_eq!(
        (o.checks.matched, o.checks.mismatched, o.checks.unknown),
        (1589, 11, 5),
        "the year-2000 row is out of range"
    );
    assert_eq!(o.checks.accuracy, Some(1589.0 / 1600.0));
    assert_eq!(report.accuracy_met, Some(false), "99.3125% < 99.9%");
    assert_eq!(o.corrections, 12);
    assert_eq!(o.latency.count, 12);
    assert_eq!(o.latency.p50_seconds, Some(6.0), "nearest rank: the 6th of 12");
    assert_eq!(o.latency.p95_seconds, Some(200.0));
    assert_eq!(o.latency.within_30s, Some(10.0 / 12.0));
    assert_eq!(o.latency.within_2m, Some(11.0 / 12.0));
    assert_eq!(o.latency.mean_seconds, Some((55.0 + 300.0) / 12.0));
    assert_eq!(report.latency_goals_met, Some(false), "200 s is over 2 minutes");
    let alpha = &report.per_bot["alpha"];
    assert_eq!((alpha.checks.accuracy, alpha.corrections), (Some(1490.0 / 1500.0), 10));
    assert_eq!(alpha.latency.p99_seconds, Some(10.0));
    let beta = &report.per_bot["beta"];
    assert_eq!((beta.checks.accuracy, beta.checks.unknown, beta.latency.p50_seconds), (Some(0.99), 5, Some(100.0)));
    let today = until.format("%Y-%m-%d").to_string();
    assert_eq!(report.per_day[&today].checks.accuracy, Some(599.0 / 600.0));
    assert_eq!(report.per_day[&today].corrections, 2);
    assert_eq!(report.latency_bands.iter().map(|b| b.1).collect::<Vec<_>>(), vec![0, 4, 6, 1, 1, 0]);

    let html = report::html(&report);
    assert!(html.starts_with("<!DOCTYPE html>") && html.matches("<svg").count() == 2);
    assert!(!html.contains("src=") && !html.contains("<link"), "self-contained: nothing fetched");
    assert!(html.contains("99.312%"), "the accuracy figure is shown");
    let text = report::text(&report);
    assert!(text.contains("Accuracy:  99.312% against 99.900%: MISSED"), "{text}");
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
    assert_eq!(value["overall"]["checks"]["matched"], 1589);
    assert_eq!(value["overall"]["corrections"], 12);
    let written = std::process::Command::new(bin)
        .args(["report", "--since", "7d", "--format", "html", "--output"])
        .arg(&html)
        .env("ORDERSYNC_DATABASE_URL", &db.url)
        .status()
        .unwrap();
    assert!(written.success());
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
}
