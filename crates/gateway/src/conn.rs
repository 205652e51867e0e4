//! The queue between the hub/session and one connection's writer, and the
//! writer-side bookkeeping that turns it into an ordered, gap-free,
//! duplicate-free stream per room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{Cursor, RoomName, SharedEvent};
use tokio_util::sync::CancellationToken;

/// Why the server ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue overflowed (spec: close 4008).
    SlowConsumer,
    /// The server is shutting down (close 1012).
    Shutdown,
    /// The token's `exp` passed (close 4001).
    TokenExpired,
    /// A frame exceeded the size limit (close 1009).
    TooLarge,
    /// The peer stopped answering pings.
    PingTimeout,
    /// The live feed of a room was lost; the client must resume.
    FeedLost,
}

/// Lets the hub, timers and the server end a connection with a reason.
/// The first reason wins.
#[derive(Debug, Default)]
pub struct ConnControl {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
    /// Read per delivery by the hub: an atomic load, where the token's
    /// `is_cancelled` takes its node's mutex (2.7% of a fan-out profile).
    closed: AtomicBool,
}

impl ConnControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.closed.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    pub async fn closed(&self) -> CloseReason {
        self.token.cancelled().await;
        self.reason().unwrap_or(CloseReason::Shutdown)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// What is queued for a connection's writer, in order.
///
/// Kept at 24 bytes: every connection's queue allocates its first block of
/// slots up front, and the hot variant is a pointer to a shared event, so
/// the rare, large variants are boxed.
#[derive(Debug)]
pub enum Outbound {
    /// A live event of a room the connection is subscribed to.
    Event(Arc<SharedEvent>),
    /// A subscription is starting: hold this room's live events until
    /// [`Outbound::Subscribed`] says where replay ends.
    Subscribing(RoomName),
    /// The subscription is live: send `subscribed`, then `replay`, then the
    /// held live events that come after it.
    Subscribed(Box<Subscribed>),
    /// Stop delivering the room, then send the frame (an `unsubscribed`
    /// confirmation or the error that ended a failed subscribe).
    Ended(Box<(RoomName, ServerFrame)>),
    /// Any other reply, in order with the events.
    Frame(Box<ServerFrame>),
}

/// Where a subscription's replay ends and live delivery starts.
#[derive(Debug)]
pub struct Subscribed {
    pub room: RoomName,
    pub head: Cursor,
    pub recovered: bool,
    pub replay: Vec<Arc<SharedEvent>>,
}

impl Outbound {
    pub fn frame(frame: ServerFrame) -> Self {
        Self::Frame(Box::new(frame))
    }

    pub fn ended(room: RoomName, frame: ServerFrame) -> Self {
        Self::Ended(Box::new((room, frame)))
    }
}

/// What a transport writes, in order; two words, like [`Outbound`].
#[derive(Debug)]
pub enum Deliver {
    Event(Arc<SharedEvent>),
    Frame(Box<ServerFrame>),
}

enum RoomDelivery {
    Holding(Vec<Arc<SharedEvent>>),
    Live(Cursor),
}

/// Writer-side state: per room, either holding live events while a
/// subscription replays, or live with the last cursor written. Events at or
/// before that cursor are dropped, which is what makes replay + live
/// exactly-once.
pub struct Delivery {
    rooms: HashMap<RoomName, RoomDelivery>,
    max_held: usize,
    /// Resolved once per connection: a `metrics::…!` call hashes its name
    /// and labels and looks them up in the registry each time.
    latency: metrics::Histogram,
    messages_out: metrics::Counter,
}

/// A connection held more live events during a replay than its queue
/// allows: it is a slow consumer.
#[derive(Debug)]
pub struct Overflow;

impl Delivery {
    pub fn new(max_held: usize, transport: crate::Transport) -> Self {
        let transport = transport.as_str();
        Self {
            rooms: HashMap::new(),
            max_held,
            latency: metrics::histogram!(
                switchboard_telemetry::names::DELIVERY_LATENCY,
                "transport" => transport
            ),
            messages_out: metrics::counter!(
                switchboard_telemetry::names::MESSAGES_OUT,
                "transport" => transport
            ),
        }
    }

    /// Counts events the transport has written to its client.
    pub fn delivered(&self, events: u64) {
        self.messages_out.increment(events);
    }

    /// Turns a batch of queued items into what to write. A connection that
    /// overflows while holding events is closed as a slow consumer.
    ///
    /// Takes what is queued now, up to `max` items, without waiting, and
    /// appends the writes to `out`, which the caller reuses from batch to
    /// batch: no allocation per delivery.
    pub fn accept_batch(
        &mut self,
        first: Outbound,
        queue: &mut crate::queue::QueueReceiver,
        max: usize,
        control: &ConnControl,
        out: &mut Vec<Deliver>,
    ) {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(item) = next {
            if self.accept(item, out).is_err() {
                metrics::counter!(switchboard_telemetry::names::SLOW_CONSUMER_DROPS).increment(1);
                control.close(CloseReason::SlowConsumer);
            }
            taken += 1;
            next = if taken < max { queue.try_recv() } else { None };
        }
        // Append → hand-over to the socket writer, which writes at once.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for write in out.iter() {
            if let Deliver::Event(event) = write {
                let age_ms = now_ms.saturating_sub(event.event().ts_unix_ms).max(0);
                self.latency.record(age_ms as f64 / 1000.0);
            }
        }
    }

