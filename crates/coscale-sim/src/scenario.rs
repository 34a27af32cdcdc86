//! Scenario files: models, servers, traffic, SLO, duration, seed and the policies to
//! compare. Read as [`RawScenario`] (unknown fields rejected), then validated into a
//! [`Scenario`] that the simulator reads.
//!
//! ```yaml
//! name: step-4x
//! seed: 1
//! duration_s: 1800
//! slo_ms: 500
//! timeout_ms: 5000          # a request not started by then times out (default 10×SLO)
//! max_pending: 10000        # requests held per model while it has no replica
//! models:
//!   - {name: m, service_ms: 50, service_cv: 1, slots: 4, memory: 1Gi, load_s: 5,
//!      min_replicas: 1, max_replicas: 50, replicas: 2}
//!   - {name: f, count: 500, memory_range: [100Mi, 8Gi], ...}   # f-000 … f-499
//! servers:
//!   - {name: s, memory: 32Gi, startup_s: 30, min_replicas: 1, max_replicas: 100, replicas: 1}
//! traffic:
//!   - {kind: poisson, models: [m], rate: 83.3, shape: {step: {at_s: 840, factor: 4, until_s: 1440}}}
//!   - {kind: gamma, cv: 4, rate: 10}
//!   - {kind: onoff, rate: 8, on_s: 15, off_s: 25, sigma: 0.8}
//!   - {kind: fleet, total_rate: 200, mu: 3.7, sigma: 4.1, periodic_fraction: 0.2,
//!      shape: {diurnal: {period_s: 3600, amplitude: 0.25}}}
//!   - {kind: csv, path: trace.csv}
//!   - {kind: azure, path: AzureLLMInferenceTrace_code.csv, models: [m], rate_multiplier: 4}
//! policies: [hpa-default, knative-kpa, keda, seldon, static-4, oracle]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coscale_core::quantity::Quantity;
use serde::Deserialize;

use crate::policy::PolicySpec;
use crate::rng::Rng;
use crate::trace::{self, Fleet, Shape, Trace, TraceError};

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub name: String,
    #[serde(default = "one")]
    pub seed: u64,
    pub duration_s: f64,
    pub slo_ms: f64,
    #[serde(default)]
    pub timeout_ms: Option<f64>,
    #[serde(default = "default_pending")]
    pub max_pending: u32,
    /// Width of the oracle's demand windows (Δ in `benchmarks.md` §3.5).
    #[serde(default = "default_oracle_window")]
    pub oracle_window_s: f64,
    /// Window of the built-in `infer_rps` metric that HPA and KEDA read.
    #[serde(default = "default_rps_window")]
    pub rps_window_s: u32,
    /// Points per chart (1–5000; each point's p99 covers the requests completed since
    /// the previous one, so `duration_s / chart_points` seconds per point).
    #[serde(default = "default_points")]
    pub chart_points: u32,
    pub models: Vec<RawModel>,
    pub servers: Vec<RawServer>,
    pub traffic: Vec<RawTraffic>,
    pub policies: Vec<PolicySpec>,
}

fn one() -> u64 {
    1
}
fn default_pending() -> u32 {
    10_000
}
fn default_oracle_window() -> f64 {
    10.0
}
fn default_rps_window() -> u32 {
    60
}
fn default_points() -> u32 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    #[serde(default)]
    pub count: Option<u32>,
    pub service_ms: f64,
    /// 0 = constant, 1 = exponential, else Gamma.
    #[serde(default = "one_f")]
    pub service_cv: f64,
    pub slots: u32,
    #[serde(default)]
    pub memory: Option<Quantity>,
    /// Log-uniform memory per model between two sizes (fleets).
    #[serde(default)]
    pub memory_range: Option<[Quantity; 2]>,
    pub load_s: f64,
    #[serde(default)]
    pub min_replicas: Option<u32>,
    #[serde(default)]
    pub max_replicas: Option<u32>,
    /// Replicas at t = 0 (default: min_replicas, at least 1).
    #[serde(default)]
    pub replicas: Option<u32>,
}

