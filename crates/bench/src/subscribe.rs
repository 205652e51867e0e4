//! Subscribers on each transport: open a connection, subscribe to one room,
//! wait for the server's confirmation, then yield message texts.
//!
//! SSE is spoken as a raw HTTP/1.1 `GET` over the bound socket, with the
//! chunked body and the event stream parsed here: a full HTTP client per
//! connection would cost more memory than the server side being measured.

use crate::net::Dialer;
use crate::ws::{LeanWs, WsMessage};
use serde::Deserialize;
use std::borrow::Cow;
use switchboard_protocol::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tonic::transport::{Channel, Endpoint};

/// An operation that failed, named by an error code for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl Failure {
    pub fn new(code: impl Into<String>) -> Self {
        Self(code.into())
    }
}

/// What a subscriber receives after `subscribed`; borrowed from the
/// subscription's buffer where the transport allows.
pub enum Incoming<'a> {
    /// The text of a `message` event (raw: the whole frame or event data).
    Message(Cow<'a, str>),
    /// Anything else (join/leave, heartbeats, pings).
    Other,
}

/// The frames of §3 the bench reads; borrowed, to avoid copies.
#[derive(Deserialize)]
pub struct JsonFrame<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
}

pub type Ws = WebSocketStream<TcpStream>;

/// Read buffer of a publisher's WebSocket (subscribers use [`LeanWs`]).
/// Tungstenite zero-fills its read buffer up to this size before every
/// read (128 KiB by default): with one small frame per read, that memset
/// was 29 % of the generator's CPU at 200k deliveries/s (perf).
const WS_READ_BUFFER: usize = 4 * 1024;

/// Opens a publisher's WebSocket to `/ws?user=` over a bound socket.
pub async fn open_ws(dialer: &Dialer, url: &str) -> Result<Ws, Failure> {
    let stream = dialer
        .tcp()
        .await
        .map_err(|_| Failure::new("connect_failed"))?;
    let config = WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|err| match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                Failure(format!("http_{}", response.status().as_u16()))
            }
            _ => Failure::new("handshake_failed"),
        })?;
    Ok(ws)
}

/// A gRPC channel of its own (one HTTP/2 connection) over a bound socket.
pub async fn open_channel(dialer: &Dialer, uri: &str) -> Result<Channel, Failure> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|_| Failure::new("bad_uri"))?;
    let dialer = dialer.clone();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let dialer = dialer.clone();
            async move { dialer.tcp().await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .map_err(|_| Failure::new("connect_failed"))
}

/// The error code of a gRPC status: the server's spec code from the
/// `x-error-code` metadata, else `grpc_<status>`.
pub fn status_code(status: &tonic::Status) -> Failure {
    if let Some(code) = status
        .metadata()
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
    {
        return Failure::new(code);
    }
    Failure(format!("grpc_{:?}", status.code()).to_lowercase())
}

/// A `tonic::Request` from user `user` (anonymous access reads `x-user`).
pub fn grpc_request<T>(message: T, user: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = user.parse() {
        request.metadata_mut().insert("x-user", value);
    }
    request
}

/// One subscribed connection.
pub enum Subscription {
    Ws(Box<LeanWs>),
    Sse(Box<SseStream>),
    Grpc(Box<GrpcSub>),
    /// Raw protocol: every text frame is a payload.
    RawWs(Box<LeanWs>),
    /// Raw protocol: every `data:` event is a payload.
    RawSse(Box<SseStream>),
}

/// A gRPC `Subscribe` stream and the channel (connection) it runs on.
pub struct GrpcSub {
    stream: tonic::Streaming<pb::Event>,
    _channel: Channel,
}

/// Where and as whom to subscribe.
pub struct SubscribeTo<'a> {
    pub dialer: &'a Dialer,
    pub ws_url: &'a str,
    pub sse_path: &'a str,
    pub authority: &'a str,
    pub grpc_uri: &'a str,
    pub room: &'a str,
    pub user: &'a str,
    /// The raw protocol: no subscribe frame, no `subscribed` to wait for.
    pub raw: bool,
}

