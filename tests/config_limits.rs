//! No config input takes the proxy down: an alias bomb, a huge file, an
//! endless file, a million bad keys, a 1 MB name. Each path a config or
//! endpoint list arrives by (`validate`, `run`, SIGHUP, `PUT /config`,
//! endpoints files, `PUT /clusters/{name}/endpoints`) refuses them with a
//! short, positioned error, quickly, while the proxy keeps serving.

mod helpers;

use std::process::Command;
use std::time::{Duration, Instant};

use helpers::admin::{self, request_bytes};
use helpers::proxy::{Proxy, binary, one_listener};
use helpers::tcp::{self, EchoServer};

/// "Billion laughs": nine levels of nine aliases, 9^9 values in ~520 bytes.
fn alias_bomb() -> String {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..=9 {
        let p = i - 1;
        let uses = vec![format!("*a{p}"); 9].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{uses}]\n"));
    }
    text
}

/// Runs `ringmesh validate` on `text`; (exit code, stderr, time taken).
fn validate(text: &[u8]) -> (i32, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    validate_path(&path.display().to_string())
}

fn validate_path(path: &str) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = Command::new(binary())
        .args(["validate", "-c", path])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// A proxy with an `api` cluster in front of an echo server, and a check
/// that it still forwards.
fn serving_proxy(echo: &EchoServer) -> Proxy {
    Proxy::start(
        "uring",
        &one_listener("l", &[echo.addr], "", "discovery: api"),
    )
}

/// Sends a request head announcing `length` body bytes and no body; the
/// response's first line and headers.
fn head_only(admin: std::net::SocketAddr, request_line: &str, length: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{request_line} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/yaml\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn assert_still_serving(proxy: &Proxy) {
    let mut c = tcp::connect(proxy.listener("l"));
    assert_eq!(
        tcp::echo_roundtrip(&mut c, b"still here").unwrap(),
        b"still here"
    );
    assert_eq!(proxy.get("/live").status, 200);
}

#[test]
fn validate_refuses_an_alias_bomb_by_name_and_position_at_once() {
    let (code, stderr, took) = validate(alias_bomb().as_bytes());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(":7:"), "the alias's line: {stderr}");
    assert!(stderr.contains("alias `a5`"), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn run_refuses_an_alias_bomb_and_an_endless_file() {
    let err = match Proxy::start_with(&alias_bomb(), &[]) {
        Ok(_) => panic!("an alias bomb must not start"),
        Err(e) => e,
    };
    assert!(err.contains("alias `a5`"), "{err}");
    // `-c /dev/zero` is refused after 16 MiB, not read until memory runs out.
    let (code, stderr, _) = validate_path("/dev/zero");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("larger than 16 MiB"), "{stderr}");
    let out = Command::new(binary())
        .args(["run", "-c", "/dev/zero"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than 16 MiB"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_alias_bomb_through_put_config_and_sighup_leaves_the_proxy_serving() {
    let echo = EchoServer::start();
    let proxy = serving_proxy(&echo);
    let r = proxy.put_config(&alias_bomb());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("alias `a5`"), "{}", r.body);
    assert_still_serving(&proxy);

    std::fs::write(&proxy.config_path, alias_bomb()).unwrap();
    proxy.signal(libc::SIGHUP);
    let rejected = proxy.wait_metric(
        "ringmesh_config_reloads_total",
        &[("result", "rejected")],
        Duration::from_secs(10),
        |v| v >= 2.0,
    );
    assert_eq!(rejected, 2.0);
    assert_still_serving(&proxy);
}

#[test]
fn an_alias_bomb_as_an_endpoint_list_is_refused_and_counted() {
    let echo = EchoServer::start();
    let proxy = serving_proxy(&echo);
    let r = admin::request(proxy.admin, "PUT", "/clusters/l/endpoints", &alias_bomb()).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("alias `a5`"), "{}", r.body);
    assert_eq!(
        proxy.metric("ringmesh_discovery_errors_total", &[("cluster", "l")]),
        1.0
    );
    // An empty body is a mistake, not "remove every endpoint".
    let r = admin::request(proxy.admin, "PUT", "/clusters/l/endpoints", "").unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("send `[]`"), "{}", r.body);
    assert_eq!(
        proxy.metric("ringmesh_discovery_errors_total", &[("cluster", "l")]),
        2.0
    );
    assert_still_serving(&proxy);
    // `[]` does empty the cluster.
    let r = admin::request(proxy.admin, "PUT", "/clusters/l/endpoints", "[]").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["endpoints"], 0);
}

