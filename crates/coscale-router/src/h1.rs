//! HTTP/1.1 wire format (RFC 9112) for the router's REST front end and for its calls to
//! replicas, REST requests and gRPC calls alike: request and response heads parsed with
//! httparse into offsets over the received bytes (no copies), message framing (Content-Length,
//! chunked, until close), the chunked decoder (which keeps trailers), the writers of heads, and
//! [`read_body`], the one place that reads a framed body off a connection.
//!
//! The connection loops in `rest` (clients) and `upstream` (replicas) use it both ways.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most header fields accepted in one head; more gets 431.
const MAX_HEADERS: usize = 100;
/// Largest head accepted (request line or status line plus fields); larger gets 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line or trailer field accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Why a head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error(
        "request head larger than {MAX_HEAD_BYTES} bytes or more than {MAX_HEADERS} header fields"
    )]
    TooLarge,
    #[error("malformed HTTP/1 message head: {0}")]
    Malformed(String),
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
    #[error("connection closed in the middle of the body")]
    Closed,
    #[error("reading the body failed: {0}")]
    Io(String),
}

/// The header fields of a head, as offsets into its raw bytes.
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    raw: Bytes,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Fields {
    /// Every field as (name, value), in the order received.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(name, value)| (&self.raw[name.clone()], &self.raw[value.clone()]))
    }

    /// The first value of the field `name` (ASCII case-insensitive).
    pub(crate) fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every value of the field `name` (ASCII case-insensitive).
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Whether a comma-separated list field `name` holds `token` (case-insensitive).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub(crate) struct RequestHead {
    method: Range<usize>,
    target: Range<usize>,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    pub(crate) fields: Fields,
}

impl RequestHead {
    pub(crate) fn method(&self) -> &str {
        ascii(&self.fields.raw[self.method.clone()])
    }

    /// The request target as received (origin form `/path?query`, or absolute form).
    pub(crate) fn target(&self) -> &str {
        ascii(&self.fields.raw[self.target.clone()])
    }

    /// The target in origin form (`/path?query`): an absolute-form target loses its scheme and
    /// authority.
    pub(crate) fn origin_target(&self) -> &str {
        let target = self.target();
        for scheme in ["http://", "https://"] {
            if let Some(rest) = strip_prefix_ignore_case(target, scheme) {
                return match rest.find(['/', '?']) {
                    Some(i) if rest[i..].starts_with('/') => &rest[i..],
                    // `http://host?q` has an empty path: "/" is implied, but the query is lost
                    // in borrowing; such targets are not used by V2 clients.
                    _ => "/",
                };
            }
        }
        target
    }

