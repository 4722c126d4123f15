//! The demo's services (`ringmesh demo app`) in a mesh of real processes:
//! product composes recommendation's and review's answers, called through
//! its sidecar by name, and the three log lines of one request share its
//! trace id.

mod helpers;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helpers::mesh::{ControlPlane, Join, Sidecar, free_port};
use helpers::proxy::binary;

/// A demo app as a process, its stdout lines collected.
struct App {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl App {
    fn start(service: &str, version: &str, outbound: Option<SocketAddr>) -> App {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap();
        Self::start_at(addr, service, version, outbound)
    }

    fn start_at(
        addr: SocketAddr,
        service: &str,
        version: &str,
        outbound: Option<SocketAddr>,
    ) -> App {
        let mut cmd = Command::new(binary());
        cmd.args(["demo", "app", "--service", service, "--version", version])
            .args(["--listen", &addr.to_string()]);
        if let Some(o) = outbound {
            cmd.args(["--outbound", &o.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{service} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        App { child, addr, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MESH: &str = "\
services:
  - { name: product, port: 9080, calls: [recommendation, review] }
  - { name: recommendation, port: 9081, versions: [v1, v2], routes: [{ cluster: recommendation-v1 }] }
  - { name: review, port: 9082, versions: [v1, v2], routes: [{ cluster: review-v2 }] }
";

#[test]
fn product_composes_its_callees_answers_and_every_line_carries_the_trace_id() {
    let cp = ControlPlane::start(MESH);
    let review = App::start("review", "v2", None);
    let recommendation = App::start("recommendation", "v1", None);
    let join = |node, workload, version, app: u16| {
        let token = cp.token_file("default", workload);
        Sidecar::join(
            &cp,
            &Join {
                node,
                workload,
                version: Some(version),
                app_port: app,
                outbound_ip: "127.0.0.1",
                token,
            },
        )
    };
    let review_sidecar = join("review-1", "review", "v2", review.addr.port());
    let rec_sidecar = join(
        "recommendation-1",
        "recommendation",
        "v1",
        recommendation.addr.port(),
    );
    // product's app learns its sidecar's outbound address before it starts.
    let product_port = free_port("127.0.0.1");
    let product_sidecar = join("product-1", "product", "v1", product_port);
    cp.wait_synced(&["product-1", "recommendation-1", "review-1"]);
    let product = App::start_at(
        format!("127.0.0.1:{product_port}").parse().unwrap(),
        "product",
        "v1",
        Some(product_sidecar.outbound),
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut c = helpers::http::connect(product.addr);
    let r = helpers::http::request(
        &mut c,
        "GET",
        "/product/7",
        &[
            ("Host", "product"),
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(body["productId"], 7);
    assert_eq!(body["review"]["version"], "v2");
    assert!(body["review"]["reviews"][0]["stars"].is_number(), "{body}");
    assert_eq!(body["recommendation"]["version"], "v1");
    // One line per service, the talk's format, joined by the trace id.
    let wait_line = |app: &App, prefix: &str| {
        let start = Instant::now();
        loop {
            if let Some(l) = app.lines().into_iter().find(|l| l.starts_with(prefix)) {
                return l;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no `{prefix}` line"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for (app, prefix) in [
        (&product, "GET /product v1"),
        (&recommendation, "GET /recommendation v1"),
        (&review, "GET /review v2"),
    ] {
        let line = wait_line(app, prefix);
        assert_eq!(
            line,
            format!("{prefix} (ringmesh demo), productId: 7, trace={trace}")
        );
    }
    // A callee failing makes product answer 503, naming which part failed.
    drop(review_sidecar);
    let mut c = helpers::http::connect(product.addr);
    let r =
        helpers::http::request(&mut c, "GET", "/product/8", &[("Host", "product")], b"").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("review answered"), "{}", r.text());
    let _ = rec_sidecar;
}
