//! The life of one proxied connection, top to bottom:
//!
//! 1. [`admit`]: count it, enforce the listener's `max_connections`;
//! 2. [`serve`]: on a capturing listener recover where the client was going
//!    ([`recover_destination`], [`crate::capture`]); on a listener taking
//!    PROXY protocol read the client's address from the header
//!    ([`receive_proxy_header`]); then connect upstream
//!    ([`crate::connect`]), then copy both ways ([`crate::forward`]) until
//!    both sides are done, one fails, or it idles;
//! 3. [`ConnectionRecord::finish`]: emit its metrics and access-log line,
//!    exactly once.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::capture::{self, NotRedirected};
use crate::connect::{ConnectError, connect_upstream};
use crate::forward::{DirectionCounters, Duplex, ForwardOutcome, proxy_to_stream};
use crate::health::{Outcome, outlier};
use crate::listener::CurrentCtx;
use crate::metrics::CloseReason;
use crate::protocol::{ByteCounts, Connection, ConnectionFacts, ListenerWatch, ProtocolHandler};
use crate::proxy_protocol::{self, Decoded, Outgoing, ProxyProtocolError};
use crate::runtime::TcpStream;
use crate::runtime::{self, BufResult};
use crate::snapshot::Cluster;
use crate::snapshot::ListenerConfig;
use crate::stream::Stream;
use crate::tls::client_hello::{self, ClientHello, MAX_CLIENT_HELLO};
use crate::tls::ktls::{self, OffloadError};
use crate::tls::stream::TlsStream;
use crate::tls::{HandshakeError, ServerTls};

/// What a worker knows about one of its listeners: the config new
/// connections use, and the worker's index for per-core stats.
pub(crate) struct ListenerCtx {
    pub config: std::sync::Arc<ListenerConfig>,
    pub core: usize,
}

/// Holds one slot of the listener's `active` count (and of its client's
/// count under `max_connections_per_client`); released on drop, so the
/// counts stay right whichever way the connection task ends. Keeps the
/// worker-local `Rc`, not an `Arc`: no shared refcount moves per connection.
pub(crate) struct Admitted {
    ctx: Rc<ListenerCtx>,
    client: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let stats = &self.ctx.config.stats;
        stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.client {
            stats.per_client.release(ip);
        }
    }
}

/// Counts an accepted connection and applies `max_connections` and
/// `max_connections_per_client`. `None` means the connection must be
/// closed at once (it has been counted).
pub(crate) fn admit(ctx: &Rc<ListenerCtx>, peer: SocketAddr) -> Option<Admitted> {
    let stats = &ctx.config.stats;
    let core = stats.cores.get(ctx.core);
    core.accepted.inc();
    let before = stats.active.fetch_add(1, Ordering::Relaxed);
    let mut admitted = Admitted {
        ctx: ctx.clone(),
        client: None,
    };
    if ctx.config.max_connections.is_some_and(|max| before >= max) {
        core.rejected_max_connections.inc();
        return None;
    }
    if let Some(limit) = ctx.config.max_connections_per_client {
        if !stats.per_client.try_acquire(peer.ip(), limit) {
            core.rejected_per_client.inc();
            return None;
        }
        admitted.client = Some(peer.ip());
    }
    Some(admitted)
}

/// Serves one accepted, admitted connection to completion: recover its
/// original destination when the listener captures (its socket is bound to
/// `bound`), terminate TLS when the listener has it, then proxy (or hand
/// the connection to the listener's protocol handler), then record the
/// outcome once.
pub(crate) async fn serve(
    downstream: TcpStream,
    peer: SocketAddr,
    bound: Option<SocketAddr>,
    ctx: Rc<ListenerCtx>,
    admitted: Admitted,
    current: CurrentCtx,
) {
    let mut record = ConnectionRecord::new(peer);
    if recover_destination(&downstream, bound, &ctx, &mut record)
        && receive_proxy_header(&downstream, &ctx, &mut record).await
    {
        note_destination(&downstream, bound, &ctx, &mut record);
        serve_recovered(downstream, &ctx, current, &mut record).await;
    }
    record.finish(&ctx);
    drop(admitted);
}

