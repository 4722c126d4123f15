//! Distributed tracing (README "Tracing"): each request continues the
//! caller's trace (W3C or B3, `propagation.rs`) or starts one, sampled
//! parent-based at the configured rate; the proxy's server span becomes
//! the parent of each upstream attempt's client span, whose id goes
//! upstream in the trace headers. Sampled spans are queued (`span.rs`)
//! for the exporter, which runs off the data plane.

pub mod encode;
pub mod propagation;
pub mod span;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::codec::h1::{Field, FieldKind, RequestHead};
use propagation::{B3Multi, Extracted, push_hex};
pub use span::{SpanKind, SpanSink};

/// An HTTP listener's tracing settings (the config's top-level `tracing`).
#[derive(Debug, Clone)]
pub struct TracingSettings {
    /// Share of new traces sampled, parts per million (a caller's decision
    /// wins: parent-based).
    pub sampling_per_million: u32,
    /// Read and write W3C Trace Context.
    pub w3c: bool,
    /// Read and write B3.
    pub b3: bool,
    /// Where sampled spans go (`None`: context is propagated, no span is
    /// recorded).
    pub sink: Option<Arc<SpanSink>>,
}

/// One request's trace.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The proxy's server span.
    pub span_id: [u8; 8],
    /// The caller's span, if it sent one.
    pub parent: Option<[u8; 8]>,
    /// Spans are recorded and exported.
    pub sampled: bool,
    /// The caller's `tracestate` travels on (a valid W3C parent).
    pub keep_tracestate: bool,
}

/// Keeps the first value of a repeated field.
fn first<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// A new random span id (never zero).
pub fn new_span_id() -> [u8; 8] {
    (crate::random::next_u64() | 1).to_be_bytes()
}

impl TracingSettings {
    /// The trace of a request: its parent's (by the enabled formats, W3C
    /// first) or a new one.
    pub fn start(&self, buf: &[u8], head: &RequestHead, fields: &[Field]) -> Trace {
        let found = if head.has_trace_context {
            self.extract(buf, fields)
        } else {
            Extracted::None
        };
        let (parent, decided) = match found {
            Extracted::Parent(p) => (Some(p), p.sampled),
            Extracted::Decision(d) => (None, Some(d)),
            Extracted::None => (None, None),
        };
        let sampled = decided.unwrap_or_else(|| crate::random::chance(self.sampling_per_million));
        let trace_id = match parent {
            Some(p) => p.trace_id,
            None => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&crate::random::next_u64().to_be_bytes());
                id[8..].copy_from_slice(&(crate::random::next_u64() | 1).to_be_bytes());
                id
            }
        };
        Trace {
            trace_id,
            span_id: new_span_id(),
            parent: parent.map(|p| p.span_id),
            sampled,
            keep_tracestate: parent.is_some_and(|p| p.w3c),
        }
    }

    fn extract(&self, buf: &[u8], fields: &[Field]) -> Extracted {
        let mut b3_single = None;
        let mut multi = B3Multi::default();
        let mut traceparent = None;
        for f in fields
            .iter()
            .filter(|f| matches!(f.kind, FieldKind::TraceParent | FieldKind::B3))
        {
            let name = f.name.get(buf);
            let value = f.value.get(buf);
            if name.eq_ignore_ascii_case(b"traceparent") {
                // Two traceparent fields are invalid: treated as absent.
                traceparent = match traceparent {
                    None => Some(Some(value)),
                    Some(_) => Some(None),
                };
            } else if name.eq_ignore_ascii_case(b"b3") {
                first(&mut b3_single, value);
            } else if name.eq_ignore_ascii_case(b"x-b3-traceid") {
                first(&mut multi.trace_id, value);
            } else if name.eq_ignore_ascii_case(b"x-b3-spanid") {
                first(&mut multi.span_id, value);
            } else if name.eq_ignore_ascii_case(b"x-b3-sampled") {
                first(&mut multi.sampled, value);
            } else if name.eq_ignore_ascii_case(b"x-b3-flags") {
                first(&mut multi.flags, value);
            }
        }
        if self.w3c {
            if let Some(p) = traceparent.flatten().and_then(propagation::traceparent) {
                return Extracted::Parent(p);
            }
        }
        if self.b3 {
            if let Some(v) = b3_single {
                let found = propagation::b3_single(v);
                if found != Extracted::None {
                    return found;
                }
            }
            return multi.extract();
        }
        Extracted::None
    }

    /// Writes the trace headers of an upstream request whose client span
    /// is `span` into `out`; returns where each copy of the span id is,
    /// so a retry can write its own.
    pub fn write_headers(&self, out: &mut Vec<u8>, trace: &Trace, span: [u8; 8]) -> SpanSlots {
        let mut slots = SpanSlots::default();
        let sampled = if trace.sampled { b"1" } else { b"0" };
        if self.w3c {
            out.extend_from_slice(b"traceparent: 00-");
            push_hex(out, &trace.trace_id);
            out.push(b'-');
            slots.w3c = Some(out.len());
            push_hex(out, &span);
            out.extend_from_slice(if trace.sampled {
                b"-01\r\n"
            } else {
                b"-00\r\n"
            });
        }
        if self.b3 {
            out.extend_from_slice(b"x-b3-traceid: ");
            push_hex(out, &trace.trace_id);
            out.extend_from_slice(b"\r\nx-b3-spanid: ");
            slots.b3 = Some(out.len());
            push_hex(out, &span);
            out.extend_from_slice(b"\r\nx-b3-parentspanid: ");
            push_hex(out, &trace.span_id);
            out.extend_from_slice(b"\r\nx-b3-sampled: ");
            out.extend_from_slice(sampled);
            out.extend_from_slice(b"\r\n");
        }
        slots
    }
}

