//! [`RouterConfig`]: limits and timeouts of the router's REST and gRPC forwarding.

use std::time::Duration;

/// Router settings. `Default` gives values suitable for local use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Largest REST request body forwarded; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Largest gRPC message accepted from clients and replicas, each way.
    pub grpc_max_message_bytes: usize,
    /// Time allowed to open a connection to a replica.
    pub connect_timeout: Duration,
    /// Time allowed for a replica to answer (REST: the whole answer, from sending the request on;
    /// gRPC: the reply).
    pub request_timeout: Duration,
    /// Longest wait for a REST client: for the next request on an idle connection (then it is
    /// closed), and for a request's head and body once they start to arrive (then 408 for a
    /// body; the connection is closed either way).
    pub client_timeout: Duration,
    /// Largest REST answer body taken from a replica; a larger one is answered with 502.
    pub answer_limit_bytes: usize,
    /// How long idle pooled connections to replicas are kept.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per replica.
    pub pool_max_idle_per_host: usize,
    /// Threads of the router's own runtime ([`crate::serve_dedicated`]): 1 is a current-thread
    /// runtime on one OS thread, more a multi-thread runtime; 0 means the caller's runtime.
    pub threads: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            body_limit_bytes: 64 * 1024 * 1024,
            grpc_max_message_bytes: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(75),
            answer_limit_bytes: 256 * 1024 * 1024,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            threads: 0,
        }
    }
}