/// On a capturing listener (`original_destination`), reads where the
/// client was going before iptables redirected it here, once, into the
/// record (and so into the connection's facts). `false`: the connection
/// was not redirected (made to the proxy's port directly), so forwarding it
/// would only lead back into the proxy: it is closed as `not_redirected`.
fn recover_destination(
    downstream: &TcpStream,
    bound: Option<SocketAddr>,
    ctx: &ListenerCtx,
    record: &mut ConnectionRecord,
) -> bool {
    if !ctx.config.original_destination {
        return true;
    }
    match capture::original_destination(downstream, record.peer, bound) {
        Ok(dst) => {
            record.original_destination = Some(dst);
            true
        }
        Err(e) => {
            tracing::debug!(listener = %ctx.config.name, peer = %record.peer, error = %e, "capturing listener: connection closed, it was not redirected here by iptables");
            record.reason = CloseReason::NotRedirected;
            record.error = Some(ErrorText::NotRedirected(e));
            false
        }
    }
}

/// On a listener taking PROXY protocol, reads the header (v1 or v2) the
/// load balancer in front sent before the client's bytes, and makes the
/// client it names this connection's peer. The header is peeked until
/// whole, then consumed exactly: the client's own bytes stay in the socket
/// for TLS or the protocol. `false`: close now (malformed; missing or late
/// when `required`; counted as `proxy_protocol`). An `optional` listener
/// serves a connection whose first bytes cannot start a header, or that
/// sends nothing within the timeout (a server-speaks-first protocol), as it
/// is.
async fn receive_proxy_header(
    downstream: &TcpStream,
    ctx: &ListenerCtx,
    record: &mut ConnectionRecord,
) -> bool {
    let Some(accept) = ctx.config.proxy_protocol else {
        return true;
    };
    let deadline = Instant::now() + accept.timeout;
    // Room for any v1 line and a v2 header with its addresses and usual
    // TLVs; grown to the v2 limit only for a header that needs it.
    let mut buf = Vec::with_capacity(256);
    let mut backoff = Duration::from_millis(1);
    let mut seen = 0;
    let broken = |record: &mut ConnectionRecord, e: io::Error| {
        record.reason = CloseReason::DownstreamError;
        record.error = Some(ErrorText::Io(e));
        false
    };
    let failed = |record: &mut ConnectionRecord, e: String| {
        tracing::debug!(listener = %ctx.config.name, peer = %record.peer, error = %e, "PROXY protocol: connection closed");
        record.reason = CloseReason::ProxyProtocol;
        record.error = Some(ErrorText::Text(e));
        false
    };
    loop {
        buf.clear();
        let peeked = match deadline.checked_duration_since(Instant::now()) {
            Some(left) => runtime::timeout(left, runtime::peek(downstream, buf)).await,
            None => None,
        };
        let Some(BufResult(res, b)) = peeked else {
            if !accept.required && seen == 0 {
                return true;
            }
            return failed(
                record,
                format!(
                    "no PROXY protocol header within {:?} ({seen} byte(s) received)",
                    accept.timeout
                ),
            );
        };
        buf = b;
        let n = match res {
            Ok(0) => return failed(record, "closed before a PROXY protocol header".into()),
            Ok(n) => n,
            Err(e) => return broken(record, e),
        };
        seen = n;
        match proxy_protocol::decode(&buf[..n]) {
            Ok(Decoded::Complete { header, len }) => {
                if let Err(e) = runtime::read_exact(downstream, len).await {
                    return broken(record, e);
                }
                // LOCAL (the balancer's own health check) or an unknown
                // family names no client: the TCP peer stays.
                if let Some((source, destination)) = header.addresses {
                    record.proxied = Some(Box::new(Proxied {
                        by: Some(record.peer),
                        destination,
                    }));
                    record.peer = source;
                }
                return true;
            }
            Ok(Decoded::Incomplete)
                if n == buf.capacity() && buf.capacity() < proxy_protocol::MAX_HEADER =>
            {
                buf.reserve_exact(proxy_protocol::MAX_HEADER - buf.len());
            }
            Ok(Decoded::Incomplete) => {
                // A peek returns at once while part of the header is in:
                // wait a little for the rest instead of spinning.
                runtime::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) if !accept.required && matches!(e, ProxyProtocolError::NotProxy) => return true,
            Err(e) => return failed(record, format!("PROXY protocol: {e}")),
        }
    }
}

