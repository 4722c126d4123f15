//! `listeners[]`: where traffic comes in and which cluster receives it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::Origin;
use crate::decode::{
    Decoder, Fields, boolean, child, duration, format_duration, integer, listen_addr, name,
    required, scalar,
};
use crate::yaml::Node;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes are forwarded as they are (L4).
    Tcp,
    /// HTTP/1.1 requests are proxied one by one (L7).
    Http,
}

fn zero_copy_name<S: serde::Serializer>(
    z: &ringmesh_core::ZeroCopy,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(z.as_str())
}

/// One listener.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerDoc {
    /// Unique name (metric label `listener`).
    pub name: String,
    /// IP:port to accept on; port 0 lets the kernel choose.
    pub listen: SocketAddr,
    /// `tcp` (default) or `http`.
    pub protocol: Protocol,
    /// HTTP settings (`protocol: http` only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpDoc>,
    /// Cluster receiving the connections.
    pub cluster: String,
    /// Open connections allowed at once; unlimited when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// Open connections allowed at once from one client address; unlimited
    /// when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<u32>,
    /// Time a client has to send its first byte before an upstream
    /// connection is made for it; no limit when absent (server-first
    /// protocols exist).
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<Duration>,
    /// Close a connection idle this long in both directions. Default 1h.
    #[serde(serialize_with = "human")]
    pub idle_timeout: Duration,
    /// Log one line per closed connection. Default true.
    pub access_log: bool,
    /// When plain TCP connections may forward with splice (`auto`).
    #[serde(serialize_with = "zero_copy_name")]
    pub zero_copy: ringmesh_core::ZeroCopy,
    /// Transparent capture: read each connection's original destination
    /// (before an iptables `REDIRECT` sent it here) for
    /// `original_destination` clusters, and close connections that were
    /// not redirected. Default false.
    pub original_destination: bool,
    /// PROXY protocol (v1 or v2) expected before the client's bytes:
    /// `required`, `optional`, or absent (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolMode>,
    /// Time the PROXY protocol header has to arrive. Default 5s.
    #[serde(serialize_with = "human")]
    pub proxy_protocol_timeout: Duration,
    /// TLS termination, optionally mutual.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::ListenerTlsDoc>,
    /// Who may connect (requires `tls.client_ca`); present = default deny.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<super::AuthzDoc>,
    /// TLS passthrough routes by SNI (without terminating TLS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<SniRouteDoc>,
    #[serde(skip)]
    pub(crate) origin: Origin,
    #[serde(skip)]
    pub(crate) listen_origin: Origin,
    #[serde(skip)]
    pub(crate) cluster_origin: Origin,
}

/// Whether a listener's connections start with a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolMode {
    /// Every connection must send one (v1 or v2); others are closed.
    Required,
    /// A header is used when present; connections without one are served
    /// with their TCP peer as the client.
    Optional,
}

/// Time a PROXY protocol header has to arrive after the connection.
pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Envoy's TCP proxy default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const KEYS: &[&str] = &[
    "name",
    "listen",
    "protocol",
    "cluster",
    "max_connections",
    "max_connections_per_client",
    "first_byte_timeout",
    "idle_timeout",
    "access_log",
    "zero_copy",
    "original_destination",
    "proxy_protocol",
    "proxy_protocol_timeout",
    "tls",
    "authz",
    "sni_routes",
];

/// The keys of an HTTP listener (`protocol: http`); defaults are Envoy's.
#[derive(Debug, Clone, Serialize)]
pub struct HttpDoc {
    /// Time to receive a request head (from its first byte; from the
    /// connection's start for its first request). Default 10s; 408 after.
    #[serde(serialize_with = "human")]
    pub request_headers_timeout: Duration,
    /// From the whole request received to the whole response head.
    /// Default 15s; 504 (flag `UT`) after.
    #[serde(serialize_with = "human")]
    pub timeout: Duration,
    /// Largest request head in bytes (431 above). Default 61440 (60 KiB).
    pub max_request_headers_bytes: usize,
    /// Longest request line in bytes (414 above). Default 8192.
    pub max_request_line_bytes: usize,
    /// Most header fields in a request (431 above). Default 100.
    pub max_headers: usize,
    /// Add an `x-request-id` (UUID v4) to requests without one. Default true.
    pub generate_request_id: bool,
    /// Append the client's address to `x-forwarded-for`. Default true.
    pub append_x_forwarded_for: bool,
    /// Routes, first match wins (instead of `cluster`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<super::RouteDoc>,
    /// Operations on every route's requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<super::HeaderOpsDoc>,
    /// Operations on every route's responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<super::HeaderOpsDoc>,
    /// The listener's local rate limit (before routing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<super::RateLimitDoc>,
    /// Which side of a call the mesh metrics report: `inbound` (the
    /// default: this proxy is the destination) or `outbound` (it calls out
    /// on its workload's behalf: the source).
    pub mesh_role: String,
    /// HTTP/2 towards clients.
    pub http2: Http2Doc,
    #[serde(skip)]
    pub(crate) routes_origin: Origin,
}

