//! The OTLP/HTTP span exporter: a thread of its own (never a data-plane
//! core) drains the workers' span queue and posts batches as binary
//! protobuf (`application/x-protobuf`) to the collector, like the
//! OpenTelemetry SDK's batch span processor: at most 512 spans a batch,
//! at least every 5 s. A collector that is down or slow costs requests
//! nothing: the queue fills, spans are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use ringmesh_l7::trace::{SpanKind, SpanRecord, SpanSink, Value};

/// OpenTelemetry SDK's `maxExportBatchSize`.
pub const BATCH: usize = 512;
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

/// The OTLP messages exported (opentelemetry-proto's `trace.proto`,
/// `common.proto`, `resource.proto` and `trace_service.proto`; only the
/// fields the proxy fills).
pub mod proto {
    /// `ExportTraceServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    /// `ResourceSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    /// `Resource`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    /// `ScopeSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    /// `InstrumentationScope`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    /// `Span`.
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
        /// 2 server, 3 client.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }
    /// `Status`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0 unset, 1 ok, 2 error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    /// `KeyValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    /// `AnyValue` (string and integer only).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 3")]
        pub value: Option<any_value::Value>,
    }
    /// `AnyValue.value`.
    pub mod any_value {
        /// The value.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(int64, tag = "3")]
            IntValue(i64),
        }
    }
}

fn key_value(key: &str, value: Value) -> proto::KeyValue {
    let value = match value {
        Value::Str(s) => proto::any_value::Value::StringValue(s),
        Value::Int(i) => proto::any_value::Value::IntValue(i),
    };
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue { value: Some(value) }),
    }
}

/// Encodes one batch as an `ExportTraceServiceRequest`.
pub fn encode(settings: &ExportSettings, batch: Vec<SpanRecord>) -> Vec<u8> {
    use prost::Message;
    let mut resource = vec![key_value(
        "service.name",
        Value::Str(settings.service_name.clone()),
    )];
    resource.extend(
        settings
            .resource
            .iter()
            .map(|(k, v)| key_value(k, Value::Str(v.clone()))),
    );
    resource.push(key_value(
        "telemetry.sdk.name",
        Value::Str("ringmesh".into()),
    ));
    let spans = batch
        .into_iter()
        .map(|s| proto::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: match s.kind {
                SpanKind::Server => 2,
                SpanKind::Client => 3,
            },
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.end_unix_nanos,
            attributes: s
                .attributes
                .into_iter()
                .map(|(k, v)| key_value(k, v))
                .collect(),
            status: s.error.then(|| proto::Status {
                message: String::new(),
                code: 2,
            }),
        })
        .collect();
    proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(proto::Resource {
                attributes: resource,
            }),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "ringmesh".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    }
    .encode_to_vec()
}

/// Starts the exporter thread on `sink`'s queue; `settings` is read at
/// each export (a reload changes it; `None`: spans are discarded).
pub fn spawn(
    sink: Arc<SpanSink>,
    settings: Arc<ArcSwapOption<ExportSettings>>,
) -> std::io::Result<()> {
    let Some(rx) = sink.take_receiver() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("ringmesh-otlp".into())
        .spawn(move || run(rx, &sink, &settings))?;
    Ok(())
}

fn run(rx: Receiver<SpanRecord>, sink: &SpanSink, settings: &ArcSwapOption<ExportSettings>) {
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
    let mut batch = Vec::with_capacity(BATCH);
    let mut next = Instant::now() + INTERVAL;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(span) => {
                batch.push(span);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        next = Instant::now() + INTERVAL;
        if batch.is_empty() {
            continue;
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let n = spans.len() as u64;
        let Some(s) = settings.load_full() else {
            continue;
        };
        let body = encode(&s, spans);
        match runtime.block_on(post(&s, body)) {
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

/// Posts one batch; `Err` unless the collector answered 2xx.
async fn post(settings: &ExportSettings, body: Vec<u8>) -> Result<(), String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(&settings.endpoint.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
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
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    };
    match tokio::time::timeout(settings.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", settings.timeout)),
    }
}

/// Nanoseconds since the Unix epoch now (tests).
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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

    #[test]
    fn a_batch_encodes_to_an_otlp_request_that_decodes_back() {
        use prost::Message;
        let settings = ExportSettings {
            endpoint: Endpoint::parse("http://127.0.0.1:4318").expect("valid"),
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
            service_name: "reviews".into(),
            resource: Vec::new(),
        };
        let span = SpanRecord {
            trace_id: [7; 16],
            span_id: [8; 8],
            parent: Some([9; 8]),
            kind: SpanKind::Client,
            name: "GET".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![("http.response.status_code", Value::Int(503))],
            error: true,
        };
        let bytes = encode(&settings, vec![span]);
        let back = proto::ExportTraceServiceRequest::decode(&bytes[..]).expect("decodes");
        let s = &back.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!((s.kind, s.parent_span_id.as_slice()), (3, &[9u8; 8][..]));
        assert_eq!(s.status.as_ref().map(|s| s.code), Some(2));
    }
}
