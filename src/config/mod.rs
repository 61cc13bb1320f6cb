//! Configuration, typed once: flags beat environment, environment beats the TOML file, the file beats
//! defaults. `resolve` is pure (no environment reads, no I/O) so every rule is tested with plain values;
//! reading the file and the environment happens in `cli.rs`.
//!
//! Deliberately not here: connecting to anything. A `Config` says what to connect to; `app.rs` connects.

pub mod settings;
pub use settings::Overrides;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::db::trades::{OptionalColumn, SqlIdent, StatusWords, TradesSchema};

pub const ENV_CONFIG: &str = "ORDERSYNC_CONFIG";
pub const ENV_DATABASE_URL: &str = "ORDERSYNC_DATABASE_URL";
pub const ENV_COINBASE_KEY_NAME: &str = "ORDERSYNC_COINBASE_KEY_NAME";
pub const ENV_COINBASE_KEY_FILE: &str = "ORDERSYNC_COINBASE_KEY_FILE";
pub const ENV_COINBASE_PRIVATE_KEY: &str = "ORDERSYNC_COINBASE_PRIVATE_KEY";
pub const ENV_API_TOKEN: &str = "ORDERSYNC_API_TOKEN";
pub const ENV_SMTP_HOST: &str = "ORDERSYNC_SMTP_HOST";
pub const ENV_EMAIL_TO: &str = "ORDERSYNC_EMAIL_TO";
pub const ENV_RETENTION: &str = "ORDERSYNC_RETENTION";
pub const ENV_LOG: &str = "ORDERSYNC_LOG";
pub const ENV_LOG_FORMAT: &str = "ORDERSYNC_LOG_FORMAT";

pub const DEFAULT_COINBASE_API_URL: &str = "https://api.coinbase.com";
/// 9787 is outside the ports of the exporters people run beside us (node 9100, postgres 9187,
/// blackbox 9115, Prometheus 9090, Alertmanager 9093, Pushgateway 9091).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9787";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Terminal rows created this recently are checked once against the exchange.
pub const DEFAULT_VERIFY_WINDOW: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_FLAG_AFTER: u32 = 3;
/// Orders looked up (and then written) per round; the client puts as many ids in one List Orders URL as fit
/// `exchange::coinbase::MAX_URL_BYTES` (164).
pub const DEFAULT_BATCH_SIZE: usize = 984;
/// Coinbase allows about 30 private requests per second per user; stay well below it.
pub const DEFAULT_RATE_LIMIT: u32 = 20;
/// Coinbase sends a heartbeat every second; this long without any message means the socket is deaf.
pub const DEFAULT_WEBSOCKET_STALL_AFTER: Duration = Duration::from_secs(10);
pub const DEFAULT_METRICS_REFRESH: Duration = Duration::from_secs(15);
/// The mass-correction brake: a pass correcting more rows than this writes none.
pub const DEFAULT_MAX_CORRECTIONS_PER_PASS: usize = 1000;
/// ... or more than this share of the pending rows (above `reconcile::BRAKE_SHARE_FLOOR` corrections).
pub const DEFAULT_MAX_CORRECTION_SHARE: f64 = 0.5;
/// Check state of settled orders and settlements older than this are pruned daily by `serve`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// The not-found policy's defaults, when `[not_found]` is present without them.
pub const DEFAULT_NOT_FOUND_AFTER_CHECKS: u32 = 5;
pub const DEFAULT_NOT_FOUND_AFTER: Duration = Duration::from_secs(3600);

/// One bad configuration value: which key, what it was, and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// Where the value came from, in the words the user typed: `--poll-interval / ORDERSYNC_POLL_INTERVAL`
    /// or `poll_interval in ordersync.toml`.
    pub key: String,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: invalid value {:?}: expected {}", self.key, self.value, self.expected)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Every bad key at once, so a user fixes them in one round.
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<BadValue>),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{key} is not set: {hint}")]
    Missing { key: &'static str, hint: &'static str },
}

fn list(bad: &[BadValue]) -> String {
    bad.iter().map(|b| format!("  - {b}")).collect::<Vec<_>>().join("\n")
}

/// Parse a duration such as `500ms`, `30s`, `5m`, `2h` or `1d`: one whole number and one unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "a whole number followed by ms, s, m, h or d, e.g. 30s, 5m, 2h";
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| EXPECTED.to_string())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => return Err(EXPECTED.to_string()),
    };
    millis.map(Duration::from_millis).ok_or_else(|| "a shorter duration".to_string())
}

/// Format a duration the way `parse_duration` reads it (largest exact unit).
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Coinbase access. The key stays secret from the moment it is read.
#[derive(Debug, Clone)]
pub struct CoinbaseConfig {
    pub api_url: String,
    pub key_name: Option<String>,
    pub key_file: Option<PathBuf>,
    /// The private key itself, when not in a file (environment only: never in the config file).
    pub private_key: Option<SecretString>,
    /// Client-side limit on requests per second, shared by every task.
    pub rate_limit: u32,
    /// The user channel's URL.
    pub ws_url: String,
    /// Listen to the user channel (when there are credentials).
    pub websocket: bool,
    /// Reconnect when the socket has been silent this long.
    pub websocket_stall_after: Duration,
}

/// One Coinbase account: its key, its rate limit, and which rows are its own.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// The `account` label and events column; `default` for the single key of the flags and environment.
    pub name: String,
    pub key_name: Option<String>,
    pub key_file: Option<PathBuf>,
    /// The private key itself, read from the environment variable the account names.
    pub private_key: Option<SecretString>,
    /// Requests per second with this key (Coinbase limits each key on its own).
    pub rate_limit: u32,
    /// Bot ids (exact or glob patterns) whose rows are this account's.
    pub bots: Vec<String>,
    /// Rows no other account claims are this account's.
    pub default: bool,
}

impl AccountConfig {
    /// The rule `account::AccountMap` compiles.
    pub fn rule(&self) -> crate::account::AccountRule {
        crate::account::AccountRule { name: self.name.clone(), bots: self.bots.clone(), default: self.default }
    }
}

/// How to reach the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Tls,
}

