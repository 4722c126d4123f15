//! One HTTP/2 request (one stream), top to bottom. The phases are those
//! of an HTTP/1.1 request (`crate::phases`), in the same order, on the
//! same compiled config:
//!
//! 1. the head is written in HTTP/1.1 form and parsed by our parser
//!    (`translate.rs`): limits and field rules as for HTTP/1.1; a head
//!    that cannot be translated is refused (400, `h2_bad_request`);
//! 2. listener rate limit -> route -> route rate limit -> redirect or
//!    direct response -> fault (delay, abort) -> split -> `max_requests`;
//! 3. the upstream exchange, in a retry loop: pick an endpoint (core's
//!    balancer, health, one not tried yet on a retry) -> an HTTP/2 session
//!    from the per-core pool (`pool.rs`) or an HTTP/1.1 connection (the
//!    HTTP/1.1 pool, the body re-framed chunked) -> the request body
//!    streams up while the response head is awaited within the route
//!    timeout (bounded by the client's `grpc-timeout`), the per-try timeout
//!    and the client's own reset -> a status or a trailers-only
//!    `grpc-status` the policy retries is retried (the request's body, up
//!    to 64 KiB, is kept for that) -> the response (route header
//!    operations applied) and its body stream back, trailers included;
//! 4. the record: metrics (with the gRPC status), access log, span.
//!
//! The proxy's own answers to a gRPC request are gRPC errors: HTTP 200,
//! `grpc-status` and `grpc-message` in a trailers-only response.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{Either, select};
use futures_util::pin_mut;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use ringmesh_core::health::Outcome;
use ringmesh_core::protocol::ConnectionFacts;
use ringmesh_core::upstream::{self, ConnectionSlot, Pick, RequestSlot};
use ringmesh_core::{ConnectError, Stream, rt};

use super::grpc;
use super::pool::{self as h2pool, OpenError};
use super::server::{ConnCtx, PREMATURE};
use super::translate;
use crate::buffers;
use crate::codec::chunked::{
    CHUNK_END, Chunk, ChunkedDecoder, ChunkedLimits, encode_chunk_header, encode_last_chunk,
};
use crate::codec::h1::{self, Field, Framing, Method, RequestHead, Span};
use crate::codec::write::{self, Forwarded};
use crate::config::HttpListener;
use crate::exchange::{HeadFailure, Leg, connect_flag, edits_for, read_response_head};
use crate::headers::HeaderOps;
use crate::local_reply::ResponseFlag;
use crate::metrics::{Rejection, TimeoutKind};
use crate::pool::{self as h1pool, PooledConnection};
use crate::record::{Downstream, LogText, Protocol, RequestRecord};
use crate::retry::{Cause, Retries};
use crate::route::Action;
use crate::route::matcher::RequestView;
use crate::server::http_of;

/// A request body up to this size is kept whole when the route may retry.
pub(crate) const REPLAY_BODY: usize = crate::exchange::INLINE_BODY;

/// Serves one stream to its end.
pub(crate) async fn serve(
    conn: Rc<ConnCtx>,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let started = Instant::now();
    let listener = conn.watch.current();
    let reset = match http_of(&listener) {
        Some(http) => run(&conn, http, req, respond, started).await,
        None => {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            false
        }
    };
    conn.stream_ended(reset && started.elapsed() < PREMATURE);
}

/// Bytes of one stream's messages (DATA payloads), both ways.
#[derive(Default)]
struct Counts {
    received: Cell<u64>,
    sent: Cell<u64>,
}

/// The stream as the request record sees it.
struct Side<'c> {
    conn: &'c ConnCtx,
    log: LogText,
    counts: &'c Counts,
}

impl Downstream for Side<'_> {
    fn facts(&self) -> &ConnectionFacts {
        &self.conn.facts
    }
    fn peer_ip(&self) -> &str {
        &self.conn.peer_ip
    }
    fn log(&self) -> &LogText {
        &self.log
    }
    fn mesh_source(&self, mesh: &crate::mesh::MeshStats) -> u16 {
        self.conn.mesh_source(mesh)
    }
    fn received(&self) -> u64 {
        self.counts.received.get()
    }
    fn sent(&self) -> u64 {
        self.counts.sent.get()
    }
}

/// One request in flight.
struct Req<'c> {
    conn: &'c ConnCtx,
    http: &'c HttpListener,
    /// The head in HTTP/1.1 form.
    buf: Vec<u8>,
    head: RequestHead,
    fields: Vec<Field>,
    nominated: Vec<Span>,
    body: Option<RecvStream>,
    respond: SendResponse<Bytes>,
    grpc: bool,
    grpc_timeout: Option<Duration>,
    record: RequestRecord,
    counts: &'c Counts,
    /// The client reset the stream.
    reset: bool,
}

/// Runs the request; says whether the client reset it.
async fn run(
    conn: &ConnCtx,
    http: &HttpListener,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    started: Instant,
) -> bool {
    let core = conn.facts.core;
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::CONNECT {
        http.stats.reject(core, Rejection::Connect);
        send_plain(&mut respond, 405, "CONNECT is not supported (DPE)\n");
        return false;
    }
    let body_follows = !body.is_end_stream();
    let mut buf = buffers::take();
    let mut fields = Vec::with_capacity(16);
    let mut nominated = Vec::new();
    let parsed = match translate::request_to_h1(&parts, body_follows, &mut buf) {
        Ok(()) => h1::parse_request(&buf, &http.settings.limits, &mut fields, &mut nominated)
            .map_err(|e| e.as_str()),
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 request not translatable");
            Err("untranslatable head")
        }
    };
    let head = match parsed {
        Ok(Some(head)) => head,
        Ok(None) | Err(_) => {
            http.stats.reject(core, Rejection::Http2Request);
            tracing::info!(
                target: "ringmesh::access",
                listener = %http.name,
                peer = %conn.facts.peer,
                status = 400,
                reason = parsed.err().unwrap_or("incomplete head"),
                "request rejected"
            );
            buffers::give(buf);
            send_plain(&mut respond, 400, "Bad Request (DPE)\n");
            return false;
        }
    };
    let content_type = parts.headers.get(http::header::CONTENT_TYPE);
    let grpc = content_type.is_some_and(|v| grpc::is_grpc(v.as_bytes()));
    let grpc_timeout = if grpc {
        parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| grpc::parse_timeout(v.as_bytes()))
    } else {
        None
    };
    drop(parts);
    let counts = Counts::default();
    let mut log = LogText::default();
    let mut record =
        RequestRecord::of_head(started, (0, 0), http, &head, (&buf, &fields), &mut log);
    record.protocol = Protocol::Http2;
    let mut r = Req {
        conn,
        http,
        buf,
        head,
        fields,
        nominated,
        body: Some(body),
        respond,
        grpc,
        grpc_timeout,
        record,
        counts: &counts,
        reset: false,
    };
    phases(&mut r).await;
    let Req {
        record, buf, reset, ..
    } = r;
    buffers::give(buf);
    let side = Side {
        conn,
        log,
        counts: &counts,
    };
    record.finish(http, &side);
    reset
}

