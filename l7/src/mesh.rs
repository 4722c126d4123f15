//! Mesh metrics in Istio's own names and labels (README "Mesh metrics"):
//! `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes` and `istio_response_bytes`, by the client's
//! workload identity (its SPIFFE ID), the response code and the response
//! flags, so Kiali draws its service graph and Istio's dashboards work on
//! a ringmesh mesh. The destination labels are the proxy's own (`node`).
//!
//! Cardinality is bounded: at most [`MAX_SOURCES`] client identities are
//! told apart (later ones share the source `overflow`), and each worker
//! keeps at most [`SLOTS`] label sets (later ones share one overflow
//! series). The hot path takes no lock and allocates nothing: a client's
//! identity is interned once per connection (a lock then), and each
//! request updates its worker's own open-addressing table (single writer,
//! relaxed loads and stores), merged only when `/metrics` is read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use ringmesh_core::per_core::PerCore;

use crate::local_reply::ResponseFlag;

/// Client identities told apart; beyond, `overflow`.
pub const MAX_SOURCES: usize = 1024;
/// Label sets per worker (a power of two).
pub const SLOTS: usize = 1024;
/// Istio's default buckets of `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Buckets of the size histograms (bytes; Istio's exponential 1..10^8).
pub const BYTES_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

/// The index of a source with no identity (`unknown`).
pub const UNKNOWN: u16 = 0;
/// The index shared by identities beyond [`MAX_SOURCES`].
pub const OVERFLOW: u16 = 1;

/// Client identities, interned.
#[derive(Debug)]
pub struct Sources {
    index: Mutex<HashMap<Arc<str>, u16>>,
    names: Mutex<Vec<Arc<str>>>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            index: Mutex::new(HashMap::new()),
            names: Mutex::new(vec![Arc::from("unknown"), Arc::from("overflow")]),
        }
    }
}

impl Sources {
    /// The index of `identity` (once per connection).
    pub fn intern(&self, identity: Option<&str>) -> u16 {
        let Some(id) = identity else {
            return UNKNOWN;
        };
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = index.get(id) {
            return i;
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.len() >= MAX_SOURCES + 2 {
            return OVERFLOW;
        }
        let i = names.len() as u16;
        let name: Arc<str> = Arc::from(id);
        names.push(name.clone());
        index.insert(name, i);
        i
    }

    /// The identity of index `i`.
    pub fn name(&self, i: u16) -> Arc<str> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names
            .get(usize::from(i))
            .cloned()
            .unwrap_or_else(|| Arc::from("unknown"))
    }
}

/// One label set's counters on one worker.
#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    requests: AtomicU64,
    duration: [AtomicU64; DURATION_BUCKETS_MS.len() + 1],
    duration_sum_us: AtomicU64,
    request_bytes: [AtomicU64; BYTES_BUCKETS.len() + 1],
    request_bytes_sum: AtomicU64,
    response_bytes: [AtomicU64; BYTES_BUCKETS.len() + 1],
    response_bytes_sum: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    // The worker is the slot's only writer.
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

fn bucket(bounds: &[f64], v: f64) -> usize {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

/// A worker's table.
#[derive(Debug)]
struct Table {
    slots: Box<[Slot]>,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            slots: (0..SLOTS + 1).map(|_| Slot::default()).collect(),
        }
    }
}

/// The key of a label set (never 0: 0 is an empty slot): the source
/// (inbound) or the destination cluster (outbound, bit 62) in bits 32-47,
/// the gRPC status plus one (0: not gRPC) in bits 48-52.
fn key(peer: u16, outbound: bool, code: u16, flag: u8, grpc: Option<u8>) -> u64 {
    1 << 63
        | u64::from(outbound) << 62
        | u64::from(grpc.map_or(0, |g| g.min(16) + 1)) << 48
        | u64::from(peer) << 32
        | u64::from(code) << 8
        | u64::from(flag)
}

/// The overflow series' key.
const OVERFLOW_KEY: u64 = u64::MAX;

