//! Autoscaling policies as the simulator runs them.
//!
//! Every policy is a pure step function of a per-model observation ([`ModelView`]),
//! its own explicit state and the virtual time: the simulator calls
//! [`Policy::tick`] once per second of virtual time for every model, and the policy
//! acts on its own period (KPA every 2 s, HPA every 15 s, KEDA's poll every 30 s,
//! Seldon every 20 s). The HPA runs `coscale_core::hpa::decide`, the code the live
//! controller runs; the peer policies follow `peers.md` and `seldon-core2-semantics.md`.

pub mod hpa;
pub mod keda;
pub mod kpa;
pub mod native;
pub mod oracle;
pub mod seldon;

use serde::Deserialize;

use crate::scenario::ModelSpec;
use crate::trace::Micros;

/// The last seconds of a model's metrics, newest last.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// Requests that arrived in each second (ring buffer).
    pub arrivals: &'a [f32],
    /// Time-averaged outstanding requests (held + queued + in service) per second.
    pub concurrency: &'a [f32],
    /// Ring index of the newest complete second.
    pub head: usize,
    /// Complete seconds recorded so far (saturates at the ring length).
    pub filled: usize,
}

impl History<'_> {
    /// Σ of the newest `n` entries, newest first (the order fixes the rounding), walking
    /// the ring backwards from `head` without a division per entry.
    fn sum(ring: &[f32], head: usize, n: usize) -> f64 {
        let (newer, older) = ring.split_at((head + 1).min(ring.len()));
        let from_newer = n.min(newer.len());
        let mut sum = 0.0;
        for &x in newer[newer.len() - from_newer..].iter().rev() {
            sum += f64::from(x);
        }
        for &x in older[older.len() - (n - from_newer).min(older.len())..]
            .iter()
            .rev()
        {
            sum += f64::from(x);
        }
        sum
    }

    /// Seconds actually covered by a window of `secs`.
    pub fn covered(&self, secs: usize) -> usize {
        secs.min(self.filled).min(self.arrivals.len())
    }

    /// Mean request rate over the last `secs` seconds (the `infer_rps` metric).
    pub fn rate(&self, secs: usize) -> f64 {
        let n = self.covered(secs);
        if n == 0 {
            return 0.0;
        }
        Self::sum(self.arrivals, self.head, n) / n as f64
    }

    /// Mean concurrency over the last `secs` seconds.
    pub fn concurrency(&self, secs: usize) -> f64 {
        let n = self.covered(secs);
        if n == 0 {
            return 0.0;
        }
        Self::sum(self.concurrency, self.head, n) / n as f64
    }
}

/// What a policy sees of one model at a tick.
#[derive(Debug, Clone, Copy)]
pub struct ModelView<'a> {
    pub now: Micros,
    /// Whole seconds since the start (the tick number).
    pub tick: u64,
    pub spec: &'a ModelSpec,
    /// The replica count the autoscaler last asked for.
    pub desired: u32,
    /// Replicas loaded and serving.
    pub ready: u32,
    /// Replicas placed (loading or serving).
    pub placed: u32,
    /// Requests held at the router plus those at replicas.
    pub outstanding: u32,
    /// Requests held at the router (no ready replica).
    pub pending: u32,
    /// Largest number of requests in flight at one replica (an agent's inference lag).
    pub max_replica_outstanding: u32,
    /// When the last request arrived.
    pub last_used: Option<Micros>,
    /// When the model's replica set last changed state (scaled, or a replica became ready).
    pub state_changed: Micros,
    pub history: History<'a>,
}

/// How a policy sizes servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRule {
    /// coscale's: the replicas that fit every desired model replica
    /// (`coscale_core::placement::replicas_needed`), within min/max.
    FromModelNeeds,
    /// Seldon Core 2's: up to the largest hosted model's replica count when a model
    /// replica could not be placed; down by the number of empty replicas.
    Seldon,
    /// coscale's native server planner, `coscale_core::autoscale::plan_server`.
    Native,
}

/// A model autoscaling policy.
pub trait Policy {
    /// Called every second for every model; returns a new desired replica count.
    fn tick(&mut self, model: usize, view: &ModelView<'_>) -> Option<u32>;
    /// A request arrived for a model with no replica desired; a policy that wakes
    /// immediately (KPA's activator poke) returns the count to scale to.
    fn on_cold_request(&mut self, _model: usize, _view: &ModelView<'_>) -> Option<u32> {
        None
    }
    fn server_rule(&self) -> ServerRule {
        ServerRule::FromModelNeeds
    }
    /// Whether [`Policy::tick`] may act at this tick; when false the simulator skips
    /// the calls (a policy acting on its own period returns `None` between periods).
    fn due(&self, _tick: u64) -> bool {
        true
    }
    /// Seconds of history the policy reads.
    fn history_secs(&self) -> usize {
        1
    }
}

/// A policy named in a scenario: a well-known name or a configured variant.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PolicySpec {
    Named(String),
    Custom(Box<CustomPolicy>),
}

