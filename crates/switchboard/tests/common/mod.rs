//! Test harness: starts a real standalone server on port 0 and speaks to
//! it with real WebSocket, SSE (HTTP streaming) and gRPC clients. Every
//! wait is bounded by [`WAIT`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod peers;
pub mod procs;
pub mod proxy;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use switchboard::config::StandaloneArgs;
use switchboard::standalone::{self, Standalone};
use switchboard_protocol::pb;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tonic::transport::Channel;

/// Upper bound of any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Publish limits (per connection, per user and per client address) out
/// of the way, for tests that measure something else.
pub const UNTHROTTLED: [&str; 8] = [
    "--publish-rate",
    "1000000",
    "--publish-burst",
    "1000000",
    "--ip-publish-rate",
    "1000000",
    "--ip-publish-burst",
    "1000000",
];

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    args: StandaloneArgs,
}

pub struct TestServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    server: Option<Standalone>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_args(&[]).await
    }

    /// Starts with extra flags, e.g. `["--retention-count", "5"]`.
    pub async fn with_args(extra: &[&str]) -> Self {
        let mut argv = vec![
            "switchboard",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ];
        argv.extend_from_slice(extra);
        let cli = TestCli::try_parse_from(argv).expect("valid test flags");
        let server = standalone::start(&cli.args).await.expect("server starts");
        Self {
            http: server.http_addr,
            grpc: server.grpc_addr.expect("standalone serves gRPC"),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http)
    }

    pub async fn grpc(&self) -> pb::chat_client::ChatClient<Channel> {
        pb::chat_client::ChatClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("gRPC connects")
    }

    /// Graceful shutdown; true if it finished within the grace period.
    pub async fn shutdown(&mut self, grace: Duration) -> bool {
        match self.server.take() {
            Some(server) => server.shutdown(grace).await,
            None => true,
        }
    }

    pub fn standalone(&self) -> &Standalone {
        self.server.as_ref().expect("running")
    }

    pub async fn ws(&self, path: &str) -> Ws {
        Ws::connect(&self.ws_url(path)).await
    }

    pub async fn sse(&self, path: &str) -> Sse {
        Sse::connect(&self.url(path), &[])
            .await
            .expect("SSE stream opens")
    }

    /// POSTs a message over the HTTP API; returns status and JSON body.
    pub async fn post(&self, room: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(self.url(&format!("/api/rooms/{room}/messages?user=http")))
            .json(&body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("POST answers in time")
            .expect("POST sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A WebSocket upgrade that the server is expected to refuse with an
    /// HTTP error: returns status and JSON body.
    pub async fn upgrade_refusal(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .get(self.url(path))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("answered in time")
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        get_json_from(&self.url(""), path).await
    }
}

/// `GET base + path` as JSON (any server, e.g. a [`procs::Service`]).
pub async fn get_json_from(base: &str, path: &str) -> (u16, Value) {
    let response = tokio::time::timeout(WAIT, reqwest::get(format!("{base}{path}")))
        .await
        .expect("GET answers in time")
        .expect("GET sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A JSON WebSocket client.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a WebSocket connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Close(u16),
    /// TCP closed without a close frame.
    Eof,
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url.into_client_request().expect("request"))
            .await
            .expect("WebSocket upgrade")
    }

    pub async fn try_connect(
        request: tungstenite::handshake::client::Request,
    ) -> Result<Self, tungstenite::Error> {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("upgrade answered in time")?;
        Ok(Self { stream })
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("frame sent");
    }

    /// Next JSON text frame (control frames skipped), within one [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        let next_text = async {
            loop {
                let message = self
                    .stream
                    .next()
                    .await
                    .expect("stream open")
                    .expect("frame readable");
                match message {
                    Message::Text(text) => {
                        return serde_json::from_str(&text).expect("JSON frame");
                    }
                    Message::Close(frame) => panic!("closed unexpectedly: {frame:?}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, next_text)
            .await
            .expect("a frame arrives in time")
    }

    /// Skips frames until one matches, within one overall [`WAIT`].
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let search = async {
            loop {
                let frame = self.recv().await;
                if pred(&frame) {
                    return frame;
                }
            }
        };
        tokio::time::timeout(WAIT, search)
            .await
            .expect("the expected frame arrives in time")
    }

    /// The next frame of `type`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_until(|f| f["type"] == kind).await
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, room: &str, since: Option<&str>) -> Value {
        let mut frame = json!({"type": "subscribe", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await;
        self.recv_type("subscribed").await
    }

    /// Publishes and returns the `ack` (or `error`) frame for `id`.
    pub async fn publish(&mut self, room: &str, text: &str, id: &str) -> Value {
        self.send(json!({"type":"publish","room":room,"text":text,"id":id}))
            .await;
        self.recv_until(|f| (f["type"] == "ack" || f["type"] == "error") && f["id"] == id)
            .await
    }

    /// Reads until the connection ends; returns how.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("connection ends in time")
            {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                    return Ended::Close(code.into());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Ended::Eof,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A minimal SSE client over a streaming HTTP response.
pub struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Sse {
    /// Opens the stream; a non-200 answer is returned as status and body.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Self, (u16, Value)> {
        let mut request = reqwest::Client::new().get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("SSE answers in time")
            .expect("SSE request sent");
        if response.status() != 200 {
            let status = response.status().as_u16();
            return Err((status, response.json().await.unwrap_or(Value::Null)));
        }
        Ok(Self {
            headers: response.headers().clone(),
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        })
    }

    /// The next event (comments and the `retry:` preamble skipped);
    /// `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(v).expect("JSON data");
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("SSE data arrives in time")?;
            let chunk = chunk.ok()?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// Skips events until one named `name`.
    pub async fn next_named(&mut self, name: &str) -> SseEvent {
        loop {
            let event = self.next().await.expect("stream still open");
            if event.event == name {
                return event;
            }
        }
    }
}

/// Reads gRPC stream items with a bound.
pub async fn next_grpc<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("gRPC item in time")
        .expect("gRPC stream healthy")
        .expect("gRPC stream open")
}

/// An HS256 JWT of `claims` signed with `secret`.
pub fn sign_hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token encodes")
}

/// Seconds since the Unix epoch (for `exp` and `nbf` claims).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
