//! PROXY protocol (HAProxy's v1 and v2) on real sockets.
//!
//! Receiving: a listener with `proxy_protocol: required` takes the client's
//! address from the header HAProxy (`send-proxy`, `send-proxy-v2`) puts in
//! front of each connection: the access log's `peer` and HTTP's
//! `x-forwarded-for` name the client, not HAProxy. Malformed, truncated,
//! oversized, missing and late headers close the connection and are
//! counted (`reason="proxy_protocol"`); `optional` serves clients without
//! one. Sending: a cluster with `send_proxy_protocol: v1|v2` opens each
//! upstream connection with a header HAProxy (`accept-proxy`) reads: its
//! `src` is the original client, through a chain of HAProxy -> ringmesh ->
//! HAProxy as well. HAProxy comes from apt (`.ci/run` installs it); without
//! it those tests say SKIPPED.

mod helpers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helpers::http::{Reply, Upstream};
use helpers::proxy::Proxy;
use helpers::tcp::EchoServer;

/// The test's client address: not the one HAProxy connects from
/// (127.0.0.1), so whoever reports an address shows whose it is.
const CLIENT_IP: &str = "127.0.0.2";

/// Connects to `addr` from [`CLIENT_IP`]; returns the stream and its
/// local address.
fn connect_from_client_ip(addr: SocketAddr) -> (TcpStream, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(CLIENT_IP.parse().unwrap(), 0).into())
        .unwrap();
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap();
    (s, local)
}

