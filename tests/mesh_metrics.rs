//! Mesh metrics (README "Mesh metrics"): with a `node` block, HTTP
//! requests are counted in Istio's metric names with Istio's labels, the
//! source taken from the client's SPIFFE ID under mTLS (or `unknown`) and
//! the destination from the node, so Kiali's graph queries and Istio's
//! dashboards find every label they group by.

mod helpers;

use std::io::BufReader;

use helpers::admin::metric;
use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;
use helpers::tls::{self as tlsh, Pki, Versions};

/// Every label Kiali's graph queries group `istio_requests_total` by.
const KIALI_LABELS: &[&str] = &[
    "reporter",
    "source_cluster",
    "source_workload_namespace",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_principal",
    "destination_cluster",
    "destination_service_namespace",
    "destination_service",
    "destination_service_name",
    "destination_workload_namespace",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_principal",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

fn config(upstream: std::net::SocketAddr, node: &str, tls: &str) -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:0\n{node}listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    {tls}\n    routes:\n      - {{ name: api, match: {{ path_prefix: /api }}, cluster: app }}\nclusters:\n  - name: app\n    endpoints: [\"{upstream}\"]\n"
    )
}

const NODE: &str =
    "node: { service: reviews, namespace: shop, workload: reviews-v1, version: v1 }\n";

fn upstream() -> Upstream {
    Upstream::start(|r| {
        if r.path.ends_with("/fail") {
            Reply::status(503)
        } else {
            Reply::ok("ok")
        }
    })
}

/// The metrics once `n` requests were counted (a request is counted
/// after its response went out).
fn settled(proxy: &Proxy, n: f64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = proxy.metrics();
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if counted >= n || std::time::Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn series_labels(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.to_owned())
        .collect()
}

#[test]
fn requests_are_counted_in_istios_names_with_an_unknown_source_without_mtls() {
    let up = upstream();
    let proxy = Proxy::start("uring", &config(up.addr, NODE, ""));
    let mut c = http::connect(proxy.listener("web"));
    for path in ["/api/a", "/api/b", "/api/c", "/api/fail", "/nowhere"] {
        http::request(&mut c, "GET", path, &[("Host", "reviews")], b"").expect("response");
    }
    let text = settled(&proxy, 5.0);
    let base = [
        ("reporter", "destination"),
        ("source_workload", "unknown"),
        ("source_workload_namespace", "unknown"),
        ("source_principal", "unknown"),
        ("source_app", "unknown"),
        ("source_version", "unknown"),
        ("source_canonical_service", "unknown"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "unknown"),
        ("destination_workload", "reviews-v1"),
        ("destination_workload_namespace", "shop"),
        ("destination_principal", "unknown"),
        ("destination_app", "reviews"),
        ("destination_version", "v1"),
        ("destination_service", "reviews.shop.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "shop"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "unknown"),
        ("request_protocol", "http"),
        ("grpc_response_status", ""),
        ("connection_security_policy", "none"),
    ];
    let with = |code: &'static str, flags: &'static str| {
        let mut l = base.to_vec();
        l.push(("response_code", code));
        l.push(("response_flags", flags));
        l
    };
    let total = |code, flags| metric(&text, "istio_requests_total", &with(code, flags));
    assert_eq!(
        total("200", "-"),
        Some(3.0),
        "{}",
        series_labels(&text, "istio_requests_total").join("\n")
    );
    assert_eq!(total("503", "-"), Some(1.0));
    assert_eq!(total("404", "NR"), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "istio_request_duration_milliseconds_count",
            &with("200", "-")
        ),
        Some(3.0)
    );
    let mut inf = with("200", "-");
    inf.push(("le", "+Inf"));
    assert_eq!(
        metric(&text, "istio_response_bytes_bucket", &inf),
        Some(3.0)
    );
    assert!(metric(&text, "istio_request_bytes_sum", &with("200", "-")).unwrap_or(0.0) > 0.0);
    // Every series carries every label Kiali groups by.
    for line in series_labels(&text, "istio_requests_total") {
        for label in KIALI_LABELS {
            assert!(
                line.contains(&format!("{label}=\"")),
                "{label} missing: {line}"
            );
        }
    }
    // promtool's lint finds nothing to say.
    match helpers::admin::promtool_findings(&text) {
        None => eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)"),
        Some(findings) => assert!(findings.is_empty(), "promtool: {findings:?}"),
    }
}

