//! Replicas on one PostgreSQL, as real processes: three `ordersync serve` share four accounts through
//! leases. The owner of one account is killed (-9) mid-run, another is stopped (SIGSTOP) for longer than
//! its lease and then resumed, and every replica's database connection is terminated. Then every order the
//! exchange ended is settled once with one event, no account was asked about by two replicas in one lease
//! epoch nor with an epoch older than one already used, and each takeover came within the documented bound.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use ordersync::sandbox::{NewOrder, Sandbox};
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::cli::ordersync;
use crate::harness::{dec, sandbox_http_keys, Backend, TestDb};

const ACCOUNTS: usize = 4;
const ORDERS_PER_ACCOUNT: usize = 12;
const LEASE: Duration = Duration::from_secs(3);

struct Replica {
    name: String,
    child: tokio::process::Child,
    metrics: String,
}

async fn start(name: &str, config: &std::path::Path, db: &TestDb, api: &str) -> Replica {
    let mut child = ordersync()
        .args(["--config", config.to_str().unwrap(), "--log-format", "json", "serve"])
        .args(["--listen", "127.0.0.1:0", "--poll-interval", "1s", "--grace", "0s", "--lease", "3s"])
        .env("ORDERSYNC_DATABASE_URL", &db.url)
        .env("ORDERSYNC_COINBASE_API_URL", api)
        .env(
            "ORDERSYNC_COINBASE_WS_URL",
            format!("ws{}{}", api.trim_start_matches("http"), ordersync::sandbox::server::WS_PATH),
        )
        .env("ORDERSYNC_REPLICA", name)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if log["message"] == "ordersync started" {
            let listen = log["listen"].as_str().unwrap().to_string();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Replica { name: name.into(), child, metrics: format!("http://{listen}/metrics") };
        }
    }
    panic!("replica {name} did not start");
}

/// Which accounts each replica says it serves (`ordersync_account_owner`); a stopped or dead one says nothing.
async fn owners(replicas: &[Replica]) -> BTreeMap<String, Vec<String>> {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for replica in replicas {
        let Ok(response) = http.get(&replica.metrics).send().await else { continue };
        let Ok(text) = response.text().await else { continue };
        for line in text.lines().filter(|l| l.starts_with("ordersync_account_owner{") && l.ends_with(" 1")) {
            let account = line.split('"').nth(1).unwrap().to_string();
            owners.entry(account).or_default().push(replica.name.clone());
        }
    }
    owners
}

