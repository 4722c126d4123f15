//! Per-core HTTP/2 upstream connections, multiplexed: one list of
//! sessions per (cluster, endpoint) on each worker, no lock, no atomic.
//!
//! A request takes the first session with a free stream under the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS`; when every session is full,
//! another connection is opened (within the cluster's `max_connections`;
//! past it, the least loaded session queues the stream, as h2 does). A
//! session that received GOAWAY, failed, or stopped answering pings is
//! dropped from the list at once; its streams in flight finish on it.
//! Each session's connection runs in its own task on the worker, which
//! holds the connection's breaker slot and pings the server every
//! [`PING_INTERVAL`] (no PONG within [`PING_TIMEOUT`] closes it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Either, select};
use futures_util::pin_mut;
use h2::client::SendRequest;
use ringmesh_core::upstream::{self, ConnectionSlot, Pick};
use ringmesh_core::{ConnectError, rt};

use super::io::H2Io;

/// How often an upstream session is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the session is closed.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Each upstream stream's receive window (what a server may send ahead of
/// the client reading it).
const STREAM_WINDOW: u32 = 1 << 20;
/// Each upstream connection's receive window.
const CONNECTION_WINDOW: u32 = 4 << 20;
/// The largest response head accepted from a server.
const MAX_RESPONSE_HEAD: u32 = 64 * 1024;

/// One multiplexed connection to an endpoint.
struct Session {
    send: SendRequest<Bytes>,
    /// Streams this worker has open on it.
    active: Rc<Cell<usize>>,
    /// Set when the connection ended, failed, or was told to go away.
    closed: Rc<Cell<bool>>,
}

type Key = (usize, SocketAddr);

thread_local! {
    static SESSIONS: RefCell<HashMap<Key, Vec<Session>>> = RefCell::new(HashMap::new());
}

fn key(cluster: &ringmesh_core::Cluster, addr: SocketAddr) -> Key {
    (Arc::as_ptr(&cluster.stats) as usize, addr)
}

/// One stream's share of a session: released when dropped.
pub(crate) struct Lease {
    active: Rc<Cell<usize>>,
    closed: Rc<Cell<bool>>,
}

impl Lease {
    /// Marks the session unusable for new streams (a send on it failed:
    /// GOAWAY, or the connection broke).
    pub fn retire(&self) {
        self.closed.set(true);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.active.set(self.active.get().saturating_sub(1));
    }
}

/// A session to send one request on.
pub(crate) struct Checkout {
    pub send: SendRequest<Bytes>,
    pub lease: Lease,
    /// The endpoint.
    pub addr: SocketAddr,
    /// The endpoint's index in the cluster.
    pub index: usize,
    /// An existing session (not opened for this request).
    pub reused: bool,
}

/// A session to `addr` with a free stream, if this worker has one; when
/// all are full and `full_ok`, the least loaded one.
pub(crate) fn take(
    cluster: &ringmesh_core::Cluster,
    addr: SocketAddr,
    index: usize,
    full_ok: bool,
) -> Option<Checkout> {
    SESSIONS.with(|s| {
        let mut s = s.borrow_mut();
        let list = s.get_mut(&key(cluster, addr))?;
        list.retain(|x| !x.closed.get());
        let free = list
            .iter()
            .find(|x| x.active.get() < x.send.current_max_send_streams().max(1));
        let chosen = match free {
            Some(x) => x,
            None if full_ok => list.iter().min_by_key(|x| x.active.get())?,
            None => return None,
        };
        chosen.active.set(chosen.active.get() + 1);
        Some(Checkout {
            send: chosen.send.clone(),
            lease: Lease {
                active: chosen.active.clone(),
                closed: chosen.closed.clone(),
            },
            addr,
            index,
            reused: true,
        })
    })
}

