//! A mesh across three "hosts": network namespaces joined by a bridge
//! (10.77.x.1-3/24), each with its own loopback, like three machines. The
//! control plane and product run on host 1, review v1 on host 2, review v2
//! on host 3; the sidecars reach each other at their hosts' addresses over
//! mTLS, and host 1's app is captured transparently (iptables REDIRECT to
//! the outbound listener, Istio's 15001 pattern).
//!
//! Root only (namespaces, iptables); elsewhere the test prints SKIPPED.
//! Everything created is removed on drop, also when the test fails.

mod helpers;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helpers::proxy::binary;

fn run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The namespaces, the processes in them and their logs.
struct Hosts {
    tag: String,
    net: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Hosts {
    fn ns(&self, i: u8) -> String {
        format!("{}-h{i}", self.tag)
    }

    fn ip(&self, i: u8) -> String {
        format!("10.77.{}.{i}", self.subnet())
    }

    fn subnet(&self) -> u32 {
        std::process::id() % 200 + 10
    }

    fn setup() -> Result<Hosts, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (network namespaces need it)".into());
        }
        for tool in ["ip", "iptables", "setpriv", "curl", "python3"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                return Err(format!("`{tool}` is not installed"));
            }
        }
        let tag = format!("rmh{}", std::process::id() % 100_000);
        let hosts = Hosts {
            net: format!("{tag}-net"),
            tag,
            children: Vec::new(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        run(&["ip", "netns", "add", &hosts.net])?;
        run(&[
            "ip", "-n", &hosts.net, "link", "add", "br0", "type", "bridge",
        ])?;
        run(&["ip", "-n", &hosts.net, "link", "set", "br0", "up"])?;
        for i in 1..=3u8 {
            let ns = hosts.ns(i);
            run(&["ip", "netns", "add", &ns])?;
            let port = format!("p{i}");
            run(&[
                "ip", "-n", &hosts.net, "link", "add", &port, "type", "veth", "peer", "name",
                "eth0", "netns", &ns,
            ])?;
            run(&[
                "ip", "-n", &hosts.net, "link", "set", &port, "master", "br0", "up",
            ])?;
            let cidr = format!("{}/24", hosts.ip(i));
            run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            // Any address is routable (an app may call one that only
            // exists as a name to the mesh); nothing leaves the bridge.
            run(&["ip", "-n", &ns, "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(hosts)
    }

    /// Starts `cmd` on host `i`, its output in `<name>.log`.
    fn spawn(&mut self, i: u8, name: &str, cmd: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let ns = self.ns(i);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// Runs `cmd` on host `i` to completion.
    fn exec(&self, i: u8, cmd: &[&str]) -> Result<String, String> {
        let ns = self.ns(i);
        let mut all = vec!["ip", "netns", "exec", &ns];
        all.extend_from_slice(cmd);
        run(&all)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("== {}\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `ip netns exec` children are killed above; anything they left
        // (python's server, the proxies) dies with its namespace's pids.
        for i in 1..=3u8 {
            let ns = self.ns(i);
            if let Ok(pids) = run(&["ip", "netns", "pids", &ns]) {
                for pid in pids.split_whitespace() {
                    let _ = run(&["kill", "-9", pid]);
                }
            }
            let _ = run(&["ip", "netns", "del", &ns]);
        }
        let _ = run(&["ip", "netns", "del", &self.net]);
    }
}

const MESH: &str = "\
mesh: { trust_domain: hosts.local, lease: 5s }
services:
  - { name: product, port: 8080, calls: [review] }
  - name: review
    port: 8081
    versions: [v1, v2]
    authz: { allow: [product] }
    routes:
      - match: { headers: { x-canary: { exact: \"true\" } } }
        cluster: review-v2
      - cluster: review-v1
";

#[test]
fn a_mesh_spans_three_hosts_with_a_captured_app() {
    let mut h = match Hosts::setup() {
        Ok(h) => h,
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let dir = h.dir.path().to_owned();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    let (ip1, ip2, ip3) = (h.ip(1), h.ip(2), h.ip(3));
    let cp_listen = format!("{ip1}:15010");
    let (mesh_file, cp_state) = (dir.join("mesh.yaml"), dir.join("cp"));
    h.spawn(
        1,
        "control",
        &[
            binary(),
            "control",
            "-c",
            mesh_file.to_str().unwrap(),
            "--listen",
            &cp_listen,
            "--state-dir",
            cp_state.to_str().unwrap(),
        ],
    );
    let url = format!("https://{ip1}:15010");
    let ca = cp_state.join("ca.pem");
    let admin = cp_state.join("admin.token");
    let ctl = |h: &Hosts, args: &[&str]| {
        let mut cmd = vec![binary(), "ctl"];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&[
            "--control",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--token-file",
            admin.to_str().unwrap(),
        ]);
        h.exec(1, &cmd)
    };
    let start = Instant::now();
    while ctl(&h, &["status"]).is_err() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for w in ["product", "review"] {
        let token =
            ctl(&h, &["token", "--workload", w]).unwrap_or_else(|e| panic!("{e}\n{}", h.logs()));
        std::fs::write(dir.join(format!("{w}.token")), token).unwrap();
    }
    // Apps on each host's loopback, and one service outside the mesh on host 2.
    for (i, port, text) in [
        (1u8, "8080", "product"),
        (2, "8081", "review v1"),
        (3, "8081", "review v2"),
    ] {
        let www = dir.join(format!("www{i}"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), text).unwrap();
        h.spawn(
            i,
            &format!("app{i}"),
            &[
                "python3",
                "-m",
                "http.server",
                port,
                "--bind",
                "127.0.0.1",
                "--directory",
                www.to_str().unwrap(),
            ],
        );
    }
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("index.html"), "not in the mesh").unwrap();
    h.spawn(
        2,
        "outside",
        &[
            "python3",
            "-m",
            "http.server",
            "9999",
            "--bind",
            &ip2,
            "--directory",
            outside.to_str().unwrap(),
        ],
    );
    // The apps answer before anything calls them.
    for (i, url) in [
        (1u8, "http://127.0.0.1:8080/".to_owned()),
        (2, "http://127.0.0.1:8081/".into()),
        (3, "http://127.0.0.1:8081/".into()),
        (2, format!("http://{ip2}:9999/")),
    ] {
        let start = Instant::now();
        while h
            .exec(i, &["curl", "-sf", "--max-time", "1", &url])
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{url} on host {i} does not answer\n{}",
                h.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Host 1's app is captured: its outgoing TCP goes to the sidecar's
    // 15001, except the sidecar's own (group 1337), loopback's and the
    // operator's `ctl` calls to the control plane (port 15010).
    for rule in [
        vec![
            "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "15010", "-j", "RETURN",
        ],
        vec![
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-m",
            "owner",
            "--gid-owner",
            "1337",
            "-j",
            "RETURN",
        ],
        vec![
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.0/8",
            "-j",
            "RETURN",
        ],
        vec![
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    ] {
        let mut cmd = vec!["iptables"];
        cmd.extend(rule);
        h.exec(1, &cmd).unwrap();
    }
    let sidecar = |h: &mut Hosts,
                   i: u8,
                   node: &str,
                   workload: &str,
                   version: &str,
                   app: &str,
                   capture: bool| {
        let state = dir.join(format!("state-{node}"));
        let advertise = format!("{}:15006", h.ip(i));
        let token = dir.join(format!("{workload}.token"));
        let mut cmd = vec![
            "setpriv",
            "--regid=1337",
            "--clear-groups",
            binary(),
            "run",
            "--control",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "--node",
            node,
            "--workload",
            workload,
            "--workload-version",
            version,
            "--app-port",
            app,
            "--inbound",
            "0.0.0.0:15006",
            "--advertise",
            &advertise,
            "--outbound",
            "127.0.0.1:15001",
            "--admin",
            "127.0.0.1:15000",
            "--state-dir",
            state.to_str().unwrap(),
            "--workers",
            "1",
        ];
        if capture {
            cmd.push("--capture");
        }
        h.spawn(i, node, &cmd);
    };
    sidecar(&mut h, 1, "product-1", "product", "v1", "8080", true);
    sidecar(&mut h, 2, "review-1", "review", "v1", "8081", false);
    sidecar(&mut h, 3, "review-2", "review", "v2", "8081", false);
    let start = Instant::now();
    loop {
        if let Ok(table) = ctl(&h, &["status"]) {
            if table.lines().count() == 4 {
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!("not all SYNCED: {:?}\n{}", ctl(&h, &["status"]), h.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = ctl(&h, &["status"]).unwrap();
    assert!(
        table.contains(&ip2) || table.contains("review-1"),
        "{table}"
    );
    // The app calls review by name at any address: captured, routed by
    // Host over mTLS to host 2 (v1) or host 3 (canary header, v2).
    let curl = |h: &Hosts, args: &[&str]| {
        let mut cmd = vec!["curl", "-s", "--max-time", "10"];
        cmd.extend_from_slice(args);
        h.exec(1, &cmd)
            .unwrap_or_else(|e| format!("curl failed: {e}"))
    };
    assert_eq!(
        curl(&h, &["-H", "Host: review", "http://10.99.0.1:8081/"]),
        "review v1",
        "{}",
        h.logs()
    );
    assert_eq!(
        curl(
            &h,
            &[
                "-H",
                "Host: review",
                "-H",
                "x-canary: true",
                "http://10.99.0.1:8081/"
            ]
        ),
        "review v2"
    );
    // Not a mesh service: passed through to where the app sent it.
    assert_eq!(
        curl(&h, &[&format!("http://{ip2}:9999/")]),
        "not in the mesh",
        "{}",
        h.logs()
    );
    // review v2's inbound saw product's identity, from another host.
    let review2_log = std::fs::read_to_string(dir.join("review-2.log")).unwrap();
    assert!(
        review2_log.contains("spiffe://hosts.local/ns/default/sa/product"),
        "{review2_log}"
    );
    assert!(review2_log.contains(&ip1), "{review2_log}");
    let _ = ip3;
}
