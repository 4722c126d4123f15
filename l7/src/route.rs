//! Where a request goes: a listener's routes, first match wins, each with
//! a match (`route/matcher.rs`), compiled once per snapshot into an index
//! (`route/index.rs`) whose lookup cost does not grow with the number of
//! routes for host, exact-path and prefix matches; and each with an action:
//! forward to a cluster or a weighted split of clusters (optionally sticky
//! by a header or cookie), redirect, or answer directly. Forwarding may
//! rewrite the path and host and mirror the request.
//!
//! `control` builds these types from YAML; the request flow (`phases.rs`)
//! asks [`RouteTable::find`] once per request.

pub mod index;
pub mod matcher;

use std::sync::Arc;
use std::time::Duration;

use regex::bytes::Regex;
use ringmesh_core::Cluster;

use crate::headers::HeaderOps;
use crate::metrics::{MirrorStats, RouteStats, UpstreamStats};
use matcher::{RequestMatch, RequestView};

/// A cluster a routed request can go to, with its HTTP settings.
#[derive(Debug)]
pub struct Target {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// The cluster's HTTP statistics.
    pub stats: Arc<UpstreamStats>,
    /// The cluster's connection pool settings.
    pub pool: crate::pool::PoolSettings,
    /// The cluster's retry budget.
    pub budget: Arc<crate::retry::RetryBudget>,
    /// The cluster as the mesh metrics' destination (interned).
    pub mesh_id: u16,
    /// Speak HTTP/2 to the cluster's endpoints (`http2: true`).
    pub http2: bool,
}

/// One cluster of a forwarding route, with its share.
#[derive(Debug)]
pub struct WeightedTarget {
    /// Where the requests go.
    pub target: Target,
    /// Its weight (0 takes nothing).
    pub weight: u32,
    /// Requests of this listener and route sent to this cluster.
    pub stats: Arc<RouteStats>,
}

/// What keeps a user on one cluster of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The value of this header (lowercase name).
    Header(Box<[u8]>),
    /// The value of this cookie.
    Cookie(Box<[u8]>),
}

/// How the path sent upstream is rewritten.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the part the route's path condition matched.
    Prefix(Box<[u8]>),
    /// Replace every match of the regex with the substitution (`$1`).
    Regex {
        /// The pattern.
        regex: Regex,
        /// The replacement, with `$name` / `${name}` group references.
        substitution: Box<[u8]>,
    },
}

/// How the `Host` sent upstream is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRewrite {
    /// This value.
    Literal(Box<[u8]>),
    /// The chosen cluster's name.
    FromCluster,
}

/// A forwarding route's rewrites.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// The path.
    pub path: Option<PathRewrite>,
    /// The host.
    pub host: Option<HostRewrite>,
}

/// Traffic mirroring: a copy of a share of requests goes to a shadow
/// cluster, fire and forget (`mirror.rs`).
#[derive(Debug)]
pub struct Mirror {
    /// The shadow cluster.
    pub target: Target,
    /// Share of requests copied, in parts per million.
    pub per_million: u32,
    /// Copies in flight at once, over all workers (its own breaker).
    pub max_in_flight: u32,
    /// Copies by result.
    pub stats: Arc<MirrorStats>,
}

/// Forwarding: to one cluster or a weighted split.
#[derive(Debug)]
pub struct Forward {
    /// The clusters (one for `cluster:`), with their weights.
    pub targets: Vec<WeightedTarget>,
    /// Sum of the weights (> 0).
    pub total_weight: u64,
    /// Keeps a user on one cluster of a split.
    pub sticky: Option<Sticky>,
    /// From the whole request received to the whole response head (504,
    /// flag `UT`). Envoy's route timeout, default 15 s.
    pub timeout: Duration,
    /// Path and host rewrites.
    pub rewrite: Rewrite,
    /// Traffic mirroring.
    pub mirror: Option<Mirror>,
    /// Fault injection (boxed: rare, and large next to the rest).
    pub fault: Option<Box<crate::fault::Fault>>,
    /// Time each attempt has for its response head (504 `UT`, or a retry);
    /// the route `timeout` when absent.
    pub per_try_timeout: Option<Duration>,
    /// No bytes either way for this long while a body streams ends the
    /// request (the listener's `idle_timeout` when absent).
    pub idle_timeout: Option<Duration>,
    /// Retry policy (boxed: optional and larger than a pointer).
    pub retries: Option<Box<crate::retry::RetryPolicy>>,
}

impl Forward {
    /// Picks the cluster for a request: by its sticky key's hash when it
    /// carries one, else by a draw from the worker's generator.
    #[inline]
    pub fn pick(&self, req: &RequestView<'_>) -> usize {
        if self.targets.len() == 1 {
            return 0;
        }
        let key = self
            .sticky
            .as_ref()
            .and_then(|s| sticky_value(s, req))
            .map(stable_hash);
        let mut point = match key {
            Some(h) => ((u128::from(h) * u128::from(self.total_weight)) >> 64) as u64,
            None => crate::random::below(self.total_weight),
        };
        for (i, t) in self.targets.iter().enumerate() {
            let w = u64::from(t.weight);
            if point < w {
                return i;
            }
            point -= w;
        }
        // Unreachable with total_weight the sum of the weights.
        self.targets.len() - 1
    }
}

