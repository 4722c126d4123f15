//! Strict, sans-IO decoder for the HTTP/1.1 chunked transfer coding, plus
//! helpers to encode it.
//!
//! The decoder is fed bytes by the caller and returns events ([`Chunk`]); it
//! never performs IO and never copies payload bytes: a [`Chunk::Data`] event
//! names a range of the slice that was passed in. Every piece of framing (a
//! chunk-size line, the CRLF after data, a trailer field line) may be split
//! across calls at any byte; the decoder keeps a byte-at-a-time state machine
//! and gives the same answer however the input is split.
//!
//! # Why strict
//!
//! A proxy that frames a body differently from the server behind it lets an
//! attacker smuggle a request. Lenient parsers (e.g. httparse's
//! `parse_chunk_size`) read an empty size line as the last chunk, accept a bare
//! LF in chunk extensions, and so on. This decoder accepts exactly the grammar
//! of RFC 9112 §7.1 and rejects everything else with a specific
//! [`ChunkedError`].
//!
//! # What is accepted (RFC 9112 §7.1)
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size     = 1*HEXDIG
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! trailer-section = *( field-line CRLF )          ; §7.1.2, RFC 9110 §5
//! ```
//!
//! * **chunk-size** (§7.1): 1 to 16 hex digits, either case, evaluated with
//!   checked arithmetic. No leading whitespace, sign or `0x` prefix. A size of
//!   zero (any number of `0` digits, up to 16) is the last chunk.
//! * **chunk-ext** (§7.1.1): after the digits, optional BWS (SP / HTAB) and then
//!   `;` start the extensions, which run to the CRLF. Their bytes must be HTAB,
//!   SP, VCHAR (0x21-0x7E) or obs-text (0x80-0xFF); the name/value structure
//!   is not parsed further because extensions are discarded and never
//!   forwarded. Every byte between the last size digit and the CR (BWS, `;`
//!   and the extensions) counts against [`ChunkedLimits::max_extension`].
//! * **chunk-data** (§7.1): exactly chunk-size opaque octets (they may contain
//!   CR and LF), followed by exactly CRLF.
//! * **trailer-section** (§7.1.2): field lines `name ":" value CRLF`, where the
//!   name is one or more RFC 9110 `tchar`s and the value consists of HTAB, SP,
//!   VCHAR and obs-text only; then the final empty line (CRLF). The field lines
//!   are kept (see [`ChunkedDecoder::trailers`]) and their total size, CRLFs
//!   included but the final empty line excluded, is bounded by
//!   [`ChunkedLimits::max_trailers`]. Which fields may appear in trailers
//!   (RFC 9110 §6.5.1) is the caller's decision, not the decoder's.
//!
//! # What is rejected, and why
//!
//! * An empty size line (`\r\n`, or `;ext\r\n`): [`ChunkedError::MissingSize`].
//!   Reading it as the last chunk (as httparse does) desynchronises the proxy
//!   from a server that rejects it.
//! * Anything other than a hex digit where the size starts, and anything other
//!   than a hex digit, `;`, SP, HTAB or CR right after the digits (`-0`, `+4`,
//!   ` 4`, `0x10`, `4z`): [`ChunkedError::InvalidSizeDigit`].
//! * More than 16 digits, or a value that overflows `u64`:
//!   [`ChunkedError::SizeTooLong`]. Servers that truncate or wrap large sizes
//!   disagree with each other about where a chunk ends.
//! * Whitespace after the digits that is not followed by `;` (`4 \r\n`), a
//!   control byte (NUL, DEL, ...) inside extensions:
//!   [`ChunkedError::InvalidExtension`]; more than `max_extension` bytes of
//!   extension: [`ChunkedError::ExtensionTooLarge`].
//! * A line ending other than CRLF anywhere in the framing (§7.1 uses CRLF
//!   only; the lenient LF-only ending of §2.2 does not apply to chunked framing
//!   in a proxy): an LF not preceded by CR is [`ChunkedError::BareLf`], a CR not
//!   followed by LF is [`ChunkedError::BareCr`].
//! * Chunk data followed by bytes other than CRLF (the chunk is longer than its
//!   declared size): [`ChunkedError::MissingDataCrlf`] (a lone LF there is
//!   [`ChunkedError::BareLf`], and CR followed by something other than LF is
//!   [`ChunkedError::BareCr`]).
//! * A malformed trailer field line (whitespace before the colon, obs-fold,
//!   empty name, missing colon, control bytes):
//!   [`ChunkedError::InvalidTrailer`]; a trailer section larger than
//!   `max_trailers`: [`ChunkedError::TrailersTooLarge`].
//!
//! Errors are sticky: once a call failed, every later call returns the same
//! error. The decoder does not know about end of input: if the connection ends
//! before [`Chunk::Done`], the body is truncated and the caller must treat it
//! as an error.

use thiserror::Error;

/// Most hex digits accepted in a chunk-size (enough for any `u64`).
const MAX_SIZE_DIGITS: u8 = 16;

/// Limits; `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy)]
pub struct ChunkedLimits {
    /// Bytes of extensions on one chunk-size line: everything between the last
    /// size digit and the CR (BWS, `;`, names and values). Default 4096.
    pub max_extension: usize,
    /// Bytes of the whole trailer section: the field lines with their CRLFs,
    /// not counting the final empty line. Default 16384.
    pub max_trailers: usize,
}

impl Default for ChunkedLimits {
    fn default() -> Self {
        Self {
            max_extension: 4096,
            max_trailers: 16384,
        }
    }
}

/// Why a chunked body was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChunkedError {
    /// A chunk-size line with no digits (`\r\n` or `;ext\r\n`).
    #[error("missing chunk size")]
    MissingSize,
    /// A byte that is not a hex digit where the chunk-size is.
    #[error("invalid byte in chunk size")]
    InvalidSizeDigit,
    /// More than 16 hex digits, or a size that overflows `u64`.
    #[error("chunk size too long")]
    SizeTooLong,
    /// A forbidden byte in the extensions, or whitespace after the size not
    /// followed by `;`.
    #[error("invalid chunk extension")]
    InvalidExtension,
    /// More than `max_extension` bytes of extensions on one line.
    #[error("chunk extension too large")]
    ExtensionTooLarge,
    /// An LF not preceded by CR in the framing.
    #[error("bare lf in chunked framing")]
    BareLf,
    /// A CR not followed by LF in the framing.
    #[error("bare cr in chunked framing")]
    BareCr,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by crlf")]
    MissingDataCrlf,
    /// A malformed trailer field line.
    #[error("invalid trailer field")]
    InvalidTrailer,
    /// A trailer section larger than `max_trailers`.
    #[error("trailer section too large")]
    TrailersTooLarge,
}

