//! The client-side rate limit: one token bucket (governor's GCRA) shared by every task that calls the
//! exchange, so the reconciler, manual reconciles and the listener together stay under Coinbase's limit.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A shared limiter of `per_second` requests, bursting to the same number.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<DefaultDirectRateLimiter>,
}

impl Limiter {
    pub fn per_second(per_second: NonZeroU32) -> Limiter {
        Limiter { inner: Arc::new(RateLimiter::direct(Quota::per_second(per_second))) }
    }

    /// Wait for a token.
    pub async fn acquire(&self) {
        self.inner.until_ready().await;
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
