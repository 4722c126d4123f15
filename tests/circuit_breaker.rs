//! Cluster circuit breakers: connections beyond `max_connections`, and
//! connects beyond `max_pending_requests`, are refused at once and counted;
//! capacity returns as connections close.

mod helpers;

use std::time::Duration;

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, Blackhole, EchoServer};

on_both_engines! {
    fn max_connections_sheds_the_excess_at_once(engine) {
        let echo = EchoServer::start();
        let proxy = Proxy::start(engine, &one_listener("l", &[echo.addr], "", "circuit_breakers: { max_connections: 2 }"));
        let addr = proxy.listener("l");
        let mut a = tcp::connect(addr);
        let mut b = tcp::connect(addr);
        assert_eq!(tcp::echo_roundtrip(&mut a, b"a").unwrap(), b"a");
        assert_eq!(tcp::echo_roundtrip(&mut b, b"b").unwrap(), b"b");
        let mut c = tcp::connect(addr);
        let took = tcp::wait_closed(&mut c, Duration::from_secs(5)).expect("the third connection must be refused");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(proxy.wait_metric("ringmesh_upstream_overflow_total", &[("cluster", "l")], Duration::from_secs(5), |v| v >= 1.0), 1.0);
        let closed = [("listener", "l"), ("reason", "upstream_overflow")];
        assert_eq!(proxy.metric("ringmesh_downstream_connections_closed_total", &closed), 1.0);
        assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "the refused one never reached the upstream");
        drop(a);
        proxy.wait_metric("ringmesh_upstream_connections_active", &[("cluster", "l")], Duration::from_secs(5), |v| v <= 1.0);
        let mut d = tcp::connect(addr);
        assert_eq!(tcp::echo_roundtrip(&mut d, b"d").unwrap(), b"d");
    }
}

#[test]
fn the_default_limits_are_envoys_and_bad_limits_are_refused() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("l", &[echo.addr], "", ""));
    assert_eq!(
        proxy.get("/clusters").json()["clusters"][0]["circuit_breakers"]["max_connections"],
        1024
    );
    assert_eq!(
        proxy.get("/clusters").json()["clusters"][0]["circuit_breakers"]["max_pending_requests"],
        1024
    );
    assert_eq!(
        proxy.get("/clusters").json()["clusters"][0]["circuit_breakers"]["max_retries"],
        3
    );
    let bad = one_listener(
        "l",
        &[echo.addr],
        "",
        "circuit_breakers: { max_connections: 0, max_retries: -1 }",
    );
    let r = proxy.put_config(&bad);
    assert_eq!(r.status, 400, "{}", r.body);
    let paths = r.error_paths();
    assert_eq!(
        paths,
        [
            "clusters[0].circuit_breakers.max_connections",
            "clusters[0].circuit_breakers.max_retries"
        ]
    );
}

#[test]
fn max_pending_requests_limits_connects_in_progress() {
    // Connects to a blackhole hang until connect_timeout: two are allowed
    // to wait, the third client is refused at once.
    let hole = Blackhole::start();
    let proxy = Proxy::start_with(
        &one_listener(
            "l",
            &[hole.addr],
            "",
            "connect_timeout: 3s\ncircuit_breakers: { max_pending_requests: 2 }",
        ),
        &["--workers", "2"],
    )
    .unwrap();
    let addr = proxy.listener("l");
    let _a = tcp::connect(addr);
    let _b = tcp::connect(addr);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = tcp::connect(addr);
    let took =
        tcp::wait_closed(&mut c, Duration::from_secs(2)).expect("the third client must be refused");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        proxy.metric(
            "ringmesh_upstream_pending_overflow_total",
            &[("cluster", "l")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric("ringmesh_upstream_overflow_total", &[("cluster", "l")]),
        0.0
    );
}
