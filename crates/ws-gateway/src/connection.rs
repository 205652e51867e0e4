use crate::Mode;
use crate::frame::Violation;
use crate::socket::{Incoming, ReadError, WsReader, WsWriter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_gateway::queue::QueueReceiver;
use switchboard_gateway::{
    CloseReason, ConnControl, Deliver, Delivery, Gateway, Session, Transport,
};
use switchboard_protocol::ErrorCode;
use switchboard_protocol::frames::{BadFrame, ClientFrame, ServerFrame};
use switchboard_telemetry::names;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::Notify;

/// Items drained from the queue per socket flush: batches writes under
/// load without letting one connection hog its task.
const WRITE_BATCH: usize = 32;

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

/// What the reader and the writer of one connection share (they run in
/// one task, joined by `select!`).
struct Shared {
    start: Instant,
    last_seen_ms: AtomicU64,
    /// A ping's payload waiting for its pong (the reader cannot write).
    pong: Mutex<Option<Vec<u8>>>,
    pong_ready: Notify,
}

impl Shared {
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

    fn take_pong(&self) -> Option<Vec<u8>> {
        self.pong.lock().map_or(None, |mut pong| pong.take())
    }
}

/// How reading ended.
enum ReadEnd {
    /// The peer sent its close frame (with this code).
    PeerClosed(Option<u16>),
    /// The peer broke the protocol.
    Violation(Violation),
    /// The socket is gone, or we were closing and the peer answered.
    Done,
}

/// What a connection runs on: hyper's upgraded socket, or the raw one when
/// the front served the upgrade.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Socket for S {}

pub(crate) async fn run<S: Socket>(
    io: S,
    gateway: Arc<Gateway>,
    admitted: crate::Admitted,
    preface: Vec<u8>,
) {
    let crate::Admitted {
        identity,
        mode,
        slot,
    } = admitted;
    let (mut session, queue) = gateway.open_session(identity, Transport::WebSocket, slot);
    let control = session.control().clone();
    let shared = Shared {
        start: Instant::now(),
        last_seen_ms: AtomicU64::new(0),
        pong: Mutex::new(None),
        pong_ready: Notify::new(),
    };
    let (read_half, write_half) = tokio::io::split(io);
    let mut reader = WsReader::new(read_half, gateway.limits().max_frame_bytes);
    // The 101 when the front served the upgrade; sent before anything.
    let mut writer = WsWriter::with_preface(write_half, preface);
    if writer.flush().await.is_err() {
        return;
    }
    if let Mode::Chat(room) = &mode {
        // Errors are queued for the client like any other reply. Boxed,
        // like every command below: a subscribe's future is kilobytes and
        // would otherwise sit in every connection's task for its life.
        let _ = Box::pin(session.subscribe(room.as_str(), None)).await;
    }
    let ended = {
        let writer = write_loop(&mut writer, queue, &control, &gateway, &shared);
        let reader = read_loop(&mut reader, &mut session, &mode, &shared);
        tokio::pin!(writer, reader);
        tokio::select! {
            () = &mut writer => {
                // We sent a close frame: wait briefly for the peer's reply so
                // the socket is not torn down under frames it is still reading.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, &mut reader).await;
                ReadEnd::Done
            }
            ended = &mut reader => ended,
        }
    };
    let close = match ended {
        // Echo the peer's code, as the RFC asks.
        ReadEnd::PeerClosed(code) => Some((code.unwrap_or(1000), "")),
        ReadEnd::Violation(violation) => Some((violation.close_code(), violation.reason())),
        ReadEnd::Done => None,
    };
    if let Some((code, reason)) = close {
        writer.close(code, reason);
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            if writer.flush().await.is_ok() {
                writer.shutdown().await;
            }
        })
        .await;
        // Until the peer has read our close and ended its side (bounded).
        // Boxed: its read buffer must not sit in every connection's task.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, Box::pin(reader.drain())).await;
    }
    tracing::debug!(user = %session.identity().user, reason = ?control.reason(), "websocket closed");
}

