//! Per-core statistics for listeners and clusters, merged when read.
//!
//! Workers write only their own slot (see [`crate::per_core`]); the admin
//! thread sums the slots at scrape time. Stats objects are registered by name
//! in [`StatsRegistry`] and survive config reloads, so counters stay monotonic
//! when a listener or cluster is reconfigured.
//!
//! Rendering to the Prometheus text format is the control side's job; this
//! module only exposes merged values.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client_limit::ClientCounts;
use crate::local_resource::LocalResourceStats;
use crate::per_core::{Counter, Gauge, PerCore, sum};

/// Why a proxied connection ended; one label value each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished with a clean close (FIN) each way.
    Completed,
    /// No bytes moved either way for the listener's `idle_timeout`.
    IdleTimeout,
    /// No endpoint of the cluster accepted a connection.
    UpstreamUnavailable,
    /// The client reset the connection or an I/O error happened on its side;
    /// the upstream side was reset in turn.
    DownstreamError,
    /// The upstream reset the connection or an I/O error happened on its side;
    /// the client side was reset in turn.
    UpstreamError,
    /// The client's TLS handshake failed (bad or missing certificate,
    /// authorization denied, protocol error, timeout).
    TlsError,
    /// The cluster's circuit breaker (max_connections) was open.
    UpstreamOverflow,
    /// The proxy ran out of a local resource (descriptors, buffers, local
    /// ports) while connecting upstream; no endpoint was blamed.
    LocalResource,
    /// The client sent nothing within the listener's `first_byte_timeout`.
    FirstByteTimeout,
    /// A capturing listener (`original_destination`) got a connection that
    /// iptables had not redirected to it (made to the proxy's port
    /// directly): there is nowhere to forward it but back into the proxy.
    NotRedirected,
    /// A listener taking PROXY protocol got a malformed header, none when
    /// it is `required`, or one that did not arrive within its timeout.
    ProxyProtocol,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Completed,
        CloseReason::IdleTimeout,
        CloseReason::UpstreamUnavailable,
        CloseReason::DownstreamError,
        CloseReason::UpstreamError,
        CloseReason::TlsError,
        CloseReason::UpstreamOverflow,
        CloseReason::LocalResource,
        CloseReason::FirstByteTimeout,
        CloseReason::NotRedirected,
        CloseReason::ProxyProtocol,
    ];

    /// The metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::UpstreamUnavailable => "upstream_unavailable",
            CloseReason::DownstreamError => "downstream_error",
            CloseReason::UpstreamError => "upstream_error",
            CloseReason::TlsError => "tls_error",
            CloseReason::UpstreamOverflow => "upstream_overflow",
            CloseReason::LocalResource => "local_resource",
            CloseReason::FirstByteTimeout => "first_byte_timeout",
            CloseReason::NotRedirected => "not_redirected",
            CloseReason::ProxyProtocol => "proxy_protocol",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the connect-latency histogram buckets.
pub const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds (seconds) of the connection-duration histogram buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    14400.0,
];

const MAX_BUCKETS: usize = 17; // 16 bounds + the +Inf bucket

/// A fixed-bucket histogram with one writer per core. Buckets are stored
/// non-cumulatively and summed on read.
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [Counter; MAX_BUCKETS],
    sum_nanos: Counter,
}

impl Histogram {
    /// Records one observation against `bounds`.
    #[inline]
    pub fn record(&self, bounds: &[f64], value: Duration) {
        let secs = value.as_secs_f64();
        let idx = bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(bounds.len());
        self.buckets[idx.min(MAX_BUCKETS - 1)].inc();
        self.sum_nanos
            .add(value.as_nanos().min(u64::MAX as u128) as u64);
    }
}

