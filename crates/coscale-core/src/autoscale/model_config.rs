//! Configuration of the native model autoscaling policy: defaults per mode, per-Model
//! overrides from annotations, cluster-wide overrides from environment variables.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Annotation selecting the mode: `seldon` or `proportional`.
pub const ANNOTATION_MODE: &str = "coscale.io/autoscaling-mode";
/// Annotation for [`ModelPolicyConfig::lag_threshold`] (a positive number).
pub const ANNOTATION_LAG_THRESHOLD: &str = "coscale.io/inference-lag-threshold";
/// Annotation for [`ModelPolicyConfig::inactive_seconds`] (whole seconds).
pub const ANNOTATION_INACTIVE_SECONDS: &str = "coscale.io/inactive-seconds-threshold";
/// Annotation for [`ModelPolicyConfig::stats_period_ms`] (seconds, decimals allowed).
pub const ANNOTATION_STATS_PERIOD: &str = "coscale.io/scaling-stats-period-seconds";
/// Annotation for [`ModelPolicyConfig::stability_window_ms`] (seconds, decimals allowed).
pub const ANNOTATION_STABILITY_WINDOW: &str = "coscale.io/stability-window-seconds";
/// Annotation for [`ModelPolicyConfig::window_ms`] (seconds, decimals allowed).
pub const ANNOTATION_LAG_WINDOW: &str = "coscale.io/lag-window-seconds";

/// Seldon's agent variable for [`ModelPolicyConfig::lag_threshold`].
pub const ENV_LAG_THRESHOLD: &str = "SELDON_MODEL_INFERENCE_LAG_THRESHOLD";
/// Seldon's agent variable for [`ModelPolicyConfig::inactive_seconds`].
pub const ENV_INACTIVE_SECONDS: &str = "SELDON_MODEL_INACTIVE_SECONDS_THRESHOLD";
/// Seldon's agent variable for [`ModelPolicyConfig::stats_period_ms`] (in seconds).
pub const ENV_STATS_PERIOD: &str = "SELDON_SCALING_STATS_PERIOD_SECONDS";
/// coscale's variable for [`ModelPolicyConfig::stability_window_ms`] (in seconds).
pub const ENV_STABILITY_WINDOW: &str = "COSCALE_SCALING_STABILITY_WINDOW_SECONDS";
/// coscale's variable for [`ModelPolicyConfig::window_ms`] (in seconds).
pub const ENV_LAG_WINDOW: &str = "COSCALE_SCALING_LAG_WINDOW_SECONDS";
/// coscale's variable for [`ModelPolicyConfig::mode`] (`seldon` or `proportional`).
pub const ENV_MODE: &str = "COSCALE_AUTOSCALING_MODE";

/// How big a step one decision may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepMode {
    /// Seldon Core 2: exactly one replica up or down per decision.
    Seldon,
    /// coscale: straight to the replica count the windowed lag asks for.
    Proportional,
}

impl StepMode {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "seldon" => Ok(StepMode::Seldon),
            "proportional" => Ok(StepMode::Proportional),
            _ => Err("expected `seldon` or `proportional`".to_owned()),
        }
    }
}

/// Tunables of [`super::decide_model`]. Build with [`ModelPolicyConfig::seldon`] or
/// [`ModelPolicyConfig::proportional`], then layer [`ModelPolicyConfig::with_env`] and
/// [`ModelPolicyConfig::with_overrides`]. Changing `mode` through an override keeps every
/// other field as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPolicyConfig {
    pub mode: StepMode,
    /// In-flight requests per replica that call for more replicas
    /// (`SELDON_MODEL_INFERENCE_LAG_THRESHOLD`). Finite and positive.
    pub lag_threshold: f64,
    /// A model unused for this long scales down (`SELDON_MODEL_INACTIVE_SECONDS_THRESHOLD`).
    pub inactive_seconds: u64,
    /// How often the caller calls [`super::decide_model`]
    /// (`SELDON_SCALING_STATS_PERIOD_SECONDS`). Positive. Every call is one analysis round;
    /// the policy does not throttle itself.
    pub stats_period_ms: u64,
    /// Scale down only when the model's state has not changed for this long.
    pub stability_window_ms: u64,
    /// Proportional mode: lag samples are averaged over this sliding window. Positive.
    pub window_ms: u64,
    /// Proportional mode: scale down only to a replica count on which the highest lag
    /// (raw sample or windowed mean) of the whole stability window stays at or below this fraction of
    /// `lag_threshold` per replica. In `(0, 1]`; the gap to 1 is the hysteresis band that
    /// keeps steady load from flapping.
    pub scale_down_utilisation: f64,
}

