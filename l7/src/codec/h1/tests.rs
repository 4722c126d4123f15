//! Request and response heads: what is accepted, what is refused and why
//! (RFC 9112, ../shared/REFERENCE-L7.md §1 and the http-garden transducer
//! cases of §2.1), and a differential check that every head the proxy
//! writes parses back to the same request.

use super::*;
use crate::codec::chunked::{Chunk, ChunkedDecoder, ChunkedError, ChunkedLimits};
use crate::codec::write::{self, Forwarded, ResponseOut};

type Parsed = (RequestHead, Vec<Field>, Vec<Span>);

fn parse_with(raw: &[u8], limits: &Limits) -> Result<Option<Parsed>, HeadError> {
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    let head = parse_request(raw, limits, &mut fields, &mut nominated)?;
    Ok(head.map(|h| (h, fields, nominated)))
}

/// A complete, valid request head.
fn accepted(raw: &[u8]) -> Parsed {
    match parse_with(raw, &Limits::default()) {
        Ok(Some(p)) => p,
        other => panic!(
            "{:?} should be accepted, got {:?}",
            String::from_utf8_lossy(raw),
            other.map(|o| o.map(|p| p.0))
        ),
    }
}

/// A request head refused with some error.
fn refused_with(raw: &[u8], limits: &Limits) -> HeadError {
    match parse_with(raw, limits) {
        Err(e) => e,
        Ok(p) => panic!(
            "{:?} should be refused, got {:?}",
            String::from_utf8_lossy(raw),
            p.map(|p| p.0)
        ),
    }
}

fn refused(raw: &[u8]) -> HeadError {
    refused_with(raw, &Limits::default())
}

fn response(raw: &[u8], method: Method) -> Result<ResponseHead, HeadError> {
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    parse_response(raw, method, 64 * 1024, &mut fields, &mut nominated)
        .map(|h| h.expect("complete response head"))
}

fn response_ok(raw: &[u8], method: Method) -> ResponseHead {
    response(raw, method)
        .unwrap_or_else(|e| panic!("{:?} refused: {e}", String::from_utf8_lossy(raw)))
}

/// A request with `extra` header lines after `Host: a`.
fn with_fields(extra: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes()
}

// ---------------------------------------------------------------------------
// Request line, method, target, version, keep-alive

#[test]
fn a_simple_get_parses_with_method_target_host_and_no_body() {
    let raw = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    let (head, fields, nominated) = accepted(raw);
    assert_eq!(head.len, raw.len());
    assert_eq!(head.method, Method::Get);
    assert_eq!(head.method_span.get(raw), b"GET");
    assert_eq!(head.target.get(raw), b"/index.html?q=1");
    assert_eq!(head.minor, 1);
    assert_eq!(head.host.expect("host").get(raw), b"example.com");
    assert!(head.keep_alive);
    assert_eq!(head.framing, Framing::None);
    assert!(!head.expect_continue);
    assert!(head.upgrade.is_none());
    assert_eq!(fields.len(), 2);
    assert_eq!(fields[0].kind, FieldKind::Host);
    assert_eq!(fields[1].kind, FieldKind::Other);
    assert_eq!(fields[1].name.get(raw), b"Accept");
    assert_eq!(fields[1].value.get(raw), b"*/*");
    assert!(nominated.is_empty());
}

#[test]
fn a_head_is_incomplete_until_the_empty_line() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for cut in 0..raw.len() {
        assert!(
            matches!(parse_with(&raw[..cut], &Limits::default()), Ok(None)),
            "cut at {cut}"
        );
    }
    assert!(parse_with(raw, &Limits::default()).unwrap().is_some());
}

#[test]
fn bytes_after_the_head_are_not_part_of_it() {
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
    let (head, _, _) = accepted(raw);
    assert_eq!(&raw[head.len..], b"abcGET");
    assert_eq!(head.framing, Framing::Length(3));
}

#[test]
fn known_methods_are_recognised_case_sensitively_and_others_are_other() {
    for (token, method) in [
        ("GET", Method::Get),
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("DELETE", Method::Delete),
        ("OPTIONS", Method::Options),
        ("PATCH", Method::Other),
        ("get", Method::Other),
        ("M-SEARCH", Method::Other),
    ] {
        let raw = format!("{token} / HTTP/1.1\r\nHost: a\r\n\r\n");
        let (head, _, _) = accepted(raw.as_bytes());
        assert_eq!(head.method, method, "{token}");
        assert_eq!(head.method_span.get(raw.as_bytes()), token.as_bytes());
    }
    let raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let (head, _, _) = accepted(raw);
    assert_eq!(head.method, Method::Connect);
    assert_eq!(head.target.get(raw), b"example.com:443");
}

#[test]
fn leading_empty_lines_before_the_request_line_are_skipped() {
    let raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (head, _, _) = accepted(raw);
    assert_eq!(head.target.get(raw), b"/");
    assert_eq!(head.len, raw.len());
}