/// E-mail alerts, on when a host and at least one recipient are set.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: String,
    pub to: Vec<String>,
    pub remind_every: Duration,
    pub max_per_hour: u32,
}

/// The typed configuration every command runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The bot's database; may carry a password, so it is held as a secret (`db::redact_url` to show it).
    pub database_url: Option<SecretString>,
    pub coinbase: CoinbaseConfig,
    /// The Coinbase accounts, at least one: `[[accounts]]`, or else one named `default` with the key of
    /// `coinbase` (flags, environment, `[coinbase]`).
    pub accounts: Vec<AccountConfig>,
    pub poll_interval: Duration,
    pub stuck_after: Duration,
    /// How long after the exchange ended an order the bot is given to write it itself, before ordersync
    /// corrects the row (both paths: WebSocket and poll). Pending orders younger than this are not checked.
    pub grace: Duration,
    /// Terminal rows created within this window are checked once against the exchange (again only when
    /// the bot changes them): settled by the bot, or a terminal conflict.
    pub verify_window: Duration,
    /// Consecutive unresolved checks (not found, unknown status, ambiguous answers) before an order is flagged.
    pub flag_after: u32,
    /// Orders looked up and written per round (List Orders URLs carry as many ids as fit 8 KB).
    pub batch_size: usize,
    pub listen: SocketAddr,
    pub metrics_refresh: Duration,
    pub api_token: Option<SecretString>,
    pub email: Option<EmailConfig>,
    pub trades: TradesSchema,
    /// The mass-correction brake (`allowed` is set only by `reconcile --once --allow-mass-correction`).
    pub brake: crate::reconcile::Brake,
    /// Check and export everything; write nothing to the bot's table.
    pub observe_only: bool,
    /// What `serve` prunes daily, and `prune`'s default: check state of settled orders and settlements
    /// older than this. `None`: never.
    pub retention: Option<Duration>,
    /// Replicas on PostgreSQL: an account's lease (`replica`).
    pub lease: Duration,
    /// This replica's name (default: host name and pid).
    pub replica: String,
    /// The opt-in policy for orders Coinbase never knew; `None` (off) unless `[not_found]` is configured.
    pub not_found: Option<crate::decide::NotFoundPolicy>,
    /// The log filter of `--log`, `ORDERSYNC_LOG` or the file's `log`; `None`: `telemetry::DEFAULT_FILTER`.
    pub log: Option<String>,
}

/// The TOML file. Every key is optional; unknown keys are an error, all of them named at once, so a typo
/// never goes unnoticed. The one-value keys are those of `settings::SETTINGS` (top level, `[coinbase]`,
/// `[email]`), read as written and parsed by `resolve` like a flag's text; the tables of more than one
/// value (`[[accounts]]`, `[trades]`, `[not_found]`) are typed here.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    /// By dotted key (`poll_interval`, `email.smtp_host`): every value held as a secret, so no `Debug`
    /// shows a database URL or token.
    values: settings::Overrides,
    /// Present: the not-found policy is on.
    pub not_found: Option<FileNotFound>,
    /// `[[accounts]]`: several Coinbase accounts, each with its own key.
    pub accounts: Vec<FileAccount>,
    pub trades: FileTrades,
}

/// The tables of more than one value, typed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTables {
    not_found: Option<FileNotFound>,
    #[serde(default)]
    accounts: Vec<FileAccount>,
    #[serde(default)]
    trades: FileTrades,
}

/// `[not_found]`: the opt-in policy for orders Coinbase never knew.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNotFound {
    pub after_checks: Option<u32>,
    pub after: Option<String>,
    /// `failed`, `cancelled` or `expired`: the bot's word for it is written.
    pub write: Option<String>,
}

/// `[[accounts]]`: one Coinbase account. The key is a file or an environment variable, never this file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccount {
    pub name: Option<String>,
    pub key_file: Option<String>,
    pub key_name: Option<String>,
    /// The name of an environment variable holding the private key.
    pub private_key_env: Option<String>,
    pub rate_limit: Option<u32>,
    #[serde(default)]
    pub bots: Vec<String>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTrades {
    pub table: Option<String>,
    pub order_id: Option<String>,
    pub status: Option<String>,
    pub created_at: Option<String>,
    pub filled_at: Option<String>,
    /// `""` switches an optional column off.
    pub bot_id: Option<String>,
    pub product_id: Option<String>,
    pub filled_price: Option<String>,
    pub filled_size: Option<String>,
    /// The column naming each row's account (`[[accounts]]` names).
    pub account: Option<String>,
    #[serde(default)]
    pub status_words: BTreeMap<String, String>,
}

impl FileConfig {
    /// Parse TOML text; `path` only names the file in errors.
    ///
    /// # Errors
    /// `ConfigError::ParseFile`: the TOML does not parse, keys nobody reads (all of them), or a table of
    /// more than one value that does not fit.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError::ParseFile { path: path.to_path_buf(), message };
        let table: toml::Table = toml::from_str(text).map_err(|error| fail(error.to_string()))?;
        let mut values = settings::Overrides::default();
        let mut tables = toml::Table::new();
        let mut unknown: Vec<String> = Vec::new();
        let mut take = |key: String, value: toml::Value, unknown: &mut Vec<String>| match settings::by_key(&key) {
            Some(setting) => values.set_key(setting.key, value_text(value)),
            None => unknown.push(key),
        };
        for (key, value) in table {
            match (key.as_str(), value) {
                ("not_found" | "accounts" | "trades", value) => {
                    tables.insert(key, value);
                }
                ("coinbase" | "email", toml::Value::Table(section)) => {
                    for (inner, value) in section {
                        take(format!("{key}.{inner}"), value, &mut unknown);
                    }
                }
                (_, value) => take(key, value, &mut unknown),
            }
        }
        if !unknown.is_empty() {
            let keys: Vec<String> = unknown.iter().map(|key| format!("`{key}`")).collect();
            return Err(fail(format!(
                "unknown key{} {}: the keys are the file keys of the README's configuration reference",
                if keys.len() == 1 { "" } else { "s" },
                keys.join(", ")
            )));
        }
        let tables: FileTables =
            toml::Value::Table(tables).try_into().map_err(|error: toml::de::Error| fail(error.to_string()))?;
        Ok(FileConfig { values, not_found: tables.not_found, accounts: tables.accounts, trades: tables.trades })
    }

    /// The value of a one-value key as written (a list joined by commas), when present.
    pub fn get(&self, key: &str) -> Option<String> {
        self.values.get(key)
    }

    fn secret(&self, key: &str) -> Option<SecretString> {
        self.values.secret(key)
    }
}