/// `http2:` of an HTTP listener (README "HTTP/2 and gRPC").
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Http2Doc {
    /// Accept HTTP/2: ALPN `h2` on TLS, prior knowledge (h2c) on plain
    /// TCP. Default true.
    pub enabled: bool,
    /// Streams a client may have open at once. Default 100 (Envoy's
    /// recommendation for edge proxies).
    pub max_concurrent_streams: u32,
    /// Each stream's flow-control window, bytes. Default 1048576.
    pub initial_stream_window_size: u32,
    /// The connection's flow-control window, bytes. Default 4194304.
    pub initial_connection_window_size: u32,
    /// Close a connection (GOAWAY, streams finish) this long after it
    /// opened. Default none.
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
}

impl Default for Http2Doc {
    fn default() -> Self {
        let d = ringmesh_l7::config::Http2Settings::default();
        Http2Doc {
            enabled: d.enabled,
            max_concurrent_streams: d.max_concurrent_streams,
            initial_stream_window_size: d.initial_stream_window_size,
            initial_connection_window_size: d.initial_connection_window_size,
            max_connection_duration: d.max_connection_duration,
        }
    }
}

impl Http2Doc {
    fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let mut doc = Http2Doc::default();
        // RFC 9113 §6.5.2: windows of 65535 to 2^31-1 bytes.
        const MAX_WINDOW: u64 = (1 << 31) - 1;
        if let Some((n, p)) = f.take("enabled") {
            doc.enabled = boolean(d, n, &p)?;
        }
        if let Some((n, p)) = f.take("max_concurrent_streams") {
            doc.max_concurrent_streams = integer(d, n, &p, 1, 10_000)? as u32;
        }
        if let Some((n, p)) = f.take("initial_stream_window_size") {
            doc.initial_stream_window_size = integer(d, n, &p, 65_535, MAX_WINDOW)? as u32;
        }
        if let Some((n, p)) = f.take("initial_connection_window_size") {
            doc.initial_connection_window_size = integer(d, n, &p, 65_535, MAX_WINDOW)? as u32;
        }
        if let Some((n, p)) = f.take("max_connection_duration") {
            doc.max_connection_duration = Some(duration(
                d,
                n,
                &p,
                Duration::from_millis(1),
                Duration::from_secs(30 * 86400),
            )?);
        }
        f.finish(
            d,
            &[
                "enabled",
                "max_concurrent_streams",
                "initial_stream_window_size",
                "initial_connection_window_size",
                "max_connection_duration",
            ],
        );
        Some(doc)
    }
}

impl Default for HttpDoc {
    fn default() -> Self {
        let s = ringmesh_l7::HttpSettings::default();
        HttpDoc {
            request_headers_timeout: s.request_headers_timeout,
            timeout: DEFAULT_HTTP_TIMEOUT,
            max_request_headers_bytes: s.limits.max_head,
            max_request_line_bytes: s.limits.max_request_line,
            max_headers: s.limits.max_headers,
            generate_request_id: s.generate_request_id,
            append_x_forwarded_for: s.append_x_forwarded_for,
            routes: Vec::new(),
            request_headers: None,
            response_headers: None,
            rate_limit: None,
            mesh_role: "inbound".to_owned(),
            http2: Http2Doc::default(),
            routes_origin: Origin::default(),
        }
    }
}

/// Envoy's route timeout.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(15);

