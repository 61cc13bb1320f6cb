//! The real Coinbase client against the simulator over loopback HTTP: auth, paging, errors, retries.

use ordersync::decide::VerdictWord;
use ordersync::reconcile::CheckResult;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ordersync::exchange::auth::CdpKey;
use ordersync::exchange::coinbase::{CoinbaseClient, RetryPolicy, ORDERS_PATH};
use ordersync::exchange::{Exchange, ExchangeError, ExchangeStatus};
use ordersync::metrics::Metrics;
use ordersync::order::OrderId;
use ordersync::reconcile::{Mode, Reconciler};
use ordersync::sandbox::{Faults, NewOrder, Sandbox};
use tokio_util::sync::CancellationToken;

use crate::harness::{client, dec, fast_retry, sandbox_http, sandbox_http_keys, settings, Backend, TestDb};

fn place(sandbox: &Sandbox, count: usize) -> Vec<OrderId> {
    (0..count)
        .map(|_| {
            let new = NewOrder {
                product_id: "AVNT-USD".into(),
                base_size: dec("10"),
                limit_price: dec("0.84"),
                ..NewOrder::default()
            };
            OrderId::parse(&sandbox.create_order(new).unwrap()).unwrap()
        })
        .collect()
}

fn requests(metrics: &Metrics, endpoint: &str, outcome: &str) -> u64 {
    metrics.exchange_requests.with_label_values(&["default", endpoint, outcome]).get()
}

#[tokio::test]
async fn the_right_key_is_accepted_and_a_wrong_one_refused_without_retrying() {
    let sandbox = Sandbox::new(1);
    let ids = place(&sandbox, 1);
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let metrics = Metrics::standalone(Duration::from_secs(300));

    let order = client(&url, key, &metrics).order(&ids[0]).await.unwrap();
    assert_eq!(order.status, ExchangeStatus::Open);

    let impostor = CdpKey::generate("organizations/test/apiKeys/test");
    let error = client(&url, impostor, &metrics).order(&ids[0]).await.unwrap_err();
    assert!(matches!(error, ExchangeError::Unauthorized(_)), "{error:?}");
    assert_eq!(requests(&metrics, "get_order", "unauthorized"), 1, "a 401 is reported, not retried");
}

