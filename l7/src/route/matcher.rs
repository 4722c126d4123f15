//! What a route's `match` checks, and the view of a request it checks:
//! host (exact, `*.suffix`, any; port only when given), one path condition,
//! methods, header and query conditions. Every condition must hold.
//!
//! This module decides whether one route matches; which routes are tried
//! at all for a request is the index's job (`index.rs`).

use regex::bytes::{Regex, RegexBuilder};

use crate::codec::h1::{Field, RequestHead};

/// Longest regex pattern accepted, in bytes.
pub const MAX_REGEX_LEN: usize = 1024;
/// Largest compiled regex program, in bytes (the `regex` crate's size
/// limit; matching stays linear in the input whatever the pattern).
pub const MAX_REGEX_PROGRAM: usize = 64 * 1024;

/// Why a regex was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegexError {
    /// The pattern text is too long.
    #[error("regex is {len} bytes, longer than the {MAX_REGEX_LEN}-byte limit")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The pattern does not parse or compiles to more than the limit.
    #[error("{0}")]
    Invalid(String),
}

/// Compiles `pattern` with the size limits; `whole` anchors it at both
/// ends (a match must cover the whole input).
pub fn compile_regex(pattern: &str, whole: bool) -> Result<Regex, RegexError> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(RegexError::TooLong { len: pattern.len() });
    }
    let text = if whole {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_owned()
    };
    RegexBuilder::new(&text)
        .size_limit(MAX_REGEX_PROGRAM)
        .dfa_size_limit(MAX_REGEX_PROGRAM * 4)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => RegexError::Invalid(format!(
                "regex compiles to more than {limit} bytes; simplify it (bounded repetitions like {{1000}} multiply its size)"
            )),
            other => RegexError::Invalid(other.to_string().replace('\n', " ")),
        })
}

/// The parts of a request that routes look at, borrowed from the
/// connection's buffer (no copy).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The authority: the target's for an absolute-form target (RFC 9112
    /// §3.2.2), else the `Host` value; empty when there is none.
    pub host: &'a [u8],
    /// The path: the target up to `?`.
    pub path: &'a [u8],
    /// The query: after `?`, without it; empty when there is none.
    pub query: &'a [u8],
    /// The method token.
    pub method: &'a [u8],
    /// The buffer the fields' spans point into.
    pub buf: &'a [u8],
    /// The header fields.
    pub fields: &'a [Field],
}

impl<'a> RequestView<'a> {
    /// The view of the request `head` read into `buf`.
    pub fn new(buf: &'a [u8], head: &RequestHead, fields: &'a [Field]) -> Self {
        let target = head.target.get(buf);
        let host_field = head.host.map(|h| h.get(buf)).unwrap_or_default();
        let (host, rest) = split_target(target, host_field);
        let (path, query) = match rest.iter().position(|&b| b == b'?') {
            Some(q) => (&rest[..q], &rest[q + 1..]),
            None => (rest, &[][..]),
        };
        // `http://host?q` has an empty path: it means `/`.
        let path: &[u8] = if path.is_empty() { b"/" } else { path };
        RequestView {
            host,
            path,
            query,
            method: head.method_span.get(buf),
            buf,
            fields,
        }
    }

    /// Values of the header fields named `name` (lowercase).
    fn header_values(&self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.fields
            .iter()
            .filter(move |f| f.name.get(buf).eq_ignore_ascii_case(name))
            .map(move |f| f.value.get(buf))
    }

    /// Values of the query parameters named `name` (as sent).
    fn query_values(&self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.query.split(|&b| b == b'&').filter_map(move |pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &[][..]),
            };
            (k == name).then_some(v)
        })
    }
}

/// Splits a request target into (authority, path and query): absolute form
/// (`http://host/p?q`) carries its own authority; origin form takes `Host`.
fn split_target<'a>(target: &'a [u8], host_field: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    if target.first() == Some(&b'/') || target == b"*" {
        return (host_field, target);
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return (host_field, target);
    };
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    (&rest[..end], &rest[end..])
}

