//! Endpoint health over real sockets, with two workers: outlier ejection
//! (consecutive failures, max_ejection_percent, success rate), active
//! health checks (HTTP and TCP), and panic mode. Every ejection must hold on
//! both cores at once.

mod helpers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use helpers::proxy::Proxy;
use helpers::tcp::{self, EchoServer};

fn two_workers(config: &str) -> Proxy {
    Proxy::start_with(config, &["--workers", "2"]).unwrap()
}

fn config(endpoints: &[SocketAddr], cluster_extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners: [ {{ name: l, listen: 127.0.0.1:0, cluster: c }} ]\nclusters:\n  - name: c\n    endpoints: [{}]\n{cluster_extra}",
        list.join(", ")
    )
}

/// The GET /clusters entry of endpoint `addr` in cluster `c`.
fn endpoint(proxy: &Proxy, addr: SocketAddr) -> serde_json::Value {
    let clusters = proxy.get("/clusters").json();
    clusters["clusters"][0]["endpoints"]
        .as_array()
        .and_then(|eps| {
            eps.iter()
                .find(|e| e["address"] == addr.to_string())
                .cloned()
        })
        .unwrap_or_else(|| panic!("{addr} not in {clusters}"))
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One echo round trip through the proxy; false when it failed. A reset
/// by the upstream is passed on at once, so even the connect can fail.
fn roundtrip(proxy: &Proxy) -> bool {
    // The listener's address, learned once per proxy: asking the admin
    // API for it on every round trip made hundreds of admin connections
    // per second (see the note in tests/README.md).
    thread_local! {
        static ADDRS: std::cell::RefCell<Vec<(i32, SocketAddr)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let pid = proxy.pid();
    let addr = ADDRS.with(|a| {
        a.borrow()
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, addr)| *addr)
    });
    let addr = addr.unwrap_or_else(|| {
        let addr = proxy.listener("l");
        ADDRS.with(|a| a.borrow_mut().push((pid, addr)));
        addr
    });
    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    matches!(tcp::echo_roundtrip(&mut c, b"ping"), Ok(v) if v == b"ping")
}

