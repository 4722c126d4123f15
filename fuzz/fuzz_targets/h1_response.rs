//! The HTTP/1.1 response head parser on arbitrary upstream bytes, for a GET
//! and for a HEAD: never panics; a chunked body goes through the strict
//! decoder; the head re-framed for an HTTP/1.1 and an HTTP/1.0 client (as
//! `exchange::respond` does) parses again with the same status, framing
//! and upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_l7::codec::chunked::{Chunk, ChunkedDecoder, ChunkedLimits};
use ringmesh_l7::codec::h1::{self, Framing, HEADER_SLOTS, HeadError, Method};
use ringmesh_l7::codec::write::{self, ResponseOut};

const MAX_HEAD: usize = 60 * 1024;

fn decode_chunked(body: &[u8]) {
    let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
    let mut rest = body;
    while let Ok((n, Some(event))) = decoder.decode(rest) {
        assert!(n <= rest.len());
        match event {
            Chunk::Data { start, end } => assert!(start < end && end <= n),
            Chunk::Done => break,
        }
        rest = &rest[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    let (mut fields, mut nominated) = (Vec::new(), Vec::new());
    let (mut fields2, mut nominated2) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for method in [Method::Get, Method::Head] {
        let head = match h1::parse_response(data, method, MAX_HEAD, &mut fields, &mut nominated) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert!(data.len() <= MAX_HEAD);
                continue;
            }
            Err(_) => continue,
        };
        assert!(head.len <= data.len() && head.len <= MAX_HEAD);
        if method == Method::Head {
            assert_eq!(head.framing, Framing::None);
        }
        assert!((100..=599).contains(&head.status));
        for client_minor in [1u8, 0] {
            let framing = match (head.framing, client_minor) {
                (Framing::Chunked | Framing::Close, 0) => Framing::Close,
                (Framing::Close, _) => Framing::Chunked,
                (f, _) => f,
            };
            let close = !head.keep_alive || framing == Framing::Close;
            let keep_length = head.framing == Framing::None
                && !(100..200).contains(&head.status)
                && head.status != 204;
            let how = ResponseOut {
                framing,
                close,
                keep_length,
            };
            out.clear();
            write::response_head(&mut out, data, &head, &fields, &nominated, how);
            match h1::parse_response(&out, method, usize::MAX, &mut fields2, &mut nominated2) {
                Ok(Some(again)) => {
                    assert_eq!(again.len, out.len());
                    assert_eq!(again.status, head.status);
                    assert_eq!(again.reason.get(&out), head.reason.get(data));
                    let expected = if head.framing == Framing::None {
                        Framing::None
                    } else {
                        framing
                    };
                    assert_eq!(again.framing, expected);
                    assert_eq!(
                        again.upgrade.map(|u| u.get(&out)),
                        head.upgrade.map(|u| u.get(data))
                    );
                    if head.upgrade.is_none() {
                        assert_eq!(again.keep_alive, !close);
                    }
                }
                // The proxy's connection and framing fields on top of a
                // head that already had all the slots.
                Err(HeadError::TooManyHeaders) if fields.len() + 3 > HEADER_SLOTS => {}
                other => panic!(
                    "written head refused: {:?}\n{:?}",
                    other.map(|o| o.is_some()),
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        if head.framing == Framing::Chunked {
            decode_chunked(&data[head.len..]);
        }
    }
});
