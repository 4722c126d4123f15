//! `clusters[]`: groups of interchangeable upstream endpoints.

use std::time::Duration;

use serde::{Serialize, Serializer};

use super::Origin;
use super::listener::human;
use crate::decode::{Decoder, Fields, child, duration, host_port, integer, name, scalar};
use crate::yaml::Node;

/// How a cluster picks an endpoint: the data plane's own policy type.
pub use ringmesh_core::LbPolicy;

fn lb_name<S: Serializer>(p: &LbPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

fn ewma_doc<S: Serializer>(
    c: &Option<ringmesh_core::balance::PeakEwmaConfig>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let Some(c) = c else {
        return s.serialize_none();
    };
    let mut m = s.serialize_map(Some(2))?;
    m.serialize_entry(
        "default_rtt",
        &crate::decode::format_duration(c.default_rtt),
    )?;
    m.serialize_entry("decay", &crate::decode::format_duration(c.decay))?;
    m.end()
}

/// One upstream endpoint as written: a host (IP literal or DNS name) and a port.
#[derive(Debug, Clone)]
pub struct EndpointDoc {
    /// IP literal or DNS name, resolved when the config is loaded.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Relative share of connections, 1-1000 (default 1).
    pub weight: u32,
    /// Labels (e.g. `version: v2`), shown in GET /clusters and usable by
    /// routing.
    pub metadata: Vec<(String, String)>,
    pub(crate) origin: Origin,
}

impl Serialize for EndpointDoc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let address = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        if self.weight == 1 && self.metadata.is_empty() {
            s.serialize_str(&address)
        } else {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("address", &address)?;
            m.serialize_entry("weight", &self.weight)?;
            if !self.metadata.is_empty() {
                let labels: std::collections::BTreeMap<&str, &str> = self
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                m.serialize_entry("metadata", &labels)?;
            }
            m.end()
        }
    }
}

/// An endpoint: `host:port`, or `{ address: host:port, weight: N }`.
pub(crate) fn endpoint(d: &mut Decoder, item: &Node, path: &str) -> Option<EndpointDoc> {
    let origin = Origin {
        mark: item.mark,
        path: path.to_owned(),
    };
    if let crate::yaml::Value::Map(_) = item.value {
        let mut f = Fields::of(d, item, path)?;
        let address = match f.take("address") {
            Some((n, p)) => host_port(d, n, &p),
            None => {
                d.error(item.mark, path, "missing required key `address`");
                None
            }
        };
        let weight = match f.take("weight") {
            None => Some(1),
            Some((n, p)) => integer(d, n, &p, 1, 1000).map(|w| w as u32),
        };
        let metadata = match f.take("metadata") {
            None => Some(Vec::new()),
            Some((n, p)) => metadata(d, n, &p),
        };
        f.finish(d, &["address", "weight", "metadata"]);
        let (host, port) = address?;
        return Some(EndpointDoc {
            host,
            port,
            weight: weight?,
            metadata: metadata?,
            origin,
        });
    }
    host_port(d, item, path).map(|(host, port)| EndpointDoc {
        host,
        port,
        weight: 1,
        metadata: Vec::new(),
        origin,
    })
}

