//! No lockout by silent or greedy clients: `first_byte_timeout` closes
//! clients that never speak before they take an upstream slot, and
//! `max_connections_per_client` keeps one address from holding every slot.

mod helpers;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};

/// A TCP connection to `to` from source address `from` (any of 127.0.0.0/8).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

on_both_engines! {
    fn silent_clients_are_closed_before_they_take_an_upstream_slot(engine) {
        let echo = EchoServer::start();
        // A cluster that takes 4 connections at once, and 6 clients that
        // never send a byte: without first_byte_timeout they would hold
        // every slot and lock the speaking client out.
        let proxy = Proxy::start(
            engine,
            &one_listener("l", &[echo.addr], "first_byte_timeout: 300ms", "circuit_breakers: { max_connections: 4 }"),
        );
        let addr = proxy.listener("l");
        let mut silent: Vec<TcpStream> = (0..6).map(|_| tcp::connect(addr)).collect();
        std::thread::sleep(Duration::from_millis(50));
        let mut speaker = tcp::connect(addr);
        assert_eq!(tcp::echo_roundtrip(&mut speaker, b"hello").unwrap(), b"hello");
        for s in &mut silent {
            let took = tcp::wait_closed(s, Duration::from_secs(5)).expect("a silent client is closed");
            assert!(took < Duration::from_secs(3), "{took:?}");
        }
        assert_eq!(echo.accepted.load(Ordering::SeqCst), 1, "silent clients never reached the upstream");
        let closed = [("listener", "l"), ("reason", "first_byte_timeout")];
        assert_eq!(proxy.wait_metric("ringmesh_downstream_connections_closed_total", &closed, Duration::from_secs(5), |v| v >= 6.0), 6.0);
    }
}

on_both_engines! {
    fn one_client_address_gets_its_limit_and_others_are_served(engine) {
        let echo = EchoServer::start();
        let proxy = Proxy::start(engine, &one_listener("l", &[echo.addr], "max_connections_per_client: 2", ""));
        let addr = proxy.listener("l");
        let mut a = connect_from("127.0.0.2", addr);
        let mut b = connect_from("127.0.0.2", addr);
        assert_eq!(tcp::echo_roundtrip(&mut a, b"a").unwrap(), b"a");
        assert_eq!(tcp::echo_roundtrip(&mut b, b"b").unwrap(), b"b");
        let mut third = connect_from("127.0.0.2", addr);
        let took = tcp::wait_closed(&mut third, Duration::from_secs(5)).expect("the third connection from one address is refused");
        assert!(took < Duration::from_secs(1), "{took:?}");
        let mut other = connect_from("127.0.0.3", addr);
        assert_eq!(tcp::echo_roundtrip(&mut other, b"c").unwrap(), b"c");
        let rejected = [("listener", "l"), ("reason", "max_connections_per_client")];
        assert_eq!(proxy.metric("ringmesh_downstream_connections_rejected_total", &rejected), 1.0);
        // Capacity returns when a connection closes.
        drop(a);
        std::thread::sleep(Duration::from_millis(200));
        let mut again = connect_from("127.0.0.2", addr);
        assert_eq!(tcp::echo_roundtrip(&mut again, b"d").unwrap(), b"d");
    }
}

#[test]
fn first_byte_timeout_is_refused_where_tls_bounds_the_client_already() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &one_listener("l", &[echo.addr], "", ""));
    let bad = one_listener(
        "l",
        &[echo.addr],
        "first_byte_timeout: 1s\nsni_routes: [{ server_names: [a.example], cluster: l }]",
        "",
    );
    let r = proxy.put_config(&bad);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_paths(), ["listeners[0].first_byte_timeout"]);
}
