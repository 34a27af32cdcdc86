//! Built-in metrics for HPAs: a short history of every counter the agents push, one
//! ring buffer per (server, replica, model version), and the queries the Prometheus
//! Adapter rule of the docs would answer (`sum by (model) (rate(seldon_model_infer_total
//! {…}[window]))`), computed from that history.
//!
//! Rates follow Prometheus: the increase between the first and last sample inside the
//! window, counter resets (a value going down) counted as a restart from zero, divided
//! by the time between those samples. At steady load this equals `rate()`.
//!
//! Pure: time comes in as Unix milliseconds.

use std::collections::{BTreeMap, VecDeque};

use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};

/// One pushed sample of one series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub unix_millis: u64,
    pub requests_total: u64,
    pub rest_total: u64,
    pub grpc_total: u64,
    pub failed_total: u64,
    pub latency_seconds_total: f64,
    pub in_flight: u32,
}

/// A series: one model version on one server replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub server: ServerName,
    pub replica: ReplicaIndex,
    pub model: ModelName,
    pub version: u32,
}

/// The metrics HPAs can name, all derived from the Seldon series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricName {
    /// Requests per second over the window (`seldon_model_infer_total`).
    InferRps,
    /// Failed requests per second over the window.
    InferFailedRps,
    /// Mean request latency over the window, seconds.
    InferLatencySeconds,
    /// Requests in flight now (the inference lag).
    InferLag,
}

impl MetricName {
    /// Every name, as HPAs and the custom metrics API spell them.
    pub const ALL: [(&'static str, MetricName); 5] = [
        ("infer_rps", MetricName::InferRps),
        ("infer_failed_rps", MetricName::InferFailedRps),
        ("infer_latency_seconds", MetricName::InferLatencySeconds),
        ("infer_lag", MetricName::InferLag),
        ("infer_in_flight", MetricName::InferLag),
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }
}

/// Which series a query covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Model(ModelName),
    Server(ServerName),
    Replica(ServerName, ReplicaIndex),
    /// Every series (the caller filters models by namespace with `models`).
    Models(Vec<ModelName>),
}

/// Errors of a built-in metrics query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown metric {0:?}: the built-in source serves infer_rps, infer_failed_rps, infer_latency_seconds, infer_lag and infer_in_flight")]
    UnknownMetric(String),
    #[error("label {0:?} in the metric selector is not one of the Seldon series labels the built-in source knows (method_type, server, server_replica, model)")]
    UnknownLabel(String),
    #[error("no samples of {0} in the last {1} s")]
    NoData(String, u64),
}

/// Per-series sample history.
#[derive(Debug)]
pub struct MetricsStore {
    series: BTreeMap<SeriesKey, VecDeque<Sample>>,
    /// Samples older than this are dropped (the longest window anyone may ask for).
    retention_millis: u64,
}

impl Default for MetricsStore {
    fn default() -> Self {
        Self::new(600_000)
    }
}

impl MetricsStore {
    pub fn new(retention_millis: u64) -> Self {
        Self {
            series: BTreeMap::new(),
            retention_millis,
        }
    }

    /// Appends a sample; drops what fell out of the retention.
    pub fn push(&mut self, key: SeriesKey, sample: Sample) {
        let ring = self.series.entry(key).or_default();
        if ring
            .back()
            .is_some_and(|last| last.unix_millis >= sample.unix_millis)
        {
            return;
        }
        ring.push_back(sample);
        let oldest = sample.unix_millis.saturating_sub(self.retention_millis);
        while ring.front().is_some_and(|s| s.unix_millis < oldest) {
            ring.pop_front();
        }
    }

    /// Forgets series that have had no sample since `before` (gone replicas).
    pub fn expire(&mut self, before: u64) {
        self.series
            .retain(|_, ring| ring.back().is_some_and(|s| s.unix_millis >= before));
    }