/// `metadata: { key: value, ... }`: string labels.
pub(crate) fn metadata(d: &mut Decoder, node: &Node, path: &str) -> Option<Vec<(String, String)>> {
    let crate::yaml::Value::Map(entries) = &node.value else {
        d.error(
            node.mark,
            path,
            format!("expected a mapping of labels, found {}", node.kind()),
        );
        return None;
    };
    let mut out: Vec<(String, String)> = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut ok = true;
    for (k_node, v_node) in entries.iter() {
        let key = scalar(d, k_node, path, "a label name");
        let p = key
            .map(|k| child(path, &crate::limits::quote(k)))
            .unwrap_or_else(|| path.to_owned());
        let value = scalar(d, v_node, &p, "a label value");
        match (key, value) {
            (Some(k), Some(v)) if !k.is_empty() && k.len() <= 63 && v.len() <= 255 => {
                if !seen.insert(k) {
                    d.error(k_node.mark, &p, "duplicate label");
                    ok = false;
                } else {
                    out.push((k.to_owned(), v.to_owned()));
                }
            }
            (Some(_), Some(_)) => {
                d.error(
                    v_node.mark,
                    &p,
                    "label names are 1-63 characters and values at most 255",
                );
                ok = false;
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// One cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterDoc {
    /// Unique name (metric label `cluster`).
    pub name: String,
    /// Endpoints as written (for `file` and `original_destination`
    /// discovery: none; for `api`: the initial list).
    pub endpoints: Vec<EndpointDoc>,
    /// Where the endpoints come from. Default `static`.
    pub discovery: super::DiscoveryDoc,
    /// Load-balancing policy. Default `round_robin`.
    #[serde(serialize_with = "lb_name")]
    pub lb: LbPolicy,
    /// peak_ewma's constants (only with `lb: peak_ewma`). Default
    /// Linkerd's: `{default_rtt: 30ms, decay: 10s}`.
    #[serde(serialize_with = "ewma_doc", skip_serializing_if = "Option::is_none")]
    pub peak_ewma: Option<ringmesh_core::balance::PeakEwmaConfig>,
    /// Time allowed for one TCP connect. Default 5s (Envoy's).
    #[serde(serialize_with = "human")]
    pub connect_timeout: Duration,
    /// Distinct endpoints tried for one connection before giving up. Default 3.
    pub connect_attempts: u32,
    /// TLS towards the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::ClusterTlsDoc>,
    /// Circuit breakers.
    pub circuit_breakers: CircuitBreakersDoc,
    /// Passive health: eject endpoints whose connections fail. Off unless
    /// present; Envoy's defaults for every field left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<super::health::OutlierDetectionDoc>,
    /// Active health checks. Off unless present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<super::health::HealthCheckDoc>,
    /// Percent of endpoints that must be available for health to be
    /// honoured; below it every endpoint gets traffic. Default 50 (Envoy's).
    pub panic_threshold: u32,
    /// Idle keep-alive connections kept for HTTP requests.
    pub pool: PoolDoc,
    /// How many HTTP retries the cluster takes (Linkerd's retry budget).
    pub retry_budget: RetryBudgetDoc,
    /// Speak HTTP/2 to the endpoints (multiplexed connections; needed for
    /// gRPC). With `tls`, ALPN offers `h2` unless `tls.alpn` says
    /// otherwise. Default false (HTTP/1.1).
    pub http2: bool,
    /// Open every upstream connection with a PROXY protocol header (`v1`
    /// or `v2`) carrying the original client's address; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
    /// How an `original_destination` cluster rewrites each connection's
    /// original destination (`discovery: original_destination` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_destination: Option<OriginalDestinationDoc>,
    #[serde(skip)]
    pub(crate) name_origin: Origin,
}

/// The PROXY protocol version a cluster sends (`send_proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    /// The human-readable line (`PROXY TCP4 ...`).
    V1,
    /// The binary header, with TLVs (ALPN, authority, SPIFFE ID).
    V2,
}

/// `original_destination: { host }`: where an `original_destination`
/// cluster connects, given a connection's original destination.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OriginalDestinationDoc {
    /// Replaces the original destination's IP, keeping its port: an IP
    /// literal such as `127.0.0.1` (the inbound side of a sidecar reaches
    /// its application on loopback). Default: none, the original
    /// destination as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<std::net::IpAddr>,
}

impl OriginalDestinationDoc {
    fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let host = match f.take("host") {
            None => Some(None),
            Some((n, p)) => {
                let text = scalar(d, n, &p, "an IP address")?;
                match text.parse::<std::net::IpAddr>() {
                    Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Some(Some(ip)),
                    _ => {
                        d.error(
                            n.mark,
                            &p,
                            format!(
                                "invalid host `{}`: an IP address to connect to, such as 127.0.0.1 or ::1 (names are not resolved here)",
                                crate::limits::quote(text)
                            ),
                        );
                        None
                    }
                }
            }
        };
        f.finish(d, &["host"]);
        Some(OriginalDestinationDoc { host: host? })
    }

    /// The data plane's form.
    pub fn runtime(&self) -> ringmesh_core::OriginalDestination {
        ringmesh_core::OriginalDestination { host: self.host }
    }
}

