//! The V2 REST front end, an HTTP/1.1 server of its own: health, server metadata and `/metrics`
//! answered locally; any method on `/v2/models/<name>[/...]` forwarded byte for byte to a replica.
//!
//! One task per client connection does everything for that connection: it reads a request,
//! picks a replica, writes the request on a connection to the replica that this task holds
//! ([`Upstreams`]), reads the answer and writes it back. No other task is woken on the way, which
//! is what makes the hop cheap (docs/benchmarks.md, "Data plane"). Keep-alive, pipelining,
//! chunked request bodies, `Expect: 100-continue` and HTTP/1.0 clients are served; upgrades are
//! not (the V2 protocol has none).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{Failure, RouteError};
use crate::h1::{self, BodyError, Framing, HeadError, RequestHead};
use crate::handle::RouterHandle;
use crate::metrics::REST;
use crate::name::{decode_model_segment, validate_model_name};
use crate::state::{Picked, Replica};
use crate::upstream::{attempt, with_retry, Answer, Outgoing, Upstreams};
use crate::{SELDON_INTERNAL_MODEL, SELDON_MODEL};

const MODELS_PREFIX: &str = "/v2/models/";
/// Largest non-JSON upstream error body wrapped as `{"error": ...}`; the rest is cut off.
const MAX_WRAPPED_ERROR_BYTES: usize = 64 * 1024;
/// Largest body read and thrown away to keep a connection open after an early answer (404,
/// 503, ...); a longer one closes the connection instead.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Bodies up to this size are copied behind the head and written with it in one call.
const COALESCE_LIMIT: usize = 64 * 1024;
const JSON: &[u8] = b"content-type: application/json\r\n";
const OPENMETRICS: &[u8] =
    b"content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n";

/// Serves REST clients on `listener` until `stopped` turns true, then lets every connection
/// finish the request it is handling and returns.
pub(crate) async fn serve_rest(
    listener: TcpListener,
    handle: RouterHandle,
    stopped: watch::Receiver<bool>,
) {
    accept_loop(listener, stopped.clone(), |stream| {
        connection(handle.clone(), stream, stopped.clone())
    })
    .await;
}

/// Runs `serve` on a task of its own for every connection accepted on `listener` until `stopped`
/// turns true, then stops accepting and waits for the connections' tasks to end.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let stop = stop_signal(stopped);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream));
                }
                Err(err) => accept_failed(err).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once `stopped` turns true (or its sender is gone, which also means: stop).
pub(crate) async fn stop_signal(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Errors of one incoming connection are that connection's; running out of file descriptors
/// (or memory) passes, so wait a moment instead of spinning on it.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%err, "accepting a REST connection failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One client connection and the replica connections it holds.
struct Client {
    stream: TcpStream,
    /// Bytes received and not yet used (the start of the next request, when pipelined).
    buf: BytesMut,
    /// Encoding buffer for answers.
    out: Vec<u8>,
    upstreams: Upstreams,
    /// [`crate::RouterConfig::client_timeout`].
    timeout: Duration,
}

/// An answer for the client, before framing.
struct Reply {
    status: u16,
    /// Header fields, encoded, without Content-Length and Connection.
    fields: Vec<u8>,
    body: Bytes,
    /// The Content-Length to announce to a HEAD request (whose answer carries no body).
    head_length: Option<u64>,
}

impl Reply {
    fn json(status: u16, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        Reply {
            status,
            fields: JSON.to_vec(),
            head_length: Some(body.len() as u64),
            body,
        }
    }

    fn error(err: &RouteError) -> Self {
        Self::v2_error(err.http_status().as_u16(), &err.to_string())
    }

    fn v2_error(status: u16, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message }).to_string())
    }
}

/// What the server does after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepOpen,
    Close,
}

async fn connection(handle: RouterHandle, stream: TcpStream, mut stopped: watch::Receiver<bool>) {
    // Answers go out in one write each; Nagle's algorithm would only delay them.
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
        out: Vec::with_capacity(1024),
        upstreams: Upstreams::default(),
        timeout: handle.config().client_timeout,
    };
    loop {
        let head = match next_head(&mut client, &mut stopped).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(err) => {
                let status = match err {
                    HeadError::TooLarge => 431,
                    HeadError::Malformed(_) => 400,
                };
                let reply = Reply::v2_error(status, &err.to_string());
                let _ = client.write(reply, false, 1, After::Close).await;
                break;
            }
        };
        let after = handle_request(&handle, &mut client, &head, &stopped).await;
        if after == After::Close {
            break;
        }
    }
    handle.pool().put(client.upstreams.into_inner());
}

