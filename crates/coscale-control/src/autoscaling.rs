//! Native coordinated autoscaling in the live control plane: aggregates the agents'
//! stats per model, runs `coscale_core::autoscale::decide_model` for every Model that
//! sets `minReplicas`/`maxReplicas`, and `plan_server` for every Server that does (and
//! that no HPA targets). Chosen counts are written to the records (durable) and
//! explained as events and counters.

use std::collections::{BTreeMap, BTreeSet};

use coscale_api::pb::agent::Stats;
use coscale_core::autoscale::{
    decide_model, plan_server, ModelObservation, ModelPolicyConfig, ModelPolicyState,
    ServerPlanConfig, ServerPlanInput, ServerPlanState,
};
use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::placement::ModelDemand;

use crate::state::{LiveStats, Persist, ReplicaModelState, State};

/// Global autoscaling settings (flags / environment; Models override by annotation).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    pub model: ModelPolicyConfig,
    pub server: ServerPlanConfig,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            model: ModelPolicyConfig::proportional(),
            server: ServerPlanConfig::default(),
        }
    }
}

/// Per-object autoscaler memory (not durable: windows refill in seconds).
#[derive(Debug, Default)]
pub struct Memory {
    models: BTreeMap<ModelName, (ModelPolicyState, u64)>,
    servers: BTreeMap<ServerName, ServerPlanState>,
    /// Servers that lost a model replica since the last server round.
    pub(crate) replica_removed: BTreeSet<ServerName>,
    /// `coscale_autoscaler_decisions_total{kind, direction, reason}`.
    pub decisions: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// Objects whose replicas an HPA drives (`Model/NAME`, `Server/NAME`): native
    /// autoscaling leaves them alone.
    pub hpa_targets: BTreeSet<String>,
}

impl State {
    /// Records the stats a replica pushed.
    pub fn ingest_stats(
        &mut self,
        server: &ServerName,
        replica: ReplicaIndex,
        session: u64,
        stats: &Stats,
    ) {
        let key = (server.clone(), replica);
        if self.replicas.get(&key).map(|r| r.session) != Some(session) {
            return;
        }
        let per_model = stats
            .models
            .iter()
            .filter_map(|m| {
                let r = m.model.as_ref()?;
                Some((
                    (ModelName::new(r.name.clone()), r.version),
                    LiveStats {
                        in_flight: m.in_flight,
                        last_used_unix_millis: m.last_used_unix_millis,
                        requests_total: m.requests_total,
                        failed_total: m.requests_failed_total,
                        latency_seconds_total: m.latency_seconds_total,
                        rest_total: m.rest_requests_total,
                        grpc_total: m.grpc_requests_total,
                        unix_millis: stats.unix_millis,
                    },
                ))
            })
            .collect();
        self.live.insert(key, per_model);
        self.record_metrics(server, replica, stats);
    }

    /// In-flight requests (sum) and newest last use of a model version over replicas.
    pub fn model_load(&self, name: &ModelName, version: u32) -> (u32, Option<u64>) {
        let mut in_flight = 0u32;
        let mut last = None;
        for per in self.live.values() {
            if let Some(s) = per.get(&(name.clone(), version)) {
                in_flight = in_flight.saturating_add(s.in_flight);
                if s.last_used_unix_millis > 0 {
                    last = last.max(Some(s.last_used_unix_millis));
                }
            }
        }
        (in_flight, last)
    }

    fn count_decision(&mut self, kind: &'static str, dir: &'static str, reason: &'static str) {
        *self
            .autoscale
            .decisions
            .entry((kind, dir, reason))
            .or_insert(0) += 1;
    }

    /// One autoscaling round at `now`; returns the records to persist.
    pub fn autoscale(&mut self, now: u64, cfg: &AutoscaleConfig) -> Vec<Persist> {
        let mut changes = self.autoscale_models(now, cfg);
        changes.extend(self.autoscale_servers(now, cfg));
        changes
    }

