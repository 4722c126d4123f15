//! Opening the upstream connection: pick an endpoint, connect within
//! `connect_timeout`, and on failure move on to the next endpoint, up to
//! `connect_attempts` distinct endpoints.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::fd_share;
use crate::health::{Outcome, outlier};
use crate::local_resource::ResourceKind;
use crate::metrics::CONNECT_BUCKETS;
use crate::proxy_protocol::{self, Outgoing, Version};
use crate::runtime::{self, TcpStream};
use crate::snapshot::Cluster;
use crate::stream::Stream;
use crate::tls::stream::TlsStream;
use crate::tls::{ClientTls, HandshakeError};

/// Why no upstream connection could be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The cluster has no endpoints.
    #[error("cluster has no endpoints")]
    NoEndpoints,
    /// Every endpoint is ejected or failing its health check, and panic
    /// mode is off (`panic_threshold: 0`).
    #[error("no healthy endpoint (all ejected or failing health checks; panic mode is off)")]
    NoHealthyEndpoints,
    /// This host ran out of descriptors, buffers or local ports while
    /// connecting: no endpoint is to blame, and other endpoints would fail
    /// the same way, so no further attempt is made.
    #[error("out of a local resource ({}) while connecting to {addr}: {error}", kind.as_str())]
    LocalResource {
        /// What ran out.
        kind: ResourceKind,
        /// The endpoint being connected to.
        addr: SocketAddr,
        /// The error.
        error: io::Error,
    },
    /// The cluster sends each connection to its original destination
    /// (`discovery: original_destination`), and this one has none: its
    /// listener does not recover it (`original_destination: true`).
    #[error(
        "the cluster forwards to each connection's original destination, and this connection has none (its listener lacks `original_destination: true`)"
    )]
    NoOriginalDestination,
    /// `max_pending_requests` connects were already in progress (HTTP).
    #[error("max_pending_requests upstream connects are already in progress")]
    PendingOverflow,
    /// Every attempt failed; the last failure is kept.
    #[error("{attempts} connect attempt(s) failed, last to {addr}: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// Endpoint of the last attempt.
        addr: SocketAddr,
        /// What went wrong with it.
        last: AttemptError,
    },
}

/// Why one connect attempt failed.
#[derive(Debug, Error)]
pub enum AttemptError {
    /// Refused, unreachable, or another socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No answer within `connect_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake with the endpoint failed (wrong identity, unknown
    /// CA, protocol error, timeout).
    #[error("TLS handshake: {0}")]
    Tls(HandshakeError),
}

/// An established upstream connection.
pub(crate) struct Upstream {
    pub stream: Stream,
    pub addr: SocketAddr,
    /// Index of the endpoint in the cluster.
    pub index: usize,
    /// When the successful attempt started (latency samples start here).
    pub started: Instant,
}

/// The endpoint index of a connection to an original destination
/// (`original_destination` clusters): not one of the cluster's endpoints,
/// so per-endpoint state (health, ejection, balancer) is left alone.
pub(crate) const ORIGINAL_DESTINATION: usize = usize::MAX;

/// Connects to one of `cluster`'s endpoints from worker `core`, for a
/// client with hash key `key` (consistent-hashing policies) whose
/// connection's original destination is `original` (capturing listeners).
/// `origin` is what a PROXY protocol header names, for clusters that send
/// one.
pub(crate) async fn connect_upstream(
    cluster: &Cluster,
    core: usize,
    key: u64,
    original: Option<SocketAddr>,
    origin: Option<&Outgoing<'_>>,
) -> Result<Upstream, ConnectError> {
    if cluster.original_destination.is_some() {
        let addr = original_target(cluster, core, original)?;
        return connect_original(cluster, core, addr, origin).await;
    }
    let endpoints = &cluster.endpoints;
    if endpoints.is_empty() {
        return Err(ConnectError::NoEndpoints);
    }
    let stats = cluster.stats.cores.get(core);
    let Some((first, healthy_only)) = pick(cluster, core, key) else {
        stats.unavailable.inc();
        return Err(ConnectError::NoHealthyEndpoints);
    };
    connect_from(cluster, core, first, healthy_only, origin).await
}

/// Where an `original_destination` cluster sends a connection whose
/// original destination is `original`; `Err` (counted as unavailable) when
/// the connection has none (its listener does not capture).
pub(crate) fn original_target(
    cluster: &Cluster,
    core: usize,
    original: Option<SocketAddr>,
) -> Result<SocketAddr, ConnectError> {
    match (cluster.original_destination, original) {
        (Some(od), Some(dst)) => Ok(od.target(dst)),
        _ => {
            cluster.stats.cores.get(core).unavailable.inc();
            Err(ConnectError::NoOriginalDestination)
        }
    }
}

