//! The ClientHello/SNI parser on arbitrary first bytes of a connection:
//! never panics, asks for more only beyond what it has, and returns names
//! made of DNS characters only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_core::tls::client_hello::{ClientHello, MAX_CLIENT_HELLO, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        ClientHello::Incomplete(n) => assert!(n > data.len() && n <= MAX_CLIENT_HELLO),
        ClientHello::Parsed(Some(name)) => {
            assert!(!name.is_empty());
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')));
        }
        ClientHello::Parsed(None) | ClientHello::NotTls(_) => {}
    }
});
