//! `SIGHUP`: what of a re-read configuration a running `serve` takes on, and what needs a restart.
//!
//! Pure: `changes` compares two resolved configurations, `merged` keeps the running one and takes the
//! reloadable settings from the new one. Reloadable are the thresholds and limits that are read afresh at
//! each use (the poll interval, `stuck_after`, grace, verify window, `flag_after`, batch size, the brake,
//! the not-found policy), the e-mail recipients and limits, and the log filter. Everything that was used to
//! build something at start (the database, the exchange and its keys, the accounts, the listen address,
//! the SMTP server, the bot's table mapping, observe-only, retention, leases) needs a restart.
//! Deliberately not here: reading the file and applying the result (`cli` and `app::Reload`).

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, EmailConfig};

/// What differs between the running configuration and the re-read one, by the file key a user writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Taken on at once.
    pub applied: Vec<&'static str>,
    /// Changed, but kept as it was until a restart.
    pub restart: Vec<&'static str>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.restart.is_empty()
    }
}

fn secret(value: Option<&SecretString>) -> Option<&str> {
    value.map(ExposeSecret::expose_secret)
}

/// The SMTP server and sender: fixed for the life of the alert task.
fn smtp_differs(old: &EmailConfig, new: &EmailConfig) -> bool {
    old.host != new.host
        || old.port != new.port
        || old.tls != new.tls
        || old.username != new.username
        || secret(old.password.as_ref()) != secret(new.password.as_ref())
        || old.from != new.from
}

/// The accounts and the single key, secrets included (their `Debug` forms hide the keys).
fn keys_differ(old: &Config, new: &Config) -> bool {
    format!("{:?}", old.coinbase) != format!("{:?}", new.coinbase)
        || secret(old.coinbase.private_key.as_ref()) != secret(new.coinbase.private_key.as_ref())
}

fn accounts_differ(old: &Config, new: &Config) -> bool {
    old.accounts.len() != new.accounts.len()
        || old.accounts.iter().zip(&new.accounts).any(|(a, b)| {
            format!("{a:?}") != format!("{b:?}") || secret(a.private_key.as_ref()) != secret(b.private_key.as_ref())
        })
}

