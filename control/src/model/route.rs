//! `listeners[].routes[]`: an HTTP listener's routes, first match wins
//! (README "HTTP routes"). Decoding checks each route on its own (regexes
//! compile within their limits, one action, options that fit the action);
//! `validate.rs` checks what needs the whole document (clusters exist,
//! names are unique, no route is shadowed by an earlier one).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use ringmesh_l7::headers::{HeaderOpsSpec, PROTECTED};
use ringmesh_l7::route::matcher::{
    HeaderMatch, HostPattern, PathMatch, QueryMatch, RequestMatch, ValueTest, compile_regex,
};

use super::Origin;
use super::listener::human_opt;
use crate::decode::{Decoder, Fields, boolean, duration, integer, list, name, required, scalar};
use crate::limits::quote;
use crate::yaml::{Node, Value};

/// One route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteDoc {
    /// Name (metric label `route`); its index when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What requests it takes.
    #[serde(rename = "match")]
    pub matcher: MatchDoc,
    /// What it does with them.
    #[serde(flatten)]
    pub action: ActionDoc,
    /// Keeps a user on one cluster of a split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyDoc>,
    /// Route timeout (the listener's `timeout` when absent).
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Time each attempt has for its response head.
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// No bytes either way for this long while a body streams ends the
    /// request (the listener's `idle_timeout` when absent).
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Retry policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesDoc>,
    /// Path and host rewrites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteDoc>,
    /// Traffic mirroring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorDoc>,
    /// Fault injection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultDoc>,
    /// Local rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitDoc>,
    /// Operations on requests sent upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOpsDoc>,
    /// Operations on responses sent to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOpsDoc>,
    #[serde(skip)]
    pub(crate) origin: Origin,
    #[serde(skip)]
    pub(crate) name_origin: Origin,
    #[serde(skip)]
    pub(crate) action_origin: Origin,
}

/// A route's `match`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MatchDoc {
    /// Host patterns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<String>,
    /// The path condition: (`path` | `path_prefix` | `path_starts_with` |
    /// `path_regex`, value).
    #[serde(flatten)]
    pub path: Option<PathDoc>,
    /// Methods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<String>,
    /// Header conditions by lowercase name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ConditionDoc>,
    /// Query parameter conditions by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ConditionDoc>,
}

/// The path condition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathDoc {
    /// Equal.
    Path(String),
    /// Starts with on a segment boundary.
    PathPrefix(String),
    /// Starts with, byte for byte.
    PathStartsWith(String),
    /// Whole-path regex.
    PathRegex(String),
}

/// A header or query condition.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionDoc {
    /// The test.
    #[serde(flatten)]
    pub test: TestDoc,
    /// Negate the result (headers only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// The test of a condition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestDoc {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Whole-value regex.
    Regex(String),
    /// Present (true) or absent.
    Present(bool),
}

/// What a route does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionDoc {
    /// Forward to one cluster.
    Cluster(String),
    /// Forward to weighted clusters.
    Split(Vec<SplitDoc>),
    /// Answer a redirect.
    Redirect(RedirectDoc),
    /// Answer directly.
    DirectResponse(DirectResponseDoc),
}

/// One cluster of a split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitDoc {
    /// Cluster name.
    pub cluster: String,
    /// Weight.
    pub weight: u32,
    #[serde(skip)]
    pub(crate) cluster_origin: Origin,
}

/// What keeps a user on one cluster of a split.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StickyDoc {
    /// A header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

/// A redirect.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedirectDoc {
    /// `http` or `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Whole new path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// New prefix in place of the matched one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Drop the query.
    pub strip_query: bool,
    /// 301 (default), 302, 303, 307, 308.
    pub status: u16,
    #[serde(skip)]
    pub(crate) prefix_origin: Origin,
}

/// A direct response.
#[derive(Debug, Clone, Serialize)]
pub struct DirectResponseDoc {
    /// Status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// Rewrites before forwarding.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RewriteDoc {
    /// New prefix in place of the matched one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Regex substitution on the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<RegexRewriteDoc>,
    /// Host to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Send the chosen cluster's name as the host.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host_from_cluster: bool,
    #[serde(skip)]
    pub(crate) path_prefix_origin: Origin,
}

/// `rewrite.path_regex`.
#[derive(Debug, Clone, Serialize)]
pub struct RegexRewriteDoc {
    /// Pattern.
    pub pattern: String,
    /// Replacement (`$1`, `${name}`).
    pub substitution: String,
}

/// `mirror`.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorDoc {
    /// Shadow cluster.
    pub cluster: String,
    /// Share of requests, 0-100.
    pub percent: f64,
    /// Copies in flight at once (the mirror's own breaker).
    pub max_in_flight: u32,
    #[serde(skip)]
    pub(crate) cluster_origin: Origin,
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOpsDoc {
    /// Replace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    /// Remove.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOpsDoc {
    /// The runtime form.
    pub fn spec(&self) -> HeaderOpsSpec {
        HeaderOpsSpec {
            set: self.set.clone(),
            add: self.add.clone(),
            remove: self.remove.clone(),
        }
    }

    /// Decodes `{ set: {..}, add: {..}, remove: [..] }`.
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let mut ops = HeaderOpsDoc::default();
        for key in ["set", "add"] {
            let Some((n, p)) = f.take(key) else { continue };
            let Some(map) = map_entries(d, n, &p) else {
                continue;
            };
            let mut pairs = Vec::with_capacity(map.len());
            for (k, kn, v) in map {
                let kp = crate::decode::child(&p, &quote(k));
                if !header_name(d, kn, &kp, k) {
                    continue;
                }
                let Some(value) = scalar(d, v, &kp, "a header value") else {
                    continue;
                };
                if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    d.error(
                        v.mark,
                        &kp,
                        "header values may not contain control characters",
                    );
                    continue;
                }
                pairs.push((k.to_owned(), value.to_owned()));
            }
            if key == "set" {
                ops.set = pairs;
            } else {
                ops.add = pairs;
            }
        }
        if let Some((n, p)) = f.take("remove") {
            if let Some(items) = list(d, n, &p) {
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if let Some(k) = scalar(d, item, &ip, "a header name") {
                        if header_name(d, item, &ip, k) {
                            ops.remove.push(k.to_owned());
                        }
                    }
                }
            }
        }
        f.finish(d, &["set", "add", "remove"]);
        Some(ops)
    }
}