/// One request's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The client's interned identity (inbound), or the destination
    /// cluster's (outbound).
    pub source: u16,
    /// The proxy called out for its workload: it is the source.
    pub outbound: bool,
    /// The status answered (0: none).
    pub code: u16,
    /// The response flag, if any.
    pub flag: Option<ResponseFlag>,
    /// The gRPC status (gRPC requests).
    pub grpc: Option<u8>,
    pub duration: std::time::Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// A worker's TCP counters, by source: opened, closed, received, sent.
#[derive(Debug)]
struct TcpTable {
    by_source: Box<[[AtomicU64; 4]]>,
}

impl Default for TcpTable {
    fn default() -> Self {
        TcpTable {
            by_source: (0..MAX_SOURCES + 2).map(|_| Default::default()).collect(),
        }
    }
}

/// One source's merged TCP counters.
#[derive(Debug, Clone)]
pub struct TcpSeries {
    /// The client's SPIFFE ID, `unknown` or `overflow`.
    pub source: Arc<str>,
    pub opened: u64,
    pub closed: u64,
    /// Bytes from clients.
    pub received: u64,
    /// Bytes to clients.
    pub sent: u64,
}

/// The mesh metrics of the process.
#[derive(Debug)]
pub struct MeshStats {
    /// Client identities.
    pub sources: Sources,
    /// Destination clusters of outbound listeners.
    pub destinations: Sources,
    tables: PerCore<Table>,
    tcp: PerCore<TcpTable>,
}

impl ringmesh_core::protocol::ConnectionObserver for MeshStats {
    fn opened(&self, core: usize, identity: Option<&str>) -> u16 {
        let source = self.sources.intern(identity);
        if let Some(c) = self.tcp.get(core).by_source.get(usize::from(source)) {
            bump(&c[0], 1);
        }
        source
    }

    fn closed(&self, core: usize, token: u16, received: u64, sent: u64) {
        if let Some(c) = self.tcp.get(core).by_source.get(usize::from(token)) {
            bump(&c[1], 1);
            bump(&c[2], received);
            bump(&c[3], sent);
        }
    }
}

impl MeshStats {
    /// Tables for `workers` workers.
    pub fn new(workers: usize) -> Self {
        MeshStats {
            sources: Sources::default(),
            destinations: Sources::default(),
            tables: PerCore::new(workers),
            tcp: PerCore::new(workers),
        }
    }

