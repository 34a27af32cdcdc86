//! Socket plumbing shared by the router, the agent, the runtime and the control plane's gRPC
//! listeners, below any protocol.
//!
//! [`UnixConn`] is the Unix-domain stream the router uses to reach local replicas and the agent
//! serves them on. It exists for one reason: tokio registers its `UnixStream` with the reactor
//! for readability *and* writability, edge-triggered, and on a Unix socket the kernel signals
//! writability to every registered writer each time the peer reads what was sent (TCP signals
//! it only after a writer found the send buffer full). A request/answer connection therefore
//! wakes its process once more per exchange for an event nothing waits for — an extra
//! `epoll_wait` return and context switch per request in the router and again in the agent.
//! `UnixConn` is registered for readability only, writes directly, and registers a duplicate of
//! the socket for writability only while a write waits for room.
//!
//! [`nodelay_incoming`] hands a tonic gRPC server (the control plane's agent channel and KEDA
//! scaler) its accepted TCP connections with Nagle's algorithm off, which tonic does not do for
//! connections it is given. (The data plane's listeners serve through
//! `coscale_runtime::serve_http`, whose `nodelay` does the same for axum's listeners.)
//!
//! [`Repoll`] runs a connection's task so that its wake-ups of itself are polls in place rather
//! than trips through tokio's scheduler (which wake an idle worker for nothing).
//!
//! Depends on tokio only; knows nothing of HTTP.

mod incoming;
mod repoll;

pub use incoming::nodelay_incoming;
pub use repoll::{Repoll, MAX_REPOLLS};

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The most of a read buffer's uninitialised room prepared for one read (tokio hands over
/// uninitialised memory, which safe code must zero before the kernel fills it).
const READ_CHUNK: usize = 64 * 1024;

/// A connected Unix stream socket, watched by the reactor for readability only (see the crate
/// documentation).
#[derive(Debug)]
pub struct UnixConn {
    io: AsyncFd<std::os::unix::net::UnixStream>,
    /// A duplicate of the socket registered for writability, present only while a write waits
    /// for room in the send buffer.
    room: Option<AsyncFd<OwnedFd>>,
}