/// Each key is its own account, as on Coinbase: it sees only the orders placed with it (List Orders, Get
/// Order, List Fills, the user channel), and its requests count against its own rate limit; the simulator
/// notes which key and which client asked.
#[tokio::test]
async fn a_key_sees_only_its_own_accounts_orders_and_has_its_own_rate_limit() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let sandbox = Sandbox::new(1);
    sandbox.record_requests();
    let (a, b) = ("organizations/test/apiKeys/a", "organizations/test/apiKeys/b");
    let owned = |account: &str| {
        let new = NewOrder {
            product_id: "AVNT-USD".into(),
            base_size: dec("10"),
            limit_price: dec("0.84"),
            account: Some(account.into()),
            ..NewOrder::default()
        };
        OrderId::parse(&sandbox.create_order(new).unwrap()).unwrap()
    };
    let (of_a, of_b) = (owned(a), owned(b));
    sandbox.fill(of_a.as_str(), None, None, None).unwrap();
    sandbox.fill(of_b.as_str(), None, None, None).unwrap();
    let token = CancellationToken::new();
    let (url, keys) = sandbox_http_keys(&sandbox, &[a, b], None, &token).await;
    let metrics = Metrics::standalone(Duration::from_secs(300));
    let (client_a, client_b) = (client(&url, keys[0].clone(), &metrics), client(&url, keys[1].clone(), &metrics));

    let both = [of_a.clone(), of_b.clone()];
    let seen_by_a = client_a.orders(&both).await.unwrap();
    assert_eq!(seen_by_a.orders.iter().map(|o| o.order_id.clone()).collect::<Vec<_>>(), vec![of_a.clone()]);
    assert!(matches!(client_a.order(&of_b).await, Err(ExchangeError::NotFound)), "B's order is not A's to see");
    assert_eq!(client_b.order(&of_b).await.unwrap().status, ExchangeStatus::Filled);
    let fills = client_b.fills(&both).await.unwrap();
    assert!(!fills.is_empty() && fills.iter().all(|f| f.order_id == of_b), "{fills:?}");

    let received = sandbox.received();
    assert!(received.iter().any(|r| r.key == a) && received.iter().any(|r| r.key == b), "{received:?}");
    assert!(received.iter().all(|r| r.user_agent.starts_with("ordersync/")), "{received:?}");
    // The same record over HTTP, for a simulator run as `ordersync sandbox`.
    let listed: serde_json::Value =
        reqwest::get(format!("{url}/sandbox/requests")).await.unwrap().json().await.unwrap();
    let keys_seen: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|r| r["key"].as_str()).collect();
    assert!(keys_seen.contains(&a) && keys_seen.contains(&b), "{listed}");

    // The user channel: A's snapshot lists A's live orders only, and B's fill never reaches A.
    let (live_a, live_b) = (owned(a), owned(b));
    let ws_url = url.replacen("http", "ws", 1) + ordersync::sandbox::server::WS_PATH;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await.unwrap();
    let subscribe =
        serde_json::json!({"type": "subscribe", "channel": "user", "jwt": keys[0].jwt(None, Utc::now().timestamp())});
    socket.send(Message::Text(subscribe.to_string().into())).await.unwrap();
    let mut snapshot = None;
    while snapshot.is_none() {
        let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("the channel closed") };
        let message: serde_json::Value = serde_json::from_str(&text).unwrap();
        if message["events"][0]["type"] == "snapshot" {
            snapshot = Some(message["events"][0]["orders"].clone());
        }
    }
    let listed: Vec<String> =
        snapshot.unwrap().as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, vec![live_a.to_string()]);
    sandbox.fill(live_b.as_str(), None, None, None).unwrap();
    sandbox.fill(live_a.as_str(), None, None, None).unwrap();
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("the channel closed") };
        let message: serde_json::Value = serde_json::from_str(&text).unwrap();
        if message["events"][0]["type"] == "update" {
            assert_eq!(message["events"][0]["orders"][0]["order_id"], live_a.to_string(), "B's fill is not A's news");
            break;
        }
    }

    // One request a second per key: A's second is refused, B's first is not.
    let (url, keys) = sandbox_http_keys(&sandbox, &[a, b], Some(1), &token).await;
    let host = url.trim_start_matches("http://");
    let path = format!("{ORDERS_PATH}/{of_a}");
    let http = reqwest::Client::new();
    let get = |key: &CdpKey| {
        http.get(format!("{url}{path}"))
            .bearer_auth(key.jwt(Some(&format!("GET {host}{path}")), Utc::now().timestamp()))
            .send()
    };
    assert_eq!(get(&keys[0]).await.unwrap().status(), 200);
    assert_eq!(get(&keys[0]).await.unwrap().status(), 429, "A's own limit");
    assert_eq!(get(&keys[1]).await.unwrap().status(), 404, "B has a limit of its own (and cannot see A's order)");
}

#[tokio::test]
async fn an_expired_token_or_one_for_another_path_is_refused() {
    let sandbox = Sandbox::new(1);
    let ids = place(&sandbox, 1);
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let host = url.trim_start_matches("http://");
    let path = format!("{ORDERS_PATH}/{}", ids[0]);
    let http = reqwest::Client::new();
    let send = |jwt: String| http.get(format!("{url}{path}")).bearer_auth(jwt).send();

    let fresh = key.jwt(Some(&format!("GET {host}{path}")), Utc::now().timestamp());
    assert_eq!(send(fresh).await.unwrap().status(), 200);
    let expired = key.jwt(Some(&format!("GET {host}{path}")), Utc::now().timestamp() - 300);
    let response = send(expired).await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "UNAUTHENTICATED");
    let elsewhere = key.jwt(Some(&format!("GET {host}{ORDERS_PATH}/batch")), Utc::now().timestamp());
    assert_eq!(send(elsewhere).await.unwrap().status(), 401);
}

