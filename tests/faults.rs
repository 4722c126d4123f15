//! Fault injection (`routes[].fault`, README "Fault injection"): aborts
//! and delays at their configured share, only for matching requests,
//! asked for by request headers when allowed, counted, and a delay that
//! spends the route timeout.

mod helpers;

use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;

type Conn = std::io::BufReader<std::net::TcpStream>;

fn config(routes: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    routes:\n{routes}clusters:\n  - name: app\n    endpoints: [\"{upstream}\"]\n"
    )
}

fn get(c: &mut Conn, target: &str, headers: &[(&str, &str)]) -> http::Response {
    let mut all = vec![("Host", "test")];
    all.extend_from_slice(headers);
    http::request(c, "GET", target, &all, b"").unwrap_or_else(|e| panic!("{target}: {e}"))
}

#[test]
fn an_abort_at_50_percent_answers_half_of_10000_requests_within_4_sigma_with_flag_fi() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes =
        "      - { name: flaky, cluster: app, fault: { abort: { status: 503, percent: 50 } } }\n";
    let proxy = Proxy::start("uring", &config(routes, up.addr));
    let n = 10_000;
    let mut aborted = 0;
    let mut conns: Vec<Conn> = (0..8)
        .map(|_| http::connect(proxy.listener("web")))
        .collect();
    for i in 0..n {
        let r = get(&mut conns[i % 8], "/", &[]);
        match r.status {
            503 => {
                assert_eq!(r.text(), "fault filter abort (FI)\n");
                aborted += 1;
            }
            200 => assert_eq!(r.text(), "up"),
            other => panic!("unexpected {other}: {}", r.head),
        }
    }
    let sigma = (n as f64 * 0.25).sqrt();
    let off = (aborted as f64 - n as f64 / 2.0).abs();
    assert!(
        off <= 4.0 * sigma,
        "{aborted} of {n} aborted (4 sigma = {:.0})",
        4.0 * sigma
    );
    assert_eq!(
        up.request_count(),
        n - aborted,
        "an aborted request never reaches the upstream"
    );
    let metrics = proxy.metrics();
    let line = format!(
        "ringmesh_http_faults_total{{listener=\"web\",route=\"flaky\",kind=\"abort\"}} {aborted}"
    );
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
}

#[test]
fn a_delay_holds_the_request_and_then_forwards_it() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes =
        "      - { name: slow, cluster: app, fault: { delay: { fixed: 300ms, percent: 100 } } }\n";
    let proxy = Proxy::start("epoll", &config(routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(&mut c, "/", &[]);
        let took = started.elapsed();
        assert_eq!((r.status, r.text()), (200, "up".to_owned()));
        assert!(
            took >= Duration::from_millis(300),
            "answered after {took:?}"
        );
    }
    assert!(
        proxy.metrics().contains(
            "ringmesh_http_faults_total{listener=\"web\",route=\"slow\",kind=\"delay\"} 3"
        )
    );
}

#[test]
fn a_delay_longer_than_the_route_timeout_ends_in_504_ut_at_the_timeout() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes =
        "      - { name: slow, cluster: app, timeout: 200ms, fault: { delay: { fixed: 5s } } }\n";
    let proxy = Proxy::start("epoll", &config(routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    let started = Instant::now();
    let r = get(&mut c, "/", &[]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(r.text().contains("(UT)"));
    assert!(
        took < Duration::from_secs(2),
        "the route timeout bounds the delay: {took:?}"
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_delay_spends_the_route_timeout_before_the_upstream_exchange() {
    // 300 ms of delay leaves 200 ms of a 500 ms timeout: an upstream that
    // takes 300 ms is too slow, though it alone would fit the timeout.
    let up = Upstream::start(|_| Reply::ok("up").delay(Duration::from_millis(300)));
    let routes = "      - { name: slow, cluster: app, timeout: 500ms, fault: { delay: { fixed: 300ms } } }\n";
    let proxy = Proxy::start("epoll", &config(routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    let started = Instant::now();
    let r = get(&mut c, "/", &[]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[test]
fn a_header_asked_fault_is_capped_by_the_configured_share() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes = "      - { name: capped, cluster: app, fault: { abort: { status: 503, percent: 0 }, header_control: true } }\n";
    let proxy = Proxy::start("epoll", &config(routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    for pct in [None, Some("100")] {
        let mut h = vec![("x-ringmesh-fault-abort-request", "503")];
        if let Some(p) = pct {
            h.push(("x-ringmesh-fault-abort-request-percentage", p));
        }
        for _ in 0..20 {
            assert_eq!(get(&mut c, "/", &h).status, 200, "capped at the route's 0%");
        }
    }
}

#[test]
fn faults_apply_only_to_requests_matching_their_headers() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes = "      - { name: chaos, cluster: app, fault: { abort: { status: 418 }, headers: { x-chaos: \"on\" } } }\n";
    let proxy = Proxy::start("epoll", &config(routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    assert_eq!(get(&mut c, "/", &[]).status, 200);
    assert_eq!(get(&mut c, "/", &[("x-chaos", "off")]).status, 200);
    assert_eq!(get(&mut c, "/", &[("x-chaos", "on")]).status, 418);
}

#[test]
fn request_headers_ask_for_faults_only_where_the_route_allows_it() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes = "      - { name: controlled, match: { path_prefix: /c }, cluster: app, fault: { header_control: true } }\n      - { name: plain, cluster: app }\n";
    let proxy = Proxy::start("epoll", &config(routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    let abort = [("x-ringmesh-fault-abort-request", "503")];
    assert_eq!(get(&mut c, "/c/x", &abort).status, 503);
    assert_eq!(
        get(&mut c, "/other", &abort).status,
        200,
        "not honoured without header_control"
    );
    let none = [
        ("x-ringmesh-fault-abort-request", "503"),
        ("x-ringmesh-fault-abort-request-percentage", "0"),
    ];
    assert_eq!(get(&mut c, "/c/x", &none).status, 200);
    let started = Instant::now();
    let r = get(&mut c, "/c/x", &[("x-ringmesh-fault-delay-request", "250")]);
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[test]
fn fault_config_errors_have_positions() {
    let up = Upstream::start(|_| Reply::ok("up"));
    for (routes, expected) in [
        ("      - { cluster: app, fault: {} }\n", "a fault needs"),
        (
            "      - { cluster: app, fault: { abort: { status: 700 } } }\n",
            "status",
        ),
        (
            "      - { cluster: app, fault: { delay: { fixed: 1s, percent: 101 } } }\n",
            "invalid percentage",
        ),
        (
            "      - { direct_response: { status: 200 }, fault: { abort: { status: 503 } } }\n",
            "applies to routes that forward",
        ),
    ] {
        let err = ringmesh_control::model::load("f.yaml", &config(routes, up.addr))
            .expect_err(routes)
            .to_string();
        assert!(
            err.contains(expected) && err.starts_with("f.yaml:"),
            "{routes}: {err}"
        );
    }
}