    fn autoscale_models(&mut self, now: u64, cfg: &AutoscaleConfig) -> Vec<Persist> {
        let mut changes = Vec::new();
        let names: Vec<ModelName> = self
            .models
            .values()
            .filter(|r| !r.deleted && r.model.scaling.autoscaling_enabled())
            .filter(|r| {
                !self
                    .autoscale
                    .hpa_targets
                    .contains(&format!("Model/{}", r.model.name))
            })
            .map(|r| r.model.name.clone())
            .collect();
        self.autoscale.models.retain(|n, _| names.contains(n));
        for name in names {
            let Some(annotations) = self.models.get(&name).map(|r| &r.model.meta.annotations)
            else {
                continue;
            };
            let policy = match cfg.model.with_overrides(annotations) {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!("ignoring autoscaling annotations: {e}");
                    self.event(format!("model/{name}"), now, true, "BadAnnotation", msg);
                    cfg.model.clone()
                }
            };
            let Some(rec) = self.models.get(&name) else {
                continue;
            };
            let due = self
                .autoscale
                .models
                .get(&name)
                .is_none_or(|(_, last)| now.saturating_sub(*last) >= policy.stats_period_ms);
            if !due {
                continue;
            }
            let (in_flight, last_used) = self.model_load(&name, rec.version);
            let obs = ModelObservation {
                now_ms: now,
                in_flight,
                // a model never used counts as used when it was created or changed
                last_used_ms: Some(
                    last_used
                        .unwrap_or(rec.last_change_unix_millis)
                        .max(rec.last_change_unix_millis),
                ),
                replicas: rec.replicas(),
                available: self.count_state(rec, ReplicaModelState::Available),
                min_replicas: rec.model.scaling.min_replicas,
                max_replicas: rec.model.scaling.max_or_unbounded(),
                last_change_ms: rec.last_change_unix_millis,
            };
            let entry = self
                .autoscale
                .models
                .entry(name.clone())
                .or_insert_with(|| (ModelPolicyState::default(), 0));
            entry.1 = now;
            let Some(d) = decide_model(&policy, &mut entry.0, &obs) else {
                continue;
            };
            let Some(rec) = self.models.get_mut(&name) else {
                continue;
            };
            rec.autoscaled_replicas = Some(d.replicas);
            rec.last_change_unix_millis = now;
            changes.push(Persist::PutModel(rec.clone()));
            self.count_decision("model", d.direction.as_str(), d.reason_kind);
            let reason = match d.direction.as_str() {
                "up" => "ScaledUp",
                _ => "ScaledDown",
            };
            self.event(format!("model/{name}"), now, false, reason, d.reason);
        }
        changes
    }

    fn autoscale_servers(&mut self, now: u64, cfg: &AutoscaleConfig) -> Vec<Persist> {
        let mut changes = Vec::new();
        let views = self.server_views();
        let removed = std::mem::take(&mut self.autoscale.replica_removed);
        let names: Vec<ServerName> = self
            .servers
            .values()
            .filter(|r| r.server.scaling.autoscaling_enabled())
            .filter(|r| {
                !self
                    .autoscale
                    .hpa_targets
                    .contains(&format!("Server/{}", r.server.name))
            })
            .map(|r| r.server.name.clone())
            .collect();
        self.autoscale.servers.retain(|n, _| names.contains(n));
        for name in names {
            let Some(view) = views.iter().find(|v| v.name == name) else {
                continue;
            };
            let Some(rec) = self.servers.get(&name) else {
                continue;
            };
            // models that live on or want this server (pinned, placed, or failing here)
            let demands: Vec<ModelDemand> = self
                .models
                .values()
                .filter(|m| !m.deleted && m.replicas() > 0)
                .filter(|m| {
                    m.model.spec.server.as_ref() == Some(&name)
                        || self
                            .decisions
                            .get(&m.model.name)
                            .and_then(|d| d.server.as_ref())
                            == Some(&name)
                })
                .map(|m| self.demand(m))
                .collect();
            let empty: BTreeSet<ReplicaIndex> = self
                .replicas
                .iter()
                .filter(|((s, _), e)| *s == name && e.models.is_empty())
                .map(|((_, i), _)| *i)
                .collect();
            let input = ServerPlanInput {
                server: view,
                current_replicas: rec.replicas(),
                min_replicas: rec.server.scaling.min_replicas,
                max_replicas: rec.server.scaling.max_or_unbounded(),
                models: &demands,
                empty_replicas: empty,
                now_ms: now,
            };
            let state = self.autoscale.servers.entry(name.clone()).or_default();
            let Some(d) = plan_server(&cfg.server, state, &input, removed.contains(&name)) else {
                continue;
            };
            let Some(rec) = self.servers.get_mut(&name) else {
                continue;
            };
            rec.autoscaled_replicas = Some(d.replicas);
            changes.push(Persist::PutServer(rec.clone()));
            self.count_decision("server", d.direction.as_str(), d.reason_kind);
            let reason = match d.direction.as_str() {
                "up" => "ScaledUp",
                _ => "ScaledDown",
            };
            self.event(format!("server/{name}"), now, false, reason, d.reason);
        }
        changes
    }
}
