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
    pub created_at: DateTime<Utc>,
    pub bot_id: Option<String>,
    pub product_id: Option<String>,
}

/// Parse a timestamp as SQLite or PostgreSQL write it: `2025-01-01 10:00:00` (SQLite `datetime('now')`,
/// UTC), ISO-8601 `2025-01-01T10:00:00.123Z`, and PostgreSQL's text form `2025-01-01 10:00:00.5+00`.
/// A value with no offset is UTC.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
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
        for bad in ["", "yesterday", "2025-13-01 00:00:00", "1735700000"] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sqlite_form_reads_back() {
        let at = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(sqlite_timestamp(at), "2025-01-02 03:04:05.000");
        assert_eq!(parse_timestamp(&sqlite_timestamp(at)), Ok(at));
    }
}
