//! HTTP endpoints of the HPA feature:
//!
//! - The Kubernetes custom metrics API, `custom.metrics.k8s.io` `v1beta1` and
//!   `v1beta2` (the shapes of `k8s.io/metrics/pkg/apis/custom_metrics`), served on the
//!   authenticated API port and on the TLS listener of `--custom-metrics-addr` that an
//!   `APIService` points at:
//!   - discovery: `/apis` (APIGroupList), `/apis/custom.metrics.k8s.io` (APIGroup),
//!     `/apis/custom.metrics.k8s.io/VERSION` (APIResourceList: `RESOURCE/METRIC` for
//!     `models.mlops.seldon.io`, `servers.mlops.seldon.io`, `pods` and `namespaces`);
//!   - `/apis/custom.metrics.k8s.io/VERSION/namespaces/NS/RESOURCE/NAME/METRIC`, where
//!     NAME `*` lists every object matching `?labelSelector=` (the HPA's Pods metric);
//!   - `/apis/custom.metrics.k8s.io/VERSION/namespaces/NS/metrics/METRIC` (the
//!     namespace as the described object);
//!   - `?metricLabelSelector=a=b,c=d` and `?source=builtin|prometheus`.
//!
//!   RESOURCE is `models.mlops.seldon.io`, `servers.mlops.seldon.io` or `pods` (server
//!   replicas, `SERVER-INDEX`). Errors are `metav1.Status` objects.
//! - `/api/v1/hpas`, `/api/v1/hpas/NAME` (GET, DELETE): HPA status for the CLI.
//!
//! [`object_values`] is the one place values are computed; the KEDA external scaler
//! uses it too.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use coscale_api::rest::{ApplyResponse, ObjectResult};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::hpa_controller::{pod_name, quantity, Described, HpaStatus, MetricRequest, Source};
use crate::metrics_store::MetricName;
use crate::service::{now_millis, ControlPlane};

/// The API group.
pub const GROUP: &str = "custom.metrics.k8s.io";
/// Served versions, preferred first.
pub const VERSIONS: [&str; 2] = ["v1beta2", "v1beta1"];

/// The HPA status routes (authenticated by the caller's layer).
pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/api/v1/hpas", get(list_hpas))
        .route("/api/v1/hpas/{name}", get(get_hpa).delete(delete_hpa))
        .merge(api_routes())
}

/// The custom metrics API routes (discovery included).
pub fn api_routes() -> Router<ControlPlane> {
    Router::new()
        .route("/apis", get(group_list))
        .route("/apis/custom.metrics.k8s.io", get(group))
        .route("/apis/custom.metrics.k8s.io/{version}", get(resource_list))
        .route(
            "/apis/custom.metrics.k8s.io/{version}/namespaces/{ns}/metrics/{metric}",
            get(namespace_metric),
        )
        .route(
            "/apis/custom.metrics.k8s.io/{version}/namespaces/{ns}/{resource}/{name}/{metric}",
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

/// A Kubernetes `metav1.Status` error.
#[derive(Debug)]
pub struct StatusError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl StatusError {
    fn not_found(message: String) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message,
        }
    }

    fn bad_request(message: String) -> Self {
        Self {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message,
        }
    }
}

impl IntoResponse for StatusError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        (self.code, Json(body)).into_response()
    }
}

impl From<ApiError> for StatusError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound(m) => Self::not_found(m),
            other => Self::bad_request(other.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricQuery {
    #[serde(default)]
    label_selector: Option<String>,
    #[serde(default)]
    metric_label_selector: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// `core/v1` `ObjectReference` of the described object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribedObject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub api_version: String,
}

/// One value of a metric for one object, whatever the API version.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectValue {
    pub object: DescribedObject,
    pub metric: String,
    /// The metric label selector (`matchLabels`), empty when none.
    pub selector: BTreeMap<String, String>,
    pub unix_millis: u64,
    pub window_seconds: u64,
    pub value: f64,
}

/// The kinds of object metrics are served for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Model,
    Server,
    Pod,
}

impl ObjectKind {
    /// From a custom metrics API resource (`models.mlops.seldon.io`, `pods`, ...).
    pub fn from_resource(resource: &str) -> Option<Self> {
        match resource {
            "models.mlops.seldon.io" | "models" => Some(Self::Model),
            "servers.mlops.seldon.io" | "servers" => Some(Self::Server),
            "pods" | "pod" => Some(Self::Pod),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Model => "Model",
            Self::Server => "Server",
            Self::Pod => "Pod",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Model | Self::Server => coscale_core::resources::SELDON_API_VERSION,
            Self::Pod => "v1",
        }
    }

