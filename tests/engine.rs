//! The engine around the connections: I/O driver selection and fallback,
//! and refusing to share a port with another instance.

mod helpers;

use std::process::Command;
use std::time::Duration;

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};

fn fixed_port_config(echo: std::net::SocketAddr, port: u16) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners: [ {{ name: fixed, listen: \"127.0.0.1:{port}\", cluster: c }} ]\nclusters: [ {{ name: c, endpoints: [\"{echo}\"] }} ]\n"
    )
}

#[test]
fn a_second_instance_on_the_same_address_refuses_to_start() {
    let echo = EchoServer::start();
    let port = tcp::closed_port().port();
    let config = fixed_port_config(echo.addr, port);
    let first = Proxy::start("uring", &config);
    let second = Proxy::start_with(&config, &["--io-engine", "uring"]);
    let err = second.err().expect("the second instance must not start");
    assert!(err.contains("already in use"), "{err}");
    // The first one still owns every connection.
    for _ in 0..4 {
        let mut c = tcp::connect(first.listener("fixed"));
        assert_eq!(tcp::echo_roundtrip(&mut c, b"mine").unwrap(), b"mine");
    }
}

#[test]
fn auto_uses_io_uring_where_available() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("auto", &one_listener("a", &[echo.addr], "", ""));
    assert_eq!(
        proxy.metric(
            "ringmesh_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("io_engine", "io_uring")
            ]
        ),
        1.0
    );
}

fn strace_available() -> bool {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: strace is not installed; .ci/run installs it to inject io_uring_setup failures"
        );
    }
    ok
}

const BLOCK_URING: &[&str] = &[
    "strace",
    "-f",
    "-qq",
    "-o",
    "/dev/null",
    "-e",
    "trace=io_uring_setup",
    "-e",
    "inject=io_uring_setup:error=EPERM",
];

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_blocked_and_says_so() {
    if !strace_available() {
        return;
    }
    let echo = EchoServer::start();
    let proxy = Proxy::start_wrapped(
        &one_listener("fb", &[echo.addr], "", ""),
        &["--io-engine", "auto", "--workers", "2"],
        BLOCK_URING,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let warning = proxy.wait_log(Duration::from_secs(1), |v| {
        v["message"] == "io_uring is unavailable; falling back to epoll"
    });
    let reason = warning.expect("the fallback must be logged")["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("seccomp") || reason.contains("not permitted"),
        "{reason}"
    );
    assert_eq!(
        proxy.metric(
            "ringmesh_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("io_engine", "epoll")
            ]
        ),
        1.0
    );
    let mut c = tcp::connect(proxy.listener("fb"));
    assert_eq!(
        tcp::echo_roundtrip(&mut c, b"still forwarding").unwrap(),
        b"still forwarding"
    );
}

#[test]
fn forcing_uring_where_it_is_blocked_fails_clearly() {
    if !strace_available() {
        return;
    }
    let echo = EchoServer::start();
    let err = Proxy::start_wrapped(
        &one_listener("u", &[echo.addr], "", ""),
        &["--io-engine", "uring"],
        BLOCK_URING,
    )
    .err()
    .expect("must not start");
    assert!(
        err.contains("cannot start the I/O engine (--io-engine uring): Operation not permitted"),
        "{err}"
    );
}
