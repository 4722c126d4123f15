//! Distributed tracing (README "Tracing"): W3C and B3 context in and out,
//! parent-based sampling, spans exported over OTLP/HTTP protobuf and
//! decoded by the OpenTelemetry project's own Python classes
//! (`tests/helpers/otlp_receiver.py`, PyPI `opentelemetry-proto`, which
//! `.ci/run` installs); a collector that is down costs requests nothing.
//! Without python3 and that package, the tests that need the receiver say
//! SKIPPED.

mod helpers;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;
use helpers::tcp::Blackhole;
use serde_json::Value;

/// The Python OTLP receiver and the spans it decoded so far.
struct Collector {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    /// Starts the receiver; `None` (the caller skips) without python3 or
    /// `opentelemetry-proto`.
    fn start() -> Option<Collector> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/helpers/otlp_receiver.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let Some(port) = first
            .as_deref()
            .and_then(|l| l.strip_prefix("port "))
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut BufReader::new(e), &mut err);
            }
            eprintln!(
                "SKIPPED: the OTLP receiver did not start (pip install opentelemetry-proto): {err}"
            );
            return None;
        };
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Some(Collector { child, port, spans })
    }

    /// Waits (up to 15 s: the exporter flushes every 5 s) for `n` spans.
    fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n || Instant::now() >= deadline {
                return spans;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP listener `web` forwarding to `upstream`, with `tracing` and
/// `node` blocks as given.
fn config(upstream: std::net::SocketAddr, tracing: &str, node: &str) -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:0\nnode: {{ {node} }}\ntracing: {tracing}\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: true\n    routes:\n      - {{ name: api, cluster: app }}\nclusters:\n  - name: app\n    endpoints: [\"{upstream}\"]\n"
    )
}

/// An upstream that answers with the request's trace headers in its body.
fn echo_trace_headers() -> Upstream {
    Upstream::start(|r| {
        let pick = |n: &str| r.header(n).unwrap_or("").to_owned();
        Reply::ok(
            serde_json::json!({
                "traceparent": pick("traceparent"),
                "tracestate": pick("tracestate"),
                "b3": pick("b3"),
                "x-b3-traceid": pick("x-b3-traceid"),
                "x-b3-spanid": pick("x-b3-spanid"),
                "x-b3-parentspanid": pick("x-b3-parentspanid"),
                "x-b3-sampled": pick("x-b3-sampled"),
            })
            .to_string(),
        )
    })
}

