//! The `ordersync` binary as a user runs it: configuration errors, precedence, help, the one-shot
//! commands, logs, signals, and the README's demo command.

use std::process::Stdio;
use std::time::Duration;

use ordersync::sandbox::Sandbox;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::harness::{incident, open_order, sandbox_http, Backend, TestDb, INCIDENT};

const BIN: &str = env!("CARGO_BIN_EXE_ordersync");

/// The binary with a clean `ORDERSYNC_*` environment.
pub fn ordersync() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("ORDERSYNC_") {
            command.env_remove(name);
        }
    }
    command.env("ORDERSYNC_LOG", "info").kill_on_drop(true);
    command
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(command: &mut Command) -> Run {
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("finished").unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn version_says_the_release_the_commit_and_the_build_date() {
    let out = run(ordersync().arg("--version")).await;

    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out.stdout.trim();
    let rest =
        line.strip_prefix(&format!("ordersync {} (", env!("CARGO_PKG_VERSION"))).unwrap_or_else(|| panic!("{line}"));
    let (revision, date) = rest.trim_end_matches(')').split_once(", built ").unwrap_or_else(|| panic!("{line}"));
    assert!(
        revision == "unknown" || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    assert!(chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(), "{line}");
    assert_eq!(revision, ordersync::metrics::REVISION);
    assert_eq!(date, ordersync::metrics::BUILD_DATE);
}

#[tokio::test]
async fn bad_values_fail_at_start_naming_every_key_and_what_is_accepted() {
    let out = run(ordersync()
        .args(["reconcile", "--once"])
        .env("ORDERSYNC_POLL_INTERVAL", "soon")
        .env("ORDERSYNC_LOG", "ordersync=loud")
        .env("ORDERSYNC_DATABASE_URL", "mysql://bot@db/trades"))
    .await;

    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--poll-interval / ORDERSYNC_POLL_INTERVAL: invalid value \"soon\""), "{}", out.stderr);
    assert!(out.stderr.contains("e.g. 30s, 5m, 2h"), "{}", out.stderr);
    assert!(out.stderr.contains("--database-url / ORDERSYNC_DATABASE_URL: invalid value \"mysql://bot@db/trades\""));
    assert!(out.stderr.contains("--log / ORDERSYNC_LOG: invalid value \"ordersync=loud\""), "{}", out.stderr);
}

/// What is missing or cannot work is said in one round too: no database, a key file that is not there, and
/// a public address without a token, all in one refusal before anything connects or listens.
#[tokio::test]
async fn everything_a_command_lacks_is_said_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("missing-key.json");
    let out = run(ordersync().args(["serve", "--listen", "0.0.0.0:0"]).env("ORDERSYNC_COINBASE_KEY_FILE", &key)).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    for said in ["ORDERSYNC_DATABASE_URL is not set", "missing-key.json", "ORDERSYNC_API_TOKEN is required"] {
        assert!(out.stderr.contains(said), "{said}: {}", out.stderr);
    }
    // A command says only what it needs: report reads no key and listens nowhere.
    let report = run(ordersync().args(["report"]).env("ORDERSYNC_COINBASE_KEY_FILE", &key)).await;
    assert_eq!(report.code, 2, "{}", report.stderr);
    assert!(report.stderr.contains("ORDERSYNC_DATABASE_URL is not set"), "{}", report.stderr);
    assert!(!report.stderr.contains("missing-key") && !report.stderr.contains("API_TOKEN"), "{}", report.stderr);
}

#[tokio::test]
async fn flags_beat_the_environment_and_the_environment_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ordersync.toml");
    std::fs::write(&file, "poll_interval = \"bad-in-file\"\n").unwrap();
    let file = file.to_str().unwrap();

    let file_only = run(ordersync().args(["reconcile", "--once", "--config", file])).await;
    assert_eq!(file_only.code, 2);
    assert!(file_only.stderr.contains(&format!("poll_interval in {file}")), "{}", file_only.stderr);

    let env_wins =
        run(ordersync().args(["reconcile", "--once", "--config", file]).env("ORDERSYNC_POLL_INTERVAL", "bad-in-env"))
            .await;
    assert!(
        env_wins.stderr.contains("\"bad-in-env\"") && !env_wins.stderr.contains("bad-in-file"),
        "{}",
        env_wins.stderr
    );

    // A flag wins, written after the command's name or before it (as before each command had its own).
    for args in [
        vec!["reconcile", "--once", "--config", file, "--poll-interval", "5s"],
        vec!["--config", file, "--poll-interval", "5s", "reconcile", "--once"],
    ] {
        let flag_wins = run(ordersync().args(&args).env("ORDERSYNC_POLL_INTERVAL", "bad-in-env")).await;
        assert!(!flag_wins.stderr.contains("poll_interval"), "the flag's good value wins: {}", flag_wins.stderr);
        assert!(flag_wins.stderr.contains("ORDERSYNC_COINBASE_KEY_FILE is not set"), "{}", flag_wins.stderr);
        assert_eq!(flag_wins.code, 2);
    }
    // After the name beats before it.
    let after_wins =
        run(ordersync().args(["--poll-interval", "soon", "reconcile", "--once", "--poll-interval", "5s"])).await;
    assert!(!after_wins.stderr.contains("soon"), "{}", after_wins.stderr);
}

