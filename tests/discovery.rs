//! Endpoint discovery over real sockets, with two workers: DNS names
//! re-resolved against a DNS server the test runs (TTL-driven, last good
//! answer kept on failure), a watched endpoints file, and
//! `PUT /clusters/{name}/endpoints`.

mod helpers;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use helpers::admin;
use helpers::dns::DnsServer;
use helpers::proxy::Proxy;
use helpers::tcp::{self, EchoServer};

fn two_workers(config: &str) -> Proxy {
    Proxy::start_with(config, &["--workers", "2"]).unwrap()
}

fn config(cluster: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners: [ {{ name: l, listen: 127.0.0.1:0, cluster: c }} ]\nclusters:\n  - name: c\n{cluster}"
    )
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn cluster(proxy: &Proxy) -> serde_json::Value {
    proxy.get("/clusters").json()["clusters"][0].clone()
}

fn addresses(proxy: &Proxy) -> Vec<String> {
    cluster(proxy)["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["address"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `n` echo round trips through the proxy.
fn traffic(proxy: &Proxy, n: usize) {
    for i in 0..n {
        let mut c = tcp::connect(proxy.listener("l"));
        let msg = format!("m{i}");
        assert_eq!(
            tcp::echo_roundtrip(&mut c, msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
}

/// Echo servers on the same port at 127.0.0.1 and 127.0.0.2, so a DNS
/// answer alone decides which one a connection reaches.
fn twin_echo_servers() -> (EchoServer, EchoServer) {
    for _ in 0..20 {
        let first = EchoServer::start_on("127.0.0.1:0");
        let port = first.addr.port();
        if std::net::TcpListener::bind(("127.0.0.2", port)).is_ok() {
            return (first, EchoServer::start_on(&format!("127.0.0.2:{port}")));
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[test]
fn dns_names_are_re_resolved_when_their_ttl_runs_out_and_a_failure_keeps_the_last_answer() {
    let (one, two) = twin_echo_servers();
    let port = one.addr.port();
    let dns = DnsServer::start(1, &[Ipv4Addr::new(127, 0, 0, 1)]);
    // refresh is 1h: only the 1 s TTL can make the proxy ask again.
    let proxy = two_workers(&config(&format!(
        "    endpoints: [\"svc.ringmesh.test:{port}\"]\n    discovery: {{ type: dns, refresh: 1h, resolver: \"{}\" }}\n",
        dns.addr
    )));
    assert_eq!(addresses(&proxy), [format!("127.0.0.1:{port}")]);
    traffic(&proxy, 6);
    assert_eq!(one.accepted.load(Ordering::SeqCst), 6);
    assert_eq!(cluster(&proxy)["discovery"]["type"], "dns");
    assert_eq!(
        cluster(&proxy)["endpoints"][0]["hostname"],
        "svc.ringmesh.test"
    );

    dns.set(&[Ipv4Addr::new(127, 0, 0, 2)]);
    wait_until(Duration::from_secs(10), "the new DNS answer", || {
        addresses(&proxy) == [format!("127.0.0.2:{port}")]
    });
    traffic(&proxy, 6);
    assert_eq!(two.accepted.load(Ordering::SeqCst), 6);

    // The name server fails: the last good answer stays in use.
    dns.fail(true);
    wait_until(Duration::from_secs(10), "a failed re-resolution", || {
        cluster(&proxy)["discovery"]["errors"].as_u64() >= Some(1)
    });
    assert!(
        cluster(&proxy)["discovery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("svc.ringmesh.test")),
        "{}",
        cluster(&proxy)
    );
    assert_eq!(addresses(&proxy), [format!("127.0.0.2:{port}")]);
    traffic(&proxy, 3);
    assert_eq!(two.accepted.load(Ordering::SeqCst), 9);
    assert!(proxy.metric("ringmesh_discovery_errors_total", &[("cluster", "c")]) >= 1.0);
    assert!(proxy.metric("ringmesh_discovery_updates_total", &[("cluster", "c")]) >= 2.0);
}

#[test]
fn a_watched_endpoints_file_is_followed_and_a_broken_rewrite_keeps_the_last_good_list() {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, format!("- \"{}\"\n", a.addr)).unwrap();
    let proxy = two_workers(&config(&format!(
        "    discovery: {{ type: file, path: \"{}\", interval: 50ms }}\n",
        file.display()
    )));
    traffic(&proxy, 4);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 4);

    // Rewritten the way tools do: write aside, rename over.
    let tmp = dir.path().join("c.yaml.tmp");
    std::fs::write(
        &tmp,
        format!(
            "endpoints:\n  - {{ address: \"{}\", weight: 2, metadata: {{ version: v2 }} }}\n",
            b.addr
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait_until(Duration::from_secs(10), "the new list", || {
        addresses(&proxy) == [b.addr.to_string()]
    });
    let ep = &cluster(&proxy)["endpoints"][0];
    assert_eq!(ep["metadata"]["version"], "v2");
    assert_eq!(ep["weight"], 2);
    traffic(&proxy, 4);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 4);

    std::fs::write(&file, "- not an address\n").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the broken file to be reported",
        || {
            cluster(&proxy)["discovery"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("endpoints[0]"))
        },
    );
    assert_eq!(addresses(&proxy), [b.addr.to_string()]);
    traffic(&proxy, 2);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 6);
}

#[test]
fn an_unreadable_endpoints_file_is_a_config_error() {
    let echo = EchoServer::start();
    let proxy = two_workers(&config(&format!("    endpoints: [\"{}\"]\n", echo.addr)));
    let bad = config("    discovery: { type: file, path: /nonexistent/ringmesh/endpoints.yaml }\n");
    let r = proxy.put_config(&bad);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_paths(), ["clusters[0].discovery.path"]);
    traffic(&proxy, 2);
}

#[test]
fn the_admin_api_replaces_an_api_clusters_endpoints() {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let proxy = two_workers(&config(&format!(
        "    discovery: api\n    endpoints: [\"{}\"]\n",
        a.addr
    )));
    traffic(&proxy, 3);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 3);
    let version = proxy.get("/config").json()["version"].as_u64().unwrap();

    let body = format!(
        "[{{\"address\": \"{}\", \"metadata\": {{\"version\": \"v2\"}}}}]",
        b.addr
    );
    let r = admin::request(proxy.admin, "PUT", "/clusters/c/endpoints", &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], version + 1);
    assert_eq!(r.json()["endpoints"], 1);
    assert_eq!(addresses(&proxy), [b.addr.to_string()]);
    traffic(&proxy, 3);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 3);
    // The same list again changes nothing.
    let r = admin::request(proxy.admin, "PUT", "/clusters/c/endpoints", &body).unwrap();
    assert_eq!(r.json()["version"], version + 1);

    let r = admin::request(
        proxy.admin,
        "PUT",
        "/clusters/c/endpoints",
        "- 127.0.0.1:0:1\n",
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_paths(), ["endpoints[0]"]);
    let r = admin::request(proxy.admin, "PUT", "/clusters/nope/endpoints", "[]").unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(addresses(&proxy), [b.addr.to_string()]);
}

#[test]
fn only_api_clusters_take_endpoints_from_the_api() {
    let echo = EchoServer::start();
    let proxy = two_workers(&config(&format!("    endpoints: [\"{}\"]\n", echo.addr)));
    let r = admin::request(proxy.admin, "PUT", "/clusters/c/endpoints", "[]").unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("discovery: api")
    );
}

#[test]
fn discovered_endpoints_keep_their_health_state() {
    // An ejected endpoint stays ejected when the list is re-applied.
    let a = EchoServer::start();
    let dead = tcp::closed_port();
    let proxy = two_workers(&config(&format!(
        "    discovery: api\n    endpoints: [\"{}\", \"{dead}\"]\n    connect_attempts: 2\n    outlier_detection: {{ consecutive_5xx: 2, max_ejection_percent: 50, base_ejection_time: 60s }}\n",
        a.addr
    )));
    traffic(&proxy, 8);
    let ejected = |proxy: &Proxy| {
        cluster(proxy)["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == dead.to_string())
            .map(|e| e["ejected"].clone())
    };
    assert_eq!(ejected(&proxy), Some(serde_json::json!(true)));
    let other = EchoServer::start();
    let body = format!("[\"{}\", \"{dead}\", \"{}\"]", a.addr, other.addr);
    let r = admin::request(proxy.admin, "PUT", "/clusters/c/endpoints", &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ejected(&proxy), Some(serde_json::json!(true)));
    let _: SocketAddr = dead;
}
