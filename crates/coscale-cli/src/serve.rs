//! Long-running commands: `coscale up`, `coscale agent`, `coscale runtime`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coscale_agent::{AgentConfig, Exit};
use coscale_router::RouterConfig;

use crate::client::Client;
use crate::objects;
use crate::platform::{Platform, PlatformOptions};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where desired state, the token, endpoints.json and replica logs live.
    #[arg(long, env = "COSCALE_DATA_DIR", default_value = ".coscale")]
    pub data_dir: PathBuf,
    /// Control-plane REST API address.
    #[arg(long, env = "COSCALE_API_ADDR", default_value = "127.0.0.1:9004")]
    pub api_addr: SocketAddr,
    /// Address agents connect to (gRPC).
    #[arg(long, env = "COSCALE_AGENT_ADDR", default_value = "127.0.0.1:9005")]
    pub agent_addr: SocketAddr,
    /// Router V2 REST address (the inference endpoint).
    #[arg(long, env = "COSCALE_ROUTER_ADDR", default_value = "127.0.0.1:9000")]
    pub router_addr: SocketAddr,
    /// Router V2 gRPC address.
    #[arg(
        long,
        env = "COSCALE_ROUTER_GRPC_ADDR",
        default_value = "127.0.0.1:9500"
    )]
    pub router_grpc_addr: SocketAddr,
    /// Manifests to apply once the platform is up.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Largest inference request body (bytes); larger ones get 413.
    #[arg(long, env = "COSCALE_BODY_LIMIT", default_value_t = 64 << 20)]
    pub body_limit: usize,
    /// Seconds between periodic reconciles (retries of unplaced models) and autoscaling rounds.
    #[arg(long, env = "COSCALE_RECONCILE_SECONDS", default_value_t = 0.5)]
    pub reconcile_seconds: f64,
    /// Seconds after which server replicas exit when this process is gone (crash).
    #[arg(long, env = "COSCALE_ORPHAN_GRACE_SECONDS", default_value_t = 30)]
    pub orphan_grace_seconds: u64,
    /// Threads of the router's own runtime: 1 = one thread that handles a request from end to
    /// end; N > 1 = N worker threads; 0 = share the control plane's runtime.
    #[arg(long, env = "COSCALE_ROUTER_THREADS", default_value_t = 0)]
    pub router_threads: usize,
    #[command(flatten)]
    pub autoscaling: AutoscalingArgs,
    #[command(flatten)]
    pub hpa: crate::hpa::HpaArgs,
}

/// Global native-autoscaling knobs; each Model may override them by annotation
/// (`coscale.io/autoscaling-mode`, `coscale.io/inference-lag-threshold`, ...).
#[derive(Debug, Clone, clap::Args)]
pub struct AutoscalingArgs {
    /// Model step mode: `proportional` (coscale's default) or `seldon` (±1 per period).
    #[arg(long, env = "COSCALE_AUTOSCALING_MODE")]
    pub autoscaling_mode: Option<String>,
    /// In-flight requests per model replica that call for more replicas.
    #[arg(long, env = "SELDON_MODEL_INFERENCE_LAG_THRESHOLD")]
    pub model_inference_lag_threshold: Option<String>,
    /// Seconds without requests after which a model scales down.
    #[arg(long, env = "SELDON_MODEL_INACTIVE_SECONDS_THRESHOLD")]
    pub model_inactive_seconds_threshold: Option<String>,
    /// Seconds between autoscaling decisions of a model.
    #[arg(long, env = "SELDON_SCALING_STATS_PERIOD_SECONDS")]
    pub scaling_stats_period_seconds: Option<String>,
    /// Seconds a model must be stable before it scales down.
    #[arg(long, env = "COSCALE_SCALING_STABILITY_WINDOW_SECONDS")]
    pub scaling_stability_window_seconds: Option<String>,
    /// Seconds of in-flight samples averaged by the proportional mode.
    #[arg(long, env = "COSCALE_SCALING_LAG_WINDOW_SECONDS")]
    pub scaling_lag_window_seconds: Option<String>,
    /// Most model replicas one server packing step may move (0 disables packing).
    #[arg(long, env = "COSCALE_SERVER_MAX_MOVES", default_value_t = 2)]
    pub server_max_moves: u32,
    /// Seconds between periodic packing checks of a server.
    #[arg(
        long,
        env = "COSCALE_SERVER_PACK_PERIOD_SECONDS",
        default_value_t = 60.0
    )]
    pub server_pack_period_seconds: f64,
    /// Seconds an emptied server replica is kept before it is released.
    #[arg(
        long,
        env = "COSCALE_SERVER_SCALE_DOWN_DELAY_SECONDS",
        default_value_t = 30.0
    )]
    pub server_scale_down_delay_seconds: f64,
}

