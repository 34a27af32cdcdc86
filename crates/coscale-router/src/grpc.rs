//! The V2 gRPC front end (`inference.GRPCInferenceService`), an HTTP/2 server of its own on the
//! h2 crate, built like the REST one: one task per client connection does everything for that
//! connection. It accepts the connection's calls, reads each request message, forwards it byte
//! for byte to a replica over an HTTP/2 connection that this same task holds and drives
//! ([`Links`]), and writes the replica's answer (head, message, trailers) back as it came. No
//! other task is woken on the way; with tonic's server and client a call crossed five tasks and
//! the router cost about twice nginx's `grpc_pass` per call (docs/benchmarks.md, "gRPC"). The
//! task runs in a [`Repoll`], so that h2's wake-ups of the connection's own task (one per frame
//! queued) are polls in place rather than trips through the scheduler.
//!
//! Server health and metadata are answered locally; ModelReady, ModelMetadata and ModelInfer are
//! forwarded with `seldon-model` / `seldon-internal-model` metadata set, routed by the
//! `seldon-model` metadata if present (which then also becomes the message's model name), else by
//! the message's model name. That name is field 1 of all three request messages and is the only
//! field read. Repository RPCs are refused: models are managed through the control plane.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use coscale_api::pb::inference::{ServerLiveResponse, ServerMetadataResponse, ServerReadyResponse};
use coscale_net::Repoll;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::RecvStream;
use http::header::CONTENT_TYPE;
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::Code;

use crate::error::{Failure, RouteError};
use crate::handle::{lock, RouterHandle};
use crate::metrics::GRPC;
use crate::name::validate_model_name;
use crate::pool::Pooled;
use crate::rest::accept_loop;
use crate::state::Picked;
use crate::upstream::{connect_failed, Stream};
use crate::{SELDON_INTERNAL_MODEL, SELDON_MODEL};

const SERVICE: &str = "/inference.GRPCInferenceService/";
const REPOSITORY_REFUSAL: &str =
    "the router does not serve the model repository API; use the control plane API to load and unload models";
/// Flow-control windows, each way, per call and per connection (hyper's defaults).
const WINDOW: u32 = 1 << 20;
/// Largest header block accepted from clients and replicas.
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

/// Identifies a [`Link`] (unique in the process: links move between client connections).
static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// An HTTP/2 connection to a replica's gRPC listener: the handle calls are sent on, and the
/// future that drives the connection, which whichever client connection holds the link polls
/// with its own task. When that client connection ends, the link goes to the shared idle pool
/// ([`RouterHandle::links`]) for the next one.
pub(crate) struct Link {
    send: SendRequest<Bytes>,
    drive: Drive,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("replica", &self.drive.addr)
            .field("id", &self.drive.id)
            .finish_non_exhaustive()
    }
}

impl Pooled for Link {
    fn replica(&self) -> SocketAddr {
        self.drive.addr
    }
}

/// Drives a [`Link`]'s connection; resolves, with the link's address and id, when it has ended.
struct Drive {
    addr: SocketAddr,
    id: u64,
    conn: Pin<Box<h2::client::Connection<Stream, Bytes>>>,
}

impl Future for Drive {
    type Output = (SocketAddr, u64);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ended = ready!(self.conn.as_mut().poll(cx));
        if let Err(err) = ended {
            tracing::debug!(addr = %self.addr, %err, "gRPC connection to a replica ended");
        }
        Poll::Ready((self.addr, self.id))
    }
}

/// The links one client connection holds, by gRPC address. Their drivers are handed to the
/// client connection's task ([`connection`]), which polls them with its own, so a call's request
/// and answer move without waking any other task.
struct Links {
    held: Mutex<HashMap<SocketAddr, (u64, SendRequest<Bytes>)>>,
    drivers: mpsc::UnboundedSender<Drive>,
    connect_timeout: Duration,
}

impl Links {
    fn held(&self, addr: SocketAddr) -> Option<SendRequest<Bytes>> {
        lock(&self.held).get(&addr).map(|(_, s)| s.clone())
    }

