//! Live tap (README "Tap"): `GET /tap` streams the records of finished
//! requests that match its filters as newline-delimited JSON, `ringmesh
//! ctl tap` prints them, and a reader that does not keep up loses records
//! without slowing a single request.

mod helpers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::{Proxy, binary};
use serde_json::Value;

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:0\ntracing: {{ sampling: 100 }}\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    routes:\n      - {{ name: api, match: {{ path_prefix: /api }}, cluster: app }}\n      - {{ name: other, cluster: app }}\nclusters:\n  - name: app\n    endpoints: [\"{upstream}\"]\n"
    )
}

fn upstream() -> Upstream {
    Upstream::start(|r| {
        if r.path.ends_with("/fail") {
            Reply::status(503)
        } else {
            Reply::ok("ok")
        }
    })
}

/// Waits until the proxy reports `n` open taps.
fn wait_taps(proxy: &Proxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if proxy.get("/listeners").status == 200 && open_taps(proxy) == n {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{n} taps never opened");
}

fn open_taps(proxy: &Proxy) -> usize {
    proxy.metric("ringmesh_admin_taps_open", &[]) as usize
}

#[test]
fn ctl_tap_prints_the_matching_requests_and_stops_at_its_limit() {
    let up = upstream();
    let proxy = Proxy::start("uring", &config(up.addr));
    let mut tap = Command::new(binary())
        .args([
            "ctl",
            "tap",
            "--admin",
            &proxy.admin.to_string(),
            "--route",
            "api",
            "--status",
            "5xx",
            "--limit",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringmesh ctl tap");
    wait_taps(&proxy, 1);
    let mut c = http::connect(proxy.listener("web"));
    for path in [
        "/api/ok",
        "/other/fail",
        "/api/fail",
        "/api/ok",
        "/api/fail",
        "/api/fail",
    ] {
        http::request(&mut c, "GET", path, &[("Host", "shop")], b"").expect("response");
    }
    let mut out = String::new();
    tap.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let status = tap.wait().expect("exit");
    assert!(status.success(), "{status}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for l in &lines {
        assert_eq!(l["route"], "api");
        assert_eq!(l["status"], 503);
        assert_eq!(l["path"], "/api/fail");
        assert_eq!(l["method"], "GET");
        assert_eq!(l["cluster"], "app");
        assert_eq!(l["listener"], "web");
        assert_eq!(l["trace_id"].as_str().map(str::len), Some(32));
        assert!(l["duration_ms"].as_f64().is_some());
    }
    // The tap closed with the stream.
    wait_taps(&proxy, 0);
}

#[test]
fn a_reader_that_does_not_keep_up_loses_records_not_requests() {
    let up = upstream();
    let proxy = Proxy::start("uring", &config(up.addr));
    // A tap whose reader reads nothing for a while.
    // A small receive buffer, so the proxy's side fills up soon.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&proxy.admin.into()).expect("admin");
    let mut reader: TcpStream = socket.into();
    write!(reader, "GET /tap HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.admin).expect("request");
    wait_taps(&proxy, 1);
    let addr = proxy.listener("web");
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut c = http::connect(addr);
                for _ in 0..4000 {
                    let r = http::request(&mut c, "GET", "/api/ok", &[("Host", "shop")], b"")
                        .expect("response");
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // Reading now: the records that fit, then a line saying how many were
    // dropped.
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut lines = BufReader::new(reader).lines();
    let mut dropped = 0;
    let mut read = 0;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        read += 1;
        if let Some(start) = line.find("{\"dropped\"") {
            let v: Value = serde_json::from_str(&line[start..]).expect("json");
            dropped = v["dropped"].as_u64().unwrap_or(0);
            break;
        }
    }
    assert!(
        dropped > 0,
        "a slow reader's records are dropped and counted ({read} lines read)"
    );
}

#[test]
fn bad_tap_filters_are_refused() {
    let up = upstream();
    let proxy = Proxy::start("uring", &config(up.addr));
    for query in ["status=6xx", "limit=0", "colour=red"] {
        let r = proxy.get(&format!("/tap?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.body);
    }
    let out = Command::new(binary())
        .args([
            "ctl",
            "tap",
            "--admin",
            &proxy.admin.to_string(),
            "--status",
            "6xx",
        ])
        .output()
        .expect("ringmesh ctl tap");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{out:?}"
    );
}
