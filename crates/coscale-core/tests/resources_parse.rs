//! `parse_manifests` on hand-written manifests: error paths and messages, typo
//! suggestions, multi-document and JSON inputs, name and replica rules, unsupported
//! kinds, and a property test that no input makes it panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coscale_core::resources::{
    parse_manifests, ManifestErrors, Model, Resource, Scaling, Server, ServerConfig,
};
use proptest::prelude::*;

fn errors(text: &str) -> ManifestErrors {
    match parse_manifests("test.yaml", text) {
        Ok(resources) => panic!("expected errors, got {resources:?}"),
        Err(e) => e,
    }
}

fn resources(text: &str) -> Vec<Resource> {
    parse_manifests("test.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn model(text: &str) -> Model {
    match resources(text).as_slice() {
        [Resource::Model(m)] => m.clone(),
        other => panic!("expected one model, got {other:?}"),
    }
}

fn server(text: &str) -> Server {
    match resources(text).as_slice() {
        [Resource::Server(s)] => s.clone(),
        other => panic!("expected one server, got {other:?}"),
    }
}

/// The first error is at `path` and its message contains `words`.
fn assert_first_error(e: &ManifestErrors, path: &str, words: &str) {
    assert_eq!(e.0[0].path, path, "{e}");
    assert!(e.0[0].message.contains(words), "{e}");
}

/// (path, message) of every error.
fn paths_and_messages(e: &ManifestErrors) -> Vec<(String, String)> {
    e.0.iter()
        .map(|e| (e.path.clone(), e.message.clone()))
        .collect()
}

fn model_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n  storageUri: gs://b/m\n{spec}"
    )
}

fn server_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[test]
fn a_typo_names_file_document_object_path_and_the_nearest_field() {
    let text = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\nspec:\n  storagUri: gs://b/m\n";
    let e = parse_manifests(
        "models.yaml",
        &format!("{}---\n{text}", model_yaml("ok", "")),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "models.yaml: document 2 (Model \"iris\"): spec.storagUri: unknown field; did you mean \"storageUri\"?"
    );
}

#[test]
fn typos_in_metadata_and_nested_objects_are_suggested_too() {
    let text = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\n  namspace: x\nspec:\n  storageUri: gs://b/m\n  logger:\n    percnt: 10\n  minreplicas: 1\n";
    assert_eq!(
        paths_and_messages(&errors(text)),
        vec![
            (
                "metadata.namspace".into(),
                "unknown field; did you mean \"namespace\"?".into()
            ),
            (
                "spec.logger.percnt".into(),
                "unknown field; did you mean \"percent\"?".into()
            ),
            (
                "spec.minreplicas".into(),
                "unknown field; did you mean \"minReplicas\"?".into()
            ),
        ]
    );
}

#[test]
fn an_unknown_field_without_a_close_match_lists_the_known_ones() {
    let e = errors(&model_yaml("iris", "  logger:\n    colour: red\n"));
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].path, "spec.logger.colour");
    assert_eq!(e.0[0].message, "unknown field; expected one of: percent");
}

#[test]
fn a_wrong_type_is_reported_with_its_field_path() {
    let e = errors(&model_yaml("iris", "  replicas: two\n"));
    assert_eq!(e.0.len(), 1, "{e}");
    assert_first_error(&e, "spec.replicas", "invalid type: string \"two\"");
    assert_eq!(e.0[0].object.as_deref(), Some("Model \"iris\""));
}

#[test]
fn wrong_types_inside_lists_name_the_element() {
    let e = errors(&model_yaml(
        "iris",
        "  parameters:\n  - name: a\n    value: b\n  - name: c\n    value: [1]\n",
    ));
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].path, "spec.parameters[1].value");
    let e = errors(&model_yaml(
        "iris",
        "  requirements:\n  - sklearn\n  - [x]\n",
    ));
    assert_eq!(e.0[0].path, "spec.requirements[1]");
}

#[test]
fn every_error_of_a_document_is_reported_not_just_the_first() {
    let text = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: bad/name\nspec:\n  storagUri: x\n  replicas: two\n  memory: lots\n  explainer:\n    type: anchor_tabular\n";
    let e = errors(text);
    // Shape errors come first (keys in alphabetical order), then validation errors.
    let paths: Vec<String> = e.0.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            "spec.memory",
            "spec.replicas",
            "spec.storagUri",
            "metadata.name",
            "spec.explainer"
        ],
        "{e}"
    );
    assert!(e.0.iter().all(|e| e.document == 1));
}

