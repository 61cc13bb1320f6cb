//! The Coinbase Advanced Trade client (`impl Exchange`): a JWT per request, List Orders by many order ids
//! following the cursor, Get Order for one, typed errors, retries with exponential backoff and jitter that
//! honour `Retry-After`, a timeout on everything, the shared rate limiter, and every request counted.
//!
//! Deliberately not here: deciding what an answer means (`decide.rs`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use rand::Rng;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::exchange::auth::CdpKey;
use crate::exchange::limiter::Limiter;
use crate::exchange::types::{GetOrderResponse, KeyPermissions, ListFillsResponse, ListOrdersPage};
use crate::exchange::{Batch, Exchange, ExchangeError, ExchangeFill, ExchangeOrder};
use crate::metrics::Metrics;
use crate::order::OrderId;

pub const ORDERS_PATH: &str = "/api/v3/brokerage/orders/historical";
pub const LIST_ORDERS_PATH: &str = "/api/v3/brokerage/orders/historical/batch";
pub const LIST_FILLS_PATH: &str = "/api/v3/brokerage/orders/historical/fills";
pub const KEY_PERMISSIONS_PATH: &str = "/api/v3/brokerage/key_permissions";

/// The longest `Retry-After` obeyed: a longer one is waited for this long, then the request is retried (or
/// the pass goes on without it).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// How hard to try before giving up on a request.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt, for transient errors and 429s.
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Per attempt, connect to last byte.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a random wait up to `base * 2^attempt`, capped; never shorter than the server's hint.
    fn backoff(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let ceiling = self.base_backoff.saturating_mul(2u32.saturating_pow(attempt)).min(self.max_backoff);
        let jittered = ceiling.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        match hint {
            Some(hint) => hint.min(RETRY_AFTER_CAP) + jittered / 10,
            None => jittered,
        }
    }
}

/// The real Coinbase client.
#[derive(Clone)]
pub struct CoinbaseClient {
    http: reqwest::Client,
    base: Url,
    /// `host[:port]` as it goes into the JWT `uri` claim.
    uri_host: String,
    key: CdpKey,
    limiter: Limiter,
    retry: RetryPolicy,
    metrics: Metrics,
    /// The account the key is, for the `account` label.
    account: String,
    /// Replicas: a request is sent only while this replica holds the account's lease, and its User-Agent
    /// names the replica and the epoch.
    ownership: Option<Arc<crate::replica::Ownership>>,
}

impl std::fmt::Debug for CoinbaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoinbaseClient").field("base", &self.base.as_str()).field("key", &self.key).finish()
    }
}