/// Splits an authority into its host name and port (IPv6 literals keep
/// their brackets).
pub fn split_port(authority: &[u8]) -> (&[u8], Option<u16>) {
    let colon = if authority.first() == Some(&b'[') {
        authority
            .iter()
            .position(|&b| b == b']')
            .and_then(|close| (authority.get(close + 1) == Some(&b':')).then_some(close + 1))
    } else {
        authority.iter().rposition(|&b| b == b':')
    };
    match colon {
        Some(c) => {
            let port = std::str::from_utf8(&authority[c + 1..])
                .ok()
                .and_then(|p| p.parse().ok());
            (&authority[..c], port)
        }
        None => (authority, None),
    }
}

/// One host pattern of a `match.host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// A name (lowercase), on any port or on the one given.
    Exact {
        /// Host name, lowercase, IPv6 literals in brackets.
        name: Box<[u8]>,
        /// Port, when the pattern names one.
        port: Option<u16>,
    },
    /// `*.example.com`: names ending in `.example.com`.
    Suffix {
        /// The suffix with its leading dot, lowercase.
        suffix: Box<[u8]>,
        /// Port, when the pattern names one.
        port: Option<u16>,
    },
}

impl HostPattern {
    /// Parses a pattern as written in config (`*`, `*.a.com`, `a.com`,
    /// `a.com:8080`, `[::1]:80`).
    pub fn parse(text: &str) -> Option<HostPattern> {
        if text == "*" {
            return Some(HostPattern::Any);
        }
        let lower = text.to_ascii_lowercase();
        let (name, port) = split_port(lower.as_bytes());
        // `a.com.` is `a.com` (requests are compared without the dot too).
        let name = match name.strip_suffix(b".") {
            Some(n) if !n.is_empty() => n,
            _ => name,
        };
        if name.contains(&b':') && !lower.starts_with('[') {
            return None;
        }
        let valid = |s: &[u8]| {
            !s.is_empty()
                && s.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
        };
        let port_ok = match lower.as_bytes().get(name.len()) {
            Some(b':') => port.is_some_and(|p| p > 0),
            _ => true,
        };
        if !port_ok {
            return None;
        }
        if let Some(suffix) = name.strip_prefix(b"*") {
            if suffix.first() != Some(&b'.') || !valid(&suffix[1..]) || suffix.contains(&b'*') {
                return None;
            }
            return Some(HostPattern::Suffix {
                suffix: suffix.into(),
                port,
            });
        }
        valid(name).then(|| HostPattern::Exact {
            name: name.into(),
            port,
        })
    }

    /// Whether the authority (host name lowercase in `name`, `port`)
    /// matches.
    fn matches(&self, name: &[u8], port: Option<u16>) -> bool {
        let port_ok = |want: &Option<u16>| want.is_none() || *want == port;
        match self {
            HostPattern::Any => true,
            HostPattern::Exact { name: n, port: p } => port_ok(p) && **n == *name,
            HostPattern::Suffix { suffix, port: p } => {
                port_ok(p) && name.len() > suffix.len() && name.ends_with(suffix)
            }
        }
    }

    /// The pattern as written.
    pub fn to_text(&self) -> String {
        let port = |p: &Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        match self {
            HostPattern::Any => "*".into(),
            HostPattern::Exact { name, port: p } => {
                format!("{}{}", String::from_utf8_lossy(name), port(p))
            }
            HostPattern::Suffix { suffix, port: p } => {
                format!("*{}{}", String::from_utf8_lossy(suffix), port(p))
            }
        }
    }
}

