//! Binary upgrades (`ringmesh run --upgrade-from`, SIGUSR2): the new
//! process takes the listening sockets over a Unix socket and the old one
//! drains. Specified here: under a client connecting in a loop, a client
//! sending keep-alive HTTP requests and long streams started before each
//! upgrade, ten upgrades in a row (alternating worker counts and I/O
//! engines) refuse, reset or fail nothing, and every byte of every stream
//! arrives; a new process that cannot start leaves the old one serving; and
//! SIGUSR2 starts the successor itself.

mod helpers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{Reply, Upstream};
use helpers::proxy::Proxy;
use helpers::tcp::{EchoServer, Payload};
use sha2::{Digest, Sha256};

fn config(echo: SocketAddr, web: SocketAddr, extra_listener: &str) -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: tcp\n    listen: 127.0.0.1:0\n    cluster: echo\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n    cluster: web\n{extra_listener}clusters:\n  - name: echo\n    endpoints: [\"{echo}\"]\n  - name: web\n    endpoints: [\"{web}\"]\n"
    )
}

/// Logged by a process serving on sockets it took over.
const UPGRADED: &str = "upgrade complete: serving on the inherited sockets; the old process drains";
/// Logged by a process that started on its own.
const STARTED: &str = "admin API listening";

/// Starts `ringmesh run -c config ARGS`, ready once `ready` is logged.
fn launch(config: &Path, args: &[&str], ready: &str) -> Result<Proxy, String> {
    let mut all: Vec<String> = vec!["run".into(), "-c".into(), config.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Proxy::launch(&all, tempfile::tempdir().map_err(|e| e.to_string())?, ready)
}

/// The client side of the test's traffic, with every failure kept.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    connections: AtomicU64,
    requests: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// Opens a connection, sends a line, reads it back, closes; forever.
fn connect_loop(addr: SocketAddr, traffic: Arc<Traffic>) {
    let mut n = 0u64;
    while !traffic.stop.load(Ordering::Relaxed) {
        n += 1;
        let msg = format!("ping {n}\n");
        let result = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(msg.as_bytes())?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back)?;
            if back != msg.as_bytes() {
                return Err(std::io::Error::other("echo differs"));
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                traffic.connections.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => traffic.fail(format!("connection {n}: {e}")),
        }
    }
}

/// Reads one response (head and `content-length` body); returns whether
/// the server said `Connection: close`.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<bool> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("closed before a response"));
    }
    if !line.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(std::io::Error::other)?;
        }
        if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)?;
    Ok(close)
}

/// Keep-alive HTTP requests back to back, reconnecting when the proxy says
/// `Connection: close` (as it does on the old process once it drains).
fn keep_alive_loop(addr: SocketAddr, traffic: Arc<Traffic>) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut n = 0u64;
    while !traffic.stop.load(Ordering::Relaxed) {
        n += 1;
        let result = (|| -> std::io::Result<bool> {
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let r = BufReader::new(s.try_clone()?);
                conn = Some((s, r));
            }
            let (s, r) = conn
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no conn"))?;
            s.write_all(b"GET /ka HTTP/1.1\r\nHost: upgrade.test\r\n\r\n")?;
            read_response(r)
        })();
        match result {
            Ok(close) => {
                traffic.requests.fetch_add(1, Ordering::Relaxed);
                if close {
                    conn = None;
                }
            }
            Err(e) => {
                traffic.fail(format!("keep-alive request {n}: {e}"));
                conn = None;
            }
        }
    }
}

/// Streams `len` bytes through the echo listener in paced chunks while
/// reading them back; the hash of what came back must be the hash sent.
fn long_stream(addr: SocketAddr, seed: u64, len: usize) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reader = s.try_clone().map_err(|e| e.to_string())?;
    let receiver = thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while total < len {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    h.update(&buf[..n]);
                }
                Err(e) => return Err(format!("after {total} bytes: {e}")),
            }
        }
        Ok((total, <[u8; 32]>::from(h.finalize())))
    });
    let mut writer = s;
    let mut payload = Payload::new(seed, len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = payload.next_chunk(&mut buf);
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        // Paced: the stream spans the hand-over.
        thread::sleep(Duration::from_millis(4));
    }
    let sent: [u8; 32] = h.finalize().into();
    let (got, hash) = receiver.join().map_err(|_| "receiver panicked")??;
    if got != len || hash != sent {
        return Err(format!(
            "{got} of {len} bytes came back, hash equal: {}",
            hash == sent
        ));
    }
    Ok(())
}

/// What each test runs against: an echo server, an HTTP upstream, and a
/// directory holding the config (`cfg`, both behind listeners `tcp` and
/// `web`) and the upgrade socket (`sock`).
struct Site {
    echo: EchoServer,
    web: Upstream,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    sock: String,
}

impl Site {
    fn new() -> Site {
        let echo = EchoServer::start();
        let web = Upstream::start(|_| Reply::ok("ok"));
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("ringmesh.yaml");
        std::fs::write(&cfg, config(echo.addr, web.addr, "")).unwrap();
        let sock = dir.path().join("upgrade.sock").display().to_string();
        Site {
            echo,
            web,
            dir,
            cfg,
            sock,
        }
    }

