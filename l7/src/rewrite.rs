//! Path rewrites of forwarded requests (`rewrite.path_prefix`,
//! `rewrite.path_regex`); the host rewrite is a plain value written by
//! the request writer. The query is kept as received.

use crate::route::PathRewrite;
use crate::route::matcher::{RequestMatch, RequestView};

/// Appends the rewritten target (path, then `?query` when there is one).
pub fn path(out: &mut Vec<u8>, matcher: &RequestMatch, rw: &PathRewrite, req: &RequestView<'_>) {
    match rw {
        PathRewrite::Prefix(new) => replace_prefix(out, matcher, new, req.path),
        PathRewrite::Regex {
            regex,
            substitution,
        } => {
            let start = out.len();
            let mut last = 0;
            for caps in regex.captures_iter(req.path) {
                let Some(m) = caps.get(0) else { continue };
                out.extend_from_slice(&req.path[last..m.start()]);
                caps.expand(substitution, out);
                last = m.end();
            }
            out.extend_from_slice(&req.path[last..]);
            if out.get(start) != Some(&b'/') {
                out.insert(start, b'/');
            }
        }
    }
    if !req.query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(req.query);
    }
}

/// Appends `path` with the part `matcher`'s path condition took replaced
/// by `new` (prefix rewrites and redirects).
pub fn replace_prefix(out: &mut Vec<u8>, matcher: &RequestMatch, new: &[u8], path: &[u8]) {
    let matched = matcher.matched_prefix_len(path);
    // `/api/` took `/api/x`: the rest `x` starts a segment of its own.
    let segment = matched > 0 && path[matched - 1] == b'/';
    join_prefix(out, new, &path[matched..], segment);
}

/// `new` followed by the unmatched `rest` of the path: one slash where
/// both bring one (`/` + `/items` is `/items`, not `//items`), one where
/// `rest` starts a segment and `new` does not end one (`/v2` + `x` is
/// `/v2/x`), and always a leading `/` (an empty result is `/`).
pub fn join_prefix(out: &mut Vec<u8>, new: &[u8], rest: &[u8], segment: bool) {
    let start = out.len();
    out.extend_from_slice(new);
    let new_ends = new.last() == Some(&b'/');
    let rest = match rest.strip_prefix(b"/") {
        Some(r) if new_ends => r,
        _ => rest,
    };
    if segment && !new_ends && !rest.is_empty() && rest[0] != b'/' {
        out.push(b'/');
    }
    out.extend_from_slice(rest);
    if out.get(start) != Some(&b'/') {
        out.insert(start, b'/');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::matcher::{PathMatch, compile_regex};

    fn view(path: &'static [u8], query: &'static [u8]) -> RequestView<'static> {
        RequestView {
            host: b"x",
            path,
            query,
            method: b"GET",
            buf: b"",
            fields: &[],
        }
    }

    fn prefix_match(p: &str) -> RequestMatch {
        RequestMatch {
            path: Some(PathMatch::Prefix(p.as_bytes().into())),
            ..Default::default()
        }
    }

    fn rewritten(
        m: &RequestMatch,
        rw: &PathRewrite,
        path: &'static [u8],
        query: &'static [u8],
    ) -> String {
        let mut out = Vec::new();
        path_into(&mut out, m, rw, path, query);
        String::from_utf8(out).expect("ascii")
    }

    fn path_into(
        out: &mut Vec<u8>,
        m: &RequestMatch,
        rw: &PathRewrite,
        p: &'static [u8],
        q: &'static [u8],
    ) {
        super::path(out, m, rw, &view(p, q));
    }

    #[test]
    fn a_prefix_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
        let m = prefix_match("/shop");
        let rw = PathRewrite::Prefix(b"/store".as_slice().into());
        assert_eq!(
            rewritten(&m, &rw, b"/shop/items", b"a=1"),
            "/store/items?a=1"
        );
        assert_eq!(rewritten(&m, &rw, b"/shop", b""), "/store");
    }

    #[test]
    fn a_prefix_rewrite_to_slash_does_not_double_the_slash() {
        let m = prefix_match("/shop");
        let rw = PathRewrite::Prefix(b"/".as_slice().into());
        assert_eq!(rewritten(&m, &rw, b"/shop/items", b""), "/items");
        assert_eq!(rewritten(&m, &rw, b"/shop", b""), "/");
        let empty = PathRewrite::Prefix(b"".as_slice().into());
        assert_eq!(rewritten(&m, &empty, b"/shop", b""), "/");
        assert_eq!(rewritten(&m, &empty, b"/shop/a", b""), "/a");
    }

    #[test]
    fn a_prefix_that_ended_a_segment_keeps_the_next_segment_apart() {
        let m = prefix_match("/api/");
        let rw = PathRewrite::Prefix(b"/v2".as_slice().into());
        assert_eq!(rewritten(&m, &rw, b"/api/x", b""), "/v2/x");
        let raw = RequestMatch {
            path: Some(PathMatch::StartsWith(b"/api".as_slice().into())),
            ..Default::default()
        };
        let strip = PathRewrite::Prefix(b"".as_slice().into());
        assert_eq!(rewritten(&raw, &strip, b"/apiv2", b""), "/v2");
    }

    #[test]
    fn a_regex_rewrite_substitutes_every_match_with_groups() {
        let m = RequestMatch::default();
        let rw = PathRewrite::Regex {
            regex: compile_regex("^/v([0-9]+)/(.*)$", false).expect("valid"),
            substitution: b"/api/$2/version/$1".as_slice().into(),
        };
        assert_eq!(
            rewritten(&m, &rw, b"/v2/users", b"q"),
            "/api/users/version/2?q"
        );
        let rw = PathRewrite::Regex {
            regex: compile_regex("-", false).expect("valid"),
            substitution: b"_".as_slice().into(),
        };
        assert_eq!(rewritten(&m, &rw, b"/a-b-c", b""), "/a_b_c");
        let rw = PathRewrite::Regex {
            regex: compile_regex("^/api/", false).expect("valid"),
            substitution: b"".as_slice().into(),
        };
        assert_eq!(rewritten(&m, &rw, b"/api/x", b""), "/x");
    }
}
