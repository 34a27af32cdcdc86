//! The metrics providers for a cluster's autoscalers, through the real binary: the
//! custom metrics API on its TLS listener (`--custom-metrics-addr`, v1beta1 and
//! v1beta2, discovery, `*` with a label selector), checked field by field against
//! the `custom.metrics.k8s.io` types, an HPA decision computed from the served value
//! with `coscale_core::hpa` against the local HPA controller's, and the KEDA external
//! scaler (`--keda-scaler-addr`) serving the same values over gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use coscale_api::pb::externalscaler::external_scaler_client::ExternalScalerClient;
use coscale_api::pb::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use coscale_control::hpa_controller::HpaStatus;
use coscale_core::hpa::{ControllerConfig, DecisionInput, HpaState, MetricInput, Timestamp};
use coscale_core::quantity::Quantity;
use serde_json::Value;
use support::*;

const NS: &str = "seldon-mesh";

/// The fixture HPA's shape on model `irisa0`: Object metric `infer_rps`, 3 per replica.
const MODEL_HPA: &str = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: irisa0-model-hpa
  namespace: seldon-mesh
spec:
  scaleTargetRef:
    apiVersion: mlops.seldon.io/v1alpha1
    kind: Model
    name: irisa0
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Object
    object:
      metric:
        name: infer_rps
      describedObject:
        apiVersion: mlops.seldon.io/v1alpha1
        kind: Model
        name: irisa0
      target:
        type: AverageValue
        averageValue: 3
"#;

fn irisa0() -> String {
    let uri = examples().join("models/iris");
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: irisa0\n  namespace: {NS}\n  labels:\n    team: a\nspec:\n  storageUri: file://{}\n  requirements: [onnx]\n  memory: 1Mi\n  replicas: 1\n",
        uri.display()
    )
}

/// An HTTPS client for the self-signed listener (what `insecureSkipTLSVerify: true`
/// of the APIService does).
fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let resp = client.get(format!("{base}{path}")).send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap())
}

fn quantity(v: &Value) -> Quantity {
    v.as_str()
        .unwrap_or_else(|| panic!("not a quantity string: {v}"))
        .parse()
        .unwrap()
}

/// Checks one item of a MetricValueList, whatever the version.
fn check_item(item: &Value, version: &str, kind: &str, name: &str, api_version: &str) {
    let d = &item["describedObject"];
    assert_eq!(d["kind"], kind, "{item}");
    assert_eq!(d["namespace"], NS, "{item}");
    assert_eq!(d["name"], name, "{item}");
    assert_eq!(d["apiVersion"], api_version, "{item}");
    let ts = item["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "timestamp {ts} is not RFC 3339 UTC"
    );
    quantity(&item["value"]);
    if version == "v1beta1" {
        assert_eq!(item["metricName"], "infer_rps", "{item}");
        assert_eq!(item["window"], 5, "{item}");
        assert!(item["selector"].is_null(), "{item}");
        assert!(item.get("metric").is_none() && item.get("windowSeconds").is_none());
    } else {
        assert_eq!(item["metric"]["name"], "infer_rps", "{item}");
        assert!(item["metric"]["selector"].is_null(), "{item}");
        assert_eq!(item["windowSeconds"], 5, "{item}");
        assert!(item.get("metricName").is_none() && item.get("window").is_none());
    }
}

