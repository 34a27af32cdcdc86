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
use crate::platform::{Platform, PlatformOptions, Provisioner};

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
    /// Where server replicas come from: `local` child processes, or `kubernetes` pods
    /// that connect by themselves (the operator scales their StatefulSets).
    #[arg(
        long,
        env = "COSCALE_PROVISIONER",
        value_enum,
        default_value_t = Provisioner::Local
    )]
    pub provisioner: Provisioner,
    /// Who may call the API, /metrics and the agent channel: `static` (the token in
    /// DATA_DIR/token) or `kubernetes` (also ServiceAccount tokens, audience `coscale`,
    /// checked with a TokenReview, of this namespace or of a namespace holding a Server;
    /// in-cluster configuration).
    #[arg(long, env = "COSCALE_AUTH", value_enum, default_value_t = AuthMode::Static)]
    pub auth: AuthMode,
    /// HTTPS address of the custom metrics API for the Kubernetes aggregation layer
    /// (`custom.metrics.k8s.io` v1beta1/v1beta2, discovery included).
    #[arg(long, env = "COSCALE_CUSTOM_METRICS_ADDR")]
    pub custom_metrics_addr: Option<SocketAddr>,
    /// PEM certificate of the custom metrics listener (default: self-signed at start).
    #[arg(long, env = "COSCALE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "COSCALE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA on the custom metrics listener
    /// (the aggregator's requestheader client CA).
    #[arg(long, env = "COSCALE_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// gRPC address of the KEDA external scaler (`externalscaler.ExternalScaler`).
    #[arg(long, env = "COSCALE_KEDA_SCALER_ADDR")]
    pub keda_scaler_addr: Option<SocketAddr>,
    /// Threads of the router's own runtime: 1 = one thread that handles a request from end to
    /// end; N > 1 = N worker threads; 0 = share the control plane's runtime.
    #[arg(long, env = "COSCALE_ROUTER_THREADS", default_value_t = 0)]
    pub router_threads: usize,
    #[command(flatten)]
    pub autoscaling: AutoscalingArgs,
    #[command(flatten)]
    pub hpa: crate::hpa::HpaArgs,
}

/// How bearer tokens are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Only the static token in DATA_DIR/token.
    Static,
    /// The static token and Kubernetes ServiceAccount tokens (TokenReview).
    Kubernetes,
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
            provisioner: self.provisioner,
            custom_metrics_addr: self.custom_metrics_addr,
            tls: coscale_control::tls::TlsSettings {
                cert_file: self.tls_cert_file.clone(),
                key_file: self.tls_key_file.clone(),
                client_ca_file: self.client_ca_file.clone(),
                self_signed_names: self_signed_names(),
            },
            keda_addr: self.keda_scaler_addr,
            token_review: match self.auth {
                AuthMode::Static => None,
                AuthMode::Kubernetes => {
                    Some(coscale_control::auth::TokenReviewConfig::in_cluster()?)
                }
            },
        })
    }
}

