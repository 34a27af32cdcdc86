//! Placement of model replicas on server replicas.
//!
//! [`place`] is a pure, deterministic function of a fleet snapshot ([`ServerView`]) and
//! of what every model wants ([`ModelDemand`]). The control plane calls it on every
//! change and from its periodic reconcile; the simulator calls the very same code.
//! [`replicas_needed`] answers the server autoscaler's question "how many replicas
//! would this server need to host these models?".
//!
//! Semantics are Seldon Core 2's documented ones (`seldon-core2-semantics.md` §2) with
//! its gaps fixed:
//!
//! - A model lives on exactly one server, with at most one replica per server replica.
//! - A server is a candidate for a model when it accepts models, has a connected
//!   replica, matches the model's `spec.server` pin (if any) and has a replica that
//!   offers every requirement (trimmed, exact, case-sensitive; blank requirements
//!   are ignored). Capabilities are checked per replica.
//! - A server replica can take a new model replica when it is not draining, offers
//!   the requirements and has room:
//!   `model.memory_bytes <= memory_bytes - reserved_bytes - memory assigned in this run`
//!   (floored at zero, never underflowing).
//! - Stability: pass one keeps every model's current replicas that are still valid
//!   (server still a candidate, replica connected, not draining, capabilities match),
//!   dropping the highest ordinals first when a model scaled down. Kept replicas are
//!   kept even when the replica is now over capacity: they are loaded and serving.
//! - Pass two adds missing replicas, models taken by memory descending then name
//!   (first-fit decreasing, the same order [`replicas_needed`] packs in). New replicas
//!   go to the lowest suitable ordinals, so the highest ordinal empties first and a
//!   StatefulSet scale-down removes an empty replica.
//! - A model with kept replicas never moves just to scale up: it takes what fits on
//!   its server and reports `Partial`/`Failed` so the server autoscaler grows that
//!   server. A model without kept replicas goes to the first candidate (its previous
//!   server first, then by name) where all desired replicas fit; failing that, when
//!   `min_replicas > 0`, the first one where at least `min_replicas` fit, taking as
//!   many as fit there (partial scheduling); failing that it is not placed.
//! - The result is idempotent: feeding each [`Decision::as_current`] back as
//!   `current` yields the same decisions.
//! - A replica on a draining server replica is not part of the decision; the control
//!   plane keeps it serving until its replacement is available (§2.7).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::{ModelName, ReplicaIndex, ServerName};

/// One connected replica of a server, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub index: ReplicaIndex,
    /// Capabilities the replica offers (compared after trimming).
    pub capabilities: Vec<String>,
    /// Memory capacity in bytes, overcommit included.
    pub memory_bytes: u64,
    /// Memory held by things not being placed now, e.g. old model versions still loaded.
    /// May exceed `memory_bytes`.
    pub reserved_bytes: u64,
    /// The replica is going away: it keeps serving what it has but takes nothing new.
    pub draining: bool,
}

/// A server and its connected replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    pub name: ServerName,
    /// Connected replicas. Indices are unique; if one repeats, the first entry wins.
    pub replicas: Vec<ReplicaView>,
    /// False when the server is being deleted or scaled to zero.
    pub accepting: bool,
}

/// What a model (its latest version) wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDemand {
    pub name: ModelName,
    /// Capabilities every hosting replica must offer (trimmed; blank entries ignored).
    pub requirements: Vec<String>,
    /// Memory one replica of the model needs.
    pub memory_bytes: u64,
    /// Desired replica count.
    pub replicas: u32,
    /// Fewest replicas worth serving with; 0 disables partial scheduling.
    pub min_replicas: u32,
    /// `spec.server`: the only server the model may run on.
    pub server: Option<ServerName>,
    /// Where the latest version is assigned now.
    pub current: Option<CurrentPlacement>,
}

/// A model's assignment: one server and a set of its replica ordinals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentPlacement {
    pub server: ServerName,
    pub replicas: BTreeSet<ReplicaIndex>,
}

/// Where one model goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub model: ModelName,
    /// The assigned server; for a model that could not be placed, the server that would
    /// host it (its pin, its previous server, or the first capable server by name) so a
    /// server autoscaler knows which server to grow. `None` when no server qualifies or
    /// the model is scaled to zero.
    pub server: Option<ServerName>,
    /// Assigned replica ordinals on `server`.
    pub replicas: BTreeSet<ReplicaIndex>,
    pub outcome: Outcome,
}

