//! Coinbase's WebSocket user channel as JSON: the envelope every message shares, user events (snapshot and
//! update) with their order fields (all strings), heartbeats, and the subscribe message. The listener reads
//! these, the simulator writes them.
//!
//! Deliberately not here: the connection (`listen.rs`) and what an order update means (`decide.rs`).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::exchange::{ExchangeOrder, ExchangeStatus};
use crate::order::OrderId;

/// Coinbase's user-channel endpoint.
pub const DEFAULT_USER_WS_URL: &str = "wss://advanced-trade-ws-user.coinbase.com";

/// `{"type": "subscribe", "channel": "user", "jwt": "..."}`; one channel per message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub product_ids: Vec<String>,
    pub jwt: String,
}

/// Every message: `{"channel", "client_id", "timestamp", "sequence_num", "events"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub channel: String,
    #[serde(default)]
    pub client_id: String,
    pub timestamp: String,
    pub sequence_num: u64,
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
}

/// A user-channel event: `{"type": "snapshot" | "update", "orders": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub orders: Vec<WsOrder>,
}

/// An order as the user channel sends it. Unknown or oddly cased keys (`reject_Reason`) are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WsOrder {
    pub order_id: String,
    #[serde(default)]
    pub client_order_id: String,
    #[serde(default)]
    pub product_id: String,
    #[serde(default)]
    pub order_side: String,
    #[serde(default)]
    pub order_type: String,
    pub status: String,
    #[serde(default)]
    pub cumulative_quantity: String,
    #[serde(default)]
    pub leaves_quantity: String,
    #[serde(default)]
    pub avg_price: String,
    #[serde(default)]
    pub filled_value: String,
    #[serde(default)]
    pub number_of_fills: String,
    #[serde(default)]
    pub completion_percentage: String,
    #[serde(default)]
    pub total_fees: String,
    #[serde(default)]
    pub total_value_after_fees: String,
    #[serde(default)]
    pub outstanding_hold_amount: String,
    #[serde(default)]
    pub limit_price: String,
    #[serde(default)]
    pub stop_price: String,
    #[serde(default)]
    pub time_in_force: String,
    #[serde(default)]
    pub post_only: String,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub reject_reason: String,
    #[serde(default)]
    pub creation_time: String,
    #[serde(default)]
    pub start_time: String,
    #[serde(default)]
    pub end_time: String,
    #[serde(default)]
    pub product_type: String,
    #[serde(default)]
    pub trigger_status: String,
    #[serde(default)]
    pub retail_portfolio_id: String,
    #[serde(default)]
    pub risk_managed_by: String,
}

/// `{"type": "error", "message": "..."}`: the server refuses a message or the subscription (outside any
/// envelope).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

impl Refusal {
    pub fn new(message: impl Into<String>) -> Refusal {
        Refusal { kind: "error".into(), message: message.into() }
    }

    /// The refusal a message is, if it is one: its message (`"no message"` when it gives none).
    pub fn of(value: &serde_json::Value) -> Option<String> {
        let refusal = Refusal::deserialize(value).ok().filter(|r| r.kind == "error")?;
        Some(if refusal.message.is_empty() { "no message".to_string() } else { refusal.message })
    }
}

/// The `subscriptions` channel's event: `{"subscriptions": {"user": ["..."]}}`, what the connection is
/// subscribed to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subscriptions {
    pub subscriptions: std::collections::BTreeMap<String, Vec<String>>,
}

/// `{"current_time": "...", "heartbeat_counter": 3049}`; the counter may arrive as a string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub current_time: String,
    #[serde(default)]
    pub heartbeat_counter: serde_json::Value,
}

fn decimal(field: &str, text: &str) -> Result<Option<Decimal>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map(Some)
        .map_err(|_| format!("{field} {text:?} is not a decimal"))
}