/// The next request head; `None` when the client closed, sent no request or no whole head in
/// time (the client timeout, counted from the start of the wait and again from the head's first
/// byte), or the router is stopping while the connection is idle.
async fn next_head(
    client: &mut Client,
    stopped: &mut watch::Receiver<bool>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut deadline = Instant::now() + client.timeout;
    loop {
        if let Some(head) = h1::parse_request(&mut client.buf)? {
            return Ok(Some(head));
        }
        let idle = client.buf.is_empty();
        if idle && *stopped.borrow() {
            return Ok(None);
        }
        let read = tokio::time::timeout_at(deadline, client.stream.read_buf(&mut client.buf));
        tokio::select! {
            read = read => match read {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed or too slow; a half-received head gets no answer.
                _ => return Ok(None),
            },
            // Stopping, or the sender is gone (which means the same).
            _ = stopped.wait_for(|stop| *stop), if idle => return Ok(None),
        }
        if idle {
            deadline = Instant::now() + client.timeout;
        }
    }
}

/// Answers one request; says whether the connection stays open for the next.
async fn handle_request(
    handle: &RouterHandle,
    client: &mut Client,
    head: &RequestHead,
    stopped: &watch::Receiver<bool>,
) -> After {
    let framing = match h1::request_framing(&head.fields) {
        Ok(framing) => framing,
        Err(message) => {
            let reply = Reply::v2_error(400, &format!("bad request framing: {message}"));
            let _ = client
                .write(reply, head.is_head(), head.minor, After::Close)
                .await;
            return After::Close;
        }
    };
    let (reply, after, picked) = match route(handle, head) {
        Route::Local(reply) => {
            let after = client.discard_body(head, framing).await;
            (reply, after, None)
        }
        Route::Model => forward_model(handle, client, head, framing).await,
    };
    let keep = head.keep_alive() && after == After::KeepOpen && !*stopped.borrow();
    let after = if keep { After::KeepOpen } else { After::Close };
    let written = client.write(reply, head.is_head(), head.minor, after).await;
    // The replica's in-flight slot is held until its answer is out.
    drop(picked);
    if written.is_err() {
        return After::Close;
    }
    after
}

enum Route {
    Local(Reply),
    Model,
}

