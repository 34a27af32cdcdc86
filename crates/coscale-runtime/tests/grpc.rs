//! The V2 gRPC service served as `coscale runtime` serves it (`serve_http` of `grpc_app` on a
//! `nodelay` TCP listener), driven by the generated tonic client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use coscale_api::pb::inference as pb;
use coscale_api::pb::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use coscale_api::v2::{InferResponse, TensorData};
use coscale_runtime::{grpc_service, Engine, MAX_GRPC_MESSAGE_SIZE};
use tonic::transport::Channel;

/// Serves the runtime's gRPC service with `iris` loaded; returns its address.
async fn serve() -> SocketAddr {
    let engine = Arc::new(Engine::new());
    engine.load("iris", &models_dir().join("iris")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = grpc_service(engine, models_dir());
    tokio::spawn(coscale_runtime::serve_http(
        coscale_runtime::nodelay(listener),
        coscale_runtime::grpc_app(service),
        std::future::pending(),
    ));
    addr
}

async fn start() -> GrpcInferenceServiceClient<Channel> {
    let addr = serve().await;
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE)
}

fn labels(resp: pb::ModelInferResponse) -> Vec<i64> {
    let decoded = InferResponse::from_proto(resp).unwrap();
    match &decoded
        .outputs
        .iter()
        .find(|o| o.name == "label")
        .unwrap()
        .data
    {
        TensorData::Int64(v) => v.clone(),
        other => panic!("label is not INT64: {other:?}"),
    }
}

