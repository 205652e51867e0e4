use crate::CoreConfig;
use crate::presence::Presence;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use switchboard_protocol::{Cursor, Epoch, Event, EventKind, RoomName, SharedEvent};
use tokio::sync::broadcast;

/// Live events of one room in append order. A receiver that falls behind
/// by more than the channel capacity gets `RecvError::Lagged` and must
/// repair the gap from history.
pub type RoomFeed = broadcast::Receiver<Arc<SharedEvent>>;

struct Stored {
    event: Arc<SharedEvent>,
    stored_at: Instant,
    /// What this event is charged against the memory bound.
    cost: usize,
}

/// Estimated bytes of a room that holds nothing: its map entry, lock,
/// name and epoch. Charged so that a flood of empty rooms is bounded too.
pub(crate) const ROOM_BASE_COST: usize = 320;

/// Estimated bytes of a stored event: the event itself plus the three
/// encodings (JSON frame, SSE frame, protobuf) it caches once delivered.
fn event_cost(user: &str, kind: &EventKind) -> usize {
    let text = match kind {
        EventKind::Message { text, id } => text.len() + id.as_ref().map_or(0, String::len),
        EventKind::Join | EventKind::Leave => 0,
    };
    256 + 4 * (user.len() + text)
}

/// One room: its log, de-duplication window, presence and live feed.
///
/// Everything is mutated under one per-room lock so that the offset order,
/// the dedup decision and the broadcast order can never disagree.
pub(crate) struct RoomState {
    name: RoomName,
    epoch: Epoch,
    head: u64,
    log: VecDeque<Stored>,
    dedup: HashMap<String, (Cursor, Instant)>,
    dedup_order: VecDeque<(Instant, String)>,
    pub(crate) presence: Presence,
    /// The live feed exists only while someone listens: a broadcast
    /// channel preallocates its whole capacity, so an unlistened room
    /// must not carry one.
    feed: Option<broadcast::Sender<Arc<SharedEvent>>>,
    /// Stored message events (join/leave excluded): a room holding only
    /// presence events holds nothing worth keeping once nobody is in it.
    messages: usize,
    /// Bytes charged against the memory bound (see [`ROOM_BASE_COST`]).
    cost: usize,
    /// Last publish, subscribe or join: eviction takes the oldest first.
    pub(crate) last_active: Instant,
}

pub(crate) enum Slice {
    /// The events asked for (possibly none).
    Events(Vec<Arc<SharedEvent>>),
    /// The cursor cannot be served: other epoch, ahead of the head, or
    /// older than what retention kept.
    Unrecoverable,
}

impl RoomState {
    pub(crate) fn new(name: RoomName, epoch: Epoch, now: Instant) -> Self {
        let cost = ROOM_BASE_COST + name.as_str().len();
        Self {
            name,
            epoch,
            head: 0,
            log: VecDeque::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            presence: Presence::default(),
            feed: None,
            messages: 0,
            cost,
            last_active: now,
        }
    }

    /// Bytes this room is charged against the memory bound.
    pub(crate) fn cost(&self) -> usize {
        self.cost
    }

    pub(crate) fn head(&self) -> Cursor {
        Cursor::new(self.epoch.clone(), self.head)
    }

    pub(crate) fn subscribe(&mut self, config: &CoreConfig, now: Instant) -> RoomFeed {
        self.last_active = now;
        self.feed
            .get_or_insert_with(|| broadcast::channel(config.feed_capacity.max(1)).0)
            .subscribe()
    }