fn route(handle: &RouterHandle, head: &RequestHead) -> Route {
    let path = head.path();
    if !matches!(
        path,
        "/v2/health/live" | "/v2/health/ready" | "/v2" | "/v2/" | "/metrics"
    ) {
        return if is_model_path(path) {
            Route::Model
        } else {
            Route::Local(Reply::v2_error(404, "Not Found"))
        };
    }
    if !matches!(head.method(), "GET" | "HEAD") {
        let mut reply = Reply::v2_error(405, "Method Not Allowed");
        reply.fields.extend_from_slice(b"allow: GET, HEAD\r\n");
        return Route::Local(reply);
    }
    Route::Local(match path {
        "/v2/health/live" => Reply::json(200, r#"{"live":true}"#),
        "/v2/health/ready" => Reply::json(200, r#"{"ready":true}"#),
        "/metrics" => {
            let body = Bytes::from(handle.metrics_text());
            Reply {
                status: 200,
                fields: OPENMETRICS.to_vec(),
                head_length: Some(body.len() as u64),
                body,
            }
        }
        _ => Reply::json(
            200,
            serde_json::json!({
                "name": "coscale",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": [],
            })
            .to_string(),
        ),
    })
}

/// `/v2/models/<name>` or `/v2/models/<name>/<more>`, with a non-empty name and rest.
fn is_model_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(MODELS_PREFIX) else {
        return false;
    };
    match rest.split_once('/') {
        None => !rest.is_empty(),
        Some((name, more)) => !name.is_empty() && !more.is_empty(),
    }
}

impl Client {
    /// Writes `reply`, framed for the client: Content-Length, and Connection when it differs
    /// from the version's default.
    async fn write(
        &mut self,
        reply: Reply,
        head_request: bool,
        minor: u8,
        after: After,
    ) -> std::io::Result<()> {
        let out = &mut self.out;
        out.clear();
        h1::put_status_line(out, reply.status);
        out.extend_from_slice(&reply.fields);
        if !head_request {
            h1::put_content_length(out, reply.body.len() as u64);
        } else if let Some(length) = reply.head_length {
            h1::put_content_length(out, length);
        }
        match (after, minor) {
            (After::Close, 1..) => out.extend_from_slice(b"connection: close\r\n"),
            (After::KeepOpen, 0) => out.extend_from_slice(b"connection: keep-alive\r\n"),
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        let body = if head_request {
            &[][..]
        } else {
            &reply.body[..]
        };
        if body.len() <= COALESCE_LIMIT {
            out.extend_from_slice(body);
            self.stream.write_all(out).await
        } else {
            self.stream.write_all(out).await?;
            self.stream.write_all(body).await
        }
    }

    /// Reads the request body into memory, at most `limit` bytes, within the client timeout
    /// (`None`: it did not arrive in time).
    async fn read_body(
        &mut self,
        framing: Framing,
        limit: usize,
    ) -> Option<Result<Bytes, BodyError>> {
        let read = h1::read_body(&mut self.stream, &mut self.buf, framing, limit);
        let read = tokio::time::timeout(self.timeout, read).await.ok()?;
        Some(read.map(|body| body.data))
    }

    /// Reads and drops the body of a request answered without it, so that the next request on
    /// the connection can be read; a long body, or one the client holds back until it hears
    /// `100 Continue`, closes the connection instead.
    async fn discard_body(&mut self, head: &RequestHead, framing: Framing) -> After {
        if framing == Framing::Length(0) {
            return After::KeepOpen;
        }
        if expects_continue(head) || matches!(framing, Framing::Length(n) if n > DRAIN_LIMIT as u64)
        {
            return After::Close;
        }
        match self.read_body(framing, DRAIN_LIMIT).await {
            Some(Ok(_)) => After::KeepOpen,
            Some(Err(_)) | None => After::Close,
        }
    }
}

fn expects_continue(head: &RequestHead) -> bool {
    head.minor >= 1 && head.fields.has_token("expect", "100-continue")
}

/// Forwards a request for a model: pick, read the body, send, retry once if the replica gave
/// no answer, and turn the outcome into the client's answer. Returns the slot of the replica
/// that answered, to be released once the answer is written.
async fn forward_model(
    handle: &RouterHandle,
    client: &mut Client,
    head: &RequestHead,
    framing: Framing,
) -> (Reply, After, Option<Picked>) {
    let timer = handle.metrics().start(REST);
    let model = match requested_model(head) {
        Ok(model) => model,
        Err(err) => {
            timer.finish("", err.http_status().as_u16());
            let after = client.discard_body(head, framing).await;
            return (Reply::error(&err), after, None);
        }
    };
    let outcome = forward(handle, client, head, framing, &model).await;
    // Only routing-table names become label values, so the label set stays bounded.
    let known = !matches!(outcome, Err(Early::Error(RouteError::UnknownModel(_))));
    let (reply, after, picked) = match outcome {
        Ok((reply, picked)) => (reply, After::KeepOpen, Some(picked)),
        Err(Early::Error(err)) => {
            let after = client.discard_body(head, framing).await;
            (Reply::error(&err), after, None)
        }
        Err(Early::Final(reply, after)) => (reply, after, None),
    };
    timer.finish(if known { &model } else { "" }, reply.status);
    (reply, after, picked)
}

/// The model a REST request is for: the `seldon-model` header if present, else the path segment.
fn requested_model(head: &RequestHead) -> Result<Cow<'_, str>, RouteError> {
    if let Some(value) = head.fields.get(SELDON_MODEL) {
        let name = std::str::from_utf8(value).map_err(|_| {
            RouteError::InvalidModelName(String::from_utf8_lossy(value).into_owned())
        })?;
        validate_model_name(name)?;
        return Ok(Cow::Borrowed(name));
    }
    let rest = head
        .path()
        .strip_prefix(MODELS_PREFIX)
        .ok_or(RouteError::MissingModelName)?;
    let segment = rest.split('/').next().unwrap_or_default();
    decode_model_segment(segment)
}

/// An answer given before or instead of the replica's.
enum Early {
    /// An error found before the body was read: the body still has to be drained.
    Error(RouteError),
    /// A final answer, and what to do with the connection.
    Final(Reply, After),
}

async fn forward(
    handle: &RouterHandle,
    client: &mut Client,
    head: &RequestHead,
    framing: Framing,
    model: &str,
) -> Result<(Reply, Picked), Early> {
    // Unknown model or no replica: answered before the body is read. The replica is picked
    // only once the body is in, so that a slow upload does not count as a request on it.
    handle.check(model).map_err(Early::Error)?;
    let limit = handle.config().body_limit_bytes;
    let too_large = || {
        Early::Final(
            Reply::error(&RouteError::BodyTooLarge { limit }),
            After::Close,
        )
    };
    if matches!(framing, Framing::Length(n) if n > limit as u64) {
        return Err(too_large());
    }
    // HTTP/1.0 has no expectations; a server ignores the field there (RFC 9110 §10.1.1).
    if let Some(expect) = head.fields.get("expect").filter(|_| head.minor >= 1) {
        if !expects_continue(head) {
            let message = format!(
                "unsupported expectation {:?}: only 100-continue is",
                String::from_utf8_lossy(expect)
            );
            return Err(Early::Final(Reply::v2_error(417, &message), After::Close));
        }
        if framing != Framing::Length(0) {
            client
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| {
                    Early::Final(Reply::v2_error(400, "client went away"), After::Close)
                })?;
        }
    }
    let body = match client.read_body(framing, limit).await {
        Some(Ok(body)) => body,
        Some(Err(BodyError::TooLarge(_))) => return Err(too_large()),
        Some(Err(err)) => {
            let err = RouteError::BadBody(err.to_string());
            return Err(Early::Final(Reply::error(&err), After::Close));
        }
        None => {
            let message = format!(
                "the request body did not arrive within {} ms",
                client.timeout.as_millis()
            );
            return Err(Early::Final(Reply::v2_error(408, &message), After::Close));
        }
    };

    let first = handle
        .pick(model, None)
        .map_err(|err| Early::Final(Reply::error(&err), After::KeepOpen))?;
    let (upstreams, body) = (&client.upstreams, &body);
    let send =
        |replica: Arc<Replica>| async move { send(handle, upstreams, head, body, &replica).await };
    let (answer, picked) = with_retry(handle, first, send)
        .await
        .map_err(|err| Early::Final(Reply::error(&err), After::KeepOpen))?;
    Ok((answer_reply(answer, head.is_head()), picked))
}

