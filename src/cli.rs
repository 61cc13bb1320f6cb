//! The commands: serve, reconcile, audit, migrate, sandbox, demo. clap types, config loading (file, then
//! `resolve`), and dispatch. `anyhow` lives here and in `main.rs` only.
//!
//! Deliberately not here: any logic the commands share; they call `app`, `reconcile`, `db`, `sandbox`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use secrecy::SecretString;

use crate::app::{self, App, AppError};
use crate::config::{self, Config, FileConfig, LogFormat, Overrides};
use crate::db::StoreError;
use crate::exchange::auth::{CdpKey, PublicKey};
use crate::metrics::Metrics;
use crate::reconcile::{Checked, Mode, PassReport, Reconciler};
use crate::sandbox::server::{self as sandbox_server, ServerState};
use crate::sandbox::{Faults, Sandbox};

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
                  ordersync --config /etc/ordersync.toml serve\n\n\
                  Exit codes: 0 ok, 1 failure at run time, 2 usage or configuration error, 3 mismatches found \
                  (audit --fail-on-mismatch)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command shares.
#[derive(Debug, Args)]
pub struct Global {
    /// TOML configuration file (keys as in the README's configuration reference)
    #[arg(long, global = true, env = config::ENV_CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The bot's database: sqlite://path/to/bot.db or postgres://user@host/db
    #[arg(long, global = true, env = config::ENV_DATABASE_URL, value_name = "URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: Option<SecretString>,
    /// Coinbase API base URL [default: https://api.coinbase.com]
    #[arg(long, global = true, env = config::ENV_COINBASE_API_URL, value_name = "URL")]
    pub coinbase_api_url: Option<String>,
    /// CDP API key name: organizations/<org>/apiKeys/<key> (read from the key file when it is Coinbase's JSON)
    #[arg(long, global = true, env = config::ENV_COINBASE_KEY_NAME, value_name = "NAME")]
    pub coinbase_key_name: Option<String>,
    /// File with the CDP private key (EC PEM, base64 Ed25519, or Coinbase's JSON key file)
    #[arg(long, global = true, env = config::ENV_COINBASE_KEY_FILE, value_name = "FILE")]
    pub coinbase_key_file: Option<String>,
    /// The CDP private key itself, instead of a key file (needs --coinbase-key-name)
    #[arg(long, global = true, env = config::ENV_COINBASE_PRIVATE_KEY, value_name = "KEY", hide_env_values = true, value_parser = parse_secret)]
    pub coinbase_private_key: Option<SecretString>,
    /// Requests per second to Coinbase, shared by all tasks [default: 20]
    #[arg(long, global = true, env = config::ENV_COINBASE_RATE_LIMIT, value_name = "N")]
    pub coinbase_rate_limit: Option<String>,
    /// Coinbase user-channel WebSocket URL [default: wss://advanced-trade-ws-user.coinbase.com]
    #[arg(long, global = true, env = config::ENV_COINBASE_WS_URL, value_name = "URL")]
    pub coinbase_ws_url: Option<String>,
    /// Listen to the user channel for real-time updates when credentials are set: on or off [default: on]
    #[arg(long, global = true, env = config::ENV_WEBSOCKET, value_name = "ON|OFF")]
    pub websocket: Option<String>,
    /// Reconnect the WebSocket after this long without any message [default: 10s]
    #[arg(long, global = true, env = config::ENV_WEBSOCKET_STALL_AFTER, value_name = "DURATION")]
    pub websocket_stall_after: Option<String>,
    /// How often to check pending orders: 30s, 5m, 2h [default: 30s]
    #[arg(long, global = true, env = config::ENV_POLL_INTERVAL, value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// An order pending longer than this is stuck (alerts, metrics) [default: 5m]
    #[arg(long, global = true, env = config::ENV_STUCK_AFTER, value_name = "DURATION")]
    pub stuck_after: Option<String>,
    /// After the exchange ends an order, give the bot this long to write it itself before ordersync
    /// corrects the row; 0 for bots that leave completion to ordersync [default: 10s]
    #[arg(long, global = true, env = config::ENV_GRACE, value_name = "DURATION")]
    pub grace: Option<String>,
    /// Check terminal rows created this recently once against the exchange (settled by the bot, or a
    /// terminal conflict) [default: 24h]
    #[arg(long, global = true, env = config::ENV_VERIFY_WINDOW, value_name = "DURATION")]
    pub verify_window: Option<String>,
    /// Flag an order after this many checks in a row without a certain answer about it (a 404, an unknown
    /// status; the exchange not answering at all does not count) [default: 3]
    #[arg(long, global = true, env = config::ENV_FLAG_AFTER, value_name = "N")]
    pub flag_after: Option<String>,
    /// Orders looked up and written per round, 1 to 1000 (each List Orders request carries as many ids as
    /// fit an 8 KB URL, 164 Coinbase ids) [default: 984, six full requests]
    #[arg(long, global = true, env = config::ENV_BATCH_SIZE, value_name = "N")]
    pub batch_size: Option<String>,
    /// Hold every correction when a pass would correct more rows than this [default: 1000]
    #[arg(long, global = true, env = config::ENV_MAX_CORRECTIONS_PER_PASS, value_name = "N")]
    pub max_corrections_per_pass: Option<String>,
    /// ... or more than this share of the pending rows, once over 10 corrections [default: 0.5]
    #[arg(long, global = true, env = config::ENV_MAX_CORRECTION_SHARE, value_name = "SHARE")]
    pub max_correction_share: Option<String>,
    /// Check and export everything, write nothing to the bot's table: on or off [default: off]
    #[arg(long, global = true, env = config::ENV_OBSERVE_ONLY, value_name = "ON|OFF", num_args = 0..=1, require_equals = true, default_missing_value = "on")]
    pub observe_only: Option<String>,
    /// serve prunes check state of settled orders and settlements older than this, daily: 90d, or off
    /// [default: 90d]
    #[arg(long, global = true, env = config::ENV_RETENTION, value_name = "DURATION")]
    pub retention: Option<String>,
    /// PostgreSQL replicas: how long an account's lease lasts; a dead replica's accounts are taken over
    /// within two leases [default: 15s]
    #[arg(long, global = true, env = config::ENV_LEASE, value_name = "DURATION")]
    pub lease: Option<String>,
    /// PostgreSQL replicas: this replica's name in the lease table and User-Agent [default: host-pid]
    #[arg(long, global = true, env = config::ENV_REPLICA, value_name = "NAME")]
    pub replica: Option<String>,
    /// HTTP address for /metrics and the API [default: 127.0.0.1:9787]
    #[arg(long, global = true, env = config::ENV_LISTEN, value_name = "ADDR")]
    pub listen: Option<String>,
    /// How often the database gauges are refreshed [default: 15s]
    #[arg(long, global = true, env = config::ENV_METRICS_REFRESH, value_name = "DURATION")]
    pub metrics_refresh: Option<String>,
    /// Bearer token required on /api/ (required when listening beyond loopback)
    #[arg(long, global = true, env = config::ENV_API_TOKEN, value_name = "TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub api_token: Option<SecretString>,
    /// SMTP server for e-mail alerts about stuck orders (e-mail is off unless set)
    #[arg(long, global = true, env = config::ENV_SMTP_HOST, value_name = "HOST", help_heading = "E-mail alerts")]
    pub smtp_host: Option<String>,
    /// SMTP port [default: 587 for starttls, 465 for tls, 25 for none]
    #[arg(long, global = true, env = config::ENV_SMTP_PORT, value_name = "PORT", help_heading = "E-mail alerts")]
    pub smtp_port: Option<String>,
    /// none, starttls or tls [default: starttls]
    #[arg(long, global = true, env = config::ENV_SMTP_TLS, value_name = "MODE", help_heading = "E-mail alerts")]
    pub smtp_tls: Option<String>,
    /// SMTP user name
    #[arg(long, global = true, env = config::ENV_SMTP_USERNAME, value_name = "USER", help_heading = "E-mail alerts")]
    pub smtp_username: Option<String>,
    /// SMTP password (prefer the environment or --smtp-password-file)
    #[arg(long, global = true, env = config::ENV_SMTP_PASSWORD, value_name = "PASSWORD", hide_env_values = true, value_parser = parse_secret, help_heading = "E-mail alerts")]
    pub smtp_password: Option<SecretString>,
    /// File holding the SMTP password
    #[arg(long, global = true, env = config::ENV_SMTP_PASSWORD_FILE, value_name = "FILE", help_heading = "E-mail alerts")]
    pub smtp_password_file: Option<String>,
    /// Sender address [default: ordersync@<smtp host>]
    #[arg(long, global = true, env = config::ENV_EMAIL_FROM, value_name = "ADDRESS", help_heading = "E-mail alerts")]
    pub email_from: Option<String>,
    /// Recipients, separated by commas
    #[arg(long, global = true, env = config::ENV_EMAIL_TO, value_name = "ADDRESSES", help_heading = "E-mail alerts")]
    pub email_to: Option<String>,
    /// Remind this often while orders stay stuck [default: 1h]
    #[arg(long, global = true, env = config::ENV_EMAIL_REMIND_EVERY, value_name = "DURATION", help_heading = "E-mail alerts")]
    pub email_remind_every: Option<String>,
    /// Never send more e-mails than this in an hour [default: 10]
    #[arg(long, global = true, env = config::ENV_EMAIL_MAX_PER_HOUR, value_name = "N", help_heading = "E-mail alerts")]
    pub email_max_per_hour: Option<String>,
    /// Log format
    #[arg(long, global = true, env = config::ENV_LOG_FORMAT, value_enum, default_value = "text")]
    pub log_format: LogFormatArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(value: LogFormatArg) -> Self {
        match value {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
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
                            current.")]
    Serve {
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
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Exit with code 3 when a pending order has ended on the exchange, or a terminal row conflicts with it
        #[arg(long)]
        fail_on_mismatch: bool,
    },
    /// Create or update ordersync's own tables (ordersync_*) in the bot's database; the bot's tables are untouched
    #[command(after_help = "Example:\n  ORDERSYNC_DATABASE_URL=sqlite://bot.db ordersync migrate")]
    Migrate,
    /// SLA report from the settled orders: bot and effective accuracy per order against 99.9%, sync latency of
    /// corrections, corrections, per bot and day
    #[command(
        after_help = "Examples:\n  ordersync report --since 30d\n  ordersync report --since 7d --format html --output sla.html"
    )]
    Report {
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
    /// Print the manual page ordersync(1) (roff), generated from this command line's definition
    #[command(after_help = "Example:\n  ordersync man > /usr/local/share/man/man1/ordersync.1 && man ordersync")]
    Man,
}

/// A secret from the command line or the environment, held redacted from the moment it is read.
fn parse_secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text.to_string()))
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(text).map_err(|e| format!("expected {e}"))
}

