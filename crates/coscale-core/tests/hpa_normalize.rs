//! Stabilization, rate limits and history storage (hpa-algorithm.md §1.8, §1.9,
//! §1.11). Behavior cases follow upstream `TestScalingWithRules` and the doc's worked
//! example; every expected value is derived by hand from the rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::time::Duration;

use coscale_core::hpa::api::{
    Behavior, ScalingPolicy, ScalingPolicyType, ScalingRules, SelectPolicy,
};
use coscale_core::hpa::normalize::{
    limit_without_behavior, rate_limit_with_behavior, record_scale_event, stabilize_with_behavior,
    stabilize_without_behavior, HpaState, Recommendation, ResolvedRules, ScaleEvent,
};
use coscale_core::hpa::Timestamp;

const NOW_S: i64 = 10_000;

fn now() -> Timestamp {
    Timestamp::from_secs(NOW_S)
}

fn ago(s: i64) -> Timestamp {
    Timestamp::from_secs(NOW_S - s)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn pods(value: i32, period: i32) -> ScalingPolicy {
    ScalingPolicy::new(ScalingPolicyType::Pods, value, period)
}

fn percent(value: i32, period: i32) -> ScalingPolicy {
    ScalingPolicy::new(ScalingPolicyType::Percent, value, period)
}

fn rules(select: SelectPolicy, policies: Vec<ScalingPolicy>) -> ResolvedRules {
    ResolvedRules {
        window: Duration::ZERO,
        select_policy: select,
        policies,
    }
}

fn default_up() -> ResolvedRules {
    Behavior::default().resolved_scale_up()
}

fn default_down() -> ResolvedRules {
    Behavior::default().resolved_scale_down(secs(300))
}

fn events(list: &[(i32, i64)]) -> Vec<ScaleEvent> {
    list.iter()
        .map(|(change, age)| ScaleEvent {
            change: *change,
            timestamp: ago(*age),
            outdated: false,
        })
        .collect()
}

fn recs(list: &[(i32, i64)]) -> Vec<Recommendation> {
    list.iter()
        .map(|(replicas, age)| Recommendation {
            replicas: *replicas,
            timestamp: ago(*age),
        })
        .collect()
}

struct RateCase {
    name: &'static str,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    up: ResolvedRules,
    down: ResolvedRules,
    up_events: Vec<(i32, i64)>,
    down_events: Vec<(i32, i64)>,
    expected: i32,
    reason: &'static str,
}

fn case(
    name: &'static str,
    current: i32,
    desired: i32,
    expected: i32,
    reason: &'static str,
) -> RateCase {
    RateCase {
        name,
        current,
        desired,
        min: 1,
        max: 1000,
        up: default_up(),
        down: default_down(),
        up_events: vec![],
        down_events: vec![],
        expected,
        reason,
    }
}

#[test]
fn behavior_rate_limits_follow_policies_periods_and_select_policy() {
    use SelectPolicy::*;
    #[rustfmt::skip]
    let cases = vec![
        case("scale up with default behavior", 10, 50, 20, "ScaleUpLimit"),
        case("scale up with default behavior from few pods uses the pods policy", 2, 50, 6, "ScaleUpLimit"),
        RateCase { up: rules(Max, vec![pods(100, 60), percent(100, 60)]), ..case("pods policy larger than percent policy", 10, 500, 110, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![pods(2, 60), percent(100, 60)]), ..case("percent policy larger than pods policy", 10, 500, 20, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![pods(100, 60)]), max: 200, ..case("max replicas below the pods limit", 100, 500, 200, "TooManyReplicas") },
        RateCase { up: rules(Max, vec![pods(30, 60)]), ..case("pods policy limitation", 10, 500, 40, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![percent(200, 60)]), ..case("percent policy limitation", 10, 500, 30, "ScaleUpLimit") },
        RateCase { up: rules(Min, vec![pods(4, 60), percent(100, 60)]), ..case("selectPolicy Min picks the smaller scale up", 10, 500, 14, "ScaleUpLimit") },
        RateCase { up: rules(Disabled, vec![pods(4, 60)]), ..case("selectPolicy Disabled forbids scale up", 10, 500, 10, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![pods(4, 60)]), up_events: vec![(4, 30)], ..case("scale-up events inside the period shrink the limit", 10, 500, 10, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![pods(4, 60)]), up_events: vec![(4, 61)], ..case("scale-up events outside the period do not count", 10, 500, 14, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![pods(4, 60)]), up_events: vec![(4, 60)], ..case("an event exactly at the period start is outside", 10, 500, 14, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![percent(300, 300)]), up_events: vec![(4, 60)], down_events: vec![(2, 60)], max: 100, ..case("worked example: start 6-4+2=4, limit 16", 6, 20, 16, "ScaleUpLimit") },
        RateCase { up: rules(Max, vec![pods(4, 60)]), up_events: vec![(2, 10), (3, 20)], ..case("several events add up", 10, 500, 10, "ScaleUpLimit") },
        case("desired within the limit", 10, 15, 15, "DesiredWithinRange"),
        // Scale down.
        case("scale down with default behavior removes up to 100 %", 10, 2, 2, "DesiredWithinRange"),
        RateCase { down: rules(Max, vec![pods(20, 60), percent(1, 60)]), ..case("scale down Max picks the bigger change (pods)", 100, 2, 80, "ScaleDownLimit") },
        RateCase { down: rules(Max, vec![pods(2, 60), percent(1, 60)]), ..case("scale down Max picks the bigger change (percent)", 100, 2, 98, "ScaleDownLimit") },
        RateCase { down: rules(Min, vec![pods(20, 60), percent(1, 60)]), ..case("scale down Min picks the smaller change", 100, 2, 99, "ScaleDownLimit") },
        RateCase { down: rules(Max, vec![pods(100, 60)]), ..case("min replicas below a large pods policy", 10, 0, 1, "TooFewReplicas") },
        RateCase { down: rules(Max, vec![percent(100, 60)]), min: 5, ..case("min replicas below a large percent policy", 10, 2, 5, "TooFewReplicas") },
        RateCase { down: rules(Max, vec![pods(5, 60)]), ..case("scale down pods policy limitation", 10, 2, 5, "ScaleDownLimit") },
        RateCase { down: rules(Max, vec![percent(50, 60)]), ..case("scale down exactly to the percent limit", 10, 5, 5, "DesiredWithinRange") },
        RateCase { down: rules(Max, vec![percent(33, 60)]), ..case("percent scale down truncates (10 x 0.67 = 6)", 10, 1, 6, "ScaleDownLimit") },
        RateCase { down: rules(Disabled, vec![pods(5, 60)]), ..case("selectPolicy Disabled forbids scale down", 10, 2, 10, "ScaleDownLimit") },
        RateCase { down: rules(Max, vec![pods(5, 60)]), down_events: vec![(3, 30)], ..case("scale-down events inside the period count", 10, 2, 8, "ScaleDownLimit") },
        RateCase { down: rules(Max, vec![pods(5, 60)]), up_events: vec![(4, 30)], ..case("scale-up events move the scale-down period start", 10, 2, 2, "DesiredWithinRange") },
        RateCase { min: 3, max: 5, ..case("no clamping when desired equals current", 10, 10, 10, "DesiredWithinRange") },
    ];
    for c in cases {
        let state = HpaState {
            recommendations: None,
            scale_up_events: events(&c.up_events),
            scale_down_events: events(&c.down_events),
        };
        let (got, limit) = rate_limit_with_behavior(
            c.current,
            c.desired,
            c.min,
            c.max,
            &c.up,
            &c.down,
            &state,
            now(),
        );
        assert_eq!((got, limit.reason), (c.expected, c.reason), "{}", c.name);
    }
}

#[test]
fn behavior_stabilization_uses_the_lowest_up_and_highest_down_recommendation() {
    // (name, history, current, desired, up window, down window, expected, reason)
    let cases: &[(&str, &[(i32, i64)], i32, i32, u64, u64, i32, &str)] = &[
        (
            "scale down held by a higher recent recommendation",
            &[(8, 100), (4, 200)],
            5,
            3,
            0,
            300,
            5,
            "ScaleDownStabilized",
        ),
        (
            "scale down to the highest recent recommendation",
            &[(4, 100)],
            6,
            3,
            0,
            300,
            4,
            "ScaleDownStabilized",
        ),
        (
            "scale up held to the lowest recent recommendation",
            &[(3, 30)],
            2,
            6,
            60,
            300,
            3,
            "ScaleUpStabilized",
        ),
        (
            "scale up old recommendation outside the up window",
            &[(3, 61)],
            2,
            6,
            60,
            300,
            6,
            "ReadyForNewScale",
        ),
        (
            "a sample exactly at the cutoff is outside a behavior window",
            &[(9, 300)],
            5,
            3,
            0,
            300,
            3,
            "ReadyForNewScale",
        ),
        (
            "no history scales straight away",
            &[],
            5,
            3,
            0,
            300,
            3,
            "ReadyForNewScale",
        ),
        (
            "zero down window scales down at once",
            &[(9, 1)],
            5,
            3,
            0,
            0,
            3,
            "ReadyForNewScale",
        ),
        (
            "recommendations between current and desired are applied",
            &[(4, 10)],
            2,
            6,
            60,
            0,
            4,
            "ScaleUpStabilized",
        ),
    ];
    for (name, history, current, desired, up, down, expected, reason) in cases {
        let mut r = recs(history);
        let (got, limit) =
            stabilize_with_behavior(&mut r, *current, *desired, secs(*up), secs(*down), now());
        assert_eq!((got, limit.reason), (*expected, *reason), "{name}");
        assert!(
            r.contains(&Recommendation {
                replicas: *desired,
                timestamp: now()
            }),
            "{name}: desired stored"
        );
    }
}

#[test]
fn behavior_stabilization_reuses_the_last_slot_old_for_both_windows() {
    let mut r = recs(&[(9, 400), (7, 500), (5, 10)]);
    let _ = stabilize_with_behavior(&mut r, 5, 3, secs(60), secs(300), now());
    assert_eq!(r, recs(&[(9, 400), (3, 0), (5, 10)]));
    // Old only for the up window: kept, appended instead.
    let mut r = recs(&[(9, 100)]);
    let _ = stabilize_with_behavior(&mut r, 5, 3, secs(60), secs(300), now());
    assert_eq!(r, recs(&[(9, 100), (3, 0)]));
}

#[test]
fn no_behavior_stabilization_keeps_the_window_maximum_in_both_directions() {
    let w = secs(300);
    // (name, history, desired, expected)
    let cases: &[(&str, &[(i32, i64)], i32, i32)] = &[
        (
            "a higher recommendation in the window holds a scale down",
            &[(9, 100)],
            3,
            9,
        ),
        (
            "a sample exactly at the cutoff is inside the no-behavior window",
            &[(9, 300)],
            3,
            9,
        ),
        (
            "a sample older than the window is ignored",
            &[(9, 301)],
            3,
            3,
        ),
        (
            "an earlier higher recommendation raises a scale up",
            &[(10, 60)],
            6,
            10,
        ),
        (
            "lower recommendations do not matter",
            &[(1, 60), (2, 10)],
            6,
            6,
        ),
    ];
    for (name, history, desired, expected) in cases {
        let mut r = recs(history);
        assert_eq!(
            stabilize_without_behavior(&mut r, *desired, w, now()),
            *expected,
            "{name}"
        );
    }
    // The last old slot is reused.
    let mut r = recs(&[(9, 301), (8, 400), (4, 10)]);
    assert_eq!(stabilize_without_behavior(&mut r, 3, w, now()), 4);
    assert_eq!(r, recs(&[(9, 301), (3, 0), (4, 10)]));
}

#[test]
fn no_behavior_limits_cap_scale_up_at_twice_or_four_and_clamp_min_max() {
    // (name, current, desired, min, max, factor, expected, reason)
    let cases: &[(&str, i32, i32, i32, i32, f64, i32, &str)] = &[
        (
            "scale up capped at 2x current",
            3,
            20,
            1,
            100,
            2.0,
            6,
            "ScaleUpLimit",
        ),
        (
            "scale up capped at 4 from one replica",
            1,
            20,
            1,
            100,
            2.0,
            4,
            "ScaleUpLimit",
        ),
        ("max below the cap", 3, 20, 1, 5, 2.0, 5, "TooManyReplicas"),
        (
            "max equal to the cap is TooManyReplicas",
            3,
            20,
            1,
            6,
            2.0,
            6,
            "TooManyReplicas",
        ),
        ("below min", 3, 0, 2, 10, 2.0, 2, "TooFewReplicas"),
        ("within range", 3, 5, 1, 10, 2.0, 5, "DesiredWithinRange"),
        (
            "upstream unit tests use factor 8",
            3,
            30,
            1,
            100,
            8.0,
            24,
            "ScaleUpLimit",
        ),
        (
            "from zero the minimum applies",
            0,
            9,
            0,
            100,
            2.0,
            4,
            "ScaleUpLimit",
        ),
    ];
    for (name, current, desired, min, max, factor, expected, reason) in cases {
        let (got, limit) = limit_without_behavior(*current, *desired, *min, *max, *factor, 4.0);
        assert_eq!((got, limit.reason), (*expected, *reason), "{name}");
    }
}

fn behavior_with(up: Vec<ScalingPolicy>, down: Vec<ScalingPolicy>) -> Behavior {
    Behavior {
        scale_up: Some(ScalingRules {
            policies: Some(up),
            ..ScalingRules::default()
        }),
        scale_down: Some(ScalingRules {
            policies: Some(down),
            ..ScalingRules::default()
        }),
    }
}

#[test]
fn scale_events_replace_the_last_outdated_entry_or_append() {
    let b = behavior_with(vec![pods(4, 60), percent(100, 15)], vec![pods(1, 120)]);
    // (name, existing up events, prev, new, expected up events after)
    let mut state = HpaState {
        scale_up_events: events(&[(1, 100), (2, 70), (3, 10)]),
        ..HpaState::default()
    };
    record_scale_event(&mut state, Some(&b), 3, 5, now());
    let after: Vec<(i32, i64, bool)> = state
        .scale_up_events
        .iter()
        .map(|e| {
            (
                e.change,
                (now().millis() - e.timestamp.millis()) / 1000,
                e.outdated,
            )
        })
        .collect();
    assert_eq!(
        after,
        vec![(1, 100, true), (2, 0, false), (3, 10, false)],
        "last outdated replaced"
    );
    assert!(state.scale_down_events.is_empty());

    let mut state = HpaState {
        scale_up_events: events(&[(3, 10)]),
        ..HpaState::default()
    };
    record_scale_event(&mut state, Some(&b), 3, 4, now());
    assert_eq!(state.scale_up_events.len(), 2, "nothing outdated: appended");

    // Scale down goes to the down list with its own longest period (120 s).
    let mut state = HpaState {
        scale_down_events: events(&[(1, 100), (1, 130)]),
        ..HpaState::default()
    };
    record_scale_event(&mut state, Some(&b), 5, 2, now());
    let down: Vec<(i32, bool)> = state
        .scale_down_events
        .iter()
        .map(|e| (e.change, e.outdated))
        .collect();
    assert_eq!(down, vec![(1, false), (3, false)]);

    // No behavior: nothing is stored.
    let mut state = HpaState::default();
    record_scale_event(&mut state, None, 3, 5, now());
    assert_eq!(state, HpaState::default());
}

#[test]
fn resolved_rules_fill_api_and_controller_defaults() {
    let b = Behavior::default();
    let up = b.resolved_scale_up();
    assert_eq!(up.window, Duration::ZERO);
    assert_eq!(up.select_policy, SelectPolicy::Max);
    assert_eq!(up.policies, vec![pods(4, 15), percent(100, 15)]);
    let down = b.resolved_scale_down(secs(123));
    assert_eq!(
        down.window,
        secs(123),
        "unset scale-down window is the controller flag"
    );
    assert_eq!(down.policies, vec![percent(100, 15)]);
    let b = Behavior {
        scale_down: Some(ScalingRules {
            stabilization_window_seconds: Some(0),
            ..ScalingRules::default()
        }),
        ..Behavior::default()
    };
    assert_eq!(b.resolved_scale_down(secs(300)).window, Duration::ZERO);
}
