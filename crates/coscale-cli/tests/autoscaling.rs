//! End-to-end native autoscaling through the real binaries: load makes a model's
//! replicas grow and its Server grow with it (new processes); when load falls both
//! shrink back, with no failed request; chosen counts survive a control-plane restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coscale_cli::infer::V2Client;
use coscale_cli::load::iris_request;
use support::*;

/// Short thresholds so a test sees both directions in seconds.
const FAST: &[&str] = &[
    "--autoscaling-mode",
    "proportional",
    "--model-inference-lag-threshold",
    "2",
    "--model-inactive-seconds-threshold",
    "2",
    "--scaling-stability-window-seconds",
    "3",
    "--scaling-lag-window-seconds",
    "2",
    "--server-scale-down-delay-seconds",
    "1",
    "--server-pack-period-seconds",
    "2",
];

fn manifests() -> String {
    let uri = examples().join("models/iris-mlp");
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: pool\nspec:\n  serverConfig: builtin\n  replicas: 1\n  minReplicas: 1\n  maxReplicas: 3\n---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: mlp\nspec:\n  storageUri: file://{}\n  requirements: [onnx]\n  memory: 8Mi\n  replicas: 1\n  minReplicas: 1\n  maxReplicas: 3\n",
        uri.display()
    )
}

/// Closed-loop clients hammering `mlp` until stopped; returns the failures seen.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    async fn start(up: &Up, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let stop = stop.clone();
            let ok = ok.clone();
            let req = iris_request();
            let body = req.to_json();
            let mut client = if i % 2 == 0 {
                V2Client::rest(&up.endpoints.router_http).await
            } else {
                V2Client::grpc(&up.endpoints.router_grpc).await.unwrap()
            };
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.infer("mlp", &req, &body).await {
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

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

async fn wait_scaled(up: &Up, model: u32, server: u32, what: &str) {
    wait_for(what, Duration::from_secs(90), || async {
        let m = up.model("mlp").await?;
        let s = up.server("pool").await?;
        (m.desired_replicas == model
            && m.available_replicas == model
            && s.desired_replicas == server
            && s.ready_replicas == server
            && s.replicas.len() as u32 == server)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_grows_the_model_and_its_server_then_both_shrink_with_no_failed_request() {
    let up = Up::start("autoscale", FAST).await;
    up.apply_text("m.yaml", &manifests()).await.unwrap();
    up.wait_available("mlp", 1).await;

    let heavy = Traffic::start(&up, 16).await;
    wait_scaled(&up, 3, 3, "model and server at 3 replicas under load").await;
    let server = up.server("pool").await.unwrap();
    let pids: Vec<u32> = server.replicas.iter().filter_map(|r| r.pid).collect();
    assert_eq!(
        pids.len(),
        3,
        "three replica processes: {:?}",
        server.replicas
    );
    let (ok_heavy, errors) = heavy.stop().await;
    assert!(errors.is_empty(), "failed requests under load: {errors:?}");
    assert!(ok_heavy > 100);

    // a trickle keeps flowing while both scale down
    let light = Traffic::start(&up, 1).await;
    wait_scaled(&up, 1, 1, "model and server back to 1 replica").await;
    let (ok_light, errors) = light.stop().await;
    assert!(
        errors.is_empty(),
        "failed requests while scaling down: {errors:?}"
    );
    assert!(ok_light > 10);

    let m = up.model("mlp").await.unwrap();
    assert!(
        m.events.iter().any(|e| e.reason == "ScaledUp"),
        "{:?}",
        m.events
    );
    assert!(
        m.events.iter().any(|e| e.reason == "ScaledDown"),
        "{:?}",
        m.events
    );
    let s = up.server("pool").await.unwrap();
    assert!(
        s.events.iter().any(|e| e.reason == "ScaledUp"),
        "{:?}",
        s.events
    );
    let token = std::fs::read_to_string(up.dir.join("token")).unwrap();
    let metrics = reqwest::Client::new()
        .get(&up.endpoints.metrics)
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("coscale_autoscaler_decisions_total{kind=\"model\",direction=\"up\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_counts_chosen_by_the_autoscalers_survive_a_control_plane_restart() {
    let mut up = Up::start("autorestart", FAST).await;
    up.apply_text("m.yaml", &manifests()).await.unwrap();
    up.wait_available("mlp", 1).await;
    let heavy = Traffic::start(&up, 16).await;
    wait_for("model scaled up", Duration::from_secs(60), || async {
        up.model("mlp").await.filter(|m| m.desired_replicas >= 2)
    })
    .await;
    let (_, errors) = heavy.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
    let model_before = up.model("mlp").await.unwrap().desired_replicas;
    let server_before = up.server("pool").await.unwrap().desired_replicas;
    up.restart().await;
    let m = up.model("mlp").await.unwrap();
    let s = up.server("pool").await.unwrap();
    assert_eq!(m.desired_replicas, model_before);
    assert_eq!(s.desired_replicas, server_before);
}
