//! The command line: the clap definition (`Cli`, `Command`; each command's settings are `config::settings::Flags`, made from the settings table), config loading (file, then
//! `config::resolve`), and dispatch to a file per command (`serve.rs`, `reconcile.rs`, `audit.rs`,
//! `prune.rs`, `migrate.rs`, `report.rs`, `sandbox.rs`, `generate.rs` for completions and man; the demo is
//! `crate::demo`). `anyhow` lives here and in `main.rs` only.
//!
//! Deliberately not here: any logic the commands share; they call `app`, `reconcile`, `db`, `sandbox`.

mod audit;
mod generate;
mod migrate;
mod prune;
mod reconcile;
mod report;
mod sandbox;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::settings::{Flags, Given, Uses};
use crate::config::{self, Config, FileConfig, LogFormat};
use crate::db::StoreError;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;

/// Exit code when `audit --fail-on-mismatch` finds mismatches.
pub const EXIT_MISMATCH: i32 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "ordersync",
    version = crate::metrics::LONG_VERSION,
    about = "Keeps a trading bot's order table honest about its orders on Coinbase",
    long_about = "ordersync finds orders your bot's database still holds as pending, asks Coinbase what became of \
                  them, writes the exchange's answer (status, fill time, price, size) back in one transaction, and \
                  exports how healthy the sync is to Prometheus.\n\n\
                  Settings come from flags, then ORDERSYNC_* environment variables, then the --config TOML file, \
                  then defaults. Try it without credentials: `ordersync demo`.",
    after_help = "Examples:\n  ordersync demo\n  ORDERSYNC_DATABASE_URL=sqlite://bot.db ordersync audit\n  \
                  ordersync serve --config /etc/ordersync.toml\n\n\
                  Exit codes: 0 ok, 1 failure at run time, 2 usage or configuration error, 3 mismatches found \
                  (audit --fail-on-mismatch)."
)]
pub struct Cli {
    /// Settings written before the command's name (`ordersync --config FILE serve`); each command's
    /// `--help` lists those it reads, and takes them after its name too.
    #[command(flatten)]
    pub leading: Flags<{ Uses::ANY }>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Html,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: reconcile every poll interval, serve /metrics and the API, until SIGINT/SIGTERM
    #[command(after_help = "Example:\n  ORDERSYNC_DATABASE_URL=postgres://bot@db/trading \\\n  \
                            ORDERSYNC_COINBASE_KEY_FILE=/etc/ordersync/cdp_api_key.json ordersync serve\n\n\
                            serve creates or updates ordersync's own tables at start; with --no-migrate it leaves them\n\
                            alone (run `ordersync migrate` with a role that may) and refuses to start if they are not\n\
                            current.\n\n\
                            SIGHUP (systemctl reload) reads the configuration again: thresholds, the brake, e-mail\n\
                            recipients and the log filter change at once; the log names what needs a restart.")]
    Serve {
        #[command(flatten)]
        flags: Flags<{ Uses::SERVE }>,
        /// Do not create or update ordersync's tables; refuse to start unless they are current
        #[arg(long)]
        no_migrate: bool,
    },
    /// Reconcile pending orders against Coinbase: one pass with --once, else every poll interval (no HTTP)
    #[command(
        after_help = "Examples:\n  ordersync reconcile --once --dry-run   # what would change, changes nothing\n  \
                            ordersync reconcile --once             # fix what Coinbase is certain about"
    )]
    Reconcile {
        #[command(flatten)]
        flags: Flags<{ Uses::RECONCILE }>,
        /// One pass, then exit
        #[arg(long)]
        once: bool,
        /// Report what would change; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Print the pass as JSON
        #[arg(long)]
        json: bool,
        /// Do not create or update ordersync's tables; refuse to run unless they are current
        #[arg(long)]
        no_migrate: bool,
        /// Write the corrections even when they are more than max_corrections_per_pass or
        /// max_correction_share allow (after checking why so many rows disagree)
        #[arg(long, requires = "once")]
        allow_mass_correction: bool,
    },
    /// Delete ordersync's own old rows: check state of settled orders, settlements (and with --events the
    /// audit events). Never a row of the bot's table. serve does this daily with the retention setting
    #[command(
        after_help = "Examples:\n  ordersync prune --older-than 90d\n  ordersync prune --older-than 1y --events"
    )]
    Prune {
        #[command(flatten)]
        flags: Flags<{ Uses::PRUNE }>,
        /// Delete what is older than this: 90d, 2160h [default: the retention setting, 90d]
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        older_than: Option<std::time::Duration>,
        /// Delete the audit events (ordersync_events) older than that too; they are kept otherwise
        #[arg(long)]
        events: bool,
    },
    /// Audit every pending order (bot, product, age, Coinbase status, verdict) and the terminal conflicts (rows
    /// the bot ended with another position than Coinbase). Writes nothing
    #[command(
        after_help = "Examples:\n  ordersync audit\n  ordersync audit --json --fail-on-mismatch  # exit 3 on a mismatch or a terminal conflict"
    )]
    Audit {
        #[command(flatten)]
        flags: Flags<{ Uses::AUDIT }>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Exit with code 3 when a pending order has ended on the exchange, or a terminal row conflicts with it
        #[arg(long)]
        fail_on_mismatch: bool,
    },
    /// Create or update ordersync's own tables (ordersync_*) in the bot's database; the bot's tables are untouched
    #[command(after_help = "Example:\n  ORDERSYNC_DATABASE_URL=sqlite://bot.db ordersync migrate")]
    Migrate {
        #[command(flatten)]
        flags: Flags<{ Uses::MIGRATE }>,
    },
    /// SLA report from the settled orders: bot and effective accuracy per order against 99.9%, sync latency of
    /// corrections, corrections, per bot and day
    #[command(
        after_help = "Examples:\n  ordersync report --since 30d\n  ordersync report --since 7d --format html --output sla.html"
    )]
    Report {
        #[command(flatten)]
        flags: Flags<{ Uses::REPORT }>,
        /// How far back: 30d, 7d, 12h
        #[arg(long, default_value = "30d")]
        since: String,
        /// text, json or html (one self-contained file with charts)
        #[arg(long, value_enum, default_value = "text")]
        format: ReportFormat,
        /// Write to this file instead of standard output
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Run the Coinbase Advanced Trade simulator (REST and WebSocket) for tests and trials
    #[command(
        after_help = "Example:\n  ordersync sandbox --listen 127.0.0.1:8787 --key organizations/o/apiKeys/k=key.pem\n  \
                            then: POST /sandbox/orders {\"product_id\":\"AVNT-USD\",\"base_size\":\"10\",\"limit_price\":\"0.84\"}"
    )]
    Sandbox {
        #[command(flatten)]
        flags: Flags<{ Uses::SANDBOX }>,
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
        /// Accept tokens signed by this key: NAME=FILE (public key PEM, or the private key). Repeatable
        #[arg(long = "key", value_name = "NAME=FILE")]
        keys: Vec<String>,
        /// Requests per second before answering 429 (Coinbase: about 30)
        #[arg(long, default_value_t = 30)]
        rate_limit: u32,
        /// Seed for fault injection
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Faults as JSON, e.g. '{"error_5xx_rate":0.1,"rate_limit_rate":0.1}'
        #[arg(long)]
        faults: Option<String>,
        /// Run the simulator's clock this many milliseconds ahead of the host's (behind when negative)
        #[arg(long, value_name = "MS", default_value_t = 0, allow_negative_numbers = true)]
        clock_skew_ms: i64,
    },
    /// The embedded default: SQLite, the simulator and simulated bots, no credentials needed
    #[command(
        after_help = "The demo's own defaults, unless set: --poll-interval 5s, --stuck-after 1m, --grace 2s.\n\n\
                            Example:\n  ordersync demo   # then open the printed metrics and sync-status URLs\n  \
                            ordersync report --since 1d --database-url sqlite://ordersync-demo.db   # afterwards"
    )]
    Demo {
        #[command(flatten)]
        flags: Flags<{ Uses::DEMO }>,
        /// The demo's SQLite database (created if missing)
        #[arg(long, default_value = "ordersync-demo.db")]
        database: PathBuf,
        /// Number of simulated bots
        #[arg(long, default_value_t = 3)]
        bots: usize,
        /// Share of completions the bots miss, 0 to 1
        #[arg(long, default_value_t = 0.3)]
        miss_rate: f64,
        /// Seed for the simulated bots and faults
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How often each simulated bot places an order: 3s, 500ms
        #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
        order_every: std::time::Duration,
    },
    /// Print a shell completion script, generated from this command line's definition
    #[command(after_help = "Examples:\n  ordersync completions bash > /etc/bash_completion.d/ordersync\n  \
                            ordersync completions zsh > \"${fpath[1]}/_ordersync\"\n  \
                            ordersync completions fish > ~/.config/fish/completions/ordersync.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page ordersync(1) (roff), or write it and one page per command (ordersync-serve(1), …)
    /// into a directory; generated from this command line's definition
    #[command(after_help = "Examples:\n  ordersync man --dir /usr/local/share/man/man1 && man ordersync-serve\n  \
                            ordersync man | man -l -")]
    Man {
        /// Write ordersync.1 and ordersync-<command>.1 for every command into DIR (it must exist), and list
        /// them, instead of printing ordersync.1
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(text).map_err(|e| format!("expected {e}"))
}

