//! The HTTP surface: `GET /metrics` (never waits on the database or the exchange), `/healthz`, `/readyz`,
//! and the diagnostics API under `/api/v1/` (sync status, reconcile one order), optionally behind a
//! bearer token. Unknown paths 404, wrong methods 405, every error is JSON with a message.
//!
//! Deliberately not here: SQL, Coinbase JSON, decisions. Handlers call `Store`, `Reconciler`, `Metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::parse_duration;
use crate::db::{ConflictKind, Store};
use crate::decide::PendingKind;
use crate::metrics::{ExchangeHealth, Metrics};
use crate::order::OrderId;
use crate::reconcile::{Mode, ReconcileError, Reconciler};

pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long a readiness or API request may wait on the database.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Metrics,
    pub reconciler: Reconciler,
    pub api_token: Option<Arc<SecretString>>,
}

/// `/readyz` fails when the exchange has not answered for this long: three poll intervals, at least 2 min.
pub fn exchange_stale_after(poll_interval: Duration) -> Duration {
    (poll_interval * 3).max(Duration::from_secs(120))
}

/// An error answered as JSON. 4xx say why; 5xx log the cause and answer generically.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    MethodNotAllowed,
    Unavailable(String),
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, "bad_request", message),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <ORDERSYNC_API_TOKEN>".to_string(),
            ),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method".to_string(),
            ),
            ApiError::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the ordersync log".to_string())
            }
        };
        (status, Json(ErrorBody { error, message })).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], state.metrics.encode()).into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    checks: Vec<ReadyCheck>,
}

#[derive(Serialize)]
struct ReadyCheck {
    name: &'static str,
    ok: bool,
    message: String,
}

