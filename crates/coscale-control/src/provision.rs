//! The provisioner: keeps each Server's replicas at its desired count, ordinals
//! 0..N-1 like a StatefulSet, and removes the highest ordinals first, after their
//! models are available elsewhere. Two backends share that drain protocol:
//!
//! - [`Backend::Local`]: replicas are child processes (`coscale agent ...`), restarted
//!   with backoff when they crash, told to `Drain` when they are removed.
//! - [`Backend::External`]: replicas are started by someone else (a Kubernetes
//!   StatefulSet) and connect by themselves; the count the StatefulSet should have is
//!   published as the Server's `scaleTarget`, and the agents leave on SIGTERM.
//!
//! With both, an agent that announces it is leaving is told to `Drain` once its models
//! are available elsewhere (or after the drain timeout).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use coscale_core::ids::{ReplicaIndex, ServerName};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::configs::ServerLaunch;
use crate::service::{now_millis, ControlPlane};

/// How to start an agent process.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    /// The program (normally the `coscale` binary itself).
    pub program: PathBuf,
    /// Arguments before the per-replica ones (normally `["agent"]`).
    pub args: Vec<String>,
    /// The control plane's agent endpoint, e.g. `http://127.0.0.1:40123`.
    pub control_url: String,
    /// File holding the bearer token.
    pub token_file: PathBuf,
    /// Where replica logs go (`<server>-<ordinal>.log`).
    pub log_dir: PathBuf,
    /// Where replicas put their data-plane Unix sockets ([`agent_socket`]); see [`socket_dir`].
    pub socket_dir: PathBuf,
    /// A replica exits when its control plane has been gone this long (no orphans).
    pub orphan_grace: std::time::Duration,
}

/// The folder of local replicas' data-plane Unix sockets under a data directory (absolute, so that
/// the path the agent is given and the one the control plane checks are the same string).
pub fn socket_dir(data_dir: &Path) -> PathBuf {
    std::path::absolute(data_dir)
        .unwrap_or_else(|_| data_dir.to_owned())
        .join("sockets")
}

/// The Unix socket a local replica's REST data plane listens on, `<dir>/<server>-<ordinal>.sock`;
/// None when the path is too long for a socket address (108 bytes on Linux, NUL included), in
/// which case the replica is reached over TCP only.
pub fn agent_socket(dir: &Path, server: &str, idx: u32) -> Option<PathBuf> {
    let path = dir.join(format!("{server}-{idx}.sock"));
    (path.as_os_str().len() < 108).then_some(path)
}

/// The data-plane socket a registering replica announced, if it is exactly the one the local
/// provisioner of the control plane with `data_dir` gives that replica. The router connects to
/// it, so an agent may not point it at any other socket on the machine.
pub fn accepted_data_socket(
    data_dir: &Path,
    server: &str,
    idx: u32,
    announced: &str,
) -> Option<PathBuf> {
    agent_socket(&socket_dir(data_dir), server, idx).filter(|p| p.as_os_str() == announced)
}

/// Timings of the provisioner.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    pub tick: Duration,
    /// Longest wait for a replica being removed to have its models available elsewhere.
    pub drain_timeout: Duration,
    /// Longest wait for an agent told to drain to exit before it is killed.
    pub exit_timeout: Duration,
    pub max_backoff: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(60),
            exit_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Where server replicas come from.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Child processes of this process.
    Local(AgentCommand),
    /// Started elsewhere (Kubernetes pods); they connect by themselves.
    External,
}

enum Phase {
    Running,
    /// Marked draining; waiting for its models to be available elsewhere.
    Draining {
        since: Instant,
    },
    /// Released: told to exit (local) or left out of the scale target (external).
    Released {
        since: Instant,
    },
}

