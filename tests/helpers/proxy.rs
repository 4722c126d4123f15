//! The proxy as a real process: started from a YAML config with the
//! `ringmesh` binary under test, JSON logs captured, addresses learned from
//! its log and admin API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::admin::{self, Response};

type Logs = Arc<(Mutex<Vec<serde_json::Value>>, Condvar)>;

/// A running `ringmesh run`.
pub struct Proxy {
    child: Child,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    logs: Logs,
    _dir: tempfile::TempDir,
}

/// Binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ringmesh")
}

impl Proxy {
    /// Starts with `config` on `engine` ("uring" or "epoll") and 2 workers;
    /// panics with the proxy's output if it does not come up.
    pub fn start(engine: &str, config: &str) -> Proxy {
        Self::start_with(config, &["--io-engine", engine, "--workers", "2"])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts with extra command-line arguments; `Err` holds the output of
    /// a proxy that exited during startup.
    pub fn start_with(config: &str, args: &[&str]) -> Result<Proxy, String> {
        Self::start_wrapped(config, args, &[])
    }

    /// Like [`Proxy::start_with`], with the binary run under `wrapper`
    /// (e.g. strace).
    pub fn start_wrapped(config: &str, args: &[&str], wrapper: &[&str]) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = dir.path().join("ringmesh.yaml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("run").arg("-c").arg(&config_path).args(args);
        Self::spawn(cmd, config_path, dir, "admin API listening")
    }

    /// Runs `ringmesh ARGS --log-format json` (any subcommand that logs
    /// `ready` with an `addr` field once serving: `admin API listening`
    /// for `run`, `control plane listening` for `control`); `admin` is
    /// that address. `dir` lives as long as the process.
    pub fn launch(args: &[String], dir: tempfile::TempDir, ready: &str) -> Result<Proxy, String> {
        Self::launch_with_env(args, &[], dir, ready)
    }

    /// [`Proxy::launch`] with extra environment variables.
    pub fn launch_with_env(
        args: &[String],
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
        ready: &str,
    ) -> Result<Proxy, String> {
        let mut cmd = Command::new(binary());
        cmd.args(args).envs(env.iter().copied());
        let config_path = dir.path().to_owned();
        Self::spawn(cmd, config_path, dir, ready)
    }

    fn spawn(
        mut cmd: Command,
        config_path: PathBuf,
        dir: tempfile::TempDir,
        ready: &str,
    ) -> Result<Proxy, String> {
        cmd.args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Own process group: a wrapper (strace) and the proxy under it
            // are killed together.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs: Logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value =
                    serde_json::from_str(&line).unwrap_or(serde_json::json!({ "raw": line }));
                let (lock, cv) = &*sink;
                lock.lock().unwrap_or_else(|p| p.into_inner()).push(value);
                cv.notify_all();
            }
            let (lock, cv) = &*sink;
            lock.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(serde_json::json!({ "eof": true }));
            cv.notify_all();
        });
        let mut proxy = Proxy {
            child,
            admin: "127.0.0.1:0".parse().map_err(|_| "addr")?,
            config_path,
            logs,
            _dir: dir,
        };
        let found = proxy.wait_log(Duration::from_secs(30), |v| {
            v["message"] == ready || v.get("eof").is_some()
        });
        match found
            .as_ref()
            .and_then(|v| v["addr"].as_str())
            .and_then(|a| a.parse().ok())
        {
            Some(addr) => {
                proxy.admin = addr;
                Ok(proxy)
            }
            None => {
                let _ = proxy.child.kill();
                let _ = proxy.child.wait();
                Err(format!("proxy did not start:\n{}", proxy.log_text()))
            }
        }
    }

    /// Waits for a log line matching `pred`, scanning old lines too.
    pub fn wait_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.logs;
        let mut logs = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = logs.iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            logs = cv
                .wait_timeout(logs, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The first access-log line ("connection closed"), waiting up to 10 s;
    /// panics with the proxy's log when there is none.
    pub fn access_log_line(&self) -> serde_json::Value {
        self.wait_log(Duration::from_secs(10), |v| {
            v["message"] == "connection closed"
        })
        .unwrap_or_else(|| panic!("no access-log line in:\n{}", self.log_text()))
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every log line so far, as text.
    pub fn log_text(&self) -> String {
        self.logs()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn get(&self, path: &str) -> Response {
        admin::request(self.admin, "GET", path, "").unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn put_config(&self, yaml: &str) -> Response {
        admin::request(self.admin, "PUT", "/config", yaml)
            .unwrap_or_else(|e| panic!("PUT /config: {e}"))
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").body
    }

    /// One metric sample's value (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        admin::metric(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// Polls a metric until `pred` holds or `timeout` passes; returns the last value.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name, labels);
            if pred(v) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.try_listener(name).unwrap_or_else(|| {
            panic!(
                "listener {name} is not bound: {}",
                self.get("/listeners").body
            )
        })
    }

    pub fn try_listener(&self, name: &str) -> Option<SocketAddr> {
        let v = self.get("/listeners").json();
        v["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?["bound"]
            .as_str()?
            .parse()
            .ok()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe {
            libc::kill(-self.pid(), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with one TCP listener `name` on an ephemeral port forwarding to
/// cluster `name` with `endpoints`; `listener_extra` and `cluster_extra` are
/// YAML lines appended to each.
pub fn one_listener(
    name: &str,
    endpoints: &[SocketAddr],
    listener_extra: &str,
    cluster_extra: &str,
) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: {name}\n    listen: 127.0.0.1:0\n    cluster: {name}\n{}clusters:\n  - name: {name}\n    endpoints: [{}]\n{}",
        indent(listener_extra),
        eps.join(", "),
        indent(cluster_extra)
    )
}

fn indent(lines: &str) -> String {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {}\n", l.trim()))
        .collect()
}
