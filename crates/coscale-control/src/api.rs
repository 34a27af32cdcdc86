//! The control plane's REST/JSON API (`/api/v1/...`), authenticated with the bearer
//! token, plus `/metrics` (also authenticated) and `/healthz` (open).

use axum::extract::{DefaultBodyLimit, Path, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coscale_api::rest::{
    ApplyResponse, ErrorResponse, ManifestRequest, ModelStatus, ObjectResult, ServerConfigStatus,
    ServerStatus,
};
use coscale_core::resources::{parse_manifests, Resource};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::service::{now_millis, ControlPlane};
use crate::state::{Persist, State};

/// Largest manifest body accepted by apply/delete.
const MANIFEST_BODY_LIMIT: usize = 8 << 20;

/// Every failure of the API, mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid {
        message: String,
        details: Vec<String>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        details: Vec<String>,
    },
    #[error("{0}")]
    Unauthorized(crate::auth::AuthError),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let details = match &self {
            ApiError::Invalid { details, .. } | ApiError::Conflict { details, .. } => {
                details.clone()
            }
            _ => Vec::new(),
        };
        (
            status,
            Json(ErrorResponse {
                error: self.to_string(),
                details,
            }),
        )
            .into_response()
    }
}

/// The API router.
pub fn router(cp: ControlPlane) -> Router {
    let authed = Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/delete", post(delete_manifest))
        .route("/api/v1/models", get(list_models))
        .route("/api/v1/models/{name}", get(get_model).delete(delete_model))
        .route("/api/v1/servers", get(list_servers))
        .route(
            "/api/v1/servers/{name}",
            get(get_server).delete(delete_server),
        )
        .route("/api/v1/serverconfigs", get(list_configs))
        .route(
            "/api/v1/serverconfigs/{name}",
            get(get_config).delete(delete_config),
        )
        .route("/api/v1/routes", get(routes))
        .route("/metrics", get(metrics))
        .merge(crate::custom_metrics::routes())
        .layer(middleware::from_fn_with_state(cp.clone(), auth))
        .layer(DefaultBodyLimit::max(MANIFEST_BODY_LIMIT));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(authed)
        .with_state(cp)
}

async fn auth(
    AxState(cp): AxState<ControlPlane>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match cp.authenticate(presented).await {
        Ok(_) => next.run(req).await,
        Err(e) => ApiError::Unauthorized(e).into_response(),
    }
}

fn parse(req: &ManifestRequest) -> Result<Vec<Resource>, ApiError> {
    let mut resources =
        parse_manifests(&req.source, &req.text).map_err(|errs| ApiError::Invalid {
            message: format!("{} is invalid: nothing was applied", req.source),
            details: errs.0.iter().map(|e| e.to_string()).collect(),
        })?;
    if let Some(base) = &req.base_dir {
        for r in &mut resources {
            if let Resource::Model(m) = r {
                m.spec.storage_uri = resolve_relative(&m.spec.storage_uri, base);
            }
        }
    }
    Ok(resources)
}

/// `file://rel/path` and `rel/path` become `file:///base/rel/path`; anything else
/// (absolute paths, remote schemes) is kept as written.
pub fn resolve_relative(uri: &str, base: &str) -> String {
    let rel = match uri.strip_prefix("file://") {
        Some(rest) => rest,
        None if !uri.contains("://") => uri,
        None => return uri.to_owned(),
    };
    if rel.starts_with('/') || rel.is_empty() {
        return uri.to_owned();
    }
    let mut path = std::path::PathBuf::from(base);
    for part in std::path::Path::new(rel).components() {
        match part {
            std::path::Component::ParentDir => {
                path.pop();
            }
            std::path::Component::CurDir => {}
            other => path.push(other),
        }
    }
    format!("file://{}", path.display())
}

