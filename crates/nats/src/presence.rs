//! Presence in a JetStream KV bucket: one key per room, holding each
//! user's connections with the time a gateway last vouched for them.
//!
//! Changes are compare-and-set on the key's revision, so concurrent core
//! replicas agree on who joined and who left, and each transition yields
//! exactly one join or leave event. A connection not refreshed within the
//! TTL (its gateway crashed) is pruned by whichever core next touches the
//! room, or by the periodic sweep.

use crate::{NatsConfig, NatsError, StorageKind};
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::StorageType;
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures::TryStreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_bus::BusError;
use switchboard_protocol::RoomName;

/// Users of a room → their connections → last refresh (Unix ms).
type RoomPresence = BTreeMap<String, BTreeMap<String, i64>>;

/// Compare-and-set attempts before a presence change gives up.
const CAS_ATTEMPTS: usize = 16;

pub(crate) struct PresenceStore {
    kv: kv::Store,
    ttl: Duration,
}

/// Users whose presence changed with one update.
#[derive(Debug, Default)]
pub(crate) struct Transitions {
    pub(crate) joined: Vec<String>,
    pub(crate) left: Vec<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn unavailable(err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("presence store: {err}"))
}

impl PresenceStore {
    pub(crate) async fn open(js: &js::Context, nats: &NatsConfig) -> Result<Self, NatsError> {
        let bucket = nats.subjects.presence_bucket();
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "Switchboard presence: room → user → connection → last refresh".into(),
                history: 1,
                // Rooms nobody refreshes at all (every core down) vanish;
                // the sweep normally prunes long before this.
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
            ttl: nats.presence_ttl,
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

    /// Applies `change` to the room (then prunes stale connections) with
    /// compare-and-set, and reports who joined and who left.
    pub(crate) async fn update(
        &self,
        room: &RoomName,
        change: impl Fn(&mut RoomPresence, i64),
    ) -> Result<Transitions, BusError> {
        let key = room.as_str();
        for _ in 0..CAS_ATTEMPTS {
            let entry = self.kv.entry(key).await.map_err(unavailable)?;
            let (mut presence, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => (
                    serde_json::from_slice(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (RoomPresence::new(), Some(e.revision)),
                None => (RoomPresence::new(), None),
            };
            let before: BTreeSet<String> = presence.keys().cloned().collect();
            let now = now_ms();
            change(&mut presence, now);
            for conns in presence.values_mut() {
                conns.retain(|_, seen| self.is_fresh(*seen, now));
            }
            presence.retain(|_, conns| !conns.is_empty());
            let after: BTreeSet<String> = presence.keys().cloned().collect();
            if before == after && presence.is_empty() {
                return Ok(Transitions::default());
            }
            let written = match (presence.is_empty(), revision) {
                (true, Some(revision)) => self
                    .kv
                    .delete_expect_revision(key, Some(revision))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                (true, None) => Ok(()),
                (false, Some(revision)) => {
                    let value = Bytes::from(serde_json::to_vec(&presence).unwrap_or_default());
                    self.kv
                        .update(key, value, revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision)
                }
                (false, None) => {
                    let value = Bytes::from(serde_json::to_vec(&presence).unwrap_or_default());
                    self.kv
                        .create(key, value)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists)
                }
            };
            match written {
                Ok(()) => {
                    return Ok(Transitions {
                        joined: after.difference(&before).cloned().collect(),
                        left: before.difference(&after).cloned().collect(),
                    });
                }
                // Someone else changed the room first: start again.
                Err(true) => continue,
                Err(false) => return Err(unavailable("write refused")),
            }
        }
        Err(unavailable("too many concurrent changes"))
    }

    /// Users with at least one fresh connection, sorted.
    pub(crate) async fn users(&self, room: &RoomName) -> Result<Vec<String>, BusError> {
        let Some(value) = self.kv.get(room.as_str()).await.map_err(unavailable)? else {
            return Ok(Vec::new());
        };
        let presence: RoomPresence = serde_json::from_slice(&value).unwrap_or_default();
        let now = now_ms();
        Ok(presence
            .into_iter()
            .filter(|(_, conns)| conns.values().any(|seen| self.is_fresh(*seen, now)))
            .map(|(user, _)| user)
            .collect())
    }

    /// Every room with presence, for the sweep.
    pub(crate) async fn rooms(&self) -> Result<Vec<RoomName>, BusError> {
        let keys = self.kv.keys().await.map_err(unavailable)?;
        let keys: Vec<String> = keys.try_collect().await.map_err(unavailable)?;
        Ok(keys
            .into_iter()
            .filter_map(|k| RoomName::parse(&k).ok())
            .collect())
    }
}
