//! The room logs in JetStream: one stream, one subject per room.

use crate::wire::{self, EPOCH_HEADER};
use crate::{NatsConfig, NatsError, StorageKind, Subjects};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, Republish, StorageType};
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use switchboard_bus::BusError;
use switchboard_core::{CoreConfig, CoreError, HistoryQuery, Resume};
use switchboard_protocol::{Cursor, Epoch, EventFields, ProtocolError, RoomName, SharedEvent};
use switchboard_telemetry::{TRACE_TARGET, names};
use tracing::Instrument;

/// Optimistic-concurrency attempts per append before giving up. Conflicts
/// are normal when several core replicas append to one busy room; each
/// retry costs one round trip, and some replica wins every round.
const APPEND_ATTEMPTS: usize = 64;
/// Resumes reading fewer events than this use direct gets; longer ones an
/// ordered consumer (cheaper in bulk, but a server-side object).
const DIRECT_READS: usize = 16;
/// Per-room state kept for at most this many rooms before it is reset.
const MAX_CACHED_ROOMS: usize = 100_000;

pub(crate) struct RoomLogs {
    stream: stream::Stream,
    js: js::Context,
    subjects: Subjects,
    epoch: RwLock<Epoch>,
    /// Last sequence per room subject as this core last saw it.
    last: Mutex<HashMap<RoomName, u64>>,
    /// Serialises this core's appends per room, so its own publishes do
    /// not race each other on the expected sequence.
    locks: Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
}

fn unavailable(err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(err.to_string())
}

