//! The `autoscaling/v2` HorizontalPodAutoscaler object: typed fields, the API server's
//! defaults (`SetDefaults_HorizontalPodAutoscaler`) and validation.
//!
//! Unknown fields are rejected everywhere except `metadata` and `status`, and every
//! error names the field path (`spec.metrics[0].object.target`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;

pub const API_VERSION: &str = "autoscaling/v2";
pub const KIND: &str = "HorizontalPodAutoscaler";
/// Target CPU utilization of the metric the API server adds when `spec.metrics` is empty.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;

/// A HorizontalPodAutoscaler object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HorizontalPodAutoscaler {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: HpaMetadata,
    pub spec: HpaSpec,
    /// Kept as written; the algorithm never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// The parts of `metadata` this module reads; everything else is kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HpaMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaSpec {
    pub scale_target_ref: CrossVersionObjectReference,
    /// Defaults to 1.
    #[serde(default = "default_min_replicas")]
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Defaults to one Resource metric: CPU at 80 % utilization.
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<Behavior>,
}

fn default_min_replicas() -> i32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrossVersionObjectReference {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricSourceType {
    Object,
    Pods,
    Resource,
    ContainerResource,
    External,
}

impl std::fmt::Display for MetricSourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Object => "Object",
            Self::Pods => "Pods",
            Self::Resource => "Resource",
            Self::ContainerResource => "ContainerResource",
            Self::External => "External",
        })
    }
}

/// One entry of `spec.metrics`: the member named by `type` must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSpec {
    #[serde(rename = "type")]
    pub type_: MetricSourceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectMetricSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsMetricSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMetricSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_resource: Option<ContainerResourceMetricSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalMetricSource>,
}

impl MetricSpec {
    /// A Resource metric with a Utilization target (the shape of the API default).
    pub fn resource_utilization(name: &str, utilization: i32) -> Self {
        Self {
            type_: MetricSourceType::Resource,
            object: None,
            pods: None,
            resource: Some(ResourceMetricSource {
                name: name.to_string(),
                target: MetricTarget {
                    type_: MetricTargetType::Utilization,
                    value: None,
                    average_value: None,
                    average_utilization: Some(utilization),
                },
            }),
            container_resource: None,
            external: None,
        }
    }