/// A running HAProxy, killed on drop.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_binary() -> Option<&'static str> {
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Starts HAProxy with `frontends` (the config after `defaults`) and waits
/// until `ready` accepts; `None` (test SKIPPED) when it is not installed.
fn haproxy(frontends: &str, ready: SocketAddr) -> Option<Haproxy> {
    let Some(bin) = haproxy_binary() else {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 1000\ndefaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n{frontends}"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let h = Haproxy { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(ready).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(h)
}

/// HAProxy reading PROXY headers (`bind ... accept-proxy`, HTTP mode) in
/// front of `app`, with `rules` (`http-request ...` lines); its address.
/// Start it before any ringmesh that connects to it: its port, picked free
/// and then bound by HAProxy, cannot also go to a ringmesh port-0 listener.
fn accept_proxy(app: SocketAddr, rules: &str) -> Option<(Haproxy, SocketAddr)> {
    let addr = free_port();
    // Ready once it listens (the probe sends no header: HAProxy closes it,
    // as it should).
    let h = haproxy(
        &format!(
            "listen app\n  mode http\n  bind {addr} accept-proxy\n  {rules}\n  server app {app}\n"
        ),
        addr,
    )?;
    Some((h, addr))
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 request on `s` with `Connection: close`; the whole response.
fn http_get(s: &mut TcpStream, path: &str) -> String {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn access_line(proxy: &Proxy, listener: &str) -> serde_json::Value {
    proxy
        .wait_log(Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["listener"] == listener
        })
        .unwrap_or_else(|| panic!("no access-log line for {listener}:\n{}", proxy.log_text()))
}

#[test]
fn haproxy_send_proxy_v1_and_v2_name_the_client_in_logs_and_x_forwarded_for() {
    let echo = EchoServer::start();
    let web = Upstream::start(|r| {
        Reply::ok(format!(
            "xff={}",
            r.header("x-forwarded-for").unwrap_or("-")
        ))
    });
    for version in ["send-proxy", "send-proxy-v2"] {
        let proxy = Proxy::start_with(
            &format!(
                "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: tcp\n    listen: 127.0.0.1:0\n    cluster: echo\n    proxy_protocol: required\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    cluster: web\n    proxy_protocol: required\nclusters:\n  - name: echo\n    endpoints: [\"{}\"]\n  - name: web\n    endpoints: [\"{}\"]\n",
                echo.addr, web.addr
            ),
            &["--workers", "1"],
        )
        .unwrap();
        let (tcp_front, http_front) = (free_port(), free_port());
        let Some(_haproxy) = haproxy(
            &format!(
                "listen tcp\n  mode tcp\n  bind {tcp_front}\n  server rm {} {version}\nlisten web\n  mode tcp\n  bind {http_front}\n  server rm {} {version}\n",
                proxy.listener("tcp"),
                proxy.listener("web")
            ),
            http_front,
        ) else {
            return;
        };
        // TCP: the bytes pass untouched (the header is consumed), and the
        // log names the client.
        let (mut s, client) = connect_from_client_ip(tcp_front);
        s.write_all(b"through haproxy").unwrap();
        let mut back = [0u8; 15];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"through haproxy", "{version}");
        drop(s);
        let line = access_line(&proxy, "tcp");
        assert_eq!(line["peer"], client.to_string(), "{version}: {line}");
        assert!(
            line["proxied_by"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{version}: {line}"
        );
        // HTTP: x-forwarded-for carries the client, not HAProxy.
        let (mut s, _) = connect_from_client_ip(http_front);
        let response = http_get(&mut s, "/xff");
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with(&format!("xff={CLIENT_IP}")),
            "{version}: {response}"
        );
    }
}

#[test]
fn haproxy_accept_proxy_reads_the_headers_ringmesh_sends() {
    let app = Upstream::start(|r| {
        Reply::ok(format!(
            "src={} dst={}",
            r.header("x-src").unwrap_or("-"),
            r.header("x-dst").unwrap_or("-")
        ))
    });
    for version in ["v1", "v2"] {
        let Some((_haproxy, haproxy_in)) = accept_proxy(
            app.addr,
            "http-request set-header X-Src %[src]:%[src_port]\n  http-request set-header X-Dst %[dst]:%[dst_port]",
        ) else {
            return;
        };
        let proxy = Proxy::start_with(
            &format!(
                "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: tcp\n    listen: 127.0.0.1:0\n    cluster: hap\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    cluster: hap\nclusters:\n  - name: hap\n    endpoints: [\"{haproxy_in}\"]\n    send_proxy_protocol: {version}\n"
            ),
            &["--workers", "1"],
        )
        .unwrap();
        // Through a TCP listener: HAProxy sees the client and the address
        // it connected to.
        let tcp = proxy.listener("tcp");
        let (mut s, client) = connect_from_client_ip(tcp);
        let response = http_get(&mut s, "/");
        assert!(
            response.ends_with(&format!("src={client} dst={tcp}")),
            "{version}: {response}"
        );
        // Through an HTTP listener: every request's connection names its
        // client (not pooled across clients).
        for _ in 0..3 {
            let web = proxy.listener("web");
            let (mut s, client) = connect_from_client_ip(web);
            let response = http_get(&mut s, "/");
            assert!(
                response.ends_with(&format!("src={client} dst={web}")),
                "{version}: {response}"
            );
        }
    }
}

#[test]
fn the_client_survives_a_chain_of_haproxy_ringmesh_haproxy() {
    let app = Upstream::start(|r| Reply::ok(format!("src={}", r.header("x-src").unwrap_or("-"))));
    // The back HAProxy, ringmesh, then the front one (ringmesh's port is
    // taken by then).
    let Some((_back, back)) = accept_proxy(app.addr, "http-request set-header X-Src %[src]") else {
        return;
    };
    let proxy = Proxy::start_with(
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: middle\n    listen: 127.0.0.1:0\n    cluster: back\n    proxy_protocol: required\nclusters:\n  - name: back\n    endpoints: [\"{back}\"]\n    send_proxy_protocol: v2\n"
        ),
        &["--workers", "1"],
    )
    .unwrap();
    let front = free_port();
    let Some(_front) = haproxy(
        &format!(
            "listen front\n  mode tcp\n  bind {front}\n  server rm {} send-proxy-v2\n",
            proxy.listener("middle")
        ),
        front,
    ) else {
        return;
    };
    let (mut s, _) = connect_from_client_ip(front);
    let response = http_get(&mut s, "/");
    assert!(
        response.ends_with(&format!("src={CLIENT_IP}")),
        "{response}"
    );
}

/// A listener taking PROXY headers directly from the test, with a short
/// header timeout.
fn receiving_proxy(echo: SocketAddr, mode: &str) -> Proxy {
    Proxy::start_with(
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: pp\n    listen: 127.0.0.1:0\n    cluster: echo\n    proxy_protocol: {mode}\n    proxy_protocol_timeout: 400ms\nclusters:\n  - name: echo\n    endpoints: [\"{echo}\"]\n"
        ),
        &["--workers", "1"],
    )
    .unwrap()
}

/// Sends `bytes`, half-closes when `finish`, and reports whether the
/// connection was closed by the proxy without a byte echoed, and when.
fn closed_without_echo(addr: SocketAddr, bytes: &[u8], finish: bool) -> Option<Duration> {
    let mut s = helpers::tcp::connect(addr);
    let started = Instant::now();
    s.write_all(bytes).unwrap();
    if finish {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => Some(started.elapsed()),
        Ok(_) => None,
    }
}

fn v2_header(source: &str, destination: &str, extra_len: u16) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) =
        (source.parse().unwrap(), destination.parse().unwrap());
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&(12 + extra_len).to_be_bytes());
    for a in [src, dst] {
        if let SocketAddr::V4(a) = a {
            h.extend_from_slice(&a.ip().octets());
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[test]
fn valid_headers_are_consumed_and_name_the_client() {
    let echo = EchoServer::start();
    let proxy = receiving_proxy(echo.addr, "required");
    let addr = proxy.listener("pp");
    for (header, client) in [
        (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\n".to_vec(),
            "192.0.2.7:4242",
        ),
        (
            v2_header("203.0.113.9:5151", "198.51.100.1:443", 0),
            "203.0.113.9:5151",
        ),
    ] {
        let mut s = helpers::tcp::connect(addr);
        s.write_all(&header).unwrap();
        s.write_all(b"payload").unwrap();
        let mut back = [0u8; 7];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"payload", "only the client's bytes go upstream");
        drop(s);
        proxy
            .wait_log(Duration::from_secs(10), |v| {
                v["message"] == "connection closed" && v["peer"] == client
            })
            .unwrap_or_else(|| panic!("no line with peer {client}:\n{}", proxy.log_text()));
    }
}

#[test]
fn malformed_truncated_oversized_missing_and_late_headers_close_and_are_counted() {
    let echo = EchoServer::start();
    let proxy = receiving_proxy(echo.addr, "required");
    let addr = proxy.listener("pp");
    let mut oversized = v2_header("192.0.2.1:1", "192.0.2.2:2", 0);
    oversized[14..16].copy_from_slice(&5000u16.to_be_bytes());
    let mut bad_version = v2_header("192.0.2.1:1", "192.0.2.2:2", 0);
    bad_version[12] = 0x31;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "v1 port out of range",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\npayload".to_vec(),
            false,
        ),
        (
            "v1 bare LF",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 80\npayload".to_vec(),
            false,
        ),
        (
            "v1 family mismatch",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 80\r\n".to_vec(),
            false,
        ),
        (
            "v1 without CRLF in 107 bytes",
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
            false,
        ),
        (
            "v1 truncated then closed",
            b"PROXY TCP4 1.2.3.4".to_vec(),
            true,
        ),
        (
            "v2 truncated then closed",
            v2_header("192.0.2.1:1", "192.0.2.2:2", 0)[..20].to_vec(),
            true,
        ),
        ("v2 oversized", oversized, false),
        ("v2 version 3", bad_version, false),
        (
            "no header (HTTP)",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        ("no header (TLS)", vec![0x16, 0x03, 0x01, 0x00, 0x10], false),
    ];
    let n = cases.len() as f64;
    for (what, bytes, finish) in cases {
        let took = closed_without_echo(addr, &bytes, finish);
        let took = took.unwrap_or_else(|| panic!("{what}: bytes were forwarded"));
        assert!(
            took < Duration::from_secs(2),
            "{what}: closed after {took:?}"
        );
    }
    // Slow: nothing, or part of a header, until the timeout.
    for (what, bytes) in [
        ("silent", b"".to_vec()),
        ("slow v1", b"PROXY TCP4 ".to_vec()),
    ] {
        let took = closed_without_echo(addr, &bytes, false)
            .unwrap_or_else(|| panic!("{what}: bytes were forwarded"));
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(3),
            "{what}: closed after {took:?}, the timeout is 400ms"
        );
    }
    let labels = [("listener", "pp"), ("reason", "proxy_protocol")];
    let closed = proxy.wait_metric(
        "ringmesh_downstream_connections_closed_total",
        &labels,
        Duration::from_secs(10),
        |v| v >= n + 2.0,
    );
    assert_eq!(closed, n + 2.0, "every refused connection counted once");
    // Still serving well-formed clients.
    let mut s = helpers::tcp::connect(addr);
    s.write_all(b"PROXY UNKNOWN\r\nok").unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ok");
}

