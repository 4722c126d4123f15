//! Weighted random choice: cumulative weights, one per-core generator.

use crate::per_core::{PerCore, Rng};

#[derive(Debug)]
pub(crate) struct WeightedRandom {
    /// Running sums of the weights.
    cumulative: Vec<u64>,
    rngs: PerCore<Rng>,
}

impl WeightedRandom {
    pub(crate) fn new(weights: &[u32], workers: usize, seed: u64) -> Self {
        let mut sum = 0;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += u64::from(*w).max(1);
                sum
            })
            .collect();
        let next_seed = Rng::new(seed);
        Self {
            cumulative,
            rngs: PerCore::from_fn(workers, || Rng::new(next_seed.next())),
        }
    }

    /// An endpoint index drawn in proportion to the weights.
    #[inline]
    pub(crate) fn pick(&self, core: usize) -> usize {
        let Some(total) = self.cumulative.last() else {
            return 0;
        };
        let r = self.rngs.get(core).below(*total);
        self.cumulative.partition_point(|c| *c <= r)
    }
}

impl WeightedRandom {
    /// Two distinct candidates drawn by weight (power of two choices);
    /// when the second draw repeats the first, its neighbour. Needs at
    /// least two endpoints.
    #[inline]
    pub(crate) fn two_choices(&self, core: usize, n: usize) -> (usize, usize) {
        let a = self.pick(core);
        let mut b = self.pick(core);
        if b == a {
            b = (a + 1) % n;
        }
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_the_weights() {
        let r = WeightedRandom::new(&[1, 3], 1, 42);
        let n = 100_000;
        let second = (0..n).filter(|_| r.pick(0) == 1).count() as f64 / n as f64;
        // Expected 0.75; 100k draws put 5 standard deviations at +-0.007.
        assert!((0.743..=0.757).contains(&second), "{second}");
    }

    #[test]
    fn every_endpoint_is_reachable() {
        let r = WeightedRandom::new(&[1, 1, 1, 1], 1, 7);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            seen[r.pick(0)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
