//! The simulator over HTTP: Coinbase's REST paths and JSON, JWT verification (signature, expiry, `uri`
//! claim), its own rate limit with 429 and `Retry-After`, seeded fault injection, and a small control API
//! under `/sandbox/` for tests and the demo (unauthenticated: bind it to loopback).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::exchange::auth::{verify, PublicKey};
use crate::exchange::coinbase::{KEY_PERMISSIONS_PATH, LIST_FILLS_PATH, LIST_ORDERS_PATH, ORDERS_PATH};
use crate::exchange::limiter::Limiter;
use crate::exchange::types::{ErrorResponse, GetOrderResponse, KeyPermissions, ListFillsResponse};
use crate::sandbox::{Fault, Faults, NewOrder, Omit, Sandbox, SandboxError, DEFAULT_PAGE};

/// Where the simulator serves the user channel: `ws://<addr>/ws/user`.
pub const WS_PATH: &str = "/ws/user";

/// What the HTTP face needs: the simulator, the keys it accepts, and its rate limit, which like Coinbase's
/// counts each key's requests on its own.
#[derive(Clone)]
pub struct ServerState {
    pub sandbox: Sandbox,
    pub keys: Arc<HashMap<String, PublicKey>>,
    limiters: Arc<HashMap<String, Limiter>>,
}

impl ServerState {
    /// `rate_limit_per_second`: requests per second per key before 429 (Coinbase: about 30); `None` for no
    /// limit.
    pub fn new(sandbox: Sandbox, keys: HashMap<String, PublicKey>, rate_limit_per_second: Option<NonZeroU32>) -> Self {
        let limiters = match rate_limit_per_second {
            Some(rate) => keys.keys().map(|name| (name.clone(), Limiter::per_second(rate))).collect(),
            None => HashMap::new(),
        };
        ServerState { sandbox, keys: Arc::new(keys), limiters: Arc::new(limiters) }
    }
}

fn coinbase_error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = ErrorResponse { error: error.into(), error_details: message.into(), message: message.into() };
    (status, Json(body)).into_response()
}