/// Cross-object checks that need the current state: every Server's ServerConfig
/// must exist (already, or in the same request).
fn check_references(state: &State, resources: &[Resource], source: &str) -> Result<(), ApiError> {
    let mut details = Vec::new();
    for r in resources {
        if let Resource::Server(s) = r {
            let in_batch = resources
                .iter()
                .any(|o| matches!(o, Resource::ServerConfig(c) if c.name == s.server_config));
            if !in_batch && !state.config_exists(&s.server_config) {
                details.push(format!(
                    "{source}: Server {:?}: spec.serverConfig: ServerConfig {:?} does not exist (built in: builtin, mlserver, triton)",
                    s.name.as_str(),
                    s.server_config
                ));
            }
        }
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            message: format!("{source} refers to missing objects: nothing was applied"),
            details,
        })
    }
}

/// Refuses a batch that names a Model, Server or ServerConfig a manifest of another namespace
/// defined (coscale's names are cluster-wide, Kubernetes' namespaced; an object without a
/// namespace, or stored without one, claims none). Made under the state lock with the apply or
/// delete it guards, so two namespaces cannot both take one name; nothing of the batch is
/// `done` when one object is refused.
fn check_namespaces(
    state: &State,
    resources: &[Resource],
    source: &str,
    done: &str,
) -> Result<(), ApiError> {
    let details: Vec<String> = resources
        .iter()
        .filter_map(|r| {
            let ours = r.meta().namespace.as_deref()?;
            let owner = state.held_by_namespace(r.kind(), r.name())?;
            (owner != ours).then(|| coscale_api::rest::name_taken(r.kind(), r.name(), owner))
        })
        .collect();
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Conflict {
            message: format!("{source} names objects another namespace holds: nothing was {done}"),
            details,
        })
    }
}

/// Order of application: ServerConfigs, then Servers, then Models.
fn rank(r: &Resource) -> u8 {
    match r {
        Resource::ServerConfig(_) => 0,
        Resource::Server(_) => 1,
        Resource::Model(_) => 2,
        Resource::Hpa(_) => 3,
    }
}

fn preview(state: &State, r: &Resource) -> &'static str {
    let same = match r {
        Resource::Model(m) => state
            .models
            .get(&m.name)
            .map(|rec| !rec.deleted && rec.model == *m),
        Resource::Server(s) => state.servers.get(&s.name).map(|rec| rec.server == *s),
        Resource::ServerConfig(c) => state.configs.get(&c.name).map(|rec| rec.config == *c),
        Resource::Hpa(h) => state.hpa_unchanged(h),
    };
    match same {
        None => "created",
        Some(true) => "unchanged",
        Some(false) => "configured",
    }
}

fn warnings_for(r: &Resource) -> Vec<String> {
    match r {
        Resource::Model(m)
            if m.spec.storage_uri.starts_with("gs://")
                || m.spec.storage_uri.starts_with("s3://")
                || m.spec.storage_uri.starts_with("https://") =>
        {
            vec![format!(
                "storageUri {} is remote; local mode loads file:// URIs and paths only, so this model will fail to load",
                m.spec.storage_uri
            )]
        }
        _ => Vec::new(),
    }
}

/// Size in bytes of a local artifact (`file://` URI or path: a file, or a folder's
/// files); None for remote URIs or missing paths.
fn local_artifact_size(uri: &str) -> Option<u64> {
    fn size(p: &std::path::Path) -> u64 {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => m.len(),
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| size(&e.path()))
                        .fold(0u64, u64::saturating_add)
                })
                .unwrap_or(0),
            _ => 0,
        }
    }
    let path = match uri.strip_prefix("file://") {
        Some(p) => p,
        None if !uri.contains("://") => uri,
        None => return None,
    };
    let p = std::path::Path::new(path);
    p.exists().then(|| size(p))
}

