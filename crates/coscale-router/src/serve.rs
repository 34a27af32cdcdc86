//! [`serve`]: runs the REST and gRPC front ends on the given listeners until shutdown.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::grpc::grpc_service;
use crate::handle::RouterHandle;
use crate::rest::{serve_rest, stop_signal};

/// A front end stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("router gRPC server failed: {0}")]
    Grpc(#[source] tonic::transport::Error),
    #[error("router runtime failed to start: {0}")]
    Runtime(#[source] std::io::Error),
}

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
    let http = http_listener.into_std().map_err(ServeError::Runtime)?;
    let grpc = grpc_listener.into_std().map_err(ServeError::Runtime)?;
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
        .map_err(ServeError::Runtime)?;
    std::thread::Builder::new()
        .name("coscale-router".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let http = TcpListener::from_std(http).map_err(ServeError::Runtime)?;
                let grpc = TcpListener::from_std(grpc).map_err(ServeError::Runtime)?;
                serve(handle, http, grpc, shutdown).await
            })
        })
        .map_err(ServeError::Runtime)
}

/// Serves V2 REST (and `/metrics`) on `http_listener` and V2 gRPC on `grpc_listener` until
/// `shutdown` resolves, then lets in-flight requests finish. If the gRPC server fails, the REST
/// server is shut down too and the error is returned.
pub async fn serve(
    handle: RouterHandle,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (stop, stopped) = watch::channel(false);
    let http = serve_rest(http_listener, handle.clone(), stopped.clone());
    let grpc = async {
        let result = tonic::transport::Server::builder()
            .add_service(grpc_service(handle.clone()))
            .serve_with_incoming_shutdown(
                coscale_net::nodelay_incoming(grpc_listener),
                stop_signal(stopped.clone()),
            )
            .await
            .map_err(ServeError::Grpc);
        stop.send_replace(true);
        result
    };
    let servers = async { tokio::join!(http, grpc) };
    tokio::pin!(servers);
    tokio::pin!(shutdown);
    let ((), grpc) = tokio::select! {
        results = &mut servers => results,
        () = &mut shutdown => {
            stop.send_replace(true);
            servers.await
        }
    };
    grpc
}
