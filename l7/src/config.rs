//! The compiled configuration of an HTTP listener: runtime types only,
//! built by `control` from YAML (l7 knows nothing of YAML).

use std::time::Duration;

use crate::codec::h1::Limits;
use crate::route::RouteTable;

/// How an HTTP listener treats requests; defaults follow Envoy.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Request line, head and header-count limits (8 KiB, 60 KiB, 100).
    pub limits: Limits,
    /// Time from the first byte of a request head (or from the connection's
    /// start, for its first request) to the end of the head: 408 after it.
    /// Default 10 s.
    pub request_headers_timeout: Duration,
    /// A connection with no request in flight and no bytes for this long is
    /// closed (the listener's `idle_timeout`, default 1 h).
    pub idle_timeout: Duration,
    /// Add an `x-request-id` (UUID v4) to requests that carry none.
    pub generate_request_id: bool,
    /// Append the client address to `x-forwarded-for`.
    pub append_x_forwarded_for: bool,
    /// Log one line per request.
    pub access_log: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            generate_request_id: true,
            append_x_forwarded_for: true,
            access_log: true,
        }
    }
}

/// An HTTP listener's compiled config: what the listener's protocol
/// handler carries in a snapshot.
#[derive(Debug)]
pub struct HttpListener {
    /// Listener name (labels, logs).
    pub name: std::sync::Arc<str>,
    /// Settings.
    pub settings: HttpSettings,
    /// Routes.
    pub routes: RouteTable,
    /// Whether clients reach it over TLS (`x-forwarded-proto`).
    pub tls: bool,
    /// The listener's statistics.
    pub stats: std::sync::Arc<crate::metrics::HttpListenerStats>,
    /// Requests no route matched (route and cluster `-`).
    pub unrouted: std::sync::Arc<crate::metrics::RouteStats>,
    /// The listener's local rate limit (before routing).
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    /// Distributed tracing (the config's `tracing`), if on.
    pub tracing: Option<crate::trace::TracingSettings>,
    /// The process's open taps.
    pub taps: std::sync::Arc<crate::tap::TapHub>,
    /// Istio's mesh metrics, when the config names its `node`.
    pub mesh: Option<std::sync::Arc<crate::mesh::MeshStats>>,
    /// The listener calls out for its workload (`mesh_role: outbound`):
    /// the mesh metrics report it as the source.
    pub mesh_outbound: bool,
}
