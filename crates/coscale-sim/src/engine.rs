//! The discrete-event simulation.
//!
//! Virtual time in integer microseconds; one event queue (a `BinaryHeap` keyed by
//! (time, sequence number), so equal times resolve in scheduling order) merged with
//! the time-sorted trace. At equal times queued events run before arrivals.
//!
//! - **Router**: a request goes to the ready replica of its model with the fewest
//!   outstanding requests (ties: the oldest replica). With no ready replica it is
//!   held (at most `max_pending` per model, beyond that it is dropped).
//! - **Replica**: `slots` requests in service at once, FIFO queue beyond that. A
//!   request that has not started within the timeout times out when it reaches the
//!   head of a queue. Requests still waiting when the run drains time out.
//! - **Control**: once per virtual second the metrics roll over, the policy ticks
//!   for every model, servers are sized by the policy's server rule, and when
//!   anything changed placement runs (`coscale_core::placement::place`) over the
//!   connected server replicas. A new model replica serves after its load time; a
//!   new server replica connects after its start-up time. Removing a server replica
//!   removes the model replicas on it; their queued requests go back to the router.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use coscale_core::autoscale::{plan_server, ServerPlanConfig, ServerPlanInput, ServerPlanState};
use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::placement::{
    place, replicas_needed, CurrentPlacement, ModelDemand, Outcome, ReplicaView, ServerView,
};

use crate::policy::{History, ModelView, Policy, ServerRule};
use crate::rng::Rng;
use crate::scenario::{ModelSpec, ServerSpec};
use crate::trace::{micros, Micros, Trace, MICROS_PER_SEC};

const SEC: Micros = 1_000_000;
/// Window for counting direction reversals as flaps.
const FLAP_WINDOW: Micros = 60 * SEC;
/// How long coscale's server rule waits before acting on a lower need.
const SERVER_DOWN_DELAY: Micros = 60 * SEC;

/// Simulation settings that do not depend on the policy.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub duration_s: f64,
    pub slo_s: f64,
    pub timeout_s: f64,
    pub max_pending: u32,
    pub chart_points: u32,
    /// μ per model (req/s a replica serves within the SLO), for time-to-scale.
    pub capacity: Vec<f64>,
    /// Width of the windows of `rates`, seconds.
    pub window_s: f64,
    /// Per model, the trace's request rate in each window (the load to cover).
    pub rates: Vec<Vec<f32>>,
}

/// One point of the time series charts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub load_rps: f64,
    pub model_replicas: u32,
    pub ready_model_replicas: u32,
    pub server_replicas: u32,
    /// p99 latency of requests completed in the interval (0 if none).
    pub p99_ms: f64,
}

/// Everything measured in one run.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    pub requests: u64,
    pub served: u64,
    pub dropped: u64,
    pub timed_out: u64,
    /// Served within the SLO.
    pub good: u64,
    /// Latencies of served requests, microseconds (saturating).
    pub latencies_us: Vec<u32>,
    pub model_replica_seconds: f64,
    pub server_replica_seconds: f64,
    pub scale_actions: u64,
    pub flaps: u64,
    pub samples: Vec<Sample>,
    /// Requests arriving in each second.
    pub arrivals_per_sec: Vec<u32>,
    /// Σ over models of the load (the model's rate in the current window) that its
    /// ready replicas × μ do not cover, at the end of each second.
    pub deficit_per_sec: Vec<f64>,
    /// Every change of a model's desired replicas: (time, model, new count).
    pub decisions: Vec<(Micros, u32, u32)>,
    /// Every change of a server's replica count: (time, server, new count).
    pub server_decisions: Vec<(Micros, u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Done { rep: u32, arrival: Micros },
    RepReady { rep: u32 },
    SrvReady { server: u32, ordinal: u32, gen: u32 },
    Tick,
}

#[derive(Debug)]
struct Rep {
    model: u32,
    server: u32,
    ordinal: u32,
    ready: bool,
    alive: bool,
    in_service: u32,
    queue: VecDeque<(Micros, u32)>,
}

impl Rep {
    fn outstanding(&self) -> usize {
        self.in_service as usize + self.queue.len()
    }
}

#[derive(Debug, Clone)]
struct SrvRep {
    ready: bool,
    gen: u32,
}

struct ServerRt {
    reps: Vec<SrvRep>,
    gen: u32,
    below_since: Option<Micros>,
    last_dir: i8,
    last_change: Micros,
}

struct ModelRt {
    desired: u32,
    reps: Vec<u32>,
    /// How many of `reps` are ready.
    ready: u32,
    pending: VecDeque<(Micros, u32)>,
    outstanding: u32,
    conc_acc: f64,
    last_change: Micros,
    arrivals_now: u32,
    last_used: Option<Micros>,
    state_changed: Micros,
    server: Option<u32>,
    unplaced: bool,
    last_dir: i8,
    last_scale: Micros,
}