/// The entries of a mapping node with string keys (errors recorded).
fn map_entries<'n>(
    d: &mut Decoder,
    node: &'n Node,
    path: &str,
) -> Option<Vec<(&'n str, &'n Node, &'n Node)>> {
    match &node.value {
        Value::Map(entries) => Some(
            entries
                .iter()
                .filter_map(|(k, v)| match &k.value {
                    Value::Scalar { text, .. } => Some((text.as_str(), k, v)),
                    _ => {
                        d.error(k.mark, path, "keys must be strings");
                        None
                    }
                })
                .collect(),
        ),
        Value::Null => Some(Vec::new()),
        _ => {
            d.error(
                node.mark,
                path,
                format!("expected a mapping, found {}", node.kind()),
            );
            None
        }
    }
}

/// Checks a header name an operation may use.
fn header_name(d: &mut Decoder, node: &Node, path: &str, name: &str) -> bool {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        d.error(
            node.mark,
            path,
            format!("invalid header name `{}`", quote(name)),
        );
        return false;
    }
    let lower = name.to_ascii_lowercase();
    if PROTECTED.contains(&lower.as_str()) {
        let hint = if lower == "host" {
            " (use `rewrite.host`)"
        } else {
            " (the proxy writes framing and hop-by-hop fields itself)"
        };
        d.error(
            node.mark,
            path,
            format!("header operations may not touch `{lower}`{hint}"),
        );
        return false;
    }
    true
}

/// `rate_limit` (route or listener).
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitDoc {
    /// Requests per second, for the whole proxy.
    pub requests_per_second: u32,
    /// Requests that may pass at once (default: `requests_per_second`).
    pub burst: u32,
    /// One bucket per `client`, `identity` or header value (`{ header: NAME }`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<LimitKeyDoc>,
    /// Most keys tracked at once (default 10,000).
    pub max_keys: u32,
}

/// `rate_limit.key`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKeyDoc {
    /// The client's IP address.
    Client,
    /// The client's SPIFFE identity.
    Identity,
    /// A header's value.
    Header(String),
}

impl LimitKeyDoc {
    fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        if let Value::Scalar { text, .. } = &n.value {
            return match text.as_str() {
                "client" => Some(LimitKeyDoc::Client),
                "identity" => Some(LimitKeyDoc::Identity),
                other => {
                    d.error(
                        n.mark,
                        p,
                        format!(
                            "unknown key `{}` (expected client, identity or {{ header: NAME }})",
                            quote(other)
                        ),
                    );
                    None
                }
            };
        }
        let mut f = Fields::of(d, n, p)?;
        let header = f.take("header");
        f.finish(d, &["header"]);
        let (hn, hp) = header.or_else(|| {
            d.error(n.mark, p, "expected client, identity or { header: NAME }");
            None
        })?;
        let h = scalar(d, hn, &hp, "a header name")?;
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            d.error(hn.mark, &hp, format!("invalid header name `{}`", quote(h)));
            return None;
        }
        Some(LimitKeyDoc::Header(h.to_ascii_lowercase()))
    }
}

/// Keys a keyed limit tracks by default.
pub const DEFAULT_RATE_LIMIT_KEYS: u32 = 10_000;

impl RateLimitDoc {
    /// The runtime form, with its long-lived bucket state.
    pub fn runtime(
        &self,
        state: std::sync::Arc<ringmesh_l7::metrics::RateLimitStats>,
    ) -> ringmesh_l7::ratelimit::RateLimit {
        use ringmesh_l7::ratelimit::{LimitKey, RateLimit};
        RateLimit {
            requests_per_second: self.requests_per_second,
            burst: self.burst,
            key: self.key.as_ref().map(|k| match k {
                LimitKeyDoc::Client => LimitKey::Client,
                LimitKeyDoc::Identity => LimitKey::Identity,
                LimitKeyDoc::Header(h) => LimitKey::Header(h.as_bytes().into()),
            }),
            max_keys: self.max_keys as usize,
            state,
        }
    }

    /// Decodes `{ requests_per_second, burst }`.
    pub(crate) fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let rps = required(d, &mut f, n, p, "requests_per_second")
            .and_then(|(vn, vp)| integer(d, vn, &vp, 1, 10_000_000).map(|v| v as u32));
        let burst = match f.take("burst") {
            Some((vn, vp)) => integer(d, vn, &vp, 1, 1_000_000_000).map(|v| Some(v as u32)),
            None => Some(None),
        };
        let key = match f.take("key") {
            Some((vn, vp)) => LimitKeyDoc::decode(d, vn, &vp).map(Some),
            None => Some(None),
        };
        let max_keys = match f.take("max_keys") {
            Some((vn, vp)) => integer(d, vn, &vp, 1, 1_000_000).map(|v| v as u32),
            None => Some(DEFAULT_RATE_LIMIT_KEYS),
        };
        f.finish(d, &["requests_per_second", "burst", "key", "max_keys"]);
        let rps = rps?;
        Some(RateLimitDoc {
            requests_per_second: rps,
            burst: burst?.unwrap_or(rps),
            key: key?,
            max_keys: max_keys?,
        })
    }
}

/// `retries`: Envoy's retry policy, with Istio's defaults for what is
/// retried.
#[derive(Debug, Clone, Serialize)]
pub struct RetriesDoc {
    /// Retries after the first attempt. Default 1 (Envoy's).
    pub attempts: u32,
    /// Conditions retried. Default Istio's: `connect-failure`,
    /// `refused-stream`, `retriable-status-codes` (503).
    pub on: Vec<String>,
    /// Time each attempt has (also settable on the route).
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Backoff between attempts.
    pub backoff: BackoffDoc,
    /// Statuses retried under `retriable-status-codes`. Default [503].
    pub retriable_status_codes: Vec<u16>,
    /// `previous_hosts` (default: a retry goes to an endpoint not tried
    /// yet when there is one) or `any`.
    pub retry_host_predicate: String,
    #[serde(skip)]
    pub(crate) origin: Origin,
}

