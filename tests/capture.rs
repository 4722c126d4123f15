//! Transparent sidecar capture (docs/capture.md), Istio's 15001/15006
//! pattern, with real iptables `REDIRECT` rules in a network namespace
//! (`helpers/netns.rs`): the test's thread, the proxy process and the
//! servers all live in a fresh namespace with only loopback, and the
//! namespace and its rules are removed when the test ends, pass or fail.
//!
//! How the proxy's own connections escape capture (else it would capture
//! itself in a loop), as a real sidecar does:
//! - outbound (15001 style): the rule skips group 1337, and the proxy runs
//!   as that group (`setpriv --regid=1337`; Istio's sidecar runs as uid and
//!   gid 1337 and its rules skip both). Only the group is changed so that
//!   the proxy, still root, can read its config;
//! - inbound (15006 style): the rule captures a "pod address" (127.0.0.5
//!   here), and the cluster rewrites the destination to 127.0.0.1, which no
//!   rule captures (Istio leaves loopback alone too).
//!
//! Each test needs root, `ip`, `iptables` and `setpriv`; elsewhere it prints
//! `SKIPPED: <reason>` and passes.

mod helpers;
#[path = "helpers/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::{Proxy, binary};
use helpers::tcp::{self, EchoServer};
use netns::{AS_PROXY_GROUP, Netns, PROXY_GID, redirect_rule};

/// Enters a fresh namespace, or prints why not and returns from the test.
macro_rules! netns_or_skip {
    () => {
        match Netns::enter() {
            Ok(ns) => ns,
            Err(why) => {
                println!("SKIPPED: {why}");
                return;
            }
        }
    };
}

/// Starts the proxy in the current namespace, as group 1337, on `engine`
/// with 2 workers.
fn start(engine: &str, config: &str) -> Proxy {
    Proxy::start_wrapped(
        config,
        &["--io-engine", engine, "--workers", "2"],
        AS_PROXY_GROUP,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A config with the given listeners and clusters (YAML list items).
fn config(listeners: &str, clusters: &str) -> String {
    format!("admin:\n  listen: 127.0.0.1:0\nlisteners:\n{listeners}clusters:\n{clusters}")
}

/// The outbound pair: a TCP listener on `listen` that captures, and the
/// cluster that forwards to each connection's original destination.
fn outbound(listen: &str, cluster_extra: &str) -> String {
    config(
        &format!(
            "  - name: outbound\n    listen: {listen}\n    original_destination: true\n    cluster: passthrough\n"
        ),
        &format!("  - name: passthrough\n    discovery: original_destination\n{cluster_extra}"),
    )
}

/// The access-log line of the connection that closed with `reason`.
fn closed_with(proxy: &Proxy, reason: &str) -> serde_json::Value {
    proxy
        .wait_log(Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["reason"] == reason
        })
        .unwrap_or_else(|| panic!("no `{reason}` access-log line in:\n{}", proxy.log_text()))
}

on_both_engines! {
    fn outbound_connections_reach_their_original_destination_intact(engine) {
        let mut ns = netns_or_skip!();
        const LEN: usize = 2 << 20;
        let (app, reports) = tcp::exchange_server(11, LEN);
        // A wildcard listener: the proxy tells redirected connections from
        // direct ones by the connection's own local address.
        let proxy = start(engine, &outbound("0.0.0.0:0", ""));
        let port = proxy.listener("outbound").port();
        ns.add_rule("iptables", redirect_rule("127.0.0.1", app.port(), Some(PROXY_GID), port));

        // The client only knows the application's address.
        let client = tcp::connect(app);
        let mut writer = client.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let sent = tcp::send_payload(&mut writer, 12, LEN).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
            sent
        });
        let (got, got_hash) = tcp::receive_all(&mut &client).unwrap();
        let sent_hash = sender.join().unwrap();
        let (app_got, app_got_hash, app_sent_hash) =
            reports.recv_timeout(Duration::from_secs(30)).expect("the application saw the connection end");
        assert_eq!((got, got_hash), (LEN, app_sent_hash), "application -> client intact");
        assert_eq!((app_got, app_got_hash), (LEN, sent_hash), "client -> application intact");

        // It went through the proxy, which connected to the original
        // destination itself.
        let line = closed_with(&proxy, "completed");
        assert_eq!(line["listener"], "outbound");
        assert_eq!(line["cluster"], "passthrough");
        assert_eq!(line["original_destination"], app.to_string());
        assert_eq!(line["endpoint"], app.to_string());
        assert_eq!(line["bytes_received"], LEN as u64);
        assert_eq!(line["bytes_sent"], LEN as u64);
        let cluster = [("cluster", "passthrough")];
        assert_eq!(proxy.metric("ringmesh_upstream_connections_total", &cluster), 1.0);
        assert_eq!(proxy.metric("ringmesh_upstream_connections_active", &cluster), 0.0);
        let completed = [("listener", "outbound"), ("reason", "completed")];
        assert_eq!(proxy.metric("ringmesh_downstream_connections_closed_total", &completed), 1.0);
    }
}

