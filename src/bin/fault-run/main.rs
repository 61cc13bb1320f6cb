//! `ordersync-fault-run`: the randomized fault run. Real processes (the simulator, `ordersync serve`),
//! simulated bots writing their own rows the way bots do, every fault of the plan overlapping, then one
//! settling period and the checker's table. Exit 0 when every invariant holds, 1 when one breaks (with the
//! seed and the first broken invariant's whole history), 2 when the run could not be set up.
//!
//! `scripts/fault-run.sh --orders 20000 --minutes 10 --seed 7 --db sqlite` builds the release binaries and
//! runs this.

mod check;
mod db;
mod plan;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Parser;
use ordersync::exchange::types::WireOrder;
use rust_decimal::Decimal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::check::{Collected, OrderLog, Truth};
use crate::db::{BotDb, BotWrite};
use crate::plan::{FaultKind, Plan, Step};

#[derive(Parser, Debug)]
#[command(
    name = "ordersync-fault-run",
    about = "Randomized fault run: the simulator and `ordersync serve` as real processes, simulated bots, \
             overlapping faults drawn from a seed, and a checker that compares the end state with the exchange's \
             truth",
    after_help = "Examples:\n  ordersync-fault-run --orders 1000 --seconds 45 --seed 7 --db sqlite\n  \
                  scripts/fault-run.sh --orders 20000 --minutes 10 --seed 7 --db postgres\n\n\
                  The same seed, order count and length replay the same plan (its digest is printed); the \
                  timing of real processes varies from run to run.\n\
                  Exit codes: 0 every invariant holds, 1 one broke, 2 the run could not be set up."
)]
struct Args {
    /// Orders the bots place over the run
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Length of the faulty part of the run, in seconds
    #[arg(long, default_value_t = 45, conflicts_with = "minutes")]
    seconds: u64,
    /// Length of the faulty part of the run, in minutes (instead of --seconds)
    #[arg(long)]
    minutes: Option<f64>,
    /// The seed every draw follows (default: from the clock, printed)
    #[arg(long)]
    seed: Option<u64>,
    /// The bot's database
    #[arg(long, value_parser = ["sqlite", "postgres"], default_value = "sqlite")]
    db: String,
    /// Seconds without faults before the checker runs
    #[arg(long, default_value_t = 40)]
    settle: u64,
    /// ordersync's poll interval, in seconds
    #[arg(long, default_value_t = 2)]
    poll_interval: u64,
    /// The ordersync binary (default: `ordersync` beside this one)
    #[arg(long)]
    ordersync: Option<PathBuf>,
    /// PostgreSQL server for `--db postgres`; a database of its own is created and dropped
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Keep the run's directory (logs, key, SQLite file) and PostgreSQL database
    #[arg(long)]
    keep: bool,
    /// Test of the checker: before checking, write one FILLED order's row as `cancelled` behind the bots'
    /// back, as a wrong correction would; the run must then fail
    #[arg(long, hide = true)]
    tamper: bool,
}

const KEY_NAME: &str = "organizations/fault-run/apiKeys/bot";

/// What the run records as it goes, shared by its tasks.
#[derive(Default)]
struct Record {
    logs: HashMap<String, OrderLog>,
    /// Bot writes that met `database is locked`: when the attempt began, when it failed.
    bot_lock_errors: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// When the run itself held the database locked beyond a bot's busy timeout.
    long_locks: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Faults the run failed to switch on or off.
    injection_errors: Vec<String>,
    /// Kills aimed at a write transaction, and those that landed inside one.
    aimed_kills: usize,
    landed_mid_write: usize,
    crashes: Vec<String>,
    final_start: Option<DateTime<Utc>>,
    starts: usize,
    setup_errors: Vec<String>,
}

type Shared = Arc<Mutex<Record>>;

fn note(shared: &Shared, order: &str, line: String) {
    let mut record = shared.lock().unwrap_or_else(|p| p.into_inner());
    record.logs.entry(order.to_string()).or_default().lines.push((Utc::now(), line));
}

fn record<T>(shared: &Shared, f: impl FnOnce(&mut Record) -> T) -> T {
    f(&mut shared.lock().unwrap_or_else(|p| p.into_inner()))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("fault run could not run: {error:#}");
            std::process::exit(2);
        }
    }
}

