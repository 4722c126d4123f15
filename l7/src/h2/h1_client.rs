//! An HTTP/1.1 client's request to an HTTP/2 cluster (`http2: true`):
//! the head the proxy wrote is translated to HTTP/2, the body (a
//! Content-Length or chunked one, its trailers included) goes up as DATA,
//! and the response comes back as HTTP/1.1: chunked unless its length is
//! known, with its trailers as chunked trailers.
//!
//! A body that arrived whole within 64 KiB is kept for replays (retries,
//! and a fresh session when a pooled one failed before the request left)
//! and the connection is kept after the response; a longer body streams,
//! is not retried once sent, and the connection closes after the
//! response.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmesh_core::health::Outcome;
use ringmesh_core::rt;
use ringmesh_core::upstream;

use super::grpc;
use super::request::{Attempt, Clocks, Pump, failed_stream, send_chunk, session};
use super::translate;
use crate::buffers;
use crate::codec::chunked::{Chunk, ChunkedDecoder, ChunkedLimits};
use crate::codec::h1::{Framing, Method, RequestHead};
use crate::codec::write::{self, Forwarded};
use crate::config::HttpListener;
use crate::exchange::{INLINE_BODY, Leg, connect_flag, edits_for};
use crate::local_reply::ResponseFlag;
use crate::metrics::TimeoutKind;
use crate::record::RequestRecord;
use crate::retry::{Cause, Retries};
use crate::server::{After, Client};

/// The request's body as this path holds it.
struct HeldBody {
    /// The body's payload, when all of it is in the client's buffer.
    chunks: Vec<Bytes>,
    /// Trailers of a chunked body.
    trailers: Option<http::HeaderMap>,
    /// Where the request ends in the buffer, when it is all there.
    end: Option<usize>,
}