/// A histogram merged across cores: cumulative counts per bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`; the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Merges per-core histograms recorded against `bounds`.
pub fn merge_histograms<'a>(
    bounds: &[f64],
    per_core: impl Iterator<Item = &'a Histogram>,
) -> HistogramSnapshot {
    let mut raw = vec![0u64; bounds.len() + 1];
    let mut sum_nanos = 0u64;
    for h in per_core {
        for (i, slot) in raw.iter_mut().enumerate() {
            *slot += h.buckets[i].get();
        }
        sum_nanos = sum_nanos.wrapping_add(h.sum_nanos.get());
    }
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(raw.len());
    for (i, n) in raw.iter().enumerate() {
        cumulative += n;
        buckets.push((bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
    }
    HistogramSnapshot {
        buckets,
        sum: sum_nanos as f64 / 1e9,
        count: cumulative,
    }
}

/// One worker's listener counters.
#[derive(Default, Debug)]
pub struct ListenerCoreStats {
    pub(crate) accepted: Counter,
    pub(crate) rejected_max_connections: Counter,
    pub(crate) rejected_per_client: Counter,
    pub(crate) rejected_local_resource: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) closed: [Counter; CloseReason::ALL.len()],
    pub(crate) duration: Histogram,
    /// Terminated TLS sessions by data path: [userspace, kernel].
    pub(crate) tls_sessions: [Counter; 2],
    /// Forwarded connections by path: [buffered, splice].
    pub(crate) forward_paths: [Counter; 2],
}

/// Statistics of one listener, by name.
#[derive(Debug)]
pub struct ListenerStats {
    /// Open downstream connections on every core. Shared (one atomic per
    /// listener) because `max_connections` is a per-listener limit; touched
    /// once per connection open and close, never per read.
    pub(crate) active: AtomicU64,
    /// Peers refused by the listener's authorization policy. Shared by
    /// every core (the TLS verifier has no core index); touched only on a
    /// denial.
    pub authz_denied: Arc<AtomicU64>,
    pub(crate) cores: PerCore<ListenerCoreStats>,
    /// Open connections per client address (`max_connections_per_client`).
    pub per_client: ClientCounts,
    /// The process's local resource errors (one object for every listener
    /// and cluster).
    pub(crate) local: Arc<LocalResourceStats>,
}

/// Merged listener statistics, for the admin API and the exposition.
#[derive(Debug, Clone)]
pub struct ListenerTotals {
    /// Connections accepted (including rejected ones).
    pub accepted: u64,
    /// Connections currently open.
    pub active: u64,
    /// Connections closed at once because `max_connections` was reached.
    pub rejected_max_connections: u64,
    /// Connections closed at once because their client address held
    /// `max_connections_per_client` already.
    pub rejected_per_client: u64,
    /// Connections closed at once because the data plane was out of
    /// descriptors (or at its share of them).
    pub rejected_local_resource: u64,
    /// Bytes read from downstream clients.
    pub bytes_received: u64,
    /// Bytes written to downstream clients.
    pub bytes_sent: u64,
    /// Closed connections by reason.
    pub closed: Vec<(CloseReason, u64)>,
    /// Connection durations.
    pub duration: HistogramSnapshot,
    /// Peers refused by authorization.
    pub authz_denied: u64,
    /// Terminated TLS sessions whose records rustls processed.
    pub tls_sessions_userspace: u64,
    /// Terminated TLS sessions handed to kernel TLS.
    pub tls_sessions_ktls: u64,
    /// Closed connections whose bytes all went through user-space buffers.
    pub forwarded_buffered: u64,
    /// Closed connections of which at least one direction spliced.
    pub forwarded_splice: u64,
}

impl ListenerStats {
    fn new(workers: usize, local: Arc<LocalResourceStats>) -> Self {
        Self {
            active: AtomicU64::new(0),
            authz_denied: Arc::new(AtomicU64::new(0)),
            cores: PerCore::new(workers),
            per_client: ClientCounts::default(),
            local,
        }
    }

    /// Merges every core's counters.
    pub fn totals(&self) -> ListenerTotals {
        ListenerTotals {
            accepted: sum(&self.cores, |c| c.accepted.get()),
            active: self.active.load(Ordering::Relaxed),
            rejected_max_connections: sum(&self.cores, |c| c.rejected_max_connections.get()),
            rejected_per_client: sum(&self.cores, |c| c.rejected_per_client.get()),
            rejected_local_resource: sum(&self.cores, |c| c.rejected_local_resource.get()),
            bytes_received: sum(&self.cores, |c| c.bytes_received.get()),
            bytes_sent: sum(&self.cores, |c| c.bytes_sent.get()),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (*r, sum(&self.cores, |c| c.closed[r.index()].get())))
                .collect(),
            duration: merge_histograms(DURATION_BUCKETS, self.cores.iter().map(|c| &c.duration)),
            authz_denied: self.authz_denied.load(Ordering::Relaxed),
            tls_sessions_userspace: sum(&self.cores, |c| c.tls_sessions[0].get()),
            tls_sessions_ktls: sum(&self.cores, |c| c.tls_sessions[1].get()),
            forwarded_buffered: sum(&self.cores, |c| c.forward_paths[0].get()),
            forwarded_splice: sum(&self.cores, |c| c.forward_paths[1].get()),
        }
    }

    /// Connections open now on each worker (accepted, less refused, less
    /// closed: per-core counters, so no shared state is added).
    pub fn active_by_core(&self) -> Vec<u64> {
        self.cores
            .iter()
            .map(|c| {
                let refused = c.rejected_max_connections.get()
                    + c.rejected_per_client.get()
                    + c.rejected_local_resource.get();
                let closed: u64 = c.closed.iter().map(|n| n.get()).sum();
                c.accepted.get().saturating_sub(refused + closed)
            })
            .collect()
    }

    pub(crate) fn record_close(&self, core: usize, reason: CloseReason, duration: Duration) {
        let c = self.cores.get(core);
        c.closed[reason.index()].inc();
        c.duration.record(DURATION_BUCKETS, duration);
    }
}

