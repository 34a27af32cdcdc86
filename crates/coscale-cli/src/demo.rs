//! `coscale demo`: starts the platform on free ports in a temporary directory, applies
//! the example manifests (an autoscaled Server and autoscaled Models), checks real
//! predictions over REST and gRPC, drives a load ramp up and back down on the heavier
//! model while printing a live table, and writes a chart of load, model replicas and
//! server replicas over time (SVG + HTML). It stops cleanly, by itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coscale_api::v2::{InferRequest, TensorData};
use coscale_control::autoscaling::AutoscaleConfig;
use coscale_core::autoscale::ServerPlanConfig;
use coscale_sim::engine::Sample;
use coscale_sim::Series;

use crate::client::Client;
use crate::infer::V2Client;
use crate::load::iris_request;
use crate::objects;
use crate::output;
use crate::platform::{Platform, PlatformOptions};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder holding `manifests/demo.yaml` and `models/`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))]
    pub examples: PathBuf,
    /// Where the chart and the HTML page are written.
    #[arg(long, default_value = "coscale-demo")]
    pub out: PathBuf,
    /// Seconds per step of the load profile.
    #[arg(long, default_value_t = 10)]
    pub step_seconds: u64,
    /// Longest wait for the scale-down at the end, in seconds.
    #[arg(long, default_value_t = 60)]
    pub settle_seconds: u64,
}

/// Concurrent clients on the heavy model at each step: up, plateau, down.
const PROFILE: [usize; 7] = [1, 4, 12, 24, 24, 8, 1];

/// Rows per request of the clients on the heavy model: enough that the model's work, not the
/// HTTP around it, is what a request costs (as with real models), so that under load requests
/// queue for the replica's inference slots, where the inference lag counts them. With one row
/// (~60 µs of inference) the router and the clients on the same two cores ran out of CPU
/// before the replica did, and the demo's queue formed outside the replica.
const HEAVY_ROWS: usize = 64;

