//! Native server autoscaling: scale-up to a count that fits, empty-replica release after a
//! delay, bounded deterministic packing, bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use coscale_core::autoscale::{
    plan_server, Direction, ServerDecision, ServerPlanConfig, ServerPlanInput, ServerPlanState,
};
use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::placement::{
    place, replicas_needed, CurrentPlacement, ModelDemand, Outcome, ReplicaView, ServerView,
};
use proptest::prelude::*;

const UNSET: u32 = u32::MAX;
const GB: u64 = 1 << 30;

fn server(replicas: u32, memory_bytes: u64) -> ServerView {
    ServerView {
        name: ServerName::new("mlserver"),
        replicas: (0..replicas)
            .map(|i| ReplicaView {
                index: ReplicaIndex(i),
                capabilities: vec!["sklearn".to_owned()],
                memory_bytes,
                reserved_bytes: 0,
                draining: false,
            })
            .collect(),
        accepting: true,
    }
}

fn model(name: &str, replicas: u32, memory_bytes: u64, on: &[u32]) -> ModelDemand {
    ModelDemand {
        name: ModelName::new(name),
        requirements: vec!["sklearn".to_owned()],
        memory_bytes,
        replicas,
        min_replicas: 0,
        server: None,
        current: (!on.is_empty()).then(|| CurrentPlacement {
            server: ServerName::new("mlserver"),
            replicas: on.iter().map(|&i| ReplicaIndex(i)).collect(),
        }),
    }
}

fn empties(indices: &[u32]) -> BTreeSet<ReplicaIndex> {
    indices.iter().map(|&i| ReplicaIndex(i)).collect()
}

fn input<'a>(
    server: &'a ServerView,
    models: &'a [ModelDemand],
    min: u32,
    max: u32,
    empty: &[u32],
    now_ms: u64,
) -> ServerPlanInput<'a> {
    ServerPlanInput {
        server,
        current_replicas: u32::try_from(server.replicas.len()).unwrap(),
        min_replicas: min,
        max_replicas: max,
        models,
        empty_replicas: empties(empty),
        now_ms,
    }
}

fn plan(
    cfg: &ServerPlanConfig,
    state: &mut ServerPlanState,
    i: &ServerPlanInput<'_>,
    removed: bool,
) -> Option<ServerDecision> {
    plan_server(cfg, state, i, removed)
}

#[test]
fn scales_up_to_the_count_that_holds_every_model_replica() {
    let s = server(2, 4 * GB);
    let models = [
        model("a", 3, 3 * GB, &[0, 1]),
        model("b", 2, 2 * GB, &[0, 1]),
    ];
    let mut state = ServerPlanState::default();
    let d = plan(
        &ServerPlanConfig::default(),
        &mut state,
        &input(&s, &models, 0, UNSET, &[], 0),
        false,
    )
    .unwrap();
    assert_eq!((d.direction, d.reason_kind), (Direction::Up, "fit"));
    assert_eq!(d.replicas, replicas_needed(&s, &models, UNSET).unwrap());
    assert!(
        d.reason.ends_with(&format!(": 2 -> {}", d.replicas)),
        "{}",
        d.reason
    );
    let fresh: Vec<ModelDemand> = models
        .iter()
        .map(|m| ModelDemand {
            current: None,
            ..m.clone()
        })
        .collect();
    let bigger = server(d.replicas, 4 * GB);
    assert!(place(&[bigger], &fresh)
        .iter()
        .all(|x| x.outcome == Outcome::Complete));
}

#[test]
fn scale_up_stops_at_max_and_says_the_models_need_more() {
    let s = server(2, 4 * GB);
    let models = [model("a", 6, GB, &[0, 1])];
    let mut state = ServerPlanState::default();
    let d = plan(
        &ServerPlanConfig::default(),
        &mut state,
        &input(&s, &models, 0, 4, &[], 0),
        false,
    )
    .unwrap();
    assert_eq!(d.replicas, 4);
    assert!(d.reason.contains("more than max 4"), "{}", d.reason);
    let at_max = server(4, 4 * GB);
    let none = plan(
        &ServerPlanConfig::default(),
        &mut state,
        &input(&at_max, &models, 0, 4, &[], 0),
        false,
    );
    assert_eq!(none, None);
}