impl UnixConn {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        Self::from_tokio(tokio::net::UnixStream::connect(path).await?)
    }

    /// Takes over a connected tokio stream (e.g. one a `UnixListener` accepted).
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Self::from_std(stream.into_std()?)
    }

    /// Takes over a connected standard-library stream.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(UnixConn {
            io: register(stream, Interest::READABLE)?,
            room: None,
        })
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &std::os::unix::net::UnixStream {
        self.io.get_ref()
    }

    /// Writes with `write`, which must make one non-blocking write attempt on the socket;
    /// waits for room when the send buffer is full.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl Fn(&std::os::unix::net::UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Some(room) = &self.room {
                let mut guard = ready!(room.poll_write_ready(cx))?;
                // `try_io` clears the readiness when the write would block again, so the next
                // `poll_write_ready` registers the waker instead of spinning.
                let done = guard.try_io(|_| write(self.io.get_ref())).ok();
                drop(guard);
                match done {
                    Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Some(result) => {
                        self.room = None;
                        return Poll::Ready(result);
                    }
                    None => continue,
                }
            }
            match write(self.io.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let dup = self.io.get_ref().as_fd().try_clone_to_owned()?;
                    self.room = Some(register(dup, Interest::WRITABLE)?);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

/// Registers `socket` with the reactor for `interest` only.
///
/// tokio 1.54 deprecated the safe constructor in favour of an `unsafe` one, because a generic
/// `T: AsRawFd` could hand out a different descriptor later or close it early. The two types
/// registered here own their descriptor for their whole life and always return it, which is the
/// condition the `unsafe` constructor asks callers to uphold; the workspace forbids `unsafe`, so
/// the safe form stays.
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(socket: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(socket, interest)
}

impl AsyncRead for UnixConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            // Nothing to read into: not an end of stream, and no reason to wait.
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(this.io.poll_read_ready(cx))?;
            let want = buf.remaining().min(READ_CHUNK);
            let unfilled = buf.initialize_unfilled_to(want);
            match guard.try_io(|io| {
                let mut socket = io.get_ref();
                socket.read(unfilled)
            }) {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        // A short read emptied the socket: the next read waits for the next
                        // edge instead of first trying and failing (as tokio's own streams do).
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for UnixConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut s: &std::os::unix::net::UnixStream| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut s: &std::os::unix::net::UnixStream| {
                s.write_vectored(bufs)
            })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.get_ref().shutdown(Shutdown::Write) {
            // The peer went away first: there is nothing left to shut.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            result => Poll::Ready(result),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

    fn pair() -> (UnixConn, UnixConn) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (
            UnixConn::from_std(a).unwrap(),
            UnixConn::from_std(b).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_room_and_then_drops_its_registration()
    {
        let (mut a, mut b) = pair();
        let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                a.write_all(&sent).await.unwrap();
                assert!(
                    a.room.is_none(),
                    "the writability registration outlived the write"
                );
                a.shutdown().await.unwrap();
                a
            })
        };
        let mut got = Vec::new();
        tokio::time::timeout(DEADLINE, b.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == sent, "the bytes arrived changed or out of order");
        tokio::time::timeout(DEADLINE, writer)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_read_after_a_short_read_waits_for_the_next_message() {
        let (mut a, mut b) = pair();
        let mut buf = [0u8; 64];
        a.write_all(b"request").await.unwrap();
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"request");
        // The short read cleared b's readiness; the next message must still wake it.
        let later = tokio::spawn(async move {
            tokio::task::yield_now().await;
            a.write_all(b"next").await.unwrap();
            a
        });
        let n = tokio::time::timeout(DEADLINE, b.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"next");
        drop(later.await.unwrap());
        let n = tokio::time::timeout(DEADLINE, b.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "a closed peer reads as end of stream");
    }

    #[tokio::test]
    async fn a_read_into_a_full_buffer_returns_at_once_without_consuming_anything() {
        let (mut a, mut b) = pair();
        let mut empty = [0u8; 0];
        let n = tokio::time::timeout(DEADLINE, b.read(&mut empty))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        a.write_all(b"kept").await.unwrap();
        let n = b.read(&mut empty).await.unwrap();
        assert_eq!(n, 0);
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"kept");
    }

    #[tokio::test]
    async fn vectored_writes_send_every_slice_in_order() {
        let (mut a, mut b) = pair();
        let slices = [
            IoSlice::new(b"head\r\n"),
            IoSlice::new(b""),
            IoSlice::new(b"body"),
        ];
        let n = a.write_vectored(&slices).await.unwrap();
        assert!(a.is_write_vectored());
        assert_eq!(n, 10);
        let mut buf = [0u8; 16];
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"head\r\nbody");
    }

    #[tokio::test]
    async fn shutting_down_after_the_peer_left_is_not_an_error() {
        let (mut a, b) = pair();
        drop(b);
        a.shutdown().await.unwrap();
        let err = a.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn connect_reaches_a_listener_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mut client = UnixConn::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = UnixConn::from_tokio(server).unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(client.get_ref().peer_addr().is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the sizes of the writes and of the reader's buffer, the bytes arrive whole
        /// and in order.
        #[test]
        fn bytes_arrive_whole_and_in_order_over_any_write_and_read_sizes(
            writes in proptest::collection::vec(1usize..300_000, 1..12),
            read_size in 1usize..100_000,
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (mut a, mut b) = pair();
                let total: usize = writes.iter().sum();
                let sent: Vec<u8> = (0..total).map(|i| (i * 7 % 256) as u8).collect();
                let writer = {
                    let sent = sent.clone();
                    tokio::spawn(async move {
                        let mut at = 0;
                        for w in writes {
                            a.write_all(&sent[at..at + w]).await.unwrap();
                            at += w;
                        }
                    })
                };
                let mut got = Vec::with_capacity(total);
                let mut buf = vec![0u8; read_size];
                while got.len() < total {
                    let n = tokio::time::timeout(DEADLINE, b.read(&mut buf))
                        .await
                        .unwrap()
                        .unwrap();
                    assert!(n > 0, "end of stream before every byte arrived");
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got == sent, "the bytes arrived changed or out of order");
                writer.await.unwrap();
            });
        }
    }
}