/// One simulation run of one policy.
pub struct Sim<'a> {
    cfg: &'a SimConfig,
    specs: &'a [ModelSpec],
    servers_spec: &'a [ServerSpec],
    policy: Option<&'a mut dyn Policy>,
    rule: ServerRule,
    now: Micros,
    seq: u64,
    heap: BinaryHeap<(Reverse<(Micros, u64)>, Ev)>,
    reps: Vec<Rep>,
    models: Vec<ModelRt>,
    servers: Vec<ServerRt>,
    ring_len: usize,
    ring_arr: Vec<f32>,
    ring_conc: Vec<f32>,
    ring_head: usize,
    ring_filled: usize,
    demands: Vec<ModelDemand>,
    demands_stale: bool,
    /// Counts changes of `demands` (see [`Sim::mark`]).
    demand_gen: u64,
    /// Per server, `needed` at a `demand_gen` (it depends on nothing else).
    needed_cache: Vec<Option<(u64, Option<u32>)>>,
    dirty_models: Vec<u32>,
    is_dirty: Vec<bool>,
    native_pos: Vec<Vec<Option<usize>>>,
    native_built: bool,
    native_cfg: ServerPlanConfig,
    native_states: Vec<ServerPlanState>,
    native_demands: Vec<Vec<ModelDemand>>,
    server_names: Vec<ServerName>,
    placement_dirty: bool,
    server_dirty: bool,
    /// Scratch: which ordinals of a server host a model replica.
    ordinal_used: Vec<bool>,
    replica_removed: bool,
    placed_total: u64,
    server_total: u64,
    cost_since: Micros,
    service_rng: Rng,
    /// `cfg.timeout_s` and `cfg.slo_s` in microseconds.
    timeout_us: Micros,
    slo_us: Micros,
    out: Outcomes,
    sample_every: u64,
    sample_arrivals: u64,
    sample_lat: Vec<u32>,
}

impl<'a> Sim<'a> {
    pub fn new(
        cfg: &'a SimConfig,
        specs: &'a [ModelSpec],
        servers_spec: &'a [ServerSpec],
        policy: &'a mut dyn Policy,
    ) -> Self {
        let ring_len = policy.history_secs().max(8) + 1;
        let rule = policy.server_rule();
        let demands = specs
            .iter()
            .map(|m| ModelDemand {
                name: ModelName::new(m.name.clone()),
                requirements: Vec::new(),
                memory_bytes: m.memory_bytes,
                replicas: 0,
                min_replicas: 1,
                server: None,
                current: None,
            })
            .collect();
        let duration_ticks = cfg.duration_s.ceil().max(1.0) as u64;
        Self {
            cfg,
            specs,
            servers_spec,
            policy: Some(policy),
            rule,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            reps: Vec::new(),
            models: specs
                .iter()
                .map(|m| ModelRt {
                    desired: m.initial_replicas,
                    reps: Vec::new(),
                    ready: 0,
                    pending: VecDeque::new(),
                    outstanding: 0,
                    conc_acc: 0.0,
                    last_change: 0,
                    arrivals_now: 0,
                    last_used: None,
                    state_changed: 0,
                    server: None,
                    unplaced: false,
                    last_dir: 0,
                    last_scale: 0,
                })
                .collect(),
            servers: servers_spec
                .iter()
                .map(|_| ServerRt {
                    reps: Vec::new(),
                    gen: 0,
                    below_since: None,
                    last_dir: 0,
                    last_change: 0,
                })
                .collect(),
            ring_len,
            ring_arr: vec![0.0; ring_len * specs.len()],
            ring_conc: vec![0.0; ring_len * specs.len()],
            ring_head: 0,
            ring_filled: 0,
            demands,
            demands_stale: true,
            demand_gen: 0,
            needed_cache: vec![None; servers_spec.len()],
            dirty_models: (0..specs.len() as u32).collect(),
            is_dirty: vec![true; specs.len()],
            native_pos: vec![vec![None; specs.len()]; servers_spec.len()],
            native_built: false,
            native_cfg: ServerPlanConfig::default(),
            native_states: vec![ServerPlanState::default(); servers_spec.len()],
            native_demands: vec![Vec::new(); servers_spec.len()],
            server_names: servers_spec
                .iter()
                .map(|s| ServerName::new(s.name.clone()))
                .collect(),
            placement_dirty: true,
            server_dirty: true,
            ordinal_used: Vec::new(),
            replica_removed: false,
            placed_total: 0,
            server_total: 0,
            cost_since: 0,
            service_rng: Rng::stream(cfg.seed, 0x005E_41C3),
            timeout_us: micros(cfg.timeout_s),
            slo_us: micros(cfg.slo_s),
            out: Outcomes::default(),
            sample_every: (duration_ticks / u64::from(cfg.chart_points.max(1))).max(1),
            sample_arrivals: 0,
            sample_lat: Vec::new(),
        }
    }

