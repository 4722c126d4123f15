//! Retries (README "Retries"): a route's retry policy (Envoy's
//! `retry_policy`: conditions, attempts, per-try timeout, backoff), the
//! per-request bookkeeping that grants or refuses each retry, and the
//! cluster's [`RetryBudget`] (Linkerd's) and `max_retries` breaker
//! (Envoy's) that keep retries from multiplying an overload.
//!
//! A retry is granted when every one of these holds, checked in this
//! order: the policy retries on what happened; attempts are left; the
//! whole request is still held for replay (or nothing of it was sent: a
//! connect failure); the wait (the drawn backoff, or a 429's or 503's
//! `Retry-After` up to the backoff cap) ends before the route timeout;
//! the cluster's `max_retries` breaker has room (else counted `overflow`);
//! the cluster's budget has a retry left (else counted
//! `budget_exhausted`). A refused retry lets the last response (or the
//! proxy's answer for the last failure) go to the client.

pub mod budget;

use std::time::{Duration, Instant};

use ringmesh_core::snapshot::Cluster;
use ringmesh_core::upstream::RetrySlot;

pub use budget::{BudgetSettings, RetryBudget};

use crate::metrics::{RetryResult, UpstreamStats};

/// The conditions a policy retries on (`on:`), as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(u16);

impl RetryOn {
    /// No connection could be made (connect refused, timed out, TLS).
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1);
    /// The upstream refused the request before processing it: on HTTP/1.1,
    /// a reused connection closed before any response byte (HTTP/2's
    /// REFUSED_STREAM later).
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 1);
    /// No response at all: no connection, disconnect, reset, malformed
    /// head, per-try timeout.
    pub const RESET: RetryOn = RetryOn(1 << 2);
    /// Any 5xx response, and everything `reset`, `connect-failure` and
    /// `refused-stream` cover.
    pub const SERVER_ERROR: RetryOn = RetryOn(1 << 3);
    /// 502, 503, 504, and the failures a gateway answers with them
    /// (connect failure, reset, per-try timeout).
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 4);
    /// 409 Conflict.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 5);
    /// The statuses in `retriable_status_codes`.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    /// gRPC status CANCELLED (1), from the response's headers or trailers.
    pub const CANCELLED: RetryOn = RetryOn(1 << 7);
    /// gRPC status DEADLINE_EXCEEDED (4).
    pub const DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 8);
    /// gRPC status INTERNAL (13).
    pub const INTERNAL: RetryOn = RetryOn(1 << 9);
    /// gRPC status RESOURCE_EXHAUSTED (8).
    pub const RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    /// gRPC status UNAVAILABLE (14).
    pub const UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    /// Every condition by its configuration name.
    pub const NAMES: [(&'static str, RetryOn); 12] = [
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("reset", RetryOn::RESET),
        ("5xx", RetryOn::SERVER_ERROR),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("cancelled", RetryOn::CANCELLED),
        ("deadline-exceeded", RetryOn::DEADLINE_EXCEEDED),
        ("internal", RetryOn::INTERNAL),
        ("resource-exhausted", RetryOn::RESOURCE_EXHAUSTED),
        ("unavailable", RetryOn::UNAVAILABLE),
    ];

    /// The condition named `name`.
    pub fn named(name: &str) -> Option<RetryOn> {
        RetryOn::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, on)| *on)
    }

    /// Both sets.
    pub fn with(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }

    fn any(self, of: RetryOn) -> bool {
        self.0 & of.0 != 0
    }
}

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No connection could be made to any endpoint tried.
    ConnectFailure,
    /// A reused connection closed before any response byte.
    RefusedStream,
    /// The connection closed or reset before a whole response head, or the
    /// head was malformed.
    Reset,
    /// The per-try timeout passed before the response head.
    PerTryTimeout,
    /// The upstream answered with this status.
    Status(u16),
    /// A gRPC response (HTTP 200) ended with this `grpc-status`, read from
    /// its headers (trailers-only) or trailers. A response already being
    /// streamed to the client is not retried whatever its trailers say.
    Grpc(u8),
}

/// Fully jittered exponential backoff (Envoy's): the wait before retry
/// `n` (1-based) is drawn from `[0, min(base * (2^n - 1), max))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First interval (default 25 ms).
    pub base: Duration,
    /// Cap (default 10 × base, 250 ms); also the longest `Retry-After`
    /// honoured.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// The wait before retry `n` (1-based).
    pub fn draw(&self, n: u32) -> Duration {
        let factor = (1u64 << n.min(32)) - 1;
        let ceiling = (self.base.as_micros() as u64)
            .saturating_mul(factor)
            .min(self.max.as_micros() as u64);
        if ceiling == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(crate::random::below(ceiling))
    }
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Envoy's `num_retries`; default 1).
    pub attempts: u32,
    /// What is retried.
    pub on: RetryOn,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Box<[u16]>,
    /// Send a retry to an endpoint not tried yet when there is one
    /// (`retry_host_predicate: previous_hosts`, the default).
    pub avoid_tried: bool,
}

