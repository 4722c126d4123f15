//! The mesh-wide dashboard (`ringmesh control --dashboard ADDR`): one page
//! that draws every workload of the mesh and who calls whom, with request
//! rate, success rate and latency per edge, from every joined proxy's own
//! metrics (Istio's `istio_requests_total` and
//! `istio_request_duration_milliseconds`, as each destination's sidecar
//! reports them, Kiali's way), and the proxies' sync state.
//!
//! Plain HTTP and read-only, on loopback unless told otherwise: it shows
//! the mesh's shape and traffic, not its secrets. Proxies are scraped at
//! most once a second whatever the number of viewers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};

use crate::Plane;

const PAGE: &str = include_str!("dashboard.html");

/// How often every proxy is scraped while the dashboard runs.
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// Rates are over at least this much time (and the newest scrape).
const WINDOW: Duration = Duration::from_secs(6);

/// Serves the dashboard until the process exits; scrapes every proxy in
/// the background, so the page shows rates from its first load.
pub async fn serve(listener: tokio::net::TcpListener, plane: Arc<Plane>) {
    let view: Arc<std::sync::Mutex<Value>> = Arc::new(std::sync::Mutex::new(json!({
        "version": 0, "proxies": [], "unreachable": [], "edges": []
    })));
    {
        let (plane, view) = (plane.clone(), view.clone());
        tokio::spawn(async move {
            let mut history: std::collections::VecDeque<(Instant, BTreeMap<EdgeKey, Edge>)> =
                std::collections::VecDeque::new();
            loop {
                let (edges, unreachable) = scrape_all(&plane).await;
                let now = Instant::now();
                while history.len() > 1
                    && history
                        .get(1)
                        .is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW)
                {
                    history.pop_front();
                }
                let computed = render(&plane, &edges, history.front(), now, unreachable);
                history.push_back((now, edges));
                if let Ok(mut v) = view.lock() {
                    *v = computed;
                }
                tokio::time::sleep(SCRAPE_EVERY).await;
            }
        });
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let view = view.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let view = view.clone();
                async move { Ok::<_, Infallible>(handle(&view, req.uri().path())) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn handle(view: &std::sync::Mutex<Value>, path: &str) -> Response<Full<Bytes>> {
    let (content_type, body) = match path {
        "/" | "/ui" => (
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        ),
        "/data" | "/ui/data" => {
            let v = view.lock().map(|v| v.to_string()).unwrap_or_default();
            ("application/json", Bytes::from(v))
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// One sample of the Prometheus text format: name, labels, value.
pub fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, BTreeMap::new(), value));
    };
    let rest = rest.strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(other) => v.push(other),
                    None => return None,
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), v);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name, labels, value))
}

/// GET http://addr/metrics, within a second.
async fn scrape(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get("/metrics")
            .header(hyper::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let body = http_body_util::Limited::new(resp.into_body(), 16 << 20)
            .collect()
            .await
            .ok()?
            .to_bytes();
        String::from_utf8(body.to_vec()).ok()
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// Edge key: (source workload and version, destination workload,
/// destination version).
type EdgeKey = (String, String, String);

/// Cumulative counts of one edge.
#[derive(Default, Clone)]
struct Edge {
    requests: f64,
    errors: f64,
    /// Cumulative duration buckets by upper bound (milliseconds x 1000).
    buckets: BTreeMap<u64, f64>,
    inf: f64,
}

/// Scrapes every live proxy that reported an admin address; edges as the
/// destinations report them (a gateway's callers, having no sidecar, as
/// the gateway reports them), and the proxies that could not be read.
async fn scrape_all(plane: &Plane) -> (BTreeMap<EdgeKey, Edge>, Vec<String>) {
    let admins = plane.registry.admin_addresses();
    let gateways: Vec<String> = plane
        .registry
        .desired()
        .mesh
        .gateways
        .iter()
        .map(|g| g.name.clone())
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, (_, a)) in admins.iter().enumerate() {
        let a = *a;
        set.spawn(async move { (i, scrape(a).await) });
    }
    let mut scrapes: Vec<Option<String>> = vec![None; admins.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, text)) = joined
            && let Some(slot) = scrapes.get_mut(i)
        {
            *slot = text;
        }
    }
    // A destination knows its caller by identity (workload), not version:
    // when one version of that workload runs, the edge starts there.
    let mut versions: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for p in plane.registry.status() {
        if let Some(v) = p.version {
            versions.entry(p.workload).or_default().insert(v);
        }
    }
    let mut edges: BTreeMap<EdgeKey, Edge> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for ((node, _), text) in admins.iter().zip(scrapes) {
        let Some(text) = text else {
            unreachable.push(node.clone());
            continue;
        };
        for line in text.lines() {
            let Some((name, labels, value)) = parse_sample(line) else {
                continue;
            };
            if !name.starts_with("istio_request") {
                continue;
            }
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            // A gateway is one node whatever its version; a service's
            // versions are nodes of their own.
            let workload = label("source_workload");
            let source = match label("source_version").as_str() {
                _ if gateways.contains(&workload) => workload,
                "" | "unknown" => match versions.get(&workload) {
                    Some(only) if only.len() == 1 => {
                        format!(
                            "{workload} {}",
                            only.iter().next().cloned().unwrap_or_default()
                        )
                    }
                    _ => workload,
                },
                v => format!("{workload} {v}"),
            };
            let key = match labels.get("reporter").map(String::as_str) {
                Some("destination") => (
                    source,
                    label("destination_workload"),
                    label("destination_version"),
                ),
                Some("source") if gateways.contains(&label("source_workload")) => (
                    "clients".to_owned(),
                    label("source_workload"),
                    String::new(),
                ),
                _ => continue,
            };
            let edge = edges.entry(key).or_default();
            match name {
                "istio_requests_total" => {
                    edge.requests += value;
                    let code = labels
                        .get("response_code")
                        .map(String::as_str)
                        .unwrap_or("");
                    if code.starts_with('5') || code == "0" {
                        edge.errors += value;
                    }
                }
                "istio_request_duration_milliseconds_bucket" => {
                    match labels.get("le").map(String::as_str) {
                        Some("+Inf") => edge.inf += value,
                        Some(le) => {
                            if let Ok(le) = le.parse::<f64>() {
                                *edge.buckets.entry((le * 1000.0) as u64).or_default() += value;
                            }
                        }
                        None => {}
                    }
                }
                _ => {}
            }
        }
    }
    (edges, unreachable)
}