/// Where the client span id was written in an upstream request head.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanSlots {
    w3c: Option<usize>,
    b3: Option<usize>,
}

impl SpanSlots {
    /// Writes `span` over the previous one (a new attempt, a new span).
    pub fn rewrite(&self, out: &mut [u8], span: [u8; 8]) {
        let hex = propagation::hex::<16>(&span);
        for at in [self.w3c, self.b3].into_iter().flatten() {
            if let Some(slot) = out.get_mut(at..at + 16) {
                slot.copy_from_slice(&hex);
            }
        }
    }
}

/// Writes `addr` (with its port) into `buf` without allocating; returns
/// its length.
pub fn format_addr(buf: &mut [u8; 64], addr: std::net::SocketAddr) -> usize {
    let n = format_ip(buf, addr.ip(), addr.is_ipv6());
    let mut digits = [0u8; 5];
    let d = decimal(&mut digits, u64::from(addr.port()));
    buf[n] = b':';
    buf[n + 1..n + 1 + d].copy_from_slice(&digits[5 - d..]);
    n + 1 + d
}

/// Writes `ip` into `buf` (bracketed when `bracket` and IPv6); returns its
/// length. IPv4, the common case, skips the formatting machinery.
pub fn format_ip(buf: &mut [u8; 64], ip: std::net::IpAddr, bracket: bool) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let mut digits = [0u8; 5];
                let d = decimal(&mut digits, u64::from(*octet));
                buf[n..n + d].copy_from_slice(&digits[5 - d..]);
                n += d;
            }
            n
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // 64 bytes hold any "[v6]" form.
            let _ = if bracket {
                write!(cursor, "[{v6}]")
            } else {
                write!(cursor, "{v6}")
            };
            cursor.position() as usize
        }
    }
}

/// Writes `v` (< 100,000) right-aligned in `digits`; returns its length.
fn decimal(digits: &mut [u8; 5], mut v: u64) -> usize {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            return digits.len() - i;
        }
    }
}

/// A span's start (`started`) and end (now), in nanoseconds since the
/// Unix epoch: two clock reads in all.
pub fn span_times(started: Instant) -> (u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let end = now.as_nanos() as u64;
    (end.saturating_sub(started.elapsed().as_nanos() as u64), end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h1::parse_valid;

    fn settings(w3c: bool, b3: bool, percent: u32) -> TracingSettings {
        TracingSettings {
            sampling_per_million: percent * 10_000,
            w3c,
            b3,
            sink: Some(Arc::new(SpanSink::new(1, 1))),
        }
    }

    fn start(s: &TracingSettings, headers: &str) -> Trace {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let (head, fields, _) = parse_valid(raw.as_bytes());
        s.start(raw.as_bytes(), &head, &fields)
    }

    #[test]
    fn a_sampled_w3c_parent_is_continued_whatever_the_rate() {
        let t = start(
            &settings(true, true, 0),
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nb3: 0\r\n",
        );
        assert!(t.sampled);
        assert!(t.keep_tracestate);
        assert_eq!(
            propagation::trace_id_hex(&t.trace_id),
            *b"4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            t.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(t.span_id, [0; 8]);
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_at_the_rate() {
        let s = settings(true, false, 100);
        let t = start(
            &s,
            "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-00\r\n",
        );
        assert_eq!(t.parent, None);
        assert!(t.sampled, "100% of new traces are sampled");
        assert!(!t.keep_tracestate);
        let never = start(&settings(true, false, 0), "");
        assert!(!never.sampled);
    }

    #[test]
    fn b3_is_read_only_when_enabled_and_a_deny_decision_holds() {
        let b3 = "b3: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\r\n";
        assert_eq!(start(&settings(true, false, 100), b3).parent, None);
        let t = start(&settings(false, true, 100), b3);
        assert!(t.parent.is_some() && !t.sampled);
        assert!(!start(&settings(false, true, 100), "x-b3-sampled: 0\r\n").sampled);
    }

    #[test]
    fn two_traceparent_fields_are_invalid() {
        let t = start(
            &settings(true, false, 0),
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
        );
        assert_eq!(t.parent, None);
    }

    #[test]
    fn addresses_are_formatted_as_std_does() {
        for addr in [
            "10.0.0.255:8080",
            "1.2.3.4:0",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8::1]:1",
        ] {
            let a: std::net::SocketAddr = addr.parse().expect("addr");
            let mut buf = [0u8; 64];
            let n = format_addr(&mut buf, a);
            assert_eq!(&buf[..n], a.to_string().as_bytes());
            let n = format_ip(&mut buf, a.ip(), false);
            assert_eq!(&buf[..n], a.ip().to_string().as_bytes());
        }
    }

    #[test]
    fn written_headers_carry_the_client_span_and_a_retry_rewrites_it() {
        let s = settings(true, true, 100);
        let t = start(&s, "");
        let mut out = Vec::new();
        let slots = s.write_headers(&mut out, &t, [0xaa; 8]);
        let text = String::from_utf8(out.clone()).expect("ascii");
        assert!(text.contains("-aaaaaaaaaaaaaaaa-01\r\n"), "{text}");
        assert!(text.contains("x-b3-spanid: aaaaaaaaaaaaaaaa\r\n"), "{text}");
        slots.rewrite(&mut out, [0xbb; 8]);
        let text = String::from_utf8(out).expect("ascii");
        assert!(!text.contains("aaaa"), "{text}");
        assert_eq!(text.matches("bbbbbbbbbbbbbbbb").count(), 2, "{text}");
    }
}