const HTTP_KEYS: &[&str] = &[
    "request_headers_timeout",
    "timeout",
    "max_request_headers_bytes",
    "max_request_line_bytes",
    "max_headers",
    "generate_request_id",
    "append_x_forwarded_for",
    "routes",
    "request_headers",
    "response_headers",
    "rate_limit",
    "mesh_role",
    "http2",
];

impl HttpDoc {
    /// Decodes the HTTP keys present in `f`; `http` says whether the
    /// listener speaks HTTP (else each key present is an error).
    fn decode(d: &mut Decoder, f: &mut Fields<'_>, http: bool) -> Option<HttpDoc> {
        let mut doc = HttpDoc::default();
        for key in HTTP_KEYS {
            let Some((n, p)) = f.take(key) else { continue };
            if !http {
                d.error(
                    n.mark,
                    &p,
                    format!("`{key}` applies to HTTP listeners only (set `protocol: http`)"),
                );
                continue;
            }
            let secs = |d: &mut Decoder| {
                duration(
                    d,
                    n,
                    &p,
                    Duration::from_millis(1),
                    Duration::from_secs(86400),
                )
            };
            match *key {
                "request_headers_timeout" => doc.request_headers_timeout = secs(d)?,
                "timeout" => doc.timeout = secs(d)?,
                "max_request_headers_bytes" => {
                    doc.max_request_headers_bytes = integer(d, n, &p, 1024, 1024 * 1024)? as usize
                }
                "max_request_line_bytes" => {
                    doc.max_request_line_bytes = integer(d, n, &p, 256, 1024 * 1024)? as usize
                }
                "max_headers" => {
                    doc.max_headers =
                        integer(d, n, &p, 1, ringmesh_l7::codec::h1::HEADER_SLOTS as u64)? as usize
                }
                "generate_request_id" => doc.generate_request_id = boolean(d, n, &p)?,
                "append_x_forwarded_for" => doc.append_x_forwarded_for = boolean(d, n, &p)?,
                "routes" => {
                    doc.routes = crate::decode::list_of(d, n, &p, super::RouteDoc::decode)
                        .unwrap_or_default();
                    if doc.routes.is_empty()
                        && matches!(n.value, crate::yaml::Value::Seq(ref v) if v.is_empty())
                    {
                        d.error(
                            n.mark,
                            &p,
                            "`routes` is empty: give at least one route, or `cluster` instead",
                        );
                    }
                    doc.routes_origin = Origin {
                        mark: n.mark,
                        path: p.clone(),
                    };
                }
                "request_headers" => {
                    doc.request_headers = super::HeaderOpsDoc::decode(d, n, &p);
                }
                "response_headers" => {
                    doc.response_headers = super::HeaderOpsDoc::decode(d, n, &p);
                }
                "rate_limit" => doc.rate_limit = super::RateLimitDoc::decode(d, n, &p),
                "http2" => doc.http2 = Http2Doc::decode(d, n, &p)?,
                "mesh_role" => match crate::decode::scalar(d, n, &p, "a mesh role")? {
                    v @ ("inbound" | "outbound") => doc.mesh_role = v.to_owned(),
                    v => {
                        d.error(
                            n.mark,
                            &p,
                            format!(
                                "unknown mesh_role `{}`: use `inbound` or `outbound`",
                                crate::limits::quote(v)
                            ),
                        );
                    }
                },
                _ => {}
            }
        }
        http.then_some(doc)
    }
}

pub(crate) fn human<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub(crate) fn human_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => human(d, s),
        None => s.serialize_none(),
    }
}

