//! The numbers people page on: each ended order settled exactly once (by the bot or by ordersync), the
//! WebSocket path that lets the bot go first, the exchange's figures (from List Fills when the order lacks
//! them), sync latency from when the order really ended, terminal conflicts, and readiness that tells the
//! truth.

use ordersync::decide::VerdictWord;
use ordersync::reconcile::CheckResult;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ordersync::reconcile::Mode;
use ordersync::sandbox::{Faults, Omit, Sandbox};
use tokio_util::sync::CancellationToken;

use crate::both;
use crate::harness::{
    client, config, dec, incident, open_order, reconciler, sandbox_http, settings, spawn_app_keyed, spawn_app_on,
    Backend, TestApp, TestDb, INCIDENT,
};

/// Whole milliseconds: what both databases keep of a time.
fn ms(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap()
}

async fn connected(app: &TestApp) {
    app.eventually("the first pass and a subscription to the user channel", || async {
        app.metric("ordersync_websocket_connected{account=\"default\"}").await == Some(1.0)
            && app.metric("ordersync_reconcile_runs_total{result=\"success\"}").await >= Some(1.0)
    })
    .await;
}

async fn settled(app: &TestApp, bot: &str, by: &str) -> Option<f64> {
    app.metric(&format!("ordersync_orders_settled_total{{bot=\"{bot}\",by=\"{by}\"}}")).await
}

/// The bot's own completion, as a bot writes it; says whether it changed the row.
async fn bot_writes(db: &TestDb, id: &str, status: &str) -> bool {
    let changed = db
        .rows(&format!(
            "UPDATE trades SET status = '{status}' WHERE order_id = '{id}' AND status = 'pending' \
             RETURNING CAST(order_id AS TEXT)"
        ))
        .await;
    changed.len() == 1
}

async fn settlements(db: &TestDb) -> Vec<(String, String)> {
    db.rows("SELECT order_id, settled_by FROM ordersync_settlements ORDER BY order_id")
        .await
        .into_iter()
        .map(|row| (row[0].clone().unwrap(), row[1].clone().unwrap()))
        .collect()
}

