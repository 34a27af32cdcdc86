//! Control-plane REST/JSON DTOs, shared by the control plane (server side) and the CLI
//! (client side). Paths live under `/api/v1`; every call carries
//! `Authorization: Bearer <token>`.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/apply` and `POST /api/v1/delete` body: manifest text as the user wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRequest {
    /// Where the text came from (a file name), used in error messages.
    pub source: String,
    /// Multi-document YAML or JSON.
    pub text: String,
    /// Validate and report what would change without changing anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Directory of the manifest file: relative `file://` storage URIs and relative
    /// paths are resolved against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<String>,
}

/// What happened to one object of an apply or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectResult {
    pub kind: String,
    pub name: String,
    /// `created`, `configured`, `unchanged`, `deleted`, `not found`.
    pub action: String,
    /// Warnings the user should see (e.g. an HPA and native autoscaling on the same Model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub dry_run: bool,
    pub results: Vec<ObjectResult>,
}

/// Every non-2xx answer of the control plane API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    /// One line per problem (e.g. each manifest validation error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// The message of a Model, Server or ServerConfig that a manifest of namespace `owner` defined
/// when a manifest of another namespace names it: coscale's names are cluster-wide, Kubernetes'
/// namespaced. Said by the control plane when it refuses such an apply or delete (409), and by
/// the operator in the status of the object it does not apply.
pub fn name_taken(kind: &str, name: &str, owner: &str) -> String {
    let names = kind.to_lowercase();
    format!(
        "a {kind} named {name} already exists in namespace {owner}; coscale's {names} names are cluster-wide, so this one is not applied (rename it, or delete the other)"
    )
}

/// State of one model replica on one server replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReplicaStatus {
    pub server: String,
    pub replica: u32,
    pub version: u32,
    /// `Loading`, `Available`, `LoadFailed`, `Unloading`, `Draining`.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A recorded event about an object, newest last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub unix_millis: u64,
    /// `Normal` or `Warning`.
    pub kind: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    /// The namespace of the manifest that defined it (Kubernetes: the Model's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub version: u32,
    /// `ModelAvailable`, `ModelProgressing`, `ScheduleFailed`, `ModelFailed`, `ModelScaledDown`,
    /// `ModelTerminating`.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub server: Option<String>,
    pub desired_replicas: u32,
    pub available_replicas: u32,
    pub min_replicas: u32,
    pub max_replicas: Option<u32>,
    /// Requests in flight over the model's replicas (the inference lag), as last pushed.
    #[serde(default)]
    pub in_flight: u32,
    /// Whether native autoscaling drives this model's replicas.
    #[serde(default)]
    pub autoscaled: bool,
    pub storage_uri: String,
    pub requirements: Vec<String>,
    pub memory_bytes: Option<u64>,
    /// Estimate from the artifact's size (used for placement while `memory` is unset and
    /// nothing was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_memory_bytes: Option<u64>,
    /// Largest memory growth a replica measured after loading the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_memory_bytes: Option<u64>,
    pub replicas: Vec<ModelReplicaStatus>,
    pub created_unix_millis: u64,
    #[serde(default)]
    pub events: Vec<EventRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReplicaStatus {
    pub replica: u32,
    /// `Ready`, `Draining`, `Starting`, `Unavailable`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    pub memory_bytes: u64,
    pub used_memory_bytes: u64,
    pub loaded_models: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    /// The namespace of the manifest that defined it (Kubernetes: the Server's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub server_config: String,
    pub capabilities: Vec<String>,
    pub desired_replicas: u32,
    pub ready_replicas: u32,
    pub min_replicas: u32,
    pub max_replicas: Option<u32>,
    /// Distinct model replicas loaded on non-draining replicas (Seldon's `loadedModels`).
    pub loaded_models: u32,
    pub replicas: Vec<ServerReplicaStatus>,
    pub created_unix_millis: u64,
    /// The replica count the Server's replica set (a StatefulSet in Kubernetes) should
    /// have now: equal to `desired_replicas` unless a scale-down waits for the highest
    /// ordinals' models to be available elsewhere. Absent until the provisioner ran.
    #[serde(
        default,
        rename = "scaleTarget",
        skip_serializing_if = "Option::is_none"
    )]
    pub scale_target: Option<u32>,
    #[serde(default)]
    pub events: Vec<EventRecord>,
}

/// `GET /api/v1/serverconfigs[/NAME]`: a ServerConfig, applied or built in (`builtin`,
/// `mlserver`, `triton`; one applied under a built-in name takes the built-in one's place).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfigStatus {
    pub name: String,
    /// The namespace of the manifest that defined it (Kubernetes: the ServerConfig's
    /// namespace); none for a built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Built into coscale rather than applied.
    #[serde(default)]
    pub built_in: bool,
    /// The inference server its replicas run: `builtin`, `mlserver` or `triton`.
    #[serde(default)]
    pub runtime: String,
    /// The Servers that use it, by name.
    #[serde(default)]
    pub servers: Vec<String>,
    /// When it was applied; none for a built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_unix_millis: Option<u64>,
}

/// `DIR/endpoints.json`, written by `coscale up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub api: String,
    pub router_http: String,
    pub router_grpc: String,
    pub metrics: String,
    /// The agent channel (gRPC) server replicas connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The custom metrics API over TLS (`--custom-metrics-addr`), when started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metrics: Option<String>,
    /// The KEDA external scaler (gRPC, `--keda-scaler-addr`), when started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keda: Option<String>,
}
