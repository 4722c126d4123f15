//! Kernel TLS offload, over real sockets. These tests need a kernel with
//! the TLS module: where the probe says kTLS is missing they pass after a
//! SKIPPED line (seen with `--nocapture`; `.ci/run` says it in its own
//! output), unless `RINGMESH_REQUIRE_KTLS=1` makes that a failure: the CI
//! tier `.ci/ktls-vm` boots a kernel with CONFIG_TLS and runs them there.
//! The userspace fallback is what every test in tls.rs exercises.

mod helpers;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};
use helpers::tls::{self, Pki, Versions};

/// Whether this kernel offers kTLS; prints the skip notice when not.
fn ktls_or_skip(test: &str) -> bool {
    if let ringmesh_core::tls::ktls::KtlsSupport::Unavailable(reason) =
        ringmesh_core::tls::ktls::probe()
    {
        assert!(
            std::env::var("RINGMESH_REQUIRE_KTLS").as_deref() != Ok("1"),
            "kTLS is required here but unavailable: {reason}"
        );
        eprintln!(
            "SKIPPED {test}: kTLS unavailable ({reason}); the userspace path is tested in tls.rs; .ci/ktls-vm runs this on a kernel with CONFIG_TLS"
        );
        return false;
    }
    true
}

fn proxy(engine: &str, pki: &Pki, upstream: std::net::SocketAddr, tls_extra: &str) -> Proxy {
    let tls = pki
        .listener_tls(false)
        .replace(" }", &format!("{tls_extra} }}"));
    Proxy::start(engine, &one_listener("tls", &[upstream], &tls, ""))
}

fn sessions(proxy: &Proxy, path: &str) -> f64 {
    proxy.metric(
        "ringmesh_tls_sessions_total",
        &[("listener", "tls"), ("path", path)],
    )
}

fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Sends `len` bytes and reads what comes back until close_notify, both
/// ways at once over one session; returns (sent hash, received bytes,
/// received hash).
fn exchange(client: &mut tls::Client, len: usize) -> ([u8; 32], usize, [u8; 32]) {
    let mut payload = tcp::Payload::new(5, len);
    let (mut buf, mut rbuf) = (vec![0u8; 64 * 1024], vec![0u8; 256 * 1024]);
    let (mut sent, mut received) = (Vec::new(), Vec::new());
    loop {
        let n = payload.next_chunk(&mut buf);
        if n == 0 {
            break;
        }
        sent.extend_from_slice(&buf[..n]);
        client.write_all(&buf[..n]).unwrap();
        client
            .sock
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        while let Ok(n) = client.read(&mut rbuf) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&rbuf[..n]);
        }
    }
    client.conn.send_close_notify();
    client.flush().unwrap();
    client
        .sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    loop {
        match client.read(&mut rbuf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&rbuf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            // A clean close ends with close_notify: UnexpectedEof would
            // mean the proxy closed without one.
            Err(e) => panic!("read: {e}"),
        }
    }
    (sha(&sent), received.len(), sha(&received))
}

on_both_engines! {
    fn sessions_are_handed_to_the_kernel_and_carry_4_mib_each_way_byte_exact(engine) {
        if !ktls_or_skip("sessions_are_handed_to_the_kernel") { return; }
        let pki = Pki::new();
        let len = 4 << 20;
        let (upstream, results) = tcp::exchange_server(7, len);
        let proxy = proxy(engine, &pki, upstream, "");
        let config = tls::client_config(&pki.path("ca.pem"), None, Versions::Both);
        let mut client = tls::connect(proxy.listener("tls"), config);
        let (sent_hash, got, got_hash) = exchange(&mut client, len);
        let (server_got, server_got_hash, server_sent_hash) =
            results.recv_timeout(Duration::from_secs(120)).unwrap();
        assert_eq!((server_got, server_got_hash), (len, sent_hash));
        assert_eq!((got, got_hash), (len, server_sent_hash));
        assert_eq!(proxy.wait_metric("ringmesh_tls_sessions_total", &[("listener", "tls"), ("path", "ktls")], Duration::from_secs(5), |v| v >= 1.0), 1.0);
        assert_eq!(sessions(&proxy, "userspace"), 0.0);
        let line = proxy.access_log_line();
        assert_eq!(line["tls_path"], "ktls");
        assert_eq!(line["reason"], "completed", "{line}");
        assert_eq!(proxy.metric("ringmesh_tls_data_path", &[("listener", "tls"), ("path", "ktls")]), 1.0);
    }
}

