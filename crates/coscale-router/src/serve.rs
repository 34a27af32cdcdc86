//! [`serve`]: runs the REST and gRPC front ends on the given listeners until shutdown.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::grpc::serve_grpc;
use crate::handle::RouterHandle;
use crate::rest::serve_rest;

/// The router's own runtime could not be started.
#[derive(Debug, thiserror::Error)]
#[error("router runtime failed to start: {0}")]
pub struct ServeError(#[source] std::io::Error);

/// Runs [`serve`] on a runtime of its own, on new OS threads, and returns at once; the
/// listeners move to that runtime. `threads` = 1 gives a current-thread runtime on one thread:
/// the client's connection, the forwarding handler and the pooled connection to the replica
/// then wake each other on that thread instead of across threads (as in one nginx worker).
/// More threads give a multi-thread runtime with that many workers.
pub fn serve_dedicated(
    handle: RouterHandle,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    threads: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<(), ServeError>>, ServeError> {
    let http = http_listener.into_std().map_err(ServeError)?;
    let grpc = grpc_listener.into_std().map_err(ServeError)?;
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder
        .enable_all()
        .thread_name("coscale-router")
        .build()
        .map_err(ServeError)?;
    std::thread::Builder::new()
        .name("coscale-router".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let http = TcpListener::from_std(http).map_err(ServeError)?;
                let grpc = TcpListener::from_std(grpc).map_err(ServeError)?;
                serve(handle, http, grpc, shutdown).await;
                Ok(())
            })
        })
        .map_err(ServeError)
}

/// Serves V2 REST (and `/metrics`) on `http_listener` and V2 gRPC on `grpc_listener` until
/// `shutdown` resolves, then stops accepting and lets the requests and calls in flight finish.
pub async fn serve(
    handle: RouterHandle,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let stopping = async {
        shutdown.await;
        stop.send_replace(true);
    };
    tokio::join!(
        stopping,
        serve_rest(http_listener, handle.clone(), stopped.clone()),
        serve_grpc(grpc_listener, handle, stopped),
    );
}
