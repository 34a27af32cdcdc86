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
//!
//! ```
//! use coscale_core::hpa::{decide, parse_hpa, ControllerConfig, DecisionInput, HpaState, MetricInput, Timestamp};
//!
//! let hpa = parse_hpa(r#"
//! apiVersion: autoscaling/v2
//! kind: HorizontalPodAutoscaler
//! metadata: {name: irisa0-model-hpa, namespace: seldon-mesh}
//! spec:
//!   scaleTargetRef: {apiVersion: mlops.seldon.io/v1alpha1, kind: Model, name: irisa0}
//!   maxReplicas: 3
//!   metrics:
//!   - type: Object
//!     object:
//!       metric: {name: infer_rps}
//!       describedObject: {apiVersion: mlops.seldon.io/v1alpha1, kind: Model, name: irisa0}
//!       target: {type: AverageValue, averageValue: 3}
//! "#).unwrap();
//! // Per HPA, kept by the caller between sync periods (in memory, like upstream).
//! let mut state = HpaState::default();
//! let input = DecisionInput {
//!     spec_replicas: 1,   // scale subresource spec.replicas
//!     status_replicas: 1, // scale subresource status.replicas
//!     metrics: vec![MetricInput::Value("7500m".parse().unwrap())], // one per spec.metrics
//!     pods: vec![],       // pods matched by the scale selector (Pods/Resource/Value targets)
//! };
//! let (decision, next) = decide(&hpa, &input, state, &ControllerConfig::default(), Timestamp::from_secs(0));
//! state = next;
//! assert_eq!((decision.desired_replicas, decision.scaled), (3, true));
//! // If decision.scaled: write spec.replicas = decision.desired_replicas, then status
//! // conditions = decision.conditions.
//! # let _ = state;
//! ```

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
