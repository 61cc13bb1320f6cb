//! The client-side rate limit, shared by every task that calls the exchange (the reconciler, due checks,
//! manual reconciles, the key probe), so together they stay under Coinbase's limit. A sliding window, not a
//! token bucket: never more than `per_second` requests in any one-second window, whatever the burst (a
//! bucket of `n` tokens refilling at `n`/s lets `2n - 1` through in the second after a quiet spell).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// A shared limiter of `per_second` requests in any one-second window.
#[derive(Clone)]
pub struct Limiter {
    per_second: usize,
    /// When the requests of the last second were let through, oldest first.
    granted: Arc<Mutex<VecDeque<Instant>>>,
    /// Turns taken by `reserve` and not yet used by a request.
    reserved: Arc<AtomicU32>,
}

impl Limiter {
    pub fn per_second(per_second: NonZeroU32) -> Limiter {
        let per_second = usize::try_from(per_second.get()).unwrap_or(usize::MAX);
        Limiter {
            per_second,
            granted: Arc::new(Mutex::new(VecDeque::with_capacity(per_second))),
            reserved: Arc::default(),
        }
    }

    /// Take a turn if the last second has room for one; otherwise say how long until it has.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        while granted.front().is_some_and(|at| now.duration_since(*at) >= WINDOW) {
            granted.pop_front();
        }
        if granted.len() < self.per_second {
            granted.push_back(now);
            return Ok(());
        }
        let oldest = granted.front().copied().unwrap_or(now);
        Err((oldest + WINDOW).saturating_duration_since(now).max(Duration::from_millis(1)))
    }

    async fn take_turn(&self) {
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Wait for a turn (or use one taken by `reserve`).
    pub async fn acquire(&self) {
        let reserved = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if reserved.is_err() {
            self.take_turn().await;
        }
    }

    /// Wait for a turn and keep it for the next `acquire`: at most one is kept, so a caller that reserves and
    /// then sends nothing costs one turn, never a burst.
    pub async fn reserve(&self) {
        if self.reserved.load(Ordering::Acquire) == 0 {
            self.take_turn().await;
            self.reserved.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reserved_turn_is_used_by_the_next_request_and_only_one_is_kept() {
        let limiter = Limiter::per_second(NonZeroU32::new(2).unwrap());
        limiter.reserve().await;
        limiter.reserve().await;
        assert!(limiter.try_acquire().is_ok(), "one reservation took one turn; one is left");
        assert!(limiter.try_acquire().is_err());
        let started = Instant::now();
        limiter.acquire().await;
        assert!(started.elapsed() < Duration::from_millis(50), "the reserved turn is used at once");
    }

    #[test]
    fn a_burst_beyond_the_limit_is_told_to_wait_until_the_window_moves() {
        let limiter = Limiter::per_second(NonZeroU32::new(5).unwrap());
        for _ in 0..5 {
            assert!(limiter.try_acquire().is_ok());
        }
        let wait = limiter.try_acquire().unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= WINDOW, "until the first turn is a second old: {wait:?}");
    }
}
