//! Peak EWMA (Linkerd's balancer): power of two choices by cost =
//! EWMA(RTT) x (open connections + 1) / weight.
//!
//! For TCP the RTT sample of a connection is the time from the start of
//! its connect until the endpoint's first byte arrives, Linkerd's "pending
//! until first data": it covers the network, the accept queue and, for
//! request/response protocols, the first response. "Peak": a sample above
//! the estimate replaces it at once; lower samples pull it down with a
//! decay time of 10 s, and an endpoint that sends no samples decays toward
//! zero, so a once-slow endpoint is tried again. New endpoints start at
//! 30 ms (Linkerd's default).
//!
//! State is per core (estimates and open counts), like least_request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::per_core::{Gauge, PerCore};

use super::random::WeightedRandom;

/// RTT assumed for an endpoint without samples (Linkerd's `default_rtt`).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Decay time constant of the moving average (Linkerd's `decay`).
pub const DECAY: Duration = Duration::from_secs(10);

/// Peak EWMA's two constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakEwmaConfig {
    /// RTT assumed for an endpoint without samples.
    pub default_rtt: Duration,
    /// Time constant of the decay: how fast estimates forget.
    pub decay: Duration,
}

impl Default for PeakEwmaConfig {
    /// Linkerd's: 30 ms and 10 s.
    fn default() -> Self {
        PeakEwmaConfig {
            default_rtt: DEFAULT_RTT,
            decay: DECAY,
        }
    }
}

/// Nanoseconds since the first call: a clock that fits in an atomic.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug)]
struct Slot {
    /// The estimate in nanoseconds, as f64 bits.
    rtt: AtomicU64,
    /// When the estimate was last updated (ns, [`now_ns`]).
    at: AtomicU64,
    active: Gauge,
}

#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// The decay time constant, in nanoseconds.
    decay_ns: f64,
    weights: Vec<u32>,
    sampler: WeightedRandom,
    slots: PerCore<Box<[Slot]>>,
}

/// `estimate` decayed over `elapsed_ns` with time constant `decay_ns`.
#[inline]
fn decayed(estimate: f64, elapsed_ns: u64, decay_ns: f64) -> f64 {
    estimate * (-(elapsed_ns as f64) / decay_ns).exp()
}

impl PeakEwma {
    pub(crate) fn new(weights: &[u32], workers: usize, seed: u64, config: PeakEwmaConfig) -> Self {
        let n = weights.len();
        let start = now_ns();
        let initial = (config.default_rtt.as_nanos() as f64).to_bits();
        Self {
            decay_ns: (config.decay.as_nanos() as f64).max(1.0),
            weights: weights.iter().map(|w| (*w).max(1)).collect(),
            sampler: WeightedRandom::new(weights, workers, seed),
            slots: PerCore::from_fn(workers, || {
                (0..n)
                    .map(|_| Slot {
                        rtt: AtomicU64::new(initial),
                        at: AtomicU64::new(start),
                        active: Gauge::default(),
                    })
                    .collect()
            }),
        }
    }

    /// The cost of endpoint `i` on `core` at `now`.
    #[inline]
    fn cost(&self, slots: &[Slot], i: usize, now: u64) -> f64 {
        let s = &slots[i];
        let rtt = decayed(
            f64::from_bits(s.rtt.load(Relaxed)),
            now.saturating_sub(s.at.load(Relaxed)),
            self.decay_ns,
        );
        rtt * (s.active.get().max(0) as f64 + 1.0) / f64::from(self.weights[i])
    }

    #[inline]
    pub(crate) fn pick(&self, core: usize) -> usize {
        let slots = self.slots.get(core);
        let now = now_ns();
        self.sampler.pick_of_two(core, |a, b| {
            self.cost(slots, a, now) <= self.cost(slots, b, now)
        })
    }

    pub(crate) fn opened(&self, core: usize, index: usize) {
        if let Some(s) = self.slots.get(core).get(index) {
            s.active.add(1);
        }
    }

