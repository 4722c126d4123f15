use super::matcher::{HostPattern, PathMatch, RequestMatch, RequestView, compile_regex};
use super::*;
use crate::codec::h1::parse_valid;
use crate::metrics::HttpStatsRegistry;

fn direct(name: &str, matcher: RequestMatch) -> Route {
    let stats = HttpStatsRegistry::new(1).route("l", name, "-");
    Route {
        name: Arc::from(name),
        matcher,
        action: Action::Direct(DirectResponse {
            status: 200,
            body: name.as_bytes().into(),
        }),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        local_stats: stats,
        rate_limit: None,
    }
}

fn find(table: &RouteTable, raw: &str) -> Option<usize> {
    let (head, fields, _) = parse_valid(raw.as_bytes());
    let view = RequestView::new(raw.as_bytes(), &head, &fields);
    let found = table.find(&view).map(|(i, _)| i);
    let linear = table.routes().iter().position(|r| r.matcher.matches(&view));
    assert_eq!(
        found, linear,
        "the index disagrees with trying every route in order: {raw:?}"
    );
    found
}

fn host_path(host: Option<&str>, p: Option<PathMatch>) -> RequestMatch {
    RequestMatch {
        hosts: host
            .map(|h| HostPattern::parse(h).expect("valid"))
            .into_iter()
            .collect(),
        path: p,
        ..Default::default()
    }
}

fn b(s: &str) -> Box<[u8]> {
    s.as_bytes().into()
}

#[test]
fn the_first_matching_route_wins_whatever_bucket_it_is_filed_in() {
    let table = RouteTable::new(vec![
        direct(
            "regex",
            host_path(
                None,
                Some(PathMatch::Regex(
                    compile_regex("/r/[0-9]+", true).expect("valid"),
                )),
            ),
        ),
        direct(
            "shop-exact",
            host_path(Some("shop"), Some(PathMatch::Exact(b("/cart")))),
        ),
        direct(
            "wild-prefix",
            host_path(Some("*.example.com"), Some(PathMatch::Prefix(b("/api")))),
        ),
        direct(
            "any-prefix",
            host_path(None, Some(PathMatch::Prefix(b("/api")))),
        ),
        direct("shop-any", host_path(Some("shop"), None)),
        direct("catch-all", RequestMatch::default()),
    ]);
    let req = |target: &str, host: &str| format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(find(&table, &req("/r/1", "shop")), Some(0));
    assert_eq!(find(&table, &req("/cart", "SHOP:80")), Some(1));
    assert_eq!(find(&table, &req("/api/x", "a.example.com")), Some(2));
    assert_eq!(find(&table, &req("/api/x", "example.com")), Some(3));
    assert_eq!(find(&table, &req("/api", "shop")), Some(3));
    assert_eq!(find(&table, &req("/other", "shop")), Some(4));
    assert_eq!(find(&table, &req("/other", "elsewhere")), Some(5));
}

#[test]
fn no_match_is_none() {
    let table = RouteTable::new(vec![direct("a", host_path(Some("a"), None))]);
    assert_eq!(find(&table, "GET / HTTP/1.1\r\nHost: b\r\n\r\n"), None);
    assert_eq!(find(&table, "GET / HTTP/1.1\r\nHost: \r\n\r\n"), None);
}

/// Many routes of every kind in a shuffled order, and many requests: the
/// index always finds what trying each route in order finds.
#[test]
fn the_index_agrees_with_a_linear_scan_on_generated_tables() {
    let hosts = [
        None,
        Some("a.com"),
        Some("*.a.com"),
        Some("b.a.com:8080"),
        Some("*"),
    ];
    let paths = ["/", "/x", "/x/y", "/xy", "/x/y/z"];
    let mut routes = Vec::new();
    let mut seed = 7u64;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for i in 0..300 {
        let p = paths[next(paths.len())];
        let path = match next(5) {
            0 => None,
            1 => Some(PathMatch::Exact(b(p))),
            2 => Some(PathMatch::Prefix(b(p))),
            3 => Some(PathMatch::StartsWith(b(p))),
            _ => Some(PathMatch::Regex(
                compile_regex(&format!("{p}.*"), true).expect("valid"),
            )),
        };
        let mut m = host_path(hosts[next(hosts.len())], path);
        if next(4) == 0 {
            m.methods.push(b("POST"));
        }
        routes.push(direct(&i.to_string(), m));
    }
    let table = RouteTable::new(routes);
    let req_hosts = [
        "a.com",
        "b.a.com:8080",
        "b.a.com",
        "c.b.a.com",
        "z.org",
        "A.COM:1",
    ];
    let req_paths = ["/", "/x", "/x/", "/x/y", "/xy", "/x/y/z", "/q", "/x/y/z/w"];
    for h in req_hosts {
        for p in req_paths {
            for m in ["GET", "POST"] {
                let len = if m == "POST" {
                    "Content-Length: 0\r\n"
                } else {
                    ""
                };
                find(
                    &table,
                    &format!("{m} {p} HTTP/1.1\r\nHost: {h}\r\n{len}\r\n"),
                );
            }
        }
    }
}

fn split(weights: &[u32], sticky: Option<Sticky>) -> Forward {
    let registry = HttpStatsRegistry::new(1);
    let targets = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let name = format!("c{i}");
            WeightedTarget {
                target: Target {
                    cluster: Arc::new(ringmesh_core::Cluster::empty(&name)),
                    stats: registry.upstream(&name),
                    pool: Default::default(),
                    budget: registry.retry_budget(&name, Default::default()),
                    mesh_id: 0,
                    http2: false,
                },
                weight,
                stats: registry.route("l", "r", &name),
            }
        })
        .collect();
    Forward {
        targets,
        total_weight: weights.iter().map(|&w| u64::from(w)).sum(),
        sticky,
        timeout: Duration::from_secs(1),
        rewrite: Rewrite::default(),
        mirror: None,
        fault: None,
        per_try_timeout: None,
        idle_timeout: None,
        retries: None,
    }
}

fn pick(f: &Forward, extra: &str) -> usize {
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let (head, fields, _) = parse_valid(raw.as_bytes());
    f.pick(&RequestView::new(raw.as_bytes(), &head, &fields))
}

#[test]
fn a_split_follows_its_weights_and_never_picks_a_zero_weight() {
    let f = split(&[90, 0, 10], None);
    let mut counts = [0u32; 3];
    for _ in 0..20_000 {
        counts[pick(&f, "")] += 1;
    }
    assert_eq!(counts[1], 0);
    // 4 sigma of Binomial(20000, 0.1) is 170.
    assert!((1830..=2170).contains(&counts[2]), "{counts:?}");
}

#[test]
fn a_sticky_split_keeps_one_value_on_one_cluster_and_spreads_values() {
    let f = split(&[50, 50], Some(Sticky::Header(b("x-user"))));
    let mut seen = [0u32; 2];
    for user in 0..200 {
        let first = pick(&f, &format!("X-User: u{user}\r\n"));
        for _ in 0..5 {
            assert_eq!(pick(&f, &format!("x-user: u{user}\r\n")), first);
        }
        seen[first] += 1;
    }
    assert!(seen[0] > 60 && seen[1] > 60, "{seen:?}");
    let f = split(&[50, 50], Some(Sticky::Cookie(b("session"))));
    let first = pick(&f, "Cookie: a=1; session=abc\r\n");
    for _ in 0..10 {
        assert_eq!(pick(&f, "Cookie: session=abc; b=2\r\n"), first);
    }
}
