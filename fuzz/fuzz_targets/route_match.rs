//! Route matching on arbitrary client bytes: for any request head the
//! parser accepts, the route index finds exactly the route that trying
//! every route in order finds (first match wins), and the rewrites and
//! redirect locations written for it never panic and keep the query.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ringmesh_l7::codec::h1::{self, HEADER_SLOTS, Limits};
use ringmesh_l7::headers::HeaderOps;
use ringmesh_l7::metrics::HttpStatsRegistry;
use ringmesh_l7::route::matcher::{
    HeaderMatch, HostPattern, PathMatch, QueryMatch, RequestMatch, RequestView, ValueTest,
    compile_regex,
};
use ringmesh_l7::route::{Action, DirectResponse, PathRewrite, Route, RouteTable};

fn table() -> RouteTable {
    let stats = HttpStatsRegistry::new(1);
    let b = |s: &str| -> Box<[u8]> { s.as_bytes().into() };
    let host = |h: &str| vec![HostPattern::parse(h).expect("valid")];
    let re = |r: &str| compile_regex(r, true).expect("valid");
    let matches = vec![
        RequestMatch { hosts: host("a.com"), path: Some(PathMatch::Exact(b("/x"))), ..Default::default() },
        RequestMatch { hosts: host("*.a.com:8080"), path: Some(PathMatch::Prefix(b("/api"))), ..Default::default() },
        RequestMatch { path: Some(PathMatch::StartsWith(b("/a"))), methods: vec![b("POST")], ..Default::default() },
        RequestMatch { path: Some(PathMatch::Regex(re("/r/[0-9]+"))), ..Default::default() },
        RequestMatch {
            headers: vec![HeaderMatch { name: b("x-canary"), test: ValueTest::Exact(b("true")), invert: false }],
            ..Default::default()
        },
        RequestMatch {
            headers: vec![HeaderMatch { name: b("x-v"), test: ValueTest::Regex(re("v[12]")), invert: true }],
            query: vec![QueryMatch { name: b("q"), test: ValueTest::Present }],
            ..Default::default()
        },
        RequestMatch { hosts: host("*"), path: Some(PathMatch::Prefix(b("/"))), ..Default::default() },
    ];
    RouteTable::new(
        matches
            .into_iter()
            .enumerate()
            .map(|(i, matcher)| Route {
                name: Arc::from(i.to_string()),
                matcher,
                action: Action::Direct(DirectResponse { status: 200, body: b("") }),
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
                local_stats: stats.route("l", &i.to_string(), "-"),
                rate_limit: None,
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static TABLE: RouteTable = table();
    }
    let (mut fields, mut nominated) = (Vec::with_capacity(HEADER_SLOTS), Vec::new());
    let Ok(Some(head)) = h1::parse_request(data, &Limits::default(), &mut fields, &mut nominated)
    else {
        return;
    };
    let view = RequestView::new(data, &head, &fields);
    TABLE.with(|t| {
        let found = t.find(&view).map(|(i, _)| i);
        let linear = t.routes().iter().position(|r| r.matcher.matches(&view));
        assert_eq!(found, linear);
        if let Some(i) = found {
            let mut out = Vec::new();
            let rw = PathRewrite::Prefix(b"/new".as_slice().into());
            ringmesh_l7::rewrite::path(&mut out, &t.routes()[i].matcher, &rw, &view);
            assert!(out.starts_with(b"/"));
            if !view.query.is_empty() {
                assert!(out.ends_with(view.query));
            }
        }
    });
});
