//! The agent's data plane: V2 REST and gRPC endpoints that the router forwards to.
//! Each request is resolved to a loaded model version, counted (in-flight, totals,
//! latency) and handed to the backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coscale_api::pb::inference as pb;
use coscale_api::pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use coscale_api::v2::{error_body, InferRequest};
use coscale_runtime::RuntimeError;
use tonic::{Request, Status};

use crate::backend::Backend;
use crate::stats::{Protocol, Stats};

const SELDON_MODEL: &str = "seldon-model";
const SELDON_INTERNAL_MODEL: &str = "seldon-internal-model";
const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Shared by the REST and gRPC endpoints.
#[derive(Clone)]
pub struct DataPlane {
    pub backend: Arc<dyn Backend>,
    pub stats: Arc<Stats>,
    /// False while draining: readiness reports not ready.
    pub ready: Arc<AtomicBool>,
}

fn v2_error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        error_body(msg),
    )
        .into_response()
}

fn runtime_error(e: &RuntimeError) -> Response {
    v2_error(e.http_status(), &e.to_string())
}

fn not_loaded(model: &str) -> RuntimeError {
    RuntimeError::NotFound(format!("{model} (not loaded on this replica)"))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The REST app: V2 health, metadata, ready, infer, and `/metrics`.
pub fn rest_app(dp: DataPlane, body_limit: usize) -> Router {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { json(StatusCode::OK, serde_json::json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(health_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(dp)
}

async fn health_ready(State(dp): State<DataPlane>) -> Response {
    if dp.ready.load(Ordering::Relaxed) {
        json(StatusCode::OK, serde_json::json!({"ready": true}))
    } else {
        v2_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server replica is draining",
        )
    }
}

async fn server_metadata(State(dp): State<DataPlane>) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "name": format!("coscale-agent ({})", dp.backend.kind()),
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["model_repository"],
        }),
    )
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Model name from the `seldon-model` header (wins, as in Seldon) or the path.
fn resolve(dp: &DataPlane, path_model: &str, headers: &HeaderMap) -> Result<String, RuntimeError> {
    let model = header(headers, SELDON_MODEL).unwrap_or(path_model);
    dp.stats
        .resolve(model, header(headers, SELDON_INTERNAL_MODEL))
        .ok_or_else(|| not_loaded(model))
}