    /// The value of `metric` over `scope` and the label selector, with rates over the
    /// last `window_millis` before `now`.
    pub fn query(
        &self,
        metric: &str,
        scope: &Scope,
        match_labels: &BTreeMap<String, String>,
        window_millis: u64,
        now: u64,
    ) -> Result<f64, QueryError> {
        let name = MetricName::parse(metric)
            .ok_or_else(|| QueryError::UnknownMetric(metric.to_owned()))?;
        let mut counter: fn(&Sample) -> f64 = |s| s.requests_total as f64;
        for (label, value) in match_labels {
            match label.as_str() {
                "method_type" if value == "rest" => counter = |s| s.rest_total as f64,
                "method_type" if value == "grpc" => counter = |s| s.grpc_total as f64,
                "method_type" => counter = |_| 0.0,
                "server" | "server_replica" | "model" | "namespace" => {}
                other => return Err(QueryError::UnknownLabel(other.to_owned())),
            }
        }
        let from = now.saturating_sub(window_millis);
        let selected = self.series.iter().filter(|(k, _)| {
            in_scope(k, scope)
                && match_labels.iter().all(|(l, v)| match l.as_str() {
                    "server" => k.server.as_str() == v,
                    "server_replica" => k.replica.0.to_string() == *v,
                    "model" => k.model.as_str() == v,
                    _ => true,
                })
        });
        let mut found = false;
        let (mut requests, mut failed, mut latency, mut in_flight) = (0.0, 0.0, 0.0, 0.0);
        for (_, ring) in selected {
            let window: Vec<&Sample> = ring
                .iter()
                .filter(|s| s.unix_millis >= from && s.unix_millis <= now)
                .collect();
            let Some(last) = window.last() else { continue };
            found = true;
            in_flight += f64::from(last.in_flight);
            requests += rate(&window, counter);
            failed += rate(&window, |s| s.failed_total as f64);
            latency += rate(&window, |s| s.latency_seconds_total);
        }
        if !found {
            return Err(QueryError::NoData(metric.to_owned(), window_millis / 1000));
        }
        Ok(match name {
            MetricName::InferRps => requests,
            MetricName::InferFailedRps => failed,
            MetricName::InferLag => in_flight,
            MetricName::InferLatencySeconds if requests > 0.0 => latency / requests,
            MetricName::InferLatencySeconds => 0.0,
        })
    }
}

fn in_scope(k: &SeriesKey, scope: &Scope) -> bool {
    match scope {
        Scope::Model(m) => &k.model == m,
        Scope::Server(s) => &k.server == s,
        Scope::Replica(s, r) => &k.server == s && &k.replica == r,
        Scope::Models(list) => list.contains(&k.model),
    }
}

