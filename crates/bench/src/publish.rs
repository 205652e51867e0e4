//! Publishers. Each lane is one ordered stream of sequence numbers: a
//! WebSocket publisher is one lane (frames on one connection are handled in
//! order, so its window pipelines without reordering); an HTTP or gRPC
//! publisher runs `window` lanes, each waiting for its acknowledgement
//! before the next publish, because concurrent requests may legitimately be
//! stored in any order and would otherwise look like reordering.

use crate::payload;
use crate::subscribe::{Failure, JsonFrame, Ws, grpc_request, status_code};
use crate::track::{Errors, Shards};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use switchboard_protocol::pb;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

/// What every lane of a run shares: the budget, the deadline and counters.
pub struct PubShared {
    pub run: u32,
    /// The raw protocol: the payload is the whole body, any 2xx acknowledges.
    pub raw: bool,
    pub payload_bytes: usize,
    pub rooms: Arc<[String]>,
    /// Publish attempts left over all lanes (`--messages`).
    budget: AtomicU64,
    deadline: Instant,
    /// Acknowledged publishes per `(lane, room)`, at `lane * rooms + room`.
    acked: Vec<AtomicU64>,
    pub attempts: AtomicU64,
    pub errors: Arc<Errors>,
    pub ack_latency: Shards,
    /// Upper bound of one request, and of waiting for the last acks.
    pub request_timeout: Duration,
}

impl PubShared {
    /// `messages` attempts at most, until `deadline`.
    pub fn new(
        run: u32,
        config: &crate::Config,
        rooms: Arc<[String]>,
        lanes: usize,
        deadline: Instant,
        errors: Arc<Errors>,
        request_timeout: Duration,
    ) -> Self {
        let cells = lanes * rooms.len();
        Self {
            run,
            raw: config.protocol.is_raw(),
            payload_bytes: config.payload_bytes,
            rooms,
            budget: AtomicU64::new(config.messages),
            deadline,
            acked: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            attempts: AtomicU64::new(0),
            errors,
            ack_latency: Shards::new(16),
            request_timeout,
        }
    }

    /// Takes one publish from the budget, unless the run is over.
    fn claim(&self) -> bool {
        Instant::now() < self.deadline
            && self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
    }

    fn ack(&self, lane: usize, room: usize, started: Instant) {
        if let Some(cell) = self.acked.get(lane * self.rooms.len() + room) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.ack_latency.record(lane, micros);
    }

