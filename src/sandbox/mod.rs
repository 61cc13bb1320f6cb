//! The Coinbase-compatible simulator: orders with the real lifecycle (open -> partly filled -> filled;
//! cancelled; expired; failed), a clock that tests can move, fault knobs, and two faces: the REST API over
//! HTTP (`server.rs`, used by the real client) and `impl Exchange` in-process (the tests' fake exchange).
//!
//! Deliberately not here: any knowledge of the bot's database. Order JSON comes from `exchange::types`,
//! so the simulator and the client cannot drift apart on field names.

pub mod server;
pub mod ws;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::exchange::types::{limit_gtc_configuration, ListOrdersResponse, WireFill, WireOrder};
use crate::exchange::ws::WsOrder;
use crate::exchange::{Batch, Exchange, ExchangeError, ExchangeFill, ExchangeOrder};
use crate::order::OrderId;

pub use crate::order::is_coinbase_order_id as is_order_id;

/// Page size of List Orders when the request names none, and the most it allows.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("no order {0} in the simulator")]
    NoSuchOrder(String),
    #[error("order {id} is {status}: it cannot {action}")]
    Terminal { id: String, status: String, action: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// Faults the HTTP face injects, each with a rate from 0 to 1. Draws come from the seeded generator,
/// so a run is repeatable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub latency_rate: f64,
    pub latency_ms: u64,
    pub error_5xx_rate: f64,
    pub rate_limit_rate: f64,
    /// Seconds sent in `Retry-After` with an injected 429.
    pub retry_after_seconds: u64,
    pub malformed_rate: f64,
    pub unknown_status_rate: f64,
    pub truncated_rate: f64,
    /// WebSocket: share of messages not sent (their sequence number is used up, so clients see a gap).
    pub ws_drop_rate: f64,
    /// WebSocket: share of messages sent twice.
    pub ws_duplicate_rate: f64,
    /// WebSocket: share of messages held back and sent after the next one.
    pub ws_reorder_rate: f64,
    /// Serve at most this many orders a page whatever `limit` asks (0: as asked), so clients must follow
    /// the cursor.
    pub page_size: usize,
    /// Share of orders answered as unknown though they exist (left out of a List Orders answer, 404 from
    /// Get Order), drawn for each order in each answer: Coinbase's eventual consistency.
    pub not_found_rate: f64,
}

/// A fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    ServerError,
    RateLimited,
    Malformed,
    UnknownStatus,
    Truncated,
}

impl Fault {
    /// Its name in `served_faults`; an injected 429 says whether it carried `Retry-After`.
    pub fn name(self, retry_after: bool) -> &'static str {
        match self {
            Fault::ServerError => "server_error",
            Fault::RateLimited if retry_after => "rate_limited_injected_with_retry_after",
            Fault::RateLimited => "rate_limited_injected_without_retry_after",
            Fault::Malformed => "malformed",
            Fault::UnknownStatus => "unknown_status",
            Fault::Truncated => "truncated",
        }
    }
}

impl State {
    fn count(&mut self, name: &'static str) {
        *self.served.entry(name).or_default() += 1;
    }
}

/// An order to place in the simulator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewOrder {
    /// A UUID is made up when absent.
    pub order_id: Option<String>,
    pub client_order_id: Option<String>,
    pub product_id: String,
    /// `BUY` or `SELL`.
    pub side: Option<String>,
    pub base_size: Decimal,
    pub limit_price: Decimal,
    pub created_time: Option<DateTime<Utc>>,
    /// The name of the API key the order was placed with: only that key sees it (List Orders, Get Order,
    /// List Fills, the user channel), as Coinbase shows each key its own account's orders. Absent: every
    /// key sees it (one account).
    pub account: Option<String>,
}

/// Figures an order's answers leave out, for tests of incomplete answers (a FILLED order without its price,
/// say). `fills` leaves the order out of List Fills too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Omit {
    pub average_filled_price: bool,
    pub filled_size: bool,
    pub last_fill_time: bool,
    pub fills: bool,
}

#[derive(Debug, Clone)]
struct SimFill {
    at: DateTime<Utc>,
    price: Decimal,
    size: Decimal,
}