/// The request's phases, in order (see the module's documentation).
async fn phases(r: &mut Req<'_>) {
    let http = r.http;
    let core = r.conn.facts.core;
    if let Some(limit) = &http.rate_limit {
        if let Err(wait) = limit.take(limit_key(r, limit)) {
            return r.limited(limit, wait).await;
        }
    }
    let req = RequestView::new(&r.buf, &r.head, &r.fields);
    let Some((index, route)) = http.routes.find(&req) else {
        return r.local(ResponseFlag::NoRoute, None).await;
    };
    r.record.route = Some(index);
    if let Some(limit) = &route.rate_limit {
        if let Err(wait) = limit.take(limit_key(r, limit)) {
            return r.limited(limit, wait).await;
        }
    }
    let forward = match &route.action {
        Action::Forward(f) => f,
        Action::Redirect(_) | Action::Direct(_) => {
            let mut out = buffers::take();
            let req = RequestView::new(&r.buf, &r.head, &r.fields);
            r.record.status = crate::direct::write(&mut out, http, route, &r.head, &req, false);
            r.send_h1(out).await;
            return;
        }
    };
    let mut timeout = forward.timeout;
    if let Some(fault) = &forward.fault {
        let req = RequestView::new(&r.buf, &r.head, &r.fields);
        let injected = fault.draw(&req);
        let counters = fault.stats.cores.get(core);
        if let Some(delay) = injected.delay {
            counters.delays.inc();
            r.record.flag = Some(ResponseFlag::DelayInjected);
            rt::sleep(delay.min(timeout)).await;
            if delay >= timeout {
                return r.local(ResponseFlag::UpstreamTimeout, None).await;
            }
            timeout -= delay;
        }
        if let Some(status) = injected.abort {
            counters.aborts.inc();
            return r.fault_abort(status, injected.abort_grpc).await;
        }
    }
    let req = RequestView::new(&r.buf, &r.head, &r.fields);
    let pick = forward.pick(&req);
    r.record.target = Some(pick);
    let target = &forward.targets[pick].target;
    let Some(_active) = RequestSlot::acquire(&target.cluster, core) else {
        return r.local(ResponseFlag::UpstreamOverflow, None).await;
    };
    let gauge = &http.stats.cores.get(core).active;
    gauge.add(1);
    let leg = Leg {
        route,
        forward,
        target,
        stats: &forward.targets[pick].stats,
        timeout,
    };
    forward_request(r, leg).await;
    gauge.add(-1);
}

/// The request's key for a keyed rate limit.
fn limit_key<'r>(r: &'r Req<'_>, limit: &crate::ratelimit::RateLimit) -> &'r [u8] {
    use crate::ratelimit::LimitKey;
    match &limit.key {
        None => b"",
        Some(LimitKey::Client) => r.conn.peer_ip.as_bytes(),
        Some(LimitKey::Identity) => r.conn.facts.identity.as_deref().unwrap_or("").as_bytes(),
        Some(LimitKey::Header(name)) => r
            .fields
            .iter()
            .find(|f| f.name.get(&r.buf).eq_ignore_ascii_case(name))
            .map_or(&b""[..], |f| f.value.get(&r.buf)),
    }
}

/// How one attempt ended.
pub(crate) enum Attempt {
    /// The response (the upstream's) went to the client, or the client
    /// went away: the request is over.
    Done,
    /// The policy retries what happened and a retry was granted: wait,
    /// then go again.
    Retry(Duration),
    /// A pooled session or connection failed before the request left:
    /// try again at once on a new one (not a retry).
    Stale,
    /// Failed before any response: answered by the caller, or retried.
    Failed {
        cause: Option<Cause>,
        flag: ResponseFlag,
        error: Option<String>,
    },
}

/// The request's body: what was read of it, and the stream of the rest.
struct Body {
    /// Chunks read so far (kept for a replay while `rest` is `None`).
    held: Vec<Bytes>,
    /// The trailers, once read.
    trailers: Option<HeaderMap>,
    /// The client's stream, when the body was not all read.
    rest: Option<RecvStream>,
}

impl Body {
    /// Whether there is no body at all.
    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.trailers.is_none() && self.rest.is_none()
    }

    /// Reads the body while it stays within `limit` bytes, so it can be
    /// sent again; a longer one keeps streaming from where it stopped.
    async fn hold(&mut self, limit: usize, idle: Duration, counts: &Counts) -> Result<(), Pump> {
        let mut len = 0;
        while let Some(rest) = self.rest.as_mut() {
            if len > limit {
                return Ok(());
            }
            match rt::timeout(idle, rest.data()).await {
                None => return Err(Pump::Idle),
                Some(Some(Ok(chunk))) => {
                    let n = chunk.len();
                    let _ = rest.flow_control().release_capacity(n);
                    counts.received.set(counts.received.get() + n as u64);
                    len += n;
                    self.held.push(chunk);
                }
                Some(Some(Err(e))) => return Err(Pump::Recv(Some(e))),
                Some(None) => {
                    let trailers = rest.trailers().await.map_err(|e| Pump::Recv(Some(e)))?;
                    self.trailers = trailers;
                    self.rest = None;
                }
            }
        }
        Ok(())
    }

    /// Whether the whole body is held (it can be replayed).
    fn whole(&self) -> bool {
        self.rest.is_none()
    }
}

/// How pumping a body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Pump {
    /// The receiving side (where the bytes come from) failed or reset.
    #[error("receiving: {}", .0.as_ref().map_or_else(|| "stream closed".to_owned(), |e| e.to_string()))]
    Recv(Option<h2::Error>),
    /// The sending side failed or reset.
    #[error("sending: {}", .0.as_ref().map_or_else(|| "stream closed".to_owned(), |e| e.to_string()))]
    Send(Option<h2::Error>),
    /// The HTTP/1.1 side's socket failed, or its body broke framing.
    #[error("{0}")]
    Io(String),
    /// No bytes for the idle timeout.
    #[error("no bytes within the idle timeout")]
    Idle,
}

