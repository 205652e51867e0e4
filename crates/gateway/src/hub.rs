//! The hub indexes this process's connections by room and fans each live
//! event out to them.
//!
//! A room is watched (one bus feed) only while a local connection needs it,
//! reference-counted by its subscribers. Each watched room has one task
//! that reads the feed in order, repairs gaps from history, and pushes the
//! shared event into every subscriber's bounded queue with `try_send`: a
//! full queue closes that connection as a slow consumer and never slows
//! the others. The only locks per event are the room's own.

use crate::conn::{CloseReason, ConnControl, Outbound};
use crate::queue::{QueueSender, TrySendError};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use switchboard_bus::{Bus, BusError, FeedItem, TraceCarrier};
use switchboard_protocol::{Cursor, RoomName, SharedEvent};
use switchboard_telemetry::{TRACE_TARGET, names};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Retries of a repair while the core is unreachable (50 ms doubling:
/// about 3 s in all).
const REPAIR_RETRIES: u32 = 6;
const REPAIR_FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// A connection's end of the fan-out.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub tx: QueueSender,
    pub control: Arc<ConnControl>,
}

type Subscribers = Arc<RwLock<HashMap<u64, Subscriber>>>;

#[derive(Clone, Debug)]
enum FeedState {
    Starting,
    Live,
    Failed(BusError),
}

struct WatchedRoom {
    /// Connections subscribed, kept under the hub's lock so that joining
    /// and leaving never wait on a room's fan-out lock while holding it.
    members: HashSet<u64>,
    subscribers: Subscribers,
    state: watch::Receiver<FeedState>,
    task: AbortHandle,
}

/// Local subscriptions of one gateway process.
pub struct Hub {
    bus: Arc<dyn Bus>,
    rooms: Mutex<HashMap<RoomName, WatchedRoom>>,
}