#[derive(Debug, Clone)]
struct SimOrder {
    account: Option<String>,
    order_id: String,
    client_order_id: String,
    product_id: String,
    side: String,
    status: String,
    created_time: DateTime<Utc>,
    base_size: Decimal,
    limit_price: Decimal,
    filled_size: Decimal,
    filled_value: Decimal,
    number_of_fills: u32,
    last_fill_time: Option<DateTime<Utc>>,
    fills: Vec<SimFill>,
    omit: Omit,
}

const LIVE: [&str; 5] = ["PENDING", "QUEUED", "OPEN", "CANCEL_QUEUED", "EDIT_QUEUED"];
const FEE_RATE: Decimal = Decimal::from_parts(6, 0, 0, false, 3); // 0.006

fn time_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn number(value: Decimal) -> String {
    value.normalize().to_string()
}

impl SimOrder {
    fn wire(&self) -> WireOrder {
        let average = if self.filled_size.is_zero() { Decimal::ZERO } else { self.filled_value / self.filled_size };
        let completion = if self.base_size.is_zero() {
            Decimal::ZERO
        } else {
            self.filled_size * Decimal::ONE_HUNDRED / self.base_size
        };
        let fees = (self.filled_value * FEE_RATE).round_dp(8);
        let live = LIVE.contains(&self.status.as_str());
        let hold = if live { (self.base_size - self.filled_size) * self.limit_price } else { Decimal::ZERO };
        WireOrder {
            order_id: self.order_id.clone(),
            product_id: self.product_id.clone(),
            user_id: "sandbox-user".into(),
            order_configuration: limit_gtc_configuration(number(self.base_size), number(self.limit_price)),
            side: self.side.clone(),
            client_order_id: self.client_order_id.clone(),
            status: self.status.clone(),
            time_in_force: "GOOD_UNTIL_CANCELLED".into(),
            created_time: Some(time_text(self.created_time)),
            completion_percentage: Some(number(completion.round_dp(2))),
            filled_size: Some(number(self.filled_size)),
            average_filled_price: Some(number(average.round_dp(10))),
            fee: Some(String::new()),
            number_of_fills: Some(self.number_of_fills.to_string()),
            filled_value: Some(number(self.filled_value)),
            pending_cancel: self.status == "CANCEL_QUEUED",
            size_in_quote: false,
            total_fees: Some(number(fees)),
            size_inclusive_of_fees: false,
            total_value_after_fees: Some(number(self.filled_value + fees)),
            trigger_status: "INVALID_ORDER_TYPE".into(),
            order_type: "LIMIT".into(),
            reject_reason: String::new(),
            settled: !live,
            product_type: "SPOT".into(),
            reject_message: String::new(),
            cancel_message: String::new(),
            order_placement_source: "RETAIL_ADVANCED".into(),
            outstanding_hold_amount: Some(number(hold)),
            is_liquidation: false,
            last_fill_time: self.last_fill_time.map(time_text).filter(|_| !self.omit.last_fill_time),
        }
        .omitting(self.omit)
    }

    /// The order's fills as List Fills gives them.
    fn wire_fills(&self) -> Vec<WireFill> {
        if self.omit.fills {
            return Vec::new();
        }
        self.fills
            .iter()
            .enumerate()
            .map(|(n, fill)| WireFill {
                entry_id: format!("{}-{n}", self.order_id),
                trade_id: format!("{}-t{n}", self.order_id),
                order_id: self.order_id.clone(),
                trade_time: time_text(fill.at),
                trade_type: "FILL".into(),
                price: number(fill.price),
                size: number(fill.size),
                commission: number((fill.price * fill.size * FEE_RATE).round_dp(8)),
                product_id: self.product_id.clone(),
                sequence_timestamp: time_text(fill.at),
                liquidity_indicator: "MAKER".into(),
                size_in_quote: false,
                user_id: "sandbox-user".into(),
                side: self.side.clone(),
            })
            .collect()
    }
}

impl WireOrder {
    fn omitting(mut self, omit: Omit) -> WireOrder {
        if omit.average_filled_price {
            self.average_filled_price = None;
        }
        if omit.filled_size {
            self.filled_size = None;
        }
        self
    }
}

