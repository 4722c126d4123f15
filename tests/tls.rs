//! TLS termination, mTLS with SPIFFE identities, and authorization, over
//! real sockets with a rustls client and certificates from `ringmesh cert`.

mod helpers;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};
use helpers::tls::{self, Pki, Versions};

fn tls_proxy(engine: &str, pki: &Pki, upstream: SocketAddr, mutual: bool, authz: &str) -> Proxy {
    let mut extra = pki.listener_tls(mutual);
    if !authz.is_empty() {
        extra.push('\n');
        extra.push_str(authz);
    }
    Proxy::start(engine, &one_listener("tls", &[upstream], &extra, ""))
}

fn handshake_fails(c: &mut tls::Client) -> String {
    match tls::roundtrip(c, b"x") {
        Ok(_) => panic!("the handshake should have failed"),
        Err(e) => e.to_string(),
    }
}

on_both_engines! {
    fn terminates_tls_and_forwards_16_mib_each_way_byte_exact(engine) {
        let pki = Pki::new();
        let (upstream, results) = tcp::exchange_server(7, 16 << 20);
        let proxy = tls_proxy(engine, &pki, upstream, false, "");
        let config = tls::client_config(&pki.path("ca.pem"), None, Versions::Both);
        let mut client = tls::connect(proxy.listener("tls"), config);
        // One TLS session carries both directions: send on this thread
        // while a reader drains the other way, then close_notify.
        let sent = {
            let mut payload = tcp::Payload::new(3, 16 << 20);
            let mut buf = vec![0u8; 64 * 1024];
            let mut hasher_input = Vec::new();
            let mut received = Vec::new();
            let mut rbuf = vec![0u8; 256 * 1024];
            client.sock.set_nonblocking(false).unwrap();
            loop {
                let n = payload.next_chunk(&mut buf);
                if n == 0 {
                    break;
                }
                hasher_input.extend_from_slice(&buf[..n]);
                client.write_all(&buf[..n]).unwrap();
                // Drain what has arrived so neither side blocks on a full window.
                client.sock.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                while let Ok(n) = client.read(&mut rbuf) {
                    if n == 0 { break; }
                    received.extend_from_slice(&rbuf[..n]);
                }
            }
            client.conn.send_close_notify();
            client.flush().unwrap();
            client.sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            loop {
                match client.read(&mut rbuf) {
                    Ok(0) => break,
                    Ok(n) => received.extend_from_slice(&rbuf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                    Err(e) => panic!("read: {e}"),
                }
            }
            (sha(&hasher_input), received.len(), sha(&received))
        };
        let (server_got, server_got_hash, server_sent_hash) = results.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(server_got, 16 << 20);
        assert_eq!(server_got_hash, sent.0, "client -> upstream bytes differ");
        assert_eq!(sent.1, 16 << 20);
        assert_eq!(sent.2, server_sent_hash, "upstream -> client bytes differ");
    }

    fn mutual_tls_admits_a_valid_client_and_logs_its_identity(engine) {
        let pki = Pki::new();
        pki.issue("product", &["--spiffe", "spiffe://mesh.local/ns/shop/sa/product"]);
        let echo = EchoServer::start();
        let proxy = tls_proxy(engine, &pki, echo.addr, true, "");
        let config = tls::client_config(&pki.path("ca.pem"), Some(&pki.path("product")), Versions::Both);
        let mut c = tls::connect(proxy.listener("tls"), config);
        assert_eq!(tls::roundtrip(&mut c, b"hello mesh").unwrap(), b"hello mesh");
        drop(c);
        let line = proxy.access_log_line();
        assert_eq!(line["identity"], "spiffe://mesh.local/ns/shop/sa/product");
        assert_eq!(line["tls"], "TLSv1.3");
        assert_eq!(line["sni"], "localhost");
    }
}

fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

#[test]
fn client_certificates_are_required_and_verified() {
    let pki = Pki::new();
    let other = Pki::new();
    other.issue(
        "stranger",
        &["--spiffe", "spiffe://mesh.local/ns/shop/sa/stranger"],
    );
    pki.issue(
        "expired",
        &[
            "--spiffe",
            "spiffe://mesh.local/ns/shop/sa/a",
            "--valid-from-days",
            "-10",
            "--days",
            "5",
        ],
    );
    pki.issue(
        "future",
        &[
            "--spiffe",
            "spiffe://mesh.local/ns/shop/sa/a",
            "--valid-from-days",
            "5",
        ],
    );
    let echo = EchoServer::start();
    let proxy = tls_proxy("uring", &pki, echo.addr, true, "");
    let addr = proxy.listener("tls");
    let ca = pki.path("ca.pem");
    for (name, client, expect) in [
        ("no certificate", None, "CertificateRequired"),
        ("unknown CA", Some(other.path("stranger")), "UnknownCA"),
        ("expired", Some(pki.path("expired")), "CertificateExpired"),
        (
            "not yet valid",
            Some(pki.path("future")),
            "CertificateExpired",
        ),
    ] {
        let mut c = tls::connect(
            addr,
            tls::client_config(&ca, client.as_deref(), Versions::Both),
        );
        let err = handshake_fails(&mut c);
        assert!(
            err.contains(expect) || err.contains("alert"),
            "{name}: {err}"
        );
    }
    assert_eq!(
        echo.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing may reach the upstream"
    );
    let closed = [("listener", "tls"), ("reason", "tls_error")];
    assert_eq!(
        proxy.wait_metric(
            "ringmesh_downstream_connections_closed_total",
            &closed,
            Duration::from_secs(5),
            |v| v >= 4.0
        ),
        4.0
    );
}

#[test]
fn authorization_allows_and_denies_by_spiffe_pattern() {
    let pki = Pki::new();
    pki.issue(
        "product",
        &["--spiffe", "spiffe://mesh.local/ns/shop/sa/product"],
    );
    pki.issue(
        "legacy",
        &["--spiffe", "spiffe://mesh.local/ns/shop/sa/legacy"],
    );
    pki.issue(
        "outsider",
        &["--spiffe", "spiffe://mesh.local/ns/other/sa/product"],
    );
    pki.issue("dns-only", &["--dns", "client.local"]);
    let echo = EchoServer::start();
    let authz = "authz: { allow: [\"spiffe://mesh.local/ns/shop/sa/*\"], deny: [\"spiffe://mesh.local/ns/shop/sa/legacy\"] }";
    let proxy = tls_proxy("epoll", &pki, echo.addr, true, authz);
    let addr = proxy.listener("tls");
    let ca = pki.path("ca.pem");
    let mut ok = tls::connect(
        addr,
        tls::client_config(&ca, Some(&pki.path("product")), Versions::Both),
    );
    assert_eq!(tls::roundtrip(&mut ok, b"allowed").unwrap(), b"allowed");
    for denied in ["legacy", "outsider", "dns-only"] {
        let mut c = tls::connect(
            addr,
            tls::client_config(&ca, Some(&pki.path(denied)), Versions::Both),
        );
        let err = handshake_fails(&mut c);
        assert!(err.contains("AccessDenied"), "{denied}: {err}");
    }
    assert_eq!(
        proxy.metric("ringmesh_authz_denied_total", &[("listener", "tls")]),
        3.0
    );
    assert_eq!(
        echo.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the allowed client reaches the upstream"
    );
}

#[test]
fn tls_1_2_only_and_1_3_only_clients_both_connect() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let proxy = tls_proxy("uring", &pki, echo.addr, false, "");
    for (v, name) in [(Versions::Only12, "TLSv1.2"), (Versions::Only13, "TLSv1.3")] {
        let mut c = tls::connect(
            proxy.listener("tls"),
            tls::client_config(&pki.path("ca.pem"), None, v),
        );
        assert_eq!(
            tls::roundtrip(&mut c, name.as_bytes()).unwrap(),
            name.as_bytes()
        );
        assert_eq!(
            c.conn.protocol_version().map(|p| format!("{p:?}")),
            Some(name.replace('.', "_"))
        );
    }
}

