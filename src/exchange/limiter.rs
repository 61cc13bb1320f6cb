//! The client-side rate limit, shared by every task that calls the exchange (the reconciler, due checks,
//! manual reconciles, the key probe), so together they stay under Coinbase's limit. Requests are spaced at
//! least 1/`per_second` s apart: never more than `per_second` in any one-second window, whatever the burst
//! (a bucket of `n` tokens refilling at `n`/s lets `2n - 1` through in the second after a quiet spell), and
//! never a burst followed by a long wait (a plain sliding window lets `n` through at once, then starves
//! whatever falls due for the rest of the second).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A shared limiter of `per_second` requests in any one-second window, evenly spaced.
#[derive(Clone)]
pub struct Limiter {
    spacing: Duration,
    /// When the next request may go out.
    next: Arc<Mutex<Option<Instant>>>,
}

impl Limiter {
    pub fn per_second(per_second: NonZeroU32) -> Limiter {
        // 2% wider than 1/n s: n + 1 requests always span more than a second, so the network's jitter never
        // puts n + 1 of them into one of the server's one-second windows (exactly 1/n s apart, at Coinbase's
        // own 30/s, the simulator answered some with 429).
        Limiter { spacing: Duration::from_secs(1) * 51 / 50 / per_second.get(), next: Arc::default() }
    }

    /// Whether a request may go out now; `take` the turn if so. Otherwise how long until one may.
    fn turn(&self, take: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        match *next {
            Some(at) if at > now => Err(at - now),
            _ => {
                if take {
                    *next = Some(now + self.spacing);
                }
                Ok(())
            }
        }
    }

    /// Take a turn if a request may go out now; otherwise say how long until one may.
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
        assert!(limiter.try_acquire().is_ok(), "the turn is still there");
        assert!(limiter.try_acquire().is_err());
        let started = Instant::now();
        limiter.ready().await;
        assert!(started.elapsed() >= Duration::from_millis(450), "ready waits like a request");
        assert!(limiter.try_acquire().is_ok());
    }

    #[test]
    fn requests_are_spaced_evenly() {
        let limiter = Limiter::per_second(NonZeroU32::new(5).unwrap());
        assert!(limiter.try_acquire().is_ok());
        let wait = limiter.try_acquire().unwrap_err();
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(204),
            "1/5 s (and 2%) apart: {wait:?}"
        );
    }
}
