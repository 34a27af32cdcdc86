//! The local provisioner: runs each Server's replicas as child processes
//! (`coscale agent ...`), ordinals 0..N-1 like a StatefulSet, restarts crashed ones
//! with backoff, and removes the highest ordinals first, after draining them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
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
    /// A replica exits when its control plane has been gone this long (no orphans).
    pub orphan_grace: std::time::Duration,
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

enum Phase {
    Running,
    /// Marked draining; waiting for its models to be available elsewhere.
    Draining {
        since: Instant,
    },
    /// Told to exit; waiting for it to go.
    Stopping {
        since: Instant,
    },
}

struct Replica {
    child: Child,
    phase: Phase,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

/// Runs the provisioner until `shutdown` resolves, then stops every child.
pub async fn run(
    cp: ControlPlane,
    cmd: AgentCommand,
    config: ProvisionConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut children: BTreeMap<(ServerName, u32), Replica> = BTreeMap::new();
    let mut backoff: HashMap<(ServerName, u32), Backoff> = HashMap::new();
    if let Err(e) = std::fs::create_dir_all(&cmd.log_dir) {
        warn!("cannot create log dir {}: {e}", cmd.log_dir.display());
    }
    let mut tick = tokio::time::interval(config.tick);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let launches = cp.state().server_launches();
        step(&cp, &cmd, &config, &launches, &mut children, &mut backoff);
    }
    info!(replicas = children.len(), "stopping server replicas");
    for (_, mut r) in std::mem::take(&mut children) {
        let _ = r.child.start_kill();
        let _ = r.child.wait().await;
    }
}

fn step(
    cp: &ControlPlane,
    cmd: &AgentCommand,
    config: &ProvisionConfig,
    launches: &BTreeMap<ServerName, ServerLaunch>,
    children: &mut BTreeMap<(ServerName, u32), Replica>,
    backoff: &mut HashMap<(ServerName, u32), Backoff>,
) {
    let now = Instant::now();
    // reap exited children
    let mut exited = Vec::new();
    for (key, r) in children.iter_mut() {
        if let Ok(Some(status)) = r.child.try_wait() {
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
    // start missing replicas
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
                            child,
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
    // remove replicas that are no longer wanted: highest ordinals, drained first
    for ((server, idx), r) in children.iter_mut() {
        let launch = launches.get(server);
        let wanted = launch.is_some_and(|l| *idx < l.replicas);
        if wanted {
            if matches!(r.phase, Phase::Draining { .. }) {
                // wanted again before it was told to go: keep it
                cp.state().clear_draining(server, ReplicaIndex(*idx));
                r.phase = Phase::Running;
            }
            continue;
        }
        let ri = ReplicaIndex(*idx);
        match r.phase {
            Phase::Running => {
                if launch.is_none() {
                    // server deleted: stop right away
                    cp.drain_replica(server, ri);
                    r.phase = Phase::Stopping { since: now };
                } else {
                    cp.state().set_draining(server, ri);
                    cp.reconcile_now();
                    r.phase = Phase::Draining { since: now };
                }
            }
            Phase::Draining { since } => {
                let ready = cp.state().replica_can_stop(server, ri);
                if ready || now.duration_since(since) > config.drain_timeout {
                    cp.drain_replica(server, ri);
                    r.phase = Phase::Stopping { since: now };
                }
            }
            Phase::Stopping { since } => {
                if now.duration_since(since) > config.exit_timeout {
                    warn!(%server, idx, "replica did not exit after drain; killing it");
                    let _ = r.child.start_kill();
                }
            }
        }
    }
    backoff.retain(|k, _| children.contains_key(k) || launches.contains_key(&k.0));
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
        .arg(cmd.orphan_grace.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(true);
    c.spawn()
}
