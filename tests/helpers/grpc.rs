//! Real HTTP/2 and gRPC peers, in Python: `grpc_peer.py` (grpcio, the gRPC
//! C core: a `ringmesh.test.Echo` server, and a client running one
//! scenario) and `h2_abuse.py` (hand-made HTTP/2 clients: rapid reset,
//! CONTINUATION flood, one well-behaved request). Each client run prints one
//! JSON line, returned here as a `serde_json::Value`; the scripts' docstrings
//! list the scenarios and their fields. PyPI `grpcio` and `h2`, which
//! `.ci/run` installs; without them a test says SKIPPED:
//!
//! ```ignore
//! if !helpers::grpc::available() {
//!     eprintln!("SKIPPED: {}", helpers::grpc::MISSING);
//!     return;
//! }
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/grpc_peer.py");
const ABUSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/h2_abuse.py");

/// How long one client or abuse run may take before it is killed (each
/// RPC has its own `--timeout`, 10 s by default).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// What a skipping test says is missing.
pub const MISSING: &str =
    "python3 with grpcio and h2 is not installed (pip install grpcio h2; .ci/run installs them)";

/// python3 can import grpcio and h2 (checked once per test binary).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import grpc, h2, hpack"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A `grpc_peer.py server`: `ringmesh.test.Echo` named `name` (replies are
/// prefixed `name:` and carry the trailer `x-served-by: name`), h2c unless
/// started with a certificate. Killed on drop.
pub struct GrpcServer {
    pub port: u16,
    pub addr: SocketAddr,
    pub name: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl GrpcServer {
    /// h2c on 127.0.0.1, a free port.
    pub fn start(name: &str) -> GrpcServer {
        Self::start_with(name, "127.0.0.1:0", &[])
    }

    /// TLS on 127.0.0.1 with `cert` and `key` (PEM files).
    pub fn start_tls(name: &str, cert: &Path, key: &Path) -> GrpcServer {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        Self::start_with(name, "127.0.0.1:0", &["--tls-cert", cert, "--tls-key", key])
    }

    /// On `listen` (`[::1]:0`, or a fixed port to come back on the port a
    /// killed server had), with extra server flags; panics with the
    /// script's stderr if it does not come up within 30 s.
    pub fn start_with(name: &str, listen: &str, extra: &[&str]) -> GrpcServer {
        let mut child = Command::new("python3")
            .arg(PEER)
            .args(["server", "--listen", listen, "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {PEER}: {e}"));
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Nothing more is printed; keep the pipe open until exit.
            for _ in lines.map_while(Result::ok) {}
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).ok().flatten();
        let port = line
            .as_deref()
            .and_then(|l| l.strip_prefix("LISTENING "))
            .and_then(|p| p.trim().parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            thread::sleep(Duration::from_millis(100));
            panic!(
                "grpc_peer.py server did not start (first line {line:?}):\n{}",
                stderr.lock().unwrap()
            );
        };
        let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
        let ip = host.trim_matches(['[', ']']).parse().unwrap();
        GrpcServer {
            port,
            addr: SocketAddr::new(ip, port),
            name: name.to_owned(),
            child,
            stderr,
        }
    }

    /// What the server wrote to stderr so far (its last 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL, and wait: the port refuses from now on (a backend gone).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's `Stats` counters, asked directly (not through a proxy).
    pub fn stats(&self) -> Value {
        let out = client(self.addr, &["stats"]);
        assert_eq!(out["ok"], true, "Stats on {}: {out}", self.name);
        out["stats"].clone()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `grpc_peer.py client --target TARGET ARGS` (ARGS: client flags such
/// as `--authority A`, `--timeout S`, `--header K=V`, `--tls-ca F`, then the
/// scenario and its arguments) and returns its JSON line: `ok`, `code`
/// (`"OK"`, `"UNAVAILABLE"`, ...), `details` and the scenario's fields. A
/// failed RPC is a result; panics (with stderr) only if the script fails.
pub fn client(target: SocketAddr, args: &[&str]) -> Value {
    run(PEER, &["client", "--target", &target.to_string()], args)
}

/// Runs `h2_abuse.py --target TARGET ARGS` (ARGS: `--tls`, `--timeout S`,
/// then `rapid-reset --streams N`, `continuation-flood --frames N` or
/// `ok [--grpc]`, with their options) and returns its JSON line.
pub fn abuse(target: SocketAddr, args: &[&str]) -> Value {
    run(ABUSE, &["--target", &target.to_string()], args)
}

fn run(script: &str, fixed: &[&str], args: &[&str]) -> Value {
    let mut child = Command::new("python3")
        .arg(script)
        .args(fixed)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} {fixed:?} {args:?} still running after {RUN_LIMIT:?}:\n{}",
                stderr.lock().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    // The pipes reach EOF at exit; let the readers drain them.
    let drained = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&stdout) + Arc::strong_count(&stderr) > 2 && Instant::now() < drained {
        thread::sleep(Duration::from_millis(5));
    }
    let stderr = stderr.lock().unwrap().clone();
    assert!(
        status.success(),
        "{script} {fixed:?} {args:?} failed ({status}):\n{stderr}"
    );
    let stdout = stdout.lock().unwrap().clone();
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let line = line.unwrap_or_else(|| panic!("{script} {args:?} printed nothing:\n{stderr}"));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} {args:?} printed {line:?} ({e}):\n{stderr}"))
}

/// Reads `pipe` to EOF on a thread into the returned buffer (the last
/// 64 KiB); the thread drops its reference when done.
fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    const KEEP: usize = 64 * 1024;
    let buffer = Arc::new(Mutex::new(String::new()));
    let sink = buffer.clone();
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut chunk = [0u8; 8192];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let mut b = sink.lock().unwrap();
            b.push_str(&String::from_utf8_lossy(&chunk[..n]));
            if b.len() > 2 * KEEP {
                let mut cut = b.len() - KEEP;
                while !b.is_char_boundary(cut) {
                    cut += 1;
                }
                b.drain(..cut);
            }
        }
    });
    buffer
}
