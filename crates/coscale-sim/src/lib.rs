//! coscale-sim: a deterministic discrete-event simulator for comparing autoscaling
//! policies on the same traffic, in virtual time.
//!
//! A [`scenario::Scenario`] names models, servers, traffic, the SLO and the policies;
//! [`run`] builds the trace once, runs every policy on it with the very same request
//! stream, seed and delay model, and returns a [`Summary`] (the `summary.json`
//! schema) plus time series for charts ([`report`]). Placement is
//! `coscale_core::placement`, the HPA is `coscale_core::hpa`; nothing here reads a
//! clock, spawns a task or touches the network, and the same seed always gives the
//! same bytes.
//!
//! Depends on coscale-core only; must not depend on tokio or any service crate.

pub mod engine;
pub mod policy;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod trace;

use serde::Serialize;

use engine::{percentile_ms, Outcomes, Sample, Sim, SimConfig};
use policy::oracle::{self, ModelPlan};
use policy::{Policy, PolicyKind};
use scenario::{Scenario, ScenarioError};
use trace::Trace;

/// What went wrong running a scenario.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("policy {policy}: {message}")]
    Policy { policy: String, message: String },
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub requests: u64,
    /// LB_S of `benchmarks.md` §3.5: the start-up-aware lower bound on model
    /// replica-seconds, the denominator of `cost_vs_oracle`.
    pub oracle_lower_bound_replica_seconds: f64,
    pub policies: Vec<PolicySummary>,
}

/// One policy's line of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    pub name: String,
    /// Requests served within the SLO over all requests (dropped and timed-out count
    /// as violations).
    pub slo_attainment: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub dropped: u64,
    pub timed_out: u64,
    pub model_replica_seconds: f64,
    pub server_replica_seconds: f64,
    pub cost_vs_oracle: f64,
    /// Changes of a model's desired replicas or of a server's replica count.
    pub scale_actions: u64,
    /// Such changes that reverse the previous one's direction within 60 s.
    pub flaps: u64,
    /// After the largest rise in load (10 s windows), seconds until every model's ready
    /// replicas × μ cover its load (its request rate in the oracle window); `null` if
    /// that never happens.
    pub time_to_scale_s: Option<f64>,
}

/// One policy's time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub policy: String,
    pub samples: Vec<Sample>,
}

/// The result of a scenario: the summary and the charts' data.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub summary: Summary,
    pub series: Vec<Series>,
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The simulation settings a scenario implies (`plans` give the load per window).
pub fn sim_config(s: &Scenario, plans: &[ModelPlan]) -> SimConfig {
    SimConfig {
        seed: s.seed,
        duration_s: s.duration_s,
        slo_s: s.slo_s,
        timeout_s: s.timeout_s,
        max_pending: s.max_pending,
        chart_points: s.chart_points,
        capacity: s
            .models
            .iter()
            .map(|m| oracle::replica_capacity(m, s.slo_s))
            .collect(),
        window_s: s.oracle_window_s,
        rates: plans.iter().map(|p| p.rates.clone()).collect(),
    }
}

/// Builds a policy for a scenario (`plans` are the oracle's, used by `oracle`).
pub fn build_policy(
    kind: &PolicyKind,
    s: &Scenario,
    plans: &[ModelPlan],
) -> Result<Box<dyn Policy>, String> {
    let window = s.rps_window_s as usize;
    Ok(match kind {
        PolicyKind::Hpa(c) => Box::new(policy::hpa::Hpa::new(c.clone(), &s.models, window)?),
        PolicyKind::Kpa(c) => Box::new(policy::kpa::Kpa::new(c.clone(), s.models.len())),
        PolicyKind::Keda(c) => Box::new(policy::keda::Keda::new(c.clone(), &s.models, window)?),
        PolicyKind::Seldon(c) => Box::new(policy::seldon::Seldon { cfg: c.clone() }),
        PolicyKind::Static(n) => Box::new(policy::seldon::Static(*n)),
        PolicyKind::Native(c) => Box::new(policy::native::Native::new(c.clone(), s.models.len())),
        PolicyKind::Oracle => {
            let server_start = s.servers.iter().map(|x| x.startup_s).fold(0.0, f64::max);
            let leads: Vec<f64> = s.models.iter().map(|m| m.load_s + server_start).collect();
            Box::new(oracle::Oracle::new(
                plans,
                &leads,
                s.oracle_window_s,
                s.duration_s,
            ))
        }
    })
}

