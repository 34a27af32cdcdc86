//! HTTP/1.1 connections from the router to replicas, for REST requests and gRPC calls alike
//! (a gRPC call goes to the replica's gRPC listener as an HTTP/1.1 request whose answer carries
//! its status in chunked trailers); [`attempt`], one request/answer exchange with a replica on
//! such a connection, and [`with_retry`], which sends once more to another replica when one
//! gave no answer or only part of one. [`Stream`] is a connection to a replica over TCP or its
//! Unix socket.
//!
//! Each client connection keeps the replica connections it used ([`Upstreams`]): the next
//! request to the same replica goes out on the same socket from the same task, with no
//! hand-over to another task. When the client goes away its connections move to the shared idle
//! [`crate::pool::Pool`], from which new client connections take them. A replica that has a
//! data-plane Unix socket (local replicas of `coscale up`) is reached over it, else over TCP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use coscale_net::UnixConn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{Failure, RouteError};
use crate::h1::{self, BodyError, Framing, ResponseHead};
use crate::handle::{lock, RouterHandle};
use crate::pool::Pooled;
use crate::state::{Picked, Replica};

/// A connection to a replica: TCP, or its Unix socket (REST and gRPC alike).
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixConn),
}

impl Stream {
    /// Connects to the replica at `addr` — over `socket` when it has one — within `timeout`.
    pub(crate) async fn connect(
        addr: SocketAddr,
        socket: Option<&Path>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let connect = async {
            Ok::<_, io::Error>(match socket {
                Some(path) => Stream::Unix(UnixConn::connect(path).await?),
                None => {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    Stream::Tcp(tcp)
                }
            })
        };
        tokio::time::timeout(timeout, connect).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {} ms", timeout.as_millis()),
            )
        })?
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The failure of a connection to the replica at `addr`, over its Unix `socket` when it has
/// one: no answer, so the request is retried elsewhere.
fn connect_failed(addr: SocketAddr, socket: Option<&Path>, err: impl std::fmt::Display) -> Failure {
    let to = socket.map_or_else(|| addr.to_string(), |p| p.display().to_string());
    Failure::NoAnswer(format!("connecting to {to} failed: {err}"))
}

/// One open HTTP/1.1 connection to a replica.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The replica's TCP address (REST or gRPC listener): its key in the pool, whichever way
    /// it is connected.
    addr: SocketAddr,
    stream: Stream,
    buf: BytesMut,
    /// Whether a request went out on it before (it may have been closed by the replica since).
    reused: bool,
}

impl Upstream {
    /// Opens a connection to the replica at `addr` — over `socket` when it has one — within
    /// `timeout`.
    pub(crate) async fn connect(
        addr: SocketAddr,
        socket: Option<&Path>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let stream = Stream::connect(addr, socket, timeout).await?;
        Ok(Upstream {
            addr,
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            reused: false,
        })
    }

    /// Whether a request went out on this connection before.
    pub(crate) fn reused(&self) -> bool {
        self.reused
    }
}

impl Pooled for Upstream {
    fn replica(&self) -> SocketAddr {
        self.addr
    }
}

/// A replica's complete answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) head: ResponseHead,
    pub(crate) body: Bytes,
    /// Trailer field lines of a chunked answer (a gRPC answer's status).
    pub(crate) trailers: Vec<Bytes>,
}

/// How an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// No answer arrived: the request could not be sent, or the connection closed or failed
    /// before the status line. Sending it again elsewhere is what the router does.
    NoAnswer(String),
    /// The answer started and then the connection closed or failed.
    CutOff(String),
    /// The answer was malformed or larger than the limit.
    Broken(String),
}

/// Sends `request` (head and body, already encoded) on `conn` and reads the whole answer.
/// Returns the connection too when it can carry another request.
pub(crate) async fn exchange(
    mut conn: Upstream,
    request: &[u8],
    head_request: bool,
    answer_limit: usize,
) -> Result<(Answer, Option<Upstream>), ExchangeError> {
    conn.reused = true;
    conn.stream
        .write_all(request)
        .await
        .map_err(|e| ExchangeError::NoAnswer(format!("sending the request failed: {e}")))?;
    let head = loop {
        match h1::parse_response(&mut conn.buf) {
            Err(err) => return Err(ExchangeError::Broken(err.to_string())),
            // 1xx interim answers (100 Continue, 103 Early Hints) precede the real one.
            Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {}
            Ok(Some(head)) => break head,
            Ok(None) => {
                let started = !conn.buf.is_empty();
                match conn.stream.read_buf(&mut conn.buf).await {
                    Ok(0) if started => {
                        return Err(ExchangeError::CutOff(
                            "connection closed in the middle of the answer's head".into(),
                        ))
                    }
                    Ok(0) => {
                        return Err(ExchangeError::NoAnswer(
                            "connection closed before an answer".into(),
                        ))
                    }
                    Ok(_) => {}
                    Err(e) if started => return Err(ExchangeError::CutOff(e.to_string())),
                    Err(e) => return Err(ExchangeError::NoAnswer(e.to_string())),
                }
            }
        }
    };
    if head.status == 101 {
        return Err(ExchangeError::Broken(
            "the replica switched protocols, which the router does not forward".into(),
        ));
    }
    let framing = h1::response_framing(head.status, head_request, &head.fields)
        .map_err(|e| ExchangeError::Broken(e.to_owned()))?;
    let body = h1::read_body(&mut conn.stream, &mut conn.buf, framing, answer_limit)
        .await
        .map_err(|e| match e {
            BodyError::Closed | BodyError::Io(_) => ExchangeError::CutOff(format!("answer {e}")),
            BodyError::TooLarge(_) | BodyError::Malformed(_) => {
                ExchangeError::Broken(format!("answer {e}"))
            }
        })?;
    let reusable = framing != Framing::UntilClose && head.keep_alive() && conn.buf.is_empty();
    let answer = Answer {
        head,
        body: body.data,
        trailers: body.trailers,
    };
    Ok((answer, reusable.then_some(conn)))
}