    /// Live feed readers right now.
    pub(crate) fn listeners(&self) -> usize {
        self.feed
            .as_ref()
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Drops the live feed once its last reader is gone, freeing its
    /// preallocated capacity.
    pub(crate) fn release_feed(&mut self) {
        if self.listeners() == 0 {
            self.feed = None;
        }
    }

    pub(crate) fn dedup_hit(
        &mut self,
        id: &str,
        config: &CoreConfig,
        now: Instant,
    ) -> Option<Cursor> {
        self.expire_dedup(config, now);
        self.dedup.get(id).map(|(cursor, _)| cursor.clone())
    }

    /// Appends, remembers the id, trims retention and broadcasts, all under
    /// the caller's lock.
    pub(crate) fn append(
        &mut self,
        user: String,
        kind: EventKind,
        config: &CoreConfig,
        now: Instant,
        ts_unix_ms: i64,
    ) -> Arc<SharedEvent> {
        let prev_offset = self.head;
        self.head += 1;
        let cursor = Cursor::new(self.epoch.clone(), self.head);
        if let EventKind::Message { id: Some(id), .. } = &kind {
            self.dedup.insert(id.clone(), (cursor.clone(), now));
            self.dedup_order.push_back((now, id.clone()));
        }
        if matches!(kind, EventKind::Message { .. }) {
            self.messages += 1;
            self.last_active = now;
        }
        let cost = event_cost(&user, &kind);
        self.cost += cost;
        let event = SharedEvent::new(Event {
            room: self.name.clone(),
            cursor,
            prev_offset,
            user,
            kind,
            ts_unix_ms,
        });
        self.log.push_back(Stored {
            event: event.clone(),
            stored_at: now,
            cost,
        });
        self.trim(config, now);
        if let Some(feed) = &self.feed {
            // No receivers is fine: the last one may have just left.
            let _ = feed.send(event.clone());
        }
        event
    }

    /// Events after `since` (exclusive), or why they cannot be given.
    pub(crate) fn since(&mut self, since: &Cursor, config: &CoreConfig, now: Instant) -> Slice {
        self.trim(config, now);
        if since.epoch() != &self.epoch || since.offset() > self.head {
            return Slice::Unrecoverable;
        }
        let oldest_kept = self.log.front().map_or(self.head + 1, |s| s.event.offset());
        if since.offset() + 1 < oldest_kept {
            return Slice::Unrecoverable;
        }
        Slice::Events(
            self.log
                .iter()
                .filter(|s| s.event.offset() > since.offset())
                .map(|s| s.event.clone())
                .collect(),
        )
    }

    /// Up to `limit` events in `(after, before)`: the oldest ones when
    /// `after` is given, otherwise the newest ones.
    pub(crate) fn range(
        &mut self,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
        config: &CoreConfig,
        now: Instant,
    ) -> Vec<Arc<SharedEvent>> {
        self.trim(config, now);
        let in_range = |s: &&Stored| {
            let o = s.event.offset();
            after.is_none_or(|a| o > a) && before.is_none_or(|b| o < b)
        };
        if after.is_some() {
            self.log
                .iter()
                .filter(in_range)
                .take(limit)
                .map(|s| s.event.clone())
                .collect()
        } else {
            let mut newest: Vec<_> = self
                .log
                .iter()
                .rev()
                .filter(in_range)
                .take(limit)
                .map(|s| s.event.clone())
                .collect();
            newest.reverse();
            newest
        }
    }

    pub(crate) fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    pub(crate) fn trim(&mut self, config: &CoreConfig, now: Instant) {
        while self.log.len() > config.retention_count {
            self.drop_oldest();
        }
        while let Some(oldest) = self.log.front() {
            if now.duration_since(oldest.stored_at) <= config.retention_age {
                break;
            }
            self.drop_oldest();
        }
        self.expire_dedup(config, now);
    }

    fn drop_oldest(&mut self) {
        if let Some(oldest) = self.log.pop_front() {
            self.cost -= oldest.cost;
            if matches!(oldest.event.event().kind, EventKind::Message { .. }) {
                self.messages -= 1;
            }
        }
    }

    fn expire_dedup(&mut self, config: &CoreConfig, now: Instant) {
        // Each id is inserted once (a duplicate never re-inserts), so the
        // queue and the map hold the same ids in insertion order.
        while let Some((at, _)) = self.dedup_order.front() {
            if now.duration_since(*at) <= config.dedup_window {
                break;
            }
            if let Some((_, id)) = self.dedup_order.pop_front() {
                self.dedup.remove(&id);
            }
        }
    }

    /// Nobody listens and nobody is present: the room may be evicted
    /// under memory pressure, losing its history.
    pub(crate) fn is_unattended(&self) -> bool {
        self.listeners() == 0 && self.presence.is_empty()
    }

    /// A room can be forgotten once it is unattended and holds no message
    /// (join/leave events alone do not pin it); its next incarnation gets a
    /// new epoch so old cursors say `recovered: false`.
    pub(crate) fn is_idle(&mut self, config: &CoreConfig, now: Instant) -> bool {
        self.trim(config, now);
        self.messages == 0 && self.dedup.is_empty() && self.is_unattended()
    }
}
