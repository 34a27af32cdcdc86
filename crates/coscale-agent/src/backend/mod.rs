//! Runtime backends: what actually runs the models of a server replica.
//!
//! The agent talks to every inference server through [`Backend`]: the built-in
//! runtime runs in process ([`builtin`]); MLServer runs as a child process driven
//! over its V2 repository and inference APIs ([`mlserver`]). Models are addressed by
//! their internal name `<model>_<version>`.

pub mod builtin;
pub mod mlserver;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use coscale_api::pb::inference as pb;
use coscale_api::v2::{InferRequest, InferResponse};
use coscale_runtime::RuntimeError;
use tokio::sync::broadcast;

pub use builtin::Builtin;
pub use mlserver::{MlServer, MlServerSettings};

use crate::AgentConfig;

/// Something a backend did on its own, which the control plane must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// The inference server process died: these models (internal names) cannot be
    /// served until it is restarted and has reloaded them.
    Lost { models: Vec<String>, reason: String },
    /// The restarted server has reloaded these models.
    Restored { models: Vec<String> },
}

/// A model runtime a server replica runs.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `builtin`, `mlserver`, ...
    fn kind(&self) -> &'static str;
    /// Why this backend cannot serve at all, if it cannot.
    fn unavailable_reason(&self) -> Option<String>;
    /// Loads an artifact under `internal`; returns the bytes the model takes (measured
    /// when the backend can measure it, else estimated from the artifact size).
    async fn load(&self, internal: &str, artifact: &Path) -> Result<u64, RuntimeError>;
    async fn unload(&self, internal: &str) -> Result<(), RuntimeError>;
    fn ready(&self, internal: &str) -> bool;
    fn metadata(&self, internal: &str) -> Result<pb::ModelMetadataResponse, RuntimeError>;
    async fn infer(
        &self,
        internal: &str,
        request: &InferRequest,
    ) -> Result<InferResponse, RuntimeError>;
    /// Whether the runtime serves V2 REST itself (MLServer), so that a JSON infer request
    /// can go to [`Backend::infer_json`] unchanged, as Seldon's agent proxies it.
    fn proxies_json(&self) -> bool {
        false
    }
    /// Forwards a JSON infer request body unchanged and returns the runtime's JSON answer
    /// (only called when [`Backend::proxies_json`]; others decode and call
    /// [`Backend::infer`]).
    async fn infer_json(&self, internal: &str, _body: Bytes) -> Result<Bytes, RuntimeError> {
        Err(RuntimeError::Internal(format!(
            "the runtime of {internal} does not take JSON requests as they are"
        )))
    }
    /// Bytes a loaded model was found to take (None = not known).
    fn memory_of(&self, _internal: &str) -> Option<u64> {
        None
    }
    /// Events the backend raises on its own (None: it never does).
    fn subscribe(&self) -> Option<broadcast::Receiver<BackendEvent>> {
        None
    }
}

/// A runtime that cannot run here (`triton`, or `mlserver` when MLServer is not
/// installed): the replica registers and says why it cannot serve, so models go
/// `ScheduleFailed` with that reason.
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

/// The built-in runtime with the replica's inference parallelism (default: one per core) and
/// inline budget.
fn builtin(config: &AgentConfig) -> Builtin {
    let parallelism = config.inference_parallelism.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let engine = coscale_runtime::Engine::with_inline_budget(config.inline_budget);
    Builtin::new(parallelism, engine)
}

/// Picks the backend for the agent's runtime (`builtin`, `mlserver`, `triton`).
/// Must be called inside a tokio runtime: the MLServer backend starts its server.
pub fn for_config(config: &AgentConfig) -> Arc<dyn Backend> {
    match config.runtime.as_str() {
        "builtin" => Arc::new(builtin(config)),
        "mlserver" => match mlserver_settings(config).and_then(|s| {
            MlServer::start(s).map_err(|e| e.to_string())
        }) {
            Ok(backend) => Arc::new(backend),
            Err(reason) => Arc::new(Unavailable {
                kind: "mlserver",
                reason,
            }),
        },
        "triton" => Arc::new(Unavailable {
            kind: "triton",
            reason: "the triton runtime is not available in this coscale build yet; use serverConfig: builtin with ONNX models or serverConfig: mlserver".to_owned(),
        }),
        other => Arc::new(Unavailable {
            kind: "unknown",
            reason: format!("unknown runtime {other:?} (known: builtin, mlserver, triton)"),
        }),
    }
}

