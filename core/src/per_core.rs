//! Per-core slots: state that every worker writes without touching another
//! core's cache lines, merged only when someone reads it (a metrics scrape).
//!
//! Each slot has exactly one writer, the worker whose index it carries, so
//! counters use a relaxed load and store instead of a locked read-modify-write,
//! and slots are padded so two cores never share a cache line.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

/// One `T` per worker, each on its own cache line.
#[derive(Debug)]
pub struct PerCore<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T: Default> PerCore<T> {
    /// Creates `workers` default slots (at least one).
    pub fn new(workers: usize) -> Self {
        let slots = (0..workers.max(1))
            .map(|_| CachePadded::new(T::default()))
            .collect();
        Self { slots }
    }
}

impl<T> PerCore<T> {
    /// Creates `workers` slots (at least one) with `make`.
    pub fn from_fn(workers: usize, make: impl Fn() -> T) -> Self {
        let slots = (0..workers.max(1))
            .map(|_| CachePadded::new(make()))
            .collect();
        Self { slots }
    }

    /// The slot of worker `core`. Indices wrap, so a caller can never panic
    /// on an index from a larger worker count.
    #[inline]
    pub fn get(&self, core: usize) -> &T {
        &self.slots[core % self.slots.len()]
    }

    /// Every slot, for merging on read.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &**s)
    }
}

/// A monotonic counter with a single writer (its worker).
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Must only be called by the slot's own worker.
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: load + store avoids a locked instruction.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge with a single writer; per-core values may be negative (a
/// connection counted on one core is never closed on another, but the sum is
/// what a reader should use).
#[derive(Default, Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds `n` (may be negative). Must only be called by the slot's worker.
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A pseudo-random generator with a single writer (xorshift64*): fast,
/// and deterministic from its seed for tests.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced, xorshift needs bits).
    pub fn new(seed: u64) -> Self {
        Rng(AtomicU64::new(seed.max(1)))
    }

    /// The next value. Must only be called by the slot's own worker.
    #[inline]
    pub fn next(&self) -> u64 {
        let mut x = self.0.load(Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.store(x, Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    #[inline]
    pub fn below(&self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for load balancing, no division.
        ((self.next() >> 32) * n) >> 32
    }
}

/// A cursor with a single writer, e.g. a per-core round-robin position.
#[derive(Default, Debug)]
pub struct Cursor(AtomicUsize);

impl Cursor {
    /// Returns the current position and advances it by one.
    #[inline]
    pub fn next(&self) -> usize {
        let v = self.0.load(Relaxed);
        self.0.store(v.wrapping_add(1), Relaxed);
        v
    }
}

/// Sums a per-core counter.
pub fn sum<T>(per_core: &PerCore<T>, f: impl Fn(&T) -> u64) -> u64 {
    per_core.iter().map(f).fold(0u64, u64::wrapping_add)
}
