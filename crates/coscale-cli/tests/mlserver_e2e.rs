//! End-to-end: a `serverConfig: mlserver` Server under `coscale up`, with a real
//! MLServer 1.7.1 per server replica serving an sklearn model trained at test time.
//!
//! Needs MLServer: `COSCALE_MLSERVER` or `<repo>/.venv-mlserver/bin/mlserver`
//! (`.ci/install-mlserver.sh`). Without it the test fails when `CI=true` and is
//! skipped with a message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coscale_api::v2::{InferRequest, TensorData};
use coscale_cli::infer::V2Client;
use support::*;

/// The mlserver executable, or None (skip) outside CI.
fn mlserver() -> Option<PathBuf> {
    let candidate = std::env::var_os("COSCALE_MLSERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-mlserver/bin/mlserver"));
    if candidate.is_file() {
        return Some(std::fs::canonicalize(candidate).unwrap());
    }
    let msg = format!(
        "MLServer not found at {} (set COSCALE_MLSERVER or run .ci/install-mlserver.sh)",
        candidate.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// Trains the iris model with the venv's python into `dir/iris/model.joblib`.
fn train(mlserver: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("iris");
    let status = std::process::Command::new(mlserver.parent().unwrap().join("python"))
        .arg(repo().join("bench/mlserver/train_iris.py"))
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "training the iris model failed");
    out
}

fn predictions(resp: &coscale_api::v2::InferResponse) -> Vec<i64> {
    let out = resp.outputs.iter().find(|o| o.name == "predict").unwrap();
    match &out.data {
        TensorData::Int64(v) => v.clone(),
        other => panic!("predict is not INT64: {other:?}"),
    }
}

/// Process id of the MLServer child of an agent process.
fn mlserver_child(agent_pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid ...
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == agent_pid && String::from_utf8_lossy(&cmdline).contains("mlserver\0start\0"))
            .then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sklearn_model_on_two_mlserver_replicas_serves_and_survives_a_killed_mlserver() {
    let Some(cmd) = mlserver() else { return };
    let tmp = tempdir("mlserver-model");
    let model_dir = train(&cmd, &tmp);
    // `coscale up` passes its environment to the agents it starts.
    std::env::set_var("COSCALE_MLSERVER", &cmd);
    let up = Up::start("mlserver", &[]).await;
    up.apply_text(
        "ml.yaml",
        &format!(
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: ml\nspec:\n  serverConfig: mlserver\n  replicas: 2\n---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\nspec:\n  storageUri: file://{}\n  requirements: [sklearn]\n  replicas: 2\n",
            model_dir.display()
        ),
    )
    .await
    .unwrap();
    let status = up.wait_available("iris", 2).await;
    assert_eq!(status.server.as_deref(), Some("ml"));

    let req = InferRequest::from_json(IRIS_REQUEST.as_bytes(), None).unwrap();
    let body = IRIS_REQUEST.as_bytes().to_vec();
    let mut rest = V2Client::rest(&up.endpoints.router_http).await;
    let mut grpc = V2Client::grpc(&up.endpoints.router_grpc).await.unwrap();
    let r = rest.infer("iris", &req, &body).await.unwrap();
    assert_eq!(r.model_name, "iris");
    assert_eq!(predictions(&r), vec![0, 2], "over REST");
    let g = grpc.infer("iris", &req, &body).await.unwrap();
    assert_eq!(predictions(&g), vec![0, 2], "over gRPC");

    // Kill replica 0's MLServer under load.
    let server = up.server("ml").await.unwrap();
    let agent_pid = server
        .replicas
        .iter()
        .find(|r| r.replica == 0)
        .and_then(|r| r.pid)
        .unwrap();
    let victim = mlserver_child(agent_pid).expect("replica 0 runs an MLServer child");

    let traffic = Traffic::start(&up, "iris", 4).await;
    traffic.wait_served(50).await;

    // Watch the control plane's view: the model must drop to one available replica
    // while the MLServer is down (the agent reports it), then come back to two.
    let lowest = Arc::new(AtomicU32::new(u32::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (lowest, stop) = (lowest.clone(), stop.clone());
        let client = up.client.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = client.model("iris").await {
                    lowest.fetch_min(m.available_replicas, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let restarted = wait_for("MLServer restarted", Duration::from_secs(60), || async {
        mlserver_child(agent_pid).filter(|p| *p != victim)
    })
    .await;
    wait_for(
        "the control plane saw replica 0 lose the model",
        Duration::from_secs(30),
        || async { (lowest.load(Ordering::Relaxed) <= 1).then_some(()) },
    )
    .await;
    up.wait_available("iris", 2).await;
    let replicas = up.model("iris").await.unwrap().replicas;
    assert!(
        replicas
            .iter()
            .any(|r| r.replica == 0 && r.state == "Available"),
        "{replicas:?}"
    );
    traffic.wait_served(50).await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let (served, errors) = traffic.stop().await;
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    eprintln!("{served} requests, none failed; MLServer {victim} killed, {restarted} took over");
    assert_ne!(restarted, victim);

    // Stopping the platform stops the MLServers too (the provisioner kills agents with
    // SIGKILL; the agent's watchdog then stops its MLServer).
    let mut up = up;
    up.stop();
    wait_for(
        "MLServer stopped with its agent",
        Duration::from_secs(30),
        || async {
            let stat =
                std::fs::read_to_string(format!("/proc/{restarted}/stat")).unwrap_or_default();
            let gone = stat
                .rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
            gone.then_some(())
        },
    )
    .await;
}
