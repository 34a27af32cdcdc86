//! ServerConfigs: the built-in ones (`builtin`, `mlserver`, `triton`) and how a
//! Server plus its ServerConfig turn into what a server replica runs with.

use coscale_core::quantity::Quantity;
use coscale_core::resources::{Server, ServerConfig};
use serde::{Deserialize, Serialize};

/// Default memory capacity of a server replica when nothing sets one.
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;
/// Default overcommit, as in Seldon's Helm chart.
pub const DEFAULT_OVERCOMMIT_PERCENT: u32 = 10;

/// Which inference server a replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// coscale's in-process ONNX runtime.
    Builtin,
    Mlserver,
    Triton,
}

impl RuntimeKind {
    /// Every runtime, which is also every built-in ServerConfig.
    pub const ALL: [RuntimeKind; 3] = [Self::Builtin, Self::Mlserver, Self::Triton];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Mlserver => "mlserver",
            Self::Triton => "triton",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "builtin" => Some(Self::Builtin),
            "mlserver" => Some(Self::Mlserver),
            "triton" => Some(Self::Triton),
            _ => None,
        }
    }

    /// Capabilities a replica of this runtime advertises by default (Seldon's Helm
    /// defaults for mlserver and triton).
    pub fn default_capabilities(self) -> Vec<String> {
        let caps: &[&str] = match self {
            Self::Builtin => &["onnx"],
            Self::Mlserver => &[
                "mlserver",
                "alibi-detect",
                "alibi-explain",
                "huggingface",
                "lightgbm",
                "mlflow",
                "python",
                "sklearn",
                "spark-mlib",
                "xgboost",
            ],
            Self::Triton => &[
                "triton",
                "dali",
                "fil",
                "onnx",
                "openvino",
                "python",
                "pytorch",
                "tensorflow",
                "tensorrt",
            ],
        };
        caps.iter().map(|s| (*s).to_owned()).collect()
    }
}

/// The built-in ServerConfig names.
pub fn builtin(name: &str) -> Option<RuntimeKind> {
    RuntimeKind::parse(name)
}

/// Everything the provisioner needs to start a replica of a Server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLaunch {
    pub runtime: RuntimeKind,
    pub capabilities: Vec<String>,
    pub memory_bytes: u64,
    pub overcommit_percent: u32,
    pub replicas: u32,
}

/// Runtime of a user-defined ServerConfig: from its containers' names or images
/// (`mlserver`, `triton`), else the built-in runtime.
fn runtime_of_pod_spec(pod_spec: &serde_json::Value) -> Option<RuntimeKind> {
    let containers = pod_spec.get("containers")?.as_array()?;
    containers.iter().find_map(|c| {
        let text = format!(
            "{} {}",
            c.get("name").and_then(|v| v.as_str()).unwrap_or(""),
            c.get("image").and_then(|v| v.as_str()).unwrap_or("")
        );
        if text.contains("mlserver") {
            Some(RuntimeKind::Mlserver)
        } else if text.contains("triton") {
            Some(RuntimeKind::Triton)
        } else {
            None
        }
    })
}

/// The largest `resources.requests.memory` (else `limits.memory`) among the pod
/// spec's containers.
fn memory_of_pod_spec(pod_spec: &serde_json::Value) -> Option<u64> {
    let containers = pod_spec.get("containers")?.as_array()?;
    containers
        .iter()
        .filter_map(|c| {
            let res = c.get("resources")?;
            let mem = res
                .get("requests")
                .and_then(|r| r.get("memory"))
                .or_else(|| res.get("limits").and_then(|r| r.get("memory")))?;
            let q: Quantity = serde_json::from_value(mem.clone()).ok()?;
            Some(q.as_bytes())
        })
        .max()
}

/// The runtime the replicas of the ServerConfig `name` run: named by its containers
/// (`mlserver`, `triton`) when it is applied (`config`), else by its name when that is a
/// built-in one, else the built-in runtime.
pub fn runtime_of_config(name: &str, config: Option<&ServerConfig>) -> RuntimeKind {
    config
        .and_then(|c| runtime_of_pod_spec(&c.pod_spec))
        .or_else(|| builtin(name))
        .unwrap_or(RuntimeKind::Builtin)
}

