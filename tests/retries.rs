//! Retries and timeouts (README "Retries", "Timeouts"): each retry
//! condition retries what it names and nothing else, retries go to an
//! endpoint not tried yet, back off within Envoy's bounds, honour
//! `Retry-After` up to the cap, replay bodies of up to 64 KiB and never
//! larger ones, stay inside the cluster's budget across both workers and
//! its `max_retries` breaker; route, per-try and idle timeouts answer (or
//! cut) and are counted per route and cluster.

mod helpers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;
use helpers::tcp::Blackhole;

type Conn = BufReader<TcpStream>;

/// One HTTP listener `web` with one route `r` to cluster `app`:
/// `route` adds fields to the route's flow mapping, `cluster` adds lines
/// (indented four spaces) to the cluster.
fn config(route: &str, endpoints: &[SocketAddr], cluster: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    routes:\n      - {{ name: r, cluster: app, {route} }}\nclusters:\n  - name: app\n    endpoints: [{}]\n{cluster}",
        eps.join(", ")
    )
}

fn post(c: &mut Conn, body: &[u8]) -> http::Response {
    http::request(c, "POST", "/", &[("Host", "test")], body).expect("response")
}

fn attempts(r: &http::Response) -> u32 {
    r.header("x-ringmesh-attempts")
        .map_or(1, |v| v.parse().expect("a number"))
}

/// What a [`scripted`] server does with one request.
#[derive(Clone, Copy)]
struct Step {
    delay: Duration,
    /// `None`: close the connection without answering.
    answer: Option<u16>,
}

fn answer(status: u16) -> Step {
    Step {
        delay: Duration::ZERO,
        answer: Some(status),
    }
}

const CLOSE: Step = Step {
    delay: Duration::ZERO,
    answer: None,
};