impl ModelPolicyConfig {
    /// Seldon Core 2's documented defaults (helm values): lag threshold 30, inactive after
    /// 600 s, stats period 20 s, scale-down stability 60 s (the code's
    /// `modelScalingCoolingDownSeconds`), one replica per decision. The window and the
    /// utilisation are unused in this mode; they carry the proportional defaults so that
    /// switching the mode by annotation gives sensible values.
    pub fn seldon() -> Self {
        ModelPolicyConfig {
            mode: StepMode::Seldon,
            lag_threshold: 30.0,
            inactive_seconds: 600,
            stats_period_ms: 20_000,
            stability_window_ms: 60_000,
            ..Self::proportional()
        }
    }

    /// coscale's default.
    ///
    /// - Lag threshold 4, chosen by measurement: in the simulator's benchmark scenarios
    ///   (`bench/scenarios/`, replicas with 1–8 parallel slots) Seldon's 30 never sees the
    ///   queue build up until latency has already blown the SLO (scenario C: SLO
    ///   attainment 0.865, A: 0.882), while a threshold near the slot count is the best
    ///   reactive policy (C: 0.959 with 3, A: 0.976 with 2). 4 is "a couple of requests
    ///   queued behind a busy replica" for the built-in runtime (one slot per core) and
    ///   for MLServer; raise it per Model (annotation) for runtimes with more slots.
    ///   Inactive 600 s: the same meaning as in Seldon mode.
    /// - Stats period 1 s: agents push stats every second; a 20 s period alone would
    ///   cost up to 20 s of reaction time before any window.
    /// - Lag window 6 s: in-flight counts are instantaneous and noisy; six one-second
    ///   samples smooth single spikes yet a step in load is fully visible within 6 s
    ///   (Knative's panic window is 6 s for the same reason).
    /// - Stability window 60 s: Seldon's code value and Knative's stable window; a
    ///   scale-down needs a whole minute of evidence, so short dips never release
    ///   replicas that the next burst needs (reloading a model costs far more than a
    ///   minute of an idle replica).
    /// - Scale-down utilisation 0.7: scale up at 100 % of the threshold per replica, scale
    ///   down only to a count that keeps the minute's peak at or below 70 %. A steady
    ///   load that fits `n` replicas never leads to fewer than `n`, so it never flaps;
    ///   0.7 mirrors Knative's 70 % target utilisation.
    pub fn proportional() -> Self {
        ModelPolicyConfig {
            mode: StepMode::Proportional,
            lag_threshold: 4.0,
            inactive_seconds: 600,
            stats_period_ms: 1_000,
            stability_window_ms: 60_000,
            window_ms: 6_000,
            scale_down_utilisation: 0.7,
        }
    }