async fn owner_of(replicas: &[Replica], account: &str) -> String {
    for _ in 0..100 {
        if let Some(names) = owners(replicas).await.get(account) {
            if names.len() == 1 {
                return names[0].clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nobody serves {account}");
}

/// A config file in `dir` with `head` and one `[[accounts]]` entry `a{i}` per key (its key file written
/// beside it; with `by_bot`, the bots `bot{i}-*` are its rows). Returns the file's path.
fn accounts_config(
    dir: &std::path::Path,
    keys: &[ordersync::exchange::auth::CdpKey],
    head: &str,
    by_bot: bool,
) -> std::path::PathBuf {
    let mut config = format!("{head}\n");
    for (i, key) in keys.iter().enumerate() {
        let path = dir.join(format!("k{i}.pem"));
        std::fs::write(&path, key.to_pem().unwrap().expose_secret()).unwrap();
        let bots = if by_bot { format!("bots = [\"bot{i}-*\"]\n") } else { String::new() };
        config.push_str(&format!(
            "[[accounts]]\nname = \"a{i}\"\nkey_file = \"{}\"\nkey_name = \"{}\"\n{bots}\n",
            path.display(),
            key.name()
        ));
    }
    let config_path = dir.join("ordersync.toml");
    std::fs::write(&config_path, config).unwrap();
    config_path
}

async fn signal(pid: u32, name: &str) {
    let status = tokio::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().await;
    assert!(status.unwrap().success());
}

/// `(replica, account, epoch)` from the User-Agent a replica sends.
fn tagged(user_agent: &str) -> Option<(String, String, i64)> {
    let inside = user_agent.split_once('(')?.1.trim_end_matches(')');
    let mut replica = None;
    let mut account = None;
    let mut epoch = None;
    for part in inside.split("; ") {
        match part.split_once(' ')? {
            ("replica", value) => replica = Some(value.to_string()),
            ("account", value) => account = Some(value.to_string()),
            ("epoch", value) => epoch = value.parse().ok(),
            _ => {}
        }
    }
    Some((replica?, account?, epoch?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_four_accounts_through_kill_stop_and_lost_connections() {
    let db = TestDb::with_trades(Backend::Postgres).await;
    let sandbox = Sandbox::new(3);
    sandbox.record_requests();
    let key_names: Vec<String> = (0..ACCOUNTS).map(|i| format!("organizations/team/apiKeys/k{i}")).collect();
    let names: Vec<&str> = key_names.iter().map(String::as_str).collect();
    let token = CancellationToken::new();
    let (api, keys) = sandbox_http_keys(&sandbox, &names, Some(30), &token).await;
    let dir = tempfile::tempdir().unwrap();
    // Every order ends in this run: a pass after a takeover may correct all of an account's pending rows.
    let config_path = accounts_config(dir.path(), &keys, "max_correction_share = 1.0\n", true);
    // Orders, open on the exchange and pending in the bot's table, each under its bot's account.
    let placed = Utc::now() - chrono::Duration::minutes(5);
    let mut orders: Vec<(usize, String)> = Vec::new();
    for (account, key_name) in key_names.iter().enumerate() {
        for n in 0..ORDERS_PER_ACCOUNT {
            let new = NewOrder {
                product_id: "AVNT-USD".into(),
                base_size: dec("10"),
                limit_price: dec("0.84"),
                created_time: Some(placed),
                account: Some(key_name.clone()),
                ..NewOrder::default()
            };
            let id = sandbox.create_order(new).unwrap();
            db.insert_pending(&id, &format!("bot{account}-{n}"), "AVNT-USD", placed).await;
            orders.push((account, id));
        }
    }

    let mut replicas = Vec::new();
    for name in ["r1", "r2", "r3"] {
        replicas.push(start(name, &config_path, &db, &api).await);
    }
    // Each account served by exactly one replica; three replicas, four accounts: once the first one has let
    // go of what is beyond its share, none serves more than two.
    let mut divided = BTreeMap::new();
    for _ in 0..150 {
        divided = owners(&replicas).await;
        let mut per_replica: HashMap<&String, usize> = HashMap::new();
        for names in divided.values() {
            for name in names {
                *per_replica.entry(name).or_default() += 1;
            }
        }
        if divided.len() == ACCOUNTS && divided.values().all(|r| r.len() == 1) && per_replica.values().all(|n| *n <= 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(divided.len(), ACCOUNTS, "{divided:?}");
    let busiest = divided.values().flatten().fold(HashMap::<&String, usize>::new(), |mut m, r| {
        *m.entry(r).or_default() += 1;
        m
    });
    assert!(busiest.values().all(|n| *n <= 2), "the accounts are divided: {divided:?}");

    // The exchange ends the orders over the run, a few at a time, while the faults happen.
    let filler = {
        let (sandbox, orders) = (sandbox.clone(), orders.clone());
        tokio::spawn(async move {
            for (index, (_, id)) in orders.iter().enumerate() {
                if index % 5 == 4 {
                    let _ = sandbox.end(id, "CANCELLED");
                } else {
                    let _ = sandbox.fill(id, None, None, None);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // SIGKILL the owner of a0.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_name = owner_of(&replicas, "a0").await;
    let killed = replicas.iter().position(|r| r.name == killed_name).unwrap();
    let killed_accounts: Vec<String> =
        owners(&replicas).await.into_iter().filter(|(_, r)| r.contains(&killed_name)).map(|(a, _)| a).collect();
    let killed_at = Utc::now();
    eprintln!("killed {killed_name} at {killed_at}, it served {killed_accounts:?}");
    signal(replicas[killed].child.id().unwrap(), "KILL").await;
    let _ = replicas[killed].child.wait().await;
    let alive: Vec<usize> = (0..replicas.len()).filter(|i| *i != killed).collect();

    // SIGSTOP one that serves accounts for longer than two leases, then SIGCONT it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now_owners = owners(&replicas).await;
    let stopped = *alive
        .iter()
        .find(|i| now_owners.values().any(|r| r.contains(&replicas[**i].name)))
        .expect("a live replica serves something");
    let stopped_name = replicas[stopped].name.clone();
    let stopped_accounts: Vec<String> =
        now_owners.into_iter().filter(|(_, r)| r.contains(&stopped_name)).map(|(a, _)| a).collect();
    let stopped_pid = replicas[stopped].child.id().unwrap();
    let stopped_at = Utc::now();
    signal(stopped_pid, "STOP").await;
    tokio::time::sleep(LEASE * 2 + Duration::from_secs(2)).await;
    signal(stopped_pid, "CONT").await;

    // Terminate every replica's database connections.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let terminated = db
        .rows(
            "SELECT COUNT(pg_terminate_backend(pid))::text FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    assert_ne!(terminated[0][0].as_deref(), Some("0"), "the replicas had connections to terminate");

    filler.await.unwrap();
    // Settled: every order the exchange ended, once, by ordersync, with one event each.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = db.count("SELECT CAST(COUNT(*) AS TEXT) FROM trades WHERE status = 'pending'").await;
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        db.count("SELECT CAST(COUNT(*) AS TEXT) FROM trades WHERE status = 'pending'").await,
        0,
        "every ended order settled"
    );
    let total = (ACCOUNTS * ORDERS_PER_ACCOUNT) as i64;
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_settlements").await, total, "each settled once");
    assert_eq!(
        db.count(
            "SELECT CAST(COUNT(*) AS TEXT) FROM (SELECT order_id FROM ordersync_events GROUP BY order_id HAVING COUNT(*) = 1) e"
        )
        .await,
        total,
        "each correction has exactly one event"
    );
    assert_eq!(db.count("SELECT CAST(COUNT(*) AS TEXT) FROM ordersync_events").await, total);

    // The simulator's log: which replica asked for which account, at which epoch, with which key.
    let received = sandbox.received();
    let mut by_epoch: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    let mut first_after_kill: BTreeMap<String, chrono::DateTime<Utc>> = BTreeMap::new();
    let mut first_after_stop: BTreeMap<String, chrono::DateTime<Utc>> = BTreeMap::new();
    for request in &received {
        let (replica, account, epoch) = tagged(&request.user_agent).unwrap_or_else(|| panic!("{request:?}"));
        let index: usize = account.trim_start_matches('a').parse().unwrap();
        assert_eq!(request.key, key_names[index], "{account} asked with its own key");
        by_epoch.entry((account.clone(), epoch)).or_default().insert(replica.clone());
        let seen = newest.entry(account.clone()).or_insert(epoch);
        assert!(epoch >= *seen, "{account}: {replica} asked at epoch {epoch} after epoch {seen} had begun");
        *seen = epoch;
        if killed_accounts.contains(&account) && replica != killed_name && request.at > killed_at {
            first_after_kill.entry(account.clone()).or_insert(request.at);
        }
        if stopped_accounts.contains(&account) && replica != stopped_name && request.at > stopped_at {
            first_after_stop.entry(account).or_insert(request.at);
        }
    }
    for ((account, epoch), replicas) in &by_epoch {
        assert_eq!(replicas.len(), 1, "{account} epoch {epoch} asked by {replicas:?}");
    }
    // Takeover within two leases (and the pass the new owner starts at once).
    for account in &killed_accounts {
        let at = first_after_kill.get(account).unwrap_or_else(|| panic!("{account} was never taken over"));
        let took = (*at - killed_at).to_std().unwrap();
        assert!(took <= LEASE * 2 + Duration::from_secs(1), "{account} taken over after {took:?}");
    }
    // And those of the stopped one, while it was stopped.
    assert!(!stopped_accounts.is_empty());
    for account in &stopped_accounts {
        let at = first_after_stop.get(account).unwrap_or_else(|| panic!("{account} was never taken over"));
        let took = (*at - stopped_at).to_std().unwrap();
        assert!(took <= LEASE * 2 + Duration::from_secs(1), "{account} taken over after {took:?} (stopped)");
    }

    for index in alive {
        signal(replicas[index].child.id().unwrap(), "TERM").await;
        let status =
            tokio::time::timeout(Duration::from_secs(30), replicas[index].child.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(0), "{} stops cleanly", replicas[index].name);
    }
    token.cancel();
}

/// A writer paused inside its transaction holds its account's lease row (the fence's `FOR SHARE`). Another
/// account's healthy owner keeps renewing meanwhile (each lease statement waits at most the lock timeout, and
/// each account is renewed on its own), and the held account is served again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_row_held_by_a_paused_writer_stops_no_other_account() {
    let db = TestDb::with_trades(Backend::Postgres).await;
    let sandbox = Sandbox::new(1);
    let token = CancellationToken::new();
    let names = ["organizations/team/apiKeys/k0", "organizations/team/apiKeys/k1"];
    let (api, keys) = sandbox_http_keys(&sandbox, &names, None, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = accounts_config(dir.path(), &keys, "", false);
    let mut replicas = vec![start("r1", &config_path, &db, &api).await, start("r2", &config_path, &db, &api).await];
    // Wait until each serves one.
    let mut divided = BTreeMap::new();
    for _ in 0..150 {
        divided = owners(&replicas).await;
        if divided.len() == 2 && divided.values().all(|r| r.len() == 1) && divided["a0"] != divided["a1"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(divided.len() == 2 && divided["a0"] != divided["a1"], "{divided:?}");
    let healthy = divided["a1"][0].clone();

    // Hold a0's lease row as a writer stopped between its fence and its commit would, for over two leases.
    let url = db.url.clone();
    let holder = tokio::spawn(async move {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = connection.begin().await.unwrap();
        sqlx::query("SELECT epoch FROM ordersync_leases WHERE account = 'a0' FOR SHARE")
            .execute(&mut *tx)
            .await
            .unwrap();
        tokio::time::sleep(LEASE * 3).await;
        tx.rollback().await.unwrap();
    });
    let held_until = Instant::now() + LEASE * 3;
    while Instant::now() < held_until {
        let now = owners(&replicas).await;
        assert_eq!(now.get("a1"), Some(&vec![healthy.clone()]), "a1's healthy owner kept it: {now:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    holder.await.unwrap();
    // a0 is served again within two leases of the lock going.
    let freed = Instant::now();
    let mut now = BTreeMap::new();
    while freed.elapsed() < LEASE * 2 + Duration::from_secs(1) {
        now = owners(&replicas).await;
        if now.get("a0").is_some_and(|r| r.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(now.get("a0").is_some_and(|r| r.len() == 1), "a0 served again: {now:?}");
    for replica in &mut replicas {
        signal(replica.child.id().unwrap(), "TERM").await;
        let _ = replica.child.wait().await;
    }
    token.cancel();
}
