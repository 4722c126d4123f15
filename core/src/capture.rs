//! Transparent capture (Istio's 15001/15006 pattern): a listener with
//! `original_destination` receives connections that iptables `REDIRECT`
//! sent to it, and recovers where each one was going.
//!
//! Owns: reading a connection's original destination, once, right after
//! accept (one `getsockopt(SO_ORIGINAL_DST)`, or `IP6T_SO_ORIGINAL_DST` for
//! IPv6), and deciding whether the connection was redirected at all. A
//! connection made to the listener's own address was not: forwarding it
//! "to where it was going" would connect back to the proxy, so it is
//! refused ([`NotRedirected`]).
//!
//! Does not own: where a recovered destination leads (an
//! `original_destination` cluster, [`crate::snapshot::OriginalDestination`],
//! connected to by [`crate::connect`]), nor the iptables rules, which are
//! the operator's (docs/capture.md), including the exclusion of the
//! proxy's own upstream traffic that keeps it from capturing itself.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::SockRef;
use thiserror::Error;

/// Why a connection accepted by a capturing listener has no destination to
/// forward to. Either way it is closed and counted (`not_redirected`).
#[derive(Debug, Error)]
pub enum NotRedirected {
    /// The kernel reports the listener's own address: the client connected
    /// to the proxy's port directly instead of being redirected there.
    #[error(
        "not redirected: the client connected to the listener's own address {0} directly (forwarding it would loop back into the proxy)"
    )]
    OwnAddress(SocketAddr),
    /// The kernel knows no original destination (no NAT entry for the
    /// connection, e.g. conntrack is not tracking it).
    #[error("not redirected: the kernel reports no original destination: {0}")]
    Unknown(io::Error),
}

/// The original destination of `socket`, a connection from `peer` accepted
/// by a capturing listener whose socket is bound to `bound` (`None` when
/// unknown). Costs one `getsockopt`; a listener bound to a wildcard address
/// also needs the connection's own local address (one `getsockname`) to
/// tell a redirected connection from a direct one.
pub(crate) fn original_destination(
    socket: &impl AsFd,
    peer: SocketAddr,
    bound: Option<SocketAddr>,
) -> Result<SocketAddr, NotRedirected> {
    let sock = SockRef::from(socket);
    // The accepted socket has the listener's family; IPv6 listeners are
    // v6-only (bind.rs), so the peer's family is the socket's.
    let read = if peer.is_ipv6() {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    };
    let original = read
        .map_err(NotRedirected::Unknown)?
        .as_socket()
        .ok_or_else(|| {
            NotRedirected::Unknown(io::Error::other("the original destination is not IP"))
        })?;
    let local = match bound {
        Some(b) if !b.ip().is_unspecified() => b,
        // A wildcard listener accepts on any local address: only the
        // connection's own local address says which one it was sent to.
        _ => sock
            .local_addr()
            .map_err(NotRedirected::Unknown)?
            .as_socket()
            .ok_or_else(|| NotRedirected::Unknown(io::Error::other("local address is not IP")))?,
    };
    judge(original, local)
}

/// A connection whose original destination is the address it arrived on
/// was not redirected (the kernel reports the local address for connections
/// it did not NAT).
fn judge(original: SocketAddr, local: SocketAddr) -> Result<SocketAddr, NotRedirected> {
    if original == local {
        Err(NotRedirected::OwnAddress(original))
    } else {
        Ok(original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_destination_equal_to_the_local_address_was_not_redirected() {
        let local: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        assert!(matches!(
            judge(local, local),
            Err(NotRedirected::OwnAddress(a)) if a == local
        ));
        let app: SocketAddr = "127.0.0.5:8080".parse().unwrap();
        assert_eq!(judge(app, local).unwrap(), app);
    }

    #[test]
    fn a_direct_connection_has_no_original_destination_elsewhere() {
        // No iptables rule redirects this connection: the kernel answers
        // with the local address (conntrack loaded) or ENOENT (not loaded);
        // both mean "not redirected", on a specific and a wildcard bind.
        for bind in ["127.0.0.1:0", "0.0.0.0:0"] {
            let listener = TcpListener::bind(bind).unwrap();
            let bound = listener.local_addr().unwrap();
            let to = SocketAddr::from(([127, 0, 0, 1], bound.port()));
            let client = TcpStream::connect(to).unwrap();
            let (accepted, peer) = listener.accept().unwrap();
            let got = original_destination(&accepted, peer, Some(bound));
            assert!(got.is_err(), "{bind}: {got:?}");
            drop(client);
        }
    }
}
