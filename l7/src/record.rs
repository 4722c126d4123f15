//! One result object per request: everything the access log and the
//! metrics need, emitted exactly once when the request ends (ztunnel's
//! pattern). The access-log text fields are copied into the connection's
//! reused strings, not allocated per request.

use std::net::SocketAddr;
use std::time::Instant;

use ringmesh_core::protocol::ConnectionFacts;

use crate::codec::h1::{Field, FieldKind, RequestHead};
use crate::config::HttpListener;
use crate::local_reply::ResponseFlag;
use crate::server::Client;

/// The downstream side of a request as the record needs it: an HTTP/1.1
/// connection ([`Client`]) or one HTTP/2 stream.
pub(crate) trait Downstream {
    /// The connection's facts.
    fn facts(&self) -> &ConnectionFacts;
    /// The client's address as text.
    fn peer_ip(&self) -> &str;
    /// The request's access-log text.
    fn log(&self) -> &LogText;
    /// The client's identity interned in the mesh metrics.
    fn mesh_source(&self, mesh: &crate::mesh::MeshStats) -> u16;
    /// Bytes received from the client so far (this request's counted
    /// from the record's start).
    fn received(&self) -> u64;
    /// Bytes sent to the client so far.
    fn sent(&self) -> u64;
}

impl Downstream for Client {
    fn facts(&self) -> &ConnectionFacts {
        &self.facts
    }
    fn peer_ip(&self) -> &str {
        &self.peer_ip
    }
    fn log(&self) -> &LogText {
        &self.log
    }
    fn mesh_source(&self, mesh: &crate::mesh::MeshStats) -> u16 {
        Client::mesh_source(self, mesh)
    }
    fn received(&self) -> u64 {
        self.bytes.received.get()
    }
    fn sent(&self) -> u64 {
        self.bytes.sent.get()
    }
}

/// The protocol a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http10,
    Http11,
    Http2,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }

    fn version(self) -> &'static [u8] {
        match self {
            Protocol::Http10 => b"1.0",
            Protocol::Http11 => b"1.1",
            Protocol::Http2 => b"2",
        }
    }
}

/// Text fields of the access log (and of a sampled request's spans),
/// reused by a connection's requests.
#[derive(Debug, Default)]
pub(crate) struct LogText {
    pub method: String,
    pub authority: String,
    pub path: String,
    request_id: String,
}

/// What is known about one request, finished once.
pub(crate) struct RequestRecord {
    started: Instant,
    /// The response status sent (0: none).
    pub status: u16,
    /// Why the proxy answered or cut the request itself.
    pub flag: Option<ResponseFlag>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The index of the route that took the request.
    pub route: Option<usize>,
    /// The index of the cluster the route's split picked.
    pub target: Option<usize>,
    /// What went wrong, for the log.
    pub error: Option<String>,
    /// The request's trace (tracing on).
    pub trace: Option<crate::trace::Trace>,
    /// Spans are recorded for this request (sampled, with a collector);
    /// their text fields are in the connection's `LogText`.
    pub span: bool,
    /// The connection's `LogText` holds this request's fields.
    texted: bool,
    /// The gRPC status the response ended with (gRPC requests).
    pub grpc_status: Option<u8>,
    /// The id sent upstream when the proxy generated one.
    request_id: Option<[u8; 36]>,
    pub protocol: Protocol,
    received_before: u64,
    sent_before: u64,
}

impl RequestRecord {
    /// When the request's head began to arrive.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Starts the record of the request whose head is `head` (read into
    /// the client's buffer).
    pub fn new(
        started: Instant,
        received_before: u64,
        http: &HttpListener,
        head: &RequestHead,
        c: &mut Client,
    ) -> Self {
        let sent_before = c.bytes.sent.get();
        Self::of_head(
            started,
            (received_before, sent_before),
            http,
            head,
            (&c.buf, &c.fields),
            &mut c.log,
        )
    }

