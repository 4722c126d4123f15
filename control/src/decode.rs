//! Turning marked YAML nodes into typed values while collecting every error.
//!
//! serde's derive stops at the first problem; an operator fixing a config
//! wants all of them at once, each with file:line:col and the key path
//! (`clusters[1].connect_timeout`). So each resource decodes its fields with
//! [`Fields`], which also reports keys nobody asked for, and every scalar
//! parser here records an error and returns `None` instead of stopping.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::limits::{MAX_ERRORS, cap_message, quote};
use crate::yaml::{Mark, Node, Value};

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// File (or `<PUT /config>` for the admin API).
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// Path of the offending key, e.g. `listeners[0].listen`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration, in source order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one source file: the first [`MAX_ERRORS`], and a
/// count of the rest, so that a document of a million bad keys costs a
/// short answer, not a 12 MB one.
pub(crate) struct Decoder {
    file: String,
    errors: Vec<ConfigError>,
    more: usize,
}

impl Decoder {
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            errors: Vec::new(),
            more: 0,
        }
    }

    /// Records an error at `mark` for the key at `path`.
    pub(crate) fn error(&mut self, mark: Mark, path: &str, message: impl Into<String>) {
        if self.errors.len() >= MAX_ERRORS {
            self.more += 1;
            return;
        }
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: mark.line,
            column: mark.col,
            path: cap_message(path.to_owned()),
            message: cap_message(message.into()),
        });
    }

    /// `Ok(value)` when nothing was reported, else every error sorted by position.
    pub(crate) fn finish<T>(mut self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            if self.more > 0 {
                let last = self.errors.last().map(|e| (e.line, e.column));
                let (line, column) = last.unwrap_or((1, 1));
                self.errors.push(ConfigError {
                    file: self.file.clone(),
                    line,
                    column,
                    path: String::new(),
                    message: format!(
                        "... and {} more errors (the first {MAX_ERRORS} are listed)",
                        self.more
                    ),
                });
            }
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Joins a parent path and a key.
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The fields of one mapping, taken one by one; whatever is left over when
/// [`Fields::finish`] runs is an unknown key. Opening a mapping is linear in
/// its keys (duplicates are found with a hash set), and each `take` scans
/// them once: decoders take a fixed handful of keys.
pub(crate) struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
    used: Vec<bool>,
    path: String,
}

impl<'n> Fields<'n> {
    /// Opens `node` as a mapping. A null node (`admin:` with nothing after
    /// it) is an empty mapping.
    pub(crate) fn of(d: &mut Decoder, node: &'n Node, path: &str) -> Option<Self> {
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => {
                return Some(Fields {
                    entries: Vec::new(),
                    used: Vec::new(),
                    path: path.to_owned(),
                });
            }
            _ => {
                d.error(
                    node.mark,
                    path,
                    format!("expected a mapping, found {}", node.kind()),
                );
                return None;
            }
        };
        let mut out: Vec<(&'n str, &'n Node, &'n Node)> = Vec::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for (k, v) in entries.iter() {
            match &k.value {
                Value::Scalar { text, .. } => {
                    if !seen.insert(text.as_str()) {
                        d.error(k.mark, &child(path, &quote(text)), "duplicate key");
                        continue;
                    }
                    out.push((text.as_str(), k, v));
                }
                _ => d.error(
                    k.mark,
                    path,
                    format!("keys must be strings, found {}", k.kind()),
                ),
            }
        }
        Some(Fields {
            used: vec![false; out.len()],
            entries: out,
            path: path.to_owned(),
        })
    }

    /// Takes field `key`, returning its value and path.
    pub(crate) fn take(&mut self, key: &str) -> Option<(&'n Node, String)> {
        let i = self.entries.iter().position(|(k, _, _)| *k == key)?;
        self.used[i] = true;
        Some((self.entries[i].2, child(&self.path, key)))
    }

    /// Takes every field not taken yet (a mapping of user-chosen keys),
    /// with its key, value and path.
    pub(crate) fn take_all(&mut self) -> Vec<(String, &'n Node, String)> {
        let mut out = Vec::new();
        for (i, (key, _, value)) in self.entries.iter().enumerate() {
            if !self.used[i] {
                self.used[i] = true;
                out.push(((*key).to_owned(), *value, child(&self.path, key)));
            }
        }
        out
    }

    /// Reports every key that was not taken.
    pub(crate) fn finish(self, d: &mut Decoder, known: &[&str]) {
        for (i, (key, key_node, _)) in self.entries.iter().enumerate() {
            if !self.used[i] {
                let key = quote(key);
                d.error(
                    key_node.mark,
                    &child(&self.path, &key),
                    format!(
                        "unknown key `{key}` (expected one of: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
}

/// Takes field `key` of `f` (the mapping `node` at `path`), reporting it
/// missing when it is absent.
pub(crate) fn required<'n>(
    d: &mut Decoder,
    f: &mut Fields<'n>,
    node: &Node,
    path: &str,
    key: &str,
) -> Option<(&'n Node, String)> {
    let found = f.take(key);
    if found.is_none() {
        d.error(node.mark, path, format!("missing required key `{key}`"));
    }
    found
}

/// The text of a scalar node, or an error.
pub(crate) fn scalar<'n>(
    d: &mut Decoder,
    node: &'n Node,
    path: &str,
    expected: &str,
) -> Option<&'n str> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text),
        _ => {
            d.error(
                node.mark,
                path,
                format!("expected {expected}, found {}", node.kind()),
            );
            None
        }
    }
}