impl CoinbaseClient {
    /// # Errors
    /// `Rejected` when `api_url` is not an http(s) URL with a host.
    pub fn new(api_url: &str, key: CdpKey, rate_limit: NonZeroU32, metrics: Metrics) -> Result<Self, ExchangeError> {
        let base = Url::parse(api_url).map_err(|e| ExchangeError::Rejected(format!("bad API URL {api_url:?}: {e}")))?;
        let host =
            base.host_str().ok_or_else(|| ExchangeError::Rejected(format!("API URL {api_url:?} has no host")))?;
        let uri_host = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("ordersync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ExchangeError::Rejected(format!("cannot build the HTTP client: {e}")))?;
        Ok(CoinbaseClient {
            http,
            base,
            uri_host,
            key,
            limiter: Limiter::per_second(rate_limit),
            retry: RetryPolicy::default(),
            metrics,
            account: crate::account::DEFAULT_ACCOUNT.to_string(),
            ownership: None,
        })
    }

    /// Ask only while `ownership` holds this client's account (replicas share the accounts).
    pub fn with_ownership(mut self, ownership: Arc<crate::replica::Ownership>) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// The account this client's key is (`default` unless set): its requests are counted under it.
    pub fn with_account(mut self, account: &str) -> Self {
        self.account = account.to_string();
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Share a limiter with other clients (several keys of one user, say).
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// GET `path` with `query`, retrying what may succeed later.
    async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ExchangeError> {
        let mut url = self.base.clone();
        url.set_path(path);
        {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        if query.is_empty() {
            url.set_query(None);
        }
        let uri = format!("GET {}{}", self.uri_host, path);
        let mut attempt = 0;
        loop {
            self.limiter.acquire().await;
            let mut request = self.http.get(url.clone());
            if let Some(ownership) = &self.ownership {
                // Checked at the last moment: a lease lost while waiting for the limiter stops the request.
                let Some(epoch) = ownership.epoch(&self.account) else {
                    return Err(ExchangeError::NotOwner(format!(
                        "account {} is not this replica's (its lease is another's, or ran out)",
                        self.account
                    )));
                };
                let agent = format!(
                    "ordersync/{} (replica {}; account {}; epoch {epoch})",
                    env!("CARGO_PKG_VERSION"),
                    ownership.replica(),
                    self.account
                );
                request = request.header(reqwest::header::USER_AGENT, agent);
            }
            let token = self.key.jwt(Some(&uri), Utc::now().timestamp());
            let started = Instant::now();
            let sent = request.bearer_auth(token).timeout(self.retry.timeout).send().await;
            let result = match sent {
                Ok(response) => read(response).await,
                Err(error) if error.is_timeout() => {
                    Err(ExchangeError::Transient(format!("timed out after {:?}", self.retry.timeout)))
                }
                Err(error) => Err(ExchangeError::Transient(format!("request failed: {}", without_url(&error)))),
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => error.label(),
            };
            // Any answer but a transient failure or a refused key proves the key works and Coinbase is up.
            let answered = !matches!(result, Err(ExchangeError::Transient(_) | ExchangeError::Unauthorized(_)));
            let rejected = match &result {
                Err(ExchangeError::Unauthorized(why)) => Some(why.as_str()),
                _ => None,
            };
            self.metrics.exchange_request(&self.account, endpoint, outcome, started.elapsed(), answered, rejected);
            if let Err(ExchangeError::Malformed(why)) = &result {
                // Counted above; the orders it was about stay as they were and are asked again.
                tracing::warn!(endpoint, %why, "the exchange's answer could not be read; nothing was written from it");
            }
            let hint = match &result {
                Err(ExchangeError::RateLimited { retry_after }) => *retry_after,
                Err(ExchangeError::Transient(_)) => None,
                _ => return result,
            };
            if attempt >= self.retry.max_retries {
                return result;
            }
            let pause = self.retry.backoff(attempt, hint);
            tracing::debug!(
                endpoint,
                attempt,
                pause_ms = pause.as_millis() as u64,
                outcome,
                "retrying exchange request"
            );
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }
}

/// reqwest's message with its causes (connection refused, a DNS failure, a TLS error) and the host it was
/// sent to, without the whole URL (which would repeat every order id).
fn without_url(error: &reqwest::Error) -> String {
    let strip = |text: String| match error.url() {
        Some(url) => text.replace(&format!(" ({url})"), "").replace(url.as_str(), "<url>"),
        None => text,
    };
    let mut text = strip(error.to_string());
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        let said = strip(inner.to_string());
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = inner.source();
    }
    if let Some(url) = error.url() {
        let port = url.port().map(|port| format!(":{port}")).unwrap_or_default();
        text = format!("{text} (to {}://{}{port})", url.scheme(), url.host_str().unwrap_or(""));
    }
    text
}

/// Turn a response into a value or a typed error. The HTTP status decides, not the body's `error` word.
async fn read<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ExchangeError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64);
    let body = response
        .bytes()
        .await
        .map_err(|error| ExchangeError::Transient(format!("reading the body failed: {}", without_url(&error))))?;
    let snippet = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    match status {
        StatusCode::OK => serde_json::from_slice(&body)
            .map_err(|error| ExchangeError::Malformed(format!("{error} in a {}-byte body", body.len()))),
        StatusCode::NOT_FOUND => Err(ExchangeError::NotFound),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(ExchangeError::Unauthorized(format!("HTTP {}: {}", status.as_u16(), snippet())))
        }
        StatusCode::TOO_MANY_REQUESTS => Err(ExchangeError::RateLimited { retry_after }),
        status if status.is_server_error() => Err(ExchangeError::Transient(format!("HTTP {}", status.as_u16()))),
        status => Err(ExchangeError::Rejected(format!("HTTP {}: {}", status.as_u16(), snippet()))),
    }
}