/// Three orders of alpha end on the exchange while the WebSocket is on and the grace period is 2 s: the bot
/// writes the first at once and the third a moment later (both its own: its UPDATE … WHERE status =
/// 'pending' succeeds), and misses the second, which ordersync corrects only after the grace period, with
/// the exchange's fill time. Each order is settled once; checking them all again counts nothing more.
async fn each_ended_order_is_settled_once_and_the_bot_goes_first(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    db.watched_since(Utc::now() - chrono::Duration::hours(1)).await;
    let sandbox = Sandbox::new(1);
    let heard = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let missed = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let cancelled = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let app = spawn_app_on(db, sandbox, "poll_interval = \"1h\"\nmetrics_refresh = \"100ms\"\ngrace = \"2s\"").await;
    connected(&app).await;
    assert_eq!(settled(&app, "alpha", "bot").await, Some(0.0), "exported at 0 before anything settled");
    assert_eq!(app.metric("ordersync_mismatches_total{bot=\"alpha\",exchange_status=\"FILLED\"}").await, Some(0.0));

    app.sandbox.fill(&heard, None, None, None).unwrap();
    assert!(bot_writes(&app.db, &heard, "completed").await, "the bot's own update finds its row pending");
    let fill_time = ms(Utc::now() - chrono::Duration::seconds(1));
    app.sandbox.fill(&missed, None, Some(dec("0.8373")), Some(fill_time)).unwrap();
    app.sandbox.end(&cancelled, "CANCELLED").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(bot_writes(&app.db, &cancelled, "cancelled").await, "within the grace period the bot goes first");
    assert_eq!(app.db.trade(&missed).await.status, "pending", "ordersync waits out the grace period");

    app.eventually("the missed order corrected", || async { app.db.trade(&missed).await.status == "completed" }).await;
    // The correction is counted just after its commit: wait for the count too, not only for the rows.
    app.eventually("three orders settled and the correction counted", || async {
        settled(&app, "alpha", "bot").await == Some(2.0)
            && settled(&app, "alpha", "ordersync").await == Some(1.0)
            && app.metric("ordersync_sync_latency_seconds_count{source=\"websocket\"}").await >= Some(1.0)
    })
    .await;
    let trade = app.db.trade(&missed).await;
    assert_eq!(trade.filled_at, Some(fill_time), "the exchange's last fill time, not the message's");
    assert_eq!(trade.filled_price, Some(dec("0.8373")));
    let latency = app
        .db
        .rows(&format!(
            "SELECT CAST(latency_seconds AS TEXT), end_source, source FROM ordersync_events WHERE order_id = '{missed}'"
        ))
        .await;
    assert_eq!(latency.len(), 1, "one event for the one correction");
    let seconds: f64 = latency[0][0].as_deref().unwrap().parse().unwrap();
    assert!((3.0..30.0).contains(&seconds), "from the fill (1 s before the update) past the grace: {seconds}");
    assert_eq!(latency[0][1].as_deref(), Some("last_fill_time"));
    assert_eq!(latency[0][2].as_deref(), Some("websocket"));
    assert_eq!(app.metric("ordersync_mismatches_total{bot=\"alpha\",exchange_status=\"FILLED\"}").await, Some(1.0));
    assert_eq!(app.metric("ordersync_mismatches_total{bot=\"alpha\",exchange_status=\"CANCELLED\"}").await, Some(0.0));
    assert_eq!(app.metric("ordersync_orders_settled_late_total{bot=\"alpha\"}").await, Some(0.0));
    assert_eq!(app.metric("ordersync_sync_latency_seconds_count{source=\"websocket\"}").await, Some(1.0));

    // Checking every order again, by hand, settles nothing twice.
    for id in [&heard, &missed, &cancelled] {
        let response = app.http.post(app.url(&format!("/api/v1/orders/{id}/reconcile"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        (settled(&app, "alpha", "bot").await, settled(&app, "alpha", "ordersync").await),
        (Some(2.0), Some(1.0))
    );
    assert_eq!(app.metric("ordersync_mismatches_total{bot=\"alpha\",exchange_status=\"FILLED\"}").await, Some(1.0));
    let mut expected = vec![
        (heard.clone(), "bot".to_string()),
        (missed.clone(), "ordersync".to_string()),
        (cancelled.clone(), "bot".to_string()),
    ];
    expected.sort();
    assert_eq!(settlements(&app.db).await, expected);
}
both!(each_ended_order_is_settled_once_and_the_bot_goes_first);

/// A FILLED answer without its average price, size and fill time is completed from List Fills; without
/// fills either, the status is still written (FILLED is certain), the figures stay NULL, and it is counted
/// and noted.
async fn a_filled_answer_without_figures_is_completed_from_list_fills(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    db.watched_since(Utc::now() - chrono::Duration::hours(1)).await;
    let sandbox = Sandbox::new(1);
    let complete = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(10)).await;
    let bare = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(10)).await;
    let (first, last) = (ms(Utc::now() - chrono::Duration::minutes(5)), ms(Utc::now() - chrono::Duration::seconds(30)));
    for (id, fills) in [(&complete, false), (&bare, true)] {
        sandbox.fill(id, Some(dec("6")), Some(dec("0.80")), Some(first)).unwrap();
        sandbox.fill(id, Some(dec("4")), Some(dec("0.85")), Some(last)).unwrap();
        let omit = Omit { average_filled_price: true, filled_size: true, last_fill_time: true, fills };
        sandbox.omit(id, omit).unwrap();
    }
    let config = config(&db);
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config).await;
    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.count(CheckResult::Corrected), 2);

    // 6 at 0.80 and 4 at 0.85: 10 at an average of 0.82, last filled at `last`.
    let trade = db.trade(&complete).await;
    assert_eq!(
        (trade.status.as_str(), trade.filled_size, trade.filled_price),
        ("completed", Some(dec("10")), Some(dec("0.82")))
    );
    assert_eq!(trade.filled_at, Some(last));
    let event = db.rows(&format!("SELECT end_source, note FROM ordersync_events WHERE order_id = '{complete}'")).await;
    assert_eq!((event[0][0].as_deref(), event[0][1].as_deref()), (Some("list_fills"), None));

    let trade = db.trade(&bare).await;
    assert_eq!(
        (trade.status.as_str(), trade.filled_size, trade.filled_price, trade.filled_at),
        ("completed", None, None, None)
    );
    let note = db.rows(&format!("SELECT note FROM ordersync_events WHERE order_id = '{bare}'")).await;
    let note = note[0][0].clone().unwrap_or_default();
    assert!(note.contains("average_filled_price") && note.contains("written without"), "{note}");
    assert_eq!(metrics.incomplete_fills.get(), 1);
}
both!(a_filled_answer_without_figures_is_completed_from_list_fills);

