//! End-to-end tests of the local platform through the real `coscale` binary:
//! control plane + router + agent processes + built-in runtime on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use coscale_api::v2::{InferRequest, TensorData};
use coscale_cli::infer::{InferFailure, V2Client};
use support::*;

fn iris() -> (InferRequest, Vec<u8>) {
    let req = InferRequest::from_json(IRIS_REQUEST.as_bytes(), None).unwrap();
    (req, IRIS_REQUEST.as_bytes().to_vec())
}

fn labels(resp: &coscale_api::v2::InferResponse) -> Vec<i64> {
    let out = resp.outputs.iter().find(|o| o.name == "label").unwrap();
    match &out.data {
        TensorData::Int64(v) => v.clone(),
        other => panic!("label is not INT64: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_models_on_a_two_replica_server_serve_rest_and_grpc_through_the_router() {
    let up = Up::start("three", &[]).await;
    let resp = up
        .apply_file(&examples().join("manifests/multi-model.yaml"))
        .await
        .unwrap();
    assert_eq!(resp.results.len(), 4);
    up.wait_available("iris", 2).await;
    up.wait_available("iris-mlp", 1).await;
    up.wait_available("iris-b", 1).await;

    // placement: iris on both replicas, every model on server onnx, low ordinals first
    let placed = up.model("iris").await.unwrap();
    assert_eq!(placed.server.as_deref(), Some("onnx"));
    let mut reps: Vec<u32> = placed.replicas.iter().map(|r| r.replica).collect();
    reps.sort();
    assert_eq!(reps, vec![0, 1]);
    let server = up.server("onnx").await.unwrap();
    assert_eq!(server.ready_replicas, 2);
    assert_eq!(server.loaded_models, 4);

    let (req, body) = iris();
    let mut rest = V2Client::rest(&up.endpoints.router_http).await;
    let mut grpc = V2Client::grpc(&up.endpoints.router_grpc).await.unwrap();
    for model in ["iris", "iris-mlp", "iris-b"] {
        let r = rest.infer(model, &req, &body).await.unwrap();
        assert_eq!(r.model_name, model);
        assert_eq!(labels(&r), vec![0, 2], "{model} over REST");
        let g = grpc.infer(model, &req, &body).await.unwrap();
        assert_eq!(labels(&g), vec![0, 2], "{model} over gRPC");
    }

    // the CLI reads the same state
    let (ok, out, err) = up.cli(&["get", "models"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("iris-mlp") && out.contains("ModelAvailable"),
        "{out}"
    );
    // the built-in ServerConfigs are listed, with the runtime they run and the Servers on them
    let (ok, out, err) = up.cli(&["get", "serverconfigs"]);
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "SOURCE", "RUNTIME", "SERVERS", "AGE"],
        "{out}"
    );
    assert!(
        rows.contains(&vec!["builtin", "built-in", "builtin", "onnx", "-"]),
        "{out}"
    );
    assert!(
        rows.contains(&vec!["mlserver", "built-in", "mlserver", "-", "-"]),
        "{out}"
    );
    assert!(
        rows.contains(&vec!["triton", "built-in", "triton", "-", "-"]),
        "{out}"
    );
    let (ok, out, err) = up.cli(&["get", "serverconfig", "builtin", "-o", "json"]);
    assert!(ok, "{err}");
    let config: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(config[0]["servers"], serde_json::json!(["onnx"]), "{out}");
    let (ok, _, err) = up.cli(&["get", "serverconfig", "nope"]);
    assert!(
        !ok && err.contains("ServerConfig \"nope\" not found"),
        "{err}"
    );
    let (ok, out, _) = up.cli(&["infer", "iris", "--grpc", "--data", IRIS_REQUEST]);
    assert!(ok);
    assert!(out.contains("\"label\""), "{out}");
    // metrics with Seldon's names on the agents and coscale's on the control plane
    let text = up.control_metrics().await;
    assert!(
        text.contains("coscale_server_ready_replicas{server=\"onnx\"} 2"),
        "{text}"
    );
    let replica0 = up.server("onnx").await.unwrap().replicas[0].clone();
    // The replica's own gRPC port (TCP), as a router on another machine reaches it.
    let mut direct = V2Client::grpc(&format!("http://{}", replica0.grpc.unwrap()))
        .await
        .unwrap();
    let d = direct.infer("iris", &req, &body).await.unwrap();
    assert_eq!(labels(&d), vec![0, 2], "iris over the replica's gRPC port");
    let agent = reqwest::get(format!("http://{}/metrics", replica0.http.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        agent.contains("seldon_model_infer_total{server=\"onnx\",server_replica=\"0\",model=\"iris\",model_internal=\"iris_1\",method_type=\"rest\",code=\"200\"}"),
        "{agent}"
    );
    assert!(
        agent.contains("seldon_model_infer_total{server=\"onnx\",server_replica=\"0\",model=\"iris\",model_internal=\"iris_1\",method_type=\"grpc\",code=\"OK\"}"),
        "{agent}"
    );
    assert!(agent.contains("seldon_loaded_model_gauge"), "{agent}");
}

/// `--router-threads` 1 (one thread handles a request end to end) and 2 (a runtime of its
/// own with two workers): the router serves REST and gRPC, many requests at once, and its
/// errors, as on the shared runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_on_its_own_runtime_serves_rest_and_grpc_under_concurrency() {
    for threads in ["1", "2"] {
        let up = Up::start(
            &format!("router-threads-{threads}"),
            &["--router-threads", threads],
        )
        .await;
        up.apply_file(&examples().join("manifests/multi-model.yaml"))
            .await
            .unwrap();
        up.wait_available("iris", 2).await;
        up.wait_available("iris-mlp", 1).await;
        let (req, body) = iris();
        let mut calls = Vec::new();
        for i in 0..64 {
            let (req, body) = (req.clone(), body.clone());
            let (http, grpc) = (
                up.endpoints.router_http.clone(),
                up.endpoints.router_grpc.clone(),
            );
            calls.push(tokio::spawn(async move {
                let model = if i % 2 == 0 { "iris" } else { "iris-mlp" };
                let r = if i % 4 < 2 {
                    V2Client::rest(&http).await.infer(model, &req, &body).await
                } else {
                    V2Client::grpc(&grpc)
                        .await
                        .unwrap()
                        .infer(model, &req, &body)
                        .await
                };
                labels(&r.unwrap())
            }));
        }
        for call in calls {
            assert_eq!(call.await.unwrap(), vec![0, 2], "router threads {threads}");
        }
        let mut rest = V2Client::rest(&up.endpoints.router_http).await;
        let err = rest.infer("nope", &req, &body).await.unwrap_err();
        assert!(
            err.to_string().contains("404"),
            "router threads {threads}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_process_under_traffic_fails_no_request_and_it_comes_back() {
    let up = Up::start("kill", &[]).await;
    up.apply_text(
        "m.yaml",
        &format!(
            "{}---\n{}",
            server_yaml("pool", 2),
            model_yaml("iris", "iris", 2)
        ),
    )
    .await
    .unwrap();
    up.wait_available("iris", 2).await;
    let before = up.server("pool").await.unwrap();
    let victim = before.replicas.iter().find(|r| r.replica == 1).unwrap();
    let victim_pid = victim.pid.unwrap();

    let traffic = Traffic::start(&up, "iris", 4).await;
    traffic.wait_served(50).await;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &victim_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // the provisioner restarts it and the model is placed there again
    let after = wait_for("replica 1 restarted", Duration::from_secs(30), || async {
        up.server("pool").await.filter(|s| {
            s.replicas.iter().any(|r| {
                r.replica == 1 && r.state == "Ready" && r.pid.is_some_and(|p| p != victim_pid)
            })
        })
    })
    .await;
    up.wait_available("iris", 2).await;
    traffic.wait_served(50).await;
    let (_, errors) = traffic.stop().await;
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert!(
        after.events.iter().any(|e| e.reason == "ReplicaCrashed"),
        "{:?}",
        after.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_control_plane_brings_every_model_back_without_reapplying() {
    let mut up = Up::start("restart", &[]).await;
    up.apply_file(&examples().join("manifests/multi-model.yaml"))
        .await
        .unwrap();
    up.wait_available("iris", 2).await;
    let v_before = up.model("iris").await.unwrap().version;
    // Each replica also serves REST on a private Unix socket, which the router uses.
    let sockets = up.dir.join("sockets");
    for name in ["onnx-0.sock", "onnx-1.sock"] {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(sockets.join(name)).unwrap();
        assert!(meta.file_type().is_socket(), "{name}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    // Stopped with SIGTERM, `coscale up` stops its replicas as Ctrl-C would: every agent
    // stops by itself (SIGINT) rather than being killed.
    up.stop();
    let logs: Vec<_> = std::fs::read_dir(up.dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!logs.is_empty());
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("agent stopped"),
            "{} does not end with the agent stopping by itself:\n{}",
            log.display(),
            text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
        );
    }
    let left: Vec<_> = std::fs::read_dir(&sockets).unwrap().collect();
    assert!(left.is_empty(), "agents remove their sockets: {left:?}");
    up.restart().await;
    up.wait_available("iris", 2).await;
    up.wait_available("iris-mlp", 1).await;
    up.wait_available("iris-b", 1).await;
    assert_eq!(up.model("iris").await.unwrap().version, v_before);
    let (req, body) = iris();
    let mut rest = V2Client::rest(&up.endpoints.router_http).await;
    assert_eq!(
        labels(&rest.infer("iris", &req, &body).await.unwrap()),
        vec![0, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_corrupt_artifact_fails_only_that_model() {
    let up = Up::start("badart", &[]).await;
    let garbage = up.dir.join("garbage.onnx");
    std::fs::write(&garbage, b"this is not an onnx file").unwrap();
    let text = format!(
        "{}---\n{}---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: missing\nspec:\n  storageUri: file:///nonexistent/coscale/model.onnx\n  requirements: [onnx]\n---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: corrupt\nspec:\n  storageUri: file://{}\n  requirements: [onnx]\n",
        server_yaml("pool", 1),
        model_yaml("iris", "iris", 1),
        garbage.display()
    );
    up.apply_text("m.yaml", &text).await.unwrap();
    let missing = up.wait_model_state("missing", "ModelFailed").await;
    assert!(
        missing.reason.contains("does not exist"),
        "{}",
        missing.reason
    );
    let corrupt = up.wait_model_state("corrupt", "ModelFailed").await;
    assert!(
        corrupt.reason.contains("garbage.onnx"),
        "{}",
        corrupt.reason
    );
    up.wait_available("iris", 1).await;
    let (req, body) = iris();
    let mut rest = V2Client::rest(&up.endpoints.router_http).await;
    assert_eq!(
        labels(&rest.infer("iris", &req, &body).await.unwrap()),
        vec![0, 2]
    );
    // the failed models have no replica to serve them
    let err = rest.infer("corrupt", &req, &body).await.unwrap_err();
    assert_eq!(err.kind(), "HTTP 503", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_v2_errors_that_say_what_is_wrong() {
    let up = Up::start("badreq", &["--body-limit", "2048"]).await;
    let text = format!(
        "{}---\n{}---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: needs-sklearn\nspec:\n  storageUri: file:///tmp/x\n  requirements: [sklearn]\n",
        server_yaml("pool", 1),
        model_yaml("iris", "iris", 1)
    );
    up.apply_text("m.yaml", &text).await.unwrap();
    up.wait_available("iris", 1).await;
    let sched = up.wait_model_state("needs-sklearn", "ScheduleFailed").await;
    assert!(sched.reason.contains("sklearn"), "{}", sched.reason);

    let http = reqwest::Client::new();
    let base = &up.endpoints.router_http;
    let post = |model: &str, body: Vec<u8>| {
        http.post(format!("{base}/v2/models/{model}/infer"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let check = |status: u16, body: &str, want_status: u16, want_text: &str| {
        assert_eq!(status, want_status, "{body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(want_text),
            "{msg:?} should mention {want_text:?}"
        );
    };
    let r = post("nope", IRIS_REQUEST.into()).await.unwrap();
    check(r.status().as_u16(), &r.text().await.unwrap(), 404, "nope");
    let r = post("needs-sklearn", IRIS_REQUEST.into()).await.unwrap();
    check(
        r.status().as_u16(),
        &r.text().await.unwrap(),
        503,
        "no available replica",
    );
    let r = post("iris", b"{\"inputs\": [".to_vec()).await.unwrap();
    check(r.status().as_u16(), &r.text().await.unwrap(), 400, "");
    let wrong_shape =
        r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    let r = post("iris", wrong_shape.into()).await.unwrap();
    check(r.status().as_u16(), &r.text().await.unwrap(), 400, "input");
    let wrong_type =
        r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"INT32","data":[1,2,3,4]}]}"#;
    let r = post("iris", wrong_type.into()).await.unwrap();
    check(r.status().as_u16(), &r.text().await.unwrap(), 400, "INT32");
    let big = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}],"id":"{}"}}"#,
        "x".repeat(4096)
    );
    let r = post("iris", big.into()).await.unwrap();
    check(r.status().as_u16(), &r.text().await.unwrap(), 413, "");

    // The same over gRPC: the router's own refusals, and the replica's, which reach the router
    // as trailers-only HTTP/1.1 answers and the client as gRPC statuses with the reason.
    let mut grpc = V2Client::grpc(&up.endpoints.router_grpc).await.unwrap();
    let call = |json: &str| InferRequest::from_json(json.as_bytes(), None).unwrap();
    for (model, json, code, reason) in [
        ("nope", IRIS_REQUEST, "NotFound", "nope"),
        (
            "needs-sklearn",
            IRIS_REQUEST,
            "Unavailable",
            "no available replica",
        ),
        ("iris", wrong_shape, "InvalidArgument", "input"),
        ("iris", wrong_type, "InvalidArgument", "INT32"),
    ] {
        match grpc.infer(model, &call(json), &[]).await {
            Err(InferFailure::Grpc { code: got, message }) => {
                assert_eq!(got, code, "{model}: {message}");
                assert!(
                    message.contains(reason),
                    "{message:?} should mention {reason:?}"
                );
            }
            other => panic!("{model} over gRPC: {other:?}"),
        }
    }
    // The connection still serves a good call.
    let (req, body) = iris();
    assert_eq!(
        labels(&grpc.infer("iris", &req, &body).await.unwrap()),
        vec![0, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_manifest_applies_nothing_and_says_where() {
    let up = Up::start("badman", &[]).await;
    let text = format!(
        "{}---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: typo\nspec:\n  storagUri: file:///tmp/x\n",
        server_yaml("pool", 1)
    );
    let path = up.dir.join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    let (ok, _out, err) = up.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("document 2") && err.contains("storageUri"),
        "{err}"
    );
    // the API refuses it too, whole
    assert!(up.apply_file(&path).await.is_err());
    assert!(up.client.servers().await.unwrap().is_empty());
    assert!(up.client.models().await.unwrap().is_empty());
    // a Server whose ServerConfig does not exist is refused
    let e = up
        .apply_text(
            "s.yaml",
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: s\nspec:\n  serverConfig: nope\n",
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("ServerConfig \"nope\" does not exist"),
        "{e}"
    );
    // and every API call needs the token
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/models", up.endpoints.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_makes_a_new_version_that_takes_over_then_the_old_one_unloads() {
    let up = Up::start("version", &[]).await;
    up.apply_text(
        "m.yaml",
        &format!(
            "{}---\n{}",
            server_yaml("pool", 1),
            model_yaml("m", "iris", 1)
        ),
    )
    .await
    .unwrap();
    let v1 = up.wait_available("m", 1).await;
    assert_eq!(v1.version, 1);
    // replica-count change: same version
    up.apply_text(
        "m2.yaml",
        &model_yaml("m", "iris", 1).replace("memory: 1Mi", "memory: 2Mi"),
    )
    .await
    .unwrap();
    let v2 = wait_for(
        "version 2 available alone",
        Duration::from_secs(60),
        || async {
            up.model("m").await.filter(|m| {
                m.version == 2
                    && m.state == "ModelAvailable"
                    && m.replicas.iter().all(|r| r.version == 2)
            })
        },
    )
    .await;
    assert_eq!(v2.replicas.len(), 1);
    // deleting unloads and the router forgets it
    up.client.delete("models", "m").await.unwrap();
    wait_for("model gone", Duration::from_secs(30), || async {
        up.model("m").await.is_none().then_some(())
    })
    .await;
    let (req, body) = iris();
    let mut rest = V2Client::rest(&up.endpoints.router_http).await;
    let err = rest.infer("m", &req, &body).await.unwrap_err();
    assert_eq!(err.kind(), "HTTP 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_exit_by_themselves_when_their_control_plane_crashes() {
    let mut up = Up::start("orphans", &["--orphan-grace-seconds", "2"]).await;
    up.apply_text("s.yaml", &server_yaml("pool", 2))
        .await
        .unwrap();
    let server = wait_for("two replicas", Duration::from_secs(60), || async {
        up.server("pool").await.filter(|s| s.ready_replicas == 2)
    })
    .await;
    let pids: Vec<u32> = server.replicas.iter().filter_map(|r| r.pid).collect();
    assert_eq!(pids.len(), 2);
    // SIGKILL: no chance to stop its children
    let mut child = up.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(
        "orphaned replicas exited",
        Duration::from_secs(30),
        || async {
            pids.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p))
                .then_some(())
        },
    )
    .await;
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}
