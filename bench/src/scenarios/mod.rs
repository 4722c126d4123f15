//! One file per workload; each runs one connection's loop until the window
//! ends. Shared here: connecting with a timeout and classifying I/O errors.

mod http;
mod tcp_rr;
mod tcp_stream;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use compio::net::TcpStream;

use crate::runner::{ConnCtx, Workload};
use crate::schedule::Schedule;
use crate::stats::ErrorKind;

/// Runs connection `ctx.index` of the workload.
pub(crate) async fn run_connection(ctx: &ConnCtx<'_>) {
    match &ctx.spec.workload {
        Workload::Http(w) => http::run(ctx, w).await,
        Workload::TcpRr { size } => tcp_rr::run(ctx, *size).await,
        Workload::TcpStream { direction, chunk } => tcp_stream::run(ctx, *direction, *chunk).await,
    }
}

/// Connects within `timeout`, with TCP_NODELAY set.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ErrorKind> {
    match compio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        _ => Err(ErrorKind::Connect),
    }
}

/// The class of an I/O error during a request.
pub(crate) fn classify(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Reset,
    }
}

/// Pause after a failed connect, so a dead target does not spin a core.
pub(crate) const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// The sending schedule of connection `ctx.index`: open loop at the spec's
/// rate (its share of it), or closed loop.
pub(crate) fn schedule_for(ctx: &ConnCtx<'_>) -> Schedule {
    match ctx.spec.rate {
        Some(rate) => Schedule::open(ctx.window.start, rate, ctx.spec.connections, ctx.index),
        None => Schedule::Closed,
    }
}

/// When one request was meant to go (open loop) and when it went.
pub(crate) struct Slot {
    pub intended: Option<Instant>,
    pub sent: Instant,
}

impl Slot {
    /// The time results are attributed to (warmup and window checks).
    pub(crate) fn counted_at(&self) -> Instant {
        self.intended.unwrap_or(self.sent)
    }
}

/// Waits until the next request may go; `None` once the window has ended.
pub(crate) async fn next_slot(schedule: &mut Schedule, ctx: &ConnCtx<'_>) -> Option<Slot> {
    let intended = schedule.next_intended();
    if let Some(at) = intended {
        if at >= ctx.window.end {
            return None;
        }
        compio::time::sleep_until(at).await;
    }
    let sent = Instant::now();
    (sent < ctx.window.end).then_some(Slot { intended, sent })
}

/// The connection to use for `slot`: `conn` if open, else a new one. A
/// failed connect is counted against the slot (and paced in closed loop).
pub(crate) async fn reuse_or_connect(
    conn: &mut Option<TcpStream>,
    ctx: &ConnCtx<'_>,
    slot: &Slot,
) -> Option<TcpStream> {
    if let Some(s) = conn.take() {
        return Some(s);
    }
    match connect(ctx.spec.target, ctx.spec.timeout).await {
        Ok(s) => Some(s),
        Err(kind) => {
            ctx.error(kind, slot.counted_at());
            if slot.intended.is_none() {
                compio::time::sleep(CONNECT_BACKOFF).await;
            }
            None
        }
    }
}