/// Time to scale after the largest rise in load (see [`PolicySummary::time_to_scale_s`]):
/// seconds from the start of the 10 s window with the largest rise in request rate
/// until no model's load is left uncovered (`deficit` ≤ 0).
pub fn time_to_scale(arrivals: &[u32], deficit: &[f64]) -> Option<f64> {
    const W: usize = 10;
    let rates: Vec<f64> = arrivals
        .chunks(W)
        .map(|c| c.iter().map(|&x| f64::from(x)).sum::<f64>() / W as f64)
        .collect();
    let (mut best, mut onset) = (0.0, None);
    for w in 1..rates.len() {
        let rise = rates[w] - rates[w - 1];
        if rise > best {
            best = rise;
            onset = Some(w);
        }
    }
    let start = onset? * W;
    deficit
        .iter()
        .enumerate()
        // The tick at `start` still measures the window before the rise.
        .skip(start + 1)
        .find(|(_, &d)| d <= 1e-9)
        .map(|(t, _)| (t - start) as f64)
}

/// Summarises one run.
pub fn summarize(name: &str, mut o: Outcomes, lb_s: f64) -> (PolicySummary, Vec<Sample>) {
    let total = o.requests.max(1) as f64;
    let tts = time_to_scale(&o.arrivals_per_sec, &o.deficit_per_sec);
    let p50 = percentile_ms(&mut o.latencies_us, 0.50);
    let p99 = percentile_ms(&mut o.latencies_us, 0.99);
    let summary = PolicySummary {
        name: name.to_string(),
        slo_attainment: round(o.good as f64 / total, 4),
        p50_ms: round(p50, 3),
        p99_ms: round(p99, 3),
        dropped: o.dropped,
        timed_out: o.timed_out,
        model_replica_seconds: round(o.model_replica_seconds, 1),
        server_replica_seconds: round(o.server_replica_seconds, 1),
        cost_vs_oracle: if lb_s > 0.0 {
            round(o.model_replica_seconds / lb_s, 3)
        } else {
            0.0
        },
        scale_actions: o.scale_actions,
        flaps: o.flaps,
        time_to_scale_s: tts,
    };
    (summary, o.samples)
}

/// Runs one policy on a trace; returns the raw measurements.
pub fn run_one(
    s: &Scenario,
    cfg: &SimConfig,
    trace: &Trace,
    policy: &mut dyn Policy,
    progress: &mut dyn FnMut(f64),
) -> Outcomes {
    Sim::new(cfg, &s.models, &s.servers, policy).run(trace, progress)
}

/// Runs the scenario's policy named `name` on a trace; the raw measurements.
pub fn run_named(s: &Scenario, trace: &Trace, name: &str) -> Result<Outcomes, SimError> {
    let err = |message: String| SimError::Policy {
        policy: name.to_string(),
        message,
    };
    let spec = s
        .policies
        .iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| err("not in the scenario".into()))?;
    let plans = oracle::plan(&s.models, trace, s.slo_s, s.oracle_window_s, s.duration_s);
    let mut policy = build_policy(&spec.kind().map_err(err)?, s, &plans).map_err(err)?;
    Ok(run_one(
        s,
        &sim_config(s, &plans),
        trace,
        policy.as_mut(),
        &mut |_| {},
    ))
}

/// Runs every policy of a scenario. `progress(policy index, fraction)`.
pub fn run(s: &Scenario, progress: &mut dyn FnMut(usize, f64)) -> Result<Run, SimError> {
    let trace = s.build_trace()?;
    run_trace(s, &trace, progress)
}

