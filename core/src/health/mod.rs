//! Endpoint health shared by every core: whether an endpoint may be picked,
//! and why not.
//!
//! Two things take an endpoint out of rotation:
//! - **outlier ejection** ([`outlier`]): passive, from the outcomes of real
//!   connections; decided inline on a worker for consecutive failures and
//!   by a periodic sweep for success-rate and failure-percentage outliers;
//! - **active health checks** ([`check`]): one checker per endpoint per
//!   process, on the health thread ([`service`]).
//!
//! The state is one [`EndpointHealth`] per (cluster name, address), kept in
//! a [`ClusterHealth`] that outlives config snapshots, so an ejection or a
//! failing check survives a reload. Workers read one atomic per pick; the
//! state changes rarely (on ejection, un-ejection and check transitions),
//! and only then is anything written that other cores read.

pub mod check;
pub mod outlier;
pub(crate) mod service;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::per_core::{Counter, Gauge, PerCore, sum};

pub use check::{HealthCheck, HealthCheckKind};
pub use outlier::{Detector, OutlierDetection};

/// Milliseconds since the first call in this process: a monotonic clock
/// that fits in an atomic.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

const EJECTED: u8 = 1;
const CHECK_FAILED: u8 = 2;

/// One worker's outcome counters for one endpoint.
#[derive(Default, Debug)]
pub(crate) struct EndpointCoreStats {
    pub successes: Counter,
    pub failures: Counter,
    pub active: Gauge,
}

/// What became of one upstream attempt, as the outlier detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The connection was made and ended without an upstream error.
    Success,
    /// A failure seen by the proxy itself: connect refused or timed out,
    /// TLS handshake failed, connection reset by the endpoint.
    LocalOriginFailure,
    /// The endpoint answered with a 5xx status (HTTP); `gateway` for 502,
    /// 503 and 504, which also feed `consecutive_gateway_failure`.
    ServerError {
        /// 502, 503 or 504.
        gateway: bool,
    },
}

impl Outcome {
    /// The outcome of an HTTP response with `status` (Envoy: 5xx are
    /// server errors, anything else succeeded).
    #[inline]
    pub fn of_status(status: u16) -> Outcome {
        match status {
            500..=599 => Outcome::ServerError {
                gateway: matches!(status, 502..=504),
            },
            _ => Outcome::Success,
        }
    }
}

/// The part of an endpoint's health read on the hot path.
#[derive(Debug, Default)]
struct Hot {
    flags: AtomicU8,
    /// Consecutive failures, by consecutive detector (5xx, gateway, local
    /// origin). Written on failures; on a success only when non-zero.
    consecutive: [AtomicU32; 3],
}

/// The shared health of one endpoint of one cluster.
#[derive(Debug)]
pub struct EndpointHealth {
    /// The endpoint.
    pub addr: SocketAddr,
    /// What every pick and every outcome reads, on its own cache line: the
    /// counters below (written by the health thread at each check) must not
    /// invalidate it on every core.
    hot: CachePadded<Hot>,
    ejected_until_ms: AtomicU64,
    ejected_by: AtomicU8,
    /// Ejections in a row: the ejection-time multiplier.
    pub(crate) multiplier: AtomicU32,
    ejections: AtomicU64,
    /// Consecutive active-check results (successes, failures).
    pub(crate) check_streak: (AtomicU32, AtomicU32),
    /// Whether any active check has completed.
    pub(crate) checked: AtomicBool,
    pub(crate) checks_passed: AtomicU64,
    pub(crate) checks_failed: AtomicU64,
    pub(crate) cores: PerCore<EndpointCoreStats>,
    /// Success and failure sums at the last outlier sweep (health thread only).
    pub(crate) last_sweep: Mutex<(u64, u64)>,
}

