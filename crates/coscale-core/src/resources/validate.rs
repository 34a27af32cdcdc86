//! Raw CRD mirrors → typed settings: required fields, names, replica bounds
//! (`GetValidatedScalingSpec`), requirement lists, and what coscale does not support yet.

use serde_json::Value;

use super::documents::FieldError;
use super::raw::{RawMeta, RawModelSpec, RawObject, RawServerConfigSpec, RawServerSpec};
use super::{Meta, Model, ModelSpec, Scaling, ScalingError, Server, ServerConfig};
use crate::ids::{ModelName, ServerName};
use crate::quantity::Quantity;

/// Model names: letters, digits, `-`, `_`, `.`; 1 to 253 characters; not `.` or `..`.
pub fn model_name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A DNS-1123 label (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63 characters): the rule
/// for Server and ServerConfig names and namespaces.
pub fn dns1123_label_is_valid(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

const DNS1123_RULE: &str = "it must be a DNS-1123 label: lowercase letters, digits and '-', \
                            starting and ending with a letter or digit, at most 63 characters";

/// Seldon's `GetValidatedScalingSpec` (used for Models and Servers), except that negative
/// values are rejected instead of being ignored.
///
/// `replicas` defaults to `minReplicas` when that is set, else 1; `minReplicas` ≤ 0 and
/// `maxReplicas` ≤ 0 mean unset; then `minReplicas ≤ replicas ≤ maxReplicas` and
/// `minReplicas ≤ maxReplicas` must hold.
pub fn validated_scaling(
    replicas: Option<i32>,
    min_replicas: Option<i32>,
    max_replicas: Option<i32>,
) -> Result<Scaling, ScalingError> {
    for (field, value) in [
        ("replicas", replicas),
        ("minReplicas", min_replicas),
        ("maxReplicas", max_replicas),
    ] {
        if let Some(value) = value.filter(|v| *v < 0) {
            return Err(ScalingError::Negative { field, value });
        }
    }
    let min = min_replicas.map_or(0, i32::unsigned_abs);
    let max = max_replicas.filter(|m| *m > 0).map(i32::unsigned_abs);
    let replicas = match replicas {
        Some(r) => r.unsigned_abs(),
        None if min > 0 => min,
        None => 1,
    };
    if min > 0 && replicas < min {
        return Err(ScalingError::BelowMin { replicas, min });
    }
    if let Some(max) = max {
        if min > max {
            return Err(ScalingError::MinAboveMax { min, max });
        }
        if replicas > max {
            return Err(ScalingError::AboveMax { replicas, max });
        }
    }
    Ok(Scaling {
        replicas,
        min_replicas: min,
        max_replicas: max,
    })
}

/// Problems found while validating one object.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    fn finish<T>(self, typed: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(typed)
        } else {
            Err(self.0)
        }
    }
}

enum NameRule {
    Model,
    Dns1123Label(&'static str),
}

fn meta(raw: Option<RawMeta>, rule: NameRule, p: &mut Problems) -> Meta {
    let raw = raw.unwrap_or_default();
    let name = raw.name.unwrap_or_default();
    if name.is_empty() {
        p.push("metadata.name", "name is required");
    } else {
        match rule {
            NameRule::Model if !model_name_is_valid(&name) => p.push(
                "metadata.name",
                format!(
                    "{name:?} is not a valid Model name: use letters, digits, '-', '_' and '.', \
                     at most 253 characters, not \".\" or \"..\""
                ),
            ),
            NameRule::Dns1123Label(kind) if !dns1123_label_is_valid(&name) => p.push(
                "metadata.name",
                format!("{name:?} is not a valid {kind} name: {DNS1123_RULE}"),
            ),
            _ => {}
        }
    }
    if let Some(ns) = raw.namespace.as_deref() {
        if !dns1123_label_is_valid(ns) {
            p.push(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace: {DNS1123_RULE}"),
            );
        }
    }
    Meta {
        name,
        namespace: raw.namespace,
        labels: raw.labels.unwrap_or_default(),
        annotations: raw.annotations.unwrap_or_default(),
        generation: raw.generation,
    }
}

/// Checks `metadata` and that `spec` is present; `needs` says what a spec must hold.
fn meta_and_spec<S>(
    raw: RawObject<S>,
    rule: NameRule,
    needs: &str,
) -> Result<(Problems, Meta, S), Vec<FieldError>> {
    let mut p = Problems::default();
    let meta = meta(raw.metadata, rule, &mut p);
    match raw.spec {
        Some(spec) => Ok((p, meta, spec)),
        None => {
            p.push("spec", format!("spec is required (at least {needs})"));
            Err(p.0)
        }
    }
}

fn scaling(replicas: Option<i32>, min: Option<i32>, max: Option<i32>, p: &mut Problems) -> Scaling {
    validated_scaling(replicas, min, max).unwrap_or_else(|e| {
        p.push(format!("spec.{}", e.field()), e.to_string());
        Scaling::default()
    })
}

/// Trims each entry, rejects empty ones, drops duplicates keeping the first.
fn string_set(path: &str, raw: Option<Vec<String>>, p: &mut Problems) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, entry) in raw.unwrap_or_default().iter().enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            p.push(format!("{path}[{i}]"), "must not be empty");
        } else if !out.iter().any(|e| e == entry) {
            out.push(entry.to_owned());
        }
    }
    out
}

