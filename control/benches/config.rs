//! Cost of taking a config: parse + decode + validate (`load`) and compile
//! into a snapshot, at 1,000 / 10,000 / 100,000 entries, to show the whole
//! path grows linearly. `cargo bench -p ringmesh-control --bench config`.
//!
//! Two shapes: one cluster with N endpoints (an endpoint list from
//! discovery, or a big static cluster), and N/10 clusters of 10 endpoints
//! each, every one behind its own listener.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringmesh_control::compile::{Registries, compile};
use ringmesh_core::StatsRegistry;
use ringmesh_core::health::HealthRegistry;

fn endpoint(i: usize) -> String {
    format!(
        "\"10.{}.{}.{}:80\"",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

/// One cluster with `n` endpoints.
fn one_big_cluster(n: usize) -> String {
    let eps: Vec<String> = (0..n).map(endpoint).collect();
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: l, listen: 127.0.0.1:0, cluster: c }}\nclusters:\n  - name: c\n    endpoints: [{}]\n",
        eps.join(", ")
    )
}

/// `n / 10` listeners and clusters of 10 endpoints each.
fn many_clusters(n: usize) -> String {
    let mut text = String::from("admin: { listen: 127.0.0.1:0 }\nlisteners:\n");
    for c in 0..n / 10 {
        text.push_str(&format!(
            "  - {{ name: l{c}, listen: 127.0.0.1:0, cluster: c{c} }}\n"
        ));
    }
    text.push_str("clusters:\n");
    for c in 0..n / 10 {
        let eps: Vec<String> = (0..10).map(|e| endpoint(c * 10 + e)).collect();
        text.push_str(&format!(
            "  - {{ name: c{c}, endpoints: [{}] }}\n",
            eps.join(", ")
        ));
    }
    text
}

fn load_and_compile(text: &str) {
    let doc = ringmesh_control::load("bench.yaml", text).expect("valid");
    let stats = StatsRegistry::new(2);
    let health = HealthRegistry::new(2);
    let discovered = HashMap::new();
    let http = ringmesh_l7::metrics::HttpStatsRegistry::new(2);
    let registries = Registries {
        http: &http,
        stats: &stats,
        health: &health,
        discovered: &discovered,
    };
    let snapshot = compile("bench.yaml", &doc, 1, registries, 2).expect("compiles");
    black_box(snapshot);
}

fn config(c: &mut Criterion) {
    for (shape, make) in [
        ("one_cluster", one_big_cluster as fn(usize) -> String),
        ("many_clusters", many_clusters),
    ] {
        let mut group = c.benchmark_group(format!("load_compile/{shape}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1));
        for n in [1_000usize, 10_000, 100_000] {
            let text = make(n);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
                b.iter(|| load_and_compile(text))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, config);
criterion_main!(benches);