impl SimOrder {
    fn ws(&self) -> WsOrder {
        let wire = self.wire();
        let unset = "0001-01-01T00:00:00Z".to_string();
        WsOrder {
            order_id: self.order_id.clone(),
            client_order_id: self.client_order_id.clone(),
            product_id: self.product_id.clone(),
            order_side: self.side.clone(),
            order_type: "Limit".into(),
            status: self.status.clone(),
            cumulative_quantity: number(self.filled_size),
            leaves_quantity: number(self.base_size - self.filled_size),
            avg_price: wire.average_filled_price.unwrap_or_default(),
            filled_value: number(self.filled_value),
            number_of_fills: self.number_of_fills.to_string(),
            completion_percentage: wire.completion_percentage.unwrap_or_default(),
            total_fees: wire.total_fees.unwrap_or_default(),
            total_value_after_fees: wire.total_value_after_fees.unwrap_or_default(),
            outstanding_hold_amount: wire.outstanding_hold_amount.unwrap_or_default(),
            limit_price: number(self.limit_price),
            stop_price: String::new(),
            time_in_force: wire.time_in_force,
            post_only: "false".into(),
            cancel_reason: String::new(),
            reject_reason: String::new(),
            creation_time: time_text(self.created_time),
            start_time: unset.clone(),
            end_time: unset,
            product_type: "SPOT".into(),
            trigger_status: wire.trigger_status,
            retail_portfolio_id: "sandbox-portfolio".into(),
            risk_managed_by: "UNKNOWN_RISK_MANAGEMENT_TYPE".into(),
        }
    }
}

/// An order changed: what the user channel sends as an update.
#[derive(Debug, Clone)]
pub struct OrderChange {
    pub order: WsOrder,
    pub at: DateTime<Utc>,
    /// The key that owns the order (`None`: every key's).
    pub account: Option<String>,
}

/// A request as the simulator received it: which key signed it and what the client called itself (replicas
/// of ordersync name themselves, the account and the lease epoch there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Received {
    pub at: DateTime<Utc>,
    pub key: String,
    pub user_agent: String,
    pub path: String,
}

/// The most requests `received` keeps.
pub const MAX_RECEIVED: usize = 200_000;

/// Who is asking: the name of the key that signed the request, or `None` for the simulator's own control
/// side and in-process face, which see every order.
pub type Viewer<'a> = Option<&'a str>;

impl SimOrder {
    fn seen_by(&self, viewer: Viewer<'_>) -> bool {
        match (viewer, &self.account) {
            (Some(viewer), Some(owner)) => viewer == owner,
            _ => true,
        }
    }
}

/// Commands to the simulator's WebSocket connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsControl {
    /// Close every connection.
    Disconnect,
    /// Send nothing (not even heartbeats) for this long.
    Stall(std::time::Duration),
}

struct State {
    orders: BTreeMap<String, SimOrder>,
    clock_offset: chrono::Duration,
    faults: Faults,
    rng: StdRng,
    requests: u64,
    /// Every authenticated request, once `record_requests` is called (tests): key, client, path.
    received: Option<Vec<Received>>,
    /// How many of each fault were served (`served_faults`).
    served: BTreeMap<&'static str, u64>,
}

/// The simulator. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Sandbox {
    state: Arc<Mutex<State>>,
    changes: tokio::sync::broadcast::Sender<OrderChange>,
    control: tokio::sync::broadcast::Sender<WsControl>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new(0)
    }
}

impl Sandbox {
    /// A simulator whose fault draws follow `seed`.
    pub fn new(seed: u64) -> Sandbox {
        Sandbox {
            state: Arc::new(Mutex::new(State {
                orders: BTreeMap::new(),
                clock_offset: chrono::Duration::zero(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed),
                requests: 0,
                received: None,
                served: BTreeMap::new(),
            })),
            changes: tokio::sync::broadcast::channel(65_536).0,
            control: tokio::sync::broadcast::channel(16).0,
        }
    }

