//! The all-in-one platform of `coscale up` (and `coscale demo`): control plane,
//! router and local provisioner in one process, server replicas as child processes.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use coscale_api::rest::Endpoints;
use coscale_control::provision::{self, AgentCommand, Backend, ProvisionConfig};
use coscale_control::service::{ControlConfig, ControlPlane};
use coscale_router::{RouterConfig, RouterHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Where server replicas come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Provisioner {
    /// Child processes of `coscale up` (one machine).
    #[default]
    Local,
    /// Pods of a StatefulSet per Server that connect by themselves; the control plane
    /// publishes each Server's `scaleTarget` for the operator.
    Kubernetes,
}

/// Options of `coscale up`.
#[derive(Debug, Clone)]
pub struct PlatformOptions {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub agent_addr: SocketAddr,
    pub router_http_addr: SocketAddr,
    pub router_grpc_addr: SocketAddr,
    /// The program that runs an agent (normally this binary) and its first arguments.
    pub agent_program: PathBuf,
    pub agent_args: Vec<String>,
    /// Replicas exit when the control plane has been gone this long.
    pub orphan_grace: Duration,
    pub reconcile_interval: Duration,
    pub stats_interval: Duration,
    pub autoscale: coscale_control::autoscaling::AutoscaleConfig,
    /// HorizontalPodAutoscaler controller settings and metrics source.
    pub hpa: coscale_control::hpa_controller::HpaConfig,
    pub router: RouterConfig,
    pub provisioner: Provisioner,
    /// `--auth kubernetes`: how to check ServiceAccount tokens.
    pub token_review: Option<coscale_control::auth::TokenReviewConfig>,
    /// HTTPS listener of the custom metrics API, and its certificates.
    pub custom_metrics_addr: Option<SocketAddr>,
    pub tls: coscale_control::tls::TlsSettings,
    /// gRPC listener of the KEDA external scaler.
    pub keda_addr: Option<SocketAddr>,
}

/// A running platform.
pub struct Platform {
    pub endpoints: Endpoints,
    pub token: String,
    pub control: ControlPlane,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Reads the token in `dir`, or creates one readable only by the user.
pub fn ensure_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect()
    };
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?
    };
    f.write_all(token.as_bytes())?;
    Ok(token)
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

impl Platform {
    /// Starts everything; returns once every listener is bound and `endpoints.json`
    /// is written.
    pub async fn start(opts: PlatformOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("cannot create {}", opts.data_dir.display()))?;
        let token = ensure_token(&opts.data_dir)?;
        let control = ControlPlane::open(ControlConfig {
            data_dir: opts.data_dir.clone(),
            token: token.clone(),
            reconcile_interval: opts.reconcile_interval,
            stats_interval: opts.stats_interval,
            autoscale: opts.autoscale.clone(),
            hpa: opts.hpa.clone(),
            token_review: opts.token_review.clone(),
        })?;
        let api = bind(opts.api_addr, "control-plane API").await?;
        let agents = bind(opts.agent_addr, "agent channel").await?;
        let rhttp = bind(opts.router_http_addr, "router (REST)").await?;
        let rgrpc = bind(opts.router_grpc_addr, "router (gRPC)").await?;
        let custom_metrics = match opts.custom_metrics_addr {
            Some(a) => Some((
                bind(a, "custom metrics API (TLS)").await?,
                coscale_control::tls::server_config(&opts.tls)?,
            )),
            None => None,
        };
        let keda = match opts.keda_addr {
            Some(a) => Some(bind(a, "KEDA external scaler").await?),
            None => None,
        };
        let api_addr = api.local_addr()?;
        let agent_addr = agents.local_addr()?;
        let endpoints = Endpoints {
            api: format!("http://{api_addr}"),
            router_http: format!("http://{}", rhttp.local_addr()?),
            router_grpc: format!("http://{}", rgrpc.local_addr()?),
            metrics: format!("http://{api_addr}/metrics"),
            agent: Some(format!("http://{agent_addr}")),
            custom_metrics: match &custom_metrics {
                Some((l, _)) => Some(format!("https://{}", l.local_addr()?)),
                None => None,
            },
            keda: match &keda {
                Some(l) => Some(format!("http://{}", l.local_addr()?)),
                None => None,
            },
        };
        let (stop, stopped) = watch::channel(false);
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        {
            let app = coscale_control::api::router(control.clone());
            let rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(api, app).with_graceful_shutdown(wait(rx)).await {
                    tracing::error!("control-plane API failed: {e}");
                }
            }));
        }
        {
            let svc = control.agent_service();
            let rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(coscale_net::nodelay_incoming(agents), wait(rx))
                    .await;
                if let Err(e) = r {
                    tracing::error!("agent channel failed: {e}");
                }
            }));
        }
        if let Some((listener, tls)) = custom_metrics {
            let app = coscale_control::tls::custom_metrics_app(control.clone());
            let rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                coscale_control::tls::serve(listener, tls, app, wait(rx)).await
            }));
        }
        if let Some(listener) = keda {
            let svc = coscale_control::keda::service(control.clone());
            let rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(coscale_net::nodelay_incoming(listener), wait(rx))
                    .await;
                if let Err(e) = r {
                    tracing::error!("KEDA external scaler failed: {e}");
                }
            }));
        }
        {
            let handle = RouterHandle::new(opts.router.clone(), control.routes());
            let rx = stopped.clone();
            if opts.router.threads == 0 {
                tasks.push(tokio::spawn(async move {
                    coscale_router::serve(handle, rhttp, rgrpc, wait(rx)).await;
                }));
            } else {
                let threads = opts.router.threads;
                let router =
                    coscale_router::serve_dedicated(handle, rhttp, rgrpc, threads, wait(rx))?;
                tasks.push(tokio::task::spawn_blocking(move || match router.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("router failed: {e}"),
                    Err(_) => tracing::error!("router thread panicked"),
                }));
            }
        }
        {
            let cp = control.clone();
            let rx = stopped.clone();
            tasks.push(tokio::spawn(
                async move { cp.run_reconciler(wait(rx)).await },
            ));
        }
        {
            let backend = match opts.provisioner {
                Provisioner::Local => Backend::Local(AgentCommand {
                    program: opts.agent_program.clone(),
                    args: opts.agent_args.clone(),
                    control_url: format!("http://{agent_addr}"),
                    token_file: opts.data_dir.join("token"),
                    log_dir: opts.data_dir.join("logs"),
                    socket_dir: coscale_control::provision::socket_dir(&opts.data_dir),
                    orphan_grace: opts.orphan_grace,
                }),
                Provisioner::Kubernetes => Backend::External,
            };
            let cp = control.clone();
            let rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                provision::run(cp, backend, ProvisionConfig::default(), wait(rx)).await
            }));
        }
        let json = serde_json::to_vec_pretty(&endpoints)?;
        std::fs::write(opts.data_dir.join("endpoints.json"), json)?;
        info!(api = %endpoints.api, router = %endpoints.router_http, grpc = %endpoints.router_grpc, "coscale is up");
        Ok(Self {
            endpoints,
            token,
            control,
            stop,
            tasks,
        })
    }

    /// Stops every component and every server replica process.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
