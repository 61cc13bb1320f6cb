//! Several Coinbase accounts: each row is asked about with its own account's key (by the account column,
//! else the bot patterns, else the default account), and a row no account claims is reported and left alone.

use chrono::Utc;
use ordersync::sandbox::{NewOrder, Sandbox};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::cli::{ordersync, run};
use crate::harness::{dec, sandbox_http_keys, Backend, TestDb};

const KEY_A: &str = "organizations/team/apiKeys/alpha";
const KEY_B: &str = "organizations/team/apiKeys/beta";

/// A filled order placed with `key`, and its pending row for `bot` (with `account` in the account column).
async fn filled(db: &TestDb, sandbox: &Sandbox, key: &str, bot: &str, account: Option<&str>) -> String {
    let placed = Utc::now() - chrono::Duration::minutes(30);
    let new = NewOrder {
        product_id: "AVNT-USD".into(),
        base_size: dec("100"),
        limit_price: dec("0.84"),
        created_time: Some(placed),
        account: Some(key.into()),
        ..NewOrder::default()
    };
    let id = sandbox.create_order(new).unwrap();
    sandbox.fill(&id, None, None, Some(placed + chrono::Duration::minutes(1))).unwrap();
    db.insert_pending(&id, bot, "AVNT-USD", placed).await;
    if let Some(account) = account {
        db.exec(&format!("UPDATE trades SET account = '{account}' WHERE order_id = '{id}'")).await;
    }
    id
}

async fn two_accounts_each_row_asked_with_its_own_key(backend: Backend) {
    let db = TestDb::with_trades(backend).await;
    db.exec("ALTER TABLE trades ADD COLUMN account TEXT").await;
    let sandbox = Sandbox::new(1);
    sandbox.record_requests();
    // By bot pattern: alpha-1 is account a's. By the column: the row names b, whatever its bot.
    let by_bot = filled(&db, &sandbox, KEY_A, "alpha-1", None).await;
    let by_column = filled(&db, &sandbox, KEY_B, "alpha-2", Some("b")).await;
    let by_bot_b = filled(&db, &sandbox, KEY_B, "beta-7", None).await;
    // No account claims gamma-1 (there is no default): filled on the exchange, yet never asked, never written.
    let nobody = filled(&db, &sandbox, KEY_A, "gamma-1", None).await;
    // The column names an account that does not exist: never a guess with another key.
    let unknown = filled(&db, &sandbox, KEY_A, "alpha-3", Some("c")).await;

    let token = CancellationToken::new();
    let (url, keys) = sandbox_http_keys(&sandbox, &[KEY_A, KEY_B], None, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("a.pem");
    std::fs::write(&key_file, keys[0].to_pem().unwrap().expose_secret()).unwrap();
    let config = dir.path().join("ordersync.toml");
    std::fs::write(
        &config,
        format!(
            "[trades]\naccount = \"account\"\n\n\
             [[accounts]]\nname = \"a\"\nkey_file = \"{}\"\nkey_name = \"{KEY_A}\"\nbots = [\"alpha-*\"]\n\n\
             [[accounts]]\nname = \"b\"\nprivate_key_env = \"TEST_KEY_B\"\nkey_name = \"{KEY_B}\"\nbots = [\"beta-*\"]\n",
            key_file.display()
        ),
    )
    .unwrap();
    let command = || {
        let mut command = ordersync();
        command
            .args(["--config", config.to_str().unwrap()])
            .env("ORDERSYNC_DATABASE_URL", &db.url)
            .env("ORDERSYNC_COINBASE_API_URL", &url)
            .env("ORDERSYNC_GRACE", "0s")
            .env("TEST_KEY_B", keys[1].to_pem().unwrap().expose_secret());
        command
    };

    let audit = run(command().args(["audit", "--json"])).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let audited: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    let unmatched: Vec<&str> =
        audited["unmatched_rows"].as_array().unwrap().iter().map(|u| u["order_id"].as_str().unwrap()).collect();
    assert_eq!(unmatched.len(), 2, "{}", audit.stdout);
    assert!(unmatched.contains(&nobody.as_str()) && unmatched.contains(&unknown.as_str()));
    let text = run(command().args(["audit"])).await;
    assert!(text.stdout.contains("2 rows of no configured account"), "{}", text.stdout);

    let real = run(command().args(["reconcile", "--once"])).await;
    assert_eq!(real.code, 0, "{}\n{}", real.stdout, real.stderr);
    for id in [&by_bot, &by_column, &by_bot_b] {
        assert_eq!(db.trade(id).await.status, "completed", "{id}: asked with its own account's key");
    }
    for id in [&nobody, &unknown] {
        assert_eq!(db.trade(id).await.status, "pending", "{id}: no account claims it, left alone");
    }
    // Each correction's event names the account whose key asked.
    for (id, account) in [(&by_bot, "a"), (&by_column, "b"), (&by_bot_b, "b")] {
        let rows = db.rows(&format!("SELECT account FROM ordersync_events WHERE order_id = '{id}'")).await;
        assert_eq!(rows, vec![vec![Some(account.to_string())]], "{id}");
    }
    let received = sandbox.received();
    for key in [KEY_A, KEY_B] {
        assert!(received.iter().any(|r| r.key == key), "{key} asked: {received:?}");
    }
    // Had an order been asked with the other key, the simulator would have answered 404 and it would still be
    // pending; and no Get Order was needed to confirm an absentee.
    assert!(received.iter().all(|r| !r.path.contains(&by_column)), "{received:?}");
}
crate::both!(two_accounts_each_row_asked_with_its_own_key);

#[tokio::test]
async fn account_settings_that_cannot_work_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ordersync.toml");
    std::fs::write(
        &config,
        "[[accounts]]\nname = \"has space\"\nkey_file = \"k.pem\"\n\n\
         [[accounts]]\nname = \"b\"\n\n\
         [[accounts]]\nname = \"c\"\nprivate_key_env = \"ORDERSYNC_TEST_UNSET_KEY\"\nbots = [\"grid-[\"]\nrate_limit = 50\n",
    )
    .unwrap();
    let out = run(ordersync()
        .args(["--config", config.to_str().unwrap(), "audit"])
        .env("ORDERSYNC_COINBASE_KEY_FILE", "/tmp/single.pem"))
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    for says in [
        "accounts[0].name",
        "has space",
        "accounts[1].key_file (account \"b\")",
        "accounts[2].private_key_env",
        "ORDERSYNC_TEST_UNSET_KEY",
        "accounts[2].rate_limit",
        "grid-[",
        "ORDERSYNC_COINBASE_KEY_FILE",
    ] {
        assert!(out.stderr.contains(says), "names {says:?}: {}", out.stderr);
    }
}