    fn push(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.heap.push((Reverse((at, self.seq)), ev));
    }

    fn account_cost(&mut self) {
        let dt = (self.now - self.cost_since) as f64 / MICROS_PER_SEC;
        self.out.model_replica_seconds += self.placed_total as f64 * dt;
        self.out.server_replica_seconds += self.server_total as f64 * dt;
        self.cost_since = self.now;
    }

    fn touch(&mut self, m: usize) {
        let now = self.now;
        let mr = &mut self.models[m];
        mr.conc_acc += f64::from(mr.outstanding) * (now - mr.last_change) as f64;
        mr.last_change = now;
    }

    /// Runs the trace to the end and drains; returns what was measured.
    pub fn run(mut self, trace: &Trace, progress: &mut dyn FnMut(f64)) -> Outcomes {
        let end = micros(self.cfg.duration_s);
        let ticks = end.div_ceil(SEC);
        self.out.arrivals_per_sec = vec![0; ticks as usize + 1];
        self.out.deficit_per_sec = vec![0.0; ticks as usize + 1];
        for (s, spec) in self.servers_spec.iter().enumerate() {
            for _ in 0..spec.initial_replicas {
                self.servers[s].reps.push(SrvRep {
                    ready: true,
                    gen: 0,
                });
                self.server_total += 1;
            }
        }
        self.place_models();
        // Initial replicas start loaded.
        for r in &mut self.reps {
            r.ready = true;
        }
        for mr in &mut self.models {
            mr.ready = mr.reps.len() as u32;
        }
        self.push(SEC, Ev::Tick);
        let reqs = &trace.requests;
        let mut i = 0;
        let report_every = (reqs.len() / 100).max(1);
        let mut to_report = report_every;
        self.out.latencies_us.reserve(reqs.len());
        loop {
            let next_arrival = reqs.get(i).map(|r| r.time);
            let next_event = self.heap.peek().map(|(Reverse((t, _)), _)| *t);
            let take_arrival = match (next_arrival, next_event) {
                (Some(a), Some(e)) => a < e,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_arrival {
                let r = reqs[i];
                i += 1;
                self.now = r.time;
                self.arrival(r.model as usize, r.service);
                to_report -= 1;
                if to_report == 0 {
                    to_report = report_every;
                    progress(r.time as f64 / end.max(1) as f64);
                }
            } else if let Some((Reverse((t, _)), ev)) = self.heap.pop() {
                self.now = t;
                match ev {
                    Ev::Done { rep, arrival } => self.done(rep as usize, arrival),
                    Ev::RepReady { rep } => self.rep_ready(rep as usize),
                    Ev::SrvReady {
                        server,
                        ordinal,
                        gen,
                    } => self.srv_ready(server as usize, ordinal as usize, gen),
                    Ev::Tick => {
                        self.tick();
                        if self.now + SEC <= end {
                            self.push(self.now + SEC, Ev::Tick);
                        } else {
                            self.finish_control();
                        }
                    }
                }
            }
        }
        // Whatever still waits never gets served.
        let mut left = 0u64;
        for m in &mut self.models {
            left += m.pending.len() as u64;
            m.pending.clear();
        }
        for r in &mut self.reps {
            left += r.queue.len() as u64;
            r.queue.clear();
        }
        self.out.timed_out += left;
        progress(1.0);
        self.out
    }

    /// Control stops at the end of the run: costs stop counting there.
    fn finish_control(&mut self) {
        self.account_cost();
        self.placed_total = 0;
        self.server_total = 0;
    }

    fn arrival(&mut self, m: usize, service: Option<u32>) {
        let spec = &self.specs[m];
        let service = service.unwrap_or_else(|| {
            let s = spec.service_mean_s * self.service_rng.unit_mean(spec.service_cv);
            u32::try_from(micros(s)).unwrap_or(u32::MAX).max(1)
        });
        self.out.requests += 1;
        self.sample_arrivals += 1;
        let sec = (self.now / SEC) as usize;
        if let Some(a) = self.out.arrivals_per_sec.get_mut(sec) {
            *a += 1;
        }
        let mr = &mut self.models[m];
        mr.arrivals_now += 1;
        mr.last_used = Some(self.now);
        if mr.desired == 0 && !self.placed_any(m) {
            let mut policy = self.policy.take();
            let d = policy
                .as_mut()
                .and_then(|p| p.on_cold_request(m, &self.view(m, self.now / SEC)));
            self.policy = policy;
            if let Some(d) = d {
                self.set_desired(m, d);
            }
        }
        self.route(m, self.now, service, true);
    }

    fn placed_any(&self, m: usize) -> bool {
        !self.models[m].reps.is_empty()
    }

    /// Sends a request to the least-loaded ready replica, or holds it.
    fn route(&mut self, m: usize, arrival: Micros, service: u32, fresh: bool) {
        let mut best: Option<(usize, u32)> = None;
        for &r in &self.models[m].reps {
            let rep = &self.reps[r as usize];
            if rep.ready && best.is_none_or(|(o, _)| rep.outstanding() < o) {
                best = Some((rep.outstanding(), r));
            }
        }
        if fresh {
            self.touch(m);
        }
        match best {
            Some((_, r)) => {
                if fresh {
                    self.models[m].outstanding += 1;
                }
                self.dispatch(r as usize, arrival, service);
            }
            None => {
                let mr = &mut self.models[m];
                if mr.pending.len() >= self.cfg.max_pending as usize {
                    self.out.dropped += 1;
                    if !fresh {
                        mr.outstanding -= 1;
                    }
                } else {
                    if fresh {
                        mr.outstanding += 1;
                    }
                    mr.pending.push_back((arrival, service));
                }
            }
        }
    }

    fn dispatch(&mut self, r: usize, arrival: Micros, service: u32) {
        let slots = self.specs[self.reps[r].model as usize].slots;
        let rep = &mut self.reps[r];
        if rep.in_service < slots && rep.queue.is_empty() {
            rep.in_service += 1;
            self.push(
                self.now + u64::from(service),
                Ev::Done {
                    rep: r as u32,
                    arrival,
                },
            );
        } else {
            rep.queue.push_back((arrival, service));
            self.start_queued(r);
        }
    }

    fn timed_out(&self, arrival: Micros) -> bool {
        self.now.saturating_sub(arrival) > self.timeout_us
    }

    /// Starts queued requests while slots are free, timing out stale ones.
    fn start_queued(&mut self, r: usize) {
        let m = self.reps[r].model as usize;
        let slots = self.specs[m].slots;
        while self.reps[r].in_service < slots {
            let Some((arrival, service)) = self.reps[r].queue.pop_front() else {
                break;
            };
            if self.timed_out(arrival) {
                self.out.timed_out += 1;
                self.touch(m);
                self.models[m].outstanding -= 1;
                continue;
            }
            self.reps[r].in_service += 1;
            self.push(
                self.now + u64::from(service),
                Ev::Done {
                    rep: r as u32,
                    arrival,
                },
            );
        }
    }

    fn done(&mut self, r: usize, arrival: Micros) {
        let m = self.reps[r].model as usize;
        let lat = self.now - arrival;
        let lat32 = u32::try_from(lat).unwrap_or(u32::MAX);
        self.out.served += 1;
        if lat <= self.slo_us {
            self.out.good += 1;
        }
        self.out.latencies_us.push(lat32);
        self.sample_lat.push(lat32);
        self.touch(m);
        self.models[m].outstanding -= 1;
        self.reps[r].in_service -= 1;
        if self.reps[r].alive {
            self.start_queued(r);
        }
    }

    fn rep_ready(&mut self, r: usize) {
        if !self.reps[r].alive || self.reps[r].ready {
            return;
        }
        self.reps[r].ready = true;
        let m = self.reps[r].model as usize;
        self.models[m].ready += 1;
        self.models[m].state_changed = self.now;
        self.flush_pending(m);
    }

    /// Routes held requests now that a replica is ready.
    fn flush_pending(&mut self, m: usize) {
        let held = std::mem::take(&mut self.models[m].pending);
        for (arrival, service) in held {
            if self.timed_out(arrival) {
                self.out.timed_out += 1;
                self.touch(m);
                self.models[m].outstanding -= 1;
            } else {
                self.route(m, arrival, service, false);
            }
        }
    }

    fn srv_ready(&mut self, s: usize, ordinal: usize, gen: u32) {
        if let Some(rep) = self.servers[s].reps.get_mut(ordinal) {
            if rep.gen == gen && !rep.ready {
                rep.ready = true;
                self.placement_dirty = true;
                self.server_dirty = true;
            }
        }
    }

    fn history(&self, m: usize) -> History<'_> {
        let base = m * self.ring_len;
        History {
            arrivals: &self.ring_arr[base..base + self.ring_len],
            concurrency: &self.ring_conc[base..base + self.ring_len],
            head: self.ring_head,
            filled: self.ring_filled,
        }
    }