/// Whether `account`'s exchange counts as ready, and why.
fn exchange_readiness(state: &AppState, account: &str) -> (bool, String) {
    let ownership = state.reconciler.accounts().ownership();
    if !ownership.owns(account) {
        return (true, "served by another replica (this one does not call Coinbase for it)".to_string());
    }
    let bound = exchange_stale_after(state.reconciler.settings().poll_interval);
    match state.metrics.exchange_health(account, bound) {
        ExchangeHealth::NotContacted => (true, "not contacted yet".to_string()),
        ExchangeHealth::NeverAnswered => {
            (false, "no authenticated answer from the exchange yet: every request so far failed".to_string())
        }
        ExchangeHealth::Rejected(why) => {
            (false, format!("the exchange rejected the credentials ({why}): check the API key name and private key"))
        }
        ExchangeHealth::Answered(since) if since <= bound => {
            (true, format!("last authenticated answer {}s ago", since.as_secs()))
        }
        ExchangeHealth::Answered(since) => {
            (false, format!("no answer for {}s (bound {}s)", since.as_secs(), bound.as_secs()))
        }
        ExchangeHealth::RestFailing(failing) => (
            false,
            format!(
                "every REST request has failed for {}s (the user channel still answers; bound {}s)",
                failing.as_secs(),
                bound.as_secs()
            ),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = Vec::new();
    let database = tokio::time::timeout(DB_TIMEOUT, state.store.ping()).await;
    let database_ok = matches!(database, Ok(Ok(())));
    checks.push(ReadyCheck {
        name: "database",
        ok: database_ok,
        message: match database {
            Ok(Ok(())) => "reachable".into(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {DB_TIMEOUT:?}"),
        },
    });
    let migrations = if database_ok {
        tokio::time::timeout(DB_TIMEOUT, state.store.migrations_current()).await.ok().and_then(Result::ok)
    } else {
        None
    };
    checks.push(ReadyCheck {
        name: "migrations",
        ok: migrations == Some(true),
        message: match migrations {
            Some(true) => "applied".into(),
            Some(false) => "not applied: run ordersync migrate".into(),
            None => "unknown: the database is not reachable".into(),
        },
    });
    // Each account's key on its own: one refused key or one silent account makes the replica not ready.
    let names: Vec<String> = state.reconciler.accounts().map().names().to_vec();
    let multi = names.len() > 1;
    for account in &names {
        let (exchange_ok, message) = exchange_readiness(&state, account);
        let message = if multi { format!("account {account}: {message}") } else { message };
        checks.push(ReadyCheck { name: "exchange", ok: exchange_ok, message });
    }
    let ready = checks.iter().all(|check| check.ok);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, checks })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncStatusQuery {
    bot: Option<String>,
    /// A duration such as `5m`.
    min_age: Option<String>,
}

#[derive(Serialize)]
struct SyncStatusRow {
    order_id: String,
    bot_id: Option<String>,
    product_id: Option<String>,
    db_status: String,
    /// `null` when the creation time cannot be read; `created_raw` then holds it as stored.
    created_at: Option<chrono::DateTime<Utc>>,
    created_raw: Option<String>,
    age_seconds: Option<i64>,
    last_exchange_status: Option<String>,
    /// The last check that changed something (a check that finds what the previous one found writes
    /// nothing).
    last_changed_at: Option<chrono::DateTime<Utc>>,
    /// An unresolved order's backoff: not asked about before then (`null`: at the next pass).
    next_check_at: Option<chrono::DateTime<Utc>>,
    verdict: String,
    /// Checks that changed something (a check that finds what the last one found is not written).
    checks: i64,
    flagged: bool,
    last_error: Option<String>,
    /// `resting` (live on the exchange: the bot waiting on purpose) or `blocking` (ended, no certain answer,
    /// or never checked).
    kind: &'static str,
}

async fn sync_status(
    State(state): State<AppState>,
    query: Result<Query<SyncStatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    // A bad query string is a JSON error like every other, not axum's plain text.
    let Query(query) = query.map_err(|rejection| {
        ApiError::BadRequest(format!("{}; the query takes bot and min_age (e.g. 5m)", rejection.body_text()))
    })?;
    let min_age = match query.min_age.as_deref() {
        Some(text) => {
            parse_duration(text).map_err(|e| ApiError::BadRequest(format!("min_age {text:?}: expected {e}")))?
        }
        None => Duration::ZERO,
    };
    let rows = tokio::time::timeout(DB_TIMEOUT * 5, state.store.pending_orders())
        .await
        .map_err(|_| ApiError::Unavailable("the database did not answer in time".into()))?
        .map_err(|e| ApiError::Unavailable(format!("the database is not reachable: {e}")))?;
    let now = Utc::now();
    let min_age = chrono::Duration::from_std(min_age).unwrap_or_default();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|row| query.bot.as_deref().is_none_or(|bot| row.bot_id.as_deref() == Some(bot)))
        // A row whose age cannot be read is as old as any.
        .filter(|row| row.age(now).is_none_or(|age| age >= min_age))
        .collect();
    let ids: Vec<OrderId> = rows.iter().map(|row| row.order_id.clone()).collect();
    let states = state.store.check_states(&ids).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let orders: Vec<SyncStatusRow> = rows
        .into_iter()
        .map(|row| {
            let check = states.get(&row.order_id);
            SyncStatusRow {
                order_id: row.order_id.to_string(),
                age_seconds: row.age(now).map(|age| age.num_seconds()),
                created_raw: row.created_raw.clone(),
                bot_id: row.bot_id,
                product_id: row.product_id,
                db_status: row.status,
                created_at: row.created_at,
                last_exchange_status: check.and_then(|c| c.last_exchange_status.clone()),
                last_changed_at: check.and_then(|c| c.last_checked_at),
                next_check_at: check.and_then(|c| c.next_check_at),
                verdict: check.map_or_else(|| "not_checked".to_string(), |c| c.last_verdict.clone()),
                checks: check.map_or(0, |c| c.checks),
                flagged: check.is_some_and(|c| c.flagged),
                last_error: check.and_then(|c| c.last_error.clone()),
                kind: match PendingKind::of(check.and_then(|c| c.last_exchange_status.as_deref())) {
                    PendingKind::Resting => "resting",
                    PendingKind::Blocking => "blocking",
                },
            }
        })
        .collect();
    // Terminal rows the exchange ended otherwise (a position the bot does not know about), and rows naming
    // another product than the exchange's order.
    let (conflicts, product_conflicts): (Vec<_>, Vec<_>) = state
        .store
        .conflicts()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .into_iter()
        .filter(|c| query.bot.as_deref().is_none_or(|bot| c.bot_id.as_deref() == Some(bot)))
        .partition(|c| c.kind == ConflictKind::Position);
    let settings = state.reconciler.settings();
    Ok(Json(serde_json::json!({
        "generated_at": now,
        "count": orders.len(),
        "orders": orders,
        "terminal_conflicts": conflicts,
        "product_conflicts": product_conflicts,
        "observe_only": settings.observe_only,
        "correction_brake": {
            "engaged": state.reconciler.brake_held().is_some(),
            "held": state.reconciler.brake_held(),
            "max_corrections_per_pass": settings.brake.max_corrections,
            "max_correction_share": settings.brake.max_share,
            "release": "ordersync reconcile --once --allow-mass-correction, or raise max_corrections_per_pass",
        },
    }))
    .into_response())
}

async fn reconcile_order(State(state): State<AppState>, Path(order_id): Path<String>) -> Result<Response, ApiError> {
    if order_id.len() > 128 {
        // Refused without echoing it: it could be anything.
        return Err(ApiError::BadRequest(format!("an order id of {} characters is not an order id", order_id.len())));
    }
    let order_id = OrderId::parse(&order_id).map_err(ApiError::BadRequest)?;
    match state.reconciler.reconcile_one(&order_id, Mode::Apply).await {
        Ok(checked) => Ok(Json(checked).into_response()),
        Err(ReconcileError::Elsewhere { order_id, account }) => {
            let owner =
                state.store.leases().await.ok().and_then(|leases| {
                    leases.into_iter().find(|l| l.account == account && l.held).and_then(|l| l.owner)
                });
            Err(ApiError::Unavailable(match owner {
                Some(owner) => format!("order {order_id} belongs to account {account}, which replica {owner} serves: ask that one"),
                None => format!("order {order_id} belongs to account {account}, which no replica serves right now: try again shortly"),
            }))
        }
        Err(ReconcileError::UnknownOrder(id)) => {
            Err(ApiError::NotFound(format!("order {id} is not in the bot's table")))
        }
        Err(ReconcileError::Store(error)) => {
            Err(ApiError::Unavailable(format!("the database is not reachable: {error}")))
        }
    }
}

/// The header a request that changes something must carry when no token is configured: a browser cannot
/// send it cross-site without a CORS preflight, which ordersync never grants.
pub const CSRF_HEADER: &str = "x-ordersync-request";

async fn require_token(State(state): State<AppState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    if state.api_token.is_none() && request.method() != axum::http::Method::GET && !headers.contains_key(CSRF_HEADER) {
        return ApiError::BadRequest(format!(
            "a request that changes something needs the header {CSRF_HEADER}: 1 (or the API token): it keeps \
             other web pages from sending it through a browser on this machine"
        ))
        .into_response();
    }
    if let Some(expected) = &state.api_token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
        let matches =
            given.is_some_and(|given| constant_time_eq(given.as_bytes(), expected.expose_secret().as_bytes()));
        if !matches {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such path; try /metrics, /healthz, /readyz or /api/v1/trades/sync-status".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/trades/sync-status", get(sync_status))
        .route("/api/v1/orders/{order_id}/reconcile", post(reconcile_order))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
