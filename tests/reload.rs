//! Live reconfiguration: PUT /config and SIGHUP swap the config atomically,
//! new connections use it at once, established ones finish on the old one,
//! nothing is dropped, and a rejected config changes nothing.

mod helpers;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use helpers::proxy::Proxy;
use helpers::tcp::{self, EchoServer};

fn config(
    cluster_a: SocketAddr,
    cluster_b: SocketAddr,
    extra_listener: bool,
    idle: &str,
) -> String {
    let mut c = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: main\n    listen: 127.0.0.1:0\n    cluster: a\n    idle_timeout: {idle}\n"
    );
    if extra_listener {
        c.push_str("  - name: extra\n    listen: 127.0.0.1:0\n    cluster: b\n");
    }
    c.push_str(&format!(
        "clusters:\n  - name: a\n    endpoints: [\"{cluster_a}\"]\n  - name: b\n    endpoints: [\"{cluster_b}\"]\n"
    ));
    c
}

fn version(proxy: &Proxy) -> u64 {
    proxy.get("/config").json()["version"].as_u64().unwrap_or(0)
}

#[test]
fn hundred_reloads_while_fifty_connections_stream_lose_nothing() {
    let echo = EchoServer::start();
    let other = EchoServer::start();
    let proxy = Proxy::start("uring", &config(echo.addr, other.addr, false, "1h"));
    let addr = proxy.listener("main");
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..50)
        .map(|i| {
            let (stop, bytes) = (stop.clone(), bytes.clone());
            thread::spawn(move || -> Result<(), String> {
                let mut c = tcp::connect(addr);
                let mut round = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let msg: Vec<u8> = (0..4096u32)
                        .map(|j| (i as u32 * 31 + round * 7 + j) as u8)
                        .collect();
                    let back = tcp::echo_roundtrip(&mut c, &msg)
                        .map_err(|e| format!("stream {i}: {e}"))?;
                    if back != msg {
                        return Err(format!("stream {i}: bytes differ in round {round}"));
                    }
                    bytes.fetch_add(msg.len(), Ordering::Relaxed);
                    round += 1;
                }
                Ok(())
            })
        })
        .collect();
    for i in 0..100 {
        // Alternate a listener in and out, and change the running listener's
        // settings, so every reload really changes something.
        let idle = if i % 2 == 0 { "30m" } else { "1h" };
        let r = proxy.put_config(&config(echo.addr, other.addr, i % 2 == 0, idle));
        assert_eq!(r.status, 200, "reload {i}: {}", r.body);
        // A new connection made right after a reload works.
        if i % 10 == 0 {
            let mut c = tcp::connect(addr);
            assert_eq!(tcp::echo_roundtrip(&mut c, b"fresh").unwrap(), b"fresh");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        s.join()
            .expect("stream thread")
            .expect("stream must not fail");
    }
    assert!(bytes.load(Ordering::Relaxed) > 50 * 4096);
    assert_eq!(version(&proxy), 101);
    assert_eq!(
        proxy.metric("ringmesh_config_reloads_total", &[("result", "applied")]),
        101.0
    );
    let closed_with_error: f64 = ["downstream_error", "upstream_error", "upstream_unavailable"]
        .iter()
        .map(|r| {
            proxy.metric(
                "ringmesh_downstream_connections_closed_total",
                &[("listener", "main"), ("reason", r)],
            )
        })
        .sum();
    assert_eq!(closed_with_error, 0.0);
}

