//! Invariants of the HPA decision over random HPAs, metrics and histories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coscale_core::hpa::normalize::{stabilize_with_behavior, stabilize_without_behavior};
use coscale_core::hpa::{
    decide, parse_hpa, ControllerConfig, DecisionInput, HorizontalPodAutoscaler, HpaState,
    MetricInput, PodInfo, Recommendation, ScaleEvent, Timestamp,
};
use coscale_core::quantity::Quantity;
use proptest::prelude::*;

fn now() -> Timestamp {
    Timestamp::from_secs(100_000)
}

fn ago(s: u64) -> Timestamp {
    now().minus(Duration::from_secs(s))
}

#[derive(Debug, Clone)]
struct Rules {
    window: Option<u32>,
    select: &'static str,
    pods: Option<(u32, u32)>,
    percent: Option<(u32, u32)>,
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        proptest::option::of(0u32..600),
        prop_oneof![Just("Max"), Just("Min"), Just("Disabled")],
        proptest::option::of((1u32..10, 1u32..120)),
        proptest::option::of((1u32..300, 1u32..120)),
    )
        .prop_map(|(window, select, pods, percent)| Rules {
            window,
            select,
            pods,
            percent,
        })
}

fn rules_yaml(dir: &str, r: &Rules) -> String {
    let mut s = format!("    {dir}:\n      selectPolicy: {}\n", r.select);
    if let Some(w) = r.window {
        s += &format!("      stabilizationWindowSeconds: {w}\n");
    }
    let mut policies = vec![];
    if let Some((v, p)) = r.pods {
        policies.push(format!("{{type: Pods, value: {v}, periodSeconds: {p}}}"));
    }
    if let Some((v, p)) = r.percent {
        policies.push(format!("{{type: Percent, value: {v}, periodSeconds: {p}}}"));
    }
    if !policies.is_empty() {
        s += &format!("      policies: [{}]\n", policies.join(", "));
    }
    s
}

fn make_hpa(min: i32, max: i32, behavior: Option<(Rules, Rules)>) -> HorizontalPodAutoscaler {
    let behavior = behavior.map_or_else(String::new, |(up, down)| {
        format!(
            "  behavior:\n{}{}",
            rules_yaml("scaleUp", &up),
            rules_yaml("scaleDown", &down)
        )
    });
    parse_hpa(&format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: h}}\nspec:\n  scaleTargetRef: {{kind: Deployment, name: d}}\n  minReplicas: {min}\n  maxReplicas: {max}\n  metrics:\n  - type: Object\n    object:\n      metric: {{name: qps}}\n      describedObject: {{kind: Service, name: s}}\n      target: {{type: Value, value: 10}}\n{behavior}"
    ))
    .unwrap()
}

#[derive(Debug, Clone)]
struct World {
    min: i32,
    max: i32,
    current: i32,
    value_milli: i64,
    failed: bool,
    behavior: Option<(Rules, Rules)>,
    recs: Option<Vec<(i32, u64)>>,
    up_events: Vec<(i32, u64)>,
    down_events: Vec<(i32, u64)>,
}

fn world() -> impl Strategy<Value = World> {
    (
        0i32..5,
        0i32..20,
        0i32..30,
        0i64..200_000,
        proptest::bool::weighted(0.1),
        proptest::option::of((rules(), rules())),
        proptest::option::of(proptest::collection::vec((0i32..40, 0u64..700), 0..6)),
        proptest::collection::vec((1i32..10, 0u64..200), 0..4),
        proptest::collection::vec((1i32..10, 0u64..200), 0..4),
    )
        .prop_map(
            |(min, extra, current, value_milli, failed, behavior, recs, up_events, down_events)| {
                // minReplicas 0 is allowed here because the metric is an Object metric.
                World {
                    min,
                    max: (min + extra).max(1),
                    current,
                    value_milli,
                    failed,
                    behavior,
                    recs,
                    up_events,
                    down_events,
                }
            },
        )
}

fn events(list: &[(i32, u64)]) -> Vec<ScaleEvent> {
    list.iter()
        .map(|(change, age)| ScaleEvent {
            change: *change,
            timestamp: ago(*age),
            outdated: false,
        })
        .collect()
}

