//! Per-metric replica proposals (upstream `replica_calculator.go` and
//! `metrics/utilization.go`).
//!
//! All values are milli-units as `i64` (`Quantity::milli_value`, rounded up), ratios are
//! `f64` divisions of those, averages truncate toward zero, and replica counts are the
//! ceiling of an `f64`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::quantity::Quantity;

/// Scale-down and scale-up tolerance around a usage ratio of 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tolerances {
    pub scale_down: f64,
    pub scale_up: f64,
}

impl Tolerances {
    pub const fn both(t: f64) -> Self {
        Self {
            scale_down: t,
            scale_up: t,
        }
    }
    /// `1 - down <= ratio <= 1 + up` (closed interval, v1.33+ form).
    pub fn is_within(&self, ratio: f64) -> bool {
        (1.0 - self.scale_down) <= ratio && ratio <= (1.0 + self.scale_up)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// What the HPA reads of one pod matched by the scale target's selector.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub phase: PodPhase,
    /// Status of the `Ready` condition; `None` when the pod has no such condition.
    pub ready: Option<bool>,
    /// `lastTransitionTime` of the `Ready` condition.
    pub ready_transition: Option<Timestamp>,
    /// `status.startTime`; `None` when not set.
    pub start_time: Option<Timestamp>,
    /// `metadata.deletionTimestamp` is set.
    pub deleted: bool,
    /// Resource requests of the pod (or of the named container for ContainerResource
    /// metrics), by resource name (`cpu`, `memory`).
    pub requests: BTreeMap<String, Quantity>,
}

impl PodInfo {
    /// A running, ready pod started long ago with no requests.
    pub fn running_ready(name: &str) -> Self {
        Self {
            name: name.to_string(),
            phase: PodPhase::Running,
            ready: Some(true),
            ready_transition: Some(Timestamp::from_millis(i64::MIN / 4)),
            start_time: Some(Timestamp::from_millis(i64::MIN / 4)),
            deleted: false,
            requests: BTreeMap::new(),
        }
    }
}

/// One per-pod sample from a metrics API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMetric {
    /// Value in milli-units.
    pub milli: i64,
    pub timestamp: Timestamp,
    /// The window the sample covers (custom metrics default: 60 s).
    pub window: Duration,
}

/// Per-pod samples by pod name.
pub type PodMetrics = BTreeMap<String, PodMetric>;

/// Why a metric gives no proposal (the metric is then invalid, §1.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CalcError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, CalcError> {
    Err(CalcError(msg.into()))
}

const NO_PODS: &str = "no pods returned by selector while calculating replica count";

/// Everything the calculators read besides the metric itself.
#[derive(Debug, Clone, Copy)]
pub struct CalcContext<'a> {
    pub pods: &'a [PodInfo],
    pub now: Timestamp,
    pub tolerances: Tolerances,
    pub cpu_initialization_period: Duration,
    pub initial_readiness_delay: Duration,
}

/// Pods sorted by how their samples are used (`groupPods`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodGroups {
    /// Running pods with a sample that count as ready.
    pub ready: i64,
    /// Pending pods, and for CPU pods that are not ready or still initializing.
    pub unready: BTreeSet<String>,
    /// Pods without a sample.
    pub missing: BTreeSet<String>,
    /// Deleted and Failed pods.
    pub ignored: BTreeSet<String>,
}

