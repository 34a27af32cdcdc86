//! Per-metric replica proposals (hpa-algorithm.md §1.4–§1.6). Most cases are ports of
//! upstream `replica_calculator_test.go` (each pod has one container here, so raw
//! averages are half of upstream's two-container values; ratios are identical).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::collections::BTreeMap;
use std::time::Duration;

use coscale_core::hpa::calc::{
    external_sum, group_pods, per_pod_replicas, plain_metric_replicas, resource_replicas,
    usage_ratio_replicas, CalcContext, PodInfo, PodMetric, PodMetrics, PodPhase, Tolerances,
};
use coscale_core::hpa::Timestamp;
use coscale_core::quantity::Quantity;

const NOW_S: i64 = 100_000;

fn now() -> Timestamp {
    Timestamp::from_secs(NOW_S)
}

fn ago(s: i64) -> Timestamp {
    Timestamp::from_secs(NOW_S - s)
}

fn q(s: &str) -> Quantity {
    s.parse().unwrap()
}

/// A pod as upstream tests build it: started long ago, Ready=True since then, 1 CPU.
fn pod(i: usize) -> PodInfo {
    PodInfo {
        name: format!("pod-{i}"),
        phase: PodPhase::Running,
        ready: Some(true),
        ready_transition: Some(Timestamp::from_secs(0)),
        start_time: Some(Timestamp::from_secs(0)),
        deleted: false,
        requests: BTreeMap::from([("cpu".to_string(), q("1"))]),
    }
}

fn pods(n: usize) -> Vec<PodInfo> {
    (0..n).map(pod).collect()
}

fn with_readiness(mut ps: Vec<PodInfo>, ready: &[bool]) -> Vec<PodInfo> {
    for (p, r) in ps.iter_mut().zip(ready) {
        p.ready = Some(*r);
    }
    ps
}

/// Metric samples for pods 0.. in order, taken now over a 60 s window.
fn levels(milli: &[i64]) -> PodMetrics {
    milli
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                format!("pod-{i}"),
                PodMetric {
                    milli: *m,
                    timestamp: now(),
                    window: Duration::from_secs(60),
                },
            )
        })
        .collect()
}

/// Upstream test controller settings: tolerance 0.1, CPU init 2 min, delay 10 s.
fn ctx(pods: &[PodInfo]) -> CalcContext<'_> {
    CalcContext {
        pods,
        now: now(),
        tolerances: Tolerances::both(0.1),
        cpu_initialization_period: Duration::from_secs(120),
        initial_readiness_delay: Duration::from_secs(10),
    }
}

struct ResourceCase {
    name: &'static str,
    current: i32,
    pods: Vec<PodInfo>,
    levels: Vec<i64>,
    target: i32,
    expected: i32,
    utilization: i32,
    raw: i64,
}

#[allow(clippy::too_many_arguments)]
fn rc(
    name: &'static str,
    current: i32,
    pods: Vec<PodInfo>,
    levels: Vec<i64>,
    target: i32,
    expected: i32,
    utilization: i32,
    raw: i64,
) -> ResourceCase {
    ResourceCase {
        name,
        current,
        pods,
        levels,
        target,
        expected,
        utilization,
        raw,
    }
}