impl ChunkedError {
    /// A stable snake_case label, for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MissingSize => "chunk_size_missing",
            Self::InvalidSizeDigit => "chunk_size_invalid",
            Self::SizeTooLong => "chunk_size_too_long",
            Self::InvalidExtension => "chunk_extension_invalid",
            Self::ExtensionTooLarge => "chunk_extension_too_large",
            Self::BareLf => "chunked_bare_lf",
            Self::BareCr => "chunked_bare_cr",
            Self::MissingDataCrlf => "chunk_data_crlf_missing",
            Self::InvalidTrailer => "trailer_invalid",
            Self::TrailersTooLarge => "trailers_too_large",
        }
    }
}

/// An event of the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Payload bytes at `input[start..end]` of the slice passed to this call.
    Data { start: usize, end: usize },
    /// The last chunk and the trailer section (possibly empty) were read; the body is over.
    Done,
}

/// Where the decoder is in the chunked grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Expecting the first hex digit of a chunk-size.
    SizeStart,
    /// Inside the chunk-size digits.
    Size { digits: u8, value: u64 },
    /// After the digits, inside BWS that must be followed by `;`.
    SizeBws { value: u64, ext_len: usize },
    /// Inside the chunk extensions (after `;`).
    Ext { value: u64, ext_len: usize },
    /// After the CR that ends a chunk-size line.
    SizeLf { value: u64 },
    /// Inside chunk data; `remaining` > 0.
    Data { remaining: u64 },
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer field line or of the final empty line.
    TrailerLineStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// After the CR of a trailer field line.
    TrailerLf,
    /// After the CR of the final empty line.
    FinalLf,
    /// The body is over.
    Done,
    /// An error occurred; it is returned again on every call.
    Failed(ChunkedError),
}

/// Result of feeding one framing byte.
enum Step {
    Continue,
    Done,
}

/// Strict sans-IO decoder of an HTTP/1.1 chunked body (RFC 9112 §7.1).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    limits: ChunkedLimits,
    state: State,
    payload_len: u64,
    /// Validated trailer field lines, each ending in CRLF. Allocated only when
    /// trailers exist.
    trailers: Vec<u8>,
}

