//! The V2 REST router over a real TCP listener, driven by a real HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use coscale_api::v2::{InferResponse, TensorData, HEADER_CONTENT_LENGTH};
use coscale_runtime::{rest_router, Engine};
use serde_json::{json, Value};

struct Server {
    base: String,
    http: reqwest::Client,
}

impl Server {
    /// A runtime serving `iris` from the example repository, with the given body limit.
    async fn start(body_limit: usize) -> Server {
        let engine = Arc::new(Engine::new());
        engine.load("iris", &models_dir().join("iris")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = rest_router(engine, models_dir(), body_limit);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        into_json(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        into_json(
            self.http
                .post(format!("{}{path}", self.base))
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

/// Status and JSON body; every body this server sends must be JSON, errors with the exact type.
async fn into_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.bytes().await.unwrap();
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    if status >= 400 {
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "error content type"
        );
    }
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn iris_json(rows: &[[f32; 4]]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "abc",
        "inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows}]
    }))
    .unwrap()
}

#[tokio::test]
async fn health_and_server_metadata_answer_with_json_bodies() {
    let s = Server::start(1 << 20).await;
    assert_eq!(s.get("/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(
        s.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    for path in ["/v2", "/v2/"] {
        let (status, meta) = s.get(path).await;
        assert_eq!(status, 200);
        assert_eq!(meta["name"], "coscale-runtime");
        assert_eq!(
            meta["extensions"],
            json!(["binary_tensor_data", "model_repository"])
        );
    }
}

#[tokio::test]
async fn model_metadata_and_ready_follow_the_model_and_its_version() {
    let s = Server::start(1 << 20).await;
    let (status, meta) = s.get("/v2/models/iris").await;
    assert_eq!(status, 200);
    assert_eq!(meta["platform"], "onnx");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(s.get("/v2/models/iris/versions/1").await.1, meta);
    assert_eq!(
        s.get("/v2/models/iris/ready").await,
        (200, json!({"name": "iris", "ready": true}))
    );
    // Percent-encoded names are decoded before lookup.
    assert_eq!(s.get("/v2/models/ir%69s/versions/1/ready").await.0, 200);
    let (status, err) = s.get("/v2/models/iris/versions/7").await;
    assert_eq!(
        (status, err["error"].as_str().unwrap()),
        (404, "model 'iris' has no version '7' (available: 1)")
    );
}

#[tokio::test]
async fn json_infer_returns_sklearn_labels_and_echoes_the_id() {
    let s = Server::start(1 << 20).await;
    let (status, body) = s.post("/v2/models/iris/infer", iris_json(&ROWS)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], "iris");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["id"], "abc");
    assert_eq!(body["outputs"][0]["name"], "label");
    assert_eq!(body["outputs"][0]["datatype"], "INT64");
    assert_eq!(body["outputs"][0]["shape"], json!([5]));
    assert_eq!(body["outputs"][0]["data"], json!(IRIS_LABELS));
    let (status, _) = s
        .post("/v2/models/iris/versions/1/infer", iris_json(&ROWS[..1]))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn tritonclient_style_binary_infer_gets_binary_outputs() {
    let s = Server::start(1 << 20).await;
    // What tc-http sends: no Content-Type, binary input, binary_data_output.
    let request = iris_request(&ROWS[..3]);
    let mut http = request.to_http(true);
    let mut json: Value = serde_json::from_slice(&http.bytes[..http.json_len.unwrap()]).unwrap();
    json["parameters"] = json!({"binary_data_output": true});
    let mut body = serde_json::to_vec(&json).unwrap();
    let json_len = body.len();
    body.extend_from_slice(&http.bytes.split_off(http.json_len.unwrap()));
    let resp = s
        .http
        .post(format!("{}/v2/models/iris/infer", s.base))
        .header(HEADER_CONTENT_LENGTH, json_len)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let header_len: usize = resp.headers()[HEADER_CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    let decoded = InferResponse::from_json(&bytes, Some(header_len)).unwrap();
    assert_eq!(
        decoded.outputs[0].data,
        TensorData::Int64(IRIS_LABELS[..3].to_vec())
    );
}

#[tokio::test]
async fn wrong_datatype_is_400_with_an_error_body() {
    let s = Server::start(1 << 20).await;
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]});
    let (status, err) = s
        .post("/v2/models/iris/infer", serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(
        (status, err),
        (
            400,
            json!({"error": "input 'input' must be FP32 but is FP64"})
        )
    );
    let (status, err) = s
        .post("/v2/models/iris/infer", &b"{\"inputs\": [}"[..])
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("line 1 column"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_model_route_and_method_get_json_errors() {
    let s = Server::start(1 << 20).await;
    assert_eq!(
        s.post("/v2/models/nope/infer", iris_json(&ROWS[..1])).await,
        (404, json!({"error": "model 'nope' not found"}))
    );
    assert_eq!(
        s.get("/v2/nothing/here").await,
        (404, json!({"error": "Not Found"}))
    );
    assert_eq!(
        s.get("/v2/models/iris/infer").await,
        (405, json!({"error": "Method Not Allowed"}))
    );
    assert_eq!(s.get("/v2/models/a%20b").await.0, 400);
}

#[tokio::test]
async fn body_over_the_limit_is_413_with_an_error_body() {
    let s = Server::start(256).await;
    let (status, err) = s.post("/v2/models/iris/infer", vec![b' '; 1000]).await;
    assert_eq!(
        (status, err),
        (
            413,
            json!({"error": "request body exceeds the limit of 256 bytes"})
        )
    );
    // A streamed body without Content-Length is cut off the same way.
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = (0..10)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b' ';
                100
            ])))
        })
        .collect();
    let streamed = reqwest::Body::wrap(http_body_util::StreamBody::new(tokio_stream::iter(chunks)));
    assert_eq!(s.post("/v2/models/iris/infer", streamed).await.0, 413);
}