#[test]
fn resource_utilization_cases_match_upstream() {
    let hot = |mut ps: Vec<PodInfo>, hot: &[usize]| {
        for i in hot {
            // Started and Ready 30 s ago: within the 2 min initialization period and
            // the sample window (60 s) has not passed since the Ready transition.
            ps[*i].start_time = Some(ago(30));
            ps[*i].ready_transition = Some(ago(30));
        }
        ps
    };
    let failed = |mut ps: Vec<PodInfo>, idx: &[usize]| {
        for i in idx {
            ps[*i].phase = PodPhase::Failed;
            ps[*i].ready = Some(false);
        }
        ps
    };
    let deleted = |mut ps: Vec<PodInfo>, idx: &[usize]| {
        for i in idx {
            ps[*i].deleted = true;
        }
        ps
    };
    #[rustfmt::skip]
    let cases = vec![
        rc("ScaleUp", 3, pods(3), vec![300, 500, 700], 30, 5, 50, 500),
        rc("ScaleUpUnreadyLessScale", 3, with_readiness(pods(3), &[false, true, true]), vec![300, 500, 700], 30, 4, 60, 600),
        rc("ScaleUpHotCpuLessScale", 3, hot(pods(3), &[0]), vec![300, 500, 700], 30, 4, 60, 600),
        rc("ScaleUpUnreadyNoScale", 3, with_readiness(pods(3), &[true, false, false]), vec![400, 500, 700], 30, 3, 40, 400),
        rc("ScaleHotCpuNoScale", 3, hot(pods(3), &[1, 2]), vec![400, 500, 700], 30, 3, 40, 400),
        rc("ScaleUpIgnoresFailedPods", 2, failed(pods(4), &[2, 3]), vec![500, 700, 100, 100], 30, 4, 60, 600),
        rc("ScaleUpIgnoresDeletionPods", 2, deleted(pods(4), &[2, 3]), vec![500, 700, 100, 100], 30, 4, 60, 600),
        rc("ScaleDown", 5, pods(5), vec![100, 300, 500, 250, 250], 50, 3, 28, 280),
        rc("ScaleDownExcludeUnreadyPods", 5, with_readiness(pods(5), &[false, false, true, true, true]), vec![100, 300, 500, 250, 250], 50, 2, 33, 333),
        rc("ScaleDownIgnoreHotCpuPods", 5, hot(pods(5), &[0, 1]), vec![100, 300, 500, 250, 250], 50, 2, 33, 333),
        rc("ScaleDownIgnoresFailedPods", 5, failed(pods(7), &[5, 6]), vec![100, 300, 500, 250, 250], 50, 3, 28, 280),
        rc("ScaleDownIgnoresDeletionPods", 5, deleted(pods(7), &[5, 6]), vec![100, 300, 500, 250, 250], 50, 3, 28, 280),
        rc("Tolerance", 3, pods(3), vec![1010, 1030, 1020], 100, 3, 102, 1020),
        rc("SuperfluousMetrics", 4, pods(4), vec![4000, 9500, 3000, 7000, 3200, 2000], 100, 24, 587, 5875),
        rc("MissingMetrics", 4, pods(4), vec![400, 95], 100, 3, 24, 247),
        rc("MissingMetricsNoChangeEq", 2, pods(2), vec![1000], 100, 2, 100, 1000),
        rc("MissingMetricsNoChangeGt", 2, pods(2), vec![1900], 100, 2, 190, 1900),
        rc("MissingMetricsNoChangeLt", 2, pods(2), vec![600], 100, 2, 60, 600),
        rc("MissingMetricsUnreadyScaleUp", 3, with_readiness(pods(3), &[false, true, true]), vec![100, 2000], 50, 4, 200, 2000),
        rc("MissingMetricsUnreadyScaleDown", 4, with_readiness(pods(4), &[false, true, true, true]), vec![100, 100, 100], 50, 3, 10, 100),
    ];
    for c in cases {
        let got = resource_replicas(&ctx(&c.pods), c.current, c.target, "cpu", levels(&c.levels))
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(
            (got.replicas, got.utilization, got.raw_average_milli),
            (c.expected, c.utilization, c.raw),
            "{}",
            c.name
        );
    }
}

#[test]
fn missing_pods_count_as_the_target_when_it_is_above_one_hundred_percent() {
    // Upstream MissingMetricsScaleDownTargetOver100 (requests 2 CPU, target 300 %).
    let mut ps = pods(4);
    for p in &mut ps {
        p.requests.insert("cpu".into(), q("2"));
    }
    let got = resource_replicas(&ctx(&ps), 4, 300, "cpu", levels(&[200, 100, 100])).unwrap();
    assert_eq!(
        (got.replicas, got.utilization, got.raw_average_milli),
        (2, 6, 133)
    );
}

#[test]
fn resource_calculation_fails_without_pods_metrics_or_requests() {
    let empty: Vec<PodInfo> = vec![];
    let e = resource_replicas(&ctx(&empty), 1, 50, "cpu", levels(&[100])).unwrap_err();
    assert!(e.0.contains("no pods returned by selector"), "{e}");

    let ps = pods(2);
    let e = resource_replicas(&ctx(&ps), 2, 50, "cpu", BTreeMap::new()).unwrap_err();
    assert!(e.0.contains("did not receive metrics"), "{e}");

    let mut ps = pods(2);
    ps[1].requests.clear();
    let e = resource_replicas(&ctx(&ps), 2, 50, "cpu", levels(&[100, 100])).unwrap_err();
    assert!(e.0.contains("missing request for cpu in Pod pod-1"), "{e}");

    // Metrics only for pods outside the pod list: nothing matches a request.
    let ps = pods(1);
    let mut m = levels(&[0, 100]);
    m.remove("pod-0");
    let e = resource_replicas(&ctx(&ps), 1, 50, "cpu", m).unwrap_err();
    assert!(
        e.0.contains("no metrics returned matched known pods"),
        "{e}"
    );
}