#[async_trait]
impl Exchange for CoinbaseClient {
    async fn orders(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        let mut batch = Batch::default();
        // As many ids per request as fit a safe URL: the request count is what the rate limit bounds.
        for group in url_groups(ids) {
            let found = self.orders_in_one_url(group).await?;
            batch.orders.extend(found.orders);
            batch.malformed.extend(found.malformed);
        }
        Ok(batch)
    }

    async fn order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        self.one_order(id).await
    }

    async fn fills(&self, ids: &[OrderId]) -> Result<Vec<ExchangeFill>, ExchangeError> {
        let mut fills = Vec::new();
        for group in url_groups(ids) {
            fills.extend(self.fills_in_one_url(group).await?);
        }
        Ok(fills)
    }

    async fn ready(&self) {
        self.limiter.ready().await;
    }

    async fn key_permissions(&self) -> Result<(), ExchangeError> {
        let _: KeyPermissions = self.get("key_permissions", KEY_PERMISSIONS_PATH, &[]).await?;
        Ok(())
    }
}

/// The most URL ordersync sends (path and query): well under the 8 KB that servers and proxies commonly
/// accept, and Coinbase's documentation names no other bound.
pub const MAX_URL_BYTES: usize = 8000;

/// Split `ids` into groups whose `order_ids=…&` query fits `MAX_URL_BYTES` (with room for the path, `limit`
/// and a cursor of up to 200 bytes): 164 UUIDs per request.
pub fn url_groups(ids: &[OrderId]) -> Vec<&[OrderId]> {
    const FIXED: usize = 290;
    let mut groups = Vec::new();
    let (mut start, mut length) = (0, FIXED);
    for (i, id) in ids.iter().enumerate() {
        let more = "order_ids=".len() + id.as_str().len() + 1;
        if length + more > MAX_URL_BYTES && i > start {
            groups.push(&ids[start..i]);
            (start, length) = (i, FIXED);
        }
        length += more;
    }
    if start < ids.len() {
        groups.push(&ids[start..]);
    }
    groups
}

impl CoinbaseClient {
    /// One List Orders request (and its further pages) for ids that fit one URL.
    async fn orders_in_one_url(&self, ids: &[OrderId]) -> Result<Batch, ExchangeError> {
        let mut batch = Batch::default();
        if ids.is_empty() {
            return Ok(batch);
        }
        let limit = ids.len().min(1000).to_string();
        let mut cursor = String::new();
        // A cursor that never ends is the server's bug; stop rather than loop forever.
        for _page in 0..=ids.len() {
            let mut query: Vec<(&str, &str)> = ids.iter().map(|id| ("order_ids", id.as_str())).collect();
            query.push(("limit", &limit));
            if !cursor.is_empty() {
                query.push(("cursor", &cursor));
            }
            // Each order is read on its own: one the client cannot read is that order's trouble, not the page's.
            let mut page: ListOrdersPage = self.get("list_orders", LIST_ORDERS_PATH, &query).await?;
            let (has_next, next_cursor) = (page.has_next, std::mem::take(&mut page.cursor));
            let (read, malformed) = page.read();
            batch.orders.extend(read);
            for (order_id, why) in malformed {
                tracing::warn!(%order_id, %why, "malformed order in a List Orders answer");
                batch.malformed.push((order_id, why));
            }
            if !has_next || next_cursor.is_empty() {
                return Ok(batch);
            }
            cursor = next_cursor;
        }
        Err(ExchangeError::Malformed("List Orders kept answering has_next past every order asked for".into()))
    }

