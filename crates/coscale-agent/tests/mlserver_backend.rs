//! The MLServer backend against a real MLServer 1.7.1: load through the repository API
//! (REST and gRPC), infer, metadata, measured memory, restart after the process is
//! killed (with the models reloaded and requests waiting instead of failing), unload;
//! attached to an MLServer the test runs itself (sidecar mode): reload after that server
//! restarts, and after it drops a model behind the agent's back.
//!
//! Needs MLServer: `COSCALE_MLSERVER` or `<repo>/.venv-mlserver/bin/mlserver`
//! (`.ci/install-mlserver.sh`). Without it the tests fail when `CI=true` and are
//! skipped with a message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use coscale_agent::backend::mlserver::{self, MlServer, MlServerSettings, RepositoryApi};
use coscale_agent::backend::{Backend, BackendEvent};
use coscale_api::v2::InferRequest;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The mlserver executable, or None (skip) outside CI.
fn mlserver() -> Option<PathBuf> {
    let candidate = std::env::var_os("COSCALE_MLSERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-mlserver/bin/mlserver"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let msg = format!(
        "MLServer not found at {} (set COSCALE_MLSERVER or run .ci/install-mlserver.sh)",
        candidate.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// Trains the iris model with the venv's python; returns the folder holding model.joblib.
fn train(mlserver: &Path, dir: &Path) -> PathBuf {
    let python = mlserver.parent().unwrap().join("python");
    let out = dir.join("iris");
    let status = std::process::Command::new(python)
        .arg(repo_root().join("bench/mlserver/train_iris.py"))
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "training the iris model failed");
    out
}

fn iris_request() -> InferRequest {
    InferRequest::from_json(
        br#"{"inputs":[{"name":"input-0","shape":[2,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}]}"#,
        None,
    )
    .unwrap()
}

async fn predictions(backend: &MlServer, internal: &str) -> Vec<i64> {
    let resp = backend.infer(internal, &iris_request()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.to_json()).unwrap();
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn settings(command: PathBuf, api: RepositoryApi) -> MlServerSettings {
    let mut s = MlServerSettings::new(command, "test", 0, Duration::from_secs(60));
    s.repository_api = api;
    // a request waits for a restarted MLServer, which takes minutes on a loaded machine
    s.request_timeout = Duration::from_secs(300);
    s
}

async fn loads_infers_and_unloads_over(api: RepositoryApi) {
    let Some(cmd) = mlserver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = train(&cmd, tmp.path());
    let backend = MlServer::start(settings(cmd, api)).unwrap();
    backend.wait_up(Duration::from_secs(60)).await.unwrap();

    let memory = backend.load("iris_1", &model).await.unwrap();
    assert!(backend.ready("iris_1"));
    // The first sklearn load imports sklearn: tens of MB, far above the 1 KB artifact.
    assert!(memory > 1 << 20, "measured memory {memory}");
    assert_eq!(backend.memory_of("iris_1"), Some(memory));
    let settings: serde_json::Value = serde_json::from_slice(
        &std::fs::read(backend.repository().join("iris_1/model-settings.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(settings["name"], "iris_1");
    assert_eq!(predictions(&backend, "iris_1").await, vec![0, 2]);
    assert_eq!(backend.metadata("iris_1").unwrap().name, "iris_1");

    // An input sklearn refuses (3 features instead of 4): MLServer answers a plain-text
    // 500, which is passed on with its status.
    let bad = InferRequest::from_json(
        br#"{"inputs":[{"name":"input-0","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
        None,
    )
    .unwrap();
    let e = backend.infer("iris_1", &bad).await.unwrap_err();
    assert!(e.to_string().contains("MLServer answered 500"), "{e}");

    backend.unload("iris_1").await.unwrap();
    assert!(!backend.ready("iris_1"));
    assert!(backend.infer("iris_1", &iris_request()).await.is_err());
    assert!(!backend.repository().join("iris_1").exists());
    assert!(backend.unload("iris_1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_infer_and_unload_through_the_rest_repository_api() {
    loads_infers_and_unloads_over(RepositoryApi::Rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_infer_and_unload_through_the_grpc_repository_api() {
    loads_infers_and_unloads_over(RepositoryApi::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mlserver_is_restarted_with_its_models_and_waiting_requests_succeed() {
    let Some(cmd) = mlserver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = train(&cmd, tmp.path());
    let backend = MlServer::start(settings(cmd, RepositoryApi::Rest)).unwrap();
    let mut events = backend.subscribe().unwrap();
    let pid = backend
        .wait_up(Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    backend.load("iris_1", &model).await.unwrap();
    assert_eq!(predictions(&backend, "iris_1").await, vec![0, 2]);

    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // A request sent right after the kill waits for the restart instead of failing.
    let during = predictions(&backend, "iris_1").await;
    assert_eq!(during, vec![0, 2]);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen_lost = false;
    let mut seen_restored = false;
    while !(seen_lost && seen_restored) {
        match tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            BackendEvent::Lost { models, reason } => {
                assert_eq!(models, vec!["iris_1".to_owned()]);
                assert!(reason.contains(&pid.to_string()), "{reason}");
                seen_lost = true;
            }
            BackendEvent::Restored { models } => {
                assert!(seen_lost, "restored before lost");
                assert_eq!(models, vec!["iris_1".to_owned()]);
                seen_restored = true;
            }
        }
    }
    let new_pid = backend.pid().unwrap();
    assert_ne!(new_pid, pid);
    assert!(backend.ready("iris_1"));
    assert_eq!(predictions(&backend, "iris_1").await, vec![0, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_does_not_finish_in_time_fails_and_leaves_nothing_held() {
    let Some(cmd) = mlserver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // A model whose runtime class takes longer to import than the load timeout allows:
    // MLServer's own custom-runtime mechanism loads `slow.SlowModel` from the folder.
    let dir = tmp.path().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("slow.py"),
        "import time\nfrom mlserver import MLModel\nclass SlowModel(MLModel):\n    async def load(self):\n        time.sleep(30)\n        return True\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("model-settings.json"),
        r#"{"name":"slow","implementation":"slow.SlowModel"}"#,
    )
    .unwrap();
    let mut s = settings(cmd, RepositoryApi::Rest);
    s.load_timeout = Duration::from_secs(3);
    let backend = MlServer::start(s).unwrap();
    backend.wait_up(Duration::from_secs(60)).await.unwrap();
    let started = std::time::Instant::now();
    let e = backend.load("slow_1", &dir).await.unwrap_err();
    assert!(e.to_string().contains("did not finish within"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!backend.ready("slow_1"));
    assert!(!backend.repository().join("slow_1").exists());
}

/// An MLServer the test runs itself on `port`, serving `repo`, like a sidecar container
/// beside the agent.
fn sidecar(cmd: &Path, repo: &Path, port: u16, grpc: u16) -> std::process::Child {
    let ports = (port, grpc, mlserver::free_port().unwrap());
    mlserver::serve_command(cmd, repo, ports)
        .unwrap()
        .0
        .spawn()
        .unwrap()
}

/// Waits for a Lost event and then a Restored event for exactly `model`.
async fn lost_then_restored(
    events: &mut tokio::sync::broadcast::Receiver<BackendEvent>,
    model: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut why = None;
    loop {
        match tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no Lost/Restored event in time")
            .unwrap()
        {
            BackendEvent::Lost { models, reason } => {
                assert_eq!(models, vec![model.to_owned()]);
                why = Some(reason);
            }
            BackendEvent::Restored { models } => {
                assert!(why.is_some(), "restored before lost");
                assert_eq!(models, vec![model.to_owned()]);
                return why.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_to_a_sidecar_mlserver_models_are_reloaded_after_it_restarts_or_drops_them() {
    let Some(cmd) = mlserver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = train(&cmd, tmp.path());
    let repo = tmp.path().join("models");
    std::fs::create_dir_all(&repo).unwrap();
    let (port, grpc) = (
        mlserver::free_port().unwrap(),
        mlserver::free_port().unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut server = sidecar(&cmd, &repo, port, grpc);

    let mut s =
        MlServerSettings::attached(&url, repo.clone(), "test", 0, Duration::from_secs(60)).unwrap();
    s.request_timeout = Duration::from_secs(180);
    let backend = std::sync::Arc::new(MlServer::start(s).unwrap());
    let mut events = backend.subscribe().unwrap();
    assert_eq!(
        backend.wait_up(Duration::from_secs(90)).await.unwrap(),
        None
    );
    assert_eq!(backend.repository(), repo.as_path());
    backend.load("iris_1", &model).await.unwrap();
    // the agent wrote the model folder into the shared repository
    assert!(repo.join("iris_1/model-settings.json").is_file());
    assert_eq!(predictions(&backend, "iris_1").await, vec![0, 2]);
    let first = backend.generation();

    // The sidecar dies and is started again (as the kubelet would): the agent sees it
    // go, waits for it, and reloads the model; a request sent meanwhile waits.
    server.kill().unwrap();
    server.wait().unwrap();
    let during = tokio::spawn({
        let backend = backend.clone();
        async move { predictions(&backend, "iris_1").await }
    });
    server = sidecar(&cmd, &repo, port, grpc);
    assert_eq!(during.await.unwrap(), vec![0, 2]);
    let why = lost_then_restored(&mut events, "iris_1").await;
    assert!(why.contains(&url), "{why}");
    assert!(backend.generation() > first);
    assert!(backend.ready("iris_1"));
    assert_eq!(predictions(&backend, "iris_1").await, vec![0, 2]);

    // The server loses the model while staying up (as after a restart the agent did not
    // see): its repository index no longer lists it, and the agent reloads it.
    let dropped = reqwest::Client::new()
        .post(format!("{url}/v2/repository/models/iris_1/unload"))
        .send()
        .await
        .unwrap();
    assert!(dropped.status().is_success());
    let why = lost_then_restored(&mut events, "iris_1").await;
    assert!(why.contains("no longer holds"), "{why}");
    assert_eq!(predictions(&backend, "iris_1").await, vec![0, 2]);

    backend.unload("iris_1").await.unwrap();
    assert!(!repo.join("iris_1").exists());
    drop(backend);
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn an_attached_mlserver_needs_an_http_url() {
    for bad in ["127.0.0.1:8080", "ftp://x", "", "http://"] {
        let e = MlServerSettings::attached(bad, "/tmp/m".into(), "s", 0, Duration::from_secs(1))
            .unwrap_err();
        assert!(e.to_string().contains("COSCALE_MLSERVER_URL"), "{e}");
    }
    let s = MlServerSettings::attached(
        "http://127.0.0.1:8080/",
        "/tmp/m".into(),
        "s",
        0,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(
        s.mode,
        mlserver::Mode::Attached {
            url: "http://127.0.0.1:8080".to_owned(),
            models_dir: "/tmp/m".into()
        }
    );
}
