//! The reconcilers: one pass over a Model or a Server, calling the Kubernetes API and the
//! control plane. Every decision comes from `desired.rs`; this file only does the calls,
//! in a fixed order (which the mock-API tests state).

use std::sync::Arc;
use std::time::Duration;

use coscale_api::rest::{ManifestRequest, ModelStatus as ModelStatusApi, ServerConfigStatus};
use coscale_core::resources::Resource;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event};
use kube::{Resource as _, ResourceExt};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::crd::{Model, ModelStatus, Server, ServerConfig, ServerStatus, GROUP, VERSION};
use crate::desired::{self, PodSettings, ServerObservation, FIELD_MANAGER, FINALIZER};
use crate::spec;

/// Everything a reconcile pass needs.
pub struct Context {
    pub kube: kube::Client,
    pub control: coscale_client::Client,
    pub pods: PodSettings,
    /// Where ServerConfigs are looked up when the Server's namespace has none (the
    /// install's namespace, where the default ServerConfigs live).
    pub config_namespace: Option<String>,
    /// How often a Model or Server is looked at again without a change (the control
    /// plane's state and scale decisions are polled).
    pub resync: Duration,
}

/// Why a reconcile pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("control plane: {0:#}")]
    Control(anyhow::Error),
    /// Deletion in progress in the control plane; looked at again shortly.
    #[error("{0}")]
    Pending(String),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// How long until the object is looked at again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::Pending(_) => Duration::from_secs(1),
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::CleanupFailed(Error::Pending(_)) => {
                    Duration::from_secs(1)
                }
                _ => Duration::from_secs(5),
            },
            _ => Duration::from_secs(5),
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn namespace_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn manifest_request(source: String, objects: &[Value]) -> ManifestRequest {
    ManifestRequest {
        source,
        text: Value::Array(objects.to_vec()).to_string(),
        dry_run: false,
        base_dir: None,
    }
}

/// Writes a status with server-side apply on the status subresource.
async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "status": status,
    });
    api.patch_status(name, &ssa(), &Patch::Apply(&body)).await?;
    Ok(())
}

// ---------------------------------------------------------------- Models