fn ordersync_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.ordersync {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ordersync"),
    };
    if !path.exists() {
        bail!("{} does not exist: build it (cargo build --bin ordersync) or pass --ordersync", path.display());
    }
    // The children run in the run's directory: a relative path would not find the binary from there.
    Ok(std::fs::canonicalize(&path)?)
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| Utc::now().timestamp_subsec_nanos().into());
    let faults_for = match args.minutes {
        Some(minutes) if minutes > 0.0 && minutes <= 24.0 * 60.0 => Duration::from_secs_f64(minutes * 60.0),
        Some(minutes) => bail!("--minutes {minutes}: give a number above 0 and at most 1440 (a day)"),
        None if args.seconds == 0 => bail!("--seconds 0: give at least 1"),
        None => Duration::from_secs(args.seconds),
    };
    let plan = Plan::draw(seed, args.orders, faults_for);
    let binary = ordersync_binary(&args)?;
    let dir = std::env::temp_dir().join(format!("ordersync-fault-run-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "fault run: seed {seed}, {} orders, {} s of faults then {} s settling, {} database, plan digest {:016x}",
        args.orders,
        faults_for.as_secs(),
        args.settle,
        args.db,
        plan.digest()
    );
    println!("  run directory: {}", dir.display());
    let db = BotDb::create(&args.db, &dir, &args.postgres_url, seed).await?;
    let outcome = run_with(&args, &plan, &binary, &dir, &db).await;
    // A failed run keeps its evidence (not a tampered one: that failure is the test's point).
    let keep = args.keep || (!args.tamper && !matches!(outcome, Ok(true)));
    if keep {
        println!("  kept: {} and {}", dir.display(), db.redacted_url());
        db.close().await;
    } else {
        db.drop_database().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

/// Both faces of the simulator's control API the run uses.
#[derive(Clone)]
struct Sim {
    http: reqwest::Client,
    base: String,
}

impl Sim {
    async fn send(&self, method: reqwest::Method, path: &str, body: serde_json::Value) -> anyhow::Result<String> {
        let mut last = String::new();
        // The control API has no faults, but the machine is busy: a few tries.
        for _ in 0..5 {
            let request = self.http.request(method.clone(), format!("{}{path}", self.base)).json(&body);
            match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response.text().await?),
                Ok(response) => {
                    let status = response.status();
                    bail!("{method} {path}: {status}: {}", response.text().await.unwrap_or_default())
                }
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{method} {path}: {last}")
    }

    async fn order_step(&self, path: &str, body: serde_json::Value) -> anyhow::Result<WireOrder> {
        let text = self.send(reqwest::Method::POST, path, body).await?;
        Ok(serde_json::from_str(&text)?)
    }
}

async fn start_simulator(binary: &Path, dir: &Path, seed: u64, skew_ms: i64) -> anyhow::Result<(Child, String)> {
    // Its stderr (the log) and its stdout (what it prints for people) both go to simulator.log.
    let path = dir.join("simulator.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let mut child = Command::new(binary)
        .args(["sandbox", "--listen", "127.0.0.1:0", "--rate-limit", "30"])
        .arg("--key")
        .arg(format!("{KEY_NAME}={}", dir.join("key.pem").display()))
        .args(["--seed", &seed.to_string(), "--clock-skew-ms", &skew_ms.to_string()])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the simulator")?;
    let stdout = child.stdout.take().context("simulator stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut out = tokio::fs::OpenOptions::new().append(true).open(&path).await?;
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            out.write_all(format!("{line}\n").as_bytes()).await?;
            if let Some(address) = line.split("listening on ").nth(1) {
                return Ok::<String, anyhow::Error>(address.trim().to_string());
            }
        }
        bail!("the simulator exited before it listened (see simulator.log)")
    })
    .await
    .context("the simulator did not start in 30 s")??;
    // Keep reading its stdout so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = out.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    Ok((child, address))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How `ordersync serve` is started, each time.
struct Serve {
    binary: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Serve {
    fn spawn(&self, shared: &Shared) -> anyhow::Result<Child> {
        let starts = record(shared, |r| {
            r.starts += 1;
            r.final_start = Some(Utc::now());
            r.starts
        });
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("ordersync.log"))?;
        let mut command = Command::new(&self.binary);
        command.arg("serve").current_dir(&self.dir).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ORDERSYNC_")) {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().with_context(|| format!("starting ordersync serve (start {starts})"))?;
        Ok(child)
    }
}

enum Control {
    /// `kill -9` (aimed at a write transaction or not), then start again after this long.
    Kill { down: Duration, aimed: bool },
    /// SIGTERM and wait.
    Stop,
}

/// Runs ordersync: restarts it after a kill, notes any exit the run did not cause (and restarts it too).
async fn supervise(serve: Serve, shared: Shared, db: BotDb, mut control: tokio::sync::mpsc::Receiver<Control>) {
    let mut child = match serve.spawn(&shared) {
        Ok(child) => child,
        Err(error) => {
            record(&shared, |r| r.setup_errors.push(format!("{error:#}")));
            return;
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                record(&shared, |r| r.crashes.push(format!("ordersync exited on its own: {status} (see ordersync.log)")));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            command = control.recv() => match command {
                Some(Control::Kill { down, aimed }) => {
                    if aimed {
                        let landed = kill_mid_write(&mut child, &db).await;
                        record(&shared, |r| {
                            r.aimed_kills += 1;
                            r.landed_mid_write += usize::from(landed);
                        });
                    }
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    tokio::time::sleep(down).await;
                }
                Some(Control::Stop) | None => {
                    if let Some(pid) = child.id() {
                        signal(pid, libc::SIGTERM);
                    }
                    match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                        Ok(Ok(status)) if status.success() => {}
                        Ok(Ok(status)) => record(&shared, |r| r.crashes.push(format!("ordersync stopped with {status} on SIGTERM"))),
                        _ => {
                            record(&shared, |r| r.crashes.push("ordersync did not stop within 20 s of SIGTERM".into()));
                            let _ = child.start_kill();
                        }
                    }
                    return;
                }
            }
        }
        match serve.spawn(&shared) {
            Ok(next) => child = next,
            Err(error) => {
                record(&shared, |r| r.setup_errors.push(format!("{error:#}")));
                return;
            }
        }
    }
}

/// Send `signal` to process `pid` (our child).
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Wait (up to 10 s) for ordersync to be inside a write transaction, stop it, and if it still is, kill it
/// there. Whether the kill landed mid-write; when none came, the caller kills it anyway.
async fn kill_mid_write(child: &mut Child, db: &BotDb) -> bool {
    let Some(pid) = child.id() else { return false };
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if db.mid_write(pid).await {
            signal(pid, libc::SIGSTOP);
            if db.mid_write(pid).await {
                // SIGKILL ends a stopped process as it is: inside its transaction.
                let _ = child.start_kill();
                return true;
            }
            signal(pid, libc::SIGCONT);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

async fn run_with(args: &Args, plan: &Plan, binary: &Path, dir: &Path, db: &BotDb) -> anyhow::Result<bool> {
    let key = ordersync::exchange::auth::CdpKey::generate(KEY_NAME);
    let pem = key.to_pem().context("the generated key has no PEM form")?;
    std::fs::write(dir.join("key.pem"), secrecy::ExposeSecret::expose_secret(&pem))?;
    let (mut simulator, address) = start_simulator(binary, dir, plan.seed, plan.clock_skew_ms).await?;
    let sim = Sim { http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?, base: address.clone() };
    let port = free_port()?;
    let ws = address.replacen("http://", "ws://", 1) + ordersync::sandbox::server::WS_PATH;
    let env: Vec<(String, String)> = [
        ("ORDERSYNC_DATABASE_URL", db.url().to_string()),
        ("ORDERSYNC_COINBASE_API_URL", address.clone()),
        ("ORDERSYNC_COINBASE_WS_URL", ws),
        ("ORDERSYNC_COINBASE_KEY_FILE", dir.join("key.pem").display().to_string()),
        ("ORDERSYNC_COINBASE_KEY_NAME", KEY_NAME.to_string()),
        ("ORDERSYNC_POLL_INTERVAL", format!("{}s", args.poll_interval)),
        ("ORDERSYNC_GRACE", format!("{}s", plan::GRACE.as_secs())),
        ("ORDERSYNC_METRICS_REFRESH", "2s".to_string()),
        ("ORDERSYNC_LISTEN", format!("127.0.0.1:{port}")),
        ("ORDERSYNC_REPLICA", "fault-run".to_string()),
        // After a kill -9 on PostgreSQL the new process waits out the dead one's lease: the shortest one.
        ("ORDERSYNC_LEASE", "3s".to_string()),
        ("ORDERSYNC_LOG", "info,sqlx=warn".to_string()),
        // The mass-correction brake off: after a kill -9 and a lock held beyond the lock wait, most pending
        // rows have really ended, and a pass that corrects them all is right here. With the brake on (share
        // 0.5) such a pass waits for an operator who never comes, and the run counts lost updates.
        ("ORDERSYNC_MAX_CORRECTIONS_PER_PASS", "1000000".to_string()),
        ("ORDERSYNC_MAX_CORRECTION_SHARE", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let shared: Shared = Arc::default();
    let (control, receiver) = tokio::sync::mpsc::channel(16);
    let serve = Serve { binary: binary.to_path_buf(), dir: dir.to_path_buf(), env };
    let supervisor = tokio::spawn(supervise(serve, shared.clone(), db.clone(), receiver));

    let start = Instant::now();
    let mut orders = tokio::task::JoinSet::new();
    for order in plan.orders.clone() {
        let (sim, db, shared) = (sim.clone(), db.clone(), shared.clone());
        orders.spawn(async move { live(order, start, sim, db, shared).await });
    }
    let faults = tokio::spawn(inject(plan.clone(), start, sim.clone(), db.clone(), control.clone(), shared.clone()));
    let faults_done = faults.await.context("the fault task failed")?;
    let faults_until = Utc::now();
    println!("  faults stopped after {:.0} s; waiting for the bots' last writes", start.elapsed().as_secs_f64());
    while let Some(done) = orders.join_next().await {
        done.context("an order task failed")?;
    }
    println!("  bots done after {:.0} s; settling {} s", start.elapsed().as_secs_f64(), args.settle);
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    // Counters and events, read until two scrapes agree around the read of the events.
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let mut read = None;
    for _ in 0..20 {
        let before = scrape(&sim.http, &metrics_url).await;
        let events = db.events().await?;
        let after = scrape(&sim.http, &metrics_url).await;
        if let (Ok(before), Ok(after)) = (before, after) {
            if before == after {
                read = Some((before, events));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = control.send(Control::Stop).await;
    let _ = supervisor.await;
    let ((corrections, mismatches), counted_events) =
        read.context("ordersync's /metrics never answered the same twice")?;
    // Everything else is read with ordersync stopped; the counters were compared with what was read beside them.
    let events = db.events().await?;
    let truth_text = sim.send(reqwest::Method::GET, "/sandbox/orders", serde_json::Value::Null).await?;
    let served_text = sim.send(reqwest::Method::GET, "/sandbox/faults/served", serde_json::Value::Null).await?;
    let served: BTreeMap<String, u64> = serde_json::from_str(&served_text).context("reading the faults served")?;
    let _ = simulator.start_kill();
    let wire: Vec<WireOrder> = serde_json::from_str(&truth_text).context("reading the simulator's orders")?;
    if args.tamper {
        if let Some(order) = wire.iter().filter(|w| w.status == "FILLED").map(|w| w.order_id.clone()).min() {
            db.tamper(&order).await?;
            println!("  tampered with order {order}: its row now says cancelled");
        }
    }
    let record = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
    if !record.setup_errors.is_empty() {
        bail!("{}", record.setup_errors.join("; "));
    }
    let collected = Collected {
        truth: wire.into_iter().map(|w| (w.order_id.clone(), truth_of(&w))).collect(),
        rows: db.rows().await?,
        changes: db.changes().await?,
        events,
        counted_events,
        logs: record.logs,
        final_start: record.final_start.unwrap_or_else(Utc::now),
        corrections_counted: corrections,
        mismatches_counted: mismatches,
        crashes: record.crashes,
        bot_lock_errors: record.bot_lock_errors,
        long_locks: record.long_locks,
        injection_errors: record.injection_errors,
        faults_until,
    };
    let findings = check::check(&collected);
    let kills = Kills { starts: record.starts, aimed: record.aimed_kills, landed: record.landed_mid_write };
    print_table(plan, &faults_done, &served, &findings, &kills);
    match findings.first_broken() {
        None => Ok(true),
        Some(verdict) => {
            println!("\nFAILED: seed {} ({} database): {}", plan.seed, args.db, verdict.name);
            if let Some(detail) = &verdict.detail {
                println!("  {detail}");
            }
            if let Some(order) = verdict.first.as_deref().filter(|o| *o != "-") {
                print_history(order, plan, &collected);
            }
            let length = match args.minutes {
                Some(minutes) => format!("--minutes {minutes}"),
                None => format!("--seconds {}", args.seconds),
            };
            println!(
                "  replay: scripts/fault-run.sh --seed {} --orders {} {length} --settle {} --poll-interval {} --db {}",
                plan.seed, args.orders, args.settle, args.poll_interval, args.db
            );
            Ok(false)
        }
    }
}

fn truth_of(wire: &WireOrder) -> Truth {
    let decimal = |text: &Option<String>| text.as_deref().and_then(|t| t.parse::<Decimal>().ok());
    Truth {
        status: wire.status.clone(),
        filled_size: decimal(&wire.filled_size).unwrap_or_default(),
        average_price: decimal(&wire.average_filled_price),
        last_fill_time: wire
            .last_fill_time
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc()),
    }
}

/// The sums of `ordersync_corrections_total` and `ordersync_mismatches_total` over their labels.
async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<(f64, f64)> {
    let text = http.get(url).send().await?.error_for_status()?.text().await?;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((sum("ordersync_corrections_total"), sum("ordersync_mismatches_total")))
}

/// One order's life: the bot's pending row, the exchange's steps, the bot's own write.
async fn live(order: plan::OrderPlan, start: Instant, sim: Sim, db: BotDb, shared: Shared) {
    let id = order.id.clone();
    let mut last: Option<WireOrder> = None;
    for (at, step) in &order.steps {
        tokio::time::sleep_until(start + *at).await;
        let result: anyhow::Result<String> = async {
            match step {
                Step::Place => {
                    let mut tries = 0;
                    loop {
                        let began = Utc::now();
                        let Err(error) = db.insert_pending(&id, &order.bot, order.product, order.size).await else {
                            break;
                        };
                        if !db::is_locked(&error) || tries >= 20 {
                            return Err(error.into());
                        }
                        tries += 1;
                        record(&shared, |r| r.bot_lock_errors.push((began, Utc::now())));
                        note(&shared, &id, format!("bot: inserting its row failed: {error}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let body = serde_json::json!({
                        "order_id": id, "product_id": order.product, "side": "BUY",
                        "base_size": order.size.to_string(), "limit_price": order.price.to_string(),
                    });
                    sim.send(reqwest::Method::POST, "/sandbox/orders", body).await?;
                    Ok(format!("bot: pending row, order placed ({:?}, bot {:?})", order.fate, order.habit))
                }
                Step::Fill { size, price } => {
                    let wire = sim
                        .order_step(
                            &format!("/sandbox/orders/{id}/fill"),
                            serde_json::json!({"size": size.to_string(), "price": price.to_string()}),
                        )
                        .await?;
                    let line = format!(
                        "exchange: filled {size} at {price}, now {} ({:?} filled)",
                        wire.status, wire.filled_size
                    );
                    if wire.status == "FILLED" {
                        record(&shared, |r| r.logs.entry(id.clone()).or_default().ended_at = Some(Utc::now()));
                    }
                    last = Some(wire);
                    Ok(line)
                }
                Step::End(status) => {
                    let wire = sim
                        .order_step(&format!("/sandbox/orders/{id}/end"), serde_json::json!({"status": status}))
                        .await?;
                    record(&shared, |r| r.logs.entry(id.clone()).or_default().ended_at = Some(Utc::now()));
                    last = Some(wire);
                    Ok(format!("exchange: {status}"))
                }
                Step::BotWritesOutcome => {
                    let Some(wire) = last.as_ref().filter(|w| check::word(&w.status).is_some()) else {
                        return Ok("bot: nothing ended to write".to_string());
                    };
                    let write = BotWrite::outcome(wire);
                    let status = write.status.clone();
                    bot_write(&db, &id, &write, &shared).await?;
                    record(&shared, |r| r.logs.entry(id.clone()).or_default().bot_wrote.push(status.clone()));
                    Ok(format!("bot: wrote {status} ({:?} {:?} {:?})", write.filled_at, write.price, write.size))
                }
                Step::BotCancels => {
                    let write = BotWrite { status: "cancelled".into(), filled_at: None, price: None, size: None };
                    bot_write(&db, &id, &write, &shared).await?;
                    record(&shared, |r| r.logs.entry(id.clone()).or_default().bot_wrote.push("cancelled".into()));
                    Ok("bot: wrote cancelled on its own".to_string())
                }
            }
        }
        .await;
        match result {
            Ok(line) => note(&shared, &id, line),
            Err(error) => {
                note(&shared, &id, format!("run: {step:?} failed: {error:#}"));
                record(&shared, |r| r.setup_errors.push(format!("order {id}: {step:?}: {error:#}")));
                return;
            }
        }
    }
}

/// A bot's write: retried as bots do when the database is busy beyond their own busy timeout (counted).
async fn bot_write(db: &BotDb, id: &str, write: &BotWrite, shared: &Shared) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        let began = Utc::now();
        match db.bot_write(id, write).await {
            Ok(()) => return Ok(()),
            Err(error) if db::is_locked(&error) && tries < 20 => {
                tries += 1;
                record(shared, |r| r.bot_lock_errors.push((began, Utc::now())));
                note(shared, id, format!("bot: write failed: {error}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Switch the plan's faults on and off; gives how many of each kind were injected.
async fn inject(
    plan: Plan,
    start: Instant,
    sim: Sim,
    db: BotDb,
    control: tokio::sync::mpsc::Sender<Control>,
    shared: Shared,
) -> BTreeMap<&'static str, usize> {
    let mut moments: Vec<(Duration, Option<plan::FaultWindow>)> =
        plan.rate_changes().into_iter().map(|at| (at, None)).collect();
    moments.extend(
        plan.faults
            .iter()
            .filter(|w| {
                matches!(
                    w.kind,
                    FaultKind::WsDisconnect
                        | FaultKind::WsStall
                        | FaultKind::Database
                        | FaultKind::DatabaseLong
                        | FaultKind::Kill { .. }
                )
            })
            .map(|w| (w.from, Some(*w))),
    );
    moments.sort_by_key(|(at, window)| (*at, window.is_some()));
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    for window in &plan.faults {
        *injected.entry(window.kind.name()).or_default() += 1;
    }
    for (at, window) in moments {
        tokio::time::sleep_until(start + at).await;
        let result = match window {
            None => {
                let rates = serde_json::to_value(plan.rates_at(at)).unwrap_or_default();
                sim.send(reqwest::Method::PUT, "/sandbox/faults", rates).await.map(|_| ())
            }
            Some(window) => match window.kind {
                FaultKind::WsDisconnect => {
                    sim.send(reqwest::Method::POST, "/sandbox/ws/disconnect", serde_json::json!({})).await.map(|_| ())
                }
                FaultKind::WsStall => {
                    let seconds = window.length.as_secs().max(1);
                    sim.send(reqwest::Method::POST, "/sandbox/ws/stall", serde_json::json!({"seconds": seconds}))
                        .await
                        .map(|_| ())
                }
                FaultKind::Database => {
                    let db = db.clone();
                    tokio::spawn(async move { db.disturb(window.length).await });
                    Ok(())
                }
                FaultKind::DatabaseLong => {
                    let (db, shared) = (db.clone(), shared.clone());
                    tokio::spawn(async move {
                        if let Some(held) = db.hold_long(window.length).await {
                            record(&shared, |r| r.long_locks.push(held));
                        }
                    });
                    Ok(())
                }
                FaultKind::Kill { aimed } => {
                    control.send(Control::Kill { down: window.length, aimed }).await.map_err(|e| anyhow::anyhow!("{e}"))
                }
                _ => Ok(()),
            },
        };
        if let Err(error) = result {
            eprintln!("  injecting a fault failed: {error:#}");
            record(&shared, |r| r.injection_errors.push(format!("at {:.1} s: {error:#}", at.as_secs_f64())));
        }
    }
    tokio::time::sleep_until(start + plan.faults_for).await;
    if let Err(error) = sim.send(reqwest::Method::PUT, "/sandbox/faults", serde_json::json!({})).await {
        eprintln!("  switching the faults off failed: {error:#}");
        record(&shared, |r| r.injection_errors.push(format!("switching the faults off: {error:#}")));
    }
    injected
}

/// ordersync's starts, and the kills aimed at a write transaction.
struct Kills {
    starts: usize,
    aimed: usize,
    landed: usize,
}

fn print_table(
    plan: &Plan,
    injected: &BTreeMap<&'static str, usize>,
    served: &BTreeMap<String, u64>,
    findings: &check::Findings,
    kills: &Kills,
) {
    println!("\nfault windows (overlapping), clock skew {} ms:", plan.clock_skew_ms);
    for (name, count) in injected {
        println!("  {name:<45} {count:>5}");
    }
    let served: Vec<String> = served.iter().map(|(name, count)| format!("{name} {count}")).collect();
    println!("  the simulator served: {}", served.join(", "));
    println!("  ordersync started {} times (the first, and once after each kill -9)", kills.starts);
    println!(
        "  kills aimed at a write transaction: {}, landed inside one (seen with ordersync stopped): {}",
        kills.aimed, kills.landed
    );
    if findings.locked_by_the_run > 0 {
        println!(
            "  bot writes that gave up under the run's own lock held beyond their busy timeout: {} (the run's doing)",
            findings.locked_by_the_run
        );
    }
    println!();
    println!("{:<80} {:>7} {:>8}", "invariant", "found", "must be");
    for verdict in &findings.verdicts {
        println!("{:<80} {:>7} {:>8}", verdict.name, verdict.found, 0);
    }
    let seconds = |v: Option<f64>| v.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "-".into());
    println!(
        "\norders the exchange ended: {}, whose bot wrote the outcome last: {}, corrected by ordersync (ended while faults were on): {}",
        findings.ended, findings.settled_by_bot, findings.corrected
    );
    println!(
        "sync latency of ordersync's corrections while faults were on: p50 {}, p99 {}; beyond the 2-minute goal: {}",
        seconds(findings.latency_p50),
        seconds(findings.latency_p99),
        findings.beyond_goal
    );
}

fn print_history(order: &str, plan: &Plan, c: &Collected) {
    println!("\n  history of order {order}:");
    if let Some(p) = plan.orders.iter().find(|o| o.id == order) {
        println!("    plan: {:?}, bot {} ({:?}), {} {} at {}", p.fate, p.bot, p.habit, p.product, p.size, p.price);
    }
    let mut lines: Vec<(DateTime<Utc>, String)> = Vec::new();
    if let Some(log) = c.logs.get(order) {
        lines.extend(log.lines.iter().cloned());
    }
    for change in c.changes.iter().filter(|ch| ch.order_id == order) {
        let who = if change.by_bot { "bot" } else { "ordersync" };
        lines.push((
            change.at,
            format!(
                "row: {} -> {:?} by {who} ({:?} {:?} {:?})",
                change.old_status, change.new_status, change.filled_at, change.filled_price, change.filled_size
            ),
        ));
    }
    for event in c.events.iter().filter(|e| e.order_id == order) {
        let at = event.applied_at.unwrap_or_default();
        lines.push((at, format!("ordersync event: {} {:?} ({})", event.outcome, event.to_status, event.source)));
    }
    lines.sort_by_key(|(at, _)| *at);
    for (at, line) in lines {
        println!("    {} {line}", at.format("%H:%M:%S%.3f"));
    }
    if let Some(truth) = c.truth.get(order) {
        println!("    exchange at the end: {truth:?}");
    }
    println!("    row at the end: {:?}", c.rows.get(order));
}
