//! One HPA reconcile pass (upstream `reconcileAutoscaler`, `computeReplicasForMetrics`,
//! `tolerancesForHpa`) as a pure function of the HPA, what the scale subresource and
//! metrics APIs returned, the per-HPA history and the time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::{
    HorizontalPodAutoscaler, MetricSourceType, MetricSpec, MetricTarget, MetricTargetType,
};
use super::calc::{self, CalcContext, CalcError, PodInfo, PodMetric, PodMetrics, Tolerances};
use super::normalize::{self, HpaState, Limit};
use super::Timestamp;
use crate::quantity::Quantity;

/// kube-controller-manager flags that change decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerConfig {
    /// `--horizontal-pod-autoscaler-tolerance` (0.1).
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (5 min).
    pub downscale_stabilization: Duration,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period` (5 min).
    pub cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay` (30 s).
    pub initial_readiness_delay: Duration,
    /// Package variable `scaleUpLimitFactor` (2.0; upstream unit tests patch it to 8).
    pub scale_up_limit_factor: f64,
    /// Package variable `scaleUpLimitMinimum` (4.0).
    pub scale_up_limit_minimum: f64,
    /// Feature gate `HPAConfigurableTolerance` (beta, on since v1.35).
    pub configurable_tolerance: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            tolerance: 0.1,
            downscale_stabilization: Duration::from_secs(300),
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
            scale_up_limit_factor: 2.0,
            scale_up_limit_minimum: 4.0,
            configurable_tolerance: true,
        }
    }
}

impl ControllerConfig {
    /// The values upstream's controller unit tests use (CPU initialization 2 min,
    /// readiness delay 10 s, scale-up factor 8).
    pub fn upstream_unit_tests() -> Self {
        Self {
            cpu_initialization_period: Duration::from_secs(120),
            initial_readiness_delay: Duration::from_secs(10),
            scale_up_limit_factor: 8.0,
            ..Self::default()
        }
    }

    /// `tolerancesForHpa`: the flag in both directions, overridden per direction by
    /// `behavior.scale{Up,Down}.tolerance` when the feature gate is on.
    pub fn tolerances_for(&self, hpa: &HorizontalPodAutoscaler) -> Tolerances {
        let mut t = Tolerances::both(self.tolerance);
        if let (Some(b), true) = (&hpa.spec.behavior, self.configurable_tolerance) {
            if let Some(down) = b.scale_down.as_ref().and_then(|r| r.tolerance) {
                t.scale_down = down.as_f64();
            }
            if let Some(up) = b.scale_up.as_ref().and_then(|r| r.tolerance) {
                t.scale_up = up.as_f64();
            }
        }
        t
    }
}

/// What one metrics API call returned for one `spec.metrics` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricInput {
    /// Object: the described object's value. External: the sum of the items
    /// (see [`calc::external_sum`]).
    Value(Quantity),
    /// Pods, Resource, ContainerResource: one value per pod name.
    PodValues {
        values: BTreeMap<String, Quantity>,
        /// When the samples were taken.
        timestamp: Timestamp,
        /// The window they cover (CPU readiness rules).
        window: Duration,
    },
    /// The fetch failed (e.g. 404 from the adapter, empty list).
    Error(String),
}

