//! Seamless binary upgrades (HAProxy/Envoy-style hot restart): the running
//! ("old") process hands its listening sockets to a new process over a Unix
//! socket, so that no connection attempt is refused while binaries change.
//!
//! This module owns the transport and the protocol only: the upgrade socket
//! ([`listen`]), the old side's hand-over ([`serve_one`]) and the new side's
//! ([`Inheritance`]). When to upgrade, which sockets to offer, how to stop
//! accepting and drain are the caller's (`proxy.rs` and the engine).
//!
//! # Flow
//!
//! 1. `ringmesh run --upgrade-from PATH` calls [`Inheritance::receive`]: it
//!    connects to PATH and sends a hello.
//! 2. The old process, in [`serve_one`], answers with a manifest and the
//!    descriptors (duplicates it made; it keeps serving on its own copies).
//! 3. The new process starts serving on them, then calls
//!    [`Inheritance::ready`] (or [`Inheritance::failed`], or just exits: the
//!    old one then sees [`Outcome::Failed`] or [`Outcome::Gone`] and carries
//!    on unchanged).
//! 4. On [`Outcome::Ready`] the old process stops accepting, then calls
//!    [`Acknowledger::done`]; only then does `ready` return in the new one,
//!    which may now re-create the upgrade socket at PATH for the next upgrade.
//!
//! # Wire format
//!
//! A `SOCK_STREAM` Unix socket carrying frames: a 4-byte big-endian length
//! `n` (`1 <= n <= limit`), then `n` bytes of JSON, one object whose `type`
//! names the message. Unknown members are ignored, so a later version may add
//! some; an unknown `type` is an error. `hello` and `refused` must stay
//! readable by every version, since they carry the protocol number
//! ([`PROTOCOL`]). Limits: [`MAX_OFFER_BYTES`] for the offer, 64 KiB for
//! every other message.
//!
//! ```text
//! new -> old  {"type":"hello","protocol":1,"pid":4242,"version":"0.1.0"}
//! old -> new  {"type":"offer","protocol":1,"pid":17,"version":"0.1.0",
//!              "listeners":[{"name":"web","configured":"0.0.0.0:80",
//!                            "bound":"0.0.0.0:80","count":4}],
//!              "admin":{"bound":"127.0.0.1:9901"},"fd_total":5}
//!             (or {"type":"refused","reason":"..."}, then close)
//! old -> new  {"type":"fds","count":k}, k descriptors (1..=253, SCM_MAX_FD)
//!             attached by SCM_RIGHTS to this frame's first byte; repeated
//!             until fd_total descriptors have crossed
//! new -> old  {"type":"ready","pid":4242} | {"type":"failed","reason":"..."}
//! old -> new  {"type":"ack"}    (sent once the old process stopped accepting)
//! ```
//!
//! Descriptors follow the manifest's order: each listener's sockets, then the
//! admin socket. A reader never reads past the end of the current frame, so
//! descriptors are always counted against the frame they were attached to.
//!
//! # Trust
//!
//! Everything received is treated as hostile. Frames have size limits, every
//! descriptor is owned ([`OwnedFd`], received with `MSG_CMSG_CLOEXEC`) the
//! moment it arrives so that none leaks on any error path, descriptor counts
//! must match the manifest exactly, each received socket must be a TCP
//! listening socket bound to the address the manifest announced, and every
//! wait has a deadline. Both sides check the peer with `SO_PEERCRED`: it must
//! run as our effective uid, or as root. The socket file is mode 0600 as
//! well, so in practice only our user (and root) can connect.

mod conn;
mod fds;
mod frame;
mod socket;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use self::conn::{AsyncConn, Conn, Deadline, io_failure};
use self::frame::{Manifest, ManifestAdmin, ManifestListener, Message, Outgoing, encode};
use self::socket::{check_listening, check_peer, connect};

/// The protocol number both sides must share; bumped on any change an older
/// peer could not ignore.
pub const PROTOCOL: u32 = 1;

