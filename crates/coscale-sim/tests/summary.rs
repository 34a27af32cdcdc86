//! Whole-run properties: determinism, conservation of requests, and small scenarios
//! whose summary numbers were worked out by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{at, scenario};
use coscale_sim::report::summary_json;
use coscale_sim::{run, run_named, run_parallel, run_trace};
use proptest::prelude::*;

const MIXED: &str = "name: mixed\nseed: 7\nduration_s: 600\nslo_ms: 200\ntimeout_ms: 1500\nmax_pending: 50\n\
models:\n\
  - {name: a, service_ms: 40, service_cv: 1, slots: 2, memory: 3Gi, load_s: 5, min_replicas: 0, max_replicas: 8, replicas: 1}\n\
  - {name: b, count: 6, service_ms: 20, service_cv: 0.5, slots: 1, memory_range: [500Mi, 4Gi], load_s: 3, min_replicas: 0, max_replicas: 4, replicas: 1}\n\
servers:\n  - {name: s, memory: 8Gi, startup_s: 4, min_replicas: 1, max_replicas: 12, replicas: 3}\n\
traffic:\n\
  - {kind: poisson, models: [a], rate: 30, shape: {step: {at_s: 200, factor: 3, until_s: 400}}}\n\
  - {kind: fleet, models: [b-000, b-001, b-002, b-003, b-004, b-005], total_rate: 40, mu: 3.7, sigma: 2, shape: {diurnal: {period_s: 600, amplitude: 0.5}}}\n\
  - {kind: onoff, models: [b-000], rate: 30, on_s: 10, off_s: 30}\n\
policies: [coscale-native, coscale-native-seldon, hpa-default, knative-kpa, keda, seldon, static-1, oracle]\n";

#[test]
fn the_same_seed_gives_a_byte_identical_summary_and_another_seed_does_not() {
    let s = scenario(MIXED);
    let a = summary_json(&run(&s, &mut |_, _| {}).unwrap().summary).unwrap();
    let b = summary_json(&run(&s, &mut |_, _| {}).unwrap().summary).unwrap();
    assert_eq!(a, b);
    let mut other = s.clone();
    other.seed = 8;
    let c = summary_json(&run(&other, &mut |_, _| {}).unwrap().summary).unwrap();
    assert_ne!(a, c);
}

#[test]
fn policies_run_on_several_threads_give_the_same_run_as_on_one() {
    let s = scenario(MIXED);
    let one = run(&s, &mut |_, _| {}).unwrap();
    let seen = std::sync::Mutex::new(vec![0.0f64; s.policies.len()]);
    for threads in [2, 3, 16] {
        let many = run_parallel(&s, threads, &|i, f| {
            let mut seen = seen.lock().unwrap();
            seen[i] = seen[i].max(f);
        })
        .unwrap();
        assert_eq!(many, one, "{threads} threads");
    }
    assert!(
        seen.lock().unwrap().iter().all(|&f| f == 1.0),
        "every policy reports its progress to the end"
    );
}