    pub(crate) fn closed(&self, core: usize, index: usize) {
        if let Some(s) = self.slots.get(core).get(index) {
            s.active.add(-1);
        }
    }

    /// Adds an RTT sample for endpoint `index`, seen on `core`.
    pub(crate) fn observe(&self, core: usize, index: usize, rtt: Duration) {
        let Some(s) = self.slots.get(core).get(index) else {
            return;
        };
        let now = now_ns();
        let sample = rtt.as_nanos() as f64;
        let current = f64::from_bits(s.rtt.load(Relaxed));
        let elapsed = now.saturating_sub(s.at.load(Relaxed));
        let next = if sample > current {
            sample
        } else {
            let w = (-(elapsed as f64) / self.decay_ns).exp();
            current * w + sample * (1.0 - w)
        };
        s.rtt.store(next.to_bits(), Relaxed);
        s.at.store(now, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_endpoint_loses_the_comparison_at_once() {
        let p = PeakEwma::new(&[1, 1], 1, 7, PeakEwmaConfig::default());
        p.observe(0, 0, Duration::from_millis(300));
        p.observe(0, 1, Duration::from_millis(3));
        assert!((0..100).all(|_| p.pick(0) == 1));
    }

    #[test]
    fn open_connections_multiply_the_cost() {
        let p = PeakEwma::new(&[1, 1], 1, 7, PeakEwmaConfig::default());
        p.observe(0, 0, Duration::from_millis(10));
        p.observe(0, 1, Duration::from_millis(10));
        for _ in 0..3 {
            p.opened(0, 1);
        }
        assert!((0..100).all(|_| p.pick(0) == 0));
    }

    #[test]
    fn a_peak_takes_effect_at_once_and_fast_samples_pull_it_down_slowly() {
        let p = PeakEwma::new(&[1, 1], 1, 7, PeakEwmaConfig::default());
        p.observe(0, 0, Duration::from_millis(100));
        let est = |p: &PeakEwma| f64::from_bits(p.slots.get(0)[0].rtt.load(Relaxed)) / 1e6;
        assert!((est(&p) - 100.0).abs() < 0.01);
        p.observe(0, 0, Duration::from_millis(1));
        // Almost no time has passed: the low sample barely counts.
        assert!(est(&p) > 99.0, "{}", est(&p));
    }

    #[test]
    fn estimates_decay_toward_zero_without_samples() {
        assert!(
            (decayed(100.0, DECAY.as_nanos() as u64, DECAY.as_nanos() as f64)
                - 100.0 / std::f64::consts::E)
                .abs()
                < 1e-9
        );
        assert_eq!(decayed(100.0, 0, 1e9), 100.0);
    }

    #[test]
    fn a_shorter_decay_forgets_sooner() {
        let fast = PeakEwmaConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_millis(100),
        };
        let p = PeakEwma::new(&[1, 1], 1, 7, fast);
        let est = |p: &PeakEwma| f64::from_bits(p.slots.get(0)[0].rtt.load(Relaxed)) / 1e6;
        std::thread::sleep(Duration::from_millis(300));
        p.observe(0, 0, Duration::from_millis(1));
        // Three time constants after the 30 ms prior: mostly the sample.
        assert!(est(&p) < 3.0, "{}", est(&p));
    }

    #[test]
    fn weights_divide_the_cost() {
        let p = PeakEwma::new(&[1, 4], 1, 7, PeakEwmaConfig::default());
        for i in 0..2 {
            p.observe(0, i, Duration::from_millis(10));
        }
        let mut counts = [0; 2];
        for _ in 0..1000 {
            let i = p.pick(0);
            p.opened(0, i);
            counts[i] += 1;
        }
        // Held connections settle where costs are equal: about 1:4.
        let share = counts[1] as f64 / 1000.0;
        assert!((0.75..=0.85).contains(&share), "{counts:?}");
    }
}
