//! Test harness: runs the real `coscale` binary (`coscale up`) on 127.0.0.1 ephemeral
//! ports in a temporary data directory, and waits for conditions with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coscale_api::rest::{Endpoints, ModelStatus, ServerStatus};
use coscale_cli::client::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_coscale");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn examples() -> PathBuf {
    repo().join("examples")
}

/// A running `coscale up`.
pub struct Up {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub endpoints: Endpoints,
    pub client: Client,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

pub fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "coscale-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spawn_up(dir: &Path, extra: &[String], env: &[(String, String)]) -> Child {
    let _ = std::fs::remove_file(dir.join("endpoints.json"));
    Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(dir)
        .args([
            "--api-addr",
            "127.0.0.1:0",
            "--agent-addr",
            "127.0.0.1:0",
            "--router-addr",
            "127.0.0.1:0",
            "--router-grpc-addr",
            "127.0.0.1:0",
            "--reconcile-seconds",
            "0.2",
        ])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("up.log")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("up.log"))
                .unwrap(),
        ))
        .spawn()
        .unwrap()
}

async fn read_endpoints(dir: &Path) -> (Endpoints, String) {
    let ep = dir.join("endpoints.json");
    wait_for("endpoints.json", Duration::from_secs(30), || async {
        std::fs::read_to_string(&ep)
            .ok()
            .and_then(|t| serde_json::from_str::<Endpoints>(&t).ok())
    })
    .await;
    let endpoints: Endpoints =
        serde_json::from_str(&std::fs::read_to_string(&ep).unwrap()).unwrap();
    let token = std::fs::read_to_string(dir.join("token"))
        .unwrap()
        .trim()
        .to_owned();
    (endpoints, token)
}

impl Up {
    pub async fn start(tag: &str, extra: &[&str]) -> Up {
        Self::start_env(tag, extra, &[]).await
    }

    /// [`Up::start`] with extra environment variables for `coscale up` (and so for
    /// the agents it starts).
    pub async fn start_env(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Up {
        let dir = tempdir(tag);
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn_up(&dir, &extra, &env);
        let (endpoints, token) = read_endpoints(&dir).await;
        let client = Client::from_parts(endpoints.clone(), token);
        Up {
            child: Some(child),
            dir,
            endpoints,
            client,
            extra,
            env,
        }
    }

    /// Stops `coscale up` with SIGTERM (like Ctrl-C) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::yield_now();
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
    }

    /// Starts `coscale up` again on the same data directory.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn_up(&self.dir, &self.extra, &self.env));
        let (endpoints, token) = read_endpoints(&self.dir).await;
        self.client = Client::from_parts(endpoints.clone(), token);
        self.endpoints = endpoints;
    }

    /// The control plane's `/metrics` text (bearer token).
    pub async fn control_metrics(&self) -> String {
        let token = std::fs::read_to_string(self.dir.join("token")).unwrap();
        reqwest::Client::new()
            .get(&self.endpoints.metrics)
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    pub async fn apply_text(
        &self,
        name: &str,
        text: &str,
    ) -> anyhow::Result<coscale_api::rest::ApplyResponse> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        self.apply_file(&path).await
    }

    pub async fn apply_file(
        &self,
        path: &Path,
    ) -> anyhow::Result<coscale_api::rest::ApplyResponse> {
        let req = coscale_cli::objects::manifest_request(path, false)?;
        self.client.apply(&req).await
    }

    pub async fn model(&self, name: &str) -> Option<ModelStatus> {
        self.client.model(name).await.ok()
    }

    pub async fn server(&self, name: &str) -> Option<ServerStatus> {
        self.client.server(name).await.ok()
    }

    /// Waits until the model is in `state` (with a deadline that fails the test).
    pub async fn wait_model_state(&self, name: &str, state: &str) -> ModelStatus {
        wait_for(
            &format!("model {name} {state}"),
            Duration::from_secs(60),
            || async { self.model(name).await.filter(|m| m.state == state) },
        )
        .await
    }

    pub async fn wait_available(&self, name: &str, replicas: u32) -> ModelStatus {
        self.wait_available_within(name, replicas, Duration::from_secs(60))
            .await
    }

    /// Waits up to `deadline` until the model is available with `replicas` replicas.
    pub async fn wait_available_within(
        &self,
        name: &str,
        replicas: u32,
        deadline: Duration,
    ) -> ModelStatus {
        wait_for(
            &format!("model {name} available with {replicas} replicas"),
            deadline,
            || async {
                self.model(name)
                    .await
                    .filter(|m| m.state == "ModelAvailable" && m.available_replicas == replicas)
            },
        )
        .await
    }

    /// Waits up to `deadline` until `model` wants and has `model_replicas` available
    /// replicas and `server` wants and has `server_replicas` ready ones (and no others).
    pub async fn wait_scaled(
        &self,
        (model, model_replicas): (&str, u32),
        (server, server_replicas): (&str, u32),
        deadline: Duration,
    ) {
        let what = format!("{model} at {model_replicas} replicas, {server} at {server_replicas}");
        wait_for(&what, deadline, || async {
            let m = self.model(model).await?;
            let s = self.server(server).await?;
            (m.desired_replicas == model_replicas
                && m.available_replicas == model_replicas
                && s.desired_replicas == server_replicas
                && s.ready_replicas == server_replicas
                && s.replicas.len() as u32 == server_replicas)
                .then_some(())
        })
        .await;
    }

    /// `coscale <args> --data-dir DIR`, returning (exit ok, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "--- coscale up log ({}) ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
    }
}

