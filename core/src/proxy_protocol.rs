//! The PROXY protocol, versions 1 and 2 (HAProxy's specification,
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>): decoding
//! the header a load balancer puts in front of a connection it relays to us,
//! and encoding the one we put in front of a connection to an upstream.
//!
//! This module is pure byte work: no I/O, no configuration. The listener owns
//! reading the first bytes, deciding whether a header is required or
//! optional, and the timeout while one is [`Decoded::Incomplete`]; `conn` owns
//! what the addresses are then used for.
//!
//! The bytes come from the network before anything is known about the peer,
//! so they are treated as hostile: every length is checked against the bytes
//! present, a header's size is bounded ([`MAX_HEADER`]) before any of its
//! payload is awaited, bytes that cannot start a header are refused from the
//! first one, only the TLV values kept are allocated, and nothing panics
//! (fuzzed in `fuzz/fuzz_targets/proxy_protocol.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use thiserror::Error;

/// The longest version 1 line, CRLF included (the spec's worst case,
/// `PROXY UNKNOWN` followed by two full-length IPv6 addresses and ports).
pub const V1_MAX: usize = 107;

/// The largest version 2 payload (addresses and TLVs) we accept. The wire
/// format allows 65,535 bytes; real senders use a few hundred, and the
/// bound keeps what a peer can make us buffer before the connection has
/// proven anything small.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// The most bytes a header we accept can occupy: the 16-byte version 2
/// fixed part plus [`V2_MAX_PAYLOAD`] (a version 1 line is shorter).
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;

// The length field is 16 bits: our cap must fit in it for `encode_v2`.
const _: () = assert!(V2_MAX_PAYLOAD <= u16::MAX as usize && V1_MAX < MAX_HEADER);

/// The TLV type carrying a SPIFFE ID. It is in the spec's application range
/// (`PP2_TYPE_MIN_CUSTOM` 0xE0 to `PP2_TYPE_MAX_CUSTOM` 0xEF), which is shared
/// by everyone: Google Cloud's Private Service Connect sends 0xE0 too, with an
/// 8-byte binary connection id. So a 0xE0 value counts as a SPIFFE ID only if
/// it is UTF-8 starting with `spiffe://`; any other 0xE0 value is skipped like
/// an unknown TLV.
pub const PP2_TYPE_SPIFFE_ID: u8 = 0xE0;

/// [`SslInfo::client_flags`] bit: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// [`SslInfo::client_flags`] bit: the client presented a certificate on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// [`SslInfo::client_flags`] bit: the client presented a certificate at least
/// once in the TLS session this connection belongs to.
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

const V1_PREFIX: &[u8; 6] = b"PROXY ";
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;

const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_CRC32C: u8 = 0x03;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// The spec's bound on `PP2_TYPE_UNIQUE_ID`.
const UNIQUE_ID_MAX: usize = 128;
/// Type, two length bytes and the 4-byte checksum.
const CRC_TLV_LEN: usize = 3 + 4;

/// Which of the two header formats a connection carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The human-readable line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary format with its 12-byte signature and TLVs.
    V2,
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The format it arrived in.
    pub version: Version,
    /// The original (source, destination) of the relayed connection.
    /// `None` for v1 `UNKNOWN`, the v2 LOCAL command, and the v2 families we
    /// accept without using their addresses (AF_UNSPEC, AF_UNIX): the
    /// connection's own endpoints stand, as the spec asks.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// The v2 TLVs we understand; always empty for v1.
    pub tlvs: Tlvs,
    /// The v2 LOCAL command: the load balancer opened this connection itself
    /// (a health check), so there is no client behind it.
    pub local: bool,
}

/// The v2 TLVs we keep. Other types are skipped; `PP2_TYPE_CRC32C` is
/// verified, not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    /// `PP2_TYPE_ALPN` (0x01): the protocol the client negotiated, as bytes.
    pub alpn: Option<Vec<u8>>,
    /// `PP2_TYPE_AUTHORITY` (0x02): the host name the client asked for (SNI).
    pub authority: Option<String>,
    /// `PP2_TYPE_UNIQUE_ID` (0x05): the sender's opaque connection id, at most 128 bytes.
    pub unique_id: Option<Vec<u8>>,
    /// `PP2_TYPE_SSL` (0x20): how the client's TLS connection looked.
    pub ssl: Option<SslInfo>,
    /// [`PP2_TYPE_SPIFFE_ID`] (0xE0): the client's SPIFFE ID.
    pub spiffe_id: Option<String>,
}

/// The `PP2_TYPE_SSL` TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslInfo {
    /// The raw `client` bit field ([`PP2_CLIENT_SSL`], [`PP2_CLIENT_CERT_CONN`],
    /// [`PP2_CLIENT_CERT_SESS`]).
    pub client_flags: u8,
    /// A client certificate was presented and verified: `verify` is zero
    /// *and* a certificate flag is set. The flag is required as well because
    /// HAProxy leaves `verify` at zero when no certificate was presented at
    /// all, although the spec says zero means "presented and verified".
    pub verified: bool,
    /// `PP2_SUBTYPE_SSL_VERSION` (0x21), e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// `PP2_SUBTYPE_SSL_CN` (0x22): the client certificate's Common Name.
    pub cn: Option<String>,
}

/// What [`decode`] found at the start of a buffer.
// Returned, never stored: boxing the header to shrink `Incomplete` would
// cost an allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid header occupying the first `len` bytes; what follows
    /// is the client's own data.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// How many bytes of the buffer the header occupies.
        len: usize,
    },
    /// Everything so far is a valid start of a header: read more.
    Incomplete,
}

/// Why the first bytes of a connection are not an acceptable header. None of
/// these is worth retrying: the same bytes fail the same way, so the
/// connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProxyProtocolError {
    /// The bytes cannot be the start of either signature (`PROXY ` or the
    /// v2 signature): the peer is not speaking the PROXY protocol.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A v1 line that breaks the grammar; the text says which part.
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    /// No CRLF within the first [`V1_MAX`] bytes of a v1 line.
    #[error("PROXY v1 header has no CRLF within {V1_MAX} bytes")]
    V1TooLong,
    /// The v2 version nibble is not 2.
    #[error("PROXY v2 header with version {0}, expected 2")]
    V2BadVersion(u8),
    /// The v2 command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("PROXY v2 header with unknown command {0}")]
    V2BadCommand(u8),
    /// The v2 family/protocol byte is not one the spec defines.
    #[error("PROXY v2 header with unknown address family and protocol {0:#04x}")]
    V2BadFamily(u8),
    /// The v2 payload is longer than [`V2_MAX_PAYLOAD`].
    #[error("PROXY v2 payload of {len} bytes exceeds our {V2_MAX_PAYLOAD}-byte limit")]
    V2TooLarge {
        /// The length the header announced.
        len: usize,
    },
    /// The v2 payload is shorter than its family's address block.
    #[error("PROXY v2 payload of {len} bytes cannot hold its {need}-byte address block")]
    V2ShortAddresses {
        /// The length the header announced.
        len: usize,
        /// The family's address block.
        need: usize,
    },
    /// A v2 TLV that overruns its block, repeats, or holds a value we cannot accept.
    #[error("malformed PROXY v2 TLV: {0}")]
    V2BadTlv(&'static str),
    /// The `PP2_TYPE_CRC32C` TLV does not match the header.
    #[error("PROXY v2 CRC32C mismatch: header says {sent:#010x}, bytes give {computed:#010x}")]
    V2BadChecksum {
        /// The checksum in the TLV.
        sent: u32,
        /// The checksum of the header as received.
        computed: u32,
    },
}

impl ProxyProtocolError {
    /// A short, stable label for metrics (one per variant).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotProxy => "not_proxy",
            Self::V1Malformed(_) => "v1_malformed",
            Self::V1TooLong => "v1_too_long",
            Self::V2BadVersion(_) => "v2_bad_version",
            Self::V2BadCommand(_) => "v2_bad_command",
            Self::V2BadFamily(_) => "v2_bad_family",
            Self::V2TooLarge { .. } => "v2_too_large",
            Self::V2ShortAddresses { .. } => "v2_short_addresses",
            Self::V2BadTlv(_) => "v2_bad_tlv",
            Self::V2BadChecksum { .. } => "v2_bad_checksum",
        }
    }
}

/// Decodes the header at the start of `buf`, the first bytes a connection
/// sent. Call it again with more bytes while it returns
/// [`Decoded::Incomplete`]; every error is final.
///
/// Bytes that cannot begin a header fail at once, even a single byte, and
/// so do v1 bytes outside printable ASCII and v2 version, command, family
/// and length fields as soon as they have arrived.
pub fn decode(buf: &[u8]) -> Result<Decoded, ProxyProtocolError> {
    match buf.first() {
        None => Ok(Decoded::Incomplete),
        Some(b'P') if starts_like(buf, V1_PREFIX) => decode_v1(buf),
        Some(b'\r') if starts_like(buf, &V2_SIGNATURE) => decode_v2(buf),
        Some(_) => Err(ProxyProtocolError::NotProxy),
    }
}

