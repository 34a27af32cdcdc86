//! The V2 gRPC front end (`inference.GRPCInferenceService`), an HTTP/2 server of its own on the
//! h2 crate, built like the REST one: one task per client connection does everything for that
//! connection. It accepts the connection's calls, reads each request message, forwards it byte
//! for byte to a replica, and writes the replica's answer (head, message, trailers) back as it
//! came. A call goes to the replica's gRPC listener as an HTTP/1.1 request on a connection this
//! same task holds ([`Upstreams`], the REST path's): the replica (`grpc_app` in the agent)
//! answers with the message in a chunked body and the status in its trailers. One HTTP/2
//! connection per call instead of two halves the h2 work that made the router's gRPC hop cost
//! about twice its REST hop (docs/benchmarks.md, "gRPC"). No other task is woken on the way;
//! the task runs in a [`Repoll`], so that h2's wake-ups of the connection's own task (one per
//! frame queued) are polls in place rather than trips through the scheduler.
//!
//! Server health and metadata are answered locally; ModelReady, ModelMetadata and ModelInfer are
//! forwarded with `seldon-model` / `seldon-internal-model` metadata set, routed by the
//! `seldon-model` metadata if present (which then also becomes the message's model name), else by
//! the message's model name. That name is field 1 of all three request messages and is the only
//! field read. Repository RPCs are refused: models are managed through the control plane.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use coscale_api::pb::inference::{ServerLiveResponse, ServerMetadataResponse, ServerReadyResponse};
use coscale_net::Repoll;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::RecvStream;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;

use crate::error::{Failure, RouteError};
use crate::h1;
use crate::handle::RouterHandle;
use crate::metrics::GRPC;
use crate::name::validate_model_name;
use crate::rest::accept_loop;
use crate::state::{Picked, Replica};
use crate::upstream::{self, attempt, with_retry, Outgoing, Upstreams};
use crate::{SELDON_INTERNAL_MODEL, SELDON_MODEL};

const SERVICE: &str = "/inference.GRPCInferenceService/";
const REPOSITORY_REFUSAL: &str =
    "the router does not serve the model repository API; use the control plane API to load and unload models";
/// Flow-control windows of client connections, each way, per call and per connection (hyper's
/// defaults).
const WINDOW: u32 = 1 << 20;
/// Largest header block accepted from clients (a replica's answer head is limited as a REST
/// answer's, `h1::MAX_HEAD_BYTES`).
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Calls a client may have open at once on one connection (hyper's default; each may hold a
/// message of up to `grpc_max_message_bytes` in the router).
const MAX_CALLS_PER_CONNECTION: u32 = 200;
/// Bytes before a gRPC message: the compressed flag and the length (big-endian u32).
const PREFIX: usize = 5;

/// Serves gRPC clients on `listener` until `stopped` turns true, then lets every connection
/// finish the calls it is handling and returns.
pub(crate) async fn serve_grpc(
    listener: TcpListener,
    handle: RouterHandle,
    stopped: watch::Receiver<bool>,
) {
    accept_loop(listener, stopped.clone(), |stream| {
        Repoll::new(connection(handle.clone(), stream, stopped.clone()))
    })
    .await;
}

async fn connection(handle: RouterHandle, stream: TcpStream, mut stopped: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let config = handle.config();
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_CALLS_PER_CONNECTION)
        .handshake::<_, Bytes>(stream);
    let mut conn = match tokio::time::timeout(config.client_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        _ => return,
    };
    let upstreams = Upstreams::default();
    let mut calls = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    calls.push(call(&handle, &upstreams, request, respond));
                }
                Some(Err(err)) => {
                    tracing::debug!(%err, "gRPC client connection failed");
                    break;
                }
                // Closed by the client, or shut down once its last call was answered.
                None => break,
            },
            Some(()) = calls.next(), if !calls.is_empty() => {}
            _ = stopped.wait_for(|stop| *stop), if !stopping => {
                // GOAWAY: no new calls; `accept` ends once the calls in flight are answered.
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
    // The client is gone: its calls end here, its replica connections go to the next client
    // connection.
    drop(calls);
    handle.pool().put(upstreams.into_inner());
}

