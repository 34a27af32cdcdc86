//! Pure reconcile decisions: from a custom resource and the control plane's view to the
//! objects and patches the operator sends. No I/O here; `reconcile.rs` does the calls.

use std::collections::BTreeMap;

use coscale_api::rest;
use coscale_core::resources::{Scaling, Server as ServerSettings, ServerConfig as ConfigSettings};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Map, Value};

use crate::crd::{Condition, ModelStatus, ServerStatus, GROUP};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "coscale-operator";
/// Finalizer on Models and Servers: the control plane forgets them before they go.
pub const FINALIZER: &str = "mlops.seldon.io/finalizer";
/// Label on every object the operator makes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "coscale");
/// Label naming the Server an object belongs to.
pub const SERVER_LABEL: &str = "mlops.seldon.io/server";
/// Label of a Model's (deliberately empty) selector.
pub const MODEL_LABEL: &str = "mlops.seldon.io/model";
/// The ServerConfig container that runs `coscale agent`.
pub const AGENT_CONTAINER: &str = "agent";
/// The projected ServiceAccount token volume (audience `coscale`) and where it is mounted.
pub const TOKEN_VOLUME: &str = "coscale-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/coscale";
pub const TOKEN_AUDIENCE: &str = "coscale";
/// The agent's data-plane ports in pods.
pub const AGENT_HTTP_PORT: i32 = 9100;
pub const AGENT_GRPC_PORT: i32 = 9101;
/// Grace period when the pod spec sets none: long enough for the agent's drain.
pub const DEFAULT_GRACE_SECONDS: i64 = 120;

/// What the operator puts into every server pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    /// `COSCALE_CONTROL_PLANE` of the agents (`http://coscale-control.<ns>:9005`).
    pub agent_control_plane: String,
}

/// Labels of every object of a Server.
pub fn server_labels(server: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (SERVER_LABEL.to_owned(), server.to_owned()),
    ]
    .into()
}

/// `status.selector` of a Server: its pods.
pub fn server_selector(server: &str) -> String {
    format!("{SERVER_LABEL}={server}")
}

/// `status.selector` of a Model: matches no pod on purpose, so that an HPA on the Model
/// never owns the server pods (Seldon's `server=<name>` does the same).
pub fn model_selector(model: &str) -> String {
    format!("{MODEL_LABEL}={model}")
}

/// Merges the entries of two lists of named objects: same `name` → `merge`, new names
/// appended in order.
fn merge_named(base: &mut Vec<Value>, over: &[Value], merge: fn(&mut Value, &Value)) {
    for item in over {
        let name = item.get("name");
        match base
            .iter_mut()
            .find(|b| name.is_some() && b.get("name") == name)
        {
            Some(existing) => merge(existing, item),
            None => base.push(item.clone()),
        }
    }
}

/// The Server's fields win: every key of `over` replaces the one of `base`.
fn replace_fields(base: &mut Value, over: &Value) {
    if let (Value::Object(b), Value::Object(o)) = (base, over) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
}