impl Global {
    fn overrides(&self) -> Overrides {
        Overrides {
            database_url: self.database_url.clone(),
            coinbase_api_url: self.coinbase_api_url.clone(),
            coinbase_key_name: self.coinbase_key_name.clone(),
            coinbase_key_file: self.coinbase_key_file.clone(),
            coinbase_private_key: self.coinbase_private_key.clone(),
            coinbase_rate_limit: self.coinbase_rate_limit.clone(),
            coinbase_ws_url: self.coinbase_ws_url.clone(),
            websocket: self.websocket.clone(),
            websocket_stall_after: self.websocket_stall_after.clone(),
            poll_interval: self.poll_interval.clone(),
            stuck_after: self.stuck_after.clone(),
            grace: self.grace.clone(),
            verify_window: self.verify_window.clone(),
            flag_after: self.flag_after.clone(),
            batch_size: self.batch_size.clone(),
            listen: self.listen.clone(),
            metrics_refresh: self.metrics_refresh.clone(),
            api_token: self.api_token.clone(),
            smtp_host: self.smtp_host.clone(),
            smtp_port: self.smtp_port.clone(),
            smtp_tls: self.smtp_tls.clone(),
            smtp_username: self.smtp_username.clone(),
            smtp_password: self.smtp_password.clone(),
            smtp_password_file: self.smtp_password_file.clone(),
            email_from: self.email_from.clone(),
            email_to: self.email_to.clone(),
            email_remind_every: self.email_remind_every.clone(),
            email_max_per_hour: self.email_max_per_hour.clone(),
            max_corrections_per_pass: self.max_corrections_per_pass.clone(),
            max_correction_share: self.max_correction_share.clone(),
            observe_only: self.observe_only.clone(),
            retention: self.retention.clone(),
            lease: self.lease.clone(),
            replica: self.replica.clone(),
        }
    }
}