impl EndpointHealth {
    fn new(addr: SocketAddr, workers: usize) -> Self {
        Self {
            addr,
            hot: CachePadded::new(Hot::default()),
            ejected_until_ms: AtomicU64::new(0),
            ejected_by: AtomicU8::new(0),
            multiplier: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            check_streak: Default::default(),
            checked: AtomicBool::new(false),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            cores: PerCore::new(workers),
            last_sweep: Mutex::new((0, 0)),
        }
    }

    /// Whether the balancer may pick this endpoint (not ejected, not
    /// failing its health check).
    #[inline]
    pub fn is_available(&self) -> bool {
        self.hot.flags.load(Ordering::Relaxed) == 0
    }

    /// Whether the outlier detector has ejected it.
    pub fn is_ejected(&self) -> bool {
        self.hot.flags.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// Whether its active health check currently fails.
    pub fn check_failed(&self) -> bool {
        self.hot.flags.load(Ordering::Relaxed) & CHECK_FAILED != 0
    }

    /// Sets or clears `flag`; true when the flag changed.
    fn set_flag(&self, flag: u8, on: bool) -> bool {
        let before = if on {
            self.hot.flags.fetch_or(flag, Ordering::Relaxed)
        } else {
            self.hot.flags.fetch_and(!flag, Ordering::Relaxed)
        };
        (before & flag != 0) != on
    }

    /// A view for the admin API.
    pub fn view(&self) -> EndpointHealthView {
        let now = now_ms();
        let ejected = self.is_ejected();
        EndpointHealthView {
            addr: self.addr,
            check: match (self.checked.load(Ordering::Relaxed), self.check_failed()) {
                (_, true) => "failing",
                (true, false) => "passing",
                (false, false) => "unchecked",
            },
            ejected,
            ejected_by: ejected
                .then(|| Detector::from_index(self.ejected_by.load(Ordering::Relaxed)))
                .flatten(),
            ejection_remaining: ejected.then(|| {
                Duration::from_millis(
                    self.ejected_until_ms
                        .load(Ordering::Relaxed)
                        .saturating_sub(now),
                )
            }),
            times_ejected: self.ejections.load(Ordering::Relaxed),
            ejection_multiplier: self.multiplier.load(Ordering::Relaxed),
            active_connections: self.cores.iter().map(|c| c.active.get()).sum(),
            successes: sum(&self.cores, |c| c.successes.get()),
            failures: sum(&self.cores, |c| c.failures.get()),
            checks_passed: self.checks_passed.load(Ordering::Relaxed),
            checks_failed: self.checks_failed.load(Ordering::Relaxed),
        }
    }

    /// The consecutive-failure streaks (5xx, gateway, local origin).
    pub(crate) fn consecutive(&self) -> &[AtomicU32; 3] {
        &self.hot.consecutive
    }

    /// Sums of (successes, failures) over every core.
    pub(crate) fn outcome_sums(&self) -> (u64, u64) {
        (
            sum(&self.cores, |c| c.successes.get()),
            sum(&self.cores, |c| c.failures.get()),
        )
    }
}

/// An endpoint's health as GET /clusters shows it.
#[derive(Debug, Clone)]
pub struct EndpointHealthView {
    /// The endpoint.
    pub addr: SocketAddr,
    /// Active check state: `passing`, `failing` or `unchecked`.
    pub check: &'static str,
    /// Whether it is ejected now.
    pub ejected: bool,
    /// The detector that ejected it.
    pub ejected_by: Option<Detector>,
    /// Time until it returns.
    pub ejection_remaining: Option<Duration>,
    /// Ejections since it was first seen.
    pub times_ejected: u64,
    /// Current ejection-time multiplier.
    pub ejection_multiplier: u32,
    /// Upstream connections open to it now.
    pub active_connections: i64,
    /// Attempts that succeeded (outlier detection's view).
    pub successes: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Active checks that passed.
    pub checks_passed: u64,
    /// Active checks that failed.
    pub checks_failed: u64,
}

/// Ejection counters of one cluster, by detector.
#[derive(Debug, Default)]
pub struct OutlierCounters {
    /// Ejections carried out, by [`Detector`] index.
    pub enforced: [AtomicU64; Detector::ALL.len()],
    /// Outliers detected (carried out or not), by [`Detector`] index.
    pub detected: [AtomicU64; Detector::ALL.len()],
    /// Ejections skipped because `max_ejection_percent` was reached.
    pub overflow: AtomicU64,
}

/// The health of one cluster's endpoints, by address; kept across config
/// snapshots (see [`HealthRegistry`]).
#[derive(Debug)]
pub struct ClusterHealth {
    /// Cluster name.
    pub name: Arc<str>,
    workers: usize,
    /// Every endpoint seen, by address; `members` marks the current ones.
    endpoints: Mutex<BTreeMap<SocketAddr, Arc<EndpointHealth>>>,
    members: Mutex<Vec<Arc<EndpointHealth>>>,
    member_count: AtomicUsize,
    /// Members that may not be picked now (ejected or failing checks).
    unavailable: AtomicUsize,
    /// Serialises ejection decisions (they read the ejected count).
    ejection: Mutex<()>,
    /// Ejection counters.
    pub outlier: OutlierCounters,
    /// Picks made in panic mode (too few available endpoints), per core.
    pub(crate) panic_picks: PerCore<Counter>,
    /// Active checks run, passed, failed (health thread only).
    pub(crate) checks: (AtomicU64, AtomicU64),
}

impl ClusterHealth {
    fn new(name: &str, workers: usize) -> Self {
        Self {
            name: Arc::from(name),
            workers,
            endpoints: Mutex::new(BTreeMap::new()),
            members: Mutex::new(Vec::new()),
            member_count: AtomicUsize::new(0),
            unavailable: AtomicUsize::new(0),
            ejection: Mutex::new(()),
            outlier: OutlierCounters::default(),
            panic_picks: PerCore::new(workers),
            checks: Default::default(),
        }
    }