/// A client offering only `suites` (and the given versions).
fn client_with(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[rustls::CipherSuite],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| suites.contains(&s.suite()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[test]
fn tls12_and_every_kernel_cipher_are_offloaded() {
    if !ktls_or_skip("tls12_and_every_kernel_cipher_are_offloaded") {
        return;
    }
    use rustls::CipherSuite::*;
    let pki = Pki::new();
    let echo = EchoServer::start();
    let proxy = proxy("uring", &pki, echo.addr, "");
    let cases: [(&[&rustls::SupportedProtocolVersion], rustls::CipherSuite); 5] = [
        (&[&rustls::version::TLS13], TLS13_AES_128_GCM_SHA256),
        (&[&rustls::version::TLS13], TLS13_CHACHA20_POLY1305_SHA256),
        (
            &[&rustls::version::TLS12],
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &[&rustls::version::TLS12],
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            &[&rustls::version::TLS12],
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (i, (versions, suite)) in cases.iter().enumerate() {
        let mut c = tls::connect(
            proxy.listener("tls"),
            client_with(&pki, versions, &[*suite]),
        );
        let msg = vec![i as u8; 100_000];
        let back = tls::roundtrip(&mut c, &msg)
            .unwrap_or_else(|e| panic!("{suite:?}: {e}\n{}", proxy.access_log_line()));
        assert_eq!(back, msg, "{suite:?}");
        assert_eq!(
            c.conn.negotiated_cipher_suite().map(|s| s.suite()),
            Some(*suite)
        );
        assert_eq!(sessions(&proxy, "ktls"), (i + 1) as f64, "{suite:?}");
    }
}

#[test]
fn the_upstream_closing_sends_close_notify_to_the_client() {
    if !ktls_or_skip("the_upstream_closing_sends_close_notify_to_the_client") {
        return;
    }
    let pki = Pki::new();
    // A backend that answers and closes.
    let upstream = tcp::serve_each(|mut s| {
        let mut buf = [0u8; 5];
        if s.read_exact(&mut buf).is_ok() {
            let _ = s.write_all(b"bye");
        }
    });
    let proxy = proxy("uring", &pki, upstream, "");
    let mut c = tls::connect(
        proxy.listener("tls"),
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    c.write_all(b"hello").unwrap();
    c.flush().unwrap();
    let mut got = Vec::new();
    // rustls reports a close without close_notify as UnexpectedEof.
    c.read_to_end(&mut got).expect("a clean TLS close");
    assert_eq!(got, b"bye");
    assert_eq!(sessions(&proxy, "ktls"), 1.0);
}

#[test]
fn a_key_update_from_the_client_closes_the_connection_with_a_clear_error() {
    if !ktls_or_skip("a_key_update_from_the_client") {
        return;
    }
    let pki = Pki::new();
    let echo = EchoServer::start();
    let proxy = proxy("uring", &pki, echo.addr, "");
    let mut c = tls::connect(
        proxy.listener("tls"),
        tls::client_config(&pki.path("ca.pem"), None, Versions::Only13),
    );
    assert_eq!(tls::roundtrip(&mut c, b"before").unwrap(), b"before");
    c.conn.refresh_traffic_keys().unwrap();
    let _ = c.write_all(b"after");
    let _ = c.flush();
    let mut buf = [0u8; 16];
    assert!(
        !matches!(c.read(&mut buf), Ok(n) if n > 0),
        "no data may follow a KeyUpdate the kernel cannot take"
    );
    let line = proxy.access_log_line();
    assert!(
        line["error"]
            .as_str()
            .unwrap_or_default()
            .contains("KeyUpdate"),
        "{line}"
    );
    // The proxy goes on serving.
    let mut c = tls::connect(
        proxy.listener("tls"),
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    assert_eq!(tls::roundtrip(&mut c, b"still").unwrap(), b"still");
}

#[test]
fn ktls_false_keeps_sessions_in_userspace() {
    if !ktls_or_skip("ktls_false_keeps_sessions_in_userspace") {
        return;
    }
    let pki = Pki::new();
    let echo = EchoServer::start();
    let proxy = proxy("uring", &pki, echo.addr, ", ktls: false");
    let mut c = tls::connect(
        proxy.listener("tls"),
        tls::client_config(&pki.path("ca.pem"), None, Versions::Both),
    );
    assert_eq!(tls::roundtrip(&mut c, b"user").unwrap(), b"user");
    assert_eq!(sessions(&proxy, "userspace"), 1.0);
    assert_eq!(sessions(&proxy, "ktls"), 0.0);
    assert_eq!(
        proxy.metric(
            "ringmesh_tls_data_path",
            &[("listener", "tls"), ("path", "userspace")]
        ),
        1.0
    );
}
