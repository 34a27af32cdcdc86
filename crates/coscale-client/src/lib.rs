//! The control plane's REST API client (`/api/v1`, bearer token), used by the CLI's
//! client commands and by the Kubernetes operator.

use std::path::{Path, PathBuf};

use anyhow::Context;
use coscale_api::rest::{
    ApplyResponse, Endpoints, ErrorResponse, ManifestRequest, ModelStatus, ServerConfigStatus,
    ServerStatus,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
enum Token {
    Static(String),
    /// Read before every request: a projected ServiceAccount token is rotated by the
    /// kubelet in place.
    File(PathBuf),
}

/// Where the platform is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoints: Endpoints,
    token: Token,
    http: reqwest::Client,
}

/// Reads `DIR/endpoints.json` and `DIR/token` of a running `coscale up`.
pub fn read_endpoints(dir: &Path) -> anyhow::Result<(Endpoints, String)> {
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

/// Endpoints of a control plane known only by its API URL.
pub fn api_endpoints(
    api: &str,
    router_http: Option<String>,
    router_grpc: Option<String>,
) -> Endpoints {
    let api = api.trim_end_matches('/');
    Endpoints {
        api: api.to_owned(),
        router_http: router_http.unwrap_or_else(|| "http://127.0.0.1:9000".to_owned()),
        router_grpc: router_grpc.unwrap_or_else(|| "http://127.0.0.1:9500".to_owned()),
        metrics: format!("{api}/metrics"),
        agent: None,
        custom_metrics: None,
        keda: None,
    }
}

/// A non-2xx answer of the control plane: its HTTP status and what it said. Displayed as its
/// message, then each detail on a line of its own. Callers that act on the status (the
/// operator on 409 Conflict) find it with `anyhow::Error::downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub error: String,
    pub details: Vec<String>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)?;
        for detail in &self.details {
            write!(f, "\n  {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

/// The value of a 2xx answer, or the control plane's error as an [`ApiFailure`].
fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> anyhow::Result<T> {
    if status.is_success() {
        return serde_json::from_slice(bytes).context("unexpected answer from the control plane");
    }
    let failure = match serde_json::from_slice::<ErrorResponse>(bytes) {
        Ok(e) => ApiFailure {
            status: status.as_u16(),
            error: e.error,
            details: e.details,
        },
        Err(_) => ApiFailure {
            status: status.as_u16(),
            error: format!(
                "control plane answered {status}: {}",
                String::from_utf8_lossy(bytes)
            ),
            details: Vec::new(),
        },
    };
    Err(failure.into())
}

impl Client {
    pub fn from_parts(endpoints: Endpoints, token: String) -> Self {
        Self {
            endpoints,
            token: Token::Static(token),
            http: reqwest::Client::new(),
        }
    }

    /// A client whose token is (re)read from `token_file` before every request.
    pub fn with_token_file(endpoints: Endpoints, token_file: PathBuf) -> Self {
        Self {
            endpoints,
            token: Token::File(token_file),
            http: reqwest::Client::new(),
        }
    }

    fn token(&self) -> anyhow::Result<String> {
        match &self.token {
            Token::Static(t) => Ok(t.clone()),
            Token::File(path) => Ok(std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_owned()),
        }
    }

    /// Sends a request; the status and body of the answer.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
        let resp = req
            .bearer_auth(self.token()?)
            .send()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.endpoints.api))?;
        let status = resp.status();
        Ok((status, resp.bytes().await?))
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let (status, bytes) = self.exchange(req).await?;
        decode(status, &bytes)
    }

    /// Like `send`, but `Ok(None)` when the answer is 404 Not Found.
    async fn send_optional<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Option<T>> {
        let (status, bytes) = self.exchange(req).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(status, &bytes).map(Some)
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

    /// `GET /api/v1/models/NAME`, `None` when the control plane has no such model.
    pub async fn find_model(&self, name: &str) -> anyhow::Result<Option<ModelStatus>> {
        self.send_optional(self.http.get(self.url(&format!("/api/v1/models/{name}"))))
            .await
    }

    /// GETs a JSON document of the API (`/api/v1/hpas`, `/apis/custom.metrics.k8s.io/…`).
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(self.url(path))).await
    }

    /// GETs a JSON document of the API, `None` on 404.
    pub async fn find_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        self.send_optional(self.http.get(self.url(path))).await
    }

    pub async fn servers(&self) -> anyhow::Result<Vec<ServerStatus>> {
        self.send(self.http.get(self.url("/api/v1/servers"))).await
    }

    pub async fn server(&self, name: &str) -> anyhow::Result<ServerStatus> {
        self.send(self.http.get(self.url(&format!("/api/v1/servers/{name}"))))
            .await
    }

    pub async fn server_configs(&self) -> anyhow::Result<Vec<ServerConfigStatus>> {
        self.send(self.http.get(self.url("/api/v1/serverconfigs")))
            .await
    }

    pub async fn server_config(&self, name: &str) -> anyhow::Result<ServerConfigStatus> {
        self.send(
            self.http
                .get(self.url(&format!("/api/v1/serverconfigs/{name}"))),
        )
        .await
    }
}
