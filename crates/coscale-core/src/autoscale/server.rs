//! Native server autoscaling: server replicas from what the models on it need.
//!
//! Seldon Core 2's policies (`seldon-core2-semantics.md` §4) with `system.md`'s fixes:
//!
//! - **Fit (up)**: when the models' desired replicas do not all fit on `current_replicas`
//!   (replica count or memory), scale to [`replicas_needed`], bounded by max. A model that
//!   no replica of this server could ever hold (missing capability, larger than a
//!   replica) is left out of the count and named in the reason: more replicas would not
//!   help it.
//! - **Empty (down)**: connected replicas with nothing on them, taken from the highest
//!   ordinal down (StatefulSet style) while each has been empty for
//!   `scale_down_delay_ms`, are released; never below `max(min, 1)` nor below what the
//!   models need.
//! - **Pack (down)**: when the models fit on fewer replicas than there are, shrink to that
//!   count, checked only when a model replica was just removed or `pack_period_ms` has
//!   passed since the last check (the clock starts at the first call, so a restart never
//!   packs at once). It removes the highest ordinals, whose model replicas the control
//!   plane drains onto the others; at most `max_moves_per_period` model replicas may live
//!   on the removed replicas, so a shrink that would move more removes fewer replicas.
//!   A shrink that moves nothing is left to the empty policy and its delay.
//!   Deterministic, never a coin flip; `max_moves_per_period == 0` turns it off.
//! - A target below [`replicas_needed`] is never chosen, so a scale-down is never followed
//!   by a scale-up for the same models. A server with zero replicas is left alone; a
//!   count outside `[max(min, 1), max]` is brought to the nearest bound (`"bounds"`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{bounds, num, step, Direction};
use crate::ids::ReplicaIndex;
use crate::placement::{replicas_needed, ModelDemand, ServerView};

/// What the server planner sees of one server.
#[derive(Debug, Clone)]
pub struct ServerPlanInput<'a> {
    /// Connected replicas now; the lowest-index one is the template for new replicas.
    pub server: &'a ServerView,
    /// Desired replicas now.
    pub current_replicas: u32,
    pub min_replicas: u32,
    /// `u32::MAX` = unset.
    pub max_replicas: u32,
    /// Desired model replicas that live on or want this server. Their `current`
    /// placements on this server tell how many model replicas each server replica hosts.
    pub models: &'a [ModelDemand],
    /// Connected replicas hosting nothing (no model loaded or loading, old versions
    /// included).
    pub empty_replicas: BTreeSet<ReplicaIndex>,
    pub now_ms: u64,
}

/// Tunables of [`plan_server`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPlanConfig {
    /// Most model replicas one packing step may move; 0 disables packing.
    pub max_moves_per_period: u32,
    /// Packing is checked at most this often, plus whenever a model replica is removed.
    pub pack_period_ms: u64,
    /// An emptied replica is kept this long before it is released.
    pub scale_down_delay_ms: u64,
}

impl Default for ServerPlanConfig {
    /// Packing on, moving at most 2 model replicas per minute: consolidation is worth
    /// doing but each move reloads a model, so it is trickled. Empty replicas are kept
    /// 30 s: long enough to ride over a model moving between replicas or a new version
    /// replacing an old one, short next to the cost of an idle replica.
    fn default() -> Self {
        ServerPlanConfig {
            max_moves_per_period: 2,
            pack_period_ms: 60_000,
            scale_down_delay_ms: 30_000,
        }
    }
}

/// What the planner remembers between calls for one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPlanState {
    last_pack_check_ms: Option<u64>,
    empty_since: BTreeMap<ReplicaIndex, u64>,
}

impl ServerPlanState {
    /// When packing was last checked.
    pub fn last_pack_check_ms(&self) -> Option<u64> {
        self.last_pack_check_ms
    }

    /// Since when each currently empty replica has been seen empty.
    pub fn empty_since(&self) -> &BTreeMap<ReplicaIndex, u64> {
        &self.empty_since
    }
}

/// A change of a server's desired replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDecision {
    pub replicas: u32,
    pub direction: Direction,
    /// Human readable, with the numbers that led to it.
    pub reason: String,
    /// Bounded label for metrics: `"fit"`, `"empty"`, `"pack"` or `"bounds"`.
    pub reason_kind: &'static str,
}

