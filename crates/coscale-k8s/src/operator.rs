//! `coscale operator`: kube-rs controllers for Models and Servers (Servers also react to
//! their StatefulSets and to ServerConfig changes), until SIGTERM/Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use tracing::{info, warn};

use crate::crd::{Model, Server, ServerConfig};
use crate::desired::{PodSettings, MANAGED_BY};
use crate::reconcile::{reconcile_model, reconcile_server, Context, Error};

/// Settings of `coscale operator`.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The control plane's REST API (`http://coscale-control:9004`).
    pub control_plane_url: String,
    /// Bearer token file (a projected ServiceAccount token, re-read before each call).
    pub token_file: PathBuf,
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// The install's namespace: default ServerConfigs, and the agents' control-plane
    /// address `http://coscale-control.<ns>:9005`.
    pub install_namespace: String,
    /// `COSCALE_CONTROL_PLANE` of the agents; default from `install_namespace`.
    pub agent_control_plane: Option<String>,
    pub resync: Duration,
}

/// The namespace this pod runs in: `POD_NAMESPACE`, else the ServiceAccount's namespace
/// file, else `coscale-system`.
pub fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "coscale-system".to_owned())
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn error_policy<K>(obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action
where
    K: kube::Resource,
{
    warn!(name = %obj.meta().name.as_deref().unwrap_or_default(), "{error}");
    Action::requeue(error.retry_after())
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(config: OperatorConfig) -> anyhow::Result<()> {
    let kube = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let endpoints = coscale_client::api_endpoints(&config.control_plane_url, None, None);
    let control = coscale_client::Client::with_token_file(endpoints, config.token_file.clone());
    let agent_control_plane = config
        .agent_control_plane
        .clone()
        .unwrap_or_else(|| format!("http://coscale-control.{}:9005", config.install_namespace));
    let ctx = Arc::new(Context {
        kube: kube.clone(),
        control,
        pods: PodSettings {
            agent_control_plane,
        },
        config_namespace: Some(config.install_namespace.clone()),
        resync: config.resync,
    });
    let ns = config.namespace.as_deref();
    info!(namespace = ns.unwrap_or("(all)"), control_plane = %config.control_plane_url, "coscale operator starting");

    let models = Controller::new(api::<Model>(&kube, ns), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile_model, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!("model reconcile: {e}");
            }
        });

    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let server_controller = Controller::new(api::<Server>(&kube, ns), watcher::Config::default());
    let servers_store = server_controller.store();
    let servers = server_controller
        .owns(api::<StatefulSet>(&kube, ns), owned)
        .watches(
            api::<ServerConfig>(&kube, ns),
            watcher::Config::default(),
            move |config: ServerConfig| {
                let config_name = config.name_any();
                servers_store
                    .state()
                    .into_iter()
                    .filter(|s| uses_config(s, &config_name))
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile_server, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!("server reconcile: {e}");
            }
        });

    tokio::join!(models, servers);
    info!("coscale operator stopped");
    Ok(())
}

/// Whether a ServerConfig change rolls this Server: it names the config and does not set
/// `disableAutoUpdate`.
pub fn uses_config(server: &Server, config: &str) -> bool {
    let fields = &server.spec.fields;
    fields.get("serverConfig").and_then(|v| v.as_str()) == Some(config)
        && fields.get("disableAutoUpdate").and_then(|v| v.as_bool()) != Some(true)
}
