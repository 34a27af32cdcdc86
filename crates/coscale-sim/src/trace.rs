//! Request traces: what arrives, when, for which model.
//!
//! A [`Trace`] is a time-sorted list of [`Request`]s in integer microseconds. It comes
//! from a CSV file (`time_s,model[,service_ms]`, one row per request), from an Azure
//! LLM inference trace (`TIMESTAMP,ContextTokens,GeneratedTokens`, mapped onto one
//! model with a rate multiplier), or from the generators of `benchmarks.md`:
//! constant, Poisson and Gamma (given CV) renewal arrivals under a rate shape (flat,
//! steps, diurnal cycle), on/off bursts, and a many-model fleet with log-normal
//! popularity.

use std::path::Path;

use crate::rng::Rng;

/// Microseconds of virtual time.
pub type Micros = u64;

pub const MICROS_PER_SEC: f64 = 1_000_000.0;

/// Seconds to microseconds (negative and NaN become 0).
pub fn micros(secs: f64) -> Micros {
    if secs.is_finite() && secs > 0.0 {
        (secs * MICROS_PER_SEC).round() as Micros
    } else {
        0
    }
}

/// One request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub time: Micros,
    pub model: u32,
    /// Service time taken from the trace; `None` draws from the model's distribution.
    pub service: Option<u32>,
}

/// Requests sorted by time (then model, for a total order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub requests: Vec<Request>,
}

impl Trace {
    pub fn from_requests(mut requests: Vec<Request>) -> Self {
        requests.sort_by_key(|r| (r.time, r.model));
        Self { requests }
    }

    /// Merges several traces.
    pub fn merge(parts: Vec<Trace>) -> Self {
        let total = parts.iter().map(|t| t.requests.len()).sum();
        let mut all = Vec::with_capacity(total);
        for p in parts {
            all.extend(p.requests);
        }
        Self::from_requests(all)
    }

    /// Drops requests at or after `end`.
    pub fn truncate(&mut self, end: Micros) {
        let keep = self.requests.partition_point(|r| r.time < end);
        self.requests.truncate(keep);
    }
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Row {
        path: String,
        line: usize,
        message: String,
    },
}

