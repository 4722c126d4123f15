//! Binary upgrades, as the two processes live them.
//!
//! The running (old) process listens on its upgrade socket
//! (`--upgrade-socket PATH`). A new `ringmesh run --upgrade-from PATH`
//! connects there before it starts its workers, receives every listening
//! socket and the admin API's ([`crate::upgrade`] carries them), applies
//! its *own* config on them, and only then says it is ready. The old
//! process stops accepting (its sockets close; the kernel queues stay open
//! because the new process holds the same sockets), acknowledges, stops
//! its admin API and drains: connections in flight finish on the old
//! binary, new ones are accepted by the new one. The new process then
//! takes the upgrade socket's path over for the next upgrade.
//!
//! Whatever goes wrong before the new process says it is ready (bad config,
//! port it cannot bind, crash) leaves the old one serving as before.
//!
//! `SIGUSR2` on a process started with `--upgrade-socket` starts the new
//! process itself: the binary at the path this one was started from
//! (replaced on disk by the upgrade), with the same arguments plus
//! `--upgrade-from`. That is what a systemd unit's `ExecReload` sends
//! (`deploy/systemd/ringmesh.service`).

use std::ffi::OsString;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::proxy::Proxy;
use crate::upgrade::{self, Inheritance, ListenerSockets, Offer, Outcome};

/// How long a new process may take from receiving the sockets to serving
/// on them (config compile, certificate loads, discovery priming).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a refusal waits for the new process to read it.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the new process waits for the old one to answer at all.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The old process: serves hand-overs on `listener` until one succeeds.
/// `admin` is the admin API's task, stopped once the new process serves
/// (it has the same socket).
pub(crate) async fn serve_upgrades(
    proxy: Arc<Proxy>,
    listener: tokio::net::UnixListener,
    admin: tokio::task::AbortHandle,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if proxy.is_draining() {
            tracing::warn!("upgrade refused: this process is draining");
            let _ = upgrade::refuse(stream, "the running process is draining", HELLO_TIMEOUT).await;
            continue;
        }
        let offer = match offer(&proxy).await {
            Ok(offer) => offer,
            Err(e) => {
                tracing::error!(error = %e, "upgrade refused: cannot duplicate the listening sockets");
                let reason =
                    format!("the running process cannot duplicate its listening sockets: {e}");
                let _ = upgrade::refuse(stream, &reason, HELLO_TIMEOUT).await;
                continue;
            }
        };
        match upgrade::serve_one(stream, move |_| offer, READY_TIMEOUT).await {
            Ok(Outcome::Ready { new_pid, ack }) => {
                tracing::info!(
                    new_pid,
                    "upgrade: the new process serves; this one stops accepting and drains"
                );
                proxy.handed_over.store(true, Ordering::Relaxed);
                proxy.draining.store(true, Ordering::Relaxed);
                proxy.engine.lock().await.stop_accepting().await;
                admin.abort();
                // The admin task's socket closes with it; this duplicate too.
                drop(
                    proxy
                        .admin_socket
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take(),
                );
                ack.done();
                proxy.request_drain();
                return;
            }
            Ok(Outcome::Failed { reason }) => {
                tracing::error!(reason = %reason, "upgrade failed: the new process could not start; this one keeps serving")
            }
            Ok(Outcome::Gone) => {
                tracing::error!(
                    "upgrade failed: the new process went away before it was ready; this one keeps serving"
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade failed; this one keeps serving")
            }
        }
    }
}

