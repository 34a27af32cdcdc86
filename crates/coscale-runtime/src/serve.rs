//! [`serve_http`]: serves an axum `Router` (HTTP/1.1, and HTTP/2 with prior knowledge) as
//! `axum::serve` does, with one difference: each connection's task runs in a
//! [`coscale_net::Repoll`].
//!
//! hyper's server hands a request body to its handler through a channel, and the handler runs in
//! the connection's own task, so reading a request wakes the task that is running (the handler
//! waits for the body, the connection delivers it); on tokio's multi-thread runtime every such
//! wake-up also woke an idle worker, which found nothing to do (two futex calls per request at
//! one connection, in the runtime alone and in the agent alike). In a `Repoll` it is a poll in
//! place. Used by `coscale runtime` and by the agent (REST on TCP; REST and gRPC on its Unix
//! socket; gRPC on TCP), each gRPC listener's service made an axum `Router` by [`grpc_app`].
//! [`nodelay`] turns Nagle's algorithm off on a TCP listener's connections.

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt};
use axum::Router;
use coscale_api::pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use coscale_net::Repoll;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// `listener`, its accepted connections with `TCP_NODELAY` set. With Nagle's algorithm on, an
/// HTTP/2 answer whose last frames go out in a write of their own waits for the client's
/// delayed acknowledgement: about 40 ms on Linux, every few hundred calls at one connection
/// (docs/benchmarks.md, "gRPC"). A connection whose option cannot be set is served as it is.
pub fn nodelay(listener: TcpListener) -> impl Listener<Io = TcpStream, Addr = SocketAddr> {
    listener.tap_io(|tcp: &mut TcpStream| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot turn Nagle's algorithm off on a connection");
        }
    })
}

/// The V2 gRPC `service` alone as an axum `Router`, for [`serve_http`]: a call to any other
/// service or method answers `UNIMPLEMENTED`, as tonic's own server does.
pub fn grpc_app<T: GrpcInferenceService>(service: GrpcInferenceServiceServer<T>) -> Router {
    tonic::service::Routes::new(service).into_axum_router()
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish the request it is handling (idle ones close at once) and returns.
pub async fn serve_http<L: Listener>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (io, _) = listener.accept() => {
                connections.spawn(Repoll::new(connection(io, app.clone(), stop_rx.clone())));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

async fn connection<I>(io: I, app: Router, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(err) = served {
                tracing::trace!(%err, "HTTP connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
    }
    if let Err(err) = conn.await {
        tracing::trace!(%err, "HTTP connection ended with an error while closing");
    }
}
