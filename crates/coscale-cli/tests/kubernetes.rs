//! Kubernetes mode without a cluster: `coscale up --provisioner kubernetes` starts no
//! processes; the tests play the StatefulSet, starting `coscale agent` "pods"
//! configured through the environment as the operator's pod template does, and sending
//! them SIGTERM when the scale target says a pod should go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use coscale_api::rest::ServerStatus;
use support::*;

fn holds(server: &ServerStatus, replica: u32, model: &str) -> bool {
    server
        .replicas
        .iter()
        .any(|r| r.replica == replica && r.loaded_models.iter().any(|m| m == model))
}

async fn k8s_up(tag: &str) -> Up {
    Up::start(tag, &["--provisioner", "kubernetes"]).await
}

/// One model fits a replica: 1.5 MiB capacity, no overcommit, models take 1 MiB.
const ONE_MODEL: &[(&str, &str)] = &[
    ("COSCALE_MEMORY_BYTES", "1572864"),
    ("COSCALE_OVERCOMMIT_PERCENT", "0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_connect_by_themselves_and_a_scale_down_waits_for_the_models_to_move() {
    let up = k8s_up("k8s-scale").await;
    up.apply_text("server.yaml", &server_yaml("pods", 2))
        .await
        .unwrap();
    // nothing is started: both replicas wait for their pods; the target is the spec
    let s = wait_for("scaleTarget published", Duration::from_secs(30), || async {
        up.server("pods").await.filter(|s| s.scale_target.is_some())
    })
    .await;
    assert_eq!(s.scale_target, Some(2));
    assert_eq!(s.ready_replicas, 0);
    assert!(s.replicas.iter().all(|r| r.state == "Starting"), "{s:?}");
    assert!(
        !up.dir.join("logs/pods-0.log").exists(),
        "the kubernetes provisioner must not start processes"
    );

    // pod 1 first, so the model lands on the highest ordinal
    let mut pod1 = Pod::start(&up, "pods", 1, ONE_MODEL);
    wait_for("pod 1 ready", Duration::from_secs(60), || async {
        up.server("pods").await.filter(|s| s.ready_replicas == 1)
    })
    .await;
    up.apply_text("m.yaml", &model_yaml("m", "iris", 1))
        .await
        .unwrap();
    up.wait_available("m", 1).await;
    let s = up.server("pods").await.unwrap();
    assert!(holds(&s, 1, "m:1"), "{s:?}");
    let r1 = s.replicas.iter().find(|r| r.replica == 1).unwrap();
    let http = r1.http.as_deref().unwrap();
    assert!(
        http.starts_with("127.0.0.1:") && !http.ends_with(":0"),
        "the pod must advertise POD_IP with its bound port, not 0.0.0.0: {http}"
    );

    // pod 0 is filled by another model, so `m` cannot move there yet
    let _pod0 = Pod::start(&up, "pods", 0, ONE_MODEL);
    wait_for("pod 0 ready", Duration::from_secs(60), || async {
        up.server("pods").await.filter(|s| s.ready_replicas == 2)
    })
    .await;
    up.apply_text("filler.yaml", &model_yaml("filler", "iris-mlp", 1))
        .await
        .unwrap();
    up.wait_available("filler", 1).await;
    assert!(holds(&up.server("pods").await.unwrap(), 0, "filler:1"));

    // traffic reaches the model on the pod through the router
    let mut client = coscale_cli::infer::V2Client::rest(&up.endpoints.router_http).await;
    let req = coscale_cli::load::iris_request();
    client.infer("m", &req, &req.to_json()).await.unwrap();

    // scale down: replica 1 drains, but its model has nowhere to go yet
    up.apply_text("server.yaml", &server_yaml("pods", 1))
        .await
        .unwrap();
    wait_for("replica 1 draining", Duration::from_secs(30), || async {
        up.server("pods").await.filter(|s| {
            s.desired_replicas == 1
                && s.replicas
                    .iter()
                    .any(|r| r.replica == 1 && r.state == "Draining")
        })
    })
    .await;
    // several provisioner ticks (250 ms each): the target must hold at 2
    for _ in 0..8 {
        let s = up.server("pods").await.unwrap();
        assert_eq!(
            s.scale_target,
            Some(2),
            "the scale target dropped before `m` was available elsewhere: {s:?}"
        );
        assert!(!holds(&s, 0, "m:1"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // free pod 0: `m` loads there, and only then may the StatefulSet shrink
    up.client.delete("models", "filler").await.unwrap();
    let s = wait_for("scaleTarget 1", Duration::from_secs(60), || async {
        let s = up.server("pods").await?;
        if s.scale_target == Some(1) {
            return Some(s);
        }
        assert_eq!(s.scale_target, Some(2), "{s:?}");
        None
    })
    .await;
    assert!(
        holds(&s, 0, "m:1"),
        "scaleTarget 1 published before `m` was available on replica 0: {s:?}"
    );

    // the StatefulSet removes pod 1: SIGTERM; the agent drains and exits 0
    pod1.terminate();
    let status = pod1.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "pod 1 exited with {status}");
    let s = wait_for("pod 1 gone", Duration::from_secs(30), || async {
        up.server("pods").await.filter(|s| s.replicas.len() == 1)
    })
    .await;
    assert_eq!(s.scale_target, Some(1));
    client.infer("m", &req, &req.to_json()).await.unwrap();
    assert!(!up.log().contains("server replica started"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_pod_under_load_without_failed_requests() {
    let up = k8s_up("k8s-term").await;
    up.apply_text("server.yaml", &server_yaml("pods", 2))
        .await
        .unwrap();
    let grace = [("COSCALE_DRAIN_GRACE_SECONDS", "20")];
    let _pod0 = Pod::start(&up, "pods", 0, &grace);
    let mut pod1 = Pod::start(&up, "pods", 1, &grace);
    up.apply_text("m.yaml", &model_yaml("m", "iris", 2))
        .await
        .unwrap();
    up.wait_available("m", 2).await;

    let traffic = Traffic::start(&up, "m", 4).await;
    traffic.wait_served(200).await;
    let started = std::time::Instant::now();
    pod1.terminate();
    let status = pod1.wait_exit(Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert!(status.success(), "pod 1 exited with {status}");
    assert!(
        took < Duration::from_secs(15),
        "the drain waited for the grace deadline ({took:?}) instead of the control plane's Drain"
    );
    traffic.wait_served(200).await;
    let (served, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed while pod 1 drained: {:?}",
        failures.len(),
        served,
        &failures[..failures.len().min(5)]
    );
    let log = pod1.log_text();
    assert!(log.contains("asked to leave"), "{log}");
    assert!(!log.contains("draining anyway"), "{log}");
    let s = up.server("pods").await.unwrap();
    assert!(
        s.events.iter().any(|e| e.reason == "ReplicaLeaving"),
        "{:?}",
        s.events
    );
    eprintln!("pod 1 drained in {took:?} under load; {served} requests, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reads_its_token_file_again_at_every_reconnect() {
    let up = k8s_up("k8s-token").await;
    up.apply_text("server.yaml", &server_yaml("pods", 1))
        .await
        .unwrap();
    // a projected token that is not valid (yet): the session is refused
    let token = up.dir.join("projected-token");
    std::fs::write(&token, "expired-token").unwrap();
    let token_env = token.display().to_string();
    let pod = Pod::start(&up, "pods", 0, &[("COSCALE_TOKEN_FILE", &token_env)]);
    wait_for(
        "the refused session in the log",
        Duration::from_secs(30),
        || async {
            pod.log_text()
                .contains("control plane refused the session")
                .then_some(())
        },
    )
    .await;
    assert_eq!(up.server("pods").await.unwrap().ready_replicas, 0);
    // the kubelet rotates the token: the next reconnect uses the new one
    let valid = std::fs::read_to_string(up.dir.join("token")).unwrap();
    std::fs::write(&token, valid).unwrap();
    wait_for(
        "the pod connected with the rotated token",
        Duration::from_secs(30),
        || async { up.server("pods").await.filter(|s| s.ready_replicas == 1) },
    )
    .await;
}
