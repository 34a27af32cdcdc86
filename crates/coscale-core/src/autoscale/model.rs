//! Native model autoscaling: one decision per stats period from inference lag and last use.
//!
//! Interpretation of Seldon Core 2 (`seldon-core2-semantics.md` §3), fed with stats that
//! the control plane aggregates over the model's replicas:
//!
//! - *Lag* is the number of requests in flight for the model right now (Seldon's agents
//!   count requests that entered but have not completed). Each Seldon agent compares its
//!   own count with the threshold; with requests balanced over the replicas that is the
//!   total divided by the replica count, so we scale up when
//!   `in_flight / replicas >= lag_threshold`. We divide by the *desired* replica count,
//!   not the available one: while replicas from an earlier scale-up are still loading,
//!   the load is only spread over the available ones, and dividing by those would ask
//!   for yet another replica every period. Dividing by the desired count scales further
//!   only when the lag demands more than the replicas already on their way. (Seldon
//!   resets its counter after firing; we read the current count every period, which is
//!   what the counter measures between resets.)
//! - *Inactive*: not used for `inactive_seconds` (a model never used counts from its last
//!   state change, as Seldon's last-used keeper starts at registration).
//! - *Stable*: no state change for `stability_window_ms`. Only scale-down needs it, as in
//!   Seldon's code (60 s).
//! - Never below `max(1, min_replicas)`, never above `max_replicas`. A model scaled to
//!   zero replicas is left alone: native autoscaling neither scales to nor from zero.
//!   A count outside the bounds is brought to the nearest bound first (`"bounds"`).
//!
//! [`StepMode::Seldon`]: exactly ±1 per decision. [`StepMode::Proportional`]: every call
//! adds a sample to a sliding window; scale-up goes straight to
//! `ceil(windowed lag / lag_threshold)` (bounded by max; since it compares with the
//! desired count, replicas still loading are counted as coming); scale-down goes to the
//! floor when inactive, or to the fewest replicas on which the highest lag (raw sample or
//! windowed mean) of the whole stability window stays at or below
//! `scale_down_utilisation × lag_threshold` per replica. That band between the two thresholds is the hysteresis: after a
//! scale-down the same load is at most `scale_down_utilisation` of what would scale up.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::model_config::{ModelPolicyConfig, StepMode};
use super::{bounds, num, step, Direction};

/// What the control plane knows about one model at one stats period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelObservation {
    pub now_ms: u64,
    /// Requests in flight, summed over the model's replicas right now (inference lag).
    pub in_flight: u32,
    /// Newest last use over the replicas; `None` = never used.
    pub last_used_ms: Option<u64>,
    /// Current desired replicas.
    pub replicas: u32,
    /// Replicas available now.
    pub available: u32,
    pub min_replicas: u32,
    /// `u32::MAX` = unset.
    pub max_replicas: u32,
    /// When the model's state or replica count last changed.
    pub last_change_ms: u64,
}

/// A change of a model's desired replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDecision {
    pub replicas: u32,
    pub direction: Direction,
    /// Human readable, with the numbers that led to it.
    pub reason: String,
    /// Bounded label for metrics: `"lag"`, `"inactive"`, `"underused"` or `"bounds"`.
    pub reason_kind: &'static str,
}

/// What the policy remembers between calls for one model: the lag samples of the
/// sliding window (proportional mode) and when it last decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPolicyState {
    samples: VecDeque<Sample>,
    last_decision_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at_ms: u64,
    in_flight: u32,
    /// Mean in-flight over the lag window ending at `at_ms`.
    window_avg: f64,
}

impl ModelPolicyState {
    /// When the last decision was returned.
    pub fn last_decision_ms(&self) -> Option<u64> {
        self.last_decision_ms
    }

    /// The mean in-flight over the lag window ending at the latest sample.
    pub fn window_average(&self) -> Option<f64> {
        self.samples.back().map(|s| s.window_avg)
    }