    /// Counts one request on worker `core`.
    pub fn record(&self, core: usize, s: &Sample) {
        let flag = s.flag.map_or(0, |f| f.index() as u8 + 1);
        let k = key(s.source, s.outbound, s.code, flag, s.grpc);
        let table = self.tables.get(core);
        let mut i = (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize % SLOTS;
        let mut slot = &table.slots[SLOTS];
        for _ in 0..SLOTS / 4 {
            let candidate = &table.slots[i];
            match candidate.key.load(Relaxed) {
                0 => {
                    candidate.key.store(k, Relaxed);
                    slot = candidate;
                    break;
                }
                x if x == k => {
                    slot = candidate;
                    break;
                }
                _ => i = (i + 1) % SLOTS,
            }
        }
        if std::ptr::eq(slot, &table.slots[SLOTS]) {
            slot.key.store(OVERFLOW_KEY, Relaxed);
        }
        bump(&slot.requests, 1);
        let ms = s.duration.as_secs_f64() * 1000.0;
        bump(&slot.duration[bucket(&DURATION_BUCKETS_MS, ms)], 1);
        bump(&slot.duration_sum_us, s.duration.as_micros() as u64);
        bump(
            &slot.request_bytes[bucket(&BYTES_BUCKETS, s.request_bytes as f64)],
            1,
        );
        bump(&slot.request_bytes_sum, s.request_bytes);
        bump(
            &slot.response_bytes[bucket(&BYTES_BUCKETS, s.response_bytes as f64)],
            1,
        );
        bump(&slot.response_bytes_sum, s.response_bytes);
    }

    /// Every TCP source's merged counters (sources that opened any).
    pub fn tcp_series(&self) -> Vec<TcpSeries> {
        (0..MAX_SOURCES + 2)
            .filter_map(|i| {
                let sum = |k: usize| -> u64 {
                    self.tcp
                        .iter()
                        .map(|t| t.by_source[i][k].load(Relaxed))
                        .sum()
                };
                let opened = sum(0);
                (opened > 0).then(|| TcpSeries {
                    source: self.sources.name(i as u16),
                    opened,
                    closed: sum(1),
                    received: sum(2),
                    sent: sum(3),
                })
            })
            .collect()
    }

    /// Every label set's merged counters.
    pub fn series(&self) -> Vec<Series> {
        let mut merged: HashMap<u64, Series> = HashMap::new();
        for table in self.tables.iter() {
            for slot in table.slots.iter() {
                let k = slot.key.load(Relaxed);
                if k == 0 {
                    continue;
                }
                let s = merged.entry(k).or_insert_with(|| {
                    let (peer, code, flag) = if k == OVERFLOW_KEY {
                        (OVERFLOW, 0, None)
                    } else {
                        let flag = (k & 0xff) as usize;
                        (
                            (k >> 32) as u16,
                            (k >> 8 & 0xffff) as u16,
                            flag.checked_sub(1).and_then(ResponseFlag::from_index),
                        )
                    };
                    let outbound = k != OVERFLOW_KEY && k >> 62 & 1 == 1;
                    Series {
                        outbound,
                        source: if outbound {
                            Arc::from("unknown")
                        } else {
                            self.sources.name(peer)
                        },
                        destination: outbound.then(|| self.destinations.name(peer)),
                        code,
                        flag,
                        grpc: if k == OVERFLOW_KEY {
                            None
                        } else {
                            ((k >> 48 & 0x1f) as u8).checked_sub(1)
                        },
                        overflow: k == OVERFLOW_KEY,
                        requests: 0,
                        duration: vec![0; DURATION_BUCKETS_MS.len() + 1],
                        duration_sum_ms: 0.0,
                        request_bytes: vec![0; BYTES_BUCKETS.len() + 1],
                        request_bytes_sum: 0,
                        response_bytes: vec![0; BYTES_BUCKETS.len() + 1],
                        response_bytes_sum: 0,
                    }
                });
                s.requests += slot.requests.load(Relaxed);
                for (a, b) in s.duration.iter_mut().zip(&slot.duration) {
                    *a += b.load(Relaxed);
                }
                s.duration_sum_ms += slot.duration_sum_us.load(Relaxed) as f64 / 1000.0;
                for (a, b) in s.request_bytes.iter_mut().zip(&slot.request_bytes) {
                    *a += b.load(Relaxed);
                }
                s.request_bytes_sum += slot.request_bytes_sum.load(Relaxed);
                for (a, b) in s.response_bytes.iter_mut().zip(&slot.response_bytes) {
                    *a += b.load(Relaxed);
                }
                s.response_bytes_sum += slot.response_bytes_sum.load(Relaxed);
            }
        }
        let mut out: Vec<Series> = merged.into_values().filter(|s| s.requests > 0).collect();
        out.sort_by(|a, b| (&*a.source, a.code).cmp(&(&*b.source, b.code)));
        out
    }
}

/// One label set's merged counters (bucket counts not cumulative).
#[derive(Debug, Clone)]
pub struct Series {
    /// The client's SPIFFE ID, `unknown` or `overflow` (inbound).
    pub source: Arc<str>,
    /// The proxy was the source: `destination` is the cluster called.
    pub outbound: bool,
    /// The destination cluster (outbound).
    pub destination: Option<Arc<str>>,
    pub code: u16,
    pub flag: Option<ResponseFlag>,
    /// The gRPC status (gRPC requests): `request_protocol="grpc"`.
    pub grpc: Option<u8>,
    /// The worker's table was full: labels beyond the source are unknown.
    pub overflow: bool,
    pub requests: u64,
    pub duration: Vec<u64>,
    pub duration_sum_ms: f64,
    pub request_bytes: Vec<u64>,
    pub request_bytes_sum: u64,
    pub response_bytes: Vec<u64>,
    pub response_bytes_sum: u64,
}

/// What Istio's source labels say of a SPIFFE ID
/// (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`):
/// (workload, namespace). The service account stands for the workload
/// (the mesh has no workload-name exchange); anything else is `unknown`.
pub fn spiffe_workload(id: &str) -> (&str, &str) {
    let path = id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(_, p)| p);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => (sa, ns),
        _ => ("unknown", "unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(source: u16, code: u16, ms: u64) -> Sample {
        Sample {
            source,
            outbound: false,
            code,
            flag: None,
            grpc: None,
            duration: Duration::from_millis(ms),
            request_bytes: 100,
            response_bytes: 2000,
        }
    }

