//! Normalization of the metric recommendation (upstream `normalizeDesiredReplicas` and
//! `normalizeDesiredReplicasWithBehaviors`) and the per-HPA histories it keeps.
//!
//! Time comparisons are strict as upstream: a behavior window or policy period contains
//! samples with `t > now - window`; a sample is "old" when `t < now - window`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::{
    default_scale_down_rules, default_scale_up_rules, Behavior, ScalingPolicy, ScalingPolicyType,
    ScalingRules, SelectPolicy,
};
use super::Timestamp;

/// One past unstabilized metric recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    pub replicas: i32,
    pub timestamp: Timestamp,
}

/// One past scale event in one direction (`change` is a magnitude, ≥ 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleEvent {
    pub change: i32,
    pub timestamp: Timestamp,
    #[serde(default)]
    pub outdated: bool,
}

/// The controller's in-memory state for one HPA. Start with `HpaState::default()`
/// (no history yet) and feed back what [`super::decide`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaState {
    /// `None`: no history yet (the next pass seeds it with the current replicas).
    /// `Some(vec![])` is an existing, empty history.
    #[serde(default)]
    pub recommendations: Option<Vec<Recommendation>>,
    #[serde(default)]
    pub scale_up_events: Vec<ScaleEvent>,
    #[serde(default)]
    pub scale_down_events: Vec<ScaleEvent>,
}

/// Reason and message of a normalization step (condition vocabulary of upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub reason: &'static str,
    pub message: &'static str,
}

pub const WITHIN_RANGE: Limit = Limit {
    reason: "DesiredWithinRange",
    message: "the desired count is within the acceptable range",
};
pub const TOO_FEW: Limit = Limit {
    reason: "TooFewReplicas",
    message: "the desired replica count is less than the minimum replica count",
};
pub const TOO_MANY: Limit = Limit {
    reason: "TooManyReplicas",
    message: "the desired replica count is more than the maximum replica count",
};
pub const SCALE_UP_LIMIT: Limit = Limit {
    reason: "ScaleUpLimit",
    message: "the desired replica count is increasing faster than the maximum scale rate",
};
pub const SCALE_DOWN_LIMIT: Limit = Limit {
    reason: "ScaleDownLimit",
    message: "the desired replica count is decreasing faster than the maximum scale rate",
};
pub const READY_FOR_NEW_SCALE: Limit = Limit {
    reason: "ReadyForNewScale",
    message: "recommended size matches current size",
};
pub const SCALE_UP_STABILIZED: Limit = Limit {
    reason: "ScaleUpStabilized",
    message: "recent recommendations were lower than current one, applying the lowest recent recommendation",
};
pub const SCALE_DOWN_STABILIZED: Limit = Limit {
    reason: "ScaleDownStabilized",
    message: "recent recommendations were higher than current one, applying the highest recent recommendation",
};

fn secs(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// Stores `(desired, now)` in slot `old` if any, else appends.
fn store(recs: &mut Vec<Recommendation>, old: Option<usize>, desired: i32, now: Timestamp) {
    let r = Recommendation {
        replicas: desired,
        timestamp: now,
    };
    match old.and_then(|i| recs.get_mut(i)) {
        Some(slot) => *slot = r,
        None => recs.push(r),
    }
}

/// Without behavior: the maximum recommendation of the window (both directions), and
/// records `desired`. Returns the stabilized value.
pub fn stabilize_without_behavior(
    recs: &mut Vec<Recommendation>,
    desired: i32,
    window: Duration,
    now: Timestamp,
) -> i32 {
    let cutoff = now.minus(window);
    let mut best = desired;
    let mut old = None;
    for (i, r) in recs.iter().enumerate() {
        if r.timestamp < cutoff {
            old = Some(i);
        } else if r.replicas > best {
            best = r.replicas;
        }
    }
    store(recs, old, desired, now);
    best
}

/// Without behavior: `convertDesiredReplicasWithRules` (min clamp, and the
/// `max(factor × current, minimum)` scale-up cap or `maxReplicas`).
pub fn limit_without_behavior(
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    scale_up_factor: f64,
    scale_up_minimum: f64,
) -> (i32, Limit) {
    let cap = (scale_up_factor * f64::from(current)).max(scale_up_minimum);
    let cap = cap.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32;
    let (max_allowed, limit) = if max > cap {
        (cap, SCALE_UP_LIMIT)
    } else {
        (max, TOO_MANY)
    };
    if desired < min {
        (min, TOO_FEW)
    } else if desired > max_allowed {
        (max_allowed, limit)
    } else {
        (desired, WITHIN_RANGE)
    }
}

/// Behavior rules of one direction with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRules {
    pub window: Duration,
    pub select_policy: SelectPolicy,
    pub policies: Vec<ScalingPolicy>,
}

