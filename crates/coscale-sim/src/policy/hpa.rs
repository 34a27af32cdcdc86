//! The Kubernetes HPA over the built-in `infer_rps` metric: every sync period (15 s)
//! each model's HPA runs `coscale_core::hpa::decide` — the live controller's code —
//! with an Object metric whose value is the model's request rate over the metric
//! window, and keeps the returned history.

use coscale_core::hpa::api::hpa_from_value;
use coscale_core::hpa::{
    decide, ControllerConfig, DecisionInput, HorizontalPodAutoscaler, HpaState, MetricInput,
    Timestamp,
};
use coscale_core::quantity::Quantity;
use serde::Deserialize;

use super::{on_period, ModelView, Policy};
use crate::scenario::ModelSpec;

/// An HPA policy: a template and how to fill it per model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpaConfig {
    /// An `autoscaling/v2` HorizontalPodAutoscaler (any part of it). Missing parts are
    /// filled per model: scaleTargetRef, minReplicas/maxReplicas (the model's, at
    /// least 1) and an Object `infer_rps` AverageValue metric.
    pub template: Option<serde_yaml::Value>,
    /// Target rps per replica; `None` = 70 % of a replica's capacity (slots / mean
    /// service time).
    pub target_rps: Option<f64>,
    pub target_utilization: f64,
    /// Sync period (`--horizontal-pod-autoscaler-sync-period`).
    pub sync_s: u32,
}

impl Default for HpaConfig {
    fn default() -> Self {
        Self {
            template: None,
            target_rps: None,
            target_utilization: 0.7,
            sync_s: 15,
        }
    }
}

/// Builds the HPA object for one model.
pub fn hpa_for(
    cfg: &HpaConfig,
    m: &ModelSpec,
    min_floor: u32,
) -> Result<HorizontalPodAutoscaler, String> {
    use serde_yaml::{Mapping, Value};
    let target = cfg
        .target_rps
        .unwrap_or(cfg.target_utilization * f64::from(m.slots) / m.service_mean_s);
    let target_q = Quantity::from_f64_milli_ceil(target.max(0.001));
    let mut v = cfg
        .template
        .clone()
        .unwrap_or(Value::Mapping(Mapping::new()));
    let Value::Mapping(map) = &mut v else {
        return Err("hpa.template must be a mapping".into());
    };
    let s = |x: &str| Value::String(x.to_string());
    map.entry(s("apiVersion")).or_insert(s("autoscaling/v2"));
    map.entry(s("kind")).or_insert(s("HorizontalPodAutoscaler"));
    let meta = map
        .entry(s("metadata"))
        .or_insert(Value::Mapping(Mapping::new()));
    if let Value::Mapping(meta) = meta {
        meta.insert(s("name"), s(&m.name));
    }
    let spec = map
        .entry(s("spec"))
        .or_insert(Value::Mapping(Mapping::new()));
    let Value::Mapping(spec) = spec else {
        return Err("hpa.template.spec must be a mapping".into());
    };
    let model_ref = serde_yaml::from_str::<Value>(&format!(
        "{{apiVersion: mlops.seldon.io/v1alpha1, kind: Model, name: {:?}}}",
        m.name
    ))
    .map_err(|e| e.to_string())?;
    spec.insert(s("scaleTargetRef"), model_ref.clone());
    spec.entry(s("minReplicas"))
        .or_insert(Value::from(m.min_replicas.max(min_floor).max(1)));
    spec.entry(s("maxReplicas"))
        .or_insert(Value::from(m.max_replicas));
    let metric = serde_yaml::from_str::<Value>(&format!(
        "{{type: Object, object: {{metric: {{name: infer_rps}}, describedObject: {}, \
         target: {{type: AverageValue, averageValue: \"{target_q}\"}}}}}}",
        serde_json::to_string(&model_ref).map_err(|e| e.to_string())?
    ))
    .map_err(|e| e.to_string())?;
    spec.entry(s("metrics"))
        .or_insert(Value::Sequence(vec![metric]));
    hpa_from_value(v).map_err(|e| format!("model {}: {e}", m.name))
}

/// The metric inputs for one pass: `infer_rps` gets the model's rate; any other
/// metric is reported as missing (the simulator has no other metric).
pub fn metric_inputs(hpa: &HorizontalPodAutoscaler, rps: f64) -> Vec<MetricInput> {
    hpa.spec
        .metrics
        .iter()
        .map(|m| {
            let name = m
                .object
                .as_ref()
                .map(|o| o.metric.name.as_str())
                .or(m.external.as_ref().map(|e| e.metric.name.as_str()));
            if name == Some("infer_rps") {
                MetricInput::Value(Quantity::from_f64_milli_ceil(rps))
            } else {
                MetricInput::Error(format!("the simulator has no metric {}", m.display_name()))
            }
        })
        .collect()
}

/// One HPA per model.
pub struct Hpa {
    pub cfg: HpaConfig,
    pub controller: ControllerConfig,
    pub hpas: Vec<HorizontalPodAutoscaler>,
    pub states: Vec<HpaState>,
    pub window_s: usize,
}

impl Hpa {
    pub fn new(cfg: HpaConfig, models: &[ModelSpec], window_s: usize) -> Result<Self, String> {
        let hpas = models
            .iter()
            .map(|m| hpa_for(&cfg, m, 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cfg,
            controller: ControllerConfig::default(),
            states: vec![HpaState::default(); hpas.len()],
            hpas,
            window_s,
        })
    }

    /// One sync of one model's HPA: the new desired count when it scales.
    pub fn sync(&mut self, model: usize, v: &ModelView<'_>) -> Option<u32> {
        let hpa = &self.hpas[model];
        let input = DecisionInput {
            spec_replicas: i32::try_from(v.desired).unwrap_or(i32::MAX),
            status_replicas: i32::try_from(v.placed).unwrap_or(i32::MAX),
            metrics: metric_inputs(hpa, v.history.rate(self.window_s)),
            pods: Vec::new(),
        };
        let now = Timestamp::from_millis(i64::try_from(v.now / 1000).unwrap_or(i64::MAX));
        let state = std::mem::take(&mut self.states[model]);
        let (d, state) = decide(hpa, &input, state, &self.controller, now);
        self.states[model] = state;
        d.scaled
            .then(|| u32::try_from(d.desired_replicas.max(0)).unwrap_or(0))
    }
}

impl Policy for Hpa {
    fn tick(&mut self, model: usize, v: &ModelView<'_>) -> Option<u32> {
        if !self.due(v.tick) {
            return None;
        }
        self.sync(model, v)
    }

    fn due(&self, tick: u64) -> bool {
        on_period(tick, u64::from(self.cfg.sync_s))
    }

    fn history_secs(&self) -> usize {
        self.window_s
    }
}