/// Forwards the request to the leg's cluster and its response back,
/// retrying as the route's policy allows.
async fn forward_request(r: &mut Req<'_>, leg: Leg<'_>) {
    let http = r.http;
    let core = r.conn.facts.core;
    let cluster = &*leg.target.cluster;
    let policy = leg.forward.retries.as_deref();
    let idle = leg
        .forward
        .idle_timeout
        .unwrap_or(http.settings.idle_timeout);
    let timeout = r.grpc_timeout.map_or(leg.timeout, |t| t.min(leg.timeout));
    let deadline = Instant::now() + timeout;
    let mut body = Body {
        held: Vec::new(),
        trailers: None,
        rest: r.body.take().filter(|b| !b.is_end_stream()),
    };
    if body.rest.is_some() && policy.is_some_and(|p| p.attempts > 0) {
        if let Err(e) = body.hold(REPLAY_BODY, idle, r.counts).await {
            return r.client_failed(e).await;
        }
    }
    // The head the proxy sends: route edits, forwarding fields, trace
    // context, in HTTP/1.1 form (translated again for an HTTP/2 upstream).
    let mut out = buffers::take();
    let trace = r.record.trace;
    let tracing = http.tracing.as_ref().filter(|_| trace.is_some());
    let span_id = match tracing {
        Some(_) => crate::trace::new_span_id(),
        None => [0; 8],
    };
    {
        let fwd = Forwarded {
            client_ip: http
                .settings
                .append_x_forwarded_for
                .then_some(r.conn.peer_ip.as_str()),
            proto: if http.tls { "https" } else { "http" },
            request_id: r.record.request_id_str(),
            default_host: "",
            trace: tracing.zip(trace.as_ref()).map(|(s, t)| (s, t, span_id)),
        };
        let mut rewritten = None;
        let edits = edits_for(leg, (&r.buf, &r.fields), &r.head, &mut rewritten);
        write::request_head(
            &mut out,
            &r.buf,
            &r.head,
            &r.fields,
            &r.nominated,
            &fwd,
            &edits,
        );
        if let Some(b) = rewritten {
            buffers::give(b);
        }
    }
    let upstream_req = if leg.target.http2 {
        let scheme = if cluster.tls.is_some() {
            "https"
        } else {
            "http"
        };
        match translate::h1_to_h2_request(&out, scheme, r.head.te_trailers) {
            Ok(req) => Some(req),
            Err(e) => {
                buffers::give(out);
                let flag = ResponseFlag::DownstreamProtocolError;
                return r.local(flag, Some(e.to_string())).await;
            }
        }
    } else {
        None
    };
    let mut retries = Retries::new(
        policy,
        cluster,
        &leg.target.budget,
        &leg.target.stats,
        core,
        r.record.started(),
    );
    retries.replayable = body.whole();
    let mut attempt = 0u32;
    let mut fresh = false;
    let mut stale_once = false;
    loop {
        attempt += 1;
        r.record.attempts = attempt;
        let original = r.conn.facts.original_destination;
        let pick = match upstream::pick_avoiding(
            cluster,
            core,
            r.conn.hash_key,
            retries.avoid(),
            original,
        ) {
            Ok(p) => p,
            Err(e) => break r.local(connect_flag(&e), None).await,
        };
        r.record.status = 0;
        let clocks = Clocks {
            deadline,
            per_try: leg.forward.per_try_timeout,
            idle,
        };
        let done = match &upstream_req {
            Some(req) => {
                attempt_h2(r, leg, req, &mut body, pick, fresh, &clocks, &mut retries).await
            }
            None => attempt_h1(r, leg, &out, &mut body, pick, fresh, &clocks, &mut retries).await,
        };
        fresh = false;
        match done {
            Attempt::Done => break,
            Attempt::Retry(wait) => {
                r.record.error = None;
                rt::sleep(wait).await;
            }
            Attempt::Stale if !stale_once && body.whole() => {
                stale_once = true;
                fresh = true;
                attempt -= 1;
            }
            Attempt::Stale => {
                let flag = ResponseFlag::UpstreamConnectionTermination;
                let cause = Cause::RefusedStream;
                if let Some(wait) = retries.grant(cause, None, deadline) {
                    rt::sleep(wait).await;
                    continue;
                }
                break r.local(flag, None).await;
            }
            Attempt::Failed { cause, flag, error } => {
                if let Some(wait) = cause.and_then(|c| retries.grant(c, None, deadline)) {
                    r.record.error = None;
                    rt::sleep(wait).await;
                    continue;
                }
                break r.local(flag, error).await;
            }
        }
    }
    buffers::give(out);
}

/// The clocks of one attempt.
pub(crate) struct Clocks {
    /// The route timeout (bounded by `grpc-timeout`) ends here.
    pub deadline: Instant,
    pub per_try: Option<Duration>,
    pub idle: Duration,
}

impl Clocks {
    /// When this attempt's wait for a response head ends, and which
    /// timeout that is.
    pub fn head_deadline(&self, started: Instant) -> (Instant, TimeoutKind) {
        match self.per_try.map(|p| started + p) {
            Some(t) if t < self.deadline => (t, TimeoutKind::PerTry),
            _ => (self.deadline, TimeoutKind::Request),
        }
    }
}

/// What waiting for a response head came to.
enum HeadWait<T> {
    Head(T),
    TimedOut(TimeoutKind),
    /// The client reset the stream.
    ClientGone,
}

/// Waits for `head` until `until`, and for the client's reset of the
/// stream meanwhile.
async fn wait_head<T>(
    head: impl std::future::Future<Output = T>,
    respond: &mut SendResponse<Bytes>,
    until: (Instant, TimeoutKind),
) -> HeadWait<T> {
    let timer = rt::sleep_until(until.0);
    let reset = poll_fn(|cx| respond.poll_reset(cx));
    pin_mut!(head, timer, reset);
    match select(head, select(timer, reset)).await {
        Either::Left((h, _)) => HeadWait::Head(h),
        Either::Right((Either::Left(_), _)) => HeadWait::TimedOut(until.1),
        Either::Right((Either::Right(_), _)) => HeadWait::ClientGone,
    }
}