impl RetryPolicy {
    /// Whether the policy retries after `cause`.
    pub fn retries_on(&self, cause: Cause) -> bool {
        use RetryOn as O;
        let gateway = O::SERVER_ERROR.with(O::GATEWAY_ERROR);
        match cause {
            Cause::ConnectFailure => self.on.any(gateway.with(O::RESET).with(O::CONNECT_FAILURE)),
            Cause::RefusedStream => self.on.any(gateway.with(O::RESET).with(O::REFUSED_STREAM)),
            Cause::Reset | Cause::PerTryTimeout => self.on.any(gateway.with(O::RESET)),
            Cause::Status(s) => {
                (s >= 500 && self.on.any(O::SERVER_ERROR))
                    || (matches!(s, 502..=504) && self.on.any(O::GATEWAY_ERROR))
                    || (s == 409 && self.on.any(O::RETRIABLE_4XX))
                    || (self.on.any(O::RETRIABLE_STATUS_CODES)
                        && self.retriable_status_codes.contains(&s))
            }
            Cause::Grpc(code) => {
                let on = match code {
                    1 => O::CANCELLED,
                    4 => O::DEADLINE_EXCEEDED,
                    8 => O::RESOURCE_EXHAUSTED,
                    13 => O::INTERNAL,
                    14 => O::UNAVAILABLE,
                    _ => return false,
                };
                self.on.any(on)
            }
        }
    }
}

/// Endpoints remembered per request for the `previous_hosts` predicate.
const TRIED: usize = 8;

/// One request's retries: what it may still do and what it holds.
pub(crate) struct Retries<'a> {
    policy: Option<&'a RetryPolicy>,
    cluster: &'a Cluster,
    budget: &'a RetryBudget,
    stats: &'a UpstreamStats,
    core: usize,
    /// Retries granted so far.
    made: u32,
    /// The whole request is in the proxy's buffers and can be sent again.
    pub replayable: bool,
    tried: [usize; TRIED],
    tried_len: usize,
    /// The `max_retries` slot of the retry in progress.
    slot: Option<RetrySlot<'a>>,
}

impl<'a> Retries<'a> {
    /// Bookkeeping for one request to `cluster` under `policy`; deposits
    /// the request into the cluster's budget.
    pub fn new(
        policy: Option<&'a RetryPolicy>,
        cluster: &'a Cluster,
        budget: &'a RetryBudget,
        stats: &'a UpstreamStats,
        core: usize,
        now: Instant,
    ) -> Self {
        budget.deposit(core, now);
        Retries {
            policy,
            cluster,
            budget,
            stats,
            core,
            made: 0,
            replayable: false,
            tried: [0; TRIED],
            tried_len: 0,
            slot: None,
        }
    }

    /// Endpoints tried so far, when retries should avoid them.
    pub fn avoid(&self) -> &[usize] {
        match self.policy {
            Some(p) if p.avoid_tried => &self.tried[..self.tried_len],
            _ => &[],
        }
    }

    /// Remembers that endpoint `index` was tried.
    pub fn tried(&mut self, index: usize) {
        if self.tried_len < TRIED && !self.tried[..self.tried_len].contains(&index) {
            self.tried[self.tried_len] = index;
            self.tried_len += 1;
        }
    }

    /// Whether a retry could follow `cause` at all (policy, attempts,
    /// replay): checked before a response is given up on. A connect
    /// failure sent nothing, so even a streamed request may follow it.
    pub fn wanted(&self, cause: Cause) -> bool {
        match self.policy {
            Some(p) => {
                (self.replayable || cause == Cause::ConnectFailure)
                    && self.made < p.attempts
                    && p.retries_on(cause)
            }
            None => false,
        }
    }

    /// The retry in progress is over (its response head arrived, or it
    /// failed): its `max_retries` slot is released, whatever the
    /// response's body still takes.
    pub fn settle(&mut self) {
        self.slot = None;
    }

    /// Forgets the last endpoint tried (a stale pooled connection to it
    /// says nothing about the endpoint).
    pub fn untried(&mut self, index: usize) {
        if self.tried_len > 0 && self.tried[self.tried_len - 1] == index {
            self.tried_len -= 1;
        }
    }