/// A configured policy: a name and exactly one kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPolicy {
    pub name: String,
    /// An HPA template (autoscaling/v2, any fields); target and bounds are per model.
    #[serde(default)]
    pub hpa: Option<hpa::HpaConfig>,
    #[serde(default)]
    pub knative_kpa: Option<kpa::KpaConfig>,
    #[serde(default)]
    pub keda: Option<keda::KedaConfig>,
    #[serde(default)]
    pub seldon: Option<seldon::SeldonConfig>,
    #[serde(default, rename = "static")]
    pub static_replicas: Option<u32>,
    /// coscale's native policy configured as the control plane is: environment
    /// variables (`COSCALE_AUTOSCALING_MODE`, `SELDON_MODEL_INFERENCE_LAG_THRESHOLD`, …).
    #[serde(default)]
    pub coscale_native: Option<NativeSpec>,
}

/// The environment the native policy's configuration is read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeSpec {
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// A resolved policy kind with its configuration.
#[derive(Debug, Clone)]
pub enum PolicyKind {
    Hpa(hpa::HpaConfig),
    Kpa(kpa::KpaConfig),
    Keda(keda::KedaConfig),
    Seldon(seldon::SeldonConfig),
    Static(u32),
    Oracle,
    Native(coscale_core::autoscale::ModelPolicyConfig),
}

impl PolicySpec {
    pub fn name(&self) -> &str {
        match self {
            PolicySpec::Named(n) => n,
            PolicySpec::Custom(c) => &c.name,
        }
    }

    /// The kind this names, or why it names none.
    pub fn kind(&self) -> Result<PolicyKind, String> {
        match self {
            PolicySpec::Named(n) => match n.as_str() {
                "hpa" | "hpa-default" => Ok(PolicyKind::Hpa(hpa::HpaConfig::default())),
                "knative-kpa" | "kpa" => Ok(PolicyKind::Kpa(kpa::KpaConfig::default())),
                "keda" => Ok(PolicyKind::Keda(keda::KedaConfig::default())),
                "seldon" => Ok(PolicyKind::Seldon(seldon::SeldonConfig::default())),
                "oracle" => Ok(PolicyKind::Oracle),
                "coscale-native" | "coscale-native-proportional" => Ok(PolicyKind::Native(
                    coscale_core::autoscale::ModelPolicyConfig::proportional(),
                )),
                "coscale-native-seldon" => Ok(PolicyKind::Native(
                    coscale_core::autoscale::ModelPolicyConfig::seldon(),
                )),
                other => match other.strip_prefix("static-").map(str::parse::<u32>) {
                    Some(Ok(n)) => Ok(PolicyKind::Static(n)),
                    _ => Err(format!(
                        "unknown policy {other:?}; known: hpa-default, knative-kpa, keda, \
                         seldon, static-N, oracle, coscale-native[-proportional], coscale-native-seldon, or {{name, hpa|knative_kpa|keda|seldon|static: ...}}"
                    )),
                },
            },
            PolicySpec::Custom(c) => {
                let kinds: Vec<PolicyKind> = [
                    c.hpa.clone().map(PolicyKind::Hpa),
                    c.knative_kpa.clone().map(PolicyKind::Kpa),
                    c.keda.clone().map(PolicyKind::Keda),
                    c.seldon.clone().map(PolicyKind::Seldon),
                    c.static_replicas.map(PolicyKind::Static),
                ]
                .into_iter()
                .flatten()
                .collect();
                let mut kinds = kinds;
                if let Some(n) = &c.coscale_native {
                    let cfg = coscale_core::autoscale::ModelPolicyConfig::from_env_map(&n.env)
                        .map_err(|e| format!("policy {:?}: {e}", c.name))?;
                    kinds.push(PolicyKind::Native(cfg));
                }
                match <[PolicyKind; 1]>::try_from(kinds) {
                    Ok([k]) => Ok(k),
                    Err(_) => Err(format!(
                        "policy {:?} must set exactly one of hpa, knative_kpa, keda, seldon, static, coscale_native",
                        c.name
                    )),
                }
            }
        }
    }

    /// Validates the spec without building it.
    pub fn check(&self) -> Result<(), String> {
        self.kind().map(|_| ())
    }
}

/// `a / b` rounded up, for non-negative finite values, saturating into `u32`.
pub(crate) fn ceil_u32(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x.ceil() as u32
    }
}

/// Whether a period of `period_s` seconds ends at tick `tick`.
pub(crate) fn on_period(tick: u64, period_s: u64) -> bool {
    period_s > 0 && tick.is_multiple_of(period_s)
}
