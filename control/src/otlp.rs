//! The OTLP/HTTP span exporter: a thread of its own (never a data-plane
//! core) drains the workers' span queue and posts batches as binary
//! protobuf (`application/x-protobuf`) to the collector, like the
//! OpenTelemetry SDK's batch span processor: at most 512 spans a batch,
//! at least every 5 s. A collector that is down or slow costs requests
//! nothing: the queue fills, spans are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ringmesh_l7::trace::SpanSink;
use ringmesh_l7::trace::encode::{Attr, export_request};
use ringmesh_l7::trace::span::{BATCH, Pending};

/// OpenTelemetry SDK's `scheduledDelayMillis`.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Where and how to export (from the running config).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The collector.
    pub endpoint: Endpoint,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Time allowed for one export.
    pub timeout: Duration,
    /// The resource's `service.name`.
    pub service_name: String,
    /// More resource attributes (`service.namespace`, `service.version`).
    pub resource: Vec<(&'static str, String)>,
}

/// An `http://host:port/path` collector address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as written (also the `Host` header).
    pub authority: String,
    /// The request path (default `/v1/traces`).
    pub path: String,
}

impl Endpoint {
    /// Parses an endpoint; only plain `http` is supported.
    pub fn parse(url: &str) -> Result<Endpoint, &'static str> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("only http:// collectors are supported (OTLP/HTTP on port 4318)")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/traces"),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or("the port is missing (OTLP/HTTP listens on 4318)")?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err("expected host:port");
        }
        if path.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("the path has spaces or control characters");
        }
        Ok(Endpoint {
            authority: authority.to_owned(),
            path: if path == "/" { "/v1/traces" } else { path }.to_owned(),
        })
    }
}

/// The `ExportTraceServiceRequest` of spans encoded by the workers.
pub fn request(settings: &ExportSettings, spans: &[u8]) -> Vec<u8> {
    let mut resource: Vec<(&str, Attr<'_>)> =
        vec![("service.name", Attr::Str(settings.service_name.as_bytes()))];
    resource.extend(
        settings
            .resource
            .iter()
            .map(|(k, v)| (*k, Attr::Str(v.as_bytes()))),
    );
    resource.push(("telemetry.sdk.name", Attr::Str(b"ringmesh")));
    export_request(&resource, spans)
}

/// Splits drained spans into batches of at most [`BATCH`] spans: byte
/// ranges of each worker's buffer.
fn batches(pending: &[Pending]) -> Vec<(usize, std::ops::Range<usize>, usize)> {
    let mut out = Vec::new();
    for (w, p) in pending.iter().enumerate() {
        let mut start = 0;
        for chunk in p.ends.chunks(BATCH) {
            let end = chunk.last().copied().unwrap_or(start);
            out.push((w, start..end, chunk.len()));
            start = end;
        }
    }
    out
}

/// Starts the exporter thread on `sink`'s queue; `settings` is read at
/// each export (a reload changes it; `None`: spans are discarded).
pub fn spawn(
    sink: Arc<SpanSink>,
    settings: Arc<ArcSwapOption<ExportSettings>>,
) -> std::io::Result<()> {
    let Some(waiter) = sink.take_waiter() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("ringmesh-otlp".into())
        .spawn(move || run(&waiter, &sink, &settings))?;
    Ok(())
}

fn run(
    waiter: &std::sync::mpsc::Receiver<()>,
    sink: &SpanSink,
    settings: &ArcSwapOption<ExportSettings>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the OTLP exporter could not start; spans will be dropped");
            return;
        }
    };
    let mut next = Instant::now() + INTERVAL;
    let mut kept = None;
    loop {
        // Woken by a full batch, or at the interval.
        if !ringmesh_l7::trace::span::wait(waiter, next.saturating_duration_since(Instant::now())) {
            return;
        }
        if Instant::now() >= next {
            next = Instant::now() + INTERVAL;
        }
        let pending = sink.drain();
        if pending.is_empty() {
            continue;
        }
        let Some(s) = settings.load_full() else {
            continue;
        };
        for (w, range, n) in batches(&pending) {
            let body = request(&s, &pending[w].bytes[range]);
            let n = n as u64;
            match runtime.block_on(post(&s, body, &mut kept)) {
                Ok(()) => {
                    sink.exported.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    sink.failed.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(endpoint = %s.endpoint.authority, error = %e, spans = n, "OTLP export failed; the spans are dropped");
                }
            }
        }
    }
}