#[tokio::test]
async fn a_thousand_orders_are_read_in_batches_following_the_cursor() {
    let sandbox = Sandbox::new(1);
    let ids = place(&sandbox, 1000);
    sandbox.set_faults(Faults { page_size: 100, ..Faults::default() });
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let metrics = Metrics::standalone(Duration::from_secs(300));
    let client = client(&url, key, &metrics);

    let mut found = Vec::new();
    for chunk in ids.chunks(250) {
        let batch = client.orders(chunk).await.unwrap();
        assert!(batch.malformed.is_empty());
        found.extend(batch.orders.into_iter().map(|o| o.order_id));
    }
    found.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(requests(&metrics, "list_orders", "ok"), 12, "4 batches of 250 ids, 3 pages of at most 100 each");
}

#[tokio::test]
async fn an_unknown_order_is_not_found() {
    let sandbox = Sandbox::new(1);
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let metrics = Metrics::standalone(Duration::from_secs(300));
    let missing = OrderId::parse("0c5e2f39-0000-4000-8000-000000000000").unwrap();

    assert_eq!(client(&url, key.clone(), &metrics).order(&missing).await, Err(ExchangeError::NotFound));
    let batch = client(&url, key, &metrics).orders(std::slice::from_ref(&missing)).await.unwrap();
    assert!(batch.orders.is_empty(), "absent from a batch, which proves nothing by itself");
}

#[tokio::test]
async fn a_429_is_waited_out_as_told_then_succeeds() {
    let sandbox = Sandbox::new(1);
    let ids = place(&sandbox, 1);
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, Some(2), &token).await;
    let metrics = Metrics::standalone(Duration::from_secs(300));
    let client = Arc::new(client(&url, key, &metrics).with_retry(RetryPolicy { max_retries: 5, ..fast_retry() }));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (client, id) = (client.clone(), ids[0].clone());
        tasks.push(tokio::spawn(async move { client.order(&id).await }));
    }
    for task in tasks {
        assert!(task.await.unwrap().is_ok());
    }
    assert!(requests(&metrics, "get_order", "rate_limited") >= 1);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was honoured");
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_transient() {
    let sandbox = Sandbox::new(1);
    let ids = place(&sandbox, 1);
    sandbox.set_faults(Faults { error_5xx_rate: 1.0, ..Faults::default() });
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let metrics = Metrics::standalone(Duration::from_secs(300));
    let client = client(&url, key, &metrics).with_retry(RetryPolicy { max_retries: 3, ..fast_retry() });

    let error = client.order(&ids[0]).await.unwrap_err();

    assert_eq!(error, ExchangeError::Transient("HTTP 503".into()));
    assert_eq!(requests(&metrics, "get_order", "transient"), 4, "one try and three retries");
    assert_eq!(metrics.exchange_up.with_label_values(&["default"]).get(), 0);
}

#[tokio::test]
async fn a_slow_answer_times_out_as_transient() {
    let sandbox = Sandbox::new(1);
    let ids = place(&sandbox, 1);
    sandbox.set_faults(Faults { latency_rate: 1.0, latency_ms: 1500, ..Faults::default() });
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let metrics = Metrics::standalone(Duration::from_secs(300));
    let retry = RetryPolicy { max_retries: 1, timeout: Duration::from_millis(200), ..fast_retry() };

    let error = client(&url, key, &metrics).with_retry(retry).order(&ids[0]).await.unwrap_err();

    assert!(matches!(&error, ExchangeError::Transient(m) if m.contains("timed out")), "{error:?}");
}

