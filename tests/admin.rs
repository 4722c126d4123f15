//! The admin API and the access log, over real sockets.

mod helpers;

use std::time::Duration;

use helpers::admin::request_bytes;
use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};

#[test]
fn health_endpoints_answer() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("a", &[echo.addr], "", ""));
    assert_eq!(proxy.get("/live").status, 200);
    assert_eq!(proxy.get("/ready").json()["status"], "ready");
    assert_eq!(proxy.get("/nope").status, 404);
}

#[test]
fn get_config_shows_the_running_config_with_defaults() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("a", &[echo.addr], "", ""));
    let v = proxy.get("/config").json();
    assert_eq!(v["version"], 1);
    let l = &v["config"]["listeners"][0];
    assert_eq!(l["name"], "a");
    assert_eq!(l["idle_timeout"], "1h");
    assert_eq!(l["access_log"], true);
    let c = &v["config"]["clusters"][0];
    assert_eq!(c["connect_timeout"], "5s");
    assert_eq!(c["lb"], "round_robin");
    assert_eq!(c["endpoints"][0], echo.addr.to_string());
}

#[test]
fn put_config_rejects_a_body_that_is_not_utf8() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("a", &[echo.addr], "", ""));
    let r = request_bytes(proxy.admin, "PUT", "/config", b"listeners: [\xff\xfe]").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("UTF-8"), "{}", r.body);
    assert_eq!(proxy.get("/config").json()["version"], 1);
}

#[test]
fn clusters_and_listeners_report_counters() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("a", &[echo.addr], "", ""));
    let mut c = tcp::connect(proxy.listener("a"));
    assert_eq!(tcp::echo_roundtrip(&mut c, b"12345").unwrap(), b"12345");
    let v = proxy.get("/clusters").json();
    let cl = &v["clusters"][0];
    assert_eq!(cl["name"], "a");
    assert_eq!(cl["endpoints"][0]["address"], echo.addr.to_string());
    assert_eq!(cl["stats"]["connections_total"], 1);
    assert_eq!(cl["stats"]["connections_active"], 1);
    assert_eq!(cl["stats"]["bytes_sent"], 5);
    let v = proxy.get("/listeners").json();
    assert_eq!(v["listeners"][0]["stats"]["connections_active"], 1);
    assert_eq!(v["listeners"][0]["stats"]["bytes_received"], 5);
}

#[test]
fn metrics_cover_every_documented_family() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("epoll", &one_listener("a", &[echo.addr], "", ""));
    let mut c = tcp::connect(proxy.listener("a"));
    assert_eq!(tcp::echo_roundtrip(&mut c, b"hi").unwrap(), b"hi");
    drop(c);
    proxy.wait_metric(
        "ringmesh_downstream_connections_active",
        &[("listener", "a")],
        Duration::from_secs(5),
        |v| v == 0.0,
    );
    let text = proxy.metrics();
    for family in [
        "ringmesh_info",
        "ringmesh_workers",
        "ringmesh_config_version",
        "ringmesh_config_reloads_total",
        "ringmesh_draining",
        "ringmesh_downstream_connections_total",
        "ringmesh_downstream_connections_active",
        "ringmesh_downstream_connections_rejected_total",
        "ringmesh_downstream_connections_closed_total",
        "ringmesh_bytes_total",
        "ringmesh_downstream_connection_duration_seconds",
        "ringmesh_upstream_connections_total",
        "ringmesh_upstream_connections_active",
        "ringmesh_upstream_connect_failures_total",
        "ringmesh_upstream_connect_timeouts_total",
        "ringmesh_upstream_unavailable_total",
        "ringmesh_upstream_bytes_total",
        "ringmesh_upstream_connect_duration_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    let m =
        |name, labels: &[(&str, &str)]| helpers::admin::metric(&text, name, labels).unwrap_or(-1.0);
    assert_eq!(
        m(
            "ringmesh_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("io_engine", "epoll")
            ]
        ),
        1.0
    );
    assert_eq!(m("ringmesh_workers", &[]), 2.0);
    assert_eq!(
        m(
            "ringmesh_downstream_connections_total",
            &[("listener", "a")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "ringmesh_upstream_connect_duration_seconds_count",
            &[("cluster", "a")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "ringmesh_downstream_connection_duration_seconds_bucket",
            &[("listener", "a"), ("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "ringmesh_upstream_bytes_total",
            &[("cluster", "a"), ("direction", "received")]
        ),
        2.0
    );
    assert!(m("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(m("process_open_fds", &[]) > 3.0);
}

#[test]
fn every_closed_connection_is_logged_once_unless_disabled() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("logged", &[echo.addr], "", ""));
    let mut c = tcp::connect(proxy.listener("logged"));
    let local = c.local_addr().unwrap().to_string();
    assert_eq!(tcp::echo_roundtrip(&mut c, b"abc").unwrap(), b"abc");
    drop(c);
    let line = proxy.access_log_line();
    assert_eq!(line["listener"], "logged");
    assert_eq!(line["peer"], local);
    assert_eq!(line["endpoint"], echo.addr.to_string());
    assert_eq!(line["bytes_received"], 3);
    assert_eq!(line["bytes_sent"], 3);
    assert_eq!(line["reason"], "completed");
    assert!(line["duration_ms"].as_f64().is_some());

    let quiet = Proxy::start(
        "uring",
        &one_listener("quiet", &[echo.addr], "access_log: false", ""),
    );
    let mut c = tcp::connect(quiet.listener("quiet"));
    assert_eq!(tcp::echo_roundtrip(&mut c, b"abc").unwrap(), b"abc");
    drop(c);
    quiet.wait_metric(
        "ringmesh_downstream_connections_active",
        &[("listener", "quiet")],
        Duration::from_secs(5),
        |v| v == 0.0,
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !quiet
            .logs()
            .iter()
            .any(|v| v["message"] == "connection closed")
    );
}
