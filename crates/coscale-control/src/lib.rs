//! The control plane.
//!
//! Holds the desired state (Models, Servers, ServerConfigs) in a durable store,
//! places model replicas with `coscale_core::placement`, drives agents over their
//! gRPC stream, publishes the routing table for routers, serves the REST API, and
//! (in local mode) provisions server replicas as child processes.
//!
//! Must not depend on: the router, the agent or the runtime crates (they talk to it
//! over the wire or through the routing-table channel only).

pub mod api;
pub mod auth;
pub mod autoscaling;
pub mod configs;
pub mod custom_metrics;
pub mod hpa_controller;
pub mod keda;
pub mod metrics_store;
pub mod prometheus;
pub mod provision;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
