//! MLServer backend: runs MLServer (1.7.1) as a child process of the agent, or attaches
//! to one already running beside it (a Kubernetes sidecar), and drives it over the V2
//! protocol.
//!
//! * A supervisor task starts `mlserver start <repo>` with a generated `settings.json`
//!   (`parallel_workers: 0`, `load_models_at_startup: false`, free loopback ports), or,
//!   attached, waits for the sidecar's `/v2/health/ready`; then it watches the server's
//!   health (and the child's exit) and its repository index, and when the server died or
//!   restarted (it no longer lists a model the agent loaded) it starts it again (child) or
//!   waits for it to be back (attached) and reloads every model it held: one code path.
//! * Loads write `<repo>/<model>_<version>/` (the artifact, linked, plus a
//!   `model-settings.json` naming the model `<model>_<version>`) and call the repository
//!   API (`POST /v2/repository/models/{name}/load`, or the gRPC `RepositoryModelLoad`).
//!   The memory a model takes is the growth of MLServer's resident set (`/proc`) across
//!   its load, at least the artifact size.
//! * Inference goes over REST as JSON. While the server is restarting, requests wait
//!   for it (bounded); a request cut by the server dying is retried once it is back; an
//!   upstream 404 for a held model triggers one reload and retry (Seldon's lazy reload).
//! * Every call has a timeout: MLServer can hang on load.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use coscale_api::pb::inference as pb;
use coscale_api::pb::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use coscale_api::v2::{InferRequest, InferResponse};
use coscale_runtime::RuntimeError;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{artifact_size, Backend, BackendEvent};

/// How to install MLServer, shown when it is missing.
pub const INSTALL_HINT: &str = "install it with `.ci/install-mlserver.sh` (a venv with mlserver==1.7.1 mlserver-sklearn==1.7.1 'uvloop<0.22', default .venv-mlserver) or `pip install mlserver==1.7.1 mlserver-sklearn==1.7.1 'uvloop<0.22'`, then put `mlserver` on PATH, set COSCALE_MLSERVER=/path/to/bin/mlserver, or pass `coscale agent --mlserver-command /path/to/bin/mlserver`";

/// Finds the `mlserver` executable: the flag, else `COSCALE_MLSERVER`, else `PATH`.
pub fn find_command(flag: Option<&Path>) -> Result<PathBuf, String> {
    find_command_in(
        flag,
        std::env::var_os("COSCALE_MLSERVER"),
        std::env::var_os("PATH"),
    )
}

/// [`find_command`] with the environment passed in.
pub fn find_command_in(
    flag: Option<&Path>,
    env: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, String> {
    if let Some(p) = flag {
        return executable(p).ok_or_else(|| {
            format!(
                "MLServer not found: --mlserver-command {} is not an executable file; {INSTALL_HINT}",
                p.display()
            )
        });
    }
    if let Some(p) = env.filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return executable(&p).ok_or_else(|| {
            format!(
                "MLServer not found: COSCALE_MLSERVER={} is not an executable file; {INSTALL_HINT}",
                p.display()
            )
        });
    }
    path.iter()
        .flat_map(std::env::split_paths)
        .find_map(|dir| executable(&dir.join("mlserver")))
        .ok_or_else(|| {
            format!("MLServer is not installed: no `mlserver` on PATH and COSCALE_MLSERVER is not set; {INSTALL_HINT}")
        })
}

fn executable(p: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| p.to_owned())
}

/// Which MLServer API the agent uses for loads and unloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryApi {
    /// `POST /v2/repository/models/{name}/load|unload`.
    Rest,
    /// `inference.GRPCInferenceService/RepositoryModelLoad|Unload`.
    Grpc,
}

/// Where MLServer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The agent runs `mlserver start <repo>` as its child process (local mode).
    Child {
        /// The `mlserver` executable.
        command: PathBuf,
        /// Repository folder (None: a private temporary folder).
        models_dir: Option<PathBuf>,
    },
    /// An MLServer already running beside the agent (a sidecar container), serving
    /// `models_dir` as its model repository, a folder both can write.
    Attached {
        /// Its REST base URL, e.g. `http://127.0.0.1:8080`.
        url: String,
        models_dir: PathBuf,
    },
}

/// How the backend runs MLServer.
#[derive(Debug, Clone)]
pub struct MlServerSettings {
    pub mode: Mode,
    /// Part of the repository folder name (`coscale-mlserver-<label>-XXXX`), so an
    /// operator can tell which replica a process belongs to.
    pub label: String,
    /// Longest wait for a started server to become ready.
    pub start_timeout: Duration,
    /// Longest load call (MLServer can hang on load).
    pub load_timeout: Duration,
    /// Longest unload, index, metadata or health call.
    pub call_timeout: Duration,
    /// Longest inference, including waiting for a restarting server.
    pub request_timeout: Duration,
    /// Interval of liveness checks; three failures in a row restart the server.
    pub health_interval: Duration,
    pub repository_api: RepositoryApi,
}

impl MlServerSettings {
    /// Settings for an MLServer the agent runs as its child process.
    pub fn new(command: PathBuf, server: &str, replica: u32, load_timeout: Duration) -> Self {
        Self::with_mode(
            Mode::Child {
                command,
                models_dir: None,
            },
            server,
            replica,
            load_timeout,
        )
    }