fn row_err(path: &Path, line: usize, message: impl Into<String>) -> TraceError {
    TraceError::Row {
        path: path.display().to_string(),
        line,
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<String, TraceError> {
    std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads `time_s,model[,service_ms]` rows. A first row whose first field is not a
/// number is a header. `model` maps names to model indices (`None` = unknown model).
pub fn read_csv(path: &Path, model: &dyn Fn(&str) -> Option<u32>) -> Result<Trace, TraceError> {
    let text = read(path)?;
    parse_csv(&text, path, model)
}

/// [`read_csv`] on text already read (`path` is only used in messages).
pub fn parse_csv(
    text: &str,
    path: &Path,
    model: &dyn Fn(&str) -> Option<u32>,
) -> Result<Trace, TraceError> {
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(',').map(str::trim);
        let first = fields.next().unwrap_or("");
        let time: f64 = match first.parse() {
            Ok(t) => t,
            Err(_) if i == 0 => continue,
            Err(_) => {
                return Err(row_err(
                    path,
                    line_no,
                    format!("time_s {first:?} is not a number"),
                ))
            }
        };
        if !time.is_finite() || time < 0.0 {
            return Err(row_err(path, line_no, format!("time_s {time} must be ≥ 0")));
        }
        let name = fields
            .next()
            .ok_or_else(|| row_err(path, line_no, "missing the model column"))?;
        let m = model(name).ok_or_else(|| {
            row_err(
                path,
                line_no,
                format!("model {name:?} is not in the scenario"),
            )
        })?;
        let service = match fields.next() {
            None | Some("") => None,
            Some(s) => {
                let ms: f64 = s.parse().map_err(|_| {
                    row_err(path, line_no, format!("service_ms {s:?} is not a number"))
                })?;
                if !ms.is_finite() || ms < 0.0 {
                    return Err(row_err(
                        path,
                        line_no,
                        format!("service_ms {ms} must be ≥ 0"),
                    ));
                }
                Some(u32::try_from(micros(ms / 1000.0)).unwrap_or(u32::MAX))
            }
        };
        requests.push(Request {
            time: micros(time),
            model: m,
            service,
        });
    }
    Ok(Trace::from_requests(requests))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fraction]` into seconds since the Unix epoch.
fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let h: f64 = t.next()?.parse().ok()?;
    let mi: f64 = t.next()?.parse().ok()?;
    let se: f64 = t.next()?.parse().ok()?;
    Some(days_from_civil(y, mo, da) as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + se)
}

/// Reads an Azure LLM inference trace (`TIMESTAMP,ContextTokens,GeneratedTokens`) as
/// requests to `model`, starting at `start` (the first row arrives at `start`), with
/// time compressed by `rate_multiplier` (2 = twice the request rate).
pub fn read_azure(
    path: &Path,
    model: u32,
    rate_multiplier: f64,
    start: Micros,
) -> Result<Trace, TraceError> {
    let text = read(path)?;
    parse_azure(&text, path, model, rate_multiplier, start)
}

/// [`read_azure`] on text already read.
pub fn parse_azure(
    text: &str,
    path: &Path,
    model: u32,
    rate_multiplier: f64,
    start: Micros,
) -> Result<Trace, TraceError> {
    if !(rate_multiplier.is_finite() && rate_multiplier > 0.0) {
        return Err(row_err(
            path,
            0,
            format!("rate multiplier {rate_multiplier} must be > 0"),
        ));
    }
    let mut first: Option<f64> = None;
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("TIMESTAMP")) {
            continue;
        }
        let ts = line.split(',').next().unwrap_or("");
        let secs = parse_timestamp(ts).ok_or_else(|| {
            row_err(
                path,
                i + 1,
                format!("TIMESTAMP {ts:?} is not YYYY-MM-DD HH:MM:SS.f"),
            )
        })?;
        let origin = *first.get_or_insert(secs);
        let offset = (secs - origin).max(0.0) / rate_multiplier;
        requests.push(Request {
            time: start + micros(offset),
            model,
            service: None,
        });
    }
    Ok(Trace::from_requests(requests))
}

/// How the base rate changes over time (a multiplier of the rate).
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Flat,
    /// `factor` from `at` until `until` (or the end), 1 elsewhere.
    Step {
        at: f64,
        factor: f64,
        until: Option<f64>,
    },
    /// `1 + amplitude·sin(2πt/period)`.
    Diurnal {
        period: f64,
        amplitude: f64,
    },
}

impl Shape {
    /// The multiplier at `t` seconds.
    pub fn factor(&self, t: f64) -> f64 {
        match *self {
            Shape::Flat => 1.0,
            Shape::Step { at, factor, until } => {
                if t >= at && until.is_none_or(|u| t < u) {
                    factor
                } else {
                    1.0
                }
            }
            Shape::Diurnal { period, amplitude } => {
                (1.0 + amplitude * (std::f64::consts::TAU * t / period).sin()).max(0.0)
            }
        }
    }

    /// The next time after `t` at which the factor jumps (steps only).
    fn next_jump(&self, t: f64) -> Option<f64> {
        match *self {
            Shape::Step { at, until, .. } => {
                [Some(at), until].into_iter().flatten().find(|&x| x > t)
            }
            _ => None,
        }
    }
}

/// A renewal process whose inter-arrival times have mean `1/(rate·shape(t))` and the
/// given CV (0 = periodic with a random phase, 1 = Poisson, else Gamma), for one model
/// over `[0, duration)` seconds. At a step the next gap is redrawn at the new rate.
pub fn renewal(
    rng: &mut Rng,
    model: u32,
    rate: f64,
    cv: f64,
    shape: &Shape,
    duration: f64,
    out: &mut Vec<Request>,
) {
    if !rate.is_finite() || rate <= 0.0 {
        return;
    }
    // A periodic process starts at a random phase; others start fresh at 0.
    let mut t = if cv <= 0.0 {
        rng.uniform() / (rate * shape.factor(0.0)).max(1e-12)
    } else {
        rng.unit_mean(cv) / (rate * shape.factor(0.0)).max(1e-12)
    };
    while t < duration {
        out.push(Request {
            time: micros(t),
            model,
            service: None,
        });
        let r = rate * shape.factor(t);
        let gap = rng.unit_mean(cv);
        let next = if r > 0.0 { t + gap / r } else { f64::INFINITY };
        t = match shape.next_jump(t) {
            Some(j) if next > j => {
                // Memoryless restart at the jump: the rest of the gap runs at the new rate.
                let r2 = rate * shape.factor(j);
                if r2 > 0.0 {
                    j + (next - j) * r / r2
                } else {
                    shape.next_jump(j).unwrap_or(f64::INFINITY)
                }
            }
            _ => next,
        };
    }
}

/// On/off bursts: ON and OFF periods log-normal with medians `on_s`/`off_s` and log
/// standard deviation `sigma`; Poisson arrivals at `rate·shape(t)` while ON.
#[allow(clippy::too_many_arguments)]
pub fn on_off(
    rng: &mut Rng,
    model: u32,
    rate: f64,
    on_s: f64,
    off_s: f64,
    sigma: f64,
    shape: &Shape,
    duration: f64,
    out: &mut Vec<Request>,
) {
    let mut t = 0.0;
    let mut on = true;
    while t < duration {
        let median = if on { on_s } else { off_s };
        let len = rng.lognormal(median.max(1e-9).ln(), sigma);
        let end = (t + len).min(duration);
        if on {
            let mut s = t;
            loop {
                let r = rate * shape.factor(s);
                if r <= 0.0 {
                    break;
                }
                s += rng.exponential(1.0 / r);
                if s >= end {
                    break;
                }
                out.push(Request {
                    time: micros(s),
                    model,
                    service: None,
                });
            }
        }
        t = end;
        on = !on;
    }
}

/// The "no timers" inter-arrival CV distribution of Azure Functions 2019
/// (`benchmarks.md` §1.2: P(CV≤1) ≈ 0.36, ≤2 ≈ 0.55, ≤4 ≈ 0.76, ≤8 ≈ 0.88), linear
/// between those points and up to CV 16 at 1.
pub fn azure_cv(u: f64) -> f64 {
    const POINTS: [(f64, f64); 6] = [
        (0.0, 0.0),
        (0.36, 1.0),
        (0.55, 2.0),
        (0.76, 4.0),
        (0.88, 8.0),
        (1.0, 16.0),
    ];
    for w in POINTS.windows(2) {
        let ((p0, c0), (p1, c1)) = (w[0], w[1]);
        if u <= p1 {
            return c0 + (c1 - c0) * (u - p0) / (p1 - p0);
        }
    }
    16.0
}

/// Parameters of a many-model fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// Models of the fleet (indices), in popularity-draw order.
    pub models: Vec<u32>,
    /// Total request rate across the fleet (req/s) before the shape.
    pub total_rate: f64,
    /// Log-normal popularity: ln(requests/day) ~ N(mu, sigma).
    pub mu: f64,
    pub sigma: f64,
    /// Share of models with periodic arrivals (CV 0); the rest draw CV from [`azure_cv`].
    pub periodic_fraction: f64,
}

/// Per-model (rate, cv) of a fleet, rescaled so the rates sum to `total_rate`.
pub fn fleet_rates(rng: &mut Rng, fleet: &Fleet) -> Vec<(f64, f64)> {
    let raw: Vec<(f64, f64)> = fleet
        .models
        .iter()
        .map(|_| {
            let w = rng.lognormal(fleet.mu, fleet.sigma);
            let cv = if rng.uniform() < fleet.periodic_fraction {
                0.0
            } else {
                azure_cv(rng.uniform())
            };
            (w, cv)
        })
        .collect();
    let sum: f64 = raw.iter().map(|r| r.0).sum();
    raw.into_iter()
        .map(|(w, cv)| {
            (
                if sum > 0.0 {
                    fleet.total_rate * w / sum
                } else {
                    0.0
                },
                cv,
            )
        })
        .collect()
}

/// Generates a fleet's requests.
pub fn fleet(rng: &mut Rng, fleet: &Fleet, shape: &Shape, duration: f64, out: &mut Vec<Request>) {
    let rates = fleet_rates(rng, fleet);
    for (&m, &(rate, cv)) in fleet.models.iter().zip(&rates) {
        renewal(rng, m, rate, cv, shape, duration, out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn one(name: &str) -> Option<u32> {
        (name == "a").then_some(0)
    }

    #[test]
    fn csv_rows_become_sorted_requests_with_optional_service_times() {
        let t = parse_csv(
            "time_s,model,service_ms\n2.5,a,10\n1,a\n",
            Path::new("t.csv"),
            &one,
        )
        .unwrap();
        assert_eq!(
            t.requests,
            vec![
                Request {
                    time: 1_000_000,
                    model: 0,
                    service: None
                },
                Request {
                    time: 2_500_000,
                    model: 0,
                    service: Some(10_000)
                },
            ]
        );
    }

    #[test]
    fn csv_errors_name_the_file_and_line() {
        let e = parse_csv("1,a\n2,b\n", Path::new("t.csv"), &one).unwrap_err();
        assert_eq!(e.to_string(), "t.csv:2: model \"b\" is not in the scenario");
        let e = parse_csv("1,a\nx,a\n", Path::new("t.csv"), &one).unwrap_err();
        assert!(e.to_string().starts_with("t.csv:2: time_s"), "{e}");
    }

    #[test]
    fn azure_rows_are_offsets_from_the_first_row_divided_by_the_multiplier() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 23:59:59.5,1,1\n2023-11-17 00:00:01.5000000,1,1\n";
        let t = parse_azure(text, Path::new("az.csv"), 3, 2.0, 10).unwrap();
        let times: Vec<Micros> = t.requests.iter().map(|r| r.time).collect();
        assert_eq!(times, vec![10, 10 + 1_000_000]);
        assert!(t.requests.iter().all(|r| r.model == 3));
    }

    #[test]
    fn poisson_renewal_has_the_requested_rate_and_a_step_multiplies_it() {
        let mut rng = Rng::new(5);
        let mut out = Vec::new();
        let shape = Shape::Step {
            at: 1000.0,
            factor: 4.0,
            until: None,
        };
        renewal(&mut rng, 0, 50.0, 1.0, &shape, 2000.0, &mut out);
        let before = out.iter().filter(|r| r.time < micros(1000.0)).count() as f64;
        let after = out.len() as f64 - before;
        assert!((before / 1000.0 - 50.0).abs() < 1.5, "{before}");
        assert!((after / 1000.0 - 200.0).abs() < 3.0, "{after}");
    }

    #[test]
    fn fleet_rates_sum_to_the_total_and_are_long_tailed() {
        let f = Fleet {
            models: (0..500).collect(),
            total_rate: 200.0,
            mu: 3.7,
            sigma: 4.1,
            periodic_fraction: 0.2,
        };
        let rates = fleet_rates(&mut Rng::new(1), &f);
        let sum: f64 = rates.iter().map(|r| r.0).sum();
        assert!((sum - 200.0).abs() < 1e-6);
        let mut sorted: Vec<f64> = rates.iter().map(|r| r.0).collect();
        sorted.sort_by(f64::total_cmp);
        let top = sorted[sorted.len() - 5..].iter().sum::<f64>();
        assert!(
            top > 0.5 * 200.0,
            "the top 1% of models carry most traffic: {top}"
        );
    }
}