/// `groupPods`; `resource == Some("cpu")` turns on the CPU readiness rules.
pub fn group_pods(
    ctx: &CalcContext<'_>,
    metrics: &PodMetrics,
    resource: Option<&str>,
) -> PodGroups {
    let mut g = PodGroups::default();
    for pod in ctx.pods {
        if pod.deleted || pod.phase == PodPhase::Failed {
            g.ignored.insert(pod.name.clone());
            continue;
        }
        if pod.phase == PodPhase::Pending {
            g.unready.insert(pod.name.clone());
            continue;
        }
        let Some(metric) = metrics.get(&pod.name) else {
            g.missing.insert(pod.name.clone());
            continue;
        };
        if resource == Some("cpu") {
            let unready = match (pod.ready, pod.ready_transition, pod.start_time) {
                (Some(ready), Some(transition), Some(start)) => {
                    if start.plus(ctx.cpu_initialization_period) > ctx.now {
                        !ready || metric.timestamp < transition.plus(metric.window)
                    } else {
                        !ready && start.plus(ctx.initial_readiness_delay) > transition
                    }
                }
                // No Ready condition (or no transition time) or no start time.
                _ => true,
            };
            if unready {
                g.unready.insert(pod.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

fn ceil_i32(x: f64) -> i32 {
    // Go `int32(math.Ceil(x))`; saturate instead of wrapping on absurd values.
    let c = x.ceil();
    if c.is_nan() {
        0
    } else {
        c.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
    }
}

fn clamp_i32(v: i128) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// `GetResourceUtilizationRatio`: over pods present in both maps,
/// utilization = trunc(sum(metric) * 100 / sum(request)).
fn utilization_ratio(
    metrics: &PodMetrics,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), CalcError> {
    let (mut total, mut req_total, mut n) = (0i128, 0i128, 0i128);
    for (name, m) in metrics {
        if let Some(r) = requests.get(name) {
            total += i128::from(m.milli);
            req_total += i128::from(*r);
            n += 1;
        }
    }
    if req_total == 0 {
        return fail("no metrics returned matched known pods");
    }
    let utilization = clamp_i32(total * 100 / req_total);
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        clamp_i64(total / n),
    ))
}

/// `GetMetricUsageRatio`: usage = trunc(sum / count) over every entry.
fn usage_ratio(metrics: &PodMetrics, target: i64) -> (f64, i64) {
    let total: i128 = metrics.values().map(|m| i128::from(m.milli)).sum();
    let len = i128::try_from(metrics.len()).unwrap_or(i128::MAX).max(1);
    let usage = clamp_i64(total / len);
    (usage as f64 / target as f64, usage)
}

fn fill(metrics: &mut PodMetrics, names: &BTreeSet<String>, value: impl Fn(&str) -> i64) {
    for name in names {
        metrics.insert(
            name.clone(),
            PodMetric {
                milli: value(name),
                timestamp: Timestamp::default(),
                window: Duration::ZERO,
            },
        );
    }
}

/// Second pass shared by both pod calculators.
fn second_pass(ratio: f64, new_ratio: f64, len: usize, current: i32, tol: Tolerances) -> i32 {
    if tol.is_within(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    let n = ceil_i32(new_ratio * len as f64);
    if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
        return current;
    }
    n
}

/// Result of the Resource/ContainerResource Utilization calculator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtilizationProposal {
    pub replicas: i32,
    /// Average utilization in percent of request (first pass).
    pub utilization: i32,
    /// Average raw usage in milli-units (first pass).
    pub raw_average_milli: i64,
}

/// `GetResourceReplicas`: Resource / ContainerResource with a Utilization target.
pub fn resource_replicas(
    ctx: &CalcContext<'_>,
    current: i32,
    target_utilization: i32,
    resource: &str,
    mut metrics: PodMetrics,
) -> Result<UtilizationProposal, CalcError> {
    if ctx.pods.is_empty() {
        return fail(NO_PODS);
    }
    let g = group_pods(ctx, &metrics, Some(resource));
    metrics.retain(|name, _| !g.ignored.contains(name) && !g.unready.contains(name));
    if metrics.is_empty() {
        return fail("did not receive metrics for targeted pods (pods might be unready)");
    }
    let mut requests = BTreeMap::new();
    for pod in ctx.pods {
        match pod.requests.get(resource) {
            Some(q) => requests.insert(pod.name.clone(), q.milli_value()),
            None => {
                return fail(format!(
                    "missing request for {resource} in Pod {}",
                    pod.name
                ))
            }
        };
    }
    let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target_utilization)?;
    let done = |replicas| UtilizationProposal {
        replicas,
        utilization,
        raw_average_milli: raw,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if ctx.tolerances.is_within(ratio) {
            return Ok(done(current));
        }
        return Ok(done(ceil_i32(ratio * g.ready as f64)));
    }
    if !g.missing.is_empty() {
        if ratio < 1.0 {
            let fallback = i64::from(target_utilization.max(100));
            let reqs = &requests;
            fill(&mut metrics, &g.missing, |n| {
                reqs.get(n).copied().unwrap_or(0).saturating_mul(fallback) / 100
            });
        } else if ratio > 1.0 {
            fill(&mut metrics, &g.missing, |_| 0);
        }
    }
    if scale_up_with_unready {
        fill(&mut metrics, &g.unready, |_| 0);
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
    Ok(done(second_pass(
        ratio,
        new_ratio,
        metrics.len(),
        current,
        ctx.tolerances,
    )))
}

/// `calcPlainMetricReplicas`: Pods metrics, and Resource AverageValue targets (pass the
/// resource name so CPU gets the readiness rules). Returns (replicas, average usage).
pub fn plain_metric_replicas(
    ctx: &CalcContext<'_>,
    current: i32,
    target_milli: i64,
    resource: Option<&str>,
    mut metrics: PodMetrics,
) -> Result<(i32, i64), CalcError> {
    if ctx.pods.is_empty() {
        return fail(NO_PODS);
    }
    let g = group_pods(ctx, &metrics, resource);
    metrics.retain(|name, _| !g.ignored.contains(name) && !g.unready.contains(name));
    if metrics.is_empty() {
        return fail("did not receive metrics for targeted pods (pods might be unready)");
    }
    let (ratio, usage) = usage_ratio(&metrics, target_milli);
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if ctx.tolerances.is_within(ratio) {
            return Ok((current, usage));
        }
        return Ok((ceil_i32(ratio * g.ready as f64), usage));
    }
    if !g.missing.is_empty() {
        if ratio < 1.0 {
            fill(&mut metrics, &g.missing, |_| target_milli);
        } else if ratio > 1.0 {
            fill(&mut metrics, &g.missing, |_| 0);
        }
    }
    if scale_up_with_unready {
        fill(&mut metrics, &g.unready, |_| 0);
    }
    let (new_ratio, _) = usage_ratio(&metrics, target_milli);
    let replicas = second_pass(ratio, new_ratio, metrics.len(), current, ctx.tolerances);
    Ok((replicas, usage))
}

/// Pods with phase Running and condition Ready=True (`getReadyPodsCount`).
pub fn ready_pod_count(pods: &[PodInfo]) -> Result<i64, CalcError> {
    if pods.is_empty() {
        return fail(format!("unable to calculate ready pods: {NO_PODS}"));
    }
    Ok(pods
        .iter()
        .filter(|p| p.phase == PodPhase::Running && p.ready == Some(true))
        .count() as i64)
}

/// `getUsageRatioReplicaCount`: Object and External `Value` targets.
pub fn usage_ratio_replicas(
    ctx: &CalcContext<'_>,
    current: i32,
    usage_milli: i64,
    target_milli: i64,
) -> Result<i32, CalcError> {
    let ratio = usage_milli as f64 / target_milli as f64;
    if current == 0 {
        // Scale-from-zero path: no tolerance, pods not consulted.
        return Ok(ceil_i32(ratio));
    }
    if ctx.tolerances.is_within(ratio) {
        return Ok(current);
    }
    let f = ratio * ready_pod_count(ctx.pods)? as f64;
    Ok(if f > f64::from(i32::MAX) {
        i32::MAX
    } else {
        ceil_i32(f)
    })
}

/// `Get{Object,External}PerPodMetricReplicas`: `AverageValue` targets, divided by the
/// scale's status replicas. Returns (replicas, reported average per pod).
pub fn per_pod_replicas(
    tolerances: Tolerances,
    status_replicas: i32,
    usage_milli: i64,
    target_milli: i64,
) -> (i32, i64) {
    let ratio = usage_milli as f64 / (target_milli as f64 * f64::from(status_replicas));
    let mut replicas = status_replicas;
    if !tolerances.is_within(ratio) {
        let r = (usage_milli as f64 / target_milli as f64).ceil();
        replicas = if r > f64::from(i32::MAX) {
            i32::MAX
        } else {
            ceil_i32(r)
        };
    }
    let average = if usage_milli == i64::MAX {
        i64::MAX
    } else {
        let a = (usage_milli as f64 / f64::from(status_replicas)).ceil();
        if a.is_nan() {
            0
        } else {
            a.clamp(i64::MIN as f64, i64::MAX as f64) as i64
        }
    };
    (replicas, average)
}

/// Sum of External metric items, saturating at `i64::MAX` like upstream.
pub fn external_sum(values: &[Quantity]) -> i64 {
    let mut s: i64 = 0;
    for v in values {
        let m = v.milli_value();
        if m > 0 && s > i64::MAX - m {
            return i64::MAX;
        }
        s = s.saturating_add(m);
    }
    s
}