/// How this replica runs MLServer: attached to `mlserver_url` (with `models_dir`), or
/// as a child process of the `mlserver` executable found by [`mlserver::find_command`].
fn mlserver_settings(config: &AgentConfig) -> Result<MlServerSettings, String> {
    let (server, replica, timeout) = (&config.server, config.replica, config.load_timeout);
    match (&config.mlserver_url, &config.models_dir) {
        (Some(url), Some(dir)) => {
            MlServerSettings::attached(url, dir.clone(), server, replica, timeout)
                .map_err(|e| e.to_string())
        }
        (Some(url), None) => Err(format!(
            "the MLServer at {url} (COSCALE_MLSERVER_URL / --mlserver-url) needs the model repository folder it serves, shared with the agent: set COSCALE_MODELS_DIR or --models-dir"
        )),
        (None, dir) => {
            let command = mlserver::find_command(config.mlserver_command.as_deref())?;
            Ok(MlServerSettings::new(command, server, replica, timeout).in_models_dir(dir.clone()))
        }
    }
}

/// Size of a file, or of all files under a folder (bytes).
pub(crate) fn artifact_size(path: &Path) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(runtime: &str) -> AgentConfig {
        let mut c = AgentConfig::new(String::new(), String::new(), "s".to_owned(), 0);
        c.runtime = runtime.to_owned();
        c
    }

    #[test]
    fn the_builtin_runtime_runs_as_many_inferences_at_a_time_as_configured() {
        let mut c = config("builtin");
        assert_eq!(
            builtin(&c).parallelism(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        c.inference_parallelism = Some(3);
        assert_eq!(builtin(&c).parallelism(), 3);
        c.inference_parallelism = Some(0);
        assert_eq!(builtin(&c).parallelism(), 1, "at least one");
    }

    #[test]
    fn an_mlserver_replica_without_mlserver_says_how_to_install_it() {
        let mut c = config("mlserver");
        c.mlserver_command = Some("/nonexistent/bin/mlserver".into());
        let b = for_config(&c);
        assert_eq!(b.kind(), "mlserver");
        let reason = b.unavailable_reason().unwrap_or_default();
        assert!(reason.contains("/nonexistent/bin/mlserver"), "{reason}");
        assert!(reason.contains("install-mlserver.sh"), "{reason}");
    }

    #[test]
    fn an_mlserver_url_needs_the_shared_models_dir_and_a_valid_url() {
        let mut c = config("mlserver");
        c.mlserver_url = Some("http://127.0.0.1:8080".to_owned());
        let reason = for_config(&c).unavailable_reason().unwrap_or_default();
        assert!(reason.contains("COSCALE_MODELS_DIR"), "{reason}");
        c.mlserver_url = Some("127.0.0.1:8080".to_owned());
        c.models_dir = Some(std::env::temp_dir());
        let reason = for_config(&c).unavailable_reason().unwrap_or_default();
        assert!(reason.contains("\"127.0.0.1:8080\""), "{reason}");
    }

    #[test]
    fn triton_and_unknown_runtimes_are_unavailable_with_a_reason() {
        assert!(for_config(&config("triton"))
            .unavailable_reason()
            .is_some_and(|r| r.contains("triton")));
        assert!(for_config(&config("nope"))
            .unavailable_reason()
            .is_some_and(|r| r.contains("unknown runtime")));
        assert!(for_config(&config("builtin"))
            .unavailable_reason()
            .is_none());
    }
}
