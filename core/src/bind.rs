//! Creating listening sockets: one SO_REUSEPORT socket per worker per
//! address, so the kernel spreads connections without an accept lock.
//!
//! Sockets are created on the control thread before a config is published,
//! so a bind failure rejects the config instead of leaving a worker half
//! configured. Before joining a port we check that nobody else already
//! listens on it: SO_REUSEPORT would otherwise let a second instance
//! silently take half of the connections.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::snapshot::ListenerConfig;

/// Kernel accept queue per socket (the default 128 overflows under bursts).
const BACKLOG: i32 = 4096;

/// Identifies a listening socket group across reloads. A listener keeps its
/// sockets (and queued connections) as long as its key is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenKey {
    /// A fixed address.
    Addr(SocketAddr),
    /// Port 0: the kernel picks a port once; the listener's name keeps it.
    Ephemeral {
        /// Listener name.
        name: Arc<str>,
        /// Configured address (port 0).
        addr: SocketAddr,
    },
}

impl ListenKey {
    /// The key of a configured listener.
    pub fn of(listener: &ListenerConfig) -> Self {
        Self::new(&listener.name, listener.listen)
    }

    /// The key of listener `name` configured with address `addr`.
    pub fn new(name: &Arc<str>, addr: SocketAddr) -> Self {
        if addr.port() == 0 {
            ListenKey::Ephemeral {
                name: name.clone(),
                addr,
            }
        } else {
            ListenKey::Addr(addr)
        }
    }
}

/// A listening address could not be bound.
#[derive(Debug, Error)]
pub enum BindError {
    /// Someone else (another process, or another ringmesh) listens there.
    #[error(
        "listener `{name}`: {addr} is already in use by another process (a second ringmesh instance?); refusing to share the port"
    )]
    InUse {
        /// Listener name.
        name: Arc<str>,
        /// Address.
        addr: SocketAddr,
    },
    /// Any other socket error.
    #[error("listener `{name}`: cannot listen on {addr}: {source}")]
    Io {
        /// Listener name.
        name: Arc<str>,
        /// Address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Keep [::]:p and 0.0.0.0:p independent, as separate listeners.
        socket.set_only_v6(true)?;
    }
    // Rebinding over TIME_WAIT after a restart must work.
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Fails if anyone already listens on `addr` (checked with a plain bind,
/// which an existing SO_REUSEPORT group does not let through).
///
/// A process that just exited can leave its listening socket behind for a
/// few milliseconds (io_uring tears a dead ring down asynchronously), so a
/// conflict is re-checked for up to a second before it is reported: a quick
/// restart must not look like a second instance.
fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
    let mut delay = Duration::from_millis(10);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let probe = new_socket(addr)?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Binds `workers` listening sockets sharing one address. Returns them and
/// the address actually bound (the kernel's choice when the port is 0).
pub(crate) fn bind_group(
    name: &Arc<str>,
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<TcpListener>, SocketAddr), BindError> {
    let io_err = |source| BindError::Io {
        name: name.clone(),
        addr,
        source,
    };
    if addr.port() != 0 {
        ensure_unused(addr).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                BindError::InUse {
                    name: name.clone(),
                    addr,
                }
            } else {
                io_err(e)
            }
        })?;
    }
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let socket = bind_one(bound).map_err(io_err)?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()
                .map_err(io_err)?
                .as_socket()
                .ok_or_else(|| io_err(io::Error::other("bound address is not IP")))?;
        }
        sockets.push(TcpListener::from(socket));
    }
    Ok((sockets, bound))
}

/// Binds `count` more sockets into the SO_REUSEPORT group already
/// listening on `bound` (sockets inherited from the process this one
/// upgraded, when it ran fewer workers). No check for a foreign listener:
/// the group is ours.
pub(crate) fn join_group(
    name: &Arc<str>,
    bound: SocketAddr,
    count: usize,
) -> Result<Vec<TcpListener>, BindError> {
    (0..count)
        .map(|_| {
            bind_one(bound)
                .map(TcpListener::from)
                .map_err(|source| BindError::Io {
                    name: name.clone(),
                    addr: bound,
                    source,
                })
        })
        .collect()
}

fn bind_one(addr: SocketAddr) -> io::Result<Socket> {
    let socket = new_socket(addr)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux clones
    // the listener's socket): one setsockopt per listener instead of one
    // per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let name: std::sync::Arc<str> = "t".into();
        let (sockets, bound) = bind_group(&name, "127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let _client = std::net::TcpStream::connect(bound).unwrap();
        let (accepted, _) = sockets[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY must be inherited");
    }
}