/// One call: read, answer, write the answer back; counted in the metrics when it names a model.
/// A call the client cancels (RST_STREAM, e.g. its deadline passed) is dropped at once, which
/// cancels the replica's call too and frees the replica's slot.
async fn call(
    handle: &RouterHandle,
    upstreams: &Upstreams,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let answer = {
        let cancelled = std::future::poll_fn(|cx| respond.poll_reset(cx));
        tokio::select! {
            answer = answer(handle, upstreams, request) => answer,
            reason = cancelled => {
                tracing::debug!(?reason, "the client cancelled a gRPC call");
                return;
            }
        }
    };
    if let Err(err) = answer.send(&mut respond) {
        tracing::debug!(%err, "writing a gRPC answer failed");
    }
    // A forwarded answer's replica slot is released only now, once the answer is out.
    drop(answer);
}

/// What a call is answered with.
enum Answer {
    /// Not a gRPC request (wrong content type): a plain HTTP status.
    Http(StatusCode),
    /// An error status, sent as a trailers-only answer.
    Status(Code, String),
    /// A message made here (server health and metadata), with status OK.
    Local(Bytes),
    /// The replica's answer as it came, and the replica's in-flight slot (released when the
    /// answer is dropped, after it is sent).
    Forwarded {
        upstream: Box<Replied>,
        _slot: Picked,
    },
}

impl Answer {
    fn error(err: &RouteError) -> Self {
        Answer::Status(err.grpc_code(), err.to_string())
    }

    /// The gRPC status code, for the metrics.
    fn code(&self) -> Code {
        match self {
            Answer::Http(_) => Code::Unknown,
            Answer::Status(code, _) => *code,
            Answer::Local(_) => Code::Ok,
            Answer::Forwarded { upstream, .. } => upstream.code(),
        }
    }

