//! The agent's stream to the control plane: register, carry out load/unload/drain
//! commands, report their results and push stats; reconnect with backoff.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use coscale_api::pb::agent::agent_service_client::AgentServiceClient;
use coscale_api::pb::agent::{
    agent_message, control_message, model_event, AgentMessage, Leaving, Load, ModelEvent, ModelRef,
    Register, Unload,
};
use coscale_api::routing::internal_model_name;
use tokio::sync::{broadcast, mpsc, Mutex};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::artifact;
use crate::backend::BackendEvent;
use crate::dataplane::DataPlane;
use crate::AgentConfig;

/// How a session ended.
pub enum SessionEnd {
    /// The control plane told this replica to drain.
    Drain,
    /// The stream closed or failed.
    Lost(String),
}

/// Per model-version locks, so operations on one version run in order.
#[derive(Default)]
pub struct Locks {
    inner: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Locks {
    fn get(&self, key: &str) -> Arc<Mutex<()>> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_owned()).or_default().clone()
    }
}

/// What a session needs.
pub struct Ctx {
    pub config: AgentConfig,
    pub dp: DataPlane,
    pub locks: Locks,
    pub http_addr: std::net::SocketAddr,
    pub grpc_addr: std::net::SocketAddr,
    /// Models reported unloaded because the backend lost them (its server died), by
    /// internal name, with when. The backend reloads them itself; if the control plane
    /// does not ask for one again within [`ORPHAN_GRACE`], it is unloaded here too.
    pub orphans: std::sync::Mutex<HashMap<String, Instant>>,
    /// Becomes true when the agent is asked to leave (SIGTERM).
    pub leaving: tokio::sync::watch::Receiver<bool>,
}

/// How long a lost-and-restored model stays loaded without the control plane asking.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

fn event(
    name: &str,
    version: u32,
    kind: model_event::Kind,
    message: String,
    mem: u64,
) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Event(ModelEvent {
            model: Some(ModelRef {
                name: name.to_owned(),
                version,
            }),
            kind: kind as i32,
            message,
            measured_memory_bytes: mem,
        })),
    }
}

/// Runs one session until it ends.
pub async fn run_once(ctx: &Arc<Ctx>, connected: &mut bool) -> Result<SessionEnd, String> {
    let cfg = &ctx.config;
    let channel = Endpoint::from_shared(cfg.control_plane.clone())
        .map_err(|e| format!("bad control plane URL {:?}: {e}", cfg.control_plane))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the control plane at {}: {e}",
                cfg.control_plane
            )
        })?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    let register = Register {
        server: cfg.server.clone(),
        replica: cfg.replica,
        capabilities: cfg.capabilities.clone(),
        memory_bytes: cfg.memory_bytes,
        overcommit_percent: cfg.overcommit_percent,
        inference_http: ctx.http_addr.to_string(),
        inference_grpc: ctx.grpc_addr.to_string(),
        loaded: ctx
            .dp
            .stats
            .loaded()
            .into_iter()
            .map(|(name, version)| ModelRef { name, version })
            .collect(),
        pid: std::process::id(),
        runtime: ctx.dp.backend.kind().to_owned(),
        runtime_error: ctx.dp.backend.unavailable_reason().unwrap_or_default(),
        data_socket: cfg
            .data_socket
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Register(register)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let token = match &cfg.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
            .trim()
            .to_owned(),
        None => cfg.token.clone(),
    };
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token contains characters not allowed in a header".to_owned())?;
    request.metadata_mut().insert("authorization", auth);
    let mut inbound = client
        .session(request)
        .await
        .map_err(|s| format!("control plane refused the session: {}", s.message()))?
        .into_inner();
    *connected = true;
    info!(server = %cfg.server, replica = cfg.replica, "connected to the control plane");
    let mut stats_every = tokio::time::interval(Duration::from_secs(1));
    let mut backend_events = ctx.dp.backend.subscribe();
    let mut leaving = ctx.leaving.clone();
    let mut leave_sent = false;
    loop {
        if !leave_sent && *leaving.borrow_and_update() {
            leave_sent = true;
            let leave = AgentMessage {
                kind: Some(agent_message::Kind::Leaving(Leaving {})),
            };
            tx.send(leave).await.map_err(|e| e.to_string())?;
        }
        tokio::select! {
            _ = leaving.changed(), if !leave_sent => continue,
            ev = next_backend_event(&mut backend_events) => {
                if let Some(BackendEvent::Lost { models, reason }) = ev {
                    report_lost(ctx, &models, &reason, &tx).await;
                }
            }
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(SessionEnd::Lost("control plane closed the stream".to_owned())),
                    Err(s) => return Ok(SessionEnd::Lost(s.message().to_owned())),
                };
                match msg.kind {
                    Some(control_message::Kind::Accepted(a)) => {
                        let ms = u64::from(a.stats_interval_millis.max(50));
                        stats_every = tokio::time::interval(Duration::from_millis(ms));
                    }
                    Some(control_message::Kind::Load(load)) => {
                        tokio::spawn(do_load(ctx.clone(), load, tx.clone()));
                    }
                    Some(control_message::Kind::Unload(unload)) => {
                        tokio::spawn(do_unload(ctx.clone(), unload, tx.clone()));
                    }
                    Some(control_message::Kind::Drain(_)) => return Ok(SessionEnd::Drain),
                    None => {}
                }
            }
            _ = stats_every.tick() => {
                let stats = ctx.dp.stats.snapshot();
                if tx.try_send(AgentMessage { kind: Some(agent_message::Kind::Stats(stats)) }).is_err() {
                    warn!("stats not sent: the control plane stream is backed up");
                }
            }
        }
    }
}

