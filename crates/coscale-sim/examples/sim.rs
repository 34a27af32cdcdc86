//! Runs a scenario file and prints its summary (development aid; the user-facing
//! command is `coscale sim`).

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args().nth(1) else {
        return Err("usage: sim SCENARIO.yaml".into());
    };
    let s = coscale_sim::scenario::load(std::path::Path::new(&path))?;
    if std::env::var("SIM_TOP").is_ok() {
        let trace = s.build_trace()?;
        let mut counts = vec![0u64; s.models.len()];
        for r in &trace.requests {
            counts[r.model as usize] += 1;
        }
        let mut idx: Vec<usize> = (0..counts.len()).collect();
        idx.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
        for &i in idx.iter().take(8) {
            eprintln!(
                "{} {:.2} req/s",
                s.models[i].name,
                counts[i] as f64 / s.duration_s
            );
        }
    }
    let t = Instant::now();
    let mut last = (0usize, Instant::now());
    let run = coscale_sim::run(&s, &mut |i, f| {
        if f >= 1.0 {
            eprintln!("policy {i}: {:.2} s", last.1.elapsed().as_secs_f64());
            last = (i + 1, Instant::now());
        }
    })?;
    let secs = t.elapsed().as_secs_f64();
    print!("{}", coscale_sim::report::summary_json(&run.summary)?);
    if let Ok(dir) = std::env::var("SIM_OUT") {
        coscale_sim::report::write_all(&run, std::path::Path::new(&dir))?;
        print!("{}", coscale_sim::report::markdown(&run.summary));
    }
    if let Ok(name) = std::env::var("SIM_SERIES") {
        for s in run.series.iter().filter(|s| s.policy == name) {
            for p in &s.samples {
                println!(
                    "{:>6} load {:>7.1} rep {:>3}/{:>3} srv {:>3} p99 {:>8.1}",
                    p.t_s,
                    p.load_rps,
                    p.ready_model_replicas,
                    p.model_replicas,
                    p.server_replicas,
                    p.p99_ms
                );
            }
        }
    }
    eprintln!(
        "{:.2} s wall, {:.2} M simulated requests/s",
        secs,
        run.summary.requests as f64 * run.summary.policies.len() as f64 / secs / 1e6
    );
    Ok(())
}
