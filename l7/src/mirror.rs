//! Traffic mirroring: a copy of a share of a route's requests goes to a
//! shadow cluster, fire and forget (Envoy's request mirror policy).
//!
//! The copy is written when the primary request is routed, from bytes
//! already in the connection's buffer (head and a body of at most 64 KiB
//! that came with it; other requests are skipped, never waited for), with
//! `-shadow` appended to the host (Envoy's convention) and `connection:
//! close`. A task on the same worker sends it and reads and discards the
//! answer; the primary never waits for it, and nothing the shadow does
//! reaches the client. Bounded: the copy holds the shadow cluster's own
//! `max_requests` and `max_connections` slots (a full breaker drops the
//! copy, counted as `overflow`), and ends after the route's timeout.

use std::sync::Arc;
use std::time::Duration;

use ringmesh_core::health::Outcome;
use ringmesh_core::upstream::{self, ConnectionSlot, RequestSlot};
use ringmesh_core::{Cluster, rt};

use crate::buffers;
use crate::codec::h1::{Framing, RequestHead};
use crate::codec::write::{self, Edits, Forwarded};
use crate::exchange::INLINE_BODY;
use crate::metrics::{MirrorResult, MirrorStats, UpstreamStats};
use crate::route::Mirror;
use crate::server::Client;

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
        Framing::None => 0,
        Framing::Length(n) if n as usize <= buffered && n as usize <= INLINE_BODY => n as usize,
        _ => {
            mirror.stats.count(core, MirrorResult::Skipped);
            return;
        }
    };
    let mut host = buffers::take();
    let authority = edits
        .host
        .or(head.host.map(|h| h.get(&c.buf)))
        .unwrap_or(mirror.target.cluster.name.as_bytes());
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
    rt::spawn(shadow(
        mirror.target.cluster.clone(),
        mirror.target.stats.clone(),
        mirror.stats.clone(),
        core,
        c.hash_key,
        copy,
        timeout,
    ))
    .detach();
}

/// `host[:port]` becomes `host-shadow[:port]`.
pub fn shadow_host(out: &mut Vec<u8>, authority: &[u8]) {
    let (name, _) = crate::route::matcher::split_port(authority);
    out.extend_from_slice(name);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&authority[name.len()..]);
}

/// Sends `copy` to `cluster` and discards the answer.
async fn shadow(
    cluster: Arc<Cluster>,
    upstream_stats: Arc<UpstreamStats>,
    stats: Arc<MirrorStats>,
    core: usize,
    key: u64,
    copy: Vec<u8>,
    timeout: Duration,
) {
    let result = match RequestSlot::acquire(&cluster, core) {
        None => MirrorResult::Overflow,
        Some(_request) => match ConnectionSlot::acquire(&cluster, core) {
            None => MirrorResult::Overflow,
            Some(_connection) => rt::timeout(
                timeout,
                exchange(&cluster, &upstream_stats, core, key, copy),
            )
            .await
            .unwrap_or(MirrorResult::Failed),
        },
    };
    stats.count(core, result);
}

/// One shadow exchange: connect, send, read the status, drain to the end.
async fn exchange(
    cluster: &Cluster,
    upstream_stats: &UpstreamStats,
    core: usize,
    key: u64,
    copy: Vec<u8>,
) -> MirrorResult {
    let Ok(pick) = upstream::pick(cluster, core, key) else {
        buffers::give(copy);
        return MirrorResult::Failed;
    };
    let Ok(conn) = upstream::connect(cluster, core, pick).await else {
        buffers::give(copy);
        return MirrorResult::Failed;
    };
    let (res, copy) = conn.stream.write_all(copy).await;
    buffers::give(copy);
    if res.is_err() {
        return MirrorResult::Failed;
    }
    let mut buf = buffers::take();
    let mut status = None;
    // Read to the end (the copy asked the shadow to close): the answer is
    // discarded, only its status is kept for the cluster's health.
    loop {
        // Keep a short first read until the status line is complete.
        if status.is_some() || buf.len() >= 32 {
            buf.clear();
        }
        let (res, b) = conn.stream.read_more(buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => {
                if status.is_none() {
                    status = parse_status(&buf);
                }
            }
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