#[test]
fn http10_is_never_keep_alive_even_when_asked() {
    let (head, _, _) = accepted(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n");
    assert_eq!(head.minor, 0);
    assert!(!head.keep_alive);
    let (head, _, _) = accepted(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
    assert!(!head.keep_alive);
}

#[test]
fn connection_close_ends_keep_alive_in_any_case_and_list_position() {
    for value in [
        "close",
        "Close",
        "CLOSE",
        "keep-alive, close",
        " x-foo ,close ",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: {value}\r\n\r\n");
        let (head, _, _) = accepted(raw.as_bytes());
        assert!(!head.keep_alive, "{value}");
    }
    let (head, _, _) = accepted(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
    assert!(head.keep_alive);
}

#[test]
fn http09_request_line_is_refused_with_400() {
    for raw in [
        &b"GET /\r\n\r\n"[..],
        b"GET /\r\nHost: a\r\n\r\n",
        b"GET\r\n\r\n",
    ] {
        let e = refused(raw);
        assert_eq!(e.status(), 400, "{:?}: {e:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn versions_other_than_1_0_and_1_1_are_refused_with_400() {
    for version in [
        "HTTP/1.2",
        "HTTP/2.0",
        "HTTP/0.9",
        "http/1.1",
        "HTTP/1.10",
        "HTTP/11",
    ] {
        let raw = format!("GET / {version}\r\nHost: a\r\n\r\n");
        let e = refused(raw.as_bytes());
        assert!(
            matches!(e, HeadError::Version | HeadError::Malformed),
            "{version}: {e:?}"
        );
        assert_eq!(e.status(), 400, "{version}");
    }
    assert_eq!(
        refused(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        HeadError::Version
    );
}

#[test]
fn extra_whitespace_or_bytes_in_the_request_line_are_malformed() {
    for raw in [
        &b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let e = refused(raw);
        assert_eq!(e.status(), 400, "{:?}: {e:?}", String::from_utf8_lossy(raw));
    }
}

// ---------------------------------------------------------------------------
// Content-Length

#[test]
fn content_length_frames_the_body_and_zero_means_no_body() {
    let (head, _, _) = accepted(&with_fields("Content-Length: 42\r\n"));
    assert_eq!(head.framing, Framing::Length(42));
    let (head, _, _) = accepted(&with_fields("Content-Length: 0\r\n"));
    assert_eq!(head.framing, Framing::None);
    let (head, _, _) = accepted(&with_fields("content-length: 007\r\n"));
    assert_eq!(head.framing, Framing::Length(7));
}

#[test]
fn content_length_and_transfer_encoding_together_are_refused() {
    for extra in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: gzip\r\n",
    ] {
        assert_eq!(
            refused(&with_fields(extra)),
            HeadError::ContentLengthAndTransferEncoding,
            "{extra:?}"
        );
    }
    assert_eq!(HeadError::ContentLengthAndTransferEncoding.status(), 400);
}

#[test]
fn differing_content_lengths_are_refused_and_identical_ones_accepted() {
    assert_eq!(
        refused(&with_fields("Content-Length: 5\r\nContent-Length: 6\r\n")),
        HeadError::ContentLength
    );
    let (head, _, _) = accepted(&with_fields("Content-Length: 5\r\nContent-Length: 5\r\n"));
    assert_eq!(head.framing, Framing::Length(5));
    // Same value spelled differently: still one length.
    let (head, _, _) = accepted(&with_fields("Content-Length: 5\r\ncontent-length: 05\r\n"));
    assert_eq!(head.framing, Framing::Length(5));
}

#[test]
fn content_length_must_be_digits_only() {
    for value in [
        "0x10", "+5", "-5", "-0", "5,5", "5, 5", "5 5", "5a", "1e3", "5.0", "\"5\"", "٥",
    ] {
        let raw = with_fields(&format!("Content-Length: {value}\r\n"));
        assert_eq!(refused(&raw), HeadError::ContentLength, "{value:?}");
    }
}

#[test]
fn an_empty_content_length_is_refused() {
    assert_eq!(
        refused(&with_fields("Content-Length: \r\n")),
        HeadError::ContentLength
    );
    assert_eq!(
        refused(&with_fields("Content-Length:\r\n")),
        HeadError::ContentLength
    );
}

#[test]
fn whitespace_around_a_content_length_value_is_optional_whitespace() {
    // httparse strips OWS on both sides of a field value (RFC 9112 §5.1),
    // so ` 5`, `5 ` and tabs are the value `5`.
    for value in [" 5", "5 ", "\t5\t", "  5  "] {
        let raw = with_fields(&format!("Content-Length:{value}\r\n"));
        let (head, fields, _) = accepted(&raw);
        assert_eq!(head.framing, Framing::Length(5), "{value:?}");
        assert_eq!(fields[1].value.get(&raw), b"5");
    }
}

#[test]
fn content_length_of_twenty_digits_is_refused_and_of_nineteen_accepted() {
    assert_eq!(
        refused(&with_fields("Content-Length: 18446744073709551615\r\n")),
        HeadError::ContentLength
    );
    assert_eq!(
        refused(&with_fields("Content-Length: 00000000000000000005\r\n")),
        HeadError::ContentLength
    );
    let (head, _, _) = accepted(&with_fields("Content-Length: 9999999999999999999\r\n"));
    assert_eq!(head.framing, Framing::Length(9_999_999_999_999_999_999));
}

// ---------------------------------------------------------------------------
// Transfer-Encoding

#[test]
fn transfer_encoding_exactly_chunked_in_any_case_is_accepted() {
    for value in [
        "chunked",
        "Chunked",
        "CHUNKED",
        "cHuNkEd",
        " chunked ",
        "chunked\t",
    ] {
        let raw = with_fields(&format!("Transfer-Encoding: {value}\r\n"));
        let (head, _, _) = accepted(&raw);
        assert_eq!(head.framing, Framing::Chunked, "{value:?}");
    }
}

#[test]
fn another_coding_before_chunked_is_unsupported_with_501() {
    for value in [
        "gzip, chunked",
        "gzip,chunked",
        "identity, chunked",
        "x, y, chunked",
    ] {
        let raw = with_fields(&format!("Transfer-Encoding: {value}\r\n"));
        assert_eq!(
            refused(&raw),
            HeadError::UnsupportedTransferCoding,
            "{value:?}"
        );
    }
    assert_eq!(HeadError::UnsupportedTransferCoding.status(), 501);
}

#[test]
fn transfer_encoding_not_ending_in_a_single_chunked_is_refused_with_400() {
    for value in [
        "chunked, gzip",
        "xchunked",
        "chunkedx",
        "chunk",
        ",chunked",
        "chunked,",
        "chunked, chunked",
        "chunked,,",
        "gzip",
        "identity",
        "\"chunked\"",
        "'chunked'",
        "chunked;q=1",
        "cow chunked bar",
        "",
    ] {
        let raw = with_fields(&format!("Transfer-Encoding: {value}\r\n"));
        assert_eq!(refused(&raw), HeadError::TransferEncoding, "{value:?}");
    }
    assert_eq!(HeadError::TransferEncoding.status(), 400);
}

#[test]
fn two_transfer_encoding_lines_are_refused() {
    for extra in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\ntransfer-encoding: identity\r\n",
    ] {
        assert_eq!(
            refused(&with_fields(extra)),
            HeadError::TransferEncoding,
            "{extra:?}"
        );
    }
}

#[test]
fn transfer_encoding_in_http10_is_refused() {
    assert_eq!(
        refused(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HeadError::TransferEncoding
    );
    assert_eq!(
        refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HeadError::TransferEncoding
    );
}

#[test]
fn names_that_only_resemble_transfer_encoding_are_ordinary_fields() {
    // Forwarded as received, never read as framing: the body is framed by
    // the Content-Length the proxy also forwards.
    for name in [
        "Transfer_Encoding",
        "Transfer Encoding",
        "Content-Encoding",
        "XTransfer-Encoding",
    ] {
        let raw = with_fields(&format!("{name}: chunked\r\nContent-Length: 5\r\n"));
        match parse_with(&raw, &Limits::default()) {
            Ok(Some((head, _, _))) => assert_eq!(head.framing, Framing::Length(5), "{name}"),
            Err(e) => assert_eq!(e.status(), 400, "{name}"),
            Ok(None) => panic!("{name}: incomplete"),
        }
    }
}

// ---------------------------------------------------------------------------
// Field syntax

#[test]
fn obs_fold_is_malformed() {
    for extra in [
        "X-A: a\r\n b\r\n",
        "X-A: a\r\n\tb\r\n",
        "Host2: a\r\n  \r\n",
    ] {
        assert_eq!(
            refused(&with_fields(extra)),
            HeadError::Malformed,
            "{extra:?}"
        );
    }
    // A fold right after the request line: leading whitespace before the
    // first field.
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
        HeadError::Malformed
    );
}

#[test]
fn whitespace_before_the_colon_is_malformed() {
    for raw in [
        &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n",
    ] {
        assert_eq!(
            refused(raw),
            HeadError::Malformed,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn a_bare_cr_anywhere_is_malformed() {
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\rHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
    ] {
        let e = refused(raw);
        assert!(
            matches!(e, HeadError::Malformed | HeadError::BareLf),
            "{:?}: {e:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(e.status(), 400);
    }
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
        HeadError::Malformed
    );
}

#[test]
fn nul_and_control_bytes_in_values_are_malformed() {
    for value in [
        &b"a\x00b"[..],
        b"\x00",
        b"a\x01",
        b"a\x7f",
        b"a\x0bb",
        b"a\x0cb",
    ] {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ".to_vec();
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(refused(&raw), HeadError::Malformed, "{value:?}");
    }
}

#[test]
fn obs_text_and_tabs_inside_values_are_accepted() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xc3\xa9\tand \x80\xff\r\n\r\n";
    let (_, fields, _) = accepted(raw);
    assert_eq!(fields[1].value.get(raw), b"caf\xc3\xa9\tand \x80\xff");
}

#[test]
fn non_token_bytes_in_a_field_name_are_malformed() {
    for name in [
        &b"Header\x85"[..],
        b"X\x00A",
        b"X(A)",
        b"X\"A",
        b"X/A",
        b"X@A",
        b"X A",
        b"\xffX",
        b"X[A]",
    ] {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        raw.extend_from_slice(name);
        raw.extend_from_slice(b": v\r\n\r\n");
        assert_eq!(refused(&raw), HeadError::Malformed, "{name:?}");
    }
}

#[test]
fn a_field_line_without_a_colon_or_without_a_name_is_malformed() {
    for extra in ["NoColon\r\n", ": value\r\n", "X\r\n"] {
        assert_eq!(
            refused(&with_fields(extra)),
            HeadError::Malformed,
            "{extra:?}"
        );
    }
}

#[test]
fn bare_lf_line_endings_are_refused_although_httparse_accepts_them() {
    let raw = b"GET / HTTP/1.1\nHost: a\n\n";
    // httparse alone takes this as a complete head...
    let mut slots = [httparse::EMPTY_HEADER; 4];
    assert!(matches!(
        httparse::Request::new(&mut slots).parse(raw),
        Ok(httparse::Status::Complete(_))
    ));
    // ...the proxy does not.
    assert_eq!(refused(raw), HeadError::BareLf);
    assert_eq!(HeadError::BareLf.status(), 400);
    for raw in [
        &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: b\nY: c\r\n\r\n",
        b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(
            refused(raw),
            HeadError::BareLf,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

// ---------------------------------------------------------------------------
// Host

#[test]
fn http11_without_host_is_refused() {
    assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n"), HeadError::Host);
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nX-Host: a\r\n\r\n"),
        HeadError::Host
    );
    assert_eq!(HeadError::Host.status(), 400);
}

#[test]
fn two_host_fields_are_refused_even_if_equal() {
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        HeadError::Host
    );
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
        HeadError::Host
    );
    assert_eq!(
        refused(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"),
        HeadError::Host
    );
}

#[test]
fn a_host_with_bytes_outside_an_authority_is_refused() {
    for value in [
        "a/b",
        "a b",
        "a\tb",
        "user@a",
        "a?b",
        "a#b",
        "a\\b",
        "a\"b",
        "a<b>",
        "a{b}",
        "caf\u{e9}",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
        assert_eq!(refused(raw.as_bytes()), HeadError::Host, "{value:?}");
    }
}

#[test]
fn hosts_that_are_authorities_are_accepted() {
    for value in [
        "example.com",
        "example.com:8080",
        "127.0.0.1:80",
        "[::1]:443",
        "[fe80::1%25eth0]",
        "xn--caf-dma.example",
        "a_b~c-d",
        "",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
        let (head, _, _) = accepted(raw.as_bytes());
        assert_eq!(
            head.host.expect("host").get(raw.as_bytes()),
            value.as_bytes()
        );
    }
}

#[test]
fn http10_without_host_is_accepted() {
    let (head, fields, _) = accepted(b"GET / HTTP/1.0\r\n\r\n");
    assert!(head.host.is_none());
    assert!(fields.is_empty());
    assert!(!head.keep_alive);
}

// ---------------------------------------------------------------------------
// Limits

fn small_line_limits() -> Limits {
    Limits {
        max_request_line: 64,
        ..Limits::default()
    }
}

#[test]
fn a_long_request_line_is_414_while_still_incomplete() {
    let limits = small_line_limits();
    let partial = format!("GET /{}", "a".repeat(100));
    assert!(matches!(parse_with(partial.as_bytes(), &limits), Ok(None)));
    let e = check_partial_request(partial.as_bytes(), &limits).unwrap_err();
    assert_eq!(e, HeadError::UriTooLong);
    assert_eq!(e.status(), 414);
    // The same with the line ended but the head not yet complete.
    let partial = format!("GET /{} HTTP/1.1\r\nHost: a\r\n", "a".repeat(100));
    assert_eq!(
        check_partial_request(partial.as_bytes(), &limits),
        Err(HeadError::UriTooLong)
    );
    // A short partial line is fine.
    assert_eq!(check_partial_request(b"GET /abc", &limits), Ok(()));
    assert_eq!(check_partial_request(b"\r\n\r\nGET /abc", &limits), Ok(()));
}

#[test]
fn a_long_request_line_in_a_complete_head_is_414() {
    let limits = small_line_limits();
    let raw = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100));
    assert_eq!(refused_with(raw.as_bytes(), &limits), HeadError::UriTooLong);
    // Leading empty lines do not count towards the request line.
    let raw = format!(
        "\r\n\r\nGET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(30)
    );
    assert!(parse_with(raw.as_bytes(), &limits).unwrap().is_some());
    // Long field lines are bounded by the head limit, not the line limit.
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(200)
    );
    assert!(parse_with(raw.as_bytes(), &limits).unwrap().is_some());
}

#[test]
fn the_default_request_line_limit_is_8_kib() {
    let ok = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(8000));
    accepted(ok.as_bytes());
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(8200));
    assert_eq!(refused(long.as_bytes()), HeadError::UriTooLong);
}

#[test]
fn a_head_over_max_head_is_431_complete_or_not() {
    let limits = Limits {
        max_head: 128,
        ..Limits::default()
    };
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(200)
    );
    let e = refused_with(raw.as_bytes(), &limits);
    assert_eq!(e, HeadError::HeadTooLarge);
    assert_eq!(e.status(), 431);
    let partial = &raw.as_bytes()[..150];
    assert!(matches!(parse_with(partial, &limits), Ok(None)));
    assert_eq!(
        check_partial_request(partial, &limits),
        Err(HeadError::HeadTooLarge)
    );
    assert_eq!(
        check_partial_request(&raw.as_bytes()[..100], &limits),
        Ok(())
    );
    // Just under the limit passes.
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "v".repeat(60));
    assert!(raw.len() <= 128);
    assert!(parse_with(raw.as_bytes(), &limits).unwrap().is_some());
}

