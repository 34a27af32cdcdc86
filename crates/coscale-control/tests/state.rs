//! The control plane's synchronous state, driven without tokio: apply, agents
//! registering and reporting, reconcile commands, versions, deletion, routing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coscale_api::pb::agent::control_message::Kind;
use coscale_control::state::{AgentEventKind, AgentInfo, Command, State};
use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::resources::{parse_manifests, Resource};

fn apply(st: &mut State, yaml: &str) {
    for r in parse_manifests("t.yaml", yaml).unwrap() {
        match r {
            Resource::Model(m) => {
                st.apply_model(m, 1);
            }
            Resource::Server(s) => {
                st.apply_server(s, 1);
            }
            Resource::ServerConfig(c) => {
                st.apply_config(c, 1);
            }
            Resource::Hpa(_) => {}
        }
    }
}

fn server(name: &str, replicas: u32) -> String {
    format!("apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {{name: {name}}}\nspec: {{serverConfig: builtin, replicas: {replicas}}}\n")
}

fn model(name: &str, uri: &str, replicas: u32, reqs: &str) -> String {
    format!("apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {{name: {name}}}\nspec: {{storageUri: '{uri}', requirements: [{reqs}], memory: 1Mi, replicas: {replicas}}}\n")
}

fn info(port: u16) -> AgentInfo {
    AgentInfo {
        capabilities: vec!["onnx".into()],
        memory_bytes: 1 << 30,
        overcommit_percent: 10,
        http: format!("127.0.0.1:{port}").parse().unwrap(),
        grpc: format!("127.0.0.1:{}", port + 1).parse().unwrap(),
        data_socket: None,
        pid: u32::from(port),
        runtime: "builtin".into(),
        runtime_error: String::new(),
    }
}

fn connect(st: &mut State, server: &str, replica: u32, session: u64) -> Vec<Command> {
    st.agent_registered(
        ServerName::new(server),
        ReplicaIndex(replica),
        session,
        info(10_000 + replica as u16 * 2),
        vec![],
        1,
    )
}

/// (replica, model, version) of every Load (`load = true`) or Unload command.
fn commands(cmds: &[Command], load: bool) -> Vec<(u32, String, u32)> {
    cmds.iter()
        .filter_map(|c| {
            let model = match (&c.message.kind, load) {
                (Some(Kind::Load(l)), true) => l.model.as_ref(),
                (Some(Kind::Unload(u)), false) => u.model.as_ref(),
                _ => None,
            }?;
            Some((c.replica.0, model.name.clone(), model.version))
        })
        .collect()
}

fn loads(cmds: &[Command]) -> Vec<(u32, String, u32)> {
    commands(cmds, true)
}

fn unloads(cmds: &[Command]) -> Vec<(u32, String, u32)> {
    commands(cmds, false)
}

/// What the agent of `s`-0 (session 1) reports about version `version` of `model`.
fn report(st: &mut State, model: &str, version: u32, kind: AgentEventKind, message: &str) {
    st.agent_event(
        &ServerName::new("s"),
        ReplicaIndex(0),
        1,
        ModelName::new(model),
        version,
        kind,
        message.to_owned(),
        2,
    );
}

fn loaded(st: &mut State, server: &str, replica: u32, session: u64, model: &str, version: u32) {
    st.agent_event(
        &ServerName::new(server),
        ReplicaIndex(replica),
        session,
        ModelName::new(model),
        version,
        AgentEventKind::Loaded { memory_bytes: 0 },
        String::new(),
        2,
    );
}

fn endpoints(st: &State, model: &str) -> Vec<(u32, u32)> {
    st.routing_table()
        .route(model)
        .map(|r| r.endpoints.iter().map(|e| (e.replica, e.version)).collect())
        .unwrap_or_default()
}

#[test]
fn a_model_is_loaded_where_placed_and_routed_once_loaded() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 2) + "---\n" + &model("m", "/x", 2, "onnx")),
    );
    connect(&mut st, "s", 0, 1);
    connect(&mut st, "s", 1, 2);
    let cmds = st.reconcile(1);
    assert_eq!(loads(&cmds), vec![(0, "m".into(), 1), (1, "m".into(), 1)]);
    assert_eq!(st.model_status("m").unwrap().state, "ModelProgressing");
    assert!(
        endpoints(&st, "m").is_empty(),
        "not routed before it is loaded"
    );
    loaded(&mut st, "s", 0, 1, "m", 1);
    loaded(&mut st, "s", 1, 2, "m", 1);
    assert!(st.reconcile(3).is_empty(), "reconcile is idempotent");
    let status = st.model_status("m").unwrap();
    assert_eq!(
        (status.state.as_str(), status.available_replicas),
        ("ModelAvailable", 2)
    );
    assert_eq!(endpoints(&st, "m"), vec![(0, 1), (1, 1)]);
}

