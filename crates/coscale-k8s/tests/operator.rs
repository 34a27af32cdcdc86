//! The reconcilers against a mock Kubernetes API server that states, in order, every call
//! it expects (the kube-rs controller-rs pattern: `tower_test::mock::pair` behind
//! `kube::Client::new`), and against a real control plane (`coscale_control`) on
//! 127.0.0.1 — except the scale tests, whose control plane is a small fake that
//! publishes a `scaleTarget` (the field the control plane's Kubernetes provisioner adds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use coscale_api::rest::{ManifestRequest, ServerConfigStatus};
use coscale_k8s::crd::{Model, Server};
use coscale_k8s::desired::{PodSettings, FINALIZER};
use coscale_k8s::reconcile::{reconcile_model, reconcile_server, Context, Error};
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(60);
const NS: &str = "ns1";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A real control plane on 127.0.0.1 (API + reconcile loop), in a temporary directory.
struct ControlPlane {
    client: coscale_client::Client,
    _dir: tempfile::TempDir,
    _tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// `coscale apply` of one object.
    async fn apply(&self, object: Value) {
        let req = ManifestRequest {
            source: "test".into(),
            text: object.to_string(),
            dry_run: false,
            base_dir: None,
        };
        self.client.apply(&req).await.unwrap();
    }
}

async fn control_plane() -> ControlPlane {
    let dir = tempfile::tempdir().unwrap();
    let token = "test-token".to_owned();
    let config = coscale_control::service::ControlConfig {
        reconcile_interval: Duration::from_millis(100),
        ..coscale_control::service::ControlConfig::new(dir.path().to_owned(), token.clone())
    };
    let cp = coscale_control::service::ControlPlane::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = coscale_control::api::router(cp.clone());
    let serve = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let reconcile = tokio::spawn(async move { cp.run_reconciler(std::future::pending()).await });
    let endpoints = coscale_client::api_endpoints(&format!("http://{addr}"), None, None);
    ControlPlane {
        client: coscale_client::Client::from_parts(endpoints, token),
        _dir: dir,
        _tasks: vec![serve, reconcile],
    }
}

/// A fake control plane: accepts applies and answers `GET /api/v1/servers/NAME` with
/// `server` (which carries `scaleTarget`).
async fn fake_control_plane(server: Value) -> coscale_client::Client {
    use axum::routing::{get, post};
    let applied = json!({"dry_run": false, "results": []});
    let app = axum::Router::new()
        .route(
            "/api/v1/apply",
            post(move || async move { axum::Json(applied) }),
        )
        .route(
            "/api/v1/servers/{name}",
            get(move || async move { axum::Json(server) }),
        );
    serve_fake(app).await
}

/// Serves a fake control plane's `app` on 127.0.0.1; a client of it.
async fn serve_fake(app: axum::Router) -> coscale_client::Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    coscale_client::Client::from_parts(
        coscale_client::api_endpoints(&format!("http://{addr}"), None, None),
        "t".into(),
    )
}

fn context(control: coscale_client::Client) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context {
        kube: kube::Client::new(service, NS),
        control,
        pods: PodSettings {
            agent_control_plane: "http://coscale-control.coscale-system:9005".into(),
        },
        config_namespace: Some("coscale-system".into()),
        resync: Duration::from_secs(5),
    };
    (Arc::new(ctx), handle)
}

/// One call the mock API server expects, and what it answers.
struct Expect {
    method: &'static str,
    /// `PATH[?K=V&...]`: the path must be equal, each `K=V` must be in the query.
    path: String,
    answer: Box<dyn FnOnce(Value) -> (u16, Value) + Send>,
}

fn expect(
    method: &'static str,
    path: &str,
    answer: impl FnOnce(Value) -> (u16, Value) + Send + 'static,
) -> Expect {
    Expect {
        method,
        path: path.to_owned(),
        answer: Box::new(answer),
    }
}