#[tokio::test]
async fn malformed_and_truncated_bodies_are_malformed_errors_not_retried() {
    for faults in
        [Faults { malformed_rate: 1.0, ..Faults::default() }, Faults { truncated_rate: 1.0, ..Faults::default() }]
    {
        let sandbox = Sandbox::new(1);
        let ids = place(&sandbox, 2);
        sandbox.set_faults(faults.clone());
        let token = CancellationToken::new();
        let (url, key) = sandbox_http(&sandbox, None, &token).await;
        let metrics = Metrics::standalone(Duration::from_secs(300));
        let client = client(&url, key, &metrics);

        assert!(matches!(client.order(&ids[0]).await, Err(ExchangeError::Malformed(_))), "{faults:?}");
        assert!(matches!(client.orders(&ids).await, Err(ExchangeError::Malformed(_))), "{faults:?}");
        assert_eq!(requests(&metrics, "get_order", "malformed"), 1);
    }
}

/// A reconciler asking the simulator over HTTP with the real client (fast retries), with `file` as config.
async fn http_reconciler(
    db: &TestDb,
    sandbox: &Sandbox,
    file: &str,
    token: &CancellationToken,
) -> (Reconciler, Metrics) {
    let (url, key) = sandbox_http(sandbox, None, token).await;
    let config = crate::harness::config_with(db, file);
    let store = ordersync::db::Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::standalone(config.stuck_after);
    let exchange = Arc::new(client(&url, key, &metrics));
    (Reconciler::new(store, exchange, metrics.clone(), settings(&config)), metrics)
}

async fn malformed_answers_leave_the_order_as_it_was(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    crate::harness::incident(&db, &sandbox).await;
    sandbox.set_faults(Faults { malformed_rate: 1.0, ..Faults::default() });
    let token = CancellationToken::new();
    let (reconciler, metrics) = http_reconciler(&db, &sandbox, "", &token).await;

    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();

    assert!(report.checked.iter().all(|c| c.verdict == VerdictWord::Unresolved), "{report:?}");
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM trades WHERE status = 'pending'").await, 3);
    assert_eq!(metrics.order_checks.with_label_values(&["unknown"]).get(), 3);
}
crate::both!(malformed_answers_leave_the_order_as_it_was);

/// Found by the fault run: whole answers lost (unreadable, truncated, 5xx) flagged every order of their batch
/// after three in a row (thousands of flags for one exchange incident, each written to the bot's database).
/// The exchange's trouble is counted by the exchange metrics; an order is flagged for its own (a 404 in a
/// row), and the exchange's silence neither counts towards that run nor ends it.
async fn an_exchange_that_does_not_answer_flags_no_order(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let open = crate::harness::open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(20)).await;
    let ghost = "0c5e2f39-0000-4000-8000-000000000001";
    db.insert_pending(ghost, "alpha", "AVNT-USD", Utc::now() - chrono::Duration::minutes(18)).await;
    let token = CancellationToken::new();
    // Unresolved orders back off from the poll interval (10, 20, 40 ms here): each pass below is past it.
    let (reconciler, metrics) =
        http_reconciler(&db, &sandbox, "flag_after = 3\npoll_interval = \"10ms\"", &token).await;
    let ids = [OrderId::parse(&open).unwrap(), OrderId::parse(ghost).unwrap()];
    let pass = || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
        let verdict = |id: &str| report.checked.iter().find(|c| c.order_id == id).unwrap().verdict.as_str();
        (verdict(&open), verdict(ghost))
    };

    // Two checks about the ghost: a 404 from Get Order each time (List Orders leaves it out).
    assert_eq!(pass().await, ("in_sync", "unresolved"));
    assert_eq!(pass().await, ("in_sync", "unresolved"));
    let before = reconciler.store().check_states(&ids).await.unwrap();
    assert_eq!(before[&ids[1]].unresolved_in_a_row, 2);
    for faults in [
        Faults { malformed_rate: 1.0, ..Faults::default() },
        Faults { truncated_rate: 1.0, ..Faults::default() },
        Faults { error_5xx_rate: 1.0, ..Faults::default() },
        Faults { malformed_rate: 1.0, ..Faults::default() },
    ] {
        sandbox.set_faults(faults.clone());
        assert_eq!(pass().await, ("unresolved", "unresolved"), "{faults:?}");
    }
    assert_eq!(metrics.flagged_orders.get(), 0, "no order flagged for the exchange's silence");
    let during = reconciler.store().check_states(&ids).await.unwrap();
    for id in &ids {
        assert_eq!(during[id], before[id], "nothing written about {id} while the exchange did not answer");
    }
    assert_eq!(db.trade(&open).await.status, "pending");
    assert_eq!(db.trade(ghost).await.status, "pending");

    // The exchange answers again: the ghost's third 404 in a row flags it, the open order is still in sync.
    sandbox.set_faults(Faults::default());
    assert_eq!(pass().await, ("in_sync", "flagged"));
    assert_eq!(metrics.flagged_orders.get(), 1);
    assert_eq!(requests(&metrics, "get_order", "not_found"), 3, "the ghost confirmed each time, never the open order");
}
crate::both!(an_exchange_that_does_not_answer_flags_no_order);

