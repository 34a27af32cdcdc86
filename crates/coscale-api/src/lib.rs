//! Wire contracts shared by coscale's processes.
//!
//! - [`pb::inference`]: the Open Inference Protocol (V2) gRPC service and messages.
//! - [`pb::agent`]: the agent <-> control-plane stream.
//! - [`pb::externalscaler`]: KEDA's external scaler service.
//! - [`v2`]: the V2 REST/JSON request and response bodies.
//! - [`routing`]: the routing table the control plane hands to routers.
//! - [`rest`]: the control plane's REST/JSON DTOs.
//!
//! This crate holds data shapes and their (de)serialisation only: no I/O, no tokio.

pub mod pb {
    /// V2 inference gRPC (`inference.GRPCInferenceService`).
    pub mod inference {
        tonic::include_proto!("inference");
    }
    /// Agent channel (`coscale.agent.v1.AgentService`).
    pub mod agent {
        tonic::include_proto!("coscale.agent.v1");
    }
    /// KEDA's external scaler (`externalscaler.ExternalScaler`).
    #[allow(clippy::doc_lazy_continuation)]
    pub mod externalscaler {
        tonic::include_proto!("externalscaler");
    }
}

pub mod rest;
pub mod routing;
pub mod v2;