/// An order partly filled 8 hours ago that expires now ended now: its sync latency is seconds, not hours,
/// and the event says where the end time came from. The partial figures are the exchange's.
async fn an_expiry_hours_after_the_last_fill_is_not_an_hours_long_sync(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    db.watched_since(Utc::now() - chrono::Duration::days(1)).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::hours(9)).await;
    let filled = ms(Utc::now() - chrono::Duration::hours(8));
    sandbox.fill(&id, Some(dec("6")), Some(dec("0.80")), Some(filled)).unwrap();
    sandbox.end(&id, "EXPIRED").unwrap();
    let config = config(&db);
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config).await;
    reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();

    let trade = db.trade(&id).await;
    assert_eq!((trade.status.as_str(), trade.filled_size, trade.filled_at), ("expired", Some(dec("6")), Some(filled)));
    let event = db
        .rows(&format!(
            "SELECT CAST(latency_seconds AS TEXT), end_source FROM ordersync_events WHERE order_id = '{id}'"
        ))
        .await;
    let latency: f64 = event[0][0].as_deref().unwrap().parse().unwrap();
    assert!(latency < 60.0, "ended when first seen expired, not 8 h ago: {latency}");
    assert_eq!(event[0][1].as_deref(), Some("seen_poll"));
    assert_eq!(metrics.settled_late.with_label_values(&["alpha"]).get(), 0);
    assert_eq!(metrics.settled.with_label_values(&["alpha", "ordersync"]).get(), 1);
}
both!(an_expiry_hours_after_the_last_fill_is_not_an_hours_long_sync);

/// An order cancelled while the exchange answered nothing but 5xx is seen ended only after the outage. Its
/// end is dated to ordersync's first unanswered check of it, not to the first sighting: the outage is in the
/// sync latency (the histogram and the event), and the event says where the end came from.
async fn an_exchange_outage_is_in_the_sync_latency_of_the_orders_it_hid(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    db.watched_since(Utc::now() - chrono::Duration::days(1)).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let config = config(&db);
    // Over HTTP: the simulator's faults are served there.
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let store = ordersync::db::Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = ordersync::metrics::Metrics::standalone(config.stuck_after);
    let exchange = std::sync::Arc::new(client(&url, key, &metrics));
    let reconciler = ordersync::reconcile::Reconciler::new(store, exchange, metrics.clone(), settings(&config));
    reconciler.pass(Mode::Apply, &token).await.unwrap();
    sandbox.set_faults(Faults { error_5xx_rate: 1.0, ..Faults::default() });
    let blind = ms(Utc::now());
    reconciler.pass(Mode::Apply, &token).await.unwrap();
    let blind_checked = Utc::now();
    sandbox.end(&id, "CANCELLED").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reconciler.pass(Mode::Apply, &token).await.unwrap();
    assert_eq!(db.trade(&id).await.status, "pending", "nothing is written on no answer");
    sandbox.set_faults(Faults::default());
    let seen = Utc::now();
    reconciler.pass(Mode::Apply, &token).await.unwrap();
    let done = Utc::now();

    assert_eq!(db.trade(&id).await.status, "cancelled");
    let event = db
        .rows(&format!(
            "SELECT CAST(latency_seconds AS TEXT), end_source FROM ordersync_events WHERE order_id = '{id}'"
        ))
        .await;
    let latency: f64 = event[0][0].as_deref().unwrap().parse().unwrap();
    // The end lies between the second pass's start and its end; the commit between the last pass's.
    let (least, most) = ((seen - blind_checked).as_seconds_f64(), (done - blind).as_seconds_f64());
    assert!(least >= 1.5 && (least..=most).contains(&latency), "from the first unanswered check: {latency} s");
    assert_eq!(event[0][1].as_deref(), Some("unanswered_check"));
    let histogram = metrics.sync_latency.with_label_values(&["poll"]);
    assert_eq!(histogram.get_sample_count(), 1);
    assert!(histogram.get_sample_sum() >= least, "{} s", histogram.get_sample_sum());
}
both!(an_exchange_outage_is_in_the_sync_latency_of_the_orders_it_hid);

