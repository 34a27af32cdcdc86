//! How the CLI's client commands find the control plane; the client itself is
//! `coscale_client::Client` (shared with the Kubernetes operator).

use std::path::PathBuf;

use anyhow::bail;
pub use coscale_client::Client;

/// How client commands find the platform (`--data-dir`, or `--api` + `--token`).
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Data directory of a running `coscale up` (reads endpoints.json and token).
    #[arg(
        long,
        env = "COSCALE_DATA_DIR",
        default_value = ".coscale",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Control-plane API URL (instead of --data-dir).
    #[arg(long, env = "COSCALE_API", global = true)]
    pub api: Option<String>,
    /// API token (with --api).
    #[arg(long, env = "COSCALE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Router REST URL (with --api; default: taken from the API host on port 9000).
    #[arg(long, env = "COSCALE_ROUTER", global = true)]
    pub router: Option<String>,
    /// Router gRPC URL (with --api).
    #[arg(long, env = "COSCALE_ROUTER_GRPC", global = true)]
    pub router_grpc: Option<String>,
}

impl Target {
    /// The client for this target.
    pub fn client(&self) -> anyhow::Result<Client> {
        let (endpoints, token) = match (&self.api, &self.token) {
            (Some(api), Some(token)) => (
                coscale_client::api_endpoints(api, self.router.clone(), self.router_grpc.clone()),
                token.clone(),
            ),
            (Some(_), None) => bail!("--api needs --token (or COSCALE_TOKEN)"),
            _ => coscale_client::read_endpoints(&self.data_dir)?,
        };
        Ok(Client::from_parts(endpoints, token))
    }
}