impl RoomLogs {
    /// Creates or updates the stream to the configured retention.
    pub(crate) async fn open(
        js: js::Context,
        nats: &NatsConfig,
        config: &CoreConfig,
    ) -> Result<Self, NatsError> {
        let subjects = nats.subjects.clone();
        let stream_config = stream::Config {
            name: subjects.stream(),
            description: Some("Switchboard room logs: one subject per room".into()),
            subjects: vec![subjects.logs()],
            max_messages_per_subject: i64::try_from(config.retention_count).unwrap_or(i64::MAX),
            max_age: config.retention_age,
            duplicate_window: config.dedup_window,
            storage: match nats.storage {
                StorageKind::File => StorageType::File,
                StorageKind::Memory => StorageType::Memory,
            },
            num_replicas: nats.replicas,
            allow_direct: true,
            republish: Some(Republish {
                source: subjects.logs(),
                destination: subjects.lives(),
                headers_only: false,
            }),
            ..Default::default()
        };
        js.create_or_update_stream(stream_config)
            .await
            .map_err(|err| NatsError::Setup(format!("stream {}: {err}", subjects.stream())))?;
        let mut stream = js
            .get_stream(subjects.stream())
            .await
            .map_err(|err| NatsError::Setup(err.to_string()))?;
        let epoch = epoch_of(&mut stream)
            .await
            .map_err(|err| NatsError::Setup(err.to_string()))?;
        tracing::info!(stream = %subjects.stream(), %epoch, "room-log stream ready");
        Ok(Self {
            stream,
            js,
            subjects,
            epoch: RwLock::new(epoch),
            last: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the stream identity: a deleted and recreated stream is a
    /// new epoch, and cached sequences no longer mean anything.
    pub(crate) async fn refresh_epoch(&self) -> Result<(), BusError> {
        let mut stream = self
            .js
            .get_stream(self.subjects.stream())
            .await
            .map_err(unavailable)?;
        let epoch = epoch_of(&mut stream).await.map_err(unavailable)?;
        let changed = {
            let mut current = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
            let changed = *current != epoch;
            *current = epoch.clone();
            changed
        };
        if changed {
            tracing::warn!(%epoch, "room-log stream was recreated: new epoch");
            self.last
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        Ok(())
    }

    fn room_lock(&self, room: &RoomName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if locks.len() > MAX_CACHED_ROOMS {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(room.clone()).or_default().clone()
    }

    fn cached_last(&self, room: &RoomName) -> Option<u64> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(room)
            .copied()
    }

    fn remember_last(&self, room: &RoomName, sequence: u64) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() > MAX_CACHED_ROOMS {
            last.clear();
        }
        last.insert(room.clone(), sequence);
    }

    fn forget_last(&self, room: &RoomName) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(room);
    }

    /// The room's last stored sequence (0 for an empty room), from the server.
    pub(crate) async fn last_sequence(&self, room: &RoomName) -> Result<u64, BusError> {
        match self
            .stream
            .direct_get_last_for_subject(self.subjects.log(room))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(0),
            Err(err) => Err(unavailable(err)),
        }
    }

    /// Appends one event. With `dedup_id` a retry within the window gets
    /// the original sequence and `true`.
    ///
    /// The expected last subject sequence makes the stored `prev_offset`
    /// exact even with several core replicas writing to one room: a
    /// concurrent append makes ours fail with "wrong last sequence", and
    /// we retry on top of it.
    pub(crate) async fn append(
        &self,
        room: &RoomName,
        draft: EventFields,
        dedup_id: Option<String>,
    ) -> Result<(Cursor, bool), BusError> {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "jetstream.append",
            room = %room,
            cursor = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        // Stored with the message, so the republished copy lets every
        // delivering gateway continue this trace.
        let trace = switchboard_telemetry::inject(&span);
        let appended = self
            .append_traced(room, draft, dedup_id, &trace)
            .instrument(span.clone())
            .await;
        if let Ok((cursor, _)) = &appended {
            span.record("cursor", tracing::field::display(cursor));
        }
        appended
    }

    async fn append_traced(
        &self,
        room: &RoomName,
        mut draft: EventFields,
        dedup_id: Option<String>,
        trace: &switchboard_telemetry::TraceCarrier,
    ) -> Result<(Cursor, bool), BusError> {
        let lock = self.room_lock(room);
        let _serial = lock.lock().await;
        let subject = self.subjects.log(room);
        let msg_id = dedup_id.map(|id| format!("{room}:{id}"));
        for _ in 0..APPEND_ATTEMPTS {
            let expected = match self.cached_last(room) {
                Some(last) => last,
                None => self.last_sequence(room).await?,
            };
            let epoch = self.epoch();
            draft.prev_offset = expected;
            let mut message = PublishMessage::build()
                .payload(Bytes::from(draft.encode_to_vec()))
                .header(EPOCH_HEADER, epoch.as_str())
                .expected_last_subject_sequence(expected);
            for (key, value) in trace {
                message = message.header(key.as_str(), value.as_str());
            }
            if let Some(id) = &msg_id {
                message = message.message_id(id);
            }
            let ack = self
                .js
                .send_publish(subject.clone(), message)
                .await
                .map_err(|err| publish_failed("send", err))?
                .await;
            match ack {
                Ok(ack) => {
                    if !ack.duplicate {
                        self.remember_last(room, ack.sequence);
                    }
                    return Ok((Cursor::new(epoch, ack.sequence), ack.duplicate));
                }
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    // The server names the subject's current last sequence:
                    // retry on top of it without another round trip.
                    match current_last_sequence(&err.to_string()) {
                        Some(last) => self.remember_last(room, last),
                        None => self.forget_last(room),
                    }
                    // On a single-replica stream a retried duplicate is
                    // refused for its stale expectation before dedup runs:
                    // if the message after `expected` is ours, it was stored.
                    if let Some(id) = &msg_id
                        && let Some(sequence) = self.stored_after(room, expected, id).await
                    {
                        return Ok((Cursor::new(epoch, sequence), true));
                    }
                }
                Err(err) => return Err(publish_failed("ack", err)),
            }
        }
        Err(BusError::Unavailable(format!(
            "room {room} is too contended; retry"
        )))
    }

    async fn stored_after(&self, room: &RoomName, after: u64, msg_id: &str) -> Option<u64> {
        let message = self
            .stream
            .direct_get_next_for_subject(self.subjects.log(room), Some(after + 1))
            .await
            .ok()?;
        let id = message.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
        (id.as_str() == msg_id).then_some(message.sequence)
    }

