//! Per-request statistics: per-core slots written by the worker that served
//! the request, merged when the control side scrapes them. Registered by
//! name and kept across reloads, so counters never go back.
//!
//! Families (rendered by `control/src/prometheus.rs`, documented in the
//! README): `ringmesh_http_requests_total{listener,cluster,code}`,
//! `ringmesh_http_request_duration_seconds{listener,cluster}`,
//! `ringmesh_http_requests_active{listener}`,
//! `ringmesh_http_rejected_total{listener,reason}`,
//! `ringmesh_upstream_requests_total{cluster,code}`,
//! `ringmesh_upstream_pool_requests_total{cluster,connection}`,
//! `ringmesh_upstream_replayed_total{cluster}`,
//! `ringmesh_upstream_bad_responses_total{cluster}`,
//! `ringmesh_retries_total{cluster,result}`,
//! `ringmesh_http_timeouts_total{listener,route,cluster,kind}`,
//! `ringmesh_http_grpc_responses_total{listener,route,cluster,grpc_code}`,
//! `ringmesh_http2_connections_closed_total{listener,reason}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ringmesh_core::metrics::{Histogram, HistogramSnapshot, merge_histograms};
use ringmesh_core::per_core::{Counter, Gauge, PerCore, sum};

use crate::retry::{BudgetSettings, RetryBudget};

/// Upper bounds (seconds) of the request-duration histogram.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Why the proxy refused a request itself before routing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The head broke a rule of `codec::h1` (label from [`crate::codec::h1::HeadError`]).
    Head(crate::codec::h1::HeadError),
    /// The head did not arrive within `request_headers_timeout` (408).
    HeaderTimeout,
    /// The chunked body broke the framing rules (400, or a reset once the
    /// response had started).
    ChunkedBody,
    /// CONNECT (405).
    Connect,
    /// An HTTP/2 client reset its streams faster than it let them finish
    /// (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM, connection closed.
    RapidReset,
    /// An HTTP/2 client broke the protocol on its connection (bad frames,
    /// a CONTINUATION flood, a header list over the limit, too many
    /// streams reset before accepted): GOAWAY, connection closed.
    Http2Protocol,
    /// An HTTP/2 request the proxy could not take (pseudo-headers it cannot
    /// forward): the stream is reset or answered 400.
    Http2Request,
}

/// Every rejection label, in index order.
pub const REJECTION_LABELS: [&str; 18] = [
    "malformed_head",
    "bare_lf",
    "unsupported_version",
    "uri_too_long",
    "head_too_large",
    "too_many_headers",
    "invalid_content_length",
    "content_length_and_transfer_encoding",
    "invalid_transfer_encoding",
    "unsupported_transfer_coding",
    "invalid_host",
    "header_timeout",
    "invalid_chunked_body",
    "method_connect",
    "h2_rapid_reset",
    "h2_protocol_error",
    "h2_bad_request",
    "other",
];

impl Rejection {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Head(e) => e.as_str(),
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::ChunkedBody => "invalid_chunked_body",
            Rejection::Connect => "method_connect",
            Rejection::RapidReset => "h2_rapid_reset",
            Rejection::Http2Protocol => "h2_protocol_error",
            Rejection::Http2Request => "h2_bad_request",
        }
    }

    fn index(self) -> usize {
        let label = self.as_str();
        REJECTION_LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(REJECTION_LABELS.len() - 1)
    }
}

/// The status class of a response: 0 for 1xx .. 4 for 5xx.
#[inline]
pub fn code_class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// Labels of [`code_class`].
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One worker's counters of one HTTP listener.
#[derive(Debug, Default)]
pub struct ListenerCore {
    pub(crate) active: Gauge,
    pub(crate) rejected: [Counter; REJECTION_LABELS.len()],
}

/// Statistics of one HTTP listener.
#[derive(Debug)]
pub struct HttpListenerStats {
    pub(crate) cores: PerCore<ListenerCore>,
}

impl HttpListenerStats {
    pub(crate) fn reject(&self, core: usize, why: Rejection) {
        self.cores.get(core).rejected[why.index()].inc();
    }

    /// Requests in flight now.
    pub fn active(&self) -> i64 {
        self.cores.iter().map(|c| c.active.get()).sum()
    }

    /// Rejections by label.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        REJECTION_LABELS
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, sum(&self.cores, |c| c.rejected[i].get())))
            .collect()
    }
}

