use crate::room::{RoomState, Slice};
use crate::{
    CoreConfig, CoreError, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, MAX_PUBLISH_ID_LEN, RoomFeed,
};
use rand::Rng;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
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
pub struct Core {
    config: CoreConfig,
    shards: Vec<Shard>,
    hasher: RandomState,
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    pub fn publish(&self, req: PublishRequest) -> Result<PublishOutcome, CoreError> {
        validate_text(&req.text, self.config.max_text_bytes)?;
        if let Some(id) = &req.id {
            validate_publish_id(id)?;
        }
        validate_user(&req.user)?;
        let room = self.room(&req.room);
        let mut room = lock(&room);
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
    }

    /// Starts a subscription: the live feed is taken under the same lock as
    /// the missed events, so nothing falls between replay and live.
    pub fn subscribe(&self, room: &RoomName, since: Option<&Cursor>) -> (Resume, RoomFeed) {
        let state = self.room(room);
        let mut state = lock(&state);
        let feed = state.subscribe();
        let head = state.head();
        let resume = match since {
            None => Resume {
                events: Vec::new(),
                head,
                recovered: true,
            },
            Some(since) => match state.since(since, &self.config, Instant::now()) {
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
        };
        (resume, feed)
    }

    /// Events after `since` without subscribing; used to repair gaps.
    pub fn resume(&self, room: &RoomName, since: Option<&Cursor>) -> Resume {
        self.subscribe(room, since).0
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
        let mut state = lock(&state);
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
    }

    /// Registers connection `conn` of `user` in the room; the user's first
    /// connection stores a join event.
    pub fn join(&self, room: &RoomName, user: &str, conn: &str) -> Option<Arc<SharedEvent>> {
        let state = self.room(room);
        let mut state = lock(&state);
        state.presence.add(user, conn).then(|| {
            state.append(
                user.to_owned(),
                EventKind::Join,
                &self.config,
                Instant::now(),
                unix_ms(),
            )
        })
    }

    /// The user's last connection leaving stores a leave event.
    pub fn leave(&self, room: &RoomName, user: &str, conn: &str) -> Option<Arc<SharedEvent>> {
        let state = self.existing_room(room)?;
        let mut state = lock(&state);
        state.presence.remove(user, conn).then(|| {
            state.append(
                user.to_owned(),
                EventKind::Leave,
                &self.config,
                Instant::now(),
                unix_ms(),
            )
        })
    }

    pub fn presence(&self, room: &RoomName) -> Vec<String> {
        self.existing_room(room)
            .map(|state| lock(&state).presence.users())
            .unwrap_or_default()
    }

    /// Forgets rooms nothing refers to any more, so memory follows the
    /// active rooms rather than every room ever named. Returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut rooms = lock(shard);
            rooms.retain(|_, state| {
                let idle = lock(state).is_idle(&self.config, now);
                removed += usize::from(idle);
                !idle
            });
        }
        removed
    }

    fn shard(&self, room: &RoomName) -> &Shard {
        let index = self.hasher.hash_one(room) as usize % SHARDS;
        &self.shards[index]
    }

    fn room(&self, room: &RoomName) -> Arc<Mutex<RoomState>> {
        let mut rooms = lock(self.shard(room));
        rooms
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(RoomState::new(
                    room.clone(),
                    new_epoch(),
                    &self.config,
                )))
            })
            .clone()
    }

    fn existing_room(&self, room: &RoomName) -> Option<Arc<Mutex<RoomState>>> {
        lock(self.shard(room)).get(room).cloned()
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