    /// Starts the record of the request whose head `head` is in `buf`
    /// (`fields` its fields), whatever the protocol; `bytes` are the
    /// connection's counts (received, sent) before it.
    pub fn of_head(
        started: Instant,
        bytes: (u64, u64),
        http: &HttpListener,
        head: &RequestHead,
        (buf, fields): (&[u8], &[Field]),
        text: &mut LogText,
    ) -> Self {
        let request_id = (http.settings.generate_request_id && !head.has_request_id)
            .then(crate::request_id::uuid_v4);
        let trace = http.tracing.as_ref().map(|t| t.start(buf, head, fields));
        let recorded = http.tracing.as_ref().is_some_and(|t| t.sink.is_some());
        let span = recorded && trace.is_some_and(|t| t.sampled);
        let texted = http.settings.access_log || span || http.taps.is_active();
        if texted {
            let set = |s: &mut String, b: &[u8]| {
                s.clear();
                s.push_str(&String::from_utf8_lossy(b));
            };
            set(&mut text.method, head.method_span.get(buf));
            set(&mut text.path, head.target.get(buf));
            match head.host {
                Some(h) => set(&mut text.authority, h.get(buf)),
                None => text.authority.clear(),
            }
            text.request_id.clear();
            if let Some(id) = &request_id {
                set(&mut text.request_id, id);
            } else if let Some(f) = fields.iter().find(|f| f.kind == FieldKind::XRequestId) {
                set(&mut text.request_id, f.value.get(buf));
            }
        }
        RequestRecord {
            started,
            trace,
            span,
            texted,
            status: 0,
            flag: None,
            endpoint: None,
            attempts: 0,
            route: None,
            target: None,
            error: None,
            grpc_status: None,
            request_id,
            protocol: if head.minor == 0 {
                Protocol::Http10
            } else {
                Protocol::Http11
            },
            received_before: bytes.0,
            sent_before: bytes.1,
        }
    }

    /// The generated request id, if the proxy made one.
    pub fn request_id_str(&self) -> Option<&str> {
        self.request_id
            .as_ref()
            .and_then(|id| std::str::from_utf8(id).ok())
    }

    /// Emits the request's metrics and access-log line.
    pub fn finish(self, http: &HttpListener, c: &impl Downstream) {
        let elapsed = self.started.elapsed();
        let core = c.facts().core;
        let route = self.route.and_then(|i| http.routes.routes().get(i));
        let stats = match route {
            Some(r) => r.stats(self.target),
            None => &http.unrouted,
        };
        stats.record(core, self.status.max(100), elapsed);
        if let Some(code) = self.grpc_status {
            stats.record_grpc(core, code);
        }
        let sink = http.tracing.as_ref().and_then(|t| t.sink.as_ref());
        if let (Some(trace), true, Some(sink)) = (&self.trace, self.span, sink) {
            sink.record(core, |out| self.server_span(out, trace, route, http, c));
        }
        if let Some(mesh) = &http.mesh {
            // Outbound: the series is keyed by the cluster called.
            let source = if http.mesh_outbound {
                match (route.map(|r| &r.action), self.target) {
                    (Some(crate::route::Action::Forward(f)), Some(t)) => {
                        f.targets.get(t).map_or(0, |t| t.target.mesh_id)
                    }
                    _ => 0,
                }
            } else {
                c.mesh_source(mesh)
            };
            mesh.record(
                core,
                &crate::mesh::Sample {
                    source,
                    outbound: http.mesh_outbound,
                    code: self.status,
                    flag: self.flag,
                    grpc: self.grpc_status,
                    duration: elapsed,
                    request_bytes: c.received() - self.received_before,
                    response_bytes: c.sent() - self.sent_before,
                },
            );
        }
        // A tap opened while this request ran sees the next ones.
        if self.texted && http.taps.is_active() {
            self.tap(http, route, c, elapsed);
        }
        if !http.settings.access_log {
            return;
        }
        let trace_id = self
            .trace
            .map(|t| crate::trace::propagation::trace_id_hex(&t.trace_id));
        let trace_id = trace_id
            .as_ref()
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("-");
        let or_dash = |s: &str| if s.is_empty() { "-" } else { s }.to_owned();
        let endpoint = self.endpoint.map(|a| a.to_string());
        let cluster = match (route.map(|r| &r.action), self.target) {
            (Some(crate::route::Action::Forward(f)), Some(t)) => {
                f.targets.get(t).map(|t| &*t.target.cluster.name)
            }
            _ => None,
        };
        tracing::info!(
            target: "ringmesh::access",
            listener = %http.name,
            route = route.map(|r| &*r.name).unwrap_or("-"),
            cluster = cluster.unwrap_or("-"),
            peer = %c.facts().peer,
            method = %c.log().method,
            authority = %or_dash(&c.log().authority),
            path = %c.log().path,
            protocol = self.protocol.as_str(),
            status = self.status,
            grpc_status = self.grpc_status.map_or("-", crate::h2::grpc::name),
            flags = self.flag.map(|f| f.as_str()).unwrap_or("-"),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream = endpoint.as_deref().unwrap_or("-"),
            attempts = self.attempts,
            bytes_received = c.received() - self.received_before,
            bytes_sent = c.sent() - self.sent_before,
            identity = c.facts().identity.as_deref().unwrap_or("-"),
            request_id = %or_dash(&c.log().request_id),
            trace_id = trace_id,
            error = self.error.as_deref().unwrap_or(""),
            "request"
        );
    }