    /// Turns one queued item into what to write, appended to `out`.
    pub fn accept(&mut self, item: Outbound, out: &mut Vec<Deliver>) -> Result<(), Overflow> {
        match item {
            Outbound::Event(event) => {
                let room = event.event().room.clone();
                match self.rooms.get_mut(&room) {
                    Some(RoomDelivery::Holding(held)) => {
                        if held.len() >= self.max_held {
                            return Err(Overflow);
                        }
                        held.push(event);
                    }
                    Some(RoomDelivery::Live(last)) if is_new(last, &event) => {
                        *last = event.event().cursor.clone();
                        out.push(Deliver::Event(event));
                    }
                    // Already delivered (replay overlap) or a stale event of
                    // a room unsubscribed meanwhile.
                    Some(RoomDelivery::Live(_)) | None => {}
                }
            }
            Outbound::Subscribing(room) => {
                self.rooms.insert(room, RoomDelivery::Holding(Vec::new()));
            }
            Outbound::Subscribed(subscribed) => {
                let Subscribed {
                    room,
                    head,
                    recovered,
                    replay,
                } = *subscribed;
                let held = match self.rooms.remove(&room) {
                    Some(RoomDelivery::Holding(held)) => held,
                    _ => Vec::new(),
                };
                out.push(Deliver::Frame(Box::new(ServerFrame::Subscribed {
                    room: room.to_string(),
                    cursor: head.to_string(),
                    recovered,
                })));
                // Replay is exactly (since, head]; held live events may
                // repeat its tail and are filtered against the head.
                out.extend(replay.into_iter().map(Deliver::Event));
                let mut last = head;
                for event in held {
                    if is_new(&last, &event) {
                        last = event.event().cursor.clone();
                        out.push(Deliver::Event(event));
                    }
                }
                self.rooms.insert(room, RoomDelivery::Live(last));
            }
            Outbound::Ended(ended) => {
                let (room, frame) = *ended;
                self.rooms.remove(&room);
                out.push(Deliver::Frame(Box::new(frame)));
            }
            Outbound::Frame(frame) => out.push(Deliver::Frame(frame)),
        }
        Ok(())
    }
}

/// Replayed events run up to the head and held ones may repeat them; a
/// different epoch means the room log was recreated and everything is new.
fn is_new(last: &Cursor, event: &SharedEvent) -> bool {
    let cursor = &event.event().cursor;
    cursor.epoch() != last.epoch() || cursor.offset() > last.offset()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{Event, EventKind};

    fn ev(offset: u64) -> Arc<SharedEvent> {
        SharedEvent::new(Event {
            room: RoomName::parse("r").expect("room"),
            cursor: format!("e:{offset}").parse().expect("cursor"),
            prev_offset: offset - 1,
            user: "u".into(),
            kind: EventKind::Join,
            ts_unix_ms: 0,
        })
    }

    fn offsets(out: &[Deliver]) -> Vec<u64> {
        out.iter()
            .filter_map(|d| match d {
                Deliver::Event(e) => Some(e.offset()),
                Deliver::Frame(_) => None,
            })
            .collect()
    }

    #[test]
    fn replay_then_held_live_without_duplicates() {
        let room = RoomName::parse("r").expect("room");
        let mut d = Delivery::new(10, crate::Transport::WebSocket);
        let mut out = Vec::new();
        d.accept(Outbound::Subscribing(room.clone()), &mut out)
            .expect("ok");
        for o in [4, 5, 6] {
            d.accept(Outbound::Event(ev(o)), &mut out).expect("ok");
        }
        assert!(out.is_empty(), "held until subscribed");
        d.accept(
            Outbound::Subscribed(Box::new(Subscribed {
                room: room.clone(),
                head: "e:5".parse().expect("cursor"),
                recovered: true,
                replay: vec![ev(3), ev(4), ev(5)],
            })),
            &mut out,
        )
        .expect("ok");
        d.accept(Outbound::Event(ev(6)), &mut out).expect("ok");
        d.accept(Outbound::Event(ev(7)), &mut out).expect("ok");
        assert!(
            matches!(&out[0], Deliver::Frame(frame) if matches!(**frame, ServerFrame::Subscribed { .. }))
        );
        assert_eq!(offsets(&out), vec![3, 4, 5, 6, 7]);
    }

    #[test]
    fn holding_too_much_is_overflow() {
        let room = RoomName::parse("r").expect("room");
        let mut d = Delivery::new(2, crate::Transport::WebSocket);
        let mut out = Vec::new();
        d.accept(Outbound::Subscribing(room), &mut out).expect("ok");
        d.accept(Outbound::Event(ev(1)), &mut out).expect("ok");
        d.accept(Outbound::Event(ev(2)), &mut out).expect("ok");
        assert!(d.accept(Outbound::Event(ev(3)), &mut out).is_err());
    }

    #[test]
    fn queue_items_stay_two_or_three_words() {
        assert!(std::mem::size_of::<Outbound>() <= 24);
        assert!(std::mem::size_of::<Deliver>() <= 16);
    }
}
