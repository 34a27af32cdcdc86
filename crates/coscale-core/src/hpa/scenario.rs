//! `coscale hpa explain`: a scenario file (an HPA, what the scale subresource and the
//! metrics APIs return, the pods, the history) in, one decision explained out.
//!
//! ```yaml
//! hpa: <an autoscaling/v2 HorizontalPodAutoscaler object>
//! target: {specReplicas: 3, statusReplicas: 3}   # statusReplicas defaults to specReplicas
//! metrics:                                       # one entry per spec.metrics item, in order
//!   - value: "1500m"                             # Object, or External (the sum)
//!   - values: ["1", "2"]                         # External items (summed, saturating)
//!   - podValues: {pod-0: "10", pod-1: "20"}      # Pods / Resource usage per pod;
//!     ageSeconds: 0                              #   optional sample age (default 0)
//!     windowSeconds: 60                          #   optional sample window (default 60)
//!   - error: "no metrics returned"               # the fetch failed
//! pods:
//!   - {name: pod-0, phase: Running, ready: true, readySinceSeconds: 300,
//!      startedSecondsAgo: 400, deleted: false, cpuRequest: "500m", memoryRequest: "1Gi"}
//! history:                                       # absent = no history yet
//!   recommendations: [{replicas: 5, ageSeconds: 30}]
//!   scaleUpEvents: [{change: 2, ageSeconds: 20}]
//!   scaleDownEvents: []
//! controller: {tolerance: 0.1, downscaleStabilizationWindowSeconds: 300,
//!              cpuInitializationPeriodSeconds: 300, initialReadinessDelaySeconds: 30,
//!              scaleUpLimitFactor: 2.0, scaleUpLimitMinimum: 4, configurableTolerance: true}
//! ```
//!
//! Ages are seconds before "now". `ready` absent means the pod has no Ready condition;
//! `readySinceSeconds` (age of the Ready condition's last transition) defaults to
//! `startedSecondsAgo`. `phase` defaults to `Running`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::{hpa_from_value, HorizontalPodAutoscaler, HpaError};
use super::calc::{external_sum, PodInfo, PodPhase};
use super::controller::{
    decide, ConditionType, ControllerConfig, Decision, DecisionInput, MetricInput,
};
use super::normalize::{HpaState, Recommendation, ScaleEvent};
use super::Timestamp;
use crate::quantity::Quantity;