/// Whether `buf` (possibly short) could still be the start of a v1 or v2
/// header: it agrees with `PROXY ` or the v2 signature for as many bytes as
/// it has. Only the signatures are checked; [`decode`] may still refuse what
/// follows them. A TLS ClientHello (0x16), an HTTP/1 request or the HTTP/2
/// preface (`PRI`) is told apart within three bytes.
///
/// The spec warns against guessing whether a header is present: anyone who
/// can reach a listener that accepts an optional header can claim any source
/// address. Keep optional headers to listeners reached only by trusted senders.
pub fn may_start_header(buf: &[u8]) -> bool {
    starts_like(buf, V1_PREFIX) || starts_like(buf, &V2_SIGNATURE)
}

/// `buf` and `signature` agree over the shorter of the two.
fn starts_like(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf.get(..n) == signature.get(..n)
}

// ---------------------------------------------------------------- version 1

/// `buf` starts like `PROXY `.
fn decode_v1(buf: &[u8]) -> Result<Decoded, ProxyProtocolError> {
    let Some(rest) = buf.get(V1_PREFIX.len()..) else {
        return Ok(Decoded::Incomplete);
    };
    let Some(cr) = find_v1_end(buf)? else {
        // Refuse a family no line could go on with now, not after 107 bytes.
        return if v1_family_may_follow(rest) {
            Ok(Decoded::Incomplete)
        } else {
            Err(ProxyProtocolError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        };
    };
    // The prefix is printable, so the CR is after it.
    let line = buf
        .get(V1_PREFIX.len()..cr)
        .ok_or(ProxyProtocolError::V1Malformed("line ends inside `PROXY `"))?;
    let addresses = parse_v1_line(line)?;
    Ok(Decoded::Complete {
        header: ProxyHeader {
            version: Version::V1,
            addresses,
            tlvs: Tlvs::default(),
            local: false,
        },
        len: cr + 2,
    })
}

/// The index of the CR of the line's CRLF, `None` while it may still come.
/// The line is US-ASCII text, so anything but printable characters before
/// the CRLF is refused as soon as it is seen, a bare LF or CR included
/// (the spec: a single CR or LF must not end the line).
fn find_v1_end(buf: &[u8]) -> Result<Option<usize>, ProxyProtocolError> {
    for (i, &b) in buf.iter().enumerate().take(V1_MAX) {
        match b {
            b' '..=b'~' => {}
            b'\r' if i + 2 > V1_MAX => return Err(ProxyProtocolError::V1TooLong),
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(ProxyProtocolError::V1Malformed("CR not followed by LF")),
                    None => Ok(None),
                };
            }
            b'\n' => return Err(ProxyProtocolError::V1Malformed("bare LF ends the line")),
            _ => {
                return Err(ProxyProtocolError::V1Malformed(
                    "byte outside printable US-ASCII",
                ));
            }
        }
    }
    if buf.len() >= V1_MAX {
        Err(ProxyProtocolError::V1TooLong)
    } else {
        Ok(None)
    }
}

/// Whether the bytes after `PROXY ` (possibly short) can still become a
/// protocol the grammar allows.
fn v1_family_may_follow(rest: &[u8]) -> bool {
    [&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN"]
        .iter()
        .any(|family| starts_like(rest, family))
}

/// The line between `PROXY ` and CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyProtocolError> {
    use ProxyProtocolError::V1Malformed;
    // Splitting on each single space makes a doubled, leading or trailing
    // space an empty field, which nothing below accepts.
    let mut fields = line.split(|&b| b == b' ');
    let v6 = match fields.next() {
        // The spec: after UNKNOWN, ignore anything before the CRLF.
        Some(b"UNKNOWN") => return Ok(None),
        Some(b"TCP4") => false,
        Some(b"TCP6") => true,
        _ => return Err(V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(V1Malformed(
            "expected exactly: family, two addresses, two ports, single spaces",
        ));
    };
    let source = SocketAddr::new(v1_ip(src, v6)?, v1_port(sport)?);
    let destination = SocketAddr::new(v1_ip(dst, v6)?, v1_port(dport)?);
    Ok(Some((source, destination)))
}

/// An address of the line's family. The standard library's parsers match the
/// spec's canonical forms: four decimal octets without leading zeros (no
/// octal ambiguity), and hexadecimal IPv6 with at most one `::`. IPv6 with a
/// trailing dotted quad (`::ffff:192.0.2.1`) is accepted too, because
/// HAProxy's `inet_ntop` writes v4-mapped addresses that way.
fn v1_ip(field: &[u8], v6: bool) -> Result<IpAddr, ProxyProtocolError> {
    use ProxyProtocolError::V1Malformed;
    let text = std::str::from_utf8(field).map_err(|_| V1Malformed("address is not ASCII"))?;
    let v4 = text.parse::<Ipv4Addr>();
    let v6_parsed = text.parse::<Ipv6Addr>();
    match (v6, v4, v6_parsed) {
        (false, Ok(ip), _) => Ok(IpAddr::V4(ip)),
        (true, _, Ok(ip)) => Ok(IpAddr::V6(ip)),
        (false, Err(_), Ok(_)) => Err(V1Malformed("TCP4 line with an IPv6 address")),
        (true, Ok(_), Err(_)) => Err(V1Malformed("TCP6 line with an IPv4 address")),
        _ => Err(V1Malformed("address does not parse")),
    }
}

/// A port: decimal 0 to 65535, no sign, no leading zero (the spec forbids
/// them, as for IPv4 octets, to avoid any confusion with octal).
fn v1_port(field: &[u8]) -> Result<u16, ProxyProtocolError> {
    use ProxyProtocolError::V1Malformed;
    match field {
        [] => Err(V1Malformed("empty port")),
        [b'0'] => Ok(0),
        [b'0', ..] => Err(V1Malformed("port with a leading zero")),
        _ if field.len() > 5 || !field.iter().all(u8::is_ascii_digit) => {
            Err(V1Malformed("port is not a decimal number"))
        }
        _ => {
            let n = field.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            u16::try_from(n).map_err(|_| V1Malformed("port above 65535"))
        }
    }
}

// ---------------------------------------------------------------- version 2

/// `buf` starts like the v2 signature.
fn decode_v2(buf: &[u8]) -> Result<Decoded, ProxyProtocolError> {
    use ProxyProtocolError::*;
    // Each fixed field is checked as soon as it has arrived.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Decoded::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(V2BadVersion(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        CMD_LOCAL => true,
        CMD_PROXY => false,
        other => return Err(V2BadCommand(other)),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Decoded::Incomplete);
    };
    // LOCAL: the spec has the receiver discard the whole block, family included.
    let address_len = if local { 0 } else { address_len(family)? };
    let Some(&[hi, lo]) = buf.get(14..16).and_then(|b| b.first_chunk::<2>()) else {
        return Ok(Decoded::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_PAYLOAD {
        return Err(V2TooLarge { len });
    }
    if len < address_len {
        return Err(V2ShortAddresses {
            len,
            need: address_len,
        });
    }
    let total = V2_FIXED + len;
    let Some(header) = buf.get(..total) else {
        return Ok(Decoded::Incomplete);
    };
    if local {
        return Ok(Decoded::Complete {
            header: ProxyHeader {
                version: Version::V2,
                addresses: None,
                tlvs: Tlvs::default(),
                local: true,
            },
            len: total,
        });
    }
    let block = header.get(V2_FIXED..).unwrap_or_default();
    let addresses = match family {
        0x11 | 0x12 => v2_addresses_v4(block),
        0x21 | 0x22 => v2_addresses_v6(block),
        // AF_UNIX: accepted, the connection's own endpoints stand.
        _ => None,
    };
    // AF_UNSPEC has no address block of known size, so no TLV can be told
    // from the address information the spec says to ignore: skip it all.
    let tlvs = if family == 0x00 {
        Tlvs::default()
    } else {
        decode_tlvs(header, V2_FIXED + address_len)?
    };
    Ok(Decoded::Complete {
        header: ProxyHeader {
            version: Version::V2,
            addresses,
            tlvs,
            local: false,
        },
        len: total,
    })
}

/// The address block size of a PROXY command's family/protocol byte: the
/// seven combinations the spec lists (UDP accepted: its addresses are used
/// as given); anything else must be rejected.
fn address_len(family: u8) -> Result<usize, ProxyProtocolError> {
    match family {
        0x00 => Ok(0),
        0x11 | 0x12 => Ok(2 * 4 + 2 * 2),
        0x21 | 0x22 => Ok(2 * 16 + 2 * 2),
        0x31 | 0x32 => Ok(2 * 108),
        other => Err(ProxyProtocolError::V2BadFamily(other)),
    }
}

fn v2_addresses_v4(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let (src, rest) = block.split_first_chunk::<4>()?;
    let (dst, rest) = rest.split_first_chunk::<4>()?;
    let (sport, rest) = rest.split_first_chunk::<2>()?;
    let (dport, _) = rest.split_first_chunk::<2>()?;
    Some((
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(*src),
            u16::from_be_bytes(*sport),
        )),
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(*dst),
            u16::from_be_bytes(*dport),
        )),
    ))
}

fn v2_addresses_v6(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let (src, rest) = block.split_first_chunk::<16>()?;
    let (dst, rest) = rest.split_first_chunk::<16>()?;
    let (sport, rest) = rest.split_first_chunk::<2>()?;
    let (dport, _) = rest.split_first_chunk::<2>()?;
    Some((
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(*src),
            u16::from_be_bytes(*sport),
            0,
            0,
        )),
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(*dst),
            u16::from_be_bytes(*dport),
            0,
            0,
        )),
    ))
}

/// One TLV: its type, where its value starts in the walked buffer, its value.
type RawTlv<'a> = (u8, usize, &'a [u8]);

