//! The HTTP/1.1 request head parser on arbitrary client bytes: never
//! panics; a complete head's body is framed (chunked bodies through the
//! strict decoder), and the head the proxy writes upstream parses again to
//! the same method, target, host and framing (the proxy never emits what it
//! would refuse). Up to four pipelined requests per input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_l7::codec::chunked::{Chunk, ChunkedDecoder, ChunkedLimits};
use ringmesh_l7::codec::h1::{self, Framing, HEADER_SLOTS, Limits};
use ringmesh_l7::codec::write::{self, Forwarded};

const FWD: Forwarded<'static> = Forwarded {
    client_ip: Some("192.0.2.1"),
    proto: "http",
    request_id: Some("00000000-0000-4000-8000-000000000000"),
    default_host: "10.0.0.1:80",
};

/// Bytes of a complete chunked body at the start of `body`, or None if it
/// is refused or incomplete. Fed whole and in two pieces: same answer.
fn chunked_len(body: &[u8]) -> Option<usize> {
    let run = |split: usize| {
        let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
        let (mut pos, mut payload) = (0usize, 0u64);
        loop {
            let end = if pos < split { split } else { body.len() };
            let input = &body[pos..end];
            match decoder.decode(input) {
                Err(e) => return Err(e),
                Ok((n, event)) => {
                    assert!(n <= input.len());
                    pos += n;
                    match event {
                        Some(Chunk::Data { start, end }) => {
                            assert!(start < end && end <= n);
                            payload += (end - start) as u64;
                        }
                        Some(Chunk::Done) => return Ok(Some((pos, payload))),
                        None if end == body.len() => return Ok(None),
                        None => {}
                    }
                }
            }
        }
    };
    let whole = run(body.len());
    assert_eq!(whole, run(body.len() / 2), "split changed the decoding");
    whole.ok().flatten().map(|(n, _)| n)
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    // Room for what the proxy adds (host, forwarding, upgrade, framing).
    let relaxed = Limits {
        max_headers: HEADER_SLOTS,
        max_head: limits.max_head + 1024,
        ..limits
    };
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    let (mut fields2, mut nominated2) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    let mut rest = data;
    for _ in 0..4 {
        let head = match h1::parse_request(rest, &limits, &mut fields, &mut nominated) {
            Ok(Some(head)) => head,
            Ok(None) => {
                let _ = h1::check_partial_request(rest, &limits);
                return;
            }
            Err(e) => {
                assert!(matches!(e.status(), 400 | 414 | 431 | 501));
                return;
            }
        };
        assert!(head.len <= rest.len() && head.len <= limits.max_head);
        for f in fields.iter() {
            assert!(f.name.end as usize <= head.len && f.value.end as usize <= head.len);
        }
        out.clear();
        write::request_head(&mut out, rest, &head, &fields, &nominated, &FWD, &write::Edits::NONE);
        let again = match h1::parse_request(&out, &relaxed, &mut fields2, &mut nominated2) {
            Ok(Some(again)) => again,
            other => panic!(
                "written head refused: {:?}\n{:?}",
                other.map(|o| o.is_some()),
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(again.len, out.len());
        assert_eq!(again.method_span.get(&out), head.method_span.get(rest));
        assert_eq!(again.target.get(&out), head.target.get(rest));
        let host = head.host.map_or(FWD.default_host.as_bytes(), |h| h.get(rest));
        assert_eq!(again.host.map(|h| h.get(&out)), Some(host));
        assert_eq!(again.framing, head.framing);
        assert_eq!(
            again.upgrade.map(|u| u.get(&out)),
            head.upgrade.map(|u| u.get(rest))
        );
        let body = &rest[head.len..];
        let used = match head.framing {
            Framing::None => 0,
            Framing::Length(n) if (body.len() as u64) < n => return,
            Framing::Length(n) => n as usize,
            Framing::Chunked => match chunked_len(body) {
                Some(n) => n,
                None => return,
            },
            Framing::Close => panic!("a request is never close-delimited"),
        };
        if head.upgrade.is_some() {
            return;
        }
        rest = &body[used..];
    }
});