    #[test]
    fn grpc_statuses_are_series_of_their_own() {
        let m = MeshStats::new(1);
        let a = m.sources.intern(Some("spiffe://mesh/ns/shop/sa/web"));
        let ok = Sample {
            grpc: Some(0),
            ..sample(a, 200, 1)
        };
        let unavailable = Sample {
            grpc: Some(14),
            ..sample(a, 200, 1)
        };
        m.record(0, &ok);
        m.record(0, &ok);
        m.record(0, &unavailable);
        m.record(0, &sample(a, 200, 1));
        let mut got: Vec<(Option<u8>, u64)> =
            m.series().iter().map(|s| (s.grpc, s.requests)).collect();
        got.sort();
        assert_eq!(got, [(None, 1), (Some(0), 2), (Some(14), 1)]);
    }

    #[test]
    fn requests_are_counted_by_source_code_and_flag_across_workers() {
        let m = MeshStats::new(2);
        let a = m.sources.intern(Some("spiffe://mesh/ns/shop/sa/web"));
        assert_eq!(m.sources.intern(Some("spiffe://mesh/ns/shop/sa/web")), a);
        m.record(0, &sample(a, 200, 3));
        m.record(1, &sample(a, 200, 30));
        m.record(1, &sample(UNKNOWN, 503, 1));
        let mut flagged = sample(UNKNOWN, 503, 1);
        flagged.flag = Some(ResponseFlag::UpstreamOverflow);
        m.record(0, &flagged);
        let series = m.series();
        assert_eq!(series.len(), 3, "{series:#?}");
        let web = series
            .iter()
            .find(|s| &*s.source == "spiffe://mesh/ns/shop/sa/web")
            .expect("web");
        assert_eq!((web.code, web.requests), (200, 2));
        assert_eq!(web.duration[bucket(&DURATION_BUCKETS_MS, 3.0)], 1);
        assert_eq!(web.duration[bucket(&DURATION_BUCKETS_MS, 30.0)], 1);
        assert_eq!(web.response_bytes_sum, 4000);
        assert!(
            series
                .iter()
                .any(|s| s.flag == Some(ResponseFlag::UpstreamOverflow))
        );
    }

    #[test]
    fn cardinality_is_bounded_by_sources_and_slots() {
        let m = MeshStats::new(1);
        for i in 0..MAX_SOURCES + 10 {
            m.sources
                .intern(Some(&format!("spiffe://mesh/ns/n/sa/s{i}")));
        }
        assert_eq!(
            m.sources.intern(Some("spiffe://mesh/ns/n/sa/late")),
            OVERFLOW
        );
        for code in 0..2000u16 {
            m.record(0, &sample(UNKNOWN, code, 1));
        }
        let series = m.series();
        assert!(series.len() <= SLOTS + 1);
        assert_eq!(series.iter().map(|s| s.requests).sum::<u64>(), 2000);
        assert!(series.iter().any(|s| s.overflow));
    }

    #[test]
    fn spiffe_ids_name_a_workload_and_namespace() {
        assert_eq!(
            spiffe_workload("spiffe://cluster.local/ns/shop/sa/reviews"),
            ("reviews", "shop")
        );
        assert_eq!(spiffe_workload("spiffe://x/other"), ("unknown", "unknown"));
        assert_eq!(spiffe_workload("not a uri"), ("unknown", "unknown"));
    }
}
