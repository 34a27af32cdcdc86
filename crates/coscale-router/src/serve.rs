//! [`serve`]: runs the REST and gRPC front ends on the given listeners until shutdown.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

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

/// Runs the router on runtimes of its own and returns at once: `threads` OS threads (at least
/// one), each with a current-thread runtime that accepts REST connections from the shared
/// listener and serves each of them from start to end on that thread — as nginx's workers do —
/// so a request never wakes another thread; the first also serves gRPC. The returned thread
/// ends once every router thread has stopped.
pub fn serve_dedicated(
    handle: RouterHandle,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    threads: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<(), ServeError>>, ServeError> {
    let http = http_listener.into_std().map_err(ServeError::Runtime)?;
    let grpc = grpc_listener.into_std().map_err(ServeError::Runtime)?;
    let (stop, stopped) = watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)
    };
    let mut others = Vec::new();
    for i in 1..threads.max(1) {
        let listener = http.try_clone().map_err(ServeError::Runtime)?;
        let (handle, stopped, rt) = (handle.clone(), stopped.clone(), runtime()?);
        let thread = std::thread::Builder::new()
            .name(format!("coscale-router-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).map_err(ServeError::Runtime)?;
                    serve_rest(listener, handle, stopped).await;
                    Ok::<(), ServeError>(())
                })
            })
            .map_err(ServeError::Runtime)?;
        others.push(thread);
    }
    let first = runtime()?;
    std::thread::Builder::new()
        .name("coscale-router-0".to_owned())
        .spawn(move || {
            let on_shutdown = std::sync::Arc::clone(&stop);
            let result = first.block_on(async move {
                tokio::spawn(async move {
                    shutdown.await;
                    on_shutdown.send_replace(true);
                });
                let http = TcpListener::from_std(http).map_err(ServeError::Runtime)?;
                let grpc = TcpListener::from_std(grpc).map_err(ServeError::Runtime)?;
                serve(handle, http, grpc, stop_signal(stopped)).await
            });
            // However the first thread ended, the others stop too.
            stop.send_replace(true);
            for thread in others {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::error!(%err, "a router thread failed"),
                    Err(_) => tracing::error!("a router thread panicked"),
                }
            }
            result
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
                TcpListenerStream::new(grpc_listener),
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
