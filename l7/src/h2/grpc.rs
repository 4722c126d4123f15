//! What the proxy knows of gRPC: its status codes, the `grpc-timeout`
//! header, how an HTTP status maps to a gRPC code (the proxy's own answers
//! to gRPC requests are gRPC errors) and back (outlier detection counts
//! UNAVAILABLE like a 503). Mappings follow gRPC's
//! `doc/http-grpc-status-mapping.md` and Envoy's `grpc/status.cc`.

use std::time::Duration;

use crate::local_reply::ResponseFlag;

/// gRPC status codes by number (`grpc_code` label values).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// UNKNOWN.
pub const UNKNOWN: u8 = 2;
/// DEADLINE_EXCEEDED.
pub const DEADLINE_EXCEEDED: u8 = 4;
/// UNIMPLEMENTED.
pub const UNIMPLEMENTED: u8 = 12;
/// INTERNAL.
pub const INTERNAL: u8 = 13;
/// UNAVAILABLE.
pub const UNAVAILABLE: u8 = 14;

/// The name of `code` (`UNKNOWN` beyond 16).
pub fn name(code: u8) -> &'static str {
    CODE_NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Whether a request is gRPC: `content-type: application/grpc`, alone or
/// with a `+proto`-style suffix or parameters.
pub fn is_grpc(content_type: &[u8]) -> bool {
    let ct = content_type;
    ct.len() >= 16
        && ct[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(ct.get(16), None | Some(b'+' | b';'))
}

/// A `grpc-status` value: 0-16 as sent; any other number is UNKNOWN
/// (gRPC's rule); `None` when it is not a number.
pub fn parse_status(value: &[u8]) -> Option<u8> {
    if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Some(if n <= 16 { n as u8 } else { UNKNOWN })
}

/// A `grpc-timeout` value (`TimeoutValue TimeoutUnit`: at most 8 digits
/// and one of `H M S m u n`); `None` when malformed (then ignored).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC code of an HTTP status answered to a gRPC client (a non-200
/// response from a server, or the proxy's own answer).
pub fn from_http(status: u16) -> u8 {
    match status {
        400 => INTERNAL,
        401 => 16,
        403 => 7,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The gRPC code of the proxy's own answer with `flag` and HTTP `status`:
/// a timeout is DEADLINE_EXCEEDED; the rest follow [`from_http`].
pub fn for_flag(flag: ResponseFlag, status: u16) -> u8 {
    match flag {
        ResponseFlag::UpstreamTimeout => DEADLINE_EXCEEDED,
        ResponseFlag::StreamIdleTimeout => DEADLINE_EXCEEDED,
        _ => from_http(status),
    }
}

/// The HTTP status a gRPC code stands for, for outlier detection and the
/// status-class metrics of the upstream (Envoy's `grpcToHttpStatus`).
pub fn to_http(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Percent-encodes a `grpc-message` (gRPC's rule: bytes outside
/// 0x20-0x7E, and `%`, are `%XX`).
pub fn encode_message(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_recognised_with_suffixes_and_parameters_only() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(is_grpc(b"Application/GRPC;charset=utf-8"));
        assert!(!is_grpc(b"application/grpc-web"));
        assert!(!is_grpc(b"application/json"));
        assert!(!is_grpc(b"application/grp"));
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_malformed_values() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"S", b"100", b"123456789S", b"1x", b"-1S", b"1 S"] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn grpc_status_values_above_16_are_unknown_and_non_numbers_refused() {
        assert_eq!(parse_status(b"0"), Some(0));
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b"99"), Some(UNKNOWN));
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(b"x"), None);
        assert_eq!(parse_status(b"1234"), None);
    }

    #[test]
    fn the_proxys_answers_map_to_the_codes_grpc_clients_expect() {
        assert_eq!(from_http(503), UNAVAILABLE);
        assert_eq!(from_http(429), UNAVAILABLE);
        assert_eq!(from_http(404), UNIMPLEMENTED);
        assert_eq!(from_http(418), UNKNOWN);
        assert_eq!(
            for_flag(ResponseFlag::UpstreamTimeout, 504),
            DEADLINE_EXCEEDED
        );
        assert_eq!(for_flag(ResponseFlag::NoRoute, 404), UNIMPLEMENTED);
        assert_eq!(to_http(UNAVAILABLE), 503);
        assert_eq!(to_http(0), 200);
        assert_eq!(name(14), "UNAVAILABLE");
        assert_eq!(name(200), "UNKNOWN");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        let mut out = Vec::new();
        encode_message("no route: 100% über", &mut out);
        assert_eq!(out, b"no route: 100%25 %C3%BCber");
    }
}
