//! The upstream side of one request: a pooled (or new) connection, the
//! request sent, the response head read, the body streamed back.
//!
//! Request body and response run concurrently: a server may answer before
//! it has read the whole body (a 413, say), and a proxy that waited for the
//! body first could deadlock against it. Bodies are streamed piece by
//! piece with backpressure (each piece is written before the next read),
//! never buffered whole. Chunked bodies are decoded by our strict decoder
//! and re-encoded, so what leaves the proxy is framed by the proxy.
//!
//! A request that fails on a reused connection before any response byte
//! (the server closed it as we sent) is replayed once on a new connection
//! when the whole request is still in our buffer (no body, or a body that
//! arrived with the head). Beyond that, the route's retry policy decides
//! (`retry.rs`): the attempt loop in [`forward`] asks [`Retries::grant`]
//! after each failure or response it may retry, and a granted retry goes
//! round the loop again after its backoff, with the request still whole in
//! the buffers (a route with a policy reads its body, up to
//! [`INLINE_BODY`], before the first attempt).

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};
use futures_util::pin_mut;
use ringmesh_core::health::Outcome;
use ringmesh_core::protocol::ByteCounts;
use ringmesh_core::upstream::{self, ConnectionSlot};
use ringmesh_core::{ConnectError, Stream, rt};

use crate::buffers::{self, BODY_BUFFER};
use crate::codec::chunked::{
    CHUNK_END, Chunk, ChunkedDecoder, ChunkedError, ChunkedLimits, LAST_CHUNK, encode_chunk_header,
    encode_last_chunk,
};
use crate::codec::h1::{self, Field, Framing, HeadError, Method, RequestHead, ResponseHead, Span};
use crate::codec::write::{self, Forwarded, ResponseOut};
use crate::config::HttpListener;
use crate::headers::HeaderOps;
use crate::local_reply::ResponseFlag;
use crate::metrics::{RouteStats, TimeoutKind};
use crate::pool::{self, PooledConnection};
use crate::record::RequestRecord;
use crate::retry::{Cause, Retries};
use crate::route::{Forward, Route, Target};
use crate::server::{After, Client};

/// A body that arrived with its head is sent in the same write (and can be
/// replayed) up to this size.
pub(crate) const INLINE_BODY: usize = 64 * 1024;

/// How the request side of an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The client's socket failed or it closed mid-body.
    #[error("client: {0}")]
    Client(io::Error),
    /// The client sent no body bytes for `idle_timeout`.
    #[error("client sent no body bytes within the idle timeout")]
    ClientIdle,
    /// The client's chunked body broke the framing rules.
    #[error("request body: {0}")]
    Chunked(ChunkedError),
    /// Writing to the upstream failed.
    #[error("sending to upstream: {0}")]
    Upstream(io::Error),
}

/// How reading the response head failed.
#[derive(Debug)]
pub(crate) enum HeadFailure {
    /// The upstream closed or reset before a complete head; `any` when some
    /// response bytes had arrived (then the request is not replayed).
    Closed { any: bool, error: Option<io::Error> },
    /// The head broke HTTP/1.1 rules.
    Malformed(HeadError),
    /// A timeout expired (route, per-try, or idle while sending the body).
    TimedOut(TimeoutKind),
}

/// How streaming a response body failed (the head was already sent).
#[derive(Debug, thiserror::Error)]
enum BodyFailure {
    #[error("upstream closed mid-body{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Upstream(Option<io::Error>),
    #[error("upstream sent no body bytes within the idle timeout")]
    UpstreamIdle,
    #[error("upstream chunked body: {0}")]
    Chunked(ChunkedError),
    #[error("client: {0}")]
    Client(io::Error),
}

/// The result of one attempt.
enum Attempt {
    /// Done, one way or another; the connection goes on as said.
    Done(After),
    /// Failed on a connection before any response byte: the caller replays
    /// it (a stale pooled connection), retries it, or answers.
    Replay,
    /// The retry policy retries what happened and a retry was granted:
    /// wait this long, then try again.
    Retry(Duration),
}

/// Where one request goes: its route, the route's forwarding settings,
/// and the cluster picked for it.
#[derive(Clone, Copy)]
pub(crate) struct Leg<'a> {
    pub route: &'a Route,
    pub forward: &'a Forward,
    pub target: &'a Target,
    /// Requests of this listener and route to this cluster.
    pub stats: &'a RouteStats,
    /// The route timeout left (an injected delay spent some of it).
    pub timeout: Duration,
}

/// The clocks of one request's attempts.
struct Clock {
    /// The route timeout: from the first attempt's request sent to the
    /// last attempt's response head.
    timeout: Duration,
    /// One attempt's share, from its request sent to its response head.
    per_try: Option<Duration>,
    /// No bytes either way for this long ends a stream.
    idle: Duration,
    /// When the current attempt's request was all sent.
    sent_at: Cell<Option<Instant>>,
    /// When the first attempt's was.
    first_sent: Cell<Option<Instant>>,
    /// When the route timeout ends while nothing was sent yet, so connects
    /// and their retries are bounded too.
    unsent_deadline: Instant,
}

impl Clock {
    /// When the route timeout ends.
    fn deadline(&self) -> Instant {
        self.first_sent
            .get()
            .map_or(self.unsent_deadline, |t| t + self.timeout)
    }
}

