//! Chaos acceptance (issue 13): three endpoints, one failing 30% of its
//! requests with 503 and one adding 500 ms to 10% of them. With retries,
//! per-try timeouts and outlier detection on, at least 99.9% of 20,000
//! client requests succeed and the retries stay inside the cluster's
//! budget. Run with `--nocapture` to see the figures.

mod helpers;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;

/// A well-spread draw in 0..100 for the `n`th request.
fn percentile(n: usize) -> usize {
    (n.wrapping_mul(2_654_435_761) >> 7) % 100
}

#[test]
fn retries_per_try_timeouts_and_ejection_keep_999_of_20000_requests_succeeding() {
    let failing_n = Arc::new(AtomicUsize::new(0));
    let slow_n = Arc::new(AtomicUsize::new(0));
    let f = failing_n.clone();
    let failing = Upstream::start(move |_| {
        if percentile(f.fetch_add(1, Ordering::Relaxed)) < 30 {
            Reply::status(503)
        } else {
            Reply::ok("failing-ok")
        }
    });
    let s = slow_n.clone();
    let slow = Upstream::start(move |_| {
        let reply = Reply::ok("slow-ok");
        if percentile(s.fetch_add(1, Ordering::Relaxed)) < 10 {
            reply.delay(Duration::from_millis(500))
        } else {
            reply
        }
    });
    let healthy = Upstream::start(|_| Reply::ok("healthy-ok"));
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    routes:\n      - name: api\n        cluster: app\n        timeout: 3s\n        retries: {{ on: [5xx], attempts: 2, per_try_timeout: 200ms }}\nclusters:\n  - name: app\n    endpoints: [\"{}\", \"{}\", \"{}\"]\n    circuit_breakers: {{ max_retries: 100 }}\n    outlier_detection: {{ interval: 1s, base_ejection_time: 3s, max_ejection_percent: 34, failure_percentage_threshold: 20, failure_percentage_minimum_hosts: 3, failure_percentage_request_volume: 50, enforcing_failure_percentage: 100 }}\n",
        failing.addr, slow.addr, healthy.addr
    );
    let proxy = Proxy::start("uring", &config);
    let addr = proxy.listener("web");
    let clients = 16;
    let per_client = 1250;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            thread::spawn(move || {
                let mut c = http::connect(addr);
                let mut failed = Vec::new();
                for _ in 0..per_client {
                    match http::get(&mut c, "/") {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failed.push(format!("{}: {}", r.status, r.text())),
                        Err(e) => {
                            failed.push(format!("client: {e}"));
                            c = http::connect(addr);
                        }
                    }
                }
                failed
            })
        })
        .collect();
    let failed: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    let took = started.elapsed();
    let total = clients * per_client;
    let metric = |name: &str, labels: &[(&str, &str)]| proxy.metric(name, labels);
    let retries = |result| {
        metric(
            "ringmesh_retries_total",
            &[("cluster", "app"), ("result", result)],
        )
    };
    let (sent, exhausted, overflow) = (
        retries("sent"),
        retries("budget_exhausted"),
        retries("overflow"),
    );
    let per_try = metric(
        "ringmesh_http_timeouts_total",
        &[
            ("listener", "web"),
            ("route", "api"),
            ("cluster", "app"),
            ("kind", "per_try"),
        ],
    );
    let ejections: f64 = ["failure_percentage", "consecutive_5xx"]
        .iter()
        .map(|d| {
            metric(
                "ringmesh_outlier_ejections_total",
                &[("cluster", "app"), ("detector", d)],
            )
        })
        .sum();
    let success = total - failed.len();
    println!(
        "chaos: {success}/{total} succeeded ({:.3}%) in {:.1}s; retries sent {sent} ({:.1}% of requests), budget_exhausted {exhausted}, overflow {overflow}; per-try timeouts {per_try}; ejections {ejections}; requests to failing/slow/healthy: {}/{}/{}",
        100.0 * success as f64 / total as f64,
        took.as_secs_f64(),
        100.0 * sent / total as f64,
        failing.request_count(),
        slow.request_count(),
        healthy.request_count(),
    );
    assert!(
        success * 1000 >= total * 999,
        "{} of {total} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Linkerd's budget: 20% of the requests plus 10/s (100 in reserve).
    let budget = 0.2 * total as f64 + 10.0 * took.as_secs_f64().max(10.0);
    assert!(
        sent <= budget,
        "{sent} retries against a budget of {budget}"
    );
    assert!(sent > 0.0 && per_try > 0.0, "the faults were met");
}
