//! Draining: SIGTERM and POST /drain stop accepting, let open connections
//! finish, and exit 0 when none remain or when --drain-timeout passes.

mod helpers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};

#[test]
fn sigterm_lets_an_in_flight_stream_finish_then_exits_zero() {
    let echo = EchoServer::start();
    let mut proxy = Proxy::start("uring", &one_listener("d", &[echo.addr], "", ""));
    let addr = proxy.listener("d");
    let mut client = tcp::connect(addr);
    assert_eq!(
        tcp::echo_roundtrip(&mut client, b"start").unwrap(),
        b"start"
    );
    proxy.signal(libc::SIGTERM);
    proxy
        .wait_log(Duration::from_secs(5), |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("draining: listeners closed"))
        })
        .expect("drain must start");
    // No new connections, and readiness reports the drain.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "listener must be closed"
    );
    assert_eq!(proxy.get("/ready").status, 503);
    // The established stream keeps flowing for a while...
    let mut hasher_total = 0;
    for i in 0..20 {
        let msg = vec![i as u8; 10_000];
        assert_eq!(tcp::echo_roundtrip(&mut client, &msg).unwrap(), msg);
        hasher_total += msg.len();
        thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(hasher_total, 200_000);
    assert!(
        proxy.wait_exit(Duration::from_millis(10)).is_none(),
        "must wait for the open connection"
    );
    // ...and once it closes, the proxy exits 0.
    drop(client);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("proxy must exit after the drain");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn drain_timeout_bounds_the_wait() {
    let echo = EchoServer::start();
    let mut proxy = Proxy::start_with(
        &one_listener("d", &[echo.addr], "", ""),
        &[
            "--io-engine",
            "epoll",
            "--workers",
            "2",
            "--drain-timeout",
            "500ms",
        ],
    )
    .unwrap();
    let mut idle = tcp::connect(proxy.listener("d"));
    assert_eq!(tcp::echo_roundtrip(&mut idle, b"x").unwrap(), b"x");
    let started = Instant::now();
    proxy.signal(libc::SIGTERM);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("must exit at the drain timeout");
    assert_eq!(status.code(), Some(0));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "exited before the timeout: {took:?}"
    );
    assert!(
        proxy
            .logs()
            .iter()
            .any(|v| v["message"] == "drain timeout reached; exiting with connections still open"),
        "{}",
        proxy.log_text()
    );
}

#[test]
fn post_drain_exits_zero_when_idle() {
    let echo = EchoServer::start();
    let mut proxy = Proxy::start("uring", &one_listener("d", &[echo.addr], "", ""));
    let r = helpers::admin::request(proxy.admin, "POST", "/drain", "").unwrap();
    assert_eq!(r.status, 202);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("proxy must exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn config_changes_are_refused_while_draining() {
    let echo = EchoServer::start();
    let config = one_listener("d", &[echo.addr], "", "");
    let proxy = Proxy::start("uring", &config);
    let mut c = tcp::connect(proxy.listener("d"));
    c.write_all(b"hold").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).unwrap();
    proxy.signal(libc::SIGTERM);
    proxy.wait_log(Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("draining: listeners closed"))
    });
    let r = proxy.put_config(&config);
    assert_eq!(r.status, 503, "{}", r.body);
}
