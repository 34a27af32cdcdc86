//! The control plane's synchronous state: desired objects, connected agents, replica
//! states, and the reconcile step that turns them into agent commands.
//!
//! Everything here is plain data plus methods that take the current time as an
//! argument; the async service around it (`service.rs`) only moves messages in and out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use coscale_api::pb::agent::{control_message, ControlMessage, Load, ModelRef, Unload};
use coscale_api::rest::{
    EventRecord, ModelReplicaStatus, ModelStatus, ServerConfigStatus, ServerReplicaStatus,
    ServerStatus,
};
use coscale_api::routing::{Endpoint, ModelRoute, RoutingTable};
use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::placement::{
    self, CurrentPlacement, Decision, ModelDemand, Outcome, ReplicaView, ServerView,
};
use coscale_core::resources::{Model, Server, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::configs::{self, RuntimeKind};

/// How many events are kept per object.
const EVENTS_PER_OBJECT: usize = 20;

/// A Model as the control plane keeps it (this is what the store persists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub model: Model,
    /// Latest version; a spec change other than replica counts makes the next one.
    pub version: u32,
    /// Deleted by the user; kept until every replica is unloaded.
    pub deleted: bool,
    pub created_unix_millis: u64,
    /// Replica count chosen by an autoscaler; overrides `spec.replicas` until the
    /// user changes the replica counts in the manifest. Durable.
    #[serde(default)]
    pub autoscaled_replicas: Option<u32>,
    /// When the replica count or version last changed (autoscaling stability).
    #[serde(default)]
    pub last_change_unix_millis: u64,
    /// Size of the artifact when it is a local file or folder: the memory estimate of a
    /// Model that sets no `memory`, until a replica reports a measurement.
    #[serde(default)]
    pub artifact_bytes: Option<u64>,
}

impl ModelRecord {
    /// Desired replicas: the autoscaler's choice, else the manifest's.
    pub fn replicas(&self) -> u32 {
        self.autoscaled_replicas
            .unwrap_or(self.model.scaling.replicas)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub server: Server,
    pub created_unix_millis: u64,
    /// Replica count chosen by the server autoscaler (durable); see [`ModelRecord`].
    #[serde(default)]
    pub autoscaled_replicas: Option<u32>,
}

impl ServerRecord {
    /// Desired replicas: the autoscaler's choice, else the manifest's.
    pub fn replicas(&self) -> u32 {
        self.autoscaled_replicas
            .unwrap_or(self.server.scaling.replicas)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfigRecord {
    pub config: ServerConfig,
    pub created_unix_millis: u64,
}

/// State of one model version on one server replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplicaModelState {
    Loading,
    Available,
    LoadFailed,
    Unloading,
}

impl ReplicaModelState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Loading => "Loading",
            Self::Available => "Available",
            Self::LoadFailed => "LoadFailed",
            Self::Unloading => "Unloading",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplicaModel {
    pub state: ReplicaModelState,
    pub reason: String,
    pub memory_bytes: u64,
}

/// What an agent told us when it registered.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub capabilities: Vec<String>,
    pub memory_bytes: u64,
    pub overcommit_percent: u32,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The data plane's Unix socket, REST and gRPC (local replicas), checked at registration.
    pub data_socket: Option<std::path::PathBuf>,
    pub pid: u32,
    pub runtime: String,
    pub runtime_error: String,
}

impl AgentInfo {
    /// Capacity including overcommit.
    fn capacity(&self) -> u64 {
        let oc = u64::from(self.overcommit_percent);
        self.memory_bytes
            .saturating_mul(100u64.saturating_add(oc))
            .checked_div(100)
            .unwrap_or(self.memory_bytes)
    }
}

/// A connected server replica.
#[derive(Debug, Clone)]
pub struct ReplicaEntry {
    pub info: AgentInfo,
    /// Connection id: a stale disconnect of an older session is ignored.
    pub session: u64,
    /// Told to drain (being removed).
    pub draining: bool,
    /// The agent said it is leaving (SIGTERM in a pod), at this time (Unix millis).
    pub leaving_since: Option<u64>,
    /// The agent was sent `Drain` (it stops taking requests and exits).
    pub drain_sent: bool,
    pub models: BTreeMap<(ModelName, u32), ReplicaModel>,
}

/// A command for the agent of one server replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub server: ServerName,
    pub replica: ReplicaIndex,
    pub session: u64,
    pub message: ControlMessage,
}

pub(crate) type ReplicaKey = (ServerName, ReplicaIndex);

/// The whole control-plane state.
#[derive(Debug, Default)]
pub struct State {
    pub models: BTreeMap<ModelName, ModelRecord>,
    pub servers: BTreeMap<ServerName, ServerRecord>,
    pub configs: BTreeMap<String, ServerConfigRecord>,
    pub(crate) replicas: BTreeMap<ReplicaKey, ReplicaEntry>,
    /// Last placement decision per model.
    pub(crate) decisions: BTreeMap<ModelName, Decision>,
    events: BTreeMap<String, VecDeque<EventRecord>>,
    /// Latest data-plane stats each replica pushed, per model version.
    pub(crate) live: BTreeMap<ReplicaKey, BTreeMap<(ModelName, u32), LiveStats>>,
    /// What the autoscalers remember between rounds.
    pub(crate) autoscale: crate::autoscaling::Memory,
    /// HorizontalPodAutoscalers, their histories and the built-in metrics.
    pub(crate) hpa: crate::hpa_controller::HpaMemory,
    /// Replica count each Server's replica set should have now (the provisioner's
    /// `scaleTarget`: lags a scale-down until the leaving replicas are drained).
    scale_targets: BTreeMap<ServerName, u32>,
}

