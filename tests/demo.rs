//! `ringmesh demo` end to end, as a user sees it: the gateway answers with
//! every part named by version, one trace id spans every hop, `fault`
//! gives about half errors and `retry` takes them away, a 10% canary
//! sends about 10% to v2, blue/green switches with no failed request, and
//! `down` leaves no process and no listening port.
//!
//! The demo binds fixed ports (8080, 15710-15780): one test, run alone.

mod helpers;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helpers::proxy::binary;

struct Running {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args(["demo", "--dir"])
            .arg(self.dir.path())
            .arg("down")
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ringmesh_demo(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(binary())
        .args(["demo", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ringmesh demo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let gateway: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let Ok(mut c) = helpers::http::try_connect(gateway) else {
        return (0, serde_json::Value::Null);
    };
    let mut all = vec![("Host", "127.0.0.1:8080")];
    all.extend_from_slice(headers);
    match helpers::http::request(&mut c, "GET", path, &all, b"") {
        Ok(r) => (
            r.status,
            serde_json::from_str(&r.text()).unwrap_or_default(),
        ),
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Statuses of `n` requests through the gateway.
fn statuses(n: usize) -> (usize, usize) {
    let mut ok = 0;
    for i in 0..n {
        if get(&format!("/product/{}", i % 10), &[]).0 == 200 {
            ok += 1;
        }
    }
    (ok, n - ok)
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn the_demo_walkthrough_as_a_user_sees_it() {
    if listening(8080) {
        println!("SKIPPED: port 8080 is in use");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(binary())
        .args(["demo", "--rps", "10", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let demo = Running { child, dir };
    let d = demo.dir.path();
    let start = Instant::now();
    while get("/product/1", &[]).0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the demo did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // product's answer, composed, each part naming its version.
    let (status, body) = get("/product/7", &[]);
    assert_eq!(status, 200);
    assert_eq!(body["version"], "v1");
    assert_eq!(body["review"]["version"], "v1");
    assert_eq!(body["recommendation"]["version"], "v1");
    // One trace id spans gateway, product, recommendation and review.
    let observe = ringmesh_demo(d, &["step", "observe"]);
    let hops: Vec<&str> = observe.lines().filter(|l| l.contains("trace=")).collect();
    // The gateway started the trace: its access-log line has the same id.
    let trace = hops
        .first()
        .and_then(|l| l.rsplit("trace=").next())
        .unwrap_or_default();
    assert!(
        observe.contains("[ingress-1]") && observe.contains(&format!("trace_id=\"{trace}\"")),
        "{observe}"
    );
    assert!(
        hops.iter().any(|l| l.contains("[product-v1] GET /product")),
        "{observe}"
    );
    assert!(
        hops.iter().any(|l| l.contains("[review-v1] GET /review")),
        "{observe}"
    );
    assert!(
        hops.iter()
            .any(|l| l.contains("[recommendation-v1] GET /recommendation")),
        "{observe}"
    );
    // The mesh-wide dashboard: the five workloads and their edges, from
    // every proxy's metrics.
    // (Rates need two scrapes, 2s apart.)
    std::thread::sleep(Duration::from_secs(5));
    let data = dashboard_data();
    assert!(
        data["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["rps"].as_f64().unwrap_or(0.0) > 0.0),
        "no rate: {data}"
    );
    let edges: Vec<String> = data["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} -> {} {}",
                e["source"].as_str().unwrap(),
                e["destination"].as_str().unwrap(),
                e["version"].as_str().unwrap()
            )
            .trim()
            .to_owned()
        })
        .collect();
    for edge in [
        "clients -> ingress",
        "ingress -> product v1",
        "product v1 -> recommendation v1",
        "product v1 -> review v1",
    ] {
        assert!(
            edges.iter().any(|e| e == edge),
            "{edge} missing from {edges:?}"
        );
    }
    assert_eq!(data["proxies"].as_array().unwrap().len(), 4);
    screenshot(
        "observe",
        &[
            "clients",
            "ingress",
            "product v1",
            "review v1",
            "recommendation v1",
        ],
    );
    // fault: about half of the calls to review fail, and the user sees it.
    ringmesh_demo(d, &["step", "fault"]);
    let (ok, failed) = statuses(200);
    assert!((60..=140).contains(&failed), "{ok} ok, {failed} failed");
    // retry: the fault stays, the errors go.
    ringmesh_demo(d, &["step", "retry"]);
    let (ok, failed) = statuses(300);
    assert!(ok >= 297, "{ok} ok, {failed} failed");
    // Each step can be undone on its own.
    ringmesh_demo(d, &["step", "fault", "off"]);
    ringmesh_demo(d, &["step", "retry", "off"]);
    assert_eq!(statuses(50), (50, 0));
    ringmesh_demo(d, &["step", "reset"]);
    // canary 10: about 10% of the calls to review reach v2.
    ringmesh_demo(d, &["step", "deploy-v2"]);
    ringmesh_demo(d, &["step", "canary", "10"]);
    let mut v2 = 0;
    for i in 0..400 {
        let (status, body) = get(&format!("/product/{}", i % 10), &[]);
        assert_eq!(status, 200);
        if body["review"]["version"] == "v2" {
            v2 += 1;
        }
    }
    assert!((20..=65).contains(&v2), "{v2} of 400 to v2");
    ringmesh_demo(d, &["step", "canary", "50"]);
    statuses(40);
    screenshot("canary50", &["review v2", "review v1"]);
    // header canary: x-canary: true goes to v2.
    ringmesh_demo(d, &["step", "header-canary"]);
    assert_eq!(
        get("/product/3", &[("x-canary", "true")]).1["review"]["version"],
        "v2"
    );
    // blue/green: everything switches at once, no request fails meanwhile.
    let before = ringmesh_demo_tally(d);
    let loader = std::thread::spawn(|| statuses(150));
    std::thread::sleep(Duration::from_millis(300));
    ringmesh_demo(d, &["step", "blue-green"]);
    let (ok, failed) = loader.join().unwrap();
    assert_eq!(failed, 0, "{ok} ok during the switch");
    let after = ringmesh_demo_tally(d);
    assert_eq!(
        after.1, before.1,
        "the background user saw failures during the switch"
    );
    for i in 0..20 {
        assert_eq!(
            get(&format!("/product/{i}"), &[]).1["review"]["version"],
            "v2"
        );
    }
    // down: no process, no port.
    ringmesh_demo(d, &["down"]);
    for port in [8080u16, 15710, 15720, 15721, 15726, 15750, 15770, 15771] {
        assert!(!listening(port), "port {port} still listens");
    }
    let ps = Command::new("pgrep")
        .args(["-f", &d.display().to_string()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "left behind: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

fn dashboard_data() -> serde_json::Value {
    let addr: SocketAddr = "127.0.0.1:15711".parse().unwrap();
    let mut c = helpers::http::connect(addr);
    let r = helpers::http::request(&mut c, "GET", "/data", &[("Host", "x")], b"").unwrap();
    assert_eq!(r.status, 200);
    serde_json::from_str(&r.text()).unwrap()
}

/// The dashboard in headless Chromium: its DOM names `nodes`; the
/// screenshot goes to target/demo-dashboard-NAME.png (and, with
/// RINGMESH_UPDATE_DOCS set, to docs/ for the README).
fn screenshot(name: &str, nodes: &[&str]) {
    let Some(browser) = helpers::browser::chromium() else {
        println!("SKIPPED: no chromium for the dashboard screenshots");
        return;
    };
    let url = "http://127.0.0.1:15711/";
    let dom = helpers::browser::headless(browser, &["--dump-dom"], url);
    for n in nodes {
        assert!(
            dom.contains(&format!("data-node=\"{n}\"")),
            "{n} not drawn:\n{dom}"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shot = root.join(format!("target/demo-dashboard-{name}.png"));
    let _ = std::fs::remove_file(&shot);
    helpers::browser::headless(browser, &[&format!("--screenshot={}", shot.display())], url);
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    // The README's copies are refreshed on request, so that a test run
    // leaves the work tree as it found it.
    if std::env::var_os("RINGMESH_UPDATE_DOCS").is_some() {
        let _ = std::fs::copy(&shot, root.join(format!("docs/demo-dashboard-{name}.png")));
    }
}

fn ringmesh_demo_tally(dir: &Path) -> (u64, u64) {
    ringmesh_demo::step::tally(&ringmesh_demo::up::Demo {
        dir: dir.to_owned(),
        binary: binary().into(),
    })
}