/// Per-second increase of a counter between the first and last sample, resets handled
/// like Prometheus (a drop means the counter restarted from zero).
fn rate(window: &[&Sample], counter: impl Fn(&Sample) -> f64) -> f64 {
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return 0.0;
    };
    let span = last.unix_millis.saturating_sub(first.unix_millis);
    if span == 0 {
        return 0.0;
    }
    let mut increase = 0.0;
    for pair in window.windows(2) {
        let (a, b) = (counter(pair[0]), counter(pair[1]));
        increase += if b >= a { b - a } else { b };
    }
    increase * 1000.0 / span as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(server: &str, replica: u32, model: &str) -> SeriesKey {
        SeriesKey {
            server: ServerName::new(server),
            replica: ReplicaIndex(replica),
            model: ModelName::new(model),
            version: 1,
        }
    }

    fn sample(t: u64, requests: u64, rest: u64) -> Sample {
        Sample {
            unix_millis: t,
            requests_total: requests,
            rest_total: rest,
            grpc_total: requests - rest,
            ..Sample::default()
        }
    }

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn a_steady_counter_gives_its_rate_over_the_window() {
        let mut m = MetricsStore::default();
        for i in 0..=240u64 {
            m.push(key("s", 0, "iris"), sample(i * 500, i * 5, i * 5));
        }
        let scope = Scope::Model(ModelName::new("iris"));
        let rps = m
            .query("infer_rps", &scope, &none(), 120_000, 120_000)
            .unwrap();
        assert!((rps - 10.0).abs() < 1e-9, "{rps}");
    }

    #[test]
    fn replicas_add_up_and_the_selector_picks_rest_or_grpc() {
        let mut m = MetricsStore::default();
        for i in 0..=20u64 {
            m.push(key("s", 0, "iris"), sample(i * 1000, i * 4, i * 3));
            m.push(key("s", 1, "iris"), sample(i * 1000, i * 2, i * 2));
            m.push(key("s", 1, "other"), sample(i * 1000, i * 100, 0));
        }
        let scope = Scope::Model(ModelName::new("iris"));
        let all = m
            .query("infer_rps", &scope, &none(), 20_000, 20_000)
            .unwrap();
        assert!((all - 6.0).abs() < 1e-9);
        let rest = BTreeMap::from([("method_type".to_owned(), "rest".to_owned())]);
        let r = m.query("infer_rps", &scope, &rest, 20_000, 20_000).unwrap();
        assert!((r - 5.0).abs() < 1e-9);
        let replica = Scope::Replica(ServerName::new("s"), ReplicaIndex(1));
        let r1 = m
            .query("infer_rps", &replica, &none(), 20_000, 20_000)
            .unwrap();
        assert!((r1 - 102.0).abs() < 1e-9);
    }

    #[test]
    fn a_counter_reset_counts_as_a_restart_from_zero() {
        let mut m = MetricsStore::default();
        let k = key("s", 0, "iris");
        m.push(k.clone(), sample(0, 100, 100));
        m.push(k.clone(), sample(1000, 110, 110));
        m.push(k.clone(), sample(2000, 10, 10));
        m.push(k, sample(3000, 20, 20));
        let scope = Scope::Model(ModelName::new("iris"));
        let rps = m.query("infer_rps", &scope, &none(), 10_000, 3000).unwrap();
        assert!((rps - 10.0).abs() < 1e-9, "{rps}");
    }

    #[test]
    fn a_shorter_window_sees_a_step_sooner() {
        let mut m = MetricsStore::default();
        let k = key("s", 0, "iris");
        let mut total = 0;
        for t in 0..=120u64 {
            total += if t > 110 { 40 } else { 10 };
            m.push(k.clone(), sample(t * 1000, total, total));
        }
        let scope = Scope::Model(ModelName::new("iris"));
        let short = m
            .query("infer_rps", &scope, &none(), 10_000, 120_000)
            .unwrap();
        let long = m
            .query("infer_rps", &scope, &none(), 120_000, 120_000)
            .unwrap();
        assert!(short > 30.0 && long < 13.0, "{short} {long}");
    }

    #[test]
    fn unknown_metrics_labels_and_empty_windows_are_errors() {
        let m = MetricsStore::default();
        let scope = Scope::Model(ModelName::new("iris"));
        assert!(matches!(
            m.query("cpu", &scope, &none(), 1000, 1000),
            Err(QueryError::UnknownMetric(_))
        ));
        let code = BTreeMap::from([("code".to_owned(), "200".to_owned())]);
        assert!(matches!(
            m.query("infer_rps", &scope, &code, 1000, 1000),
            Err(QueryError::UnknownLabel(_))
        ));
        assert!(matches!(
            m.query("infer_rps", &scope, &none(), 1000, 1000),
            Err(QueryError::NoData(..))
        ));
    }

    #[test]
    fn lag_is_the_sum_of_in_flight_and_latency_the_mean_over_the_window() {
        let mut m = MetricsStore::default();
        for i in 0..=10u64 {
            let mut s = sample(i * 1000, i * 10, i * 10);
            s.latency_seconds_total = i as f64 * 0.5;
            s.in_flight = 3;
            m.push(key("s", 0, "iris"), s);
            m.push(key("s", 1, "iris"), s);
        }
        let scope = Scope::Server(ServerName::new("s"));
        let lag = m
            .query("infer_lag", &scope, &none(), 10_000, 10_000)
            .unwrap();
        assert_eq!(lag, 6.0);
        let lat = m
            .query("infer_latency_seconds", &scope, &none(), 10_000, 10_000)
            .unwrap();
        assert!((lat - 0.05).abs() < 1e-9);
    }
}
