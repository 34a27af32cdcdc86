//! Data-plane statistics of one server replica: per model version, in-flight
//! requests (the inference lag), counters, latency and last use; exported as
//! Seldon Core 2's Prometheus metrics and pushed to the control plane.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coscale_api::pb::agent::{ModelRef, ModelStats, Stats as StatsMsg};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Seldon's latency buckets for `seldon_model_infer_api_seconds`.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InferLabels {
    server: String,
    server_replica: String,
    model: String,
    model_internal: String,
    method_type: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AggregateLabels {
    server: String,
    server_replica: String,
    method_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    server: String,
    server_replica: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    server: String,
    server_replica: String,
    model_internal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    server: String,
    server_replica: String,
}

type SecondsCounter = Counter<f64, AtomicU64>;

/// The Prometheus series one successful request of a model version updates, looked up once
/// (on the first success per protocol) instead of by label set on every request.
#[derive(Debug)]
struct InferHandles {
    total: Counter,
    seconds: SecondsCounter,
    api_seconds: Histogram,
}

/// Per model version counters on the hot path (atomics only).
#[derive(Debug, Default)]
pub struct ModelCounters {
    pub name: String,
    pub version: u32,
    /// `<name>_<version>`: the name the backend knows this version by.
    pub internal: String,
    pub in_flight: AtomicU32,
    pub total: AtomicU64,
    pub failed: AtomicU64,
    pub latency_micros: AtomicU64,
    pub last_used_millis: AtomicU64,
    pub rest: AtomicU64,
    pub grpc: AtomicU64,
    /// Per [`Protocol::index`]: the series of successful requests.
    ok_handles: [OnceLock<InferHandles>; 2],
}

/// Protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rest,
    Grpc,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Rest => "rest",
            Protocol::Grpc => "grpc",
        }
    }

    fn index(self) -> usize {
        match self {
            Protocol::Rest => 0,
            Protocol::Grpc => 1,
        }
    }

    /// The `code` label of a successful request.
    fn ok_code(self) -> &'static str {
        match self {
            Protocol::Rest => "200",
            Protocol::Grpc => "OK",
        }
    }

    /// The `method` label of `seldon_model_infer_api_seconds`.
    fn api_method(self) -> &'static str {
        match self {
            Protocol::Rest => "POST",
            Protocol::Grpc => "grpc",
        }
    }
}

/// All statistics of the replica.
pub struct Stats {
    server: String,
    replica: String,
    models: RwLock<HashMap<String, Arc<ModelCounters>>>,
    /// Loaded versions per model name.
    versions: RwLock<HashMap<String, std::collections::BTreeSet<u32>>>,
    registry: Registry,
    infer_total: Family<InferLabels, Counter>,
    infer_seconds: Family<InferLabels, SecondsCounter>,
    aggregate_total: Family<AggregateLabels, Counter>,
    aggregate_seconds: Family<AggregateLabels, SecondsCounter>,
    /// Per [`Protocol::index`]: the replica-wide series, looked up on first use.
    aggregate_handles: [OnceLock<(Counter, SecondsCounter)>; 2],
    api_seconds: Family<ApiLabels, Histogram>,
    loaded: Family<ModelLabels, Gauge>,
    loaded_memory: Family<ModelLabels, Gauge>,
    inflight_gauge: Family<ModelLabels, Gauge>,
    load_counter: Family<ReplicaLabels, Counter>,
    unload_counter: Family<ReplicaLabels, Counter>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Tracks one request; finishing it (or dropping it) updates every counter.
pub struct InFlight {
    stats: Arc<Stats>,
    counters: Arc<ModelCounters>,
    protocol: Protocol,
    started: std::time::Instant,
    done: bool,
}

impl InFlight {
    /// Records the outcome: `code` is `"200"`-style for REST, a gRPC code name for gRPC.
    pub fn finish(mut self, code: &str, ok: bool) {
        self.record(code, ok);
    }