/// `retries.backoff`: fully jittered exponential backoff.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BackoffDoc {
    /// First interval. Default 25ms.
    #[serde(serialize_with = "super::listener::human")]
    pub base: Duration,
    /// Cap, and the longest `Retry-After` honoured. Default 10 × base.
    #[serde(serialize_with = "super::listener::human")]
    pub max: Duration,
}

const RETRY_KEYS: &[&str] = &[
    "attempts",
    "on",
    "per_try_timeout",
    "backoff",
    "retriable_status_codes",
    "retry_host_predicate",
];

impl RetriesDoc {
    fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let attempts = match f.take("attempts") {
            None => Some(1),
            Some((vn, vp)) => integer(d, vn, &vp, 0, 10).map(|v| v as u32),
        };
        let on = match f.take("on") {
            None => Some(
                [
                    "connect-failure",
                    "refused-stream",
                    "retriable-status-codes",
                ]
                .map(String::from)
                .to_vec(),
            ),
            Some((vn, vp)) => {
                let mut ok = true;
                let mut names = Vec::new();
                for (i, item) in list(d, vn, &vp).unwrap_or(&[]).iter().enumerate() {
                    let ip = format!("{vp}[{i}]");
                    let Some(text) = scalar(d, item, &ip, "a retry condition") else {
                        ok = false;
                        continue;
                    };
                    if ringmesh_l7::retry::RetryOn::named(text).is_none() {
                        let known: Vec<&str> = ringmesh_l7::retry::RetryOn::NAMES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect();
                        d.error(
                            item.mark,
                            &ip,
                            format!(
                                "unknown retry condition `{}`: use one of {}",
                                quote(text),
                                known.join(", ")
                            ),
                        );
                        ok = false;
                    } else {
                        names.push(text.to_owned());
                    }
                }
                ok.then_some(names)
            }
        };
        let per_try_timeout = f.take("per_try_timeout").and_then(|(vn, vp)| {
            duration(
                d,
                vn,
                &vp,
                Duration::from_millis(1),
                Duration::from_secs(86400),
            )
        });
        let defaults = ringmesh_l7::retry::Backoff::default();
        let (mut backoff_base, mut backoff_max) = (Some(defaults.base), None);
        if let Some((vn, vp)) = f.take("backoff") {
            let mut g = Fields::of(d, vn, &vp)?;
            if let Some((xn, xp)) = g.take("base") {
                backoff_base = duration(d, xn, &xp, Duration::ZERO, Duration::from_secs(60));
            }
            if let Some((xn, xp)) = g.take("max") {
                backoff_max = duration(d, xn, &xp, Duration::ZERO, Duration::from_secs(600))
                    .map(Some)
                    .unwrap_or(None);
                if let (Some(b), Some(m)) = (backoff_base, backoff_max) {
                    if m < b {
                        d.error(xn.mark, &xp, "`backoff.max` is shorter than `backoff.base`");
                    }
                }
            }
            g.finish(d, &["base", "max"]);
        }
        let retriable_status_codes = match f.take("retriable_status_codes") {
            None => Some(vec![503]),
            Some((vn, vp)) => {
                let mut ok = true;
                let mut codes = Vec::new();
                for (i, item) in list(d, vn, &vp).unwrap_or(&[]).iter().enumerate() {
                    match integer(d, item, &format!("{vp}[{i}]"), 200, 599) {
                        Some(c) => codes.push(c as u16),
                        None => ok = false,
                    }
                }
                ok.then_some(codes)
            }
        };
        let retry_host_predicate = match f.take("retry_host_predicate") {
            None => Some("previous_hosts".to_owned()),
            Some((vn, vp)) => match scalar(d, vn, &vp, "a retry host predicate") {
                Some(v @ ("previous_hosts" | "any")) => Some(v.to_owned()),
                Some(v) => {
                    d.error(
                        vn.mark,
                        &vp,
                        format!(
                            "unknown retry_host_predicate `{}`: use `previous_hosts` or `any`",
                            quote(v)
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        f.finish(d, RETRY_KEYS);
        let backoff_base = backoff_base?;
        Some(RetriesDoc {
            attempts: attempts?,
            on: on?,
            per_try_timeout,
            backoff: BackoffDoc {
                base: backoff_base,
                max: backoff_max.unwrap_or(backoff_base * 10),
            },
            retriable_status_codes: retriable_status_codes?,
            retry_host_predicate: retry_host_predicate?,
            origin: Origin {
                mark: n.mark,
                path: p.to_owned(),
            },
        })
    }

    /// The runtime policy.
    pub fn policy(&self) -> ringmesh_l7::retry::RetryPolicy {
        use ringmesh_l7::retry::{Backoff, RetryOn, RetryPolicy};
        RetryPolicy {
            attempts: self.attempts,
            on: self
                .on
                .iter()
                .filter_map(|n| RetryOn::named(n))
                .fold(RetryOn::default(), RetryOn::with),
            backoff: Backoff {
                base: self.backoff.base,
                max: self.backoff.max,
            },
            retriable_status_codes: self.retriable_status_codes.clone().into(),
            avoid_tried: self.retry_host_predicate == "previous_hosts",
        }
    }
}

/// `fault`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultDoc {
    /// A share of requests delayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayDoc>,
    /// A share of requests answered with an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortDoc>,
    /// Only requests whose headers satisfy these.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ConditionDoc>,
    /// Honour `x-ringmesh-fault-*` request headers.
    pub header_control: bool,
}

/// `fault.delay`.
#[derive(Debug, Clone, Serialize)]
pub struct FaultDelayDoc {
    /// How long.
    #[serde(serialize_with = "super::listener::human")]
    pub fixed: Duration,
    /// Share of requests, 0-100.
    pub percent: f64,
}

/// `fault.abort`.
#[derive(Debug, Clone, Serialize)]
pub struct FaultAbortDoc {
    /// Status answered.
    pub status: u16,
    /// gRPC status answered to gRPC requests (default: the one `status`
    /// maps to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// Share of requests, 0-100.
    pub percent: f64,
}

impl FaultDoc {
    pub(crate) fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let mut doc = FaultDoc::default();
        let mut ok = true;
        if let Some((vn, vp)) = f.take("delay") {
            let mut g = Fields::of(d, vn, &vp)?;
            let fixed = required(d, &mut g, vn, &vp, "fixed").and_then(|(xn, xp)| {
                duration(d, xn, &xp, Duration::ZERO, Duration::from_secs(3600))
            });
            let share = share(d, &mut g);
            g.finish(d, &["fixed", "percent"]);
            match (fixed, share) {
                (Some(fixed), Some(percent)) => doc.delay = Some(FaultDelayDoc { fixed, percent }),
                _ => ok = false,
            }
        }
        if let Some((vn, vp)) = f.take("abort") {
            let mut g = Fields::of(d, vn, &vp)?;
            let status = required(d, &mut g, vn, &vp, "status").and_then(|(xn, xp)| integer(d, xn, &xp, 200, 599).and_then(|s| {
                    let s = s as u16;
                    if ringmesh_l7::fault::abortable(s) {
                        Some(s)
                    } else {
                        d.error(xn.mark, &xp, format!("a fault cannot answer {s}: the answer has a body (use 200-599 but 204 and 304)"));
                        None
                    }
                }));
            let grpc_status = match g.take("grpc_status") {
                None => Some(None),
                Some((xn, xp)) => integer(d, xn, &xp, 0, 16).map(|c| Some(c as u8)),
            };
            let share = share(d, &mut g);
            g.finish(d, &["status", "grpc_status", "percent"]);
            match (status, grpc_status, share) {
                (Some(status), Some(grpc_status), Some(percent)) => {
                    doc.abort = Some(FaultAbortDoc {
                        status,
                        grpc_status,
                        percent,
                    })
                }
                _ => ok = false,
            }
        }
        if let Some((vn, vp)) = f.take("headers") {
            doc.headers = conditions(d, vn, &vp, true);
        }
        if let Some((vn, vp)) = f.take("header_control") {
            doc.header_control = boolean(d, vn, &vp).unwrap_or(false);
        }
        f.finish(d, &["delay", "abort", "headers", "header_control"]);
        if ok && doc.delay.is_none() && doc.abort.is_none() && !doc.header_control {
            d.error(
                n.mark,
                p,
                "a fault needs `delay`, `abort` or `header_control: true`",
            );
            ok = false;
        }
        ok.then_some(doc)
    }

    /// The runtime header conditions; `None` if a regex no longer
    /// compiles (they were checked when decoding): the caller refuses the
    /// config rather than drop conditions and fault every request.
    pub fn header_matches(&self) -> Option<Vec<ringmesh_l7::route::matcher::HeaderMatch>> {
        let probe = MatchDoc {
            headers: self.headers.clone(),
            ..Default::default()
        };
        probe.runtime().map(|m| m.headers)
    }
}

const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "cluster",
    "split",
    "redirect",
    "direct_response",
    "sticky",
    "timeout",
    "per_try_timeout",
    "idle_timeout",
    "retries",
    "rewrite",
    "mirror",
    "fault",
    "rate_limit",
    "request_headers",
    "response_headers",
];

const ACTIONS: [&str; 4] = ["cluster", "split", "redirect", "direct_response"];

impl RouteDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let (route_name, name_origin) = match f.take("name") {
            Some((n, p)) => (
                name(d, n, &p).filter(|v| {
                    let reserved = v == "-";
                    if reserved {
                        d.error(
                            n.mark,
                            &p,
                            "route name `-` is reserved for requests no route matched",
                        );
                    }
                    !reserved
                }),
                Origin {
                    mark: n.mark,
                    path: p,
                },
            ),
            None => (None, Origin::default()),
        };
        let matcher = match f.take("match") {
            Some((n, p)) => MatchDoc::decode(d, n, &p),
            None => Some(MatchDoc::default()),
        };
        let mut present: Vec<(&str, &Node, String)> = ACTIONS
            .iter()
            .filter_map(|k| f.take(k).map(|(n, p)| (*k, n, p)))
            .collect();
        // In file order, so a conflict is reported on the later key.
        present.sort_by_key(|(_, n, _)| (n.mark.line, n.mark.col));
        let action_origin = present
            .first()
            .map(|(_, n, p)| Origin {
                mark: n.mark,
                path: p.clone(),
            })
            .unwrap_or_default();
        let action = match &present[..] {
            [] => {
                d.error(
                    node.mark,
                    path,
                    "a route needs one action: `cluster`, `split`, `redirect` or `direct_response`",
                );
                None
            }
            [(key, n, p)] => decode_action(d, key, n, p),
            [_, (key, n, p), ..] => {
                d.error(
                    n.mark,
                    p,
                    format!(
                        "`{key}` conflicts with `{}`: a route has exactly one of `cluster`, `split`, `redirect`, `direct_response`",
                        present[0].0
                    ),
                );
                None
            }
        };
        let forwarding = matches!(action, Some(ActionDoc::Cluster(_) | ActionDoc::Split(_)));
        let forward_only = |d: &mut Decoder, key: &str, n: &Node, p: &str| {
            if action.is_some() && !forwarding {
                d.error(
                    n.mark,
                    p,
                    format!("`{key}` applies to routes that forward (`cluster` or `split`), not to `redirect` or `direct_response`"),
                );
                false
            } else {
                true
            }
        };
        let sticky = match f.take("sticky") {
            None => None,
            Some((n, p)) => {
                if !matches!(action, Some(ActionDoc::Split(_)) | None) {
                    d.error(n.mark, &p, "`sticky` applies to routes with a `split`");
                }
                decode_sticky(d, n, &p)
            }
        };
        let timeout = match f.take("timeout") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "timeout", n, &p);
                duration(
                    d,
                    n,
                    &p,
                    Duration::from_millis(1),
                    Duration::from_secs(86400),
                )
            }
        };
        let mut per_try_timeout = match f.take("per_try_timeout") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "per_try_timeout", n, &p);
                duration(
                    d,
                    n,
                    &p,
                    Duration::from_millis(1),
                    Duration::from_secs(86400),
                )
            }
        };
        let idle_timeout = match f.take("idle_timeout") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "idle_timeout", n, &p);
                duration(
                    d,
                    n,
                    &p,
                    Duration::from_millis(1),
                    Duration::from_secs(86400),
                )
            }
        };
        let retries = match f.take("retries") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "retries", n, &p);
                RetriesDoc::decode(d, n, &p)
            }
        };
        if let Some(r) = &retries {
            match (r.per_try_timeout, per_try_timeout) {
                (Some(_), Some(_)) => d.error(
                    r.origin.mark,
                    &r.origin.path,
                    "`per_try_timeout` is set both on the route and in `retries`: set it once",
                ),
                (Some(t), None) => per_try_timeout = Some(t),
                _ => {}
            }
        }
        let rewrite = match f.take("rewrite") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "rewrite", n, &p);
                RewriteDoc::decode(d, n, &p)
            }
        };
        let mirror = match f.take("mirror") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "mirror", n, &p);
                MirrorDoc::decode(d, n, &p)
            }
        };
        let fault = match f.take("fault") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "fault", n, &p);
                FaultDoc::decode(d, n, &p)
            }
        };
        let rate_limit = f
            .take("rate_limit")
            .and_then(|(n, p)| RateLimitDoc::decode(d, n, &p));
        let request_headers = match f.take("request_headers") {
            None => None,
            Some((n, p)) => {
                forward_only(d, "request_headers", n, &p);
                HeaderOpsDoc::decode(d, n, &p)
            }
        };
        let response_headers = f
            .take("response_headers")
            .and_then(|(n, p)| HeaderOpsDoc::decode(d, n, &p));
        f.finish(d, ROUTE_KEYS);
        let matcher = matcher?;
        // A prefix rewrite or redirect replaces what a path condition matched.
        let has_prefix = matches!(
            matcher.path,
            Some(PathDoc::Path(_) | PathDoc::PathPrefix(_) | PathDoc::PathStartsWith(_))
        );
        if let (Some(rw), false) = (&rewrite, has_prefix) {
            if rw.path_prefix.is_some() {
                d.error(
                    rw.path_prefix_origin.mark,
                    &rw.path_prefix_origin.path,
                    "`rewrite.path_prefix` replaces the part of the path the match took: the route needs `match.path_prefix`, `match.path_starts_with` or `match.path`",
                );
            }
        }
        if let (Some(ActionDoc::Redirect(r)), false) = (&action, has_prefix) {
            if r.prefix.is_some() {
                d.error(
                    r.prefix_origin.mark,
                    &r.prefix_origin.path,
                    "`redirect.prefix` replaces the part of the path the match took: the route needs `match.path_prefix`, `match.path_starts_with` or `match.path`",
                );
            }
        }
        Some(RouteDoc {
            name: route_name,
            matcher,
            action: action?,
            sticky,
            timeout,
            per_try_timeout,
            idle_timeout,
            retries,
            rewrite,
            mirror,
            fault,
            rate_limit,
            request_headers,
            response_headers,
            origin: Origin {
                mark: node.mark,
                path: path.to_owned(),
            },
            name_origin,
            action_origin,
        })
    }

    /// The runtime match (regexes compiled; they were checked when
    /// decoding, so `None` means a bug or a changed limit).
    pub fn request_match(&self) -> Option<RequestMatch> {
        self.matcher.runtime()
    }

    /// The clusters the route names, with where.
    pub(crate) fn clusters(&self) -> Vec<(&str, &Origin)> {
        let mut out = Vec::new();
        match &self.action {
            ActionDoc::Cluster(c) => out.push((c.as_str(), self.action_origin())),
            ActionDoc::Split(s) => {
                out.extend(s.iter().map(|s| (s.cluster.as_str(), &s.cluster_origin)))
            }
            _ => {}
        }
        if let Some(m) = &self.mirror {
            out.push((m.cluster.as_str(), &m.cluster_origin));
        }
        out
    }

    fn action_origin(&self) -> &Origin {
        &self.action_origin
    }
}