    /// The path of the target, without the query.
    pub(crate) fn path(&self) -> &str {
        let target = self.origin_target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// Whether the client wants the connection kept open after the answer.
    pub(crate) fn keep_alive(&self) -> bool {
        if self.fields.has_token("connection", "close") {
            return false;
        }
        self.minor >= 1 || self.fields.has_token("connection", "keep-alive")
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method() == "HEAD"
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) minor: u8,
    pub(crate) fields: Fields,
}

impl ResponseHead {
    /// Whether the replica lets the connection be reused after this answer.
    pub(crate) fn keep_alive(&self) -> bool {
        if self.fields.has_token("connection", "close") {
            return false;
        }
        self.minor >= 1 || self.fields.has_token("connection", "keep-alive")
    }
}

/// httparse only gives out `&str` for method and target after checking they are visible ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Offset of `part` (a sub-slice of `base`) within `base`.
fn offsets(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    start..start + part.len()
}

fn fields_of(base: &[u8], headers: &[httparse::Header<'_>]) -> Vec<(Range<usize>, Range<usize>)> {
    headers
        .iter()
        .map(|h| (offsets(base, h.name.as_bytes()), offsets(base, h.value)))
        .collect()
}

/// The length of a parsed head: `None` while it is incomplete; an error once more than
/// [`MAX_HEAD_BYTES`] arrived without a head of at most that size.
fn head_len(status: httparse::Status<usize>, buf: &BytesMut) -> Result<Option<usize>, HeadError> {
    match status {
        httparse::Status::Complete(len) if len <= MAX_HEAD_BYTES => Ok(Some(len)),
        _ if buf.len() > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        _ => Ok(None),
    }
}

fn head_error(err: httparse::Error) -> HeadError {
    match err {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        other => HeadError::Malformed(other.to_string()),
    }
}

/// Parses a request head at the start of `buf`; on success the head's bytes are taken out of
/// `buf`. `Ok(None)`: more bytes are needed.
pub(crate) fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Some(len) = head_len(request.parse(buf).map_err(head_error)?, buf)? else {
        return Ok(None);
    };
    let method = offsets(buf, request.method.unwrap_or_default().as_bytes());
    let target = offsets(buf, request.path.unwrap_or_default().as_bytes());
    let minor = request.version.unwrap_or(1);
    let fields = fields_of(buf, request.headers);
    let raw = buf.split_to(len).freeze();
    Ok(Some(RequestHead {
        method,
        target,
        minor,
        fields: Fields { raw, fields },
    }))
}

/// Parses a response head at the start of `buf`, like [`parse_request`].
pub(crate) fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Some(len) = head_len(response.parse(buf).map_err(head_error)?, buf)? else {
        return Ok(None);
    };
    let status = response.code.unwrap_or_default();
    let minor = response.version.unwrap_or(1);
    let fields = fields_of(buf, response.headers);
    let raw = buf.split_to(len).freeze();
    Ok(Some(ResponseHead {
        status,
        minor,
        fields: Fields { raw, fields },
    }))
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes the connection (responses only).
    UntilClose,
}

/// The framing of a request body (RFC 9112 §6.3). Transfer-Encoding together with
/// Content-Length, a coding other than chunked last, or a bad Content-Length is refused: a
/// front end that guesses there lets requests be smuggled past it.
pub(crate) fn request_framing(fields: &Fields) -> Result<Framing, &'static str> {
    if fields.get("transfer-encoding").is_some() {
        if fields.get("content-length").is_some() {
            return Err("both Transfer-Encoding and Content-Length are set");
        }
        if !chunked_last(fields) {
            return Err("Transfer-Encoding must end with chunked");
        }
        return Ok(Framing::Chunked);
    }
    Ok(Framing::Length(content_length(fields)?.unwrap_or(0)))
}

/// The framing of a response body to a request (`head_request`: the request was HEAD).
pub(crate) fn response_framing(
    status: u16,
    head_request: bool,
    fields: &Fields,
) -> Result<Framing, &'static str> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    if fields.get("transfer-encoding").is_some() {
        return Ok(if chunked_last(fields) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(content_length(fields)?.map_or(Framing::UntilClose, Framing::Length))
}

fn chunked_last(fields: &Fields) -> bool {
    fields
        .all("transfer-encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Content-Length: every value (also within comma lists) must be the same decimal number.
fn content_length(fields: &Fields) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in fields
        .all("content-length")
        .flat_map(|v| v.split(|&b| b == b','))
    {
        let value = value.trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Err("Content-Length is not a number");
        }
        let parsed = ascii(value)
            .parse::<u64>()
            .map_err(|_| "Content-Length is too large")?;
        if length.is_some_and(|l| l != parsed) {
            return Err("Content-Length values differ");
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// A body read whole, with the trailer fields of a chunked one.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub(crate) data: Bytes,
    /// Trailer field lines (`name: value`), as received.
    pub(crate) trailers: Vec<Bytes>,
}

/// Reads a body framed by `framing` off `stream`, starting with what `buf` already holds, into
/// memory: at most `limit` bytes. Bytes after the body stay in `buf`.
pub(crate) async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    framing: Framing,
    limit: usize,
) -> Result<Body, BodyError> {
    let data = |data| Body {
        data,
        trailers: Vec::new(),
    };
    match framing {
        Framing::Length(len) => {
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= limit)
                .ok_or(BodyError::TooLarge(limit))?;
            buf.reserve(len.saturating_sub(buf.len()));
            while buf.len() < len {
                fill(stream, buf).await?;
            }
            Ok(data(buf.split_to(len).freeze()))
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut body = BytesMut::new();
            while !decoder.decode(buf, &mut body, limit)? {
                fill(stream, buf).await?;
            }
            Ok(Body {
                data: body.freeze(),
                trailers: decoder.trailers,
            })
        }
        Framing::UntilClose => loop {
            if buf.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            match stream.read_buf(buf).await {
                Ok(0) => return Ok(data(buf.split().freeze())),
                Ok(_) => {}
                Err(err) => return Err(BodyError::Io(err.to_string())),
            }
        },
    }
}

