//! The PROXY protocol decoder on arbitrary first bytes of a connection:
//! never panics; refuses as `NotProxy` exactly what `may_start_header`
//! refuses; a complete header fits both the input and `MAX_HEADER`, every
//! shorter prefix of it is `Incomplete` (a listener reading a byte at a time
//! reaches the same answer), and the header alone decodes the same; a
//! header with addresses, encoded again (v1 when it came as v1 with one
//! family, v2 otherwise, with its ALPN, authority, SPIFFE ID and TLS
//! version), decodes to the same addresses and those same TLVs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_core::proxy_protocol::{
    self, Decoded, MAX_HEADER, Outgoing, ProxyHeader, ProxyProtocolError, V2_MAX_PAYLOAD, Version,
};

/// Re-encodes `header` and checks what decoding that gives back.
fn round_trip(header: &ProxyHeader) {
    let Some((source, destination)) = header.addresses else {
        return;
    };
    let tlvs = &header.tlvs;
    let tls_version = tlvs.ssl.as_ref().and_then(|s| s.version.as_deref());
    let out = Outgoing {
        source,
        destination,
        alpn: tlvs.alpn.as_deref(),
        authority: tlvs.authority.as_deref(),
        spiffe_id: tlvs.spiffe_id.as_deref(),
        tls_version,
    };
    let mut buf = Vec::new();
    let v1 = header.version == Version::V1 && source.is_ipv4() == destination.is_ipv4();
    if v1 {
        proxy_protocol::encode_v1(&out, &mut buf);
    } else {
        proxy_protocol::encode_v2(&out, &mut buf);
    }
    let again = match proxy_protocol::decode(&buf) {
        Ok(Decoded::Complete { header, len }) => {
            assert_eq!(len, buf.len());
            header
        }
        other => panic!(
            "encoded header refused: {other:?}\n{:?}",
            String::from_utf8_lossy(&buf)
        ),
    };
    assert_eq!(again.addresses, header.addresses);
    assert!(!again.local);
    if v1 {
        assert_eq!(again.version, Version::V1);
        return;
    }
    assert_eq!(again.version, Version::V2);
    let again_version = again.tlvs.ssl.as_ref().and_then(|s| s.version.as_deref());
    // Without a CRC32C of its own, a header near the cap can leave no room
    // for ours: then the encoder leaves TLVs out, never sends them wrong.
    let addresses = if source.is_ipv4() && destination.is_ipv4() {
        12
    } else {
        36
    };
    let needed = addresses
        + tlvs.alpn.as_ref().map_or(0, |v| 3 + v.len())
        + tlvs.authority.as_ref().map_or(0, |v| 3 + v.len())
        + tls_version.map_or(0, |v| 3 + 5 + 3 + v.len())
        + tlvs.spiffe_id.as_ref().map_or(0, |v| 3 + v.len())
        + 7;
    if needed <= V2_MAX_PAYLOAD {
        assert_eq!(again.tlvs.alpn, tlvs.alpn);
        assert_eq!(again.tlvs.authority, tlvs.authority);
        assert_eq!(again.tlvs.spiffe_id, tlvs.spiffe_id);
        assert_eq!(again_version, tls_version);
    } else {
        assert!(again.tlvs.alpn.is_none() || again.tlvs.alpn == tlvs.alpn);
        assert!(again.tlvs.authority.is_none() || again.tlvs.authority == tlvs.authority);
        assert!(again.tlvs.spiffe_id.is_none() || again.tlvs.spiffe_id == tlvs.spiffe_id);
        assert!(again_version.is_none() || again_version == tls_version);
    }
    assert_eq!(again.tlvs.unique_id, None);
}

fuzz_target!(|data: &[u8]| {
    let decoded = proxy_protocol::decode(data);
    assert_eq!(
        matches!(decoded, Err(ProxyProtocolError::NotProxy)),
        !proxy_protocol::may_start_header(data)
    );
    if let Err(e) = &decoded {
        assert!(!e.kind().is_empty());
    }
    let Ok(Decoded::Complete { header, len }) = decoded else {
        return;
    };
    assert!(len <= data.len() && len <= MAX_HEADER);
    for cut in 0..len {
        assert_eq!(
            proxy_protocol::decode(&data[..cut]),
            Ok(Decoded::Incomplete),
            "prefix of {cut} bytes"
        );
    }
    assert_eq!(
        proxy_protocol::decode(&data[..len]),
        Ok(Decoded::Complete {
            header: header.clone(),
            len
        })
    );
    if header.local {
        assert_eq!(header.addresses, None);
    }
    round_trip(&header);
});
