//! [`RouterState`]: the synchronous heart of the router — which replica gets the next request.
//!
//! Least outstanding requests first, counted per server replica `(server, replica)` across all
//! models it serves; ties are broken by a rotating start position so equal replicas share load.
//! A pick returns a [`Picked`] that holds one in-flight slot until it is dropped. No tokio, no I/O:
//! everything here is unit- and property-tested directly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use coscale_api::routing::{Endpoint, RoutingTable};
use http::HeaderValue;

use crate::error::RouteError;
use crate::{SELDON_INTERNAL_MODEL, SELDON_MODEL};

/// One model on one server replica, with everything forwarding needs precomputed.
#[derive(Debug)]
pub struct Replica {
    /// The external model name.
    pub model: String,
    /// Where it is served.
    pub endpoint: Endpoint,
    /// `<model>_<version>`: the name the agent knows the loaded version by.
    pub internal_name: String,
    /// `host`, `seldon-model` and `seldon-internal-model` header lines of a forwarded REST request.
    pub(crate) rest_fields: String,
    /// The same for a forwarded gRPC call (`host` its gRPC listener), and `te: trailers`.
    pub(crate) grpc_fields: String,
    counter: Arc<AtomicUsize>,
}

impl Replica {
    fn new(model: &str, endpoint: &Endpoint, counter: Arc<AtomicUsize>) -> Option<Self> {
        let internal_name = endpoint.internal_name(model);
        // Names that cannot be header values are refused here, so forwarding cannot fail on them.
        HeaderValue::from_str(model).ok()?;
        HeaderValue::from_str(&internal_name).ok()?;
        let seldon =
            format!("{SELDON_MODEL}: {model}\r\n{SELDON_INTERNAL_MODEL}: {internal_name}\r\n");
        let rest_fields = format!("host: {}\r\n{seldon}", endpoint.http);
        let grpc_fields = format!("host: {}\r\n{seldon}te: trailers\r\n", endpoint.grpc);
        Some(Replica {
            rest_fields,
            grpc_fields,
            model: model.to_owned(),
            endpoint: endpoint.clone(),
            internal_name,
            counter,
        })
    }

    /// `server/replica`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.endpoint.server, self.endpoint.replica)
    }

    fn is(&self, endpoint: &Endpoint) -> bool {
        self.endpoint.server == endpoint.server && self.endpoint.replica == endpoint.replica
    }
}

/// A chosen replica holding one in-flight slot; dropping it releases the slot.
#[derive(Debug)]
pub struct Picked {
    replica: Arc<Replica>,
}

