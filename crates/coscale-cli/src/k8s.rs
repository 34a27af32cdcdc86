//! `coscale crds` (the CustomResourceDefinitions, generated from the manifest types) and
//! `coscale operator` (Kubernetes mode), both from `coscale-k8s`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use coscale_k8s::operator::{self, OperatorConfig};

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write one file per CRD (`<plural>.mlops.seldon.io.yaml`) into this directory
    /// (repeatable); without it the CRDs go to stdout as one multi-document YAML.
    #[arg(long)]
    pub out: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// The control plane's REST API.
    #[arg(
        long,
        env = "COSCALE_CONTROL_PLANE_URL",
        default_value = "http://coscale-control:9004"
    )]
    pub control_plane_url: String,
    /// Bearer token file for the control plane (a projected ServiceAccount token with
    /// audience `coscale`; re-read before every call).
    #[arg(
        long,
        env = "COSCALE_TOKEN_FILE",
        default_value = "/var/run/secrets/coscale/token"
    )]
    pub token_file: PathBuf,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The install's namespace (default ServerConfigs; agents reach
    /// `coscale-control.<ns>:9005`). Default: POD_NAMESPACE, else the pod's
    /// ServiceAccount namespace, else coscale-system.
    #[arg(long)]
    pub install_namespace: Option<String>,
    /// `COSCALE_CONTROL_PLANE` given to the agents (default
    /// `http://coscale-control.<install namespace>:9005`).
    #[arg(long)]
    pub agent_control_plane: Option<String>,
    /// Seconds between two looks at a Model or Server without a change (control-plane
    /// state, scale decisions).
    #[arg(long, default_value_t = 5.0)]
    pub resync_seconds: f64,
}

pub fn crds(a: CrdsArgs) -> anyhow::Result<ExitCode> {
    if a.out.is_empty() {
        print!("{}", coscale_k8s::crd::crds_yaml()?);
        return Ok(ExitCode::SUCCESS);
    }
    let files = coscale_k8s::crd::crd_files()?;
    for dir in &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, yaml) in &files {
            let path = dir.join(name);
            std::fs::write(&path, yaml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn operator(a: OperatorArgs) -> anyhow::Result<ExitCode> {
    if !(a.resync_seconds.is_finite() && a.resync_seconds > 0.0) {
        anyhow::bail!(
            "--resync-seconds must be a positive number, got {}",
            a.resync_seconds
        );
    }
    operator::run(OperatorConfig {
        control_plane_url: a.control_plane_url,
        token_file: a.token_file,
        namespace: a.namespace,
        install_namespace: a.install_namespace.unwrap_or_else(operator::own_namespace),
        agent_control_plane: a.agent_control_plane,
        resync: Duration::from_secs_f64(a.resync_seconds),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
