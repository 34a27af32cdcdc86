//! HorizontalPodAutoscalers in the CLI: the `coscale up` flags of the HPA controller
//! and its metrics source, `coscale get hpa` (the columns of `kubectl get hpa`) and
//! `coscale describe hpa NAME` (conditions and recent decisions).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use coscale_control::hpa_controller::{HpaConfig, HpaStatus};
use coscale_control::prometheus::{AdapterConfig, PrometheusSource};

use crate::client::Client;
use crate::output::{self, Format};

/// HPA controller flags of `coscale up` (kube-controller-manager's, where they exist).
#[derive(Debug, Clone, clap::Args)]
pub struct HpaArgs {
    /// Seconds between two HPA syncs (`--horizontal-pod-autoscaler-sync-period`).
    #[arg(long, env = "COSCALE_HPA_SYNC_PERIOD_SECONDS", default_value_t = 15.0)]
    pub hpa_sync_period_seconds: f64,
    /// Scale-down stabilization window of HPAs without `behavior`
    /// (`--horizontal-pod-autoscaler-downscale-stabilization`).
    #[arg(
        long,
        env = "COSCALE_HPA_DOWNSCALE_STABILIZATION_SECONDS",
        default_value_t = 300.0
    )]
    pub hpa_downscale_stabilization_seconds: f64,
    /// Rate window of the built-in metrics (the adapter rule of the docs uses 2 min).
    #[arg(long, env = "COSCALE_METRICS_WINDOW_SECONDS", default_value_t = 120.0)]
    pub metrics_window_seconds: f64,
    /// Prometheus server to read HPA metrics from (instead of the built-in source).
    #[arg(
        long,
        env = "COSCALE_PROMETHEUS_URL",
        requires = "prometheus_adapter_config"
    )]
    pub prometheus_url: Option<String>,
    /// Prometheus Adapter rules (its config file or ConfigMap), used verbatim.
    #[arg(
        long,
        env = "COSCALE_PROMETHEUS_ADAPTER_CONFIG",
        requires = "prometheus_url"
    )]
    pub prometheus_adapter_config: Option<PathBuf>,
}

impl HpaArgs {
    pub fn config(&self) -> anyhow::Result<HpaConfig> {
        let secs = |name: &str, s: f64| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(s)
                .with_context(|| format!("{name}: {s} is not a duration in seconds"))
        };
        let mut cfg = HpaConfig {
            sync_period: secs(
                "--hpa-sync-period-seconds",
                self.hpa_sync_period_seconds.max(0.05),
            )?,
            metrics_window: secs(
                "--metrics-window-seconds",
                self.metrics_window_seconds.max(1.0),
            )?,
            ..HpaConfig::default()
        };
        cfg.controller.downscale_stabilization = secs(
            "--hpa-downscale-stabilization-seconds",
            self.hpa_downscale_stabilization_seconds,
        )?;
        if let (Some(url), Some(path)) = (&self.prometheus_url, &self.prometheus_adapter_config) {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let rules = AdapterConfig::parse(&path.display().to_string(), &text)?;
            cfg.prometheus = Some(PrometheusSource::new(url, rules));
        }
        Ok(cfg)
    }
}

fn now_millis() -> u64 {
    coscale_control::service::now_millis()
}

/// The columns of `kubectl get hpa`.
pub const HPA_COLUMNS: [&str; 7] = [
    "NAME",
    "REFERENCE",
    "TARGETS",
    "MINPODS",
    "MAXPODS",
    "REPLICAS",
    "AGE",
];

/// The `kubectl get hpa` table.
pub fn hpas_table(hpas: &[HpaStatus]) -> String {
    let now = now_millis();
    let rows: Vec<Vec<String>> = hpas
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.reference.clone(),
                targets_cell(&h.targets),
                h.min_replicas.to_string(),
                h.max_replicas.to_string(),
                h.current_replicas.to_string(),
                output::age(h.created_unix_millis, now),
            ]
        })
        .collect();
    output::table(&HPA_COLUMNS, &rows)
}

/// kubectl shows the first two metrics and `+ N more...`.
fn targets_cell(targets: &[String]) -> String {
    match targets {
        [] => "<none>".to_owned(),
        [a] => a.clone(),
        [a, b] => format!("{a}, {b}"),
        [a, b, rest @ ..] => format!("{a}, {b} + {} more...", rest.len()),
    }
}

/// `describe hpa`: spec summary, conditions, recent decisions, warnings.
pub fn describe_hpa(h: &HpaStatus) -> String {
    let now = now_millis();
    let mut s = String::new();
    s.push_str(&format!("Name:                  {}\n", h.name));
    s.push_str(&format!("Namespace:             {}\n", h.namespace));
    s.push_str(&format!("Reference:             {}\n", h.reference));
    s.push_str("Metrics:               ( current / target )\n");
    for t in &h.targets {
        s.push_str(&format!("  {t}\n"));
    }
    s.push_str(&format!("Min replicas:          {}\n", h.min_replicas));
    s.push_str(&format!("Max replicas:          {}\n", h.max_replicas));
    s.push_str(&format!(
        "Replicas:              {} current / {} desired\n",
        h.current_replicas, h.desired_replicas
    ));
    if let Some(t) = h.last_scale_unix_millis {
        s.push_str(&format!(
            "Last scale:            {} ago\n",
            output::age(t, now)
        ));
    }
    for w in &h.warnings {
        s.push_str(&format!("Warning:               {w}\n"));
    }
    s.push_str("Conditions:\n");
    let rows: Vec<Vec<String>> = h
        .conditions
        .iter()
        .map(|c| {
            vec![
                format!("{:?}", c.type_),
                if c.status { "True" } else { "False" }.to_owned(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    for line in output::table(&["TYPE", "STATUS", "REASON", "MESSAGE"], &rows).lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s.push_str("Recent decisions:\n");
    let rows: Vec<Vec<String>> = h
        .decisions
        .iter()
        .rev()
        .map(|d| {
            vec![
                output::age(d.unix_millis, now),
                d.current_replicas.to_string(),
                d.desired_replicas.to_string(),
                if d.scaled { "yes" } else { "no" }.to_owned(),
                d.metrics.join("; "),
                d.reason.clone(),
            ]
        })
        .collect();
    for line in output::table(
        &["AGE", "CURRENT", "DESIRED", "SCALED", "METRICS", "REASON"],
        &rows,
    )
    .lines()
    {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

pub async fn get(client: &Client, name: Option<&str>, format: Format) -> anyhow::Result<()> {
    let hpas: Vec<HpaStatus> = match name {
        Some(n) => vec![client.get_json(&format!("/api/v1/hpas/{n}")).await?],
        None => client.get_json("/api/v1/hpas").await?,
    };
    output::print(format, &hpas, || hpas_table(&hpas))
}

pub async fn describe(client: &Client, name: &str, format: Format) -> anyhow::Result<()> {
    let h: HpaStatus = client.get_json(&format!("/api/v1/hpas/{name}")).await?;
    output::print(format, &h, || describe_hpa(&h))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn more_than_two_targets_are_summarized_like_kubectl() {
        let t: Vec<String> = ["1/3 (avg)", "2/4", "5/6", "7/8"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(targets_cell(&t), "1/3 (avg), 2/4 + 2 more...");
        assert_eq!(targets_cell(&t[..1]), "1/3 (avg)");
        assert_eq!(targets_cell(&[]), "<none>");
    }
}
