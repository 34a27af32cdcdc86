//! The V2 gRPC server (`inference.GRPCInferenceService`) over an [`Engine`].
//!
//! Raw in → raw out: a request with `raw_input_contents` is answered with
//! `raw_output_contents` (tritonclient reads nothing else); typed requests get typed outputs.

use std::path::PathBuf;
use std::sync::Arc;

use coscale_api::pb::inference as pb;
use coscale_api::pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use coscale_api::v2::InferRequest;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::error::RuntimeError;
use crate::repository::{load_from_repository, repository_index};

/// Largest gRPC message accepted or sent (2 GiB − 1, as Triton and tritonclient use).
pub const MAX_GRPC_MESSAGE_SIZE: usize = i32::MAX as usize;

/// The gRPC service implementation; build it with [`grpc_service`].
pub struct RuntimeGrpc {
    engine: Arc<Engine>,
    repository: PathBuf,
}

/// The V2 gRPC service over `engine`, message limits raised to [`MAX_GRPC_MESSAGE_SIZE`].
/// Repository loads read `<repository>/<model_name>`.
pub fn grpc_service(
    engine: Arc<Engine>,
    repository: PathBuf,
) -> GrpcInferenceServiceServer<RuntimeGrpc> {
    GrpcInferenceServiceServer::new(RuntimeGrpc { engine, repository })
        .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_SIZE)
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Internal(format!("worker task failed: {e}")))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl GrpcInferenceService for RuntimeGrpc {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let req = req.into_inner();
        let ready = self
            .engine
            .check_version(&req.name, version(&req.version))
            .is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: crate::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        self.engine
            .check_version(&req.name, version(&req.version))?;
        let meta = self
            .engine
            .metadata(&req.name)
            .ok_or(RuntimeError::NotFound(req.name))?;
        Ok(Response::new(meta.to_proto()))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let req = req.into_inner();
        self.engine
            .check_version(&req.model_name, version(&req.model_version))?;
        let raw = !req.raw_input_contents.is_empty();
        let name = req.model_name.clone();
        let request = InferRequest::from_proto(req).map_err(RuntimeError::from)?;
        let response = self.engine.infer_on_worker(&name, &request).await?;
        Ok(Response::new(response.to_proto(raw)))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready_only = req.into_inner().ready;
        let models = repository_index(&self.engine, &self.repository, ready_only)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.unwrap_or_default(),
                state: e.state.as_str().into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let name = req.into_inner().model_name;
        let engine = self.engine.clone();
        let repository = self.repository.clone();
        blocking(move || load_from_repository(&engine, &repository, &name)).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.engine.unload(&req.into_inner().model_name)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
