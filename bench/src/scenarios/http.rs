//! HTTP/1.1 requests over keep-alive connections (or a new connection per
//! request with `--new-connection-per-request`), closed or open loop.

use std::time::Instant;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;

use super::{classify, connect, next_slot, reuse_or_connect, schedule_for};
use crate::http1::{Progress, ResponseError, ResponseReader};
use crate::runner::{ConnCtx, HttpWorkload};
use crate::schedule::corrected_latency;
use crate::stats::ErrorKind;

pub(crate) async fn run(ctx: &ConnCtx<'_>, w: &HttpWorkload) {
    let spec = ctx.spec;
    let mut schedule = schedule_for(ctx);
    let mut conn: Option<TcpStream> = None;
    let mut reader = ResponseReader::new(w.request.head);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    if !w.new_connection_per_request {
        // Keep-alive connections are opened before the clock starts.
        conn = connect(spec.target, spec.timeout).await.ok();
    }
    compio::time::sleep_until(ctx.window.start).await;
    while let Some(slot) = next_slot(&mut schedule, ctx).await {
        let Some(stream) = reuse_or_connect(&mut conn, ctx, &slot).await else {
            continue;
        };
        let (intended, sent, counted_at) = (slot.intended, slot.sent, slot.counted_at());
        reader.reset(w.request.head);
        let outcome =
            compio::time::timeout(spec.timeout, exchange(&stream, w, &mut reader, &mut buf)).await;
        let done = Instant::now();
        match outcome {
            Ok((Ok(meta), b)) => {
                buf = b;
                if meta.status != w.expect_status {
                    ctx.error(ErrorKind::BadStatus, counted_at);
                } else {
                    ctx.success(counted_at, corrected_latency(intended, sent, done));
                }
                if !meta.close && !w.new_connection_per_request {
                    conn = Some(stream);
                }
            }
            Ok((Err(kind), b)) => {
                buf = b;
                ctx.error(kind, counted_at);
            }
            Err(_elapsed) => {
                // The buffer went with the cancelled read; the connection is
                // in an unknown state and is dropped.
                buf = Vec::with_capacity(16 * 1024);
                ctx.error(ErrorKind::Timeout, counted_at);
            }
        }
    }
}

/// Sends the request and reads one response.
async fn exchange(
    stream: &TcpStream,
    w: &HttpWorkload,
    reader: &mut ResponseReader,
    buf: &mut Vec<u8>,
) -> (Result<crate::http1::ResponseMeta, ErrorKind>, Vec<u8>) {
    let mut s = stream;
    let mut b = std::mem::take(buf);
    // The request bytes are shared; compio needs an owned buffer, so the
    // slice is copied into the connection's buffer (small, no allocation).
    b.clear();
    b.extend_from_slice(&w.request.bytes);
    let BufResult(res, back) = s.write_all(b).await;
    b = back;
    if let Err(e) = res {
        return (Err(classify(&e)), b);
    }
    loop {
        b.clear();
        let BufResult(res, back) = s.read(b).await;
        b = back;
        let progress = match res {
            Ok(0) => match reader.eof() {
                Ok(meta) => return (Ok(meta), b),
                Err(_) => return (Err(ErrorKind::Reset), b),
            },
            Ok(n) => reader.feed(&b[..n]),
            Err(e) => return (Err(classify(&e)), b),
        };
        match progress {
            Ok(Progress::More) => continue,
            Ok(Progress::Done(meta)) => return (Ok(meta), b),
            Err(ResponseError::Framing(_)) => return (Err(ErrorKind::BadFraming), b),
            Err(ResponseError::Closed(_)) => return (Err(ErrorKind::Reset), b),
        }
    }
}