#[test]
fn inbound_connections_go_to_the_application_on_loopback() {
    let mut ns = netns_or_skip!();
    // The application listens on loopback only; the "pod address"
    // 127.0.0.5 has nothing on the port until the rule captures it.
    let app = EchoServer::start();
    let pod = SocketAddr::from(([127, 0, 0, 5], app.addr.port()));
    assert!(
        TcpStream::connect_timeout(&pod, Duration::from_secs(2)).is_err(),
        "nothing listens on the pod address before capture"
    );
    let proxy = start(
        "uring",
        &config(
            "  - name: inbound\n    listen: 127.0.0.1:0\n    original_destination: true\n    cluster: inbound\n",
            "  - name: inbound\n    discovery: original_destination\n    original_destination: { host: 127.0.0.1 }\n",
        ),
    );
    let port = proxy.listener("inbound").port();
    // No owner exclusion: the proxy's own connection goes to 127.0.0.1,
    // which the rule does not capture.
    ns.add_rule(
        "iptables",
        redirect_rule("127.0.0.5", app.addr.port(), None, port),
    );

    let mut client = tcp::connect(pod);
    assert_eq!(tcp::echo_roundtrip(&mut client, b"ping").unwrap(), b"ping");
    drop(client);
    let line = closed_with(&proxy, "completed");
    assert_eq!(line["original_destination"], pod.to_string());
    assert_eq!(
        line["endpoint"],
        app.addr.to_string(),
        "the IP rewritten, the port kept"
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn connections_not_redirected_are_closed_and_counted() {
    let _ns = netns_or_skip!();
    let app = EchoServer::start();
    // One listener bound to an address, one to the wildcard (checked
    // against the connection's own local address).
    let proxy = start(
        "uring",
        &config(
            "  - name: direct\n    listen: 127.0.0.1:0\n    original_destination: true\n    cluster: passthrough\n  - name: wild\n    listen: 0.0.0.0:0\n    original_destination: true\n    cluster: passthrough\n",
            "  - name: passthrough\n    discovery: original_destination\n",
        ),
    );
    for name in ["direct", "wild"] {
        let addr = SocketAddr::from(([127, 0, 0, 1], proxy.listener(name).port()));
        // Connecting to the proxy's own port: its "original destination"
        // is the proxy itself, and forwarding there would loop.
        let mut s = tcp::connect(addr);
        let _ = s.write_all(b"hello");
        let took = tcp::wait_closed(&mut s, Duration::from_secs(5)).expect("closed at once");
        assert!(took < Duration::from_secs(2), "{name}: {took:?}");
        let labels = [("listener", name), ("reason", "not_redirected")];
        assert_eq!(
            proxy.wait_metric(
                "ringmesh_downstream_connections_closed_total",
                &labels,
                Duration::from_secs(5),
                |v| v >= 1.0
            ),
            1.0,
            "{name}"
        );
    }
    let line = closed_with(&proxy, "not_redirected");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("not redirected"),
        "{line}"
    );
    assert_eq!(line["endpoint"], "-");
    assert_eq!(
        proxy.metric(
            "ringmesh_upstream_connections_total",
            &[("cluster", "passthrough")]
        ),
        0.0
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn ipv6_outbound_connections_reach_their_original_destination() {
    let mut ns = netns_or_skip!();
    if let Err(why) = ns.ipv6() {
        println!("SKIPPED: {why}");
        return;
    }
    let app = EchoServer::start_on("[::1]:0");
    let proxy = start("uring", &outbound("\"[::1]:0\"", ""));
    let port = proxy.listener("outbound").port();
    ns.add_rule(
        "ip6tables",
        redirect_rule("::1", app.addr.port(), Some(PROXY_GID), port),
    );

    let mut client = tcp::connect(app.addr);
    assert_eq!(
        tcp::echo_roundtrip(&mut client, b"over six").unwrap(),
        b"over six"
    );
    drop(client);
    let line = closed_with(&proxy, "completed");
    assert_eq!(line["original_destination"], app.addr.to_string());
    assert_eq!(line["endpoint"], app.addr.to_string());
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn an_http_route_forwards_to_the_connections_original_destination() {
    let mut ns = netns_or_skip!();
    let app = Upstream::start(|_| Reply::ok("from the application"));
    let other = Upstream::start(|_| Reply::ok("from the static cluster"));
    let proxy = start(
        "uring",
        &config(
            "  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    original_destination: true\n    routes:\n      - match: { path_prefix: /static }\n        cluster: static\n      - match: { path_prefix: / }\n        cluster: passthrough\n",
            &format!(
                "  - name: passthrough\n    discovery: original_destination\n  - name: static\n    endpoints: [\"{}\"]\n",
                other.addr
            ),
        ),
    );
    let port = proxy.listener("web").port();
    ns.add_rule(
        "iptables",
        redirect_rule("127.0.0.1", app.addr.port(), Some(PROXY_GID), port),
    );

    // Two requests on one captured keep-alive connection: the first goes
    // where the client was connecting, the second where its route says.
    let mut c = http::connect(app.addr);
    http::send(&mut c, b"GET /page HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
    let r = http::read_response(&mut c, false).unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "from the application".to_owned())
    );
    http::send(&mut c, b"GET /static/x HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
    let r = http::read_response(&mut c, false).unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "from the static cluster".to_owned())
    );
    assert_eq!(app.request_lines(), ["GET /page HTTP/1.1"]);
    assert_eq!(other.request_lines(), ["GET /static/x HTTP/1.1"]);
    let line = proxy
        .wait_log(Duration::from_secs(10), |v| {
            v["message"] == "request" && v["path"] == "/page"
        })
        .unwrap_or_else(|| panic!("no request line in:\n{}", proxy.log_text()));
    assert_eq!(line["cluster"], "passthrough");
    assert_eq!(line["upstream"], app.addr.to_string());
    assert_eq!(line["status"], 200);
}

#[test]
fn breakers_and_connect_failures_count_as_for_any_cluster() {
    let mut ns = netns_or_skip!();
    let app = EchoServer::start();
    // On 127.0.0.1, which the redirect rule captures (inside this test's
    // own namespace, where no other test can take the port).
    let dead = tcp::closed_port_on("127.0.0.1");
    let proxy = start(
        "uring",
        &outbound(
            "127.0.0.1:0",
            "    connect_timeout: 1s\n    circuit_breakers: { max_connections: 1 }\n",
        ),
    );
    let port = proxy.listener("outbound").port();
    for target in [app.addr, dead] {
        ns.add_rule(
            "iptables",
            redirect_rule("127.0.0.1", target.port(), Some(PROXY_GID), port),
        );
    }
    let cluster = [("cluster", "passthrough")];

    // max_connections: 1 holds for original destinations too.
    let mut first = tcp::connect(app.addr);
    assert_eq!(tcp::echo_roundtrip(&mut first, b"one").unwrap(), b"one");
    let mut second = tcp::connect(app.addr);
    let _ = second.write_all(b"two");
    tcp::wait_closed(&mut second, Duration::from_secs(5)).expect("the breaker refuses the second");
    assert_eq!(
        proxy.wait_metric(
            "ringmesh_upstream_overflow_total",
            &cluster,
            Duration::from_secs(5),
            |v| v >= 1.0
        ),
        1.0
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    drop(first);
    assert_eq!(
        proxy.wait_metric(
            "ringmesh_upstream_connections_active",
            &cluster,
            Duration::from_secs(5),
            |v| v == 0.0
        ),
        0.0
    );

    // A destination that refuses: counted as a connect failure, and the
    // client is closed, as for any cluster.
    let mut refused = tcp::connect(dead);
    let _ = refused.write_all(b"anyone?");
    let mut buf = [0u8; 8];
    assert!(
        matches!((&refused).read(&mut buf), Ok(0) | Err(_)),
        "closed without an answer"
    );
    assert_eq!(
        proxy.wait_metric(
            "ringmesh_upstream_connect_failures_total",
            &cluster,
            Duration::from_secs(5),
            |v| v >= 1.0
        ),
        1.0
    );
    let line = closed_with(&proxy, "upstream_unavailable");
    assert_eq!(line["original_destination"], dead.to_string());
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains(&dead.to_string()),
        "{line}"
    );
}

/// Runs `ringmesh validate` on `yaml`; returns (exit code, stderr, path).
fn validate(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(binary())
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn config_mistakes_are_reported_with_their_positions() {
    let yaml = "\
admin:
  listen: 127.0.0.1:0
listeners:
  - name: plain
    listen: 127.0.0.1:0
    cluster: passthrough
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    routes:
      - match: { path_prefix: / }
        split: [ { cluster: passthrough, weight: 1 }, { cluster: static, weight: 1 } ]
clusters:
  - name: passthrough
    discovery: original_destination
    endpoints: [\"127.0.0.1:80\"]
    lb: random
    health_check: { interval: 1s }
  - name: inbound
    discovery: { type: original_destination }
    original_destination: { host: localhost }
  - name: static
    endpoints: [\"127.0.0.1:80\"]
    original_destination: { host: 127.0.0.1 }
";
    let (code, stderr, file) = validate(yaml);
    assert_eq!(code, 1, "{stderr}");
    for (line, col, path, message) in [
        (
            6,
            14,
            "listeners[0].cluster",
            "listener `plain` does not recover it: set `original_destination: true`",
        ),
        (
            12,
            29,
            "listeners[1].routes[0].split[0].cluster",
            "cluster `passthrough` forwards to each connection's original destination",
        ),
        (16, 16, "clusters[0].endpoints", "remove `endpoints`"),
        (
            17,
            9,
            "clusters[0].lb",
            "`lb` does not apply to `original_destination` discovery",
        ),
        (
            18,
            19,
            "clusters[0].health_check",
            "`health_check` does not apply",
        ),
        (
            21,
            35,
            "clusters[1].original_destination.host",
            "invalid host `localhost`",
        ),
        (
            24,
            27,
            "clusters[2].original_destination",
            "need `discovery: original_destination`",
        ),
    ] {
        let prefix = format!("{file}:{line}:{col}: {path}: ");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(message)),
            "expected `{prefix}...{message}...` in:\n{stderr}"
        );
    }
    assert!(stderr.contains("7 error(s)"), "{stderr}");

    let good = "\
admin:
  listen: 127.0.0.1:0
listeners:
  - name: outbound
    listen: 127.0.0.1:15001
    original_destination: true
    cluster: passthrough
  - name: inbound
    listen: 0.0.0.0:15006
    protocol: http
    original_destination: true
    cluster: inbound
clusters:
  - name: passthrough
    discovery: original_destination
  - name: inbound
    discovery: original_destination
    original_destination: { host: 127.0.0.1 }
    circuit_breakers: { max_connections: 100 }
";
    let (code, stderr, _) = validate(good);
    assert_eq!(code, 0, "{stderr}");
}