/// Runs `reconcile` against the calls of `script` in order; fails on any call out of
/// order or not in the script. Returns the reconcile's result and every request body.
async fn run<F>(
    mut handle: Handle,
    script: Vec<Expect>,
    reconcile: F,
) -> (Result<Action, Error>, Vec<Value>)
where
    F: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    let task = tokio::spawn(reconcile);
    let mut bodies = Vec::new();
    for step in script {
        let (req, send) = tokio::time::timeout(DEADLINE, handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no {} {} within {DEADLINE:?}", step.method, step.path))
            .unwrap_or_else(|| panic!("the client went away before {} {}", step.method, step.path));
        let (want_path, want_query) = step.path.split_once('?').unwrap_or((&step.path, ""));
        let query: Vec<&str> = req.uri().query().unwrap_or_default().split('&').collect();
        let ok = req.method().as_str() == step.method
            && req.uri().path() == want_path
            && want_query
                .split('&')
                .filter(|p| !p.is_empty())
                .all(|p| query.contains(&p));
        assert!(
            ok,
            "expected {} {}, got {} {}",
            step.method,
            step.path,
            req.method(),
            req.uri()
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        bodies.push(body.clone());
        let (code, answer) = (step.answer)(body);
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
    // Either the pass ends (and drops its client: `None`), or it makes a call the
    // script does not have.
    if let Ok(Some((req, _))) = tokio::time::timeout(DEADLINE, handle.next_request()).await {
        panic!("unexpected call {} {}", req.method(), req.uri());
    }
    let result = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("reconcile did not finish")
        .unwrap();
    (result, bodies)
}

fn server_cr(spec: Value) -> Server {
    serde_json::from_value(json!({
        "apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
        "metadata": {"name": "mlserver", "namespace": NS, "uid": "uid-1", "generation": 1,
                     "finalizers": [FINALIZER]},
        "spec": spec,
    }))
    .unwrap()
}

fn server_config_cr() -> Value {
    json!({
        "apiVersion": "mlops.seldon.io/v1alpha1", "kind": "ServerConfig",
        "metadata": {"name": "mlserver", "namespace": NS, "uid": "uid-c"},
        "spec": {"podSpec": {"containers": [
            {"name": "agent", "image": "ghcr.io/coscale/coscale:0.1.0", "args": ["agent"],
             "env": [{"name": "COSCALE_RUNTIME", "value": "mlserver"},
                     {"name": "COSCALE_CAPABILITIES", "value": "mlserver,sklearn"}]},
            {"name": "mlserver", "image": "seldonio/mlserver:1.7.1"}
        ]}}
    })
}

/// The answer of a patch: the object sent back (as the API server would store it).
fn echo(body: Value) -> (u16, Value) {
    (200, body)
}

/// The Server status patch that ends a reconcile of `server`, answered with `server` and the
/// patched status.
fn server_status_patch(server: &Server) -> Expect {
    let object = serde_json::to_value(server).unwrap();
    expect(
        "PATCH",
        &format!("{SERVERS}/status?{SSA}"),
        with_status(object),
    )
}

/// The answer of a status patch: the whole object with the status sent.
fn with_status(object: Value) -> impl FnOnce(Value) -> (u16, Value) + Send {
    move |body| {
        let mut o = object;
        o["status"] = body["status"].clone();
        (200, o)
    }
}

fn service_list(names: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "1"},
           "items": names.iter().map(|n| json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": n, "namespace": NS}})).collect::<Vec<_>>()})
}

fn sts_with_ready(ready: i32) -> impl FnOnce(Value) -> (u16, Value) + Send {
    move |mut body| {
        body["status"] = json!({"replicas": ready, "readyReplicas": ready});
        (200, body)
    }
}

const SERVERS: &str = "/apis/mlops.seldon.io/v1alpha1/namespaces/ns1/servers/mlserver";
const SERVICES: &str = "/api/v1/namespaces/ns1/services";
const SSA: &str = "fieldManager=coscale-operator&force=true";

#[tokio::test]
async fn a_server_becomes_a_statefulset_and_one_service_per_replica() {
    let cp = control_plane().await;
    let (ctx, handle) = context(cp.client.clone());
    let server = server_cr(json!({
        "serverConfig": "mlserver", "replicas": 2, "capabilities": ["sklearn", "xgboost"],
        "podSpec": {"containers": [{"name": "mlserver", "image": "seldonio/mlserver:1.3.4"}]}
    }));
    let script = vec![
        expect(
            "GET",
            "/apis/mlops.seldon.io/v1alpha1/namespaces/ns1/serverconfigs/mlserver",
            |_| (200, server_config_cr()),
        ),
        expect("PATCH", &format!("{SERVICES}/mlserver-0?{SSA}"), echo),
        expect("PATCH", &format!("{SERVICES}/mlserver-1?{SSA}"), echo),
        expect(
            "GET",
            &format!("{SERVICES}?labelSelector=mlops.seldon.io%2Fserver%3Dmlserver"),
            |_| {
                (
                    200,
                    service_list(&["mlserver-0", "mlserver-1", "mlserver-2"]),
                )
            },
        ),
        expect("DELETE", &format!("{SERVICES}/mlserver-2"), |_| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mlserver-2", "namespace": NS}}),
            )
        }),
        expect(
            "PATCH",
            &format!("/apis/apps/v1/namespaces/ns1/statefulsets/mlserver?{SSA}"),
            sts_with_ready(1),
        ),
        server_status_patch(&server),
    ];
    let (result, bodies) = run(handle, script, reconcile_server(Arc::new(server), ctx)).await;
    assert!(matches!(&result, Ok(a) if *a == Action::requeue(Duration::from_secs(5))));

    // Services: headless, one pod each, owned by the Server.
    let svc = &bodies[1];
    assert_eq!(svc["metadata"]["name"], "mlserver-0");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"statefulset.kubernetes.io/pod-name": "mlserver-0"})
    );
    assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(
        svc["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "coscale"
    );
    assert_eq!(
        bodies[2]["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
        "mlserver-1"
    );

    // StatefulSet: replicas, owner, merged pod template with the agent's wiring.
    let sts = &bodies[5];
    assert_eq!(sts["apiVersion"], "apps/v1");
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "Server");
    assert_eq!(
        sts["spec"]["selector"]["matchLabels"]["mlops.seldon.io/server"],
        "mlserver"
    );
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 120);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(
        containers[1]["image"], "seldonio/mlserver:1.3.4",
        "the Server's field wins"
    );
    let agent = &containers[0];
    let env = |name: &str| {
        agent["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    assert_eq!(env("COSCALE_RUNTIME").unwrap()["value"], "mlserver");
    assert_eq!(
        env("COSCALE_CONTROL_PLANE").unwrap()["value"],
        "http://coscale-control.coscale-system:9005"
    );
    assert_eq!(
        env("COSCALE_TOKEN_FILE").unwrap()["value"],
        "/var/run/secrets/coscale/token"
    );
    assert_eq!(env("COSCALE_SERVER").unwrap()["value"], "mlserver");
    assert_eq!(
        env("COSCALE_CAPABILITIES").unwrap()["value"],
        "sklearn,xgboost"
    );
    assert_eq!(
        env("POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env("POD_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        agent["readinessProbe"]["httpGet"]["path"],
        "/v2/health/ready"
    );
    assert_eq!(
        agent["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/coscale"
    );
    let token = &pod["volumes"][0];
    assert_eq!(token["name"], "coscale-token");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "coscale"
    );

    // Status: replicas from the spec, the StatefulSet not ready yet.
    let status = &bodies[6]["status"];
    assert_eq!(bodies[6]["kind"], "Server");
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["readyReplicas"], 1);
    assert_eq!(status["selector"], "mlops.seldon.io/server=mlserver");
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(cond("StatefulSetReady")["status"], "False");
    assert_eq!(cond("Ready")["status"], "False");

    // The control plane got the Server and its ServerConfig.
    let servers = cp.client.servers().await.unwrap();
    let s = servers
        .iter()
        .find(|s| s.name == "mlserver")
        .expect("server applied");
    assert_eq!(s.desired_replicas, 2);
    assert_eq!(s.server_config, "mlserver");
}

fn scale_script(hpas: Value, scale_patch: bool, server: &Server) -> Vec<Expect> {
    let mut script = vec![
        expect(
            "GET",
            "/apis/mlops.seldon.io/v1alpha1/namespaces/ns1/serverconfigs/mlserver",
            |_| (200, server_config_cr()),
        ),
        expect("PATCH", &format!("{SERVICES}/mlserver-0?{SSA}"), echo),
        expect("GET", SERVICES, |_| (200, service_list(&["mlserver-0"]))),
        expect(
            "PATCH",
            &format!("/apis/apps/v1/namespaces/ns1/statefulsets/mlserver?{SSA}"),
            sts_with_ready(1),
        ),
        expect(
            "GET",
            "/apis/autoscaling/v2/namespaces/ns1/horizontalpodautoscalers",
            move |_| (200, hpas),
        ),
    ];
    if scale_patch {
        script.push(expect("PATCH", &format!("{SERVERS}/scale"), |body| {
            (200, json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                         "metadata": {"name": "mlserver", "namespace": NS},
                         "spec": {"replicas": body["spec"]["replicas"]}, "status": {"replicas": 1}}))
        }));
    }
    script.push(server_status_patch(server));
    script
}