#[test]
fn one_bad_document_rejects_the_whole_file_and_lists_only_its_errors() {
    let text = format!(
        "{}---\n{}---\n{}",
        model_yaml("a", ""),
        model_yaml("b", "  replicas: -1\n"),
        server_yaml("s", "  serverConfig: mlserver\n")
    );
    let e = errors(&text);
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].document, 2);
    assert_first_error(&e, "spec.replicas", "negative");
}

#[test]
fn errors_in_several_documents_are_all_listed_one_line_each() {
    let text = format!(
        "{}---\n{}---\n{}",
        model_yaml("a", "  replicas: x\n"),
        model_yaml("b", ""),
        server_yaml("s", "  replicas: 1\n")
    );
    let e = errors(&text);
    assert_eq!(
        e.0.iter().map(|e| e.document).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(e.to_string().lines().count(), 2);
    assert!(e
        .to_string()
        .lines()
        .all(|l| l.starts_with("test.yaml: document ")));
}

#[test]
fn empty_yaml_documents_are_skipped_but_counted() {
    let text = format!(
        "---\n# just a comment\n---\n{}---\n",
        model_yaml("iris", "  replicas: x\n")
    );
    let e = errors(&text);
    assert_eq!(e.0[0].document, 2, "{e}");
    assert!(resources("").is_empty());
    assert!(resources("---\n---\n").is_empty());
}

#[test]
fn invalid_yaml_is_an_error_of_its_document() {
    let e = errors(&format!("{}---\nkind: [unclosed\n", model_yaml("iris", "")));
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].document, 2);
    assert!(e.0[0].message.starts_with("invalid YAML"), "{e}");
}

#[test]
fn a_json_object_is_one_document() {
    let text = r#"{"apiVersion":"mlops.seldon.io/v1alpha1","kind":"Model","metadata":{"name":"iris"},"spec":{"storageUri":"gs://b/m","requirements":["sklearn"],"replicas":2}}"#;
    let m = model(text);
    assert_eq!(m.name.as_str(), "iris");
    assert_eq!(m.scaling.replicas, 2);
    assert_eq!(m.spec.requirements, vec!["sklearn"]);
}

#[test]
fn a_json_array_gives_one_document_per_element() {
    let text = r#"[
      {"apiVersion":"mlops.seldon.io/v1alpha1","kind":"Server","metadata":{"name":"mlserver"},"spec":{"serverConfig":"mlserver"}},
      {"apiVersion":"mlops.seldon.io/v1alpha1","kind":"Model","metadata":{"name":"iris"},"spec":{"storageUri":"gs://b/m","replicas":"x"}}
    ]"#;
    let e = errors(text);
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].document, 2);
    assert_eq!(e.0[0].path, "spec.replicas");
    let fixed = text.replace(r#""replicas":"x""#, r#""replicas":3"#);
    let kinds: Vec<&str> = resources(&fixed)
        .iter()
        .map(Resource::kind)
        .collect::<Vec<_>>();
    assert_eq!(kinds, vec!["Server", "Model"]);
}

#[test]
fn a_kubernetes_list_gives_its_items_with_item_paths_in_errors() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
      {"apiVersion":"mlops.seldon.io/v1alpha1","kind":"Model","metadata":{"name":"a"},"spec":{"storageUri":"gs://b/a"}},
      {"apiVersion":"mlops.seldon.io/v1alpha1","kind":"Model","metadata":{"name":"b"},"spec":{"storageUri":"gs://b/b","memory":"1Gi"}}
    ]}"#;
    let names: Vec<String> = resources(text)
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    let e = errors(&text.replace("\"memory\"", "\"memroy\""));
    assert_eq!(e.0[0].document, 1);
    assert_eq!(e.0[0].path, "items[1].spec.memroy");
    assert_eq!(e.0[0].object.as_deref(), Some("Model \"b\""));

    let yaml = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}",
        model_yaml("c", "").replace('\n', "\n  ")
    );
    assert_eq!(resources(&yaml)[0].name(), "c");
}

#[test]
fn invalid_json_is_reported() {
    let e = errors(r#"{"kind": "Model""#);
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].message.starts_with("invalid JSON"), "{e}");
}

#[test]
fn kubernetes_metadata_and_status_are_accepted_and_ignored() {
    let text = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\n  namespace: seldon-mesh\n  uid: 1234\n  resourceVersion: \"99\"\n  generation: 3\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  labels:\n    team: a\n  annotations:\n    note: b\n  managedFields:\n  - manager: kubectl\nspec:\n  storageUri: gs://b/m\nstatus:\n  replicas: 1\n  anything: [1, 2]\n";
    let m = model(text);
    assert_eq!(m.meta.namespace.as_deref(), Some("seldon-mesh"));
    assert_eq!(m.meta.generation, Some(3));
    assert_eq!(m.meta.labels["team"], "a");
    assert_eq!(m.meta.annotations["note"], "b");
}

