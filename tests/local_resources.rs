//! Running out of descriptors is the proxy's problem, not the endpoint's:
//! it never ejects a healthy endpoint, it is counted apart, and the admin
//! API keeps descriptors of its own to answer with.
//!
//! The proxy runs with a low descriptor limit (`prlimit --nofile=256:256`,
//! so the data plane's share ends at 224) and is filled with connections.

mod helpers;

use std::net::TcpStream;
use std::time::Duration;

use helpers::proxy::{Proxy, one_listener};
use helpers::tcp::{self, EchoServer};

#[test]
fn descriptor_exhaustion_is_counted_apart_and_never_ejects_an_endpoint() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let echo = EchoServer::start();
    // One failure would eject the endpoint if it were blamed.
    let config = one_listener(
        "l",
        &[echo.addr],
        "first_byte_timeout: 1m",
        "outlier_detection: { consecutive_5xx: 1, max_ejection_percent: 100 }",
    );
    let proxy = Proxy::start_wrapped(
        &config,
        &["--workers", "2"],
        &["prlimit", "--nofile=256:256", "--"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ceiling = proxy.metric("ringmesh_data_plane_fd_ceiling", &[]);
    assert_eq!(ceiling, 224.0, "{}", proxy.metrics());
    let addr = proxy.listener("l");
    // Silent clients (first_byte_timeout holds them before any upstream
    // connect) take one descriptor each, until the share runs out and
    // further ones are refused at accept.
    let mut silent: Vec<TcpStream> = (0..240).map(|_| tcp::connect(addr)).collect();
    let rejected = [("listener", "l"), ("reason", "local_resource")];
    let refused = proxy.wait_metric(
        "ringmesh_downstream_connections_rejected_total",
        &rejected,
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert!(refused >= 1.0, "{}", proxy.metrics());
    // The admin API still answers: its descriptors are reserved.
    assert_eq!(proxy.get("/live").status, 200);
    // Now an admitted client speaks: the upstream socket would be past the
    // share, so the connection is closed as local_resource, and the
    // endpoint is not blamed.
    // Wait until every client was accepted or refused, then take one that
    // is still open (admitted before the share ran out).
    proxy.wait_metric(
        "ringmesh_downstream_connections_total",
        &[("listener", "l")],
        Duration::from_secs(30),
        |v| v >= silent.len() as f64,
    );
    let open = silent
        .iter()
        .position(|c| {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let still_open =
                matches!(c.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            c.set_nonblocking(false).unwrap();
            still_open
        })
        .expect("some clients were admitted");
    let mut speaker = silent.remove(open);
    let _ = tcp::echo_roundtrip(&mut speaker, b"x");
    let closed = [("listener", "l"), ("reason", "local_resource")];
    let n = proxy.wait_metric(
        "ringmesh_downstream_connections_closed_total",
        &closed,
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert_eq!(n, 1.0, "{}", proxy.log_text());
    let metrics = proxy.metrics();
    let local = helpers::admin::metric(
        &metrics,
        "ringmesh_local_resource_errors_total",
        &[("kind", "emfile")],
    )
    .unwrap_or(0.0);
    assert!(local >= 2.0, "accept and connect: {metrics}");
    let clusters = proxy.get("/clusters").json();
    let endpoint = &clusters["clusters"][0]["endpoints"][0];
    assert_eq!(endpoint["ejected"], false, "{endpoint}");
    assert_eq!(endpoint["failures"], 0, "{endpoint}");
    for (name, labels) in [
        (
            "ringmesh_upstream_connect_failures_total",
            vec![("cluster", "l")],
        ),
        (
            "ringmesh_upstream_unavailable_total",
            vec![("cluster", "l")],
        ),
        (
            "ringmesh_outlier_ejections_total",
            vec![("cluster", "l"), ("detector", "consecutive_5xx")],
        ),
    ] {
        assert_eq!(
            helpers::admin::metric(&metrics, name, &labels),
            Some(0.0),
            "{name}: {metrics}"
        );
    }
    // When descriptors come back, so does service.
    drop(silent);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = tcp::connect(addr);
    assert_eq!(tcp::echo_roundtrip(&mut c, b"back").unwrap(), b"back");
}
