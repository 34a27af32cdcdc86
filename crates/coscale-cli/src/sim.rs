//! `coscale sim -f SCENARIO.yaml --out DIR`: runs a scenario's policies in the
//! simulator (`coscale-sim`) and writes `summary.json`, one SVG chart per policy and
//! `report.html`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

/// Arguments of `coscale sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario file (YAML).
    #[arg(short = 'f', long = "filename", env = "COSCALE_SIM_SCENARIO")]
    pub file: PathBuf,
    /// Directory for summary.json, the charts and report.html.
    #[arg(long, env = "COSCALE_SIM_OUT")]
    pub out: PathBuf,
    /// Override the scenario's seed.
    #[arg(long, env = "COSCALE_SIM_SEED")]
    pub seed: Option<u64>,
    /// Run only these policies (by name; repeatable).
    #[arg(long = "policy", env = "COSCALE_SIM_POLICY", value_delimiter = ',')]
    pub policies: Vec<String>,
    /// No progress bar.
    #[arg(long, short = 'q', env = "COSCALE_SIM_QUIET")]
    pub quiet: bool,
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
    let started = Instant::now();
    let result = tokio::task::block_in_place(|| {
        coscale_sim::run(&scenario, &mut |i, f| {
            bar.set_message(names.get(i).cloned().unwrap_or_default());
            bar.set_position((i * 1000) as u64 + (f * 1000.0) as u64);
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
    coscale_sim::report::write_all(&run, &a.out)?;
    let simulated = run.summary.requests as f64 * run.summary.policies.len() as f64;
    eprintln!(
        "{} policies × {} requests in {secs:.2} s ({:.2} M simulated requests/s); wrote {}",
        run.summary.policies.len(),
        run.summary.requests,
        simulated / secs.max(1e-9) / 1e6,
        a.out.join("report.html").display()
    );
    print!("{}", coscale_sim::report::markdown(&run.summary));
    Ok(ExitCode::SUCCESS)
}
