//! coscale's native autoscaling, run exactly as the control plane runs it:
//! `coscale_core::autoscale::decide_model` every stats period per model that sets
//! min or max (Seldon step mode: ±1 per 20 s; proportional mode: straight to the
//! windowed need, every second), and `plan_server` for servers
//! ([`ServerRule::Native`]).

use coscale_core::autoscale::{
    decide_model, ModelObservation, ModelPolicyConfig, ModelPolicyState,
};

use super::{ModelView, Policy, ServerRule};

/// The native model policy over every model.
pub struct Native {
    pub cfg: ModelPolicyConfig,
    pub states: Vec<ModelPolicyState>,
    last_round: Vec<Option<u64>>,
}

impl Native {
    pub fn new(cfg: ModelPolicyConfig, models: usize) -> Self {
        Self {
            cfg,
            states: vec![ModelPolicyState::default(); models],
            last_round: vec![None; models],
        }
    }
}

/// The observation the control plane would build for this model.
pub fn observation(v: &ModelView<'_>) -> ModelObservation {
    let now_ms = v.now / 1000;
    let changed_ms = v.state_changed / 1000;
    ModelObservation {
        now_ms,
        in_flight: v.outstanding.saturating_sub(v.pending),
        // A model never used counts as used when it last changed (as the control plane).
        last_used_ms: Some(
            v.last_used
                .map_or(changed_ms, |t| (t / 1000).max(changed_ms)),
        ),
        replicas: v.desired,
        available: v.ready,
        min_replicas: v.spec.min_replicas,
        max_replicas: v.spec.max_replicas,
        last_change_ms: changed_ms,
    }
}

impl Policy for Native {
    fn tick(&mut self, model: usize, v: &ModelView<'_>) -> Option<u32> {
        if !v.spec.autoscaled {
            return None;
        }
        let now_ms = v.now / 1000;
        let due = self.last_round[model]
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.cfg.stats_period_ms);
        if !due {
            return None;
        }
        self.last_round[model] = Some(now_ms);
        decide_model(&self.cfg, &mut self.states[model], &observation(v)).map(|d| d.replicas)
    }

    fn server_rule(&self) -> ServerRule {
        ServerRule::Native
    }
}
