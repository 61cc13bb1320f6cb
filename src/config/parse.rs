//! Reading one setting's text: each parser says what it accepts when it refuses.

use std::net::SocketAddr;
use std::time::Duration;

use super::{SmtpTls, COINBASE_PRIVATE_RATE_LIMIT};

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

pub(super) fn parse_database_url(text: &str) -> Result<String, String> {
    if text.starts_with("sqlite:") || text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(text.to_string())
    } else {
        Err("a URL starting with sqlite:// or postgres://, e.g. sqlite://trades.db".into())
    }
}

pub(super) fn parse_http_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
            Ok(text.trim_end_matches('/').to_string())
        }
        _ => Err("an http:// or https:// URL, e.g. https://api.coinbase.com".into()),
    }
}

pub(super) fn parse_ws_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "ws" | "wss") && url.host_str().is_some() => Ok(text.to_string()),
        _ => Err("a ws:// or wss:// URL, e.g. wss://advanced-trade-ws-user.coinbase.com".into()),
    }
}

pub(super) fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err("on or off (true/false, yes/no and 1/0 are taken too)".into()),
    }
}

pub(super) fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(value) if value > T::default() => Ok(value),
        _ => Err("a whole number greater than 0".into()),
    }
}

pub(super) fn parse_rate_limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(value) if (1..=COINBASE_PRIVATE_RATE_LIMIT).contains(&value) => Ok(value),
        _ => Err(format!(
            "a whole number from 1 to {COINBASE_PRIVATE_RATE_LIMIT} (Coinbase allows about \
             {COINBASE_PRIVATE_RATE_LIMIT} private requests per second per key; more is answered 429)"
        )),
    }
}

pub(super) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err("a duration greater than 0, e.g. 30s".into()),
        duration => Ok(duration),
    }
}

pub(super) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| "an address with a port, e.g. 127.0.0.1:9787 or 0.0.0.0:9787".into())
}

pub(super) fn parse_log_filter(text: &str) -> Result<String, String> {
    match tracing_subscriber::EnvFilter::try_new(text) {
        Ok(_) => Ok(text.to_string()),
        Err(error) => Err(format!("a tracing filter such as info,sqlx=warn or ordersync=debug ({error})")),
    }
}

/// `off`, or a duration of at least a day.
pub(super) fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    const EXPECTED: &str = "off, or a duration of at least 1d, e.g. 90d";
    if matches!(text.trim().to_ascii_lowercase().as_str(), "off" | "never") {
        return Ok(None);
    }
    match parse_duration(text) {
        Ok(duration) if duration >= Duration::from_secs(86_400) => Ok(Some(duration)),
        _ => Err(EXPECTED.to_string()),
    }
}

pub(super) fn parse_tls(text: &str) -> Result<SmtpTls, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "none" => Ok(SmtpTls::None),
        "starttls" => Ok(SmtpTls::StartTls),
        "tls" => Ok(SmtpTls::Tls),
        _ => Err("none, starttls or tls".into()),
    }
}

pub(super) fn parse_address(text: &str) -> Result<String, String> {
    match text.trim().parse::<lettre::message::Mailbox>() {
        Ok(_) => Ok(text.trim().to_string()),
        Err(_) => Err("an e-mail address, e.g. ordersync@example.com or \"ordersync <ordersync@example.com>\"".into()),
    }
}
