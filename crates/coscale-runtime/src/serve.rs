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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http;
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use coscale_api::pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use coscale_net::Repoll;
use futures::future::{BoxFuture, Either};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::server::NamedService;

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

/// The V2 gRPC `service` alone as an axum `Router`, for [`serve_http`], with what tonic's own
/// server adds to a service: a call to any other service or method answers `UNIMPLEMENTED`,
/// and a call still unanswered when its `grpc-timeout` has passed is dropped (its handler
/// cancelled) and answered `DEADLINE_EXCEEDED`. Over HTTP/1.1 (what the router sends, one call
/// per connection at a time, like its REST requests) an answer names its trailer fields in a
/// `trailer` field, without which hyper sends no trailers there: the status arrives in them as
/// over HTTP/2.
pub fn grpc_app<T: GrpcInferenceService>(service: GrpcInferenceServiceServer<T>) -> Router {
    tonic::service::Routes::new(Calls(service)).into_axum_router()
}

/// A gRPC service whose calls end with `DEADLINE_EXCEEDED` when their `grpc-timeout` passes
/// first (tonic's own server wraps every service so), and whose answers over HTTP/1 announce
/// their trailers. An HTTP/2 call without a deadline costs a header lookup, no allocation.
#[derive(Clone)]
struct Calls<S>(S);

impl<S: NamedService> NamedService for Calls<S> {
    const NAME: &'static str = S::NAME;
}

type GrpcAnswer = http::Response<tonic::body::Body>;

/// The `trailer` field of an answer over HTTP/1: the trailers a gRPC answer ends with.
const GRPC_TRAILERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

impl<S, B> tower::Service<http::Request<B>> for Calls<S>
where
    S: tower::Service<http::Request<B>, Response = GrpcAnswer, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GrpcAnswer;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<GrpcAnswer, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = grpc_timeout(request.headers());
        let over_http1 = request.version() < http::Version::HTTP_2;
        let answer = self.0.call(request);
        if timeout.is_none() && !over_http1 {
            return Either::Left(answer);
        }
        Either::Right(Box::pin(async move {
            let Ok(mut answer) = within(timeout, answer).await;
            // A trailers-only answer (the status in its head) has no trailers to announce.
            if over_http1 && !answer.headers().contains_key("grpc-status") {
                answer.headers_mut().insert(
                    http::header::TRAILER,
                    http::HeaderValue::from_static(GRPC_TRAILERS),
                );
            }
            Ok(answer)
        }))
    }
}

/// `answer`, or `DEADLINE_EXCEEDED` if `timeout` passes first.
async fn within(
    timeout: Option<Duration>,
    answer: impl Future<Output = Result<GrpcAnswer, Infallible>>,
) -> Result<GrpcAnswer, Infallible> {
    let Some(timeout) = timeout else {
        return answer.await;
    };
    match tokio::time::timeout(timeout, answer).await {
        Ok(answer) => answer,
        Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
            "the call's deadline (grpc-timeout {timeout:?}) passed before it was answered"
        ))
        .into_http()),
    }
}

/// The `grpc-timeout` of a call: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`),
/// as gRPC over HTTP/2 defines it. `None` when absent or malformed (ignored, as tonic does).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match value.get(digits.len()..)? {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_malformed_ones_ignored() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("10S"), Some(Duration::from_secs(10)));
        assert_eq!(timeout_of("100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout_of("250u"), Some(Duration::from_micros(250)));
        assert_eq!(
            timeout_of("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            "",
            "S",
            "m",
            "10",
            "10s",
            "10 S",
            "-1S",
            "+1S",
            "123456789S",
            "1.5S",
            "1é",
        ] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
