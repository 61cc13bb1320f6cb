//! Configuration, typed once: flags beat environment, environment beats the TOML file, the file beats
//! defaults. `resolve` is pure (no environment reads, no I/O) so every rule is tested with plain values;
//! reading the file and the environment happens in `cli/`. Each value's parser is in `parse.rs`, each
//! setting's flag, environment variable, file key, default and help in `settings.rs`.
//!
//! Deliberately not here: connecting to anything. A `Config` says what to connect to; `app.rs` connects.

mod parse;
pub mod settings;
pub use parse::{format_duration, parse_duration};
pub use settings::Overrides;

use parse::{
    parse_address, parse_database_url, parse_http_url, parse_listen, parse_log_filter, parse_positive,
    parse_positive_duration, parse_rate_limit, parse_retention, parse_switch, parse_tls, parse_ws_url,
};

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
// The other defaults are written once, in `settings::SETTINGS`, and read by the setting's own parser
// (`Resolver::pick_or_default`).

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

    /// As `pick`, and when nothing is given, the setting's default as `SETTINGS` shows it, read by the same
    /// `parse`: each default is written once. `None` only when a value does not parse (it is in `bad`).
    fn pick_or_default<T>(&mut self, flag: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let before = self.bad.len();
        match self.pick(flag, &parse) {
            None if self.bad.len() == before => {
                let setting = settings::by_flag(flag).unwrap_or_else(|| panic!("no setting has the flag --{flag}"));
                self.parse(format!("the default of --{flag}"), setting.default.to_string(), parse)
            }
            picked => picked,
        }
    }

    /// As `pick_file`, with the key's default in `SETTINGS` when the file does not have it.
    fn pick_file_or_default<T>(
        &mut self,
        key: &str,
        file_value: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match file_value {
            Some(value) => self.pick_file(key, Some(value), parse),
            None => {
                let setting = settings::by_key(key).unwrap_or_else(|| panic!("no setting has the key {key}"));
                self.parse(format!("the default of {key}"), setting.default.to_string(), parse)
            }
        }
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

/// Coinbase's documented limit for private endpoints: about 30 requests per second per key.
pub const COINBASE_PRIVATE_RATE_LIMIT: u32 = 30;

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
    let api_url = r.pick_or_default("coinbase-api-url", parse_http_url);
    let key_name = r.pick("coinbase-key-name", |text| Ok::<_, String>(text.to_string()));
    let key_file = r.pick("coinbase-key-file", |text| Ok::<_, String>(PathBuf::from(text)));
    let rate_limit = r.pick_or_default("coinbase-rate-limit", parse_rate_limit);
    let ws_url = r.pick_or_default("coinbase-ws-url", parse_ws_url);
    let websocket = r.pick_or_default("websocket", parse_switch);
    let websocket_stall_after = r.pick_or_default("websocket-stall-after", parse_positive_duration);
    let poll_interval = r.pick_or_default("poll-interval", parse_positive_duration);
    let stuck_after = r.pick_or_default("stuck-after", parse_positive_duration);
    let grace = r.pick_or_default("grace", parse_duration);
    let verify_window = r.pick_or_default("verify-window", parse_duration);
    let flag_after = r.pick_or_default("flag-after", parse_positive::<u32>);
    let batch_size = r.pick_or_default("batch-size", |text| match parse_positive::<usize>(text) {
        Ok(size) if size <= 1000 => Ok(size),
        _ => Err("a whole number from 1 to 1000".to_string()),
    });
    let listen = r.pick_or_default("listen", parse_listen);
    let metrics_refresh = r.pick_or_default("metrics-refresh", parse_positive_duration);
    let api_token = resolve_secret(&mut r, "api-token");
    let max_corrections = r.pick_or_default("max-corrections-per-pass", parse_positive::<usize>);
    let max_share = r.pick_or_default("max-correction-share", |text| match text.trim().parse::<f64>() {
        Ok(share) if share > 0.0 && share <= 1.0 => Ok(share),
        _ => Err("a share of the pending rows above 0 and at most 1, e.g. 0.5".to_string()),
    });
    let observe_only = r.pick_or_default("observe-only", parse_switch);
    let retention = r.pick_or_default("retention", parse_retention);
    let lease = r.pick_or_default("lease", |text| match parse_duration(text) {
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
    if let (Some(Some(kept)), Some(window)) = (retention, verify_window) {
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

    // Every setting with a default has a value unless one did not parse, and then its error is in `bad`.
    let (
        Some(api_url),
        Some(rate_limit),
        Some(ws_url),
        Some(websocket),
        Some(websocket_stall_after),
        Some(poll_interval),
        Some(stuck_after),
        Some(grace),
        Some(verify_window),
        Some(flag_after),
        Some(batch_size),
        Some(listen),
        Some(metrics_refresh),
        Some(max_corrections),
        Some(max_share),
        Some(observe_only),
        Some(retention),
        Some(lease),
        true,
    ) = (
        api_url,
        rate_limit,
        ws_url,
        websocket,
        websocket_stall_after,
        poll_interval,
        stuck_after,
        grace,
        verify_window,
        flag_after,
        batch_size,
        listen,
        metrics_refresh,
        max_corrections,
        max_share,
        observe_only,
        retention,
        lease,
        r.bad.is_empty(),
    )
    else {
        return Err(ConfigError::Invalid(r.bad));
    };
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
            api_url,
            key_name,
            key_file,
            private_key: over.secret("coinbase-private-key"),
            rate_limit,
            ws_url,
            websocket,
            websocket_stall_after,
        },
        poll_interval,
        stuck_after,
        grace,
        verify_window,
        flag_after,
        batch_size,
        listen,
        metrics_refresh,
        api_token,
        email,
        trades,
        brake: crate::reconcile::Brake { max_corrections, max_share, allowed: false },
        observe_only,
        retention,
        lease,
        replica: replica.unwrap_or_else(crate::replica::default_replica_name),
        not_found,
        log,
    })
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
                    // Refused with the rest: the 0 is never used.
                    bad(at("rate_limit"), rate.to_string(), &expected);
                    0
                }
            },
            // `None` only when the global rate limit did not parse: refused too.
            None => default_rate.unwrap_or_default(),
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

