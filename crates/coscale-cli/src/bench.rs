//! `coscale bench step`: the autoscaling step benchmark on the local platform. It
//! measures one replica's capacity, then steps the load from ½× to 4× that capacity on
//! the heavier example model and reports, from the control plane's own events, the time
//! from the step to the scale-up decision, to the first and last new server replica
//! being ready, and to the first and last new model replica serving; plus requests
//! failed and latency during the step, and server replicas at the end against the
//! packing lower bound. Run it once per step mode to compare them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use coscale_api::rest::EventRecord;
use serde::Serialize;

use crate::client::Client;
use crate::infer::V2Client;
use crate::load::{generate, iris_request, Arrivals, LoadReport, LoadSpec};
use crate::objects;
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Step from ½× to 4× one replica's capacity and time the coordinated scale-up.
    Step(StepArgs),
}

#[derive(Debug, clap::Args)]
pub struct StepArgs {
    /// Model step mode to measure: proportional or seldon.
    #[arg(long, default_value = "proportional")]
    pub mode: String,
    /// Seconds of load after the step.
    #[arg(long, default_value_t = 30)]
    pub step_seconds: u64,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub mode: String,
    pub capacity_rps: f64,
    pub step_to_rps: f64,
    pub decision_s: Option<f64>,
    pub first_server_replica_ready_s: Option<f64>,
    pub last_server_replica_ready_s: Option<f64>,
    pub first_new_model_replica_serving_s: Option<f64>,
    pub last_new_model_replica_serving_s: Option<f64>,
    pub model_replicas_at_end: u32,
    pub server_replicas_at_end: u32,
    pub server_replicas_lower_bound: u32,
    pub before: LoadReport,
    pub after: LoadReport,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Step(a) => {
            let report = step(&a).await?;
            output::print(a.output, &report, || step_table(&report))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2}"))
        .unwrap_or_else(|| "-".to_owned())
}

pub fn step_table(r: &StepReport) -> String {
    output::table(
        &["MEASURE", "VALUE"],
        &[
            vec!["step mode".into(), r.mode.clone()],
            vec![
                "one replica's capacity (req/s)".into(),
                format!("{:.0}", r.capacity_rps),
            ],
            vec![
                "load after the step (req/s)".into(),
                format!("{:.0}", r.step_to_rps),
            ],
            vec!["step -> scale-up decision (s)".into(), secs(r.decision_s)],
            vec![
                "step -> first new server replica ready (s)".into(),
                secs(r.first_server_replica_ready_s),
            ],
            vec![
                "step -> last new server replica ready (s)".into(),
                secs(r.last_server_replica_ready_s),
            ],
            vec![
                "step -> first new model replica serving (s)".into(),
                secs(r.first_new_model_replica_serving_s),
            ],
            vec![
                "step -> last new model replica serving (s)".into(),
                secs(r.last_new_model_replica_serving_s),
            ],
            vec![
                "requests failed before / after the step".into(),
                format!("{} / {}", r.before.failed, r.after.failed),
            ],
            vec![
                "p99 before / after the step (ms)".into(),
                format!("{:.1} / {:.1}", r.before.p99_ms, r.after.p99_ms),
            ],
            vec![
                "model replicas at the end".into(),
                r.model_replicas_at_end.to_string(),
            ],
            vec![
                "server replicas at the end / packing lower bound".into(),
                format!(
                    "{} / {}",
                    r.server_replicas_at_end, r.server_replicas_lower_bound
                ),
            ],
        ],
    )
}

fn manifests(examples: &std::path::Path) -> String {
    let uri = examples.join("models/iris-mlp");
    format!(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: pool\nspec:\n  serverConfig: builtin\n  replicas: 1\n  minReplicas: 1\n  maxReplicas: 4\n---\napiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: mlp\nspec:\n  storageUri: file://{}\n  requirements: [onnx]\n  memory: 8Mi\n  replicas: 1\n  minReplicas: 1\n  maxReplicas: 4\n",
        uri.display()
    )
}

/// Seconds from `t0` (Unix ms) to the first/last event matching `pred` after it.
fn event_times(
    events: &[EventRecord],
    t0: u64,
    pred: impl Fn(&EventRecord) -> bool,
) -> (Option<f64>, Option<f64>) {
    let ts: Vec<f64> = events
        .iter()
        .filter(|e| e.unix_millis >= t0 && pred(e))
        .map(|e| (e.unix_millis - t0) as f64 / 1000.0)
        .collect();
    (ts.first().copied(), ts.last().copied())
}