#[test]
fn a_client_that_never_finishes_the_handshake_is_closed() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let extra = pki
        .listener_tls(false)
        .replace(" }", ", handshake_timeout: 300ms }");
    let proxy = Proxy::start("uring", &one_listener("tls", &[echo.addr], &extra, ""));
    let mut raw = tcp::connect(proxy.listener("tls"));
    raw.write_all(b"\x16\x03\x01").unwrap(); // a record header, then nothing
    let took = tcp::wait_closed(&mut raw, Duration::from_secs(5)).expect("must be closed");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    thread::sleep(Duration::from_millis(50));
    let closed = [("listener", "tls"), ("reason", "tls_error")];
    assert_eq!(
        proxy.metric("ringmesh_downstream_connections_closed_total", &closed),
        1.0
    );
}

#[test]
fn bad_tls_config_is_reported_with_positions() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let bad = one_listener(
        "tls",
        &[echo.addr],
        &format!(
            "tls: {{ cert: \"{}\", key: /nonexistent.key }}\nauthz: {{ allow: [\"not-spiffe\"] }}",
            pki.file("server.pem")
        ),
        "",
    );
    let proxy = Proxy::start("uring", &one_listener("plain", &[echo.addr], "", ""));
    let r = proxy.put_config(&bad);
    assert_eq!(r.status, 400, "{}", r.body);
    let paths = r.error_paths();
    assert!(
        paths.contains(&"listeners[0].authz.allow[0]".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"listeners[0].authz".to_owned()),
        "authz without client_ca: {paths:?}"
    );
    let body = r.body;
    assert!(body.contains("not a SPIFFE ID pattern"), "{body}");
}