    /// Order changes as they happen, for the user channel.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<OrderChange> {
        self.changes.subscribe()
    }

    /// Commands for WebSocket connections.
    pub fn ws_control(&self) -> tokio::sync::broadcast::Receiver<WsControl> {
        self.control.subscribe()
    }

    /// Close every WebSocket connection.
    pub fn disconnect_websockets(&self) {
        let _ = self.control.send(WsControl::Disconnect);
    }

    /// Make every WebSocket connection go silent for `duration`.
    pub fn stall_websockets(&self, duration: std::time::Duration) {
        let _ = self.control.send(WsControl::Stall(duration));
    }

    /// Live orders as the user channel's snapshot lists them for `viewer`.
    pub fn open_orders(&self, viewer: Viewer<'_>) -> Vec<WsOrder> {
        self.state()
            .orders
            .values()
            .filter(|o| LIVE.contains(&o.status.as_str()) && o.seen_by(viewer))
            .map(SimOrder::ws)
            .collect()
    }

    /// From now on keep every authenticated request (`received`).
    pub fn record_requests(&self) {
        let mut state = self.state();
        if state.received.is_none() {
            state.received = Some(Vec::new());
        }
    }

    /// Note an authenticated request, when recording.
    pub fn note_request(&self, key: &str, user_agent: &str, path: &str) {
        let at = self.now();
        if let Some(received) = self.state().received.as_mut() {
            // A long-running simulator keeps the most recent ones.
            if received.len() >= MAX_RECEIVED {
                received.drain(..MAX_RECEIVED / 2);
            }
            received.push(Received { at, key: key.into(), user_agent: user_agent.into(), path: path.into() });
        }
    }

    /// The requests recorded since `record_requests`.
    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone().unwrap_or_default()
    }

    /// Draw whether a WebSocket message is dropped, duplicated or held back.
    pub fn draw_ws_fault(&self) -> (bool, bool, bool) {
        let mut state = self.state();
        let faults = state.faults.clone();
        let mut hit = |rate: f64| rate > 0.0 && state.rng.gen_bool(rate.min(1.0));
        let drawn = (hit(faults.ws_drop_rate), hit(faults.ws_duplicate_rate), hit(faults.ws_reorder_rate));
        for (on, name) in [(drawn.0, "ws_dropped"), (drawn.1, "ws_duplicated"), (drawn.2, "ws_reordered")] {
            if on {
                state.count(name);
            }
        }
        drawn
    }

    /// Note one fault served outside the draws (the simulator's own 429s, WebSocket disconnects and stalls).
    pub fn count_fault(&self, name: &'static str) {
        self.state().count(name);
    }

    /// How many of each fault the simulator has served: injected ones by kind, and its own 429s.
    pub fn served_faults(&self) -> BTreeMap<&'static str, u64> {
        self.state().served.clone()
    }

    /// Announce a change while the state lock is held, so updates go out in the order they happened.
    fn announce(&self, order: &SimOrder, at: DateTime<Utc>) {
        let _ = self.changes.send(OrderChange { order: order.ws(), at, account: order.account.clone() });
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change is a single assignment).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The simulator's clock: real time plus whatever `advance` added.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.state().clock_offset
    }

    /// Move the simulator's clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.state().clock_offset += chrono::Duration::from_std(by).unwrap_or_default();
    }

    /// Set the simulator's clock this far ahead of real time (behind when negative): the skew between
    /// Coinbase's clock and the host's that clients must live with.
    pub fn skew(&self, by: chrono::Duration) {
        self.state().clock_offset = by;
    }

    /// Every order as Get Order gives it, without faults: the ground truth for tests and the fault run.
    pub fn all_orders(&self) -> Vec<WireOrder> {
        self.state().orders.values().map(SimOrder::wire).collect()
    }

    /// Draw whether an order that exists is answered as unknown (`not_found_rate`).
    pub fn draw_not_found(&self) -> bool {
        let mut state = self.state();
        let rate = state.faults.not_found_rate;
        let hidden = rate > 0.0 && state.rng.gen_bool(rate.min(1.0));
        if hidden {
            state.count("not_found");
        }
        hidden
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.state().faults.clone()
    }

    /// Place an order; it starts OPEN.
    pub fn create_order(&self, new: NewOrder) -> Result<String, SandboxError> {
        if new.base_size <= Decimal::ZERO || new.limit_price <= Decimal::ZERO {
            return Err(SandboxError::Invalid("base_size and limit_price must be greater than 0".into()));
        }
        let order_id = new.order_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if !is_order_id(&order_id) {
            return Err(SandboxError::Invalid(format!("{order_id:?} is not a valid order id (a lowercase UUID)")));
        }
        let now = self.now();
        let order = SimOrder {
            account: new.account,
            order_id: order_id.clone(),
            client_order_id: new.client_order_id.unwrap_or_default(),
            product_id: new.product_id,
            side: new.side.unwrap_or_else(|| "BUY".into()),
            status: "OPEN".into(),
            created_time: new.created_time.unwrap_or(now),
            base_size: new.base_size,
            limit_price: new.limit_price,
            filled_size: Decimal::ZERO,
            filled_value: Decimal::ZERO,
            number_of_fills: 0,
            last_fill_time: None,
            fills: Vec::new(),
            omit: Omit::default(),
        };
        let mut state = self.state();
        if state.orders.contains_key(&order_id) {
            return Err(SandboxError::Invalid(format!("order {order_id} exists already")));
        }
        state.orders.insert(order_id.clone(), order);
        Ok(order_id)
    }

    fn with_live_order<T>(
        &self,
        id: &str,
        action: &'static str,
        change: impl FnOnce(&mut SimOrder, DateTime<Utc>) -> Result<T, SandboxError>,
    ) -> Result<T, SandboxError> {
        let now = self.now();
        let mut state = self.state();
        let order = state.orders.get_mut(id).ok_or_else(|| SandboxError::NoSuchOrder(id.to_string()))?;
        if !LIVE.contains(&order.status.as_str()) {
            return Err(SandboxError::Terminal { id: id.into(), status: order.status.clone(), action });
        }
        let result = change(order, now)?;
        self.announce(order, now);
        Ok(result)
    }

    /// Fill `size` more (all that is left when `None`) at `price` (the limit price when `None`), at time
    /// `at` (the simulator's now when `None`). The order is FILLED once nothing is left.
    pub fn fill(
        &self,
        id: &str,
        size: Option<Decimal>,
        price: Option<Decimal>,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), SandboxError> {
        self.with_live_order(id, "be filled", |order, now| {
            let left = order.base_size - order.filled_size;
            let size = size.unwrap_or(left);
            if size <= Decimal::ZERO || size > left {
                return Err(SandboxError::Invalid(format!("fill size must be above 0 and at most {left}")));
            }
            let price = price.unwrap_or(order.limit_price);
            order.filled_size += size;
            order.filled_value += size * price;
            order.number_of_fills += 1;
            order.last_fill_time = Some(at.unwrap_or(now));
            order.fills.push(SimFill { at: at.unwrap_or(now), price, size });
            order.status = if order.filled_size == order.base_size { "FILLED" } else { "OPEN" }.into();
            Ok(())
        })
    }

    /// End a live order with `status` (`CANCELLED`, `EXPIRED` or `FAILED`), keeping what was filled.
    pub fn end(&self, id: &str, status: &str) -> Result<(), SandboxError> {
        if !matches!(status, "CANCELLED" | "EXPIRED" | "FAILED") {
            return Err(SandboxError::Invalid(format!("{status:?} is not CANCELLED, EXPIRED or FAILED")));
        }
        self.with_live_order(id, "end", |order, _| {
            order.status = status.into();
            Ok(())
        })
    }

    /// Force any status word, documented or not (for tests of unknown statuses).
    pub fn force_status(&self, id: &str, status: &str) -> Result<(), SandboxError> {
        let mut state = self.state();
        let now = Utc::now() + state.clock_offset;
        let order = state.orders.get_mut(id).ok_or_else(|| SandboxError::NoSuchOrder(id.to_string()))?;
        order.status = status.to_string();
        self.announce(order, now);
        Ok(())
    }

    /// Leave figures out of this order's answers from now on.
    pub fn omit(&self, id: &str, omit: Omit) -> Result<(), SandboxError> {
        let mut state = self.state();
        let order = state.orders.get_mut(id).ok_or_else(|| SandboxError::NoSuchOrder(id.to_string()))?;
        order.omit = omit;
        Ok(())
    }

    /// List Fills for these order ids as `viewer` sees them (unknown ids have none).
    pub fn fills(&self, ids: &[String], viewer: Viewer<'_>) -> Vec<WireFill> {
        let state = self.state();
        ids.iter()
            .filter_map(|id| state.orders.get(id))
            .filter(|o| o.seen_by(viewer))
            .flat_map(SimOrder::wire_fills)
            .collect()
    }

    /// The order as Get Order would return it to `viewer` (`None` when that key cannot see it).
    pub fn wire_order(&self, id: &str, viewer: Viewer<'_>) -> Option<WireOrder> {
        self.state().orders.get(id).filter(|o| o.seen_by(viewer)).map(SimOrder::wire)
    }

    /// List Orders filtered by `ids`, newest first, one page from `cursor` (an offset, opaque to clients), of
    /// the orders `viewer` sees.
    pub fn list(
        &self,
        ids: &[String],
        limit: usize,
        cursor: &str,
        viewer: Viewer<'_>,
    ) -> Result<ListOrdersResponse, SandboxError> {
        // Like Coinbase: one id that is not an order id fails the whole request.
        if let Some(bad) = ids.iter().find(|id| !is_order_id(id)) {
            return Err(SandboxError::Invalid(format!("order_ids: {bad:?} is not a valid UUID")));
        }
        let start: usize = match cursor {
            "" => 0,
            text => text.parse().map_err(|_| SandboxError::Invalid(format!("invalid cursor {text:?}")))?,
        };
        let limit = limit.clamp(1, MAX_PAGE);
        let state = self.state();
        let mut matching: Vec<&SimOrder> = if ids.is_empty() {
            state.orders.values().filter(|o| o.seen_by(viewer)).collect()
        } else {
            ids.iter().filter_map(|id| state.orders.get(id)).filter(|o| o.seen_by(viewer)).collect()
        };
        matching.sort_by(|a, b| b.created_time.cmp(&a.created_time).then_with(|| a.order_id.cmp(&b.order_id)));
        matching.dedup_by(|a, b| a.order_id == b.order_id);
        let page: Vec<WireOrder> = matching.iter().skip(start).take(limit).map(|o| o.wire()).collect();
        let has_next = start + page.len() < matching.len();
        Ok(ListOrdersResponse {
            orders: page,
            sequence: "0".into(),
            has_next,
            cursor: if has_next { (start + limit).to_string() } else { String::new() },
        })
    }

    /// Count a request and draw its fault, if any.
    pub fn draw_fault(&self) -> (Option<Fault>, Option<std::time::Duration>) {
        let mut state = self.state();
        state.requests += 1;
        let faults = state.faults.clone();
        let mut hit = |rate: f64| rate > 0.0 && state.rng.gen_bool(rate.min(1.0));
        let delay = hit(faults.latency_rate).then(|| std::time::Duration::from_millis(faults.latency_ms));
        let fault = [
            (faults.error_5xx_rate, Fault::ServerError),
            (faults.rate_limit_rate, Fault::RateLimited),
            (faults.malformed_rate, Fault::Malformed),
            (faults.unknown_status_rate, Fault::UnknownStatus),
            (faults.truncated_rate, Fault::Truncated),
        ]
        .into_iter()
        .find(|(rate, _)| hit(*rate))
        .map(|(_, fault)| fault);
        if delay.is_some() {
            state.count("delayed");
        }
        if let Some(fault) = fault {
            state.count(fault.name(faults.retry_after_seconds > 0));
        }
        (fault, delay)
    }

    /// Requests served over HTTP so far.
    pub fn requests(&self) -> u64 {
        self.state().requests
    }
}