/// `serve` with two accounts: each has its own series from the first scrape, and `/readyz` checks each key on
/// its own: the one the exchange refuses makes the service not ready, naming that account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_are_per_account() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    let token = CancellationToken::new();
    let (url, keys) = sandbox_http_keys(&sandbox, &[KEY_A], None, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (good, refused) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
    std::fs::write(&good, keys[0].to_pem().unwrap().expose_secret()).unwrap();
    // B's key is one the exchange has never heard of.
    let stranger = ordersync::exchange::auth::CdpKey::generate(KEY_B);
    std::fs::write(&refused, stranger.to_pem().unwrap().expose_secret()).unwrap();
    let file = format!(
        "poll_interval = \"1h\"\n[coinbase]\nwebsocket = false\n\n\
         [[accounts]]\nname = \"a\"\nkey_file = \"{}\"\nkey_name = \"{KEY_A}\"\ndefault = true\n\n\
         [[accounts]]\nname = \"b\"\nkey_file = \"{}\"\nkey_name = \"{KEY_B}\"\nbots = [\"beta-*\"]\n",
        good.display(),
        refused.display()
    );
    let mut config = crate::harness::config_with(&db, &file);
    config.coinbase.api_url = url;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let parts = ordersync::app::AppParts { listener: Some(listener), ..Default::default() };
    let app = ordersync::app::App::build(&config, parts).await.unwrap();
    let (addr, metrics) = (app.addr(), app.metrics().clone());
    let scrape = metrics.encode();
    for series in ["ordersync_exchange_up{account=\"a\"} 0", "ordersync_exchange_up{account=\"b\"} 0"] {
        assert!(scrape.contains(series), "{series} from the first scrape:\n{scrape}");
    }
    let run = token.clone();
    tokio::spawn(async move { app.run(run).await.unwrap() });
    let ready_url = format!("http://{addr}/readyz");
    let mut body = serde_json::Value::Null;
    for _ in 0..100 {
        let response = reqwest::get(&ready_url).await.unwrap();
        body = response.json().await.unwrap();
        let says = |account: &str, what: &str| {
            body["checks"].as_array().unwrap().iter().any(|c| {
                let message = c["message"].as_str().unwrap_or_default();
                c["name"] == "exchange" && message.starts_with(&format!("account {account}:")) && message.contains(what)
            })
        };
        // Both keys probed: a's answered, b's refused.
        if says("a", "last authenticated answer") && says("b", "rejected") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(body["ready"], false, "{body}");
    let checks = body["checks"].as_array().unwrap();
    let a = checks.iter().find(|c| c["message"].as_str().unwrap_or_default().starts_with("account a:")).unwrap();
    assert_eq!(a["ok"], true, "a's key works: {body}");
    let b = checks.iter().find(|c| c["message"].as_str().unwrap_or_default().starts_with("account b:")).unwrap();
    assert!(b["message"].as_str().unwrap().contains("rejected the credentials"), "{body}");
    assert_eq!(metrics.exchange_up.with_label_values(&["a"]).get(), 1);
    assert_eq!(metrics.exchange_up.with_label_values(&["b"]).get(), 0);
    assert!(metrics.exchange_requests.with_label_values(&["b", "key_permissions", "unauthorized"]).get() >= 1);
    token.cancel();
}

/// One key under two `[[accounts]]` entries would get two rate limiters (twice Coinbase's limit) and two
/// user channels: refused at start, naming both accounts.
#[tokio::test]
async fn one_key_under_two_accounts_is_refused() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let key = ordersync::exchange::auth::CdpKey::generate(KEY_A);
    let path = dir.path().join("a.pem");
    std::fs::write(&path, key.to_pem().unwrap().expose_secret()).unwrap();
    let config = dir.path().join("ordersync.toml");
    std::fs::write(
        &config,
        format!(
            "[[accounts]]\nname = \"a\"\nkey_file = \"{0}\"\nkey_name = \"{KEY_A}\"\ndefault = true\n\n\
             [[accounts]]\nname = \"b\"\nkey_file = \"{0}\"\nkey_name = \"{KEY_A}\"\nbots = [\"beta-*\"]\n",
            path.display()
        ),
    )
    .unwrap();
    let out =
        run(ordersync().args(["--config", config.to_str().unwrap(), "audit"]).env("ORDERSYNC_DATABASE_URL", &db.url))
            .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("accounts \"a\" and \"b\" use the same API key"), "{}", out.stderr);
}
