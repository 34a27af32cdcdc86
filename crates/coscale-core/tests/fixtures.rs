//! Every shared Seldon Core 2 fixture manifest is accepted or rejected exactly as
//! `shared/fixtures/README.md` says, with a message that names the problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use coscale_core::resources::{parse_manifests, ManifestErrors, Resource, Scaling};

fn fixtures_dir(sub: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(sub);
    assert!(
        dir.is_dir(),
        "fixtures folder {} is missing: the repository must be checked out at X/main with \
         the shared folder at X/shared",
        dir.display()
    );
    dir
}

/// (file name, text) of every file in a fixtures sub-folder, sorted by name.
fn fixture_files(sub: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(fixtures_dir(sub))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn parse_fixture(sub: &str, name: &str) -> Result<Vec<Resource>, ManifestErrors> {
    let path = fixtures_dir(sub).join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_manifests(name, &text)
}

fn only(sub: &str, name: &str) -> Resource {
    let mut resources = parse_fixture(sub, name).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resources.len(), 1, "{name}");
    resources.remove(0)
}

/// The invalid manifests of the README, each with words its error must contain.
const REJECTED: &[(&str, &[&str])] = &[
    (
        "models-error-bad-spec.yaml",
        &["spec.storagUri", "did you mean \"storageUri\""],
    ),
    (
        "models-error-no-uri.yaml",
        &["spec.storageUri", "storageUri is required"],
    ),
    (
        "servers-mlserver-badname.yaml",
        &["metadata.name", "DNS-1123"],
    ),
    (
        "models-hf-sentiment-explainer.yaml",
        &["spec.explainer", "not supported"],
    ),
    (
        "models-income-explainer.yaml",
        &["spec.explainer", "not supported"],
    ),
];

#[test]
fn every_seldon_manifest_fixture_is_accepted_or_rejected_as_the_readme_says() {
    let files = fixture_files("seldon-manifests");
    assert!(
        files.len() >= 40,
        "only {} fixture files found",
        files.len()
    );
    let mut rejected_seen = 0;
    for (name, text) in &files {
        let result = parse_manifests(name, text);
        match REJECTED.iter().find(|(file, _)| file == name) {
            Some((_, words)) => {
                rejected_seen += 1;
                let errors = result.expect_err(name);
                assert_eq!(errors.0.len(), 1, "{name}: {errors}");
                let line = errors.to_string();
                assert!(line.starts_with(&format!("{name}: document 1 (")), "{line}");
                for word in *words {
                    assert!(
                        line.contains(word),
                        "{name}: {line:?} should mention {word:?}"
                    );
                }
            }
            None => {
                let resources = result.unwrap_or_else(|e| panic!("{name} must be accepted:\n{e}"));
                assert_eq!(resources.len(), 1, "{name}");
                let expected_kind = if name.starts_with("servers-") {
                    "Server"
                } else {
                    "Model"
                };
                assert_eq!(resources[0].kind(), expected_kind, "{name}");
                let written_name = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("name: "))
                    .unwrap();
                assert_eq!(resources[0].name(), written_name, "{name}");
            }
        }
    }
    assert_eq!(
        rejected_seen,
        REJECTED.len(),
        "a rejected fixture is missing"
    );
}

#[test]
fn fixtures_that_fail_only_later_are_valid_manifests() {
    let Resource::Model(m) = only("seldon-manifests", "models-error-bad-capabilities.yaml") else {
        panic!("not a model");
    };
    assert_eq!(m.spec.requirements, vec!["foobar"]);
    let Resource::Model(m) = only("seldon-manifests", "models-error-uri-notexist.yaml") else {
        panic!("not a model");
    };
    assert_eq!(m.spec.storage_uri, "gs://seldon-models/scv2/xyz");
}

