//! Placement scenarios: the cases of Seldon's `scheduler/pkg/scheduler/scheduler_test.go`
//! (`seldon-core2-semantics.md` §2) plus coscale's own rules (determinism, low ordinals,
//! never moving a model just to scale it up).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::placement::{
    place, CurrentPlacement, Decision, ModelDemand, Outcome, ReplicaView, ScheduleFailure,
    ServerView,
};

const GIB: u64 = 1 << 30;

fn replica(index: u32, memory_bytes: u64) -> ReplicaView {
    ReplicaView {
        index: ReplicaIndex(index),
        capabilities: vec!["mlserver".into(), "sklearn".into()],
        memory_bytes,
        reserved_bytes: 0,
        draining: false,
    }
}

fn server(name: &str, replicas: u32, memory_bytes: u64) -> ServerView {
    ServerView {
        name: ServerName::new(name),
        replicas: (0..replicas).map(|i| replica(i, memory_bytes)).collect(),
        accepting: true,
    }
}

fn model(name: &str, replicas: u32, memory_bytes: u64) -> ModelDemand {
    ModelDemand {
        name: ModelName::new(name),
        requirements: vec!["sklearn".into()],
        memory_bytes,
        replicas,
        min_replicas: 0,
        server: None,
        current: None,
    }
}

fn on(server: &str, replicas: &[u32]) -> Option<CurrentPlacement> {
    Some(CurrentPlacement {
        server: ServerName::new(server),
        replicas: ordinals(replicas),
    })
}

fn ordinals(replicas: &[u32]) -> BTreeSet<ReplicaIndex> {
    replicas.iter().copied().map(ReplicaIndex).collect()
}

fn place_one(servers: &[ServerView], m: ModelDemand) -> Decision {
    let mut decisions = place(servers, &[m]);
    assert_eq!(decisions.len(), 1);
    decisions.remove(0)
}

fn assert_placed(d: &Decision, server: &str, replicas: &[u32]) {
    assert_eq!(d.server, Some(ServerName::new(server)), "{d:?}");
    assert_eq!(d.replicas, ordinals(replicas), "{d:?}");
}

