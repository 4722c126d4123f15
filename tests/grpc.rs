//! HTTP/2 and gRPC through the proxy (README "HTTP/2 and gRPC"), against
//! real peers: grpcio clients and servers (the gRPC C core), curl, and
//! hand-made HTTP/2 clients (python h2) for the floods. Unary, streaming
//! each way and bidirectional calls, 16 MiB messages, deadlines,
//! cancellation and trailers-only errors through one proxy and through a
//! chain of two over mTLS; retries on UNAVAILABLE; the proxy's own answers
//! as gRPC errors; HTTP/2 clients of HTTP/1.1 upstreams and back; Rapid
//! Reset and CONTINUATION floods closed while other connections go on;
//! GOAWAY on drain with streams in flight finishing. Without python3,
//! grpcio and h2 each test says SKIPPED.

mod helpers;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use helpers::grpc::{self, GrpcServer};
use helpers::http::{Reply, Upstream};
use helpers::proxy::Proxy;
use helpers::tls::Pki;
use serde_json::Value;

macro_rules! need_peers {
    () => {
        if !grpc::available() {
            eprintln!("SKIPPED: {}", grpc::MISSING);
            return;
        }
    };
}

fn assert_ok(out: &Value) {
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["code"], "OK", "{out}");
}

/// A proxy with one plain HTTP listener `web` (HTTP/1.1 and h2c on one
/// port) whose route `r` (extra `route` fields) goes to cluster `grpc`
/// (`http2: true`, extra `cluster` lines) at `endpoints`.
fn grpc_proxy(engine: &str, endpoints: &[SocketAddr], route: &str, cluster: &str) -> Proxy {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    routes:\n      - {{ name: r, match: {{ path_prefix: /ringmesh.test.Echo }}, cluster: grpc{route} }}\nclusters:\n  - name: grpc\n    http2: true\n    endpoints: [{}]\n{cluster}",
        eps.join(", ")
    );
    Proxy::start(engine, &config)
}

/// The first log line `pred` accepts, waiting up to 5 s.
fn log_line(proxy: &Proxy, pred: impl Fn(&Value) -> bool) -> Value {
    proxy
        .wait_log(Duration::from_secs(5), pred)
        .unwrap_or_else(|| panic!("no such log line in:\n{}", proxy.log_text()))
}

fn client(proxy: &Proxy, args: &[&str]) -> Value {
    grpc::client(proxy.listener("web"), args)
}

#[test]
fn every_kind_of_call_goes_through_one_proxy() {
    need_peers!();
    for engine in ["uring", "epoll"] {
        let server = GrpcServer::start("g1");
        let proxy = grpc_proxy(engine, &[server.addr], "", "");
        let out = client(&proxy, &["unary", "--echo", "hi"]);
        assert_ok(&out);
        assert_eq!(out["reply_prefix"], "g1:hello", "{out}");
        assert_eq!(out["initial_metadata"]["x-echo"], "hi", "{out}");
        // Trailers cross the proxy end to end.
        assert_eq!(out["trailing_metadata"]["x-echo-trailer"], "hi", "{out}");
        assert_eq!(out["trailing_metadata"]["x-served-by"], "g1", "{out}");
        let out = client(&proxy, &["server-stream", "50", "1000"]);
        assert_ok(&out);
        assert_eq!(
            (out["messages"].as_u64(), out["bytes"].as_u64()),
            (Some(50), Some(50_000))
        );
        let out = client(&proxy, &["client-stream", "40", "300"]);
        assert_ok(&out);
        assert_eq!(out["reply"], "40:12000", "{out}");
        // Lockstep: each message's echo must come back before the next is
        // sent, so a proxy that held the request stream would deadlock.
        let out = client(&proxy, &["bidi", "20", "100"]);
        assert_ok(&out);
        assert_eq!(out["messages"], 20, "{out}");
        assert_eq!(out["all_equal"], true, "{out}");
        let out = client(&proxy, &["big", &(16 << 20).to_string()]);
        assert_ok(&out);
        assert_eq!(out["intact"], true, "{out}");
        let out = client(&proxy, &["many", "200"]);
        assert_eq!(out["ok_count"], 200, "{out}");
        // Metrics and the access log carry the gRPC status.
        let ok = proxy.wait_metric(
            "ringmesh_http_grpc_responses_total",
            &[
                ("listener", "web"),
                ("route", "r"),
                ("cluster", "grpc"),
                ("grpc_code", "OK"),
            ],
            Duration::from_secs(5),
            |v| v >= 205.0,
        );
        assert!(ok >= 205.0, "grpc OK count {ok}");
        let line = proxy
            .logs()
            .into_iter()
            .rev()
            .find(|l| l["message"] == "request" && l["path"] == "/ringmesh.test.Echo/Unary")
            .expect("an access-log line for Unary");
        assert_eq!(line["protocol"], "HTTP/2", "{line}");
        assert_eq!(line["grpc_status"], "OK", "{line}");
        assert_eq!(line["status"], 200, "{line}");
    }
}