/// `retry_budget:` retries may add `retry_ratio` of the requests of the
/// last `ttl`, plus `min_retries_per_second` (Linkerd's defaults: 0.2, 10,
/// 10s).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RetryBudgetDoc {
    /// Share of recent requests retries may add (0-10). Default 0.2.
    pub retry_ratio: f64,
    /// Retries per second allowed whatever the request rate. Default 10.
    pub min_retries_per_second: u32,
    /// The window. Default 10s.
    #[serde(serialize_with = "human")]
    pub ttl: Duration,
}

impl Default for RetryBudgetDoc {
    fn default() -> Self {
        let d = ringmesh_l7::retry::BudgetSettings::default();
        RetryBudgetDoc {
            retry_ratio: d.retry_ratio,
            min_retries_per_second: d.min_retries_per_second,
            ttl: d.ttl,
        }
    }
}

impl RetryBudgetDoc {
    fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let defaults = RetryBudgetDoc::default();
        let retry_ratio = match f.take("retry_ratio") {
            None => Some(defaults.retry_ratio),
            Some((n, p)) => {
                let text = crate::decode::scalar(d, n, &p, "a number")?;
                match text.parse::<f64>() {
                    Ok(v) if (0.0..=10.0).contains(&v) => Some(v),
                    _ => {
                        d.error(
                            n.mark,
                            &p,
                            format!(
                                "invalid retry_ratio `{}`: a number from 0 to 10 (0.2 lets retries add 20% to the load)",
                                crate::limits::quote(text)
                            ),
                        );
                        None
                    }
                }
            }
        };
        let min_retries_per_second = match f.take("min_retries_per_second") {
            None => Some(defaults.min_retries_per_second),
            Some((n, p)) => integer(d, n, &p, 0, 1_000_000).map(|v| v as u32),
        };
        let ttl = match f.take("ttl") {
            None => Some(defaults.ttl),
            Some((n, p)) => duration(d, n, &p, Duration::from_secs(1), Duration::from_secs(3600)),
        };
        f.finish(d, &["retry_ratio", "min_retries_per_second", "ttl"]);
        Some(RetryBudgetDoc {
            retry_ratio: retry_ratio?,
            min_retries_per_second: min_retries_per_second?,
            ttl: ttl?,
        })
    }

    /// The runtime settings.
    pub fn settings(&self) -> ringmesh_l7::retry::BudgetSettings {
        ringmesh_l7::retry::BudgetSettings {
            retry_ratio: self.retry_ratio,
            min_retries_per_second: self.min_retries_per_second,
            ttl: self.ttl,
        }
    }
}

/// `pool:` the per-worker pools of idle HTTP keep-alive connections.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PoolDoc {
    /// Idle connections kept per endpoint on each worker. Default 256.
    pub max_idle_per_endpoint: usize,
    /// An idle connection older than this is closed. Default 60s.
    #[serde(serialize_with = "human")]
    pub idle_timeout: Duration,
}

impl Default for PoolDoc {
    fn default() -> Self {
        let d = ringmesh_l7::pool::PoolSettings::default();
        PoolDoc {
            max_idle_per_endpoint: d.max_idle_per_endpoint,
            idle_timeout: d.idle_timeout,
        }
    }
}

impl PoolDoc {
    fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let defaults = PoolDoc::default();
        let max_idle_per_endpoint = match f.take("max_idle_per_endpoint") {
            None => Some(defaults.max_idle_per_endpoint),
            Some((n, p)) => integer(d, n, &p, 0, 100_000).map(|v| v as usize),
        };
        let idle_timeout = match f.take("idle_timeout") {
            None => Some(defaults.idle_timeout),
            Some((n, p)) => duration(
                d,
                n,
                &p,
                Duration::from_millis(1),
                Duration::from_secs(86400),
            ),
        };
        f.finish(d, &["max_idle_per_endpoint", "idle_timeout"]);
        Some(PoolDoc {
            max_idle_per_endpoint: max_idle_per_endpoint?,
            idle_timeout: idle_timeout?,
        })
    }
}

