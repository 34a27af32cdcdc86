//! `--auth kubernetes` against a fake Kubernetes API server: a TLS endpoint on
//! 127.0.0.1 (self-signed certificate, given to the control plane as the cluster CA)
//! that answers TokenReviews from a fixed table and counts them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use coscale_api::pb::agent::agent_service_client::AgentServiceClient;
use coscale_api::pb::agent::{agent_message, control_message, AgentMessage, Register};
use coscale_control::auth::TokenReviewConfig;
use coscale_control::service::{ControlConfig, ControlPlane};
use tokio::net::TcpListener;

const STATIC: &str = "static-token";
const OWN: &str = "control-plane-sa-token";
const NS: &str = "coscale-system";

#[derive(Default)]
struct Fake {
    reviews: AtomicUsize,
    /// (authorization header, spec.audiences) of every review
    seen: Mutex<Vec<(String, serde_json::Value)>>,
}

async fn token_review(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    fake.reviews.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    fake.seen
        .lock()
        .unwrap()
        .push((auth, body["spec"]["audiences"].clone()));
    assert_eq!(body["kind"], "TokenReview");
    assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
    let status = match body["spec"]["token"].as_str().unwrap() {
        "sa-operator" => serde_json::json!({
            "authenticated": true,
            "user": { "username": format!("system:serviceaccount:{NS}:coscale-operator"), "uid": "1" },
            "audiences": ["coscale"],
        }),
        "sa-agent" => serde_json::json!({
            "authenticated": true,
            "user": { "username": format!("system:serviceaccount:{NS}:mlserver") },
            "audiences": ["coscale"],
        }),
        "sa-mesh-agent" => serde_json::json!({
            "authenticated": true,
            "user": { "username": "system:serviceaccount:seldon-mesh:default" },
            "audiences": ["coscale"],
        }),
        "sa-other-namespace" => serde_json::json!({
            "authenticated": true,
            "user": { "username": "system:serviceaccount:default:intruder" },
            "audiences": ["coscale"],
        }),
        "sa-wrong-audience" => serde_json::json!({
            "authenticated": true,
            "user": { "username": format!("system:serviceaccount:{NS}:x") },
            "audiences": ["https://kubernetes.default.svc"],
        }),
        _ => serde_json::json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    Json(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "status": status,
    }))
}

/// Starts the fake API server; returns its URL, CA PEM and counters.
async fn fake_api_server() -> (String, Vec<u8>, Arc<Fake>) {
    let names = vec!["127.0.0.1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names.clone()).unwrap();
    let ca_pem = ck.cert.pem().into_bytes();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    let config = coscale_control::tls::server_config(&coscale_control::tls::TlsSettings {
        cert_file: Some(dir.join("tls.crt")),
        key_file: Some(dir.join("tls.key")),
        client_ca_file: None,
        self_signed_names: Vec::new(),
    })
    .unwrap();
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .with_state(fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(coscale_control::tls::serve(
        listener,
        config,
        app,
        std::future::pending(),
    ));
    (url, ca_pem, fake)
}

struct Cp {
    _dir: tempfile::TempDir,
    api: String,
    agent: String,
    http: reqwest::Client,
}

/// A control plane with `--auth kubernetes` against `api_server`, its REST API and
/// agent channel on 127.0.0.1.
async fn control_plane(api_server: &str, ca_pem: &[u8]) -> Cp {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let sa = dir.join("sa");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), OWN).unwrap();
    std::fs::write(sa.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(sa.join("namespace"), NS).unwrap();
    let (host, port) = api_server
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap();
    let review =
        TokenReviewConfig::from_parts(Some(host.to_owned()), Some(port.to_owned()), &sa, None)
            .unwrap();
    assert_eq!(review.namespace, NS);
    let cp = ControlPlane::open(ControlConfig {
        token_review: Some(review),
        ..ControlConfig::new(dir.clone(), STATIC.to_owned())
    })
    .unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agents = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let out = Cp {
        _dir: tmp,
        api: format!("http://{}", api.local_addr().unwrap()),
        agent: format!("http://{}", agents.local_addr().unwrap()),
        http: reqwest::Client::new(),
    };
    let app = coscale_control::api::router(cp.clone());
    tokio::spawn(async move { axum::serve(api, app).await });
    let svc = cp.agent_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(agents)),
    );
    out
}

