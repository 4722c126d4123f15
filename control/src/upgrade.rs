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

use std::fs;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

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

/// Most bytes one read takes; a frame body grows by at most this much per
/// read, so a length prefix alone never makes us allocate the whole limit.
const READ_CHUNK: usize = 64 << 10;

/// Control-message buffer, in u64 words so that it is aligned for `cmsghdr`:
/// room for one full SCM_RIGHTS message (CMSG_SPACE(253 * 4) = 1032 bytes)
/// with some to spare.
const CMSG_WORDS: usize = 160;

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

// ---------------------------------------------------------------------------
// Messages and framing.

/// One frame's JSON body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    Hello {
        protocol: u32,
        pid: u32,
        version: String,
    },
    Refused {
        reason: String,
    },
    Offer(Manifest),
    Fds {
        count: usize,
    },
    Ready {
        pid: u32,
    },
    Failed {
        reason: String,
    },
    Ack,
}

impl Message {
    /// The `type` name, for errors.
    fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Refused { .. } => "refused",
            Message::Offer(_) => "offer",
            Message::Fds { .. } => "fds",
            Message::Ready { .. } => "ready",
            Message::Failed { .. } => "failed",
            Message::Ack => "ack",
        }
    }
}

/// The offer: what the descriptors that follow are.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    protocol: u32,
    pid: u32,
    version: String,
    listeners: Vec<ManifestListener>,
    admin: Option<ManifestAdmin>,
    fd_total: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestListener {
    name: String,
    configured: SocketAddr,
    bound: SocketAddr,
    count: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestAdmin {
    bound: SocketAddr,
}

/// A received message and the descriptors that came with it.
#[derive(Debug)]
struct Frame {
    msg: Message,
    fds: Vec<OwnedFd>,
}

/// Length prefix and JSON body of `msg`, refused over `max` bytes.
fn encode(msg: &Message, max: usize) -> Result<Vec<u8>, UpgradeError> {
    let body = serde_json::to_vec(msg).map_err(UpgradeError::Encode)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= max)
        .ok_or(UpgradeError::TooLarge {
            bytes: body.len(),
            max,
        })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reassembles frames from non-blocking reads. Reads stop at the end of the
/// current frame, so the descriptors collected belong to it.
#[derive(Debug)]
struct Inbox {
    head: [u8; 4],
    head_len: usize,
    /// The announced body length, once the prefix is in and checked.
    body_len: Option<usize>,
    body: Vec<u8>,
    /// Descriptors received since the current frame began.
    fds: Vec<OwnedFd>,
    /// The kernel reported MSG_CTRUNC.
    truncated: bool,
    max_frame: usize,
    /// Descriptors the current frame may carry.
    max_fds: usize,
}

impl Inbox {
    fn new(max_frame: usize) -> Self {
        Inbox {
            head: [0; 4],
            head_len: 0,
            body_len: None,
            body: Vec::new(),
            fds: Vec::new(),
            truncated: false,
            max_frame,
            max_fds: 0,
        }
    }

    /// One non-blocking `recvmsg`, no further than the current frame's end.
    /// `Ok(0)` is end of stream.
    fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        match self.body_len {
            None => {
                let n = recv_with_fds(
                    fd,
                    &mut self.head[self.head_len..],
                    &mut self.fds,
                    &mut self.truncated,
                )?;
                self.head_len += n;
                Ok(n)
            }
            Some(len) => {
                let start = self.body.len();
                let want = (len - start).min(READ_CHUNK);
                self.body.resize(start + want, 0);
                let got = recv_with_fds(
                    fd,
                    &mut self.body[start..],
                    &mut self.fds,
                    &mut self.truncated,
                );
                self.body.truncate(start + got.as_ref().map_or(0, |&n| n));
                got
            }
        }
    }

    /// The frame just completed, if any; checks descriptors and the length
    /// prefix as soon as they are in, so a bad peer is stopped early.
    fn take(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.truncated {
            return Err(ProtocolError::DescriptorsTruncated);
        }
        if self.fds.len() > self.max_fds {
            return Err(ProtocolError::UnexpectedDescriptors {
                got: self.fds.len(),
                max: self.max_fds,
            });
        }
        let len = match self.body_len {
            Some(len) => len,
            None if self.head_len < 4 => return Ok(None),
            None => {
                let len = u32::from_be_bytes(self.head) as usize;
                if len == 0 {
                    return Err(ProtocolError::EmptyFrame);
                }
                if len > self.max_frame {
                    return Err(ProtocolError::FrameTooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                self.body_len = Some(len);
                self.body = Vec::with_capacity(len.min(READ_CHUNK));
                len
            }
        };
        if self.body.len() < len {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&self.body).map_err(ProtocolError::Malformed)?;
        self.head_len = 0;
        self.body_len = None;
        self.body = Vec::new();
        Ok(Some(Frame {
            msg,
            fds: mem::take(&mut self.fds),
        }))
    }
}

/// An encoded frame being written; its descriptors ride on the first
/// `sendmsg` that moves any byte (the kernel attaches them to that byte).
struct Outgoing<'a> {
    bytes: Vec<u8>,
    sent: usize,
    fds: &'a [BorrowedFd<'a>],
}

impl<'a> Outgoing<'a> {
    fn new(bytes: Vec<u8>, fds: &'a [BorrowedFd<'a>]) -> Self {
        Outgoing {
            bytes,
            sent: 0,
            fds,
        }
    }

    fn done(&self) -> bool {
        self.sent == self.bytes.len()
    }

    /// One non-blocking `sendmsg` of what is left.
    fn step(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fds = if self.sent == 0 { self.fds } else { &[] };
        let n = send_with_fds(fd, &self.bytes[self.sent..], fds)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.sent += n;
        Ok(())
    }
}

/// Errors after which the same call is simply tried again.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A vanished peer is [`UpgradeError::Closed`], whichever call noticed.
fn io_failure(during: &'static str, source: io::Error) -> UpgradeError {
    match source.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => UpgradeError::Closed { during },
        _ => UpgradeError::Io { during, source },
    }
}

/// When a wait gives up, and the timeout it came from (for the error).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    after: Duration,
}

impl Deadline {
    fn after(timeout: Duration) -> Self {
        let now = Instant::now();
        // A caller's "forever" must not overflow Instant.
        let at = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        Deadline { at, after: timeout }
    }

    /// Time left, `None` once passed.
    fn remaining(&self) -> Option<Duration> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    fn expired(&self, during: &'static str) -> UpgradeError {
        UpgradeError::Timeout {
            during,
            after: self.after,
        }
    }
}