/// A failure the user fixes by changing configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Load the file (if any) and resolve the configuration.
pub fn load_config(global: &Global) -> anyhow::Result<Config> {
    let (file, name) = match &global.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| config::ConfigError::ReadFile { path: path.clone(), source })
                .map_err(|e| UsageError(e.to_string()))?;
            (FileConfig::parse(&text, path).map_err(|e| UsageError(e.to_string()))?, path.display().to_string())
        }
        None => (FileConfig::default(), "the config file".to_string()),
    };
    config::resolve(&global.overrides(), &file, &name).map_err(|e| UsageError(e.to_string()).into())
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
    // Generated from the definition alone: no configuration is read.
    match cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "ordersync", &mut script);
            return print_generated(&script, "the completion script");
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            let mut roff = Vec::new();
            page.render(&mut roff).context("rendering the manual page")?;
            return print_generated(&roff, "the manual page");
        }
        _ => {}
    }
    let config = load_config(&cli.global)?;
    match cli.command {
        Command::Serve { no_migrate } => serve(&config, no_migrate).await.map(|()| 0),
        Command::Reconcile { once, dry_run, json, no_migrate, allow_mass_correction } => {
            let mut config = config;
            config.brake.allowed = allow_mass_correction;
            reconcile(&config, once, dry_run, json, no_migrate).await
        }
        Command::Prune { older_than, events } => prune(&config, older_than, events).await.map(|()| 0),
        Command::Audit { json, fail_on_mismatch } => audit(&config, json, fail_on_mismatch).await,
        Command::Migrate => migrate(&config).await.map(|()| 0),
        Command::Report { since, format, output } => {
            report(&config, &since, format, output.as_deref()).await.map(|()| 0)
        }
        Command::Sandbox { listen, keys, rate_limit, seed, faults, clock_skew_ms } => {
            sandbox(&listen, &keys, rate_limit, seed, faults.as_deref(), clock_skew_ms).await.map(|()| 0)
        }
        Command::Demo { database, bots, miss_rate, seed, order_every } => {
            let mut config = config;
            if cli.global.poll_interval.is_none() {
                config.poll_interval = std::time::Duration::from_secs(5);
            }
            if cli.global.stuck_after.is_none() {
                config.stuck_after = std::time::Duration::from_secs(60);
            }
            if cli.global.grace.is_none() {
                config.grace = std::time::Duration::from_secs(2);
            }
            let options = crate::demo::DemoOptions { database, bots, miss_rate, order_every, seed };
            let token = signal_token();
            crate::demo::run(config, options, token).await.map_err(app_error)?;
            Ok(0)
        }
        Command::Completions { .. } | Command::Man => Ok(0),
    }
}

