//! Load balancing over real endpoints: weights are respected, and
//! least_request steers new connections away from loaded endpoints while
//! round_robin does not.

mod helpers;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use helpers::proxy::Proxy;
use helpers::tcp::{self, EchoServer};

fn config(lb: &str, a: SocketAddr, wa: u32, b: SocketAddr, wb: u32) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners: [ {{ name: l, listen: 127.0.0.1:0, cluster: c }} ]\nclusters:\n  - name: c\n    lb: {lb}\n    endpoints:\n      - {{ address: \"{a}\", weight: {wa} }}\n      - {{ address: \"{b}\", weight: {wb} }}\n"
    )
}

fn one_worker(config: &str) -> Proxy {
    Proxy::start_with(config, &["--io-engine", "uring", "--workers", "1"]).unwrap()
}

#[test]
fn weighted_round_robin_splits_connections_by_weight() {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let proxy = one_worker(&config("round_robin", a.addr, 1, b.addr, 3));
    for i in 0..40 {
        let mut c = tcp::connect(proxy.listener("l"));
        assert_eq!(
            tcp::echo_roundtrip(&mut c, format!("{i}").as_bytes()).unwrap(),
            format!("{i}").as_bytes()
        );
    }
    assert_eq!(
        (
            a.accepted.load(Ordering::SeqCst),
            b.accepted.load(Ordering::SeqCst)
        ),
        (10, 30)
    );
    let clusters = proxy.get("/clusters").json();
    assert_eq!(clusters["clusters"][0]["lb"], "round_robin");
    assert_eq!(clusters["clusters"][0]["endpoints"][1]["weight"], 3);
}

/// Opens 20 connections one after another, keeping those that land on `a`
/// and closing those that land on `b`; returns how many `a` holds.
fn held_on_a(lb: &str) -> usize {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let proxy = one_worker(&config(lb, a.addr, 1, b.addr, 1));
    let mut held = Vec::new();
    for _ in 0..20 {
        let before = a.accepted.load(Ordering::SeqCst);
        let mut c = tcp::connect(proxy.listener("l"));
        assert_eq!(tcp::echo_roundtrip(&mut c, b"x").unwrap(), b"x");
        if a.accepted.load(Ordering::SeqCst) > before {
            held.push(c);
        } else {
            drop(c);
            // Let the proxy see the close before the next pick.
            proxy.wait_metric(
                "ringmesh_upstream_connections_active",
                &[("cluster", "c")],
                std::time::Duration::from_secs(5),
                |v| v as usize == held.len(),
            );
        }
    }
    held.len()
}

#[test]
fn least_request_avoids_the_loaded_endpoint_and_round_robin_does_not() {
    assert_eq!(held_on_a("round_robin"), 10, "round robin ignores load");
    let lr = held_on_a("least_request");
    assert!(
        lr <= 2,
        "least_request kept sending to the loaded endpoint: {lr}"
    );
}

#[test]
fn random_reaches_every_endpoint() {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let proxy = one_worker(&config("random", a.addr, 1, b.addr, 1));
    for _ in 0..40 {
        let mut c = tcp::connect(proxy.listener("l"));
        assert_eq!(tcp::echo_roundtrip(&mut c, b"r").unwrap(), b"r");
    }
    let (na, nb) = (
        a.accepted.load(Ordering::SeqCst),
        b.accepted.load(Ordering::SeqCst),
    );
    assert_eq!(na + nb, 40);
    assert!(na >= 5 && nb >= 5, "{na}/{nb}");
}

#[test]
fn bad_weights_are_config_errors() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(
        "uring",
        &helpers::proxy::one_listener("l", &[echo.addr], "", ""),
    );
    let r = proxy.put_config(&config("least_request", echo.addr, 0, echo.addr, 1001));
    assert_eq!(r.status, 400, "{}", r.body);
    let paths = r.error_paths();
    assert_eq!(
        paths,
        [
            "clusters[0].endpoints[0].weight",
            "clusters[0].endpoints[1].weight"
        ]
    );
}

/// Connects from source address `ip` (any of 127.0.0.0/8).
fn connect_from(ip: &str, to: SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s
}

#[test]
fn consistent_hashing_keeps_each_client_ip_on_one_endpoint() {
    for lb in ["ring_hash", "maglev"] {
        let servers: Vec<EchoServer> = (0..3).map(|_| EchoServer::start()).collect();
        let eps: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
        let config = format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nlisteners: [ {{ name: l, listen: 127.0.0.1:0, cluster: c }} ]\nclusters:\n  - {{ name: c, lb: {lb}, endpoints: [{}] }}\n",
            eps.join(", ")
        );
        // Two workers: the choice must not depend on which core accepts.
        let proxy = Proxy::start("uring", &config);
        let target = proxy.listener("l");
        let mut used = std::collections::BTreeSet::new();
        // 12 clients over 3 endpoints: all on one by chance is ~6e-6.
        for n in 2..14 {
            let client = format!("127.0.0.{n}");
            let client = client.as_str();
            let counts_before: Vec<usize> = servers
                .iter()
                .map(|s| s.accepted.load(Ordering::SeqCst))
                .collect();
            for _ in 0..5 {
                let mut c = connect_from(client, target);
                assert_eq!(tcp::echo_roundtrip(&mut c, b"h").unwrap(), b"h");
            }
            let gained: Vec<usize> = servers
                .iter()
                .zip(&counts_before)
                .map(|(s, b)| s.accepted.load(Ordering::SeqCst) - b)
                .collect();
            let owners: Vec<usize> = (0..3).filter(|i| gained[*i] > 0).collect();
            assert_eq!(
                owners.len(),
                1,
                "{lb}: client {client} was spread over {gained:?}"
            );
            assert_eq!(gained[owners[0]], 5);
            used.insert(owners[0]);
        }
        assert!(
            used.len() >= 2,
            "{lb}: twelve clients all hashed to one endpoint"
        );
    }
}

/// An echo server that waits `delay` before each reply.
fn slow_echo(
    delay: std::time::Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let addr = tcp::serve_each(move |mut s| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            std::thread::sleep(delay);
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    (addr, accepted)
}

/// Sends 30 one-at-a-time requests over new connections; returns how many
/// reached the slow endpoint, and the policy GET /clusters reports.
fn requests_on_slow(lb: &str) -> (usize, String) {
    let fast = EchoServer::start();
    let (slow, slow_accepted) = slow_echo(std::time::Duration::from_millis(80));
    let proxy = one_worker(&config(lb, fast.addr, 1, slow, 1));
    for i in 0..30 {
        let mut c = tcp::connect(proxy.listener("l"));
        let msg = format!("r{i}");
        assert_eq!(
            tcp::echo_roundtrip(&mut c, msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
    let reported = proxy.get("/clusters").json()["clusters"][0]["lb"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (slow_accepted.load(Ordering::SeqCst), reported)
}

#[test]
fn peak_ewma_learns_which_endpoint_is_slow_and_round_robin_does_not() {
    assert_eq!(requests_on_slow("round_robin").0, 15);
    // One or two samples of 80 ms against a 30 ms prior are enough.
    let (ewma, reported) = requests_on_slow("peak_ewma");
    assert_eq!(reported, "peak_ewma");
    assert!(
        ewma <= 3,
        "peak_ewma kept sending to the slow endpoint: {ewma}"
    );
}