/// Most replica connections one client connection holds; the oldest beyond go to the pool (so
/// that replicas that went away do not pile up on a long-lived client connection).
const MAX_HELD: usize = 8;

/// The replica connections one client connection holds between its requests (shared by the
/// calls of a gRPC client connection in flight at once, each of which takes one while it uses
/// it).
#[derive(Debug, Default)]
pub(crate) struct Upstreams {
    conns: std::sync::Mutex<Vec<Upstream>>,
}

impl Upstreams {
    /// A held connection to `addr`, if any.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<Upstream> {
        let mut conns = lock(&self.conns);
        let i = conns.iter().position(|c| c.addr == addr)?;
        Some(conns.swap_remove(i))
    }

    /// Holds `conn`; returns the oldest held connection if there are now too many.
    pub(crate) fn keep(&self, conn: Upstream) -> Option<Upstream> {
        let mut conns = lock(&self.conns);
        conns.push(conn);
        (conns.len() > MAX_HELD).then(|| conns.remove(0))
    }

    /// Every held connection, for the shared pool.
    pub(crate) fn into_inner(self) -> Vec<Upstream> {
        self.conns
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One request encoded for a replica, and how to read its answer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// Head and body, as they go on the wire.
    pub(crate) request: Vec<u8>,
    /// Whether it is a HEAD request (whose answer has no body).
    pub(crate) head_request: bool,
    /// Largest answer body taken.
    pub(crate) limit: usize,
}

/// Sends a request with `send` to the `first` replica and, when it gave no answer or only part
/// of one, once more to another replica of the model (counted as a retry). The answer comes with
/// the replica that gave it, whose in-flight slot is still held; a failure is the last
/// replica's.
pub(crate) async fn with_retry<T, F, Fut>(
    handle: &RouterHandle,
    first: Picked,
    send: F,
) -> Result<(T, Picked), RouteError>
where
    F: Fn(Arc<Replica>) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let failure = match send(first.shared()).await {
        Ok(answer) => return Ok((answer, first)),
        Err(failure) => failure,
    };
    let retry = failure.retried();
    let failed = failure.error(handle, first.replica());
    if !retry {
        return Err(failed);
    }
    let first_replica = first.shared();
    drop(first);
    let Ok(second) = handle.pick(&first_replica.model, Some(&first_replica.endpoint)) else {
        return Err(failed);
    };
    handle.metrics().retried();
    tracing::debug!(error = %failed, retry_on = %second.replica().label(), "retrying on another replica");
    match send(second.shared()).await {
        Ok(answer) => Ok((answer, second)),
        Err(failure) => Err(failure.error(handle, second.replica())),
    }
}

/// Sends `outgoing` to the replica at `addr` (over its Unix `socket` when it has one) within the
/// request timeout and reads the whole answer: on a connection this client connection holds or
/// an idle one from the pool if there is one (again on a new connection if that one turns out
/// to have been closed while idle), else on a new connection.
pub(crate) async fn attempt(
    handle: &RouterHandle,
    upstreams: &Upstreams,
    addr: SocketAddr,
    socket: Option<&Path>,
    outgoing: &Outgoing,
) -> Result<Answer, Failure> {
    let config = handle.config();
    let run = async {
        if let Some(conn) = upstreams.take(addr).or_else(|| handle.pool().take(addr)) {
            match on(handle, conn, upstreams, outgoing).await {
                Ok(answer) => return Ok(answer),
                // A kept connection the replica closed meanwhile: not the replica's failure.
                Err((Failure::NoAnswer(_), true)) => {}
                Err((failure, _)) => return Err(failure),
            }
        }
        let conn = Upstream::connect(addr, socket, config.connect_timeout)
            .await
            .map_err(|e| connect_failed(addr, socket, e))?;
        on(handle, conn, upstreams, outgoing)
            .await
            .map_err(|(failure, _)| failure)
    };
    match tokio::time::timeout(config.request_timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(Failure::TimedOut),
    }
}