#[test]
fn memory_ignores_readiness_but_cpu_does_not() {
    let mut ps = with_readiness(pods(3), &[false, true, true]);
    for p in &mut ps {
        p.requests.insert("memory".into(), q("1"));
    }
    let m = levels(&[300, 500, 700]);
    let mem = resource_replicas(&ctx(&ps), 3, 30, "memory", m.clone()).unwrap();
    assert_eq!((mem.replicas, mem.utilization), (5, 50));
    let cpu = resource_replicas(&ctx(&ps), 3, 30, "cpu", m).unwrap();
    assert_eq!((cpu.replicas, cpu.utilization), (4, 60));
}

struct PlainCase {
    name: &'static str,
    current: i32,
    pods: Vec<PodInfo>,
    levels: Vec<i64>,
    target: i64,
    expected: i32,
    usage: i64,
}

fn pc(
    name: &'static str,
    current: i32,
    pods: Vec<PodInfo>,
    levels: Vec<i64>,
    target: i64,
    expected: i32,
    usage: i64,
) -> PlainCase {
    PlainCase {
        name,
        current,
        pods,
        levels,
        target,
        expected,
        usage,
    }
}

#[test]
fn pods_metric_cases_match_upstream() {
    #[rustfmt::skip]
    let cases = vec![
        pc("ScaleUpCM", 3, pods(3), vec![20000, 10000, 30000], 15000, 4, 20000),
        pc("ScaleUpCMUnreadyHotCpuNoLessScale", 3, with_readiness(pods(3), &[false, true, false]), vec![50000, 10000, 30000], 15000, 6, 30000),
        pc("ScaleUpCMUnreadyHotCpuScaleWouldScaleDown", 3, with_readiness(pods(3), &[false, true, false]), vec![50000, 15000, 30000], 15000, 7, 31666),
        pc("ScaleDownCM", 5, pods(5), vec![12000; 5], 20000, 3, 12000),
        pc("ToleranceCM", 3, pods(3), vec![20000, 21000, 21000], 20000, 3, 20666),
        // Missing pods: scale-down fills the target, scale-up fills 0.
        pc("MissingPodsScaleDown", 4, pods(4), vec![1000, 1000], 10000, 3, 1000),
        pc("MissingPodsScaleUp", 4, pods(4), vec![40000, 40000], 10000, 8, 40000),
        pc("MissingPodsAtTargetStay", 4, pods(4), vec![10000], 10000, 4, 10000),
        // Superfluous samples (pods not in the list) count in the average, not as ready.
        pc("SuperfluousSamplesCountInTheAverage", 2, pods(2), vec![30000, 30000, 30000], 10000, 6, 30000),
    ];
    for c in cases {
        let (replicas, usage) =
            plain_metric_replicas(&ctx(&c.pods), c.current, c.target, None, levels(&c.levels))
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!((replicas, usage), (c.expected, c.usage), "{}", c.name);
    }
}

#[test]
fn missing_pods_scale_up_is_dampened_by_the_second_pass() {
    // 4 pods, 2 samples at 4x target; missing get 0 → average 2x over 4 → 8 replicas.
    let ps = pods(4);
    let (r, _) = plain_metric_replicas(&ctx(&ps), 4, 10000, None, levels(&[40000, 40000])).unwrap();
    assert_eq!(r, 8);
    // With 3 missing pods and 1 sample at 4x, the second-pass ratio is exactly 1:
    // within tolerance, keep 4.
    let (r, _) = plain_metric_replicas(&ctx(&ps), 4, 10000, None, levels(&[40000])).unwrap();
    assert_eq!(r, 4);
}

#[test]
fn cpu_average_value_targets_use_cpu_readiness_rules() {
    let ps = with_readiness(pods(3), &[false, true, true]);
    let m = levels(&[300, 500, 700]);
    let (cpu, usage) = plain_metric_replicas(&ctx(&ps), 3, 300, Some("cpu"), m.clone()).unwrap();
    // Unready pod-0 dropped: avg 600 → ratio 2 → unready filled 0 → 400 → 1.33 → 4.
    assert_eq!((cpu, usage), (4, 600));
    let (pods_metric, usage) = plain_metric_replicas(&ctx(&ps), 3, 300, None, m).unwrap();
    assert_eq!((pods_metric, usage), (5, 500));
}