/// Found by the fault run: an exchange that leaves orders out of List Orders (eventual consistency) made every
/// pass confirm each of them with Get Order, one request per order, and the backlog grew behind the rate
/// limit. An order the exchange answered for at its last check is known to exist: left out once, it is asked
/// again in the next batch; only one left out again is confirmed.
async fn an_order_left_out_of_list_orders_once_costs_no_request_of_its_own(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    let mut ids = Vec::new();
    for bot in ["alpha", "beta", "gamma"] {
        ids.push(crate::harness::open_order(&db, &sandbox, bot, chrono::Duration::minutes(20)).await);
    }
    let token = CancellationToken::new();
    let (reconciler, metrics) = http_reconciler(&db, &sandbox, "", &token).await;
    let get_orders = || ["ok", "not_found"].iter().map(|outcome| requests(&metrics, "get_order", outcome)).sum::<u64>();
    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert!(report.checked.iter().all(|c| c.verdict == VerdictWord::InSync), "{report:?}");

    // Two fill on the exchange, and the next List Orders leaves all three out.
    for id in &ids[..2] {
        sandbox.fill(id, None, Some(dec("0.84")), Some(Utc::now() - chrono::Duration::minutes(1))).unwrap();
    }
    sandbox.set_faults(Faults { not_found_rate: 1.0, ..Faults::default() });
    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.checked.len(), 3);
    for checked in &report.checked {
        assert_eq!(checked.verdict, VerdictWord::Unresolved, "{checked:?}");
        assert!(checked.detail.as_deref().unwrap().contains("left out of the List Orders answer"), "{checked:?}");
    }
    assert_eq!(get_orders(), 0, "no Get Order for an order the exchange answered for before");

    // The next batch answers for them: the two filled ones are corrected, still without a Get Order.
    sandbox.set_faults(Faults::default());
    let report = reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.count(CheckResult::Corrected), 2, "{report:?}");
    assert_eq!(get_orders(), 0);
    for id in &ids[..2] {
        assert_eq!(db.trade(id).await.status, "completed");
    }

    // Left out twice in a row: the second time it is confirmed with Get Order (here 404 as well).
    sandbox.set_faults(Faults { not_found_rate: 1.0, ..Faults::default() });
    reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert_eq!(get_orders(), 0);
    reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    assert_eq!(requests(&metrics, "get_order", "not_found"), 1);
    assert_eq!(db.trade(&ids[2]).await.status, "pending");
}
crate::both!(an_order_left_out_of_list_orders_once_costs_no_request_of_its_own);