/// Which timeout expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The route `timeout` (the whole request, retries included).
    Request = 0,
    /// One attempt's `per_try_timeout`.
    PerTry = 1,
    /// No bytes either way for `idle_timeout` while streaming.
    Idle = 2,
}

/// Labels of [`TimeoutKind`], in index order.
pub const TIMEOUT_KINDS: [&str; 3] = ["request", "per_try", "idle"];

/// One worker's counters of one (listener, route, cluster) triple.
#[derive(Debug, Default)]
pub struct RouteCore {
    pub(crate) codes: [Counter; 5],
    pub(crate) duration: Histogram,
    pub(crate) timeouts: [Counter; 3],
    /// gRPC responses by status code (0-16).
    pub(crate) grpc: [Counter; 17],
}

/// Requests of one listener and route that went to (or were meant for)
/// one cluster (`-` for the route's own answers; route `-` for requests
/// no route matched).
#[derive(Debug)]
pub struct RouteStats {
    pub(crate) cores: PerCore<RouteCore>,
}

impl RouteStats {
    pub(crate) fn record(&self, core: usize, status: u16, elapsed: std::time::Duration) {
        let c = self.cores.get(core);
        c.codes[code_class(status)].inc();
        c.duration.record(REQUEST_BUCKETS, elapsed);
    }

    /// Responses by code class.
    pub fn codes(&self) -> [u64; 5] {
        std::array::from_fn(|i| sum(&self.cores, |c| c.codes[i].get()))
    }

    pub(crate) fn record_grpc(&self, core: usize, code: u8) {
        if let Some(c) = self.cores.get(core).grpc.get(usize::from(code)) {
            c.inc();
        }
    }

    /// gRPC responses by status code (index = code, names in
    /// [`crate::h2::grpc::CODE_NAMES`]).
    pub fn grpc_codes(&self) -> [u64; 17] {
        std::array::from_fn(|i| sum(&self.cores, |c| c.grpc[i].get()))
    }

    /// Request durations.
    pub fn duration(&self) -> HistogramSnapshot {
        merge_histograms(REQUEST_BUCKETS, self.cores.iter().map(|c| &c.duration))
    }

    pub(crate) fn timed_out(&self, core: usize, kind: TimeoutKind) {
        self.cores.get(core).timeouts[kind as usize].inc();
    }

    /// Timeouts by [`TIMEOUT_KINDS`] label.
    pub fn timeouts(&self) -> [u64; 3] {
        std::array::from_fn(|i| sum(&self.cores, |c| c.timeouts[i].get()))
    }
}

/// What became of a retry the policy wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryResult {
    /// Granted and sent.
    Sent = 0,
    /// The cluster's retry budget was spent: not sent.
    BudgetExhausted = 1,
    /// The cluster's `max_retries` breaker was full: not sent.
    Overflow = 2,
}

/// Labels of [`RetryResult`], in index order.
pub const RETRY_RESULTS: [&str; 3] = ["sent", "budget_exhausted", "overflow"];

/// One worker's counters of one cluster's HTTP traffic.
#[derive(Debug, Default)]
pub struct UpstreamCore {
    pub(crate) codes: [Counter; 5],
    pub(crate) reused: Counter,
    pub(crate) new: Counter,
    pub(crate) replayed: Counter,
    pub(crate) bad_responses: Counter,
    pub(crate) retries: [Counter; 3],
}

/// HTTP statistics of one cluster.
#[derive(Debug)]
pub struct UpstreamStats {
    pub(crate) cores: PerCore<UpstreamCore>,
}

impl UpstreamStats {
    /// Upstream responses by code class.
    pub fn codes(&self) -> [u64; 5] {
        std::array::from_fn(|i| sum(&self.cores, |c| c.codes[i].get()))
    }

    /// Requests sent on a pooled (reused) connection, and on a new one.
    pub fn pool(&self) -> (u64, u64) {
        (
            sum(&self.cores, |c| c.reused.get()),
            sum(&self.cores, |c| c.new.get()),
        )
    }

    /// Requests replayed on a new connection after a pooled one failed
    /// before any response byte.
    pub fn replayed(&self) -> u64 {
        sum(&self.cores, |c| c.replayed.get())
    }

    /// Malformed responses (502, connection discarded).
    pub fn bad_responses(&self) -> u64 {
        sum(&self.cores, |c| c.bad_responses.get())
    }