impl Decision {
    /// This decision as the `current` placement of the next run. The replica set may be
    /// empty (a model that could not be placed); then the server is only tried first.
    pub fn as_current(&self) -> Option<CurrentPlacement> {
        self.server.as_ref().map(|server| CurrentPlacement {
            server: server.clone(),
            replicas: self.replicas.clone(),
        })
    }
}

/// How well a model was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Exactly the desired number of replicas is assigned.
    Complete,
    /// At least `min_replicas`, fewer than desired.
    Partial { reason: ScheduleFailure },
    /// Fewer than needed. `replicas` may still hold replicas the model keeps on its
    /// server (they keep serving).
    Failed { reason: ScheduleFailure },
    /// The model wants zero replicas.
    ScaledToZero,
}

/// Why a model could not get all its desired replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ScheduleFailure {
    #[error("no server can host models: no accepting server has a connected replica")]
    NoServers,
    #[error("the model is pinned to server \"{server}\", which does not exist")]
    PinnedServerNotFound { server: ServerName },
    #[error(
        "the model is pinned to server \"{server}\", which is being deleted, is scaled to \
         zero or has no connected replica"
    )]
    PinnedServerUnavailable { server: ServerName },
    #[error(
        "server \"{server}\" has no replica offering all required capabilities [{list}]",
        list = requirements.join(", ")
    )]
    PinnedServerMissingCapabilities {
        server: ServerName,
        requirements: Vec<String>,
    },
    #[error(
        "no server has a replica offering all required capabilities [{list}]",
        list = requirements.join(", ")
    )]
    NoMatchingServer { requirements: Vec<String> },
    #[error(
        "server \"{server}\" has {suitable} usable replicas (connected, not draining, with \
         the required capabilities) but the model wants {desired}"
    )]
    NotEnoughReplicas {
        server: ServerName,
        desired: u32,
        suitable: u32,
    },
    #[error(
        "{missing} replica(s) did not fit on server \"{server}\": each needs {needed_bytes} \
         bytes of memory, the most free on a usable replica is {largest_free_bytes} bytes"
    )]
    NotEnoughMemory {
        server: ServerName,
        needed_bytes: u64,
        missing: u32,
        largest_free_bytes: u64,
    },
}

/// Places every model; returns one [`Decision`] per model, in input order.
///
/// Cost: O(models × log models) for ordering plus, per model, O(replicas of the servers
/// it is tried on); capability matches are computed once per distinct requirement set.
pub fn place(servers: &[ServerView], models: &[ModelDemand]) -> Vec<Decision> {
    let mut fleet = Fleet::new(servers);
    let wants: Vec<Want<'_>> = models
        .iter()
        .map(|demand| Want {
            demand,
            set: fleet.intern(demand),
        })
        .collect();
    let mut slots: Vec<Slot> = wants.iter().map(|w| fleet.keep_current(w)).collect();

    let mut order: Vec<usize> = (0..models.len())
        .filter(|&i| models[i].replicas > 0)
        .collect();
    order.sort_by(|&a, &b| {
        (Reverse(models[a].memory_bytes), &models[a].name)
            .cmp(&(Reverse(models[b].memory_bytes), &models[b].name))
    });
    for i in order {
        fleet.complete(&wants[i], &mut slots[i]);
    }

    wants
        .iter()
        .zip(slots)
        .map(|(want, slot)| fleet.decide(want, slot))
        .collect()
}