/// The scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub hpa: serde_yaml::Value,
    pub target: TargetScale,
    #[serde(default)]
    pub metrics: Vec<ScenarioMetric>,
    #[serde(default)]
    pub pods: Vec<ScenarioPod>,
    #[serde(default)]
    pub history: Option<ScenarioHistory>,
    #[serde(default)]
    pub controller: ScenarioController,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetScale {
    pub spec_replicas: i32,
    #[serde(default)]
    pub status_replicas: Option<i32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioMetric {
    #[serde(default)]
    pub value: Option<Quantity>,
    #[serde(default)]
    pub values: Option<Vec<Quantity>>,
    #[serde(default)]
    pub pod_values: Option<BTreeMap<String, Quantity>>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub age_seconds: i64,
    #[serde(default = "default_window")]
    pub window_seconds: u64,
}

fn default_window() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ScenarioPhase {
    Pending,
    #[default]
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioPod {
    pub name: String,
    #[serde(default)]
    pub phase: ScenarioPhase,
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub ready_since_seconds: Option<i64>,
    #[serde(default)]
    pub started_seconds_ago: Option<i64>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub cpu_request: Option<Quantity>,
    #[serde(default)]
    pub memory_request: Option<Quantity>,
}

/// History as ages (seconds before now); also the shape of the history in the output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioHistory {
    #[serde(default)]
    pub recommendations: Vec<AgedRecommendation>,
    #[serde(default)]
    pub scale_up_events: Vec<AgedEvent>,
    #[serde(default)]
    pub scale_down_events: Vec<AgedEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgedRecommendation {
    pub replicas: i32,
    pub age_seconds: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgedEvent {
    pub change: i32,
    pub age_seconds: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outdated: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioController {
    pub tolerance: Option<f64>,
    pub downscale_stabilization_window_seconds: Option<u64>,
    pub cpu_initialization_period_seconds: Option<u64>,
    pub initial_readiness_delay_seconds: Option<u64>,
    pub scale_up_limit_factor: Option<f64>,
    pub scale_up_limit_minimum: Option<f64>,
    pub configurable_tolerance: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("scenario is not valid YAML: {0}")]
    Syntax(String),
    #[error("scenario field {path}: {message}")]
    Field { path: String, message: String },
    #[error("scenario field hpa: {0}")]
    Hpa(#[from] HpaError),
}

fn field(path: impl Into<String>, message: impl Into<String>) -> ExplainError {
    ExplainError::Field {
        path: path.into(),
        message: message.into(),
    }
}

/// "Now" of a scenario; ages are measured back from it.
pub const NOW: Timestamp = Timestamp::from_millis(0);

fn ago(seconds: i64) -> Timestamp {
    Timestamp::from_secs(seconds.saturating_neg())
}

fn age_of(t: Timestamp) -> i64 {
    NOW.millis().saturating_sub(t.millis()) / 1000
}

/// Everything [`decide`] needs, built from a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioInputs {
    pub hpa: HorizontalPodAutoscaler,
    pub input: DecisionInput,
    pub state: HpaState,
    pub config: ControllerConfig,
    pub now: Timestamp,
}

impl Scenario {
    /// Parses a scenario file (YAML or JSON); unknown fields are errors with their path.
    pub fn parse(text: &str) -> Result<Self, ExplainError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ExplainError::Syntax(e.to_string()))?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            field(
                if path == "." {
                    "(document)".to_string()
                } else {
                    path
                },
                e.into_inner().to_string(),
            )
        })
    }

    /// Validates the scenario against its HPA and builds typed inputs.
    pub fn inputs(&self) -> Result<ScenarioInputs, ExplainError> {
        let hpa = hpa_from_value(self.hpa.clone())?;
        if self.metrics.len() != hpa.spec.metrics.len() {
            return Err(field(
                "metrics",
                format!(
                    "has {} entries but the HPA has {} metrics (after defaults); give one per spec.metrics item, in order",
                    self.metrics.len(),
                    hpa.spec.metrics.len()
                ),
            ));
        }
        let metrics = self
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| metric_input(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let pods = self
            .pods
            .iter()
            .map(|p| {
                let mut requests = BTreeMap::new();
                if let Some(q) = p.cpu_request {
                    requests.insert("cpu".to_string(), q);
                }
                if let Some(q) = p.memory_request {
                    requests.insert("memory".to_string(), q);
                }
                PodInfo {
                    name: p.name.clone(),
                    phase: match p.phase {
                        ScenarioPhase::Pending => PodPhase::Pending,
                        ScenarioPhase::Running => PodPhase::Running,
                        ScenarioPhase::Succeeded => PodPhase::Succeeded,
                        ScenarioPhase::Failed => PodPhase::Failed,
                        ScenarioPhase::Unknown => PodPhase::Unknown,
                    },
                    ready: p.ready,
                    ready_transition: p.ready_since_seconds.or(p.started_seconds_ago).map(ago),
                    start_time: p.started_seconds_ago.map(ago),
                    deleted: p.deleted,
                    requests,
                }
            })
            .collect();
        let state = match &self.history {
            None => HpaState::default(),
            Some(h) => HpaState {
                recommendations: Some(
                    h.recommendations
                        .iter()
                        .map(|r| Recommendation {
                            replicas: r.replicas,
                            timestamp: ago(r.age_seconds),
                        })
                        .collect(),
                ),
                scale_up_events: events_in(&h.scale_up_events),
                scale_down_events: events_in(&h.scale_down_events),
            },
        };
        let c = &self.controller;
        let d = ControllerConfig::default();
        let config = ControllerConfig {
            tolerance: c.tolerance.unwrap_or(d.tolerance),
            downscale_stabilization: c
                .downscale_stabilization_window_seconds
                .map_or(d.downscale_stabilization, Duration::from_secs),
            cpu_initialization_period: c
                .cpu_initialization_period_seconds
                .map_or(d.cpu_initialization_period, Duration::from_secs),
            initial_readiness_delay: c
                .initial_readiness_delay_seconds
                .map_or(d.initial_readiness_delay, Duration::from_secs),
            scale_up_limit_factor: c.scale_up_limit_factor.unwrap_or(d.scale_up_limit_factor),
            scale_up_limit_minimum: c.scale_up_limit_minimum.unwrap_or(d.scale_up_limit_minimum),
            configurable_tolerance: c.configurable_tolerance.unwrap_or(d.configurable_tolerance),
        };
        let spec_replicas = self.target.spec_replicas;
        Ok(ScenarioInputs {
            hpa,
            input: DecisionInput {
                spec_replicas,
                status_replicas: self.target.status_replicas.unwrap_or(spec_replicas),
                metrics,
                pods,
            },
            state,
            config,
            now: NOW,
        })
    }
}

