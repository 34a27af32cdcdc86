//! The clairvoyant oracle of `benchmarks.md` §3.5.
//!
//! Demand: r_m(w) = ceil(λ_m(w) / μ_m) per window w of Δ seconds, where λ_m(w) is the
//! model's real arrival rate in that window (the oracle knows the trace) and μ_m the
//! largest per-replica rate at which the replica still meets the SLO at the 99th
//! percentile ([`replica_capacity`], M/M/c with the model's slots).
//!
//! LB_S: each demand level k is on when r_m(w) ≥ k; a level keeps its replica through
//! an off-gap no longer than the start-up S (paying the gap) and otherwise pays S per
//! (re)start. Summed over levels this is the exact offline optimum, the denominator of
//! `cost_vs_oracle`.
//!
//! As a policy the oracle runs that plan: the levels it keeps at window w are asked
//! for `lead` seconds before w starts (model load plus server start-up), and held to
//! the end of w.

use super::{ModelView, Policy};
use crate::scenario::ModelSpec;
use crate::trace::{Trace, MICROS_PER_SEC};

/// Erlang C: the probability that an arrival waits in an M/M/c queue with offered load
/// `a = λ/μ` (erlangs) and `c` servers. 1 when `a ≥ c`.
pub fn erlang_c(c: u32, a: f64) -> f64 {
    if a >= f64::from(c) {
        return 1.0;
    }
    if a <= 0.0 {
        return 0.0;
    }
    // Erlang B by recursion, then C = B / (1 - ρ(1 - B)).
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (f64::from(k) + a * b);
    }
    let rho = a / f64::from(c);
    b / (1.0 - rho * (1.0 - b))
}

/// P(wait > t) in M/M/c with arrival rate `lambda`, mean service `s`, `c` servers.
pub fn wait_tail(c: u32, lambda: f64, s: f64, t: f64) -> f64 {
    let mu = 1.0 / s;
    let a = lambda * s;
    if a >= f64::from(c) {
        return 1.0;
    }
    erlang_c(c, a) * (-(f64::from(c) * mu - lambda) * t).exp()
}

/// Mean wait in M/M/c.
pub fn mean_wait(c: u32, lambda: f64, s: f64) -> f64 {
    let a = lambda * s;
    if a >= f64::from(c) {
        return f64::INFINITY;
    }
    erlang_c(c, a) / (f64::from(c) / s - lambda)
}

/// μ: the largest rate one replica takes while P(wait > SLO − mean service) ≤ 1 %
/// (at least 5 % of the saturation rate so a tight SLO still yields a capacity).
pub fn replica_capacity(m: &ModelSpec, slo_s: f64) -> f64 {
    let c = m.slots;
    let s = m.service_mean_s;
    let sat = f64::from(c) / s;
    let budget = (slo_s - s).max(0.0);
    let (mut lo, mut hi) = (0.0_f64, sat);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if wait_tail(c, mid, s, budget) <= 0.01 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo.max(0.05 * sat)
}

/// The oracle's view of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    /// Replicas needed per window.
    pub need: Vec<u32>,
    /// Levels kept (on or bridged) per window.
    pub keep: Vec<u32>,
    /// The model's request rate per window (req/s).
    pub rates: Vec<f32>,
    /// Σ r(w)·Δ replica-seconds.
    pub lb0: f64,
    /// The start-up-aware bound, replica-seconds.
    pub lb_s: f64,
}

/// Plans one model: `need` per window, start-up `s` seconds, window `dt` seconds;
/// the first `initial` levels are already running at time 0 (no start-up paid for
/// them if they are on from the first window).
pub fn plan_levels(need: &[u32], s: f64, dt: f64, initial: u32) -> ModelPlan {
    let max = need.iter().copied().max().unwrap_or(0);
    let mut keep = vec![0u32; need.len()];
    let mut lb_s = 0.0;
    for level in 1..=max {
        let mut last_on: Option<usize> = None;
        for (w, &r) in need.iter().enumerate() {
            if r < level {
                continue;
            }
            match last_on {
                None if w == 0 && level <= initial => {}
                None => lb_s += s,
                Some(prev) => {
                    let gap = (w - prev - 1) as f64 * dt;
                    if gap <= s {
                        lb_s += gap;
                        for k in keep.iter_mut().take(w).skip(prev + 1) {
                            *k += 1;
                        }
                    } else {
                        lb_s += s;
                    }
                }
            }
            lb_s += dt;
            keep[w] += 1;
            last_on = Some(w);
        }
    }
    let lb0 = need.iter().map(|&r| f64::from(r) * dt).sum();
    ModelPlan {
        need: need.to_vec(),
        rates: Vec::new(),
        keep,
        lb0,
        lb_s,
    }
}