#[test]
fn a_replicas_data_socket_reaches_the_routing_table() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 1) + "---\n" + &model("m", "/x", 1, "onnx")),
    );
    let mut with_socket = info(10_000);
    with_socket.data_socket = Some("/run/cs/sockets/s-0.sock".into());
    st.agent_registered(
        ServerName::new("s"),
        ReplicaIndex(0),
        1,
        with_socket,
        vec![],
        1,
    );
    st.reconcile(1);
    loaded(&mut st, "s", 0, 1, "m", 1);
    let table = st.routing_table();
    let endpoint = &table.route("m").unwrap().endpoints[0];
    assert_eq!(
        endpoint.data_socket.as_deref(),
        Some(std::path::Path::new("/run/cs/sockets/s-0.sock"))
    );
}

#[test]
fn a_spec_change_loads_a_new_version_and_unloads_the_old_one_only_once_it_is_available() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 1) + "---\n" + &model("m", "/a", 1, "onnx")),
    );
    connect(&mut st, "s", 0, 1);
    st.reconcile(1);
    loaded(&mut st, "s", 0, 1, "m", 1);
    st.reconcile(2);
    // replica-count-only change: same version
    apply(&mut st, &model("m", "/a", 2, "onnx"));
    assert_eq!(st.model_status("m").unwrap().version, 1);
    apply(&mut st, &model("m", "/b", 1, "onnx"));
    assert_eq!(st.model_status("m").unwrap().version, 2);
    let cmds = st.reconcile(3);
    assert_eq!(loads(&cmds), vec![(0, "m".into(), 2)]);
    assert!(unloads(&cmds).is_empty(), "v1 serves until v2 is available");
    assert_eq!(endpoints(&st, "m"), vec![(0, 1)]);
    loaded(&mut st, "s", 0, 1, "m", 2);
    let cmds = st.reconcile(4);
    assert_eq!(unloads(&cmds), vec![(0, "m".into(), 1)]);
    assert_eq!(endpoints(&st, "m"), vec![(0, 2)]);
}

#[test]
fn a_deleted_model_is_unloaded_then_forgotten() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 1) + "---\n" + &model("m", "/a", 1, "onnx")),
    );
    connect(&mut st, "s", 0, 1);
    st.reconcile(1);
    loaded(&mut st, "s", 0, 1, "m", 1);
    assert!(st.delete_model("m", 2).is_some());
    assert!(
        st.delete_model("m", 2).is_none(),
        "deleting twice is not a change"
    );
    let cmds = st.reconcile(3);
    assert_eq!(unloads(&cmds), vec![(0, "m".into(), 1)]);
    assert!(
        st.routing_table().route("m").is_none(),
        "unknown to routers at once"
    );
    report(&mut st, "m", 1, AgentEventKind::Unloaded, "");
    st.reconcile(5);
    assert!(st.model_status("m").is_none());
}

#[test]
fn a_lost_replica_moves_its_models_and_a_stale_disconnect_is_ignored() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 2) + "---\n" + &model("m", "/a", 1, "onnx")),
    );
    connect(&mut st, "s", 0, 1);
    connect(&mut st, "s", 1, 2);
    assert_eq!(loads(&st.reconcile(1)), vec![(0, "m".into(), 1)]);
    loaded(&mut st, "s", 0, 1, "m", 1);
    st.reconcile(2);
    // a disconnect of an older session of replica 0 changes nothing
    st.agent_disconnected(&ServerName::new("s"), ReplicaIndex(0), 99, 3);
    assert_eq!(endpoints(&st, "m"), vec![(0, 1)]);
    st.agent_disconnected(&ServerName::new("s"), ReplicaIndex(0), 1, 3);
    assert!(endpoints(&st, "m").is_empty());
    assert_eq!(loads(&st.reconcile(4)), vec![(1, "m".into(), 1)]);
}

#[test]
fn models_an_agent_reports_are_adopted_or_unloaded() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 1) + "---\n" + &model("m", "/a", 1, "onnx")),
    );
    let cmds = st.agent_registered(
        ServerName::new("s"),
        ReplicaIndex(0),
        7,
        info(10_000),
        vec![(ModelName::new("m"), 1), (ModelName::new("ghost"), 3)],
        1,
    );
    assert_eq!(unloads(&cmds), vec![(0, "ghost".into(), 3)]);
    assert!(loads(&st.reconcile(2)).is_empty(), "m is already there");
    assert_eq!(st.model_status("m").unwrap().state, "ModelAvailable");
}

