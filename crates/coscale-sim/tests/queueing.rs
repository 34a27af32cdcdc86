//! Queueing sanity: one replica with c slots under Poisson arrivals and exponential
//! service is an M/M/c queue; the simulated mean wait must match Erlang C.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::scenario;
use coscale_sim::policy::oracle::mean_wait;
use coscale_sim::run_named;

fn mean_wait_simulated(rate: f64, slots: u32, service_ms: f64, seed: u64) -> (f64, f64) {
    let s = scenario(&format!(
        "name: mmc\nseed: {seed}\nduration_s: 4000\nslo_ms: 1000\ntimeout_ms: 600000\n\
         models:\n  - {{name: m, service_ms: {service_ms}, service_cv: 1, slots: {slots}, memory: 1Gi, load_s: 0, replicas: 1}}\n\
         servers:\n  - {{name: s, memory: 1Gi, startup_s: 0, max_replicas: 1, replicas: 1}}\n\
         traffic: [{{kind: poisson, rate: {rate}}}]\npolicies: [static-1]\n"
    ));
    let trace = s.build_trace().unwrap();
    let out = run_named(&s, &trace, "static-1").unwrap();
    assert_eq!(
        out.served, out.requests,
        "nothing times out in this setting"
    );
    let mean_latency = out.latencies_us.iter().map(|&l| f64::from(l)).sum::<f64>()
        / out.latencies_us.len() as f64
        / 1e6;
    let theory = mean_wait(slots, rate, service_ms / 1000.0);
    (mean_latency - service_ms / 1000.0, theory)
}

#[test]
fn mean_wait_of_one_replica_matches_erlang_c_for_m_m_4() {
    // λ = 60/s, 4 slots, 50 ms: ρ = 0.75, Erlang C = 0.5094, W = C / (cμ − λ) = 25.5 ms.
    let (sim, theory) = mean_wait_simulated(60.0, 4, 50.0, 3);
    assert!((theory - 0.025_47).abs() < 1e-4, "{theory}");
    assert!(
        (sim - theory).abs() / theory < 0.06,
        "simulated {sim} vs M/M/4 {theory}"
    );
}

#[test]
fn mean_wait_of_one_slot_matches_m_m_1() {
    // λ = 8/s, 100 ms: ρ = 0.8, W = ρ/(μ − λ) = 0.8 / 2 = 400 ms.
    let (sim, theory) = mean_wait_simulated(8.0, 1, 100.0, 5);
    assert!((theory - 0.4).abs() < 1e-9);
    assert!(
        (sim - theory).abs() / theory < 0.08,
        "simulated {sim} vs M/M/1 {theory}"
    );
}