fn one_f() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: String,
    pub memory: Quantity,
    pub startup_s: f64,
    #[serde(default)]
    pub min_replicas: Option<u32>,
    pub max_replicas: u32,
    #[serde(default)]
    pub replicas: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficKind {
    Constant,
    Poisson,
    Gamma,
    Onoff,
    Fleet,
    Csv,
    Azure,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraffic {
    pub kind: TrafficKind,
    /// Models this entry drives (default: all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub cv: Option<f64>,
    #[serde(default)]
    pub shape: Option<RawShape>,
    #[serde(default)]
    pub on_s: Option<f64>,
    #[serde(default)]
    pub off_s: Option<f64>,
    #[serde(default)]
    pub sigma: Option<f64>,
    #[serde(default)]
    pub total_rate: Option<f64>,
    #[serde(default)]
    pub mu: Option<f64>,
    #[serde(default)]
    pub periodic_fraction: Option<f64>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub rate_multiplier: Option<f64>,
    #[serde(default)]
    pub start_s: Option<f64>,
}

/// A rate shape: at most one of `step` and `diurnal` (neither = flat).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShape {
    #[serde(default)]
    pub step: Option<RawStep>,
    #[serde(default)]
    pub diurnal: Option<RawDiurnal>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub at_s: f64,
    pub factor: f64,
    #[serde(default)]
    pub until_s: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiurnal {
    pub period_s: f64,
    pub amplitude: f64,
}

/// A validated model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub service_mean_s: f64,
    pub service_cv: f64,
    pub slots: u32,
    pub memory_bytes: u64,
    pub load_s: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub initial_replicas: u32,
    /// Whether the scenario set min or max (native autoscaling enabled for the model).
    pub autoscaled: bool,
}

/// A validated server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub name: String,
    pub memory_bytes: u64,
    pub startup_s: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub initial_replicas: u32,
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub duration_s: f64,
    pub slo_s: f64,
    pub timeout_s: f64,
    pub max_pending: u32,
    pub oracle_window_s: f64,
    pub rps_window_s: u32,
    pub chart_points: u32,
    pub models: Vec<ModelSpec>,
    pub servers: Vec<ServerSpec>,
    pub traffic: Vec<RawTraffic>,
    pub policies: Vec<PolicySpec>,
    /// Directory relative trace paths are resolved against.
    pub base_dir: PathBuf,
}

/// What is wrong with a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path}: {message}")]
    Parse { path: String, message: String },
    #[error("scenario {path}: {field}: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

struct Ctx<'a> {
    path: &'a str,
}

impl Ctx<'_> {
    fn bad(&self, field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.path.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
    fn positive(&self, field: &str, v: f64) -> Result<f64, ScenarioError> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.bad(field, format!("must be a number > 0, got {v}")))
        }
    }
    fn non_negative(&self, field: &str, v: f64) -> Result<f64, ScenarioError> {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(self.bad(field, format!("must be a number ≥ 0, got {v}")))
        }
    }
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &path.display().to_string(), &base)
}

/// Parses and validates scenario text; `path` names it in errors, `base_dir` resolves
/// relative trace paths.
pub fn parse(text: &str, path: &str, base_dir: &Path) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = serde_yaml::from_str(text).map_err(|e| ScenarioError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    validate(raw, path, base_dir)
}