impl WsOrder {
    /// The order as the user channel tells it: news that an order changed, never figures to write. The
    /// channel has no `last_fill_time`, and the message's timestamp is when it was sent, not when the order
    /// filled: `last_fill_time` stays `None` here, and what is written comes from Get Order or List Orders.
    pub fn parse(&self) -> Result<ExchangeOrder, String> {
        let order_id = OrderId::parse(&self.order_id)?;
        if self.status.is_empty() {
            return Err("status is empty".into());
        }
        let filled_size = decimal("cumulative_quantity", &self.cumulative_quantity)?;
        let average = decimal("avg_price", &self.avg_price)?;
        let created_time = match self.creation_time.as_str() {
            "" | "0001-01-01T00:00:00Z" => None,
            text => Some(
                DateTime::parse_from_rfc3339(text)
                    .map_err(|_| format!("creation_time {text:?} is not RFC 3339"))?
                    .with_timezone(&Utc),
            ),
        };
        let filled = filled_size.is_some_and(|size| !size.is_zero());
        Ok(ExchangeOrder {
            order_id,
            product_id: self.product_id.clone(),
            status: ExchangeStatus::parse(&self.status),
            created_time,
            last_fill_time: None,
            filled_size,
            average_filled_price: average.filter(|a| filled && !a.is_zero()),
            fill_time_from_fills: false,
        })
    }
}

/// Parse an envelope's RFC 3339 timestamp.
pub fn message_time(envelope: &Envelope) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(&envelope.timestamp)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| format!("timestamp {:?} is not RFC 3339", envelope.timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user-channel update as the reference shows it, with a repeated oddly cased key.
    const UPDATE: &str = r#"{"channel": "user", "client_id": "", "timestamp": "2025-10-01T10:00:03.123456789Z",
        "sequence_num": 7, "events": [{"type": "update", "orders": [{
            "order_id": "d1aaa054-747d-4f9a-8e3f-05fbf5e2cd10", "client_order_id": "bot-1", "product_id": "AVNT-USD",
            "order_side": "BUY", "order_type": "Limit", "status": "FILLED", "cumulative_quantity": "100",
            "leaves_quantity": "0", "avg_price": "0.8373", "filled_value": "83.73", "number_of_fills": "2",
            "completion_percentage": "100.00", "total_fees": "0.5", "total_value_after_fees": "84.23",
            "outstanding_hold_amount": "0", "limit_price": "0.84", "stop_price": "", "time_in_force": "GOOD_UNTIL_CANCELLED",
            "post_only": "false", "cancel_reason": "", "reject_reason": "", "reject_Reason": "",
            "creation_time": "2025-10-01T09:59:00Z", "start_time": "0001-01-01T00:00:00Z",
            "end_time": "0001-01-01T00:00:00Z", "product_type": "SPOT", "trigger_status": "INVALID_ORDER_TYPE",
            "retail_portfolio_id": "p-1", "risk_managed_by": "UNKNOWN_RISK_MANAGEMENT_TYPE"}]}]}"#;

    #[test]
    fn an_update_parses_without_taking_the_message_time_as_fill_time() {
        let envelope: Envelope = serde_json::from_str(UPDATE).unwrap();
        assert_eq!((envelope.channel.as_str(), envelope.sequence_num), ("user", 7));
        let event: UserEvent = serde_json::from_value(envelope.events[0].clone()).unwrap();
        assert_eq!(event.kind, "update");
        assert!(message_time(&envelope).is_ok());
        let order = event.orders[0].parse().unwrap();
        assert_eq!(order.status, ExchangeStatus::Filled);
        assert_eq!(order.last_fill_time, None, "the message time is not when the order filled");
        assert_eq!(order.average_filled_price.unwrap().to_string(), "0.8373");
        assert_eq!(order.filled_size, Some(Decimal::from(100)));
    }

    #[test]
    fn heartbeat_counters_are_accepted_as_numbers_or_strings() {
        for counter in ["3049", "\"3049\""] {
            let json = format!(r#"{{"current_time": "2025-10-01T10:00:00Z", "heartbeat_counter": {counter}}}"#);
            assert!(serde_json::from_str::<Heartbeat>(&json).is_ok());
        }
    }

    #[test]
    fn an_open_order_with_nothing_filled_has_no_fill_figures() {
        let order = WsOrder {
            order_id: "abc".into(),
            status: "OPEN".into(),
            cumulative_quantity: "0".into(),
            ..WsOrder::default()
        };
        let parsed = order.parse().unwrap();
        assert_eq!((parsed.last_fill_time, parsed.average_filled_price), (None, None));
    }

    #[test]
    fn unreadable_figures_are_errors() {
        let order = WsOrder {
            order_id: "abc".into(),
            status: "FILLED".into(),
            cumulative_quantity: "x".into(),
            ..WsOrder::default()
        };
        assert!(order.parse().is_err());
    }
}