/// One attempt on an HTTP/2 session.
#[allow(clippy::too_many_arguments)]
async fn attempt_h2(
    r: &mut Req<'_>,
    leg: Leg<'_>,
    req: &http::Request<()>,
    body: &mut Body,
    pick: Pick,
    fresh: bool,
    clocks: &Clocks,
    retries: &mut Retries<'_>,
) -> Attempt {
    let core = r.conn.facts.core;
    let cluster = &*leg.target.cluster;
    let checkout = match session(leg, core, pick, fresh, clocks, retries).await {
        Ok(c) => c,
        Err(Some(attempt)) => return attempt,
        Err(None) => return r.timed_out(leg, TimeoutKind::Request).await,
    };
    let index = checkout.index;
    let reused = checkout.reused;
    retries.tried(index);
    r.record.endpoint = Some(checkout.addr);
    let started = Instant::now();
    let until = clocks.head_deadline(started);
    // Wait for a stream under the server's concurrency limit.
    let ready = match wait_head(checkout.send.clone().ready(), &mut r.respond, until).await {
        HeadWait::Head(Ok(s)) => s,
        HeadWait::Head(Err(e)) => {
            checkout.lease.retire();
            if reused {
                return Attempt::Stale;
            }
            return failed_stream(cluster, core, index, &e);
        }
        HeadWait::TimedOut(kind) => return r.timed_out(leg, kind).await,
        HeadWait::ClientGone => return r.client_gone(),
    };
    let mut ready = ready;
    let mut up_req = http::Request::new(());
    *up_req.method_mut() = req.method().clone();
    *up_req.uri_mut() = req.uri().clone();
    *up_req.headers_mut() = req.headers().clone();
    let (response, mut up_body) = match ready.send_request(up_req, body.is_empty()) {
        Ok(pair) => pair,
        Err(e) => {
            checkout.lease.retire();
            if reused && !e.is_reset() {
                return Attempt::Stale;
            }
            return failed_stream(cluster, core, index, &e);
        }
    };
    cluster.balancer.opened(core, index);
    let counts = r.counts;
    let idle = clocks.idle;
    let empty = body.is_empty();
    let send_body = async {
        if empty {
            return Ok(());
        }
        send_body_h2(body, &mut up_body, idle, counts).await
    };
    let outcome = {
        let exchange = respond_h2(r, leg, response, until, retries, index, started);
        pin_mut!(send_body, exchange);
        match select(send_body, exchange).await {
            Either::Right((done, _)) => Ok(done),
            Either::Left((Ok(()), exchange)) => Ok(exchange.await),
            // The server stopped reading the body: its answer may still come.
            Either::Left((Err(Pump::Send(_)), exchange)) => Ok(exchange.await),
            Either::Left((Err(e), _)) => Err(e),
        }
    };
    // A client that broke off its body: the upstream stream is reset
    // (CANCEL) as its handles drop.
    let done = outcome.unwrap_or_else(|e| r.client_failed_sync(e));
    cluster.balancer.closed(core, index);
    drop(checkout);
    done
}

/// A session to send the attempt on: a pooled one with a free stream, or
/// a new one. `Err(None)`: the route timeout passed while connecting;
/// `Err(Some(_))`: how the attempt failed.
pub(crate) async fn session(
    leg: Leg<'_>,
    core: usize,
    pick: Pick,
    fresh: bool,
    clocks: &Clocks,
    retries: &mut Retries<'_>,
) -> Result<h2pool::Checkout, Option<Attempt>> {
    let cluster = &*leg.target.cluster;
    let stats = leg.target.stats.cores.get(core);
    let taken = if fresh {
        None
    } else {
        h2pool::take(cluster, pick.addr, pick.index, false)
    };
    if let Some(c) = taken {
        stats.reused.inc();
        return Ok(c);
    }
    let left = clocks.deadline.saturating_duration_since(Instant::now());
    let opened = rt::timeout(
        left,
        h2pool::open(cluster, core, pick, leg.target.pool.idle_timeout),
    )
    .await;
    match opened {
        None => Err(None),
        Some(Ok(c)) => {
            stats.new.inc();
            Ok(c)
        }
        // At the breaker: queue on the least loaded session.
        Some(Err(OpenError::Overflow)) => {
            h2pool::take(cluster, pick.addr, pick.index, true).ok_or(Some(Attempt::Failed {
                cause: None,
                flag: ResponseFlag::UpstreamOverflow,
                error: None,
            }))
        }
        Some(Err(OpenError::Connect(e))) => {
            if let ConnectError::Exhausted { addr, .. } = &e {
                if let Some(i) = cluster.endpoints.iter().position(|x| x.addr == *addr) {
                    retries.tried(i);
                }
            }
            retries.tried(pick.index);
            let cause =
                matches!(e, ConnectError::Exhausted { .. }).then_some(Cause::ConnectFailure);
            Err(Some(Attempt::Failed {
                cause,
                flag: connect_flag(&e),
                error: Some(e.to_string()),
            }))
        }
        Some(Err(e)) => {
            retries.tried(pick.index);
            cluster.record_outcome(core, pick.index, Outcome::LocalOriginFailure);
            Err(Some(Attempt::Failed {
                cause: Some(Cause::ConnectFailure),
                flag: ResponseFlag::UpstreamConnectFailure,
                error: Some(e.to_string()),
            }))
        }
    }
}

/// An attempt whose stream failed before any response.
pub(crate) fn failed_stream(
    cluster: &ringmesh_core::Cluster,
    core: usize,
    index: usize,
    e: &h2::Error,
) -> Attempt {
    let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_go_away();
    if !refused {
        cluster.record_outcome(core, index, Outcome::LocalOriginFailure);
    }
    Attempt::Failed {
        cause: Some(if refused {
            Cause::RefusedStream
        } else {
            Cause::Reset
        }),
        flag: ResponseFlag::UpstreamConnectionTermination,
        error: Some(e.to_string()),
    }
}