    /// The config with `extra_listener` (YAML list items) added.
    fn config(&self, extra_listener: &str) -> String {
        config(self.echo.addr, self.web.addr, extra_listener)
    }
}

#[test]
fn ten_upgrades_under_load_refuse_reset_and_lose_nothing() {
    let site = Site::new();
    // One worker first: the next process runs two, so its listeners' groups
    // grow by a socket (SO_REUSEPORT) beside the inherited one.
    let mut current = launch(
        &site.cfg,
        &["--workers", "1", "--upgrade-socket", &site.sock],
        STARTED,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tcp = current.listener("tcp");
    let http = current.listener("web");
    let admin = current.admin;

    let traffic = Arc::new(Traffic::default());
    let loops = [
        thread::spawn({
            let t = traffic.clone();
            move || connect_loop(tcp, t)
        }),
        thread::spawn({
            let t = traffic.clone();
            move || keep_alive_loop(http, t)
        }),
    ];
    let mut streams = Vec::new();
    for round in 0..10u64 {
        // A long stream that starts on the old process and must finish there.
        streams.push(thread::spawn(move || {
            long_stream(tcp, round, 2 << 20).map_err(|e| format!("stream {round}: {e}"))
        }));
        thread::sleep(Duration::from_millis(50));
        let (workers, engine) = if round % 2 == 0 {
            ("2", "epoll")
        } else {
            ("1", "uring")
        };
        let before = traffic.connections.load(Ordering::Relaxed);
        let next = launch(
            &site.cfg,
            &[
                "--workers",
                workers,
                "--io-engine",
                engine,
                "--upgrade-from",
                &site.sock,
            ],
            UPGRADED,
        )
        .unwrap_or_else(|e| panic!("upgrade {round}: {e}"));
        assert_eq!(next.admin, admin, "the admin API keeps its address");
        assert_eq!(next.listener("tcp"), tcp, "listeners keep their addresses");
        let mut old = std::mem::replace(&mut current, next);
        let status = old.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| {
            panic!(
                "upgrade {round}: the old process did not exit:\n{}",
                old.log_text()
            )
        });
        assert!(
            status.success(),
            "upgrade {round}: old exited {status}:\n{}",
            old.log_text()
        );
        // Traffic flows on the new process before the next round.
        let deadline = Instant::now() + Duration::from_secs(10);
        while traffic.connections.load(Ordering::Relaxed) < before + 20 {
            assert!(
                Instant::now() < deadline,
                "no traffic after upgrade {round}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
    traffic.stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let stream_failures: Vec<String> = streams
        .into_iter()
        .filter_map(|s| s.join().unwrap().err())
        .collect();
    let failures = traffic.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty() && stream_failures.is_empty(),
        "failures during upgrades:\n{failures:#?}\n{stream_failures:#?}"
    );
    let (connections, requests) = (
        traffic.connections.load(Ordering::Relaxed),
        traffic.requests.load(Ordering::Relaxed),
    );
    assert!(
        connections > 200 && requests > 200,
        "{connections} connections, {requests} requests"
    );
    eprintln!(
        "10 upgrades: {connections} connections and {requests} keep-alive requests, none failed; 10 streams of 2 MiB intact"
    );
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving_and_resets_nothing() {
    let site = Site::new();
    let old = launch(
        &site.cfg,
        &["--workers", "1", "--upgrade-socket", &site.sock],
        STARTED,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tcp = old.listener("tcp");
    let traffic = Arc::new(Traffic::default());
    let client = thread::spawn({
        let t = traffic.clone();
        move || connect_loop(tcp, t)
    });

    // A port another process holds, for a listener and for the admin API:
    // each new process fails after it received the sockets. It runs more
    // workers than the old one (its groups would grow) and fails before it
    // accepts anything, so the old process's clients see nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|a| (taken, a)).unwrap();
    let busy_listener = site.dir.path().join("busy-listener.yaml");
    std::fs::write(
        &busy_listener,
        site.config(&format!(
            "  - name: taken\n    listen: {}\n    cluster: echo\n",
            taken.1
        )),
    )
    .unwrap();
    let busy_admin = site.dir.path().join("busy-admin.yaml");
    std::fs::write(
        &busy_admin,
        site.config("").replace(
            "admin:\n  listen: 127.0.0.1:0",
            &format!("admin:\n  listen: {}", taken.1),
        ),
    )
    .unwrap();
    for (bad, expected) in [
        (&busy_listener, "already in use"),
        (&busy_admin, "admin API: cannot listen"),
    ] {
        let failed = launch(
            bad,
            &["--workers", "2", "--upgrade-from", &site.sock],
            "upgrade complete",
        );
        let output = failed.err().expect("the new process must fail");
        assert!(output.contains(expected), "{output}");
        thread::sleep(Duration::from_millis(200));
    }
    let failures = old
        .logs()
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("upgrade failed"))
        })
        .count();
    assert_eq!(failures, 2, "both failures logged:\n{}", old.log_text());
    let before = traffic.connections.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(200));
    assert!(
        traffic.connections.load(Ordering::Relaxed) > before,
        "the old process serves"
    );

    // A later, good upgrade still works.
    let mut old = old;
    let next = launch(
        &site.cfg,
        &["--workers", "2", "--upgrade-from", &site.sock],
        UPGRADED,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        old.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    traffic.stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let failures = traffic.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:#?}");
    let mut s = helpers::tcp::connect(next.listener("tcp"));
    assert_eq!(
        helpers::tcp::echo_roundtrip(&mut s, b"new").unwrap(),
        b"new"
    );
}

#[test]
fn a_rejected_reload_does_not_stop_later_upgrades() {
    let site = Site::new();
    let mut old = launch(&site.cfg, &["--upgrade-socket", &site.sock], STARTED)
        .unwrap_or_else(|e| panic!("{e}"));
    let tcp = old.listener("tcp");
    // A reload that needs a port another process holds is rejected after
    // the kept listeners were looked at.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rejected = old.put_config(&site.config(&format!(
        "  - name: taken\n    listen: {}\n    cluster: echo\n",
        taken.local_addr().unwrap()
    )));
    assert!(rejected.status >= 400, "{}", rejected.status);
    let next = launch(&site.cfg, &["--upgrade-from", &site.sock], UPGRADED)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.listener("tcp"), tcp, "the listener was handed over");
    assert!(
        old.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn a_moved_admin_api_stops_listening_on_the_old_address() {
    let site = Site::new();
    // Long drain: the old process lives on while a connection is open.
    let mut old = launch(
        &site.cfg,
        &["--upgrade-socket", &site.sock, "--drain-timeout", "60s"],
        STARTED,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let old_admin = old.admin;
    let held = helpers::tcp::connect(old.listener("tcp"));
    let moved = site.dir.path().join("moved.yaml");
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &moved,
        site.config("").replace(
            "admin:\n  listen: 127.0.0.1:0",
            &format!("admin:\n  listen: {free}"),
        ),
    )
    .unwrap();
    let next =
        launch(&moved, &["--upgrade-from", &site.sock], UPGRADED).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.admin, free);
    // The old process still drains (a connection is open), and its admin
    // address refuses connections instead of queueing them unserved.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(old_admin).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the old admin address still accepts"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        old.wait_exit(Duration::from_millis(100)).is_none(),
        "still draining"
    );
    drop(held);
    assert!(
        old.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn sigusr2_starts_the_successor_which_takes_over() {
    let site = Site::new();
    let mut old = launch(
        &site.cfg,
        &["--workers", "1", "--upgrade-socket", &site.sock],
        STARTED,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tcp = old.listener("tcp");
    old.signal(libc::SIGUSR2);
    let served = old
        .wait_log(Duration::from_secs(30), |v| {
            v["message"] == "upgrade: the new process serves; this one stops accepting and drains"
        })
        .unwrap_or_else(|| panic!("no hand-over after SIGUSR2:\n{}", old.log_text()));
    let new_pid = served["new_pid"].as_i64().expect("new_pid") as i32;
    assert!(
        old.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let mut s = helpers::tcp::connect(tcp);
    let echoed = helpers::tcp::echo_roundtrip(&mut s, b"served by the successor");
    // The successor is not our child: stop it ourselves.
    // SAFETY: kill(2) on the pid the old process reported for its successor.
    unsafe { libc::kill(new_pid, libc::SIGKILL) };
    assert_eq!(echoed.unwrap(), b"served by the successor");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/ringmesh.service"),
    )
    .unwrap();
    assert!(
        unit.contains("ExecReload=/bin/kill -USR2 $MAINPID"),
        "reload is an upgrade"
    );
    assert!(unit.contains("--upgrade-socket /run/ringmesh/upgrade.sock"));
    // The unit names the installed binary; verify checks that it exists.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringmesh.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ringmesh", helpers::proxy::binary()),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn systemd_hears_ready_then_the_new_main_pid_and_stopping_only_at_the_end() {
    use std::os::unix::net::UnixDatagram;
    let site = Site::new();
    let notify_path = site.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let notify_env = notify_path.display().to_string();
    let env = [("NOTIFY_SOCKET", notify_env.as_str())];
    let start = |args: &[&str], ready: &str| {
        let mut all: Vec<String> = vec!["run".into(), "-c".into(), site.cfg.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Proxy::launch_with_env(&all, &env, tempfile::tempdir().unwrap(), ready)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let recv = || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut old = start(&["--upgrade-socket", &site.sock], STARTED);
    assert_eq!(recv(), format!("READY=1\nMAINPID={}", old.pid()));
    let mut new = start(&["--upgrade-from", &site.sock], UPGRADED);
    assert_eq!(recv(), format!("READY=1\nMAINPID={}", new.pid()));
    assert!(
        old.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    // The old process drained without telling systemd the service stops.
    new.signal(libc::SIGTERM);
    assert_eq!(
        recv(),
        "STOPPING=1",
        "the next notification is the new process's stop"
    );
    assert!(
        new.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}
