//! Messages and framing: the JSON messages of the hand-over, their
//! length-prefixed encoding, and the frame reassembly that keeps every
//! received descriptor with the frame it was attached to. The `sendmsg` and
//! `recvmsg` calls that move bytes and descriptors are in `fds.rs`; waiting
//! and deadlines are the drivers' (`conn.rs`).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use super::fds::{recv_with_fds, send_with_fds};
use super::{ProtocolError, UpgradeError};

/// Most bytes one read takes; a frame body grows by at most this much per
/// read, so a length prefix alone never makes us allocate the whole limit.
const READ_CHUNK: usize = 64 << 10;

/// One frame's JSON body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Message {
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
    pub(super) fn kind(&self) -> &'static str {
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
pub(super) struct Manifest {
    pub(super) protocol: u32,
    pub(super) pid: u32,
    pub(super) version: String,
    pub(super) listeners: Vec<ManifestListener>,
    pub(super) admin: Option<ManifestAdmin>,
    pub(super) fd_total: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ManifestListener {
    pub(super) name: String,
    pub(super) configured: SocketAddr,
    pub(super) bound: SocketAddr,
    pub(super) count: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ManifestAdmin {
    pub(super) bound: SocketAddr,
}

/// A received message and the descriptors that came with it.
#[derive(Debug)]
pub(super) struct Frame {
    pub(super) msg: Message,
    pub(super) fds: Vec<OwnedFd>,
}

/// Length prefix and JSON body of `msg`, refused over `max` bytes.
pub(super) fn encode(msg: &Message, max: usize) -> Result<Vec<u8>, UpgradeError> {
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
pub(super) struct Inbox {
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
    pub(super) max_fds: usize,
}

impl Inbox {
    pub(super) fn new(max_frame: usize) -> Self {
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
    pub(super) fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
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
    pub(super) fn take(&mut self) -> Result<Option<Frame>, ProtocolError> {
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
pub(super) struct Outgoing<'a> {
    bytes: Vec<u8>,
    sent: usize,
    fds: &'a [BorrowedFd<'a>],
}

impl<'a> Outgoing<'a> {
    pub(super) fn new(bytes: Vec<u8>, fds: &'a [BorrowedFd<'a>]) -> Self {
        Outgoing {
            bytes,
            sent: 0,
            fds,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.sent == self.bytes.len()
    }

    /// One non-blocking `sendmsg` of what is left.
    pub(super) fn step(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fds = if self.sent == 0 { self.fds } else { &[] };
        let n = send_with_fds(fd, &self.bytes[self.sent..], fds)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.sent += n;
        Ok(())
    }
}