/// Reads more bytes into `buf`; the end of the stream is an error here.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<(), BodyError> {
    match stream.read_buf(buf).await {
        Ok(0) => Err(BodyError::Closed),
        Ok(_) => Ok(()),
        Err(err) => Err(BodyError::Io(err.to_string())),
    }
}

/// Decodes a chunked body incrementally: feed it the bytes received so far. Keeps the trailer
/// fields (at most [`MAX_HEADERS`]).
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    trailers: Vec<Bytes>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Moves the body data found at the start of `input` to `out` (consuming what it used).
    /// `Ok(true)`: the body is complete, and whatever is left in `input` belongs to the next
    /// message. `Ok(false)`: more input is needed. `out` never grows past `limit` bytes.
    pub(crate) fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<bool, BodyError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(input)? else {
                        return Ok(false);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        let room = limit.saturating_sub(out.len()) as u64;
                        if size > room {
                            return Err(BodyError::TooLarge(limit));
                        }
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input.advance(take);
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(BodyError::Malformed("chunk data not followed by CRLF"));
                    }
                    input.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(input)? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    } else if self.trailers.len() == MAX_HEADERS {
                        return Err(BodyError::Malformed("too many trailer fields"));
                    } else {
                        self.trailers.push(line);
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) from the start of `input`.
fn take_line(input: &mut BytesMut) -> Result<Option<Bytes>, BodyError> {
    let Some(lf) = input.iter().position(|&b| b == b'\n') else {
        if input.len() > MAX_CHUNK_LINE {
            return Err(BodyError::Malformed("chunk line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || input[lf - 1] != b'\r' {
        return Err(BodyError::Malformed("chunk line not ended by CRLF"));
    }
    let line = input.split_to(lf + 1).freeze();
    Ok(Some(line.slice(..lf - 1)))
}

/// The size in a chunk-size line `HEX[;ext...]`.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = line[digits_end..].trim_ascii_start();
    if digits_end == 0 || !(rest.is_empty() || rest[0] == b';') {
        return Err(BodyError::Malformed("bad chunk size"));
    }
    u64::from_str_radix(ascii(&line[..digits_end]), 16)
        .map_err(|_| BodyError::Malformed("chunk size too large"))
}

/// Fields a proxy never forwards (RFC 9110 §7.6.1), plus the framing fields it sets itself.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "host",
];

/// Whether `name` is hop-by-hop in a message whose Connection field lists more such names.
pub(crate) fn is_hop_by_hop(name: &[u8], fields: &Fields) -> bool {
    is_always_hop_by_hop(name) || fields.has_token("connection", ascii(name))
}

/// Whether `name` is hop-by-hop in any message (or a framing field the router sets itself).
pub(crate) fn is_always_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// A request to a replica as it goes on the wire: `method target HTTP/1.1`, the forwarded
/// `fields` (already filtered by the caller), the router's own field lines `ours` (each ending in
/// CRLF), Content-Length, and `body`.
pub(crate) fn encode_request<'a>(
    method: &str,
    target: &str,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ours: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + target.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields {
        put_field(&mut out, name, value);
    }
    // Grown (if at all) while it holds only the head, never with the body in it.
    out.reserve(ours.len() + 32 + body.len());
    out.extend_from_slice(ours.as_bytes());
    put_content_length(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Appends `name: value\r\n`.
pub(crate) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the decimal digits of `n`.
fn put_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `HTTP/1.1 <status> <reason>\r\n`.
pub(crate) fn put_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(status));
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `content-length: <n>\r\n`.
pub(crate) fn put_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    put_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn request(text: &str) -> RequestHead {
        let mut buf = BytesMut::from(text);
        parse_request(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn a_request_head_is_taken_out_of_the_buffer_and_the_body_stays() {
        let mut buf = BytesMut::from(
            "POST /v2/models/iris/infer?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\n{}",
        );
        let head = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(head.method(), "POST");
        assert_eq!(head.target(), "/v2/models/iris/infer?x=1");
        assert_eq!(head.path(), "/v2/models/iris/infer");
        assert_eq!(head.minor, 1);
        assert_eq!(head.fields.get("HOST"), Some(&b"a"[..]));
        assert_eq!(head.fields.all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(&buf[..], b"{}");
        assert_eq!(request_framing(&head.fields), Ok(Framing::Length(2)));
    }

    #[test]
    fn a_partial_head_asks_for_more_until_it_is_too_large() {
        let mut buf = BytesMut::from("GET /v2 HTTP/1.1\r\nHost: a\r\n");
        assert!(parse_request(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing is consumed");
        let mut huge = BytesMut::from("GET /v2 HTTP/1.1\r\nX: ");
        huge.extend_from_slice(&vec![b'a'; MAX_HEAD_BYTES]);
        assert_eq!(parse_request(&mut huge).unwrap_err(), HeadError::TooLarge);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        let mut many = BytesMut::from(many.as_str());
        assert_eq!(parse_request(&mut many).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn garbage_is_malformed() {
        let mut buf = BytesMut::from("GET\x01 / HTTP/1.1\r\n\r\n");
        assert!(matches!(
            parse_request(&mut buf),
            Err(HeadError::Malformed(_))
        ));
        let mut buf = BytesMut::from("HTTP/9.9 200 OK\r\n\r\n");
        assert!(matches!(
            parse_response(&mut buf),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn absolute_form_targets_are_reduced_to_origin_form() {
        let head = request("GET http://router:8080/v2/models/m/ready?a=b HTTP/1.1\r\n\r\n");
        assert_eq!(head.origin_target(), "/v2/models/m/ready?a=b");
        assert_eq!(head.path(), "/v2/models/m/ready");
        let head = request("GET HTTP://router HTTP/1.1\r\n\r\n");
        assert_eq!(head.origin_target(), "/");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_field() {
        assert!(request("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!request("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!request("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn request_framing_refuses_what_could_smuggle_a_request() {
        let framing = |fields: &str| {
            request_framing(&request(&format!("POST / HTTP/1.1\r\n{fields}\r\n")).fields)
        };
        assert_eq!(framing(""), Ok(Framing::Length(0)));
        assert_eq!(
            framing("Transfer-Encoding: gzip, chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("Content-Length: 3\r\nContent-Length: 3\r\n"),
            Ok(Framing::Length(3))
        );
        assert_eq!(framing("Content-Length: 3, 3\r\n"), Ok(Framing::Length(3)));
        assert!(framing("Content-Length: 3\r\nContent-Length: 4\r\n").is_err());
        assert!(framing("Content-Length: -1\r\n").is_err());
        assert!(framing("Content-Length: 99999999999999999999999\r\n").is_err());
        assert!(framing("Transfer-Encoding: chunked, gzip\r\n").is_err());
        assert!(framing("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n").is_err());
    }

    #[test]
    fn response_framing_knows_bodiless_answers_and_read_until_close() {
        let fields = |text: &str| {
            let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{text}\r\n").as_str());
            parse_response(&mut buf).unwrap().unwrap().fields
        };
        let cl = fields("Content-Length: 5\r\n");
        assert_eq!(response_framing(200, false, &cl), Ok(Framing::Length(5)));
        assert_eq!(response_framing(200, true, &cl), Ok(Framing::Length(0)));
        assert_eq!(response_framing(204, false, &cl), Ok(Framing::Length(0)));
        assert_eq!(response_framing(304, false, &cl), Ok(Framing::Length(0)));
        assert_eq!(
            response_framing(200, false, &fields("")),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            response_framing(200, false, &fields("Transfer-Encoding: chunked\r\n")),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            response_framing(200, false, &fields("Transfer-Encoding: gzip\r\n")),
            Ok(Framing::UntilClose)
        );
    }

    #[test]
    fn hop_by_hop_fields_include_those_named_in_connection() {
        let head = request("GET / HTTP/1.1\r\nConnection: x-secret, close\r\nX-Secret: 1\r\n\r\n");
        assert!(is_hop_by_hop(b"X-Secret", &head.fields));
        assert!(is_hop_by_hop(b"Transfer-Encoding", &head.fields));
        assert!(!is_hop_by_hop(b"content-type", &head.fields));
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let mut input = BytesMut::from("4;name=x\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT");
        let mut out = BytesMut::new();
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(decoder.decode(&mut input, &mut out, 100), Ok(true));
        assert_eq!(&out[..], b"Wikipedia");
        assert_eq!(&input[..], b"NEXT");
        assert_eq!(decoder.trailers, [Bytes::from_static(b"X-T: 1")]);
    }

    #[test]
    fn chunked_bodies_over_the_limit_or_malformed_are_errors() {
        let decode = |text: &str, limit| {
            let mut input = BytesMut::from(text);
            ChunkedDecoder::default().decode(&mut input, &mut BytesMut::new(), limit)
        };
        assert_eq!(
            decode("5\r\nhello\r\n0\r\n\r\n", 4),
            Err(BodyError::TooLarge(4))
        );
        assert_eq!(decode("5\r\nhello\r\n0\r\n\r\n", 5), Ok(true));
        assert!(matches!(decode("zz\r\n", 10), Err(BodyError::Malformed(_))));
        assert!(matches!(
            decode("5\nhello", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            decode("2\r\nhiXX", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            decode("fffffffffffffffffffff\r\n", 10),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            decode(&"1".repeat(MAX_CHUNK_LINE + 1), 10),
            Err(BodyError::Malformed(_))
        ));
        let many = format!("0\r\n{}\r\n", "t: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(
            decode(&many, 10),
            Err(BodyError::Malformed("too many trailer fields"))
        );
    }

    #[test]
    fn status_lines_and_numbers_are_written_exactly() {
        let mut out = Vec::new();
        put_status_line(&mut out, 404);
        put_content_length(&mut out, 0);
        put_content_length(&mut out, 1_234_567);
        put_status_line(&mut out, 599);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ncontent-length: 1234567\r\nHTTP/1.1 599 Unknown\r\n"
        );
    }

    fn chunk(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].clamp(1, rest.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        /// However a chunked body is cut into chunks and however its bytes arrive, the decoder
        /// gives back exactly the body and leaves the next message's bytes alone.
        #[test]
        fn chunked_decoding_is_independent_of_chunk_and_read_boundaries(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..80, 1..6),
            reads in proptest::collection::vec(1usize..50, 1..10),
        ) {
            let mut wire = chunk(&body, &sizes);
            wire.extend_from_slice(b"GET");
            let mut input = BytesMut::new();
            let mut out = BytesMut::new();
            let mut decoder = ChunkedDecoder::default();
            let mut fed = 0;
            let mut i = 0;
            let done = loop {
                if decoder.decode(&mut input, &mut out, body.len()).unwrap() {
                    break true;
                }
                if fed == wire.len() {
                    break false;
                }
                let n = reads[i % reads.len()].min(wire.len() - fed);
                input.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
                i += 1;
            };
            prop_assert!(done);
            prop_assert_eq!(&out[..], &body[..]);
            input.extend_from_slice(&wire[fed..]);
            prop_assert_eq!(&input[..], b"GET");
        }

        /// Every prefix of a valid head is "need more", never an error or a wrong head.
        #[test]
        fn every_prefix_of_a_head_asks_for_more(cut in 0usize..60) {
            let text = b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 0\r\n\r\n";
            let cut = cut.min(text.len() - 1);
            let mut buf = BytesMut::from(&text[..cut]);
            prop_assert!(parse_request(&mut buf).unwrap().is_none());
        }
    }
}