/// A keep-alive HTTP/1.1 server that reads each request (Content-Length
/// bodies) and does what `script(n, k)` says for the `n`th request it
/// received and the `k`th on its connection. Returns its address and the
/// request count.
fn scripted(
    script: impl Fn(usize, usize) -> Step + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let seen = count.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (script, seen) = (script.clone(), seen.clone());
            thread::spawn(move || {
                let mut w = stream.try_clone().expect("clone");
                let mut r = BufReader::new(stream);
                for k in 0.. {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, v)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let step = script(n, k);
                    thread::sleep(step.delay);
                    match step.answer {
                        None => {
                            let _ = w.shutdown(Shutdown::Both);
                            return;
                        }
                        Some(s) => {
                            let reply = format!("HTTP/1.1 {s} X\r\ncontent-length: 2\r\n\r\nok");
                            if w.write_all(reply.as_bytes()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

/// An address nothing listens on (connections are refused).
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A step that stalls past the per-try timeout of the condition matrix.
const STALL: Step = Step {
    delay: Duration::from_millis(800),
    answer: Some(200),
};

#[test]
fn each_condition_retries_what_it_names_and_nothing_else() {
    for engine in ["uring", "epoll"] {
        condition_matrix(engine);
    }
}

fn condition_matrix(engine: &str) {
    // (on, what the first request gets, retried?)
    let cases: &[(&str, Step, bool)] = &[
        ("[5xx]", answer(500), true),
        ("[5xx]", answer(503), true),
        ("[5xx]", CLOSE, true),
        ("[5xx]", answer(409), false),
        ("[5xx]", STALL, true),
        ("[gateway-error]", answer(502), true),
        ("[gateway-error]", answer(504), true),
        ("[gateway-error]", answer(500), false),
        ("[gateway-error]", STALL, true),
        ("[retriable-4xx]", answer(409), true),
        ("[retriable-4xx]", answer(400), false),
        ("[retriable-4xx]", answer(500), false),
        ("[reset]", CLOSE, true),
        ("[reset]", answer(503), false),
        ("[reset]", STALL, true),
        ("[retriable-4xx]", STALL, false),
        ("[connect-failure]", CLOSE, false),
        ("[refused-stream]", CLOSE, false),
    ];
    for &(on, first, retried) in cases {
        let (addr, count) = scripted(move |n, _| if n == 0 { first } else { answer(200) });
        let route = format!("retries: {{ on: {on}, per_try_timeout: 300ms }}");
        let proxy = Proxy::start(engine, &config(&route, &[addr], ""));
        let mut c = http::connect(proxy.listener("web"));
        let r = post(&mut c, b"x");
        let case = format!(
            "{engine}: on {on}, first {:?} after {:?}",
            first.answer, first.delay
        );
        if retried {
            assert_eq!((r.status, attempts(&r)), (200, 2), "{case}: {}", r.head);
            assert_eq!(count.load(Ordering::SeqCst), 2, "{case}");
        } else {
            assert_ne!(r.status, 200, "{case}");
            assert_eq!(attempts(&r), 1, "{case}: {}", r.head);
            assert_eq!(count.load(Ordering::SeqCst), 1, "{case}");
        }
    }
}

#[test]
fn retriable_status_codes_retries_the_listed_codes_only() {
    for (status, retried) in [(418, true), (503, false)] {
        let (addr, count) = scripted(move |n, _| answer(if n == 0 { status } else { 200 }));
        let route = "retries: { on: [retriable-status-codes], retriable_status_codes: [418] }";
        let proxy = Proxy::start("uring", &config(route, &[addr], ""));
        let r = post(&mut http::connect(proxy.listener("web")), b"x");
        let expected = if retried { (200, 2) } else { (status, 1) };
        assert_eq!((r.status, attempts(&r)), expected, "{status}: {}", r.head);
        assert_eq!(count.load(Ordering::SeqCst), expected.1 as usize);
    }
}

#[test]
fn a_post_meeting_a_closed_pooled_connection_is_a_reset_not_a_refused_stream() {
    // The server answers the first request of each connection, then
    // closes on the next without a byte: the second POST meets that on a
    // pooled connection. HTTP/1.1 cannot prove a POST unprocessed (RFC
    // 9110 §9.2.2), so `refused-stream` does not retry it; `reset` does.
    for (on, retried) in [("[reset]", true), ("[refused-stream]", false)] {
        let (addr, count) = scripted(|_, k| if k == 0 { answer(200) } else { CLOSE });
        let route = format!("retries: {{ on: {on} }}");
        let proxy = Proxy::start("uring", &config(&route, &[addr], ""));
        let mut c = http::connect(proxy.listener("web"));
        assert_eq!(post(&mut c, b"1").status, 200);
        let r = post(&mut c, b"2");
        if retried {
            assert_eq!((r.status, attempts(&r)), (200, 2), "{on}: {}", r.head);
            assert_eq!(count.load(Ordering::SeqCst), 3);
        } else {
            assert_eq!(r.status, 502, "{on}: {}", r.head);
            assert!(r.text().contains("(UC)"), "{}", r.text());
        }
    }
}

#[test]
fn a_connect_failure_is_retried_on_another_endpoint() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let dead = dead_addr();
    for (on, all_ok) in [("[connect-failure]", true), ("[retriable-4xx]", false)] {
        let route = format!("retries: {{ on: {on} }}");
        let proxy = Proxy::start(
            "uring",
            &config(&route, &[dead, up.addr], "    connect_attempts: 1\n"),
        );
        let mut statuses = Vec::new();
        let mut retried = 0;
        // New client connections, spread over both workers' pickers.
        for _ in 0..8 {
            let r = post(&mut http::connect(proxy.listener("web")), b"x");
            retried += usize::from(attempts(&r) == 2);
            statuses.push(r.status);
        }
        if all_ok {
            assert!(statuses.iter().all(|&s| s == 200), "{on}: {statuses:?}");
            assert!(retried > 0, "the dead endpoint was never picked");
        } else {
            assert!(statuses.contains(&502), "{on}: {statuses:?}");
            assert_eq!(retried, 0);
        }
    }
}

#[test]
fn a_retry_goes_to_an_endpoint_not_tried_yet_unless_the_predicate_is_any() {
    // Random picks over a failing and a healthy endpoint: avoiding the
    // endpoint tried, every retry reaches the healthy one.
    let bad = Upstream::fixed(503);
    let good = Upstream::start(|_| Reply::ok("good"));
    for (predicate, always) in [("previous_hosts", true), ("any", false)] {
        let route = format!("retries: {{ on: [5xx], retry_host_predicate: {predicate} }}");
        let proxy = Proxy::start(
            "uring",
            &config(&route, &[bad.addr, good.addr], "    lb: random\n"),
        );
        let before = bad.request_count();
        let mut c = http::connect(proxy.listener("web"));
        let (mut failed, mut retried) = (0, 0);
        for _ in 0..200 {
            let r = post(&mut c, b"x");
            if r.status != 200 {
                failed += 1;
            }
            retried += usize::from(attempts(&r) == 2);
        }
        let to_bad = bad.request_count() - before;
        if always {
            assert_eq!(failed, 0, "{predicate}");
            assert_eq!(
                to_bad, retried,
                "each retried request met the bad endpoint once"
            );
            assert!(retried > 50, "{retried}");
        } else {
            // Half the retries return to the bad endpoint (binomial, ~25
            // of 200 requests fail).
            assert!(failed > 5, "{predicate}: {failed} failed");
        }
    }
}

#[test]
fn backoff_waits_are_jittered_below_envoys_exponential_ceilings() {
    let up = Upstream::fixed(503);
    let route = "retries: { on: [5xx], attempts: 3, backoff: { base: 40ms } }";
    let proxy = Proxy::start("uring", &config(route, &[up.addr], ""));
    let mut c = http::connect(proxy.listener("web"));
    let mut total = Duration::ZERO;
    let n = 30;
    for _ in 0..n {
        let t = Instant::now();
        let r = post(&mut c, b"x");
        let took = t.elapsed();
        assert_eq!((r.status, attempts(&r)), (503, 4), "{}", r.head);
        // Waits drawn from [0, 40), [0, 120), [0, 280) ms.
        assert!(
            took < Duration::from_millis(440 + 200),
            "{took:?} is past the backoff ceilings"
        );
        total += took;
    }
    assert_eq!(up.request_count(), 4 * n);
    // The expected mean wait is 20 + 60 + 140 = 220 ms.
    let mean = total / n as u32;
    assert!(
        mean > Duration::from_millis(110) && mean < Duration::from_millis(380),
        "mean {mean:?}"
    );
}

#[test]
fn retry_after_is_honoured_up_to_the_backoff_cap() {
    let up = Upstream::start(|_| Reply::status(503).header("Retry-After", "1"));
    // 1 s is past the default 250 ms cap: the retry waits the cap.
    let proxy = Proxy::start("uring", &config("retries: { on: [5xx] }", &[up.addr], ""));
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    let took = t.elapsed();
    assert_eq!((r.status, attempts(&r)), (503, 2), "{}", r.head);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(900),
        "{took:?}"
    );
    assert_eq!(up.request_count(), 2);
    // A 429 with `Retry-After: 0` is retried at once.
    let n = Arc::new(AtomicUsize::new(0));
    let m = n.clone();
    let limited = Upstream::start(move |_| {
        if m.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(429).header("Retry-After", "0")
        } else {
            Reply::ok("ok")
        }
    });
    let route = "retries: { on: [retriable-status-codes], retriable_status_codes: [429], backoff: { base: 1s } }";
    let proxy = Proxy::start("uring", &config(route, &[limited.addr], ""));
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    assert_eq!((r.status, attempts(&r)), (200, 2), "{}", r.head);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // With a 2 s cap, the retry waits the second asked for.
    let route = "retries: { on: [5xx], backoff: { base: 25ms, max: 2s } }";
    let proxy = Proxy::start("uring", &config(route, &[up.addr], ""));
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    let took = t.elapsed();
    assert_eq!((r.status, attempts(&r)), (503, 2), "{}", r.head);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1800),
        "{took:?}"
    );
}

#[test]
fn bodies_up_to_64_kib_are_replayed_whole_and_larger_ones_are_not_retried() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(move |r| {
        seen.lock().unwrap().push((r.path.clone(), r.body.clone()));
        // Every first attempt fails.
        if n.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            Reply::status(503)
        } else {
            Reply::ok(format!("{} {}", r.path, r.body.len()))
        }
    });
    let proxy = Proxy::start("uring", &config("retries: { on: [5xx] }", &[up.addr], ""));
    let addr = proxy.listener("web");
    // 60 KiB sent in two parts, 100 ms apart, with a pipelined GET right
    // behind it: the body is read whole before sending, the GET waits.
    let body: Vec<u8> = (0..60 * 1024).map(|i| (i % 251) as u8).collect();
    let mut c = http::connect(addr);
    let head = format!(
        "POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    http::send(&mut c, head.as_bytes()).expect("send");
    http::send(&mut c, &body[..1000]).expect("send");
    thread::sleep(Duration::from_millis(100));
    let mut rest = body[1000..].to_vec();
    rest.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: test\r\n\r\n");
    http::send(&mut c, &rest).expect("send");
    let r = http::read_response(&mut c, false).expect("response");
    assert_eq!((r.status, attempts(&r)), (200, 2), "{}", r.head);
    assert_eq!(r.text(), format!("/a {}", body.len()));
    let r = http::read_response(&mut c, false).expect("pipelined response");
    assert_eq!((r.status, r.text()), (200, "/b 0".to_owned()), "{}", r.head);
    // A chunked body in three chunks, the last one late, then a
    // pipelined GET.
    let chunked = b"POST /c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n \r\n";
    http::send(&mut c, chunked).expect("send");
    thread::sleep(Duration::from_millis(100));
    http::send(
        &mut c,
        b"5\r\nworld\r\n0\r\n\r\nGET /d HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .expect("send");
    let r = http::read_response(&mut c, false).expect("response");
    assert_eq!((r.status, attempts(&r)), (200, 2), "{}", r.head);
    assert_eq!(r.text(), "/c 11");
    let r = http::read_response(&mut c, false).expect("pipelined response");
    assert_eq!(r.text(), "/d 0");
    // `Expect: 100-continue`: the proxy asks for the body, then replays it.
    http::send(
        &mut c,
        b"POST /e HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("send");
    let interim = http::read_response(&mut c, false).expect("100 Continue");
    assert_eq!(interim.status, 100);
    http::send(&mut c, b"12345").expect("send");
    let r = http::read_response(&mut c, false).expect("response");
    assert_eq!(
        (r.status, attempts(&r), r.text()),
        (200, 2, "/e 5".to_owned())
    );
    // 100 KiB: streamed, and the 503 goes back.
    let big = vec![7u8; 100 * 1024];
    let r = http::request(&mut c, "POST", "/f", &[("Host", "test")], &big).expect("response");
    assert_eq!((r.status, attempts(&r)), (503, 1), "{}", r.head);
    let seen = bodies.lock().unwrap();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/a", "/a", "/b", "/b", "/c", "/c", "/d", "/d", "/e", "/e", "/f"
        ]
    );
    assert!(
        seen[0].1 == body && seen[1].1 == body,
        "both attempts got the body"
    );
    assert!(seen[4].1 == b"hello world" && seen[5].1 == b"hello world");
    assert!(seen[8].1 == b"12345" && seen[9].1 == b"12345");
    assert_eq!(seen[10].1.len(), big.len());
}

