//! Writing the heads the proxy sends: the request towards the upstream and
//! the response towards the client, re-framed and without hop-by-hop
//! fields, into a buffer the connection reuses (no allocation per request).
//!
//! Field order and the case of names are kept; framing fields are written
//! by the proxy from the framing it will actually use.

use super::h1::{Field, FieldKind, Framing, RequestHead, ResponseHead, Span};
use crate::headers::HeaderOps;

/// What the proxy adds to a forwarded request.
#[derive(Debug)]
pub struct Forwarded<'a> {
    /// The client's address, appended to `x-forwarded-for` (None: do not
    /// touch the field).
    pub client_ip: Option<&'a str>,
    /// `http` or `https`, set as `x-forwarded-proto`.
    pub proto: &'static str,
    /// A request id to add when the request carries none.
    pub request_id: Option<&'a str>,
    /// Host to send when the request has none (HTTP/1.0 clients).
    pub default_host: &'a str,
    /// The request's trace and the client span of the attempt: the
    /// received trace fields are replaced by the proxy's.
    pub trace: Option<(
        &'a crate::trace::TracingSettings,
        &'a crate::trace::Trace,
        [u8; 8],
    )>,
}

/// What a route changes in the request it forwards.
#[derive(Debug, Clone, Copy)]
pub struct Edits<'a> {
    /// The target to send instead of the received one (path rewrite).
    pub target: Option<&'a [u8]>,
    /// The `Host` value to send instead of the received one.
    pub host: Option<&'a [u8]>,
    /// Header operations.
    pub ops: &'a HeaderOps,
    /// Ask the upstream to close after answering (mirrored copies).
    pub close: bool,
}

static NO_OPS: HeaderOps = HeaderOps::EMPTY;

impl Edits<'static> {
    /// No change.
    pub const NONE: Edits<'static> = Edits {
        target: None,
        host: None,
        ops: &NO_OPS,
        close: false,
    };
}

/// Whether the field named by `name` is listed in `Connection`.
fn nominated(buf: &[u8], name: Span, nominated: &[Span]) -> bool {
    let name = name.get(buf);
    nominated
        .iter()
        .any(|n| n.get(buf).eq_ignore_ascii_case(name))
}

fn field_line(out: &mut Vec<u8>, buf: &[u8], f: &Field) {
    out.extend_from_slice(f.name.get(buf));
    out.extend_from_slice(b": ");
    out.extend_from_slice(f.value.get(buf));
    out.extend_from_slice(b"\r\n");
}

