//! Output files: `summary.json`, one SVG per policy (load, model replicas, server
//! replicas and p99 latency over time, four stacked panels) and `report.html` that
//! shows the table and the charts side by side. SVG is written by hand.

use std::fmt::Write as _;
use std::path::Path;

use crate::engine::Sample;
use crate::{Run, Series, Summary};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode the summary: {0}")]
    Json(#[from] serde_json::Error),
}

/// The summary as pretty JSON with a trailing newline.
pub fn summary_json(s: &Summary) -> Result<String, serde_json::Error> {
    Ok(serde_json::to_string_pretty(s)? + "\n")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A file-name-safe form of a policy name.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

const W: f64 = 420.0;
const PANEL_H: f64 = 90.0;
const GAP: f64 = 28.0;
const LEFT: f64 = 52.0;

fn panel(out: &mut String, top: f64, title: &str, xs: &[f64], ys: &[f64], x_max: f64, color: &str) {
    let y_max = ys.iter().copied().fold(0.0, f64::max).max(1e-9);
    let plot_w = W - LEFT - 10.0;
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" font-size="11" font-family="sans-serif">{}  (max {:.3})</text>"##,
        top - 4.0,
        esc(title),
        y_max
    );
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{PANEL_H}" fill="none" stroke="#bbb"/>"##
    );
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end" font-family="sans-serif">{:.3}</text><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end" font-family="sans-serif">0</text>"##,
        LEFT - 3.0,
        top + 9.0,
        y_max,
        LEFT - 3.0,
        top + PANEL_H
    );
    let mut pts = String::new();
    for (x, y) in xs.iter().zip(ys) {
        let px = LEFT + plot_w * x / x_max.max(1e-9);
        let py = top + PANEL_H - PANEL_H * y / y_max;
        let _ = write!(pts, "{px:.1},{py:.1} ");
    }
    let _ = write!(
        out,
        r##"<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{}"/>"##,
        pts.trim_end()
    );
}

/// One policy's chart.
pub fn svg(series: &Series) -> String {
    let s: &[Sample] = &series.samples;
    let xs: Vec<f64> = s.iter().map(|p| p.t_s).collect();
    let x_max = xs.last().copied().unwrap_or(1.0);
    let h = 4.0 * (PANEL_H + GAP) + 24.0;
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="14" font-size="13" font-weight="bold" font-family="sans-serif">{}</text>"##,
        esc(&series.policy)
    );
    let col = |f: fn(&Sample) -> f64| s.iter().map(f).collect::<Vec<f64>>();
    let panels: [(&str, Vec<f64>, &str); 4] = [
        ("load (req/s)", col(|p| p.load_rps), "#1f77b4"),
        (
            "model replicas",
            col(|p| f64::from(p.model_replicas)),
            "#2ca02c",
        ),
        (
            "server replicas",
            col(|p| f64::from(p.server_replicas)),
            "#9467bd",
        ),
        ("p99 latency (ms)", col(|p| p.p99_ms), "#d62728"),
    ];
    for (k, (title, ys, color)) in panels.iter().enumerate() {
        let top = 36.0 + k as f64 * (PANEL_H + GAP);
        panel(&mut out, top, title, &xs, ys, x_max, color);
    }
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end" font-family="sans-serif">t = {x_max:.0} s</text></svg>"##,
        W - 10.0,
        h - 4.0
    );
    out.push('\n');
    out
}

/// The summary as a Markdown table (what `coscale sim` prints).
pub fn markdown(s: &Summary) -> String {
    let mut out = format!(
        "Scenario `{}` (seed {}, {} requests, oracle LB_S {} model replica-s)\n\n\
         | policy | SLO attainment | p50 ms | p99 ms | dropped | timed out | model rep·s | server rep·s | cost vs oracle | scale actions | flaps | time to scale s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        s.scenario, s.seed, s.requests, s.oracle_lower_bound_replica_seconds
    );
    for p in &s.policies {
        let tts = p
            .time_to_scale_s
            .map_or("—".to_string(), |t| format!("{t}"));
        let _ = writeln!(
            out,
            "| {} | {:.4} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} |",
            p.name,
            p.slo_attainment,
            p.p50_ms,
            p.p99_ms,
            p.dropped,
            p.timed_out,
            p.model_replica_seconds,
            p.server_replica_seconds,
            p.cost_vs_oracle,
            p.scale_actions,
            p.flaps,
            tts
        );
    }
    out
}

