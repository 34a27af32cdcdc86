//! Knative's KPA (`peers.md` §1): concurrency averaged over a 60 s stable and a 6 s
//! panic window, target = container concurrency × 70 %, panic when the panic-window
//! demand reaches 200 % of the ready pods, no scale-down while panicking, at most
//! halving per 2 s tick, scale to zero after a 30 s grace once the stable window is
//! idle, and an immediate poke from zero on the first request.

use serde::Deserialize;

use super::{ceil_u32, on_period, ModelView, Policy};
use crate::trace::{micros, Micros};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KpaConfig {
    /// Hard per-pod concurrency; `None` = the model's slots.
    pub container_concurrency: Option<u32>,
    pub target_utilization: f64,
    pub stable_window_s: u32,
    pub panic_window_percentage: f64,
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub tick_s: u32,
    pub scale_to_zero_grace_s: f64,
    /// `min-scale`; `None` = the model's min_replicas.
    pub min_scale: Option<u32>,
}

impl Default for KpaConfig {
    fn default() -> Self {
        Self {
            container_concurrency: None,
            target_utilization: 0.7,
            stable_window_s: 60,
            panic_window_percentage: 10.0,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            tick_s: 2,
            scale_to_zero_grace_s: 30.0,
            min_scale: None,
        }
    }
}

/// Per-revision decider state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KpaState {
    pub panic_since: Option<Micros>,
    pub max_panic_pods: u32,
    /// When the wanted count first became 0 (scale-to-zero grace).
    pub zero_since: Option<Micros>,
}

/// Inputs of one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KpaInput {
    pub now: Micros,
    pub stable_concurrency: f64,
    pub panic_concurrency: f64,
    pub ready_pods: u32,
    pub current: u32,
    pub slots: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

impl KpaConfig {
    pub fn panic_window_s(&self) -> usize {
        ((f64::from(self.stable_window_s) * self.panic_window_percentage / 100.0).round() as usize)
            .max(1)
    }
}

/// One KPA decision (`autoscaler.go` `Scale()` plus bounds and scale-to-zero gating).
pub fn decide(cfg: &KpaConfig, st: &mut KpaState, i: &KpaInput) -> u32 {
    let cc = f64::from(cfg.container_concurrency.unwrap_or(i.slots).max(1));
    let target = (cc * cfg.target_utilization).max(0.01);
    let ready = f64::from(i.ready_pods.max(1));
    let dspc = ceil_u32(i.stable_concurrency / target);
    let dppc = ceil_u32(i.panic_concurrency / target);
    let max_up = ceil_u32(cfg.max_scale_up_rate * ready);
    let max_dn = (ready / cfg.max_scale_down_rate).floor() as u32;
    let clamp = |x: u32| x.max(max_dn).min(max_up);
    let (desired_stable, desired_panic) = (clamp(dspc), clamp(dppc));
    let over_panic = f64::from(dppc) / ready >= cfg.panic_threshold;
    if over_panic {
        st.panic_since = Some(i.now);
    } else if let Some(since) = st.panic_since {
        if i.now > since + micros(f64::from(cfg.stable_window_s)) {
            st.panic_since = None;
            st.max_panic_pods = 0;
        }
    }
    let mut want = if st.panic_since.is_some() {
        let w = desired_stable.max(desired_panic);
        if w > st.max_panic_pods {
            st.max_panic_pods = w;
        }
        st.max_panic_pods
    } else {
        desired_stable
    };
    let min = cfg.min_scale.unwrap_or(i.min_replicas);
    want = want.clamp(min, i.max_replicas.max(min));
    if want == 0 {
        let since = *st.zero_since.get_or_insert(i.now);
        if i.current > 0 && i.now < since + micros(cfg.scale_to_zero_grace_s) {
            want = 1;
        }
    } else {
        st.zero_since = None;
    }
    want
}

/// The KPA over every model.
pub struct Kpa {
    pub cfg: KpaConfig,
    pub states: Vec<KpaState>,
}

impl Kpa {
    pub fn new(cfg: KpaConfig, models: usize) -> Self {
        Self {
            cfg,
            states: vec![KpaState::default(); models],
        }
    }
}

impl Policy for Kpa {
    fn due(&self, tick: u64) -> bool {
        on_period(tick, u64::from(self.cfg.tick_s))
    }

    fn tick(&mut self, model: usize, v: &ModelView<'_>) -> Option<u32> {
        if !self.due(v.tick) {
            return None;
        }
        let input = KpaInput {
            now: v.now,
            stable_concurrency: v.history.concurrency(self.cfg.stable_window_s as usize),
            panic_concurrency: v.history.concurrency(self.cfg.panic_window_s()),
            ready_pods: v.ready,
            current: v.desired,
            slots: v.spec.slots,
            min_replicas: v.spec.min_replicas,
            max_replicas: v.spec.max_replicas,
        };
        Some(decide(&self.cfg, &mut self.states[model], &input))
    }

    fn on_cold_request(&mut self, model: usize, v: &ModelView<'_>) -> Option<u32> {
        self.states[model].zero_since = None;
        (v.desired == 0).then_some(1)
    }

    fn history_secs(&self) -> usize {
        self.cfg.stable_window_s as usize
    }
}
