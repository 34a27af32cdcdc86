//! [`RouterHandle`]: the cheap-to-clone handle shared by the REST and gRPC front ends.
//!
//! It owns the synchronous [`RouterState`] (behind a short-held mutex), follows the control
//! plane's routing-table watch channel lazily (each pick checks for a newer table), and keeps
//! the idle REST and gRPC connections to replicas.

use std::sync::{Arc, Mutex, MutexGuard};

use coscale_api::routing::{Endpoint, RoutingTable};
use tokio::sync::watch;

use crate::config::RouterConfig;
use crate::error::RouteError;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::state::{Picked, RouterState};
use crate::upstream::Upstream;

/// Shared router: configuration, routing state, metrics and idle connections to replicas.
#[derive(Debug, Clone)]
pub struct RouterHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RouterConfig,
    table: watch::Receiver<Arc<RoutingTable>>,
    state: Mutex<RouterState>,
    metrics: Metrics,
    pool: Pool<Upstream>,
}

impl RouterHandle {
    /// A router following the routing tables published on `table`.
    pub fn new(config: RouterConfig, table: watch::Receiver<Arc<RoutingTable>>) -> Self {
        let pool = Pool::new(config.pool_max_idle_per_host, config.pool_idle_timeout);
        let state = Mutex::new(RouterState::new(table.borrow().clone()));
        RouterHandle {
            inner: Arc::new(Inner {
                config,
                table,
                state,
                metrics: Metrics::default(),
                pool,
            }),
        }
    }

    /// The configuration the router runs with.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// Picks a replica for `model` from the newest published routing table, never `exclude`.
    pub fn pick(&self, model: &str, exclude: Option<&Endpoint>) -> Result<Picked, RouteError> {
        self.state().pick(model, exclude)
    }

    /// Whether a pick for `model` can succeed now, without taking a slot.
    pub fn check(&self, model: &str) -> Result<(), RouteError> {
        self.state().check(model)
    }

    /// Requests in flight from this router to a server replica.
    pub fn inflight(&self, server: &str, replica: u32) -> usize {
        self.state().inflight(server, replica)
    }

    /// The metrics in Prometheus text form.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Idle HTTP/1.1 connections to replicas (REST and gRPC listeners).
    pub(crate) fn pool(&self) -> &Pool<Upstream> {
        &self.inner.pool
    }

    /// The state, switched to the newest published table first.
    fn state(&self) -> MutexGuard<'_, RouterState> {
        let newest = self.inner.table.borrow().clone();
        let mut state = lock(&self.inner.state);
        if !Arc::ptr_eq(state.table(), &newest) {
            state.set_table(newest);
        }
        state
    }
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data that is still usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