    /// Events after `after`, oldest first, up to the current end.
    pub(crate) async fn read_after(
        &self,
        room: &RoomName,
        after: u64,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError> {
        let subject = self.subjects.log(room);
        let epoch = self.epoch();
        let mut events = Vec::new();
        let mut next = after + 1;
        // Short reads (the usual resume after a blip) by direct get.
        for _ in 0..DIRECT_READS {
            match self
                .stream
                .direct_get_next_for_subject(subject.clone(), Some(next))
                .await
            {
                Ok(message) => {
                    next = message.sequence + 1;
                    events.push(decode(&message.payload, &epoch, message.sequence)?);
                }
                Err(err) if err.kind() == DirectGetErrorKind::NotFound => return Ok(events),
                Err(err) => return Err(unavailable(err)),
            }
        }
        // Long ones with an ordered consumer.
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: next,
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(events);
        }
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(unavailable)?;
            let info = message.info().map_err(unavailable)?;
            events.push(decode(&message.payload, &epoch, info.stream_sequence)?);
            if info.pending == 0 {
                break;
            }
        }
        Ok(events)
    }

    pub(crate) async fn resume(
        &self,
        room: &RoomName,
        since: Option<&Cursor>,
    ) -> Result<Resume, BusError> {
        let epoch = self.epoch();
        let last = self.last_sequence(room).await?;
        let head = Cursor::new(epoch.clone(), last);
        let unrecovered = |head: Cursor| Resume {
            events: Vec::new(),
            head,
            recovered: false,
        };
        let Some(since) = since else {
            return Ok(Resume {
                events: Vec::new(),
                head,
                recovered: true,
            });
        };
        if since.epoch() != &epoch || since.offset() > last {
            return Ok(unrecovered(head));
        }
        if since.offset() == last {
            return Ok(Resume {
                events: Vec::new(),
                head,
                recovered: true,
            });
        }
        let events = self.read_after(room, since.offset()).await?;
        // Each stored event names its predecessor: if the oldest one we
        // still have does not follow `since`, retention dropped some.
        match events.first() {
            Some(first) if first.event().prev_offset == since.offset() => {
                let head = events.last().map_or(head, |e| e.event().cursor.clone());
                Ok(Resume {
                    events,
                    head,
                    recovered: true,
                })
            }
            _ => Ok(unrecovered(head)),
        }
    }

    pub(crate) async fn history(
        &self,
        room: &RoomName,
        query: &HistoryQuery,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError> {
        let epoch = self.epoch();
        let offset = |cursor: &Option<Cursor>| -> Result<Option<u64>, BusError> {
            match cursor {
                None => Ok(None),
                Some(c) if c.epoch() == &epoch => Ok(Some(c.offset())),
                Some(c) => Err(BusError::Rejected(CoreError::Protocol(
                    ProtocolError::BadCursor(format!(
                        "{c} belongs to another epoch of room {room}; the log was recreated"
                    )),
                ))),
            }
        };
        let after = offset(&query.after)?;
        let before = offset(&query.before)?;
        let limit = query
            .limit
            .unwrap_or(switchboard_core::DEFAULT_HISTORY_LIMIT)
            .clamp(1, switchboard_core::MAX_HISTORY_LIMIT);
        // A room holds at most `retention_count` events, so reading the
        // whole subject is bounded.
        let mut events = self.read_after(room, after.unwrap_or(0)).await?;
        if let Some(before) = before {
            events.retain(|e| e.offset() < before);
        }
        if after.is_some() {
            events.truncate(limit);
        } else if events.len() > limit {
            events.drain(..events.len() - limit);
        }
        Ok(events)
    }
}

fn decode(payload: &[u8], epoch: &Epoch, sequence: u64) -> Result<Arc<SharedEvent>, BusError> {
    wire::stored_event(payload, epoch.as_str(), sequence)
        .map_err(|err| BusError::Unavailable(format!("undecodable stored event {sequence}: {err}")))
}

/// "wrong last sequence: 8 (code 400, error code 10071)" → 8.
fn current_last_sequence(message: &str) -> Option<u64> {
    const MARK: &str = "wrong last sequence: ";
    let tail = &message[message.rfind(MARK)? + MARK.len()..];
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn publish_failed(stage: &'static str, err: impl std::fmt::Display) -> BusError {
    metrics::counter!(names::JETSTREAM_PUBLISH_ERRORS, "reason" => stage).increment(1);
    BusError::Unavailable(format!("JetStream did not store the message: {err}"))
}

/// The stream's creation time, base-36: stable across restarts and
/// updates, new when the stream is recreated.
async fn epoch_of(stream: &mut stream::Stream) -> Result<Epoch, String> {
    let created = stream.info().await.map_err(|e| e.to_string())?.created;
    let mut nanos = u128::try_from(created.unix_timestamp_nanos()).unwrap_or(0);
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(nanos % 36) as usize]);
        nanos /= 36;
        if nanos == 0 {
            break;
        }
    }
    out.reverse();
    Epoch::parse(&String::from_utf8_lossy(&out)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_current_sequence_from_a_conflict() {
        let message = "wrong last sequence: wrong last sequence: 8 (code 400, error code 10071)";
        assert_eq!(super::current_last_sequence(message), Some(8));
        assert_eq!(super::current_last_sequence("something else"), None);
    }
}
