//! End-to-end: a `serverConfig: mlserver` Server under `coscale up`, with a real
//! MLServer 1.7.1 per server replica serving an sklearn model trained at test time:
//! serving over REST and gRPC and surviving a killed MLServer; placement by the
//! ServerConfig's capabilities; the native autoscaler growing the model (and the Server)
//! across MLServer replicas and shrinking both back; an agent attached to an MLServer
//! the test runs itself (sidecar mode) reloading its model after that server restarts.
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

use coscale_agent::backend::mlserver;
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
    let status = up
        .wait_available_within("iris", 2, Duration::from_secs(180))
        .await;
    assert_eq!(status.server.as_deref(), Some("ml"));

    let req = InferRequest::from_json(IRIS_REQUEST.as_bytes(), None).unwrap();
    let body = IRIS_REQUEST.as_bytes().to_vec();
    let mut rest = V2Client::rest(&up.endpoints.router_http).await;
    let mut grpc = V2Client::grpc(&up.endpoints.router_grpc).await.unwrap();
    let r = rest.infer("iris", &req, &body).await.unwrap();
    assert_eq!(r.model_name, "iris");
    assert_eq!(predictions(&r), vec![0, 2], "over REST");
    // A JSON request goes to MLServer as it is: one MLServer rejects comes back as a V2
    // error with MLServer's reason, and the replica keeps serving.
    let router = up.endpoints.router_http.trim_end_matches('/');
    let router = if router.starts_with("http") {
        router.to_owned()
    } else {
        format!("http://{router}")
    };
    let bad = reqwest::Client::new()
        .post(format!("{router}/v2/models/iris/infer"))
        .header("content-type", "application/json")
        .body(r#"{"inputs": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let err: serde_json::Value = bad.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("MLServer rejected the request")),
        "{err}"
    );
    assert_eq!(
        predictions(&rest.infer("iris", &req, &body).await.unwrap()),
        vec![0, 2]
    );
    let g = grpc.infer("iris", &req, &body).await.unwrap();
    assert_eq!(predictions(&g), vec![0, 2], "over gRPC");

    // The replicas advertise the mlserver ServerConfig's capabilities: a Model requiring
    // `xgboost` is placed on them (its artifact is the sklearn one, which MLServer runs),
    // one requiring `onnx` is not, and says why.
    let model = |name: &str, requirement: &str| {
        format!(
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n  storageUri: file://{}\n  requirements: [{requirement}]\n",
            model_dir.display()
        )
    };
    up.apply_text(
        "caps.yaml",
        &format!(
            "{}---\n{}",
            model("xg", "xgboost"),
            model("onnxonly", "onnx")
        ),
    )
    .await
    .unwrap();
    let xg = up
        .wait_available_within("xg", 1, Duration::from_secs(180))
        .await;
    assert_eq!(xg.server.as_deref(), Some("ml"));
    let failed = up.wait_model_state("onnxonly", "ScheduleFailed").await;
    assert!(
        failed.reason.contains("capabilities [onnx]"),
        "{}",
        failed.reason
    );
    let caps = up.server("ml").await.unwrap().capabilities;
    assert_eq!(
        caps,
        coscale_control::configs::RuntimeKind::Mlserver.default_capabilities()
    );
    for name in ["xg", "onnxonly"] {
        up.client.delete("models", name).await.unwrap();
    }

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

    let restarted = wait_for("MLServer restarted", Duration::from_secs(120), || async {
        mlserver_child(agent_pid).filter(|p| *p != victim)
    })
    .await;
    wait_for(
        "the control plane saw replica 0 lose the model",
        Duration::from_secs(30),
        || async { (lowest.load(Ordering::Relaxed) <= 1).then_some(()) },
    )
    .await;
    up.wait_available_within("iris", 2, Duration::from_secs(400))
        .await;
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

    // Stopping the platform stops the MLServers too, and nothing is left in the temporary
    // folder: the provisioner interrupts the agents (SIGKILL 5 s later), an agent stops its
    // MLServer and removes its private repository folder (MLServer's working directory);
    // for an agent that was killed, its watchdog does both.
    let repo = std::fs::read_link(format!("/proc/{restarted}/cwd")).unwrap();
    assert!(repo.join("settings.json").is_file(), "{}", repo.display());
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
    wait_for(
        "the agent's repository folder removed",
        Duration::from_secs(30),
        || async { (!repo.exists()).then_some(()) },
    )
    .await;
}

