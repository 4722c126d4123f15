//! The admin API's connections: accepted on the control thread, at most
//! [`MAX_CONNECTIONS`] at once, each closed if its request head does not
//! arrive in time.
//!
//! axum's own `serve` has neither a connection cap nor a head timeout, so
//! 1,000 clients holding half a request each would hold 1,000 descriptors
//! forever. Here every connection needs a permit, and hyper's header
//! timeout (which runs from the moment a connection is ready for a request,
//! so it also closes idle keep-alive connections) bounds how long a silent
//! or slow client keeps one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use super::Counters;

/// Admin connections served at once; more are closed at once. Their
/// descriptors come from the reserve the data plane cannot take
/// (`ringmesh_core::fd_share`).
pub const MAX_CONNECTIONS: usize = 64;

/// Time a connection has to send a complete request head, counted from
/// when it connected or got its previous response.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Descriptors the data plane leaves to the control thread: the admin
/// connections plus room for reloads (new listening sockets, certificate
/// and endpoints files, DNS).
pub const RESERVED_DESCRIPTORS: u64 = MAX_CONNECTIONS as u64 + 192;

/// Serves `router` on `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, counters: Arc<Counters>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last_warning: Option<Instant> = None;
    let mut warn = |message: &str, error: Option<&std::io::Error>| {
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_warning = Some(Instant::now());
            match error {
                Some(e) => tracing::warn!(error = %e, "{message}"),
                None => tracing::warn!(limit = MAX_CONNECTIONS, "{message}"),
            }
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn("admin API: accept failed; backing off", Some(&e));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            warn(
                "admin API: too many connections; closing new ones at once",
                None,
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_header_size(MAX_HEAD_BYTES)
                .max_headers(100);
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}