    /// Retries by [`RETRY_RESULTS`] label.
    pub fn retries(&self) -> [u64; 3] {
        std::array::from_fn(|i| sum(&self.cores, |c| c.retries[i].get()))
    }
}

/// Every HTTP statistics object, by name; entries live for the process.
#[derive(Debug)]
pub struct HttpStatsRegistry {
    workers: usize,
    listeners: Mutex<BTreeMap<String, Arc<HttpListenerStats>>>,
    routes: Mutex<BTreeMap<RouteKey, Arc<RouteStats>>>,
    mirrors: Mutex<BTreeMap<RouteKey, Arc<MirrorStats>>>,
    faults: Mutex<BTreeMap<(String, String), Arc<FaultStats>>>,
    limits: Mutex<BTreeMap<(String, String), Arc<RateLimitStats>>>,
    upstreams: Mutex<BTreeMap<String, Arc<UpstreamStats>>>,
    budgets: Mutex<BTreeMap<String, Arc<RetryBudget>>>,
    spans: Arc<crate::trace::SpanSink>,
    taps: Arc<crate::tap::TapHub>,
    mesh: Arc<crate::mesh::MeshStats>,
}

/// (listener, route, cluster) names.
pub type RouteKey = (String, String, String);

fn key(listener: &str, route: &str, cluster: &str) -> RouteKey {
    (listener.to_owned(), route.to_owned(), cluster.to_owned())
}

/// What became of a mirrored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    /// The shadow answered (its response was discarded).
    Sent,
    /// No answer: connect failure, reset, timeout.
    Failed,
    /// The shadow cluster's breaker was full: not sent.
    Overflow,
    /// The request's body was not all in the buffer: not copied.
    Skipped,
}

/// Labels of [`MirrorResult`], in index order.
pub const MIRROR_RESULTS: [&str; 4] = ["sent", "failed", "overflow", "skipped"];

/// One worker's mirror counters.
#[derive(Debug, Default)]
pub struct MirrorCore {
    pub(crate) results: [Counter; 4],
}

/// Copies of one route's requests to one shadow cluster.
#[derive(Debug)]
pub struct MirrorStats {
    pub(crate) cores: PerCore<MirrorCore>,
    /// Copies in flight now, over all workers (the mirror's breaker; only
    /// mirrored requests touch it).
    pub(crate) in_flight: std::sync::atomic::AtomicU32,
}

impl MirrorStats {
    pub(crate) fn count(&self, core: usize, result: MirrorResult) {
        self.cores.get(core).results[result as usize].inc();
    }

    /// Copies in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Copies by result, in [`MIRROR_RESULTS`] order.
    pub fn results(&self) -> [u64; 4] {
        std::array::from_fn(|i| sum(&self.cores, |c| c.results[i].get()))
    }
}

/// A rate limit's bucket and refusals (kept across reloads).
#[derive(Debug, Default)]
pub struct RateLimitStats {
    /// The shared bucket.
    pub(crate) tat: std::sync::atomic::AtomicU64,
    /// Requests refused (one counter for all workers: only refusals
    /// touch it).
    pub(crate) limited: std::sync::atomic::AtomicU64,
    /// Buckets by key, for keyed limits.
    pub(crate) keyed: crate::ratelimit::KeyedBuckets,
}