/// An RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// HTAB, SP, VCHAR or obs-text: the bytes allowed in extensions and field values.
fn is_text(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff)
}

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new(limits: ChunkedLimits) -> Self {
        Self {
            limits,
            state: State::SizeStart,
            payload_len: 0,
            trailers: Vec::new(),
        }
    }

    /// Decodes from `input`. Returns (bytes of `input` consumed, event). At most one event per call.
    /// - Data: consumed includes the data bytes (and any framing bytes before them in this call); the caller writes input[start..end] then calls again with the rest.
    /// - None: every byte of input was consumed into internal state (partial size line, partial CRLF, partial trailer...) and more input is needed; consumed == input.len().
    /// - Done: consumed covers up to and including the final CRLF of the trailer section; bytes after it belong to the next message and are NOT consumed.
    ///
    /// Once done, every call returns `(0, Some(Chunk::Done))`.
    /// After an error the decoder stays failed (further calls return the same error).
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Chunk>), ChunkedError> {
        match &self.state {
            State::Done => return Ok((0, Some(Chunk::Done))),
            State::Failed(e) => return Err(e.clone()),
            _ => {}
        }
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            if let State::Data { remaining } = self.state {
                let take = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                // `usize` is at most 64 bits on every supported target.
                let take_u64 = take as u64;
                let left = remaining - take_u64;
                self.payload_len = self.payload_len.saturating_add(take_u64);
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                let end = pos + take;
                return Ok((end, Some(Chunk::Data { start: pos, end })));
            }
            let b = rest[0];
            pos += 1;
            match self.step(b) {
                Ok(Step::Continue) => {}
                Ok(Step::Done) => {
                    self.state = State::Done;
                    return Ok((pos, Some(Chunk::Done)));
                }
                Err(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            }
        }
        Ok((input.len(), None))
    }

    /// Feeds one framing byte (any state but `Data`, `Done`, `Failed`).
    fn step(&mut self, b: u8) -> Result<Step, ChunkedError> {
        let max_ext = self.limits.max_extension;
        self.state = match self.state {
            State::SizeStart => match b {
                b'\r' | b';' => return Err(ChunkedError::MissingSize),
                b'\n' => return Err(ChunkedError::BareLf),
                _ => match hex_value(b) {
                    Some(value) => State::Size { digits: 1, value },
                    None => return Err(ChunkedError::InvalidSizeDigit),
                },
            },
            State::Size { digits, value } => match b {
                b'\r' => State::SizeLf { value },
                b'\n' => return Err(ChunkedError::BareLf),
                b';' | b' ' | b'\t' => {
                    let ext_len = 1;
                    if ext_len > max_ext {
                        return Err(ChunkedError::ExtensionTooLarge);
                    }
                    if b == b';' {
                        State::Ext { value, ext_len }
                    } else {
                        State::SizeBws { value, ext_len }
                    }
                }
                _ => {
                    let digit = hex_value(b).ok_or(ChunkedError::InvalidSizeDigit)?;
                    if digits >= MAX_SIZE_DIGITS {
                        return Err(ChunkedError::SizeTooLong);
                    }
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(digit))
                        .ok_or(ChunkedError::SizeTooLong)?;
                    State::Size {
                        digits: digits + 1,
                        value,
                    }
                }
            },
            State::SizeBws { value, ext_len } => {
                let ext_len = ext_len + 1;
                match b {
                    b'\n' => return Err(ChunkedError::BareLf),
                    b' ' | b'\t' | b';' if ext_len > max_ext => {
                        return Err(ChunkedError::ExtensionTooLarge);
                    }
                    b' ' | b'\t' => State::SizeBws { value, ext_len },
                    b';' => State::Ext { value, ext_len },
                    _ => return Err(ChunkedError::InvalidExtension),
                }
            }
            State::Ext { value, ext_len } => match b {
                b'\r' => State::SizeLf { value },
                b'\n' => return Err(ChunkedError::BareLf),
                _ if !is_text(b) => return Err(ChunkedError::InvalidExtension),
                _ => {
                    let ext_len = ext_len + 1;
                    if ext_len > max_ext {
                        return Err(ChunkedError::ExtensionTooLarge);
                    }
                    State::Ext { value, ext_len }
                }
            },
            State::SizeLf { value } => match b {
                b'\n' if value == 0 => State::TrailerLineStart,
                b'\n' => State::Data { remaining: value },
                _ => return Err(ChunkedError::BareCr),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                b'\n' => return Err(ChunkedError::BareLf),
                _ => return Err(ChunkedError::MissingDataCrlf),
            },
            State::DataLf => match b {
                b'\n' => State::SizeStart,
                _ => return Err(ChunkedError::BareCr),
            },
            State::TrailerLineStart => match b {
                b'\r' => State::FinalLf,
                b'\n' => return Err(ChunkedError::BareLf),
                _ if is_tchar(b) => {
                    self.push_trailer(b)?;
                    State::TrailerName
                }
                // Empty name, obs-fold (SP / HTAB), or a byte that is not a tchar.
                _ => return Err(ChunkedError::InvalidTrailer),
            },
            State::TrailerName => match b {
                b':' => {
                    self.push_trailer(b)?;
                    State::TrailerValue
                }
                b'\n' => return Err(ChunkedError::BareLf),
                _ if is_tchar(b) => {
                    self.push_trailer(b)?;
                    State::TrailerName
                }
                // Whitespace before the colon, a missing colon, or a non-tchar.
                _ => return Err(ChunkedError::InvalidTrailer),
            },
            State::TrailerValue => match b {
                b'\r' => {
                    self.push_trailer(b)?;
                    State::TrailerLf
                }
                b'\n' => return Err(ChunkedError::BareLf),
                _ if is_text(b) => {
                    self.push_trailer(b)?;
                    State::TrailerValue
                }
                _ => return Err(ChunkedError::InvalidTrailer),
            },
            State::TrailerLf => match b {
                b'\n' => {
                    self.push_trailer(b)?;
                    State::TrailerLineStart
                }
                _ => return Err(ChunkedError::BareCr),
            },
            State::FinalLf => match b {
                b'\n' => return Ok(Step::Done),
                _ => return Err(ChunkedError::BareCr),
            },
            // `decode` handles these states itself; reaching them here would be
            // a bug, reported as an error rather than a panic.
            State::Data { .. } | State::Done | State::Failed(_) => {
                return Err(ChunkedError::MissingDataCrlf);
            }
        };
        Ok(Step::Continue)
    }

    fn push_trailer(&mut self, b: u8) -> Result<(), ChunkedError> {
        if self.trailers.len() >= self.limits.max_trailers {
            return Err(ChunkedError::TrailersTooLarge);
        }
        self.trailers.push(b);
        Ok(())
    }

    /// Whether the whole body, trailer section included, was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer section's field lines as received (validated), each ending in CRLF, without the final empty line. Empty when there were none.
    ///
    /// Before [`Chunk::Done`] this holds the part received so far, which may
    /// end in the middle of a line.
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// Payload bytes decoded so far.
    pub fn payload_len(&self) -> u64 {
        self.payload_len
    }
}

/// Appends the chunk-size line for `len` payload bytes (lower-case hex, no extensions, CRLF) to `out`.
///
/// `len` 0 writes `0\r\n`, which is the start of the last chunk: use
/// [`encode_last_chunk`] or [`LAST_CHUNK`] to end a body, and skip empty
/// payload pieces.
pub fn encode_chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const WIDTH: usize = 2 * size_of::<usize>();
    let mut buf = [0u8; WIDTH];
    let mut start = WIDTH;
    let mut n = len;
    loop {
        start -= 1;
        buf[start] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[start..]);
    out.extend_from_slice(CHUNK_END);
}

