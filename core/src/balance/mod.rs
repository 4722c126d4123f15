//! Choosing an endpoint for each connection. One file per policy; the
//! cluster's [`Balancer`] dispatches, and every policy keeps its moving
//! state per core (no counter shared between cores on the hot path).
//!
//! The pick is the first endpoint tried; on a connect failure the next
//! endpoints in index order follow (see `connect.rs`).

mod least_request;
mod random;
mod round_robin;

use least_request::LeastRequest;
use random::WeightedRandom;
use round_robin::RoundRobin;

/// A cluster's load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices by active connections per weight.
    LeastRequest,
}

impl LbPolicy {
    /// The config and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::Random => "random",
            LbPolicy::LeastRequest => "least_request",
        }
    }
}

/// A cluster's balancer.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
}

#[derive(Debug)]
enum Policy {
    RoundRobin(RoundRobin),
    Random(WeightedRandom),
    LeastRequest(LeastRequest),
}

impl Balancer {
    /// A balancer over endpoints with `weights`, for `workers` cores.
    /// `seed` makes the random policies reproducible (tests); use any value.
    pub fn new(policy: LbPolicy, weights: &[u32], workers: usize, seed: u64) -> Self {
        let policy = match policy {
            LbPolicy::RoundRobin => Policy::RoundRobin(RoundRobin::new(weights, workers)),
            LbPolicy::Random => Policy::Random(WeightedRandom::new(weights, workers, seed)),
            LbPolicy::LeastRequest => {
                Policy::LeastRequest(LeastRequest::new(weights, workers, seed))
            }
        };
        Balancer { policy }
    }

    /// The policy.
    pub fn policy(&self) -> LbPolicy {
        match self.policy {
            Policy::RoundRobin(_) => LbPolicy::RoundRobin,
            Policy::Random(_) => LbPolicy::Random,
            Policy::LeastRequest(_) => LbPolicy::LeastRequest,
        }
    }

    /// The endpoint index to try first, on worker `core`.
    #[inline]
    pub fn pick(&self, core: usize) -> usize {
        match &self.policy {
            Policy::RoundRobin(p) => p.pick(core),
            Policy::Random(p) => p.pick(core),
            Policy::LeastRequest(p) => p.pick(core),
        }
    }

    /// A connection to endpoint `index` opened on `core`.
    #[inline]
    pub fn opened(&self, core: usize, index: usize) {
        if let Policy::LeastRequest(p) = &self.policy {
            p.opened(core, index)
        }
    }

    /// A connection to endpoint `index` on `core` closed.
    #[inline]
    pub fn closed(&self, core: usize, index: usize) {
        if let Policy::LeastRequest(p) = &self.policy {
            p.closed(core, index)
        }
    }
}