/// The request's value of the sticky header or cookie.
fn sticky_value<'a>(sticky: &Sticky, req: &RequestView<'a>) -> Option<&'a [u8]> {
    let buf = req.buf;
    match sticky {
        Sticky::Header(name) => req
            .fields
            .iter()
            .find(|f| f.name.get(buf).eq_ignore_ascii_case(name))
            .map(|f| f.value.get(buf)),
        Sticky::Cookie(name) => req
            .fields
            .iter()
            .filter(|f| f.name.get(buf).eq_ignore_ascii_case(b"cookie"))
            .flat_map(|f| f.value.get(buf).split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq] == **name).then(|| &pair[eq + 1..])
            }),
    }
}

/// FNV-1a, then a mix: the same value lands on the same cluster on every
/// worker and every proxy.
fn stable_hash(v: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in v {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A redirect answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `http` or `https`; the request's when absent.
    pub scheme: Option<&'static str>,
    /// Host; the request's when absent.
    pub host: Option<Box<str>>,
    /// Port; the request's when absent (dropped when the scheme changes).
    pub port: Option<u16>,
    /// The new path, or the new prefix in place of the matched one.
    pub path: Option<RedirectPath>,
    /// Drop the query.
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// The path of a redirect.
#[derive(Debug, Clone)]
pub enum RedirectPath {
    /// Replaces the whole path.
    Path(Box<str>),
    /// Replaces the part the route's path condition matched.
    Prefix(Box<str>),
}

/// A direct answer.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    /// Status (200-599).
    pub status: u16,
    /// Body, sent as `text/plain`.
    pub body: Box<[u8]>,
}

/// What a route does with the requests it matches.
// Forwarding is the common action and is read on every request: kept
// inline (no pointer to chase) though the answers are smaller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Action {
    /// Forward upstream.
    Forward(Forward),
    /// Answer a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct(DirectResponse),
}

/// One route of an HTTP listener.
#[derive(Debug)]
pub struct Route {
    /// Name (metric label `route`, access-log field); its index when unnamed.
    pub name: Arc<str>,
    /// What requests it takes.
    pub matcher: RequestMatch,
    /// What it does with them.
    pub action: Action,
    /// Operations on the request sent upstream (listener's and route's, folded).
    pub request_headers: HeaderOps,
    /// Operations on the response sent to the client (folded likewise).
    pub response_headers: HeaderOps,
    /// Requests this route answered itself (redirect, direct response).
    pub local_stats: Arc<RouteStats>,
    /// The route's local rate limit.
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
}

impl Route {
    /// The statistics a request of this route is counted in: the picked
    /// cluster's (forwarding), else the route's own.
    pub fn stats(&self, target: Option<usize>) -> &Arc<RouteStats> {
        match (&self.action, target) {
            (Action::Forward(f), Some(t)) => {
                f.targets.get(t).map_or(&self.local_stats, |t| &t.stats)
            }
            _ => &self.local_stats,
        }
    }

    /// Every statistics object of the route (hits are their sum).
    pub fn all_stats(&self) -> impl Iterator<Item = &Arc<RouteStats>> {
        let targets = match &self.action {
            Action::Forward(f) => &f.targets[..],
            _ => &[],
        };
        std::iter::once(&self.local_stats).chain(targets.iter().map(|t| &t.stats))
    }
}

/// A listener's routes, first match wins, with their index.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    index: index::Index,
    /// Some route has a host condition other than `*`.
    has_hosts: bool,
}

impl RouteTable {
    /// Compiles the table (builds the index).
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let index = index::Index::build(routes.iter().map(|r| &r.matcher));
        let has_hosts = routes.iter().any(|r| {
            r.matcher
                .hosts
                .iter()
                .any(|h| *h != matcher::HostPattern::Any)
        });
        RouteTable {
            routes,
            index,
            has_hosts,
        }
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route matching `req`, with its index. The request's host
    /// key is computed once, and only when some route names hosts.
    #[inline]
    pub fn find(&self, req: &RequestView<'_>) -> Option<(usize, &Route)> {
        let routes = &self.routes;
        // Initialised only for tables with host routes: zeroing 256 bytes
        // per request is not free.
        let mut buf;
        let host = if self.has_hosts {
            buf = [0u8; 256];
            matcher::host_key(req.host, &mut buf)
        } else {
            None
        };
        let i = self.index.find(req, host, |i| {
            routes[i as usize].matcher.matches_with(req, host)
        })?;
        Some((i as usize, &routes[i as usize]))
    }
}

#[cfg(test)]
mod tests;
