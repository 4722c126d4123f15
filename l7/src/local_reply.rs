//! Answers the proxy makes itself, and the response flags that say why
//! (DESIGN.md §3, Envoy's `%RESPONSE_FLAGS%` names). Each answer is a short
//! text body naming the flag, so a client sees why without reading logs.

use crate::codec::write::push_decimal;

/// Why the proxy answered (or cut) a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// No upstream connection could be made (`UF`, 502).
    UpstreamConnectFailure,
    /// No healthy endpoint in the cluster (`UH`, 503).
    NoHealthyUpstream,
    /// A circuit breaker was open (`UO`, 503).
    UpstreamOverflow,
    /// The route timeout expired before the response head (`UT`, 504).
    UpstreamTimeout,
    /// The upstream closed or reset the connection before the response
    /// was complete (`UC`; 502 when nothing had been sent yet).
    UpstreamConnectionTermination,
    /// The upstream's response broke HTTP/1.1 rules (`UPE`, 502).
    UpstreamProtocolError,
    /// The client went away before the response was complete (`DC`).
    DownstreamConnectionTermination,
    /// The client's request broke HTTP/1.1 rules (`DPE`, 4xx/501).
    DownstreamProtocolError,
    /// The proxy ran out of a local resource (descriptors, ports) while
    /// connecting (`LR`, 503).
    LocalResource,
    /// No route matched the request (`NR`, 404).
    NoRoute,
    /// The route's fault filter answered (`FI`; the configured status).
    FaultInjected,
    /// The route's fault filter delayed the request (`DI`; forwarded after).
    DelayInjected,
    /// A local rate limit refused the request (`RL`, 429).
    RateLimited,
    /// The client sent no bytes of its body for the idle timeout (`SI`,
    /// 408; Envoy's stream idle timeout).
    StreamIdleTimeout,
}

impl ResponseFlag {
    /// Every flag, in index order.
    pub const ALL: [ResponseFlag; 14] = [
        ResponseFlag::UpstreamConnectFailure,
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamOverflow,
        ResponseFlag::UpstreamTimeout,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamProtocolError,
        ResponseFlag::DownstreamConnectionTermination,
        ResponseFlag::DownstreamProtocolError,
        ResponseFlag::LocalResource,
        ResponseFlag::NoRoute,
        ResponseFlag::FaultInjected,
        ResponseFlag::DelayInjected,
        ResponseFlag::RateLimited,
        ResponseFlag::StreamIdleTimeout,
    ];

    /// Its index in [`ResponseFlag::ALL`].
    pub fn index(self) -> usize {
        ResponseFlag::ALL
            .iter()
            .position(|f| *f == self)
            .unwrap_or(0)
    }

    /// The flag of index `i`.
    pub fn from_index(i: usize) -> Option<ResponseFlag> {
        ResponseFlag::ALL.get(i).copied()
    }

    /// The short code in logs and bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::UpstreamConnectFailure => "UF",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::UpstreamTimeout => "UT",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamProtocolError => "UPE",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::LocalResource => "LR",
            ResponseFlag::NoRoute => "NR",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::RateLimited => "RL",
            ResponseFlag::StreamIdleTimeout => "SI",
        }
    }

    /// The status of the proxy's own answer for this flag.
    pub fn status(self) -> u16 {
        match self {
            ResponseFlag::UpstreamConnectFailure
            | ResponseFlag::UpstreamConnectionTermination
            | ResponseFlag::UpstreamProtocolError => 502,
            ResponseFlag::NoHealthyUpstream
            | ResponseFlag::UpstreamOverflow
            | ResponseFlag::LocalResource => 503,
            ResponseFlag::UpstreamTimeout => 504,
            ResponseFlag::NoRoute => 404,
            ResponseFlag::FaultInjected => 503,
            ResponseFlag::DelayInjected => 200,
            ResponseFlag::RateLimited => 429,
            ResponseFlag::StreamIdleTimeout => 408,
            ResponseFlag::DownstreamConnectionTermination
            | ResponseFlag::DownstreamProtocolError => 400,
        }
    }

    pub(crate) fn text(self) -> &'static str {
        match self {
            ResponseFlag::UpstreamConnectFailure => "upstream connect failed",
            ResponseFlag::NoHealthyUpstream => "no healthy upstream",
            ResponseFlag::UpstreamOverflow => "upstream overflow (circuit breaker open)",
            ResponseFlag::UpstreamTimeout => "upstream request timeout",
            ResponseFlag::UpstreamConnectionTermination => {
                "upstream closed the connection before responding"
            }
            ResponseFlag::UpstreamProtocolError => "upstream sent an invalid response",
            ResponseFlag::DownstreamConnectionTermination => "client went away",
            ResponseFlag::DownstreamProtocolError => "bad request",
            ResponseFlag::LocalResource => "proxy out of local resources",
            ResponseFlag::NoRoute => "no route",
            ResponseFlag::FaultInjected => "fault filter abort",
            ResponseFlag::DelayInjected => "fault filter delay",
            ResponseFlag::RateLimited => "rate limited",
            ResponseFlag::StreamIdleTimeout => "request body idle timeout",
        }
    }
}

