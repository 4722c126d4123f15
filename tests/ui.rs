//! The built-in dashboard (`GET /ui`), in headless Chromium: the page
//! loads from the proxy alone (no CDN), draws the service graph with the
//! expected nodes after traffic, fills the route and cluster tables with
//! rates that come from two polls, and shows live tap records. A
//! screenshot is saved as `target/ui-dashboard.png`. Without Chromium
//! (`.ci/run` installs Debian's `chromium`) the test says SKIPPED.

mod helpers;

use helpers::browser::{chromium, headless};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use helpers::http::{self, Reply, Upstream};
use helpers::proxy::Proxy;

#[test]
fn the_dashboard_draws_the_graph_tables_and_tap_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no chromium (apt-get install chromium)");
        return;
    };
    let up = Upstream::start(|r| {
        if r.path.ends_with("/fail") {
            Reply::status(503)
        } else {
            Reply::ok("ok")
        }
    });
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\nnode: {{ service: reviews, namespace: shop, version: v1 }}\ntracing: {{ sampling: 100 }}\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    access_log: false\n    routes:\n      - {{ name: api, match: {{ path_prefix: /api }}, cluster: ratings }}\nclusters:\n  - name: ratings\n    endpoints: [\"{}\"]\n",
        up.addr
    );
    let proxy = Proxy::start("uring", &config);
    // Steady traffic while the page polls: rates, success and the tap.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = proxy.listener("web");
    let traffic = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut c = http::connect(addr);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = if i % 10 == 0 { "/api/fail" } else { "/api/ok" };
                let _ = http::request(&mut c, "GET", path, &[("Host", "reviews")], b"");
                i += 1;
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    thread::sleep(Duration::from_millis(500));
    let url = format!("http://{}/ui", proxy.admin);
    let dom = headless(browser, &["--dump-dom"], &url);
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-dashboard.png");
    let _ = std::fs::create_dir_all(shot.parent().expect("target"));
    let _ = std::fs::remove_file(&shot);
    headless(
        browser,
        &[&format!("--screenshot={}", shot.display())],
        &url,
    );
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();

    assert!(
        dom.contains("<h1>ringmesh</h1>"),
        "the page did not load: {dom}"
    );
    // The graph: the clients seen (no mTLS: `unknown`), the proxy's node,
    // the cluster.
    for node in ["unknown", "reviews", "ratings"] {
        assert!(
            dom.contains(&format!("data-name=\"{node}\"")),
            "graph node {node} missing: {dom}"
        );
    }
    // The header names the node and its config.
    assert!(dom.contains("reviews.shop v1"), "{dom}");
    // Rates come from the difference of two polls: "<n>/s" in the route row.
    let routes = dom.split("id=\"routes\"").nth(1).unwrap_or("");
    assert!(routes.contains(">api<"), "route row missing: {routes}");
    assert!(
        routes.split("/s<").count() > 1 && !routes.contains(">–/s<"),
        "no rate in the routes table: {routes}"
    );
    // The success rate of the window is shown as a percentage.
    assert!(routes.contains("%</td>"), "{routes}");
    // Connections per worker (2 workers).
    assert!(
        dom.contains("w0 ") && dom.contains("w1 "),
        "no per-worker figures: {dom}"
    );
    // The live tap shows records with their trace ids.
    assert!(
        dom.contains("class=\"tap-record\""),
        "no tap records: {dom}"
    );
    assert!(dom.contains("trace "), "{dom}");
    assert!(
        shot.metadata().map(|m| m.len() > 10_000).unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
}
