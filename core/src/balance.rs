//! Endpoint selection. For now, round robin with a cursor per core: no
//! shared counter is touched per connection, and each core starts at a
//! different offset so that two cores do not hit the same endpoint first.

use crate::per_core::{Cursor, PerCore};

/// Round-robin over a cluster's endpoints, one cursor per worker.
#[derive(Debug)]
pub struct RoundRobin {
    cursors: PerCore<Cursor>,
}

impl RoundRobin {
    /// A balancer for `workers` cores.
    pub fn new(workers: usize) -> Self {
        let cursors: PerCore<Cursor> = PerCore::new(workers);
        // Stagger the starting positions so cores spread their first picks.
        for core in 0..workers {
            for _ in 0..core {
                cursors.get(core).next();
            }
        }
        Self { cursors }
    }

    /// The index of the next endpoint for worker `core`, out of `len` (> 0).
    #[inline]
    pub fn pick(&self, core: usize, len: usize) -> usize {
        self.cursors.get(core).next() % len.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_every_endpoint_in_order() {
        let rr = RoundRobin::new(1);
        let picks: Vec<_> = (0..6).map(|_| rr.pick(0, 3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn cores_start_at_different_endpoints() {
        let rr = RoundRobin::new(2);
        assert_ne!(rr.pick(0, 2), rr.pick(1, 2));
    }
}