#[test]
fn models_no_replica_can_hold_do_not_drive_scale_up_and_are_named() {
    let s = server(1, 4 * GB);
    let mut gpu = model("gpu-model", 5, GB, &[]);
    gpu.requirements = vec!["gpu".to_owned()];
    let huge = model("huge", 5, 8 * GB, &[]);
    let models = [model("a", 2, GB, &[0]), gpu, huge];
    let mut state = ServerPlanState::default();
    let d = plan(
        &ServerPlanConfig::default(),
        &mut state,
        &input(&s, &models, 0, UNSET, &[], 0),
        false,
    )
    .unwrap();
    assert_eq!(d.replicas, 2);
    assert!(d.reason.contains("gpu-model, huge"), "{}", d.reason);
}

#[test]
fn empty_highest_replicas_are_released_only_after_the_delay() {
    let cfg = ServerPlanConfig {
        max_moves_per_period: 0,
        pack_period_ms: 60_000,
        scale_down_delay_ms: 30_000,
    };
    let s = server(4, 4 * GB);
    let models = [model("a", 2, GB, &[0, 1])];
    let mut state = ServerPlanState::default();
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[2, 3], 1_000),
            true
        ),
        None
    );
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[2, 3], 30_999),
            false
        ),
        None
    );
    let d = plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[2, 3], 31_000),
        false,
    )
    .unwrap();
    assert_eq!(
        (d.replicas, d.direction, d.reason_kind),
        (2, Direction::Down, "empty")
    );
}

#[test]
fn a_replica_that_fills_again_restarts_its_delay() {
    let cfg = ServerPlanConfig::default();
    let s = server(3, 4 * GB);
    let models = [model("a", 2, GB, &[0, 1])];
    let mut state = ServerPlanState::default();
    plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[2], 0),
        false,
    );
    plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[], 20_000),
        false,
    );
    assert!(state.empty_since().is_empty());
    plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[2], 25_000),
        false,
    );
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[2], 50_000),
            false
        ),
        None
    );
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[2], 55_000),
            false
        )
        .unwrap()
        .replicas,
        2
    );
}

#[test]
fn an_empty_replica_below_a_busy_one_is_not_released_by_the_empty_policy() {
    let cfg = ServerPlanConfig {
        max_moves_per_period: 0,
        ..ServerPlanConfig::default()
    };
    let s = server(3, 4 * GB);
    let models = [model("a", 2, GB, &[0, 2])];
    let mut state = ServerPlanState::default();
    plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[1], 0),
        false,
    );
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[1], 600_000),
            false
        ),
        None
    );
}

#[test]
fn empty_release_never_goes_below_min_nor_below_what_the_models_need() {
    let cfg = ServerPlanConfig::default();
    let s = server(5, 4 * GB);
    let models = [model("a", 2, GB, &[0, 1])];
    let mut state = ServerPlanState::default();
    plan(
        &cfg,
        &mut state,
        &input(&s, &models, 4, UNSET, &[2, 3, 4], 0),
        false,
    );
    let d = plan(
        &cfg,
        &mut state,
        &input(&s, &models, 4, UNSET, &[2, 3, 4], 60_000),
        false,
    );
    assert_eq!(d.unwrap().replicas, 4);

    // Replicas 2..4 are empty, but 3 model replicas are wanted: two replicas stay for them.
    let wanting = [model("a", 4, GB, &[0, 1])];
    let mut state = ServerPlanState::default();
    plan(
        &cfg,
        &mut state,
        &input(&s, &wanting, 0, UNSET, &[2, 3, 4], 0),
        false,
    );
    let d = plan(
        &cfg,
        &mut state,
        &input(&s, &wanting, 0, UNSET, &[2, 3, 4], 60_000),
        false,
    );
    assert_eq!(d.unwrap().replicas, 4);
}

#[test]
fn packing_releases_one_replica_when_a_and_b_fit_together_after_c_is_removed() {
    // seldon-core2-semantics.md §4.3: S1 hosts A and C, S2 hosts B and C. C is deleted;
    // A and B (one replica each) now fit on one replica, so the server shrinks to one and
    // B moves from S2 to S1.
    let cfg = ServerPlanConfig::default();
    let s = server(2, 4 * GB);
    let models = [model("a", 1, GB, &[0]), model("b", 1, GB, &[1])];
    let mut state = ServerPlanState::default();
    let d = plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[], 0),
        true,
    )
    .unwrap();
    assert_eq!(
        (d.replicas, d.direction, d.reason_kind),
        (1, Direction::Down, "pack")
    );
    assert!(d.reason.contains("moving 1 model replicas"), "{}", d.reason);
    assert_eq!(state.last_pack_check_ms(), Some(0));
}