#[test]
fn model_names_follow_the_model_name_rule() {
    for good in ["iris", "id1_node", "Iris.v2-x"] {
        assert_eq!(model(&model_yaml(good, "")).name.as_str(), good);
    }
    for bad in ["\"iris/1\"", "\"..\"", "\"\""] {
        let e = errors(&model_yaml(bad, ""));
        assert_eq!(e.0[0].path, "metadata.name", "{e}");
    }
    let e = errors(&model_yaml(&"x".repeat(254), ""));
    assert!(e.0[0].message.contains("not a valid Model name"), "{e}");
}

#[test]
fn server_names_must_be_dns1123_labels() {
    let e = errors(&server_yaml("mlserver.name", "  serverConfig: mlserver\n"));
    assert_eq!(e.0.len(), 1);
    assert_first_error(&e, "metadata.name", "DNS-1123");
    let e = errors(&server_yaml(&"a".repeat(64), "  serverConfig: mlserver\n"));
    assert!(e.0[0].message.contains("DNS-1123"), "{e}");
    assert_eq!(
        server(&server_yaml(&"a".repeat(63), "  serverConfig: mlserver\n"))
            .name
            .as_str()
            .len(),
        63
    );
}

#[test]
fn a_server_without_server_config_is_rejected() {
    let e = errors(&server_yaml("mlserver", "  replicas: 1\n"));
    assert_eq!(e.0.len(), 1);
    assert_first_error(&e, "spec.serverConfig", "serverConfig is required");
}

#[test]
fn a_model_without_storage_uri_is_rejected() {
    let text = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\nspec:\n  requirements: [sklearn]\n";
    let e = errors(text);
    assert_eq!(paths_and_messages(&e).len(), 1);
    assert_eq!(e.0[0].path, "spec.storageUri");
    let e = errors(&model_yaml("iris", "").replace("gs://b/m", "\"  \""));
    assert_eq!(e.0[0].path, "spec.storageUri");
}

#[test]
fn explainer_and_llm_models_are_rejected_naming_the_field() {
    let e = errors(&model_yaml(
        "x",
        "  explainer:\n    type: anchor_tabular\n    modelRef: income\n",
    ));
    assert_first_error(&e, "spec.explainer", "explainer models are not supported");
    let e = errors(&model_yaml("x", "  llm:\n    modelRef: base\n"));
    assert_first_error(&e, "spec.llm", "not supported");
}

#[test]
fn model_type_is_appended_to_trimmed_deduplicated_requirements() {
    let m = model(&model_yaml(
        "iris",
        "  requirements:\n  - ' sklearn '\n  - python\n  - sklearn\n  modelType: ' mlflow '\n",
    ));
    assert_eq!(m.spec.requirements, vec!["sklearn", "python", "mlflow"]);
    let m = model(&model_yaml(
        "iris",
        "  requirements: [sklearn]\n  modelType: sklearn\n",
    ));
    assert_eq!(m.spec.requirements, vec!["sklearn"]);
    let e = errors(&model_yaml("iris", "  requirements: [sklearn, '  ']\n"));
    assert_eq!(e.0[0].path, "spec.requirements[1]");
}

#[test]
fn every_model_field_is_read_into_typed_settings() {
    let m = model(&model_yaml(
        "iris",
        "  artifactVersion: 2\n  schemaUri: gs://b/schema\n  secretName: s3\n  memory: 1.5Ki\n  server: mlserver\n  preloaded: true\n  dedicated: true\n  logger:\n    percent: 10\n  parameters:\n  - name: q\n    value: x\n  dataflow:\n    cleanTopicsOnDelete: true\n  replicas: 2\n  minReplicas: 1\n  maxReplicas: 3\n",
    ));
    assert_eq!(m.spec.artifact_version, Some(2));
    assert_eq!(m.spec.schema_uri.as_deref(), Some("gs://b/schema"));
    assert_eq!(m.spec.secret_name.as_deref(), Some("s3"));
    assert_eq!(m.spec.memory_bytes, Some(1536));
    assert_eq!(m.spec.server.as_ref().map(|s| s.as_str()), Some("mlserver"));
    assert!(m.spec.preloaded && m.spec.dedicated);
    assert!(m.log_payloads && m.clean_topics_on_delete);
    assert_eq!(m.spec.parameters, vec![("q".to_owned(), "x".to_owned())]);
    assert_eq!(
        m.scaling,
        Scaling {
            replicas: 2,
            min_replicas: 1,
            max_replicas: Some(3)
        }
    );
}

