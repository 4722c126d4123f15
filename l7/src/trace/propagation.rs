//! Trace context in request headers: W3C Trace Context (`traceparent`,
//! `tracestate`, version 00) and B3 (the single `b3` header and the
//! `X-B3-*` headers), read strictly and written by the proxy.
//!
//! Reading follows each spec's rule for bad input: an invalid
//! `traceparent` is treated as absent (and its `tracestate` dropped), an
//! invalid B3 header likewise. When both are present and enabled, W3C
//! wins, then the single `b3`, then `X-B3-*` (Linkerd's order).

/// A parent context read from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace (B3's 64-bit ids are left-padded with zeros).
    pub trace_id: [u8; 16],
    /// The caller's span.
    pub span_id: [u8; 8],
    /// The caller's sampling decision; `None`: deferred to us.
    pub sampled: Option<bool>,
    /// Read from W3C: its `tracestate` travels on.
    pub w3c: bool,
}

/// What a request's trace headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted {
    /// A valid parent context.
    Parent(Parent),
    /// No context, but a sampling decision (`b3: 0`, `X-B3-Sampled: 0`
    /// alone).
    Decision(bool),
    /// Nothing usable.
    None,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes lowercase hex into `out` (exactly twice its length in digits).
fn lower_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(())
}

/// B3 accepts upper-case hex too (leniently, as Zipkin's parsers do).
fn any_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let v = |b: u8| hex_val(b.to_ascii_lowercase());
        *o = v(pair[0])? << 4 | v(pair[1])?;
    }
    Some(())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Parses a `traceparent` value (W3C Trace Context §3.2, with the rules
/// for versions above 00); `None` when invalid.
pub fn traceparent(value: &[u8]) -> Option<Parent> {
    let v = trim(value);
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    lower_hex(&v[..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0 if v.len() != 55 => return None,
        // A later version may append fields after another dash.
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    lower_hex(&v[3..35], &mut trace_id)?;
    lower_hex(&v[36..52], &mut span_id)?;
    lower_hex(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags[0] & 1 == 1),
        w3c: true,
    })
}

/// A B3 trace id: 16 or 32 hex digits.
fn b3_trace_id(text: &[u8]) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    match text.len() {
        32 => any_hex(text, &mut id)?,
        16 => any_hex(text, &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(id)
}

fn b3_span_id(text: &[u8]) -> Option<[u8; 8]> {
    let mut id = [0u8; 8];
    any_hex(text, &mut id)?;
    (id != [0; 8]).then_some(id)
}

/// A B3 sampling state: `1`/`d` (debug) sampled, `0` not; `true`/`false`
/// accepted leniently in `X-B3-Sampled`.
fn b3_sampled(text: &[u8]) -> Option<bool> {
    match text {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        t if t.eq_ignore_ascii_case(b"true") => Some(true),
        t if t.eq_ignore_ascii_case(b"false") => Some(false),
        _ => None,
    }
}

/// Parses a single `b3` header: `{trace}-{span}[-{sampling}[-{parent}]]`,
/// or a bare sampling decision.
pub fn b3_single(value: &[u8]) -> Extracted {
    let v = trim(value);
    if v.len() == 1 {
        return b3_sampled(v).map_or(Extracted::None, Extracted::Decision);
    }
    let mut parts = v.split(|&b| b == b'-');
    let (Some(trace), Some(span)) = (parts.next(), parts.next()) else {
        return Extracted::None;
    };
    let sampled = match parts.next() {
        None => None,
        Some(s) => match b3_sampled(s) {
            Some(s) => Some(s),
            None => return Extracted::None,
        },
    };
    if let Some(parent) = parts.next() {
        if b3_span_id(parent).is_none() {
            return Extracted::None;
        }
    }
    if parts.next().is_some() {
        return Extracted::None;
    }
    match (b3_trace_id(trace), b3_span_id(span)) {
        (Some(trace_id), Some(span_id)) => Extracted::Parent(Parent {
            trace_id,
            span_id,
            sampled,
            w3c: false,
        }),
        _ => Extracted::None,
    }
}

/// The `X-B3-*` headers' values (the first of each name).
#[derive(Debug, Default, Clone, Copy)]
pub struct B3Multi<'a> {
    pub trace_id: Option<&'a [u8]>,
    pub span_id: Option<&'a [u8]>,
    pub sampled: Option<&'a [u8]>,
    pub flags: Option<&'a [u8]>,
}

impl B3Multi<'_> {
    /// What they say.
    pub fn extract(&self) -> Extracted {
        // `X-B3-Flags: 1` is debug, which implies sampled.
        let sampled = match (self.flags.map(trim), self.sampled.map(trim)) {
            (Some(b"1"), _) => Some(true),
            (_, Some(s)) => match b3_sampled(s) {
                Some(s) => Some(s),
                None => return Extracted::None,
            },
            _ => None,
        };
        match (self.trace_id, self.span_id) {
            (Some(t), Some(s)) => match (b3_trace_id(trim(t)), b3_span_id(trim(s))) {
                (Some(trace_id), Some(span_id)) => Extracted::Parent(Parent {
                    trace_id,
                    span_id,
                    sampled,
                    w3c: false,
                }),
                _ => Extracted::None,
            },
            (None, None) => sampled.map_or(Extracted::None, Extracted::Decision),
            _ => Extracted::None,
        }
    }
}

