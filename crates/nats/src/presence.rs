//! Presence in a JetStream KV bucket: one key per room member,
//! `<room>.<hex(user)>`, holding that user's connections in the room with
//! the time a gateway last vouched for each.
//!
//! Why per member: a join, leave or refresh reads and writes one small
//! value whose size depends on the user's own connections only, never on
//! how many others are in the room (one key per room made filling a room
//! quadratic and hit NATS's 1 MB payload limit at ~10–20k members).
//!
//! Changes are compare-and-set on the member key's revision, so concurrent
//! core replicas agree on a user's first connection in and last one out,
//! and each transition yields exactly one join or leave event. A
//! connection not refreshed within the TTL (its gateway crashed) is pruned
//! by whichever core next touches that member, or by the periodic sweep.
//!
//! Listing a room reads only that room's keys (a consumer filtered on
//! `<room>.*`, last value per key), so its cost follows the room's size.

use crate::read_consumer;
use crate::{NatsConfig, NatsError, StorageKind};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::StorageType;
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_bus::BusError;
use switchboard_protocol::RoomName;
use tokio::sync::oneshot;

/// The value of a member key.
///
/// `gone` remembers connections that left explicitly (for one TTL), so a
/// gateway refresh that was snapshotted before the leave but arrives
/// after it cannot bring the connection back; only an explicit join does.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Member {
    /// Connection → last refresh (Unix ms). Non-empty: the user is present.
    #[serde(default)]
    pub(crate) conns: BTreeMap<String, i64>,
    /// Connection → when it left (Unix ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) gone: BTreeMap<String, i64>,
}

impl Member {
    /// An explicit join: present now, whatever happened before.
    pub(crate) fn join(&mut self, conn: &str, now: i64) {
        self.gone.remove(conn);
        self.conns.insert(conn.to_owned(), now);
    }

    /// An explicit leave: absent, and not revived by a late refresh.
    pub(crate) fn leave(&mut self, conn: &str, now: i64) {
        self.conns.remove(conn);
        self.gone.insert(conn.to_owned(), now);
    }

    /// A gateway still holds the connection: refreshed, or added if the
    /// core missed its join; ignored if it left meanwhile.
    pub(crate) fn refresh(&mut self, conn: &str, now: i64) {
        if !self.gone.contains_key(conn) {
            self.conns.insert(conn.to_owned(), now);
        }
    }
}

/// Compare-and-set attempts before a presence change gives up. Only the
/// same user's connections contend on a key, so conflicts are rare.
const CAS_ATTEMPTS: usize = 16;
/// Entries fetched per round trip when a room or the bucket is listed.
const SCAN_BATCH: usize = 1_000;

pub(crate) struct PresenceStore {
    kv: kv::Store,
    /// Members with a write in flight from this core, and the changes
    /// queued behind it (see [`PresenceStore::change`]).
    writing: std::sync::Mutex<HashMap<String, Queued>>,
    ttl: Duration,
    /// Bound of a presence query's listing: it must answer within the
    /// gateway's request timeout.
    query_limit: Duration,
    /// Bound of a sweep's scan of the whole bucket: the sweep period is
    /// TTL/3, and sweeps never overlap, so a long scan only delays the next.
    sweep_limit: Duration,
}

/// How one update changed a user's presence in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// First connection in.
    Joined,
    /// Last connection out (left, or pruned as stale).
    Left,
}

/// One connection's change to its member entry, as gateways send them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnChange {
    Join(String),
    Leave(String),
    Refresh(String),
}

impl ConnChange {
    fn apply(&self, member: &mut Member, now: i64) {
        match self {
            Self::Join(conn) => member.join(conn, now),
            Self::Leave(conn) => member.leave(conn, now),
            Self::Refresh(conn) => member.refresh(conn, now),
        }
    }
}

type Outcome = Result<Option<Transition>, BusError>;

/// Changes that arrived for a member while a write of it was in flight,
/// and their callers.
#[derive(Default)]
struct Queued {
    changes: Vec<ConnChange>,
    waiters: Vec<oneshot::Sender<Turn>>,
}

/// What a queued caller is told.
enum Turn {
    /// Its change was written (or not) by another caller's write.
    Done(Outcome),
    /// It writes next, for itself and for `others`.
    Lead {
        changes: Vec<ConnChange>,
        others: Vec<oneshot::Sender<Turn>>,
    },
}

