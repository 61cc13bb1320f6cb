//! Every setting, said once: its flag, environment variable, file key, default, the commands that read it
//! and what it means. The command line's flags (`Flags`), the error messages' key names (`resolve`) and the
//! README's configuration reference (`reference_table`, checked by a test) are all made from `SETTINGS`.
//!
//! Deliberately not here: parsing and checking values (`config::resolve`), and the `[trades]`, `[[accounts]]`
//! and `[not_found]` tables, whose shape is more than one value (their keys are in the README's sections).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::{
    ENV_API_TOKEN, ENV_COINBASE_KEY_FILE, ENV_COINBASE_KEY_NAME, ENV_COINBASE_PRIVATE_KEY, ENV_CONFIG,
    ENV_DATABASE_URL, ENV_EMAIL_TO, ENV_LOG, ENV_LOG_FORMAT, ENV_RETENTION, ENV_SMTP_HOST,
};

/// The commands a setting is read by, as bits (`Uses::SERVE | Uses::AUDIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses(pub u16);

impl Uses {
    pub const SERVE: u16 = 1;
    pub const RECONCILE: u16 = 1 << 1;
    pub const AUDIT: u16 = 1 << 2;
    pub const MIGRATE: u16 = 1 << 3;
    pub const PRUNE: u16 = 1 << 4;
    pub const REPORT: u16 = 1 << 5;
    pub const DEMO: u16 = 1 << 6;
    pub const SANDBOX: u16 = 1 << 7;
    /// The flags before a command's name: any command's.
    pub const ANY: u16 = u16::MAX;

    /// Commands that read the bot's database.
    const DATABASE: u16 = Self::SERVE | Self::RECONCILE | Self::AUDIT | Self::MIGRATE | Self::PRUNE | Self::REPORT;
    /// Commands that ask Coinbase with the configured key.
    const EXCHANGE: u16 = Self::SERVE | Self::RECONCILE | Self::AUDIT;
    /// Commands that check orders (the demo checks its simulator's).
    const CHECKS: u16 = Self::EXCHANGE | Self::DEMO;
    /// Commands that write corrections.
    const WRITES: u16 = Self::SERVE | Self::RECONCILE | Self::DEMO;
    /// Commands that serve HTTP and send e-mail.
    const SERVICE: u16 = Self::SERVE | Self::DEMO;
    /// Commands that read a configuration at all.
    const CONFIGURED: u16 = Self::DATABASE | Self::DEMO;

    /// The command names, in the order `ordersync --help` lists them.
    const NAMES: [(u16, &'static str); 8] = [
        (Self::SERVE, "serve"),
        (Self::RECONCILE, "reconcile"),
        (Self::PRUNE, "prune"),
        (Self::AUDIT, "audit"),
        (Self::MIGRATE, "migrate"),
        (Self::REPORT, "report"),
        (Self::SANDBOX, "sandbox"),
        (Self::DEMO, "demo"),
    ];

    pub fn has(self, command: u16) -> bool {
        self.0 & command != 0
    }

    /// `serve, reconcile, audit`, or `all but sandbox` / `all` when that is shorter to read.
    pub fn names(self) -> String {
        let all: u16 = Self::NAMES.iter().map(|(bit, _)| bit).fold(0, |a, b| a | b);
        if self.0 & all == all {
            return "all".to_string();
        }
        if self.0 & all == all & !Self::SANDBOX {
            return "all but sandbox".to_string();
        }
        let names: Vec<&str> = Self::NAMES.iter().filter(|(bit, _)| self.has(*bit)).map(|(_, name)| *name).collect();
        names.join(", ")
    }
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `--flag VALUE`.
    Value,
    /// `--flag` alone means on; `--flag=off` says so.
    Switch,
    /// One of a fixed list, checked by the command line.
    Choice(&'static [&'static str]),
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The flag without its dashes, and the id of the value in `Overrides`; `""` for a file-only key.
    pub flag: &'static str,
    /// The environment variable; `""` for a file-only key.
    pub env: &'static str,
    /// The key in the TOML file (`poll_interval`, `email.smtp_host`); `""` when it cannot be in the file.
    pub key: &'static str,
    /// What the value looks like in `--help` (`DURATION`, `URL`).
    pub value_name: &'static str,
    /// The default as a user reads it; `""`: none.
    pub default: &'static str,
    /// What it means, one sentence or two (Markdown code spans in backticks).
    pub help: &'static str,
    /// Never shown: a password, a key, a URL that may carry a password.
    pub secret: bool,
    pub form: Form,
    pub uses: Uses,
    /// The `--help` section it is listed under.
    pub heading: &'static str,
}