    /// The health objects of `addrs`, in order, created for addresses not
    /// seen before; known addresses keep their state. Membership does not
    /// change until the snapshot using them is applied ([`Self::commit`]).
    pub fn endpoints_for(&self, addrs: &[SocketAddr]) -> Vec<Arc<EndpointHealth>> {
        let mut all = lock(&self.endpoints);
        addrs
            .iter()
            .map(|a| {
                all.entry(*a)
                    .or_insert_with(|| Arc::new(EndpointHealth::new(*a, self.workers)))
                    .clone()
            })
            .collect()
    }

    /// Makes `members` (from an applied snapshot) the current members and
    /// forgets every other endpoint: a returning address starts fresh, as a
    /// new host does in Envoy.
    pub fn commit(&self, members: &[Arc<EndpointHealth>]) {
        let addrs: std::collections::HashSet<SocketAddr> = members.iter().map(|m| m.addr).collect();
        lock(&self.endpoints).retain(|a, _| addrs.contains(a));
        *lock(&self.members) = members.to_vec();
        self.recount();
    }

    /// [`Self::endpoints_for`] then [`Self::commit`], for tests and tools.
    pub fn set_members(&self, addrs: &[SocketAddr]) -> Vec<Arc<EndpointHealth>> {
        let members = self.endpoints_for(addrs);
        self.commit(&members);
        members
    }

    /// The current members.
    pub fn members(&self) -> Vec<Arc<EndpointHealth>> {
        lock(&self.members).clone()
    }

    /// Recomputes the unavailable count after a state change (rare).
    fn recount(&self) {
        let members = lock(&self.members);
        let down = members.iter().filter(|e| !e.is_available()).count();
        self.member_count.store(members.len(), Ordering::Relaxed);
        self.unavailable.store(down, Ordering::Relaxed);
    }