    fn view(&self, m: usize, tick: u64) -> ModelView<'_> {
        let mr = &self.models[m];
        let mut max_out = 0;
        for &r in &mr.reps {
            max_out = max_out.max(self.reps[r as usize].outstanding() as u32);
        }
        ModelView {
            now: self.now,
            tick,
            spec: &self.specs[m],
            desired: mr.desired,
            ready: mr.ready,
            placed: mr.reps.len() as u32,
            outstanding: mr.outstanding,
            pending: mr.pending.len() as u32,
            max_replica_outstanding: max_out,
            last_used: mr.last_used,
            state_changed: mr.state_changed,
            history: self.history(m),
        }
    }

    fn set_desired(&mut self, m: usize, d: u32) {
        let mr = &mut self.models[m];
        if d == mr.desired {
            return;
        }
        let dir: i8 = if d > mr.desired { 1 } else { -1 };
        self.out.scale_actions += 1;
        if mr.last_dir == -dir && self.now.saturating_sub(mr.last_scale) <= FLAP_WINDOW {
            self.out.flaps += 1;
        }
        mr.last_dir = dir;
        mr.last_scale = self.now;
        mr.desired = d;
        self.out.decisions.push((self.now, m as u32, d));
        mr.state_changed = self.now;
        self.placement_dirty = true;
        self.server_dirty = true;
        self.mark(m);
    }

    fn tick(&mut self) {
        let tick = self.now / SEC;
        // Roll the metric rings over.
        self.ring_head = (self.ring_head + 1) % self.ring_len;
        self.ring_filled = (self.ring_filled + 1).min(self.ring_len);
        for m in 0..self.models.len() {
            self.touch(m);
            let idx = m * self.ring_len + self.ring_head;
            let mr = &mut self.models[m];
            self.ring_arr[idx] = mr.arrivals_now as f32;
            self.ring_conc[idx] = (mr.conc_acc / MICROS_PER_SEC) as f32;
            mr.arrivals_now = 0;
            mr.conc_acc = 0.0;
            // Each model's purge only reads and changes that model's state.
            self.purge_timed_out(m);
        }
        let mut policy = self.policy.take();
        if let Some(p) = policy.as_mut().filter(|p| p.due(tick)) {
            for m in 0..self.models.len() {
                if let Some(d) = p.tick(m, &self.view(m, tick)) {
                    self.set_desired(m, d);
                }
            }
        }
        self.policy = policy;
        self.size_servers();
        if self.placement_dirty {
            self.place_models();
        }
        // Uncovered load and samples.
        let mut deficit = 0.0;
        let (mut placed, mut ready) = (0u32, 0u32);
        let w = ((self.now.saturating_sub(1) as f64 / MICROS_PER_SEC) / self.cfg.window_s) as usize;
        for (m, mr) in self.models.iter().enumerate() {
            let r = mr.ready;
            ready += r;
            placed += mr.reps.len() as u32;
            let load = self
                .cfg
                .rates
                .get(m)
                .and_then(|v| v.get(w))
                .map_or(0.0, |&x| f64::from(x));
            let cap = f64::from(r) * self.cfg.capacity.get(m).copied().unwrap_or(0.0);
            deficit += (load - cap).max(0.0);
        }
        if let Some(c) = self.out.deficit_per_sec.get_mut(tick as usize) {
            *c = deficit;
        }
        if tick.is_multiple_of(self.sample_every) {
            let p99 = percentile_ms(&mut self.sample_lat, 0.99);
            self.out.samples.push(Sample {
                t_s: tick as f64,
                load_rps: self.sample_arrivals as f64 / self.sample_every as f64,
                model_replicas: placed,
                ready_model_replicas: ready,
                server_replicas: self.servers.iter().map(|s| s.reps.len() as u32).sum(),
                p99_ms: p99,
            });
            self.sample_arrivals = 0;
            self.sample_lat.clear();
        }
    }

    /// Clients give up: model `m`'s requests past the timeout leave the heads of its
    /// queues (so they stop counting as outstanding within a second of timing out).
    fn purge_timed_out(&mut self, m: usize) {
        let limit = self.timeout_us;
        let now = self.now;
        let stale = |q: &VecDeque<(Micros, u32)>| {
            q.front()
                .is_some_and(|&(a, _)| now.saturating_sub(a) > limit)
        };
        let mut gone = 0u32;
        while stale(&self.models[m].pending) {
            self.models[m].pending.pop_front();
            gone += 1;
        }
        for k in 0..self.models[m].reps.len() {
            let r = self.models[m].reps[k] as usize;
            while stale(&self.reps[r].queue) {
                self.reps[r].queue.pop_front();
                gone += 1;
            }
        }
        if gone > 0 {
            self.touch(m);
            self.models[m].outstanding -= gone;
            self.out.timed_out += u64::from(gone);
        }
    }

    fn set_server_count(&mut self, s: usize, target: u32) {
        let cur = self.servers[s].reps.len() as u32;
        if target == cur {
            return;
        }
        self.account_cost();
        let dir: i8 = if target > cur { 1 } else { -1 };
        self.out.scale_actions += 1;
        let sr = &mut self.servers[s];
        if sr.last_dir == -dir && self.now.saturating_sub(sr.last_change) <= FLAP_WINDOW {
            self.out.flaps += 1;
        }
        sr.last_dir = dir;
        sr.last_change = self.now;
        self.out.server_decisions.push((self.now, s as u32, target));
        if target > cur {
            let startup = micros(self.servers_spec[s].startup_s);
            for ordinal in cur..target {
                self.servers[s].gen += 1;
                let gen = self.servers[s].gen;
                self.servers[s].reps.push(SrvRep { ready: false, gen });
                self.server_total += 1;
                self.push(
                    self.now + startup,
                    Ev::SrvReady {
                        server: s as u32,
                        ordinal,
                        gen,
                    },
                );
            }
        } else {
            for ordinal in target..cur {
                let victims: Vec<u32> = self
                    .models
                    .iter()
                    .flat_map(|mr| mr.reps.iter().copied())
                    .filter(|&r| {
                        let rep = &self.reps[r as usize];
                        rep.server == s as u32 && rep.ordinal == ordinal
                    })
                    .collect();
                for r in victims {
                    self.remove_rep(r as usize);
                }
            }
            self.servers[s].reps.truncate(target as usize);
            self.server_total -= u64::from(cur - target);
        }
        self.placement_dirty = true;
    }

    fn remove_rep(&mut self, r: usize) {
        self.account_cost();
        let m = self.reps[r].model as usize;
        if self.reps[r].ready {
            self.models[m].ready -= 1;
        }
        self.reps[r].alive = false;
        self.reps[r].ready = false;
        self.models[m].reps.retain(|&x| x as usize != r);
        self.models[m].state_changed = self.now;
        self.placed_total -= 1;
        self.replica_removed = true;
        self.mark(m);
        let queued = std::mem::take(&mut self.reps[r].queue);
        for (arrival, service) in queued {
            self.route(m, arrival, service, false);
        }
    }

    fn size_servers(&mut self) {
        for s in 0..self.servers.len() {
            let spec = &self.servers_spec[s];
            let cur = self.servers[s].reps.len() as u32;
            match self.rule {
                ServerRule::FromModelNeeds => {
                    if !self.server_dirty && self.servers[s].below_since.is_none() {
                        continue;
                    }
                    let need = self.needed(s).unwrap_or(spec.max_replicas);
                    let target = need.clamp(spec.min_replicas, spec.max_replicas);
                    if target > cur {
                        self.servers[s].below_since = None;
                        self.set_server_count(s, target);
                    } else if target < cur {
                        let since = *self.servers[s].below_since.get_or_insert(self.now);
                        if self.now >= since + SERVER_DOWN_DELAY {
                            self.servers[s].below_since = None;
                            self.set_server_count(s, target);
                        }
                    } else {
                        self.servers[s].below_since = None;
                    }
                }
                ServerRule::Native => {
                    let used = &mut self.ordinal_used;
                    used.clear();
                    used.resize(self.servers[s].reps.len(), false);
                    for mr in &self.models {
                        for &r in &mr.reps {
                            let rep = &self.reps[r as usize];
                            if rep.server == s as u32 {
                                if let Some(u) = used.get_mut(rep.ordinal as usize) {
                                    *u = true;
                                }
                            }
                        }
                    }
                    let is_empty = |o: usize, rep: &SrvRep| rep.ready && !used[o];
                    let any_empty = self.servers[s]
                        .reps
                        .iter()
                        .enumerate()
                        .any(|(o, rep)| is_empty(o, rep));
                    // Between changes, with no empty replica and no packing check due, the
                    // planner's answer cannot change: skip the call.
                    let now_ms = self.now / 1000;
                    let pack_due = self.native_states[s]
                        .last_pack_check_ms()
                        .is_none_or(|t| now_ms.saturating_sub(t) >= self.native_cfg.pack_period_ms);
                    if !self.server_dirty && !self.replica_removed && !any_empty && !pack_due {
                        continue;
                    }
                    let empty: BTreeSet<ReplicaIndex> = self.servers[s]
                        .reps
                        .iter()
                        .enumerate()
                        .filter(|(o, rep)| is_empty(*o, rep))
                        .map(|(o, _)| ReplicaIndex(o as u32))
                        .collect();
                    self.refresh_demands();
                    let view = self.server_view(s);
                    let input = ServerPlanInput {
                        server: &view,
                        current_replicas: cur,
                        min_replicas: spec.min_replicas,
                        max_replicas: spec.max_replicas,
                        models: &self.native_demands[s],
                        empty_replicas: empty,
                        now_ms: self.now / 1000,
                    };
                    let removed = self.replica_removed;
                    if let Some(d) = plan_server(
                        &self.native_cfg,
                        &mut self.native_states[s],
                        &input,
                        removed,
                    ) {
                        self.set_server_count(s, d.replicas);
                    }
                }
                ServerRule::Seldon => {
                    let on_server = |mr: &ModelRt| mr.server.is_none_or(|x| x as usize == s);
                    let max_hosted = self
                        .models
                        .iter()
                        .filter(|mr| on_server(mr))
                        .map(|mr| mr.desired)
                        .max()
                        .unwrap_or(0);
                    let unplaced = self.models.iter().any(|mr| on_server(mr) && mr.unplaced);
                    if unplaced && spec.max_replicas >= 1 && max_hosted > cur {
                        self.set_server_count(s, max_hosted.min(spec.max_replicas));
                    } else if self.replica_removed && cur > 1 {
                        let used: BTreeSet<u32> = self
                            .models
                            .iter()
                            .flat_map(|mr| mr.reps.iter().map(|&r| &self.reps[r as usize]))
                            .filter(|r| r.server == s as u32)
                            .map(|r| r.ordinal)
                            .collect();
                        let empty = self.servers[s]
                            .reps
                            .iter()
                            .enumerate()
                            .filter(|(o, rep)| rep.ready && !used.contains(&(*o as u32)))
                            .count() as u32;
                        let min = spec.min_replicas.max(1);
                        if empty > 0 {
                            self.set_server_count(s, cur.saturating_sub(empty).max(min));
                        }
                    }
                }
            }
        }
        self.server_dirty = false;
        self.replica_removed = false;
    }

    /// `replicas_needed` for server `s` over the models it hosts (or would host).
    fn needed(&mut self, s: usize) -> Option<u32> {
        if let Some((generation, need)) = self.needed_cache[s] {
            if generation == self.demand_gen {
                return need;
            }
        }
        let need = self.compute_needed(s);
        self.needed_cache[s] = Some((self.demand_gen, need));
        need
    }

    fn compute_needed(&mut self, s: usize) -> Option<u32> {
        self.refresh_demands();
        let spec = &self.servers_spec[s];
        let template = ServerView {
            name: self.server_names[s].clone(),
            replicas: vec![ReplicaView {
                index: ReplicaIndex(0),
                capabilities: Vec::new(),
                memory_bytes: spec.memory_bytes,
                reserved_bytes: 0,
                draining: false,
            }],
            accepting: true,
        };
        if self.servers.len() == 1 {
            return replicas_needed(&template, &self.demands, spec.max_replicas);
        }
        let mine: Vec<ModelDemand> = self
            .demands
            .iter()
            .zip(&self.models)
            .filter(|(_, mr)| mr.server.is_none_or(|x| x as usize == s))
            .map(|(d, _)| d.clone())
            .collect();
        replicas_needed(&template, &mine, spec.max_replicas)
    }

    /// Server `s` as placement sees it: its connected replicas.
    fn server_view(&self, s: usize) -> ServerView {
        let spec = &self.servers_spec[s];
        ServerView {
            name: self.server_names[s].clone(),
            replicas: self.servers[s]
                .reps
                .iter()
                .enumerate()
                .filter(|(_, r)| r.ready)
                .map(|(o, _)| ReplicaView {
                    index: ReplicaIndex(o as u32),
                    capabilities: Vec::new(),
                    memory_bytes: spec.memory_bytes,
                    reserved_bytes: 0,
                    draining: false,
                })
                .collect(),
            accepting: true,
        }
    }

    /// Brings every model's demand (desired replicas, current placement) up to date,
    /// and the per-server lists of models with replicas that live on or want a server.
    fn refresh_demands(&mut self) {
        if !self.demands_stale {
            return;
        }
        self.demands_stale = false;
        let dirty = std::mem::take(&mut self.dirty_models);
        for &m in &dirty {
            let m = m as usize;
            self.is_dirty[m] = false;
            let mr = &self.models[m];
            let d = &mut self.demands[m];
            d.replicas = mr.desired;
            d.current = mr.server.map(|s| CurrentPlacement {
                server: self.server_names[s as usize].clone(),
                replicas: mr
                    .reps
                    .iter()
                    .map(|&r| ReplicaIndex(self.reps[r as usize].ordinal))
                    .collect(),
            });
        }
        if self.rule != ServerRule::Native {
            return;
        }
        let single = self.servers.len() == 1;
        for s in 0..self.servers.len() {
            let wants = |m: usize| {
                self.demands[m].replicas > 0
                    && (single || self.models[m].server.is_none_or(|x| x as usize == s))
            };
            let same_members = self.native_built
                && dirty
                    .iter()
                    .all(|&m| wants(m as usize) == self.native_pos[s][m as usize].is_some());
            if same_members {
                for &m in &dirty {
                    if let Some(i) = self.native_pos[s][m as usize] {
                        self.native_demands[s][i] = self.demands[m as usize].clone();
                    }
                }
                continue;
            }
            let mut list = Vec::new();
            let pos: Vec<Option<usize>> = (0..self.models.len())
                .map(|m| {
                    wants(m).then(|| {
                        list.push(self.demands[m].clone());
                        list.len() - 1
                    })
                })
                .collect();
            self.native_demands[s] = list;
            self.native_pos[s] = pos;
        }
        self.native_built = true;
    }

    /// Records that model `m`'s demand (desired count or placement) changed.
    fn mark(&mut self, m: usize) {
        if !self.is_dirty[m] {
            self.is_dirty[m] = true;
            self.dirty_models.push(m as u32);
        }
        self.demands_stale = true;
        self.demand_gen += 1;
    }

    /// Whether model `m`'s replicas are exactly the decision's (`server`, `replicas`),
    /// so applying it would change nothing.
    fn placement_unchanged(
        &self,
        m: usize,
        server: Option<usize>,
        replicas: &BTreeSet<ReplicaIndex>,
    ) -> bool {
        let mr = &self.models[m];
        match server {
            None => mr.reps.is_empty(),
            Some(s) => {
                mr.server == Some(s as u32)
                    && mr.reps.len() == replicas.len()
                    && mr.reps.iter().all(|&r| {
                        let rep = &self.reps[r as usize];
                        rep.server as usize == s && replicas.contains(&ReplicaIndex(rep.ordinal))
                    })
            }
        }
    }

    fn place_models(&mut self) {
        self.placement_dirty = false;
        let views: Vec<ServerView> = (0..self.servers.len())
            .map(|s| self.server_view(s))
            .collect();
        self.refresh_demands();
        let decisions = place(&views, &self.demands);
        for (m, dec) in decisions.into_iter().enumerate() {
            let server = dec
                .server
                .as_ref()
                .and_then(|n| self.server_names.iter().position(|x| x == n));
            self.models[m].unplaced = matches!(
                dec.outcome,
                Outcome::Partial { .. } | Outcome::Failed { .. }
            );
            if self.placement_unchanged(m, server, &dec.replicas) {
                continue;
            }
            // Drop replicas not in the decision.
            let keep: Vec<u32> = self.models[m]
                .reps
                .iter()
                .copied()
                .filter(|&r| {
                    let rep = &self.reps[r as usize];
                    Some(rep.server as usize) == server
                        && dec.replicas.contains(&ReplicaIndex(rep.ordinal))
                })
                .collect();
            let drop: Vec<u32> = self.models[m]
                .reps
                .iter()
                .copied()
                .filter(|r| !keep.contains(r))
                .collect();
            for r in drop {
                self.remove_rep(r as usize);
            }
            if let Some(s) = server {
                if self.models[m].server != Some(s as u32) {
                    self.models[m].server = Some(s as u32);
                    self.mark(m);
                }
                let have: BTreeSet<u32> = keep
                    .iter()
                    .map(|&r| self.reps[r as usize].ordinal)
                    .collect();
                for idx in &dec.replicas {
                    if have.contains(&idx.0) {
                        continue;
                    }
                    self.account_cost();
                    let r = self.reps.len();
                    self.reps.push(Rep {
                        model: m as u32,
                        server: s as u32,
                        ordinal: idx.0,
                        ready: false,
                        alive: true,
                        in_service: 0,
                        queue: VecDeque::new(),
                    });
                    self.models[m].reps.push(r as u32);
                    self.placed_total += 1;
                    self.mark(m);
                    let load = micros(self.specs[m].load_s);
                    self.push(self.now + load, Ev::RepReady { rep: r as u32 });
                }
            }
        }
        self.server_dirty = true;
    }
}

/// The `q` quantile of latencies (µs) in milliseconds, nearest rank; 0 when empty.
pub fn percentile_ms(lat: &mut [u32], q: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
    let (_, v, _) = lat.select_nth_unstable(rank);
    f64::from(*v) / 1000.0
}