/// Picks the endpoint a request or connection should go to first, with
/// health, ejection and panic mode applied; `Err` (counted as unavailable)
/// when there is none. The `bool` says whether failover must skip
/// unavailable endpoints (false in panic mode).
pub(crate) fn pick_endpoint(
    cluster: &Cluster,
    core: usize,
    key: u64,
) -> Result<(usize, bool), ConnectError> {
    if cluster.endpoints.is_empty() {
        return Err(ConnectError::NoEndpoints);
    }
    pick(cluster, core, key).ok_or_else(|| {
        cluster.stats.cores.get(core).unavailable.inc();
        ConnectError::NoHealthyEndpoints
    })
}

/// Connects to `addr`, a connection's original destination (as the
/// cluster rewrites it): one attempt, there being no other endpoint to fail
/// over to, and no endpoint health to charge.
pub(crate) async fn connect_original(
    cluster: &Cluster,
    core: usize,
    addr: SocketAddr,
    origin: Option<&Outgoing<'_>>,
) -> Result<Upstream, ConnectError> {
    let started = Instant::now();
    match attempt(cluster, core, addr, origin).await {
        Attempt::Connected(stream) => Ok(Upstream {
            stream,
            addr,
            index: ORIGINAL_DESTINATION,
            started,
        }),
        Attempt::Failed(last) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %last, "upstream connect to the original destination failed");
            cluster.stats.cores.get(core).unavailable.inc();
            Err(ConnectError::Exhausted {
                attempts: 1,
                addr,
                last,
            })
        }
        Attempt::Local(e) => Err(e),
    }
}

/// How one connect attempt ended.
enum Attempt {
    /// Connected (and TLS established when the cluster originates it).
    Connected(Stream),
    /// The endpoint failed (counted in the cluster's stats).
    Failed(AttemptError),
    /// This host ran short of a resource: nobody is to blame, and no
    /// further attempt is to be made.
    Local(ConnectError),
}

/// One connect attempt to `addr` within the cluster's `connect_timeout`,
/// with the PROXY protocol header (clusters that send one) and TLS
/// origination; successes and failures are counted in the cluster's stats
/// on worker `core`.
async fn attempt(
    cluster: &Cluster,
    core: usize,
    addr: SocketAddr,
    origin: Option<&Outgoing<'_>>,
) -> Attempt {
    let stats = cluster.stats.cores.get(core);
    let started = Instant::now();
    match runtime::timeout(cluster.connect_timeout, runtime::connect(addr)).await {
        Some(Ok(stream)) if !fd_share::within(stream.as_raw_fd()) => {
            // Past the data plane's share of descriptors (the rest is
            // the admin API's): give this one back, blame nobody.
            drop(stream);
            Attempt::Local(local_resource(
                cluster,
                core,
                addr,
                ResourceKind::Emfile,
                ResourceKind::share_exhausted(),
            ))
        }
        Some(Err(e)) if ResourceKind::of(&e).is_some() => {
            let kind = ResourceKind::of(&e).unwrap_or(ResourceKind::Emfile);
            Attempt::Local(local_resource(cluster, core, addr, kind, e))
        }
        Some(Ok(stream)) => {
            // Interactive protocols (TLS handshakes, RPC) stall on Nagle
            // plus delayed ACK; a proxy must not add that.
            let _ = stream.set_nodelay(true);
            if let Some(version) = cluster.send_proxy_protocol {
                // Before TLS: the header is for the endpoint's TCP layer.
                if let Err(e) = send_proxy_header(&stream, addr, version, origin).await {
                    stats.connect_failures.inc();
                    return Attempt::Failed(AttemptError::Io(e));
                }
            }
            match secure(stream, addr, cluster).await {
                Ok(stream) => {
                    stats
                        .connect_latency
                        .record(CONNECT_BUCKETS, started.elapsed());
                    stats.connections.inc();
                    Attempt::Connected(stream)
                }
                Err(e) => {
                    stats.tls_failures.inc();
                    Attempt::Failed(AttemptError::Tls(e))
                }
            }
        }
        Some(Err(e)) => {
            stats.connect_failures.inc();
            Attempt::Failed(AttemptError::Io(e))
        }
        None => {
            stats.connect_timeouts.inc();
            Attempt::Failed(AttemptError::Timeout(cluster.connect_timeout))
        }
    }
}