/// Each command offers the settings it reads and no others, in its `--help` and on its command line; a
/// setting it does not read, written before its name, is refused with the way to find the right ones.
#[tokio::test]
async fn each_command_takes_only_the_settings_it_reads() {
    let help = |command: &'static str| async move { run(ordersync().args([command, "--help"])).await.stdout };
    let sandbox = help("sandbox").await;
    for absent in ["--database-url", "--smtp-host", "--email-to", "--config", "--poll-interval", "--api-token"] {
        assert!(!sandbox.contains(absent), "sandbox --help lists {absent}:\n{sandbox}");
    }
    assert!(sandbox.contains("--log-format") && sandbox.contains("--clock-skew-ms"), "{sandbox}");
    let migrate = help("migrate").await;
    assert!(migrate.contains("--database-url") && migrate.contains("--config"), "{migrate}");
    for absent in ["--smtp-host", "--poll-interval", "--coinbase-key-file", "--listen"] {
        assert!(!migrate.contains(absent), "migrate --help lists {absent}:\n{migrate}");
    }
    let serve = help("serve").await;
    for present in
        ["--database-url", "--smtp-host", "--poll-interval", "--coinbase-key-file", "--listen", "E-mail alerts"]
    {
        assert!(serve.contains(present), "serve --help lacks {present}:\n{serve}");
    }
    let prune = help("prune").await;
    assert!(prune.contains("--retention") && !prune.contains("--smtp-host"), "{prune}");

    let refused = run(ordersync().args(["--smtp-host", "mail.example", "migrate"])).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--smtp-host not read by this command"), "{}", refused.stderr);
    assert!(refused.stderr.contains("ordersync migrate --help"), "{}", refused.stderr);
    let after_name = run(ordersync().args(["migrate", "--smtp-host", "mail.example"])).await;
    assert_eq!(after_name.code, 2, "clap refuses it: {}", after_name.stderr);
    // A setting a command does not read, in the environment, is not its business.
    let ignored = run(ordersync().args(["sandbox", "--help"]).env("ORDERSYNC_POLL_INTERVAL", "soon")).await;
    assert_eq!(ignored.code, 0);
}

#[tokio::test]
async fn help_teaches_every_command_with_an_example_and_names_the_environment() {
    let top = run(ordersync().arg("--help")).await;
    assert_eq!(top.code, 0);
    for env in ["ORDERSYNC_DATABASE_URL", "ORDERSYNC_POLL_INTERVAL", "ORDERSYNC_STUCK_AFTER", "ORDERSYNC_LISTEN"] {
        assert!(top.stdout.contains(env), "{env} in --help");
    }
    for command in ["serve", "reconcile", "audit", "migrate", "report", "sandbox", "demo", "completions", "man"] {
        let help = run(ordersync().args([command, "--help"])).await;
        assert_eq!(help.code, 0, "{command}");
        assert!(help.stdout.contains("Example"), "{command} --help has an example:\n{}", help.stdout);
    }
}