/// Waits for an HTTP/2 upstream's response head and answers with it (or
/// asks for a retry).
async fn respond_h2(
    r: &mut Req<'_>,
    leg: Leg<'_>,
    response: h2::client::ResponseFuture,
    until: (Instant, TimeoutKind),
    retries: &mut Retries<'_>,
    index: usize,
    started: Instant,
) -> Attempt {
    let core = r.conn.facts.core;
    let cluster = &*leg.target.cluster;
    let response = match wait_head(response, &mut r.respond, until).await {
        HeadWait::Head(Ok(resp)) => resp,
        HeadWait::Head(Err(e)) => return failed_stream(cluster, core, index, &e),
        HeadWait::TimedOut(kind) => return r.timed_out(leg, kind).await,
        HeadWait::ClientGone => return r.client_gone(),
    };
    retries.settle();
    if cluster.balancer.wants_latency() {
        cluster.balancer.observe(core, index, started.elapsed());
    }
    let (mut parts, mut recv) = response.into_parts();
    let status = parts.status.as_u16();
    let ended = recv.is_end_stream();
    let grpc_now = if r.grpc {
        parts
            .headers
            .get("grpc-status")
            .and_then(|v| grpc::parse_status(v.as_bytes()))
    } else {
        None
    };
    leg.target.stats.cores.get(core).codes[crate::metrics::code_class(status)].inc();
    let cause = match grpc_now {
        Some(code) if status == 200 => Cause::Grpc(code),
        _ => Cause::Status(status),
    };
    let outcome_status = match grpc_now {
        Some(code) if status == 200 => grpc::to_http(code),
        _ => status,
    };
    // A gRPC stream's status comes in its trailers: recorded at the end.
    if grpc_now.is_some() || !r.grpc || status != 200 {
        cluster.record_outcome(core, index, Outcome::of_status(outcome_status));
    }
    if retries.wanted(cause) {
        let retry_after = parts
            .headers
            .get(http::header::RETRY_AFTER)
            .filter(|_| matches!(status, 429 | 503))
            .and_then(|v| crate::retry::retry_after(v.as_bytes(), std::time::SystemTime::now()));
        if let Some(wait) = retries.grant(cause, retry_after, until.0.max(Instant::now())) {
            return Attempt::Retry(wait);
        }
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        parts.headers.remove(name);
    }
    leg.route.response_headers.apply(&mut parts.headers);
    r.add_attempts(&mut parts.headers);
    r.record.status = status;
    r.record.grpc_status = grpc_now;
    let resp = http::Response::from_parts(parts, ());
    let mut down = match r.respond.send_response(resp, ended) {
        Ok(s) => s,
        Err(_) => return r.client_gone(),
    };
    if ended {
        return Attempt::Done;
    }
    match pump(
        &mut recv,
        &mut down,
        r.counts,
        Direction::Down,
        leg_idle(r, leg),
    )
    .await
    {
        Ok(trailers) => {
            if r.grpc && grpc_now.is_none() {
                let code = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| grpc::parse_status(v.as_bytes()));
                r.record.grpc_status = code;
                if let Some(code) = code {
                    cluster.record_outcome(core, index, Outcome::of_status(grpc::to_http(code)));
                }
            }
        }
        Err(e) => r.body_failed(e, true),
    }
    Attempt::Done
}

fn leg_idle(r: &Req<'_>, leg: Leg<'_>) -> Duration {
    leg.forward
        .idle_timeout
        .unwrap_or(r.http.settings.idle_timeout)
}

/// Which way a body flows (for counting).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Moves a body from `recv` to `send` with flow control (each chunk is
/// released to the sender only once the receiver took it), then its
/// trailers (or the end of stream). Returns the trailers forwarded.
async fn pump(
    recv: &mut RecvStream,
    send: &mut SendStream<Bytes>,
    counts: &Counts,
    dir: Direction,
    idle: Duration,
) -> Result<Option<HeaderMap>, Pump> {
    loop {
        let next = match rt::timeout(idle, recv.data()).await {
            None => return Err(Pump::Idle),
            Some(next) => next,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Pump::Recv(Some(e)))?;
        let n = chunk.len();
        send_chunk(send, chunk, false, idle).await?;
        let _ = recv.flow_control().release_capacity(n);
        let c = match dir {
            Direction::Up => &counts.received,
            Direction::Down => &counts.sent,
        };
        c.set(c.get() + n as u64);
    }
    let trailers = match rt::timeout(idle, recv.trailers()).await {
        None => return Err(Pump::Idle),
        Some(t) => t.map_err(|e| Pump::Recv(Some(e)))?,
    };
    match &trailers {
        Some(t) => {
            let mut t = t.clone();
            for name in [
                "connection",
                "keep-alive",
                "transfer-encoding",
                "te",
                "upgrade",
            ] {
                t.remove(name);
            }
            send.send_trailers(t).map_err(|e| Pump::Send(Some(e)))?
        }
        None => send
            .send_data(Bytes::new(), true)
            .map_err(|e| Pump::Send(Some(e)))?,
    }
    Ok(trailers)
}