#[test]
fn object_and_external_value_targets_multiply_by_ready_pods() {
    let cases: &[(&str, i32, Vec<PodInfo>, i64, i64, i32)] = &[
        ("ScaleUpCMObject", 3, pods(3), 20000, 15000, 4),
        (
            "ScaleUpCMObjectIgnoresUnreadyPods",
            3,
            with_readiness(pods(3), &[false, true, false]),
            50000,
            10000,
            5,
        ),
        ("ScaleDownCMObject", 5, pods(5), 12000, 20000, 3),
        ("ToleranceCMObject", 3, pods(3), 20666, 20000, 3),
        ("ScaleUpCMExternal", 1, pods(1), 8600, 4400, 2),
        (
            "ScaleUpCMExternalIgnoresUnreadyPods",
            3,
            with_readiness(pods(3), &[false, true, false]),
            8600,
            4400,
            2,
        ),
        ("ScaleDownCMExternal", 5, pods(5), 8600, 14334, 3),
        ("ToleranceCMExternal", 3, pods(3), 8600, 8888, 3),
    ];
    for (name, current, ps, usage, target, expected) in cases {
        let got = usage_ratio_replicas(&ctx(ps), *current, *usage, *target)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, *expected, "{name}");
    }
}

#[test]
fn value_targets_scale_from_zero_without_tolerance_or_pods() {
    let none: Vec<PodInfo> = vec![];
    assert_eq!(usage_ratio_replicas(&ctx(&none), 0, 1050, 1000).unwrap(), 2);
    assert_eq!(usage_ratio_replicas(&ctx(&none), 0, 0, 1000).unwrap(), 0);
    // With replicas > 0 but no pods matched, the ready count fails.
    let e = usage_ratio_replicas(&ctx(&none), 2, 5000, 1000).unwrap_err();
    assert!(e.0.contains("no pods returned by selector"), "{e}");
    // Pending pods never count as ready: ratio 5 × 0 ready = 0.
    let mut ps = pods(2);
    ps[0].phase = PodPhase::Pending;
    ps[1].ready = None;
    assert_eq!(usage_ratio_replicas(&ctx(&ps), 2, 5000, 1000).unwrap(), 0);
}

#[test]
fn value_target_proposals_saturate_at_i32_max() {
    let ps = pods(3);
    assert_eq!(
        usage_ratio_replicas(&ctx(&ps), 3, i64::MAX, 1).unwrap(),
        i32::MAX
    );
}

#[test]
fn average_value_targets_divide_by_status_replicas() {
    let t = Tolerances::both(0.1);
    // (name, statusReplicas, usage, target, expected replicas, reported average)
    let cases: &[(&str, i32, i64, i64, i32, i64)] = &[
        ("ScaleUpCMPerPodObject", 3, 40000, 10000, 4, 13334),
        ("ScaleDownPerPodCMObject", 5, 6000, 2000, 3, 1200),
        ("TolerancePerPodCMObject", 4, 20166, 5000, 4, 5042),
        ("ScaleUpPerPodCMExternal", 3, 8600, 2150, 4, 2867),
        ("ScaleDownPerPodCMExternal", 5, 8600, 2867, 3, 1720),
        ("TolerancePerPodCMExternal", 3, 8600, 2900, 3, 2867),
        ("SeldonInferRps", 1, 7500, 3000, 3, 7500),
    ];
    for (name, status, usage, target, expected, avg) in cases {
        assert_eq!(
            per_pod_replicas(t, *status, *usage, *target),
            (*expected, *avg),
            "{name}"
        );
    }
    // Saturated external sums report i64::MAX per pod and cap replicas.
    assert_eq!(per_pod_replicas(t, 2, i64::MAX, 1), (i32::MAX, i64::MAX));
}

#[test]
fn external_sums_saturate_at_i64_max() {
    assert_eq!(external_sum(&[q("1"), q("500m")]), 1500);
    let huge = Quantity::from_milli(i64::MAX - 1);
    assert_eq!(external_sum(&[huge, q("1")]), i64::MAX);
}