/// A TOML value as a flag would give it: strings as they are, numbers and booleans written out, a list's
/// items joined by commas (`email.to`).
fn value_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(text) => text,
        toml::Value::Array(items) => items.into_iter().map(value_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Collects bad values while resolving, so all of them are reported together.
struct Resolver<'a> {
    file_name: &'a str,
    over: &'a Overrides,
    file: &'a FileConfig,
    reader: &'a dyn Reader,
    bad: Vec<BadValue>,
}

impl Resolver<'_> {
    /// `--flag`'s override, else the file's value, else nothing; parsed; a failure remembered under the
    /// name the user wrote (`--flag / ENV`, or the file key and file).
    fn pick<T>(&mut self, flag: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let setting = settings::by_flag(flag).unwrap_or_else(|| panic!("no setting has the flag --{flag}"));
        let (key, value) = match (self.over.get(flag), self.file.get(setting.key)) {
            (Some(value), _) => (setting.flag_and_env(), value),
            (None, Some(value)) => (format!("{} in {}", setting.key, self.file_name), value),
            (None, None) => return None,
        };
        self.parse(key, value, parse)
    }

    /// A key that only the file has (`trades.table`, `not_found.after`).
    fn pick_file<T>(
        &mut self,
        key: &str,
        file_value: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = file_value?;
        self.parse(format!("{key} in {}", self.file_name), value, parse)
    }

    fn parse<T>(&mut self, key: String, value: String, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        match parse(&value) {
            Ok(parsed) => Some(parsed),
            Err(expected) => {
                self.bad.push(BadValue { key, value, expected });
                None
            }
        }
    }
}

fn parse_database_url(text: &str) -> Result<String, String> {
    if text.starts_with("sqlite:") || text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(text.to_string())
    } else {
        Err("a URL starting with sqlite:// or postgres://, e.g. sqlite://trades.db".into())
    }
}

fn parse_http_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
            Ok(text.trim_end_matches('/').to_string())
        }
        _ => Err("an http:// or https:// URL, e.g. https://api.coinbase.com".into()),
    }
}

fn parse_ws_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "ws" | "wss") && url.host_str().is_some() => Ok(text.to_string()),
        _ => Err("a ws:// or wss:// URL, e.g. wss://advanced-trade-ws-user.coinbase.com".into()),
    }
}

fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err("on or off".into()),
    }
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(value) if value > T::default() => Ok(value),
        _ => Err("a whole number greater than 0".into()),
    }
}

/// Coinbase's documented limit for private endpoints: about 30 requests per second per key.
pub const COINBASE_PRIVATE_RATE_LIMIT: u32 = 30;

fn parse_rate_limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(value) if (1..=COINBASE_PRIVATE_RATE_LIMIT).contains(&value) => Ok(value),
        _ => Err(format!(
            "a whole number from 1 to {COINBASE_PRIVATE_RATE_LIMIT} (Coinbase allows about \
             {COINBASE_PRIVATE_RATE_LIMIT} private requests per second per key; more is answered 429)"
        )),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err("a duration greater than 0, e.g. 30s".into()),
        duration => Ok(duration),
    }
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| "an address with a port, e.g. 127.0.0.1:9787 or 0.0.0.0:9787".into())
}

/// What the configuration only names, `resolve` reads through this: an account's key from the environment
/// variable its `private_key_env` names, and the SMTP password from `smtp_password_file`. The binary passes
/// `System`; a test may pass its own. `resolve` itself reads no environment variable and no file.
pub trait Reader {
    fn var(&self, name: &str) -> Option<String>;
    fn file(&self, path: &std::path::Path) -> std::io::Result<String>;
}

/// The process's environment and file system.
pub struct System;