fn resolve(
    rules: Option<&ScalingRules>,
    defaults: ScalingRules,
    window: Duration,
) -> ResolvedRules {
    let r = rules.cloned().unwrap_or_else(|| defaults.clone());
    ResolvedRules {
        window: r.stabilization_window_seconds.map_or(window, secs),
        select_policy: r
            .select_policy
            .or(defaults.select_policy)
            .unwrap_or_default(),
        policies: r.policies.or(defaults.policies).unwrap_or_default(),
    }
}

impl Behavior {
    /// Scale-up rules with the API defaults for anything unset.
    pub fn resolved_scale_up(&self) -> ResolvedRules {
        resolve(
            self.scale_up.as_ref(),
            default_scale_up_rules(),
            Duration::ZERO,
        )
    }
    /// Scale-down rules; an unset window is the controller's downscale stabilization.
    pub fn resolved_scale_down(&self, downscale_stabilization: Duration) -> ResolvedRules {
        resolve(
            self.scale_down.as_ref(),
            default_scale_down_rules(),
            downscale_stabilization,
        )
    }
}

/// With behavior: scale up only to the lowest recommendation of the up-window, down
/// only to the highest of the down-window; records `desired`.
pub fn stabilize_with_behavior(
    recs: &mut Vec<Recommendation>,
    current: i32,
    desired: i32,
    up_window: Duration,
    down_window: Duration,
    now: Timestamp,
) -> (i32, Limit) {
    let (up_cut, down_cut) = (now.minus(up_window), now.minus(down_window));
    let (mut up_rec, mut down_rec, mut old) = (desired, desired, None);
    for (i, r) in recs.iter().enumerate() {
        if r.timestamp > up_cut {
            up_rec = up_rec.min(r.replicas);
        }
        if r.timestamp > down_cut {
            down_rec = down_rec.max(r.replicas);
        }
        if r.timestamp < up_cut && r.timestamp < down_cut {
            old = Some(i);
        }
    }
    let mut rec = current;
    if rec < up_rec {
        rec = up_rec;
    }
    if rec > down_rec {
        rec = down_rec;
    }
    store(recs, old, desired, now);
    let limit = if rec == desired {
        READY_FOR_NEW_SCALE
    } else if desired >= current {
        SCALE_UP_STABILIZED
    } else {
        SCALE_DOWN_STABILIZED
    };
    (rec, limit)
}

fn change_in_period(period_seconds: i32, events: &[ScaleEvent], now: Timestamp) -> i32 {
    let cutoff = now.minus(secs(period_seconds));
    events
        .iter()
        .filter(|e| e.timestamp > cutoff)
        .fold(0i32, |acc, e| acc.saturating_add(e.change))
}

fn period_start(current: i32, p: &ScalingPolicy, state: &HpaState, now: Timestamp) -> i32 {
    current
        .saturating_sub(change_in_period(
            p.period_seconds,
            &state.scale_up_events,
            now,
        ))
        .saturating_add(change_in_period(
            p.period_seconds,
            &state.scale_down_events,
            now,
        ))
}

fn to_i32(x: f64) -> i32 {
    if x.is_nan() {
        0
    } else {
        x.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
    }
}

