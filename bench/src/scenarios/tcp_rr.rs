//! TCP request/response: write a fixed-size message, read the same number
//! of bytes back from an echo server, check them, repeat. Measures L4
//! round-trip latency through a proxy.

use std::time::Instant;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};

use super::{classify, connect, next_slot, reuse_or_connect, schedule_for};
use crate::runner::ConnCtx;
use crate::schedule::corrected_latency;
use crate::stats::ErrorKind;

pub(crate) async fn run(ctx: &ConnCtx<'_>, size: usize) {
    let spec = ctx.spec;
    let size = size.max(1);
    let mut schedule = schedule_for(ctx);
    let message: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_add(ctx.index as u8))
        .collect();
    let mut stream = connect(spec.target, spec.timeout).await.ok();
    let mut out: Vec<u8> = Vec::with_capacity(size);
    let mut inb: Vec<u8> = Vec::with_capacity(size.max(4096));
    compio::time::sleep_until(ctx.window.start).await;
    while let Some(slot) = next_slot(&mut schedule, ctx).await {
        let Some(s) = reuse_or_connect(&mut stream, ctx, &slot).await else {
            continue;
        };
        let (intended, sent, counted_at) = (slot.intended, slot.sent, slot.counted_at());
        out.clear();
        out.extend_from_slice(&message);
        let round_trip = async {
            let mut w = &s;
            let BufResult(res, o) = w.write_all(std::mem::take(&mut out)).await;
            out = o;
            res.map_err(|e| classify(&e))?;
            let mut got = 0;
            while got < size {
                inb.clear();
                let BufResult(res, b) = w.read(std::mem::take(&mut inb)).await;
                inb = b;
                match res {
                    Ok(0) => return Err(ErrorKind::Reset),
                    Ok(n) => {
                        if got + n > size || inb[..n] != message[got..got + n] {
                            return Err(ErrorKind::BadFraming);
                        }
                        got += n;
                    }
                    Err(e) => return Err(classify(&e)),
                }
            }
            Ok(())
        };
        match compio::time::timeout(spec.timeout, round_trip).await {
            Ok(Ok(())) => {
                ctx.success(
                    counted_at,
                    corrected_latency(intended, sent, Instant::now()),
                );
                stream = Some(s);
            }
            Ok(Err(kind)) => ctx.error(kind, counted_at),
            Err(_) => {
                out = Vec::with_capacity(size);
                inb = Vec::with_capacity(size.max(4096));
                ctx.error(ErrorKind::Timeout, counted_at);
            }
        }
    }
}