/// One worker's cluster counters.
#[derive(Default, Debug)]
pub struct ClusterCoreStats {
    pub(crate) connections: Counter,
    pub(crate) active: Gauge,
    pub(crate) connect_failures: Counter,
    pub(crate) connect_timeouts: Counter,
    pub(crate) unavailable: Counter,
    pub(crate) tls_failures: Counter,
    pub(crate) overflow: Counter,
    pub(crate) pending_overflow: Counter,
    /// Requests refused by `max_requests` (HTTP).
    pub(crate) request_overflow: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) connect_latency: Histogram,
}

/// Statistics of one cluster, by name.
#[derive(Debug)]
pub struct ClusterStats {
    /// Upstream connections open now over every core. Shared because the
    /// circuit breaker is a per-cluster limit; touched once per connection
    /// open and close, never per read.
    pub(crate) open: AtomicU64,
    /// Upstream connects in progress over every core (`max_pending_requests`).
    pub(crate) pending: AtomicU64,
    /// Requests in flight over every core (`max_requests`, HTTP).
    pub(crate) requests_open: AtomicU64,
    /// Retries in progress over every core (`max_retries`, HTTP).
    pub(crate) retries_open: AtomicU64,
    pub(crate) cores: PerCore<ClusterCoreStats>,
    /// The process's local resource errors.
    pub(crate) local: Arc<LocalResourceStats>,
}

/// Merged cluster statistics.
#[derive(Debug, Clone)]
pub struct ClusterTotals {
    /// Upstream connections established.
    pub connections: u64,
    /// Upstream connections open now.
    pub active: i64,
    /// Connect attempts refused or failed.
    pub connect_failures: u64,
    /// Connect attempts that ran out of `connect_timeout`.
    pub connect_timeouts: u64,
    /// Downstream connections closed because no endpoint could be reached.
    pub unavailable: u64,
    /// TLS handshakes with endpoints that failed.
    pub tls_failures: u64,
    /// Connections refused by the circuit breaker.
    pub overflow: u64,
    /// Connections refused because `max_pending_requests` connects were
    /// already in progress.
    pub pending_overflow: u64,
    /// Requests refused because `max_requests` were in flight (HTTP).
    pub request_overflow: u64,
    /// Requests in flight now (HTTP).
    pub active_requests: u64,
    /// Retries in progress now (HTTP).
    pub active_retries: u64,
    /// Bytes written to upstream endpoints.
    pub bytes_sent: u64,
    /// Bytes read from upstream endpoints.
    pub bytes_received: u64,
    /// Time to establish upstream connections.
    pub connect_latency: HistogramSnapshot,
}

impl ClusterStats {
    fn new(workers: usize, local: Arc<LocalResourceStats>) -> Self {
        Self {
            open: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            requests_open: AtomicU64::new(0),
            retries_open: AtomicU64::new(0),
            cores: PerCore::new(workers),
            local,
        }
    }