const GENERAL: &str = "Configuration";
const DATABASE: &str = "The bot's database";
const COINBASE: &str = "Coinbase";
const CHECKING: &str = "Checking orders";
const SERVICE: &str = "Metrics and API";
const EMAIL: &str = "E-mail alerts";
const LOGGING: &str = "Logging";

const fn value(flag: &'static str, env: &'static str, key: &'static str) -> Setting {
    Setting {
        flag,
        env,
        key,
        value_name: "VALUE",
        default: "",
        help: "",
        secret: false,
        form: Form::Value,
        uses: Uses(Uses::CONFIGURED),
        heading: GENERAL,
    }
}

impl Setting {
    const fn named(mut self, value_name: &'static str) -> Self {
        self.value_name = value_name;
        self
    }
    const fn default(mut self, default: &'static str) -> Self {
        self.default = default;
        self
    }
    const fn help(mut self, help: &'static str) -> Self {
        self.help = help;
        self
    }
    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
    const fn form(mut self, form: Form) -> Self {
        self.form = form;
        self
    }
    const fn uses(mut self, uses: u16) -> Self {
        self.uses = Uses(uses);
        self
    }
    const fn heading(mut self, heading: &'static str) -> Self {
        self.heading = heading;
        self
    }

    /// How an error names where a value came from: `--poll-interval / ORDERSYNC_POLL_INTERVAL`.
    pub fn flag_and_env(&self) -> String {
        format!("--{} / {}", self.flag, self.env)
    }
}