/// The payload of a body that is all in `buf` (within [`INLINE_BODY`]).
fn held_body(buf: &[u8], head: &RequestHead) -> HeldBody {
    let none = HeldBody {
        chunks: Vec::new(),
        trailers: None,
        end: None,
    };
    match head.framing {
        Framing::None | Framing::Close => HeldBody {
            end: Some(head.len),
            ..none
        },
        Framing::Length(n) => {
            let Ok(n) = usize::try_from(n) else {
                return none;
            };
            if n > INLINE_BODY || buf.len() < head.len + n {
                return none;
            }
            let chunks = if n == 0 {
                Vec::new()
            } else {
                vec![Bytes::copy_from_slice(&buf[head.len..head.len + n])]
            };
            HeldBody {
                chunks,
                trailers: None,
                end: Some(head.len + n),
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
            let mut pos = head.len;
            let mut chunks = Vec::new();
            loop {
                match decoder.decode(&buf[pos..]) {
                    Ok((used, Some(Chunk::Data { start, end }))) => {
                        chunks.push(Bytes::copy_from_slice(&buf[pos + start..pos + end]));
                        pos += used;
                    }
                    Ok((used, Some(Chunk::Done))) if pos + used - head.len <= INLINE_BODY => {
                        let t = translate::trailers_from_h1(decoder.trailers());
                        return HeldBody {
                            chunks,
                            trailers: (!t.is_empty()).then_some(t),
                            end: Some(pos + used),
                        };
                    }
                    Ok((used, None)) if used > 0 => pos += used,
                    _ => return none,
                }
            }
        }
    }
}

/// Forwards an HTTP/1.1 request to an HTTP/2 cluster and its response
/// back, retrying as the route's policy allows.
pub(crate) async fn forward(
    c: &mut Client,
    http: &HttpListener,
    leg: Leg<'_>,
    head: &RequestHead,
    record: &mut RequestRecord,
) -> After {
    let core = c.facts.core;
    let cluster = &*leg.target.cluster;
    let policy = leg.forward.retries.as_deref();
    let idle = leg
        .forward
        .idle_timeout
        .unwrap_or(http.settings.idle_timeout);
    let body_coming = c.whole_request(head).is_none();
    if head.expect_continue && head.minor == 1 && body_coming {
        let mut cont = buffers::take();
        cont.extend_from_slice(write::CONTINUE);
        let (res, cont) = c.stream.write_all(cont).await;
        buffers::give(cont);
        if res.is_err() {
            record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
            return After::Abort;
        }
    }
    if body_coming {
        if let Err(e) = crate::exchange::buffer_for_replay(c, head, idle).await {
            return crate::exchange::client_failed(c, record, leg, e).await;
        }
    }
    let deadline = Instant::now() + leg.timeout;
    let mut out = buffers::take();
    {
        let fwd = Forwarded {
            client_ip: http
                .settings
                .append_x_forwarded_for
                .then_some(c.peer_ip.as_str()),
            proto: if http.tls { "https" } else { "http" },
            request_id: record.request_id_str(),
            default_host: "",
            trace: None,
        };
        let trace = record.trace;
        let tracing = http.tracing.as_ref().filter(|_| trace.is_some());
        let fwd = Forwarded {
            trace: tracing
                .zip(trace.as_ref())
                .map(|(s, t)| (s, t, crate::trace::new_span_id())),
            ..fwd
        };
        let mut rewritten = None;
        let edits = edits_for(leg, (&c.buf, &c.fields), head, &mut rewritten);
        write::request_head(
            &mut out,
            &c.buf,
            head,
            &c.fields,
            &c.nominated,
            &fwd,
            &edits,
        );
        if let Some(b) = rewritten {
            buffers::give(b);
        }
    }
    let scheme = if cluster.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let req = translate::h1_to_h2_request(&out, scheme, head.te_trailers);
    buffers::give(out);
    let req = match req {
        Ok(req) => req,
        Err(e) => {
            let flag = ResponseFlag::DownstreamProtocolError;
            return crate::exchange::local(c, head, record, flag, Some(e.to_string()), true).await;
        }
    };
    let held = held_body(&c.buf, head);
    let mut retries = Retries::new(
        policy,
        cluster,
        &leg.target.budget,
        &leg.target.stats,
        core,
        record.started(),
    );
    retries.replayable = held.end.is_some();
    let clocks = Clocks {
        deadline,
        per_try: leg.forward.per_try_timeout,
        idle,
    };
    let mut attempt = 0u32;
    let mut fresh = false;
    let mut stale_once = false;
    let mut sent_any = false;
    loop {
        attempt += 1;
        record.attempts = attempt;
        let original = c.facts.original_destination;
        let pick =
            match upstream::pick_avoiding(cluster, core, c.hash_key, retries.avoid(), original) {
                Ok(p) => p,
                Err(e) => {
                    let flag = connect_flag(&e);
                    return crate::exchange::local(c, head, record, flag, None, !sent_any).await;
                }
            };
        record.status = 0;
        let checkout = match session(leg, core, pick, fresh, &clocks, &mut retries).await {
            Ok(s) => s,
            Err(Some(Attempt::Failed { cause, flag, error })) => {
                if let Some(wait) = cause.and_then(|c| retries.grant(c, None, deadline)) {
                    rt::sleep(wait).await;
                    continue;
                }
                return crate::exchange::local(c, head, record, flag, error, !sent_any).await;
            }
            Err(_) => {
                leg.stats.timed_out(core, TimeoutKind::Request);
                let flag = ResponseFlag::UpstreamTimeout;
                return crate::exchange::local(c, head, record, flag, None, !sent_any).await;
            }
        };
        fresh = false;
        let index = checkout.index;
        retries.tried(index);
        record.endpoint = Some(checkout.addr);
        let started = Instant::now();
        let until = clocks.head_deadline(started);
        let sent = async {
            let mut ready = checkout.send.clone().ready().await?;
            let mut up = http::Request::new(());
            *up.method_mut() = req.method().clone();
            *up.uri_mut() = req.uri().clone();
            *up.headers_mut() = req.headers().clone();
            let empty = matches!(head.framing, Framing::None);
            ready.send_request(up, empty)
        };
        let sent = match rt::timeout(until.0.saturating_duration_since(Instant::now()), sent).await
        {
            None => {
                leg.stats.timed_out(core, until.1);
                if until.1 == TimeoutKind::PerTry {
                    if let Some(wait) = retries.grant(Cause::PerTryTimeout, None, deadline) {
                        rt::sleep(wait).await;
                        continue;
                    }
                }
                let flag = ResponseFlag::UpstreamTimeout;
                return crate::exchange::local(c, head, record, flag, None, !sent_any).await;
            }
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                checkout.lease.retire();
                if checkout.reused && !stale_once && held.end.is_some() {
                    stale_once = true;
                    fresh = true;
                    attempt -= 1;
                    continue;
                }
                if let Attempt::Failed { cause, flag, error } =
                    failed_stream(cluster, core, index, &e)
                {
                    if let Some(wait) = cause.and_then(|c| retries.grant(c, None, deadline)) {
                        rt::sleep(wait).await;
                        continue;
                    }
                    return crate::exchange::local(c, head, record, flag, error, !sent_any).await;
                }
                return After::Abort;
            }
        };
        let (response, mut up_body) = sent;
        cluster.balancer.opened(core, index);
        // The body: what is held, or the client's stream.
        let body_result = if held.end.is_some() {
            send_held(&held, &mut up_body, idle).await
        } else {
            sent_any = true;
            stream_body(c, head, &mut up_body, idle).await
        };
        match body_result {
            Ok(()) | Err(Pump::Send(_)) => {}
            Err(Pump::Idle) => {
                cluster.balancer.closed(core, index);
                let flag = ResponseFlag::StreamIdleTimeout;
                leg.stats.timed_out(core, TimeoutKind::Idle);
                return crate::exchange::local(c, head, record, flag, None, false).await;
            }
            Err(e) => {
                cluster.balancer.closed(core, index);
                record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
                record.error = Some(e.to_string());
                return After::Abort;
            }
        }
        let left = until.0.saturating_duration_since(Instant::now());
        let response = match rt::timeout(left, response).await {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                cluster.balancer.closed(core, index);
                if let Attempt::Failed { cause, flag, error } =
                    failed_stream(cluster, core, index, &e)
                {
                    let wait = cause
                        .filter(|_| held.end.is_some())
                        .and_then(|c| retries.grant(c, None, deadline));
                    if let Some(wait) = wait {
                        rt::sleep(wait).await;
                        continue;
                    }
                    return crate::exchange::local(c, head, record, flag, error, !sent_any).await;
                }
                return After::Abort;
            }
            None => {
                cluster.balancer.closed(core, index);
                leg.stats.timed_out(core, until.1);
                if until.1 == TimeoutKind::PerTry {
                    if let Some(wait) = retries.grant(Cause::PerTryTimeout, None, deadline) {
                        rt::sleep(wait).await;
                        continue;
                    }
                }
                let flag = ResponseFlag::UpstreamTimeout;
                return crate::exchange::local(c, head, record, flag, None, !sent_any).await;
            }
        };
        retries.settle();
        let (mut parts, mut recv) = response.into_parts();
        let status = parts.status.as_u16();
        let grpc_now = parts
            .headers
            .get("grpc-status")
            .and_then(|v| grpc::parse_status(v.as_bytes()));
        leg.target.stats.cores.get(core).codes[crate::metrics::code_class(status)].inc();
        let (cause, outcome_status) = match grpc_now {
            Some(code) if status == 200 => (Cause::Grpc(code), grpc::to_http(code)),
            _ => (Cause::Status(status), status),
        };
        cluster.record_outcome(core, index, Outcome::of_status(outcome_status));
        if retries.wanted(cause) {
            let retry_after = parts
                .headers
                .get(http::header::RETRY_AFTER)
                .filter(|_| matches!(status, 429 | 503))
                .and_then(|v| {
                    crate::retry::retry_after(v.as_bytes(), std::time::SystemTime::now())
                });
            if let Some(wait) = retries.grant(cause, retry_after, deadline) {
                cluster.balancer.closed(core, index);
                rt::sleep(wait).await;
                continue;
            }
        }
        leg.route.response_headers.apply(&mut parts.headers);
        if attempt > 1 {
            parts
                .headers
                .insert("x-ringmesh-attempts", http::HeaderValue::from(attempt));
        }
        record.status = status;
        record.grpc_status = grpc_now;
        let after = answer(c, head, held.end, &parts, &mut recv, idle, record).await;
        cluster.balancer.closed(core, index);
        return after;
    }
}

