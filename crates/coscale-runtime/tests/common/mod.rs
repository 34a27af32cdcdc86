//! Shared fixtures: the example models, the iris rows whose labels make_models.py printed, and
//! an HTTP/2 client connection.
#![allow(dead_code)]

use std::path::PathBuf;

use coscale_api::v2::{InferRequest, Tensor, TensorData};

/// `examples/models` in the repository.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

/// Iris rows 0, 50, 100, 70 and 133 (see examples/models/README.md).
pub const ROWS: [[f32; 4]; 5] = [
    [5.1, 3.5, 1.4, 0.2],
    [7.0, 3.2, 4.7, 1.4],
    [6.3, 3.3, 6.0, 2.5],
    [5.9, 3.2, 4.8, 1.8],
    [6.3, 2.8, 5.1, 1.5],
];
/// sklearn's LogisticRegression predictions for [`ROWS`].
pub const IRIS_LABELS: [i64; 5] = [0, 1, 2, 2, 2];
/// sklearn's MLPClassifier predictions for [`ROWS`].
pub const IRIS_MLP_LABELS: [i64; 5] = [0, 1, 2, 1, 1];

/// A request with the given rows as the FP32 `input` tensor.
pub fn iris_request(rows: &[[f32; 4]]) -> InferRequest {
    InferRequest {
        id: Some("req-1".into()),
        inputs: vec![Tensor::new(
            "input",
            vec![rows.len() as i64, 4],
            TensorData::Fp32(rows.iter().flatten().copied().collect()),
        )],
        ..Default::default()
    }
}

/// An HTTP/1.1 connection to the server at `addr` (`host:port`), driven by a task of its own.
pub async fn http1_connection<B>(addr: &str) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// An HTTP/2 connection (prior knowledge, as gRPC clients and h2c-speaking proxies use) to the
/// server at `addr` (`host:port`), driven by a task of its own.
pub async fn http2_connection<B>(addr: &str) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}
