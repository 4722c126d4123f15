//! A per-worker pseudo-random generator for per-request draws (split
//! picks, mirror and fault percentages): xorshift64* in a thread-local,
//! so drawing costs a few instructions and no core shares state with
//! another. Not for anything secret.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // The thread's stack address tells workers started in the same
    // nanosecond apart.
    let here = &nanos as *const u64 as u64;
    (nanos ^ here.rotate_left(32)) | 1
}

/// The next draw.
#[inline]
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A draw below `n` (n > 0), without modulo bias worth speaking of for
/// the ranges used here (weights up to 2^40).
#[inline]
pub fn below(n: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

/// Parts per million: the unit of percentages with 0.0001 resolution.
pub const MILLION: u32 = 1_000_000;

/// True with probability `per_million` / 1,000,000.
#[inline]
pub fn chance(per_million: u32) -> bool {
    per_million >= MILLION
        || (per_million > 0 && below(u64::from(MILLION)) < u64::from(per_million))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_below_n_stay_below_n_and_cover_it() {
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let d = below(10);
            assert!(d < 10);
            seen[d as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn chance_is_never_for_zero_and_always_for_a_million() {
        assert!((0..1000).all(|_| !chance(0)));
        assert!((0..1000).all(|_| chance(MILLION)));
        let hits = (0..100_000).filter(|_| chance(250_000)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
    }
}