/// A pool of closed-loop clients on one model whose size can change.
struct Pool {
    target: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pool {
    async fn start(
        ep_rest: &str,
        ep_grpc: &str,
        model: &str,
        max: usize,
        rows: usize,
    ) -> anyhow::Result<Pool> {
        let target = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..max {
            let mut client = if i % 2 == 0 {
                V2Client::rest(ep_rest).await
            } else {
                V2Client::grpc(ep_grpc).await?
            };
            let (target, ok, failed, latencies, stop) = (
                target.clone(),
                ok.clone(),
                failed.clone(),
                latencies.clone(),
                stop.clone(),
            );
            let model = model.to_owned();
            let req = iris_batch(rows);
            let body = req.to_json();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if (i as u64) >= target.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let t0 = Instant::now();
                    match client.infer(&model, &req, &body).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let us = t0.elapsed().as_micros() as u64;
                            latencies.lock().unwrap_or_else(|e| e.into_inner()).push(us);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Ok(Pool {
            target,
            ok,
            failed,
            latencies,
            stop,
            tasks,
        })
    }

    fn set(&self, clients: usize) {
        self.target.store(clients as u64, Ordering::Relaxed);
    }

    /// Latencies since the last call, sorted (µs).
    fn drain_latencies(&self) -> Vec<u64> {
        let mut v = std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|e| e.into_inner()));
        v.sort_unstable();
        v
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn p99_ms(sorted_us: &[u64]) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((0.99 * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// The load command's iris row repeated `rows` times as one request.
fn iris_batch(rows: usize) -> InferRequest {
    let mut req = iris_request();
    for input in &mut req.inputs {
        if let TensorData::Fp32(data) = &mut input.data {
            *data = data.repeat(rows);
        }
        input.shape[0] = rows as i64;
    }
    req
}

fn tempdir() -> anyhow::Result<PathBuf> {
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

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let manifest = a.examples.join("manifests/demo.yaml");
    if !manifest.exists() {
        bail!(
            "{} not found: run the demo from the coscale repository or pass --examples DIR",
            manifest.display()
        );
    }
    let dir = tempdir()?;
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
        orphan_grace: Duration::from_secs(30),
        reconcile_interval: Duration::from_millis(500),
        stats_interval: Duration::from_millis(500),
        hpa: Default::default(),
        autoscale: AutoscaleConfig {
            server: ServerPlanConfig {
                scale_down_delay_ms: 3_000,
                pack_period_ms: 10_000,
                ..ServerPlanConfig::default()
            },
            ..AutoscaleConfig::default()
        },
        router: coscale_router::RouterConfig::default(),
        provisioner: crate::platform::Provisioner::Local,
        token_review: None,
        custom_metrics_addr: None,
        tls: Default::default(),
        keda_addr: None,
    })
    .await?;
    let result = drive(&a, &platform, &manifest).await;
    println!("\nstopping the platform...");
    platform.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    result
}

fn labels(resp: &coscale_api::v2::InferResponse) -> String {
    resp.outputs
        .iter()
        .find(|o| o.name == "label")
        .map(|o| match &o.data {
            TensorData::Int64(v) => format!("{v:?}"),
            other => format!("{other:?}"),
        })
        .unwrap_or_else(|| "-".to_owned())
}

async fn drive(a: &DemoArgs, platform: &Platform, manifest: &Path) -> anyhow::Result<ExitCode> {
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
    if objects::wait_available(&client, &models, Duration::from_secs(60)).await?
        != ExitCode::SUCCESS
    {
        bail!("the example models did not become available");
    }
    println!("\n$ coscale get models");
    print!("{}", objects::models_table(&client.models().await?));

    // real predictions for three flowers, over both protocols
    let body = br#"{"inputs":[{"name":"input","shape":[3,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2],[5.9,3.0,4.2,1.5],[6.7,3.0,5.2,2.3]]}]}"#;
    let req = InferRequest::from_json(body, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rest = V2Client::rest(&ep.router_http).await;
    let mut grpc = V2Client::grpc(&ep.router_grpc).await?;
    for m in &models {
        let r = rest
            .infer(m, &req, body)
            .await
            .map_err(|e| anyhow::anyhow!("{m}: {e}"))?;
        let g = grpc
            .infer(m, &req, body)
            .await
            .map_err(|e| anyhow::anyhow!("{m}: {e}"))?;
        println!(
            "{m:>9}: setosa, versicolor, virginica -> REST {}  gRPC {}",
            labels(&r),
            labels(&g)
        );
    }

    println!(
        "\nload on iris-mlp: {:?} concurrent clients, {} s per step (plus 2 clients on iris throughout)",
        PROFILE, a.step_seconds
    );
    let heavy = Pool::start(
        &ep.router_http,
        &ep.router_grpc,
        "iris-mlp",
        PROFILE[3],
        HEAVY_ROWS,
    )
    .await?;
    let light = Pool::start(&ep.router_http, &ep.router_grpc, "iris", 2, 1).await?;
    light.set(2);
    let header = [
        "T",
        "CLIENTS",
        "REQ/S",
        "LAG",
        "MLP REPLICAS",
        "SERVER REPLICAS",
        "P99 MS",
    ];
    println!("{}", output::table(&header, &[]).trim_end());
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut last_ok = 0u64;
    let mut last_t = 0.0f64;
    let tick = Duration::from_secs(2);
    let total_profile = a.step_seconds * PROFILE.len() as u64;
    let mut settled_at: Option<f64> = None;
    loop {
        let elapsed = t0.elapsed().as_secs_f64();
        let step = (elapsed as u64 / a.step_seconds.max(1)) as usize;
        let clients = PROFILE.get(step).copied().unwrap_or(0);
        heavy.set(clients);
        tokio::time::sleep(tick).await;
        let t = t0.elapsed().as_secs_f64();
        let ok = heavy.ok.load(Ordering::Relaxed);
        let rps = (ok - last_ok) as f64 / (t - last_t).max(1e-3);
        (last_ok, last_t) = (ok, t);
        let lat = heavy.drain_latencies();
        let m = client.model("iris-mlp").await?;
        let s = client.server("onnx").await?;
        let sample = Sample {
            t_s: t,
            load_rps: rps,
            model_replicas: m.desired_replicas,
            ready_model_replicas: m.available_replicas,
            server_replicas: s.ready_replicas,
            p99_ms: p99_ms(&lat),
        };
        let row = vec![
            format!("{t:.0}s"),
            clients.to_string(),
            format!("{rps:.0}"),
            m.in_flight.to_string(),
            format!("{}/{}", m.available_replicas, m.desired_replicas),
            format!("{}/{}", s.ready_replicas, s.desired_replicas),
            format!("{:.1}", sample.p99_ms),
        ];
        let line = output::table(&header, &[row]);
        println!("{}", line.lines().nth(1).unwrap_or_default());
        samples.push(sample);
        let done_profile = t >= total_profile as f64;
        let settled = m.desired_replicas <= 1 && s.desired_replicas <= 1 && s.ready_replicas <= 1;
        if done_profile && settled {
            settled_at.get_or_insert(t);
            break;
        }
        if t >= (total_profile + a.settle_seconds) as f64 {
            println!("(stopping before the scale-down finished)");
            break;
        }
    }
    let failed = heavy.failed.load(Ordering::Relaxed) + light.failed.load(Ordering::Relaxed);
    let served = heavy.ok.load(Ordering::Relaxed) + light.ok.load(Ordering::Relaxed);
    heavy.stop().await;
    light.stop().await;
    println!("\nrequests served: {served}, failed: {failed}");

    let peak_model = samples.iter().map(|s| s.model_replicas).max().unwrap_or(0);
    let peak_server = samples.iter().map(|s| s.server_replicas).max().unwrap_or(0);
    println!("iris-mlp replicas peaked at {peak_model}, server replicas at {peak_server}");
    let series = Series {
        policy: "coscale demo: iris-mlp on server onnx (native autoscaling)".to_owned(),
        samples,
    };
    std::fs::create_dir_all(&a.out)?;
    let svg = coscale_sim::report::svg(&series);
    std::fs::write(a.out.join("chart.svg"), &svg)?;
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>coscale demo</title><h1>coscale demo</h1>\
         <p>Load ramp on <code>iris-mlp</code> ({PROFILE:?} clients, {} s per step); requests served {served}, failed {failed}. \
         Peak model replicas {peak_model}, peak server replicas {peak_server}.</p>{svg}",
        a.step_seconds
    );
    std::fs::write(a.out.join("report.html"), html)?;
    let abs = std::fs::canonicalize(&a.out).unwrap_or_else(|_| a.out.clone());
    println!("chart: {}", abs.join("chart.svg").display());
    println!("page:  {}", abs.join("report.html").display());
    println!("\n$ coscale describe model iris-mlp");
    print!(
        "{}",
        objects::describe_model(&client.model("iris-mlp").await?)
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
