//! Network namespaces for the tests that need iptables (transparent
//! capture, `tests/capture.rs`): a fresh namespace with only loopback, the
//! calling thread moved into it, iptables rules added inside it, and all of
//! it removed when the guard drops, also when the test panics.
//!
//! Moving the test's thread (not the whole process) keeps parallel tests
//! apart: sockets the thread opens, threads it spawns (the servers of
//! `tcp.rs` and `http.rs`) and processes it starts (the proxy) all live in
//! the namespace, while other tests' threads stay where they were. Every
//! address used is on the namespace's own loopback: no traffic leaves it.
//!
//! Where the machine cannot do this (not root, `ip` or `iptables`
//! missing, namespaces or NAT refused), [`Netns::enter`] says why, and the
//! test prints `SKIPPED: <reason>` and returns.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The group the proxy runs as in these tests, as Istio's sidecar does
/// (uid and gid 1337): capture rules skip its own traffic by
/// `-m owner ! --gid-owner 1337`. Only the group changes (the proxy stays
/// root), so it can still read its config and test certificates.
pub const PROXY_GID: &str = "1337";

/// Wraps the proxy binary so that it runs as group [`PROXY_GID`] (see
/// `helpers::proxy::Proxy::start_wrapped`).
pub const AS_PROXY_GROUP: &[&str] = &["setpriv", "--regid=1337", "--clear-groups"];

const PREFIX: &str = "rmcap-";

/// A network namespace the calling thread is in until the guard drops.
pub struct Netns {
    name: String,
    /// The thread's namespace before, to return to.
    original: File,
    /// Rules added, as (tool, args after `-A`), deleted in reverse on drop.
    rules: Vec<(&'static str, Vec<String>)>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// Creates a namespace with loopback up and moves the calling thread
    /// into it. `Err` says why this machine cannot (the test skips).
    pub fn enter() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (network namespaces and iptables need it)".into());
        }
        for (tool, package) in [
            ("ip", "iproute2"),
            ("iptables", "iptables"),
            ("setpriv", "util-linux"),
        ] {
            if !runs(tool, &["--version"]) && !runs(tool, &["-V"]) {
                return Err(format!(
                    "`{tool}` is not installed (Debian package {package})"
                ));
            }
        }
        remove_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        let original = match File::open("/proc/thread-self/ns/net") {
            Ok(f) => f,
            Err(e) => {
                let _ = run("ip", &["netns", "del", &name]);
                return Err(format!("cannot open this thread's namespace: {e}"));
            }
        };
        // From here on the guard cleans up whatever happens.
        let ns = Netns {
            name,
            original,
            rules: Vec::new(),
        };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])
            .map_err(|e| format!("cannot bring loopback up: {e}"))?;
        let target = File::open(format!("/run/netns/{}", ns.name))
            .map_err(|e| format!("cannot open the namespace: {e}"))?;
        // SAFETY: both descriptors are open network namespace files; setns
        // only moves the calling thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot enter the namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        // The rules the tests need must be accepted here (NAT and the owner
        // match live in kernel modules a machine may lack).
        ns.probe("iptables", "127.0.0.9")
            .map_err(|e| format!("iptables cannot add a nat REDIRECT rule here: {e}"))?;
        Ok(ns)
    }

    /// Whether `ip6tables` can redirect here (`Err` says why not).
    pub fn ipv6(&self) -> Result<(), String> {
        if !runs("ip6tables", &["--version"]) {
            return Err("`ip6tables` is not installed".into());
        }
        self.probe("ip6tables", "::2")
            .map_err(|e| format!("ip6tables cannot add a nat REDIRECT rule here: {e}"))
    }

    /// Adds and removes a rule of the kind the tests use.
    fn probe(&self, tool: &'static str, dst: &str) -> Result<(), String> {
        let rule = redirect_rule(dst, 9, Some(PROXY_GID), 9);
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        self.iptables(tool, "-A", &args)?;
        self.iptables(tool, "-D", &args)
    }

    /// Appends a rule to the nat table's OUTPUT chain with `tool`
    /// (`iptables` or `ip6tables`); it is deleted when the guard drops.
    pub fn add_rule(&mut self, tool: &'static str, rule: Vec<String>) {
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        self.iptables(tool, "-A", &args)
            .unwrap_or_else(|e| panic!("{tool} -A {rule:?}: {e}"));
        self.rules.push((tool, rule));
    }

    fn iptables(&self, tool: &str, op: &str, rule: &[&str]) -> Result<(), String> {
        let tool = path_of(tool);
        let mut args = vec![
            "netns", "exec", &self.name, &tool, "-w", "-t", "nat", op, "OUTPUT",
        ];
        args.extend_from_slice(rule);
        run("ip", &args)
    }
}

/// The arguments after `-A OUTPUT` of a rule sending TCP to `dst`:`port`
/// to local port `to`, skipping traffic of group `except_gid` (the proxy's
/// own connections) when given.
pub fn redirect_rule(dst: &str, port: u16, except_gid: Option<&str>, to: u16) -> Vec<String> {
    let mut rule: Vec<String> = ["-p", "tcp", "-d", dst, "--dport", &port.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(gid) = except_gid {
        rule.extend(["-m", "owner", "!", "--gid-owner", gid].map(String::from));
    }
    rule.extend(["-j", "REDIRECT", "--to-ports", &to.to_string()].map(String::from));
    rule
}

impl Drop for Netns {
    fn drop(&mut self) {
        // SAFETY: `original` is the thread's own earlier namespace file.
        unsafe {
            libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET);
        }
        // The rules would go with the namespace; deleting them first keeps
        // the cleanup explicit, and failures here must not mask the test's.
        for (tool, rule) in self.rules.drain(..).rev() {
            let args: Vec<&str> = rule.iter().map(String::as_str).collect();
            let tool = path_of(tool);
            let mut all = vec![
                "netns", "exec", &self.name, &tool, "-w", "-t", "nat", "-D", "OUTPUT",
            ];
            all.extend_from_slice(&args);
            let _ = run("ip", &all);
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Removes namespaces left by earlier test processes that were killed
/// before their guards ran (named after a pid that no longer exists).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// `tool`'s path: found on `PATH`, or in the sbin directories a
/// non-login root shell may leave off it.
fn path_of(tool: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| format!("{dir}/{tool}"))
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| tool.to_owned())
}

fn runs(tool: &str, args: &[&str]) -> bool {
    Command::new(path_of(tool))
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(path_of(tool))
        .args(args)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
