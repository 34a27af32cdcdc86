//! Raw serde mirrors of the Seldon Core 2 CRDs (`mlops.seldon.io/v1alpha1`).
//!
//! These types only describe the *shape* users write; they reject unknown fields and
//! wrong types. Every rule beyond shape (required values, names, replica bounds) lives
//! in `validate.rs`, which turns them into the typed settings the rest of coscale reads.
//! Required fields are `Option` here on purpose, so that a missing one is reported by
//! validation together with every other error of the document.
//!
//! Some fields exist only to check shape: `apiVersion`/`kind` are dispatched on before,
//! ignored metadata and `status` are dropped, and pod specs, image overrides, retention
//! policies and deployment strategies are kept exactly as written (JSON) by validation.
//!
//! With the `schema` feature the spec types also derive `schemars::JsonSchema`, and are
//! the single source of the CRDs' `openAPIV3Schema` (see `schema.rs` and `coscale-k8s`):
//! the attributes below only add what a Kubernetes API server can check before coscale
//! sees the object (required fields, non-negative counts, Seldon's replica rules as CEL).
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

#[cfg(feature = "schema")]
use super::schema::{replica_rules, FreeFormObject};
use crate::quantity::Quantity;

/// A whole manifest object: `apiVersion`, `kind`, `metadata`, `spec`, `status` (ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawObject<S> {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Option<RawMeta>,
    pub spec: Option<S>,
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// Kubernetes `ObjectMeta`: the fields coscale keeps, plus the ones it accepts and ignores.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    pub generation: Option<i64>,
    // Set by the API server or by other controllers; accepted and ignored.
    #[serde(default)]
    pub uid: Option<IgnoredAny>,
    #[serde(default)]
    pub resource_version: Option<IgnoredAny>,
    #[serde(default)]
    pub creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    pub deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default)]
    pub managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    pub finalizers: Option<IgnoredAny>,
    #[serde(default)]
    pub owner_references: Option<IgnoredAny>,
    #[serde(default)]
    pub generate_name: Option<IgnoredAny>,
    #[serde(default)]
    pub self_link: Option<IgnoredAny>,
}

/// `Model.spec` (`ModelSpec` with the inlined `InferenceArtifactSpec` and `ScalingSpec`).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = replica_rules))]
pub struct RawModelSpec {
    #[cfg_attr(feature = "schema", schemars(required, length(min = 1)))]
    pub storage_uri: Option<String>,
    pub model_type: Option<String>,
    pub artifact_version: Option<u32>,
    pub schema_uri: Option<String>,
    pub secret_name: Option<String>,
    pub requirements: Option<Vec<String>>,
    pub memory: Option<Quantity>,
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub replicas: Option<i32>,
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub min_replicas: Option<i32>,
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub max_replicas: Option<i32>,
    pub server: Option<String>,
    pub preloaded: Option<bool>,
    pub dedicated: Option<bool>,
    pub logger: Option<RawLogger>,
    pub explainer: Option<RawExplainer>,
    pub llm: Option<RawLlm>,
    pub parameters: Option<Vec<RawParameter>>,
    pub dataflow: Option<RawDataflow>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLogger {
    pub percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawExplainer {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub model_ref: Option<String>,
    pub pipeline_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLlm {
    pub model_ref: Option<String>,
    pub pipeline_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawParameter {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDataflow {
    pub clean_topics_on_delete: Option<bool>,
}

/// `Server.spec`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = replica_rules))]
pub struct RawServerSpec {
    #[cfg_attr(feature = "schema", schemars(required, length(min = 1)))]
    pub server_config: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub extra_capabilities: Option<Vec<String>>,
    pub image_overrides: Option<RawImageOverrides>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<FreeFormObject>"))]
    pub pod_spec: Option<serde_json::Map<String, Value>>,
    pub stateful_set_persistent_volume_claim_retention_policy: Option<RawPvcRetentionPolicy>,
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub replicas: Option<i32>,
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub min_replicas: Option<i32>,
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub max_replicas: Option<i32>,
    pub deployment_strategy: Option<RawDeploymentStrategy>,
    pub disable_auto_update: Option<bool>,
}

/// `imageOverrides{agent, rclone}`: k8s Containers, kept as JSON.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawImageOverrides {
    #[cfg_attr(feature = "schema", schemars(with = "Option<FreeFormObject>"))]
    pub agent: Option<serde_json::Map<String, Value>>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<FreeFormObject>"))]
    pub rclone: Option<serde_json::Map<String, Value>>,
}

/// appsv1 `StatefulSetPersistentVolumeClaimRetentionPolicy`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPvcRetentionPolicy {
    pub when_deleted: Option<String>,
    pub when_scaled: Option<String>,
}

/// appsv1 `DeploymentStrategy`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDeploymentStrategy {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub rolling_update: Option<RawRollingUpdate>,
}

/// appsv1 `RollingUpdateDeployment` (`maxUnavailable`/`maxSurge` are int-or-string).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRollingUpdate {
    pub max_unavailable: Option<IntOrString>,
    pub max_surge: Option<IntOrString>,
}

/// Kubernetes `IntOrString` (schema: `x-kubernetes-int-or-string`, in `schema.rs`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

/// `ServerConfig.spec`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawServerConfigSpec {
    #[cfg_attr(
        feature = "schema",
        schemars(required, with = "Option<FreeFormObject>")
    )]
    pub pod_spec: Option<serde_json::Map<String, Value>>,
    pub volume_claim_templates: Option<Vec<RawVolumeClaimTemplate>>,
}

/// `volumeClaimTemplates[]`: `{name, spec: PersistentVolumeClaimSpec}`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawVolumeClaimTemplate {
    pub name: Option<String>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<FreeFormObject>"))]
    pub spec: Option<serde_json::Map<String, Value>>,
}
