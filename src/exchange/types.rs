//! Coinbase's order as JSON (`WireOrder`, every number a string) and as ordersync uses it
//! (`ExchangeOrder`, parsed once, decimals exact). The client reads `WireOrder`, the simulator writes it:
//! one definition of the shape serves both.
//!
//! Deliberately not here: what a status means for the bot's row (that is `decide.rs`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::order::OrderId;

/// Coinbase's order status. Words Coinbase may add later land in `Unrecognized` and change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExchangeStatus {
    Pending,
    Queued,
    Open,
    CancelQueued,
    EditQueued,
    Filled,
    Cancelled,
    Expired,
    Failed,
    UnknownOrderStatus,
    Unrecognized(String),
}

impl ExchangeStatus {
    /// Every status Coinbase documents, in its own spelling.
    pub const DOCUMENTED: [ExchangeStatus; 10] = [
        ExchangeStatus::Pending,
        ExchangeStatus::Queued,
        ExchangeStatus::Open,
        ExchangeStatus::CancelQueued,
        ExchangeStatus::EditQueued,
        ExchangeStatus::Filled,
        ExchangeStatus::Cancelled,
        ExchangeStatus::Expired,
        ExchangeStatus::Failed,
        ExchangeStatus::UnknownOrderStatus,
    ];

    pub fn parse(word: &str) -> Self {
        Self::DOCUMENTED
            .into_iter()
            .find(|status| status.documented_word() == Some(word))
            .unwrap_or_else(|| ExchangeStatus::Unrecognized(word.to_string()))
    }

    /// Coinbase's spelling of a documented status; `None` for a word it never documented.
    fn documented_word(&self) -> Option<&'static str> {
        Some(match self {
            ExchangeStatus::Pending => "PENDING",
            ExchangeStatus::Queued => "QUEUED",
            ExchangeStatus::Open => "OPEN",
            ExchangeStatus::CancelQueued => "CANCEL_QUEUED",
            ExchangeStatus::EditQueued => "EDIT_QUEUED",
            ExchangeStatus::Filled => "FILLED",
            ExchangeStatus::Cancelled => "CANCELLED",
            ExchangeStatus::Expired => "EXPIRED",
            ExchangeStatus::Failed => "FAILED",
            ExchangeStatus::UnknownOrderStatus => "UNKNOWN_ORDER_STATUS",
            ExchangeStatus::Unrecognized(_) => return None,
        })
    }

    /// The word as the exchange sent it.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeStatus::Unrecognized(word) => word,
            documented => documented.documented_word().unwrap_or_default(),
        }
    }

    /// A label value with a bounded set: unrecognized words all become `UNRECOGNIZED`.
    pub fn label(&self) -> &'static str {
        self.documented_word().unwrap_or("UNRECOGNIZED")
    }
}

impl fmt::Display for ExchangeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the exchange said about one order, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeOrder {
    pub order_id: OrderId,
    pub product_id: String,
    pub status: ExchangeStatus,
    pub created_time: Option<DateTime<Utc>>,
    /// When the last fill happened, by the exchange's clock. `None` when never filled, or not reported.
    pub last_fill_time: Option<DateTime<Utc>>,
    /// `None` when the answer had no `filled_size` (missing or empty).
    pub filled_size: Option<Decimal>,
    /// `None` when nothing was filled (Coinbase sends `"0"`), or the answer had none.
    pub average_filled_price: Option<Decimal>,
    /// Set when `last_fill_time` came from List Fills, not the order (`decide::complete_with_fills`).
    pub fill_time_from_fills: bool,
}

impl ExchangeOrder {
    /// What was filled, zero when the answer did not say.
    pub fn filled(&self) -> Decimal {
        self.filled_size.unwrap_or_default()
    }
}

/// One fill of List Fills, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeFill {
    pub order_id: OrderId,
    pub trade_time: DateTime<Utc>,
    pub price: Decimal,
    pub size: Decimal,
}

/// A fill exactly as List Fills sends it (every number a string).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireFill {
    #[serde(default)]
    pub entry_id: String,
    #[serde(default)]
    pub trade_id: String,
    pub order_id: String,
    pub trade_time: String,
    #[serde(default)]
    pub trade_type: String,
    pub price: String,
    pub size: String,
    #[serde(default)]
    pub commission: String,
    #[serde(default)]
    pub product_id: String,
    #[serde(default)]
    pub sequence_timestamp: String,
    #[serde(default)]
    pub liquidity_indicator: String,
    #[serde(default)]
    pub size_in_quote: bool,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub side: String,
}