/// Rows the bot marked terminal are checked once: right ones are settled by the bot; one cancelled by the
/// bot but FILLED on Coinbase, and one completed but CANCELLED with nothing filled, are conflicts (settled
/// once, as misses), never written, not asked about again until the bot changes them.
async fn terminal_rows_are_settled_or_conflicts_and_never_written(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let right = open_order(&db, &sandbox, "alpha", chrono::Duration::hours(1)).await;
    let unknown_position = open_order(&db, &sandbox, "alpha", chrono::Duration::hours(1)).await;
    let phantom_fill = open_order(&db, &sandbox, "alpha", chrono::Duration::hours(1)).await;
    sandbox.fill(&right, None, None, None).unwrap();
    sandbox.fill(&unknown_position, None, None, None).unwrap();
    sandbox.end(&phantom_fill, "CANCELLED").unwrap();
    for (id, status) in [(&right, "completed"), (&unknown_position, "cancelled"), (&phantom_fill, "completed")] {
        assert!(bot_writes(&db, id, status).await);
    }
    // A terminal row of an order the exchange never knew (a paper trade, say).
    let paper = "0c5e2f39-0000-4000-8000-00000000feed";
    db.insert_pending(paper, "alpha", "AVNT-USD", Utc::now() - chrono::Duration::hours(1)).await;
    assert!(bot_writes(&db, paper, "completed").await);
    let config = config(&db);
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config).await;
    let token = CancellationToken::new();

    let report = reconciler.pass(Mode::Apply, &token).await.unwrap();
    assert_eq!(report.verified.len(), 4);
    let paper_check = report.verified.iter().find(|c| c.order_id == paper).unwrap();
    assert_eq!(paper_check.verdict, VerdictWord::Unresolved, "not settled, not a conflict");
    let mut conflicts: Vec<&str> = report.conflicts().map(|c| c.order_id.as_str()).collect();
    conflicts.sort_unstable();
    let mut expected = vec![unknown_position.as_str(), phantom_fill.as_str()];
    expected.sort_unstable();
    assert_eq!(conflicts, expected);
    assert_eq!(db.trade(&unknown_position).await.status, "cancelled", "a terminal row is never written");
    assert_eq!(db.trade(&phantom_fill).await.status, "completed");
    let mut expected = vec![
        (right.clone(), "bot".to_string()),
        (unknown_position.clone(), "conflict".to_string()),
        (phantom_fill.clone(), "conflict".to_string()),
    ];
    expected.sort();
    assert_eq!(settlements(&db).await, expected, "a conflict is settled once, as a miss of the bot");
    assert_eq!(metrics.settled.with_label_values(&["alpha", "conflict"]).get(), 2);
    assert_eq!(metrics.settled_late.with_label_values(&["alpha"]).get(), 2, "a conflict is never right");
    metrics.refresh_pending(reconciler.store()).await;
    assert_eq!(metrics.terminal_conflicts.with_label_values(&["alpha"]).get(), 2);

    let again = reconciler.pass(Mode::Apply, &token).await.unwrap();
    assert_eq!(again.verified.len(), 0, "checked once, not every pass; the unknown one only after a while");
    // Three unanswered checks, minutes apart: given up on.
    for round in 0..3 {
        db.exec(&format!(
            "UPDATE ordersync_order_checks SET last_checked_at = '{}' WHERE order_id = '{paper}'",
            (Utc::now() - chrono::Duration::minutes(10)).to_rfc3339()
        ))
        .await;
        let report = reconciler.pass(Mode::Apply, &token).await.unwrap();
        assert_eq!(report.verified.len(), usize::from(round < 2), "round {round}");
    }

    // The bot changes the row, still wrong: checked again, still a conflict (now at its new status).
    db.exec(&format!("UPDATE trades SET status = 'expired' WHERE order_id = '{unknown_position}'")).await;
    let changed = reconciler.pass(Mode::Apply, &token).await.unwrap();
    assert_eq!(changed.conflicts().count(), 1);
    metrics.refresh_pending(reconciler.store()).await;
    assert_eq!(metrics.terminal_conflicts.with_label_values(&["alpha"]).get(), 2, "it does not slip away");
    assert_eq!(metrics.settled.with_label_values(&["alpha", "conflict"]).get(), 2, "still counted once");

    // The bot puts its row right: checked again, the conflict gone; the order stays a miss.
    db.exec(&format!("UPDATE trades SET status = 'completed' WHERE order_id = '{unknown_position}'")).await;
    let fixed = reconciler.pass(Mode::Apply, &token).await.unwrap();
    assert_eq!(fixed.verified.len(), 1);
    assert_eq!(fixed.verified[0].verdict, VerdictWord::SettledByBot);
    metrics.refresh_pending(reconciler.store()).await;
    assert_eq!(metrics.terminal_conflicts.with_label_values(&["alpha"]).get(), 1);
    assert_eq!(reconciler.store().conflicts().await.unwrap()[0].order_id, phantom_fill);
    assert_eq!(
        metrics.settled.with_label_values(&["alpha", "bot"]).get(),
        1,
        "fixing a conflict by hand does not make it the bot's"
    );
    let after = reconciler.pass(Mode::Apply, &token).await.unwrap();
    assert_eq!(after.verified.len(), 0, "a fixed conflict is not asked about again");
}
both!(terminal_rows_are_settled_or_conflicts_and_never_written);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_status_api_lists_terminal_conflicts() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::hours(1)).await;
    sandbox.fill(&id, None, None, None).unwrap();
    assert!(bot_writes(&db, &id, "cancelled").await);
    let app = spawn_app_on(db, sandbox, "poll_interval = \"1h\"\nmetrics_refresh = \"100ms\"").await;
    app.eventually("the conflict exported", || async {
        app.metric("ordersync_terminal_conflicts{bot=\"alpha\"}").await == Some(1.0)
    })
    .await;
    let status = app.get_json("/api/v1/trades/sync-status").await;
    let conflicts = status["terminal_conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        (conflicts[0]["order_id"].as_str(), conflicts[0]["row_status"].as_str()),
        (Some(id.as_str()), Some("cancelled"))
    );
    assert_eq!(conflicts[0]["exchange_status"], "FILLED");
}

