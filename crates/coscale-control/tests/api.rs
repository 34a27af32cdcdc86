//! The REST API on 127.0.0.1 with a static token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coscale_api::rest::{ErrorResponse, ServerConfigStatus};
use coscale_control::service::{ControlConfig, ControlPlane};
use serde_json::json;

const TOKEN: &str = "test-token";

/// A GET of a ServerConfig answers the applied record with the namespace of the manifest
/// that defined it, 404 (in the API's error shape) for a name nobody applied, and 401
/// without the token, like the Model and Server GETs.
#[tokio::test]
async fn an_applied_server_config_is_read_back_with_its_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let cp =
        ControlPlane::open(ControlConfig::new(dir.path().to_owned(), TOKEN.to_owned())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app = coscale_control::api::router(cp);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    let manifest = json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "ServerConfig",
        "metadata": {"name": "mlserver", "namespace": "team-a"},
        "spec": {"podSpec": {"containers": [{"name": "agent", "image": "coscale"}]}}});
    let applied = http
        .post(format!("{api}/api/v1/apply"))
        .bearer_auth(TOKEN)
        .json(&json!({"source": "test", "text": manifest.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 200, "{}", applied.text().await.unwrap());

    let get = |name: &str, token: Option<&str>| {
        let mut req = http.get(format!("{api}/api/v1/serverconfigs/{name}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let found = get("mlserver", Some(TOKEN)).await.unwrap();
    assert_eq!(found.status(), 200);
    let found: ServerConfigStatus = found.json().await.unwrap();
    assert_eq!(found.name, "mlserver");
    assert_eq!(found.namespace.as_deref(), Some("team-a"));
    assert!(found.created_unix_millis > 0);

    let missing = get("triton", Some(TOKEN)).await.unwrap();
    assert_eq!(missing.status(), 404);
    let err: ErrorResponse = missing.json().await.unwrap();
    assert!(
        err.error.contains("ServerConfig \"triton\" not found"),
        "{err:?}"
    );

    assert_eq!(get("mlserver", None).await.unwrap().status(), 401);
}