impl WireFill {
    /// Parse the fields ordersync uses; an unreadable one is an error, never a guess.
    pub fn parse(&self) -> Result<ExchangeFill, String> {
        Ok(ExchangeFill {
            order_id: OrderId::parse(&self.order_id)?,
            trade_time: time("trade_time", Some(&self.trade_time))?.ok_or("trade_time is empty")?,
            price: decimal("price", Some(&self.price))?.ok_or("price is empty")?,
            size: decimal("size", Some(&self.size))?.ok_or("size is empty")?,
        })
    }
}

/// `{"fills": [...], "cursor": ""}` from List Fills.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ListFillsResponse {
    pub fills: Vec<WireFill>,
    #[serde(default)]
    pub cursor: String,
}

/// `{"can_view": true, "can_trade": true, ...}` from Get API Key Permissions.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyPermissions {
    #[serde(default)]
    pub can_view: bool,
    #[serde(default)]
    pub can_trade: bool,
    #[serde(default)]
    pub can_transfer: bool,
    #[serde(default)]
    pub portfolio_uuid: String,
    #[serde(default)]
    pub portfolio_type: String,
}

/// The `order_configuration` of a limit order good until cancelled, as the simulator writes it; ordersync
/// never reads it.
pub fn limit_gtc_configuration(base_size: String, limit_price: String) -> serde_json::Value {
    serde_json::json!({"limit_limit_gtc": {"base_size": base_size, "limit_price": limit_price, "post_only": false}})
}

/// The order object of Get Order and List Orders, field names and types exactly as Coinbase sends them.
/// Fields ordersync does not need are kept as raw JSON so the simulator can serve the whole shape;
/// unknown fields are ignored when reading.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireOrder {
    pub order_id: String,
    #[serde(default)]
    pub product_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub order_configuration: serde_json::Value,
    #[serde(default)]
    pub side: String,
    #[serde(default)]
    pub client_order_id: String,
    pub status: String,
    #[serde(default)]
    pub time_in_force: String,
    #[serde(default)]
    pub created_time: Option<String>,
    #[serde(default)]
    pub completion_percentage: Option<String>,
    #[serde(default)]
    pub filled_size: Option<String>,
    #[serde(default)]
    pub average_filled_price: Option<String>,
    #[serde(default)]
    pub fee: Option<String>,
    #[serde(default)]
    pub number_of_fills: Option<String>,
    #[serde(default)]
    pub filled_value: Option<String>,
    #[serde(default)]
    pub pending_cancel: bool,
    #[serde(default)]
    pub size_in_quote: bool,
    #[serde(default)]
    pub total_fees: Option<String>,
    #[serde(default)]
    pub size_inclusive_of_fees: bool,
    #[serde(default)]
    pub total_value_after_fees: Option<String>,
    #[serde(default)]
    pub trigger_status: String,
    #[serde(default)]
    pub order_type: String,
    #[serde(default)]
    pub reject_reason: String,
    #[serde(default)]
    pub settled: bool,
    #[serde(default)]
    pub product_type: String,
    #[serde(default)]
    pub reject_message: String,
    #[serde(default)]
    pub cancel_message: String,
    #[serde(default)]
    pub order_placement_source: String,
    #[serde(default)]
    pub outstanding_hold_amount: Option<String>,
    #[serde(default)]
    pub is_liquidation: bool,
    #[serde(default)]
    pub last_fill_time: Option<String>,
}

/// `{"order": {...}}` from Get Order.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetOrderResponse {
    pub order: WireOrder,
}

/// List Orders: follow `cursor` while `has_next`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListOrdersResponse {
    pub orders: Vec<WireOrder>,
    #[serde(default)]
    pub sequence: String,
    #[serde(default)]
    pub has_next: bool,
    #[serde(default)]
    pub cursor: String,
}

/// A List Orders page as the client reads it: each order on its own, so that an order it cannot read (a
/// field of the wrong type) is that order's trouble and never makes the whole page unreadable.
#[derive(Debug, Deserialize)]
pub struct ListOrdersPage {
    pub orders: Vec<serde_json::Value>,
    #[serde(default)]
    pub has_next: bool,
    #[serde(default)]
    pub cursor: String,
}

impl ListOrdersPage {
    /// The orders read, and `(order id, why)` for each that could not be. An entry without a string
    /// `order_id` answers for no order: it is left out (and its order, if asked for, is absent).
    pub fn read(self) -> (Vec<ExchangeOrder>, Vec<(String, String)>) {
        let mut read = Vec::with_capacity(self.orders.len());
        let mut malformed = Vec::new();
        for value in self.orders {
            let Some(id) = value.get("order_id").and_then(serde_json::Value::as_str).map(str::to_string) else {
                continue;
            };
            match serde_json::from_value::<WireOrder>(value).map_err(|e| e.to_string()).and_then(|w| w.parse()) {
                Ok(order) => read.push(order),
                Err(why) => malformed.push((id, why)),
            }
        }
        (read, malformed)
    }
}

