//! Placement invariants over random fleets and demands (proptest), and the contract of
//! `replicas_needed` against `place`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use coscale_core::ids::{ModelName, ReplicaIndex, ServerName};
use coscale_core::placement::{
    place, replicas_needed, CurrentPlacement, Decision, ModelDemand, Outcome, ReplicaView,
    ServerView,
};
use proptest::prelude::*;

const SERVER_NAMES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const CAPABILITIES: [&str; 3] = ["sklearn", "xgboost", "gpu"];

fn capabilities(mask: u8) -> Vec<String> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, c)| (*c).to_owned())
        .collect()
}

fn replica_strategy(index: u32) -> impl Strategy<Value = ReplicaView> {
    (0u64..1_000, 0u64..400, 0u8..8, prop::bool::weighted(0.15)).prop_map(
        move |(memory_bytes, reserved_bytes, caps, draining)| ReplicaView {
            index: ReplicaIndex(index),
            capabilities: capabilities(caps | 1),
            memory_bytes,
            reserved_bytes,
            draining,
        },
    )
}

fn fleet_strategy() -> impl Strategy<Value = Vec<ServerView>> {
    prop::collection::vec(
        (0usize..6, prop::bool::weighted(0.9)).prop_flat_map(|(n, accepting)| {
            let replicas: Vec<_> = (0..n as u32).map(replica_strategy).collect();
            (replicas, Just(accepting))
        }),
        0..=SERVER_NAMES.len(),
    )
    .prop_map(|servers| {
        servers
            .into_iter()
            .zip(SERVER_NAMES)
            .map(|((replicas, accepting), name)| ServerView {
                name: ServerName::new(name),
                replicas,
                accepting,
            })
            .collect()
    })
}

fn demand_strategy(with_current: bool) -> impl Strategy<Value = Vec<ModelDemand>> {
    let pin = prop::option::weighted(0.2, 0usize..=SERVER_NAMES.len());
    let current = prop::option::weighted(
        0.5,
        (
            0usize..SERVER_NAMES.len(),
            prop::collection::btree_set(0u32..7, 0..4),
        ),
    );
    prop::collection::vec((0u64..500, 0u32..5, 0u32..4, 0u8..4, pin, current), 0..14).prop_map(
        move |models| {
            models
                .into_iter()
                .enumerate()
                .map(
                    |(i, (memory_bytes, replicas, min, reqs, pin, current))| ModelDemand {
                        name: ModelName::new(format!("m{i:02}")),
                        requirements: capabilities(reqs & 0b11),
                        memory_bytes,
                        replicas,
                        min_replicas: min.min(replicas),
                        server: pin
                            .map(|p| ServerName::new(*SERVER_NAMES.get(p).unwrap_or(&"ghost"))),
                        current: current
                            .filter(|_| with_current)
                            .map(|(s, rs)| CurrentPlacement {
                                server: ServerName::new(SERVER_NAMES[s]),
                                replicas: rs.into_iter().map(ReplicaIndex).collect(),
                            }),
                    },
                )
                .collect()
        },
    )
}

fn find<'a>(servers: &'a [ServerView], name: &ServerName) -> &'a ServerView {
    servers.iter().find(|s| &s.name == name).unwrap()
}

fn kept(model: &ModelDemand, server: &ServerName, index: ReplicaIndex) -> bool {
    model
        .current
        .as_ref()
        .is_some_and(|c| &c.server == server && c.replicas.contains(&index))
}

/// Checks every structural invariant of one placement run.
fn check_invariants(servers: &[ServerView], models: &[ModelDemand], decisions: &[Decision]) {
    assert_eq!(decisions.len(), models.len());
    // (server, replica) -> (memory of kept model replicas, memory of new ones)
    let mut load: BTreeMap<(ServerName, ReplicaIndex), (u64, u64)> = BTreeMap::new();
    for (model, d) in models.iter().zip(decisions) {
        assert_eq!(d.model, model.name);
        let placed = d.replicas.len() as u32;
        assert!(placed <= model.replicas, "{d:?}");
        match &d.outcome {
            Outcome::Complete => assert_eq!(placed, model.replicas, "{d:?}"),
            Outcome::Partial { .. } => {
                assert!(
                    model.min_replicas > 0 && placed >= model.min_replicas,
                    "{d:?}"
                );
                assert!(placed < model.replicas, "{d:?}");
            }
            Outcome::Failed { .. } => {
                assert!(placed < model.replicas, "{d:?}");
                assert!(
                    model.min_replicas == 0 || placed < model.min_replicas,
                    "{d:?}"
                );
            }
            Outcome::ScaledToZero => assert_eq!(model.replicas, 0),
        }
        if d.replicas.is_empty() {
            continue;
        }
        let name = d
            .server
            .as_ref()
            .expect("assigned replicas name their server");
        let server = find(servers, name);
        assert!(server.accepting, "{d:?}");
        if let Some(pin) = &model.server {
            assert_eq!(pin, name);
        }
        for &index in &d.replicas {
            let replica = server.replicas.iter().find(|r| r.index == index).unwrap();
            assert!(!replica.draining, "assigned to a draining replica: {d:?}");
            for requirement in &model.requirements {
                assert!(replica.capabilities.contains(requirement), "{d:?}");
            }
            let entry = load.entry((name.clone(), index)).or_default();
            if kept(model, name, index) {
                entry.0 += model.memory_bytes;
            } else {
                entry.1 += model.memory_bytes;
            }
        }
    }
    for ((name, index), (kept_bytes, new_bytes)) in load {
        let r = find(servers, &name)
            .replicas
            .iter()
            .find(|r| r.index == index)
            .unwrap();
        if new_bytes > 0 {
            assert!(
                r.reserved_bytes + kept_bytes + new_bytes <= r.memory_bytes,
                "{name}/{index} over capacity with new replicas"
            );
        }
    }
}