fn validate(raw: RawScenario, path: &str, base_dir: &Path) -> Result<Scenario, ScenarioError> {
    let cx = Ctx { path };
    let duration_s = cx.positive("duration_s", raw.duration_s)?;
    let slo_s = cx.positive("slo_ms", raw.slo_ms)? / 1000.0;
    let timeout_s = match raw.timeout_ms {
        Some(t) => cx.positive("timeout_ms", t)? / 1000.0,
        None => 10.0 * slo_s,
    };
    let oracle_window_s = cx.positive("oracle_window_s", raw.oracle_window_s)?;
    if raw.rps_window_s == 0 || raw.rps_window_s > 3600 {
        return Err(cx.bad("rps_window_s", "must be between 1 and 3600"));
    }
    if raw.servers.is_empty() {
        return Err(cx.bad("servers", "at least one server is needed"));
    }
    let mut rng = Rng::stream(raw.seed, 0xB17E);
    let mut models = Vec::new();
    for (i, m) in raw.models.iter().enumerate() {
        let f = |name: &str| format!("models[{i}].{name}");
        let service_mean_s = cx.positive(&f("service_ms"), m.service_ms)? / 1000.0;
        let service_cv = cx.non_negative(&f("service_cv"), m.service_cv)?;
        if m.slots == 0 {
            return Err(cx.bad(f("slots"), "must be ≥ 1"));
        }
        let load_s = cx.non_negative(&f("load_s"), m.load_s)?;
        let autoscaled = m.min_replicas.is_some() || m.max_replicas.is_some();
        let min_replicas = m.min_replicas.unwrap_or(0);
        let max_replicas = m.max_replicas.unwrap_or(1000);
        if min_replicas > max_replicas || max_replicas == 0 {
            return Err(cx.bad(f("max_replicas"), "must be ≥ 1 and ≥ min_replicas"));
        }
        let initial = m
            .replicas
            .unwrap_or(min_replicas.max(1))
            .clamp(min_replicas, max_replicas);
        let count = m.count.unwrap_or(1);
        if count == 0 {
            return Err(cx.bad(f("count"), "must be ≥ 1"));
        }
        for k in 0..count {
            let memory_bytes = match (&m.memory, &m.memory_range) {
                (Some(q), None) => q.as_bytes(),
                (None, Some([lo, hi])) => {
                    let lo = lo.as_bytes();
                    let hi = hi.as_bytes();
                    if lo == 0 || lo > hi {
                        return Err(cx.bad(f("memory_range"), "needs 0 < low ≤ high"));
                    }
                    let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
                    (a + (b - a) * rng.uniform()).exp().round() as u64
                }
                _ => return Err(cx.bad(f("memory"), "set exactly one of memory and memory_range")),
            };
            let name = if m.count.is_some() {
                format!("{}-{k:03}", m.name)
            } else {
                m.name.clone()
            };
            models.push(ModelSpec {
                name,
                service_mean_s,
                service_cv,
                slots: m.slots,
                memory_bytes,
                load_s,
                min_replicas,
                max_replicas,
                initial_replicas: initial,
                autoscaled,
            });
        }
    }
    if models.is_empty() {
        return Err(cx.bad("models", "at least one model is needed"));
    }
    let mut seen = std::collections::HashSet::new();
    for m in &models {
        if !seen.insert(m.name.as_str()) {
            return Err(cx.bad("models", format!("model {:?} is defined twice", m.name)));
        }
    }
    let mut servers = Vec::new();
    for (i, s) in raw.servers.iter().enumerate() {
        let f = |name: &str| format!("servers[{i}].{name}");
        let memory_bytes = s.memory.as_bytes();
        let startup_s = cx.non_negative(&f("startup_s"), s.startup_s)?;
        let min_replicas = s.min_replicas.unwrap_or(0);
        if s.max_replicas == 0 || min_replicas > s.max_replicas {
            return Err(cx.bad(f("max_replicas"), "must be ≥ 1 and ≥ min_replicas"));
        }
        servers.push(ServerSpec {
            name: s.name.clone(),
            memory_bytes,
            startup_s,
            min_replicas,
            max_replicas: s.max_replicas,
            initial_replicas: s
                .replicas
                .unwrap_or(min_replicas.max(1))
                .clamp(min_replicas, s.max_replicas),
        });
    }
    if raw.traffic.is_empty() {
        return Err(cx.bad("traffic", "at least one traffic entry is needed"));
    }
    if raw.policies.is_empty() {
        return Err(cx.bad("policies", "name at least one policy"));
    }
    let names: HashMap<&str, u32> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i as u32))
        .collect();
    for (i, t) in raw.traffic.iter().enumerate() {
        if let Some(RawShape {
            step: Some(st),
            diurnal,
        }) = &t.shape
        {
            if diurnal.is_some() {
                return Err(cx.bad(
                    format!("traffic[{i}].shape"),
                    "set step or diurnal, not both",
                ));
            }
            cx.non_negative(&format!("traffic[{i}].shape.step.factor"), st.factor)?;
        }
        if let Some(RawShape {
            diurnal: Some(d), ..
        }) = &t.shape
        {
            cx.positive(&format!("traffic[{i}].shape.diurnal.period_s"), d.period_s)?;
            if !(0.0..=1.0).contains(&d.amplitude) {
                return Err(cx.bad(
                    format!("traffic[{i}].shape.diurnal.amplitude"),
                    "must be within 0..=1",
                ));
            }
        }
        for m in t.models.iter().flatten() {
            if !names.contains_key(m.as_str()) {
                return Err(cx.bad(
                    format!("traffic[{i}].models"),
                    format!("model {m:?} is not defined"),
                ));
            }
        }
    }
    let mut policy_names = std::collections::HashSet::new();
    for (i, p) in raw.policies.iter().enumerate() {
        p.check().map_err(|m| cx.bad(format!("policies[{i}]"), m))?;
        if !policy_names.insert(p.name()) {
            return Err(cx.bad(
                format!("policies[{i}]"),
                format!("policy {:?} is listed twice", p.name()),
            ));
        }
    }
    Ok(Scenario {
        name: raw.name,
        seed: raw.seed,
        duration_s,
        slo_s,
        timeout_s,
        max_pending: raw.max_pending,
        oracle_window_s,
        rps_window_s: raw.rps_window_s,
        chart_points: raw.chart_points.clamp(1, 5000),
        models,
        servers,
        traffic: raw.traffic,
        policies: raw.policies,
        base_dir: base_dir.to_path_buf(),
    })
}