    fn described(self, name: &str) -> Described {
        match self {
            Self::Model => Described::Model(name.to_owned()),
            Self::Server => Described::Server(name.to_owned()),
            Self::Pod => Described::Pod(name.to_owned()),
        }
    }
}

/// Which objects a query covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Objects {
    /// One object by name.
    Named(ObjectKind, String),
    /// Every object of a kind whose labels match (`*` with `labelSelector`).
    Matching(ObjectKind, LabelSelector),
    /// The namespace itself.
    Namespace,
}

/// A parsed Kubernetes label selector (`a=b,c!=d,e in (f,g),h,!i`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    /// Parses the string form; an error names the part that is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut depth = 0i32;
        let mut cur = String::new();
        for c in text.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if c == ',' && depth == 0 {
                parts.push(std::mem::take(&mut cur));
            } else {
                cur.push(c);
            }
        }
        parts.push(cur);
        let mut reqs = Vec::new();
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            reqs.push(Self::requirement(part).ok_or_else(|| {
                format!("labelSelector {text:?}: {part:?} is not a label requirement")
            })?);
        }
        Ok(Self(reqs))
    }

    fn requirement(part: &str) -> Option<Requirement> {
        let set = |rest: &str| -> Option<Vec<String>> {
            let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some(
                inner
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect(),
            )
        };
        if let Some((k, v)) = part.split_once("!=") {
            return Some(Requirement::NotEquals(
                k.trim().to_owned(),
                v.trim().to_owned(),
            ));
        }
        if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            return Some(Requirement::Equals(
                k.trim().to_owned(),
                v.trim().to_owned(),
            ));
        }
        if let Some((k, rest)) = part.split_once(" notin ") {
            return Some(Requirement::NotIn(k.trim().to_owned(), set(rest)?));
        }
        if let Some((k, rest)) = part.split_once(" in ") {
            return Some(Requirement::In(k.trim().to_owned(), set(rest)?));
        }
        if let Some(k) = part.strip_prefix('!') {
            return Some(Requirement::NotExists(k.trim().to_owned()));
        }
        let valid = part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        valid.then(|| Requirement::Exists(part.to_owned()))
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Labels of a server replica's pod, as the operator's StatefulSet sets them.
pub fn pod_labels(server: &str, pod: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "coscale".to_owned(),
        ),
        ("mlops.seldon.io/server".to_owned(), server.to_owned()),
        (
            "statefulset.kubernetes.io/pod-name".to_owned(),
            pod.to_owned(),
        ),
    ])
}

/// Names of the objects of a kind in a namespace that a selector matches.
fn matching_names(
    cp: &ControlPlane,
    kind: ObjectKind,
    namespace: &str,
    selector: &LabelSelector,
) -> Vec<String> {
    let st = cp.state();
    let in_ns = |meta: &coscale_core::resources::Meta| {
        meta.namespace.as_deref().is_none_or(|ns| ns == namespace)
    };
    match kind {
        ObjectKind::Model => st
            .models
            .values()
            .filter(|r| {
                !r.deleted && in_ns(&r.model.meta) && selector.matches(&r.model.meta.labels)
            })
            .map(|r| r.model.name.to_string())
            .collect(),
        ObjectKind::Server => st
            .servers
            .values()
            .filter(|r| in_ns(&r.server.meta) && selector.matches(&r.server.meta.labels))
            .map(|r| r.server.name.to_string())
            .collect(),
        ObjectKind::Pod => st
            .connected_keys()
            .into_iter()
            .filter(|(s, _)| st.servers.get(s).is_some_and(|r| in_ns(&r.server.meta)))
            .map(|(s, i)| (s.to_string(), pod_name(&s, i)))
            .filter(|(s, pod)| selector.matches(&pod_labels(s, pod)))
            .map(|(_, pod)| pod)
            .collect(),
    }
}

fn parse_source(source: Option<&str>) -> Result<Source, String> {
    match source {
        None | Some("") => Ok(Source::Configured),
        Some("builtin") => Ok(Source::Builtin),
        Some("prometheus") => Ok(Source::Prometheus),
        Some(other) => Err(format!("source {other:?}: use builtin or prometheus")),
    }
}