#[test]
fn optional_serves_clients_with_and_without_a_header() {
    let echo = EchoServer::start();
    let proxy = receiving_proxy(echo.addr, "optional");
    let addr = proxy.listener("pp");
    // No header: the TCP peer is the client.
    let mut s = helpers::tcp::connect(addr);
    let local = s.local_addr().unwrap();
    assert_eq!(
        helpers::tcp::echo_roundtrip(&mut s, b"plain").unwrap(),
        b"plain"
    );
    drop(s);
    proxy
        .wait_log(Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["peer"] == local.to_string()
        })
        .unwrap_or_else(|| panic!("{}", proxy.log_text()));
    // A server-speaks-first client that says nothing is served after the
    // timeout, not closed.
    let mut s = helpers::tcp::connect(addr);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        helpers::tcp::echo_roundtrip(&mut s, b"late").unwrap(),
        b"late"
    );
    // A header: used.
    let mut s = helpers::tcp::connect(addr);
    s.write_all(b"PROXY TCP6 2001:db8::1 2001:db8::2 7000 443\r\nv6")
        .unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).unwrap();
    drop(s);
    proxy
        .wait_log(Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["peer"] == "[2001:db8::1]:7000"
        })
        .unwrap_or_else(|| panic!("{}", proxy.log_text()));
}