// ---------------------------------------------------------------------------
// The two connection drivers: blocking (new side, before any runtime) and
// tokio (old side). Both run the same non-blocking steps.

/// Blocking driver: the socket is non-blocking and waits are `poll(2)`
/// against a deadline.
#[derive(Debug)]
struct Conn {
    stream: StdUnixStream,
    inbox: Inbox,
}

impl Conn {
    fn new(stream: StdUnixStream, max_frame: usize) -> Result<Self, UpgradeError> {
        stream
            .set_nonblocking(true)
            .map_err(|source| UpgradeError::Io {
                during: "setting up the connection",
                source,
            })?;
        Ok(Conn {
            stream,
            inbox: Inbox::new(max_frame),
        })
    }

    fn send(
        &mut self,
        msg: &Message,
        fds: &[BorrowedFd<'_>],
        max: usize,
        deadline: Deadline,
        during: &'static str,
    ) -> Result<(), UpgradeError> {
        let mut out = Outgoing::new(encode(msg, max)?, fds);
        let fd = self.stream.as_fd();
        while !out.done() {
            if deadline.remaining().is_none() {
                return Err(deadline.expired(during));
            }
            match out.step(fd) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(fd, libc::POLLOUT, deadline, during)?;
                }
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(io_failure(during, e)),
            }
        }
        Ok(())
    }

    fn recv(
        &mut self,
        deadline: Deadline,
        during: &'static str,
        max_fds: usize,
    ) -> Result<Frame, UpgradeError> {
        self.inbox.max_fds = max_fds;
        let fd = self.stream.as_fd();
        loop {
            if let Some(frame) = self.inbox.take()? {
                return Ok(frame);
            }
            if deadline.remaining().is_none() {
                return Err(deadline.expired(during));
            }
            match self.inbox.read(fd) {
                Ok(0) => return Err(UpgradeError::Closed { during }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(fd, libc::POLLIN, deadline, during)?;
                }
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(io_failure(during, e)),
            }
        }
    }

    /// Best-effort `failed` message; the old process treats silence the same.
    fn tell_failed(&mut self, reason: &str) {
        let failed = Message::Failed {
            reason: clip(reason.to_owned(), MAX_REASON_BYTES),
        };
        let deadline = Deadline::after(FAILED_SEND_TIMEOUT);
        if let Err(e) = self.send(
            &failed,
            &[],
            MAX_MESSAGE_BYTES,
            deadline,
            "the failure report",
        ) {
            tracing::debug!(error = %e, "upgrade: could not report the failure to the old process");
        }
    }
}

/// Waits until `fd` is ready for `events` (or has an error or hang-up, which
/// the next call reports), or the deadline passes.
fn wait(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    deadline: Deadline,
    during: &'static str,
) -> Result<(), UpgradeError> {
    loop {
        let Some(left) = deadline.remaining() else {
            return Err(deadline.expired(during));
        };
        // Rounded up: a zero timeout would spin until the deadline.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_failure(during, e));
            }
        }
    }
}

/// Tokio driver: readiness from the runtime, the same non-blocking steps
/// through `try_io`, and each call under `timeout_at`.
#[derive(Debug)]
struct AsyncConn {
    stream: UnixStream,
    inbox: Inbox,
}

impl AsyncConn {
    fn new(stream: UnixStream, max_frame: usize) -> Self {
        AsyncConn {
            stream,
            inbox: Inbox::new(max_frame),
        }
    }

    async fn send(
        &mut self,
        msg: &Message,
        fds: &[BorrowedFd<'_>],
        max: usize,
        deadline: Deadline,
        during: &'static str,
    ) -> Result<(), UpgradeError> {
        let out = Outgoing::new(encode(msg, max)?, fds);
        self.finish(out, deadline, during).await
    }

    /// Writes what is left of `out`.
    async fn finish(
        &mut self,
        mut out: Outgoing<'_>,
        deadline: Deadline,
        during: &'static str,
    ) -> Result<(), UpgradeError> {
        let stream = &self.stream;
        let work = async {
            while !out.done() {
                stream.writable().await.map_err(|e| io_failure(during, e))?;
                match stream.try_io(Interest::WRITABLE, || out.step(stream.as_fd())) {
                    Ok(()) => {}
                    Err(e) if retryable(&e) => {}
                    Err(e) => return Err(io_failure(during, e)),
                }
            }
            Ok(())
        };
        tokio::time::timeout_at(deadline.at.into(), work)
            .await
            .unwrap_or_else(|_| Err(deadline.expired(during)))
    }

    async fn recv(
        &mut self,
        deadline: Deadline,
        during: &'static str,
        max_fds: usize,
    ) -> Result<Frame, UpgradeError> {
        self.inbox.max_fds = max_fds;
        let stream = &self.stream;
        let inbox = &mut self.inbox;
        let work = async {
            loop {
                if let Some(frame) = inbox.take()? {
                    return Ok(frame);
                }
                stream.readable().await.map_err(|e| io_failure(during, e))?;
                match stream.try_io(Interest::READABLE, || inbox.read(stream.as_fd())) {
                    Ok(0) => return Err(UpgradeError::Closed { during }),
                    Ok(_) => {}
                    Err(e) if retryable(&e) => {}
                    Err(e) => return Err(io_failure(during, e)),
                }
            }
        };
        tokio::time::timeout_at(deadline.at.into(), work)
            .await
            .unwrap_or_else(|_| Err(deadline.expired(during)))
    }

    /// Best-effort `refused` message before giving up on a hand-over.
    async fn refuse_quietly(&mut self, reason: &str, timeout: Duration) {
        let refused = Message::Refused {
            reason: clip(reason.to_owned(), MAX_REASON_BYTES),
        };
        let deadline = Deadline::after(timeout.min(FAILED_SEND_TIMEOUT));
        if let Err(e) = self
            .send(&refused, &[], MAX_MESSAGE_BYTES, deadline, "the refusal")
            .await
        {
            tracing::debug!(error = %e, "upgrade: could not send the refusal");
        }
    }
}

// ---------------------------------------------------------------------------
// System calls.

/// One non-blocking `sendmsg` of `data` with `fds` (at most SCM_MAX_FD)
/// attached; returns the bytes sent. No SIGPIPE: a vanished peer is EPIPE.
fn send_with_fds(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more than SCM_MAX_FD descriptors in one message",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = (fds.len() * mem::size_of::<RawFd>()) as libc::c_uint;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic; 253 descriptors need 1032 bytes,
        // less than the buffer's 1280.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: msg_control points at an aligned buffer of msg_controllen
        // bytes, so the first header and its data lie inside it.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            if header.is_null() {
                return Err(io::Error::other("control buffer too small"));
            }
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(header).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                ptr::write_unaligned(data.add(i), f.as_raw_fd());
            }
        }
    }
    // SAFETY: msg and everything it points to outlive the call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One non-blocking `recvmsg` into `buf`. Every descriptor that arrives is