    /// Acknowledged publishes of `lane` into `room`.
    pub fn acked(&self, lane: usize, room: usize) -> u64 {
        self.acked
            .get(lane * self.rooms.len() + room)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn acked_total(&self) -> u64 {
        self.acked.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn room_of(&self, lane: usize, k: u64) -> usize {
        let rooms = self.rooms.len() as u64;
        usize::try_from((lane as u64 + k) % rooms).unwrap_or(0)
    }
}

/// A ticker for `--rate`, for lane `lane` of `lanes`; missed ticks are
/// caught up, so the offered rate holds on average even with a coarse timer.
///
/// Lanes start a `period / lanes` apart: lanes that ticked together would
/// offer the rate as bursts of `lanes` publishes, and a burst of 16 into a
/// room of 1,000 is 16,000 deliveries queued at once, which measured the
/// burst rather than the latency at the offered rate.
pub fn pacer(
    period: Option<Duration>,
    start: Instant,
    lane: usize,
    lanes: usize,
) -> Option<Interval> {
    period.map(|p| {
        let p = p.max(Duration::from_micros(1));
        let phase = p.mul_f64(lane as f64 / lanes.max(1) as f64);
        let mut ticker = tokio::time::interval_at(start + phase, p);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        ticker
    })
}

/// Whether a failed publish was certainly not stored (so its sequence
/// number may be reused without leaving a gap).
fn definitely_refused(code: &str) -> bool {
    matches!(
        code,
        "rate_limited"
            | "bad_frame"
            | "invalid_room"
            | "too_large"
            | "unauthorized"
            | "forbidden"
            | "not_subscribed"
    )
}

/// One HTTP lane: `POST /api/rooms/{room}/messages` (raw: `POST` of the
/// bare payload to the room's publish path), one at a time.
pub async fn http_lane(
    client: reqwest::Client,
    urls: Arc<[String]>,
    lane: usize,
    shared: Arc<PubShared>,
    mut ticker: Option<Interval>,
) {
    let rooms = shared.rooms.len();
    let mut seq = vec![0u64; rooms];
    let mut k = 0u64;
    while shared.claim() {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let room = shared.room_of(lane, k);
        let n = seq.get(room).copied().unwrap_or(0);
        let text = payload::encode(
            shared.run,
            lane,
            n,
            payload::now_nanos(),
            shared.payload_bytes,
        );
        let id = format!("b{:08x}-{lane}-{k}", shared.run);
        k += 1;
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        let Some(url) = urls.get(room) else { break };
        let started = Instant::now();
        let request = if shared.raw {
            client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(text)
        } else {
            client
                .post(url)
                .json(&serde_json::json!({"text": text, "id": id}))
        };
        let stored = match request.send().await {
            Ok(response)
                if response.status() == reqwest::StatusCode::CREATED
                    || (shared.raw && response.status().is_success()) =>
            {
                shared.ack(lane, room, started);
                true
            }
            // A peer without error codes: a 4xx refused the message, a 5xx
            // may have broadcast it before failing.
            Ok(response) if shared.raw => {
                let status = response.status();
                shared.errors.add(&format!("http_{}", status.as_u16()));
                status.is_server_error()
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let code = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("http_{status}"));
                shared.errors.add(&code);
                !definitely_refused(&code)
            }
            Err(err) => {
                shared.errors.add(if err.is_timeout() {
                    "timeout"
                } else {
                    "io_error"
                });
                true
            }
        };
        if stored && let Some(s) = seq.get_mut(room) {
            *s += 1;
        }
    }
}

/// One gRPC lane: unary `Publish`, one at a time.
pub async fn grpc_lane(
    channel: Channel,
    user: String,
    lane: usize,
    shared: Arc<PubShared>,
    mut ticker: Option<Interval>,
) {
    let mut client = pb::chat_client::ChatClient::new(channel);
    let rooms = shared.rooms.len();
    let mut seq = vec![0u64; rooms];
    let mut k = 0u64;
    while shared.claim() {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let room = shared.room_of(lane, k);
        let n = seq.get(room).copied().unwrap_or(0);
        let request = pb::PublishRequest {
            room: shared.rooms.get(room).cloned().unwrap_or_default(),
            text: payload::encode(
                shared.run,
                lane,
                n,
                payload::now_nanos(),
                shared.payload_bytes,
            ),
            id: format!("b{:08x}-{lane}-{k}", shared.run),
        };
        k += 1;
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let call = client.publish(grpc_request(request, &user));
        let stored = match tokio::time::timeout(shared.request_timeout, call).await {
            Ok(Ok(_)) => {
                shared.ack(lane, room, started);
                true
            }
            Ok(Err(status)) => {
                let Failure(code) = status_code(&status);
                shared.errors.add(&code);
                !definitely_refused(&code)
            }
            Err(_) => {
                shared.errors.add("timeout");
                true
            }
        };
        if stored && let Some(s) = seq.get_mut(room) {
            *s += 1;
        }
    }
}

/// One WebSocket publisher (one lane): up to `window` publish frames in
/// flight, acknowledgements read by a task of their own.
pub async fn ws_publisher(
    ws: Ws,
    lane: usize,
    shared: Arc<PubShared>,
    window: usize,
    mut ticker: Option<Interval>,
) {
    let (mut sink, mut stream) = ws.split();
    let permits = Arc::new(Semaphore::new(window));
    let inflight: Arc<Mutex<HashMap<u64, (Instant, usize)>>> = Arc::default();
    let reader = {
        let (permits, inflight, shared) = (permits.clone(), inflight.clone(), shared.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<JsonFrame<'_>>(text.as_str()) else {
                    shared.errors.add("bad_response");
                    continue;
                };
                let acked = match frame.kind.as_ref() {
                    "ack" => true,
                    "error" => false,
                    _ => continue,
                };
                let entry = frame
                    .id
                    .as_deref()
                    .and_then(|id| id.rsplit('-').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .and_then(|attempt| {
                        inflight
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&attempt)
                    });
                match (acked, entry) {
                    (true, Some((started, room))) => shared.ack(lane, room, started),
                    (true, None) => shared.errors.add("unexpected_ack"),
                    (false, _) => shared.errors.add(frame.code.as_deref().unwrap_or("error")),
                }
                if entry.is_some() {
                    permits.add_permits(1);
                }
            }
        })
    };
    let rooms = shared.rooms.len();
    let mut seq = vec![0u64; rooms];
    let mut attempt = 0u64;
    while shared.claim() {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        // Bounded: a server that stops acknowledging ends the lane at the
        // deadline instead of hanging it.
        match tokio::time::timeout_at(shared.deadline, permits.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => break,
        }
        let room = shared.room_of(lane, attempt);
        let n = seq.get(room).copied().unwrap_or(0);
        if let Some(s) = seq.get_mut(room) {
            *s += 1;
        }
        let text = payload::encode(
            shared.run,
            lane,
            n,
            payload::now_nanos(),
            shared.payload_bytes,
        );
        let frame = serde_json::json!({
            "type": "publish",
            "room": shared.rooms.get(room).map_or("", String::as_str),
            "text": text,
            "id": format!("b{:08x}-{lane}-{attempt}", shared.run),
        });
        inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(attempt, (Instant::now(), room));
        attempt += 1;
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        if sink.send(Message::text(frame.to_string())).await.is_err() {
            shared.errors.add("closed");
            break;
        }
    }
    let all = u32::try_from(window).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(shared.request_timeout, permits.acquire_many(all)).await;
    let unanswered = inflight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    for _ in 0..unanswered {
        shared.errors.add("no_ack");
    }
    let _ = sink.close().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lanes of a paced run tick a `period / lanes` apart, so the offered
    /// rate arrives evenly instead of in bursts of one publish per lane.
    #[tokio::test]
    async fn paced_lanes_are_staggered_over_the_period() {
        let start = Instant::now();
        let period = Duration::from_millis(40);
        for lane in 0..4 {
            let mut ticker = pacer(Some(period), start, lane, 4).expect("paced");
            let first = ticker.tick().await;
            let second = ticker.tick().await;
            assert_eq!(first, start + Duration::from_millis(10 * lane as u64));
            assert_eq!(second, first + period);
        }
        assert!(pacer(None, start, 0, 4).is_none());
    }
}
