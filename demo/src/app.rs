//! The demo's services, as small HTTP/1.1 apps on loopback: `product`
//! answers `GET /product/{id}` by calling `recommendation` and `review`
//! through its sidecar (plain HTTP to the sidecar's outbound listener, the
//! service named in Host) and composing their answers; each part names
//! the version that served it. Every request logs one line like the
//! talk's, `GET /review v2 (ringmesh demo), productId: 7, trace=...`, so
//! the services' logs join on the trace id. Like any app in a mesh, they
//! pass the trace headers of the request they serve on to the calls they
//! make (the sidecars add spans, not the apps).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;

/// Headers an app passes on: so that its calls join the request's trace
/// and request id (Istio's list), and the demo's `x-canary` (as Istio's
/// bookinfo passes `end-user` on for its header-based routing).
pub const PROPAGATED: [&str; 10] = [
    "x-canary",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
];

/// Which service an app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Calls recommendation and review, composes their answers.
    Product,
    /// Recommends other products.
    Recommendation,
    /// Reviews of a product.
    Review,
}

impl Service {
    /// Its name (the Host other services call it by).
    pub fn name(self) -> &'static str {
        match self {
            Service::Product => "product",
            Service::Recommendation => "recommendation",
            Service::Review => "review",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Service> {
        match name {
            "product" => Some(Service::Product),
            "recommendation" => Some(Service::Recommendation),
            "review" => Some(Service::Review),
            _ => None,
        }
    }
}

/// How to run one app.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Which service.
    pub service: Service,
    /// Its version label (`v1`, `v2`).
    pub version: String,
    /// Where it listens (its sidecar forwards to it).
    pub listen: SocketAddr,
    /// Its sidecar's outbound listener (product's calls go there).
    pub outbound: Option<SocketAddr>,
    /// Append request lines to this file, prefixed with `[tag] ` (the
    /// demo's interleaved services log), instead of stdout.
    pub log: Option<(std::path::PathBuf, String)>,
}

/// Why an app could not run.
#[derive(Debug, Error)]
pub enum AppError {
    /// Its address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Error.
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the app until the process is killed.
pub fn run(options: AppOptions) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| AppError::Listen {
                addr: options.listen,
                source,
            })?;
        let sink = match &options.log {
            Some((path, tag)) => Some(LogSink {
                file: std::sync::Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(AppError::Runtime)?,
                ),
                tag: tag.clone(),
            }),
            None => None,
        };
        let options = std::sync::Arc::new((options, sink));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let options = options.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let options = options.clone();
                    async move { Ok::<_, Infallible>(handle(&options.0, options.1.as_ref(), req).await) }
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(60));
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The trace id of a request: W3C `traceparent`, else B3.
pub fn trace_id(req: &Request<Incoming>) -> String {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = header("traceparent").and_then(|v| v.split('-').nth(1)) {
        return id.to_owned();
    }
    if let Some(id) = header("x-b3-traceid") {
        return id.to_owned();
    }
    "-".into()
}

/// Where request lines go when not to stdout.
struct LogSink {
    file: std::sync::Mutex<std::fs::File>,
    tag: String,
}

async fn handle(
    options: &AppOptions,
    sink: Option<&LogSink>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return json(StatusCode::OK, serde_json::json!({ "status": "ok" }));
    }
    let name = options.service.name();
    let prefix = format!("/{name}/");
    let Some(id) = path
        .strip_prefix(&prefix)
        .and_then(|id| id.parse::<u32>().ok())
    else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("try GET /{name}/{{id}}") }),
        );
    };
    // One line per request, written whole (the talk's format).
    let line = format!(
        "GET /{name} {} (ringmesh demo), productId: {id}, trace={}\n",
        options.version,
        trace_id(&req)
    );
    match sink {
        // One append per line: lines of different services interleave whole.
        Some(sink) => {
            if let Ok(mut f) = sink.file.lock() {
                let _ = f.write_all(format!("[{}] {line}", sink.tag).as_bytes());
            }
        }
        None => {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
    match options.service {
        Service::Recommendation => json(
            StatusCode::OK,
            serde_json::json!({
                "service": name,
                "version": options.version,
                "productId": id,
                "recommendations": [(id % 10) + 1, (id % 7) + 11, (id % 5) + 21],
            }),
        ),
        Service::Review => {
            let mut review = serde_json::json!({
                "service": name,
                "version": options.version,
                "productId": id,
                "reviews": [
                    { "reviewer": "Reviewer1", "text": "An extremely entertaining product." },
                    { "reviewer": "Reviewer2", "text": "Absolutely fun and entertaining." },
                ],
            });
            // v2 adds star ratings, as in the talk's v2.
            if options.version != "v1" {
                review["reviews"][0]["stars"] = serde_json::json!(5 - id % 2);
                review["reviews"][1]["stars"] = serde_json::json!(4);
            }
            json(StatusCode::OK, review)
        }
        Service::Product => product(options, id, &req).await,
    }
}

/// product's answer: its own part and the other two services'.
async fn product(options: &AppOptions, id: u32, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(outbound) = options.outbound else {
        return json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": "product has no --outbound sidecar address" }),
        );
    };
    let headers: Vec<(&str, String)> = PROPAGATED
        .iter()
        .filter_map(|h| {
            let v = req.headers().get(*h)?.to_str().ok()?;
            Some((*h, v.to_owned()))
        })
        .collect();
    let (rec_path, review_path) = (format!("/recommendation/{id}"), format!("/review/{id}"));
    let (recommendations, reviews) = tokio::join!(
        call(outbound, "recommendation", &rec_path, &headers),
        call(outbound, "review", &review_path, &headers),
    );
    let failed = [&recommendations, &reviews]
        .iter()
        .any(|part| part.get("error").is_some());
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(
        status,
        serde_json::json!({
            "service": "product",
            "version": options.version,
            "productId": id,
            "recommendation": recommendations,
            "review": reviews,
        }),
    )
}

/// One call through the sidecar: the part of the answer, or an `error`
/// naming what the call got.
async fn call(
    outbound: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, String)],
) -> serde_json::Value {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(outbound)
            .await
            .map_err(|e| format!("connect to the sidecar: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = Request::get(path).header(hyper::header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{host} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| format!("{host} answered invalid JSON: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => serde_json::json!({ "error": e }),
        Err(_) => serde_json::json!({ "error": format!("{host}: no answer within 10s") }),
    }
}
