//! HTTP endpoints of the HPA feature, merged into the authenticated API router:
//!
//! - `/apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/RESOURCE/NAME/METRIC` and
//!   `/apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/metrics/METRIC`: metric values
//!   in the Kubernetes custom metrics API's shape (`MetricValueList`), with
//!   `?metricLabelSelector=a=b,c=d` and `?source=builtin|prometheus` (default: the
//!   configured source). RESOURCE is `models.mlops.seldon.io`, `servers.mlops.seldon.io`
//!   or `pods` (server replicas, `SERVER-INDEX`).
//! - `/api/v1/hpas`, `/api/v1/hpas/NAME` (GET, DELETE): HPA status for the CLI.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State as AxState};
use axum::routing::get;
use axum::{Json, Router};
use coscale_api::rest::{ApplyResponse, ObjectResult};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::hpa_controller::{Described, HpaStatus, MetricRequest, Source};
use crate::service::{now_millis, ControlPlane};

/// The routes of this module (authenticated by the caller's layer).
pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/api/v1/hpas", get(list_hpas))
        .route("/api/v1/hpas/{name}", get(get_hpa).delete(delete_hpa))
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/metrics/{metric}",
            get(namespace_metric),
        )
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/{resource}/{name}/{metric}",
            get(object_metric),
        )
}

async fn list_hpas(AxState(cp): AxState<ControlPlane>) -> Json<Vec<HpaStatus>> {
    Json(cp.state().hpa_statuses())
}

async fn get_hpa(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<HpaStatus>, ApiError> {
    cp.state()
        .hpa_status(&name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("HorizontalPodAutoscaler {name:?} not found")))
}

async fn delete_hpa(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let change = cp
        .state()
        .delete_hpa(&name)
        .ok_or_else(|| ApiError::NotFound(format!("HorizontalPodAutoscaler {name:?} not found")))?;
    cp.commit(&[change])
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(ApplyResponse {
        dry_run: false,
        results: vec![ObjectResult {
            kind: "HorizontalPodAutoscaler".to_owned(),
            name,
            action: "deleted".to_owned(),
            warnings: Vec::new(),
        }],
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricQuery {
    #[serde(default)]
    metric_label_selector: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DescribedObject {
    kind: String,
    namespace: String,
    name: String,
    api_version: String,
}

#[derive(Debug, Serialize)]
struct MetricIdentifier {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricValue {
    described_object: DescribedObject,
    metric: MetricIdentifier,
    timestamp: String,
    window_seconds: u64,
    value: String,
}

/// `custom.metrics.k8s.io/v1beta2` `MetricValueList`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueList {
    kind: &'static str,
    api_version: &'static str,
    metadata: serde_json::Value,
    items: Vec<MetricValue>,
}

fn parse_selector(text: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for part in text
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (k, v) = part.split_once('=').ok_or_else(|| ApiError::Invalid {
            message: format!("metricLabelSelector {part:?} is not key=value"),
            details: Vec::new(),
        })?;
        out.insert(
            k.trim().to_owned(),
            v.trim().trim_start_matches('=').to_owned(),
        );
    }
    Ok(out)
}

/// RFC 3339 UTC time of Unix milliseconds (days-from-civil, Howard Hinnant).
fn rfc3339(unix_millis: u64) -> String {
    let secs = unix_millis / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn answer(
    cp: ControlPlane,
    request: MetricRequest,
    object: DescribedObject,
    source: Option<String>,
) -> Result<Json<MetricValueList>, ApiError> {
    let source = match source.as_deref() {
        None | Some("") => Source::Configured,
        Some("builtin") => Source::Builtin,
        Some("prometheus") => Source::Prometheus,
        Some(other) => {
            return Err(ApiError::Invalid {
                message: format!("source {other:?}: use builtin or prometheus"),
                details: Vec::new(),
            })
        }
    };
    let window_seconds = match (source, &cp.config().hpa.prometheus) {
        (Source::Builtin, _) | (Source::Configured, None) => {
            cp.config().hpa.metrics_window.as_secs()
        }
        _ => 0,
    };
    let values = cp
        .metric_values(std::slice::from_ref(&request), source)
        .await
        .map_err(|e| ApiError::Invalid {
            message: e,
            details: Vec::new(),
        })?;
    let value = values
        .get(&request)
        .cloned()
        .unwrap_or_else(|| Err("not fetched".to_owned()))
        .map_err(|e| {
            ApiError::NotFound(format!(
                "metric {} for {} {}: {e}",
                request.metric, object.kind, object.name
            ))
        })?;
    let selector = (!request.selector.is_empty())
        .then(|| serde_json::json!({ "matchLabels": request.selector }));
    let milli = (value * 1000.0).round();
    let quantity = coscale_core::quantity::Quantity::from_milli(
        milli.clamp(i64::MIN as f64, i64::MAX as f64) as i64,
    );
    Ok(Json(MetricValueList {
        kind: "MetricValueList",
        api_version: "custom.metrics.k8s.io/v1beta2",
        metadata: serde_json::json!({}),
        items: vec![MetricValue {
            described_object: object,
            metric: MetricIdentifier {
                name: request.metric.clone(),
                selector,
            },
            timestamp: rfc3339(now_millis()),
            window_seconds,
            value: quantity.to_string(),
        }],
    }))
}

async fn object_metric(
    AxState(cp): AxState<ControlPlane>,
    Path((ns, resource, name, metric)): Path<(String, String, String, String)>,
    Query(q): Query<MetricQuery>,
) -> Result<Json<MetricValueList>, ApiError> {
    let (described, kind, api_version) = match resource.as_str() {
        "models.mlops.seldon.io" | "models" => (
            Described::Model(name.clone()),
            "Model",
            coscale_core::resources::SELDON_API_VERSION,
        ),
        "servers.mlops.seldon.io" | "servers" => (
            Described::Server(name.clone()),
            "Server",
            coscale_core::resources::SELDON_API_VERSION,
        ),
        "pods" => (Described::Pod(name.clone()), "Pod", "v1"),
        other => {
            return Err(ApiError::NotFound(format!(
                "resource {other:?}: use models.mlops.seldon.io, servers.mlops.seldon.io or pods"
            )))
        }
    };
    let request = MetricRequest {
        metric,
        namespace: ns.clone(),
        described,
        selector: parse_selector(q.metric_label_selector.as_deref())?,
    };
    let object = DescribedObject {
        kind: kind.to_owned(),
        namespace: ns,
        name,
        api_version: api_version.to_owned(),
    };
    answer(cp, request, object, q.source).await
}

async fn namespace_metric(
    AxState(cp): AxState<ControlPlane>,
    Path((ns, metric)): Path<(String, String)>,
    Query(q): Query<MetricQuery>,
) -> Result<Json<MetricValueList>, ApiError> {
    let request = MetricRequest {
        metric,
        namespace: ns.clone(),
        described: Described::Namespace,
        selector: parse_selector(q.metric_label_selector.as_deref())?,
    };
    let object = DescribedObject {
        kind: "Namespace".to_owned(),
        namespace: ns.clone(),
        name: ns,
        api_version: "v1".to_owned(),
    };
    answer(cp, request, object, q.source).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_833_667_000), "2026-11-28T02:41:07Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn metric_label_selectors_are_key_value_pairs() {
        let s = parse_selector(Some("method_type=rest,server==mlserver")).unwrap();
        assert_eq!(s["method_type"], "rest");
        assert_eq!(s["server"], "mlserver");
        assert!(parse_selector(Some("nonsense")).is_err());
        assert!(parse_selector(None).unwrap().is_empty());
    }
}
