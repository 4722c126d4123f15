//! Moving bytes both ways between the client and the upstream.
//!
//! Each direction owns one buffer and reuses it for every read (no
//! allocation per read). Buffers start small, because a pending
//! completion-based read holds its buffer while the connection is idle, and
//! grow when a read fills them, because large reads are what make bulk
//! transfers cheap: 2 KiB -> 8 -> 32 -> 64 KiB, and to 256 KiB once the
//! direction has moved 8 MiB (a sustained transfer, as ztunnel does).
//!
//! Half-close: when one side sends FIN, the other side's write half is shut
//! down and the opposite direction keeps flowing until it finishes too.
//! Errors: when one side fails (reset, broken pipe, ...), the other side is
//! reset as well (SO_LINGER 0), so a reset travels through the proxy.

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select, try_join};
use futures_util::pin_mut;

use crate::metrics::CloseReason;
use crate::per_core::Counter;
use crate::runtime::{self, AsyncRead, AsyncWrite, AsyncWriteExt, BufResult, TcpStream};

/// First buffer size per direction.
pub const INITIAL_BUFFER: usize = 2 * 1024;
/// Buffer size reached by any direction whose reads fill their buffer.
pub const BULK_BUFFER: usize = 64 * 1024;
/// Largest buffer size per direction, for sustained bulk transfers: 256 KiB
/// reads cost ~35% less proxy CPU per GiB than 64 KiB ones (bench/README.md).
pub const MAX_BUFFER: usize = 256 * 1024;
/// Bytes a direction must have moved before its buffer may exceed
/// [`BULK_BUFFER`], so that only long transfers hold the largest buffers.
pub const SUSTAINED_BULK_BYTES: u64 = 8 * 1024 * 1024;

/// Which end of the proxied connection a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Downstream,
    Upstream,
}

#[derive(Debug)]
pub(crate) struct CopyError {
    /// The side whose socket failed.
    pub side: Side,
    pub error: io::Error,
}

/// Counters a direction adds its bytes to.
pub(crate) struct DirectionCounters<'a> {
    /// This connection's own count, for its access-log line.
    pub connection: &'a Cell<u64>,
    pub listener: &'a Counter,
    pub cluster: &'a Counter,
    /// Called once, when the first bytes arrive in this direction.
    pub on_first_data: Option<&'a dyn Fn()>,
}

/// The outcome of [`proxy_both_ways`].
pub(crate) struct ForwardOutcome {
    pub reason: CloseReason,
    pub error: Option<io::Error>,
}

/// One end of a proxied connection, plain TCP or TLS: what the copy loop
/// needs from it.
pub(crate) trait Duplex {
    /// Reads into `buf` (up to its capacity); `Ok(0)` at EOF.
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>>;
    /// Writes all of `buf`.
    async fn write_all_from(&self, buf: Vec<u8>) -> BufResult<(), Vec<u8>>;
    /// Signals end of data (FIN, or close_notify then FIN).
    async fn shutdown_write(&self) -> io::Result<()>;
    /// Makes the coming close a reset.
    fn reset_on_close(&self);
}

impl Duplex for TcpStream {
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        let mut s = self;
        s.read(buf).await
    }

    async fn write_all_from(&self, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        let mut s = self;
        s.write_all(buf).await
    }

    async fn shutdown_write(&self) -> io::Result<()> {
        let mut s = self;
        s.shutdown().await
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl Duplex for crate::tls::stream::TlsStream {
    async fn read_into(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        self.read_plain(buf).await
    }

    async fn write_all_from(&self, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        self.write_plain(buf).await
    }

    async fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown().await
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

/// Copies `from` -> `to` until EOF, then shuts down `to`'s write half.
async fn copy_one_way(
    from: &impl Duplex,
    to: &impl Duplex,
    from_side: Side,
    to_side: Side,
    counters: DirectionCounters<'_>,
    last_activity: &Cell<Instant>,
) -> Result<(), CopyError> {
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_BUFFER);
    let mut moved: u64 = 0;
    loop {
        // compio reads at offset 0 but only ever raises a Vec's length:
        // without this, a short read after a long one resends stale bytes.
        buf.clear();
        let BufResult(res, b) = from.read_into(buf).await;
        buf = b;
        let n = match res {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                return Err(CopyError {
                    side: from_side,
                    error,
                });
            }
        };
        last_activity.set(Instant::now());
        if moved == 0
            && let Some(f) = counters.on_first_data
        {
            f();
        }
        counters
            .connection
            .set(counters.connection.get() + n as u64);
        counters.listener.add(n as u64);
        counters.cluster.add(n as u64);
        let BufResult(res, b) = to.write_all_from(buf).await;
        buf = b;
        if let Err(error) = res {
            return Err(CopyError {
                side: to_side,
                error,
            });
        }
        moved += n as u64;
        if n == buf.capacity() {
            // A full read means more is waiting: take a bigger buffer.
            let limit = if moved >= SUSTAINED_BULK_BYTES {
                MAX_BUFFER
            } else {
                BULK_BUFFER
            };
            if buf.capacity() < limit {
                buf = Vec::with_capacity((buf.capacity() * 4).min(limit));
            }
        }
    }
    // Propagate the FIN; the other direction keeps going.
    to.shutdown_write().await.map_err(|error| CopyError {
        side: to_side,
        error,
    })
}

/// Waits until nothing has moved for `idle_timeout`.
async fn idle_watch(idle_timeout: Duration, last_activity: &Cell<Instant>) {
    loop {
        let deadline = last_activity.get() + idle_timeout;
        if Instant::now() >= deadline {
            return;
        }
        runtime::sleep_until(deadline).await;
    }
}

/// Proxies until both directions have finished, one side fails, or the
/// connection is idle for `idle_timeout`.
pub(crate) async fn proxy_both_ways(
    downstream: &impl Duplex,
    upstream: &impl Duplex,
    idle_timeout: Duration,
    to_upstream: DirectionCounters<'_>,
    to_downstream: DirectionCounters<'_>,
) -> ForwardOutcome {
    let last_activity = Cell::new(Instant::now());
    let up = copy_one_way(
        downstream,
        upstream,
        Side::Downstream,
        Side::Upstream,
        to_upstream,
        &last_activity,
    );
    let down = copy_one_way(
        upstream,
        downstream,
        Side::Upstream,
        Side::Downstream,
        to_downstream,
        &last_activity,
    );
    let both = try_join(up, down);
    let idle = idle_watch(idle_timeout, &last_activity);
    pin_mut!(both, idle);
    match select(both, idle).await {
        Either::Left((Ok(_), _)) => ForwardOutcome {
            reason: CloseReason::Completed,
            error: None,
        },
        Either::Left((Err(CopyError { side, error }), _)) => {
            // Reset the healthy side so the failure is visible end to end.
            let reason = match side {
                Side::Downstream => {
                    upstream.reset_on_close();
                    CloseReason::DownstreamError
                }
                Side::Upstream => {
                    downstream.reset_on_close();
                    CloseReason::UpstreamError
                }
            };
            ForwardOutcome {
                reason,
                error: Some(error),
            }
        }
        Either::Right(((), _)) => ForwardOutcome {
            reason: CloseReason::IdleTimeout,
            error: None,
        },
    }
}
