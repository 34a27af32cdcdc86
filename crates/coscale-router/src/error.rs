//! [`RouteError`]: everything the router itself can answer with, and its one mapping to an HTTP
//! status (the REST front end sends it with a V2 error body, `{"error": "..."}`) and to a gRPC
//! status.

use http::StatusCode;

use crate::handle::RouterHandle;
use crate::state::Replica;

/// Why the router could not get an answer from a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The model is not in the routing table.
    #[error("model {0} not found")]
    UnknownModel(String),
    /// The model exists but no replica can take traffic now.
    #[error("model {0} has no available replica")]
    NoAvailableReplica(String),
    /// The model name in the path or `seldon-model` header breaks the V2 name rules.
    #[error("invalid model name {0:?}: use 1+ characters of [A-Za-z0-9._-], not '.' or '..'")]
    InvalidModelName(String),
    /// Neither the request path nor the `seldon-model` header/metadata names a model.
    #[error("no model name: set it in the path /v2/models/<name>/..., the model_name field or the seldon-model header")]
    MissingModelName,
    /// The request body is larger than the configured limit.
    #[error("request body exceeds the router's limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The request body could not be read from the client.
    #[error("could not read the request body: {0}")]
    BadBody(String),
    /// The replica did not answer within the request timeout.
    #[error("model {model}: replica {replica} did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        model: String,
        replica: String,
        timeout_ms: u128,
    },
    /// The replica failed before answering (and the retry, if any, failed too).
    #[error("model {model}: replica {replica} failed before answering: {detail}")]
    UpstreamFailed {
        model: String,
        replica: String,
        detail: String,
    },
    /// The replica's answer broke off (after the retry on another replica also failed) or
    /// cannot be forwarded (malformed, too large; not retried).
    #[error("model {model}: replica {replica} sent a broken answer: {detail}")]
    UpstreamBroken {
        model: String,
        replica: String,
        detail: String,
    },
    /// The RPC or path is not served by the router.
    #[error("{0}")]
    Unimplemented(String),
}

impl RouteError {
    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            RouteError::UnknownModel(_) => StatusCode::NOT_FOUND,
            RouteError::NoAvailableReplica(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouteError::InvalidModelName(_)
            | RouteError::MissingModelName
            | RouteError::BadBody(_) => StatusCode::BAD_REQUEST,
            RouteError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RouteError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RouteError::UpstreamFailed { .. } | RouteError::UpstreamBroken { .. } => {
                StatusCode::BAD_GATEWAY
            }
            RouteError::Unimplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The gRPC code this error is answered with.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            RouteError::UnknownModel(_) => tonic::Code::NotFound,
            RouteError::NoAvailableReplica(_)
            | RouteError::UpstreamFailed { .. }
            | RouteError::UpstreamBroken { .. } => tonic::Code::Unavailable,
            RouteError::InvalidModelName(_)
            | RouteError::MissingModelName
            | RouteError::BadBody(_) => tonic::Code::InvalidArgument,
            RouteError::BodyTooLarge { .. } => tonic::Code::ResourceExhausted,
            RouteError::UpstreamTimeout { .. } => tonic::Code::DeadlineExceeded,
            RouteError::Unimplemented(_) => tonic::Code::Unimplemented,
        }
    }
}

impl From<RouteError> for tonic::Status {
    fn from(err: RouteError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

/// Why an attempt on one replica got no usable answer.
pub(crate) enum Failure {
    TimedOut,
    /// Nothing came back: retried on another replica.
    NoAnswer(String),
    /// The replica's connection failed in the middle of its answer, as when the replica's
    /// process dies: retried on another replica too. The router forwards an answer only once it
    /// has it whole, so nothing has reached the client; the first replica may have run the
    /// inference, and running it again has no other effect.
    CutOff(String),
    /// The replica answered something that cannot be forwarded (malformed, larger than the
    /// router's limit, a protocol switch): not retried, its connection was fine and another
    /// replica of the same model would most likely answer the same.
    Broken(String),
}

impl Failure {
    /// Whether the request goes to another replica: when no answer, or only part of one, came
    /// back.
    pub(crate) fn retried(&self) -> bool {
        matches!(self, Failure::NoAnswer(_) | Failure::CutOff(_))
    }

    pub(crate) fn error(self, handle: &RouterHandle, replica: &Replica) -> RouteError {
        let (model, label) = (replica.model.clone(), replica.label());
        match self {
            Failure::TimedOut => RouteError::UpstreamTimeout {
                model,
                replica: label,
                timeout_ms: handle.config().request_timeout.as_millis(),
            },
            Failure::NoAnswer(detail) => RouteError::UpstreamFailed {
                model,
                replica: label,
                detail,
            },
            Failure::CutOff(detail) | Failure::Broken(detail) => RouteError::UpstreamBroken {
                model,
                replica: label,
                detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn unknown_model_maps_to_404_and_not_found() {
        let err = RouteError::UnknownModel("iris".into());
        assert_eq!(err.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);
    }

    #[test]
    fn model_without_replicas_maps_to_503_and_unavailable_with_a_message_saying_so() {
        let err = RouteError::NoAvailableReplica("iris".into());
        assert_eq!(err.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "model iris has no available replica");
    }
}
