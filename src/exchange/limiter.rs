//! The client-side rate limit: one token bucket (governor's GCRA) shared by every task that calls the
//! exchange, so the reconciler, manual reconciles and the listener together stay under Coinbase's limit.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A shared limiter of `per_second` requests, bursting to the same number.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<DefaultDirectRateLimiter>,
    /// Tokens taken by `reserve` and not yet used by a request.
    reserved: Arc<AtomicU32>,
}

impl Limiter {
    pub fn per_second(per_second: NonZeroU32) -> Limiter {
        Limiter { inner: Arc::new(RateLimiter::direct(Quota::per_second(per_second))), reserved: Arc::default() }
    }

    /// Wait for a token (or use one taken by `reserve`).
    pub async fn acquire(&self) {
        let reserved = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if reserved.is_err() {
            self.inner.until_ready().await;
        }
    }

    /// Wait for a token and keep it for the next `acquire`: at most one is kept, so a caller that reserves
    /// and then sends nothing costs one token, never a burst.
    pub async fn reserve(&self) {
        if self.reserved.load(Ordering::Acquire) == 0 {
            self.inner.until_ready().await;
            self.reserved.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Take a token if one is free now; otherwise say how long until one is.
    pub fn try_acquire(&self) -> Result<(), std::time::Duration> {
        self.inner.check().map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reserved_token_is_used_by_the_next_request_and_only_one_is_kept() {
        let limiter = Limiter::per_second(NonZeroU32::new(2).unwrap());
        limiter.reserve().await;
        limiter.reserve().await;
        assert!(limiter.try_acquire().is_ok(), "one reservation took one token; one is left");
        assert!(limiter.try_acquire().is_err());
        let started = std::time::Instant::now();
        limiter.acquire().await;
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "the reserved token is used at once");
    }

    #[test]
    fn a_burst_beyond_the_quota_is_told_to_wait() {
        let limiter = Limiter::per_second(NonZeroU32::new(5).unwrap());
        for _ in 0..5 {
            assert!(limiter.try_acquire().is_ok());
        }
        let wait = limiter.try_acquire().unwrap_err();
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_millis(200), "{wait:?}");
    }
}
