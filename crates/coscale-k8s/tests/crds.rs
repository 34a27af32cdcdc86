//! The generated CRDs: committed files up to date, Kubernetes-structural schemas, names,
//! subresources and columns as Seldon's, every fixture judged as the API server and
//! coscale would, and the CEL rules equal to coscale's own rules.
//!
//! How "the API server would reject it" is checked: the `openAPIV3Schema` is turned into
//! a JSON Schema that closes every object that has `properties` and no
//! `x-kubernetes-preserve-unknown-fields` (`additionalProperties: false`). That is the set
//! of paths a Kubernetes API server prunes; `kubectl apply` asks for strict field
//! validation by default (`--validate=strict`, server-side since 1.27), under which the
//! API server rejects such a field instead of dropping it. `x-kubernetes-int-or-string`
//! becomes `anyOf: [integer, string]`. CEL rules (`x-kubernetes-validations`) are
//! evaluated with kube's client-side CEL evaluator (`kube-cel`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use coscale_core::resources::{dns1123_label_is_valid, parse_manifests, validated_scaling};
use coscale_k8s::crd::{self, crds, model_schema, server_config_schema, server_schema};
use serde_json::{json, Map, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const REGENERATE: &str =
    "cargo run -p coscale-cli -- crds --out deploy/crds --out deploy/helm/coscale/crds";

/// With `COSCALE_WRITE_CRDS=1` the test writes the files instead of comparing them (the
/// same output as the command above, without building the whole CLI).
const WRITE_ENV: &str = "COSCALE_WRITE_CRDS";

#[test]
fn committed_crds_are_the_generated_ones() {
    let files = crd::crd_files().unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "models.mlops.seldon.io.yaml",
            "servers.mlops.seldon.io.yaml",
            "serverconfigs.mlops.seldon.io.yaml"
        ]
    );
    let write = std::env::var(WRITE_ENV).is_ok_and(|v| v == "1");
    for dir in ["deploy/crds", "deploy/helm/coscale/crds"] {
        for (name, yaml) in &files {
            let path = repo().join(dir).join(name);
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, yaml).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == *yaml,
                "{} differs from the CRD generated from the Rust types (or is missing); \
                 regenerate the committed CRDs with `{REGENERATE}` \
                 (or `{WRITE_ENV}=1 cargo test -p coscale-k8s --test crds`)",
                path.display()
            );
        }
    }
}