/// Completions and the manual page come from the command line's definition: bash accepts the script and
/// completes every command after it is loaded; the page names every command, with no configuration needed
/// (a bad setting in the environment does not stop them).
#[tokio::test]
async fn completions_and_the_man_page_are_generated_for_every_command() {
    const COMMANDS: [&str; 9] =
        ["serve", "reconcile", "audit", "migrate", "prune", "report", "sandbox", "demo", "completions"];
    let script = run(ordersync().args(["completions", "bash"]).env("ORDERSYNC_POLL_INTERVAL", "soon")).await;
    assert_eq!(script.code, 0, "{}", script.stderr);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ordersync.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    // Load it and ask for the completions of `ordersync <TAB>` as bash would.
    let probe = format!(
        "source {}; COMP_WORDS=(ordersync ''); COMP_CWORD=1; COMP_LINE='ordersync '; COMP_POINT=10; \
         _ordersync ordersync '' ordersync; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let completed = run(Command::new("bash").args(["-c", &probe])).await;
    assert_eq!(completed.code, 0, "{}", completed.stderr);
    let offered: Vec<&str> = completed.stdout.lines().collect();
    for command in COMMANDS.iter().chain(&["man"]) {
        assert!(offered.contains(command), "bash completes {command}: {offered:?}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run(ordersync().args(["completions", shell])).await;
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("reconcile") && out.stdout.contains("database-url"), "{shell}");
    }
    let page = run(ordersync().arg("man").env("ORDERSYNC_POLL_INTERVAL", "soon")).await;
    assert_eq!(page.code, 0, "{}", page.stderr);
    assert!(page.stdout.contains("\n.TH ordersync 1 "), "{}", &page.stdout[..200.min(page.stdout.len())]);
    assert!(page.stdout.contains(env!("CARGO_PKG_VERSION")), "the page names the version");
    for command in COMMANDS {
        assert!(page.stdout.contains(&format!("ordersync\\-{command}")), "the page lists {command}");
    }
    assert!(page.stdout.contains("ORDERSYNC_DATABASE_URL"), "the page names the environment");
    // With --dir, the pages the main one points to are written too, each with its own command's flags only.
    let listed = run(ordersync().args(["man", "--dir"]).arg(dir.path())).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.stdout.lines().count(), COMMANDS.len() + 2, "ordersync.1, man and the rest: {}", listed.stdout);
    for command in COMMANDS {
        let page = std::fs::read_to_string(dir.path().join(format!("ordersync-{command}.1"))).unwrap();
        assert!(page.contains(&format!(".TH ordersync-{command} 1 ")), "{command}: {}", &page[..200.min(page.len())]);
        assert!(listed.stdout.contains(&format!("ordersync-{command}.1")), "listed: {}", listed.stdout);
    }
    let serve = std::fs::read_to_string(dir.path().join("ordersync-serve.1")).unwrap();
    assert!(serve.contains("listen") && serve.contains("smtp") && serve.contains("ORDERSYNC_DATABASE_URL"), "{serve}");
    let sandbox = std::fs::read_to_string(dir.path().join("ordersync-sandbox.1")).unwrap();
    assert!(!sandbox.contains("smtp") && !sandbox.contains("database"), "only the sandbox's flags: {sandbox}");
    let missing = run(ordersync().args(["man", "--dir"]).arg(dir.path().join("nowhere"))).await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(missing.stderr.contains("no such directory"), "{}", missing.stderr);
}

/// A bot database with the incident, the simulator over HTTP, and a key file: what a user points ordersync at.
pub struct Setup {
    pub db: TestDb,
    pub url: String,
    key_file: tempfile::NamedTempFile,
    key_line: String,
    _token: CancellationToken,
}

async fn setup(backend: Backend) -> Setup {
    let db = TestDb::with_trades(backend).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    setup_on(db, &sandbox).await
}

/// As `setup`, on a database and simulator the test has filled.
pub async fn setup_on(db: TestDb, sandbox: &Sandbox) -> Setup {
    let token = CancellationToken::new();
    let (url, key) = sandbox_http(sandbox, None, &token).await;
    let pem = key.to_pem().unwrap();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), pem.expose_secret()).unwrap();
    let key_line = pem.expose_secret().lines().nth(1).unwrap().to_string();
    Setup { db, url, key_file, key_line, _token: token }
}

impl Setup {
    pub fn command(&self) -> Command {
        let mut command = ordersync();
        command
            .env("ORDERSYNC_DATABASE_URL", &self.db.url)
            .env("ORDERSYNC_COINBASE_API_URL", &self.url)
            .env("ORDERSYNC_COINBASE_KEY_NAME", "organizations/test/apiKeys/test")
            .env("ORDERSYNC_COINBASE_KEY_FILE", self.key_file.path())
            .env("ORDERSYNC_GRACE", "0s");
        command
    }
}

async fn audit_then_dry_run_then_reconcile_through_the_binary(backend: Backend) {
    let setup = setup(backend).await;

    let audit = run(setup.command().args(["audit", "--json", "--fail-on-mismatch"])).await;
    assert_eq!(audit.code, 3, "mismatches found: {}", audit.stderr);
    let audited: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    let rows = audited["orders"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["verdict"] == "mismatch" && r["exchange_status"] == "FILLED"));
    assert_eq!(audited["terminal_conflicts"].as_array().unwrap().len(), 0);

    let dry = run(setup.command().args(["reconcile", "--once", "--dry-run"])).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("3 would be corrected (dry run: nothing written)"), "{}", dry.stdout);
    for (order_id, _, _) in INCIDENT {
        assert!(dry.stdout.contains(order_id));
        assert_eq!(setup.db.trade(order_id).await.status, "pending");
    }

    let real = run(setup.command().args(["--log-format", "json", "reconcile", "--once"])).await;
    assert_eq!(real.code, 0, "{}", real.stderr);
    assert!(real.stdout.contains("3 corrected"), "{}", real.stdout);
    let logs: Vec<serde_json::Value> = real.stderr.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let corrections: Vec<_> = logs.iter().filter(|l| l["message"] == "corrected order").collect();
    assert_eq!(corrections.len(), 3, "every correction logged once: {}", real.stderr);
    assert!(corrections
        .iter()
        .all(|l| l["from"] == "pending" && l["to"] == "completed" && l["latency_seconds"].is_number()));
    assert!(!real.stderr.contains(&setup.key_line), "the private key is never logged");
    for (order_id, _, _) in INCIDENT {
        assert_eq!(setup.db.trade(order_id).await.status, "completed");
    }

    let clean = run(setup.command().args(["audit", "--fail-on-mismatch"])).await;
    assert_eq!(clean.code, 0);
    assert!(clean.stdout.contains("0 pending orders checked, 0 mismatches"), "{}", clean.stdout);
}
crate::both!(audit_then_dry_run_then_reconcile_through_the_binary);

