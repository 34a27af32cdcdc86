//! Runs a scenario file and prints its summary (development aid; the user-facing
//! command is `coscale sim`).

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args().nth(1) else {
        return Err("usage: sim SCENARIO.yaml".into());
    };
    let s = coscale_sim::scenario::load(std::path::Path::new(&path))?;
    let t = Instant::now();
    let run = coscale_sim::run(&s, &mut |_, _| {})?;
    let secs = t.elapsed().as_secs_f64();
    print!("{}", coscale_sim::report::summary_json(&run.summary)?);
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
