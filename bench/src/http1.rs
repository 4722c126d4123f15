//! HTTP/1.1 on the load generator's side: requests are built once, and each
//! response is read and checked for framing (status line and headers via
//! `httparse`, then exactly Content-Length bytes or a valid chunked body).
//! Pipelining is not used, so bytes after a response are a framing error.

use std::io;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A request, serialised once and sent many times.
#[derive(Debug, Clone)]
pub struct Request {
    /// Bytes on the wire.
    pub bytes: Vec<u8>,
    /// Whether the request was HEAD (its response has no body).
    pub head: bool,
}

impl Request {
    /// Builds `METHOD path HTTP/1.1` with a Host header, the given headers,
    /// a Content-Length when there is a body, and `Connection: close` when
    /// `close` (so the server, not the generator, holds TIME_WAIT).
    pub fn build(
        method: &str,
        path: &str,
        host: &str,
        headers: &[(String, String)],
        body: &[u8],
        close: bool,
    ) -> Request {
        let mut b = Vec::with_capacity(128 + body.len());
        b.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
        for (k, v) in headers {
            b.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            b.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        if close {
            b.extend_from_slice(b"Connection: close\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(body);
        Request {
            bytes: b,
            head: method.eq_ignore_ascii_case("HEAD"),
        }
    }
}

/// What a complete response said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseMeta {
    /// Status code.
    pub status: u16,
    /// Body bytes (decoded length for chunked bodies).
    pub body_len: usize,
    /// Whether the connection cannot be reused (Connection: close, or a
    /// body delimited by the close).
    pub close: bool,
}

/// Why a response could not be read.
#[derive(Debug)]
pub enum ResponseError {
    /// Not valid HTTP/1.1, or bytes beyond the response.
    Framing(String),
    /// The peer closed or reset before the response was complete.
    Closed(Option<io::Error>),
}

#[derive(Debug, Clone, Copy)]
enum Body {
    Length(usize),
    Chunked(ChunkState),
    UntilClose,
}

#[derive(Debug, Clone, Copy)]
enum ChunkPhase {
    Size,
    Data(usize),
    DataEnd,
    Trailer,
}

#[derive(Debug, Clone, Copy)]
struct ChunkState {
    phase: ChunkPhase,
    decoded: usize,
}

/// Incremental response parser over bytes appended as they arrive.
#[derive(Debug)]
pub struct ResponseReader {
    acc: Vec<u8>,
    /// Parsed so far: head length, status, body framing, close flag.
    head: Option<(usize, u16, bool)>,
    body: Option<Body>,
    /// Offset in `acc` up to which the body has been consumed.
    pos: usize,
    head_request: bool,
}

/// Progress after feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Need more bytes.
    More,
    /// A complete response.
    Done(ResponseMeta),
}

impl ResponseReader {
    /// A reader for the response to a request (`head` for HEAD requests).
    pub fn new(head_request: bool) -> Self {
        ResponseReader {
            acc: Vec::with_capacity(4096),
            head: None,
            body: None,
            pos: 0,
            head_request,
        }
    }

    /// Prepares for the next response on the same connection.
    pub fn reset(&mut self, head_request: bool) {
        self.acc.clear();
        self.head = None;
        self.body = None;
        self.pos = 0;
        self.head_request = head_request;
    }

    /// Appends `data` and parses as far as possible.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, ResponseError> {
        self.acc.extend_from_slice(data);
        self.advance()
    }

    /// The peer closed the connection: completes a close-delimited body,
    /// otherwise the response was cut short.
    pub fn eof(&mut self) -> Result<ResponseMeta, ResponseError> {
        match (self.head, self.body) {
            (Some((_, status, _)), Some(Body::UntilClose)) => Ok(ResponseMeta {
                status,
                body_len: self.acc.len() - self.pos,
                close: true,
            }),
            _ => Err(ResponseError::Closed(None)),
        }
    }