fn hpa_list(targets: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList", "metadata": {},
           "items": targets.iter().map(|(kind, name)| json!({
               "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": format!("hpa-{name}"), "namespace": NS},
               "spec": {"maxReplicas": 5, "scaleTargetRef":
                   {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": kind, "name": name}}})).collect::<Vec<_>>()})
}

#[tokio::test]
async fn a_scale_decision_patches_spec_replicas_through_the_scale_subresource() {
    let control =
        fake_control_plane(json!({"name": "mlserver", "loaded_models": 4, "scaleTarget": 3})).await;
    let (ctx, handle) = context(control);
    let server = server_cr(
        json!({"serverConfig": "mlserver", "replicas": 1, "minReplicas": 1, "maxReplicas": 4}),
    );
    // HPAs in the namespace target other objects only.
    let hpas = hpa_list(&[("Server", "other"), ("Model", "mlserver")]);
    let (result, bodies) = run(
        handle,
        scale_script(hpas, true, &server),
        reconcile_server(Arc::new(server), ctx),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(bodies[5], json!({"spec": {"replicas": 3}}));
    assert_eq!(bodies[6]["status"]["loadedModels"], 4);
    assert_eq!(
        bodies[6]["status"]["replicas"], 1,
        "status follows the spec, patched next round"
    );
}

#[tokio::test]
async fn an_hpa_targeted_server_is_left_alone() {
    let control =
        fake_control_plane(json!({"name": "mlserver", "loaded_models": 0, "scaleTarget": 3})).await;
    let (ctx, handle) = context(control);
    let server = server_cr(
        json!({"serverConfig": "mlserver", "replicas": 1, "minReplicas": 1, "maxReplicas": 4}),
    );
    let hpas = hpa_list(&[("Server", "mlserver")]);
    // No PATCH .../scale in the script: any would fail the test.
    let (result, bodies) = run(
        handle,
        scale_script(hpas, false, &server),
        reconcile_server(Arc::new(server), ctx),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(bodies.len(), 6);
    assert!(bodies[5]["status"].is_object());
}

fn model_cr(extra_meta: Value) -> Model {
    let mut meta = json!({"name": "iris", "namespace": NS, "uid": "uid-m", "generation": 1});
    for (k, v) in extra_meta.as_object().unwrap() {
        meta[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": meta,
        "spec": {"storageUri": "gs://seldon-models/mlserver/iris", "requirements": ["sklearn"], "replicas": 2},
    }))
    .unwrap()
}

const MODELS: &str = "/apis/mlops.seldon.io/v1alpha1/namespaces/ns1/models/iris";

/// The one call of a pass that only writes the Model's status.
fn status_only(model: &Model) -> Vec<Expect> {
    let json_cr = serde_json::to_value(model).unwrap();
    vec![expect(
        "PATCH",
        &format!("{MODELS}/status?{SSA}"),
        with_status(json_cr),
    )]
}

#[tokio::test]
async fn a_new_model_gets_the_finalizer_first() {
    let cp = control_plane().await;
    let (ctx, handle) = context(cp.client.clone());
    let model = model_cr(json!({}));
    let script = vec![expect("PATCH", MODELS, |patch| {
        let mut m = serde_json::to_value(model_cr(json!({"finalizers": [FINALIZER]}))).unwrap();
        m["metadata"]["resourceVersion"] = json!("2");
        assert!(patch.to_string().contains(FINALIZER), "{patch}");
        (200, m)
    })];
    let (result, bodies) = run(handle, script, reconcile_model(Arc::new(model), ctx)).await;
    assert!(
        matches!(&result, Ok(a) if *a == Action::await_change()),
        "{result:?}"
    );
    assert_eq!(bodies[0][1]["op"], "add", "{}", bodies[0]);
    assert!(
        cp.client.find_model("iris").await.unwrap().is_none(),
        "nothing is applied before the finalizer is on"
    );
}

#[tokio::test]
async fn model_status_carries_the_control_planes_state_and_reason() {
    let cp = control_plane().await;
    let (ctx, handle) = context(cp.client.clone());
    let model = model_cr(json!({"finalizers": [FINALIZER]}));
    let script = status_only(&model);
    let (result, bodies) = run(handle, script, reconcile_model(Arc::new(model), ctx)).await;
    assert!(result.is_ok(), "{result:?}");
    let status = &bodies[0]["status"];
    // No server can host it: Seldon's ScheduleFailed, with the control plane's reason.
    let in_cp = cp.client.model("iris").await.unwrap();
    assert_eq!(status["state"], json!(in_cp.state));
    assert_eq!(in_cp.desired_replicas, 2);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["selector"], "mlops.seldon.io/model=iris");
    assert_eq!(status["availableReplicas"], 0);
    let conditions = status["conditions"].as_array().unwrap();
    for c in conditions {
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], json!(in_cp.state));
        assert!(c["lastTransitionTime"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(
        conditions
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ModelReady", "Ready"]
    );
    assert_eq!(in_cp.state, "ScheduleFailed", "{in_cp:?}");
    assert!(!in_cp.reason.is_empty());
    assert_eq!(conditions[0]["message"], json!(in_cp.reason));
}

#[tokio::test]
async fn an_invalid_model_is_reported_in_its_status_and_never_applied() {
    let cp = control_plane().await;
    let (ctx, handle) = context(cp.client.clone());
    let mut model = model_cr(json!({"finalizers": [FINALIZER]}));
    model.spec.fields.insert("replicas".into(), json!(5));
    model.spec.fields.insert("maxReplicas".into(), json!(2));
    let script = status_only(&model);
    let (result, bodies) = run(handle, script, reconcile_model(Arc::new(model), ctx)).await;
    assert!(
        matches!(&result, Ok(a) if *a == Action::await_change()),
        "{result:?}"
    );
    let c = &bodies[0]["status"]["conditions"][0];
    assert_eq!(c["type"], "ModelReady");
    assert_eq!(c["reason"], "InvalidSpec");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("greater than maxReplicas"),
        "{c}"
    );
    assert!(cp.client.find_model("iris").await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_a_model_unloads_it_before_the_finalizer_goes() {
    let cp = control_plane().await;
    cp.apply(
        json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
        "metadata": {"name": "iris"}, "spec": {"storageUri": "gs://seldon-models/mlserver/iris"}}),
    )
    .await;
    assert!(cp.client.find_model("iris").await.unwrap().is_some());
    let model = Arc::new(model_cr(
        json!({"finalizers": [FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}),
    ));
    let started = std::time::Instant::now();
    loop {
        // While the control plane still holds the model, a pass makes no Kubernetes call
        // and asks to be retried; once the model is gone, the finalizer is removed.
        let (ctx, mut handle) = context(cp.client.clone());
        let mut task = tokio::spawn(reconcile_model(model.clone(), ctx));
        tokio::select! {
            r = &mut task => match r.unwrap() {
                Err(Error::Finalizer(e)) if e.to_string().contains("still in the control plane") => {
                    assert!(started.elapsed() < DEADLINE, "the model was never unloaded");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("a pass that made no call must be pending, got {other:?}"),
            },
            req = handle.next_request() => {
                let (req, send) = req.unwrap();
                assert_eq!((req.method().as_str(), req.uri().path()), ("PATCH", MODELS));
                assert!(cp.client.find_model("iris").await.unwrap().is_none(),
                        "the finalizer goes only once the control plane forgot the model");
                let patch = String::from_utf8(req.into_body().collect_bytes().await.unwrap().to_vec()).unwrap();
                assert!(patch.contains("\"op\":\"remove\"") && patch.contains("/metadata/finalizers"), "{patch}");
                let answer = json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
                    "metadata": {"name": "iris", "namespace": NS}, "spec": {}});
                send.send_response(Response::builder().status(200)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
                let r = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
                assert!(r.is_ok(), "{r:?}");
                break;
            }
        }
    }
    assert!(cp.client.find_model("iris").await.unwrap().is_none());
}

/// Answers the calls of one pass with `answer` until the pass ends; returns its result
/// and the calls (`METHOD PATH`, body).
async fn serve_pass(
    mut handle: Handle,
    task: JoinHandle<Result<Action, Error>>,
    answer: impl Fn(&str, &str, &Value) -> Value,
) -> (Result<Action, Error>, Vec<(String, Value)>) {
    let mut calls = Vec::new();
    while let Ok(Some((req, send))) = tokio::time::timeout(DEADLINE, handle.next_request()).await {
        let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let reply = answer(&method, &path, &body);
        calls.push((format!("{method} {path}"), body));
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    let result = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("pass did not finish")
        .unwrap();
    (result, calls)
}

#[tokio::test]
async fn deleting_a_server_drains_it_before_the_finalizer_goes() {
    let cp = control_plane().await;
    cp.apply(
        json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
        "metadata": {"name": "mlserver"}, "spec": {"serverConfig": "mlserver", "replicas": 2}}),
    )
    .await;
    let server = Arc::new(server_cr(
        json!({"serverConfig": "mlserver", "replicas": 2}),
    ));
    let mut server_json = serde_json::to_value(&*server).unwrap();
    server_json["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let server: Arc<Server> = Arc::new(serde_json::from_value(server_json).unwrap());
    let sts_path = "/apis/apps/v1/namespaces/ns1/statefulsets/mlserver";
    let started = std::time::Instant::now();
    let mut all_calls = Vec::new();
    loop {
        let (ctx, handle) = context(cp.client.clone());
        let task = tokio::spawn(reconcile_server(server.clone(), ctx));
        let (result, calls) = serve_pass(handle, task, |method, path, _| {
            if path == sts_path {
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                       "metadata": {"name": "mlserver", "namespace": NS},
                       "spec": {"replicas": if method == "GET" { 2 } else { 0 },
                                "selector": {}, "template": {}}})
            } else {
                json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
                       "metadata": {"name": "mlserver", "namespace": NS}, "spec": {}})
            }
        })
        .await;
        all_calls.extend(calls.iter().cloned());
        match result {
            Ok(_) => {
                let (last, patch) = calls.last().expect("the finalizer removal");
                assert_eq!(last, &format!("PATCH {SERVERS}"));
                assert!(patch.to_string().contains("\"op\":\"remove\""), "{patch}");
                break;
            }
            Err(e) if e.to_string().contains("still in the control plane") => {
                assert!(started.elapsed() < DEADLINE, "the server was never removed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Before the control plane was told, the StatefulSet went to 0 pods (agents drain).
    let scaled = all_calls
        .iter()
        .find(|(c, _)| c == &format!("PATCH {sts_path}"))
        .expect("the StatefulSet is scaled to 0");
    assert_eq!(scaled.1, json!({"spec": {"replicas": 0}}));
    assert_eq!(all_calls[0].0, format!("GET {sts_path}"));
    let servers = cp.client.servers().await.unwrap();
    assert!(servers.iter().all(|s| s.name != "mlserver"), "{servers:?}");
}

/// The one call of a deletion pass that only removes the finalizer of `kind` `name` (at
/// `path`).
fn finalizer_only(path: &str, kind: &'static str, name: &'static str) -> Vec<Expect> {
    vec![expect("PATCH", path, move |patch| {
        assert!(
            patch.to_string().contains("/metadata/finalizers"),
            "{patch}"
        );
        let answer = json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": NS}, "spec": {}});
        (200, answer)
    })]
}

/// Asserts a refused Server pass: requeued after the resync, with `StatefulSetReady` and
/// `Ready` false for `reason` in the status patch `status_patch`, naming namespace team-a.
/// Returns the message.
fn assert_refused(result: &Result<Action, Error>, status_patch: &Value, reason: &str) -> String {
    assert!(
        matches!(result, Ok(a) if *a == Action::requeue(Duration::from_secs(5))),
        "{result:?}"
    );
    let conditions = status_patch["status"]["conditions"].as_array().unwrap();
    let mut message = String::new();
    for t in ["StatefulSetReady", "Ready"] {
        let c = conditions.iter().find(|c| c["type"] == t).unwrap();
        assert_eq!(c["status"], "False", "{c}");
        assert_eq!(c["reason"], reason, "{c}");
        message = c["message"].as_str().unwrap().to_owned();
        assert!(message.contains("namespace team-a"), "{c}");
    }
    message
}

/// A real control plane holding a Model `iris` that namespace team-a's manifest defined.
async fn control_plane_where_team_a_has_iris() -> ControlPlane {
    let cp = control_plane().await;
    cp.apply(
        json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
        "metadata": {"name": "iris", "namespace": "team-a"},
        "spec": {"storageUri": "gs://team-a/iris"}}),
    )
    .await;
    cp
}

async fn assert_team_a_keeps_iris(cp: &ControlPlane) {
    let kept = cp.client.model("iris").await.unwrap();
    assert_eq!(kept.namespace.as_deref(), Some("team-a"));
    assert_eq!(kept.storage_uri, "gs://team-a/iris");
}

/// Model names are cluster-wide in coscale: a Model named like one another namespace already
/// defined is refused in its status, never applied over the other, and deleting it removes
/// only its own finalizer.
#[tokio::test]
async fn a_model_name_another_namespace_holds_is_refused_and_its_deletion_leaves_that_one() {
    let cp = control_plane_where_team_a_has_iris().await;
    let model = model_cr(json!({"finalizers": [FINALIZER]}));
    let script = status_only(&model);
    let (ctx, handle) = context(cp.client.clone());
    let (result, bodies) = run(handle, script, reconcile_model(Arc::new(model), ctx)).await;
    assert!(result.is_ok(), "{result:?}");
    let c = &bodies[0]["status"]["conditions"][0];
    assert_eq!(c["reason"], "NameTaken", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains("namespace team-a"),
        "{c}"
    );
    assert_team_a_keeps_iris(&cp).await;

    let deleted =
        model_cr(json!({"finalizers": [FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}));
    let script = finalizer_only(MODELS, "Model", "iris");
    let (ctx, handle) = context(cp.client.clone());
    let (result, _) = run(handle, script, reconcile_model(Arc::new(deleted), ctx)).await;
    assert!(result.is_ok(), "{result:?}");
    let still = cp.client.find_model("iris").await.unwrap();
    assert_eq!(
        still.and_then(|m| m.namespace),
        Some("team-a".to_owned()),
        "the other namespace's model is left alone"
    );
}

/// A control plane as a pass of the operator sees it when another namespace takes a Model's
/// name between the pass's read and its apply: `GET /api/v1/models/NAME` answers 404 (the
/// read came first), and applies go to the real control plane behind `real`, whose answer,
/// success or refusal, is passed back as it came.
async fn control_plane_read_too_early(real: coscale_client::Client) -> coscale_client::Client {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/api/v1/models/{name}",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"error": "not found"})),
                )
            }),
        )
        .route(
            "/api/v1/apply",
            post(move |axum::Json(req): axum::Json<ManifestRequest>| {
                let real = real.clone();
                async move {
                    match real.apply(&req).await {
                        Ok(applied) => (StatusCode::OK, axum::Json(json!(applied))),
                        Err(e) => {
                            let f = e.downcast_ref::<coscale_client::ApiFailure>().unwrap();
                            let body = json!({"error": f.error, "details": f.details});
                            (StatusCode::from_u16(f.status).unwrap(), axum::Json(body))
                        }
                    }
                }
            }),
        );
    serve_fake(app).await
}