/// The smallest number of replicas like `server`'s template replica (its lowest-index
/// replica: capabilities, `memory_bytes`, `reserved_bytes`) on which every model's
/// desired replicas fit, at most one per replica; `None` if that exceeds `max_replicas`,
/// a model's requirements are not offered, one replica is larger than a server replica,
/// or there is no template replica while some model wants replicas.
///
/// Pins, `current` and `min_replicas` are ignored: the models given are the ones to host
/// on this server. The answer comes from first-fit decreasing (models by memory
/// descending, then name; each replica on the lowest-index replica with room), the order
/// [`place`] fills servers in, so [`place`] on that many fresh replicas places every
/// model completely and on one fewer it does not. It is an upper bound of the optimum
/// and at least `max(largest desired count, ceil(total memory / replica memory))`.
pub fn replicas_needed(
    server: &ServerView,
    models: &[ModelDemand],
    max_replicas: u32,
) -> Option<u32> {
    let mut wanted: Vec<&ModelDemand> = models.iter().filter(|m| m.replicas > 0).collect();
    if wanted.is_empty() {
        return Some(0);
    }
    let template = server.replicas.iter().min_by_key(|r| r.index)?;
    let room = template
        .memory_bytes
        .saturating_sub(template.reserved_bytes);
    let caps = capability_set(template);
    for model in &wanted {
        let fits_one = model.memory_bytes <= room;
        let offers = requirements_of(model)
            .iter()
            .all(|r| caps.contains(r.as_str()));
        if !fits_one || !offers || model.replicas > max_replicas {
            return None;
        }
    }
    wanted.sort_by(|a, b| {
        (Reverse(a.memory_bytes), &a.name).cmp(&(Reverse(b.memory_bytes), &b.name))
    });

    // Free memory per opened replica: first fit over `n` replicas succeeds exactly when
    // first fit opening replicas on demand opens at most `n`, so one pass answers. Memory
    // use is one word per opened replica (at most `max_replicas`).
    let max_bins = usize::try_from(max_replicas).unwrap_or(usize::MAX);
    let mut free: Vec<u64> = Vec::new();
    for model in wanted {
        let mut left = model.replicas;
        for slot in free.iter_mut() {
            if left == 0 {
                break;
            }
            if model.memory_bytes <= *slot {
                *slot = slot.saturating_sub(model.memory_bytes);
                left -= 1;
            }
        }
        while left > 0 {
            if free.len() >= max_bins {
                return None;
            }
            free.push(room.saturating_sub(model.memory_bytes));
            left -= 1;
        }
    }
    u32::try_from(free.len()).ok()
}

/// A model together with its interned requirement set.
struct Want<'m> {
    demand: &'m ModelDemand,
    /// Index into `Fleet::sets`.
    set: usize,
}

/// A model's assignment while the run is in progress.
struct Slot {
    /// Position of the assigned server in `Fleet::servers`.
    server: Option<usize>,
    replicas: BTreeSet<ReplicaIndex>,
    /// A candidate server to try first when the model has to be (re)placed.
    preferred: Option<usize>,
    done: Option<Outcome>,
}

struct ReplicaState<'a> {
    index: ReplicaIndex,
    capabilities: HashSet<&'a str>,
    draining: bool,
    /// Memory left for new model replicas in this run.
    free: u64,
}

struct ServerState<'a> {
    name: &'a ServerName,
    /// Accepting and at least one connected replica.
    open: bool,
    /// Sorted by index, unique.
    replicas: Vec<ReplicaState<'a>>,
}

impl ServerState<'_> {
    fn position(&self, index: ReplicaIndex) -> Option<usize> {
        self.replicas.binary_search_by_key(&index, |r| r.index).ok()
    }
}

/// Which replicas of each server offer one requirement set.
struct RequirementSet {
    requirements: Vec<String>,
    /// `per_server[s][r]`: replica `r` of server `s` offers every requirement.
    per_server: Vec<Vec<bool>>,
    /// `any[s]`: some replica of server `s` offers every requirement.
    any: Vec<bool>,
}

struct Fleet<'a> {
    servers: Vec<ServerState<'a>>,
    by_name: HashMap<&'a str, usize>,
    /// Server positions by name.
    by_name_order: Vec<usize>,
    sets: Vec<RequirementSet>,
    set_ids: HashMap<Vec<String>, usize>,
}

fn capability_set(replica: &ReplicaView) -> HashSet<&str> {
    replica.capabilities.iter().map(|c| c.trim()).collect()
}

