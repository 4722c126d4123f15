//! Cost of routing one request, `RouteTable::find`, with 1, 100 and 10,000
//! routes: the index must keep host, exact-path and prefix lookups flat
//! whatever the route count. `cargo bench -p ringmesh-l7 --bench route_match`.
//!
//! Four tables, each hit by a request that only the last route takes:
//! - `host`: every route has its own exact `host` (no path condition);
//! - `exact_path`: every route has its own `path`;
//! - `prefix`: every route has its own `path_prefix`, the request a longer path under the last one;
//! - `regex`: N-1 `path` routes the request does not match, then one
//!   `path_regex` route it falls through to.
//!
//! The request is parsed once, outside the timed loop; only `find` is timed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringmesh_l7::codec::h1::{Field, Limits, RequestHead, Span, parse_request};
use ringmesh_l7::headers::HeaderOps;
use ringmesh_l7::metrics::HttpStatsRegistry;
use ringmesh_l7::route::matcher::{
    HostPattern, PathMatch, RequestMatch, RequestView, compile_regex,
};
use ringmesh_l7::route::{Action, DirectResponse, Route, RouteTable};

const SIZES: [usize; 3] = [1, 100, 10_000];

fn route(stats: &HttpStatsRegistry, i: usize, matcher: RequestMatch) -> Route {
    let name = i.to_string();
    Route {
        local_stats: stats.route("l", &name, "-"),
        rate_limit: None,
        name: Arc::from(name),
        matcher,
        action: Action::Direct(DirectResponse {
            status: 200,
            body: Box::from(&b"ok\n"[..]),
        }),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn bytes(s: String) -> Box<[u8]> {
    s.into_bytes().into_boxed_slice()
}

/// The routes of one kind of table with `n` routes, and the raw request
/// only its last route takes.
fn table(kind: &str, n: usize) -> (RouteTable, String) {
    let stats = HttpStatsRegistry::new(1);
    let last = n - 1;
    let matcher = |i: usize| -> RequestMatch {
        match kind {
            "host" => RequestMatch {
                hosts: vec![HostPattern::parse(&format!("svc-{i}.example.com")).expect("valid")],
                ..Default::default()
            },
            "exact_path" => RequestMatch {
                path: Some(PathMatch::Exact(bytes(format!("/svc/{i}/items")))),
                ..Default::default()
            },
            "prefix" => RequestMatch {
                path: Some(PathMatch::Prefix(bytes(format!("/svc/{i}")))),
                ..Default::default()
            },
            "regex" if i == last => RequestMatch {
                path: Some(PathMatch::Regex(
                    compile_regex("/users/[0-9]+/orders", true).expect("valid"),
                )),
                ..Default::default()
            },
            "regex" => RequestMatch {
                path: Some(PathMatch::Exact(bytes(format!("/svc/{i}/items")))),
                ..Default::default()
            },
            _ => unreachable!("unknown kind {kind}"),
        }
    };
    let routes = (0..n).map(|i| route(&stats, i, matcher(i))).collect();
    let target = match kind {
        "host" => "/svc/items".to_owned(),
        "exact_path" => format!("/svc/{last}/items"),
        "prefix" => format!("/svc/{last}/items/42"),
        _ => "/users/12345/orders".to_owned(),
    };
    let raw = format!(
        "GET {target} HTTP/1.1\r\nHost: svc-{last}.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
    );
    (RouteTable::new(routes), raw)
}

fn parse(raw: &str) -> (RequestHead, Vec<Field>) {
    let (mut fields, mut nominated): (Vec<Field>, Vec<Span>) = (Vec::new(), Vec::new());
    let head = parse_request(
        raw.as_bytes(),
        &Limits::default(),
        &mut fields,
        &mut nominated,
    )
    .expect("valid")
    .expect("complete");
    (head, fields)
}

fn route_match(c: &mut Criterion) {
    for kind in ["host", "exact_path", "prefix", "regex"] {
        let mut group = c.benchmark_group(format!("route_find/{kind}"));
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(50);
        for n in SIZES {
            let (table, raw) = table(kind, n);
            let (head, fields) = parse(&raw);
            let view = RequestView::new(raw.as_bytes(), &head, &fields);
            // The benchmark measures the right thing only if the last route
            // (and only it) takes the request.
            assert_eq!(
                table.find(&view).map(|(i, _)| i),
                Some(n - 1),
                "{kind} x {n}"
            );
            group.bench_with_input(BenchmarkId::from_parameter(n), &view, |b, view| {
                b.iter(|| black_box(&table).find(black_box(view)).map(|(i, _)| i))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, route_match);
criterion_main!(benches);