/// The latest stats of one model version on one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LiveStats {
    pub in_flight: u32,
    pub last_used_unix_millis: u64,
    pub requests_total: u64,
    pub failed_total: u64,
    pub latency_seconds_total: f64,
    pub rest_total: u64,
    pub grpc_total: u64,
    pub unix_millis: u64,
}

/// A change the store must persist after a state mutation.
#[derive(Debug, Clone, PartialEq)]
pub enum Persist {
    PutModel(ModelRecord),
    DeleteModel(ModelName),
    PutServer(ServerRecord),
    DeleteServer(ServerName),
    PutConfig(ServerConfigRecord),
    DeleteConfig(String),
    PutHpa(crate::hpa_controller::HpaRecord),
    DeleteHpa(String),
}

fn model_key(name: impl std::fmt::Display) -> String {
    format!("model/{name}")
}
fn server_key(name: impl std::fmt::Display) -> String {
    format!("server/{name}")
}

impl State {
    /// Rebuilds the state from what the store holds.
    pub fn from_records(
        models: Vec<ModelRecord>,
        servers: Vec<ServerRecord>,
        configs: Vec<ServerConfigRecord>,
    ) -> Self {
        Self {
            models: models
                .into_iter()
                .map(|m| (m.model.name.clone(), m))
                .collect(),
            servers: servers
                .into_iter()
                .map(|s| (s.server.name.clone(), s))
                .collect(),
            configs: configs
                .into_iter()
                .map(|c| (c.config.name.clone(), c))
                .collect(),
            ..Self::default()
        }
    }

    pub fn event(&mut self, key: String, now: u64, warning: bool, reason: &str, message: String) {
        let list = self.events.entry(key).or_default();
        if list
            .back()
            .is_some_and(|e| e.reason == reason && e.message == message)
        {
            return;
        }
        if list.len() >= EVENTS_PER_OBJECT {
            list.pop_front();
        }
        list.push_back(EventRecord {
            unix_millis: now,
            kind: if warning { "Warning" } else { "Normal" }.to_owned(),
            reason: reason.to_owned(),
            message,
        });
    }

