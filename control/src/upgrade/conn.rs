//! The two connection drivers: blocking (new side, before any runtime) and
//! tokio (old side). Both run the same non-blocking steps of `frame.rs`
//! against a [`Deadline`]; a vanished peer surfaces as
//! [`UpgradeError::Closed`] whichever call noticed it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UnixStream;

use super::frame::{Frame, Inbox, Message, Outgoing, encode};
use super::{FAILED_SEND_TIMEOUT, MAX_MESSAGE_BYTES, MAX_REASON_BYTES, UpgradeError, clip};

/// Errors after which the same call is simply tried again.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A vanished peer is [`UpgradeError::Closed`], whichever call noticed.
pub(super) fn io_failure(during: &'static str, source: io::Error) -> UpgradeError {
    match source.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => UpgradeError::Closed { during },
        _ => UpgradeError::Io { during, source },
    }
}

/// When a wait gives up, and the timeout it came from (for the error).
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Instant,
    after: Duration,
}

impl Deadline {
    pub(super) fn after(timeout: Duration) -> Self {
        let now = Instant::now();
        // A caller's "forever" must not overflow Instant.
        let at = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        Deadline { at, after: timeout }
    }

    /// Time left, `None` once passed.
    pub(super) fn remaining(&self) -> Option<Duration> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    pub(super) fn expired(&self, during: &'static str) -> UpgradeError {
        UpgradeError::Timeout {
            during,
            after: self.after,
        }
    }
}

/// Blocking driver: the socket is non-blocking and waits are `poll(2)`
/// against a deadline.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: StdUnixStream,
    inbox: Inbox,
}

impl Conn {
    pub(super) fn new(stream: StdUnixStream, max_frame: usize) -> Result<Self, UpgradeError> {
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

    pub(super) fn send(
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

    pub(super) fn recv(
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
    pub(super) fn tell_failed(&mut self, reason: &str) {
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
pub(super) struct AsyncConn {
    pub(super) stream: UnixStream,
    inbox: Inbox,
}

impl AsyncConn {
    pub(super) fn new(stream: UnixStream, max_frame: usize) -> Self {
        AsyncConn {
            stream,
            inbox: Inbox::new(max_frame),
        }
    }

    pub(super) async fn send(
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
    pub(super) async fn finish(
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

    pub(super) async fn recv(
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
    pub(super) async fn refuse_quietly(&mut self, reason: &str, timeout: Duration) {
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
