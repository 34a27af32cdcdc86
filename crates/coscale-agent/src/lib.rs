//! The agent: one per server replica.
//!
//! Registers with the control plane over a gRPC stream (reconnecting with backoff),
//! fetches artifacts and loads/unloads models on its runtime backend, serves the V2
//! data plane (REST + gRPC) that routers forward to while counting requests,
//! in-flight requests and latency, exposes `/metrics`, and drains before it exits.
//!
//! Must not depend on: the control plane or router crates (wire protocols only).

pub mod artifact;
pub mod backend;
pub mod dataplane;
pub mod session;
pub mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::dataplane::DataPlane;
use crate::session::{Ctx, Locks, SessionEnd};

/// Everything an agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control plane agent endpoint, e.g. `http://127.0.0.1:9005`.
    pub control_plane: String,
    pub token: String,
    pub server: String,
    pub replica: u32,
    /// `builtin`, `mlserver`, `triton`.
    pub runtime: String,
    pub capabilities: Vec<String>,
    pub memory_bytes: u64,
    pub overcommit_percent: u32,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Exit when the control plane has been unreachable this long (None = never).
    pub exit_after_disconnect: Option<Duration>,
    pub body_limit: usize,
    pub load_timeout: Duration,
    /// Delay before an unload takes effect, so requests routed just before the
    /// routing change are still served.
    pub unload_grace: Duration,
    /// Longest wait for in-flight requests when unloading or draining.
    pub drain_timeout: Duration,
    /// The `mlserver` executable for `runtime: mlserver` (None: `COSCALE_MLSERVER`,
    /// then `PATH`).
    pub mlserver_command: Option<std::path::PathBuf>,
    /// An MLServer already running beside the agent (REST base URL): attach to it
    /// instead of starting one (Kubernetes sidecar).
    pub mlserver_url: Option<String>,
    /// Model repository folder MLServer serves (required with `mlserver_url`: a folder
    /// both containers share; otherwise a private temporary folder when None).
    pub models_dir: Option<std::path::PathBuf>,
}

impl AgentConfig {
    pub fn new(control_plane: String, token: String, server: String, replica: u32) -> Self {
        Self {
            control_plane,
            token,
            server,
            replica,
            runtime: "builtin".to_owned(),
            capabilities: vec!["onnx".to_owned()],
            memory_bytes: 1 << 30,
            overcommit_percent: 10,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            exit_after_disconnect: None,
            body_limit: 64 << 20,
            load_timeout: Duration::from_secs(600),
            unload_grace: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(30),
            mlserver_command: None,
            mlserver_url: None,
            models_dir: None,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Told to drain; in-flight requests finished.
    Drained,
    /// Asked to stop.
    Shutdown,
    /// The control plane was unreachable for longer than allowed.
    ControlPlaneGone,
}

/// Runs an agent until it is drained, shut down, or loses its control plane.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<Exit> {
    let backend = backend::for_config(&config);
    let stats = stats::Stats::new(
        &config.server,
        config.replica,
        config.memory_bytes,
        config.overcommit_percent,
    );
    let ready = Arc::new(AtomicBool::new(true));
    let dp = DataPlane {
        backend,
        stats,
        ready: ready.clone(),
    };
    let http = TcpListener::bind(config.http_addr).await?;
    let grpc = TcpListener::bind(config.grpc_addr).await?;
    let http_addr = http.local_addr()?;
    let grpc_addr = grpc.local_addr()?;
    info!(%http_addr, %grpc_addr, server = %config.server, replica = config.replica, "agent listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let rest = dataplane::rest_app(dp.clone(), config.body_limit);
    let http_task = tokio::spawn({
        let rx = stop_rx.clone();
        async move {
            axum::serve(http, rest)
                .with_graceful_shutdown(stopped(rx))
                .await
        }
    });
    let grpc_task = tokio::spawn({
        let rx = stop_rx.clone();
        let svc = dataplane::grpc_service(dp.clone(), config.body_limit);
        async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc),
                    stopped(rx),
                )
                .await
        }
    });

    let ctx = Arc::new(Ctx {
        config: config.clone(),
        dp: dp.clone(),
        locks: Locks::default(),
        http_addr,
        grpc_addr,
        orphans: std::sync::Mutex::default(),
    });
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    let mut lost_since = Instant::now();
    let exit = loop {
        let mut connected = false;
        let end = tokio::select! {
            _ = &mut shutdown => break Exit::Shutdown,
            end = session::run_once(&ctx, &mut connected) => end,
        };
        if connected {
            backoff = Duration::from_millis(100);
            lost_since = Instant::now();
        }
        match end {
            Ok(SessionEnd::Drain) => {
                info!("draining: waiting for requests in flight");
                ready.store(false, Ordering::Relaxed);
                tokio::time::sleep(config.unload_grace).await;
                session::wait_idle(config.drain_timeout, || dp.stats.total_in_flight()).await;
                break Exit::Drained;
            }
            Ok(SessionEnd::Lost(why)) | Err(why) => {
                warn!("control plane session ended: {why}");
            }
        }
        if config
            .exit_after_disconnect
            .is_some_and(|limit| lost_since.elapsed() > limit)
        {
            break Exit::ControlPlaneGone;
        }
        tokio::select! {
            _ = &mut shutdown => break Exit::Shutdown,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    let _ = grpc_task.await;
    info!(?exit, "agent stopped");
    Ok(exit)
}