/// Resolves a Server against its ServerConfig (None = built-in or missing).
pub fn launch(server: &Server, config: Option<&ServerConfig>) -> ServerLaunch {
    let runtime = runtime_of_config(&server.server_config, config);
    let mut capabilities = if server.capabilities.is_empty() {
        let mut caps = runtime.default_capabilities();
        for extra in &server.extra_capabilities {
            if !caps.contains(extra) {
                caps.push(extra.clone());
            }
        }
        caps
    } else {
        server.capabilities.clone()
    };
    capabilities.dedup();
    let memory_bytes = server
        .pod_spec
        .as_ref()
        .and_then(memory_of_pod_spec)
        .or_else(|| config.and_then(|c| memory_of_pod_spec(&c.pod_spec)))
        .unwrap_or(DEFAULT_MEMORY_BYTES);
    ServerLaunch {
        runtime,
        capabilities,
        memory_bytes,
        overcommit_percent: DEFAULT_OVERCOMMIT_PERCENT,
        replicas: server.scaling.replicas,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use coscale_core::resources::{parse_manifests, Resource};

    fn server(spec: &str) -> Server {
        let text = format!(
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: s\nspec:\n{spec}"
        );
        match parse_manifests("s.yaml", &text).unwrap().remove(0) {
            Resource::Server(s) => s,
            other => panic!("not a Server: {other:?}"),
        }
    }

    const MLSERVER_DEFAULTS: [&str; 10] = [
        "mlserver",
        "alibi-detect",
        "alibi-explain",
        "huggingface",
        "lightgbm",
        "mlflow",
        "python",
        "sklearn",
        "spark-mlib",
        "xgboost",
    ];

    #[test]
    fn an_mlserver_replica_advertises_seldons_default_capabilities() {
        let l = launch(&server("  serverConfig: mlserver\n"), None);
        assert_eq!(l.runtime, RuntimeKind::Mlserver);
        assert_eq!(l.capabilities, MLSERVER_DEFAULTS);
        let l = launch(&server("  serverConfig: builtin\n"), None);
        assert_eq!(l.capabilities, ["onnx"]);
    }

    #[test]
    fn server_capabilities_replace_the_defaults_and_ignore_extra_capabilities() {
        let l = launch(
            &server("  serverConfig: mlserver\n  capabilities: [sklearn, gpu]\n  extraCapabilities: [ignored]\n"),
            None,
        );
        assert_eq!(l.capabilities, ["sklearn", "gpu"]);
    }

    #[test]
    fn extra_capabilities_extend_the_defaults_once() {
        let l = launch(
            &server("  serverConfig: mlserver\n  extraCapabilities: [mlserver-1.7.1, sklearn]\n"),
            None,
        );
        let mut want: Vec<&str> = MLSERVER_DEFAULTS.to_vec();
        want.push("mlserver-1.7.1");
        assert_eq!(l.capabilities, want);
    }

    #[test]
    fn a_user_server_config_with_an_mlserver_container_gets_the_mlserver_defaults() {
        let text = "apiVersion: mlops.seldon.io/v1alpha1\nkind: ServerConfig\nmetadata:\n  name: my-ml\nspec:\n  podSpec:\n    containers:\n    - name: agent\n      image: ghcr.io/coscale/coscale:0.1\n    - name: mlserver\n      image: seldonio/mlserver:1.7.1\n      resources:\n        requests:\n          memory: 2Gi\n";
        let cfg = match parse_manifests("c.yaml", text).unwrap().remove(0) {
            Resource::ServerConfig(c) => c,
            other => panic!("not a ServerConfig: {other:?}"),
        };
        let l = launch(&server("  serverConfig: my-ml\n"), Some(&cfg));
        assert_eq!(l.runtime, RuntimeKind::Mlserver);
        assert_eq!(l.capabilities, MLSERVER_DEFAULTS);
        assert_eq!(l.memory_bytes, 2 << 30);
    }
}
