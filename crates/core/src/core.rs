use crate::room::{RoomState, Slice};
use crate::{
    CoreConfig, CoreError, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, MAX_PUBLISH_ID_LEN, RoomFeed,
};
use rand::Rng;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use switchboard_protocol::{Cursor, Epoch, EventKind, ProtocolError, RoomName, SharedEvent};

const SHARDS: usize = 32;

type Shard = Mutex<HashMap<RoomName, Arc<Mutex<RoomState>>>>;

/// A publish as the core receives it, after the gateway authenticated the
/// user and rate-limited the connection.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub room: RoomName,
    pub user: String,
    pub text: String,
    pub id: Option<String>,
}

/// The answer to a publish: where it was stored, and whether it had been
/// stored before (same id within the dedup window).
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    pub cursor: Cursor,
    pub duplicate: bool,
    /// The stored event; `None` for a duplicate.
    pub event: Option<Arc<SharedEvent>>,
}

/// What a subscriber needs to start: the events it missed, and the head at
/// that moment (the position just before the first live event).
#[derive(Debug, Clone)]
pub struct Resume {
    pub events: Vec<Arc<SharedEvent>>,
    pub head: Cursor,
    pub recovered: bool,
}

/// A history page request; cursors must belong to the room's epoch.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub after: Option<Cursor>,
    pub before: Option<Cursor>,
    pub limit: Option<usize>,
}

/// The in-memory authority over every room.
///
/// Memory is bounded twice: at most `max_rooms` rooms (enforced per shard,
/// each holding `max_rooms / SHARDS`) and at most `max_bytes` of estimated
/// room and event cost. At either bound the oldest unattended rooms (no
/// listener, nobody present) are evicted first, history and all; only
/// when nothing can be evicted is a new room or publish refused with
/// `unavailable`. Rooms that hold no message and are unattended are
/// forgotten as soon as their last listener or member leaves.
pub struct Core {
    config: CoreConfig,
    shards: Vec<Shard>,
    hasher: RandomState,
    /// Rooms held, over every shard.
    rooms: AtomicUsize,
    /// Estimated bytes held, over every room.
    bytes: AtomicUsize,
    /// When a byte eviction last found nothing to evict (ms since
    /// `started`): refusals in the next second skip the full scan.
    nothing_to_evict_at: AtomicU64,
    started: Instant,
}

