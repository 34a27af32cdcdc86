//! coscale-runtime: the built-in Open Inference Protocol (V2) server for ONNX models (tract).
//!
//! - [`Engine`]: loaded models by name; `load` / `unload` / `metadata` / `infer`, and
//!   `infer_on_worker`, which runs short inferences inline on the async worker and hands the
//!   worker over for long ones. The agent embeds it directly; the servers below are thin shells
//!   over it, and both run inferences the same way.
//! - [`rest_router`]: the V2 REST API (health, metadata, infer with the binary tensor
//!   extension, repository index/load/unload) as an axum `Router`.
//! - [`grpc_service`]: the V2 gRPC `GRPCInferenceService` (raw in → raw out).
//! - [`serve_http`]: serves an axum `Router` (REST, gRPC made one by [`grpc_app`], or both on
//!   the agent's socket) as `axum::serve` does, each connection's task in a
//!   `coscale_net::Repoll` (hyper wakes the running task for every request body); [`nodelay`]
//!   turns Nagle's algorithm off on a TCP listener's connections.
//! - [`RuntimeError`]: the one error type, with the one mapping to HTTP and gRPC codes.
//!
//! Depends on `coscale-api` for the wire types; knows nothing of the control plane or router.

mod cost;
mod engine;
mod error;
mod grpc;
mod repository;
mod rest;
mod serve;

pub use cost::INLINE_BUDGET;
pub use engine::{
    validate_model_name, Engine, IndexEntry, ModelMetadata, ModelState, TensorMetadata,
    MODEL_VERSION,
};
pub use error::RuntimeError;
pub use grpc::{grpc_service, RuntimeGrpc, MAX_GRPC_MESSAGE_SIZE};
pub use repository::{load_from_repository, repository_index};
pub use rest::rest_router;
pub use serve::{grpc_app, nodelay, serve_http};

/// Server name reported by V2 server metadata.
pub const SERVER_NAME: &str = "coscale-runtime";
/// V2 extensions this runtime implements.
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "model_repository"];