/// Sends a held body, then its trailers (or the end of the stream).
async fn send_held(
    held: &HeldBody,
    up: &mut h2::SendStream<Bytes>,
    idle: Duration,
) -> Result<(), Pump> {
    let last = held.chunks.len();
    for (i, chunk) in held.chunks.iter().enumerate() {
        let end = held.trailers.is_none() && i + 1 == last;
        send_chunk(up, chunk.clone(), end, idle).await?;
    }
    if let Some(t) = &held.trailers {
        up.send_trailers(t.clone())
            .map_err(|e| Pump::Send(Some(e)))?;
    } else if last == 0 {
        up.send_data(Bytes::new(), true)
            .map_err(|e| Pump::Send(Some(e)))?;
    }
    Ok(())
}

/// Streams a body that was not all in the buffer: the head leaves the
/// buffer first, then each piece as it is forwarded (what follows the
/// body, a pipelined request, stays).
async fn stream_body(
    c: &mut Client,
    head: &RequestHead,
    up: &mut h2::SendStream<Bytes>,
    idle: Duration,
) -> Result<(), Pump> {
    c.consume(head.len);
    match head.framing {
        Framing::Length(n) => {
            let mut left = n;
            while left > 0 {
                if c.buf.is_empty() {
                    refill(c, idle).await?;
                }
                let take = (c.buf.len() as u64).min(left) as usize;
                let data = Bytes::copy_from_slice(&c.buf[..take]);
                c.consume(take);
                left -= take as u64;
                send_chunk(up, data, left == 0, idle).await?;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
            loop {
                if c.buf.is_empty() {
                    refill(c, idle).await?;
                }
                match decoder.decode(&c.buf) {
                    Ok((used, Some(Chunk::Data { start, end }))) => {
                        let data = Bytes::copy_from_slice(&c.buf[start..end]);
                        c.consume(used);
                        send_chunk(up, data, false, idle).await?;
                    }
                    Ok((used, Some(Chunk::Done))) => {
                        let t = translate::trailers_from_h1(decoder.trailers());
                        c.consume(used);
                        if t.is_empty() {
                            send_chunk(up, Bytes::new(), true, idle).await?;
                        } else {
                            up.send_trailers(t).map_err(|e| Pump::Send(Some(e)))?;
                        }
                        return Ok(());
                    }
                    Ok((used, None)) => {
                        c.consume(used);
                        if used == 0 {
                            refill(c, idle).await?;
                        }
                    }
                    Err(e) => return Err(Pump::Io(format!("request body: {e}"))),
                }
            }
        }
        Framing::None | Framing::Close => send_chunk(up, Bytes::new(), true, idle).await,
    }
}

/// Reads more of the client's bytes into its buffer.
async fn refill(c: &mut Client, idle: Duration) -> Result<(), Pump> {
    let mut b = std::mem::take(&mut c.buf);
    if b.capacity() - b.len() < 1024 {
        b.reserve(buffers::BUFFER);
    }
    match rt::timeout(idle, c.stream.read_more(b)).await {
        None => Err(Pump::Idle),
        Some((res, b)) => {
            c.buf = b;
            match res {
                Ok(0) => Err(Pump::Recv(None)),
                Ok(n) => {
                    c.bytes.add_received(n);
                    Ok(())
                }
                Err(e) => Err(Pump::Io(e.to_string())),
            }
        }
    }
}

/// Writes the HTTP/2 response to the HTTP/1.1 client: the head, then the
/// body (chunked with trailers, unless the length is known and no
/// trailers can follow), and says how the connection goes on.
async fn answer(
    c: &mut Client,
    head: &RequestHead,
    request_end: Option<usize>,
    parts: &http::response::Parts,
    recv: &mut h2::RecvStream,
    idle: Duration,
    record: &mut RequestRecord,
) -> After {
    let status = parts.status.as_u16();
    let bodyless = head.method == Method::Head || matches!(status, 204 | 304);
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.parse::<u64>().ok());
    let close = !head.keep_alive || request_end.is_none() || ringmesh_core::drain::is_draining();
    let framing = if bodyless {
        Framing::None
    } else if recv.is_end_stream() {
        Framing::Length(0)
    } else if let (Some(n), false) = (length, head.te_trailers) {
        Framing::Length(n)
    } else if head.minor == 0 {
        Framing::Close
    } else {
        Framing::Chunked
    };
    let close = close || framing == Framing::Close;
    let mut out = buffers::take();
    translate::response_to_h1(parts, framing, close, &mut out);
    let result = stream_response(c, recv, framing, idle, &mut out, record).await;
    buffers::give(out);
    match result {
        Ok(()) => {
            if let (Some(end), false) = (request_end, close) {
                c.consume(end);
                After::KeepAlive
            } else {
                After::Close
            }
        }
        Err(e) => {
            record.flag = Some(match e {
                Pump::Send(_) | Pump::Io(_) => ResponseFlag::DownstreamConnectionTermination,
                _ => ResponseFlag::UpstreamConnectionTermination,
            });
            record.error = Some(e.to_string());
            After::Abort
        }
    }
}