async fn apply(
    AxState(cp): AxState<ControlPlane>,
    Json(req): Json<ManifestRequest>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let mut resources = parse(&req)?;
    let sizes: std::collections::BTreeMap<String, Option<u64>> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Model(m) if m.spec.memory_bytes.is_none() => {
                Some((m.name.to_string(), local_artifact_size(&m.spec.storage_uri)))
            }
            _ => None,
        })
        .collect();
    resources.sort_by_key(rank);
    let now = now_millis();
    let mut results = Vec::new();
    let mut changes = Vec::new();
    {
        let mut st = cp.state();
        check_references(&st, &resources, &req.source)?;
        check_namespaces(&st, &resources, &req.source, "applied")?;
        for r in resources {
            let kind = r.kind().to_owned();
            let name = r.name().to_owned();
            let mut warnings = warnings_for(&r);
            warnings.extend(st.hpa_warnings(&r));
            let action = if req.dry_run {
                preview(&st, &r)
            } else {
                let (action, change) = match r {
                    Resource::Model(m) => {
                        let name = m.name.clone();
                        let (action, change) = st.apply_model(m, now);
                        let size = sizes.get(name.as_str()).copied().flatten();
                        let estimate = st.record_artifact_size(&name, size);
                        (action, estimate.or(change))
                    }
                    Resource::Server(s) => st.apply_server(s, now),
                    Resource::ServerConfig(c) => st.apply_config(c, now),
                    Resource::Hpa(h) => st.apply_hpa(*h, now),
                };
                changes.extend(change);
                action
            };
            results.push(ObjectResult {
                kind,
                name,
                action: action.to_owned(),
                warnings,
            });
        }
    }
    cp.commit(&changes)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(ApplyResponse {
        dry_run: req.dry_run,
        results,
    }))
}

fn delete_one(st: &mut State, kind: &str, name: &str, now: u64) -> Option<Persist> {
    match kind {
        "Model" => st.delete_model(name, now),
        "Server" => st.delete_server(name, now),
        "HorizontalPodAutoscaler" => st.delete_hpa(name),
        _ => st.delete_config(name),
    }
}

async fn delete_manifest(
    AxState(cp): AxState<ControlPlane>,
    Json(req): Json<ManifestRequest>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let resources = parse(&req)?;
    let now = now_millis();
    let mut results = Vec::new();
    let mut changes = Vec::new();
    {
        let mut st = cp.state();
        check_namespaces(&st, &resources, &req.source, "deleted")?;
        for r in resources.iter().rev() {
            let change = if req.dry_run {
                None
            } else {
                delete_one(&mut st, r.kind(), r.name(), now)
            };
            let action = if change.is_some() || req.dry_run {
                "deleted"
            } else {
                "not found"
            };
            changes.extend(change);
            results.push(ObjectResult {
                kind: r.kind().to_owned(),
                name: r.name().to_owned(),
                action: action.to_owned(),
                warnings: Vec::new(),
            });
        }
    }
    cp.commit(&changes)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(ApplyResponse {
        dry_run: req.dry_run,
        results,
    }))
}

async fn delete_by_name(
    cp: ControlPlane,
    kind: &'static str,
    name: String,
) -> Result<Json<ApplyResponse>, ApiError> {
    let change = delete_one(&mut cp.state(), kind, &name, now_millis())
        .ok_or_else(|| ApiError::NotFound(format!("{kind} {name:?} not found")))?;
    cp.commit(&[change])
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(ApplyResponse {
        dry_run: false,
        results: vec![ObjectResult {
            kind: kind.to_owned(),
            name,
            action: "deleted".to_owned(),
            warnings: Vec::new(),
        }],
    }))
}

