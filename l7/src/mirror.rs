//! Traffic mirroring: a copy of a share of a route's requests goes to a
//! shadow cluster, fire and forget (Envoy's request mirror policy).
//!
//! The copy is written when the primary request is routed, from bytes
//! already in the connection's buffer (head and a Content-Length body of at
//! most 64 KiB that came with it; other requests, and upgrades, are
//! skipped, never waited for), with `-shadow` appended to the host (Envoy's
//! convention) and `connection: close`. A task on the same worker sends it
//! and reads the status of the answer, then closes; the primary never waits
//! for it, and nothing the shadow does reaches the client.
//!
//! Bounded by its own breaker: at most `max_in_flight` copies of a route's
//! mirror are in flight at once (over all workers), each holding one of the
//! shadow cluster's `max_connections` slots; a copy that finds either full
//! is dropped before anything is built, counted as `overflow`. Each copy
//! ends after the route's timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringmesh_core::health::Outcome;
use ringmesh_core::upstream::{self, ConnectionSlot};
use ringmesh_core::{Cluster, ConnectError, rt};

use crate::buffers;
use crate::codec::h1::{Framing, RequestHead};
use crate::codec::write::{self, Edits, Forwarded};
use crate::exchange::INLINE_BODY;
use crate::metrics::{MirrorResult, MirrorStats, UpstreamStats};
use crate::route::Mirror;
use crate::server::Client;

/// One copy in flight, counted in its mirror's breaker until dropped.
struct InFlight(Arc<MirrorStats>);

impl InFlight {
    fn acquire(stats: &Arc<MirrorStats>, max: u32) -> Option<InFlight> {
        let n = stats.in_flight.fetch_add(1, Ordering::Relaxed);
        if n >= max {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlight(stats.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends a copy of the request in `c`'s buffer to the mirror's cluster
/// when this request is drawn; `edits` are the primary's changes (the
/// host gets `-shadow`).
pub(crate) fn send(
    c: &Client,
    mirror: &Mirror,
    head: &RequestHead,
    fwd: &Forwarded<'_>,
    edits: &Edits<'_>,
    timeout: Duration,
) {
    if !crate::random::chance(mirror.per_million) {
        return;
    }
    let core = c.facts.core;
    let buffered = c.buf.len() - head.len;
    let body = match head.framing {
        Framing::None if head.upgrade.is_none() => 0,
        Framing::Length(n) if n as usize <= buffered && n as usize <= INLINE_BODY => n as usize,
        _ => {
            mirror.stats.count(core, MirrorResult::Skipped);
            return;
        }
    };
    let cluster = &mirror.target.cluster;
    let Some(in_flight) = InFlight::acquire(&mirror.stats, mirror.max_in_flight) else {
        mirror.stats.count(core, MirrorResult::Overflow);
        return;
    };
    let Some(slot) = ConnectionSlot::acquire(cluster, core) else {
        mirror.stats.count(core, MirrorResult::Overflow);
        return;
    };
    let mut host = buffers::take();
    let authority = edits
        .host
        .or(head.host.map(|h| h.get(&c.buf)))
        .unwrap_or(cluster.name.as_bytes());
    shadow_host(&mut host, authority);
    let edits = Edits {
        host: Some(&host),
        close: true,
        ..*edits
    };
    let mut copy = buffers::take();
    write::request_head(
        &mut copy,
        &c.buf,
        head,
        &c.fields,
        &c.nominated,
        fwd,
        &edits,
    );
    copy.extend_from_slice(&c.buf[head.len..head.len + body]);
    buffers::give(host);
    let (cluster, upstream_stats) = (cluster.clone(), mirror.target.stats.clone());
    let (key, original) = (c.hash_key, c.facts.original_destination);
    rt::spawn(async move {
        let result = rt::timeout(
            timeout,
            exchange(&cluster, &upstream_stats, core, (key, original), copy),
        )
        .await
        .unwrap_or(MirrorResult::Failed);
        drop(slot);
        in_flight.0.count(core, result);
    })
    .detach();
}

/// `host[:port]` becomes `host-shadow[:port]`.
pub fn shadow_host(out: &mut Vec<u8>, authority: &[u8]) {
    let (name, _) = crate::route::matcher::split_port(authority);
    out.extend_from_slice(name);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&authority[name.len()..]);
}

/// One shadow exchange: connect, send, read the status, drain to the end.
/// `key` is the client's hash key, `original` its connection's original
/// destination (for an `original_destination` cluster).
async fn exchange(
    cluster: &Cluster,
    upstream_stats: &UpstreamStats,
    core: usize,
    (key, original): (u64, Option<std::net::SocketAddr>),
    copy: Vec<u8>,
) -> MirrorResult {
    let connected = match upstream::pick(cluster, core, key, original) {
        // A shadow request names no client in a PROXY protocol header
        // (v2 `LOCAL`; v1 names the connection's own addresses): it is the
        // proxy's own.
        Ok(pick) => upstream::connect(cluster, core, pick, None).await,
        Err(e) => Err(e),
    };
    let conn = match connected {
        Ok(conn) => conn,
        Err(e) => {
            buffers::give(copy);
            return match e {
                ConnectError::PendingOverflow => MirrorResult::Overflow,
                _ => MirrorResult::Failed,
            };
        }
    };
    let (res, copy) = conn.stream.write_all(copy).await;
    buffers::give(copy);
    if res.is_err() {
        return MirrorResult::Failed;
    }
    // Only the status is kept (for the cluster's health and counts); the
    // rest of the answer is discarded by closing the connection.
    let mut buf = buffers::take();
    let mut status = None;
    while status.is_none() && buf.len() < 64 {
        let (res, b) = conn.stream.read_more(buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => status = parse_status(&buf),
            _ => break,
        }
    }
    buffers::give(buf);
    match status {
        Some(s) => {
            cluster.record_outcome(core, conn.index, Outcome::of_status(s));
            upstream_stats.cores.get(core).codes[crate::metrics::code_class(s)].inc();
            MirrorResult::Sent
        }
        None => MirrorResult::Failed,
    }
}

/// The status code of `HTTP/1.x NNN` at the start of `buf`.
fn parse_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_host_keeps_the_port() {
        for (from, to) in [
            ("shop:8080", "shop-shadow:8080"),
            ("shop.example.com", "shop.example.com-shadow"),
            ("[::1]:80", "[::1]-shadow:80"),
        ] {
            let mut out = Vec::new();
            shadow_host(&mut out, from.as_bytes());
            assert_eq!(String::from_utf8(out).expect("ascii"), to);
        }
    }

    #[test]
    fn a_status_is_read_from_the_first_bytes_only_when_well_formed() {
        assert_eq!(parse_status(b"HTTP/1.1 503 Busy\r\n"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.0 200"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status(b"SSH-2.0"), None);
    }
}