/// Connects to endpoint `first` of `cluster`, failing over to the next
/// endpoints in index order (skipping unavailable ones when
/// `healthy_only`), up to `connect_attempts` distinct endpoints.
pub(crate) async fn connect_from(
    cluster: &Cluster,
    core: usize,
    first: usize,
    healthy_only: bool,
    origin: Option<&Outgoing<'_>>,
) -> Result<Upstream, ConnectError> {
    let endpoints = &cluster.endpoints;
    let stats = cluster.stats.cores.get(core);
    let attempts = (cluster.connect_attempts.max(1) as usize).min(endpoints.len());
    // The first pick, then the following endpoints in index order, skipping
    // unavailable ones unless the cluster is in panic mode.
    let candidates = (0..endpoints.len())
        .map(|i| (first + i) % endpoints.len())
        .filter(|&i| i == first || !healthy_only || endpoints[i].health.is_available())
        .take(attempts);
    let mut last = None;
    let mut made = 0;
    for index in candidates {
        made += 1;
        let endpoint = &endpoints[index];
        let addr = endpoint.addr;
        let started = Instant::now();
        let err = match attempt(cluster, core, addr, origin).await {
            Attempt::Connected(stream) => {
                return Ok(Upstream {
                    stream,
                    addr,
                    index,
                    started,
                });
            }
            Attempt::Local(e) => return Err(e),
            Attempt::Failed(e) => e,
        };
        outlier::record(
            &cluster.health,
            &endpoint.health,
            cluster.outlier.as_ref(),
            core,
            Outcome::LocalOriginFailure,
        );
        tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %err, "upstream connect failed");
        last = Some((addr, err));
    }
    stats.unavailable.inc();
    match last {
        Some((addr, last)) => Err(ConnectError::Exhausted {
            attempts: made as u32,
            addr,
            last,
        }),
        None => Err(ConnectError::NoEndpoints),
    }
}

/// Counts a local resource error of a connect attempt (never against the
/// endpoint) and makes it the connection's error.
fn local_resource(
    cluster: &Cluster,
    core: usize,
    addr: SocketAddr,
    kind: ResourceKind,
    error: io::Error,
) -> ConnectError {
    cluster
        .stats
        .local
        .record(core, kind, "upstream connect", &error);
    ConnectError::LocalResource { kind, addr, error }
}

/// Re-draws tried when the policy's pick is unavailable, before scanning.
const REPICKS: u64 = 4;

/// The endpoint to try first, and whether failover should skip unavailable
/// endpoints (false in panic mode); `None` when no endpoint is available
/// and panic mode is off. An unavailable pick is re-drawn from
/// the policy (a new key for the hashing policies, so one client keeps its
/// fallback), so the available endpoints keep their relative shares.
#[inline]
fn pick(cluster: &Cluster, core: usize, key: u64) -> Option<(usize, bool)> {
    let endpoints = &cluster.endpoints;
    let n = endpoints.len();
    let first = cluster.balancer.pick(core, key) % n;
    if endpoints[first].health.is_available() {
        return Some((first, true));
    }
    if cluster.health.in_panic(cluster.panic_threshold) {
        cluster.health.panic_picks.get(core).inc();
        return Some((first, false));
    }
    for attempt in 1..=REPICKS {
        let i = cluster.balancer.pick(core, outlier::mix(key ^ attempt)) % n;
        if endpoints[i].health.is_available() {
            return Some((i, true));
        }
    }
    // Scan for any available endpoint; none means panic mode is off
    // (threshold 0) and nothing may be picked.
    (1..n)
        .map(|d| (first + d) % n)
        .find(|&i| endpoints[i].health.is_available())
        .map(|i| (i, true))
}

/// Moves a retry's pick off the endpoints already `tried` when another
/// may be picked: re-drawn from the policy first (so the others keep their
/// relative shares), then the next one in index order. Keeps `first` when
/// every candidate was tried (a one-endpoint cluster retries in place).
pub(crate) fn avoid_tried(
    cluster: &Cluster,
    core: usize,
    key: u64,
    first: (usize, bool),
    tried: &[usize],
) -> (usize, bool) {
    let (index, healthy_only) = first;
    if !tried.contains(&index) {
        return first;
    }
    let endpoints = &cluster.endpoints;
    let n = endpoints.len();
    let fits =
        |i: usize| !tried.contains(&i) && (!healthy_only || endpoints[i].health.is_available());
    for attempt in 1..=REPICKS {
        let i = cluster
            .balancer
            .pick(core, outlier::mix(key ^ (attempt << 32)))
            % n;
        if fits(i) {
            return (i, healthy_only);
        }
    }
    (1..n)
        .map(|d| (index + d) % n)
        .find(|&i| fits(i))
        .map_or(first, |i| (i, healthy_only))
}

