//! One downstream HTTP/2 connection, top to bottom:
//!
//! 1. the h2 handshake (the client's preface and SETTINGS) within
//!    `request_headers_timeout`, with the listener's limits: concurrent
//!    streams, flow-control windows, the header list size (the listener's
//!    `max_request_headers_bytes`, not h2's 16 MiB default);
//! 2. each stream accepted is a request served in its own task on this
//!    worker ([`super::request::serve`]), routed on its own;
//! 3. the connection ends when the client closes it, when it breaks the
//!    protocol (GOAWAY from h2, counted `h2_protocol_error`: CONTINUATION
//!    floods and oversized header lists land here), when it resets its
//!    streams faster than it lets them finish (Rapid Reset: GOAWAY
//!    ENHANCE_YOUR_CALM, counted `h2_rapid_reset`), or gracefully (GOAWAY,
//!    streams in flight finish) on drain, after the listener's idle timeout
//!    with no stream open, after `max_connection_duration`, or when a
//!    reload makes the listener stop speaking HTTP.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{Either, select};
use futures_util::pin_mut;
use ringmesh_core::protocol::{ByteCounts, ConnectionEnd, ConnectionFacts, ListenerWatch};
use ringmesh_core::{CloseReason, Stream, rt};

use super::io::H2Io;
use crate::metrics::Rejection;
use crate::server::http_of;

/// The client's connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream reset by the client this soon after it opened counts as
/// premature (Envoy's `premature_reset_min_stream_lifetime_seconds`).
pub(crate) const PREMATURE: Duration = Duration::from_secs(1);

/// How long a closing connection waits for its GOAWAY to be flushed and
/// its last streams to finish after an abrupt shutdown.
const ABRUPT_LINGER: Duration = Duration::from_secs(1);

/// What the streams of one connection share.
pub(crate) struct ConnCtx {
    pub facts: ConnectionFacts,
    pub watch: ListenerWatch,
    pub peer_ip: String,
    pub hash_key: u64,
    mesh_source: Cell<Option<u16>>,
    /// Streams accepted.
    streams: Cell<u64>,
    /// Streams the client reset within [`PREMATURE`] of opening them.
    premature: Cell<u64>,
    /// Streams open now.
    open: Cell<u64>,
    /// When the last stream closed (idle timeout).
    idle_since: Cell<Instant>,
}

impl ConnCtx {
    /// The client's interned identity in `mesh`.
    pub fn mesh_source(&self, mesh: &crate::mesh::MeshStats) -> u16 {
        if let Some(i) = self.mesh_source.get() {
            return i;
        }
        let i = mesh.sources.intern(self.facts.identity.as_deref());
        self.mesh_source.set(Some(i));
        i
    }

    /// A stream ended; `reset_early` when the client reset it within
    /// [`PREMATURE`] of opening it.
    pub fn stream_ended(&self, reset_early: bool) {
        self.open.set(self.open.get().saturating_sub(1));
        if self.open.get() == 0 {
            self.idle_since.set(Instant::now());
        }
        if reset_early {
            self.premature.set(self.premature.get() + 1);
        }
    }

    /// Whether the client resets streams faster than it lets them finish.
    fn rapid_reset(&self, threshold: u32) -> bool {
        let premature = self.premature.get();
        premature >= u64::from(threshold) && premature * 2 >= self.streams.get()
    }
}