fn fed_back(models: &[ModelDemand], decisions: &[Decision]) -> Vec<ModelDemand> {
    models
        .iter()
        .zip(decisions)
        .map(|(m, d)| ModelDemand {
            current: d.as_current(),
            ..m.clone()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn placement_from_scratch_never_exceeds_capacity_and_keeps_outcomes_honest(
        servers in fleet_strategy(),
        models in demand_strategy(false),
    ) {
        let decisions = place(&servers, &models);
        check_invariants(&servers, &models, &decisions);
    }

    #[test]
    fn placement_with_arbitrary_current_assignments_only_adds_replicas_that_fit(
        servers in fleet_strategy(),
        models in demand_strategy(true),
    ) {
        let decisions = place(&servers, &models);
        check_invariants(&servers, &models, &decisions);
    }

    #[test]
    fn placement_is_deterministic(
        servers in fleet_strategy(),
        models in demand_strategy(true),
    ) {
        prop_assert_eq!(place(&servers, &models), place(&servers, &models));
    }

    #[test]
    fn placement_is_idempotent_when_its_output_is_fed_back(
        servers in fleet_strategy(),
        models in demand_strategy(true),
    ) {
        let first = place(&servers, &models);
        let again = fed_back(&models, &first);
        let second = place(&servers, &again);
        check_invariants(&servers, &again, &second);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn placement_keeps_every_still_valid_replica_up_to_the_desired_count(
        servers in fleet_strategy(),
        models in demand_strategy(true),
    ) {
        let decisions = place(&servers, &models);
        for (model, d) in models.iter().zip(&decisions) {
            let Some(current) = &model.current else { continue };
            let Some(server) = servers.iter().find(|s| s.name == current.server) else { continue };
            let valid: BTreeSet<ReplicaIndex> = current
                .replicas
                .iter()
                .copied()
                .filter(|i| server.replicas.iter().any(|r| {
                    r.index == *i
                        && !r.draining
                        && model.requirements.iter().all(|q| r.capabilities.contains(q))
                }))
                .take(model.replicas as usize)
                .collect();
            let pin_ok = model.server.as_ref().is_none_or(|p| p == &server.name);
            if valid.is_empty() || !server.accepting || !pin_ok {
                continue;
            }
            prop_assert_eq!(d.server.as_ref(), Some(&current.server));
            prop_assert!(d.replicas.is_superset(&valid), "{:?} lost some of {:?}", d, valid);
        }
    }

    #[test]
    fn replicas_needed_fits_exactly_and_one_fewer_does_not(
        memory in 1u64..1_000,
        reserved in 0u64..100,
        caps in 0u8..8,
        models in demand_strategy(false),
        max in 0u32..40,
    ) {
        let template = ServerView {
            name: ServerName::new("alpha"),
            replicas: vec![ReplicaView {
                index: ReplicaIndex(0),
                capabilities: capabilities(caps),
                memory_bytes: memory,
                reserved_bytes: reserved,
                draining: false,
            }],
            accepting: true,
        };
        let models: Vec<ModelDemand> = models
            .into_iter()
            .map(|m| ModelDemand { server: None, min_replicas: 0, ..m })
            .collect();
        let with = |n: u32| ServerView {
            replicas: (0..n)
                .map(|i| ReplicaView { index: ReplicaIndex(i), ..template.replicas[0].clone() })
                .collect(),
            ..template.clone()
        };
        let all_complete = |n: u32| {
            place(&[with(n)], &models)
                .iter()
                .all(|d| matches!(d.outcome, Outcome::Complete | Outcome::ScaledToZero))
        };
        match replicas_needed(&template, &models, max) {
            Some(n) => {
                prop_assert!(n <= max);
                let room = memory.saturating_sub(reserved);
                let total: u64 = models.iter().map(|m| m.memory_bytes * u64::from(m.replicas)).sum();
                let widest = models.iter().map(|m| m.replicas).max().unwrap_or(0);
                let by_memory = if room == 0 { 0 } else { total.div_ceil(room) as u32 };
                prop_assert!(n >= widest.max(by_memory), "below the lower bound");
                prop_assert!(all_complete(n), "{n} replicas do not fit");
                if n > 0 {
                    prop_assert!(!all_complete(n - 1), "{} replicas already fit", n - 1);
                }
            }
            None => prop_assert!(!all_complete(max), "fits in {max} but None was returned"),
        }
    }
}

#[test]
fn replicas_needed_is_zero_without_models_and_none_without_a_template() {
    let bare = ServerView {
        name: ServerName::new("s"),
        replicas: vec![],
        accepting: true,
    };
    assert_eq!(replicas_needed(&bare, &[], 10), Some(0));
    let model = ModelDemand {
        name: ModelName::new("m"),
        requirements: vec![],
        memory_bytes: 1,
        replicas: 1,
        min_replicas: 0,
        server: None,
        current: None,
    };
    assert_eq!(replicas_needed(&bare, &[model], 10), None);
}