/// Server and Model manifests: an autoscaling `mlserver` Server (1..3 replicas) and an
/// autoscaling sklearn Model (1..2 replicas) with short per-Model autoscaling periods.
fn autoscaling_manifests(model_dir: &Path) -> String {
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata:
  name: ml
spec:
  serverConfig: mlserver
  replicas: 1
  minReplicas: 1
  maxReplicas: 3
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: iris
  annotations:
    coscale.io/autoscaling-mode: proportional
    coscale.io/inference-lag-threshold: \"2\"
    coscale.io/inactive-seconds-threshold: \"2\"
    coscale.io/stability-window-seconds: \"3\"
    coscale.io/lag-window-seconds: \"2\"
spec:
  storageUri: file://{}
  requirements: [sklearn]
  replicas: 1
  minReplicas: 1
  maxReplicas: 2
",
        model_dir.display()
    )
}

async fn wait_scaled(up: &Up, model: u32, server: u32) {
    up.wait_scaled(("iris", model), ("ml", server), Duration::from_secs(300))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_autoscaler_grows_an_sklearn_model_across_mlserver_replicas_and_shrinks_it() {
    let Some(cmd) = mlserver() else { return };
    let tmp = tempdir("mlserver-autoscale");
    let model_dir = train(&cmd, &tmp);
    let cmd_text = cmd.display().to_string();
    let up = Up::start_env(
        "mlautoscale",
        &[
            "--server-scale-down-delay-seconds",
            "1",
            "--server-pack-period-seconds",
            "2",
        ],
        &[("COSCALE_MLSERVER", &cmd_text)],
    )
    .await;
    up.apply_text("ml.yaml", &autoscaling_manifests(&model_dir))
        .await
        .unwrap();
    up.wait_available_within("iris", 1, Duration::from_secs(180))
        .await;

    // Load: the in-flight requests per replica exceed the threshold of 2, so the model
    // wants 2 replicas; one server replica holds at most one of them, so the Server
    // grows to 2 (a second agent with its own MLServer) and the model loads there.
    let heavy = Traffic::start(&up, "iris", 8).await;
    wait_scaled(&up, 2, 2).await;
    let m = up.model("iris").await.unwrap();
    let mut on: Vec<u32> = m.replicas.iter().map(|r| r.replica).collect();
    on.sort_unstable();
    assert_eq!(on, vec![0, 1], "{:?}", m.replicas);
    let server = up.server("ml").await.unwrap();
    let mlservers: Vec<u32> = server
        .replicas
        .iter()
        .map(|r| mlserver_child(r.pid.unwrap()).expect("each replica runs an MLServer"))
        .collect();
    assert_eq!(mlservers.len(), 2);
    assert_ne!(mlservers[0], mlservers[1], "distinct MLServer processes");
    heavy.wait_served(50).await;
    let (ok_heavy, errors) = heavy.stop().await;
    assert!(errors.is_empty(), "failed requests under load: {errors:?}");

    let (ok, describe, err) = up.cli(&["describe", "model", "iris"]);
    assert!(ok, "{err}");
    assert!(describe.contains("ScaledUp"), "{describe}");
    assert!(describe.contains("measured"), "{describe}");
    let (_, describe_server, _) = up.cli(&["describe", "server", "ml"]);
    let (_, models, _) = up.cli(&["get", "models"]);
    let (_, servers, _) = up.cli(&["get", "servers"]);
    eprintln!("--- scaled up\n{models}\n{servers}\n{describe}\n{describe_server}");

    // Load stops (a trickle keeps flowing): the model shrinks to 1 replica, the
    // emptied server replica is released with its MLServer.
    let light = Traffic::start(&up, "iris", 1).await;
    wait_scaled(&up, 1, 1).await;
    light.wait_served(5).await;
    let (ok_light, errors) = light.stop().await;
    assert!(
        errors.is_empty(),
        "failed requests while scaling down: {errors:?}"
    );
    eprintln!("{ok_heavy} requests under load, {ok_light} while scaling down, none failed");

    let m = up.model("iris").await.unwrap();
    for reason in ["ScaledUp", "ScaledDown"] {
        assert!(
            m.events.iter().any(|e| e.reason == reason),
            "{reason}: {:?}",
            m.events
        );
    }
    let s = up.server("ml").await.unwrap();
    for reason in ["ScaledUp", "ScaledDown"] {
        assert!(
            s.events.iter().any(|e| e.reason == reason),
            "{reason}: {:?}",
            s.events
        );
    }
    let (_, servers, _) = up.cli(&["get", "servers"]);
    let (_, models, _) = up.cli(&["get", "models"]);
    let (_, describe, _) = up.cli(&["describe", "model", "iris"]);
    eprintln!("--- scaled down\n{models}\n{servers}\n{describe}");
    wait_for(
        "the released replica's MLServer stopped",
        Duration::from_secs(60),
        || async { (!running(mlservers[1])).then_some(()) },
    )
    .await;
}

/// Whether a process exists and is not a zombie.
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

/// An MLServer the test runs itself on `ports` (REST, gRPC, metrics), serving `repo`, as
/// a Kubernetes sidecar container runs beside the agent; returned once it is ready. `None` if
/// it exited first: the free ports are not reserved, so another test's MLServer may have taken
/// one meanwhile (its log then says "Failed to bind").
async fn sidecar(cmd: &Path, repo: &Path, ports: (u16, u16, u16)) -> Option<std::process::Child> {
    let mut child = mlserver::serve_command(cmd, repo, ports)
        .unwrap()
        .0
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{}/v2/health/ready", ports.0);
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(child);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "the sidecar MLServer was not ready within 180 s (log in {})",
        repo.display()
    );
}