fn run(w: &World) -> (i32, HorizontalPodAutoscaler) {
    let h = make_hpa(w.min, w.max, w.behavior.clone());
    let pods = (0..w.current)
        .map(|i| PodInfo::running_ready(&format!("p{i}")))
        .collect();
    let metric = if w.failed {
        MetricInput::Error("no metrics returned".into())
    } else {
        MetricInput::Value(Quantity::from_milli(w.value_milli))
    };
    let input = DecisionInput {
        spec_replicas: w.current,
        status_replicas: w.current,
        metrics: vec![metric],
        pods,
    };
    let state = HpaState {
        recommendations: w.recs.as_ref().map(|r| {
            r.iter()
                .map(|(replicas, age)| Recommendation {
                    replicas: *replicas,
                    timestamp: ago(*age),
                })
                .collect()
        }),
        scale_up_events: events(&w.up_events),
        scale_down_events: events(&w.down_events),
    };
    let (d, _) = decide(&h, &input, state, &ControllerConfig::default(), now());
    assert_eq!(d.scaled, d.desired_replicas != d.current_replicas);
    (d.desired_replicas, h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn desired_replicas_stay_within_min_and_max_when_scaling_is_enabled(w in world()) {
        let (desired, _) = run(&w);
        if w.current == 0 && w.min != 0 {
            prop_assert_eq!(desired, 0, "scaling disabled keeps zero");
        } else {
            prop_assert!(desired >= w.min && desired <= w.max, "{} not in [{}, {}]", desired, w.min, w.max);
        }
    }

    #[test]
    fn select_policy_disabled_never_scales_in_that_direction(mut w in world(), up in rules(), down in rules(), disable_up in any::<bool>()) {
        let (mut up, mut down) = (up, down);
        if disable_up { up.select = "Disabled" } else { down.select = "Disabled" }
        w.behavior = Some((up, down));
        prop_assume!(w.current >= w.min && w.current <= w.max && w.current > 0);
        let (desired, _) = run(&w);
        if disable_up {
            prop_assert!(desired <= w.current, "scaled up {} -> {}", w.current, desired);
        } else {
            prop_assert!(desired >= w.current, "scaled down {} -> {}", w.current, desired);
        }
    }

    #[test]
    fn behavior_stabilization_never_goes_below_the_down_window_maximum(
        history in proptest::collection::vec((0i32..40, 0u64..700), 0..8),
        current in 1i32..30,
        desired in 0i32..40,
        up_window in 0u64..600,
        down_window in 0u64..600,
    ) {
        let mut recs: Vec<Recommendation> = history.iter().map(|(r, a)| Recommendation { replicas: *r, timestamp: ago(*a) }).collect();
        let cutoff = now().minus(Duration::from_secs(down_window));
        let window_max = recs.iter().filter(|r| r.timestamp > cutoff).map(|r| r.replicas).max();
        let (got, _) = stabilize_with_behavior(&mut recs, current, desired, Duration::from_secs(up_window), Duration::from_secs(down_window), now());
        if got < current {
            prop_assert!(got >= desired);
            if let Some(m) = window_max {
                prop_assert!(got >= m, "scaled down to {} below window max {}", got, m);
            }
        }
    }

    #[test]
    fn no_behavior_stabilization_returns_the_window_maximum(
        history in proptest::collection::vec((0i32..40, 0u64..700), 0..8),
        desired in 0i32..40,
    ) {
        let window = Duration::from_secs(300);
        let mut recs: Vec<Recommendation> = history.iter().map(|(r, a)| Recommendation { replicas: *r, timestamp: ago(*a) }).collect();
        let cutoff = now().minus(window);
        let expected = recs.iter().filter(|r| r.timestamp >= cutoff).map(|r| r.replicas).fold(desired, i32::max);
        let got = stabilize_without_behavior(&mut recs, desired, window, now());
        prop_assert_eq!(got, expected);
        prop_assert!(recs.len() <= history.len() + 1);
    }
}