/// The reason phrase of a status the proxy sends (empty for codes
/// without a registered one: the phrase is optional, RFC 9112 §4).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Appends a complete answer: status line, framing, `connection: close`
/// when `close`, and a one-line text body `"<text> (<flag>)\n"`.
pub fn write(out: &mut Vec<u8>, status: u16, text: &str, flag: &str, close: bool) {
    write_with(out, status, text, flag, close, b"");
}

/// [`write`] with `extra` header lines (each ending in CRLF).
fn write_with(out: &mut Vec<u8>, status: u16, text: &str, flag: &str, close: bool, extra: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
    push_decimal(out, (text.len() + flag.len() + 4) as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b" (");
    out.extend_from_slice(flag.as_bytes());
    out.extend_from_slice(b")\n");
}

/// Appends the answer for `flag`. A breaker's refusal says so in
/// `x-ringmesh-overloaded: true` (Envoy's `x-envoy-overloaded`), so a
/// client or a retrying caller can tell overload from an upstream error.
pub fn for_flag(out: &mut Vec<u8>, flag: ResponseFlag, close: bool) {
    for_flag_after(out, flag, close, 1);
}

/// [`for_flag`] for a request that took `attempts` upstream attempts;
/// more than one is said in `x-ringmesh-attempts`.
pub fn for_flag_after(out: &mut Vec<u8>, flag: ResponseFlag, close: bool, attempts: u32) {
    const OVERLOADED: &[u8] = b"x-ringmesh-overloaded: true\r\n";
    const ATTEMPTS: &[u8] = b"x-ringmesh-attempts: ";
    let mut extra = [0u8; OVERLOADED.len() + ATTEMPTS.len() + 12];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        extra[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    if flag == ResponseFlag::UpstreamOverflow {
        put(OVERLOADED);
    }
    if attempts > 1 {
        put(ATTEMPTS);
        // Decimal digits on the stack: no allocation on an answer path
        // that overload can make hot.
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut n = attempts;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        put(&digits[i..]);
        put(b"\r\n");
    }
    write_with(
        out,
        flag.status(),
        flag.text(),
        flag.as_str(),
        close,
        &extra[..len],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_refusal_says_the_proxy_is_overloaded() {
        let mut out = Vec::new();
        for_flag(&mut out, ResponseFlag::UpstreamOverflow, false);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.contains("\r\nx-ringmesh-overloaded: true\r\n"),
            "{text}"
        );
        assert!(text.ends_with("(UO)\n"), "{text}");
    }

    #[test]
    fn an_answer_after_retries_says_how_many_attempts_it_took() {
        let mut out = Vec::new();
        for_flag_after(&mut out, ResponseFlag::UpstreamOverflow, false, 3);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.contains("\r\nx-ringmesh-overloaded: true\r\nx-ringmesh-attempts: 3\r\n\r\n"),
            "{text}"
        );
        let mut out = Vec::new();
        for_flag_after(&mut out, ResponseFlag::UpstreamTimeout, false, 1);
        assert!(!String::from_utf8_lossy(&out).contains("attempts"));
    }

    #[test]
    fn a_local_reply_is_a_complete_framed_response_naming_its_flag() {
        let mut out = Vec::new();
        for_flag(&mut out, ResponseFlag::NoHealthyUpstream, true);
        let text = String::from_utf8(out).expect("ascii");
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 25\r\nconnection: close\r\n\r\nno healthy upstream (UH)\n"
        );
    }
}