#[tokio::test]
async fn migrate_creates_ordersyncs_tables_once() {
    let setup = setup(Backend::Sqlite).await;
    let first = run(setup.command().arg("migrate")).await;
    assert!(first.stdout.contains("applied 0001_events_and_checks"), "{}{}", first.stdout, first.stderr);
    let second = run(setup.command().arg("migrate")).await;
    assert!(second.stdout.contains("up to date"), "{}", second.stdout);
    let tables = setup
        .db
        .rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'ordersync%' ORDER BY name")
        .await;
    let names: Vec<_> = tables.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "ordersync_conflicts",
            "ordersync_events",
            "ordersync_migrations",
            "ordersync_order_checks",
            "ordersync_settlements"
        ]
    );
}

#[tokio::test]
async fn a_missing_table_is_a_configuration_error() {
    let db = TestDb::empty(Backend::Sqlite).await;
    let out = run(ordersync().arg("migrate").env("ORDERSYNC_DATABASE_URL", &db.url)).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("table trades does not exist"), "{}", out.stderr);
}

async fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().await.unwrap();
    assert!(status.success());
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// Start `serve` (polling hourly) on the setup's database; returns the child, the "ordersync started" log
/// line, and the rest of its log.
async fn start_serve(setup: &Setup) -> (tokio::process::Child, String, Lines) {
    let mut child = setup
        .command()
        .args(["serve", "--listen", "127.0.0.1:0", "--poll-interval", "1h"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        if line.contains("ordersync started") {
            return (child, line, lines);
        }
    }
    panic!("serve did not start");
}

#[tokio::test]
async fn serve_stops_cleanly_on_sigterm() {
    let setup = setup(Backend::Sqlite).await;
    let (mut child, started, mut lines) = start_serve(&setup).await;
    assert!(started.contains("backend=\"sqlite\"") || started.contains("backend=sqlite"), "{started}");
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        if line.contains("corrected order") {
            break;
        }
    }
    signal(child.id().unwrap(), "TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Under systemd (`Type=notify` in packaging/ordersync.service), `serve` says READY=1 once it listens and
/// STOPPING=1 when SIGTERM arrives; `systemctl start` waits for the first.
#[tokio::test]
async fn serve_tells_the_service_manager_when_it_is_ready_and_when_it_stops() {
    let setup = setup(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let mut child = setup
        .command()
        .args(["serve", "--listen", "127.0.0.1:0", "--poll-interval", "1h"])
        .env("NOTIFY_SOCKET", &path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let received = |n: usize, buf: &[u8]| String::from_utf8_lossy(&buf[..n]).into_owned();
    let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf)).await.expect("READY=1").unwrap();
    let ready = received(n, &buf);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    signal(child.id().unwrap(), "TERM").await;
    let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf)).await.expect("STOPPING=1").unwrap();
    let stopping = received(n, &buf);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0));
}

/// SQLite is one machine's database: while `serve` runs on a file, a second `serve` and a writing
/// `reconcile` refuse to start (exit 2, naming the other process), reading commands still work, and once the
/// first one is killed (-9: no clean-up) the file is free again.
#[tokio::test]
async fn a_second_ordersync_on_one_sqlite_file_refuses_to_start() {
    let setup = setup(Backend::Sqlite).await;
    let (mut first, _, _lines) = start_serve(&setup).await;
    let pid = first.id().unwrap();
    // The second serve on the default port: it is told about the database, not about the port.
    for args in [&["serve"][..], &["reconcile", "--once"][..]] {
        let out = run(setup.command().args(args)).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("another ordersync"), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("pid {pid}")), "{args:?} names the holder: {}", out.stderr);
        assert!(out.stderr.contains("use PostgreSQL to run replicas"), "{}", out.stderr);
    }
    let audit = run(setup.command().args(["audit"])).await;
    assert_eq!(audit.code, 0, "reading commands still run: {}", audit.stderr);
    let dry = run(setup.command().args(["reconcile", "--once", "--dry-run"])).await;
    assert_eq!(dry.code, 0, "a dry run writes nothing and still runs: {}", dry.stderr);
    signal(pid, "KILL").await;
    let _ = first.wait().await;
    let out = run(setup.command().args(["reconcile", "--once"])).await;
    assert_eq!(out.code, 0, "the lock went with the killed process: {}", out.stderr);
}

