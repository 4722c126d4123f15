//! `ringmesh demo step NAME`: one walkthrough step, each a change to the
//! desired state through the control plane (or, for `deploy-v2`, new
//! instances joining it), printing what changed and what to look at.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringmesh_control::mesh::channel::{Channel, Endpoint, error_message};

use crate::landscape::{CONTROL, V2};
use crate::state::Walkthrough;
use crate::up::{Demo, DemoError};

/// The control plane's API, as the demo's operator.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    channel: std::cell::RefCell<Channel>,
    token: String,
}

impl Client {
    /// Waits until the demo's control plane answers.
    pub fn wait(demo: &Demo, timeout: Duration) -> Result<Client, DemoError> {
        let start = Instant::now();
        let token_path = demo.dir.join("cp/admin.token");
        let token = loop {
            if let Ok(t) = std::fs::read_to_string(&token_path)
                && !t.trim().is_empty()
            {
                break t.trim().to_owned();
            }
            if start.elapsed() > timeout {
                return Err(DemoError::Start(format!(
                    "the control plane did not start; see {}",
                    demo.dir.join("logs/control.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let endpoint = Endpoint::parse(&format!(
            "https://localhost:{}",
            CONTROL.rsplit(':').next().unwrap_or("15710")
        ))
        .map_err(|e| DemoError::Start(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DemoError::Start(e.to_string()))?;
        let client = Client {
            runtime,
            channel: std::cell::RefCell::new(Channel::new(
                endpoint,
                demo.dir.join("cp/ca.pem"),
                None,
            )),
            token,
        };
        while client
            .call(hyper::Method::GET, "/ready", Vec::new())
            .is_err()
        {
            if start.elapsed() > timeout {
                return Err(DemoError::Start("the control plane does not answer".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(client)
    }

    fn call(&self, method: hyper::Method, path: &str, body: Vec<u8>) -> Result<Vec<u8>, DemoError> {
        let mut channel = self.channel.borrow_mut();
        let (status, body) = self
            .runtime
            .block_on(channel.call(
                method,
                path,
                body,
                Some(&self.token),
                Duration::from_secs(30),
            ))
            .map_err(|e| DemoError::Start(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(DemoError::Start(format!(
                "control plane {path}: {status} {}",
                error_message(&body)
            )));
        }
        Ok(body.to_vec())
    }

    /// A bootstrap token for a workload of namespace `default`.
    pub fn token(&self, workload: &str) -> Result<String, DemoError> {
        let body = serde_json::json!({ "namespace": "default", "workload": workload });
        let answer = self.call(
            hyper::Method::POST,
            "/tokens",
            body.to_string().into_bytes(),
        )?;
        let v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| DemoError::Start(e.to_string()))?;
        Ok(v["token"].as_str().unwrap_or_default().to_owned())
    }

    /// The proxies' status rows.
    pub fn proxies(&self) -> Result<Vec<serde_json::Value>, DemoError> {
        let body = self.call(hyper::Method::GET, "/proxies", Vec::new())?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| DemoError::Start(e.to_string()))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Waits until `n` proxies are all SYNCED; returns how long it took.
    pub fn wait_synced(&self, n: usize, timeout: Duration) -> Result<Duration, DemoError> {
        let start = Instant::now();
        loop {
            let rows = self.proxies()?;
            if rows.len() >= n && rows.iter().all(|r| r["state"] == "SYNCED") {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(DemoError::Start(format!(
                    "proxies not SYNCED after {timeout:?}: {}",
                    serde_json::to_string(&rows).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces one service of the desired state; returns the new version.
    pub fn put_service(&self, name: &str, service: &serde_json::Value) -> Result<u64, DemoError> {
        let body = self.call(
            hyper::Method::PUT,
            &format!("/mesh/services/{name}"),
            service.to_string().into_bytes(),
        )?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| DemoError::Start(e.to_string()))?;
        Ok(v["version"].as_u64().unwrap_or(0))
    }
}

fn state_path(demo: &Demo) -> PathBuf {
    demo.dir.join("walkthrough.json")
}

/// Stores the walkthrough's state.
pub fn save(demo: &Demo, w: &Walkthrough) -> Result<(), DemoError> {
    std::fs::write(state_path(demo), w.to_json().to_string())
        .map_err(|e| DemoError::Io(format!("walkthrough.json: {e}")))
}

fn load_state(demo: &Demo) -> Walkthrough {
    std::fs::read(state_path(demo))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .map(|v| Walkthrough::from_json(&v))
        .unwrap_or_default()
}

/// The background user's counts so far: (ok, failed).
pub fn tally(demo: &Demo) -> (u64, u64) {
    let v: serde_json::Value = std::fs::read(demo.dir.join("load.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (
        v["ok"].as_u64().unwrap_or(0),
        v["failed"].as_u64().unwrap_or(0),
    )
}

/// Runs step `name`: `canary` takes a percent; `fault`, `retry`,
/// `delay`, `timeout` and `header-canary` take `off` to undo them.
pub fn step(demo: &Demo, name: &str, arg: Option<&str>) -> Result<(), DemoError> {
    let on = arg != Some("off");
    if demo.running().is_none() {
        return Err(DemoError::NotRunning(demo.dir.display().to_string()));
    }
    let client = Client::wait(demo, Duration::from_secs(5))?;
    let mut w = load_state(demo);
    let v2_deployed = || {
        client
            .proxies()
            .map(|rows| rows.iter().any(|r| r["node"] == "review-v2"))
            .unwrap_or(false)
    };
    let look;
    match name {
        "observe" => {
            let log =
                std::fs::read_to_string(demo.dir.join("logs/services.log")).unwrap_or_default();
            let trace = log
                .lines()
                .rev()
                .find(|l| l.contains("GET /product"))
                .and_then(|l| l.rsplit("trace=").next())
                .map(str::to_owned);
            println!(
                "dashboard: http://{}/ (every workload, who calls whom, rps, success rate, p99)",
                crate::landscape::DASHBOARD
            );
            if let Some(t) = trace {
                println!("one request across every hop (trace {t}):");
                // The gateway started the trace: its access-log line.
                let gateway_log = std::fs::read_to_string(demo.dir.join("logs/ingress-1.log"))
                    .unwrap_or_default();
                if let Some(l) = gateway_log
                    .lines()
                    .find(|l| l.contains(&format!("trace_id=\"{t}\"")))
                {
                    let field = |k: &str| {
                        l.split(' ')
                            .find_map(|f| f.strip_prefix(&format!("{k}=")))
                            .unwrap_or("-")
                            .to_owned()
                    };
                    println!(
                        "  [ingress-1] {} {} {} (the gateway's access log) trace_id=\"{t}\"",
                        field("method"),
                        field("path"),
                        field("status")
                    );
                }
                for l in log.lines().filter(|l| l.ends_with(&format!("trace={t}"))) {
                    println!("  {l}");
                }
            }
            let (ok, failed) = tally(demo);
            println!("the user so far: {ok} ok, {failed} failed");
            return Ok(());
        }
        "fault" if !on => {
            w.fault = false;
            look = "review's sidecars no longer inject the fault";
        }
        "retry" if !on => {
            w.retry = false;
            look = "calls to review are no longer retried";
        }
        "delay" if !on => {
            w.delay = false;
            look = "review's sidecars no longer delay requests";
        }
        "timeout" if !on => {
            w.timeout = false;
            look = "calls to review have the default timeout again";
        }
        "header-canary" if !on => {
            w.header_canary = false;
            look = "x-canary no longer picks v2";
        }
        "fault" => {
            w.fault = true;
            look = "review's sidecars now abort half of the requests with 503 and product's calls are not retried: the user sees errors (ringmesh demo step observe; DIR/load.json)";
        }
        "retry" => {
            w.retry = true;
            look = "product's sidecar retries review's 5xx (up to 7 attempts, with a retry budget): the fault stays, the errors disappear";
        }
        "delay" => {
            w.delay = true;
            look = "review's sidecars delay half of the requests by 2s: the user waits";
        }
        "timeout" => {
            w.timeout = true;
            look = "calls to review time out after 1s (and are retried when `retry` is on)";
        }
        "deploy-v2" => {
            if !v2_deployed() {
                for i in &V2 {
                    demo.start_instance(i, &demo.dir.join(format!("{}.token", i.service)))?;
                }
                client.wait_synced(6, Duration::from_secs(30))?;
            }
            println!("v2 of recommendation and review run beside v1, with 0% of the traffic");
            return Ok(());
        }
        "canary" => {
            let p = match arg.map(str::parse::<u32>) {
                None => 10,
                Some(Ok(p)) if p <= 100 => p,
                Some(_) => {
                    return Err(DemoError::Start(
                        "canary takes a percent: 10, 50, 100".into(),
                    ));
                }
            };
            if !v2_deployed() {
                return Err(DemoError::Start(
                    "deploy v2 first: ringmesh demo step deploy-v2".into(),
                ));
            }
            w.v2_percent = p;
            look = "the split between v1 and v2 of recommendation and review changed (each answer names its version)";
        }
        "header-canary" => {
            if !v2_deployed() {
                return Err(DemoError::Start(
                    "deploy v2 first: ringmesh demo step deploy-v2".into(),
                ));
            }
            w.header_canary = true;
            look = "requests with `x-canary: true` go to v2: curl -H 'x-canary: true' http://127.0.0.1:8080/product/7";
        }
        "blue-green" => {
            if !v2_deployed() {
                return Err(DemoError::Start(
                    "deploy v2 first: ringmesh demo step deploy-v2".into(),
                ));
            }
            w.v2_percent = if w.v2_percent == 100 { 0 } else { 100 };
            w.header_canary = false;
            look = "every call switched at once (one push); in-flight requests finish where they started";
        }
        "reset" => {
            w = Walkthrough::default();
            look = "back to the start: no fault, no retries, all traffic to v1";
        }
        other => {
            return Err(DemoError::Start(format!(
                "unknown step `{other}` (observe, fault, retry, delay, timeout, deploy-v2, canary N, header-canary, blue-green, reset; `off` after fault, retry, delay, timeout or header-canary undoes it)"
            )));
        }
    }
    let before = tally(demo);
    let version = client.put_service("review", &w.review())?;
    let version = version.max(client.put_service("recommendation", &w.recommendation())?);
    let took = client.wait_synced(1, Duration::from_secs(30))?;
    save(demo, &w)?;
    println!("desired state version {version}, every proxy SYNCED in {took:?}");
    println!("{look}");
    // What the user saw over the next seconds.
    std::thread::sleep(Duration::from_secs(3));
    let after = tally(demo);
    let (ok, failed) = (
        after.0.saturating_sub(before.0),
        after.1.saturating_sub(before.1),
    );
    if ok + failed > 0 {
        println!(
            "the user over the last 3s: {ok} ok, {failed} failed ({:.0}% success)",
            100.0 * ok as f64 / (ok + failed) as f64
        );
    }
    Ok(())
}