/// Everything read from the cluster for one pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecisionInput {
    /// The scale subresource's `spec.replicas` (the "current" replicas).
    pub spec_replicas: i32,
    /// The scale subresource's `status.replicas` (Object/External AverageValue).
    pub status_replicas: i32,
    /// One entry per `spec.metrics` item, in order.
    pub metrics: Vec<MetricInput>,
    /// Pods matched by the scale's selector.
    pub pods: Vec<PodInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionType {
    AbleToScale,
    ScalingActive,
    ScalingLimited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// `"True"` / `"False"` in Kubernetes.
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The status value of one metric (upstream `MetricValueStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CurrentMetric {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<i32>,
}

impl std::fmt::Display for CurrentMetric {
    /// `85%` for utilization, otherwise the (average) value as a quantity.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.average_utilization, self.value, self.average_value) {
            (Some(u), _, _) => write!(f, "{u}%"),
            (None, Some(v), _) => write!(f, "{v}"),
            (None, None, Some(v)) => write!(f, "{v}"),
            (None, None, None) => f.write_str("<unknown>"),
        }
    }
}

/// The result of one metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricOutcome {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: MetricSourceType,
    /// `None` when the metric is invalid.
    pub current: Option<CurrentMetric>,
    pub proposed_replicas: Option<i32>,
    /// Why the metric is invalid.
    pub error: Option<String>,
}

/// The outcome of one reconcile pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The scale's spec replicas.
    pub current_replicas: i32,
    /// What `spec.replicas` should be (equals `current_replicas` when not scaling).
    pub desired_replicas: i32,
    /// Whether the controller writes a new `spec.replicas`.
    pub scaled: bool,
    /// Short reason: the `ScalingLimited` reason (`DesiredWithinRange`, `ScaleUpLimit`,
    /// `TooManyReplicas`, …), or `ScalingDisabled` / the failed metric's reason.
    pub reason: String,
    /// Upstream's rescale reason text ("cpu resource utilization … above target").
    pub rescale_reason: Option<String>,
    /// Maximum over valid metric proposals, before normalization.
    pub metric_replicas: Option<i32>,
    /// After stabilization, before rate limits and min/max.
    pub stabilized_replicas: Option<i32>,
    pub metrics: Vec<MetricOutcome>,
    pub conditions: Vec<Condition>,
}

fn cond(type_: ConditionType, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_,
        status,
        reason: reason.to_string(),
        message: message.into(),
    }
}

fn limit_cond(type_: ConditionType, status: bool, l: Limit) -> Condition {
    cond(type_, status, l.reason, l.message)
}

/// One metric's proposal with the name upstream uses in `ValidMetricFound`.
struct Proposal {
    replicas: i32,
    current: CurrentMetric,
    described: String,
}

struct MetricFailure {
    reason: String,
    error: String,
}

fn failed_reason(t: MetricSourceType) -> String {
    format!("FailedGet{t}Metric")
}

fn pod_metrics(input: &MetricInput) -> Result<PodMetrics, String> {
    match input {
        MetricInput::PodValues {
            values,
            timestamp,
            window,
        } => Ok(values
            .iter()
            .map(|(name, q)| {
                (
                    name.clone(),
                    PodMetric {
                        milli: q.milli_value(),
                        timestamp: *timestamp,
                        window: *window,
                    },
                )
            })
            .collect()),
        MetricInput::Value(_) => Err("expected per-pod values, got a single value".into()),
        MetricInput::Error(e) => Err(e.clone()),
    }
}

fn single_value(input: &MetricInput) -> Result<i64, String> {
    match input {
        MetricInput::Value(q) => Ok(q.milli_value()),
        MetricInput::PodValues { .. } => Err("expected a single value, got per-pod values".into()),
        MetricInput::Error(e) => Err(e.clone()),
    }
}

fn milli(q: Option<Quantity>) -> Option<i64> {
    q.map(|q| q.milli_value())
}

fn selector_text(spec: &MetricSpec) -> String {
    let sel = match spec.type_ {
        MetricSourceType::Object => spec
            .object
            .as_ref()
            .and_then(|o| o.metric.selector.as_ref()),
        MetricSourceType::External => spec
            .external
            .as_ref()
            .and_then(|o| o.metric.selector.as_ref()),
        _ => None,
    };
    sel.map_or_else(|| "<nil>".to_string(), ToString::to_string)
}

/// `computeReplicasForMetric` for one spec entry.
fn compute_one(
    ctx: &CalcContext<'_>,
    spec: &MetricSpec,
    input: Option<&MetricInput>,
    spec_replicas: i32,
    status_replicas: i32,
    namespace: &str,
) -> Result<Proposal, String> {
    let missing = MetricInput::Error("no metric input given".into());
    let input = input.unwrap_or(&missing);
    let name = spec.display_name();
    let calc_err = |e: CalcError| e.0;
    match spec.type_ {
        MetricSourceType::Object => {
            let o = spec
                .object
                .as_ref()
                .ok_or("object metric source is not set")?;
            let t = &o.target;
            let fetch = |e: String| {
                format!(
                    "unable to get metric {}: {} on {namespace} {}/{e}",
                    o.metric.name, o.described_object.kind, o.described_object.name
                )
            };
            match (t.type_, milli(t.value), milli(t.average_value)) {
                (MetricTargetType::Value, Some(target), _) => {
                    let usage = single_value(input).map_err(fetch)?;
                    let replicas =
                        calc::usage_ratio_replicas(ctx, spec_replicas, usage, target).map_err(calc_err)?;
                    Ok(Proposal {
                        replicas,
                        current: CurrentMetric {
                            value: Some(Quantity::from_milli(usage)),
                            ..CurrentMetric::default()
                        },
                        described: format!("{} metric {}", o.described_object.kind, o.metric.name),
                    })
                }
                (MetricTargetType::AverageValue, _, Some(target)) => {
                    let usage = single_value(input)
                        .map_err(|e| format!("failed to get {} object metric: {}", o.metric.name, fetch(e)))?;
                    let (replicas, avg) =
                        calc::per_pod_replicas(ctx.tolerances, status_replicas, usage, target);
                    Ok(Proposal {
                        replicas,
                        current: CurrentMetric {
                            average_value: Some(Quantity::from_milli(avg)),
                            ..CurrentMetric::default()
                        },
                        described: format!("external metric {}({})", o.metric.name, selector_text(spec)),
                    })
                }
                _ => Err("invalid object metric source: neither a value target nor an average value target was set".into()),
            }
        }
        MetricSourceType::External => {
            let x = spec
                .external
                .as_ref()
                .ok_or("external metric source is not set")?;
            let t = &x.target;
            let fetch = |e: String| {
                format!(
                    "unable to get external metric {namespace}/{}/{}: {e}",
                    x.metric.name,
                    selector_text(spec)
                )
            };
            let described = format!("external metric {}({})", x.metric.name, selector_text(spec));
            if let Some(target) = milli(t.average_value) {
                let usage = single_value(input).map_err(fetch)?;
                let (replicas, avg) =
                    calc::per_pod_replicas(ctx.tolerances, status_replicas, usage, target);
                return Ok(Proposal {
                    replicas,
                    current: CurrentMetric {
                        average_value: Some(Quantity::from_milli(avg)),
                        ..CurrentMetric::default()
                    },
                    described,
                });
            }
            if let Some(target) = milli(t.value) {
                let usage = single_value(input).map_err(fetch)?;
                let replicas = calc::usage_ratio_replicas(ctx, spec_replicas, usage, target)
                    .map_err(calc_err)?;
                return Ok(Proposal {
                    replicas,
                    current: CurrentMetric {
                        value: Some(Quantity::from_milli(usage)),
                        ..CurrentMetric::default()
                    },
                    described,
                });
            }
            Err("invalid external metric source: neither a value target nor an average value target was set".into())
        }
        MetricSourceType::Pods => {
            let p = spec.pods.as_ref().ok_or("pods metric source is not set")?;
            let target = milli(p.target.average_value)
                .ok_or("invalid pods metric source: no average value target was set")?;
            let metrics =
                pod_metrics(input).map_err(|e| format!("unable to get metric {name}: {e}"))?;
            let (replicas, usage) =
                calc::plain_metric_replicas(ctx, spec_replicas, target, None, metrics)
                    .map_err(calc_err)?;
            Ok(Proposal {
                replicas,
                current: CurrentMetric {
                    average_value: Some(Quantity::from_milli(usage)),
                    ..CurrentMetric::default()
                },
                described: format!("pods metric {name}"),
            })
        }
        MetricSourceType::Resource | MetricSourceType::ContainerResource => {
            let container = spec.type_ == MetricSourceType::ContainerResource;
            let (resource, target): (&str, &MetricTarget) = if container {
                let c = spec
                    .container_resource
                    .as_ref()
                    .ok_or("container resource metric source is not set")?;
                (&c.name, &c.target)
            } else {
                let r = spec
                    .resource
                    .as_ref()
                    .ok_or("resource metric source is not set")?;
                (&r.name, &r.target)
            };
            let kind = if container {
                "container resource"
            } else {
                "resource"
            };
            let metrics = pod_metrics(input)
                .map_err(|e| format!("unable to get metrics for resource {resource}: {e}"))?;
            if let Some(target) = milli(target.average_value) {
                let (replicas, usage) = calc::plain_metric_replicas(
                    ctx,
                    spec_replicas,
                    target,
                    Some(resource),
                    metrics,
                )
                .map_err(|e| format!("failed to get {resource} usage: {e}"))?;
                return Ok(Proposal {
                    replicas,
                    current: CurrentMetric {
                        average_value: Some(Quantity::from_milli(usage)),
                        ..CurrentMetric::default()
                    },
                    described: format!("{resource} {kind}"),
                });
            }
            let target = target.average_utilization.ok_or(
                "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set",
            )?;
            let p = calc::resource_replicas(ctx, spec_replicas, target, resource, metrics)
                .map_err(|e| format!("failed to get {resource} utilization: {e}"))?;
            Ok(Proposal {
                replicas: p.replicas,
                current: CurrentMetric {
                    average_utilization: Some(p.utilization),
                    average_value: Some(Quantity::from_milli(p.raw_average_milli)),
                    value: None,
                },
                described: format!("{resource} {kind} utilization (percentage of request)"),
            })
        }
    }
}

/// `computeReplicasForMetrics`: the maximum over valid metrics, or the first failure
/// when every metric failed or when some failed and the valid ones would scale down.
fn compute_all(
    hpa: &HorizontalPodAutoscaler,
    input: &DecisionInput,
    ctx: &CalcContext<'_>,
) -> (Result<(i32, String), MetricFailure>, Vec<MetricOutcome>) {
    let mut outcomes = Vec::new();
    let mut best: Option<(i32, String)> = None;
    let mut first_failure = None;
    let mut invalid = 0usize;
    for (i, spec) in hpa.spec.metrics.iter().enumerate() {
        let r = compute_one(
            ctx,
            spec,
            input.metrics.get(i),
            input.spec_replicas,
            input.status_replicas,
            hpa.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let mut outcome = MetricOutcome {
            name: spec.display_name(),
            type_: spec.type_,
            current: None,
            proposed_replicas: None,
            error: None,
        };
        match r {
            Ok(p) => {
                outcome.current = Some(p.current);
                outcome.proposed_replicas = Some(p.replicas);
                let replace = match &best {
                    None => true,
                    Some((r, _)) => *r == 0 || p.replicas > *r,
                };
                if replace {
                    best = Some((p.replicas, p.described));
                }
            }
            Err(e) => {
                invalid += 1;
                if first_failure.is_none() {
                    first_failure = Some(MetricFailure {
                        reason: failed_reason(spec.type_),
                        error: e.clone(),
                    });
                }
                outcome.error = Some(e);
            }
        }
        outcomes.push(outcome);
    }
    let replicas = best.as_ref().map_or(0, |b| b.0);
    if invalid >= hpa.spec.metrics.len() || (invalid > 0 && replicas < input.spec_replicas) {
        let failure = first_failure.unwrap_or_else(|| MetricFailure {
            reason: "InvalidMetricSourceType".into(),
            error: "no metrics are configured".into(),
        });
        return (Err(failure), outcomes);
    }
    (Ok(best.unwrap_or((0, String::new()))), outcomes)
}

/// One reconcile pass, assuming the scale update (if any) succeeds: also records the
/// scale event. This is what the live controller and the simulator call every sync
/// period, feeding back the returned state. If the write of `spec.replicas` fails, use
/// [`evaluate`] instead and do not call [`normalize::record_scale_event`].
pub fn decide(
    hpa: &HorizontalPodAutoscaler,
    input: &DecisionInput,
    state: HpaState,
    config: &ControllerConfig,
    now: Timestamp,
) -> (Decision, HpaState) {
    let (decision, mut state) = evaluate(hpa, input, state, config, now);
    if decision.scaled {
        normalize::record_scale_event(
            &mut state,
            hpa.spec.behavior.as_ref(),
            decision.current_replicas,
            decision.desired_replicas,
            now,
        );
        let message = format!(
            "the HPA controller was able to update the target scale to {}",
            decision.desired_replicas
        );
        let mut decision = decision;
        set_condition(
            &mut decision.conditions,
            cond(
                ConditionType::AbleToScale,
                true,
                "SucceededRescale",
                message,
            ),
        );
        return (decision, state);
    }
    (decision, state)
}

fn set_condition(conditions: &mut Vec<Condition>, c: Condition) {
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(slot) => *slot = c,
        None => conditions.push(c),
    }
}

/// One reconcile pass without recording a scale event: the decision, and the state
/// with the recommendation history updated (as upstream does before writing the scale).
pub fn evaluate(
    hpa: &HorizontalPodAutoscaler,
    input: &DecisionInput,
    mut state: HpaState,
    config: &ControllerConfig,
    now: Timestamp,
) -> (Decision, HpaState) {
    use ConditionType::*;
    let current = input.spec_replicas;
    let (min, max) = (hpa.spec.min_replicas, hpa.spec.max_replicas);
    let recs = state.recommendations.get_or_insert_with(|| {
        vec![normalize::Recommendation {
            replicas: current,
            timestamp: now,
        }]
    });
    let mut d = Decision {
        current_replicas: current,
        desired_replicas: current,
        scaled: false,
        reason: String::new(),
        rescale_reason: None,
        metric_replicas: None,
        stabilized_replicas: None,
        metrics: Vec::new(),
        conditions: vec![cond(
            AbleToScale,
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        )],
    };
    if current == 0 && min != 0 {
        d.reason = "ScalingDisabled".into();
        set_condition(
            &mut d.conditions,
            cond(
                ScalingActive,
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            ),
        );
        return (d, state);
    }
    let desired = if current > max {
        d.reason = normalize::TOO_MANY.reason.into();
        d.rescale_reason = Some("Current number of replicas above Spec.MaxReplicas".into());
        max
    } else if current < min {
        d.reason = normalize::TOO_FEW.reason.into();
        d.rescale_reason = Some("Current number of replicas below Spec.MinReplicas".into());
        min
    } else {
        let ctx = CalcContext {
            pods: &input.pods,
            now,
            tolerances: config.tolerances_for(hpa),
            cpu_initialization_period: config.cpu_initialization_period,
            initial_readiness_delay: config.initial_readiness_delay,
        };
        let (result, outcomes) = compute_all(hpa, input, &ctx);
        d.metrics = outcomes;
        let (metric_desired, described) = match result {
            Ok(ok) => ok,
            Err(f) => {
                set_condition(
                    &mut d.conditions,
                    cond(
                        ScalingActive,
                        false,
                        &f.reason,
                        format!(
                            "the HPA was unable to compute the replica count: {}",
                            f.error
                        ),
                    ),
                );
                d.reason = f.reason;
                return (d, state);
            }
        };
        set_condition(
            &mut d.conditions,
            cond(
                ScalingActive,
                true,
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {described}"
                ),
            ),
        );
        let desired = metric_desired.max(0);
        d.metric_replicas = Some(desired);
        if desired > current {
            d.rescale_reason = Some(format!("{described} above target"));
        } else if desired < current {
            d.rescale_reason = Some("All metrics below target".into());
        }
        let (stabilized, able, (normalized, limit)) = match &hpa.spec.behavior {
            None => {
                let s = normalize::stabilize_without_behavior(
                    recs,
                    desired,
                    config.downscale_stabilization,
                    now,
                );
                let able = if s > desired {
                    normalize::SCALE_DOWN_STABILIZED
                } else {
                    normalize::READY_FOR_NEW_SCALE
                };
                let limited = normalize::limit_without_behavior(
                    current,
                    s,
                    min,
                    max,
                    config.scale_up_limit_factor,
                    config.scale_up_limit_minimum,
                );
                (s, able, limited)
            }
            Some(b) => {
                let up = b.resolved_scale_up();
                let down = b.resolved_scale_down(config.downscale_stabilization);
                let (s, able) = normalize::stabilize_with_behavior(
                    recs,
                    current,
                    desired,
                    up.window,
                    down.window,
                    now,
                );
                let limited = normalize::rate_limit_with_behavior(
                    current, s, min, max, &up, &down, &state, now,
                );
                (s, able, limited)
            }
        };
        d.stabilized_replicas = Some(stabilized);
        set_condition(&mut d.conditions, limit_cond(AbleToScale, true, able));
        set_condition(
            &mut d.conditions,
            limit_cond(ScalingLimited, normalized != stabilized, limit),
        );
        d.reason = limit.reason.into();
        normalized
    };
    d.scaled = desired != current;
    d.desired_replicas = desired;
    if !d.scaled {
        d.rescale_reason = None;
    }
    (d, state)
}