#[tokio::test]
async fn the_demo_runs_without_credentials_and_fixes_the_incident() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, metrics_url) = start_demo(dir.path()).await;
    let mut fixed = 0.0;
    for _ in 0..100 {
        let scrape = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        fixed = scrape
            .lines()
            .filter(|l| l.starts_with("ordersync_corrections_total{bot=\"incident\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if fixed >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fixed, 3.0, "the incident's three orders were corrected");
    // Two accounts, each with its own key: both user channels connected, both keys proven.
    let wanted = [
        "ordersync_websocket_connected{account=\"main\"} 1",
        "ordersync_websocket_connected{account=\"hedge\"} 1",
        "ordersync_exchange_up{account=\"main\"} 1",
        "ordersync_exchange_up{account=\"hedge\"} 1",
    ];
    let mut scrape = String::new();
    for _ in 0..100 {
        scrape = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        if wanted.iter().all(|series| scrape.contains(series)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for series in wanted {
        assert!(scrape.contains(series), "{series}:\n{scrape}");
    }
    signal(child.id().unwrap(), "INT").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Start `ordersync demo` with its database in `dir`; returns the child and the metrics URL it printed.
pub async fn start_demo(dir: &std::path::Path) -> (tokio::process::Child, String) {
    start_demo_with(dir, &[]).await
}

/// As `start_demo`, with more arguments to `demo`.
pub async fn start_demo_with(dir: &std::path::Path, extra: &[&str]) -> (tokio::process::Child, String) {
    let database = dir.join("demo.db");
    let mut child = ordersync()
        .args(["demo", "--listen", "127.0.0.1:0", "--database", database.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        if let Some(url) = line.trim().strip_prefix("metrics:") {
            // Keep reading what the demo prints, as a terminal would.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, url.trim().to_string());
        }
    }
    panic!("the demo did not print its metrics URL");
}

/// The demo's simulated bots miss 30% of their completions: with a fixed seed, the report reads about 70%
/// bot accuracy for each of them, and 100% effective accuracy (ordersync fixed every miss within the grace
/// period, far inside the 2-minute goal). The incident's three orders ended hours before ordersync first ran
/// on the demo's database: backlog, settled by ordersync but not late, and the whole demo reads 100%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_report_reads_the_bots_misses_per_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start_demo_with(dir.path(), &["--order-every", "200ms", "--seed", "7"]).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal(child.id().unwrap(), "INT").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0));

    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    let out =
        run(ordersync().args(["report", "--since", "1d", "--format", "json"]).env("ORDERSYNC_DATABASE_URL", &database))
            .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    for bot in ["alpha", "beta", "gamma"] {
        let accuracy = &report["per_bot"][bot]["accuracy"];
        let settled = accuracy["settled"].as_i64().unwrap();
        let bot_accuracy = accuracy["bot_accuracy"].as_f64().unwrap();
        assert!(settled >= 40, "{bot}: {settled} orders settled in 20 s");
        assert!((0.55..=0.85).contains(&bot_accuracy), "{bot}: bot accuracy {bot_accuracy} (30% missed)");
        assert_eq!(accuracy["effective_accuracy"].as_f64(), Some(1.0), "{bot}: every miss fixed in time");
        assert_eq!(accuracy["late"], 0);
        let corrected = accuracy["by_ordersync"].as_i64().unwrap();
        assert_eq!(corrected + accuracy["by_bot"].as_i64().unwrap(), settled, "{bot}: each order once");
        assert!(corrected > 0, "{bot}: a bot with misses shows corrections");
    }
    let incident = &report["per_bot"]["incident"]["accuracy"];
    assert_eq!((incident["settled"].as_i64(), incident["backlog"].as_i64()), (Some(0), Some(3)));
    assert_eq!(incident["late"], 0);
    let overall = &report["overall"]["accuracy"];
    assert_eq!(overall["effective_accuracy"].as_f64(), Some(1.0), "{overall}");
    let bot_accuracy = overall["bot_accuracy"].as_f64().unwrap();
    assert!((0.55..=0.85).contains(&bot_accuracy), "{overall}");
    assert!(report["overall"]["latency"]["max_seconds"].as_f64().unwrap() < 30.0, "no hours-long backlog latency");
}

/// A row the bot cancelled that Coinbase FILLED: `audit` lists it as a terminal conflict and exits 3 with
/// `--fail-on-mismatch`, even with no pending order; it writes nothing.
async fn audit_lists_terminal_conflicts_and_fails_on_them(backend: Backend) {
    let setup = setup(backend).await;
    let (order_id, _, _) = INCIDENT[0];
    setup.db.exec(&format!("UPDATE trades SET status = 'cancelled' WHERE order_id = '{order_id}'")).await;
    setup.db.exec("DELETE FROM trades WHERE status = 'pending'").await;

    let audit = run(setup.command().args(["audit", "--fail-on-mismatch"])).await;
    assert_eq!(audit.code, 3, "{}{}", audit.stdout, audit.stderr);
    assert!(audit.stdout.contains("TERMINAL CONFLICTS") && audit.stdout.contains(order_id), "{}", audit.stdout);
    assert!(audit.stdout.contains("terminal conflicts: 1"), "{}", audit.stdout);
    let json = run(setup.command().args(["audit", "--json"])).await;
    assert_eq!(json.code, 0, "without --fail-on-mismatch");
    let audited: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(audited["terminal_conflicts"][0]["order_id"], order_id);
    assert_eq!(audited["terminal_conflicts"][0]["exchange_status"], "FILLED");
    assert_eq!(setup.db.trade(order_id).await.status, "cancelled");
    let ours = match backend {
        Backend::Sqlite => "SELECT CAST(COUNT(*) AS TEXT) FROM sqlite_master WHERE name LIKE 'ordersync%'",
        Backend::Postgres => "SELECT CAST(COUNT(*) AS TEXT) FROM pg_tables WHERE tablename LIKE 'ordersync%'",
    };
    assert_eq!(setup.db.count(ours).await, 0, "audit only reads: not even ordersync's tables are created");
}
crate::both!(audit_lists_terminal_conflicts_and_fails_on_them);

/// `reconcile --once` finds an order Coinbase cancelled a moment ago: the bot gets its grace period, then the
/// same run checks it again and corrects it, a grace period after it was first seen ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_once_waits_out_the_grace_period_and_then_corrects() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    let id = crate::harness::open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    sandbox.end(&id, "CANCELLED").unwrap();
    let setup = setup_on(db, &sandbox).await;
    let started = std::time::Instant::now();
    let out = run(setup.command().env("ORDERSYNC_GRACE", "2s").args(["reconcile", "--once"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("1 corrected"), "{}", out.stdout);
    assert!(started.elapsed() >= Duration::from_secs(2), "the bot had its grace period");
    assert_eq!(setup.db.trade(&id).await.status, "cancelled");
    let event = setup
        .db
        .rows(&format!(
            "SELECT CAST(latency_seconds AS TEXT), end_source FROM ordersync_events WHERE order_id = '{id}'"
        ))
        .await;
    let latency: f64 = event[0][0].as_deref().unwrap().parse().unwrap();
    assert!((2.0..10.0).contains(&latency), "from the first sighting, past the grace: {latency}");
    assert_eq!(event[0][1].as_deref(), Some("seen_poll"));
}

/// Automation trusts the exit code: a pass in which no order could be checked exits 1 and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_checked_nothing_exits_1_and_says_why() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    sandbox.set_faults(ordersync::sandbox::Faults { error_5xx_rate: 1.0, ..Default::default() });
    let setup = setup_on(db, &sandbox).await;
    let out = run(setup.command().args(["reconcile", "--once"])).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no order could be checked"), "{}", out.stderr);
    assert!(out.stderr.contains("transient exchange error: HTTP 50"), "says why: {}", out.stderr);
    // An audit that could check nothing is no clean bill of health either, whatever --fail-on-mismatch says.
    let audit = run(setup.command().env("ORDERSYNC_LOG", "error").args(["audit", "--fail-on-mismatch"])).await;
    assert_eq!(audit.code, 1, "{}{}", audit.stdout, audit.stderr);
    assert!(audit.stderr.contains("no order could be checked"), "{}", audit.stderr);
    assert!(!audit.stderr.contains("DEBUG") && !audit.stderr.contains("WARN"), "the log level holds: {}", audit.stderr);
}

/// SIGTERM ends `reconcile` within seconds even while a request to the exchange hangs (the simulator
/// answers after a minute); the cut-short pass exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_reconcile_while_a_request_hangs() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    incident(&db, &sandbox).await;
    sandbox.set_faults(ordersync::sandbox::Faults { latency_rate: 1.0, latency_ms: 60_000, ..Default::default() });
    let setup = setup_on(db, &sandbox).await;
    for args in [&["reconcile", "--once"][..], &["reconcile"][..]] {
        let mut child = setup.command().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sent = std::time::Instant::now();
        signal(child.id().unwrap(), "TERM").await;
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("ended").unwrap();
        assert!(sent.elapsed() < Duration::from_secs(5), "{args:?}: took {:?}", sent.elapsed());
        if args.contains(&"--once") {
            assert_eq!(status.code(), Some(1), "an interrupted pass is not a success");
        }
        for (order_id, _, _) in INCIDENT {
            assert_eq!(setup.db.trade(order_id).await.status, "pending", "nothing half done");
        }
    }
}

/// A configuration error is exit 2 whatever its kind; a database unreachable at run time is exit 1.
#[tokio::test]
async fn database_errors_exit_2_for_configuration_and_1_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", dir.path().join("nope.db").display());
    for (url, code, says) in [
        (missing.as_str(), 2, "does not exist"),
        ("postgres://bot@[::1", 2, "cannot be read"),
        ("postgres://bot:s3cret@127.0.0.1:1/trading", 1, "cannot connect"),
        ("postgres://postgres:s3cret@127.0.0.1:5432/no_such_database_here", 2, "refused"),
    ] {
        let out = run(ordersync().args(["report", "--since", "1d"]).env("ORDERSYNC_DATABASE_URL", url)).await;
        assert_eq!(out.code, code, "{url}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{url}: {}", out.stderr);
        assert!(!out.stderr.contains("s3cret"), "the password is never shown: {}", out.stderr);
    }
}

/// Known secrets (API token, SMTP password, the private key, the database password) and signed JWTs never
/// reach any output, whatever the log level, in text and in JSON, for every command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_jwts_never_reach_the_output_even_at_trace() {
    let setup = setup(Backend::Postgres).await;
    let with_password = setup.db.url.replacen("postgres@", "postgres:dbp4ss-n0t-for-logs@", 1);
    let (token, smtp_password) = ("api-t0ken-n0t-for-logs-123456", "smtp-p4ss-n0t-for-logs");
    for format in ["text", "json"] {
        for args in [
            &["migrate"][..],
            &["audit"][..],
            &["reconcile", "--once", "--dry-run"][..],
            &["reconcile", "--once"][..],
            &["report", "--since", "1d"][..],
            &["serve", "--listen", "127.0.0.1:0"][..],
        ] {
            let mut command = setup.command();
            command
                .env("ORDERSYNC_LOG", "trace")
                .env("ORDERSYNC_LOG_FORMAT", format)
                .env("ORDERSYNC_DATABASE_URL", &with_password)
                .env("ORDERSYNC_API_TOKEN", token)
                .env("ORDERSYNC_SMTP_HOST", "127.0.0.1")
                .env("ORDERSYNC_SMTP_PORT", "1")
                .env("ORDERSYNC_SMTP_TLS", "none")
                .env("ORDERSYNC_SMTP_USERNAME", "ops")
                .env("ORDERSYNC_SMTP_PASSWORD", smtp_password)
                .env("ORDERSYNC_EMAIL_TO", "ops@example.com")
                .args(args);
            let output = if args[0] == "serve" {
                let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
                signal(child.id().unwrap(), "TERM").await;
                let out =
                    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.unwrap().unwrap();
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            } else {
                let out = run(&mut command).await;
                assert!(out.code == 0 || out.code == 3, "{args:?} ({format}): {}", out.stderr);
                format!("{}{}", out.stdout, out.stderr)
            };
            assert!(output.contains("ordersync") || !output.is_empty(), "{args:?}: some output");
            for secret in [token, smtp_password, "dbp4ss-n0t-for-logs", setup.key_line.as_str(), "eyJ"] {
                assert!(!output.contains(secret), "{args:?} ({format}) shows {secret:?}:\n{output}");
            }
        }
    }
}

/// Read log lines until one contains `what`; panics (with what was read) after 30 s.
async fn line_with(lines: &mut Lines, what: &str) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if line.contains(what) {
            return line;
        }
        seen.push(line);
    }
    let last = seen.len().saturating_sub(40);
    panic!("no log line with {what:?} within 30 s; the last lines read:\n{}", seen[last..].join("\n"));
}

