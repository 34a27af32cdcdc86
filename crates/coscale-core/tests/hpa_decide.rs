//! Full reconcile passes (hpa-algorithm.md §1.2, §1.3, §1.7, §1.10), several of them
//! ports of upstream `horizontal_test.go` cases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::collections::BTreeMap;
use std::time::Duration;

use coscale_core::hpa::{
    decide, evaluate, parse_hpa, ConditionType, ControllerConfig, Decision, DecisionInput,
    HorizontalPodAutoscaler, HpaState, MetricInput, PodInfo, Recommendation, Timestamp,
};
use coscale_core::quantity::Quantity;

fn q(s: &str) -> Quantity {
    s.parse().unwrap()
}

fn now() -> Timestamp {
    Timestamp::from_secs(100_000)
}

fn hpa(min: i32, max: i32, metrics: &str, behavior: &str) -> HorizontalPodAutoscaler {
    parse_hpa(&format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: h, namespace: ns}}\nspec:\n  scaleTargetRef: {{kind: Deployment, name: d}}\n  minReplicas: {min}\n  maxReplicas: {max}\n  metrics:\n{metrics}{behavior}"
    ))
    .unwrap()
}

const CPU30: &str = "  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 30}}\n";
const CPU10: &str = "  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 10}}\n";
const OBJ_VALUE: &str = "  - type: Object\n    object:\n      metric: {name: qps}\n      describedObject: {kind: Service, name: web}\n      target: {type: Value, value: 10}\n";
const OBJ_AVG: &str = "  - type: Object\n    object:\n      metric: {name: infer_rps}\n      describedObject: {kind: Model, name: irisa0}\n      target: {type: AverageValue, averageValue: 3}\n";
const EXT_VALUE: &str = "  - type: External\n    external:\n      metric: {name: queue}\n      target: {type: Value, value: 10}\n";

fn pods_with_cpu(n: usize, request: &str) -> Vec<PodInfo> {
    (0..n)
        .map(|i| {
            let mut p = PodInfo::running_ready(&format!("pod-{i}"));
            p.requests = BTreeMap::from([("cpu".to_string(), q(request))]);
            p
        })
        .collect()
}

fn cpu(levels: &[&str]) -> MetricInput {
    MetricInput::PodValues {
        values: levels
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("pod-{i}"), q(v)))
            .collect(),
        timestamp: now(),
        window: Duration::from_secs(60),
    }
}

fn input(replicas: i32, metrics: Vec<MetricInput>, pods: Vec<PodInfo>) -> DecisionInput {
    DecisionInput {
        spec_replicas: replicas,
        status_replicas: replicas,
        metrics,
        pods,
    }
}

/// An existing, empty history (no initial seed).
fn empty_history() -> HpaState {
    HpaState {
        recommendations: Some(vec![]),
        ..HpaState::default()
    }
}

fn run(h: &HorizontalPodAutoscaler, i: &DecisionInput, state: HpaState) -> (Decision, HpaState) {
    decide(h, i, state, &ControllerConfig::upstream_unit_tests(), now())
}

fn condition(d: &Decision, t: ConditionType) -> (bool, String) {
    let c = d.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status, c.reason.clone())
}

#[test]
fn scale_up_on_cpu_utilization() {
    // Upstream TestScaleUp: 3 pods at 300/500/700m of 1 CPU, target 30 % → 5.
    let h = hpa(2, 6, CPU30, "");
    let i = input(
        3,
        vec![cpu(&["300m", "500m", "700m"])],
        pods_with_cpu(3, "1"),
    );
    let (d, _) = run(&h, &i, empty_history());
    assert_eq!((d.desired_replicas, d.scaled), (5, true));
    assert_eq!(d.metrics[0].proposed_replicas, Some(5));
    assert_eq!(
        d.metrics[0].current.as_ref().unwrap().average_utilization,
        Some(50)
    );
    assert_eq!(
        condition(&d, ConditionType::AbleToScale),
        (true, "SucceededRescale".into())
    );
    assert_eq!(
        condition(&d, ConditionType::ScalingActive),
        (true, "ValidMetricFound".into())
    );
    assert_eq!(
        condition(&d, ConditionType::ScalingLimited),
        (false, "DesiredWithinRange".into())
    );
    assert_eq!(
        d.rescale_reason.as_deref(),
        Some("cpu resource utilization (percentage of request) above target")
    );
}