fn scaled_object(meta: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "irisa0".to_owned(),
        namespace: NS.to_owned(),
        scaler_metadata: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_metrics_api_and_keda_scaler_serve_the_values_the_local_hpa_decides_on() {
    let listeners = [
        "--custom-metrics-addr",
        "127.0.0.1:0",
        "--keda-scaler-addr",
        "127.0.0.1:0",
    ];
    let up = Up::start("k8s-metrics", &[&listeners[..], FAST_HPA].concat()).await;
    let base = up.endpoints.custom_metrics.clone().unwrap();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let https = insecure();

    // health and discovery need no model
    let resp = https.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (code, groups) = get(&https, &base, "/apis").await;
    assert_eq!(code, 200);
    assert_eq!(groups["kind"], "APIGroupList");
    assert_eq!(groups["groups"][0]["name"], "custom.metrics.k8s.io");
    let (_, group) = get(&https, &base, "/apis/custom.metrics.k8s.io").await;
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["apiVersion"], "v1");
    assert_eq!(
        group["preferredVersion"]["groupVersion"],
        "custom.metrics.k8s.io/v1beta2"
    );
    let versions: Vec<&str> = group["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v1beta2", "v1beta1"]);
    for version in ["v1beta1", "v1beta2"] {
        let (code, list) = get(
            &https,
            &base,
            &format!("/apis/custom.metrics.k8s.io/{version}"),
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "APIResourceList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(
            list["groupVersion"],
            format!("custom.metrics.k8s.io/{version}")
        );
        let res = list["resources"].as_array().unwrap();
        for name in [
            "models.mlops.seldon.io/infer_rps",
            "servers.mlops.seldon.io/infer_lag",
            "pods/infer_rps",
            "namespaces/infer_rps",
        ] {
            let r = res
                .iter()
                .find(|r| r["name"] == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(r["kind"], "MetricValueList");
            assert_eq!(r["verbs"], serde_json::json!(["get"]));
            assert_eq!(r["namespaced"], !name.starts_with("namespaces/"));
        }
    }
    let (code, status) = get(&https, &base, "/apis/custom.metrics.k8s.io/v1alpha9").await;
    assert_eq!(code, 404);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "NotFound");

    // irisa0 under 5 rps with the HPA: 5 / 3 per replica → 2 replicas
    up.apply_text("s.yaml", &server_yaml("mlserver", 3))
        .await
        .unwrap();
    up.apply_text("m.yaml", &irisa0()).await.unwrap();
    up.wait_available("irisa0", 1).await;
    up.apply_text("hpa.yaml", MODEL_HPA).await.unwrap();
    let load = Load::start(&up, "irisa0", 5.0).await;
    let path = |v: &str| {
        format!("/apis/custom.metrics.k8s.io/{v}/namespaces/{NS}/models.mlops.seldon.io/irisa0/infer_rps")
    };
    // steady state: a full window of load behind us, the HPA settled at 2
    let (status, b2) = wait_for(
        "the HPA at 2 replicas with a full window of 5 rps",
        Duration::from_secs(120),
        || async {
            let s: HpaStatus = up
                .client
                .get_json("/api/v1/hpas/irisa0-model-hpa")
                .await
                .ok()?;
            let (code, b2) = get(&https, &base, &path("v1beta2")).await;
            let rps = quantity(b2["items"].get(0)?.get("value")?).as_f64();
            (code == 200
                && s.desired_replicas == 2
                && s.current_replicas == 2
                && (4.0..6.0).contains(&rps))
            .then_some((s, b2))
        },
    )
    .await;
    up.wait_available("irisa0", 2).await;

    // the object metric, both versions, field by field
    assert_eq!(b2["kind"], "MetricValueList");
    assert_eq!(b2["apiVersion"], "custom.metrics.k8s.io/v1beta2");
    assert_eq!(b2["metadata"], serde_json::json!({}));
    assert_eq!(b2["items"].as_array().unwrap().len(), 1);
    check_item(
        &b2["items"][0],
        "v1beta2",
        "Model",
        "irisa0",
        "mlops.seldon.io/v1alpha1",
    );
    let (code, b1) = get(&https, &base, &path("v1beta1")).await;
    assert_eq!(code, 200, "{b1}");
    assert_eq!(b1["apiVersion"], "custom.metrics.k8s.io/v1beta1");
    check_item(
        &b1["items"][0],
        "v1beta1",
        "Model",
        "irisa0",
        "mlops.seldon.io/v1alpha1",
    );
    let served = quantity(&b2["items"][0]["value"]);
    let rps = served.as_f64();
    assert!(
        (4.0..6.0).contains(&rps),
        "served infer_rps {served} under 5 rps"
    );
    let text = served.to_string();
    assert!(
        text.ends_with('m') || !text.contains('.'),
        "quantities are canonical (milli-units like 1500m): {text}"
    );

    // the HPA decision from the served value, with coscale's HPA library
    let hpa = coscale_core::hpa::api::parse_hpa(MODEL_HPA).unwrap();
    let input = DecisionInput {
        spec_replicas: status.current_replicas,
        status_replicas: status.current_replicas,
        metrics: vec![MetricInput::Value(served)],
        pods: Vec::new(),
    };
    let (decision, _) = coscale_core::hpa::evaluate(
        &hpa,
        &input,
        HpaState::default(),
        &ControllerConfig::default(),
        Timestamp::from_millis(i64::try_from(coscale_control::service::now_millis()).unwrap()),
    );
    assert_eq!(
        decision.desired_replicas, status.desired_replicas,
        "decision from the served {served}: {decision:?}; local controller: {status:?}"
    );

    // `*` with a label selector: every matching object, as the HPA's Pods metric asks
    let (code, pods) = get(
        &https,
        &base,
        &format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NS}/pods/*/infer_rps?labelSelector=mlops.seldon.io/server%3Dmlserver"),
    )
    .await;
    assert_eq!(code, 200, "{pods}");
    let names: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["describedObject"]["name"].as_str().unwrap())
        .collect();
    // every pod of the server that has samples (the model runs on two of the three)
    assert!(names.len() >= 2, "{pods}");
    assert!(
        names
            .iter()
            .all(|n| ["mlserver-0", "mlserver-1", "mlserver-2"].contains(n)),
        "{names:?}"
    );
    for item in pods["items"].as_array().unwrap() {
        assert_eq!(item["describedObject"]["kind"], "Pod");
        assert_eq!(item["describedObject"]["apiVersion"], "v1");
    }
    let pod_sum: f64 = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| quantity(&i["value"]).as_f64())
        .sum();
    assert!((pod_sum - rps).abs() < 1.5, "pods {pod_sum} vs model {rps}");
    let (_, none) = get(
        &https,
        &base,
        &format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NS}/pods/*/infer_rps?labelSelector=mlops.seldon.io/server%3Dother"),
    )
    .await;
    assert_eq!(none["items"], serde_json::json!([]));
    let (_, models) = get(
        &https,
        &base,
        &format!("/apis/custom.metrics.k8s.io/v1beta1/namespaces/{NS}/models.mlops.seldon.io/*/infer_rps?labelSelector=team%20in%20(a,b)"),
    )
    .await;
    assert_eq!(models["items"].as_array().unwrap().len(), 1, "{models}");
    check_item(
        &models["items"][0],
        "v1beta1",
        "Model",
        "irisa0",
        "mlops.seldon.io/v1alpha1",
    );
    let (code, missing) = get(
        &https,
        &base,
        &format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NS}/models.mlops.seldon.io/nope/infer_rps"),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(missing["kind"], "Status");
    assert!(missing["message"].as_str().unwrap().contains("nope"));

    // the KEDA external scaler reads the same store
    let mut keda = ExternalScalerClient::connect(up.endpoints.keda.clone().unwrap())
        .await
        .unwrap();
    let trigger = [
        ("model", "irisa0"),
        ("metric", "infer_rps"),
        ("target", "3"),
        ("activationTarget", "0"),
    ];
    let spec = keda
        .get_metric_spec(scaled_object(&trigger))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].target_size_float, 3.0);
    assert_eq!(spec.metric_specs[0].target_size, 3);
    let metric_name = spec.metric_specs[0].metric_name.clone();
    assert_eq!(metric_name, "coscale-model-irisa0-infer-rps");
    let values = keda
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(scaled_object(&trigger)),
            metric_name: metric_name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values.metric_values[0].metric_name, metric_name);
    let keda_rps = values.metric_values[0].metric_value_float;
    assert!(
        (keda_rps - rps).abs() < 1.0,
        "KEDA {keda_rps} vs custom metrics {rps}"
    );
    assert_eq!(
        values.metric_values[0].metric_value,
        keda_rps.round() as i64
    );
    assert!(
        keda.is_active(scaled_object(&trigger))
            .await
            .unwrap()
            .into_inner()
            .result
    );
    let high = [
        ("model", "irisa0"),
        ("target", "3"),
        ("activationTarget", "1000"),
    ];
    assert!(
        !keda
            .is_active(scaled_object(&high))
            .await
            .unwrap()
            .into_inner()
            .result
    );
    let mut stream = keda
        .stream_is_active(scaled_object(&trigger))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().unwrap().result);
    let server = [
        ("server", "mlserver"),
        ("metric", "infer_rps"),
        ("target", "2"),
    ];
    let sv = keda
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(scaled_object(&server)),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!((sv.metric_values[0].metric_value_float - rps).abs() < 1.5);
    let bad = keda
        .get_metric_spec(scaled_object(&[("model", "irisa0")]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("target"), "{}", bad.message());
    let unknown = keda
        .is_active(scaled_object(&[("model", "nope"), ("target", "1")]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // traffic stops: the stream reports the change to inactive
    let (_, failures) = load.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    let next = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("StreamIsActive sent no change after the traffic stopped");
    assert!(!next.unwrap().unwrap().result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custom_metrics_listener_uses_given_certificates_and_requires_client_certificates() {
    let dir = tempdir("k8s-tls-certs");
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let client = rcgen::generate_simple_self_signed(vec!["front-proxy-client".to_owned()]).unwrap();
    std::fs::write(dir.join("tls.crt"), server.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), server.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("client-ca.crt"), client.cert.pem()).unwrap();
    let arg = |f: &str| dir.join(f).display().to_string();
    let up = Up::start(
        "k8s-tls",
        &[
            "--custom-metrics-addr",
            "127.0.0.1:0",
            "--tls-cert-file",
            &arg("tls.crt"),
            "--tls-key-file",
            &arg("tls.key"),
            "--client-ca-file",
            &arg("client-ca.crt"),
        ],
    )
    .await;
    let base = up.endpoints.custom_metrics.clone().unwrap();
    let trusted = || {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(server.cert.pem().as_bytes()).unwrap(),
            )
    };
    // the server certificate is the given one (verified against it), but no client cert
    let anonymous = trusted().build().unwrap();
    let err = anonymous
        .get(format!("{base}/apis/custom.metrics.k8s.io/v1beta2"))
        .send()
        .await;
    assert!(
        err.is_err(),
        "a client without a certificate was served: {err:?}"
    );
    // with the aggregator's client certificate
    let pem = format!(
        "{}{}",
        client.cert.pem(),
        client.signing_key.serialize_pem()
    );
    let aggregator = trusted()
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let (code, list) = get(&aggregator, &base, "/apis/custom.metrics.k8s.io/v1beta2").await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "APIResourceList");
    // a client certificate from another CA is refused
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".to_owned()]).unwrap();
    let pem = format!(
        "{}{}",
        stranger.cert.pem(),
        stranger.signing_key.serialize_pem()
    );
    let other = trusted()
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(other
        .get(format!("{base}/apis/custom.metrics.k8s.io/v1beta2"))
        .send()
        .await
        .is_err());
}
