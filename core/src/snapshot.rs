//! The compiled, immutable configuration the data plane runs on.
//!
//! `control` parses and validates YAML and produces a [`Snapshot`]; `core`
//! never sees YAML. A snapshot is published whole: new connections use the
//! newest one, established connections keep the listener and cluster they
//! started with until they close.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::balance::Balancer;
use crate::health::{ClusterHealth, EndpointHealth, HealthCheck, OutlierDetection};
use crate::metrics::{ClusterStats, ListenerStats};

/// One applied configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every applied config (1 at startup).
    pub version: u64,
    /// Listeners to run; their addresses are unique.
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// Clusters, including ones no listener references yet.
    pub clusters: Vec<Arc<Cluster>>,
}

/// A TCP listener: where to accept and where to forward.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Unique name, used in logs and metric labels.
    pub name: Arc<str>,
    /// Address to bind. Port 0 asks the kernel for a port, kept across reloads.
    pub listen: SocketAddr,
    /// Cluster that receives this listener's connections.
    pub cluster: Arc<Cluster>,
    /// Open connections allowed at once; excess ones are closed at once.
    pub max_connections: Option<u64>,
    /// Open connections allowed at once from one client address; excess
    /// ones are closed at once.
    pub max_connections_per_client: Option<u32>,
    /// Time a client has to send its first byte before anything is done
    /// for it upstream (client-speaks-first protocols); `None`: no limit.
    pub first_byte_timeout: Option<Duration>,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Whether every closed connection is logged.
    pub access_log: bool,
    /// When plain TCP connections may forward through the kernel (splice).
    pub zero_copy: ZeroCopy,
    /// Transparent capture: each accepted connection's original destination
    /// (before an iptables `REDIRECT` sent it here) is read once and kept in
    /// its facts, for `original_destination` clusters; a connection that was
    /// not redirected is closed (`not_redirected`). See [`crate::capture`].
    pub original_destination: bool,
    /// PROXY protocol headers expected before the client's bytes (see
    /// [`AcceptProxyProtocol`]); `None`: the TCP peer is the client.
    pub proxy_protocol: Option<AcceptProxyProtocol>,
    /// Some cluster sends PROXY protocol headers, which name the address a
    /// client connected to: it is noted for each connection (a wildcard
    /// bind's resolved with one `getsockname`, paid only then).
    pub resolve_local_address: bool,
    /// TLS termination (with mTLS and authorization when configured).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// TLS passthrough routing by the ClientHello's server name, in order;
    /// `cluster` takes what no route matches.
    pub sni_routes: Vec<SniRoute>,
    /// The protocol above TCP (HTTP), when the listener does not forward
    /// bytes as they are: the accepted (and TLS-terminated) connection is
    /// handed to it.
    pub protocol: Option<Arc<dyn crate::protocol::ProtocolHandler>>,
    /// Counters, shared with earlier snapshots of the same listener name.
    pub stats: Arc<ListenerStats>,
    /// Told of each proxied TCP connection (mesh metrics), if any.
    pub observer: Option<Arc<dyn crate::protocol::ConnectionObserver>>,
}

/// How a listener takes PROXY protocol (v1 or v2) headers: the address in
/// the header replaces the TCP peer as the client's, for logs, metrics,
/// hashing and `x-forwarded-for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptProxyProtocol {
    /// A connection without a header is closed (else served as it is).
    pub required: bool,
    /// Time the header has to arrive; past it the connection is closed
    /// (`required`) or served without one (`optional`).
    pub timeout: Duration,
}

/// When a plain TCP connection forwards its bytes with `splice(2)` (socket
/// -> pipe -> socket, no copy through user space) instead of user-space
/// buffers. Connections with TLS in user space always use buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroCopy {
    /// A direction switches to splice once its reads fill whole buffers
    /// (bulk), and back when they turn small.
    #[default]
    Auto,
    /// Splice from the first byte, whatever the traffic.
    Always,
    /// Never splice.
    Never,
}

impl ZeroCopy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ZeroCopy::Auto => "auto",
            ZeroCopy::Always => "always",
            ZeroCopy::Never => "never",
        }
    }
}