#[test]
fn upscale_cap_with_a_percent_policy() {
    // Upstream TestUpscaleCap / ...GreaterThanMaxReplicas: 0.1 CPU requests, target
    // 10 % → 60 wanted; Percent 700/60 s caps at 24; maxReplicas 20 caps first.
    let behavior = "  behavior:\n    scaleUp:\n      policies: [{type: Percent, value: 700, periodSeconds: 60}]\n";
    let i = input(
        3,
        vec![cpu(&["100m", "200m", "300m"])],
        pods_with_cpu(3, "100m"),
    );
    let (d, _) = run(&hpa(1, 100, CPU10, behavior), &i, empty_history());
    assert_eq!(
        (d.metric_replicas, d.desired_replicas, d.reason.as_str()),
        (Some(60), 24, "ScaleUpLimit")
    );
    assert_eq!(
        condition(&d, ConditionType::ScalingLimited),
        (true, "ScaleUpLimit".into())
    );
    let (d, _) = run(&hpa(1, 20, CPU10, behavior), &i, empty_history());
    assert_eq!(
        (d.desired_replicas, d.reason.as_str()),
        (20, "TooManyReplicas")
    );
}

#[test]
fn no_behavior_scale_up_is_capped_per_pass() {
    let i = input(
        3,
        vec![cpu(&["100m", "200m", "300m"])],
        pods_with_cpu(3, "100m"),
    );
    let h = hpa(1, 100, CPU10, "");
    let (d, _) = decide(&h, &i, empty_history(), &ControllerConfig::default(), now());
    assert_eq!((d.desired_replicas, d.reason.as_str()), (6, "ScaleUpLimit"));
    let (d, _) = run(&h, &i, empty_history());
    assert_eq!(
        (d.desired_replicas, d.reason.as_str()),
        (24, "ScaleUpLimit"),
        "factor 8 in upstream tests"
    );
}

#[test]
fn replicas_outside_min_max_are_clamped_without_reading_metrics() {
    // Upstream TestScaleUpRCImmediately / TestScaleDownRCImmediately.
    let h = hpa(2, 5, CPU30, "");
    let (d, s) = run(
        &h,
        &input(1, vec![MetricInput::Error("unused".into())], vec![]),
        HpaState::default(),
    );
    assert_eq!(
        (d.desired_replicas, d.scaled, d.reason.as_str()),
        (2, true, "TooFewReplicas")
    );
    assert!(d.metrics.is_empty());
    assert_eq!(
        s.recommendations.unwrap().len(),
        1,
        "seeded, not stabilized"
    );
    let (d, _) = run(
        &h,
        &input(12, vec![MetricInput::Error("unused".into())], vec![]),
        HpaState::default(),
    );
    assert_eq!(
        (d.desired_replicas, d.reason.as_str()),
        (5, "TooManyReplicas")
    );
    assert_eq!(
        d.rescale_reason.as_deref(),
        Some("Current number of replicas above Spec.MaxReplicas")
    );
}

#[test]
fn zero_spec_replicas_disables_scaling_unless_min_is_zero() {
    let h = hpa(1, 5, OBJ_VALUE, "");
    let (d, _) = run(
        &h,
        &input(0, vec![MetricInput::Value(q("100"))], vec![]),
        HpaState::default(),
    );
    assert_eq!(
        (d.desired_replicas, d.scaled, d.reason.as_str()),
        (0, false, "ScalingDisabled")
    );
    assert_eq!(
        condition(&d, ConditionType::ScalingActive),
        (false, "ScalingDisabled".into())
    );

    // minReplicas 0 (HPAScaleToZero): Value targets propose ceil(ratio) from zero.
    let h = hpa(0, 10, OBJ_VALUE, "");
    let (d, _) = run(
        &h,
        &input(0, vec![MetricInput::Value(q("25"))], vec![]),
        empty_history(),
    );
    assert_eq!(
        (d.metric_replicas, d.desired_replicas, d.scaled),
        (Some(3), 3, true)
    );
    // ...and scale down to zero when every metric proposes 0.
    let pods = vec![PodInfo::running_ready("p0"), PodInfo::running_ready("p1")];
    let (d, _) = run(
        &h,
        &input(2, vec![MetricInput::Value(q("0"))], pods),
        empty_history(),
    );
    assert_eq!((d.desired_replicas, d.scaled), (0, true));
}

