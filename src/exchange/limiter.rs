//! The client-side rate limit, shared by every task that calls the exchange (the reconciler, due checks,
//! manual reconciles, the key probe), so together they stay under Coinbase's limit. A sliding window, not a
//! token bucket: never more than `per_second` requests in any one-second window, whatever the burst (a
//! bucket of `n` tokens refilling at `n`/s lets `2n - 1` through in the second after a quiet spell).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// A shared limiter of `per_second` requests in any one-second window.
#[derive(Clone)]
pub struct Limiter {
    per_second: usize,
    /// When the requests of the last second were let through, oldest first.
    granted: Arc<Mutex<VecDeque<Instant>>>,
}

impl Limiter {
    pub fn per_second(per_second: NonZeroU32) -> Limiter {
        let per_second = usize::try_from(per_second.get()).unwrap_or(usize::MAX);
        Limiter { per_second, granted: Arc::new(Mutex::new(VecDeque::with_capacity(per_second))) }
    }

    /// Whether the last second has room for a request now; `take` it if so. Otherwise how long until it has.
    fn turn(&self, take: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        while granted.front().is_some_and(|at| now.duration_since(*at) >= WINDOW) {
            granted.pop_front();
        }
        if granted.len() < self.per_second {
            if take {
                granted.push_back(now);
            }
            return Ok(());
        }
        let oldest = granted.front().copied().unwrap_or(now);
        Err((oldest + WINDOW).saturating_duration_since(now).max(Duration::from_millis(1)))
    }

    /// Take a turn if the last second has room for one; otherwise say how long until it has.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.turn(true)
    }

    /// Wait for a turn and take it: the request goes out now.
    pub async fn acquire(&self) {
        while let Err(wait) = self.turn(true) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Wait until a request could go out now, without taking the turn: a caller that gathers work over time
    /// (the due checks) waits here, then gathers, then sends through `acquire` (which may wait again if
    /// another task took the turn meanwhile). Sending nothing costs nothing.
    pub async fn ready(&self) {
        while let Err(wait) = self.turn(false) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_until_ready_takes_no_turn() {
        let limiter = Limiter::per_second(NonZeroU32::new(2).unwrap());
        limiter.ready().await;
        limiter.ready().await;
        assert!(limiter.try_acquire().is_ok() && limiter.try_acquire().is_ok(), "both turns are still there");
        assert!(limiter.try_acquire().is_err());
        let started = Instant::now();
        limiter.ready().await;
        assert!(started.elapsed() >= Duration::from_millis(900), "ready waits for the window like a request");
        assert!(limiter.try_acquire().is_ok());
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