/// A path condition.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `path`: equal, byte for byte.
    Exact(Box<[u8]>),
    /// `path_prefix`: starts with it on a segment boundary.
    Prefix(Box<[u8]>),
    /// `path_starts_with`: starts with it, byte for byte.
    StartsWith(Box<[u8]>),
    /// `path_regex`: the whole path matches.
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Exact(p) => **p == *path,
            PathMatch::Prefix(p) => segment_prefix(p, path),
            PathMatch::StartsWith(p) => path.starts_with(p),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Whether a path condition implies this one (every path `other`
    /// accepts, this accepts too); false when unsure.
    pub fn covers(&self, other: &PathMatch) -> bool {
        use PathMatch::*;
        match (self, other) {
            (Exact(a), Exact(b)) => a == b,
            (Prefix(a), Exact(b)) | (Prefix(a), Prefix(b)) => segment_prefix(a, b),
            (StartsWith(a), Exact(b) | Prefix(b) | StartsWith(b)) => b.starts_with(a),
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// `prefix` is a prefix of `path` ending on a segment boundary.
#[inline]
fn segment_prefix(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.last() == Some(&b'/')
            || path[prefix.len()] == b'/')
}

/// How a header or query value is tested.
#[derive(Debug, Clone)]
pub enum ValueTest {
    /// Equal.
    Exact(Box<[u8]>),
    /// Starts with.
    Prefix(Box<[u8]>),
    /// Ends with.
    Suffix(Box<[u8]>),
    /// The whole value matches.
    Regex(Regex),
    /// The field is present (any value).
    Present,
    /// The field is absent.
    Absent,
}

impl ValueTest {
    fn accepts(&self, v: &[u8]) -> bool {
        match self {
            ValueTest::Exact(e) => **e == *v,
            ValueTest::Prefix(p) => v.starts_with(p),
            ValueTest::Suffix(s) => v.ends_with(s),
            ValueTest::Regex(r) => r.is_match(v),
            ValueTest::Present => true,
            ValueTest::Absent => false,
        }
    }

    /// Whether `values` (every value of one name) pass.
    fn holds<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            ValueTest::Absent => values.next().is_none(),
            test => values.any(|v| test.accepts(v)),
        }
    }

    fn same(&self, other: &ValueTest) -> bool {
        use ValueTest::*;
        match (self, other) {
            (Exact(a), Exact(b)) | (Prefix(a), Prefix(b)) | (Suffix(a), Suffix(b)) => a == b,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (Present, Present) | (Absent, Absent) => true,
            _ => false,
        }
    }
}

/// A condition on a header field.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Field name, lowercase.
    pub name: Box<[u8]>,
    /// The test on its values.
    pub test: ValueTest,
    /// Negate the result.
    pub invert: bool,
}

impl HeaderMatch {
    /// Whether the condition holds for `req`'s header fields.
    pub fn holds(&self, req: &RequestView<'_>) -> bool {
        self.test.holds(req.header_values(&self.name)) != self.invert
    }
}

/// A condition on a query parameter (`Exact`, `Regex` or `Present`).
#[derive(Debug, Clone)]
pub struct QueryMatch {
    /// Parameter name, as sent.
    pub name: Box<[u8]>,
    /// The test on its values.
    pub test: ValueTest,
}

/// A route's `match`: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    /// Host patterns, any of which may match (empty: any host).
    pub hosts: Vec<HostPattern>,
    /// The path condition.
    pub path: Option<PathMatch>,
    /// Methods, any of which may match (empty: any method).
    pub methods: Vec<Box<[u8]>>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query: Vec<QueryMatch>,
}