    /// Upstream connections open now, by worker.
    pub fn active_by_core(&self) -> Vec<i64> {
        self.cores.iter().map(|c| c.active.get()).collect()
    }

    /// Merges every core's counters.
    pub fn totals(&self) -> ClusterTotals {
        ClusterTotals {
            connections: sum(&self.cores, |c| c.connections.get()),
            active: self.cores.iter().map(|c| c.active.get()).sum(),
            connect_failures: sum(&self.cores, |c| c.connect_failures.get()),
            connect_timeouts: sum(&self.cores, |c| c.connect_timeouts.get()),
            unavailable: sum(&self.cores, |c| c.unavailable.get()),
            tls_failures: sum(&self.cores, |c| c.tls_failures.get()),
            overflow: sum(&self.cores, |c| c.overflow.get()),
            pending_overflow: sum(&self.cores, |c| c.pending_overflow.get()),
            request_overflow: sum(&self.cores, |c| c.request_overflow.get()),
            active_requests: self.requests_open.load(Ordering::Relaxed),
            active_retries: self.retries_open.load(Ordering::Relaxed),
            bytes_sent: sum(&self.cores, |c| c.bytes_sent.get()),
            bytes_received: sum(&self.cores, |c| c.bytes_received.get()),
            connect_latency: merge_histograms(
                CONNECT_BUCKETS,
                self.cores.iter().map(|c| &c.connect_latency),
            ),
        }
    }
}

/// Every listener's and cluster's stats, by name. Entries are created when a
/// config first names them and kept afterwards, so counters never go back.
#[derive(Debug)]
pub struct StatsRegistry {
    workers: usize,
    local: Arc<LocalResourceStats>,
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
}

impl StatsRegistry {
    /// A registry for `workers` cores.
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            local: Arc::new(LocalResourceStats::new(workers)),
            listeners: Mutex::new(BTreeMap::new()),
            clusters: Mutex::new(BTreeMap::new()),
        }
    }

    /// The stats of listener `name`, created on first use.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        let mut map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| Arc::new(ListenerStats::new(self.workers, self.local.clone())))
            .clone()
    }

    /// The stats of cluster `name`, created on first use.
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| Arc::new(ClusterStats::new(self.workers, self.local.clone())))
            .clone()
    }

    /// Every listener's stats, by name.
    pub fn listeners(&self) -> Vec<(String, Arc<ListenerStats>)> {
        let map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every cluster's stats, by name.
    pub fn clusters(&self) -> Vec<(String, Arc<ClusterStats>)> {
        let map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Local resource errors of the whole process (descriptors, buffers,
    /// local ports).
    pub fn local_resources(&self) -> &LocalResourceStats {
        &self.local
    }

    /// Open downstream connections over every listener, removed ones included.
    pub fn active_connections(&self) -> u64 {
        let map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|l| l.active.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_merges_cores_cumulatively() {
        let stats = ClusterStats::new(2, Arc::new(LocalResourceStats::new(2)));
        stats
            .cores
            .get(0)
            .connect_latency
            .record(CONNECT_BUCKETS, Duration::from_micros(50));
        stats
            .cores
            .get(1)
            .connect_latency
            .record(CONNECT_BUCKETS, Duration::from_millis(3));
        stats
            .cores
            .get(1)
            .connect_latency
            .record(CONNECT_BUCKETS, Duration::from_secs(60));
        let h = stats.totals().connect_latency;
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], (0.0001, 1));
        // 3 ms falls in the 5 ms bucket.
        let five_ms = h.buckets.iter().find(|(b, _)| *b == 0.005).map(|(_, n)| *n);
        assert_eq!(five_ms, Some(2));
        assert_eq!(h.buckets.last().map(|(_, n)| *n), Some(3));
        assert!((h.sum - 60.00305).abs() < 1e-6);
    }

    #[test]
    fn registry_returns_the_same_stats_for_a_name() {
        let reg = StatsRegistry::new(2);
        let a = reg.listener("db");
        a.cores.get(1).accepted.inc();
        assert_eq!(reg.listener("db").totals().accepted, 1);
        assert_eq!(reg.listeners().len(), 1);
    }
}