fn decode_action(d: &mut Decoder, key: &str, n: &Node, p: &str) -> Option<ActionDoc> {
    match key {
        "cluster" => name(d, n, p).map(ActionDoc::Cluster),
        "split" => {
            let items = list(d, n, p)?;
            if items.is_empty() {
                d.error(n.mark, p, "a split needs at least one cluster");
                return None;
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                let Some(mut f) = Fields::of(d, item, &ip) else {
                    continue;
                };
                let cluster = required(d, &mut f, item, &ip, "cluster").and_then(|(cn, cp)| {
                    name(d, cn, &cp).map(|c| {
                        (
                            c,
                            Origin {
                                mark: cn.mark,
                                path: cp,
                            },
                        )
                    })
                });
                let weight = required(d, &mut f, item, &ip, "weight")
                    .and_then(|(wn, wp)| integer(d, wn, &wp, 0, 1_000_000).map(|w| w as u32));
                f.finish(d, &["cluster", "weight"]);
                if let (Some((cluster, cluster_origin)), Some(weight)) = (cluster, weight) {
                    out.push(SplitDoc {
                        cluster,
                        weight,
                        cluster_origin,
                    });
                }
            }
            if out.len() == items.len() && out.iter().all(|s| s.weight == 0) {
                d.error(
                    n.mark,
                    p,
                    "every weight of the split is 0: at least one cluster needs a positive weight",
                );
                return None;
            }
            Some(ActionDoc::Split(out))
        }
        "redirect" => RedirectDoc::decode(d, n, p).map(ActionDoc::Redirect),
        _ => {
            let mut f = Fields::of(d, n, p)?;
            let status = required(d, &mut f, n, p, "status")
                .and_then(|(sn, sp)| integer(d, sn, &sp, 200, 599).map(|s| s as u16));
            let body = match f.take("body") {
                Some((bn, bp)) => scalar(d, bn, &bp, "text").and_then(|b| {
                    if b.len() > 64 * 1024 {
                        d.error(bn.mark, &bp, "a direct response body is at most 64 KiB");
                        None
                    } else {
                        Some(b.to_owned())
                    }
                }),
                None => Some(String::new()),
            };
            f.finish(d, &["status", "body"]);
            if let (Some(s @ (204 | 304)), Some(b)) = (status, &body) {
                if !b.is_empty() {
                    d.error(
                        n.mark,
                        p,
                        format!("a {s} response has no body: remove `body` or use another status"),
                    );
                    return None;
                }
            }
            Some(ActionDoc::DirectResponse(DirectResponseDoc {
                status: status?,
                body: body?,
            }))
        }
    }
}