/// Why a new session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The cluster's `max_connections` breaker is full.
    #[error("max_connections reached")]
    Overflow,
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HTTP/2 handshake failed (not an HTTP/2 server, or it broke the
    /// protocol).
    #[error("HTTP/2 handshake with {addr}: {error}")]
    Handshake { addr: SocketAddr, error: h2::Error },
    /// The server did not complete the HTTP/2 handshake within the
    /// cluster's `connect_timeout`.
    #[error("HTTP/2 handshake with {addr} timed out")]
    HandshakeTimeout { addr: SocketAddr },
}

/// Opens a session to the picked endpoint (connect, failover, TLS
/// origination as the cluster says), registers it and returns a stream
/// on it.
pub(crate) async fn open(
    cluster: &ringmesh_core::Cluster,
    core: usize,
    pick: Pick,
    idle_timeout: Duration,
) -> Result<Checkout, OpenError> {
    let slot = ConnectionSlot::acquire(cluster, core).ok_or(OpenError::Overflow)?;
    // No PROXY protocol client: a multiplexed session carries many
    // clients' streams (the config refuses `http2` with
    // `send_proxy_protocol`).
    let conn = upstream::connect(cluster, core, pick, None).await?;
    let (addr, index) = (conn.addr, conn.index);
    let io = H2Io::new(Rc::new(conn.stream), Vec::new(), None);
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_RESPONSE_HEAD)
        .enable_push(false)
        .handshake::<_, Bytes>(io);
    let left = cluster.connect_timeout;
    let (send, connection) = match rt::timeout(left, handshake).await {
        Some(Ok(pair)) => pair,
        Some(Err(error)) => return Err(OpenError::Handshake { addr, error }),
        None => return Err(OpenError::HandshakeTimeout { addr }),
    };
    let active = Rc::new(Cell::new(1));
    let closed = Rc::new(Cell::new(false));
    let watch = Watch {
        closed: closed.clone(),
        active: active.clone(),
        idle_timeout,
    };
    rt::spawn(drive(connection, watch, slot)).detach();
    SESSIONS.with(|s| {
        s.borrow_mut()
            .entry(key(cluster, addr))
            .or_default()
            .push(Session {
                send: send.clone(),
                active: active.clone(),
                closed: closed.clone(),
            })
    });
    Ok(Checkout {
        send,
        lease: Lease { active, closed },
        addr,
        index,
        reused: false,
    })
}

/// What a session's task watches.
struct Watch {
    closed: Rc<Cell<bool>>,
    active: Rc<Cell<usize>>,
    /// The cluster's pool `idle_timeout`: a session with no stream for
    /// this long (checked at this interval, so up to twice it) closes.
    idle_timeout: Duration,
}

/// Runs a session's connection to its end, pinging it and closing it when
/// idle; then marks it closed (and frees its breaker slot).
async fn drive(
    mut connection: h2::client::Connection<H2Io, Bytes>,
    watch: Watch,
    _slot: ConnectionSlot,
) {
    let mut ping = connection.ping_pong();
    let tick = PING_INTERVAL.min(watch.idle_timeout);
    let mut idle_ticks = 0u32;
    loop {
        if watch.closed.get() && watch.active.get() == 0 {
            break;
        }
        let timer = rt::sleep(tick);
        pin_mut!(timer);
        match select(&mut connection, timer).await {
            Either::Left((res, _)) => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
                break;
            }
            Either::Right(_) => {}
        }
        if watch.active.get() == 0 {
            idle_ticks += 1;
            if idle_ticks >= 2 {
                break;
            }
        } else {
            idle_ticks = 0;
        }
        let Some(pp) = ping.as_mut() else { continue };
        let pong = rt::timeout(PING_TIMEOUT, pp.ping(h2::Ping::opaque()));
        pin_mut!(pong);
        match select(&mut connection, pong).await {
            Either::Left(_) => break,
            Either::Right((Some(Ok(_)), _)) => {}
            Either::Right((Some(Err(_)) | None, _)) => {
                tracing::info!("upstream HTTP/2 connection did not answer a ping: closed");
                break;
            }
        }
    }
    watch.closed.set(true);
}