    fn record(&mut self, cfg: &ModelPolicyConfig, now_ms: u64, in_flight: u32) {
        // Time went backwards (caller restarted its clock): start over.
        if self.samples.back().is_some_and(|s| s.at_ms > now_ms) {
            self.samples.clear();
        }
        if self.samples.back().is_some_and(|s| s.at_ms == now_ms) {
            self.samples.pop_back();
        }
        let keep = cfg.window_ms.max(cfg.stability_window_ms);
        while self
            .samples
            .front()
            .is_some_and(|s| now_ms.saturating_sub(s.at_ms) > keep)
        {
            self.samples.pop_front();
        }
        // Samples are in time order, so the window is a suffix; the sum of integer
        // counts is exact in any order.
        let (sum, count) = self
            .samples
            .iter()
            .rev()
            .take_while(|s| now_ms.saturating_sub(s.at_ms) < cfg.window_ms)
            .fold((f64::from(in_flight), 1u32), |(sum, n), s| {
                (sum + f64::from(s.in_flight), n.saturating_add(1))
            });
        self.samples.push_back(Sample {
            at_ms: now_ms,
            in_flight,
            window_avg: sum / f64::from(count),
        });
    }

    /// The highest lag over the stability window, raw or windowed, if the samples cover
    /// it (the oldest sample stands for the stats period before it). The raw samples count
    /// too: the windowed mean trails a rising load, and a scale-down must not be decided
    /// on the first second of a burst.
    fn stable_peak(&self, cfg: &ModelPolicyConfig, now_ms: u64) -> Option<f64> {
        let oldest = self.samples.front()?;
        let covered = now_ms
            .saturating_sub(oldest.at_ms)
            .saturating_add(cfg.stats_period_ms);
        if covered < cfg.stability_window_ms {
            return None;
        }
        self.samples
            .iter()
            .filter(|s| now_ms.saturating_sub(s.at_ms) <= cfg.stability_window_ms)
            .map(|s| s.window_avg.max(f64::from(s.in_flight)))
            .reduce(f64::max)
    }
}

/// One analysis round for one model: the new desired replica count, or `None` to keep it.
/// Call it every `cfg.stats_period_ms` with the same `state`.
pub fn decide_model(
    cfg: &ModelPolicyConfig,
    state: &mut ModelPolicyState,
    obs: &ModelObservation,
) -> Option<ModelDecision> {
    if cfg.mode == StepMode::Proportional {
        state.record(cfg, obs.now_ms, obs.in_flight);
    }
    if obs.replicas == 0 {
        return None;
    }
    let (floor, cap) = bounds(obs.min_replicas, obs.max_replicas);
    let decision = if obs.replicas < floor {
        Some(change(
            obs.replicas,
            floor,
            "bounds",
            format!("below min {}", obs.min_replicas),
        ))
    } else if obs.replicas > cap {
        Some(change(
            obs.replicas,
            cap,
            "bounds",
            format!("above max {}", obs.max_replicas),
        ))
    } else {
        match cfg.mode {
            StepMode::Seldon => seldon(cfg, obs, floor, cap),
            StepMode::Proportional => proportional(cfg, state, obs, floor, cap),
        }
    };
    if decision.is_some() {
        state.last_decision_ms = Some(obs.now_ms);
    }
    decision
}

fn seldon(
    cfg: &ModelPolicyConfig,
    obs: &ModelObservation,
    floor: u32,
    cap: u32,
) -> Option<ModelDecision> {
    let per_replica = f64::from(obs.in_flight) / f64::from(obs.replicas);
    if per_replica >= cfg.lag_threshold && obs.replicas < cap {
        let why = format!(
            "lag {} over {} replicas ({} per replica) >= {} per replica",
            obs.in_flight,
            obs.replicas,
            num(per_replica),
            num(cfg.lag_threshold)
        );
        return Some(change(
            obs.replicas,
            obs.replicas + 1,
            "lag",
            why + &loading_note(obs),
        ));
    }
    if obs.replicas > floor {
        if let Some(why) = inactive_and_stable(cfg, obs) {
            return Some(change(obs.replicas, obs.replicas - 1, "inactive", why));
        }
    }
    None
}