    /// Encodes the proxy's server span of a sampled request.
    fn server_span(
        &self,
        out: &mut Vec<u8>,
        trace: &crate::trace::Trace,
        route: Option<&crate::route::Route>,
        http: &HttpListener,
        c: &impl Downstream,
    ) {
        use crate::trace::encode::{Attr, SpanHead, span_attribute, span_body};
        let text = c.log();
        let target = text.path.as_bytes();
        let path = target.split(|&b| b == b'?').next().unwrap_or(target);
        let (start, end) = crate::trace::span_times(self.started);
        let head = SpanHead {
            trace_id: &trace.trace_id,
            span_id: &trace.span_id,
            parent: trace.parent.as_ref(),
            kind: crate::trace::SpanKind::Server as u8,
            start_unix_nanos: start,
            end_unix_nanos: end,
            error: self.status == 0 || self.status >= 500,
        };
        let route_name = route.map(|r| r.name.as_bytes());
        let name: &[&[u8]] = match route_name {
            Some(r) => &[text.method.as_bytes(), b" ", r],
            None => &[text.method.as_bytes()],
        };
        span_body(out, &head, name, |out| {
            span_attribute(
                out,
                "http.request.method",
                Attr::Str(text.method.as_bytes()),
            );
            // Envoy's max_path_tag_length.
            span_attribute(out, "url.path", Attr::Str(&path[..path.len().min(256)]));
            let scheme: &[u8] = if http.tls { b"https" } else { b"http" };
            span_attribute(out, "url.scheme", Attr::Str(scheme));
            span_attribute(out, "server.address", Attr::Str(text.authority.as_bytes()));
            span_attribute(
                out,
                "network.peer.address",
                Attr::Str(c.peer_ip().as_bytes()),
            );
            span_attribute(
                out,
                "network.protocol.version",
                Attr::Str(self.protocol.version()),
            );
            if let Some(code) = self.grpc_status {
                span_attribute(out, "rpc.grpc.status_code", Attr::Int(i64::from(code)));
            }
            if self.status > 0 {
                span_attribute(
                    out,
                    "http.response.status_code",
                    Attr::Int(i64::from(self.status)),
                );
            }
            if let Some(r) = route_name {
                span_attribute(out, "http.route", Attr::Str(r));
            }
            if let Some(f) = self.flag {
                span_attribute(
                    out,
                    "ringmesh.response_flags",
                    Attr::Str(f.as_str().as_bytes()),
                );
            }
            if let Some(e) = self.endpoint {
                let mut addr = [0u8; 64];
                let n = crate::trace::format_addr(&mut addr, e);
                span_attribute(out, "ringmesh.upstream", Attr::Str(&addr[..n]));
            }
            if self.attempts > 1 {
                span_attribute(
                    out,
                    "ringmesh.attempts",
                    Attr::Int(i64::from(self.attempts)),
                );
            }
            if let Some(id) = &c.facts().identity {
                span_attribute(out, "ringmesh.peer.identity", Attr::Str(id.as_bytes()));
            }
        });
    }

    /// Offers the finished request to the open taps (their filters use the
    /// request's head, which may have left the buffer: the head's copy is
    /// built only when a tap wants it, from what the record kept).
    fn tap(
        &self,
        http: &HttpListener,
        route: Option<&crate::route::Route>,
        c: &impl Downstream,
        elapsed: std::time::Duration,
    ) {
        let cluster = match (route.map(|r| &r.action), self.target) {
            (Some(crate::route::Action::Forward(f)), Some(t)) => {
                f.targets.get(t).map(|t| &*t.target.cluster.name)
            }
            _ => None,
        };
        let text = c.log();
        let view = crate::tap::TapView {
            listener: &http.name,
            route: route.map(|r| &*r.name).unwrap_or("-"),
            cluster: cluster.unwrap_or("-"),
            method: &text.method,
            path: &text.path,
            status: self.status,
        };
        http.taps.publish(&view, || crate::tap::TapEvent {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            listener: view.listener.to_owned(),
            route: view.route.to_owned(),
            cluster: view.cluster.to_owned(),
            method: text.method.clone(),
            authority: text.authority.clone(),
            path: text.path.clone(),
            status: self.status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            flags: self.flag.map_or("-", |f| f.as_str()).to_owned(),
            upstream: self
                .endpoint
                .map_or_else(|| "-".to_owned(), |e| e.to_string()),
            attempts: self.attempts,
            peer: c.facts().peer.to_string(),
            identity: c.facts().identity.as_deref().unwrap_or("-").to_owned(),
            request_id: if text.request_id.is_empty() {
                "-".to_owned()
            } else {
                text.request_id.clone()
            },
            trace_id: self
                .trace
                .map(|t| {
                    String::from_utf8_lossy(&crate::trace::propagation::trace_id_hex(&t.trace_id))
                        .into_owned()
                })
                .unwrap_or_else(|| "-".to_owned()),
        });
    }
}