fn get(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all = vec![("Host", "shop.test")];
    all.extend_from_slice(headers);
    let mut c = http::connect(addr);
    let r = http::request(&mut c, "GET", "/items/1?x=2", &all, b"").expect("response");
    let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_chain_of_two_proxies_carries_one_trace_with_each_span_parented_by_the_last() {
    let Some(collector) = Collector::start() else {
        return;
    };
    let server = echo_trace_headers();
    let tracing = format!(
        "{{ sampling: 0, otlp: {{ endpoint: \"http://127.0.0.1:{}\" }} }}",
        collector.port
    );
    let b = Proxy::start(
        "uring",
        &config(server.addr, &tracing, "service: reviews, namespace: shop"),
    );
    let a = Proxy::start(
        "uring",
        &config(b.listener("web"), &tracing, "service: frontend"),
    );
    let (status, seen) = get(
        a.listener("web"),
        &[("traceparent", PARENT), ("tracestate", "k=v")],
    );
    assert_eq!(status, 200);
    let spans = collector.wait_for(4);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert!(spans.iter().all(|s| s["trace_id"] == trace), "{spans:#?}");
    assert!(spans.iter().all(|s| s["path"] == "/v1/traces"));
    assert!(
        spans
            .iter()
            .all(|s| s["content_type"] == "application/x-protobuf")
    );
    let find = |service: &str, kind: i64| {
        spans
            .iter()
            .find(|s| s["service"] == service && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no kind {kind} span of {service}: {spans:#?}"))
            .clone()
    };
    // kind 2: server, 3: client.
    let (sa, ca, sb, cb) = (
        find("frontend", 2),
        find("frontend", 3),
        find("reviews", 2),
        find("reviews", 3),
    );
    assert_eq!(sa["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(ca["parent_span_id"], sa["span_id"]);
    assert_eq!(sb["parent_span_id"], ca["span_id"]);
    assert_eq!(cb["parent_span_id"], sb["span_id"]);
    // The server got the last client span as its parent, and tracestate.
    let cb_id = cb["span_id"].as_str().unwrap_or_default();
    assert_eq!(seen["traceparent"], format!("00-{trace}-{cb_id}-01"));
    assert_eq!(seen["tracestate"], "k=v");
    // Semantic-convention attributes.
    assert_eq!(sa["name"], "GET api");
    assert_eq!(sa["attributes"]["http.request.method"], "GET");
    assert_eq!(sa["attributes"]["url.path"], "/items/1");
    assert_eq!(sa["attributes"]["http.route"], "api");
    assert_eq!(sa["attributes"]["http.response.status_code"], 200);
    assert_eq!(sa["attributes"]["server.address"], "shop.test");
    assert_eq!(sa["attributes"]["network.peer.address"], "127.0.0.1");
    assert_eq!(ca["attributes"]["server.port"], b.listener("web").port());
    assert_eq!(sa["status"], 0);
    // The access log joins on the trace id and the request id.
    let line = a
        .wait_log(Duration::from_secs(5), |v| v["message"] == "request")
        .expect("access log line");
    assert_eq!(line["trace_id"], trace, "{line}");
    assert_ne!(line["request_id"], "-");
}

#[test]
fn w3c_and_b3_are_read_and_written_in_the_formats_configured() {
    let server = echo_trace_headers();
    // W3C only: traceparent continued with a new parent id; B3 untouched.
    let proxy = Proxy::start(
        "uring",
        &config(server.addr, "{ sampling: 0, propagation: [w3c] }", ""),
    );
    let (_, seen) = get(
        proxy.listener("web"),
        &[
            ("traceparent", PARENT),
            ("b3", "abc"),
            ("tracestate", "k=v"),
        ],
    );
    let tp = seen["traceparent"].as_str().unwrap_or_default().to_owned();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        tp.ends_with("-01") && !tp.contains("00f067aa0ba902b7"),
        "{tp}"
    );
    assert_eq!(seen["b3"], "abc", "a format not propagated passes through");
    assert_eq!(seen["tracestate"], "k=v");
    assert_eq!(seen["x-b3-traceid"], "");
    // B3 only: a single b3 header in, X-B3-* out with the same trace.
    let proxy = Proxy::start(
        "uring",
        &config(server.addr, "{ sampling: 0, propagation: [b3] }", ""),
    );
    let (_, seen) = get(
        proxy.listener("web"),
        &[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("traceparent", "kept"),
        ],
    );
    assert_eq!(seen["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(seen["x-b3-sampled"], "1");
    assert_eq!(
        seen["b3"], "",
        "the proxy writes B3 in its multi-header form"
    );
    assert_eq!(seen["traceparent"], "kept");
    let span = seen["x-b3-spanid"].as_str().unwrap_or_default();
    let parent = seen["x-b3-parentspanid"].as_str().unwrap_or_default();
    assert_eq!((span.len(), parent.len()), (16, 16));
    assert_ne!(span, "e457b5a2e4d86bd1");
    // An invalid traceparent restarts the trace and drops tracestate.
    let proxy = Proxy::start("uring", &config(server.addr, "{ sampling: 100 }", ""));
    let (_, seen) = get(
        proxy.listener("web"),
        &[
            (
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            ("tracestate", "k=v"),
        ],
    );
    let tp = seen["traceparent"].as_str().unwrap_or_default();
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(
        !tp.contains("00000000000000000000000000000000") && tp.ends_with("-01"),
        "{tp}"
    );
    assert_eq!(seen["tracestate"], "");
    assert_eq!(seen["x-b3-traceid"], tp[3..35]);
}

#[test]
fn new_traces_are_sampled_at_the_configured_rate() {
    let Some(collector) = Collector::start() else {
        return;
    };
    let server = echo_trace_headers();
    for (percent, n, range) in [(0, 200, 0..=0), (100, 100, 100..=100), (10, 1000, 62..=138)] {
        let before = collector.spans.lock().unwrap().len();
        let tracing = format!(
            "{{ sampling: {percent}, otlp: {{ endpoint: \"http://127.0.0.1:{}\" }} }}",
            collector.port
        );
        let proxy = Proxy::start("uring", &config(server.addr, &tracing, ""));
        let mut c = http::connect(proxy.listener("web"));
        let mut flagged = 0;
        for _ in 0..n {
            let r = http::request(&mut c, "GET", "/", &[("Host", "t")], b"").expect("response");
            let seen: Value = serde_json::from_slice(&r.body).expect("json");
            flagged += usize::from(
                seen["traceparent"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("-01")),
            );
        }
        // Each sampled request has a server and a client span; a request
        // sent upstream with the sampled flag was sampled.
        let spans = collector.wait_for(before + 2 * flagged);
        thread::sleep(Duration::from_millis(if percent == 0 { 6000 } else { 500 }));
        let server_spans = collector.spans.lock().unwrap()[before..]
            .iter()
            .filter(|s| s["kind"] == 2)
            .count();
        assert!(
            range.contains(&server_spans),
            "{percent}%: {server_spans} of {n} sampled ({} spans)",
            spans.len()
        );
        assert_eq!(
            flagged, server_spans,
            "the sampled flag goes upstream with the decision"
        );
    }
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing_and_spans_are_counted() {
    let server = Upstream::start(|_| Reply::ok("ok"));
    // A collector that never accepts: the exporter waits out its timeout
    // while the queue fills and drops.
    let hole = Blackhole::start();
    let tracing = format!(
        "{{ sampling: 100, otlp: {{ endpoint: \"http://{}\", timeout: 20s }} }}",
        hole.addr
    );
    let proxy = Proxy::start("uring", &config(server.addr, &tracing, ""));
    let addr = proxy.listener("web");
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut c = http::connect(addr);
                for _ in 0..750 {
                    let r =
                        http::request(&mut c, "GET", "/", &[("Host", "t")], b"").expect("response");
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    // 3,000 requests make 6,000 spans: the exporter holds what it drained
    // when it stalled (at most a full queue) and 2,048 wait; the rest were
    // dropped.
    let dropped = proxy.metric("ringmesh_tracing_spans_total", &[("result", "dropped")]);
    assert!(dropped >= 6000.0 - 2.0 * 2048.0, "{dropped} dropped");
    // A collector that refuses (connection refused) counts failures.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let tracing = format!("{{ sampling: 100, otlp: {{ endpoint: \"http://{dead}\" }} }}");
    let proxy = Proxy::start("uring", &config(server.addr, &tracing, ""));
    let mut c = http::connect(proxy.listener("web"));
    for _ in 0..10 {
        assert_eq!(
            http::request(&mut c, "GET", "/", &[("Host", "t")], b"")
                .expect("response")
                .status,
            200
        );
    }
    let failed = proxy.wait_metric(
        "ringmesh_tracing_spans_total",
        &[("result", "failed")],
        Duration::from_secs(12),
        |v| v >= 20.0,
    );
    assert_eq!(failed, 20.0);
}

#[test]
fn tracing_settings_are_checked() {
    let server = Upstream::start(|_| Reply::ok("ok"));
    let proxy = Proxy::start("uring", &config(server.addr, "{ sampling: 1 }", ""));
    for (tracing, path) in [
        ("{ sampling: 101 }", "tracing.sampling"),
        ("{ propagation: [w3c, jaeger] }", "tracing.propagation[1]"),
        (
            "{ otlp: { endpoint: \"https://c:4318\" } }",
            "tracing.otlp.endpoint",
        ),
        ("{ otlp: {} }", "tracing.otlp"),
        (
            "{ otlp: { endpoint: \"http://c:4318\", timeout: 0s } }",
            "tracing.otlp.timeout",
        ),
    ] {
        let r = proxy.put_config(&config(server.addr, tracing, ""));
        assert_eq!(r.status, 400, "{tracing}: {}", r.body);
        assert_eq!(r.error_paths(), [path], "{tracing}: {}", r.body);
    }
}

#[test]
fn the_server_span_names_the_clients_spiffe_identity_under_mtls() {
    use helpers::tls::{self as tlsh, Pki, Versions};
    let Some(collector) = Collector::start() else {
        return;
    };
    let server = echo_trace_headers();
    let pki = Pki::new();
    let id = "spiffe://mesh.local/ns/shop/sa/checkout";
    pki.issue("checkout", &["--spiffe", id]);
    let tracing = format!(
        "{{ sampling: 100, otlp: {{ endpoint: \"http://127.0.0.1:{}\" }} }}",
        collector.port
    );
    let config = config(server.addr, &tracing, "service: payments").replace(
        "    access_log: true\n",
        &format!("    access_log: true\n    {}\n", pki.listener_tls(true)),
    );
    let proxy = Proxy::start("uring", &config);
    let client = tlsh::client_config(
        &pki.path("ca.pem"),
        Some(&pki.path("checkout")),
        Versions::Both,
    );
    let mut tls = tlsh::connect(proxy.listener("web"), client);
    {
        use std::io::Write;
        tls.write_all(b"GET /pay HTTP/1.1\r\nHost: payments\r\n\r\n")
            .expect("write");
    }
    let mut r = BufReader::new(&mut tls);
    assert_eq!(
        http::read_response(&mut r, false).expect("response").status,
        200
    );
    let spans = collector.wait_for(2);
    let server_span = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .unwrap_or_else(|| panic!("no server span: {spans:#?}"));
    assert_eq!(server_span["attributes"]["ringmesh.peer.identity"], id);
    assert_eq!(server_span["attributes"]["url.scheme"], "https");
}