#[test]
fn a_tls_listener_reads_the_header_before_the_handshake() {
    let echo = EchoServer::start();
    let pki = helpers::tls::Pki::new();
    let proxy = Proxy::start_with(
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: pp\n    listen: 127.0.0.1:0\n    cluster: echo\n    proxy_protocol: required\n    {}\nclusters:\n  - name: echo\n    endpoints: [\"{}\"]\n",
            pki.listener_tls(false),
            echo.addr
        ),
        &["--workers", "1"],
    )
    .unwrap();
    let addr = proxy.listener("pp");
    let mut raw = helpers::tcp::connect(addr);
    raw.write_all(b"PROXY TCP4 192.0.2.44 192.0.2.1 6000 443\r\n")
        .unwrap();
    let config =
        helpers::tls::client_config(&pki.path("ca.pem"), None, helpers::tls::Versions::Both);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, raw);
    tls.write_all(b"over tls").unwrap();
    let mut back = [0u8; 8];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over tls");
    drop(tls);
    proxy
        .wait_log(Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["peer"] == "192.0.2.44:6000"
        })
        .unwrap_or_else(|| panic!("{}", proxy.log_text()));
}

/// Reads a v2 header from `s`; returns its TLVs as (type, value) pairs.
fn read_v2_tlvs(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).unwrap();
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "not a v2 header");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    let addresses = match fixed[13] >> 4 {
        1 => 12,
        2 => 36,
        _ => 0,
    };
    let mut tlvs = Vec::new();
    let mut rest = &payload[addresses..];
    while rest.len() >= 3 {
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        tlvs.push((rest[0], rest[3..3 + n].to_vec()));
        rest = &rest[3 + n..];
    }
    tlvs
}

