//! The Grafana dashboard (`deploy/grafana/ringmesh.json`): every metric
//! its queries use exists in a running proxy's `/metrics`, so no panel is
//! empty because of a renamed or missing metric.

mod helpers;

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;
use serde_json::Value;

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression reads (ours, Istio's, process_).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        // Label values ("...") are not metric names.
        if bytes[i] == b'"' && (i == 0 || bytes[i - 1] != b'\\') {
            quoted = !quoted;
            i += 1;
            continue;
        }
        if quoted {
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word {
            let end = (i..bytes.len())
                .find(|&j| {
                    !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b':')
                })
                .unwrap_or(bytes.len());
            let word = &expr[i..end];
            if ["ringmesh_", "istio_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                names.push(word.to_owned());
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_exists_in_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/ringmesh.json"
    ))
    .expect("deploy/grafana/ringmesh.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "ringmesh");
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
    }
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let mut names: Vec<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 20, "{names:?}");

    // A proxy with every feature the dashboard shows, after some traffic.
    let up = Upstream::start(|_| Reply::ok("ok"));
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\nnode: {{ service: reviews, namespace: shop }}\ntracing: {{ sampling: 0 }}\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    routes:\n      - {{ name: api, cluster: app, retries: {{ on: [5xx] }}, fault: {{ abort: {{ status: 503, percent: 0 }} }}, rate_limit: {{ requests_per_second: 1000 }} }}\nclusters:\n  - name: app\n    endpoints: [\"{}\"]\n    outlier_detection: {{}}\n",
        up.addr
    );
    let proxy = Proxy::start("uring", &config);
    let mut c = http::connect(proxy.listener("web"));
    for _ in 0..3 {
        http::request(&mut c, "GET", "/", &[("Host", "reviews")], b"").expect("response");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let metrics = proxy.metrics();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !metrics
                .lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}"
    );
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            "sum by (le) (rate(ringmesh_a_bucket{x=\"istio_no\"}[1m])) / process_cpu_seconds_total"
        ),
        ["ringmesh_a_bucket", "process_cpu_seconds_total"]
    );
}