/// The values of one metric for the objects of a query: one item per object that has
/// a value (a named object without one is an error; `*` skips objects without one).
pub async fn object_values(
    cp: &ControlPlane,
    namespace: &str,
    objects: &Objects,
    metric: &str,
    metric_selector: BTreeMap<String, String>,
    source: Source,
) -> Result<Vec<ObjectValue>, StatusError> {
    if MetricName::parse(metric).is_none() && cp.config().hpa.prometheus.is_none() {
        let known: Vec<&str> = MetricName::ALL.iter().map(|(n, _)| *n).collect();
        return Err(StatusError::not_found(format!(
            "metric {metric:?} is not served; built-in metrics: {}",
            known.join(", ")
        )));
    }
    let targets: Vec<(Described, DescribedObject)> = match objects {
        Objects::Named(kind, name) => vec![(
            kind.described(name),
            DescribedObject {
                kind: kind.kind().to_owned(),
                namespace: namespace.to_owned(),
                name: name.clone(),
                api_version: kind.api_version().to_owned(),
            },
        )],
        Objects::Matching(kind, selector) => matching_names(cp, *kind, namespace, selector)
            .into_iter()
            .map(|name| {
                (
                    kind.described(&name),
                    DescribedObject {
                        kind: kind.kind().to_owned(),
                        namespace: namespace.to_owned(),
                        name,
                        api_version: kind.api_version().to_owned(),
                    },
                )
            })
            .collect(),
        Objects::Namespace => vec![(
            Described::Namespace,
            DescribedObject {
                kind: "Namespace".to_owned(),
                namespace: namespace.to_owned(),
                name: namespace.to_owned(),
                api_version: "v1".to_owned(),
            },
        )],
    };
    let requests: Vec<MetricRequest> = targets
        .iter()
        .map(|(d, _)| MetricRequest {
            metric: metric.to_owned(),
            namespace: namespace.to_owned(),
            described: d.clone(),
            selector: metric_selector.clone(),
        })
        .collect();
    let window_seconds = match (source, &cp.config().hpa.prometheus) {
        (Source::Builtin, _) | (Source::Configured, None) => {
            cp.config().hpa.metrics_window.as_secs()
        }
        _ => 0,
    };
    let values = cp
        .metric_values(&requests, source)
        .await
        .map_err(StatusError::bad_request)?;
    let now = now_millis();
    let mut out = Vec::new();
    for (request, (_, object)) in requests.iter().zip(targets) {
        match values
            .get(request)
            .cloned()
            .unwrap_or_else(|| Err("not fetched".to_owned()))
        {
            Ok(value) => out.push(ObjectValue {
                object,
                metric: metric.to_owned(),
                selector: metric_selector.clone(),
                unix_millis: now,
                window_seconds,
                value,
            }),
            Err(e) if matches!(objects, Objects::Named(..) | Objects::Namespace) => {
                return Err(StatusError::not_found(format!(
                    "metric {metric} for {} {}: {e}",
                    object.kind, object.name
                )))
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

/// `matchLabels` of a metric selector, or JSON null (Go's nil `*LabelSelector`).
fn selector_json(selector: &BTreeMap<String, String>) -> serde_json::Value {
    if selector.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!({ "matchLabels": selector })
    }
}

/// A `MetricValueList` of the given version.
pub fn value_list(version: &str, items: &[ObjectValue]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|v| {
            let mut item = serde_json::json!({
                "describedObject": v.object,
                "timestamp": rfc3339(v.unix_millis),
                "value": quantity(v.value).to_string(),
            });
            if version == "v1beta1" {
                item["metricName"] = serde_json::json!(v.metric);
                item["window"] = serde_json::json!(v.window_seconds);
                item["selector"] = selector_json(&v.selector);
            } else {
                item["metric"] = serde_json::json!({
                    "name": v.metric,
                    "selector": selector_json(&v.selector),
                });
                item["windowSeconds"] = serde_json::json!(v.window_seconds);
            }
            item
        })
        .collect();
    serde_json::json!({
        "kind": "MetricValueList",
        "apiVersion": format!("{GROUP}/{version}"),
        "metadata": {},
        "items": items,
    })
}

fn check_version(version: &str) -> Result<(), StatusError> {
    if VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(StatusError::not_found(format!(
            "{GROUP}/{version} is not served; versions: {}",
            VERSIONS.join(", ")
        )))
    }
}

async fn group_list() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group_json()],
    }))
}

