//! The seam between the engine and the protocols above TCP.
//!
//! `core` accepts, admits and (when the listener has TLS) terminates a
//! connection; for a listener whose compiled config carries a
//! [`ProtocolHandler`], it then hands the connection over instead of
//! forwarding bytes. The handler (HTTP lives in the `l7` crate) gets the
//! decrypted [`Stream`], the connection's [`ConnectionFacts`] and a
//! [`ListenerWatch`] that yields the listener config in force *now*, so a
//! long-lived connection serves each request on the newest snapshot while a
//! request in flight keeps the one it started with.
//!
//! What the handler reuses from `core` instead of writing it again: endpoint
//! picking and connect ([`crate::upstream`]), the breakers
//! ([`crate::upstream::ConnectionSlot`], [`crate::upstream::RequestSlot`]),
//! outlier detection ([`crate::Cluster::record_outcome`]), the runtime
//! ([`crate::rt`]), per-core counters ([`crate::per_core`]) and the drain
//! signal ([`crate::drain`]). `core` never names a handler's types.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::pin::Pin;
use std::rc::Rc;

use crate::conn::ListenerCtx;
use crate::metrics::CloseReason;
use crate::snapshot::ListenerConfig;
use crate::stream::Stream;

/// A protocol spoken on a listener above TCP (and TLS), implemented outside
/// `core`. The listener's compiled config carries it; a new snapshot brings
/// a new handler object.
pub trait ProtocolHandler: Send + Sync + fmt::Debug + 'static {
    /// Serves one accepted, admitted, TLS-terminated connection to its end.
    /// Runs on the accepting worker's thread (the future need not be
    /// `Send`); the returned [`ConnectionEnd`] is recorded once by `core`.
    fn serve(&self, conn: Connection) -> Pin<Box<dyn Future<Output = ConnectionEnd>>>;

    /// The handler as [`Any`], so that its crate can reach its own config
    /// from a [`ListenerConfig`] on each request.
    fn as_any(&self) -> &dyn Any;
}

/// What is known about a connection when the handler gets it.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's SPIFFE ID (mTLS), if it presented one.
    pub identity: Option<String>,
    /// The server name the client asked for (TLS).
    pub sni: Option<String>,
    /// The application protocol agreed by ALPN (TLS), e.g. `http/1.1`.
    pub alpn: Option<Vec<u8>>,
    /// The TLS version, when the listener terminates TLS.
    pub tls: Option<&'static str>,
    /// The worker serving the connection (index of per-core slots).
    pub core: usize,
    /// Where the client was connecting before iptables redirected it to
    /// the proxy, on a listener with `original_destination` (read once at
    /// accept); `None` on other listeners. `original_destination` clusters
    /// forward there ([`crate::upstream::pick`]).
    pub original_destination: Option<SocketAddr>,
    /// Where the client was connecting, for PROXY protocol headers: a
    /// received header's destination (`peer` is then the client it
    /// named), else the original destination, else the local address.
    /// Noted only on listeners that receive headers or when some cluster
    /// sends them (the listener's `resolve_local_address`).
    pub destination: Option<SocketAddr>,
}

impl ConnectionFacts {
    /// What a PROXY protocol header sent upstream for this connection
    /// says: the client, where it connected, and its TLS facts.
    pub fn proxy_origin(&self) -> crate::proxy_protocol::Outgoing<'_> {
        crate::proxy_protocol::Outgoing {
            source: self.peer,
            // Always noted when a cluster sends headers; the unspecified
            // address is never sent in practice.
            destination: self
                .destination
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            alpn: self.alpn.as_deref(),
            authority: self.sni.as_deref(),
            spiffe_id: self.identity.as_deref(),
            tls_version: self.tls,
        }
    }
}

/// `bound`, or when it is a wildcard the local address of the connected
/// socket `fd` (one `getsockname`, paid only where a PROXY protocol header
/// needs it).
pub fn local_address(bound: SocketAddr, fd: std::os::fd::RawFd) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // SAFETY: the caller's socket is open for the duration of this call;
    // SockRef only borrows it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(bound)
}

/// An accepted connection handed to a [`ProtocolHandler`].
pub struct Connection {
    /// The client's byte stream (plaintext when TLS was terminated).
    pub stream: Stream,
    /// The connection's facts.
    pub facts: ConnectionFacts,
    /// The listener's config as it is now (it changes on reload).
    pub listener: ListenerWatch,
    /// Byte counts the handler keeps up to date; `core` reads them for
    /// the connection's record.
    pub bytes: Rc<ByteCounts>,
}

/// Bytes moved on a connection, both ways.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Read from the client.
    pub received: Cell<u64>,
    /// Written to the client.
    pub sent: Cell<u64>,
}

impl ByteCounts {
    /// Counts `n` bytes read from the client.
    #[inline]
    pub fn add_received(&self, n: usize) {
        self.received.set(self.received.get() + n as u64);
    }

    /// Counts `n` bytes written to the client.
    #[inline]
    pub fn add_sent(&self, n: usize) {
        self.sent.set(self.sent.get() + n as u64);
    }
}

/// How a handled connection ended, for the listener's close counters.
#[derive(Debug)]
pub struct ConnectionEnd {
    /// Why it closed.
    pub reason: CloseReason,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// The listener config in force now, as the worker's accept loop sees it.
/// Cloning is cheap (worker-local reference counts, no atomics).
#[derive(Clone)]
pub struct ListenerWatch(pub(crate) Rc<RefCell<Rc<ListenerCtx>>>);

impl ListenerWatch {
    /// The current config. Hold the returned reference for the duration of
    /// one request: it keeps that request on its snapshot.
    #[inline]
    pub fn current(&self) -> ListenerRef {
        ListenerRef(self.0.borrow().clone())
    }
}

/// A listener config held by a connection or a request (worker-local).
#[derive(Clone)]
pub struct ListenerRef(Rc<ListenerCtx>);

impl Deref for ListenerRef {
    type Target = ListenerConfig;

    #[inline]
    fn deref(&self) -> &ListenerConfig {
        &self.0.config
    }
}

/// Told of each proxied TCP connection (mesh metrics): when forwarding
/// begins and when the connection ends. Called once per connection, never
/// per read or write.
pub trait ConnectionObserver: Send + Sync + std::fmt::Debug {
    /// Forwarding began for a client with `identity` (its SPIFFE ID under
    /// mTLS) on worker `core`; returns a token given back at the close.
    fn opened(&self, core: usize, identity: Option<&str>) -> u16;
    /// The connection of `token` ended having moved `received` bytes from
    /// the client and `sent` bytes to it.
    fn closed(&self, core: usize, token: u16, received: u64, sent: u64);
}