/// Duplicates of every listening socket and of the admin API's.
async fn offer(proxy: &Proxy) -> std::io::Result<Offer> {
    let listeners = proxy
        .engine
        .lock()
        .await
        .handover()?
        .into_iter()
        .map(|h| ListenerSockets {
            name: h.listener.name.to_string(),
            configured: h.listener.configured,
            bound: h.listener.bound,
            sockets: h.sockets.into_iter().map(OwnedFd::from).collect(),
        })
        .collect();
    let admin = match &*proxy.admin_socket.lock().unwrap_or_else(|p| p.into_inner()) {
        Some((bound, socket)) => Some((*bound, OwnedFd::from(socket.try_clone()?))),
        None => None,
    };
    Ok(Offer {
        listeners,
        admin,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// The new process's inheritance, split for the engine and the admin API.
pub(crate) struct Inherited {
    /// Told whether this process serves (or failed).
    pub answer: Inheritance,
    /// Listening sockets for the engine.
    pub listeners: Vec<ringmesh_core::InheritedListener>,
    /// The admin API's listening socket and the address it is bound to.
    pub admin: Option<(std::net::SocketAddr, std::net::TcpListener)>,
}

/// The new process: takes the sockets of the process serving `path`.
pub(crate) fn take_over(path: &Path) -> Result<Inherited, upgrade::UpgradeError> {
    let mut answer = Inheritance::receive(path, CONNECT_TIMEOUT)?;
    let listeners = std::mem::take(&mut answer.listeners)
        .into_iter()
        .map(|l| ringmesh_core::InheritedListener {
            name: Arc::from(l.name.as_str()),
            configured: l.configured,
            sockets: l.sockets.into_iter().map(tcp_listener).collect(),
        })
        .collect::<Vec<_>>();
    let admin = answer
        .admin
        .take()
        .map(|(bound, fd)| (bound, tcp_listener(fd)));
    tracing::info!(
        old_pid = answer.old_pid,
        old_version = %answer.old_version,
        listeners = listeners.len(),
        "upgrade: received the listening sockets"
    );
    Ok(Inherited {
        answer,
        listeners,
        admin,
    })
}

fn tcp_listener(fd: OwnedFd) -> std::net::TcpListener {
    // SAFETY: the descriptor is ours (received over SCM_RIGHTS); the engine
    // checks that it is a listening TCP socket before serving it.
    unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// What `SIGUSR2` needs to start the next process.
#[derive(Debug, Clone)]
pub struct Successor {
    /// The binary's path as started (the upgraded file is found there).
    pub program: PathBuf,
    /// This process's arguments, without the program name.
    pub args: Vec<OsString>,
    /// The upgrade socket the new process takes over from.
    pub socket: PathBuf,
}

impl Successor {
    /// This process's arguments with `program` (resolved at startup), to
    /// be started again with `--upgrade-from socket`.
    pub fn of_this_process(program: PathBuf, socket: PathBuf) -> Successor {
        Successor {
            program,
            args: std::env::args_os().skip(1).collect(),
            socket,
        }
    }

    /// The arguments of the new process: these, with any earlier
    /// `--upgrade-from` replaced.
    pub fn new_args(&self) -> Vec<OsString> {
        let mut out = Vec::with_capacity(self.args.len() + 2);
        let mut skip_value = false;
        for a in &self.args {
            if skip_value {
                skip_value = false;
                continue;
            }
            if a == "--upgrade-from" {
                skip_value = true;
                continue;
            }
            if a.as_encoded_bytes().starts_with(b"--upgrade-from=") {
                continue;
            }
            out.push(a.clone());
        }
        out.push("--upgrade-from".into());
        out.push(self.socket.clone().into_os_string());
        out
    }

    /// Starts the new process; it reports its own success or failure in
    /// the log (and this process's upgrade socket sees its hand-over).
    pub fn spawn(&self) -> std::io::Result<u32> {
        let mut child = std::process::Command::new(&self.program)
            .args(self.new_args())
            .stdin(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id();
        // Reaped here if it exits first (a failed start), so no zombie is
        // left behind; if this process exits first, init adopts it.
        std::thread::Builder::new()
            .name("ringmesh-successor".into())
            .spawn(move || match child.wait() {
                Ok(status) if !status.success() => {
                    tracing::error!(pid, %status, "upgrade: the new process exited")
                }
                _ => {}
            })?;
        Ok(pid)
    }
}

/// Starts a successor on every `SIGUSR2` (handler registered at startup
/// with the other signals); without an upgrade socket the signal is
/// ignored, and said so.
pub(crate) async fn upgrade_on_sigusr2(
    successor: Option<Successor>,
    usr2: Option<tokio::signal::unix::Signal>,
) {
    let Some(mut usr2) = usr2 else {
        return;
    };
    while usr2.recv().await.is_some() {
        let Some(successor) = &successor else {
            tracing::warn!("SIGUSR2 ignored: binary upgrades need --upgrade-socket PATH");
            continue;
        };
        match successor.spawn() {
            Ok(pid) => tracing::info!(
                pid,
                program = %successor.program.display(),
                "SIGUSR2: started the new process; it takes the sockets over when ready"
            ),
            Err(e) => tracing::error!(
                error = %e,
                program = %successor.program.display(),
                "SIGUSR2: cannot start the new process; this one keeps serving"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_runs_with_the_same_arguments_and_upgrade_from() {
        let s = Successor {
            program: "/usr/bin/ringmesh".into(),
            args: [
                "run",
                "-c",
                "/etc/ringmesh.yaml",
                "--upgrade-from",
                "/old.sock",
                "--upgrade-from=/older.sock",
                "--upgrade-socket",
                "/run/up.sock",
            ]
            .map(OsString::from)
            .to_vec(),
            socket: "/run/up.sock".into(),
        };
        let args: Vec<String> = s
            .new_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "run",
                "-c",
                "/etc/ringmesh.yaml",
                "--upgrade-socket",
                "/run/up.sock",
                "--upgrade-from",
                "/run/up.sock"
            ]
        );
    }
}