impl Subscription {
    /// Connects, subscribes and returns once the server said `subscribed`.
    /// Raw: returns once the upgrade (or the SSE response head) arrived.
    pub async fn open(kind: crate::SubTransport, to: &SubscribeTo<'_>) -> Result<Self, Failure> {
        if to.raw {
            return match kind {
                crate::SubTransport::Ws => Ok(Self::RawWs(Box::new(
                    LeanWs::connect(to.dialer, to.ws_url).await?,
                ))),
                crate::SubTransport::Sse => Ok(Self::RawSse(Box::new(
                    SseStream::open(to.dialer, to.authority, to.sse_path).await?,
                ))),
                crate::SubTransport::Grpc => Err(Failure::new("unsupported")),
            };
        }
        match kind {
            crate::SubTransport::Ws => {
                let mut ws = LeanWs::connect(to.dialer, to.ws_url).await?;
                let frame = serde_json::json!({"type": "subscribe", "room": to.room});
                ws.send_text(&frame.to_string())
                    .await
                    .map_err(|_| Failure::new("closed"))?;
                loop {
                    let text = match ws.next().await? {
                        Some(WsMessage::Text(text)) => text,
                        Some(WsMessage::Binary(_)) => continue,
                        None => return Err(Failure::new("closed")),
                    };
                    let frame: JsonFrame<'_> =
                        serde_json::from_str(text).map_err(|_| Failure::new("bad_response"))?;
                    match frame.kind.as_ref() {
                        "subscribed" => return Ok(Self::Ws(Box::new(ws))),
                        "error" => {
                            return Err(Failure::new(frame.code.unwrap_or_default()));
                        }
                        _ => {}
                    }
                }
            }
            crate::SubTransport::Sse => {
                let mut sse = SseStream::open(to.dialer, to.authority, to.sse_path).await?;
                loop {
                    match sse.next_event().await? {
                        None => return Err(Failure::new("closed")),
                        Some((name, _)) if name == "subscribed" => {
                            return Ok(Self::Sse(Box::new(sse)));
                        }
                        Some((name, data)) if name == "error" => {
                            let code = serde_json::from_str::<JsonFrame<'_>>(&data)
                                .ok()
                                .and_then(|f| f.code.map(Cow::into_owned))
                                .unwrap_or_else(|| "error".to_owned());
                            return Err(Failure(code));
                        }
                        Some(_) => {}
                    }
                }
            }
            crate::SubTransport::Grpc => {
                let channel = open_channel(to.dialer, to.grpc_uri).await?;
                let mut client = pb::chat_client::ChatClient::new(channel.clone());
                let request = grpc_request(
                    pb::SubscribeRequest {
                        room: to.room.to_owned(),
                        since: String::new(),
                    },
                    to.user,
                );
                // The response (headers) comes once the subscription is in
                // place: the server reads up to `subscribed` first.
                let response = client
                    .subscribe(request)
                    .await
                    .map_err(|s| status_code(&s))?;
                Ok(Self::Grpc(Box::new(GrpcSub {
                    stream: response.into_inner(),
                    _channel: channel,
                })))
            }
        }
    }

    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Incoming<'_>>, Failure> {
        match self {
            Self::Ws(ws) => match ws.next().await? {
                Some(WsMessage::Text(text)) => {
                    let frame: JsonFrame<'_> =
                        serde_json::from_str(text).map_err(|_| Failure::new("bad_response"))?;
                    Ok(Some(match (frame.kind.as_ref(), frame.text) {
                        ("message", Some(text)) => Incoming::Message(text),
                        _ => Incoming::Other,
                    }))
                }
                Some(WsMessage::Binary(_)) => Ok(Some(Incoming::Other)),
                None => Ok(None),
            },
            Self::Sse(sse) => match sse.next_event().await? {
                None => Ok(None),
                Some((name, data)) if name == "message" => {
                    let frame: JsonFrame<'_> =
                        serde_json::from_str(&data).map_err(|_| Failure::new("bad_response"))?;
                    Ok(Some(match frame.text {
                        Some(text) => Incoming::Message(Cow::Owned(text.into_owned())),
                        None => Incoming::Other,
                    }))
                }
                Some(_) => Ok(Some(Incoming::Other)),
            },
            Self::Grpc(grpc) => match grpc.stream.message().await {
                Ok(Some(event)) => {
                    let message = pb::EventType::Message as i32;
                    let event = event.into_fields();
                    Ok(Some(if event.r#type == message {
                        Incoming::Message(Cow::Owned(event.text))
                    } else {
                        Incoming::Other
                    }))
                }
                Ok(None) => Ok(None),
                Err(status) => Err(status_code(&status)),
            },
            Self::RawWs(ws) => match ws.next().await? {
                Some(WsMessage::Text(text)) => Ok(Some(Incoming::Message(Cow::Borrowed(text)))),
                Some(WsMessage::Binary(bytes)) => Ok(Some(
                    std::str::from_utf8(bytes)
                        .map_or(Incoming::Other, |t| Incoming::Message(Cow::Borrowed(t))),
                )),
                None => Ok(None),
            },
            Self::RawSse(sse) => Ok(sse
                .next_event()
                .await?
                .map(|(_, data)| Incoming::Message(Cow::Owned(data)))),
        }
    }

    /// Ends the subscription politely where the protocol has a way to.
    pub async fn close(self) {
        if let Self::Ws(mut ws) | Self::RawWs(mut ws) = self {
            ws.close().await;
        }
    }
}

