//! The Kubernetes HorizontalPodAutoscaler (`autoscaling/v2`) as a pure library.
//!
//! Same inputs, same decisions as upstream `kube-controller-manager` (see
//! `shared/design/hpa-algorithm.md`, the spec this follows rule by rule):
//!
//! - [`api`]: the typed HPA object, API-server defaults and validation, [`parse_hpa`].
//! - [`calc`]: per-metric replica proposals (usage ratio, tolerance, missing and
//!   unready pods, CPU initialization rules, ready-pod counting).
//! - [`normalize`]: stabilization windows, scale-up limits, behavior policies and the
//!   recommendation / scale-event histories.
//! - [`controller`]: one reconcile pass, [`decide`], with status conditions.
//! - [`scenario`]: the `coscale hpa explain` scenario file and its rendering.
//!
//! Nothing here reads a clock, a metrics API or a cluster: time is a [`Timestamp`]
//! passed in, metric values and pods are inputs, and the per-HPA history is an explicit
//! [`HpaState`] that goes in and comes back out. The live controller and the simulator
//! call [`decide`] once per sync period (15 s upstream) with the state it returned last.

pub mod api;
pub mod calc;
pub mod controller;
pub mod normalize;
pub mod scenario;
mod time;

pub use api::{parse_hpa, parse_hpa_documents, HorizontalPodAutoscaler, HpaError};
pub use calc::{PodInfo, PodMetric, PodPhase, Tolerances};
pub use controller::{
    decide, evaluate, Condition, ConditionType, ControllerConfig, Decision, DecisionInput,
    MetricInput, MetricOutcome,
};
pub use normalize::{record_scale_event, HpaState, Recommendation, ScaleEvent};
pub use time::Timestamp;
