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
//! socket).

use std::future::Future;

use axum::serve::Listener;
use axum::Router;
use coscale_net::Repoll;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;

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