/// The member key this core is writing; dropped before its write ended
/// (the caller went away), it frees the key, and the queued callers are
/// told `unavailable` (their gateways' refreshes repair it).
struct Writing<'a> {
    writing: &'a std::sync::Mutex<HashMap<String, Queued>>,
    key: &'a str,
    done: bool,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.writing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(self.key);
        }
    }
}

/// What a key of the bucket is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Key {
    /// `<room>.<hex(user)>`.
    Member(RoomName, String),
    /// `<room>`: the per-room value of earlier versions, to be migrated.
    Legacy(RoomName),
    /// Anything else (not written by Switchboard): left alone.
    Foreign,
}

/// A member whose connections the sweep found stale.
pub(crate) struct Stale {
    pub(crate) room: RoomName,
    pub(crate) user: String,
}

/// The users of a migrated old per-room key.
#[derive(Default)]
pub(crate) struct Legacy {
    /// Still refreshed recently: become members without a new join event
    /// (the old layout announced them).
    pub(crate) fresh: Vec<(String, BTreeMap<String, i64>)>,
    /// Their gateway stopped refreshing them: they leave now.
    pub(crate) stale: Vec<String>,
}

/// What one scan of the whole bucket found for the sweep.
#[derive(Default)]
pub(crate) struct SweepScan {
    pub(crate) stale: Vec<Stale>,
    pub(crate) legacy: Vec<RoomName>,
    pub(crate) keys: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn unavailable(err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("presence store: {err}"))
}

