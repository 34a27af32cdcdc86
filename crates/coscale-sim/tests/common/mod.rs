//! Helpers shared by the simulator's tests: scenarios from YAML text and hand-made
//! traces.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use coscale_sim::scenario::{self, Scenario};
use coscale_sim::trace::{micros, Request, Trace};

/// A scenario from YAML text (relative paths resolve against this crate).
pub fn scenario(yaml: &str) -> Scenario {
    scenario::parse(yaml, "test.yaml", Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Requests to model 0 at the given times (seconds).
pub fn at(times: &[f64]) -> Trace {
    Trace::from_requests(
        times
            .iter()
            .map(|&t| Request {
                time: micros(t),
                model: 0,
                service: None,
            })
            .collect(),
    )
}

/// `rate` requests per second to model 0, evenly spaced from `from` to `to` (exclusive).
pub fn constant(rate: u32, from: u32, to: u32) -> Trace {
    let times: Vec<f64> = (from * rate..to * rate)
        .map(|k| f64::from(k) / f64::from(rate))
        .collect();
    at(&times)
}

/// Decisions as (seconds, desired) for model 0.
pub fn timeline(decisions: &[(u64, u32, u32)]) -> Vec<(f64, u32)> {
    decisions
        .iter()
        .filter(|d| d.1 == 0)
        .map(|&(t, _, n)| (t as f64 / 1e6, n))
        .collect()
}
