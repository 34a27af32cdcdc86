//! The runtime's error type and its ONE mapping to HTTP status codes and gRPC codes.

use std::path::PathBuf;

use axum::http::StatusCode;
use coscale_api::v2::V2Error;

/// What went wrong serving or loading a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// The model is not loaded (never loaded, unloaded, or failed to load).
    #[error("model '{0}' not found")]
    NotFound(String),
    /// The model is loaded but not in the requested version.
    #[error("model '{model}' has no version '{version}' (available: {available})")]
    VersionNotFound {
        model: String,
        version: String,
        available: String,
    },
    /// The request does not fit the model (names, datatypes, shapes) or is malformed.
    #[error("{0}")]
    BadInput(String),
    /// The model name cannot be used (empty, `.`/`..`, characters outside `[A-Za-z0-9._-]`).
    #[error("invalid model name '{0}': use 1-255 characters from [A-Za-z0-9._-], not '.' or '..'")]
    BadName(String),
    /// The artifact is missing, unreadable or not an ONNX model tract can run.
    #[error("cannot load model from {path}: {reason}")]
    Artifact { path: PathBuf, reason: String },
    /// The request body is larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The model failed while running.
    #[error("inference failed: {0}")]
    Internal(String),
}

impl From<V2Error> for RuntimeError {
    fn from(e: V2Error) -> Self {
        RuntimeError::BadInput(e.to_string())
    }
}

impl RuntimeError {
    /// The HTTP status for this error (the REST server's only mapping).
    pub fn http_status(&self) -> StatusCode {
        match self {
            RuntimeError::NotFound(_) | RuntimeError::VersionNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            RuntimeError::BadInput(_)
            | RuntimeError::BadName(_)
            | RuntimeError::Artifact { .. } => StatusCode::BAD_REQUEST,
            RuntimeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RuntimeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC code for this error (the gRPC server's only mapping).
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            RuntimeError::NotFound(_) | RuntimeError::VersionNotFound { .. } => {
                tonic::Code::NotFound
            }
            RuntimeError::BadInput(_)
            | RuntimeError::BadName(_)
            | RuntimeError::Artifact { .. } => tonic::Code::InvalidArgument,
            RuntimeError::TooLarge { .. } => tonic::Code::ResourceExhausted,
            RuntimeError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<RuntimeError> for tonic::Status {
    fn from(e: RuntimeError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

impl axum::response::IntoResponse for RuntimeError {
    fn into_response(self) -> axum::response::Response {
        crate::rest::error_response(self.http_status(), &self.to_string())
    }
}