struct Replica {
    /// The process, for the local backend.
    child: Option<Child>,
    phase: Phase,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

type Key = (ServerName, u32);

/// Runs the provisioner until `shutdown` resolves, then stops every child.
pub async fn run(
    cp: ControlPlane,
    backend: Backend,
    config: ProvisionConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut replicas: BTreeMap<Key, Replica> = BTreeMap::new();
    let mut backoff: HashMap<Key, Backoff> = HashMap::new();
    if let Backend::Local(cmd) = &backend {
        for dir in [&cmd.log_dir, &cmd.socket_dir] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                warn!("cannot create {}: {e}", dir.display());
            }
        }
        // Only the user reaches the replicas' sockets (they are 0600 too).
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cmd.socket_dir, std::fs::Permissions::from_mode(0o700));
    }
    let mut tick = tokio::time::interval(config.tick);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let launches = cp.state().server_launches();
        match &backend {
            Backend::Local(cmd) => {
                sync_local(&cp, cmd, &config, &launches, &mut replicas, &mut backoff)
            }
            Backend::External => sync_external(&cp, &mut replicas),
        }
        remove_unwanted(&cp, &backend, &config, &launches, &mut replicas);
        drain_leaving(&cp, &config);
        publish_scale_targets(&cp, &launches, &replicas);
    }
    let children: Vec<Child> = std::mem::take(&mut replicas)
        .into_values()
        .filter_map(|r| r.child)
        .collect();
    info!(replicas = children.len(), "stopping server replicas");
    stop_children(children, STOP_GRACE).await;
}