/// Sends one chunk when the peer's window allows it.
pub(crate) async fn send_chunk(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    idle: Duration,
) -> Result<(), Pump> {
    if data.is_empty() {
        if end {
            send.send_data(data, true)
                .map_err(|e| Pump::Send(Some(e)))?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = match rt::timeout(idle, poll_fn(|cx| send.poll_capacity(cx))).await {
            None => return Err(Pump::Idle),
            Some(None) => return Err(Pump::Send(None)),
            Some(Some(Err(e))) => return Err(Pump::Send(Some(e))),
            Some(Some(Ok(c))) => c,
        };
        if cap == 0 {
            continue;
        }
        let part = data.split_to(cap.min(data.len()));
        send.send_data(part, end && data.is_empty())
            .map_err(|e| Pump::Send(Some(e)))?;
    }
    Ok(())
}

/// Sends the request body to an HTTP/2 upstream: what is held (a replay
/// sends the same bytes), then the rest as it comes, then the trailers.
async fn send_body_h2(
    body: &mut Body,
    up: &mut SendStream<Bytes>,
    idle: Duration,
    counts: &Counts,
) -> Result<(), Pump> {
    let last = body.held.len();
    let ends_here = body.rest.is_none() && body.trailers.is_none();
    for (i, chunk) in body.held.iter().enumerate() {
        send_chunk(up, chunk.clone(), ends_here && i + 1 == last, idle).await?;
    }
    match body.rest.as_mut() {
        Some(rest) => {
            let trailers = pump(rest, up, counts, Direction::Up, idle).await?;
            body.trailers = trailers;
            body.rest = None;
            Ok(())
        }
        None => {
            if let Some(t) = &body.trailers {
                up.send_trailers(t.clone())
                    .map_err(|e| Pump::Send(Some(e)))?;
            } else if last == 0 {
                up.send_data(Bytes::new(), true)
                    .map_err(|e| Pump::Send(Some(e)))?;
            }
            Ok(())
        }
    }
}

/// One attempt on an HTTP/1.1 connection (an HTTP/2 client, an HTTP/1.1
/// cluster): the head the proxy wrote, the body re-framed (chunked unless
/// the client gave a `content-length`), trailers as chunked trailers.
#[allow(clippy::too_many_arguments)]
async fn attempt_h1(
    r: &mut Req<'_>,
    leg: Leg<'_>,
    out: &[u8],
    body: &mut Body,
    pick: Pick,
    fresh: bool,
    clocks: &Clocks,
    retries: &mut Retries<'_>,
) -> Attempt {
    let core = r.conn.facts.core;
    let cluster = &*leg.target.cluster;
    let stats = leg.target.stats.cores.get(core);
    let pooled = if fresh {
        None
    } else {
        h1pool::take(cluster, pick.addr)
    };
    let (conn, reused) = match pooled {
        Some(mut conn) => {
            conn.conn.index = pick.index;
            stats.reused.inc();
            (conn, true)
        }
        None => {
            let Some(slot) = ConnectionSlot::acquire(cluster, core) else {
                return Attempt::Failed {
                    cause: None,
                    flag: ResponseFlag::UpstreamOverflow,
                    error: None,
                };
            };
            let left = clocks.deadline.saturating_duration_since(Instant::now());
            let origin = cluster
                .send_proxy_protocol
                .map(|_| r.conn.facts.proxy_origin());
            match rt::timeout(
                left,
                upstream::connect(cluster, core, pick, origin.as_ref()),
            )
            .await
            {
                None => return r.timed_out(leg, TimeoutKind::Request).await,
                Some(Ok(conn)) => {
                    stats.new.inc();
                    (PooledConnection { conn, _slot: slot }, false)
                }
                Some(Err(e)) => {
                    retries.tried(pick.index);
                    let cause = matches!(e, ConnectError::Exhausted { .. })
                        .then_some(Cause::ConnectFailure);
                    return Attempt::Failed {
                        cause,
                        flag: connect_flag(&e),
                        error: Some(e.to_string()),
                    };
                }
            }
        }
    };
    let index = conn.conn.index;
    retries.tried(index);
    r.record.endpoint = Some(conn.conn.addr);
    let up = &conn.conn.stream;
    let chunked = r.head.framing == Framing::Chunked;
    let counts = r.counts;
    let idle = clocks.idle;
    // The head, with what is held of the body, in one write.
    let mut first = buffers::take();
    first.extend_from_slice(out);
    let mut held_len = 0;
    for chunk in &body.held {
        frame_chunk(&mut first, chunk, chunked);
        held_len += chunk.len();
    }
    let _ = held_len;
    if body.rest.is_none() && chunked {
        end_chunked(&mut first, body.trailers.as_ref());
    }
    let started = Instant::now();
    let (res, first) = up.write_all(first).await;
    buffers::give(first);
    if res.is_err() {
        if reused {
            return Attempt::Stale;
        }
        cluster.record_outcome(core, index, Outcome::LocalOriginFailure);
        return Attempt::Failed {
            cause: Some(Cause::Reset),
            flag: ResponseFlag::UpstreamConnectionTermination,
            error: res.err().map(|e| e.to_string()),
        };
    }
    cluster.balancer.opened(core, index);
    let rest = body.rest.take();
    let send_rest = async {
        let Some(mut rest) = rest else {
            return Ok(None);
        };
        send_rest_h1(&mut rest, up, chunked, idle, counts)
            .await
            .map(Some)
    };
    let until = clocks.head_deadline(started);
    let outcome = {
        let exchange = respond_h1(r, leg, &conn, until, retries, reused, started);
        pin_mut!(send_rest, exchange);
        match select(send_rest, exchange).await {
            Either::Right(((done, reusable), send_rest)) => {
                // A response that ended before the request body leaves
                // the connection unusable.
                let body_done = futures_util::FutureExt::now_or_never(send_rest).is_some();
                Ok((done, reusable && body_done))
            }
            Either::Left((Ok(_), exchange)) => Ok(exchange.await),
            Either::Left((Err(Pump::Recv(e)), _)) => Err(Pump::Recv(e)),
            Either::Left((Err(_), exchange)) => {
                let (done, _) = exchange.await;
                Ok((done, false))
            }
        }
    };
    let (done, reusable) = match outcome {
        Ok(x) => x,
        Err(e) => (r.client_failed_sync(e), false),
    };
    cluster.balancer.closed(core, index);
    if reusable {
        h1pool::put(cluster, conn, &leg.target.pool);
    }
    done
}

/// Appends one body chunk, framed.
fn frame_chunk(out: &mut Vec<u8>, chunk: &[u8], chunked: bool) {
    if chunk.is_empty() {
        return;
    }
    if chunked {
        encode_chunk_header(chunk.len(), out);
    }
    out.extend_from_slice(chunk);
    if chunked {
        out.extend_from_slice(CHUNK_END);
    }
}

/// Appends the last chunk and the trailers.
fn end_chunked(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    let mut t = Vec::new();
    if let Some(map) = trailers {
        translate::trailers_to_h1(map, &mut t);
    }
    encode_last_chunk(&t, out);
}

/// Streams the rest of a client's body to an HTTP/1.1 upstream.
async fn send_rest_h1(
    rest: &mut RecvStream,
    up: &Stream,
    chunked: bool,
    idle: Duration,
    counts: &Counts,
) -> Result<(), Pump> {
    let mut out = buffers::take();
    loop {
        let next = match rt::timeout(idle, rest.data()).await {
            None => return Err(Pump::Idle),
            Some(n) => n,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Pump::Recv(Some(e)))?;
        let n = chunk.len();
        out.clear();
        frame_chunk(&mut out, &chunk, chunked);
        let (res, o) = up.write_all(out).await;
        out = o;
        res.map_err(|e| Pump::Io(e.to_string()))?;
        let _ = rest.flow_control().release_capacity(n);
        counts.received.set(counts.received.get() + n as u64);
    }
    let trailers = rest.trailers().await.map_err(|e| Pump::Recv(Some(e)))?;
    if chunked {
        out.clear();
        end_chunked(&mut out, trailers.as_ref());
        let (res, o) = up.write_all(out).await;
        out = o;
        res.map_err(|e| Pump::Io(e.to_string()))?;
    }
    buffers::give(out);
    Ok(())
}

/// Reads an HTTP/1.1 upstream's response and answers with it (or asks
/// for a retry). Returns how the attempt ended and whether the connection
/// may be pooled.
async fn respond_h1(
    r: &mut Req<'_>,
    leg: Leg<'_>,
    conn: &PooledConnection,
    until: (Instant, TimeoutKind),
    retries: &mut Retries<'_>,
    reused: bool,
    started: Instant,
) -> (Attempt, bool) {
    let core = r.conn.facts.core;
    let cluster = &*leg.target.cluster;
    let index = conn.conn.index;
    let up = &conn.conn.stream;
    let mut rbuf = buffers::take();
    let mut fields = Vec::with_capacity(16);
    let mut nominated = Vec::new();
    let method = r.head.method;
    let read = read_response_head(
        up,
        &mut rbuf,
        method,
        crate::codec::h1::Limits::default().max_head,
        &mut fields,
        &mut nominated,
    );
    let head = match wait_head(read, &mut r.respond, until).await {
        HeadWait::Head(Ok(h)) => h,
        HeadWait::Head(Err(HeadFailure::Closed { any, error })) => {
            buffers::give(rbuf);
            if reused && !any {
                return (Attempt::Stale, false);
            }
            cluster.record_outcome(core, index, Outcome::LocalOriginFailure);
            let attempt = Attempt::Failed {
                cause: Some(Cause::Reset),
                flag: ResponseFlag::UpstreamConnectionTermination,
                error: error.map(|e| e.to_string()),
            };
            return (attempt, false);
        }
        HeadWait::Head(Err(HeadFailure::Malformed(e))) => {
            buffers::give(rbuf);
            leg.target.stats.cores.get(core).bad_responses.inc();
            cluster.record_outcome(core, index, Outcome::LocalOriginFailure);
            let attempt = Attempt::Failed {
                cause: Some(Cause::Reset),
                flag: ResponseFlag::UpstreamProtocolError,
                error: Some(format!("malformed response head: {}", e.as_str())),
            };
            return (attempt, false);
        }
        HeadWait::Head(Err(HeadFailure::TimedOut(kind))) | HeadWait::TimedOut(kind) => {
            buffers::give(rbuf);
            return (r.timed_out(leg, kind).await, false);
        }
        HeadWait::ClientGone => {
            buffers::give(rbuf);
            return (r.client_gone(), false);
        }
    };
    retries.settle();
    if cluster.balancer.wants_latency() {
        cluster.balancer.observe(core, index, started.elapsed());
    }
    let status = head.status;
    leg.target.stats.cores.get(core).codes[crate::metrics::code_class(status)].inc();
    cluster.record_outcome(core, index, Outcome::of_status(status));
    let cause = Cause::Status(status);
    if retries.wanted(cause) {
        let retry_after = crate::exchange::retry_after_of(&head, &rbuf, &fields);
        if let Some(wait) = retries.grant(cause, retry_after, until.0.max(Instant::now())) {
            let whole = matches!(head.framing, Framing::None)
                || matches!(head.framing, Framing::Length(n) if rbuf.len() as u64 == head.len as u64 + n);
            buffers::give(rbuf);
            return (Attempt::Retry(wait), whole && head.keep_alive);
        }
    }
    let mut resp = match translate::h1_to_h2_response(
        &rbuf,
        &head,
        &fields,
        &nominated,
        &leg.route.response_headers,
    ) {
        Ok(resp) => resp,
        Err(_) => {
            buffers::give(rbuf);
            leg.target.stats.cores.get(core).bad_responses.inc();
            return (
                Attempt::Failed {
                    cause: None,
                    flag: ResponseFlag::UpstreamProtocolError,
                    error: Some("response head HTTP/2 cannot carry".to_owned()),
                },
                false,
            );
        }
    };
    r.add_attempts(resp.headers_mut());
    if r.grpc {
        r.record.grpc_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| grpc::parse_status(v.as_bytes()));
    }
    r.record.status = status;
    let ended = matches!(head.framing, Framing::None);
    let mut down = match r.respond.send_response(resp, ended) {
        Ok(s) => s,
        Err(_) => {
            buffers::give(rbuf);
            return (r.client_gone(), false);
        }
    };
    if ended {
        let reusable = head.keep_alive && rbuf.len() == head.len;
        buffers::give(rbuf);
        return (Attempt::Done, reusable);
    }
    let idle = leg_idle(r, leg);
    let pos = head.len;
    let result = body_h1_to_h2(up, &mut rbuf, pos, head.framing, &mut down, idle, r.counts).await;
    buffers::give(rbuf);
    match result {
        Ok((reusable, trailers)) => {
            if r.grpc && r.record.grpc_status.is_none() {
                r.record.grpc_status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| grpc::parse_status(v.as_bytes()));
            }
            (Attempt::Done, reusable && head.keep_alive)
        }
        Err(e) => {
            r.body_failed(e, false);
            (Attempt::Done, false)
        }
    }
}

