//! HTTP/1.1 message heads: parsing (with `httparse`) and the checks a proxy
//! must add before it forwards anything.
//!
//! A parsed head is a set of [`Span`]s into the connection's read buffer: no
//! header is copied, no allocation is made per request (the field list is a
//! `Vec` the connection reuses). Every rule here answers a request-smuggling
//! or parser-differential case (RFC 9112 and ../shared/REFERENCE-L7.md §1):
//!
//! - framing: `Content-Length` digits only, several only if all equal;
//!   `Transfer-Encoding` exactly `chunked`, once; both together refused; TE
//!   in HTTP/1.0 refused; other codings 501 (as Envoy and nginx);
//! - lines: CRLF only (httparse accepts a bare LF; we do not), no obs-fold,
//!   no whitespace before the colon, no control bytes (httparse);
//! - `Host`: exactly one in HTTP/1.1, with authority characters only;
//! - limits: request line ([`Limits::max_request_line`], 414), whole head
//!   and header count (431).
//!
//! Responses are held to the same framing rules; a violation is the
//! upstream's fault (502, connection discarded).

use std::fmt;
use std::mem::MaybeUninit;

/// Most header fields any head may carry (the parse array's size).
pub const HEADER_SLOTS: usize = 256;

/// Byte range `start..end` in the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let base = buf.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        // httparse hands back a static "" (not a slice of the buffer) for a
        // missing or obs-text reason phrase: an empty span then.
        if at < base || at + part.len() > base + buf.len() {
            return Span::default();
        }
        let start = at - base;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes of the span in `buf`.
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the span is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The header fields a proxy must recognise; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Any other field, forwarded as received.
    Other,
    /// `Host`.
    Host,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Keep-Alive`.
    KeepAlive,
    /// `Proxy-Connection`.
    ProxyConnection,
    /// `TE`.
    Te,
    /// `Upgrade`.
    Upgrade,
    /// `Expect`.
    Expect,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `X-Request-Id`.
    XRequestId,
    /// `traceparent` (rewritten by the proxy when it propagates W3C).
    TraceParent,
    /// `b3`, `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-ParentSpanId`,
    /// `X-B3-Sampled`, `X-B3-Flags` (rewritten when it propagates B3).
    B3,
    /// `tracestate` (kept only with a valid `traceparent` when tracing is on).
    TraceState,
}

impl FieldKind {
    fn of(name: &[u8]) -> FieldKind {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        // Dispatch on length first: most names are compared once at most.
        match name.len() {
            2 if is("te") => FieldKind::Te,
            2 if is("b3") => FieldKind::B3,
            10 if is("tracestate") => FieldKind::TraceState,
            10 if is("x-b3-flags") => FieldKind::B3,
            11 if is("traceparent") => FieldKind::TraceParent,
            11 if is("x-b3-spanid") => FieldKind::B3,
            12 if is("x-b3-traceid") || is("x-b3-sampled") => FieldKind::B3,
            17 if is("x-b3-parentspanid") => FieldKind::B3,
            4 if is("host") => FieldKind::Host,
            6 if is("expect") => FieldKind::Expect,
            7 if is("upgrade") => FieldKind::Upgrade,
            10 if is("connection") => FieldKind::Connection,
            10 if is("keep-alive") => FieldKind::KeepAlive,
            12 if is("x-request-id") => FieldKind::XRequestId,
            14 if is("content-length") => FieldKind::ContentLength,
            15 if is("x-forwarded-for") => FieldKind::XForwardedFor,
            16 if is("proxy-connection") => FieldKind::ProxyConnection,
            17 if is("transfer-encoding") => FieldKind::TransferEncoding,
            17 if is("x-forwarded-proto") => FieldKind::XForwardedProto,
            _ => FieldKind::Other,
        }
    }

    /// Hop-by-hop fields (RFC 9110 §7.6.1): never forwarded as received;
    /// the proxy writes its own framing and connection fields.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            FieldKind::Connection
                | FieldKind::KeepAlive
                | FieldKind::ProxyConnection
                | FieldKind::Te
                | FieldKind::TransferEncoding
                | FieldKind::Upgrade
        )
    }
}

/// One header field of a parsed head.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The name as received (case preserved).
    pub name: Span,
    /// The value, without surrounding whitespace.
    pub value: Span,
    /// What the proxy knows the field as.
    pub kind: FieldKind,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the server closes the connection (responses only).
    Close,
}

/// Limits applied while reading a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request line, in bytes (414 above it).
    pub max_request_line: usize,
    /// The whole head, in bytes (431 above it).
    pub max_head: usize,
    /// Header fields (431 above it); at most [`HEADER_SLOTS`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line: 8 * 1024,
            max_head: 60 * 1024,
            max_headers: 100,
        }
    }
}

/// Request methods the proxy treats specially; others are `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: the response has no body whatever its headers say.
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// OPTIONS.
    Options,
    /// CONNECT: refused (405) until tunnelling is configured.
    Connect,
    /// Any other token.
    Other,
}

