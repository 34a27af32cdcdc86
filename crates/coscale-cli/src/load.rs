//! `coscale load`: an open-loop, bounded load generator for one model through the
//! router, over REST or gRPC, with constant or Poisson arrivals and an optional linear
//! ramp of the rate. It is how users and tests drive load.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use coscale_api::v2::InferRequest;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::Target;
use crate::infer::{read_data, V2Client};
use crate::output::{self, Format};

/// Inter-arrival pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    Constant,
    Poisson,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Model name.
    pub model: String,
    /// Requests per second (ignored with --ramp).
    #[arg(long, default_value_t = 10.0)]
    pub rps: f64,
    /// How long to send, e.g. 30s, 2m, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Most requests in flight; an arrival beyond it is counted as failed
    /// ("client concurrency limit") rather than delayed, to keep the load open-loop.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Arrivals::Constant)]
    pub arrivals: Arrivals,
    /// Ramp the rate linearly from FROM to TO requests per second over the duration.
    #[arg(long, value_parser = parse_ramp)]
    pub ramp: Option<(f64, f64)>,
    /// Use gRPC instead of REST.
    #[arg(long)]
    pub grpc: bool,
    /// V2 request body (JSON or @FILE); default: one iris flower.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Seed of the Poisson arrivals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub target: Target,
}

/// `30s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m or 500ms"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?}: a duration must be a positive number"));
    }
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `FROM:TO` requests per second.
pub fn parse_ramp(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected FROM:TO, e.g. 5:50"))?;
    let p = |x: &str| {
        x.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{s:?}: {x:?} is not a non-negative rate"))
    };
    Ok((p(a)?, p(b)?))
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub duration: Duration,
    pub from_rps: f64,
    pub to_rps: f64,
    pub arrivals: Arrivals,
    pub concurrency: usize,
    pub seed: u64,
}

impl LoadSpec {
    /// Time at which the cumulative expected number of arrivals reaches `area`, for
    /// the rate ramping linearly from `from_rps` to `to_rps`; None past the end.
    fn time_of(&self, area: f64) -> Option<f64> {
        let d = self.duration.as_secs_f64();
        let a = (self.to_rps - self.from_rps) / d.max(1e-9);
        let b = self.from_rps;
        let t = if a.abs() < 1e-12 {
            if b <= 0.0 {
                return None;
            }
            area / b
        } else {
            let disc = b * b + 2.0 * a * area;
            if disc < 0.0 {
                return None;
            }
            (-b + disc.sqrt()) / a
        };
        (t.is_finite() && t >= 0.0 && t < d).then_some(t)
    }

    /// Arrival times (seconds from the start), deterministic for a seed: the k-th
    /// arrival is where the integral of the rate reaches k (constant) or a sum of k
    /// unit exponentials (Poisson) — exact for a ramping rate too.
    pub fn schedule(&self) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let mut out = Vec::new();
        let mut area = 0.0f64;
        while let Some(t) = self.time_of(area) {
            out.push(t);
            area += match self.arrivals {
                Arrivals::Constant => 1.0,
                Arrivals::Poisson => -rng.random::<f64>().max(f64::MIN_POSITIVE).ln(),
            };
        }
        out
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub achieved_rps: f64,
    pub duration_s: f64,
    /// Failure kinds ("HTTP 503", "gRPC Unavailable", "transport", ...) and counts.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Acc {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// Sends the load and waits for every request to finish.
pub async fn generate(
    client: V2Client,
    model: &str,
    request: InferRequest,
    spec: &LoadSpec,
    progress: Option<indicatif::ProgressBar>,
) -> LoadReport {
    let schedule = spec.schedule();
    let body = Arc::new(request.to_json());
    let request = Arc::new(request);
    let acc = Arc::new(Mutex::new(Acc::default()));
    let limit = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    for at in schedule {
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        sent += 1;
        if let Some(p) = &progress {
            p.set_position(start.elapsed().as_millis() as u64);
            let a = acc.lock().unwrap_or_else(|e| e.into_inner());
            p.set_message(format!("sent {sent}  ok {}  failed {}", a.ok, a.failed));
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
            a.failed += 1;
            *a.errors
                .entry("client concurrency limit".to_owned())
                .or_default() += 1;
            continue;
        };
        let mut client = client.clone();
        let model = model.to_owned();
        let request = request.clone();
        let body = body.clone();
        let acc = acc.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let result = client.infer(&model, &request, &body).await;
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            drop(permit);
            let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(_) => {
                    a.ok += 1;
                    a.latencies_us.push(us);
                }
                Err(e) => {
                    a.failed += 1;
                    *a.errors.entry(e.kind()).or_default() += 1;
                }
            }
        });
        // reap finished tasks as we go so the set stays small
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let mut a = std::mem::take(&mut *acc.lock().unwrap_or_else(|e| e.into_inner()));
    a.latencies_us.sort_unstable();
    LoadReport {
        sent,
        ok: a.ok,
        failed: a.failed,
        p50_ms: quantile_ms(&a.latencies_us, 0.50),
        p90_ms: quantile_ms(&a.latencies_us, 0.90),
        p99_ms: quantile_ms(&a.latencies_us, 0.99),
        max_ms: a
            .latencies_us
            .last()
            .map(|v| *v as f64 / 1000.0)
            .unwrap_or(0.0),
        achieved_rps: if elapsed > 0.0 {
            a.ok as f64 / elapsed
        } else {
            0.0
        },
        duration_s: elapsed,
        errors: a.errors,
    }
}