    /// Holds `link` (in place of any older link to its replica) and returns its handle.
    fn hold(&self, link: Link) -> Option<SendRequest<Bytes>> {
        let Link { send, drive } = link;
        lock(&self.held).insert(drive.addr, (drive.id, send.clone()));
        self.drivers.send(drive).ok()?;
        Some(send)
    }

    /// Opens a connection to the replica at `addr` — over its Unix `socket` when it has one —,
    /// holds it and returns its handle.
    async fn open(
        &self,
        addr: SocketAddr,
        socket: Option<&Path>,
    ) -> Result<SendRequest<Bytes>, String> {
        let stream = Stream::connect(addr, socket, self.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| e.to_string())?;
        let drive = Drive {
            addr,
            id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
            conn: Box::pin(conn),
        };
        self.hold(Link { send, drive })
            .ok_or_else(|| "the client connection is closing".to_owned())
    }

    /// Forgets the link `id` to `addr` once it has ended (unless a newer one replaced it).
    fn ended(&self, addr: SocketAddr, id: u64) {
        let mut held = lock(&self.held);
        if held.get(&addr).is_some_and(|(held_id, _)| *held_id == id) {
            held.remove(&addr);
        }
    }

    /// The held links whose drivers are among `drivers`, for the idle pool.
    fn into_links(self, drivers: impl IntoIterator<Item = Drive>) -> Vec<Link> {
        let mut held = lock(&self.held);
        drivers
            .into_iter()
            .filter_map(|drive| match held.remove(&drive.addr) {
                Some((id, send)) if id == drive.id => Some(Link { send, drive }),
                _ => None,
            })
            .collect()
    }
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
    let (drivers_tx, mut new_drivers) = mpsc::unbounded_channel();
    let links = Links {
        held: Mutex::new(HashMap::new()),
        drivers: drivers_tx,
        connect_timeout: config.connect_timeout,
    };
    let mut calls = FuturesUnordered::new();
    let mut drivers = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => calls.push(call(&handle, &links, request, respond)),
                Some(Err(err)) => {
                    tracing::debug!(%err, "gRPC client connection failed");
                    break;
                }
                // Closed by the client, or shut down once its last call was answered.
                None => break,
            },
            Some(()) = calls.next(), if !calls.is_empty() => {}
            Some((addr, id)) = drivers.next(), if !drivers.is_empty() => links.ended(addr, id),
            Some(driver) = new_drivers.recv() => drivers.push(driver),
            _ = stopped.wait_for(|stop| *stop), if !stopping => {
                // GOAWAY: no new calls; `accept` ends once the calls in flight are answered.
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
    // The client is gone: its calls end here, its links go to the next client connection
    // (unless the router is stopping).
    drop(calls);
    if !stopping {
        while let Ok(drive) = new_drivers.try_recv() {
            drivers.push(drive);
        }
        handle.links().put(links.into_links(drivers));
    }
}