/// Write generated text to standard output; a reader that stops early (`| head`) is no failure.
fn print_generated(text: &[u8], what: &str) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context(format!("writing {what}")))
        }
        _ => Ok(0),
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

async fn serve(config: &Config, no_migrate: bool) -> anyhow::Result<()> {
    let app = App::build(config, app::AppParts { no_migrate, ..app::AppParts::default() }).await.map_err(app_error)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        revision = crate::metrics::REVISION,
        listen = %app.addr(),
        database = app.store().url(),
        backend = app.store().backend().as_str(),
        exchange = %config.coinbase.api_url,
        poll_interval = %config::format_duration(config.poll_interval),
        replica = %config.replica,
        accounts = config.accounts.len(),
        "ordersync started"
    );
    app.run(signal_token()).await.map_err(app_error)
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

async fn reconcile(config: &Config, once: bool, dry_run: bool, json: bool, no_migrate: bool) -> anyhow::Result<i32> {
    let tables = match (dry_run, no_migrate) {
        (true, _) => Tables::ReadOnly,
        (false, true) => Tables::Current,
        (false, false) => Tables::Migrate,
    };
    // A pass that writes is the one ordersync on a SQLite file for as long as it runs; a dry run only reads.
    let _instance = if dry_run { None } else { app::claim_database(config).map_err(app_error)? };
    if !once && dry_run {
        return Err(UsageError("--dry-run needs --once: a dry run is one pass".into()).into());
    }
    let reconciler = reconciler(config, tables).await?;
    let token = signal_token();
    let ownership = reconciler.accounts().ownership().clone();
    let lease =
        crate::replica::LeaseSettings { lease: config.lease, accounts: reconciler.accounts().map().names().to_vec() };
    if !once {
        // A replica like serve (without HTTP): on PostgreSQL it takes its share of the accounts.
        let leases = ownership.is_leased().then(|| {
            let (store, ownership, lease, token) =
                (reconciler.store().clone(), ownership.clone(), lease, token.clone());
            tokio::spawn(crate::replica::run(store, ownership, lease, token))
        });
        // Orders found ended less than `grace` ago are checked again as the grace period ends, as in serve.
        let due = reconciler.clone();
        let due_token = token.clone();
        let due_checks = tokio::spawn(async move { due.run_due(due_token).await });
        reconciler.run(token).await;
        let _ = due_checks.await;
        if let Some(leases) = leases {
            let _ = leases.await;
        }
        return Ok(0);
    }
    if ownership.is_leased() {
        // One pass: the accounts no running replica holds, given back at the end.
        let skipped = crate::replica::claim_free(reconciler.store(), &ownership, &lease)
            .await
            .context("taking the accounts' leases")?;
        for (account, owner) in skipped {
            eprintln!("account {account} is served by replica {owner}: its orders are that replica's to check");
        }
    }
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    let report = reconciler.pass(mode, &token).await.context("reconcile pass failed");
    let report = match report {
        Ok(mut report) => {
            // Orders that ended less than `grace` ago are checked once the bot had its grace period.
            for checked in reconciler.finish_due(&token).await {
                match report.checked.iter_mut().find(|c| c.order_id == checked.order_id) {
                    Some(earlier) => *earlier = checked,
                    None => report.checked.push(checked),
                }
            }
            Ok(report)
        }
        Err(error) => Err(error),
    };
    if ownership.is_leased() {
        crate::replica::release_all(reconciler.store(), &ownership).await;
    }
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?);
    } else {
        print_summary(&report, dry_run);
    }
    if let Some(held) = &report.braked {
        eprintln!(
            "error: the mass-correction brake held every correction: this pass would correct {} of {} pending \
             rows (max_corrections_per_pass {}, max_correction_share {}); nothing was corrected. Check the status \
             words and that the key is the bot's account (ordersync audit), then run `ordersync reconcile --once \
             --allow-mass-correction`",
            held.would_correct, held.pending, held.max_corrections, held.max_share
        );
        return Ok(1);
    }
    // Automation must be able to trust the exit code: a pass that checked nothing, or was cut short, failed.
    if let Some(why) = pass_failure(&report) {
        let written = if dry_run { "nothing was written" } else { "what was written stands" };
        eprintln!("error: {why}; {written}");
        return Ok(1);
    }
    Ok(0)
}