fn decode_sticky(d: &mut Decoder, n: &Node, p: &str) -> Option<StickyDoc> {
    let mut f = Fields::of(d, n, p)?;
    let header = f.take("header");
    let cookie = f.take("cookie");
    f.finish(d, &["header", "cookie"]);
    match (header, cookie) {
        (Some((hn, hp)), None) => {
            let h = scalar(d, hn, &hp, "a header name")?;
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                d.error(hn.mark, &hp, format!("invalid header name `{}`", quote(h)));
                return None;
            }
            Some(StickyDoc::Header(h.to_ascii_lowercase()))
        }
        (None, Some((cn, cp))) => {
            let c = scalar(d, cn, &cp, "a cookie name")?;
            if c.is_empty()
                || c.bytes()
                    .any(|b| b <= b' ' || b"=;,\"".contains(&b) || b >= 0x7f)
            {
                d.error(cn.mark, &cp, format!("invalid cookie name `{}`", quote(c)));
                return None;
            }
            Some(StickyDoc::Cookie(c.to_owned()))
        }
        _ => {
            d.error(n.mark, p, "`sticky` takes one of `header` or `cookie`");
            None
        }
    }
}

/// Checks a regex where it is written.
fn regex_at(d: &mut Decoder, n: &Node, p: &str, pattern: &str, whole: bool) -> bool {
    match compile_regex(pattern, whole) {
        Ok(_) => true,
        Err(e) => {
            d.error(n.mark, p, format!("invalid regex: {e}"));
            false
        }
    }
}