#[test]
fn deadlines_cancellation_and_trailers_only_errors_reach_each_side() {
    need_peers!();
    let server = GrpcServer::start("g1");
    let proxy = grpc_proxy("uring", &[server.addr], "", "");
    let t0 = Instant::now();
    let out = client(&proxy, &["deadline", "300", "3000"]);
    assert_eq!(out["code"], "DEADLINE_EXCEEDED", "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the deadline was not kept"
    );
    let out = client(&proxy, &["cancel", "3000", "200"]);
    assert_eq!(out["cancelled"], true, "{out}");
    // The cancellation crossed the proxy: the server saw its call end.
    assert_eq!(out["server_cancelled"], true, "{out}");
    let out = client(&proxy, &["fail", "14", "try later"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    assert_eq!(out["details"], "try later", "{out}");
    assert_eq!(out["trailing_metadata"]["x-served-by"], "g1", "{out}");
    let out = client(&proxy, &["fail", "5", "no such thing"]);
    assert_eq!(out["code"], "NOT_FOUND", "{out}");
    let codes = proxy.metrics();
    for code in ["UNAVAILABLE", "NOT_FOUND"] {
        assert!(
            codes.contains(&format!("grpc_code=\"{code}\"")),
            "{code} missing from the metrics"
        );
    }
}

#[test]
fn unavailable_is_retried_when_the_route_says_so() {
    need_peers!();
    let server = GrpcServer::start("g1");
    let retrying = grpc_proxy(
        "uring",
        &[server.addr],
        ", retries: { attempts: 3, on: [unavailable] }",
        "",
    );
    let out = grpc::client(retrying.listener("web"), &["flaky", "a", "2"]);
    assert_ok(&out);
    assert_eq!(out["reply"], "ok:3", "{out}");
    assert_eq!(out["initial_metadata"]["x-ringmesh-attempts"], "3", "{out}");
    // Not retried beyond the attempts allowed: the last status goes back.
    let out = grpc::client(retrying.listener("web"), &["flaky", "b", "5"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    // Other codes are not retried.
    let out = grpc::client(retrying.listener("web"), &["fail", "13", "internal"]);
    assert_eq!(out["code"], "INTERNAL", "{out}");
    let sent = retrying.metric(
        "ringmesh_retries_total",
        &[("cluster", "grpc"), ("result", "sent")],
    );
    assert_eq!(sent, 5.0, "2 retries for a, 3 for b");
    // Without a policy the first UNAVAILABLE is the answer.
    let plain = grpc_proxy("uring", &[server.addr], "", "");
    let out = grpc::client(plain.listener("web"), &["flaky", "c", "1"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
}

#[test]
fn the_proxys_own_answers_to_grpc_clients_are_grpc_errors() {
    need_peers!();
    // No endpoint answers: UNAVAILABLE with the response flag, not a 503.
    let dead = grpc_proxy("uring", &[helpers::tcp::closed_port()], "", "");
    let out = grpc::client(dead.listener("web"), &["unary"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    assert!(
        out["details"].as_str().unwrap_or("").contains("UF"),
        "{out}"
    );
    // No route: UNIMPLEMENTED.
    let server = GrpcServer::start("g1");
    let proxy = grpc_proxy("uring", &[server.addr], ", timeout: 300ms", "");
    let out = grpc::abuse(
        proxy.listener("web"),
        &["ok", "--grpc", "--path", "/other.Service/Method"],
    );
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["grpc_status"], 12, "{out}");
    // The route timeout ends a slow call as DEADLINE_EXCEEDED (504 UT).
    let t0 = Instant::now();
    let out = grpc::client(proxy.listener("web"), &["deadline", "5000", "3000"]);
    assert_eq!(out["code"], "DEADLINE_EXCEEDED", "{out}");
    assert!(
        out["details"].as_str().unwrap_or("").contains("UT"),
        "{out}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    let line = log_line(&proxy, |l| l["message"] == "request" && l["flags"] == "UT");
    assert_eq!(line["grpc_status"], "DEADLINE_EXCEEDED", "{line}");
    // The client's grpc-timeout bounds the route timeout (15 s by
    // default): the proxy gives up when the client does.
    let long = grpc_proxy("uring", &[server.addr], "", "");
    let out = grpc::client(
        long.listener("web"),
        &["--timeout", "0.4", "deadline", "400", "3000"],
    );
    assert_eq!(out["code"], "DEADLINE_EXCEEDED", "{out}");
    let line = log_line(&long, |l| {
        l["message"] == "request" && l["path"] == "/ringmesh.test.Echo/Sleep"
    });
    let took = line["duration_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(
        took < 1500.0,
        "the proxy held the call {took} ms past its grpc-timeout"
    );
    // A fault abort: the configured gRPC status, or the one its HTTP
    // status maps to.
    for (abort, code) in [
        ("{ status: 503, percent: 100 }", "UNAVAILABLE"),
        (
            "{ status: 503, grpc_status: 8, percent: 100 }",
            "RESOURCE_EXHAUSTED",
        ),
    ] {
        let faulty = grpc_proxy(
            "uring",
            &[server.addr],
            &format!(", fault: {{ abort: {abort} }}"),
            "",
        );
        let out = grpc::client(faulty.listener("web"), &["unary"]);
        assert_eq!(out["code"], code, "{out}");
        assert!(
            out["details"].as_str().unwrap_or("").contains("FI"),
            "{out}"
        );
    }
}

#[test]
fn a_chain_of_two_sidecars_carries_grpc_over_mutual_tls() {
    need_peers!();
    let pki = Pki::new();
    pki.issue(
        "product",
        &["--spiffe", "spiffe://mesh.local/ns/shop/sa/product"],
    );
    let server = GrpcServer::start("review");
    // Inbound sidecar: mTLS listener (ALPN h2 and http/1.1 offered), to
    // the app over h2c.
    let inbound = Proxy::start(
        "uring",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: inbound\n    listen: 127.0.0.1:0\n    protocol: http\n    tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\" }}\n    cluster: app\nclusters:\n  - name: app\n    http2: true\n    endpoints: [\"{}\"]\n",
            pki.file("server.pem"),
            pki.file("server.key"),
            pki.file("ca.pem"),
            server.addr
        ),
    );
    // Outbound sidecar: h2c from the app, mTLS with ALPN h2 to the inbound
    // sidecar.
    let outbound = Proxy::start(
        "uring",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    cluster: review\nclusters:\n  - name: review\n    http2: true\n    endpoints: [\"{}\"]\n    tls: {{ ca: \"{}\", san: \"localhost\", cert: \"{}\", key: \"{}\" }}\n",
            inbound.listener("inbound"),
            pki.file("ca.pem"),
            pki.file("product.pem"),
            pki.file("product.key"),
        ),
    );
    let out = grpc::client(outbound.listener("web"), &["unary", "--echo", "chain"]);
    assert_ok(&out);
    assert_eq!(out["reply_prefix"], "review:hello", "{out}");
    assert_eq!(out["trailing_metadata"]["x-echo-trailer"], "chain", "{out}");
    let out = grpc::client(outbound.listener("web"), &["bidi", "10", "1000"]);
    assert_ok(&out);
    assert_eq!(out["all_equal"], true, "{out}");
    let out = grpc::client(outbound.listener("web"), &["big", &(16 << 20).to_string()]);
    assert_eq!(out["intact"], true, "{out}");
    let out = grpc::client(outbound.listener("web"), &["fail", "14", "down"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    let out = grpc::client(outbound.listener("web"), &["cancel", "3000", "200"]);
    assert_eq!(out["server_cancelled"], true, "{out}");
    // The inbound sidecar saw HTTP/2 over TLS from the caller's identity.
    let line = log_line(&inbound, |l| {
        l["message"] == "request" && l["path"] == "/ringmesh.test.Echo/Unary"
    });
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
    assert_eq!(
        line["identity"], "spiffe://mesh.local/ns/shop/sa/product",
        "{line}"
    );
    assert_eq!(line["grpc_status"], "OK", "{line}");
}

#[test]
fn http2_clients_reach_http1_upstreams_and_http1_clients_reach_http2_upstreams() {
    need_peers!();
    // h2c (prior knowledge) and HTTP/1.1 on one port, to an HTTP/1.1
    // upstream.
    let app = Upstream::start(|req| {
        Reply::ok(format!("{} {}", req.method, req.path)).header("x-app", "h1")
    });
    let grpc_server = GrpcServer::start("g2");
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    routes:\n      - {{ name: grpc, match: {{ path_prefix: /ringmesh.test.Echo }}, cluster: grpc }}\n      - {{ name: app, cluster: app }}\nclusters:\n  - name: app\n    endpoints: [\"{}\"]\n  - name: grpc\n    http2: true\n    endpoints: [\"{}\"]\n",
        app.addr, grpc_server.addr
    );
    let proxy = Proxy::start("uring", &config);
    let web = proxy.listener("web");
    let out = grpc::abuse(web, &["ok", "--authority", "shop", "--path", "/p?q=1"]);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["ok"], true, "{out}");
    let curl = |args: &[&str]| {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl");
        assert!(
            o.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let url = format!("http://{web}/hello?x=1");
    let text = curl(&["--http2-prior-knowledge", "-D", "-", &url]);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("x-app: h1"), "{text}");
    assert!(text.ends_with("GET /hello?x=1"), "{text}");
    let text = curl(&[
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "--data-binary",
        "body bytes",
        &url,
    ]);
    assert_eq!(text, "POST /hello?x=1");
    let text = curl(&["--http1.1", "-D", "-", &url]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The HTTP/1.1 upstream saw HTTP/1.1 requests with a Host.
    assert!(app.request_lines().iter().all(|l| l.ends_with("HTTP/1.1")));
    // An HTTP/1.1 client of the gRPC (HTTP/2) cluster: a gRPC frame in, the
    // reply and grpc-status back as chunked trailers.
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"\x00\x00\x00\x00\x05hello").expect("write");
    let raw = curl(&[
        "--http1.1",
        "--raw",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        &format!("@{}", msg.display()),
        &format!("http://{web}/ringmesh.test.Echo/Unary"),
    ]);
    assert!(raw.contains("g2:hello"), "{raw:?}");
    assert!(raw.contains("grpc-status: 0\r\n"), "{raw:?}");
    assert!(raw.contains("x-served-by: g2\r\n"), "{raw:?}");
}

#[test]
fn tls_clients_choose_http2_by_alpn() {
    need_peers!();
    let pki = Pki::new();
    let app = Upstream::start(|_| Reply::ok("over tls"));
    let proxy = Proxy::start(
        "uring",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    {}\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [\"{}\"]\n",
            pki.listener_tls(false),
            app.addr
        ),
    );
    let port = proxy.listener("web").port();
    let get = |version: &str| {
        let o = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                version,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
            ])
            .args(["--cacert", &pki.file("ca.pem")])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(get("--http2"), "2");
    assert_eq!(get("--http1.1"), "1.1");
}

#[test]
fn rapid_reset_and_continuation_floods_close_only_the_flooding_connection() {
    need_peers!();
    let app = Upstream::start(|_| Reply::ok("fine").delay(Duration::from_millis(20)));
    let proxy = Proxy::start(
        "uring",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [\"{}\"]\n",
            app.addr
        ),
    );
    let web = proxy.listener("web");
    let out = grpc::abuse(web, &["rapid-reset", "--streams", "20000"]);
    assert!(
        out["goaway"] == true || out["closed"] == true,
        "a rapid-reset client kept its connection: {out}"
    );
    let sent = out["sent"].as_u64().unwrap_or(u64::MAX);
    assert!(sent < 20_000, "all {sent} streams were taken: {out}");
    // The upstream saw a small share of them, not thousands.
    assert!(
        app.request_count() < 2_000,
        "{} requests reached the upstream",
        app.request_count()
    );
    let ok = grpc::abuse(web, &["ok"]);
    assert_eq!(ok["status"], 200, "another connection was affected: {ok}");
    // Past h2's guard of streams reset before they were accepted: streams
    // accepted (forwarded) and then reset, as fast as the proxy takes them.
    let before = app.request_count();
    let out = grpc::abuse(
        web,
        &[
            "rapid-reset",
            "--streams",
            "5000",
            "--batch",
            "10",
            "--reset-after-ms",
            "2",
        ],
    );
    assert_eq!(out["goaway"], true, "{out}");
    assert_eq!(out["goaway_error"], "ENHANCE_YOUR_CALM", "{out}");
    let sent = out["sent"].as_u64().unwrap_or(u64::MAX);
    assert!(
        sent < 1_000,
        "{sent} streams were taken before the connection closed: {out}"
    );
    assert!(app.request_count() - before < 1_000);
    let rapid = proxy.metric(
        "ringmesh_http_rejected_total",
        &[("listener", "web"), ("reason", "h2_rapid_reset")],
    );
    assert_eq!(rapid, 1.0, "the proxy's own Rapid Reset guard closed it");
    let ok = grpc::abuse(web, &["ok"]);
    assert_eq!(ok["status"], 200, "another connection was affected: {ok}");
    let out = grpc::abuse(web, &["continuation-flood", "--frames", "100000"]);
    assert!(
        out["goaway"] == true || out["closed"] == true || out["rst_stream"] == true,
        "a CONTINUATION flood kept its connection: {out}"
    );
    assert!(out["sent"].as_u64().unwrap_or(u64::MAX) < 100_000, "{out}");
    let ok = grpc::abuse(web, &["ok"]);
    assert_eq!(ok["status"], 200, "another connection was affected: {ok}");
    let refused: f64 = ["h2_rapid_reset", "h2_protocol_error"]
        .iter()
        .map(|r| {
            proxy.metric(
                "ringmesh_http_rejected_total",
                &[("listener", "web"), ("reason", r)],
            )
        })
        .sum();
    assert!(refused >= 3.0, "floods counted {refused}");
}

#[test]
fn a_drain_sends_goaway_and_lets_streams_in_flight_finish() {
    need_peers!();
    let server = GrpcServer::start("g1");
    let proxy = grpc_proxy("uring", &[server.addr], "", "");
    let web = proxy.listener("web");
    let slow = std::thread::spawn(move || grpc::client(web, &["deadline", "8000", "1500"]));
    std::thread::sleep(Duration::from_millis(400));
    let r = helpers::admin::request(proxy.admin, "POST", "/drain", "").expect("drain");
    assert_eq!(r.status, 202);
    let out = slow.join().expect("client thread");
    // The Sleep call that was in flight completed normally.
    assert_eq!(out["code"], "OK", "{out}");
}

#[test]
fn upstream_sessions_respect_the_servers_stream_limit_and_goaway() {
    need_peers!();
    // A server that takes 2 streams per connection: 40 concurrent calls
    // need more than one upstream connection, and none fails.
    let server = GrpcServer::start_with("g1", "127.0.0.1:0", &["--max-streams", "2"]);
    let proxy = grpc_proxy("uring", &[server.addr], "", "");
    let out = grpc::client(proxy.listener("web"), &["many", "40"]);
    assert_eq!(out["ok_count"], 40, "{out}");
    let opened = proxy.metric(
        "ringmesh_upstream_connections_total",
        &[("cluster", "grpc")],
    );
    assert!(
        opened >= 2.0,
        "{opened} upstream connection(s) for 40 calls at 2 streams each"
    );
    // A server that sends GOAWAY every 300 ms: calls in flight finish on
    // the old connection, new ones go to a new one; nothing fails.
    let server = GrpcServer::start_with("g2", "127.0.0.1:0", &["--max-age-ms", "300"]);
    let proxy = grpc_proxy("uring", &[server.addr], "", "");
    let web = proxy.listener("web");
    let t0 = Instant::now();
    let mut calls = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        let out = grpc::client(web, &["deadline", "5000", "150"]);
        assert_eq!(out["code"], "OK", "call {calls}: {out}");
        calls += 1;
    }
    let opened = proxy.metric(
        "ringmesh_upstream_connections_total",
        &[("cluster", "grpc")],
    );
    assert!(
        opened >= 2.0,
        "{opened} upstream connection(s) over {calls} calls across GOAWAYs"
    );
}
