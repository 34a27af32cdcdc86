//! The HorizontalPodAutoscaler controller of the live control plane (local mode).
//!
//! Every sync period: [`State::hpa_requests`] lists the metric values each HPA needs,
//! a source answers them (the built-in [`MetricsStore`] under the state lock, or
//! Prometheus through `crate::prometheus` without it), and [`State::hpa_apply`] runs
//! `coscale_core::hpa::decide` per HPA and writes the target's `spec.replicas` exactly
//! as a user edit of the manifest would (the scale subresource):
//!
//! - Model: `spec.replicas` = the manifest's replicas; `status.replicas` = available +
//!   unavailable replicas of the latest version; the selector matches no server replica.
//! - Server: `spec.replicas` = the manifest's replicas; `status.replicas` = ready
//!   replicas; the selector matches them (pods `SERVER-INDEX` for Pods metrics).
//!
//! HPA objects are durable (store table `hpas`); the per-HPA history ([`HpaState`]) is
//! in memory, like upstream.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use coscale_core::hpa::api::{MetricSourceType, MetricTargetType};
use coscale_core::hpa::{
    decide, Condition, ControllerConfig, DecisionInput, HpaState, MetricInput, PodInfo, Timestamp,
};
use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::quantity::Quantity;
use coscale_core::resources::{Hpa, Resource};
use serde::{Deserialize, Serialize};

use crate::metrics_store::{MetricsStore, Scope};
use crate::state::{Persist, ReplicaModelState, State};

/// How many decisions `describe hpa` shows.
const DECISIONS_KEPT: usize = 10;

/// Settings of the HPA controller (`coscale up` flags).
#[derive(Debug, Clone)]
pub struct HpaConfig {
    /// `--horizontal-pod-autoscaler-sync-period` (15 s).
    pub sync_period: Duration,
    /// Rate window of the built-in metrics (2 min, like the adapter rule of the docs).
    pub metrics_window: Duration,
    /// kube-controller-manager flags (tolerance, downscale stabilization, …).
    pub controller: ControllerConfig,
    /// Metrics source: Prometheus (adapter rules) when set, else built in.
    pub prometheus: Option<crate::prometheus::PrometheusSource>,
}

impl Default for HpaConfig {
    fn default() -> Self {
        Self {
            sync_period: Duration::from_secs(15),
            metrics_window: Duration::from_secs(120),
            controller: ControllerConfig::default(),
            prometheus: None,
        }
    }
}

/// A stored HPA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HpaRecord {
    pub hpa: Hpa,
    pub created_unix_millis: u64,
}

impl HpaRecord {
    pub fn name(&self) -> &str {
        &self.hpa.meta.name
    }

    pub fn namespace(&self) -> String {
        self.hpa
            .meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned())
    }

    /// `Model/NAME` or `Server/NAME`.
    pub fn target_key(&self) -> String {
        let t = &self.hpa.hpa.spec.scale_target_ref;
        format!("{}/{}", t.kind, t.name)
    }
}

/// What a metric value is about (the custom metrics API's described object).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Described {
    Model(String),
    Server(String),
    /// A server replica, `SERVER-INDEX`.
    Pod(String),
    /// Every model of the namespace (External metrics, namespace metrics).
    Namespace,
}

/// One value an HPA needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricRequest {
    pub metric: String,
    pub namespace: String,
    pub described: Described,
    pub selector: BTreeMap<String, String>,
}

/// The answers of a metrics source.
pub type MetricValues = BTreeMap<MetricRequest, Result<f64, String>>;

/// One decision, for `describe hpa`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionLog {
    pub unix_millis: u64,
    pub current_replicas: i32,
    pub desired_replicas: i32,
    pub scaled: bool,
    pub reason: String,
    /// `name=value` per metric (or the error).
    pub metrics: Vec<String>,
}