#[test]
fn an_mtls_client_is_the_source_by_its_spiffe_id() {
    let up = upstream();
    let pki = Pki::new();
    let id = "spiffe://mesh.local/ns/shop/sa/productpage";
    pki.issue("productpage", &["--spiffe", id]);
    let proxy = Proxy::start("uring", &config(up.addr, NODE, &pki.listener_tls(true)));
    let client = tlsh::client_config(
        &pki.path("ca.pem"),
        Some(&pki.path("productpage")),
        Versions::Both,
    );
    let mut tls = tlsh::connect(proxy.listener("web"), client);
    for _ in 0..2 {
        use std::io::Write;
        tls.write_all(b"GET /api/x HTTP/1.1\r\nHost: reviews\r\n\r\n")
            .expect("write");
        let mut r = BufReader::new(&mut tls);
        assert_eq!(
            http::read_response(&mut r, false).expect("response").status,
            200
        );
    }
    let text = settled(&proxy, 2.0);
    let labels = [
        ("source_principal", id),
        ("source_workload", "productpage"),
        ("source_workload_namespace", "shop"),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    let found: Vec<String> = series_labels(&text, "istio_requests_total")
        .into_iter()
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{}",
        series_labels(&text, "istio_requests_total").join("\n")
    );
    assert!(found[0].ends_with(" 2"), "{}", found[0]);
}

#[test]
fn without_a_node_there_are_no_mesh_metrics() {
    let up = upstream();
    let proxy = Proxy::start("uring", &config(up.addr, "", ""));
    let mut c = http::connect(proxy.listener("web"));
    http::request(&mut c, "GET", "/api/a", &[("Host", "reviews")], b"").expect("response");
    assert!(!proxy.metrics().contains("istio_"));
}

#[test]
fn tcp_connections_are_counted_in_istios_tcp_metrics_by_source() {
    use helpers::tcp::EchoServer;
    let echo = EchoServer::start();
    let pki = Pki::new();
    let id = "spiffe://mesh.local/ns/shop/sa/orders";
    pki.issue("orders", &["--spiffe", id]);
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\n{NODE}listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    cluster: pg\n    access_log: false\n    {}\nclusters:\n  - name: pg\n    endpoints: [\"{}\"]\n",
        pki.listener_tls(true),
        echo.addr
    );
    let proxy = Proxy::start("uring", &config);
    let client = tlsh::client_config(
        &pki.path("ca.pem"),
        Some(&pki.path("orders")),
        Versions::Both,
    );
    for _ in 0..2 {
        let mut c = tlsh::connect(proxy.listener("db"), client.clone());
        assert_eq!(
            tlsh::roundtrip(&mut c, b"hello mesh").expect("echo"),
            b"hello mesh"
        );
        drop(c);
    }
    let labels = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![
            ("source_principal", id),
            ("source_workload", "orders"),
            ("connection_security_policy", "mutual_tls"),
            ("request_protocol", "tcp"),
            ("destination_service", "reviews.shop.svc.cluster.local"),
        ];
        l.extend_from_slice(extra);
        l
    };
    let find = |text: &str, name: &str| -> Option<f64> {
        let want = labels(&[]);
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let text = proxy.metrics();
        if find(&text, "istio_tcp_connections_closed_total") == Some(2.0)
            || std::time::Instant::now() >= deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        find(&text, "istio_tcp_connections_opened_total"),
        Some(2.0),
        "{}",
        series_labels(&text, "istio_tcp_connections_opened_total").join("\n")
    );
    assert_eq!(find(&text, "istio_tcp_connections_closed_total"), Some(2.0));
    assert_eq!(find(&text, "istio_tcp_received_bytes_total"), Some(20.0));
    assert_eq!(find(&text, "istio_tcp_sent_bytes_total"), Some(20.0));
}

#[test]
fn an_outbound_listener_reports_its_node_as_the_source_of_calls_to_its_clusters() {
    let up = upstream();
    let config = config(up.addr, NODE, "mesh_role: outbound");
    let proxy = Proxy::start("uring", &config);
    let mut c = http::connect(proxy.listener("web"));
    for path in ["/api/a", "/api/fail", "/api/b"] {
        http::request(&mut c, "GET", path, &[("Host", "app")], b"").expect("response");
    }
    let text = settled(&proxy, 3.0);
    let labels = |code: &'static str| {
        vec![
            ("reporter", "source"),
            ("source_workload", "reviews-v1"),
            ("source_workload_namespace", "shop"),
            ("source_app", "reviews"),
            ("source_version", "v1"),
            ("destination_service", "app"),
            ("destination_service_name", "app"),
            ("destination_workload", "unknown"),
            ("connection_security_policy", "unknown"),
            ("response_code", code),
        ]
    };
    let find = |code| {
        let want = labels(code);
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .find(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
    };
    assert_eq!(
        find("200"),
        Some(2.0),
        "{}",
        series_labels(&text, "istio_requests_total").join("\n")
    );
    assert_eq!(find("503"), Some(1.0));
    assert!(
        !text.contains("reporter=\"destination\""),
        "an outbound listener reports only as the source"
    );
    let r = proxy.put_config(&config.replace("mesh_role: outbound", "mesh_role: sideways"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_paths(), ["listeners[0].mesh_role"]);
}