async fn prune(config: &Config, older_than: Option<std::time::Duration>, events: bool) -> anyhow::Result<()> {
    let Some(older_than) = older_than.or(config.retention) else {
        return Err(UsageError("retention is off: say how old with --older-than, e.g. --older-than 90d".into()).into());
    };
    if older_than < config.verify_window {
        return Err(UsageError(format!(
            "--older-than {} is inside the verify window ({}): settlements that young keep recent terminal rows \
             from being settled a second time; use at least {}",
            config::format_duration(older_than),
            config::format_duration(config.verify_window),
            config::format_duration(config.verify_window)
        ))
        .into());
    }
    let store = app::connect_store(config).await.map_err(app_error)?;
    if !store.has_own_tables() {
        return Err(app_error(StoreError::NotMigrated { url: store.url().to_string() }.into()));
    }
    let age = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let before = chrono::Utc::now().checked_sub_signed(age).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let pruned = store.prune(before, events).await.context("pruning")?;
    println!(
        "deleted, older than {}: {} check states of settled orders, {} settlements, {} audit events{}",
        config::format_duration(older_than),
        pruned.check_states,
        pruned.settlements,
        pruned.events,
        if events { "" } else { " (kept: add --events to delete them)" }
    );
    Ok(())
}

/// Exit 1, saying why on stderr, when a pass checked nothing or was cut short: its figures are not the
/// truth, whatever `--fail-on-mismatch` would say.
fn pass_failure(report: &PassReport) -> Option<String> {
    if report.failed {
        let why = report.checked.iter().find_map(|c| c.detail.clone()).unwrap_or_default();
        return Some(format!("no order could be checked: the exchange gave no certain answer for any ({why})"));
    }
    report.interrupted.then(|| "the pass was interrupted before every order was checked".to_string())
}