fn events_in(events: &[AgedEvent]) -> Vec<ScaleEvent> {
    events
        .iter()
        .map(|e| ScaleEvent {
            change: e.change,
            timestamp: ago(e.age_seconds),
            outdated: e.outdated,
        })
        .collect()
}

fn events_out(events: &[ScaleEvent]) -> Vec<AgedEvent> {
    events
        .iter()
        .map(|e| AgedEvent {
            change: e.change,
            age_seconds: age_of(e.timestamp),
            outdated: e.outdated,
        })
        .collect()
}

fn metric_input(i: usize, m: &ScenarioMetric) -> Result<MetricInput, ExplainError> {
    let path = format!("metrics[{i}]");
    let set = [
        m.value.is_some(),
        m.values.is_some(),
        m.pod_values.is_some(),
        m.error.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(field(
            path,
            "set exactly one of value, values, podValues, error",
        ));
    }
    Ok(if let Some(v) = m.value {
        MetricInput::Value(v)
    } else if let Some(vs) = &m.values {
        MetricInput::Value(Quantity::from_milli(external_sum(vs)))
    } else if let Some(pv) = &m.pod_values {
        MetricInput::PodValues {
            values: pv.clone(),
            timestamp: ago(m.age_seconds),
            window: Duration::from_secs(m.window_seconds),
        }
    } else {
        MetricInput::Error(m.error.clone().unwrap_or_default())
    })
}

/// One metric line of the explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedMetric {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub current_value: Option<String>,
    pub proposed_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `"True"` or `"False"`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The explained decision; serializes to the `-o json` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub hpa: String,
    pub scale_target: String,
    pub current_replicas: i32,
    pub desired_replicas: i32,
    pub scaled: bool,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescale_reason: Option<String>,
    pub metric_replicas: Option<i32>,
    pub stabilized_replicas: Option<i32>,
    pub metrics: Vec<ExplainedMetric>,
    pub conditions: Vec<ExplainedCondition>,
    /// The history after the decision (ages relative to the scenario's now).
    pub history: ScenarioHistory,
}