/// A container of the Server's pod spec onto the ServerConfig's container of the same
/// name: `env`, `volumeMounts` and `ports` merge by name (the Server's entries win), every
/// other field of the Server's container replaces the ServerConfig's.
fn merge_container(base: &mut Value, over: &Value) {
    let (Value::Object(b), Value::Object(o)) = (base, over) else {
        return;
    };
    for (k, v) in o {
        match (k.as_str(), b.get_mut(k), v) {
            (
                "env" | "volumeMounts" | "ports",
                Some(Value::Array(existing)),
                Value::Array(items),
            ) => {
                merge_named(existing, items, replace_fields);
            }
            _ => {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The pod spec of a Server: the ServerConfig's `podSpec` with the Server's `podSpec`
/// merged onto it. `containers` and `initContainers` merge by name
/// ([`merge_container`]), `volumes` by name (the Server's volume replaces the
/// ServerConfig's), every other field of the Server's pod spec replaces the ServerConfig's.
pub fn merge_pod_specs(config: &Value, server: Option<&Value>) -> Value {
    let mut merged = match config {
        Value::Object(_) => config.clone(),
        _ => Value::Object(Map::new()),
    };
    let Some(Value::Object(over)) = server else {
        return merged;
    };
    let Value::Object(m) = &mut merged else {
        return merged;
    };
    for (k, v) in over {
        match (k.as_str(), m.get_mut(k), v) {
            ("containers" | "initContainers", Some(Value::Array(base)), Value::Array(items)) => {
                merge_named(base, items, merge_container);
            }
            ("volumes", Some(Value::Array(base)), Value::Array(items)) => {
                merge_named(base, items, |b, o| *b = o.clone());
            }
            _ => {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    merged
}

fn set_env(env: &mut Vec<EnvVar>, name: &str, value: Option<String>, from: Option<EnvVarSource>) {
    env.retain(|e| e.name != name);
    env.push(EnvVar {
        name: name.to_owned(),
        value,
        value_from: from,
    });
}

fn field_ref(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_owned(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    }
}

/// The agent's `COSCALE_CAPABILITIES`: the Server's `capabilities` replace the
/// ServerConfig's value, `extraCapabilities` are appended to it (Seldon's
/// `updateCapabilities`); `None` when the Server sets neither.
pub fn agent_capabilities(server: &ServerSettings, current: Option<&str>) -> Option<String> {
    if !server.capabilities.is_empty() {
        return Some(server.capabilities.join(","));
    }
    if server.extra_capabilities.is_empty() {
        return None;
    }
    let mut all: Vec<String> = current
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    for c in &server.extra_capabilities {
        if !all.contains(c) {
            all.push(c.clone());
        }
    }
    Some(all.join(","))
}

/// The pod spec of a Server's replicas: the merged pod specs plus what the agent needs
/// (env, the projected token volume, ports, readiness probe) and a grace period.
pub fn server_pod_spec(
    server: &ServerSettings,
    config: &ConfigSettings,
    settings: &PodSettings,
) -> Result<PodSpec, String> {
    let merged = merge_pod_specs(&config.pod_spec, server.pod_spec.as_ref());
    let mut pod: PodSpec = serde_json::from_value(merged).map_err(|e| {
        format!(
            "the pod spec of ServerConfig {:?} merged with Server {:?} is not a valid PodSpec: {e}",
            config.name,
            server.name.as_str()
        )
    })?;
    let agent = pod
        .containers
        .iter_mut()
        .find(|c| c.name == AGENT_CONTAINER)
        .ok_or_else(|| {
            format!(
                "ServerConfig {:?} has no container named {AGENT_CONTAINER:?} (the container \
                 that runs `coscale agent`)",
                config.name
            )
        })?;
    configure_agent(agent, server, settings);
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != TOKEN_VOLUME);
    volumes.push(
        serde_json::from_value(json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}
        }))
        .map_err(|e| format!("token volume: {e}"))?,
    );
    pod.termination_grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_SECONDS);
    Ok(pod)
}

fn configure_agent(agent: &mut Container, server: &ServerSettings, settings: &PodSettings) {
    let env = agent.env.get_or_insert_with(Vec::new);
    let current_caps = env
        .iter()
        .find(|e| e.name == "COSCALE_CAPABILITIES")
        .and_then(|e| e.value.clone());
    set_env(
        env,
        "COSCALE_CONTROL_PLANE",
        Some(settings.agent_control_plane.clone()),
        None,
    );
    set_env(
        env,
        "COSCALE_TOKEN_FILE",
        Some(format!("{TOKEN_DIR}/token")),
        None,
    );
    set_env(
        env,
        "COSCALE_SERVER",
        Some(server.name.as_str().to_owned()),
        None,
    );
    set_env(env, "POD_NAME", None, Some(field_ref("metadata.name")));
    set_env(env, "POD_IP", None, Some(field_ref("status.podIP")));
    if let Some(caps) = agent_capabilities(server, current_caps.as_deref()) {
        set_env(env, "COSCALE_CAPABILITIES", Some(caps), None);
    }
    for (name, port) in [
        ("COSCALE_HTTP_ADDR", AGENT_HTTP_PORT),
        ("COSCALE_GRPC_ADDR", AGENT_GRPC_PORT),
    ] {
        if !env.iter().any(|e| e.name == name) {
            set_env(env, name, Some(format!("0.0.0.0:{port}")), None);
        }
    }
    let mounts = agent.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| m.name != TOKEN_VOLUME);
    mounts.push(VolumeMount {
        name: TOKEN_VOLUME.to_owned(),
        mount_path: TOKEN_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let ports = agent.ports.get_or_insert_with(Vec::new);
    for (name, port) in [("http", AGENT_HTTP_PORT), ("grpc", AGENT_GRPC_PORT)] {
        if !ports.iter().any(|p| p.container_port == port) {
            ports.push(ContainerPort {
                name: Some(name.to_owned()),
                container_port: port,
                ..ContainerPort::default()
            });
        }
    }
    agent.readiness_probe.get_or_insert_with(|| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/v2/health/ready".to_owned()),
            port: IntOrString::Int(AGENT_HTTP_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    });
}

/// The owner reference that makes an object go with its Server.
pub fn owner(server_name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: format!("{GROUP}/{}", crate::crd::VERSION),
        kind: "Server".to_owned(),
        name: server_name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn object_meta(name: &str, namespace: &str, server: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(server_labels(server)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The StatefulSet `<server>` of a Server with `replicas` pods.
pub fn statefulset(
    server: &ServerSettings,
    config: &ConfigSettings,
    namespace: &str,
    replicas: i32,
    owner: &OwnerReference,
    settings: &PodSettings,
) -> Result<StatefulSet, String> {
    let name = server.name.as_str();
    let pod = server_pod_spec(server, config, settings)?;
    let mut template_labels = server_labels(name);
    template_labels.insert(
        "app.kubernetes.io/name".to_owned(),
        "coscale-server".to_owned(),
    );
    let claims = config
        .volume_claim_templates
        .iter()
        .map(|t| {
            serde_json::from_value::<PersistentVolumeClaim>(json!({
                "metadata": {"name": t.get("name")},
                "spec": t.get("spec").cloned().unwrap_or_else(|| json!({})),
            }))
            .map_err(|e| format!("ServerConfig {:?} volumeClaimTemplates: {e}", config.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let retention = server
        .pvc_retention_policy
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            format!("Server {name:?} statefulSetPersistentVolumeClaimRetentionPolicy: {e}")
        })?;
    Ok(StatefulSet {
        metadata: object_meta(name, namespace, name, owner),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(server_labels(name)),
                ..LabelSelector::default()
            },
            service_name: Some(name.to_owned()),
            pod_management_policy: Some("Parallel".to_owned()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: (!claims.is_empty()).then_some(claims),
            persistent_volume_claim_retention_policy: retention,
            ..StatefulSetSpec::default()
        },
        status: None,
    })
}

/// The name of replica `ordinal`'s pod and Service: `<server>-<ordinal>`.
pub fn replica_name(server: &str, ordinal: u32) -> String {
    format!("{server}-{ordinal}")
}

/// The ordinal of a Service or pod named `<server>-<ordinal>`.
pub fn replica_ordinal(server: &str, name: &str) -> Option<u32> {
    name.strip_prefix(server)?.strip_prefix('-')?.parse().ok()
}

/// One headless Service per replica, `<server>-<i>`, selecting that pod.
pub fn services(
    server: &str,
    namespace: &str,
    replicas: u32,
    owner: &OwnerReference,
) -> Vec<Service> {
    (0..replicas)
        .map(|i| {
            let name = replica_name(server, i);
            Service {
                metadata: object_meta(&name, namespace, server, owner),
                spec: Some(ServiceSpec {
                    cluster_ip: Some("None".to_owned()),
                    selector: Some(
                        [(
                            "statefulset.kubernetes.io/pod-name".to_owned(),
                            name.clone(),
                        )]
                        .into(),
                    ),
                    ports: Some(
                        [("http", AGENT_HTTP_PORT), ("grpc", AGENT_GRPC_PORT)]
                            .into_iter()
                            .map(|(n, p)| ServicePort {
                                name: Some(n.to_owned()),
                                port: p,
                                target_port: Some(IntOrString::Int(p)),
                                ..ServicePort::default()
                            })
                            .collect(),
                    ),
                    ..ServiceSpec::default()
                }),
                status: None,
            }
        })
        .collect()
}

/// Services of a Server whose ordinal is at or above the replica count (to delete).
pub fn surplus_services<'a>(
    server: &str,
    names: impl IntoIterator<Item = &'a str>,
    replicas: u32,
) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| replica_ordinal(server, n).is_some_and(|o| o >= replicas))
        .map(str::to_owned)
        .collect()
}

/// Whether an `autoscaling/v2` HPA targets the Server `name` (then the operator never
/// patches the Server's replicas).
pub fn hpa_targets_server(hpas: &[HorizontalPodAutoscaler], name: &str) -> bool {
    hpas.iter().any(|h| {
        let t = &h.spec.scale_target_ref;
        t.kind == "Server"
            && t.name == name
            && t.api_version
                .as_deref()
                .is_none_or(|v| v.starts_with(&format!("{GROUP}/")))
    })
}

/// The control plane's `scaleTarget` of a Server (`GET /api/v1/servers/NAME`); absent
/// means nothing pending.
pub fn scale_target(server_json: &Value) -> Option<u32> {
    server_json
        .get("scaleTarget")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

/// The Server's new `spec.replicas`, if the control plane wants another count than the
/// spec has and the count is within `[minReplicas, maxReplicas]` (Seldon's
/// `isValidScalingEvent`). The caller still checks that no HPA targets the Server.
pub fn scale_decision(spec: Scaling, target: Option<u32>) -> Option<u32> {
    let t = target?;
    let in_bounds = t >= spec.min_replicas && spec.max_replicas.is_none_or(|m| t <= m);
    (t != spec.replicas && in_bounds).then_some(t)
}

/// Sets a condition, keeping its `lastTransitionTime` when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: &str,
) {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: (!message.is_empty()).then(|| message.to_owned()),
        last_transition_time: Some(since),
    });
}

/// Model status from the control plane's view of the model. `ModelReady` (and `Ready`,
/// which depends on it alone) is True iff the state is `ModelAvailable`; the reason is
/// the state (`ScheduleFailed`, `ModelProgressing`, ...) and the message the control
/// plane's reason text.
pub fn model_status(
    previous: Option<&ModelStatus>,
    model: &rest::ModelStatus,
    observed_generation: Option<i64>,
    now: &str,
) -> ModelStatus {
    let prev = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let latest = model
        .replicas
        .iter()
        .filter(|r| r.version == model.version && r.state != "Unloading")
        .count();
    let ready = model.state == "ModelAvailable";
    let message = if model.reason.is_empty() {
        model.state.clone()
    } else {
        model.reason.clone()
    };
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        prev,
        "ModelReady",
        ready,
        &model.state,
        &message,
        now,
    );
    set_condition(
        &mut conditions,
        prev,
        "Ready",
        ready,
        &model.state,
        &message,
        now,
    );
    ModelStatus {
        replicas: i32::try_from(latest).unwrap_or(i32::MAX),
        available_replicas: i32::try_from(model.available_replicas).unwrap_or(i32::MAX),
        selector: Some(model_selector(&model.name)),
        state: Some(model.state.clone()),
        version: Some(model.version),
        observed_generation,
        conditions,
    }
}

/// Status of a Model (or Server) the operator could not hand to the control plane:
/// `Ready` (and `first`) False with `reason`; counts kept from before.
pub fn failed_conditions(
    previous: &[Condition],
    first: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> Vec<Condition> {
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        previous,
        first,
        false,
        reason,
        message,
        now,
    );
    set_condition(
        &mut conditions,
        previous,
        "Ready",
        false,
        reason,
        message,
        now,
    );
    conditions
}

/// What the operator knows about a Server when it writes its status.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerObservation {
    /// Validated `spec.replicas`.
    pub replicas: u32,
    /// `status.readyReplicas` of the StatefulSet.
    pub ready_replicas: i32,
    /// The control plane's record of the Server (`GET /api/v1/servers/NAME`), if any.
    pub control: Option<Value>,
    pub generation: Option<i64>,
}

