//! The exporter and the diagnostics API, scraped and called over a real socket.

use std::time::{Duration, Instant};

use chrono::Utc;
use ordersync::sandbox::Sandbox;

use crate::both;
use crate::harness::{incident_filled_at, open_order, spawn_app, spawn_app_on, value, Backend, TestApp, TestDb};

/// Run the real `promtool check metrics` over a scrape.
fn promtool_check(scrape: &str) {
    use std::io::Write;
    let promtool = std::env::var("ORDERSYNC_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{promtool} is needed (Debian package prometheus; scripts/test.sh installs it): {e}")
        });
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let complaints = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && complaints.trim().is_empty(), "promtool check metrics:\n{complaints}");
}

async fn corrections(app: &TestApp) -> f64 {
    let scrape = app.scrape().await;
    scrape
        .lines()
        .filter(|l| l.starts_with("ordersync_corrections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn a_reconcile_pass_moves_every_metric_and_promtool_is_content(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    db.watched_since(Utc::now() - chrono::Duration::hours(1)).await;
    let sandbox = Sandbox::new(1);
    incident_filled_at(&db, &sandbox, Utc::now() - chrono::Duration::seconds(20)).await;
    let app = spawn_app_on(db, sandbox, "poll_interval = \"1h\"\nmetrics_refresh = \"100ms\"").await;

    app.eventually("three corrections", || async { corrections(&app).await == 3.0 }).await;
    app.eventually("pending gauges refreshed", || async {
        value(&app.scrape().await, "ordersync_pending_orders_over_age{threshold=\"60\"}") == Some(0.0)
    })
    .await;
    let response = app.get("/metrics").await;
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let scrape = response.text().await.unwrap();

    let build = format!(
        "ordersync_build_info{{built=\"{}\",revision=\"{}\",version=\"{}\"}}",
        ordersync::metrics::BUILD_DATE,
        ordersync::metrics::REVISION,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&scrape, &build), Some(1.0), "{build}");
    assert_eq!(value(&scrape, "ordersync_mismatches_total{bot=\"avnt-bot\",exchange_status=\"FILLED\"}"), Some(2.0));
    assert_eq!(value(&scrape, "ordersync_mismatches_total{bot=\"moodeng-bot\",exchange_status=\"FILLED\"}"), Some(1.0));
    assert_eq!(
        value(&scrape, "ordersync_corrections_total{bot=\"avnt-bot\",source=\"poll\",to_status=\"completed\"}"),
        Some(2.0)
    );
    assert_eq!(value(&scrape, "ordersync_order_checks_total{outcome=\"mismatch\"}"), Some(3.0));
    assert_eq!(value(&scrape, "ordersync_order_checks_total{outcome=\"match\"}"), Some(0.0));
    assert_eq!(value(&scrape, "ordersync_order_checks_total{outcome=\"unknown\"}"), Some(0.0));
    assert_eq!(value(&scrape, "ordersync_sync_latency_seconds_bucket{source=\"poll\",le=\"10\"}"), Some(0.0));
    assert_eq!(
        value(&scrape, "ordersync_sync_latency_seconds_bucket{source=\"poll\",le=\"30\"}"),
        Some(3.0),
        "filled 20 s ago"
    );
    assert_eq!(value(&scrape, "ordersync_sync_latency_seconds_count{source=\"poll\"}"), Some(3.0));
    assert_eq!(value(&scrape, "ordersync_reconcile_runs_total{result=\"success\"}"), Some(1.0));
    assert_eq!(
        value(
            &scrape,
            "ordersync_exchange_requests_total{account=\"default\",endpoint=\"list_orders\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value(&scrape, "ordersync_exchange_up{account=\"default\"}"), Some(1.0));
    assert_eq!(value(&scrape, "ordersync_database_up"), Some(1.0));
    assert_eq!(value(&scrape, "ordersync_collector_success{collector=\"pending_orders\"}"), Some(1.0));
    assert!(!scrape.contains("ordersync_stuck_orders{"), "nothing is stuck");
    assert!(value(&scrape, "ordersync_last_successful_reconcile_timestamp_seconds").unwrap() > 1.7e9);
    promtool_check(&scrape);
}
both!(a_reconcile_pass_moves_every_metric_and_promtool_is_content);

async fn pending_gauges_show_stuck_orders_and_blocked_bots(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    // Orders the exchange does not know (no certain answer): blocking, so stuck once older than stuck_after.
    // (OPEN ones would be resting once checked: never stuck.)
    for (bot, age) in [
        ("alpha", chrono::Duration::minutes(20)),
        ("alpha", chrono::Duration::minutes(2)),
        ("beta", chrono::Duration::hours(2)),
    ] {
        db.insert_pending(&uuid::Uuid::new_v4().to_string(), bot, "AVNT-USD", Utc::now() - age).await;
    }
    let app =
        spawn_app_on(db, sandbox, "poll_interval = \"1h\"\nmetrics_refresh = \"100ms\"\nstuck_after = \"10m\"").await;

    app.eventually("gauges", || async { value(&app.scrape().await, "ordersync_blocked_bots") == Some(2.0) }).await;
    let scrape = app.scrape().await;

    assert_eq!(value(&scrape, "ordersync_stuck_orders{bot=\"alpha\"}"), Some(1.0));
    assert_eq!(value(&scrape, "ordersync_stuck_orders{bot=\"beta\"}"), Some(1.0));
    assert_eq!(value(&scrape, "ordersync_pending_orders{bot=\"alpha\",product=\"AVNT-USD\"}"), Some(2.0));
    assert_eq!(value(&scrape, "ordersync_pending_orders_over_age{threshold=\"300\"}"), Some(2.0));
    assert_eq!(value(&scrape, "ordersync_pending_orders_over_age{threshold=\"3600\"}"), Some(1.0));
    let age = value(&scrape, "ordersync_oldest_pending_order_age_seconds{bot=\"beta\"}").unwrap();
    assert!((7200.0..7300.0).contains(&age), "{age}");
    promtool_check(&scrape);
}
both!(pending_gauges_show_stuck_orders_and_blocked_bots);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_a_scrape_still_answers_fast_and_readyz_says_why() {
    let app = spawn_app(Backend::Postgres, "poll_interval = \"1h\"\nmetrics_refresh = \"100ms\"").await;
    app.eventually("first refresh", || async { value(&app.scrape().await, "ordersync_database_up") == Some(1.0) })
        .await;
    let name = app.db.url.rsplit('/').next().unwrap().to_string();
    let admin = TestDb::empty(Backend::Postgres).await;
    admin.exec(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin.exec(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")).await;

    app.eventually("database_up 0", || async { value(&app.scrape().await, "ordersync_database_up") == Some(0.0) })
        .await;
    let started = Instant::now();
    let scrape = app.scrape().await;
    assert!(started.elapsed() < Duration::from_millis(500), "a scrape never waits on the database");
    assert_eq!(value(&scrape, "ordersync_collector_success{collector=\"pending_orders\"}"), Some(0.0));
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"][0]["name"], "database");
    assert_eq!(body["checks"][0]["ok"], false);

    admin.exec(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
}

async fn the_api_reports_sync_status_and_reconciles_one_order(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let open = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(20)).await;
    let young = open_order(&db, &sandbox, "beta", chrono::Duration::seconds(30)).await;
    // Without the WebSocket, which would settle the fill before the manual reconcile is asked to.
    let app = spawn_app_on(db, sandbox, "poll_interval = \"1h\"\n[coinbase]\nwebsocket = false").await;
    app.eventually("first pass", || async {
        let status = app.get_json("/api/v1/trades/sync-status").await;
        status["orders"].as_array().is_some_and(|o| o.iter().all(|o| o["verdict"] == "in_sync"))
    })
    .await;

    let filtered = app.get_json("/api/v1/trades/sync-status?min_age=5m").await;
    assert_eq!(filtered["count"], 1);
    assert_eq!(filtered["orders"][0]["order_id"], open.as_str());
    assert_eq!(filtered["orders"][0]["last_exchange_status"], "OPEN");
    let by_bot = app.get_json("/api/v1/trades/sync-status?bot=beta").await;
    assert_eq!(by_bot["orders"][0]["order_id"], young.as_str());

    app.sandbox.fill(&open, None, None, None).unwrap();
    let response = app.http.post(app.url(&format!("/api/v1/orders/{open}/reconcile"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let checked: serde_json::Value = response.json().await.unwrap();
    assert_eq!((checked["result"].as_str(), checked["exchange_status"].as_str()), (Some("corrected"), Some("FILLED")));
    assert_eq!(app.db.trade(&open).await.status, "completed");
}
both!(the_api_reports_sync_status_and_reconciles_one_order);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_unknown_paths_and_wrong_methods_get_json_errors() {
    let app = spawn_app(Backend::Sqlite, "poll_interval = \"1h\"").await;
    let cases = [
        (app.http.post(app.url("/api/v1/orders/not%20an%20id/reconcile")), 400),
        (app.http.post(app.url("/api/v1/orders/0c5e2f39-0000-4000-8000-000000000000/reconcile")), 404),
        (app.http.get(app.url("/api/v1/orders/abc/reconcile")), 405),
        (app.http.post(app.url("/metrics")), 405),
        (app.http.get(app.url("/nope")), 404),
        (app.http.get(app.url("/api/v1/trades/sync-status?min_age=soon")), 400),
        (app.http.get(app.url("/api/v1/trades/sync-status?unknown=1")), 400),
        (app.http.post(app.url(&format!("/api/v1/orders/{}/reconcile", "x".repeat(5000)))), 400),
    ];
    for (request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_string();
        assert!(content_type.starts_with("application/json"), "every error is JSON: {content_type}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert!(!body.to_string().contains(&"x".repeat(200)), "an over-long id is not echoed back: {body}");
    }
    // A page in a browser cannot add the header: without it (and without a token) nothing is changed.
    let cross_site = reqwest::Client::new()
        .post(app.url("/api/v1/orders/0c5e2f39-0000-4000-8000-000000000000/reconcile"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 400);
    let body: serde_json::Value = cross_site.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("x-ordersync-request"), "{body}");
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_guards_the_api_but_not_metrics() {
    let app = spawn_app(Backend::Sqlite, "poll_interval = \"1h\"\napi_token = \"0123456789abcdef0123\"").await;
    assert_eq!(app.get("/api/v1/trades/sync-status").await.status(), 401);
    let wrong =
        app.http.get(app.url("/api/v1/trades/sync-status")).bearer_auth("0123456789abcdef0124").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right =
        app.http.get(app.url("/api/v1/trades/sync-status")).bearer_auth("0123456789abcdef0123").send().await.unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_the_server_stops() {
    let mut app = spawn_app(Backend::Sqlite, "poll_interval = \"1h\"").await;
    app.token.cancel();
    tokio::time::timeout(Duration::from_secs(20), &mut app.handle).await.expect("the app stopped").unwrap();
    assert!(app.http.get(app.url("/healthz")).send().await.is_err(), "nothing listens any more");
}

/// Clients that trickle their headers (or say nothing) are cut off after HEADER_READ_TIMEOUT instead of
/// holding a connection each forever; over-long headers and bodies are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_requests_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(Backend::Sqlite, "poll_interval = \"1h\"").await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: ordersync\r\n").await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(ordersync::app::HEADER_READ_TIMEOUT + Duration::from_secs(2)).await;
    for mut stream in slow {
        let mut buffer = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await;
        // Closed: end of stream (possibly after a 408), or reset.
        let closed = match read {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 408"),
            Err(_) => false,
        };
        assert!(closed, "a connection that never finished its headers is closed");
    }
    let huge = app.http.get(app.url("/healthz")).header("x-padding", "p".repeat(64 * 1024)).send().await;
    assert!(huge.is_err() || huge.unwrap().status() == 431, "over-long headers are refused");
    let body = app.http.post(app.url("/api/v1/orders/abc/reconcile")).body(vec![b'x'; 1024 * 1024]).send().await;
    assert!(body.is_err() || body.unwrap().status().is_client_error());
    // A new connection: the server may close the one the refused body came on while the pool still holds it.
    let fresh = reqwest::Client::new().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(fresh.status(), 200, "and the service goes on");
}