impl Method {
    fn of(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// Idempotent methods (RFC 9110 §9.2.2), which may be replayed.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options
        )
    }
}

/// What the proxy needs of a request head; the fields are in the
/// caller's list.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes of the head, up to and including the empty line.
    pub len: usize,
    /// The method.
    pub method: Method,
    /// The method token as received.
    pub method_span: Span,
    /// The request target as received.
    pub target: Span,
    /// HTTP/1.x minor version (0 or 1).
    pub minor: u8,
    /// The Host value, if any.
    pub host: Option<Span>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the client allows the connection to stay open after the
    /// response (HTTP/1.1 without `Connection: close`; never HTTP/1.0).
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The `Upgrade` value when `Connection` names `upgrade` (WebSocket).
    pub upgrade: Option<Span>,
    /// `TE: trailers` was sent.
    pub te_trailers: bool,
    /// Index in the field list of the last `X-Forwarded-For`.
    pub last_xff: Option<usize>,
    /// An `X-Request-Id` was sent.
    pub has_request_id: bool,
    /// A `traceparent` or B3 field was sent.
    pub has_trace_context: bool,
}

/// What the proxy needs of a response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Bytes of the head, up to and including the empty line.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// Reason phrase as received.
    pub reason: Span,
    /// HTTP/1.x minor version.
    pub minor: u8,
    /// How the body is delimited (given the request's method).
    pub framing: Framing,
    /// Whether the server allows the connection to be reused.
    pub keep_alive: bool,
    /// The `Upgrade` value of a 101 response.
    pub upgrade: Option<Span>,
}

/// Why a head was refused; each has a status and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x syntax: bad token, bad line, control bytes, bare CR,
    /// obs-fold, whitespace before a colon, a field without a colon.
    Malformed,
    /// A line ended in LF without CR.
    BareLf,
    /// A version other than HTTP/1.0 or HTTP/1.1 (HTTP/0.9 included).
    Version,
    /// The request line is longer than allowed (414).
    UriTooLong,
    /// The head is larger than allowed (431).
    HeadTooLarge,
    /// More header fields than allowed (431).
    TooManyHeaders,
    /// Content-Length not all digits, too large, or several that differ.
    ContentLength,
    /// Content-Length and Transfer-Encoding together.
    ContentLengthAndTransferEncoding,
    /// Transfer-Encoding not ending in chunked, repeated, empty elements,
    /// or in an HTTP/1.0 message.
    TransferEncoding,
    /// A transfer coding other than chunked (501).
    UnsupportedTransferCoding,
    /// Missing (HTTP/1.1), repeated or invalid Host.
    Host,
}

impl HeadError {
    /// The status a request refused for this reason gets.
    pub fn status(self) -> u16 {
        match self {
            HeadError::UriTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UnsupportedTransferCoding => 501,
            _ => 400,
        }
    }

    /// The metric label (`ringmesh_http_rejected_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            HeadError::Malformed => "malformed_head",
            HeadError::BareLf => "bare_lf",
            HeadError::Version => "unsupported_version",
            HeadError::UriTooLong => "uri_too_long",
            HeadError::HeadTooLarge => "head_too_large",
            HeadError::TooManyHeaders => "too_many_headers",
            HeadError::ContentLength => "invalid_content_length",
            HeadError::ContentLengthAndTransferEncoding => "content_length_and_transfer_encoding",
            HeadError::TransferEncoding => "invalid_transfer_encoding",
            HeadError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            HeadError::Host => "invalid_host",
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for HeadError {}

/// Framing facts gathered over the fields, shared by both directions.
#[derive(Default)]
struct FramingFields {
    length: Option<u64>,
    length_seen: bool,
    te: Option<Span>,
    te_count: usize,
}

impl FramingFields {
    fn transfer_encoding(&mut self, value: Span) {
        self.te = Some(value);
        self.te_count += 1;
    }

    fn content_length(&mut self, value: &[u8]) -> Result<(), HeadError> {
        let n = parse_content_length(value).ok_or(HeadError::ContentLength)?;
        match self.length {
            Some(prev) if prev != n => return Err(HeadError::ContentLength),
            _ => self.length = Some(n),
        }
        self.length_seen = true;
        Ok(())
    }

