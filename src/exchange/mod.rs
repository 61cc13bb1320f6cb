//! The exchange seam: `trait Exchange`, its typed errors, and the Coinbase implementation. Everything the
//! rest of ordersync knows about an order on the exchange comes through `Exchange` as `ExchangeOrder`.
//!
//! Deliberately not here: what an answer means for the bot's row (that is `decide.rs`). Only this module
//! (and the simulator, which reuses `types`) knows Coinbase JSON.

pub mod auth;
pub mod coinbase;
pub mod limiter;
pub mod types;
pub mod ws;

use std::time::Duration;

use async_trait::async_trait;

use crate::order::OrderId;

pub use types::{ExchangeFill, ExchangeOrder, ExchangeStatus};

/// Why the exchange gave no usable answer. The reconciler branches on these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("order not found on the exchange")]
    NotFound,
    #[error("the exchange refused the credentials: {0}")]
    Unauthorized(String),
    #[error("rate limited by the exchange")]
    RateLimited { retry_after: Option<Duration> },
    #[error("transient exchange error: {0}")]
    Transient(String),
    #[error("malformed answer from the exchange: {0}")]
    Malformed(String),
    #[error("the exchange rejected the request: {0}")]
    Rejected(String),
    /// Never sent: the account's lease is another replica's (or ran out), so this one does not ask.
    #[error("not asked: {0}")]
    NotOwner(String),
}

impl ExchangeError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ExchangeError::NotFound => "not_found",
            ExchangeError::Unauthorized(_) => "unauthorized",
            ExchangeError::RateLimited { .. } => "rate_limited",
            ExchangeError::Transient(_) => "transient",
            ExchangeError::Malformed(_) => "malformed",
            ExchangeError::Rejected(_) => "rejected",
            ExchangeError::NotOwner(_) => "not_owner",
        }
    }
}

/// The orders a batch lookup returned. Ids asked for and absent from both lists were not returned at
/// all, which proves nothing: confirm them one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub orders: Vec<ExchangeOrder>,
    /// Orders whose fields could not be read: `(order id as sent, why)`.
    pub malformed: Vec<(String, String)>,
}

/// Where ordersync asks about orders. Implemented by the Coinbase client and by the in-process simulator.
#[async_trait]
pub trait Exchange: Send + Sync {
    /// Look up many orders at once (List Orders filtered by order ids, every page).
    async fn orders(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError>;

    /// Look up one order (Get Order). `NotFound` only on a clear 404.
    async fn order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError>;

    /// The fills of these orders (List Fills), to complete a FILLED order whose answer lacks its fill time,
    /// average price or size.
    async fn fills(&self, ids: &[OrderId]) -> Result<Vec<ExchangeFill>, ExchangeError> {
        let _ = ids;
        Err(ExchangeError::Rejected("this exchange does not list fills".into()))
    }

    /// Wait until a request could be sent under the rate limit now (taking no turn). A caller that gathers
    /// work over time (the due checks) waits here first and gathers after, so the wait does not age what it
    /// gathers. No-op where there is no limit.
    async fn ready(&self) {}

    /// The cheapest authenticated call (Get API Key Permissions): proves the key still works when there is
    /// nothing else to ask.
    async fn key_permissions(&self) -> Result<(), ExchangeError> {
        Err(ExchangeError::Rejected("this exchange has no key permissions call".into()))
    }
}