    /// Grants a retry after `cause` and returns the wait before it, or
    /// `None` (counted when the breaker or the budget refused). A retry
    /// whose wait would reach `deadline` (the route timeout) is not made.
    /// The slot of the previous retry, if any, is released.
    pub fn grant(
        &mut self,
        cause: Cause,
        retry_after: Option<Duration>,
        deadline: Instant,
    ) -> Option<Duration> {
        self.slot = None;
        let policy = self.policy?;
        if !self.wanted(cause) {
            return None;
        }
        // A server's `Retry-After` is honoured up to the backoff cap.
        let wait = match retry_after {
            Some(w) => w.min(policy.backoff.max),
            None => policy.backoff.draw(self.made + 1),
        };
        let now = Instant::now();
        if now + wait >= deadline {
            return None;
        }
        let counters = self.stats.cores.get(self.core);
        let Some(slot) = RetrySlot::acquire(self.cluster) else {
            counters.retries[RetryResult::Overflow as usize].inc();
            return None;
        };
        if !self.budget.withdraw(now) {
            counters.retries[RetryResult::BudgetExhausted as usize].inc();
            return None;
        }
        counters.retries[RetryResult::Sent as usize].inc();
        self.slot = Some(slot);
        self.made += 1;
        Some(wait)
    }
}

/// The wait a `Retry-After` header value asks for: delay-seconds, or an
/// HTTP-date (RFC 9110 §10.2.3); `None` when it is neither.
pub fn retry_after(value: &[u8], now: std::time::SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than any cap: saturate rather than fail.
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str]) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            on: on
                .iter()
                .map(|n| RetryOn::named(n).expect("known"))
                .fold(RetryOn::default(), RetryOn::with),
            backoff: Backoff::default(),
            retriable_status_codes: Box::new([418]),
            avoid_tried: true,
        }
    }

    #[test]
    fn each_condition_covers_what_envoy_documents_and_nothing_else() {
        use Cause::*;
        let all = [
            ConnectFailure,
            RefusedStream,
            Reset,
            PerTryTimeout,
            Status(500),
            Status(502),
            Status(503),
            Status(504),
            Status(409),
            Status(418),
            Status(404),
            Status(429),
        ];
        let covered = |on: &[&str]| -> Vec<Cause> {
            let p = policy(on);
            all.iter().copied().filter(|c| p.retries_on(*c)).collect()
        };
        assert_eq!(covered(&["connect-failure"]), [ConnectFailure]);
        assert_eq!(covered(&["refused-stream"]), [RefusedStream]);
        assert_eq!(
            covered(&["reset"]),
            [ConnectFailure, RefusedStream, Reset, PerTryTimeout]
        );
        assert_eq!(
            covered(&["5xx"]),
            [
                ConnectFailure,
                RefusedStream,
                Reset,
                PerTryTimeout,
                Status(500),
                Status(502),
                Status(503),
                Status(504)
            ]
        );
        assert_eq!(
            covered(&["gateway-error"]),
            [
                ConnectFailure,
                RefusedStream,
                Reset,
                PerTryTimeout,
                Status(502),
                Status(503),
                Status(504)
            ]
        );
        assert_eq!(covered(&["retriable-4xx"]), [Status(409)]);
        assert_eq!(covered(&["retriable-status-codes"]), [Status(418)]);
        assert!(covered(&[]).is_empty());
    }

    #[test]
    fn grpc_conditions_retry_their_own_status_and_nothing_else() {
        let p = policy(&["unavailable", "deadline-exceeded"]);
        assert!(p.retries_on(Cause::Grpc(14)));
        assert!(p.retries_on(Cause::Grpc(4)));
        for other in [0, 1, 2, 8, 13, 16] {
            assert!(!p.retries_on(Cause::Grpc(other)), "code {other}");
        }
        // An HTTP status is not a gRPC status, and `5xx` names no gRPC code.
        assert!(!p.retries_on(Cause::Status(503)));
        assert!(!policy(&["5xx"]).retries_on(Cause::Grpc(14)));
        let all = policy(&[
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable",
        ]);
        for code in [1, 4, 8, 13, 14] {
            assert!(all.retries_on(Cause::Grpc(code)), "code {code}");
        }
    }

    #[test]
    fn backoff_is_drawn_below_the_doubling_ceiling_and_the_cap() {
        let b = Backoff::default();
        for (n, ceiling) in [(1, 25), (2, 75), (3, 175), (4, 250), (20, 250)] {
            let draws: Vec<Duration> = (0..2000).map(|_| b.draw(n)).collect();
            let max = draws.iter().max().copied().unwrap_or_default();
            assert!(max < Duration::from_millis(ceiling), "retry {n}: {max:?}");
            // Jittered over the whole range, not clustered at one end.
            assert!(
                max > Duration::from_millis(ceiling * 9 / 10),
                "retry {n}: {max:?}"
            );
        }
        let none = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(none.draw(3), Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after(b"0", now), Some(Duration::ZERO));
        assert_eq!(retry_after(b" 2 ", now), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(b"99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777.
        assert_eq!(
            retry_after(b"Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(b"Sun, 06 Nov 1994 08:49:30 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(b"-1", now), None);
        assert_eq!(retry_after(b"soon", now), None);
        assert_eq!(retry_after(b"", now), None);
    }
}
