//! `coscale sim -f SCENARIO.yaml --out DIR`: runs a scenario's policies in the
//! simulator (`coscale-sim`) and writes `summary.json`, one SVG chart per policy and
//! `report.html`. `coscale sim -f SCENARIO.yaml --bench` measures the simulator
//! itself: simulated requests per second of wall time, on one thread and on several.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Args;

/// Arguments of `coscale sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario file (YAML).
    #[arg(short = 'f', long = "filename", env = "COSCALE_SIM_SCENARIO")]
    pub file: PathBuf,
    /// Directory for summary.json, the charts and report.html.
    #[arg(long, env = "COSCALE_SIM_OUT", required_unless_present = "bench")]
    pub out: Option<PathBuf>,
    /// Override the scenario's seed.
    #[arg(long, env = "COSCALE_SIM_SEED")]
    pub seed: Option<u64>,
    /// Run only these policies (by name; repeatable).
    #[arg(long = "policy", env = "COSCALE_SIM_POLICY", value_delimiter = ',')]
    pub policies: Vec<String>,
    /// No progress bar.
    #[arg(long, short = 'q', env = "COSCALE_SIM_QUIET")]
    pub quiet: bool,
    /// Threads to run policies on (each policy runs on one thread; the results do not
    /// depend on it). Default: the machine's parallelism.
    #[arg(long, env = "COSCALE_SIM_THREADS")]
    pub threads: Option<usize>,
    /// Measure the simulator instead of writing a report: build the trace, run every
    /// policy on one thread, then on --threads threads, print the wall times and
    /// simulated requests per second, and check both runs give the same summary.
    #[arg(long)]
    pub bench: bool,
}

/// The thread count to use.
fn threads(a: &SimArgs) -> usize {
    a.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Runs the command.
pub async fn run(a: SimArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = match coscale_sim::scenario::load(&a.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(seed) = a.seed {
        scenario.seed = seed;
    }
    if !a.policies.is_empty() {
        let unknown: Vec<&String> = a
            .policies
            .iter()
            .filter(|p| !scenario.policies.iter().any(|s| s.name() == p.as_str()))
            .collect();
        if !unknown.is_empty() {
            eprintln!("error: the scenario has no policy named {unknown:?}");
            return Ok(ExitCode::FAILURE);
        }
        scenario
            .policies
            .retain(|p| a.policies.iter().any(|n| n == p.name()));
    }
    let names: Vec<String> = scenario
        .policies
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new((names.len() * 1000) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos:>4}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let threads = threads(&a);
    if a.bench {
        return tokio::task::block_in_place(|| bench(&scenario, threads));
    }
    // Per-policy progress in thousandths; the bar shows their sum.
    let done: Vec<AtomicU64> = names.iter().map(|_| AtomicU64::new(0)).collect();
    let started = Instant::now();
    let result = tokio::task::block_in_place(|| {
        coscale_sim::run_parallel(&scenario, threads, &|i, f| {
            if let Some(d) = done.get(i) {
                d.store((f * 1000.0) as u64, Ordering::Relaxed);
            }
            bar.set_message(names.get(i).cloned().unwrap_or_default());
            bar.set_position(done.iter().map(|d| d.load(Ordering::Relaxed)).sum());
        })
    });
    bar.finish_and_clear();
    let run = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let out = a.out.unwrap_or_default();
    coscale_sim::report::write_all(&run, &out)?;
    eprintln!(
        "{} policies × {} requests in {secs:.2} s on {threads} thread(s) ({:.2} M simulated \
         requests/s); wrote {}",
        run.summary.policies.len(),
        run.summary.requests,
        simulated(&run.summary) / secs.max(1e-9) / 1e6,
        out.join("report.html").display()
    );
    print!("{}", coscale_sim::report::markdown(&run.summary));
    Ok(ExitCode::SUCCESS)
}

/// Requests simulated in a run: the trace once per policy.
fn simulated(s: &coscale_sim::Summary) -> f64 {
    s.requests as f64 * s.policies.len() as f64
}

/// `--bench`: trace generation, then every policy on one thread and on `threads`.
fn bench(scenario: &coscale_sim::scenario::Scenario, threads: usize) -> anyhow::Result<ExitCode> {
    let t = Instant::now();
    let trace = scenario.build_trace()?;
    let trace_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let one = coscale_sim::run_trace(scenario, &trace, &mut |_, _| {})?;
    let one_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let many = coscale_sim::run_trace_parallel(scenario, &trace, threads, &|_, _| {})?;
    let many_s = t.elapsed().as_secs_f64();
    let same = coscale_sim::report::summary_json(&one.summary)?
        == coscale_sim::report::summary_json(&many.summary)?;
    let n = simulated(&one.summary);
    let row = |label: String, secs: f64| {
        vec![
            label,
            format!("{secs:.2}"),
            format!("{:.2}", n / secs.max(1e-9) / 1e6),
            format!("{:.2}", n / (secs + trace_s).max(1e-9) / 1e6),
        ]
    };
    print!(
        "scenario {}: {} policies × {} requests, trace built in {trace_s:.2} s\n{}",
        scenario.name,
        one.summary.policies.len(),
        one.summary.requests,
        crate::output::table(
            &["RUN", "WALL S", "M REQ/S", "M REQ/S WITH TRACE"],
            &[
                row("1 thread".into(), one_s),
                row(format!("{threads} threads"), many_s),
            ],
        )
    );
    if !same {
        eprintln!("error: the summaries of the two runs differ");
        return Ok(ExitCode::FAILURE);
    }
    println!("summaries identical: yes");
    Ok(ExitCode::SUCCESS)
}
