//! Each peer policy against a replica timeline computed by hand from `peers.md` on a
//! small deterministic trace (constant service times, evenly spaced arrivals, no
//! start-up or load delay, servers already there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{at, constant, scenario, timeline};
use coscale_sim::run_named;

fn one_model(extra_model: &str, policy: &str, duration: u32, timeout_ms: u32) -> String {
    format!(
        "name: t\nseed: 1\nduration_s: {duration}\nslo_ms: 5000\ntimeout_ms: {timeout_ms}\n\
         models:\n  - {{name: m, service_ms: 1000, service_cv: 0, memory: 1Gi, load_s: 0, {extra_model}}}\n\
         servers:\n  - {{name: s, memory: 1Gi, startup_s: 0, min_replicas: 10, max_replicas: 10, replicas: 10}}\n\
         traffic: [{{kind: constant, rate: 1}}]\npolicies: [{policy}]\n"
    )
}

/// KPA, concurrency target 10 × 70 % = 7; 14 req/s of 1 s requests = 14 in flight.
/// t=2: the panic window sees ceil(10.75/7) = 2 pods wanted against 1 ready: 2/1 ≥ 200 %
/// → panic, 2. Traffic stops at 100 s; the 60 s stable average falls to ≤ 7 first at the
/// tick t=132 (window [72,132): 28 busy seconds + the draining second 7.5 → 7.0): 1 (the
/// ÷2 limit allows 1). Stable is 0 from t=162 (window starts after the drain at 101):
/// want 0, held at 1 through the 30 s grace, 0 at t=192.
#[test]
fn kpa_panics_on_a_step_then_halves_and_scales_to_zero_after_the_grace() {
    let s = scenario(&one_model(
        "slots: 1000, min_replicas: 0, max_replicas: 10, replicas: 1",
        "{name: kpa, knative_kpa: {container_concurrency: 10}}",
        260,
        60_000,
    ));
    let out = run_named(&s, &constant(14, 0, 100), "kpa").unwrap();
    assert_eq!(
        timeline(&out.decisions),
        vec![(2.0, 2), (132.0, 1), (192.0, 0)]
    );
    assert_eq!(out.served, 1400);
}

/// KPA's activator poke: the first request to a model at zero scales it to 1 at once;
/// placement runs at the next second (t=1), the model loads in 2 s (ready at 3) and the
/// request, held since 0.5, is served by 3.1. Stable concurrency is 0 from the tick at
/// 64 (the window [4,64) is past the request), so after the 30 s grace it goes at 94.
#[test]
fn kpa_wakes_from_zero_on_the_first_request_and_holds_it() {
    let mut yaml = one_model(
        "slots: 10, min_replicas: 0, max_replicas: 10, replicas: 0",
        "knative-kpa",
        120,
        60_000,
    );
    yaml = yaml
        .replace("load_s: 0", "load_s: 2")
        .replace("service_ms: 1000", "service_ms: 100");
    let s = scenario(&yaml);
    let out = run_named(&s, &at(&[0.5]), "knative-kpa").unwrap();
    assert_eq!(timeline(&out.decisions), vec![(0.5, 1), (94.0, 0)]);
    assert_eq!(out.latencies_us, vec![2_600_000]);
    assert!(
        (out.model_replica_seconds - 93.0).abs() < 1e-9,
        "{}",
        out.model_replica_seconds
    );
}

/// KEDA from zero: 10 req/s from t=5 to 65. The first poll after traffic (t=30) sees
/// the rate > 0 and activates 0 → 1; the generated HPA keeps 1 (6.7 rps ≪ its
/// target). Polls see traffic in the 60 s rate window up to t=120 (last active); the
/// 300 s cooldown then ends at the poll t=420: 1 → 0.
#[test]
fn keda_activates_on_its_poll_and_deactivates_after_the_cooldown() {
    let mut yaml = one_model(
        "slots: 100, min_replicas: 0, max_replicas: 10, replicas: 0",
        "keda",
        480,
        60_000,
    );
    yaml = yaml.replace("service_ms: 1000", "service_ms: 100");
    let s = scenario(&yaml);
    let out = run_named(&s, &constant(10, 5, 65), "keda").unwrap();
    assert_eq!(timeline(&out.decisions), vec![(30.0, 1), (420.0, 0)]);
    // Requests held from t=5 wait for the replica at t=30.
    assert_eq!(out.served, 600);
    assert_eq!(*out.latencies_us.first().unwrap(), 25_100_000);
}

/// Seldon: 100 requests at t=0.5 on a 1-slot replica (1 s each). The replica's lag is
/// 81 at t=20, 61 at 40, 41 at 60 (≥ 30: +1 each period), 21 at 80 (< 30). Last use 0.5
/// s; inactive from 600.5, so the period at 620 scales down, then every 60 s
/// (stability): 680, 740 — floor 1.
#[test]
fn seldon_adds_one_replica_per_period_and_removes_one_per_minute_when_idle() {
    let s = scenario(&one_model(
        "slots: 1, min_replicas: 1, max_replicas: 5, replicas: 1",
        "seldon",
        800,
        200_000,
    ));
    let out = run_named(&s, &at(&[0.5; 100]), "seldon").unwrap();
    assert_eq!(
        timeline(&out.decisions),
        vec![
            (20.0, 2),
            (40.0, 3),
            (60.0, 4),
            (620.0, 3),
            (680.0, 2),
            (740.0, 1)
        ]
    );
}

/// HPA (coscale_core::hpa::decide), target 10 rps per replica, 60 s rate window,
/// 30 req/s from 0 to 100 s. t=15: 30 rps → 3 (within the max(2×, +4) limit). After
/// the traffic stops the recommendations fall (t=120: 2, t=135: 2, t=150: 1) but the
/// 300 s scale-down stabilization keeps the max. Without `behavior` a recommendation
/// exactly at the cutoff is still inside the window (`hpa-algorithm.md`: "old" means
/// `t < now - window`), so the last 3 (t=105, ratio 0.92 within tolerance) still counts
/// at 405 and is out at 420 → 2; the last 2 (t=135) is out at 450 → 1.
#[test]
fn hpa_scales_up_at_once_and_down_after_the_stabilization_window() {
    let s = scenario(
        &one_model(
            "slots: 100, min_replicas: 1, max_replicas: 10, replicas: 1",
            "{name: hpa, hpa: {target_rps: 10}}",
            500,
            60_000,
        )
        .replace("service_ms: 1000", "service_ms: 10"),
    );
    let out = run_named(&s, &constant(30, 0, 100), "hpa").unwrap();
    assert_eq!(
        timeline(&out.decisions),
        vec![(15.0, 3), (420.0, 2), (450.0, 1)]
    );
}

/// KEDA above one replica is its generated HPA: with min 1 it decides exactly as the HPA.
#[test]
fn keda_with_min_one_replica_decides_as_its_hpa() {
    let s = scenario(
        &one_model(
            "slots: 100, min_replicas: 1, max_replicas: 10, replicas: 1",
            "[{name: hpa, hpa: {target_rps: 10}}, {name: keda, keda: {hpa: {target_rps: 10}}}]",
            500,
            60_000,
        )
        .replace("policies: [[", "policies: [")
        .replace("}]]\n", "}]\n")
        .replace("service_ms: 1000", "service_ms: 10"),
    );
    let trace = constant(30, 0, 100);
    let hpa = run_named(&s, &trace, "hpa").unwrap();
    let keda = run_named(&s, &trace, "keda").unwrap();
    assert_eq!(hpa.decisions, keda.decisions);
}