/// One call: read, answer, write the answer back; counted in the metrics when it names a model.
/// A call the client cancels (RST_STREAM, e.g. its deadline passed) is dropped at once, which
/// cancels the replica's call too and frees the replica's slot.
async fn call(
    handle: &RouterHandle,
    links: &Links,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let answer = {
        let cancelled = std::future::poll_fn(|cx| respond.poll_reset(cx));
        tokio::select! {
            answer = answer(handle, links, request) => answer,
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
        upstream: Box<Upstream>,
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

async fn answer(handle: &RouterHandle, links: &Links, request: Request<RecvStream>) -> Answer {
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
            let (label, answer) = match forward(handle, links, &parts, &mut body).await {
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
    links: &Links,
    parts: &http::request::Parts,
    body: &mut RecvStream,
) -> Result<(Upstream, Picked), Named> {
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
    let known = |err: RouteError| Named::Known(model.clone(), err);
    let failure = match attempt(handle, links, parts, &framed, &first).await {
        Ok(upstream) => return Ok((upstream, first)),
        Err(failure) => failure,
    };
    let retry = failure.retried();
    let failed = failure.error(handle, first.replica());
    if !retry {
        return Err(known(failed));
    }
    let first_endpoint = first.endpoint().clone();
    drop(first);
    let Ok(second) = handle.pick(&model, Some(&first_endpoint)) else {
        return Err(known(failed));
    };
    handle.metrics().retried();
    tracing::debug!(error = %failed, retry_on = %second.replica().label(), "retrying on another replica");
    match attempt(handle, links, parts, &framed, &second).await {
        Ok(upstream) => Ok((upstream, second)),
        Err(failure) => Err(known(failure.error(handle, second.replica()))),
    }
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

/// A replica's answer, whole.
struct Upstream {
    head: http::response::Parts,
    message: Bytes,
    trailers: Option<HeaderMap>,
}

impl Upstream {
    /// The answer's `grpc-status`: in the trailers, or in the head of a trailers-only answer.
    fn code(&self) -> Code {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.head.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from_i32)
    }
}

/// One call to one replica within the request timeout: on the held link to it, else on an idle
/// one from the pool (again on a new connection if that one turns out to have been closed
/// meanwhile), else on a new connection.
async fn attempt(
    handle: &RouterHandle,
    links: &Links,
    parts: &http::request::Parts,
    framed: &Bytes,
    picked: &Picked,
) -> Result<Upstream, Failure> {
    let config = handle.config();
    let replica = picked.replica();
    let addr = replica.endpoint.grpc;
    let request = || {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(replica.grpc_authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let uri = Uri::from_parts(uri)
            .map_err(|e| Failure::NoAnswer(format!("bad URI for replica {addr}: {e}")))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        headers.clone_from(&parts.headers);
        headers.insert(SELDON_MODEL, replica.model_header.clone());
        headers.insert(SELDON_INTERNAL_MODEL, replica.internal_header.clone());
        Ok(request)
    };
    let limit = config.grpc_max_message_bytes;
    let run = async {
        let kept = links
            .held(addr)
            .or_else(|| links.hold(handle.links().take(addr)?));
        if let Some(send) = kept {
            match exchange(send, request()?, framed.clone(), limit).await {
                Ok(upstream) => return Ok(upstream),
                // A kept connection the replica closed meanwhile: not the replica's failure.
                Err(Failure::NoAnswer(_)) => {}
                Err(failure) => return Err(failure),
            }
        }
        let socket = replica.endpoint.data_socket.as_deref();
        let send = links
            .open(addr, socket)
            .await
            .map_err(|e| connect_failed(addr, socket, e))?;
        exchange(send, request()?, framed.clone(), limit).await
    };
    match tokio::time::timeout(config.request_timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(Failure::TimedOut),
    }
}

/// Sends one call on `send` and reads the whole answer: no answer head is [`Failure::NoAnswer`],
/// an answer that breaks off [`Failure::CutOff`] (both retried elsewhere), one that exceeds
/// `limit` [`Failure::Broken`].
async fn exchange(
    send: SendRequest<Bytes>,
    request: Request<()>,
    framed: Bytes,
    limit: usize,
) -> Result<Upstream, Failure> {
    let no_answer = |e: h2::Error| Failure::NoAnswer(e.to_string());
    let cut_off = |e: h2::Error| Failure::CutOff(e.to_string());
    let mut send = send.ready().await.map_err(no_answer)?;
    let (response, mut stream) = send.send_request(request, false).map_err(no_answer)?;
    stream.send_data(framed, true).map_err(no_answer)?;
    let (head, mut body) = response.await.map_err(no_answer)?.into_parts();
    let message = collect(&mut body, limit).await.map_err(|err| match err {
        Collected::TooLarge => Failure::Broken(format!(
            "the answer exceeds the router's limit of {limit} bytes"
        )),
        Collected::Failed(e) => cut_off(e),
    })?;
    let trailers = body.trailers().await.map_err(cut_off)?;
    Ok(Upstream {
        head,
        message,
        trailers,
    })
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
