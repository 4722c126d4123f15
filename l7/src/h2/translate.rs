//! Heads between HTTP/2 and HTTP/1.1 (RFC 9113 §8.2-8.3).
//!
//! An HTTP/2 request is written as an HTTP/1.1 head and parsed by our own
//! parser, so that routing, header operations, tracing and the access log
//! see one representation whatever the client spoke (`:authority` becomes
//! `host`, cookies split over fields are joined). Towards an HTTP/2
//! upstream the head the proxy wrote is turned back into HTTP/2 fields;
//! connection-specific fields are dropped both ways (RFC 9113 §8.2.2), and
//! `te` survives only as `trailers`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::codec::h1::{self, Field, Framing, ResponseHead, Span};
use crate::headers::HeaderOps;

/// Why an HTTP/2 request cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TranslateError {
    /// A field name or value that HTTP/1.1 cannot carry.
    #[error("a header field HTTP/1.1 cannot carry")]
    Field,
    /// No `:path` (and not CONNECT).
    #[error("missing :path")]
    Path,
}

/// Fields that are about one connection: never forwarded across a hop.
pub(crate) fn connection_specific(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Writes the HTTP/1.1 form of an HTTP/2 request head into `out`. A body
/// that is coming without a `content-length` is announced as chunked (the
/// head's framing then says a body follows).
pub(crate) fn request_to_h1(
    parts: &http::request::Parts,
    body_follows: bool,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map(|p| p.as_str());
    match target {
        Some(t) if !t.is_empty() => out.extend_from_slice(t.as_bytes()),
        _ => return Err(TranslateError::Path),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority().map(|a| a.as_str());
    if let Some(a) = authority {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut cookies = 0;
    for (name, value) in &parts.headers {
        let n = name.as_str().as_bytes();
        // `:authority` wins over `host` (RFC 9113 §8.3.1).
        if (n == b"host" && authority.is_some()) || (connection_specific(n) && n != b"te") {
            continue;
        }
        if n == b"cookie" {
            cookies += 1;
            continue;
        }
        if n == b"te" && !value.as_bytes().eq_ignore_ascii_case(b"trailers") {
            continue;
        }
        field(out, n, value.as_bytes())?;
    }
    // RFC 9113 §8.2.3: cookies split into fields are joined with "; ".
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, v) in parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .enumerate()
        {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            check_value(v.as_bytes())?;
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if body_follows && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn check_value(v: &[u8]) -> Result<(), TranslateError> {
    // The h2 crate refuses CR, LF and NUL; a value must also not start or
    // end with whitespace once in an HTTP/1.1 line (RFC 9113 §8.2.1).
    if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
        || v.first().is_some_and(|b| *b == b' ' || *b == b'\t')
        || v.last().is_some_and(|b| *b == b' ' || *b == b'\t')
    {
        return Err(TranslateError::Field);
    }
    Ok(())
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Result<(), TranslateError> {
    check_value(value)?;
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// The HTTP/2 request for the HTTP/1.1 head `buf` the proxy wrote for an
/// upstream (route edits, forwarding fields and trace context applied):
/// `host` becomes `:authority`, connection-specific fields go, `te:
/// trailers` is kept when the client sent it (gRPC servers require it).
pub(crate) fn h1_to_h2_request(
    buf: &[u8],
    scheme: &str,
    te_trailers: bool,
) -> Result<http::Request<()>, TranslateError> {
    let mut fields = Vec::with_capacity(16);
    let mut nominated = Vec::new();
    let limits = h1::Limits {
        max_request_line: buf.len(),
        max_head: buf.len(),
        max_headers: h1::HEADER_SLOTS,
    };
    let head = match h1::parse_request(buf, &limits, &mut fields, &mut nominated) {
        Ok(Some(h)) => h,
        _ => return Err(TranslateError::Field),
    };
    let authority = head.host.map(|h| h.get(buf)).unwrap_or_default();
    let target = head.target.get(buf);
    let mut uri = Vec::with_capacity(scheme.len() + 3 + authority.len() + target.len());
    uri.extend_from_slice(scheme.as_bytes());
    uri.extend_from_slice(b"://");
    uri.extend_from_slice(authority);
    uri.extend_from_slice(target);
    let uri = http::Uri::try_from(uri).map_err(|_| TranslateError::Field)?;
    let method =
        http::Method::from_bytes(head.method_span.get(buf)).map_err(|_| TranslateError::Field)?;
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    let map = req.headers_mut();
    copy_fields(buf, &fields, &[], map)?;
    map.remove(http::header::HOST);
    if te_trailers {
        map.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(req)
}

/// Copies HTTP/1.1 fields into an HTTP/2 map: names lowercased,
/// connection-specific and `Connection`-nominated fields dropped.
pub(crate) fn copy_fields(
    buf: &[u8],
    fields: &[Field],
    nominated: &[Span],
    map: &mut HeaderMap,
) -> Result<(), TranslateError> {
    for f in fields {
        let name = f.name.get(buf);
        if connection_specific(name)
            || nominated
                .iter()
                .any(|n| n.get(buf).eq_ignore_ascii_case(name))
        {
            continue;
        }
        let n = HeaderName::from_bytes(name).map_err(|_| TranslateError::Field)?;
        let v = HeaderValue::from_bytes(f.value.get(buf)).map_err(|_| TranslateError::Field)?;
        map.append(n, v);
    }
    Ok(())
}

/// The HTTP/2 response for an HTTP/1.1 response head (an upstream's, or
/// one the proxy wrote itself), with the route's response operations.
pub(crate) fn h1_to_h2_response(
    buf: &[u8],
    head: &ResponseHead,
    fields: &[Field],
    nominated: &[Span],
    ops: &HeaderOps,
) -> Result<http::Response<()>, TranslateError> {
    let mut resp = http::Response::new(());
    *resp.status_mut() =
        http::StatusCode::from_u16(head.status).map_err(|_| TranslateError::Field)?;
    copy_fields(buf, fields, nominated, resp.headers_mut())?;
    ops.apply(resp.headers_mut());
    Ok(resp)
}

/// Writes an HTTP/2 response head as an HTTP/1.1 one (for an HTTP/1.1
/// client of an HTTP/2 upstream): the body is chunked unless its length
/// is known, so that trailers can follow.
pub(crate) fn response_to_h1(
    parts: &http::response::Parts,
    framing: Framing,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::codec::write::push_decimal(out, u64::from(parts.status.as_u16()));
    out.push(b' ');
    out.extend_from_slice(crate::local_reply::reason(parts.status.as_u16()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let n = name.as_str().as_bytes();
        if connection_specific(n) || n == b"content-length" {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            crate::codec::write::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Trailer fields of a chunked HTTP/1.1 body (`name: value` lines) as an
/// HTTP/2 map; lines HTTP/2 cannot carry are skipped.
pub(crate) fn trailers_from_h1(raw: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if connection_specific(name) || name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// Writes HTTP/2 trailers as the trailer section of a chunked body.
pub(crate) fn trailers_to_h1(map: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in map {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn an_h2_request_becomes_an_h1_head_with_host_joined_cookies_and_no_connection_fields() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://api.example:8443/svc/Method?x=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .header("host", "ignored")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        request_to_h1(&parts(req), true, &mut out).expect("translates");
        let text = String::from_utf8(out).expect("ascii");
        assert_eq!(
            text,
            "POST /svc/Method?x=1 HTTP/1.1\r\nhost: api.example:8443\r\nte: trailers\r\n\
             content-type: application/grpc\r\ncookie: a=1; b=2\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_body_with_a_length_keeps_it_and_a_bodyless_request_has_no_framing() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("http://h/p")
            .header("content-length", "5")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        request_to_h1(&parts(req), true, &mut out).expect("translates");
        assert!(String::from_utf8_lossy(&out).ends_with("content-length: 5\r\n\r\n"));
        let req = http::Request::builder()
            .uri("http://h/p")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        request_to_h1(&parts(req), false, &mut out).expect("translates");
        assert_eq!(out, b"GET /p HTTP/1.1\r\nhost: h\r\n\r\n");
    }

    #[test]
    fn the_proxys_h1_head_becomes_an_h2_request_with_authority_and_te_trailers() {
        let head = b"POST /svc/M HTTP/1.1\r\nHost: grpc.local\r\nConnection: keep-alive\r\n\
                     Keep-Alive: timeout=5\r\nX-Forwarded-For: 10.0.0.1\r\n\
                     transfer-encoding: chunked\r\n\r\n";
        let req = h1_to_h2_request(head, "http", true).expect("translates");
        assert_eq!(req.uri().to_string(), "http://grpc.local/svc/M");
        assert_eq!(req.method(), "POST");
        let h = req.headers();
        assert!(h.get("host").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"10.0.0.1"[..])
        );
    }

    #[test]
    fn chunked_trailers_cross_both_ways() {
        let map = trailers_from_h1(b"grpc-status: 14\r\ngrpc-message: try later\r\nbad line\r\n");
        assert_eq!(
            map.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"14"[..])
        );
        assert_eq!(
            map.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"try later"[..])
        );
        let mut out = Vec::new();
        trailers_to_h1(&map, &mut out);
        assert_eq!(out, b"grpc-status: 14\r\ngrpc-message: try later\r\n");
    }

    #[test]
    fn a_value_with_edge_whitespace_is_refused() {
        let mut map = http::Request::builder()
            .uri("http://h/p")
            .body(())
            .expect("request");
        map.headers_mut()
            .insert("x-pad", HeaderValue::from_static(" padded"));
        let mut out = Vec::new();
        assert_eq!(
            request_to_h1(&parts(map), false, &mut out),
            Err(TranslateError::Field)
        );
    }
}
