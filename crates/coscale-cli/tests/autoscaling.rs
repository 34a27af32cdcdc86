//! End-to-end native autoscaling through the real binaries: load makes a model's
//! replicas grow and its Server grow with it (new processes); when load falls both
//! shrink back, with no failed request; chosen counts survive a control-plane restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

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

async fn wait_scaled(up: &Up, model: u32, server: u32) {
    up.wait_scaled(("mlp", model), ("pool", server), Duration::from_secs(90))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_grows_the_model_and_its_server_then_both_shrink_with_no_failed_request() {
    let up = Up::start("autoscale", FAST).await;
    up.apply_text("m.yaml", &manifests()).await.unwrap();
    up.wait_available("mlp", 1).await;

    let heavy = Traffic::start(&up, "mlp", 16).await;
    wait_scaled(&up, 3, 3).await;
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
    let light = Traffic::start(&up, "mlp", 1).await;
    wait_scaled(&up, 1, 1).await;
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
    let metrics = up.control_metrics().await;
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
    let heavy = Traffic::start(&up, "mlp", 16).await;
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

/// Seldon's packing scenario (semantics §4): A and B end up on different server
/// replicas because C filled them; once C is removed, A and B fit on one replica, so
/// the Server packs B onto replica 0 and releases replica 1, without a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_model_is_removed_the_server_packs_and_releases_a_replica() {
    let up = Up::start(
        "pack",
        &[
            "--server-scale-down-delay-seconds",
            "1",
            "--server-pack-period-seconds",
            "2",
        ],
    )
    .await;
    let iris = examples().join("models/iris");
    let model = |name: &str, mem: &str, replicas: u32| {
        format!(
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n  storageUri: file://{}\n  requirements: [onnx]\n  memory: {mem}\n  replicas: {replicas}\n",
            iris.display()
        )
    };
    // each replica holds 1 GiB (+10 % overcommit): C (700 Mi) with A (300 Mi) fills replica 0
    let server = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: pool\nspec:\n  serverConfig: builtin\n  replicas: 2\n  minReplicas: 1\n  maxReplicas: 2\n  podSpec:\n    containers:\n    - name: runtime\n      resources:\n        requests:\n          memory: 1Gi\n";
    up.apply_text("s.yaml", server).await.unwrap();
    wait_for("two server replicas", Duration::from_secs(60), || async {
        up.server("pool").await.filter(|s| s.ready_replicas == 2)
    })
    .await;
    // placed together, the largest model first: C on 0 and 1, A on 0, B on 1
    let text = format!(
        "{}---\n{}---\n{}",
        model("c", "700Mi", 2),
        model("a", "300Mi", 1),
        model("b", "300Mi", 1)
    );
    up.apply_text("m.yaml", &text).await.unwrap();
    for m in ["a", "b"] {
        up.wait_available(m, 1).await;
    }
    up.wait_available("c", 2).await;
    let where_is = |m: &str| {
        let up = &up;
        let m = m.to_owned();
        async move {
            up.model(&m)
                .await
                .map(|s| s.replicas.iter().map(|r| r.replica).collect::<Vec<u32>>())
                .unwrap_or_default()
        }
    };
    assert_eq!(where_is("a").await, vec![0]);
    assert_eq!(where_is("b").await, vec![1]);

    let a_traffic = Traffic::start_with(&up, "a", 1, false).await;
    let b_traffic = Traffic::start_with(&up, "b", 1, false).await;
    up.client.delete("models", "c").await.unwrap();
    wait_for(
        "server packed to 1 replica",
        Duration::from_secs(90),
        || async {
            let s = up.server("pool").await?;
            (s.desired_replicas == 1 && s.replicas.len() == 1 && s.ready_replicas == 1).then_some(s)
        },
    )
    .await;
    for t in [a_traffic, b_traffic] {
        let (ok, errors) = t.stop().await;
        assert!(
            errors.is_empty(),
            "failed requests while packing: {errors:?}"
        );
        assert!(ok > 0);
    }
    assert_eq!(where_is("a").await, vec![0]);
    assert_eq!(where_is("b").await, vec![0]);
    let s = up.server("pool").await.unwrap();
    assert!(
        s.events
            .iter()
            .any(|e| e.reason == "ScaledDown" && e.message.contains("fit on 1 server replicas")),
        "{:?}",
        s.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_at_a_busy_built_in_replica_count_in_its_inference_lag() {
    // One replica, no autoscaling, 16 clients: the replica cannot keep up, so requests queue
    // there. They must queue where the agent counts them (waiting for an inference slot) and
    // not unread in its sockets behind workers that all compute inline, which the inference
    // lag (in flight, as pushed to the control plane) would not see: with every worker busy
    // inline it stayed at 0-2 whatever the load, and the native autoscaler never scaled.
    // A budget long enough that the models of a debug build run inline, as in a release build.
    let up = Up::start_env("lag", &[], &[("COSCALE_INLINE_BUDGET_US", "1000000")]).await;
    let manifests = format!(
        "{}---\n{}",
        server_yaml("pool", 1),
        model_yaml("mlp", "iris", 1)
    );
    up.apply_text("m.yaml", &manifests).await.unwrap();
    up.wait_available("mlp", 1).await;
    // The first inferences of a model are not yet measured as short and never run inline.
    let warm_up = Traffic::start(&up, "mlp", 1).await;
    warm_up.wait_served(20).await;
    let (_, errors) = warm_up.stop().await;
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    let settled = wait_for(
        "the warm-up to leave the lag",
        Duration::from_secs(30),
        || async { (up.model("mlp").await?.in_flight == 0).then_some(()) },
    );
    settled.await;
    let traffic = Traffic::start(&up, "mlp", 16).await;
    let lag = wait_for(
        "an inference lag of at least 4 with 16 clients on one replica",
        Duration::from_secs(60),
        || async {
            let m = up.model("mlp").await?;
            (m.in_flight >= 4).then_some(m.in_flight)
        },
    )
    .await;
    let (ok, errors) = traffic.stop().await;
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert!(ok > 0);
    assert!(lag <= 16, "more in flight than clients: {lag}");
}