/// A `coscale up` child process (the platform runs apart from the load generator).
struct UpProcess {
    child: std::process::Child,
    dir: std::path::PathBuf,
    client: Client,
}

impl UpProcess {
    async fn start(mode: &str) -> anyhow::Result<UpProcess> {
        let dir = std::env::temp_dir().join(format!("coscale-bench-{}-{mode}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("up.log"))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["up", "--data-dir"])
            .arg(&dir)
            .args(["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"])
            .args([
                "--router-addr",
                "127.0.0.1:0",
                "--router-grpc-addr",
                "127.0.0.1:0",
            ])
            .args(["--reconcile-seconds", "0.25", "--autoscaling-mode", mode])
            // the load below puts a few requests in flight per replica: a threshold of
            // 4 makes the step visible to both modes (Seldon's default of 30 needs more)
            .args(["--model-inference-lag-threshold", "4"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start coscale up")?;
        let ep = dir.join("endpoints.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ep.exists() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "coscale up did not start; see {}",
                    dir.join("up.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let client = crate::client::Target {
            data_dir: dir.clone(),
            api: None,
            token: None,
            router: None,
            router_grpc: None,
        }
        .client()?;
        Ok(UpProcess { child, dir, client })
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn step(a: &StepArgs) -> anyhow::Result<StepReport> {
    if !matches!(a.mode.as_str(), "seldon" | "proportional") {
        bail!("--mode {:?}: use proportional or seldon", a.mode);
    }
    let up = UpProcess::start(&a.mode).await?;
    let result = measure(a, &up.client).await;
    up.stop();
    result
}

async fn measure(a: &StepArgs, client: &Client) -> anyhow::Result<StepReport> {
    let ep = &client.endpoints;
    let examples = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"));
    let path = std::env::temp_dir().join(format!("coscale-bench-{}.yaml", std::process::id()));
    std::fs::write(&path, manifests(&examples))?;
    client
        .apply(&objects::manifest_request(&path, false)?)
        .await?;
    let _ = std::fs::remove_file(&path);
    if objects::wait_available(client, &["mlp".to_owned()], Duration::from_secs(60)).await?
        != ExitCode::SUCCESS
    {
        bail!("the model did not become available");
    }
    let v2 = V2Client::rest(&ep.router_http).await;
    // capacity of one replica: a short closed loop with a few clients
    let probe = LoadSpec {
        duration: Duration::from_secs(3),
        from_rps: 100_000.0,
        to_rps: 100_000.0,
        arrivals: Arrivals::Constant,
        concurrency: 4,
        seed: 1,
    };
    let cap = generate(v2.clone(), "mlp", iris_request(), &probe, None).await;
    let capacity = cap.achieved_rps.max(1.0);
    let low = LoadSpec {
        duration: Duration::from_secs(5),
        from_rps: capacity / 2.0,
        to_rps: capacity / 2.0,
        arrivals: Arrivals::Poisson,
        concurrency: 4096,
        seed: 2,
    };
    let before = generate(v2.clone(), "mlp", iris_request(), &low, None).await;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let high = LoadSpec {
        duration: Duration::from_secs(a.step_seconds),
        from_rps: capacity * 4.0,
        to_rps: capacity * 4.0,
        arrivals: Arrivals::Poisson,
        concurrency: 4096,
        seed: 3,
    };
    let after = generate(v2, "mlp", iris_request(), &high, None).await;
    let m = client.model("mlp").await?;
    let s = client.server("pool").await?;
    let (decision, _) = event_times(&m.events, t0, |e| e.reason == "ScaledUp");
    let (first_srv, last_srv) = event_times(&s.events, t0, |e| {
        e.reason == "ReplicaConnected" && !e.message.starts_with("replica 0 ")
    });
    let (first_model, last_model) = event_times(&m.events, t0, |e| {
        e.reason == "Loaded" && !e.message.ends_with("pool-0")
    });
    Ok(StepReport {
        mode: a.mode.clone(),
        capacity_rps: capacity,
        step_to_rps: capacity * 4.0,
        decision_s: decision,
        first_server_replica_ready_s: first_srv,
        last_server_replica_ready_s: last_srv,
        first_new_model_replica_serving_s: first_model,
        last_new_model_replica_serving_s: last_model,
        model_replicas_at_end: m.desired_replicas,
        server_replicas_at_end: s.desired_replicas,
        // one model replica per server replica: the lower bound is the model's count
        server_replicas_lower_bound: m.desired_replicas.max(1),
        before,
        after,
    })
}