/// Plans every model of a trace.
pub fn plan(
    models: &[ModelSpec],
    trace: &Trace,
    slo_s: f64,
    dt: f64,
    duration_s: f64,
) -> Vec<ModelPlan> {
    let windows = (duration_s / dt).ceil().max(1.0) as usize;
    let mut counts = vec![vec![0u32; windows]; models.len()];
    for r in &trace.requests {
        let w = ((r.time as f64 / MICROS_PER_SEC) / dt) as usize;
        if let Some(c) = counts
            .get_mut(r.model as usize)
            .and_then(|v| v.get_mut(w.min(windows - 1)))
        {
            *c += 1;
        }
    }
    models
        .iter()
        .zip(counts)
        .map(|(m, c)| {
            let mu = replica_capacity(m, slo_s);
            let need: Vec<u32> = c
                .iter()
                .map(|&n| super::ceil_u32(f64::from(n) / dt / mu))
                .collect();
            let mut p = plan_levels(&need, m.load_s, dt, m.initial_replicas);
            p.rates = c.iter().map(|&n| (f64::from(n) / dt) as f32).collect();
            p
        })
        .collect()
}

/// The oracle policy: desired(t) = the most levels kept in any window overlapping
/// [t, t + lead], precomputed per second.
pub struct Oracle {
    /// Per model, desired replicas per second.
    pub schedule: Vec<Vec<u32>>,
}

impl Oracle {
    pub fn new(plans: &[ModelPlan], leads: &[f64], dt: f64, duration_s: f64) -> Self {
        let secs = duration_s.ceil() as usize + 1;
        let schedule = plans
            .iter()
            .zip(leads)
            .map(|(p, &lead)| {
                (0..secs)
                    .map(|t| {
                        let from = (t as f64 / dt) as usize;
                        let to = ((t as f64 + lead) / dt) as usize;
                        (from..=to)
                            .filter_map(|w| p.keep.get(w))
                            .copied()
                            .max()
                            .unwrap_or(0)
                    })
                    .collect()
            })
            .collect();
        Self { schedule }
    }
}

impl Policy for Oracle {
    fn tick(&mut self, model: usize, v: &ModelView<'_>) -> Option<u32> {
        let want = self.schedule[model]
            .get(v.tick as usize)
            .copied()
            .unwrap_or(0);
        (want != v.desired).then_some(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_textbook_values() {
        // c = 2, a = 1: C = 1/3.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // c = 1 is M/M/1: C = ρ.
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn levels_bridge_short_gaps_and_pay_startup_after_long_ones() {
        // Δ = 10 s, S = 15 s. Level 1 on in windows 0,1 then 3 (gap 10 s ≤ 15: bridged),
        // then 6 (gap 20 s > 15: restart). Level 2 on in window 1 only.
        let p = plan_levels(&[1, 2, 0, 1, 0, 0, 1], 15.0, 10.0, 0);
        // level 1: S + 2Δ + gap 10 + Δ + S + Δ = 15+20+10+10+15+10 = 80; level 2: S + Δ = 25.
        assert_eq!(p.lb_s, 105.0);
        assert_eq!(p.lb0, 50.0);
        assert_eq!(p.keep, vec![1, 2, 1, 1, 0, 0, 1]);
        // Level 1 already running at t = 0 pays no start-up.
        assert_eq!(
            plan_levels(&[1, 2, 0, 1, 0, 0, 1], 15.0, 10.0, 1).lb_s,
            90.0
        );
    }
}
