//! [`Pool`]: idle connections to replicas ([`crate::upstream::Upstream`], REST and gRPC alike),
//! shared by all client connections: a client connection that ends leaves its connections here
//! and a new one takes them, instead of opening its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::handle::lock;

/// A connection the pool can keep: it knows its replica's address (its key).
pub(crate) trait Pooled {
    fn replica(&self) -> SocketAddr;
}

/// Idle connections by replica address, each with the time it went idle.
#[derive(Debug)]
pub(crate) struct Pool<T> {
    idle: Mutex<HashMap<SocketAddr, Vec<(Instant, T)>>>,
    max_per_replica: usize,
    idle_timeout: Duration,
}

impl<T: Pooled> Pool<T> {
    pub(crate) fn new(max_per_replica: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            max_per_replica,
            idle_timeout,
        }
    }

    /// The most recently idled connection to `addr` that has not been idle too long.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<T> {
        let mut idle = lock(&self.idle);
        let conns = idle.get_mut(&addr)?;
        conns.retain(|(since, _)| since.elapsed() < self.idle_timeout);
        conns.pop().map(|(_, conn)| conn)
    }

    /// Keeps `conns` for later, dropping (closing) those over the per-replica limit and any
    /// that have been idle too long.
    pub(crate) fn put(&self, conns: impl IntoIterator<Item = T>) {
        let mut idle = lock(&self.idle);
        let now = Instant::now();
        for conn in conns {
            let list = idle.entry(conn.replica()).or_default();
            if list.len() < self.max_per_replica {
                list.push((now, conn));
            }
        }
        idle.retain(|_, list| {
            list.retain(|(since, _)| now.duration_since(*since) < self.idle_timeout);
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Conn(SocketAddr, u32);

    impl Pooled for Conn {
        fn replica(&self) -> SocketAddr {
            self.0
        }
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit_per_replica_newest_first_and_forgets_stale_ones() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let pool = Pool::new(2, Duration::from_secs(60));
        pool.put([Conn(a, 1), Conn(a, 2), Conn(a, 3), Conn(b, 4)]);
        assert_eq!(pool.take(a), Some(Conn(a, 2)));
        assert_eq!(pool.take(a), Some(Conn(a, 1)));
        assert_eq!(pool.take(a), None);
        assert_eq!(pool.take(b), Some(Conn(b, 4)));
        let stale = Pool::new(2, Duration::ZERO);
        stale.put([Conn(a, 5)]);
        assert_eq!(stale.take(a), None);
    }
}