/// HPA settings for tests: 1 s sync, 5 s rate window, 3 s downscale stabilization.
pub const FAST_HPA: &[&str] = &[
    "--hpa-sync-period-seconds",
    "1",
    "--metrics-window-seconds",
    "5",
    "--hpa-downscale-stabilization-seconds",
    "3",
];

/// Polls `probe` every 50 ms until it returns Some, or panics after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const IRIS_REQUEST: &str = r#"{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}]}"#;

/// Manifests of one builtin Server with `replicas` replicas.
pub fn server_yaml(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: {name}\nspec:\n  serverConfig: builtin\n  replicas: {replicas}\n"
    )
}

/// A Model manifest on an example model folder (absolute file:// URI).
pub fn model_yaml(name: &str, example: &str, replicas: u32) -> String {
    let uri = examples().join("models").join(example);
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n  storageUri: file://{}\n  requirements: [onnx]\n  memory: 1Mi\n  replicas: {replicas}\n",
        uri.display()
    )
}

/// Closed-loop clients sending the default iris request to one model through the
/// router (alternately REST and gRPC) until stopped; collects every failure.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    pub async fn start(up: &Up, model: &str, clients: usize) -> Traffic {
        Self::start_with(up, model, clients, true).await
    }

    /// `mixed = false`: REST only.
    pub async fn start_with(up: &Up, model: &str, clients: usize, mixed: bool) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let stop = stop.clone();
            let ok = ok.clone();
            let req = coscale_cli::load::iris_request();
            let body = req.to_json();
            let model = model.to_owned();
            let mut client = if mixed && i % 2 == 1 {
                coscale_cli::infer::V2Client::grpc(&up.endpoints.router_grpc)
                    .await
                    .unwrap()
            } else {
                coscale_cli::infer::V2Client::rest(&up.endpoints.router_http).await
            };
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.infer(&model, &req, &body).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                errors
            }));
        }
        Traffic { stop, ok, tasks }
    }

    pub fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests were served (deadline 10 s).
    pub async fn wait_served(&self, n: u64) {
        let target = self.served() + n;
        wait_for("traffic flowing", Duration::from_secs(10), || async {
            (self.served() >= target).then_some(())
        })
        .await;
    }

    /// Stops the clients; returns (served, failures).
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

/// A `coscale agent` started the way a Kubernetes StatefulSet pod runs it: configured
/// through the environment only (`POD_NAME`, `POD_IP`, `COSCALE_*`), bound to 0.0.0.0.
pub struct Pod {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Pod {
    /// Starts pod `<server>-<ordinal>` against `up`'s agent channel; `env` adds or
    /// overrides variables (e.g. `COSCALE_MEMORY_BYTES`).
    pub fn start(up: &Up, server: &str, ordinal: u32, env: &[(&str, &str)]) -> Pod {
        let name = format!("{server}-{ordinal}");
        let log = up.dir.join(format!("pod-{name}.log"));
        let mut cmd = Command::new(BIN);
        cmd.arg("agent")
            .env(
                "COSCALE_CONTROL_PLANE",
                up.endpoints.agent.as_deref().unwrap(),
            )
            .env("COSCALE_TOKEN_FILE", up.dir.join("token"))
            .env("COSCALE_SERVER", server)
            .env("POD_NAME", &name)
            .env("POD_IP", "127.0.0.1")
            .env("COSCALE_HTTP_ADDR", "0.0.0.0:0")
            .env("COSCALE_GRPC_ADDR", "0.0.0.0:0")
            .env("COSCALE_RUNTIME", "builtin")
            .env("RUST_LOG", "info")
            .env_remove("COSCALE_REPLICA")
            .env_remove("COSCALE_ADVERTISE_HOST");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap();
        Pod { child, name, log }
    }

    /// Sends SIGTERM, as the kubelet does when the pod is deleted.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "could not signal pod {}", self.name);
    }

    /// Waits for the process to exit (panics after `deadline`).
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        let child = &mut self.child;
        let mut probe = || std::future::ready(child.try_wait().unwrap());
        wait_for(&format!("pod {name} to exit"), deadline, &mut probe).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open-loop traffic at a settable rate (requests per second) through the router.
pub struct Load {
    stop: Arc<AtomicBool>,
    milli_rps: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

const WORKERS: u64 = 4;

impl Load {
    pub async fn start(up: &Up, model: &str, rps: f64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let milli_rps = Arc::new(AtomicU64::new((rps * 1000.0) as u64));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let (stop, milli_rps, ok) = (stop.clone(), milli_rps.clone(), ok.clone());
            let mut client = coscale_cli::infer::V2Client::rest(&up.endpoints.router_http).await;
            let model = model.to_owned();
            tasks.push(tokio::spawn(async move {
                let req = coscale_api::v2::InferRequest::from_json(IRIS_REQUEST.as_bytes(), None)
                    .unwrap();
                let body = IRIS_REQUEST.as_bytes().to_vec();
                let mut failures = Vec::new();
                let mut next = tokio::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let rate = milli_rps.load(Ordering::Relaxed).max(1);
                    next += Duration::from_micros(WORKERS * 1_000_000_000 / rate);
                    match client.infer(&model, &req, &body).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                    // pacing of the load generator, not a wait for a condition
                    // no catch-up bursts after a slow request
                    next = next.max(tokio::time::Instant::now());
                    tokio::time::sleep_until(next).await;
                }
                failures
            }));
        }
        Load {
            stop,
            milli_rps,
            ok,
            tasks,
        }
    }

    pub fn set_rate(&self, rps: f64) {
        self.milli_rps
            .store((rps * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Stops the traffic; returns (successful requests, failures).
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), failures)
    }
}
