//! `ringmesh demo` and `ringmesh demo down`: the landscape's processes
//! started from this binary (control plane, apps, sidecars, gateway), a
//! background user through the gateway, and everything stopped again on
//! Ctrl-C or `demo down`, leaving no process or port behind.
//!
//! Every process started is recorded in `DIR/pids` (the walkthrough's
//! `deploy-v2` adds its own), so whoever stops the demo stops them all.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::landscape::{self, CONTROL, GATEWAY, GATEWAY_PROXY, Instance, V1};

/// Why the demo could not start or stop.
#[derive(Debug, Error)]
pub enum DemoError {
    /// A demo already runs from this directory.
    #[error("a demo is already running (pid {0}); stop it with `ringmesh demo down`")]
    Running(i32),
    /// No demo runs from this directory.
    #[error("no demo is running from {0}")]
    NotRunning(String),
    /// A file of the demo could not be used.
    #[error("{0}")]
    Io(String),
    /// A process did not come up.
    #[error("{0}")]
    Start(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> DemoError {
    DemoError::Io(format!("{what}: {e}"))
}

/// Where the demo keeps its state, logs and pids.
pub struct Demo {
    /// The directory.
    pub dir: PathBuf,
    /// This binary, to start the demo's processes from.
    pub binary: PathBuf,
}

/// Whether process `pid` exists.
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks the pid.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid the demo recorded.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Demo {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The pid of the running demo, if any.
    pub fn running(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.path("demo.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    fn record(&self, pid: u32) -> Result<(), DemoError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("pids"))
            .map_err(|e| io("DIR/pids", e))?;
        writeln!(f, "{pid}").map_err(|e| io("DIR/pids", e))
    }

    /// Starts `ringmesh ARGS` in the background (its own session: it
    /// outlives a `step` that starts it), its output in `logs/NAME.log`.
    pub fn spawn(&self, name: &str, args: &[String]) -> Result<(), DemoError> {
        use std::os::unix::process::CommandExt;
        let logs = self.path("logs");
        std::fs::create_dir_all(&logs).map_err(|e| io("logs", e))?;
        let log = std::fs::File::create(logs.join(format!("{name}.log")))
            .map_err(|e| io("log file", e))?;
        let err = log.try_clone().map_err(|e| io("log file", e))?;
        let child = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| DemoError::Start(format!("{name}: {e}")))?;
        self.record(child.id())?;
        // Reaped by whoever stops the demo (kill, then waitpid).
        drop(child);
        Ok(())
    }

    /// Starts an instance: its app and its sidecar.
    pub fn start_instance(&self, i: &Instance, token: &Path) -> Result<(), DemoError> {
        let mut app = vec![
            "demo".to_owned(),
            "app".into(),
            "--service".into(),
            i.service.into(),
            "--version".into(),
            i.version.into(),
            "--listen".into(),
            i.app().to_string(),
        ];
        if i.service == "product" {
            app.extend(["--outbound".into(), i.outbound().to_string()]);
        }
        app.extend([
            "--log-file".into(),
            self.path("logs/services.log").display().to_string(),
            "--log-tag".into(),
            i.node.into(),
        ]);
        self.spawn(&format!("{}-app", i.node), &app)?;
        self.start_sidecar(i, token, i.app().port())
    }

    fn start_sidecar(&self, i: &Instance, token: &Path, app_port: u16) -> Result<(), DemoError> {
        let args: Vec<String> = [
            "run",
            "--control",
            &format!("https://localhost:{}", port_of(CONTROL)),
            "--ca",
            &self.path("cp/ca.pem").display().to_string(),
            "--token-file",
            &token.display().to_string(),
            "--node",
            i.node,
            "--workload",
            i.service,
            "--workload-version",
            i.version,
            "--app-port",
            &app_port.to_string(),
            "--inbound",
            &i.inbound().to_string(),
            "--outbound",
            &i.outbound().to_string(),
            "--admin",
            &i.admin().to_string(),
            "--state-dir",
            &self
                .path(&format!("state/{}", i.node))
                .display()
                .to_string(),
            "--workers",
            "1",
            "--io-engine",
            "epoll",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.spawn(i.node, &args)
    }

    /// Stops every recorded process (SIGTERM, then SIGKILL after 5s).
    pub fn stop_all(&self) {
        let pids: Vec<i32> = std::fs::read_to_string(self.path("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for &p in &pids {
            signal(p, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            reap();
            std::thread::sleep(Duration::from_millis(50));
        }
        for &p in pids.iter().filter(|&&p| alive(p)) {
            signal(p, libc::SIGKILL);
        }
        reap();
        let _ = std::fs::remove_file(self.path("pids"));
    }
}

/// Collects exited children (they are this process's).
fn reap() {
    loop {
        // SAFETY: waitpid on any child, not blocking.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// One plain HTTP/1.1 GET (`Connection: close`): status and body.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no HTTP answer".to_owned())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The background user's tally, written to `DIR/load.json` every second.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<String>,
}

/// Runs the demo until SIGINT or SIGTERM.
pub fn up(demo: &Demo, rps: u32) -> Result<(), DemoError> {
    if let Some(pid) = demo.running() {
        return Err(DemoError::Running(pid));
    }
    // A previous demo that died uncleanly: stop what it left.
    demo.stop_all();
    if demo.dir.exists() {
        std::fs::remove_dir_all(&demo.dir).map_err(|e| io("demo directory", e))?;
    }
    std::fs::create_dir_all(demo.path("logs")).map_err(|e| io("demo directory", e))?;
    std::fs::write(demo.path("demo.pid"), std::process::id().to_string())
        .map_err(|e| io("demo.pid", e))?;
    let result = run(demo, rps);
    demo.stop_all();
    let _ = std::fs::remove_file(demo.path("demo.pid"));
    result
}

fn run(demo: &Demo, rps: u32) -> Result<(), DemoError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let _ = signal_hook_flag(sig, stop.clone());
    }
    std::fs::write(demo.path("mesh.yaml"), landscape::initial_mesh())
        .map_err(|e| io("mesh.yaml", e))?;
    crate::step::save(demo, &crate::state::Walkthrough::default())?;
    println!(
        "ringmesh demo: starting the control plane, 3 services with sidecars and the gateway ..."
    );
    demo.spawn(
        "control",
        &[
            "control".into(),
            "-c".into(),
            demo.path("mesh.yaml").display().to_string(),
            "--listen".into(),
            CONTROL.into(),
            "--state-dir".into(),
            demo.path("cp").display().to_string(),
            "--dashboard".into(),
            landscape::DASHBOARD.into(),
        ],
    )?;
    let client = crate::step::Client::wait(demo, Duration::from_secs(20))?;
    for w in ["product", "recommendation", "review", "ingress"] {
        let token = client.token(w)?;
        std::fs::write(demo.path(&format!("{w}.token")), token).map_err(|e| io("token", e))?;
    }
    for i in &V1 {
        demo.start_instance(i, &demo.path(&format!("{}.token", i.service)))?;
    }
    demo.start_sidecar(&GATEWAY_PROXY, &demo.path("ingress.token"), 1)?;
    client.wait_synced(4, Duration::from_secs(30))?;
    let gateway: SocketAddr = GATEWAY.parse().map_err(|e| io("gateway address", e))?;
    let start = Instant::now();
    while http_get(gateway, "/product/1", &[]).map(|r| r.0) != Ok(200) {
        if start.elapsed() > Duration::from_secs(15) {
            return Err(DemoError::Start(format!(
                "the gateway does not answer on {GATEWAY}; see {}",
                demo.path("logs").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tally = Arc::new(Tally::default());
    if rps > 0 {
        let (tally, stop, dir) = (tally.clone(), stop.clone(), demo.dir.clone());
        std::thread::spawn(move || load(gateway, rps, &tally, &stop, &dir));
    }
    let dashboard = landscape::DASHBOARD;
    println!(
        "\n  gateway     http://{GATEWAY}/product/7\n  dashboard   http://{dashboard}/   (the whole mesh; one proxy's own: http://{}/ui)\n  control     https://{CONTROL}   (ringmesh ctl status --control https://localhost:{} --ca {} --token-file {})\n  logs        ringmesh demo logs [product|recommendation|review]\n  walkthrough ringmesh demo step observe | fault | retry | delay | timeout | deploy-v2 | canary 10|50|100 | header-canary | blue-green | reset\n  stop        Ctrl-C, or ringmesh demo down\n",
        GATEWAY_PROXY.admin(),
        port_of(CONTROL),
        demo.path("cp/ca.pem").display(),
        demo.path("cp/admin.token").display(),
    );
    println!(
        "ringmesh demo: running; a user calls the gateway {rps} times a second (DIR/load.json)"
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        reap();
    }
    println!("ringmesh demo: stopping everything");
    Ok(())
}

/// The background user: `GET /product/{1..10}` at `rps`, counted.
fn load(gateway: SocketAddr, rps: u32, tally: &Tally, stop: &AtomicBool, dir: &Path) {
    let every = Duration::from_secs(1) / rps.max(1);
    let mut next = Instant::now();
    let mut n: u64 = 0;
    let mut written = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match http_get(gateway, &format!("/product/{}", n % 10 + 1), &[]) {
            Ok((200, _)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut e) = tally.last_error.lock() {
                    *e = format!("{status}: {}", body.chars().take(200).collect::<String>());
                }
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = tally.last_error.lock() {
                    *last = e;
                }
            }
        }
        if written.elapsed() >= Duration::from_secs(1) {
            written = Instant::now();
            let last = tally
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            let json = serde_json::json!({
                "ok": tally.ok.load(Ordering::Relaxed),
                "failed": tally.failed.load(Ordering::Relaxed),
                "last_error": last,
            });
            let _ = ringmesh_control::mesh::durable::write_atomically(
                &dir.join("load.json"),
                json.to_string().as_bytes(),
                0o644,
            );
        }
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

static STOP_FLAG: Mutex<Option<Arc<AtomicBool>>> = Mutex::new(None);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe. The flag was set before
    // the handler was installed; try_lock never blocks.
    if let Ok(guard) = STOP_FLAG.try_lock()
        && let Some(flag) = guard.as_ref()
    {
        flag.store(true, Ordering::Relaxed);
    }
}

fn signal_hook_flag(sig: libc::c_int, flag: Arc<AtomicBool>) -> std::io::Result<()> {
    if let Ok(mut g) = STOP_FLAG.lock() {
        *g = Some(flag);
    }
    // SAFETY: installs a handler that only stores to an atomic.
    let r = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if r == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `ringmesh demo down`: stops the running demo and waits until it is gone.
pub fn down(demo: &Demo) -> Result<(), DemoError> {
    let Some(pid) = demo.running() else {
        // Nothing supervises what may be left: stop it here.
        demo.stop_all();
        return Err(DemoError::NotRunning(demo.dir.display().to_string()));
    };
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        if Instant::now() > deadline {
            signal(pid, libc::SIGKILL);
            demo.stop_all();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("ringmesh demo: stopped");
    Ok(())
}

/// `ringmesh demo logs [SERVICE]`: the services' request lines, as they
/// interleaved; with `follow`, new ones as they come.
pub fn logs(demo: &Demo, service: Option<&str>, follow: bool) -> Result<(), DemoError> {
    let path = demo.path("logs/services.log");
    let mut file = std::fs::File::open(&path).map_err(|e| io(&path.display().to_string(), e))?;
    let mut pending = String::new();
    loop {
        let mut chunk = String::new();
        file.read_to_string(&mut chunk)
            .map_err(|e| io("services.log", e))?;
        pending.push_str(&chunk);
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            let shown = service.is_none_or(|s| line.starts_with(&format!("[{s}-")));
            if shown {
                print!("{line}");
            }
        }
        let _ = std::io::stdout().flush();
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
