//! The router's Prometheus metrics (prometheus-client), served as text on `GET /metrics`.
//!
//! Label sets are bounded: `model` is a routing-table model name or empty (unknown or invalid
//! names are never used as labels), `protocol` is `rest` or `grpc`, `code` is the HTTP status
//! (REST) or the numeric gRPC code (gRPC, 0 = OK).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// `rest` or `grpc`.
pub type Protocol = &'static str;
/// The REST protocol label.
pub const REST: Protocol = "rest";
/// The gRPC protocol label.
pub const GRPC: Protocol = "grpc";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    protocol: Protocol,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: Protocol,
}

type HistogramFamily = Family<ProtocolLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// All router metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    retries: Counter,
    inflight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let retries = Counter::default();
        let inflight = Gauge::default();
        registry.register(
            "coscale_router_requests",
            "Inference requests answered, by model, protocol and status code",
            requests.clone(),
        );
        registry.register(
            "coscale_router_request_duration_seconds",
            "Time from request arrival to response headers",
            duration.clone(),
        );
        registry.register(
            "coscale_router_retries",
            "Requests retried on another replica after the first failed before or in the middle of its answer",
            retries.clone(),
        );
        registry.register(
            "coscale_router_inflight_requests",
            "Inference requests being handled now",
            inflight.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            retries,
            inflight,
        }
    }
}

impl Metrics {
    /// Counts one request in flight until the returned guard drops.
    pub fn start(&self, protocol: Protocol) -> RequestTimer<'_> {
        self.inflight.inc();
        RequestTimer {
            metrics: self,
            protocol,
            start: Instant::now(),
        }
    }

    /// Counts one retry.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%err, "encoding metrics failed");
        }
        out
    }
}

/// One request being handled: in the in-flight gauge until dropped; [`RequestTimer::finish`]
/// records its outcome and duration.
#[derive(Debug)]
pub struct RequestTimer<'a> {
    metrics: &'a Metrics,
    protocol: Protocol,
    start: Instant,
}

impl RequestTimer<'_> {
    /// Records the answer: `model` must already be bounded (a routing-table name or empty).
    pub fn finish(self, model: &str, code: u16) {
        let labels = RequestLabels {
            model: model.to_owned(),
            protocol: self.protocol,
            code,
        };
        self.metrics.requests.get_or_create(&labels).inc();
        self.metrics
            .duration
            .get_or_create(&ProtocolLabels {
                protocol: self.protocol,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        self.metrics.inflight.dec();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn finished_requests_are_counted_with_their_labels_and_leave_the_inflight_gauge() {
        let metrics = Metrics::default();
        let timer = metrics.start(REST);
        assert!(metrics
            .encode()
            .contains("coscale_router_inflight_requests 1\n"));
        timer.finish("iris", 200);
        metrics.retried();
        let text = metrics.encode();
        assert!(text.contains(
            "coscale_router_requests_total{model=\"iris\",protocol=\"rest\",code=\"200\"} 1\n"
        ));
        assert!(text.contains("coscale_router_retries_total 1\n"));
        assert!(text.contains("coscale_router_inflight_requests 0\n"));
        assert!(
            text.contains("coscale_router_request_duration_seconds_count{protocol=\"rest\"} 1\n")
        );
    }
}
