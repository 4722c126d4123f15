use super::*;
use crate::codec::h1::parse_valid;

/// Parses `raw` and runs `f` on its view.
fn with_view<T>(raw: &str, f: impl FnOnce(&RequestView<'_>) -> T) -> T {
    let (head, fields, _) = parse_valid(raw.as_bytes());
    let view = RequestView::new(raw.as_bytes(), &head, &fields);
    f(&view)
}

fn get(target: &str, host: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

fn matches(m: &RequestMatch, raw: &str) -> bool {
    with_view(raw, |v| m.matches(v))
}

fn hosts(patterns: &[&str]) -> RequestMatch {
    RequestMatch {
        hosts: patterns
            .iter()
            .map(|p| HostPattern::parse(p).expect("valid pattern"))
            .collect(),
        ..Default::default()
    }
}

fn path(p: PathMatch) -> RequestMatch {
    RequestMatch {
        path: Some(p),
        ..Default::default()
    }
}

fn b(s: &str) -> Box<[u8]> {
    s.as_bytes().into()
}

#[test]
fn the_view_splits_path_and_query_and_takes_the_authority_of_an_absolute_target() {
    with_view(&get("/a/b?x=1&y", "Shop:8080", ""), |v| {
        assert_eq!(
            (v.host, v.path, v.query),
            (&b"Shop:8080"[..], &b"/a/b"[..], &b"x=1&y"[..])
        );
    });
    with_view(&get("http://api.example.com:81/p?q", "other", ""), |v| {
        assert_eq!(
            (v.host, v.path, v.query),
            (&b"api.example.com:81"[..], &b"/p"[..], &b"q"[..])
        );
    });
    with_view(&get("http://api.example.com", "other", ""), |v| {
        assert_eq!((v.host, v.path), (&b"api.example.com"[..], &b"/"[..]));
    });
}

#[test]
fn an_exact_host_matches_any_port_and_any_case_unless_a_port_is_given() {
    let m = hosts(&["shop.example.com"]);
    assert!(matches(&m, &get("/", "shop.example.com", "")));
    assert!(matches(&m, &get("/", "SHOP.Example.com:8080", "")));
    assert!(!matches(&m, &get("/", "shop.example.org", "")));
    assert!(!matches(&m, &get("/", "a.shop.example.com", "")));
    let m = hosts(&["shop.example.com:8080"]);
    assert!(matches(&m, &get("/", "shop.example.com:8080", "")));
    assert!(!matches(&m, &get("/", "shop.example.com:8081", "")));
    assert!(!matches(&m, &get("/", "shop.example.com", "")));
}

#[test]
fn a_wildcard_host_matches_subdomains_but_not_the_bare_domain() {
    let m = hosts(&["*.example.com"]);
    assert!(matches(&m, &get("/", "a.example.com", "")));
    assert!(matches(&m, &get("/", "a.b.example.com:80", "")));
    assert!(!matches(&m, &get("/", "example.com", "")));
    assert!(!matches(&m, &get("/", "aexample.com", "")));
    assert!(matches(&hosts(&["*"]), &get("/", "anything", "")));
}

#[test]
fn ipv6_hosts_keep_their_brackets() {
    let m = hosts(&["[::1]:8080"]);
    assert!(matches(&m, &get("/", "[::1]:8080", "")));
    assert!(!matches(&m, &get("/", "[::1]:8081", "")));
    assert!(matches(&hosts(&["[::1]"]), &get("/", "[::1]:9", "")));
}

#[test]
fn host_patterns_refuse_what_is_not_a_host() {
    for bad in [
        "", "a b", "*a.com", "a.*.com", "*.", "a:0", "a:x", "a:99999", "**.a",
    ] {
        assert!(HostPattern::parse(bad).is_none(), "{bad:?}");
    }
    for good in ["a", "a.b", "*.a.b", "a:1", "*", "[::1]:80", "10.0.0.1"] {
        assert!(HostPattern::parse(good).is_some(), "{good:?}");
    }
}

#[test]
fn exact_paths_match_byte_for_byte() {
    let m = path(PathMatch::Exact(b("/a/b")));
    assert!(matches(&m, &get("/a/b", "x", "")));
    assert!(matches(&m, &get("/a/b?q=1", "x", "")));
    assert!(!matches(&m, &get("/a/b/", "x", "")));
    assert!(!matches(&m, &get("/A/b", "x", "")));
}

#[test]
fn path_prefixes_match_on_segment_boundaries() {
    let m = path(PathMatch::Prefix(b("/api")));
    for ok in ["/api", "/api/", "/api/users", "/api?x"] {
        assert!(matches(&m, &get(ok, "x", "")), "{ok}");
    }
    for no in ["/apiv2", "/ap", "/", "/x/api"] {
        assert!(!matches(&m, &get(no, "x", "")), "{no}");
    }
    let m = path(PathMatch::Prefix(b("/api/")));
    assert!(matches(&m, &get("/api/x", "x", "")));
    assert!(!matches(&m, &get("/api", "x", "")));
    assert!(matches(
        &path(PathMatch::Prefix(b("/"))),
        &get("/anything", "x", "")
    ));
}

#[test]
fn raw_prefixes_match_any_continuation() {
    let m = path(PathMatch::StartsWith(b("/api")));
    assert!(matches(&m, &get("/apiv2", "x", "")));
    assert!(matches(&m, &get("/api/x", "x", "")));
    assert!(!matches(&m, &get("/ap", "x", "")));
}

#[test]
fn a_path_regex_must_match_the_whole_path() {
    let m = path(PathMatch::Regex(
        compile_regex("/users/[0-9]+", true).expect("valid"),
    ));
    assert!(matches(&m, &get("/users/42", "x", "")));
    assert!(matches(&m, &get("/users/42?x=a", "x", "")));
    assert!(!matches(&m, &get("/users/42/x", "x", "")));
    assert!(!matches(&m, &get("/v1/users/42", "x", "")));
}

#[test]
fn regexes_over_the_limits_are_refused() {
    assert!(matches!(
        compile_regex(&"a".repeat(MAX_REGEX_LEN + 1), true),
        Err(RegexError::TooLong { .. })
    ));
    assert!(matches!(
        compile_regex("a{1000}{1000}", true),
        Err(RegexError::Invalid(_))
    ));
    assert!(matches!(
        compile_regex("(", true),
        Err(RegexError::Invalid(_))
    ));
    // Alternation is not a way around anchoring.
    let r = compile_regex("a|b", true).expect("valid");
    assert!(r.is_match(b"a") && !r.is_match(b"ab"));
}

#[test]
fn methods_match_case_sensitively_from_a_list() {
    let m = RequestMatch {
        methods: vec![b("GET"), b("HEAD")],
        ..Default::default()
    };
    assert!(matches(&m, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(matches(&m, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(!matches(
        &m,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!matches(&m, "get / HTTP/1.1\r\nHost: x\r\n\r\n"));
}

fn header(name: &str, test: ValueTest, invert: bool) -> RequestMatch {
    RequestMatch {
        headers: vec![HeaderMatch {
            name: b(name),
            test,
            invert,
        }],
        ..Default::default()
    }
}

#[test]
fn header_conditions_each_hold_and_fail() {
    let req = |v: &str| get("/", "x", &format!("X-Canary: {v}\r\n"));
    let none = get("/", "x", "");
    let exact = header("x-canary", ValueTest::Exact(b("true")), false);
    assert!(matches(&exact, &req("true")));
    assert!(!matches(&exact, &req("TRUE")));
    assert!(!matches(&exact, &none));
    let prefix = header("x-canary", ValueTest::Prefix(b("tr")), false);
    assert!(matches(&prefix, &req("true")) && !matches(&prefix, &req("false")));
    let suffix = header("x-canary", ValueTest::Suffix(b("ue")), false);
    assert!(matches(&suffix, &req("true")) && !matches(&suffix, &req("truex")));
    let regex = header(
        "x-canary",
        ValueTest::Regex(compile_regex("t.*e", true).expect("valid")),
        false,
    );
    assert!(matches(&regex, &req("true")) && !matches(&regex, &req("truex")));
    let present = header("x-canary", ValueTest::Present, false);
    assert!(matches(&present, &req("")) && !matches(&present, &none));
    let absent = header("x-canary", ValueTest::Absent, false);
    assert!(!matches(&absent, &req("1")) && matches(&absent, &none));
    let inverted = header("x-canary", ValueTest::Exact(b("true")), true);
    assert!(!matches(&inverted, &req("true")));
    assert!(matches(&inverted, &req("false")));
    assert!(matches(&inverted, &none));
}

#[test]
fn a_header_condition_holds_when_any_field_of_the_name_satisfies_it() {
    let m = header("x-v", ValueTest::Exact(b("2")), false);
    assert!(matches(&m, &get("/", "x", "x-v: 1\r\nX-V: 2\r\n")));
}

fn query(name: &str, test: ValueTest) -> RequestMatch {
    RequestMatch {
        query: vec![QueryMatch {
            name: b(name),
            test,
        }],
        ..Default::default()
    }
}

#[test]
fn query_conditions_each_hold_and_fail() {
    let exact = query("debug", ValueTest::Exact(b("1")));
    assert!(matches(&exact, &get("/?a=2&debug=1", "x", "")));
    assert!(!matches(&exact, &get("/?debug=10", "x", "")));
    assert!(!matches(&exact, &get("/?xdebug=1", "x", "")));
    assert!(!matches(&exact, &get("/", "x", "")));
    let regex = query(
        "id",
        ValueTest::Regex(compile_regex("[0-9]+", true).expect("valid")),
    );
    assert!(matches(&regex, &get("/?id=42", "x", "")));
    assert!(!matches(&regex, &get("/?id=4a", "x", "")));
    let present = query("flag", ValueTest::Present);
    assert!(matches(&present, &get("/?flag", "x", "")));
    assert!(matches(&present, &get("/?flag=", "x", "")));
    assert!(!matches(&present, &get("/?flags=1", "x", "")));
}

#[test]
fn every_condition_of_a_match_must_hold() {
    let m = RequestMatch {
        hosts: vec![HostPattern::parse("shop").expect("valid")],
        path: Some(PathMatch::Prefix(b("/cart"))),
        methods: vec![b("GET")],
        headers: vec![HeaderMatch {
            name: b("x-user"),
            test: ValueTest::Present,
            invert: false,
        }],
        query: vec![],
    };
    assert!(matches(&m, &get("/cart/1", "shop", "x-user: a\r\n")));
    assert!(!matches(&m, &get("/cart/1", "shop", "")));
    assert!(!matches(&m, &get("/cart/1", "other", "x-user: a\r\n")));
    assert!(!matches(&m, &get("/carts", "shop", "x-user: a\r\n")));
}

#[test]
fn shadowing_is_found_when_an_earlier_match_accepts_everything_a_later_one_does() {
    let any = RequestMatch::default();
    let api = path(PathMatch::Prefix(b("/api")));
    let api_users = path(PathMatch::Exact(b("/api/users")));
    let apix = path(PathMatch::Prefix(b("/apix")));
    assert!(api.shadowed_by(&any));
    assert!(api_users.shadowed_by(&api));
    assert!(
        !apix.shadowed_by(&api),
        "segment prefixes: /api does not cover /apix"
    );
    assert!(apix.shadowed_by(&path(PathMatch::StartsWith(b("/api")))));
    assert!(!any.shadowed_by(&api));
    let canary = RequestMatch {
        headers: vec![HeaderMatch {
            name: b("x-canary"),
            test: ValueTest::Exact(b("true")),
            invert: false,
        }],
        ..api.clone()
    };
    assert!(canary.shadowed_by(&api), "api takes canary requests too");
    assert!(
        !api.shadowed_by(&canary),
        "a header canary before its base route is the normal order"
    );
    assert!(hosts(&["a.example.com"]).shadowed_by(&hosts(&["*.example.com"])));
    assert!(!hosts(&["*.example.com"]).shadowed_by(&hosts(&["a.example.com"])));
    assert!(hosts(&["a.com:80"]).shadowed_by(&hosts(&["a.com"])));
    assert!(!hosts(&["a.com"]).shadowed_by(&hosts(&["a.com:80"])));
}

#[test]
fn a_trailing_dot_is_ignored_and_a_long_host_matches_only_any() {
    let m = hosts(&["shop.example.com"]);
    assert!(matches(&m, &get("/", "shop.example.com.", "")));
    assert!(matches(
        &hosts(&["shop.example.com."]),
        &get("/", "shop.example.com", "")
    ));
    let long = "a".repeat(300);
    assert!(!matches(&m, &get("/", &long, "")));
    assert!(matches(&hosts(&["*"]), &get("/", &long, "")));
}