/// Sends the head in `out` and the body after it, piece by piece.
async fn stream_response(
    c: &mut Client,
    recv: &mut h2::RecvStream,
    framing: Framing,
    idle: Duration,
    out: &mut Vec<u8>,
    record: &mut RequestRecord,
) -> Result<(), Pump> {
    let chunked = framing == Framing::Chunked;
    if !matches!(framing, Framing::None | Framing::Length(0)) {
        loop {
            let next = match rt::timeout(idle, recv.data()).await {
                None => return Err(Pump::Idle),
                Some(n) => n,
            };
            let Some(data) = next else { break };
            let data = data.map_err(|e| Pump::Recv(Some(e)))?;
            let _ = recv.flow_control().release_capacity(data.len());
            if data.is_empty() {
                continue;
            }
            if chunked {
                crate::codec::chunked::encode_chunk_header(data.len(), out);
            }
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(crate::codec::chunked::CHUNK_END);
            }
            if out.len() >= buffers::BUFFER {
                flush(c, out).await?;
            }
        }
    }
    let trailers = match framing {
        Framing::None | Framing::Length(0) => None,
        _ => match rt::timeout(idle, recv.trailers()).await {
            None => return Err(Pump::Idle),
            Some(t) => t.map_err(|e| Pump::Recv(Some(e)))?,
        },
    };
    if let Some(t) = &trailers {
        record.grpc_status = record.grpc_status.or_else(|| {
            t.get("grpc-status")
                .and_then(|v| grpc::parse_status(v.as_bytes()))
        });
    }
    if chunked {
        let mut raw = Vec::new();
        if let Some(t) = &trailers {
            translate::trailers_to_h1(t, &mut raw);
        }
        crate::codec::chunked::encode_last_chunk(&raw, out);
    }
    flush(c, out).await
}

async fn flush(c: &mut Client, out: &mut Vec<u8>) -> Result<(), Pump> {
    if out.is_empty() {
        return Ok(());
    }
    let buf = std::mem::take(out);
    let (res, mut buf) = c.stream.write_all(buf).await;
    if res.is_ok() {
        c.bytes.add_sent(buf.len());
    }
    buf.clear();
    *out = buf;
    res.map_err(|e| Pump::Io(e.to_string()))
}
