//! The bot's real schema, driven through the binary: a production PostgreSQL table (uuid ids, an enum
//! status, timestamptz, numeric and double precision figures), SQLite with every timestamp form SQLite's
//! own functions write, rows whose creation time cannot be read, and a mapping that does not fit.

use chrono::{DateTime, Utc};
use ordersync::sandbox::{NewOrder, Sandbox};

use crate::cli::{run, setup_on};
use crate::harness::{dec, incident, Backend, TestDb};

/// A bot's production table on PostgreSQL.
const PRODUCTION: &str = "CREATE TYPE trade_status AS ENUM ('pending', 'completed', 'cancelled', 'expired', 'failed');
CREATE TABLE trades (
    order_id     uuid PRIMARY KEY,
    bot_id       text,
    product_id   varchar(32),
    status       trade_status NOT NULL DEFAULT 'pending',
    created_at   timestamptz NOT NULL DEFAULT now(),
    filled_at    timestamp,
    filled_price numeric(20, 10),
    filled_size  double precision
);
CREATE INDEX trades_pending ON trades (status, created_at);";

/// An order on the simulator, filled at `price` at a known time, placed `age` ago.
fn filled(sandbox: &Sandbox, price: &str, age: chrono::Duration) -> (String, DateTime<Utc>) {
    let placed = Utc::now() - age;
    let new = NewOrder {
        product_id: "AVNT-USD".into(),
        base_size: dec("100"),
        limit_price: dec(price),
        created_time: Some(placed),
        ..NewOrder::default()
    };
    let id = sandbox.create_order(new).unwrap();
    let at = DateTime::from_timestamp_millis((placed + chrono::Duration::seconds(4)).timestamp_millis()).unwrap();
    sandbox.fill(&id, None, Some(dec(price)), Some(at)).unwrap();
    (id, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_postgres_table_with_uuid_enum_and_timestamptz_is_audited_and_reconciled() {
    let db = TestDb::empty(Backend::Postgres).await;
    db.exec(PRODUCTION).await;
    let sandbox = Sandbox::new(1);
    let mut orders = Vec::new();
    for price in ["0.8373", "0.2196"] {
        let (id, at) = filled(&sandbox, price, chrono::Duration::hours(3));
        db.exec(&format!(
            "INSERT INTO trades (order_id, bot_id, product_id, created_at) VALUES ('{id}', 'alpha', 'AVNT-USD', \
             now() - interval '3 hours')"
        ))
        .await;
        orders.push((id, at, price));
    }
    let setup = setup_on(db, &sandbox).await;

    let audit = run(setup.command().args(["audit", "--json", "--fail-on-mismatch"])).await;
    assert_eq!(audit.code, 3, "{}", audit.stderr);
    let audited: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    let rows = audited["orders"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["verdict"] == "mismatch" && r["age_seconds"].as_i64() >= Some(3 * 3600 - 60)));

    let reconciled = run(setup.command().args(["reconcile", "--once"])).await;
    assert_eq!(reconciled.code, 0, "{}", reconciled.stderr);
    assert!(reconciled.stdout.contains("2 corrected"), "{}", reconciled.stdout);
    for (id, at, price) in &orders {
        let trade = setup.db.trade(id).await;
        assert_eq!(trade.status, "completed");
        assert_eq!(trade.filled_at, Some(*at), "a plain timestamp column holds the exchange's UTC time");
        assert_eq!(trade.filled_price, Some(dec(price)));
        assert_eq!(trade.filled_size, Some(dec("100")));
    }
    let manual = run(setup.command().args(["audit", "--fail-on-mismatch"])).await;
    assert_eq!(manual.code, 0, "{}{}", manual.stdout, manual.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_that_does_not_fit_is_one_message_naming_every_problem() {
    let db = TestDb::empty(Backend::Postgres).await;
    db.exec(
        "CREATE TYPE bot_state AS ENUM ('open', 'done', 'cancelled', 'expired', 'failed');
         CREATE TABLE trades (order_id integer, status bot_state, created_at timestamptz, filled_at date)",
    )
    .await;
    let setup = setup_on(db, &Sandbox::new(1)).await;
    let out = run(setup.command().args(["audit"])).await;
    assert_eq!(out.code, 2, "a configuration error: {}", out.stderr);
    for expected in [
        "does not fit the [trades] mapping",
        "column order_id (trades.order_id): a column of type integer cannot hold Coinbase order ids",
        "status words [\"pending\", \"completed\"] are not labels of the enum bot_state",
        "column filled_at (trades.filled_at): a column of type date cannot hold a time of day",
    ] {
        assert!(out.stderr.contains(expected), "{expected:?} in {}", out.stderr);
    }
    assert_eq!(out.stderr.matches("does not fit").count(), 1, "said once: {}", out.stderr);
}

/// SQLite keeps `created_at` however the bot wrote it. Each form reads as the same instant; a value that is
/// no time at all is still reconciled, listed with its raw value, counted, and its age is unknown.
async fn every_sqlite_timestamp_form(form: &str, value: &str) {
    let db = TestDb::empty(Backend::Sqlite).await;
    let created_type = if form.starts_with("text") { "TEXT" } else { "NUMERIC" };
    db.exec(&format!(
        "CREATE TABLE trades (order_id TEXT PRIMARY KEY, bot_id TEXT, status TEXT NOT NULL, \
         created_at {created_type} NOT NULL, filled_at TEXT, filled_price REAL, filled_size REAL)"
    ))
    .await;
    let sandbox = Sandbox::new(1);
    let (id, _) = filled(&sandbox, "0.8373", chrono::Duration::hours(2));
    db.exec(&format!(
        "INSERT INTO trades (order_id, bot_id, status, created_at) VALUES ('{id}', 'alpha', 'pending', {value})"
    ))
    .await;
    let setup = setup_on(db, &sandbox).await;

    let audit = run(setup.command().args(["audit", "--json"])).await;
    assert_eq!(audit.code, 0, "{form}: {}", audit.stderr);
    let audited: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    let row = &audited["orders"][0];
    assert_eq!(row["order_id"], id.as_str(), "{form}: never invisible");
    if form == "unreadable" {
        assert_eq!((row["age_seconds"].as_i64(), row["created_raw"].as_str()), (None, Some("soon")), "{form}");
        let text = run(setup.command().args(["audit"])).await;
        assert!(text.stdout.contains("created_at = \"soon\"") && text.stdout.contains("unknown"), "{}", text.stdout);
    } else {
        let age = row["age_seconds"].as_i64().unwrap();
        assert!((2 * 3600 - 120..=2 * 3600 + 120).contains(&age), "{form}: {age}");
    }
    let reconciled = run(setup.command().args(["reconcile", "--once"])).await;
    assert!(reconciled.stdout.contains("1 corrected"), "{form}: {}{}", reconciled.stdout, reconciled.stderr);
    assert_eq!(setup.db.trade(&id).await.status, "completed", "{form}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_created_at_as_datetime_now_text() {
    every_sqlite_timestamp_form("text datetime", "datetime('now', '-2 hours')").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_created_at_as_iso_8601_text() {
    every_sqlite_timestamp_form("text iso", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_created_at_as_unix_epoch_integer() {
    every_sqlite_timestamp_form("epoch integer", "CAST(strftime('%s', 'now', '-2 hours') AS INTEGER)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_created_at_as_unix_epoch_real() {
    every_sqlite_timestamp_form("epoch real", "(julianday('now', '-2 hours') - 2440587.5) * 86400.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_created_at_as_julian_day() {
    every_sqlite_timestamp_form("julian day", "julianday('now', '-2 hours')").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_created_at_that_is_no_time_at_all() {
    every_sqlite_timestamp_form("unreadable", "'soon'").await;
}

/// A role with nothing but SELECT on the bot's table runs audit, a dry run and the report on a database
/// ordersync never migrated: they create, alter and write nothing. `migrate` is the one command that runs
/// DDL, and says why it cannot, once. Granted SELECT on ordersync's tables later, the role reads them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_role_audits_dry_runs_and_reports_and_nothing_is_written() {
    let db = TestDb::with_trades(Backend::Postgres).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let role = format!("ordersync_ro_{}", uuid::Uuid::new_v4().simple());
    let database = db.url.rsplit('/').next().unwrap().to_string();
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE {database} TO {role}; \
         GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT ON trades TO {role}"
    ))
    .await;
    let read_only = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let setup = setup_on(db, &sandbox).await;
    let as_reader = |args: &[&str]| {
        let mut command = setup.command();
        command.env("ORDERSYNC_DATABASE_URL", &read_only).args(args);
        command
    };
    let ours = "SELECT CAST(COUNT(*) AS TEXT) FROM pg_tables WHERE tablename LIKE 'ordersync%'";

    let audit = run(&mut as_reader(&["audit", "--json"])).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let audited: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(audited["orders"].as_array().unwrap().len(), 3);
    let dry = run(&mut as_reader(&["reconcile", "--once", "--dry-run"])).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("3 would be corrected"), "{}", dry.stdout);
    let report = run(&mut as_reader(&["report", "--since", "1d"])).await;
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(report.stdout.contains("no data"), "{}", report.stdout);
    assert_eq!(setup.db.count(ours).await, 0, "nothing created");

    let migrate = run(&mut as_reader(&["migrate"])).await;
    assert_eq!(migrate.code, 2, "a role without the privilege is a configuration matter: {}", migrate.stderr);
    assert_eq!(migrate.stderr.matches("permission denied").count(), 1, "each cause once: {}", migrate.stderr);
    assert!(migrate.stderr.contains("run `ordersync migrate` as the schema's owner"), "{}", migrate.stderr);
    // A runtime role started without --no-migrate is told the fix too.
    let serve = run(&mut as_reader(&["reconcile", "--once"])).await;
    assert_eq!(serve.code, 2, "{}", serve.stderr);
    assert!(serve.stderr.contains("--no-migrate"), "{}", serve.stderr);

    let migrated = run(setup.command().arg("migrate")).await;
    assert_eq!(migrated.code, 0, "{}", migrated.stderr);
    setup.db.exec(&format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")).await;
    let again = run(&mut as_reader(&["audit", "--fail-on-mismatch"])).await;
    assert_eq!(again.code, 3, "reads ordersync's tables now: {}", again.stderr);
    setup.db.exec(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}

/// `serve --no-migrate` refuses a database whose ordersync tables are not current, naming the fix; and a
/// configuration error (no key) is found before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_finds_every_error_before_writing_anything() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let setup = setup_on(db, &Sandbox::new(1)).await;
    let ours = "SELECT CAST(COUNT(*) AS TEXT) FROM sqlite_master WHERE name LIKE 'ordersync%'";

    let no_key = run(setup
        .command()
        .env_remove("ORDERSYNC_COINBASE_KEY_FILE")
        .env_remove("ORDERSYNC_COINBASE_KEY_NAME")
        .args(["serve", "--listen", "127.0.0.1:0"]))
    .await;
    assert_eq!(no_key.code, 2, "{}", no_key.stderr);
    assert!(no_key.stderr.contains("ORDERSYNC_COINBASE_KEY_FILE is not set"), "{}", no_key.stderr);
    assert_eq!(setup.db.count(ours).await, 0, "no table created before the key error");

    let refused = run(setup.command().args(["serve", "--no-migrate", "--listen", "127.0.0.1:0"])).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("run `ordersync migrate`"), "{}", refused.stderr);
    assert_eq!(setup.db.count(ours).await, 0);
    let dry = run(setup.command().args(["reconcile", "--once", "--no-migrate"])).await;
    assert_eq!(dry.code, 2, "{}", dry.stderr);
}

/// The runtime role of the README, with exactly its GRANTs (UPDATE only on the columns ordersync writes),
/// reconciles with `--no-migrate` after an owner ran `ordersync migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_runtime_grants_are_enough() {
    let db = TestDb::with_trades(Backend::Postgres).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    let setup = setup_on(db, &sandbox).await;
    assert_eq!(run(setup.command().arg("migrate")).await.code, 0);
    let role = format!("ordersync_rt_{}", uuid::Uuid::new_v4().simple());
    let database = setup.db.url.rsplit('/').next().unwrap().to_string();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let grants = readme.split("```sql runtime").nth(1).and_then(|rest| rest.split("```").next()).expect("the grants");
    setup.db.exec(&format!("CREATE ROLE {role} LOGIN")).await;
    setup.db.exec(&grants.replace("ordersync_runtime", &role).replace("trading", &database)).await;
    let mut command = setup.command();
    command.env("ORDERSYNC_DATABASE_URL", setup.db.url.replacen("postgres@", &format!("{role}@"), 1)).args([
        "reconcile",
        "--once",
        "--no-migrate",
    ]);
    let out = run(&mut command).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("3 corrected"), "{}", out.stdout);
    setup.db.exec(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}