/// The value exactly as written at `pointer`, unless absent or null.
fn as_written(doc: &Value, pointer: &str) -> Option<Value> {
    doc.pointer(pointer).filter(|v| !v.is_null()).cloned()
}

/// Bytes of a `memory` quantity, rounded up; must be ≥ 0 and fit an int64 like upstream.
fn memory_bytes(q: Quantity, p: &mut Problems) -> Option<u64> {
    const NANOS_PER_UNIT: i128 = 1_000_000_000;
    if q.nanos() < 0 {
        p.push("spec.memory", format!("must not be negative, got {q}"));
        None
    } else if q.nanos() > i128::from(i64::MAX) * NANOS_PER_UNIT {
        p.push(
            "spec.memory",
            format!("{q} is too large (at most {} bytes)", i64::MAX),
        );
        None
    } else {
        Some(q.as_bytes())
    }
}

pub(crate) fn model(_doc: &Value, raw: RawObject<RawModelSpec>) -> Result<Model, Vec<FieldError>> {
    let (mut p, meta, spec) = meta_and_spec(raw, NameRule::Model, "storageUri")?;
    let storage_uri = spec.storage_uri.unwrap_or_default().trim().to_owned();
    if storage_uri.is_empty() {
        p.push(
            "spec.storageUri",
            "storageUri is required and must not be empty (where the artifact is, \
             e.g. gs://bucket/model or /mnt/models/iris)",
        );
    }
    if spec.explainer.is_some() {
        p.push(
            "spec.explainer",
            "explainer models are not supported by coscale yet",
        );
    }
    if spec.llm.is_some() {
        p.push("spec.llm", "llm models are not supported by coscale yet");
    }
    let mut requirements = string_set("spec.requirements", spec.requirements, &mut p);
    if let Some(model_type) = spec.model_type.as_deref().map(str::trim) {
        if model_type.is_empty() {
            p.push("spec.modelType", "must not be empty");
        } else if !requirements.iter().any(|r| r == model_type) {
            requirements.push(model_type.to_owned());
        }
    }
    let memory_bytes = spec.memory.and_then(|q| memory_bytes(q, &mut p));
    let server = spec.server.and_then(|s| {
        if dns1123_label_is_valid(&s) {
            Some(ServerName(s))
        } else {
            p.push(
                "spec.server",
                format!("{s:?} is not a valid Server name: {DNS1123_RULE}"),
            );
            None
        }
    });
    let mut parameters = Vec::new();
    for (i, param) in spec.parameters.unwrap_or_default().into_iter().enumerate() {
        match param.name.filter(|n| !n.trim().is_empty()) {
            Some(name) => parameters.push((name, param.value.unwrap_or_default())),
            None => p.push(
                format!("spec.parameters[{i}].name"),
                "a parameter needs a name",
            ),
        }
    }
    let scaling = scaling(spec.replicas, spec.min_replicas, spec.max_replicas, &mut p);
    let model = Model {
        name: ModelName(meta.name.clone()),
        meta,
        spec: ModelSpec {
            storage_uri,
            requirements,
            memory_bytes,
            server,
            artifact_version: spec.artifact_version,
            schema_uri: spec.schema_uri,
            secret_name: spec.secret_name,
            parameters,
            preloaded: spec.preloaded.unwrap_or(false),
            dedicated: spec.dedicated.unwrap_or(false),
        },
        scaling,
        log_payloads: spec.logger.is_some(),
        clean_topics_on_delete: spec
            .dataflow
            .and_then(|d| d.clean_topics_on_delete)
            .unwrap_or(false),
    };
    p.finish(model)
}