impl RequestMatch {
    /// Whether every condition holds for `req`.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let mut buf = [0u8; 256];
        let host = if self.hosts.is_empty() {
            None
        } else {
            host_key(req.host, &mut buf)
        };
        self.matches_with(req, host)
    }

    /// [`RequestMatch::matches`] with the request's host key computed once
    /// by the caller (`None`: no host, or too long for one).
    #[inline]
    pub fn matches_with(&self, req: &RequestView<'_>, host: Option<HostKey<'_>>) -> bool {
        if !self.hosts.is_empty() && !self.host_matches(host) {
            return false;
        }
        if let Some(p) = &self.path {
            if !p.matches(req.path) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| **m == *req.method) {
            return false;
        }
        self.headers.iter().all(|h| h.holds(req))
            && self
                .query
                .iter()
                .all(|q| q.test.holds(req.query_values(&q.name)))
    }

    fn host_matches(&self, host: Option<HostKey<'_>>) -> bool {
        if self.hosts.contains(&HostPattern::Any) {
            return true;
        }
        let Some((name, port)) = host else {
            return false;
        };
        self.hosts.iter().any(|h| h.matches(name, port))
    }

    /// How much of the path the path condition matched, for a prefix
    /// rewrite or redirect: the prefix, or the whole path for `path`.
    pub fn matched_prefix_len(&self, path: &[u8]) -> usize {
        match &self.path {
            Some(PathMatch::Prefix(p) | PathMatch::StartsWith(p)) => p.len().min(path.len()),
            Some(PathMatch::Exact(_)) => path.len(),
            _ => 0,
        }
    }

    /// Whether every request this match accepts, `earlier` accepts too
    /// (so a route with this match after one with `earlier` never runs).
    /// Conservative: false when it cannot tell.
    pub fn shadowed_by(&self, earlier: &RequestMatch) -> bool {
        let hosts = earlier.hosts.is_empty()
            || earlier.hosts.contains(&HostPattern::Any)
            || (!self.hosts.is_empty()
                && self
                    .hosts
                    .iter()
                    .all(|h| earlier.hosts.iter().any(|e| host_covers(e, h))));
        let path = match (&earlier.path, &self.path) {
            (None, _) => true,
            (Some(e), Some(s)) => e.covers(s),
            (Some(_), None) => false,
        };
        let methods = earlier.methods.is_empty()
            || (!self.methods.is_empty()
                && self.methods.iter().all(|m| earlier.methods.contains(m)));
        let headers = earlier.headers.iter().all(|e| {
            self.headers
                .iter()
                .any(|s| s.name == e.name && s.invert == e.invert && s.test.same(&e.test))
        });
        let query = earlier.query.iter().all(|e| {
            self.query
                .iter()
                .any(|s| s.name == e.name && s.test.same(&e.test))
        });
        hosts && path && methods && headers && query
    }
}

/// Whether host pattern `a` accepts every authority `b` accepts.
fn host_covers(a: &HostPattern, b: &HostPattern) -> bool {
    let port_covers = |pa: &Option<u16>, pb: &Option<u16>| pa.is_none() || pa == pb;
    match (a, b) {
        (HostPattern::Any, _) => true,
        (_, HostPattern::Any) => false,
        (HostPattern::Exact { name: na, port: pa }, HostPattern::Exact { name: nb, port: pb }) => {
            na == nb && port_covers(pa, pb)
        }
        (
            HostPattern::Suffix {
                suffix: sa,
                port: pa,
            },
            HostPattern::Exact { name: nb, port: pb },
        ) => nb.len() > sa.len() && nb.ends_with(sa) && port_covers(pa, pb),
        (
            HostPattern::Suffix {
                suffix: sa,
                port: pa,
            },
            HostPattern::Suffix {
                suffix: sb,
                port: pb,
            },
        ) => sb.ends_with(sa) && port_covers(pa, pb),
        (HostPattern::Exact { .. }, HostPattern::Suffix { .. }) => false,
    }
}

/// A request's host name (lowercase, without a trailing dot) and port.
pub type HostKey<'a> = (&'a [u8], Option<u16>);

/// The host name (lowercase, without one trailing dot: `a.com.` is
/// `a.com`) and port of an authority, in `buf`; None when it is longer
/// than 255 bytes (no DNS name is; such a host matches only `*`).
#[inline]
pub(crate) fn host_key<'b>(
    authority: &[u8],
    buf: &'b mut [u8; 256],
) -> Option<(&'b [u8], Option<u16>)> {
    let lower = lowercase(authority, buf)?;
    let (name, port) = split_port(lower);
    let name = match name.strip_suffix(b".") {
        Some(n) if !n.is_empty() => n,
        _ => name,
    };
    Some((name, port))
}

/// `src` in lowercase, in `dst` (None when it does not fit: such a host
/// matches no host pattern).
#[inline]
pub(crate) fn lowercase<'d>(src: &[u8], dst: &'d mut [u8; 256]) -> Option<&'d [u8]> {
    let out = dst.get_mut(..src.len())?;
    for (d, s) in out.iter_mut().zip(src) {
        *d = s.to_ascii_lowercase();
    }
    Some(out)
}

#[cfg(test)]
mod tests;
