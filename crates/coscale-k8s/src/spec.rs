//! From custom resources to coscale manifests: the JSON a CR stands for, validated by
//! `coscale_core::resources` exactly as `coscale apply` would validate the same file.

use coscale_core::resources::{self, parse_manifests, Resource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Map, Value};

use crate::crd::SpecFields;

/// The annotation `kubectl apply` stores the whole previous object in; not sent on.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `Model ns/name`: how the operator names a CR in messages and as a manifest source.
pub fn source(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The manifest a CR stands for: `apiVersion`, `kind`, the metadata coscale reads
/// (name, namespace, labels, annotations, generation) and the spec as written.
pub fn manifest(kind: &str, meta: &ObjectMeta, spec: &SpecFields) -> Value {
    let mut m = Map::new();
    m.insert("name".to_owned(), json!(meta.name));
    if let Some(ns) = &meta.namespace {
        m.insert("namespace".to_owned(), json!(ns));
    }
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        m.insert("labels".to_owned(), json!(labels));
    }
    if let Some(annotations) = &meta.annotations {
        let kept: Map<String, Value> = annotations
            .iter()
            .filter(|(k, _)| k.as_str() != LAST_APPLIED)
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if !kept.is_empty() {
            m.insert("annotations".to_owned(), Value::Object(kept));
        }
    }
    if let Some(g) = meta.generation {
        m.insert("generation".to_owned(), json!(g));
    }
    json!({
        "apiVersion": resources::SELDON_API_VERSION,
        "kind": kind,
        "metadata": m,
        "spec": spec,
    })
}

/// Validates a CR with coscale's own rules; the error text lists every problem.
pub fn validate(kind: &str, meta: &ObjectMeta, spec: &SpecFields) -> Result<Resource, String> {
    let src = source(kind, meta);
    let text = manifest(kind, meta, spec).to_string();
    let mut found = parse_manifests(&src, &text).map_err(|e| e.to_string())?;
    match found.pop() {
        Some(r) if found.is_empty() => Ok(r),
        _ => Err(format!("{src}: expected exactly one object")),
    }
}

/// A DNS-1123 subdomain (lowercase letters, digits, '-' and '.', each part starting and
/// ending with a letter or digit, at most 253 characters): what Kubernetes requires of
/// object names. In Kubernetes mode a Model's name must be one, on top of coscale's own
/// Model name rule (letters, digits, '-', '_', '.').
pub fn k8s_object_name_is_valid(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            match (b.first(), b.last()) {
                (Some(f), Some(l)) => {
                    alnum(f) && alnum(l) && b.iter().all(|c| alnum(c) || *c == b'-')
                }
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_follow_the_dns_subdomain_rule() {
        for ok in ["iris", "a", "iris.v2", "m-1.x-2", &"a".repeat(253)] {
            assert!(k8s_object_name_is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "Iris",
            "iris_v2",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            &"a".repeat(254),
        ] {
            assert!(!k8s_object_name_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn a_manifest_keeps_what_coscale_reads_and_drops_last_applied() {
        let meta = ObjectMeta {
            name: Some("iris".into()),
            namespace: Some("ns1".into()),
            generation: Some(3),
            annotations: Some(
                [
                    (LAST_APPLIED.to_owned(), "{...}".to_owned()),
                    ("team".to_owned(), "a".to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        };
        let spec: SpecFields =
            serde_json::from_value(json!({"storageUri": "gs://x"})).unwrap_or_default();
        let m = manifest("Model", &meta, &spec);
        assert_eq!(
            m,
            json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
                   "metadata": {"name": "iris", "namespace": "ns1", "generation": 3,
                                "annotations": {"team": "a"}},
                   "spec": {"storageUri": "gs://x"}})
        );
        let r = validate("Model", &meta, &spec);
        assert!(matches!(r, Ok(Resource::Model(_))), "{r:?}");
        let bad: SpecFields =
            serde_json::from_value(json!({"storagUri": "gs://x"})).unwrap_or_default();
        let e = validate("Model", &meta, &bad).err().unwrap_or_default();
        assert!(
            e.contains("Model ns1/iris") && e.contains("storagUri"),
            "{e}"
        );
    }
}
