//! Wire formats. `h1` parses HTTP/1.x heads and holds the checks a proxy
//! adds to them; `chunked` is our own strict chunked decoder (httparse's is
//! too lenient for a proxy); `write` serialises the heads the proxy sends.

pub mod chunked;
pub mod h1;
pub mod write;