#[test]
fn a_refusing_endpoint_is_ejected_after_consecutive_failures_and_returns_after_the_ejection_time() {
    let good = EchoServer::start();
    let bad = tcp::closed_port();
    let proxy = two_workers(&config(
        &[good.addr, bad],
        "    connect_attempts: 2\n    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 1500ms, interval: 200ms, max_ejection_percent: 50 }\n",
    ));
    // Failover hides the failures from clients while the detector counts them.
    for _ in 0..12 {
        assert!(roundtrip(&proxy));
    }
    let ep = endpoint(&proxy, bad);
    assert_eq!(ep["ejected"], true, "{ep}");
    assert_eq!(ep["ejection"]["reason"], "consecutive_5xx");
    assert_eq!(ep["health"], "unhealthy");
    assert_eq!(
        proxy.metric(
            "ringmesh_outlier_ejections_total",
            &[("cluster", "c"), ("detector", "consecutive_5xx")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric("ringmesh_outlier_ejections_active", &[("cluster", "c")]),
        1.0
    );
    assert_eq!(
        proxy.metric("ringmesh_cluster_membership_healthy", &[("cluster", "c")]),
        1.0
    );
    // Ejected on both workers: no connect attempt reaches it any more.
    let failures = proxy.metric(
        "ringmesh_upstream_connect_failures_total",
        &[("cluster", "c")],
    );
    assert_eq!(failures, 3.0);
    for _ in 0..20 {
        assert!(roundtrip(&proxy));
    }
    assert_eq!(
        proxy.metric(
            "ringmesh_upstream_connect_failures_total",
            &[("cluster", "c")]
        ),
        failures
    );
    // The endpoint comes back to life; after the ejection time it gets
    // traffic again.
    let revived = EchoServer::start_on(&bad.to_string());
    wait_until(Duration::from_secs(5), "the ejection to end", || {
        endpoint(&proxy, bad)["ejected"] == false
    });
    for _ in 0..10 {
        assert!(roundtrip(&proxy));
    }
    assert!(revived.accepted.load(Ordering::SeqCst) >= 3);
    assert_eq!(endpoint(&proxy, bad)["times_ejected"], 1);
}

#[test]
fn max_ejection_percent_limits_how_many_endpoints_are_ejected() {
    let good = EchoServer::start();
    let bad: Vec<SocketAddr> = (0..3).map(|_| tcp::closed_port()).collect();
    let mut all = vec![good.addr];
    all.extend(&bad);
    let proxy = two_workers(&config(
        &all,
        "    connect_attempts: 4\n    outlier_detection: { consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 30 }\n",
    ));
    for _ in 0..40 {
        assert!(roundtrip(&proxy));
    }
    // 0% and 25% ejected are below 30%: two ejections; at 50% no more.
    let ejected = bad
        .iter()
        .filter(|a| endpoint(&proxy, **a)["ejected"] == true)
        .count();
    assert_eq!(ejected, 2);
    assert!(
        proxy.metric(
            "ringmesh_outlier_ejections_overflow_total",
            &[("cluster", "c")]
        ) >= 1.0
    );
    assert_eq!(endpoint(&proxy, good.addr)["ejected"], false);
}

/// An echo server that resets `failing` of every 10 connections.
fn flaky_echo(failing: usize) -> SocketAddr {
    let n = Arc::new(AtomicUsize::new(0));
    tcp::serve_each(move |mut s: TcpStream| {
        if n.fetch_add(1, Ordering::SeqCst) % 10 < failing {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            return; // dropped with linger 0: a reset
        }
        let mut buf = [0u8; 1024];
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 || s.write_all(&buf[..k]).is_err() {
                break;
            }
        }
    })
}

#[test]
fn success_rate_detection_ejects_an_endpoint_that_fails_30_percent() {
    let healthy: Vec<EchoServer> = (0..4).map(|_| EchoServer::start()).collect();
    let flaky = flaky_echo(3);
    let mut all: Vec<SocketAddr> = healthy.iter().map(|e| e.addr).collect();
    all.push(flaky);
    // Consecutive detection is off (0): only the success rate can eject.
    let proxy = two_workers(&config(
        &all,
        "    outlier_detection: { consecutive_5xx: 0, interval: 500ms, success_rate_minimum_hosts: 5, success_rate_request_volume: 10, success_rate_stdev_factor: 1000, base_ejection_time: 60s, max_ejection_percent: 20 }\n",
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while endpoint(&proxy, flaky)["ejected"] != true {
        assert!(
            Instant::now() < deadline,
            "never ejected: {}",
            endpoint(&proxy, flaky)
        );
        for _ in 0..25 {
            roundtrip(&proxy);
        }
    }
    assert_eq!(
        endpoint(&proxy, flaky)["ejection"]["reason"],
        "success_rate"
    );
    for h in &healthy {
        assert_eq!(endpoint(&proxy, h.addr)["ejected"], false);
    }
    // With the flaky endpoint out, every connection succeeds.
    for _ in 0..30 {
        assert!(roundtrip(&proxy));
    }
}

/// A backend that answers `GET /healthz` with the status in `status` and
/// echoes anything else; counts non-check connections.
struct CheckedBackend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    traffic: Arc<AtomicUsize>,
}

impl CheckedBackend {
    fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let traffic = Arc::new(AtomicUsize::new(0));
        let (st, tr) = (status.clone(), traffic.clone());
        let addr = tcp::serve_each(move |mut s: TcpStream| {
            let mut buf = [0u8; 1024];
            let Ok(k) = s.read(&mut buf) else { return };
            if buf[..k].starts_with(b"GET /healthz HTTP/1.1\r\n") {
                let code = st.load(Ordering::SeqCst);
                let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                return;
            }
            tr.fetch_add(1, Ordering::SeqCst);
            let mut k = k;
            while k > 0 && s.write_all(&buf[..k]).is_ok() {
                k = s.read(&mut buf).unwrap_or(0);
            }
        });
        CheckedBackend {
            addr,
            status,
            traffic,
        }
    }
}

const HTTP_CHECK: &str = "    health_check: { type: http, path: /healthz, expected_statuses: [200-299], interval: 100ms, interval_jitter: 0s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2 }\n";

#[test]
fn a_failing_http_health_check_takes_an_endpoint_out_and_a_passing_one_brings_it_back() {
    let (a, b) = (CheckedBackend::start(), CheckedBackend::start());
    let proxy = two_workers(&config(&[a.addr, b.addr], HTTP_CHECK));
    wait_until(Duration::from_secs(5), "first checks", || {
        endpoint(&proxy, b.addr)["check"] == "passing"
    });
    b.status.store(503, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "b to fail its check", || {
        endpoint(&proxy, b.addr)["health"] == "unhealthy"
    });
    assert_eq!(endpoint(&proxy, b.addr)["check"], "failing");
    assert_eq!(
        proxy.metric("ringmesh_cluster_membership_healthy", &[("cluster", "c")]),
        1.0
    );
    let before = b.traffic.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert!(roundtrip(&proxy));
    }
    assert_eq!(
        b.traffic.load(Ordering::SeqCst),
        before,
        "b got traffic while failing"
    );
    b.status.store(200, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "b to return", || {
        endpoint(&proxy, b.addr)["health"] == "healthy"
    });
    for _ in 0..20 {
        assert!(roundtrip(&proxy));
    }
    assert!(b.traffic.load(Ordering::SeqCst) >= before + 5);
    assert!(
        proxy.metric(
            "ringmesh_health_checks_total",
            &[("cluster", "c"), ("result", "failure")]
        ) >= 2.0
    );
    // One checker per endpoint per process, not one per core: at 100 ms
    // intervals, one checker makes about 10 checks a second and one per
    // worker would make 20. A slow machine can only make fewer.
    let passed = || endpoint(&proxy, a.addr)["checks_passed"].as_u64().unwrap();
    let start = passed();
    std::thread::sleep(Duration::from_secs(2));
    let per_second = (passed() - start) as f64 / 2.0;
    assert!(
        per_second <= 13.0,
        "{per_second} checks/s: more than one checker"
    );
}

