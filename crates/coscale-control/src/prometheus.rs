//! The Prometheus metrics source for HPAs: Prometheus Adapter rule files, read
//! verbatim (the `rules:` file, or the adapter's ConfigMap holding it under
//! `data."config.yaml"`), turned into PromQL the way the adapter does (`<<.Series>>`,
//! `<<.LabelMatchers>>`, `<<.GroupBy>>`) and run against a Prometheus server's HTTP API
//! (`/api/v1/query`).
//!
//! Supported: `seriesQuery` naming the series (`{__name__="x",…}` or `x{…}`),
//! `resources.overrides` (label → resource), `name.matches` / `name.as` as literal names,
//! `metricsQuery` templates. Not supported: regex renames, `resources.template`,
//! `externalRules`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::hpa_controller::{Described, MetricRequest, MetricValues};

#[derive(Debug, thiserror::Error)]
pub enum AdapterConfigError {
    #[error("{path}: not a Prometheus Adapter config: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    series_query: String,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    name: Option<RawName>,
    metrics_query: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawResources {
    #[serde(default)]
    overrides: BTreeMap<String, RawGroupResource>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawGroupResource {
    resource: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RawName {
    #[serde(default)]
    matches: Option<String>,
    #[serde(rename = "as", default)]
    as_: Option<String>,
}

/// One adapter rule, ready to query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The metric name HPAs use (`infer_rps`).
    pub metric: String,
    /// The Prometheus series (`seldon_model_infer_total`).
    pub series: String,
    /// Resource (singular, lower case: `model`, `server`, `pod`, `namespace`) → label.
    pub labels: BTreeMap<String, String>,
    pub metrics_query: String,
}

/// A parsed adapter config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterConfig {
    pub rules: Vec<Rule>,
}

fn singular(resource: &str) -> String {
    let r = resource.to_lowercase();
    let r = r.split('.').next().unwrap_or(&r).to_owned();
    r.strip_suffix('s').map(str::to_owned).unwrap_or(r)
}

fn series_name(query: &str) -> Option<String> {
    let q = query.trim();
    if let Some(pos) = q.find("__name__=\"") {
        let rest = &q[pos + "__name__=\"".len()..];
        return rest.find('"').map(|end| rest[..end].to_owned());
    }
    let name: String = q
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    (!name.is_empty()).then_some(name)
}

impl AdapterConfig {
    /// Reads the rules file or the adapter's ConfigMap (`data."config.yaml"`).
    pub fn parse(path: &str, text: &str) -> Result<Self, AdapterConfigError> {
        let invalid = |message: String| AdapterConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let inner = value
            .get("data")
            .and_then(|d| d.get("config.yaml"))
            .and_then(serde_yaml::Value::as_str);
        let raw: RawConfig = match inner {
            Some(t) => serde_yaml::from_str(t).map_err(|e| invalid(format!("config.yaml: {e}")))?,
            None => serde_yaml::from_value(value).map_err(|e| invalid(e.to_string()))?,
        };
        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let series = series_name(&r.series_query)
                .or_else(|| r.name.as_ref().and_then(|n| n.matches.clone()))
                .ok_or_else(|| {
                    invalid(format!(
                        "rules[{i}].seriesQuery: cannot tell the series name from {:?}",
                        r.series_query
                    ))
                })?;
            let metric = r
                .name
                .as_ref()
                .and_then(|n| n.as_.clone().or_else(|| n.matches.clone()))
                .unwrap_or_else(|| series.clone());
            let labels = r
                .resources
                .overrides
                .into_iter()
                .map(|(label, gr)| (singular(&gr.resource), label))
                .collect();
            rules.push(Rule {
                metric,
                series,
                labels,
                metrics_query: r.metrics_query,
            });
        }
        if rules.is_empty() {
            return Err(invalid("no rules".to_owned()));
        }
        Ok(Self { rules })
    }