/// When some cluster sends PROXY protocol headers, notes the address this
/// connection's client was connecting to (unless a received header named
/// it): the original destination of a captured connection, else the local
/// address (a wildcard bind's resolved with one `getsockname`). Nothing is
/// noted, or paid, otherwise.
fn note_destination(
    downstream: &TcpStream,
    bound: Option<SocketAddr>,
    ctx: &ListenerCtx,
    record: &mut ConnectionRecord,
) {
    if !ctx.config.resolve_local_address || record.proxied.is_some() {
        return;
    }
    let destination = record.original_destination.unwrap_or_else(|| {
        let bound = bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        crate::protocol::local_address(bound, std::os::fd::AsRawFd::as_raw_fd(downstream))
    });
    record.proxied = Some(Box::new(Proxied {
        by: None,
        destination,
    }));
}

/// Serves a connection whose destination is known: TLS, then proxy or
/// hand over.
async fn serve_recovered(
    downstream: TcpStream,
    ctx: &ListenerCtx,
    current: CurrentCtx,
    record: &mut ConnectionRecord,
) {
    // TCP_NODELAY is inherited from the listening socket (bind.rs).
    match &ctx.config.tls {
        None if !ctx.config.sni_routes.is_empty() => {
            // Passthrough: route by the ClientHello, leave it in the socket.
            let sni = Box::pin(peek_server_name(&downstream)).await;
            let cluster = ctx.config.cluster_for(sni.as_deref());
            proxy_to(&downstream, cluster, ctx, record).await;
            record.tls = Some(("passthrough", sni));
        }
        None => {
            if first_byte(&downstream, ctx, record).await {
                match &ctx.config.protocol {
                    Some(handler) => {
                        hand_over(Stream::Plain(downstream), handler, ctx, current, record).await
                    }
                    None => proxy(&downstream, ctx, record).await,
                }
            }
        }
        // Boxed: the task's size is that of its largest branch, and TLS
        // state (handshake, session, forwarding over it) is several KiB
        // that a plain connection would otherwise carry for its whole life.
        Some(tls) => Box::pin(terminate(downstream, tls, ctx, current, record)).await,
    }
}

/// Terminates the client's TLS, then proxies the plaintext (or hands it to
/// the listener's protocol handler).
async fn terminate(
    downstream: TcpStream,
    tls: &ServerTls,
    ctx: &ListenerCtx,
    current: CurrentCtx,
    record: &mut ConnectionRecord,
) {
    let stream = match handshake(downstream, tls).await {
        Ok(stream) => stream,
        Err(e) => {
            record.reason = CloseReason::TlsError;
            record.error = Some(ErrorText::Handshake(e));
            return;
        }
    };
    record.identity = stream.peer_identity();
    record.tls = Some((stream.version(), stream.sni()));
    record.alpn = stream.alpn();
    let stream = data_path(stream, tls, record);
    let path = usize::from(record.tls_path == TlsPath::Kernel);
    ctx.config.stats.cores.get(ctx.core).tls_sessions[path].inc();
    match stream {
        Ok(stream) => match &ctx.config.protocol {
            Some(handler) => hand_over(stream, handler, ctx, current, record).await,
            None => proxy(&stream, ctx, record).await,
        },
        Err(e) => {
            record.reason = CloseReason::TlsError;
            record.error = Some(ErrorText::Io(e));
        }
    }
}

