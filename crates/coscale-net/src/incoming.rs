//! [`nodelay_incoming`]: the connections a gRPC server accepts, with Nagle's algorithm off.

use std::io;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// The connections accepted on `listener`, each with `TCP_NODELAY` set, for
/// `tonic::transport::Server::serve_with_incoming*`.
///
/// tonic sets no socket options on connections it is handed, and with Nagle's algorithm on, an
/// HTTP/2 answer whose last frames go out in a write of their own waits for the client's
/// delayed acknowledgement: about 40 ms on Linux, every few hundred calls at one connection
/// (docs/benchmarks.md, "gRPC"). A connection whose option cannot be set is passed on as the
/// error (tonic skips errors and keeps accepting).
pub fn nodelay_incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn every_accepted_connection_has_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = nodelay_incoming(listener);
        tokio::pin!(incoming);
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let accepted = incoming.next().await.unwrap().unwrap();
            assert!(accepted.nodelay().unwrap());
            assert_eq!(
                accepted.peer_addr().unwrap(),
                clients.last().unwrap().local_addr().unwrap()
            );
        }
        // The client side is left as it was: the option is the server's choice for its end.
        assert!(!clients[0].nodelay().unwrap());
    }
}
