//! The REST API on 127.0.0.1 with a static token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coscale_api::rest::{name_taken, ErrorResponse, ManifestRequest, ServerConfigStatus};
use coscale_client::ApiFailure;
use coscale_control::service::{ControlConfig, ControlPlane};
use serde_json::{json, Value};

const TOKEN: &str = "test-token";

/// A GET of a ServerConfig answers the applied record with the namespace of the manifest
/// that defined it, a built-in one for a built-in name nobody applied, 404 (in the API's error
/// shape) for any other name, and 401 without the token, like the Model and Server GETs. The
/// list has both kinds; a built-in one cannot be deleted, and deleting an applied one of a
/// built-in name brings the built-in one back.
#[tokio::test]
async fn an_applied_server_config_is_read_back_with_its_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve_api(dir.path()).await;
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

/// A control plane's API on 127.0.0.1, its data in `dir`; its URL.
async fn serve_api(dir: &std::path::Path) -> String {
    let cp = ControlPlane::open(ControlConfig::new(dir.to_owned(), TOKEN.to_owned())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app = coscale_control::api::router(cp);
    tokio::spawn(async move { axum::serve(listener, app).await });
    api
}

/// A client of the API at `api` (the one the CLI and the operator use).
fn client_of(api: &str) -> coscale_client::Client {
    coscale_client::Client::from_parts(
        coscale_client::api_endpoints(api, None, None),
        TOKEN.to_owned(),
    )
}

fn manifest(objects: &[Value], dry_run: bool) -> ManifestRequest {
    ManifestRequest {
        source: "test.json".into(),
        text: Value::from(objects.to_vec()).to_string(),
        dry_run,
        base_dir: None,
    }
}

fn model(name: &str, namespace: &str, uri: &str) -> Value {
    json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"storageUri": uri, "requirements": ["sklearn"]}})
}

fn server(name: &str, namespace: &str) -> Value {
    json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"serverConfig": "mlserver"}})
}

/// The 409 of a refused batch, with the control plane's words.
fn conflict(result: anyhow::Result<coscale_api::rest::ApplyResponse>) -> ApiFailure {
    let err = result.expect_err("the batch was refused");
    let failure = err
        .downcast_ref::<ApiFailure>()
        .unwrap_or_else(|| panic!("not the control plane's answer: {err:#}"));
    assert_eq!(failure.status, 409, "{failure}");
    failure.clone()
}

/// coscale's names are cluster-wide, Kubernetes' namespaced: an apply or delete that names a
/// Model or Server another namespace's manifest defined is refused (409, each such object in
/// the details) and changes nothing, also for the free objects of the same batch and as a dry
/// run; the namespace that holds the name applies and deletes as before.
#[tokio::test]
async fn a_name_another_namespace_holds_is_refused_and_nothing_of_the_batch_changes() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_of(&serve_api(dir.path()).await);
    client
        .apply(&manifest(&[model("m", "team-a", "gs://a/m")], false))
        .await
        .unwrap();

    let batch = [server("s", "team-b"), model("m", "team-b", "gs://b/m")];
    for dry_run in [true, false] {
        let refused = conflict(client.apply(&manifest(&batch, dry_run)).await);
        assert!(refused.error.contains("nothing was applied"), "{refused}");
        assert_eq!(refused.details, [name_taken("Model", "m", "team-a")]);
    }
    let held = || async { client.find_model("m").await.unwrap().unwrap().namespace };
    assert_eq!(held().await.as_deref(), Some("team-a"));
    let spec: Option<Value> = client.find_json("/api/v1/models/m").await.unwrap();
    assert!(
        spec.unwrap().to_string().contains("gs://a/m"),
        "team-a's spec stays"
    );
    let s: Option<Value> = client.find_json("/api/v1/servers/s").await.unwrap();
    assert!(
        s.is_none(),
        "the free Server of the refused batch was not applied"
    );

    let refused = conflict(client.delete_manifest(&manifest(&batch, false)).await);
    assert!(refused.error.contains("nothing was deleted"), "{refused}");
    assert_eq!(held().await.as_deref(), Some("team-a"));

    // The namespace that holds the name changes and deletes it as before.
    let ours = [model("m", "team-a", "gs://a/m2")];
    client.apply(&manifest(&ours, false)).await.unwrap();
    let deleted = client
        .delete_manifest(&manifest(&ours, false))
        .await
        .unwrap();
    assert_eq!(deleted.results[0].action, "deleted");
    // Then the name is free for another namespace.
    let theirs = [model("m", "team-b", "gs://b/m")];
    client.apply(&manifest(&theirs, false)).await.unwrap();
    assert_eq!(held().await.as_deref(), Some("team-b"));
}

/// Namespaces applying one new name at the same time: exactly one gets it, every other is
/// refused, and the stored Model is the winner's (the check is made with the apply, under the
/// state lock, not read first).
#[tokio::test]
async fn of_namespaces_racing_for_a_new_name_exactly_one_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_of(&serve_api(dir.path()).await);
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            let ns = format!("ns-{i}");
            tokio::spawn(async move {
                let applied = client
                    .apply(&manifest(&[model("race", &ns, "gs://x/race")], false))
                    .await;
                (ns, applied)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (ns, applied) = racer.await.unwrap();
        match applied {
            Ok(_) => winners.push(ns),
            Err(e) => {
                let failure = e.downcast_ref::<ApiFailure>().unwrap();
                assert_eq!(failure.status, 409, "{ns}: {failure}");
            }
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = client.find_model("race").await.unwrap().unwrap();
    assert_eq!(stored.namespace, Some(winners[0].clone()));
}