#[test]
fn a_retry_frees_its_max_retries_slot_when_its_response_head_arrives() {
    // The retried attempt answers a head and half its body, then the rest
    // a second later: the slot is free while the body streams.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let n = Arc::new(AtomicUsize::new(0));
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let n = n.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = s.write_all(
                        b"HTTP/1.1 503 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello");
                thread::sleep(Duration::from_secs(1));
                let _ = s.write_all(b"world");
                thread::sleep(Duration::from_secs(1));
            });
        }
    });
    let proxy = Proxy::start(
        "uring",
        &config(
            "retries: { on: [5xx] }",
            &[addr],
            "    circuit_breakers: { max_retries: 1 }\n",
        ),
    );
    let mut c = http::connect(proxy.listener("web"));
    http::send(&mut c, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut line = String::new();
        c.read_line(&mut line).expect("head");
        head.push_str(&line);
    }
    assert!(head.contains("x-ringmesh-attempts: 2"), "{head}");
    let active = proxy.metric("ringmesh_upstream_retries_active", &[("cluster", "app")]);
    assert_eq!(active, 0.0, "the slot is released with the head");
    let mut body = [0u8; 10];
    c.read_exact(&mut body).expect("body");
    assert_eq!(&body, b"helloworld");
}

#[test]
fn the_route_timeout_bounds_connect_failures_and_their_retries() {
    let hole = Blackhole::start();
    let route = "timeout: 1s, retries: { on: [connect-failure], attempts: 5 }";
    let proxy = Proxy::start(
        "uring",
        &config(
            route,
            &[hole.addr],
            "    connect_timeout: 3s\n    connect_attempts: 1\n",
        ),
    );
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(r.text().contains("(UT)"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[test]
fn a_discarded_response_read_whole_leaves_its_connection_pooled() {
    // The first answer (503, empty body) is all there: the retry may reuse
    // the connection. One endpoint, so the retry goes back to it.
    let (addr, _) = scripted(|n, _| answer(if n == 0 { 503 } else { 200 }));
    let proxy = Proxy::start("uring", &config("retries: { on: [5xx] }", &[addr], ""));
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    assert_eq!((r.status, attempts(&r)), (200, 2));
    let pool = |connection| {
        proxy.metric(
            "ringmesh_upstream_pool_requests_total",
            &[("cluster", "app"), ("connection", connection)],
        )
    };
    assert_eq!((pool("new"), pool("reused")), (1.0, 1.0));
}

#[test]
fn the_budget_stops_retries_at_20_percent_plus_10_per_second_across_both_workers() {
    let up = Upstream::fixed(503);
    let route = "retries: { on: [5xx], attempts: 3, backoff: { base: 1ms } }";
    let proxy = Proxy::start(
        "uring",
        &config(
            route,
            &[up.addr],
            "    circuit_breakers: { max_retries: 1000 }\n",
        ),
    );
    let addr = proxy.listener("web");
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut c = http::connect(addr);
                for _ in 0..125 {
                    assert_eq!(post(&mut c, b"x").status, 503);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "the run must fit in the 10 s window to check the sum: {took:?}"
    );
    let sent = proxy.metric(
        "ringmesh_retries_total",
        &[("cluster", "app"), ("result", "sent")],
    );
    let refused = proxy.metric(
        "ringmesh_retries_total",
        &[("cluster", "app"), ("result", "budget_exhausted")],
    );
    // 1,000 requests buy 200 retries, plus 10/s × 10 s = 100 in reserve;
    // a budget per worker would have granted up to twice that.
    assert!((250.0..=300.0).contains(&sent), "{sent} retries sent");
    assert!(refused > 0.0);
    assert_eq!(up.request_count(), 1000 + sent as usize);
}

#[test]
fn the_max_retries_breaker_refuses_retries_and_counts_overflow() {
    let up = Upstream::fixed(503);
    let proxy = Proxy::start(
        "uring",
        &config(
            "retries: { on: [5xx] }",
            &[up.addr],
            "    circuit_breakers: { max_retries: 0 }\n",
        ),
    );
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    assert_eq!((r.status, attempts(&r)), (503, 1));
    let labels = |result| [("cluster", "app"), ("result", result)];
    assert_eq!(
        proxy.metric("ringmesh_retries_total", &labels("overflow")),
        1.0
    );
    assert_eq!(proxy.metric("ringmesh_retries_total", &labels("sent")), 0.0);
}

#[test]
fn max_pending_requests_answers_503_uo_at_once_while_connects_are_in_progress() {
    let hole = Blackhole::start();
    let proxy = Proxy::start(
        "uring",
        &config(
            "timeout: 5s",
            &[hole.addr],
            "    connect_timeout: 3s\n    circuit_breakers: { max_pending_requests: 1 }\n",
        ),
    );
    let addr = proxy.listener("web");
    let waiting = thread::spawn(move || post(&mut http::connect(addr), b"x").status);
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = post(&mut http::connect(addr), b"x");
    assert_eq!(
        r.status,
        503,
        "{} {} after {:?}",
        r.head,
        r.text(),
        t.elapsed()
    );
    assert_eq!(r.header("x-ringmesh-overloaded"), Some("true"));
    assert!(r.text().contains("(UO)"));
    assert!(t.elapsed() < Duration::from_millis(500), "answered at once");
    // The first one's connect times out: 502 UF.
    assert_eq!(waiting.join().expect("client"), 502);
}

#[test]
fn the_route_timeout_answers_504_ut_and_is_counted_per_route_and_cluster() {
    let up = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(2)));
    let proxy = Proxy::start("uring", &config("timeout: 200ms", &[up.addr], ""));
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    assert_eq!(r.status, 504);
    assert!(r.text().contains("(UT)"));
    assert!(t.elapsed() < Duration::from_millis(1500));
    let labels = [
        ("listener", "web"),
        ("route", "r"),
        ("cluster", "app"),
        ("kind", "request"),
    ];
    assert_eq!(proxy.metric("ringmesh_http_timeouts_total", &labels), 1.0);
}

#[test]
fn a_per_try_timeout_is_retried_and_the_route_timeout_bounds_all_tries() {
    // The first attempt stalls 2 s; the retry answers at once.
    let (addr, count) = scripted(|n, _| Step {
        delay: if n == 0 {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        },
        answer: Some(200),
    });
    let route = "timeout: 3s, retries: { on: [reset], per_try_timeout: 150ms }";
    let proxy = Proxy::start("uring", &config(route, &[addr], ""));
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    assert_eq!((r.status, attempts(&r)), (200, 2), "{}", r.head);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let per_try = [
        ("listener", "web"),
        ("route", "r"),
        ("cluster", "app"),
        ("kind", "per_try"),
    ];
    assert_eq!(proxy.metric("ringmesh_http_timeouts_total", &per_try), 1.0);
    // Every attempt stalls: three tries of 150 ms would fit, but the route
    // timeout of 400 ms ends them (504, counted as a route timeout).
    let slow = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(2)));
    let route = "timeout: 400ms, per_try_timeout: 150ms, retries: { on: [reset], attempts: 5, backoff: { base: 1ms } }";
    let proxy = Proxy::start("uring", &config(route, &[slow.addr], ""));
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    assert!(attempts(&r) >= 2, "{}", r.head);
    let request = [
        ("listener", "web"),
        ("route", "r"),
        ("cluster", "app"),
        ("kind", "request"),
    ];
    assert_eq!(proxy.metric("ringmesh_http_timeouts_total", &request), 1.0);
}