fn reason(d: &Decision) -> &ScheduleFailure {
    match &d.outcome {
        Outcome::Partial { reason } | Outcome::Failed { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn smoke_model_lands_on_the_only_replica() {
    let d = place_one(&[server("mlserver", 1, GIB)], model("iris", 1, GIB / 4));
    assert_placed(&d, "mlserver", &[0]);
    assert_eq!(d.outcome, Outcome::Complete);
}

#[test]
fn two_replicas_use_two_server_replicas() {
    let d = place_one(&[server("mlserver", 2, GIB)], model("iris", 2, GIB / 4));
    assert_placed(&d, "mlserver", &[0, 1]);
    assert_eq!(d.outcome, Outcome::Complete);
}

#[test]
fn not_enough_replicas_fails_and_names_the_server_to_grow() {
    let d = place_one(&[server("mlserver", 1, GIB)], model("iris", 2, GIB / 4));
    assert!(d.replicas.is_empty());
    assert_eq!(d.server, Some(ServerName::new("mlserver")));
    assert_eq!(
        d.outcome,
        Outcome::Failed {
            reason: ScheduleFailure::NotEnoughReplicas {
                server: ServerName::new("mlserver"),
                desired: 2,
                suitable: 1,
            }
        }
    );
}

#[test]
fn partial_scheduling_places_min_replicas_when_desired_does_not_fit() {
    let mut m = model("iris", 3, GIB / 4);
    m.min_replicas = 2;
    let d = place_one(&[server("mlserver", 2, GIB)], m);
    assert_placed(&d, "mlserver", &[0, 1]);
    assert!(matches!(
        d.outcome,
        Outcome::Partial {
            reason: ScheduleFailure::NotEnoughReplicas {
                desired: 3,
                suitable: 2,
                ..
            }
        }
    ));
}

#[test]
fn partial_scheduling_uses_every_replica_the_server_has() {
    let mut m = model("iris", 5, GIB / 4);
    m.min_replicas = 3;
    let d = place_one(&[server("mlserver", 4, GIB)], m);
    assert_placed(&d, "mlserver", &[0, 1, 2, 3]);
    assert!(matches!(d.outcome, Outcome::Partial { .. }));
}

#[test]
fn partial_scheduling_fails_below_min_replicas() {
    let mut m = model("iris", 5, GIB / 4);
    m.min_replicas = 3;
    let d = place_one(&[server("mlserver", 2, GIB)], m);
    assert!(d.replicas.is_empty());
    assert!(matches!(d.outcome, Outcome::Failed { .. }));
}

#[test]
fn models_share_a_replica_until_its_memory_is_used_up() {
    let servers = [server("mlserver", 2, 100)];
    let models = [model("a", 1, 60), model("b", 1, 40), model("c", 1, 60)];
    let d = place(&servers, &models);
    // First fit decreasing: a (60) and c (60) first, by name, then b (40).
    assert_placed(&d[0], "mlserver", &[0]);
    assert_placed(&d[2], "mlserver", &[1]);
    assert_placed(&d[1], "mlserver", &[0]);
    assert!(d.iter().all(|d| d.outcome == Outcome::Complete));
}

#[test]
fn a_model_larger_than_any_free_replica_fails_with_not_enough_memory() {
    let servers = [server("mlserver", 2, 100)];
    let models = [model("big", 1, 80), model("bigger", 2, 90)];
    let d = place(&servers, &models);
    assert_placed(&d[1], "mlserver", &[0, 1]);
    assert!(d[0].replicas.is_empty());
    assert_eq!(
        *reason(&d[0]),
        ScheduleFailure::NotEnoughMemory {
            server: ServerName::new("mlserver"),
            needed_bytes: 80,
            missing: 1,
            largest_free_bytes: 10,
        }
    );
    let text = reason(&d[0]).to_string();
    assert!(text.contains("mlserver") && text.contains("80"), "{text}");
}

#[test]
fn reserved_memory_above_capacity_leaves_no_room_and_does_not_underflow() {
    let mut s = server("mlserver", 2, 100);
    s.replicas[0].reserved_bytes = 500;
    s.replicas[1].reserved_bytes = 29;
    let d = place(&[s], &[model("a", 1, 70), model("b", 1, 1)]);
    assert_placed(&d[0], "mlserver", &[1]);
    assert_placed(&d[1], "mlserver", &[1]);
}

#[test]
fn model_moves_off_a_server_that_no_longer_accepts_models() {
    let mut old = server("a-old", 2, GIB);
    old.accepting = false;
    let mut m = model("iris", 1, GIB / 4);
    m.current = on("a-old", &[0]);
    let d = place_one(&[old, server("b-new", 2, GIB)], m);
    assert_placed(&d, "b-new", &[0]);
    assert_eq!(d.outcome, Outcome::Complete);
}

#[test]
fn model_moves_off_a_server_whose_replicas_all_disconnected() {
    let mut m = model("iris", 1, GIB / 4);
    m.current = on("gone", &[0, 1]);
    let d = place_one(&[server("other", 1, GIB)], m);
    assert_placed(&d, "other", &[0]);
}

#[test]
fn model_on_a_draining_replica_moves_to_another_replica_of_its_server() {
    let mut s = server("mlserver", 2, GIB);
    s.replicas[1].draining = true;
    let mut m = model("iris", 1, GIB / 4);
    m.current = on("mlserver", &[1]);
    let d = place_one(&[s], m);
    assert_placed(&d, "mlserver", &[0]);
    assert_eq!(d.outcome, Outcome::Complete);
}

#[test]
fn model_whose_server_is_all_draining_moves_to_another_server() {
    let mut s = server("a", 1, GIB);
    s.replicas[0].draining = true;
    let mut m = model("iris", 1, GIB / 4);
    m.current = on("a", &[0]);
    let d = place_one(&[s, server("b", 1, GIB)], m);
    assert_placed(&d, "b", &[0]);
}

#[test]
fn scale_up_keeps_existing_replicas_and_adds_the_lowest_free_ordinals() {
    let mut m = model("iris", 3, GIB / 4);
    m.current = on("mlserver", &[2]);
    let d = place_one(&[server("mlserver", 4, GIB)], m);
    assert_placed(&d, "mlserver", &[0, 1, 2]);
    assert_eq!(d.outcome, Outcome::Complete);
}

#[test]
fn scale_down_drops_the_highest_ordinals_first() {
    let mut m = model("iris", 2, GIB / 4);
    m.current = on("mlserver", &[0, 1, 3]);
    let d = place_one(&[server("mlserver", 4, GIB)], m);
    assert_placed(&d, "mlserver", &[0, 1]);
}

#[test]
fn a_model_never_moves_just_to_scale_up() {
    let mut m = model("iris", 3, GIB / 4);
    m.current = on("a", &[0]);
    let d = place_one(&[server("a", 2, GIB), server("b", 3, GIB)], m);
    assert_placed(&d, "a", &[0, 1]);
    assert_eq!(
        d.outcome,
        Outcome::Failed {
            reason: ScheduleFailure::NotEnoughReplicas {
                server: ServerName::new("a"),
                desired: 3,
                suitable: 2,
            }
        }
    );
}

#[test]
fn larger_models_take_memory_before_smaller_ones() {
    let mut m = model("iris", 3, 60);
    m.min_replicas = 1;
    m.current = on("a", &[1]);
    let servers = [server("a", 3, 100)];
    let other = model("other", 1, 50);
    let d = place(&servers, &[m, other]);
    // "iris" (60) goes first: keeps 1, adds 0 and 2; "other" (50) then has no room.
    assert_placed(&d[0], "a", &[0, 1, 2]);
    assert_eq!(d[0].outcome, Outcome::Complete);
    assert!(matches!(
        d[1].outcome,
        Outcome::Failed {
            reason: ScheduleFailure::NotEnoughMemory { .. }
        }
    ));
}

#[test]
fn a_kept_model_that_cannot_grow_reports_partial_when_over_min() {
    let mut m = model("iris", 3, 60);
    m.min_replicas = 1;
    m.current = on("a", &[1]);
    let big = model("big", 2, 90);
    let d = place(&[server("a", 3, 100)], &[m, big]);
    // Kept replica 1; "big" (90) takes 0 and 2 first; "iris" cannot grow.
    assert_placed(&d[1], "a", &[0, 2]);
    assert_placed(&d[0], "a", &[1]);
    assert!(matches!(
        d[0].outcome,
        Outcome::Partial {
            reason: ScheduleFailure::NotEnoughMemory { missing: 2, .. }
        }
    ));
}

#[test]
fn pinned_model_goes_to_its_server_only() {
    let mut m = model("iris", 1, GIB / 4);
    m.server = Some(ServerName::new("z"));
    let d = place_one(&[server("a", 1, GIB), server("z", 1, GIB)], m);
    assert_placed(&d, "z", &[0]);
}

#[test]
fn pinned_model_on_a_missing_server_fails_and_names_that_server() {
    let mut m = model("iris", 1, GIB / 4);
    m.server = Some(ServerName::new("triton"));
    let d = place_one(&[server("mlserver", 1, GIB)], m);
    assert_eq!(d.server, Some(ServerName::new("triton")));
    assert_eq!(
        *reason(&d),
        ScheduleFailure::PinnedServerNotFound {
            server: ServerName::new("triton")
        }
    );
}

#[test]
fn pinned_model_on_a_server_scaled_to_zero_fails_as_unavailable() {
    let mut m = model("iris", 1, GIB / 4);
    m.server = Some(ServerName::new("mlserver"));
    let mut s = server("mlserver", 1, GIB);
    s.accepting = false;
    let d = place_one(&[s], m);
    assert!(matches!(
        reason(&d),
        ScheduleFailure::PinnedServerUnavailable { .. }
    ));
}

#[test]
fn capability_mismatch_fails_with_no_matching_server() {
    let mut m = model("iris", 1, GIB / 4);
    m.requirements = vec!["tensorflow".into()];
    let d = place_one(&[server("mlserver", 2, GIB)], m);
    assert_eq!(d.server, None);
    assert_eq!(
        *reason(&d),
        ScheduleFailure::NoMatchingServer {
            requirements: vec!["tensorflow".into()]
        }
    );
    assert!(reason(&d).to_string().contains("tensorflow"));
}

#[test]
fn requirements_are_trimmed_but_case_sensitive() {
    let servers = [server("mlserver", 1, GIB)];
    let mut trimmed = model("trimmed", 1, 1);
    trimmed.requirements = vec!["  sklearn ".into(), String::new()];
    let mut cased = model("cased", 1, 1);
    cased.requirements = vec!["SKLearn".into()];
    let d = place(&servers, &[trimmed, cased]);
    assert_eq!(d[0].outcome, Outcome::Complete);
    assert!(matches!(
        d[1].outcome,
        Outcome::Failed {
            reason: ScheduleFailure::NoMatchingServer { .. }
        }
    ));
}

#[test]
fn capabilities_are_checked_on_every_replica() {
    let mut s = server("mlserver", 3, GIB);
    s.replicas[0].capabilities = vec!["mlserver".into()];
    let d = place_one(&[s], model("iris", 2, 1));
    assert_placed(&d, "mlserver", &[1, 2]);
}

#[test]
fn no_connected_servers_fails_with_no_servers() {
    let d = place_one(&[server("mlserver", 0, GIB)], model("iris", 1, 1));
    assert_eq!(*reason(&d), ScheduleFailure::NoServers);
}

#[test]
fn servers_are_chosen_by_name_when_several_fit() {
    let d = place_one(
        &[server("b", 1, GIB), server("a", 1, GIB)],
        model("iris", 1, 1),
    );
    assert_placed(&d, "a", &[0]);
}

#[test]
fn a_server_where_all_replicas_fit_wins_over_an_earlier_partial_fit() {
    let mut m = model("iris", 3, 1);
    m.min_replicas = 1;
    let d = place_one(&[server("a", 2, GIB), server("b", 3, GIB)], m);
    assert_placed(&d, "b", &[0, 1, 2]);
    assert_eq!(d.outcome, Outcome::Complete);
}

#[test]
fn zero_replicas_scale_a_model_to_zero() {
    let mut m = model("iris", 0, 1);
    m.current = on("a", &[0]);
    let d = place_one(&[server("a", 1, GIB)], m);
    assert_eq!(d.outcome, Outcome::ScaledToZero);
    assert!(d.replicas.is_empty());
    assert_eq!(d.server, None);
}

#[test]
fn decisions_come_back_in_input_order() {
    let models = [model("z", 1, 1), model("a", 1, 5), model("m", 1, 3)];
    let d = place(&[server("s", 1, GIB)], &models);
    let names: Vec<_> = d.iter().map(|d| d.model.as_str()).collect();
    assert_eq!(names, ["z", "a", "m"]);
}

#[test]
fn the_highest_ordinal_empties_first_when_models_leave() {
    let servers = [server("s", 3, 100)];
    let mut a = model("a", 1, 60);
    a.current = on("s", &[0]);
    let mut b = model("b", 1, 60);
    b.current = on("s", &[1]);
    let mut c = model("c", 0, 60);
    c.current = on("s", &[2]);
    let mut d_model = model("d", 1, 30);
    d_model.current = None;
    let d = place(&servers, &[a, b, c, d_model]);
    assert_placed(&d[3], "s", &[0]);
    assert!(d.iter().all(|d| !d.replicas.contains(&ReplicaIndex(2))));
}