/// owned (pushed to `fds`) before anything else can fail, and is
/// close-on-exec from the start (`MSG_CMSG_CLOEXEC`); `MSG_CTRUNC` sets
/// `truncated`.
fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&cmsg) as _;
    // SAFETY: msg points at live buffers of the stated sizes.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed control messages; each SCM_RIGHTS one holds descriptors
    // now installed in this process, which nothing else owns.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let bytes =
                    ((*header).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(ptr::read_unaligned(data.add(i))));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        *truncated = true;
    }
    Ok(n as usize)
}

/// Connects to the Unix socket at `path` before the deadline. Blocking
/// connect with `SO_SNDTIMEO`: a full backlog makes a Unix connect wait.
fn connect(path: &Path, deadline: Deadline) -> Result<StdUnixStream, UpgradeError> {
    let fail = |source| UpgradeError::Connect {
        path: path.to_owned(),
        source,
    };
    let (addr, addr_len) = unix_addr(path).map_err(fail)?;
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    loop {
        let Some(left) = deadline.remaining() else {
            return Err(deadline.expired("connecting"));
        };
        set_timeout(socket.as_fd(), libc::SO_SNDTIMEO, left).map_err(fail)?;
        // SAFETY: addr is a valid sockaddr_un of addr_len bytes.
        let r = unsafe {
            libc::connect(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                addr_len,
            )
        };
        if r == 0 {
            return Ok(StdUnixStream::from(socket));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => continue,
            Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => {
                return Err(UpgradeError::NotRunning {
                    path: path.to_owned(),
                    source: e,
                });
            }
            _ => return Err(fail(e)),
        }
    }
}

/// `path` as a `sockaddr_un` and its length.
fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a socket path must be 1 to {} bytes without NUL",
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Sets `SO_SNDTIMEO` or `SO_RCVTIMEO`; never to zero, which means forever.
fn set_timeout(fd: BorrowedFd<'_>, option: libc::c_int, timeout: Duration) -> io::Result<()> {
    let timeout = timeout.max(Duration::from_micros(1));
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Rejects a peer that runs as neither our effective uid nor root; returns
/// its pid for the log.
fn check_peer(fd: BorrowedFd<'_>) -> Result<i32, UpgradeError> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call and sized as stated.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(UpgradeError::Io {
            during: "checking the peer's credentials",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: geteuid cannot fail.
    let ours = unsafe { libc::geteuid() };
    if !peer_allowed(cred.uid, ours) {
        return Err(UpgradeError::PeerNotAllowed {
            uid: cred.uid,
            ours,
        });
    }
    Ok(cred.pid)
}

/// The peer must be us or root: root may start an upgrade of our process,
/// another user may not (nor may we receive sockets from one).
fn peer_allowed(peer: libc::uid_t, ours: libc::uid_t) -> bool {
    peer == ours || peer == 0
}

/// A received descriptor must be a listening TCP socket bound to `bound`
/// (same IP and port); returns what is wrong otherwise.
fn check_listening(fd: BorrowedFd<'_>, bound: SocketAddr) -> Result<(), String> {
    let kind = sockopt_int(fd, libc::SO_TYPE).map_err(|e| format!("not a socket ({e})"))?;
    if kind != libc::SOCK_STREAM {
        return Err("not a stream socket".to_owned());
    }
    if sockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| e.to_string())? != 1 {
        return Err("not listening".to_owned());
    }
    let local = local_addr(fd).map_err(|e| e.to_string())?;
    if local.ip() != bound.ip() || local.port() != bound.port() {
        return Err(format!("bound to {local}, not {bound}"));
    }
    Ok(())
}