    /// The body framing, given the message's version; `None` when there is
    /// neither header.
    fn resolve(&self, buf: &[u8], minor: u8) -> Result<Option<Framing>, HeadError> {
        match (self.te, self.length) {
            (Some(_), _) if self.length_seen => Err(HeadError::ContentLengthAndTransferEncoding),
            (Some(_), _) if minor == 0 => Err(HeadError::TransferEncoding),
            (Some(_), _) if self.te_count > 1 => Err(HeadError::TransferEncoding),
            (Some(te), _) => check_transfer_encoding(te.get(buf)).map(|()| Some(Framing::Chunked)),
            (None, Some(n)) => Ok(Some(Framing::Length(n))),
            (None, None) => Ok(None),
        }
    }
}

/// Content-Length: 1 to 19 ASCII digits (fits u64), nothing else.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Transfer-Encoding must be exactly `chunked` (case-insensitive). A list
/// whose last element is chunked names another coding: 501, as Envoy and
/// nginx answer; anything else leaves the length unknown: 400.
fn check_transfer_encoding(value: &[u8]) -> Result<(), HeadError> {
    let mut elements = value.split(|&b| b == b',').map(trim_ows);
    let last = elements.next_back().unwrap_or(&[]);
    let mut others = 0;
    for e in elements {
        if e.is_empty() || e.eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::TransferEncoding);
        }
        others += 1;
    }
    if !last.eq_ignore_ascii_case(b"chunked") {
        return Err(HeadError::TransferEncoding);
    }
    if others > 0 {
        return Err(HeadError::UnsupportedTransferCoding);
    }
    Ok(())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// What a `Connection` field says.
struct ConnectionTokens {
    close: bool,
    upgrade: bool,
}

/// Reads a `Connection` value: `close`, `upgrade`, and the names it
/// nominates as hop-by-hop (pushed to `nominated`; `keep-alive` is not one).
fn connection_tokens(buf: &[u8], value: &[u8], nominated: &mut Vec<Span>) -> ConnectionTokens {
    let mut tokens = ConnectionTokens {
        close: false,
        upgrade: false,
    };
    for token in value.split(|&b| b == b',').map(trim_ows) {
        if token.eq_ignore_ascii_case(b"close") {
            tokens.close = true;
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            tokens.upgrade = true;
        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
            nominated.push(Span::of(buf, token));
        }
    }
    tokens
}

/// Whether `value` lists `token` (a comma-separated list, case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// Every line of `head` ends in CRLF (httparse also accepts a bare LF,
/// which another parser downstream may read differently).
fn lines_end_in_crlf(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return false;
        }
        prev = b;
    }
    true
}

/// A request target in one of the forms RFC 9112 §3.2 allows: origin
/// (`/p?q`), asterisk (`*`), authority (CONNECT, refused later), or
/// absolute with an `http`/`https` scheme and a valid, non-empty authority
/// without userinfo (a proxy routes by that authority, so it must be one).
fn valid_target(target: &[u8], method: Method) -> bool {
    if target.first() == Some(&b'/') || target == b"*" || method == Method::Connect {
        return true;
    }
    let scheme = |s: &[u8]| {
        target
            .get(..s.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(s))
    };
    let rest = if scheme(b"http://") {
        &target[7..]
    } else if scheme(b"https://") {
        &target[8..]
    } else {
        return false;
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    !authority.is_empty() && !authority.contains(&b'@') && valid_host(authority)
}

/// Host: an authority (reg-name or IP literal, optional port). Empty is
/// allowed (RFC 9112 §3.2: a target without authority).
fn valid_host(value: &[u8]) -> bool {
    value.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

fn map_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => HeadError::Version,
        _ => HeadError::Malformed,
    }
}