/// Trimmed, sorted, de-duplicated, blank-free requirements.
fn requirements_of(model: &ModelDemand) -> Vec<String> {
    let set: BTreeSet<&str> = model
        .requirements
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .collect();
    set.into_iter().map(str::to_owned).collect()
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn as_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl<'a> Fleet<'a> {
    fn new(views: &'a [ServerView]) -> Self {
        let servers: Vec<ServerState<'a>> = views
            .iter()
            .map(|view| {
                let mut replicas: Vec<ReplicaState<'a>> = view
                    .replicas
                    .iter()
                    .map(|r| ReplicaState {
                        index: r.index,
                        capabilities: capability_set(r),
                        draining: r.draining,
                        free: r.memory_bytes.saturating_sub(r.reserved_bytes),
                    })
                    .collect();
                replicas.sort_by_key(|r| r.index);
                replicas.dedup_by_key(|r| r.index);
                ServerState {
                    name: &view.name,
                    open: view.accepting && !replicas.is_empty(),
                    replicas,
                }
            })
            .collect();
        let mut by_name = HashMap::with_capacity(servers.len());
        for (i, s) in servers.iter().enumerate() {
            by_name.entry(s.name.as_str()).or_insert(i);
        }
        let mut by_name_order: Vec<usize> = by_name.values().copied().collect();
        by_name_order.sort_by(|&a, &b| servers[a].name.cmp(servers[b].name));
        Fleet {
            servers,
            by_name,
            by_name_order,
            sets: Vec::new(),
            set_ids: HashMap::new(),
        }
    }

    /// The id of the model's requirement set, matched against every replica once.
    fn intern(&mut self, model: &ModelDemand) -> usize {
        let requirements = requirements_of(model);
        if let Some(&id) = self.set_ids.get(&requirements) {
            return id;
        }
        let per_server: Vec<Vec<bool>> = self
            .servers
            .iter()
            .map(|s| {
                s.replicas
                    .iter()
                    .map(|r| {
                        requirements
                            .iter()
                            .all(|q| r.capabilities.contains(q.as_str()))
                    })
                    .collect()
            })
            .collect();
        let any = per_server.iter().map(|m| m.iter().any(|&b| b)).collect();
        let id = self.sets.len();
        self.set_ids.insert(requirements.clone(), id);
        self.sets.push(RequirementSet {
            requirements,
            per_server,
            any,
        });
        id
    }

    /// Whether server `s` can host the model at all (ignoring memory and draining).
    fn is_candidate(&self, s: usize, want: &Want<'_>) -> bool {
        let server = &self.servers[s];
        let pin_ok = want
            .demand
            .server
            .as_ref()
            .is_none_or(|pin| pin == server.name);
        server.open && pin_ok && self.sets[want.set].any[s]
    }

    /// Pass one: keep the model's still-valid current replicas (lowest ordinals first).
    fn keep_current(&mut self, want: &Want<'_>) -> Slot {
        let model = want.demand;
        let mut slot = Slot {
            server: None,
            replicas: BTreeSet::new(),
            preferred: None,
            done: None,
        };
        if model.replicas == 0 {
            slot.done = Some(Outcome::ScaledToZero);
            return slot;
        }
        let Some(current) = &model.current else {
            return slot;
        };
        let Some(&s) = self.by_name.get(current.server.as_str()) else {
            return slot;
        };
        if !self.is_candidate(s, want) {
            return slot;
        }
        slot.preferred = Some(s);
        let desired = as_usize(model.replicas);
        let matching = &self.sets[want.set].per_server[s];
        let server = &mut self.servers[s];
        for &index in &current.replicas {
            if slot.replicas.len() >= desired {
                break;
            }
            let Some(r) = server.position(index) else {
                continue;
            };
            let replica = &mut server.replicas[r];
            if replica.draining || !matching[r] {
                continue;
            }
            replica.free = replica.free.saturating_sub(model.memory_bytes);
            slot.replicas.insert(index);
        }
        if !slot.replicas.is_empty() {
            slot.server = Some(s);
        }
        slot
    }

    /// Replica positions on server `s` that can take a new replica of the model, lowest
    /// ordinal first, at most `limit`.
    fn suitable(
        &self,
        s: usize,
        want: &Want<'_>,
        held: &BTreeSet<ReplicaIndex>,
        limit: usize,
    ) -> Vec<usize> {
        let matching = &self.sets[want.set].per_server[s];
        let needed = want.demand.memory_bytes;
        self.servers[s]
            .replicas
            .iter()
            .enumerate()
            .filter(|&(r, replica)| {
                matching[r]
                    && !replica.draining
                    && needed <= replica.free
                    && !held.contains(&replica.index)
            })
            .map(|(r, _)| r)
            .take(limit)
            .collect()
    }

    fn assign(&mut self, s: usize, positions: &[usize], want: &Want<'_>, slot: &mut Slot) {
        for &r in positions {
            let replica = &mut self.servers[s].replicas[r];
            replica.free = replica.free.saturating_sub(want.demand.memory_bytes);
            slot.replicas.insert(replica.index);
        }
        slot.server = Some(s);
    }

    /// Pass two: add the replicas the model still misses.
    fn complete(&mut self, want: &Want<'_>, slot: &mut Slot) {
        let desired = as_usize(want.demand.replicas);
        let min = as_usize(want.demand.min_replicas);
        if let Some(s) = slot.server {
            let missing = desired.saturating_sub(slot.replicas.len());
            let picked = self.suitable(s, want, &slot.replicas, missing);
            self.assign(s, &picked, want, slot);
            return;
        }
        let others = self
            .by_name_order
            .iter()
            .copied()
            .filter(|&s| Some(s) != slot.preferred);
        let empty = BTreeSet::new();
        let mut partial: Option<(usize, Vec<usize>)> = None;
        for s in slot.preferred.into_iter().chain(others) {
            if !self.is_candidate(s, want) {
                continue;
            }
            let picked = self.suitable(s, want, &empty, desired);
            if picked.len() >= desired {
                self.assign(s, &picked, want, slot);
                return;
            }
            if min > 0 && picked.len() >= min && partial.is_none() {
                partial = Some((s, picked));
            }
        }
        if let Some((s, picked)) = partial {
            self.assign(s, &picked, want, slot);
        }
    }

    /// The server a model that is not (fully) placed would go to, or why there is none.
    fn hint(&self, want: &Want<'_>, slot: &Slot) -> Result<usize, ScheduleFailure> {
        if let Some(s) = slot.server.or(slot.preferred) {
            return Ok(s);
        }
        let requirements = || self.sets[want.set].requirements.clone();
        if let Some(pin) = &want.demand.server {
            let Some(&s) = self.by_name.get(pin.as_str()) else {
                return Err(ScheduleFailure::PinnedServerNotFound {
                    server: pin.clone(),
                });
            };
            if !self.servers[s].open {
                return Err(ScheduleFailure::PinnedServerUnavailable {
                    server: pin.clone(),
                });
            }
            if !self.is_candidate(s, want) {
                return Err(ScheduleFailure::PinnedServerMissingCapabilities {
                    server: pin.clone(),
                    requirements: requirements(),
                });
            }
            return Ok(s);
        }
        if !self.servers.iter().any(|s| s.open) {
            return Err(ScheduleFailure::NoServers);
        }
        self.by_name_order
            .iter()
            .copied()
            .find(|&s| self.is_candidate(s, want))
            .ok_or_else(|| ScheduleFailure::NoMatchingServer {
                requirements: requirements(),
            })
    }

    /// Why server `s` holds fewer replicas of the model than desired.
    fn shortfall(
        &self,
        s: usize,
        want: &Want<'_>,
        held: &BTreeSet<ReplicaIndex>,
    ) -> ScheduleFailure {
        let model = want.demand;
        let matching = &self.sets[want.set].per_server[s];
        let server = &self.servers[s];
        let usable = || {
            server
                .replicas
                .iter()
                .zip(matching)
                .filter(|&(r, &m)| m && !r.draining)
                .map(|(r, _)| r)
        };
        let suitable = len_u32(usable().count());
        if suitable < model.replicas {
            return ScheduleFailure::NotEnoughReplicas {
                server: server.name.clone(),
                desired: model.replicas,
                suitable,
            };
        }
        let largest_free_bytes = usable()
            .filter(|r| !held.contains(&r.index))
            .map(|r| r.free)
            .max()
            .unwrap_or(0);
        ScheduleFailure::NotEnoughMemory {
            server: server.name.clone(),
            needed_bytes: model.memory_bytes,
            missing: model.replicas.saturating_sub(len_u32(held.len())),
            largest_free_bytes,
        }
    }

    fn decide(&self, want: &Want<'_>, slot: Slot) -> Decision {
        let model = want.demand;
        if let Some(outcome) = slot.done {
            return Decision {
                model: model.name.clone(),
                server: None,
                replicas: BTreeSet::new(),
                outcome,
            };
        }
        let placed = len_u32(slot.replicas.len());
        let (server, outcome) = if placed >= model.replicas {
            (
                slot.server.map(|s| self.servers[s].name.clone()),
                Outcome::Complete,
            )
        } else {
            match self.hint(want, &slot) {
                Ok(s) => {
                    let reason = self.shortfall(s, want, &slot.replicas);
                    let outcome = if model.min_replicas > 0 && placed >= model.min_replicas {
                        Outcome::Partial { reason }
                    } else {
                        Outcome::Failed { reason }
                    };
                    (Some(self.servers[s].name.clone()), outcome)
                }
                // A pinned model still names its server so that server can be grown.
                Err(reason) => (model.server.clone(), Outcome::Failed { reason }),
            }
        };
        Decision {
            model: model.name.clone(),
            server,
            replicas: slot.replicas,
            outcome,
        }
    }
}