/// A path value: starts with `/`, no whitespace or control bytes.
fn path_value(d: &mut Decoder, n: &Node, p: &str, what: &str) -> Option<String> {
    let v = scalar(d, n, p, what)?;
    if !v.starts_with('/') || !path_chars(v) {
        d.error(
            n.mark,
            p,
            format!(
                "invalid path `{}`: it starts with `/` and has only URI path characters (letters, digits, `-._~!$&'()*+,;=:@/` and %-escapes; clients send non-ASCII percent-encoded)",
                quote(v)
            ),
        );
        return None;
    }
    Some(v.to_owned())
}

/// Only RFC 3986 path characters (pchar, `/`, `%` of escapes): what a
/// request target can carry, so a configured path can match one and is
/// safe to write into a request line or a `Location`.
fn path_chars(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
}

const MATCH_KEYS: &[&str] = &[
    "host",
    "path",
    "path_prefix",
    "path_starts_with",
    "path_regex",
    "method",
    "headers",
    "query",
];

impl MatchDoc {
    fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let mut m = MatchDoc::default();
        let mut ok = true;
        if let Some((n, p)) = f.take("host") {
            m.host = one_or_many(d, n, &p, "a host name", |d, item, ip, v| {
                if HostPattern::parse(v).is_some() {
                    Some(v.to_ascii_lowercase())
                } else {
                    d.error(
                        item.mark,
                        ip,
                        format!(
                            "invalid host `{}`: a name, name:port, *.suffix or *",
                            quote(v)
                        ),
                    );
                    None
                }
            });
        }
        let paths: Vec<(&str, &Node, String)> =
            ["path", "path_prefix", "path_starts_with", "path_regex"]
                .iter()
                .filter_map(|k| f.take(k).map(|(n, p)| (*k, n, p)))
                .collect();
        if let [(first, ..), (second, n, p), ..] = &paths[..] {
            d.error(
                n.mark,
                p,
                format!("`{second}` conflicts with `{first}`: a match has one path condition"),
            );
            ok = false;
        } else if let [(key, n, p)] = &paths[..] {
            m.path = match *key {
                "path" => path_value(d, n, p, "a path").map(PathDoc::Path),
                "path_prefix" => path_value(d, n, p, "a path prefix").map(PathDoc::PathPrefix),
                "path_starts_with" => {
                    path_value(d, n, p, "a path prefix").map(PathDoc::PathStartsWith)
                }
                _ => scalar(d, n, p, "a regex").and_then(|r| {
                    regex_at(d, n, p, r, true).then(|| PathDoc::PathRegex(r.to_owned()))
                }),
            };
            ok &= m.path.is_some();
        }
        if let Some((n, p)) = f.take("method") {
            m.method = one_or_many(d, n, &p, "a method", |d, item, ip, v| {
                let token = !v.is_empty()
                    && v.len() <= 32
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if token {
                    Some(v.to_owned())
                } else {
                    d.error(item.mark, ip, format!("invalid method `{}`", quote(v)));
                    None
                }
            });
        }
        if let Some((n, p)) = f.take("headers") {
            m.headers = conditions(d, n, &p, true);
        }
        if let Some((n, p)) = f.take("query") {
            m.query = conditions(d, n, &p, false);
        }
        f.finish(d, MATCH_KEYS);
        ok.then_some(m)
    }

    /// The runtime form; `None` if a regex no longer compiles.
    pub fn runtime(&self) -> Option<RequestMatch> {
        let bytes = |s: &str| -> Box<[u8]> { s.as_bytes().into() };
        let path = match &self.path {
            None => None,
            Some(PathDoc::Path(p)) => Some(PathMatch::Exact(bytes(p))),
            Some(PathDoc::PathPrefix(p)) => Some(PathMatch::Prefix(bytes(p))),
            Some(PathDoc::PathStartsWith(p)) => Some(PathMatch::StartsWith(bytes(p))),
            Some(PathDoc::PathRegex(r)) => Some(PathMatch::Regex(compile_regex(r, true).ok()?)),
        };
        let test = |c: &ConditionDoc| -> Option<ValueTest> {
            Some(match &c.test {
                TestDoc::Exact(v) => ValueTest::Exact(bytes(v)),
                TestDoc::Prefix(v) => ValueTest::Prefix(bytes(v)),
                TestDoc::Suffix(v) => ValueTest::Suffix(bytes(v)),
                TestDoc::Regex(r) => ValueTest::Regex(compile_regex(r, true).ok()?),
                TestDoc::Present(true) => ValueTest::Present,
                TestDoc::Present(false) => ValueTest::Absent,
            })
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, c) in &self.headers {
            headers.push(HeaderMatch {
                name: bytes(name),
                test: test(c)?,
                invert: c.invert,
            });
        }
        let mut query = Vec::with_capacity(self.query.len());
        for (name, c) in &self.query {
            query.push(QueryMatch {
                name: bytes(name),
                test: test(c)?,
            });
        }
        Some(RequestMatch {
            hosts: self
                .host
                .iter()
                .filter_map(|h| HostPattern::parse(h))
                .collect(),
            path,
            methods: self.method.iter().map(|m| bytes(m)).collect(),
            headers,
            query,
        })
    }
}

