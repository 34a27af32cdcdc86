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

use anyhow::Context;
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
    /// File holding the bearer token, read again at every (re)connect (projected
    /// ServiceAccount tokens rotate); when set it wins over `token`.
    pub token_file: Option<std::path::PathBuf>,
    pub server: String,
    pub replica: u32,
    /// `builtin`, `mlserver`, `triton`.
    pub runtime: String,
    pub capabilities: Vec<String>,
    pub memory_bytes: u64,
    pub overcommit_percent: u32,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// A Unix-domain socket where the data plane listens too, V2 REST and gRPC on the one
    /// socket (given by `coscale up` to its local replicas; the router prefers it to TCP on
    /// loopback). Created with mode 0600 (a stale socket file at the path is replaced) and
    /// removed when the agent stops.
    pub data_socket: Option<std::path::PathBuf>,
    /// Host (IP or name) reported to the control plane for the data-plane addresses
    /// instead of the bound IP (required when binding 0.0.0.0, e.g. the pod IP).
    pub advertise_host: Option<String>,
    /// Longest time between a leave request (SIGTERM) and the exit: waiting for the
    /// control plane's `Drain`, then for requests in flight.
    pub leave_grace: Duration,
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
    /// Most inferences the built-in runtime runs at a time on this replica (None: one per
    /// core); the others queue inside the agent and count as inference lag.
    pub inference_parallelism: Option<usize>,
    /// The longest predicted inference the built-in runtime runs inline on the worker that
    /// read the request ([`coscale_runtime::Engine::infer_on_worker`]).
    pub inline_budget: Duration,
}