/// Every setting, in the order `--help` and the README list them.
pub const SETTINGS: &[Setting] = &[
    value("config", ENV_CONFIG, "")
        .named("FILE")
        .help("the TOML configuration file (its keys: the README's configuration reference)")
        .uses(Uses::CONFIGURED),
    value("database-url", ENV_DATABASE_URL, "database_url")
        .named("URL")
        .secret()
        .help("the bot's database: `sqlite://bot.db` or `postgres://user@host/db`")
        .uses(Uses::DATABASE)
        .heading(DATABASE),
    value("coinbase-api-url", "ORDERSYNC_COINBASE_API_URL", "coinbase.api_url")
        .named("URL")
        .default(super::DEFAULT_COINBASE_API_URL)
        .help("Coinbase REST base URL")
        .uses(Uses::EXCHANGE)
        .heading(COINBASE),
    value("coinbase-key-name", ENV_COINBASE_KEY_NAME, "coinbase.key_name")
        .named("NAME")
        .default("from the key file")
        .help("CDP key name `organizations/{org}/apiKeys/{key}`")
        .uses(Uses::EXCHANGE)
        .heading(COINBASE),
    value("coinbase-key-file", ENV_COINBASE_KEY_FILE, "coinbase.key_file")
        .named("FILE")
        .help("the CDP private key: EC P-256 PEM, base64 Ed25519 secret, or Coinbase's JSON key file")
        .uses(Uses::EXCHANGE)
        .heading(COINBASE),
    value("coinbase-private-key", ENV_COINBASE_PRIVATE_KEY, "")
        .named("KEY")
        .secret()
        .help("the private key itself instead of a file (needs the key name; never in the config file)")
        .uses(Uses::EXCHANGE)
        .heading(COINBASE),
    value("coinbase-rate-limit", "ORDERSYNC_COINBASE_RATE_LIMIT", "coinbase.rate_limit")
        .named("N")
        .default("20")
        .help(
            "requests to Coinbase in any one-second window, shared by all tasks, 1 to 30 (Coinbase's documented \
             private limit); a `Retry-After` is obeyed up to 60 s",
        )
        .uses(Uses::EXCHANGE)
        .heading(COINBASE),
    value("coinbase-ws-url", "ORDERSYNC_COINBASE_WS_URL", "coinbase.ws_url")
        .named("URL")
        .default(crate::exchange::ws::DEFAULT_USER_WS_URL)
        .help("the user channel (real-time order updates)")
        .uses(Uses::SERVE)
        .heading(COINBASE),
    value("websocket", "ORDERSYNC_WEBSOCKET", "coinbase.websocket")
        .named("ON|OFF")
        .default("on")
        .help("listen to the user channel when credentials are set (`on`/`off`)")
        .uses(Uses::SERVICE)
        .heading(COINBASE),
    value("websocket-stall-after", "ORDERSYNC_WEBSOCKET_STALL_AFTER", "coinbase.websocket_stall_after")
        .named("DURATION")
        .default("10s")
        .help("reconnect after this long without any message (heartbeats come every second)")
        .uses(Uses::SERVICE)
        .heading(COINBASE),
    value("poll-interval", "ORDERSYNC_POLL_INTERVAL", "poll_interval")
        .named("DURATION")
        .default("30s")
        .help("time between reconcile passes (±10% jitter): `30s`, `5m`, `2h`")
        .uses(Uses::WRITES)
        .heading(CHECKING),
    value("stuck-after", "ORDERSYNC_STUCK_AFTER", "stuck_after")
        .named("DURATION")
        .default("5m")
        .help("an order pending longer than this, and not resting on the exchange, is *stuck* (alerts, metrics)")
        .uses(Uses::CHECKS)
        .heading(CHECKING),
    value("grace", "ORDERSYNC_GRACE", "grace")
        .named("DURATION")
        .default("10s")
        .help(
            "after the exchange ends an order, the bot has this long to write it itself before ordersync corrects \
             the row (both paths); orders younger than this are not checked. `0s` for bots that leave completion \
             to ordersync",
        )
        .uses(Uses::CHECKS)
        .heading(CHECKING),
    value("verify-window", "ORDERSYNC_VERIFY_WINDOW", "verify_window")
        .named("DURATION")
        .default("24h")
        .help(
            "terminal rows created this recently are checked once against Coinbase: settled by the bot, or a \
             terminal conflict",
        )
        .uses(Uses::CHECKS | Uses::PRUNE)
        .heading(CHECKING),
    value("flag-after", "ORDERSYNC_FLAG_AFTER", "flag_after")
        .named("N")
        .default("3")
        .help(
            "flag an order after this many unresolved checks in a row about it (a 404, an unknown status; the \
             exchange not answering at all does not count)",
        )
        .uses(Uses::CHECKS)
        .heading(CHECKING),
    value("batch-size", "ORDERSYNC_BATCH_SIZE", "batch_size")
        .named("N")
        .default("984")
        .help(
            "orders looked up and written per round (1–1000); each List Orders request carries as many ids as \
             fit an 8 KB URL (164 Coinbase ids: 984 is six full requests)",
        )
        .uses(Uses::CHECKS)
        .heading(CHECKING),
    value("max-corrections-per-pass", "ORDERSYNC_MAX_CORRECTIONS_PER_PASS", "max_corrections_per_pass")
        .named("N")
        .default("1000")
        .help(
            "the mass-correction brake: a pass (with the WebSocket path's corrections since it began) that would \
             correct more rows writes none and waits for an operator",
        )
        .uses(Uses::WRITES)
        .heading(CHECKING),
    value("max-correction-share", "ORDERSYNC_MAX_CORRECTION_SHARE", "max_correction_share")
        .named("SHARE")
        .default("0.5")
        .help("... or more than this share of the pending rows, once more than 10 would be corrected (above 0, at most 1)")
        .uses(Uses::WRITES)
        .heading(CHECKING),
    value("observe-only", "ORDERSYNC_OBSERVE_ONLY", "observe_only")
        .named("ON|OFF")
        .default("off")
        .form(Form::Switch)
        .help("check and export everything, write nothing to the bot's table: start here")
        .uses(Uses::WRITES)
        .heading(CHECKING),
    value("retention", ENV_RETENTION, "retention")
        .named("DURATION")
        .default("90d")
        .help(
            "serve deletes ordersync's check state of settled orders and settlements older than this, daily \
             (audit events are kept); `off`, or at least the verify window",
        )
        .uses(Uses::SERVE | Uses::PRUNE)
        .heading(CHECKING),
    value("lease", "ORDERSYNC_LEASE", "lease")
        .named("DURATION")
        .default("15s")
        .help(
            "replicas on PostgreSQL: an account's lease; a dead replica's accounts are taken over within two \
             leases (3s to 10m)",
        )
        .uses(Uses::SERVE | Uses::RECONCILE)
        .heading(CHECKING),
    value("replica", "ORDERSYNC_REPLICA", "replica")
        .named("NAME")
        .default("host name and pid")
        .help("this replica's name in `ordersync_leases` and in its User-Agent")
        .uses(Uses::SERVE | Uses::RECONCILE)
        .heading(CHECKING),
    value("", "", "not_found.after_checks")
        .default("5")
        .help("the opt-in not-found policy, on when `[not_found]` is present (see below): counted 404s needed")
        .uses(Uses::WRITES),
    value("", "", "not_found.after").default("1h").help("... the first of them at least this long ago").uses(Uses::WRITES),
    value("", "", "not_found.write")
        .default("failed")
        .help("... then write the bot's word for `failed`, `cancelled` or `expired` (never completed)")
        .uses(Uses::WRITES),
    value("listen", "ORDERSYNC_LISTEN", "listen")
        .named("ADDR")
        .default(super::DEFAULT_LISTEN)
        .help("HTTP address for `/metrics` and the API (9787 clashes with no common exporter)")
        .uses(Uses::SERVICE)
        .heading(SERVICE),
    value("metrics-refresh", "ORDERSYNC_METRICS_REFRESH", "metrics_refresh")
        .named("DURATION")
        .default("15s")
        .help("how often the database gauges are refreshed")
        .uses(Uses::SERVICE)
        .heading(SERVICE),
    value("api-token", ENV_API_TOKEN, "api_token")
        .named("TOKEN")
        .secret()
        .help("bearer token for `/api/`; required when listening beyond loopback")
        .uses(Uses::SERVICE)
        .heading(SERVICE),
    value("smtp-host", ENV_SMTP_HOST, "email.smtp_host")
        .named("HOST")
        .help("e-mail alerts about stuck orders are on when this and a recipient are set")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("smtp-port", "ORDERSYNC_SMTP_PORT", "email.smtp_port")
        .named("PORT")
        .default("587 / 465 / 25")
        .help("by TLS mode")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("smtp-tls", "ORDERSYNC_SMTP_TLS", "email.smtp_tls")
        .named("MODE")
        .default("starttls")
        .help("`none`, `starttls` or `tls`")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("smtp-username", "ORDERSYNC_SMTP_USERNAME", "email.smtp_username")
        .named("USER")
        .help("SMTP user name")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("smtp-password", "ORDERSYNC_SMTP_PASSWORD", "")
        .named("PASSWORD")
        .secret()
        .help("SMTP password (prefer the environment or the password file; never in the config file)")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("smtp-password-file", "ORDERSYNC_SMTP_PASSWORD_FILE", "email.smtp_password_file")
        .named("FILE")
        .help("file holding the SMTP password")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("email-from", "ORDERSYNC_EMAIL_FROM", "email.from")
        .named("ADDRESS")
        .default("ordersync@<smtp host>")
        .help("sender address")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("email-to", ENV_EMAIL_TO, "email.to")
        .named("ADDRESSES")
        .help("recipients: comma-separated in the environment and flag, a list in the file")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("email-remind-every", "ORDERSYNC_EMAIL_REMIND_EVERY", "email.remind_every")
        .named("DURATION")
        .default("1h")
        .help("reminder while orders stay stuck")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("email-max-per-hour", "ORDERSYNC_EMAIL_MAX_PER_HOUR", "email.max_per_hour")
        .named("N")
        .default("10")
        .help("never send more e-mails than this in an hour")
        .uses(Uses::SERVICE)
        .heading(EMAIL),
    value("log", ENV_LOG, "log")
        .named("FILTER")
        .default(crate::telemetry::DEFAULT_FILTER)
        .help("log filter (tracing `EnvFilter` syntax, e.g. `info,ordersync=debug`); `serve` reloads the file's `log` on SIGHUP")
        .uses(Uses::CONFIGURED | Uses::SANDBOX)
        .heading(LOGGING),
    value("log-format", ENV_LOG_FORMAT, "")
        .named("FORMAT")
        .default("text")
        .form(Form::Choice(&["text", "json"]))
        .help("`text`, or `json`: one JSON object a line, with its spans (`serve` and `reconcile`: `pass`, `due`, `check`, `listen`)")
        .uses(Uses::CONFIGURED | Uses::SANDBOX)
        .heading(LOGGING),
];