/// Compare the running configuration with the re-read one.
pub fn changes(old: &Config, new: &Config) -> Changes {
    let (old_email, new_email) = (old.email.as_ref(), new.email.as_ref());
    let email_both = old_email.zip(new_email);
    let applied = [
        ("poll_interval", old.poll_interval != new.poll_interval),
        ("stuck_after", old.stuck_after != new.stuck_after),
        ("grace", old.grace != new.grace),
        ("verify_window", old.verify_window != new.verify_window),
        ("flag_after", old.flag_after != new.flag_after),
        ("batch_size", old.batch_size != new.batch_size),
        ("max_corrections_per_pass", old.brake.max_corrections != new.brake.max_corrections),
        ("max_correction_share", old.brake.max_share.to_bits() != new.brake.max_share.to_bits()),
        ("not_found", old.not_found != new.not_found),
        ("email.to", email_both.is_some_and(|(a, b)| a.to != b.to)),
        ("email.remind_every", email_both.is_some_and(|(a, b)| a.remind_every != b.remind_every)),
        ("email.max_per_hour", email_both.is_some_and(|(a, b)| a.max_per_hour != b.max_per_hour)),
        ("log", old.log != new.log),
    ];
    let restart = [
        ("database_url", secret(old.database_url.as_ref()) != secret(new.database_url.as_ref())),
        ("coinbase", keys_differ(old, new)),
        ("accounts", accounts_differ(old, new)),
        ("listen", old.listen != new.listen),
        ("metrics_refresh", old.metrics_refresh != new.metrics_refresh),
        ("api_token", secret(old.api_token.as_ref()) != secret(new.api_token.as_ref())),
        ("email (on or off)", old_email.is_some() != new_email.is_some()),
        ("email (SMTP server or sender)", email_both.is_some_and(|(a, b)| smtp_differs(a, b))),
        ("trades", old.trades != new.trades),
        ("observe_only", old.observe_only != new.observe_only),
        ("retention", old.retention != new.retention),
        ("lease", old.lease != new.lease),
        ("replica", old.replica != new.replica),
    ];
    let pick =
        |list: &[(&'static str, bool)]| list.iter().filter(|(_, changed)| *changed).map(|(key, _)| *key).collect();
    Changes { applied: pick(&applied), restart: pick(&restart) }
}

/// The running configuration with the reloadable settings of `new`; what needs a restart stays as it runs.
pub fn merged(old: &Config, new: &Config) -> Config {
    let mut config = old.clone();
    config.poll_interval = new.poll_interval;
    config.stuck_after = new.stuck_after;
    config.grace = new.grace;
    config.verify_window = new.verify_window;
    config.flag_after = new.flag_after;
    config.batch_size = new.batch_size;
    config.brake.max_corrections = new.brake.max_corrections;
    config.brake.max_share = new.brake.max_share;
    config.not_found = new.not_found;
    config.log = new.log.clone();
    if let (Some(email), Some(new_email)) = (config.email.as_mut(), new.email.as_ref()) {
        email.to = new_email.to.clone();
        email.remind_every = new_email.remind_every;
        email.max_per_hour = new_email.max_per_hour;
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, FileConfig, Overrides, System};
    use std::time::Duration;

    fn config(toml: &str) -> Config {
        let file = FileConfig::parse(toml, std::path::Path::new("ordersync.toml")).unwrap();
        let over = Overrides::default().with("replica", "test");
        resolve(&over, &file, "ordersync.toml", &System).unwrap()
    }

    const EMAIL: &str = "[email]\nsmtp_host = \"mail.example\"\nto = [\"ops@example.com\"]\n";

    #[test]
    fn the_same_file_read_twice_changes_nothing() {
        let text = format!("poll_interval = \"10s\"\nlog = \"debug\"\n{EMAIL}");
        assert!(changes(&config(&text), &config(&text)).is_empty());
    }

    #[test]
    fn each_reloadable_setting_is_applied_and_named() {
        let old = config(EMAIL);
        let cases = [
            ("poll_interval = \"7s\"", "poll_interval"),
            ("stuck_after = \"2m\"", "stuck_after"),
            ("grace = \"3s\"", "grace"),
            ("verify_window = \"2h\"", "verify_window"),
            ("flag_after = 9", "flag_after"),
            ("batch_size = 17", "batch_size"),
            ("max_corrections_per_pass = 5", "max_corrections_per_pass"),
            ("max_correction_share = 0.2", "max_correction_share"),
            ("[not_found]\nafter_checks = 3\nafter = \"30m\"\nwrite = \"failed\"", "not_found"),
            ("log = \"warn\"", "log"),
        ];
        for (line, key) in cases {
            let new = config(&format!("{line}\n{EMAIL}"));
            let seen = changes(&old, &new);
            assert_eq!(seen, Changes { applied: vec![key], restart: vec![] }, "{line}");
            let kept = merged(&old, &new);
            assert!(changes(&kept, &new).is_empty(), "{line}: merged takes it on");
        }
        let new = config("[email]\nsmtp_host = \"mail.example\"\nto = [\"ops@example.com\", \"cto@example.com\"]\nremind_every = \"2h\"\nmax_per_hour = 3\n");
        let seen = changes(&old, &new);
        assert_eq!(seen.applied, vec!["email.to", "email.remind_every", "email.max_per_hour"]);
        let email = merged(&old, &new).email.unwrap();
        assert_eq!(email.to, vec!["ops@example.com".to_string(), "cto@example.com".to_string()]);
        assert_eq!((email.remind_every, email.max_per_hour), (Duration::from_secs(7200), 3));
    }

    #[test]
    fn what_was_built_at_start_needs_a_restart_and_is_kept() {
        let old = config(EMAIL);
        let cases = [
            ("database_url = \"sqlite://other.db\"", "database_url"),
            ("[coinbase]\napi_url = \"http://127.0.0.1:9/\"", "coinbase"),
            ("listen = \"127.0.0.1:9999\"", "listen"),
            ("metrics_refresh = \"9s\"", "metrics_refresh"),
            ("api_token = \"a-new-token-of-some-length\"", "api_token"),
            ("[trades]\ntable = \"orders\"", "trades"),
            ("observe_only = true", "observe_only"),
            ("retention = \"off\"", "retention"),
            ("lease = \"30s\"", "lease"),
        ];
        for (line, key) in cases {
            let new = config(&format!("{line}\n{EMAIL}"));
            assert_eq!(changes(&old, &new), Changes { applied: vec![], restart: vec![key] }, "{line}");
            assert!(changes(&old, &merged(&old, &new)).is_empty(), "{line}: kept as it runs");
        }
        let smtp = config("[email]\nsmtp_host = \"other.example\"\nto = [\"ops@example.com\"]\n");
        assert_eq!(changes(&old, &smtp).restart, vec!["email (SMTP server or sender)"]);
        assert_eq!(changes(&old, &config("")).restart, vec!["email (on or off)"]);
        assert_eq!(changes(&config(""), &old).restart, vec!["email (on or off)"]);
        let accounts =
            config(&format!("[[accounts]]\nname = \"main\"\nkey_file = \"/k.json\"\ndefault = true\n{EMAIL}"));
        assert!(changes(&old, &accounts).restart.contains(&"accounts"));
    }

    #[test]
    fn a_new_secret_is_seen_although_debug_hides_it() {
        let old = config("api_token = \"first-token-of-some-length\"");
        let new = config("api_token = \"second-token-of-some-length\"");
        assert_eq!(format!("{:?}", old.api_token), format!("{:?}", new.api_token));
        assert_eq!(changes(&old, &new).restart, vec!["api_token"]);
    }
}