    fn advance(&mut self) -> Result<Progress, ResponseError> {
        loop {
            if self.head.is_none() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                let len = match resp.parse(&self.acc) {
                    Ok(httparse::Status::Complete(len)) => len,
                    Ok(httparse::Status::Partial) => {
                        if self.acc.len() > MAX_HEAD {
                            return Err(ResponseError::Framing(
                                "response head larger than 64 KiB".into(),
                            ));
                        }
                        return Ok(Progress::More);
                    }
                    Err(e) => {
                        return Err(ResponseError::Framing(format!(
                            "invalid response head: {e}"
                        )));
                    }
                };
                let status = resp.code.unwrap_or(0);
                if resp.version != Some(1) && resp.version != Some(0) {
                    return Err(ResponseError::Framing("not an HTTP/1.x response".into()));
                }
                if (100..200).contains(&status) && status != 101 {
                    // Interim response (100 Continue): skip it.
                    self.acc.drain(..len);
                    continue;
                }
                let mut close = resp.version == Some(0);
                let mut length = None;
                let mut chunked = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let v = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        match (v, length) {
                            (Some(v), None) => length = Some(v),
                            (Some(v), Some(prev)) if v == prev => {}
                            _ => {
                                return Err(ResponseError::Framing(
                                    "invalid or conflicting Content-Length".into(),
                                ));
                            }
                        }
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                        chunked = v.trim().ends_with("chunked");
                        if !chunked {
                            return Err(ResponseError::Framing(format!(
                                "unsupported Transfer-Encoding `{v}`"
                            )));
                        }
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                        if v.contains("close") {
                            close = true;
                        }
                    }
                }
                if chunked && length.is_some() {
                    return Err(ResponseError::Framing(
                        "both Content-Length and chunked".into(),
                    ));
                }
                let body = if self.head_request || status == 204 || status == 304 {
                    Body::Length(0)
                } else if chunked {
                    Body::Chunked(ChunkState {
                        phase: ChunkPhase::Size,
                        decoded: 0,
                    })
                } else if let Some(n) = length {
                    Body::Length(n)
                } else {
                    close = true;
                    Body::UntilClose
                };
                self.head = Some((len, status, close));
                self.body = Some(body);
                self.pos = len;
            }
            return self.advance_body();
        }
    }

    fn advance_body(&mut self) -> Result<Progress, ResponseError> {
        let Some((_, status, close)) = self.head else {
            return Ok(Progress::More);
        };
        let done = |body_len| {
            Progress::Done(ResponseMeta {
                status,
                body_len,
                close,
            })
        };
        match self.body {
            Some(Body::Length(n)) => {
                let have = self.acc.len() - self.pos;
                if have < n {
                    Ok(Progress::More)
                } else if have == n {
                    Ok(done(n))
                } else {
                    Err(ResponseError::Framing(format!(
                        "{} bytes after a {n}-byte body",
                        have - n
                    )))
                }
            }
            Some(Body::UntilClose) => Ok(Progress::More),
            Some(Body::Chunked(mut st)) => {
                let r = self.advance_chunks(&mut st);
                self.body = Some(Body::Chunked(st));
                match r? {
                    true if self.pos == self.acc.len() => Ok(done(st.decoded)),
                    true => Err(ResponseError::Framing(
                        "bytes after the chunked body".into(),
                    )),
                    false => Ok(Progress::More),
                }
            }
            None => Ok(Progress::More),
        }
    }

    /// Walks chunks from `self.pos`; `Ok(true)` once the last chunk and
    /// trailers are complete.
    fn advance_chunks(&mut self, st: &mut ChunkState) -> Result<bool, ResponseError> {
        loop {
            let rest = &self.acc[self.pos..];
            match st.phase {
                ChunkPhase::Size => {
                    let Some(eol) = find_crlf(rest) else {
                        if rest.len() > 1024 {
                            return Err(ResponseError::Framing("chunk size line too long".into()));
                        }
                        return Ok(false);
                    };
                    let line = std::str::from_utf8(&rest[..eol])
                        .map_err(|_| ResponseError::Framing("chunk size is not text".into()))?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16).map_err(|_| {
                        ResponseError::Framing(format!("invalid chunk size `{hex}`"))
                    })?;
                    self.pos += eol + 2;
                    st.phase = if size == 0 {
                        ChunkPhase::Trailer
                    } else {
                        ChunkPhase::Data(size)
                    };
                }
                ChunkPhase::Data(left) => {
                    let take = left.min(rest.len());
                    self.pos += take;
                    st.decoded += take;
                    if take < left {
                        st.phase = ChunkPhase::Data(left - take);
                        return Ok(false);
                    }
                    st.phase = ChunkPhase::DataEnd;
                }
                ChunkPhase::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(false);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ResponseError::Framing(
                            "chunk data not followed by CRLF".into(),
                        ));
                    }
                    self.pos += 2;
                    st.phase = ChunkPhase::Size;
                }
                ChunkPhase::Trailer => {
                    let Some(eol) = find_crlf(rest) else {
                        return Ok(false);
                    };
                    self.pos += eol + 2;
                    if eol == 0 {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Progress, ResponseError> {
        let mut r = ResponseReader::new(false);
        let mut last = Ok(Progress::More);
        for c in chunks {
            last = r.feed(c);
            if !matches!(last, Ok(Progress::More)) {
                break;
            }
        }
        last
    }

    #[test]
    fn content_length_bodies_complete_exactly() {
        let p = parse_all(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"]).unwrap();
        assert_eq!(
            p,
            Progress::Done(ResponseMeta {
                status: 200,
                body_len: 5,
                close: false
            })
        );
    }

    #[test]
    fn chunked_bodies_split_anywhere_decode() {
        let whole = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nT: v\r\n\r\n";
        for split in 1..whole.len() {
            let p = parse_all(&[&whole[..split], &whole[split..]]).unwrap();
            assert_eq!(
                p,
                Progress::Done(ResponseMeta {
                    status: 200,
                    body_len: 9,
                    close: false
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn extra_bytes_after_the_body_are_a_framing_error() {
        assert!(matches!(
            parse_all(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc"]),
            Err(ResponseError::Framing(_))
        ));
    }

    #[test]
    fn garbage_is_a_framing_error() {
        assert!(matches!(
            parse_all(&[b"SSH-2.0-OpenSSH\r\n\r\n"]),
            Err(ResponseError::Framing(_))
        ));
        assert!(matches!(
            parse_all(&[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"]),
            Err(ResponseError::Framing(_))
        ));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let p =
            parse_all(&[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"]).unwrap();
        assert_eq!(
            p,
            Progress::Done(ResponseMeta {
                status: 204,
                body_len: 0,
                close: false
            })
        );
    }

    #[test]
    fn a_body_without_length_ends_at_close() {
        let mut r = ResponseReader::new(false);
        assert_eq!(
            r.feed(b"HTTP/1.1 200 OK\r\n\r\nabcdef").unwrap(),
            Progress::More
        );
        assert_eq!(
            r.eof().unwrap(),
            ResponseMeta {
                status: 200,
                body_len: 6,
                close: true
            }
        );
        let mut cut = ResponseReader::new(false);
        assert_eq!(
            cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
                .unwrap(),
            Progress::More
        );
        assert!(matches!(cut.eof(), Err(ResponseError::Closed(None))));
    }

    #[test]
    fn requests_carry_length_and_close() {
        let r = Request::build(
            "POST",
            "/x",
            "h",
            &[("X-A".into(), "1".into())],
            b"body",
            true,
        );
        let text = String::from_utf8(r.bytes).unwrap();
        assert_eq!(
            text,
            "POST /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
        );
    }
}
