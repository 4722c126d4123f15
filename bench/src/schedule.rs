//! When each request should be sent, and how its latency is counted.
//!
//! Closed loop: a connection sends its next request as soon as the previous
//! response arrived; latency is measured from the actual send.
//!
//! Open loop (`--rate`): each connection owns a fixed schedule, request `i`
//! is *intended* at `start + i * interval`. When the server stalls, later
//! requests are sent late, and their latency is counted from the intended
//! time, not from the late send: this is the coordinated-omission
//! correction wrk2 made popular. Without it a stalled server looks fast,
//! because the generator politely stops asking while it waits.

use std::time::{Duration, Instant};

/// A per-connection sending schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// As fast as responses allow.
    Closed,
    /// Request `i` is intended at `start + i * interval`.
    Open {
        /// Time of request 0.
        start: Instant,
        /// Gap between intended sends.
        interval: Duration,
        /// Index of the next request.
        next: u64,
    },
}

impl Schedule {
    /// Open-loop schedule for one of `connections` connections sharing a
    /// total `rate` (requests per second). Connections are staggered over
    /// one interval so they do not all fire at once.
    pub fn open(start: Instant, rate: f64, connections: usize, index: usize) -> Schedule {
        let per_connection = rate / connections.max(1) as f64;
        let interval = Duration::from_secs_f64(1.0 / per_connection.max(1e-9));
        let offset = interval.mul_f64(index as f64 / connections.max(1) as f64);
        Schedule::Open {
            start: start + offset,
            interval,
            next: 0,
        }
    }

    /// The intended send time of the next request (`None` in closed loop:
    /// "now"), and advances the schedule.
    pub fn next_intended(&mut self) -> Option<Instant> {
        match self {
            Schedule::Closed => None,
            Schedule::Open {
                start,
                interval,
                next,
            } => {
                let at = *start + interval.mul_f64(*next as f64);
                *next += 1;
                Some(at)
            }
        }
    }
}

/// The latency to record for a request intended at `intended` (open loop)
/// or sent at `sent` (closed loop), completed at `done`.
pub fn corrected_latency(intended: Option<Instant>, sent: Instant, done: Instant) -> Duration {
    let from = match intended {
        // A request sent early (never happens: we sleep until intended) is
        // measured from the send.
        Some(i) if i < sent => i,
        _ => sent,
    };
    done.saturating_duration_since(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_schedule_spaces_requests_by_the_per_connection_interval() {
        let t0 = Instant::now();
        // 1000 req/s over 10 connections: 100 req/s each, 10 ms apart.
        let mut s = Schedule::open(t0, 1000.0, 10, 0);
        let a = s.next_intended().unwrap();
        let b = s.next_intended().unwrap();
        let c = s.next_intended().unwrap();
        assert_eq!(a, t0);
        assert_eq!(b - a, Duration::from_millis(10));
        assert_eq!(c - b, Duration::from_millis(10));
    }

    #[test]
    fn connections_are_staggered_within_one_interval() {
        let t0 = Instant::now();
        let mut first = Schedule::open(t0, 1000.0, 10, 0);
        let mut sixth = Schedule::open(t0, 1000.0, 10, 5);
        let gap = sixth.next_intended().unwrap() - first.next_intended().unwrap();
        assert_eq!(gap, Duration::from_millis(5));
    }

    #[test]
    fn a_stall_is_charged_to_every_request_that_waited_behind_it() {
        // 100 req/s on one connection: intended at 0, 10, 20, ... ms. The
        // server stalls for 100 ms on request 0, then answers instantly.
        let t0 = Instant::now();
        let mut s = Schedule::open(t0, 100.0, 1, 0);
        let ms = Duration::from_millis;
        let mut now = t0;
        let mut latencies = Vec::new();
        for i in 0..11 {
            let intended = s.next_intended();
            let sent = now.max(intended.unwrap());
            let done = if i == 0 { sent + ms(100) } else { sent };
            latencies.push(corrected_latency(intended, sent, done));
            now = done;
        }
        // Request 0 took 100 ms; request 1 was intended at 10 ms but sent
        // at 100 ms: 90 ms; ... request 10 was on time again.
        assert_eq!(latencies[0], ms(100));
        assert_eq!(latencies[1], ms(90));
        assert_eq!(latencies[5], ms(50));
        assert_eq!(latencies[10], ms(0));
    }

    #[test]
    fn closed_loop_measures_from_the_send() {
        let t0 = Instant::now();
        let mut s = Schedule::Closed;
        assert!(s.next_intended().is_none());
        let l = corrected_latency(None, t0, t0 + Duration::from_millis(3));
        assert_eq!(l, Duration::from_millis(3));
    }
}