/// Demo-style: the exchange ends orders the bot never hears of; with 10% 5xx and 10% 429 injected, every
/// ended order is fixed, with the right status, and no live order is touched.
async fn with_faults_everything_ended_is_fixed_and_nothing_wrongly(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(7);
    let mut expected = HashMap::new();
    for n in 0..120 {
        let id =
            crate::harness::open_order(&db, &sandbox, &format!("bot{}", n % 3), chrono::Duration::minutes(30)).await;
        let status = match n % 6 {
            0 => "pending",
            1 => {
                sandbox.end(&id, "CANCELLED").unwrap();
                "cancelled"
            }
            2 => {
                sandbox.fill(&id, Some(dec("4")), None, None).unwrap();
                sandbox.end(&id, "EXPIRED").unwrap();
                "expired"
            }
            _ => {
                sandbox.fill(&id, None, Some(dec("0.8373")), None).unwrap();
                "completed"
            }
        };
        expected.insert(id, status);
    }
    sandbox.set_faults(Faults { error_5xx_rate: 0.1, rate_limit_rate: 0.1, ..Faults::default() });
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(&sandbox, None, &token).await;
    let config = crate::harness::config_with(&db, "batch_size = 20");
    let store = ordersync::db::Store::connect(&db.url, &config.trades).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::standalone(config.stuck_after);
    let exchange = Arc::new(
        CoinbaseClient::new(&url, key, NonZeroU32::new(1000).unwrap(), metrics.clone())
            .unwrap()
            .with_retry(fast_retry()),
    );
    let reconciler = Reconciler::new(store, exchange, metrics.clone(), settings(&config));

    for _ in 0..5 {
        reconciler.pass(Mode::Apply, &CancellationToken::new()).await.unwrap();
    }

    for (id, status) in &expected {
        let trade = db.trade(id).await;
        assert_eq!(&trade.status, status, "{id}");
        if *status == "completed" {
            assert_eq!(trade.filled_price, Some(dec("0.8373")));
        }
    }
    let injected = requests(&metrics, "list_orders", "transient") + requests(&metrics, "list_orders", "rate_limited");
    assert!(injected > 0, "faults were injected");
}
crate::both!(with_faults_everything_ended_is_fixed_and_nothing_wrongly);

/// Never more than `rate_limit` requests in any one-second window, whatever the burst: a counting server
/// records when each request arrives while 40 tasks ask at once, after a quiet spell (the worst case for a
/// token bucket, which lets 2n - 1 through in that second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_in_every_one_second_window() {
    use axum::routing::get;
    let arrivals: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().route(
        ordersync::exchange::coinbase::KEY_PERMISSIONS_PATH,
        get(move || {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Instant::now());
                axum::Json(serde_json::json!({"can_view": true, "can_trade": true, "can_transfer": false,
                    "portfolio_uuid": "p", "portfolio_type": "DEFAULT"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let metrics = Metrics::standalone(Duration::from_secs(300));
    let key = CdpKey::generate("organizations/test/apiKeys/test");
    let client =
        Arc::new(CoinbaseClient::new(&format!("http://{addr}"), key, NonZeroU32::new(5).unwrap(), metrics).unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.key_permissions().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let mut times = arrivals.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 40);
    // The server sees them a little after the client lets them go: allow 50 ms of delivery jitter.
    let busiest = times
        .iter()
        .map(|start| {
            times.iter().filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_millis(950)).count()
        })
        .max()
        .unwrap();
    assert!(busiest <= 5, "{busiest} requests within one second (limit 5)");
    let span = times.last().unwrap().duration_since(times[0]);
    assert!(span >= Duration::from_millis(6900), "40 requests at 5/s take at least 7 s: {span:?}");
}

#[tokio::test]
async fn a_rate_limit_above_coinbases_is_refused() {
    let overrides = ordersync::config::Overrides::default().with("coinbase-rate-limit", "50");
    let file = ordersync::config::FileConfig::default();
    let error =
        ordersync::config::resolve(&overrides, &file, "test.toml", &ordersync::config::System).unwrap_err().to_string();
    assert!(error.contains("a whole number from 1 to 30"), "{error}");
}