/// Proxy A's config: a plain listener whose cluster originates TLS to `b`.
fn sidecar_a(b: SocketAddr, tls: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: out, listen: 127.0.0.1:0, cluster: b }}\nclusters:\n  - name: b\n    endpoints: [\"{b}\"]\n    connect_attempts: 1\n    tls: {tls}\n"
    )
}

#[test]
fn sidecar_to_sidecar_mtls_carries_the_callers_identity() {
    let pki = Pki::new();
    pki.issue(
        "b",
        &[
            "--dns",
            "localhost",
            "--spiffe",
            "spiffe://mesh.local/ns/shop/sa/b",
        ],
    );
    pki.issue("a", &["--spiffe", "spiffe://mesh.local/ns/shop/sa/a"]);
    let echo = EchoServer::start();
    let b_tls = format!(
        "tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\" }}\nauthz: {{ allow: [\"spiffe://mesh.local/ns/shop/sa/a\"] }}",
        pki.file("b.pem"),
        pki.file("b.key"),
        pki.file("ca.pem")
    );
    let b = Proxy::start("uring", &one_listener("in", &[echo.addr], &b_tls, ""));
    let a_tls = format!(
        "{{ ca: \"{}\", san: \"spiffe://mesh.local/ns/shop/sa/b\", cert: \"{}\", key: \"{}\" }}",
        pki.file("ca.pem"),
        pki.file("a.pem"),
        pki.file("a.key")
    );
    let a = Proxy::start("epoll", &sidecar_a(b.listener("in"), &a_tls));
    let mut c = tcp::connect(a.listener("out"));
    assert_eq!(
        tcp::echo_roundtrip(&mut c, b"through two sidecars").unwrap(),
        b"through two sidecars"
    );
    drop(c);
    let line = b.access_log_line();
    assert_eq!(line["identity"], "spiffe://mesh.local/ns/shop/sa/a");
    assert_eq!(
        line["sni"], "-",
        "a SPIFFE san sends no SNI unless configured"
    );

    // DNS SAN mode: verify `localhost` and send it as SNI.
    let dns_tls = a_tls.replace("spiffe://mesh.local/ns/shop/sa/b", "localhost");
    let a2 = Proxy::start("uring", &sidecar_a(b.listener("in"), &dns_tls));
    let mut c = tcp::connect(a2.listener("out"));
    assert_eq!(tcp::echo_roundtrip(&mut c, b"by name").unwrap(), b"by name");
}