async fn delete_model(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<ApplyResponse>, ApiError> {
    delete_by_name(cp, "Model", name).await
}

async fn delete_server(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<ApplyResponse>, ApiError> {
    delete_by_name(cp, "Server", name).await
}

async fn delete_config(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<ApplyResponse>, ApiError> {
    // A built-in name nobody applied is there, but not to be deleted: say so rather than 404.
    let built_in = crate::configs::builtin(&name).map(|_| name.clone());
    delete_by_name(cp, "ServerConfig", name)
        .await
        .map_err(|err| match (err, built_in) {
            (ApiError::NotFound(_), Some(name)) => ApiError::Invalid {
                message: format!(
                    "ServerConfig {name:?} is built in and cannot be deleted (only an applied ServerConfig of that name could be)"
                ),
                details: Vec::new(),
            },
            (err, _) => err,
        })
}

async fn list_models(AxState(cp): AxState<ControlPlane>) -> Json<Vec<ModelStatus>> {
    Json(cp.state().model_statuses())
}

async fn get_model(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<ModelStatus>, ApiError> {
    cp.state()
        .model_status(&name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("Model {name:?} not found")))
}

async fn list_servers(AxState(cp): AxState<ControlPlane>) -> Json<Vec<ServerStatus>> {
    Json(cp.state().server_statuses())
}

async fn get_server(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<ServerStatus>, ApiError> {
    cp.state()
        .server_status(&name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("Server {name:?} not found")))
}

async fn list_configs(AxState(cp): AxState<ControlPlane>) -> Json<Vec<ServerConfigStatus>> {
    Json(cp.state().config_statuses())
}

async fn get_config(
    AxState(cp): AxState<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<ServerConfigStatus>, ApiError> {
    cp.state()
        .config_status(&name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("ServerConfig {name:?} not found")))
}

async fn routes(AxState(cp): AxState<ControlPlane>) -> Json<coscale_api::routing::RoutingTable> {
    Json((*cp.routes().borrow()).as_ref().clone())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ServerLabel {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DecisionLabel {
    kind: String,
    direction: String,
    reason: String,
}

/// `coscale_control_*` gauges, computed from the state at scrape time.
async fn metrics(AxState(cp): AxState<ControlPlane>) -> Result<Response, ApiError> {
    let mut registry = Registry::default();
    let models = Family::<StateLabel, Gauge>::default();
    let desired = Family::<ServerLabel, Gauge>::default();
    let ready = Family::<ServerLabel, Gauge>::default();
    let model_desired = Family::<ModelLabel, Gauge>::default();
    let model_available = Family::<ModelLabel, Gauge>::default();
    let model_inflight = Family::<ModelLabel, Gauge>::default();
    let decisions =
        Family::<DecisionLabel, prometheus_client::metrics::counter::Counter>::default();
    {
        let st = cp.state();
        for m in st.model_statuses() {
            let l = ModelLabel {
                model: m.name.clone(),
            };
            model_desired
                .get_or_create(&l)
                .set(i64::from(m.desired_replicas));
            model_available
                .get_or_create(&l)
                .set(i64::from(m.available_replicas));
            let (inflight, _) =
                st.model_load(&coscale_core::ids::ModelName::new(m.name), m.version);
            model_inflight.get_or_create(&l).set(i64::from(inflight));
        }
        for ((kind, direction, reason), n) in &st.autoscale.decisions {
            decisions
                .get_or_create(&DecisionLabel {
                    kind: (*kind).to_owned(),
                    direction: (*direction).to_owned(),
                    reason: (*reason).to_owned(),
                })
                .inc_by(*n);
        }
        for (state, n) in st.model_state_counts() {
            models
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for s in st.server_statuses() {
            let l = ServerLabel { server: s.name };
            desired.get_or_create(&l).set(i64::from(s.desired_replicas));
            ready.get_or_create(&l).set(i64::from(s.ready_replicas));
        }
    }
    registry.register("coscale_control_models", "Models by state", models);
    registry.register(
        "coscale_server_desired_replicas",
        "Desired server replicas",
        desired,
    );
    registry.register(
        "coscale_model_desired_replicas",
        "Desired model replicas (manifest or autoscaler)",
        model_desired,
    );
    registry.register(
        "coscale_model_available_replicas",
        "Available model replicas",
        model_available,
    );
    registry.register(
        "coscale_model_inflight_requests",
        "Requests in flight over a model's replicas (the inference lag)",
        model_inflight,
    );
    registry.register(
        "coscale_autoscaler_decisions",
        "Autoscaling decisions by kind, direction and reason",
        decisions,
    );
    registry.register(
        "coscale_server_ready_replicas",
        "Server replicas connected and ready",
        ready,
    );
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
