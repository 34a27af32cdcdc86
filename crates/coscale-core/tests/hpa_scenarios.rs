//! `coscale hpa explain` scenarios: every `tests/hpa_scenarios/*.yaml` is explained and
//! compared with its `*.expected.json` (hand-checked against the comment at the top of
//! each scenario). `UPDATE_EXPECT=1 cargo test --test hpa_scenarios` rewrites them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use coscale_core::hpa::scenario::{explain, render, ExplainError};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hpa_scenarios")
}

fn scenario(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap()
}

fn check(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let got: serde_json::Value = serde_json::from_str(
        &render(&text, true).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    let expected_path = path.with_extension("expected.json");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(
            &expected_path,
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display())),
    )
    .unwrap();
    assert_eq!(
        got,
        expected,
        "{}: got\n{}",
        path.display(),
        serde_json::to_string_pretty(&got).unwrap()
    );
}

#[test]
fn every_scenario_explains_as_expected() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            check(&path);
            n += 1;
        }
    }
    assert!(n >= 6, "only {n} scenarios found in {}", dir().display());
}

#[test]
fn key_decisions_of_the_scenarios() {
    let e = explain(&scenario("seldon-model-scale-up.yaml")).unwrap();
    assert_eq!(
        (e.desired_replicas, e.scaled, e.reason.as_str()),
        (3, true, "DesiredWithinRange")
    );
    assert_eq!(e.metrics[0].current_value.as_deref(), Some("7500m"));

    let e = explain(&scenario("cpu-unready-pod.yaml")).unwrap();
    assert_eq!(
        (e.desired_replicas, e.metrics[0].current_value.as_deref()),
        (4, Some("90%"))
    );
    assert_eq!(e.history.recommendations.len(), 1, "empty history: no seed");

    let e = explain(&scenario("behavior-scale-up-stabilized.yaml")).unwrap();
    assert_eq!(
        (e.metric_replicas, e.stabilized_replicas, e.desired_replicas),
        (Some(10), Some(2), 2)
    );
    assert_eq!(e.history.scale_up_events.len(), 2);

    let e = explain(&scenario("invalid-metric-blocks-scale-down.yaml")).unwrap();
    assert_eq!(
        (e.desired_replicas, e.scaled, e.reason.as_str()),
        (4, false, "FailedGetExternalMetric")
    );
    assert_eq!(e.metrics[1].proposed_replicas, Some(1));

    let e = explain(&scenario("scaling-disabled.yaml")).unwrap();
    assert_eq!(
        (e.desired_replicas, e.reason.as_str()),
        (0, "ScalingDisabled")
    );

    let e = explain(&scenario("no-behavior-scale-down-stabilized.yaml")).unwrap();
    assert_eq!(
        (e.metric_replicas, e.desired_replicas, e.scaled),
        (Some(2), 6, false)
    );
    let ages: Vec<(i32, i64)> = e
        .history
        .recommendations
        .iter()
        .map(|r| (r.replicas, r.age_seconds))
        .collect();
    assert_eq!(ages, vec![(6, 120), (2, 0)]);
}

#[test]
fn the_text_output_is_an_aligned_table_with_the_decision() {
    let text = render(&scenario("invalid-metric-blocks-scale-down.yaml"), false).unwrap();
    assert!(
        text.contains("HPA jobs/worker -> Deployment/worker"),
        "{text}"
    );
    assert!(
        text.contains("METRIC               TYPE      CURRENT  PROPOSED"),
        "{text}"
    );
    assert!(
        text.contains("requests_per_second  Pods      2500m    1"),
        "{text}"
    );
    assert!(
        text.contains("decision: keep 4 (FailedGetExternalMetric)"),
        "{text}"
    );
    assert!(
        text.contains("ScalingActive  False   FailedGetExternalMetric"),
        "{text}"
    );
}

#[test]
fn scenario_errors_name_the_field() {
    let base = scenario("seldon-model-scale-up.yaml");
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("specReplicas: 1", "specReplica: 1"),
            "target.specReplica",
        ),
        (
            base.replace(
                "  - value: \"7500m\"",
                "  - value: \"7500m\"\n  - value: \"1\"",
            ),
            "metrics: has 2 entries but the HPA has 1",
        ),
        (
            base.replace("  - value: \"7500m\"", "  - {value: \"1\", error: x}"),
            "metrics[0]: set exactly one of",
        ),
        (
            base.replace("  - value: \"7500m\"", "  - value: \"lots\""),
            "metrics[0].value",
        ),
        (
            base.replace("maxReplicas: 3", "maxReplicas: 0"),
            "hpa: invalid HorizontalPodAutoscaler: spec.maxReplicas",
        ),
        (
            base.replace("averageValue: 3}", "averageValue: 3, extra: 1}"),
            "spec.metrics[0].object.target.extra",
        ),
    ];
    for (text, expected) in cases {
        let err: ExplainError = explain(&text).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in {err}"
        );
    }
    assert!(matches!(
        explain("hpa: [").unwrap_err(),
        ExplainError::Syntax(_)
    ));
}