/// Writes the PROXY protocol header a fresh upstream connection starts
/// with: the client's addresses (and, in v2, its TLVs). A connection with
/// no client (`origin` absent: the proxy's own, e.g. a mirrored request)
/// sends v2 `LOCAL`, or in v1 its own addresses, as the specification asks
/// of a sender's own connections (some receivers refuse `UNKNOWN`). Small
/// enough for the socket buffer of a new connection: one write.
pub(crate) async fn send_proxy_header(
    stream: &TcpStream,
    endpoint: SocketAddr,
    version: Version,
    origin: Option<&Outgoing<'_>>,
) -> io::Result<()> {
    let mut header = Vec::with_capacity(128);
    match (version, origin) {
        (Version::V1, Some(o)) => proxy_protocol::encode_v1(o, &mut header),
        (Version::V2, Some(o)) => proxy_protocol::encode_v2(o, &mut header),
        (Version::V1, None) => {
            let own = Outgoing {
                source: stream.local_addr()?,
                destination: endpoint,
                alpn: None,
                authority: None,
                spiffe_id: None,
                tls_version: None,
            };
            proxy_protocol::encode_v1(&own, &mut header)
        }
        (Version::V2, None) => proxy_protocol::encode_v2_local(&mut header),
    }
    runtime::send_all(stream, header).await.0
}

/// Runs the cluster's TLS handshake on a fresh connection, if it has TLS.
async fn secure(
    stream: TcpStream,
    addr: SocketAddr,
    cluster: &Cluster,
) -> Result<Stream, HandshakeError> {
    match &cluster.tls {
        None => Ok(Stream::Plain(stream)),
        Some(tls) => secure_with(stream, addr, tls).await,
    }
}

/// Runs a client TLS handshake with `tls` on a fresh connection to `addr`.
pub(crate) async fn secure_with(
    stream: TcpStream,
    addr: SocketAddr,
    tls: &ClientTls,
) -> Result<Stream, HandshakeError> {
    // Without a configured SNI the endpoint's IP names the session, and
    // rustls sends no SNI for IP addresses.
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    let session =
        rustls::ClientConnection::new(tls.config.clone(), name).map_err(HandshakeError::Tls)?;
    let tls_stream = TlsStream::handshake(
        stream,
        rustls::Connection::Client(session),
        tls.handshake_timeout,
        false,
    )
    .await?;
    Ok(Stream::Tls(Box::new(tls_stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Balancer, LbPolicy};
    use crate::health::HealthRegistry;
    use crate::metrics::StatsRegistry;
    use crate::snapshot::Endpoint;
    use std::sync::Arc;

    fn cluster(policy: LbPolicy, weights: &[u32], panic_threshold: u32) -> Cluster {
        let addrs: Vec<SocketAddr> = (0..weights.len())
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
            .collect();
        let health = HealthRegistry::new(1).cluster("c");
        let members = health.set_members(&addrs);
        let ids: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        Cluster {
            name: Arc::from("c"),
            endpoints: addrs
                .iter()
                .zip(members)
                .zip(weights)
                .map(|((addr, health), weight)| Endpoint {
                    addr: *addr,
                    hostname: None,
                    weight: *weight,
                    metadata: Arc::from(Vec::new()),
                    health,
                })
                .collect(),
            connect_timeout: Duration::from_secs(1),
            connect_attempts: 3,
            balancer: Balancer::new(policy, &ids, weights, 1, 9),
            tls: None,
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
            stats: StatsRegistry::new(1).cluster("c"),
            health,
            outlier: None,
            health_check: None,
            panic_threshold,
            original_destination: None,
            send_proxy_protocol: None,
        }
    }

    fn shares(c: &Cluster, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; c.endpoints.len()];
        for key in 0..picks as u64 {
            let (i, _) = pick(c, 0, outlier::mix(key)).expect("a pick");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn unavailable_endpoints_are_skipped_and_the_others_keep_their_shares() {
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::RingHash,
            LbPolicy::Maglev,
        ] {
            let c = cluster(policy, &[2, 1, 2, 1], 50);
            c.health.set_check_failed(&c.endpoints[0].health, true);
            let counts = shares(&c, 30_000);
            assert_eq!(counts[0], 0, "{policy:?}: {counts:?}");
            // Endpoints 1, 2, 3 keep their 1:2:1 weights.
            let share2 = counts[2] as f64 / 30_000.0;
            assert!((0.45..=0.55).contains(&share2), "{policy:?}: {counts:?}");
        }
    }

    #[test]
    fn panic_mode_ignores_health_and_panic_off_refuses() {
        let c = cluster(LbPolicy::RoundRobin, &[1, 1, 1, 1], 50);
        for e in &c.endpoints[..3] {
            c.health.set_check_failed(&e.health, true);
        }
        // 1 of 4 available (25% < 50%): every endpoint gets picks.
        let counts = shares(&c, 400);
        assert!(counts.iter().all(|n| *n > 0), "{counts:?}");
        assert!(c.health.panic_picks() > 0);
        let off = cluster(LbPolicy::RoundRobin, &[1, 1], 0);
        for e in &off.endpoints {
            off.health.set_check_failed(&e.health, true);
        }
        assert!(pick(&off, 0, 1).is_none());
    }
}