/// Lower-case hex of the user's bytes: KV keys allow only
/// `[-/_=.a-zA-Z0-9]`, user names are arbitrary text, and hex contains no
/// `.` so a user can never look like a deeper key.
pub(crate) fn encode_user(user: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(user.len() * 2);
    for byte in user.bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

pub(crate) fn decode_user(hex: &str) -> Option<String> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

pub(crate) fn member_key(room: &RoomName, user: &str) -> String {
    format!("{room}.{}", encode_user(user))
}

pub(crate) fn parse_key(key: &str) -> Key {
    match key.split_once('.') {
        Some((room, user)) => match (RoomName::parse(room), decode_user(user)) {
            (Ok(room), Some(user)) => Key::Member(room, user),
            _ => Key::Foreign,
        },
        None => match RoomName::parse(key) {
            Ok(room) => Key::Legacy(room),
            Err(_) => Key::Foreign,
        },
    }
}

/// The header async-nats writes on deletes and purges (not exported).
const KV_OPERATION: &str = "KV-Operation";

/// A value, not a delete/purge tombstone or an expiry marker.
fn is_put(headers: Option<&async_nats::HeaderMap>) -> bool {
    let Some(headers) = headers else { return true };
    headers
        .get(KV_OPERATION)
        .is_none_or(|op| op.as_str() == "PUT")
        && headers
            .get(async_nats::header::NATS_MARKER_REASON)
            .is_none()
}

fn decode_member(value: &[u8]) -> Member {
    // A value we cannot read vouches for nobody; the next write replaces it.
    serde_json::from_slice(value).unwrap_or_default()
}

impl PresenceStore {
    pub(crate) async fn open(js: &js::Context, nats: &NatsConfig) -> Result<Self, NatsError> {
        let bucket = nats.subjects.presence_bucket();
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "Switchboard presence: <room>.<hex user> → connection → last refresh"
                    .into(),
                history: 1,
                // Members nobody refreshes at all (every core down) and
                // the tombstones of departed ones vanish; the sweep
                // normally prunes long before this.
                max_age: nats.presence_ttl * 10,
                storage: match nats.storage {
                    StorageKind::File => StorageType::File,
                    StorageKind::Memory => StorageType::Memory,
                },
                num_replicas: nats.replicas,
                ..Default::default()
            })
            .await
            .map_err(|err| NatsError::Setup(format!("presence bucket {bucket}: {err}")))?;
        Ok(Self {
            kv,
            writing: std::sync::Mutex::new(HashMap::new()),
            ttl: nats.presence_ttl,
            query_limit: (nats.request_timeout * 4 / 5).max(Duration::from_millis(500)),
            sweep_limit: nats.presence_ttl.max(nats.request_timeout),
        })
    }

    /// Gateways refresh every TTL/3 and cores sweep every TTL/3, so a
    /// connection counts as stale after 2/3 of the TTL: a live one has
    /// missed at most one refresh by then, and a dead one's user leaves
    /// within the TTL.
    fn is_fresh(&self, last_seen_ms: i64, now: i64) -> bool {
        let stale_after = i64::try_from((self.ttl * 2 / 3).as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(last_seen_ms) <= stale_after
    }

    /// Leave records outlive any refresh that was on its way when the
    /// connection left (refreshes are bounded by the request timeout,
    /// well below the TTL).
    fn remembers(&self, left_ms: i64, now: i64) -> bool {
        let forget_after = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(left_ms) <= forget_after
    }

    /// Applies connection changes to one member, coalescing concurrent
    /// callers: while this core writes a member, further changes to it
    /// queue, and the next write applies all of them in one
    /// compare-and-set. Without it N connections of one user joining at
    /// once (a reconnect storm, a service account with many workers) made
    /// N competing writes of a value holding N connections: O(N²) work,
    /// and most of them gave up after [`CAS_ATTEMPTS`] (907 of 1,000 joins
    /// failed in the fan-out benchmark, whose subscribers share a user).
    /// A transition (join or leave event) is reported to one caller of the
    /// write that made it, so it is announced once.
    pub(crate) async fn change(
        &self,
        room: &RoomName,
        user: &str,
        changes: Vec<ConnChange>,
    ) -> Outcome {
        let key = member_key(room, user);
        let queued = {
            let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
            match writing.get_mut(&key) {
                Some(queued) => {
                    let (tx, rx) = oneshot::channel();
                    queued.changes.extend(changes.iter().cloned());
                    queued.waiters.push(tx);
                    Some(rx)
                }
                None => {
                    writing.insert(key.clone(), Queued::default());
                    None
                }
            }
        };
        let (changes, others) = match queued {
            None => (changes, Vec::new()),
            Some(rx) => match rx.await {
                Ok(Turn::Done(outcome)) => return outcome,
                Ok(Turn::Lead { changes, others }) => (changes, others),
                Err(_) => return Err(unavailable("presence writer stopped")),
            },
        };
        let mut guard = Writing {
            writing: &self.writing,
            key: &key,
            done: false,
        };
        let outcome = self
            .update(room, user, |member, now| {
                for change in &changes {
                    change.apply(member, now);
                }
            })
            .await;
        for other in others {
            let theirs = outcome.as_ref().map(|_| None).map_err(Clone::clone);
            let _ = other.send(Turn::Done(theirs));
        }
        // Hand the key on to the first caller still waiting, with
        // everything queued meanwhile; or free it.
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queued) = writing.get_mut(&key) {
            let mut waiters = std::mem::take(&mut queued.waiters).into_iter();
            let mut changes = std::mem::take(&mut queued.changes);
            let mut handed = false;
            while let Some(next) = waiters.next() {
                let turn = Turn::Lead {
                    changes,
                    others: waiters.by_ref().collect(),
                };
                match next.send(turn) {
                    Ok(()) => {
                        handed = true;
                        break;
                    }
                    // That caller went away: offer it to the others.
                    Err(Turn::Lead { changes: c, others }) => {
                        changes = c;
                        waiters = others.into_iter();
                    }
                    Err(Turn::Done(_)) => break,
                }
            }
            if !handed {
                writing.remove(&key);
            }
        }
        guard.done = true;
        outcome
    }

    /// Applies `change` to one member (then prunes stale connections and
    /// old leave records) with compare-and-set on the member key, and
    /// reports whether the user joined or left. Costs two or three round
    /// trips whatever the size of the room.
    ///
    /// A user counts as joined while the stored value has connections:
    /// every write prunes, so a stored connection was fresh when written,
    /// and the join event for it was announced. A user whose connections
    /// all went stale therefore leaves with the next update (the sweep's).
    pub(crate) async fn update(
        &self,
        room: &RoomName,
        user: &str,
        change: impl Fn(&mut Member, i64),
    ) -> Result<Option<Transition>, BusError> {
        let key = member_key(room, user);
        for _ in 0..CAS_ATTEMPTS {
            let entry = self.kv.entry(key.as_str()).await.map_err(unavailable)?;
            let (stored, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => {
                    (Some(decode_member(&e.value)), Some(e.revision))
                }
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let was_present = stored.as_ref().is_some_and(|m| !m.conns.is_empty());
            let mut member = stored.clone().unwrap_or_default();
            let now = now_ms();
            change(&mut member, now);
            member.conns.retain(|_, seen| self.is_fresh(*seen, now));
            member.gone.retain(|_, left| self.remembers(*left, now));
            if stored.as_ref() == Some(&member) {
                return Ok(None);
            }
            let present = !member.conns.is_empty();
            let keep = present || !member.gone.is_empty();
            let written = match (keep, revision) {
                // Nothing stored and nothing to store.
                (false, _) if stored.is_none() => return Ok(None),
                (false, revision) => self
                    .kv
                    .delete_expect_revision(key.as_str(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                (true, Some(revision)) => {
                    let value = Bytes::from(serde_json::to_vec(&member).unwrap_or_default());
                    self.kv
                        .update(key.as_str(), value, revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision)
                }
                (true, None) => {
                    let value = Bytes::from(serde_json::to_vec(&member).unwrap_or_default());
                    self.kv
                        .create(key.as_str(), value)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists)
                }
            };
            match written {
                Ok(()) => {
                    return Ok(match (was_present, present) {
                        (false, true) => Some(Transition::Joined),
                        (true, false) => Some(Transition::Left),
                        _ => None,
                    });
                }
                // Another core changed this member first: start again.
                Err(true) => continue,
                Err(false) => return Err(unavailable("write refused")),
            }
        }
        Err(unavailable("too many concurrent changes"))
    }

    /// Users of the room with at least one fresh connection, sorted. Reads
    /// the room's own keys only.
    pub(crate) async fn users(&self, room: &RoomName) -> Result<Vec<String>, BusError> {
        let now = now_ms();
        let mut users = BTreeSet::new();
        self.scan(&format!("{room}.*"), self.query_limit, |key, value| {
            if let Key::Member(_, user) = parse_key(key)
                && decode_member(value)
                    .conns
                    .values()
                    .any(|seen| self.is_fresh(*seen, now))
            {
                users.insert(user);
            }
        })
        .await?;
        Ok(users.into_iter().collect())
    }

    /// Reads the whole bucket once for the sweep: members with a stale
    /// connection or an expired leave record, and keys of the old
    /// per-room layout.
    pub(crate) async fn sweep_scan(&self) -> Result<SweepScan, BusError> {
        let now = now_ms();
        let mut found = SweepScan::default();
        self.scan(">", self.sweep_limit, |key, value| {
            found.keys += 1;
            match parse_key(key) {
                Key::Member(room, user) => {
                    let member = decode_member(value);
                    if member.conns.values().any(|seen| !self.is_fresh(*seen, now))
                        || member.gone.values().any(|left| !self.remembers(*left, now))
                    {
                        found.stale.push(Stale { room, user });
                    }
                }
                Key::Legacy(room) => found.legacy.push(room),
                Key::Foreign => {}
            }
        })
        .await?;
        Ok(found)
    }

    /// Whether the member key holds connections of the user.
    pub(crate) async fn is_member(&self, room: &RoomName, user: &str) -> Result<bool, BusError> {
        let entry = self
            .kv
            .entry(member_key(room, user))
            .await
            .map_err(unavailable)?;
        Ok(entry.is_some_and(|e| {
            e.operation == Operation::Put && !decode_member(&e.value).conns.is_empty()
        }))
    }

    /// Takes over a key of the old per-room layout
    /// (`{user: {conn: last_refresh_ms}}`): deletes it (compare-and-set,
    /// so of several sweeping cores exactly one migrates it) and returns
    /// its users, split into those with a fresh connection and those
    /// without. `None`: nothing to migrate, or another core took it.
    pub(crate) async fn take_legacy(&self, room: &RoomName) -> Result<Option<Legacy>, BusError> {
        let Some(entry) = self.kv.entry(room.as_str()).await.map_err(unavailable)? else {
            return Ok(None);
        };
        if entry.operation != Operation::Put {
            return Ok(None);
        }
        let old: BTreeMap<String, BTreeMap<String, i64>> =
            serde_json::from_slice(&entry.value).unwrap_or_default();
        match self
            .kv
            .delete_expect_revision(room.as_str(), Some(entry.revision))
            .await
        {
            Ok(()) => {}
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(None),
            Err(err) => return Err(unavailable(err)),
        }
        let now = now_ms();
        let mut legacy = Legacy::default();
        for (user, conns) in old {
            if switchboard_core::validate_user(&user).is_err() {
                continue;
            }
            // Never trust a timestamp from the future to keep a user forever.
            let fresh: BTreeMap<String, i64> = conns
                .into_iter()
                .map(|(conn, seen)| (conn, seen.min(now)))
                .filter(|(_, seen)| self.is_fresh(*seen, now))
                .collect();
            if fresh.is_empty() {
                legacy.stale.push(user);
            } else {
                legacy.fresh.push((user, fresh));
            }
        }
        Ok(Some(legacy))
    }

    /// Calls `visit(key, value)` with the last value of every live key
    /// matching `filter` (a key pattern, e.g. `room.*`), tombstones
    /// skipped. A short-lived consumer filtered server-side does the
    /// reading, bounded by `limit`, and is deleted afterwards (or
    /// forgotten by the server after a few idle seconds).
    async fn scan(
        &self,
        filter: &str,
        limit: Duration,
        mut visit: impl FnMut(&str, &[u8]),
    ) -> Result<(), BusError> {
        let stream = &self.kv.stream;
        let consumer = read_consumer::create(
            stream,
            format!("{}{filter}", self.kv.prefix),
            DeliverPolicy::LastPerSubject,
        )
        .await
        .map_err(unavailable)?;
        let name = consumer.cached_info().name.clone();
        let mut pending = consumer.cached_info().num_pending;
        let read = tokio::time::timeout(limit, async {
            while pending > 0 {
                let mut batch = consumer
                    .fetch()
                    .max_messages(SCAN_BATCH)
                    .messages()
                    .await
                    .map_err(unavailable)?;
                let mut got = 0usize;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(unavailable)?;
                    got += 1;
                    let info = message.info().map_err(unavailable)?;
                    pending = info.pending;
                    if is_put(message.headers.as_ref())
                        && let Some(key) = message.subject.strip_prefix(&self.kv.prefix)
                    {
                        visit(key, &message.payload);
                    }
                }
                // Nothing left to hand out (entries may expire after the
                // pending count was taken): the listing is complete.
                if got == 0 {
                    break;
                }
            }
            Ok::<_, BusError>(())
        })
        .await;
        read_consumer::delete(stream, &name).await;
        match read {
            Ok(result) => result,
            Err(_) => Err(unavailable("listing timed out")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_any_user() {
        let room = RoomName::parse("lobby").expect("room");
        for user in ["ada", "a.b c", "ünï/cødé*>", "x=y", &"z".repeat(128)] {
            let key = member_key(&room, user);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(parse_key(&key), Key::Member(room.clone(), user.to_owned()));
        }
        assert_eq!(parse_key("lobby"), Key::Legacy(room.clone()));
        assert_eq!(parse_key("lobby.zz"), Key::Foreign);
        assert_eq!(parse_key("lobby.616"), Key::Foreign);
        assert_eq!(parse_key("a b"), Key::Foreign);
        assert_eq!(decode_user("ff"), None, "not UTF-8");
    }

    #[test]
    fn a_late_refresh_does_not_revive_a_connection_that_left() {
        let mut member = Member::default();
        member.join("c1", 1);
        member.leave("c1", 2);
        member.refresh("c1", 3);
        assert!(member.conns.is_empty(), "refresh after leave ignored");
        member.refresh("c2", 3);
        assert_eq!(member.conns.get("c2"), Some(&3), "unknown connection added");
        member.join("c1", 4);
        assert_eq!(member.conns.get("c1"), Some(&4), "explicit join wins");
        assert!(!member.gone.contains_key("c1"));
        let round_trip = decode_member(&serde_json::to_vec(&member).expect("json"));
        assert_eq!(round_trip, member);
    }
}