impl Picked {
    /// The chosen endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.replica.endpoint
    }

    /// The chosen replica with its precomputed forwarding data.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The same, shared (for a request's future that outlives the borrow).
    pub(crate) fn shared(&self) -> Arc<Replica> {
        Arc::clone(&self.replica)
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.replica.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The current routing table plus the in-flight count of every server replica.
#[derive(Debug)]
pub struct RouterState {
    table: Arc<RoutingTable>,
    routes: HashMap<String, Vec<Arc<Replica>>>,
    counters: HashMap<(String, u32), Arc<AtomicUsize>>,
    cursor: usize,
}

impl RouterState {
    /// A state routing by `table`.
    pub fn new(table: Arc<RoutingTable>) -> Self {
        let mut state = RouterState {
            table: Arc::new(RoutingTable::default()),
            routes: HashMap::new(),
            counters: HashMap::new(),
            cursor: 0,
        };
        state.set_table(table);
        state
    }

    /// The table currently routed by.
    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }

    /// Switches to a new table. In-flight counts of replicas present in both tables carry over.
    pub fn set_table(&mut self, table: Arc<RoutingTable>) {
        let mut counters = HashMap::new();
        let mut routes = HashMap::with_capacity(table.models.len());
        for (model, route) in &table.models {
            let mut replicas = Vec::with_capacity(route.endpoints.len());
            for endpoint in &route.endpoints {
                let key = (endpoint.server.clone(), endpoint.replica);
                let counter = counters
                    .entry(key.clone())
                    .or_insert_with(|| self.counters.get(&key).cloned().unwrap_or_default())
                    .clone();
                match Replica::new(model, endpoint, counter) {
                    Some(replica) => replicas.push(Arc::new(replica)),
                    None => tracing::warn!(
                        model = %model, server = %endpoint.server, replica = endpoint.replica,
                        "routing table entry cannot be put into headers; skipped"
                    ),
                }
            }
            routes.insert(model.clone(), replicas);
        }
        // Keep counters of replicas that left the table while requests to them are in flight,
        // so they are still counted if the replica comes back.
        for (key, counter) in self.counters.drain() {
            if counter.load(Ordering::Acquire) > 0 {
                counters.entry(key).or_insert(counter);
            }
        }
        self.counters = counters;
        self.routes = routes;
        self.table = table;
    }

    /// Picks a replica for `model`, never `exclude` (the replica that just failed).
    ///
    /// Fewest in-flight requests wins; among equals the search starts at a rotating position.
    pub fn pick(&mut self, model: &str, exclude: Option<&Endpoint>) -> Result<Picked, RouteError> {
        let replicas = replicas_of(&self.routes, model)?;
        let n = replicas.len();
        let start = self.cursor % n;
        self.cursor = self.cursor.wrapping_add(1);
        let mut best: Option<(&Arc<Replica>, usize)> = None;
        for i in 0..n {
            let replica = &replicas[(start + i) % n];
            if exclude.is_some_and(|e| replica.is(e)) {
                continue;
            }
            let load = replica.counter.load(Ordering::Acquire);
            if best.is_none_or(|(_, best_load)| load < best_load) {
                best = Some((replica, load));
            }
        }
        let (replica, _) = best.ok_or_else(|| RouteError::NoAvailableReplica(model.to_owned()))?;
        replica.counter.fetch_add(1, Ordering::AcqRel);
        Ok(Picked {
            replica: Arc::clone(replica),
        })
    }

    /// Requests in flight on a server replica (over all its models).
    pub fn inflight(&self, server: &str, replica: u32) -> usize {
        self.counters
            .get(&(server.to_owned(), replica))
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Whether a pick for `model` can succeed now, without taking a slot: the error it would
    /// give otherwise (unknown model, or no replica that can take traffic).
    pub fn check(&self, model: &str) -> Result<(), RouteError> {
        replicas_of(&self.routes, model).map(|_| ())
    }

    /// Whether `model` is in the routing table at all.
    pub fn is_known(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }
}

/// The replicas of `model` in `routes`: at least one, or the error a request for it gets.
fn replicas_of<'a>(
    routes: &'a HashMap<String, Vec<Arc<Replica>>>,
    model: &str,
) -> Result<&'a [Arc<Replica>], RouteError> {
    match routes.get(model) {
        None => Err(RouteError::UnknownModel(model.to_owned())),
        Some(replicas) if replicas.is_empty() => {
            Err(RouteError::NoAvailableReplica(model.to_owned()))
        }
        Some(replicas) => Ok(replicas),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use coscale_api::routing::ModelRoute;
    use proptest::prelude::*;

    fn endpoint(server: &str, replica: u32) -> Endpoint {
        let port = 10_000 + replica as u16;
        Endpoint {
            server: server.into(),
            replica,
            version: 1,
            http: ([127, 0, 0, 1], port).into(),
            grpc: ([127, 0, 0, 1], port + 1000).into(),
            data_socket: None,
        }
    }

    fn table(models: &[(&str, Vec<Endpoint>)]) -> Arc<RoutingTable> {
        let mut t = RoutingTable::default();
        for (name, endpoints) in models {
            t.models.insert(
                (*name).into(),
                ModelRoute {
                    endpoints: endpoints.clone(),
                },
            );
        }
        Arc::new(t)
    }

    #[test]
    fn unknown_and_replicaless_models_are_told_apart() {
        let mut state = RouterState::new(table(&[("empty", vec![])]));
        assert_eq!(
            state.pick("nope", None).unwrap_err(),
            RouteError::UnknownModel("nope".into())
        );
        assert_eq!(
            state.pick("empty", None).unwrap_err(),
            RouteError::NoAvailableReplica("empty".into())
        );
        // check() tells the same without taking a slot.
        assert_eq!(
            state.check("nope").unwrap_err(),
            RouteError::UnknownModel("nope".into())
        );
        assert_eq!(
            state.check("empty").unwrap_err(),
            RouteError::NoAvailableReplica("empty".into())
        );
    }

    #[test]
    fn a_check_takes_no_slot() {
        let mut state = RouterState::new(table(&[("m", vec![endpoint("s", 0)])]));
        state.check("m").unwrap();
        assert_eq!(state.inflight("s", 0), 0);
        let _held = state.pick("m", None).unwrap();
        assert_eq!(state.inflight("s", 0), 1);
    }

    #[test]
    fn the_replica_with_fewer_requests_in_flight_is_picked() {
        let mut state = RouterState::new(table(&[("m", vec![endpoint("s", 0), endpoint("s", 1)])]));
        let first = state.pick("m", None).unwrap();
        let second = state.pick("m", None).unwrap();
        assert_ne!(first.endpoint(), second.endpoint());
        let busy = first.endpoint().clone();
        drop(second);
        let third = state.pick("m", None).unwrap();
        assert_ne!(third.endpoint(), &busy);
    }

    #[test]
    fn idle_equal_replicas_take_turns() {
        let mut state = RouterState::new(table(&[("m", vec![endpoint("s", 0), endpoint("s", 1)])]));
        let a = state.pick("m", None).unwrap().endpoint().replica;
        let b = state.pick("m", None).unwrap().endpoint().replica;
        assert_ne!(a, b);
    }

    #[test]
    fn in_flight_counts_survive_a_table_update_and_are_shared_across_models() {
        let mut state = RouterState::new(table(&[("a", vec![endpoint("s", 0)])]));
        let held = state.pick("a", None).unwrap();
        state.set_table(table(&[
            ("a", vec![endpoint("s", 0)]),
            ("b", vec![endpoint("s", 0), endpoint("s", 1)]),
        ]));
        assert_eq!(state.inflight("s", 0), 1);
        // Replica 0 is busy with model a, so model b goes to replica 1.
        assert_eq!(state.pick("b", None).unwrap().endpoint().replica, 1);
        drop(held);
        assert_eq!(state.inflight("s", 0), 0);
    }

    #[test]
    fn excluding_the_only_replica_leaves_nothing_to_pick() {
        let mut state = RouterState::new(table(&[("m", vec![endpoint("s", 0)])]));
        assert_eq!(
            state.pick("m", Some(&endpoint("s", 0))).unwrap_err(),
            RouteError::NoAvailableReplica("m".into())
        );
        assert_eq!(state.inflight("s", 0), 0);
    }

    proptest! {
        #[test]
        fn an_excluded_endpoint_is_never_picked_when_another_exists(
            replicas in 2u32..6,
            excluded in 0u32..6,
            held in proptest::collection::vec(0usize..4, 0..12),
        ) {
            let excluded = excluded % replicas;
            let endpoints: Vec<_> = (0..replicas).map(|r| endpoint("s", r)).collect();
            let mut state = RouterState::new(table(&[("m", endpoints)]));
            let mut guards = Vec::new();
            for _ in held {
                guards.push(state.pick("m", None).unwrap());
            }
            for _ in 0..replicas * 2 {
                let picked = state.pick("m", Some(&endpoint("s", excluded))).unwrap();
                prop_assert_ne!(picked.endpoint().replica, excluded);
                guards.push(picked);
            }
        }

        #[test]
        fn counters_return_to_zero_after_every_guard_drops(
            replicas in 1u32..5,
            ops in proptest::collection::vec((any::<bool>(), 0usize..8), 1..40),
        ) {
            let endpoints: Vec<_> = (0..replicas).map(|r| endpoint("s", r)).collect();
            let mut state = RouterState::new(table(&[("m", endpoints)]));
            let mut guards = Vec::new();
            for (acquire, index) in ops {
                if acquire || guards.is_empty() {
                    guards.push(state.pick("m", None).unwrap());
                } else {
                    guards.swap_remove(index % guards.len());
                }
                let total: usize = (0..replicas).map(|r| state.inflight("s", r)).sum();
                prop_assert_eq!(total, guards.len());
            }
            guards.clear();
            for r in 0..replicas {
                prop_assert_eq!(state.inflight("s", r), 0);
            }
        }

        #[test]
        fn picks_without_releases_keep_replica_loads_within_one(
            replicas in 1u32..6,
            picks in 0usize..30,
        ) {
            let endpoints: Vec<_> = (0..replicas).map(|r| endpoint("s", r)).collect();
            let mut state = RouterState::new(table(&[("m", endpoints)]));
            let guards: Vec<_> = (0..picks).map(|_| state.pick("m", None).unwrap()).collect();
            let loads: Vec<_> = (0..replicas).map(|r| state.inflight("s", r)).collect();
            let max = loads.iter().max().copied().unwrap();
            let min = loads.iter().min().copied().unwrap();
            prop_assert!(max - min <= 1, "loads {:?}", loads);
            prop_assert_eq!(loads.iter().sum::<usize>(), guards.len());
        }
    }
}