/// Authenticate, rate-limit and draw a fault, as Coinbase's front door would (in that order). Gives the
/// fault and the name of the key that asked.
async fn admit(state: &ServerState, headers: &HeaderMap, path: &str) -> Result<(Option<Fault>, String), Response> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| coinbase_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "missing bearer token"))?;
    let uri = format!("GET {host}{path}");
    let key = match verify(token, &state.keys, Some(&uri), Utc::now().timestamp()) {
        Ok(claims) => claims.sub,
        Err(error) => return Err(coinbase_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", &error.to_string())),
    };
    let user_agent = headers.get(header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or_default();
    state.sandbox.note_request(&key, user_agent, path);
    if let Some(limiter) = state.limiters.get(&key) {
        if let Err(wait) = limiter.try_acquire() {
            state.sandbox.count_fault("rate_limited");
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(rate_limited(seconds));
        }
    }
    let (fault, delay) = state.sandbox.draw_fault();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(Fault::ServerError) => {
            Err(coinbase_error(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL", "injected server error"))
        }
        Some(Fault::RateLimited) => Err(rate_limited(state.sandbox.faults().retry_after_seconds)),
        other => Ok((other, key)),
    }
}

fn rate_limited(retry_after_seconds: u64) -> Response {
    let mut response = coinbase_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED", "Too many requests");
    if retry_after_seconds > 0 {
        if let Ok(value) = HeaderValue::from_str(&retry_after_seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// Serve `value` as JSON, bent by the fault drawn for this request.
fn answer<T: Serialize>(value: &T, fault: Option<Fault>) -> Response {
    let mut json = match serde_json::to_value(value) {
        Ok(json) => json,
        Err(error) => return coinbase_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", &error.to_string()),
    };
    if fault == Some(Fault::UnknownStatus) {
        for order in json.get_mut("orders").and_then(|o| o.as_array_mut()).into_iter().flatten() {
            order["status"] = "SETTLING_V2".into();
        }
        if let Some(order) = json.get_mut("order") {
            order["status"] = "SETTLING_V2".into();
        }
    }
    let text = json.to_string();
    let body = match fault {
        Some(Fault::Malformed) => "<html><body>502 Bad Gateway</body></html>".to_string(),
        Some(Fault::Truncated) => text[..text.len() / 2].to_string(),
        _ => text,
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn list_orders(State(state): State<ServerState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let (fault, key) = match admit(&state, &headers, LIST_ORDERS_PATH).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let mut ids = Vec::new();
    let mut limit = DEFAULT_PAGE;
    let mut cursor = String::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "order_ids" => ids.push(value.into_owned()),
            "limit" => match value.parse() {
                Ok(parsed) => limit = parsed,
                Err(_) => return coinbase_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "limit must be a number"),
            },
            "cursor" => cursor = value.into_owned(),
            _ => {}
        }
    }
    let page_size = state.sandbox.faults().page_size;
    if page_size > 0 {
        limit = limit.min(page_size);
    }
    match state.sandbox.list(&ids, limit, &cursor, Some(&key)) {
        Ok(mut page) => {
            page.orders.retain(|_| !state.sandbox.draw_not_found());
            answer(&page, fault)
        }
        Err(error) => coinbase_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &error.to_string()),
    }
}

async fn get_order(State(state): State<ServerState>, headers: HeaderMap, Path(order_id): Path<String>) -> Response {
    let (fault, key) = match admit(&state, &headers, &format!("{ORDERS_PATH}/{order_id}")).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if !crate::sandbox::is_order_id(&order_id) {
        return coinbase_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "order_id is not a valid UUID");
    }
    match state.sandbox.wire_order(&order_id, Some(&key)).filter(|_| !state.sandbox.draw_not_found()) {
        Some(order) => answer(&GetOrderResponse { order }, fault),
        None => coinbase_error(StatusCode::NOT_FOUND, "NOT_FOUND", "order with this orderID was not found"),
    }
}

async fn list_fills(State(state): State<ServerState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let (fault, key) = match admit(&state, &headers, LIST_FILLS_PATH).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let ids: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(name, _)| name == "order_ids")
        .map(|(_, value)| value.into_owned())
        .collect();
    answer(&ListFillsResponse { fills: state.sandbox.fills(&ids, Some(&key)), cursor: String::new() }, fault)
}

async fn key_permissions(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    let (fault, _) = match admit(&state, &headers, KEY_PERMISSIONS_PATH).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let permissions = KeyPermissions {
        can_view: true,
        can_trade: true,
        can_transfer: false,
        portfolio_uuid: "sandbox-portfolio".into(),
        portfolio_type: "DEFAULT".into(),
    };
    answer(&permissions, fault)
}

fn control_error(error: SandboxError) -> Response {
    let status = match error {
        SandboxError::NoSuchOrder(_) => StatusCode::NOT_FOUND,
        SandboxError::Terminal { .. } => StatusCode::CONFLICT,
        SandboxError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(serde_json::json!({"error": error.to_string()}))).into_response()
}

async fn create_order(State(state): State<ServerState>, Json(new): Json<NewOrder>) -> Response {
    match state.sandbox.create_order(new) {
        Ok(order_id) => (StatusCode::CREATED, Json(serde_json::json!({"order_id": order_id}))).into_response(),
        Err(error) => control_error(error),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FillRequest {
    size: Option<Decimal>,
    price: Option<Decimal>,
    time: Option<DateTime<Utc>>,
}

async fn fill_order(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    body: Option<Json<FillRequest>>,
) -> Response {
    let request = body.map(|Json(r)| r).unwrap_or_default();
    match state.sandbox.fill(&id, request.size, request.price, request.time) {
        Ok(()) => Json(state.sandbox.wire_order(&id, None)).into_response(),
        Err(error) => control_error(error),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndRequest {
    status: String,
}

async fn end_order(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Json(request): Json<EndRequest>,
) -> Response {
    match state.sandbox.end(&id, &request.status) {
        Ok(()) => Json(state.sandbox.wire_order(&id, None)).into_response(),
        Err(error) => control_error(error),
    }
}

/// `{"average_filled_price": true, "last_fill_time": true, "fills": true}`: leave those out of the order's
/// answers from now on.
async fn omit_figures(State(state): State<ServerState>, Path(id): Path<String>, Json(omit): Json<Omit>) -> Response {
    match state.sandbox.omit(&id, omit) {
        Ok(()) => Json(state.sandbox.wire_order(&id, None)).into_response(),
        Err(error) => control_error(error),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceRequest {
    seconds: u64,
}

async fn advance_clock(State(state): State<ServerState>, Json(request): Json<AdvanceRequest>) -> Response {
    state.sandbox.advance(std::time::Duration::from_secs(request.seconds));
    Json(serde_json::json!({"now": state.sandbox.now()})).into_response()
}

async fn put_faults(State(state): State<ServerState>, Json(faults): Json<Faults>) -> Response {
    state.sandbox.set_faults(faults);
    Json(state.sandbox.faults()).into_response()
}

/// Every authenticated request since recording began (`ordersync sandbox` records from the start): time,
/// key name, User-Agent, path.
async fn requests_received(State(state): State<ServerState>) -> Response {
    Json(state.sandbox.received()).into_response()
}

/// Every order as it stands, without faults: the ground truth.
async fn all_orders(State(state): State<ServerState>) -> Response {
    Json(state.sandbox.all_orders()).into_response()
}

async fn get_faults(State(state): State<ServerState>) -> Response {
    Json(state.sandbox.faults()).into_response()
}

/// How many of each fault the simulator has served.
async fn served_faults(State(state): State<ServerState>) -> Response {
    Json(state.sandbox.served_faults()).into_response()
}

async fn ws_disconnect(State(state): State<ServerState>) -> Response {
    state.sandbox.count_fault("ws_disconnect");
    state.sandbox.disconnect_websockets();
    StatusCode::NO_CONTENT.into_response()
}

async fn ws_stall(State(state): State<ServerState>, Json(request): Json<AdvanceRequest>) -> Response {
    state.sandbox.count_fault("ws_stall");
    state.sandbox.stall_websockets(std::time::Duration::from_secs(request.seconds));
    StatusCode::NO_CONTENT.into_response()
}

async fn not_found() -> Response {
    coinbase_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
}

/// The simulator's routes.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route(LIST_ORDERS_PATH, get(list_orders))
        .route(LIST_FILLS_PATH, get(list_fills))
        .route(KEY_PERMISSIONS_PATH, get(key_permissions))
        .route(&format!("{ORDERS_PATH}/{{order_id}}"), get(get_order))
        .route("/sandbox/orders", post(create_order).get(all_orders))
        .route("/sandbox/orders/{id}/fill", post(fill_order))
        .route("/sandbox/orders/{id}/end", post(end_order))
        .route("/sandbox/orders/{id}/omit", post(omit_figures))
        .route("/sandbox/clock/advance", post(advance_clock))
        .route("/sandbox/faults", get(get_faults).put(put_faults))
        .route("/sandbox/faults/served", get(served_faults))
        .route("/sandbox/requests", get(requests_received))
        .route("/sandbox/ws/disconnect", post(ws_disconnect))
        .route("/sandbox/ws/stall", post(ws_stall))
        .route(WS_PATH, get(crate::sandbox::ws::upgrade))
        .fallback(not_found)
        .with_state(state)
}

/// Serve until `token` is cancelled.
///
/// # Errors
/// When the listener fails.
pub async fn serve(listener: TcpListener, state: ServerState, token: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(token.cancelled_owned()).await
}

/// Bind `addr` and serve in the background; returns the bound address.
///
/// # Errors
/// When the address cannot be bound.
pub async fn spawn(addr: &str, state: ServerState, token: CancellationToken) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = serve(listener, state, token).await {
            tracing::error!(%error, "simulator server failed");
        }
    });
    Ok(bound)
}