/// `calculateScaleUpLimitWithScalingRules`.
pub fn scale_up_limit(
    current: i32,
    state: &HpaState,
    rules: &ResolvedRules,
    now: Timestamp,
) -> i32 {
    let (mut acc, pick): (i32, fn(i32, i32) -> i32) = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MAX, std::cmp::min),
        SelectPolicy::Max => (i32::MIN, std::cmp::max),
    };
    for p in &rules.policies {
        let start = period_start(current, p, state, now);
        let proposed = match p.type_ {
            ScalingPolicyType::Pods => start.saturating_add(p.value),
            ScalingPolicyType::Percent => {
                to_i32((f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil())
            }
        };
        acc = pick(acc, proposed);
    }
    acc
}

/// `calculateScaleDownLimitWithBehaviors` (Percent truncates toward zero).
pub fn scale_down_limit(
    current: i32,
    state: &HpaState,
    rules: &ResolvedRules,
    now: Timestamp,
) -> i32 {
    let (mut acc, pick): (i32, fn(i32, i32) -> i32) = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MIN, std::cmp::max),
        SelectPolicy::Max => (i32::MAX, std::cmp::min),
    };
    for p in &rules.policies {
        let start = period_start(current, p, state, now);
        let proposed = match p.type_ {
            ScalingPolicyType::Pods => start.saturating_sub(p.value),
            ScalingPolicyType::Percent => {
                to_i32(f64::from(start) * (1.0 - f64::from(p.value) / 100.0))
            }
        };
        acc = pick(acc, proposed);
    }
    acc
}

/// With behavior: `convertDesiredReplicasWithBehaviorRate`. When `desired == current`
/// nothing is clamped.
#[allow(clippy::too_many_arguments)]
pub fn rate_limit_with_behavior(
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    up: &ResolvedRules,
    down: &ResolvedRules,
    state: &HpaState,
    now: Timestamp,
) -> (i32, Limit) {
    if desired > current {
        let limit = scale_up_limit(current, state, up, now).max(current);
        let (max_allowed, why) = if max > limit {
            (limit, SCALE_UP_LIMIT)
        } else {
            (max, TOO_MANY)
        };
        if desired > max_allowed {
            return (max_allowed, why);
        }
    } else if desired < current {
        let limit = scale_down_limit(current, state, down, now).min(current);
        let (min_allowed, why) = if min < limit {
            (limit, SCALE_DOWN_LIMIT)
        } else {
            (min, TOO_FEW)
        };
        if desired < min_allowed {
            return (min_allowed, why);
        }
    }
    (desired, WITHIN_RANGE)
}

/// `storeScaleEvent`: after a successful rescale from `prev` to `new`, when the HPA has
/// a behavior. Marks events older than the direction's longest policy period outdated
/// and replaces the last outdated one (or appends).
pub fn record_scale_event(
    state: &mut HpaState,
    behavior: Option<&Behavior>,
    prev: i32,
    new: i32,
    now: Timestamp,
) {
    let Some(behavior) = behavior else { return };
    let (events, rules, change) = if new > prev {
        (
            &mut state.scale_up_events,
            behavior.resolved_scale_up(),
            new - prev,
        )
    } else {
        (
            &mut state.scale_down_events,
            behavior.resolved_scale_down(Duration::ZERO),
            prev - new,
        )
    };
    let longest = rules
        .policies
        .iter()
        .map(|p| p.period_seconds)
        .max()
        .unwrap_or(0);
    let cutoff = now.minus(secs(longest));
    let mut old = None;
    for (i, e) in events.iter_mut().enumerate() {
        if e.timestamp < cutoff {
            e.outdated = true;
        }
        if e.outdated {
            old = Some(i);
        }
    }
    let e = ScaleEvent {
        change,
        timestamp: now,
        outdated: false,
    };
    match old.and_then(|i| events.get_mut(i)) {
        Some(slot) => *slot = e,
        None => events.push(e),
    }
}
