//! The V2 REST server: an axum `Router` over an [`Engine`].
//!
//! Every non-2xx answer is `{"error": "..."}` with `Content-Type: application/json`; the body
//! framing is decided by `Inference-Header-Content-Length` alone, never by `Content-Type`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coscale_api::v2::{error_body, HttpBody, InferRequest, HEADER_CONTENT_LENGTH};
use serde_json::json;

use crate::engine::{validate_model_name, Engine};
use crate::error::RuntimeError;
use crate::repository::{load_from_repository, repository_index};

#[derive(Clone)]
struct RestState {
    engine: Arc<Engine>,
    repository: Arc<PathBuf>,
    body_limit: usize,
}

type Handled = Result<Response, RuntimeError>;

/// The standalone V2 REST API over `engine`. Repository loads read `<repository>/<m>`;
/// request bodies above `body_limit` bytes get 413.
pub fn rest_router(engine: Arc<Engine>, repository: PathBuf, body_limit: usize) -> Router {
    let state = RestState {
        engine,
        repository: Arc::new(repository),
        body_limit,
    };
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { json_response(StatusCode::OK, &json!({ "live": true })) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { json_response(StatusCode::OK, &json!({ "ready": true })) }),
        )
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/v2/models/{m}", get(model_metadata))
        .route("/v2/models/{m}/versions/{v}", get(model_metadata))
        .route("/v2/models/{m}/ready", get(model_ready))
        .route("/v2/models/{m}/versions/{v}/ready", get(model_ready))
        .route("/v2/models/{m}/infer", post(infer))
        .route("/v2/models/{m}/versions/{v}/infer", post(infer))
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{m}/load", post(load))
        .route("/v2/repository/models/{m}/unload", post(unload))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "Not Found") })
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        })
        .with_state(state)
}

/// A `{"error": msg}` response with `Content-Type: application/json`.
pub(crate) fn error_response(status: StatusCode, msg: &str) -> Response {
    bytes_response(status, error_body(msg), "application/json")
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    bytes_response(
        status,
        serde_json::to_vec(value).unwrap_or_default(),
        "application/json",
    )
}

fn bytes_response(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Reads `{m}` and optional `{v}` from the path; the name is already percent-decoded.
fn model_path(p: &HashMap<String, String>) -> Result<(String, Option<String>), RuntimeError> {
    let name = p.get("m").cloned().unwrap_or_default();
    validate_model_name(&name)?;
    Ok((name, p.get("v").cloned()))
}

/// Reads the whole body, enforcing the size limit.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, RuntimeError> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        if encoding.as_bytes() != b"identity" {
            return Err(RuntimeError::BadInput(format!(
                "Content-Encoding {} is not supported; send an uncompressed body",
                String::from_utf8_lossy(encoding.as_bytes())
            )));
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            RuntimeError::TooLarge { limit }
        } else {
            RuntimeError::BadInput(format!("cannot read the request body: {inner}"))
        }
    })
}

/// Runs blocking work (model loading) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Internal(format!("worker task failed: {e}")))?
}

async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "name": crate::SERVER_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": crate::EXTENSIONS }),
    )
}

async fn model_metadata(
    State(s): State<RestState>,
    Path(p): Path<HashMap<String, String>>,
) -> Handled {
    let (name, version) = model_path(&p)?;
    s.engine.check_version(&name, version.as_deref())?;
    let meta = s
        .engine
        .metadata(&name)
        .ok_or(RuntimeError::NotFound(name))?;
    Ok(json_response(StatusCode::OK, &meta))
}

async fn model_ready(
    State(s): State<RestState>,
    Path(p): Path<HashMap<String, String>>,
) -> Handled {
    let (name, version) = model_path(&p)?;
    s.engine.check_version(&name, version.as_deref())?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": name, "ready": true }),
    ))
}

async fn infer(
    State(s): State<RestState>,
    Path(p): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Handled {
    let (name, version) = model_path(&p)?;
    s.engine.check_version(&name, version.as_deref())?;
    let header_len = match headers.get(HEADER_CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    RuntimeError::BadInput(
                        "Inference-Header-Content-Length must be a non-negative integer".into(),
                    )
                })?,
        ),
    };
    let bytes = read_body(&headers, body, s.body_limit).await?;
    let request = InferRequest::from_json(&bytes, header_len)?;
    let response = s.engine.infer_on_worker(&name, &request).await?;
    let out: HttpBody = response.to_http(|output| request.binary_output(output));
    Ok(match out.json_len {
        None => bytes_response(StatusCode::OK, out.bytes, "application/json"),
        Some(len) => {
            let mut r = bytes_response(StatusCode::OK, out.bytes, "application/octet-stream");
            r.headers_mut()
                .insert(HEADER_CONTENT_LENGTH, HeaderValue::from(len));
            r
        }
    })
}

#[derive(serde::Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn index(State(s): State<RestState>, headers: HeaderMap, body: Body) -> Handled {
    let bytes = read_body(&headers, body, s.body_limit).await?;
    // tritonclient posts an empty body; MLServer-style clients post `{}` or `{"ready": true}`.
    let request: IndexRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::BadInput(format!("invalid repository index body: {e}")))?
    };
    Ok(json_response(
        StatusCode::OK,
        &repository_index(&s.engine, &s.repository, request.ready),
    ))
}

async fn load(State(s): State<RestState>, Path(p): Path<HashMap<String, String>>) -> Handled {
    let (name, _) = model_path(&p)?;
    let engine = s.engine.clone();
    let repository = s.repository.clone();
    blocking(move || load_from_repository(&engine, &repository, &name)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn unload(State(s): State<RestState>, Path(p): Path<HashMap<String, String>>) -> Handled {
    let (name, _) = model_path(&p)?;
    s.engine.unload(&name)?;
    Ok(StatusCode::OK.into_response())
}
