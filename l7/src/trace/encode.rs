//! OTLP protobuf, written directly: a worker encodes each finished span
//! into its own buffer (no allocation once the buffers are warm), and the
//! exporter wraps those bytes into an `ExportTraceServiceRequest`.
//!
//! The messages and field numbers (opentelemetry-proto `trace.proto`,
//! `common.proto`, `resource.proto`, `trace_service.proto`):
//!
//! ```text
//! ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
//! ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
//! Resource      { repeated KeyValue attributes = 1; }
//! ScopeSpans    { InstrumentationScope scope = 1; repeated Span spans = 2; }
//! InstrumentationScope { string name = 1; string version = 2; }
//! Span { bytes trace_id = 1; bytes span_id = 2; bytes parent_span_id = 4;
//!        string name = 5; SpanKind kind = 6; fixed64 start_time_unix_nano = 7;
//!        fixed64 end_time_unix_nano = 8; repeated KeyValue attributes = 9;
//!        Status status = 15; }
//! Status   { string message = 2; StatusCode code = 3; }
//! KeyValue { string key = 1; AnyValue value = 2; }
//! AnyValue { oneof value { string string_value = 1; int64 int_value = 3; } }
//! ```

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// Appends a base-128 varint.
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The size of `v` as a varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

/// Appends a length-delimited field.
pub fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The size of a length-delimited field of `len` bytes (field < 16).
pub fn bytes_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// An attribute's value.
#[derive(Debug, Clone, Copy)]
pub enum Attr<'a> {
    /// A string.
    Str(&'a [u8]),
    /// A string in parts (written one after the other).
    Parts(&'a [&'a [u8]]),
    /// An integer.
    Int(i64),
}

impl Attr<'_> {
    /// The encoded `AnyValue` body's size.
    fn any_len(&self) -> usize {
        match self {
            Attr::Str(s) => bytes_field_len(s.len()),
            Attr::Parts(p) => bytes_field_len(p.iter().map(|p| p.len()).sum()),
            Attr::Int(i) => 1 + varint_len(*i as u64),
        }
    }
}

/// Appends a `KeyValue` as field `field` of its parent.
pub fn attribute(out: &mut Vec<u8>, field: u32, name: &str, value: Attr<'_>) {
    let any = value.any_len();
    let body = bytes_field_len(name.len()) + bytes_field_len(any);
    key(out, field, LEN);
    varint(out, body as u64);
    bytes_field(out, 1, name.as_bytes());
    key(out, 2, LEN);
    varint(out, any as u64);
    match value {
        Attr::Str(s) => bytes_field(out, 1, s),
        Attr::Parts(parts) => {
            key(out, 1, LEN);
            varint(out, parts.iter().map(|p| p.len()).sum::<usize>() as u64);
            for p in parts {
                out.extend_from_slice(p);
            }
        }
        Attr::Int(i) => {
            key(out, 3, VARINT);
            varint(out, i as u64);
        }
    }
}

/// Appends a span attribute (field 9 of `Span`).
pub fn span_attribute(out: &mut Vec<u8>, name: &str, value: Attr<'_>) {
    attribute(out, 9, name, value);
}

/// A span's fixed fields.
#[derive(Debug, Clone, Copy)]
pub struct SpanHead<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: &'a [u8; 8],
    pub parent: Option<&'a [u8; 8]>,
    /// 2 server, 3 client.
    pub kind: u8,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub error: bool,
}

/// Writes a span's body (without its own tag and length) into `out`:
/// the fixed fields, the name from `name` parts, then what `attributes`
/// writes (with [`span_attribute`]).
pub fn span_body(
    out: &mut Vec<u8>,
    head: &SpanHead<'_>,
    name: &[&[u8]],
    attributes: impl FnOnce(&mut Vec<u8>),
) {
    bytes_field(out, 1, head.trace_id);
    bytes_field(out, 2, head.span_id);
    if let Some(p) = head.parent {
        bytes_field(out, 4, p);
    }
    key(out, 5, LEN);
    varint(out, name.iter().map(|p| p.len()).sum::<usize>() as u64);
    for part in name {
        out.extend_from_slice(part);
    }
    key(out, 6, VARINT);
    varint(out, u64::from(head.kind));
    key(out, 7, FIXED64);
    out.extend_from_slice(&head.start_unix_nanos.to_le_bytes());
    key(out, 8, FIXED64);
    out.extend_from_slice(&head.end_unix_nanos.to_le_bytes());
    attributes(out);
    if head.error {
        // Status { code: ERROR (2) }.
        key(out, 15, LEN);
        varint(out, 2);
        key(out, 3, VARINT);
        varint(out, 2);
    }
}

/// Wraps encoded spans (each a complete `ScopeSpans.spans` field, as
/// [`span_body`] bodies framed by the sink) into an
/// `ExportTraceServiceRequest` with `resource` attributes.
pub fn export_request(resource: &[(&str, Attr<'_>)], spans: &[u8]) -> Vec<u8> {
    let mut res = Vec::new();
    for (name, value) in resource {
        attribute(&mut res, 1, name, *value);
    }
    let mut scope = Vec::new();
    bytes_field(&mut scope, 1, b"ringmesh");
    bytes_field(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
    let scope_spans_len = bytes_field_len(scope.len()) + spans.len();
    let resource_spans_len = bytes_field_len(res.len()) + bytes_field_len(scope_spans_len);
    let mut out = Vec::with_capacity(bytes_field_len(resource_spans_len));
    key(&mut out, 1, LEN);
    varint(&mut out, resource_spans_len as u64);
    bytes_field(&mut out, 1, &res);
    key(&mut out, 2, LEN);
    varint(&mut out, scope_spans_len as u64);
    bytes_field(&mut out, 1, &scope);
    out.extend_from_slice(spans);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_base_128_little_endian() {
        for (v, bytes) in [
            (0u64, &[0u8][..]),
            (1, &[1]),
            (127, &[127]),
            (128, &[0x80, 1]),
            (300, &[0xac, 2]),
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len(), "{v}");
        }
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn an_attribute_is_a_keyvalue_with_its_lengths_right() {
        let mut out = Vec::new();
        attribute(&mut out, 9, "k", Attr::Str(b"vv"));
        // 9<<3|2, len 9, [1<<3|2, 1, 'k'], [2<<3|2, 4, [1<<3|2, 2, 'v','v']]
        assert_eq!(out, [0x4a, 9, 0x0a, 1, b'k', 0x12, 4, 0x0a, 2, b'v', b'v']);
        let mut out = Vec::new();
        attribute(&mut out, 9, "n", Attr::Int(200));
        assert_eq!(out, [0x4a, 8, 0x0a, 1, b'n', 0x12, 3, 0x18, 0xc8, 1]);
    }
}