/// The items of a list node, or an error.
pub(crate) fn list<'n>(d: &mut Decoder, node: &'n Node, path: &str) -> Option<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Some(&items[..]),
        Value::Null => Some(&[]),
        _ => {
            d.error(
                node.mark,
                path,
                format!("expected a list, found {}", node.kind()),
            );
            None
        }
    }
}

/// The items of a list node, each decoded by `decode` at its own path
/// (`path[i]`); items that fail are left out (their errors are recorded).
/// `None` when the node is not a list.
pub(crate) fn list_of<T>(
    d: &mut Decoder,
    node: &Node,
    path: &str,
    mut decode: impl FnMut(&mut Decoder, &Node, &str) -> Option<T>,
) -> Option<Vec<T>> {
    let items = list(d, node, path)?;
    Some(
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| decode(d, item, &format!("{path}[{i}]")))
            .collect(),
    )
}

/// [`list_of`] for an optional field (as taken from [`Fields`]); an absent
/// field or a non-list is an empty list (the latter with its error).
pub(crate) fn list_field<T>(
    d: &mut Decoder,
    field: Option<(&Node, String)>,
    decode: impl FnMut(&mut Decoder, &Node, &str) -> Option<T>,
) -> Vec<T> {
    field
        .and_then(|(node, path)| list_of(d, node, &path, decode))
        .unwrap_or_default()
}

/// A name usable as a metric label: 1-64 of `[A-Za-z0-9_.-]`.
pub(crate) fn name(d: &mut Decoder, node: &Node, path: &str) -> Option<String> {
    let text = scalar(d, node, path, "a name")?;
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Some(text.to_owned())
    } else {
        d.error(
            node.mark,
            path,
            format!(
                "invalid name `{}`: use 1-64 letters, digits, `_`, `-` or `.`",
                quote(text)
            ),
        );
        None
    }
}

/// `true` or `false`.
pub(crate) fn boolean(d: &mut Decoder, node: &Node, path: &str) -> Option<bool> {
    match scalar(d, node, path, "true or false")? {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            d.error(
                node.mark,
                path,
                format!("expected true or false, found `{}`", quote(other)),
            );
            None
        }
    }
}

/// An integer within `min..=max`.
pub(crate) fn integer(d: &mut Decoder, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    let text = scalar(d, node, path, "an integer")?;
    match text.replace('_', "").parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Some(v),
        Ok(v) => {
            d.error(
                node.mark,
                path,
                format!("{v} is out of range: must be between {min} and {max}"),
            );
            None
        }
        Err(_) => {
            d.error(
                node.mark,
                path,
                format!("expected an integer, found `{}`", quote(text)),
            );
            None
        }
    }
}

/// A duration such as `250ms`, `5s`, `1m30s` or `1h`, within `min..=max`.
pub(crate) fn duration(
    d: &mut Decoder,
    node: &Node,
    path: &str,
    min: Duration,
    max: Duration,
) -> Option<Duration> {
    let text = scalar(d, node, path, "a duration")?;
    match parse_duration(text) {
        Some(v) if v >= min && v <= max => Some(v),
        Some(_) => {
            d.error(
                node.mark,
                path,
                format!(
                    "duration `{text}` is out of range: must be between {} and {}",
                    format_duration(min),
                    format_duration(max)
                ),
            );
            None
        }
        None => {
            d.error(
                node.mark,
                path,
                format!("invalid duration `{}`: write a number and a unit (ms, s, m, h), e.g. 250ms, 5s, 1m30s", quote(text)),
            );
            None
        }
    }
}

/// Parses `250ms`, `5s`, `1.5s`, `1m30s`, `1h`, `100us`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_secs = match &rest[..unit_len] {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * unit_secs).ok()?;
    }
    Some(total)
}

/// Formats a duration the way it would be written in the config.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() % 1_000_000 != 0 {
        format!("{}us", d.as_micros())
    } else if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A listening address: an IP literal and a port (`127.0.0.1:8080`, `[::1]:8080`).
pub(crate) fn listen_addr(d: &mut Decoder, node: &Node, path: &str) -> Option<SocketAddr> {
    let text = scalar(d, node, path, "an address")?;
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            d.error(
                node.mark,
                path,
                format!("invalid listen address `{}`: expected IP:port, e.g. 127.0.0.1:8080 or [::1]:8080", quote(text)),
            );
            None
        }
    }
}

/// An upstream address: `host:port` where host is an IP literal or a DNS name.
pub(crate) fn host_port(d: &mut Decoder, node: &Node, path: &str) -> Option<(String, u16)> {
    let text = scalar(d, node, path, "host:port")?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            d.error(
                node.mark,
                path,
                format!("invalid endpoint `{}`: port must be 1-65535", quote(text)),
            );
            return None;
        }
        return Some((addr.ip().to_string(), addr.port()));
    }
    let bad = |d: &mut Decoder, why: &str| {
        d.error(
            node.mark,
            path,
            format!("invalid endpoint `{}`: {why} (expected host:port, e.g. 127.0.0.1:5432, [::1]:5432 or db.local:5432)", quote(text)),
        );
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        bad(d, "missing port");
        return None;
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            bad(d, "port must be 1-65535");
            return None;
        }
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_host {
        bad(d, "invalid host name");
        return None;
    }
    Some((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100us"), Some(Duration::from_micros(100)));
    }

    #[test]
    fn durations_without_a_unit_are_rejected() {
        for bad in ["", "5", "s", "5 seconds", "-1s", "1x"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_format_back_to_their_shortest_form() {
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }
}
