//! Local rate limits (`rate_limit` on listeners and routes, README "Rate
//! limits"): one bucket for the whole proxy, so two workers together
//! allow the configured rate, not twice it; refusals are 429 with the
//! headers that say when to come back, flag `RL`, counted.

mod helpers;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;

fn config(listener_extra: &str, routes: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n{listener_extra}    routes:\n{routes}clusters:\n  - name: app\n    endpoints: [\"{upstream}\"]\n"
    )
}

/// Sends requests to `target` from `clients` keep-alive connections as
/// fast as answers come, for `run`; returns (passed, limited).
fn hammer(
    addr: std::net::SocketAddr,
    target: &'static str,
    clients: usize,
    run: Duration,
) -> (usize, usize) {
    let (passed, limited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + run;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (passed, limited) = (passed.clone(), limited.clone());
            std::thread::spawn(move || {
                let mut c = http::connect(addr);
                while Instant::now() < deadline {
                    let r = http::request(&mut c, "GET", target, &[("Host", "test")], b"")
                        .expect("answer");
                    match r.status {
                        200 => passed.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected {other}: {}", r.head),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    (
        passed.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    )
}

#[test]
fn a_route_limit_holds_for_the_whole_proxy_across_two_workers() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes = "      - { name: limited, cluster: app, rate_limit: { requests_per_second: 200, burst: 20 } }\n";
    let proxy = Proxy::start("uring", &config("", routes, up.addr));
    let run = Duration::from_secs(3);
    let started = Instant::now();
    let (passed, limited) = hammer(proxy.listener("web"), "/", 8, run);
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 20.0 + 200.0 * elapsed;
    assert!(
        limited > passed,
        "the clients must exceed the limit: {passed} passed, {limited} limited"
    );
    assert!(
        (passed as f64 - expected).abs() <= expected * 0.10,
        "{passed} passed in {elapsed:.2} s, expected {expected:.0} +-10% (one bucket for both workers)"
    );
    let metrics = proxy.metrics();
    let line =
        format!("ringmesh_http_rate_limited_total{{listener=\"web\",route=\"limited\"}} {limited}");
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
}

#[test]
fn a_refusal_is_429_with_retry_headers_and_flag_rl_and_keeps_the_connection() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes =
        "      - { name: tight, cluster: app, rate_limit: { requests_per_second: 1, burst: 2 } }\n";
    let proxy = Proxy::start("epoll", &config("", routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    let ask = |c: &mut _| http::request(c, "GET", "/", &[("Host", "test")], b"").expect("answer");
    assert_eq!(ask(&mut c).status, 200);
    assert_eq!(ask(&mut c).status, 200);
    let r = ask(&mut c);
    assert_eq!(r.status, 429, "{}", r.head);
    assert_eq!(r.text(), "rate limited (RL)\n");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(!r.closes(), "{}", r.head);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ask(&mut c).status, 200, "a token came back after a second");
    assert_eq!(up.request_count(), 3);
}

#[test]
fn a_listener_limit_counts_every_route_and_unmatched_requests() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let listener = "    rate_limit: { requests_per_second: 1, burst: 3 }\n";
    let routes = "      - { name: a, match: { path_prefix: /a }, cluster: app }\n      - { name: b, match: { path_prefix: /b }, cluster: app }\n";
    let proxy = Proxy::start("epoll", &config(listener, routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    let mut statuses = Vec::new();
    for target in ["/a", "/b", "/none", "/a", "/b"] {
        let r = http::request(&mut c, "GET", target, &[("Host", "test")], b"").expect("answer");
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 404, 429, 429]);
    assert!(
        proxy
            .metrics()
            .contains("ringmesh_http_rate_limited_total{listener=\"web\",route=\"-\"} 2")
    );
}

#[test]
fn a_keyed_limit_gives_each_header_value_its_own_bucket() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let routes = "      - { name: per-user, cluster: app, rate_limit: { requests_per_second: 1, burst: 2, key: { header: x-user } } }\n";
    let proxy = Proxy::start("epoll", &config("", routes, up.addr));
    let mut c = http::connect(proxy.listener("web"));
    let mut ask = |user: &str| {
        http::request(
            &mut c,
            "GET",
            "/",
            &[("Host", "test"), ("X-User", user)],
            b"",
        )
        .expect("answer")
        .status
    };
    assert_eq!([ask("alice"), ask("alice"), ask("alice")], [200, 200, 429]);
    assert_eq!(
        [ask("bob"), ask("bob"), ask("bob")],
        [200, 200, 429],
        "bob has his own bucket"
    );
    assert_eq!(ask("alice"), 429, "alice's bucket is still empty");
}