#[test]
fn listeners_added_by_reload_open_and_removed_ones_close_but_finish_their_connections() {
    let echo = EchoServer::start();
    let other = EchoServer::start();
    let proxy = Proxy::start("uring", &config(echo.addr, other.addr, false, "1h"));
    assert!(proxy.try_listener("extra").is_none());

    let r = proxy.put_config(&config(echo.addr, other.addr, true, "1h"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 2);
    let extra = proxy.listener("extra");
    let mut established = tcp::connect(extra);
    assert_eq!(
        tcp::echo_roundtrip(&mut established, b"via extra").unwrap(),
        b"via extra"
    );
    assert_eq!(
        other.accepted.load(Ordering::SeqCst),
        1,
        "extra must forward to cluster b"
    );

    let r = proxy.put_config(&config(echo.addr, other.addr, false, "1h"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(proxy.try_listener("extra").is_none());
    // io_uring releases a closed listening socket once its pending accept
    // is cancelled, which can take a moment on a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&extra, Duration::from_secs(2)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "a removed listener must stop accepting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The connection accepted before the removal carries on.
    assert_eq!(
        tcp::echo_roundtrip(&mut established, b"still here").unwrap(),
        b"still here"
    );
}

#[test]
fn new_connections_use_the_new_cluster_at_once_and_old_ones_keep_theirs() {
    let old = EchoServer::start();
    let new = EchoServer::start();
    let yaml = |ep: SocketAddr| {
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nlisteners: [ {{ name: l, listen: 127.0.0.1:0, cluster: c }} ]\nclusters: [ {{ name: c, endpoints: [\"{ep}\"] }} ]\n"
        )
    };
    let proxy = Proxy::start("epoll", &yaml(old.addr));
    let addr = proxy.listener("l");
    let mut before = tcp::connect(addr);
    assert_eq!(tcp::echo_roundtrip(&mut before, b"1").unwrap(), b"1");
    assert_eq!(proxy.put_config(&yaml(new.addr)).status, 200);
    let mut after = tcp::connect(addr);
    assert_eq!(tcp::echo_roundtrip(&mut after, b"2").unwrap(), b"2");
    assert_eq!(
        new.accepted.load(Ordering::SeqCst),
        1,
        "the first connection after the reload goes to the new endpoint"
    );
    assert_eq!(old.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(tcp::echo_roundtrip(&mut before, b"3").unwrap(), b"3");
    assert_eq!(
        proxy.listener("l"),
        addr,
        "a kept listener keeps its socket"
    );
}

#[test]
fn rejected_config_keeps_the_running_one_and_returns_every_error() {
    let echo = EchoServer::start();
    let proxy = Proxy::start("uring", &config(echo.addr, echo.addr, false, "1h"));
    let bad = "admin: { listen: 127.0.0.1:0 }\nlisteners:\n  - name: main\n    listen: 127.0.0.1:99999\n    cluster: nowhere\n    colour: blue\nclusters: []\n";
    let r = proxy.put_config(bad);
    assert_eq!(r.status, 400, "{}", r.body);
    let errors = r.json()["errors"].as_array().cloned().unwrap_or_default();
    let paths: Vec<&str> = errors.iter().filter_map(|e| e["path"].as_str()).collect();
    assert!(paths.contains(&"listeners[0].listen"), "{paths:?}");
    assert!(paths.contains(&"listeners[0].cluster"), "{paths:?}");
    assert!(paths.contains(&"listeners[0].colour"), "{paths:?}");
    assert!(
        errors
            .iter()
            .all(|e| e["file"] == "<PUT /config>" && e["line"].as_u64() > Some(0))
    );
    assert_eq!(version(&proxy), 1);
    assert_eq!(
        proxy.metric("ringmesh_config_reloads_total", &[("result", "rejected")]),
        1.0
    );
    let mut c = tcp::connect(proxy.listener("main"));
    assert_eq!(
        tcp::echo_roundtrip(&mut c, b"unchanged").unwrap(),
        b"unchanged"
    );
}

#[test]
fn a_port_taken_by_another_process_rejects_the_reload() {
    let echo = EchoServer::start();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let proxy = Proxy::start("uring", &config(echo.addr, echo.addr, false, "1h"));
    let yaml = format!(
        "{}  - name: clash\n    listen: \"{taken}\"\n    cluster: a\n",
        config(echo.addr, echo.addr, false, "1h")
            .replace("clusters:", "__C__")
            .split("__C__")
            .next()
            .unwrap()
    ) + &format!(
        "clusters:\n  - name: a\n    endpoints: [\"{}\"]\n  - name: b\n    endpoints: [\"{}\"]\n",
        echo.addr, echo.addr
    );
    let r = proxy.put_config(&yaml);
    assert_eq!(r.status, 400, "{}", r.body);
    let err = &r.json()["errors"][0];
    assert_eq!(err["path"], "listeners[1].listen");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("already in use"),
        "{err}"
    );
    assert_eq!(version(&proxy), 1);
    let mut c = tcp::connect(proxy.listener("main"));
    assert_eq!(tcp::echo_roundtrip(&mut c, b"ok").unwrap(), b"ok");
}

#[test]
fn sighup_rereads_the_file() {
    let echo = EchoServer::start();
    let other = EchoServer::start();
    let proxy = Proxy::start("uring", &config(echo.addr, other.addr, false, "1h"));
    std::fs::write(
        &proxy.config_path,
        config(echo.addr, other.addr, true, "1h"),
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    let applied = proxy.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "configuration applied" && v["version"] == 2
    });
    assert!(applied.is_some(), "{}", proxy.log_text());
    let mut c = tcp::connect(proxy.listener("extra"));
    assert_eq!(tcp::echo_roundtrip(&mut c, b"hup").unwrap(), b"hup");
    // A second SIGHUP with a broken file is rejected, and the proxy lives on.
    std::fs::write(&proxy.config_path, "listeners: [").unwrap();
    proxy.signal(libc::SIGHUP);
    let rejected = proxy.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "configuration rejected; the running one is kept"
    });
    assert!(rejected.is_some(), "{}", proxy.log_text());
    assert_eq!(version(&proxy), 2);
    let mut c = tcp::connect(proxy.listener("main"));
    c.write_all(b"alive").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"alive");
}