impl AutoscalingArgs {
    pub fn config(&self) -> anyhow::Result<coscale_control::autoscaling::AutoscaleConfig> {
        use coscale_core::autoscale as a;
        let mut env = std::collections::BTreeMap::new();
        for (key, value) in [
            (a::ENV_MODE, &self.autoscaling_mode),
            (a::ENV_LAG_THRESHOLD, &self.model_inference_lag_threshold),
            (
                a::ENV_INACTIVE_SECONDS,
                &self.model_inactive_seconds_threshold,
            ),
            (a::ENV_STATS_PERIOD, &self.scaling_stats_period_seconds),
            (
                a::ENV_STABILITY_WINDOW,
                &self.scaling_stability_window_seconds,
            ),
            (a::ENV_LAG_WINDOW, &self.scaling_lag_window_seconds),
        ] {
            if let Some(v) = value {
                env.insert(key.to_owned(), v.clone());
            }
        }
        let model = a::ModelPolicyConfig::from_env_map(&env)
            .map_err(|e| anyhow::anyhow!("autoscaling settings: {e}"))?;
        let ms = |s: f64| (s.max(0.0) * 1000.0) as u64;
        Ok(coscale_control::autoscaling::AutoscaleConfig {
            model,
            server: a::ServerPlanConfig {
                max_moves_per_period: self.server_max_moves,
                pack_period_ms: ms(self.server_pack_period_seconds),
                scale_down_delay_ms: ms(self.server_scale_down_delay_seconds),
            },
        })
    }
}

