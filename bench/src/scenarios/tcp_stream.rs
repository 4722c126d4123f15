//! Bulk TCP transfer in one direction: upload writes as fast as the path
//! takes (the server discards), download reads as fast as the server sends.
//! Reports bytes moved in the measured window; there are no latency samples.

use std::time::Instant;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWrite};

use super::{CONNECT_BACKOFF, classify, connect};
use crate::runner::{ConnCtx, Direction};

pub(crate) async fn run(ctx: &ConnCtx<'_>, direction: Direction, chunk: usize) {
    let spec = ctx.spec;
    let chunk = chunk.max(1);
    let mut buf: Vec<u8> = vec![0x5a; chunk];
    compio::time::sleep_until(ctx.window.start).await;
    while Instant::now() < ctx.window.end {
        let started = Instant::now();
        let stream = match connect(spec.target, spec.timeout).await {
            Ok(s) => s,
            Err(kind) => {
                ctx.error(kind, started);
                compio::time::sleep(CONNECT_BACKOFF).await;
                continue;
            }
        };
        let mut s = &stream;
        let transfer = async {
            loop {
                let now = Instant::now();
                if now >= ctx.window.end {
                    return Ok(());
                }
                let n = match direction {
                    Direction::Upload => {
                        let BufResult(res, b) = s.write(std::mem::take(&mut buf)).await;
                        buf = b;
                        res?
                    }
                    Direction::Download => {
                        buf.clear();
                        let BufResult(res, b) = s.read(std::mem::take(&mut buf)).await;
                        buf = b;
                        match res? {
                            0 => {
                                return Err(std::io::Error::from(
                                    std::io::ErrorKind::UnexpectedEof,
                                ));
                            }
                            n => n,
                        }
                    }
                };
                if ctx.window.measures(now) {
                    let mut r = ctx.record.borrow_mut();
                    match direction {
                        Direction::Upload => r.bytes_sent += n as u64,
                        Direction::Download => r.bytes_received += n as u64,
                    }
                }
            }
        };
        let deadline = ctx.window.end.saturating_duration_since(Instant::now()) + spec.timeout;
        match compio::time::timeout(deadline, transfer).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => ctx.error(classify(&e), Instant::now()),
            Err(_) => ctx.error(crate::stats::ErrorKind::Timeout, Instant::now()),
        }
        if direction == Direction::Upload {
            buf = vec![0x5a; chunk];
        } else {
            buf = Vec::with_capacity(chunk);
        }
    }
}