/// The HTML report: the summary table, then every policy's chart side by side.
pub fn html(run: &Run) -> String {
    let s = &run.summary;
    let mut out = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>coscale sim: {0}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}\
         td:first-child{{text-align:left}}.charts{{display:flex;flex-wrap:wrap;gap:12px}}</style>\
         </head><body><h1>Scenario {0}</h1><p>seed {1}, {2} requests, oracle lower bound \
         {3} model replica-seconds</p><table><tr><th>policy</th><th>SLO attainment</th>\
         <th>p50 ms</th><th>p99 ms</th><th>dropped</th><th>timed out</th><th>model rep·s</th>\
         <th>server rep·s</th><th>cost vs oracle</th><th>scale actions</th><th>flaps</th>\
         <th>time to scale s</th></tr>\n",
        esc(&s.scenario),
        s.seed,
        s.requests,
        s.oracle_lower_bound_replica_seconds
    );
    for p in &s.policies {
        let tts = p
            .time_to_scale_s
            .map_or("—".to_string(), |t| format!("{t}"));
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            p.slo_attainment,
            p.p50_ms,
            p.p99_ms,
            p.dropped,
            p.timed_out,
            p.model_replica_seconds,
            p.server_replica_seconds,
            p.cost_vs_oracle,
            p.scale_actions,
            p.flaps,
            tts
        );
    }
    out.push_str("</table><h2>Over time</h2><div class=\"charts\">\n");
    for series in &run.series {
        let _ = writeln!(
            out,
            "<img src=\"{}.svg\" alt=\"{}\">",
            slug(&series.policy),
            esc(&series.policy)
        );
    }
    out.push_str("</div></body></html>\n");
    out
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// One policy's time series as CSV, one row per sample (the data of its chart).
pub fn csv(series: &Series) -> String {
    let mut out =
        String::from("t_s,load_rps,model_replicas,ready_model_replicas,server_replicas,p99_ms\n");
    for p in &series.samples {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            p.t_s,
            p.load_rps,
            p.model_replicas,
            p.ready_model_replicas,
            p.server_replicas,
            p.p99_ms
        );
    }
    out
}

/// Writes `summary.json`, `<policy>.svg` and `<policy>.csv` (its time series) for each
/// policy and `report.html` into `dir`.
pub fn write_all(run: &Run, dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    write(&dir.join("summary.json"), &summary_json(&run.summary)?)?;
    for series in &run.series {
        write(
            &dir.join(format!("{}.svg", slug(&series.policy))),
            &svg(series),
        )?;
        write(
            &dir.join(format!("{}.csv", slug(&series.policy))),
            &csv(series),
        )?;
    }
    write(&dir.join("report.html"), &html(run))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::PolicySummary;

    fn run() -> Run {
        let sample = |t: f64, load: f64| Sample {
            t_s: t,
            load_rps: load,
            model_replicas: 2,
            ready_model_replicas: 2,
            server_replicas: 1,
            p99_ms: 12.5,
        };
        Run {
            summary: Summary {
                scenario: "s<1>".into(),
                seed: 3,
                requests: 10,
                oracle_lower_bound_replica_seconds: 4.0,
                policies: vec![PolicySummary {
                    name: "hpa/x".into(),
                    slo_attainment: 0.5,
                    p50_ms: 1.0,
                    p99_ms: 2.0,
                    dropped: 0,
                    timed_out: 1,
                    model_replica_seconds: 8.0,
                    server_replica_seconds: 4.0,
                    cost_vs_oracle: 2.0,
                    scale_actions: 3,
                    flaps: 1,
                    time_to_scale_s: None,
                }],
            },
            series: vec![Series {
                policy: "hpa/x".into(),
                samples: vec![sample(0.0, 0.0), sample(10.0, 5.0)],
            }],
        }
    }

    #[test]
    fn charts_draw_one_line_per_panel_scaled_to_the_panel() {
        let svg = svg(&run().series[0]);
        assert_eq!(svg.matches("<polyline").count(), 4);
        // The load panel's line runs from (left, bottom) to (right, top).
        assert!(svg.contains(r#"points="52.0,126.0 410.0,36.0""#), "{svg}");
    }

    #[test]
    fn the_csv_has_a_header_and_one_row_per_sample() {
        assert_eq!(
            csv(&run().series[0]),
            "t_s,load_rps,model_replicas,ready_model_replicas,server_replicas,p99_ms\n\
             0,0,2,2,1,12.5\n10,5,2,2,1,12.5\n"
        );
    }

    #[test]
    fn the_markdown_table_has_one_row_per_policy() {
        let md = markdown(&run().summary);
        assert!(
            md.contains("| hpa/x | 0.5000 | 1.0 | 2.0 | 0 | 1 | 8 | 4 | 2.00 | 3 | 1 | — |\n"),
            "{md}"
        );
    }

    #[test]
    fn the_report_escapes_names_and_links_each_chart() {
        let html = html(&run());
        assert!(html.contains("<h1>Scenario s&lt;1&gt;</h1>"));
        assert!(html.contains("<img src=\"hpa_x.svg\""));
        assert!(html.contains("<td>hpa/x</td><td>0.5000</td>"));
        assert!(html.contains("<td>—</td>"));
    }
}