/// What `coscale get/describe hpa` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaStatus {
    pub name: String,
    pub namespace: String,
    /// `Model/irisa0`.
    pub reference: String,
    /// `current/target` per metric, like kubectl (`7500m/3 (avg)`).
    pub targets: Vec<String>,
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// The target's `status.replicas` at the last sync.
    pub current_replicas: i32,
    pub desired_replicas: i32,
    pub created_unix_millis: u64,
    pub last_scale_unix_millis: Option<u64>,
    pub conditions: Vec<Condition>,
    pub decisions: Vec<DecisionLog>,
    pub warnings: Vec<String>,
    pub spec: serde_json::Value,
}

#[derive(Debug, Default)]
struct Runtime {
    state: HpaState,
    current_replicas: i32,
    desired_replicas: i32,
    targets: Vec<String>,
    conditions: Vec<Condition>,
    decisions: VecDeque<DecisionLog>,
    last_scale_unix_millis: Option<u64>,
}

/// The controller's part of the state.
#[derive(Debug, Default)]
pub struct HpaMemory {
    pub records: BTreeMap<String, HpaRecord>,
    runtime: BTreeMap<String, Runtime>,
    /// The built-in metrics source.
    pub metrics: MetricsStore,
}

pub(crate) fn pod_name(server: &ServerName, replica: ReplicaIndex) -> String {
    format!("{server}-{}", replica.0)
}

