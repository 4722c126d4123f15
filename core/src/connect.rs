//! Opening the upstream connection: pick an endpoint, connect within
//! `connect_timeout`, and on failure move on to the next endpoint, up to
//! `connect_attempts` distinct endpoints.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::metrics::CONNECT_BUCKETS;
use crate::runtime::{self, TcpStream};
use crate::snapshot::Cluster;
use crate::stream::Stream;
use crate::tls::HandshakeError;
use crate::tls::stream::TlsStream;

/// Why no upstream connection could be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The cluster has no endpoints.
    #[error("cluster has no endpoints")]
    NoEndpoints,
    /// Every attempt failed; the last failure is kept.
    #[error("{attempts} connect attempt(s) failed, last to {addr}: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// Endpoint of the last attempt.
        addr: SocketAddr,
        /// What went wrong with it.
        last: AttemptError,
    },
}

/// Why one connect attempt failed.
#[derive(Debug, Error)]
pub enum AttemptError {
    /// Refused, unreachable, or another socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No answer within `connect_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake with the endpoint failed (wrong identity, unknown
    /// CA, protocol error, timeout).
    #[error("TLS handshake: {0}")]
    Tls(HandshakeError),
}

/// An established upstream connection.
pub(crate) struct Upstream {
    pub stream: Stream,
    pub addr: SocketAddr,
    /// Index of the endpoint in the cluster.
    pub index: usize,
}

/// Connects to one of `cluster`'s endpoints from worker `core`, for a
/// client with hash key `key` (consistent-hashing policies).
pub(crate) async fn connect_upstream(
    cluster: &Cluster,
    core: usize,
    key: u64,
) -> Result<Upstream, ConnectError> {
    let endpoints = &cluster.endpoints;
    if endpoints.is_empty() {
        return Err(ConnectError::NoEndpoints);
    }
    let stats = cluster.stats.cores.get(core);
    let first = cluster.balancer.pick(core, key) % endpoints.len();
    let attempts = (cluster.connect_attempts.max(1) as usize).min(endpoints.len());
    let mut last = None;
    for i in 0..attempts {
        let index = (first + i) % endpoints.len();
        let addr = endpoints[index].addr;
        let started = Instant::now();
        let err = match runtime::timeout(cluster.connect_timeout, runtime::connect(addr)).await {
            Some(Ok(stream)) => {
                // Interactive protocols (TLS handshakes, RPC) stall on Nagle
                // plus delayed ACK; a proxy must not add that.
                let _ = stream.set_nodelay(true);
                match secure(stream, addr, cluster).await {
                    Ok(stream) => {
                        stats
                            .connect_latency
                            .record(CONNECT_BUCKETS, started.elapsed());
                        stats.connections.inc();
                        return Ok(Upstream {
                            stream,
                            addr,
                            index,
                        });
                    }
                    Err(e) => {
                        stats.tls_failures.inc();
                        AttemptError::Tls(e)
                    }
                }
            }
            Some(Err(e)) => {
                stats.connect_failures.inc();
                AttemptError::Io(e)
            }
            None => {
                stats.connect_timeouts.inc();
                AttemptError::Timeout(cluster.connect_timeout)
            }
        };
        tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %err, "upstream connect failed");
        last = Some((addr, err));
    }
    stats.unavailable.inc();
    match last {
        Some((addr, last)) => Err(ConnectError::Exhausted {
            attempts: attempts as u32,
            addr,
            last,
        }),
        None => Err(ConnectError::NoEndpoints),
    }
}

/// Runs the cluster's TLS handshake on a fresh connection, if it has TLS.
async fn secure(
    stream: TcpStream,
    addr: SocketAddr,
    cluster: &Cluster,
) -> Result<Stream, HandshakeError> {
    let Some(tls) = &cluster.tls else {
        return Ok(Stream::Plain(stream));
    };
    // Without a configured SNI the endpoint's IP names the session, and
    // rustls sends no SNI for IP addresses.
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    let session =
        rustls::ClientConnection::new(tls.config.clone(), name).map_err(HandshakeError::Tls)?;
    let tls_stream = TlsStream::handshake(
        stream,
        rustls::Connection::Client(session),
        tls.handshake_timeout,
    )
    .await?;
    Ok(Stream::Tls(Box::new(tls_stream)))
}
