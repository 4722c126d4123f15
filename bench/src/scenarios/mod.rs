//! One file per workload; each runs one connection's loop until the window
//! ends. Shared here: connecting with a timeout and classifying I/O errors.

mod http;
mod tcp_rr;
mod tcp_stream;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use compio::net::TcpStream;

use crate::runner::{ConnCtx, Workload};
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
