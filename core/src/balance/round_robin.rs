//! Weighted round robin. The order is computed once per config with the
//! smooth algorithm nginx uses (weights 5,1,1 give a a b a c a a, not
//! a a a a a b c), so a pick is one per-core cursor step.

use crate::per_core::{Cursor, PerCore};

/// Longest precomputed schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 65_536;

/// The smooth weighted round-robin sequence of endpoint indices: nginx's
/// algorithm (every step adds each weight to its endpoint's credit, picks
/// the largest credit, first in index order on ties, and takes the weight
/// sum off it), computed over groups of equal weight.
///
/// Endpoints of one weight are picked in index order among themselves, so a
/// group's best candidate is known from its pick count alone; a step then
/// costs one look at each distinct weight instead of each endpoint. That
/// keeps 100,000 equal-weight endpoints linear (one group) where the plain
/// algorithm is quadratic, and gives exactly nginx's sequence.
pub(crate) fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|w| (u64::from(*w) / scale).max(1) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut by_weight: std::collections::BTreeMap<i64, Vec<u32>> = Default::default();
    for (i, w) in weights.iter().enumerate() {
        by_weight.entry(*w).or_default().push(i as u32);
    }
    // (weight, members in index order, picks so far)
    let mut groups: Vec<(i64, Vec<u32>, i64)> =
        by_weight.into_iter().map(|(w, m)| (w, m, 0)).collect();
    let mut out = Vec::with_capacity(total as usize);
    for step in 1..=total {
        // Credit of a group's next member: every member has gained
        // step * w; the least-picked ones have paid `total` picks / len times.
        let mut best: Option<(i64, u32, usize)> = None;
        for (g, (w, members, picks)) in groups.iter().enumerate() {
            let len = members.len() as i64;
            let credit = step * w - total * (picks / len);
            let candidate = members[(picks % len) as usize];
            let better = match best {
                None => true,
                Some((c, i, _)) => credit > c || (credit == c && candidate < i),
            };
            if better {
                best = Some((credit, candidate, g));
            }
        }
        let Some((_, index, g)) = best else { break };
        groups[g].2 += 1;
        out.push(index);
    }
    out
}

/// Per-core cursors over a shared schedule.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    schedule: Vec<u32>,
    cursors: PerCore<Cursor>,
}

impl RoundRobin {
    pub(crate) fn new(weights: &[u32], workers: usize) -> Self {
        let schedule = smooth_schedule(weights);
        let cursors: PerCore<Cursor> = PerCore::new(workers);
        // Stagger the cores so they do not start on the same endpoint.
        for core in 0..workers {
            let skip = schedule.len() * core / workers.max(1);
            for _ in 0..skip {
                cursors.get(core).next();
            }
        }
        Self { schedule, cursors }
    }

    #[inline]
    pub(crate) fn pick(&self, core: usize) -> usize {
        if self.schedule.is_empty() {
            return 0;
        }
        self.schedule[self.cursors.get(core).next() % self.schedule.len()] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_cycle_in_order() {
        let rr = RoundRobin::new(&[1, 1, 1], 1);
        let picks: Vec<_> = (0..6).map(|_| rr.pick(0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_respected_exactly_and_smoothly() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[1, 2, 3], 1);
        let mut counts = [0; 3];
        for _ in 0..6000 {
            counts[rr.pick(0)] += 1;
        }
        assert_eq!(counts, [1000, 2000, 3000]);
    }

    #[test]
    fn cores_start_at_different_places() {
        let rr = RoundRobin::new(&[1, 1], 2);
        assert_ne!(rr.pick(0), rr.pick(1));
    }

    /// The plain nginx loop, as the reference the grouped one must match.
    fn nginx(weights: &[i64]) -> Vec<u32> {
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = Vec::new();
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += w;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            out.push(best as u32);
        }
        out
    }

    #[test]
    fn grouping_by_weight_gives_exactly_nginxs_sequence() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = 1 + (state % 12) as usize;
            let weights: Vec<u32> = (0..n)
                .map(|i| 1 + ((state >> (i * 5)) % (1 + case % 7)) as u32)
                .collect();
            let wide: Vec<i64> = weights.iter().map(|w| i64::from(*w)).collect();
            assert_eq!(smooth_schedule(&weights), nginx(&wide), "{weights:?}");
        }
    }

    #[test]
    fn a_hundred_thousand_equal_endpoints_are_one_cycle() {
        let schedule = smooth_schedule(&vec![1; 100_000]);
        assert!(schedule.iter().enumerate().all(|(i, e)| *e as usize == i));
    }

    #[test]
    fn huge_weight_sums_are_scaled_not_allocated() {
        assert!(smooth_schedule(&[1_000_000, 1_000_000, 1]).len() <= 2 * MAX_SCHEDULE as usize + 1);
    }
}