/// [`sidecar`] on the first of up to five sets of `ports` that works (the same set each time
/// when `ports` always gives it).
async fn sidecar_on(
    cmd: &Path,
    repo: &Path,
    mut ports: impl FnMut() -> (u16, u16, u16),
) -> (std::process::Child, (u16, u16, u16)) {
    for _ in 0..5 {
        let chosen = ports();
        if let Some(child) = sidecar(cmd, repo, chosen).await {
            return (child, chosen);
        }
    }
    panic!(
        "the sidecar MLServer could not bind its ports five times (log in {})",
        repo.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_attached_to_a_sidecar_mlserver_reloads_its_model_after_the_sidecar_restarts() {
    let Some(cmd) = mlserver() else { return };
    let tmp = tempdir("mlserver-sidecar");
    let model_dir = train(&cmd, &tmp);
    let repo = tmp.join("models");
    std::fs::create_dir_all(&repo).unwrap();
    let port = || mlserver::free_port().unwrap();
    let (mut sidecar_proc, ports) = sidecar_on(&cmd, &repo, || (port(), port(), port())).await;
    let url = format!("http://127.0.0.1:{}", ports.0);
    let repo_text = repo.display().to_string();
    // As in a pod: the agent container gets COSCALE_MLSERVER_URL and COSCALE_MODELS_DIR.
    let up = Up::start_env(
        "mlsidecar",
        &[],
        &[
            ("COSCALE_MLSERVER_URL", &url),
            ("COSCALE_MODELS_DIR", &repo_text),
        ],
    )
    .await;
    up.apply_text(
        "side.yaml",
        &format!(
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: side\nspec:\n  serverConfig: mlserver\n  replicas: 1\n---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\nspec:\n  storageUri: file://{}\n  requirements: [sklearn]\n",
            model_dir.display()
        ),
    )
    .await
    .unwrap();
    up.wait_available_within("iris", 1, Duration::from_secs(180))
        .await;
    let req = InferRequest::from_json(IRIS_REQUEST.as_bytes(), None).unwrap();
    let body = IRIS_REQUEST.as_bytes().to_vec();
    let mut rest = V2Client::rest(&up.endpoints.router_http).await;
    let r = rest.infer("iris", &req, &body).await.unwrap();
    assert_eq!(predictions(&r), vec![0, 2]);
    // The agent wrote the model into the shared folder and started no MLServer itself.
    assert!(repo.join("iris_1/model-settings.json").is_file());
    let agent = up.server("side").await.unwrap().replicas[0].pid.unwrap();
    assert_eq!(mlserver_child(agent), None);

    // The sidecar dies: the agent sees it down and the model goes unavailable there ...
    sidecar_proc.kill().unwrap();
    sidecar_proc.wait().unwrap();
    wait_for(
        "iris unavailable while the sidecar is down",
        Duration::from_secs(60),
        || async { up.model("iris").await.filter(|m| m.available_replicas == 0) },
    )
    .await;
    // ... and when the sidecar is back (same port, same folder), the agent reloads it.
    sidecar_proc = sidecar_on(&cmd, &repo, || ports).await.0;
    // (the restarted sidecar has reloaded it)
    up.wait_available_within("iris", 1, Duration::from_secs(180))
        .await;
    let r = rest.infer("iris", &req, &body).await.unwrap();
    assert_eq!(predictions(&r), vec![0, 2]);
    let index: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v2/repository/index"))
        .json(&serde_json::json!({"ready": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index[0]["name"], "iris_1", "{index}");
    let m = up.model("iris").await.unwrap();
    eprintln!("{:?}", m.events);
    drop(up);
    sidecar_proc.kill().unwrap();
    sidecar_proc.wait().unwrap();
}