/// The next event of the backend, or never when it raises none.
async fn next_backend_event(
    rx: &mut Option<broadcast::Receiver<BackendEvent>>,
) -> Option<BackendEvent> {
    match rx {
        Some(r) => match r.recv().await {
            Ok(ev) => Some(ev),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => {
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// The backend's server died: tell the control plane these models are not here any
/// more (so routers stop sending to this replica and placement re-plans), and forget
/// them after [`ORPHAN_GRACE`] unless the control plane asks for them again.
async fn report_lost(
    ctx: &Arc<Ctx>,
    models: &[String],
    reason: &str,
    tx: &mpsc::Sender<AgentMessage>,
) {
    let loaded = ctx.dp.stats.loaded();
    for internal in models {
        let Some((name, version)) = loaded
            .iter()
            .find(|(n, v)| internal_model_name(n, *v) == *internal)
        else {
            continue;
        };
        warn!(model = %internal, "reporting unloaded: {reason}");
        let since = Instant::now();
        ctx.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(internal.clone(), since);
        let _ = tx
            .send(event(
                name,
                *version,
                model_event::Kind::Unloaded,
                format!("{reason}; restarting the server"),
                0,
            ))
            .await;
        tokio::spawn(forget_orphan(ctx.clone(), internal.clone(), since));
    }
}

async fn forget_orphan(ctx: Arc<Ctx>, internal: String, since: Instant) {
    tokio::time::sleep(ORPHAN_GRACE).await;
    let lock = ctx.locks.get(&internal);
    let _guard = lock.lock().await;
    let still = {
        let mut orphans = ctx.orphans.lock().unwrap_or_else(|p| p.into_inner());
        let still = orphans.get(&internal) == Some(&since);
        if still {
            orphans.remove(&internal);
        }
        still
    };
    if still {
        info!(model = %internal, "not requested again after the server restart; unloading");
        let _ = ctx.dp.backend.unload(&internal).await;
        ctx.dp.stats.model_unloaded(&internal);
    }
}

async fn do_load(ctx: Arc<Ctx>, load: Load, tx: mpsc::Sender<AgentMessage>) {
    let Some(model) = load.model else { return };
    let internal = internal_model_name(&model.name, model.version);
    let lock = ctx.locks.get(&internal);
    let _guard = lock.lock().await;
    ctx.orphans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&internal);
    let reply = if ctx.dp.backend.ready(&internal) {
        let mem = if load.memory_bytes > 0 {
            load.memory_bytes
        } else {
            ctx.dp.backend.memory_of(&internal).unwrap_or(0)
        };
        ctx.dp
            .stats
            .model_loaded(&model.name, model.version, &internal, mem);
        event(
            &model.name,
            model.version,
            model_event::Kind::Loaded,
            String::new(),
            mem,
        )
    } else {
        match artifact::resolve(&load.storage_uri) {
            Err(e) => event(
                &model.name,
                model.version,
                model_event::Kind::LoadFailed,
                e.to_string(),
                0,
            ),
            Ok(path) => {
                let res = tokio::time::timeout(
                    ctx.config.load_timeout,
                    ctx.dp.backend.load(&internal, &path),
                )
                .await;
                match res {
                    Ok(Ok(estimated)) => {
                        let mem = if load.memory_bytes > 0 {
                            load.memory_bytes
                        } else {
                            estimated
                        };
                        ctx.dp
                            .stats
                            .model_loaded(&model.name, model.version, &internal, mem);
                        info!(model = %internal, "loaded");
                        event(
                            &model.name,
                            model.version,
                            model_event::Kind::Loaded,
                            String::new(),
                            mem,
                        )
                    }
                    Ok(Err(e)) => {
                        warn!(model = %internal, "load failed: {e}");
                        event(
                            &model.name,
                            model.version,
                            model_event::Kind::LoadFailed,
                            e.to_string(),
                            0,
                        )
                    }
                    Err(_) => event(
                        &model.name,
                        model.version,
                        model_event::Kind::LoadFailed,
                        format!("load timed out after {:?}", ctx.config.load_timeout),
                        0,
                    ),
                }
            }
        }
    };
    let _ = tx.send(reply).await;
}

async fn do_unload(ctx: Arc<Ctx>, unload: Unload, tx: mpsc::Sender<AgentMessage>) {
    let Some(model) = unload.model else { return };
    let internal = internal_model_name(&model.name, model.version);
    let lock = ctx.locks.get(&internal);
    let _guard = lock.lock().await;
    // Let routers that picked this replica before the routing change finish sending.
    tokio::time::sleep(ctx.config.unload_grace).await;
    if let Some(counters) = ctx.dp.stats.model_unloading(&internal) {
        wait_idle(ctx.config.drain_timeout, || {
            counters.in_flight.load(Ordering::Relaxed)
        })
        .await;
    }
    let result = ctx.dp.backend.unload(&internal).await;
    ctx.dp.stats.model_unloaded(&internal);
    let reply = match result {
        Ok(()) | Err(coscale_runtime::RuntimeError::NotFound(_)) => {
            info!(model = %internal, "unloaded");
            event(
                &model.name,
                model.version,
                model_event::Kind::Unloaded,
                String::new(),
                0,
            )
        }
        Err(e) => event(
            &model.name,
            model.version,
            model_event::Kind::UnloadFailed,
            e.to_string(),
            0,
        ),
    };
    let _ = tx.send(reply).await;
}

/// Waits until `in_flight()` is 0 or the deadline passes.
pub async fn wait_idle(deadline: Duration, in_flight: impl Fn() -> u32) {
    let until = Instant::now() + deadline;
    while in_flight() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