#[test]
fn packing_waits_for_a_removal_or_the_pack_period() {
    let cfg = ServerPlanConfig {
        max_moves_per_period: 5,
        pack_period_ms: 60_000,
        scale_down_delay_ms: 30_000,
    };
    let s = server(2, 4 * GB);
    let models = [model("a", 1, GB, &[0]), model("b", 1, GB, &[1])];
    let mut state = ServerPlanState::default();
    // The first call starts the clock: a restart never packs at once.
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[], 0),
            false
        ),
        None
    );
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[], 59_999),
            false
        ),
        None
    );
    let d = plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[], 60_000),
        false,
    )
    .unwrap();
    assert_eq!((d.replicas, d.reason_kind), (1, "pack"));
}

#[test]
fn packing_never_moves_more_than_max_moves_per_period() {
    let cfg = ServerPlanConfig {
        max_moves_per_period: 2,
        ..ServerPlanConfig::default()
    };
    // Four replicas; everything fits on one. Replica 3 hosts 2 models, replica 2 hosts 1.
    let s = server(4, 10 * GB);
    let models = [
        model("a", 1, GB, &[0]),
        model("b", 1, GB, &[1]),
        model("c", 1, GB, &[2]),
        model("d", 1, GB, &[3]),
        model("e", 1, GB, &[3]),
    ];
    let mut state = ServerPlanState::default();
    let d = plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[], 0),
        true,
    )
    .unwrap();
    assert_eq!(d.replicas, 3);
    let cfg = ServerPlanConfig {
        max_moves_per_period: 3,
        ..cfg
    };
    let d = plan(
        &cfg,
        &mut state,
        &input(&s, &models, 0, UNSET, &[], 1),
        true,
    )
    .unwrap();
    assert_eq!(d.replicas, 2);
    let cfg = ServerPlanConfig {
        max_moves_per_period: 1,
        ..cfg
    };
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[], 2),
            true
        ),
        None
    );
}

#[test]
fn packing_that_would_move_nothing_leaves_empty_replicas_to_their_delay() {
    let cfg = ServerPlanConfig::default();
    let s = server(3, 4 * GB);
    let models = [model("a", 2, GB, &[0, 1])];
    let mut state = ServerPlanState::default();
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&s, &models, 0, UNSET, &[2], 0),
            true
        ),
        None
    );
}

#[test]
fn a_one_replica_server_is_never_scaled_down_and_a_server_at_zero_is_left_alone() {
    let cfg = ServerPlanConfig::default();
    let one = server(1, 4 * GB);
    let mut state = ServerPlanState::default();
    plan(&cfg, &mut state, &input(&one, &[], 0, UNSET, &[0], 0), true);
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&one, &[], 0, UNSET, &[0], 600_000),
            true
        ),
        None
    );
    let zero = server(0, 4 * GB);
    let models = [model("a", 2, GB, &[])];
    assert_eq!(
        plan(
            &cfg,
            &mut state,
            &input(&zero, &models, 0, UNSET, &[], 0),
            true
        ),
        None
    );
}

#[test]
fn a_count_outside_the_bounds_is_brought_to_the_nearest_bound() {
    let cfg = ServerPlanConfig::default();
    let s = server(2, 4 * GB);
    let mut state = ServerPlanState::default();
    let d = plan(&cfg, &mut state, &input(&s, &[], 3, UNSET, &[], 0), false).unwrap();
    assert_eq!((d.replicas, d.reason_kind), (3, "bounds"));
    let d = plan(&cfg, &mut state, &input(&s, &[], 0, 1, &[], 0), false).unwrap();
    assert_eq!((d.replicas, d.direction), (1, Direction::Down));
}

/// A model as (replicas, memory in GB, current replica ordinals).
type ModelSpec = (u32, u64, Vec<u32>);
/// (server replicas, models, min, max, empty replica ordinals).
type Case = (u32, Vec<ModelSpec>, u32, Option<u32>, Vec<u32>);