/// Names of a generated certificate: loopback and the control plane's Service.
fn self_signed_names() -> Vec<String> {
    let ns = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "coscale-system".to_owned());
    vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "coscale-control".to_owned(),
        format!("coscale-control.{ns}"),
        format!("coscale-control.{ns}.svc"),
    ]
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
    if let Some(cm) = &ep.custom_metrics {
        eprintln!("  custom metrics API  {cm}");
    }
    if let Some(k) = &ep.keda {
        eprintln!("  KEDA scaler  {k}");
    }
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
    /// File holding the bearer token (read again at every reconnect: projected
    /// ServiceAccount tokens rotate).
    #[arg(long, env = "COSCALE_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The Server this replica belongs to.
    #[arg(long, env = "COSCALE_SERVER")]
    pub server: String,
    /// Ordinal of this replica (default: the number at the end of --pod-name).
    #[arg(long, env = "COSCALE_REPLICA")]
    pub replica: Option<u32>,
    /// Pod name of a StatefulSet replica (`mlserver-2` is ordinal 2).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "COSCALE_RUNTIME", default_value = "builtin")]
    pub runtime: String,
    /// Comma-separated capabilities.
    #[arg(
        long,
        env = "COSCALE_CAPABILITIES",
        value_delimiter = ',',
        default_value = "onnx"
    )]
    pub capabilities: Vec<String>,
    #[arg(long, env = "COSCALE_MEMORY_BYTES", default_value_t = 1 << 30)]
    pub memory_bytes: u64,
    #[arg(long, env = "COSCALE_OVERCOMMIT_PERCENT", default_value_t = 10)]
    pub overcommit_percent: u32,
    /// V2 REST data-plane address (in pods `0.0.0.0:9100`).
    #[arg(long, env = "COSCALE_HTTP_ADDR", default_value = "127.0.0.1:0")]
    pub http_addr: SocketAddr,
    /// V2 gRPC data-plane address (in pods `0.0.0.0:9101`).
    #[arg(long, env = "COSCALE_GRPC_ADDR", default_value = "127.0.0.1:0")]
    pub grpc_addr: SocketAddr,
    /// Host reported to the control plane for the data-plane addresses (needed when
    /// binding 0.0.0.0).
    #[arg(long, env = "COSCALE_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// The pod's IP (downward API), advertised when --advertise-host is not set.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,
    /// Seconds from SIGTERM to exit at most: the control plane places this replica's
    /// models elsewhere, then requests in flight finish (keep below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "COSCALE_DRAIN_GRACE_SECONDS", default_value_t = 25.0)]
    pub drain_grace_seconds: f64,
    /// Exit after the control plane is unreachable this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    pub exit_after_disconnect: u64,
    #[arg(long, env = "COSCALE_BODY_LIMIT", default_value_t = 64 << 20)]
    pub body_limit: usize,
    /// The `mlserver` executable for `--runtime mlserver` (default: `mlserver` on PATH).
    #[arg(long, env = "COSCALE_MLSERVER")]
    pub mlserver_command: Option<PathBuf>,
    /// Attach to an MLServer already running beside the agent (REST URL, e.g. a sidecar's
    /// `http://127.0.0.1:8080`) instead of starting one; needs `--models-dir`.
    #[arg(long, env = "COSCALE_MLSERVER_URL")]
    pub mlserver_url: Option<String>,
    /// Model repository folder MLServer serves, where the agent writes model folders
    /// (shared with the sidecar; default: a private temporary folder).
    #[arg(long, env = "COSCALE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Most inferences the built-in runtime runs at a time (0 = one per core); the rest
    /// queue in the agent, in arrival order, and count as inference lag. `coscale up`'s
    /// replicas take it from the environment.
    #[arg(long, env = "COSCALE_INFERENCE_PARALLELISM", default_value_t = 0)]
    pub inference_parallelism: usize,
    /// The built-in runtime runs an inference inline on the thread that read the request when
    /// no other inference is running and the model's measured cost predicts it fits this many
    /// microseconds; otherwise it hands the thread over so that arriving requests are still
    /// read (and counted as inference lag). `coscale up`'s replicas take it from the environment.
    #[arg(long, env = "COSCALE_INLINE_BUDGET_US", default_value_t = 1000)]
    pub inline_budget_us: u64,
    /// Also serve the data plane on this Unix-domain socket, V2 REST and gRPC (HTTP/2 with
    /// prior knowledge) on the one socket (mode 0600; a stale socket there is replaced).
    /// `coscale up` gives one to each local replica, and its router then forwards both
    /// protocols over it instead of TCP on loopback.
    #[arg(long, env = "COSCALE_DATA_SOCKET")]
    pub data_socket: Option<PathBuf>,
}