#[test]
fn tolerance_is_a_closed_interval_with_per_direction_bounds() {
    let t = Tolerances::both(0.1);
    assert!(
        t.is_within(1.1),
        "ratio exactly 1.1 is within (v1.33+ form)"
    );
    assert!(t.is_within(0.9));
    assert!(!t.is_within(1.1000001));
    assert!(!t.is_within(0.8999999));
    let t = Tolerances {
        scale_down: 0.5,
        scale_up: 0.01,
    };
    assert!(t.is_within(0.5));
    assert!(!t.is_within(1.02));
    // In a calculator: ratio 1.05 scales up with a 1 % up-tolerance.
    let ps = pods(4);
    let mut c = ctx(&ps);
    c.tolerances = t;
    assert_eq!(usage_ratio_replicas(&c, 4, 1050, 1000).unwrap(), 5);
    c.tolerances = Tolerances::both(0.1);
    assert_eq!(usage_ratio_replicas(&c, 4, 1050, 1000).unwrap(), 4);
}

#[test]
fn group_pods_follows_the_cpu_readiness_rules() {
    let base = pod(0);
    let one = |f: &dyn Fn(&mut PodInfo), metric: Option<(i64, u64)>, resource: Option<&str>| {
        let mut p = base.clone();
        f(&mut p);
        let ps = vec![p];
        let m: PodMetrics = metric
            .map(|(age, window)| {
                (
                    "pod-0".to_string(),
                    PodMetric {
                        milli: 1,
                        timestamp: ago(age),
                        window: Duration::from_secs(window),
                    },
                )
            })
            .into_iter()
            .collect();
        let g = group_pods(&ctx(&ps), &m, resource);
        (g.ready, g.unready.len(), g.missing.len(), g.ignored.len())
    };
    let cpu = Some("cpu");
    // (name, mutation, metric (age, window), resource, (ready, unready, missing, ignored))
    type Mutation = Box<dyn Fn(&mut PodInfo)>;
    #[rustfmt::skip]
    let cases: Vec<(&str, Mutation, Option<(i64, u64)>, Option<&str>, (i64, usize, usize, usize))> = vec![
        ("a ready pod with a sample", Box::new(|_| {}), Some((0, 60)), cpu, (1, 0, 0, 0)),
        ("a ready pod without a sample is missing", Box::new(|_| {}), None, cpu, (0, 0, 1, 0)),
        ("no Ready condition is unready for cpu", Box::new(|p| p.ready = None), Some((0, 60)), cpu, (0, 1, 0, 0)),
        ("no Ready condition counts for memory", Box::new(|p| p.ready = None), Some((0, 60)), Some("memory"), (1, 0, 0, 0)),
        ("no start time is unready for cpu", Box::new(|p| p.start_time = None), Some((0, 60)), cpu, (0, 1, 0, 0)),
        ("initializing with a fresh sample is ready", Box::new(|p| { p.start_time = Some(ago(60)); p.ready_transition = Some(ago(60)); }), Some((0, 30)), cpu, (1, 0, 0, 0)),
        ("initializing without a full window since Ready is unready", Box::new(|p| { p.start_time = Some(ago(60)); p.ready_transition = Some(ago(30)); }), Some((0, 60)), cpu, (0, 1, 0, 0)),
        ("initializing and not ready is unready", Box::new(|p| { p.start_time = Some(ago(60)); p.ready_transition = Some(ago(119)); p.ready = Some(false); }), Some((0, 30)), cpu, (0, 1, 0, 0)),
        ("after init, ready without a fresh sample is ready", Box::new(|p| { p.start_time = Some(ago(180)); p.ready_transition = Some(ago(1)); }), Some((0, 60)), cpu, (1, 0, 0, 0)),
        ("after init, not ready but was ready once counts", Box::new(|p| { p.start_time = Some(ago(600)); p.ready_transition = Some(ago(540)); p.ready = Some(false); }), Some((0, 60)), cpu, (1, 0, 0, 0)),
        ("after init, never ready is unready", Box::new(|p| { p.start_time = Some(ago(600)); p.ready_transition = Some(ago(595)); p.ready = Some(false); }), Some((0, 60)), cpu, (0, 1, 0, 0)),
        ("pending pods are unready", Box::new(|p| p.phase = PodPhase::Pending), Some((0, 60)), None, (0, 1, 0, 0)),
        ("failed pods are ignored", Box::new(|p| p.phase = PodPhase::Failed), Some((0, 60)), None, (0, 0, 0, 1)),
        ("deleted pods are ignored", Box::new(|p| p.deleted = true), None, None, (0, 0, 0, 1)),
        ("not-ready pods count for custom metrics", Box::new(|p| p.ready = Some(false)), Some((0, 60)), None, (1, 0, 0, 0)),
    ];
    for (name, f, metric, resource, expected) in cases {
        assert_eq!(one(&*f, metric, resource), expected, "{name}");
    }
}
