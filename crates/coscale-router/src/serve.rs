//! [`serve`]: runs the REST and gRPC front ends on the given listeners until shutdown.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::grpc::grpc_service;
use crate::handle::RouterHandle;
use crate::rest::http_app;

/// A front end stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("router REST server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("router gRPC server failed: {0}")]
    Grpc(#[source] tonic::transport::Error),
}

/// Serves V2 REST (and `/metrics`) on `http_listener` and V2 gRPC on `grpc_listener` until
/// `shutdown` resolves, then lets in-flight requests finish. If one server fails, the other is
/// shut down too and the first error is returned.
pub async fn serve(
    handle: RouterHandle,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (stop, stopped) = watch::channel(false);
    let signal = |mut stopped: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which also means: stop.
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let http = async {
        let result = axum::serve(http_listener, http_app(handle.clone()))
            .with_graceful_shutdown(signal(stopped.clone()))
            .await
            .map_err(ServeError::Http);
        stop.send_replace(true);
        result
    };
    let grpc = async {
        let result = tonic::transport::Server::builder()
            .add_service(grpc_service(handle.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_listener),
                signal(stopped.clone()),
            )
            .await
            .map_err(ServeError::Grpc);
        stop.send_replace(true);
        result
    };
    let servers = async { tokio::join!(http, grpc) };
    tokio::pin!(servers);
    tokio::pin!(shutdown);
    let (http, grpc) = tokio::select! {
        results = &mut servers => results,
        () = &mut shutdown => {
            stop.send_replace(true);
            servers.await
        }
    };
    http.and(grpc)
}