impl Command {
    /// What the command was given by flags and the environment; `None` for the commands that read no
    /// settings (completions, man).
    pub fn given(&self) -> Option<&Given> {
        match self {
            Command::Serve { flags, .. } => Some(&flags.given),
            Command::Reconcile { flags, .. } => Some(&flags.given),
            Command::Prune { flags, .. } => Some(&flags.given),
            Command::Audit { flags, .. } => Some(&flags.given),
            Command::Migrate { flags } => Some(&flags.given),
            Command::Report { flags, .. } => Some(&flags.given),
            Command::Sandbox { flags, .. } => Some(&flags.given),
            Command::Demo { flags, .. } => Some(&flags.given),
            Command::Completions { .. } | Command::Man { .. } => None,
        }
    }

    /// The command's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Serve { .. } => "serve",
            Command::Reconcile { .. } => "reconcile",
            Command::Prune { .. } => "prune",
            Command::Audit { .. } => "audit",
            Command::Migrate { .. } => "migrate",
            Command::Report { .. } => "report",
            Command::Sandbox { .. } => "sandbox",
            Command::Demo { .. } => "demo",
            Command::Completions { .. } => "completions",
            Command::Man { .. } => "man",
        }
    }
}

impl Cli {
    /// What the command was given: its own flags, those written before its name, the environment.
    ///
    /// # Errors
    /// A flag written before the command's name that the command does not read.
    pub fn given(&self) -> Result<Option<Given>, UsageError> {
        let Some(own) = self.command.given() else { return Ok(None) };
        own.clone().with_leading(&self.leading.given).map(Some).map_err(|unused| {
            UsageError(format!(
                "{} not read by this command; `ordersync {} --help` lists the settings it reads",
                unused.join(", "),
                self.command.name()
            ))
        })
    }