fn metadata_response(dp: &DataPlane, model: &str, headers: &HeaderMap) -> Response {
    let result = resolve(dp, model, headers).and_then(|internal| dp.backend.metadata(&internal));
    match result {
        Ok(m) => json(
            StatusCode::OK,
            serde_json::json!({
                "name": header(headers, SELDON_MODEL).unwrap_or(model),
                "versions": m.versions,
                "platform": m.platform,
                "inputs": m.inputs.iter().map(|t| serde_json::json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect::<Vec<_>>(),
                "outputs": m.outputs.iter().map(|t| serde_json::json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => runtime_error(&e),
    }
}

async fn model_metadata(
    State(dp): State<DataPlane>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata_response(&dp, &model, &headers)
}

async fn model_metadata_v(
    State(dp): State<DataPlane>,
    Path((model, _version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    metadata_response(&dp, &model, &headers)
}

fn ready_response(dp: &DataPlane, model: &str, headers: &HeaderMap) -> Response {
    match resolve(dp, model, headers) {
        Ok(internal) if dp.backend.ready(&internal) => json(
            StatusCode::OK,
            serde_json::json!({"name": header(headers, SELDON_MODEL).unwrap_or(model), "ready": true}),
        ),
        Ok(internal) => runtime_error(&not_loaded(&internal)),
        Err(e) => runtime_error(&e),
    }
}

async fn model_ready(
    State(dp): State<DataPlane>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    ready_response(&dp, &model, &headers)
}

async fn model_ready_v(
    State(dp): State<DataPlane>,
    Path((model, _version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    ready_response(&dp, &model, &headers)
}

async fn infer_inner(dp: DataPlane, model: String, headers: HeaderMap, body: Bytes) -> Response {
    let internal = match resolve(&dp, &model, &headers) {
        Ok(i) => i,
        Err(e) => return runtime_error(&e),
    };
    let Some(inflight) = dp.stats.begin(&internal, Protocol::Rest) else {
        return runtime_error(&not_loaded(&model));
    };
    let ihcl = match header(&headers, INFERENCE_HEADER_CONTENT_LENGTH)
        .map(|v| v.trim().parse::<usize>())
        .transpose()
    {
        Ok(v) => v,
        Err(_) => {
            inflight.finish("400", false);
            return v2_error(
                StatusCode::BAD_REQUEST,
                "Inference-Header-Content-Length is not a number",
            );
        }
    };
    let name = header(&headers, SELDON_MODEL).unwrap_or(&model);
    if ihcl.is_none() && dp.backend.proxies_json() && !mentions_binary_extension(&body) {
        let answer = dp.backend.infer_json(&internal, body).await;
        return match answer.and_then(|answer| renamed(&answer, name)) {
            Ok(json) => {
                inflight.finish("200", true);
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    json,
                )
                    .into_response()
            }
            Err(e) => {
                inflight.finish(e.http_status().as_str(), false);
                runtime_error(&e)
            }
        };
    }
    let request = match InferRequest::from_json(&body, ihcl) {
        Ok(r) => r,
        Err(e) => {
            inflight.finish("400", false);
            return v2_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    match dp.backend.infer(&internal, &request).await {
        Ok(mut response) => {
            response.model_name = name.to_owned();
            let encoded = response.to_http(|name| request.binary_output(name));
            inflight.finish("200", true);
            let mut resp = (StatusCode::OK, encoded.bytes).into_response();
            let h = resp.headers_mut();
            match encoded.json_len {
                Some(n) => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
                        h.insert(INFERENCE_HEADER_CONTENT_LENGTH, v);
                    }
                }
                None => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            resp
        }
        Err(e) => {
            inflight.finish(e.http_status().as_str(), false);
            runtime_error(&e)
        }
    }
}

/// Whether a JSON request mentions the binary tensor extension (`binary_data`,
/// `binary_data_output`, `binary_data_size`): such a request is decoded by the agent, which
/// implements the extension for runtimes that do not.
fn mentions_binary_extension(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"binary_data";
    body.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'b')
        .any(|(i, _)| body[i..].starts_with(NEEDLE))
}

/// A runtime's JSON infer answer with `model_name` set to the name the client asked for (the
/// runtime knows the model by its internal `<model>_<version>` name). Only the top level
/// is parsed; tensors pass through as they are.
fn renamed(answer: &[u8], name: &str) -> Result<Bytes, RuntimeError> {
    let raw: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(answer).map_err(|e| {
            RuntimeError::Internal(format!(
                "the runtime sent an answer coscale cannot read: {e}"
            ))
        })?;
    let mut out = Vec::with_capacity(answer.len() + name.len());
    out.push(b'{');
    out.extend_from_slice(b"\"model_name\":");
    serde_json::to_writer(&mut out, name).map_err(|e| RuntimeError::Internal(e.to_string()))?;
    for (key, value) in &raw {
        if key == "model_name" {
            continue;
        }
        out.push(b',');
        serde_json::to_writer(&mut out, key).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

async fn infer(
    State(dp): State<DataPlane>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer_inner(dp, model, headers, body).await
}

async fn infer_v(
    State(dp): State<DataPlane>,
    Path((model, _version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer_inner(dp, model, headers, body).await
}

async fn metrics(State(dp): State<DataPlane>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        dp.stats.encode(),
    )
        .into_response()
}

// ----- gRPC --------------------------------------------------------------------

/// The gRPC service (`inference.GRPCInferenceService`).
pub fn grpc_service(dp: DataPlane, max_message: usize) -> GrpcInferenceServiceServer<DataPlane> {
    GrpcInferenceServiceServer::new(dp)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
}

fn meta<'a, T>(req: &'a Request<T>, key: &str) -> Option<&'a str> {
    req.metadata().get(key).and_then(|v| v.to_str().ok())
}

fn grpc_resolve<T>(dp: &DataPlane, req: &Request<T>, name: &str) -> Result<String, Status> {
    let model = meta(req, SELDON_MODEL).unwrap_or(name);
    dp.stats
        .resolve(model, meta(req, SELDON_INTERNAL_MODEL))
        .ok_or_else(|| Status::from(not_loaded(model)))
}

#[tonic::async_trait]
impl GrpcInferenceService for DataPlane {
    async fn server_live(
        &self,
        _r: Request<pb::ServerLiveRequest>,
    ) -> Result<tonic::Response<pb::ServerLiveResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _r: Request<pb::ServerReadyRequest>,
    ) -> Result<tonic::Response<pb::ServerReadyResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerReadyResponse {
            ready: self.ready.load(Ordering::Relaxed),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<pb::ModelReadyRequest>,
    ) -> Result<tonic::Response<pb::ModelReadyResponse>, Status> {
        let ready = grpc_resolve(self, &r, &r.get_ref().name)
            .map(|i| self.backend.ready(&i))
            .unwrap_or(false);
        Ok(tonic::Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _r: Request<pb::ServerMetadataRequest>,
    ) -> Result<tonic::Response<pb::ServerMetadataResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerMetadataResponse {
            name: format!("coscale-agent ({})", self.backend.kind()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: vec!["model_repository".to_owned()],
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::ModelMetadataResponse>, Status> {
        let internal = grpc_resolve(self, &r, &r.get_ref().name)?;
        let mut m = self.backend.metadata(&internal)?;
        m.name = r.get_ref().name.clone();
        Ok(tonic::Response::new(m))
    }

    async fn model_infer(
        &self,
        r: Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, Status> {
        let internal = grpc_resolve(self, &r, &r.get_ref().model_name)?;
        let Some(inflight) = self.stats.begin(&internal, Protocol::Grpc) else {
            return Err(not_loaded(&internal).into());
        };
        let model = meta(&r, SELDON_MODEL)
            .map(str::to_owned)
            .unwrap_or_else(|| r.get_ref().model_name.clone());
        let req = r.into_inner();
        let raw = !req.raw_input_contents.is_empty();
        let request = match InferRequest::from_proto(req) {
            Ok(x) => x,
            Err(e) => {
                inflight.finish("InvalidArgument", false);
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        match self.backend.infer(&internal, &request).await {
            Ok(mut response) => {
                response.model_name = model;
                inflight.finish("OK", true);
                Ok(tonic::Response::new(response.to_proto(raw)))
            }
            Err(e) => {
                let status = Status::from(e);
                inflight.finish(&format!("{:?}", status.code()), false);
                Err(status)
            }
        }
    }

    async fn repository_index(
        &self,
        _r: Request<pb::RepositoryIndexRequest>,
    ) -> Result<tonic::Response<pb::RepositoryIndexResponse>, Status> {
        let models = self
            .stats
            .loaded()
            .into_iter()
            .map(
                |(name, version)| pb::repository_index_response::ModelIndex {
                    name: coscale_api::routing::internal_model_name(&name, version),
                    version: "1".to_owned(),
                    state: "READY".to_owned(),
                    reason: String::new(),
                },
            )
            .collect();
        Ok(tonic::Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        _r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<tonic::Response<pb::RepositoryModelLoadResponse>, Status> {
        Err(Status::unimplemented(
            "models on a coscale server replica are loaded by the control plane: use `coscale apply`",
        ))
    }

    async fn repository_model_unload(
        &self,
        _r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<tonic::Response<pb::RepositoryModelUnloadResponse>, Status> {
        Err(Status::unimplemented(
            "models on a coscale server replica are unloaded by the control plane: use `coscale delete`",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_proxied_answer_gets_the_client_facing_model_name_and_keeps_the_rest() {
        let answer = br#"{"model_name":"iris_1","model_version":null,"id":"a-1",
            "parameters":{"content_type":"np"},
            "outputs":[{"name":"predict","shape":[1,1],"datatype":"INT64","data":[2]}]}"#;
        let out = renamed(answer, "iris").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let want = serde_json::json!({"model_name": "iris", "model_version": null, "id": "a-1",
            "parameters": {"content_type": "np"},
            "outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [2]}]});
        assert_eq!(v, want);
        // A name that needs escaping stays valid JSON; an answer without a name gets one.
        let out = renamed(br#"{"outputs":[]}"#, "a\"b").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model_name"], "a\"b");
    }

    #[test]
    fn an_unreadable_proxied_answer_is_an_internal_error() {
        for bad in [&b"not json"[..], b"[1,2]", b"{\"a\":"] {
            let e = renamed(bad, "iris").unwrap_err();
            assert!(matches!(e, RuntimeError::Internal(_)), "{e}");
            assert!(e.to_string().contains("cannot read"), "{e}");
        }
    }

    #[test]
    fn requests_using_the_binary_extension_are_recognised() {
        assert!(mentions_binary_extension(
            br#"{"inputs":[],"outputs":[{"name":"o","parameters":{"binary_data":true}}]}"#
        ));
        assert!(mentions_binary_extension(
            br#"{"parameters":{"binary_data_output":true},"inputs":[]}"#
        ));
        assert!(!mentions_binary_extension(
            br#"{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#
        ));
        assert!(!mentions_binary_extension(b"binary_dat"));
    }
}
