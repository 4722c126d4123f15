//! HTTP routes (`listeners[].routes`, README "HTTP routes") end to end:
//! every match condition and its negative, first-match order, 404 `NR`, a
//! weighted split within 4 sigma and sticky splits with 2 workers, live
//! rollouts under load (20 weight changes, a header canary and a
//! blue/green switch) without one failed request, rewrites, redirects,
//! direct responses, header operations, mirroring to a healthy, slow and
//! dead shadow, `GET /routes` with hit counters and the `route` label, and
//! each validation error with its file:line:col.

mod helpers;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use helpers::http::{self, Reply, Request, Upstream, values};
use helpers::proxy::{Proxy, binary};

type Conn = BufReader<TcpStream>;

/// The proxy's own answer when no route matches.
const NO_ROUTE: &str = "no route (NR)\n";

// ---------------------------------------------------------------------------
// Configs and clients
// ---------------------------------------------------------------------------

/// A config with one HTTP listener `web` on an ephemeral port:
/// `listener_extra` (YAML lines at column 1) then `routes` (a YAML list at
/// column 1, e.g. one flow mapping per line), and `clusters` (from
/// [`clusters`]).
fn config(listener_extra: &str, routes: &str, clusters: &str) -> String {
    let mut c = String::from(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: http\n",
    );
    for line in dedent(listener_extra).lines() {
        c.push_str(&format!("    {line}\n"));
    }
    c.push_str("    routes:\n");
    for line in dedent(routes).lines() {
        c.push_str(&format!("      {line}\n"));
    }
    c.push_str("clusters:\n");
    c.push_str(clusters);
    c
}

/// `clusters:` items, one endpoint each.
fn clusters(list: &[(&str, SocketAddr)]) -> String {
    list.iter()
        .map(|(name, addr)| format!("  - name: {name}\n    endpoints: [\"{addr}\"]\n"))
        .collect()
}

/// Removes the common indentation and blank lines, so YAML can be written
/// indented in the test.
fn dedent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let indent = lines
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| format!("{}\n", &l[indent..]))
        .collect()
}

/// One route per `(name, match)`, each answering `200` with its own name as
/// a direct response: which route took a request shows in the body.
fn answering_routes(routes: &[(&str, &str)]) -> String {
    routes
        .iter()
        .map(|(name, m)| {
            format!(
                "- {{ name: {name}, match: {m}, direct_response: {{ status: 200, body: {name} }} }}\n"
            )
        })
        .collect()
}

/// A proxy (2 workers, io_uring) whose routes answer with their names; the
/// one cluster is never used.
fn answering_proxy(routes: &[(&str, &str)]) -> Proxy {
    let unused = helpers::tcp::closed_port();
    Proxy::start(
        "uring",
        &config(
            "",
            &answering_routes(routes),
            &clusters(&[("unused", unused)]),
        ),
    )
}

/// Header fields written `name: value|name: value` ("" for none).
fn fields(text: &str) -> Vec<(&str, &str)> {
    text.split('|')
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let (k, v) = f.split_once(':').expect("`name: value`");
            (k.trim(), v.trim())
        })
        .collect()
}

/// Sends a request with `Host: test` unless `headers` names a host.
fn ask(
    c: &mut Conn,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<http::Response> {
    let mut all: Vec<(&str, &str)> = Vec::new();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        all.push(("Host", "test"));
    }
    all.extend_from_slice(headers);
    http::request(c, method, target, &all, body)
}

/// Which route answered: the name in a 200 direct response's body, `NR`
/// for the proxy's 404, or what came instead.
fn answered_by(r: &http::Response) -> String {
    match (r.status, r.text()) {
        (200, body) => body,
        (404, body) if body == NO_ROUTE => "NR".to_owned(),
        (status, body) => format!("status {status} {body:?}"),
    }
}

