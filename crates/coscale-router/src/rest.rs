//! The V2 REST front end: health, server metadata and `/metrics` answered locally; everything
//! under `/v2/models/<name>/...` forwarded byte for byte to a replica over a pooled HTTP/1 client.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming};

use crate::error::{v2_error_response, RouteError};
use crate::handle::RouterHandle;
use crate::metrics::REST;
use crate::name::{decode_model_segment, validate_model_name};
use crate::state::{Picked, Replica};
use crate::{SELDON_INTERNAL_MODEL, SELDON_MODEL};

const MODELS_PREFIX: &str = "/v2/models/";
/// Largest non-JSON upstream error body that is read to wrap it as `{"error": ...}`.
const MAX_WRAPPED_ERROR_BYTES: usize = 64 * 1024;

/// The router's REST application.
///
/// `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2` (and `/v2/`), `GET /metrics`, and any
/// method on `/v2/models/<name>[/...]`, forwarded to a replica of the model.
pub fn http_app(handle: RouterHandle) -> Router {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(serde_json::json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { Json(serde_json::json!({"ready": true})) }),
        )
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/metrics", get(metrics))
        .route("/v2/models/{name}", any(forward_model))
        .route("/v2/models/{name}/{*rest}", any(forward_model))
        .fallback(|| async { v2_error_response(StatusCode::NOT_FOUND, "Not Found") })
        .method_not_allowed_fallback(|| async {
            v2_error_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        })
        .with_state(handle)
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": "coscale",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

async fn metrics(State(handle): State<RouterHandle>) -> Response {
    let mut response = handle.metrics_text().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn forward_model(State(handle): State<RouterHandle>, request: Request) -> Response {
    let timer = handle.metrics().start(REST);
    let (parts, body) = request.into_parts();
    let (label, response) = match requested_model(&parts) {
        Err(err) => ("", err.into_response()),
        Ok(model) => {
            let result = forward(&handle, &model, &parts, body).await;
            // Only routing-table names become label values, so the label set stays bounded.
            let known = !matches!(result, Err(RouteError::UnknownModel(_)));
            let response = result.unwrap_or_else(IntoResponse::into_response);
            timer.finish(if known { &model } else { "" }, response.status().as_u16());
            return response;
        }
    };
    timer.finish(label, response.status().as_u16());
    response
}

/// The model a REST request is for: the `seldon-model` header if present, else the path segment.
fn requested_model(parts: &Parts) -> Result<Cow<'_, str>, RouteError> {
    if let Some(value) = parts.headers.get(SELDON_MODEL) {
        let name = value.to_str().map_err(|_| {
            RouteError::InvalidModelName(String::from_utf8_lossy(value.as_bytes()).into_owned())
        })?;
        validate_model_name(name)?;
        return Ok(Cow::Borrowed(name));
    }
    let rest = parts
        .uri
        .path()
        .strip_prefix(MODELS_PREFIX)
        .ok_or(RouteError::MissingModelName)?;
    let segment = rest.split('/').next().unwrap_or_default();
    decode_model_segment(segment)
}

async fn forward(
    handle: &RouterHandle,
    model: &str,
    parts: &Parts,
    body: Body,
) -> Result<Response, RouteError> {
    let first = handle.pick(model, None)?;
    let limit = handle.config().body_limit_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(RouteError::BodyTooLarge { limit });
    }
    let body = read_body(body, limit).await?;

    let (first_err, first_endpoint) = match attempt(handle, parts, &body, &first).await {
        Attempt::Answered(response) => return Ok(answer(response, first).await),
        Attempt::TimedOut => return Err(timeout_error(handle, first.replica())),
        Attempt::Failed(err) => (err, first.endpoint().clone()),
    };
    let failed = failure(first.replica(), &first_err);
    drop(first);
    let Ok(second) = handle.pick(model, Some(&first_endpoint)) else {
        return Err(failed);
    };
    handle.metrics().retried();
    tracing::debug!(error = %failed, retry_on = %second.replica().label(), "retrying on another replica");
    match attempt(handle, parts, &body, &second).await {
        Attempt::Answered(response) => Ok(answer(response, second).await),
        Attempt::TimedOut => Err(timeout_error(handle, second.replica())),
        Attempt::Failed(err) => Err(failure(second.replica(), &err)),
    }
}

fn failure(replica: &Replica, err: &hyper_util::client::legacy::Error) -> RouteError {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        detail.push_str(": ");
        detail.push_str(&inner.to_string());
        source = inner.source();
    }
    RouteError::UpstreamFailed {
        model: replica.model.clone(),
        replica: replica.label(),
        detail,
    }
}

fn timeout_error(handle: &RouterHandle, replica: &Replica) -> RouteError {
    RouteError::UpstreamTimeout {
        model: replica.model.clone(),
        replica: replica.label(),
        timeout_ms: handle.config().request_timeout.as_millis(),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, RouteError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(RouteError::BodyTooLarge { limit })
        }
        Err(err) => Err(RouteError::BadBody(err.to_string())),
    }
}

enum Attempt {
    Answered(hyper::Response<Incoming>),
    TimedOut,
    /// No response head arrived: connect error, reset or close before the answer.
    Failed(hyper_util::client::legacy::Error),
}

async fn attempt(handle: &RouterHandle, parts: &Parts, body: &Bytes, picked: &Picked) -> Attempt {
    let request = upstream_request(parts, picked.replica(), body.clone());
    let call = handle.http_client().request(request);
    match tokio::time::timeout(handle.config().request_timeout, call).await {
        Err(_) => Attempt::TimedOut,
        Ok(Err(err)) => Attempt::Failed(err),
        Ok(Ok(response)) => Attempt::Answered(response),
    }
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn upstream_request(parts: &Parts, replica: &Replica, body: Bytes) -> hyper::Request<Full<Bytes>> {
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = Uri::default().into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(replica.http_authority.clone());
    uri.path_and_query = Some(path);
    let mut request = hyper::Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    // The parts were valid in the incoming URI and the authority was validated when the
    // routing table was loaded, so this cannot fail; fall back to the incoming URI regardless.
    *request.uri_mut() = Uri::from_parts(uri).unwrap_or_else(|_| parts.uri.clone());
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(SELDON_MODEL, replica.model_header.clone());
    headers.insert(SELDON_INTERNAL_MODEL, replica.internal_header.clone());
    request
}

/// The replica's answer for the client. Keeps the in-flight slot until the body is sent.
/// Non-JSON error answers (e.g. MLServer's plain-text 500) are re-emitted as `{"error": ...}`
/// so V2 clients can read them (v2-protocol.md §2.10); the status passes through unchanged.
async fn answer(response: hyper::Response<Incoming>, picked: Picked) -> Response {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if parts.status.is_success() || is_json {
        return Response::from_parts(
            parts,
            Body::new(Guarded {
                body,
                _picked: picked,
            }),
        );
    }
    let text = match Limited::new(body, MAX_WRAPPED_ERROR_BYTES).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        Err(err) => format!("could not read the replica's error body: {err}"),
    };
    drop(picked);
    let text = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_owned()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": text }).to_string();
    Response::from_parts(parts, Body::from(body))
}

/// A response body that holds the replica's in-flight slot until it is finished or dropped.
struct Guarded<B> {
    body: B,
    _picked: Picked,
}

impl<B: HttpBody + Unpin> HttpBody for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