#[tokio::test]
async fn health_and_metadata_rpcs_answer() {
    let mut c = start().await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let server = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.name, "coscale-runtime");
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("iris", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("iris", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("iris", "2"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "iris".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.platform, "onnx");
    assert_eq!(meta.inputs[0].shape, vec![-1, 4]);
    assert_eq!(
        meta.outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["label", "probabilities"]
    );
}

#[tokio::test]
async fn raw_requests_get_raw_outputs_and_typed_requests_typed_ones() {
    let mut c = start().await;
    let raw = c
        .model_infer(iris_request(&ROWS).to_proto("iris", None, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.raw_output_contents.len(), 2);
    assert!(raw.outputs.iter().all(|o| o.contents.is_none()));
    assert_eq!(raw.id, "req-1");
    assert_eq!(labels(raw), IRIS_LABELS.to_vec());

    let typed = c
        .model_infer(iris_request(&ROWS[..3]).to_proto("iris", Some("1"), false))
        .await
        .unwrap()
        .into_inner();
    assert!(typed.raw_output_contents.is_empty());
    assert_eq!(
        typed.outputs[0].contents.as_ref().unwrap().int64_contents,
        IRIS_LABELS[..3].to_vec()
    );
}

#[tokio::test]
async fn errors_map_to_not_found_and_invalid_argument() {
    let mut c = start().await;
    let err = c
        .model_infer(iris_request(&ROWS[..1]).to_proto("nope", None, true))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::NotFound, "model 'nope' not found")
    );
    let mut bad = iris_request(&ROWS[..1]);
    bad.inputs[0].shape = vec![4, 1];
    let err = c
        .model_infer(bad.to_proto("iris", None, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("has shape [4, 1]"),
        "{}",
        err.message()
    );
    let mut short = iris_request(&ROWS[..1]).to_proto("iris", None, true);
    short.raw_input_contents[0].truncate(6);
    let err = c.model_infer(short).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("not a whole number of FP32 elements"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn repository_rpcs_load_list_and_unload_models() {
    let mut c = start().await;
    let index = |ready: bool| pb::RepositoryIndexRequest {
        repository_name: String::new(),
        ready,
    };
    let all = c
        .repository_index(index(false))
        .await
        .unwrap()
        .into_inner()
        .models;
    let state = |models: &[pb::repository_index_response::ModelIndex], name: &str| {
        models
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.state.clone())
    };
    assert_eq!(state(&all, "iris").as_deref(), Some("READY"));
    assert_eq!(state(&all, "iris-mlp").as_deref(), Some("UNAVAILABLE"));

    let load = pb::RepositoryModelLoadRequest {
        model_name: "iris-mlp".into(),
        ..Default::default()
    };
    c.repository_model_load(load).await.unwrap();
    let ready = c
        .repository_index(index(true))
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(
        ready.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["iris", "iris-mlp"]
    );
    let resp = c
        .model_infer(iris_request(&ROWS).to_proto("iris-mlp", None, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(labels(resp), IRIS_MLP_LABELS.to_vec());

    let unload = pb::RepositoryModelUnloadRequest {
        model_name: "iris-mlp".into(),
        ..Default::default()
    };
    c.repository_model_unload(unload.clone()).await.unwrap();
    assert_eq!(
        c.repository_model_unload(unload).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let absent = pb::RepositoryModelLoadRequest {
        model_name: "absent".into(),
        ..Default::default()
    };
    assert_eq!(
        c.repository_model_load(absent).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

type AnyBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// `message` length-prefixed, as a gRPC request body carries it.
fn framed(message: &[u8]) -> bytes::Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// Calls `path` on the server at `addr` over a new HTTP/2 connection with `body` and the extra
/// `headers`, as a gRPC client would but without a client's own deadline handling; returns
/// the call's `grpc-status` (from the head of a trailers-only answer, else the trailers).
async fn raw_call(addr: SocketAddr, path: &str, body: AnyBody, headers: &[(&str, &str)]) -> String {
    raw_call_over(http::Version::HTTP_2, addr, path, body, headers)
        .await
        .status
}

/// A call's answer as [`raw_call_over`] reads it.
struct RawAnswer {
    /// `grpc-status`: in the head of a trailers-only answer, else in the trailers.
    status: String,
    /// Whether it came in the trailers.
    in_trailers: bool,
    body: bytes::Bytes,
}

/// [`raw_call`] over HTTP/2 or HTTP/1.1 (as the router calls replicas), with the answer's body.
async fn raw_call_over(
    version: http::Version,
    addr: SocketAddr,
    path: &str,
    body: AnyBody,
    headers: &[(&str, &str)],
) -> RawAnswer {
    use http_body_util::BodyExt;
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .version(version)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body).unwrap();
    let answer = if version == http::Version::HTTP_2 {
        let mut send = http2_connection::<AnyBody>(&addr.to_string()).await;
        send.send_request(request).await.unwrap()
    } else {
        let mut send = http1_connection::<AnyBody>(&addr.to_string()).await;
        send.send_request(request).await.unwrap()
    };
    assert_eq!(answer.status(), http::StatusCode::OK, "{path}");
    let head = answer.headers().clone();
    let collected = answer.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let in_head = head.get("grpc-status");
    let status = in_head
        .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .unwrap_or_else(|| panic!("{path}: no grpc-status in {head:?} / {trailers:?}"));
    RawAnswer {
        status: status.to_str().unwrap().to_owned(),
        in_trailers: in_head.is_none(),
        body: collected.to_bytes(),
    }
}

fn whole(message: &[u8]) -> AnyBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(framed(message)).boxed()
}

/// A call to a service or method the runtime does not serve answers gRPC status UNIMPLEMENTED
/// (12), as tonic's own server does, rather than an HTTP error.
#[tokio::test]
async fn a_call_to_another_service_or_method_is_unimplemented() {
    let addr = serve().await;
    for path in [
        "/grpc.health.v1.Health/Check",
        "/inference.GRPCInferenceService/NoSuchMethod",
    ] {
        assert_eq!(raw_call(addr, path, whole(&[]), &[]).await, "12", "{path}");
    }
}

/// A call still waiting when its `grpc-timeout` passes (here for the rest of its request body,
/// which never comes) is answered DEADLINE_EXCEEDED (4) by the server, as tonic's own server
/// does, over HTTP/2 and HTTP/1.1 alike; the same call sent whole within its deadline is
/// answered. (As with tonic's server, an inference already running on its worker is not
/// interrupted.)
#[tokio::test]
async fn a_call_past_its_grpc_timeout_is_deadline_exceeded() {
    use http_body_util::BodyExt;
    use prost::Message;
    let addr = serve().await;
    let message = iris_request(&ROWS)
        .to_proto("iris", None, true)
        .encode_to_vec();
    let infer = "/inference.GRPCInferenceService/ModelInfer";

    // Over HTTP/2 as clients call, and over HTTP/1.1 as the router calls a replica.
    for version in [http::Version::HTTP_2, http::Version::HTTP_11] {
        let (more, rest) = tokio::sync::mpsc::channel(1);
        let whole_message = framed(&message);
        let half = whole_message.slice(..whole_message.len() / 2);
        more.send(Ok(hyper::body::Frame::data(half))).await.unwrap();
        let stalled =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rest));
        let deadline = [("grpc-timeout", "50m")];
        let late = raw_call_over(version, addr, infer, stalled.boxed(), &deadline);
        let late = tokio::time::timeout(std::time::Duration::from_secs(30), late)
            .await
            .expect("the server answered the stalled call");
        assert_eq!(late.status, "4", "DEADLINE_EXCEEDED over {version:?}");
        drop(more);

        let in_time = [("grpc-timeout", "10S")];
        let answer = raw_call_over(version, addr, infer, whole(&message), &in_time).await;
        assert_eq!(answer.status, "0", "{version:?}");
    }
}

/// Over HTTP/1.1, as the router calls a replica, a call is answered as over HTTP/2: the message
/// in the body, the status in the trailers (announced in a `trailer` field, without which
/// hyper would drop them), and an error as a trailers-only answer.
#[tokio::test]
async fn over_http1_the_status_comes_in_trailers_as_over_http2() {
    use prost::Message;
    let addr = serve().await;
    let infer_over_http1 = |model: &str| {
        let message = iris_request(&ROWS)
            .to_proto(model, None, true)
            .encode_to_vec();
        let path = "/inference.GRPCInferenceService/ModelInfer";
        raw_call_over(http::Version::HTTP_11, addr, path, whole(&message), &[])
    };
    let answer = infer_over_http1("iris").await;
    assert_eq!((answer.status.as_str(), answer.in_trailers), ("0", true));
    let (prefix, reply) = answer.body.split_at(5);
    assert_eq!(prefix[0], 0, "uncompressed");
    assert_eq!(
        u32::from_be_bytes(prefix[1..].try_into().unwrap()) as usize,
        reply.len()
    );
    let reply = pb::ModelInferResponse::decode(reply).unwrap();
    assert_eq!(labels(reply), IRIS_LABELS.to_vec());

    let unknown = infer_over_http1("nope").await;
    assert_eq!(unknown.status, "5", "NOT_FOUND");
    assert!(!unknown.in_trailers, "a trailers-only answer");
    assert!(unknown.body.is_empty());
}