    /// The log format and filter (`--log-format`, `--log` or their environment variables), read before
    /// anything else so that every later line follows them.
    pub fn logging(&self) -> (LogFormat, Option<String>) {
        let given = match self.given() {
            Ok(given) => given,
            // The error is reported once the log is set up; until then the command's own flags say.
            Err(_) => self.command.given().cloned(),
        };
        let over = given.as_ref().map(|given| &given.overrides);
        let format = match over.and_then(|o| o.get("log-format")).as_deref() {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };
        (format, over.and_then(|o| o.get("log")))
    }
}

/// A failure the user fixes by changing configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Load the file (if any) and resolve the configuration.
pub fn load_config(given: &Given) -> anyhow::Result<Config> {
    let (file, name) = match &given.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| config::ConfigError::ReadFile { path: path.clone(), source })
                .map_err(|e| UsageError(e.to_string()))?;
            (FileConfig::parse(&text, path).map_err(|e| UsageError(e.to_string()))?, path.display().to_string())
        }
        None => (FileConfig::default(), "the config file".to_string()),
    };
    config::resolve(&given.overrides, &file, &name, &config::System).map_err(|e| UsageError(e.to_string()).into())
}

fn app_error(error: AppError) -> anyhow::Error {
    if error.is_config() {
        UsageError(error.to_string()).into()
    } else {
        anyhow::Error::new(error)
    }
}

