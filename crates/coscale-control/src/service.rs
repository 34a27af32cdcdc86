//! The async shell around [`State`]: the agent gRPC service, command dispatch, the
//! routing-table channel, the store, and the periodic reconcile loop.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coscale_api::pb::agent::agent_service_server::{AgentService, AgentServiceServer};
use coscale_api::pb::agent::{
    agent_message, control_message, model_event, Accepted, AgentMessage, ControlMessage, Drain,
    Register,
};
use coscale_api::routing::RoutingTable;
use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use futures::Stream;
use tokio::sync::{mpsc, watch, Notify};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Authenticator, Identity};

use crate::state::{AgentEventKind, AgentInfo, Command, Persist, State};
use crate::store::{Store, StoreError};

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub data_dir: PathBuf,
    /// Bearer token every API call and agent stream must carry.
    pub token: String,
    /// Interval of the periodic reconcile (retries unplaced models).
    pub reconcile_interval: Duration,
    /// How often agents send stats.
    pub stats_interval: Duration,
    /// Native autoscaling settings.
    pub autoscale: crate::autoscaling::AutoscaleConfig,
    /// HorizontalPodAutoscaler controller settings and metrics source.
    pub hpa: crate::hpa_controller::HpaConfig,
    /// `--auth kubernetes`: also accept ServiceAccount tokens checked by TokenReview.
    pub token_review: Option<crate::auth::TokenReviewConfig>,
}