fn print_summary(report: &PassReport, dry_run: bool) {
    let mut out = std::io::stdout().lock();
    for checked in report.checked.iter().filter(|c| c.verdict != "in_sync") {
        let _ = writeln!(
            out,
            "{:<38} {:<10} {:<22} {:<17} {}",
            checked.order_id,
            checked.bot_id.as_deref().unwrap_or("-"),
            checked.exchange_status.as_deref().unwrap_or("-"),
            checked.verdict,
            checked.detail.as_deref().unwrap_or(checked.result)
        );
    }
    let changed = if dry_run { report.count("would_correct") } else { report.count("corrected") };
    let _ = writeln!(
        out,
        "{} checked, {} mismatches, {} {}, {} unresolved, {} left alone by the grace period{}",
        report.checked.len(),
        report.mismatches(),
        changed,
        if dry_run { "would be corrected (dry run: nothing written)" } else { "corrected" },
        report.checked.iter().filter(|c| matches!(c.verdict, "unresolved" | "flagged")).count(),
        report.too_young,
        if report.interrupted { ", interrupted" } else { "" },
    );
}

async fn audit(config: &Config, json: bool, fail_on_mismatch: bool) -> anyhow::Result<i32> {
    let reconciler = reconciler(config, Tables::ReadOnly).await?;
    let token = signal_token();
    // A progress bar on a terminal (drawn on stderr, so --json output stays clean); nothing otherwise.
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} pending orders checked ({eta} left)")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = reconciler.pass_with_progress(Mode::DryRun, &token, &progress).await.context("audit failed");
    bar.finish_and_clear();
    let report = report?;
    // Conflicts found now (read-only: nothing recorded) and those ordersync recorded before.
    let mut conflicts: Vec<crate::db::ConflictRow> =
        reconciler.store().conflicts().await.context("reading terminal conflicts")?;
    let now = chrono::Utc::now();
    for found in report.conflicts() {
        if !conflicts.iter().any(|c| c.order_id == found.order_id) {
            let kind = match found.verdict {
                "product_conflict" => crate::db::ConflictKind::Product,
                _ => crate::db::ConflictKind::Position,
            };
            conflicts.push(crate::db::ConflictRow {
                kind,
                exchange_product_id: None,
                order_id: found.order_id.clone(),
                bot_id: found.bot_id.clone(),
                product_id: found.product_id.clone(),
                row_status: found.db_status.clone(),
                exchange_status: found.exchange_status.clone().unwrap_or_default(),
                filled_size: None,
                found_at: now,
            });
        }
    }
    if json {
        let audit = serde_json::json!({
            "orders": report.checked,
            "terminal_conflicts": conflicts,
            "unmatched_rows": report.unmatched,
        });
        println!("{}", serde_json::to_string_pretty(&audit).context("encoding the audit")?);
    } else {
        let mut out = std::io::stdout().lock();
        let _ =
            writeln!(out, "{:<38} {:<10} {:<14} {:>9} {:<22} VERDICT", "ORDER_ID", "BOT", "PRODUCT", "AGE", "EXCHANGE");
        for c in &report.checked {
            let _ = writeln!(
                out,
                "{:<38} {:<10} {:<14} {:>9} {:<22} {}",
                c.order_id,
                c.bot_id.as_deref().unwrap_or("-"),
                c.product_id.as_deref().unwrap_or("-"),
                c.age_seconds.map_or_else(|| "unknown".to_string(), human_age),
                c.exchange_status.as_deref().unwrap_or("-"),
                c.verdict
            );
        }
        let unreadable: Vec<&Checked> = report.checked.iter().filter(|c| c.created_raw.is_some()).collect();
        if !unreadable.is_empty() {
            let _ = writeln!(
                out,
                "\nROWS WHOSE CREATION TIME CANNOT BE READ (checked like any other; their age is unknown, so they \
                 count as stuck):"
            );
            for c in unreadable {
                let _ = writeln!(out, "{:<38} created_at = {:?}", c.order_id, c.created_raw.as_deref().unwrap_or(""));
            }
        }
        let _ = writeln!(
            out,
            "{} pending orders checked, {} mismatches, {} younger than the grace period not checked",
            report.checked.len(),
            report.mismatches(),
            report.too_young
        );
        if !conflicts.is_empty() {
            let _ = writeln!(
                out,
                "\nTERMINAL CONFLICTS: the bot's row says one outcome, Coinbase another (ordersync never writes these; \
                 see docs/runbooks.md#ordersyncterminalconflict)\n{:<38} {:<10} {:<14} {:<12} EXCHANGE",
                "ORDER_ID", "BOT", "PRODUCT", "ROW"
            );
            for c in &conflicts {
                let _ = writeln!(
                    out,
                    "{:<38} {:<10} {:<14} {:<12} {}",
                    c.order_id,
                    c.bot_id.as_deref().unwrap_or("-"),
                    c.product_id.as_deref().unwrap_or("-"),
                    c.row_status,
                    c.exchange_status
                );
            }
        }
        let _ = writeln!(out, "{} terminal conflicts", conflicts.len());
        if !report.unmatched.is_empty() {
            let _ = writeln!(
                out,
                "\nROWS OF NO CONFIGURED ACCOUNT (never asked about, never written: name the account in the row's \
                 account column, or add the bot to an account's bots in [[accounts]])\n{:<38} {:<10} ACCOUNT",
                "ORDER_ID", "BOT"
            );
            for u in &report.unmatched {
                let _ = writeln!(
                    out,
                    "{:<38} {:<10} {}",
                    u.order_id,
                    u.bot_id.as_deref().unwrap_or("-"),
                    u.account.as_deref().unwrap_or("-")
                );
            }
            let _ = writeln!(out, "{} rows of no configured account", report.unmatched.len());
        }
    }
    if let Some(why) = pass_failure(&report) {
        eprintln!("error: {why}");
        return Ok(1);
    }
    let found = report.mismatches() > 0 || !conflicts.is_empty();
    Ok(if fail_on_mismatch && found { EXIT_MISMATCH } else { 0 })
}