/// A scalar or a list of scalars, each checked by `check`.
fn one_or_many(
    d: &mut Decoder,
    n: &Node,
    p: &str,
    what: &str,
    mut check: impl FnMut(&mut Decoder, &Node, &str, &str) -> Option<String>,
) -> Vec<String> {
    let items: Vec<(&Node, String)> = match &n.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{p}[{i}]")))
            .collect(),
        _ => vec![(n, p.to_owned())],
    };
    if items.is_empty() {
        d.error(
            n.mark,
            p,
            format!("expected {what} or a list of them, found an empty list"),
        );
    }
    items
        .into_iter()
        .filter_map(|(item, ip)| {
            let v = scalar(d, item, &ip, what)?;
            check(d, item, &ip, v)
        })
        .collect()
}

/// Header (`headers: true`) or query conditions by name.
fn conditions(d: &mut Decoder, n: &Node, p: &str, headers: bool) -> BTreeMap<String, ConditionDoc> {
    let mut out = BTreeMap::new();
    let Some(entries) = map_entries(d, n, p) else {
        return out;
    };
    for (k, kn, v) in entries {
        let kp = crate::decode::child(p, &quote(k));
        let valid_name = !k.is_empty()
            && if headers {
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            } else {
                k.bytes()
                    .all(|b| b > b' ' && b != 0x7f && !b"&=#".contains(&b))
            };
        if !valid_name {
            let what = if headers { "header" } else { "query parameter" };
            d.error(kn.mark, &kp, format!("invalid {what} name `{}`", quote(k)));
            continue;
        }
        let name = if headers {
            k.to_ascii_lowercase()
        } else {
            k.to_owned()
        };
        if out.contains_key(&name) {
            d.error(
                kn.mark,
                &kp,
                "duplicate condition (header names are case-insensitive)",
            );
            continue;
        }
        if let Some(c) = condition(d, v, &kp, headers) {
            out.insert(name, c);
        }
    }
    out
}

fn condition(d: &mut Decoder, n: &Node, p: &str, headers: bool) -> Option<ConditionDoc> {
    if let Value::Scalar { text, .. } = &n.value {
        return Some(ConditionDoc {
            test: TestDoc::Exact(text.clone()),
            invert: false,
        });
    }
    let mut f = Fields::of(d, n, p)?;
    let kinds: &[&str] = if headers {
        &["exact", "prefix", "suffix", "regex", "present", "absent"]
    } else {
        &["exact", "regex", "present"]
    };
    let given: Vec<(&str, &Node, String)> = kinds
        .iter()
        .filter_map(|k| f.take(k).map(|(vn, vp)| (*k, vn, vp)))
        .collect();
    let invert = match f.take("invert") {
        Some((vn, vp)) if headers => boolean(d, vn, &vp)?,
        Some((vn, vp)) => {
            d.error(vn.mark, &vp, "`invert` applies to header conditions");
            false
        }
        None => false,
    };
    let mut known: Vec<&str> = kinds.to_vec();
    if headers {
        known.push("invert");
    }
    f.finish(d, &known);
    let test = match &given[..] {
        [(kind, vn, vp)] => match *kind {
            "present" | "absent" => {
                let b = boolean(d, vn, vp)?;
                TestDoc::Present(if *kind == "present" { b } else { !b })
            }
            "regex" => {
                let r = scalar(d, vn, vp, "a regex")?;
                if !regex_at(d, vn, vp, r, true) {
                    return None;
                }
                TestDoc::Regex(r.to_owned())
            }
            kind => {
                let v = scalar(d, vn, vp, "a value")?.to_owned();
                match kind {
                    "exact" => TestDoc::Exact(v),
                    "prefix" => TestDoc::Prefix(v),
                    _ => TestDoc::Suffix(v),
                }
            }
        },
        [] => {
            d.error(
                n.mark,
                p,
                format!("a condition needs one of: {}", kinds.join(", ")),
            );
            return None;
        }
        [(first, ..), (second, vn, vp), ..] => {
            d.error(
                vn.mark,
                vp,
                format!("`{second}` conflicts with `{first}`: a condition has one test"),
            );
            return None;
        }
    };
    Some(ConditionDoc { test, invert })
}