/// Forwards the request to the leg's cluster and its response back,
/// retrying as the route's policy allows.
pub(crate) async fn forward(
    c: &mut Client,
    http: &HttpListener,
    leg: Leg<'_>,
    head: &RequestHead,
    record: &mut RequestRecord,
) -> After {
    if leg.target.http2 {
        return crate::h2::h1_client::forward(c, http, leg, head, record).await;
    }
    let core = c.facts.core;
    let cluster = &*leg.target.cluster;
    let policy = leg.forward.retries.as_deref();
    let idle = leg
        .forward
        .idle_timeout
        .unwrap_or(http.settings.idle_timeout);
    // HTTP/1.0 clients get no interim responses (RFC 9110 §15.2).
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
    // A request that may be retried is read whole first (up to
    // INLINE_BODY), so it can be sent again.
    // Until a request is sent, the route timeout counts from the head
    // (the client's whole wait, an injected delay included), or from the
    // body's end when it was read whole here.
    let mut unsent_deadline = record.started() + leg.forward.timeout;
    if body_coming && policy.is_some_and(|p| p.attempts > 0) {
        if let Err(e) = buffer_for_replay(c, head, idle).await {
            return client_failed(c, record, leg, e).await;
        }
        unsent_deadline = Instant::now() + leg.timeout;
    }
    let mut out = buffers::take();
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
    // HTTP/1.0 without Host: the endpoint's address names it, set below
    // (an `original_destination` cluster's is the connection's).
    let default_host;
    let fwd = if head.host.is_none() {
        default_host = cluster
            .endpoints
            .first()
            .map(|e| e.addr)
            .or_else(|| {
                cluster
                    .original_destination
                    .zip(c.facts.original_destination)
                    .map(|(od, dst)| od.target(dst))
            })
            .map(|a| a.to_string())
            .unwrap_or_default();
        Forwarded {
            default_host: &default_host,
            ..fwd
        }
    } else {
        fwd
    };
    // The trace headers name this attempt's client span (a retry writes
    // its own over it).
    let trace = record.trace;
    let tracing = http.tracing.as_ref().filter(|_| trace.is_some());
    let mut client_span_id = match tracing {
        Some(_) => crate::trace::new_span_id(),
        None => [0; 8],
    };
    let fwd = Forwarded {
        trace: tracing
            .zip(trace.as_ref())
            .map(|(s, t)| (s, t, client_span_id)),
        ..fwd
    };
    let sink = tracing.and_then(|t| t.sink.as_ref());
    let sampled = sink.is_some() && trace.is_some_and(|t| t.sampled);
    let mut rewritten = None;
    let edits = edits_for(leg, (&c.buf, &c.fields), head, &mut rewritten);
    let slots = write::request_head(
        &mut out,
        &c.buf,
        head,
        &c.fields,
        &c.nominated,
        &fwd,
        &edits,
    );
    if let Some(mirror) = &leg.forward.mirror {
        crate::mirror::send(c, mirror, head, &fwd, &edits, leg.timeout);
    }
    if let Some(b) = rewritten {
        buffers::give(b);
    }
    let inline = inline_body(&c.buf, head, &mut out, policy.is_some());
    let clock = Clock {
        timeout: leg.timeout,
        per_try: leg.forward.per_try_timeout,
        idle,
        sent_at: Cell::new(None),
        first_sent: Cell::new(None),
        unsent_deadline,
    };
    let mut retries = Retries::new(
        policy,
        cluster,
        &leg.target.budget,
        &leg.target.stats,
        core,
        record.started(),
    );
    retries.replayable = inline.is_some();
    // RFC 9110 §9.2.2: only idempotent requests are replayed unasked.
    let replayable = inline.is_some() && head.method.is_idempotent();
    let mut attempt = 0u32;
    let mut stale = false;
    let mut replayed = false;
    let after = loop {
        attempt += 1;
        record.attempts = attempt;
        let original = c.facts.original_destination;
        let pick =
            match upstream::pick_avoiding(cluster, core, c.hash_key, retries.avoid(), original) {
                Ok(p) => p,
                Err(e) => break local(c, head, record, connect_flag(&e), None, true).await,
            };
        let addr = pick.addr;
        // After a stale pooled connection, a new one.
        let pooled = if stale {
            None
        } else {
            pool::take(cluster, addr)
        };
        let stats = leg.target.stats.cores.get(core);
        let (conn, reused) = match pooled {
            Some(mut conn) => {
                // The pool outlives snapshots (it is keyed by address):
                // the endpoint's index is the one in this snapshot.
                conn.conn.index = pick.index;
                stats.reused.inc();
                (conn, true)
            }
            None => {
                let Some(slot) = ConnectionSlot::acquire(cluster, core) else {
                    break local(c, head, record, ResponseFlag::UpstreamOverflow, None, true).await;
                };
                // Connects (and their failover) spend the route timeout too.
                let left = clock.deadline().saturating_duration_since(Instant::now());
                let origin = cluster.send_proxy_protocol.map(|_| c.facts.proxy_origin());
                let Some(connected) = rt::timeout(
                    left,
                    upstream::connect(cluster, core, pick, origin.as_ref()),
                )
                .await
                else {
                    leg.stats.timed_out(core, TimeoutKind::Request);
                    let flag = ResponseFlag::UpstreamTimeout;
                    break local(c, head, record, flag, None, true).await;
                };
                match connected {
                    Ok(conn) => {
                        stats.new.inc();
                        (PooledConnection { conn, _slot: slot }, false)
                    }
                    Err(e) => {
                        if let ConnectError::Exhausted { addr, .. } = &e {
                            if let Some(i) = cluster.endpoints.iter().position(|x| x.addr == *addr)
                            {
                                retries.tried(i);
                            }
                        }
                        retries.tried(pick.index);
                        let retry = matches!(e, ConnectError::Exhausted { .. })
                            .then(|| retries.grant(Cause::ConnectFailure, None, clock.deadline()))
                            .flatten();
                        if let Some(wait) = retry {
                            rt::sleep(wait).await;
                            continue;
                        }
                        let error = e.to_string();
                        break local(c, head, record, connect_flag(&e), Some(error), true).await;
                    }
                }
            }
        };
        let index = conn.conn.index;
        retries.tried(index);
        record.endpoint = Some(conn.conn.addr);
        stale = false;
        if attempt > 1 && tracing.is_some() {
            client_span_id = crate::trace::new_span_id();
            slots.rewrite(&mut out, client_span_id);
        }
        let attempt_started = sampled.then(Instant::now);
        // This attempt's status (a client span reports its own).
        record.status = 0;
        let endpoint = conn.conn.addr;
        let run = attempt_once(
            c,
            http,
            leg,
            head,
            record,
            conn,
            &mut out,
            inline,
            &clock,
            &mut retries,
            reused,
        );
        let done = run.await;
        if let (Some(t0), Some(sink), Some(trace)) = (attempt_started, sink, &trace) {
            let status = record.status;
            sink.record(core, |out| {
                client_span(out, trace, client_span_id, t0, endpoint, c, status, attempt)
            });
        }
        match done {
            Attempt::Done(after) => break after,
            Attempt::Retry(wait) => {
                // The access log tells of the last attempt.
                record.error = None;
                rt::sleep(wait).await;
            }
            // Once per request, free of the retry policy: the forced new
            // connection cannot meet the same race.
            Attempt::Replay if reused && replayable && !replayed => {
                stats.replayed.inc();
                stale = true;
                replayed = true;
                retries.untried(index);
            }
            Attempt::Replay => {
                // On HTTP/1.1 a close before any response byte proves the
                // request unprocessed only as far as RFC 9110 §9.2.2 lets
                // a client assume it: for idempotent methods.
                let cause = if reused && head.method.is_idempotent() {
                    Cause::RefusedStream
                } else {
                    Cause::Reset
                };
                if let Some(wait) = retries.grant(cause, None, clock.deadline()) {
                    rt::sleep(wait).await;
                    continue;
                }
                // A streamed body left the buffer: only a request that was
                // all in it may be skipped.
                let flag = ResponseFlag::UpstreamConnectionTermination;
                break local(c, head, record, flag, None, inline.is_some()).await;
            }
        }
    };
    buffers::give(out);
    after
}