/// Largest offer manifest, in bytes of JSON.
pub const MAX_OFFER_BYTES: usize = 1 << 20;

/// Most descriptors one hand-over may carry: far above any real proxy (64
/// listeners x 256 workers), small enough that a hostile manifest cannot make
/// the new process reserve much.
pub const MAX_DESCRIPTORS: usize = 16_384;

/// Largest message other than the offer (hello, ready, failed, ack, refused).
const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// Most descriptors the kernel accepts in one message (SCM_MAX_FD).
const MAX_FDS_PER_MESSAGE: usize = 253;

/// Longest failure or refusal reason kept, in bytes; the rest is cut.
const MAX_REASON_BYTES: usize = 4096;

/// Longest version string kept from a peer, in bytes (it ends up in logs).
const MAX_VERSION_BYTES: usize = 256;

/// How long [`Inheritance::failed`] tries to deliver its reason: the old
/// process keeps serving whether or not it arrives, so this is best effort.
const FAILED_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The version this binary reports in its hello and offer.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One listener's sockets as handed over: a `SO_REUSEPORT` group (one socket
/// per old worker), all bound to the same address.
#[derive(Debug)]
pub struct ListenerSockets {
    /// The listener's name in the config.
    pub name: String,
    /// The address as configured (may have port 0).
    pub configured: SocketAddr,
    /// The address the sockets are bound to (`getsockname`); the new side
    /// checks every received socket against it.
    pub bound: SocketAddr,
    /// The listening sockets, in worker order.
    pub sockets: Vec<OwnedFd>,
}

/// What the old process offers: duplicates of its listening sockets, made by
/// the caller; [`serve_one`] closes them once they are sent.
#[derive(Debug)]
pub struct Offer {
    /// Every listener's socket group.
    pub listeners: Vec<ListenerSockets>,
    /// The admin API's listening socket and its bound address.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    /// The old process's pid.
    pub pid: u32,
    /// The old process's version.
    pub version: String,
}

/// The new process as it introduced itself. Its own claim, not verified
/// (the kernel-reported peer pid is logged beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The new process's pid, in its own pid namespace.
    pub pid: u32,
    /// The new process's version.
    pub version: String,
}

/// How one hand-over ended, on the old side.
#[derive(Debug)]
pub enum Outcome {
    /// The new process serves on the sockets. Stop accepting, then call
    /// [`Acknowledger::done`]. Dropping the acknowledger instead makes the
    /// new process's [`Inheritance::ready`] fail.
    Ready {
        /// The pid the new process reported.
        new_pid: u32,
        /// Sends the acknowledgement.
        ack: Acknowledger,
    },
    /// The new process could not start; keep serving.
    Failed {
        /// Its reason, at most 4 KiB.
        reason: String,
    },
    /// The new process went away without answering (it crashed or gave up);
    /// keep serving.
    Gone,
}

/// Sends the old process's acknowledgement that it stopped accepting.
#[derive(Debug)]
pub struct Acknowledger {
    conn: AsyncConn,
    timeout: Duration,
}