/// Streams an HTTP/1.1 response body (`framing`; its first bytes at
/// `rbuf[pos..]`) to an HTTP/2 client, chunked trailers as trailers.
/// Returns whether the connection ended exactly with the body, and the
/// trailers.
async fn body_h1_to_h2(
    up: &Stream,
    rbuf: &mut Vec<u8>,
    mut pos: usize,
    framing: Framing,
    down: &mut SendStream<Bytes>,
    idle: Duration,
    counts: &Counts,
) -> Result<(bool, Option<HeaderMap>), Pump> {
    let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        if pos >= rbuf.len() {
            if framing == Framing::Length(0) || left == 0 {
                break;
            }
            rbuf.clear();
            pos = 0;
            if rbuf.capacity() < buffers::BODY_BUFFER {
                rbuf.reserve(buffers::BODY_BUFFER);
            }
            let b = std::mem::take(rbuf);
            let (res, b) = match rt::timeout(idle, up.read_more(b)).await {
                Some(x) => x,
                None => return Err(Pump::Idle),
            };
            *rbuf = b;
            match res {
                Ok(0) if framing == Framing::Close => {
                    send_chunk(down, Bytes::new(), true, idle).await?;
                    return Ok((false, None));
                }
                Ok(0) => return Err(Pump::Io("upstream closed mid-body".to_owned())),
                Ok(_) => {}
                Err(e) => return Err(Pump::Io(e.to_string())),
            }
        }
        match framing {
            Framing::Chunked => match decoder.decode(&rbuf[pos..]) {
                Ok((used, Some(Chunk::Data { start, end }))) => {
                    let data = Bytes::copy_from_slice(&rbuf[pos + start..pos + end]);
                    counts.sent.set(counts.sent.get() + data.len() as u64);
                    send_chunk(down, data, false, idle).await?;
                    pos += used;
                }
                Ok((used, Some(Chunk::Done))) => {
                    pos += used;
                    let trailers = translate::trailers_from_h1(decoder.trailers());
                    if trailers.is_empty() {
                        send_chunk(down, Bytes::new(), true, idle).await?;
                        return Ok((rbuf.len() == pos, None));
                    }
                    down.send_trailers(trailers.clone())
                        .map_err(|e| Pump::Send(Some(e)))?;
                    return Ok((rbuf.len() == pos, Some(trailers)));
                }
                Ok((used, None)) => pos += used,
                Err(e) => return Err(Pump::Io(format!("upstream chunked body: {e}"))),
            },
            _ => {
                let take = ((rbuf.len() - pos) as u64).min(left) as usize;
                let data = Bytes::copy_from_slice(&rbuf[pos..pos + take]);
                pos += take;
                left -= take as u64;
                counts.sent.set(counts.sent.get() + take as u64);
                let end = left == 0;
                send_chunk(down, data, end, idle).await?;
                if end {
                    return Ok((rbuf.len() == pos, None));
                }
            }
        }
    }
    send_chunk(down, Bytes::new(), true, idle).await?;
    Ok((rbuf.len() == pos, None))
}