fn group_json() -> serde_json::Value {
    let versions: Vec<serde_json::Value> = VERSIONS
        .iter()
        .map(|v| serde_json::json!({ "groupVersion": format!("{GROUP}/{v}"), "version": v }))
        .collect();
    serde_json::json!({
        "name": GROUP,
        "versions": versions,
        "preferredVersion": { "groupVersion": format!("{GROUP}/{}", VERSIONS[0]), "version": VERSIONS[0] },
    })
}

async fn group() -> Json<serde_json::Value> {
    let mut g = group_json();
    g["kind"] = serde_json::json!("APIGroup");
    g["apiVersion"] = serde_json::json!("v1");
    Json(g)
}

/// The `APIResourceList` of a version: one resource per (object kind, metric).
pub fn resources_json(version: &str) -> serde_json::Value {
    let mut resources = Vec::new();
    for (metric, _) in MetricName::ALL {
        for (resource, namespaced) in [
            ("models.mlops.seldon.io", true),
            ("servers.mlops.seldon.io", true),
            ("pods", true),
            ("namespaces", false),
        ] {
            resources.push(serde_json::json!({
                "name": format!("{resource}/{metric}"),
                "singularName": "",
                "namespaced": namespaced,
                "kind": "MetricValueList",
                "verbs": ["get"],
            }));
        }
    }
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{version}"),
        "resources": resources,
    })
}

async fn resource_list(
    Path(version): Path<String>,
) -> Result<Json<serde_json::Value>, StatusError> {
    check_version(&version)?;
    Ok(Json(resources_json(&version)))
}

async fn object_metric(
    AxState(cp): AxState<ControlPlane>,
    Path((version, ns, resource, name, metric)): Path<(String, String, String, String, String)>,
    Query(q): Query<MetricQuery>,
) -> Result<Json<serde_json::Value>, StatusError> {
    check_version(&version)?;
    let kind = ObjectKind::from_resource(&resource).ok_or_else(|| {
        StatusError::not_found(format!(
            "resource {resource:?}: use models.mlops.seldon.io, servers.mlops.seldon.io or pods"
        ))
    })?;
    let objects = if name == "*" {
        let selector = LabelSelector::parse(q.label_selector.as_deref().unwrap_or(""))
            .map_err(StatusError::bad_request)?;
        Objects::Matching(kind, selector)
    } else {
        Objects::Named(kind, name)
    };
    let source = parse_source(q.source.as_deref()).map_err(StatusError::bad_request)?;
    let selector = parse_selector(q.metric_label_selector.as_deref())?;
    let items = object_values(&cp, &ns, &objects, &metric, selector, source).await?;
    Ok(Json(value_list(&version, &items)))
}

async fn namespace_metric(
    AxState(cp): AxState<ControlPlane>,
    Path((version, ns, metric)): Path<(String, String, String)>,
    Query(q): Query<MetricQuery>,
) -> Result<Json<serde_json::Value>, StatusError> {
    check_version(&version)?;
    let source = parse_source(q.source.as_deref()).map_err(StatusError::bad_request)?;
    let selector = parse_selector(q.metric_label_selector.as_deref())?;
    let items = object_values(&cp, &ns, &Objects::Namespace, &metric, selector, source).await?;
    Ok(Json(value_list(&version, &items)))
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
    fn label_selectors_match_like_kubernetes() {
        let labels = pod_labels("mlserver", "mlserver-1");
        let yes = [
            "",
            "mlops.seldon.io/server=mlserver",
            "mlops.seldon.io/server==mlserver,app.kubernetes.io/managed-by=coscale",
            "mlops.seldon.io/server in (a, mlserver)",
            "mlops.seldon.io/server notin (a,b)",
            "statefulset.kubernetes.io/pod-name",
            "!other",
            "mlops.seldon.io/server!=other",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&labels), "{s}");
        }
        let no = [
            "mlops.seldon.io/server=other",
            "mlops.seldon.io/server in (a,b)",
            "other",
            "!mlops.seldon.io/server",
            "mlops.seldon.io/server!=mlserver",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&labels), "{s}");
        }
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("bad key").is_err());
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