    /// `(available, total)` members now.
    pub fn membership(&self) -> (usize, usize) {
        let total = self.member_count.load(Ordering::Relaxed);
        let down = self.unavailable.load(Ordering::Relaxed).min(total);
        (total - down, total)
    }

    /// Whether fewer than `threshold` percent of the members are available:
    /// then the balancer ignores health, as Envoy's panic mode does.
    #[inline]
    pub fn in_panic(&self, threshold: u32) -> bool {
        let down = self.unavailable.load(Ordering::Relaxed);
        if down == 0 {
            return false;
        }
        let total = self.member_count.load(Ordering::Relaxed);
        let up = total.saturating_sub(down);
        (up as u64) * 100 < u64::from(threshold) * total as u64
    }

    /// Picks made in panic mode, over every core.
    pub fn panic_picks(&self) -> u64 {
        sum(&self.panic_picks, |c| c.get())
    }

    /// Active checks `(passed, failed)`.
    pub fn check_totals(&self) -> (u64, u64) {
        (
            self.checks.0.load(Ordering::Relaxed),
            self.checks.1.load(Ordering::Relaxed),
        )
    }

    /// Members ejected now.
    pub fn ejected_count(&self) -> usize {
        lock(&self.members)
            .iter()
            .filter(|e| e.is_ejected())
            .count()
    }

    /// Marks `endpoint`'s active check as failing or passing; true when it
    /// changed.
    pub(crate) fn set_check_failed(&self, endpoint: &EndpointHealth, failed: bool) -> bool {
        let changed = endpoint.set_flag(CHECK_FAILED, failed);
        if changed {
            self.recount();
        }
        changed
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every cluster's health, by name, for the life of the process.
#[derive(Debug)]
pub struct HealthRegistry {
    workers: usize,
    clusters: Mutex<BTreeMap<String, Arc<ClusterHealth>>>,
}

impl HealthRegistry {
    /// A registry for `workers` cores.
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            clusters: Mutex::new(BTreeMap::new()),
        }
    }

    /// The health of cluster `name`, created on first use.
    pub fn cluster(&self, name: &str) -> Arc<ClusterHealth> {
        lock(&self.clusters)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(ClusterHealth::new(name, self.workers)))
            .clone()
    }

    /// Every cluster's health, by name.
    pub fn clusters(&self) -> Vec<Arc<ClusterHealth>> {
        lock(&self.clusters).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn members_keep_their_state_across_snapshots() {
        let c = ClusterHealth::new("a", 2);
        let first = c.set_members(&[addr(1), addr(2)]);
        assert!(c.set_check_failed(&first[1], true));
        assert_eq!(c.membership(), (1, 2));
        let second = c.set_members(&[addr(2), addr(3)]);
        assert!(Arc::ptr_eq(&first[1], &second[0]));
        assert!(second[0].check_failed());
        assert_eq!(c.membership(), (1, 2));
    }

    #[test]
    fn membership_changes_only_when_committed() {
        let c = ClusterHealth::new("a", 1);
        let first = c.set_members(&[addr(1), addr(2)]);
        c.set_check_failed(&first[0], true);
        // A compiled but rejected config: nothing changes.
        let _rejected = c.endpoints_for(&[addr(3)]);
        assert_eq!(c.membership(), (1, 2));
        assert!(Arc::ptr_eq(&c.endpoints_for(&[addr(1)])[0], &first[0]));
    }

    #[test]
    fn panic_mode_starts_below_the_threshold() {
        let c = ClusterHealth::new("a", 1);
        let m = c.set_members(&[addr(1), addr(2), addr(3), addr(4)]);
        assert!(!c.in_panic(50));
        c.set_check_failed(&m[0], true);
        c.set_check_failed(&m[1], true);
        // 2 of 4 available: exactly 50% is not panic.
        assert!(!c.in_panic(50));
        c.set_check_failed(&m[2], true);
        assert!(c.in_panic(50));
        assert!(!c.in_panic(0));
    }
}
