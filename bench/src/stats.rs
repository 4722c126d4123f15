//! What one load-generator thread records, and merging threads' records.
//!
//! Each thread owns its histogram and counters (no sharing while the load
//! runs); the runner merges them once at the end. Live progress uses a few
//! single-writer atomics per thread, read once a second.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded (larger values are clamped): one hour, in µs.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Error classes. A failed request is counted here and never recorded as a
/// latency sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Could not connect.
    Connect,
    /// No complete response within the request timeout.
    Timeout,
    /// The peer reset or closed the connection mid-request.
    Reset,
    /// The response status was not the expected one.
    BadStatus,
    /// The response was not valid HTTP/1.1, or not the expected length.
    BadFraming,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::BadStatus,
        ErrorKind::BadFraming,
    ];

    /// Report label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::BadStatus => "bad_status",
            ErrorKind::BadFraming => "bad_framing",
        }
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// Connect failures.
    pub connect: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Resets and early closes.
    pub reset: u64,
    /// Unexpected status codes.
    pub bad_status: u64,
    /// Malformed or mis-sized responses.
    pub bad_framing: u64,
}

impl ErrorCounts {
    /// Counts one error.
    pub fn add(&mut self, kind: ErrorKind) {
        *self.slot(kind) += 1;
    }

    /// The count of one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        match kind {
            ErrorKind::Connect => self.connect,
            ErrorKind::Timeout => self.timeout,
            ErrorKind::Reset => self.reset,
            ErrorKind::BadStatus => self.bad_status,
            ErrorKind::BadFraming => self.bad_framing,
        }
    }

    fn slot(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::BadStatus => &mut self.bad_status,
            ErrorKind::BadFraming => &mut self.bad_framing,
        }
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        ErrorKind::ALL.iter().map(|k| self.get(*k)).sum()
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for k in ErrorKind::ALL {
            *self.slot(k) += other.get(k);
        }
    }
}

/// A new latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// One thread's results.
#[derive(Debug, Clone)]
pub struct ThreadRecord {
    /// Successful requests (or round trips) after the warmup.
    pub requests: u64,
    /// Payload bytes written after the warmup.
    pub bytes_sent: u64,
    /// Payload bytes read after the warmup.
    pub bytes_received: u64,
    /// Errors after the warmup.
    pub errors: ErrorCounts,
    /// Latencies of successful requests after the warmup, µs.
    pub latency: Histogram<u64>,
}

impl Default for ThreadRecord {
    fn default() -> Self {
        ThreadRecord {
            requests: 0,
            bytes_sent: 0,
            bytes_received: 0,
            errors: ErrorCounts::default(),
            latency: new_histogram(),
        }
    }
}

impl ThreadRecord {
    /// Records a successful request's latency.
    pub fn record_latency(&mut self, latency: Duration) {
        let us = latency.as_micros().clamp(1, MAX_LATENCY_US as u128) as u64;
        self.latency.saturating_record(us);
        self.requests += 1;
    }

    /// Merges another thread's record into this one.
    pub fn merge(&mut self, other: &ThreadRecord) {
        self.requests += other.requests;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.errors.merge(&other.errors);
        // Same bounds on both sides: addition cannot fail; saturate if it did.
        if self.latency.add(&other.latency).is_err() {
            for v in other.latency.iter_recorded() {
                self.latency
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }
}

/// Live counters of one thread, written by it alone, read by the progress line.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Completed requests (including warmup).
    pub completed: AtomicU64,
    /// Errors (including warmup).
    pub errors: AtomicU64,
}

impl LiveCounters {
    /// Counts a completed request (single writer).
    pub fn complete(&self) {
        self.completed
            .store(self.completed.load(Relaxed) + 1, Relaxed);
    }

    /// Counts an error (single writer).
    pub fn error(&self) {
        self.errors.store(self.errors.load(Relaxed) + 1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_threads_keeps_every_sample_and_count() {
        let mut a = ThreadRecord::default();
        let mut b = ThreadRecord::default();
        for ms in 1..=50 {
            a.record_latency(Duration::from_millis(ms));
        }
        for ms in 51..=100 {
            b.record_latency(Duration::from_millis(ms));
        }
        a.errors.add(ErrorKind::Timeout);
        b.errors.add(ErrorKind::Timeout);
        b.errors.add(ErrorKind::Reset);
        b.bytes_sent = 10;
        a.merge(&b);
        assert_eq!(a.requests, 100);
        assert_eq!(a.latency.len(), 100);
        assert_eq!(a.errors.timeout, 2);
        assert_eq!(a.errors.reset, 1);
        assert_eq!(a.errors.total(), 3);
        assert_eq!(a.bytes_sent, 10);
        let p50 = a.latency.value_at_quantile(0.5);
        assert!((49_900..=50_100).contains(&p50), "p50 {p50} µs");
        let max = a.latency.max();
        assert!((99_900..=100_100).contains(&max), "max {max} µs");
    }

    #[test]
    fn latencies_beyond_an_hour_are_clamped_not_lost() {
        let mut r = ThreadRecord::default();
        r.record_latency(Duration::from_secs(7200));
        assert_eq!(r.latency.len(), 1);
    }
}