/// The operator's read of a name and its apply are two calls: when another namespace takes the
/// name in between, the control plane refuses the apply (it checks again under its lock) and
/// the Model's status says `NameTaken` with the control plane's words, as when the read saw it;
/// the other namespace's Model is not overwritten.
#[tokio::test]
async fn a_model_name_taken_between_the_read_and_the_apply_is_refused_too() {
    let cp = control_plane_where_team_a_has_iris().await;
    let model = model_cr(json!({"finalizers": [FINALIZER]}));
    let script = status_only(&model);
    let (ctx, handle) = context(control_plane_read_too_early(cp.client.clone()).await);
    let (result, bodies) = run(handle, script, reconcile_model(Arc::new(model), ctx)).await;
    assert!(
        matches!(&result, Ok(a) if *a == Action::requeue(Duration::from_secs(5))),
        "{result:?}"
    );
    let c = &bodies[0]["status"]["conditions"][0];
    assert_eq!(c["reason"], "NameTaken", "{c}");
    assert_eq!(
        c["message"],
        coscale_api::rest::name_taken("Model", "iris", "team-a")
    );
    assert_team_a_keeps_iris(&cp).await;
}

/// Server names are cluster-wide in coscale too: a Server named like one another namespace
/// already defined is refused in its status, never applied over the other (no StatefulSet
/// or Service of its own either), and deleting it removes only its own finalizer.
#[tokio::test]
async fn a_server_name_another_namespace_holds_is_refused_and_its_deletion_leaves_that_one() {
    let cp = control_plane().await;
    cp.apply(
        json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
        "metadata": {"name": "mlserver", "namespace": "team-a"},
        "spec": {"serverConfig": "mlserver", "replicas": 2}}),
    )
    .await;
    let server = server_cr(json!({"serverConfig": "mlserver", "replicas": 1}));
    let json_cr = serde_json::to_value(&server).unwrap();
    // Only the status is written: no ServerConfig lookup, Service or StatefulSet (any
    // would fail the test).
    let script = vec![server_status_patch(&server)];
    let (ctx, handle) = context(cp.client.clone());
    let (result, bodies) = run(handle, script, reconcile_server(Arc::new(server), ctx)).await;
    assert_refused(&result, &bodies[0], "NameTaken");
    let kept = cp.client.server("mlserver").await.unwrap();
    assert_eq!(kept.namespace.as_deref(), Some("team-a"));
    assert_eq!(kept.desired_replicas, 2);

    let mut deleted = json_cr;
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let deleted: Server = serde_json::from_value(deleted).unwrap();
    // Only the finalizer goes: no StatefulSet scaled to 0.
    let script = finalizer_only(SERVERS, "Server", "mlserver");
    let (ctx, handle) = context(cp.client.clone());
    let (result, _) = run(handle, script, reconcile_server(Arc::new(deleted), ctx)).await;
    assert!(result.is_ok(), "{result:?}");
    let still = cp
        .client
        .find_json::<Value>("/api/v1/servers/mlserver")
        .await
        .unwrap();
    assert_eq!(
        still.as_ref().and_then(|s| s["namespace"].as_str()),
        Some("team-a"),
        "the other namespace's server is left alone"
    );
}