    /// The name shown for this metric: the metric name, or the resource name.
    pub fn display_name(&self) -> String {
        match self.type_ {
            MetricSourceType::Object => self.object.as_ref().map(|o| o.metric.name.clone()),
            MetricSourceType::Pods => self.pods.as_ref().map(|p| p.metric.name.clone()),
            MetricSourceType::Resource => self.resource.as_ref().map(|r| r.name.clone()),
            MetricSourceType::ContainerResource => self
                .container_resource
                .as_ref()
                .map(|c| format!("{} (container {})", c.name, c.container)),
            MetricSourceType::External => self.external.as_ref().map(|e| e.metric.name.clone()),
        }
        .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMetricSource {
    pub described_object: CrossVersionObjectReference,
    pub target: MetricTarget,
    pub metric: MetricIdentifier,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodsMetricSource {
    pub metric: MetricIdentifier,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceMetricSource {
    pub name: String,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerResourceMetricSource {
    pub name: String,
    pub target: MetricTarget,
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalMetricSource {
    pub metric: MetricIdentifier,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricIdentifier {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl std::fmt::Display for LabelSelector {
    /// Kubernetes selector string form: `a=b,c in (x,y),!d`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator.as_str() {
                "In" => format!("{} in ({})", r.key, r.values.join(",")),
                "NotIn" => format!("{} notin ({})", r.key, r.values.join(",")),
                "Exists" => r.key.clone(),
                "DoesNotExist" => format!("!{}", r.key),
                other => format!("{} {other} ({})", r.key, r.values.join(",")),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricTargetType {
    Value,
    AverageValue,
    Utilization,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricTarget {
    #[serde(rename = "type")]
    pub type_: MetricTargetType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behavior {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingRules {
    /// Scale-up defaults to 0; scale-down stays unset and the controller uses its
    /// downscale-stabilization flag (300 s) at reconcile time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<ScalingPolicy>>,
    /// Per-HPA tolerance for this direction (KEP-4951, `HPAConfigurableTolerance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Quantity>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalingPolicyType {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    pub value: i32,
    pub period_seconds: i32,
}

impl ScalingPolicy {
    pub const fn new(type_: ScalingPolicyType, value: i32, period_seconds: i32) -> Self {
        Self {
            type_,
            value,
            period_seconds,
        }
    }
}

/// Default scale-up rules: no stabilization, Max of 4 pods or 100 % per 15 s.
pub fn default_scale_up_rules() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: Some(0),
        select_policy: Some(SelectPolicy::Max),
        policies: Some(vec![
            ScalingPolicy::new(ScalingPolicyType::Pods, 4, 15),
            ScalingPolicy::new(ScalingPolicyType::Percent, 100, 15),
        ]),
        tolerance: None,
    }
}

/// Default scale-down rules: window left to the controller, 100 % per 15 s.
pub fn default_scale_down_rules() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: None,
        select_policy: Some(SelectPolicy::Max),
        policies: Some(vec![ScalingPolicy::new(
            ScalingPolicyType::Percent,
            100,
            15,
        )]),
        tolerance: None,
    }
}

fn fill_rules(rules: &mut Option<ScalingRules>, defaults: ScalingRules) {
    match rules {
        None => *rules = Some(defaults),
        Some(r) => {
            if r.stabilization_window_seconds.is_none() {
                r.stabilization_window_seconds = defaults.stabilization_window_seconds;
            }
            if r.select_policy.is_none() {
                r.select_policy = defaults.select_policy;
            }
            if r.policies.is_none() {
                r.policies = defaults.policies;
            }
        }
    }
}

impl HorizontalPodAutoscaler {
    /// Applies the API server's defaults: `minReplicas` 1 (serde does it), the CPU 80 %
    /// metric when `metrics` is empty, and — only when `behavior` is set — every unset
    /// field of each direction from [`default_scale_up_rules`] / [`default_scale_down_rules`].
    pub fn set_defaults(&mut self) {
        if self.spec.metrics.is_empty() {
            self.spec.metrics = vec![MetricSpec::resource_utilization(
                "cpu",
                DEFAULT_CPU_UTILIZATION,
            )];
        }
        if let Some(b) = &mut self.spec.behavior {
            fill_rules(&mut b.scale_up, default_scale_up_rules());
            fill_rules(&mut b.scale_down, default_scale_down_rules());
        }
    }

    /// `namespace/name` for messages.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or("")
        )
    }

    /// Every problem the API server would reject, with field paths.
    pub fn validate(&self) -> Result<(), HpaError> {
        let mut errs = Vec::new();
        let mut err = |path: String, message: String| errs.push(FieldError { path, message });
        if self.api_version != API_VERSION {
            err(
                "apiVersion".into(),
                format!("must be {API_VERSION:?}, got {:?}", self.api_version),
            );
        }
        if self.kind != KIND {
            err(
                "kind".into(),
                format!("must be {KIND:?}, got {:?}", self.kind),
            );
        }
        let spec = &self.spec;
        if spec.scale_target_ref.kind.is_empty() {
            err(
                "spec.scaleTargetRef.kind".into(),
                "must not be empty".into(),
            );
        }
        if spec.scale_target_ref.name.is_empty() {
            err(
                "spec.scaleTargetRef.name".into(),
                "must not be empty".into(),
            );
        }
        let has_object_or_external = spec.metrics.iter().any(|m| {
            matches!(
                m.type_,
                MetricSourceType::Object | MetricSourceType::External
            )
        });
        if spec.min_replicas < 0 || (spec.min_replicas == 0 && !has_object_or_external) {
            err(
                "spec.minReplicas".into(),
                format!(
                    "must be at least 1 (0 only with an Object or External metric), got {}",
                    spec.min_replicas
                ),
            );
        }
        if spec.max_replicas < 1 {
            err(
                "spec.maxReplicas".into(),
                format!("must be at least 1, got {}", spec.max_replicas),
            );
        }
        if spec.max_replicas < spec.min_replicas {
            err(
                "spec.maxReplicas".into(),
                format!(
                    "must be greater than or equal to minReplicas ({}), got {}",
                    spec.min_replicas, spec.max_replicas
                ),
            );
        }
        for (i, m) in spec.metrics.iter().enumerate() {
            validate_metric(&format!("spec.metrics[{i}]"), m, &mut err);
        }
        if let Some(b) = &spec.behavior {
            for (dir, rules) in [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)] {
                if let Some(r) = rules {
                    validate_rules(&format!("spec.behavior.{dir}"), r, &mut err);
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(HpaError::Invalid(errs))
        }
    }
}

fn validate_metric(path: &str, m: &MetricSpec, err: &mut impl FnMut(String, String)) {
    use MetricTargetType::*;
    let members = [
        ("object", m.object.is_some(), MetricSourceType::Object),
        ("pods", m.pods.is_some(), MetricSourceType::Pods),
        ("resource", m.resource.is_some(), MetricSourceType::Resource),
        (
            "containerResource",
            m.container_resource.is_some(),
            MetricSourceType::ContainerResource,
        ),
        ("external", m.external.is_some(), MetricSourceType::External),
    ];
    for (field, set, ty) in members {
        if set && ty != m.type_ {
            err(
                format!("{path}.{field}"),
                format!("must not be set when type is {}", m.type_),
            );
        }
        if !set && ty == m.type_ {
            err(
                format!("{path}.{field}"),
                format!("must be set when type is {}", m.type_),
            );
        }
    }
    let (member, target, allowed): (&str, Option<&MetricTarget>, &[MetricTargetType]) =
        match m.type_ {
            MetricSourceType::Object => (
                "object",
                m.object.as_ref().map(|o| &o.target),
                &[Value, AverageValue],
            ),
            MetricSourceType::Pods => ("pods", m.pods.as_ref().map(|p| &p.target), &[AverageValue]),
            MetricSourceType::Resource => (
                "resource",
                m.resource.as_ref().map(|r| &r.target),
                &[Utilization, AverageValue],
            ),
            MetricSourceType::ContainerResource => (
                "containerResource",
                m.container_resource.as_ref().map(|r| &r.target),
                &[Utilization, AverageValue],
            ),
            MetricSourceType::External => (
                "external",
                m.external.as_ref().map(|e| &e.target),
                &[Value, AverageValue],
            ),
        };
    let names_ok = match m.type_ {
        MetricSourceType::Object => m.object.as_ref().map(|o| !o.metric.name.is_empty()),
        MetricSourceType::Pods => m.pods.as_ref().map(|o| !o.metric.name.is_empty()),
        MetricSourceType::Resource => m.resource.as_ref().map(|o| !o.name.is_empty()),
        MetricSourceType::ContainerResource => m
            .container_resource
            .as_ref()
            .map(|o| !o.name.is_empty() && !o.container.is_empty()),
        MetricSourceType::External => m.external.as_ref().map(|o| !o.metric.name.is_empty()),
    };
    if names_ok == Some(false) {
        err(
            format!("{path}.{member}"),
            "metric, resource and container names must not be empty".into(),
        );
    }
    let Some(t) = target else { return };
    let tpath = format!("{path}.{member}.target");
    if !allowed.contains(&t.type_) {
        err(
            format!("{tpath}.type"),
            format!(
                "{:?} is not allowed for a {} metric (allowed: {:?})",
                t.type_, m.type_, allowed
            ),
        );
        return;
    }
    let positive = |q: &Option<Quantity>| q.map(|q| q.nanos() > 0);
    let (field, ok) = match t.type_ {
        Value => ("value", positive(&t.value)),
        AverageValue => ("averageValue", positive(&t.average_value)),
        Utilization => ("averageUtilization", t.average_utilization.map(|u| u > 0)),
    };
    match ok {
        None => err(
            format!("{tpath}.{field}"),
            format!("must be set when target type is {:?}", t.type_),
        ),
        Some(false) => err(format!("{tpath}.{field}"), "must be greater than 0".into()),
        Some(true) => {}
    }
}

fn validate_rules(path: &str, r: &ScalingRules, err: &mut impl FnMut(String, String)) {
    if let Some(w) = r.stabilization_window_seconds {
        if !(0..=3600).contains(&w) {
            err(
                format!("{path}.stabilizationWindowSeconds"),
                format!("must be between 0 and 3600, got {w}"),
            );
        }
    }
    if let Some(policies) = &r.policies {
        if policies.is_empty() {
            err(
                format!("{path}.policies"),
                "must specify at least one policy".into(),
            );
        }
        for (i, p) in policies.iter().enumerate() {
            if p.value <= 0 {
                err(
                    format!("{path}.policies[{i}].value"),
                    format!("must be greater than 0, got {}", p.value),
                );
            }
            if !(1..=1800).contains(&p.period_seconds) {
                err(
                    format!("{path}.policies[{i}].periodSeconds"),
                    format!("must be between 1 and 1800, got {}", p.period_seconds),
                );
            }
        }
    }
    if let Some(t) = r.tolerance {
        if t.nanos() < 0 {
            err(
                format!("{path}.tolerance"),
                format!("must be greater than or equal to 0, got {t}"),
            );
        }
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpaError {
    #[error("HorizontalPodAutoscaler is not valid YAML/JSON: {0}")]
    Syntax(String),
    #[error("HorizontalPodAutoscaler field {path}: {message}")]
    Field { path: String, message: String },
    #[error("invalid HorizontalPodAutoscaler: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

/// Deserializes, defaults and validates one HPA from any serde value (YAML or JSON).
pub fn hpa_from_value(value: serde_yaml::Value) -> Result<HorizontalPodAutoscaler, HpaError> {
    let mut hpa: HorizontalPodAutoscaler =
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            HpaError::Field {
                path: if path == "." {
                    "(document)".into()
                } else {
                    path
                },
                message: e.into_inner().to_string(),
            }
        })?;
    hpa.set_defaults();
    hpa.validate()?;
    Ok(hpa)
}

/// Parses one HPA from YAML or JSON text, applies the API defaults and validates it.
pub fn parse_hpa(text: &str) -> Result<HorizontalPodAutoscaler, HpaError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| HpaError::Syntax(e.to_string()))?;
    hpa_from_value(value)
}

/// Parses every `HorizontalPodAutoscaler` document of a multi-document YAML stream;
/// documents of other kinds are skipped.
pub fn parse_hpa_documents(text: &str) -> Result<Vec<HorizontalPodAutoscaler>, HpaError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|e| HpaError::Syntax(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(serde_yaml::Value::as_str) == Some(KIND) {
            out.push(hpa_from_value(value)?);
        }
    }
    Ok(out)
}