/// [`exchange`] on `conn`, holding the connection if it can be used again (the oldest held one
/// going to the pool if there are too many). A failure comes with whether the connection had
/// been used before.
async fn on(
    handle: &RouterHandle,
    conn: Upstream,
    upstreams: &Upstreams,
    outgoing: &Outgoing,
) -> Result<Answer, (Failure, bool)> {
    let reused = conn.reused();
    match exchange(
        conn,
        &outgoing.request,
        outgoing.head_request,
        outgoing.limit,
    )
    .await
    {
        Ok((answer, back)) => {
            if let Some(oldest) = back.and_then(|conn| upstreams.keep(conn)) {
                handle.pool().put([oldest]);
            }
            Ok(answer)
        }
        Err(ExchangeError::NoAnswer(detail)) => Err((Failure::NoAnswer(detail), reused)),
        Err(ExchangeError::CutOff(detail)) => Err((Failure::CutOff(detail), false)),
        Err(ExchangeError::Broken(detail)) => Err((Failure::Broken(detail), false)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::net::TcpListener;

    /// A replica that reads one request and writes `answer` raw bytes, then keeps or closes.
    async fn replica(answer: &'static [u8], close: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            if socket.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        buf.clear();
                        socket.write_all(answer).await.unwrap();
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: r\r\ncontent-length: 0\r\n\r\n";

    async fn connect(addr: SocketAddr) -> Upstream {
        Upstream::connect(addr, None, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// One GET exchange with a fresh replica answering `answer` (then closing if `close`).
    async fn ask(
        answer: &'static [u8],
        close: bool,
        head_request: bool,
        limit: usize,
    ) -> Result<(Answer, Option<Upstream>), ExchangeError> {
        let addr = replica(answer, close).await;
        exchange(connect(addr).await, GET, head_request, limit).await
    }

    #[tokio::test]
    async fn a_content_length_answer_after_100_continue_is_read_and_the_connection_kept() {
        let (answer, conn) = ask(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
            false,
            100,
        )
        .await
        .unwrap();
        assert_eq!(answer.head.status, 200);
        assert_eq!(&answer.body[..], b"ok");
        let conn = conn.expect("reusable");
        assert!(conn.reused());
        let (again, _) = exchange(conn, GET, false, 100).await.unwrap();
        assert_eq!(&again.body[..], b"ok");
    }

    #[tokio::test]
    async fn chunked_and_until_close_answers_are_read_whole() {
        let (answer, conn) = ask(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n", false, false, 100).await.unwrap();
        assert_eq!(&answer.body[..], b"ok!!!");
        assert!(conn.is_some());
        let (answer, conn) = ask(
            b"HTTP/1.1 500 Internal Server Error\r\n\r\nboom",
            true,
            false,
            100,
        )
        .await
        .unwrap();
        assert_eq!(answer.head.status, 500);
        assert_eq!(&answer.body[..], b"boom");
        assert!(
            conn.is_none(),
            "a body read until close ends the connection"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_no_answer_in_it_cut_off_and_a_bad_one_broken()
    {
        let err = ask(b"", true, false, 100).await.unwrap_err();
        assert!(matches!(err, ExchangeError::NoAnswer(_)), "{err:?}");
        // (answer, whether it breaks off rather than being malformed)
        for (answer, cut_off) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-le"[..], true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nsho",
                true,
            ),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", false),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                false,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
                false,
            ),
        ] {
            let err = ask(answer, true, false, 100).await.unwrap_err();
            if cut_off {
                assert!(matches!(err, ExchangeError::CutOff(_)), "{err:?}");
            } else {
                assert!(matches!(err, ExchangeError::Broken(_)), "{err:?}");
            }
        }
    }

    #[tokio::test]
    async fn answers_over_the_limit_are_broken() {
        let err = ask(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789",
            false,
            false,
            9,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ExchangeError::Broken(ref m) if m.contains("limit of 9 bytes")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_head_request_answer_has_no_body_even_with_a_content_length() {
        let (answer, conn) = ask(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            false,
            true,
            100,
        )
        .await
        .unwrap();
        assert!(answer.body.is_empty());
        assert!(conn.is_some());
    }

    #[tokio::test]
    async fn a_client_connection_holds_at_most_eight_replica_connections() {
        let addr = replica(b"", false).await;
        let held = Upstreams::default();
        let first = connect(addr).await;
        let port = |conn: &Upstream| match &conn.stream {
            Stream::Tcp(tcp) => tcp.local_addr().unwrap().port(),
            Stream::Unix(_) => unreachable!("connected over TCP"),
        };
        let first_port = port(&first);
        assert!(held.keep(first).is_none());
        for _ in 1..MAX_HELD {
            assert!(held.keep(connect(addr).await).is_none());
        }
        let evicted = held.keep(connect(addr).await).expect("the oldest goes");
        assert_eq!(port(&evicted), first_port);
        assert_eq!(held.into_inner().len(), MAX_HELD);
    }
}