/// `systemctl reload` (SIGHUP): thresholds and the log filter are taken on at once, the log says what
/// changed and what waits for a restart, and a file that does not resolve changes nothing.
#[tokio::test]
async fn sighup_reloads_thresholds_and_the_log_filter_and_names_what_needs_a_restart() {
    let setup = setup(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ordersync.toml");
    std::fs::write(&file, "log = \"info\"\nmax_corrections_per_pass = 1000\npoll_interval = \"1h\"\n").unwrap();
    let mut child = setup
        .command()
        .env_remove("ORDERSYNC_LOG")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = line_with(&mut lines, "ordersync started").await;
    let addr = started.split("listen=").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap().to_string();
    let brake = || async {
        let status: serde_json::Value =
            reqwest::get(format!("http://{addr}/api/v1/trades/sync-status")).await.unwrap().json().await.unwrap();
        status["correction_brake"]["max_corrections_per_pass"].as_u64()
    };
    assert_eq!(brake().await, Some(1000));
    line_with(&mut lines, "corrected order").await;

    std::fs::write(
        &file,
        "log = \"info,ordersync=debug\"\nmax_corrections_per_pass = 7\npoll_interval = \"1s\"\nmetrics_refresh = \"9s\"\n",
    )
    .unwrap();
    signal(child.id().unwrap(), "HUP").await;
    let reloaded = line_with(&mut lines, "configuration reloaded").await;
    for key in ["max_corrections_per_pass", "poll_interval", "log"] {
        assert!(reloaded.contains(&format!("\"{key}\"")), "{key} applied: {reloaded}");
    }
    assert!(reloaded.contains("needs_restart=[\"metrics_refresh\"]"), "{reloaded}");
    assert_eq!(brake().await, Some(7), "the brake's limit is the new one");
    // The new filter shows debug lines, and the new interval brings a pass at once rather than in an hour.
    line_with(&mut lines, "reconcile pass done").await;

    std::fs::write(&file, "poll_interval = \"soon\"\n").unwrap();
    signal(child.id().unwrap(), "HUP").await;
    let refused = line_with(&mut lines, "not reloaded").await;
    assert!(refused.contains("poll_interval") && refused.contains("soon"), "names the key and value: {refused}");
    assert_eq!(brake().await, Some(7), "a bad file changes nothing");

    signal(child.id().unwrap(), "TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0), "SIGHUP never ends serve");
}

/// `ORDERSYNC_LOG_FORMAT=json` lines carry their spans: the news of an order's end (in the account's
/// `listen` span) and its correction (in a `check` span naming the order, bot, account and source) share
/// the order id, and a pass's lines say which pass, its mode and how many orders it read.
#[tokio::test]
async fn json_logs_follow_an_order_from_the_websocket_news_to_its_correction() {
    let db = TestDb::with_trades(Backend::Sqlite).await;
    let sandbox = Sandbox::new(1);
    let id = open_order(&db, &sandbox, "alpha", chrono::Duration::minutes(5)).await;
    let setup = setup_on(db, &sandbox).await;
    let ws = format!("ws{}{}", setup.url.trim_start_matches("http"), ordersync::sandbox::server::WS_PATH);
    let mut child = setup
        .command()
        .env("ORDERSYNC_LOG", "info,ordersync=debug")
        .env("ORDERSYNC_LOG_FORMAT", "json")
        .env("ORDERSYNC_COINBASE_WS_URL", ws)
        .args(["serve", "--listen", "127.0.0.1:0", "--poll-interval", "1h"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let json = |line: &str| serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let span = |line: &serde_json::Value, name: &str| {
        line["spans"].as_array().and_then(|spans| spans.iter().find(|s| s["name"] == name).cloned())
    };
    // The first pass and the subscription, in whichever order they come.
    let mut first = [None, None];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while first.iter().any(Option::is_none) {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await.expect("a pass and a subscription");
        let line = line.unwrap().expect("serve runs");
        for (slot, what) in first.iter_mut().zip(["reconcile pass done", "subscribed to the user channel"]) {
            if slot.is_none() && line.contains(what) {
                *slot = Some(line.clone());
            }
        }
    }
    let pass = json(first[0].as_deref().unwrap());
    let pass_span = span(&pass, "pass").unwrap_or_else(|| panic!("{pass}"));
    assert_eq!((pass_span["mode"].as_str(), pass_span["orders"].as_u64()), (Some("apply"), Some(1)), "{pass}");
    assert!(pass_span["pass"].as_u64().is_some(), "{pass}");

    sandbox.fill(&id, None, None, None).unwrap();
    let news = json(&line_with(&mut lines, "news: the order ended").await);
    assert_eq!(news["order_id"], id.as_str(), "{news}");
    assert_eq!(span(&news, "listen").map(|s| s["account"].clone()), Some("default".into()), "{news}");
    let corrected = json(&line_with(&mut lines, "corrected order").await);
    let check = span(&corrected, "check").unwrap_or_else(|| panic!("{corrected}"));
    assert_eq!(
        (&check["order_id"], &check["bot"], &check["account"], &check["source"]),
        (&id.as_str().into(), &"alpha".into(), &"default".into(), &"websocket".into()),
        "{corrected}"
    );

    signal(child.id().unwrap(), "TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0));
}