/// A set of interchangeable upstream endpoints.
#[derive(Debug)]
pub struct Cluster {
    /// Unique name, used in logs and metric labels.
    pub name: Arc<str>,
    /// Resolved endpoints, in configuration order.
    pub endpoints: Vec<Endpoint>,
    /// Time allowed for one TCP connect.
    pub connect_timeout: Duration,
    /// Distinct endpoints tried for one downstream connection before giving up.
    pub connect_attempts: u32,
    /// Picks the endpoint for each connection (per-core state inside).
    pub balancer: Balancer,
    /// TLS towards the endpoints (origination), if any.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// Circuit breaker: upstream connections allowed at once over all
    /// workers; a connection beyond it is refused at once and counted.
    pub max_connections: u64,
    /// Circuit breaker: upstream connects in progress at once over all
    /// workers (Envoy's `max_pending_requests`, which for TCP limits
    /// connection attempts); beyond it a connection is refused at once.
    pub max_pending: u64,
    /// Circuit breaker: requests in flight at once over all workers (HTTP;
    /// Envoy's `max_requests`); a request beyond it is answered 503 at once.
    pub max_requests: u64,
    /// Circuit breaker: retries in progress at once over all workers
    /// (HTTP; Envoy's `max_retries`); a retry beyond it is not made.
    pub max_retries: u64,
    /// Counters, shared with earlier snapshots of the same cluster name.
    pub stats: Arc<ClusterStats>,
    /// Endpoint health, shared with earlier snapshots of the same cluster.
    pub health: Arc<ClusterHealth>,
    /// Passive health: eject endpoints whose connections fail.
    pub outlier: Option<OutlierDetection>,
    /// Active health checks.
    pub health_check: Option<HealthCheck>,
    /// Below this percentage of available endpoints the balancer ignores
    /// health and spreads over all of them (Envoy's panic mode); 0 turns
    /// panic mode off.
    pub panic_threshold: u32,
    /// Envoy's ORIGINAL_DST cluster: `endpoints` is empty and each
    /// connection goes to its own original destination (recovered by a
    /// listener with `original_destination`). `None`: a cluster of
    /// configured endpoints.
    pub original_destination: Option<OriginalDestination>,
    /// Open each upstream connection with a PROXY protocol header of this
    /// version, carrying the client's address.
    pub send_proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// How an `original_destination` cluster turns a connection's original
/// destination into the address it connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OriginalDestination {
    /// Replaces the destination's IP, keeping its port. The inbound side of
    /// a sidecar sets `127.0.0.1`: the application is reached on loopback,
    /// which the capture rules leave alone, so the proxy's own connection
    /// is not redirected back to it.
    pub host: Option<IpAddr>,
}

impl OriginalDestination {
    /// The address to connect to for a connection whose original
    /// destination was `original`.
    #[inline]
    pub fn target(&self, original: SocketAddr) -> SocketAddr {
        match self.host {
            Some(ip) => SocketAddr::new(ip, original.port()),
            None => original,
        }
    }
}

impl Cluster {
    /// A cluster named `name` with no endpoints and default breakers, for
    /// tests and benchmarks of code that only names or counts clusters.
    pub fn empty(name: &str) -> Cluster {
        Cluster {
            name: Arc::from(name),
            endpoints: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 1,
            balancer: Balancer::new(crate::balance::LbPolicy::RoundRobin, &[], &[], 1, 1),
            tls: None,
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
            stats: crate::metrics::StatsRegistry::new(1).cluster(name),
            health: crate::health::HealthRegistry::new(1).cluster(name),
            outlier: None,
            health_check: None,
            panic_threshold: 50,
            original_destination: None,
            send_proxy_protocol: None,
        }
    }
}

/// One upstream address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Address connected to.
    pub addr: SocketAddr,
    /// The configured host name this address was resolved from, if any.
    pub hostname: Option<Arc<str>>,
    /// Share of connections relative to the other endpoints (>= 1).
    pub weight: u32,
    /// Labels for routing and display (e.g. `version: v2`).
    pub metadata: Arc<[(String, String)]>,
    /// Shared health state (see [`ClusterHealth::endpoints_for`]).
    pub health: Arc<EndpointHealth>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hostname {
            Some(h) => write!(f, "{}({})", h, self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// A passthrough route: connections whose SNI matches go to `cluster`.
#[derive(Debug)]
pub struct SniRoute {
    /// Exact names or `*.suffix` patterns.
    pub server_names: Vec<String>,
    /// Where matching connections go.
    pub cluster: Arc<Cluster>,
}

impl ListenerConfig {
    /// The cluster for a connection that sent `sni` (None: no SNI, or not TLS).
    pub fn cluster_for(&self, sni: Option<&str>) -> &Arc<Cluster> {
        sni.and_then(|name| {
            self.sni_routes.iter().find(|r| {
                r.server_names
                    .iter()
                    .any(|p| crate::tls::client_hello::server_name_matches(p, name))
            })
        })
        .map(|r| &r.cluster)
        .unwrap_or(&self.cluster)
    }
}