impl Acknowledger {
    /// Tells the new process this one stopped accepting; call it only once
    /// that is true, since the new process may then take over the upgrade
    /// socket path. Nothing is left to decide on failure (this process has
    /// stopped accepting either way), so errors are logged, not returned.
    ///
    /// The ack is sent right away: the new process read everything else
    /// before it said ready, so the socket has room. Should it not (a peer
    /// that said ready without reading), the rest is sent by a task on the
    /// current runtime, within the timeout given to [`serve_one`].
    pub fn done(self) {
        let Acknowledger { mut conn, timeout } = self;
        let mut out = match encode(&Message::Ack, MAX_MESSAGE_BYTES) {
            Ok(bytes) => Outgoing::new(bytes, &[]),
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: cannot acknowledge");
                return;
            }
        };
        while !out.done() {
            match out.step(conn.stream.as_fd()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    let e = io_failure("the acknowledgement", e);
                    tracing::warn!(error = %e, "upgrade: cannot acknowledge");
                    return;
                }
            }
        }
        if out.done() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("upgrade: the acknowledgement would block outside a runtime; not sent");
            return;
        };
        runtime.spawn(async move {
            let deadline = Deadline::after(timeout);
            if let Err(e) = conn.finish(out, deadline, "the acknowledgement").await {
                tracing::warn!(error = %e, "upgrade: cannot acknowledge");
            }
        });
    }
}

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Nothing listens at the path: no old process, or one that was not
    /// started with an upgrade socket, or a stale socket file.
    #[error(
        "no running ringmesh accepts upgrades at {path}: {source} (is the old process running, and was it started with this upgrade socket?)"
    )]
    NotRunning {
        /// The upgrade socket path.
        path: PathBuf,
        /// `ENOENT` or `ECONNREFUSED`.
        source: io::Error,
    },
    /// Connecting failed for another reason (permissions, path too long).
    #[error("cannot connect to the upgrade socket {path}: {source}")]
    Connect {
        /// The upgrade socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Creating the upgrade socket failed.
    #[error("cannot create the upgrade socket {path}: {source}")]
    Listen {
        /// The upgrade socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The upgrade socket path holds something other than a socket, which
    /// [`listen`] refuses to replace.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The upgrade socket path.
        path: PathBuf,
    },
    /// The peer runs as another user.
    #[error("upgrade peer runs as uid {uid}; only uid {ours} (ours) or root may take part")]
    PeerNotAllowed {
        /// The peer's uid (`SO_PEERCRED`).
        uid: u32,
        /// Our effective uid.
        ours: u32,
    },
    /// A wait ran out of time.
    #[error("upgrade timed out after {after:?} during {during}")]
    Timeout {
        /// What was under way.
        during: &'static str,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The peer closed the connection (or reset it).
    #[error("the upgrade peer closed the connection during {during}")]
    Closed {
        /// What was under way.
        during: &'static str,
    },
    /// A socket call failed.
    #[error("upgrade connection failed during {during}: {source}")]
    Io {
        /// What was under way.
        during: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The peer sent something this protocol does not allow.
    #[error("upgrade protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The peer speaks another protocol version.
    #[error("the upgrade peer speaks protocol {theirs}, this binary speaks {ours}")]
    Incompatible {
        /// The peer's protocol number.
        theirs: u32,
        /// Ours ([`PROTOCOL`]).
        ours: u32,
    },
    /// The old process turned the upgrade down.
    #[error("the old process refused the upgrade: {reason}")]
    Refused {
        /// Its reason.
        reason: String,
    },
    /// The caller's offer cannot be sent.
    #[error("cannot offer these sockets: {0}")]
    InvalidOffer(String),
    /// One of our own messages is over its size limit.
    #[error("upgrade message of {bytes} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// One of our own messages could not be encoded.
    #[error("cannot encode an upgrade message: {0}")]
    Encode(#[source] serde_json::Error),
}

/// What a peer got wrong; the hand-over is abandoned.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A frame's length prefix is over the limit (or it is not a frame at all).
    #[error("frame of {len} bytes announced, over the {max}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame's length prefix is 0.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame's body is not a message.
    #[error("undecodable message: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A message arrived where another was due.
    #[error("expected {expected}, got a {got} message")]
    Unexpected {
        /// What was due.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// More descriptors arrived with one frame than that frame may carry.
    #[error("{got} descriptors arrived with one message, more than the {max} allowed there")]
    UnexpectedDescriptors {
        /// How many arrived.
        got: usize,
        /// How many were allowed.
        max: usize,
    },
    /// A descriptor message carried another number of descriptors than it announced.
    #[error("a descriptor message announced {expected} descriptors and carried {got}")]
    DescriptorCount {
        /// Announced.
        expected: usize,
        /// Received.
        got: usize,
    },
    /// The kernel dropped descriptors that did not fit (`MSG_CTRUNC`): too
    /// many in one message, or this process is out of file descriptors.
    #[error(
        "descriptors were truncated (MSG_CTRUNC): too many in one message, or out of file descriptors"
    )]
    DescriptorsTruncated,
    /// The manifest contradicts itself.
    #[error("bad offer manifest: {0}")]
    BadManifest(String),
    /// A received descriptor is not the listening socket the manifest announced.
    #[error("the descriptor offered for {name} is not its listening socket: {reason}")]
    NotAListener {
        /// The listener's name (or `admin`).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The new side of a hand-over: what the old process offered. Answer with
/// [`ready`](Self::ready) or [`failed`](Self::failed); dropping it answers
/// like a crash ([`Outcome::Gone`]).
///
/// Take the sockets out before answering (`mem::take(&mut inh.listeners)`,
/// `inh.admin.take()`): whatever is still inside when it is consumed is closed.
#[derive(Debug)]
pub struct Inheritance {
    /// The listeners' socket groups, in the old process's order.
    pub listeners: Vec<ListenerSockets>,
    /// The admin API's listening socket and its bound address.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    /// The old process's pid, as it reported it.
    pub old_pid: u32,
    /// The old process's version, as it reported it (at most 256 bytes).
    pub old_version: String,
    conn: Conn,
}

impl Inheritance {
    /// New side (blocking; runs before any runtime exists): connects to the
    /// upgrade socket at `path`, introduces itself and receives the offer.
    /// `timeout` bounds the whole exchange.
    ///
    /// Fails with [`UpgradeError::NotRunning`] when nothing accepts at
    /// `path`; if the offer breaks the protocol, tells the old process why
    /// (best effort) before failing, and the old process keeps serving.
    pub fn receive(path: &Path, timeout: Duration) -> Result<Inheritance, UpgradeError> {
        let deadline = Deadline::after(timeout);
        let stream = connect(path, deadline)?;
        Self::handshake(stream, deadline)
    }

    /// The exchange on a connected stream (separate so tests can use a
    /// socket pair).
    fn handshake(stream: StdUnixStream, deadline: Deadline) -> Result<Inheritance, UpgradeError> {
        check_peer(stream.as_fd())?;
        let mut conn = Conn::new(stream, MAX_OFFER_BYTES)?;
        let hello = Message::Hello {
            protocol: PROTOCOL,
            pid: std::process::id(),
            version: VERSION.to_owned(),
        };
        conn.send(&hello, &[], MAX_MESSAGE_BYTES, deadline, "the hello")?;
        match receive_offer(&mut conn, deadline) {
            Ok(offered) => Ok(Inheritance {
                listeners: offered.listeners,
                admin: offered.admin,
                old_pid: offered.old_pid,
                old_version: offered.old_version,
                conn,
            }),
            Err(e) => {
                // The old process would otherwise only see us vanish; a
                // reason in its log saves a debugging session.
                if matches!(
                    e,
                    UpgradeError::Protocol(_) | UpgradeError::Incompatible { .. }
                ) {
                    conn.tell_failed(&e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Tells the old process this one serves now, then waits (at most
    /// `timeout`) for its acknowledgement that it stopped accepting. An error
    /// means the old process did not confirm: it may still be accepting.
    pub fn ready(mut self, timeout: Duration) -> Result<(), UpgradeError> {
        let deadline = Deadline::after(timeout);
        let ready = Message::Ready {
            pid: std::process::id(),
        };
        self.conn.send(
            &ready,
            &[],
            MAX_MESSAGE_BYTES,
            deadline,
            "the ready message",
        )?;
        let frame = self.conn.recv(deadline, "the acknowledgement", 0)?;
        match frame.msg {
            Message::Ack => Ok(()),
            other => Err(ProtocolError::Unexpected {
                expected: "an acknowledgement",
                got: other.kind(),
            }
            .into()),
        }
    }

    /// Tells the old process this one failed to start (the reason is cut at
    /// 4 KiB); the old process keeps serving. Best effort: bounded by one
    /// second, errors only logged, since the old process treats a vanished
    /// peer the same way.
    pub fn failed(mut self, reason: &str) {
        self.conn.tell_failed(reason);
    }
}

/// An offer as received, its descriptors checked and sorted.
struct Offered {
    listeners: Vec<ListenerSockets>,
    admin: Option<(SocketAddr, OwnedFd)>,
    old_pid: u32,
    old_version: String,
}

/// Receives the manifest, checks it, receives its descriptors and sorts them
/// into listeners; any error drops (closes) everything received so far.
fn receive_offer(conn: &mut Conn, deadline: Deadline) -> Result<Offered, UpgradeError> {
    let frame = conn.recv(deadline, "the offer", 0)?;
    let manifest = match frame.msg {
        Message::Offer(manifest) => manifest,
        Message::Refused { reason } => {
            return Err(UpgradeError::Refused {
                reason: clip(reason, MAX_REASON_BYTES),
            });
        }
        other => {
            return Err(ProtocolError::Unexpected {
                expected: "an offer",
                got: other.kind(),
            }
            .into());
        }
    };
    if manifest.protocol != PROTOCOL {
        return Err(UpgradeError::Incompatible {
            theirs: manifest.protocol,
            ours: PROTOCOL,
        });
    }
    check_manifest(&manifest)?;
    let total = manifest.fd_total;
    let mut fds = Vec::with_capacity(total);
    while fds.len() < total {
        let frame = conn.recv(deadline, "the descriptors", MAX_FDS_PER_MESSAGE)?;
        let count = match frame.msg {
            Message::Fds { count } => count,
            other => {
                return Err(ProtocolError::Unexpected {
                    expected: "descriptors",
                    got: other.kind(),
                }
                .into());
            }
        };
        let left = total - fds.len();
        if count == 0 || count > left {
            return Err(ProtocolError::BadManifest(format!(
                "a descriptor message announces {count} with {left} outstanding"
            ))
            .into());
        }
        if frame.fds.len() != count {
            return Err(ProtocolError::DescriptorCount {
                expected: count,
                got: frame.fds.len(),
            }
            .into());
        }
        fds.extend(frame.fds);
    }
    let mut fds = fds.into_iter();
    let mut listeners = Vec::with_capacity(manifest.listeners.len());
    for l in manifest.listeners {
        let sockets: Vec<OwnedFd> = fds.by_ref().take(l.count).collect();
        for socket in &sockets {
            check_listening(socket.as_fd(), l.bound).map_err(|reason| {
                ProtocolError::NotAListener {
                    name: clip(l.name.clone(), MAX_VERSION_BYTES),
                    reason,
                }
            })?;
        }
        listeners.push(ListenerSockets {
            name: l.name,
            configured: l.configured,
            bound: l.bound,
            sockets,
        });
    }
    let admin = match (manifest.admin, fds.next()) {
        (Some(admin), Some(fd)) => {
            check_listening(fd.as_fd(), admin.bound).map_err(|reason| {
                ProtocolError::NotAListener {
                    name: "admin".to_owned(),
                    reason,
                }
            })?;
            Some((admin.bound, fd))
        }
        // check_manifest made the counts add up.
        _ => None,
    };
    Ok(Offered {
        listeners,
        admin,
        old_pid: manifest.pid,
        old_version: clip(manifest.version, MAX_VERSION_BYTES),
    })
}

/// The manifest's counts must add up, within [`MAX_DESCRIPTORS`].
fn check_manifest(m: &Manifest) -> Result<(), ProtocolError> {
    let mut sum = usize::from(m.admin.is_some());
    for l in &m.listeners {
        if l.count == 0 {
            return Err(ProtocolError::BadManifest(
                "a listener with no sockets".to_owned(),
            ));
        }
        sum = sum.saturating_add(l.count);
    }
    if sum != m.fd_total {
        return Err(ProtocolError::BadManifest(format!(
            "fd_total is {} but the listeners and admin add up to {sum}",
            m.fd_total
        )));
    }
    if m.fd_total > MAX_DESCRIPTORS {
        return Err(ProtocolError::BadManifest(format!(
            "{} descriptors, over the limit of {MAX_DESCRIPTORS}",
            m.fd_total
        )));
    }
    Ok(())
}

/// Old side: creates the upgrade socket at `path`, replacing any socket left
/// there (by a crashed process, or by the process that handed over to us)
/// atomically: binds a temporary name in the same directory, sets mode 0600,
/// renames it over `path`. A connecting client therefore finds either the
/// previous socket or this one, never nothing.
///
/// Returns a tokio listener, so it must run inside a tokio runtime (an error
/// otherwise). Refuses to replace anything that is not a socket. Never unlink
/// `path` on exit: by then it may belong to the process that took over.
pub fn listen(path: &Path) -> Result<UnixListener, UpgradeError> {
    let fail = |source| UpgradeError::Listen {
        path: path.to_owned(),
        source,
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(fail(io::Error::other(
            "upgrade::listen must be called inside a tokio runtime",
        )));
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(UpgradeError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    // Short, so that the temporary name fits sun_path whenever `path` nearly does.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".rmup.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover of a crashed process that had our pid.
    let _ = fs::remove_file(&tmp);
    let listener = StdUnixListener::bind(&tmp).map_err(fail)?;
    // Between bind and chmod the temporary name has umask permissions; a
    // client that connects then is still subject to the peer uid check.
    let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(fail(e));
    }
    listener.set_nonblocking(true).map_err(fail)?;
    UnixListener::from_std(listener).map_err(fail)
}

/// Old side: one hand-over on an accepted connection. Checks the peer's uid,
/// reads its hello, calls `offer` for the sockets (duplicates the caller
/// made; they are closed here once sent), sends them, and waits for the
/// answer. `timeout` bounds each of these waits on its own (hello, sending,
/// answer; e.g. 60 s, since the answer comes only once the new process
/// started serving).
///
/// A peer that disconnects at any point is [`Outcome::Gone`], not an error;
/// on any error too the caller keeps serving. Run one hand-over at a time
/// (turn others away with [`refuse`]).
pub async fn serve_one(
    stream: UnixStream,
    offer: impl FnOnce(&Hello) -> Offer,
    timeout: Duration,
) -> Result<Outcome, UpgradeError> {
    match hand_over(stream, offer, timeout).await {
        Err(UpgradeError::Closed { during }) => {
            tracing::info!(during, "upgrade: the new process went away; still serving");
            Ok(Outcome::Gone)
        }
        other => other,
    }
}

/// Old side: turns an upgrade away (e.g. another one is under way), so that
/// the new process fails with [`UpgradeError::Refused`] and this reason.
/// Reads the hello first, so the refusal arrives as its answer.
pub async fn refuse(
    stream: UnixStream,
    reason: &str,
    timeout: Duration,
) -> Result<(), UpgradeError> {
    let mut conn = AsyncConn::new(stream, MAX_MESSAGE_BYTES);
    let deadline = Deadline::after(timeout);
    conn.recv(deadline, "the hello", 0).await?;
    let refused = Message::Refused {
        reason: clip(reason.to_owned(), MAX_REASON_BYTES),
    };
    conn.send(&refused, &[], MAX_MESSAGE_BYTES, deadline, "the refusal")
        .await
}

/// [`serve_one`]'s steps in the order they run; a vanished peer surfaces
/// as [`UpgradeError::Closed`].
async fn hand_over(
    stream: UnixStream,
    offer: impl FnOnce(&Hello) -> Offer,
    timeout: Duration,
) -> Result<Outcome, UpgradeError> {
    let peer_pid = check_peer(stream.as_fd())?;
    let mut conn = AsyncConn::new(stream, MAX_MESSAGE_BYTES);

    let frame = conn.recv(Deadline::after(timeout), "the hello", 0).await?;
    let (protocol, hello) = match frame.msg {
        Message::Hello {
            protocol,
            pid,
            version,
        } => (
            protocol,
            Hello {
                pid,
                version: clip(version, MAX_VERSION_BYTES),
            },
        ),
        other => {
            return Err(ProtocolError::Unexpected {
                expected: "a hello",
                got: other.kind(),
            }
            .into());
        }
    };
    if protocol != PROTOCOL {
        let e = UpgradeError::Incompatible {
            theirs: protocol,
            ours: PROTOCOL,
        };
        conn.refuse_quietly(&e.to_string(), timeout).await;
        return Err(e);
    }

    let (manifest, fds) = match into_manifest(offer(&hello)) {
        Ok(parts) => parts,
        Err(e) => {
            conn.refuse_quietly(&e.to_string(), timeout).await;
            return Err(e);
        }
    };
    tracing::info!(
        new_pid = hello.pid,
        peer_pid,
        new_version = %hello.version,
        listeners = manifest.listeners.len(),
        descriptors = fds.len(),
        "upgrade: offering listening sockets to the new process"
    );
    let deadline = Deadline::after(timeout);
    let manifest = Message::Offer(manifest);
    if let Err(e) = conn
        .send(&manifest, &[], MAX_OFFER_BYTES, deadline, "the offer")
        .await
    {
        if matches!(e, UpgradeError::TooLarge { .. }) {
            conn.refuse_quietly(&e.to_string(), timeout).await;
        }
        return Err(e);
    }
    for chunk in fds.chunks(MAX_FDS_PER_MESSAGE) {
        let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
        let message = Message::Fds { count: chunk.len() };
        conn.send(
            &message,
            &borrowed,
            MAX_MESSAGE_BYTES,
            deadline,
            "the descriptors",
        )
        .await?;
    }
    // Our duplicates: the new process holds its own now.
    drop(fds);

    let frame = conn.recv(Deadline::after(timeout), "the answer", 0).await?;
    match frame.msg {
        Message::Ready { pid } => {
            tracing::info!(new_pid = pid, "upgrade: the new process is serving");
            Ok(Outcome::Ready {
                new_pid: pid,
                ack: Acknowledger { conn, timeout },
            })
        }
        Message::Failed { reason } => {
            let reason = clip(reason, MAX_REASON_BYTES);
            tracing::warn!(%reason, "upgrade: the new process failed; still serving");
            Ok(Outcome::Failed { reason })
        }
        other => Err(ProtocolError::Unexpected {
            expected: "ready or failed",
            got: other.kind(),
        }
        .into()),
    }
}

/// The manifest describing `offer`, and its descriptors in wire order.
fn into_manifest(offer: Offer) -> Result<(Manifest, Vec<OwnedFd>), UpgradeError> {
    let mut fds = Vec::new();
    let mut listeners = Vec::with_capacity(offer.listeners.len());
    for l in offer.listeners {
        if l.sockets.is_empty() {
            return Err(UpgradeError::InvalidOffer(format!(
                "listener {} has no sockets",
                l.name
            )));
        }
        listeners.push(ManifestListener {
            name: l.name,
            configured: l.configured,
            bound: l.bound,
            count: l.sockets.len(),
        });
        fds.extend(l.sockets);
    }
    let admin = offer.admin.map(|(bound, fd)| {
        fds.push(fd);
        ManifestAdmin { bound }
    });
    if fds.len() > MAX_DESCRIPTORS {
        return Err(UpgradeError::InvalidOffer(format!(
            "{} descriptors, over the limit of {MAX_DESCRIPTORS}",
            fds.len()
        )));
    }
    let manifest = Manifest {
        protocol: PROTOCOL,
        pid: offer.pid,
        version: offer.version,
        listeners,
        admin,
        fd_total: fds.len(),
    };
    Ok((manifest, fds))
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
