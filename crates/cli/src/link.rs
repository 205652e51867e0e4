//! One room followed over a WebSocket that survives its server: on any
//! disconnect it reconnects with exponential backoff and full jitter and
//! subscribes again from the last cursor it handed out, so the caller sees
//! every event of the room once, in order, across gateway restarts (the
//! server's resume guarantee, SPEC §2), or is told that history no longer
//! reached back far enough.

use crate::{CliError, Credentials, Endpoint};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bounds of one connection attempt and of the server's silence. The
/// server pings every 20 s by default, so a minute without any frame means
/// a half-open socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SILENCE_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What [`Link::next`] saw.
#[derive(Debug)]
pub(crate) enum Happening {
    /// (Re)subscribed. `gap`: a resume whose cursor history no longer
    /// covered (`recovered: false`), so events were missed.
    Subscribed { gap: bool, resumed: bool },
    /// A frame from the server, parsed, with its text as received.
    Frame(Value, String),
    /// The connection went away; a reconnect follows on the next call.
    Disconnected(String),
}

enum State {
    /// Not connected; the next attempt is not before this instant.
    Idle { retry_at: Instant },
    /// Connected; `subscribe_sent` / `subscribed` track the room's
    /// subscription on this connection (so a call cancelled half-way
    /// carries on where it was).
    Open {
        ws: Box<Ws>,
        subscribe_sent: bool,
        subscribed: bool,
        since: Option<String>,
    },
}

pub(crate) struct Link {
    endpoint: Endpoint,
    credentials: Credentials,
    room: String,
    /// The cursor of the last event handed out (the resume point).
    cursor: Option<String>,
    state: State,
    backoff: Duration,
    connected_once: bool,
}

impl Link {
    pub(crate) fn new(
        endpoint: Endpoint,
        credentials: Credentials,
        room: String,
        since: Option<String>,
    ) -> Self {
        Self {
            endpoint,
            credentials,
            room,
            cursor: since,
            state: State::Idle {
                retry_at: Instant::now(),
            },
            backoff: FIRST_BACKOFF,
            connected_once: false,
        }
    }

    pub(crate) fn room(&self) -> &str {
        &self.room
    }

