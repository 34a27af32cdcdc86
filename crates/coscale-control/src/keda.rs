//! KEDA external scaler (`externalscaler.ExternalScaler`, `--keda-scaler-addr`): lets
//! a `ScaledObject` drive a Model or a Server from coscale's built-in metrics, for
//! clusters whose custom-metrics API slot is taken by another adapter.
//!
//! ScaledObject trigger metadata (`type: external`):
//!
//! | key | meaning |
//! |---|---|
//! | `model` or `server` | the object whose metric is read (exactly one) |
//! | `metric` | `infer_rps` (default), `infer_lag`, `infer_in_flight`, `infer_failed_rps`, `infer_latency_seconds` |
//! | `target` | target value per replica (KEDA uses it as an `AverageValue`), required |
//! | `activationTarget` | active when the value is above this (default 0) |
//! | `metricSelector` | metric labels, `method_type=rest,...` (optional) |
//! | `source` | `builtin` or `prometheus` (default: the configured source) |
//! | `namespace` | overrides the ScaledObject's namespace (optional) |
//!
//! Values come from [`crate::custom_metrics::object_values`], the same computation the
//! custom metrics API serves.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::Duration;

use coscale_api::pb::externalscaler::external_scaler_server::{
    ExternalScaler, ExternalScalerServer,
};
use coscale_api::pb::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::custom_metrics::{object_values, ObjectKind, Objects};
use crate::hpa_controller::Source;
use crate::metrics_store::MetricName;
use crate::service::ControlPlane;

/// How often `StreamIsActive` re-evaluates activity.
pub const STREAM_PERIOD: Duration = Duration::from_secs(1);

/// A ScaledObject's trigger metadata, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub namespace: String,
    pub kind: ObjectKind,
    pub name: String,
    pub metric: String,
    pub target: f64,
    pub activation_target: f64,
    pub metric_selector: BTreeMap<String, String>,
    pub source: Source,
}

fn number(meta: &HashMap<String, String>, key: &str) -> Result<Option<f64>, Status> {
    let Some(text) = meta.get(key) else {
        return Ok(None);
    };
    let v: f64 = text.trim().parse().map_err(|_| {
        Status::invalid_argument(format!("scalerMetadata.{key}: {text:?} is not a number"))
    })?;
    if !v.is_finite() || v < 0.0 {
        return Err(Status::invalid_argument(format!(
            "scalerMetadata.{key}: {text:?} must be a finite number >= 0"
        )));
    }
    Ok(Some(v))
}

impl Trigger {
    /// Reads the trigger from a ScaledObject reference; errors name the key.
    pub fn parse(r: &ScaledObjectRef) -> Result<Self, Status> {
        let meta = &r.scaler_metadata;
        let (kind, name) = match (meta.get("model"), meta.get("server")) {
            (Some(m), None) => (ObjectKind::Model, m.clone()),
            (None, Some(s)) => (ObjectKind::Server, s.clone()),
            (Some(_), Some(_)) => {
                return Err(Status::invalid_argument(
                    "scalerMetadata: set either model or server, not both",
                ))
            }
            (None, None) => {
                return Err(Status::invalid_argument(format!(
                    "ScaledObject {}/{}: scalerMetadata needs model: NAME or server: NAME",
                    r.namespace, r.name
                )))
            }
        };
        if name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "scalerMetadata: the object name is empty",
            ));
        }
        let metric = meta
            .get("metric")
            .cloned()
            .unwrap_or_else(|| "infer_rps".to_owned());
        if MetricName::parse(&metric).is_none() {
            let known: Vec<&str> = MetricName::ALL.iter().map(|(n, _)| *n).collect();
            return Err(Status::invalid_argument(format!(
                "scalerMetadata.metric: {metric:?} is not one of {}",
                known.join(", ")
            )));
        }
        let target = number(meta, "target")?.ok_or_else(|| {
            Status::invalid_argument("scalerMetadata.target is required (value per replica)")
        })?;
        if target <= 0.0 {
            return Err(Status::invalid_argument(
                "scalerMetadata.target must be > 0",
            ));
        }
        let activation_target = number(meta, "activationTarget")?.unwrap_or(0.0);
        let mut metric_selector = BTreeMap::new();
        if let Some(sel) = meta.get("metricSelector") {
            for part in sel.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) = part.split_once('=').ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "scalerMetadata.metricSelector: {part:?} is not key=value"
                    ))
                })?;
                metric_selector.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        let source = match meta.get("source").map(String::as_str) {
            None | Some("") => Source::Configured,
            Some("builtin") => Source::Builtin,
            Some("prometheus") => Source::Prometheus,
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "scalerMetadata.source: {other:?} is not builtin or prometheus"
                )))
            }
        };
        let namespace = meta
            .get("namespace")
            .cloned()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| r.namespace.clone());
        Ok(Self {
            namespace,
            kind,
            name,
            metric,
            target,
            activation_target,
            metric_selector,
            source,
        })
    }

    /// The metric name reported to KEDA (unique per object and metric).
    pub fn metric_name(&self) -> String {
        let kind = match self.kind {
            ObjectKind::Model => "model",
            ObjectKind::Server => "server",
            ObjectKind::Pod => "pod",
        };
        format!("coscale-{kind}-{}-{}", self.name, self.metric)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }

    /// The current value of the trigger's metric.
    pub async fn value(&self, cp: &ControlPlane) -> Result<f64, Status> {
        let items = object_values(
            cp,
            &self.namespace,
            &Objects::Named(self.kind, self.name.clone()),
            &self.metric,
            self.metric_selector.clone(),
            self.source,
        )
        .await
        .map_err(|e| Status::not_found(e.message))?;
        items
            .first()
            .map(|v| v.value)
            .ok_or_else(|| Status::not_found(format!("no value of {}", self.metric)))
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct KedaScaler {
    cp: ControlPlane,
}

/// The gRPC service of `--keda-scaler-addr`.
pub fn service(cp: ControlPlane) -> ExternalScalerServer<KedaScaler> {
    ExternalScalerServer::new(KedaScaler { cp })
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for KedaScaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let t = Trigger::parse(request.get_ref())?;
        let v = t.value(&self.cp).await?;
        Ok(Response::new(IsActiveResponse {
            result: v > t.activation_target,
        }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let t = Trigger::parse(request.get_ref())?;
        let cp = self.cp.clone();
        // the first answer, then every change; an error ends the stream (KEDA reopens it)
        let stream = futures::stream::unfold(Some((cp, t, None::<bool>)), |state| async move {
            let (cp, t, last) = state?;
            loop {
                if last.is_some() {
                    tokio::time::sleep(STREAM_PERIOD).await;
                }
                let now = match t.value(&cp).await {
                    Ok(v) => v > t.activation_target,
                    Err(e) => return Some((Err(e), None)),
                };
                if last != Some(now) {
                    let answer = IsActiveResponse { result: now };
                    return Some((Ok(answer), Some((cp, t, Some(now)))));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let t = Trigger::parse(request.get_ref())?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: t.metric_name(),
                target_size: t.target.ceil() as i64,
                target_size_float: t.target,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let req = request.into_inner();
        let r = req
            .scaled_object_ref
            .ok_or_else(|| Status::invalid_argument("GetMetrics: scaledObjectRef is missing"))?;
        let t = Trigger::parse(&r)?;
        let v = t.value(&self.cp).await?;
        let name = if req.metric_name.is_empty() {
            t.metric_name()
        } else {
            req.metric_name
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: name,
                metric_value: v.round() as i64,
                metric_value_float: v,
            }],
        }))
    }
}