fn framing_line(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes the upstream request: request line (always HTTP/1.1), the
/// client's fields without hop-by-hop ones, `Expect` (answered by the
/// proxy) and the proxy's own forwarding fields, then framing. Returns
/// where the trace headers hold the client span id.
pub fn request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    fields: &[Field],
    nominated_names: &[Span],
    fwd: &Forwarded<'_>,
    edits: &Edits<'_>,
) -> crate::trace::SpanSlots {
    let ops = edits.ops;
    let dropped = |name: &[u8]| !ops.is_empty() && ops.drops(name);
    out.extend_from_slice(head.method_span.get(buf));
    out.push(b' ');
    out.extend_from_slice(edits.target.unwrap_or(head.target.get(buf)));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if head.host.is_none() {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(edits.host.unwrap_or(fwd.default_host.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    for (i, f) in fields.iter().enumerate() {
        if dropped(f.name.get(buf)) {
            continue;
        }
        match f.kind {
            FieldKind::Host if edits.host.is_some() => {
                out.extend_from_slice(f.name.get(buf));
                out.extend_from_slice(b": ");
                out.extend_from_slice(edits.host.unwrap_or_default());
                out.extend_from_slice(b"\r\n");
            }
            // The formats the proxy propagates are written by it, below;
            // others pass through.
            FieldKind::TraceParent if fwd.trace.is_some_and(|(s, _, _)| s.w3c) => {}
            FieldKind::B3 if fwd.trace.is_some_and(|(s, _, _)| s.b3) => {}
            FieldKind::TraceState
                if fwd
                    .trace
                    .is_some_and(|(s, t, _)| s.w3c && !t.keep_tracestate) => {}
            FieldKind::Other
            | FieldKind::Host
            | FieldKind::XRequestId
            | FieldKind::TraceParent
            | FieldKind::B3
            | FieldKind::TraceState => {
                if f.kind != FieldKind::Host
                    && f.kind != FieldKind::XRequestId
                    && nominated(buf, f.name, nominated_names)
                {
                    continue;
                }
                field_line(out, buf, f);
            }
            FieldKind::XForwardedFor => match fwd.client_ip {
                Some(ip) if head.last_xff == Some(i) => {
                    out.extend_from_slice(f.name.get(buf));
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(f.value.get(buf));
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(ip.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                _ => field_line(out, buf, f),
            },
            // Framing, hop-by-hop, Expect and the proto the proxy sets.
            FieldKind::ContentLength
            | FieldKind::TransferEncoding
            | FieldKind::Connection
            | FieldKind::KeepAlive
            | FieldKind::ProxyConnection
            | FieldKind::Te
            | FieldKind::Upgrade
            | FieldKind::Expect
            | FieldKind::XForwardedProto => {}
        }
    }
    if let (Some(ip), None, false) = (fwd.client_ip, head.last_xff, dropped(b"x-forwarded-for")) {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dropped(b"x-forwarded-proto") {
        out.extend_from_slice(b"x-forwarded-proto: ");
        out.extend_from_slice(fwd.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let (Some(id), false, false) = (
        fwd.request_id,
        head.has_request_id,
        dropped(b"x-request-id"),
    ) {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let slots = match fwd.trace {
        Some((settings, trace, span)) => settings.write_headers(out, trace, span),
        None => crate::trace::SpanSlots::default(),
    };
    ops.write_appended(out);
    if edits.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(upgrade) = head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        out.extend_from_slice(upgrade.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    framing_line(out, head.framing);
    out.extend_from_slice(b"\r\n");
    slots
}

/// How the response goes to the client.
#[derive(Debug, Clone, Copy)]
pub struct ResponseOut {
    /// The framing towards the client (may differ from the upstream's:
    /// chunked to an HTTP/1.0 client becomes close-delimited, a
    /// close-delimited body to an HTTP/1.1 client becomes chunked).
    pub framing: Framing,
    /// Send `connection: close`.
    pub close: bool,
    /// Keep the upstream's Content-Length although there is no body
    /// (HEAD and 304: it describes the representation).
    pub keep_length: bool,
    /// Upstream attempts the request took; more than one is said in
    /// `x-ringmesh-attempts`.
    pub attempts: u32,
}

/// Writes the response head towards the client.
pub fn response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    fields: &[Field],
    nominated_names: &[Span],
    how: ResponseOut,
    ops: &HeaderOps,
) {
    let dropped = |name: &[u8]| !ops.is_empty() && ops.drops(name);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    for f in fields {
        if dropped(f.name.get(buf)) {
            continue;
        }
        match f.kind {
            FieldKind::ContentLength if how.keep_length => field_line(out, buf, f),
            FieldKind::Other
            | FieldKind::Host
            | FieldKind::Expect
            | FieldKind::XForwardedFor
            | FieldKind::XForwardedProto
            | FieldKind::XRequestId => {
                if f.kind == FieldKind::Other && nominated(buf, f.name, nominated_names) {
                    continue;
                }
                field_line(out, buf, f);
            }
            _ => {}
        }
    }
    ops.write_appended(out);
    if how.attempts > 1 {
        out.extend_from_slice(b"x-ringmesh-attempts: ");
        push_decimal(out, u64::from(how.attempts));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(upgrade) = head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        out.extend_from_slice(upgrade.get(buf));
        out.extend_from_slice(b"\r\n");
    } else if how.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    framing_line(out, how.framing);
    out.extend_from_slice(b"\r\n");
}

/// The interim response the proxy sends for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h1::{Method, parse_response};

    fn forwarded(raw: &str, fwd: &Forwarded<'_>) -> String {
        let (head, fields, nominated) = crate::codec::h1::parse_valid(raw.as_bytes());
        let mut out = Vec::new();
        request_head(
            &mut out,
            raw.as_bytes(),
            &head,
            &fields,
            &nominated,
            fwd,
            &Edits::NONE,
        );
        String::from_utf8(out).expect("ascii")
    }

    const FWD: Forwarded<'static> = Forwarded {
        client_ip: Some("10.0.0.9"),
        proto: "http",
        request_id: Some("00000000-0000-4000-8000-000000000000"),
        default_host: "10.1.1.1:80",
        trace: None,
    };

    #[test]
    fn hop_by_hop_and_nominated_fields_are_not_forwarded() {
        let out = forwarded(
            "GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Keep: y\r\n\r\n",
            &FWD,
        );
        assert_eq!(
            out,
            "GET /a HTTP/1.1\r\nHost: x\r\nX-Keep: y\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: 00000000-0000-4000-8000-000000000000\r\n\r\n"
        );
    }

    #[test]
    fn x_forwarded_for_is_appended_to_the_last_value_and_proto_is_replaced() {
        let out = forwarded(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nX-Request-Id: abc\r\n\r\n",
            &FWD,
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 10.0.0.9\r\nX-Request-Id: abc\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_chunked_request_is_reframed_and_an_http10_one_gets_a_host() {
        let out = forwarded(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            &FWD,
        );
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
        let out = forwarded("GET / HTTP/1.0\r\nContent-Length: 3\r\n\r\n", &FWD);
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nhost: 10.1.1.1:80\r\n"),
            "{out}"
        );
        assert!(out.ends_with("content-length: 3\r\n\r\n"), "{out}");
    }

    #[test]
    fn a_websocket_upgrade_keeps_its_upgrade_fields() {
        let out = forwarded(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
            &FWD,
        );
        assert!(
            out.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{out}"
        );
    }

    #[test]
    fn response_heads_are_reframed_for_the_client() {
        let raw = b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (mut fields, mut nominated) = (Vec::new(), Vec::new());
        let head = parse_response(raw, Method::Get, 65536, &mut fields, &mut nominated)
            .expect("valid")
            .expect("complete");
        let mut out = Vec::new();
        let how = ResponseOut {
            framing: Framing::Close,
            close: true,
            keep_length: false,
            attempts: 1,
        };
        response_head(&mut out, raw, &head, &fields, &nominated, how, &NO_OPS);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nServer: up\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn decimal_formatting() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