impl Reader for System {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &std::path::Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Turn overrides and the file into a `Config`, reporting every bad key at once.
///
/// # Errors
/// `ConfigError::Invalid` listing each key, its value and what is accepted.
pub fn resolve(
    over: &Overrides,
    file: &FileConfig,
    file_name: &str,
    reader: &dyn Reader,
) -> Result<Config, ConfigError> {
    let mut r = Resolver { file_name, over, file, reader, bad: Vec::new() };
    // The URL may carry a password: exposed only to parse it here; an error shows it with the password hidden.
    let bad_before = r.bad.len();
    let database_url = r.pick("database-url", parse_database_url).map(SecretString::from);
    for bad in &mut r.bad[bad_before..] {
        bad.value = crate::db::redact_url(&bad.value);
    }
    let api_url = r.pick("coinbase-api-url", parse_http_url);
    let key_name = r.pick("coinbase-key-name", |text| Ok::<_, String>(text.to_string()));
    let key_file = r.pick("coinbase-key-file", |text| Ok::<_, String>(PathBuf::from(text)));
    let rate_limit = r.pick("coinbase-rate-limit", parse_rate_limit);
    let ws_url = r.pick("coinbase-ws-url", parse_ws_url);
    let websocket = r.pick("websocket", parse_switch);
    let websocket_stall_after = r.pick("websocket-stall-after", parse_positive_duration);
    let poll_interval = r.pick("poll-interval", parse_positive_duration);
    let stuck_after = r.pick("stuck-after", parse_positive_duration);
    let grace = r.pick("grace", parse_duration);
    let verify_window = r.pick("verify-window", parse_duration);
    let flag_after = r.pick("flag-after", parse_positive::<u32>);
    let batch_size = r.pick("batch-size", |text| match parse_positive::<usize>(text) {
        Ok(size) if size <= 1000 => Ok(size),
        _ => Err("a whole number from 1 to 1000".to_string()),
    });
    let listen = r.pick("listen", parse_listen);
    let metrics_refresh = r.pick("metrics-refresh", parse_positive_duration);
    let api_token = resolve_secret(&mut r, "api-token");
    let max_corrections = r.pick("max-corrections-per-pass", parse_positive::<usize>);
    let max_share = r.pick("max-correction-share", |text| match text.trim().parse::<f64>() {
        Ok(share) if share > 0.0 && share <= 1.0 => Ok(share),
        _ => Err("a share of the pending rows above 0 and at most 1, e.g. 0.5".to_string()),
    });
    let observe_only = r.pick("observe-only", parse_switch);
    let retention = r.pick("retention", parse_retention);
    let lease = r.pick("lease", |text| match parse_duration(text) {
        Ok(lease) if (Duration::from_secs(3)..=Duration::from_secs(600)).contains(&lease) => Ok(lease),
        _ => Err("a duration from 3s to 10m, e.g. 15s".to_string()),
    });
    let replica = r.pick("replica", |text| match text.trim() {
        name if crate::account::valid_name(name)
            || (name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic())) =>
        {
            Ok(name.to_string())
        }
        _ => Err("a name of at most 64 printable characters without spaces, e.g. ordersync-1".to_string()),
    });
    let not_found = file.not_found.as_ref().and_then(|policy| resolve_not_found(&mut r, policy));
    let log = r.pick("log", parse_log_filter);
    let single_key = [
        (key_file.is_some(), "--coinbase-key-file / ORDERSYNC_COINBASE_KEY_FILE / coinbase.key_file"),
        (over.is_set("coinbase-private-key"), "ORDERSYNC_COINBASE_PRIVATE_KEY"),
        (key_name.is_some(), "--coinbase-key-name / ORDERSYNC_COINBASE_KEY_NAME / coinbase.key_name"),
    ];
    let accounts = resolve_accounts(&mut r, &file.accounts, &single_key, rate_limit);
    let trades = resolve_trades(&mut r, &file.trades);
    let email = resolve_email(&mut r);
    // Settlements younger than the verify window keep recent terminal rows from being checked (and
    // settled) again: the retention never reaches into it.
    let window = verify_window.unwrap_or(DEFAULT_VERIFY_WINDOW);
    if let Some(Some(kept)) = retention {
        if kept < window {
            let (key, value) = match (over.get("retention"), file.get("retention")) {
                (Some(value), _) => (format!("--retention / {ENV_RETENTION}"), value),
                (None, Some(value)) => (format!("retention in {}", r.file_name), value),
                (None, None) => ("retention".to_string(), format_duration(kept)),
            };
            let expected = format!("at least the verify window ({}), or off", format_duration(window));
            r.bad.push(BadValue { key, value, expected });
        }
    }

    if !r.bad.is_empty() {
        return Err(ConfigError::Invalid(r.bad));
    }
    let default_listen = DEFAULT_LISTEN.parse().expect("DEFAULT_LISTEN is a valid socket address");
    let rate_limit = rate_limit.unwrap_or(DEFAULT_RATE_LIMIT);
    let accounts = accounts.unwrap_or_else(|| {
        vec![AccountConfig {
            name: crate::account::DEFAULT_ACCOUNT.to_string(),
            key_name: key_name.clone(),
            key_file: key_file.clone(),
            private_key: over.secret("coinbase-private-key"),
            rate_limit,
            bots: Vec::new(),
            default: true,
        }]
    });
    Ok(Config {
        database_url,
        accounts,
        coinbase: CoinbaseConfig {
            api_url: api_url.unwrap_or_else(|| DEFAULT_COINBASE_API_URL.to_string()),
            key_name,
            key_file,
            private_key: over.secret("coinbase-private-key"),
            rate_limit,
            ws_url: ws_url.unwrap_or_else(|| crate::exchange::ws::DEFAULT_USER_WS_URL.to_string()),
            websocket: websocket.unwrap_or(true),
            websocket_stall_after: websocket_stall_after.unwrap_or(DEFAULT_WEBSOCKET_STALL_AFTER),
        },
        poll_interval: poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
        stuck_after: stuck_after.unwrap_or(DEFAULT_STUCK_AFTER),
        grace: grace.unwrap_or(DEFAULT_GRACE),
        verify_window: verify_window.unwrap_or(DEFAULT_VERIFY_WINDOW),
        flag_after: flag_after.unwrap_or(DEFAULT_FLAG_AFTER),
        batch_size: batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        listen: listen.unwrap_or(default_listen),
        metrics_refresh: metrics_refresh.unwrap_or(DEFAULT_METRICS_REFRESH),
        api_token,
        email,
        trades,
        brake: crate::reconcile::Brake {
            max_corrections: max_corrections.unwrap_or(DEFAULT_MAX_CORRECTIONS_PER_PASS),
            max_share: max_share.unwrap_or(DEFAULT_MAX_CORRECTION_SHARE),
            allowed: false,
        },
        observe_only: observe_only.unwrap_or(false),
        retention: retention.unwrap_or(Some(DEFAULT_RETENTION)),
        lease: lease.unwrap_or(crate::replica::DEFAULT_LEASE),
        replica: replica.unwrap_or_else(crate::replica::default_replica_name),
        not_found,
        log,
    })
}

fn parse_log_filter(text: &str) -> Result<String, String> {
    match tracing_subscriber::EnvFilter::try_new(text) {
        Ok(_) => Ok(text.to_string()),
        Err(error) => Err(format!("a tracing filter such as info,sqlx=warn or ordersync=debug ({error})")),
    }
}