/// One pass over a Model (adds the finalizer first; on deletion unloads it).
pub async fn reconcile_model(model: Arc<Model>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Model> = Api::namespaced(ctx.kube.clone(), &namespace_of(&*model));
    finalizer(&api, FINALIZER, model, |event| async {
        match event {
            Event::Apply(m) => apply_model(&api, &m, &ctx).await,
            Event::Cleanup(m) => cleanup_model(&m, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn model_failed(
    api: &Api<Model>,
    model: &Model,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let prev = model.status.clone().unwrap_or_default();
    let status = ModelStatus {
        conditions: desired::failed_conditions(
            &prev.conditions,
            "ModelReady",
            reason,
            message,
            &now(),
        ),
        ..prev
    };
    apply_status(api, &model.name_any(), "Model", &status).await
}

async fn apply_model(api: &Api<Model>, model: &Model, ctx: &Context) -> Result<Action, Error> {
    let name = model.name_any();
    if !spec::k8s_object_name_is_valid(&name) {
        let msg = format!("{name:?} is not a valid Kubernetes object name (DNS-1123 subdomain)");
        model_failed(api, model, "InvalidName", &msg).await?;
        return Ok(Action::await_change());
    }
    if let Err(e) = spec::validate("Model", &model.metadata, &model.spec.fields) {
        model_failed(api, model, "InvalidSpec", &e).await?;
        return Ok(Action::await_change());
    }
    let generation = model.metadata.generation;
    let applied = model.status.as_ref().and_then(|s| s.observed_generation);
    let mut known = ctx
        .control
        .find_model(&name)
        .await
        .map_err(Error::Control)?;
    if let Some(owner) = other_namespace(model_namespace(known.as_ref()), model) {
        let msg = coscale_api::rest::name_taken("Model", &name, owner);
        model_failed(api, model, "NameTaken", &msg).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    if known.is_none() || applied != generation {
        let src = spec::source("Model", &model.metadata);
        let body = spec::manifest("Model", &model.metadata, &model.spec.fields);
        if let Err(e) = ctx.control.apply(&manifest_request(src, &[body])).await {
            let (reason, msg) = apply_failure(&e);
            model_failed(api, model, reason, &msg).await?;
            return Ok(Action::requeue(ctx.resync));
        }
        info!(model = %name, ?generation, "applied to the control plane");
        known = ctx
            .control
            .find_model(&name)
            .await
            .map_err(Error::Control)?;
    }
    let Some(cp) = known else {
        model_failed(
            api,
            model,
            "ControlPlaneUnknown",
            "the control plane has no such model",
        )
        .await?;
        return Ok(Action::requeue(ctx.resync));
    };
    let status = desired::model_status(model.status.as_ref(), &cp, generation, &now());
    if model.status.as_ref() != Some(&status) {
        apply_status(api, &name, "Model", &status).await?;
    }
    Ok(Action::requeue(ctx.resync))
}

/// The namespace `owner` whose manifest defined the control plane's model, server or
/// ServerConfig of `obj`'s name, when it is not `obj`'s (those names are cluster-wide in
/// coscale, namespaced in Kubernetes).
fn other_namespace<'a>(owner: Option<&'a str>, obj: &impl kube::Resource) -> Option<&'a str> {
    let ours = namespace_of(obj);
    owner.filter(|owner| *owner != ours)
}

/// The status reason and message of an apply the control plane refused: `NameTaken` with its
/// words when another namespace took a name between this pass's check and its apply (the
/// control plane checks again under its lock: 409 Conflict), else `ApplyFailed`.
fn apply_failure(e: &anyhow::Error) -> (&'static str, String) {
    match e.downcast_ref::<coscale_client::ApiFailure>() {
        Some(f) if f.status == 409 && !f.details.is_empty() => ("NameTaken", f.details.join("; ")),
        _ => ("ApplyFailed", format!("{e:#}")),
    }
}

/// The namespace of the control plane's model, if a manifest with one defined it.
fn model_namespace(known: Option<&ModelStatusApi>) -> Option<&str> {
    known.and_then(|k| k.namespace.as_deref())
}

/// The namespace in the control plane's record of a Server (`GET /api/v1/servers/NAME`),
/// if a manifest with one defined it.
fn server_namespace(known: Option<&Value>) -> Option<&str> {
    known
        .and_then(|k| k.get("namespace"))
        .and_then(Value::as_str)
}

async fn cleanup_model(model: &Model, ctx: &Context) -> Result<Action, Error> {
    let name = model.name_any();
    let known = ctx
        .control
        .find_model(&name)
        .await
        .map_err(Error::Control)?;
    if known.is_none() {
        info!(model = %name, "gone from the control plane; finalizer removed");
        return Ok(Action::await_change());
    }
    if let Some(owner) = other_namespace(model_namespace(known.as_ref()), model) {
        info!(model = %name, owner, "the control plane's model belongs to another namespace; finalizer removed, model left alone");
        return Ok(Action::await_change());
    }
    let src = spec::source("Model", &model.metadata);
    let body = spec::manifest("Model", &model.metadata, &model.spec.fields);
    ctx.control
        .delete_manifest(&manifest_request(src, &[body]))
        .await
        .map_err(Error::Control)?;
    match ctx
        .control
        .find_model(&name)
        .await
        .map_err(Error::Control)?
    {
        None => Ok(Action::await_change()),
        Some(m) => Err(Error::Pending(format!(
            "model {name} is still in the control plane ({}); waiting for the unload",
            m.state
        ))),
    }
}

// ---------------------------------------------------------------- Servers

/// One pass over a Server (adds the finalizer first; on deletion drains it).
pub async fn reconcile_server(server: Arc<Server>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Server> = Api::namespaced(ctx.kube.clone(), &namespace_of(&*server));
    finalizer(&api, FINALIZER, server, |event| async {
        match event {
            Event::Apply(s) => apply_server(&api, &s, &ctx).await,
            Event::Cleanup(s) => cleanup_server(&s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn server_failed(
    api: &Api<Server>,
    server: &Server,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    warn!(server = %server.name_any(), reason, detail = message, "server not reconciled");
    let prev = server.status.clone().unwrap_or_default();
    let status = ServerStatus {
        conditions: desired::failed_conditions(
            &prev.conditions,
            "StatefulSetReady",
            reason,
            message,
            &now(),
        ),
        ..prev
    };
    apply_status(api, &server.name_any(), "Server", &status).await
}

/// The Server's ServerConfig: in the Server's namespace, else in the install's.
async fn find_server_config(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<ServerConfig>, Error> {
    let local: Api<ServerConfig> = Api::namespaced(ctx.kube.clone(), ns);
    if let Some(c) = local.get_opt(name).await? {
        return Ok(Some(c));
    }
    match &ctx.config_namespace {
        Some(other) if other != ns => {
            let api: Api<ServerConfig> = Api::namespaced(ctx.kube.clone(), other);
            Ok(api.get_opt(name).await?)
        }
        _ => Ok(None),
    }
}

/// The `ServerConfigNameTaken` message when the control plane's ServerConfig named like
/// `config_cr` came from another namespace's manifest (ServerConfig names are cluster-wide
/// in coscale too; applying `config_cr` would overwrite that one).
async fn config_name_taken(
    ctx: &Context,
    config_cr: &ServerConfig,
) -> Result<Option<String>, Error> {
    let name = config_cr.name_any();
    let known: Option<ServerConfigStatus> = ctx
        .control
        .find_json(&format!("/api/v1/serverconfigs/{name}"))
        .await
        .map_err(Error::Control)?;
    let owner = known.as_ref().and_then(|k| k.namespace.as_deref());
    Ok(other_namespace(owner, config_cr).map(|owner| {
        let ours = namespace_of(config_cr);
        format!(
            "ServerConfig {name} is already defined in namespace {owner}; coscale's ServerConfig names are cluster-wide, so namespace {ours}'s is not applied (rename it, or use the other)"
        )
    }))
}

async fn apply_server(api: &Api<Server>, server: &Server, ctx: &Context) -> Result<Action, Error> {
    let name = server.name_any();
    let ns = namespace_of(server);
    let settings = match spec::validate("Server", &server.metadata, &server.spec.fields) {
        Ok(Resource::Server(s)) => s,
        Ok(_) => return Ok(Action::await_change()),
        Err(e) => {
            server_failed(api, server, "InvalidSpec", &e).await?;
            return Ok(Action::await_change());
        }
    };
    let path = format!("/api/v1/servers/{name}");
    let known: Option<Value> = ctx.control.find_json(&path).await.map_err(Error::Control)?;
    if let Some(owner) = other_namespace(server_namespace(known.as_ref()), server) {
        let msg = coscale_api::rest::name_taken("Server", &name, owner);
        server_failed(api, server, "NameTaken", &msg).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    let Some(config_cr) = find_server_config(ctx, &ns, &settings.server_config).await? else {
        let msg = format!("ServerConfig {:?} not found", settings.server_config);
        server_failed(api, server, "ServerConfigNotFound", &msg).await?;
        return Ok(Action::requeue(ctx.resync));
    };
    if let Some(msg) = config_name_taken(ctx, &config_cr).await? {
        server_failed(api, server, "ServerConfigNameTaken", &msg).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    let config = match spec::validate("ServerConfig", &config_cr.metadata, &config_cr.spec.fields) {
        Ok(Resource::ServerConfig(c)) => c,
        Ok(_) => return Ok(Action::await_change()),
        Err(e) => {
            server_failed(api, server, "InvalidServerConfig", &e).await?;
            return Ok(Action::requeue(ctx.resync));
        }
    };
    let src = spec::source("Server", &server.metadata);
    let objects = [
        spec::manifest("ServerConfig", &config_cr.metadata, &config_cr.spec.fields),
        spec::manifest("Server", &server.metadata, &server.spec.fields),
    ];
    if let Err(e) = ctx.control.apply(&manifest_request(src, &objects)).await {
        let (reason, msg) = apply_failure(&e);
        server_failed(api, server, reason, &msg).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    let uid = server.meta().uid.clone().unwrap_or_default();
    let owner = desired::owner(&name, &uid);
    let replicas = settings.scaling.replicas;
    let sts = match desired::statefulset(
        &settings,
        &config,
        &ns,
        i32::try_from(replicas).unwrap_or(i32::MAX),
        &owner,
        &ctx.pods,
    ) {
        Ok(s) => s,
        Err(e) => {
            server_failed(api, server, "InvalidPodSpec", &e).await?;
            return Ok(Action::await_change());
        }
    };
    let services: Api<Service> = Api::namespaced(ctx.kube.clone(), &ns);
    for svc in desired::services(&name, &ns, replicas, &owner) {
        let svc_name = svc.metadata.name.clone().unwrap_or_default();
        services
            .patch(&svc_name, &ssa(), &Patch::Apply(&svc))
            .await?;
    }
    let existing = services
        .list(&ListParams::default().labels(&desired::server_selector(&name)))
        .await?;
    let names: Vec<String> = existing.items.iter().map(|s| s.name_any()).collect();
    for surplus in desired::surplus_services(&name, names.iter().map(String::as_str), replicas) {
        services.delete(&surplus, &DeleteParams::default()).await?;
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.kube.clone(), &ns);
    let applied = statefulsets
        .patch(&name, &ssa(), &Patch::Apply(&sts))
        .await?;
    let ready = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let control: Option<Value> = ctx.control.find_json(&path).await.map_err(Error::Control)?;
    if let Some(target) = desired::scale_decision(
        settings.scaling,
        control.as_ref().and_then(desired::scale_target),
    ) {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.kube.clone(), &ns);
        let list = hpas.list(&ListParams::default()).await?;
        if desired::hpa_targets_server(&list.items, &name) {
            info!(server = %name, target, "an HPA targets this Server; its scale decision is left to the HPA");
        } else {
            info!(server = %name, from = replicas, to = target, "scaling the Server");
            api.patch_scale(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": target}})),
            )
            .await?;
        }
    }
    let obs = ServerObservation {
        replicas,
        ready_replicas: ready,
        control,
        generation: server.metadata.generation,
    };
    let status = desired::server_status(server.status.as_ref(), &name, &obs, &now());
    if server.status.as_ref() != Some(&status) {
        apply_status(api, &name, "Server", &status).await?;
    }
    Ok(Action::requeue(ctx.resync))
}

/// A Server going away: its StatefulSet goes to 0 pods (the agents drain on SIGTERM),
/// the control plane forgets it, then the finalizer goes and Kubernetes deletes the
/// StatefulSet and Services through their owner references.
async fn cleanup_server(server: &Server, ctx: &Context) -> Result<Action, Error> {
    let name = server.name_any();
    let ns = namespace_of(server);
    let path = format!("/api/v1/servers/{name}");
    let known: Option<Value> = ctx.control.find_json(&path).await.map_err(Error::Control)?;
    if known.is_none() {
        info!(server = %name, "gone from the control plane; finalizer removed");
        return Ok(Action::await_change());
    }
    if let Some(owner) = other_namespace(server_namespace(known.as_ref()), server) {
        info!(server = %name, owner, "the control plane's server belongs to another namespace; finalizer removed, server left alone");
        return Ok(Action::await_change());
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.kube.clone(), &ns);
    if statefulsets.get_opt(&name).await?.is_some() {
        statefulsets
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": 0}})),
            )
            .await?;
    }
    let src = spec::source("Server", &server.metadata);
    let body = spec::manifest("Server", &server.metadata, &server.spec.fields);
    ctx.control
        .delete_manifest(&manifest_request(src, &[body]))
        .await
        .map_err(Error::Control)?;
    match ctx
        .control
        .find_json::<Value>(&path)
        .await
        .map_err(Error::Control)?
    {
        None => Ok(Action::await_change()),
        Some(_) => Err(Error::Pending(format!(
            "server {name} is still in the control plane; waiting for its replicas to drain"
        ))),
    }
}
