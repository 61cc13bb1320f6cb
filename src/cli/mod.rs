//! The command line: the clap definition (`Cli`, `Global`, `Command`), config loading (file, then
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

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::{self, Config, FileConfig, LogFormat, Overrides};
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
#[derive(Debug, Clone, Args)]
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
    /// Log filter, tracing EnvFilter syntax (e.g. info,ordersync=debug) [default: info,sqlx=warn]
    #[arg(long, global = true, env = config::ENV_LOG, value_name = "FILTER")]
    pub log: Option<String>,
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
                            current.\n\n\
                            SIGHUP (systemctl reload) reads the configuration again: thresholds, the brake, e-mail\n\
                            recipients and the log filter change at once; the log names what needs a restart.")]
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
            log: self.log.clone(),
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
    config::resolve(&global.overrides(), &file, &name, &config::System).map_err(|e| UsageError(e.to_string()).into())
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
        Command::Completions { shell } => return generate::completions(shell),
        Command::Man => return generate::man(),
        _ => {}
    }
    let config = load_config(&cli.global)?;
    if let Some(filter) = &config.log {
        // The file's `log` (flags and the environment were read at start, and win).
        let _ = crate::telemetry::set_filter(filter);
    }
    match cli.command {
        Command::Serve { no_migrate } => serve::serve(&config, &cli.global, no_migrate).await.map(|()| 0),
        Command::Reconcile { once, dry_run, json, no_migrate, allow_mass_correction } => {
            let mut config = config;
            config.brake.allowed = allow_mass_correction;
            reconcile::reconcile(&config, once, dry_run, json, no_migrate).await
        }
        Command::Prune { older_than, events } => prune::prune(&config, older_than, events).await.map(|()| 0),
        Command::Audit { json, fail_on_mismatch } => audit::audit(&config, json, fail_on_mismatch).await,
        Command::Migrate => migrate::migrate(&config).await.map(|()| 0),
        Command::Report { since, format, output } => {
            report::report(&config, &since, format, output.as_deref()).await.map(|()| 0)
        }
        Command::Sandbox { listen, keys, rate_limit, seed, faults, clock_skew_ms } => {
            sandbox::sandbox(&listen, &keys, rate_limit, seed, faults.as_deref(), clock_skew_ms).await.map(|()| 0)
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