/// `[[accounts]]`, checked: `None` when there are none (the single key of `[coinbase]` serves). Each needs a
/// name, exactly one key source, and valid bot patterns; the single-key settings may not be set beside them.
fn resolve_accounts(
    r: &mut Resolver<'_>,
    file: &[FileAccount],
    single_key: &[(bool, &str)],
    default_rate: Option<u32>,
) -> Option<Vec<AccountConfig>> {
    if file.is_empty() {
        return None;
    }
    let file_name = r.file_name.to_string();
    for (set, key) in single_key {
        if *set {
            r.bad.push(BadValue {
                key: (*key).to_string(),
                value: "set".into(),
                expected: format!(
                    "unset when {file_name} has [[accounts]]: give each account its key in its own [[accounts]] \
                     entry (key_file, or private_key_env)"
                ),
            });
        }
    }
    let mut accounts = Vec::with_capacity(file.len());
    for (index, entry) in file.iter().enumerate() {
        let at = |field: &str| match &entry.name {
            Some(name) => format!("accounts[{index}].{field} (account {name:?}) in {file_name}"),
            None => format!("accounts[{index}].{field} in {file_name}"),
        };
        let mut bad = |key: String, value: String, expected: &str| {
            r.bad.push(BadValue { key, value, expected: expected.to_string() })
        };
        let name = entry.name.clone().unwrap_or_default();
        if !crate::account::valid_name(&name) {
            bad(at("name"), name.clone(), "a name of 1 to 32 letters, digits, - or _ (the account label), e.g. main");
        } else if file[..index].iter().any(|other| other.name.as_deref() == Some(name.as_str())) {
            bad(at("name"), name.clone(), "a name no other account has");
        }
        let private_key = match &entry.private_key_env {
            Some(var) => match r.reader.var(var) {
                Some(value) if !value.trim().is_empty() => Some(SecretString::from(value)),
                _ => {
                    bad(at("private_key_env"), var.clone(), "the name of a set environment variable holding the key");
                    None
                }
            },
            None => None,
        };
        match (&entry.key_file, &entry.private_key_env) {
            (Some(_), Some(_)) => bad(
                at("key_file"),
                entry.key_file.clone().unwrap_or_default(),
                "either key_file or private_key_env, not both",
            ),
            (None, None) => bad(
                at("key_file"),
                String::new(),
                "a CDP key file (key_file), or private_key_env naming the environment variable that holds the key",
            ),
            _ => {}
        }
        let rate_limit = match entry.rate_limit {
            Some(rate) => match parse_rate_limit(&rate.to_string()) {
                Ok(rate) => rate,
                Err(expected) => {
                    bad(at("rate_limit"), rate.to_string(), &expected);
                    DEFAULT_RATE_LIMIT
                }
            },
            None => default_rate.unwrap_or(DEFAULT_RATE_LIMIT),
        };
        accounts.push(AccountConfig {
            name,
            key_name: entry.key_name.clone(),
            key_file: entry.key_file.as_ref().map(PathBuf::from),
            private_key,
            rate_limit,
            bots: entry.bots.clone(),
            default: entry.default,
        });
    }
    let rules: Vec<crate::account::AccountRule> = accounts.iter().map(AccountConfig::rule).collect();
    if let Err(error) = crate::account::AccountMap::new(&rules) {
        r.bad.push(BadValue {
            key: format!("[[accounts]] in {file_name}"),
            value: error.0,
            expected: "glob patterns such as grid-* or dca-[0-9], and at most one default account".into(),
        });
    }
    Some(accounts)
}

/// `off`, or a duration of at least a day.
fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    const EXPECTED: &str = "off, or a duration of at least 1d, e.g. 90d";
    if matches!(text.trim().to_ascii_lowercase().as_str(), "off" | "never") {
        return Ok(None);
    }
    match parse_duration(text) {
        Ok(duration) if duration >= Duration::from_secs(86_400) => Ok(Some(duration)),
        _ => Err(EXPECTED.to_string()),
    }
}

fn resolve_not_found(r: &mut Resolver<'_>, file: &FileNotFound) -> Option<crate::decide::NotFoundPolicy> {
    let after_checks = r.pick_file("not_found.after_checks", file.after_checks.map(|v| v.to_string()), |text| {
        match text.trim().parse::<u32>() {
            // One 404 is weak evidence (a young order can answer 404 for a while): never enough alone.
            Ok(n) if (2..=100).contains(&n) => Ok(n),
            _ => Err("a whole number from 2 to 100".to_string()),
        }
    });
    let after = r.pick_file("not_found.after", file.after.clone(), parse_duration);
    let write =
        r.pick_file("not_found.write", file.write.clone(), |text| match text.trim().to_ascii_lowercase().as_str() {
            "failed" => Ok(crate::decide::Terminal::Failed),
            "cancelled" => Ok(crate::decide::Terminal::Cancelled),
            "expired" => Ok(crate::decide::Terminal::Expired),
            _ => Err("failed, cancelled or expired (never completed: no fill is claimed for an order Coinbase \
                      does not know)"
                .to_string()),
        });
    let after = after.unwrap_or(DEFAULT_NOT_FOUND_AFTER);
    Some(crate::decide::NotFoundPolicy {
        after_checks: after_checks.unwrap_or(DEFAULT_NOT_FOUND_AFTER_CHECKS),
        after: chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX),
        write: write.unwrap_or(crate::decide::Terminal::Failed),
    })
}

fn parse_tls(text: &str) -> Result<SmtpTls, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "none" => Ok(SmtpTls::None),
        "starttls" => Ok(SmtpTls::StartTls),
        "tls" => Ok(SmtpTls::Tls),
        _ => Err("none, starttls or tls".into()),
    }
}

fn parse_address(text: &str) -> Result<String, String> {
    match text.trim().parse::<lettre::message::Mailbox>() {
        Ok(_) => Ok(text.trim().to_string()),
        Err(_) => Err("an e-mail address, e.g. ordersync@example.com or \"ordersync <ordersync@example.com>\"".into()),
    }
}

