//! Per-inference cost of the example models through `Engine::infer` (batch 1 and 32), and of
//! decoding a V2 JSON request. Run: `cargo bench -p coscale-runtime --bench infer`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use coscale_api::v2::{InferRequest, Tensor, TensorData};
use coscale_runtime::Engine;
use criterion::{criterion_group, criterion_main, Criterion};

fn request(batch: usize) -> InferRequest {
    let row = [6.3f32, 3.3, 6.0, 2.5];
    InferRequest {
        inputs: vec![Tensor::new(
            "input",
            vec![batch as i64, 4],
            TensorData::Fp32(row.iter().copied().cycle().take(batch * 4).collect()),
        )],
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
    let engine = Engine::new();
    for model in ["iris", "iris-mlp"] {
        engine.load(model, &models.join(model)).unwrap();
        for batch in [1usize, 32] {
            let req = request(batch);
            c.bench_function(&format!("infer/{model}/batch{batch}"), |b| {
                b.iter(|| engine.infer(model, &req).unwrap())
            });
        }
    }
    let body = request(32).to_json();
    c.bench_function("decode_json/fp32_32x4", |b| {
        b.iter(|| InferRequest::from_json(&body, None).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
