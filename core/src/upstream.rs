//! Upstream connections for protocol handlers (l7): the same endpoint
//! picking, connect, failover, TLS origination and breakers the TCP path
//! uses, behind a small public surface.
//!
//! - [`pick`] and [`connect`]: pick an endpoint (balancer, health,
//!   ejection, panic mode; or the connection's original destination for
//!   an `original_destination` cluster) and connect, failing over within
//!   `connect_attempts`;
//! - [`ConnectionSlot`]: one unit of the cluster's `max_connections`
//!   breaker, held by an upstream connection for its whole life (pooled
//!   idle time included), with the cluster's active-connection gauge;
//! - [`RequestSlot`]: one unit of `max_requests` (active requests);
//! - [`RetrySlot`]: one unit of `max_retries` (retries in progress).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::connect::ConnectError;
use crate::metrics::ClusterStats;
use crate::snapshot::Cluster;
use crate::stream::Stream;

/// An established upstream connection.
#[derive(Debug)]
pub struct UpstreamConnection {
    /// The byte stream (TLS when the cluster originates it).
    pub stream: Stream,
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// The endpoint's index in the cluster it was picked from.
    pub index: usize,
    /// When the successful connect attempt started.
    pub started: Instant,
}

/// The [`Pick::index`] (and [`UpstreamConnection::index`]) of a connection
/// to an original destination (`original_destination` clusters): not one
/// of the cluster's endpoints, so per-endpoint state is left alone
/// ([`Cluster::record_outcome`] ignores it; balancers of such clusters keep
/// no per-endpoint state).
pub const ORIGINAL_DESTINATION: usize = crate::connect::ORIGINAL_DESTINATION;

/// Picks the endpoint a request should go to (balancer, health, ejection,
/// panic mode) on worker `core`; `key` is the hash key of the
/// consistent-hashing policies (see [`crate::balance::client_key`]). For an
/// `original_destination` cluster the pick is the connection's `original`
/// destination (from its [`crate::protocol::ConnectionFacts`]) as the
/// cluster rewrites it. `Err` (counted as unavailable) when no endpoint
/// may be picked.
#[inline]
pub fn pick(
    cluster: &Cluster,
    core: usize,
    key: u64,
    original: Option<SocketAddr>,
) -> Result<Pick, ConnectError> {
    pick_avoiding(cluster, core, key, &[], original)
}

/// Like [`pick`], for a retry: an endpoint not in `tried` when one may be
/// picked (Envoy's `previous_hosts` retry predicate), else the policy's.
/// An original destination is the only one there is: a retry goes there
/// again.
pub fn pick_avoiding(
    cluster: &Cluster,
    core: usize,
    key: u64,
    tried: &[usize],
    original: Option<SocketAddr>,
) -> Result<Pick, ConnectError> {
    if cluster.original_destination.is_some() {
        let addr = crate::connect::original_target(cluster, core, original)?;
        return Ok(Pick {
            index: ORIGINAL_DESTINATION,
            addr,
            healthy_only: false,
        });
    }
    let (index, healthy_only) = crate::connect::pick_endpoint(cluster, core, key)?;
    let (index, healthy_only) =
        crate::connect::avoid_tried(cluster, core, key, (index, healthy_only), tried);
    Ok(Pick {
        index,
        addr: cluster.endpoints[index].addr,
        healthy_only,
    })
}

/// An endpoint chosen by [`pick`].
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    /// The endpoint's index in the cluster, or [`ORIGINAL_DESTINATION`].
    pub index: usize,
    /// The address to connect to.
    pub addr: SocketAddr,
    healthy_only: bool,
}