/// Undoes a subscription that did not complete (failed or cancelled at
/// its await), so no watch outlives the call that started it.
struct Registration<'a> {
    hub: &'a Hub,
    room: &'a RoomName,
    conn: u64,
    done: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.hub.unsubscribe(self.room, self.conn);
        }
    }
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            bus,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, WatchedRoom>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `conn` to the room's fan-out and returns once the room's feed
    /// is live, so that a history query made afterwards cannot miss an
    /// event. On failure, or if the returned future is dropped before it
    /// completes, the connection is not subscribed.
    pub async fn subscribe(
        &self,
        room: &RoomName,
        conn: u64,
        subscriber: Subscriber,
    ) -> Result<(), BusError> {
        let (subscribers, mut state) = {
            let mut rooms = self.rooms();
            let watched = rooms
                .entry(room.clone())
                .or_insert_with(|| self.watch(room));
            watched.members.insert(conn);
            let handles = (watched.subscribers.clone(), watched.state.clone());
            metrics::gauge!(names::WATCHED_ROOMS).set(rooms.len() as f64);
            handles
        };
        let mut registration = Registration {
            hub: self,
            room,
            conn,
            done: false,
        };
        write(&subscribers).insert(conn, subscriber);
        let outcome = match state.wait_for(|s| !matches!(s, FeedState::Starting)).await {
            Ok(s) => match &*s {
                FeedState::Failed(err) => Err(err.clone()),
                _ => Ok(()),
            },
            Err(_) => Err(BusError::Unavailable("room feed stopped".into())),
        };
        registration.done = outcome.is_ok();
        outcome
    }

    /// Removes `conn` (a no-op if it is not subscribed); the last
    /// subscriber stops watching the room. The hub's lock is never held
    /// while waiting for the room's fan-out.
    pub fn unsubscribe(&self, room: &RoomName, conn: u64) {
        let subscribers = {
            let mut rooms = self.rooms();
            let Some(watched) = rooms.get_mut(room) else {
                return;
            };
            if !watched.members.remove(&conn) {
                return;
            }
            if watched.members.is_empty() {
                if let Some(watched) = rooms.remove(room) {
                    watched.task.abort();
                }
                metrics::gauge!(names::WATCHED_ROOMS).set(rooms.len() as f64);
                return;
            }
            watched.subscribers.clone()
        };
        write(&subscribers).remove(&conn);
    }

    /// Rooms watched right now (for tests and metrics).
    pub fn watched_rooms(&self) -> usize {
        self.rooms().len()
    }

    fn watch(&self, room: &RoomName) -> WatchedRoom {
        let subscribers: Subscribers = Arc::default();
        let (state_tx, state) = watch::channel(FeedState::Starting);
        let task = tokio::spawn(run_room(
            self.bus.clone(),
            room.clone(),
            subscribers.clone(),
            state_tx,
        ))
        .abort_handle();
        WatchedRoom {
            members: HashSet::new(),
            subscribers,
            state,
            task,
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let rooms = self.rooms.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (_, watched) in rooms.drain() {
            watched.task.abort();
        }
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// The one reader of a room's feed in this process.
async fn run_room(
    bus: Arc<dyn Bus>,
    room: RoomName,
    subscribers: Subscribers,
    state: watch::Sender<FeedState>,
) {
    let mut feed = match bus.feed(&room).await {
        Ok(feed) => feed,
        Err(err) => {
            state.send_replace(FeedState::Failed(err));
            return;
        }
    };
    // The head after the feed started: every subscriber's own head comes
    // later, so anything at or before it is covered by their resumes, and
    // a first live event that does not follow it reveals a gap.
    let head = match bus.resume(&room, None).await {
        Ok(resume) => resume.head,
        Err(err) => {
            state.send_replace(FeedState::Failed(err));
            return;
        }
    };
    state.send_replace(FeedState::Live);
    let mut room_feed = RoomFanOut {
        bus: bus.as_ref(),
        room: &room,
        subscribers: &subscribers,
        last: Some(head),
    };
    while let Some(item) = feed.next().await {
        let outcome = match item {
            FeedItem::Event(event, trace) => room_feed.on_event(event, &trace).await,
            FeedItem::Lagged => room_feed.repair().await,
        };
        if let Err(why) = outcome {
            tracing::warn!(%room, %why, "live feed cannot be repaired; subscribers must resume");
            // Continue from a fresh head, taken before the close so that
            // whoever subscribes after the close resumes from a later one.
            room_feed.last = bus.resume(&room, None).await.ok().map(|r| r.head);
            room_feed.close_all(CloseReason::FeedLost);
        }
    }
    tracing::warn!(%room, "live feed ended");
    state.send_replace(FeedState::Failed(BusError::Unavailable(
        "live feed of the room ended".into(),
    )));
    room_feed.close_all(CloseReason::FeedLost);
}

struct RoomFanOut<'a> {
    bus: &'a dyn Bus,
    room: &'a RoomName,
    subscribers: &'a Subscribers,
    /// Cursor of the last event handed to subscribers (at first, the head
    /// when the feed started); `None` only if that could not be read.
    last: Option<Cursor>,
}

impl RoomFanOut<'_> {
    async fn on_event(
        &mut self,
        event: Arc<SharedEvent>,
        trace: &TraceCarrier,
    ) -> Result<(), String> {
        if let Some(last) = &self.last
            && last.epoch() == event.event().cursor.epoch()
        {
            if event.offset() <= last.offset() {
                return Ok(()); // already delivered by a repair
            }
            if event.event().prev_offset > last.offset() {
                self.repair().await?;
                if self
                    .last
                    .as_ref()
                    .is_some_and(|l| event.offset() <= l.offset())
                {
                    return Ok(());
                }
            }
        }
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "deliver",
            room = %self.room,
            cursor = %event.event().cursor,
            subscribers = tracing::field::Empty,
        );
        switchboard_telemetry::set_remote_parent(&span, trace);
        let _entered = span.enter();
        let count = self.deliver(event);
        span.record("subscribers", count);
        Ok(())
    }

    /// Fetches what the feed skipped since the last delivered event.
    async fn repair(&mut self) -> Result<(), String> {
        let Some(last) = self.last.clone() else {
            // The head could not be read after an earlier failure: every
            // subscriber resumes on its own cursor instead.
            return Err("no known position to repair from".into());
        };
        metrics::counter!(names::GAP_REPAIRS).increment(1);
        let resume = self
            .resume_after(&last)
            .await
            .map_err(|err| err.to_string())?;
        if !resume.recovered {
            return Err(format!("history no longer holds events after {last}"));
        }
        for event in resume.events {
            if event.offset() > self.last.as_ref().map_or(0, Cursor::offset) {
                self.deliver(event);
            }
        }
        Ok(())
    }

    /// History after `last`, retried for a few seconds while the core is
    /// unreachable: after a NATS reconnect the core may come back a moment
    /// after this gateway, and closing every subscriber for that would
    /// turn a blip into a reconnect storm.
    async fn resume_after(&self, last: &Cursor) -> Result<switchboard_core::Resume, BusError> {
        let mut delay = REPAIR_FIRST_DELAY;
        let mut attempt = 0;
        loop {
            match self.bus.resume(self.room, Some(last)).await {
                Err(BusError::Unavailable(why)) if attempt < REPAIR_RETRIES => {
                    tracing::debug!(room = %self.room, %why, ?delay, "repair waits for the core");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Pushes the event to every subscriber; returns how many got it.
    fn deliver(&mut self, event: Arc<SharedEvent>) -> usize {
        self.last = Some(event.event().cursor.clone());
        let subscribers = read(self.subscribers);
        for subscriber in subscribers.values() {
            if subscriber.control.is_closed() {
                continue;
            }
            if let Err(TrySendError::Full) = subscriber.tx.try_send(Outbound::Event(event.clone()))
            {
                metrics::counter!(names::SLOW_CONSUMER_DROPS).increment(1);
                subscriber.control.close(CloseReason::SlowConsumer);
            }
        }
        subscribers.len()
    }

    fn close_all(&self, reason: CloseReason) {
        for subscriber in read(self.subscribers).values() {
            subscriber.control.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::MemoryBus;
    use switchboard_core::CoreConfig;

    fn subscriber() -> Subscriber {
        Subscriber {
            tx: crate::queue::channel(8).0,
            control: ConnControl::new(),
        }
    }

    /// Leaving a room whose fan-out is busy used to wait for it while
    /// holding the hub's lock, stalling every other room's joins and leaves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaving_a_busy_room_does_not_hold_the_hub() {
        let hub = Arc::new(Hub::new(MemoryBus::new(CoreConfig::default())));
        let busy = RoomName::parse("busy").expect("room");
        for conn in [1, 2] {
            hub.subscribe(&busy, conn, subscriber())
                .await
                .expect("subscribed");
        }
        let fan_out = hub.rooms().get(&busy).expect("watched").subscribers.clone();
        let delivering = read(&fan_out);
        let (left_tx, left_rx) = std::sync::mpsc::channel();
        {
            let (hub, busy) = (hub.clone(), busy.clone());
            std::thread::spawn(move || {
                hub.unsubscribe(&busy, 1);
                let _ = left_tx.send(());
            });
        }
        // Give the leaver time to reach the room's lock; if it held the
        // hub's lock meanwhile, the calls below could not finish.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let watched = hub.watched_rooms();
                let _ = done_tx.send(watched);
            });
        }
        let watched = done_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the hub answers while a room is busy");
        assert_eq!(watched, 1);
        drop(delivering);
        left_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the leave completes once the fan-out is done");
        assert!(!read(&fan_out).contains_key(&1));
    }
}
