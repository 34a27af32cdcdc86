//! The control-plane API client used by the CLI's client commands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use coscale_api::rest::{
    ApplyResponse, Endpoints, ErrorResponse, ManifestRequest, ModelStatus, ServerStatus,
};
use serde::de::DeserializeOwned;

/// Where the platform is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoints: Endpoints,
    token: String,
    http: reqwest::Client,
}

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

fn read_endpoints(dir: &Path) -> anyhow::Result<(Endpoints, String)> {
    let ep = dir.join("endpoints.json");
    let text = std::fs::read_to_string(&ep).with_context(|| {
        format!(
            "cannot read {}: is `coscale up --data-dir {}` running? (or pass --api and --token)",
            ep.display(),
            dir.display()
        )
    })?;
    let endpoints: Endpoints =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", ep.display()))?;
    let token = std::fs::read_to_string(dir.join("token"))
        .with_context(|| format!("cannot read the token in {}", dir.display()))?
        .trim()
        .to_owned();
    Ok((endpoints, token))
}

impl Client {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        let (endpoints, token) = match (&target.api, &target.token) {
            (Some(api), Some(token)) => (
                Endpoints {
                    api: api.trim_end_matches('/').to_owned(),
                    router_http: target
                        .router
                        .clone()
                        .unwrap_or_else(|| "http://127.0.0.1:9000".to_owned()),
                    router_grpc: target
                        .router_grpc
                        .clone()
                        .unwrap_or_else(|| "http://127.0.0.1:9500".to_owned()),
                    metrics: format!("{}/metrics", api.trim_end_matches('/')),
                    agent: None,
                    custom_metrics: None,
                    keda: None,
                },
                token.clone(),
            ),
            (Some(_), None) => bail!("--api needs --token (or COSCALE_TOKEN)"),
            _ => read_endpoints(&target.data_dir)?,
        };
        Ok(Self::from_parts(endpoints, token))
    }

    pub fn from_parts(endpoints: Endpoints, token: String) -> Self {
        Self {
            endpoints,
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp =
            req.bearer_auth(&self.token).send().await.with_context(|| {
                format!("cannot reach the control plane at {}", self.endpoints.api)
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .context("unexpected answer from the control plane");
        }
        match serde_json::from_slice::<ErrorResponse>(&bytes) {
            Ok(e) if e.details.is_empty() => bail!("{}", e.error),
            Ok(e) => bail!("{}\n  {}", e.error, e.details.join("\n  ")),
            Err(_) => bail!(
                "control plane answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoints.api)
    }

    pub async fn apply(&self, req: &ManifestRequest) -> anyhow::Result<ApplyResponse> {
        self.send(self.http.post(self.url("/api/v1/apply")).json(req))
            .await
    }

    pub async fn delete_manifest(&self, req: &ManifestRequest) -> anyhow::Result<ApplyResponse> {
        self.send(self.http.post(self.url("/api/v1/delete")).json(req))
            .await
    }

    pub async fn delete(&self, kind_path: &str, name: &str) -> anyhow::Result<ApplyResponse> {
        self.send(
            self.http
                .delete(self.url(&format!("/api/v1/{kind_path}/{name}"))),
        )
        .await
    }

    pub async fn models(&self) -> anyhow::Result<Vec<ModelStatus>> {
        self.send(self.http.get(self.url("/api/v1/models"))).await
    }

    pub async fn model(&self, name: &str) -> anyhow::Result<ModelStatus> {
        self.send(self.http.get(self.url(&format!("/api/v1/models/{name}"))))
            .await
    }

    /// GETs a JSON document of the API (`/api/v1/hpas`, `/apis/custom.metrics.k8s.io/…`).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn servers(&self) -> anyhow::Result<Vec<ServerStatus>> {
        self.send(self.http.get(self.url("/api/v1/servers"))).await
    }

    pub async fn server(&self, name: &str) -> anyhow::Result<ServerStatus> {
        self.send(self.http.get(self.url(&format!("/api/v1/servers/{name}"))))
            .await
    }
}