/// `bytes` as lowercase hex, in a stack array (`N` = twice its length):
/// no per-digit push on the per-request path.
pub fn hex<const N: usize>(bytes: &[u8]) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    out
}

/// Appends `bytes` as lowercase hex.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes.len() {
        8 => out.extend_from_slice(&hex::<16>(bytes)),
        16 => out.extend_from_slice(&hex::<32>(bytes)),
        _ => {
            for b in bytes {
                out.extend_from_slice(&hex::<2>(&[*b]));
            }
        }
    }
}

/// The trace id as 32 lowercase hex digits (for logs).
pub fn trace_id_hex(id: &[u8; 16]) -> [u8; 32] {
    hex::<32>(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    #[test]
    fn a_valid_traceparent_is_read_with_its_sampled_flag() {
        let p =
            traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(
            (p.trace_id, p.span_id, p.sampled, p.w3c),
            (TRACE, SPAN, Some(true), true)
        );
        let p =
            traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert_eq!(p.sampled, Some(false));
        // A later version with more fields is read by position.
        let p = traceparent(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds",
        )
        .expect("future version");
        assert_eq!(p.sampled, Some(true));
    }

    #[test]
    fn an_invalid_traceparent_is_treated_as_absent() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn b3_single_reads_ids_sampling_and_bare_decisions() {
        let e = b3_single(b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90");
        assert_eq!(
            e,
            Extracted::Parent(Parent {
                trace_id: TRACE,
                span_id: SPAN,
                sampled: Some(true),
                w3c: false
            })
        );
        let Extracted::Parent(p) = b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7") else {
            panic!("64-bit trace id");
        };
        assert_eq!(p.trace_id[..8], [0; 8]);
        assert_eq!(p.sampled, None);
        assert_eq!(b3_single(b"0"), Extracted::Decision(false));
        assert_eq!(b3_single(b"d"), Extracted::Decision(true));
        for bad in [
            &b"x"[..],
            b"4bf92f-00f067aa0ba902b7",
            b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-2",
            b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3-x",
        ] {
            assert_eq!(
                b3_single(bad),
                Extracted::None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn b3_multi_needs_both_ids_and_flags_imply_sampled() {
        let m = B3Multi {
            trace_id: Some(b"4bf92f3577b34da6a3ce929d0e0e4736"),
            span_id: Some(b"00f067aa0ba902b7"),
            sampled: Some(b"0"),
            flags: Some(b"1"),
        };
        let Extracted::Parent(p) = m.extract() else {
            panic!("parent")
        };
        assert_eq!(p.sampled, Some(true));
        let only_trace = B3Multi {
            trace_id: Some(b"4bf92f3577b34da6a3ce929d0e0e4736"),
            ..B3Multi::default()
        };
        assert_eq!(only_trace.extract(), Extracted::None);
        let decision = B3Multi {
            sampled: Some(b"true"),
            ..B3Multi::default()
        };
        assert_eq!(decision.extract(), Extracted::Decision(true));
    }

    #[test]
    fn hex_round_trips() {
        let mut out = Vec::new();
        push_hex(&mut out, &SPAN);
        assert_eq!(out, b"00f067aa0ba902b7");
        assert_eq!(&trace_id_hex(&TRACE), b"4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