#[test]
fn a_per_try_timeout_without_retries_answers_504() {
    let up = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(2)));
    let proxy = Proxy::start("uring", &config("per_try_timeout: 150ms", &[up.addr], ""));
    let t = Instant::now();
    let r = post(&mut http::connect(proxy.listener("web")), b"x");
    assert_eq!((r.status, attempts(&r)), (504, 1));
    assert!(t.elapsed() < Duration::from_millis(1000));
}

#[test]
fn an_idle_stream_is_cut_when_the_upstream_stalls_mid_body_and_408_when_the_client_does() {
    // The upstream sends the head and half the body, then nothing.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello");
                thread::sleep(Duration::from_secs(5));
            });
        }
    });
    let proxy = Proxy::start("uring", &config("idle_timeout: 300ms", &[addr], ""));
    let mut c = http::connect(proxy.listener("web"));
    let t = Instant::now();
    http::send(&mut c, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello"), "the stream is cut: {text}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    let idle = [
        ("listener", "web"),
        ("route", "r"),
        ("cluster", "app"),
        ("kind", "idle"),
    ];
    assert_eq!(
        proxy.wait_metric(
            "ringmesh_http_timeouts_total",
            &idle,
            Duration::from_secs(2),
            |v| v >= 1.0
        ),
        1.0
    );
    // A client that stops mid-body gets 408 (flag SI).
    let up = Upstream::echo();
    let proxy = Proxy::start("uring", &config("idle_timeout: 300ms", &[up.addr], ""));
    let mut c = http::connect(proxy.listener("web"));
    http::send(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc",
    )
    .expect("send");
    let r = http::read_response(&mut c, false).expect("response");
    assert_eq!(r.status, 408, "{}", r.head);
    assert!(r.text().contains("(SI)"), "{}", r.text());
    assert!(r.closes());
}

