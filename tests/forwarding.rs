//! TCP forwarding over real sockets, on both I/O engines: bytes arrive
//! exactly, half-closes and resets travel through, failures of upstreams
//! are handled, and timeouts and limits are enforced.

mod helpers;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, Blackhole, EchoServer};

const MIB: usize = 1024 * 1024;

on_every_path! {
    fn forwards_64_mib_each_way_byte_exact(engine, zero_copy) {
        let (upstream, results) = tcp::exchange_server(2, 64 * MIB);
        let proxy = Proxy::start(engine, &one_listener("bulk", &[upstream], &format!("zero_copy: {zero_copy}"), ""));
        let client = tcp::connect(proxy.listener("bulk"));
        let mut writer = client.try_clone().unwrap();
        let sender = thread::spawn(move || {
            let h = tcp::send_payload(&mut writer, 1, 64 * MIB).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
            h
        });
        let mut reader = client;
        let (received, received_hash) = tcp::receive_all(&mut reader).unwrap();
        let sent_hash = sender.join().unwrap();
        let (server_received, server_received_hash, server_sent_hash) =
            results.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(server_received, 64 * MIB);
        assert_eq!(server_received_hash, sent_hash, "client -> upstream bytes differ");
        assert_eq!(received, 64 * MIB);
        assert_eq!(received_hash, server_sent_hash, "upstream -> client bytes differ");
        let listener = [("listener", "bulk"), ("direction", "received")];
        let v = proxy.wait_metric("ringmesh_bytes_total", &listener, Duration::from_secs(5), |v| v >= (64 * MIB) as f64);
        assert_eq!(v, (64 * MIB) as f64);
        let closed = [("listener", "bulk"), ("reason", "completed")];
        assert_eq!(proxy.wait_metric("ringmesh_downstream_connections_closed_total", &closed, Duration::from_secs(5), |v| v >= 1.0), 1.0);
        let (took, other) = if zero_copy == "always" { ("splice", "buffered") } else { ("buffered", "splice") };
        assert_eq!(proxy.metric("ringmesh_forwarded_connections_total", &[("listener", "bulk"), ("path", took)]), 1.0);
        assert_eq!(proxy.metric("ringmesh_forwarded_connections_total", &[("listener", "bulk"), ("path", other)]), 0.0);
        assert_eq!(proxy.access_log_line()["forward_path"], took);
    }

    fn forwards_many_small_writes_in_order(engine, zero_copy) {
        let echo = EchoServer::start();
        let proxy = Proxy::start(engine, &one_listener("small", &[echo.addr], &format!("zero_copy: {zero_copy}"), ""));
        let mut client = tcp::connect(proxy.listener("small"));
        let mut reader = client.try_clone().unwrap();
        let mut expected = Vec::new();
        for i in 0..5000u32 {
            let len = 1 + (i as usize * 7919) % 97;
            expected.extend((0..len).map(|j| (i as usize + j) as u8));
        }
        let total = expected.len();
        let check = expected.clone();
        let receiver = thread::spawn(move || {
            let mut got = vec![0u8; total];
            reader.read_exact(&mut got).unwrap();
            got == check
        });
        let mut offset = 0;
        for i in 0..5000u32 {
            let len = 1 + (i as usize * 7919) % 97;
            client.write_all(&expected[offset..offset + len]).unwrap();
            offset += len;
        }
        assert!(receiver.join().unwrap(), "echoed bytes differ from what was written");
    }

    fn serves_1000_concurrent_connections(engine, zero_copy) {
        let echo = EchoServer::start();
        let proxy = Proxy::start(engine, &one_listener("many", &[echo.addr], &format!("zero_copy: {zero_copy}"), ""));
        let addr = proxy.listener("many");
        let mut clients: Vec<_> = (0..1000).map(|_| tcp::connect(addr)).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("hello {i:05}\n").as_bytes()).unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let mut back = [0u8; 12];
            c.read_exact(&mut back).unwrap();
            assert_eq!(&back, format!("hello {i:05}\n").as_bytes());
        }
        let active = proxy.metric("ringmesh_downstream_connections_active", &[("listener", "many")]);
        assert_eq!(active, 1000.0, "all 1000 connections must be open at once");
        drop(clients);
        let active = proxy.wait_metric("ringmesh_downstream_connections_active", &[("listener", "many")], Duration::from_secs(10), |v| v == 0.0);
        assert_eq!(active, 0.0);
    }

    fn client_half_close_lets_the_response_through(engine, zero_copy) {
        // The upstream reads the whole request (to EOF), then answers.
        let upstream = tcp::serve_each(|mut s| {
            let mut req = Vec::new();
            s.read_to_end(&mut req).unwrap();
            thread::sleep(Duration::from_millis(100));
            s.write_all(format!("got {} bytes", req.len()).as_bytes()).unwrap();
        });
        let proxy = Proxy::start(engine, &one_listener("hc", &[upstream], &format!("zero_copy: {zero_copy}"), ""));
        let mut client = tcp::connect(proxy.listener("hc"));
        client.write_all(&[7u8; 5000]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "got 5000 bytes");
    }

    fn upstream_half_close_lets_the_client_keep_sending(engine, zero_copy) {
        // The upstream sends a greeting and closes its write side first, then
        // keeps reading what the client sends.
        let (tx, rx) = std::sync::mpsc::channel();
        let upstream = tcp::serve_each(move |mut s| {
            s.write_all(b"greeting").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            tx.send(rest.len()).unwrap();
        });
        let proxy = Proxy::start(engine, &one_listener("hc2", &[upstream], &format!("zero_copy: {zero_copy}"), ""));
        let mut client = tcp::connect(proxy.listener("hc2"));
        let mut greeting = String::new();
        client.read_to_string(&mut greeting).unwrap();
        assert_eq!(greeting, "greeting", "EOF must follow the greeting");
        thread::sleep(Duration::from_millis(100));
        client.write_all(&[1u8; 100_000]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 100_000);
    }

    fn upstream_reset_resets_the_client(engine, zero_copy) {
        let upstream = tcp::serve_each(|s| {
            let mut buf = [0u8; 5];
            let mut s2 = s.try_clone().unwrap();
            s2.read_exact(&mut buf).unwrap();
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
        });
        let proxy = Proxy::start(engine, &one_listener("rst", &[upstream], &format!("zero_copy: {zero_copy}"), ""));
        let mut client = tcp::connect(proxy.listener("rst"));
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 16];
        let err = loop {
            match client.read(&mut buf) {
                Ok(0) => panic!("expected a reset, got a clean close"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        let closed = [("listener", "rst"), ("reason", "upstream_error")];
        assert_eq!(proxy.wait_metric("ringmesh_downstream_connections_closed_total", &closed, Duration::from_secs(5), |v| v >= 1.0), 1.0);
    }

    fn client_reset_resets_the_upstream(engine, zero_copy) {
        let (tx, rx) = std::sync::mpsc::channel();
        let upstream = tcp::serve_each(move |mut s| {
            let mut buf = [0u8; 64];
            let outcome = loop {
                match s.read(&mut buf) {
                    Ok(0) => break "clean close".to_owned(),
                    Ok(_) => continue,
                    Err(e) => break format!("{:?}", e.kind()),
                }
            };
            tx.send(outcome).unwrap();
        });
        let proxy = Proxy::start(engine, &one_listener("crst", &[upstream], &format!("zero_copy: {zero_copy}"), ""));
        let mut client = tcp::connect(proxy.listener("crst"));
        client.write_all(b"hello").unwrap();
        thread::sleep(Duration::from_millis(100));
        socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        let outcome = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(outcome, "ConnectionReset");
        let closed = [("listener", "crst"), ("reason", "downstream_error")];
        assert_eq!(proxy.wait_metric("ringmesh_downstream_connections_closed_total", &closed, Duration::from_secs(5), |v| v >= 1.0), 1.0);
    }

    fn idle_connections_are_closed_after_idle_timeout(engine, zero_copy) {
        let echo = EchoServer::start();
        let proxy = Proxy::start(engine, &one_listener("idle", &[echo.addr], &format!("idle_timeout: 300ms\nzero_copy: {zero_copy}"), ""));
        let mut c = tcp::connect(proxy.listener("idle"));
        // Activity keeps it open past the timeout...
        for _ in 0..5 {
            assert_eq!(tcp::echo_roundtrip(&mut c, b"x").unwrap(), b"x");
            thread::sleep(Duration::from_millis(100));
        }
        // ...silence closes it, counted from the last byte moved.
        assert_eq!(tcp::echo_roundtrip(&mut c, b"y").unwrap(), b"y");
        let took = tcp::wait_closed(&mut c, Duration::from_secs(5)).expect("idle connection must be closed");
        assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
        let closed = [("listener", "idle"), ("reason", "idle_timeout")];
        assert_eq!(proxy.wait_metric("ringmesh_downstream_connections_closed_total", &closed, Duration::from_secs(5), |v| v >= 1.0), 1.0);
    }
}

on_both_engines! {
    fn auto_splices_bulk_and_keeps_small_exchanges_buffered(engine) {
        // Default `zero_copy: auto`: an echo of small messages stays on the
        // buffered path; a bulk upload takes the splice path.
        let echo = EchoServer::start();
        let (upstream, results) = tcp::exchange_server(1, 0);
        let config = format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - {{ name: small, listen: 127.0.0.1:0, cluster: small }}\n  - {{ name: bulk, listen: 127.0.0.1:0, cluster: bulk }}\nclusters:\n  - {{ name: small, endpoints: [\"{}\"] }}\n  - {{ name: bulk, endpoints: [\"{upstream}\"] }}\n",
            echo.addr
        );
        let proxy = Proxy::start(engine, &config);
        let mut c = tcp::connect(proxy.listener("small"));
        for i in 0..200 {
            let msg = format!("message {i}");
            assert_eq!(tcp::echo_roundtrip(&mut c, msg.as_bytes()).unwrap(), msg.as_bytes());
        }
        drop(c);
        let mut b = tcp::connect(proxy.listener("bulk"));
        let sent = tcp::send_payload(&mut b, 3, 32 * MIB).unwrap();
        b.shutdown(Shutdown::Write).unwrap();
        let (n, hash, _) = results.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!((n, hash), (32 * MIB, sent), "bulk bytes differ");
        let (_, _) = tcp::receive_all(&mut b).unwrap();
        let small = [("listener", "small"), ("path", "buffered")];
        assert_eq!(proxy.wait_metric("ringmesh_forwarded_connections_total", &small, Duration::from_secs(5), |v| v >= 1.0), 1.0);
        let bulk = [("listener", "bulk"), ("path", "splice")];
        assert_eq!(proxy.wait_metric("ringmesh_forwarded_connections_total", &bulk, Duration::from_secs(5), |v| v >= 1.0), 1.0);
        assert_eq!(proxy.metric("ringmesh_forwarded_connections_total", &[("listener", "small"), ("path", "splice")]), 0.0);
        assert_eq!(proxy.metric("ringmesh_bytes_total", &[("listener", "bulk"), ("direction", "received")]), (32 * MIB) as f64);
    }

    fn refused_endpoint_fails_over_to_the_next(engine) {
        let echo = EchoServer::start();
        let dead = tcp::closed_port();
        let proxy = Proxy::start(engine, &one_listener("fo", &[dead, echo.addr], "", ""));
        let addr = proxy.listener("fo");
        for i in 0..6 {
            let mut c = tcp::connect(addr);
            let msg = format!("try {i}");
            assert_eq!(tcp::echo_roundtrip(&mut c, msg.as_bytes()).unwrap(), msg.as_bytes());
        }
        assert!(proxy.metric("ringmesh_upstream_connect_failures_total", &[("cluster", "fo")]) >= 1.0);
        assert_eq!(proxy.metric("ringmesh_upstream_unavailable_total", &[("cluster", "fo")]), 0.0);
    }

    fn all_endpoints_down_closes_the_client_promptly(engine) {
        let (a, b) = (tcp::closed_port(), tcp::closed_port());
        let proxy = Proxy::start(engine, &one_listener("down", &[a, b], "", ""));
        let mut c = tcp::connect(proxy.listener("down"));
        let took = tcp::wait_closed(&mut c, Duration::from_secs(5)).expect("client must be closed");
        assert!(took < Duration::from_secs(2), "closing took {took:?}");
        assert_eq!(proxy.wait_metric("ringmesh_upstream_unavailable_total", &[("cluster", "down")], Duration::from_secs(5), |v| v >= 1.0), 1.0);
        assert_eq!(proxy.metric("ringmesh_upstream_connect_failures_total", &[("cluster", "down")]), 2.0);
        let closed = [("listener", "down"), ("reason", "upstream_unavailable")];
        assert_eq!(proxy.metric("ringmesh_downstream_connections_closed_total", &closed), 1.0);
    }

    fn connect_timeout_moves_on_and_is_counted(engine) {
        let hole = Blackhole::start();
        let echo = EchoServer::start();
        let proxy = Proxy::start(engine, &one_listener("ct", &[hole.addr, echo.addr], "", "connect_timeout: 200ms"));
        let addr = proxy.listener("ct");
        let started = Instant::now();
        for _ in 0..2 {
            let mut c = tcp::connect(addr);
            assert_eq!(tcp::echo_roundtrip(&mut c, b"ping").unwrap(), b"ping");
        }
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert_eq!(proxy.metric("ringmesh_upstream_connect_timeouts_total", &[("cluster", "ct")]), 1.0);
    }

    fn max_connections_closes_the_excess_at_once(engine) {
        let echo = EchoServer::start();
        let proxy = Proxy::start(engine, &one_listener("cap", &[echo.addr], "max_connections: 2", ""));
        let addr = proxy.listener("cap");
        let mut a = tcp::connect(addr);
        let mut b = tcp::connect(addr);
        assert_eq!(tcp::echo_roundtrip(&mut a, b"a").unwrap(), b"a");
        assert_eq!(tcp::echo_roundtrip(&mut b, b"b").unwrap(), b"b");
        let mut c = tcp::connect(addr);
        assert!(tcp::wait_closed(&mut c, Duration::from_secs(2)).is_some(), "third connection must be closed");
        let rejected = [("listener", "cap"), ("reason", "max_connections")];
        assert_eq!(proxy.metric("ringmesh_downstream_connections_rejected_total", &rejected), 1.0);
        // Capacity comes back when a connection closes.
        drop(a);
        proxy.wait_metric("ringmesh_downstream_connections_active", &[("listener", "cap")], Duration::from_secs(5), |v| v <= 1.0);
        let mut d = tcp::connect(addr);
        assert_eq!(tcp::echo_roundtrip(&mut d, b"d").unwrap(), b"d");
        assert_eq!(tcp::echo_roundtrip(&mut b, b"b").unwrap(), b"b");
    }

    fn forwards_over_ipv6(engine) {
        let echo = EchoServer::start_on("[::1]:0");
        let config = format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: v6, listen: \"[::1]:0\", cluster: v6 }}\nclusters:\n  - {{ name: v6, endpoints: [\"{}\"] }}\n",
            echo.addr
        );
        let proxy = Proxy::start(engine, &config);
        let addr: SocketAddr = proxy.listener("v6");
        assert!(addr.is_ipv6());
        let mut c = tcp::connect(addr);
        assert_eq!(tcp::echo_roundtrip(&mut c, b"over v6").unwrap(), b"over v6");
    }

    fn resolves_endpoint_host_names(engine) {
        let echo = EchoServer::start();
        let config = format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: dns, listen: 127.0.0.1:0, cluster: dns }}\nclusters:\n  - {{ name: dns, endpoints: [\"localhost:{}\"] }}\n",
            echo.addr.port()
        );
        let proxy = Proxy::start(engine, &config);
        let mut c = tcp::connect(proxy.listener("dns"));
        assert_eq!(tcp::echo_roundtrip(&mut c, b"named").unwrap(), b"named");
        let clusters = proxy.get("/clusters").json();
        assert_eq!(clusters["clusters"][0]["endpoints"][0]["hostname"], "localhost");
    }
}