    /// This config with a Model's `coscale.io/*` autoscaling annotations applied (see the
    /// `ANNOTATION_*` constants). Other annotations are ignored.
    pub fn with_overrides(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, PolicyConfigError> {
        self.apply(ConfigOrigin::Annotation, &ANNOTATION_KEYS, annotations)
    }

    /// This config with the `ENV_*` variables found in `env` applied.
    pub fn with_env(&self, env: &BTreeMap<String, String>) -> Result<Self, PolicyConfigError> {
        self.apply(ConfigOrigin::Env, &ENV_KEYS, env)
    }

    /// The cluster-wide config from environment variables: the defaults of the mode named
    /// by `COSCALE_AUTOSCALING_MODE` (proportional when unset), then the numeric variables.
    pub fn from_env_map(env: &BTreeMap<String, String>) -> Result<Self, PolicyConfigError> {
        let base = match env.get(ENV_MODE) {
            Some(raw) => match StepMode::parse(raw.trim()) {
                Ok(StepMode::Seldon) => Self::seldon(),
                Ok(StepMode::Proportional) => Self::proportional(),
                Err(problem) => return Err(invalid(ConfigOrigin::Env, ENV_MODE, raw, problem)),
            },
            None => Self::proportional(),
        };
        base.with_env(env)
    }

    /// Checks the invariants documented on the fields.
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        let bad = |field: &'static str, problem: &str| {
            Err(PolicyConfigError::Invalid {
                field,
                problem: problem.to_owned(),
            })
        };
        if !(self.lag_threshold.is_finite() && self.lag_threshold > 0.0) {
            return bad("lag_threshold", "must be a finite number above 0");
        }
        if self.stats_period_ms == 0 {
            return bad("stats_period_ms", "must be above 0");
        }
        if self.window_ms == 0 {
            return bad("window_ms", "must be above 0");
        }
        let u = self.scale_down_utilisation;
        if !(u.is_finite() && u > 0.0 && u <= 1.0) {
            return bad("scale_down_utilisation", "must be in (0, 1]");
        }
        Ok(())
    }

    fn apply(
        &self,
        origin: ConfigOrigin,
        keys: &[(&'static str, Field)],
        map: &BTreeMap<String, String>,
    ) -> Result<Self, PolicyConfigError> {
        let mut cfg = self.clone();
        for &(key, field) in keys {
            if let Some(raw) = map.get(key) {
                cfg.set(field, raw.trim())
                    .map_err(|problem| invalid(origin, key, raw, problem))?;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn set(&mut self, field: Field, raw: &str) -> Result<(), String> {
        match field {
            Field::Mode => self.mode = StepMode::parse(raw)?,
            Field::LagThreshold => {
                self.lag_threshold = raw
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or("expected a number above 0")?;
            }
            Field::InactiveSeconds => {
                self.inactive_seconds = raw
                    .parse::<u64>()
                    .map_err(|_| "expected whole seconds (0 or more)")?;
            }
            Field::StatsPeriod => self.stats_period_ms = positive_ms(raw)?,
            Field::StabilityWindow => self.stability_window_ms = seconds_to_ms(raw)?,
            Field::LagWindow => self.window_ms = positive_ms(raw)?,
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Mode,
    LagThreshold,
    InactiveSeconds,
    StatsPeriod,
    StabilityWindow,
    LagWindow,
}

const ANNOTATION_KEYS: [(&str, Field); 6] = [
    (ANNOTATION_MODE, Field::Mode),
    (ANNOTATION_LAG_THRESHOLD, Field::LagThreshold),
    (ANNOTATION_INACTIVE_SECONDS, Field::InactiveSeconds),
    (ANNOTATION_STATS_PERIOD, Field::StatsPeriod),
    (ANNOTATION_STABILITY_WINDOW, Field::StabilityWindow),
    (ANNOTATION_LAG_WINDOW, Field::LagWindow),
];

const ENV_KEYS: [(&str, Field); 6] = [
    (ENV_MODE, Field::Mode),
    (ENV_LAG_THRESHOLD, Field::LagThreshold),
    (ENV_INACTIVE_SECONDS, Field::InactiveSeconds),
    (ENV_STATS_PERIOD, Field::StatsPeriod),
    (ENV_STABILITY_WINDOW, Field::StabilityWindow),
    (ENV_LAG_WINDOW, Field::LagWindow),
];

/// Seconds (decimals allowed, millisecond resolution) as milliseconds.
fn seconds_to_ms(raw: &str) -> Result<u64, String> {
    const MAX_SECONDS: f64 = 1e12;
    let seconds = raw
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_SECONDS)
        .ok_or("expected seconds (a number from 0 to 1e12)")?;
    // In range by the filter above: at most 1e15 ms, exactly representable.
    Ok((seconds * 1000.0).round() as u64)
}

fn positive_ms(raw: &str) -> Result<u64, String> {
    match seconds_to_ms(raw)? {
        0 => Err("expected at least 0.001 seconds".to_owned()),
        ms => Ok(ms),
    }
}

fn invalid(
    origin: ConfigOrigin,
    key: &str,
    raw: &str,
    problem: impl Into<String>,
) -> PolicyConfigError {
    PolicyConfigError::InvalidValue {
        origin,
        key: key.to_owned(),
        value: raw.to_owned(),
        problem: problem.into(),
    }
}

/// Where a configuration value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    Annotation,
    Env,
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigOrigin::Annotation => "annotation",
            ConfigOrigin::Env => "environment variable",
        })
    }
}

/// A model autoscaling setting that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyConfigError {
    #[error("{origin} `{key}` has invalid value \"{value}\": {problem}")]
    InvalidValue {
        origin: ConfigOrigin,
        key: String,
        value: String,
        problem: String,
    },
    #[error("model autoscaling setting `{field}` is invalid: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}
