//! KEDA (`peers.md` §3): activation 0↔1 by the operator on its 30 s poll (active when
//! the metric is strictly above the activation threshold; back to 0 once inactive
//! for the 300 s cooldown), and 1↔N by the generated HPA (15 s sync, upstream
//! defaults) reading the same `infer_rps` query.

use serde::Deserialize;

use super::hpa::{Hpa, HpaConfig};
use super::{on_period, ModelView, Policy};
use crate::scenario::ModelSpec;
use crate::trace::{micros, Micros};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KedaConfig {
    pub polling_interval_s: u32,
    pub cooldown_period_s: f64,
    pub activation_threshold: f64,
    /// `minReplicaCount`; `None` = the model's min_replicas (0 when unset).
    pub min_replica_count: Option<u32>,
    pub hpa: HpaConfig,
}

impl Default for KedaConfig {
    fn default() -> Self {
        Self {
            polling_interval_s: 30,
            cooldown_period_s: 300.0,
            activation_threshold: 0.0,
            min_replica_count: None,
            hpa: HpaConfig::default(),
        }
    }
}

/// The activation decision of one poll: returns the new replica count if it changes.
pub fn activation(
    cfg: &KedaConfig,
    last_active: &mut Option<Micros>,
    now: Micros,
    metric: f64,
    current: u32,
    min: u32,
) -> Option<u32> {
    let active = metric > cfg.activation_threshold;
    if active {
        *last_active = Some(now);
        return (current == 0).then_some(1);
    }
    let idle_since = last_active.unwrap_or(0);
    if current > 0 && min == 0 && now >= idle_since + micros(cfg.cooldown_period_s) {
        return Some(0);
    }
    None
}

/// KEDA over every model.
pub struct Keda {
    pub cfg: KedaConfig,
    pub hpa: Hpa,
    pub last_active: Vec<Option<Micros>>,
}

impl Keda {
    pub fn new(cfg: KedaConfig, models: &[ModelSpec], window_s: usize) -> Result<Self, String> {
        Ok(Self {
            hpa: Hpa::new(cfg.hpa.clone(), models, window_s)?,
            last_active: vec![None; models.len()],
            cfg,
        })
    }
}

impl Policy for Keda {
    fn tick(&mut self, model: usize, v: &ModelView<'_>) -> Option<u32> {
        let min = self.cfg.min_replica_count.unwrap_or(v.spec.min_replicas);
        let mut out = None;
        if on_period(v.tick, u64::from(self.cfg.polling_interval_s)) {
            let metric = v.history.rate(self.hpa.window_s);
            out = activation(
                &self.cfg,
                &mut self.last_active[model],
                v.now,
                metric,
                v.desired,
                min,
            );
        }
        if out.is_none() && v.desired >= 1 && on_period(v.tick, u64::from(self.hpa.cfg.sync_s)) {
            out = self.hpa.sync(model, v);
        }
        out
    }

    fn due(&self, tick: u64) -> bool {
        on_period(tick, u64::from(self.cfg.polling_interval_s))
            || on_period(tick, u64::from(self.hpa.cfg.sync_s))
    }

    fn history_secs(&self) -> usize {
        self.hpa.window_s
    }
}
