use crate::Mode;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchboard_auth::Identity;
use switchboard_gateway::{
    CloseReason, ConnControl, Deliver, Delivery, Gateway, Outbound, Peer, Session, Transport,
};
use switchboard_protocol::ErrorCode;
use switchboard_protocol::frames::{BadFrame, ClientFrame, ServerFrame};
use switchboard_telemetry::names;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

/// Items drained from the queue per socket flush: batches writes under
/// load without letting one connection hog its task.
const WRITE_BATCH: usize = 64;

/// How long a closing connection may take to flush and send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long we wait for the peer's close frame after sending ours.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// Close codes of the spec (§3).
fn close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::SlowConsumer => 4008,
        CloseReason::TokenExpired => 4001,
        CloseReason::TooLarge => 1009,
        CloseReason::Shutdown => 1012,
        // "Try again later": the client should reconnect and resume.
        CloseReason::FeedLost => 1013,
        CloseReason::PingTimeout => 1001,
    }
}

fn close_text(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::SlowConsumer => "slow consumer: resume with since",
        CloseReason::TokenExpired => "token expired",
        CloseReason::TooLarge => "frame too large",
        CloseReason::Shutdown => "server restarting",
        CloseReason::FeedLost => "room feed lost: resume with since",
        CloseReason::PingTimeout => "ping timeout",
    }
}

/// Liveness clock shared by reader (any inbound frame) and writer (pings).
struct Liveness {
    start: Instant,
    last_seen_ms: AtomicU64,
}

impl Liveness {
    fn seen(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(
            self.last_seen_ms.load(Ordering::Relaxed),
        ))
    }
}

pub(crate) async fn run(
    socket: WebSocket,
    gateway: Arc<Gateway>,
    identity: Identity,
    mode: Mode,
    peer: Peer,
) {
    let (mut session, queue) =
        gateway.open_session(identity, Transport::WebSocket, Some(peer.0.ip()));
    let control = session.control().clone();
    let liveness = Liveness {
        start: Instant::now(),
        last_seen_ms: AtomicU64::new(0),
    };
    let (sink, stream) = socket.split();
    if let Mode::Chat(room) = &mode {
        // Errors are queued for the client like any other reply.
        let _ = session.subscribe(room.as_str(), None).await;
    }
    {
        let writer = write_loop(sink, queue, &control, &gateway, &liveness);
        let reader = read_loop(stream, &mut session, &mode, &gateway, &liveness);
        tokio::pin!(writer, reader);
        tokio::select! {
            () = &mut writer => {
                // We sent a close frame: wait briefly for the peer's reply so
                // the socket is not torn down under frames it is still reading.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, &mut reader).await;
            }
            () = &mut reader => {}
        }
    }
    tracing::debug!(user = %session.identity().user, reason = ?control.reason(), "websocket closed");
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    session: &mut Session,
    mode: &Mode,
    gateway: &Gateway,
    liveness: &Liveness,
) {
    let max_frame = gateway.limits().max_frame_bytes;
    while let Some(message) = stream.next().await {
        liveness.seen();
        if session.control().is_closed() {
            // Closing: only wait for the peer's close reply.
            if matches!(message, Ok(Message::Close(_)) | Err(_)) {
                return;
            }
            continue;
        }
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                if is_capacity_error(err) {
                    session.control().close(CloseReason::TooLarge);
                    // The stream is unusable now; the writer sends 1009.
                    std::future::pending::<()>().await;
                }
                return;
            }
        };
        match message {
            Message::Text(text) if text.len() > max_frame => {
                session.control().close(CloseReason::TooLarge);
            }
            Message::Text(text) => handle_text(session, mode, text.as_str()).await,
            Message::Binary(binary) if binary.len() > max_frame => {
                session.control().close(CloseReason::TooLarge);
            }
            // Refused like any unreadable frame, from the same budget.
            Message::Binary(_) => {
                session
                    .reject(BadFrame {
                        id: None,
                        message: "binary frames are not supported; send JSON text frames".into(),
                    })
                    .await;
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

async fn handle_text(session: &mut Session, mode: &Mode, text: &str) {
    if let Mode::Chat(room) = mode
        && !text.trim_start().starts_with('{')
    {
        let line = text.trim_end_matches(['\r', '\n']).to_owned();
        if let Err(err) = session.publish(room.as_str(), line, None).await {
            session.reject_with(None, &err).await;
        }
        return;
    }
    match ClientFrame::from_json(text) {
        Ok(frame) => session.handle(frame).await,
        Err(bad) => session.reject(bad).await,
    }
}

fn is_capacity_error(err: axum::Error) -> bool {
    err.into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Outbound>,
    control: &Arc<ConnControl>,
    gateway: &Gateway,
    liveness: &Liveness,
) {
    let limits = gateway.limits();
    let write_timeout = limits.ping_timeout;
    let mut delivery = Delivery::new(limits.outbound_queue, Transport::WebSocket);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.tick().await;
    let reason = loop {
        tokio::select! {
            biased;
            reason = control.closed() => break reason,
            () = gateway.shutdown().cancelled() => control.close(CloseReason::Shutdown),
            count = queue.recv_many(&mut batch, WRITE_BATCH) => {
                if count == 0 {
                    return;
                }
                let writes = delivery.accept_batch(batch.drain(..), control);
                tokio::select! {
                    written = tokio::time::timeout(write_timeout, write_all(&mut sink, writes)) => {
                        if !matches!(written, Ok(Ok(()))) {
                            // A peer that does not read for that long is as good as gone.
                            return;
                        }
                    }
                    // Closed while the socket was full (a slow consumer):
                    // stop writing events and go straight to the close frame.
                    reason = control.closed() => break reason,
                }
            }
            _ = ping.tick() => {
                if liveness.silent_for() > limits.ping_timeout {
                    metrics::counter!(names::PING_FAILURES).increment(1);
                    control.close(CloseReason::PingTimeout);
                } else if tokio::time::timeout(write_timeout, sink.send(Message::Ping(Bytes::new()))).await.is_err() {
                    return;
                }
            }
        }
    };
    // Pending frames are flushed before the close frame; a client that is
    // still reading gets them and then the close code.
    let _ = tokio::time::timeout(CLOSE_GRACE, close(&mut sink, reason)).await;
}

async fn write_all(
    sink: &mut SplitSink<WebSocket, Message>,
    writes: Vec<Deliver>,
) -> Result<(), axum::Error> {
    let mut events = 0u64;
    for write in writes {
        let text = match write {
            Deliver::Event(event) => {
                events += 1;
                event.json_frame()
            }
            Deliver::Frame(frame) => frame.to_json(),
        };
        // Our own JSON encoder produced these bytes: always UTF-8.
        let text = Utf8Bytes::try_from(text).unwrap_or_else(|_| Utf8Bytes::from_static("{}"));
        sink.feed(Message::Text(text)).await?;
    }
    sink.flush().await?;
    metrics::counter!(names::MESSAGES_OUT, "transport" => "websocket").increment(events);
    Ok(())
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, reason: CloseReason) {
    if reason == CloseReason::TokenExpired {
        let frame = ServerFrame::error(ErrorCode::Unauthorized, "token expired");
        if let Ok(text) = Utf8Bytes::try_from(frame.to_json()) {
            let _ = sink.send(Message::Text(text)).await;
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close_code(reason),
            reason: Utf8Bytes::from_static(close_text(reason)),
        })))
        .await;
    let _ = sink.close().await;
}