pub(crate) fn server(
    doc: &Value,
    raw: RawObject<RawServerSpec>,
) -> Result<Server, Vec<FieldError>> {
    let (mut p, meta, spec) = meta_and_spec(raw, NameRule::Dns1123Label("Server"), "serverConfig")?;
    let server_config = spec.server_config.unwrap_or_default().trim().to_owned();
    if server_config.is_empty() {
        p.push(
            "spec.serverConfig",
            "serverConfig is required: the name of the ServerConfig this Server's replicas \
             are built from (e.g. mlserver or triton)",
        );
    } else if !dns1123_label_is_valid(&server_config) {
        p.push(
            "spec.serverConfig",
            format!("{server_config:?} is not a valid ServerConfig name: {DNS1123_RULE}"),
        );
    }
    let capabilities = string_set("spec.capabilities", spec.capabilities, &mut p);
    let extra_capabilities = string_set("spec.extraCapabilities", spec.extra_capabilities, &mut p);
    let scaling = scaling(spec.replicas, spec.min_replicas, spec.max_replicas, &mut p);
    let server = Server {
        name: ServerName(meta.name.clone()),
        meta,
        server_config,
        capabilities,
        extra_capabilities,
        image_overrides: spec
            .image_overrides
            .and_then(|_| as_written(doc, "/spec/imageOverrides")),
        pod_spec: spec.pod_spec.and_then(|_| as_written(doc, "/spec/podSpec")),
        pvc_retention_policy: spec
            .stateful_set_persistent_volume_claim_retention_policy
            .and_then(|_| as_written(doc, "/spec/statefulSetPersistentVolumeClaimRetentionPolicy")),
        scaling,
        deployment_strategy: spec
            .deployment_strategy
            .and_then(|_| as_written(doc, "/spec/deploymentStrategy")),
        disable_auto_update: spec.disable_auto_update.unwrap_or(false),
    };
    p.finish(server)
}