    fn events_of(&self, key: &str) -> Vec<EventRecord> {
        self.events
            .get(key)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    // ----- desired state -------------------------------------------------------

    /// Applies a Model; returns the action (`created`/`configured`/`unchanged`) and
    /// the record to persist when something changed.
    pub fn apply_model(&mut self, model: Model, now: u64) -> (&'static str, Option<Persist>) {
        let name = model.name.clone();
        match self.models.get_mut(&name) {
            Some(rec) if !rec.deleted && rec.model == model => ("unchanged", None),
            Some(rec) => {
                let new_version = rec.deleted || rec.model.spec != model.spec;
                if new_version {
                    rec.version = rec.version.saturating_add(1);
                }
                if rec.deleted || rec.model.scaling != model.scaling {
                    // the user set replica counts: they win over the autoscaler
                    rec.autoscaled_replicas = None;
                }
                rec.deleted = false;
                rec.model = model;
                rec.last_change_unix_millis = now;
                let rec = rec.clone();
                let msg = if new_version {
                    format!("spec changed: version {} created", rec.version)
                } else {
                    "replica counts changed".to_owned()
                };
                self.event(model_key(&name), now, false, "Updated", msg);
                ("configured", Some(Persist::PutModel(rec)))
            }
            None => {
                let rec = ModelRecord {
                    model,
                    version: 1,
                    deleted: false,
                    created_unix_millis: now,
                    autoscaled_replicas: None,
                    last_change_unix_millis: now,
                    artifact_bytes: None,
                };
                self.models.insert(name.clone(), rec.clone());
                self.event(
                    model_key(&name),
                    now,
                    false,
                    "Created",
                    "version 1 created".to_owned(),
                );
                ("created", Some(Persist::PutModel(rec)))
            }
        }
    }

    /// Records the artifact size of a Model (its memory estimate while `memory` is unset).
    pub fn record_artifact_size(
        &mut self,
        name: &ModelName,
        bytes: Option<u64>,
    ) -> Option<Persist> {
        let rec = self.models.get_mut(name)?;
        if rec.artifact_bytes == bytes {
            return None;
        }
        rec.artifact_bytes = bytes;
        Some(Persist::PutModel(rec.clone()))
    }

    pub fn delete_model(&mut self, name: &str, now: u64) -> Option<Persist> {
        let rec = self.models.get_mut(name).filter(|r| !r.deleted)?;
        rec.deleted = true;
        let rec = rec.clone();
        self.event(
            model_key(name),
            now,
            false,
            "Deleting",
            "unloading every replica".to_owned(),
        );
        Some(Persist::PutModel(rec))
    }

    pub fn apply_server(&mut self, server: Server, now: u64) -> (&'static str, Option<Persist>) {
        let name = server.name.clone();
        match self.servers.get_mut(&name) {
            Some(rec) if rec.server == server => ("unchanged", None),
            Some(rec) => {
                if rec.server.scaling != server.scaling {
                    rec.autoscaled_replicas = None;
                }
                rec.server = server;
                let rec = rec.clone();
                self.event(
                    server_key(&name),
                    now,
                    false,
                    "Updated",
                    format!("desired replicas {}", rec.replicas()),
                );
                ("configured", Some(Persist::PutServer(rec)))
            }
            None => {
                let rec = ServerRecord {
                    server,
                    created_unix_millis: now,
                    autoscaled_replicas: None,
                };
                self.servers.insert(name.clone(), rec.clone());
                self.event(
                    server_key(&name),
                    now,
                    false,
                    "Created",
                    format!("desired replicas {}", rec.replicas()),
                );
                ("created", Some(Persist::PutServer(rec)))
            }
        }
    }

    pub fn delete_server(&mut self, name: &str, now: u64) -> Option<Persist> {
        self.servers.remove(name)?;
        self.event(
            server_key(name),
            now,
            false,
            "Deleted",
            "its replicas are stopped and its models move elsewhere".to_owned(),
        );
        Some(Persist::DeleteServer(ServerName::new(name)))
    }

    pub fn apply_config(
        &mut self,
        config: ServerConfig,
        now: u64,
    ) -> (&'static str, Option<Persist>) {
        match self.configs.get_mut(&config.name) {
            Some(rec) if rec.config == config => ("unchanged", None),
            Some(rec) => {
                rec.config = config;
                ("configured", Some(Persist::PutConfig(rec.clone())))
            }
            None => {
                let rec = ServerConfigRecord {
                    config,
                    created_unix_millis: now,
                };
                self.configs.insert(rec.config.name.clone(), rec.clone());
                ("created", Some(Persist::PutConfig(rec)))
            }
        }
    }

    pub fn delete_config(&mut self, name: &str) -> Option<Persist> {
        self.configs.remove(name)?;
        Some(Persist::DeleteConfig(name.to_owned()))
    }

    /// The namespace whose manifest defined the stored Model, Server or ServerConfig of `kind`
    /// and `name`, if there is one and its manifest had a namespace.
    pub fn held_by_namespace(&self, kind: &str, name: &str) -> Option<&str> {
        let meta = match kind {
            "Model" => self.models.get(name).map(|r| &r.model.meta),
            "Server" => self.servers.get(name).map(|r| &r.server.meta),
            "ServerConfig" => self.configs.get(name).map(|r| &r.config.meta),
            _ => None,
        }?;
        meta.namespace.as_deref()
    }

    /// Whether a ServerConfig of this name exists (stored or built in).
    pub fn config_exists(&self, name: &str) -> bool {
        self.configs.contains_key(name) || configs::builtin(name).is_some()
    }

    /// The launch parameters of every Server: what the provisioner should run.
    pub fn server_launches(&self) -> BTreeMap<ServerName, configs::ServerLaunch> {
        self.servers
            .values()
            .map(|rec| {
                let cfg = self
                    .configs
                    .get(&rec.server.server_config)
                    .map(|c| &c.config);
                let mut launch = configs::launch(&rec.server, cfg);
                launch.replicas = rec.replicas();
                (rec.server.name.clone(), launch)
            })
            .collect()
    }

    // ----- agents --------------------------------------------------------------

    /// An agent registered. Models it already holds are recorded as available (when
    /// they are a known version) or unloaded (when they are not).
    pub fn agent_registered(
        &mut self,
        server: ServerName,
        replica: ReplicaIndex,
        session: u64,
        info: AgentInfo,
        loaded: Vec<(ModelName, u32)>,
        now: u64,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        let mut models = BTreeMap::new();
        for (name, version) in loaded {
            let known = self
                .models
                .get(&name)
                .is_some_and(|m| !m.deleted && version <= m.version);
            if known {
                models.insert(
                    (name, version),
                    ReplicaModel {
                        state: ReplicaModelState::Available,
                        reason: String::new(),
                        memory_bytes: 0,
                    },
                );
            } else {
                commands.push(unload_command(&server, replica, session, &name, version));
                models.insert(
                    (name, version),
                    ReplicaModel {
                        state: ReplicaModelState::Unloading,
                        reason: String::new(),
                        memory_bytes: 0,
                    },
                );
            }
        }
        let msg = if info.runtime_error.is_empty() {
            format!("replica {replica} connected (pid {})", info.pid)
        } else {
            format!(
                "replica {replica} connected but cannot serve: {}",
                info.runtime_error
            )
        };
        let warning = !info.runtime_error.is_empty();
        self.replicas.insert(
            (server.clone(), replica),
            ReplicaEntry {
                info,
                session,
                draining: false,
                leaving_since: None,
                drain_sent: false,
                models,
            },
        );
        self.event(
            server_key(server.as_str()),
            now,
            warning,
            "ReplicaConnected",
            msg,
        );
        commands
    }

    /// An agent's stream ended. Ignored when a newer session of the same replica exists.
    pub fn agent_disconnected(
        &mut self,
        server: &ServerName,
        replica: ReplicaIndex,
        session: u64,
        now: u64,
    ) {
        let key = (server.clone(), replica);
        if self
            .replicas
            .get(&key)
            .is_some_and(|r| r.session == session)
        {
            self.replicas.remove(&key);
            self.live.remove(&key);
            self.event(
                server_key(server.as_str()),
                now,
                false,
                "ReplicaDisconnected",
                format!("replica {replica} disconnected; its models are placed elsewhere"),
            );
        }
    }

    /// Result of a load or unload on an agent.
    #[allow(clippy::too_many_arguments)]
    pub fn agent_event(
        &mut self,
        server: &ServerName,
        replica: ReplicaIndex,
        session: u64,
        model: ModelName,
        version: u32,
        kind: AgentEventKind,
        message: String,
        now: u64,
    ) {
        let Some(entry) = self
            .replicas
            .get_mut(&(server.clone(), replica))
            .filter(|r| r.session == session)
        else {
            return;
        };
        let key = (model.clone(), version);
        match kind {
            AgentEventKind::Loaded { memory_bytes } => {
                if let Some(m) = entry.models.get_mut(&key) {
                    if m.state == ReplicaModelState::Loading {
                        m.state = ReplicaModelState::Available;
                        m.reason.clear();
                        m.memory_bytes = memory_bytes;
                    }
                }
                self.event(
                    model_key(model.as_str()),
                    now,
                    false,
                    "Loaded",
                    format!("version {version} available on {server}-{replica}"),
                );
            }
            AgentEventKind::LoadFailed => {
                if let Some(m) = entry.models.get_mut(&key) {
                    m.state = ReplicaModelState::LoadFailed;
                    m.reason = message.clone();
                }
                self.event(
                    model_key(model.as_str()),
                    now,
                    true,
                    "LoadFailed",
                    format!("version {version} on {server}-{replica}: {message}"),
                );
            }
            AgentEventKind::Unloaded => {
                entry.models.remove(&key);
                // a model replica left this server: the server autoscaler may pack
                self.autoscale.replica_removed.insert(server.clone());
            }
            AgentEventKind::UnloadFailed => {
                // The agent could not unload: forget it here (the agent discards the model).
                entry.models.remove(&key);
                self.event(
                    model_key(model.as_str()),
                    now,
                    true,
                    "UnloadFailed",
                    format!("version {version} on {server}-{replica}: {message}"),
                );
            }
        }
    }

    /// Marks a replica as draining (it is about to be removed): no new placements.
    pub fn set_draining(&mut self, server: &ServerName, replica: ReplicaIndex) {
        if let Some(r) = self.replicas.get_mut(&(server.clone(), replica)) {
            r.draining = true;
        }
    }

    /// A replica marked draining is wanted again (scaled back up before it stopped).
    /// A replica whose agent is leaving or was told to drain stays draining.
    pub fn clear_draining(&mut self, server: &ServerName, replica: ReplicaIndex) {
        if let Some(r) = self.replicas.get_mut(&(server.clone(), replica)) {
            if r.leaving_since.is_none() && !r.drain_sent {
                r.draining = false;
            }
        }
    }

    /// The agent of a replica announced it is leaving (its pod got SIGTERM): no new
    /// placements; its models are placed elsewhere before it is told to drain.
    pub fn agent_leaving(
        &mut self,
        server: &ServerName,
        replica: ReplicaIndex,
        session: u64,
        now: u64,
    ) {
        let Some(r) = self
            .replicas
            .get_mut(&(server.clone(), replica))
            .filter(|r| r.session == session)
        else {
            return;
        };
        r.draining = true;
        if r.leaving_since.is_none() {
            r.leaving_since = Some(now);
            self.event(
                server_key(server.as_str()),
                now,
                false,
                "ReplicaLeaving",
                format!("replica {replica} is shutting down; its models are placed elsewhere"),
            );
        }
    }

    /// Replicas whose agent is leaving and was not told to drain yet, with since when.
    pub fn leaving_replicas(&self) -> Vec<(ServerName, ReplicaIndex, u64)> {
        self.replicas
            .iter()
            .filter(|(_, r)| !r.drain_sent)
            .filter_map(|((s, i), r)| r.leaving_since.map(|t| (s.clone(), *i, t)))
            .collect()
    }

    /// Records that a replica was told to drain (it is going away for good).
    pub fn set_drain_sent(&mut self, server: &ServerName, replica: ReplicaIndex) {
        if let Some(r) = self.replicas.get_mut(&(server.clone(), replica)) {
            r.draining = true;
            r.drain_sent = true;
        }
    }

    /// Every connected replica (server, ordinal).
    pub fn connected_keys(&self) -> Vec<(ServerName, ReplicaIndex)> {
        self.replicas.keys().cloned().collect()
    }

    /// Publishes the replica count each Server's replica set should have now.
    pub fn set_scale_targets(&mut self, targets: BTreeMap<ServerName, u32>) {
        self.scale_targets = targets;
    }

    pub fn replica_session(&self, server: &ServerName, replica: ReplicaIndex) -> Option<u64> {
        self.replicas
            .get(&(server.clone(), replica))
            .map(|r| r.session)
    }

    /// Connected replicas of a server (ordinal, pid, draining).
    pub fn connected_replicas(&self, server: &ServerName) -> Vec<(ReplicaIndex, u32, bool)> {
        self.replicas
            .iter()
            .filter(|((s, _), _)| s == server)
            .map(|((_, i), r)| (*i, r.info.pid, r.draining))
            .collect()
    }

    /// A replica may stop when no model depends on it: every latest-version model it
    /// holds is available on at least one other replica (or is not wanted any more).
    pub fn replica_can_stop(&self, server: &ServerName, replica: ReplicaIndex) -> bool {
        let Some(entry) = self.replicas.get(&(server.clone(), replica)) else {
            return true;
        };
        entry.models.iter().all(|((name, version), rm)| {
            if rm.state != ReplicaModelState::Available {
                return true;
            }
            let Some(rec) = self.models.get(name).filter(|r| !r.deleted) else {
                return true;
            };
            if *version != rec.version {
                return true;
            }
            self.replicas.iter().any(|(k, r)| {
                k != &(server.clone(), replica)
                    && !r.draining
                    && r.models
                        .get(&(name.clone(), *version))
                        .is_some_and(|m| m.state == ReplicaModelState::Available)
            })
        })
    }

    // ----- reconcile -----------------------------------------------------------

    /// Desired replica count of a server.
    fn server_desired(&self, server: &ServerName) -> u32 {
        self.servers
            .get(server)
            .map(ServerRecord::replicas)
            .unwrap_or(0)
    }

    /// Places every model and returns the load/unload commands that move the agents
    /// towards the placement. Idempotent: a second call with nothing new returns no
    /// commands.
    pub fn reconcile(&mut self, now: u64) -> Vec<Command> {
        let mut commands = Vec::new();
        let views = self.server_views();
        let demands: Vec<ModelDemand> = self
            .models
            .values()
            .filter(|r| !r.deleted)
            .map(|r| self.demand(r))
            .collect();
        let decisions = placement::place(&views, &demands);
        let draining: BTreeSet<ReplicaKey> = views
            .iter()
            .flat_map(|v| {
                v.replicas
                    .iter()
                    .filter(|r| r.draining)
                    .map(|r| (v.name.clone(), r.index))
            })
            .collect();

        for d in decisions {
            let Some(rec) = self.models.get(&d.model) else {
                continue;
            };
            let version = rec.version;
            let memory = self.model_memory(rec);
            let name = d.model.clone();
            // load where assigned
            if let Some(server) = &d.server {
                for idx in &d.replicas {
                    let key = (server.clone(), *idx);
                    let Some(entry) = self.replicas.get_mut(&key) else {
                        continue;
                    };
                    let mk = (name.clone(), version);
                    let needs_load = match entry.models.get(&mk) {
                        None => true,
                        Some(m) => m.state == ReplicaModelState::Unloading,
                    };
                    if needs_load {
                        entry.models.insert(
                            mk,
                            ReplicaModel {
                                state: ReplicaModelState::Loading,
                                reason: String::new(),
                                memory_bytes: memory,
                            },
                        );
                        commands.push(Command {
                            server: server.clone(),
                            replica: *idx,
                            session: entry.session,
                            message: load_message(rec, version),
                        });
                    }
                }
            }
            // unload the latest version where not assigned, except on draining replicas:
            // they keep serving until they stop, so nothing is lost meanwhile
            for ((sname, idx), entry) in self.replicas.iter_mut() {
                let assigned = d.server.as_ref() == Some(sname) && d.replicas.contains(idx);
                if assigned || draining.contains(&(sname.clone(), *idx)) {
                    continue;
                }
                if let Some(m) = entry.models.get_mut(&(name.clone(), version)) {
                    if m.state != ReplicaModelState::Unloading {
                        m.state = ReplicaModelState::Unloading;
                        commands.push(unload_command(sname, *idx, entry.session, &name, version));
                    }
                }
            }
            self.record_decision(d, now);
        }

        // old versions once the latest is available, deleted and unknown models always
        let latest_available: BTreeSet<ModelName> = self
            .models
            .values()
            .filter(|r| !r.deleted && self.count_state(r, ReplicaModelState::Available) > 0)
            .filter(|r| {
                let s = self.model_state(r);
                s.0 == "ModelAvailable"
            })
            .map(|r| r.model.name.clone())
            .collect();
        for ((sname, idx), entry) in self.replicas.iter_mut() {
            for ((mname, v), m) in entry.models.iter_mut() {
                if m.state == ReplicaModelState::Unloading {
                    continue;
                }
                let unload = match self.models.get(mname) {
                    None => true,
                    Some(rec) if rec.deleted => true,
                    Some(rec) => *v != rec.version && latest_available.contains(mname),
                };
                if unload {
                    m.state = ReplicaModelState::Unloading;
                    commands.push(unload_command(sname, *idx, entry.session, mname, *v));
                }
            }
        }
        // forget deleted models that nothing holds any more
        let gone: Vec<ModelName> = self
            .models
            .values()
            .filter(|r| r.deleted)
            .filter(|r| {
                !self
                    .replicas
                    .values()
                    .any(|e| e.models.keys().any(|(n, _)| n == &r.model.name))
            })
            .map(|r| r.model.name.clone())
            .collect();
        for name in gone {
            self.models.remove(&name);
            self.decisions.remove(&name);
        }
        commands
    }

    /// Deleted models that are fully unloaded and can be removed from the store.
    pub fn purged_models(&self, persisted: &BTreeSet<ModelName>) -> Vec<ModelName> {
        persisted
            .iter()
            .filter(|n| !self.models.contains_key(*n))
            .cloned()
            .collect()
    }

    fn record_decision(&mut self, d: Decision, now: u64) {
        let changed = self.decisions.get(&d.model).map(|p| &p.outcome) != Some(&d.outcome);
        if changed {
            let key = model_key(d.model.as_str());
            match &d.outcome {
                Outcome::Failed { reason } => {
                    self.event(key, now, true, "ScheduleFailed", reason.to_string())
                }
                Outcome::Partial { reason } => self.event(
                    key,
                    now,
                    true,
                    "PartiallyScheduled",
                    format!("{} replica(s) placed: {reason}", d.replicas.len()),
                ),
                Outcome::Complete => self.event(
                    key,
                    now,
                    false,
                    "Scheduled",
                    format!(
                        "{} replica(s) on server {}",
                        d.replicas.len(),
                        d.server.as_ref().map(|s| s.as_str()).unwrap_or("-")
                    ),
                ),
                Outcome::ScaledToZero => self.event(
                    key,
                    now,
                    false,
                    "ScaledToZero",
                    "0 replicas wanted".to_owned(),
                ),
            }
        }
        self.decisions.insert(d.model.clone(), d);
    }

    pub(crate) fn server_views(&self) -> Vec<ServerView> {
        self.servers
            .values()
            .map(|rec| {
                let name = &rec.server.name;
                let desired = self.server_desired(name);
                let replicas = self
                    .replicas
                    .iter()
                    .filter(|((s, _), e)| s == name && e.info.runtime_error.is_empty())
                    .map(|((_, idx), e)| ReplicaView {
                        index: *idx,
                        capabilities: e.info.capabilities.clone(),
                        memory_bytes: e.info.capacity(),
                        reserved_bytes: self.reserved_on(e),
                        draining: e.draining || idx.0 >= desired,
                    })
                    .collect();
                ServerView {
                    name: name.clone(),
                    replicas,
                    accepting: desired > 0,
                }
            })
            .collect()
    }

    /// Memory held on a replica by model versions that are not being placed now (old
    /// versions and deleted models still unloading).
    fn reserved_on(&self, entry: &ReplicaEntry) -> u64 {
        entry
            .models
            .iter()
            .filter(|((name, v), _)| {
                self.models
                    .get(name)
                    .is_none_or(|r| r.deleted || r.version != *v)
            })
            .map(|(_, m)| m.memory_bytes)
            .fold(0u64, u64::saturating_add)
    }

    pub(crate) fn demand(&self, rec: &ModelRecord) -> ModelDemand {
        let name = &rec.model.name;
        // where the latest version lives now (loading, available or failed)
        let mut by_server: BTreeMap<ServerName, BTreeSet<ReplicaIndex>> = BTreeMap::new();
        for ((s, idx), e) in &self.replicas {
            if let Some(m) = e.models.get(&(name.clone(), rec.version)) {
                if m.state != ReplicaModelState::Unloading {
                    by_server.entry(s.clone()).or_default().insert(*idx);
                }
            }
        }
        let preferred = self.decisions.get(name).and_then(|d| d.server.clone());
        let current = match preferred.and_then(|s| by_server.remove_entry(&s)) {
            Some((server, replicas)) => Some(CurrentPlacement { server, replicas }),
            None => by_server
                .into_iter()
                .max_by_key(|(_, r)| r.len())
                .map(|(server, replicas)| CurrentPlacement { server, replicas }),
        };
        ModelDemand {
            name: name.clone(),
            requirements: rec.model.spec.requirements.clone(),
            memory_bytes: self.model_memory(rec),
            replicas: rec.replicas(),
            min_replicas: rec.model.scaling.min_replicas,
            server: rec.model.spec.server.clone(),
            current,
        }
    }

    /// Largest memory a replica measured for the latest version (None = none yet).
    pub fn measured_memory(&self, rec: &ModelRecord) -> Option<u64> {
        self.replicas
            .values()
            .filter_map(|e| e.models.get(&(rec.model.name.clone(), rec.version)))
            .filter(|m| m.state == ReplicaModelState::Available && m.memory_bytes > 0)
            .map(|m| m.memory_bytes)
            .max()
    }

    /// Memory one replica of the model needs for placement: `spec.memory`; else what
    /// replicas measured after loading it; else the artifact's size; else 0 (Seldon's
    /// "no constraint").
    pub fn model_memory(&self, rec: &ModelRecord) -> u64 {
        rec.model
            .spec
            .memory_bytes
            .or_else(|| self.measured_memory(rec))
            .or(rec.artifact_bytes)
            .unwrap_or(0)
    }

    pub(crate) fn count_state(&self, rec: &ModelRecord, state: ReplicaModelState) -> u32 {
        let n = self
            .replicas
            .values()
            .filter(|e| {
                e.models
                    .get(&(rec.model.name.clone(), rec.version))
                    .is_some_and(|m| m.state == state)
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// (state, reason) of a model, following Seldon's derivation (see the semantics
    /// reference §2.1) with placement failures reported as `ScheduleFailed`.
    pub(crate) fn model_state(&self, rec: &ModelRecord) -> (&'static str, String) {
        if rec.deleted {
            return ("ModelTerminating", "unloading".to_owned());
        }
        let available = self.count_state(rec, ReplicaModelState::Available);
        let desired = rec.replicas();
        let min = rec.model.scaling.min_replicas;
        let failure = self.replicas.values().find_map(|e| {
            e.models
                .get(&(rec.model.name.clone(), rec.version))
                .filter(|m| m.state == ReplicaModelState::LoadFailed)
                .map(|m| m.reason.clone())
        });
        if let Some(reason) = failure {
            return ("ModelFailed", reason);
        }
        match self.decisions.get(&rec.model.name).map(|d| &d.outcome) {
            Some(Outcome::Failed { reason }) => return ("ScheduleFailed", reason.to_string()),
            None if desired > 0 => {
                return ("ModelProgressing", "waiting for placement".to_owned());
            }
            _ => {}
        }
        if desired == 0 {
            return if available == 0 {
                ("ModelScaledDown", String::new())
            } else {
                ("ModelProgressing", "scaling down to 0".to_owned())
            };
        }
        if available >= desired || (min > 0 && available >= min) {
            let reason = match self.decisions.get(&rec.model.name).map(|d| &d.outcome) {
                Some(Outcome::Partial { reason }) => reason.to_string(),
                _ => String::new(),
            };
            return ("ModelAvailable", reason);
        }
        (
            "ModelProgressing",
            format!("{available} of {desired} replicas available"),
        )
    }

    // ----- views ---------------------------------------------------------------

    pub fn model_status(&self, name: &str) -> Option<ModelStatus> {
        let rec = self.models.get(name)?;
        let (state, reason) = self.model_state(rec);
        let mut replicas = Vec::new();
        for ((s, idx), e) in &self.replicas {
            for ((n, v), m) in &e.models {
                if n == &rec.model.name {
                    let state = if e.draining && m.state == ReplicaModelState::Available {
                        "Draining"
                    } else {
                        m.state.as_str()
                    };
                    replicas.push(ModelReplicaStatus {
                        server: s.to_string(),
                        replica: idx.0,
                        version: *v,
                        state: state.to_owned(),
                        reason: m.reason.clone(),
                    });
                }
            }
        }
        Some(ModelStatus {
            name: rec.model.name.to_string(),
            namespace: rec.model.meta.namespace.clone(),
            version: rec.version,
            state: state.to_owned(),
            reason,
            server: self
                .decisions
                .get(&rec.model.name)
                .and_then(|d| d.server.as_ref())
                .map(|s| s.to_string()),
            desired_replicas: rec.replicas(),
            available_replicas: self.count_state(rec, ReplicaModelState::Available),
            min_replicas: rec.model.scaling.min_replicas,
            max_replicas: rec.model.scaling.max_replicas,
            in_flight: self.model_load(&rec.model.name, rec.version).0,
            autoscaled: rec.model.scaling.autoscaling_enabled()
                && !self
                    .autoscale
                    .hpa_targets
                    .contains(&format!("Model/{}", rec.model.name)),
            storage_uri: rec.model.spec.storage_uri.clone(),
            requirements: rec.model.spec.requirements.clone(),
            memory_bytes: rec.model.spec.memory_bytes,
            estimated_memory_bytes: rec.artifact_bytes,
            measured_memory_bytes: self.measured_memory(rec),
            replicas,
            created_unix_millis: rec.created_unix_millis,
            events: self.events_of(&model_key(name)),
        })
    }

    pub fn model_statuses(&self) -> Vec<ModelStatus> {
        self.models
            .keys()
            .filter_map(|n| self.model_status(n.as_str()))
            .collect()
    }

    pub fn server_status(&self, name: &str) -> Option<ServerStatus> {
        let rec = self.servers.get(name)?;
        let launch = configs::launch(
            &rec.server,
            self.configs
                .get(&rec.server.server_config)
                .map(|c| &c.config),
        );
        let desired = rec.replicas();
        let mut replicas = Vec::new();
        let mut loaded_models = 0u32;
        let mut ready = 0u32;
        for ((_, idx), e) in self
            .replicas
            .iter()
            .filter(|((s, _), _)| s.as_str() == name)
        {
            let loaded: Vec<String> = e
                .models
                .iter()
                .filter(|(_, m)| m.state == ReplicaModelState::Available)
                .map(|((n, v), _)| format!("{n}:{v}"))
                .collect();
            let used = e
                .models
                .values()
                .map(|m| m.memory_bytes)
                .fold(0u64, u64::saturating_add);
            let state = if !e.info.runtime_error.is_empty() {
                "Unavailable"
            } else if e.draining || idx.0 >= desired {
                "Draining"
            } else {
                ready = ready.saturating_add(1);
                loaded_models =
                    loaded_models.saturating_add(u32::try_from(loaded.len()).unwrap_or(u32::MAX));
                "Ready"
            };
            replicas.push(ServerReplicaStatus {
                replica: idx.0,
                state: state.to_owned(),
                pid: Some(e.info.pid),
                http: Some(e.info.http.to_string()),
                grpc: Some(e.info.grpc.to_string()),
                memory_bytes: e.info.capacity(),
                used_memory_bytes: used,
                loaded_models: loaded,
                reason: e.info.runtime_error.clone(),
            });
        }
        for idx in 0..desired {
            if !replicas.iter().any(|r| r.replica == idx) {
                replicas.push(ServerReplicaStatus {
                    replica: idx,
                    state: "Starting".to_owned(),
                    pid: None,
                    http: None,
                    grpc: None,
                    memory_bytes: launch.memory_bytes,
                    used_memory_bytes: 0,
                    loaded_models: Vec::new(),
                    reason: String::new(),
                });
            }
        }
        replicas.sort_by_key(|r| r.replica);
        Some(ServerStatus {
            name: name.to_owned(),
            namespace: rec.server.meta.namespace.clone(),
            server_config: rec.server.server_config.clone(),
            capabilities: launch.capabilities,
            desired_replicas: desired,
            ready_replicas: ready,
            min_replicas: rec.server.scaling.min_replicas,
            max_replicas: rec.server.scaling.max_replicas,
            loaded_models,
            replicas,
            created_unix_millis: rec.created_unix_millis,
            scale_target: self.scale_targets.get(name).copied(),
            events: self.events_of(&server_key(name)),
        })
    }

    pub fn server_statuses(&self) -> Vec<ServerStatus> {
        self.servers
            .keys()
            .filter_map(|n| self.server_status(n.as_str()))
            .collect()
    }

    /// The ServerConfig `name`: applied, else built in; none when it is neither.
    pub fn config_status(&self, name: &str) -> Option<ServerConfigStatus> {
        let rec = self.configs.get(name);
        if rec.is_none() && configs::builtin(name).is_none() {
            return None;
        }
        let config = rec.map(|r| &r.config);
        Some(ServerConfigStatus {
            name: name.to_owned(),
            namespace: config.and_then(|c| c.meta.namespace.clone()),
            built_in: rec.is_none(),
            runtime: configs::runtime_of_config(name, config).as_str().to_owned(),
            servers: self
                .servers
                .values()
                .filter(|s| s.server.server_config == name)
                .map(|s| s.server.name.to_string())
                .collect(),
            created_unix_millis: rec.map(|r| r.created_unix_millis),
        })
    }

    /// Every ServerConfig, applied and built in, by name.
    pub fn config_statuses(&self) -> Vec<ServerConfigStatus> {
        let names: std::collections::BTreeSet<&str> = self
            .configs
            .keys()
            .map(String::as_str)
            .chain(RuntimeKind::ALL.iter().map(|k| k.as_str()))
            .collect();
        names
            .into_iter()
            .filter_map(|name| self.config_status(name))
            .collect()
    }

    /// The routing table: per model the replicas of its latest version that are
    /// available; while the latest has none, those of the newest older version that has.
    /// Draining replicas take traffic only while no other replica can.
    pub fn routing_table(&self) -> RoutingTable {
        let mut models = BTreeMap::new();
        for rec in self.models.values().filter(|r| !r.deleted) {
            let name = &rec.model.name;
            // (version → (endpoints on live replicas, endpoints on draining replicas))
            type Eps = (Vec<Endpoint>, Vec<Endpoint>);
            let mut by_version: BTreeMap<u32, Eps> = BTreeMap::new();
            for ((s, idx), e) in &self.replicas {
                for ((n, v), m) in &e.models {
                    if n == name && m.state == ReplicaModelState::Available {
                        let slot = by_version.entry(*v).or_default();
                        let list = if e.draining { &mut slot.1 } else { &mut slot.0 };
                        list.push(Endpoint {
                            server: s.to_string(),
                            replica: idx.0,
                            version: *v,
                            http: e.info.http,
                            grpc: e.info.grpc,
                            data_socket: e.info.data_socket.clone(),
                        });
                    }
                }
            }
            let endpoints = by_version
                .into_iter()
                .rfind(|(v, _)| *v <= rec.version)
                .map(|(_, (live, draining))| if live.is_empty() { draining } else { live })
                .unwrap_or_default();
            models.insert(name.to_string(), ModelRoute { endpoints });
        }
        RoutingTable { models }
    }

    /// Counts for the control plane's own metrics: (state → number of models).
    pub fn model_state_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for rec in self.models.values() {
            *out.entry(self.model_state(rec).0).or_insert(0u64) += 1;
        }
        out
    }
}

/// What an agent reported about a load/unload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEventKind {
    Loaded { memory_bytes: u64 },
    LoadFailed,
    Unloaded,
    UnloadFailed,
}

fn load_message(rec: &ModelRecord, version: u32) -> ControlMessage {
    let spec = &rec.model.spec;
    ControlMessage {
        kind: Some(control_message::Kind::Load(Load {
            model: Some(ModelRef {
                name: rec.model.name.to_string(),
                version,
            }),
            storage_uri: spec.storage_uri.clone(),
            memory_bytes: spec.memory_bytes.unwrap_or(0),
            requirements: spec.requirements.clone(),
            parameters: spec.parameters.clone().into_iter().collect(),
            artifact_version: spec.artifact_version,
        })),
    }
}

fn unload_command(
    server: &ServerName,
    replica: ReplicaIndex,
    session: u64,
    model: &ModelName,
    version: u32,
) -> Command {
    Command {
        server: server.clone(),
        replica,
        session,
        message: ControlMessage {
            kind: Some(control_message::Kind::Unload(Unload {
                model: Some(ModelRef {
                    name: model.to_string(),
                    version,
                }),
            })),
        },
    }
}

/// Runtime kind a replica of this server runs.
pub fn runtime_of(state: &State, server: &Server) -> RuntimeKind {
    configs::launch(
        server,
        state.configs.get(&server.server_config).map(|c| &c.config),
    )
    .runtime
}