#[tokio::test]
async fn repository_index_load_and_unload_change_what_is_served() {
    let s = Server::start(1 << 20).await;
    let (status, index) = s.post("/v2/repository/index", "").await;
    assert_eq!(status, 200);
    let row = |index: &Value, name: &str| {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    assert_eq!(
        row(&index, "iris"),
        Some(json!({"name": "iris", "version": "1", "state": "READY", "reason": ""}))
    );
    assert_eq!(
        row(&index, "iris-mlp"),
        Some(json!({"name": "iris-mlp", "state": "UNAVAILABLE", "reason": "not loaded"}))
    );
    let (_, ready_only) = s.post("/v2/repository/index", r#"{"ready": true}"#).await;
    assert_eq!(ready_only.as_array().unwrap().len(), 1);

    assert_eq!(
        s.post("/v2/repository/models/iris-mlp/load", "{}").await.0,
        200
    );
    let (status, body) = s.post("/v2/models/iris-mlp/infer", iris_json(&ROWS)).await;
    assert_eq!(status, 200);
    assert_eq!(body["outputs"][0]["data"], json!(IRIS_MLP_LABELS));
    assert_eq!(
        row(&s.post("/v2/repository/index", "{}").await.1, "iris-mlp").unwrap()["state"],
        "READY"
    );

    assert_eq!(
        s.post(
            "/v2/repository/models/iris-mlp/unload",
            r#"{"parameters":{"unload_dependents":false}}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.post("/v2/models/iris-mlp/infer", iris_json(&ROWS))
            .await
            .0,
        404
    );
    assert_eq!(
        s.post("/v2/repository/models/iris-mlp/unload", "").await.0,
        404
    );
    assert_eq!(
        s.post("/v2/repository/models/absent/load", "").await,
        (404, json!({"error": "model 'absent' not found"}))
    );
}

#[tokio::test]
async fn the_readme_sample_request_gets_the_readme_answer() {
    let s = Server::start(1 << 20).await;
    let body = r#"{
      "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4],
                  "data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}],
      "outputs": [{"name": "label"}]
    }"#;
    let resp = s
        .http
        .post(format!("{}/v2/models/iris/infer", s.base))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"model_name":"iris","model_version":"1","parameters":{},"outputs":[{"name":"label","datatype":"INT64","shape":[2],"data":[0,2]}]}"#
    );
}