/// An integer `SOL_SOCKET` option.
fn sockopt_int(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for the call and sized as stated.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// `getsockname` of an IP socket.
fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is large enough for any address and len says so.
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is aligned for it.
            let sin = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an IP socket (address family {family})"),
        )),
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Write;
    use std::net::TcpStream;
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    /// Generous: only a failing test waits this long.
    const T: Duration = Duration::from_secs(5);

    // -- Fixtures: real sockets, and what the kernel says about them. ------

    /// A directory of our own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rm-upgrade-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// `n` TCP sockets listening on one 127.0.0.1 port with SO_REUSEPORT,
    /// as an old process's workers hold them.
    fn reuseport_group(n: usize) -> (SocketAddr, Vec<OwnedFd>) {
        let mut port = 0u16;
        let mut sockets = Vec::new();
        for _ in 0..n {
            // SAFETY: plain socket(2); the result is checked and owned at once.
            let raw =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
            // SAFETY: a fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let one: libc::c_int = 1;
            // SAFETY: sockaddr_in is plain data.
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            sin.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            // SAFETY: valid option and address buffers of the stated sizes.
            unsafe {
                assert_eq!(
                    libc::setsockopt(
                        raw,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEPORT,
                        (&one as *const libc::c_int).cast(),
                        mem::size_of::<libc::c_int>() as libc::socklen_t,
                    ),
                    0
                );
                assert_eq!(
                    libc::bind(
                        raw,
                        (&sin as *const libc::sockaddr_in).cast(),
                        mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    ),
                    0,
                    "bind: {}",
                    io::Error::last_os_error()
                );
                assert_eq!(libc::listen(raw, 64), 0);
            }
            port = local_addr(fd.as_fd()).expect("getsockname").port();
            sockets.push(fd);
        }
        (SocketAddr::from((Ipv4Addr::LOCALHOST, port)), sockets)
    }

    fn dup(fd: &OwnedFd) -> OwnedFd {
        fd.try_clone().expect("dup")
    }

    /// The socket's inode: the same for every descriptor of one socket, in
    /// any process.
    fn inode(fd: BorrowedFd<'_>) -> u64 {
        // SAFETY: stat is plain data, filled by fstat.
        let mut st: libc::stat = unsafe { mem::zeroed() };
        // SAFETY: valid descriptor and buffer.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_ino
    }

    /// The inodes of every socket this process holds a descriptor for.
    fn open_socket_inodes() -> HashSet<u64> {
        fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
            .filter_map(|target| {
                target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// No descriptor of these sockets is left in this process. Tests run in
    /// parallel threads of one process, so the number of entries in
    /// /proc/self/fd moves under us; the inodes of our own sockets do not.
    fn assert_none_open(inodes: &[u64]) {
        let open = open_socket_inodes();
        let leaked: Vec<&u64> = inodes.iter().filter(|i| open.contains(i)).collect();
        assert!(leaked.is_empty(), "sockets still open: {leaked:?}");
    }

    /// Connects to `addr` and accepts that connection through one socket of
    /// `group`.
    fn accept_through(group: &[OwnedFd], addr: SocketAddr) {
        let client = TcpStream::connect_timeout(&addr, T).expect("connect");
        let mut polls: Vec<libc::pollfd> = group
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfd of the stated length.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 5000) };
        assert!(ready > 0, "no socket of the group has the connection");
        let index = polls
            .iter()
            .position(|p| p.revents & libc::POLLIN != 0)
            .expect("a readable socket");
        // SAFETY: a listening socket; the result is checked and owned at once.
        let raw = unsafe {
            libc::accept4(
                group[index].as_raw_fd(),
                ptr::null_mut(),
                ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        assert!(raw >= 0, "accept: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor.
        let accepted = TcpStream::from(unsafe { OwnedFd::from_raw_fd(raw) });
        assert_eq!(
            accepted.peer_addr().expect("peer"),
            client.local_addr().expect("local")
        );
    }

    /// Room for a few hundred descriptors more than a 1024 default allows,
    /// with tests running side by side.
    fn raise_fd_limit() {
        // SAFETY: rlimit is plain data, read then written back.
        unsafe {
            let mut lim: libc::rlimit = mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 8192 {
                lim.rlim_cur = lim.rlim_max.min(8192);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }

    fn pair() -> (StdUnixStream, StdUnixStream) {
        StdUnixStream::pair().expect("socketpair")
    }

    fn tokio_stream(stream: StdUnixStream) -> UnixStream {
        stream.set_nonblocking(true).expect("nonblocking");
        UnixStream::from_std(stream).expect("tokio stream")
    }

    fn empty_offer() -> Offer {
        Offer {
            listeners: Vec::new(),
            admin: None,
            pid: 17,
            version: "old".to_owned(),
        }
    }

    fn hello() -> Message {
        Message::Hello {
            protocol: PROTOCOL,
            pid: 4242,
            version: "new".to_owned(),
        }
    }

    fn manifest(
        listeners: &[(&str, SocketAddr, usize)],
        admin: Option<SocketAddr>,
        fd_total: usize,
    ) -> Message {
        Message::Offer(Manifest {
            protocol: PROTOCOL,
            pid: 17,
            version: "old".to_owned(),
            listeners: listeners
                .iter()
                .map(|&(name, bound, count)| ManifestListener {
                    name: name.to_owned(),
                    configured: bound,
                    bound,
                    count,
                })
                .collect(),
            admin: admin.map(|bound| ManifestAdmin { bound }),
            fd_total,
        })
    }

    fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
        fds.iter().map(AsFd::as_fd).collect()
    }

    /// A scripted old process: reads the hello, then runs `script`.
    fn fake_old<R: Send + 'static>(
        stream: StdUnixStream,
        script: impl FnOnce(&mut Conn) -> R + Send + 'static,
    ) -> thread::JoinHandle<R> {
        thread::spawn(move || {
            let mut conn = Conn::new(stream, MAX_MESSAGE_BYTES).expect("conn");
            let frame = conn.recv(Deadline::after(T), "test", 0).expect("hello");
            assert!(matches!(frame.msg, Message::Hello { .. }), "{frame:?}");
            script(&mut conn)
        })
    }

    /// The reason in the `failed` message the new side sends after refusing an offer.
    fn failure_report(conn: &mut Conn) -> String {
        match conn
            .recv(Deadline::after(T), "test", 0)
            .expect("answer")
            .msg
        {
            Message::Failed { reason } => reason,
            other => panic!("expected failed, got {other:?}"),
        }
    }

    fn send(conn: &mut Conn, msg: &Message, fds: &[BorrowedFd<'_>]) {
        conn.send(msg, fds, MAX_OFFER_BYTES, Deadline::after(T), "test")
            .expect("send");
    }

    // -- The hand-over as it should go. -----------------------------------

    #[tokio::test]
    async fn hands_over_listener_groups_and_the_admin_socket() {
        let dir = TempDir::new();
        let path = dir.join("upgrade.sock");
        let groups: Vec<(String, SocketAddr, Vec<OwnedFd>)> = ["web", "api", "grpc"]
            .iter()
            .map(|name| {
                let (addr, sockets) = reuseport_group(2);
                (name.to_string(), addr, sockets)
            })
            .collect();
        let (admin_addr, admin) = reuseport_group(1);
        let group_inodes: Vec<Vec<u64>> = groups
            .iter()
            .map(|(_, _, fds)| fds.iter().map(|fd| inode(fd.as_fd())).collect())
            .collect();
        let admin_inode = inode(admin[0].as_fd());
        let configured = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let offer = Offer {
            listeners: groups
                .iter()
                .map(|(name, addr, fds)| ListenerSockets {
                    name: name.clone(),
                    configured,
                    bound: *addr,
                    sockets: fds.iter().map(dup).collect(),
                })
                .collect(),
            admin: Some((admin_addr, dup(&admin[0]))),
            pid: 17,
            version: "0.0.9".to_owned(),
        };

        let listener = listen(&path).expect("listen");
        let new_side = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut inheritance = Inheritance::receive(&path, T).expect("receive");
                assert_eq!(inheritance.old_pid, 17);
                assert_eq!(inheritance.old_version, "0.0.9");
                let conn_inode = inode(inheritance.conn.stream.as_fd());
                let listeners = mem::take(&mut inheritance.listeners);
                let admin = inheritance.admin.take().expect("admin socket");
                inheritance.ready(T).expect("ready");
                (listeners, admin, conn_inode)
            })
        };
        let (stream, _) = listener.accept().await.expect("accept");
        let old_conn_inode = inode(stream.as_fd());
        let outcome = serve_one(
            stream,
            |hello| {
                assert_eq!(hello.pid, std::process::id());
                assert_eq!(hello.version, VERSION);
                offer
            },
            T,
        )
        .await
        .expect("serve_one");
        let Outcome::Ready { new_pid, ack } = outcome else {
            panic!("expected ready, got {outcome:?}");
        };
        assert_eq!(new_pid, std::process::id());
        ack.done();
        let (listeners, (admin_bound, admin_received), new_conn_inode) =
            new_side.await.expect("new side");

        assert_eq!(listeners.len(), 3);
        for ((got, (name, addr, _)), inodes) in listeners.iter().zip(&groups).zip(&group_inodes) {
            assert_eq!(&got.name, name);
            assert_eq!(got.configured, configured);
            assert_eq!(got.bound, *addr);
            let got_inodes: Vec<u64> = got.sockets.iter().map(|fd| inode(fd.as_fd())).collect();
            assert_eq!(&got_inodes, inodes, "the same sockets, in the same order");
            for socket in &got.sockets {
                assert_eq!(local_addr(socket.as_fd()).expect("getsockname"), *addr);
                assert_eq!(
                    sockopt_int(socket.as_fd(), libc::SO_ACCEPTCONN).expect("SO_ACCEPTCONN"),
                    1
                );
            }
            accept_through(&got.sockets, *addr);
        }
        assert_eq!(admin_bound, admin_addr);
        assert_eq!(inode(admin_received.as_fd()), admin_inode);
        accept_through(std::slice::from_ref(&admin_received), admin_addr);

        let mut every: Vec<u64> = group_inodes.concat();
        every.extend([admin_inode, old_conn_inode, new_conn_inode]);
        drop((groups, admin, listeners, admin_received, listener));
        assert_none_open(&every);
    }

    #[tokio::test]
    async fn ready_returns_only_once_the_old_side_acknowledges() {
        let (old, new) = pair();
        let (returned, returns) = mpsc::channel();
        let new_side = tokio::task::spawn_blocking(move || {
            let inheritance = Inheritance::handshake(new, Deadline::after(T)).expect("receive");
            let result = inheritance.ready(T);
            let _ = returned.send(());
            result
        });
        let outcome = serve_one(tokio_stream(old), |_| empty_offer(), T)
            .await
            .expect("serve_one");
        let Outcome::Ready { ack, .. } = outcome else {
            panic!("expected ready, got {outcome:?}");
        };
        assert!(
            returns.recv_timeout(Duration::from_millis(200)).is_err(),
            "ready returned before the acknowledgement"
        );
        ack.done();
        new_side.await.expect("new side").expect("ready");
    }

    #[tokio::test]
    async fn ready_fails_when_the_old_side_drops_its_acknowledger() {
        let (old, new) = pair();
        let new_side = tokio::task::spawn_blocking(move || {
            Inheritance::handshake(new, Deadline::after(T))
                .expect("receive")
                .ready(T)
        });
        let outcome = serve_one(tokio_stream(old), |_| empty_offer(), T)
            .await
            .expect("serve_one");
        assert!(matches!(outcome, Outcome::Ready { .. }), "{outcome:?}");
        drop(outcome);
        let err = new_side.await.expect("new side").unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Closed {
                    during: "the acknowledgement"
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn more_than_253_descriptors_cross_in_several_messages() {
        raise_fd_limit();
        let groups: Vec<(SocketAddr, Vec<OwnedFd>)> =
            (0..3).map(|_| reuseport_group(100)).collect();
        let inodes: Vec<u64> = groups
            .iter()
            .flat_map(|(_, fds)| fds.iter().map(|fd| inode(fd.as_fd())))
            .collect();
        let offer = Offer {
            listeners: groups
                .into_iter()
                .enumerate()
                .map(|(i, (addr, sockets))| ListenerSockets {
                    name: format!("l{i}"),
                    configured: addr,
                    bound: addr,
                    sockets,
                })
                .collect(),
            admin: None,
            pid: 17,
            version: "old".to_owned(),
        };
        let (old, new) = pair();
        // A new side that records how the descriptors arrive.
        let new_side = tokio::task::spawn_blocking(move || {
            let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
            send(&mut conn, &hello(), &[]);
            let deadline = Deadline::after(T);
            let Message::Offer(manifest) = conn.recv(deadline, "test", 0).expect("offer").msg
            else {
                panic!("expected the offer");
            };
            let (mut chunks, mut fds) = (Vec::new(), Vec::new());
            while fds.len() < manifest.fd_total {
                let frame = conn
                    .recv(deadline, "test", MAX_FDS_PER_MESSAGE)
                    .expect("fds");
                let Message::Fds { count } = frame.msg else {
                    panic!("expected descriptors, got {:?}", frame.msg);
                };
                assert_eq!(count, frame.fds.len());
                chunks.push(count);
                fds.extend(frame.fds);
            }
            send(
                &mut conn,
                &Message::Failed {
                    reason: "only counting".to_owned(),
                },
                &[],
            );
            let received: Vec<u64> = fds.iter().map(|fd| inode(fd.as_fd())).collect();
            (chunks, received)
        });
        let outcome = serve_one(tokio_stream(old), |_| offer, T)
            .await
            .expect("serve_one");
        assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
        let (chunks, received) = new_side.await.expect("new side");
        assert_eq!(chunks, [253, 47]);
        assert_eq!(received, inodes, "every descriptor, in order");
        assert_none_open(&inodes);
    }

    #[tokio::test]
    async fn an_inheritance_of_300_sockets_keeps_each_listeners_group() {
        raise_fd_limit();
        let groups: Vec<(SocketAddr, Vec<OwnedFd>)> =
            (0..3).map(|_| reuseport_group(100)).collect();
        let expected: Vec<(SocketAddr, Vec<u64>)> = groups
            .iter()
            .map(|(addr, fds)| (*addr, fds.iter().map(|fd| inode(fd.as_fd())).collect()))
            .collect();
        let offer = Offer {
            listeners: groups
                .into_iter()
                .enumerate()
                .map(|(i, (addr, sockets))| ListenerSockets {
                    name: format!("l{i}"),
                    configured: addr,
                    bound: addr,
                    sockets,
                })
                .collect(),
            admin: None,
            pid: 17,
            version: "old".to_owned(),
        };
        let (old, new) = pair();
        let new_side = tokio::task::spawn_blocking(move || {
            let mut inheritance = Inheritance::handshake(new, Deadline::after(T)).expect("receive");
            let listeners = mem::take(&mut inheritance.listeners);
            inheritance.failed("test over");
            listeners
                .iter()
                .map(|l| {
                    (
                        l.bound,
                        l.sockets.iter().map(|fd| inode(fd.as_fd())).collect(),
                    )
                })
                .collect::<Vec<(SocketAddr, Vec<u64>)>>()
        });
        let outcome = serve_one(tokio_stream(old), |_| offer, T)
            .await
            .expect("serve_one");
        assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
        assert_eq!(new_side.await.expect("new side"), expected);
        assert_none_open(
            &expected
                .into_iter()
                .flat_map(|(_, i)| i)
                .collect::<Vec<_>>(),
        );
    }

    #[test]
    fn frames_split_into_single_bytes_are_reassembled() {
        let (addr, sockets) = reuseport_group(2);
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            let fd = conn.stream.as_fd();
            let offer =
                encode(&manifest(&[("web", addr, 2)], None, 2), MAX_OFFER_BYTES).expect("encode");
            let fds = encode(&Message::Fds { count: 2 }, MAX_MESSAGE_BYTES).expect("encode");
            let dribble = |bytes: &[u8], attached: &[BorrowedFd<'_>]| {
                for (i, byte) in bytes.iter().enumerate() {
                    let attached = if i == 0 { attached } else { &[] };
                    assert_eq!(
                        send_with_fds(fd, std::slice::from_ref(byte), attached).expect("send"),
                        1
                    );
                    thread::sleep(Duration::from_micros(200));
                }
            };
            dribble(&offer, &[]);
            dribble(&fds, &borrow_all(&sockets));
            sockets
        });
        let inheritance = Inheritance::handshake(new, Deadline::after(T)).expect("receive");
        let originals = old_side.join().expect("old side");
        assert_eq!(inheritance.listeners[0].bound, addr);
        let got: Vec<u64> = inheritance.listeners[0]
            .sockets
            .iter()
            .map(|fd| inode(fd.as_fd()))
            .collect();
        let want: Vec<u64> = originals.iter().map(|fd| inode(fd.as_fd())).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_hello_split_into_single_bytes_is_reassembled() {
        let (old, new) = pair();
        let new_side = thread::spawn(move || {
            let frame = encode(&hello(), MAX_MESSAGE_BYTES).expect("encode");
            for byte in frame {
                (&new).write_all(&[byte]).expect("write");
                thread::sleep(Duration::from_micros(200));
            }
            let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
            let offer = conn.recv(Deadline::after(T), "test", 0).expect("offer");
            assert!(matches!(offer.msg, Message::Offer(_)), "{offer:?}");
            send(
                &mut conn,
                &Message::Failed {
                    reason: "test over".to_owned(),
                },
                &[],
            );
        });
        let outcome = serve_one(
            tokio_stream(old),
            |hello| {
                assert_eq!(hello.pid, 4242);
                assert_eq!(hello.version, "new");
                empty_offer()
            },
            T,
        )
        .await
        .expect("serve_one");
        new_side.join().expect("new side");
        assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    }

    /// The caller spawns hand-overs on a multi-threaded runtime.
    #[test]
    fn a_hand_over_can_run_on_any_runtime_thread() {
        fn assert_send<F: Send>(_: &F) {}
        let (old, _new) = pair();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let future = serve_one(tokio_stream(old), |_| empty_offer(), T);
        assert_send(&future);
    }

    // -- The new process gives up or goes away: the old one keeps serving. --

    #[tokio::test]
    async fn a_new_process_that_fails_reports_its_reason() {
        let (old, new) = pair();
        let new_side = tokio::task::spawn_blocking(move || {
            Inheritance::handshake(new, Deadline::after(T))
                .expect("receive")
                .failed("config: listeners[0].address: port 80 needs privileges");
        });
        let outcome = serve_one(tokio_stream(old), |_| empty_offer(), T)
            .await
            .expect("serve_one");
        new_side.await.expect("new side");
        let Outcome::Failed { reason } = outcome else {
            panic!("expected failed, got {outcome:?}");
        };
        assert_eq!(
            reason,
            "config: listeners[0].address: port 80 needs privileges"
        );
    }

    #[tokio::test]
    async fn a_new_process_that_drops_without_answering_is_gone() {
        let (addr, sockets) = reuseport_group(2);
        let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
        let offer = Offer {
            listeners: vec![ListenerSockets {
                name: "web".to_owned(),
                configured: addr,
                bound: addr,
                sockets,
            }],
            ..empty_offer()
        };
        let (old, new) = pair();
        let new_side = tokio::task::spawn_blocking(move || {
            drop(Inheritance::handshake(new, Deadline::after(T)).expect("receive"));
        });
        let outcome = serve_one(tokio_stream(old), |_| offer, T)
            .await
            .expect("serve_one");
        new_side.await.expect("new side");
        assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
        assert_none_open(&inodes);
    }

    #[tokio::test]
    async fn a_peer_that_disconnects_before_its_hello_is_gone() {
        let (old, new) = pair();
        drop(new);
        let outcome = serve_one(tokio_stream(old), |_| panic!("no offer without a hello"), T)
            .await
            .expect("serve_one");
        assert!(matches!(outcome, Outcome::Gone), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_new_process_of_another_protocol_is_refused_with_a_reason() {
        let (old, new) = pair();
        let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
        let future_hello = Message::Hello {
            protocol: 2,
            pid: 4242,
            version: "9.0.0".to_owned(),
        };
        send(&mut conn, &future_hello, &[]);
        let err = serve_one(tokio_stream(old), |_| panic!("no offer"), T)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpgradeError::Incompatible { theirs: 2, ours: 1 }),
            "{err}"
        );
        match conn
            .recv(Deadline::after(T), "test", 0)
            .expect("refusal")
            .msg
        {
            Message::Refused { reason } => assert!(reason.contains("protocol 2"), "{reason}"),
            other => panic!("expected refused, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn refuse_tells_the_new_process_why() {
        let (old, new) = pair();
        let new_side =
            tokio::task::spawn_blocking(move || Inheritance::handshake(new, Deadline::after(T)));
        refuse(tokio_stream(old), "an upgrade is already under way", T)
            .await
            .expect("refuse");
        let err = new_side.await.expect("new side").unwrap_err();
        assert!(
            matches!(&err, UpgradeError::Refused { reason } if reason == "an upgrade is already under way"),
            "{err}"
        );
    }

    // -- The old process goes away, or sends what it should not. ----------

    #[test]
    fn an_old_process_vanishing_mid_offer_fails_the_new_one_without_leaks() {
        let (addr, sockets) = reuseport_group(2);
        let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            send(conn, &manifest(&[("web", addr, 4)], None, 4), &[]);
            send(conn, &Message::Fds { count: 2 }, &borrow_all(&sockets));
            // Gone, with 2 of the 4 descriptors sent.
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        old_side.join().expect("old side");
        assert!(
            matches!(
                err,
                UpgradeError::Closed {
                    during: "the descriptors"
                }
            ),
            "{err}"
        );
        assert_none_open(&inodes);
    }

    #[test]
    fn more_descriptors_than_announced_are_closed_and_refused() {
        let (addr, sockets) = reuseport_group(3);
        let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            send(conn, &manifest(&[("web", addr, 2)], None, 2), &[]);
            send(conn, &Message::Fds { count: 2 }, &borrow_all(&sockets));
            failure_report(conn)
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Protocol(ProtocolError::DescriptorCount {
                    expected: 2,
                    got: 3
                })
            ),
            "{err}"
        );
        let reported = old_side.join().expect("old side");
        assert!(
            reported.contains("announced 2 descriptors and carried 3"),
            "{reported}"
        );
        assert_none_open(&inodes);
    }

    #[test]
    fn fewer_descriptors_than_announced_are_refused() {
        let (addr, sockets) = reuseport_group(1);
        let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            send(conn, &manifest(&[("web", addr, 2)], None, 2), &[]);
            send(conn, &Message::Fds { count: 2 }, &borrow_all(&sockets));
            failure_report(conn)
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Protocol(ProtocolError::DescriptorCount {
                    expected: 2,
                    got: 1
                })
            ),
            "{err}"
        );
        old_side.join().expect("old side");
        assert_none_open(&inodes);
    }

    #[test]
    fn descriptors_attached_to_the_manifest_are_closed_and_refused() {
        let (addr, sockets) = reuseport_group(1);
        let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
        let (old, new) = pair();
        let old_side = fake_old(old, move |conn| {
            send(
                conn,
                &manifest(&[("web", addr, 1)], None, 1),
                &borrow_all(&sockets),
            );
            failure_report(conn)
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Protocol(ProtocolError::UnexpectedDescriptors { got: 1, max: 0 })
            ),
            "{err}"
        );
        old_side.join().expect("old side");
        assert_none_open(&inodes);
    }

    #[test]
    fn a_manifest_whose_counts_do_not_add_up_is_refused() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 80));
        for (listeners, admin, fd_total) in [
            (vec![("web", addr, 2)], None, 3),
            (vec![("web", addr, 2)], Some(addr), 2),
            (vec![("web", addr, 0)], None, 0),
            (vec![("web", addr, usize::MAX), ("api", addr, 2)], None, 1),
            (
                vec![("web", addr, MAX_DESCRIPTORS + 1)],
                None,
                MAX_DESCRIPTORS + 1,
            ),
        ] {
            let (old, new) = pair();
            let old_side = fake_old(old, move |conn| {
                send(conn, &manifest(&listeners, admin, fd_total), &[]);
                failure_report(conn)
            });
            let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
            assert!(
                matches!(err, UpgradeError::Protocol(ProtocolError::BadManifest(_))),
                "{err}"
            );
            assert!(
                old_side
                    .join()
                    .expect("old side")
                    .contains("bad offer manifest")
            );
        }
    }

    #[test]
    fn a_descriptor_that_is_not_the_announced_listener_is_refused() {
        let (announced, _announced_sockets) = reuseport_group(1);
        let (_, elsewhere) = reuseport_group(1);
        let (not_listening, _peer) = pair();
        let cases: Vec<(OwnedFd, &str)> = vec![
            (elsewhere.into_iter().next().expect("socket"), "bound to"),
            (OwnedFd::from(not_listening), "not listening"),
        ];
        for (socket, complaint) in cases {
            let inodes = [inode(socket.as_fd())];
            let (old, new) = pair();
            let old_side = fake_old(old, move |conn| {
                send(conn, &manifest(&[("web", announced, 1)], None, 1), &[]);
                send(conn, &Message::Fds { count: 1 }, &[socket.as_fd()]);
            });
            let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
            match &err {
                UpgradeError::Protocol(ProtocolError::NotAListener { name, reason }) => {
                    assert_eq!(name, "web");
                    assert!(reason.contains(complaint), "{reason}");
                }
                other => panic!("expected not-a-listener, got {other}"),
            }
            old_side.join().expect("old side");
            assert_none_open(&inodes);
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_before_any_body_is_read() {
        let (old, new) = pair();
        let old_side = fake_old(old, |conn| {
            (&conn.stream)
                .write_all(&[0xff, 0xff, 0xff, 0xff])
                .expect("write");
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Protocol(ProtocolError::FrameTooLarge {
                    len: 0xffff_ffff,
                    max: MAX_OFFER_BYTES
                })
            ),
            "{err}"
        );
        old_side.join().expect("old side");
    }

    #[test]
    fn garbage_instead_of_an_offer_is_a_protocol_error() {
        for body in [
            &b"not json at all"[..],
            b"{\"type\":\"launch\"}",
            b"{\"type\":\"offer\"}",
        ] {
            let (old, new) = pair();
            let old_side = fake_old(old, move |conn| {
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(body);
                (&conn.stream).write_all(&frame).expect("write");
                failure_report(conn)
            });
            let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
            assert!(
                matches!(err, UpgradeError::Protocol(ProtocolError::Malformed(_))),
                "{err}"
            );
            old_side.join().expect("old side");
        }
    }

    #[test]
    fn an_old_process_of_another_protocol_is_incompatible() {
        let (old, new) = pair();
        let old_side = fake_old(old, |conn| {
            let Message::Offer(mut manifest) = manifest(&[], None, 0) else {
                unreachable!()
            };
            manifest.protocol = 7;
            send(conn, &Message::Offer(manifest), &[]);
            failure_report(conn)
        });
        let err = Inheritance::handshake(new, Deadline::after(T)).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Incompatible { theirs: 7, ours: 1 }),
            "{err}"
        );
        assert!(old_side.join().expect("old side").contains("protocol 7"));
    }

    // -- Hostile input to the old process. --------------------------------

    #[tokio::test]
    async fn garbage_from_a_would_be_new_process_is_refused() {
        let (old, new) = pair();
        (&new)
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("write");
        let err = serve_one(tokio_stream(old), |_| panic!("no offer for garbage"), T)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Protocol(ProtocolError::FrameTooLarge {
                    len: 0x4745_5420,
                    max: MAX_MESSAGE_BYTES
                })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn descriptors_sent_to_the_old_process_are_closed_and_refused() {
        let (_, sockets) = reuseport_group(2);
        let inodes: Vec<u64> = sockets.iter().map(|fd| inode(fd.as_fd())).collect();
        let (old, new) = pair();
        let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
        send(&mut conn, &hello(), &borrow_all(&sockets));
        drop(sockets);
        let err = serve_one(tokio_stream(old), |_| panic!("no offer"), T)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Protocol(ProtocolError::UnexpectedDescriptors { got: 2, max: 0 })
            ),
            "{err}"
        );
        assert_none_open(&inodes);
    }

    #[tokio::test]
    async fn an_unexpected_answer_is_a_protocol_error() {
        let (old, new) = pair();
        let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
        send(&mut conn, &hello(), &[]);
        send(&mut conn, &Message::Ack, &[]);
        let err = serve_one(tokio_stream(old), |_| empty_offer(), T)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Protocol(ProtocolError::Unexpected {
                    expected: "ready or failed",
                    got: "ack"
                })
            ),
            "{err}"
        );
    }

    // -- Every wait ends. --------------------------------------------------

    #[tokio::test]
    async fn serve_one_times_out_on_a_silent_peer() {
        let (old, _silent) = pair();
        let started = Instant::now();
        let err = serve_one(
            tokio_stream(old),
            |_| panic!("no offer"),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Timeout {
                    during: "the hello",
                    ..
                }
            ),
            "{err}"
        );
        assert!(started.elapsed() < T);
    }

    #[tokio::test]
    async fn serve_one_times_out_when_no_answer_comes() {
        let (old, new) = pair();
        let mut conn = Conn::new(new, MAX_OFFER_BYTES).expect("conn");
        send(&mut conn, &hello(), &[]);
        let err = serve_one(
            tokio_stream(old),
            |_| empty_offer(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Timeout {
                    during: "the answer",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn receive_times_out_on_a_silent_old_process() {
        let dir = TempDir::new();
        let path = dir.join("upgrade.sock");
        // Accepted by the kernel (backlog), never answered.
        let _silent = StdUnixListener::bind(&path).expect("bind");
        let started = Instant::now();
        let err = Inheritance::receive(&path, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                err,
                UpgradeError::Timeout {
                    during: "the offer",
                    ..
                }
            ),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < T);
    }

    #[test]
    fn receive_without_an_old_process_says_so() {
        let dir = TempDir::new();
        let missing = dir.join("missing.sock");
        let err = Inheritance::receive(&missing, T).unwrap_err();
        assert!(matches!(err, UpgradeError::NotRunning { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("no running ringmesh accepts upgrades"),
            "{err}"
        );

        // A socket file left by a process that is gone.
        let stale = dir.join("stale.sock");
        drop(StdUnixListener::bind(&stale).expect("bind"));
        let err = Inheritance::receive(&stale, T).unwrap_err();
        assert!(matches!(err, UpgradeError::NotRunning { .. }), "{err}");
    }

    // -- The upgrade socket. ----------------------------------------------

    #[tokio::test]
    async fn listen_replaces_an_existing_socket_atomically_and_privately() {
        let dir = TempDir::new();
        let path = dir.join("upgrade.sock");
        let previous = StdUnixListener::bind(&path).expect("bind");
        previous.set_nonblocking(true).expect("nonblocking");

        // Clients connecting all the while never find the path missing.
        let (stop, stopped) = mpsc::channel::<()>();
        let prober = {
            let path = path.clone();
            thread::spawn(move || {
                let mut missing = 0;
                while stopped.try_recv().is_err() {
                    match connect(&path, Deadline::after(Duration::from_millis(50))) {
                        Err(UpgradeError::NotRunning { source, .. })
                            if source.kind() == io::ErrorKind::NotFound =>
                        {
                            missing += 1;
                        }
                        _ => {}
                    }
                }
                missing
            })
        };
        let mut replacements = Vec::new();
        for _ in 0..20 {
            replacements.push(listen(&path).expect("listen"));
        }
        stop.send(()).expect("stop");
        assert_eq!(prober.join().expect("prober"), 0, "the path was missing");

        let meta = fs::symlink_metadata(&path).expect("stat");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(&dir.0).expect("read dir").collect();
        assert_eq!(names.len(), 1, "no temporary name left behind: {names:?}");

        // A client now reaches the newest listener: find its marker byte
        // among the prober's (closed, empty) connections.
        let latest = replacements.pop().expect("a listener");
        let mut client = StdUnixStream::connect(&path).expect("connect");
        client.write_all(b"!").expect("write");
        loop {
            let (stream, _) = tokio::time::timeout(T, latest.accept())
                .await
                .expect("the client's connection in the newest listener's queue")
                .expect("accept");
            tokio::time::timeout(T, stream.readable())
                .await
                .expect("readable")
                .expect("readable");
            let mut byte = [0u8; 1];
            if stream.try_read(&mut byte).expect("read") == 1 {
                assert_eq!(&byte, b"!");
                break;
            }
        }
        drop(previous);
    }

    #[tokio::test]
    async fn listen_refuses_to_replace_a_file_that_is_not_a_socket() {
        let dir = TempDir::new();
        let path = dir.join("ringmesh.yaml");
        fs::write(&path, "listeners: []\n").expect("write");
        let err = listen(&path).unwrap_err();
        assert!(matches!(err, UpgradeError::NotASocket { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "listeners: []\n");
    }

    #[test]
    fn listen_outside_a_runtime_is_an_error() {
        let dir = TempDir::new();
        let err = listen(&dir.join("upgrade.sock")).unwrap_err();
        assert!(matches!(err, UpgradeError::Listen { .. }), "{err}");
    }

    // -- Small rules. ------------------------------------------------------

    #[test]
    fn only_our_user_or_root_may_take_part() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(1000, 0));
    }

    #[test]
    fn reasons_are_clipped_on_a_character_boundary() {
        assert_eq!(clip("ééé".to_owned(), 3), "é");
        assert_eq!(clip("short".to_owned(), 64), "short");
    }

    #[test]
    fn the_wire_format_is_length_prefixed_json() {
        let frame = encode(&Message::Fds { count: 3 }, MAX_MESSAGE_BYTES).expect("encode");
        let body = br#"{"type":"fds","count":3}"#;
        assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], body);
        let err = encode(
            &Message::Failed {
                reason: "x".repeat(100),
            },
            64,
        )
        .unwrap_err();
        assert!(
            matches!(err, UpgradeError::TooLarge { max: 64, .. }),
            "{err}"
        );
    }
}