#[test]
fn fixture_models_keep_memory_secret_parameters_and_scaling() {
    let Resource::Model(gpt2) = only("seldon-manifests", "models-hf-text-gen-custom-gpt2.yaml")
    else {
        panic!("not a model");
    };
    assert_eq!(gpt2.spec.memory_bytes, Some(3 << 30));
    assert_eq!(gpt2.spec.requirements, vec!["huggingface"]);
    assert_eq!(gpt2.scaling, Scaling::default());
    assert!(!gpt2.scaling.autoscaling_enabled());

    let Resource::Model(minio) = only("seldon-manifests", "models-sklearn-iris-minio.yaml") else {
        panic!("not a model");
    };
    assert_eq!(minio.spec.secret_name.as_deref(), Some("minio-secret"));
    assert_eq!(minio.spec.storage_uri, "s3://models/iris");

    let Resource::Model(choice) = only("seldon-manifests", "models-choice1.yaml") else {
        panic!("not a model");
    };
    assert_eq!(
        choice.spec.parameters,
        vec![("query".to_owned(), "choice == 1".to_owned())]
    );
    assert_eq!(choice.spec.requirements, vec!["mlserver", "python"]);

    let Resource::Model(tf) = only("seldon-manifests", "models-tfsimple_scaling.yaml") else {
        panic!("not a model");
    };
    assert_eq!(tf.spec.memory_bytes, Some(100 * 1024));
    assert_eq!(
        tf.scaling,
        Scaling {
            replicas: 1,
            min_replicas: 1,
            max_replicas: None
        }
    );
    assert!(tf.scaling.autoscaling_enabled());
    assert_eq!(tf.scaling.max_or_unbounded(), u32::MAX);
}

#[test]
fn fixture_servers_keep_capabilities_and_pod_spec() {
    let Resource::Server(s) = only(
        "seldon-manifests",
        "servers-custom-mlserver-capabilities.yaml",
    ) else {
        panic!("not a server");
    };
    assert_eq!(s.name.as_str(), "mlserver-134");
    assert_eq!(s.server_config, "mlserver");
    assert_eq!(s.capabilities, vec!["mlserver-1.3.4"]);
    assert!(s.extra_capabilities.is_empty());
    let pod_spec = s.pod_spec.unwrap();
    assert_eq!(
        pod_spec["containers"][0]["image"],
        "seldonio/mlserver:1.3.4"
    );

    let Resource::Server(s) = only("seldon-manifests", "servers-custom-mlserver.yaml") else {
        panic!("not a server");
    };
    assert!(s.capabilities.is_empty());
    assert_eq!(s.extra_capabilities, vec!["mlserver-1.3.4"]);

    let Resource::Server(s) = only("seldon-manifests", "servers-mlserver1.yaml") else {
        panic!("not a server");
    };
    assert_eq!(s.pod_spec, None);
    assert_eq!(s.scaling, Scaling::default());
    assert!(!s.scaling.autoscaling_enabled());
}

#[test]
fn hpa_fixture_model_and_server_manifests_are_accepted() {
    let Resource::Model(m) = only("hpa", "irisa0-model.yaml") else {
        panic!("not a model");
    };
    assert_eq!(m.name.as_str(), "irisa0");
    assert_eq!(m.meta.namespace.as_deref(), Some("seldon-mesh"));
    assert_eq!(m.spec.memory_bytes, Some(3_000_000));
    assert_eq!(m.spec.storage_uri, "gs://seldon-models/testing/iris1");
    assert_eq!(m.scaling.replicas, 1);
    assert!(!m.scaling.autoscaling_enabled());

    let Resource::Server(s) = only("hpa", "server-autoscaling.yaml") else {
        panic!("not a server");
    };
    assert_eq!(s.name.as_str(), "mlserver");
    assert_eq!(
        s.scaling,
        Scaling {
            replicas: 2,
            min_replicas: 1,
            max_replicas: Some(4)
        }
    );
    assert!(s.scaling.autoscaling_enabled());
}

#[test]
fn hpa_fixture_autoscalers_are_read_one_resource_per_document() {
    let mut autoscaler_files = 0;
    for (name, text) in fixture_files("hpa") {
        let hpa_documents = text.matches("kind: HorizontalPodAutoscaler").count();
        if hpa_documents == 0 {
            continue;
        }
        autoscaler_files += 1;
        let resources = parse_manifests(&name, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(resources.len(), hpa_documents, "{name}");
        for r in &resources {
            let Resource::Hpa(h) = r else {
                panic!("{name}: {r:?}")
            };
            assert_eq!(h.meta.namespace.as_deref(), Some("seldon-mesh"), "{name}");
            assert!(
                matches!(
                    h.hpa.spec.scale_target_ref.kind.as_str(),
                    "Model" | "Server"
                ),
                "{name}"
            );
            assert_eq!(h.hpa.spec.max_replicas, 3, "{name}");
        }
    }
    assert_eq!(autoscaler_files, 4);
}

#[test]
fn hpa_fixture_prometheus_adapter_config_map_is_an_unknown_kind() {
    let errors = parse_fixture("hpa", "prometheus-adapter-config.yaml").unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].path, "kind");
    assert!(
        errors.0[0].message.contains("unknown kind \"ConfigMap\""),
        "{errors}"
    );
}