impl AgentConfig {
    pub fn new(control_plane: String, token: String, server: String, replica: u32) -> Self {
        Self {
            control_plane,
            token,
            token_file: None,
            server,
            replica,
            runtime: "builtin".to_owned(),
            capabilities: vec!["onnx".to_owned()],
            memory_bytes: 1 << 30,
            overcommit_percent: 10,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_socket: None,
            advertise_host: None,
            leave_grace: Duration::from_secs(25),
            exit_after_disconnect: None,
            body_limit: 64 << 20,
            load_timeout: Duration::from_secs(600),
            unload_grace: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(30),
            mlserver_command: None,
            mlserver_url: None,
            models_dir: None,
            inference_parallelism: None,
            inline_budget: coscale_runtime::INLINE_BUDGET,
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

/// The address reported to the control plane for a bound socket: the advertised
/// host with the bound port. A wildcard bind (0.0.0.0, ::) without an advertised host
/// is an error, since nobody can reach it.
pub async fn advertised(
    bound: SocketAddr,
    host: Option<&str>,
    what: &str,
) -> anyhow::Result<SocketAddr> {
    match host.map(str::trim).filter(|h| !h.is_empty()) {
        None if bound.ip().is_unspecified() => anyhow::bail!(
            "{what} is bound to {bound}, which cannot be advertised: set COSCALE_ADVERTISE_HOST (or POD_IP) to this replica's address"
        ),
        None => Ok(bound),
        Some(h) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            let found = tokio::net::lookup_host((h, bound.port()))
                .await
                .with_context(|| format!("cannot resolve the advertised host {h:?}"))?
                .find(|a| !a.ip().is_unspecified());
            found.ok_or_else(|| {
                anyhow::anyhow!("the advertised host {h:?} has no usable address for {what}")
            })
        }
    }
}

/// Binds the data plane's Unix socket at `path`: a socket file left there by an agent that
/// did not stop cleanly is replaced; any other file is an error. The socket is private to the
/// user (mode 0600).
fn bind_data_socket(path: &std::path::Path) -> anyhow::Result<DataSocket> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot replace the old socket {}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "--data-socket {} exists and is not a socket; not replacing it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the data-plane socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(DataSocket(listener))
}

/// The data plane's Unix socket (REST, and gRPC over HTTP/2). Its connections are [`coscale_net::UnixConn`]s, which the
/// reactor watches for readability only: with tokio's own stream the agent would wake once more
/// per answer, when the router reads it.
struct DataSocket(tokio::net::UnixListener);

impl axum::serve::Listener for DataSocket {
    type Io = coscale_net::UnixConn;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // axum's accept loop for Unix listeners (it logs and backs off on errors).
            let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
            match coscale_net::UnixConn::from_tokio(stream) {
                Ok(conn) => return (conn, addr),
                Err(e) => warn!("dropped a connection on the data-plane socket: {e}"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Runs an agent until it is drained, shut down, or loses its control plane.
/// `shutdown` stops at once; `leave` (SIGTERM) drains first: the control plane is told
/// the replica leaves, places its models elsewhere and answers `Drain`; requests in
/// flight finish; the whole bounded by [`AgentConfig::leave_grace`].
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    leave: impl Future<Output = ()>,
) -> anyhow::Result<Exit> {
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
    let grpc_listener = TcpListener::bind(config.grpc_addr).await?;
    // Bound before anything is spawned, so that a bad path fails the start cleanly.
    let unix = match &config.data_socket {
        Some(path) => Some((bind_data_socket(path)?, path.clone())),
        None => None,
    };
    let host = config.advertise_host.as_deref();
    let http_addr = advertised(http.local_addr()?, host, "the REST data plane").await?;
    let grpc_addr = advertised(grpc_listener.local_addr()?, host, "the gRPC data plane").await?;
    info!(%http_addr, %grpc_addr, server = %config.server, replica = config.replica, "agent listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let rest = dataplane::rest_app(dp.clone(), config.body_limit);
    let grpc = coscale_runtime::grpc_app(dataplane::grpc_service(dp.clone(), config.body_limit));
    let http_task = tokio::spawn({
        let rx = stop_rx.clone();
        let rest = rest.clone();
        coscale_runtime::serve_http(coscale_runtime::nodelay(http), rest, stopped(rx))
    });
    let socket_task = unix.map(|(unix, path)| {
        let rx = stop_rx.clone();
        // REST, and gRPC (HTTP/1.1 from the router, HTTP/2 with prior knowledge from other
        // clients) on the same socket: the router's calls to a local replica are cheaper over
        // it than over TCP on loopback.
        // (`into_service`: axum refuses a `Router` as a route's service.)
        let both = rest.clone().route_service(
            "/inference.GRPCInferenceService/{*method}",
            grpc.clone().into_service(),
        );
        tokio::spawn(async move {
            coscale_runtime::serve_http(unix, both, stopped(rx)).await;
            let _ = std::fs::remove_file(&path);
        })
    });
    let grpc_task = tokio::spawn({
        let rx = stop_rx.clone();
        coscale_runtime::serve_http(coscale_runtime::nodelay(grpc_listener), grpc, stopped(rx))
    });

    let (leaving_tx, leaving_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        dp: dp.clone(),
        locks: Locks::default(),
        http_addr,
        grpc_addr,
        orphans: std::sync::Mutex::default(),
        leaving: leaving_rx,
    });
    tokio::pin!(shutdown);
    tokio::pin!(leave);
    let mut leave_deadline: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let mut lost_since = Instant::now();
    let exit = loop {
        let mut connected = false;
        let end = {
            let session = session::run_once(&ctx, &mut connected);
            tokio::pin!(session);
            loop {
                let until = leave_deadline.unwrap_or_else(Instant::now);
                tokio::select! {
                    _ = &mut shutdown => break None,
                    _ = &mut leave, if leave_deadline.is_none() => {
                        info!("asked to leave: telling the control plane, then draining");
                        leave_deadline = Some(Instant::now() + config.leave_grace);
                        let _ = leaving_tx.send(true);
                    }
                    _ = tokio::time::sleep_until(until), if leave_deadline.is_some() => {
                        warn!("no drain from the control plane within the grace period; draining anyway");
                        break Some(Ok(SessionEnd::Drain));
                    }
                    end = &mut session => break Some(end),
                }
            }
        };
        let Some(end) = end else { break Exit::Shutdown };
        if connected {
            backoff = Duration::from_millis(100);
            lost_since = Instant::now();
        }
        match end {
            Ok(SessionEnd::Drain) => {
                drain(&config, &dp, &ready, leave_deadline).await;
                break Exit::Drained;
            }
            Ok(SessionEnd::Lost(why)) | Err(why) => {
                warn!("control plane session ended: {why}");
                if leave_deadline.is_some() {
                    // leaving without a control plane: finish what is in flight and go
                    drain(&config, &dp, &ready, leave_deadline).await;
                    break Exit::Drained;
                }
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
            _ = &mut leave, if leave_deadline.is_none() => {
                drain(&config, &dp, &ready, None).await;
                break Exit::Drained;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    if let Some(task) = socket_task {
        let _ = task.await;
    }
    let _ = grpc_task.await;
    info!(?exit, "agent stopped");
    Ok(exit)
}

/// Stops taking new requests and waits for those in flight, bounded by the drain
/// timeout and, when leaving, by the leave deadline.
async fn drain(
    config: &AgentConfig,
    dp: &DataPlane,
    ready: &AtomicBool,
    deadline: Option<Instant>,
) {
    info!("draining: waiting for requests in flight");
    ready.store(false, Ordering::Relaxed);
    let left = deadline.map_or(config.drain_timeout, |d| {
        d.saturating_duration_since(Instant::now())
            .min(config.drain_timeout)
    });
    tokio::time::sleep(config.unload_grace.min(left)).await;
    let left = deadline.map_or(config.drain_timeout, |d| {
        d.saturating_duration_since(Instant::now())
            .min(config.drain_timeout)
    });
    session::wait_idle(left, || dp.stats.total_in_flight()).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_advertised_address_replaces_a_wildcard_bind_and_keeps_the_port() {
        let any: SocketAddr = "0.0.0.0:9100".parse().unwrap();
        let err = advertised(any, None, "the REST data plane")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("COSCALE_ADVERTISE_HOST"), "{err}");
        assert!(advertised(any, Some("  "), "x").await.is_err());
        let a = advertised(any, Some("10.1.2.3"), "x").await.unwrap();
        assert_eq!(a, "10.1.2.3:9100".parse().unwrap());
        let v6 = advertised(any, Some("[fd00::7]"), "x").await.unwrap();
        assert_eq!(v6, "[fd00::7]:9100".parse().unwrap());
        let named = advertised(any, Some("localhost"), "x").await.unwrap();
        assert!(named.ip().is_loopback() && named.port() == 9100, "{named}");
        let bound: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(advertised(bound, None, "x").await.unwrap(), bound);
    }
}