/// The exporter's connection to the collector, kept alive between
/// batches (a new connection per batch would cost more than the batch).
type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// Opens a connection to the collector.
async fn connect(settings: &ExportSettings) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(&settings.endpoint.authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one batch on `sender`; `Ok(None)` when the connection turned out
/// closed before the request went out (a kept-alive connection the
/// collector dropped meanwhile).
async fn send(
    sender: &mut Sender,
    settings: &ExportSettings,
    body: &bytes::Bytes,
) -> Result<Option<hyper::StatusCode>, String> {
    use http_body_util::BodyExt;
    if sender.ready().await.is_err() {
        return Ok(None);
    }
    let mut request = hyper::Request::post(&settings.endpoint.path)
        .header("host", &settings.endpoint.authority)
        .header("content-type", "application/x-protobuf")
        .header(
            "user-agent",
            concat!("ringmesh/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &settings.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) if e.is_canceled() || e.is_closed() => return Ok(None),
        Err(e) => return Err(format!("send: {e}")),
    };
    let status = response.status();
    // The answer is read whole, so the connection can carry the next batch.
    let _ = response.into_body().collect().await;
    Ok(Some(status))
}

/// Posts one batch, on the kept-alive connection when there is one;
/// `Err` unless the collector answered 2xx.
async fn post(
    settings: &ExportSettings,
    body: Vec<u8>,
    kept: &mut Option<(String, Sender)>,
) -> Result<(), String> {
    let body = bytes::Bytes::from(body);
    let work = async {
        let reused = kept
            .take()
            .filter(|(authority, _)| *authority == settings.endpoint.authority);
        let mut attempts = match reused {
            Some((_, s)) => vec![Some(s), None],
            None => vec![None],
        };
        for candidate in attempts.drain(..) {
            let mut sender = match candidate {
                Some(s) => s,
                None => connect(settings).await?,
            };
            if let Some(status) = send(&mut sender, settings, &body).await? {
                *kept = Some((settings.endpoint.authority.clone(), sender));
                return if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("collector answered {status}"))
                };
            }
        }
        Err("the collector closed the connection".to_owned())
    };
    match tokio::time::timeout(settings.timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            *kept = None;
            Err(format!("no answer within {:?}", settings.timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_with_a_port_and_default_to_v1_traces() {
        let e = Endpoint::parse("http://127.0.0.1:4318").expect("valid");
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:4318", "/v1/traces")
        );
        let e = Endpoint::parse("http://collector:4318/otlp/v1/traces").expect("valid");
        assert_eq!(e.path, "/otlp/v1/traces");
        for bad in [
            "https://c:4318",
            "http://c",
            "http://:4318",
            "http://c:x",
            "c:4318",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    /// The OTLP messages, declared independently with prost, to decode
    /// what the workers and the exporter wrote.
    mod otlp {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Request {
            #[prost(message, repeated, tag = "1")]
            pub resource_spans: Vec<ResourceSpans>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ResourceSpans {
            #[prost(message, optional, tag = "1")]
            pub resource: Option<Resource>,
            #[prost(message, repeated, tag = "2")]
            pub scope_spans: Vec<ScopeSpans>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Resource {
            #[prost(message, repeated, tag = "1")]
            pub attributes: Vec<KeyValue>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ScopeSpans {
            #[prost(message, optional, tag = "1")]
            pub scope: Option<Scope>,
            #[prost(message, repeated, tag = "2")]
            pub spans: Vec<Span>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Scope {
            #[prost(string, tag = "1")]
            pub name: String,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Span {
            #[prost(bytes = "vec", tag = "1")]
            pub trace_id: Vec<u8>,
            #[prost(bytes = "vec", tag = "2")]
            pub span_id: Vec<u8>,
            #[prost(bytes = "vec", tag = "4")]
            pub parent_span_id: Vec<u8>,
            #[prost(string, tag = "5")]
            pub name: String,
            #[prost(int32, tag = "6")]
            pub kind: i32,
            #[prost(fixed64, tag = "7")]
            pub start: u64,
            #[prost(fixed64, tag = "8")]
            pub end: u64,
            #[prost(message, repeated, tag = "9")]
            pub attributes: Vec<KeyValue>,
            #[prost(message, optional, tag = "15")]
            pub status: Option<Status>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Status {
            #[prost(int32, tag = "3")]
            pub code: i32,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct KeyValue {
            #[prost(string, tag = "1")]
            pub key: String,
            #[prost(message, optional, tag = "2")]
            pub value: Option<AnyValue>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct AnyValue {
            #[prost(string, tag = "1")]
            pub string_value: String,
            #[prost(int64, tag = "3")]
            pub int_value: i64,
        }
    }

    #[test]
    fn spans_encoded_by_a_worker_decode_as_an_otlp_request() {
        use prost::Message;
        use ringmesh_l7::trace::encode::{SpanHead, span_attribute, span_body};
        let sink = SpanSink::new(1, 16);
        for status in [200, 503] {
            sink.record(0, |out| {
                let head = SpanHead {
                    trace_id: &[7; 16],
                    span_id: &[8; 8],
                    parent: Some(&[9; 8]),
                    kind: 3,
                    start_unix_nanos: 1,
                    end_unix_nanos: 2,
                    error: status >= 500,
                };
                span_body(out, &head, &[b"GET", b" ", b"api"], |out| {
                    span_attribute(out, "http.response.status_code", Attr::Int(status));
                    span_attribute(out, "url.full", Attr::Parts(&[b"http://", b"a:1", b"/x"]));
                });
            });
        }
        let pending = sink.drain();
        let settings = ExportSettings {
            endpoint: Endpoint::parse("http://127.0.0.1:4318").expect("valid"),
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
            service_name: "reviews".into(),
            resource: vec![("service.version", "v1".into())],
        };
        let bytes = request(&settings, &pending[0].bytes);
        let back = otlp::Request::decode(&bytes[..]).expect("decodes");
        let rs = &back.resource_spans[0];
        let resource = rs.resource.as_ref().expect("resource");
        assert_eq!(resource.attributes[0].key, "service.name");
        assert_eq!(
            resource.attributes[0]
                .value
                .as_ref()
                .map(|v| v.string_value.as_str()),
            Some("reviews")
        );
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].name.as_str(), spans[0].kind), ("GET api", 3));
        assert_eq!(spans[0].parent_span_id, [9; 8]);
        assert_eq!(spans[0].status, None);
        assert_eq!(spans[1].status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(
            spans[1].attributes[0].value.as_ref().map(|v| v.int_value),
            Some(503)
        );
        assert_eq!(
            spans[1].attributes[1]
                .value
                .as_ref()
                .map(|v| v.string_value.as_str()),
            Some("http://a:1/x")
        );
    }

    #[test]
    fn drained_spans_are_cut_into_batches_of_512() {
        let sink = SpanSink::new(2, 4096);
        for i in 0..1100 {
            sink.record(i % 2, |out| out.push(1));
        }
        let pending = sink.drain();
        let sizes: Vec<usize> = batches(&pending).iter().map(|(_, _, n)| *n).collect();
        assert_eq!(sizes, [512, 38, 512, 38]);
    }
}