/// How long a failed byte eviction is trusted before scanning again.
const EVICTION_BACKOFF_MS: u64 = 1000;

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            rooms: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            nothing_to_evict_at: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Rooms held right now.
    pub fn room_count(&self) -> usize {
        self.rooms.load(Ordering::Relaxed)
    }

    /// Estimated bytes held right now (rooms and stored events).
    pub fn stored_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn publish(&self, req: PublishRequest) -> Result<PublishOutcome, CoreError> {
        validate_text(&req.text, self.config.max_text_bytes)?;
        if let Some(id) = &req.id {
            validate_publish_id(id)?;
        }
        validate_user(&req.user)?;
        self.ensure_bytes()?;
        let room = self.room(&req.room)?;
        self.with_room(&room, |room| {
            let now = Instant::now();
            if let Some(id) = &req.id
                && let Some(cursor) = room.dedup_hit(id, &self.config, now)
            {
                return Ok(PublishOutcome {
                    cursor,
                    duplicate: true,
                    event: None,
                });
            }
            let event = room.append(
                req.user,
                EventKind::Message {
                    id: req.id,
                    text: req.text,
                },
                &self.config,
                now,
                unix_ms(),
            );
            Ok(PublishOutcome {
                cursor: event.event().cursor.clone(),
                duplicate: false,
                event: Some(event),
            })
        })
    }

    /// Starts a subscription: the live feed is taken under the same lock as
    /// the missed events, so nothing falls between replay and live.
    pub fn subscribe(
        &self,
        room: &RoomName,
        since: Option<&Cursor>,
    ) -> Result<(Resume, RoomFeed), CoreError> {
        let state = self.room(room)?;
        Ok(self.with_room(&state, |state| {
            let now = Instant::now();
            let feed = state.subscribe(&self.config, now);
            (resume_of(state, since, &self.config, now), feed)
        }))
    }

    /// Events after `since` without subscribing; used to repair gaps.
    pub fn resume(&self, room: &RoomName, since: Option<&Cursor>) -> Result<Resume, CoreError> {
        let state = self.room(room)?;
        Ok(self.with_room(&state, |state| {
            resume_of(state, since, &self.config, Instant::now())
        }))
    }

    pub fn history(
        &self,
        room: &RoomName,
        query: &HistoryQuery,
    ) -> Result<Vec<Arc<SharedEvent>>, CoreError> {
        let limit = query
            .limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .clamp(1, MAX_HISTORY_LIMIT);
        let Some(state) = self.existing_room(room) else {
            return Ok(Vec::new());
        };
        self.with_room(&state, |state| {
            let offset_in_epoch = |cursor: &Option<Cursor>| -> Result<Option<u64>, CoreError> {
                match cursor {
                    None => Ok(None),
                    Some(c) if c.epoch() == state.epoch() => Ok(Some(c.offset())),
                    Some(c) => Err(ProtocolError::BadCursor(format!(
                        "{c} belongs to another epoch of room {room}; the log was recreated"
                    ))
                    .into()),
                }
            };
            let after = offset_in_epoch(&query.after)?;
            let before = offset_in_epoch(&query.before)?;
            Ok(state.range(after, before, limit, &self.config, Instant::now()))
        })
    }

    /// Registers connection `conn` of `user` in the room; the user's first
    /// connection stores a join event.
    pub fn join(
        &self,
        room: &RoomName,
        user: &str,
        conn: &str,
    ) -> Result<Option<Arc<SharedEvent>>, CoreError> {
        self.ensure_bytes()?;
        let state = self.room(room)?;
        Ok(self.with_room(&state, |state| {
            let now = Instant::now();
            state.last_active = now;
            state.presence.add(user, conn).then(|| {
                state.append(
                    user.to_owned(),
                    EventKind::Join,
                    &self.config,
                    now,
                    unix_ms(),
                )
            })
        }))
    }

    /// The user's last connection leaving stores a leave event.
    pub fn leave(&self, room: &RoomName, user: &str, conn: &str) -> Option<Arc<SharedEvent>> {
        let state = self.existing_room(room)?;
        let left = self.with_room(&state, |state| {
            state.presence.remove(user, conn).then(|| {
                state.append(
                    user.to_owned(),
                    EventKind::Leave,
                    &self.config,
                    Instant::now(),
                    unix_ms(),
                )
            })
        });
        drop(state);
        self.forget_if_idle(room);
        left
    }

    pub fn presence(&self, room: &RoomName) -> Vec<String> {
        self.existing_room(room)
            .map(|state| lock(&state).presence.users())
            .unwrap_or_default()
    }

    /// A live feed reader of the room went away: drops the room's feed if
    /// it was the last one, and forgets the room if nothing else holds it.
    pub fn release(&self, room: &RoomName) {
        self.forget_if_idle(room);
    }

    /// Forgets idle rooms of every shard. Returns how many.
    pub fn sweep(&self) -> usize {
        (0..SHARDS).map(|shard| self.sweep_shard(shard)).sum()
    }

    /// Number of shards, for callers that sweep one at a time.
    pub fn shard_count(&self) -> usize {
        SHARDS
    }

    /// Forgets the idle rooms of one shard (one shard lock held, briefly),
    /// so memory follows the active rooms rather than every room ever
    /// named. Returns how many.
    pub fn sweep_shard(&self, shard: usize) -> usize {
        let Some(shard) = self.shards.get(shard) else {
            return 0;
        };
        let now = Instant::now();
        let mut rooms = lock(shard);
        let before = rooms.len();
        let mut freed = 0;
        rooms.retain(|_, state| {
            // Only the map holds it: nobody is about to use it, and nobody
            // can look it up while we hold the shard lock.
            if Arc::strong_count(state) > 1 {
                return true;
            }
            let mut state = lock(state);
            let cost = state.cost();
            state.trim(&self.config, now);
            state.release_feed();
            let idle = state.is_idle(&self.config, now);
            freed += if idle { cost } else { cost - state.cost() };
            !idle
        });
        let removed = before - rooms.len();
        drop(rooms);
        self.rooms.fetch_sub(removed, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        removed
    }

    fn shard_index(&self, room: &RoomName) -> usize {
        self.hasher.hash_one(room) as usize % SHARDS
    }

    fn shard_capacity(&self) -> usize {
        self.config.max_rooms.div_ceil(SHARDS).max(1)
    }

    /// The room, created if needed. A full shard first evicts its oldest
    /// unattended rooms; with none to evict the room is refused.
    fn room(&self, room: &RoomName) -> Result<Arc<Mutex<RoomState>>, CoreError> {
        let mut rooms = lock(&self.shards[self.shard_index(room)]);
        if let Some(state) = rooms.get(room) {
            return Ok(state.clone());
        }
        let capacity = self.shard_capacity();
        if rooms.len() >= capacity {
            let keep = capacity - (capacity / 8).max(1);
            self.evict_from(&mut rooms, |rooms, _| rooms.len() <= keep);
            if rooms.len() >= capacity {
                return Err(CoreError::Full(format!(
                    "room limit reached ({} rooms, all in use); retry later",
                    self.config.max_rooms
                )));
            }
        }
        let state = RoomState::new(room.clone(), new_epoch(), Instant::now());
        self.rooms.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(state.cost(), Ordering::Relaxed);
        let state = Arc::new(Mutex::new(state));
        rooms.insert(room.clone(), state.clone());
        Ok(state)
    }

    fn existing_room(&self, room: &RoomName) -> Option<Arc<Mutex<RoomState>>> {
        lock(&self.shards[self.shard_index(room)])
            .get(room)
            .cloned()
    }

    /// Runs `f` under the room's lock and keeps the byte total in step
    /// with what `f` stored or trimmed.
    fn with_room<R>(&self, state: &Mutex<RoomState>, f: impl FnOnce(&mut RoomState) -> R) -> R {
        let mut state = lock(state);
        let before = state.cost();
        let out = f(&mut state);
        let after = state.cost();
        drop(state);
        if after >= before {
            self.bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
        out
    }

    fn forget_if_idle(&self, room: &RoomName) {
        let mut rooms = lock(&self.shards[self.shard_index(room)]);
        let Some(state) = rooms.get(room) else {
            return;
        };
        if Arc::strong_count(state) > 1 {
            return; // in use: whoever holds it decides later
        }
        let (idle, cost) = {
            let mut state = lock(state);
            state.release_feed();
            (state.is_idle(&self.config, Instant::now()), state.cost())
        };
        if idle {
            rooms.remove(room);
            drop(rooms);
            self.rooms.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(cost, Ordering::Relaxed);
        }
    }

    /// Below the byte bound, or made so by evicting the oldest unattended
    /// rooms shard by shard; `Full` when nothing can be evicted.
    fn ensure_bytes(&self) -> Result<(), CoreError> {
        let max = self.config.max_bytes;
        if self.stored_bytes() <= max {
            return Ok(());
        }
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let failed_at = self.nothing_to_evict_at.load(Ordering::Relaxed);
        if failed_at != u64::MAX && now_ms.saturating_sub(failed_at) < EVICTION_BACKOFF_MS {
            return Err(self.full_of_bytes());
        }
        let target = max - max / 10;
        for shard in &self.shards {
            let mut rooms = lock(shard);
            self.evict_from(&mut rooms, |_, core| core.stored_bytes() <= target);
            drop(rooms);
            if self.stored_bytes() <= target {
                break;
            }
        }
        if self.stored_bytes() <= max {
            self.nothing_to_evict_at.store(u64::MAX, Ordering::Relaxed);
            Ok(())
        } else {
            self.nothing_to_evict_at.store(now_ms, Ordering::Relaxed);
            Err(self.full_of_bytes())
        }
    }

    fn full_of_bytes(&self) -> CoreError {
        CoreError::Full(format!(
            "memory limit reached ({} bytes held by rooms in use); retry later",
            self.config.max_bytes
        ))
    }

    /// Evicts unattended rooms of one shard, oldest activity first, until
    /// `enough` holds. Busy rooms (locked or referenced) are skipped, never
    /// waited for.
    fn evict_from(
        &self,
        rooms: &mut HashMap<RoomName, Arc<Mutex<RoomState>>>,
        enough: impl Fn(&HashMap<RoomName, Arc<Mutex<RoomState>>>, &Core) -> bool,
    ) {
        if enough(rooms, self) {
            return;
        }
        let mut candidates: Vec<(Instant, RoomName)> = rooms
            .iter()
            .filter(|(_, state)| Arc::strong_count(state) == 1)
            .filter_map(|(name, state)| {
                let state = state.try_lock().ok()?;
                state
                    .is_unattended()
                    .then(|| (state.last_active, name.clone()))
            })
            .collect();
        candidates.sort_unstable_by_key(|(at, _)| *at);
        let mut evicted = 0;
        for (_, name) in candidates {
            if enough(rooms, self) {
                break;
            }
            if let Some(state) = rooms.remove(&name) {
                let cost = lock(&state).cost();
                self.rooms.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(cost, Ordering::Relaxed);
                evicted += 1;
            }
        }
        if evicted > 0 {
            tracing::debug!(evicted, "evicted unattended rooms at the memory bound");
            metrics::counter!(switchboard_telemetry::names::ROOMS_EVICTED).increment(evicted);
        }
    }
}

fn resume_of(
    state: &mut RoomState,
    since: Option<&Cursor>,
    config: &CoreConfig,
    now: Instant,
) -> Resume {
    let head = state.head();
    match since {
        None => Resume {
            events: Vec::new(),
            head,
            recovered: true,
        },
        Some(since) => match state.since(since, config, now) {
            Slice::Events(events) => Resume {
                events,
                head,
                recovered: true,
            },
            Slice::Unrecoverable => Resume {
                events: Vec::new(),
                head,
                recovered: false,
            },
        },
    }
}

/// No code path panics while holding these locks; if one ever did, the
/// state is still consistent enough to serve (appends are single steps).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fresh, practically unique epoch: 12 base-36 characters.
fn new_epoch() -> Epoch {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let epoch: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    Epoch::parse(&epoch).unwrap_or_else(|_| unreachable!("alphabet is alphanumeric"))
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn validate_text(text: &str, max: usize) -> Result<(), CoreError> {
    if text.len() > max {
        return Err(CoreError::TextTooLarge {
            len: text.len(),
            max,
        });
    }
    if text.is_empty() {
        return Err(CoreError::BadInput("text must not be empty".into()));
    }
    Ok(())
}

pub fn validate_publish_id(id: &str) -> Result<(), CoreError> {
    if id.is_empty() || id.len() > MAX_PUBLISH_ID_LEN || id.chars().any(char::is_control) {
        return Err(CoreError::BadInput(format!(
            "publish id must be 1-{MAX_PUBLISH_ID_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

pub fn validate_user(user: &str) -> Result<(), CoreError> {
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return Err(CoreError::BadInput(
            "user name must be 1-128 bytes without control characters".into(),
        ));
    }
    Ok(())
}