#[test]
fn v2_headers_carry_alpn_authority_tls_version_and_the_spiffe_id() {
    let pki = helpers::tls::Pki::new();
    pki.issue("web", &["--spiffe", "spiffe://mesh.local/ns/shop/sa/web"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let capture = helpers::tcp::serve_each(move |mut s| {
        let tlvs = read_v2_tlvs(&mut s);
        let _ = tx.lock().unwrap().send(tlvs);
        let _ = s.write_all(b"ok");
    });
    let proxy = Proxy::start_with(
        &format!(
            "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: mtls\n    listen: 127.0.0.1:0\n    cluster: capture\n    tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\", alpn: [demo/1] }}\nclusters:\n  - name: capture\n    endpoints: [\"{capture}\"]\n    send_proxy_protocol: v2\n",
            pki.file("server.pem"),
            pki.file("server.key"),
            pki.file("ca.pem"),
        ),
        &["--workers", "1"],
    )
    .unwrap();
    let config = helpers::tls::client_config(
        &pki.path("ca.pem"),
        Some(&pki.path("web")),
        helpers::tls::Versions::Both,
    );
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"demo/1".to_vec()];
    let mut client = helpers::tls::connect(proxy.listener("mtls"), std::sync::Arc::new(config));
    client.write_all(b"x").unwrap();
    let mut back = [0u8; 2];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ok");
    let tlvs = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let get = |t: u8| {
        tlvs.iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no TLV {t:#04x} in {tlvs:?}"))
    };
    assert_eq!(get(0x01), b"demo/1", "PP2_TYPE_ALPN");
    assert_eq!(
        get(0x02),
        b"localhost",
        "PP2_TYPE_AUTHORITY (the client's SNI)"
    );
    assert_eq!(
        get(0xE0),
        b"spiffe://mesh.local/ns/shop/sa/web",
        "the client's SPIFFE ID"
    );
    let ssl = get(0x20);
    assert_eq!(ssl[0] & 0x01, 0x01, "PP2_CLIENT_SSL");
    // client (1 byte), verify (4 bytes, 0 = verified), then sub-TLVs.
    assert_eq!(
        &ssl[1..5],
        &[0, 0, 0, 0],
        "the client's certificate was verified"
    );
    let version = ssl[5..]
        .first()
        .filter(|t| **t == 0x21)
        .map(|_| {
            let n = u16::from_be_bytes([ssl[6], ssl[7]]) as usize;
            String::from_utf8_lossy(&ssl[8..8 + n]).into_owned()
        })
        .unwrap_or_else(|| panic!("no PP2_SUBTYPE_SSL_VERSION in {ssl:?}"));
    assert!(version.starts_with("TLS"), "{version}");
    assert_eq!(get(0x03).len(), 4, "PP2_TYPE_CRC32C");
}

#[test]
fn health_checks_open_with_a_header_and_pass_behind_accept_proxy() {
    let app = Upstream::start(|_| Reply::ok("healthy"));
    for version in ["v1", "v2"] {
        let Some((_haproxy, haproxy_in)) = accept_proxy(app.addr, "") else {
            return;
        };
        let proxy = Proxy::start_with(
            &format!(
                "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: tcp\n    listen: 127.0.0.1:0\n    cluster: hap\nclusters:\n  - name: hap\n    endpoints: [\"{haproxy_in}\"]\n    send_proxy_protocol: {version}\n    health_check: {{ type: http, path: /, interval: 50ms }}\n"
            ),
            &["--workers", "1"],
        )
        .unwrap();
        let labels = [("cluster", "hap"), ("result", "success")];
        let passed = proxy.wait_metric(
            "ringmesh_health_checks_total",
            &labels,
            Duration::from_secs(10),
            |v| v >= 5.0,
        );
        let failed = proxy.metric(
            "ringmesh_health_checks_total",
            &[("cluster", "hap"), ("result", "failure")],
        );
        assert!(
            passed >= 5.0 && failed == 0.0,
            "{version}: {passed} passed, {failed} failed"
        );
    }
}

#[test]
fn a_v2_header_larger_than_the_first_read_is_taken_whole() {
    let echo = EchoServer::start();
    let proxy = receiving_proxy(echo.addr, "required");
    // Addresses, then a 1,000-byte PP2_TYPE_NOOP TLV: 1,028 bytes in all.
    let mut header = v2_header("192.0.2.77:7777", "198.51.100.1:443", 1003);
    header.extend_from_slice(&[0x04, 0x03, 0xE8]);
    header.extend_from_slice(&[0u8; 1000]);
    let mut s = helpers::tcp::connect(proxy.listener("pp"));
    s.write_all(&header).unwrap();
    s.write_all(b"after").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after");
    drop(s);
    proxy
        .wait_log(Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["peer"] == "192.0.2.77:7777"
        })
        .unwrap_or_else(|| panic!("{}", proxy.log_text()));
}