#[test]
fn invalid_metrics_allow_scale_up_but_never_scale_down() {
    let two = format!("{CPU30}{OBJ_VALUE}");
    let h = hpa(1, 10, &two, "");
    let broken = || MetricInput::Error("the server could not find the metric qps".into());
    let pods = || pods_with_cpu(3, "1");

    // Upstream TestScaleUpOneMetricInvalid.
    let (d, _) = run(
        &h,
        &input(3, vec![cpu(&["300m", "500m", "700m"]), broken()], pods()),
        empty_history(),
    );
    assert_eq!(d.desired_replicas, 5);
    assert_eq!(
        condition(&d, ConditionType::ScalingActive),
        (true, "ValidMetricFound".into())
    );
    assert!(d.metrics[1]
        .error
        .as_ref()
        .unwrap()
        .contains("could not find the metric qps"));

    // Upstream TestScaleDownOneMetricInvalid: the valid metric says 1, no scaling.
    let (d, _) = run(
        &h,
        &input(3, vec![cpu(&["10m", "10m", "10m"]), broken()], pods()),
        empty_history(),
    );
    assert_eq!((d.desired_replicas, d.scaled), (3, false));
    assert_eq!(d.reason, "FailedGetObjectMetric");
    let (active, reason) = condition(&d, ConditionType::ScalingActive);
    assert_eq!((active, reason.as_str()), (false, "FailedGetObjectMetric"));
    assert!(d.metric_replicas.is_none());

    // Equal to current with one invalid metric: proceeds (not < spec replicas).
    let (d, _) = run(
        &h,
        &input(3, vec![cpu(&["300m", "300m", "300m"]), broken()], pods()),
        empty_history(),
    );
    assert_eq!((d.desired_replicas, d.metric_replicas), (3, Some(3)));
    assert_eq!(
        condition(&d, ConditionType::ScalingActive),
        (true, "ValidMetricFound".into())
    );

    // All invalid: the first failure's reason, nothing else.
    let (d, _) = run(
        &h,
        &input(3, vec![MetricInput::Error("boom".into()), broken()], pods()),
        empty_history(),
    );
    assert_eq!(
        (d.desired_replicas, d.reason.as_str()),
        (3, "FailedGetResourceMetric")
    );
    let msg = &d
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ScalingActive)
        .unwrap()
        .message;
    assert!(
        msg.starts_with("the HPA was unable to compute the replica count: "),
        "{msg}"
    );
    assert!(msg.contains("boom"), "{msg}");
}

#[test]
fn several_metrics_combine_by_maximum() {
    let two = format!("{OBJ_VALUE}{EXT_VALUE}");
    let h = hpa(1, 20, &two, "");
    let pods: Vec<PodInfo> = (0..4)
        .map(|i| PodInfo::running_ready(&format!("p{i}")))
        .collect();
    // Object: 20/10 × 4 ready = 8; External: 30/10 × 4 = 12.
    let i = input(
        4,
        vec![MetricInput::Value(q("20")), MetricInput::Value(q("30"))],
        pods,
    );
    let (d, _) = run(&h, &i, empty_history());
    let proposals: Vec<_> = d.metrics.iter().map(|m| m.proposed_replicas).collect();
    assert_eq!(proposals, vec![Some(8), Some(12)]);
    assert_eq!(d.desired_replicas, 12);
    let msg = &d
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ScalingActive)
        .unwrap()
        .message;
    assert!(msg.ends_with("external metric queue(<nil>)"), "{msg}");
}

#[test]
fn object_average_value_divides_by_status_replicas() {
    // The Seldon Model HPA: 7.5 rps over target 3 per replica → 3 replicas.
    let h = hpa(1, 3, OBJ_AVG, "");
    let mut i = input(1, vec![MetricInput::Value(q("7500m"))], vec![]);
    i.status_replicas = 1;
    let (d, _) = run(&h, &i, empty_history());
    assert_eq!(d.desired_replicas, 3);
    assert_eq!(
        d.metrics[0].current.as_ref().unwrap().average_value,
        Some(q("7500m"))
    );
}

#[test]
fn the_initial_recommendation_blocks_scale_down_for_the_window() {
    let h = hpa(1, 10, CPU30, "");
    let i = input(5, vec![cpu(&["30m"; 5])], pods_with_cpu(5, "1"));
    let (d, s) = run(&h, &i, HpaState::default());
    assert_eq!(
        (d.metric_replicas, d.desired_replicas, d.scaled),
        (Some(1), 5, false)
    );
    assert_eq!(
        condition(&d, ConditionType::AbleToScale),
        (true, "ScaleDownStabilized".into())
    );
    assert_eq!(s.recommendations.as_ref().unwrap().len(), 2);
    // An empty history is not "no history": scale down at once.
    let (d, _) = run(&h, &i, empty_history());
    assert_eq!(d.desired_replicas, 1);
    // Five minutes and one second later the seed is old: scale down.
    let later = now().plus(Duration::from_secs(301));
    let (d, _) = decide(&h, &i, s, &ControllerConfig::upstream_unit_tests(), later);
    assert_eq!((d.desired_replicas, d.scaled), (1, true));
}