    fn send(&self, respond: &mut SendResponse<Bytes>) -> Result<(), h2::Error> {
        match self {
            Answer::Http(status) => {
                let mut head = Response::new(());
                *head.status_mut() = *status;
                respond.send_response(head, true)?;
            }
            Answer::Status(code, message) => {
                let mut head = grpc_head();
                // grpc-status and the percent-encoded grpc-message.
                let status = tonic::Status::new(*code, message.clone());
                if status.add_header(head.headers_mut()).is_err() {
                    head.headers_mut()
                        .insert("grpc-status", HeaderValue::from(*code as i32));
                }
                respond.send_response(head, true)?;
            }
            Answer::Local(message) => {
                let mut stream = respond.send_response(grpc_head(), false)?;
                stream.send_data(message.clone(), false)?;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                stream.send_trailers(trailers)?;
            }
            Answer::Forwarded { upstream, .. } => {
                let head = Response::from_parts(upstream.head.clone(), ());
                let ends_here = upstream.message.is_empty() && upstream.trailers.is_none();
                let mut stream = respond.send_response(head, ends_here)?;
                match &upstream.trailers {
                    _ if ends_here => {}
                    None => stream.send_data(upstream.message.clone(), true)?,
                    Some(trailers) => {
                        if !upstream.message.is_empty() {
                            stream.send_data(upstream.message.clone(), false)?;
                        }
                        stream.send_trailers(trailers.clone())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `200`, `content-type: application/grpc`.
fn grpc_head() -> Response<()> {
    let mut head = Response::new(());
    head.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head
}

async fn answer(
    handle: &RouterHandle,
    upstreams: &Upstreams,
    request: Request<RecvStream>,
) -> Answer {
    let (parts, mut body) = request.into_parts();
    let Some(method) = parts.uri.path().strip_prefix(SERVICE) else {
        let message = format!("unknown service in {}", parts.uri.path());
        return Answer::Status(Code::Unimplemented, message);
    };
    let is_grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if parts.method != Method::POST || !is_grpc {
        return Answer::Http(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let local = |message: Vec<u8>| Answer::Local(frame(&message));
    match method {
        "ServerLive" => local(ServerLiveResponse { live: true }.encode_to_vec()),
        "ServerReady" => local(ServerReadyResponse { ready: true }.encode_to_vec()),
        "ServerMetadata" => local(
            ServerMetadataResponse {
                name: "coscale".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                extensions: Vec::new(),
            }
            .encode_to_vec(),
        ),
        "ModelInfer" | "ModelReady" | "ModelMetadata" => {
            let timer = handle.metrics().start(GRPC);
            let (label, answer) = match forward(handle, upstreams, &parts, &mut body).await {
                Ok((upstream, picked)) => {
                    let model = picked.replica().model.clone();
                    let upstream = Box::new(upstream);
                    (
                        model,
                        Answer::Forwarded {
                            upstream,
                            _slot: picked,
                        },
                    )
                }
                Err(err) => {
                    // Only routing-table names become label values, so the label set stays
                    // bounded.
                    let label = match &err {
                        Named::Known(model, _) => model.clone(),
                        Named::Unknown(_) => String::new(),
                    };
                    (label, Answer::error(err.error()))
                }
            };
            timer.finish(&label, answer.code() as u16);
            answer
        }
        "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => {
            Answer::error(&RouteError::Unimplemented(REPOSITORY_REFUSAL.to_owned()))
        }
        other => Answer::Status(Code::Unimplemented, format!("unknown method {other}")),
    }
}

/// A failed forward, with the model name when it is one of the routing table's.
enum Named {
    Known(String, RouteError),
    Unknown(RouteError),
}

impl Named {
    fn error(&self) -> &RouteError {
        match self {
            Named::Known(_, err) | Named::Unknown(err) => err,
        }
    }
}

impl From<RouteError> for Named {
    fn from(err: RouteError) -> Self {
        Named::Unknown(err)
    }
}

/// Reads the call's message, finds its model and forwards it: retried once on another replica if
/// the first gave no answer or only part of one.
async fn forward(
    handle: &RouterHandle,
    upstreams: &Upstreams,
    parts: &http::request::Parts,
    body: &mut RecvStream,
) -> Result<(Replied, Picked), Named> {
    let config = handle.config();
    let limit = config.grpc_max_message_bytes;
    let framed = match tokio::time::timeout(config.client_timeout, read_body(body, limit)).await {
        Ok(read) => read?,
        Err(_) => {
            let message = format!(
                "the request message did not arrive within {} ms",
                config.client_timeout.as_millis()
            );
            return Err(RouteError::BadBody(message).into());
        }
    };
    let (framed, model) = routed_message(&parts.headers, framed)?;
    let first = handle.pick(&model, None).map_err(|err| match err {
        RouteError::UnknownModel(_) => Named::Unknown(err),
        err => Named::Known(model.clone(), err),
    })?;
    let framed = &framed;
    let send = |replica: Arc<Replica>| async move {
        send(handle, upstreams, parts, framed, &replica).await
    };
    with_retry(handle, first, send)
        .await
        .map_err(|err| Named::Known(model, err))
}

/// The request body: one length-prefixed message of at most `limit` bytes.
async fn read_body(body: &mut RecvStream, limit: usize) -> Result<Bytes, RouteError> {
    collect(body, limit).await.map_err(|err| match err {
        Collected::TooLarge => RouteError::BodyTooLarge { limit },
        Collected::Failed(e) => RouteError::BadBody(e.to_string()),
    })
}

/// Why [`collect`] gave up.
enum Collected {
    TooLarge,
    Failed(h2::Error),
}

/// A body's data whole, giving back flow-control capacity as it arrives; more than a message of
/// `limit` bytes and its prefix is [`Collected::TooLarge`]. One chunk (the usual case) is kept as
/// it came; more are joined.
async fn collect(body: &mut RecvStream, limit: usize) -> Result<Bytes, Collected> {
    let mut whole = BytesMut::new();
    let mut first: Option<Bytes> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(Collected::Failed)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let so_far = first.as_ref().map_or(whole.len(), Bytes::len);
        if so_far + chunk.len() > limit + PREFIX {
            return Err(Collected::TooLarge);
        }
        match first.take() {
            None if whole.is_empty() => first = Some(chunk),
            None => whole.extend_from_slice(&chunk),
            Some(earlier) => {
                whole.extend_from_slice(&earlier);
                whole.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| whole.freeze()))
}

/// Field 1 of ModelInferRequest (`model_name`), ModelReadyRequest and ModelMetadataRequest
/// (`name`); decoding skips every other field without copying it.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelName {
    #[prost(string, tag = "1")]
    name: String,
}

/// The framed message to forward and the model it is for: the `seldon-model` metadata if present
/// (then also set as the message's name, appended: the last value of a field wins), else the
/// message's name.
fn routed_message(headers: &HeaderMap, framed: Bytes) -> Result<(Bytes, String), RouteError> {
    let message = unary_message(&framed)?;
    let named = ModelName::decode(message)
        .map_err(|e| RouteError::BadBody(format!("the request message does not decode: {e}")))?
        .name;
    let Some(value) = headers.get(SELDON_MODEL) else {
        if named.is_empty() {
            return Err(RouteError::MissingModelName);
        }
        validate_model_name(&named)?;
        return Ok((framed, named));
    };
    let model = value
        .to_str()
        .map_err(|_| {
            RouteError::InvalidModelName(String::from_utf8_lossy(value.as_bytes()).into())
        })?
        .to_owned();
    validate_model_name(&model)?;
    if named == model {
        return Ok((framed, model));
    }
    let field = ModelName {
        name: model.clone(),
    }
    .encode_to_vec();
    let mut renamed = Vec::with_capacity(message.len() + field.len());
    renamed.extend_from_slice(message);
    renamed.extend_from_slice(&field);
    Ok((frame(&renamed), model))
}

/// The message inside a unary call's body.
fn unary_message(framed: &[u8]) -> Result<&[u8], RouteError> {
    let Some((prefix, message)) = framed.split_first_chunk::<PREFIX>() else {
        return Err(RouteError::BadBody(format!(
            "a unary call carries one length-prefixed message; got {} bytes",
            framed.len()
        )));
    };
    let [flag, length @ ..] = *prefix;
    match flag {
        0 => {}
        1 => {
            return Err(RouteError::Unimplemented(
                "compressed messages are not supported by the router".to_owned(),
            ))
        }
        other => {
            return Err(RouteError::BadBody(format!(
                "bad message flag {other} (0 or 1)"
            )))
        }
    }
    let length = u32::from_be_bytes(length) as usize;
    if length != message.len() {
        return Err(RouteError::BadBody(format!(
            "a unary call carries exactly one message: the prefix says {length} bytes, {} follow",
            message.len()
        )));
    }
    Ok(message)
}

/// `message` behind its gRPC prefix (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(PREFIX + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(message);
    framed.freeze()
}

/// A replica's answer, whole, as it goes to the client (see [`replied`]).
struct Replied {
    head: http::response::Parts,
    message: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replied {
    /// The answer's `grpc-status`: in the trailers, or in the head of a trailers-only answer.
    fn status(&self) -> Option<&HeaderValue> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.head.headers.get("grpc-status"))
    }

    /// The answer's gRPC status code (`Unknown` when it has none or a malformed one).
    fn code(&self) -> Code {
        self.status()
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from_i32)
    }
}

/// Sends the call to the replica's gRPC listener over HTTP/1.1 and reads its answer.
async fn send(
    handle: &RouterHandle,
    upstreams: &Upstreams,
    parts: &http::request::Parts,
    framed: &[u8],
    replica: &Replica,
) -> Result<Replied, Failure> {
    let outgoing = Outgoing {
        request: upstream_call(parts, replica, framed),
        head_request: false,
        limit: handle
            .config()
            .grpc_max_message_bytes
            .saturating_add(PREFIX),
    };
    let socket = replica.endpoint.data_socket.as_deref();
    let answer = attempt(handle, upstreams, replica.endpoint.grpc, socket, &outgoing).await?;
    replied(answer)
}

/// The call as the replica gets it, an HTTP/1.1 request: the same path and metadata (every
/// field but HTTP/1.1's hop-by-hop ones), `host`, `seldon-model`, `seldon-internal-model` and
/// `te: trailers` set, and the framed message as its body.
fn upstream_call(parts: &http::request::Parts, replica: &Replica, framed: &[u8]) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let forwarded = parts
        .headers
        .iter()
        .filter(|(name, _)| {
            let ours = *name == SELDON_MODEL || *name == SELDON_INTERNAL_MODEL;
            !ours && !h1::is_always_hop_by_hop(name.as_str().as_bytes())
        })
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
    h1::encode_request("POST", target, forwarded, &replica.grpc_fields, framed)
}

/// The replica's HTTP/1.1 answer as an HTTP/2 one: its status, its fields but the hop-by-hop
/// ones, its body, and its trailers. A field HTTP/2 cannot carry makes the answer
/// [`Failure::Broken`].
fn replied(answer: upstream::Answer) -> Result<Replied, Failure> {
    let broken = |what: String| Failure::Broken(format!("the replica's answer {what}"));
    let status = StatusCode::from_u16(answer.head.status)
        .map_err(|_| broken(format!("has status {}", answer.head.status)))?;
    let field = |name: &[u8], value: &[u8]| match (
        HeaderName::from_bytes(name),
        HeaderValue::from_bytes(value.trim_ascii()),
    ) {
        (Ok(name), Ok(value)) => Ok((name, value)),
        _ => Err(broken(format!(
            "has a field HTTP/2 cannot carry: {:?}",
            String::from_utf8_lossy(name)
        ))),
    };
    let mut head = Response::new(());
    *head.status_mut() = status;
    for (name, value) in answer.head.fields.iter() {
        if !h1::is_hop_by_hop(name, &answer.head.fields) {
            let (name, value) = field(name, value)?;
            head.headers_mut().append(name, value);
        }
    }
    let mut trailers = None;
    for line in &answer.trailers {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(broken(format!(
                "has a malformed trailer field: {:?}",
                String::from_utf8_lossy(line)
            )));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !h1::is_always_hop_by_hop(name) {
            let (name, value) = field(name, value)?;
            trailers
                .get_or_insert_with(HeaderMap::new)
                .append(name, value);
        }
    }
    let replied = Replied {
        head: head.into_parts().0,
        message: answer.body,
        trailers,
    };
    // A gRPC answer (HTTP 200) ends with a status; without one the client could only guess.
    if status == StatusCode::OK && replied.status().is_none() {
        return Err(broken(
            "has no grpc-status, in its head or its trailers (an agent older than the router, \
             which does not name its trailers over HTTP/1.1?)"
                .to_owned(),
        ));
    }
    Ok(replied)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use coscale_api::pb::inference::ModelInferRequest;

    fn infer(name: &str) -> Bytes {
        let request = ModelInferRequest {
            model_name: name.to_owned(),
            id: "call-1".to_owned(),
            raw_input_contents: vec![vec![7; 300]],
            ..Default::default()
        };
        frame(&request.encode_to_vec())
    }

    /// A pick of `model` on a replica with gRPC at 127.0.0.1:9001, version 2.
    fn picked(model: &str) -> Picked {
        let addr = "127.0.0.1:9001".parse().unwrap();
        let endpoint = coscale_api::routing::Endpoint {
            server: "s".into(),
            replica: 0,
            version: 2,
            http: "127.0.0.1:9000".parse().unwrap(),
            grpc: addr,
            data_socket: None,
        };
        crate::state::RouterState::new(std::sync::Arc::new(coscale_api::routing::RoutingTable {
            models: [(
                model.to_owned(),
                coscale_api::routing::ModelRoute {
                    endpoints: vec![endpoint],
                },
            )]
            .into(),
        }))
        .pick(model, None)
        .unwrap()
    }

    #[test]
    fn a_call_goes_out_as_an_http1_request_with_the_metadata_but_hop_by_hop_fields() {
        let request = Request::post("http://router/inference.GRPCInferenceService/ModelInfer")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-request-id", "r-1")
            .header("seldon-model", "spoofed")
            .header("content-length", "999")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let out = upstream_call(&parts, picked("iris").replica(), b"\0\0\0\0\x01z");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /inference.GRPCInferenceService/ModelInfer HTTP/1.1\r\n\
             content-type: application/grpc\r\nx-request-id: r-1\r\n\
             host: 127.0.0.1:9001\r\nseldon-model: iris\r\nseldon-internal-model: iris_2\r\n\
             te: trailers\r\ncontent-length: 6\r\n\r\n\0\0\0\0\x01z"
        );
    }

    fn answer(head: &str, body: &'static [u8], trailers: &[&'static str]) -> upstream::Answer {
        let mut raw = BytesMut::from(head);
        upstream::Answer {
            head: crate::h1::parse_response(&mut raw).unwrap().unwrap(),
            body: Bytes::from_static(body),
            trailers: trailers
                .iter()
                .map(|t| Bytes::from_static(t.as_bytes()))
                .collect(),
        }
    }