fn resolve_email(r: &mut Resolver<'_>) -> Option<EmailConfig> {
    let host = r.pick("smtp-host", |t| match t.trim() {
        "" => Err("a host name, e.g. smtp.example.com".to_string()),
        host => Ok(host.to_string()),
    });
    let tls = r.pick("smtp-tls", parse_tls).unwrap_or(SmtpTls::StartTls);
    let port = r.pick("smtp-port", parse_positive::<u16>);
    let username = r.pick("smtp-username", |t| Ok::<_, String>(t.to_string()));
    let password_file = r.pick("smtp-password-file", |path| {
        r.reader
            .file(std::path::Path::new(path))
            .map(|text| SecretString::from(text.trim_end_matches(['\r', '\n']).to_string()))
            .map_err(|e| format!("a readable file ({e})"))
    });
    let password = r.over.secret("smtp-password").or(password_file);
    let from = r.pick("email-from", parse_address);
    let to = r.pick("email-to", |text| {
        let list: Vec<&str> = text.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        if list.is_empty() {
            return Err("one or more e-mail addresses, separated by commas".to_string());
        }
        list.into_iter().map(parse_address).collect::<Result<Vec<_>, _>>()
    });
    let remind_every = r.pick("email-remind-every", parse_positive_duration);
    let max_per_hour = r.pick("email-max-per-hour", parse_positive::<u32>);
    let host = host?;
    let given = r.over.is_set("email-to") || r.file.get("email.to").is_some();
    let Some(to) = to else {
        if given {
            // Already reported as invalid.
            return None;
        }
        r.bad.push(BadValue {
            key: format!("--email-to / {ENV_EMAIL_TO}"),
            value: String::new(),
            expected: format!("at least one recipient when {ENV_SMTP_HOST} is set"),
        });
        return None;
    };
    Some(EmailConfig {
        port: port.unwrap_or(match tls {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        }),
        tls,
        username,
        password,
        from: from.unwrap_or_else(|| format!("ordersync@{host}")),
        to,
        remind_every: remind_every.unwrap_or(Duration::from_secs(3600)),
        max_per_hour: max_per_hour.unwrap_or(10),
        host,
    })
}

/// The API token is checked like any value but never echoed: the error shows `<redacted>`.
fn resolve_secret(r: &mut Resolver<'_>, flag: &str) -> Option<SecretString> {
    let setting = settings::by_flag(flag).unwrap_or_else(|| panic!("no setting has the flag --{flag}"));
    let (key, value) = match (r.over.secret(flag), r.file.secret(setting.key)) {
        (Some(value), _) => (setting.flag_and_env(), value),
        (None, Some(value)) => (format!("{} in {}", setting.key, r.file_name), value),
        (None, None) => return None,
    };
    if value.expose_secret().len() < 16 {
        r.bad.push(BadValue { key, value: "<redacted>".into(), expected: "a token of at least 16 characters".into() });
        return None;
    }
    Some(value)
}