pub(crate) fn server_config(
    doc: &Value,
    raw: RawObject<RawServerConfigSpec>,
) -> Result<ServerConfig, Vec<FieldError>> {
    let (mut p, meta, spec) =
        meta_and_spec(raw, NameRule::Dns1123Label("ServerConfig"), "podSpec")?;
    let pod_spec = match spec.pod_spec.and_then(|_| as_written(doc, "/spec/podSpec")) {
        Some(pod_spec) => pod_spec,
        None => {
            p.push(
                "spec.podSpec",
                "podSpec is required: the Kubernetes PodSpec of this ServerConfig's replicas",
            );
            Value::Null
        }
    };
    let templates = spec.volume_claim_templates.unwrap_or_default();
    for (i, template) in templates.iter().enumerate() {
        if template.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            p.push(
                format!("spec.volumeClaimTemplates[{i}].name"),
                "a volume claim template needs a name",
            );
        }
    }
    let volume_claim_templates = match as_written(doc, "/spec/volumeClaimTemplates") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let config = ServerConfig {
        name: meta.name.clone(),
        meta,
        pod_spec,
        volume_claim_templates,
    };
    p.finish(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ok(r: Option<i32>, min: Option<i32>, max: Option<i32>) -> Scaling {
        validated_scaling(r, min, max).unwrap_or_else(|e| panic!("{r:?},{min:?},{max:?}: {e}"))
    }

    fn scaling_of(replicas: u32, min_replicas: u32, max_replicas: Option<u32>) -> Scaling {
        Scaling {
            replicas,
            min_replicas,
            max_replicas,
        }
    }

    // The rows of Seldon's operator/internal/utils_test.go, in order.
    #[test]
    fn scaling_2_1_3_is_valid() {
        assert_eq!(ok(Some(2), Some(1), Some(3)), scaling_of(2, 1, Some(3)));
    }

    #[test]
    fn scaling_replicas_below_min_is_rejected() {
        assert_eq!(
            validated_scaling(Some(1), Some(2), Some(4)),
            Err(ScalingError::BelowMin {
                replicas: 1,
                min: 2
            })
        );
    }

    #[test]
    fn scaling_replicas_above_max_is_rejected() {
        assert_eq!(
            validated_scaling(Some(5), Some(1), Some(4)),
            Err(ScalingError::AboveMax {
                replicas: 5,
                max: 4
            })
        );
    }

    #[test]
    fn scaling_zero_replicas_with_min_one_is_rejected() {
        assert_eq!(
            validated_scaling(Some(0), Some(1), None),
            Err(ScalingError::BelowMin {
                replicas: 0,
                min: 1
            })
        );
    }

    #[test]
    fn scaling_min_above_max_is_rejected() {
        assert_eq!(
            validated_scaling(Some(6), Some(6), Some(4)),
            Err(ScalingError::MinAboveMax { min: 6, max: 4 })
        );
    }

    #[test]
    fn scaling_zero_replicas_zero_min_max_four_is_kept() {
        assert_eq!(ok(Some(0), Some(0), Some(4)), scaling_of(0, 0, Some(4)));
    }

    #[test]
    fn scaling_zero_replicas_alone_means_scaled_to_zero_without_bounds() {
        let s = ok(Some(0), None, None);
        assert_eq!(s, scaling_of(0, 0, None));
        assert_eq!(s.max_or_unbounded(), u32::MAX);
    }

    #[test]
    fn scaling_unset_replicas_take_min() {
        assert_eq!(ok(None, Some(2), None), scaling_of(2, 2, None));
    }

    #[test]
    fn scaling_zero_min_alone_gives_the_defaults() {
        assert_eq!(ok(None, Some(0), None), scaling_of(1, 0, None));
    }

    #[test]
    fn scaling_max_alone_keeps_one_replica() {
        assert_eq!(ok(None, None, Some(2)), scaling_of(1, 0, Some(2)));
    }

    #[test]
    fn scaling_nothing_set_gives_one_replica_without_autoscaling() {
        let s = ok(None, None, None);
        assert_eq!(s, Scaling::default());
        assert!(!s.autoscaling_enabled());
    }

    #[test]
    fn scaling_negative_values_are_rejected_naming_the_field() {
        for (r, min, max, field) in [
            (Some(-1), None, None, "replicas"),
            (None, Some(-2), None, "minReplicas"),
            (Some(1), None, Some(-3), "maxReplicas"),
        ] {
            let e = validated_scaling(r, min, max).unwrap_err();
            assert_eq!(e.field(), field);
            assert!(e.to_string().contains("negative"), "{e}");
        }
    }

    #[test]
    fn autoscaling_is_enabled_iff_min_or_max_is_set() {
        assert!(!ok(Some(3), None, None).autoscaling_enabled());
        assert!(ok(Some(1), Some(1), None).autoscaling_enabled());
        assert!(ok(Some(1), None, Some(4)).autoscaling_enabled());
        assert!(!ok(Some(1), Some(0), Some(0)).autoscaling_enabled());
        assert_eq!(ok(Some(1), None, Some(4)).max_or_unbounded(), 4);
    }

    #[test]
    fn model_names_allow_letters_digits_dash_underscore_and_dot() {
        for good in ["iris", "id1_node", "Iris-2.v1", "a", &"x".repeat(253)] {
            assert!(model_name_is_valid(good), "{good}");
        }
        for bad in ["", ".", "..", "iris/1", "iris 1", "ïris", &"x".repeat(254)] {
            assert!(!model_name_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn dns1123_labels_are_lowercase_alphanumeric_with_inner_dashes() {
        for good in ["mlserver", "mlserver-134", "a", "0", &"a".repeat(63)] {
            assert!(dns1123_label_is_valid(good), "{good}");
        }
        for bad in [
            "",
            "mlserver.name",
            "MLServer",
            "-a",
            "a-",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!dns1123_label_is_valid(bad), "{bad}");
        }
    }
}
