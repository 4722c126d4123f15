//! Every bound on input that reaches the control side, in one place: how
//! much text is read, how large a parsed document may grow, and how much of
//! an operator's own text an error message quotes back.
//!
//! These bounds exist so that no input (a config file, a `PUT` body, an
//! endpoints file written by another tool) can take the proxy down or stall
//! it: the same limits apply to `ringmesh validate`, `ringmesh run`, SIGHUP,
//! `PUT /config`, endpoints files and `PUT /clusters/{name}/endpoints`.

use std::io::Read;
use std::path::Path;

/// Largest config or endpoints file read (16 MiB): far above any real
/// document (100,000 endpoints take about 3 MiB), small enough that a
/// runaway writer or `-c /dev/zero` cannot exhaust memory.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Largest admin API request body (2 MiB).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// Deepest nesting of lists and mappings in a YAML document, aliases
/// expanded. Real configs nest about 6 deep.
pub const MAX_DEPTH: usize = 64;

/// Most values (scalars, lists, mappings) in one YAML document, each alias
/// counted as every value it stands for. Bounds the work of decoding an
/// alias bomb ("billion laughs") as well as the memory of a huge file;
/// 100,000 endpoints with metadata are about 1.1 million values.
pub const MAX_NODES: usize = 2_000_000;

/// Most errors reported for one document; the rest are counted
/// ("... and N more errors").
pub const MAX_ERRORS: usize = 100;

/// Longest piece of input quoted in an error message, in bytes.
pub const MAX_QUOTED: usize = 64;

/// Longest error message, in bytes (after quoting).
pub const MAX_MESSAGE: usize = 512;

/// Why a file could not be read as text.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// More than the limit.
    #[error("{path} is larger than {} MiB; refusing to load it", MAX_FILE_BYTES >> 20)]
    TooLarge {
        /// The file.
        path: String,
    },
    /// Not UTF-8.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: String,
    },
}

/// Reads at most [`MAX_FILE_BYTES`] of `path` as UTF-8; a longer file (or
/// a device that never ends) is refused without reading further.
pub fn read_text_file(path: &Path) -> Result<String, ReadError> {
    let shown = path.display().to_string();
    let io = |source| ReadError::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge { path: shown });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText { path: shown })
}

/// `text` as quoted in an error message: whole when short, otherwise its
/// first [`MAX_QUOTED`] bytes (on a character boundary) and its length.
pub fn quote(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_QUOTED {
        return std::borrow::Cow::Borrowed(text);
    }
    let head = &text[..floor_char_boundary(text, MAX_QUOTED)];
    std::borrow::Cow::Owned(format!("{head}... ({} bytes)", text.len()))
}

/// Cuts `message` to [`MAX_MESSAGE`] bytes (a last defence for messages
/// that quote input without [`quote`]).
pub fn cap_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        message.truncate(floor_char_boundary(&message, MAX_MESSAGE));
        message.push_str("...");
    }
    message
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole() {
        assert_eq!(quote("db-primary"), "db-primary");
    }

    #[test]
    fn long_text_is_cut_with_its_length() {
        let long = "x".repeat(10 << 20);
        let q = quote(&long);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("... (10485760 bytes)"), "{q}");
    }

    #[test]
    fn quoting_never_splits_a_character() {
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.starts_with("éé"), "{q}");
        let m = cap_message("ü".repeat(1000));
        assert!(m.len() <= MAX_MESSAGE + 3, "{}", m.len());
    }

    #[test]
    fn an_endless_file_is_refused_after_the_limit() {
        let err = read_text_file(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_binary_file_is_not_text() {
        let dir = std::env::temp_dir().join(format!("ringmesh-limits-{}", std::process::id()));
        std::fs::write(&dir, [0xff, 0xfe, 0x00]).unwrap();
        let err = read_text_file(&dir).unwrap_err();
        std::fs::remove_file(&dir).ok();
        assert!(matches!(err, ReadError::NotText { .. }), "{err}");
    }
}
