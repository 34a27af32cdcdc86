//! Runtime backends: what actually runs the models of a server replica.
//!
//! The agent talks to every inference server through [`Backend`]: the built-in
//! runtime runs in process; remote V2 servers (MLServer, Triton) fit the same slot.
//! Models are addressed by their internal name `<model>_<version>`.

use std::path::Path;
use std::sync::Arc;

use coscale_api::pb::inference as pb;
use coscale_api::v2::{InferRequest, InferResponse};
use coscale_runtime::{Engine, RuntimeError};

/// A model runtime a server replica runs.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `builtin`, `mlserver`, ...
    fn kind(&self) -> &'static str;
    /// Why this backend cannot serve at all, if it cannot.
    fn unavailable_reason(&self) -> Option<String>;
    /// Loads an artifact under `internal`; returns the bytes the model is estimated to take.
    async fn load(&self, internal: &str, artifact: &Path) -> Result<u64, RuntimeError>;
    async fn unload(&self, internal: &str) -> Result<(), RuntimeError>;
    fn ready(&self, internal: &str) -> bool;
    fn metadata(&self, internal: &str) -> Result<pb::ModelMetadataResponse, RuntimeError>;
    async fn infer(
        &self,
        internal: &str,
        request: &InferRequest,
    ) -> Result<InferResponse, RuntimeError>;
}

/// coscale's built-in ONNX runtime, in process.
pub struct Builtin {
    engine: Arc<Engine>,
}

impl Builtin {
    pub fn new() -> Self {
        Self {
            engine: Arc::new(Engine::new()),
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
        // Small models run in microseconds: inline is cheaper than a thread hop.
        self.engine.infer(internal, request)
    }
}

/// A runtime this build cannot run yet (`mlserver`, `triton`): the replica registers
/// and says why it cannot serve, so models go `ScheduleFailed` with that reason.
pub struct Unavailable {
    pub kind: &'static str,
    pub reason: String,
}

#[async_trait::async_trait]
impl Backend for Unavailable {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn unavailable_reason(&self) -> Option<String> {
        Some(self.reason.clone())
    }
    async fn load(&self, _internal: &str, _artifact: &Path) -> Result<u64, RuntimeError> {
        Err(RuntimeError::Internal(self.reason.clone()))
    }
    async fn unload(&self, internal: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::NotFound(internal.to_owned()))
    }
    fn ready(&self, _internal: &str) -> bool {
        false
    }
    fn metadata(&self, internal: &str) -> Result<pb::ModelMetadataResponse, RuntimeError> {
        Err(RuntimeError::NotFound(internal.to_owned()))
    }
    async fn infer(
        &self,
        internal: &str,
        _request: &InferRequest,
    ) -> Result<InferResponse, RuntimeError> {
        Err(RuntimeError::NotFound(internal.to_owned()))
    }
}

/// Picks the backend for a runtime name.
pub fn for_runtime(runtime: &str) -> Arc<dyn Backend> {
    match runtime {
        "builtin" => Arc::new(Builtin::new()),
        "mlserver" => Arc::new(Unavailable {
            kind: "mlserver",
            reason: "the mlserver runtime is not available in this coscale build yet; use serverConfig: builtin with ONNX models".to_owned(),
        }),
        "triton" => Arc::new(Unavailable {
            kind: "triton",
            reason: "the triton runtime is not available in this coscale build yet; use serverConfig: builtin with ONNX models".to_owned(),
        }),
        other => Arc::new(Unavailable {
            kind: "unknown",
            reason: format!("unknown runtime {other:?} (known: builtin, mlserver, triton)"),
        }),
    }
}

/// Size of a file, or of all files under a folder (bytes).
fn artifact_size(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| artifact_size(&e.path()))
                    .fold(0u64, u64::saturating_add)
            })
            .unwrap_or(0),
        _ => 0,
    }
}
