//! Choosing an endpoint for each connection. One file per policy; the
//! cluster's [`Balancer`] dispatches, and every policy keeps its moving
//! state per core (no counter shared between cores on the hot path).
//!
//! The pick is the first endpoint tried; on a connect failure the next
//! endpoints in index order follow (see `connect.rs`).

mod hash;
mod least_request;
mod peak_ewma;
mod random;
mod round_robin;

pub use hash::client_key;
use hash::{Maglev, RingHash};
use least_request::LeastRequest;
use peak_ewma::PeakEwma;
pub use peak_ewma::PeakEwmaConfig;
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
    /// Power of two choices by EWMA(time to first byte) x (open + 1) / weight.
    PeakEwma,
    /// Consistent hashing of the client's IP on a ring.
    RingHash,
    /// Consistent hashing of the client's IP in a Maglev table.
    Maglev,
}

impl LbPolicy {
    /// The config and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::Random => "random",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::PeakEwma => "peak_ewma",
            LbPolicy::RingHash => "ring_hash",
            LbPolicy::Maglev => "maglev",
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
    PeakEwma(PeakEwma),
    RingHash(RingHash),
    Maglev(Maglev),
}

impl Balancer {
    /// A balancer over endpoints with `weights` and stable `ids` (their
    /// addresses, for consistent hashing), for `workers` cores. `seed`
    /// makes the random policies reproducible (tests); use any value.
    pub fn new(
        policy: LbPolicy,
        ids: &[String],
        weights: &[u32],
        workers: usize,
        seed: u64,
    ) -> Self {
        Self::with_peak_ewma(
            policy,
            ids,
            weights,
            workers,
            seed,
            PeakEwmaConfig::default(),
        )
    }

    /// Like [`Balancer::new`], with peak_ewma's constants (used only by
    /// that policy).
    pub fn with_peak_ewma(
        policy: LbPolicy,
        ids: &[String],
        weights: &[u32],
        workers: usize,
        seed: u64,
        ewma: PeakEwmaConfig,
    ) -> Self {
        let policy = match policy {
            LbPolicy::RingHash => Policy::RingHash(RingHash::new(ids, weights)),
            LbPolicy::Maglev => Policy::Maglev(Maglev::new(ids, weights)),
            LbPolicy::RoundRobin => Policy::RoundRobin(RoundRobin::new(weights, workers)),
            LbPolicy::Random => Policy::Random(WeightedRandom::new(weights, workers, seed)),
            LbPolicy::LeastRequest => {
                Policy::LeastRequest(LeastRequest::new(weights, workers, seed))
            }
            LbPolicy::PeakEwma => Policy::PeakEwma(PeakEwma::new(weights, workers, seed, ewma)),
        };
        Balancer { policy }
    }

    /// The policy.
    pub fn policy(&self) -> LbPolicy {
        match self.policy {
            Policy::RoundRobin(_) => LbPolicy::RoundRobin,
            Policy::Random(_) => LbPolicy::Random,
            Policy::LeastRequest(_) => LbPolicy::LeastRequest,
            Policy::PeakEwma(_) => LbPolicy::PeakEwma,
            Policy::RingHash(_) => LbPolicy::RingHash,
            Policy::Maglev(_) => LbPolicy::Maglev,
        }
    }

    /// The endpoint index to try first, on worker `core`, for a client
    /// whose hash key is `key` (see [`client_key`]; used by the hashing
    /// policies only).
    #[inline]
    pub fn pick(&self, core: usize, key: u64) -> usize {
        match &self.policy {
            Policy::RoundRobin(p) => p.pick(core),
            Policy::Random(p) => p.pick(core),
            Policy::LeastRequest(p) => p.pick(core),
            Policy::PeakEwma(p) => p.pick(core),
            Policy::RingHash(p) => p.pick(key),
            Policy::Maglev(p) => p.pick(key),
        }
    }

    /// A connection to endpoint `index` opened on `core`.
    #[inline]
    pub fn opened(&self, core: usize, index: usize) {
        match &self.policy {
            Policy::LeastRequest(p) => p.opened(core, index),
            Policy::PeakEwma(p) => p.opened(core, index),
            _ => {}
        }
    }

    /// A connection to endpoint `index` on `core` closed.
    #[inline]
    pub fn closed(&self, core: usize, index: usize) {
        match &self.policy {
            Policy::LeastRequest(p) => p.closed(core, index),
            Policy::PeakEwma(p) => p.closed(core, index),
            _ => {}
        }
    }

    /// Whether the policy uses latency samples ([`Balancer::observe`]).
    #[inline]
    pub fn wants_latency(&self) -> bool {
        matches!(self.policy, Policy::PeakEwma(_))
    }

    /// A latency sample for endpoint `index` seen on `core`: for TCP, the
    /// time from the start of the connect to the endpoint's first byte.
    #[inline]
    pub fn observe(&self, core: usize, index: usize, rtt: std::time::Duration) {
        if let Policy::PeakEwma(p) = &self.policy {
            p.observe(core, index, rtt)
        }
    }
}