/// Sends the request to the replica's REST listener and reads its answer.
async fn send(
    handle: &RouterHandle,
    upstreams: &Upstreams,
    head: &RequestHead,
    body: &[u8],
    replica: &Replica,
) -> Result<Answer, Failure> {
    let outgoing = Outgoing {
        request: upstream_request(head, replica, body),
        head_request: head.is_head(),
        limit: handle.config().answer_limit_bytes,
    };
    let socket = replica.endpoint.data_socket.as_deref();
    attempt(handle, upstreams, replica.endpoint.http, socket, &outgoing).await
}

/// The request as the replica gets it: same method, target, fields and body, with the
/// hop-by-hop fields replaced and `host`, `seldon-model` and `seldon-internal-model` set.
fn upstream_request(head: &RequestHead, replica: &Replica, body: &[u8]) -> Vec<u8> {
    let forwarded = head.fields.iter().filter(|(name, _)| {
        let ours = name.eq_ignore_ascii_case(SELDON_MODEL.as_bytes())
            || name.eq_ignore_ascii_case(SELDON_INTERNAL_MODEL.as_bytes())
            || name.eq_ignore_ascii_case(b"expect");
        !ours && !h1::is_hop_by_hop(name, &head.fields)
    });
    let (method, target) = (head.method(), head.origin_target());
    h1::encode_request(method, target, forwarded, &replica.rest_fields, body)
}

/// The replica's answer for the client. Non-JSON error answers (e.g. MLServer's plain-text
/// 500) are re-emitted as `{"error": ...}` so V2 clients can read them (v2-protocol.md §2.10);
/// the status passes through unchanged.
fn answer_reply(answer: Answer, head_request: bool) -> Reply {
    let Answer { head, body, .. } = answer;
    let is_json = head.fields.get("content-type") == Some(&b"application/json"[..]);
    let wrap = !(200..300).contains(&head.status) && !is_json && !head_request;
    let mut fields = Vec::with_capacity(256);
    for (name, value) in head.fields.iter() {
        let replaced = wrap
            && (name.eq_ignore_ascii_case(b"content-type")
                || name.eq_ignore_ascii_case(b"content-encoding"));
        if !replaced && !h1::is_hop_by_hop(name, &head.fields) {
            h1::put_field(&mut fields, name, value);
        }
    }
    if !wrap {
        // Only a HEAD answer announces a length it does not carry.
        let head_length = head_request
            .then(|| head.fields.get("content-length"))
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
        return Reply {
            status: head.status,
            fields,
            body,
            head_length,
        };
    }
    let cut = &body[..body.len().min(MAX_WRAPPED_ERROR_BYTES)];
    let text = String::from_utf8_lossy(cut).trim().to_owned();
    let text = if text.is_empty() {
        http::StatusCode::from_u16(head.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_owned()
    } else {
        text
    };
    fields.extend_from_slice(JSON);
    let body = Bytes::from(serde_json::json!({ "error": text }).to_string());
    Reply {
        status: head.status,
        fields,
        head_length: Some(body.len() as u64),
        body,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn model_paths_need_a_name_and_a_non_empty_rest() {
        for path in [
            "/v2/models/m",
            "/v2/models/m/infer",
            "/v2/models/m/versions/1/infer",
        ] {
            assert!(is_model_path(path), "{path}");
        }
        for path in [
            "/v2/models/",
            "/v2/models",
            "/v2/models//infer",
            "/v2/models/m/",
            "/v2/model/m",
        ] {
            assert!(!is_model_path(path), "{path}");
        }
    }
}