/// The in-process face: no HTTP, no faults; the same JSON shape, parsed the way the client parses it.
#[async_trait]
impl Exchange for Sandbox {
    async fn orders(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let mut batch = Batch::default();
        let mut cursor = String::new();
        loop {
            let page = self.list(&ids, MAX_PAGE, &cursor, None).map_err(|e| ExchangeError::Rejected(e.to_string()))?;
            for wire in page.orders {
                match wire.parse() {
                    Ok(order) => batch.orders.push(order),
                    Err(why) => batch.malformed.push((wire.order_id.clone(), why)),
                }
            }
            if !page.has_next {
                return Ok(batch);
            }
            cursor = page.cursor;
        }
    }

    async fn order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        let wire = self.wire_order(id.as_str(), None).ok_or(ExchangeError::NotFound)?;
        wire.parse().map_err(ExchangeError::Malformed)
    }

    async fn fills(&self, ids: &[OrderId]) -> Result<Vec<ExchangeFill>, ExchangeError> {
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        self.fills(&ids, None).iter().map(|fill| fill.parse().map_err(ExchangeError::Malformed)).collect()
    }

    async fn key_permissions(&self) -> Result<(), ExchangeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn place(sandbox: &Sandbox) -> String {
        let new = NewOrder {
            product_id: "AVNT-USD".into(),
            base_size: dec("100"),
            limit_price: dec("0.84"),
            ..NewOrder::default()
        };
        sandbox.create_order(new).unwrap()
    }

    #[test]
    fn an_order_goes_open_then_partly_filled_then_filled() {
        let sandbox = Sandbox::new(1);
        let id = place(&sandbox);
        assert_eq!(sandbox.wire_order(&id, None).unwrap().status, "OPEN");
        sandbox.fill(&id, Some(dec("40")), Some(dec("0.83")), None).unwrap();
        let partly = sandbox.wire_order(&id, None).unwrap();
        assert_eq!((partly.status.as_str(), partly.completion_percentage.as_deref()), ("OPEN", Some("40")));
        sandbox.fill(&id, None, Some(dec("0.8455")), None).unwrap();
        let filled = sandbox.wire_order(&id, None).unwrap();
        assert_eq!(filled.status, "FILLED");
        assert_eq!(filled.filled_size.as_deref(), Some("100"));
        assert_eq!(filled.average_filled_price.as_deref(), Some("0.8393"));
        assert_eq!(filled.number_of_fills.as_deref(), Some("2"));
        assert!(filled.last_fill_time.is_some() && filled.settled);
        assert!(sandbox.fill(&id, None, None, None).is_err(), "a filled order takes no more fills");
        assert!(sandbox.end(&id, "CANCELLED").is_err(), "a filled order cannot be cancelled");
    }

    #[test]
    fn a_cancel_keeps_the_partial_fill() {
        let sandbox = Sandbox::new(1);
        let id = place(&sandbox);
        sandbox.fill(&id, Some(dec("10")), None, None).unwrap();
        sandbox.end(&id, "CANCELLED").unwrap();
        let order = sandbox.wire_order(&id, None).unwrap().parse().unwrap();
        assert_eq!(order.status.as_str(), "CANCELLED");
        assert_eq!(order.filled_size, Some(dec("10")));
    }

    #[test]
    fn list_pages_follow_the_cursor_to_the_end() {
        let sandbox = Sandbox::new(1);
        let ids: Vec<String> = (0..25).map(|_| place(&sandbox)).collect();
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = sandbox.list(&ids, 10, &cursor, None).unwrap();
            seen.extend(page.orders.into_iter().map(|o| o.order_id));
            if !page.has_next {
                assert_eq!(page.cursor, "");
                break;
            }
            cursor = page.cursor;
        }
        seen.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn fault_draws_repeat_under_the_same_seed() {
        let draws = |seed| {
            let sandbox = Sandbox::new(seed);
            sandbox.set_faults(Faults { error_5xx_rate: 0.3, rate_limit_rate: 0.3, ..Faults::default() });
            (0..50).map(|_| sandbox.draw_fault().0).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        assert!(draws(7).iter().any(Option::is_some) && draws(7).iter().any(Option::is_none));
    }

    #[test]
    fn injected_429s_are_counted_with_and_without_retry_after_apart() {
        let sandbox = Sandbox::new(1);
        sandbox.set_faults(Faults { rate_limit_rate: 1.0, retry_after_seconds: 2, ..Faults::default() });
        sandbox.draw_fault();
        sandbox.draw_fault();
        sandbox.set_faults(Faults { rate_limit_rate: 1.0, ..Faults::default() });
        sandbox.draw_fault();
        let served = sandbox.served_faults();
        assert_eq!(served.get("rate_limited_injected_with_retry_after"), Some(&2));
        assert_eq!(served.get("rate_limited_injected_without_retry_after"), Some(&1));
    }
}