async fn read_loop<S: Socket>(
    reader: &mut WsReader<ReadHalf<S>>,
    session: &mut Session,
    mode: &Mode,
    shared: &Shared,
) -> ReadEnd {
    loop {
        // Publishes run while the next frame is read (gateway's
        // pipeline.rs); both futures are cancel-safe.
        let message = tokio::select! {
            biased;
            published = session.published() => {
                session.reply_published(published).await;
                continue;
            }
            message = reader.next() => message,
        };
        shared.seen();
        if session.control().is_closed() {
            // Closing: only wait for the peer's close reply.
            match message {
                Ok(Incoming::Close(_)) | Err(_) => return ReadEnd::Done,
                Ok(_) => continue,
            }
        }
        match message {
            // Boxed: the command futures (publish, subscribe, history…) are
            // kilobytes, and an idle connection should not carry them.
            Ok(Incoming::Text(text)) => Box::pin(handle_text(session, mode, text)).await,
            // Refused like any unreadable frame, from the same budget.
            Ok(Incoming::Binary) => {
                Box::pin(session.reject(BadFrame {
                    id: None,
                    message: "binary frames are not supported; send JSON text frames".into(),
                }))
                .await;
            }
            Ok(Incoming::Ping(payload)) => {
                if let Ok(mut pong) = shared.pong.lock() {
                    *pong = Some(payload.to_vec());
                }
                shared.pong_ready.notify_one();
            }
            Ok(Incoming::Pong) => {}
            Ok(Incoming::Close(code)) => return ReadEnd::PeerClosed(code),
            Err(ReadError::Violation(Violation::TooLarge)) => {
                // Pending replies are flushed first; the writer sends 1009.
                session.control().close(CloseReason::TooLarge);
                std::future::pending::<()>().await;
            }
            Err(ReadError::Violation(violation)) => return ReadEnd::Violation(violation),
            Err(ReadError::Io) => return ReadEnd::Done,
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

async fn write_loop<S: Socket>(
    writer: &mut WsWriter<WriteHalf<S>>,
    mut queue: QueueReceiver,
    control: &Arc<ConnControl>,
    gateway: &Gateway,
    shared: &Shared,
) {
    let limits = gateway.limits();
    let write_timeout = limits.ping_timeout;
    let mut delivery = Delivery::new(limits.outbound_queue, Transport::WebSocket);
    // Grows to the batch size on first use and is reused; an idle
    // connection never pays for it.
    let mut writes: Vec<Deliver> = Vec::new();
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.tick().await;
    // Made once, not per batch: each one registers with its token under
    // that token's mutex, and the shutdown token is shared by every
    // connection (a global lock per delivery batch).
    let closed = control.closed();
    let shutdown = gateway.shutdown().cancelled();
    tokio::pin!(closed, shutdown);
    let mut shutting_down = false;
    let reason = 'connection: loop {
        tokio::select! {
            biased;
            reason = &mut closed => break reason,
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                control.close(CloseReason::Shutdown);
            }
            item = queue.recv() => {
                let Some(item) = item else { return };
                delivery.accept_batch(item, &mut queue, WRITE_BATCH, control, &mut writes);
                // A resume's replay (up to a room's whole history) is
                // encoded and flushed a batch at a time: the writer's
                // buffer holds one batch, not megabytes for a client that
                // may not be reading.
                while !writes.is_empty() {
                    let events = encode(writer, &mut writes);
                    tokio::select! {
                        written = tokio::time::timeout(write_timeout, writer.flush()) => {
                            if !matches!(written, Ok(Ok(()))) {
                                // A peer that does not read for that long is as good as gone.
                                return;
                            }
                            delivery.delivered(events);
                        }
                        // Closed while the socket was full (a slow consumer):
                        // stop writing events and go straight to the close frame.
                        reason = &mut closed => break 'connection reason,
                    }
                }
                if writes.capacity() > 4 * WRITE_BATCH {
                    // A replay grew it; do not keep that per connection.
                    writes = Vec::new();
                }
            }
            () = shared.pong_ready.notified() => {
                if let Some(payload) = shared.take_pong() {
                    writer.pong(&payload);
                    if !matches!(tokio::time::timeout(write_timeout, writer.flush()).await, Ok(Ok(()))) {
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                if shared.silent_for() > limits.ping_timeout {
                    metrics::counter!(names::PING_FAILURES).increment(1);
                    control.close(CloseReason::PingTimeout);
                } else {
                    writer.ping();
                    if !matches!(tokio::time::timeout(write_timeout, writer.flush()).await, Ok(Ok(()))) {
                        return;
                    }
                }
            }
        }
    };
    // Pending frames are flushed before the close frame; a client that is
    // still reading gets them and then the close code.
    let _ = tokio::time::timeout(CLOSE_GRACE, Box::pin(close(writer, reason))).await;
}

/// Encodes the first `WRITE_BATCH` writes into the writer's buffer: each
/// event's JSON is the shared bytes encoded once for every subscriber.
/// Returns the events.
fn encode<S: Socket>(writer: &mut WsWriter<WriteHalf<S>>, writes: &mut Vec<Deliver>) -> u64 {
    let mut events = 0u64;
    for write in writes.drain(..writes.len().min(WRITE_BATCH)) {
        match write {
            Deliver::Event(event) => {
                events += 1;
                writer.text(&event.json_frame());
            }
            Deliver::Frame(frame) => writer.text(&frame.to_json()),
        }
    }
    events
}

async fn close<S: Socket>(writer: &mut WsWriter<WriteHalf<S>>, reason: CloseReason) {
    if reason == CloseReason::TokenExpired {
        let frame = ServerFrame::error(ErrorCode::Unauthorized, "token expired");
        writer.text(&frame.to_json());
    }
    writer.close(close_code(reason), close_text(reason));
    if writer.flush().await.is_ok() {
        writer.shutdown().await;
    }
}
