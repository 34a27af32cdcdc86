//! Native autoscaling policies: how many replicas a Model and a Server should have.
//!
//! Both policies are pure functions of a configuration, a small piece of state the caller
//! keeps between calls, and an observation that carries the current time as `now_ms`
//! (Unix milliseconds). No I/O, no clocks: the live control plane (every stats period,
//! with per-model stats aggregated across the agents) and the simulator (virtual time)
//! run this exact code.
//!
//! - [`decide_model`]: Seldon Core 2's native model autoscaling (inference lag up,
//!   inactivity down, ±1 per decision, `seldon-core2-semantics.md` §3) or coscale's
//!   proportional mode (sliding-window lag, whole step at once, hysteresis).
//! - [`plan_server`]: server replicas from model needs (`seldon-core2-semantics.md` §4
//!   with the gaps of `system.md` "Where we differ" fixed): scale up to what
//!   [`crate::placement::replicas_needed`] says fits, release empty highest ordinals after
//!   a delay, pack deterministically with a bound on model moves.
//!
//! Every count is checked or saturating arithmetic: no unsigned underflow.

mod model;
mod model_config;
mod server;

pub use model::{decide_model, ModelDecision, ModelObservation, ModelPolicyState};
pub use model_config::{
    ConfigOrigin, ModelPolicyConfig, PolicyConfigError, StepMode, ANNOTATION_INACTIVE_SECONDS,
    ANNOTATION_LAG_THRESHOLD, ANNOTATION_LAG_WINDOW, ANNOTATION_MODE, ANNOTATION_STABILITY_WINDOW,
    ANNOTATION_STATS_PERIOD, ENV_INACTIVE_SECONDS, ENV_LAG_THRESHOLD, ENV_LAG_WINDOW, ENV_MODE,
    ENV_STABILITY_WINDOW, ENV_STATS_PERIOD,
};
pub use server::{plan_server, ServerDecision, ServerPlanConfig, ServerPlanInput, ServerPlanState};

use serde::{Deserialize, Serialize};

/// Which way a decision changes the replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    /// `"up"` or `"down"`, a bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// The replica bounds every policy respects: `[max(1, min), max(max, that floor)]`.
/// `max_replicas == u32::MAX` means unset. A `max` below the floor is read as the floor.
pub(crate) fn bounds(min_replicas: u32, max_replicas: u32) -> (u32, u32) {
    let floor = min_replicas.max(1);
    (floor, max_replicas.max(floor))
}

/// The direction of a change and its reason ending in `": from -> to"`.
pub(crate) fn step(from: u32, to: u32, why: &str) -> (Direction, String) {
    let direction = if to > from {
        Direction::Up
    } else {
        Direction::Down
    };
    (direction, format!("{why}: {from} -> {to}"))
}

/// A number for a human-readable reason: whole numbers without decimals, others with up
/// to two.
pub(crate) fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_reasons_drop_useless_decimals() {
        assert_eq!(num(30.0), "30");
        assert_eq!(num(47.5), "47.5");
        assert_eq!(num(1.0 / 3.0), "0.33");
        assert_eq!(num(f64::INFINITY), "inf");
    }

    #[test]
    fn bounds_never_go_below_one_and_read_a_low_max_as_the_floor() {
        assert_eq!(bounds(0, u32::MAX), (1, u32::MAX));
        assert_eq!(bounds(3, 2), (3, 3));
        assert_eq!(bounds(2, 5), (2, 5));
    }
}