/// Envoy's cluster default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Endpoints tried per connection by default.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
const KEYS: &[&str] = &[
    "name",
    "endpoints",
    "discovery",
    "lb",
    "peak_ewma",
    "connect_timeout",
    "connect_attempts",
    "tls",
    "circuit_breakers",
    "outlier_detection",
    "health_check",
    "panic_threshold",
    "pool",
    "retry_budget",
    "http2",
    "send_proxy_protocol",
    "original_destination",
];

/// Takes one of the keys that tune how a cluster chooses among and watches
/// its endpoints, noting where it was written: an `original_destination`
/// cluster has no endpoint list (each connection has exactly one
/// destination), so each of them is an error there.
fn take_noted<'n>(
    f: &mut Fields<'n>,
    key: &'static str,
    noted: &mut Vec<(&'static str, Origin)>,
) -> Option<(&'n Node, String)> {
    let taken = f.take(key);
    if let Some((n, p)) = &taken {
        noted.push((
            key,
            Origin {
                mark: n.mark,
                path: p.clone(),
            },
        ));
    }
    taken
}

/// Envoy's `healthy_panic_threshold`.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

impl ClusterDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let name_field = f.take("name");
        if name_field.is_none() {
            d.error(node.mark, path, "missing required key `name`");
        }
        let name = name_field.and_then(|(n, p)| name(d, n, &p).map(|v| (v, n.mark, p)));
        let discovery = match f.take("discovery") {
            None => Some(super::DiscoveryDoc::Static),
            Some((n, p)) => super::DiscoveryDoc::decode(d, n, &p),
        };
        let endpoints_field = f.take("endpoints");
        match (&discovery, &endpoints_field) {
            (Some(super::DiscoveryDoc::File { .. }), Some((n, p))) => d.error(
                n.mark,
                p,
                "`file` discovery reads the endpoints from its file; remove `endpoints`",
            ),
            (Some(super::DiscoveryDoc::OriginalDestination), Some((n, p))) => d.error(
                n.mark,
                p,
                "`original_destination` discovery sends each connection to its own original destination; remove `endpoints`",
            ),
            (Some(super::DiscoveryDoc::Static | super::DiscoveryDoc::Dns { .. }), None) => {
                d.error(node.mark, path, "missing required key `endpoints`")
            }
            _ => {}
        }
        let by_original = discovery == Some(super::DiscoveryDoc::OriginalDestination);
        // Where the keys about choosing among endpoints were written, for
        // the error an `original_destination` cluster gives each of them.
        let mut noted: Vec<(&'static str, Origin)> = Vec::new();
        let original_destination = match f.take("original_destination") {
            None => None,
            Some((n, p)) => {
                // (A discovery that failed to decode is reported already.)
                if discovery.is_some() && !by_original {
                    d.error(
                        n.mark,
                        &p,
                        "`original_destination` settings need `discovery: original_destination`",
                    );
                }
                OriginalDestinationDoc::decode(d, n, &p)
            }
        };
        let endpoints = match endpoints_field {
            None => Some(Vec::new()),
            Some((n, p)) => crate::decode::list_of(d, n, &p, endpoint),
        };
        let lb = match take_noted(&mut f, "lb", &mut noted) {
            None => Some(LbPolicy::RoundRobin),
            Some((n, p)) => match scalar(d, n, &p, "a load-balancing policy")? {
                "round_robin" => Some(LbPolicy::RoundRobin),
                "random" => Some(LbPolicy::Random),
                "least_request" => Some(LbPolicy::LeastRequest),
                "ring_hash" => Some(LbPolicy::RingHash),
                "maglev" => Some(LbPolicy::Maglev),
                "peak_ewma" => Some(LbPolicy::PeakEwma),
                other => {
                    d.error(n.mark, &p, format!("unknown load-balancing policy `{}` (expected round_robin, random, least_request, peak_ewma, ring_hash or maglev)", crate::limits::quote(other)));
                    None
                }
            },
        };
        let peak_ewma = match take_noted(&mut f, "peak_ewma", &mut noted) {
            None => None,
            Some((n, p)) => {
                if lb.is_some_and(|l| l != LbPolicy::PeakEwma) {
                    d.error(n.mark, &p, "`peak_ewma` settings need `lb: peak_ewma`");
                }
                decode_peak_ewma(d, n, &p)
            }
        };
        let connect_timeout = match f.take("connect_timeout") {
            None => Some(DEFAULT_CONNECT_TIMEOUT),
            Some((n, p)) => duration(
                d,
                n,
                &p,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
        };
        let connect_attempts = match take_noted(&mut f, "connect_attempts", &mut noted) {
            None => Some(DEFAULT_CONNECT_ATTEMPTS),
            Some((n, p)) => integer(d, n, &p, 1, 16).map(|v| v as u32),
        };
        let tls = f
            .take("tls")
            .and_then(|(n, p)| super::ClusterTlsDoc::decode(d, n, &p));
        let circuit_breakers = match f.take("circuit_breakers") {
            None => CircuitBreakersDoc::default(),
            Some((n, p)) => CircuitBreakersDoc::decode(d, n, &p).unwrap_or_default(),
        };
        let outlier_detection = take_noted(&mut f, "outlier_detection", &mut noted)
            .and_then(|(n, p)| super::health::OutlierDetectionDoc::decode(d, n, &p));
        let health_check = take_noted(&mut f, "health_check", &mut noted)
            .and_then(|(n, p)| super::health::HealthCheckDoc::decode(d, n, &p));
        let panic_threshold = match take_noted(&mut f, "panic_threshold", &mut noted) {
            None => Some(DEFAULT_PANIC_THRESHOLD),
            Some((n, p)) => integer(d, n, &p, 0, 100).map(|v| v as u32),
        };
        let pool = match f.take("pool") {
            None => PoolDoc::default(),
            Some((n, p)) => PoolDoc::decode(d, n, &p).unwrap_or_default(),
        };
        let retry_budget = match f.take("retry_budget") {
            None => RetryBudgetDoc::default(),
            Some((n, p)) => RetryBudgetDoc::decode(d, n, &p).unwrap_or_default(),
        };
        let http2 = match f.take("http2") {
            None => false,
            Some((n, p)) => crate::decode::boolean(d, n, &p).unwrap_or(false),
        };
        let send_proxy_field = f.take("send_proxy_protocol");
        let send_proxy_origin = send_proxy_field.as_ref().map(|(n, p)| (n.mark, p.clone()));
        let send_proxy_protocol = match send_proxy_field {
            None => None,
            Some((n, p)) => match crate::decode::scalar(d, n, &p, "v1 or v2") {
                Some("v1") => Some(ProxyProtocolVersion::V1),
                Some("v2") => Some(ProxyProtocolVersion::V2),
                Some(other) => {
                    d.error(
                        n.mark,
                        &p,
                        format!(
                            "unknown send_proxy_protocol `{}` (expected v1 or v2)",
                            crate::limits::quote(other)
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        if let (true, Some(_), Some((mark, p))) = (http2, send_proxy_protocol, &send_proxy_origin) {
            d.error(
                *mark,
                p,
                "send_proxy_protocol names one client per upstream connection, and an HTTP/2 connection carries many clients' requests: not supported with `http2: true`",
            );
        }
        f.finish(d, KEYS);
        if by_original {
            for (key, origin) in &noted {
                d.error(
                    origin.mark,
                    &origin.path,
                    format!(
                        "`{key}` does not apply to `original_destination` discovery: each connection has one destination, its original one (no endpoint list to balance, fail over or check)"
                    ),
                );
            }
        }
        // Placeholders for failed fields, as in listener.rs: the document is
        // rejected anyway, but its other checks still run.
        let (name, name_mark, name_path) =
            name.unwrap_or((String::new(), node.mark, child(path, "name")));
        Some(ClusterDoc {
            name,
            endpoints: endpoints.unwrap_or_default(),
            discovery: discovery.unwrap_or_default(),
            lb: lb.unwrap_or(LbPolicy::RoundRobin),
            peak_ewma,
            connect_timeout: connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            connect_attempts: connect_attempts.unwrap_or(DEFAULT_CONNECT_ATTEMPTS),
            tls,
            circuit_breakers,
            outlier_detection,
            health_check,
            panic_threshold: panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD),
            pool,
            retry_budget,
            http2,
            send_proxy_protocol,
            original_destination,
            name_origin: Origin {
                mark: name_mark,
                path: name_path,
            },
        })
    }
}

/// `peak_ewma: { default_rtt, decay }`.
fn decode_peak_ewma(
    d: &mut Decoder,
    node: &Node,
    path: &str,
) -> Option<ringmesh_core::balance::PeakEwmaConfig> {
    let mut f = Fields::of(d, node, path)?;
    let defaults = ringmesh_core::balance::PeakEwmaConfig::default();
    let default_rtt = match f.take("default_rtt") {
        None => Some(defaults.default_rtt),
        Some((n, p)) => duration(d, n, &p, Duration::from_micros(1), Duration::from_secs(60)),
    };
    let decay = match f.take("decay") {
        None => Some(defaults.decay),
        Some((n, p)) => duration(
            d,
            n,
            &p,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        ),
    };
    f.finish(d, &["default_rtt", "decay"]);
    Some(ringmesh_core::balance::PeakEwmaConfig {
        default_rtt: default_rtt?,
        decay: decay?,
    })
}

/// Envoy's default connection limit per cluster.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;

/// `circuit_breakers:` limits that shed load at once instead of queueing.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitBreakersDoc {
    /// Upstream connections open at once over all workers; more are
    /// refused at once and counted. Default 1024 (Envoy's).
    pub max_connections: u64,
    /// Upstream connects in progress at once over all workers; more are
    /// refused at once and counted. Default 1024 (Envoy's; for TCP it
    /// limits connection attempts, as in Envoy).
    pub max_pending_requests: u64,
    /// HTTP requests in flight at once over all workers; more are answered
    /// 503 (flag `UO`) at once. Default 1024 (Envoy's).
    pub max_requests: u64,
    /// HTTP retries in progress at once over all workers; a retry beyond it
    /// is not made (counted `overflow`). Default 3 (Envoy's).
    pub max_retries: u64,
}

/// Envoy's default `max_retries`.
pub const DEFAULT_MAX_RETRIES: u64 = 3;

impl Default for CircuitBreakersDoc {
    fn default() -> Self {
        CircuitBreakersDoc {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_requests: DEFAULT_MAX_CONNECTIONS,
            max_requests: DEFAULT_MAX_CONNECTIONS,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

impl CircuitBreakersDoc {
    fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let max_connections = match f.take("max_connections") {
            None => Some(DEFAULT_MAX_CONNECTIONS),
            Some((n, p)) => integer(d, n, &p, 1, 10_000_000),
        };
        let max_pending_requests = match f.take("max_pending_requests") {
            None => Some(DEFAULT_MAX_CONNECTIONS),
            Some((n, p)) => integer(d, n, &p, 1, 10_000_000),
        };
        let max_requests = match f.take("max_requests") {
            None => Some(DEFAULT_MAX_CONNECTIONS),
            Some((n, p)) => integer(d, n, &p, 1, 10_000_000),
        };
        let max_retries = match f.take("max_retries") {
            None => Some(DEFAULT_MAX_RETRIES),
            Some((n, p)) => integer(d, n, &p, 0, 10_000_000),
        };
        f.finish(
            d,
            &[
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
            ],
        );
        Some(CircuitBreakersDoc {
            max_connections: max_connections?,
            max_pending_requests: max_pending_requests?,
            max_requests: max_requests?,
            max_retries: max_retries?,
        })
    }
}