/// Walks the TLVs of `buf` from `pos` to its end. A TLV whose 3-byte header
/// or value runs past the end is an error, after which the walk stops.
struct TlvWalk<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for TlvWalk<'a> {
    type Item = Result<RawTlv<'a>, ProxyProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..).filter(|r| !r.is_empty())?;
        let Some((&[kind, hi, lo], after)) = rest.split_first_chunk::<3>() else {
            self.pos = self.buf.len();
            return Some(Err(ProxyProtocolError::V2BadTlv(
                "TLV header runs past the end of the block",
            )));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(value) = after.get(..len) else {
            self.pos = self.buf.len();
            return Some(Err(ProxyProtocolError::V2BadTlv(
                "TLV value runs past the end of the block",
            )));
        };
        let at = self.pos + 3;
        self.pos = at + len;
        Some(Ok((kind, at, value)))
    }
}

/// The TLVs after the address block of `header` (the whole header, fixed
/// part included, so the checksum can be taken over it).
///
/// Two passes: the first checks the structure and the checksum, so a header
/// damaged in transit is reported as a checksum failure rather than as
/// whatever the damage made of a value; the second reads the values.
fn decode_tlvs(header: &[u8], start: usize) -> Result<Tlvs, ProxyProtocolError> {
    use ProxyProtocolError::V2BadTlv;
    let walk = || TlvWalk {
        buf: header,
        pos: start,
    };
    let mut crc_at = None;
    for tlv in walk() {
        let (kind, at, value) = tlv?;
        if kind == PP2_TYPE_CRC32C {
            if value.len() != 4 {
                return Err(V2BadTlv("CRC32C value is not 4 bytes"));
            }
            if crc_at.replace(at).is_some() {
                return Err(V2BadTlv("CRC32C appears twice"));
            }
        }
        // Anything else, NOOP (0x04) included, waits for the second pass.
    }
    if let Some(at) = crc_at {
        verify_crc(header, at)?;
    }

    let mut tlvs = Tlvs::default();
    for tlv in walk() {
        let (kind, _, value) = tlv?;
        // A type we keep may appear once: two authorities (or two SPIFFE
        // IDs) would let the sender show different values to different
        // readers of the same header.
        match kind {
            PP2_TYPE_ALPN => set_once(&mut tlvs.alpn, value.to_vec())?,
            PP2_TYPE_AUTHORITY => set_once(&mut tlvs.authority, utf8(value)?)?,
            PP2_TYPE_UNIQUE_ID if value.len() > UNIQUE_ID_MAX => {
                return Err(V2BadTlv("unique ID longer than 128 bytes"));
            }
            PP2_TYPE_UNIQUE_ID => set_once(&mut tlvs.unique_id, value.to_vec())?,
            PP2_TYPE_SSL => set_once(&mut tlvs.ssl, decode_ssl(value)?)?,
            PP2_TYPE_SPIFFE_ID => {
                if let Some(id) = spiffe_id(value) {
                    set_once(&mut tlvs.spiffe_id, id.to_owned())?;
                }
            }
            _ => {}
        }
    }
    Ok(tlvs)
}

/// Checks the `PP2_TYPE_CRC32C` value at `header[at..at + 4]`: the CRC32C of
/// the whole header with those four bytes zeroed, written big-endian (as
/// HAProxy and AWS's load balancers send it).
fn verify_crc(header: &[u8], at: usize) -> Result<(), ProxyProtocolError> {
    let (before, rest) = header
        .split_at_checked(at)
        .ok_or(ProxyProtocolError::V2BadTlv("CRC32C outside the header"))?;
    let (sent, after) = rest
        .split_first_chunk::<4>()
        .ok_or(ProxyProtocolError::V2BadTlv("CRC32C outside the header"))?;
    let sent = u32::from_be_bytes(*sent);
    let computed = crc32c(&[before, &[0; 4], after]);
    if sent == computed {
        Ok(())
    } else {
        Err(ProxyProtocolError::V2BadChecksum { sent, computed })
    }
}

/// The `PP2_TYPE_SSL` value: `client` (u8), `verify` (u32, big-endian),
/// then sub-TLVs.
fn decode_ssl(value: &[u8]) -> Result<SslInfo, ProxyProtocolError> {
    let Some((&[client, a, b, c, d], subs)) = value.split_first_chunk::<5>() else {
        return Err(ProxyProtocolError::V2BadTlv(
            "SSL TLV shorter than its 5-byte fixed part",
        ));
    };
    let verify = u32::from_be_bytes([a, b, c, d]);
    let mut ssl = SslInfo {
        client_flags: client,
        verified: verify == 0 && client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0,
        version: None,
        cn: None,
    };
    for sub in (TlvWalk { buf: subs, pos: 0 }) {
        match sub? {
            (PP2_SUBTYPE_SSL_VERSION, _, v) => set_once(&mut ssl.version, utf8(v)?)?,
            (PP2_SUBTYPE_SSL_CN, _, v) => set_once(&mut ssl.cn, utf8(v)?)?,
            // Cipher, signature and key algorithms, and types yet to come.
            _ => {}
        }
    }
    Ok(ssl)
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), ProxyProtocolError> {
    if slot.replace(value).is_some() {
        return Err(ProxyProtocolError::V2BadTlv("TLV type appears twice"));
    }
    Ok(())
}

fn utf8(value: &[u8]) -> Result<String, ProxyProtocolError> {
    std::str::from_utf8(value)
        .map(str::to_owned)
        .map_err(|_| ProxyProtocolError::V2BadTlv("string TLV is not UTF-8"))
}

/// A 0xE0 value that is ours: a SPIFFE ID, not another sender's use of the
/// shared custom range (see [`PP2_TYPE_SPIFFE_ID`]).
fn spiffe_id(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value)
        .ok()
        .filter(|id| id.starts_with("spiffe://"))
}

// ----------------------------------------------------------------- encoding

/// What to tell an upstream about a connection we relay to it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The client's address.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
    /// The ALPN protocol the client negotiated (v2 only).
    pub alpn: Option<&'a [u8]>,
    /// The host name the client asked for, e.g. its SNI (v2 only).
    pub authority: Option<&'a str>,
    /// The SPIFFE ID from the client certificate we verified (v2 only). Set
    /// it only from a verified certificate: its presence is also reported in
    /// the SSL TLV as a verified client certificate. A value that does not
    /// start with `spiffe://` is not sent, as receivers would not read it as one.
    pub spiffe_id: Option<&'a str>,
    /// The client's TLS version, e.g. `TLSv1.3` (v2 only); `None` when the
    /// client did not use TLS, and then no SSL TLV is sent.
    pub tls_version: Option<&'a str>,
}

/// Appends a v1 line for `out` to `buf` (TLV fields have no v1 form).
///
/// Mixed families (an IPv4 source with an IPv6 destination, or the reverse)
/// are sent as `TCP6` with the IPv4 address v4-mapped (`::ffff:a.b.c.d`),
/// which keeps the client's address, where `UNKNOWN` would make the
/// receiver fall back to our own; HAProxy does the same. IPv6 is written
/// in hexadecimal groups only (never with a dotted quad, which the spec's
/// grammar does not list), compressed as RFC 5952 says.
pub fn encode_v1(out: &Outgoing, buf: &mut Vec<u8>) {
    buf.extend_from_slice(V1_PREFIX);
    match (out.source.ip(), out.destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            buf.extend_from_slice(b"TCP4 ");
            push_ipv4(buf, src);
            buf.push(b' ');
            push_ipv4(buf, dst);
        }
        (src, dst) => {
            buf.extend_from_slice(b"TCP6 ");
            push_ipv6(buf, as_v6(src));
            buf.push(b' ');
            push_ipv6(buf, as_v6(dst));
        }
    }
    buf.push(b' ');
    push_decimal(buf, out.source.port());
    buf.push(b' ');
    push_decimal(buf, out.destination.port());
    buf.extend_from_slice(b"\r\n");
}