    #[test]
    fn an_http1_answer_becomes_the_http2_one_with_its_trailers() {
        let whole = answer(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\
             trailer: grpc-status, grpc-message\r\nx-echo: 1\r\n\r\n",
            b"\0\0\0\0\0",
            &["grpc-status: 13", "grpc-message:  boom ", "connection: x"],
        );
        let Ok(whole) = replied(whole) else {
            panic!("a whole answer converts")
        };
        assert_eq!(whole.head.status, StatusCode::OK);
        let names: Vec<_> = whole.head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-echo"]);
        assert_eq!(&whole.message[..], b"\0\0\0\0\0");
        let trailers = whole.trailers.as_ref().unwrap();
        assert_eq!(trailers.len(), 2);
        assert_eq!(trailers.get("grpc-message").unwrap(), "boom");
        assert_eq!(whole.code(), Code::Internal);

        let trailers_only = answer(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 5\r\n\
             content-length: 0\r\n\r\n",
            b"",
            &[],
        );
        let Ok(trailers_only) = replied(trailers_only) else {
            panic!("a trailers-only answer converts")
        };
        assert!(trailers_only.trailers.is_none() && trailers_only.message.is_empty());
        assert_eq!(trailers_only.code(), Code::NotFound);
    }

    #[test]
    fn an_answer_http2_cannot_carry_is_broken() {
        for bad in [
            answer("HTTP/1.1 200 OK\r\n\r\n", b"", &["no colon"]),
            answer("HTTP/1.1 200 OK\r\n\r\n", b"", &["bad name: 1"]),
        ] {
            assert!(
                matches!(replied(bad), Err(Failure::Broken(ref m)) if m.contains("trailer") || m.contains("HTTP/2")),
            );
        }
    }