    fn record(&mut self, code: &str, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.started.elapsed();
        let c = &self.counters;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        c.total.fetch_add(1, Ordering::Relaxed);
        if !ok {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
        c.latency_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match self.protocol {
            Protocol::Rest => c.rest.fetch_add(1, Ordering::Relaxed),
            Protocol::Grpc => c.grpc.fetch_add(1, Ordering::Relaxed),
        };
        self.stats.record_metrics(c, self.protocol, code, elapsed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // A request dropped without an answer (client went away) counts as failed.
        let code = match self.protocol {
            Protocol::Rest => "499",
            Protocol::Grpc => "Cancelled",
        };
        self.record(code, false);
    }
}

impl Stats {
    pub fn new(
        server: &str,
        replica: u32,
        memory_bytes: u64,
        overcommit_percent: u32,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        let infer_total = Family::<InferLabels, Counter>::default();
        let infer_seconds = Family::<InferLabels, SecondsCounter>::default();
        let aggregate_total = Family::<AggregateLabels, Counter>::default();
        let aggregate_seconds = Family::<AggregateLabels, SecondsCounter>::default();
        let api_seconds =
            Family::<ApiLabels, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
        let loaded = Family::<ModelLabels, Gauge>::default();
        let loaded_memory = Family::<ModelLabels, Gauge>::default();
        let inflight_gauge = Family::<ModelLabels, Gauge>::default();
        let load_counter = Family::<ReplicaLabels, Counter>::default();
        let unload_counter = Family::<ReplicaLabels, Counter>::default();
        let capacity = Family::<ReplicaLabels, Gauge>::default();
        let capacity_oc = Family::<ReplicaLabels, Gauge>::default();
        let rl = ReplicaLabels {
            server: server.to_owned(),
            server_replica: replica.to_string(),
        };
        capacity
            .get_or_create(&rl)
            .set(i64::try_from(memory_bytes).unwrap_or(i64::MAX));
        let oc = memory_bytes
            .saturating_mul(100 + u64::from(overcommit_percent))
            .checked_div(100)
            .unwrap_or(memory_bytes);
        capacity_oc
            .get_or_create(&rl)
            .set(i64::try_from(oc).unwrap_or(i64::MAX));
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "seldon_model_infer",
            "Inference requests per model",
            infer_total.clone(),
        );
        registry.register(
            "seldon_model_infer_seconds",
            "Total inference time per model (seconds)",
            infer_seconds.clone(),
        );
        registry.register(
            "seldon_model_aggregate_infer",
            "Inference requests on this replica",
            aggregate_total.clone(),
        );
        registry.register(
            "seldon_model_aggregate_infer_seconds",
            "Total inference time on this replica (seconds)",
            aggregate_seconds.clone(),
        );
        registry.register(
            "seldon_model_infer_api_seconds",
            "Inference API latency",
            api_seconds.clone(),
        );
        registry.register(
            "seldon_loaded_model_gauge",
            "Whether a model version is loaded",
            loaded.clone(),
        );
        registry.register(
            "seldon_loaded_model_memory_bytes_gauge",
            "Memory of loaded model versions",
            loaded_memory.clone(),
        );
        registry.register(
            "seldon_load_model_counter",
            "Model loads",
            load_counter.clone(),
        );
        registry.register(
            "seldon_unload_model_counter",
            "Model unloads",
            unload_counter.clone(),
        );
        registry.register(
            "seldon_server_replica_memory_capacity_bytes_gauge",
            "Memory capacity of the replica",
            capacity,
        );
        registry.register(
            "seldon_server_replica_memory_capacity_overcommit_bytes_gauge",
            "Memory capacity of the replica including overcommit",
            capacity_oc,
        );
        registry.register(
            "coscale_agent_inflight_requests",
            "Requests in flight per model version (the inference lag)",
            inflight_gauge.clone(),
        );
        Arc::new(Self {
            server: server.to_owned(),
            replica: replica.to_string(),
            models: RwLock::new(HashMap::new()),
            versions: RwLock::new(HashMap::new()),
            registry,
            infer_total,
            infer_seconds,
            aggregate_total,
            aggregate_seconds,
            aggregate_handles: Default::default(),
            api_seconds,
            loaded,
            loaded_memory,
            inflight_gauge,
            load_counter,
            unload_counter,
        })
    }

    fn model_labels(&self, internal: &str) -> ModelLabels {
        ModelLabels {
            server: self.server.clone(),
            server_replica: self.replica.clone(),
            model_internal: internal.to_owned(),
        }
    }

    fn replica_labels(&self) -> ReplicaLabels {
        ReplicaLabels {
            server: self.server.clone(),
            server_replica: self.replica.clone(),
        }
    }

    /// A model version was loaded here.
    pub fn model_loaded(&self, name: &str, version: u32, internal: &str, memory_bytes: u64) {
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        models.entry(internal.to_owned()).or_insert_with(|| {
            Arc::new(ModelCounters {
                name: name.to_owned(),
                version,
                internal: internal.to_owned(),
                ..ModelCounters::default()
            })
        });
        drop(models);
        self.versions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .insert(version);
        let l = self.model_labels(internal);
        self.loaded.get_or_create(&l).set(1);
        self.loaded_memory
            .get_or_create(&l)
            .set(i64::try_from(memory_bytes).unwrap_or(i64::MAX));
        self.load_counter
            .get_or_create(&self.replica_labels())
            .inc();
    }

    /// Stops new requests from resolving to a model version; returns its counters so
    /// the caller can wait for the requests in flight.
    pub fn model_unloading(&self, internal: &str) -> Option<Arc<ModelCounters>> {
        let counters = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(internal)
            .cloned()?;
        let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = versions.get_mut(&counters.name) {
            set.remove(&counters.version);
            if set.is_empty() {
                versions.remove(&counters.name);
            }
        }
        Some(counters)
    }

    /// A model version was unloaded.
    pub fn model_unloaded(&self, internal: &str) {
        let removed = self
            .models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(internal);
        if let Some(c) = removed {
            let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
            if let Some(set) = versions.get_mut(&c.name) {
                set.remove(&c.version);
                if set.is_empty() {
                    versions.remove(&c.name);
                }
            }
        }
        let l = self.model_labels(internal);
        self.loaded.get_or_create(&l).set(0);
        self.loaded_memory.get_or_create(&l).set(0);
        self.inflight_gauge.get_or_create(&l).set(0);
        self.unload_counter
            .get_or_create(&self.replica_labels())
            .inc();
    }

    /// The internal name a request addresses: the `seldon-internal-model` header when
    /// that version is loaded here, else the newest loaded version of `model`.
    pub fn resolve(&self, model: &str, internal_header: Option<&str>) -> Option<String> {
        if let Some(h) = internal_header {
            if self
                .models
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(h)
            {
                return Some(h.to_owned());
            }
        }
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        let v = versions.get(model)?.last()?;
        Some(coscale_api::routing::internal_model_name(model, *v))
    }

    /// Every loaded (name, version).
    pub fn loaded(&self) -> Vec<(String, u32)> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| (c.name.clone(), c.version))
            .collect()
    }

