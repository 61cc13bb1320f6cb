//! The configuration's unit tests: precedence, every bad key at once, the defaults the table shows.

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
    assert_eq!(config.brake.max_corrections, 1000);
    let ninety_days = Duration::from_secs(90 * 86_400);
    assert_eq!((config.observe_only, config.retention, config.not_found), (false, Some(ninety_days), None));
    let on = resolve_with(Overrides::default(), "[not_found]\nafter_checks = 4\nafter = \"2h\"\nwrite = \"expired\"")
        .unwrap();
    let policy = on.not_found.expect("present: on");
    assert_eq!(
        (policy.after_checks, policy.after, policy.write),
        (4, chrono::Duration::hours(2), crate::decide::Terminal::Expired)
    );
    let over =
        Overrides::default().with("max-correction-share", "2").with("retention", "1h").with("observe-only", "maybe");
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
    let error = FileConfig::parse("pol_interval = \"5s\"\n[email]\nsmpt_host = \"h\"\n[coinbase]\nkey = \"k\"", path)
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

/// Two places for one secret is a mistake the operator should hear about, not a silent choice.
#[test]
fn the_smtp_password_and_its_file_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smtp-password");
    std::fs::write(&file, "from-the-file\n").unwrap();
    let over = Overrides::default()
        .with("smtp-host", "mail")
        .with("email-to", "ops@example.com")
        .with("smtp-password", "smtp-s3cret")
        .with("smtp-password-file", file.to_str().unwrap());
    let result = resolve(&over, &FileConfig::default(), "test.toml", &System);
    let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(message.contains("not both") && !message.contains("smtp-s3cret"), "{message}");
    assert_eq!(bad_keys(result), vec!["--smtp-password / ORDERSYNC_SMTP_PASSWORD".to_string()]);
    // Either alone is taken.
    let file_only = Overrides::default()
        .with("smtp-host", "mail")
        .with("email-to", "ops@example.com")
        .with("smtp-password-file", file.to_str().unwrap());
    let email = resolve(&file_only, &FileConfig::default(), "test.toml", &System).unwrap().email.unwrap();
    assert_eq!(email.password.map(|p| p.expose_secret().to_string()).as_deref(), Some("from-the-file"));
}

/// A switch's error names every word it takes.
#[test]
fn a_switch_says_every_word_it_takes() {
    let message = resolve_with(Overrides::default().with("observe-only", "maybe"), "").unwrap_err().to_string();
    assert!(message.contains("on or off") && message.contains("yes/no"), "{message}");
    let on = resolve_with(Overrides::default().with("observe-only", "yes"), "").unwrap();
    assert!(on.observe_only);
}