impl RateLimitStats {
    /// Requests refused (429).
    pub fn limited(&self) -> u64 {
        self.limited.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Faults injected into one route's requests.
#[derive(Debug)]
pub struct FaultStats {
    pub(crate) cores: PerCore<FaultCore>,
}

/// One worker's fault counters.
#[derive(Debug, Default)]
pub struct FaultCore {
    pub(crate) delays: Counter,
    pub(crate) aborts: Counter,
}

impl FaultStats {
    /// (delays, aborts) injected.
    pub fn injected(&self) -> (u64, u64) {
        (
            sum(&self.cores, |c| c.delays.get()),
            sum(&self.cores, |c| c.aborts.get()),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HttpStatsRegistry {
    /// A registry for `workers` cores.
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            listeners: Mutex::new(BTreeMap::new()),
            routes: Mutex::new(BTreeMap::new()),
            mirrors: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(BTreeMap::new()),
            limits: Mutex::new(BTreeMap::new()),
            upstreams: Mutex::new(BTreeMap::new()),
            budgets: Mutex::new(BTreeMap::new()),
            taps: Arc::default(),
            mesh: Arc::new(crate::mesh::MeshStats::new(workers)),
            spans: Arc::new(crate::trace::SpanSink::new(
                workers,
                crate::trace::span::QUEUE,
            )),
        }
    }

    /// The stats of HTTP listener `name`, created on first use.
    pub fn listener(&self, name: &str) -> Arc<HttpListenerStats> {
        lock(&self.listeners)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(HttpListenerStats {
                    cores: PerCore::new(self.workers),
                })
            })
            .clone()
    }

    /// The stats of requests from `listener` through `route` to `cluster`.
    pub fn route(&self, listener: &str, route: &str, cluster: &str) -> Arc<RouteStats> {
        lock(&self.routes)
            .entry(key(listener, route, cluster))
            .or_insert_with(|| {
                Arc::new(RouteStats {
                    cores: PerCore::new(self.workers),
                })
            })
            .clone()
    }

    /// The HTTP stats of cluster `name`.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamStats> {
        lock(&self.upstreams)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(UpstreamStats {
                    cores: PerCore::new(self.workers),
                })
            })
            .clone()
    }

    /// Cluster `name`'s retry budget: kept across reloads (a reload does
    /// not refill a spent budget) unless its settings changed.
    pub fn retry_budget(&self, name: &str, settings: BudgetSettings) -> Arc<RetryBudget> {
        let mut budgets = lock(&self.budgets);
        match budgets.get(name) {
            Some(b) if b.settings() == settings => b.clone(),
            _ => {
                let b = Arc::new(RetryBudget::new(settings, self.workers));
                budgets.insert(name.to_owned(), b.clone());
                b
            }
        }
    }

    /// The process's mesh metrics (Istio's names).
    pub fn mesh(&self) -> Arc<crate::mesh::MeshStats> {
        self.mesh.clone()
    }

    /// The process's open taps.
    pub fn taps(&self) -> Arc<crate::tap::TapHub> {
        self.taps.clone()
    }

    /// The process's span queue (tracing).
    pub fn spans(&self) -> Arc<crate::trace::SpanSink> {
        self.spans.clone()
    }

    /// Every HTTP listener's stats.
    pub fn listeners(&self) -> Vec<(String, Arc<HttpListenerStats>)> {
        lock(&self.listeners)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The counters of copies mirrored from `listener`'s `route` to `cluster`.
    pub fn mirror(&self, listener: &str, route: &str, cluster: &str) -> Arc<MirrorStats> {
        lock(&self.mirrors)
            .entry(key(listener, route, cluster))
            .or_insert_with(|| {
                Arc::new(MirrorStats {
                    cores: PerCore::new(self.workers),
                    in_flight: std::sync::atomic::AtomicU32::new(0),
                })
            })
            .clone()
    }

    /// The fault counters of `listener`'s `route`.
    pub fn fault(&self, listener: &str, route: &str) -> Arc<FaultStats> {
        lock(&self.faults)
            .entry((listener.to_owned(), route.to_owned()))
            .or_insert_with(|| {
                Arc::new(FaultStats {
                    cores: PerCore::new(self.workers),
                })
            })
            .clone()
    }

    /// The rate limit bucket of `listener`'s `route` (`-`: the listener's own).
    pub fn rate_limit(&self, listener: &str, route: &str) -> Arc<RateLimitStats> {
        lock(&self.limits)
            .entry((listener.to_owned(), route.to_owned()))
            .or_default()
            .clone()
    }

    /// Every rate limit's counters, by (listener, route).
    pub fn rate_limits(&self) -> Vec<((String, String), Arc<RateLimitStats>)> {
        lock(&self.limits)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every route's fault counters, by (listener, route).
    pub fn faults(&self) -> Vec<((String, String), Arc<FaultStats>)> {
        lock(&self.faults)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every mirror's counters.
    pub fn mirrors(&self) -> Vec<(RouteKey, Arc<MirrorStats>)> {
        lock(&self.mirrors)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every (listener, route, cluster) triple's stats.
    pub fn routes(&self) -> Vec<(RouteKey, Arc<RouteStats>)> {
        lock(&self.routes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every cluster's HTTP stats.
    pub fn upstreams(&self) -> Vec<(String, Arc<UpstreamStats>)> {
        lock(&self.upstreams)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