impl UpArgs {
    pub fn options(&self) -> anyhow::Result<PlatformOptions> {
        let program = std::env::current_exe().context("cannot find the coscale binary")?;
        Ok(PlatformOptions {
            data_dir: self.data_dir.clone(),
            api_addr: self.api_addr,
            agent_addr: self.agent_addr,
            router_http_addr: self.router_addr,
            router_grpc_addr: self.router_grpc_addr,
            agent_program: program,
            agent_args: vec!["agent".to_owned()],
            orphan_grace: Duration::from_secs(self.orphan_grace_seconds),
            reconcile_interval: Duration::from_secs_f64(self.reconcile_seconds.max(0.05)),
            stats_interval: Duration::from_millis(500),
            autoscale: self.autoscaling.config()?,
            hpa: self.hpa.config()?,
            router: RouterConfig {
                body_limit_bytes: self.body_limit,
                threads: self.router_threads,
                ..RouterConfig::default()
            },
        })
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let platform = Platform::start(args.options()?).await?;
    let ep = &platform.endpoints;
    eprintln!("coscale is up");
    eprintln!("  api        {}", ep.api);
    eprintln!(
        "  inference  {} (REST)  {} (gRPC)",
        ep.router_http, ep.router_grpc
    );
    eprintln!("  metrics    {}", ep.metrics);
    eprintln!("  data       {}", args.data_dir.display());
    let client = Client::from_parts(platform.endpoints.clone(), platform.token.clone());
    for file in &args.files {
        let req = objects::manifest_request(file, false)?;
        match client.apply(&req).await {
            Ok(resp) => objects::print_results(&resp),
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    eprintln!("press Ctrl-C to stop");
    stop_signal().await;
    eprintln!("stopping...");
    platform.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Control plane agent endpoint URL.
    #[arg(long, env = "COSCALE_CONTROL_PLANE")]
    pub control_plane: String,
    /// File holding the bearer token.
    #[arg(long, env = "COSCALE_TOKEN_FILE")]
    pub token_file: PathBuf,
    #[arg(long)]
    pub server: String,
    #[arg(long)]
    pub replica: u32,
    #[arg(long, default_value = "builtin")]
    pub runtime: String,
    /// Comma-separated capabilities.
    #[arg(long, value_delimiter = ',', default_value = "onnx")]
    pub capabilities: Vec<String>,
    #[arg(long, default_value_t = 1 << 30)]
    pub memory_bytes: u64,
    #[arg(long, default_value_t = 10)]
    pub overcommit_percent: u32,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub grpc_addr: SocketAddr,
    /// Exit after the control plane is unreachable this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    pub exit_after_disconnect: u64,
    #[arg(long, env = "COSCALE_BODY_LIMIT", default_value_t = 64 << 20)]
    pub body_limit: usize,
    /// The `mlserver` executable for `--runtime mlserver` (default: `mlserver` on PATH).
    #[arg(long, env = "COSCALE_MLSERVER")]
    pub mlserver_command: Option<PathBuf>,
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("cannot read the token file {}", a.token_file.display()))?
        .trim()
        .to_owned();
    let mut cfg = AgentConfig::new(a.control_plane, token, a.server, a.replica);
    cfg.runtime = a.runtime;
    cfg.capabilities = a.capabilities;
    cfg.memory_bytes = a.memory_bytes;
    cfg.overcommit_percent = a.overcommit_percent;
    cfg.http_addr = a.http_addr;
    cfg.grpc_addr = a.grpc_addr;
    cfg.body_limit = a.body_limit;
    cfg.mlserver_command = a.mlserver_command;
    cfg.exit_after_disconnect =
        (a.exit_after_disconnect > 0).then(|| Duration::from_secs(a.exit_after_disconnect));
    let exit = coscale_agent::run(cfg, stop_signal()).await?;
    Ok(match exit {
        Exit::Drained | Exit::Shutdown => ExitCode::SUCCESS,
        Exit::ControlPlaneGone => {
            eprintln!("error: the control plane has been unreachable too long; exiting");
            ExitCode::FAILURE
        }
    })
}

#[derive(Debug, clap::Args)]
pub struct RuntimeArgs {
    /// Model repository: one folder per model holding its ONNX file.
    #[arg(long)]
    pub repository: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub grpc_addr: SocketAddr,
    /// Models to load at start (folder names in the repository).
    #[arg(long = "load")]
    pub load: Vec<String>,
    #[arg(long, default_value_t = 64 << 20)]
    pub body_limit: usize,
}

pub async fn runtime(a: RuntimeArgs) -> anyhow::Result<ExitCode> {
    let engine = Arc::new(coscale_runtime::Engine::new());
    for name in &a.load {
        coscale_runtime::load_from_repository(&engine, &a.repository, name)
            .with_context(|| format!("cannot load {name}"))?;
    }
    let http = tokio::net::TcpListener::bind(a.http_addr).await?;
    let grpc = tokio::net::TcpListener::bind(a.grpc_addr).await?;
    eprintln!(
        "coscale runtime: REST http://{}  gRPC http://{}",
        http.local_addr()?,
        grpc.local_addr()?
    );
    let app = coscale_runtime::rest_router(engine.clone(), a.repository.clone(), a.body_limit);
    let svc = coscale_runtime::grpc_service(engine, a.repository.clone());
    let rest = axum::serve(http, app).with_graceful_shutdown(stop_signal());
    let grpc = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            stop_signal(),
        );
    let (r, g) = tokio::join!(rest, grpc);
    r?;
    g?;
    Ok(ExitCode::SUCCESS)
}