impl RedirectDoc {
    fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let mut r = RedirectDoc {
            status: 301,
            ..Default::default()
        };
        let mut ok = true;
        if let Some((vn, vp)) = f.take("scheme") {
            match scalar(d, vn, &vp, "http or https") {
                Some(s @ ("http" | "https")) => r.scheme = Some(s.to_owned()),
                Some(other) => {
                    d.error(
                        vn.mark,
                        &vp,
                        format!("unknown scheme `{}` (expected http or https)", quote(other)),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some((vn, vp)) = f.take("host") {
            match scalar(d, vn, &vp, "a host name") {
                Some(h)
                    if HostPattern::parse(h)
                        .is_some_and(|p| matches!(p, HostPattern::Exact { port: None, .. })) =>
                {
                    r.host = Some(h.to_owned())
                }
                Some(h) => {
                    d.error(
                        vn.mark,
                        &vp,
                        format!(
                            "invalid host `{}` (a host name without port; set `port` for the port)",
                            quote(h)
                        ),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some((vn, vp)) = f.take("port") {
            r.port = integer(d, vn, &vp, 1, 65535).map(|p| p as u16);
            ok &= r.port.is_some();
        }
        let path = f.take("path");
        let prefix = f.take("prefix");
        match (path, prefix) {
            (Some(_), Some((vn, vp))) => {
                d.error(vn.mark, &vp, "`prefix` conflicts with `path`: a redirect replaces the whole path or its prefix");
                ok = false;
            }
            (Some((vn, vp)), None) => {
                r.path = path_value(d, vn, &vp, "a path");
                ok &= r.path.is_some();
            }
            (None, Some((vn, vp))) => {
                r.prefix = path_value(d, vn, &vp, "a path prefix");
                ok &= r.prefix.is_some();
                r.prefix_origin = Origin {
                    mark: vn.mark,
                    path: vp,
                };
            }
            (None, None) => {}
        }
        if let Some((vn, vp)) = f.take("strip_query") {
            r.strip_query = boolean(d, vn, &vp).unwrap_or(false);
        }
        if let Some((vn, vp)) = f.take("status") {
            match integer(d, vn, &vp, 300, 399) {
                Some(s @ (301 | 302 | 303 | 307 | 308)) => r.status = s as u16,
                Some(s) => {
                    d.error(
                        vn.mark,
                        &vp,
                        format!("redirect status {s} is not one of 301, 302, 303, 307, 308"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        f.finish(
            d,
            &[
                "scheme",
                "host",
                "port",
                "path",
                "prefix",
                "strip_query",
                "status",
            ],
        );
        ok.then_some(r)
    }
}

impl RewriteDoc {
    fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let mut r = RewriteDoc::default();
        let mut ok = true;
        let prefix = f.take("path_prefix");
        let regex = f.take("path_regex");
        if let (Some(_), Some((vn, vp))) = (&prefix, &regex) {
            d.error(
                vn.mark,
                vp,
                "`path_regex` conflicts with `path_prefix`: one path rewrite per route",
            );
            ok = false;
        }
        if let Some((vn, vp)) = prefix {
            match scalar(d, vn, &vp, "a path prefix") {
                // Empty strips the matched prefix.
                Some(v) if v.is_empty() || v.starts_with('/') && path_chars(v) => {
                    r.path_prefix = Some(v.to_owned());
                    r.path_prefix_origin = Origin {
                        mark: vn.mark,
                        path: vp.clone(),
                    };
                }
                Some(v) => {
                    d.error(vn.mark, &vp, format!("invalid path prefix `{}`: empty, or it starts with `/` and has only URI path characters", quote(v)));
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some((vn, vp)) = regex {
            let mut rf = Fields::of(d, vn, &vp)?;
            let pattern = rf.take("pattern");
            let substitution = rf.take("substitution");
            rf.finish(d, &["pattern", "substitution"]);
            match (pattern, substitution) {
                (Some((pn, pp)), Some((sn, sp))) => {
                    let pat = scalar(d, pn, &pp, "a regex");
                    let sub = scalar(d, sn, &sp, "a substitution");
                    match (pat, sub) {
                        (Some(pat), Some(sub)) if regex_at(d, pn, &pp, pat, false) => {
                            // `$` and braces name groups; the rest must be path characters.
                            if !sub.bytes().all(|b| {
                                b == b'{'
                                    || b == b'}'
                                    || path_chars(std::str::from_utf8(&[b]).unwrap_or("?"))
                            }) {
                                d.error(
                                    sn.mark,
                                    &sp,
                                    "the substitution has only URI path characters and `${group}` references (no spaces, `?` or `#`)",
                                );
                                ok = false;
                            } else {
                                r.path_regex = Some(RegexRewriteDoc {
                                    pattern: pat.to_owned(),
                                    substitution: sub.to_owned(),
                                });
                            }
                        }
                        _ => ok = false,
                    }
                }
                _ => {
                    d.error(
                        vn.mark,
                        &vp,
                        "`path_regex` needs `pattern` and `substitution`",
                    );
                    ok = false;
                }
            }
        }
        let host = f.take("host");
        let from_cluster = f.take("host_from_cluster");
        if let (Some(_), Some((vn, vp))) = (&host, &from_cluster) {
            d.error(vn.mark, vp, "`host_from_cluster` conflicts with `host`");
            ok = false;
        }
        if let Some((vn, vp)) = host {
            match scalar(d, vn, &vp, "a host") {
                Some(h)
                    if HostPattern::parse(h)
                        .is_some_and(|p| matches!(p, HostPattern::Exact { .. })) =>
                {
                    r.host = Some(h.to_owned())
                }
                Some(h) => {
                    d.error(vn.mark, &vp, format!("invalid host `{}`", quote(h)));
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some((vn, vp)) = from_cluster {
            r.host_from_cluster = boolean(d, vn, &vp).unwrap_or(false);
        }
        f.finish(
            d,
            &["path_prefix", "path_regex", "host", "host_from_cluster"],
        );
        ok.then_some(r)
    }
}

impl MirrorDoc {
    fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let cluster = required(d, &mut f, n, p, "cluster").and_then(|(cn, cp)| {
            name(d, cn, &cp).map(|c| {
                (
                    c,
                    Origin {
                        mark: cn.mark,
                        path: cp,
                    },
                )
            })
        });
        let percent = match f.take("percent") {
            None => Some(100.0),
            Some((vn, vp)) => percent(d, vn, &vp),
        };
        let max_in_flight = match f.take("max_in_flight") {
            None => Some(DEFAULT_MIRROR_IN_FLIGHT),
            Some((vn, vp)) => integer(d, vn, &vp, 1, 100_000).map(|v| v as u32),
        };
        f.finish(d, &["cluster", "percent", "max_in_flight"]);
        let (cluster, cluster_origin) = cluster?;
        Some(MirrorDoc {
            cluster,
            percent: percent?,
            max_in_flight: max_in_flight?,
            cluster_origin,
        })
    }
}

/// Mirrored copies in flight at once per route, by default.
pub const DEFAULT_MIRROR_IN_FLIGHT: u32 = 64;

/// A percentage 0-100 with at most 4 decimals (0.0001 resolution).
pub(crate) fn percent(d: &mut Decoder, n: &Node, p: &str) -> Option<f64> {
    let text = scalar(d, n, p, "a percentage")?;
    let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
    match text.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) && decimals <= 4 => Some(v),
        _ => {
            d.error(
                n.mark,
                p,
                format!(
                    "invalid percentage `{}`: a number from 0 to 100 with at most 4 decimals",
                    quote(text)
                ),
            );
            None
        }
    }
}

/// A fault's `percent` (default 100).
fn share(d: &mut Decoder, f: &mut Fields<'_>) -> Option<f64> {
    match f.take("percent") {
        Some((n, p)) => percent(d, n, &p),
        None => Some(100.0),
    }
}

/// Parts per million of a percentage.
pub fn per_million(percent: f64) -> u32 {
    (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32
}