/// The setting of a file key (`poll_interval`, `email.smtp_host`).
pub fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| !s.key.is_empty() && s.key == key)
}

/// The setting of a flag (without dashes).
pub fn by_flag(flag: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| !s.flag.is_empty() && s.flag == flag)
}

/// The values given as flags or environment variables (clap settles which of the two wins), by flag. Every
/// value is held as a secret, so no `Debug` of it ever shows one.
#[derive(Clone, Default)]
pub struct Overrides(BTreeMap<&'static str, SecretString>);

impl Overrides {
    /// Set `--flag`'s value.
    ///
    /// # Panics
    /// When no setting has that flag: a mistake in the calling code, never in input.
    #[must_use]
    pub fn with(mut self, flag: &str, value: impl Into<String>) -> Self {
        let setting = by_flag(flag).unwrap_or_else(|| panic!("no setting has the flag --{flag}"));
        self.0.insert(setting.flag, SecretString::from(value.into()));
        self
    }

    /// Set a file key's value (`FileConfig`, whose keys are the table's).
    pub(crate) fn set_key(&mut self, key: &'static str, value: String) {
        self.0.insert(key, SecretString::from(value));
    }

    /// The value of `--flag`, when given.
    pub fn get(&self, flag: &str) -> Option<String> {
        self.0.get(flag).map(|value| value.expose_secret().to_string())
    }

    /// The value of `--flag` as a secret, when given.
    pub fn secret(&self, flag: &str) -> Option<SecretString> {
        self.0.get(flag).cloned()
    }

    pub fn is_set(&self, flag: &str) -> bool {
        self.0.contains_key(flag)
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What a command was given by flags and the environment: the `--config` file's path and the overrides.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
    /// The command's bit (`Uses::SERVE`); every bit for the flags given before the command's name.
    pub uses: u16,
    /// The flags written on the command line (the rest came from the environment).
    pub typed: BTreeSet<&'static str>,
}

impl Given {
    /// The command's own settings, with the flags written before its name (`ordersync --config FILE serve`,
    /// as before each command had its own flags): a flag written after the name wins, then one written
    /// before it, then the environment.
    ///
    /// # Errors
    /// The flags written before the name that the command does not read, as `--flag`.
    pub fn with_leading(mut self, leading: &Given) -> Result<Given, Vec<String>> {
        let mut unused = Vec::new();
        for flag in &leading.typed {
            let Some(setting) = by_flag(flag) else { continue };
            if !setting.uses.has(self.uses) {
                unused.push(format!("--{flag}"));
                continue;
            }
            if self.typed.contains(flag) {
                continue;
            }
            if *flag == "config" {
                self.config = leading.config.clone();
            } else if let Some(value) = leading.overrides.0.get(flag) {
                self.overrides.0.insert(setting.flag, value.clone());
            }
            self.typed.insert(setting.flag);
        }
        if unused.is_empty() {
            Ok(self)
        } else {
            Err(unused)
        }
    }
}

/// A command's settings on the command line. `USES` is the command's bit (`Uses::SERVE`): it is offered
/// exactly the settings that command reads.
#[derive(Debug, Clone, Default)]
pub struct Flags<const USES: u16> {
    pub given: Given,
}

fn strip_code(text: &str) -> String {
    text.replace('`', "")
}

fn arg(setting: &Setting) -> clap::Arg {
    // A sentence opens with a capital; a help that opens with a value (`none`, `text`) keeps its case.
    let plain = strip_code(setting.help);
    let mut help = if setting.help.starts_with('`') {
        plain
    } else {
        let mut first = plain.chars();
        first.next().map(|c| c.to_uppercase().chain(first).collect()).unwrap_or_default()
    };
    if !setting.default.is_empty() {
        help.push_str(&format!(" [default: {}]", strip_code(setting.default)));
    }
    let arg = clap::Arg::new(setting.flag)
        .long(setting.flag)
        .env(setting.env)
        .value_name(setting.value_name)
        .help(help)
        .hide_env_values(setting.secret)
        .help_heading(setting.heading)
        .action(clap::ArgAction::Set);
    match setting.form {
        Form::Value => arg,
        Form::Switch => arg.num_args(0..=1).require_equals(true).default_missing_value("on"),
        Form::Choice(choices) => arg.value_parser(clap::builder::PossibleValuesParser::new(choices)),
    }
}

impl<const USES: u16> clap::FromArgMatches for Flags<USES> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.given.uses = USES;
        for setting in SETTINGS.iter().filter(|s| !s.flag.is_empty() && s.uses.has(USES)) {
            if let Some(value) = matches.get_one::<String>(setting.flag) {
                if matches.value_source(setting.flag) == Some(clap::parser::ValueSource::CommandLine) {
                    self.given.typed.insert(setting.flag);
                }
                if setting.flag == "config" {
                    self.given.config = Some(PathBuf::from(value));
                } else {
                    self.given.overrides.0.insert(setting.flag, SecretString::from(value.clone()));
                }
            }
        }
        Ok(())
    }
}

