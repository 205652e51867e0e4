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
    feed: broadcast::Sender<Arc<SharedEvent>>,
}

pub(crate) enum Slice {
    /// The events asked for (possibly none).
    Events(Vec<Arc<SharedEvent>>),
    /// The cursor cannot be served: other epoch, ahead of the head, or
    /// older than what retention kept.
    Unrecoverable,
}

impl RoomState {
    pub(crate) fn new(name: RoomName, epoch: Epoch, config: &CoreConfig) -> Self {
        let (feed, _) = broadcast::channel(config.feed_capacity.max(1));
        Self {
            name,
            epoch,
            head: 0,
            log: VecDeque::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            presence: Presence::default(),
            feed,
        }
    }

    pub(crate) fn head(&self) -> Cursor {
        Cursor::new(self.epoch.clone(), self.head)
    }

    pub(crate) fn subscribe(&self) -> RoomFeed {
        self.feed.subscribe()
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
        });
        self.trim(config, now);
        // No receivers is fine: nobody is listening to this room right now.
        let _ = self.feed.send(event.clone());
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

    fn trim(&mut self, config: &CoreConfig, now: Instant) {
        while self.log.len() > config.retention_count {
            self.log.pop_front();
        }
        while let Some(oldest) = self.log.front() {
            if now.duration_since(oldest.stored_at) <= config.retention_age {
                break;
            }
            self.log.pop_front();
        }
        self.expire_dedup(config, now);
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

    /// A room can be forgotten once nothing refers to it any more; its next
    /// incarnation gets a new epoch so old cursors say `recovered: false`.
    pub(crate) fn is_idle(&mut self, config: &CoreConfig, now: Instant) -> bool {
        self.trim(config, now);
        self.log.is_empty()
            && self.dedup.is_empty()
            && self.presence.is_empty()
            && self.feed.receiver_count() == 0
    }
}