/// A resting order (OPEN on the exchange) is pending on purpose: exported as resting, never stuck; an order
/// the exchange answers 404 for is stuck once older than stuck_after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resting_orders_are_not_stuck() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    open_order(&db, &sandbox, "alpha", chrono::Duration::hours(2)).await;
    db.insert_pending(
        "4ec285fe-0ef5-4012-ba2e-c1fde298d337",
        "beta",
        "AVNT-USD",
        Utc::now() - chrono::Duration::hours(1),
    )
    .await;
    let app =
        spawn_app_on(db, sandbox, "poll_interval = \"1h\"\nmetrics_refresh = \"100ms\"\nstuck_after = \"5m\"").await;
    app.eventually("the split exported", || async {
        app.metric("ordersync_resting_orders{bot=\"alpha\"}").await == Some(1.0)
            && app.metric("ordersync_stuck_orders{bot=\"beta\"}").await == Some(1.0)
    })
    .await;
    let scrape = app.scrape().await;
    assert!(!scrape.contains("ordersync_stuck_orders{bot=\"alpha\"}"), "{scrape}");
    assert_eq!(app.metric("ordersync_blocked_bots").await, Some(1.0));
    assert!(!scrape.contains("ordersync_oldest_blocking_order_age_seconds{bot=\"alpha\"}"), "{scrape}");
    assert!(app.metric("ordersync_oldest_blocking_order_age_seconds{bot=\"beta\"}").await.unwrap() >= 3600.0);
    assert!(app.metric("ordersync_oldest_pending_order_age_seconds{bot=\"alpha\"}").await.unwrap() >= 7200.0);
    let status = app.get_json("/api/v1/trades/sync-status").await;
    let kinds: Vec<(&str, &str)> = status["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["bot_id"].as_str().unwrap(), o["kind"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("alpha", "resting")) && kinds.contains(&("beta", "blocking")), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_are_not_ready_and_the_pass_fails() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let app = spawn_app_keyed(db, sandbox, "poll_interval = \"1h\"\n[coinbase]\nwebsocket = false", true).await;
    app.eventually("a failed pass", || async {
        app.metric("ordersync_reconcile_runs_total{result=\"failure\"}").await == Some(1.0)
    })
    .await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    let exchange = body["checks"].as_array().unwrap().iter().find(|c| c["name"] == "exchange").unwrap().clone();
    assert!(exchange["message"].as_str().unwrap().contains("rejected the credentials"), "{exchange}");
    assert_eq!(app.metric("ordersync_exchange_up{account=\"default\"}").await, Some(0.0));
    assert_eq!(app.metric("ordersync_last_successful_reconcile_timestamp_seconds").await, Some(0.0));
    assert_eq!(app.metric("ordersync_reconcile_runs_total{result=\"success\"}").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_that_never_answers_is_not_ready_once_tried() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    sandbox.set_faults(Faults { error_5xx_rate: 1.0, ..Faults::default() });
    let app = spawn_app_on(db, sandbox, "poll_interval = \"1h\"\n[coinbase]\nwebsocket = false").await;
    app.eventually("a failed pass", || async {
        app.metric("ordersync_reconcile_runs_total{result=\"failure\"}").await == Some(1.0)
    })
    .await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503, "not 'not contacted yet' once the first pass has tried");
    let body = response.text().await.unwrap();
    assert!(body.contains("no authenticated answer"), "{body}");
    assert_eq!(app.metric("ordersync_last_successful_reconcile_timestamp_seconds").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_proves_its_key_and_stays_ready() {
    let app = spawn_app_on(
        TestDb::with_trades(Backend::Sqlite).await,
        Sandbox::new(1),
        "poll_interval = \"1h\"\n[coinbase]\nwebsocket = false",
    )
    .await;
    app.eventually("the key proven", || async {
        app.metric("ordersync_exchange_requests_total{account=\"default\",endpoint=\"key_permissions\",outcome=\"ok\"}")
            .await
            >= Some(1.0)
    })
    .await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("last authenticated answer"));
    assert_eq!(app.metric("ordersync_exchange_up{account=\"default\"}").await, Some(1.0));
}