impl<const USES: u16> clap::Args for Flags<USES> {
    fn augment_args(command: clap::Command) -> clap::Command {
        SETTINGS.iter().filter(|s| !s.flag.is_empty() && s.uses.has(USES)).fold(command, |c, s| c.arg(arg(s)))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

fn cell(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("`{text}`")
    }
}

/// The README's configuration reference, made from `SETTINGS`.
pub fn reference_table() -> String {
    let mut out =
        String::from("| environment | flag | file key | default | commands | meaning |\n|---|---|---|---|---|---|\n");
    for s in SETTINGS {
        let flag = match (s.flag, s.form) {
            ("", _) => String::new(),
            (flag, Form::Switch) => format!("`--{flag}[=on\\|off]`"),
            (flag, _) => format!("`--{flag}`"),
        };
        let default = match s.default {
            "" => "—".to_string(),
            text if text.contains('`') || text.contains(' ') => text.to_string(),
            text => cell(text),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            cell(s.env),
            flag,
            cell(s.key),
            default,
            s.uses.names(),
            s.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flag_env_and_key_is_said_once_and_env_follows_the_flag() {
        let mut seen = [BTreeSet::new(), BTreeSet::new(), BTreeSet::new()];
        for s in SETTINGS {
            for (seen, name) in seen.iter_mut().zip([s.flag, s.env, s.key]).filter(|(_, n)| !n.is_empty()) {
                assert!(seen.insert(name), "{name} twice");
            }
            if !s.flag.is_empty() {
                assert_eq!(s.env, format!("ORDERSYNC_{}", s.flag.replace('-', "_").to_uppercase()), "{s:?}");
            }
            assert!(!s.help.is_empty(), "{s:?}");
            assert!(s.uses.0 != 0, "{s:?}");
        }
    }

    #[test]
    fn overrides_never_show_a_value() {
        let over = Overrides::default().with("database-url", "postgres://bot:hunter2@db/trading");
        assert_eq!(format!("{over:?}"), "{\"database-url\"}");
        assert_eq!(over.get("database-url").as_deref(), Some("postgres://bot:hunter2@db/trading"));
    }

    #[test]
    fn commands_are_named_plainly() {
        assert_eq!(Uses(Uses::SERVE | Uses::AUDIT).names(), "serve, audit");
        assert_eq!(Uses(Uses::CONFIGURED).names(), "all but sandbox");
        assert_eq!(Uses(Uses::CONFIGURED | Uses::SANDBOX).names(), "all");
    }
}