#[test]
fn behavior_scale_down_window_defaults_to_the_controller_flag() {
    let h = hpa(
        1,
        10,
        CPU30,
        "  behavior:\n    scaleUp: {stabilizationWindowSeconds: 0}\n",
    );
    let i = input(5, vec![cpu(&["30m"; 5])], pods_with_cpu(5, "1"));
    let history = HpaState {
        recommendations: Some(vec![Recommendation {
            replicas: 4,
            timestamp: now().minus(Duration::from_secs(299)),
        }]),
        ..HpaState::default()
    };
    let (d, _) = run(&h, &i, history.clone());
    assert_eq!((d.desired_replicas, d.stabilized_replicas), (4, Some(4)));
    assert_eq!(
        condition(&d, ConditionType::AbleToScale),
        (true, "SucceededRescale".into())
    );
    let cfg = ControllerConfig {
        downscale_stabilization: Duration::from_secs(60),
        ..ControllerConfig::upstream_unit_tests()
    };
    let (d, _) = decide(&h, &i, history, &cfg, now());
    assert_eq!(
        d.desired_replicas, 1,
        "default down policy removes up to 100 %"
    );
}

#[test]
fn per_hpa_tolerance_overrides_the_flag_when_the_gate_is_on() {
    let behavior = "  behavior:\n    scaleUp: {tolerance: \"0.5\"}\n";
    let h = hpa(1, 10, OBJ_VALUE, behavior);
    let pods: Vec<PodInfo> = (0..4)
        .map(|i| PodInfo::running_ready(&format!("p{i}")))
        .collect();
    let i = input(4, vec![MetricInput::Value(q("14"))], pods);
    let (d, _) = run(&h, &i, empty_history());
    assert_eq!(
        (d.metric_replicas, d.scaled),
        (Some(4), false),
        "ratio 1.4 within 0.5"
    );
    let cfg = ControllerConfig {
        configurable_tolerance: false,
        ..ControllerConfig::upstream_unit_tests()
    };
    let (d, _) = decide(&h, &i, empty_history(), &cfg, now());
    assert_eq!(
        d.metric_replicas,
        Some(6),
        "gate off: 1.4 × 4 ready = 5.6 → 6"
    );
    // The scale-down side still uses the flag.
    let i = input(4, vec![MetricInput::Value(q("7"))], i.pods);
    let (d, _) = run(&h, &i, empty_history());
    assert_eq!(d.metric_replicas, Some(3));
}

#[test]
fn decide_records_scale_events_only_with_behavior_and_evaluate_never() {
    let i = input(
        3,
        vec![cpu(&["300m", "500m", "700m"])],
        pods_with_cpu(3, "1"),
    );
    let with = hpa(1, 10, CPU30, "  behavior: {}\n");
    let (d, s) = run(&with, &i, empty_history());
    assert_eq!(d.desired_replicas, 5);
    assert_eq!(s.scale_up_events.len(), 1);
    assert_eq!(s.scale_up_events[0].change, 2);
    let (_, s) = evaluate(
        &with,
        &i,
        empty_history(),
        &ControllerConfig::upstream_unit_tests(),
        now(),
    );
    assert!(s.scale_up_events.is_empty());
    let without = hpa(1, 10, CPU30, "");
    let (_, s) = run(&without, &i, empty_history());
    assert!(s.scale_up_events.is_empty());
}

#[test]
fn default_behavior_scales_up_by_four_pods_or_double_per_fifteen_seconds() {
    // A constant demand for 40 replicas from a Value metric, with default behavior.
    let h = hpa(1, 40, OBJ_VALUE, "  behavior: {}\n");
    let cfg = ControllerConfig::default();
    let mut state = HpaState::default();
    let mut replicas = 1;
    let mut seen = vec![];
    for step in 0..6 {
        let t = now().plus(Duration::from_secs(15 * step));
        let pods: Vec<PodInfo> = (0..replicas)
            .map(|i| PodInfo::running_ready(&format!("p{i}")))
            .collect();
        // value/target × ready = 40 wanted.
        let value = Quantity::from_milli(40_000 * 10 / i64::from(replicas.max(1)));
        let i = input(replicas, vec![MetricInput::Value(value)], pods);
        let (d, s) = decide(&h, &i, state, &cfg, t);
        state = s;
        replicas = d.desired_replicas;
        seen.push(replicas);
    }
    assert_eq!(seen, vec![5, 10, 20, 40, 40, 40]);
}