/// Waits, when the listener has a `first_byte_timeout`, until the client
/// has sent something, so that a client that never speaks holds no
/// upstream connection or breaker slot. The byte is peeked, not read, so
/// nothing is consumed if the wait times out. `false`: close now (timeout,
/// or the client left without a byte).
async fn first_byte(
    downstream: &TcpStream,
    ctx: &ListenerCtx,
    record: &mut ConnectionRecord,
) -> bool {
    let Some(limit) = ctx.config.first_byte_timeout else {
        return true;
    };
    match runtime::timeout(limit, runtime::peek(downstream, Vec::with_capacity(1))).await {
        Some(BufResult(Ok(n), _)) => n > 0,
        Some(BufResult(Err(e), _)) => {
            record.reason = CloseReason::DownstreamError;
            record.error = Some(ErrorText::Io(e));
            false
        }
        None => {
            record.reason = CloseReason::FirstByteTimeout;
            false
        }
    }
}

/// Hands the connection to the listener's protocol handler (HTTP) and
/// records how it ended. The handler logs its own requests, so the
/// connection itself is not logged.
async fn hand_over(
    stream: Stream,
    handler: &std::sync::Arc<dyn ProtocolHandler>,
    ctx: &ListenerCtx,
    current: CurrentCtx,
    record: &mut ConnectionRecord,
) {
    let bytes = Rc::new(ByteCounts::default());
    let connection = Connection {
        stream,
        facts: ConnectionFacts {
            peer: record.peer,
            identity: record.identity.clone(),
            sni: record.tls.as_ref().and_then(|t| t.1.clone()),
            alpn: record.alpn.take(),
            tls: record.tls.as_ref().map(|t| t.0),
            core: ctx.core,
            original_destination: record.original_destination,
            destination: record.proxied.as_ref().map(|p| p.destination),
        },
        listener: ListenerWatch(current),
        bytes: bytes.clone(),
    };
    let end = handler.serve(connection).await;
    record.handed_over = true;
    record.reason = end.reason;
    record.error = end.error.map(ErrorText::Text);
    record.bytes_received.set(bytes.received.get());
    record.bytes_sent.set(bytes.sent.get());
    let lc = ctx.config.stats.cores.get(ctx.core);
    lc.bytes_received.add(bytes.received.get());
    lc.bytes_sent.add(bytes.sent.get());
}

/// Terminates the client's TLS.
async fn handshake(downstream: TcpStream, tls: &ServerTls) -> Result<TlsStream, HandshakeError> {
    let session = rustls::ServerConnection::new(tls.config.clone()).map_err(HandshakeError::Tls)?;
    TlsStream::handshake(
        downstream,
        rustls::Connection::Server(session),
        tls.handshake_timeout,
        tls.ktls,
    )
    .await
}

/// Where a terminated session's records are processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsPath {
    Userspace,
    Kernel,
}

/// Hands the session to kernel TLS when the listener may and the session
/// allows it; otherwise keeps it in userspace. `Err` when the offload
/// failed after the session was consumed: the connection cannot go on.
fn data_path(
    stream: TlsStream,
    tls: &ServerTls,
    record: &mut ConnectionRecord,
) -> io::Result<Stream> {
    if !tls.ktls {
        return Ok(Stream::Tls(Box::new(stream)));
    }
    match ktls::offload(stream) {
        Ok(k) => {
            record.tls_path = TlsPath::Kernel;
            Ok(Stream::Ktls(k))
        }
        Err(OffloadError::Declined(stream, reason)) => {
            tracing::debug!(peer = %record.peer, reason, "kTLS: session stays in userspace");
            Ok(Stream::Tls(stream))
        }
        Err(OffloadError::Fatal(e)) => Err(e),
    }
}