/// Checks an incomplete request head against the size limits, so that a
/// client cannot make the proxy buffer more than allowed.
pub fn check_partial_request(buf: &[u8], limits: &Limits) -> Result<(), HeadError> {
    // Leading empty lines are allowed before the request line.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    match line.iter().position(|&b| b == b'\n') {
        None if line.len() > limits.max_request_line => return Err(HeadError::UriTooLong),
        Some(end) if end > limits.max_request_line => return Err(HeadError::UriTooLong),
        _ => {}
    }
    if buf.len() > limits.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    Ok(())
}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete
/// (check [`check_partial_request`] and read more). On success, `fields`
/// holds the header fields and `nominated` the names listed in
/// `Connection` (hop-by-hop by nomination).
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    fields: &mut Vec<Field>,
    nominated: &mut Vec<Span>,
) -> Result<Option<RequestHead>, HeadError> {
    fields.clear();
    nominated.clear();
    // Uninitialised slots: initialising 256 of them would copy 8 KiB per
    // request for nothing.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let max = limits.max_headers.min(HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut slots[..max],
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_httparse(e)),
    };
    if len > limits.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    check_partial_request(&buf[..len], limits)?;
    if !lines_end_in_crlf(&buf[..len]) {
        return Err(HeadError::BareLf);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let mut head = RequestHead {
        len,
        method: Method::of(method),
        method_span: Span::of(buf, method.as_bytes()),
        target: Span::of(buf, target.as_bytes()),
        minor,
        host: None,
        framing: Framing::None,
        keep_alive: minor == 1,
        expect_continue: false,
        upgrade: None,
        te_trailers: false,
        last_xff: None,
        has_request_id: false,
        has_trace_context: false,
    };
    if !valid_target(target.as_bytes(), head.method) {
        return Err(HeadError::Malformed);
    }
    let mut framing = FramingFields::default();
    let mut upgrade_value = None;
    let mut connection_upgrade = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let kind = FieldKind::of(name);
        let value = Span::of(buf, h.value);
        match kind {
            FieldKind::Host => {
                if head.host.is_some() || !valid_host(h.value) {
                    return Err(HeadError::Host);
                }
                head.host = Some(value);
            }
            FieldKind::ContentLength => framing.content_length(h.value)?,
            FieldKind::TransferEncoding => framing.transfer_encoding(value),
            FieldKind::Connection => {
                let tokens = connection_tokens(buf, h.value, nominated);
                head.keep_alive &= !tokens.close;
                connection_upgrade |= tokens.upgrade;
            }
            FieldKind::Upgrade => upgrade_value = Some(value),
            FieldKind::Expect if h.value.eq_ignore_ascii_case(b"100-continue") => {
                head.expect_continue = true;
            }
            FieldKind::Te => head.te_trailers |= has_token(h.value, "trailers"),
            FieldKind::XForwardedFor => head.last_xff = Some(fields.len()),
            FieldKind::XRequestId => head.has_request_id = true,
            FieldKind::TraceParent | FieldKind::B3 => head.has_trace_context = true,
            _ => {}
        }
        fields.push(Field {
            name: Span::of(buf, name),
            value,
            kind,
        });
    }
    if minor == 1 && head.host.is_none() {
        return Err(HeadError::Host);
    }
    head.framing = framing.resolve(buf, minor)?.unwrap_or(Framing::None);
    if let Framing::Length(0) = head.framing {
        head.framing = Framing::None;
    }
    if connection_upgrade && minor == 1 {
        head.upgrade = upgrade_value;
    }
    // RFC 9112 §9.3: a proxy keeps no persistent connection with HTTP/1.0.
    if minor == 0 {
        head.keep_alive = false;
    }
    Ok(Some(head))
}

/// Parses the response head at the start of `buf`, for a request with
/// `method`. `Ok(None)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    method: Method,
    max_head: usize,
    fields: &mut Vec<Field>,
    nominated: &mut Vec<Span>,
) -> Result<Option<ResponseHead>, HeadError> {
    fields.clear();
    nominated.clear();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(HeadError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_httparse(e)),
    };
    if len > max_head {
        return Err(HeadError::HeadTooLarge);
    }
    if !lines_end_in_crlf(&buf[..len]) {
        return Err(HeadError::BareLf);
    }
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(HeadError::Malformed);
    };
    // RFC 9110 §15: status codes are 100..=599.
    if !(100..=599).contains(&status) {
        return Err(HeadError::Malformed);
    }
    let reason = res
        .reason
        .map(|r| Span::of(buf, r.as_bytes()))
        .unwrap_or_default();
    let mut head = ResponseHead {
        len,
        status,
        reason,
        minor,
        framing: Framing::None,
        keep_alive: minor == 1,
        upgrade: None,
    };
    let mut framing = FramingFields::default();
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let kind = FieldKind::of(name);
        let value = Span::of(buf, h.value);
        match kind {
            FieldKind::ContentLength => framing.content_length(h.value)?,
            FieldKind::TransferEncoding => framing.transfer_encoding(value),
            FieldKind::Connection => {
                head.keep_alive &= !connection_tokens(buf, h.value, nominated).close;
            }
            FieldKind::Upgrade => head.upgrade = Some(value),
            _ => {}
        }
        fields.push(Field {
            name: Span::of(buf, name),
            value,
            kind,
        });
    }
    let declared = framing.resolve(buf, minor)?;
    head.framing =
        if method == Method::Head || (100..200).contains(&status) || status == 204 || status == 304
        {
            Framing::None
        } else {
            match declared {
                Some(Framing::Length(0)) => Framing::None,
                Some(f) => f,
                None => Framing::Close,
            }
        };
    if head.framing == Framing::Close || minor == 0 {
        head.keep_alive = false;
    }
    if status != 101 {
        head.upgrade = None;
    }
    Ok(Some(head))
}

/// Parses a complete, valid request head (unit tests of the modules that
/// take parsed requests).
#[cfg(test)]
pub(crate) fn parse_valid(raw: &[u8]) -> (RequestHead, Vec<Field>, Vec<Span>) {
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    let head = parse_request(raw, &Limits::default(), &mut fields, &mut nominated)
        .expect("valid")
        .expect("complete");
    (head, fields, nominated)
}

#[cfg(test)]
mod tests;
