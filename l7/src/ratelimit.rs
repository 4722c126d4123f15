//! Local rate limiting: a token bucket per listener or route, for the
//! whole proxy (not per core: with 2 workers, 100 per second allows 100,
//! not 200). The bucket is kept as GCRA's one number, the theoretical
//! arrival time of the next request, in an atomic shared by the workers
//! and updated with one compare-and-swap per request; it lives in the
//! stats registry, so a reload keeps the bucket's state.
//!
//! A limit may be keyed (by client address, SPIFFE identity or a header's
//! value): each key has its own bucket, in a map sharded by a keyed hash
//! (clients choose keys), with at most `max_keys` keys; a new key in a full
//! shard first evicts the keys whose buckets are full again (they carry no
//! state), and then, under a flood of live keys, any one key (its bucket
//! starts over), so no key flood can exhaust memory.
//!
//! Over the limit: `429` with `retry-after`, `x-ratelimit-limit`,
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset`, flag `RL`, counted.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics::RateLimitStats;

/// What gives each client its own bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's IP address.
    Client,
    /// The client's SPIFFE identity (clients without one share a bucket).
    Identity,
    /// The value of this header, lowercase name (requests without it share
    /// a bucket).
    Header(Box<[u8]>),
}

/// A configured limit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Requests per second.
    pub requests_per_second: u32,
    /// Requests that may pass at once after a quiet period.
    pub burst: u32,
    /// One bucket per key instead of one for all.
    pub key: Option<LimitKey>,
    /// Most keys tracked at once.
    pub max_keys: usize,
    /// The shared bucket(s) and counters.
    pub state: Arc<RateLimitStats>,
}

/// Shards of the keyed buckets: few enough to stay small, enough that two
/// workers rarely wait on one lock.
const SHARDS: usize = 16;

/// Buckets by key, sharded (kept by the registry across reloads).
#[derive(Debug, Default)]
pub struct KeyedBuckets {
    hasher: std::hash::RandomState,
    shards: [std::sync::Mutex<std::collections::HashMap<Box<[u8]>, u64>>; SHARDS],
}

/// Nanoseconds since the process's first use of a limiter.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Starts at one second so that a fresh bucket (0) is full.
    epoch.elapsed().as_nanos() as u64 + 1_000_000_000
}

impl RateLimit {
    /// The emission interval and the burst tolerance, in nanoseconds.
    fn gcra(&self) -> (u64, u64) {
        let interval = 1_000_000_000 / u64::from(self.requests_per_second.max(1));
        (interval, interval * u64::from(self.burst.max(1) - 1))
    }

    /// Takes one token from the bucket of `key` (the request's value of
    /// [`RateLimit::key`]; ignored for an unkeyed limit): `Ok(())`, or
    /// `Err(wait)` until one is available.
    pub fn take(&self, key: &[u8]) -> Result<(), Duration> {
        if self.key.is_some() {
            return self.take_keyed(key);
        }
        let (interval, tolerance) = self.gcra();
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

impl RateLimit {
    fn take_keyed(&self, key: &[u8]) -> Result<(), Duration> {
        use std::hash::BuildHasher;
        let (interval, tolerance) = self.gcra();
        let now = now_ns();
        let keyed = &self.state.keyed;
        let shard = keyed.hasher.hash_one(key) as usize % SHARDS;
        let mut map = keyed.shards[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tat = match map.get_mut(key) {
            Some(tat) => tat,
            None => {
                let room = self.max_keys.div_ceil(SHARDS).max(1);
                if map.len() >= room {
                    // Keys whose buckets are full again carry nothing.
                    map.retain(|_, tat| *tat > now);
                    if map.len() >= room {
                        if let Some(k) = map.keys().next().cloned() {
                            map.remove(&k);
                        }
                    }
                }
                map.entry(key.into()).or_insert(0)
            }
        };
        let start = (*tat).max(now);
        if start - now > tolerance {
            return Err(Duration::from_nanos(start - now - tolerance));
        }
        *tat = start + interval;
        Ok(())
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
            key: None,
            max_keys: 16,
            state: Arc::new(RateLimitStats::default()),
        }
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let l = RateLimit {
            key: Some(LimitKey::Client),
            ..limit(1, 2)
        };
        assert!(l.take(b"a").is_ok() && l.take(b"a").is_ok());
        assert!(l.take(b"a").is_err());
        assert!(
            l.take(b"b").is_ok(),
            "another key is not limited by a's spending"
        );
    }

    #[test]
    fn a_key_flood_keeps_the_map_bounded() {
        let l = RateLimit {
            key: Some(LimitKey::Client),
            ..limit(1, 1)
        };
        for i in 0..10_000u32 {
            let _ = l.take(&i.to_le_bytes());
        }
        let kept: usize = l
            .state
            .keyed
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(kept <= 16, "{kept} keys kept for max_keys 16");
    }

    #[test]
    fn a_full_bucket_lets_its_burst_through_then_refuses_with_a_wait() {
        let l = limit(10, 5);
        for _ in 0..5 {
            assert!(l.take(b"").is_ok());
        }
        let wait = l.take(b"").expect_err("the burst is spent");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let l = limit(100, 1);
        assert!(l.take(b"").is_ok());
        assert!(l.take(b"").is_err());
        std::thread::sleep(Duration::from_millis(15));
        assert!(l.take(b"").is_ok());
    }

    #[test]
    fn workers_share_one_bucket() {
        let l = limit(1000, 100);
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).filter(|_| l.take(b"").is_ok()).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        // The burst, plus what refilled while the threads ran (well under 1 s).
        assert!((100..400).contains(&passed), "{passed}");
    }
}
