//! The load generator against real servers on 127.0.0.1: reported
//! percentiles match a known server delay, and every kind of failure is
//! classified and kept out of the latency figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use ringmesh_bench::backend::{self, BackendKind, BackendSpec};
use ringmesh_bench::http1::Request;
use ringmesh_bench::{Direction, HttpWorkload, LoadSpec, Workload, run};

fn http_workload(close: bool) -> Workload {
    Workload::Http(HttpWorkload {
        request: Request::build("GET", "/", "test", &[], b"", close),
        expect_status: 200,
        new_connection_per_request: close,
    })
}

fn spec(target: SocketAddr, workload: Workload) -> LoadSpec {
    LoadSpec {
        target,
        workload,
        threads: 2,
        connections: 4,
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        rate: None,
        timeout: Duration::from_millis(500),
        cpus: Vec::new(),
        progress: false,
    }
}

fn http_backend(delay: Duration) -> SocketAddr {
    backend::start(BackendSpec {
        kind: BackendKind::Http,
        listen: "127.0.0.1:0".parse().unwrap(),
        delay,
        body_size: 100,
        cpu: None,
    })
    .unwrap()
    .addr
}

/// A server whose every connection is handled by `f` on its own thread.
fn scripted(f: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || f(s));
        }
    });
    addr
}

fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut acc = Vec::new();
    while !acc.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => acc.extend_from_slice(&buf[..n]),
        }
    }
    true
}

#[test]
fn percentiles_reflect_a_known_server_delay() {
    let addr = http_backend(Duration::from_millis(20));
    let r = run(&spec(addr, http_workload(false))).unwrap();
    assert_eq!(r.errors.total(), 0, "{}", r.table());
    let l = r.latency_ms.expect("latency samples");
    // Every response waits 20 ms; loopback adds little, the VM's wake-ups
    // add a few ms at worst: loose bounds.
    assert!((19.5..40.0).contains(&l.p50), "p50 {}", l.p50);
    assert!((19.5..80.0).contains(&l.p99), "p99 {}", l.p99);
    // 4 connections, 20 ms each, closed loop: about 200 req/s.
    assert!(
        (100.0..=210.0).contains(&r.requests_per_sec),
        "{} req/s",
        r.requests_per_sec
    );
}

#[test]
fn open_loop_charges_queueing_to_latency() {
    // One connection, 200 req/s intended, server needs 20 ms per request
    // (max 50 req/s): requests queue behind each other, and corrected
    // latency grows far beyond the 20 ms service time.
    let addr = http_backend(Duration::from_millis(20));
    let mut s = spec(addr, http_workload(false));
    s.connections = 1;
    s.threads = 1;
    s.rate = Some(200.0);
    s.timeout = Duration::from_secs(5);
    let r = run(&s).unwrap();
    let l = r.latency_ms.expect("latency samples");
    assert!(
        l.p99 > 200.0,
        "coordinated omission not corrected: p99 {}",
        l.p99
    );
    assert!(r.requests_per_sec < 60.0, "{}", r.requests_per_sec);
}

#[test]
fn open_loop_holds_the_requested_rate() {
    let addr = http_backend(Duration::ZERO);
    let mut s = spec(addr, http_workload(false));
    s.rate = Some(1000.0);
    let r = run(&s).unwrap();
    assert!(
        (900.0..=1100.0).contains(&r.requests_per_sec),
        "{} req/s",
        r.requests_per_sec
    );
}

#[test]
fn resets_are_counted_and_not_sampled() {
    let addr = scripted(|mut s| {
        if read_head(&mut s) {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    });
    let r = run(&spec(addr, http_workload(false))).unwrap();
    assert!(r.errors.reset > 0, "{}", r.table());
    assert_eq!(r.requests, 0);
    assert!(r.latency_ms.is_none());
}

#[test]
fn silent_servers_time_out() {
    let addr = scripted(|mut s| {
        read_head(&mut s);
        thread::sleep(Duration::from_secs(3));
    });
    let mut sp = spec(addr, http_workload(false));
    sp.timeout = Duration::from_millis(200);
    let r = run(&sp).unwrap();
    assert!(r.errors.timeout >= 4, "{}", r.table());
    assert_eq!(r.requests, 0);
}

#[test]
fn bad_framing_is_detected() {
    let addr = scripted(|mut s| {
        while read_head(&mut s) {
            // Says 5 bytes, sends 7: the extra bytes break keep-alive framing.
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcdefg")
                .is_err()
            {
                return;
            }
        }
    });
    let r = run(&spec(addr, http_workload(false))).unwrap();
    assert!(r.errors.bad_framing > 0, "{}", r.table());
    assert_eq!(r.requests, 0);
}

#[test]
fn unexpected_status_is_counted() {
    let addr = scripted(|mut s| {
        while read_head(&mut s) {
            if s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
    });
    let r = run(&spec(addr, http_workload(false))).unwrap();
    assert!(r.errors.bad_status > 0, "{}", r.table());
    assert_eq!(r.requests, 0);
}

#[test]
fn refused_connections_are_connect_errors() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = run(&spec(addr, http_workload(true))).unwrap();
    assert!(r.errors.connect > 0, "{}", r.table());
}

#[test]
fn churn_opens_a_connection_per_request() {
    let addr = http_backend(Duration::ZERO);
    let r = run(&spec(addr, http_workload(true))).unwrap();
    assert_eq!(r.errors.total(), 0, "{}", r.table());
    assert!(r.requests > 100);
}

#[test]
fn tcp_rr_and_stream_move_bytes() {
    let echo = backend::start(BackendSpec {
        kind: BackendKind::Echo,
        listen: "127.0.0.1:0".parse().unwrap(),
        delay: Duration::ZERO,
        body_size: 0,
        cpu: None,
    })
    .unwrap();
    let r = run(&spec(echo.addr, Workload::TcpRr { size: 512 })).unwrap();
    assert_eq!(r.errors.total(), 0, "{}", r.table());
    assert!(r.requests > 100);
    let sink = backend::start(BackendSpec {
        kind: BackendKind::Sink,
        listen: "127.0.0.1:0".parse().unwrap(),
        delay: Duration::ZERO,
        body_size: 0,
        cpu: None,
    })
    .unwrap();
    let r = run(&spec(
        sink.addr,
        Workload::TcpStream {
            direction: Direction::Upload,
            chunk: 64 * 1024,
        },
    ))
    .unwrap();
    assert_eq!(r.errors.total(), 0, "{}", r.table());
    assert!(r.bytes_sent > 10 * 1024 * 1024 && r.gbit_per_sec > 0.0);
}