impl Cp {
    async fn status(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.api));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Opens an agent session with `token`: Ok(first control message kind) or the
    /// refusal's message.
    async fn agent_session(&self, token: &str) -> Result<&'static str, String> {
        let mut client = AgentServiceClient::connect(self.agent.clone())
            .await
            .unwrap();
        let register = AgentMessage {
            kind: Some(agent_message::Kind::Register(Register {
                server: "mlserver".to_owned(),
                replica: 0,
                capabilities: vec!["onnx".to_owned()],
                memory_bytes: 1 << 20,
                overcommit_percent: 0,
                inference_http: "127.0.0.1:9100".to_owned(),
                inference_grpc: "127.0.0.1:9101".to_owned(),
                loaded: Vec::new(),
                pid: 1,
                runtime: "builtin".to_owned(),
                runtime_error: String::new(),
                data_socket: String::new(),
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(register).await.unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut inbound = client
            .session(req)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        drop(tx);
        Ok(match first.kind {
            Some(control_message::Kind::Accepted(_)) => "Accepted",
            _ => "other",
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_of_the_install_namespace_are_accepted_after_a_token_review() {
    let (url, ca, fake) = fake_api_server().await;
    let cp = control_plane(&url, &ca).await;

    // the static token needs no review
    assert_eq!(cp.status("/api/v1/models", Some(STATIC)).await.0, 200);
    assert_eq!(fake.reviews.load(Ordering::SeqCst), 0);

    // a ServiceAccount of the install namespace: REST API and /metrics
    assert_eq!(
        cp.status("/api/v1/models", Some("sa-operator")).await.0,
        200
    );
    assert_eq!(fake.reviews.load(Ordering::SeqCst), 1);
    let (code, metrics) = cp.status("/metrics", Some("sa-operator")).await;
    assert_eq!(code, 200);
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    // cached: the second and third calls sent no review
    assert_eq!(fake.reviews.load(Ordering::SeqCst), 1);

    // the review carried the control plane's own token and the audience
    {
        let seen = fake.seen.lock().unwrap();
        assert_eq!(seen[0].0, format!("Bearer {OWN}"));
        assert_eq!(seen[0].1, serde_json::json!(["coscale"]));
    }

    // rejected: other namespace, unauthenticated, wrong audience, no token
    let mut reasons = BTreeMap::new();
    for token in ["sa-other-namespace", "forged", "sa-wrong-audience"] {
        let (code, body) = cp.status("/api/v1/models", Some(token)).await;
        assert_eq!(code, 401, "{token}: {body}");
        reasons.insert(token, body);
    }
    assert!(reasons["sa-other-namespace"].contains("neither in namespace"));
    assert!(reasons["forged"].contains("invalid bearer token"));
    assert!(reasons["sa-wrong-audience"].contains("audiences"));
    assert_eq!(cp.status("/api/v1/models", None).await.0, 401);
    assert_eq!(cp.status("/metrics", Some("forged")).await.0, 401);
    // rejections are not cached: each one is reviewed again
    let before = fake.reviews.load(Ordering::SeqCst);
    assert_eq!(cp.status("/api/v1/models", Some("forged")).await.0, 401);
    assert_eq!(fake.reviews.load(Ordering::SeqCst), before + 1);

    // the agent channel: a pod's projected token is accepted, others refused
    assert_eq!(cp.agent_session("sa-agent").await, Ok("Accepted"));
    let refused = cp.agent_session("sa-other-namespace").await.unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    assert_eq!(cp.agent_session(STATIC).await, Ok("Accepted"));

    // agents run in their Server's namespace: accepted once a Server lives there
    let refused = cp.agent_session("sa-mesh-agent").await.unwrap_err();
    assert!(refused.contains("neither in namespace"), "{refused}");
    let server = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: mlserver\n  namespace: seldon-mesh\nspec:\n  serverConfig: builtin\n";
    let applied = cp
        .http
        .post(format!("{}/api/v1/apply", cp.api))
        .bearer_auth(STATIC)
        .json(&serde_json::json!({ "source": "server.yaml", "text": server }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        applied.status().as_u16(),
        200,
        "{}",
        applied.text().await.unwrap()
    );
    assert_eq!(cp.agent_session("sa-mesh-agent").await, Ok("Accepted"));
    assert_eq!(
        cp.status("/api/v1/models", Some("sa-mesh-agent")).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_rejects_service_account_tokens_but_not_the_static_one() {
    // a CA that is valid, and a port nothing listens on
    let (_, ca, _) = fake_api_server().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let cp = control_plane(&url, &ca).await;
    let (code, body) = cp.status("/api/v1/models", Some("sa-operator")).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("did not answer the TokenReview"), "{body}");
    assert_eq!(cp.status("/api/v1/models", Some(STATIC)).await.0, 200);
    let refused = cp.agent_session("sa-agent").await.unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_with_another_certificate_is_not_trusted() {
    let (url, _, fake) = fake_api_server().await;
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .cert
        .pem()
        .into_bytes();
    let cp = control_plane(&url, &other_ca).await;
    assert_eq!(
        cp.status("/api/v1/models", Some("sa-operator")).await.0,
        401
    );
    assert_eq!(fake.reviews.load(Ordering::SeqCst), 0);
}