#[test]
fn replica_counts_are_validated_with_the_field_path() {
    let e = errors(&model_yaml(
        "iris",
        "  replicas: 5\n  minReplicas: 1\n  maxReplicas: 4\n",
    ));
    assert_first_error(&e, "spec.replicas", "scaling spec is invalid");
    let e = errors(&server_yaml(
        "s",
        "  serverConfig: mlserver\n  replicas: 6\n  minReplicas: 6\n  maxReplicas: 4\n",
    ));
    assert_eq!(e.0[0].path, "spec.minReplicas");
    let e = errors(&server_yaml(
        "s",
        "  serverConfig: mlserver\n  maxReplicas: -2\n",
    ));
    assert_eq!(e.0[0].path, "spec.maxReplicas");
    let e = errors(&model_yaml("iris", "  replicas: 3000000000\n"));
    assert_eq!(e.0[0].path, "spec.replicas");
}

#[test]
fn only_spec_changes_other_than_replicas_make_a_new_version() {
    let base = model(&model_yaml("iris", "  requirements: [sklearn]\n"));
    let rescaled = model(&model_yaml(
        "iris",
        "  requirements: [sklearn]\n  replicas: 3\n  logger: {}\n",
    ));
    assert_eq!(base.spec, rescaled.spec);
    assert_ne!(base.scaling, rescaled.scaling);
    let moved =
        model(&model_yaml("iris", "  requirements: [sklearn]\n").replace("gs://b/m", "gs://b/m2"));
    assert_ne!(base.spec, moved.spec);
}

#[test]
fn memory_must_be_a_non_negative_quantity() {
    let e = errors(&model_yaml("iris", "  memory: lots\n"));
    assert_first_error(&e, "spec.memory", "invalid quantity");
    let e = errors(&model_yaml("iris", "  memory: -1Mi\n"));
    assert_eq!(e.0[0].path, "spec.memory");
    assert_eq!(
        model(&model_yaml("iris", "  memory: 3M\n"))
            .spec
            .memory_bytes,
        Some(3_000_000)
    );
}

#[test]
fn server_fields_are_kept_as_written() {
    let s = server(&server_yaml(
        "mlserver",
        "  serverConfig: mlserver\n  capabilities: [' sklearn', onnx, onnx]\n  imageOverrides:\n    agent:\n      image: a:1\n  podSpec:\n    nodeSelector:\n      gpu: 'true'\n  statefulSetPersistentVolumeClaimRetentionPolicy:\n    whenDeleted: Delete\n  deploymentStrategy:\n    type: RollingUpdate\n    rollingUpdate:\n      maxSurge: 25%\n      maxUnavailable: 1\n  disableAutoUpdate: true\n  replicas: 2\n  minReplicas: 1\n",
    ));
    assert_eq!(s.capabilities, vec!["sklearn", "onnx"]);
    assert_eq!(s.image_overrides.unwrap()["agent"]["image"], "a:1");
    assert_eq!(s.pod_spec.unwrap()["nodeSelector"]["gpu"], "true");
    assert_eq!(s.pvc_retention_policy.unwrap()["whenDeleted"], "Delete");
    assert_eq!(
        s.deployment_strategy.unwrap()["rollingUpdate"]["maxSurge"],
        "25%"
    );
    assert!(s.disable_auto_update);
    assert!(s.scaling.autoscaling_enabled());
    let e = errors(&server_yaml(
        "mlserver",
        "  serverConfig: mlserver\n  imageOverrides:\n    agnet: {}\n",
    ));
    assert_first_error(&e, "spec.imageOverrides.agnet", "did you mean \"agent\"");
}