#[test]
fn every_request_is_served_dropped_or_timed_out_exactly_once_under_every_policy() {
    let s = scenario(MIXED);
    let trace = s.build_trace().unwrap();
    assert!(trace.requests.len() > 20_000);
    for p in &s.policies {
        let o = run_named(&s, &trace, p.name()).unwrap();
        assert_eq!(o.requests, trace.requests.len() as u64, "{}", p.name());
        assert_eq!(
            o.served + o.dropped + o.timed_out,
            o.requests,
            "{}",
            p.name()
        );
        assert_eq!(o.latencies_us.len() as u64, o.served, "{}", p.name());
        assert!(o.good <= o.served);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Conservation holds for arbitrary small scenarios, including ones that drop
    /// (tiny holding queue) and time out (short deadline, slow start-up).
    #[test]
    fn conservation_holds_for_random_small_scenarios(
        seed in 0u64..1000,
        rate in 1.0f64..80.0,
        slots in 1u32..4,
        service_ms in 5.0f64..200.0,
        timeout_ms in 50u32..3000,
        max_pending in 0u32..20,
        startup_s in 0u32..20,
        policy in prop::sample::select(vec!["coscale-native", "knative-kpa", "keda", "seldon", "hpa-default", "static-2", "oracle"]),
    ) {
        let s = scenario(&format!(
            "name: p\nseed: {seed}\nduration_s: 200\nslo_ms: 300\ntimeout_ms: {timeout_ms}\nmax_pending: {max_pending}\n\
             models:\n  - {{name: m, service_ms: {service_ms}, slots: {slots}, memory: 1Gi, load_s: 2, min_replicas: 0, max_replicas: 6, replicas: 1}}\n\
             servers:\n  - {{name: s, memory: 2Gi, startup_s: {startup_s}, min_replicas: 1, max_replicas: 6, replicas: 1}}\n\
             traffic: [{{kind: gamma, cv: 3, rate: {rate}}}]\npolicies: [{policy}]\n"
        ));
        let trace = s.build_trace().unwrap();
        let o = run_named(&s, &trace, policy).unwrap();
        prop_assert_eq!(o.served + o.dropped + o.timed_out, trace.requests.len() as u64);
        prop_assert_eq!(o.latencies_us.len() as u64, o.served);
    }
}

/// One 1-slot replica, 100 ms constant service, SLO 120 ms, timeout 150 ms, 2 s.
/// Requests at 0, 0.05, 0.5, 1.0, 1.0, 1.01:
/// - 0 → 100 ms; 0.05 waits to 0.1 → 150 ms; 0.5 → 100 ms; 1.0 → 100 ms; the second
///   1.0 waits to 1.1 → 200 ms; 1.01 would start at 1.2, 190 ms after it arrived
///   (> 150 ms): timed out. Within the SLO: 3 of 6 → 0.5.
/// - Served latencies [100, 100, 100, 150, 200]: p50 (rank 3) 100, p99 (rank 5) 200.
/// - 1 model replica and 1 server replica for 2 s: 2.0 replica-seconds each.
/// - Oracle: μ = 5 % of the 10 req/s saturation = 0.5 req/s (the 1 % wait-tail bound
///   gives only 0.12 req/s with a 20 ms budget); 3 requests in each 1 s window → 6
///   replicas in both windows; no load time and 1 replica already running → LB_S = 12;
///   cost 2 / 12 = 0.167.
/// - No scaling, no flaps; no rise in load over 10 s windows → no time to scale.
#[test]
fn a_one_replica_run_gives_the_hand_computed_summary() {
    let s = scenario(
        "name: tiny\nseed: 1\nduration_s: 2\nslo_ms: 120\ntimeout_ms: 150\noracle_window_s: 1\n\
         models:\n  - {name: m, service_ms: 100, service_cv: 0, slots: 1, memory: 1Gi, load_s: 0, replicas: 1}\n\
         servers:\n  - {name: s, memory: 1Gi, startup_s: 0, min_replicas: 1, max_replicas: 1, replicas: 1}\n\
         traffic: [{kind: constant, rate: 1}]\npolicies: [static-1]\n",
    );
    let r = run_trace(&s, &at(&[0.0, 0.05, 0.5, 1.0, 1.0, 1.01]), &mut |_, _| {}).unwrap();
    let json = summary_json(&r.summary).unwrap();
    let expected = r#"{
  "scenario": "tiny",
  "seed": 1,
  "requests": 6,
  "oracle_lower_bound_replica_seconds": 12.0,
  "policies": [
    {
      "name": "static-1",
      "slo_attainment": 0.5,
      "p50_ms": 100.0,
      "p99_ms": 200.0,
      "dropped": 0,
      "timed_out": 1,
      "model_replica_seconds": 2.0,
      "server_replica_seconds": 2.0,
      "cost_vs_oracle": 0.167,
      "scale_actions": 0,
      "flaps": 0,
      "time_to_scale_s": null
    }
  ]
}
"#;
    assert_eq!(json, expected);
}

/// A model at zero under KEDA with a holding queue of 2: requests at 1, 2, 3 and 4 s;
/// the poll at 30 s activates it (load 0, server present). The first two wait and are
/// served at 30 (latencies 29.1 s and 28.1 s with 100 ms service, under the 40 s
/// timeout); the third and fourth find the queue full: dropped. Model replica from 30 to
/// the end at 40: 10 replica-seconds.
#[test]
fn requests_beyond_the_holding_queue_are_dropped_while_a_model_is_at_zero() {
    let s = scenario(
        "name: cold\nseed: 1\nduration_s: 40\nslo_ms: 1000\ntimeout_ms: 40000\nmax_pending: 2\n\
         models:\n  - {name: m, service_ms: 100, service_cv: 0, slots: 4, memory: 1Gi, load_s: 0, min_replicas: 0, max_replicas: 2, replicas: 0}\n\
         servers:\n  - {name: s, memory: 1Gi, startup_s: 0, min_replicas: 1, max_replicas: 2, replicas: 1}\n\
         traffic: [{kind: constant, rate: 1}]\npolicies: [keda]\n",
    );
    let o = run_named(&s, &at(&[1.0, 2.0, 3.0, 4.0]), "keda").unwrap();
    assert_eq!((o.served, o.dropped, o.timed_out), (2, 2, 0));
    let mut lat = o.latencies_us.clone();
    lat.sort_unstable();
    assert_eq!(lat, vec![28_100_000, 29_100_000]);
    assert!(
        (o.model_replica_seconds - 10.0).abs() < 1e-9,
        "{}",
        o.model_replica_seconds
    );
}