/// A server-sent event stream read off a raw HTTP/1.1 response.
pub struct SseStream {
    stream: TcpStream,
    decoder: SseDecoder,
}

/// The response body after its head: transfer decoding (chunked or not)
/// and event parsing, apart from the socket so it can be tested alone.
struct SseDecoder {
    /// Bytes read and not yet decoded from the transfer encoding.
    raw: Vec<u8>,
    /// Decoded body bytes not yet parsed into events.
    body: Vec<u8>,
    chunk: Chunk,
}

enum Chunk {
    /// Not chunked: the body runs to the end of the connection.
    Identity,
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(usize),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// The last chunk was seen.
    Done,
}

const READ_SIZE: usize = 16 * 1024;
const MAX_HEAD: usize = 64 * 1024;

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads a response head into `raw` (which keeps whatever came after it)
/// and returns where the head ends (the index of its blank line). A head
/// over `MAX_HEAD` fails with `too_long`; a connection that ends or fails
/// first, with `closed` / `io_error`.
pub(crate) async fn read_head(
    stream: &mut TcpStream,
    raw: &mut Vec<u8>,
    too_long: &str,
) -> Result<usize, Failure> {
    loop {
        if let Some(end) = find(raw, b"\r\n\r\n") {
            return Ok(end);
        }
        if raw.len() > MAX_HEAD {
            return Err(Failure::new(too_long));
        }
        raw.reserve(READ_SIZE);
        let n = stream
            .read_buf(raw)
            .await
            .map_err(|_| Failure::new("io_error"))?;
        if n == 0 {
            return Err(Failure::new("closed"));
        }
    }
}

impl SseDecoder {
    fn new(raw: Vec<u8>, chunked: bool) -> Self {
        Self {
            raw,
            body: Vec::new(),
            chunk: if chunked {
                Chunk::Size
            } else {
                Chunk::Identity
            },
        }
    }

    fn done(&self) -> bool {
        matches!(self.chunk, Chunk::Done)
    }

    /// Moves what can be decoded from `raw` to `body`.
    fn decode(&mut self) {
        let mut used = 0;
        loop {
            let input = self.raw.get(used..).unwrap_or_default();
            match self.chunk {
                Chunk::Identity => {
                    self.body.extend_from_slice(input);
                    used = self.raw.len();
                    break;
                }
                Chunk::Done => {
                    used = self.raw.len();
                    break;
                }
                Chunk::Size => {
                    let Some(eol) = find(input, b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(input.get(..eol).unwrap_or_default());
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16).unwrap_or(0);
                    used += eol + 2;
                    self.chunk = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if input.is_empty() {
                        break;
                    }
                    let n = left.min(input.len());
                    self.body
                        .extend_from_slice(input.get(..n).unwrap_or_default());
                    used += n;
                    self.chunk = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    if input.len() < 2 {
                        break;
                    }
                    used += 2;
                    self.chunk = Chunk::Size;
                }
            }
        }
        self.raw.drain(..used.min(self.raw.len()));
    }

