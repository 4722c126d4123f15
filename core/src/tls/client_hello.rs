//! Reading the server name (SNI) from a TLS ClientHello without
//! terminating TLS, for routing passthrough connections.
//!
//! Input is whatever a client sent first, so it is hostile: every length is
//! checked against the bytes actually present, nothing is allocated before
//! the name itself, and the parser never panics (fuzzed in
//! `fuzz/fuzz_targets/client_hello.rs`). Only a ClientHello that fits in its
//! first record is understood (every mainstream client's does).

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
    /// A ClientHello, with its server name if it sent one.
    Parsed(Option<String>),
    /// Not a TLS ClientHello (or one this parser does not accept).
    NotTls(&'static str),
}

/// Largest first record considered: TLS limits a record to 2^14 bytes of
/// plaintext plus its 5-byte header.
pub const MAX_CLIENT_HELLO: usize = 5 + (1 << 14);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| (b[0] as usize) << 8 | b[1] as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
    /// A sub-reader over the next `n` bytes.
    fn sub(&mut self, n: usize) -> Option<Reader<'a>> {
        self.take(n).map(|buf| Reader { buf, pos: 0 })
    }
}

/// Parses the first bytes of a connection.
pub fn parse(buf: &[u8]) -> ClientHello {
    if buf.len() < 5 {
        return ClientHello::Incomplete(5);
    }
    if buf[0] != 0x16 {
        return ClientHello::NotTls("not a TLS handshake record");
    }
    if buf[1] != 3 {
        return ClientHello::NotTls("not a TLS record version");
    }
    let record_len = (buf[3] as usize) << 8 | buf[4] as usize;
    if record_len == 0 || 5 + record_len > MAX_CLIENT_HELLO {
        return ClientHello::NotTls("invalid record length");
    }
    if buf.len() < 5 + record_len {
        return ClientHello::Incomplete(5 + record_len);
    }
    match parse_handshake(&buf[5..5 + record_len]) {
        Some(result) => result,
        None => ClientHello::NotTls("malformed ClientHello"),
    }
}

fn parse_handshake(record: &[u8]) -> Option<ClientHello> {
    let mut r = Reader {
        buf: record,
        pos: 0,
    };
    if r.u8()? != 1 {
        return Some(ClientHello::NotTls(
            "first handshake message is not a ClientHello",
        ));
    }
    let len = r.u24()?;
    let Some(mut hello) = r.sub(len) else {
        return Some(ClientHello::NotTls("ClientHello spans several records"));
    };
    hello.take(2)?; // legacy version
    hello.take(32)?; // random
    let session = hello.u8()?;
    hello.take(session)?;
    let suites = hello.u16()?;
    hello.take(suites)?;
    let compression = hello.u8()?;
    hello.take(compression)?;
    if hello.pos == hello.buf.len() {
        return Some(ClientHello::Parsed(None)); // no extensions
    }
    let ext_len = hello.u16()?;
    let mut exts = hello.sub(ext_len)?;
    while exts.pos < exts.buf.len() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let mut body = exts.sub(len)?;
        if kind != 0 {
            continue;
        }
        let list_len = body.u16()?;
        let mut list = body.sub(list_len)?;
        while list.pos < list.buf.len() {
            let name_type = list.u8()?;
            let name_len = list.u16()?;
            let name = list.take(name_len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if !valid {
                    return None;
                }
                return Some(ClientHello::Parsed(Some(name.to_ascii_lowercase())));
            }
        }
        return Some(ClientHello::Parsed(None));
    }
    Some(ClientHello::Parsed(None))
}

/// Whether `name` matches a route's server-name pattern: exact
/// (case-insensitive), or `*.suffix` for any name ending in `.suffix`.
pub fn server_name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls sends it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let hello = client_hello("API.Example.com");
        assert_eq!(
            parse(&hello),
            ClientHello::Parsed(Some("api.example.com".into()))
        );
    }

    #[test]
    fn an_ip_literal_sends_no_server_name() {
        assert_eq!(parse(&client_hello("127.0.0.1")), ClientHello::Parsed(None));
    }

    #[test]
    fn every_truncation_asks_for_more_or_fails_cleanly() {
        let hello = client_hello("a.example");
        for cut in 0..hello.len() {
            match parse(&hello[..cut]) {
                ClientHello::Incomplete(n) => assert!(n > cut, "cut {cut}: asked for {n}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_protocols_are_not_tls() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            ClientHello::NotTls(_)
        ));
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH_9\r\n"),
            ClientHello::NotTls(_)
        ));
        assert!(matches!(
            parse(&[0x16, 3, 1, 0xff, 0xff]),
            ClientHello::NotTls(_)
        ));
    }

    #[test]
    fn corrupted_hellos_never_panic() {
        let hello = client_hello("corrupt.example");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut b = hello.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % b.len();
                b[at] = (state >> 32) as u8;
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn wildcards_match_any_subdomain_only() {
        assert!(server_name_matches("*.shop.example", "api.shop.example"));
        assert!(server_name_matches("*.shop.example", "a.b.shop.example"));
        assert!(!server_name_matches("*.shop.example", "shop.example"));
        assert!(!server_name_matches("*.shop.example", "evilshop.example"));
        assert!(server_name_matches("Shop.Example", "shop.example"));
    }
}
