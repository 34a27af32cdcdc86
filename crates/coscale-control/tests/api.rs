//! The REST API on 127.0.0.1 with a static token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coscale_api::rest::{ErrorResponse, ServerConfigStatus};
use coscale_control::service::{ControlConfig, ControlPlane};
use serde_json::json;

const TOKEN: &str = "test-token";

/// A GET of a ServerConfig answers the applied record with the namespace of the manifest
/// that defined it, a built-in one for a built-in name nobody applied, 404 (in the API's error
/// shape) for any other name, and 401 without the token, like the Model and Server GETs. The
/// list has both kinds; a built-in one cannot be deleted, and deleting an applied one of a
/// built-in name brings the built-in one back.
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
    assert!(found.created_unix_millis.is_some_and(|t| t > 0));
    assert!(!found.built_in);
    // Its containers name no runtime; its name does.
    assert_eq!(found.runtime, "mlserver");

    let read = |name: &str| {
        let answer = get(name, Some(TOKEN));
        async move {
            let answer = answer.await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.json::<ServerConfigStatus>().await.unwrap()
        }
    };
    let built_in = read("triton").await;
    assert!(built_in.built_in);
    assert_eq!(built_in.runtime, "triton");
    assert_eq!(
        (built_in.namespace, built_in.created_unix_millis),
        (None, None)
    );

    let missing = get("tritonn", Some(TOKEN)).await.unwrap();
    assert_eq!(missing.status(), 404);
    let err: ErrorResponse = missing.json().await.unwrap();
    assert!(
        err.error.contains("ServerConfig \"tritonn\" not found"),
        "{err:?}"
    );

    let list: Vec<ServerConfigStatus> = http
        .get(format!("{api}/api/v1/serverconfigs"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<(&str, bool)> = list.iter().map(|c| (c.name.as_str(), c.built_in)).collect();
    assert_eq!(
        listed,
        [("builtin", true), ("mlserver", false), ("triton", true)]
    );

    let delete = |name: &str| {
        http.delete(format!("{api}/api/v1/serverconfigs/{name}"))
            .bearer_auth(TOKEN)
            .send()
    };
    let refused = delete("triton").await.unwrap();
    assert_eq!(refused.status(), 400);
    let err: ErrorResponse = refused.json().await.unwrap();
    assert!(
        err.error.contains("built in and cannot be deleted"),
        "{err:?}"
    );
    assert_eq!(delete("mlserver").await.unwrap().status(), 200);
    let back = read("mlserver").await;
    assert!(back.built_in && back.namespace.is_none());

    assert_eq!(get("mlserver", None).await.unwrap().status(), 401);
}