#[test]
fn a_tcp_health_check_keeps_clients_away_from_a_dead_endpoint() {
    let good = EchoServer::start();
    let dead = tcp::closed_port();
    let proxy = two_workers(&config(
        &[good.addr, dead],
        "    connect_attempts: 1\n    health_check: { interval: 100ms, unhealthy_threshold: 1 }\n",
    ));
    wait_until(Duration::from_secs(5), "the dead endpoint to fail", || {
        endpoint(&proxy, dead)["health"] == "unhealthy"
    });
    // With one attempt per client, any pick of the dead endpoint would fail.
    for _ in 0..30 {
        assert!(roundtrip(&proxy));
    }
    assert_eq!(
        proxy.metric(
            "ringmesh_upstream_connect_failures_total",
            &[("cluster", "c")]
        ),
        0.0
    );
}

#[test]
fn below_the_panic_threshold_health_is_ignored_and_with_panic_off_clients_are_refused() {
    let (a, b) = (CheckedBackend::start(), CheckedBackend::start());
    a.status.store(500, Ordering::SeqCst);
    b.status.store(500, Ordering::SeqCst);
    let proxy = two_workers(&config(&[a.addr, b.addr], HTTP_CHECK));
    wait_until(Duration::from_secs(5), "both to fail", || {
        proxy.metric("ringmesh_cluster_membership_healthy", &[("cluster", "c")]) == 0.0
    });
    // Panic mode (default threshold 50%): traffic still flows to both.
    for _ in 0..10 {
        assert!(roundtrip(&proxy));
    }
    assert!(proxy.metric("ringmesh_lb_healthy_panic_total", &[("cluster", "c")]) >= 10.0);
    assert!(a.traffic.load(Ordering::SeqCst) > 0 && b.traffic.load(Ordering::SeqCst) > 0);
    // Panic mode off: nothing healthy means the connection is refused.
    let off = config(
        &[a.addr, b.addr],
        &format!("{HTTP_CHECK}    panic_threshold: 0\n"),
    );
    assert_eq!(proxy.put_config(&off).status, 200);
    let mut c = tcp::connect(proxy.listener("l"));
    assert!(tcp::wait_closed(&mut c, Duration::from_secs(5)).is_some());
    let log = proxy
        .wait_log(Duration::from_secs(5), |l| {
            l["reason"] == "upstream_unavailable"
        })
        .expect("an access log line");
    assert!(
        log["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no healthy endpoint"),
        "{log}"
    );
}