    /// The next thing that happened. Cancel-safe: dropping the future
    /// loses at most a connection attempt in progress, never a frame.
    /// Errors are final (refused credentials, a 4001/4003 close, a room
    /// the server will not let us subscribe to).
    pub(crate) async fn next(&mut self) -> Result<Happening, CliError> {
        loop {
            match &mut self.state {
                State::Idle { retry_at } => {
                    tokio::time::sleep_until(*retry_at).await;
                    match self.connect().await {
                        Ok(ws) => {
                            self.state = State::Open {
                                ws: Box::new(ws),
                                subscribe_sent: false,
                                subscribed: false,
                                since: self.cursor.clone(),
                            };
                        }
                        Err(Attempt::Final(err)) => return Err(err),
                        Err(Attempt::Retry(why)) => {
                            self.schedule_retry();
                            return Ok(Happening::Disconnected(why));
                        }
                    }
                }
                State::Open {
                    ws,
                    subscribe_sent,
                    subscribed,
                    since,
                } => {
                    if !*subscribe_sent {
                        let mut frame = json!({"type": "subscribe", "room": self.room});
                        if let Some(since) = since {
                            frame["since"] = Value::String(since.clone());
                        }
                        if let Err(err) = ws.send(Message::text(frame.to_string())).await {
                            return Ok(self.lost(format!("sending subscribe: {err}")));
                        }
                        *subscribe_sent = true;
                    }
                    let limit = if *subscribed {
                        SILENCE_TIMEOUT
                    } else {
                        CONNECT_TIMEOUT
                    };
                    let message = match tokio::time::timeout(limit, ws.next()).await {
                        Err(_) if *subscribed => {
                            return Ok(self.lost(format!("no frame for {}s", limit.as_secs())));
                        }
                        Err(_) => return Ok(self.lost("no answer to subscribe".into())),
                        Ok(None) => return Ok(self.lost("connection closed".into())),
                        Ok(Some(Err(err))) => return Ok(self.lost(err.to_string())),
                        Ok(Some(Ok(message))) => message,
                    };
                    let text = match message {
                        Message::Text(text) => text.to_string(),
                        Message::Close(close) => {
                            let (code, reason) = close
                                .map(|c| (u16::from(c.code), c.reason.to_string()))
                                .unwrap_or((u16::from(CloseCode::Status), String::new()));
                            return self.closed(code, reason);
                        }
                        // Pings are answered by the WebSocket layer; any
                        // frame proves the server is there.
                        _ => continue,
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    let kind = frame["type"].as_str().unwrap_or_default();
                    let ours = frame["room"].as_str() == Some(self.room.as_str());
                    if !*subscribed {
                        if kind == "subscribed" && ours {
                            *subscribed = true;
                            let resumed = since.is_some();
                            let gap = resumed && frame["recovered"] == Value::Bool(false);
                            if gap {
                                // Live delivery starts at the head.
                                self.cursor = frame["cursor"].as_str().map(str::to_owned);
                            }
                            self.backoff = FIRST_BACKOFF;
                            self.connected_once = true;
                            return Ok(Happening::Subscribed { gap, resumed });
                        }
                        if kind == "error" && frame["id"].is_null() {
                            let code = frame["code"].as_str().unwrap_or("error").to_owned();
                            let message = frame["message"].as_str().unwrap_or_default().to_owned();
                            if code == "unavailable" || code == "rate_limited" {
                                return Ok(self.lost(format!("subscribe: {code}: {message}")));
                            }
                            return Err(CliError::Refused { code, message });
                        }
                    } else if ours
                        && matches!(kind, "message" | "join" | "leave")
                        && let Some(cursor) = frame["cursor"].as_str()
                    {
                        self.cursor = Some(cursor.to_owned());
                    }
                    return Ok(Happening::Frame(frame, text));
                }
            }
        }
    }

    /// Sends a frame if connected and subscribed; `false` when it could not
    /// be sent (the caller keeps it for after the next subscribe).
    pub(crate) async fn send(&mut self, frame: &Value) -> bool {
        let State::Open {
            ws,
            subscribed: true,
            ..
        } = &mut self.state
        else {
            return false;
        };
        if ws.send(Message::text(frame.to_string())).await.is_ok() {
            return true;
        }
        self.lost("send failed".into());
        false
    }

    /// Closes the connection politely (a normal close, so the server
    /// removes us from presence at once).
    pub(crate) async fn close(&mut self) {
        if let State::Open { ws, .. } = &mut self.state {
            let _ = tokio::time::timeout(Duration::from_secs(2), (**ws).close(None)).await;
        }
        self.state = State::Idle {
            retry_at: Instant::now() + Duration::from_secs(3600),
        };
    }

    fn lost(&mut self, why: String) -> Happening {
        self.schedule_retry();
        Happening::Disconnected(why)
    }

    fn closed(&mut self, code: u16, reason: String) -> Result<Happening, CliError> {
        match code {
            // Token expired or invalid, forbidden (e.g. banned): coming
            // back as we are cannot help.
            4001 | 4003 => Err(CliError::Closed { code, reason }),
            _ => Ok(self.lost(format!("closed by the server ({code}) {reason}"))),
        }
    }

    fn schedule_retry(&mut self) {
        // Full jitter: a restart of a gateway with many clients must not
        // bring them all back in the same millisecond.
        let most = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX);
        let wait = Duration::from_millis(rand::rng().random_range(0..=most));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.state = State::Idle {
            retry_at: Instant::now() + wait,
        };
    }

    async fn connect(&self) -> Result<Ws, Attempt> {
        let url = self.endpoint.ws_url(&self.credentials);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|err| Attempt::Final(CliError::Usage(format!("{url}: {err}"))))?;
        if let Credentials::Token(token) = &self.credentials {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Attempt::Final(CliError::Usage(
                    "the token holds characters a header cannot".into(),
                ))
            })?;
            request.headers_mut().insert("authorization", value);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await
        {
            Err(_) => Err(Attempt::Retry(format!("connecting to {url}: timed out"))),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(WsError::Http(response))) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                // 401/403: the credentials; 400/404: the URL. Retrying
                // changes neither. Anything else (503 at a cap, a proxy's
                // 502 while the gateway restarts) may pass.
                let final_status = match status.as_u16() {
                    401 | 403 => true,
                    // A wrong URL, unless it worked before (a proxy in
                    // front of a restarting gateway may answer 404).
                    400 | 404 => !self.connected_once,
                    _ => false,
                };
                if final_status {
                    return Err(Attempt::Final(CliError::Refused {
                        code: status.to_string(),
                        message: error_message(&body),
                    }));
                }
                Err(Attempt::Retry(format!("{url}: HTTP {status}")))
            }
            Ok(Err(err)) => Err(Attempt::Retry(format!("connecting to {url}: {err}"))),
        }
    }
}

enum Attempt {
    Retry(String),
    Final(CliError),
}

/// The message of a JSON error body (`{"error":{"code","message"}}`), else
/// the body itself.
pub(crate) fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}