fn fleet_case() -> impl Strategy<Value = Case> {
    (1u32..8).prop_flat_map(|n| {
        (
            Just(n),
            prop::collection::vec((0u32..6, 1u64..5, prop::collection::vec(0..n, 0..3)), 0..6),
            0u32..5,
            prop::option::of(1u32..10),
            prop::collection::vec(0..n, 0..4),
        )
    })
}

fn build(n: u32, specs: &[ModelSpec]) -> (ServerView, Vec<ModelDemand>) {
    let s = server(n, 4 * GB);
    let models = specs
        .iter()
        .enumerate()
        .map(|(i, (r, mem, on))| model(&format!("m{i}"), *r, mem * GB, on))
        .collect();
    (s, models)
}

proptest! {
    #[test]
    fn decisions_stay_in_bounds_and_never_below_what_the_models_need(
        (n, specs, min, max, empty) in fleet_case(),
        removed in any::<bool>(),
        moves in 0u32..4,
        gap in 0u64..200_000,
    ) {
        let (s, models) = build(n, &specs);
        let max = max.unwrap_or(UNSET);
        let cfg = ServerPlanConfig { max_moves_per_period: moves, ..ServerPlanConfig::default() };
        let mut state = ServerPlanState::default();
        let first = input(&s, &models, min, max, &empty, 0);
        let later = input(&s, &models, min, max, &empty, gap);
        let floor = min.max(1);
        let cap = max.max(floor);
        for i in [&first, &later] {
            if let Some(d) = plan(&cfg, &mut state, i, removed) {
                prop_assert!(d.replicas >= floor && d.replicas <= cap, "{d:?}");
                let in_bounds = (floor..=cap).contains(&n);
                if in_bounds && d.direction == Direction::Down {
                    let needed = replicas_needed(&s, &models, u32::MAX);
                    prop_assert!(needed.is_none_or(|k| d.replicas >= k), "{d:?} needs {needed:?}");
                }
                if in_bounds && d.direction == Direction::Up && d.replicas < cap {
                    // The count fits: placement on that many fresh replicas is complete.
                    let fresh: Vec<ModelDemand> = models.iter()
                        .map(|m| ModelDemand { current: None, ..m.clone() }).collect();
                    let bigger = server(d.replicas, 4 * GB);
                    prop_assert!(place(&[bigger], &fresh).iter()
                        .all(|x| x.outcome == Outcome::Complete || x.outcome == Outcome::ScaledToZero));
                }
            }
        }
    }

    #[test]
    fn a_scale_down_is_not_followed_by_a_scale_up_for_the_same_models(
        (n, specs, min, max, empty) in fleet_case(),
        gap in 0u64..200_000,
    ) {
        let (s, models) = build(n, &specs);
        let max = max.unwrap_or(UNSET);
        let cfg = ServerPlanConfig { max_moves_per_period: 3, ..ServerPlanConfig::default() };
        let mut state = ServerPlanState::default();
        plan(&cfg, &mut state, &input(&s, &models, min, max, &empty, 0), true);
        if let Some(d) = plan(&cfg, &mut state, &input(&s, &models, min, max, &empty, gap), true) {
            if d.direction == Direction::Down {
                let smaller = server(d.replicas, 4 * GB);
                let mut again = ServerPlanState::default();
                let next = plan(&cfg, &mut again, &input(&smaller, &models, min, max, &[], gap), false);
                prop_assert!(next.as_ref().is_none_or(|x| x.direction == Direction::Down), "{next:?}");
            }
        }
    }

    #[test]
    fn packing_moves_at_most_max_moves_per_period(
        (n, specs, min, max, empty) in fleet_case(),
        moves in 1u32..4,
    ) {
        let (s, models) = build(n, &specs);
        let max = max.unwrap_or(UNSET);
        let cfg = ServerPlanConfig { max_moves_per_period: moves, ..ServerPlanConfig::default() };
        let mut state = ServerPlanState::default();
        if let Some(d) = plan(&cfg, &mut state, &input(&s, &models, min, max, &empty, 0), true) {
            if d.reason_kind == "pack" {
                let moved: usize = models.iter()
                    .filter_map(|m| m.current.as_ref())
                    .map(|c| c.replicas.iter().filter(|r| r.0 >= d.replicas).count())
                    .sum();
                prop_assert!(moved >= 1 && moved <= moves as usize, "{d:?} moved {moved}");
            }
        }
    }
}
