//! `coscale demo`: starts the platform on free ports in a temporary directory,
//! applies the example manifests, sends real inference traffic over REST and gRPC,
//! prints the status and latency tables, and stops cleanly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coscale_api::v2::InferRequest;

use crate::client::Client;
use crate::infer::V2Client;
use crate::objects;
use crate::output;
use crate::platform::{Platform, PlatformOptions};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder holding `manifests/demo.yaml` and `models/`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))]
    pub examples: PathBuf,
    /// Seconds of traffic per protocol.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent clients per model and protocol.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// Outcome of a batch of requests.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub latencies_us: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// The q-quantile latency in milliseconds (nearest rank).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1000.0
    }
}

/// Closed-loop clients sending `request` to `model` until `until`.
async fn hammer(
    client: V2Client,
    model: String,
    request: InferRequest,
    concurrency: usize,
    until: Instant,
) -> Tally {
    let body = request.to_json();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let model = model.clone();
        let request = request.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < until {
                let start = Instant::now();
                match client.infer(&model, &request, &body).await {
                    Ok(_) => {
                        t.ok += 1;
                        t.latencies_us
                            .push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    Err(e) => {
                        t.failed += 1;
                        *t.errors.entry(e.kind()).or_default() += 1;
                    }
                }
            }
            t
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            total.merge(t);
        }
    }
    total
}

fn iris_request(rows: usize) -> InferRequest {
    let samples = [
        [5.1f32, 3.5, 1.4, 0.2],
        [6.7, 3.0, 5.2, 2.3],
        [5.9, 3.0, 4.2, 1.5],
    ];
    let data: Vec<f32> = (0..rows).flat_map(|i| samples[i % 3]).collect();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]
    });
    InferRequest::from_json(body.to_string().as_bytes(), None).unwrap_or_default()
}

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let manifest = a.examples.join("manifests/demo.yaml");
    if !manifest.exists() {
        bail!(
            "{} not found: run the demo from the coscale repository or pass --examples DIR",
            manifest.display()
        );
    }
    let dir = tempfile_dir()?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let program = std::env::current_exe().context("cannot find the coscale binary")?;
    println!("== coscale demo ==");
    println!("starting the platform in {}", dir.display());
    let platform = Platform::start(PlatformOptions {
        data_dir: dir.clone(),
        api_addr: any,
        agent_addr: any,
        router_http_addr: any,
        router_grpc_addr: any,
        agent_program: program,
        agent_args: vec!["agent".to_owned()],
        reconcile_interval: Duration::from_millis(500),
        stats_interval: Duration::from_millis(500),
        autoscale: coscale_control::autoscaling::AutoscaleConfig::default(),
        hpa: Default::default(),
        router: coscale_router::RouterConfig::default(),
    })
    .await?;
    let result = drive(&a, &platform, &manifest).await;
    println!("\nstopping the platform...");
    platform.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "coscale-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn drive(
    a: &DemoArgs,
    platform: &Platform,
    manifest: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let ep = &platform.endpoints;
    println!(
        "  inference  {} (REST)  {} (gRPC)",
        ep.router_http, ep.router_grpc
    );
    let client = Client::from_parts(ep.clone(), platform.token.clone());
    println!("\n$ coscale apply -f {} --wait", manifest.display());
    let resp = client
        .apply(&objects::manifest_request(manifest, false)?)
        .await?;
    objects::print_results(&resp);
    let models: Vec<String> = resp
        .results
        .iter()
        .filter(|r| r.kind == "Model")
        .map(|r| r.name.clone())
        .collect();
    let code = objects::wait_available(&client, &models, Duration::from_secs(60)).await?;
    if code != ExitCode::SUCCESS {
        bail!("the example models did not become available");
    }
    println!("\n$ coscale get servers");
    print!("{}", objects::servers_table(&client.servers().await?));
    println!("\n$ coscale get models");
    print!("{}", objects::models_table(&client.models().await?));

    println!(
        "\nsending traffic: {} clients per model and protocol, {} s REST then {} s gRPC...",
        a.concurrency, a.seconds, a.seconds
    );
    let mut rows = Vec::new();
    for grpc in [false, true] {
        let v2 = if grpc {
            V2Client::grpc(&ep.router_grpc).await?
        } else {
            V2Client::rest(&ep.router_http).await
        };
        let until = Instant::now() + Duration::from_secs(a.seconds);
        let mut tasks = Vec::new();
        for m in &models {
            tasks.push((
                m.clone(),
                tokio::spawn(hammer(
                    v2.clone(),
                    m.clone(),
                    iris_request(1),
                    a.concurrency,
                    until,
                )),
            ));
        }
        for (m, task) in tasks {
            let mut t = task.await.unwrap_or_default();
            let secs = a.seconds.max(1) as f64;
            rows.push(vec![
                m,
                if grpc { "gRPC" } else { "REST" }.to_owned(),
                (t.ok + t.failed).to_string(),
                t.failed.to_string(),
                format!("{:.0}", t.ok as f64 / secs),
                format!("{:.2}", t.quantile_ms(0.5)),
                format!("{:.2}", t.quantile_ms(0.99)),
            ]);
        }
    }
    println!(
        "{}",
        output::table(
            &["MODEL", "PROTOCOL", "REQUESTS", "FAILED", "REQ/S", "P50 MS", "P99 MS"],
            &rows
        )
    );
    let mut check = V2Client::rest(&ep.router_http).await;
    let req = iris_request(3);
    let resp = check
        .infer("iris", &req, &req.to_json())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<String> = resp
        .outputs
        .iter()
        .find(|o| o.name == "label")
        .map(|o| format!("{:?}", o.data))
        .into_iter()
        .collect();
    println!("iris predictions for 3 sample flowers: {}", labels.join(""));
    println!("\n$ coscale describe server onnx");
    print!(
        "{}",
        objects::describe_server(&client.server("onnx").await?)
    );
    Ok(ExitCode::SUCCESS)
}