#[test]
fn an_alias_bomb_in_a_watched_endpoints_file_keeps_the_last_list() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, format!("- \"{}\"\n", echo.addr)).unwrap();
    let proxy = Proxy::start(
        "uring",
        &one_listener(
            "l",
            &[],
            "",
            &format!(
                "discovery: {{ type: file, path: \"{}\", interval: 50ms }}",
                file.display()
            ),
        )
        .replace("    endpoints: []\n", ""),
    );
    assert_still_serving(&proxy);
    std::fs::write(&file, alias_bomb()).unwrap();
    let errors = proxy.wait_metric(
        "ringmesh_discovery_errors_total",
        &[("cluster", "l")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert!(errors >= 1.0);
    let state = &proxy.get("/clusters").json()["clusters"][0]["discovery"];
    assert!(
        state["last_error"].as_str().unwrap_or("").contains("alias"),
        "{state}"
    );
    assert_still_serving(&proxy);
}

#[test]
fn a_million_bad_keys_get_a_short_answer_quickly() {
    let echo = EchoServer::start();
    let proxy = serving_proxy(&echo);
    let text: String = (0..50_000).map(|i| format!("k{i}: {i}\n")).collect();
    let started = Instant::now();
    let r = proxy.put_config(&text);
    let took = started.elapsed();
    assert_eq!(r.status, 400);
    assert!(r.body.len() < 64 * 1024, "{} bytes", r.body.len());
    assert!(
        r.body.contains("and 49900 more errors"),
        "{}",
        &r.body[..2000]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_still_serving(&proxy);
}

#[test]
fn a_huge_value_is_quoted_short() {
    let echo = EchoServer::start();
    let proxy = serving_proxy(&echo);
    let name = "x".repeat(1 << 20);
    let config = format!(
        "listeners:\n  - name: {name}\n    listen: 127.0.0.1:1\n    cluster: c\nclusters: [{{name: c, endpoints: []}}]\n"
    );
    let r = proxy.put_config(&config);
    assert_eq!(r.status, 400);
    assert!(r.body.len() < 4096, "{} bytes", r.body.len());
    assert!(r.body.contains("(1048576 bytes)"), "{}", r.body);
}

#[test]
fn every_rejected_config_is_counted_whatever_the_reason() {
    let echo = EchoServer::start();
    let proxy = serving_proxy(&echo);
    // Declared larger than 2 MiB: refused before the body is read.
    let r = head_only(proxy.admin, "PUT /config", 3 << 20);
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    let rejections: Vec<(&str, Vec<u8>, u16)> = vec![
        ("syntax", b"listeners: [".to_vec(), 400),
        ("unknown key", b"nope: 1\n".to_vec(), 400),
        ("alias bomb", alias_bomb().into_bytes(), 400),
        ("not UTF-8", b"listeners: [\xff]".to_vec(), 400),
        ("empty", Vec::new(), 400),
        (
            "admin moved",
            b"admin: { listen: 127.0.0.1:1 }\n".to_vec(),
            400,
        ),
    ];
    for (what, body, status) in &rejections {
        let r = request_bytes(proxy.admin, "PUT", "/config", body).unwrap();
        assert_eq!(r.status, *status, "{what}: {}", r.body);
    }
    assert_eq!(
        proxy.metric("ringmesh_config_reloads_total", &[("result", "rejected")]),
        rejections.len() as f64 + 1.0
    );
    assert_eq!(
        proxy.metric(
            "ringmesh_admin_requests_refused_total",
            &[("reason", "too_large")]
        ),
        1.0
    );
    assert_still_serving(&proxy);
}