const CONFIGS: &str = "/apis/mlops.seldon.io/v1alpha1/namespaces/ns1/serverconfigs/mlserver";

/// The namespace of the control plane's `mlserver` ServerConfig (which must exist).
async fn config_namespace(cp: &ControlPlane) -> Option<String> {
    let path = "/api/v1/serverconfigs/mlserver";
    let config = cp
        .client
        .find_json::<ServerConfigStatus>(path)
        .await
        .unwrap();
    config
        .expect("the ServerConfig is in the control plane")
        .namespace
}

/// `server_config_cr()` as namespace `ns` defines it.
fn server_config_in(ns: &str) -> Value {
    let mut config = server_config_cr();
    config["metadata"]["namespace"] = json!(ns);
    config
}

/// ServerConfig names are cluster-wide in coscale as well: a Server whose ServerConfig
/// would overwrite the one another namespace applied is refused before anything is applied
/// (no Service or StatefulSet either), and the other namespace's ServerConfig is kept.
#[tokio::test]
async fn a_server_whose_server_config_name_another_namespace_holds_is_refused() {
    let cp = control_plane().await;
    cp.apply(server_config_in("team-a")).await;
    let server = server_cr(json!({"serverConfig": "mlserver", "replicas": 1}));
    // The ServerConfig is found in ns1, then only the status is written.
    let script = vec![
        expect("GET", CONFIGS, |_| (200, server_config_cr())),
        server_status_patch(&server),
    ];
    let (ctx, handle) = context(cp.client.clone());
    let (result, bodies) = run(handle, script, reconcile_server(Arc::new(server), ctx)).await;
    let msg = assert_refused(&result, &bodies[1], "ServerConfigNameTaken");
    assert!(msg.contains("namespace ns1's is not applied"), "{msg}");
    assert_eq!(config_namespace(&cp).await.as_deref(), Some("team-a"));
    let applied = cp
        .client
        .find_json::<Value>("/api/v1/servers/mlserver")
        .await
        .unwrap();
    assert!(applied.is_none(), "the Server is not applied: {applied:?}");
}