    /// The PromQL for a request and the label whose value names the object, or why
    /// there is none.
    pub fn promql(&self, req: &MetricRequest) -> Result<(String, String, String), String> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.metric == req.metric)
            .ok_or_else(|| format!("no adapter rule serves metric {:?}", req.metric))?;
        let (resource, object) = match &req.described {
            Described::Model(n) => ("model", n.clone()),
            Described::Server(n) => ("server", n.clone()),
            Described::Pod(n) => ("pod", n.clone()),
            Described::Namespace => ("namespace", req.namespace.clone()),
        };
        let label = rule.labels.get(resource).ok_or_else(|| {
            format!(
                "the adapter rule of {:?} maps no label to resource {resource:?}",
                req.metric
            )
        })?;
        let mut matchers = vec![format!("{label}=\"{}\"", escape(&object))];
        if let Some(ns) = rule.labels.get("namespace").filter(|l| *l != label) {
            matchers.push(format!("{ns}=\"{}\"", escape(&req.namespace)));
        }
        for (k, v) in &req.selector {
            matchers.push(format!("{k}=\"{}\"", escape(v)));
        }
        let query = rule
            .metrics_query
            .replace("<<.Series>>", &rule.series)
            .replace("<<.LabelMatchers>>", &matchers.join(","))
            .replace("<<.GroupBy>>", label);
        Ok((query, label.clone(), object))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

#[derive(Debug, Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: Vec<VectorSample>,
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// A Prometheus server and the adapter rules to query it with.
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    pub url: String,
    pub config: AdapterConfig,
    client: reqwest::Client,
}

impl PrometheusSource {
    pub fn new(url: &str, config: AdapterConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            url: url.trim_end_matches('/').to_owned(),
            config,
            client,
        }
    }

    /// Runs an instant query; returns the value of the sample whose `label` is `object`.
    pub async fn value(&self, req: &MetricRequest) -> Result<f64, String> {
        let (query, label, object) = self.config.promql(req)?;
        let resp = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query.as_str())])
            .send()
            .await
            .map_err(|e| format!("Prometheus {}: {e}", self.url))?;
        let body: QueryResponse = resp
            .json()
            .await
            .map_err(|e| format!("Prometheus {}: unreadable answer: {e}", self.url))?;
        if body.status != "success" {
            return Err(format!(
                "Prometheus query {query:?} failed: {}",
                body.error.unwrap_or_default()
            ));
        }
        let data = body.data.ok_or("Prometheus answer without data")?;
        if data.result_type != "vector" {
            return Err(format!(
                "Prometheus query {query:?} returned a {}, not a vector",
                data.result_type
            ));
        }
        let sample = data
            .result
            .iter()
            .find(|s| s.metric.get(&label) == Some(&object))
            .or_else(|| data.result.first().filter(|_| data.result.len() == 1))
            .ok_or_else(|| format!("no data from Prometheus for {query}"))?;
        sample
            .value
            .1
            .parse::<f64>()
            .map_err(|e| format!("Prometheus value {:?}: {e}", sample.value.1))
    }

    /// Answers every request (one query each).
    pub async fn values(&self, requests: &[MetricRequest]) -> MetricValues {
        let mut out = MetricValues::new();
        for r in requests {
            out.insert(r.clone(), self.value(r).await);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn fixture() -> AdapterConfig {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/hpa/prometheus-adapter-config.yaml"
        );
        AdapterConfig::parse(path, &std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn request(described: Described, selector: &[(&str, &str)]) -> MetricRequest {
        MetricRequest {
            metric: "infer_rps".to_owned(),
            namespace: "seldon-mesh".to_owned(),
            described,
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn the_adapter_configmap_of_the_docs_is_read_verbatim() {
        let c = fixture();
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].metric, "infer_rps");
        assert_eq!(c.rules[0].series, "seldon_model_infer_total");
        assert_eq!(c.rules[0].labels["model"], "model");
        assert_eq!(c.rules[0].labels["pod"], "pod");
    }

    #[test]
    fn a_model_object_metric_becomes_the_adapters_promql() {
        let (q, label, object) = fixture()
            .promql(&request(
                Described::Model("irisa0".into()),
                &[("method_type", "rest")],
            ))
            .unwrap();
        let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            q,
            "sum by (model) ( rate ( seldon_model_infer_total{model=\"irisa0\",namespace=\"seldon-mesh\",method_type=\"rest\"}[2m] ) )"
        );
        assert_eq!((label.as_str(), object.as_str()), ("model", "irisa0"));
    }

    #[test]
    fn unknown_metrics_and_unmapped_resources_are_explained() {
        let c = fixture();
        let mut r = request(Described::Model("m".into()), &[]);
        r.metric = "cpu".into();
        assert!(c.promql(&r).unwrap_err().contains("no adapter rule"));
        let bad = AdapterConfig::parse("x.yaml", "rules: []\n").unwrap_err();
        assert!(bad.to_string().contains("x.yaml"));
    }
}
