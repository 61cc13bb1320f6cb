//! The bot's order as ordersync sees it: a validated `OrderId` and a `TradeRow` read from the bot's
//! table, plus the one timestamp parser for every text form the two databases hand us.
//!
//! Deliberately not here: SQL (in `db/`) and the exchange's view of an order (in `exchange/`).

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};

/// An exchange order id as the bot stored it. Parsed once: 1 to 128 characters of letters, digits,
/// `-`, `_`, `.` or `:` (Coinbase ids are UUIDs), so ids are safe in URLs, logs and paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(String);

impl OrderId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= 128
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if valid {
            Ok(OrderId(text.to_string()))
        } else {
            Err(format!("{text:?} is not an order id: expected 1 to 128 letters, digits, '-', '_', '.' or ':'"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A stand-in for a row whose id cannot be an order id (NULL, `../../accounts`, spaces, a newline, too
    /// long): the raw value escaped and cut to 128 characters, so the row is still listed and checked (and
    /// never sent), and a log line cannot be forged through it.
    pub fn unreadable(raw: Option<&str>) -> OrderId {
        let escaped = match raw {
            None => "<null>".to_string(),
            Some(raw) => raw.escape_debug().to_string(),
        };
        let mut shown: String = escaped.chars().take(120).collect();
        if shown.len() < escaped.len() {
            shown.push_str("...");
        }
        OrderId(shown)
    }

    /// Whether this can be a Coinbase order id (a client order id, a path word like `batch` or `..`, an
    /// uppercase or brace-wrapped UUID is not): only such ids are ever put in a request.
    pub fn is_exchange_id(&self) -> bool {
        is_coinbase_order_id(&self.0)
    }
}

/// A Coinbase order id as Coinbase writes them: a lowercase, hyphenated UUID (36 characters).
pub fn is_coinbase_order_id(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::parse_str(text).is_ok() && !text.bytes().any(|b| b.is_ascii_uppercase())
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One row of the bot's table, as read (only the columns ordersync maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRow {
    pub order_id: OrderId,
    /// The status word exactly as the bot wrote it.
    pub status: String,
    /// When the bot placed the order; `None` when the value cannot be read as a time (its age is unknown,
    /// and it counts as stuck).
    pub created_at: Option<DateTime<Utc>>,
    /// The creation time as the database holds it, when it could not be read.
    pub created_raw: Option<String>,
    pub bot_id: Option<String>,
    pub product_id: Option<String>,
    /// The Coinbase account the row names, when the table has an account column (`[trades] account`).
    pub account: Option<String>,
}

impl TradeRow {
    /// How long ago the bot placed the order; `None` when unknown.
    pub fn age(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.created_at.map(|at| now - at)
    }
}

/// Julian day of the Unix epoch.
const UNIX_EPOCH_JULIAN_DAY: f64 = 2_440_587.5;

/// Parse a timestamp as SQLite or PostgreSQL give it: `2025-01-01 10:00:00` (SQLite `datetime('now')`,
/// UTC), ISO-8601 `2025-01-01T10:00:00.123Z`, PostgreSQL's text form `2025-01-01 10:00:00.5+00`, and the
/// numbers SQLite's date functions use: Unix epoch seconds (integer or real; milliseconds when above
/// 10^11) and Julian day numbers (below 10^7, e.g. `julianday('now')`). A value with no offset is UTC.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<f64>() {
        return from_number(number).ok_or_else(|| format!("{text:?} is not a time: a number out of range"));
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let normalised = text.replacen('T', " ", 1);
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f %z"] {
        if let Ok(at) = DateTime::parse_from_str(&normalised, format) {
            return Ok(at.with_timezone(&Utc));
        }
    }
    let naive = normalised.trim_end_matches('Z');
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(naive, format) {
            return Ok(at.and_utc());
        }
    }
    Err(format!("{text:?} is not a timestamp: expected e.g. 2025-01-01 10:00:00 or 2025-01-01T10:00:00Z"))
}

/// A number as SQLite's date functions read it: a Julian day (the epoch is day 2440587.5), Unix seconds,
/// or Unix milliseconds, told apart by size (a Julian day of year 2000 is 2.45e6; Unix seconds of 1970-04
/// are 1e7; Unix milliseconds of 1973 are 1e11).
fn from_number(number: f64) -> Option<DateTime<Utc>> {
    if !number.is_finite() || number <= 0.0 {
        return None;
    }
    let seconds = if number < 1e7 {
        (number - UNIX_EPOCH_JULIAN_DAY) * 86_400.0
    } else if number < 1e11 {
        number
    } else {
        number / 1000.0
    };
    let millis = (seconds * 1000.0).round();
    (millis.abs() < 1e15).then(|| DateTime::from_timestamp_millis(millis as i64)).flatten()
}

/// The text form ordersync writes into SQLite: what `datetime('now')` writes, plus milliseconds,
/// which SQLite's own date functions read.
pub fn sqlite_timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn only_uuids_are_coinbase_order_ids() {
        assert!(OrderId::parse("d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10").unwrap().is_exchange_id());
        for id in [
            "..",
            "batch",
            "fills",
            "bot-1",
            "12345",
            "D1AAA054-747D-4F9A-8E3F-05FBF5E2CD10",
            "d1aaa054747d4f9a8e3f05fbf5e2cd10",
            "urn:uuid:d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10",
        ] {
            assert!(!OrderId::parse(id).unwrap().is_exchange_id(), "{id}");
        }
    }

    #[test]
    fn order_ids_are_validated() {
        assert!(OrderId::parse("d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10").is_ok());
        for bad in ["", "a/b", "a b", "x'; drop", &"a".repeat(129)] {
            assert!(OrderId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_database_timestamp_form_parses_to_the_same_instant() {
        let expected = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
        for text in [
            "2025-01-02 03:04:05",
            "2025-01-02T03:04:05",
            "2025-01-02T03:04:05Z",
            "2025-01-02 03:04:05Z",
            "2025-01-02T03:04:05+00:00",
            "2025-01-02 03:04:05+00",
            "2025-01-02 04:04:05+01",
            "2025-01-02 03:04:05.000",
            "2025-01-02 05:04:05+0200",
        ] {
            assert_eq!(parse_timestamp(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn fractional_seconds_are_kept() {
        let at = parse_timestamp("2023-08-04T18:05:21.351596698Z").unwrap();
        assert_eq!(at.timestamp_subsec_nanos(), 351_596_698);
        assert_eq!(parse_timestamp("2025-01-02 03:04:05.25+00").unwrap().timestamp_subsec_millis(), 250);
    }

    #[test]
    fn garbage_is_an_error_not_a_guess() {
        for bad in ["", "yesterday", "2025-13-01 00:00:00", "-5", "0", "NaN", "inf", "1e300"] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    /// The numbers SQLite's own functions give for 2025-01-02 03:04:05 UTC: `strftime('%s', …)` and
    /// `unixepoch(…)` (1735787045), with milliseconds, and `julianday(…)` (2460677.627835648).
    #[test]
    fn sqlite_numbers_read_as_unix_seconds_milliseconds_or_julian_days() {
        let expected = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
        for text in ["1735787045", "1735787045.0", "1735787045000", "2460677.627835648"] {
            let at = parse_timestamp(text).unwrap();
            assert!((at - expected).num_milliseconds().abs() < 5, "{text}: {at}");
        }
    }

    #[test]
    fn sqlite_form_reads_back() {
        let at = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(sqlite_timestamp(at), "2025-01-02 03:04:05.000");
        assert_eq!(parse_timestamp(&sqlite_timestamp(at)), Ok(at));
    }
}