/// A Coinbase error body, e.g. `{"error": "NOT_FOUND", "error_details": "...", "message": "..."}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    #[serde(default)]
    pub error_details: String,
    #[serde(default)]
    pub message: String,
}

/// A decimal string; `None` when missing or empty (Coinbase's empty `fee`, say).
fn decimal(field: &str, text: Option<&str>) -> Result<Option<Decimal>, String> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map(Some)
            .map_err(|_| format!("{field} {text:?} is not a decimal number")),
    }
}

fn time(field: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|at| Some(at.with_timezone(&Utc)))
            .map_err(|_| format!("{field} {text:?} is not an RFC 3339 time")),
    }
}

impl WireOrder {
    /// Parse the fields ordersync relies on. A field that is present but unreadable is an error: the
    /// answer is malformed, never guessed at.
    pub fn parse(&self) -> Result<ExchangeOrder, String> {
        let order_id = OrderId::parse(&self.order_id)?;
        let filled_size = decimal("filled_size", self.filled_size.as_deref())?;
        let average = decimal("average_filled_price", self.average_filled_price.as_deref())?;
        if self.status.is_empty() {
            return Err("status is empty".into());
        }
        Ok(ExchangeOrder {
            order_id,
            product_id: self.product_id.clone(),
            status: ExchangeStatus::parse(&self.status),
            created_time: time("created_time", self.created_time.as_deref())?,
            last_fill_time: time("last_fill_time", self.last_fill_time.as_deref())?,
            filled_size,
            average_filled_price: average.filter(|a| !a.is_zero()),
            fill_time_from_fills: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FILLED order exactly as the reference shows Coinbase sending it (with the odd live-data details:
    /// `UNKNOWN_ORDER_TYPE`, an empty `fee`, an "Internal error" cancel message on a filled order).
    pub(crate) const FILLED_JSON: &str = r#"{"order": {
        "order_id": "d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10", "product_id": "AVNT-USD", "user_id": "u-1",
        "order_configuration": {"limit_limit_gtc": {"base_size": "100", "limit_price": "0.8373", "post_only": false}},
        "side": "BUY", "client_order_id": "bot-1", "status": "FILLED", "time_in_force": "GOOD_UNTIL_CANCELLED",
        "created_time": "2025-10-01T10:00:00.351596698Z", "completion_percentage": "100", "filled_size": "100",
        "average_filled_price": "0.8373", "fee": "", "number_of_fills": "2", "filled_value": "83.73",
        "pending_cancel": false, "size_in_quote": false, "total_fees": "0.50238", "size_inclusive_of_fees": false,
        "total_value_after_fees": "84.23238", "trigger_status": "INVALID_ORDER_TYPE", "order_type": "UNKNOWN_ORDER_TYPE",
        "reject_reason": "", "settled": true, "product_type": "SPOT", "reject_message": "",
        "cancel_message": "Internal error", "order_placement_source": "RETAIL_ADVANCED",
        "outstanding_hold_amount": "0", "is_liquidation": false, "last_fill_time": "2025-10-01T10:00:03.5Z",
        "edit_history": [], "leverage": "", "margin_type": "UNKNOWN_MARGIN_TYPE", "retail_portfolio_id": "p-1",
        "a_field_added_next_year": {"nested": true}
    }}"#;

    fn parse(json: &str) -> Result<ExchangeOrder, String> {
        let response: GetOrderResponse = serde_json::from_str(json).map_err(|e| e.to_string())?;
        response.order.parse()
    }

    fn with_status(status: &str, filled_size: &str, price: &str, last_fill: &str) -> String {
        FILLED_JSON
            .replace("\"status\": \"FILLED\"", &format!("\"status\": \"{status}\""))
            .replace("\"filled_size\": \"100\"", &format!("\"filled_size\": \"{filled_size}\""))
            .replace("\"average_filled_price\": \"0.8373\"", &format!("\"average_filled_price\": \"{price}\""))
            .replace("\"last_fill_time\": \"2025-10-01T10:00:03.5Z\"", &format!("\"last_fill_time\": {last_fill}"))
    }

    #[test]
    fn a_filled_order_parses_with_exact_figures_and_the_exchange_fill_time() {
        let order = parse(FILLED_JSON).unwrap();
        assert_eq!(order.status, ExchangeStatus::Filled);
        assert_eq!(order.average_filled_price, Some(Decimal::from_str("0.8373").unwrap()));
        assert_eq!(order.filled_size, Some(Decimal::from(100)));
        assert_eq!(order.last_fill_time.unwrap().to_rfc3339(), "2025-10-01T10:00:03.500+00:00");
        assert_eq!(order.created_time.unwrap().timestamp_subsec_nanos(), 351_596_698);
    }

    #[test]
    fn every_documented_status_parses_to_itself() {
        for status in ExchangeStatus::DOCUMENTED {
            let json = with_status(status.as_str(), "0", "0", "null");
            let order = parse(&json).unwrap();
            assert_eq!(order.status, status);
            assert_eq!(order.average_filled_price, None, "\"0\" means nothing filled");
            assert_eq!(order.last_fill_time, None);
        }
    }

    #[test]
    fn an_unknown_status_word_is_kept_as_unrecognized() {
        let order = parse(&with_status("SETTLING", "0", "0", "null")).unwrap();
        assert_eq!(order.status, ExchangeStatus::Unrecognized("SETTLING".into()));
        assert_eq!(order.status.label(), "UNRECOGNIZED");
    }

    #[test]
    fn a_partly_filled_cancel_keeps_its_figures() {
        let order = parse(&with_status("CANCELLED", "40.5", "8.5959999999999997", "\"2025-10-01T10:00:02Z\"")).unwrap();
        assert_eq!(order.filled_size, Some(Decimal::from_str("40.5").unwrap()));
        assert_eq!(order.average_filled_price.unwrap().to_string(), "8.5959999999999997");
    }

    #[test]
    fn unreadable_figures_are_malformed_not_zero() {
        assert!(parse(&with_status("FILLED", "lots", "0.8", "null")).is_err());
        assert!(parse(&with_status("FILLED", "1", "0.8", "\"yesterday\"")).is_err());
        assert!(parse(&with_status("", "1", "0.8", "null")).is_err());
        assert!(parse("{\"order\": {\"status\": \"FILLED\"}}").is_err(), "no order_id");
    }

    #[test]
    fn missing_or_empty_figures_are_none_not_zero() {
        let order = parse(&with_status("FILLED", "", "", "null")).unwrap();
        assert_eq!((order.filled_size, order.average_filled_price), (None, None));
        let json =
            FILLED_JSON.replace("\"filled_size\": \"100\",", "").replace("\"average_filled_price\": \"0.8373\",", "");
        let order = parse(&json).unwrap();
        assert_eq!((order.filled_size, order.average_filled_price), (None, None));
    }

    /// A fill as the reference documents List Fills' fields.
    #[test]
    fn a_fill_parses_with_exact_figures() {
        let json = r#"{"fills": [{"entry_id": "e1", "trade_id": "t1", "order_id": "d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10",
            "trade_time": "2025-10-01T10:00:03.5Z", "trade_type": "FILL", "price": "0.8373", "size": "60",
            "commission": "0.3", "product_id": "AVNT-USD", "sequence_timestamp": "2025-10-01T10:00:03.6Z",
            "liquidity_indicator": "MAKER", "size_in_quote": false, "user_id": "u-1", "side": "BUY"}], "cursor": ""}"#;
        let list: ListFillsResponse = serde_json::from_str(json).unwrap();
        let fill = list.fills[0].parse().unwrap();
        assert_eq!(fill.price.to_string(), "0.8373");
        assert_eq!(fill.size, Decimal::from(60));
        assert_eq!(fill.trade_time.to_rfc3339(), "2025-10-01T10:00:03.500+00:00");
        let mut bad = list.fills[0].clone();
        bad.price = "lots".into();
        assert!(bad.parse().is_err());
    }

    #[test]
    fn one_order_of_the_wrong_shape_spoils_only_itself_not_its_page() {
        let good = serde_json::from_str::<serde_json::Value>(FILLED_JSON).unwrap()["order"].clone();
        let mut wrong_type = good.clone();
        wrong_type["order_id"] = "0c5e2f39-0000-4000-8000-00000000000b".into();
        wrong_type["pending_cancel"] = "no".into();
        let mut bad_number = good.clone();
        bad_number["order_id"] = "0c5e2f39-0000-4000-8000-00000000000c".into();
        bad_number["filled_size"] = "lots".into();
        let no_id = serde_json::json!({"status": "FILLED"});
        let page =
            serde_json::json!({"orders": [good, wrong_type, bad_number, no_id], "has_next": false, "cursor": ""});
        let page: ListOrdersPage = serde_json::from_value(page).unwrap();
        let (read, malformed) = page.read();
        assert_eq!(read.len(), 1);
        let ids: Vec<&str> = malformed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["0c5e2f39-0000-4000-8000-00000000000b", "0c5e2f39-0000-4000-8000-00000000000c"]);
        assert!(malformed[0].1.contains("pending_cancel") || malformed[0].1.contains("boolean"), "{malformed:?}");
    }

    #[test]
    fn a_list_response_reads_with_cursor() {
        let json = r#"{"orders": [], "sequence": "0", "has_next": false, "cursor": ""}"#;
        let list: ListOrdersResponse = serde_json::from_str(json).unwrap();
        assert!(!list.has_next && list.cursor.is_empty());
    }
}