/// Server status: `StatefulSetReady` True iff the StatefulSet has as many ready pods as
/// the spec wants; `Ready` True iff that holds and the control plane knows the Server.
pub fn server_status(
    previous: Option<&ServerStatus>,
    name: &str,
    obs: &ServerObservation,
    now: &str,
) -> ServerStatus {
    let prev = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let replicas = i32::try_from(obs.replicas).unwrap_or(i32::MAX);
    let sts_ready = obs.ready_replicas >= replicas;
    let mut conditions = Vec::new();
    let (reason, message) = if sts_ready {
        (
            "StatefulSetReady",
            "StatefulSet replicas matches desired replicas".to_owned(),
        )
    } else {
        (
            "StatefulSetNotReady",
            format!(
                "StatefulSet has {} ready of {replicas} desired replicas",
                obs.ready_replicas
            ),
        )
    };
    set_condition(
        &mut conditions,
        prev,
        "StatefulSetReady",
        sts_ready,
        reason,
        &message,
        now,
    );
    let (ok, reason, message) = match (&obs.control, sts_ready) {
        (None, _) => (
            false,
            "ControlPlaneUnknown",
            "the control plane has no such Server yet".to_owned(),
        ),
        (Some(_), false) => (false, reason, message.clone()),
        (Some(_), true) => (true, "ServerReady", "every replica is ready".to_owned()),
    };
    set_condition(&mut conditions, prev, "Ready", ok, reason, &message, now);
    let loaded = obs
        .control
        .as_ref()
        .and_then(|c| c.get("loaded_models").or_else(|| c.get("loadedModels")))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    ServerStatus {
        replicas,
        ready_replicas: obs.ready_replicas,
        loaded_models: i32::try_from(loaded).unwrap_or(i32::MAX),
        selector: Some(server_selector(name)),
        observed_generation: obs.generation,
        conditions,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn pod_specs_merge_containers_by_name_and_the_server_wins() {
        let config = json!({
            "containers": [
                {"name": "agent", "image": "coscale:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "mlserver", "image": "mlserver:1.7.1", "resources": {"limits": {"memory": "1Gi"}}}
            ],
            "volumes": [{"name": "models", "emptyDir": {}}],
            "nodeSelector": {"pool": "a"}
        });
        let server = json!({
            "containers": [
                {"name": "mlserver", "image": "mlserver:1.3.4"},
                {"name": "agent", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "sidecar", "image": "busybox"}
            ],
            "volumes": [{"name": "models", "hostPath": {"path": "/m"}}],
            "nodeSelector": {"pool": "b"}
        });
        let m = merge_pod_specs(&config, Some(&server));
        assert_eq!(
            m,
            json!({
                "containers": [
                    {"name": "agent", "image": "coscale:1", "env": [
                        {"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                    {"name": "mlserver", "image": "mlserver:1.3.4", "resources": {"limits": {"memory": "1Gi"}}},
                    {"name": "sidecar", "image": "busybox"}
                ],
                "volumes": [{"name": "models", "hostPath": {"path": "/m"}}],
                "nodeSelector": {"pool": "b"}
            })
        );
        assert_eq!(merge_pod_specs(&config, None), config);
    }

    fn server(caps: &[&str], extra: &[&str]) -> ServerSettings {
        let text = json!({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
            "metadata": {"name": "s"},
            "spec": {"serverConfig": "c", "capabilities": caps, "extraCapabilities": extra}})
        .to_string();
        match coscale_core::resources::parse_manifests("t", &text)
            .unwrap()
            .remove(0)
        {
            coscale_core::resources::Resource::Server(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn capabilities_replace_and_extra_capabilities_append() {
        assert_eq!(
            agent_capabilities(&server(&["a", "b"], &["x"]), Some("m")),
            Some("a,b".into())
        );
        assert_eq!(
            agent_capabilities(&server(&[], &["x"]), Some("m, x")),
            Some("m,x".into())
        );
        assert_eq!(
            agent_capabilities(&server(&[], &["x"]), None),
            Some("x".into())
        );
        assert_eq!(agent_capabilities(&server(&[], &[]), Some("m")), None);
    }

    #[test]
    fn a_server_config_without_an_agent_container_is_an_error() {
        let cfg = ConfigSettings {
            meta: server(&[], &[]).meta,
            name: "c".into(),
            pod_spec: json!({"containers": [{"name": "mlserver", "image": "x"}]}),
            volume_claim_templates: vec![],
        };
        let settings = PodSettings {
            agent_control_plane: "http://cp:9005".into(),
        };
        let e = server_pod_spec(&server(&[], &[]), &cfg, &settings).unwrap_err();
        assert!(e.contains("no container named \"agent\""), "{e}");
        let bad = ConfigSettings {
            pod_spec: json!({"containers": "agent"}),
            ..cfg
        };
        let e = server_pod_spec(&server(&[], &[]), &bad, &settings).unwrap_err();
        assert!(e.contains("not a valid PodSpec"), "{e}");
    }

    #[test]
    fn scale_decisions_follow_the_target_within_bounds() {
        let s = |replicas, min, max| Scaling {
            replicas,
            min_replicas: min,
            max_replicas: max,
        };
        assert_eq!(scale_decision(s(1, 1, Some(4)), Some(3)), Some(3));
        assert_eq!(scale_decision(s(3, 1, Some(4)), Some(2)), Some(2));
        assert_eq!(
            scale_decision(s(3, 1, Some(4)), Some(3)),
            None,
            "nothing pending"
        );
        assert_eq!(
            scale_decision(s(3, 1, Some(4)), None),
            None,
            "no scaleTarget"
        );
        assert_eq!(
            scale_decision(s(3, 1, Some(4)), Some(5)),
            None,
            "above maxReplicas"
        );
        assert_eq!(
            scale_decision(s(3, 2, Some(4)), Some(1)),
            None,
            "below minReplicas"
        );
        assert_eq!(
            scale_decision(s(1, 0, None), Some(7)),
            Some(7),
            "no max: unbounded"
        );
        assert_eq!(scale_target(&json!({"scaleTarget": 2})), Some(2));
        assert_eq!(scale_target(&json!({"name": "s"})), None);
    }

    #[test]
    fn only_hpas_on_this_server_count() {
        let hpa = |kind: &str, name: &str, api: &str| -> HorizontalPodAutoscaler {
            serde_json::from_value(json!({"metadata": {"name": "h"}, "spec": {"maxReplicas": 3,
                "scaleTargetRef": {"kind": kind, "name": name, "apiVersion": api}}}))
            .unwrap()
        };
        let sv = "mlops.seldon.io/v1alpha1";
        assert!(hpa_targets_server(
            &[hpa("Model", "s", sv), hpa("Server", "s", sv)],
            "s"
        ));
        assert!(!hpa_targets_server(
            &[hpa("Model", "s", sv), hpa("Server", "t", sv)],
            "s"
        ));
        assert!(!hpa_targets_server(
            &[hpa("Server", "s", "example.com/v1")],
            "s"
        ));
        assert!(!hpa_targets_server(&[], "s"));
    }

    #[test]
    fn services_are_one_per_replica_and_surplus_ones_are_found() {
        let o = owner("s", "u");
        let svcs = services("s", "ns", 2, &o);
        let names: Vec<_> = svcs
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["s-0", "s-1"]);
        assert_eq!(
            surplus_services("s", ["s-0", "s-1", "s-2", "s-10", "s-x", "other-3"], 2),
            ["s-2", "s-10"]
        );
        assert_eq!(replica_ordinal("s", "s-3"), Some(3));
        assert_eq!(replica_ordinal("s", "sx-3"), None);
    }

    #[test]
    fn conditions_keep_their_transition_time_until_the_status_flips() {
        let mut first = Vec::new();
        set_condition(
            &mut first,
            &[],
            "Ready",
            false,
            "ScheduleFailed",
            "no server",
            "t1",
        );
        let mut second = Vec::new();
        set_condition(
            &mut second,
            &first,
            "Ready",
            false,
            "ModelProgressing",
            "loading",
            "t2",
        );
        assert_eq!(second[0].last_transition_time.as_deref(), Some("t1"));
        assert_eq!(second[0].reason.as_deref(), Some("ModelProgressing"));
        let mut third = Vec::new();
        set_condition(
            &mut third,
            &second,
            "Ready",
            true,
            "ModelAvailable",
            "",
            "t3",
        );
        assert_eq!(third[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(third[0].message, None);
    }

    #[test]
    fn server_status_is_ready_when_pods_are_ready_and_the_control_plane_knows_it() {
        let obs = |ready, control: Option<Value>| ServerObservation {
            replicas: 2,
            ready_replicas: ready,
            control,
            generation: Some(4),
        };
        let known = Some(json!({"name": "s", "loaded_models": 3}));
        let st = server_status(None, "s", &obs(2, known.clone()), "t");
        assert_eq!(
            (st.replicas, st.loaded_models, st.observed_generation),
            (2, 3, Some(4))
        );
        assert!(st.conditions.iter().all(|c| c.status == "True"), "{st:?}");
        let st = server_status(None, "s", &obs(1, known), "t");
        assert!(st.conditions.iter().all(|c| c.status == "False"));
        let st = server_status(None, "s", &obs(2, None), "t");
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("ControlPlaneUnknown"));
    }
}
