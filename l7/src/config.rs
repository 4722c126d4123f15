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
    /// HTTP/2 towards clients.
    pub http2: Http2Settings,
}

/// HTTP/2 on a listener (the listener's `http2:` block); defaults follow
/// Envoy where it has one, with flow-control windows sized so that one
/// connection's buffered request data stays bounded.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    /// Accept HTTP/2 (ALPN `h2` on TLS, prior knowledge on plain TCP).
    /// Default true.
    pub enabled: bool,
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    /// Default 100.
    pub max_concurrent_streams: u32,
    /// Flow-control window of each stream, in bytes. Default 1 MiB.
    pub initial_stream_window_size: u32,
    /// Flow-control window of the connection, in bytes: what a client may
    /// send ahead of the proxy forwarding it. Default 4 MiB.
    pub initial_connection_window_size: u32,
    /// Streams reset by the client within a second of opening, of all its
    /// streams, that close the connection (Rapid Reset, CVE-2023-44487):
    /// at least this many, and at least half of the streams. Default 100.
    pub max_premature_resets: u32,
    /// Close a connection this long after it opened (GOAWAY, streams in
    /// flight finish). Default none.
    pub max_connection_duration: Option<Duration>,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            enabled: true,
            max_concurrent_streams: 100,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 4 << 20,
            max_premature_resets: 100,
            max_connection_duration: None,
        }
    }
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
            http2: Http2Settings::default(),
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