#[test]
fn a_failed_load_marks_the_model_failed_without_a_retry_storm() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 1) + "---\n" + &model("m", "/a", 1, "onnx")),
    );
    connect(&mut st, "s", 0, 1);
    st.reconcile(1);
    report(
        &mut st,
        "m",
        1,
        AgentEventKind::LoadFailed,
        "cannot load model from /a: not an ONNX file",
    );
    assert!(st.reconcile(3).is_empty());
    let s = st.model_status("m").unwrap();
    assert_eq!(s.state, "ModelFailed");
    assert!(s.reason.contains("not an ONNX file"), "{}", s.reason);
    assert!(s.events.iter().any(|e| e.reason == "LoadFailed"));
}

#[test]
fn a_model_nothing_can_host_is_schedule_failed_and_known_to_routers() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 1) + "---\n" + &model("m", "/a", 1, "sklearn")),
    );
    connect(&mut st, "s", 0, 1);
    assert!(st.reconcile(1).is_empty());
    let s = st.model_status("m").unwrap();
    assert_eq!(s.state, "ScheduleFailed");
    assert!(s.reason.contains("sklearn"), "{}", s.reason);
    assert_eq!(
        st.routing_table().route("m").map(|r| r.endpoints.len()),
        Some(0)
    );
}

#[test]
fn a_draining_replica_keeps_serving_until_its_models_are_available_elsewhere() {
    let mut st = State::default();
    apply(
        &mut st,
        &(server("s", 2) + "---\n" + &model("m", "/a", 1, "onnx")),
    );
    connect(&mut st, "s", 0, 1);
    connect(&mut st, "s", 1, 2);
    st.reconcile(1);
    loaded(&mut st, "s", 0, 1, "m", 1);
    st.reconcile(2);
    st.set_draining(&ServerName::new("s"), ReplicaIndex(0));
    assert!(!st.replica_can_stop(&ServerName::new("s"), ReplicaIndex(0)));
    let cmds = st.reconcile(3);
    assert_eq!(loads(&cmds), vec![(1, "m".into(), 1)]);
    assert_eq!(
        endpoints(&st, "m"),
        vec![(0, 1)],
        "the draining replica still serves"
    );
    loaded(&mut st, "s", 1, 2, "m", 1);
    st.reconcile(4);
    assert_eq!(endpoints(&st, "m"), vec![(1, 1)]);
    assert!(st.replica_can_stop(&ServerName::new("s"), ReplicaIndex(0)));
}

#[test]
fn servers_report_desired_ready_and_starting_replicas() {
    let mut st = State::default();
    apply(&mut st, &server("s", 3));
    connect(&mut st, "s", 0, 1);
    let s = st.server_status("s").unwrap();
    assert_eq!((s.desired_replicas, s.ready_replicas), (3, 1));
    let states: Vec<&str> = s.replicas.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, vec!["Ready", "Starting", "Starting"]);
    assert_eq!(s.capabilities, vec!["onnx".to_owned()]);
}

#[test]
fn a_model_without_memory_is_placed_with_its_artifact_size_then_its_measured_size() {
    let mut st = State::default();
    let yaml = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {storageUri: '/a', requirements: [onnx]}\n";
    apply(&mut st, &(server("s", 1) + "---\n" + yaml));
    let name = ModelName::new("m");
    assert!(st.record_artifact_size(&name, Some(4096)).is_some());
    assert!(
        st.record_artifact_size(&name, Some(4096)).is_none(),
        "no change, nothing to persist"
    );
    let rec = st.models.get(&name).unwrap().clone();
    assert_eq!(st.model_memory(&rec), 4096);
    connect(&mut st, "s", 0, 1);
    st.reconcile(1);
    report(
        &mut st,
        "m",
        1,
        AgentEventKind::Loaded {
            memory_bytes: 50_000,
        },
        "",
    );
    let rec = st.models.get(&name).unwrap().clone();
    assert_eq!(
        st.model_memory(&rec),
        50_000,
        "a measurement wins over the estimate"
    );
    let status = st.model_status("m").unwrap();
    assert_eq!(
        (
            status.memory_bytes,
            status.estimated_memory_bytes,
            status.measured_memory_bytes
        ),
        (None, Some(4096), Some(50_000))
    );
}