impl ListenerDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let listener_name =
            required(d, &mut f, node, path, "name").and_then(|(n, p)| name(d, n, &p));
        let listen = required(d, &mut f, node, path, "listen")
            .and_then(|(n, p)| listen_addr(d, n, &p).map(|a| (a, n.mark, p)));
        let protocol = match f.take("protocol") {
            None => Some(Protocol::Tcp),
            Some((n, p)) => match scalar(d, n, &p, "a protocol")? {
                "tcp" => Some(Protocol::Tcp),
                "http" => Some(Protocol::Http),
                other => {
                    d.error(
                        n.mark,
                        &p,
                        format!(
                            "unknown protocol `{}` (expected tcp or http)",
                            crate::limits::quote(other)
                        ),
                    );
                    None
                }
            },
        };
        let cluster_field = f.take("cluster");
        let cluster = cluster_field
            .as_ref()
            .and_then(|(n, p)| name(d, n, p).map(|c| (c, n.mark, p.clone())));
        let max_connections = match f.take("max_connections") {
            None => Some(None),
            Some((n, p)) => integer(d, n, &p, 1, 10_000_000).map(Some),
        };
        let max_connections_per_client = match f.take("max_connections_per_client") {
            None => Some(None),
            Some((n, p)) => integer(d, n, &p, 1, 1_000_000).map(|v| Some(v as u32)),
        };
        let first_byte_timeout = match f.take("first_byte_timeout") {
            None => Some(None),
            Some((n, p)) => duration(
                d,
                n,
                &p,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            )
            .map(|t| Some((t, n.mark, p))),
        };
        let idle_timeout = match f.take("idle_timeout") {
            None => Some(DEFAULT_IDLE_TIMEOUT),
            Some((n, p)) => duration(
                d,
                n,
                &p,
                Duration::from_millis(1),
                Duration::from_secs(30 * 86400),
            ),
        };
        let access_log = match f.take("access_log") {
            None => Some(true),
            Some((n, p)) => boolean(d, n, &p),
        };
        let zero_copy = match f.take("zero_copy") {
            None => Some(ringmesh_core::ZeroCopy::Auto),
            Some((n, p)) => match scalar(d, n, &p, "auto, always or never")? {
                "auto" => Some(ringmesh_core::ZeroCopy::Auto),
                "always" => Some(ringmesh_core::ZeroCopy::Always),
                "never" => Some(ringmesh_core::ZeroCopy::Never),
                other => {
                    d.error(
                        n.mark,
                        &p,
                        format!(
                            "unknown zero_copy `{}` (expected auto, always or never)",
                            crate::limits::quote(other)
                        ),
                    );
                    None
                }
            },
        };
        let original_destination = match f.take("original_destination") {
            None => Some(false),
            Some((n, p)) => boolean(d, n, &p),
        };
        let proxy_protocol = match f.take("proxy_protocol") {
            None => Some(None),
            Some((n, p)) => match scalar(d, n, &p, "required or optional")? {
                "required" => Some(Some(ProxyProtocolMode::Required)),
                "optional" => Some(Some(ProxyProtocolMode::Optional)),
                other => {
                    d.error(
                        n.mark,
                        &p,
                        format!(
                            "unknown proxy_protocol `{}` (expected required or optional; leave it out to accept none)",
                            crate::limits::quote(other)
                        ),
                    );
                    None
                }
            },
        };
        let proxy_protocol_timeout = match f.take("proxy_protocol_timeout") {
            None => Some(DEFAULT_PROXY_PROTOCOL_TIMEOUT),
            Some((n, p)) => duration(
                d,
                n,
                &p,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
        };
        let tls = f
            .take("tls")
            .and_then(|(n, p)| super::ListenerTlsDoc::decode(d, n, &p));
        let authz = f
            .take("authz")
            .and_then(|(n, p)| super::AuthzDoc::decode(d, n, &p));
        if let Some(a) = &authz {
            if tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                d.error(
                    a.origin.mark,
                    &a.origin.path,
                    "authz needs client identities: set tls.client_ca so clients must present certificates",
                );
            }
        }
        let sni_routes = crate::decode::list_field(d, f.take("sni_routes"), SniRouteDoc::decode);
        if let (Some(t), false) = (&tls, sni_routes.is_empty()) {
            d.error(
                t.origin.mark,
                &t.origin.path,
                "a listener either terminates TLS (`tls`) or passes it through by SNI (`sni_routes`), not both",
            );
        }
        if let Some(Some((_, mark, p))) = &first_byte_timeout {
            if tls.is_some() || !sni_routes.is_empty() {
                d.error(
                    *mark,
                    p,
                    "first_byte_timeout applies to plain TCP listeners; a TLS listener's client is bounded by tls.handshake_timeout, an SNI listener's by its 10 s ClientHello wait",
                );
            }
        }
        let is_http = protocol == Some(Protocol::Http);
        let http = HttpDoc::decode(d, &mut f, is_http);
        // A TCP listener names its cluster; an HTTP one its cluster or its routes.
        let has_routes = http.as_ref().is_some_and(|h| h.routes_origin.mark.line > 0);
        match (&cluster_field, has_routes) {
            (None, false) if is_http => d.error(
                node.mark,
                path,
                "missing required key `cluster` (or `routes`)",
            ),
            (None, false) => d.error(node.mark, path, "missing required key `cluster`"),
            (Some((n, p)), true) => d.error(
                n.mark,
                p,
                "an HTTP listener takes either `cluster` (every request goes there) or `routes`, not both",
            ),
            _ => {}
        }
        if is_http && !sni_routes.is_empty() {
            d.error(
                node.mark,
                path,
                "an HTTP listener cannot route TLS passthrough by SNI (`sni_routes`); use `protocol: tcp`",
            );
        }
        let known: Vec<&str> = KEYS.iter().chain(HTTP_KEYS).copied().collect();
        f.finish(d, &known);
        // Fields that failed keep a placeholder so that cross-resource checks
        // still run and every error is reported in one pass; any error
        // rejects the whole document, so placeholders never run.
        let (listen, listen_mark, listen_path) =
            listen.unwrap_or((placeholder_addr(), node.mark, child(path, "listen")));
        let (cluster, cluster_mark, cluster_path) =
            cluster.unwrap_or((String::new(), node.mark, child(path, "cluster")));
        Some(ListenerDoc {
            name: listener_name.unwrap_or_default(),
            listen,
            protocol: protocol.unwrap_or(Protocol::Tcp),
            http,
            cluster,
            max_connections: max_connections.unwrap_or_default(),
            max_connections_per_client: max_connections_per_client.unwrap_or_default(),
            first_byte_timeout: first_byte_timeout.flatten().map(|(t, _, _)| t),
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            access_log: access_log.unwrap_or(true),
            zero_copy: zero_copy.unwrap_or_default(),
            original_destination: original_destination.unwrap_or(false),
            proxy_protocol: proxy_protocol.flatten(),
            proxy_protocol_timeout: proxy_protocol_timeout
                .unwrap_or(DEFAULT_PROXY_PROTOCOL_TIMEOUT),
            tls,
            authz,
            sni_routes,
            origin: Origin {
                mark: node.mark,
                path: path.to_owned(),
            },
            listen_origin: Origin {
                mark: listen_mark,
                path: listen_path,
            },
            cluster_origin: Origin {
                mark: cluster_mark,
                path: cluster_path,
            },
        })
    }
}