/// Encodes the client span of one upstream attempt of a sampled request
/// (the request's bytes may have left the buffer: its fields come from
/// the connection's copy in `LogText`).
#[allow(clippy::too_many_arguments)]
fn client_span(
    out: &mut Vec<u8>,
    trace: &crate::trace::Trace,
    span_id: [u8; 8],
    started: Instant,
    endpoint: std::net::SocketAddr,
    c: &Client,
    status: u16,
    attempt: u32,
) {
    use crate::trace::encode::{Attr, SpanHead, span_attribute, span_body};
    let method = c.log.method.as_bytes();
    let target = c.log.path.as_bytes();
    let (start, end) = crate::trace::span_times(started);
    let head = SpanHead {
        trace_id: &trace.trace_id,
        span_id: &span_id,
        parent: Some(&trace.span_id),
        kind: crate::trace::SpanKind::Client as u8,
        start_unix_nanos: start,
        end_unix_nanos: end,
        error: status == 0 || status >= 400,
    };
    let mut ip = [0u8; 64];
    let ip_len = crate::trace::format_ip(&mut ip, endpoint.ip(), false);
    let mut addr = [0u8; 64];
    let addr_len = crate::trace::format_addr(&mut addr, endpoint);
    span_body(out, &head, &[method], |out| {
        span_attribute(out, "http.request.method", Attr::Str(method));
        span_attribute(out, "server.address", Attr::Str(&ip[..ip_len]));
        span_attribute(out, "server.port", Attr::Int(i64::from(endpoint.port())));
        span_attribute(out, "network.peer.address", Attr::Str(&ip[..ip_len]));
        let target = &target[..target.len().min(256)];
        span_attribute(
            out,
            "url.full",
            Attr::Parts(&[b"http://", &addr[..addr_len], target]),
        );
        if status > 0 {
            span_attribute(
                out,
                "http.response.status_code",
                Attr::Int(i64::from(status)),
            );
        }
        if attempt > 1 {
            span_attribute(
                out,
                "http.request.resend_count",
                Attr::Int(i64::from(attempt - 1)),
            );
        }
    });
}