/// The default request: one iris flower.
pub fn iris_request() -> InferRequest {
    InferRequest::from_json(
        br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}"#,
        None,
    )
    .unwrap_or_default()
}

pub async fn run(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let request = match &a.data {
        Some(d) => {
            let body = read_data(d)?;
            InferRequest::from_json(&body, None)
                .map_err(|e| anyhow::anyhow!("--data is not a valid V2 inference request: {e}"))?
        }
        None => iris_request(),
    };
    if a.duration > Duration::from_secs(24 * 3600) {
        bail!("--duration is capped at 24h");
    }
    let (from_rps, to_rps) = a.ramp.unwrap_or((a.rps, a.rps));
    if from_rps <= 0.0 && to_rps <= 0.0 {
        bail!("the rate must be positive (--rps or --ramp)");
    }
    let spec = LoadSpec {
        duration: a.duration,
        from_rps,
        to_rps,
        arrivals: a.arrivals,
        concurrency: a.concurrency,
        seed: a.seed,
    };
    let client = a.target.client()?;
    let v2 = if a.grpc {
        V2Client::grpc(&client.endpoints.router_grpc).await?
    } else {
        V2Client::rest(&client.endpoints.router_http).await
    };
    let bar = indicatif::ProgressBar::new(a.duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed}/{duration} {msg}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    let report = generate(v2, &a.model, request, &spec, Some(bar)).await;
    output::print(a.output, &report, || report_table(&report))?;
    Ok(ExitCode::SUCCESS)
}

fn report_table(r: &LoadReport) -> String {
    let mut s = output::table(
        &[
            "SENT", "OK", "FAILED", "RPS", "P50 MS", "P90 MS", "P99 MS", "MAX MS",
        ],
        &[vec![
            r.sent.to_string(),
            r.ok.to_string(),
            r.failed.to_string(),
            format!("{:.1}", r.achieved_rps),
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p90_ms),
            format!("{:.2}", r.p99_ms),
            format!("{:.2}", r.max_ms),
        ]],
    );
    for (k, v) in &r.errors {
        s.push_str(&format!("error {k}: {v}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(from: f64, to: f64, arrivals: Arrivals, secs: u64) -> LoadSpec {
        LoadSpec {
            duration: Duration::from_secs(secs),
            from_rps: from,
            to_rps: to,
            arrivals,
            concurrency: 10,
            seed: 7,
        }
    }

    #[test]
    fn constant_arrivals_send_rate_times_duration_evenly() {
        let s = spec(20.0, 20.0, Arrivals::Constant, 10).schedule();
        assert_eq!(s.len(), 200);
        assert!((s[1] - s[0] - 0.05).abs() < 1e-9);
    }

    #[test]
    fn poisson_arrivals_are_seeded_and_average_the_rate() {
        let a = spec(100.0, 100.0, Arrivals::Poisson, 60).schedule();
        let b = spec(100.0, 100.0, Arrivals::Poisson, 60).schedule();
        assert_eq!(a, b);
        let n = a.len() as f64;
        assert!((n - 6000.0).abs() < 4.0 * 6000f64.sqrt(), "{n}");
    }

    #[test]
    fn a_ramp_sends_the_area_under_the_rate() {
        // 0 -> 100 rps over 10 s: 500 requests, more in the second half
        let s = spec(0.0, 100.0, Arrivals::Constant, 10).schedule();
        let n = s.len() as f64;
        assert!((n - 500.0).abs() < 15.0, "{n}");
        let late = s.iter().filter(|t| **t >= 5.0).count() as f64;
        assert!(late > 0.7 * n, "{late} of {n}");
    }

    #[test]
    fn durations_and_ramps_parse_with_clear_errors() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unit"));
        assert_eq!(parse_ramp("5:50").unwrap(), (5.0, 50.0));
        assert!(parse_ramp("5").unwrap_err().contains("FROM:TO"));
    }
}
