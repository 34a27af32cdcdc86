//! Kubernetes mode: the `Model`/`Server`/`ServerConfig` CRDs generated from the manifest
//! types of `coscale-core` (`crd`), and the operator (`coscale operator`) that hands the
//! custom resources to the control plane, runs each Server as a StatefulSet with one
//! Service per replica, applies the control plane's scale decisions to `spec.replicas`
//! and writes status back.
//!
//! Layout, cheapest to test first: `spec` (CR → coscale manifest, validated by
//! `coscale_core::resources`), `desired` (pure decisions: pod specs, StatefulSets,
//! Services, scale, statuses), `reconcile` (the calls, in a fixed order), `operator`
//! (the kube-rs controller runtime).

pub mod crd;
pub mod desired;
pub mod operator;
pub mod reconcile;
pub mod spec;