    #[test]
    fn a_grpc_answer_without_a_status_is_broken_and_an_http_error_passes() {
        let no_status = answer(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ncontent-length: 5\r\n\r\n",
            b"\0\0\0\0\0",
            &[],
        );
        assert!(
            matches!(replied(no_status), Err(Failure::Broken(ref m)) if m.contains("no grpc-status")),
        );
        let http_error = answer("HTTP/1.1 503 Service Unavailable\r\n\r\n", b"", &[]);
        let Ok(http_error) = replied(http_error) else {
            panic!("an HTTP error passes to the client as it came")
        };
        assert_eq!(http_error.head.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_message_name_routes_and_the_message_passes_unchanged() {
        let framed = infer("iris");
        let (out, model) = routed_message(&HeaderMap::new(), framed.clone()).unwrap();
        assert_eq!(model, "iris");
        assert_eq!(out, framed);
    }

    #[test]
    fn the_seldon_model_header_wins_and_becomes_the_message_name() {
        let mut headers = HeaderMap::new();
        headers.insert(SELDON_MODEL, HeaderValue::from_static("iris-mlp"));
        let (out, model) = routed_message(&headers, infer("iris")).unwrap();
        assert_eq!(model, "iris-mlp");
        let decoded = ModelInferRequest::decode(unary_message(&out).unwrap()).unwrap();
        assert_eq!(decoded.model_name, "iris-mlp");
        assert_eq!(decoded.id, "call-1");
        assert_eq!(decoded.raw_input_contents, vec![vec![7; 300]]);
        // The same name in both: nothing to rewrite.
        let framed = infer("iris-mlp");
        assert_eq!(routed_message(&headers, framed.clone()).unwrap().0, framed);
    }

    #[test]
    fn bad_frames_and_names_are_refused_with_what_is_wrong() {
        let err = |framed: &[u8]| routed_message(&HeaderMap::new(), Bytes::copy_from_slice(framed));
        assert!(
            matches!(err(&[0, 0, 0]), Err(RouteError::BadBody(m)) if m.contains("got 3 bytes"))
        );
        let mut compressed = infer("iris").to_vec();
        compressed[0] = 1;
        assert!(
            matches!(err(&compressed), Err(RouteError::Unimplemented(m)) if m.contains("compressed"))
        );
        let mut short = infer("iris").to_vec();
        short.pop();
        assert!(
            matches!(err(&short), Err(RouteError::BadBody(m)) if m.contains("exactly one message"))
        );
        assert!(matches!(err(&infer("")), Err(RouteError::MissingModelName)));
        assert!(matches!(
            err(&infer("../x")),
            Err(RouteError::InvalidModelName(_))
        ));
        assert!(
            matches!(err(&frame(&[0xff, 0xff])), Err(RouteError::BadBody(m)) if m.contains("does not decode"))
        );
    }
}