/// The incident's orders ended hours before ordersync first ran on this database: ordersync settles them
/// (the bot did miss them), but their hours-long wait was not ordersync's: never late, not in the latency
/// histogram, noted in the event. The same order ending after ordersync started watching is late.
async fn orders_that_ended_before_ordersync_first_ran_are_backlog(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let late = open_order(&db, &sandbox, "alpha", chrono::Duration::hours(1)).await;
    db.watched_since(Utc::now() - chrono::Duration::hours(1)).await;
    sandbox.fill(&late, None, None, Some(Utc::now() - chrono::Duration::minutes(30))).unwrap();
    let config = config(&db);
    let (reconciler, metrics) = reconciler(&db, &sandbox, &config).await;
    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.count(CheckResult::Corrected), 4);

    let settled_by_ordersync: u64 = ["avnt-bot", "moodeng-bot", "alpha"]
        .iter()
        .map(|bot| metrics.settled.with_label_values(&[bot, "ordersync"]).get())
        .sum();
    assert_eq!(settled_by_ordersync, 1, "the backlog is outside the SLI");
    assert_eq!(metrics.settled_late.with_label_values(&["avnt-bot"]).get(), 0, "backlog is never late");
    assert_eq!(metrics.settled_late.with_label_values(&["alpha"]).get(), 1, "30 minutes after ordersync started");
    assert_eq!(metrics.sync_latency.with_label_values(&["poll"]).get_sample_count(), 1, "only the late one");
    let backlog = db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_settlements WHERE backlog").await;
    assert_eq!(backlog, 3);
    let notes = db.rows(&format!("SELECT note FROM ordersync_events WHERE order_id = '{}'", INCIDENT[0].0)).await;
    assert!(notes[0][0].as_deref().unwrap_or_default().contains("backlog"), "{notes:?}");
}
both!(orders_that_ended_before_ordersync_first_ran_are_backlog);

/// A bot ordersync settled orders of before, with nothing pending now, has its alerting counters at 0 on the
/// very first scrape after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_bots_have_their_counters_at_zero_from_the_first_scrape() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    db.watched_since(Utc::now() - chrono::Duration::days(1)).await;
    db.exec(
        "INSERT INTO ordersync_settlements (order_id, bot_id, settled_by, exchange_status, settled_at) \
         VALUES ('x-1', 'zeta', 'bot', 'FILLED', '2026-01-01T00:00:00+00:00')",
    )
    .await;
    db.insert_pending("x-2", "eta", "AVNT-USD", Utc::now() - chrono::Duration::minutes(1)).await;
    // A bot with only an old, completed row in the table: known too.
    db.insert_pending("x-3", "theta", "AVNT-USD", Utc::now() - chrono::Duration::days(30)).await;
    db.exec("UPDATE trades SET status = 'completed' WHERE order_id = 'x-3'").await;
    let app = spawn_app_on(db, Sandbox::new(1), "poll_interval = \"1h\"\n[coinbase]\nwebsocket = false").await;
    let scrape = app.scrape().await;
    for bot in ["zeta", "eta", "theta"] {
        for series in [
            format!("ordersync_mismatches_total{{bot=\"{bot}\",exchange_status=\"FILLED\"}} 0"),
            format!("ordersync_orders_settled_total{{bot=\"{bot}\",by=\"ordersync\"}} 0"),
            format!("ordersync_orders_settled_total{{bot=\"{bot}\",by=\"conflict\"}} 0"),
            format!("ordersync_orders_settled_late_total{{bot=\"{bot}\"}} 0"),
        ] {
            assert!(scrape.contains(&series), "{series} on the first scrape:\n{scrape}");
        }
    }
}