/// Time a passthrough client has to send its ClientHello.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server name of the ClientHello waiting in `stream`, without
/// consuming it; `None` when there is none (no SNI, not TLS, timeout).
async fn peek_server_name(stream: &TcpStream) -> Option<String> {
    let deadline = Instant::now() + CLIENT_HELLO_TIMEOUT;
    let mut buf = Vec::with_capacity(MAX_CLIENT_HELLO);
    let mut backoff = Duration::from_millis(1);
    loop {
        buf.clear();
        let remaining = deadline.checked_duration_since(Instant::now())?;
        let BufResult(res, b) = runtime::timeout(remaining, runtime::peek(stream, buf)).await?;
        buf = b;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(n) => match client_hello::parse(&buf[..n]) {
                ClientHello::Parsed(name) => return name,
                ClientHello::NotTls(_) => return None,
                // Part of the hello has arrived: a peek returns at once, so
                // wait a little for the rest instead of spinning.
                ClientHello::Incomplete(_) => {
                    runtime::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
            },
        }
    }
}

/// Connects to the listener's cluster and copies both ways.
async fn proxy(downstream: &impl Duplex, ctx: &ListenerCtx, record: &mut ConnectionRecord) {
    proxy_to(downstream, &ctx.config.cluster, ctx, record).await
}

/// Connects to `cluster` and copies both ways.
async fn proxy_to(
    downstream: &impl Duplex,
    cluster: &Cluster,
    ctx: &ListenerCtx,
    record: &mut ConnectionRecord,
) {
    // Circuit breaker: refuse at once when the cluster is at its limit.
    let Some(_open) = BreakerSlot::acquire(&cluster.stats.open, cluster.max_connections) else {
        cluster.stats.cores.get(ctx.core).overflow.inc();
        record.reason = CloseReason::UpstreamOverflow;
        return;
    };
    if let Some(o) = &ctx.config.observer {
        record.observed = Some(o.opened(ctx.core, record.identity.as_deref()));
    }
    proxy_to_admitted(downstream, cluster, ctx, record).await;
}

/// One unit of a cluster-wide breaker count, released on drop (however the
/// connection task ends). The count is one shared atomic per cluster,
/// touched once per connection, never per read.
struct BreakerSlot<'a>(&'a AtomicU64);

