//! HPA object parsing, API defaults and validation (hpa-algorithm.md §1.6, §1.9).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use coscale_core::hpa::api::{
    MetricSourceType, MetricTargetType, ScalingPolicy, ScalingPolicyType, SelectPolicy,
};
use coscale_core::hpa::{parse_hpa, parse_hpa_documents, HpaError};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/hpa")
}

const BASE: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 10
"#;

fn with_spec(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn error_text(text: &str) -> String {
    parse_hpa(text).expect_err("should be rejected").to_string()
}

#[test]
fn every_hpa_fixture_parses_and_validates() {
    let dir = fixtures_dir();
    assert!(
        dir.is_dir(),
        "HPA fixtures missing at {} (expected shared/ beside the work tree)",
        dir.display()
    );
    let mut hpas = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed =
            parse_hpa_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for hpa in &parsed {
            assert_eq!(hpa.spec.min_replicas, 1, "{}", path.display());
            assert_eq!(hpa.spec.max_replicas, 3, "{}", path.display());
            let m = &hpa.spec.metrics[0];
            assert_eq!(m.type_, MetricSourceType::Object);
            let o = m.object.as_ref().unwrap();
            assert_eq!(o.metric.name, "infer_rps");
            assert_eq!(o.target.type_, MetricTargetType::AverageValue);
            assert_eq!(o.target.average_value.unwrap().milli_value(), 3000);
        }
        hpas += parsed.len();
    }
    // hpa-custom-policy, hpa-rest-only-selector, irisa0-model-hpa, and two in
    // single-model-serving-hpa.
    assert_eq!(hpas, 5);
}

#[test]
fn custom_policy_fixture_gets_behavior_defaults_for_unset_fields() {
    let text = std::fs::read_to_string(fixtures_dir().join("hpa-custom-policy.yaml")).unwrap();
    let hpa = parse_hpa(&text).unwrap();
    let b = hpa.spec.behavior.unwrap();
    let up = b.scale_up.unwrap();
    assert_eq!(up.stabilization_window_seconds, Some(60));
    assert_eq!(up.select_policy, Some(SelectPolicy::Max));
    assert_eq!(
        up.policies.unwrap(),
        vec![ScalingPolicy::new(ScalingPolicyType::Pods, 5, 90)]
    );
    let down = b.scale_down.unwrap();
    assert_eq!(down.stabilization_window_seconds, None);
    assert_eq!(down.select_policy, Some(SelectPolicy::Max));
    assert_eq!(
        down.policies.unwrap(),
        vec![ScalingPolicy::new(ScalingPolicyType::Percent, 100, 15)]
    );
}

#[test]
fn rest_only_selector_fixture_keeps_the_metric_selector() {
    let text = std::fs::read_to_string(fixtures_dir().join("hpa-rest-only-selector.yaml")).unwrap();
    let hpa = parse_hpa(&text).unwrap();
    let sel = hpa.spec.metrics[0]
        .object
        .as_ref()
        .unwrap()
        .metric
        .selector
        .clone();
    assert_eq!(sel.unwrap().to_string(), "method_type=rest");
}

#[test]
fn defaults_min_replicas_to_one_and_metrics_to_cpu_eighty_percent() {
    let hpa = parse_hpa(BASE).unwrap();
    assert_eq!(hpa.spec.min_replicas, 1);
    assert_eq!(hpa.spec.metrics.len(), 1);
    let r = hpa.spec.metrics[0].resource.as_ref().unwrap();
    assert_eq!(r.name, "cpu");
    assert_eq!(r.target.type_, MetricTargetType::Utilization);
    assert_eq!(r.target.average_utilization, Some(80));
    assert!(
        hpa.spec.behavior.is_none(),
        "no behavior must stay no behavior"
    );
}

#[test]
fn a_missing_behavior_direction_gets_the_whole_default_set() {
    let hpa = parse_hpa(&with_spec(
        "  behavior:\n    scaleDown: {stabilizationWindowSeconds: 10}\n",
    ))
    .unwrap();
    let b = hpa.spec.behavior.unwrap();
    let up = b.scale_up.unwrap();
    assert_eq!(up.stabilization_window_seconds, Some(0));
    assert_eq!(
        up.policies.unwrap(),
        vec![
            ScalingPolicy::new(ScalingPolicyType::Pods, 4, 15),
            ScalingPolicy::new(ScalingPolicyType::Percent, 100, 15)
        ]
    );
    assert_eq!(b.scale_down.unwrap().stabilization_window_seconds, Some(10));
}

#[test]
fn policies_are_replaced_wholesale_not_merged() {
    let hpa = parse_hpa(&with_spec(
        "  behavior:\n    scaleUp:\n      policies: [{type: Percent, value: 50, periodSeconds: 60}]\n",
    ))
    .unwrap();
    let up = hpa.spec.behavior.unwrap().scale_up.unwrap();
    assert_eq!(
        up.policies.unwrap(),
        vec![ScalingPolicy::new(ScalingPolicyType::Percent, 50, 60)]
    );
}