#[test]
fn names_subresources_and_columns_are_seldons() {
    let all = crds().unwrap();
    let expect = [
        ("models.mlops.seldon.io", "Model", "mlm", true),
        ("servers.mlops.seldon.io", "Server", "mls", true),
        (
            "serverconfigs.mlops.seldon.io",
            "ServerConfig",
            "mlc",
            false,
        ),
    ];
    for (crd, (name, kind, short, scaled)) in all.iter().zip(expect) {
        assert_eq!(crd.metadata.name.as_deref(), Some(name));
        assert_eq!(crd.spec.group, "mlops.seldon.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_owned()]));
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        let sub = v.subresources.as_ref();
        assert_eq!(
            sub.is_some_and(|s| s.status.is_some()),
            scaled,
            "{kind} status subresource"
        );
        let scale = sub.and_then(|s| s.scale.as_ref());
        if scaled {
            let scale = scale.unwrap();
            assert_eq!(scale.spec_replicas_path, ".spec.replicas");
            assert_eq!(scale.status_replicas_path, ".status.replicas");
            assert_eq!(
                scale.label_selector_path.as_deref(),
                Some(".status.selector")
            );
        } else {
            assert!(scale.is_none());
        }
    }
    let columns = |i: usize| -> Vec<(String, String)> {
        all[i].spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.json_path))
            .collect()
    };
    let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        columns(0),
        owned(&[
            (
                "Ready",
                ".status.conditions[?(@.type==\"ModelReady\")].status"
            ),
            ("Desired Replicas", ".spec.replicas"),
            ("Available Replicas", ".status.availableReplicas"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
    assert_eq!(
        columns(1),
        owned(&[
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Replicas", ".status.replicas"),
            ("Loaded Models", ".status.loadedModels"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
}

/// Every rule of a structural schema (Kubernetes `apiextensions` validation), checked at
/// every node; returns the problems with their paths.
fn structural_problems(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    for banned in [
        "$ref",
        "$schema",
        "definitions",
        "nullable",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "title",
    ] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: has {banned}"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    match obj.get("type").and_then(Value::as_str) {
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
        Some(t) => out.push(format!("{path}: unknown type {t}")),
        None if int_or_string => {}
        None => out.push(format!("{path}: no type")),
    }
    if int_or_string && obj.contains_key("type") {
        out.push(format!("{path}: int-or-string with a type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: additionalProperties beside properties"));
    }
    if obj.get("type") == Some(&json!("object"))
        && !obj.contains_key("properties")
        && !obj.contains_key("additionalProperties")
        && !preserve
        && path != ".metadata"
    {
        out.push(format!(
            "{path}: object without properties that is not preserved"
        ));
    }
    if obj.get("type") == Some(&json!("array")) {
        match obj.get("items") {
            Some(items) => structural_problems(items, &format!("{path}[]"), out),
            None => out.push(format!("{path}: array without items")),
        }
    }
    if let Some(Value::String(f)) = obj.get("format") {
        if !["int32", "int64", "date-time", "double", "float", "byte"].contains(&f.as_str()) {
            out.push(format!("{path}: format {f}"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural_problems(v, &format!("{path}.{k}"), out);
        }
        for r in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !props.contains_key(r.as_str().unwrap_or_default()) {
                out.push(format!("{path}: required {r} is not a property"));
            }
        }
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        structural_problems(ap, &format!("{path}.*"), out);
    }
}

fn schemas() -> [(&'static str, Value); 3] {
    [
        ("Model", model_schema()),
        ("Server", server_schema()),
        ("ServerConfig", server_config_schema()),
    ]
}

#[test]
fn schemas_are_structural() {
    for (kind, schema) in schemas() {
        let mut problems = Vec::new();
        structural_problems(&schema, "", &mut problems);
        assert!(problems.is_empty(), "{kind}:\n{}", problems.join("\n"));
    }
    // A few shapes spelled out.
    let m = model_schema();
    let spec = &m["properties"]["spec"];
    assert_eq!(spec["required"], json!(["storageUri"]));
    assert_eq!(
        spec["properties"]["memory"],
        json!({"x-kubernetes-int-or-string": true})
    );
    assert_eq!(spec["properties"]["replicas"]["minimum"], json!(0));
    assert_eq!(
        spec["properties"]["requirements"]["items"]["type"],
        json!("string")
    );
    let s = server_schema();
    assert_eq!(
        s["properties"]["spec"]["properties"]["podSpec"],
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    );
    assert_eq!(
        server_config_schema()["properties"]["spec"]["required"],
        json!(["podSpec"])
    );
}

/// The schema as the API server applies it with strict field validation (see the top).
fn strict(node: &Value) -> Value {
    let Value::Object(obj) = node else {
        return node.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "x-kubernetes-validations" => {}
            "properties" => {
                let props = v
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(pk, pv)| (pk.clone(), strict(pv)))
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" => {
                out.insert(k.clone(), strict(v));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if obj.contains_key("properties")
        && obj.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true))
    {
        out.insert("additionalProperties".into(), json!(false));
    }
    if obj.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        out.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    Value::Object(out)
}

/// Each kind's schema and its strict JSON Schema validator, built once.
fn compiled() -> &'static [(&'static str, Value, jsonschema::Validator)] {
    static COMPILED: OnceLock<Vec<(&'static str, Value, jsonschema::Validator)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        schemas()
            .into_iter()
            .map(|(kind, schema)| {
                let validator = jsonschema::validator_for(&strict(&schema)).unwrap();
                (kind, schema, validator)
            })
            .collect()
    })
}

thread_local! {
    static CEL: kube::core::cel::Validator = kube::core::cel::Validator::new();
}

/// Why the API server would refuse `object`: schema errors, then CEL rule failures.
fn api_server_errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let (_, schema, validator) = compiled()
        .iter()
        .find(|(k, _, _)| *k == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        if let Err(e) = CEL.with(|cel| cel.validate(schema, object, None)) {
            errors.extend(e.into_vec().into_iter().map(|e| format!("CEL {e}")));
        }
    }
    errors
}

/// `shared/fixtures/SUB`: beside the checkout (`X/main` and `X/shared`), or two levels up
/// for a worktree (`X/wt/NAME` and `X/shared`).
fn fixtures_dir(sub: &str) -> PathBuf {
    let candidates = [
        repo().join("../shared/fixtures"),
        repo().join("../../shared/fixtures"),
    ];
    let found = candidates.iter().find(|d| d.is_dir());
    found
        .unwrap_or_else(|| panic!("no shared/fixtures folder at {candidates:?}"))
        .join(sub)
}

fn fixture_docs(sub: &str) -> Vec<(String, String, Vec<Value>)> {
    let dir = fixtures_dir(sub);
    assert!(dir.is_dir(), "fixtures folder {} is missing", dir.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| {
                let v: Value = serde::Deserialize::deserialize(d).ok()?;
                let kind = v.get("kind")?.as_str()?;
                ["Model", "Server", "ServerConfig"]
                    .contains(&kind)
                    .then_some(v)
            })
            .collect::<Vec<_>>();
        out.push((name, text, docs));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Which layer rejects each invalid fixture, and a word of its error.
enum RejectedBy {
    /// The CRD's openAPIV3Schema or its CEL rules (and coscale's validation too).
    Schema(&'static str),
    /// Only coscale's validation (`coscale_core::resources`): the API server stores the
    /// object, the operator reports the error in the status and never applies it.
    Coscale(&'static str),
}

const INVALID: &[(&str, RejectedBy)] = &[
    // `storagUri` is not a field, and `storageUri` is required.
    (
        "models-error-bad-spec.yaml",
        RejectedBy::Schema("storagUri"),
    ),
    // `storageUri: ""`: minLength 1.
    ("models-error-no-uri.yaml", RejectedBy::Schema("storageUri")),
    // `mlserver.name` is a DNS subdomain (fine for Kubernetes) but not a DNS-1123 label:
    // the Server CRD's CEL rule on metadata.name.
    (
        "servers-mlserver-badname.yaml",
        RejectedBy::Schema("DNS-1123 label"),
    ),
    // Explainer models are valid Seldon shapes that coscale does not serve.
    (
        "models-hf-sentiment-explainer.yaml",
        RejectedBy::Coscale("not supported"),
    ),
    (
        "models-income-explainer.yaml",
        RejectedBy::Coscale("not supported"),
    ),
];

#[test]
fn every_fixture_is_judged_as_the_api_server_and_coscale_would() {
    let mut seen = 0;
    for sub in ["seldon-manifests", "hpa"] {
        for (name, text, docs) in fixture_docs(sub) {
            if docs.is_empty() {
                continue; // HPAs and a ConfigMap: not custom resources.
            }
            let coscale = parse_manifests(&name, &text);
            let schema_errors: Vec<String> = docs.iter().flat_map(api_server_errors).collect();
            seen += docs.len();
            match INVALID.iter().find(|(f, _)| *f == name) {
                None => {
                    assert!(
                        schema_errors.is_empty(),
                        "{sub}/{name} must fit the CRDs:\n{}",
                        schema_errors.join("\n")
                    );
                    assert!(coscale.is_ok(), "{sub}/{name}: {}", coscale.err().unwrap());
                }
                Some((_, RejectedBy::Schema(word))) => {
                    let all = schema_errors.join("\n");
                    assert!(
                        all.contains(word),
                        "{name}: the API server must reject it for {word:?}, got {all:?}"
                    );
                    assert!(coscale.is_err(), "{name}: coscale must reject it too");
                }
                Some((_, RejectedBy::Coscale(word))) => {
                    assert!(schema_errors.is_empty(), "{name}: {schema_errors:?}");
                    let e = coscale.expect_err(&name).to_string();
                    assert!(e.contains(word), "{name}: {e}");
                }
            }
        }
    }
    assert!(
        seen >= 45,
        "only {seen} Model/Server/ServerConfig documents found"
    );
}

fn model(spec: Value) -> Value {
    json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
           "metadata": {"name": "m"}, "spec": spec})
}

#[test]
fn wrong_types_and_unknown_fields_are_rejected() {
    let ok = model(json!({"storageUri": "gs://x", "memory": "1Gi", "replicas": 2}));
    assert_eq!(api_server_errors(&ok), Vec::<String>::new());
    assert_eq!(
        api_server_errors(&model(json!({"storageUri": "gs://x", "memory": 100}))),
        Vec::<String>::new()
    );
    for (bad, word) in [
        (
            json!({"storageUri": "gs://x", "replicas": "two"}),
            "/spec/replicas",
        ),
        (
            json!({"storageUri": "gs://x", "replicas": -1}),
            "/spec/replicas",
        ),
        (
            json!({"storageUri": "gs://x", "memory": true}),
            "/spec/memory",
        ),
        (
            json!({"storageUri": "gs://x", "requirements": "sklearn"}),
            "/spec/requirements",
        ),
        (
            json!({"storageUri": "gs://x", "logger": {"percent": 10, "extra": 1}}),
            "/spec/logger",
        ),
        (
            json!({"storageUri": "gs://x", "parameters": [{"name": "a", "value": 3}]}),
            "/spec/parameters/0/value",
        ),
        (json!({"requirements": ["sklearn"]}), "storageUri"),
    ] {
        let errors = api_server_errors(&model(bad.clone())).join("\n");
        assert!(
            errors.contains(word),
            "{bad}: {errors:?} should mention {word}"
        );
    }
    let server = json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
        "metadata": {"name": "s"},
        "spec": {"serverConfig": "mlserver", "podSpec": {"containers": [{"name": "x", "anything": 1}]},
                 "deploymentStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}}});
    assert_eq!(api_server_errors(&server), Vec::<String>::new());
}

/// The CEL replica rules accept exactly what `validated_scaling` accepts (negatives are
/// the schema's `minimum: 0`).
#[test]
fn cel_replica_rules_equal_coscales_scaling_rule() {
    let values = [None, Some(0), Some(1), Some(2), Some(3), Some(5)];
    let mut checked = 0;
    for kind in ["Model", "Server"] {
        for r in values {
            for min in values {
                for max in values {
                    let mut spec = match kind {
                        "Model" => json!({"storageUri": "gs://x"}),
                        _ => json!({"serverConfig": "mlserver"}),
                    };
                    for (k, v) in [("replicas", r), ("minReplicas", min), ("maxReplicas", max)] {
                        if let Some(v) = v {
                            spec[k] = json!(v);
                        }
                    }
                    let obj = json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": kind,
                                     "metadata": {"name": "x"}, "spec": spec});
                    let errors = api_server_errors(&obj);
                    let coscale = validated_scaling(r, min, max);
                    assert_eq!(
                        errors.is_empty(),
                        coscale.is_ok(),
                        "{kind} replicas={r:?} min={min:?} max={max:?}: CEL {errors:?}, coscale {coscale:?}"
                    );
                    if let Err(e) = coscale {
                        assert!(
                            errors.iter().any(|x| x.contains("scaling spec is invalid")),
                            "{errors:?} vs {e}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 6 * 6 * 6);
}

#[test]
fn cel_name_rule_equals_coscales_dns1123_label_rule() {
    for name in [
        "mlserver",
        "a",
        "m-1",
        "mlserver.name",
        "Mlserver",
        "-a",
        "a-",
        "a_b",
        &"a".repeat(63),
        &"a".repeat(64),
    ] {
        for kind in ["Server", "ServerConfig"] {
            let spec = match kind {
                "Server" => json!({"serverConfig": "mlserver"}),
                _ => json!({"podSpec": {"containers": []}}),
            };
            let obj = json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": kind,
                             "metadata": {"name": name}, "spec": spec});
            let errors = api_server_errors(&obj);
            assert_eq!(
                errors.is_empty(),
                dns1123_label_is_valid(name),
                "{kind} {name:?}: {errors:?}"
            );
        }
    }
}
