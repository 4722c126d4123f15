//! Least request with the power of two choices (Envoy's default shape):
//! draw two distinct endpoints at random by weight, send to the one with
//! the lower load per weight, (active + 1) / weight. For TCP a "request" is
//! a connection.
//!
//! Active counts are kept per core: each worker balances the connections it
//! accepted, with no counter shared between cores. SO_REUSEPORT spreads
//! connections evenly over cores, so per-core balance approximates the
//! global one without cross-core traffic.

use crate::per_core::{Gauge, PerCore};

use super::random::WeightedRandom;

#[derive(Debug)]
pub(crate) struct LeastRequest {
    weights: Vec<u32>,
    sampler: WeightedRandom,
    /// Per core, per endpoint: connections open now.
    active: PerCore<Box<[Gauge]>>,
}

impl LeastRequest {
    pub(crate) fn new(weights: &[u32], workers: usize, seed: u64) -> Self {
        let n = weights.len();
        Self {
            weights: weights.iter().map(|w| (*w).max(1)).collect(),
            sampler: WeightedRandom::new(weights, workers, seed),
            active: PerCore::from_fn(workers, || (0..n).map(|_| Gauge::default()).collect()),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, core: usize) -> usize {
        let active = self.active.get(core);
        // (active(a)+1)/weight(a) <= (active(b)+1)/weight(b), without division.
        self.sampler.pick_of_two(core, |a, b| {
            let load = |i: usize| active[i].get().max(0) as u128 + 1;
            load(a) * u128::from(self.weights[b]) <= load(b) * u128::from(self.weights[a])
        })
    }

    /// A connection to endpoint `index` opened on `core`.
    pub(crate) fn opened(&self, core: usize, index: usize) {
        if let Some(g) = self.active.get(core).get(index) {
            g.add(1);
        }
    }

    /// A connection to endpoint `index` on `core` closed.
    pub(crate) fn closed(&self, core: usize, index: usize) {
        if let Some(g) = self.active.get(core).get(index) {
            g.add(-1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_connections_go_to_the_less_loaded_endpoint() {
        let lr = LeastRequest::new(&[1, 1], 1, 1);
        for _ in 0..10 {
            lr.opened(0, 0);
        }
        // With two endpoints both are always compared: 0 is busier.
        assert!((0..100).all(|_| lr.pick(0) == 1));
    }

    #[test]
    fn held_connections_stay_balanced() {
        let lr = LeastRequest::new(&[1, 1, 1, 1], 1, 3);
        let mut held = [0; 4];
        for _ in 0..400 {
            let i = lr.pick(0);
            lr.opened(0, i);
            held[i] += 1;
        }
        let (min, max) = (held.iter().min().unwrap(), held.iter().max().unwrap());
        assert!(max - min <= 10, "{held:?}");
    }

    #[test]
    fn weights_scale_the_share_of_load() {
        let lr = LeastRequest::new(&[1, 3], 1, 5);
        let mut held = [0; 2];
        for _ in 0..400 {
            let i = lr.pick(0);
            lr.opened(0, i);
            held[i] += 1;
        }
        let share = held[1] as f64 / 400.0;
        assert!((0.70..=0.80).contains(&share), "{held:?}");
    }
}