/// How long agents asked to stop get before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Stops agents as Ctrl-C on `coscale up` does (the terminal sends SIGINT to the whole
/// process group): SIGINT, on which an agent stops at once, stopping its inference server
/// and removing its temporary files; SIGKILL for any still running after `grace`.
async fn stop_children(mut children: Vec<Child>, grace: Duration) {
    for child in &children {
        interrupt(child);
    }
    let deadline = tokio::time::Instant::now() + grace;
    for child in &mut children {
        if tokio::time::timeout_at(deadline, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

#[cfg(unix)]
fn interrupt(child: &Child) {
    use rustix::process::{kill_process, Pid, Signal};
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = kill_process(pid, Signal::INT);
    }
}

#[cfg(not(unix))]
fn interrupt(_child: &Child) {}

/// Local backend: reaps exited children (restarting crashed ones with backoff) and
/// starts missing replicas.
fn sync_local(
    cp: &ControlPlane,
    cmd: &AgentCommand,
    config: &ProvisionConfig,
    launches: &BTreeMap<ServerName, ServerLaunch>,
    children: &mut BTreeMap<Key, Replica>,
    backoff: &mut HashMap<Key, Backoff>,
) {
    let now = Instant::now();
    let mut exited = Vec::new();
    for (key, r) in children.iter_mut() {
        if let Some(Ok(Some(status))) = r.child.as_mut().map(Child::try_wait) {
            exited.push((key.clone(), status, matches!(r.phase, Phase::Running)));
        }
    }
    for ((server, idx), status, unexpected) in exited {
        children.remove(&(server.clone(), idx));
        let wanted = launches.get(&server).is_some_and(|l| idx < l.replicas);
        if unexpected && wanted {
            let b = backoff.entry((server.clone(), idx)).or_default();
            b.failures = b.failures.saturating_add(1);
            let delay = Duration::from_millis(200)
                .saturating_mul(2u32.saturating_pow(b.failures.saturating_sub(1).min(16)))
                .min(config.max_backoff);
            b.not_before = Some(now + delay);
            warn!(%server, idx, %status, ?delay, "server replica exited; restarting");
            cp.state().event(
                format!("server/{server}"),
                now_millis(),
                true,
                "ReplicaCrashed",
                format!("replica {idx} exited ({status}); restarting in {delay:?}"),
            );
        } else {
            info!(%server, idx, "server replica stopped");
            cp.state().event(
                format!("server/{server}"),
                now_millis(),
                false,
                "ReplicaStopped",
                format!("replica {idx} stopped"),
            );
        }
    }
    for (server, launch) in launches {
        for idx in 0..launch.replicas {
            let key = (server.clone(), idx);
            if children.contains_key(&key) {
                continue;
            }
            if backoff
                .get(&key)
                .and_then(|b| b.not_before)
                .is_some_and(|t| now < t)
            {
                continue;
            }
            match spawn(cmd, server, idx, launch) {
                Ok(child) => {
                    info!(%server, idx, pid = child.id(), "server replica started");
                    children.insert(
                        key,
                        Replica {
                            child: Some(child),
                            phase: Phase::Running,
                        },
                    );
                }
                Err(e) => {
                    warn!(%server, idx, "cannot start server replica: {e}");
                    let b = backoff.entry(key).or_default();
                    b.failures = b.failures.saturating_add(1);
                    b.not_before = Some(now + config.max_backoff);
                }
            }
        }
    }
    backoff.retain(|k, _| children.contains_key(k) || launches.contains_key(&k.0));
}

/// External backend: the replicas are the connected agents.
fn sync_external(cp: &ControlPlane, replicas: &mut BTreeMap<Key, Replica>) {
    let connected: BTreeSet<Key> = cp
        .state()
        .connected_keys()
        .into_iter()
        .map(|(s, i)| (s, i.0))
        .collect();
    replicas.retain(|k, _| connected.contains(k));
    for key in connected {
        replicas.entry(key).or_insert(Replica {
            child: None,
            phase: Phase::Running,
        });
    }
}

/// Removes replicas that are no longer wanted: the highest ordinals, drained first.
fn remove_unwanted(
    cp: &ControlPlane,
    backend: &Backend,
    config: &ProvisionConfig,
    launches: &BTreeMap<ServerName, ServerLaunch>,
    replicas: &mut BTreeMap<Key, Replica>,
) {
    let now = Instant::now();
    for ((server, idx), r) in replicas.iter_mut() {
        let launch = launches.get(server);
        let wanted = launch.is_some_and(|l| *idx < l.replicas);
        let ri = ReplicaIndex(*idx);
        if wanted {
            // Wanted again (scaled back up) before it went: keep it. A local replica
            // already told to drain is left to exit and started again.
            let keep = match r.phase {
                Phase::Running => false,
                Phase::Draining { .. } => true,
                Phase::Released { .. } => r.child.is_none(),
            };
            if keep {
                cp.state().clear_draining(server, ri);
                r.phase = Phase::Running;
            }
            continue;
        }
        match r.phase {
            Phase::Running => {
                cp.state().set_draining(server, ri);
                if launch.is_none() {
                    // server deleted: release right away
                    release(cp, backend, server, ri);
                    r.phase = Phase::Released { since: now };
                } else {
                    cp.reconcile_now();
                    r.phase = Phase::Draining { since: now };
                }
            }
            Phase::Draining { since } => {
                let ready = cp.state().replica_can_stop(server, ri);
                let late = now.duration_since(since) > config.drain_timeout;
                if late && !ready {
                    warn!(%server, idx, "models of a removed replica are not available elsewhere after the drain timeout; releasing it anyway");
                }
                if ready || late {
                    release(cp, backend, server, ri);
                    r.phase = Phase::Released { since: now };
                }
            }
            Phase::Released { since } => {
                if now.duration_since(since) > config.exit_timeout {
                    if let Some(child) = r.child.as_mut() {
                        warn!(%server, idx, "replica did not exit after drain; killing it");
                        let _ = child.start_kill();
                    }
                }
            }
        }
    }
}

/// A drained replica may go: a local one is told to drain and exit; an external one
/// leaves the scale target (Kubernetes deletes the pod; its agent drains on SIGTERM).
fn release(cp: &ControlPlane, backend: &Backend, server: &ServerName, replica: ReplicaIndex) {
    match backend {
        Backend::Local(_) => cp.drain_replica(server, replica),
        Backend::External => {
            info!(%server, %replica, "replica released: left out of the scale target");
            cp.reconcile_now();
        }
    }
}

/// Agents that announced they are leaving are told to drain once their models are
/// available elsewhere, or after the drain timeout.
fn drain_leaving(cp: &ControlPlane, config: &ProvisionConfig) {
    let now = now_millis();
    let leaving = cp.state().leaving_replicas();
    for (server, replica, since) in leaving {
        let ready = cp.state().replica_can_stop(&server, replica);
        let waited = Duration::from_millis(now.saturating_sub(since));
        if ready || waited > config.drain_timeout {
            info!(%server, %replica, ready, "leaving replica told to drain");
            cp.drain_replica(&server, replica);
        }
    }
}

/// The count each Server's replica set should have: the desired count, or more while
/// a removed replica still holds models that are not available elsewhere (a
/// StatefulSet removes the highest ordinals first).
fn publish_scale_targets(
    cp: &ControlPlane,
    launches: &BTreeMap<ServerName, ServerLaunch>,
    replicas: &BTreeMap<Key, Replica>,
) {
    let targets = launches
        .iter()
        .map(|(server, launch)| {
            let pending = replicas
                .iter()
                .filter(|((s, idx), r)| {
                    s == server
                        && *idx >= launch.replicas
                        && !matches!(r.phase, Phase::Released { .. })
                })
                .map(|((_, idx), _)| idx.saturating_add(1))
                .max()
                .unwrap_or(0);
            (server.clone(), launch.replicas.max(pending))
        })
        .collect();
    cp.state().set_scale_targets(targets);
}

fn spawn(
    cmd: &AgentCommand,
    server: &ServerName,
    idx: u32,
    launch: &ServerLaunch,
) -> std::io::Result<Child> {
    let log_path = cmd.log_dir.join(format!("{server}-{idx}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let log2 = log.try_clone()?;
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args)
        .arg("--control-plane")
        .arg(&cmd.control_url)
        .arg("--token-file")
        .arg(&cmd.token_file)
        .arg("--server")
        .arg(server.as_str())
        .arg("--replica")
        .arg(idx.to_string())
        .arg("--runtime")
        .arg(launch.runtime.as_str())
        .arg("--capabilities")
        .arg(launch.capabilities.join(","))
        .arg("--memory-bytes")
        .arg(launch.memory_bytes.to_string())
        .arg("--overcommit-percent")
        .arg(launch.overcommit_percent.to_string())
        .arg("--exit-after-disconnect")
        .arg(cmd.orphan_grace.as_secs().max(1).to_string());
    if let Some(socket) = agent_socket(&cmd.socket_dir, server.as_str(), idx) {
        c.arg("--data-socket").arg(socket);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(true);
    c.spawn()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_replica_socket_lives_in_the_data_dirs_socket_folder_and_long_paths_fall_back_to_tcp() {
        let dir = socket_dir(Path::new("/run/cs"));
        assert_eq!(dir, Path::new("/run/cs/sockets"));
        assert_eq!(
            agent_socket(&dir, "pool", 2).unwrap(),
            Path::new("/run/cs/sockets/pool-2.sock")
        );
        assert!(agent_socket(&dir, &"x".repeat(90), 0).is_none());
        assert!(socket_dir(Path::new("rel")).is_absolute());
    }

    #[test]
    fn only_the_socket_the_provisioner_gives_that_replica_is_accepted() {
        let data = Path::new("/run/cs");
        let ok = "/run/cs/sockets/pool-2.sock";
        assert_eq!(
            accepted_data_socket(data, "pool", 2, ok).unwrap(),
            Path::new(ok)
        );
        for wrong in [
            "/var/run/docker.sock",
            "/run/cs/sockets/pool-3.sock",
            "/run/cs/sockets/../sockets/pool-2.sock",
            "sockets/pool-2.sock",
        ] {
            assert!(
                accepted_data_socket(data, "pool", 2, wrong).is_none(),
                "{wrong}"
            );
        }
        assert!(accepted_data_socket(data, "other", 2, ok).is_none());
    }
}