fn proportional(
    cfg: &ModelPolicyConfig,
    state: &ModelPolicyState,
    obs: &ModelObservation,
    floor: u32,
    cap: u32,
) -> Option<ModelDecision> {
    let avg = state.window_average().unwrap_or(f64::from(obs.in_flight));
    let wanted = ceil_u32(avg / cfg.lag_threshold);
    if wanted > obs.replicas && obs.replicas < cap {
        let target = wanted.min(cap);
        let mut why = format!(
            "average lag {} over {} s needs ceil({} / {}) = {} replicas",
            num(avg),
            num(ms_to_s(cfg.window_ms)),
            num(avg),
            num(cfg.lag_threshold),
            wanted
        );
        if target < wanted {
            why.push_str(&format!(", capped at max {cap}"));
        }
        why.push_str(&loading_note(obs));
        return Some(change(obs.replicas, target, "lag", why));
    }
    if obs.replicas <= floor {
        return None;
    }
    if let Some(why) = inactive_and_stable(cfg, obs) {
        return Some(change(obs.replicas, floor, "inactive", why));
    }
    if stable_for_ms(obs) < cfg.stability_window_ms {
        return None;
    }
    let peak = state.stable_peak(cfg, obs.now_ms)?;
    let per_replica = cfg.lag_threshold * cfg.scale_down_utilisation;
    let fits = ceil_u32(peak / per_replica).max(floor);
    if fits >= obs.replicas {
        return None;
    }
    let why = format!(
        "peak lag {} over the last {} s fits {} replicas at <= {} per replica \
         ({} % of {})",
        num(peak),
        num(ms_to_s(cfg.stability_window_ms)),
        fits,
        num(per_replica),
        num(cfg.scale_down_utilisation * 100.0),
        num(cfg.lag_threshold)
    );
    Some(change(obs.replicas, fits, "underused", why))
}

/// Why the model may scale down for inactivity, or `None` if it is in use or not stable.
fn inactive_and_stable(cfg: &ModelPolicyConfig, obs: &ModelObservation) -> Option<String> {
    let idle_ms = obs
        .now_ms
        .saturating_sub(obs.last_used_ms.unwrap_or(obs.last_change_ms));
    let stable_ms = stable_for_ms(obs);
    let inactive = idle_ms >= cfg.inactive_seconds.saturating_mul(1000);
    if !inactive || stable_ms < cfg.stability_window_ms {
        return None;
    }
    let used = if obs.last_used_ms.is_some() {
        "unused"
    } else {
        "never used, unchanged"
    };
    Some(format!(
        "{used} for {} s >= {} s and stable for {} s >= {} s",
        num(ms_to_s(idle_ms)),
        cfg.inactive_seconds,
        num(ms_to_s(stable_ms)),
        num(ms_to_s(cfg.stability_window_ms))
    ))
}

/// Says how many replicas are still on their way, if any: the lag was already compared
/// with the desired count, so they were counted as coming.
fn loading_note(obs: &ModelObservation) -> String {
    if obs.available < obs.replicas {
        format!(" ({} of {} available)", obs.available, obs.replicas)
    } else {
        String::new()
    }
}

fn stable_for_ms(obs: &ModelObservation) -> u64 {
    obs.now_ms.saturating_sub(obs.last_change_ms)
}

fn change(from: u32, to: u32, reason_kind: &'static str, why: String) -> ModelDecision {
    let (direction, reason) = step(from, to, &why);
    ModelDecision {
        replicas: to,
        direction,
        reason,
        reason_kind,
    }
}

/// `ceil(x)` as a replica count: saturating, NaN and negatives as 0.
fn ceil_u32(x: f64) -> u32 {
    // `as` saturates and maps NaN to 0, which is the intent here.
    x.ceil() as u32
}

fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}