    /// A child MLServer serves `dir` (when given) instead of a private temporary folder.
    pub fn in_models_dir(mut self, dir: Option<PathBuf>) -> Self {
        if let Mode::Child { models_dir, .. } = &mut self.mode {
            *models_dir = dir;
        }
        self
    }

    /// Settings for an MLServer already running at `url` that serves `models_dir`.
    /// Loads and unloads go over REST (the sidecar's gRPC port is not known).
    pub fn attached(
        url: &str,
        models_dir: PathBuf,
        server: &str,
        replica: u32,
        load_timeout: Duration,
    ) -> Result<Self, MlServerError> {
        let trimmed = url.trim_end_matches('/');
        let valid = reqwest::Url::parse(trimmed)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !valid {
            return Err(MlServerError::Url(url.to_owned()));
        }
        let mut s = Self::with_mode(
            Mode::Attached {
                url: trimmed.to_owned(),
                models_dir,
            },
            server,
            replica,
            load_timeout,
        );
        s.repository_api = RepositoryApi::Rest;
        Ok(s)
    }

    fn with_mode(mode: Mode, server: &str, replica: u32, load_timeout: Duration) -> Self {
        let repository_api = match std::env::var("COSCALE_MLSERVER_REPOSITORY_API").as_deref() {
            Ok("grpc") => RepositoryApi::Grpc,
            _ => RepositoryApi::Rest,
        };
        Self {
            mode,
            label: format!("{server}-{replica}"),
            // MLServer starts in seconds, but its Python imports take minutes on an
            // overloaded machine, and killing a slow start only starts them over.
            start_timeout: Duration::from_secs(300),
            load_timeout,
            call_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(1),
            repository_api,
        }
    }
}

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MlServerError {
    #[error("cannot create the MLServer model repository folder under {dir}: {source}")]
    Repository {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client for MLServer: {0}")]
    Client(String),
    #[error("the MLServer URL {0:?} (COSCALE_MLSERVER_URL / --mlserver-url) is not an http(s)://host[:port] URL")]
    Url(String),
}

/// The model repository folder: private and temporary, or given (shared with a sidecar).
enum Repo {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl Repo {
    /// The folder when it is this agent's private temporary one.
    fn temp_path(&self) -> Option<&Path> {
        match self {
            Repo::Temp(dir) => Some(dir.path()),
            Repo::Given(_) => None,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Given(p) => p,
        }
    }
}

/// A running MLServer (a child process, or the attached sidecar).
#[derive(Debug, Clone)]
struct Proc {
    generation: u64,
    /// Process id, when the agent can see the process (its child).
    pid: Option<u32>,
    http: String,
    grpc: String,
}

/// A model this backend holds.
#[derive(Debug, Clone, Default)]
struct Held {
    ready: bool,
    memory: u64,
    metadata: Option<pb::ModelMetadataResponse>,
}

#[derive(Default)]
struct State {
    proc: Option<Proc>,
    held: HashMap<String, Held>,
    generation: u64,
    last_error: Option<String>,
}

struct Shared {
    settings: MlServerSettings,
    repo: Repo,
    http: reqwest::Client,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    events: broadcast::Sender<BackendEvent>,
    /// One load at a time, so the resident-set growth belongs to one model.
    load_lock: tokio::sync::Mutex<()>,
}

/// The MLServer backend. Dropping it stops the supervisor and kills the process.
pub struct MlServer {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl MlServer {
    /// Creates the repository folder and starts the supervisor (which starts MLServer,
    /// or attaches to it).
    pub fn start(settings: MlServerSettings) -> Result<Self, MlServerError> {
        let given = match &settings.mode {
            Mode::Child { models_dir, .. } => models_dir.clone(),
            Mode::Attached { models_dir, .. } => Some(models_dir.clone()),
        };
        let repo = match given {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|source| MlServerError::Repository {
                    dir: dir.clone(),
                    source,
                })?;
                Repo::Given(dir)
            }
            None => {
                let base = std::env::temp_dir();
                Repo::Temp(
                    tempfile::Builder::new()
                        .prefix(&format!("coscale-mlserver-{}-", settings.label))
                        .tempdir_in(&base)
                        .map_err(|source| MlServerError::Repository { dir: base, source })?,
                )
            }
        };
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| MlServerError::Client(e.to_string()))?;
        let (changed, _) = watch::channel(0);
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            settings,
            repo,
            http,
            state: Mutex::new(State::default()),
            changed,
            events,
            load_lock: tokio::sync::Mutex::new(()),
        });
        let supervisor = tokio::spawn(supervise(shared.clone()));
        Ok(Self { shared, supervisor })
    }

    /// Folder MLServer serves (settings.json, one folder per model, mlserver.log).
    pub fn repository(&self) -> &Path {
        self.shared.repo.path()
    }

    /// Process id of the running MLServer, if it is up and is the agent's child.
    pub fn pid(&self) -> Option<u32> {
        self.shared.lock().proc.as_ref().and_then(|p| p.pid)
    }

    /// REST base URL of the running MLServer, if it is up.
    pub fn http_url(&self) -> Option<String> {
        self.shared.lock().proc.as_ref().map(|p| p.http.clone())
    }

    /// Waits (up to `timeout`) until MLServer is up; returns its process id (None when
    /// attached to a sidecar).
    pub async fn wait_up(&self, timeout: Duration) -> Result<Option<u32>, RuntimeError> {
        let deadline = Instant::now() + timeout;
        self.shared
            .wait_for(deadline, |s| s.proc.as_ref().map(|p| p.pid))
            .await
    }

    /// How many times MLServer came up (started, or found ready again after it was gone).
    pub fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// Posts a V2 REST JSON infer body to MLServer and returns its 200 answer's body:
    /// waits for the model to be ready on a running server, waits out a restart when the
    /// server dies under the request, reloads a held model MLServer does not know (once),
    /// all within the request timeout.
    async fn post_infer(&self, internal: &str, body: Bytes) -> Result<Bytes, RuntimeError> {
        let shared = &*self.shared;
        let deadline = Instant::now() + shared.settings.request_timeout;
        let mut reloaded = false;
        let mut last_err = None;
        for _ in 0..4 {
            // Wait until the model is ready on a running server (or is not held at all).
            let proc = shared
                .wait_for(deadline, |s| match s.held.get(internal) {
                    None => Some(None),
                    Some(h) if h.ready => s.proc.clone().map(Some),
                    Some(_) => None,
                })
                .await?
                .ok_or_else(|| RuntimeError::NotFound(internal.to_owned()))?;
            let sent = shared
                .http
                .post(format!("{}/v2/models/{internal}/infer", proc.http))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) if e.is_timeout() => {
                    return Err(RuntimeError::Internal(format!(
                        "MLServer did not answer within {:?}",
                        shared.settings.request_timeout
                    )))
                }
                Err(e) => {
                    // The server died (or is dying) under this request: wait until the
                    // supervisor has replaced it, then try again.
                    last_err = Some(e.to_string());
                    let gen = proc.generation;
                    if !shared.live(&proc, Duration::from_secs(1)).await {
                        shared
                            .wait_for(deadline, |s| {
                                (s.proc.as_ref().map(|p| p.generation) != Some(gen)).then_some(())
                            })
                            .await?;
                    }
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| RuntimeError::Internal(format!("reading MLServer's answer: {e}")))?;
            if status == 200 {
                return Ok(bytes);
            }
            if status == 404 && !reloaded {
                // Held here but unknown to MLServer: reload once and retry.
                reloaded = true;
                warn!(model = %internal, "MLServer does not know a held model; reloading it");
                let _lock = shared.load_lock.lock().await;
                shared.load_on(&proc, internal, 0).await?;
                continue;
            }
            return Err(upstream_error(status, &bytes, internal));
        }
        Err(RuntimeError::Internal(format!(
            "MLServer failed under the request: {}",
            last_err.unwrap_or_default()
        )))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to the state and wakes everyone waiting for a change.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|v| *v += 1);
        out
    }

    /// Waits until `check` yields a value or the deadline passes.
    async fn wait_for<T>(
        &self,
        deadline: Instant,
        check: impl Fn(&State) -> Option<T>,
    ) -> Result<T, RuntimeError> {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let s = self.lock();
                if let Some(v) = check(&s) {
                    return Ok(v);
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let why = self
                    .lock()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "MLServer is not up".to_owned());
                return Err(RuntimeError::Internal(format!(
                    "timed out waiting for MLServer ({}): {why}",
                    self.settings.label
                )));
            }
        }
    }

    fn model_dir(&self, internal: &str) -> PathBuf {
        self.repo.path().join(internal)
    }

    async fn repository_call(
        &self,
        proc: &Proc,
        internal: &str,
        load: bool,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let what = if load { "load" } else { "unload" };
        let call = async {
            match self.settings.repository_api {
                RepositoryApi::Rest => {
                    let url = format!("{}/v2/repository/models/{internal}/{what}", proc.http);
                    // A pooled connection MLServer has just closed (it does after some
                    // errors) fails the first send: try once more on a fresh one.
                    let resp = match self.http.post(&url).send().await {
                        Err(e) if !e.is_timeout() => self.http.post(&url).send().await,
                        other => other,
                    }
                    .map_err(|e| {
                        RuntimeError::Internal(format!("MLServer {what} of {internal}: {e}"))
                    })?;
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(());
                    }
                    let body = resp.bytes().await.unwrap_or_default();
                    Err(upstream_error(status.as_u16(), &body, internal))
                }
                RepositoryApi::Grpc => {
                    let mut client = GrpcInferenceServiceClient::connect(proc.grpc.clone())
                        .await
                        .map_err(|e| {
                            RuntimeError::Internal(format!("MLServer gRPC at {}: {e}", proc.grpc))
                        })?;
                    let res = if load {
                        client
                            .repository_model_load(pb::RepositoryModelLoadRequest {
                                model_name: internal.to_owned(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                    } else {
                        client
                            .repository_model_unload(pb::RepositoryModelUnloadRequest {
                                model_name: internal.to_owned(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                    };
                    res.map_err(|s| match s.code() {
                        tonic::Code::NotFound => RuntimeError::NotFound(internal.to_owned()),
                        tonic::Code::InvalidArgument => {
                            RuntimeError::BadInput(s.message().to_owned())
                        }
                        _ => RuntimeError::Internal(format!(
                            "MLServer {what} of {internal}: {}",
                            s.message()
                        )),
                    })
                }
            }
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| {
            RuntimeError::Internal(format!(
                "MLServer {what} of {internal} did not finish within {timeout:?}"
            ))
        })?
    }

    async fn fetch_metadata(
        &self,
        proc: &Proc,
        internal: &str,
    ) -> Option<pb::ModelMetadataResponse> {
        let resp = self
            .http
            .get(format!("{}/v2/models/{internal}", proc.http))
            .timeout(self.settings.call_timeout)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let v: Value = resp.json().await.ok()?;
        Some(metadata_from_json(&v))
    }

    /// Loads a model whose folder exists; returns the memory it takes: the growth of
    /// the resident set across the load, at least `floor` and any earlier figure.
    async fn load_on(&self, proc: &Proc, internal: &str, floor: u64) -> Result<u64, RuntimeError> {
        let rss = || proc.pid.and_then(rss_bytes).unwrap_or(0);
        let before = rss();
        self.repository_call(proc, internal, true, self.settings.load_timeout)
            .await?;
        let after = rss();
        let metadata = self.fetch_metadata(proc, internal).await;
        let growth = after.saturating_sub(before).max(floor);
        Ok(self.update(|s| match s.held.get_mut(internal) {
            Some(h) => {
                h.ready = true;
                h.metadata = metadata;
                h.memory = h.memory.max(growth);
                h.memory
            }
            None => growth,
        }))
    }

    /// Whether the server at `http` answers `/v2/health/ready` (Err: why not).
    async fn ready_at(&self, http: &str) -> Result<(), String> {
        match self
            .http
            .get(format!("{http}/v2/health/ready"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("/v2/health/ready answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Records a server that is up (a new generation) and wakes everyone waiting.
    fn up(&self, pid: Option<u32>, http: String, grpc: String) -> Proc {
        self.update(|s| {
            s.generation += 1;
            let proc = Proc {
                generation: s.generation,
                pid,
                http,
                grpc,
            };
            s.proc = Some(proc.clone());
            s.last_error = None;
            proc
        })
    }

    /// Held, ready models the server's repository index does not list as `READY`
    /// (None: all there, or not checked now). Skipped while a load or unload runs, so
    /// what the agent holds and what the server holds are compared at rest.
    async fn missing_from_index(&self, proc: &Proc) -> Option<Vec<String>> {
        let _at_rest = self.load_lock.try_lock().ok()?;
        let expected: Vec<String> = self
            .lock()
            .held
            .iter()
            .filter(|(_, h)| h.ready)
            .map(|(n, _)| n.clone())
            .collect();
        if expected.is_empty() {
            return None;
        }
        let resp = self
            .http
            .post(format!("{}/v2/repository/index", proc.http))
            .json(&serde_json::json!({"ready": true}))
            .timeout(self.settings.call_timeout.min(Duration::from_secs(5)))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let index: Value = resp.json().await.ok()?;
        let ready = ready_in_index(&index)?;
        let mut missing: Vec<String> = expected
            .into_iter()
            .filter(|n| !ready.contains(n.as_str()))
            .collect();
        missing.sort();
        (!missing.is_empty()).then_some(missing)
    }

    /// Whether the server answers `/v2/health/live` within `timeout`.
    async fn live(&self, proc: &Proc, timeout: Duration) -> bool {
        self.health(proc, timeout).await == Health::Live
    }

    async fn health(&self, proc: &Proc, timeout: Duration) -> Health {
        match self
            .http
            .get(format!("{}/v2/health/live", proc.http))
            .timeout(timeout)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Health::Live,
            Err(e) if e.is_timeout() => Health::Unresponsive,
            _ => Health::Down,
        }
    }
}

/// What a liveness check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Live,
    /// Refused the connection or answered an error: not (or no longer) serving.
    Down,
    /// Accepted but did not answer in time: hung, or busy (MLServer runs a model's
    /// load, e.g. importing sklearn, on its event loop, which stalls its health
    /// endpoint for seconds on a loaded machine).
    Unresponsive,
}

/// Runs MLServer until the backend is dropped: start (or attach), reload, watch, and
/// again when it died or restarted.
async fn supervise(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = match &shared.settings.mode {
            Mode::Child { command, .. } => start_once(&shared, command)
                .await
                .map(|(child, proc)| (Some(child), proc)),
            Mode::Attached { url, .. } => attach_once(&shared, url).await.map(|p| (None, p)),
        };
        match started {
            Ok((mut child, proc)) => {
                let watchdog = proc
                    .pid
                    .and_then(|pid| spawn_watchdog(pid, shared.repo.temp_path()));
                info!(pid = ?proc.pid, http = %proc.http, label = %shared.settings.label, "MLServer is up");
                let up_since = Instant::now();
                restore(&shared, &proc).await;
                let why = watch_process(&shared, &proc, child.as_mut()).await;
                if let Some(child) = child.as_mut() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                drop(watchdog);
                warn!(label = %shared.settings.label, "{why}; reloading its models once it is back");
                lost(&shared, why);
                if up_since.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
            }
            Err(e) => {
                warn!(label = %shared.settings.label, "MLServer is not up: {e}");
                shared.update(|s| s.last_error = Some(e));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Kills MLServer (`$2`) when the agent (`$1`) is gone, even if the agent was killed
/// with SIGKILL and could not stop its child itself, and then removes the agent's private
/// repository folder (`$3`, empty for a given one), which the agent removes itself only
/// when it exits normally. (When MLServer dies first, the agent drops this watchdog.)
const WATCHDOG: &str = r#"while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; kill -TERM "$2" 2>/dev/null; sleep 5; kill -0 "$2" 2>/dev/null && kill -KILL "$2" 2>/dev/null; if [ -n "$3" ] && ! kill -0 "$1" 2>/dev/null; then rm -rf -- "$3"; fi; exit 0"#;

fn spawn_watchdog(mlserver_pid: u32, temp_repo: Option<&Path>) -> Option<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("coscale-agent-watchdog")
        .arg(std::process::id().to_string())
        .arg(mlserver_pid.to_string())
        .arg(temp_repo.map(Path::as_os_str).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `settings.json` of a server listening on the given ports.
pub fn server_settings(http_port: u16, grpc_port: u16, metrics_port: u16) -> Value {
    serde_json::json!({
        "debug": false,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "load_models_at_startup": false,
    })
}

/// Writes `<repo>/settings.json` for a server on the given loopback ports and returns
/// the command that runs `mlserver start <repo>` in `repo`, its output appended to
/// `<repo>/mlserver.log` (the log's path is returned too).
pub fn serve_command(
    command: &Path,
    repo: &Path,
    (http_port, grpc_port, metrics_port): (u16, u16, u16),
) -> Result<(std::process::Command, PathBuf), String> {
    let settings = server_settings(http_port, grpc_port, metrics_port);
    std::fs::write(repo.join("settings.json"), settings.to_string())
        .map_err(|e| format!("cannot write {}/settings.json: {e}", repo.display()))?;
    let log_path = repo.join("mlserver.log");
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))
    };
    let mut cmd = std::process::Command::new(command);
    cmd.arg("start")
        .arg(repo)
        .current_dir(repo)
        .stdin(Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?);
    Ok((cmd, log_path))
}

async fn start_once(shared: &Shared, command: &Path) -> Result<(Child, Proc), String> {
    let repo = shared.repo.path();
    let ports = (free_port(), free_port(), free_port());
    let (http_port, grpc_port, metrics_port) = match ports {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => return Err("no free loopback port for MLServer".to_owned()),
    };
    let (std_cmd, log_path) = serve_command(command, repo, (http_port, grpc_port, metrics_port))?;
    let mut child = Command::from(std_cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", command.display()))?;
    let pid = child.id();
    let http = format!("http://127.0.0.1:{http_port}");
    let deadline = Instant::now() + shared.settings.start_timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "MLServer exited during start-up ({status}); log {}:\n{}",
                log_path.display(),
                log_tail(&log_path)
            ));
        }
        if shared.ready_at(&http).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(format!(
                "MLServer was not ready within {:?}; log {}:\n{}",
                shared.settings.start_timeout,
                log_path.display(),
                log_tail(&log_path)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proc = shared.up(pid, http, format!("http://127.0.0.1:{grpc_port}"));
    Ok((child, proc))
}

/// Waits for the MLServer beside the agent to be ready (up to the start timeout).
async fn attach_once(shared: &Shared, url: &str) -> Result<Proc, String> {
    let deadline = Instant::now() + shared.settings.start_timeout;
    loop {
        let why = match shared.ready_at(url).await {
            Ok(()) => return Ok(shared.up(None, url.to_owned(), url.to_owned())),
            Err(why) => why,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "the MLServer at {url} was not ready within {:?}: {why}",
                shared.settings.start_timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Reloads every held model into a freshly started server.
async fn restore(shared: &Shared, proc: &Proc) {
    let _guard = shared.load_lock.lock().await;
    // only what the previous server lost: a model loaded into this server meanwhile (the
    // first start races with the first loads) is already ready and needs nothing
    let names: Vec<String> = shared
        .lock()
        .held
        .iter()
        .filter(|(_, h)| !h.ready)
        .map(|(n, _)| n.clone())
        .collect();
    if names.is_empty() {
        return;
    }
    let mut restored = Vec::new();
    for name in names {
        match shared.load_on(proc, &name, 0).await {
            Ok(_) => restored.push(name),
            Err(e) => warn!(model = %name, "reload after MLServer restart failed: {e}"),
        }
    }
    info!(models = ?restored, "reloaded after MLServer restart");
    let _ = shared
        .events
        .send(BackendEvent::Restored { models: restored });
}

/// Returns why the server must be replaced (or waited for): the child exited, it
/// stopped answering, or it no longer holds a model the agent loaded (it restarted).
async fn watch_process(shared: &Shared, proc: &Proc, mut child: Option<&mut Child>) -> String {
    let who = match proc.pid {
        Some(pid) => format!("MLServer (pid {pid})"),
        None => format!("MLServer at {}", proc.http),
    };
    let mut failures = 0u32;
    loop {
        let exited = async {
            match child.as_deref_mut() {
                Some(c) => c.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = exited => {
                return match status {
                    Ok(s) => format!("{who} exited: {s}"),
                    Err(e) => format!("{who} could not be waited for: {e}"),
                };
            }
            _ = tokio::time::sleep(shared.settings.health_interval) => {
                let health = shared
                    .health(proc, shared.settings.call_timeout.min(Duration::from_secs(5)))
                    .await;
                // A server busy loading a model is not counted as dead: the load has its
                // own timeout, after which a still unresponsive server is.
                let loading = shared.load_lock.try_lock().is_err();
                failures = match health {
                    Health::Live => 0,
                    Health::Unresponsive if loading => failures,
                    Health::Down | Health::Unresponsive => failures + 1,
                };
                if failures >= 3 {
                    return format!("{who} failed 3 health checks in a row");
                }
                if health == Health::Live {
                    if let Some(missing) = shared.missing_from_index(proc).await {
                        return format!("{who} no longer holds {missing:?} (it restarted)");
                    }
                }
            }
        }
    }
}

/// The server is gone: every held model is unavailable until restored.
fn lost(shared: &Shared, reason: String) {
    let models = shared.update(|s| {
        s.proc = None;
        s.last_error = Some(reason.clone());
        let mut names = Vec::new();
        for (name, h) in s.held.iter_mut() {
            if h.ready {
                names.push(name.clone());
            }
            h.ready = false;
        }
        names.sort();
        names
    });
    if !models.is_empty() {
        let _ = shared.events.send(BackendEvent::Lost { models, reason });
    }
}

/// Names of the models a repository index answer (`POST /v2/repository/index`) lists
/// as `READY` (None: not an index answer).
fn ready_in_index(index: &Value) -> Option<std::collections::HashSet<&str>> {
    Some(
        index
            .as_array()?
            .iter()
            .filter(|m| m.get("state").and_then(Value::as_str) == Some("READY"))
            .filter_map(|m| m.get("name").and_then(Value::as_str))
            .collect(),
    )
}

/// Resident set of a process, bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Converts MLServer's REST model metadata to the gRPC message.
fn metadata_from_json(v: &Value) -> pb::ModelMetadataResponse {
    let tensors = |key: &str| -> Vec<pb::model_metadata_response::TensorMetadata> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|t| pb::model_metadata_response::TensorMetadata {
                        name: str_field(t, "name"),
                        datatype: str_field(t, "datatype"),
                        shape: t
                            .get("shape")
                            .and_then(Value::as_array)
                            .map(|s| s.iter().filter_map(Value::as_i64).collect())
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    pb::ModelMetadataResponse {
        name: str_field(v, "name"),
        versions: v
            .get("versions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        platform: str_field(v, "platform"),
        inputs: tensors("inputs"),
        outputs: tensors("outputs"),
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Maps an MLServer error answer (`{"error"}`, 422 `{"detail"}` or plain text).
fn upstream_error(status: u16, body: &[u8], internal: &str) -> RuntimeError {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => match (v.get("error"), v.get("detail")) {
            (Some(Value::String(e)), _) => e.clone(),
            (_, Some(d)) => d.to_string(),
            _ => v.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    match status {
        404 => RuntimeError::NotFound(internal.to_owned()),
        400 | 422 => RuntimeError::BadInput(format!("MLServer rejected the request: {text}")),
        _ => RuntimeError::Internal(format!("MLServer answered {status}: {text}")),
    }
}

/// The MLServer runtime class for an artifact file, by extension.
pub fn implementation_for(file: &Path) -> Option<&'static str> {
    let ext = file.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "joblib" | "pkl" | "pickle" => Some("mlserver_sklearn.SKLearnModel"),
        "bst" | "ubj" => Some("mlserver_xgboost.XGBoostModel"),
        _ => None,
    }
}

/// Writes `<repo>/<internal>/`: links to the artifact's files and a `model-settings.json`
/// whose `name` is `internal`. A folder artifact's own `model-settings.json` is kept
/// (renamed); otherwise the runtime class comes from the artifact's file extension.
pub fn write_model_dir(dir: &Path, internal: &str, artifact: &Path) -> Result<(), RuntimeError> {
    let fail = |reason: String| RuntimeError::Artifact {
        path: artifact.to_owned(),
        reason,
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| fail(format!("cannot clear {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let link = |src: &Path| -> Result<(), RuntimeError> {
        let name = src
            .file_name()
            .ok_or_else(|| fail("artifact path has no file name".to_owned()))?;
        let src = std::fs::canonicalize(src).map_err(|e| fail(e.to_string()))?;
        std::os::unix::fs::symlink(&src, dir.join(name))
            .map_err(|e| fail(format!("cannot link into {}: {e}", dir.display())))
    };
    let mut settings: Option<Value> = None;
    let mut model_file: Option<PathBuf> = None;
    if artifact.is_dir() {
        let entries = std::fs::read_dir(artifact).map_err(|e| fail(e.to_string()))?;
        let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if f.file_name().is_some_and(|n| n == "model-settings.json") {
                let text = std::fs::read(&f).map_err(|e| fail(e.to_string()))?;
                settings =
                    Some(serde_json::from_slice(&text).map_err(|e| {
                        fail(format!("model-settings.json is not valid JSON: {e}"))
                    })?);
                continue;
            }
            if model_file.is_none() && implementation_for(&f).is_some() {
                model_file = Some(f.clone());
            }
            link(&f)?;
        }
    } else {
        link(artifact)?;
        model_file = Some(artifact.to_owned());
    }
    let mut settings = match settings {
        Some(Value::Object(m)) => Value::Object(m),
        Some(_) => return Err(fail("model-settings.json is not a JSON object".to_owned())),
        None => {
            let file = model_file.ok_or_else(|| {
                fail("no model-settings.json and no model file MLServer can run (.joblib/.pkl for sklearn, .bst/.ubj for xgboost)".to_owned())
            })?;
            let implementation = implementation_for(&file)
                .ok_or_else(|| fail("unknown model file type".to_owned()))?;
            let file_name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            serde_json::json!({
                "implementation": implementation,
                "parameters": {"uri": format!("./{file_name}")},
            })
        }
    };
    settings["name"] = Value::String(internal.to_owned());
    std::fs::write(dir.join("model-settings.json"), settings.to_string())
        .map_err(|e| fail(format!("cannot write model-settings.json: {e}")))
}

/// Removes a held model's entry if a load does not complete (error or cancellation).
struct HeldGuard<'a> {
    shared: &'a Shared,
    internal: &'a str,
    armed: bool,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.update(|s| s.held.remove(self.internal));
            let _ = std::fs::remove_dir_all(self.shared.model_dir(self.internal));
        }
    }
}

#[async_trait::async_trait]
impl Backend for MlServer {
    fn kind(&self) -> &'static str {
        "mlserver"
    }

    fn unavailable_reason(&self) -> Option<String> {
        None
    }

    async fn load(&self, internal: &str, artifact: &Path) -> Result<u64, RuntimeError> {
        let shared = &*self.shared;
        let _lock = shared.load_lock.lock().await;
        if let Some(h) = shared.lock().held.get(internal).filter(|h| h.ready) {
            return Ok(h.memory);
        }
        let size = artifact_size(artifact);
        write_model_dir(&shared.model_dir(internal), internal, artifact)?;
        shared.update(|s| s.held.insert(internal.to_owned(), Held::default()));
        let mut guard = HeldGuard {
            shared,
            internal,
            armed: true,
        };
        let deadline = Instant::now() + shared.settings.load_timeout;
        let proc = shared.wait_for(deadline, |s| s.proc.clone()).await?;
        match shared.load_on(&proc, internal, size).await {
            Ok(memory) => {
                guard.armed = false;
                Ok(memory)
            }
            Err(e) => {
                // A load that timed out may still be running: ask MLServer to drop it,
                // without holding up the answer (a hung server would hang this too).
                let shared = self.shared.clone();
                let name = internal.to_owned();
                tokio::spawn(async move {
                    let t = shared.settings.call_timeout;
                    let _ = shared.repository_call(&proc, &name, false, t).await;
                });
                Err(e)
            }
        }
    }

    async fn unload(&self, internal: &str) -> Result<(), RuntimeError> {
        let shared = &*self.shared;
        let _lock = shared.load_lock.lock().await;
        let (held, proc) = shared.update(|s| (s.held.remove(internal), s.proc.clone()));
        if held.is_none() {
            return Err(RuntimeError::NotFound(internal.to_owned()));
        }
        let result = match proc {
            Some(proc) => match shared
                .repository_call(&proc, internal, false, shared.settings.call_timeout)
                .await
            {
                Err(RuntimeError::NotFound(_)) => Ok(()),
                other => other,
            },
            // Not running: nothing is loaded, and a restart will not reload it.
            None => Ok(()),
        };
        let _ = std::fs::remove_dir_all(shared.model_dir(internal));
        result
    }

    fn ready(&self, internal: &str) -> bool {
        self.shared
            .lock()
            .held
            .get(internal)
            .is_some_and(|h| h.ready)
    }

    fn metadata(&self, internal: &str) -> Result<pb::ModelMetadataResponse, RuntimeError> {
        let s = self.shared.lock();
        let held = s
            .held
            .get(internal)
            .ok_or_else(|| RuntimeError::NotFound(internal.to_owned()))?;
        Ok(held
            .metadata
            .clone()
            .unwrap_or_else(|| pb::ModelMetadataResponse {
                name: internal.to_owned(),
                ..Default::default()
            }))
    }

    async fn infer(
        &self,
        internal: &str,
        request: &InferRequest,
    ) -> Result<InferResponse, RuntimeError> {
        let answer = self
            .post_infer(internal, Bytes::from(request.to_json()))
            .await?;
        InferResponse::from_json(&answer, None).map_err(|e| {
            RuntimeError::Internal(format!("MLServer sent an answer coscale cannot read: {e}"))
        })
    }

    fn proxies_json(&self) -> bool {
        true
    }

    async fn infer_json(&self, internal: &str, body: Bytes) -> Result<Bytes, RuntimeError> {
        self.post_infer(internal, body).await
    }

    fn memory_of(&self, internal: &str) -> Option<u64> {
        self.shared
            .lock()
            .held
            .get(internal)
            .filter(|h| h.ready)
            .map(|h| h.memory)
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<BackendEvent>> {
        Some(self.shared.events.subscribe())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn command_lookup_prefers_the_flag_then_the_env_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("mlserver");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = Some(dir.path().as_os_str().to_owned());
        assert_eq!(find_command_in(None, None, path.clone()).unwrap(), exe);
        assert_eq!(
            find_command_in(None, Some(exe.clone().into_os_string()), None).unwrap(),
            exe
        );
        let e = find_command_in(Some(Path::new("/nonexistent/mlserver")), None, path).unwrap_err();
        assert!(
            e.contains("--mlserver-command /nonexistent/mlserver"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_mlserver_is_reported_with_install_instructions() {
        let empty = tempfile::tempdir().unwrap();
        let e = find_command_in(None, None, Some(empty.path().as_os_str().to_owned())).unwrap_err();
        assert!(e.contains("MLServer is not installed"), "{e}");
        assert!(e.contains(".ci/install-mlserver.sh"), "{e}");
        let e = find_command_in(None, Some("/nope/mlserver".into()), None).unwrap_err();
        assert!(e.contains("COSCALE_MLSERVER=/nope/mlserver"), "{e}");
    }

    #[test]
    fn server_settings_disable_parallel_workers_and_startup_loads() {
        let s = server_settings(1, 2, 3);
        assert_eq!(s["parallel_workers"], 0);
        assert_eq!(s["load_models_at_startup"], false);
        assert_eq!(
            (
                s["http_port"].as_u64(),
                s["grpc_port"].as_u64(),
                s["metrics_port"].as_u64()
            ),
            (Some(1), Some(2), Some(3))
        );
    }

    #[test]
    fn a_joblib_file_gets_sklearn_settings_named_after_the_internal_model() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("model.joblib");
        std::fs::write(&file, b"x").unwrap();
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path().join("iris_1");
        write_model_dir(&dir, "iris_1", &file).unwrap();
        let s: Value =
            serde_json::from_slice(&std::fs::read(dir.join("model-settings.json")).unwrap())
                .unwrap();
        assert_eq!(s["name"], "iris_1");
        assert_eq!(s["implementation"], "mlserver_sklearn.SKLearnModel");
        assert_eq!(s["parameters"]["uri"], "./model.joblib");
        assert_eq!(std::fs::read(dir.join("model.joblib")).unwrap(), b"x");
    }

    #[test]
    fn a_folder_keeps_its_model_settings_but_takes_the_internal_name() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("m.bin"), b"y").unwrap();
        std::fs::write(
            src.path().join("model-settings.json"),
            r#"{"name":"iris","implementation":"my.Runtime","parameters":{"uri":"./m.bin"}}"#,
        )
        .unwrap();
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path().join("iris_3");
        write_model_dir(&dir, "iris_3", src.path()).unwrap();
        let s: Value =
            serde_json::from_slice(&std::fs::read(dir.join("model-settings.json")).unwrap())
                .unwrap();
        assert_eq!(s["name"], "iris_3");
        assert_eq!(s["implementation"], "my.Runtime");
        assert_eq!(std::fs::read(dir.join("m.bin")).unwrap(), b"y");
    }

    #[test]
    fn an_artifact_mlserver_cannot_run_is_refused_with_the_reason() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("model.onnx"), b"z").unwrap();
        let repo = tempfile::tempdir().unwrap();
        let e = write_model_dir(&repo.path().join("m_1"), "m_1", src.path()).unwrap_err();
        assert!(e.to_string().contains("no model-settings.json"), "{e}");
    }

    #[test]
    fn upstream_errors_keep_mlserver_messages_and_map_statuses() {
        let e = upstream_error(404, br#"{"error":"Model x not found"}"#, "x_1");
        assert!(matches!(e, RuntimeError::NotFound(_)));
        let e = upstream_error(422, br#"{"detail":[{"msg":"bad"}]}"#, "x_1");
        assert!(
            matches!(&e, RuntimeError::BadInput(m) if m.contains("bad")),
            "{e}"
        );
        let e = upstream_error(500, b"Internal Server Error", "x_1");
        assert!(e.to_string().contains("500: Internal Server Error"), "{e}");
    }

    #[test]
    fn metadata_is_converted_from_mlserver_json() {
        let v = serde_json::json!({"name":"iris_1","versions":["v1"],"platform":"",
            "inputs":[{"name":"input-0","datatype":"FP32","shape":[-1,4]}],"outputs":[]});
        let m = metadata_from_json(&v);
        assert_eq!(m.name, "iris_1");
        assert_eq!(m.versions, vec!["v1"]);
        assert_eq!(m.inputs[0].shape, vec![-1, 4]);
        assert_eq!(m.inputs[0].datatype, "FP32");
    }

    #[test]
    fn only_ready_models_of_a_repository_index_count_as_held() {
        let index = serde_json::json!([
            {"name": "iris_1", "state": "READY", "reason": ""},
            {"name": "iris_2", "state": "UNAVAILABLE", "reason": ""},
            {"name": "xg_1", "state": "LOADING", "reason": ""}
        ]);
        let ready = ready_in_index(&index).unwrap();
        assert_eq!(ready.len(), 1);
        assert!(ready.contains("iris_1"));
        assert!(ready_in_index(&serde_json::json!({"error": "x"})).is_none());
    }

    #[test]
    fn resident_set_of_this_process_is_readable() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "{rss}");
    }
}