/// Connects to the picked endpoint, failing over to the next ones within
/// the cluster's `connect_attempts` (an original destination has none to
/// fail over to), under its `max_pending_requests` breaker (connects in
/// progress).
pub async fn connect(
    cluster: &Cluster,
    core: usize,
    pick: Pick,
    origin: Option<&crate::proxy_protocol::Outgoing<'_>>,
) -> Result<UpstreamConnection, ConnectError> {
    let pending = &cluster.stats.pending;
    if pending.fetch_add(1, Ordering::Relaxed) >= cluster.max_pending {
        pending.fetch_sub(1, Ordering::Relaxed);
        cluster.stats.cores.get(core).pending_overflow.inc();
        return Err(ConnectError::PendingOverflow);
    }
    let result = if pick.index == ORIGINAL_DESTINATION {
        Box::pin(crate::connect::connect_original(
            cluster, core, pick.addr, origin,
        ))
        .await
    } else {
        Box::pin(crate::connect::connect_from(
            cluster,
            core,
            pick.index,
            pick.healthy_only,
            origin,
        ))
        .await
    };
    pending.fetch_sub(1, Ordering::Relaxed);
    let c = result?;
    Ok(UpstreamConnection {
        stream: c.stream,
        addr: c.addr,
        index: c.index,
        started: c.started,
    })
}

/// One open upstream connection as the cluster's breaker and gauges count
/// it. Released on drop, on the worker that took it.
#[derive(Debug)]
pub struct ConnectionSlot {
    stats: Arc<ClusterStats>,
    core: usize,
}

impl ConnectionSlot {
    /// Takes a slot of `cluster`'s `max_connections`, or counts an
    /// overflow and returns `None` when the breaker is open.
    pub fn acquire(cluster: &Cluster, core: usize) -> Option<ConnectionSlot> {
        let stats = &cluster.stats;
        if stats.open.fetch_add(1, Ordering::Relaxed) >= cluster.max_connections {
            stats.open.fetch_sub(1, Ordering::Relaxed);
            stats.cores.get(core).overflow.inc();
            return None;
        }
        stats.cores.get(core).active.add(1);
        Some(ConnectionSlot {
            stats: stats.clone(),
            core,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.stats.cores.get(self.core).active.add(-1);
    }
}

/// One active request as the cluster's `max_requests` breaker counts it.
/// The count is one atomic per cluster, touched twice per request: the
/// breaker is a cluster-wide limit (Envoy's `max_requests`), and splitting
/// it per core would let one busy core starve while another idles.
#[derive(Debug)]
pub struct RequestSlot<'a> {
    cluster: &'a Cluster,
}

impl<'a> RequestSlot<'a> {
    /// Takes a slot of `cluster`'s `max_requests`, or counts an overflow
    /// and returns `None`.
    #[inline]
    pub fn acquire(cluster: &'a Cluster, core: usize) -> Option<RequestSlot<'a>> {
        let open = &cluster.stats.requests_open;
        if open.fetch_add(1, Ordering::Relaxed) >= cluster.max_requests {
            open.fetch_sub(1, Ordering::Relaxed);
            cluster.stats.cores.get(core).request_overflow.inc();
            return None;
        }
        Some(RequestSlot { cluster })
    }
}

impl Drop for RequestSlot<'_> {
    #[inline]
    fn drop(&mut self) {
        self.cluster
            .stats
            .requests_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One retry in progress as the cluster's `max_retries` breaker counts
/// it (Envoy's: from the moment the retry is granted until its attempt
/// ends). Retries are rare, so one shared atomic costs nothing per request.
#[derive(Debug)]
pub struct RetrySlot<'a> {
    cluster: &'a Cluster,
}

impl<'a> RetrySlot<'a> {
    /// Takes a slot of `cluster`'s `max_retries`, or `None` when that many
    /// retries are in progress.
    pub fn acquire(cluster: &'a Cluster) -> Option<RetrySlot<'a>> {
        let open = &cluster.stats.retries_open;
        if open.fetch_add(1, Ordering::Relaxed) >= cluster.max_retries {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RetrySlot { cluster })
    }
}

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.cluster
            .stats
            .retries_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cluster {
    /// Records what became of one request (or connection) to endpoint
    /// `index`, for outlier detection, on worker `core`.
    #[inline]
    pub fn record_outcome(&self, core: usize, index: usize, outcome: crate::health::Outcome) {
        if let Some(endpoint) = self.endpoints.get(index) {
            crate::health::outlier::record(
                &self.health,
                &endpoint.health,
                self.outlier.as_ref(),
                core,
                outcome,
            );
        }
    }
}
