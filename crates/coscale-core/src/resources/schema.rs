//! JSON schemas of the manifest shapes (feature `schema`), the single source of the CRDs'
//! `openAPIV3Schema` that `coscale-k8s` generates.
//!
//! The raw types of `raw.rs` derive `schemars::JsonSchema`; this module adds the schemas
//! serde cannot describe (quantities and int-or-strings, objects kept as written) and
//! Seldon's replica rules (`GetValidatedScalingSpec`) as CEL `x-kubernetes-validations`,
//! so that a Kubernetes API server rejects what [`validated_scaling`] would reject.
//!
//! [`validated_scaling`]: super::validated_scaling

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::json;

use super::raw::IntOrString;
use crate::quantity::Quantity;

pub use super::raw::{
    RawModelSpec as ModelSpecShape, RawServerConfigSpec as ServerConfigSpecShape,
    RawServerSpec as ServerSpecShape,
};

/// A Kubernetes object coscale keeps exactly as written (pod specs, containers, PVC
/// specs): any object, unknown fields preserved.
pub struct FreeFormObject;

impl JsonSchema for FreeFormObject {
    fn schema_name() -> Cow<'static, str> {
        "FreeFormObject".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// `x-kubernetes-int-or-string`: an integer or a string (what Kubernetes publishes for
/// `resource.Quantity` and `intstr.IntOrString`).
fn int_or_string() -> Schema {
    json_schema!({ "x-kubernetes-int-or-string": true })
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        int_or_string()
    }
}

impl JsonSchema for IntOrString {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        int_or_string()
    }
}

/// One CEL rule of a spec: the expression and the message the API server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelRule {
    pub rule: &'static str,
    /// Names the offending field itself: no `fieldPath`, which Kubernetes accepts only
    /// from 1.28 on (the chart supports 1.27).
    pub message: &'static str,
}

/// Seldon's `GetValidatedScalingSpec` on a Model or Server spec, as coscale applies it
/// (negative values are rejected by `minimum: 0`; `minReplicas`/`maxReplicas` of 0 mean
/// unset; a missing `replicas` is `minReplicas` when that is set, else 1).
pub const REPLICA_RULES: [CelRule; 3] = [
    CelRule {
        rule: "!has(self.minReplicas) || self.minReplicas == 0 || !has(self.replicas) \
               || self.replicas >= self.minReplicas",
        message: "scaling spec is invalid: replicas is less than minReplicas",
    },
    CelRule {
        rule: "!has(self.maxReplicas) || self.maxReplicas == 0 || !has(self.minReplicas) \
               || self.minReplicas <= self.maxReplicas",
        message: "scaling spec is invalid: minReplicas is greater than maxReplicas",
    },
    CelRule {
        rule: "!has(self.maxReplicas) || self.maxReplicas == 0 || (has(self.replicas) \
               ? self.replicas : (has(self.minReplicas) && self.minReplicas > 0 \
               ? self.minReplicas : 1)) <= self.maxReplicas",
        message: "scaling spec is invalid: replicas is greater than maxReplicas",
    },
];

/// The `x-kubernetes-validations` list of some rules.
pub fn validations(rules: &[CelRule]) -> serde_json::Value {
    rules
        .iter()
        .map(|r| json!({ "rule": r.rule, "message": r.message }))
        .collect()
}

/// schemars transform adding [`REPLICA_RULES`] to a Model or Server spec schema.
pub fn replica_rules(schema: &mut Schema) {
    schema.insert(
        "x-kubernetes-validations".to_owned(),
        validations(&REPLICA_RULES),
    );
}