impl<'a> BreakerSlot<'a> {
    /// Takes a slot unless `count` has reached `limit`.
    fn acquire(count: &'a AtomicU64, limit: u64) -> Option<Self> {
        if count.fetch_add(1, Ordering::Relaxed) >= limit {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(BreakerSlot(count))
    }
}

impl Drop for BreakerSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects to `cluster` (the breaker has admitted us) and copies both ways.
async fn proxy_to_admitted(
    downstream: &impl Duplex,
    cluster: &Cluster,
    ctx: &ListenerCtx,
    record: &mut ConnectionRecord,
) {
    let config = &ctx.config;
    // Pending breaker: connects in progress, so a slow-to-accept cluster
    // cannot pile up unbounded attempts.
    let Some(pending) = BreakerSlot::acquire(&cluster.stats.pending, cluster.max_pending) else {
        cluster.stats.cores.get(ctx.core).pending_overflow.inc();
        record.reason = CloseReason::UpstreamOverflow;
        return;
    };
    let origin = cluster
        .send_proxy_protocol
        .and_then(|_| record.proxy_origin());
    // Boxed: the connect state (endpoint attempts, TLS origination) is
    // several KiB and dead once connected; inline it would be carried by
    // every connection task for its whole life, idle ones included.
    let connected = Box::pin(connect_upstream(
        cluster,
        ctx.core,
        crate::balance::client_key(record.peer),
        record.original_destination,
        origin.as_ref(),
    ))
    .await;
    drop(pending);
    match connected {
        Ok(upstream) => {
            record.endpoint = Some(upstream.addr);
            let lc = config.stats.cores.get(ctx.core);
            let cc = cluster.stats.cores.get(ctx.core);
            cc.active.add(1);
            // A configured endpoint has per-endpoint state to keep; an
            // original destination (`original_destination` clusters) has
            // none: it is no endpoint of the cluster.
            let endpoint = cluster.endpoints.get(upstream.index).map(|e| &e.health);
            if let Some(endpoint) = endpoint {
                cluster.balancer.opened(ctx.core, upstream.index);
                endpoint.cores.get(ctx.core).active.add(1);
            }
            // Peak EWMA's sample: connect start to the endpoint's first byte.
            let first_data = || {
                cluster
                    .balancer
                    .observe(ctx.core, upstream.index, upstream.started.elapsed())
            };
            let on_first_data: Option<&dyn Fn()> =
                (endpoint.is_some() && cluster.balancer.wants_latency()).then_some(&first_data);
            let ForwardOutcome {
                reason,
                error,
                spliced,
            } = proxy_to_stream(
                downstream,
                &upstream.stream,
                config.idle_timeout,
                config.zero_copy,
                DirectionCounters {
                    connection: &record.bytes_received,
                    listener: &lc.bytes_received,
                    cluster: &cc.bytes_sent,
                    on_first_data: None,
                },
                DirectionCounters {
                    connection: &record.bytes_sent,
                    listener: &lc.bytes_sent,
                    cluster: &cc.bytes_received,
                    on_first_data,
                },
            )
            .await;
            cc.active.add(-1);
            if let Some(endpoint) = endpoint {
                cluster.balancer.closed(ctx.core, upstream.index);
                endpoint.cores.get(ctx.core).active.add(-1);
                let outcome = match reason {
                    CloseReason::UpstreamError => Outcome::LocalOriginFailure,
                    _ => Outcome::Success,
                };
                outlier::record(
                    &cluster.health,
                    endpoint,
                    cluster.outlier.as_ref(),
                    ctx.core,
                    outcome,
                );
            }
            lc.forward_paths[usize::from(spliced)].inc();
            record.forward_path = Some(if spliced { "splice" } else { "buffered" });
            record.reason = reason;
            record.error = error.map(ErrorText::Io);
        }
        Err(e) => {
            record.reason = match e {
                ConnectError::LocalResource { .. } => CloseReason::LocalResource,
                _ => CloseReason::UpstreamUnavailable,
            };
            record.error = Some(ErrorText::Connect(e));
        }
    }
}

enum ErrorText {
    Io(io::Error),
    Connect(ConnectError),
    Handshake(HandshakeError),
    NotRedirected(NotRedirected),
    Text(String),
}

impl std::fmt::Display for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorText::Io(e) => e.fmt(f),
            ErrorText::Connect(e) => e.fmt(f),
            ErrorText::Handshake(e) => write!(f, "TLS handshake: {e}"),
            ErrorText::NotRedirected(e) => e.fmt(f),
            ErrorText::Text(e) => f.write_str(e),
        }
    }
}

/// A connection's PROXY protocol addresses.
struct Proxied {
    /// The TCP peer (the load balancer) when a received header named the
    /// client.
    by: Option<SocketAddr>,
    /// Where the client was connecting: a received header's destination,
    /// else the original destination, else the local address.
    destination: SocketAddr,
}

