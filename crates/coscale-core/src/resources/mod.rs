//! Seldon Core 2 manifests (`mlops.seldon.io/v1alpha1` `Model`, `Server`, `ServerConfig`):
//! parse, validate, and hand out typed settings.
//!
//! The flow is raw → validate → typed (house style): [`parse_manifests`] reads
//! multi-document YAML or JSON into `serde_json::Value`s, deserializes each into the raw
//! CRD mirrors of `raw.rs` (unknown fields and wrong types are errors with a field path
//! and, for typos, the nearest known field), then `validate.rs` applies Seldon's rules
//! (`GetValidatedScalingSpec`, names, required fields) and coscale's own (see
//! `shared/design/system.md`, "Where we differ"). Code elsewhere reads only the typed
//! [`Resource`]s. Every error of every document is collected; a file with any bad
//! document yields no resources at all.
//!
//! Pure: no I/O. The caller reads the file and passes its name as `source`.

mod documents;
mod raw;
#[cfg(feature = "schema")]
pub mod schema;
mod suggest;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ModelName, ServerName};

pub use documents::parse_manifests;
pub use validate::{dns1123_label_is_valid, model_name_is_valid, validated_scaling};

/// The only `apiVersion` coscale reads for Seldon kinds.
pub const SELDON_API_VERSION: &str = "mlops.seldon.io/v1alpha1";

/// A validated manifest object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    Model(Model),
    Server(Server),
    ServerConfig(ServerConfig),
    /// `autoscaling/v2` HorizontalPodAutoscaler targeting a Model or a Server.
    Hpa(Box<Hpa>),
}

/// A validated HorizontalPodAutoscaler (API defaults applied) and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hpa {
    pub meta: Meta,
    pub hpa: crate::hpa::HorizontalPodAutoscaler,
}

impl Resource {
    /// The manifest `kind`: `"Model"`, `"Server"`, `"ServerConfig"` or
    /// `"HorizontalPodAutoscaler"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Model(_) => "Model",
            Resource::Server(_) => "Server",
            Resource::ServerConfig(_) => "ServerConfig",
            Resource::Hpa(_) => "HorizontalPodAutoscaler",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.meta().name
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Resource::Model(m) => &m.meta,
            Resource::Server(s) => &s.meta,
            Resource::ServerConfig(c) => &c.meta,
            Resource::Hpa(h) => &h.meta,
        }
    }
}

/// The parts of Kubernetes `ObjectMeta` coscale keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub generation: Option<i64>,
}

/// Validated replica counts of a Model or a Server (`GetValidatedScalingSpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaling {
    /// Desired replicas; 0 means scaled to zero.
    pub replicas: u32,
    /// `minReplicas`; 0 means unset.
    pub min_replicas: u32,
    /// `maxReplicas`; `None` means unset (unbounded).
    pub max_replicas: Option<u32>,
}

impl Default for Scaling {
    /// Nothing set: one replica, no autoscaling.
    fn default() -> Self {
        Scaling {
            replicas: 1,
            min_replicas: 0,
            max_replicas: None,
        }
    }
}

impl Scaling {
    /// coscale autoscales this object iff it sets `minReplicas` or `maxReplicas`
    /// (system.md, "Where we differ" #1 and #2); otherwise `replicas` is authoritative.
    pub fn autoscaling_enabled(&self) -> bool {
        self.min_replicas > 0 || self.max_replicas.is_some()
    }

    /// `maxReplicas`, or `u32::MAX` when unset (what Seldon's operator sends).
    pub fn max_or_unbounded(&self) -> u32 {
        self.max_replicas.unwrap_or(u32::MAX)
    }
}

/// A validated `Model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub meta: Meta,
    pub name: ModelName,
    /// Everything whose change makes a new model version.
    pub spec: ModelSpec,
    pub scaling: Scaling,
    /// `logger` is present (`DeploymentSpec.logPayloads`): changes in place, no new version.
    pub log_payloads: bool,
    /// `dataflow.cleanTopicsOnDelete` (Kafka; kept for round-trips, unused by coscale).
    pub clean_topics_on_delete: bool,
}