#[test]
fn the_access_log_records_the_attempts() {
    let (addr, _) = scripted(|n, _| answer(if n == 0 { 503 } else { 200 }));
    let yaml = config("retries: { on: [5xx] }", &[addr], "")
        .replace("access_log: false", "access_log: true");
    let proxy = Proxy::start("uring", &yaml);
    let mut c = http::connect(proxy.listener("web"));
    assert_eq!(post(&mut c, b"x").status, 200);
    drop(c);
    let line = proxy
        .wait_log(Duration::from_secs(5), |v| v["attempts"].is_number())
        .unwrap_or_else(|| panic!("no request log line: {}", proxy.log_text()));
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["status"], 200, "{line}");
}

#[test]
fn retry_settings_are_checked() {
    let up = Upstream::echo();
    let proxy = Proxy::start("uring", &config("retries: { on: [5xx] }", &[up.addr], ""));
    for (route, path, says) in [
        (
            "retries: { on: [5xx, sometimes] }",
            "listeners[0].routes[0].retries.on[1]",
            "unknown retry condition",
        ),
        (
            "retries: { attempts: 11 }",
            "listeners[0].routes[0].retries.attempts",
            "",
        ),
        (
            "per_try_timeout: 1s, retries: { per_try_timeout: 2s }",
            "listeners[0].routes[0].retries",
            "set it once",
        ),
        (
            "retries: { backoff: { base: 1s, max: 10ms } }",
            "listeners[0].routes[0].retries.backoff.max",
            "shorter",
        ),
        (
            "retries: { retry_host_predicate: elsewhere }",
            "listeners[0].routes[0].retries.retry_host_predicate",
            "previous_hosts",
        ),
        (
            "retries: { retriable_status_codes: [600] }",
            "listeners[0].routes[0].retries.retriable_status_codes[0]",
            "",
        ),
    ] {
        let r = proxy.put_config(&config(route, &[up.addr], ""));
        assert_eq!(r.status, 400, "{route}: {}", r.body);
        assert_eq!(r.error_paths(), [path], "{route}: {}", r.body);
        assert!(r.body.contains(says), "{route}: {}", r.body);
    }
    let r = proxy.put_config(&config(
        "retries: { on: [5xx] }",
        &[up.addr],
        "    retry_budget: { retry_ratio: 11 }\n",
    ));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_paths(), ["clusters[0].retry_budget.retry_ratio"]);
}
