//! Local rate limiting: a token bucket per listener or route, for the
//! whole proxy (not per core: with 2 workers, 100 per second allows 100,
//! not 200). The bucket is kept as GCRA's one number, the theoretical
//! arrival time of the next request, in an atomic shared by the workers
//! and updated with one compare-and-swap per request; it lives in the
//! stats registry, so a reload keeps the bucket's state.
//!
//! Over the limit: `429` with `retry-after`, `x-ratelimit-limit`,
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset`, flag `RL`, counted.
//! Limits keyed by client, identity or header are not here yet.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics::RateLimitStats;

/// A configured limit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Requests per second.
    pub requests_per_second: u32,
    /// Requests that may pass at once after a quiet period.
    pub burst: u32,
    /// The shared bucket and its counters.
    pub state: Arc<RateLimitStats>,
}

/// Nanoseconds since the process's first use of a limiter.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Starts at one second so that a fresh bucket (0) is full.
    epoch.elapsed().as_nanos() as u64 + 1_000_000_000
}

impl RateLimit {
    /// Takes one token: `Ok(())`, or `Err(wait)` until one is available.
    pub fn take(&self) -> Result<(), Duration> {
        let interval = 1_000_000_000 / u64::from(self.requests_per_second.max(1));
        let tolerance = interval * u64::from(self.burst.max(1) - 1);
        let now = now_ns();
        let tat = &self.state.tat;
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let start = current.max(now);
            if start - now > tolerance {
                return Err(Duration::from_nanos(start - now - tolerance));
            }
            match tat.compare_exchange_weak(
                current,
                start + interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

/// Appends the 429 answer: the proxy's text body, flag `RL`, and the
/// headers that tell a client when to come back.
pub fn write_limited(out: &mut Vec<u8>, limit: &RateLimit, wait: Duration, close: bool) {
    use crate::codec::write::push_decimal;
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let text = b"rate limited (RL)\n";
    out.extend_from_slice(
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: ",
    );
    push_decimal(out, text.len() as u64);
    out.extend_from_slice(b"\r\nretry-after: ");
    push_decimal(out, secs.max(1));
    out.extend_from_slice(b"\r\nx-ratelimit-limit: ");
    push_decimal(out, u64::from(limit.requests_per_second));
    out.extend_from_slice(b"\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: ");
    push_decimal(out, secs.max(1));
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: u32, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
            state: Arc::new(RateLimitStats::default()),
        }
    }

    #[test]
    fn a_full_bucket_lets_its_burst_through_then_refuses_with_a_wait() {
        let l = limit(10, 5);
        for _ in 0..5 {
            assert!(l.take().is_ok());
        }
        let wait = l.take().expect_err("the burst is spent");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let l = limit(100, 1);
        assert!(l.take().is_ok());
        assert!(l.take().is_err());
        std::thread::sleep(Duration::from_millis(15));
        assert!(l.take().is_ok());
    }

    #[test]
    fn workers_share_one_bucket() {
        let l = limit(1000, 100);
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).filter(|_| l.take().is_ok()).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        // The burst, plus what refilled while the threads ran (well under 1 s).
        assert!((100..400).contains(&passed), "{passed}");
    }
}