#[test]
fn more_fields_than_max_headers_is_431() {
    let limits = Limits {
        max_headers: 4,
        ..Limits::default()
    };
    let four = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert!(parse_with(four.as_bytes(), &limits).unwrap().is_some());
    let five = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    let e = refused_with(five.as_bytes(), &limits);
    assert_eq!(e, HeadError::TooManyHeaders);
    assert_eq!(e.status(), 431);
}

#[test]
fn the_default_header_count_limit_is_100() {
    let head = |n: usize| {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 1..n {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        raw
    };
    let (_, fields, _) = accepted(head(100).as_bytes());
    assert_eq!(fields.len(), 100);
    assert_eq!(refused(head(101).as_bytes()), HeadError::TooManyHeaders);
}

#[test]
fn max_headers_above_the_slot_count_is_capped_at_the_slot_count() {
    let limits = Limits {
        max_headers: 10_000,
        max_head: 1 << 20,
        ..Limits::default()
    };
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..HEADER_SLOTS {
        raw.push_str(&format!("X-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    assert_eq!(
        refused_with(raw.as_bytes(), &limits),
        HeadError::TooManyHeaders
    );
}

// ---------------------------------------------------------------------------
// Connection, Expect, Upgrade, TE, forwarding fields

#[test]
fn connection_nominates_fields_other_than_keep_alive_close_and_upgrade() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\n\r\n";
    let (head, _, nominated) = accepted(raw);
    assert!(head.keep_alive);
    let names: Vec<&[u8]> = nominated.iter().map(|s| s.get(raw)).collect();
    assert_eq!(names, [&b"X-Foo"[..]]);

    let raw =
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close,, Upgrade ,x-a\r\nConnection: X-B\r\n\r\n";
    let (_, _, nominated) = accepted(raw);
    let names: Vec<&[u8]> = nominated.iter().map(|s| s.get(raw)).collect();
    assert_eq!(names, [&b"x-a"[..], b"X-B"]);
}

#[test]
fn expect_100_continue_is_recognised_in_any_case() {
    for value in ["100-continue", "100-Continue", "100-CONTINUE"] {
        let raw = with_fields(&format!("Expect: {value}\r\nContent-Length: 3\r\n"));
        let (head, _, _) = accepted(&raw);
        assert!(head.expect_continue, "{value}");
    }
    let (head, _, _) = accepted(&with_fields("Expect: something-else\r\n"));
    assert!(!head.expect_continue);
}

#[test]
fn connection_upgrade_with_upgrade_sets_the_upgrade() {
    let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let (head, _, nominated) = accepted(raw);
    assert_eq!(head.upgrade.expect("upgrade").get(raw), b"websocket");
    assert!(nominated.is_empty());
    let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, upgrade\r\n\r\n";
    let (head, _, _) = accepted(raw);
    assert_eq!(head.upgrade.expect("upgrade").get(raw), b"websocket");
}

#[test]
fn upgrade_without_connection_upgrade_or_in_http10_is_ignored() {
    let (head, _, _) = accepted(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert!(head.upgrade.is_none());
    let (head, _, _) =
        accepted(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(head.upgrade.is_none());
    let (head, _, _) = accepted(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n");
    assert!(head.upgrade.is_none());
}

#[test]
fn te_trailers_xff_and_request_id_are_noted() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nTE: deflate, Trailers\r\nX-Forwarded-For: 1.1.1.1\r\nX-Request-Id: r\r\nx-forwarded-for: 2.2.2.2\r\n\r\n";
    let (head, fields, _) = accepted(raw);
    assert!(head.te_trailers);
    assert!(head.has_request_id);
    assert_eq!(head.last_xff, Some(4));
    assert_eq!(fields[4].value.get(raw), b"2.2.2.2");
    let (head, _, _) = accepted(b"GET / HTTP/1.1\r\nHost: a\r\nTE: gzip\r\n\r\n");
    assert!(!head.te_trailers);
    assert!(head.last_xff.is_none());
    assert!(!head.has_request_id);
}

#[test]
fn hop_by_hop_kinds_are_exactly_the_rfc_9110_list() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nKeep-Alive: 1\r\nProxy-Connection: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nUpgrade: x\r\nExpect: x\r\nX-Forwarded-Proto: http\r\n\r\n";
    let (_, fields, _) = accepted(raw);
    let hop: Vec<&[u8]> = fields
        .iter()
        .filter(|f| f.kind.is_hop_by_hop())
        .map(|f| f.name.get(raw))
        .collect();
    assert_eq!(
        hop,
        [
            &b"Connection"[..],
            b"Keep-Alive",
            b"Proxy-Connection",
            b"TE",
            b"Transfer-Encoding",
            b"Upgrade"
        ]
    );
}

#[test]
fn has_token_reads_comma_lists_case_insensitively() {
    assert!(has_token(b"a, Trailers ,b", "trailers"));
    assert!(has_token(b"trailers", "trailers"));
    assert!(!has_token(b"trailersx", "trailers"));
    assert!(!has_token(b"", "trailers"));
}

#[test]
fn every_error_has_a_distinct_label() {
    let all = [
        HeadError::Malformed,
        HeadError::BareLf,
        HeadError::Version,
        HeadError::UriTooLong,
        HeadError::HeadTooLarge,
        HeadError::TooManyHeaders,
        HeadError::ContentLength,
        HeadError::ContentLengthAndTransferEncoding,
        HeadError::TransferEncoding,
        HeadError::UnsupportedTransferCoding,
        HeadError::Host,
    ];
    let mut labels: Vec<&str> = all.iter().map(|e| e.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
    for e in all {
        assert_eq!(e.to_string(), e.as_str());
        assert!(matches!(e.status(), 400 | 414 | 431 | 501));
    }
}

// ---------------------------------------------------------------------------
// http-garden transducer cases (REFERENCE-L7.md §2.1), head level. Each must
// be refused, or normalised before it is forwarded.

#[test]
fn transducer_01_content_length_in_hex_is_refused() {
    assert_eq!(
        refused(&with_fields("Content-Length: 0x10\r\n")),
        HeadError::ContentLength
    );
}

#[test]
fn transducer_05_empty_content_length_is_refused() {
    assert_eq!(
        refused(&with_fields("content-length: \r\n")),
        HeadError::ContentLength
    );
}

#[test]
fn transducer_06_byte_0x85_in_a_field_name_is_refused() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nHeader\x85: x\r\n\r\n";
    assert_eq!(refused(raw), HeadError::Malformed);
}

#[test]
fn transducer_09_18_transfer_encoding_with_a_leading_comma_is_refused() {
    for value in [",chunked", ", chunked", " , chunked"] {
        let raw = with_fields(&format!("Transfer-Encoding: {value}\r\n"));
        assert_eq!(refused(&raw), HeadError::TransferEncoding, "{value:?}");
    }
}

#[test]
fn transducer_10_cr_inside_a_value_is_refused() {
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
        HeadError::Malformed
    );
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r0\r\n\r\n"),
        HeadError::Malformed
    );
}

#[test]
fn transducer_11_empty_content_length_then_a_second_one_is_refused() {
    assert_eq!(
        refused(&with_fields("Content-Length: \r\nContent-Length: 5\r\n")),
        HeadError::ContentLength
    );
    assert_eq!(
        refused(&with_fields("Content-Length: 5\r\nContent-Length: \r\n")),
        HeadError::ContentLength
    );
}

#[test]
fn transducer_12_nul_in_host_is_refused() {
    let e = refused(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n");
    assert_eq!(e, HeadError::Malformed);
    let e = refused(b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n");
    assert_eq!(e.status(), 400);
}

#[test]
fn transducer_14_a_field_line_without_a_colon_is_refused() {
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nTe\nst: test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nTe\r\nst: test\r\n\r\n",
    ] {
        let e = refused(raw);
        assert!(
            matches!(e, HeadError::Malformed | HeadError::BareLf),
            "{e:?}"
        );
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn transducer_15_leading_comma_chunked_with_content_length_is_refused() {
    let e = refused(&with_fields(
        "Transfer-Encoding: ,chunked\r\nContent-Length: 5\r\n",
    ));
    assert!(
        matches!(
            e,
            HeadError::ContentLengthAndTransferEncoding | HeadError::TransferEncoding
        ),
        "{e:?}"
    );
}

#[test]
fn transducer_16_bare_lf_is_refused_not_forwarded() {
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\nContent-Length: 5\r\n\r\n"),
        HeadError::BareLf
    );
}

#[test]
fn transducer_20_nul_in_a_field_name_is_refused() {
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\na:b\r\nc\x00\r\n\r\n"),
        HeadError::Malformed
    );
}

#[test]
fn transducer_21_a_get_body_is_framed_and_its_length_forwarded() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let (head, fields, nominated) = accepted(raw);
    assert_eq!(head.framing, Framing::Length(5));
    let out = write_plain(raw, &head, &fields, &nominated);
    assert!(
        out.ends_with(b"content-length: 5\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn transducer_22_content_length_0_then_31_is_refused() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 31\r\n\r\nGET /evil HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(refused(raw), HeadError::ContentLength);
}

#[test]
fn transducer_23_content_length_with_transfer_encoding_is_refused() {
    assert_eq!(
        refused(&with_fields(
            "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n"
        )),
        HeadError::ContentLengthAndTransferEncoding
    );
}

#[test]
fn transducer_25_two_chunked_transfer_encoding_lines_are_refused() {
    assert_eq!(
        refused(&with_fields(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
        )),
        HeadError::TransferEncoding
    );
}

/// The body-level transducer cases (2, 3, 4, 7, 13, 17, 19, 24), read the
/// way the proxy reads them: a chunked request head, then the strict
/// decoder over what follows.
#[test]
fn transducer_body_cases_are_refused_by_the_chunked_decoder() {
    let cases: [(&str, &[u8], ChunkedError); 9] = [
        ("2", b"Z\r\nZZ\r\n", ChunkedError::InvalidSizeDigit),
        ("3", b"2\r\r;a\r\nab\r\n0\r\n\r\n", ChunkedError::BareCr),
        ("4", b"1\r0\n\r\n", ChunkedError::BareCr),
        (
            "7",
            b"1these-bytes-never-get-validated\r\nx\r\n0\r\n\r\n",
            ChunkedError::InvalidSizeDigit,
        ),
        ("13", b"a\r\n0123456789\n0\r\n\r\n", ChunkedError::BareLf),
        ("17", b"1\r\nx\r\n\r\n0\r\n\r\n", ChunkedError::MissingSize),
        ("19", b"-0x0\r\n\r\n", ChunkedError::InvalidSizeDigit),
        (
            "24",
            b" 1\r\nx\r\n0\r\n\r\n",
            ChunkedError::InvalidSizeDigit,
        ),
        (
            "24b",
            b"\t1\r\nx\r\n0\r\n\r\n",
            ChunkedError::InvalidSizeDigit,
        ),
    ];
    for (case, body, expected) in cases {
        let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        let (head, _, _) = accepted(&raw);
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(
            decode_chunked(&raw[head.len..]),
            Err(expected),
            "case {case}"
        );
    }
    // And a valid body for contrast.
    assert_eq!(
        decode_chunked(b"3;x=y\r\nabc\r\n0\r\n\r\nNEXT"),
        Ok((b"abc".to_vec(), 17))
    );
}

/// Decodes a whole chunked body: (payload, bytes consumed).
fn decode_chunked(mut input: &[u8]) -> Result<(Vec<u8>, usize), ChunkedError> {
    let total = input.len();
    let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
    let mut payload = Vec::new();
    loop {
        let (n, event) = decoder.decode(input)?;
        match event {
            Some(Chunk::Data { start, end }) => payload.extend_from_slice(&input[start..end]),
            Some(Chunk::Done) => return Ok((payload, total - input.len() + n)),
            None => panic!("truncated body"),
        }
        input = &input[n..];
    }
}

// ---------------------------------------------------------------------------
// smuggler.py TE mutations (REFERENCE-L7.md §2.2), each with a Content-Length:
// refused, or framed by the Content-Length alone and forwarded with exactly
// one framing field.

#[test]
fn smuggler_te_mutations_with_a_content_length_are_never_forwarded_with_both() {
    let mutations: &[&[u8]] = &[
        b" Transfer-Encoding: chunked",
        b"Transfer-Encoding:\tchunked",
        b"Transfer-Encoding\t:\tchunked",
        b"Transfer Encoding: chunked",
        b"Transfer_Encoding: chunked",
        b"Transfer-Encoding : chunked",
        b"Transfer-Encoding:  chunked",
        b"Transfer-Encoding:\x0bchunked",
        b"Transfer-Encoding: chunked, cow",
        b"Transfer-Encoding: cow, chunked",
        b"Content-Encoding: chunked",
        b"Transfer-Encoding:\n chunked",
        b"Transfer-Encoding: \"chunked\"",
        b"Transfer-Encoding: 'chunked'",
        b"Transfer-Encoding: chunk",
        b"TrAnSfEr-EnCoDiNg: cHuNkEd",
        b"TRANSFER-ENCODING: CHUNKED",
        b"Transfer-Encoding: chunked\r",
        b"Transfer-Encoding: chunked\t",
        b"Transfer-Encoding: cow\r\nTransfer-Encoding: chunked",
        b"Transfer\r-Encoding: chunked",
        b"Transfer-Encoding: cow chunked bar",
        b"Transfer-Encoding: \xffchunked",
        b"Transfer-Encoding: ch\x96nked",
        b"Transf\x82r-Encoding: chunked",
        b"X: X\rTransfer-Encoding: chunked",
        b"X: X\nTransfer-Encoding: chunked",
    ];
    let bytes = [
        0x01u8, 0x04, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1f, 0x20, 0x7f, 0xa0, 0xff,
    ];
    let mut all: Vec<Vec<u8>> = mutations.iter().map(|m| m.to_vec()).collect();
    let base = b"Transfer-Encoding: chunked";
    for &b in &bytes {
        // Before and after the name, around the colon, before, inside and
        // after the value.
        for pos in [0, 8, 17, 18, 19, 22, base.len()] {
            let mut m = base.to_vec();
            m.insert(pos, b);
            all.push(m);
        }
    }
    for m in &all {
        for order in 0..2 {
            let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
            if order == 0 {
                raw.extend_from_slice(b"Content-Length: 5\r\n");
            }
            raw.extend_from_slice(m);
            raw.extend_from_slice(b"\r\n");
            if order == 1 {
                raw.extend_from_slice(b"Content-Length: 5\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            match parse_with(&raw, &Limits::default()) {
                Err(e) => assert!(matches!(e.status(), 400 | 501)),
                Ok(None) => panic!("incomplete: {:?}", String::from_utf8_lossy(&raw)),
                Ok(Some((head, fields, nominated))) => {
                    assert_eq!(
                        head.framing,
                        Framing::Length(5),
                        "{:?}",
                        String::from_utf8_lossy(&raw)
                    );
                    let out = write_plain(&raw, &head, &fields, &nominated);
                    let (again, _, _) = accepted(&out);
                    assert_eq!(again.framing, Framing::Length(5));
                    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
                    assert_eq!(text.matches("\r\ncontent-length:").count(), 1, "{text:?}");
                    assert_eq!(
                        text.matches("\r\ntransfer-encoding:").count(),
                        0,
                        "{text:?}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Responses

#[test]
fn a_response_to_head_has_no_body_whatever_its_length_says() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
    let head = response_ok(raw, Method::Head);
    assert_eq!(head.framing, Framing::None);
    assert!(head.keep_alive);
    let head = response_ok(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        Method::Head,
    );
    assert_eq!(head.framing, Framing::None);
    assert_eq!(response_ok(raw, Method::Get).framing, Framing::Length(1234));
}

#[test]
fn responses_204_304_and_1xx_have_no_body() {
    for status in [100u16, 101, 102, 103, 199, 204, 304] {
        let raw = format!("HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n");
        let head = response_ok(raw.as_bytes(), Method::Get);
        assert_eq!(head.status, status);
        assert_eq!(head.framing, Framing::None, "{status}");
        assert!(head.keep_alive, "{status}");
    }
    let head = response_ok(b"HTTP/1.1 204 No Content\r\n\r\n", Method::Get);
    assert_eq!(head.framing, Framing::None);
    assert!(head.keep_alive);
}

#[test]
fn a_response_without_length_or_chunked_is_read_until_close() {
    let head = response_ok(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", Method::Get);
    assert_eq!(head.framing, Framing::Close);
    assert!(!head.keep_alive);
    let head = response_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Method::Get);
    assert_eq!(head.framing, Framing::None);
    assert!(head.keep_alive);
}

#[test]
fn a_chunked_response_is_chunked() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let head = response_ok(raw, Method::Get);
    assert_eq!(head.framing, Framing::Chunked);
    assert!(head.keep_alive);
    assert_eq!(
        decode_chunked(&raw[head.len..]),
        Ok((b"hello".to_vec(), 15))
    );
}

#[test]
fn response_framing_is_held_to_the_request_rules() {
    let cases: [(&[u8], HeadError); 7] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::ContentLengthAndTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            HeadError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            HeadError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            HeadError::TransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            HeadError::UnsupportedTransferCoding,
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::TransferEncoding,
        ),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", HeadError::BareLf),
    ];
    for (raw, expected) in cases {
        assert_eq!(
            response(raw, Method::Get).err(),
            Some(expected),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Framing errors count even where the response has no body.
    assert_eq!(
        response(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Head
        )
        .err(),
        Some(HeadError::ContentLengthAndTransferEncoding)
    );
}

#[test]
fn an_http10_response_is_not_keep_alive() {
    let head = response_ok(
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
        Method::Get,
    );
    assert_eq!(head.minor, 0);
    assert_eq!(head.framing, Framing::Length(2));
    assert!(!head.keep_alive);
}

#[test]
fn a_connection_close_response_is_not_keep_alive() {
    let head = response_ok(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Close\r\n\r\n",
        Method::Get,
    );
    assert_eq!(head.framing, Framing::Length(2));
    assert!(!head.keep_alive);
}

#[test]
fn response_connection_nominates_fields_and_101_keeps_its_upgrade() {
    let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop, upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n";
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    let head = parse_response(raw, Method::Get, 1024, &mut fields, &mut nominated)
        .unwrap()
        .unwrap();
    let names: Vec<&[u8]> = nominated.iter().map(|s| s.get(raw)).collect();
    assert_eq!(names, [&b"X-Hop"[..]]);
    assert!(head.upgrade.is_none(), "only a 101 switches protocols");
    let raw =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let head = response_ok(raw, Method::Get);
    assert_eq!(head.upgrade.expect("upgrade").get(raw), b"websocket");
    assert_eq!(head.reason.get(raw), b"Switching Protocols");
}

#[test]
fn malformed_response_heads_are_refused() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.2 200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ] {
        assert!(
            response(raw, Method::Get).is_err(),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn a_response_head_over_max_head_is_refused_complete_or_not() {
    let raw = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(200));
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    assert_eq!(
        parse_response(
            raw.as_bytes(),
            Method::Get,
            128,
            &mut fields,
            &mut nominated
        )
        .err(),
        Some(HeadError::HeadTooLarge)
    );
    assert_eq!(
        parse_response(
            &raw.as_bytes()[..150],
            Method::Get,
            128,
            &mut fields,
            &mut nominated
        )
        .err(),
        Some(HeadError::HeadTooLarge)
    );
    assert!(matches!(
        parse_response(
            &raw.as_bytes()[..100],
            Method::Get,
            128,
            &mut fields,
            &mut nominated
        ),
        Ok(None)
    ));
}

/// RFC 9110 §15: a status code is three digits, 100 to 599. httparse reads
/// any three digits, and `write::response_head` writes the number without
/// leading zeros, so `HTTP/1.1 000 OK` from an upstream goes to the client
/// as `HTTP/1.1 0 OK`, a status line the proxy (and any client) refuses.
#[test]
fn a_response_status_below_100_is_refused() {
    for raw in [
        &b"HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 007 X\r\nContent-Length: 0\r\n\r\n",
    ] {
        assert!(
            response(raw, Method::Get).is_err(),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

/// The same bug seen from the output: every response head the proxy
/// accepts must be written as one it accepts again.
#[test]
fn every_accepted_status_is_written_back_as_three_digits() {
    for status in [0u16, 1, 42, 99, 100, 200, 599, 600, 999] {
        let raw = format!("HTTP/1.1 {status:03} X\r\nContent-Length: 0\r\n\r\n");
        let Ok(head) = response(raw.as_bytes(), Method::Get) else {
            continue;
        };
        let out = write_response(raw.as_bytes(), &head, Method::Get);
        let again = response(&out, Method::Get);
        assert_eq!(
            again.map(|h| h.status),
            Ok(status),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// httparse gives a status line without a reason phrase (`HTTP/1.1 200`
/// then CRLF), or one whose reason holds obs-text, the reason `""` from a
/// static string, not a slice of the buffer. `Span::of` then subtracts
/// unrelated addresses: an overflow panic in a debug build, and in a release
/// build a span far outside the buffer, which `write::response_head` slices
/// (a panic that ends the connection instead of a response).
#[test]
fn a_status_line_without_a_reason_phrase_has_an_empty_reason() {
    for raw in [
        &b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.1 204\r\n\r\n",
    ] {
        let head = response_ok(raw, Method::Get);
        assert!(head.reason.get(raw).is_empty());
        assert!(head.reason.end as usize <= raw.len());
        let out = write_response(raw, &head, Method::Get);
        assert_eq!(response_ok(&out, Method::Get).status, head.status);
    }
}

#[test]
fn a_reason_phrase_with_obs_text_is_kept_or_refused_without_panicking() {
    let raw = b"HTTP/1.1 200 X\xffZ\r\nContent-Length: 0\r\n\r\n";
    if let Ok(head) = response(raw, Method::Get) {
        assert!(head.reason.end as usize <= raw.len());
        let out = write_response(raw, &head, Method::Get);
        assert_eq!(response_ok(&out, Method::Get).status, 200);
    }
}

#[test]
fn a_status_line_with_an_empty_reason_after_the_space_is_accepted() {
    let raw = b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n";
    let head = response_ok(raw, Method::Get);
    assert_eq!(head.status, 404);
    assert!(head.reason.get(raw).is_empty());
}

fn write_response(raw: &[u8], head: &ResponseHead, method: Method) -> Vec<u8> {
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    parse_response(raw, method, 64 * 1024, &mut fields, &mut nominated)
        .unwrap()
        .unwrap();
    let framing = match head.framing {
        Framing::Close => Framing::Chunked,
        f => f,
    };
    let how = ResponseOut {
        framing,
        close: !head.keep_alive,
        keep_length: head.framing == Framing::None
            && !(100..200).contains(&head.status)
            && head.status != 204,
        attempts: 1,
    };
    let mut out = Vec::new();
    write::response_head(
        &mut out,
        raw,
        head,
        &fields,
        &nominated,
        how,
        &crate::headers::HeaderOps::EMPTY,
    );
    out
}

#[test]
fn written_responses_parse_back_with_the_same_status_and_framing() {
    let heads: [&[u8]; 8] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 599 Odd\t reason\r\nContent-Length: 1\r\n\r\n",
    ];
    for raw in heads {
        let head = response_ok(raw, Method::Get);
        let out = write_response(raw, &head, Method::Get);
        assert!(lines_end_in_crlf(&out));
        let again = response_ok(&out, Method::Get);
        assert_eq!(again.status, head.status);
        assert_eq!(again.reason.get(&out), head.reason.get(raw));
        let expected = match head.framing {
            Framing::Close => Framing::Chunked,
            f => f,
        };
        assert_eq!(
            again.framing,
            expected,
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(
            again.upgrade.map(|u| u.get(&out).to_vec()),
            head.upgrade.map(|u| u.get(raw).to_vec())
        );
        assert!(!String::from_utf8_lossy(&out).contains("X-A"));
    }
}

// ---------------------------------------------------------------------------
// Differential: parse, write with no forwarding additions, parse again.

fn write_plain(raw: &[u8], head: &RequestHead, fields: &[Field], nominated: &[Span]) -> Vec<u8> {
    let fwd = Forwarded {
        client_ip: None,
        proto: "http",
        request_id: None,
        default_host: "default.invalid:80",
        trace: None,
    };
    let mut out = Vec::new();
    write::request_head(
        &mut out,
        raw,
        head,
        fields,
        nominated,
        &fwd,
        &write::Edits::NONE,
    );
    out
}

fn valid_request_heads() -> Vec<Vec<u8>> {
    let methods = [
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "OPTIONS",
        "PATCH",
        "X-CUSTOM!",
    ];
    let targets = [
        "/",
        "/a/b/c?d=e&f=g",
        "*",
        "http://example.com:8080/x?y",
        "/%2F..%2f;p=1~x",
        "/very/long/path/with-dashes_and.dots/and~tildes/0123456789",
    ];
    let field_sets = [
        "Host: example.com\r\n",
        "Host: a\r\nContent-Length: 5\r\n",
        "Host: a\r\nContent-Length: 0\r\n",
        "Host: a\r\nTransfer-Encoding: chunked\r\n",
        "Host: [::1]:8080\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\nX-Bar: 2\r\n",
        "Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n",
        "Host: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n",
        "Host: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Request-Id: abc\r\nX-Forwarded-Proto: https\r\n",
        "Host: \r\nAccept: */*\r\nX-Empty:\r\nX-Tabs: a\tb\r\n",
        "Host: a\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nCookie: a=b; c=d\r\n",
        "User-Agent: x\r\nHOST: upper.example\r\ncontent-length: 007\r\n",
    ];
    let mut heads = Vec::new();
    for method in methods {
        for target in targets {
            for fields in field_sets {
                heads.push(format!("{method} {target} HTTP/1.1\r\n{fields}\r\n").into_bytes());
            }
            heads.push(format!("{method} {target} HTTP/1.0\r\n\r\n").into_bytes());
            heads.push(format!("{method} {target} HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n").into_bytes());
            heads.push(format!("\r\n{method} {target} HTTP/1.0\r\nHost: h10\r\n\r\n").into_bytes());
        }
    }
    heads.push(b"GET / HTTP/1.1\r\nHost: a\r\nX-Obs: \x80\xfe\xff caf\xc3\xa9\r\n\r\n".to_vec());
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..90 {
        many.push_str(&format!("X-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    heads.push(many.into_bytes());
    heads
}

#[test]
fn written_request_heads_parse_back_to_the_same_request() {
    let heads = valid_request_heads();
    assert!(heads.len() > 500);
    for raw in &heads {
        let (head, fields, nominated) = accepted(raw);
        let out = write_plain(raw, &head, &fields, &nominated);
        let show = || String::from_utf8_lossy(&out).into_owned();
        assert!(lines_end_in_crlf(&out), "{}", show());
        let (again, again_fields, again_nominated) = accepted(&out);
        assert_eq!(again.len, out.len(), "{}", show());
        assert_eq!(again.minor, 1, "always written as HTTP/1.1");
        assert_eq!(again.method, head.method);
        assert_eq!(again.method_span.get(&out), head.method_span.get(raw));
        assert_eq!(again.target.get(&out), head.target.get(raw));
        let host = head.host.map_or(&b"default.invalid:80"[..], |h| h.get(raw));
        assert_eq!(again.host.expect("host").get(&out), host, "{}", show());
        assert_eq!(again.framing, head.framing, "{}", show());
        assert_eq!(
            again.upgrade.map(|u| u.get(&out).to_vec()),
            head.upgrade.map(|u| u.get(raw).to_vec()),
            "{}",
            show()
        );
        // The proxy answers Expect itself and sends no hop-by-hop field
        // but its own upgrade pair.
        assert!(!again.expect_continue);
        assert!(!again.te_trailers);
        assert!(again_nominated.is_empty(), "{}", show());
        for f in &again_fields {
            if f.kind.is_hop_by_hop() {
                let ours = match f.kind {
                    FieldKind::Connection | FieldKind::Upgrade => head.upgrade.is_some(),
                    FieldKind::TransferEncoding => head.framing == Framing::Chunked,
                    _ => false,
                };
                assert!(ours, "{}", show());
            }
            assert!(
                !nominated
                    .iter()
                    .any(|n| n.get(raw).eq_ignore_ascii_case(f.name.get(&out))),
                "nominated field forwarded: {}",
                show()
            );
        }
        // End-to-end fields other than framing and forwarding survive in
        // order, names and values as received.
        let kept = |f: &&Field| matches!(f.kind, FieldKind::Other | FieldKind::Host);
        let before: Vec<(&[u8], &[u8])> = fields
            .iter()
            .filter(kept)
            .filter(|f| {
                !nominated
                    .iter()
                    .any(|n| n.get(raw).eq_ignore_ascii_case(f.name.get(raw)))
            })
            .map(|f| (f.name.get(raw), f.value.get(raw)))
            .collect();
        let after: Vec<(&[u8], &[u8])> = again_fields
            .iter()
            .filter(kept)
            .filter(|f| head.host.is_some() || f.kind != FieldKind::Host)
            .map(|f| (f.name.get(&out), f.value.get(&out)))
            .collect();
        assert_eq!(before, after, "{}", show());
        // Writing the re-parsed head changes nothing more.
        let out2 = write_plain(&out, &again, &again_fields, &again_nominated);
        assert_eq!(
            String::from_utf8_lossy(&out2),
            String::from_utf8_lossy(&out),
            "not a fixed point"
        );
    }
}

#[test]
fn absolute_form_targets_need_an_http_scheme_and_a_plain_authority() {
    let parse = |target: &str| {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (mut fields, mut nominated) = (Vec::new(), Vec::new());
        parse_request(
            raw.as_bytes(),
            &Limits::default(),
            &mut fields,
            &mut nominated,
        )
        .map(|h| h.is_some())
    };
    for ok in [
        "/",
        "*",
        "http://a.com",
        "HTTPS://a.com:8443/p?q",
        "http://[::1]:80/",
    ] {
        assert_eq!(parse(ok), Ok(true), "{ok}");
    }
    for bad in [
        "http://",
        "http://a@b/",
        "ftp://a/",
        "a.com/p",
        "http:///p",
        "http://a|b/",
    ] {
        assert_eq!(parse(bad), Err(HeadError::Malformed), "{bad}");
    }
}
