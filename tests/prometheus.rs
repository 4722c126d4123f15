//! A real Prometheus (Debian's `prometheus`, installed by `.ci/run`)
//! scrapes a running proxy: the exposition parses, and PromQL over
//! `ringmesh_http_requests_total` returns the requests sent and their
//! rate. Without the binary the test says SKIPPED.

mod helpers;

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;
use serde_json::Value;

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; `None` without the
    /// binary.
    fn start(target: std::net::SocketAddr) -> Option<Prometheus> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ringmesh\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
            return None;
        };
        Some(Prometheus {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            _dir: dir,
        })
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Ok(mut c) = http::try_connect(self.addr) else {
            return Vec::new();
        };
        let target = format!("/api/v1/query?query={encoded}");
        let Ok(r) = http::request(&mut c, "GET", &target, &[("Host", "prometheus")], b"") else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql)
            .first()
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
    }
}

#[test]
fn a_real_prometheus_scrapes_the_proxy_and_promql_sees_the_requests_and_their_rate() {
    let up = Upstream::start(|_| Reply::ok("ok"));
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    cluster: app\nclusters:\n  - name: app\n    endpoints: [\"{}\"]\n",
        up.addr
    );
    let proxy = Proxy::start("uring", &config);
    let Some(prom) = Prometheus::start(proxy.admin) else {
        return;
    };
    // Prometheus up and scraping.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.value("up{job=\"ringmesh\"}") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the proxy"
        );
        thread::sleep(Duration::from_millis(250));
    }
    // 50 requests per second for 6 seconds.
    let mut c = http::connect(proxy.listener("web"));
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < Duration::from_secs(6) {
        for _ in 0..5 {
            let r = http::request(&mut c, "GET", "/", &[("Host", "t")], b"").expect("response");
            assert_eq!(r.status, 200);
            sent += 1;
        }
        let next = Duration::from_millis(100) * (sent / 5);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            thread::sleep(wait);
        }
    }
    let rate = prom
        .value("sum(rate(ringmesh_http_requests_total{job=\"ringmesh\"}[4s]))")
        .unwrap_or(0.0);
    // Every request, once the last scrape is in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = loop {
        let total = prom
            .value("sum(ringmesh_http_requests_total{job=\"ringmesh\",code=\"2xx\"})")
            .unwrap_or(0.0);
        if total >= f64::from(sent) || Instant::now() >= deadline {
            break total;
        }
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(total, f64::from(sent));
    assert!(
        (30.0..=70.0).contains(&rate),
        "rate {rate:.1}/s for 50/s sent"
    );
    // The labels of a series, as Prometheus stored them.
    let series = prom.query("ringmesh_http_requests_total{code=\"2xx\"}");
    let labels = &series.first().expect("a series")["metric"];
    assert_eq!(
        (&labels["listener"], &labels["route"], &labels["cluster"]),
        (
            &Value::from("web"),
            &Value::from("default"),
            &Value::from("app")
        )
    );
}