#[test]
fn unknown_fields_in_spec_are_rejected_with_their_path() {
    let text = with_spec(
        "  metrics:\n  - type: Pods\n    pods:\n      metric: {name: qps}\n      target: {type: AverageValue, averageValue: 1, averageValu: 2}\n",
    );
    let err = parse_hpa(&text).unwrap_err();
    match &err {
        HpaError::Field { path, message } => {
            assert_eq!(path, "spec.metrics[0].pods.target.averageValu");
            assert!(message.contains("averageValu"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error_text(&with_spec("  minReplica: 2\n")).contains("spec"));
}

#[test]
fn unknown_metadata_fields_are_kept_not_rejected() {
    let text = BASE.replace(
        "metadata: {name: web, namespace: shop}",
        "metadata: {name: web, namespace: shop, labels: {a: b}, uid: x}",
    );
    let hpa = parse_hpa(&text).unwrap();
    assert_eq!(hpa.metadata.name.as_deref(), Some("web"));
    assert!(hpa.metadata.other.contains_key("labels"));
}

#[test]
fn validation_rejects_what_the_api_server_rejects() {
    let cases: &[(&str, &str)] = &[
        ("  minReplicas: 11\n", "spec.maxReplicas: must be greater than or equal to minReplicas"),
        ("  minReplicas: 0\n", "spec.minReplicas"),
        (
            "  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization}}\n",
            "spec.metrics[0].resource.target.averageUtilization: must be set",
        ),
        (
            "  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 0}}\n",
            "spec.metrics[0].resource.target.averageUtilization: must be greater than 0",
        ),
        (
            "  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Value, value: 1}}\n",
            "spec.metrics[0].resource.target.type",
        ),
        (
            "  metrics:\n  - type: Object\n    pods: {metric: {name: x}, target: {type: AverageValue, averageValue: 1}}\n",
            "spec.metrics[0].object: must be set when type is Object",
        ),
        (
            "  metrics:\n  - type: External\n    external: {metric: {name: q}, target: {type: AverageValue, value: 3}}\n",
            "spec.metrics[0].external.target.averageValue: must be set",
        ),
        (
            "  behavior:\n    scaleUp: {stabilizationWindowSeconds: 3601}\n",
            "spec.behavior.scaleUp.stabilizationWindowSeconds",
        ),
        (
            "  behavior:\n    scaleDown: {policies: []}\n",
            "spec.behavior.scaleDown.policies: must specify at least one policy",
        ),
        (
            "  behavior:\n    scaleDown: {policies: [{type: Pods, value: 0, periodSeconds: 1801}]}\n",
            "spec.behavior.scaleDown.policies[0].value",
        ),
        (
            "  behavior:\n    scaleDown: {tolerance: \"-0.1\"}\n",
            "spec.behavior.scaleDown.tolerance: must be greater than or equal to 0",
        ),
    ];
    for (extra, expected) in cases {
        let text = with_spec(extra);
        let err = error_text(&text);
        assert!(err.contains(expected), "for {extra:?}: got {err}");
    }
}

#[test]
fn zero_min_replicas_is_allowed_with_an_object_or_external_metric() {
    let text = with_spec(
        "  minReplicas: 0\n  metrics:\n  - type: External\n    external: {metric: {name: q}, target: {type: Value, value: 3}}\n",
    );
    assert_eq!(parse_hpa(&text).unwrap().spec.min_replicas, 0);
}

#[test]
fn wrong_kind_or_api_version_is_reported() {
    let err = error_text(&BASE.replace("autoscaling/v2", "autoscaling/v1"));
    assert!(err.contains("apiVersion"), "{err}");
    let text = "apiVersion: autoscaling/v2\nkind: Deployment\nmetadata: {}\nspec: {scaleTargetRef: {kind: A, name: b}, maxReplicas: 1}\n";
    assert!(error_text(text).contains("kind"));
}

#[test]
fn parse_hpa_documents_skips_other_kinds_and_parses_json_too() {
    let text = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{BASE}");
    assert_eq!(parse_hpa_documents(&text).unwrap().len(), 1);
    let json = r#"{"apiVersion":"autoscaling/v2","kind":"HorizontalPodAutoscaler","metadata":{"name":"j"},"spec":{"scaleTargetRef":{"kind":"Deployment","name":"j"},"minReplicas":2,"maxReplicas":4}}"#;
    assert_eq!(parse_hpa(json).unwrap().spec.min_replicas, 2);
}

#[test]
fn a_parsed_hpa_round_trips_through_json() {
    let text = std::fs::read_to_string(fixtures_dir().join("hpa-custom-policy.yaml")).unwrap();
    let hpa = parse_hpa(&text).unwrap();
    let json = serde_json::to_string(&hpa).unwrap();
    assert_eq!(parse_hpa(&json).unwrap(), hpa);
}
