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
    /// Power of two choices: draws two distinct candidates by weight (the
    /// neighbour when the second draw repeats the first) and returns the
    /// first unless `no_worse(a, b)` says otherwise.
    #[inline]
    pub(crate) fn pick_of_two(
        &self,
        core: usize,
        no_worse: impl Fn(usize, usize) -> bool,
    ) -> usize {
        let n = self.cumulative.len();
        if n <= 1 {
            return 0;
        }
        let a = self.pick(core);
        let mut b = self.pick(core);
        if b == a {
            b = (a + 1) % n;
        }
        if no_worse(a, b) { a } else { b }
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
