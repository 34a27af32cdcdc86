//! The routing table: which server replicas can take traffic for each model.
//!
//! The control plane computes it from placement and replica states and publishes a
//! new immutable table whenever it changes; routers only read it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One server replica that has a version of a model available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Server name.
    pub server: String,
    /// Replica ordinal within the server.
    pub replica: u32,
    /// The model version loaded there.
    pub version: u32,
    /// The agent's V2 REST listener.
    pub http: SocketAddr,
    /// The agent's V2 gRPC listener.
    pub grpc: SocketAddr,
    /// The agent's data plane on a Unix-domain socket, V2 REST and gRPC (HTTP/2 with prior
    /// knowledge) on the one socket, when it has one (a replica on the router's machine):
    /// cheaper than TCP on loopback, so the router prefers it for both protocols.
    #[serde(
        default,
        alias = "rest_socket",
        skip_serializing_if = "Option::is_none"
    )]
    pub data_socket: Option<PathBuf>,
}

impl Endpoint {
    /// The name the agent knows the loaded model by: `<model>_<version>`.
    pub fn internal_name(&self, model: &str) -> String {
        internal_model_name(model, self.version)
    }
}

/// `<model>_<version>`, the name a model version has on a server replica (Seldon's convention).
pub fn internal_model_name(model: &str, version: u32) -> String {
    format!("{model}_{version}")
}

/// Where one model can be served.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelRoute {
    /// Replicas that can take traffic now, in a stable order. Empty means the model
    /// exists but nothing can serve it (the router answers 503).
    pub endpoints: Vec<Endpoint>,
}

/// The whole table, keyed by model name. A model absent from the table is unknown
/// (the router answers 404).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoutingTable {
    pub models: BTreeMap<String, ModelRoute>,
}

impl RoutingTable {
    pub fn route(&self, model: &str) -> Option<&ModelRoute> {
        self.models.get(model)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_endpoint_reads_its_socket_under_the_old_name_too_and_writes_the_new_one() {
        let json = r#"{"server":"s","replica":0,"version":1,"http":"127.0.0.1:1",
            "grpc":"127.0.0.1:2","rest_socket":"/run/s-0.sock"}"#;
        let endpoint: Endpoint = serde_json::from_str(json).unwrap();
        assert_eq!(endpoint.data_socket, Some(PathBuf::from("/run/s-0.sock")));
        let written = serde_json::to_value(&endpoint).unwrap();
        assert_eq!(written["data_socket"], "/run/s-0.sock");
        assert!(written.get("rest_socket").is_none());
        let none: Endpoint = serde_json::from_str(
            r#"{"server":"s","replica":0,"version":1,"http":"127.0.0.1:1","grpc":"127.0.0.1:2"}"#,
        )
        .unwrap();
        assert_eq!(none.data_socket, None);
    }
}
