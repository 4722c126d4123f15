//! The HTTP/1.1 proxy (`protocol: http` listeners) end to end: keep-alive
//! and pooling, byte-exact bodies both ways, the request-smuggling refusals,
//! pipelining, 100-continue, bodiless responses, stale pooled connections,
//! the header timeout, WebSocket upgrades, breakers, outlier ejection,
//! HTTP/1.0, drain, reload under load and the metrics exposition.

mod helpers;

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{
    self, Reply, Request, Upstream, closed_within, http_listener, read_response, send,
};
use helpers::proxy::Proxy;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn web(proxy: &Proxy) -> SocketAddr {
    proxy.listener("web")
}

on_both_engines! {
    fn a_thousand_keep_alive_requests_use_one_upstream_connection(engine) {
        let up = Upstream::echo();
        let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
        let mut c = http::connect(web(&proxy));
        for i in 0..1000 {
            let body = format!("request number {i}");
            let r = http::post(&mut c, &format!("/k/{i}"), body.as_bytes())
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200, "request {i}: {}", r.head);
            assert_eq!(r.text(), body, "request {i}");
            assert!(!r.closes(), "request {i}: {}", r.head);
        }
        assert_eq!(up.accepted(), 1, "one pooled upstream connection for 1,000 requests");
        assert_eq!(up.request_count(), 1000);
        // One access-log line per request, with its facts.
        let line = proxy
            .wait_log(Duration::from_secs(10), |v| v["message"] == "request" && v["path"] == "/k/999")
            .unwrap_or_else(|| panic!("no access-log line for /k/999:\n{}", proxy.log_text()));
        assert_eq!(line["listener"], "web", "{line}");
        assert_eq!(line["cluster"], "web", "{line}");
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["authority"], "test", "{line}");
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["flags"], "-", "{line}");
        assert_eq!(line["upstream"], up.addr.to_string(), "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
        assert_eq!(line["request_id"].as_str().map(str::len), Some(36), "generated UUID: {line}");
        let count = proxy.logs().iter().filter(|v| v["message"] == "request").count();
        assert!(count >= 999, "{count} access-log lines for 1,000 requests");
    }

    fn sixty_four_mib_each_way_with_content_length(engine) {
        big_bodies(engine, false);
    }

    fn sixty_four_mib_each_way_chunked(engine) {
        big_bodies(engine, true);
    }

    fn pipelined_requests_are_answered_in_order(engine) {
        let up = Upstream::start(|r| Reply::ok(format!("answer to {}", r.path)));
        let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
        let mut c = http::connect(web(&proxy));
        send(&mut c, b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a\r\n\r\nGET /p3 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        for p in ["/p1", "/p2", "/p3"] {
            let r = read_response(&mut c, false).unwrap();
            assert_eq!((r.status, r.text()), (200, format!("answer to {p}")));
        }
        // And the connection still serves.
        assert_eq!(http::get(&mut c, "/p4").unwrap().text(), "answer to /p4");
    }

    fn expect_100_continue_gets_continue_before_the_body(engine) {
        let up = Upstream::echo();
        let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
        let mut c = http::connect(web(&proxy));
        c.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send(&mut c, b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").unwrap();
        let interim = read_response(&mut c, false).expect("100 Continue before the body is sent");
        assert_eq!(interim.status, 100, "{}", interim.head);
        assert!(interim.head.starts_with("HTTP/1.1 100 Continue\r\n"), "{}", interim.head);
        send(&mut c, b"hello").unwrap();
        let r = read_response(&mut c, false).unwrap();
        assert_eq!((r.status, r.text()), (200, "hello".to_owned()), "{}", r.head);
    }

    fn head_204_and_304_have_no_body_and_the_connection_goes_on(engine) {
        let up = Upstream::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("HEAD", _) => Reply::status(200).header("Content-Length", "5").no_body(),
            (_, "/204") => Reply::status(204).no_body(),
            (_, "/304") => Reply::status(304).header("ETag", "\"v1\"").no_body(),
            _ => Reply::ok("after"),
        });
        let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
        let mut c = http::connect(web(&proxy));
        c.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send(&mut c, b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let r = read_response(&mut c, true).expect("HEAD answered without waiting for a body");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.header("content-length"), Some("5"), "{}", r.head);
        for path in ["/204", "/304"] {
            let r = http::get(&mut c, path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(r.status.to_string(), path[1..], "{}", r.head);
            assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
        }
        let r = http::get(&mut c, "/next").unwrap();
        assert_eq!((r.status, r.text()), (200, "after".to_owned()), "{}", r.head);
        assert_eq!(up.accepted(), 1, "the upstream connection stayed reusable");
    }

    fn a_pooled_connection_the_upstream_closed_is_not_a_failure(engine) {
        let up = Upstream::start(|_| Reply::ok("fine").close_after(Duration::from_millis(100)));
        let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
        let mut c = http::connect(web(&proxy));
        for i in 0..5 {
            let r = http::get(&mut c, &format!("/{i}")).unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!((r.status, r.text()), (200, "fine".to_owned()), "request {i}: {}", r.head);
            thread::sleep(Duration::from_millis(300));
        }
        // A new client connection too.
        let mut d = http::connect(web(&proxy));
        assert_eq!(http::get(&mut d, "/new").unwrap().status, 200);
        assert_eq!(up.accepted(), 6, "each request needed a new upstream connection");
    }

    fn websocket_upgrade_becomes_a_byte_tunnel(engine) {
        let up = Upstream::start(|_| Reply::websocket());
        let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
        let mut c = http::connect(web(&proxy));
        c.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send(&mut c, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
        let r = read_response(&mut c, false).unwrap();
        assert_eq!(r.status, 101, "{}", r.head);
        assert_eq!(r.header("upgrade").map(str::to_ascii_lowercase).as_deref(), Some("websocket"), "{}", r.head);
        let raw = up.requests.lock().unwrap()[0].clone();
        let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(raw.contains("upgrade: websocket"), "upgrade forwarded: {raw}");
        for msg in [&b"\x81\x05hello"[..], &[0u8, 1, 2, 255, 254][..], &vec![7u8; 100_000][..]] {
            send(&mut c, msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            std::io::Read::read_exact(&mut c, &mut back).expect("echoed through the tunnel");
            assert!(back == msg, "tunnel bytes differ");
        }
    }
}

/// 64 MiB up and 64 MiB back through one request, checked by SHA-256.
fn big_bodies(engine: &str, chunked: bool) {
    let up = Upstream::start(|r: &Request| {
        let reply = Reply::ok(r.body.clone());
        if r.header("transfer-encoding").is_some() {
            reply.chunked()
        } else {
            reply
        }
    });
    let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
    let mut body = vec![0u8; 64 * MIB];
    let mut p = helpers::tcp::Payload::new(if chunked { 2 } else { 1 }, body.len());
    p.next_chunk(&mut body);
    let sent: [u8; 32] = Sha256::digest(&body).into();
    let mut c = http::connect(web(&proxy));
    let mut w = c.get_ref().try_clone().unwrap();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(MIB, &mut w);
        if chunked {
            w.write_all(b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            http::write_chunked(&mut w, &body)?;
            w.write_all(b"0\r\n\r\n")?;
        } else {
            write!(
                w,
                "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            w.write_all(&body)?;
        }
        w.flush()
    });
    let r = read_response(&mut c, false).expect("response");
    writer.join().unwrap().expect("request sent");
    assert_eq!(r.status, 200, "{}", r.head);
    if chunked {
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{}", r.head);
    } else {
        assert_eq!(r.header("content-length"), Some("67108864"), "{}", r.head);
    }
    assert_eq!(r.body.len(), 64 * MIB);
    assert!(
        r.sha() == sent,
        "response body differs from the request body"
    );
    // The connection is still good for another request.
    assert_eq!(http::post(&mut c, "/small", b"x").unwrap().text(), "x");
    assert_eq!(up.accepted(), 1);
}

/// What a refused head gets: `status`, `connection: close`, then EOF.
fn assert_refused(addr: SocketAddr, name: &str, bytes: &[u8], status: u16) -> Result<(), String> {
    let mut c = http::connect(addr);
    c.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Ignore write errors: the proxy may refuse before reading everything.
    let _ = send(&mut c, bytes);
    let r = read_response(&mut c, false).map_err(|e| format!("{name}: no response ({e})"))?;
    if r.status != status {
        return Err(format!(
            "{name}: status {} instead of {status}: {:?}",
            r.status, r.head
        ));
    }
    if !r.closes() {
        return Err(format!("{name}: no `connection: close`: {:?}", r.head));
    }
    if !closed_within(&mut c, Duration::from_secs(2)) {
        return Err(format!("{name}: connection left open"));
    }
    Ok(())
}

#[test]
fn smuggling_prone_heads_are_refused_and_never_reach_the_upstream() {
    let up = Upstream::echo();
    let proxy = Proxy::start("uring", &http_listener("web", &[up.addr], "", ""));
    let addr = web(&proxy);
    let long_target = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(8 * 1024 + 10)
    );
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..62)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)))
            .collect::<String>()
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-H-{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE and CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("two differing CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(), 400),
        ("CL 0x10", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n".to_vec(), 400),
        ("empty CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n".to_vec(), 400),
        ("CL +4", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd".to_vec(), 400),
        ("CL list 4, 4", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd".to_vec(), 400),
        ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), 501),
        ("TE chunked, gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE ,chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("two TE chunked lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n".to_vec(), 400),
        ("obs-fold of TE", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("bare LF lines", b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), 400),
        ("bare LF in one line", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n".to_vec(), 400),
        ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n".to_vec(), 400),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n".to_vec(), 400),
        ("0x85 in a name", b"GET / HTTP/1.1\r\nHost: a\r\nHead\x85er: x\r\n\r\n".to_vec(), 400),
        ("DEL in the target", b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("HTTP/0.9", b"GET /\r\n".to_vec(), 400),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("HTTP/2.0 in an h1 line", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("missing Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n".to_vec(), 400),
        ("two Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        ("Host with a slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(), 400),
        ("request line over 8 KiB", long_target.into_bytes(), 414),
        ("head over 60 KiB", big_head.into_bytes(), 431),
        ("101 headers", many_headers.into_bytes(), 431),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
    ];
    let mut failures = Vec::new();
    for (name, bytes, status) in &cases {
        if let Err(e) = assert_refused(addr, name, bytes, *status) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "refusals wrong:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        up.accepted(),
        0,
        "nothing reached the upstream: {:?}",
        up.request_lines()
    );
    // Each refusal is logged with its reason and counted.
    let rejected = || {
        proxy
            .logs()
            .iter()
            .filter(|v| v["message"] == "request rejected")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while rejected() < cases.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        rejected(),
        cases.len(),
        "one `request rejected` line per case:\n{}",
        proxy.log_text()
    );
    let reasons = [
        ("content_length_and_transfer_encoding", 2.0),
        ("unsupported_transfer_coding", 1.0),
        ("uri_too_long", 1.0),
        ("too_many_headers", 1.0),
        ("head_too_large", 1.0),
    ];
    let metrics = proxy.metrics();
    for (reason, n) in reasons {
        let got = helpers::admin::metric(
            &metrics,
            "ringmesh_http_rejected_total",
            &[("listener", "web"), ("reason", reason)],
        );
        assert_eq!(
            got,
            Some(n),
            "ringmesh_http_rejected_total{{reason={reason}}}"
        );
    }
    let total: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ringmesh_http_rejected_total{") && l.contains("listener=\"web\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(total, cases.len() as f64, "every refusal counted");
    // And the listener still serves.
    let mut c = http::connect(addr);
    assert_eq!(http::post(&mut c, "/", b"ok").unwrap().text(), "ok");
}

#[test]
fn bad_chunked_bodies_are_refused_and_the_smuggled_request_never_arrives() {
    let up = Upstream::echo();
    let proxy = Proxy::start("epoll", &http_listener("web", &[up.addr], "", ""));
    let addr = web(&proxy);
    let head = "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let evil = "GET /evil HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases: &[(&str, String)] = &[
        ("empty size line", format!("{head}\r\n0\r\n\r\n{evil}")),
        ("-0", format!("{head}-0\r\n\r\n{evil}")),
        (
            "17 hex digits",
            format!("{head}10000000000000004\r\nabcd\r\n0\r\n\r\n{evil}"),
        ),
        (
            "LF in an extension",
            format!("{head}4;a\nb\r\nabcd\r\n0\r\n\r\n{evil}"),
        ),
        (
            "bare LF after data",
            format!("{head}4\r\nabcd\n0\r\n\r\n{evil}"),
        ),
        (
            "size with spaces",
            format!("{head}4 0\r\nabcd\r\n0\r\n\r\n{evil}"),
        ),
        ("0x prefix", format!("{head}0x4\r\nabcd\r\n0\r\n\r\n{evil}")),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in cases {
        let mut c = http::connect(addr);
        c.get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = send(&mut c, bytes.as_bytes());
        match read_response(&mut c, false) {
            Ok(r) if r.status == 400 && r.closes() => {}
            Ok(r) => failures.push(format!("{name}: {:?}", r.head)),
            // A closed connection is an acceptable answer too.
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => failures.push(format!("{name}: no answer and not closed ({e})")),
        }
        if !closed_within(&mut c, Duration::from_secs(2)) {
            failures.push(format!("{name}: connection left open"));
        }
    }
    thread::sleep(Duration::from_millis(200));
    let lines = up.request_lines();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        !lines.iter().any(|l| l.contains("/evil")),
        "smuggled request reached the upstream: {lines:?}"
    );
    assert_eq!(
        up.request_count(),
        0,
        "no complete request reached the upstream: {lines:?}"
    );
}

#[test]
fn a_slowloris_head_gets_408_within_the_header_timeout() {
    let up = Upstream::echo();
    let proxy = Proxy::start(
        "uring",
        &http_listener("web", &[up.addr], "request_headers_timeout: 1s", ""),
    );
    let mut c = http::connect(web(&proxy));
    let started = Instant::now();
    let mut w = c.get_ref().try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let dripper = thread::spawn(move || {
        let bytes = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in bytes {
            if stop2.load(Ordering::SeqCst) || w.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });
    c.get_ref()
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let r = read_response(&mut c, false).expect("a 408 answer");
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(r.status, 408, "{}", r.head);
    assert!(r.closes(), "{}", r.head);
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}, before the timeout"
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(2)),
        "closed after the 408"
    );
    dripper.join().unwrap();
    assert_eq!(up.accepted(), 0);
    assert_eq!(
        proxy.wait_metric(
            "ringmesh_http_rejected_total",
            &[("listener", "web"), ("reason", "header_timeout")],
            Duration::from_secs(5),
            |v| v >= 1.0
        ),
        1.0
    );
}

/// Sends `GET /first` from a thread and waits until it is at the (slow)
/// upstream, holding the cluster's only `max_requests` slot.
fn hold_the_request_slot(addr: SocketAddr, up: &Upstream) -> thread::JoinHandle<http::Response> {
    let first = thread::spawn(move || http::get(&mut http::connect(addr), "/first").unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.request_count() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    first
}

#[test]
fn max_requests_breaker_answers_503_uo_to_the_second_concurrent_request() {
    let up = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(1)));
    let proxy = Proxy::start(
        "uring",
        &http_listener(
            "web",
            &[up.addr],
            "",
            "circuit_breakers: { max_requests: 1 }",
        ),
    );
    let addr = web(&proxy);
    let first = hold_the_request_slot(addr, &up);
    let mut c = http::connect(addr);
    let started = Instant::now();
    let r = http::get(&mut c, "/second").unwrap();
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.text().contains("(UO)"), "{}", r.text());
    assert_eq!(
        r.header("x-ringmesh-overloaded"),
        Some("true"),
        "{}",
        r.head
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    let r = first.join().unwrap();
    assert_eq!((r.status, r.text()), (200, "slow".to_owned()));
    assert_eq!(
        up.request_count(),
        1,
        "the refused request never reached the upstream"
    );
    let line = proxy
        .wait_log(Duration::from_secs(5), |v| {
            v["message"] == "request" && v["path"] == "/second"
        })
        .expect("access-log line");
    assert_eq!(line["flags"], "UO", "{line}");
    assert_eq!(line["status"], 503, "{line}");
}

#[test]
fn an_endpoint_answering_503_is_ejected_on_both_workers() {
    let good = Upstream::start(|_| Reply::ok("good"));
    let bad = Upstream::fixed(503);
    let outlier = "outlier_detection: { consecutive_5xx: 3, consecutive_gateway_failure: 3, enforcing_consecutive_gateway_failure: 100, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 100 }";
    let proxy = Proxy::start(
        "epoll",
        &http_listener("web", &[good.addr, bad.addr], "", outlier),
    );
    let addr = web(&proxy);
    // A new connection per request spreads them over both workers.
    let one = || {
        let mut c = http::connect(addr);
        http::get(&mut c, "/").unwrap().status
    };
    for _ in 0..60 {
        one();
    }
    thread::sleep(Duration::from_millis(100));
    let bad_before = bad.request_count();
    assert!(bad_before >= 3, "the bad endpoint was tried: {bad_before}");
    let statuses: Vec<u16> = (0..40).map(|_| one()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(
        bad.request_count(),
        bad_before,
        "the ejected endpoint got more requests"
    );
    let clusters = proxy.get("/clusters").body;
    println!("GET /clusters after ejection: {clusters}");
}

#[test]
fn an_http_1_0_client_gets_its_response_and_the_connection_closes() {
    let up = Upstream::start(|r| Reply::ok(format!("hello {}", r.path)));
    let proxy = Proxy::start("uring", &http_listener("web", &[up.addr], "", ""));
    let mut c = http::connect(web(&proxy));
    send(&mut c, b"GET /ten HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut c, false).unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "hello /ten".to_owned()),
        "{}",
        r.head
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(2)),
        "HTTP/1.0: closed after the response"
    );
    let line = proxy
        .wait_log(Duration::from_secs(5), |v| {
            v["message"] == "request" && v["path"] == "/ten"
        })
        .expect("access-log line");
    assert_eq!(line["protocol"], "HTTP/1.0", "{line}");
}

#[test]
fn drain_closes_idle_keep_alive_connections_and_finishes_requests_in_flight() {
    let up = Upstream::start(|r| {
        if r.path == "/slow" {
            Reply::ok("slow").delay(Duration::from_secs(1))
        } else {
            Reply::ok("fast")
        }
    });
    let mut proxy = Proxy::start("uring", &http_listener("web", &[up.addr], "", ""));
    let addr = web(&proxy);
    let mut idle = http::connect(addr);
    assert_eq!(http::get(&mut idle, "/fast").unwrap().status, 200);
    let mut busy = http::connect(addr);
    send(&mut busy, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.request_count() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let r = helpers::admin::request(proxy.admin, "POST", "/drain", "").unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let started = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_millis(900)),
        "idle keep-alive connection closed at once"
    );
    assert!(started.elapsed() < Duration::from_millis(900));
    let r = read_response(&mut busy, false).expect("the in-flight request completes");
    assert_eq!((r.status, r.text()), (200, "slow".to_owned()), "{}", r.head);
    assert!(
        r.closes(),
        "in-flight response during a drain says connection: close: {}",
        r.head
    );
    assert!(closed_within(&mut busy, Duration::from_secs(2)));
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("proxy exits after the drain");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_request_sent_just_after_a_drain_on_an_idle_connection_is_answered_with_close() {
    let up = Upstream::start(|_| Reply::ok("answered"));
    let proxy = Proxy::start("uring", &http_listener("web", &[up.addr], "", ""));
    let addr = web(&proxy);
    let mut idle = http::connect(addr);
    assert_eq!(http::get(&mut idle, "/first").unwrap().status, 200);
    // A long-lived connection keeps the drain (and the process) going.
    let _held = http::connect(addr);
    let r = helpers::admin::request(proxy.admin, "POST", "/drain", "").unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // The client was about to send its next request: within the 250 ms
    // grace it is answered, and told the connection closes.
    thread::sleep(Duration::from_millis(50));
    send(&mut idle, b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_response(&mut idle, false).expect("answered during the grace");
    assert_eq!(
        (r.status, r.text()),
        (200, "answered".to_owned()),
        "{}",
        r.head
    );
    assert!(r.closes(), "{}", r.head);
    assert!(closed_within(&mut idle, Duration::from_secs(2)));
}

#[test]
fn a_hundred_reloads_under_fifty_keep_alive_clients_fail_no_request() {
    let up = Upstream::echo();
    let config = |i: usize| {
        let extra = if i % 2 == 0 {
            "generate_request_id: false\nidle_timeout: 30s"
        } else {
            "idle_timeout: 1h"
        };
        let mut c = http_listener("web", &[up.addr], extra, "");
        if i % 3 == 0 {
            c = c.replace(
                "clusters:\n",
                "  - name: extra\n    listen: 127.0.0.1:0\n    cluster: web\nclusters:\n",
            );
        }
        c
    };
    let proxy = Proxy::start("uring", &config(1));
    let addr = web(&proxy);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..50)
        .map(|t| {
            let (stop, ok) = (stop.clone(), ok.clone());
            thread::spawn(move || -> Result<(), String> {
                let mut c = http::connect(addr);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let body = format!("client {t} request {i}");
                    let r = http::post(&mut c, "/load", body.as_bytes())
                        .map_err(|e| format!("client {t} request {i}: {e}"))?;
                    if r.status != 200 || r.body != body.as_bytes() {
                        return Err(format!("client {t} request {i}: {} {:?}", r.head, r.text()));
                    }
                    ok.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    for i in 0..100 {
        let r = proxy.put_config(&config(i));
        assert_eq!(r.status, 200, "reload {i}: {}", r.body);
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|h| h.join().unwrap().err())
        .collect();
    assert!(errors.is_empty(), "failed requests:\n{}", errors.join("\n"));
    assert!(
        ok.load(Ordering::SeqCst) > 100,
        "requests served: {}",
        ok.load(Ordering::SeqCst)
    );
}

#[test]
fn the_metrics_exposition_passes_promtool_after_http_traffic() {
    let up = Upstream::echo();
    let proxy = Proxy::start("uring", &http_listener("web", &[up.addr], "", ""));
    let addr = web(&proxy);
    let mut c = http::connect(addr);
    for i in 0..10 {
        assert_eq!(
            http::post(&mut c, "/m", format!("{i}").as_bytes())
                .unwrap()
                .status,
            200
        );
    }
    let _ = http::send_raw(addr, b"GET / HTTP/1.1\r\n\r\n");
    proxy.wait_metric(
        "ringmesh_http_rejected_total",
        &[("listener", "web"), ("reason", "invalid_host")],
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    let text = proxy.metrics();
    assert!(text.contains("ringmesh_http_requests_total{"), "{text}");
    match helpers::admin::promtool_findings(&text) {
        None => println!("SKIPPED: promtool not installed"),
        Some(findings) => assert!(findings.is_empty(), "promtool check metrics: {findings:?}"),
    }
}

#[test]
fn hop_by_hop_fields_are_dropped_and_forwarding_fields_added() {
    let up = Upstream::echo();
    let proxy = Proxy::start("epoll", &http_listener("web", &[up.addr], "", ""));
    let mut c = http::connect(web(&proxy));
    send(&mut c, b"GET /h HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: hidden\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Kept: yes\r\n\r\n").unwrap();
    let r = read_response(&mut c, false).unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    let raw = String::from_utf8_lossy(&up.requests.lock().unwrap()[0]).into_owned();
    let lower = raw.to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive:",
        "proxy-connection",
        "te:",
        "connection:",
    ] {
        assert!(!lower.contains(gone), "{gone} forwarded:\n{raw}");
    }
    assert!(raw.starts_with("GET /h HTTP/1.1\r\n"), "{raw}");
    assert!(lower.contains("host: example.test\r\n"), "{raw}");
    assert!(lower.contains("x-kept: yes\r\n"), "{raw}");
    assert!(
        lower.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
        "{raw}"
    );
    assert!(
        lower.contains("x-forwarded-proto: http\r\n"),
        "client's proto replaced: {raw}"
    );
    assert_eq!(lower.matches("x-forwarded-proto").count(), 1, "{raw}");
    assert!(lower.contains("x-request-id: "), "{raw}");
}

on_both_engines! {
    fn a_close_delimited_upstream_response_reaches_an_http_1_1_client_chunked(engine) {
        let up = Upstream::start(|_| Reply::pattern(7, 3 * MIB).no_body_framing());
        let proxy = Proxy::start(engine, &http_listener("web", &[up.addr], "", ""));
        let mut c = http::connect(web(&proxy));
        let r = http::get(&mut c, "/eof").unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{}", r.head);
        let mut want = vec![0u8; 3 * MIB];
        helpers::tcp::Payload::new(7, want.len()).next_chunk(&mut want);
        assert!(r.body == want, "body differs ({} bytes)", r.body.len());
        // The client's connection stays usable.
        assert_eq!(http::get(&mut c, "/again").unwrap().status, 200);
    }
}

#[test]
fn an_upstream_response_with_bad_framing_is_a_502() {
    let up = Upstream::start(|_| {
        Reply::status(200)
            .header("Content-Length", "3")
            .header("Transfer-Encoding", "chunked")
            .no_body()
    });
    let proxy = Proxy::start("uring", &http_listener("web", &[up.addr], "", ""));
    let mut c = http::connect(web(&proxy));
    let r = http::get(&mut c, "/bad").unwrap();
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(r.text().contains("(UPE)"), "{}", r.text());
}

#[test]
fn connection_close_from_the_client_closes_after_the_response() {
    let up = Upstream::echo();
    let proxy = Proxy::start("uring", &http_listener("web", &[up.addr], "", ""));
    let mut c = http::connect(web(&proxy));
    send(
        &mut c,
        b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut c, false).unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.closes(), "{}", r.head);
    assert!(closed_within(&mut c, Duration::from_secs(2)));
}

#[test]
fn an_https_listener_with_mtls_proxies_requests_and_logs_the_callers_identity() {
    use helpers::tls::{self, Pki, Versions};
    let pki = Pki::new();
    pki.issue(
        "product",
        &["--spiffe", "spiffe://mesh.local/ns/shop/sa/product"],
    );
    // The upstream echoes the forwarding fields it received.
    let up = Upstream::start(|r| {
        Reply::ok(format!(
            "proto={} xff={}",
            r.header("x-forwarded-proto").unwrap_or("-"),
            r.header("x-forwarded-for").unwrap_or("-")
        ))
    });
    let listener = format!(
        "{}\nauthz: {{ allow: [\"spiffe://mesh.local/ns/shop/sa/*\"] }}",
        pki.listener_tls(true)
    );
    let proxy = Proxy::start("uring", &http_listener("web", &[up.addr], &listener, ""));
    let config = tls::client_config(
        &pki.path("ca.pem"),
        Some(&pki.path("product")),
        Versions::Both,
    );
    let mut c = std::io::BufReader::new(tls::connect(web(&proxy), config));
    for i in 0..3 {
        let req = format!("GET /tls/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        c.get_mut().write_all(req.as_bytes()).unwrap();
        c.get_mut().flush().unwrap();
        let r = read_response(&mut c, false).unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), "proto=https xff=127.0.0.1");
    }
    assert_eq!(
        up.accepted(),
        1,
        "keep-alive over TLS reuses one upstream connection"
    );
    let line = proxy
        .wait_log(Duration::from_secs(5), |v| {
            v["message"] == "request" && v["path"] == "/tls/2"
        })
        .unwrap_or_else(|| panic!("no access-log line:\n{}", proxy.log_text()));
    assert_eq!(
        line["identity"], "spiffe://mesh.local/ns/shop/sa/product",
        "{line}"
    );
}

#[test]
fn the_route_timeout_answers_504_ut() {
    let up = Upstream::start(|_| Reply::ok("late").delay(Duration::from_secs(3)));
    let proxy = Proxy::start(
        "epoll",
        &http_listener("web", &[up.addr], "timeout: 300ms", ""),
    );
    let mut c = http::connect(web(&proxy));
    let started = Instant::now();
    let r = http::get(&mut c, "/slow").unwrap();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(r.text().contains("(UT)"), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the timeout, not when the upstream answered: {:?}",
        started.elapsed()
    );
    let line = proxy
        .wait_log(Duration::from_secs(5), |v| {
            v["message"] == "request" && v["path"] == "/slow"
        })
        .expect("access-log line");
    assert_eq!(line["flags"], "UT", "{line}");
    // The connection still serves (the timed-out upstream connection is
    // discarded, not reused).
    assert_eq!(http::get(&mut c, "/slow").unwrap().status, 504);
}

#[test]
fn unreachable_and_missing_endpoints_are_answered_502_uf_and_503_uh() {
    // Port 1 on loopback refuses connections.
    let refused: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let proxy = Proxy::start("uring", &http_listener("web", &[refused], "", ""));
    let mut c = http::connect(web(&proxy));
    let r = http::get(&mut c, "/").unwrap();
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(r.text().contains("(UF)"), "{}", r.text());
    // A bodiless request keeps its connection after the proxy's answer.
    assert!(!r.closes(), "{}", r.head);
    assert_eq!(http::get(&mut c, "/").unwrap().status, 502);
    let empty = Proxy::start("uring", &http_listener("web", &[], "", ""));
    let mut c = http::connect(web(&empty));
    let r = http::get(&mut c, "/").unwrap();
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.text().contains("(UH)"), "{}", r.text());
}

#[test]
fn a_refused_request_with_an_unread_body_still_gets_its_answer() {
    // The 503 goes out before the 1 MiB body is read: a lingering close
    // keeps the unread bytes from turning the close into a reset that
    // would destroy the answer.
    let up = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(2)));
    let proxy = Proxy::start(
        "uring",
        &http_listener(
            "web",
            &[up.addr],
            "",
            "circuit_breakers: { max_requests: 1 }",
        ),
    );
    let addr = web(&proxy);
    let first = hold_the_request_slot(addr, &up);
    let body = vec![b'x'; MIB];
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mut c = http::connect(addr);
    // The proxy may answer before it has read everything: write from a
    // thread so the answer can be read meanwhile.
    let mut writer = c.get_ref().try_clone().unwrap();
    let sender = thread::spawn(move || {
        let _ = writer.write_all(&raw);
    });
    let r = read_response(&mut c, false).unwrap();
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.text().contains("(UO)"), "{}", r.text());
    let _ = sender.join();
    assert_eq!(first.join().unwrap().status, 200);
}

#[test]
fn a_client_that_never_reads_its_response_releases_its_request_slot_after_the_idle_timeout() {
    let up = Upstream::start(|r| {
        if r.path == "/big" {
            Reply::pattern(7, 64 * MIB)
        } else {
            Reply::ok("small")
        }
    });
    let proxy = Proxy::start(
        "epoll",
        &http_listener(
            "web",
            &[up.addr],
            "idle_timeout: 1s",
            "circuit_breakers: { max_requests: 1 }",
        ),
    );
    let addr = web(&proxy);
    // Sends, then never reads: the proxy's writes stall on a full socket.
    let mut stuck = http::connect(addr);
    send(&mut stuck, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http::get(&mut http::connect(addr), "/small").unwrap();
        if r.status == 200 {
            assert_eq!(r.text(), "small");
            break;
        }
        assert_eq!(r.status, 503, "{}", r.head);
        assert!(
            Instant::now() < deadline,
            "the stalled response still holds max_requests"
        );
        thread::sleep(Duration::from_millis(200));
    }
    drop(stuck);
}