/// Reads the rest of a request body into the client's buffer so a retry
/// can send it again: a Content-Length body of at most [`INLINE_BODY`], or
/// a chunked body until its end or until [`INLINE_BODY`] bytes of it are
/// buffered (then it streams, and is not retried). Bytes after the body
/// (a pipelined request) stay in the buffer.
pub(crate) async fn buffer_for_replay(
    c: &mut Client,
    head: &RequestHead,
    idle: Duration,
) -> Result<(), SendError> {
    match head.framing {
        Framing::Length(n) if n as usize <= INLINE_BODY => {
            let end = head.len + n as usize;
            while c.buf.len() < end {
                read_into_buffer(c, end, idle).await?;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
            let mut pos = head.len;
            loop {
                match decoder.decode(&c.buf[pos..]) {
                    Ok((_, Some(Chunk::Done))) => break,
                    Ok((used, _)) if used > 0 => pos += used,
                    // The send path reports a broken body.
                    Err(_) => break,
                    Ok(_) if c.buf.len() - head.len >= INLINE_BODY => break,
                    Ok(_) => read_into_buffer(c, head.len + INLINE_BODY, idle).await?,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Appends the client's next bytes to its buffer (room made for `want`
/// bytes in all, at most [`INLINE_BODY`] past the head).
async fn read_into_buffer(c: &mut Client, want: usize, idle: Duration) -> Result<(), SendError> {
    let mut b = std::mem::take(&mut c.buf);
    // Room for what is still to come, in pool-sized steps (a small body
    // does not take a 64 KiB buffer).
    b.reserve(want.saturating_sub(b.len()).clamp(1, buffers::BUFFER));
    let result = rt::timeout(idle, c.stream.read_more(b)).await;
    match result {
        None => Err(SendError::ClientIdle),
        Some((res, b)) => {
            c.buf = b;
            match res {
                Ok(0) => Err(SendError::Client(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    c.bytes.add_received(n);
                    Ok(())
                }
                Err(e) => Err(SendError::Client(e)),
            }
        }
    }
}

/// Puts the request's body after its head in `out` when all of it is in
/// `buf`: a Content-Length body of at most [`INLINE_BODY`], or (`chunked`)
/// a chunked body of at most that, decoded and re-encoded. Returns where
/// the request ends in `buf`; `None` when the body will stream.
fn inline_body(buf: &[u8], head: &RequestHead, out: &mut Vec<u8>, chunked: bool) -> Option<usize> {
    let buffered = buf.len() - head.len;
    match head.framing {
        Framing::None | Framing::Close => Some(head.len),
        Framing::Length(n) if n as usize <= buffered && n as usize <= INLINE_BODY => {
            out.extend_from_slice(&buf[head.len..head.len + n as usize]);
            Some(head.len + n as usize)
        }
        Framing::Chunked if chunked => {
            let mark = out.len();
            let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
            let mut pos = head.len;
            let end = loop {
                match decoder.decode(&buf[pos..]) {
                    Ok((used, Some(Chunk::Data { start, end }))) => {
                        encode_chunk_header(end - start, out);
                        out.extend_from_slice(&buf[pos + start..pos + end]);
                        out.extend_from_slice(CHUNK_END);
                        pos += used;
                    }
                    Ok((used, Some(Chunk::Done))) => {
                        encode_last_chunk(decoder.trailers(), out);
                        break Some(pos + used);
                    }
                    Ok((used, None)) if used > 0 => pos += used,
                    _ => break None,
                }
            };
            if end.is_none_or(|e| e - head.len > INLINE_BODY) {
                out.truncate(mark);
                return None;
            }
            end
        }
        _ => None,
    }
}

/// Answers a request whose client failed before it could be sent: a
/// client that went silent gets 408 (flag `SI`), one that is gone gets
/// nothing.
pub(crate) async fn client_failed(
    c: &mut Client,
    record: &mut RequestRecord,
    leg: Leg<'_>,
    e: SendError,
) -> After {
    record.error = Some(e.to_string());
    if let SendError::ClientIdle = e {
        leg.stats.timed_out(c.facts.core, TimeoutKind::Idle);
        let mut out = buffers::take();
        let flag = ResponseFlag::StreamIdleTimeout;
        crate::local_reply::for_flag(&mut out, flag, true);
        record.status = flag.status();
        record.flag = Some(flag);
        return c.send_own_answer(out, None, true).await;
    }
    record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
    After::Abort
}

/// The route's changes to the request: a rewritten target and host are
/// written into `scratch` (a pooled buffer, only when the route rewrites).
/// An absolute-form target (`GET http://a.com/p`) goes upstream in origin
/// form with its authority as `Host` (RFC 9112 §3.2.2: the target's
/// authority wins over the client's `Host`, and routing used it).
pub(crate) fn edits_for<'a>(
    leg: Leg<'a>,
    (buf, fields): (&'a [u8], &'a [Field]),
    head: &RequestHead,
    scratch: &'a mut Option<Vec<u8>>,
) -> write::Edits<'a> {
    let rewrite = &leg.forward.rewrite;
    let mut edits = write::Edits {
        ops: &leg.route.request_headers,
        ..write::Edits::NONE
    };
    let target = head.target.get(buf);
    let absolute = target.first() != Some(&b'/') && target != b"*";
    if rewrite.path.is_none() && rewrite.host.is_none() && !absolute {
        return edits;
    }
    let req = crate::route::matcher::RequestView::new(buf, head, fields);
    let b = scratch.insert(buffers::take());
    match &rewrite.path {
        Some(p) => crate::rewrite::path(b, &leg.route.matcher, p, &req),
        None if absolute => {
            b.extend_from_slice(req.path);
            if !req.query.is_empty() {
                b.push(b'?');
                b.extend_from_slice(req.query);
            }
        }
        None => {}
    }
    let target_end = b.len();
    match &rewrite.host {
        Some(crate::route::HostRewrite::Literal(h)) => b.extend_from_slice(h),
        Some(crate::route::HostRewrite::FromCluster) => {
            b.extend_from_slice(leg.target.cluster.name.as_bytes())
        }
        None => {}
    }
    let b: &'a Vec<u8> = b;
    if rewrite.path.is_some() || absolute {
        edits.target = Some(&b[..target_end]);
    }
    edits.host = match &rewrite.host {
        Some(_) => Some(&b[target_end..]),
        None if absolute => Some(req.host),
        None => None,
    };
    edits
}

/// The flag for a failed pick or connect.
pub(crate) fn connect_flag(e: &ConnectError) -> ResponseFlag {
    match e {
        ConnectError::NoEndpoints
        | ConnectError::NoHealthyEndpoints
        | ConnectError::NoOriginalDestination => ResponseFlag::NoHealthyUpstream,
        ConnectError::PendingOverflow => ResponseFlag::UpstreamOverflow,
        ConnectError::LocalResource { .. } => ResponseFlag::LocalResource,
        ConnectError::Exhausted { .. } => ResponseFlag::UpstreamConnectFailure,
    }
}

/// Answers the request itself with `flag`'s status. The request's body
/// (if any) was not read: when `intact` (nothing of the request was
/// sent) and all of it is in the buffer, it is skipped and the connection
/// stays open; otherwise the connection closes after the answer.
pub(crate) async fn local(
    c: &mut Client,
    head: &RequestHead,
    record: &mut RequestRecord,
    flag: ResponseFlag,
    error: Option<String>,
    intact: bool,
) -> After {
    let (whole, close) = c.own_answer_plan(head, intact);
    let mut out = buffers::take();
    crate::local_reply::for_flag_after(&mut out, flag, close, record.attempts);
    record.status = flag.status();
    record.flag = Some(flag);
    record.error = error;
    c.send_own_answer(out, whole, close).await
}

/// One attempt on `conn`: send, read the response head, answer (or give
/// the request back for a replay or a retry).
#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    c: &mut Client,
    http: &HttpListener,
    leg: Leg<'_>,
    head: &RequestHead,
    record: &mut RequestRecord,
    conn: PooledConnection,
    out: &mut Vec<u8>,
    inline: Option<usize>,
    clock: &Clock,
    retries: &mut Retries<'_>,
    reused: bool,
) -> Attempt {
    let core = c.facts.core;
    let cluster = &*leg.target.cluster;
    let index = conn.conn.index;
    let started = Instant::now();
    cluster.balancer.opened(core, index);
    let result = run(
        c, http, leg, head, record, &conn, out, inline, clock, retries,
    )
    .await;
    cluster.balancer.closed(core, index);
    match result {
        Run::Answered {
            after,
            reusable,
            status,
            response_started,
        } => {
            if cluster.balancer.wants_latency() {
                cluster
                    .balancer
                    .observe(core, index, response_started - started);
            }
            cluster.record_outcome(core, index, Outcome::of_status(status));
            if reusable && after != After::Abort {
                pool::put(cluster, conn, &leg.target.pool);
            }
            Attempt::Done(after)
        }
        Run::Retry {
            wait,
            outcome,
            reusable,
        } => {
            cluster.record_outcome(core, index, outcome);
            if reusable {
                pool::put(cluster, conn, &leg.target.pool);
            }
            Attempt::Retry(wait)
        }
        Run::Failed {
            after,
            outcome,
            replay,
        } => {
            // A pooled connection the server closed as we sent (a
            // keep-alive race) says nothing about the endpoint's health.
            if let (Some(outcome), false) = (outcome, replay && reused) {
                cluster.record_outcome(core, index, outcome);
            }
            if replay {
                Attempt::Replay
            } else {
                Attempt::Done(after)
            }
        }
    }
}

/// What one exchange on a connection came to.
enum Run {
    /// A response (the upstream's) went to the client.
    Answered {
        after: After,
        /// The upstream connection may be pooled.
        reusable: bool,
        status: u16,
        response_started: Instant,
    },
    /// A retry was granted: nothing went to the client, the request is
    /// still in the buffers.
    Retry {
        wait: Duration,
        outcome: Outcome,
        /// The discarded response was read whole: the connection may be
        /// pooled.
        reusable: bool,
    },
    /// No upstream response reached the client (the proxy answered, or
    /// the client is gone).
    Failed {
        after: After,
        outcome: Option<Outcome>,
        /// Nothing of a response arrived and nothing was answered: the
        /// caller replays, retries or answers.
        replay: bool,
    },
}

#[allow(clippy::too_many_arguments)]
async fn run(
    c: &mut Client,
    http: &HttpListener,
    leg: Leg<'_>,
    head: &RequestHead,
    record: &mut RequestRecord,
    conn: &PooledConnection,
    out: &mut Vec<u8>,
    inline: Option<usize>,
    clock: &Clock,
    retries: &mut Retries<'_>,
) -> Run {
    let up = &conn.conn.stream;
    let idle = clock.idle;
    clock.sent_at.set(None);
    let mut rbuf = buffers::take();
    let mut rfields = std::mem::take(&mut c.resp_fields);
    let mut rnominated = std::mem::take(&mut c.resp_nominated);
    let mut cbuf = std::mem::take(&mut c.buf);
    let request_out = std::mem::take(out);
    let bytes = c.bytes.clone();

    // Send and receive concurrently (see the module docs).
    let (send_result, head_result, send_pending, request_out) = {
        let send = send_request(
            &c.stream,
            &mut cbuf,
            head,
            inline,
            request_out,
            up,
            &bytes,
            clock,
        );
        let recv = read_response_head(
            up,
            &mut rbuf,
            head.method,
            http.settings.limits.max_head,
            &mut rfields,
            &mut rnominated,
        );
        pin_mut!(send, recv);
        match select(send, recv).await {
            Either::Left(((sent, request_out), recv)) => {
                let head = match &sent {
                    // The upstream took no body bytes for the idle timeout.
                    Err(SendError::Upstream(e)) if e.kind() == io::ErrorKind::TimedOut => {
                        Err(HeadFailure::TimedOut(TimeoutKind::Idle))
                    }
                    Ok(_) | Err(SendError::Upstream(_)) => {
                        let timer = head_timeout(clock);
                        pin_mut!(timer);
                        match select(recv, timer).await {
                            Either::Left((head, _)) => head,
                            Either::Right((kind, _)) => Err(HeadFailure::TimedOut(kind)),
                        }
                    }
                    // A client that failed mid-request gets no response.
                    Err(_) => Err(HeadFailure::Closed {
                        any: true,
                        error: None,
                    }),
                };
                (Some(sent), head, false, request_out)
            }
            // The response head came first (or the upstream failed) while
            // the request body was still going: the connection cannot be
            // reused, the client's connection closes after the response.
            Either::Right((head, _send)) => (None, head, true, Vec::new()),
        }
    };
    *out = request_out;
    let result = match (send_result, head_result) {
        (Some(Err(SendError::ClientIdle)), _) => {
            // The client went silent mid-body: 408, flag `SI`.
            c.buf = cbuf;
            let after = client_failed(c, record, leg, SendError::ClientIdle).await;
            cbuf = std::mem::take(&mut c.buf);
            Run::Failed {
                after,
                outcome: None,
                replay: false,
            }
        }
        (Some(Err(e @ SendError::Client(_))), _) => {
            record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
            record.error = Some(e.to_string());
            Run::Failed {
                after: After::Abort,
                outcome: None,
                replay: false,
            }
        }
        (Some(Err(e @ SendError::Chunked(_))), _) => {
            record.error = Some(e.to_string());
            http.stats
                .reject(c.facts.core, crate::metrics::Rejection::ChunkedBody);
            c.buf = cbuf;
            let flag = ResponseFlag::DownstreamProtocolError;
            let after = local(c, head, record, flag, record.error.clone(), false).await;
            cbuf = std::mem::take(&mut c.buf);
            Run::Failed {
                after: After::Close.max_with(after),
                outcome: None,
                replay: false,
            }
        }
        (send, Err(failure)) => {
            retries.settle();
            if let Some(Err(e)) = &send {
                record.error = Some(e.to_string());
            }
            let (flag, outcome) = match &failure {
                HeadFailure::Closed { .. } => (
                    ResponseFlag::UpstreamConnectionTermination,
                    Outcome::LocalOriginFailure,
                ),
                HeadFailure::Malformed(e) => {
                    leg.target.stats.cores.get(c.facts.core).bad_responses.inc();
                    record.error = Some(format!("upstream response: {e}"));
                    (
                        ResponseFlag::UpstreamProtocolError,
                        Outcome::LocalOriginFailure,
                    )
                }
                HeadFailure::TimedOut(kind) => {
                    leg.stats.timed_out(c.facts.core, *kind);
                    (
                        ResponseFlag::UpstreamTimeout,
                        Outcome::ServerError { gateway: true },
                    )
                }
            };
            if let HeadFailure::Closed { error: Some(e), .. } = &failure {
                record.error = Some(format!("upstream: {e}"));
            }
            // Retried only when the whole request is still ours to send.
            let cause = match &failure {
                _ if send_pending || out.is_empty() => None,
                HeadFailure::Closed { any: false, .. } => None,
                HeadFailure::Closed { .. } | HeadFailure::Malformed(_) => Some(Cause::Reset),
                HeadFailure::TimedOut(TimeoutKind::PerTry) => Some(Cause::PerTryTimeout),
                HeadFailure::TimedOut(_) => None,
            };
            let retry = cause.and_then(|cause| retries.grant(cause, None, clock.deadline()));
            if let Some(wait) = retry {
                c.buf = cbuf;
                cbuf = Vec::new();
                Run::Retry {
                    wait,
                    outcome,
                    reusable: false,
                }
            } else if matches!(failure, HeadFailure::Closed { any: false, .. }) && !send_pending {
                // Let the caller replay, retry or answer it.
                c.buf = cbuf;
                cbuf = Vec::new();
                Run::Failed {
                    after: After::Close,
                    outcome: Some(outcome),
                    replay: true,
                }
            } else {
                c.buf = cbuf;
                let mut after = local(c, head, record, flag, record.error.clone(), false).await;
                cbuf = std::mem::take(&mut c.buf);
                if send_pending {
                    after = After::Close.max_with(after);
                }
                Run::Failed {
                    after,
                    outcome: Some(outcome),
                    replay: false,
                }
            }
        }
        (send, Ok(response)) => {
            let response_started = Instant::now();
            let request_done = matches!(send, Some(Ok(_)));
            let consumed = match send {
                Some(Ok(n)) => n,
                _ => cbuf.len(),
            };
            record.status = response.status;
            let ustats = leg.target.stats.cores.get(c.facts.core);
            ustats.codes[crate::metrics::code_class(response.status)].inc();
            let upgraded = response.status == 101 && head.upgrade.is_some() && request_done;
            let cause = Cause::Status(response.status);
            let retry = (request_done && !upgraded && retries.wanted(cause))
                .then(|| {
                    let wait = retry_after_of(&response, &rbuf, &rfields);
                    retries.grant(cause, wait, clock.deadline())
                })
                .flatten();
            if retry.is_none() {
                // The retry in progress (if any) ends with its head.
                retries.settle();
            }
            if let Some(wait) = retry {
                // The response is dropped; its connection is kept only when
                // all of it is here.
                let whole = match response.framing {
                    _ if response.status == 101 => false,
                    Framing::None => rbuf.len() == response.len,
                    Framing::Length(n) => rbuf.len() as u64 == response.len as u64 + n,
                    _ => false,
                };
                c.buf = cbuf;
                cbuf = Vec::new();
                Run::Retry {
                    wait,
                    outcome: Outcome::of_status(response.status),
                    reusable: whole && response.keep_alive,
                }
            } else if upgraded {
                // Boxed: the tunnel state is large and rare; inline it would be
                // carried by every idle keep-alive connection.
                let after = Box::pin(tunnel(
                    c,
                    &mut cbuf,
                    consumed,
                    up,
                    &rbuf,
                    &response,
                    &rfields,
                    &rnominated,
                    &leg.route.response_headers,
                    record,
                    idle,
                ))
                .await;
                Run::Answered {
                    after,
                    reusable: false,
                    status: response.status,
                    response_started,
                }
            } else {
                c.body_unread |= !request_done;
                let close = !head.keep_alive
                    || !request_done
                    || ringmesh_core::drain::is_draining()
                    || response.upgrade.is_some();
                let streamed = respond(
                    &c.stream,
                    up,
                    &mut rbuf,
                    &response,
                    &rfields,
                    &rnominated,
                    &leg.route.response_headers,
                    head.minor,
                    close,
                    record.attempts,
                    out,
                    &bytes,
                    idle,
                )
                .await;
                match streamed {
                    Ok((reusable, client_close)) => {
                        if !client_close && request_done {
                            // The request's bytes leave the buffer;
                            // pipelined ones stay for the next round.
                            c.buf = cbuf;
                            cbuf = Vec::new();
                            c.consume(consumed);
                        }
                        let after = if client_close {
                            After::Close
                        } else {
                            After::KeepAlive
                        };
                        Run::Answered {
                            after,
                            // A 101 switched protocols: never pooled.
                            reusable: reusable
                                && response.keep_alive
                                && request_done
                                && response.status != 101,
                            status: response.status,
                            response_started,
                        }
                    }
                    Err(failure) => {
                        let flag = match &failure {
                            BodyFailure::Client(_) => ResponseFlag::DownstreamConnectionTermination,
                            BodyFailure::UpstreamIdle => ResponseFlag::UpstreamTimeout,
                            _ => ResponseFlag::UpstreamConnectionTermination,
                        };
                        let idle_expired = match &failure {
                            BodyFailure::UpstreamIdle => true,
                            BodyFailure::Client(e) => e.kind() == io::ErrorKind::TimedOut,
                            _ => false,
                        };
                        if idle_expired {
                            leg.stats.timed_out(c.facts.core, TimeoutKind::Idle);
                        }
                        record.flag = Some(flag);
                        record.error = Some(failure.to_string());
                        Run::Answered {
                            after: After::Abort,
                            reusable: false,
                            status: response.status,
                            response_started,
                        }
                    }
                }
            }
        }
    };
    // The client's buffer goes back unless a path above already put it
    // (or what remains of it) back.
    if c.buf.capacity() == 0 {
        c.buf = cbuf;
    } else {
        buffers::give(cbuf);
    }
    c.resp_fields = rfields;
    c.resp_nominated = rnominated;
    buffers::give(rbuf);
    result
}

impl After {
    /// The more final of two ways to go on (Abort > Close > KeepAlive).
    fn max_with(self, other: After) -> After {
        match (self, other) {
            (After::Abort, _) | (_, After::Abort) => After::Abort,
            (After::Close, _) | (_, After::Close) => After::Close,
            _ => After::KeepAlive,
        }
    }
}

/// Sends the head (with the body, when `inline` says the whole request is
/// in `out`) and streams the rest of the body. Returns where the request
/// ends in `buf` (what follows is the next pipelined request), and the
/// head buffer back.
#[allow(clippy::too_many_arguments)]
async fn send_request(
    client: &Stream,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    inline: Option<usize>,
    out: Vec<u8>,
    up: &Stream,
    bytes: &ByteCounts,
    clock: &Clock,
) -> (Result<usize, SendError>, Vec<u8>) {
    let idle = clock.idle;
    let mut out = out;
    let result = match (inline, head.framing) {
        (Some(end), _) => write_kept(up, &mut out, idle).await.map(|()| end),
        (None, Framing::Length(n)) => match write_kept(up, &mut out, idle).await {
            Ok(()) => copy_length(client, buf, head.len, n, up, bytes, idle).await,
            Err(e) => Err(e),
        },
        (None, Framing::Chunked) => {
            let (res, o) = copy_chunked(
                client,
                buf,
                head.len,
                std::mem::take(&mut out),
                up,
                bytes,
                idle,
            )
            .await;
            out = o;
            res
        }
        (None, Framing::None | Framing::Close) => {
            write_kept(up, &mut out, idle).await.map(|()| head.len)
        }
    };
    if result.is_ok() {
        let now = Instant::now();
        clock.sent_at.set(Some(now));
        if clock.first_sent.get().is_none() {
            clock.first_sent.set(Some(now));
        }
    }
    (result, out)
}

/// Writes `out` to the upstream; the buffer stays with the caller (a
/// replay sends it again).
async fn write_kept(up: &Stream, out: &mut Vec<u8>, idle: Duration) -> Result<(), SendError> {
    let len = out.len();
    let (res, o) = write_within(up, std::mem::take(out), 0..len, idle).await;
    *out = o;
    res.map_err(SendError::Upstream)
}

/// Writes `out`, giving it back on success.
async fn write_or(to: &Stream, out: Vec<u8>, idle: Duration) -> io::Result<Vec<u8>> {
    let len = out.len();
    let (res, out) = write_within(to, out, 0..len, idle).await;
    res.map(|()| out)
}

/// Writes `buf[range]` unless the peer takes nothing for `idle` (a server
/// that never reads an upload, a client that never reads its response):
/// the exchange then ends instead of holding its breaker slots forever.
/// On a timeout the buffer is abandoned with the write (an empty one comes
/// back); the connection is closed anyway.
async fn write_within(
    to: &Stream,
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
    idle: Duration,
) -> (io::Result<()>, Vec<u8>) {
    match rt::timeout(idle, to.write_range(buf, range)).await {
        Some(done) => done,
        None => (
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took no bytes within the idle timeout",
            )),
            Vec::new(),
        ),
    }
}

/// Reads the next bytes of a body from `from` into `buf` (emptied first,
/// grown to the body buffer size), within `idle`; `None` when nothing came.
async fn read_body_bytes(
    from: &Stream,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> Option<io::Result<usize>> {
    let mut b = std::mem::take(buf);
    b.clear();
    if b.capacity() < BODY_BUFFER {
        b.reserve(BODY_BUFFER);
    }
    let (res, b) = rt::timeout(idle, from.read_more(b)).await?;
    *buf = b;
    Some(res)
}

/// Reads more of the request body from the client; its end is an error
/// (the body is not complete yet).
async fn refill(
    from: &Stream,
    buf: &mut Vec<u8>,
    bytes: &ByteCounts,
    idle: Duration,
) -> Result<usize, SendError> {
    match read_body_bytes(from, buf, idle).await {
        None => Err(SendError::ClientIdle),
        Some(Ok(0)) => Err(SendError::Client(io::ErrorKind::UnexpectedEof.into())),
        Some(Ok(n)) => {
            bytes.add_received(n);
            Ok(n)
        }
        Some(Err(e)) => Err(SendError::Client(e)),
    }
}

/// Streams `n` body bytes that start at `buf[pos..]` (and continue on the
/// client's socket) to `up`. Returns where the body ends in `buf`.
async fn copy_length(
    client: &Stream,
    buf: &mut Vec<u8>,
    mut pos: usize,
    n: u64,
    up: &Stream,
    bytes: &ByteCounts,
    idle: Duration,
) -> Result<usize, SendError> {
    let mut remaining = n;
    while remaining > 0 {
        if pos >= buf.len() {
            refill(client, buf, bytes, idle).await?;
            pos = 0;
        }
        let take = remaining.min((buf.len() - pos) as u64) as usize;
        let (res, b) = write_within(up, std::mem::take(buf), pos..pos + take, idle).await;
        *buf = b;
        res.map_err(SendError::Upstream)?;
        pos += take;
        remaining -= take as u64;
    }
    Ok(pos)
}

/// Decodes the client's chunked body from `buf[pos..]` (and its socket)
/// and sends it re-encoded after the head in `out`. Returns where the body
/// ends in `buf`.
async fn copy_chunked(
    client: &Stream,
    buf: &mut Vec<u8>,
    mut pos: usize,
    mut out: Vec<u8>,
    up: &Stream,
    bytes: &ByteCounts,
    idle: Duration,
) -> (Result<usize, SendError>, Vec<u8>) {
    let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
    loop {
        if pos >= buf.len() {
            // Send what is ready before waiting for more.
            if !out.is_empty() {
                match write_or(up, out, idle).await {
                    Ok(o) => out = o,
                    Err(e) => return (Err(SendError::Upstream(e)), Vec::new()),
                }
                out.clear();
            }
            if let Err(e) = refill(client, buf, bytes, idle).await {
                return (Err(e), out);
            }
            pos = 0;
        }
        match decoder.decode(&buf[pos..]) {
            Ok((used, Some(Chunk::Data { start, end }))) => {
                encode_chunk_header(end - start, &mut out);
                out.extend_from_slice(&buf[pos + start..pos + end]);
                out.extend_from_slice(CHUNK_END);
                pos += used;
                if out.len() >= BODY_BUFFER {
                    match write_or(up, out, idle).await {
                        Ok(o) => out = o,
                        Err(e) => return (Err(SendError::Upstream(e)), Vec::new()),
                    }
                    out.clear();
                }
            }
            Ok((used, Some(Chunk::Done))) => {
                encode_last_chunk(decoder.trailers(), &mut out);
                pos += used;
                return match write_or(up, out, idle).await {
                    Ok(o) => (Ok(pos), o),
                    Err(e) => (Err(SendError::Upstream(e)), Vec::new()),
                };
            }
            Ok((used, None)) => pos += used,
            Err(e) => return (Err(SendError::Chunked(e)), out),
        }
    }
}

/// Reads the response head into `rbuf`, skipping interim (1xx) responses
/// other than 101. Its timeouts run from the end of the request
/// ([`head_timeout`]); while the body is still going, only the body's
/// idle timeout watches it.
pub(crate) async fn read_response_head(
    up: &Stream,
    rbuf: &mut Vec<u8>,
    method: Method,
    max_head: usize,
    fields: &mut Vec<Field>,
    nominated: &mut Vec<Span>,
) -> Result<ResponseHead, HeadFailure> {
    let read = async {
        let mut any = false;
        loop {
            if !rbuf.is_empty() {
                match h1::parse_response(rbuf, method, max_head, fields, nominated) {
                    Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                        rbuf.drain(..h.len);
                        continue;
                    }
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(e) => return Err(HeadFailure::Malformed(e)),
                }
            }
            let mut b = std::mem::take(rbuf);
            if b.capacity() - b.len() < 1024 {
                b.reserve(buffers::BUFFER);
            }
            let (res, b) = up.read_more(b).await;
            *rbuf = b;
            match res {
                Ok(0) => return Err(HeadFailure::Closed { any, error: None }),
                Ok(_) => any = true,
                Err(e) => {
                    return Err(HeadFailure::Closed {
                        any,
                        error: Some(e),
                    });
                }
            }
        }
    };
    read.await
}

/// Waits for the first of the timeouts of a request's response head, each
/// counted from the moment the request was all sent (now, if sending
/// failed): the route timeout (from the first attempt's), the per-try
/// timeout, the idle timeout. Returns which one expired.
async fn head_timeout(clock: &Clock) -> TimeoutKind {
    let sent = clock.sent_at.get().unwrap_or_else(Instant::now);
    let mut end = (
        clock.first_sent.get().unwrap_or(sent) + clock.timeout,
        TimeoutKind::Request,
    );
    for (at, kind) in [
        (clock.per_try.map(|p| sent + p), TimeoutKind::PerTry),
        (Some(sent + clock.idle), TimeoutKind::Idle),
    ] {
        if let Some(at) = at.filter(|at| *at < end.0) {
            end = (at, kind);
        }
    }
    rt::sleep_until(end.0).await;
    end.1
}

/// The wait a retryable 429 or 503 asks for in `Retry-After`.
pub(crate) fn retry_after_of(
    response: &ResponseHead,
    rbuf: &[u8],
    fields: &[Field],
) -> Option<Duration> {
    if !matches!(response.status, 429 | 503) {
        return None;
    }
    fields
        .iter()
        .find(|f| f.name.get(rbuf).eq_ignore_ascii_case(b"retry-after"))
        .and_then(|f| crate::retry::retry_after(f.value.get(rbuf), std::time::SystemTime::now()))
}

/// Sends the response head and streams the body to the client. Returns
/// whether the upstream connection may be reused (body read exactly to
/// its end) and whether the client's connection must close.
#[allow(clippy::too_many_arguments)]
async fn respond(
    client: &Stream,
    up: &Stream,
    rbuf: &mut Vec<u8>,
    response: &ResponseHead,
    fields: &[Field],
    nominated: &[Span],
    ops: &HeaderOps,
    client_minor: u8,
    close: bool,
    attempts: u32,
    out: &mut Vec<u8>,
    bytes: &ByteCounts,
    idle: Duration,
) -> Result<(bool, bool), BodyFailure> {
    // Re-framing for the client: an HTTP/1.0 client gets no chunked
    // coding (the end of the body is the end of the connection); an
    // HTTP/1.1 client gets a close-delimited body chunked, so its
    // connection can stay open.
    let framing = match (response.framing, client_minor) {
        (Framing::Chunked | Framing::Close, 0) => Framing::Close,
        (Framing::Close, _) => Framing::Chunked,
        (f, _) => f,
    };
    let close = close || framing == Framing::Close;
    let keep_length = response.framing == Framing::None
        && !(100..200).contains(&response.status)
        && response.status != 204;
    out.clear();
    let how = ResponseOut {
        framing,
        close,
        keep_length,
        attempts,
    };
    write::response_head(out, rbuf, response, fields, nominated, how, ops);
    let mut pos = response.len;
    let reusable = match response.framing {
        Framing::None => {
            flush(client, out, bytes, idle).await?;
            rbuf.len() == pos
        }
        Framing::Length(n) => {
            let available = rbuf.len() - pos;
            if n as usize <= available && n as usize <= INLINE_BODY {
                out.extend_from_slice(&rbuf[pos..pos + n as usize]);
                flush(client, out, bytes, idle).await?;
                pos += n as usize;
            } else {
                flush(client, out, bytes, idle).await?;
                pos = stream_length(client, up, rbuf, pos, n, bytes, idle).await?;
            }
            rbuf.len() == pos
        }
        Framing::Chunked => {
            stream_chunked(
                client,
                up,
                rbuf,
                pos,
                framing == Framing::Chunked,
                out,
                bytes,
                idle,
            )
            .await?
        }
        Framing::Close => {
            stream_to_close(
                client,
                up,
                rbuf,
                pos,
                framing == Framing::Chunked,
                out,
                bytes,
                idle,
            )
            .await?;
            false
        }
    };
    Ok((reusable, close))
}

/// Writes `out` to the client and counts it.
async fn flush(
    client: &Stream,
    out: &mut Vec<u8>,
    bytes: &ByteCounts,
    idle: Duration,
) -> Result<(), BodyFailure> {
    let len = out.len();
    let (res, o) = write_within(client, std::mem::take(out), 0..len, idle).await;
    *out = o;
    res.map_err(BodyFailure::Client)?;
    bytes.add_sent(out.len());
    out.clear();
    Ok(())
}

/// Reads more of the response body from the upstream; `Ok(0)` at its end.
async fn refill_upstream(
    up: &Stream,
    rbuf: &mut Vec<u8>,
    idle: Duration,
) -> Result<usize, BodyFailure> {
    match read_body_bytes(up, rbuf, idle).await {
        None => Err(BodyFailure::UpstreamIdle),
        Some(res) => res.map_err(|e| BodyFailure::Upstream(Some(e))),
    }
}

/// Streams `n` body bytes from `rbuf[pos..]` and the upstream socket to the
/// client. Returns where the body ends in `rbuf`.
#[allow(clippy::too_many_arguments)]
async fn stream_length(
    client: &Stream,
    up: &Stream,
    rbuf: &mut Vec<u8>,
    mut pos: usize,
    n: u64,
    bytes: &ByteCounts,
    idle: Duration,
) -> Result<usize, BodyFailure> {
    let mut remaining = n;
    while remaining > 0 {
        if pos >= rbuf.len() {
            if refill_upstream(up, rbuf, idle).await? == 0 {
                return Err(BodyFailure::Upstream(None));
            }
            pos = 0;
        }
        let take = remaining.min((rbuf.len() - pos) as u64) as usize;
        let (res, b) = write_within(client, std::mem::take(rbuf), pos..pos + take, idle).await;
        *rbuf = b;
        res.map_err(BodyFailure::Client)?;
        bytes.add_sent(take);
        pos += take;
        remaining -= take as u64;
    }
    Ok(pos)
}

/// Decodes a chunked response and sends it to the client re-chunked (or
/// raw, for an HTTP/1.0 client). Returns whether the upstream connection
/// ended exactly with the body.
#[allow(clippy::too_many_arguments)]
async fn stream_chunked(
    client: &Stream,
    up: &Stream,
    rbuf: &mut Vec<u8>,
    mut pos: usize,
    chunked_out: bool,
    out: &mut Vec<u8>,
    bytes: &ByteCounts,
    idle: Duration,
) -> Result<bool, BodyFailure> {
    let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
    loop {
        if pos >= rbuf.len() {
            if !out.is_empty() {
                flush(client, out, bytes, idle).await?;
            }
            if refill_upstream(up, rbuf, idle).await? == 0 {
                return Err(BodyFailure::Upstream(None));
            }
            pos = 0;
        }
        match decoder.decode(&rbuf[pos..]) {
            Ok((used, Some(Chunk::Data { start, end }))) => {
                if chunked_out {
                    encode_chunk_header(end - start, out);
                }
                out.extend_from_slice(&rbuf[pos + start..pos + end]);
                if chunked_out {
                    out.extend_from_slice(CHUNK_END);
                }
                pos += used;
                if out.len() >= BODY_BUFFER {
                    flush(client, out, bytes, idle).await?;
                }
            }
            Ok((used, Some(Chunk::Done))) => {
                if chunked_out {
                    encode_last_chunk(decoder.trailers(), out);
                }
                pos += used;
                flush(client, out, bytes, idle).await?;
                return Ok(rbuf.len() == pos);
            }
            Ok((used, None)) => pos += used,
            Err(e) => return Err(BodyFailure::Chunked(e)),
        }
    }
}

/// Streams a close-delimited response to the client, chunked for an
/// HTTP/1.1 client.
#[allow(clippy::too_many_arguments)]
async fn stream_to_close(
    client: &Stream,
    up: &Stream,
    rbuf: &mut Vec<u8>,
    mut pos: usize,
    chunked_out: bool,
    out: &mut Vec<u8>,
    bytes: &ByteCounts,
    idle: Duration,
) -> Result<(), BodyFailure> {
    loop {
        if pos < rbuf.len() {
            if chunked_out {
                encode_chunk_header(rbuf.len() - pos, out);
            }
            out.extend_from_slice(&rbuf[pos..]);
            if chunked_out {
                out.extend_from_slice(CHUNK_END);
            }
        }
        flush(client, out, bytes, idle).await?;
        pos = 0;
        if refill_upstream(up, rbuf, idle).await? == 0 {
            if chunked_out {
                out.extend_from_slice(LAST_CHUNK);
                flush(client, out, bytes, idle).await?;
            }
            return Ok(());
        }
    }
}

/// A 101 to an upgrade request: the response goes to the client, bytes
/// already read on either side follow, then the connection is a byte
/// tunnel until one side closes.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    c: &mut Client,
    cbuf: &mut Vec<u8>,
    consumed: usize,
    up: &Stream,
    rbuf: &[u8],
    response: &ResponseHead,
    fields: &[Field],
    nominated: &[Span],
    ops: &HeaderOps,
    record: &mut RequestRecord,
    idle: Duration,
) -> After {
    let mut out = buffers::take();
    let how = ResponseOut {
        framing: Framing::None,
        close: false,
        keep_length: false,
        attempts: record.attempts,
    };
    write::response_head(&mut out, rbuf, response, fields, nominated, how, ops);
    out.extend_from_slice(&rbuf[response.len..]);
    let (res, o) = c.stream.write_all(out).await;
    c.bytes.add_sent(o.len());
    buffers::give(o);
    if res.is_err() {
        return After::Abort;
    }
    if consumed < cbuf.len() {
        let (res, b) = up
            .write_range(std::mem::take(cbuf), consumed..cbuf.len())
            .await;
        *cbuf = b;
        if res.is_err() {
            return After::Abort;
        }
    }
    cbuf.clear();
    let end = c.stream.tunnel(up, idle).await;
    c.bytes.add_received(end.received as usize);
    c.bytes.add_sent(end.sent as usize);
    if let Some(e) = end.error {
        record.error = Some(format!("tunnel: {e}"));
        return After::Abort;
    }
    After::Close
}