/// The CRLF that closes a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk without trailers: `0\r\n\r\n`.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the last chunk with `trailers` (field lines each ending CRLF, as from `trailers()`) and the final CRLF.
///
/// `trailers` is written as given; it is not validated here.
pub fn encode_last_chunk(trailers: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(CHUNK_END);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What decoding a whole input gave.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Outcome {
        /// `Done` was reached after `consumed` bytes of the input.
        Complete {
            payload: Vec<u8>,
            trailers: Vec<u8>,
            consumed: usize,
        },
        /// The input ended before `Done`.
        Incomplete { payload: Vec<u8> },
        /// Decoding failed.
        Failed(ChunkedError),
    }

    /// Feeds `input` cut into the pieces delimited by `cuts` (sorted offsets).
    fn decode_split(input: &[u8], cuts: &[usize], limits: ChunkedLimits) -> Outcome {
        let mut dec = ChunkedDecoder::new(limits);
        let mut payload = Vec::new();
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(input.len());
        let mut base = 0;
        for &bound in &bounds {
            let seg = &input[base..bound];
            let mut off = 0;
            loop {
                match dec.decode(&seg[off..]) {
                    Err(e) => {
                        // Errors are sticky.
                        assert_eq!(dec.decode(b"0\r\n\r\n"), Err(e.clone()));
                        assert!(!dec.is_done());
                        return Outcome::Failed(e);
                    }
                    Ok((n, None)) => {
                        assert_eq!(off + n, seg.len(), "None must consume everything");
                        break;
                    }
                    Ok((n, Some(Chunk::Data { start, end }))) => {
                        assert!(start < end, "empty data event");
                        assert_eq!(end, n, "data must end the consumed bytes");
                        payload.extend_from_slice(&seg[off + start..off + end]);
                        off += n;
                        assert_eq!(dec.payload_len(), payload.len() as u64);
                    }
                    Ok((n, Some(Chunk::Done))) => {
                        assert!(dec.is_done());
                        assert_eq!(dec.payload_len(), payload.len() as u64);
                        // Done is idempotent and consumes nothing more.
                        assert_eq!(dec.decode(&seg[off + n..]), Ok((0, Some(Chunk::Done))));
                        return Outcome::Complete {
                            payload,
                            trailers: dec.trailers().to_vec(),
                            consumed: base + off + n,
                        };
                    }
                }
                if off == seg.len() {
                    // Nothing left: an empty call must be a no-op.
                    assert_eq!(dec.decode(&[]), Ok((0, None)));
                    break;
                }
            }
            base = bound;
        }
        assert!(!dec.is_done());
        Outcome::Incomplete { payload }
    }

    /// Decodes `input` fed all at once, one byte per call, and split in two at
    /// every position; asserts that every way gives the same outcome.
    fn decode_all_ways_with(input: &[u8], limits: ChunkedLimits) -> Outcome {
        let whole = decode_split(input, &[], limits);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            decode_split(input, &bytewise, limits),
            whole,
            "byte-at-a-time differs for {:?}",
            String::from_utf8_lossy(input)
        );
        for cut in 0..=input.len() {
            assert_eq!(
                decode_split(input, &[cut], limits),
                whole,
                "split at {cut} differs for {:?}",
                String::from_utf8_lossy(input)
            );
        }
        whole
    }

    fn decode_all_ways(input: &[u8]) -> Outcome {
        decode_all_ways_with(input, ChunkedLimits::default())
    }

    /// Asserts that `input` is a complete body with `payload` and `trailers`,
    /// and that `extra` bytes appended after it are left unconsumed.
    fn assert_accepts(input: &[u8], payload: &[u8], trailers: &[u8]) {
        let expected = Outcome::Complete {
            payload: payload.to_vec(),
            trailers: trailers.to_vec(),
            consumed: input.len(),
        };
        assert_eq!(decode_all_ways(input), expected);
        let mut with_next = input.to_vec();
        with_next.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(decode_all_ways(&with_next), expected);
    }

    fn assert_rejects(input: &[u8], err: ChunkedError) {
        assert_eq!(decode_all_ways(input), Outcome::Failed(err));
    }

    // ---- accepted bodies ----

    #[test]
    fn simple_body_decodes() {
        assert_accepts(b"4\r\nWiki\r\n0\r\n\r\n", b"Wiki", b"");
    }

    #[test]
    fn multiple_chunks_are_concatenated() {
        assert_accepts(
            b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n",
            b"Wikipedia in\r\n\r\nchunks.",
            b"",
        );
    }

    #[test]
    fn empty_body_is_only_the_last_chunk() {
        assert_accepts(b"0\r\n\r\n", b"", b"");
        assert_accepts(LAST_CHUNK, b"", b"");
    }

    #[test]
    fn lower_upper_and_mixed_case_hex_sizes_are_accepted() {
        let data = [b'x'; 0x1a];
        for size in ["1a", "1A", "01a", "001A"] {
            let mut body = format!("{size}\r\n").into_bytes();
            body.extend_from_slice(&data);
            body.extend_from_slice(b"\r\n0\r\n\r\n");
            assert_accepts(&body, &data, b"");
        }
        let data = [b'y'; 0xab];
        let mut body = b"aB\r\n".to_vec();
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_accepts(&body, &data, b"");
    }

    #[test]
    fn leading_zeros_up_to_sixteen_digits_are_accepted() {
        assert_accepts(
            b"0000000000000004\r\nWiki\r\n0000000000000000\r\n\r\n",
            b"Wiki",
            b"",
        );
    }

    #[test]
    fn sixteen_digit_size_of_small_value_is_accepted() {
        assert_accepts(
            b"000000000000000a\r\n0123456789\r\n0\r\n\r\n",
            b"0123456789",
            b"",
        );
    }

    #[test]
    fn last_chunk_may_have_several_zeros() {
        assert_accepts(b"000\r\n\r\n", b"", b"");
        assert_accepts(b"1\r\na\r\n00\r\n\r\n", b"a", b"");
    }

    #[test]
    fn extensions_are_accepted_and_discarded() {
        assert_accepts(b"4;a\r\nWiki\r\n0\r\n\r\n", b"Wiki", b"");
        assert_accepts(b"4;a=b;c=d\r\nWiki\r\n0;last\r\n\r\n", b"Wiki", b"");
        assert_accepts(
            b"4;name=\"quoted; \\\"value\\\" with spaces\"\r\nWiki\r\n0\r\n\r\n",
            b"Wiki",
            b"",
        );
        assert_accepts(b"4;a=\x80\xff\tz\r\nWiki\r\n0\r\n\r\n", b"Wiki", b"");
    }

    #[test]
    fn whitespace_before_semicolon_is_accepted() {
        assert_accepts(b"4 ;a\r\nWiki\r\n0\r\n\r\n", b"Wiki", b"");
        assert_accepts(b"4\t;a\r\nWiki\r\n0\t;a\r\n\r\n", b"Wiki", b"");
        assert_accepts(b"4 \t ; a = b\r\nWiki\r\n0\r\n\r\n", b"Wiki", b"");
    }

    #[test]
    fn extension_of_exactly_the_limit_is_accepted() {
        // ";" plus 4095 bytes = 4096 extension bytes.
        let mut body = b"1;".to_vec();
        body.extend(std::iter::repeat_n(b'a', 4095));
        body.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            decode_split(&body, &[], ChunkedLimits::default()),
            Outcome::Complete {
                payload: b"x".to_vec(),
                trailers: Vec::new(),
                consumed: body.len()
            }
        );
    }

    #[test]
    fn trailers_are_returned_without_the_final_empty_line() {
        assert_accepts(
            b"4\r\nWiki\r\n0\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\nX-Foo:bar\r\n\r\n",
            b"Wiki",
            b"Expires: Wed, 21 Oct 2015 07:28:00 GMT\r\nX-Foo:bar\r\n",
        );
    }

    #[test]
    fn trailer_names_may_use_every_tchar_and_values_may_be_empty_or_obs_text() {
        let name = b"!#$%&'*+-.^_`|~09azAZ";
        let mut body = b"0\r\n".to_vec();
        body.extend_from_slice(name);
        body.extend_from_slice(b": \t v\x80\xff \r\nX-Empty:\r\n\r\n");
        let mut trailers = name.to_vec();
        trailers.extend_from_slice(b": \t v\x80\xff \r\nX-Empty:\r\n");
        assert_accepts(&body, b"", &trailers);
    }

    #[test]
    fn trailers_of_exactly_the_limit_are_accepted() {
        let limits = ChunkedLimits {
            max_extension: 4096,
            max_trailers: 8,
        };
        // "A: 1234\r\n" is 9 bytes; "A:12345\r\n" also 9; "A:1234\r\n" is 8.
        let body = b"0\r\nA:1234\r\n\r\n";
        assert_eq!(
            decode_all_ways_with(body, limits),
            Outcome::Complete {
                payload: Vec::new(),
                trailers: b"A:1234\r\n".to_vec(),
                consumed: body.len()
            }
        );
        assert_eq!(
            decode_all_ways_with(b"0\r\nA:12345\r\n\r\n", limits),
            Outcome::Failed(ChunkedError::TrailersTooLarge)
        );
    }

    #[test]
    fn zero_trailer_limit_still_accepts_an_empty_trailer_section() {
        let limits = ChunkedLimits {
            max_extension: 0,
            max_trailers: 0,
        };
        assert_eq!(
            decode_all_ways_with(b"1\r\nz\r\n0\r\n\r\n", limits),
            Outcome::Complete {
                payload: b"z".to_vec(),
                trailers: Vec::new(),
                consumed: 11
            }
        );
        assert_eq!(
            decode_all_ways_with(b"1;\r\nz\r\n0\r\n\r\n", limits),
            Outcome::Failed(ChunkedError::ExtensionTooLarge)
        );
        assert_eq!(
            decode_all_ways_with(b"0\r\nA:b\r\n\r\n", limits),
            Outcome::Failed(ChunkedError::TrailersTooLarge)
        );
    }

    #[test]
    fn data_may_contain_cr_and_lf_bytes() {
        assert_accepts(
            b"6\r\n\r\n0\r\n\r\r\n4\r\n\n\n\r\r\r\n0\r\n\r\n",
            b"\r\n0\r\n\r\n\n\r\r",
            b"",
        );
        assert_accepts(b"3\r\n\0\x7f\xff\r\n0\r\n\r\n", b"\0\x7f\xff", b"");
    }

    #[test]
    fn bytes_after_done_are_not_consumed() {
        let input = b"3\r\nabc\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\r\n";
        let end = input.len() - b"GET / HTTP/1.1\r\n".len();
        assert_eq!(
            decode_all_ways(input),
            Outcome::Complete {
                payload: b"abc".to_vec(),
                trailers: b"T: v\r\n".to_vec(),
                consumed: end
            }
        );

        let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
        assert_eq!(
            dec.decode(b"0\r\n\r\n0\r\n\r\n"),
            Ok((5, Some(Chunk::Done)))
        );
        assert_eq!(dec.decode(b"0\r\n\r\n"), Ok((0, Some(Chunk::Done))));
        assert!(dec.is_done());
    }

    #[test]
    fn one_event_per_call_and_data_ranges_are_relative_to_the_call() {
        let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
        let input = b"2\r\nab\r\n3;x\r\ncde\r\n0\r\n\r\n";
        assert_eq!(
            dec.decode(input),
            Ok((5, Some(Chunk::Data { start: 3, end: 5 })))
        );
        let rest = &input[5..];
        assert_eq!(
            dec.decode(rest),
            Ok((10, Some(Chunk::Data { start: 7, end: 10 })))
        );
        assert_eq!(&rest[7..10], b"cde");
        assert_eq!(dec.decode(&rest[10..]), Ok((7, Some(Chunk::Done))));
        assert_eq!(dec.payload_len(), 5);
    }

    #[test]
    fn data_split_across_calls_yields_several_events() {
        let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
        assert_eq!(
            dec.decode(b"a\r\n0123"),
            Ok((7, Some(Chunk::Data { start: 3, end: 7 })))
        );
        assert_eq!(dec.decode(b""), Ok((0, None)));
        assert_eq!(
            dec.decode(b"456789\r"),
            Ok((6, Some(Chunk::Data { start: 0, end: 6 })))
        );
        assert_eq!(dec.decode(b"\r"), Ok((1, None)));
        assert_eq!(dec.decode(b"\n0\r\n\r"), Ok((5, None)));
        assert!(!dec.is_done());
        assert_eq!(dec.decode(b"\n"), Ok((1, Some(Chunk::Done))));
        assert_eq!(dec.payload_len(), 10);
    }

    #[test]
    fn largest_sixteen_digit_size_is_accepted_as_a_header() {
        for size in [&b"ffffffffffffffff"[..], b"FFFFFFFFFFFFFFFF"] {
            let mut input = size.to_vec();
            input.extend_from_slice(b"\r\nabc");
            assert_eq!(
                decode_all_ways(&input),
                Outcome::Incomplete {
                    payload: b"abc".to_vec()
                }
            );
            let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
            assert_eq!(
                dec.decode(&input),
                Ok((input.len(), Some(Chunk::Data { start: 18, end: 21 })))
            );
            assert_eq!(dec.payload_len(), 3);
            assert!(!dec.is_done());
        }
    }

    #[test]
    fn truncated_bodies_are_incomplete_not_done() {
        for input in [
            &b""[..],
            b"4",
            b"4\r",
            b"4\r\nWi",
            b"4\r\nWiki",
            b"4\r\nWiki\r",
            b"4\r\nWiki\r\n",
            b"4\r\nWiki\r\n0",
            b"4\r\nWiki\r\n0;e",
            b"4\r\nWiki\r\n0\r\n",
            b"4\r\nWiki\r\n0\r\nA",
            b"4\r\nWiki\r\n0\r\nA:b\r\n",
            b"4\r\nWiki\r\n0\r\n\r",
        ] {
            let payload = if input.len() > 3 {
                input[3..input.len().min(7)].to_vec()
            } else {
                Vec::new()
            };
            assert_eq!(decode_all_ways(input), Outcome::Incomplete { payload });
        }
    }

    // ---- rejected chunk-size lines ----

    #[test]
    fn empty_size_line_is_not_the_last_chunk() {
        assert_rejects(b"\r\n", ChunkedError::MissingSize);
        assert_rejects(b"\r\n\r\n", ChunkedError::MissingSize);
        // http-garden: an empty size line after a chunk.
        assert_rejects(b"4\r\nWiki\r\n\r\n", ChunkedError::MissingSize);
    }

    #[test]
    fn extension_without_size_is_missing_size() {
        assert_rejects(b";x\r\n", ChunkedError::MissingSize);
        assert_rejects(b";\r\n\r\n", ChunkedError::MissingSize);
        assert_rejects(b"4\r\nWiki\r\n;x\r\n\r\n", ChunkedError::MissingSize);
    }

    #[test]
    fn signs_and_leading_whitespace_are_invalid_size_digits() {
        assert_rejects(b"-0\r\n\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b"+4\r\nWiki\r\n0\r\n\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b" 4\r\nWiki\r\n0\r\n\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b"\t4\r\nWiki\r\n0\r\n\r\n", ChunkedError::InvalidSizeDigit);
    }

    #[test]
    fn non_hex_after_digits_is_an_invalid_size_digit() {
        assert_rejects(b"1these-bytes\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b"0x10\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b"4z\r\nWiki\r\n0\r\n\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b"4g\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b"4=\r\n", ChunkedError::InvalidSizeDigit);
        assert_rejects(b"4\0\r\n", ChunkedError::InvalidSizeDigit);
    }

    #[test]
    fn whitespace_after_size_without_semicolon_is_rejected() {
        assert_rejects(b"4 \r\nWiki\r\n0\r\n\r\n", ChunkedError::InvalidExtension);
        assert_rejects(b"4\t\r\nWiki\r\n0\r\n\r\n", ChunkedError::InvalidExtension);
        assert_rejects(b"4 5\r\n", ChunkedError::InvalidExtension);
        assert_rejects(b"0 \r\n\r\n", ChunkedError::InvalidExtension);
    }

    #[test]
    fn more_than_sixteen_digits_is_too_long() {
        assert_rejects(
            b"00000000000000001\r\nx\r\n0\r\n\r\n",
            ChunkedError::SizeTooLong,
        );
        assert_rejects(b"00000000000000000\r\n\r\n", ChunkedError::SizeTooLong);
    }

    #[test]
    fn size_overflowing_u64_is_too_long() {
        assert_rejects(b"ffffffffffffffff0\r\n", ChunkedError::SizeTooLong);
        assert_rejects(b"10000000000000000\r\n", ChunkedError::SizeTooLong);
    }

    #[test]
    fn lf_without_cr_after_size_is_bare_lf() {
        assert_rejects(b"4\nWiki\r\n0\r\n\r\n", ChunkedError::BareLf);
        assert_rejects(b"\n", ChunkedError::BareLf);
        assert_rejects(b"0\n\r\n", ChunkedError::BareLf);
        assert_rejects(b"4 \n", ChunkedError::BareLf);
    }

    #[test]
    fn cr_not_followed_by_lf_in_size_line_is_bare_cr() {
        assert_rejects(b"2\r\r;a\r\nab\r\n0\r\n\r\n", ChunkedError::BareCr);
        assert_rejects(b"1\r0\n", ChunkedError::BareCr);
        assert_rejects(b"0\r0\r\n\r\n", ChunkedError::BareCr);
    }

    // ---- rejected extensions ----

    #[test]
    fn lf_without_cr_in_extension_is_bare_lf() {
        assert_rejects(b"4;a\nb\r\nWiki\r\n0\r\n\r\n", ChunkedError::BareLf);
        assert_rejects(b"0;a\n\r\n", ChunkedError::BareLf);
    }

    #[test]
    fn cr_not_followed_by_lf_in_extension_is_bare_cr() {
        assert_rejects(b"4;a\rb\r\nWiki\r\n0\r\n\r\n", ChunkedError::BareCr);
        assert_rejects(b"0;a\r\r\n\r\n", ChunkedError::BareCr);
    }

    #[test]
    fn control_bytes_in_extension_are_invalid() {
        assert_rejects(
            b"4;a\0b\r\nWiki\r\n0\r\n\r\n",
            ChunkedError::InvalidExtension,
        );
        assert_rejects(
            b"4;a=\x01\r\nWiki\r\n0\r\n\r\n",
            ChunkedError::InvalidExtension,
        );
        assert_rejects(
            b"4;a=\x7f\r\nWiki\r\n0\r\n\r\n",
            ChunkedError::InvalidExtension,
        );
        assert_rejects(b"0;\x1b\r\n\r\n", ChunkedError::InvalidExtension);
        for b in (0u8..0x20).filter(|&b| b != b'\t' && b != b'\r' && b != b'\n') {
            let input = [b'1', b';', b, b'\r', b'\n', b'x', b'\r', b'\n'];
            assert_rejects(&input, ChunkedError::InvalidExtension);
        }
    }

    #[test]
    fn extension_over_the_limit_is_too_large() {
        // ";" plus 4096 bytes = 4097 extension bytes.
        let mut body = b"1;".to_vec();
        body.extend(std::iter::repeat_n(b'a', 4096));
        body.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            decode_split(&body, &[], ChunkedLimits::default()),
            Outcome::Failed(ChunkedError::ExtensionTooLarge)
        );
        let bytewise: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            decode_split(&body, &bytewise, ChunkedLimits::default()),
            Outcome::Failed(ChunkedError::ExtensionTooLarge)
        );
        // Every split point, with a small limit to keep the test fast.
        let limits = ChunkedLimits {
            max_extension: 4,
            max_trailers: 16384,
        };
        assert_eq!(
            decode_all_ways_with(b"1;abc\r\nx\r\n0\r\n\r\n", limits),
            Outcome::Complete {
                payload: b"x".to_vec(),
                trailers: Vec::new(),
                consumed: 15
            }
        );
        assert_eq!(
            decode_all_ways_with(b"1;abcd\r\nx\r\n0\r\n\r\n", limits),
            Outcome::Failed(ChunkedError::ExtensionTooLarge)
        );
    }

    #[test]
    fn whitespace_before_semicolon_counts_against_the_extension_limit() {
        let limits = ChunkedLimits {
            max_extension: 4,
            max_trailers: 16384,
        };
        assert_eq!(
            decode_all_ways_with(b"1   ;\r\nx\r\n0\r\n\r\n", limits),
            Outcome::Complete {
                payload: b"x".to_vec(),
                trailers: Vec::new(),
                consumed: 15
            }
        );
        assert_eq!(
            decode_all_ways_with(b"1    ;\r\nx\r\n0\r\n\r\n", limits),
            Outcome::Failed(ChunkedError::ExtensionTooLarge)
        );
        let mut endless_bws = b"1".to_vec();
        endless_bws.extend(std::iter::repeat_n(b' ', 5000));
        assert_eq!(
            decode_split(&endless_bws, &[], ChunkedLimits::default()),
            Outcome::Failed(ChunkedError::ExtensionTooLarge)
        );
    }

    // ---- rejected data framing ----

    #[test]
    fn lf_without_cr_after_data_is_bare_lf() {
        // http-garden transducer bug 13.
        assert_rejects(b"a\r\n0123456789\n0\r\n\r\n", ChunkedError::BareLf);
        assert_rejects(b"1\r\na\n", ChunkedError::BareLf);
    }

    #[test]
    fn data_longer_than_its_size_is_missing_data_crlf() {
        assert_rejects(b"1\r\na0\r\n", ChunkedError::MissingDataCrlf);
        assert_rejects(b"4\r\nWikiXX\r\n0\r\n\r\n", ChunkedError::MissingDataCrlf);
        assert_rejects(b"4\r\nWiki0\r\n\r\n", ChunkedError::MissingDataCrlf);
    }

    #[test]
    fn cr_not_followed_by_lf_after_data_is_bare_cr() {
        assert_rejects(b"1\r\na\rX", ChunkedError::BareCr);
        assert_rejects(b"1\r\na\r\r\n0\r\n\r\n", ChunkedError::BareCr);
    }

    // ---- rejected trailers ----

    #[test]
    fn trailer_with_whitespace_before_colon_is_invalid() {
        assert_rejects(b"0\r\nX-Foo : bar\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\nX-Foo\t: bar\r\n\r\n", ChunkedError::InvalidTrailer);
    }

    #[test]
    fn trailer_obs_fold_is_invalid() {
        assert_rejects(
            b"0\r\nX-Foo: bar\r\n baz\r\n\r\n",
            ChunkedError::InvalidTrailer,
        );
        assert_rejects(
            b"0\r\nX-Foo: bar\r\n\tbaz\r\n\r\n",
            ChunkedError::InvalidTrailer,
        );
        assert_rejects(b"0\r\n X-Foo: bar\r\n\r\n", ChunkedError::InvalidTrailer);
    }

    #[test]
    fn trailer_without_colon_is_invalid() {
        assert_rejects(b"0\r\nX-Foo\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\nX-Foo bar\r\n\r\n", ChunkedError::InvalidTrailer);
    }

    #[test]
    fn trailer_with_empty_or_non_token_name_is_invalid() {
        assert_rejects(b"0\r\n: bar\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\nX(Foo): bar\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\n\"X\": bar\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\nX\xffFoo: bar\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\n\0: bar\r\n\r\n", ChunkedError::InvalidTrailer);
    }

    #[test]
    fn trailer_value_with_control_bytes_is_invalid() {
        assert_rejects(b"0\r\nX: a\0b\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\nX: a\x01\r\n\r\n", ChunkedError::InvalidTrailer);
        assert_rejects(b"0\r\nX: a\x7f\r\n\r\n", ChunkedError::InvalidTrailer);
    }

    #[test]
    fn trailer_line_endings_must_be_crlf() {
        assert_rejects(b"0\r\nX: a\n\r\n", ChunkedError::BareLf);
        assert_rejects(b"0\r\nX\n", ChunkedError::BareLf);
        assert_rejects(b"0\r\n\n", ChunkedError::BareLf);
        assert_rejects(b"0\r\nX: a\r\n\n", ChunkedError::BareLf);
        assert_rejects(b"0\r\nX: a\rb\r\n\r\n", ChunkedError::BareCr);
        assert_rejects(b"0\r\n\rX", ChunkedError::BareCr);
        assert_rejects(b"0\r\nX: a\r\n\r\r\n", ChunkedError::BareCr);
    }

    #[test]
    fn trailers_over_the_limit_are_too_large() {
        let mut body = b"0\r\n".to_vec();
        while body.len() < 16384 + 3 {
            body.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        body.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_split(&body, &[], ChunkedLimits::default()),
            Outcome::Failed(ChunkedError::TrailersTooLarge)
        );
        let bytewise: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            decode_split(&body, &bytewise, ChunkedLimits::default()),
            Outcome::Failed(ChunkedError::TrailersTooLarge)
        );
        let limits = ChunkedLimits {
            max_extension: 4096,
            max_trailers: 10,
        };
        assert_eq!(
            decode_all_ways_with(b"0\r\nA: b\r\nC: dd\r\n\r\n", limits),
            Outcome::Failed(ChunkedError::TrailersTooLarge)
        );
    }

    // ---- decoder behaviour ----

    #[test]
    fn errors_are_sticky() {
        let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
        assert_eq!(dec.decode(b"\r\n"), Err(ChunkedError::MissingSize));
        assert_eq!(dec.decode(b"0\r\n\r\n"), Err(ChunkedError::MissingSize));
        assert_eq!(dec.decode(b""), Err(ChunkedError::MissingSize));
        assert!(!dec.is_done());
    }

    #[test]
    fn no_allocation_without_trailers() {
        let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
        let input = b"5;ext=1\r\nhello\r\n0\r\n\r\n";
        let mut off = 0;
        while !dec.is_done() {
            let (n, _) = dec.decode(&input[off..]).expect("valid body");
            off += n;
        }
        assert_eq!(dec.trailers.capacity(), 0);
    }

    #[test]
    fn error_labels_and_messages_are_distinct_and_lower_case() {
        let all = [
            ChunkedError::MissingSize,
            ChunkedError::InvalidSizeDigit,
            ChunkedError::SizeTooLong,
            ChunkedError::InvalidExtension,
            ChunkedError::ExtensionTooLarge,
            ChunkedError::BareLf,
            ChunkedError::BareCr,
            ChunkedError::MissingDataCrlf,
            ChunkedError::InvalidTrailer,
            ChunkedError::TrailersTooLarge,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(ChunkedError::as_str).collect();
        let messages: std::collections::HashSet<_> = all.iter().map(|e| e.to_string()).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(messages.len(), all.len());
        for label in labels {
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        for message in messages {
            assert_eq!(message, message.to_lowercase());
        }
        assert_eq!(ChunkedError::MissingSize.as_str(), "chunk_size_missing");
    }

    // ---- encoder ----

    #[test]
    fn chunk_header_is_lower_case_hex_and_crlf() {
        let cases: [(usize, &[u8]); 6] = [
            (0, b"0\r\n"),
            (1, b"1\r\n"),
            (10, b"a\r\n"),
            (255, b"ff\r\n"),
            (0x1234abcd, b"1234abcd\r\n"),
            (usize::MAX, b"ffffffffffffffff\r\n"),
        ];
        for (len, expected) in cases {
            if len == usize::MAX && size_of::<usize>() != 8 {
                continue;
            }
            let mut out = b"prefix".to_vec();
            encode_chunk_header(len, &mut out);
            assert_eq!(&out[6..], expected, "len {len}");
        }
    }

    #[test]
    fn last_chunk_encoding() {
        let mut out = Vec::new();
        encode_last_chunk(b"", &mut out);
        assert_eq!(out, LAST_CHUNK);
        out.clear();
        encode_last_chunk(b"A: b\r\nC: d\r\n", &mut out);
        assert_eq!(out, b"0\r\nA: b\r\nC: d\r\n\r\n");
    }

    fn encode_body(pieces: &[&[u8]], trailers: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces.iter().filter(|p| !p.is_empty()) {
            encode_chunk_header(piece.len(), &mut out);
            out.extend_from_slice(piece);
            out.extend_from_slice(CHUNK_END);
        }
        encode_last_chunk(trailers, &mut out);
        out
    }

    #[test]
    fn encoded_bodies_decode_back_exactly() {
        let big = vec![0xa5u8; 4000];
        let cases: [(&[&[u8]], &[u8]); 5] = [
            (&[], b""),
            (&[b"hello"], b""),
            (&[b"hello", b" ", b"world\r\n0\r\n\r\n"], b""),
            (&[b"abc", &big, b"", b"z"], b"X-Checksum: 1234\r\n"),
            (&[b"\r\n"], b"A: b\r\nC:\r\nE:  f g \r\n"),
        ];
        for (pieces, trailers) in cases {
            let body = encode_body(pieces, trailers);
            let payload = pieces.concat();
            let expected = Outcome::Complete {
                payload: payload.clone(),
                trailers: trailers.to_vec(),
                consumed: body.len(),
            };
            if body.len() < 200 {
                assert_eq!(decode_all_ways(&body), expected);
            } else {
                let bytewise: Vec<usize> = (1..body.len()).collect();
                assert_eq!(decode_split(&body, &[], ChunkedLimits::default()), expected);
                assert_eq!(
                    decode_split(&body, &bytewise, ChunkedLimits::default()),
                    expected
                );
            }
            // The trailers a decoder returns re-encode to the same section.
            if let Outcome::Complete { trailers: got, .. } =
                decode_split(&body, &[], ChunkedLimits::default())
            {
                let mut again = Vec::new();
                encode_last_chunk(&got, &mut again);
                assert!(body.ends_with(&again));
            }
        }
    }

    // ---- property-style tests ----

    /// Deterministic xorshift64 generator.
    struct XorShift(u64);

    impl XorShift {
        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// A value in `0..n` (`n` > 0).
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        /// Sorted cut points splitting `len` bytes into random pieces.
        fn cuts(&mut self, len: usize) -> Vec<usize> {
            if len == 0 {
                return Vec::new();
            }
            let count = self.below(8);
            let mut cuts: Vec<usize> = (0..count).map(|_| self.below(len + 1)).collect();
            cuts.sort_unstable();
            cuts
        }
    }

    #[test]
    fn random_encodings_round_trip_under_random_feeding() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let len = rng.below(600);
            let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let max_chunk = 1 + rng.below(300);
            let mut body = Vec::new();
            let mut off = 0;
            while off < payload.len() {
                let n = (1 + rng.below(max_chunk)).min(payload.len() - off);
                encode_chunk_header(n, &mut body);
                body.extend_from_slice(&payload[off..off + n]);
                body.extend_from_slice(CHUNK_END);
                off += n;
            }
            let trailers: &[u8] = match rng.below(3) {
                0 => b"",
                1 => b"X-Sum: 42\r\n",
                _ => b"A: 1\r\nB-c:\t2 3\r\n",
            };
            encode_last_chunk(trailers, &mut body);
            let end = body.len();
            body.extend_from_slice(b"NEXT");
            let cuts = rng.cuts(body.len());
            assert_eq!(
                decode_split(&body, &cuts, ChunkedLimits::default()),
                Outcome::Complete {
                    payload,
                    trailers: trailers.to_vec(),
                    consumed: end
                },
                "cuts {cuts:?}"
            );
        }
    }

    #[test]
    fn random_corruptions_never_panic_and_ignore_feeding() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let alphabet = b"0123456789abcdefABCDEFxX;= \t\r\n:\"\0\x7f\x80-";
        for _ in 0..2000 {
            let mut body = encode_body(&[b"abc", b"\r\n", b"hello"], b"A: b\r\n");
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(body.len());
                match rng.below(3) {
                    0 => body[i] = alphabet[rng.below(alphabet.len())],
                    1 => body.insert(i, alphabet[rng.below(alphabet.len())]),
                    _ => {
                        body.remove(i);
                    }
                }
            }
            let _ = decode_all_ways(&body);
        }
    }
}