/// Appends a v2 header for `out` to `buf`: the PROXY command, TCP over IPv4
/// or IPv6 (mixed families as IPv6, the IPv4 address v4-mapped, as in
/// [`encode_v1`]), then the TLVs `PP2_TYPE_ALPN`, `PP2_TYPE_AUTHORITY`,
/// `PP2_TYPE_SSL` (when `tls_version` is set: `PP2_CLIENT_SSL`, plus
/// `PP2_CLIENT_CERT_CONN` and `verify` 0 when a SPIFFE ID is set, else
/// `verify` 1, with `PP2_SUBTYPE_SSL_VERSION`), [`PP2_TYPE_SPIFFE_ID`], and
/// last `PP2_TYPE_CRC32C` over the whole header.
///
/// The header never exceeds what [`decode`] accepts: a TLV that would push
/// the payload past [`V2_MAX_PAYLOAD`] is left out (only values far beyond
/// any real host name or SPIFFE ID can do that).
pub fn encode_v2(out: &Outgoing, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&V2_SIGNATURE);
    buf.push(0x20 | CMD_PROXY);
    match (out.source.ip(), out.destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            buf.extend_from_slice(&[0x11, 0, 0]);
            buf.extend_from_slice(&src.octets());
            buf.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            buf.extend_from_slice(&[0x21, 0, 0]);
            buf.extend_from_slice(&as_v6(src).octets());
            buf.extend_from_slice(&as_v6(dst).octets());
        }
    }
    buf.extend_from_slice(&out.source.port().to_be_bytes());
    buf.extend_from_slice(&out.destination.port().to_be_bytes());

    let addresses = buf.len() - start - V2_FIXED;
    let mut room = V2_MAX_PAYLOAD - addresses - CRC_TLV_LEN;
    if let Some(alpn) = out.alpn {
        push_tlv(buf, &mut room, PP2_TYPE_ALPN, &[alpn]);
    }
    if let Some(authority) = out.authority {
        push_tlv(buf, &mut room, PP2_TYPE_AUTHORITY, &[authority.as_bytes()]);
    }
    let spiffe = out.spiffe_id.filter(|id| id.starts_with("spiffe://"));
    // (No `let` chains: the workspace's rust-version is 1.85.)
    let version = out
        .tls_version
        .and_then(|v| Some((v, u16::try_from(v.len()).ok()?)));
    if let Some((version, version_len)) = version {
        let (client, verify) = match spiffe {
            Some(_) => (PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0u32),
            // Non-zero: no client certificate was verified.
            None => (PP2_CLIENT_SSL, 1),
        };
        let [hi, lo] = version_len.to_be_bytes();
        let parts: [&[u8]; 4] = [
            &[client],
            &verify.to_be_bytes(),
            &[PP2_SUBTYPE_SSL_VERSION, hi, lo],
            version.as_bytes(),
        ];
        push_tlv(buf, &mut room, PP2_TYPE_SSL, &parts);
    }
    if let Some(id) = spiffe {
        push_tlv(buf, &mut room, PP2_TYPE_SPIFFE_ID, &[id.as_bytes()]);
    }
    buf.extend_from_slice(&[PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]);

    let header = &mut buf[start..];
    // At most V2_MAX_PAYLOAD (the room above), which fits in 16 bits.
    let len = (header.len() - V2_FIXED) as u16;
    header[14..16].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c(&[header]);
    let crc_at = header.len() - 4;
    header[crc_at..].copy_from_slice(&crc.to_be_bytes());
}

/// Appends a v2 LOCAL header: the connection is our own (a health check, or
/// one with no client behind it), so the receiver keeps its real endpoints.
/// Family AF_UNSPEC and no payload, as the spec asks of senders.
pub fn encode_v2_local(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&V2_SIGNATURE);
    buf.extend_from_slice(&[0x20 | CMD_LOCAL, 0x00, 0, 0]);
}

/// Appends a TLV made of `parts` if it fits in `room`, and takes it from `room`.
fn push_tlv(buf: &mut Vec<u8>, room: &mut usize, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let Some(left) = room.checked_sub(3 + len) else {
        return;
    };
    // `len` is at most V2_MAX_PAYLOAD here.
    buf.push(kind);
    buf.extend_from_slice(&(len as u16).to_be_bytes());
    for part in parts {
        buf.extend_from_slice(part);
    }
    *room = left;
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn push_decimal(buf: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

fn push_ipv4(buf: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf.push(b'.');
        }
        push_decimal(buf, u16::from(octet));
    }
}

/// RFC 5952 text without the dotted-quad forms: lower-case groups without
/// leading zeros, the longest run of two or more zero groups (the first of
/// equals) replaced by `::`.
fn push_ipv6(buf: &mut Vec<u8>, ip: Ipv6Addr) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let groups = ip.segments();
    let (mut run_at, mut run_len) = (0, 0);
    let mut i = 0;
    while i < groups.len() {
        let from = i;
        while i < groups.len() && groups[i] == 0 {
            i += 1;
        }
        if i - from > run_len {
            (run_at, run_len) = (from, i - from);
        }
        i += 1;
    }
    if run_len < 2 {
        run_len = 0;
    }
    let mut i = 0;
    while i < groups.len() {
        if run_len > 0 && i == run_at {
            buf.extend_from_slice(b"::");
            i += run_len;
            continue;
        }
        if i > 0 && !(run_len > 0 && i == run_at + run_len) {
            buf.push(b':');
        }
        let group = groups[i];
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let digit = (group >> shift) & 0xf;
            if digit != 0 || started || shift == 0 {
                buf.push(HEX[usize::from(digit)]);
                started = true;
            }
        }
        i += 1;
    }
}