/// Serves an HTTP/2 connection to its end; `read` holds bytes already read
/// (the preface, when it was sniffed on a plain listener).
pub(crate) async fn serve(
    stream: Stream,
    facts: ConnectionFacts,
    watch: ListenerWatch,
    bytes: Rc<ByteCounts>,
    read: Vec<u8>,
) -> ConnectionEnd {
    let listener = watch.current();
    let Some(http) = http_of(&listener) else {
        return end(CloseReason::Completed, None);
    };
    let settings = http.settings.clone();
    let h2s = settings.http2;
    let io = H2Io::new(Rc::new(stream), read, Some(bytes.clone()));
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(h2s.max_concurrent_streams)
        .initial_window_size(h2s.initial_stream_window_size)
        .initial_connection_window_size(h2s.initial_connection_window_size)
        .max_header_list_size(settings.limits.max_head as u32)
        // h2's guards, kept at their defaults (REFERENCE-L7 §1.5): streams
        // reset before they are accepted, and streams the proxy had to
        // reset for the client's errors.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024))
        .handshake::<_, Bytes>(io);
    let mut connection = match rt::timeout(settings.request_headers_timeout, handshake).await {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            http.stats.reject(facts.core, Rejection::Http2Protocol);
            return end(CloseReason::DownstreamError, Some(&e.to_string()));
        }
        None => return end(CloseReason::Completed, Some("HTTP/2 preface timed out")),
    };
    let opened = Instant::now();
    let ctx = Rc::new(ConnCtx {
        peer_ip: facts.peer.ip().to_string(),
        hash_key: ringmesh_core::balance::client_key(facts.peer),
        facts,
        watch,
        mesh_source: Cell::new(None),
        streams: Cell::new(0),
        premature: Cell::new(0),
        open: Cell::new(0),
        idle_since: Cell::new(opened),
    });
    drop(listener);
    let mut going_away = false;
    let mut error = None;
    loop {
        let step = {
            let wait = next_event(
                &ctx,
                &settings,
                h2s.max_connection_duration,
                opened,
                going_away,
            );
            let accept = connection.accept();
            pin_mut!(wait, accept);
            match select(accept, wait).await {
                Either::Left((Some(Ok(stream)), _)) => Step::Stream(Box::new(stream)),
                Either::Left((Some(Err(e)), _)) => Step::Failed(e),
                Either::Left((None, _)) => Step::Closed,
                Either::Right((event, _)) => Step::Event(event),
            }
        };
        match step {
            Step::Stream(stream) => {
                let (req, respond) = *stream;
                ctx.streams.set(ctx.streams.get() + 1);
                ctx.open.set(ctx.open.get() + 1);
                rt::spawn(super::request::serve(ctx.clone(), req, respond)).detach();
                if ctx.rapid_reset(h2s.max_premature_resets) {
                    reject(&ctx, Rejection::RapidReset);
                    connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    linger(&mut connection).await;
                    return end(CloseReason::DownstreamError, Some("rapid reset"));
                }
            }
            Step::Failed(e) => {
                // A client gone, or one that broke the protocol (h2 sent
                // GOAWAY with the error).
                if !e.is_io() && !e.is_remote() && e.reason() != Some(h2::Reason::NO_ERROR) {
                    reject(&ctx, Rejection::Http2Protocol);
                    tracing::info!(
                        target: "ringmesh::access",
                        peer = %ctx.facts.peer,
                        error = %e,
                        "HTTP/2 connection closed for a protocol error"
                    );
                }
                error = Some(e.to_string());
                break;
            }
            Step::Closed => break,
            Step::Event(Event::GoAway) => {
                if !going_away {
                    going_away = true;
                    connection.graceful_shutdown();
                }
            }
            Step::Event(Event::Recheck) => {}
        }
    }
    match error {
        Some(e) => end(CloseReason::DownstreamError, Some(&e)),
        None => end(CloseReason::Completed, None),
    }
}

/// What one wait on the connection gave.
enum Step {
    /// A stream (boxed: it is much larger than the other variants).
    Stream(
        Box<(
            http::Request<h2::RecvStream>,
            h2::server::SendResponse<Bytes>,
        )>,
    ),
    Failed(h2::Error),
    Closed,
    Event(Event),
}

/// What ends a wait for the next stream besides a stream.
enum Event {
    /// Close gracefully: drain, idle, age, or the listener stopped being
    /// HTTP.
    GoAway,
    /// Look again (a timer fired early, e.g. streams were open at the idle
    /// deadline).
    Recheck,
}

async fn next_event(
    ctx: &ConnCtx,
    settings: &crate::config::HttpSettings,
    max_age: Option<Duration>,
    opened: Instant,
    going_away: bool,
) -> Event {
    if going_away {
        return std::future::pending().await;
    }
    if ringmesh_core::drain::is_draining() || http_now(ctx).is_none() {
        return Event::GoAway;
    }
    let now = Instant::now();
    let idle_at = if ctx.open.get() == 0 {
        ctx.idle_since.get() + settings.idle_timeout
    } else {
        // Streams are open: look again later.
        now + settings.idle_timeout
    };
    let age_at = max_age.map(|a| opened + a);
    let deadline = age_at
        .map_or(idle_at, |a| a.min(idle_at))
        .min(now + Duration::from_secs(5));
    let drained = ringmesh_core::drain::wait();
    let timer = rt::sleep_until(deadline);
    pin_mut!(drained, timer);
    match select(drained, timer).await {
        Either::Left(_) => Event::GoAway,
        Either::Right(_) => {
            let now = Instant::now();
            let idle = ctx.open.get() == 0 && now >= ctx.idle_since.get() + settings.idle_timeout;
            let old = age_at.is_some_and(|a| now >= a);
            if idle || old {
                Event::GoAway
            } else {
                Event::Recheck
            }
        }
    }
}

/// The listener's HTTP config now, if it still speaks HTTP.
fn http_now(ctx: &ConnCtx) -> Option<ringmesh_core::protocol::ListenerRef> {
    let l = ctx.watch.current();
    http_of(&l).is_some().then_some(l)
}

/// Counts and logs a connection refused for `why`.
fn reject(ctx: &ConnCtx, why: Rejection) {
    let listener = ctx.watch.current();
    let Some(http) = http_of(&listener) else {
        return;
    };
    http.stats.reject(ctx.facts.core, why);
    tracing::info!(
        target: "ringmesh::access",
        listener = %http.name,
        peer = %ctx.facts.peer,
        reason = why.as_str(),
        streams = ctx.streams.get(),
        premature_resets = ctx.premature.get(),
        "HTTP/2 connection refused"
    );
}

/// Lets an abruptly shut connection send its GOAWAY (and reset its
/// streams) before it is dropped.
async fn linger(connection: &mut h2::server::Connection<H2Io, Bytes>) {
    let closed = std::future::poll_fn(|cx| connection.poll_closed(cx));
    let _ = rt::timeout(ABRUPT_LINGER, closed).await;
}

fn end(reason: CloseReason, error: Option<&str>) -> ConnectionEnd {
    ConnectionEnd {
        reason,
        error: error.map(str::to_owned),
    }
}