    /// The next complete event in `body` as `(name, data)`; blocks without
    /// data (comments, `retry:`) are skipped.
    fn next_event(&mut self) -> Option<(String, String)> {
        self.decode();
        while let Some(end) = find(&self.body, b"\n\n") {
            let block: Vec<u8> = self.body.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let mut name = None;
            let mut data: Option<String> = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim_start().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(v);
                        }
                        None => data = Some(v.to_owned()),
                    }
                }
            }
            if let Some(data) = data {
                return Some((name.unwrap_or_else(|| "message".into()), data));
            }
        }
        None
    }
}

impl SseStream {
    async fn open(dialer: &Dialer, authority: &str, path: &str) -> Result<Self, Failure> {
        let mut stream = dialer
            .tcp()
            .await
            .map_err(|_| Failure::new("connect_failed"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|_| Failure::new("io_error"))?;
        let mut raw = Vec::with_capacity(READ_SIZE);
        let head_end = read_head(&mut stream, &mut raw, "bad_response").await?;
        let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or_default()).into_owned();
        let rest = raw.get(head_end + 4..).unwrap_or_default().to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure::new("bad_response"))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let mut sse = Self {
            stream,
            decoder: SseDecoder::new(rest, chunked),
        };
        if status != 200 {
            // The JSON error body names the code (`unavailable`, …); read
            // what has arrived, briefly.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
                loop {
                    sse.decoder.decode();
                    if find(&sse.decoder.body, b"}}").is_some()
                        || sse.decoder.done()
                        || !sse.fill().await.unwrap_or(false)
                    {
                        break;
                    }
                }
            })
            .await;
            sse.decoder.decode();
            let code = serde_json::from_slice::<serde_json::Value>(&sse.decoder.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("http_{status}"));
            return Err(Failure(code));
        }
        Ok(sse)
    }

    /// Reads more bytes; `false` at the end of the connection.
    async fn fill(&mut self) -> Result<bool, Failure> {
        self.decoder.raw.reserve(READ_SIZE);
        let n = self
            .stream
            .read_buf(&mut self.decoder.raw)
            .await
            .map_err(|_| Failure::new("io_error"))?;
        Ok(n > 0)
    }

    /// The next event as `(name, data)`; `Ok(None)` at the end of the stream.
    pub async fn next_event(&mut self) -> Result<Option<(String, String)>, Failure> {
        loop {
            if let Some(event) = self.decoder.next_event() {
                return Ok(Some(event));
            }
            if self.decoder.done() || !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunked SSE fed one byte at a time: chunk sizes, chunk ends and
    /// events split anywhere still parse, and the last chunk ends it.
    #[test]
    fn chunked_events_split_anywhere() {
        let events = "retry: 2000\n\n: ping\n\nid: e:1\nevent: subscribed\ndata: {\"a\":1}\n\nevent: message\ndata: {\"text\":\"x\"}\n\n";
        let mut wire = Vec::new();
        for part in events.as_bytes().chunks(7) {
            wire.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut d = SseDecoder::new(Vec::new(), true);
        let mut seen = Vec::new();
        for byte in wire {
            d.raw.push(byte);
            while let Some(event) = d.next_event() {
                seen.push(event);
            }
        }
        assert!(d.done());
        assert_eq!(
            seen,
            vec![
                ("subscribed".to_owned(), "{\"a\":1}".to_owned()),
                ("message".to_owned(), "{\"text\":\"x\"}".to_owned()),
            ]
        );
    }

    #[test]
    fn identity_body_and_multiline_data() {
        let mut d = SseDecoder::new(b"data: a\ndata: b\n\n".to_vec(), false);
        assert_eq!(
            d.next_event(),
            Some(("message".to_owned(), "a\nb".to_owned()))
        );
        assert_eq!(d.next_event(), None);
        assert!(!d.done());
    }
}
