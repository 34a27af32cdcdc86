//! coscale's pure domain.
//!
//! Resources (Seldon Core 2 `Model`, `Server`, `ServerConfig`) and their validation,
//! placement of model replicas on server replicas, autoscaling policies and the
//! Kubernetes HPA algorithm. Everything here is a function of its inputs and of the
//! time passed in: no tokio, no I/O, no clocks, no global state. This is what lets
//! the simulator and the live control plane run the very same code.

pub mod autoscale;
pub mod hpa;
pub mod ids;
pub mod placement;
pub mod quantity;
pub mod resources;