/// Runs `(method, target, "name: value|...", expected route or NR)` cases on
/// one keep-alive connection; panics listing every case that went wrong.
fn check_table(proxy: &Proxy, cases: &[(&str, &str, &str, &str)]) {
    let addr = proxy.listener("web");
    let mut c = http::connect(addr);
    let mut wrong = Vec::new();
    for (method, target, headers, want) in cases {
        let got = match ask(&mut c, method, target, &fields(headers), b"") {
            Ok(r) => answered_by(&r),
            Err(e) => {
                c = http::connect(addr);
                format!("error: {e}")
            }
        };
        if got != *want {
            wrong.push(format!(
                "{method} {target} [{headers}]: expected {want}, got {got}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases routed wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// An upstream answering 200 with its own name.
fn named_upstream(name: &'static str) -> Upstream {
    Upstream::start(move |_| Reply::ok(name))
}

/// An upstream answering 200 with what it received, as JSON:
/// `{"upstream", "method", "path", "headers": [[name, value], ...], "body"}`.
fn echo_upstream(name: &'static str) -> Upstream {
    Upstream::start(move |r| Reply::ok(echo_json(name, r)))
}

fn echo_json(name: &str, r: &Request) -> String {
    serde_json::json!({
        "upstream": name,
        "method": r.method,
        "path": r.path,
        "headers": r.headers,
        "body": String::from_utf8_lossy(&r.body),
    })
    .to_string()
}

/// What an [`echo_upstream`] received, from its answer.
struct Seen(serde_json::Value);

impl Seen {
    fn of(r: &http::Response) -> Seen {
        assert_eq!(r.status, 200, "{}{}", r.head, r.text());
        Seen(
            serde_json::from_slice(&r.body)
                .unwrap_or_else(|e| panic!("not an echo ({e}): {}{}", r.head, r.text())),
        )
    }

    fn path(&self) -> &str {
        self.0["path"].as_str().unwrap_or("")
    }

    fn upstream(&self) -> &str {
        self.0["upstream"].as_str().unwrap_or("")
    }

    /// Every value of the fields named `name`, in order.
    fn values(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
            .filter_map(|f| f[1].as_str().map(str::to_owned))
            .collect()
    }
}

/// The sum of every sample of `name` that carries all of `labels` (other
/// labels may differ).
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let rest = rest.trim_end_matches('}');
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if n == name && all {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// Polls `metric_sum` until `pred` holds or 5 s pass; returns the last value.
fn wait_metric_sum(
    proxy: &Proxy,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric_sum(&proxy.metrics(), name, labels);
        if pred(v) || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for `cond`.
fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `per_connection` `GET target` requests on each of `connections`
/// keep-alive connections at once; returns how many answers had each body.
fn count_answers(
    addr: SocketAddr,
    connections: usize,
    per_connection: usize,
    target: &str,
) -> BTreeMap<String, usize> {
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let target = target.to_owned();
            thread::spawn(move || {
                let mut c = http::connect(addr);
                let mut counts = BTreeMap::new();
                for i in 0..per_connection {
                    let r = ask(&mut c, "GET", &target, &[], b"")
                        .unwrap_or_else(|e| panic!("request {i}: {e}"));
                    assert_eq!(r.status, 200, "request {i}: {}{}", r.head, r.text());
                    *counts.entry(r.text()).or_insert(0) += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for w in workers {
        for (k, n) in w.join().expect("client thread") {
            *total.entry(k).or_insert(0) += n;
        }
    }
    total
}

/// Whether `x` successes of `n` draws is within `k` sigma of probability `p`.
fn within_sigma(x: usize, n: usize, p: f64, k: f64) -> bool {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (x as f64 - mean).abs() <= k * sigma
}

// ---------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------

#[test]
fn host_conditions_match_names_case_insensitively_with_ports_wildcards_and_lists() {
    let proxy = answering_proxy(&[
        ("exact", "{ host: shop.example.com }"),
        ("exact-port", "{ host: \"api.example.com:8080\" }"),
        ("suffix", "{ host: \"*.example.com\" }"),
        ("list", "{ host: [a.test, b.test] }"),
        ("ipv6", "{ host: \"[::1]:8080\" }"),
        ("any", "{ host: \"*\", path: /any }"),
    ]);
    check_table(
        &proxy,
        &[
            // A name without a port matches on any port, in any case.
            ("GET", "/", "host: shop.example.com", "exact"),
            ("GET", "/", "host: SHOP.Example.COM", "exact"),
            ("GET", "/", "host: shop.example.com:9999", "exact"),
            ("GET", "/", "host: shop.example.org", "NR"),
            // A name with a port matches only that port.
            ("GET", "/", "host: api.example.com:8080", "exact-port"),
            ("GET", "/", "host: api.example.com:8081", "suffix"),
            ("GET", "/", "host: api.example.com", "suffix"),
            // `*.example.com`: any name ending in `.example.com`, not the
            // bare domain, not a name that merely ends in `example.com`.
            ("GET", "/", "host: deep.sub.example.com", "suffix"),
            ("GET", "/", "host: example.com", "NR"),
            ("GET", "/", "host: notexample.com", "NR"),
            // A list: any of its names.
            ("GET", "/", "host: a.test", "list"),
            ("GET", "/", "host: B.TEST:1234", "list"),
            ("GET", "/", "host: c.test", "NR"),
            // IPv6 literals in brackets, with their port.
            ("GET", "/", "host: [::1]:8080", "ipv6"),
            ("GET", "/", "host: [::1]:8081", "NR"),
            ("GET", "/", "host: [::1]", "NR"),
            // `*`: every host.
            ("GET", "/any", "host: whatever.org", "any"),
            ("GET", "/any", "host: 10.1.2.3:99", "any"),
            ("GET", "/", "host: whatever.org", "NR"),
            // The authority of an absolute-form target is the request's
            // authority (RFC 9112 3.2.2: it wins over `Host`).
            ("GET", "http://b.test/x", "host: b.test", "list"),
            (
                "GET",
                "http://shop.example.com:8080/",
                "host: other.org",
                "exact",
            ),
            ("GET", "http://other.org/", "host: shop.example.com", "NR"),
        ],
    );
}

#[test]
fn path_conditions_match_exactly_on_segment_boundaries_raw_prefixes_or_a_whole_regex() {
    let proxy = answering_proxy(&[
        ("exact", "{ path: /exact }"),
        ("prefix", "{ path_prefix: /api }"),
        ("slash-prefix", "{ path_prefix: /docs/ }"),
        ("raw", "{ path_starts_with: /raw }"),
        ("regex", "{ path_regex: \"/users/[0-9]+\" }"),
    ]);
    check_table(
        &proxy,
        &[
            // `path`: the target before `?`, byte for byte.
            ("GET", "/exact", "", "exact"),
            ("GET", "/exact?x=1", "", "exact"),
            ("GET", "/exact/", "", "NR"),
            ("GET", "/exactly", "", "NR"),
            ("GET", "/EXACT", "", "NR"),
            // `path_prefix`: on a segment boundary.
            ("GET", "/api", "", "prefix"),
            ("GET", "/api/", "", "prefix"),
            ("GET", "/api/users", "", "prefix"),
            ("GET", "/api?q=1", "", "prefix"),
            ("GET", "/api/v2/x?q=1", "", "prefix"),
            ("GET", "/apiv2", "", "NR"),
            ("GET", "/ap", "", "NR"),
            ("GET", "/API", "", "NR"),
            // Not percent-decoded: `/%61pi` is not `/api`.
            ("GET", "/%61pi", "", "NR"),
            // A prefix ending in `/` needs nothing more.
            ("GET", "/docs/", "", "slash-prefix"),
            ("GET", "/docs/guide", "", "slash-prefix"),
            ("GET", "/docs", "", "NR"),
            ("GET", "/docsx", "", "NR"),
            // `path_starts_with`: raw bytes, no boundary.
            ("GET", "/raw", "", "raw"),
            ("GET", "/rawdata", "", "raw"),
            ("GET", "/raw/x?y", "", "raw"),
            ("GET", "/ra", "", "NR"),
            // `path_regex`: the whole path, not a part of it.
            ("GET", "/users/42", "", "regex"),
            ("GET", "/users/42?tab=1", "", "regex"),
            ("GET", "/users/42/edit", "", "NR"),
            ("GET", "/x/users/42", "", "NR"),
            ("GET", "/users/", "", "NR"),
            ("GET", "/users/4a", "", "NR"),
        ],
    );
}

#[test]
fn method_conditions_match_one_method_or_any_of_a_list_case_sensitively() {
    let proxy = answering_proxy(&[
        ("get", "{ path: /m, method: GET }"),
        ("writes", "{ path: /m, method: [POST, PUT] }"),
    ]);
    check_table(
        &proxy,
        &[
            ("GET", "/m", "", "get"),
            ("POST", "/m", "", "writes"),
            ("PUT", "/m", "", "writes"),
            ("DELETE", "/m", "", "NR"),
            ("PATCH", "/m", "", "NR"),
            ("get", "/m", "", "NR"),
            ("GET", "/n", "", "NR"),
        ],
    );
}

#[test]
fn header_conditions_match_exact_prefix_suffix_regex_presence_absence_and_inversion() {
    let proxy = answering_proxy(&[
        (
            "exact",
            "{ path: /h/exact, headers: { x-a: { exact: one } } }",
        ),
        (
            "shorthand",
            "{ path: /h/short, headers: { x-canary: \"true\" } }",
        ),
        (
            "prefix",
            "{ path: /h/prefix, headers: { x-a: { prefix: pre } } }",
        ),
        (
            "suffix",
            "{ path: /h/suffix, headers: { x-a: { suffix: fix } } }",
        ),
        (
            "regex",
            "{ path: /h/regex, headers: { x-a: { regex: \"v[0-9]+\" } } }",
        ),
        (
            "present",
            "{ path: /h/present, headers: { x-a: { present: true } } }",
        ),
        (
            "absent",
            "{ path: /h/absent, headers: { x-a: { absent: true } } }",
        ),
        (
            "not-present",
            "{ path: /h/not-present, headers: { x-a: { present: false } } }",
        ),
        (
            "inverted",
            "{ path: /h/invert, headers: { x-a: { exact: one, invert: true } } }",
        ),
        ("both", "{ path: /h/both, headers: { x-a: one, X-B: two } }"),
    ]);
    check_table(
        &proxy,
        &[
            ("GET", "/h/exact", "x-a: one", "exact"),
            ("GET", "/h/exact", "X-A: one", "exact"),
            ("GET", "/h/exact", "x-a: One", "NR"),
            ("GET", "/h/exact", "x-a: one two", "NR"),
            ("GET", "/h/exact", "x-b: one", "NR"),
            ("GET", "/h/exact", "", "NR"),
            // Several fields of one name: any of them may satisfy it.
            ("GET", "/h/exact", "x-a: zero|x-a: one", "exact"),
            // A string is `exact`.
            ("GET", "/h/short", "x-canary: true", "shorthand"),
            ("GET", "/h/short", "x-canary: false", "NR"),
            ("GET", "/h/short", "x-canary: truex", "NR"),
            ("GET", "/h/prefix", "x-a: prefix", "prefix"),
            ("GET", "/h/prefix", "x-a: pre", "prefix"),
            ("GET", "/h/prefix", "x-a: apre", "NR"),
            ("GET", "/h/suffix", "x-a: prefix", "suffix"),
            ("GET", "/h/suffix", "x-a: fix", "suffix"),
            ("GET", "/h/suffix", "x-a: fixed", "NR"),
            // A regex must match the whole value.
            ("GET", "/h/regex", "x-a: v12", "regex"),
            ("GET", "/h/regex", "x-a: v12x", "NR"),
            ("GET", "/h/regex", "x-a: xv12", "NR"),
            ("GET", "/h/regex", "x-a: v", "NR"),
            ("GET", "/h/present", "x-a: anything", "present"),
            ("GET", "/h/present", "x-a:", "present"),
            ("GET", "/h/present", "x-b: anything", "NR"),
            ("GET", "/h/absent", "", "absent"),
            ("GET", "/h/absent", "x-b: v", "absent"),
            ("GET", "/h/absent", "x-a: v", "NR"),
            ("GET", "/h/not-present", "", "not-present"),
            ("GET", "/h/not-present", "x-a: v", "NR"),
            // `invert` negates the condition's result.
            ("GET", "/h/invert", "x-a: two", "inverted"),
            ("GET", "/h/invert", "", "inverted"),
            ("GET", "/h/invert", "x-a: one", "NR"),
            // Every condition must hold; names are case-insensitive.
            ("GET", "/h/both", "x-a: one|x-b: two", "both"),
            ("GET", "/h/both", "x-a: one", "NR"),
            ("GET", "/h/both", "x-b: two", "NR"),
        ],
    );
}

#[test]
fn query_conditions_match_exact_regex_and_present_parameters_as_sent() {
    let proxy = answering_proxy(&[
        ("exact", "{ path: /q/exact, query: { id: \"42\" } }"),
        (
            "exact-map",
            "{ path: /q/map, query: { id: { exact: \"42\" } } }",
        ),
        (
            "regex",
            "{ path: /q/regex, query: { id: { regex: \"[0-9]+\" } } }",
        ),
        (
            "present",
            "{ path: /q/present, query: { debug: { present: true } } }",
        ),
        ("empty", "{ path: /q/empty, query: { flag: \"\" } }"),
        ("two", "{ path: /q/two, query: { a: \"1\", b: \"2\" } }"),
    ]);
    check_table(
        &proxy,
        &[
            ("GET", "/q/exact?id=42", "", "exact"),
            ("GET", "/q/exact?a=1&id=42&b=2", "", "exact"),
            ("GET", "/q/exact?id=43", "", "NR"),
            ("GET", "/q/exact?id=420", "", "NR"),
            ("GET", "/q/exact?xid=42", "", "NR"),
            ("GET", "/q/exact", "", "NR"),
            // Values are compared as sent, not percent-decoded.
            ("GET", "/q/exact?id=%342", "", "NR"),
            ("GET", "/q/map?id=42", "", "exact-map"),
            ("GET", "/q/map?id=4", "", "NR"),
            ("GET", "/q/regex?id=123", "", "regex"),
            ("GET", "/q/regex?id=12a", "", "NR"),
            ("GET", "/q/regex?id=", "", "NR"),
            ("GET", "/q/present?debug", "", "present"),
            ("GET", "/q/present?debug=", "", "present"),
            ("GET", "/q/present?debug=1", "", "present"),
            ("GET", "/q/present?x=1&debug", "", "present"),
            ("GET", "/q/present?debugx=1", "", "NR"),
            ("GET", "/q/present", "", "NR"),
            // A parameter without `=` has the empty value.
            ("GET", "/q/empty?flag", "", "empty"),
            ("GET", "/q/empty?flag=", "", "empty"),
            ("GET", "/q/empty?flag=1", "", "NR"),
            ("GET", "/q/two?b=2&a=1", "", "two"),
            ("GET", "/q/two?a=1", "", "NR"),
        ],
    );
}

#[test]
fn the_first_matching_route_takes_the_request_whatever_the_others() {
    // Two routes that both match GET /a/x: the first one listed wins...
    let proxy = answering_proxy(&[
        ("by-path", "{ path_prefix: /a }"),
        ("by-method", "{ method: GET }"),
    ]);
    check_table(
        &proxy,
        &[
            ("GET", "/a/x", "", "by-path"),
            ("POST", "/a", "", "by-path"),
            ("GET", "/b", "", "by-method"),
            ("POST", "/b", "", "NR"),
        ],
    );
    // ...and in the other order, the other one.
    let proxy = answering_proxy(&[
        ("by-method", "{ method: GET }"),
        ("by-path", "{ path_prefix: /a }"),
    ]);
    check_table(
        &proxy,
        &[
            ("GET", "/a/x", "", "by-method"),
            ("POST", "/a/x", "", "by-path"),
        ],
    );
    // Order holds across the index: a wildcard host before an exact host,
    // a regex before an exact path, a host-less prefix before a host.
    let proxy = answering_proxy(&[
        ("wildcard-first", "{ host: \"*.example.com\", path: /x }"),
        ("exact-host", "{ host: shop.example.com }"),
        ("regex-first", "{ path_regex: \"/p/[a-z]+\", method: GET }"),
        ("exact-path", "{ path: /p/abc }"),
        ("any-host-prefix", "{ path_prefix: /api, method: GET }"),
        ("host-and-path", "{ host: shop2.example.com, path: /api/x }"),
    ]);
    check_table(
        &proxy,
        &[
            ("GET", "/x", "host: shop.example.com", "wildcard-first"),
            ("GET", "/y", "host: shop.example.com", "exact-host"),
            ("GET", "/p/abc", "", "regex-first"),
            ("POST", "/p/abc", "", "exact-path"),
            (
                "GET",
                "/api/x",
                "host: shop2.example.com",
                "any-host-prefix",
            ),
            ("POST", "/api/x", "host: shop2.example.com", "host-and-path"),
        ],
    );
}

#[test]
fn a_request_no_route_matches_is_answered_404_nr_without_reaching_an_upstream() {
    let up = named_upstream("app");
    let proxy = Proxy::start(
        "epoll",
        &config(
            "",
            "- { name: only, match: { path: /only }, cluster: app }",
            &clusters(&[("app", up.addr)]),
        ),
    );
    let mut c = http::connect(proxy.listener("web"));
    let r = ask(&mut c, "GET", "/other", &[], b"").unwrap();
    assert_eq!(r.status, 404, "{}", r.head);
    assert_eq!(r.text(), NO_ROUTE);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{}",
        r.head
    );
    // The connection goes on, and a matching request still goes through.
    let r = ask(&mut c, "POST", "/elsewhere", &[], b"a body").unwrap();
    assert_eq!((r.status, r.text()), (404, NO_ROUTE.to_owned()));
    let r = ask(&mut c, "GET", "/only", &[], b"").unwrap();
    assert_eq!((r.status, r.text()), (200, "app".to_owned()), "{}", r.head);
    assert_eq!(up.request_count(), 1, "{:?}", up.request_lines());
    let line = proxy
        .wait_log(Duration::from_secs(5), |v| {
            v["message"] == "request" && v["path"] == "/other"
        })
        .unwrap_or_else(|| panic!("no access-log line:\n{}", proxy.log_text()));
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["flags"], "NR", "{line}");
}

// ---------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------

on_both_engines! {
    fn a_90_10_split_over_10000_requests_on_2_workers_is_within_4_sigma(engine) {
        let (v1, v2) = (named_upstream("v1"), named_upstream("v2"));
        let proxy = Proxy::start(
            engine,
            &config(
                "",
                "- { name: product, match: { path_prefix: /product }, split: [ { cluster: v1, weight: 90 }, { cluster: v2, weight: 10 } ] }",
                &clusters(&[("v1", v1.addr), ("v2", v2.addr)]),
            ),
        );
        // 16 keep-alive connections, spread by the kernel over both workers.
        let counts = count_answers(proxy.listener("web"), 16, 625, "/product/x");
        let (n1, n2) = (counts.get("v1").copied().unwrap_or(0), counts.get("v2").copied().unwrap_or(0));
        assert_eq!(n1 + n2, 10_000, "{counts:?}");
        // sigma = sqrt(10000 * 0.1 * 0.9) = 30: 1000 +- 120.
        assert!(within_sigma(n2, 10_000, 0.1, 4.0), "v2 got {n2} of 10000 (expected 1000 +- 120): {counts:?}");
        assert_eq!((v1.request_count(), v2.request_count()), (n1, n2));
        // The split decisions are countable per cluster.
        let text = proxy.metrics();
        let labels = |cluster| [("listener", "web"), ("route", "product"), ("cluster", cluster)];
        let wait = |cluster: &'static str, n: usize| {
            wait_metric_sum(&proxy, "ringmesh_http_requests_total", &labels(cluster), |v| v == n as f64)
        };
        assert_eq!(wait("v1", n1), n1 as f64, "{text}");
        assert_eq!(wait("v2", n2), n2 as f64, "{text}");
    }
}

#[test]
fn a_sticky_split_keeps_each_header_or_cookie_value_on_one_cluster() {
    let (v1, v2) = (named_upstream("v1"), named_upstream("v2"));
    let routes = "
        - { name: by-user, match: { path: /u }, split: [ { cluster: v1, weight: 50 }, { cluster: v2, weight: 50 } ], sticky: { header: x-user } }
        - { name: by-session, match: { path: /s }, split: [ { cluster: v1, weight: 50 }, { cluster: v2, weight: 50 } ], sticky: { cookie: session } }
        - { name: all-v2, match: { path: /z }, split: [ { cluster: v1, weight: 0 }, { cluster: v2, weight: 100 } ], sticky: { header: x-user } }
    ";
    let proxy = Proxy::start(
        "uring",
        &config("", routes, &clusters(&[("v1", v1.addr), ("v2", v2.addr)])),
    );
    let addr = proxy.listener("web");
    // Half the requests on 4 keep-alive connections, half on a new
    // connection each: each value is seen by both workers.
    let mut kept: Vec<Conn> = (0..4).map(|_| http::connect(addr)).collect();
    let mut send = |i: usize, target: &str, headers: &[(&str, &str)]| -> String {
        let sent = if i % 2 == 0 {
            ask(&mut kept[i / 2 % 4], "GET", target, headers, b"")
        } else {
            ask(&mut http::connect(addr), "GET", target, headers, b"")
        };
        let r = sent.unwrap_or_else(|e| panic!("{target} {headers:?}: {e}"));
        assert_eq!(r.status, 200, "{}{}", r.head, r.text());
        r.text()
    };
    let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for user in 0..30 {
        let value = format!("user-{user}");
        for i in 0..10 {
            let got = send(i, "/u", &[("x-user", value.as_str())]);
            by_user.entry(value.clone()).or_default().push(got);
        }
    }
    for (user, got) in &by_user {
        assert!(got.iter().all(|g| g == &got[0]), "{user} moved: {got:?}");
    }
    let firsts: Vec<&str> = by_user.values().map(|g| g[0].as_str()).collect();
    assert!(
        firsts.contains(&"v1") && firsts.contains(&"v2"),
        "30 users all on one cluster: {firsts:?}"
    );
    // Without the header: drawn at random, both clusters.
    let anonymous: Vec<String> = (0..60).map(|i| send(i, "/u", &[])).collect();
    assert!(
        anonymous.iter().any(|a| a == "v1") && anonymous.iter().any(|a| a == "v2"),
        "{anonymous:?}"
    );
    // By cookie: the value of `session`, whatever the other cookies.
    let mut by_session = Vec::new();
    for s in 0..30 {
        let cookies = [
            format!("a=1; session=s{s}"),
            format!("session=s{s}"),
            format!("session=s{s}; b={s}"),
            format!("x=y; session=s{s}; z=w"),
        ];
        let got: Vec<String> = (0..8)
            .map(|i| send(i, "/s", &[("Cookie", cookies[i % 4].as_str())]))
            .collect();
        assert!(
            got.iter().all(|g| g == &got[0]),
            "session s{s} moved: {got:?}"
        );
        by_session.push(got[0].clone());
    }
    assert!(
        by_session.iter().any(|a| a == "v1") && by_session.iter().any(|a| a == "v2"),
        "30 sessions all on one cluster: {by_session:?}"
    );
    // A weight of 0 takes nothing, sticky or not.
    for user in 0..20 {
        let value = format!("user-{user}");
        assert_eq!(
            send(user, "/z", &[("x-user", value.as_str())]),
            "v2",
            "{value}"
        );
    }
}

// ---------------------------------------------------------------------------
// Live rollouts
// ---------------------------------------------------------------------------

/// The `product` route's action in one phase of the rollout.
#[derive(Debug, Clone, Copy)]
enum Product {
    Split(u32, u32),
    Only(&'static str),
}

/// Phase 0 is the starting config; phases 1..=20 are the 20 live changes.
const ROLLOUT: [Product; 21] = [
    Product::Split(90, 10),
    Product::Split(50, 50),
    Product::Split(0, 100),
    Product::Split(100, 0),
    Product::Split(90, 10),
    Product::Only("v2"),
    Product::Split(50, 50),
    Product::Only("v1"),
    Product::Split(10, 90),
    Product::Split(0, 100),
    Product::Split(75, 25),
    Product::Split(100, 0),
    Product::Split(1, 1),
    Product::Only("v2"),
    Product::Split(90, 10),
    Product::Split(0, 100),
    Product::Split(50, 50),
    Product::Split(100, 0),
    Product::Split(20, 80),
    Product::Only("v1"),
    Product::Split(0, 100),
];

/// Blue serves phases up to this one, green the later ones.
const LAST_BLUE_PHASE: usize = 10;

fn color(phase: usize) -> &'static str {
    if phase <= LAST_BLUE_PHASE {
        "blue"
    } else {
        "green"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Product,
    Canary,
    Color,
}

/// One request of the rollout's load: the epoch when it was sent and when
/// its answer arrived (even `2k`: phase `k` applied; odd: a change in
/// progress), and the upstream that answered (or the failure).
#[derive(Debug)]
struct Outcome {
    keep_alive: bool,
    start: usize,
    end: usize,
    kind: Kind,
    answer: Result<String, String>,
}

/// Requests until `stop`: kinds in turn, on one keep-alive connection or a
/// new connection each (`Connection: close`).
fn rollout_client(
    addr: SocketAddr,
    keep_alive: bool,
    epoch: &AtomicUsize,
    stop: &AtomicBool,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut conn: Option<Conn> = None;
    let kinds = [Kind::Product, Kind::Product, Kind::Color, Kind::Canary];
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let kind = kinds[i % kinds.len()];
        i += 1;
        let mut headers = vec![("Host", "shop.example.com")];
        if kind == Kind::Canary {
            headers.push(("x-canary", "true"));
        }
        if !keep_alive {
            headers.push(("Connection", "close"));
        }
        let target = if kind == Kind::Color {
            "/color/page"
        } else {
            "/product/item?id=7"
        };
        let start = epoch.load(Ordering::SeqCst);
        let connected = match conn.take() {
            Some(c) => Ok(c),
            None => http::try_connect(addr),
        };
        let result = connected
            .and_then(|mut c| http::request(&mut c, "GET", target, &headers, b"").map(|r| (c, r)));
        let end = epoch.load(Ordering::SeqCst);
        let answer = match result {
            Ok((c, r)) if r.status == 200 => {
                if keep_alive && !r.closes() {
                    conn = Some(c);
                }
                Ok(r.text())
            }
            Ok((_, r)) => Err(format!("{kind:?}: {}{}", r.head, r.text())),
            Err(e) => Err(format!("{kind:?}: {e}")),
        };
        out.push(Outcome {
            keep_alive,
            start,
            end,
            kind,
            answer,
        });
    }
    out
}

#[test]
fn twenty_live_weight_changes_and_a_blue_green_switch_under_load_fail_no_request() {
    let names = ["v1", "v2", "blue", "green"];
    let ups = names.map(named_upstream);
    let cluster_yaml = clusters(
        &names
            .iter()
            .zip(&ups)
            .map(|(n, u)| (*n, u.addr))
            .collect::<Vec<_>>(),
    );
    let phase_config = |phase: usize| {
        let product = match ROLLOUT[phase] {
            Product::Split(a, b) => {
                format!("split: [ {{ cluster: v1, weight: {a} }}, {{ cluster: v2, weight: {b} }} ]")
            }
            Product::Only(c) => format!("cluster: {c}"),
        };
        let routes = format!(
            "- {{ name: canary, match: {{ path_prefix: /product, headers: {{ x-canary: \"true\" }} }}, cluster: v2 }}\n\
             - {{ name: product, match: {{ path_prefix: /product }}, {product} }}\n\
             - {{ name: color, match: {{ path_prefix: /color }}, cluster: {} }}\n",
            color(phase)
        );
        config("", &routes, &cluster_yaml)
    };
    let proxy = Proxy::start("uring", &phase_config(0));
    let addr = proxy.listener("web");
    let epoch = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // 4 keep-alive clients and 4 clients with a new connection per request,
    // for the whole test.
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let (epoch, stop) = (epoch.clone(), stop.clone());
            thread::spawn(move || rollout_client(addr, t % 2 == 0, &epoch, &stop))
        })
        .collect();
    let phase_time = Duration::from_millis(350);
    let mut rejected = None;
    for phase in 1..ROLLOUT.len() {
        thread::sleep(phase_time);
        epoch.fetch_add(1, Ordering::SeqCst);
        let r = proxy.put_config(&phase_config(phase));
        epoch.fetch_add(1, Ordering::SeqCst);
        if r.status != 200 {
            rejected = Some(format!("change {phase}: {} {}", r.status, r.body));
            break;
        }
    }
    thread::sleep(phase_time);
    stop.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    assert_eq!(rejected, None, "a rollout step was refused");
    assert_eq!(
        proxy.get("/config").json()["version"],
        ROLLOUT.len(),
        "every change applied"
    );

    // Zero failed requests: every answer a 200 from a legitimate upstream.
    let failures: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g.:\n{}",
        failures.len(),
        outcomes.len(),
        failures
            .iter()
            .take(20)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for keep_alive in [true, false] {
        let n = outcomes
            .iter()
            .filter(|o| o.keep_alive == keep_alive)
            .count();
        assert!(n > 100, "only {n} requests with keep_alive {keep_alive}");
    }
    let mut wrong = Vec::new();
    for o in &outcomes {
        let got = o.answer.as_deref().unwrap_or("");
        let ok = match o.kind {
            // The header canary goes to v2 in every phase.
            Kind::Canary => got == "v2",
            Kind::Product => got == "v1" || got == "v2",
            Kind::Color => got == "blue" || got == "green",
        };
        if !ok {
            wrong.push(format!("{o:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong upstreams:\n{}", wrong.join("\n"));

    // After each change, requests that ran wholly within one phase (sent
    // after its PUT returned, answered before the next PUT was sent) follow
    // that phase's config.
    let mut report = Vec::new();
    let mut mismatches = Vec::new();
    for (phase, product) in ROLLOUT.iter().enumerate() {
        let within: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.start == 2 * phase && o.end == 2 * phase)
            .collect();
        let count = |kind: Kind, answer: &str| {
            within
                .iter()
                .filter(|o| o.kind == kind && o.answer.as_deref() == Ok(answer))
                .count()
        };
        let (n1, n2) = (count(Kind::Product, "v1"), count(Kind::Product, "v2"));
        let n = n1 + n2;
        report.push(format!("phase {phase} {product:?}: v1 {n1}, v2 {n2}"));
        if n < 10 {
            mismatches.push(format!(
                "phase {phase}: only {n} product requests ran within it"
            ));
        }
        let fits = match *product {
            Product::Only("v1") | Product::Split(_, 0) => n2 == 0,
            Product::Only(_) | Product::Split(0, _) => n1 == 0,
            // Loose: 5 sigma, plus 2 for the few requests of a short phase.
            Product::Split(a, b) => {
                let p = f64::from(b) / f64::from(a + b);
                let sigma = (n as f64 * p * (1.0 - p)).sqrt();
                (n2 as f64 - n as f64 * p).abs() <= 5.0 * sigma + 2.0
            }
        };
        if !fits {
            mismatches.push(format!(
                "phase {phase} {product:?}: v1 {n1}, v2 {n2} does not fit"
            ));
        }
        let other = if color(phase) == "blue" {
            "green"
        } else {
            "blue"
        };
        let stray = count(Kind::Color, other);
        if stray > 0 || count(Kind::Color, color(phase)) == 0 {
            mismatches.push(format!(
                "phase {phase}: {stray} /color requests on {other}, {} on {}",
                count(Kind::Color, color(phase)),
                color(phase)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\nper phase:\n{}",
        mismatches.join("\n"),
        report.join("\n")
    );
    println!(
        "{} requests, none failed; per phase:\n{}",
        outcomes.len(),
        report.join("\n")
    );
}

#[test]
fn a_rejected_route_config_changes_nothing() {
    let up = named_upstream("app");
    let good = config(
        "",
        "- { name: api, match: { path_prefix: /api }, cluster: app }",
        &clusters(&[("app", up.addr)]),
    );
    let proxy = Proxy::start("epoll", &good);
    let bad = good.replace(
        "match: { path_prefix: /api }",
        "match: { path_regex: \"/api/(\" }",
    );
    let r = proxy.put_config(&bad);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error_paths(),
        ["listeners[0].routes[0].match.path_regex"],
        "{}",
        r.body
    );
    let mut c = http::connect(proxy.listener("web"));
    let r = ask(&mut c, "GET", "/api/x", &[], b"").unwrap();
    assert_eq!((r.status, r.text()), (200, "app".to_owned()));
    assert_eq!(proxy.get("/config").json()["version"], 1);
}

#[test]
fn sighup_switches_blue_to_green_for_the_next_request_on_a_kept_connection() {
    let (blue, green) = (named_upstream("blue"), named_upstream("green"));
    let cluster_yaml = clusters(&[("blue", blue.addr), ("green", green.addr)]);
    let with = |color: &str| {
        let route = format!("- {{ name: app, match: {{ path_prefix: / }}, cluster: {color} }}");
        config("", &route, &cluster_yaml)
    };
    let proxy = Proxy::start("uring", &with("blue"));
    let mut c = http::connect(proxy.listener("web"));
    assert_eq!(ask(&mut c, "GET", "/x", &[], b"").unwrap().text(), "blue");
    std::fs::write(&proxy.config_path, with("green")).unwrap();
    proxy.signal(libc::SIGHUP);
    let applied = proxy.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "configuration applied" && v["version"] == 2
    });
    assert!(applied.is_some(), "{}", proxy.log_text());
    assert_eq!(ask(&mut c, "GET", "/x", &[], b"").unwrap().text(), "green");
}

// ---------------------------------------------------------------------------
// Rewrites, redirects, direct responses
// ---------------------------------------------------------------------------

#[test]
fn rewrites_change_the_path_and_host_the_upstream_sees_and_keep_the_query() {
    let echo = echo_upstream("echo");
    let (a, b) = (echo_upstream("echo-a"), echo_upstream("echo-b"));
    let routes = r#"
        - { name: prefix, match: { path_prefix: /shop }, rewrite: { path_prefix: /store }, cluster: echo }
        - { name: raw, match: { path_starts_with: /raw }, rewrite: { path_prefix: /r }, cluster: echo }
        - { name: exact, match: { path: /exact }, rewrite: { path_prefix: /new }, cluster: echo }
        - { name: regex, match: { path_prefix: /users }, rewrite: { path_regex: { pattern: "^/users/([0-9]+)/profile$", substitution: "/profiles/$1" } }, cluster: echo }
        - { name: every, match: { path_prefix: /dash }, rewrite: { path_regex: { pattern: "-", substitution: "_" } }, cluster: echo }
        - { name: named, match: { path_prefix: /orders }, rewrite: { path_regex: { pattern: "/orders/(?P<id>[0-9]+)", substitution: "/o/${id}" } }, cluster: echo }
        - { name: host, match: { path_prefix: /h }, rewrite: { host: shop.internal }, cluster: echo }
        - { name: strip, match: { path_prefix: /strip }, rewrite: { path_prefix: /, host: shop.internal }, cluster: echo }
        - { name: from-cluster, match: { path_prefix: /split }, rewrite: { host_from_cluster: true }, split: [ { cluster: echo-a, weight: 1 }, { cluster: echo-b, weight: 1 } ] }
    "#;
    let proxy = Proxy::start(
        "uring",
        &config(
            "",
            routes,
            &clusters(&[("echo", echo.addr), ("echo-a", a.addr), ("echo-b", b.addr)]),
        ),
    );
    let mut c = http::connect(proxy.listener("web"));
    // (sent, path the upstream sees, Host it sees)
    let kept = "shop.example.com";
    let cases = [
        (
            "/shop/items?color=red&size=m",
            "/store/items?color=red&size=m",
            kept,
        ),
        ("/shop", "/store", kept),
        ("/shop/", "/store/", kept),
        ("/shop?x=1", "/store?x=1", kept),
        ("/rawdata?k=v", "/rdata?k=v", kept),
        ("/raw/x", "/r/x", kept),
        ("/exact?q=1", "/new?q=1", kept),
        ("/users/42/profile?tab=1", "/profiles/42?tab=1", kept),
        ("/users/abc", "/users/abc", kept),
        // Every match in the path is replaced; the query is not the path.
        ("/dash/a-b-c?q=x-y", "/dash/a_b_c?q=x-y", kept),
        ("/orders/7/items", "/o/7/items", kept),
        ("/h/x?y=1", "/h/x?y=1", "shop.internal"),
        // The README's example: a prefix stripped to `/`, one slash kept.
        ("/strip/items?x=1", "/items?x=1", "shop.internal"),
        ("/strip", "/", "shop.internal"),
    ];
    let mut wrong = Vec::new();
    for (sent, want, host) in cases {
        let seen = Seen::of(&ask(&mut c, "GET", sent, &[("Host", kept)], b"").unwrap());
        if seen.path() != want {
            wrong.push(format!(
                "{sent}: upstream saw {}, expected {want}",
                seen.path()
            ));
        }
        if seen.values("host") != [host] {
            wrong.push(format!(
                "{sent}: upstream saw Host {:?}, expected {host}",
                seen.values("host")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // host_from_cluster: the Host is the name of the cluster the split chose.
    let mut chosen = BTreeMap::new();
    for i in 0..40 {
        let seen = Seen::of(
            &ask(
                &mut c,
                "GET",
                &format!("/split/{i}"),
                &[("Host", "shop.example.com")],
                b"",
            )
            .unwrap(),
        );
        assert_eq!(seen.values("host"), [seen.upstream()], "request {i}");
        *chosen.entry(seen.upstream().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        chosen.len(),
        2,
        "both clusters chosen in 40 requests: {chosen:?}"
    );
}

#[test]
fn redirects_answer_the_configured_status_and_location() {
    let unused = helpers::tcp::closed_port();
    let routes = "
        - { name: to-https, match: { host: example.com }, redirect: { scheme: https } }
        - { name: https-port, match: { host: secure.test }, redirect: { scheme: https, port: 8443, status: 302 } }
        - { name: host, match: { path_prefix: /moved }, redirect: { host: new.example.com, status: 302 } }
        - { name: port, match: { path_prefix: /port }, redirect: { port: 8443, status: 303 } }
        - { name: path, match: { path: /old-page }, redirect: { path: /new-page, status: 307 } }
        - { name: prefix, match: { path_prefix: /v1 }, redirect: { prefix: /v2, status: 308 } }
        - { name: strip, match: { path_prefix: /strip }, redirect: { path: /clean, strip_query: true } }
        - { name: raw-prefix, match: { path_starts_with: /old }, redirect: { prefix: /new, status: 301 } }
    ";
    let proxy = Proxy::start(
        "epoll",
        &config("", routes, &clusters(&[("unused", unused)])),
    );
    // (Host, target, status, Location): what is not configured is kept
    // from the request; a scheme change without a port drops the port.
    let cases = [
        (
            "example.com:8080",
            "/a/b?x=1",
            301,
            "https://example.com/a/b?x=1",
        ),
        ("example.com", "/", 301, "https://example.com/"),
        (
            "secure.test:8080",
            "/p?q",
            302,
            "https://secure.test:8443/p?q",
        ),
        (
            "old.test:8080",
            "/moved/x?y=2",
            302,
            "http://new.example.com:8080/moved/x?y=2",
        ),
        ("old.test", "/moved", 302, "http://new.example.com/moved"),
        ("a.test:8080", "/port/x", 303, "http://a.test:8443/port/x"),
        ("a.test", "/port", 303, "http://a.test:8443/port"),
        ("a.test", "/old-page?x=1", 307, "http://a.test/new-page?x=1"),
        (
            "a.test",
            "/v1/users?id=3",
            308,
            "http://a.test/v2/users?id=3",
        ),
        ("a.test", "/v1", 308, "http://a.test/v2"),
        ("a.test", "/strip/me?a=1&b=2", 301, "http://a.test/clean"),
        ("a.test", "/oldies/x", 301, "http://a.test/newies/x"),
    ];
    // All on one keep-alive connection: each redirect is properly framed.
    let mut c = http::connect(proxy.listener("web"));
    let mut wrong = Vec::new();
    for (host, target, status, location) in cases {
        let r = ask(&mut c, "GET", target, &[("Host", host)], b"")
            .unwrap_or_else(|e| panic!("{host}{target}: {e}"));
        if r.status != status || r.header("location") != Some(location) {
            wrong.push(format!(
                "{host} {target}: expected {status} {location}, got {} {:?}",
                r.status,
                r.header("location")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_direct_response_answers_its_status_and_body_as_text_plain() {
    let up = named_upstream("app");
    let routes = r#"
        - { name: maint, match: { path_prefix: /maint }, direct_response: { status: 503, body: "down for maintenance\n" } }
        - { name: empty, match: { path: /empty }, direct_response: { status: 200 } }
        - { name: teapot, match: { path: /teapot }, direct_response: { status: 418, body: "short and stout" } }
    "#;
    let proxy = Proxy::start("uring", &config("", routes, &clusters(&[("app", up.addr)])));
    let mut c = http::connect(proxy.listener("web"));
    let cases = [
        ("GET", "/maint/x", &b""[..], 503, "down for maintenance\n"),
        // A request body is read and discarded; the connection goes on.
        (
            "POST",
            "/maint",
            &b"ignored body"[..],
            503,
            "down for maintenance\n",
        ),
        ("GET", "/empty", &b""[..], 200, ""),
        ("GET", "/teapot", &b""[..], 418, "short and stout"),
    ];
    for (method, target, body, status, text) in cases {
        let r = ask(&mut c, method, target, &[], body).unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(
            (r.status, r.text()),
            (status, text.to_owned()),
            "{target}: {}",
            r.head
        );
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "{target}: {}",
            r.head
        );
        assert_eq!(
            r.header("content-length"),
            Some(text.len().to_string().as_str()),
            "{target}: {}",
            r.head
        );
        assert!(!r.closes(), "{target}: {}", r.head);
    }
    assert_eq!(up.accepted(), 0, "no upstream involved");
}

#[test]
fn a_route_timeout_overrides_the_listeners() {
    let up = Upstream::start(|_| Reply::ok("late").delay(Duration::from_secs(2)));
    let routes = "
        - { name: quick, match: { path_prefix: /quick }, cluster: app, timeout: 200ms }
        - { name: patient, match: { path_prefix: /patient }, cluster: app }
    ";
    let proxy = Proxy::start(
        "epoll",
        &config("timeout: 10s", routes, &clusters(&[("app", up.addr)])),
    );
    let mut c = http::connect(proxy.listener("web"));
    let started = Instant::now();
    let r = ask(&mut c, "GET", "/quick", &[], b"").unwrap();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(r.text().contains("(UT)"), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "answered at the route's timeout, not the upstream's answer: {:?}",
        started.elapsed()
    );
    let r = ask(&mut c, "GET", "/patient", &[], b"").unwrap();
    assert_eq!((r.status, r.text()), (200, "late".to_owned()), "{}", r.head);
}

// ---------------------------------------------------------------------------
// Header operations
// ---------------------------------------------------------------------------

#[test]
fn header_operations_run_listener_then_route_remove_set_add_on_requests_and_responses() {
    let up = Upstream::start(|r| {
        Reply::ok(echo_json("up", r))
            .header("x-upstream-secret", "s")
            .header("x-internal", "i")
            .header("x-multi", "one")
            .header("x-served-by", "upstream")
    });
    let listener = "
        request_headers: { set: { x-env: prod, x-who: listener, x-lr: listener }, add: { x-list: l }, remove: [x-drop-listener] }
        response_headers: { set: { x-served-by: ringmesh }, remove: [x-internal] }
    ";
    let routes = "
        - name: ops
          match: { path_prefix: /ops }
          request_headers:
            set: { x-who: route, x-forwarded-proto: https, x-sa: s }
            add: { x-tag: route-tag, x-sa: a, x-order: added }
            remove: [x-secret, x-lr, x-order]
          response_headers: { set: { x-route: ops }, add: { x-multi: two }, remove: [x-upstream-secret] }
          cluster: up
        - { name: direct, match: { path: /direct }, direct_response: { status: 200, body: d }, response_headers: { set: { x-route: direct }, add: { x-extra: e } } }
        - { name: moved, match: { path: /moved }, redirect: { path: /elsewhere }, response_headers: { set: { x-route: moved } } }
        - { name: plain, match: { path_prefix: /plain }, cluster: up }
    ";
    let proxy = Proxy::start(
        "uring",
        &config(listener, routes, &clusters(&[("up", up.addr)])),
    );
    let mut c = http::connect(proxy.listener("web"));
    let client_fields = [
        ("x-who", "client"),
        ("x-tag", "client-tag"),
        ("x-secret", "s3cret"),
        ("x-drop-listener", "bye"),
        ("x-order", "client"),
        ("x-env", "client-env"),
        ("x-kept", "yes"),
    ];
    let mut wrong = Vec::new();
    let mut check = |what: &str, got: Vec<String>, want: &[&str]| {
        if got != want {
            wrong.push(format!("{what}: {got:?}, expected {want:?}"));
        }
    };
    let r = ask(&mut c, "GET", "/ops/x", &client_fields, b"").unwrap();
    let seen = Seen::of(&r);
    // The listener's `set` replaces the client's field.
    check("/ops upstream x-env", seen.values("x-env"), &["prod"]);
    // The route's `set` wins over the listener's.
    check("/ops upstream x-who", seen.values("x-who"), &["route"]);
    // The route's `remove` runs after the listener's `set`.
    check("/ops upstream x-lr", seen.values("x-lr"), &[]);
    check("/ops upstream x-list", seen.values("x-list"), &["l"]);
    check(
        "/ops upstream x-drop-listener",
        seen.values("x-drop-listener"),
        &[],
    );
    check("/ops upstream x-secret", seen.values("x-secret"), &[]);
    // `add` keeps the existing field and appends one.
    check(
        "/ops upstream x-tag",
        seen.values("x-tag"),
        &["client-tag", "route-tag"],
    );
    // Within one side: remove, then set, then add.
    check("/ops upstream x-sa", seen.values("x-sa"), &["s", "a"]);
    check("/ops upstream x-order", seen.values("x-order"), &["added"]);
    // Operations run after the proxy's own fields, so they override them.
    check(
        "/ops upstream x-forwarded-proto",
        seen.values("x-forwarded-proto"),
        &["https"],
    );
    check("/ops upstream x-kept", seen.values("x-kept"), &["yes"]);
    check(
        "/ops client x-served-by",
        values(&r.headers, "x-served-by"),
        &["ringmesh"],
    );
    check(
        "/ops client x-route",
        values(&r.headers, "x-route"),
        &["ops"],
    );
    check(
        "/ops client x-multi",
        values(&r.headers, "x-multi"),
        &["one", "two"],
    );
    check(
        "/ops client x-upstream-secret",
        values(&r.headers, "x-upstream-secret"),
        &[],
    );
    check(
        "/ops client x-internal",
        values(&r.headers, "x-internal"),
        &[],
    );
    // A route without operations gets the listener's only.
    let r = ask(&mut c, "GET", "/plain", &client_fields, b"").unwrap();
    let seen = Seen::of(&r);
    check("/plain upstream x-env", seen.values("x-env"), &["prod"]);
    check("/plain upstream x-who", seen.values("x-who"), &["listener"]);
    check("/plain upstream x-lr", seen.values("x-lr"), &["listener"]);
    check(
        "/plain upstream x-secret",
        seen.values("x-secret"),
        &["s3cret"],
    );
    check(
        "/plain upstream x-tag",
        seen.values("x-tag"),
        &["client-tag"],
    );
    check(
        "/plain client x-served-by",
        values(&r.headers, "x-served-by"),
        &["ringmesh"],
    );
    check("/plain client x-route", values(&r.headers, "x-route"), &[]);
    check(
        "/plain client x-multi",
        values(&r.headers, "x-multi"),
        &["one"],
    );
    check(
        "/plain client x-internal",
        values(&r.headers, "x-internal"),
        &[],
    );
    check(
        "/plain client x-upstream-secret",
        values(&r.headers, "x-upstream-secret"),
        &["s"],
    );
    // Response operations apply to direct responses and redirects...
    let r = ask(&mut c, "GET", "/direct", &[], b"").unwrap();
    assert_eq!((r.status, r.text()), (200, "d".to_owned()), "{}", r.head);
    check(
        "/direct x-route",
        values(&r.headers, "x-route"),
        &["direct"],
    );
    check("/direct x-extra", values(&r.headers, "x-extra"), &["e"]);
    check(
        "/direct x-served-by",
        values(&r.headers, "x-served-by"),
        &["ringmesh"],
    );
    let r = ask(&mut c, "GET", "/moved", &[], b"").unwrap();
    assert_eq!(r.status, 301, "{}", r.head);
    check("/moved x-route", values(&r.headers, "x-route"), &["moved"]);
    check(
        "/moved x-served-by",
        values(&r.headers, "x-served-by"),
        &["ringmesh"],
    );
    // ...not to the proxy's error answers.
    let r = ask(&mut c, "GET", "/nowhere", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (404, NO_ROUTE.to_owned()),
        "{}",
        r.head
    );
    check("404 NR x-served-by", values(&r.headers, "x-served-by"), &[]);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// Mirroring
// ---------------------------------------------------------------------------

/// An upstream that keeps every request it receives, answering `name`.
fn recording_upstream(name: &'static str) -> (Upstream, Arc<Mutex<Vec<Request>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let up = Upstream::start(move |r| {
        sink.lock().unwrap().push(r.clone());
        Reply::ok(name)
    });
    (up, seen)
}

#[test]
fn a_mirror_gets_a_copy_with_a_shadow_authority_and_the_primary_answers_alone() {
    let primary = named_upstream("primary");
    let (shadow, copies) = recording_upstream("shadow");
    let routes = "
        - { name: mirrored, match: { path_prefix: /m }, cluster: primary, mirror: { cluster: shadow } }
        - { name: half, match: { path_prefix: /half }, cluster: primary, mirror: { cluster: shadow, percent: 50 } }
        - { name: none, match: { path_prefix: /none }, cluster: primary, mirror: { cluster: shadow, percent: 0 } }
    ";
    let proxy = Proxy::start(
        "uring",
        &config(
            "",
            routes,
            &clusters(&[("primary", primary.addr), ("shadow", shadow.addr)]),
        ),
    );
    let mut c = http::connect(proxy.listener("web"));
    let copies_of = |prefix: &str| -> Vec<Request> {
        copies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    };
    // The same method, path and body; `-shadow` appended to the host.
    let r = ask(
        &mut c,
        "POST",
        "/m/a?x=1",
        &[("Host", "shop:8080"), ("x-k", "v")],
        b"payload",
    )
    .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "primary".to_owned()),
        "{}",
        r.head
    );
    let r = ask(&mut c, "GET", "/m/b", &[("Host", "shop.example.com")], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "primary".to_owned()),
        "{}",
        r.head
    );
    assert!(
        eventually(Duration::from_secs(5), || copies_of("/m/").len() == 2),
        "copies: {:?}",
        copies_of("/m/")
    );
    let got = copies_of("/m/");
    let post = got
        .iter()
        .find(|r| r.method == "POST")
        .expect("the POST copy");
    assert_eq!(post.path, "/m/a?x=1");
    assert_eq!(post.header("host"), Some("shop-shadow:8080"));
    assert_eq!(post.header("x-k"), Some("v"));
    assert_eq!(post.body, b"payload");
    assert_eq!(
        post.header("connection"),
        Some("close"),
        "{:?}",
        post.headers
    );
    let get = got
        .iter()
        .find(|r| r.method == "GET")
        .expect("the GET copy");
    assert_eq!(
        (get.path.as_str(), get.header("host")),
        ("/m/b", Some("shop.example.com-shadow"))
    );
    // A body over 64 KiB is not mirrored (counted `skipped`); the primary is served.
    let big = vec![b'x'; 100 * 1024];
    let r = ask(&mut c, "POST", "/m/big", &[], &big).unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "primary".to_owned()),
        "{}",
        r.head
    );
    let labels = |route: &'static str, result: &'static str| {
        [("listener", "web"), ("route", route), ("result", result)]
    };
    let family = "ringmesh_http_mirror_requests_total";
    assert_eq!(
        wait_metric_sum(&proxy, family, &labels("mirrored", "sent"), |v| v == 2.0),
        2.0
    );
    assert_eq!(
        wait_metric_sum(&proxy, family, &labels("mirrored", "skipped"), |v| v == 1.0),
        1.0
    );
    // percent 50: about half; percent 0: none.
    for i in 0..200 {
        let r = ask(&mut c, "GET", &format!("/half/{i}"), &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
    }
    for i in 0..50 {
        let r = ask(&mut c, "GET", &format!("/none/{i}"), &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
    }
    let sent = |route| metric_sum(&proxy.metrics(), family, &labels(route, "sent"));
    assert!(
        eventually(Duration::from_secs(5), || sent("half") as usize
            == copies_of("/half/").len()
            && sent("half") > 0.0),
        "half: {} counted sent, {} received",
        sent("half"),
        copies_of("/half/").len()
    );
    thread::sleep(Duration::from_millis(300));
    let n = copies_of("/half/").len();
    // sigma = sqrt(200 * 0.25) ~ 7: 100 +- 35 at 5 sigma.
    assert!(
        within_sigma(n, 200, 0.5, 5.0),
        "percent 50 mirrored {n} of 200"
    );
    assert_eq!(copies_of("/none/").len(), 0, "percent 0 mirrors nothing");
    assert_eq!(sent("none"), 0.0);
    assert_eq!(primary.request_count(), 2 + 1 + 200 + 50);
}

#[test]
fn a_slow_or_dead_shadow_leaves_the_primary_fast_and_successful() {
    let primary = named_upstream("primary");
    let slow = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(5)));
    let dead = helpers::tcp::closed_port();
    let routes = "
        - { name: slow, match: { path_prefix: /slow }, cluster: primary, mirror: { cluster: slow-shadow, max_in_flight: 2 } }
        - { name: dead, match: { path_prefix: /dead }, cluster: primary, mirror: { cluster: dead-shadow } }
    ";
    let cluster_yaml = clusters(&[
        ("primary", primary.addr),
        ("slow-shadow", slow.addr),
        ("dead-shadow", dead),
    ]);
    let proxy = Proxy::start("epoll", &config("", routes, &cluster_yaml));
    let mut c = http::connect(proxy.listener("web"));
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        for prefix in ["/slow", "/dead"] {
            let started = Instant::now();
            let r = ask(&mut c, "GET", &format!("{prefix}/{i}"), &[], b"")
                .unwrap_or_else(|e| panic!("{prefix}/{i}: {e}"));
            slowest = slowest.max(started.elapsed());
            assert_eq!(
                (r.status, r.text()),
                (200, "primary".to_owned()),
                "{prefix}/{i}: {}",
                r.head
            );
        }
    }
    // Far below the shadow's 5 s: the primary never waits for its copy.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest primary request took {slowest:?}"
    );
    let family = "ringmesh_http_mirror_requests_total";
    let labels = |route: &'static str, result: &'static str| {
        [("listener", "web"), ("route", route), ("result", result)]
    };
    // The mirror's own breaker (max_in_flight 2) bounds the copies in
    // flight; the rest are dropped as overflow, never queued.
    let overflow = wait_metric_sum(&proxy, family, &labels("slow", "overflow"), |v| v >= 1.0);
    assert!(overflow >= 1.0, "{}", proxy.metrics());
    assert!(
        slow.request_count() <= 2,
        "{} copies reached the slow shadow at once",
        slow.request_count()
    );
    // Every copy to the dead shadow fails, counted.
    assert_eq!(
        wait_metric_sum(&proxy, family, &labels("dead", "failed"), |v| v == 10.0),
        10.0,
        "{}",
        proxy.metrics()
    );
    assert_eq!(primary.request_count(), 20);
}

// ---------------------------------------------------------------------------
// Visibility
// ---------------------------------------------------------------------------

#[test]
fn get_routes_shows_the_compiled_table_with_hit_counters_and_requests_carry_the_route() {
    let app = named_upstream("app");
    let routes = r#"
        - { name: api, match: { path_prefix: /api }, cluster: app }
        - { name: health, match: { path: /healthz }, direct_response: { status: 200, body: "ok\n" } }
        - { match: { path_prefix: /static }, cluster: app }
    "#;
    let proxy = Proxy::start(
        "uring",
        &config("", routes, &clusters(&[("app", app.addr)])),
    );
    let mut c = http::connect(proxy.listener("web"));
    for target in [
        "/api/a",
        "/api/b",
        "/api/c",
        "/healthz",
        "/static/x",
        "/static/y",
        "/nothing",
    ] {
        ask(&mut c, "GET", target, &[], b"").unwrap();
    }
    let table = |proxy: &Proxy| {
        let v = proxy.get("/routes").json();
        let web = v["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == "web").cloned())
            .unwrap_or_else(|| panic!("no listener web in GET /routes: {v}"));
        (
            v.clone(),
            web["routes"].as_array().cloned().unwrap_or_default(),
        )
    };
    let hits = |routes: &[serde_json::Value]| -> Vec<u64> {
        routes
            .iter()
            .map(|r| r["hits"].as_u64().unwrap_or(u64::MAX))
            .collect()
    };
    let (v, routes) = table(&proxy);
    assert_eq!(v["version"], 1, "{v}");
    let names: Vec<&str> = routes
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?"))
        .collect();
    // Unnamed routes are named by their index.
    assert_eq!(names, ["api", "health", "2"], "{v}");
    let indexes: Vec<u64> = routes
        .iter()
        .map(|r| r["index"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(indexes, [0, 1, 2], "{v}");
    assert!(
        eventually(Duration::from_secs(5), || hits(&table(&proxy).1)
            == [3, 1, 2]),
        "hits: {:?}",
        table(&proxy).0
    );
    for _ in 0..2 {
        ask(&mut c, "GET", "/api/more", &[], b"").unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || hits(&table(&proxy).1)
            == [5, 1, 2]),
        "hits after two more: {:?}",
        table(&proxy).0
    );
    // Hits by cluster, and the requests no route took.
    let (v, routes) = table(&proxy);
    assert_eq!(routes[0]["clusters"]["app"], 5, "{v}");
    let web = v["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "web"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(web["unmatched"], 1, "{v}");
    // The route label on the request metrics.
    for (route, n) in [("api", 5.0), ("health", 1.0), ("2", 2.0)] {
        let labels = [("listener", "web"), ("route", route)];
        let got = wait_metric_sum(&proxy, "ringmesh_http_requests_total", &labels, |v| v == n);
        assert_eq!(got, n, "route {route}: {}", proxy.metrics());
    }
    // And in the access log.
    for (path, route, cluster) in [
        ("/api/a", "api", "app"),
        ("/healthz", "health", "-"),
        ("/static/x", "2", "app"),
    ] {
        let line = proxy
            .wait_log(Duration::from_secs(5), |l| {
                l["message"] == "request" && l["path"] == path
            })
            .unwrap_or_else(|| panic!("no access-log line for {path}:\n{}", proxy.log_text()));
        assert_eq!(line["route"], route, "{line}");
        assert_eq!(line["cluster"], cluster, "{line}");
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Runs `ringmesh validate` on `yaml`; returns (exit code, stderr, file path).
fn validate(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(binary())
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// The 1-based line and column of the first `needle` in `yaml`.
fn at(yaml: &str, needle: &str) -> (usize, usize) {
    let offset = yaml
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{yaml}"));
    position(yaml, offset)
}

/// The 1-based line and column of byte `offset` in `yaml`.
fn position(yaml: &str, offset: usize) -> (usize, usize) {
    let before = &yaml[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Asserts that validation fails with `file:line:col: path: ...message...`
/// where line:col is the first `needle` in `yaml`.
fn assert_error(yaml: &str, needle: &str, path: &str, message: &str) {
    assert_error_with(yaml, needle, path, &[message]);
}

/// Like [`assert_error`], with a message that contains every one of `parts`.
fn assert_error_with(yaml: &str, needle: &str, path: &str, parts: &[&str]) {
    let (line, col) = at(yaml, needle);
    let (code, stderr, file) = validate(yaml);
    assert_eq!(code, 1, "validate must fail:\n{yaml}\n{stderr}");
    let prefix = format!("{file}:{line}:{col}: {path}: ");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && parts.iter().all(|p| l.contains(p))),
        "expected `{prefix}...{}...` in:\n{stderr}\nfor:\n{yaml}",
        parts.join("...")
    );
}

fn assert_valid(yaml: &str) {
    let (code, stderr, _) = validate(yaml);
    assert_eq!(code, 0, "{stderr}\nfor:\n{yaml}");
}

/// A config whose listener `web` has `routes`, with clusters v1 and v2.
fn with_routes(routes: &str) -> String {
    with_listener("", routes)
}

fn with_listener(listener_extra: &str, routes: &str) -> String {
    config(
        listener_extra,
        routes,
        &clusters(&[
            ("v1", "127.0.0.1:8081".parse().unwrap()),
            ("v2", "127.0.0.1:8082".parse().unwrap()),
        ]),
    )
}

#[test]
fn routes_of_every_kind_validate() {
    assert_valid(&with_listener(
        "request_headers: { set: { x-env: prod } }",
        r#"
        - { name: canary, match: { path_prefix: /product, headers: { x-canary: "true" } }, cluster: v2 }
        - { name: product, match: { path_prefix: /product }, split: [ { cluster: v1, weight: 90 }, { cluster: v2, weight: 10 } ], timeout: 2s }
        - { name: old-api, match: { path_prefix: /v1 }, redirect: { prefix: /v2, status: 308 } }
        - { name: health, match: { path: /healthz }, direct_response: { status: 200, body: "ok\n" } }
        - { name: shop, match: { path_prefix: /shop }, rewrite: { path_prefix: /, host: shop.internal }, cluster: v1 }
        - { name: mirror, match: { host: "*.example.com" }, cluster: v1, mirror: { cluster: v2, percent: 0.0001 } }
        - { name: sticky, match: { method: [GET, HEAD] }, split: [ { cluster: v1, weight: 1 }, { cluster: v2, weight: 0 } ], sticky: { cookie: session } }
        - { name: rest, cluster: v1 }
        "#,
    ));
}

#[test]
fn bad_and_oversized_regexes_are_errors_at_their_position() {
    let yaml = with_routes(r#"- { name: r0, match: { path_regex: "/users/([" }, cluster: v1 }"#);
    assert_error(
        &yaml,
        "\"/users/([\"",
        "listeners[0].routes[0].match.path_regex",
        "regex",
    );
    // No backreferences or look-around (linear time).
    let yaml = with_routes(r#"- { name: r0, match: { path_regex: "/(a)\\1" }, cluster: v1 }"#);
    assert_error(
        &yaml,
        "\"/(a)",
        "listeners[0].routes[0].match.path_regex",
        "regex",
    );
    let yaml = with_routes(
        r#"- { name: r0, match: { headers: { x-a: { regex: "(?=a)" } } }, cluster: v1 }"#,
    );
    assert_error(
        &yaml,
        "\"(?=a)\"",
        "listeners[0].routes[0].match.headers.x-a.regex",
        "regex",
    );
    let yaml =
        with_routes(r#"- { name: r0, match: { query: { id: { regex: "[z-a]" } } }, cluster: v1 }"#);
    assert_error(
        &yaml,
        "\"[z-a]\"",
        "listeners[0].routes[0].match.query.id.regex",
        "regex",
    );
    let yaml = with_routes(
        r#"- { name: r0, match: { path_prefix: /a }, rewrite: { path_regex: { pattern: "(", substitution: x } }, cluster: v1 }"#,
    );
    assert_error(
        &yaml,
        "\"(\"",
        "listeners[0].routes[0].rewrite.path_regex.pattern",
        "regex",
    );
    // Over 1024 bytes of pattern.
    let long = format!(
        "- {{ name: r0, match: {{ path_regex: \"/{}\" }}, cluster: v1 }}",
        "a".repeat(1100)
    );
    let yaml = with_routes(&long);
    assert_error(
        &yaml,
        "\"/aaa",
        "listeners[0].routes[0].match.path_regex",
        "1024",
    );
    // Short, but its compiled form is over 64 KiB.
    let yaml =
        with_routes(r#"- { name: r0, match: { path_regex: "a{1000}{1000}" }, cluster: v1 }"#);
    assert_error(
        &yaml,
        "\"a{1000}",
        "listeners[0].routes[0].match.path_regex",
        "compiles to more than",
    );
}

#[test]
fn split_weights_all_zero_or_out_of_range_are_errors() {
    let yaml = with_routes(
        "- { name: r0, split: [ { cluster: v1, weight: 0 }, { cluster: v2, weight: 0 } ] }",
    );
    assert_error(
        &yaml,
        "[ { cluster: v1",
        "listeners[0].routes[0].split",
        "weight",
    );
    let yaml = with_routes(
        "- { name: r0, split: [ { cluster: v1, weight: 1000001 }, { cluster: v2, weight: 1 } ] }",
    );
    assert_error(
        &yaml,
        "1000001",
        "listeners[0].routes[0].split[0].weight",
        "1000000",
    );
    let yaml = with_routes(
        "- { name: r0, split: [ { cluster: v1, weight: 1 }, { cluster: v2, weight: -1 } ] }",
    );
    assert_error(&yaml, "-1", "listeners[0].routes[0].split[1].weight", "");
}

#[test]
fn unknown_clusters_in_cluster_split_and_mirror_are_errors() {
    let yaml = with_routes("- { name: r0, match: { path: /a }, cluster: nope }");
    assert_error(
        &yaml,
        "nope",
        "listeners[0].routes[0].cluster",
        "unknown cluster `nope`",
    );
    let yaml = with_routes(
        "- { name: r0, split: [ { cluster: v1, weight: 1 }, { cluster: gone, weight: 1 } ] }",
    );
    assert_error(
        &yaml,
        "gone",
        "listeners[0].routes[0].split[1].cluster",
        "unknown cluster `gone`",
    );
    let yaml = with_routes("- { name: r0, cluster: v1, mirror: { cluster: ghost } }");
    assert_error(
        &yaml,
        "ghost",
        "listeners[0].routes[0].mirror.cluster",
        "unknown cluster `ghost`",
    );
}

#[test]
fn a_route_needs_exactly_one_action() {
    let yaml = with_routes(
        "- { name: r0, match: { path: /a }, cluster: v1, direct_response: { status: 200 } }",
    );
    assert_error(
        &yaml,
        "{ status: 200 }",
        "listeners[0].routes[0].direct_response",
        "conflicts with `cluster`",
    );
    let yaml = with_routes(
        "- { name: r0, match: { path: /a }, redirect: { path: /b }, split: [ { cluster: v1, weight: 1 } ] }",
    );
    // Reported on the later of the two in the file.
    assert_error(
        &yaml,
        "[ { cluster: v1",
        "listeners[0].routes[0].split",
        "conflicts with `redirect`",
    );
    let yaml = with_routes("- { name: r0, match: { path: /a } }");
    assert_error(
        &yaml,
        "{ name: r0",
        "listeners[0].routes[0]",
        "needs one action",
    );
}

#[test]
fn forwarding_options_on_a_redirect_or_direct_response_route_are_errors() {
    let yaml = with_routes(
        "- { name: r0, match: { path_prefix: /a }, redirect: { host: b.test }, rewrite: { path_prefix: /b } }",
    );
    assert_error(
        &yaml,
        "{ path_prefix: /b }",
        "listeners[0].routes[0].rewrite",
        "not to `redirect`",
    );
    let yaml = with_routes(
        "- { name: r0, match: { path: /a }, direct_response: { status: 200 }, timeout: 2s }",
    );
    assert_error(
        &yaml,
        "2s",
        "listeners[0].routes[0].timeout",
        "direct_response",
    );
    let yaml = with_routes(
        "- { name: r0, match: { path: /a }, redirect: { path: /b }, mirror: { cluster: v2 } }",
    );
    assert_error(
        &yaml,
        "{ cluster: v2 }",
        "listeners[0].routes[0].mirror",
        "redirect",
    );
}

#[test]
fn a_prefix_rewrite_or_redirect_without_a_prefix_or_path_match_is_an_error() {
    let yaml = with_routes(
        r#"- { name: r0, match: { path_regex: "/a/.*" }, rewrite: { path_prefix: /b }, cluster: v1 }"#,
    );
    assert_error(
        &yaml,
        "/b }",
        "listeners[0].routes[0].rewrite.path_prefix",
        "path_prefix",
    );
    let yaml = with_routes(
        "- { name: r0, match: { method: GET }, rewrite: { path_prefix: /b }, cluster: v1 }",
    );
    assert_error(
        &yaml,
        "/b }",
        "listeners[0].routes[0].rewrite.path_prefix",
        "path_prefix",
    );
    let yaml =
        with_routes("- { name: r0, match: { headers: { x-a: b } }, redirect: { prefix: /b } }");
    assert_error(
        &yaml,
        "/b }",
        "listeners[0].routes[0].redirect.prefix",
        "path_prefix",
    );
}

#[test]
fn sticky_without_split_is_an_error() {
    let yaml = with_routes("- { name: r0, cluster: v1, sticky: { header: x-user } }");
    assert_error(
        &yaml,
        "{ header: x-user }",
        "listeners[0].routes[0].sticky",
        "split",
    );
}

#[test]
fn header_operations_on_framing_hop_by_hop_fields_or_host_are_errors() {
    let cases = [
        (
            "request_headers: { set: { content-length: \"5\" } }",
            "content-length",
            "listeners[0].request_headers.set.content-length",
        ),
        (
            "request_headers: { add: { host: other } }",
            "host:",
            "listeners[0].request_headers.add.host",
        ),
        (
            "request_headers: { remove: [transfer-encoding] }",
            "transfer-encoding",
            "listeners[0].request_headers.remove[0]",
        ),
        (
            "response_headers: { set: { connection: close } }",
            "connection:",
            "listeners[0].response_headers.set.connection",
        ),
        (
            "response_headers: { remove: [x-ok, Keep-Alive] }",
            "Keep-Alive",
            "listeners[0].response_headers.remove[1]",
        ),
    ];
    for (listener, needle, path) in cases {
        let yaml = with_listener(listener, "- { name: r0, cluster: v1 }");
        assert_error(&yaml, needle, path, "header operations may not touch");
    }
    let yaml =
        with_routes("- { name: r0, cluster: v1, request_headers: { set: { Upgrade: h2c } } }");
    assert_error(
        &yaml,
        "Upgrade",
        "listeners[0].routes[0].request_headers.set.Upgrade",
        "may not touch `upgrade`",
    );
    let yaml =
        with_routes("- { name: r0, cluster: v1, response_headers: { add: { te: trailers } } }");
    assert_error(
        &yaml,
        "te: trailers",
        "listeners[0].routes[0].response_headers.add.te",
        "may not touch `te`",
    );
}

#[test]
fn two_routes_with_one_name_are_an_error() {
    let yaml = with_routes(
        "
        - { name: same, match: { path: /a }, cluster: v1 }
        - { name: same, match: { path: /b }, cluster: v2 }
        ",
    );
    let (line, col) = position(&yaml, yaml.rfind("same").unwrap());
    let (first_line, _) = at(&yaml, "name: same");
    let (code, stderr, file) = validate(&yaml);
    assert_eq!(code, 1, "{stderr}");
    let prefix = format!("{file}:{line}:{col}: listeners[0].routes[1].name: ");
    assert!(
        stderr.lines().any(|l| l.starts_with(&prefix)
            && l.contains("duplicate route name `same`")
            && l.contains(&format!("line {first_line}"))),
        "expected `{prefix}duplicate route name `same` ... line {first_line}` in:\n{stderr}"
    );
}

#[test]
fn a_route_an_earlier_route_always_takes_is_an_error_naming_both_positions() {
    let cases = [
        // Everything, then anything.
        ("{}", "{ path: /b }"),
        ("{ host: \"*\" }", "{ method: GET }"),
        // A prefix, then a longer prefix or an exact path under it.
        ("{ path_prefix: /api }", "{ path_prefix: /api/v1 }"),
        ("{ path_prefix: /api }", "{ path: /api/users, method: GET }"),
        // A raw prefix covers a segment prefix that starts with it.
        ("{ path_starts_with: /ap }", "{ path_prefix: /api }"),
        // A suffix host covers a name under it; a list covers its subset.
        (
            "{ host: \"*.example.com\" }",
            "{ host: shop.example.com, path: /x }",
        ),
        ("{ host: [a.test, b.test] }", "{ host: b.test }"),
        // Fewer conditions cover more.
        (
            "{ method: [GET, POST] }",
            "{ method: GET, headers: { x-a: b } }",
        ),
        // The same match twice.
        (
            "{ path: /same, headers: { x-a: { prefix: v } } }",
            "{ path: /same, headers: { x-a: { prefix: v } } }",
        ),
    ];
    for (first, shadowed) in cases {
        let yaml = with_routes(&format!(
            "
            - {{ name: r0, match: {first}, cluster: v1 }}
            - {{ name: r1, match: {{ path: /unrelated }}, cluster: v1 }}
            - {{ name: r2, match: {shadowed}, cluster: v2 }}
            "
        ));
        let (line0, _) = at(&yaml, "name: r0");
        // Both positions: route 2's at the start of the line, route 0's in
        // the message.
        assert_error_with(
            &yaml,
            "{ name: r2",
            "listeners[0].routes[2]",
            &[
                &format!("route 2 can never match: route 0 (line {line0}"),
                "matches every request it would",
            ],
        );
    }
}

#[test]
fn overlapping_routes_that_each_can_take_a_request_are_accepted() {
    let cases = [
        (
            "{ path_prefix: /api, method: GET }",
            "{ path_prefix: /api }",
        ),
        ("{ path_prefix: /api/v1 }", "{ path_prefix: /api }"),
        ("{ path_prefix: /api }", "{ path_prefix: /apiv2 }"),
        ("{ host: shop.example.com }", "{ host: \"*.example.com\" }"),
        ("{ host: \"*.example.com\" }", "{ host: example.com }"),
        ("{ headers: { x-canary: \"true\" } }", "{ path: /b }"),
        ("{ path_regex: \"/a/.*\" }", "{ path_prefix: /a }"),
        ("{ method: GET }", "{ method: [GET, POST] }"),
        (
            "{ host: \"shop.example.com:8080\" }",
            "{ host: shop.example.com }",
        ),
    ];
    for (first, second) in cases {
        assert_valid(&with_routes(&format!(
            "
            - {{ name: r0, match: {first}, cluster: v1 }}
            - {{ name: r1, match: {second}, cluster: v2 }}
            "
        )));
    }
}

#[test]
fn only_one_path_condition_per_match() {
    let yaml = with_routes("- { name: r0, match: { path: /a, path_prefix: /a }, cluster: v1 }");
    assert_error(
        &yaml,
        "/a }",
        "listeners[0].routes[0].match.path_prefix",
        "one path condition",
    );
}

#[test]
fn bad_action_values_are_errors() {
    let yaml = with_routes("- { name: r0, redirect: { path: /b, status: 200 } }");
    assert_error(&yaml, "200", "listeners[0].routes[0].redirect.status", "");
    let yaml = with_routes("- { name: r0, redirect: { path: /b, status: 304 } }");
    assert_error(
        &yaml,
        "304",
        "listeners[0].routes[0].redirect.status",
        "301, 302, 303, 307, 308",
    );
    let yaml = with_routes("- { name: r0, direct_response: { status: 99 } }");
    assert_error(
        &yaml,
        "99",
        "listeners[0].routes[0].direct_response.status",
        "",
    );
    let yaml = with_routes("- { name: r0, direct_response: { status: 600 } }");
    assert_error(
        &yaml,
        "600",
        "listeners[0].routes[0].direct_response.status",
        "",
    );
    let big = format!(
        "- {{ name: r0, direct_response: {{ status: 200, body: \"{}\" }} }}",
        "b".repeat(65 * 1024)
    );
    let yaml = with_routes(&big);
    assert_error(
        &yaml,
        "\"bbb",
        "listeners[0].routes[0].direct_response.body",
        "64 KiB",
    );
    let yaml = with_routes("- { name: r0, cluster: v1, mirror: { cluster: v2, percent: 101 } }");
    assert_error(
        &yaml,
        "101",
        "listeners[0].routes[0].mirror.percent",
        "from 0 to 100",
    );
    let yaml = with_routes("- { name: r0, redirect: { scheme: ftp } }");
    assert_error(
        &yaml,
        "ftp",
        "listeners[0].routes[0].redirect.scheme",
        "http or https",
    );
}

#[test]
fn a_listener_has_either_a_cluster_or_routes() {
    let yaml = with_listener("cluster: v1", "- { name: r0, cluster: v1 }");
    assert_error(
        &yaml,
        "v1\n",
        "listeners[0].cluster",
        "either `cluster` (every request goes there) or `routes`, not both",
    );
    let neither = with_routes("- { name: r0, cluster: v1 }")
        .replace("    routes:\n      - { name: r0, cluster: v1 }\n", "");
    assert_error(
        &neither,
        "name: web",
        "listeners[0]",
        "missing required key `cluster` (or `routes`)",
    );
    let empty = with_routes("- { name: r0, cluster: v1 }")
        .replace("routes:\n      - { name: r0, cluster: v1 }", "routes: []");
    assert_error(&empty, "[]", "listeners[0].routes", "`routes` is empty");
}

#[test]
fn routes_on_a_tcp_listener_are_an_error() {
    let yaml = with_routes("- { name: r0, cluster: v1 }").replace("    protocol: http\n", "");
    assert_error(
        &yaml,
        "- { name: r0",
        "listeners[0].routes",
        "`routes` applies to HTTP listeners only",
    );
}

// ---------------------------------------------------------------------------
// Absolute-form targets and a route's own content type
// ---------------------------------------------------------------------------

#[test]
fn an_absolute_form_request_is_routed_and_forwarded_by_its_target_authority() {
    let (public, admin) = (echo_upstream("public"), echo_upstream("admin"));
    let routes = "
        - { name: public, match: { host: public.example.com }, cluster: public }
        - { name: admin, match: { host: admin.example.com }, cluster: admin }
    ";
    let proxy = Proxy::start(
        "epoll",
        &config(
            "",
            routes,
            &clusters(&[("public", public.addr), ("admin", admin.addr)]),
        ),
    );
    let mut c = http::connect(proxy.listener("web"));
    // RFC 9112 §3.2.2: the target's authority wins over a different Host,
    // for routing and for what the upstream is told.
    let r = ask(
        &mut c,
        "GET",
        "http://public.example.com/a?x=1",
        &[("Host", "admin.example.com")],
        b"",
    )
    .expect("answer");
    let seen = Seen::of(&r);
    assert_eq!(seen.upstream(), "public");
    assert_eq!(seen.path(), "/a?x=1", "sent upstream in origin form");
    assert_eq!(seen.values("host"), vec!["public.example.com".to_owned()]);
    // `http://host?q` means the path `/`.
    let r = ask(
        &mut c,
        "GET",
        "http://public.example.com?x=1",
        &[("Host", "public.example.com")],
        b"",
    )
    .expect("answer");
    assert_eq!(Seen::of(&r).path(), "/?x=1");
    // An authority with userinfo is not a host to route by.
    let r = ask(
        &mut c,
        "GET",
        "http://public.example.com@admin.example.com/",
        &[("Host", "x")],
        b"",
    )
    .expect("answer");
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(public.request_count() + admin.request_count(), 2);
}

#[test]
fn a_direct_response_takes_the_content_type_its_route_sets() {
    let routes = r#"
        - name: json
          match: { path: /status }
          direct_response: { status: 200, body: "{}" }
          response_headers: { set: { content-type: application/json } }
    "#;
    let proxy = Proxy::start("epoll", &config("", routes, ""));
    let mut c = http::connect(proxy.listener("web"));
    let r = ask(&mut c, "GET", "/status", &[], b"").expect("answer");
    assert_eq!((r.status, r.text()), (200, "{}".to_owned()));
    let types: Vec<&str> = r
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-type:"))
        .collect();
    assert_eq!(types, vec!["content-type: application/json"], "{}", r.head);
}

#[test]
fn a_proxy_answer_to_a_head_request_closes_the_connection() {
    // The proxy's answers carry a body, which a HEAD client would read as
    // the next response on a kept connection.
    let up = named_upstream("app");
    let proxy = Proxy::start(
        "epoll",
        &config(
            "",
            "- { name: only, match: { path: /only }, cluster: app }",
            &clusters(&[("app", up.addr)]),
        ),
    );
    let mut c = http::connect(proxy.listener("web"));
    let r = ask(&mut c, "HEAD", "/other", &[], b"").expect("answer");
    assert_eq!(r.status, 404, "{}", r.head);
    assert!(r.closes(), "{}", r.head);
}