impl Req<'_> {
    /// Answers with `flag`'s status; a gRPC request gets the gRPC error
    /// for it.
    async fn local(&mut self, flag: ResponseFlag, error: Option<String>) {
        self.record.flag = Some(flag);
        self.record.error = error;
        let status = flag.status();
        if self.grpc {
            let mut text = String::with_capacity(48);
            text.push_str(flag.text());
            text.push_str(" (");
            text.push_str(flag.as_str());
            text.push(')');
            self.grpc_error(grpc::for_flag(flag, status), &text, Some(flag));
            return;
        }
        let mut out = buffers::take();
        crate::local_reply::for_flag_after(&mut out, flag, false, self.record.attempts);
        self.record.status = status;
        self.send_h1(out).await;
    }

    /// A trailers-only gRPC error: HTTP 200, `grpc-status`, `grpc-message`.
    fn grpc_error(&mut self, code: u8, message: &str, flag: Option<ResponseFlag>) {
        let mut resp = http::Response::new(());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", http::HeaderValue::from(u16::from(code)));
        let mut encoded = Vec::with_capacity(message.len());
        grpc::encode_message(message, &mut encoded);
        if let Ok(v) = http::HeaderValue::from_bytes(&encoded) {
            h.insert("grpc-message", v);
        }
        if flag == Some(ResponseFlag::UpstreamOverflow) {
            h.insert(
                "x-ringmesh-overloaded",
                http::HeaderValue::from_static("true"),
            );
        }
        self.add_attempts(h);
        self.record.status = 200;
        self.record.grpc_status = Some(code);
        let _ = self.respond.send_response(resp, true);
    }

    /// Says how many attempts the request took, when more than one.
    fn add_attempts(&self, h: &mut HeaderMap) {
        if self.record.attempts > 1 {
            h.insert(
                "x-ringmesh-attempts",
                http::HeaderValue::from(self.record.attempts),
            );
        }
    }

    /// Sends an answer the proxy wrote as an HTTP/1.1 response.
    async fn send_h1(&mut self, out: Vec<u8>) {
        let mut fields = Vec::with_capacity(8);
        let mut nominated = Vec::new();
        let parsed = h1::parse_response(&out, Method::Get, out.len(), &mut fields, &mut nominated);
        let Ok(Some(head)) = parsed else {
            buffers::give(out);
            self.respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        };
        let resp =
            translate::h1_to_h2_response(&out, &head, &fields, &nominated, &HeaderOps::EMPTY);
        let body = &out[head.len..];
        let no_body = body.is_empty() || self.head.method == Method::Head;
        match resp {
            Ok(mut resp) => {
                resp.headers_mut().remove(http::header::CONTENT_LENGTH);
                if !no_body {
                    resp.headers_mut().insert(
                        http::header::CONTENT_LENGTH,
                        http::HeaderValue::from(body.len()),
                    );
                }
                if let Ok(mut s) = self.respond.send_response(resp, no_body) {
                    if !no_body {
                        self.counts
                            .sent
                            .set(self.counts.sent.get() + body.len() as u64);
                        let _ = s.send_data(Bytes::copy_from_slice(body), true);
                    }
                }
            }
            Err(_) => self.respond.send_reset(h2::Reason::INTERNAL_ERROR),
        }
        buffers::give(out);
    }

    /// Answers a request over a rate limit: 429 `RL` (gRPC: UNAVAILABLE).
    async fn limited(&mut self, limit: &crate::ratelimit::RateLimit, wait: Duration) {
        limit
            .state
            .limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.record.flag = Some(ResponseFlag::RateLimited);
        if self.grpc {
            self.grpc_error(grpc::from_http(429), "rate limited (RL)", None);
            return;
        }
        let mut out = buffers::take();
        crate::ratelimit::write_limited(&mut out, limit, wait, false);
        self.record.status = 429;
        self.send_h1(out).await;
    }

    /// Answers with the fault filter's status (`FI`).
    async fn fault_abort(&mut self, status: u16, grpc_status: Option<u8>) {
        let flag = ResponseFlag::FaultInjected;
        self.record.flag = Some(flag);
        if self.grpc {
            let code = grpc_status.unwrap_or_else(|| grpc::from_http(status));
            self.grpc_error(code, "fault filter abort (FI)", None);
            return;
        }
        let mut out = buffers::take();
        crate::local_reply::write(&mut out, status, "fault filter abort", flag.as_str(), false);
        self.record.status = status;
        self.send_h1(out).await;
    }

    /// A timeout expired before the response head: counted; a per-try
    /// timeout may be retried by the caller, the route timeout answers 504
    /// (gRPC: DEADLINE_EXCEEDED).
    async fn timed_out(&mut self, leg: Leg<'_>, kind: TimeoutKind) -> Attempt {
        leg.stats.timed_out(self.conn.facts.core, kind);
        let cause = (kind == TimeoutKind::PerTry).then_some(Cause::PerTryTimeout);
        Attempt::Failed {
            cause,
            flag: ResponseFlag::UpstreamTimeout,
            error: None,
        }
    }

    /// The client reset the stream while the proxy waited.
    fn client_gone(&mut self) -> Attempt {
        self.reset = true;
        self.record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
        Attempt::Done
    }

    /// The client's body broke off (reset, idle, protocol error).
    fn client_failed_sync(&mut self, e: Pump) -> Attempt {
        match e {
            Pump::Idle => {
                self.record.flag = Some(ResponseFlag::StreamIdleTimeout);
                self.respond.send_reset(h2::Reason::CANCEL);
            }
            _ => {
                self.reset = true;
                self.record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
            }
        }
        Attempt::Done
    }

    /// The client's body broke off before anything was sent upstream.
    async fn client_failed(&mut self, e: Pump) {
        match e {
            Pump::Idle => self.local(ResponseFlag::StreamIdleTimeout, None).await,
            _ => {
                self.reset = true;
                self.record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
            }
        }
    }

    /// A response body broke off after its head was sent: the client's
    /// stream is reset (it must not take a cut body for a whole one).
    fn body_failed(&mut self, e: Pump, _h2: bool) {
        match e {
            Pump::Send(_) => {
                self.reset = true;
                self.record.flag = Some(ResponseFlag::DownstreamConnectionTermination);
            }
            other => {
                self.record.flag = Some(ResponseFlag::UpstreamConnectionTermination);
                self.record.error = Some(other.to_string());
                self.respond.send_reset(h2::Reason::INTERNAL_ERROR);
            }
        }
    }
}

/// A small text answer outside any route (CONNECT, a bad head).
fn send_plain(respond: &mut SendResponse<Bytes>, status: u16, text: &'static str) {
    let mut resp = http::Response::new(());
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    if let Ok(mut s) = respond.send_response(resp, false) {
        let _ = s.send_data(Bytes::from_static(text.as_bytes()), true);
    }
}
