//! Cost of one endpoint pick per load-balancing policy, with 4 and 64
//! weighted endpoints on one core. `cargo bench -p ringmesh-core --bench pick`.
//!
//! For least_request and peak_ewma a pick is followed by the open/close
//! bookkeeping a connection does, so the figure is the per-connection cost.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringmesh_core::{Balancer, LbPolicy};

const POLICIES: [LbPolicy; 6] = [
    LbPolicy::RoundRobin,
    LbPolicy::Random,
    LbPolicy::LeastRequest,
    LbPolicy::PeakEwma,
    LbPolicy::RingHash,
    LbPolicy::Maglev,
];

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for n in [4usize, 64] {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
            .collect();
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i % 3) as u32).collect();
        for policy in POLICIES {
            let balancer = Balancer::new(policy, &ids, &weights, 1, 42);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(policy.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    // A different client per pick for the hashing policies.
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let i = balancer.pick(0, black_box(key));
                    balancer.opened(0, i);
                    balancer.closed(0, i);
                    black_box(i)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
