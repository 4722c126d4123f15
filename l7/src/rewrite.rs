//! Path rewrites of forwarded requests (`rewrite.path_prefix`,
//! `rewrite.path_regex`); the host rewrite is a plain value written by
//! the request writer. The query is kept as received.

use crate::route::PathRewrite;
use crate::route::matcher::{RequestMatch, RequestView};

/// Appends the rewritten target (path, then `?query` when there is one).
pub fn path(out: &mut Vec<u8>, matcher: &RequestMatch, rw: &PathRewrite, req: &RequestView<'_>) {
    match rw {
        PathRewrite::Prefix(new) => {
            let matched = matcher.matched_prefix_len(req.path);
            join_prefix(out, new, &req.path[matched..]);
        }
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
            if out.len() == start {
                out.push(b'/');
            }
        }
    }
    if !req.query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(req.query);
    }
}

/// `new` followed by the unmatched `rest` of the path, with one slash
/// where both bring one (`/` + `/items` is `/items`, not `//items`), and
/// `/` rather than an empty path.
pub fn join_prefix(out: &mut Vec<u8>, new: &[u8], rest: &[u8]) {
    let start = out.len();
    out.extend_from_slice(new);
    let rest = if new.last() == Some(&b'/') && rest.first() == Some(&b'/') {
        &rest[1..]
    } else {
        rest
    };
    out.extend_from_slice(rest);
    if out.len() == start {
        out.push(b'/');
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
    }
}
