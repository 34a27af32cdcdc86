//! Seldon Core 2's native model autoscaling (`seldon-core2-semantics.md` §3): every
//! stats period (20 s) an agent whose in-flight count for the model reaches the lag
//! threshold (30) asks for one more replica; a model unused for 600 s asks for one
//! fewer, applied only when its state has not changed for 60 s; never below 1 or
//! min, never above max. Servers follow [`ServerRule::Seldon`](super::ServerRule).

use serde::Deserialize;

use super::{on_period, ModelView, Policy, ServerRule};
use crate::trace::micros;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeldonConfig {
    pub stats_period_s: u32,
    pub lag_threshold: u32,
    pub inactive_s: f64,
    pub cooling_down_s: f64,
}

impl Default for SeldonConfig {
    fn default() -> Self {
        Self {
            stats_period_s: 20,
            lag_threshold: 30,
            inactive_s: 600.0,
            cooling_down_s: 60.0,
        }
    }
}

/// One stats period for one model: the new desired count, if any.
pub fn decide(cfg: &SeldonConfig, v: &ModelView<'_>) -> Option<u32> {
    if !v.spec.autoscaled {
        return None;
    }
    let (min, max) = (v.spec.min_replicas.max(1), v.spec.max_replicas);
    if v.max_replica_outstanding >= cfg.lag_threshold && v.ready >= 1 {
        let target = v.desired + 1;
        return (target <= max).then_some(target);
    }
    let last_used = v.last_used.unwrap_or(0);
    let idle = v.now >= last_used + micros(cfg.inactive_s);
    let stable = v.now >= v.state_changed + micros(cfg.cooling_down_s);
    if idle && stable && v.desired > min {
        return Some(v.desired - 1);
    }
    None
}

pub struct Seldon {
    pub cfg: SeldonConfig,
}

impl Policy for Seldon {
    fn tick(&mut self, _model: usize, v: &ModelView<'_>) -> Option<u32> {
        if !self.due(v.tick) {
            return None;
        }
        decide(&self.cfg, v)
    }

    fn due(&self, tick: u64) -> bool {
        on_period(tick, u64::from(self.cfg.stats_period_s))
    }

    fn server_rule(&self) -> ServerRule {
        ServerRule::Seldon
    }
}

/// A fixed replica count per model.
pub struct Static(pub u32);

impl Policy for Static {
    fn tick(&mut self, _model: usize, v: &ModelView<'_>) -> Option<u32> {
        (v.desired != self.0).then_some(self.0)
    }
}