impl AgentArgs {
    /// The replica ordinal: `--replica`, else the number after the last `-` of the pod
    /// name (StatefulSet pods are `<name>-<ordinal>`).
    pub fn ordinal(&self) -> anyhow::Result<u32> {
        if let Some(r) = self.replica {
            return Ok(r);
        }
        let Some(pod) = self.pod_name.as_deref() else {
            anyhow::bail!("the replica ordinal is missing: pass --replica (COSCALE_REPLICA) or --pod-name (POD_NAME)");
        };
        pod.rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .with_context(|| {
                format!("POD_NAME {pod:?} does not end with -<ordinal>; set COSCALE_REPLICA")
            })
    }
}

/// Resolves when SIGTERM arrives (never on platforms without it).
pub async fn term_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let replica = a.ordinal()?;
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("cannot read the token file {}", a.token_file.display()))?
        .trim()
        .to_owned();
    let mut cfg = AgentConfig::new(a.control_plane, token, a.server, replica);
    cfg.token_file = Some(a.token_file);
    cfg.runtime = a.runtime;
    cfg.capabilities = a.capabilities;
    cfg.memory_bytes = a.memory_bytes;
    cfg.overcommit_percent = a.overcommit_percent;
    cfg.http_addr = a.http_addr;
    cfg.grpc_addr = a.grpc_addr;
    cfg.data_socket = a.data_socket;
    cfg.advertise_host = a.advertise_host.or(a.pod_ip);
    cfg.leave_grace = Duration::from_secs_f64(a.drain_grace_seconds.max(0.0));
    cfg.body_limit = a.body_limit;
    cfg.mlserver_command = a.mlserver_command;
    cfg.mlserver_url = a.mlserver_url.filter(|u| !u.is_empty());
    cfg.models_dir = a.models_dir;
    cfg.inference_parallelism = (a.inference_parallelism > 0).then_some(a.inference_parallelism);
    cfg.inline_budget = Duration::from_micros(a.inline_budget_us);
    cfg.exit_after_disconnect =
        (a.exit_after_disconnect > 0).then(|| Duration::from_secs(a.exit_after_disconnect));
    // SIGINT (Ctrl-C, also sent to `coscale up`'s children) stops at once; SIGTERM
    // (Kubernetes deleting the pod) drains first.
    let exit = coscale_agent::run(
        cfg,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
        term_signal(),
    )
    .await?;
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
    /// As for `coscale agent`: the longest predicted inference run inline.
    #[arg(long, env = "COSCALE_INLINE_BUDGET_US", default_value_t = 1000)]
    pub inline_budget_us: u64,
}

pub async fn runtime(a: RuntimeArgs) -> anyhow::Result<ExitCode> {
    let budget = Duration::from_micros(a.inline_budget_us);
    let engine = Arc::new(coscale_runtime::Engine::with_inline_budget(budget));
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
    let rest = coscale_runtime::serve_http(coscale_runtime::nodelay(http), app, stop_signal());
    let grpc = coscale_runtime::serve_http(
        coscale_runtime::nodelay(grpc),
        coscale_runtime::grpc_app(svc),
        stop_signal(),
    );
    tokio::join!(rest, grpc);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: super::AgentArgs,
    }

    fn args(extra: &[&str]) -> super::AgentArgs {
        let mut argv = vec![
            "agent",
            "--control-plane",
            "http://cp:9005",
            "--token-file",
            "/t",
            "--server",
            "mlserver",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().agent
    }

    #[test]
    fn the_ordinal_comes_from_the_replica_or_the_pod_name() {
        assert_eq!(args(&["--pod-name", "mlserver-2"]).ordinal().unwrap(), 2);
        assert_eq!(args(&["--pod-name", "my-server-10"]).ordinal().unwrap(), 10);
        assert_eq!(
            args(&["--pod-name", "mlserver-2", "--replica", "5"])
                .ordinal()
                .unwrap(),
            5
        );
        let e = args(&["--pod-name", "mlserver"]).ordinal().unwrap_err();
        assert!(e.to_string().contains("COSCALE_REPLICA"), "{e}");
        assert!(args(&[]).ordinal().is_err());
    }
}