/// The version-defining part of a Model: `a.spec != b.spec` means "this is a new version".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub storage_uri: String,
    /// Trimmed `requirements` with `modelType` appended, duplicates removed (order kept).
    pub requirements: Vec<String>,
    /// `memory` in bytes (rounded up); `None` = unset = no memory constraint.
    pub memory_bytes: Option<u64>,
    /// Pin to this Server.
    pub server: Option<ServerName>,
    pub artifact_version: Option<u32>,
    pub schema_uri: Option<String>,
    pub secret_name: Option<String>,
    /// `parameters[{name, value}]` in manifest order.
    pub parameters: Vec<(String, String)>,
    /// Unused by Seldon's scheduler; kept so manifests round-trip.
    pub preloaded: bool,
    /// Unused by Seldon's scheduler; kept so manifests round-trip.
    pub dedicated: bool,
}

/// A validated `Server`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub meta: Meta,
    pub name: ServerName,
    /// Name of the `ServerConfig` this Server's replicas are built from.
    pub server_config: String,
    /// Replaces the ServerConfig's capabilities when non-empty (trimmed, deduplicated).
    pub capabilities: Vec<String>,
    /// Deprecated: appended to the ServerConfig's capabilities when `capabilities` is empty.
    pub extra_capabilities: Vec<String>,
    /// `imageOverrides` as written (`{agent, rclone}` Containers).
    pub image_overrides: Option<serde_json::Value>,
    /// `podSpec` as written, merged onto the ServerConfig's.
    pub pod_spec: Option<serde_json::Value>,
    /// `statefulSetPersistentVolumeClaimRetentionPolicy` as written.
    pub pvc_retention_policy: Option<serde_json::Value>,
    pub scaling: Scaling,
    /// `deploymentStrategy` as written.
    pub deployment_strategy: Option<serde_json::Value>,
    /// ServerConfig changes do not roll this Server.
    pub disable_auto_update: bool,
}

/// A validated `ServerConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    pub meta: Meta,
    pub name: String,
    /// The full Kubernetes `PodSpec`, as written.
    pub pod_spec: serde_json::Value,
    /// `volumeClaimTemplates[{name, spec}]`, as written.
    pub volume_claim_templates: Vec<serde_json::Value>,
}

/// One problem in one manifest document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestError {
    /// The file (or other origin) the text came from.
    pub source: String,
    /// 1-based document number in the file (JSON arrays: 1-based element number).
    pub document: usize,
    /// `Model "iris"` when the kind and name are known, or just the kind.
    pub object: Option<String>,
    /// Field path such as `spec.requirements[1]`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Every problem found in one call of [`parse_manifests`] (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// Why a replica spec is invalid (Seldon's `ErrScalingSpec`, plus negatives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScalingError {
    #[error("must not be negative, got {value}")]
    Negative { field: &'static str, value: i32 },
    #[error("scaling spec is invalid: replicas {replicas} is less than minReplicas {min}")]
    BelowMin { replicas: u32, min: u32 },
    #[error("scaling spec is invalid: minReplicas {min} is greater than maxReplicas {max}")]
    MinAboveMax { min: u32, max: u32 },
    #[error("scaling spec is invalid: replicas {replicas} is greater than maxReplicas {max}")]
    AboveMax { replicas: u32, max: u32 },
}

impl ScalingError {
    /// The spec field the error is about: `replicas`, `minReplicas` or `maxReplicas`.
    pub fn field(&self) -> &'static str {
        match self {
            ScalingError::Negative { field, .. } => field,
            ScalingError::BelowMin { .. } | ScalingError::AboveMax { .. } => "replicas",
            ScalingError::MinAboveMax { .. } => "minReplicas",
        }
    }
}
