//! The admin API cannot be turned against the proxy: not by a web page
//! (cross-origin simple requests, DNS rebinding), not by clients that hold
//! connections open, not from the network without a token.

mod helpers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use helpers::admin::request_with;
use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};

fn proxy() -> (Proxy, EchoServer) {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("l", &[echo.addr], "", ""));
    (proxy, echo)
}

#[test]
fn a_cross_origin_simple_request_cannot_drain_the_proxy() {
    let (proxy, _echo) = proxy();
    // What a page on another site makes a browser send, without preflight.
    let r = request_with(
        proxy.admin,
        "POST",
        "/drain",
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    // The same with fetch metadata only, and a YAML body type.
    let r = request_with(
        proxy.admin,
        "PUT",
        "/config",
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Content-Type", "application/yaml"),
        ],
        b"listeners: []\n",
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    // No body type: a form or a bodiless fetch.
    let r = request_with(proxy.admin, "POST", "/drain", &[], b"").unwrap();
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(
        proxy.get("/ready").status,
        200,
        "still serving, not draining"
    );
    let mut c = tcp::connect(proxy.listener("l"));
    assert_eq!(tcp::echo_roundtrip(&mut c, b"x").unwrap(), b"x");
    assert_eq!(
        proxy.metric(
            "ringmesh_admin_requests_refused_total",
            &[("reason", "origin")]
        ),
        2.0
    );
    assert_eq!(
        proxy.metric(
            "ringmesh_admin_requests_refused_total",
            &[("reason", "content_type")]
        ),
        1.0
    );
    // An operator's own request (curl) still drains.
    let r = request_with(
        proxy.admin,
        "POST",
        "/drain",
        &[("Content-Type", "application/json")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn a_rebound_host_name_is_refused_and_loopback_names_are_not() {
    let (proxy, _echo) = proxy();
    let r = request_with(
        proxy.admin,
        "GET",
        "/config",
        &[("Host", "attacker.example:9901")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("DNS rebinding"), "{}", r.body);
    let port = proxy.admin.port();
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = request_with(proxy.admin, "GET", "/config", &[("Host", &host)], b"").unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
}

#[test]
fn clients_holding_half_a_request_are_closed_and_capped() {
    let (proxy, _echo) = proxy();
    // 80 clients each send half a request head and stop: more than the
    // 64-connection cap.
    let mut held: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.admin).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loc").unwrap();
            s
        })
        .collect();
    // Every one is closed by the proxy: past the cap at once, the others
    // when the 10 s head timeout runs out.
    let started = Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(_) | Err(_) => {}
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(18),
        "held connections must be closed by the head timeout: {took:?}"
    );
    assert_eq!(proxy.get("/live").status, 200);
    let rejected = proxy.metric("ringmesh_admin_connections_rejected_total", &[]);
    assert!(rejected >= 16.0, "{rejected}");
    // And none of their descriptors are left behind.
    let fds = proxy.metric("process_open_fds", &[]);
    assert!(fds < 80.0, "{fds} descriptors open");
}

#[test]
fn a_token_guards_everything_but_the_probes() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let config = one_listener("l", &[echo.addr], "", "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token_file: \"{}\"\n",
            token_file.display()
        ),
    );
    let proxy = Proxy::start("uring", &config);
    assert_eq!(proxy.get("/ready").status, 200);
    assert_eq!(proxy.get("/live").status, 200);
    let r = proxy.get("/config");
    assert_eq!(r.status, 401, "{}", r.body);
    let bearer = "Bearer 0123456789abcdef0123456789abcdef";
    let r = request_with(
        proxy.admin,
        "GET",
        "/metrics",
        &[("Authorization", bearer)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("ringmesh_admin_requests_refused_total{reason=\"unauthorized\"} 1")
    );
    let wrong = "Bearer 0123456789abcdef0123456789abcdeF";
    let r = request_with(
        proxy.admin,
        "POST",
        "/drain",
        &[
            ("Authorization", wrong),
            ("Content-Type", "application/json"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
}

#[test]
fn a_network_facing_admin_api_needs_a_token_or_an_explicit_risk() {
    let echo = EchoServer::start();
    let open = one_listener("l", &[echo.addr], "", "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 0.0.0.0:0\n",
    );
    let err = match Proxy::start_with(&open, &[]) {
        Ok(_) => panic!("a token-less 0.0.0.0 admin API must not start"),
        Err(e) => e,
    };
    assert!(err.contains("admin.token_file"), "{err}");
    let accepted = open.replace(
        "admin:\n  listen: 0.0.0.0:0\n",
        "admin:\n  listen: 0.0.0.0:0\n  allow_remote: true\n",
    );
    let proxy = Proxy::start_with(&accepted, &[]).unwrap();
    assert!(
        proxy
            .wait_log(Duration::from_secs(5), |v| v["message"]
                .as_str()
                .is_some_and(|m| m.contains("OPEN TO THE NETWORK")))
            .is_some(),
        "{}",
        proxy.log_text()
    );
}