/// Run the parsed command; returns the process exit code for outcomes that are not errors.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let given = cli.given()?.unwrap_or_default();
    // Generated from the definition alone, and the simulator: no configuration is read.
    match cli.command {
        Command::Completions { shell } => return generate::completions(shell),
        Command::Man { dir } => return generate::man(dir.as_deref()),
        Command::Sandbox { listen, keys, rate_limit, seed, faults, clock_skew_ms, .. } => {
            return sandbox::sandbox(&listen, &keys, rate_limit, seed, faults.as_deref(), clock_skew_ms)
                .await
                .map(|()| 0);
        }
        _ => {}
    }
    let config = load_config(&given)?;
    if let Some(filter) = &config.log {
        // The file's `log` (flags and the environment were read at start, and win).
        let _ = crate::telemetry::set_filter(filter);
    }
    // What is missing or cannot work, all in one round, before anything connects.
    let needs = match &cli.command {
        Command::Serve { .. } => app::Needs { database: true, keys: true, listen: true },
        Command::Reconcile { .. } | Command::Audit { .. } => app::Needs { database: true, keys: true, listen: false },
        Command::Migrate { .. } | Command::Prune { .. } | Command::Report { .. } => {
            app::Needs { database: true, ..app::Needs::default() }
        }
        _ => app::Needs::default(),
    };
    app::preflight(&config, needs).map_err(app_error)?;
    match cli.command {
        Command::Serve { no_migrate, .. } => serve::serve(&config, &given, no_migrate).await.map(|()| 0),
        Command::Reconcile { once, dry_run, json, no_migrate, allow_mass_correction, .. } => {
            let mut config = config;
            config.brake.allowed = allow_mass_correction;
            reconcile::reconcile(&config, once, dry_run, json, no_migrate).await
        }
        Command::Prune { older_than, events, .. } => prune::prune(&config, older_than, events).await.map(|()| 0),
        Command::Audit { json, fail_on_mismatch, .. } => audit::audit(&config, json, fail_on_mismatch).await,
        Command::Migrate { .. } => migrate::migrate(&config).await.map(|()| 0),
        Command::Report { since, format, output, .. } => {
            report::report(&config, &since, format, output.as_deref()).await.map(|()| 0)
        }
        Command::Demo { database, bots, miss_rate, seed, order_every, .. } => {
            let mut config = config;
            // The demo's own defaults, where neither a flag nor the environment says otherwise.
            if !given.overrides.is_set("poll-interval") {
                config.poll_interval = std::time::Duration::from_secs(5);
            }
            if !given.overrides.is_set("stuck-after") {
                config.stuck_after = std::time::Duration::from_secs(60);
            }
            if !given.overrides.is_set("grace") {
                config.grace = std::time::Duration::from_secs(2);
            }
            let options = crate::demo::DemoOptions { database, bots, miss_rate, order_every, seed };
            let token = signal_token();
            crate::demo::run(config, options, token).await.map_err(app_error)?;
            Ok(0)
        }
        Command::Sandbox { .. } | Command::Completions { .. } | Command::Man { .. } => Ok(0),
    }
}

/// A token cancelled on SIGINT or SIGTERM.
fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        app::shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// What a command may do to ordersync's own tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tables {
    /// Read-only commands: never create, alter or write anything (on a database never migrated they read
    /// what they can).
    ReadOnly,
    /// Create or update them first.
    Migrate,
    /// They must be current already (`--no-migrate`).
    Current,
}

/// A reconciler over the config's accounts. With `tables` read-only (audit, dry runs) this process serves
/// every account alone: it writes nothing. Otherwise, on PostgreSQL, the accounts come through leases
/// shared with running replicas (`replica`): the caller takes them.
async fn reconciler(config: &Config, tables: Tables) -> anyhow::Result<Reconciler> {
    // The key and the exchange first: a credential error is found before anything is written.
    let metrics = Metrics::standalone(config.stuck_after);
    let ownership = match tables {
        Tables::ReadOnly => {
            let names: Vec<String> = config.accounts.iter().map(|a| a.name.clone()).collect();
            Arc::new(crate::replica::Ownership::solo(&config.replica, &names))
        }
        _ => app::ownership_for(config),
    };
    let (accounts, _) = app::accounts_from_config(config, &metrics, ownership.clone()).map_err(app_error)?;
    let mut store = app::connect_store(config).await.map_err(app_error)?;
    if ownership.is_leased() {
        store = store.with_fence(ownership);
    }
    match tables {
        Tables::ReadOnly => {}
        Tables::Migrate => {
            store.migrate().await.map_err(|e| app_error(e.into()))?;
        }
        Tables::Current if !store.has_own_tables() => {
            return Err(app_error(StoreError::NotMigrated { url: store.url().to_string() }.into()));
        }
        Tables::Current => {}
    }
    Ok(Reconciler::with_accounts(store, accounts, metrics, app::settings(config)))
}
