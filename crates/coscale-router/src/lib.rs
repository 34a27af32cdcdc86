//! coscale-router: the single inference endpoint (data-plane ingress).
//!
//! Clients speak Open Inference Protocol V2 over REST (an HTTP/1.1 server of the router's own)
//! or gRPC (an HTTP/2 server of its own on the h2 crate), one task per client connection for
//! both (see [`serve`]);
//! the router finds the model by name (URL path / `model_name`, or the `seldon-model` header /
//! metadata, which wins like in Seldon Core 2), picks a replica from the control plane's routing
//! table with least outstanding requests first ([`RouterState`]), and forwards the request bytes
//! adding `seldon-model` and `seldon-internal-model: <model>_<version>`, over HTTP/1.1 for both
//! (a gRPC call's status then comes back in chunked trailers). A replica that fails
//! before answering, or in the middle of its answer (the router forwards answers only once it
//! has them whole), is retried once on another replica.
//!
//! Structure: handle ([`RouterHandle`]) + tasks ([`serve`]) + synchronous state ([`RouterState`]).
//! Depends on coscale-api for wire types only; knows nothing of the control plane's internals.

mod config;
mod error;
mod grpc;
mod h1;
mod handle;
mod metrics;
mod name;
mod pool;
mod rest;
mod serve;
mod state;
mod upstream;

pub use config::RouterConfig;
pub use error::RouteError;
pub use handle::RouterHandle;
pub use name::{decode_model_segment, validate_model_name};
pub use serve::{serve, serve_dedicated, ServeError};
pub use state::{Picked, Replica, RouterState};

/// Header / gRPC metadata key naming the model to route to (Seldon's).
pub const SELDON_MODEL: &str = "seldon-model";
/// Header / gRPC metadata key naming the loaded model version on the replica: `<model>_<version>`.
pub const SELDON_INTERNAL_MODEL: &str = "seldon-internal-model";