fn resolve_not_found(r: &mut Resolver<'_>, file: &FileNotFound) -> Option<crate::decide::NotFoundPolicy> {
    let after_checks =
        r.pick_file_or_default("not_found.after_checks", file.after_checks.map(|v| v.to_string()), |text| {
            match text.trim().parse::<u32>() {
                // One 404 is weak evidence (a young order can answer 404 for a while): never enough alone.
                Ok(n) if (2..=100).contains(&n) => Ok(n),
                _ => Err("a whole number from 2 to 100".to_string()),
            }
        });
    let after = r.pick_file_or_default("not_found.after", file.after.clone(), parse_duration);
    let write = r.pick_file_or_default("not_found.write", file.write.clone(), |text| {
        match text.trim().to_ascii_lowercase().as_str() {
            "failed" => Ok(crate::decide::Terminal::Failed),
            "cancelled" => Ok(crate::decide::Terminal::Cancelled),
            "expired" => Ok(crate::decide::Terminal::Expired),
            _ => Err("failed, cancelled or expired (never completed: no fill is claimed for an order Coinbase \
                      does not know)"
                .to_string()),
        }
    });
    // `None` only with an error in `bad`: the configuration is refused.
    Some(crate::decide::NotFoundPolicy {
        after_checks: after_checks?,
        after: chrono::Duration::from_std(after?).unwrap_or(chrono::Duration::MAX),
        write: write?,
    })
}

fn resolve_email(r: &mut Resolver<'_>) -> Option<EmailConfig> {
    let host = r.pick("smtp-host", |t| match t.trim() {
        "" => Err("a host name, e.g. smtp.example.com".to_string()),
        host => Ok(host.to_string()),
    });
    let tls = r.pick_or_default("smtp-tls", parse_tls);
    let port = r.pick("smtp-port", parse_positive::<u16>);
    let username = r.pick("smtp-username", |t| Ok::<_, String>(t.to_string()));
    let password_file = r.pick("smtp-password-file", |path| {
        r.reader
            .file(std::path::Path::new(path))
            .map(|text| SecretString::from(text.trim_end_matches(['\r', '\n']).to_string()))
            .map_err(|e| format!("a readable file ({e})"))
    });
    if r.over.is_set("smtp-password") && password_file.is_some() {
        r.bad.push(BadValue {
            key: "--smtp-password / ORDERSYNC_SMTP_PASSWORD".to_string(),
            value: "<redacted>".to_string(),
            expected: "either the password or the password file (--smtp-password-file), not both".to_string(),
        });
    }
    let password = r.over.secret("smtp-password").or(password_file);
    let from = r.pick("email-from", parse_address);
    let to = r.pick("email-to", |text| {
        let list: Vec<&str> = text.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        if list.is_empty() {
            return Err("one or more e-mail addresses, separated by commas".to_string());
        }
        list.into_iter().map(parse_address).collect::<Result<Vec<_>, _>>()
    });
    let remind_every = r.pick_or_default("email-remind-every", parse_positive_duration);
    let max_per_hour = r.pick_or_default("email-max-per-hour", parse_positive::<u32>);
    let (host, tls) = (host?, tls?);
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
        remind_every: remind_every?,
        max_per_hour: max_per_hour?,
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
mod tests;