/// The install namespace's ServerConfigs are shared by the Servers of every namespace: one
/// already in the control plane from that namespace is applied again, no refusal.
#[tokio::test]
async fn a_shared_server_config_of_the_install_namespace_is_applied_for_a_server_of_another() {
    let cp = control_plane().await;
    cp.apply(server_config_in("coscale-system")).await;
    let server = server_cr(json!({"serverConfig": "mlserver", "replicas": 1}));
    let not_found = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"});
    let script = vec![
        expect("GET", CONFIGS, move |_| (404, not_found)),
        expect(
            "GET",
            "/apis/mlops.seldon.io/v1alpha1/namespaces/coscale-system/serverconfigs/mlserver",
            |_| (200, server_config_in("coscale-system")),
        ),
        expect("PATCH", &format!("{SERVICES}/mlserver-0?{SSA}"), echo),
        expect("GET", SERVICES, |_| (200, service_list(&["mlserver-0"]))),
        expect(
            "PATCH",
            &format!("/apis/apps/v1/namespaces/ns1/statefulsets/mlserver?{SSA}"),
            sts_with_ready(1),
        ),
        server_status_patch(&server),
    ];
    let (ctx, handle) = context(cp.client.clone());
    let (result, bodies) = run(handle, script, reconcile_server(Arc::new(server), ctx)).await;
    assert!(result.is_ok(), "{result:?}");
    let conditions = bodies[5]["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .all(|c| c["reason"] != "ServerConfigNameTaken"),
        "{conditions:?}"
    );
    let s = cp.client.server("mlserver").await.unwrap();
    assert_eq!(s.server_config, "mlserver");
    assert_eq!(s.namespace.as_deref(), Some(NS));
    assert_eq!(
        config_namespace(&cp).await.as_deref(),
        Some("coscale-system")
    );
}
