//! The V2 gRPC front end (`inference.GRPCInferenceService`): server health and metadata are
//! answered locally; ModelReady, ModelMetadata and ModelInfer are forwarded to a replica over a
//! cached tonic channel with `seldon-model` / `seldon-internal-model` metadata added.
//! Repository RPCs are refused: models are managed through the control plane.

use std::future::Future;

use coscale_api::pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use coscale_api::pb::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, RepositoryIndexRequest, RepositoryIndexResponse,
    RepositoryModelLoadRequest, RepositoryModelLoadResponse, RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::error::RouteError;
use crate::handle::{GrpcClient, RouterHandle};
use crate::metrics::GRPC;
use crate::name::validate_model_name;
use crate::state::Picked;
use crate::{SELDON_INTERNAL_MODEL, SELDON_MODEL};

const REPOSITORY_REFUSAL: &str =
    "the router does not serve the model repository API; use the control plane API to load and unload models";

/// The router's gRPC service implementation.
#[derive(Debug, Clone)]
pub struct GrpcRouter {
    handle: RouterHandle,
}

/// The router's gRPC service, with message size limits from the configuration.
pub fn grpc_service(handle: RouterHandle) -> GrpcInferenceServiceServer<GrpcRouter> {
    let limit = handle.config().grpc_max_message_bytes;
    GrpcInferenceServiceServer::new(GrpcRouter { handle })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// A forwarded request message: where its model name lives.
trait Routed: Clone + Send + 'static {
    fn model_name(&mut self) -> &mut String;
}

impl Routed for ModelInferRequest {
    fn model_name(&mut self) -> &mut String {
        &mut self.model_name
    }
}

impl Routed for ModelMetadataRequest {
    fn model_name(&mut self) -> &mut String {
        &mut self.name
    }
}

impl Routed for ModelReadyRequest {
    fn model_name(&mut self) -> &mut String {
        &mut self.name
    }
}

/// The model a gRPC request is for: `seldon-model` metadata if present, else the message field.
fn requested_model<M: Routed>(
    metadata: &MetadataMap,
    message: &mut M,
) -> Result<String, RouteError> {
    let name = match metadata.get(SELDON_MODEL) {
        Some(value) => value
            .to_str()
            .map_err(|_| {
                RouteError::InvalidModelName(String::from_utf8_lossy(value.as_bytes()).into_owned())
            })?
            .to_owned(),
        None if message.model_name().is_empty() => return Err(RouteError::MissingModelName),
        None => std::mem::take(message.model_name()),
    };
    validate_model_name(&name)?;
    Ok(name)
}

/// Whether a failed call never got an answer from the replica (so another may be tried):
/// statuses made locally from a transport error carry a source; statuses sent by the replica don't.
fn failed_before_answer(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        && !matches!(status.code(), tonic::Code::DeadlineExceeded)
}

impl GrpcRouter {
    async fn forward<M, R, F, Fut>(
        &self,
        request: Request<M>,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        M: Routed,
        F: Fn(GrpcClient, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let timer = self.handle.metrics().start(GRPC);
        let (metadata, _, mut message) = request.into_parts();
        let (label, result) = match requested_model(&metadata, &mut message) {
            Err(err) => (String::new(), Err(Status::from(err))),
            Ok(model) => {
                let result = self.forward_model(&model, metadata, message, &call).await;
                let known = !matches!(&result, Err(RouteError::UnknownModel(_)));
                (
                    if known { model } else { String::new() },
                    result.unwrap_or_else(|err| Err(err.into())),
                )
            }
        };
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        timer.finish(&label, code as u16);
        result
    }

    async fn forward_model<M, R, F, Fut>(
        &self,
        model: &str,
        metadata: MetadataMap,
        mut message: M,
        call: &F,
    ) -> Result<Result<Response<R>, Status>, RouteError>
    where
        M: Routed,
        F: Fn(GrpcClient, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        model.clone_into(message.model_name());
        let first = self.handle.pick(model, None)?;
        // Keep a copy for a retry only when there is another replica to retry on.
        let spare = first
            .has_alternative()
            .then(|| (metadata.clone(), message.clone()));
        let status = match self.attempt(&first, metadata, message, call).await? {
            Ok(response) => return Ok(Ok(response)),
            Err(status) if failed_before_answer(&status) => status,
            Err(status) => return Ok(Err(status)),
        };
        let endpoint = first.endpoint().clone();
        let label = first.replica().label();
        drop(first);
        let (Some((metadata, message)), Ok(second)) =
            (spare, self.handle.pick(model, Some(&endpoint)))
        else {
            return Err(upstream_failed(model, label, &status));
        };
        self.handle.metrics().retried();
        tracing::debug!(%model, failed = %label, error = %status, retry_on = %second.replica().label(), "retrying on another replica");
        match self.attempt(&second, metadata, message, call).await? {
            Err(status) if failed_before_answer(&status) => {
                Err(upstream_failed(model, second.replica().label(), &status))
            }
            answer => Ok(answer),
        }
    }

    /// One call to one replica; `Err` only for a timeout or an unusable address.
    async fn attempt<M, R, F, Fut>(
        &self,
        picked: &Picked,
        mut metadata: MetadataMap,
        message: M,
        call: &F,
    ) -> Result<Result<Response<R>, Status>, RouteError>
    where
        M: Routed,
        F: Fn(GrpcClient, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let replica = picked.replica();
        let client = self
            .handle
            .grpc_client(replica.endpoint.grpc)
            .map_err(|err| RouteError::UpstreamFailed {
                model: replica.model.clone(),
                replica: replica.label(),
                detail: format!("bad gRPC address {}: {err}", replica.endpoint.grpc),
            })?;
        metadata.insert(SELDON_MODEL, replica.model_metadata.clone());
        metadata.insert(SELDON_INTERNAL_MODEL, replica.internal_metadata.clone());
        let request = Request::from_parts(metadata, tonic::Extensions::default(), message);
        let timeout = self.handle.config().request_timeout;
        tokio::time::timeout(timeout, call(client, request))
            .await
            .map_err(|_| RouteError::UpstreamTimeout {
                model: replica.model.clone(),
                replica: replica.label(),
                timeout_ms: timeout.as_millis(),
            })
    }
}

/// Repository RPCs: models are loaded and unloaded through the control plane, not the router.
fn repository_refused<T>() -> Result<Response<T>, Status> {
    Err(RouteError::Unimplemented(REPOSITORY_REFUSAL.to_owned()).into())
}

fn upstream_failed(model: &str, replica: String, status: &Status) -> RouteError {
    RouteError::UpstreamFailed {
        model: model.to_owned(),
        replica,
        detail: status.message().to_owned(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcRouter {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.forward(request, |mut client, request| async move {
            client.model_ready(request).await
        })
        .await
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "coscale".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.forward(request, |mut client, request| async move {
            client.model_metadata(request).await
        })
        .await
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.forward(request, |mut client, request| async move {
            client.model_infer(request).await
        })
        .await
    }

    async fn repository_index(
        &self,
        _request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        repository_refused()
    }

    async fn repository_model_load(
        &self,
        _request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        repository_refused()
    }

    async fn repository_model_unload(
        &self,
        _request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        repository_refused()
    }
}
