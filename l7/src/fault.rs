//! Fault injection (Envoy's fault filter, Istio's `fault`): a route may
//! delay a share of its requests and answer a share itself with an error
//! status, to test how callers cope. Runs after the route is found and
//! before the split; an injected answer carries flag `FI`, a delayed
//! request `DI`, and both are counted. A delay spends the route's
//! timeout: what is left bounds the upstream exchange (none left: 504 `UT`).
//!
//! With `header_control`, a request may ask for its own fault:
//! `x-ringmesh-fault-abort-request: <status>` and
//! `x-ringmesh-fault-delay-request: <milliseconds>`, each with an optional
//! `...-percentage` header (0-100), capped by the configured share, which
//! is also its default (100% when only header control is configured), as
//! Envoy does for `x-envoy-fault-*`.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::FaultStats;
use crate::random::{MILLION, chance};
use crate::route::matcher::{HeaderMatch, RequestView};

/// A share of requests delayed.
#[derive(Debug, Clone)]
pub struct Delay {
    /// How long.
    pub fixed: Duration,
    /// Share, in parts per million.
    pub per_million: u32,
}

/// A share of requests answered with an error.
#[derive(Debug, Clone)]
pub struct Abort {
    /// The status answered (200-599).
    pub status: u16,
    /// The gRPC status answered to gRPC requests (else the one `status`
    /// maps to).
    pub grpc_status: Option<u8>,
    /// Share, in parts per million.
    pub per_million: u32,
}

/// A route's fault injection.
#[derive(Debug)]
pub struct Fault {
    /// Delay.
    pub delay: Option<Delay>,
    /// Abort.
    pub abort: Option<Abort>,
    /// Only requests whose headers satisfy all of these get faults.
    pub headers: Vec<HeaderMatch>,
    /// Honour `x-ringmesh-fault-*` request headers.
    pub header_control: bool,
    /// Injected faults by kind.
    pub stats: Arc<FaultStats>,
}

/// What the fault filter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Injected {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this status instead of forwarding.
    pub abort: Option<u16>,
    /// A gRPC request is answered this gRPC status (when the abort came
    /// from the config and names one).
    pub abort_grpc: Option<u8>,
}

/// Whether a fault may answer `status`: 200-599 except 204 and 304 (the
/// proxy's answer has a body, which those statuses forbid).
pub fn abortable(status: u16) -> bool {
    (200..600).contains(&status) && status != 204 && status != 304
}

/// The longest delay a request header may ask for.
const MAX_HEADER_DELAY: Duration = Duration::from_secs(3600);

impl Fault {
    /// Draws this request's faults.
    pub fn draw(&self, req: &RequestView<'_>) -> Injected {
        if !self.headers.iter().all(|h| h.holds(req)) {
            return Injected::default();
        }
        let mut out = Injected::default();
        if let Some(d) = &self.delay {
            if chance(d.per_million) {
                out.delay = Some(d.fixed);
            }
        }
        if let Some(a) = &self.abort {
            if chance(a.per_million) {
                out.abort = Some(a.status);
                out.abort_grpc = a.grpc_status;
            }
        }
        if self.header_control {
            let value = |name: &[u8]| {
                req.fields
                    .iter()
                    .find(|f| f.name.get(req.buf).eq_ignore_ascii_case(name))
                    .and_then(|f| std::str::from_utf8(f.value.get(req.buf)).ok())
                    .map(str::trim)
            };
            // Envoy's rule: a header's percentage is capped by the
            // configured one, which is also the default (100% when the
            // route configures only header control).
            let share = |name: &[u8], configured: Option<u32>| {
                let cap = configured.unwrap_or(MILLION);
                value(name)
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .map_or(cap, |p| ((p * 10_000.0).round() as u32).min(cap))
            };
            let status = value(b"x-ringmesh-fault-abort-request")
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|s| abortable(*s));
            if let Some(status) = status {
                let configured = self.abort.as_ref().map(|a| a.per_million);
                if chance(share(
                    b"x-ringmesh-fault-abort-request-percentage",
                    configured,
                )) {
                    out.abort = Some(status);
                    out.abort_grpc = None;
                }
            }
            let ms = value(b"x-ringmesh-fault-delay-request").and_then(|v| v.parse::<u64>().ok());
            if let Some(ms) = ms {
                let configured = self.delay.as_ref().map(|d| d.per_million);
                if chance(share(
                    b"x-ringmesh-fault-delay-request-percentage",
                    configured,
                )) {
                    out.delay = Some(Duration::from_millis(ms).min(MAX_HEADER_DELAY));
                }
            }
        }
        out
    }
}
