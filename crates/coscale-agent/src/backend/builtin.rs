//! coscale's built-in ONNX runtime (tract), running in the agent's process.

use std::path::Path;
use std::sync::Arc;

use coscale_api::pb::inference as pb;
use coscale_api::v2::{InferRequest, InferResponse};
use coscale_runtime::{Engine, RuntimeError};

use super::{artifact_size, Backend};

/// coscale's built-in ONNX runtime, in process.
///
/// Inferences run at most `parallelism` at a time (one per core); the others wait for a
/// permit *inside* the request handler, so they count as in flight: the inference lag the
/// autoscaler reads includes the queue, as it would for a remote inference server.
pub struct Builtin {
    engine: Arc<Engine>,
    permits: tokio::sync::Semaphore,
}

impl Builtin {
    pub fn new() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            engine: Arc::new(Engine::new()),
            permits: tokio::sync::Semaphore::new(parallelism),
        }
    }
}

impl Default for Builtin {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Backend for Builtin {
    fn kind(&self) -> &'static str {
        "builtin"
    }

    fn unavailable_reason(&self) -> Option<String> {
        None
    }

    async fn load(&self, internal: &str, artifact: &Path) -> Result<u64, RuntimeError> {
        let engine = self.engine.clone();
        let name = internal.to_owned();
        let path = artifact.to_owned();
        let size = artifact_size(&path);
        tokio::task::spawn_blocking(move || engine.load(&name, &path))
            .await
            .map_err(|e| RuntimeError::Internal(format!("load task failed: {e}")))??;
        Ok(size)
    }

    async fn unload(&self, internal: &str) -> Result<(), RuntimeError> {
        self.engine.unload(internal)
    }

    fn ready(&self, internal: &str) -> bool {
        self.engine.ready(internal)
    }

    fn metadata(&self, internal: &str) -> Result<pb::ModelMetadataResponse, RuntimeError> {
        self.engine
            .metadata(internal)
            .map(|m| m.to_proto())
            .ok_or_else(|| RuntimeError::NotFound(internal.to_owned()))
    }

    async fn infer(
        &self,
        internal: &str,
        request: &InferRequest,
    ) -> Result<InferResponse, RuntimeError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RuntimeError::Internal("runtime is shutting down".to_owned()))?;
        // CPU-bound: tell tokio so the worker's other tasks (accepting and counting new
        // requests) move to another thread meanwhile; cheaper than a spawn_blocking hop.
        tokio::task::block_in_place(|| self.engine.infer(internal, request))
    }
}
