//! Real-time sync over the user channel: fills arrive without polling, and every way the socket can go
//! deaf (lost messages, disconnects, silence) ends in a resync, never in a lost or regressed order.

use std::time::{Duration, Instant};

use ordersync::sandbox::{Faults, Sandbox};

use crate::both;
use crate::harness::{dec, open_order, spawn_app_on, Backend, TestApp, TestDb};

const HOURLY_POLL: &str = "poll_interval = \"1h\"\nmetrics_refresh = \"100ms\"";

/// Wait until the first poll pass is done and the listener is subscribed.
async fn connected(app: &TestApp) {
    app.eventually("the first pass and a subscription to the user channel", || async {
        app.metric("ordersync_websocket_connected{account=\"default\"}").await == Some(1.0)
            && app.metric("ordersync_reconcile_runs_total{result=\"success\"}").await >= Some(1.0)
    })
    .await;
}

async fn completed(app: &TestApp, id: &str) {
    app.eventually(&format!("order {id} completed"), || async { app.db.trade(id).await.status == "completed" }).await;
}

async fn source_of(app: &TestApp, id: &str) -> String {
    let rows = app
        .db
        .rows(&format!("SELECT source FROM ordersync_events WHERE order_id = '{id}' AND outcome = 'applied'"))
        .await;
    assert_eq!(rows.len(), 1, "exactly one correction for {id}");
    rows[0][0].clone().unwrap()
}

async fn a_fill_reaches_the_database_within_a_second_with_polling_at_an_hour(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let app = spawn_app_on(db, sandbox, HOURLY_POLL).await;
    connected(&app).await;

    let started = Instant::now();
    app.sandbox.fill(&id, None, Some(dec("0.8373")), None).unwrap();
    completed(&app, &id).await;

    assert!(started.elapsed() < Duration::from_secs(5), "generous bound: took {:?}", started.elapsed());
    assert_eq!(source_of(&app, &id).await, "websocket");
    assert_eq!(app.db.trade(&id).await.filled_price, Some(dec("0.8373")));
    let latency = app
        .db
        .rows(&format!("SELECT CAST(latency_seconds AS TEXT) FROM ordersync_events WHERE order_id = '{id}'"))
        .await;
    let latency: f64 = latency[0][0].as_deref().unwrap().parse().unwrap();
    assert!(latency < 1.0, "from the exchange's event to our commit: {latency} s");
    // The correction is counted just after its commit: the test may see the row a moment before the count.
    app.eventually("the websocket correction observed in the sync-latency histogram", || async {
        app.metric("ordersync_sync_latency_seconds_count{source=\"websocket\"}").await.is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(app.metric("ordersync_sync_latency_seconds_count{source=\"websocket\"}").await, Some(1.0));
    assert!(app.metric("ordersync_websocket_messages_total{type=\"update\"}").await.unwrap() >= 1.0);
}
both!(a_fill_reaches_the_database_within_a_second_with_polling_at_an_hour);

async fn a_dropped_message_is_seen_as_a_gap_and_the_order_fixed_by_a_resync(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let app = spawn_app_on(db, sandbox, HOURLY_POLL).await;
    connected(&app).await;

    app.sandbox.set_faults(Faults { ws_drop_rate: 1.0, ..Faults::default() });
    app.sandbox.fill(&id, None, None, None).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.sandbox.set_faults(Faults::default());
    completed(&app, &id).await;

    app.eventually("the gap counted", || async {
        app.metric("ordersync_websocket_sequence_gaps_total").await >= Some(1.0)
    })
    .await;
    assert_eq!(source_of(&app, &id).await, "poll", "the update was lost; the resync found it");
}
both!(a_dropped_message_is_seen_as_a_gap_and_the_order_fixed_by_a_resync);

async fn a_disconnect_reconnects_with_a_snapshot_and_loses_nothing(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let app = spawn_app_on(db, sandbox, HOURLY_POLL).await;
    connected(&app).await;
    let snapshots = app.metric("ordersync_websocket_messages_total{type=\"snapshot\"}").await.unwrap();

    app.sandbox.disconnect_websockets();
    app.sandbox.fill(&id, None, None, None).unwrap();
    completed(&app, &id).await;
    app.eventually("reconnected with a new snapshot", || async {
        app.metric("ordersync_websocket_messages_total{type=\"snapshot\"}").await.unwrap() > snapshots
            && app.metric("ordersync_websocket_connected{account=\"default\"}").await == Some(1.0)
    })
    .await;

    assert!(app.metric("ordersync_websocket_reconnects_total").await.unwrap() >= 1.0);
}
both!(a_disconnect_reconnects_with_a_snapshot_and_loses_nothing);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_detected_and_replaced() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let app =
        spawn_app_on(db, Sandbox::new(1), &format!("{HOURLY_POLL}\n[coinbase]\nwebsocket_stall_after = \"1s\"")).await;
    connected(&app).await;

    app.sandbox.stall_websockets(Duration::from_secs(4));

    app.eventually("a reconnect after the stall", || async {
        app.metric("ordersync_websocket_reconnects_total").await.unwrap_or(0.0) >= 1.0
    })
    .await;
    connected(&app).await;
}

async fn duplicated_and_reordered_updates_never_regress_an_order(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(3);
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await);
    }
    let app = spawn_app_on(db, sandbox, HOURLY_POLL).await;
    connected(&app).await;

    app.sandbox.set_faults(Faults { ws_duplicate_rate: 0.5, ws_reorder_rate: 0.5, ..Faults::default() });
    for id in &ids {
        app.sandbox.fill(id, Some(dec("4")), None, None).unwrap();
        app.sandbox.fill(id, None, None, None).unwrap();
    }
    for id in &ids {
        completed(&app, id).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for id in &ids {
        let trade = app.db.trade(id).await;
        assert_eq!((trade.status.as_str(), trade.filled_size), ("completed", Some(dec("10"))), "{id}");
        // A held-back message looks like a gap when its successor arrives, so a resync may win the race.
        assert!(["websocket", "poll"].contains(&source_of(&app, id).await.as_str()));
    }
    let changed = app.db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events WHERE outcome <> 'applied'").await;
    assert_eq!(changed, 0, "repeats and stale updates wrote nothing");
}
both!(duplicated_and_reordered_updates_never_regress_an_order);
