//! `coscale infer`, and the V2 client calls the demo and the load generator share.

use std::process::ExitCode;

use anyhow::{bail, Context};
use coscale_api::pb::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use coscale_api::v2::{InferRequest, InferResponse};
use tonic::transport::Channel;

use crate::client::Target;

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Model name.
    pub model: String,
    /// V2 request body as JSON, or @FILE to read it from a file.
    #[arg(long, short = 'd')]
    pub data: String,
    /// Use gRPC instead of REST.
    #[arg(long)]
    pub grpc: bool,
    #[command(flatten)]
    pub target: Target,
}

/// A V2 client to the router over REST or gRPC.
#[derive(Clone)]
pub enum V2Client {
    Rest { http: reqwest::Client, base: String },
    Grpc(GrpcInferenceServiceClient<Channel>),
}

/// Why one inference failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferFailure {
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("gRPC {code}: {message}")]
    Grpc { code: String, message: String },
    #[error("transport: {0}")]
    Transport(String),
}

impl InferFailure {
    /// A short kind for tallies ("HTTP 503", "gRPC Unavailable", "transport").
    pub fn kind(&self) -> String {
        match self {
            InferFailure::Http { status, .. } => format!("HTTP {status}"),
            InferFailure::Grpc { code, .. } => format!("gRPC {code}"),
            InferFailure::Transport(_) => "transport".to_owned(),
        }
    }
}

impl V2Client {
    pub async fn rest(router_http: &str) -> Self {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()
            .unwrap_or_default();
        V2Client::Rest {
            http,
            base: router_http.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn grpc(router_grpc: &str) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(router_grpc.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the router at {router_grpc}"))?;
        Ok(V2Client::Grpc(
            GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        ))
    }

    /// One inference.
    pub async fn infer(
        &mut self,
        model: &str,
        request: &InferRequest,
        rest_body: &[u8],
    ) -> Result<InferResponse, InferFailure> {
        match self {
            V2Client::Rest { http, base } => {
                let resp = http
                    .post(format!("{base}/v2/models/{model}/infer"))
                    .header("content-type", "application/json")
                    .body(rest_body.to_vec())
                    .send()
                    .await
                    .map_err(|e| InferFailure::Transport(e.to_string()))?;
                let status = resp.status();
                let ihcl = resp
                    .headers()
                    .get("inference-header-content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| InferFailure::Transport(e.to_string()))?;
                if !status.is_success() {
                    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                    return Err(InferFailure::Http {
                        status: status.as_u16(),
                        message,
                    });
                }
                InferResponse::from_json(&bytes, ihcl).map_err(|e| InferFailure::Http {
                    status: status.as_u16(),
                    message: format!("unreadable response: {e}"),
                })
            }
            V2Client::Grpc(client) => {
                let resp = client
                    .model_infer(request.to_proto(model, None, false))
                    .await
                    .map_err(|s| InferFailure::Grpc {
                        code: format!("{:?}", s.code()),
                        message: s.message().to_owned(),
                    })?;
                InferResponse::from_proto(resp.into_inner()).map_err(|e| InferFailure::Grpc {
                    code: "Internal".to_owned(),
                    message: format!("unreadable response: {e}"),
                })
            }
        }
    }
}

/// Reads `--data`: inline JSON or `@FILE`.
pub fn read_data(data: &str) -> anyhow::Result<Vec<u8>> {
    match data.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}")),
        None => Ok(data.as_bytes().to_vec()),
    }
}

pub async fn run(a: InferArgs) -> anyhow::Result<ExitCode> {
    let body = read_data(&a.data)?;
    let request = InferRequest::from_json(&body, None)
        .map_err(|e| anyhow::anyhow!("--data is not a valid V2 inference request: {e}"))?;
    let client = a.target.client()?;
    let mut v2 = if a.grpc {
        V2Client::grpc(&client.endpoints.router_grpc).await?
    } else {
        V2Client::rest(&client.endpoints.router_http).await
    };
    match v2.infer(&a.model, &request, &body).await {
        Ok(resp) => {
            let json: serde_json::Value = serde_json::from_slice(&resp.to_json())?;
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("inference failed: {e}"),
    }
}