#[test]
fn upstream_identity_is_verified() {
    let pki = Pki::new();
    let other = Pki::new();
    pki.issue(
        "b",
        &[
            "--dns",
            "localhost",
            "--spiffe",
            "spiffe://mesh.local/ns/shop/sa/b",
        ],
    );
    let echo = EchoServer::start();
    let b_tls = format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}",
        pki.file("b.pem"),
        pki.file("b.key")
    );
    let b = Proxy::start("uring", &one_listener("in", &[echo.addr], &b_tls, ""));
    for (case, tls) in [
        (
            "wrong SPIFFE ID",
            format!(
                "{{ ca: \"{}\", san: \"spiffe://mesh.local/ns/shop/sa/impostor\" }}",
                pki.file("ca.pem")
            ),
        ),
        (
            "wrong DNS name",
            format!("{{ ca: \"{}\", san: \"db.internal\" }}", pki.file("ca.pem")),
        ),
        (
            "unknown CA",
            format!("{{ ca: \"{}\", san: \"localhost\" }}", other.file("ca.pem")),
        ),
    ] {
        let a = Proxy::start("uring", &sidecar_a(b.listener("in"), &tls));
        let mut c = tcp::connect(a.listener("out"));
        assert!(
            tcp::wait_closed(&mut c, Duration::from_secs(5)).is_some(),
            "{case}: must be closed"
        );
        assert_eq!(
            a.wait_metric(
                "ringmesh_upstream_tls_failures_total",
                &[("cluster", "b")],
                Duration::from_secs(5),
                |v| v >= 1.0
            ),
            1.0,
            "{case}"
        );
        assert_eq!(
            a.metric("ringmesh_upstream_unavailable_total", &[("cluster", "b")]),
            1.0,
            "{case}"
        );
    }
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The DER of the first certificate in a PEM file.
fn leaf_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn served_leaf(addr: SocketAddr, pki: &Pki) -> Vec<u8> {
    let mut c = tls::connect(
        addr,
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    tls::roundtrip(&mut c, b"which cert?").unwrap();
    c.conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn certificates_rotate_without_restart_and_broken_files_are_refused() {
    let pki = Pki::new();
    pki.issue(
        "next",
        &[
            "--dns",
            "localhost",
            "--spiffe",
            "spiffe://mesh.local/ns/edge/sa/gateway",
        ],
    );
    let echo = EchoServer::start();
    let config = one_listener("tls", &[echo.addr], &pki.listener_tls(false), "");
    let proxy = Proxy::start_with(
        &config,
        &[
            "--io-engine",
            "uring",
            "--workers",
            "2",
            "--cert-watch-interval",
            "100ms",
        ],
    )
    .unwrap();
    let addr = proxy.listener("tls");
    let original = leaf_der(&pki.path("server.pem"));
    assert_eq!(served_leaf(addr, &pki), original);
    let expiry = proxy.metric(
        "ringmesh_certificate_expiry_seconds",
        &[("name", "listener/tls")],
    );
    assert!(
        (364.0 * 86400.0..=366.0 * 86400.0).contains(&expiry),
        "{expiry}"
    );
    let mut established = tls::connect(
        addr,
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    assert_eq!(
        tls::roundtrip(&mut established, b"before").unwrap(),
        b"before"
    );

    // Rotate the way secret managers do: write aside, then rename over.
    for ext in ["key", "pem"] {
        let tmp = pki.path(&format!("tmp.{ext}"));
        std::fs::copy(pki.path(&format!("next.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, pki.path(&format!("server.{ext}"))).unwrap();
    }
    assert!(
        proxy
            .wait_log(Duration::from_secs(10), |v| v["message"]
                == "certificates reloaded")
            .is_some(),
        "{}",
        proxy.log_text()
    );
    assert_eq!(
        served_leaf(addr, &pki),
        leaf_der(&pki.path("next.pem")),
        "new handshakes use the new certificate"
    );
    assert_eq!(
        tls::roundtrip(&mut established, b"after").unwrap(),
        b"after",
        "established sessions are untouched"
    );

    // A broken file is refused; the running certificate stays.
    std::fs::write(
        pki.path("server.pem"),
        b"-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    assert!(
        proxy
            .wait_log(Duration::from_secs(10), |v| v["message"]
                == "certificate files changed but cannot be used; the running ones are kept")
            .is_some(),
        "{}",
        proxy.log_text()
    );
    assert_eq!(served_leaf(addr, &pki), leaf_der(&pki.path("next.pem")));
    assert!(proxy.metric("ringmesh_config_reloads_total", &[("result", "rejected")]) >= 1.0);
}

#[test]
fn the_ktls_probe_is_reported_and_listeners_report_their_data_path() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let proxy = tls_proxy("uring", &pki, echo.addr, false, "");
    // Ask the kernel ourselves what the proxy should have found.
    let kernel_has_ktls = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _s = l.accept().unwrap();
        let name = b"tls";
        // SAFETY: a valid buffer and an open socket.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&c),
                libc::SOL_TCP,
                libc::TCP_ULP,
                name.as_ptr().cast(),
                3,
            ) == 0
        }
    };
    if !kernel_has_ktls {
        eprintln!(
            "NOTE: this kernel has no kTLS (CONFIG_TLS): only the userspace path can run here"
        );
    }
    assert_eq!(
        proxy.metric("ringmesh_ktls_available", &[]),
        if kernel_has_ktls { 1.0 } else { 0.0 }
    );
    let path = if kernel_has_ktls { "ktls" } else { "userspace" };
    assert_eq!(
        proxy.metric(
            "ringmesh_tls_data_path",
            &[("listener", "tls"), ("path", path)]
        ),
        1.0
    );
    let logged = proxy.wait_log(Duration::from_secs(1), |v| {
        v["message"].as_str().is_some_and(|m| m.starts_with("kTLS"))
    });
    assert!(logged.is_some(), "the probe's outcome must be logged");
    // And that path carries data.
    let mut c = tls::connect(
        proxy.listener("tls"),
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    assert_eq!(tls::roundtrip(&mut c, b"userspace").unwrap(), b"userspace");
    assert_eq!(
        proxy.wait_metric(
            "ringmesh_tls_sessions_total",
            &[("listener", "tls"), ("path", path)],
            Duration::from_secs(5),
            |v| v >= 1.0
        ),
        1.0
    );
}

/// A backend that reads `n` bytes, reports them, and answers `tag`.
fn capture(tag: &'static str, n: usize) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = tcp::serve_each(move |mut s| {
        let mut got = vec![0u8; n];
        if s.read_exact(&mut got).is_ok() {
            let _ = tx.send(got);
            let _ = s.write_all(tag.as_bytes());
        }
    });
    (addr, rx)
}

fn hello_bytes(name: &str) -> Vec<u8> {
    let config = tls::client_config(&Pki::new().path("ca.pem"), None, Versions::Both);
    let mut conn = rustls::ClientConnection::new(
        config,
        rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn sni_routes_pass_tls_through_untouched() {
    let a_hello = hello_bytes("api.a.example");
    let b_hello = hello_bytes("b.example");
    let ip_hello = hello_bytes("127.0.0.1");
    let (a, a_rx) = capture("A", a_hello.len());
    let (b, b_rx) = capture("B", b_hello.len());
    let (dflt, dflt_rx) = capture("D", 16);
    let config = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: edge\n    listen: 127.0.0.1:0\n    cluster: dflt\n    sni_routes:\n      - {{ server_names: [\"*.a.example\"], cluster: a }}\n      - {{ server_names: [\"b.example\", \"c.example\"], cluster: b }}\nclusters:\n  - {{ name: a, endpoints: [\"{a}\"] }}\n  - {{ name: b, endpoints: [\"{b}\"] }}\n  - {{ name: dflt, endpoints: [\"{dflt}\"] }}\n"
    );
    let proxy = Proxy::start("uring", &config);
    let edge = proxy.listener("edge");
    for (hello, rx, tag) in [(&a_hello, &a_rx, "A"), (&b_hello, &b_rx, "B")] {
        let mut c = tcp::connect(edge);
        c.write_all(hello).unwrap();
        let mut answer = [0u8; 1];
        c.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, tag.as_bytes());
        assert_eq!(
            &rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            hello,
            "the ClientHello must arrive unchanged"
        );
    }
    // No SNI, and not TLS at all: the listener's own cluster.
    for first in [&ip_hello[..], b"GET / HTTP/1.1\r\n".as_slice()] {
        let mut c = tcp::connect(edge);
        c.write_all(first).unwrap();
        let mut answer = [0u8; 1];
        c.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"D");
        assert_eq!(
            dflt_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            &first[..16]
        );
    }
    // A ClientHello split across segments is still routed.
    let mut c = tcp::connect(edge);
    c.write_all(&b_hello[..20]).unwrap();
    thread::sleep(Duration::from_millis(30));
    c.write_all(&b_hello[20..]).unwrap();
    let mut answer = [0u8; 1];
    c.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"B");
}

#[test]
fn a_whole_tls_session_passes_through_to_a_terminating_proxy() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let terminating = tls_proxy("uring", &pki, echo.addr, false, "");
    let config = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: edge\n    listen: 127.0.0.1:0\n    cluster: nowhere\n    sni_routes: [ {{ server_names: [localhost], cluster: inner }} ]\nclusters:\n  - {{ name: inner, endpoints: [\"{}\"] }}\n  - {{ name: nowhere, endpoints: [] }}\n",
        terminating.listener("tls")
    );
    let edge = Proxy::start("epoll", &config);
    let mut c = tls::connect(
        edge.listener("edge"),
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    assert_eq!(
        tls::roundtrip(&mut c, b"end to end").unwrap(),
        b"end to end"
    );
    drop(c);
    let line = edge.access_log_line();
    assert_eq!(line["cluster"], "inner");
    assert_eq!(line["tls"], "passthrough");
    assert_eq!(line["sni"], "localhost");
}

#[test]
fn certificates_are_selected_by_sni() {
    let pki = Pki::new();
    pki.issue("a", &["--dns", "a.example"]);
    pki.issue("b", &["--dns", "*.b.example"]);
    let echo = EchoServer::start();
    let tls_block = format!(
        "tls: {{ cert: \"{}\", key: \"{}\", certificates: [ {{ cert: \"{}\", key: \"{}\" }}, {{ cert: \"{}\", key: \"{}\" }} ] }}",
        pki.file("server.pem"),
        pki.file("server.key"),
        pki.file("a.pem"),
        pki.file("a.key"),
        pki.file("b.pem"),
        pki.file("b.key")
    );
    let proxy = Proxy::start(
        "uring",
        &one_listener("multi", &[echo.addr], &tls_block, ""),
    );
    let addr = proxy.listener("multi");
    let config = tls::client_config(&pki.path("ca.pem"), None, Versions::Both);
    for (sni, expected) in [
        ("a.example", "a"),
        ("x.b.example", "b"),
        ("localhost", "server"),
    ] {
        let tcp = tcp::connect(addr);
        let conn = rustls::ClientConnection::new(
            config.clone(),
            rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap(),
        )
        .unwrap();
        let mut c = rustls::StreamOwned::new(conn, tcp);
        assert_eq!(
            tls::roundtrip(&mut c, sni.as_bytes()).unwrap(),
            sni.as_bytes(),
            "{sni}"
        );
        let served = c.conn.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(
            served,
            leaf_der(&pki.path(&format!("{expected}.pem"))),
            "SNI {sni} must get {expected}.pem"
        );
    }
}

#[test]
fn a_bulk_upload_survives_rustls_backpressure() {
    // A slow upstream makes the proxy wait on its writes while the client's
    // records pile up in the socket, so one read carries far more than the
    // 16 KiB of plaintext rustls accepts at once; the rest must be kept.
    let (tx, rx) = std::sync::mpsc::channel();
    let slow_sink = tcp::serve_each(move |mut s| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k;
                    h.update(&buf[..k]);
                    thread::sleep(Duration::from_micros(500));
                }
            }
        }
        let digest: [u8; 32] = h.finalize().into();
        tx.send((n, digest)).unwrap();
    });
    let pki = Pki::new();
    let proxy = tls_proxy("uring", &pki, slow_sink, false, "");
    let mut c = tls::connect(
        proxy.listener("tls"),
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    let sent = tcp::send_payload(&mut c, 5, 32 << 20).unwrap();
    c.conn.send_close_notify();
    c.flush().unwrap();
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let (n, got) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(n, 32 << 20, "bytes lost");
    assert_eq!(got, sent, "bytes differ");
}