fn shape_of(raw: &Option<RawShape>) -> Shape {
    match raw {
        Some(RawShape { step: Some(st), .. }) => Shape::Step {
            at: st.at_s,
            factor: st.factor,
            until: st.until_s,
        },
        Some(RawShape {
            diurnal: Some(d), ..
        }) => Shape::Diurnal {
            period: d.period_s,
            amplitude: d.amplitude,
        },
        _ => Shape::Flat,
    }
}

impl Scenario {
    /// The model index of a name.
    pub fn model_index(&self, name: &str) -> Option<u32> {
        self.models
            .iter()
            .position(|m| m.name == name)
            .map(|i| i as u32)
    }

    /// Builds the request trace: generators are seeded from the scenario seed (one
    /// stream per traffic entry), files are read relative to the scenario.
    pub fn build_trace(&self) -> Result<Trace, ScenarioError> {
        let cx = Ctx { path: &self.name };
        let names: HashMap<&str, u32> = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i as u32))
            .collect();
        let mut parts = Vec::new();
        for (i, t) in self.traffic.iter().enumerate() {
            let field = |n: &str| format!("traffic[{i}].{n}");
            let need = |v: Option<f64>, n: &str| {
                v.ok_or_else(|| cx.bad(field(n), format!("required for kind {:?}", t.kind)))
            };
            let targets: Vec<u32> = match &t.models {
                Some(list) => list
                    .iter()
                    .filter_map(|m| names.get(m.as_str()).copied())
                    .collect(),
                None => (0..self.models.len() as u32).collect(),
            };
            let mut rng = Rng::stream(self.seed, 1 + i as u64);
            let shape = shape_of(&t.shape);
            let mut out = Vec::new();
            match t.kind {
                TrafficKind::Constant | TrafficKind::Poisson | TrafficKind::Gamma => {
                    let rate = cx.positive(&field("rate"), need(t.rate, "rate")?)?;
                    let cv = match t.kind {
                        TrafficKind::Constant => 0.0,
                        TrafficKind::Poisson => 1.0,
                        _ => cx.non_negative(&field("cv"), need(t.cv, "cv")?)?,
                    };
                    for &m in &targets {
                        trace::renewal(&mut rng, m, rate, cv, &shape, self.duration_s, &mut out);
                    }
                }
                TrafficKind::Onoff => {
                    let rate = cx.positive(&field("rate"), need(t.rate, "rate")?)?;
                    let on = cx.positive(&field("on_s"), need(t.on_s, "on_s")?)?;
                    let off = cx.positive(&field("off_s"), need(t.off_s, "off_s")?)?;
                    let sigma = cx.non_negative(&field("sigma"), t.sigma.unwrap_or(0.8))?;
                    for &m in &targets {
                        trace::on_off(
                            &mut rng,
                            m,
                            rate,
                            on,
                            off,
                            sigma,
                            &shape,
                            self.duration_s,
                            &mut out,
                        );
                    }
                }
                TrafficKind::Fleet => {
                    let fleet = Fleet {
                        models: targets,
                        total_rate: cx
                            .positive(&field("total_rate"), need(t.total_rate, "total_rate")?)?,
                        mu: need(t.mu, "mu")?,
                        sigma: cx.non_negative(&field("sigma"), need(t.sigma, "sigma")?)?,
                        periodic_fraction: t.periodic_fraction.unwrap_or(0.2).clamp(0.0, 1.0),
                    };
                    trace::fleet(&mut rng, &fleet, &shape, self.duration_s, &mut out);
                }
                TrafficKind::Csv => {
                    let p = t
                        .path
                        .as_ref()
                        .ok_or_else(|| cx.bad(field("path"), "required for kind csv"))?;
                    let lookup = |n: &str| names.get(n).copied();
                    out = trace::read_csv(&self.base_dir.join(p), &lookup)?.requests;
                }
                TrafficKind::Azure => {
                    let p = t
                        .path
                        .as_ref()
                        .ok_or_else(|| cx.bad(field("path"), "required for kind azure"))?;
                    let &[m] = targets.as_slice() else {
                        return Err(
                            cx.bad(field("models"), "an azure trace drives exactly one model")
                        );
                    };
                    let mult =
                        cx.positive(&field("rate_multiplier"), t.rate_multiplier.unwrap_or(1.0))?;
                    let start = trace::micros(t.start_s.unwrap_or(0.0));
                    out = trace::read_azure(&self.base_dir.join(p), m, mult, start)?.requests;
                }
            }
            parts.push(Trace { requests: out });
        }
        let mut trace = Trace::merge(parts);
        trace.truncate(trace::micros(self.duration_s));
        Ok(trace)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const BASE: &str = "name: t\nduration_s: 10\nslo_ms: 100\n\
        models: [{name: m, service_ms: 10, slots: 1, memory: 1Gi, load_s: 1}]\n\
        servers: [{name: s, memory: 2Gi, startup_s: 1, max_replicas: 2}]\n\
        traffic: [{kind: poisson, rate: 5}]\npolicies: [static-1]\n";

    fn err(text: &str) -> String {
        parse(text, "t.yaml", Path::new("."))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_fill_seed_timeout_and_initial_replicas() {
        let s = parse(BASE, "t.yaml", Path::new(".")).unwrap();
        assert_eq!(s.seed, 1);
        assert!((s.timeout_s - 1.0).abs() < 1e-12, "10 × the SLO");
        assert_eq!(s.models[0].initial_replicas, 1);
        assert!(!s.models[0].autoscaled);
        assert_eq!(s.servers[0].initial_replicas, 1);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected_with_their_place() {
        assert!(err(&BASE.replace("slo_ms", "slo_msec")).contains("unknown field `slo_msec`"));
        assert_eq!(
            err(&BASE.replace("slots: 1", "slots: 0")),
            "scenario t.yaml: models[0].slots: must be ≥ 1"
        );
        assert!(err(&BASE.replace("static-1", "hpa-fast"))
            .contains("policies[0]: unknown policy \"hpa-fast\""));
        assert!(err(&BASE.replace(
            "kind: poisson, rate: 5",
            "kind: poisson, rate: 5, models: [x]"
        ))
        .contains("traffic[0].models: model \"x\" is not defined"));
    }

    #[test]
    fn counted_models_expand_with_numbered_names_and_memory_in_range() {
        let text = BASE.replace(
            "{name: m, service_ms: 10, slots: 1, memory: 1Gi, load_s: 1}",
            "{name: f, count: 3, service_ms: 10, slots: 1, memory_range: [1Mi, 2Mi], load_s: 1}",
        );
        let s = parse(&text, "t.yaml", Path::new(".")).unwrap();
        let names: Vec<&str> = s.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["f-000", "f-001", "f-002"]);
        assert!(s
            .models
            .iter()
            .all(|m| (1 << 20..=2 << 20).contains(&m.memory_bytes)));
    }

    #[test]
    fn every_benchmark_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let s = load(&path).unwrap();
                assert!(!s.policies.is_empty());
                n += 1;
            }
        }
        assert!(n >= 5, "found {n} scenarios");
    }
}