impl Explanation {
    pub fn from_decision(hpa: &HorizontalPodAutoscaler, d: &Decision, state: &HpaState) -> Self {
        let status = |b: bool| if b { "True" } else { "False" }.to_string();
        Self {
            hpa: hpa.key(),
            scale_target: format!(
                "{}/{}",
                hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name
            ),
            current_replicas: d.current_replicas,
            desired_replicas: d.desired_replicas,
            scaled: d.scaled,
            reason: d.reason.clone(),
            rescale_reason: d.rescale_reason.clone(),
            metric_replicas: d.metric_replicas,
            stabilized_replicas: d.stabilized_replicas,
            metrics: d
                .metrics
                .iter()
                .map(|m| ExplainedMetric {
                    name: m.name.clone(),
                    type_: m.type_.to_string(),
                    current_value: m.current.as_ref().map(ToString::to_string),
                    proposed_replicas: m.proposed_replicas,
                    error: m.error.clone(),
                })
                .collect(),
            conditions: d
                .conditions
                .iter()
                .map(|c| ExplainedCondition {
                    type_: match c.type_ {
                        ConditionType::AbleToScale => "AbleToScale",
                        ConditionType::ScalingActive => "ScalingActive",
                        ConditionType::ScalingLimited => "ScalingLimited",
                    }
                    .to_string(),
                    status: status(c.status),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                })
                .collect(),
            history: ScenarioHistory {
                recommendations: state
                    .recommendations
                    .iter()
                    .flatten()
                    .map(|r| AgedRecommendation {
                        replicas: r.replicas,
                        age_seconds: age_of(r.timestamp),
                    })
                    .collect(),
                scale_up_events: events_out(&state.scale_up_events),
                scale_down_events: events_out(&state.scale_down_events),
            },
        }
    }
}

fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let w = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "HPA {} -> {}", self.hpa, self.scale_target)?;
        writeln!(f)?;
        let mut rows = vec![vec![
            "METRIC".to_string(),
            "TYPE".into(),
            "CURRENT".into(),
            "PROPOSED".into(),
        ]];
        for m in &self.metrics {
            rows.push(vec![
                m.name.clone(),
                m.type_.clone(),
                m.current_value.clone().unwrap_or_else(|| "-".into()),
                m.proposed_replicas.map_or_else(
                    || format!("invalid: {}", m.error.as_deref().unwrap_or("")),
                    |r| r.to_string(),
                ),
            ]);
        }
        if !self.metrics.is_empty() {
            table(f, &rows)?;
            writeln!(f)?;
        }
        let opt = |v: Option<i32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        writeln!(
            f,
            "replicas: current {}, from metrics {}, stabilized {}, desired {}",
            self.current_replicas,
            opt(self.metric_replicas),
            opt(self.stabilized_replicas),
            self.desired_replicas
        )?;
        writeln!(
            f,
            "decision: {} ({})",
            if self.scaled {
                format!(
                    "scale {} -> {}",
                    self.current_replicas, self.desired_replicas
                )
            } else {
                format!("keep {}", self.current_replicas)
            },
            self.reason
        )?;
        if let Some(r) = &self.rescale_reason {
            writeln!(f, "because:  {r}")?;
        }
        writeln!(f)?;
        let mut rows = vec![vec![
            "CONDITION".to_string(),
            "STATUS".into(),
            "REASON".into(),
            "MESSAGE".into(),
        ]];
        for c in &self.conditions {
            rows.push(vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]);
        }
        table(f, &rows)?;
        writeln!(f)?;
        let recs: Vec<String> = self
            .history
            .recommendations
            .iter()
            .map(|r| format!("{}@-{}s", r.replicas, r.age_seconds))
            .collect();
        writeln!(f, "recommendations after: [{}]", recs.join(", "))
    }
}

/// Parses a scenario, runs one pass of [`decide`] and explains it.
pub fn explain(text: &str) -> Result<Explanation, ExplainError> {
    let inputs = Scenario::parse(text)?.inputs()?;
    let (decision, state) = decide(
        &inputs.hpa,
        &inputs.input,
        inputs.state,
        &inputs.config,
        inputs.now,
    );
    Ok(Explanation::from_decision(&inputs.hpa, &decision, &state))
}

/// What `coscale hpa explain -f FILE [-o json]` prints for the file's text.
pub fn render(text: &str, json: bool) -> Result<String, ExplainError> {
    let e = explain(text)?;
    if json {
        serde_json::to_string_pretty(&e).map_err(|err| field("(output)", err.to_string()))
    } else {
        Ok(e.to_string())
    }
}