impl ControlConfig {
    /// A control plane in `data_dir` with `token`, reconciling and taking agent stats every
    /// second, default autoscaling and HPA settings, static-token authentication only.
    pub fn new(data_dir: PathBuf, token: String) -> Self {
        ControlConfig {
            data_dir,
            token,
            reconcile_interval: Duration::from_secs(1),
            stats_interval: Duration::from_secs(1),
            autoscale: Default::default(),
            hpa: Default::default(),
            token_review: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

type Outbound = mpsc::UnboundedSender<Result<ControlMessage, Status>>;

/// A registered agent session: who it is and its command stream.
type Registered = (
    ServerName,
    ReplicaIndex,
    u64,
    mpsc::UnboundedReceiver<Result<ControlMessage, Status>>,
);

struct Inner {
    config: ControlConfig,
    auth: Authenticator,
    state: Mutex<State>,
    store: Store,
    agents: Mutex<HashMap<(ServerName, ReplicaIndex), (u64, Outbound)>>,
    routes: watch::Sender<Arc<RoutingTable>>,
    wake: Notify,
    next_session: AtomicU64,
}

/// Handle to the control plane (cheap to clone).
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    /// Opens the store in the data directory and rebuilds the state from it.
    pub fn open(config: ControlConfig) -> anyhow::Result<Self> {
        let auth = match &config.token_review {
            None => Authenticator::static_only(config.token.clone()),
            Some(review) => Authenticator::with_token_review(config.token.clone(), review.clone())?,
        };
        let store = Store::open(&config.data_dir)?;
        let snap = store.load()?;
        let mut state = State::from_records(snap.models, snap.servers, snap.configs);
        state.load_hpas(snap.hpas);
        info!(
            models = state.models.len(),
            servers = state.servers.len(),
            "control plane state loaded"
        );
        let (routes, _) = watch::channel(Arc::new(state.routing_table()));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                auth,
                state: Mutex::new(state),
                store,
                agents: Mutex::new(HashMap::new()),
                routes,
                wake: Notify::new(),
                next_session: AtomicU64::new(1),
            }),
        })
    }

    pub fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    /// The routing table, updated whenever it changes.
    pub fn routes(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.inner.routes.subscribe()
    }

    /// Locks the state. Keep the guard short: never hold it across an await.
    pub fn state(&self) -> MutexGuard<'_, State> {
        match self.inner.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Checks an `Authorization` header value (static token, or with `--auth
    /// kubernetes` a ServiceAccount token); failures are logged with their reason.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Identity, AuthError> {
        let r = self
            .inner
            .auth
            .authenticate(header, |ns| {
                self.state()
                    .servers
                    .values()
                    .any(|r| r.server.meta.namespace.as_deref() == Some(ns))
            })
            .await;
        if let Err(e) = &r {
            debug!("request not authenticated: {e}");
        }
        r
    }

    /// Persists changes (one transaction), then reconciles and publishes.
    pub fn commit(&self, changes: &[Persist]) -> Result<(), StoreError> {
        self.inner.store.persist(changes)?;
        self.reconcile_now();
        Ok(())
    }

    /// Runs one reconcile step: placement → agent commands → routing table.
    pub fn reconcile_now(&self) {
        let now = now_millis();
        let (commands, table, purged) = {
            let mut st = self.state();
            let before: BTreeSet<ModelName> = st.models.keys().cloned().collect();
            let commands = st.reconcile(now);
            let purged: Vec<ModelName> = before
                .into_iter()
                .filter(|n| !st.models.contains_key(n))
                .collect();
            (commands, st.routing_table(), purged)
        };
        if !purged.is_empty() {
            let changes: Vec<Persist> = purged.into_iter().map(Persist::DeleteModel).collect();
            if let Err(e) = self.inner.store.persist(&changes) {
                warn!("could not purge deleted models from the store: {e}");
            }
        }
        self.dispatch(commands);
        self.inner.routes.send_if_modified(|cur| {
            if **cur == table {
                false
            } else {
                *cur = Arc::new(table);
                true
            }
        });
    }

    /// Runs one autoscaling round and persists what it chose.
    pub fn autoscale_now(&self) {
        let changes = self
            .state()
            .autoscale(now_millis(), &self.inner.config.autoscale);
        if let Err(e) = self.inner.store.persist(&changes) {
            warn!("could not persist autoscaling decisions: {e}");
        }
    }

    /// Asks the reconcile loop to run soon.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    fn agents(&self) -> MutexGuard<'_, HashMap<(ServerName, ReplicaIndex), (u64, Outbound)>> {
        match self.inner.agents.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn dispatch(&self, commands: Vec<Command>) {
        if commands.is_empty() {
            return;
        }
        let agents = self.agents();
        for c in commands {
            match agents.get(&(c.server.clone(), c.replica)) {
                Some((session, tx)) if *session == c.session => {
                    let _ = tx.send(Ok(c.message));
                }
                _ => {
                    // The agent went away; its disconnect triggers a new reconcile.
                }
            }
        }
    }

    /// Tells a replica's agent to drain and exit, and keeps new placements off it.
    pub fn drain_replica(&self, server: &ServerName, replica: ReplicaIndex) {
        self.state().set_drain_sent(server, replica);
        if let Some((_, tx)) = self.agents().get(&(server.clone(), replica)) {
            let _ = tx.send(Ok(ControlMessage {
                kind: Some(control_message::Kind::Drain(Drain {})),
            }));
        }
        self.reconcile_now();
    }

    /// Runs the periodic reconcile until `shutdown` resolves.
    pub async fn run_reconciler(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.inner.config.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hpa_tick = tokio::time::interval(self.inner.config.hpa.sync_period);
        hpa_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
                _ = self.inner.wake.notified() => {}
                _ = hpa_tick.tick() => self.hpa_round().await,
            }
            self.autoscale_now();
            self.reconcile_now();
        }
    }

    /// The gRPC service agents connect to.
    pub fn agent_service(&self) -> AgentServiceServer<AgentEndpoint> {
        AgentServiceServer::new(AgentEndpoint { cp: self.clone() })
            .max_decoding_message_size(16 << 20)
    }

    /// The data-plane socket an agent announced, if it is the one this control plane's local
    /// provisioner gives that replica ([`crate::provision::accepted_data_socket`]).
    fn checked_data_socket(&self, reg: &Register) -> Option<PathBuf> {
        if reg.data_socket.is_empty() {
            return None;
        }
        let accepted = crate::provision::accepted_data_socket(
            &self.inner.config.data_dir,
            &reg.server,
            reg.replica,
            &reg.data_socket,
        );
        if accepted.is_none() {
            tracing::warn!(
                server = %reg.server, replica = reg.replica, socket = %reg.data_socket,
                "ignoring a data-plane socket that is not this replica's in this control plane's socket folder; the replica is reached over TCP"
            );
        }
        accepted
    }

    fn on_register(&self, reg: Register) -> Result<Registered, Status> {
        if reg.server.is_empty() {
            return Err(Status::invalid_argument("register: server name is empty"));
        }
        let http: SocketAddr = reg.inference_http.parse().map_err(|e| {
            Status::invalid_argument(format!(
                "register: inference_http {:?} is not host:port: {e}",
                reg.inference_http
            ))
        })?;
        let grpc: SocketAddr = reg.inference_grpc.parse().map_err(|e| {
            Status::invalid_argument(format!(
                "register: inference_grpc {:?} is not host:port: {e}",
                reg.inference_grpc
            ))
        })?;
        for (what, addr) in [("inference_http", http), ("inference_grpc", grpc)] {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(Status::invalid_argument(format!(
                    "register: {what} {addr} is not an address others can reach; the agent must advertise its own IP (COSCALE_ADVERTISE_HOST or POD_IP)"
                )));
            }
        }
        let data_socket = self.checked_data_socket(&reg);
        let server = ServerName::new(reg.server.clone());
        let replica = ReplicaIndex(reg.replica);
        let session = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Ok(ControlMessage {
            kind: Some(control_message::Kind::Accepted(Accepted {
                stats_interval_millis: u32::try_from(self.inner.config.stats_interval.as_millis())
                    .unwrap_or(u32::MAX),
            })),
        }));
        self.agents()
            .insert((server.clone(), replica), (session, tx));
        let info = AgentInfo {
            capabilities: reg.capabilities,
            memory_bytes: reg.memory_bytes,
            overcommit_percent: reg.overcommit_percent,
            http,
            grpc,
            data_socket,
            pid: reg.pid,
            runtime: reg.runtime,
            runtime_error: reg.runtime_error,
        };
        let loaded = reg
            .loaded
            .into_iter()
            .map(|m| (ModelName::new(m.name), m.version))
            .collect();
        info!(%server, %replica, session, "agent registered");
        let commands = self.state().agent_registered(
            server.clone(),
            replica,
            session,
            info,
            loaded,
            now_millis(),
        );
        self.dispatch(commands);
        self.reconcile_now();
        Ok((server, replica, session, rx))
    }

    fn on_message(
        &self,
        server: &ServerName,
        replica: ReplicaIndex,
        session: u64,
        msg: AgentMessage,
    ) {
        match msg.kind {
            Some(agent_message::Kind::Event(ev)) => {
                let Some(model) = ev.model else { return };
                let kind = match model_event::Kind::try_from(ev.kind) {
                    Ok(model_event::Kind::Loaded) => AgentEventKind::Loaded {
                        memory_bytes: ev.measured_memory_bytes,
                    },
                    Ok(model_event::Kind::LoadFailed) => AgentEventKind::LoadFailed,
                    Ok(model_event::Kind::Unloaded) => AgentEventKind::Unloaded,
                    Ok(model_event::Kind::UnloadFailed) => AgentEventKind::UnloadFailed,
                    _ => return,
                };
                self.state().agent_event(
                    server,
                    replica,
                    session,
                    ModelName::new(model.name),
                    model.version,
                    kind,
                    ev.message,
                    now_millis(),
                );
                self.reconcile_now();
            }
            Some(agent_message::Kind::Stats(stats)) => {
                self.state().ingest_stats(server, replica, session, &stats);
            }
            Some(agent_message::Kind::Leaving(_)) => {
                info!(%server, %replica, "agent is leaving");
                self.state()
                    .agent_leaving(server, replica, session, now_millis());
                self.reconcile_now();
            }
            Some(agent_message::Kind::Register(_)) | None => {}
        }
    }

    fn on_disconnect(
        &self,
        server: &ServerName,
        replica: ReplicaIndex,
        session: u64,
        broken: Option<Status>,
    ) {
        {
            let mut agents = self.agents();
            if agents
                .get(&(server.clone(), replica))
                .is_some_and(|(s, _)| *s == session)
            {
                agents.remove(&(server.clone(), replica));
            }
        }
        match broken {
            None => info!(%server, %replica, session, "agent disconnected"),
            Some(e) => info!(%server, %replica, session, "agent disconnected: {}", e.message()),
        }
        self.state()
            .agent_disconnected(server, replica, session, now_millis());
        self.reconcile_now();
    }
}

/// The tonic service for agents.
pub struct AgentEndpoint {
    cp: ControlPlane,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

/// Deadline for an agent's first message.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl AgentService for AgentEndpoint {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Err(e) = self.cp.authenticate(auth).await {
            return Err(Status::unauthenticated(format!("agent channel: {e}")));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("agent sent no Register message in time"))??;
        let reg = match first.and_then(|m| m.kind) {
            Some(agent_message::Kind::Register(r)) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Register",
                ))
            }
        };
        let (server, replica, session, rx) = self.cp.on_register(reg)?;
        let cp = self.cp.clone();
        tokio::spawn(async move {
            // An agent that exits (Ctrl-C on `coscale up` stops them all at once) or loses its
            // connection often ends the stream with a transport error rather than its end:
            // both are a disconnect, told as one (a crash is the provisioner's warning).
            let broken = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => cp.on_message(&server, replica, session, msg),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            cp.on_disconnect(&server, replica, session, broken);
        });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}
