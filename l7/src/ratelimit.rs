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

/// Buckets by key, sharded (kept by the registry across reloads). A key
/// is kept as its 64-bit keyed hash, not its bytes: a header value can be
/// 60 KiB, a hash is 8 bytes and needs no allocation (two clients whose
/// keys collide, about 1 in 10^12 at 10,000 keys, share a bucket).
#[derive(Debug, Default)]
pub struct KeyedBuckets {
    hasher: std::hash::RandomState,
    shards: [std::sync::Mutex<std::collections::HashMap<u64, u64, PassThrough>>; SHARDS],
}

/// The keys are already keyed hashes: the map uses them as they are.
type PassThrough = std::hash::BuildHasherDefault<IdentityHasher>;

/// A hasher that passes a `u64` through.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
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
            let start = clamp_start(current, now, interval, tolerance);
            if start - now > tolerance {
                // Keep the clamp (a looser limit after a reload), so the
                // wait it announces is the one that holds.
                if start < current {
                    let _ =
                        tat.compare_exchange(current, start, Ordering::Relaxed, Ordering::Relaxed);
                }
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
        let hash = keyed.hasher.hash_one(key);
        // The map's buckets use the low bits; the shard, the high ones.
        let shard = (hash >> 60) as usize % SHARDS;
        let mut map = keyed.shards[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let room = self.max_keys.div_ceil(SHARDS).max(1);
        if map.len() >= room && !map.contains_key(&hash) {
            evict(&mut map, room, now);
        }
        let tat = map.entry(hash).or_insert(0);
        let start = clamp_start(*tat, now, interval, tolerance);
        if start - now > tolerance {
            *tat = start;
            return Err(Duration::from_nanos(start - now - tolerance));
        }
        *tat = start + interval;
        Ok(())
    }
}

/// Where a request's slot starts: not before now, and never further ahead
/// than one interval past the tolerance. In steady state a bucket never is;
/// after a reload that made the limit looser, a bucket filled under the
/// old one would otherwise refuse for as long as the old limit implied.
#[inline]
fn clamp_start(tat: u64, now: u64, interval: u64, tolerance: u64) -> u64 {
    tat.clamp(now, now + tolerance + interval)
}

/// Makes room in a full shard: drops every bucket that has refilled (it
/// carries nothing); when live keys still fill it (a flood of distinct
/// keys), drops the fullest buckets until an eighth of the room is free,
/// so the scan is paid once per many new keys, not once per key.
fn evict(map: &mut std::collections::HashMap<u64, u64, PassThrough>, room: usize, now: u64) {
    map.retain(|_, tat| *tat > now);
    if map.len() < room {
        return;
    }
    let keep = room - room / 8 - 1;
    let mut tats: Vec<u64> = map.values().copied().collect();
    let cut = tats.len().saturating_sub(keep);
    if cut == 0 {
        return;
    }
    // The `cut` smallest arrival times are the fullest buckets.
    tats.select_nth_unstable(cut - 1);
    let bound = tats[cut - 1];
    let mut dropped = 0;
    map.retain(|_, tat| {
        if dropped < cut && *tat <= bound {
            dropped += 1;
            false
        } else {
            true
        }
    });
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
    fn a_looser_limit_after_a_reload_does_not_inherit_the_old_wait() {
        let strict = limit(1, 600);
        for _ in 0..600 {
            assert!(strict.take(b"").is_ok());
        }
        assert!(strict.take(b"").is_err());
        // The same bucket (kept across the reload), a far looser limit.
        let loose = RateLimit {
            requests_per_second: 1000,
            burst: 10,
            ..strict.clone()
        };
        let wait = loose.take(b"").expect_err("at most one interval to wait");
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        std::thread::sleep(Duration::from_millis(5));
        assert!(loose.take(b"").is_ok());
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
        let l = limit(10, 1);
        assert!(l.take(b"").is_ok());
        assert!(l.take(b"").is_err());
        std::thread::sleep(Duration::from_millis(150));
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