fn resolve_trades(r: &mut Resolver<'_>, file: &FileTrades) -> TradesSchema {
    let defaults = TradesSchema::default();
    let mut required = |key: &str, value: &Option<String>, default: SqlIdent| {
        let key = format!("trades.{key}");
        r.pick_file(&key, value.clone(), SqlIdent::parse).unwrap_or(default)
    };
    let table = required("table", &file.table, defaults.table);
    let order_id = required("order_id", &file.order_id, defaults.order_id);
    let status = required("status", &file.status, defaults.status);
    let created_at = required("created_at", &file.created_at, defaults.created_at);
    let filled_at = required("filled_at", &file.filled_at, defaults.filled_at);
    let mut optional = |key: &str, value: &Option<String>, default: Option<OptionalColumn>| match value.as_deref() {
        None => default,
        Some("") => None,
        Some(text) => {
            let key = format!("trades.{key}");
            let accepted = |t: &str| SqlIdent::parse(t).map_err(|e| format!("{e}, or \"\" to not use the column"));
            r.pick_file(&key, Some(text.to_string()), accepted).map(|name| OptionalColumn { name, explicit: true })
        }
    };
    let bot_id = optional("bot_id", &file.bot_id, defaults.bot_id);
    let product_id = optional("product_id", &file.product_id, defaults.product_id);
    let filled_price = optional("filled_price", &file.filled_price, defaults.filled_price);
    let filled_size = optional("filled_size", &file.filled_size, defaults.filled_size);
    let account = optional("account", &file.account, defaults.account);

    let mut words = StatusWords::default();
    for (key, value) in &file.status_words {
        let slot = match key.as_str() {
            "pending" => &mut words.pending,
            "completed" => &mut words.completed,
            "cancelled" => &mut words.cancelled,
            "expired" => &mut words.expired,
            "failed" => &mut words.failed,
            _ => {
                r.bad.push(BadValue {
                    key: format!("trades.status_words.{key} in {}", r.file_name),
                    value: value.clone(),
                    expected: "one of the keys pending, completed, cancelled, expired, failed".into(),
                });
                continue;
            }
        };
        if value.trim().is_empty() || value.len() > 64 {
            r.bad.push(BadValue {
                key: format!("trades.status_words.{key} in {}", r.file_name),
                value: value.clone(),
                expected: "a non-empty word of at most 64 characters".into(),
            });
        } else {
            *slot = value.clone();
        }
    }
    let all = [&words.pending, &words.completed, &words.cancelled, &words.expired, &words.failed];
    for (index, word) in all.iter().enumerate() {
        if all[..index].contains(word) {
            r.bad.push(BadValue {
                key: format!("trades.status_words in {}", r.file_name),
                value: (*word).clone(),
                expected: "five different words: one status word may not stand for two statuses".into(),
            });
        }
    }
    TradesSchema {
        table,
        order_id,
        status,
        created_at,
        filled_at,
        bot_id,
        product_id,
        filled_price,
        filled_size,
        account,
        words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(over: Overrides, file_text: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(file_text, std::path::Path::new("test.toml"))?;
        resolve(&over, &file, "test.toml", &System)
    }

    fn bad_keys(result: Result<Config, ConfigError>) -> Vec<String> {
        match result {
            Err(ConfigError::Invalid(bad)) => bad.into_iter().map(|b| b.key).collect(),
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn the_settings_of_months_in_production_are_checked_every_one() {
        let config = resolve_with(Overrides::default(), "").unwrap();
        assert_eq!(config.brake.max_corrections, DEFAULT_MAX_CORRECTIONS_PER_PASS);
        assert_eq!((config.observe_only, config.retention, config.not_found), (false, Some(DEFAULT_RETENTION), None));
        let on =
            resolve_with(Overrides::default(), "[not_found]\nafter_checks = 4\nafter = \"2h\"\nwrite = \"expired\"")
                .unwrap();
        let policy = on.not_found.expect("present: on");
        assert_eq!(
            (policy.after_checks, policy.after, policy.write),
            (4, chrono::Duration::hours(2), crate::decide::Terminal::Expired)
        );
        let over = Overrides::default()
            .with("max-correction-share", "2")
            .with("retention", "1h")
            .with("observe-only", "maybe");
        let bad = bad_keys(resolve_with(
            over,
            "max_corrections_per_pass = 0\n[not_found]\nafter_checks = 1\nwrite = \"completed\"",
        ));
        for key in [
            "--max-correction-share / ORDERSYNC_MAX_CORRECTION_SHARE",
            "--retention / ORDERSYNC_RETENTION",
            "--observe-only / ORDERSYNC_OBSERVE_ONLY",
            "max_corrections_per_pass in test.toml",
            "not_found.after_checks in test.toml",
            "not_found.write in test.toml",
        ] {
            assert!(bad.contains(&key.to_string()), "{key} not in {bad:?}");
        }
        // A retention inside the verify window would let recent terminal rows be settled twice.
        let inside = Overrides::default().with("retention", "2d").with("verify-window", "7d");
        assert_eq!(bad_keys(resolve_with(inside, "")), vec!["--retention / ORDERSYNC_RETENTION".to_string()]);
        let off = Overrides::default().with("retention", "off");
        assert_eq!(resolve_with(off, "").unwrap().retention, None);
    }

    /// The file takes each one-value key of the settings table, where the table says (top level,
    /// `[coinbase]`, `[email]`), and refuses every other key, naming all of them at once.
    #[test]
    fn the_file_takes_exactly_the_keys_the_settings_table_names() {
        let path = std::path::Path::new("x.toml");
        for setting in settings::SETTINGS.iter().filter(|s| !s.key.is_empty() && !s.key.starts_with("not_found.")) {
            let text = match setting.key.split_once('.') {
                Some((section, key)) => format!("[{section}]\n{key} = \"v\""),
                None => format!("{} = \"v\"", setting.key),
            };
            let file = FileConfig::parse(&text, path).unwrap_or_else(|e| panic!("{}: {e}", setting.key));
            assert_eq!(file.get(setting.key).as_deref(), Some("v"), "{}", setting.key);
        }
        let policy = FileConfig::parse("[not_found]\nafter_checks = 2\nafter = \"1h\"\nwrite = \"failed\"", path);
        assert!(policy.unwrap().not_found.is_some());
        let error =
            FileConfig::parse("pol_interval = \"5s\"\n[email]\nsmpt_host = \"h\"\n[coinbase]\nkey = \"k\"", path)
                .unwrap_err()
                .to_string();
        for key in ["`pol_interval`", "`email.smpt_host`", "`coinbase.key`"] {
            assert!(error.contains(key), "every unknown key at once: {error}");
        }
    }

    #[test]
    fn file_values_are_read_as_written_and_never_shown() {
        let text = "flag_after = 4\nobserve_only = true\nmax_correction_share = 0.25\ndatabase_url = \"postgres://u:pw-s3cret@h/d\"\n\
                    [email]\nto = [\"a@example.com\", \"b@example.com\"]";
        let file = FileConfig::parse(text, std::path::Path::new("x.toml")).unwrap();
        assert_eq!(file.get("flag_after").as_deref(), Some("4"));
        assert_eq!(file.get("observe_only").as_deref(), Some("true"));
        assert_eq!(file.get("max_correction_share").as_deref(), Some("0.25"));
        assert_eq!(file.get("email.to").as_deref(), Some("a@example.com,b@example.com"));
        assert!(!format!("{file:?}").contains("pw-s3cret"));
        let bad = bad_keys(resolve_with(Overrides::default(), "flag_after = \"three\"\nobserve_only = \"maybe\""));
        assert_eq!(bad, vec!["flag_after in test.toml".to_string(), "observe_only in test.toml".to_string()]);
    }

    /// The defaults the settings table shows (in `--help` and the README) are the ones `resolve` applies.
    #[test]
    fn the_defaults_shown_are_the_defaults_applied() {
        let shown = |flag: &str| settings::by_flag(flag).unwrap().default;
        let config = resolve_with(Overrides::default(), "").unwrap();
        let durations = [
            ("poll-interval", config.poll_interval),
            ("stuck-after", config.stuck_after),
            ("grace", config.grace),
            ("verify-window", config.verify_window),
            ("metrics-refresh", config.metrics_refresh),
            ("websocket-stall-after", config.coinbase.websocket_stall_after),
            ("lease", config.lease),
        ];
        for (flag, applied) in durations {
            assert_eq!(parse_duration(shown(flag)), Ok(applied), "--{flag}");
        }
        assert_eq!(config.retention.map(format_duration).as_deref(), Some(shown("retention")));
        assert_eq!(shown("flag-after"), config.flag_after.to_string());
        assert_eq!(shown("batch-size"), config.batch_size.to_string());
        assert_eq!(shown("coinbase-rate-limit"), config.coinbase.rate_limit.to_string());
        assert_eq!(shown("max-corrections-per-pass"), config.brake.max_corrections.to_string());
        assert_eq!(shown("max-correction-share"), config.brake.max_share.to_string());
        assert_eq!(shown("listen"), config.listen.to_string());
        assert_eq!(shown("coinbase-api-url"), config.coinbase.api_url);
        assert_eq!(shown("coinbase-ws-url"), config.coinbase.ws_url);
        assert_eq!((shown("websocket"), shown("observe-only")), ("on", "off"));
        assert!(config.coinbase.websocket && !config.observe_only);
        let email =
            resolve_with(Overrides::default(), "[email]\nsmtp_host = \"h\"\nto = [\"a@b.c\"]").unwrap().email.unwrap();
        assert_eq!(parse_duration(shown("email-remind-every")), Ok(email.remind_every));
        assert_eq!(shown("email-max-per-hour"), email.max_per_hour.to_string());
        assert_eq!(shown("smtp-tls"), "starttls");
        assert_eq!(email.tls, SmtpTls::StartTls);
        let policy = resolve_with(Overrides::default(), "[not_found]").unwrap().not_found.unwrap();
        let shown_key = |key: &str| settings::SETTINGS.iter().find(|s| s.key == key).unwrap().default;
        assert!(shown_key("not_found.after_checks").starts_with(&policy.after_checks.to_string()));
        assert_eq!(
            parse_duration(shown_key("not_found.after")).map(|d| d.as_secs()),
            Ok(policy.after.num_seconds() as u64)
        );
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_refuse_bad_forms() {
        for bad in ["", "30", "s", "5 m", "1.5h", "-5m", "5min", "5M", "1h30m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_format_back_to_what_parses() {
        for text in ["30s", "5m", "2h", "1d", "1500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn identifiers_refuse_anything_that_could_inject_sql() {
        for good in ["trades", "_t", "bot_trades2", "public.trades"] {
            assert!(SqlIdent::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "1trades", "trades; drop table x", "tr\"ades", "a.b.c", "trades--", "t a", "é"] {
            assert!(SqlIdent::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(SqlIdent::parse("public.trades").unwrap().quoted(), "\"public\".\"trades\"");
    }

    #[test]
    fn defaults_match_the_incident_schema() {
        let config = resolve_with(Overrides::default(), "").unwrap();
        assert_eq!(config.poll_interval, Duration::from_secs(30));
        assert_eq!(config.stuck_after, Duration::from_secs(300));
        assert_eq!(config.coinbase.api_url, "https://api.coinbase.com");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.trades, TradesSchema::default());
        assert_eq!(config.trades.words.pending, "pending");
        assert!(config.database_url.is_none());
    }

    #[test]
    fn overrides_beat_the_file_and_the_file_beats_defaults() {
        let over = Overrides::default().with("poll-interval", "10s");
        let config = resolve_with(over, "poll_interval = \"1m\"\nstuck_after = \"15m\"").unwrap();
        assert_eq!(config.poll_interval, Duration::from_secs(10));
        assert_eq!(config.stuck_after, Duration::from_secs(900));
    }

    #[test]
    fn every_bad_key_is_named_with_its_value_and_what_is_accepted() {
        let over = Overrides::default().with("poll-interval", "soon").with("database-url", "mysql://x");
        let result = resolve_with(over, "stuck_after = \"5 minutes\"\n[trades]\ntable = \"trades; drop\"");
        let message = match &result {
            Err(error) => error.to_string(),
            Ok(_) => panic!("expected an error"),
        };
        assert!(message.contains("--poll-interval / ORDERSYNC_POLL_INTERVAL: invalid value \"soon\""), "{message}");
        assert!(message.contains("e.g. 30s, 5m, 2h"), "{message}");
        assert!(message.contains("stuck_after in test.toml"), "{message}");
        assert!(message.contains("trades.table in test.toml"), "{message}");
        assert!(message.contains("ORDERSYNC_DATABASE_URL"), "{message}");
        assert_eq!(bad_keys(result).len(), 4);
    }

    #[test]
    fn a_custom_schema_comes_from_the_file_alone() {
        let file = r#"
            [trades]
            table = "bot.orders"
            order_id = "exchange_order_id"
            status = "state"
            created_at = "placed_at"
            filled_at = "done_at"
            bot_id = ""
            product_id = "symbol"
            [trades.status_words]
            pending = "OPEN"
            completed = "DONE"
        "#;
        let trades = resolve_with(Overrides::default(), file).unwrap().trades;
        assert_eq!(trades.table.as_str(), "bot.orders");
        assert_eq!(trades.status.as_str(), "state");
        assert_eq!(trades.bot_id, None);
        assert_eq!(trades.product_id.as_ref().map(|c| (c.name.as_str(), c.explicit)), Some(("symbol", true)));
        assert_eq!(trades.filled_size.as_ref().map(|c| c.explicit), Some(false));
        assert_eq!((trades.words.pending.as_str(), trades.words.completed.as_str()), ("OPEN", "DONE"));
        assert_eq!(trades.words.cancelled, "cancelled");
    }

    #[test]
    fn two_statuses_cannot_share_a_word() {
        let keys = bad_keys(resolve_with(Overrides::default(), "[trades.status_words]\ncompleted = \"pending\""));
        assert_eq!(keys, vec!["trades.status_words in test.toml".to_string()]);
    }

    #[test]
    fn email_is_off_without_a_host_and_needs_a_recipient_with_one() {
        assert!(resolve_with(Overrides::default(), "").unwrap().email.is_none());
        let file = "[email]\nsmtp_host = \"smtp.example.com\"\nto = [\"ops@example.com\", \"oncall@example.com\"]";
        let email = resolve_with(Overrides::default(), file).unwrap().email.unwrap();
        assert_eq!((email.port, email.tls, email.to.len()), (587, SmtpTls::StartTls, 2));
        assert_eq!(email.from, "ordersync@smtp.example.com");
        let keys = bad_keys(resolve_with(Overrides::default(), "[email]\nsmtp_host = \"smtp.example.com\""));
        assert_eq!(keys, vec!["--email-to / ORDERSYNC_EMAIL_TO".to_string()]);
        let over = Overrides::default().with("smtp-tls", "ssl").with("email-to", "not an address");
        assert_eq!(bad_keys(resolve_with(over, "[email]\nsmtp_host = \"h\"")).len(), 2);
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let error = FileConfig::parse("pol_interval = \"5s\"", std::path::Path::new("x.toml")).unwrap_err();
        assert!(error.to_string().contains("pol_interval"), "{error}");
    }

    /// No struct that derives `Debug` holds a secret in clear.
    #[test]
    fn the_debug_form_of_the_configuration_shows_no_secret() {
        let over = Overrides::default()
            .with("database-url", "postgres://bot:db-s3cret@db/trading")
            .with("api-token", "api-token-s3cret-0123456789")
            .with("coinbase-private-key", "key-s3cret")
            .with("smtp-password", "smtp-s3cret")
            .with("smtp-host", "mail")
            .with("email-to", "ops@example.com");
        let config = resolve(&over, &FileConfig::default(), "test.toml", &System).unwrap();
        let shown = format!("{over:?} {config:?}");
        for secret in ["db-s3cret", "api-token-s3cret", "key-s3cret", "smtp-s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn short_api_tokens_are_refused_without_echoing_them_as_config() {
        let over = Overrides::default().with("api-token", "short");
        let result = resolve_with(over, "");
        let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
        assert!(!message.contains("short"), "{message}");
        assert_eq!(bad_keys(result), vec!["--api-token / ORDERSYNC_API_TOKEN".to_string()]);
    }
}