    /// Starts tracking a request; None when the model version is not loaded here.
    pub fn begin(self: &Arc<Self>, internal: &str, protocol: Protocol) -> Option<InFlight> {
        let counters = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(internal)
            .cloned()?;
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        counters
            .last_used_millis
            .store(unix_millis(), Ordering::Relaxed);
        Some(InFlight {
            stats: self.clone(),
            counters,
            protocol,
            started: std::time::Instant::now(),
            done: false,
        })
    }

    /// In-flight requests of one model version (0 if unknown).
    pub fn in_flight(&self, internal: &str) -> u32 {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(internal)
            .map(|c| c.in_flight.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// In-flight requests over all models.
    pub fn total_in_flight(&self) -> u32 {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| c.in_flight.load(Ordering::Relaxed))
            .fold(0u32, u32::saturating_add)
    }

    fn record_metrics(&self, c: &ModelCounters, protocol: Protocol, code: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let (agg_total, agg_seconds) = self.aggregate_handles[protocol.index()].get_or_init(|| {
            let labels = AggregateLabels {
                server: self.server.clone(),
                server_replica: self.replica.clone(),
                method_type: protocol.as_str().to_owned(),
            };
            (
                self.aggregate_total.get_or_create(&labels).clone(),
                self.aggregate_seconds.get_or_create(&labels).clone(),
            )
        });
        agg_total.inc();
        agg_seconds.inc_by(secs);
        if code == protocol.ok_code() {
            let h = c.ok_handles[protocol.index()]
                .get_or_init(|| self.infer_handles(c, protocol, code));
            h.total.inc();
            h.seconds.inc_by(secs);
            h.api_seconds.observe(secs);
        } else {
            // Failures are rare and their codes vary: look the series up by label set.
            let h = self.infer_handles(c, protocol, code);
            h.total.inc();
            h.seconds.inc_by(secs);
            h.api_seconds.observe(secs);
        }
    }

    /// The per-model series of one (protocol, code), created if new.
    fn infer_handles(&self, c: &ModelCounters, protocol: Protocol, code: &str) -> InferHandles {
        let labels = InferLabels {
            server: self.server.clone(),
            server_replica: self.replica.clone(),
            model: c.name.clone(),
            model_internal: c.internal.clone(),
            method_type: protocol.as_str().to_owned(),
            code: code.to_owned(),
        };
        let api = ApiLabels {
            server: self.server.clone(),
            server_replica: self.replica.clone(),
            method: protocol.api_method().to_owned(),
            code: code.to_owned(),
        };
        InferHandles {
            total: self.infer_total.get_or_create(&labels).clone(),
            seconds: self.infer_seconds.get_or_create(&labels).clone(),
            api_seconds: self.api_seconds.get_or_create(&api).clone(),
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        for (internal, c) in self.models.read().unwrap_or_else(|p| p.into_inner()).iter() {
            self.inflight_gauge
                .get_or_create(&self.model_labels(internal))
                .set(i64::from(c.in_flight.load(Ordering::Relaxed)));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The message pushed to the control plane.
    pub fn snapshot(&self) -> StatsMsg {
        let models = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| ModelStats {
                model: Some(ModelRef {
                    name: c.name.clone(),
                    version: c.version,
                }),
                in_flight: c.in_flight.load(Ordering::Relaxed),
                requests_total: c.total.load(Ordering::Relaxed),
                requests_failed_total: c.failed.load(Ordering::Relaxed),
                latency_seconds_total: c.latency_micros.load(Ordering::Relaxed) as f64 / 1e6,
                last_used_unix_millis: c.last_used_millis.load(Ordering::Relaxed),
                rest_requests_total: c.rest.load(Ordering::Relaxed),
                grpc_requests_total: c.grpc.load(Ordering::Relaxed),
            })
            .collect();
        StatsMsg {
            unix_millis: unix_millis(),
            models,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_counted_with_seldon_metric_names() {
        let s = Stats::new("mlserver", 1, 1000, 10);
        s.model_loaded("iris", 2, "iris_2", 100);
        let f = s.begin("iris_2", Protocol::Rest).unwrap();
        assert_eq!(s.in_flight("iris_2"), 1);
        f.finish("200", true);
        assert_eq!(s.in_flight("iris_2"), 0);
        let text = s.encode();
        assert!(text.contains("seldon_model_infer_total{server=\"mlserver\",server_replica=\"1\",model=\"iris\",model_internal=\"iris_2\",method_type=\"rest\",code=\"200\"} 1"), "{text}");
        assert!(text.contains("seldon_loaded_model_gauge{server=\"mlserver\",server_replica=\"1\",model_internal=\"iris_2\"} 1"), "{text}");
        assert!(text.contains("seldon_server_replica_memory_capacity_overcommit_bytes_gauge{server=\"mlserver\",server_replica=\"1\"} 1100"), "{text}");
        let snap = s.snapshot();
        assert_eq!(snap.models[0].requests_total, 1);
    }

    #[test]
    fn a_dropped_request_counts_as_failed_and_leaves_no_lag() {
        let s = Stats::new("s", 0, 1, 0);
        s.model_loaded("m", 1, "m_1", 0);
        drop(s.begin("m_1", Protocol::Grpc).unwrap());
        assert_eq!(s.in_flight("m_1"), 0);
        assert_eq!(s.snapshot().models[0].requests_failed_total, 1);
    }

    #[test]
    fn unknown_models_are_not_tracked() {
        let s = Stats::new("s", 0, 1, 0);
        assert!(s.begin("nope_1", Protocol::Rest).is_none());
    }

    #[test]
    fn cached_series_count_like_label_lookups_across_codes_protocols_and_reloads() {
        let s = Stats::new("srv", 0, 1, 0);
        s.model_loaded("m", 1, "m_1", 0);
        for _ in 0..2 {
            s.begin("m_1", Protocol::Rest).unwrap().finish("200", true);
        }
        s.begin("m_1", Protocol::Rest).unwrap().finish("500", false);
        s.begin("m_1", Protocol::Grpc).unwrap().finish("OK", true);
        s.model_unloaded("m_1");
        s.model_loaded("m", 1, "m_1", 0);
        s.begin("m_1", Protocol::Rest).unwrap().finish("200", true);
        let text = s.encode();
        let series = |name: &str, labels: &str, value: &str| {
            let line = format!("{name}{{server=\"srv\",server_replica=\"0\",{labels}}} {value}\n");
            assert!(text.contains(&line), "no `{line}` in\n{text}");
        };
        let model = "model=\"m\",model_internal=\"m_1\"";
        series(
            "seldon_model_infer_total",
            &format!("{model},method_type=\"rest\",code=\"200\""),
            "3",
        );
        series(
            "seldon_model_infer_total",
            &format!("{model},method_type=\"rest\",code=\"500\""),
            "1",
        );
        series(
            "seldon_model_infer_total",
            &format!("{model},method_type=\"grpc\",code=\"OK\""),
            "1",
        );
        series(
            "seldon_model_aggregate_infer_total",
            "method_type=\"rest\"",
            "4",
        );
        series(
            "seldon_model_aggregate_infer_total",
            "method_type=\"grpc\"",
            "1",
        );
        series(
            "seldon_model_infer_api_seconds_count",
            "method=\"POST\",code=\"200\"",
            "3",
        );
        series(
            "seldon_model_infer_api_seconds_count",
            "method=\"grpc\",code=\"OK\"",
            "1",
        );
        assert!(!text.contains("code=\"Cancelled\""), "{text}");
    }
}