/// Everything recorded about one connection, emitted once when it ends.
struct ConnectionRecord {
    started: Instant,
    /// The client: the TCP peer, or the address a PROXY protocol header
    /// named.
    peer: SocketAddr,
    /// PROXY protocol addresses, on listeners that receive headers or
    /// whose clusters send them; boxed, so other connections carry a
    /// pointer, not three addresses.
    proxied: Option<Box<Proxied>>,
    /// Where the client was going before iptables redirected it here
    /// (capturing listeners only).
    original_destination: Option<SocketAddr>,
    endpoint: Option<SocketAddr>,
    /// The client's SPIFFE ID (mTLS).
    identity: Option<String>,
    /// TLS version and SNI, when the listener terminates TLS.
    tls: Option<(&'static str, Option<String>)>,
    /// Where the session's records were processed.
    tls_path: TlsPath,
    /// The protocol agreed by ALPN, until handed to a protocol handler.
    alpn: Option<Vec<u8>>,
    /// Served by a protocol handler, which logs per request.
    handed_over: bool,
    /// How the bytes were forwarded (`buffered` or `splice`), once
    /// forwarding began.
    forward_path: Option<&'static str>,
    reason: CloseReason,
    error: Option<ErrorText>,
    /// Bytes read from the client.
    bytes_received: Cell<u64>,
    /// Bytes written to the client.
    bytes_sent: Cell<u64>,
    /// The listener's observer's token, once forwarding began.
    observed: Option<u16>,
}

impl ConnectionRecord {
    fn new(peer: SocketAddr) -> Self {
        Self {
            started: Instant::now(),
            peer,
            proxied: None,
            original_destination: None,
            endpoint: None,
            identity: None,
            tls: None,
            tls_path: TlsPath::Userspace,
            alpn: None,
            handed_over: false,
            forward_path: None,
            reason: CloseReason::Completed,
            error: None,
            bytes_received: Cell::new(0),
            bytes_sent: Cell::new(0),
            observed: None,
        }
    }

    /// What a PROXY protocol header sent upstream says of this connection
    /// (`None` when no cluster sends headers, so nothing was noted).
    fn proxy_origin(&self) -> Option<Outgoing<'_>> {
        let proxied = self.proxied.as_ref()?;
        Some(Outgoing {
            source: self.peer,
            destination: proxied.destination,
            alpn: self.alpn.as_deref(),
            authority: self.tls.as_ref().and_then(|t| t.1.as_deref()),
            spiffe_id: self.identity.as_deref(),
            tls_version: self
                .tls
                .as_ref()
                .map(|t| t.0)
                .filter(|v| *v != "passthrough"),
        })
    }

    /// The cluster the connection went to: derived from the recorded SNI
    /// for passthrough listeners, else the listener's.
    fn cluster_name<'a>(&self, config: &'a ListenerConfig) -> &'a str {
        match &self.tls {
            Some(("passthrough", sni)) => &config.cluster_for(sni.as_deref()).name,
            _ => &config.cluster.name,
        }
    }

    fn finish(self, ctx: &ListenerCtx) {
        let duration = self.started.elapsed();
        let config = &ctx.config;
        config.stats.record_close(ctx.core, self.reason, duration);
        if let (Some(o), Some(token)) = (&config.observer, self.observed) {
            o.closed(
                ctx.core,
                token,
                self.bytes_received.get(),
                self.bytes_sent.get(),
            );
        }
        if !config.access_log || self.handed_over {
            return;
        }
        let endpoint = self.endpoint.map(|a| a.to_string());
        tracing::info!(
            target: "ringmesh::access",
            listener = %config.name,
            peer = %self.peer,
            proxied_by = %OrDash(self.proxied.as_ref().and_then(|p| p.by)),
            original_destination = %OrDash(self.original_destination),
            cluster = %self.cluster_name(config),
            endpoint = endpoint.as_deref().unwrap_or("-"),
            identity = self.identity.as_deref().unwrap_or("-"),
            tls = self.tls.as_ref().map(|t| t.0).unwrap_or("-"),
            tls_path = match (&self.tls, self.tls_path) {
                (Some(("passthrough", _)) | None, _) => "-",
                (_, TlsPath::Kernel) => "ktls",
                (_, TlsPath::Userspace) => "userspace",
            },
            sni = self.tls.as_ref().and_then(|t| t.1.as_deref()).unwrap_or("-"),
            forward_path = self.forward_path.unwrap_or("-"),
            bytes_received = self.bytes_received.get(),
            bytes_sent = self.bytes_sent.get(),
            duration_ms = duration.as_secs_f64() * 1000.0,
            reason = self.reason.as_str(),
            error = self.error.as_ref().map(|e| e.to_string()).as_deref().unwrap_or(""),
            "connection closed"
        );
    }
}

/// An optional address for a log field: the address, or `-` (written
/// straight into the line, no string built).
struct OrDash(Option<SocketAddr>);

impl std::fmt::Display for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}
