//! Placement throughput: 10,000 models (1–3 replicas, mixed memory and requirements) on
//! 1,000 server replicas (50 servers × 20 replicas), from scratch and re-placed with every
//! model's current assignment set (the periodic reconcile case).

use std::hint::black_box;

use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::placement::{place, ModelDemand, ReplicaView, ServerView};
use criterion::{criterion_group, criterion_main, Criterion};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A fixed-seed linear congruential generator: the fleet is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn fleet() -> Vec<ServerView> {
    (0..50u32)
        .map(|s| {
            let mut capabilities = vec!["mlserver".to_owned(), "sklearn".to_owned()];
            if s % 2 == 0 {
                capabilities.push("xgboost".to_owned());
            }
            if s % 5 == 0 {
                capabilities.push("gpu".to_owned());
            }
            ServerView {
                name: ServerName::new(format!("server-{s:02}")),
                replicas: (0..20)
                    .map(|r| ReplicaView {
                        index: ReplicaIndex(r),
                        capabilities: capabilities.clone(),
                        memory_bytes: 40 * GIB,
                        reserved_bytes: if r % 7 == 0 { 2 * GIB } else { 0 },
                        draining: s % 10 == 3 && r == 19,
                    })
                    .collect(),
                accepting: s != 49,
            }
        })
        .collect()
}

fn demands() -> Vec<ModelDemand> {
    let mut rng = Lcg(42);
    let requirement_sets: [&[&str]; 5] = [
        &[],
        &["sklearn"],
        &["xgboost"],
        &["gpu"],
        &["mlserver", "sklearn"],
    ];
    (0..10_000)
        .map(|i| {
            let reqs = requirement_sets[rng.below(requirement_sets.len() as u64) as usize];
            let replicas = 1 + rng.below(3) as u32;
            ModelDemand {
                name: ModelName::new(format!("model-{i:05}")),
                requirements: reqs.iter().map(|r| (*r).to_owned()).collect(),
                memory_bytes: (64 + rng.below(1_536)) * MIB,
                replicas,
                min_replicas: if i % 4 == 0 { 1 } else { 0 },
                server: None,
                current: None,
            }
        })
        .collect()
}

fn bench_place(c: &mut Criterion) {
    let servers = fleet();
    let fresh = demands();
    let first = place(&servers, &fresh);
    let placed = first.iter().filter(|d| !d.replicas.is_empty()).count();
    eprintln!("placement bench: {placed} of {} models placed", fresh.len());
    let settled: Vec<ModelDemand> = fresh
        .iter()
        .zip(&first)
        .map(|(m, d)| ModelDemand {
            current: d.as_current(),
            ..m.clone()
        })
        .collect();

    let mut group = c.benchmark_group("placement");
    group.sample_size(10);
    group.bench_function("from_scratch_10k_models_1k_replicas", |b| {
        b.iter(|| place(black_box(&servers), black_box(&fresh)))
    });
    group.bench_function("replace_with_current_10k_models_1k_replicas", |b| {
        b.iter(|| place(black_box(&servers), black_box(&settled)))
    });
    group.finish();
}

criterion_group!(benches, bench_place);
criterion_main!(benches);