/// The quantile `q` of the requests between `before` and `now`, in ms
/// (an upper bucket bound; None without requests).
fn quantile(q: f64, now: &Edge, before: Option<&Edge>) -> Option<f64> {
    let total = now.inf - before.map_or(0.0, |b| b.inf);
    if total <= 0.0 {
        return None;
    }
    for (le, c) in &now.buckets {
        let c = c - before
            .and_then(|b| b.buckets.get(le))
            .copied()
            .unwrap_or(0.0);
        if c >= q * total {
            return Some(*le as f64 / 1000.0);
        }
    }
    None
}

/// The page's data: proxies, and per edge the rate, success rate and
/// latency over the window (`before` to `now`).
fn render(
    plane: &Plane,
    edges: &BTreeMap<EdgeKey, Edge>,
    before: Option<&(Instant, BTreeMap<EdgeKey, Edge>)>,
    now: Instant,
    unreachable: Vec<String>,
) -> Value {
    let seconds = before
        .map(|(t, _)| now.duration_since(*t).as_secs_f64())
        .unwrap_or(0.0);
    let rows: Vec<Value> = edges
        .iter()
        .map(|(key, e)| {
            let old = before.and_then(|(_, b)| b.get(key));
            let n = e.requests - old.map_or(0.0, |o| o.requests);
            let bad = e.errors - old.map_or(0.0, |o| o.errors);
            json!({
                "source": key.0,
                "destination": key.1,
                "version": key.2,
                "requests": e.requests,
                "rps": if seconds > 0.0 { n / seconds } else { 0.0 },
                "success": if n > 0.0 { Some(100.0 * (n - bad) / n) } else { None },
                "p50_ms": quantile(0.5, e, old),
                "p99_ms": quantile(0.99, e, old),
            })
        })
        .collect();
    json!({
        "version": plane.registry.desired().version,
        "proxies": plane.registry.status(),
        "unreachable": unreachable,
        "window_seconds": seconds,
        "gateways": plane.registry.desired().mesh.gateways.iter().map(|g| g.name.clone()).collect::<Vec<_>>(),
        "edges": rows,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let (name, labels, value) = parse_sample(
            r#"istio_requests_total{reporter="destination",source_workload="product",response_code="503",x="a\"b,c"} 42"#,
        )
        .expect("sample");
        assert_eq!((name, value), ("istio_requests_total", 42.0));
        assert_eq!(labels["reporter"], "destination");
        assert_eq!(labels["source_workload"], "product");
        assert_eq!(labels["x"], "a\"b,c");
        assert_eq!(parse_sample("up 1").map(|s| s.2), Some(1.0));
        for junk in [
            "# HELP x y",
            "",
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x{a=\"1\"} two",
        ] {
            assert!(parse_sample(junk).is_none(), "{junk}");
        }
    }
}