pub(crate) fn quantity(v: f64) -> Quantity {
    let milli = (v * 1000.0).round();
    Quantity::from_milli(milli.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
}

impl State {
    /// Loads the stored HPAs (at start).
    pub fn load_hpas(&mut self, records: Vec<HpaRecord>) {
        for r in records {
            self.hpa.records.insert(r.name().to_owned(), r);
        }
        self.refresh_hpa_targets();
    }

    fn refresh_hpa_targets(&mut self) {
        self.autoscale.hpa_targets = self.hpa.records.values().map(|r| r.target_key()).collect();
    }

    /// Warnings about HPAs for an object about to be applied: an HPA whose target does
    /// not exist or also autoscales natively, a Model with min/max that an HPA targets.
    pub fn hpa_warnings(&self, resource: &Resource) -> Vec<String> {
        match resource {
            Resource::Hpa(h) => self.hpa_target_warnings(h),
            Resource::Model(m)
                if (m.scaling.min_replicas > 0 || m.scaling.max_replicas.is_some())
                    && self
                        .autoscale
                        .hpa_targets
                        .contains(&format!("Model/{}", m.name)) =>
            {
                vec![format!(
                    "an HorizontalPodAutoscaler scales Model {:?}: its minReplicas/maxReplicas are ignored (native autoscaling is off while the HPA exists)",
                    m.name.as_str()
                )]
            }
            _ => Vec::new(),
        }
    }

    fn hpa_target_warnings(&self, hpa: &Hpa) -> Vec<String> {
        let t = &hpa.hpa.spec.scale_target_ref;
        let mut out = Vec::new();
        let exists = match t.kind.as_str() {
            "Model" => {
                if let Some(m) = self.models.get(t.name.as_str()) {
                    let s = &m.model.scaling;
                    if s.min_replicas > 0 || s.max_replicas.is_some() {
                        out.push(format!(
                            "Model {:?} also sets minReplicas/maxReplicas: its native autoscaling is off while this HPA targets it; remove them to avoid surprises when the HPA is deleted",
                            t.name
                        ));
                    }
                }
                self.models.contains_key(t.name.as_str())
            }
            _ => self.servers.contains_key(t.name.as_str()),
        };
        if !exists {
            out.push(format!(
                "{} {:?} does not exist yet: the HPA waits for it",
                t.kind, t.name
            ));
        }
        out
    }

    /// Applies an HPA; returns the action and the record to persist.
    pub fn apply_hpa(&mut self, hpa: Hpa, now: u64) -> (&'static str, Option<Persist>) {
        let name = hpa.meta.name.clone();
        let action = match self.hpa.records.get_mut(&name) {
            Some(rec) if rec.hpa == hpa => return ("unchanged", None),
            Some(rec) => {
                rec.hpa = hpa;
                "configured"
            }
            None => {
                self.hpa.records.insert(
                    name.clone(),
                    HpaRecord {
                        hpa,
                        created_unix_millis: now,
                    },
                );
                "created"
            }
        };
        self.refresh_hpa_targets();
        let rec = self.hpa.records.get(&name).cloned();
        (action, rec.map(Persist::PutHpa))
    }

    pub fn delete_hpa(&mut self, name: &str) -> Option<Persist> {
        self.hpa.records.remove(name)?;
        self.hpa.runtime.remove(name);
        self.refresh_hpa_targets();
        Some(Persist::DeleteHpa(name.to_owned()))
    }

    /// Whether an HPA of the parsed resources' kind and name is unchanged (dry run).
    pub fn hpa_unchanged(&self, hpa: &Hpa) -> Option<bool> {
        self.hpa.records.get(&hpa.meta.name).map(|r| r.hpa == *hpa)
    }

    fn ready_server_replicas(&self, server: &str) -> Vec<ReplicaIndex> {
        let desired = self.servers.get(server).map(|r| r.replicas()).unwrap_or(0);
        self.replicas
            .iter()
            .filter(|((s, idx), e)| {
                s.as_str() == server
                    && !e.draining
                    && idx.0 < desired
                    && e.info.runtime_error.is_empty()
            })
            .map(|((_, idx), _)| *idx)
            .collect()
    }

    /// The metric values every HPA needs this round.
    pub fn hpa_requests(&self) -> Vec<MetricRequest> {
        let mut out = Vec::new();
        for rec in self.hpa.records.values() {
            for spec in &rec.hpa.hpa.spec.metrics {
                out.extend(self.requests_of(rec, spec));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn requests_of(
        &self,
        rec: &HpaRecord,
        spec: &coscale_core::hpa::api::MetricSpec,
    ) -> Vec<MetricRequest> {
        let namespace = rec.namespace();
        let make = |metric: &coscale_core::hpa::api::MetricIdentifier, described| MetricRequest {
            metric: metric.name.clone(),
            namespace: namespace.clone(),
            described,
            selector: metric
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
        };
        match (spec.type_, &spec.object, &spec.pods, &spec.external) {
            (MetricSourceType::Object, Some(o), _, _) => {
                let d = &o.described_object;
                let described = match d.kind.as_str() {
                    "Model" => Described::Model(d.name.clone()),
                    "Server" => Described::Server(d.name.clone()),
                    "Pod" => Described::Pod(d.name.clone()),
                    "Namespace" => Described::Namespace,
                    _ => return Vec::new(),
                };
                vec![make(&o.metric, described)]
            }
            (MetricSourceType::Pods, _, Some(p), _) => {
                let target = &rec.hpa.hpa.spec.scale_target_ref;
                if target.kind != "Server" {
                    return Vec::new();
                }
                let server = ServerName::new(target.name.clone());
                self.ready_server_replicas(&target.name)
                    .into_iter()
                    .map(|idx| make(&p.metric, Described::Pod(pod_name(&server, idx))))
                    .collect()
            }
            (MetricSourceType::External, _, _, Some(e)) => {
                vec![make(&e.metric, Described::Namespace)]
            }
            _ => Vec::new(),
        }
    }

    /// Answers requests from the built-in metrics (rates over `window`).
    pub fn builtin_metric(
        &self,
        req: &MetricRequest,
        window: Duration,
        now: u64,
    ) -> Result<f64, String> {
        let scope = match &req.described {
            Described::Model(m) => {
                if !self.models.contains_key(m.as_str()) {
                    return Err(format!("Model {m:?} not found"));
                }
                Scope::Model(ModelName::new(m.clone()))
            }
            Described::Server(s) => Scope::Server(ServerName::new(s.clone())),
            Described::Pod(p) => {
                let (server, idx) = p
                    .rsplit_once('-')
                    .and_then(|(s, i)| Some((s, i.parse::<u32>().ok()?)))
                    .ok_or_else(|| format!("pod {p:?} is not SERVER-INDEX"))?;
                Scope::Replica(ServerName::new(server), ReplicaIndex(idx))
            }
            Described::Namespace => Scope::Models(
                self.models
                    .values()
                    .filter(|r| {
                        r.model
                            .meta
                            .namespace
                            .as_deref()
                            .is_none_or(|ns| ns == req.namespace)
                    })
                    .map(|r| r.model.name.clone())
                    .collect(),
            ),
        };
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.hpa
            .metrics
            .query(&req.metric, &scope, &req.selector, window, now)
            .map_err(|e| e.to_string())
    }

    /// Answers every request from the built-in metrics.
    pub fn builtin_metric_values(
        &self,
        requests: &[MetricRequest],
        window: Duration,
        now: u64,
    ) -> MetricValues {
        requests
            .iter()
            .map(|r| (r.clone(), self.builtin_metric(r, window, now)))
            .collect()
    }

    /// (spec.replicas, status.replicas, pods) of the scale subresource of a target.
    fn scale_of(&self, kind: &str, name: &str) -> Option<(i32, i32, Vec<PodInfo>)> {
        let to_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        match kind {
            "Model" => {
                let rec = self.models.get(name).filter(|r| !r.deleted)?;
                let placed = self
                    .replicas
                    .values()
                    .filter(|e| {
                        e.models
                            .get(&(rec.model.name.clone(), rec.version))
                            .is_some_and(|m| m.state != ReplicaModelState::Unloading)
                    })
                    .count();
                let placed = u32::try_from(placed).unwrap_or(u32::MAX);
                Some((to_i32(rec.replicas()), to_i32(placed), Vec::new()))
            }
            "Server" => {
                let rec = self.servers.get(name)?;
                let ready = self.ready_server_replicas(name);
                let pods = ready
                    .iter()
                    .map(|idx| PodInfo::running_ready(&pod_name(&rec.server.name, *idx)))
                    .collect::<Vec<_>>();
                Some((
                    to_i32(rec.replicas()),
                    to_i32(u32::try_from(ready.len()).unwrap_or(u32::MAX)),
                    pods,
                ))
            }
            _ => None,
        }
    }

    /// One HPA round with the fetched values: decides per HPA and writes the targets'
    /// replica counts. Returns what to persist.
    pub fn hpa_apply(
        &mut self,
        values: &MetricValues,
        cfg: &HpaConfig,
        now: u64,
        clock: Timestamp,
    ) -> Vec<Persist> {
        let mut changes = Vec::new();
        let names: Vec<String> = self.hpa.records.keys().cloned().collect();
        for name in names {
            let Some(rec) = self.hpa.records.get(&name).cloned() else {
                continue;
            };
            let spec = &rec.hpa.hpa.spec;
            let target = &spec.scale_target_ref;
            let Some((spec_replicas, status_replicas, pods)) =
                self.scale_of(&target.kind, &target.name)
            else {
                let rt = self.hpa.runtime.entry(name.clone()).or_default();
                rt.conditions = vec![Condition {
                    type_: coscale_core::hpa::ConditionType::AbleToScale,
                    status: false,
                    reason: "FailedGetScale".to_owned(),
                    message: format!("{} {:?} not found", target.kind, target.name),
                }];
                continue;
            };
            let metrics: Vec<MetricInput> = spec
                .metrics
                .iter()
                .map(|m| self.metric_input(&rec, m, values, clock, cfg))
                .collect();
            let input = DecisionInput {
                spec_replicas,
                status_replicas,
                metrics,
                pods,
            };
            let rt = self.hpa.runtime.entry(name.clone()).or_default();
            let state = std::mem::take(&mut rt.state);
            let (decision, state) = decide(&rec.hpa.hpa, &input, state, &cfg.controller, clock);
            rt.state = state;
            rt.current_replicas = status_replicas;
            rt.desired_replicas = decision.desired_replicas;
            rt.conditions = decision.conditions.clone();
            rt.targets = spec
                .metrics
                .iter()
                .zip(&decision.metrics)
                .map(|(m, o)| target_text(m, o.current.as_ref()))
                .collect();
            let metric_notes: Vec<String> = decision
                .metrics
                .iter()
                .map(|o| match (&o.current, &o.error) {
                    (_, Some(e)) => format!("{}: {e}", o.name),
                    (Some(c), None) => format!("{}={c}", o.name),
                    (None, None) => format!("{}=<unknown>", o.name),
                })
                .collect();
            if rt.decisions.len() >= DECISIONS_KEPT {
                rt.decisions.pop_front();
            }
            rt.decisions.push_back(DecisionLog {
                unix_millis: now,
                current_replicas: decision.current_replicas,
                desired_replicas: decision.desired_replicas,
                scaled: decision.scaled,
                reason: decision
                    .rescale_reason
                    .clone()
                    .unwrap_or_else(|| decision.reason.clone()),
                metrics: metric_notes,
            });
            if decision.scaled {
                rt.last_scale_unix_millis = Some(now);
                let desired = u32::try_from(decision.desired_replicas.max(0)).unwrap_or(0);
                changes.extend(self.write_scale(&target.kind, &target.name, desired, &name, now));
            }
        }
        changes
    }

    fn metric_input(
        &self,
        rec: &HpaRecord,
        spec: &coscale_core::hpa::api::MetricSpec,
        values: &MetricValues,
        clock: Timestamp,
        cfg: &HpaConfig,
    ) -> MetricInput {
        let requests = self.requests_of(rec, spec);
        if requests.is_empty() {
            return MetricInput::Error(format!(
                "{} metrics of this kind are not available in local mode (use Object, Pods on a Server, or External)",
                spec.type_
            ));
        }
        let lookup = |r: &MetricRequest| -> Result<f64, String> {
            values
                .get(r)
                .cloned()
                .unwrap_or_else(|| Err("not fetched".to_owned()))
        };
        match spec.type_ {
            MetricSourceType::Pods => {
                let mut out = BTreeMap::new();
                for r in &requests {
                    if let (Ok(v), Described::Pod(p)) = (lookup(r), &r.described) {
                        out.insert(p.clone(), quantity(v));
                    }
                }
                MetricInput::PodValues {
                    values: out,
                    timestamp: clock,
                    window: cfg.metrics_window,
                }
            }
            _ => match requests.first().map(lookup) {
                Some(Ok(v)) => MetricInput::Value(quantity(v)),
                Some(Err(e)) => MetricInput::Error(e),
                None => MetricInput::Error("no value".to_owned()),
            },
        }
    }

    /// Writes `spec.replicas` of the target like a manifest edit.
    fn write_scale(
        &mut self,
        kind: &str,
        name: &str,
        replicas: u32,
        hpa: &str,
        now: u64,
    ) -> Option<Persist> {
        let change = match kind {
            "Model" => {
                let mut model = self.models.get(name)?.model.clone();
                model.scaling.replicas = replicas;
                self.apply_model(model, now).1
            }
            _ => {
                let mut server = self.servers.get(name)?.server.clone();
                server.scaling.replicas = replicas;
                self.apply_server(server, now).1
            }
        };
        let key = format!("{}/{name}", kind.to_lowercase());
        self.event(
            key,
            now,
            false,
            "HPAScaled",
            format!("HorizontalPodAutoscaler {hpa} set replicas to {replicas}"),
        );
        change
    }

    pub fn hpa_status(&self, name: &str) -> Option<HpaStatus> {
        let rec = self.hpa.records.get(name)?;
        let rt = self.hpa.runtime.get(name);
        let spec = &rec.hpa.hpa.spec;
        Some(HpaStatus {
            name: name.to_owned(),
            namespace: rec.namespace(),
            reference: rec.target_key(),
            targets: rt
                .map(|r| r.targets.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| spec.metrics.iter().map(|m| target_text(m, None)).collect()),
            min_replicas: spec.min_replicas,
            max_replicas: spec.max_replicas,
            current_replicas: rt.map(|r| r.current_replicas).unwrap_or(0),
            desired_replicas: rt.map(|r| r.desired_replicas).unwrap_or(0),
            created_unix_millis: rec.created_unix_millis,
            last_scale_unix_millis: rt.and_then(|r| r.last_scale_unix_millis),
            conditions: rt.map(|r| r.conditions.clone()).unwrap_or_default(),
            decisions: rt
                .map(|r| r.decisions.iter().cloned().collect())
                .unwrap_or_default(),
            warnings: self.hpa_target_warnings(&rec.hpa),
            spec: serde_json::to_value(spec).unwrap_or_default(),
        })
    }

    pub fn hpa_statuses(&self) -> Vec<HpaStatus> {
        self.hpa
            .records
            .keys()
            .filter_map(|n| self.hpa_status(n))
            .collect()
    }

    /// Feeds the built-in metrics store from one Stats push (called by `ingest_stats`).
    pub(crate) fn record_metrics(
        &mut self,
        server: &ServerName,
        replica: ReplicaIndex,
        stats: &coscale_api::pb::agent::Stats,
    ) {
        for m in &stats.models {
            let Some(r) = m.model.as_ref() else { continue };
            self.hpa.metrics.push(
                crate::metrics_store::SeriesKey {
                    server: server.clone(),
                    replica,
                    model: ModelName::new(r.name.clone()),
                    version: r.version,
                },
                crate::metrics_store::Sample {
                    unix_millis: stats.unix_millis,
                    requests_total: m.requests_total,
                    rest_total: m.rest_requests_total,
                    grpc_total: m.grpc_requests_total,
                    failed_total: m.requests_failed_total,
                    latency_seconds_total: m.latency_seconds_total,
                    in_flight: m.in_flight,
                },
            );
        }
    }
}

/// kubectl's TARGETS cell: `current/target`, `(avg)` for AverageValue of Object/External.
fn target_text(
    spec: &coscale_core::hpa::api::MetricSpec,
    current: Option<&coscale_core::hpa::controller::CurrentMetric>,
) -> String {
    let target = match spec.type_ {
        MetricSourceType::Object => spec.object.as_ref().map(|o| &o.target),
        MetricSourceType::Pods => spec.pods.as_ref().map(|p| &p.target),
        MetricSourceType::External => spec.external.as_ref().map(|e| &e.target),
        MetricSourceType::Resource => spec.resource.as_ref().map(|r| &r.target),
        MetricSourceType::ContainerResource => spec.container_resource.as_ref().map(|r| &r.target),
    };
    let Some(t) = target else {
        return "<unknown>".to_owned();
    };
    let cur = current
        .map(|c| c.to_string())
        .unwrap_or_else(|| "<unknown>".to_owned());
    match (t.type_, t.value, t.average_value, t.average_utilization) {
        (MetricTargetType::Value, Some(v), _, _) => format!("{cur}/{v}"),
        (MetricTargetType::AverageValue, _, Some(v), _)
            if matches!(
                spec.type_,
                MetricSourceType::Object | MetricSourceType::External
            ) =>
        {
            format!("{cur}/{v} (avg)")
        }
        (MetricTargetType::AverageValue, _, Some(v), _) => format!("{cur}/{v}"),
        (MetricTargetType::Utilization, _, _, Some(u)) => format!("{cur}/{u}%"),
        _ => format!("{cur}/<unknown>"),
    }
}

/// Which source answers metric requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The one the control plane was started with.
    Configured,
    Builtin,
    Prometheus,
}

impl crate::service::ControlPlane {
    /// Answers metric requests from a source (Prometheus queries run without the lock).
    pub async fn metric_values(
        &self,
        requests: &[MetricRequest],
        source: Source,
    ) -> Result<MetricValues, String> {
        let cfg = self.config();
        let prometheus = match (source, &cfg.hpa.prometheus) {
            (Source::Builtin, _) | (Source::Configured, None) => None,
            (_, Some(p)) => Some(p.clone()),
            (Source::Prometheus, None) => {
                return Err("no Prometheus configured (coscale up --prometheus-url)".to_owned())
            }
        };
        Ok(match prometheus {
            Some(p) => p.values(requests).await,
            None => self.state().builtin_metric_values(
                requests,
                cfg.hpa.metrics_window,
                crate::service::now_millis(),
            ),
        })
    }

    /// One sync period of every HPA: fetch metrics, decide, write replica counts.
    pub async fn hpa_round(&self) {
        let requests = {
            let mut st = self.state();
            let keep_since = crate::service::now_millis().saturating_sub(600_000);
            st.hpa.metrics.expire(keep_since);
            if st.hpa.records.is_empty() {
                return;
            }
            st.hpa_requests()
        };
        let values = match self.metric_values(&requests, Source::Configured).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("HPA metrics: {e}");
                return;
            }
        };
        let now = crate::service::now_millis();
        let clock = Timestamp::from_millis(i64::try_from(now).unwrap_or(i64::MAX));
        let changes = self
            .state()
            .hpa_apply(&values, &self.config().hpa, now, clock);
        if let Err(e) = self.commit(&changes) {
            tracing::warn!("could not persist HPA decisions: {e}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use coscale_core::resources::parse_manifests;

    fn apply(st: &mut State, yaml: &str) -> Vec<Persist> {
        let mut out = Vec::new();
        for r in parse_manifests("t.yaml", yaml).unwrap() {
            out.extend(match r {
                Resource::Model(m) => st.apply_model(m, 1).1,
                Resource::Server(s) => st.apply_server(s, 1).1,
                Resource::ServerConfig(c) => st.apply_config(c, 1).1,
                Resource::Hpa(h) => st.apply_hpa(*h, 1).1,
            });
        }
        out
    }

    const MODEL: &str = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: irisa0}\nspec: {storageUri: /m, replicas: 1}\n";

    fn hpa(kind: &str, name: &str) -> String {
        format!(
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: h, namespace: seldon-mesh}}\nspec:\n  scaleTargetRef: {{apiVersion: mlops.seldon.io/v1alpha1, kind: {kind}, name: {name}}}\n  maxReplicas: 3\n  metrics:\n  - type: Object\n    object:\n      metric: {{name: infer_rps}}\n      describedObject: {{apiVersion: mlops.seldon.io/v1alpha1, kind: Model, name: irisa0}}\n      target: {{type: AverageValue, averageValue: 3}}\n"
        )
    }

    fn values(st: &State, v: Result<f64, String>) -> MetricValues {
        st.hpa_requests()
            .into_iter()
            .map(|r| (r, v.clone()))
            .collect()
    }

    #[test]
    fn an_hpa_writes_the_model_replicas_like_a_manifest_edit_and_marks_its_target() {
        let mut st = State::default();
        apply(&mut st, MODEL);
        let persisted = apply(&mut st, &hpa("Model", "irisa0"));
        assert!(matches!(persisted.as_slice(), [Persist::PutHpa(_)]));
        assert!(st.autoscale.hpa_targets.contains("Model/irisa0"));
        let req = st.hpa_requests();
        assert_eq!(req.len(), 1);
        assert_eq!(req[0].described, Described::Model("irisa0".into()));
        assert_eq!(req[0].namespace, "seldon-mesh");
        // AverageValue 3, value 7.5 over status.replicas → ceil(7.5 / 3) = 3 replicas
        let vals = values(&st, Ok(7.5));
        let changes = st.hpa_apply(&vals, &HpaConfig::default(), 10, Timestamp::from_secs(10));
        let rec = st.models.get("irisa0").unwrap();
        assert_eq!(rec.model.scaling.replicas, 3);
        assert_eq!(rec.autoscaled_replicas, None);
        assert!(
            matches!(changes.as_slice(), [Persist::PutModel(r)] if r.model.scaling.replicas == 3)
        );
        let status = st.hpa_status("h").unwrap();
        assert_eq!(status.reference, "Model/irisa0");
        assert!(
            status.targets[0].ends_with("/3 (avg)"),
            "{:?}",
            status.targets
        );
        assert!(status.decisions[0].scaled);
    }

    #[test]
    fn a_missing_target_or_metric_does_not_scale_and_says_why() {
        let mut st = State::default();
        apply(&mut st, &hpa("Server", "nowhere"));
        let vals = values(&st, Ok(7.5));
        assert!(st
            .hpa_apply(&vals, &HpaConfig::default(), 10, Timestamp::from_secs(10))
            .is_empty());
        let status = st.hpa_status("h").unwrap();
        assert_eq!(status.conditions[0].reason, "FailedGetScale");
        assert!(status.warnings[0].contains("does not exist"));

        let mut st = State::default();
        apply(&mut st, MODEL);
        apply(&mut st, &hpa("Model", "irisa0"));
        let vals = values(&st, Err("no samples".into()));
        assert!(st
            .hpa_apply(&vals, &HpaConfig::default(), 10, Timestamp::from_secs(10))
            .is_empty());
        assert_eq!(st.models.get("irisa0").unwrap().model.scaling.replicas, 1);
        let status = st.hpa_status("h").unwrap();
        assert!(
            status.decisions[0].metrics[0].contains("no samples"),
            "{status:?}"
        );
    }

    #[test]
    fn a_model_with_min_and_max_that_an_hpa_targets_is_applied_with_a_warning() {
        let mut st = State::default();
        apply(&mut st, MODEL);
        apply(&mut st, &hpa("Model", "irisa0"));
        let model = MODEL.replace(
            "replicas: 1}",
            "replicas: 1, minReplicas: 1, maxReplicas: 4}",
        );
        let parsed = parse_manifests("m.yaml", &model).unwrap();
        let warnings = st.hpa_warnings(&parsed[0]);
        assert!(
            warnings[0].contains("minReplicas/maxReplicas are ignored"),
            "{warnings:?}"
        );
        let plain = parse_manifests("m.yaml", MODEL).unwrap();
        assert!(st.hpa_warnings(&plain[0]).is_empty());
    }

    #[test]
    fn deleting_an_hpa_hands_the_target_back_to_native_autoscaling() {
        let mut st = State::default();
        apply(&mut st, MODEL);
        apply(&mut st, &hpa("Model", "irisa0"));
        assert!(matches!(st.delete_hpa("h"), Some(Persist::DeleteHpa(n)) if n == "h"));
        assert!(st.autoscale.hpa_targets.is_empty());
        assert!(st.delete_hpa("h").is_none());
    }

    #[test]
    fn builtin_values_come_from_the_pushed_stats() {
        let mut st = State::default();
        apply(&mut st, MODEL);
        apply(&mut st, &hpa("Model", "irisa0"));
        let server = ServerName::new("s");
        for i in 0..=10u64 {
            let stats = coscale_api::pb::agent::Stats {
                unix_millis: i * 1000,
                models: vec![coscale_api::pb::agent::ModelStats {
                    model: Some(coscale_api::pb::agent::ModelRef {
                        name: "irisa0".into(),
                        version: 1,
                    }),
                    requests_total: i * 4,
                    rest_requests_total: i * 4,
                    ..Default::default()
                }],
            };
            st.record_metrics(&server, ReplicaIndex(0), &stats);
        }
        let req = st.hpa_requests();
        let v = st
            .builtin_metric(&req[0], Duration::from_secs(10), 10_000)
            .unwrap();
        assert!((v - 4.0).abs() < 1e-9, "{v}");
        let pod = MetricRequest {
            described: Described::Pod("s-0".into()),
            ..req[0].clone()
        };
        assert!(
            (st.builtin_metric(&pod, Duration::from_secs(10), 10_000)
                .unwrap()
                - 4.0)
                .abs()
                < 1e-9
        );
    }
}