fn human_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d", s / 86_400),
    }
}

async fn report(
    config: &Config,
    since: &str,
    format: ReportFormat,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let window = config::parse_duration(since).map_err(|e| UsageError(format!("--since {since:?}: expected {e}")))?;
    // Read-only: on a database never migrated, the report is simply empty.
    let store = app::connect_store(config).await.map_err(app_error)?;
    let until = chrono::Utc::now();
    let since = until - chrono::Duration::from_std(window).context("--since is too long")?;
    let settlements = store.settlements_since(since).await.context("reading settled orders")?;
    let report = crate::report::build(&settlements, since, until);
    let rendered = match format {
        ReportFormat::Text => crate::report::text(&report),
        ReportFormat::Json => crate::report::json(&report),
        ReportFormat::Html => crate::report::html(&report),
    };
    match output {
        Some(path) => std::fs::write(path, rendered).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{rendered}"),
    }
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = app::connect_store(config).await.map_err(app_error)?;
    let applied = store.migrate().await.map_err(|e| app_error(e.into()))?;
    if applied.is_empty() {
        println!("ordersync's tables are up to date in {}", store.url());
    } else {
        println!("applied {} to {}", applied.join(", "), store.url());
    }
    Ok(())
}

async fn sandbox(
    listen: &str,
    keys: &[String],
    rate_limit: u32,
    seed: u64,
    faults: Option<&str>,
    clock_skew_ms: i64,
) -> anyhow::Result<()> {
    let mut accepted = HashMap::new();
    for entry in keys {
        let (name, path) =
            entry.split_once('=').ok_or_else(|| UsageError(format!("--key {entry:?}: expected NAME=FILE")))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading key file {path}"))?;
        let public = PublicKey::parse(&text).map_err(|e| UsageError(format!("--key {name}: {e}")))?;
        accepted.insert(name.to_string(), public);
    }
    if accepted.is_empty() {
        let key = CdpKey::generate("organizations/sandbox/apiKeys/sandbox");
        let path = std::env::temp_dir().join("ordersync-sandbox-key.pem");
        let pem = key.to_pem().ok_or_else(|| anyhow::anyhow!("generated key has no PEM form"))?;
        std::fs::write(&path, secrecy::ExposeSecret::expose_secret(&pem))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("no --key given: generated {} with name {}", path.display(), key.name());
        accepted.insert(key.name().to_string(), key.public_key());
    }
    let sandbox = Sandbox::new(seed);
    sandbox.skew(chrono::Duration::milliseconds(clock_skew_ms));
    // Which key and which replica asked, for GET /sandbox/requests.
    sandbox.record_requests();
    if let Some(faults) = faults {
        let faults: Faults = serde_json::from_str(faults).map_err(|e| UsageError(format!("--faults: {e}")))?;
        sandbox.set_faults(faults);
    }
    let state = ServerState::new(sandbox, accepted, NonZeroU32::new(rate_limit));
    let token = signal_token();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    println!("Coinbase simulator listening on http://{}", listener.local_addr()?);
    sandbox_server::serve(listener, state, token).await.context("simulator server failed")
}