// ------------------------------------------------------------------ CRC32C

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum RFC
/// 4960 appendix B describes and the spec names. Written here rather than
/// taken from a crate: a table of 256 words, and a header is at most 4 KiB
/// once per connection, where a hardware-accelerated version would not show.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The CRC32C of the concatenation of `parts`.
fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc = CRC32C_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyProtocolError as E;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Decodes a buffer that must hold one whole header.
    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match decode(buf) {
            Ok(Decoded::Complete { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn error(buf: &[u8]) -> ProxyProtocolError {
        match decode(buf) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn assert_every_prefix_incomplete(buf: &[u8]) {
        let (_, len) = complete(buf);
        for cut in 0..len {
            assert_eq!(
                decode(&buf[..cut]),
                Ok(Decoded::Incomplete),
                "prefix of {cut} bytes of {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    /// A v2 PROXY header (command and family bytes given) over `payload`.
    fn v2(ver_cmd: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend_from_slice(&[ver_cmd, family]);
        buf.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        buf.extend_from_slice(payload);
        buf
    }

    /// The 12-byte block for 127.0.0.1:50000 -> 127.0.0.1:8080.
    const V4_BLOCK: &str = "7f000001 7f000001 c350 1f90";

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut buf = vec![kind];
        buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        buf.extend_from_slice(value);
        buf
    }

    /// A v2 TCP4 header with `tlvs` after the address block.
    fn v2_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
        let mut payload = hex(V4_BLOCK);
        payload.extend_from_slice(tlvs);
        v2(0x21, 0x11, &payload)
    }

    fn outgoing<'a>(source: &str, destination: &str) -> Outgoing<'a> {
        Outgoing {
            source: addr(source),
            destination: addr(destination),
            alpn: None,
            authority: None,
            spiffe_id: None,
            tls_version: None,
        }
    }

    fn v1_text(out: &Outgoing) -> String {
        let mut buf = Vec::new();
        encode_v1(out, &mut buf);
        String::from_utf8(buf).unwrap()
    }

    // ------------------------------------------------------------ v1

    #[test]
    fn v1_tcp4_gives_both_addresses_and_leaves_the_client_bytes() {
        let buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (header, len) = complete(buf);
        assert_eq!(len, 47);
        assert_eq!(&buf[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(
            header,
            ProxyHeader {
                version: Version::V1,
                addresses: Some((addr("192.168.0.1:56324"), addr("192.168.0.11:443"))),
                tlvs: Tlvs::default(),
                local: false,
            }
        );
    }

    #[test]
    fn v1_tcp6_accepts_compressed_full_and_v4_mapped_forms() {
        let (header, _) = complete(b"PROXY TCP6 2001:db8::1 ::1 1234 80\r\n");
        assert_eq!(
            header.addresses,
            Some((addr("[2001:db8::1]:1234"), addr("[::1]:80")))
        );
        let full = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                    FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF 65535 65535\r\n";
        assert_eq!(full.len(), 104, "the spec's longest TCP6 line");
        assert_eq!(
            complete(full.as_bytes()).0.addresses,
            Some((
                addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
                addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")
            ))
        );
        // HAProxy's inet_ntop writes v4-mapped addresses with a dotted quad.
        let (header, _) = complete(b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 1 2\r\n");
        assert_eq!(
            header.addresses,
            Some((addr("[::ffff:10.0.0.1]:1"), addr("[2001:db8::2]:2")))
        );
    }

    #[test]
    fn v1_unknown_has_no_addresses_in_its_short_and_long_forms() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
            b"PROXY UNKNOWN anything at all, ignored\r\n",
        ] {
            let (header, len) = complete(line);
            assert_eq!(len, line.len());
            assert_eq!(header.addresses, None);
            assert_eq!(header.version, Version::V1);
            assert!(!header.local);
        }
    }

    #[test]
    fn v1_line_of_exactly_107_bytes_is_accepted() {
        let worst = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(worst.len(), V1_MAX);
        assert_eq!(complete(worst.as_bytes()).1, V1_MAX);
    }

    #[test]
    fn v1_without_crlf_in_107_bytes_is_too_long() {
        let long = format!("PROXY UNKNOWN {}", "f".repeat(200));
        assert_eq!(error(&long.as_bytes()[..V1_MAX]), E::V1TooLong);
        assert_eq!(error(long.as_bytes()), E::V1TooLong);
        assert_eq!(
            decode(&long.as_bytes()[..V1_MAX - 1]),
            Ok(Decoded::Incomplete)
        );
        // A CRLF that would end the line at byte 108 is one byte too late.
        let late = format!("PROXY UNKNOWN {}\r\n", "f".repeat(V1_MAX - 2 - 14 + 1));
        assert_eq!(late.len(), V1_MAX + 1);
        assert_eq!(error(late.as_bytes()), E::V1TooLong);
        assert_eq!(error(&late.as_bytes()[..V1_MAX]), E::V1TooLong);
    }

    #[test]
    fn v1_line_must_end_in_crlf() {
        assert_eq!(
            error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET"),
            E::V1Malformed("bare LF ends the line")
        );
        assert_eq!(
            error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rGET"),
            E::V1Malformed("CR not followed by LF")
        );
        assert_eq!(
            error(b"PROXY UNKNOWN\n"),
            E::V1Malformed("bare LF ends the line")
        );
        assert_eq!(
            error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n"),
            E::V1Malformed("bare LF ends the line")
        );
    }

    #[test]
    fn v1_fields_are_separated_by_exactly_one_space() {
        for line in [
            &b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(error(line).kind(), "v1_malformed", "{line:?}");
        }
        // `PROXY` then two spaces cannot be a header at all.
        assert_eq!(
            error(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            E::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")
        );
    }

    #[test]
    fn v1_needs_exactly_two_addresses_and_two_ports() {
        for line in [
            &b"PROXY TCP4\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 1 2\r\n",
            b"PROXY \r\n",
        ] {
            assert_eq!(error(line).kind(), "v1_malformed", "{line:?}");
        }
    }

    #[test]
    fn v1_ports_are_plain_decimal_up_to_65535() {
        let port = |p: &str| decode(format!("PROXY TCP4 1.2.3.4 5.6.7.8 {p} 80\r\n").as_bytes());
        assert!(matches!(port("0"), Ok(Decoded::Complete { .. })));
        assert!(matches!(port("65535"), Ok(Decoded::Complete { .. })));
        assert_eq!(port("65536"), Err(E::V1Malformed("port above 65535")));
        assert_eq!(port("99999"), Err(E::V1Malformed("port above 65535")));
        assert_eq!(
            port("100000"),
            Err(E::V1Malformed("port is not a decimal number"))
        );
        assert_eq!(
            port("+80"),
            Err(E::V1Malformed("port is not a decimal number"))
        );
        assert_eq!(
            port("-1"),
            Err(E::V1Malformed("port is not a decimal number"))
        );
        assert_eq!(
            port("0x50"),
            Err(E::V1Malformed("port with a leading zero"))
        );
        assert_eq!(
            port("8a"),
            Err(E::V1Malformed("port is not a decimal number"))
        );
        // The spec forbids leading zeros (octal confusion), so 080 is refused.
        assert_eq!(port("080"), Err(E::V1Malformed("port with a leading zero")));
        assert_eq!(port("00"), Err(E::V1Malformed("port with a leading zero")));
    }

    #[test]
    fn v1_ipv4_octets_are_decimal_without_leading_zeros() {
        for bad in [
            "01.2.3.4",
            "1.2.3.256",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.-4",
            "a.b.c.d",
        ] {
            let line = format!("PROXY TCP4 {bad} 5.6.7.8 1 2\r\n");
            assert_eq!(
                error(line.as_bytes()),
                E::V1Malformed("address does not parse"),
                "{bad}"
            );
        }
        for bad in [
            "2001:db8:::1",
            "2001:db8::1%eth0",
            "1:2:3:4:5:6:7:8:9",
            "[::1]",
        ] {
            let line = format!("PROXY TCP6 {bad} ::1 1 2\r\n");
            assert_eq!(
                error(line.as_bytes()),
                E::V1Malformed("address does not parse"),
                "{bad}"
            );
        }
    }

    #[test]
    fn v1_addresses_must_match_the_family() {
        assert_eq!(
            error(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
            E::V1Malformed("TCP4 line with an IPv6 address")
        );
        assert_eq!(
            error(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n"),
            E::V1Malformed("TCP4 line with an IPv6 address")
        );
        assert_eq!(
            error(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
            E::V1Malformed("TCP6 line with an IPv4 address")
        );
    }

    #[test]
    fn v1_family_is_one_of_three_exact_words() {
        for line in [
            &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP41.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(
                error(line),
                E::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn v1_refuses_a_bad_family_or_byte_before_the_line_ends() {
        assert_eq!(
            error(b"PROXY TCP5"),
            E::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")
        );
        assert_eq!(
            error(b"PROXY X"),
            E::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")
        );
        assert_eq!(
            error(b"PROXY TCP4 1.2.\x00"),
            E::V1Malformed("byte outside printable US-ASCII")
        );
        assert_eq!(
            error("PROXY UNKNOWN caf\u{e9}".as_bytes()),
            E::V1Malformed("byte outside printable US-ASCII")
        );
    }

    #[test]
    fn v1_every_prefix_of_a_valid_line_is_incomplete() {
        for line in [
            &b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"[..],
            b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
            b"PROXY TCP6 2001:db8::1 ::1 1234 80\r\n",
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n",
        ] {
            assert_every_prefix_incomplete(line);
        }
    }

    // ------------------------------------------------------------ v2

    #[test]
    fn v2_decodes_the_haproxy_tcp4_vector() {
        // HAProxy's `send-proxy-v2` for 127.0.0.1:50000 -> 127.0.0.1:8080.
        let buf = hex("0d0a0d0a000d0a515549540a 21 11 000c 7f000001 7f000001 c350 1f90");
        let (header, len) = complete(&buf);
        assert_eq!(len, 28);
        assert_eq!(
            header,
            ProxyHeader {
                version: Version::V2,
                addresses: Some((addr("127.0.0.1:50000"), addr("127.0.0.1:8080"))),
                tlvs: Tlvs::default(),
                local: false,
            }
        );
        assert_every_prefix_incomplete(&buf);
    }

    #[test]
    fn v2_header_leaves_the_client_bytes_that_follow() {
        let mut buf = v2(0x21, 0x11, &hex(V4_BLOCK));
        buf.extend_from_slice(b"\x16\x03\x01\x02\x00");
        assert_eq!(complete(&buf).1, 28);
    }

    #[test]
    fn v2_tcp6_gives_both_addresses() {
        let block =
            hex("20010db8000000000000000000000001 20010db8000000000000000000000002 0050 01bb");
        let buf = v2(0x21, 0x21, &block);
        let (header, len) = complete(&buf);
        assert_eq!(len, 16 + 36);
        assert_eq!(
            header.addresses,
            Some((addr("[2001:db8::1]:80"), addr("[2001:db8::2]:443")))
        );
        assert_every_prefix_incomplete(&buf);
    }

    #[test]
    fn v2_udp_addresses_are_used_as_given() {
        let (header, _) = complete(&v2(0x21, 0x12, &hex(V4_BLOCK)));
        assert_eq!(
            header.addresses,
            Some((addr("127.0.0.1:50000"), addr("127.0.0.1:8080")))
        );
        let block =
            hex("00000000000000000000000000000001 00000000000000000000000000000001 0001 0002");
        let (header, _) = complete(&v2(0x21, 0x22, &block));
        assert_eq!(header.addresses, Some((addr("[::1]:1"), addr("[::1]:2"))));
    }

    #[test]
    fn v2_local_is_a_health_check_without_addresses() {
        let (header, len) = complete(&v2(0x20, 0x00, &[]));
        assert_eq!(len, 16);
        assert_eq!(
            header,
            ProxyHeader {
                version: Version::V2,
                addresses: None,
                tlvs: Tlvs::default(),
                local: true,
            }
        );
        // The receiver must skip whatever block LOCAL carries, family and
        // all, even one no PROXY command could use.
        let (header, len) = complete(&v2(0x20, 0x11, &hex(V4_BLOCK)));
        assert_eq!((header.addresses, header.local, len), (None, true, 28));
        let (header, len) = complete(&v2(0x20, 0xff, &[1, 2, 3]));
        assert_eq!((header.addresses, header.local, len), (None, true, 19));
    }

    #[test]
    fn v2_unix_is_accepted_without_addresses_and_its_tlvs_are_read() {
        let mut payload = vec![b'/'; 216];
        payload.extend_from_slice(&tlv(PP2_TYPE_AUTHORITY, b"unix.example"));
        for family in [0x31, 0x32] {
            let (header, len) = complete(&v2(0x21, family, &payload));
            assert_eq!(len, 16 + 216 + 15);
            assert_eq!(header.addresses, None);
            assert!(!header.local);
            assert_eq!(header.tlvs.authority.as_deref(), Some("unix.example"));
        }
        assert_eq!(
            error(&v2(0x21, 0x31, &[0; 215])),
            E::V2ShortAddresses {
                len: 215,
                need: 216
            }
        );
    }

    #[test]
    fn v2_unspec_is_accepted_and_its_block_ignored() {
        let (header, len) = complete(&v2(0x21, 0x00, &[0xff; 9]));
        assert_eq!(
            (header.addresses, header.tlvs, len),
            (None, Tlvs::default(), 25)
        );
    }

    #[test]
    fn v2_version_must_be_2() {
        for ver_cmd in [0x11, 0x31, 0x01, 0xf1] {
            assert_eq!(
                error(&v2(ver_cmd, 0x11, &hex(V4_BLOCK))),
                E::V2BadVersion(ver_cmd >> 4)
            );
            // Decided from the 13th byte.
            let mut prefix = V2_SIGNATURE.to_vec();
            prefix.push(ver_cmd);
            assert_eq!(error(&prefix), E::V2BadVersion(ver_cmd >> 4));
        }
    }

    #[test]
    fn v2_command_must_be_local_or_proxy() {
        for ver_cmd in [0x22, 0x2f] {
            assert_eq!(
                error(&v2(ver_cmd, 0x11, &hex(V4_BLOCK))),
                E::V2BadCommand(ver_cmd & 0xf)
            );
        }
    }

    #[test]
    fn v2_family_must_be_one_the_spec_lists() {
        for family in [0x01, 0x10, 0x13, 0x20, 0x23, 0x30, 0x41, 0xff] {
            assert_eq!(
                error(&v2(0x21, family, &[0; 216])),
                E::V2BadFamily(family),
                "{family:#x}"
            );
            // Decided from the 14th byte.
            let mut prefix = V2_SIGNATURE.to_vec();
            prefix.extend_from_slice(&[0x21, family]);
            assert_eq!(error(&prefix), E::V2BadFamily(family));
        }
    }

    #[test]
    fn v2_payload_over_the_cap_fails_before_it_arrives() {
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11, 0x10, 0x01]); // 4097
        assert_eq!(error(&fixed), E::V2TooLarge { len: 4097 });
        fixed[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(error(&fixed), E::V2TooLarge { len: 65535 });
        // LOCAL too: it is still bytes we would have to hold.
        fixed[12] = 0x20;
        assert_eq!(error(&fixed), E::V2TooLarge { len: 65535 });
        // Exactly the cap is fine.
        let mut payload = hex(V4_BLOCK);
        payload.extend_from_slice(&tlv(0x04, &vec![0; V2_MAX_PAYLOAD - 12 - 3]));
        let buf = v2(0x21, 0x11, &payload);
        assert_eq!(complete(&buf).1, MAX_HEADER);
    }

    #[test]
    fn v2_length_must_cover_the_address_block() {
        let block = hex(V4_BLOCK);
        assert_eq!(
            error(&v2(0x21, 0x11, &block[..11])),
            E::V2ShortAddresses { len: 11, need: 12 }
        );
        assert_eq!(
            error(&v2(0x21, 0x21, &block)),
            E::V2ShortAddresses { len: 12, need: 36 }
        );
        // Decided from the 16 fixed bytes, without waiting for the block.
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x21, 0x00, 0x0c]);
        assert_eq!(error(&fixed), E::V2ShortAddresses { len: 12, need: 36 });
    }

    #[test]
    fn v2_known_tlvs_are_kept_and_others_skipped() {
        let mut tlvs = tlv(PP2_TYPE_ALPN, b"h2");
        tlvs.extend(tlv(0x04, &[0; 5])); // NOOP
        tlvs.extend(tlv(PP2_TYPE_AUTHORITY, b"api.example.com"));
        tlvs.extend(tlv(0x30, b"netns")); // NETNS: not ours
        tlvs.extend(tlv(PP2_TYPE_UNIQUE_ID, &[7; 128]));
        tlvs.extend(tlv(0xEA, b"\x01vpce-0123")); // AWS: not ours
        tlvs.extend(tlv(PP2_TYPE_SPIFFE_ID, b"spiffe://mesh.local/ns/a/sa/b"));
        tlvs.extend(tlv(0xF0, b"")); // experimental, empty
        let buf = v2_with_tlvs(&tlvs);
        let (header, len) = complete(&buf);
        assert_eq!(len, buf.len());
        assert_eq!(
            header.tlvs,
            Tlvs {
                alpn: Some(b"h2".to_vec()),
                authority: Some("api.example.com".into()),
                unique_id: Some(vec![7; 128]),
                ssl: None,
                spiffe_id: Some("spiffe://mesh.local/ns/a/sa/b".into()),
            }
        );
        assert_every_prefix_incomplete(&buf);
    }

    #[test]
    fn v2_ssl_tlv_from_haproxy_gives_version_cn_and_verification() {
        // HAProxy's `send-proxy-v2-ssl-cn` for a TLS 1.3 client with a
        // verified certificate (client 0x07, verify 0).
        let buf = hex(
            "0d0a0d0a000d0a515549540a 21 11 0040 7f000001 7f000001 cc8a 232e
             20 0031 07 00000000
               21 0007 544c5376312e33
               22 001f 4578616d706c6520436f6d6d6f6e204e616d6520436c69656e742043657274",
        );
        let (header, len) = complete(&buf);
        assert_eq!(len, buf.len());
        assert_eq!(
            header.tlvs.ssl,
            Some(SslInfo {
                client_flags: PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
                verified: true,
                version: Some("TLSv1.3".into()),
                cn: Some("Example Common Name Client Cert".into()),
            })
        );
    }

    #[test]
    fn v2_ssl_verified_needs_a_certificate_and_a_zero_verify() {
        let ssl = |client: u8, verify: u32| {
            let mut value = vec![client];
            value.extend_from_slice(&verify.to_be_bytes());
            let (header, _) = complete(&v2_with_tlvs(&tlv(PP2_TYPE_SSL, &value)));
            header.tlvs.ssl.unwrap()
        };
        // HAProxy sends verify 0 for a TLS client without a certificate.
        assert!(!ssl(PP2_CLIENT_SSL, 0).verified);
        assert!(!ssl(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 20).verified);
        assert!(ssl(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0).verified);
        assert!(ssl(PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS, 0).verified);
        let plain = ssl(0, 0);
        assert_eq!(
            (plain.client_flags, plain.version, plain.cn),
            (0, None, None)
        );
    }

    #[test]
    fn v2_ssl_tlv_must_hold_its_fixed_part_and_whole_sub_tlvs() {
        assert_eq!(
            error(&v2_with_tlvs(&tlv(PP2_TYPE_SSL, &[1, 0, 0, 0]))),
            E::V2BadTlv("SSL TLV shorter than its 5-byte fixed part")
        );
        assert_eq!(
            error(&v2_with_tlvs(&tlv(
                PP2_TYPE_SSL,
                &[1, 0, 0, 0, 0, 0x21, 0, 9, b'T']
            ))),
            E::V2BadTlv("TLV value runs past the end of the block")
        );
        assert_eq!(
            error(&v2_with_tlvs(&tlv(PP2_TYPE_SSL, &[1, 0, 0, 0, 0, 0x21]))),
            E::V2BadTlv("TLV header runs past the end of the block")
        );
        let mut twice = vec![1, 0, 0, 0, 0];
        twice.extend(tlv(PP2_SUBTYPE_SSL_CN, b"a"));
        twice.extend(tlv(PP2_SUBTYPE_SSL_CN, b"b"));
        assert_eq!(
            error(&v2_with_tlvs(&tlv(PP2_TYPE_SSL, &twice))),
            E::V2BadTlv("TLV type appears twice")
        );
        let mut not_utf8 = vec![1, 0, 0, 0, 0];
        not_utf8.extend(tlv(PP2_SUBTYPE_SSL_VERSION, b"\xff"));
        assert_eq!(
            error(&v2_with_tlvs(&tlv(PP2_TYPE_SSL, &not_utf8))),
            E::V2BadTlv("string TLV is not UTF-8")
        );
    }

    #[test]
    fn v2_tlv_overrunning_the_block_is_refused() {
        // One and two bytes left: not even a TLV header.
        assert_eq!(
            error(&v2_with_tlvs(&[0xE1])),
            E::V2BadTlv("TLV header runs past the end of the block")
        );
        assert_eq!(
            error(&v2_with_tlvs(&[0xE2, 0x00])),
            E::V2BadTlv("TLV header runs past the end of the block")
        );
        // A value longer than what is left, even by one byte.
        assert_eq!(
            error(&v2_with_tlvs(&[0xE3, 0x00, 0x01])),
            E::V2BadTlv("TLV value runs past the end of the block")
        );
        let mut tlvs = tlv(PP2_TYPE_ALPN, b"h2");
        tlvs.extend_from_slice(&[PP2_TYPE_AUTHORITY, 0x00, 0x05, b'a', b'b']);
        assert_eq!(
            error(&v2_with_tlvs(&tlvs)),
            E::V2BadTlv("TLV value runs past the end of the block")
        );
        // The bytes after the header (the client's) do not count.
        let mut buf = v2_with_tlvs(&[0xE3, 0x00, 0x04, 1, 2]);
        buf.extend_from_slice(&[3, 4]);
        assert_eq!(
            error(&buf),
            E::V2BadTlv("TLV value runs past the end of the block")
        );
    }

    #[test]
    fn v2_tlvs_we_keep_may_not_repeat() {
        for kind in [PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_UNIQUE_ID] {
            let mut tlvs = tlv(kind, b"a");
            tlvs.extend(tlv(kind, b"b"));
            assert_eq!(
                error(&v2_with_tlvs(&tlvs)),
                E::V2BadTlv("TLV type appears twice"),
                "{kind:#x}"
            );
        }
        let mut tlvs = tlv(PP2_TYPE_SPIFFE_ID, b"spiffe://a/x");
        tlvs.extend(tlv(PP2_TYPE_SPIFFE_ID, b"spiffe://a/y"));
        assert_eq!(
            error(&v2_with_tlvs(&tlvs)),
            E::V2BadTlv("TLV type appears twice")
        );
        // Skipped types may repeat.
        let mut tlvs = tlv(0x04, b"");
        tlvs.extend(tlv(0x04, b""));
        tlvs.extend(tlv(0xEA, b"x"));
        tlvs.extend(tlv(0xEA, b"y"));
        complete(&v2_with_tlvs(&tlvs));
    }

    #[test]
    fn v2_string_tlvs_must_be_utf8_and_unique_id_at_most_128_bytes() {
        assert_eq!(
            error(&v2_with_tlvs(&tlv(PP2_TYPE_AUTHORITY, b"caf\xe9"))),
            E::V2BadTlv("string TLV is not UTF-8")
        );
        assert_eq!(
            error(&v2_with_tlvs(&tlv(PP2_TYPE_UNIQUE_ID, &[0; 129]))),
            E::V2BadTlv("unique ID longer than 128 bytes")
        );
    }

    #[test]
    fn v2_custom_0xe0_that_is_not_a_spiffe_id_is_someone_elses() {
        // Google Cloud Private Service Connect: 8-byte binary connection id.
        let (header, _) = complete(&v2_with_tlvs(&tlv(0xE0, &hex("009b34d70a003c64"))));
        assert_eq!(header.tlvs.spiffe_id, None);
        let (header, _) = complete(&v2_with_tlvs(&tlv(0xE0, b"not-a-spiffe-id")));
        assert_eq!(header.tlvs.spiffe_id, None);
    }

    /// AWS's documented Network Load Balancer header (aws/elastic-load-
    /// balancing-tools, `Compatibility_AwsNetworkLoadBalancerTest`): a CRC32C,
    /// the VPC endpoint id in custom type 0xEA, and 36 bytes of NOOP padding.
    fn aws_nlb_header() -> Vec<u8> {
        hex("0d0a0d0a000d0a515549540a 21 11 0054
             ac1f0771 ac1f0a1f c8f2 0050
             03 0004 e8d6892d
             ea 0017 01 7670 63652d 30386432 62663135 66616335 30303163 39
             04 0024 000000000000000000000000000000000000000000000000000000000000000000000000")
    }

    #[test]
    fn v2_crc32c_from_an_aws_load_balancer_verifies() {
        let buf = aws_nlb_header();
        let (header, len) = complete(&buf);
        assert_eq!(len, buf.len());
        assert_eq!(
            header.addresses,
            Some((addr("172.31.7.113:51442"), addr("172.31.10.31:80")))
        );
        assert_eq!(header.tlvs, Tlvs::default());
        assert_every_prefix_incomplete(&buf);
    }

    #[test]
    fn v2_any_payload_byte_changed_under_a_crc32c_is_refused() {
        let good = aws_nlb_header();
        // The type and length bytes of its three TLVs: changing one of those
        // may break the walk before the checksum is reached.
        let tlv_headers = [28, 29, 30, 35, 36, 37, 61, 62, 63];
        for at in V2_FIXED..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            if tlv_headers.contains(&at) {
                assert!(decode(&bad).is_err(), "byte {at}");
            } else {
                assert_eq!(error(&bad).kind(), "v2_bad_checksum", "byte {at}");
            }
        }
        let mut bad = good.clone();
        bad[32] ^= 0x80; // the CRC itself
        assert_eq!(
            error(&bad),
            E::V2BadChecksum {
                sent: 0xe8d6_892d ^ 0x0080_0000,
                computed: 0xe8d6_892d
            }
        );
    }

    #[test]
    fn v2_crc32c_tlv_must_be_4_bytes_and_appear_once() {
        assert_eq!(
            error(&v2_with_tlvs(&tlv(PP2_TYPE_CRC32C, &[0; 3]))),
            E::V2BadTlv("CRC32C value is not 4 bytes")
        );
        let mut tlvs = tlv(PP2_TYPE_CRC32C, &[0; 4]);
        tlvs.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
        assert_eq!(
            error(&v2_with_tlvs(&tlvs)),
            E::V2BadTlv("CRC32C appears twice")
        );
    }

    #[test]
    fn v2_damage_under_a_crc32c_is_reported_as_a_checksum_failure() {
        let out = Outgoing {
            authority: Some("api.example.com"),
            ..outgoing("10.0.0.1:1000", "10.0.0.2:443")
        };
        let mut buf = Vec::new();
        encode_v2(&out, &mut buf);
        // Make the authority invalid UTF-8: the checksum is checked first.
        let at = buf.windows(3).position(|w| w == b"api").unwrap();
        buf[at] = 0xff;
        assert_eq!(error(&buf).kind(), "v2_bad_checksum");
    }

    // ------------------------------------------------------- signatures

    #[test]
    fn other_protocols_are_refused_from_their_first_bytes() {
        assert_eq!(decode(&[]), Ok(Decoded::Incomplete));
        for first in [
            &[0x16, 0x03, 0x01, 0x02, 0x00][..],
            b"GET / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\r\n\r\nGET",
            b"PROXY\t",
            b"proxy ",
        ] {
            assert!(!may_start_header(first), "{first:?}");
            assert_eq!(error(first), E::NotProxy, "{first:?}");
        }
        assert_eq!(error(&[0x16]), E::NotProxy);
        assert_eq!(error(b"G"), E::NotProxy);
        assert_eq!(error(b"PRI"), E::NotProxy);
        assert!(!may_start_header(b"PRI"));
        assert!(may_start_header(b"PR"));
    }

    #[test]
    fn prefixes_of_either_signature_may_start_a_header() {
        assert!(may_start_header(b""));
        for len in 1..=V1_PREFIX.len() {
            assert!(may_start_header(&V1_PREFIX[..len]));
            assert_eq!(decode(&V1_PREFIX[..len]), Ok(Decoded::Incomplete));
        }
        for len in 1..=V2_SIGNATURE.len() {
            assert!(may_start_header(&V2_SIGNATURE[..len]));
            assert_eq!(decode(&V2_SIGNATURE[..len]), Ok(Decoded::Incomplete));
        }
        assert!(may_start_header(b"PROXY TCP4 1.2.3.4"));
        assert!(may_start_header(&aws_nlb_header()));
        // Past the signature only decode can tell.
        assert!(may_start_header(b"PROXY nonsense"));
    }

    #[test]
    fn error_kinds_are_distinct_metric_labels() {
        let all = [
            E::NotProxy,
            E::V1Malformed("x"),
            E::V1TooLong,
            E::V2BadVersion(1),
            E::V2BadCommand(2),
            E::V2BadFamily(3),
            E::V2TooLarge { len: 5000 },
            E::V2ShortAddresses { len: 1, need: 12 },
            E::V2BadTlv("x"),
            E::V2BadChecksum {
                sent: 1,
                computed: 2,
            },
        ];
        let kinds: std::collections::BTreeSet<_> = all.iter().map(E::kind).collect();
        assert_eq!(kinds.len(), all.len());
        assert!(kinds.iter().all(|k| {
            k.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        }));
        assert_eq!(
            E::V2TooLarge { len: 5000 }.to_string(),
            "PROXY v2 payload of 5000 bytes exceeds our 4096-byte limit"
        );
    }

    // --------------------------------------------------------- encoding

    #[test]
    fn encode_v1_writes_the_spec_line() {
        assert_eq!(
            v1_text(&outgoing("192.168.0.1:56324", "192.168.0.11:443")),
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            v1_text(&outgoing("0.0.0.0:0", "255.255.255.255:65535")),
            "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n"
        );
        assert_eq!(
            v1_text(&outgoing("[2001:db8::1]:1234", "[::1]:80")),
            "PROXY TCP6 2001:db8::1 ::1 1234 80\r\n"
        );
    }

    #[test]
    fn encode_v1_mixed_families_go_as_tcp6_with_v4_mapped_addresses() {
        let text = v1_text(&outgoing("10.0.0.1:5000", "[2001:db8::2]:443"));
        assert_eq!(text, "PROXY TCP6 ::ffff:a00:1 2001:db8::2 5000 443\r\n");
        let (header, _) = complete(text.as_bytes());
        assert_eq!(
            header.addresses,
            Some((addr("[::ffff:10.0.0.1]:5000"), addr("[2001:db8::2]:443")))
        );
        let text = v1_text(&outgoing("[2001:db8::1]:5000", "10.0.0.2:443"));
        assert_eq!(text, "PROXY TCP6 2001:db8::1 ::ffff:a00:2 5000 443\r\n");
    }

    #[test]
    fn ipv6_text_is_rfc5952_without_dotted_quads() {
        let text = |ip: &str| {
            let mut buf = Vec::new();
            push_ipv6(&mut buf, ip.parse().unwrap());
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(text("::"), "::");
        assert_eq!(text("::1"), "::1");
        assert_eq!(text("1::"), "1::");
        assert_eq!(text("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1");
        assert_eq!(text("2001:0:0:1:0:0:0:1"), "2001:0:0:1::1");
        assert_eq!(text("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
        assert_eq!(text("::ffff:192.0.2.1"), "::ffff:c000:201");
        assert_eq!(text("::192.0.2.1"), "::c000:201");
        // Wherever the standard library writes no dotted quad, we agree with it.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Sparse groups, so runs of zeros of every length occur.
            let groups: [u16; 8] = std::array::from_fn(|i| {
                if (state >> (i * 3)) & 3 == 0 {
                    (state >> (i * 5)) as u16
                } else {
                    0
                }
            });
            let ip = Ipv6Addr::from(groups);
            let std_text = ip.to_string();
            if !std_text.contains('.') {
                assert_eq!(text(&std_text), std_text);
            }
            assert_eq!(text(&std_text).parse::<Ipv6Addr>().unwrap(), ip);
        }
    }

    #[test]
    fn encode_v1_round_trips_through_decode() {
        for (src, dst) in [
            ("192.168.0.1:56324", "192.168.0.11:443"),
            ("[2001:db8::1]:1234", "[fe80::1]:80"),
            ("[::ffff:1.2.3.4]:1", "[::ffff:5.6.7.8]:2"),
            ("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[::]:0"),
        ] {
            let out = outgoing(src, dst);
            let mut buf = b"left alone".to_vec();
            encode_v1(&out, &mut buf);
            assert!(buf.starts_with(b"left alone"), "appends");
            let (header, len) = complete(&buf[10..]);
            assert_eq!(len, buf.len() - 10);
            assert!(len <= V1_MAX);
            assert_eq!(header.addresses, Some((addr(src), addr(dst))));
        }
    }

    #[test]
    fn encode_v2_round_trips_addresses_and_tlvs_through_decode() {
        for (src, dst, want_src, want_dst) in [
            (
                "10.0.0.1:1000",
                "10.0.0.2:443",
                "10.0.0.1:1000",
                "10.0.0.2:443",
            ),
            (
                "[2001:db8::1]:1000",
                "[2001:db8::2]:443",
                "[2001:db8::1]:1000",
                "[2001:db8::2]:443",
            ),
            // Mixed: both as IPv6, the IPv4 one v4-mapped.
            (
                "10.0.0.1:1000",
                "[2001:db8::2]:443",
                "[::ffff:10.0.0.1]:1000",
                "[2001:db8::2]:443",
            ),
            (
                "[2001:db8::1]:1000",
                "10.0.0.2:443",
                "[2001:db8::1]:1000",
                "[::ffff:10.0.0.2]:443",
            ),
        ] {
            let out = Outgoing {
                alpn: Some(b"h2"),
                authority: Some("api.example.com"),
                spiffe_id: Some("spiffe://mesh.local/ns/shop/sa/web"),
                tls_version: Some("TLSv1.3"),
                ..outgoing(src, dst)
            };
            let mut buf = vec![0xAA];
            encode_v2(&out, &mut buf);
            assert_eq!(buf[0], 0xAA, "appends");
            let (header, len) = complete(&buf[1..]);
            assert_eq!(len, buf.len() - 1);
            assert_eq!(
                header,
                ProxyHeader {
                    version: Version::V2,
                    addresses: Some((addr(want_src), addr(want_dst))),
                    tlvs: Tlvs {
                        alpn: Some(b"h2".to_vec()),
                        authority: Some("api.example.com".into()),
                        unique_id: None,
                        ssl: Some(SslInfo {
                            client_flags: PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
                            verified: true,
                            version: Some("TLSv1.3".into()),
                            cn: None,
                        }),
                        spiffe_id: Some("spiffe://mesh.local/ns/shop/sa/web".into()),
                    },
                    local: false,
                }
            );
            assert_every_prefix_incomplete(&buf[1..]);
        }
    }

    #[test]
    fn encode_v2_without_optional_fields_sends_addresses_and_crc_only() {
        let mut buf = Vec::new();
        encode_v2(&outgoing("127.0.0.1:50000", "127.0.0.1:8080"), &mut buf);
        let mut want =
            hex("0d0a0d0a000d0a515549540a 21 11 0013 7f000001 7f000001 c350 1f90 03 0004");
        want.extend_from_slice(&crc32c(&[&want, &[0; 4]]).to_be_bytes());
        assert_eq!(buf, want);
        let (header, _) = complete(&buf);
        assert_eq!(header.tlvs, Tlvs::default());
    }

    #[test]
    fn encode_v2_ssl_tlv_says_unverified_without_a_spiffe_id() {
        let out = Outgoing {
            tls_version: Some("TLSv1.2"),
            spiffe_id: Some("not-spiffe"),
            ..outgoing("10.0.0.1:1", "10.0.0.2:2")
        };
        let mut buf = Vec::new();
        encode_v2(&out, &mut buf);
        let (header, _) = complete(&buf);
        assert_eq!(
            header.tlvs.ssl,
            Some(SslInfo {
                client_flags: PP2_CLIENT_SSL,
                verified: false,
                version: Some("TLSv1.2".into()),
                cn: None,
            })
        );
        assert_eq!(header.tlvs.spiffe_id, None, "not a SPIFFE ID: not sent");
    }

    #[test]
    fn encode_v2_local_is_a_bare_local_header() {
        let mut buf = Vec::new();
        encode_v2_local(&mut buf);
        assert_eq!(buf, hex("0d0a0d0a000d0a515549540a 20 00 0000"));
        let (header, len) = complete(&buf);
        assert_eq!((header.local, header.addresses, len), (true, None, 16));
    }

    #[test]
    fn encoded_v2_crc32c_covers_every_byte() {
        let out = Outgoing {
            alpn: Some(b"http/1.1"),
            authority: Some("a.example"),
            ..outgoing("[2001:db8::1]:1", "[2001:db8::2]:2")
        };
        let mut good = Vec::new();
        encode_v2(&out, &mut good);
        let crc_at = good.len() - 4;
        let sent = u32::from_be_bytes(good[crc_at..].try_into().unwrap());
        assert_eq!(sent, crc32c(&[&good[..crc_at], &[0; 4]]));
        // Every byte but the checksum's own type byte: a CRC32C TLV turned
        // into another type leaves a header without a checksum, which the
        // spec allows (the checksum guards against damage, not forgery).
        for at in (0..good.len()).filter(|&at| at != crc_at - 3) {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            assert!(
                !matches!(decode(&bad), Ok(Decoded::Complete { .. })),
                "byte {at} changed and still accepted"
            );
        }
    }

    #[test]
    fn encode_v2_leaves_out_tlvs_that_would_exceed_the_cap() {
        let huge = "h".repeat(V2_MAX_PAYLOAD);
        let out = Outgoing {
            alpn: Some(b"h2"),
            authority: Some(&huge),
            spiffe_id: Some("spiffe://mesh.local/a"),
            tls_version: Some("TLSv1.3"),
            ..outgoing("[2001:db8::1]:1", "10.0.0.2:2")
        };
        let mut buf = Vec::new();
        encode_v2(&out, &mut buf);
        assert!(buf.len() <= MAX_HEADER);
        let (header, _) = complete(&buf);
        assert_eq!(header.tlvs.authority, None);
        assert_eq!(header.tlvs.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(
            header.tlvs.spiffe_id.as_deref(),
            Some("spiffe://mesh.local/a")
        );
        // A value that exactly fills the cap is kept.
        let exact = "e".repeat(V2_MAX_PAYLOAD - 36 - CRC_TLV_LEN - 3);
        let out = Outgoing {
            authority: Some(&exact),
            ..outgoing("[::1]:1", "[::1]:2")
        };
        buf.clear();
        encode_v2(&out, &mut buf);
        assert_eq!(buf.len(), MAX_HEADER);
        assert_eq!(complete(&buf).0.tlvs.authority.as_deref(), Some(&exact[..]));
    }

    // ------------------------------------------------------------ CRC32C

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // The CRC catalogue's check value, and RFC 3720 appendix B.4.
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8A91_36AA);
        assert_eq!(crc32c(&[&[0xffu8; 32]]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&[&ascending]), 0x46DD_794E);
        assert_eq!(crc32c(&[b"1234", b"", b"56789"]), 0xE306_9283);
    }

    // ---------------------------------------------------------- hostile

    /// The fuzz target's properties, on a deterministic mutation loop so
    /// they run on stable in every test run.
    #[test]
    fn corrupted_headers_never_panic_and_keep_the_invariants() {
        let mut seeds = vec![
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 1234 80\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            aws_nlb_header(),
            v2(0x20, 0x00, &[]),
        ];
        let out = Outgoing {
            alpn: Some(b"h2"),
            authority: Some("a.example"),
            spiffe_id: Some("spiffe://m/x"),
            tls_version: Some("TLSv1.3"),
            ..outgoing("[2001:db8::1]:1", "10.0.0.2:2")
        };
        let mut encoded = Vec::new();
        encode_v2(&out, &mut encoded);
        seeds.push(encoded);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..30_000 {
            let mut buf = seeds[round % seeds.len()].clone();
            for _ in 0..1 + next() % 3 {
                let r = next();
                let at = (r as usize) % buf.len().max(1);
                match r >> 60 {
                    0 => buf.truncate(at),
                    1 if buf.len() < MAX_HEADER => buf.insert(at, (r >> 32) as u8),
                    2 if !buf.is_empty() => {
                        buf.remove(at);
                    }
                    _ if !buf.is_empty() => buf[at] = (r >> 32) as u8,
                    _ => {}
                }
            }
            let result = decode(&buf);
            assert_eq!(
                matches!(result, Err(E::NotProxy)),
                !may_start_header(&buf),
                "{buf:?}"
            );
            if let Ok(Decoded::Complete { header, len }) = result {
                assert!(len <= buf.len() && len <= MAX_HEADER);
                for cut in 0..len {
                    assert_eq!(
                        decode(&buf[..cut]),
                        Ok(Decoded::Incomplete),
                        "{buf:?} cut {cut}"
                    );
                }
                if let Some((source, destination)) = header.addresses {
                    let out = Outgoing {
                        alpn: header.tlvs.alpn.as_deref(),
                        authority: header.tlvs.authority.as_deref(),
                        spiffe_id: header.tlvs.spiffe_id.as_deref(),
                        tls_version: None,
                        ..Outgoing {
                            source,
                            destination,
                            ..out
                        }
                    };
                    let mut again = Vec::new();
                    encode_v2(&out, &mut again);
                    let (back, _) = complete(&again);
                    assert_eq!(back.addresses, header.addresses);
                    assert_eq!(back.tlvs.alpn, header.tlvs.alpn);
                    assert_eq!(back.tlvs.authority, header.tlvs.authority);
                    assert_eq!(back.tlvs.spiffe_id, header.tlvs.spiffe_id);
                }
            }
        }
    }
}