fn placeholder_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// A passthrough route: TLS connections whose SNI matches go to `cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct SniRouteDoc {
    /// Exact server names or `*.suffix` patterns.
    pub server_names: Vec<String>,
    /// Cluster receiving matching connections.
    pub cluster: String,
    #[serde(skip)]
    pub(crate) cluster_origin: Origin,
}

impl SniRouteDoc {
    fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let names = match f.take("server_names") {
            None => {
                d.error(node.mark, path, "missing required key `server_names`");
                None
            }
            Some((n, p)) => crate::decode::list_of(d, n, &p, |d, item, ip| {
                let v = scalar(d, item, ip, "a server name")?;
                let bare = v.strip_prefix("*.").unwrap_or(v);
                let ok = !bare.is_empty()
                    && bare.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if ok {
                    Some(v.to_ascii_lowercase())
                } else {
                    d.error(
                        item.mark,
                        ip,
                        format!(
                            "invalid server name `{}` (a DNS name, or *.suffix)",
                            crate::limits::quote(v)
                        ),
                    );
                    None
                }
            }),
        };
        let cluster = match f.take("cluster") {
            None => {
                d.error(node.mark, path, "missing required key `cluster`");
                None
            }
            Some((n, p)) => name(d, n, &p).map(|c| {
                (
                    c,
                    Origin {
                        mark: n.mark,
                        path: p,
                    },
                )
            }),
        };
        f.finish(d, &["server_names", "cluster"]);
        let (cluster, cluster_origin) = cluster?;
        Some(SniRouteDoc {
            server_names: names?,
            cluster,
            cluster_origin,
        })
    }
}