    async fn one_order(&self, id: &OrderId) -> Result<ExchangeOrder, ExchangeError> {
        // Only a UUID goes into the path: never `..`, `batch` or `fills`, which would ask another endpoint.
        if !id.is_exchange_id() {
            return Err(ExchangeError::Rejected(format!("{:?} is not a Coinbase order id (a UUID)", id.as_str())));
        }
        let path = format!("{ORDERS_PATH}/{id}");
        let response: GetOrderResponse = self.get("get_order", &path, &[]).await?;
        let order = response.order.parse().map_err(ExchangeError::Malformed)?;
        if &order.order_id != id {
            return Err(ExchangeError::Malformed(format!("asked for order {id}, got {}", order.order_id)));
        }
        Ok(order)
    }

    async fn fills_in_one_url(&self, ids: &[OrderId]) -> Result<Vec<ExchangeFill>, ExchangeError> {
        let mut fills = Vec::new();
        if ids.is_empty() {
            return Ok(fills);
        }
        let mut cursor = String::new();
        // As for List Orders: a cursor that never ends is the server's bug.
        for _page in 0..100 {
            let mut query: Vec<(&str, &str)> = ids.iter().map(|id| ("order_ids", id.as_str())).collect();
            if !cursor.is_empty() {
                query.push(("cursor", &cursor));
            }
            let page: ListFillsResponse = self.get("list_fills", LIST_FILLS_PATH, &query).await?;
            for wire in &page.fills {
                fills.push(wire.parse().map_err(|why| ExchangeError::Malformed(format!("a fill: {why}")))?);
            }
            if page.cursor.is_empty() {
                return Ok(fills);
            }
            cursor = page.cursor;
        }
        Err(ExchangeError::Malformed("List Fills kept answering with a cursor".into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn list_orders_urls_carry_as_many_ids_as_fit_8_kb() {
        let ids: Vec<OrderId> =
            (0..10_000).map(|_| OrderId::parse(&uuid::Uuid::new_v4().to_string()).unwrap()).collect();
        let groups = url_groups(&ids);
        assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), ids.len(), "every id, once");
        for group in &groups {
            let query: String = group.iter().map(|id| format!("order_ids={id}&")).collect();
            let cursor = "c".repeat(200);
            let url = format!("https://api.coinbase.com{LIST_ORDERS_PATH}?{query}limit=1000&cursor={cursor}");
            assert!(url.len() <= MAX_URL_BYTES, "{}", url.len());
        }
        assert_eq!(groups[0].len(), 164);
        assert_eq!(groups.len(), 61, "10,000 / 164");
        assert!(url_groups(&[]).is_empty());
    }

    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_the_hint() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        assert!(policy.backoff(0, None) <= Duration::from_millis(100));
        assert!(policy.backoff(10, None) <= Duration::from_secs(1));
        assert!(policy.backoff(10, None) >= Duration::from_millis(500));
        assert!(policy.backoff(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        let capped = policy.backoff(0, Some(Duration::from_secs(3600)));
        assert!(capped >= RETRY_AFTER_CAP && capped < RETRY_AFTER_CAP + Duration::from_secs(1), "{capped:?}");
    }

    /// An exchange that cannot be reached says why and where: the cause (connection refused) and the host,
    /// not the whole URL with its order ids.
    #[tokio::test]
    async fn a_transport_failure_names_its_cause_and_the_host() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let key = crate::exchange::auth::CdpKey::generate("organizations/test/apiKeys/test");
        let metrics = crate::metrics::Metrics::standalone(Duration::from_secs(300));
        let client = CoinbaseClient::new(&format!("http://{addr}"), key, NonZeroU32::MIN, metrics)
            .unwrap()
            .with_retry(RetryPolicy { max_retries: 0, ..RetryPolicy::default() });
        let id = OrderId::parse("0000000a-0000-4000-8000-000000000001").unwrap();
        let Err(ExchangeError::Transient(why)) = client.order(&id).await else { panic!("a transient error") };
        assert!(why.to_lowercase().contains("connection refused"), "{why}");
        assert!(why.contains(&format!("(to http://{addr})")) && !why.contains(id.as_str()), "{why}");
    }
}