/// One planning round for one server: the new desired replica count, or `None` to keep it.
/// `model_replica_removed`: a model replica left this server since the last call.
pub fn plan_server(
    cfg: &ServerPlanConfig,
    state: &mut ServerPlanState,
    input: &ServerPlanInput<'_>,
    model_replica_removed: bool,
) -> Option<ServerDecision> {
    let now = input.now_ms;
    state
        .empty_since
        .retain(|index, _| input.empty_replicas.contains(index));
    for &index in &input.empty_replicas {
        state.empty_since.entry(index).or_insert(now);
    }
    let pack_due = pack_due(cfg, state, now, model_replica_removed);

    let current = input.current_replicas;
    if current == 0 {
        return None;
    }
    let (floor, cap) = bounds(input.min_replicas, input.max_replicas);
    if current < floor {
        let why = format!("below min {}", input.min_replicas);
        return Some(change(current, floor, "bounds", why));
    }
    if current > cap {
        let why = format!("above max {}", input.max_replicas);
        return Some(change(current, cap, "bounds", why));
    }
    if input.server.replicas.is_empty() {
        // No template replica to size models against: wait for one to connect.
        return None;
    }

    let (hostable, unhostable) = split_hostable(input);
    let Some(needed) = replicas_needed(input.server, &hostable, cap) else {
        // Every hostable model fits one replica, so only `cap` is too small.
        if cap <= current {
            return None;
        }
        let why = format!(
            "the models' {} replicas need more than max {cap} server replicas{}; scaling to max",
            total_replicas(&hostable),
            unhostable_note(&unhostable)
        );
        return Some(change(current, cap, "fit", why));
    };
    if needed > current {
        let why = format!(
            "the models' {} replicas need {needed} server replicas{}",
            total_replicas(&hostable),
            unhostable_note(&unhostable)
        );
        return Some(change(current, needed, "fit", why));
    }

    let keep = floor.max(needed);
    let empty_target = empty_target(cfg, state, input, keep);
    let pack_target = if pack_due && cfg.max_moves_per_period > 0 && keep < current {
        pack_target(cfg, input, keep)
    } else {
        current
    };
    let moves = moves_above(input, pack_target);
    // A pack that moves nothing only removes empty replicas: that is the empty policy's
    // job, with its delay.
    if pack_target < empty_target && moves > 0 {
        let why = format!(
            "the models fit on {needed} server replicas (min {floor}); moving {moves} model \
             replicas (at most {} per step) off replicas {pack_target}..{}",
            cfg.max_moves_per_period,
            current - 1
        );
        return Some(change(current, pack_target, "pack", why));
    }
    if empty_target < current {
        let why = format!(
            "replicas {empty_target}..{} empty for at least {} s (min {floor}, models need \
             {needed})",
            current - 1,
            num(cfg.scale_down_delay_ms as f64 / 1000.0)
        );
        return Some(change(current, empty_target, "empty", why));
    }
    None
}

/// Whether packing is checked now; starts the pack clock at the first call.
fn pack_due(cfg: &ServerPlanConfig, state: &mut ServerPlanState, now: u64, removed: bool) -> bool {
    let due = match state.last_pack_check_ms {
        None => {
            state.last_pack_check_ms = Some(now);
            removed
        }
        Some(last) => removed || now.saturating_sub(last) >= cfg.pack_period_ms,
    };
    if due {
        state.last_pack_check_ms = Some(now);
    }
    due
}

/// Models that one replica like the template could hold, and the names of the others.
fn split_hostable(input: &ServerPlanInput<'_>) -> (Vec<ModelDemand>, Vec<String>) {
    let mut hostable = Vec::new();
    let mut unhostable = Vec::new();
    for model in input.models.iter().filter(|m| m.replicas > 0) {
        let one = ModelDemand {
            replicas: 1,
            current: None,
            ..model.clone()
        };
        if replicas_needed(input.server, std::slice::from_ref(&one), 1).is_some() {
            hostable.push(model.clone());
        } else {
            unhostable.push(model.name.to_string());
        }
    }
    (hostable, unhostable)
}

fn unhostable_note(unhostable: &[String]) -> String {
    if unhostable.is_empty() {
        String::new()
    } else {
        format!(
            " (left out, no replica of this server can hold them: {})",
            unhostable.join(", ")
        )
    }
}

fn total_replicas(models: &[ModelDemand]) -> u64 {
    models.iter().map(|m| u64::from(m.replicas)).sum()
}

/// The lowest count reached by releasing empty replicas from the highest ordinal down,
/// each empty for at least the delay, not below `keep`.
fn empty_target(
    cfg: &ServerPlanConfig,
    state: &ServerPlanState,
    input: &ServerPlanInput<'_>,
    keep: u32,
) -> u32 {
    let mut target = input.current_replicas;
    while target > keep {
        let index = ReplicaIndex(target - 1);
        let released = state
            .empty_since
            .get(&index)
            .is_some_and(|&since| input.now_ms.saturating_sub(since) >= cfg.scale_down_delay_ms);
        if !released {
            break;
        }
        target -= 1;
    }
    target
}

/// Model replicas hosted per server replica, from the models' current placements here.
fn hosted(input: &ServerPlanInput<'_>) -> BTreeMap<ReplicaIndex, u32> {
    let mut hosted = BTreeMap::new();
    for model in input.models {
        let Some(current) = &model.current else {
            continue;
        };
        if current.server != input.server.name {
            continue;
        }
        for &index in &current.replicas {
            let n: &mut u32 = hosted.entry(index).or_default();
            *n = n.saturating_add(1);
        }
    }
    hosted
}

/// Model replicas on replicas `from..current_replicas`.
fn moves_above(input: &ServerPlanInput<'_>, from: u32) -> u64 {
    hosted(input)
        .range(ReplicaIndex(from)..ReplicaIndex(input.current_replicas))
        .map(|(_, &n)| u64::from(n))
        .sum()
}

/// The lowest count `>= keep` whose removed replicas host at most `max_moves_per_period`
/// model replicas.
fn pack_target(cfg: &ServerPlanConfig, input: &ServerPlanInput<'_>, keep: u32) -> u32 {
    let hosted = hosted(input);
    let mut target = input.current_replicas;
    let mut moves = 0u64;
    while target > keep {
        let on_next = hosted.get(&ReplicaIndex(target - 1)).copied().unwrap_or(0);
        let total = moves.saturating_add(u64::from(on_next));
        if total > u64::from(cfg.max_moves_per_period) {
            break;
        }
        moves = total;
        target -= 1;
    }
    target
}

fn change(from: u32, to: u32, reason_kind: &'static str, why: String) -> ServerDecision {
    let (direction, reason) = step(from, to, &why);
    ServerDecision {
        replicas: to,
        direction,
        reason,
        reason_kind,
    }
}