#[test]
fn server_configs_need_a_pod_spec_and_keep_volume_claim_templates() {
    let text = "apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\nmetadata:\n  name: mlserver\nspec:\n  podSpec:\n    containers:\n    - name: agent\n      image: a\n  volumeClaimTemplates:\n  - name: models\n    spec:\n      accessModes: [ReadWriteOnce]\n";
    let config: ServerConfig = match resources(text).as_slice() {
        [Resource::ServerConfig(c)] => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(config.name, "mlserver");
    assert_eq!(config.pod_spec["containers"][0]["name"], "agent");
    assert_eq!(config.volume_claim_templates.len(), 1);
    assert_eq!(config.volume_claim_templates[0]["name"], "models");

    let e = errors("apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\nmetadata:\n  name: mlserver\nspec:\n  volumeClaimTemplates: []\n");
    assert_eq!(e.0[0].path, "spec.podSpec");
}

#[test]
fn horizontal_pod_autoscalers_of_models_and_servers_are_read_with_api_defaults() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/hpa/single-model-serving-hpa.yaml"
    ))
    .unwrap();
    let hpas: Vec<_> = resources(&text)
        .into_iter()
        .map(|r| match r {
            Resource::Hpa(h) => h,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(hpas.len(), 2);
    assert_eq!(hpas[0].meta.name, "irisa0-model-hpa");
    assert_eq!(hpas[0].meta.namespace.as_deref(), Some("seldon-mesh"));
    assert_eq!(hpas[1].hpa.spec.scale_target_ref.kind, "Server");
    assert_eq!(hpas[1].hpa.spec.min_replicas, 1);
    let e = errors("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: d}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: d}\n  maxReplicas: 2\n");
    assert_first_error(&e, "spec.scaleTargetRef.kind", "a Model or a Server");
}

#[test]
fn unsupported_kinds_and_api_versions_are_rejected_clearly() {
    let doc = |api: &str, kind: &str| {
        format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: x\nspec: {{}}\n")
    };
    for kind in ["Pipeline", "Experiment", "SeldonRuntime", "SeldonConfig"] {
        let e = errors(&doc("mlops.seldon.io/v1alpha1", kind));
        assert_eq!(e.0[0].message, format!("{kind} is not supported by coscale yet (coscale reads Model, Server and ServerConfig)"));
    }
    let e = errors(&doc("autoscaling/v2", "HorizontalPodAutoscaler"));
    assert_first_error(&e, "spec", "scaleTargetRef");
    let e = errors(&doc("mlops.seldon.io/v1alpha2", "Model"));
    assert_first_error(&e, "apiVersion", "must be \"mlops.seldon.io/v1alpha1\"");
    let e = errors(&doc("v1", "ConfigMap"));
    assert_eq!(e.0[0].path, "kind");
    let e = errors("metadata:\n  name: x\n");
    assert_eq!(
        paths_and_messages(&e)
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>(),
        vec!["apiVersion", "kind"]
    );
    let e = errors("just a string\n");
    assert!(e.0[0].message.contains("expected a mapping"), "{e}");
}

#[test]
fn resources_round_trip_through_json_for_the_store() {
    let all = resources(&format!(
        "{}---\n{}",
        model_yaml("iris", "  memory: 1Gi\n  maxReplicas: 3\n"),
        server_yaml(
            "s",
            "  serverConfig: mlserver\n  podSpec: {containers: []}\n"
        )
    ));
    for r in all {
        let json = serde_json::to_string(&r).unwrap();
        let back: Resource = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}

/// Fragments that appear in manifests, to steer random inputs near real ones.
const FRAGMENTS: &[&str] = &[
    "apiVersion: mlops.seldon.io/v1alpha1\n",
    "kind: Model\n",
    "kind: Server\n",
    "kind: List\n",
    "kind: ServerConfig\n",
    "metadata:\n",
    "  name: iris\n",
    "spec:\n",
    "  storageUri: gs://x\n",
    "  replicas: -1\n",
    "  minReplicas: 3\n",
    "  maxReplicas: 2\n",
    "  memory: 1Gi\n",
    "---\n",
    "items:\n",
    "- ",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    "\"",
    "&a ",
    "*a ",
    "!tag ",
    "\n",
    "null\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in "\\PC*") {
        let _ = parse_manifests("fuzz", &text);
    }

    #[test]
    fn parse_never_panics_on_manifest_like_text(parts in proptest::collection::vec(0..FRAGMENTS.len(), 0..40)) {
        let text: String = parts.iter().map(|i| FRAGMENTS[*i]).collect();
        if let Err(e) = parse_manifests("fuzz", &text) {
            prop_assert!(!e.0.is_empty());
            for err in &e.0 {
                prop_assert!(err.document >= 1);
                prop_assert!(!err.message.is_empty());
            }
        }
    }
}

#[test]
fn yaml_that_json_cannot_hold_spoils_only_its_own_document() {
    let text = format!(
        "? [a, b]\n: one\n---\n{}---\n{}",
        model_yaml("iris", ""),
        model_yaml("b", "  replicas: x\n")
    );
    let e = errors(&text);
    assert_eq!(
        e.0.iter().map(|e| e.document).collect::<Vec<_>>(),
        vec![1, 3],
        "{e}"
    );
    assert!(e.0[0].message.starts_with("unsupported YAML"), "{e}");
}