/// [`run`] with the policies spread over `threads` threads; see [`run_trace_parallel`].
pub fn run_parallel(
    s: &Scenario,
    threads: usize,
    progress: &(dyn Fn(usize, f64) + Sync),
) -> Result<Run, SimError> {
    let trace = s.build_trace()?;
    run_trace_parallel(s, &trace, threads, progress)
}

/// [`run`] on a trace already built.
pub fn run_trace(
    s: &Scenario,
    trace: &Trace,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Run, SimError> {
    let shared = Shared::new(s, trace);
    let mut results = Vec::new();
    for (i, spec) in s.policies.iter().enumerate() {
        results.push(shared.run_policy(spec, &mut |f| progress(i, f))?);
    }
    Ok(shared.assemble(results))
}

/// [`run_trace`] with the policies spread over `threads` threads (each policy's run is
/// independent, so the result is the same as on one thread). `progress(policy index,
/// fraction)` is called from the worker threads.
pub fn run_trace_parallel(
    s: &Scenario,
    trace: &Trace,
    threads: usize,
    progress: &(dyn Fn(usize, f64) + Sync),
) -> Result<Run, SimError> {
    let shared = Shared::new(s, trace);
    let n = s.policies.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, PolicyResult)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, n.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(spec) = s.policies.get(i) else {
                            return mine;
                        };
                        mine.push((i, shared.run_policy(spec, &mut |f| progress(i, f))));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    let results = done
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(shared.assemble(results))
}

type PolicyResult = Result<(PolicySummary, Series), SimError>;

/// What every policy's run of one scenario shares: the trace, the oracle's plans and
/// the simulation settings.
struct Shared<'a> {
    s: &'a Scenario,
    trace: &'a Trace,
    plans: Vec<ModelPlan>,
    lb_s: f64,
    cfg: SimConfig,
}

impl<'a> Shared<'a> {
    fn new(s: &'a Scenario, trace: &'a Trace) -> Self {
        let plans = oracle::plan(&s.models, trace, s.slo_s, s.oracle_window_s, s.duration_s);
        let lb_s = plans.iter().map(|p| p.lb_s).sum();
        let cfg = sim_config(s, &plans);
        Self {
            s,
            trace,
            plans,
            lb_s,
            cfg,
        }
    }

    fn run_policy(&self, spec: &policy::PolicySpec, progress: &mut dyn FnMut(f64)) -> PolicyResult {
        let err = |message: String| SimError::Policy {
            policy: spec.name().to_string(),
            message,
        };
        let kind = spec.kind().map_err(err)?;
        let mut policy = build_policy(&kind, self.s, &self.plans).map_err(err)?;
        let out = run_one(self.s, &self.cfg, self.trace, policy.as_mut(), progress);
        let (summary, samples) = summarize(spec.name(), out, self.lb_s);
        Ok((
            summary,
            Series {
                policy: spec.name().to_string(),
                samples,
            },
        ))
    }

    fn assemble(&self, results: Vec<(PolicySummary, Series)>) -> Run {
        let (policies, series) = results.into_iter().unzip();
        Run {
            summary: Summary {
                scenario: self.s.name.clone(),
                seed: self.s.seed,
                requests: self.trace.requests.len() as u64,
                oracle_lower_bound_replica_seconds: round(self.lb_s, 1),
                policies,
            },
            series,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_scale_runs_from_the_largest_rise_until_nothing_is_uncovered() {
        let mut arrivals = vec![1u32; 20];
        arrivals.extend(vec![5u32; 20]);
        let mut deficit = vec![0.0; 40];
        for d in deficit.iter_mut().take(25).skip(20) {
            *d = 3.0;
        }
        assert_eq!(time_to_scale(&arrivals, &deficit), Some(5.0));
        // Covered already at the first tick of the new window: 1 s.
        assert_eq!(time_to_scale(&arrivals, &[0.0; 40]), Some(1.0));
        deficit[39] = 1.0;
        for d in deficit.iter_mut().skip(20) {
            *d = 1.0;
        }
        assert_eq!(time_to_scale(&arrivals, &deficit), None);
        assert_eq!(
            time_to_scale(&[3; 40], &[0.0; 40]),
            None,
            "no rise, no step"
        );
    }
}
