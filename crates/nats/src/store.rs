//! The room logs in JetStream: one stream, one subject per room.

use crate::read_consumer;
use crate::wire::{self, EPOCH_HEADER};
use crate::{NatsConfig, NatsError, StorageKind, Subjects};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{
    self, DirectGetErrorKind, DiscardPolicy, RawMessageErrorKind, Republish, StorageType,
};
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use switchboard_bus::BusError;
use switchboard_core::{CoreConfig, CoreError, HistoryQuery, Resume};
use switchboard_protocol::{Cursor, Epoch, EventFields, ProtocolError, RoomName, SharedEvent};
use switchboard_telemetry::{TRACE_TARGET, TraceCarrier, names};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

/// Optimistic-concurrency attempts per append before giving up. Conflicts
/// are normal when several core replicas append to one busy room; each
/// retry costs one round trip, and some replica wins every round.
const APPEND_ATTEMPTS: usize = 64;
/// Forward reads of fewer events than this use direct gets; longer ones a
/// consumer (cheaper in bulk, but a server-side object).
const DIRECT_READS: usize = 16;
/// Messages asked for per fetch of a read consumer.
const CONSUMER_BATCH: usize = 256;
/// Per-room state kept for at most this many rooms before it is reset.
const MAX_CACHED_ROOMS: usize = 100_000;
/// Fewest queued appends sent as a batch: nats-server's work per batch
/// (staging, then the commit) makes batches of 2 or 3 cost more than as
/// many single appends when many rooms are busy (ADR 0011: 100 rooms,
/// 21k/s with batches from 2, 31k/s from 4, 30k/s without); below this
/// the front append goes alone.
const MIN_BATCH: usize = 4;
/// Batches are sent only while at most this many rooms are being written
/// by this core: beyond it the rooms' round trips overlap anyway (ADR 0011:
/// 100 busy rooms on a memory stream went from 40k/s to 32k/s with batches).
const MAX_BATCHING_ROOMS: usize = 16;
/// Most queued appends of one room sent as one atomic batch (nats-server
/// accepts up to 1,000 by default).
const MAX_BATCH: usize = 64;
/// A batch stops growing once its payloads reach this many bytes, so one
/// batch never stages much more than a few large events.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Batches this process stages at once: nats-server refuses more than 50
/// in flight per stream (then we fall back to single appends).
const BATCH_PERMITS: usize = 16;

/// What an append answers: the event's cursor, and whether it was a
/// duplicate of an earlier append with the same id.
type Appended = Result<(Cursor, bool), BusError>;

/// One message to append.
struct Job {
    draft: EventFields,
    /// `<room>:<client id>`, JetStream's dedup key.
    msg_id: Option<String>,
    /// Stored with the message, so the republished copy lets every
    /// delivering gateway continue the publisher's trace.
    trace: TraceCarrier,
}

/// An append waiting in its room's queue.
struct Pending {
    job: Job,
    turn: oneshot::Sender<Turn>,
}

/// What a waiting append is told.
// Moved once, through a oneshot whose cell is allocated anyway: boxing the
// job would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Turn {
    /// A writer sent it with its own batch: here is the answer.
    Done(Appended),
    /// The writer before it finished: it writes now (its job comes back),
    /// holding the room's turn.
    Write(Job, Baton),
}

/// Appends waiting per room.
type Queues = Mutex<HashMap<RoomName, VecDeque<Pending>>>;

pub(crate) struct RoomLogs {
    stream: stream::Stream,
    js: js::Context,
    subjects: Subjects,
    epoch: RwLock<Epoch>,
    /// Most events a room holds: the bound of a resume read.
    retention_count: usize,
    /// The stream's replicas: with more than one, reads go through the
    /// leader (see [`RoomLogs::get`]).
    replicas: usize,
    /// Last sequence per room subject as this core last saw it.
    last: Mutex<HashMap<RoomName, u64>>,
    /// Appends waiting per room. A room has an entry exactly while one of
    /// this core's appends to it is being written (see [`Self::append`]).
    queues: Arc<Queues>,
    /// Whether queued appends go out as atomic batches: the stream allows
    /// them (nats-server ≥ 2.12) and `NatsConfig::atomic_batches` is on.
    batches: AtomicBool,
    batch_permits: Semaphore,
    /// Batch ids: unique per process start, then a counter.
    batch_prefix: String,
    batch_counter: AtomicU64,
}

fn unavailable(err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(err.to_string())
}

impl RoomLogs {
    /// Creates or updates the stream to the configured retention and bounds.
    ///
    /// `max_bytes` with discard-old keeps one flooding client from filling
    /// the server's store (after which every write in every room would
    /// fail): a flood discards the stream's oldest events instead.
    /// `max_message_size` bounds each event, so one room holds at most
    /// `retention_count × max_message_size` bytes.
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
            max_bytes: i64::try_from(nats.max_bytes).unwrap_or(i64::MAX),
            max_message_size: i32::try_from(nats.max_message_bytes).unwrap_or(i32::MAX),
            discard: DiscardPolicy::Old,
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
            // Servers before 2.12 ignore it and answer `false`.
            allow_atomic_publish: nats.atomic_batches,
            ..Default::default()
        };
        let info = js
            .create_or_update_stream(stream_config)
            .await
            .map_err(|err| {
                // "Insufficient storage resources" here usually means a
                // bound above the server's max_file_store/max_memory_store.
                NatsError::Setup(format!(
                    "stream {} with max_bytes {} (must fit the server's JetStream store \
                     limit): {err}",
                    subjects.stream(),
                    nats.max_bytes
                ))
            })?;
        // nats-server stages the batches of an R1 file stream in a file
        // store of their own, created and deleted per batch: ~4 ms a batch
        // on the development machine, against ~0.1 ms for one append
        // (ADR 0011). Replicated and memory streams stage in memory.
        let staged_in_memory = nats.storage == StorageKind::Memory || nats.replicas > 1;
        let batches = nats.atomic_batches && staged_in_memory && info.config.allow_atomic_publish;
        if nats.atomic_batches && !info.config.allow_atomic_publish {
            tracing::warn!(
                stream = %subjects.stream(),
                "the NATS server does not allow atomic batches (needs 2.12 or later): \
                 each append to a room is one round trip"
            );
        }
        let mut stream = js
            .get_stream(subjects.stream())
            .await
            .map_err(|err| NatsError::Setup(err.to_string()))?;
        let epoch = epoch_of(&mut stream)
            .await
            .map_err(|err| NatsError::Setup(err.to_string()))?;
        tracing::info!(stream = %subjects.stream(), %epoch, batches, "room-log stream ready");
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            stream,
            js,
            subjects,
            epoch: RwLock::new(epoch),
            retention_count: config.retention_count,
            replicas: nats.replicas,
            last: Mutex::new(HashMap::new()),
            queues: Arc::new(Mutex::new(HashMap::new())),
            batches: AtomicBool::new(batches),
            batch_permits: Semaphore::new(BATCH_PERMITS),
            batch_prefix: format!("{:x}-{started:x}-", std::process::id()),
            batch_counter: AtomicU64::new(0),
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
        let subject = self.subjects.log(room);
        Ok(self
            .get(Get::LastFor(&subject))
            .await?
            .map_or(0, |message| message.sequence))
    }

    /// One stored message, or `None` if there is none.
    ///
    /// With one replica, a direct get (cheap, answered by the one server
    /// that has the stream). With several, a get through the stream
    /// leader: direct gets are answered by any replica, including a
    /// follower that is behind (nats-server enables them on a follower
    /// from 90 % in sync), and a resume, history or expected-sequence read
    /// from a stale replica would skip acknowledged events. The fault
    /// suite found it: after the stream leader was killed, one resumed
    /// subscriber missed an acknowledged message.
    async fn get(&self, get: Get<'_>) -> Result<Option<StreamMessage>, BusError> {
        if self.replicas <= 1 {
            let request = self.stream.direct_get_builder();
            let request = match get {
                Get::At(sequence) => request.sequence(sequence),
                Get::LastFor(subject) => request.last_by_subject(subject),
                Get::NextFor(subject, from) => request.sequence(from).next_by_subject(subject),
            };
            return match request.send().await {
                Ok(message) => Ok(Some(message)),
                Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(err) => Err(unavailable(err)),
            };
        }
        let request = self.stream.raw_message_builder();
        let request = match get {
            Get::At(sequence) => request.sequence(sequence),
            Get::LastFor(subject) => request.last_by_subject(subject),
            Get::NextFor(subject, from) => request.sequence(from).next_by_subject(subject),
        };
        match request.send().await {
            Ok(message) => Ok(Some(message)),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    /// Appends one event. With `dedup_id` a retry within the window gets
    /// the original sequence and `true`.
    ///
    /// This core's appends to a room go out one round trip at a time, in
    /// arrival order, so they do not race each other on the expected
    /// sequence. The caller with nothing ahead of it writes at once; the
    /// others wait in the room's queue and are handed the turn in order
    /// (like a lock, but the writer may take the waiters behind it along as
    /// one atomic batch, ADR 0011). The answer comes only after JetStream
    /// acknowledged the message.
    pub(crate) async fn append(
        &self,
        room: &RoomName,
        draft: EventFields,
        dedup_id: Option<String>,
    ) -> Appended {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "jetstream.append",
            room = %room,
            cursor = tracing::field::Empty,
        );
        let job = Job {
            draft,
            msg_id: dedup_id.map(|id| format!("{room}:{id}")),
            trace: switchboard_telemetry::inject(&span),
        };
        let first = {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            match queues.get_mut(room) {
                Some(queue) => {
                    let (turn, wait) = oneshot::channel();
                    queue.push_back(Pending { job, turn });
                    Err(wait)
                }
                None => {
                    queues.insert(room.clone(), VecDeque::new());
                    Ok(job)
                }
            }
        };
        let appended = match first {
            Ok(job) => {
                let baton = Baton::new(&self.queues, room);
                self.write(room, job, baton).instrument(span.clone()).await
            }
            Err(wait) => match wait.instrument(span.clone()).await {
                Ok(Turn::Done(appended)) => appended,
                Ok(Turn::Write(job, baton)) => {
                    self.write(room, job, baton).instrument(span.clone()).await
                }
                Err(_) => Err(BusError::Unavailable(format!(
                    "the append before this one in room {room} was cancelled with this one \
                     in its batch; the message may have been stored: retry with the same id"
                ))),
            },
        };
        if let Ok((cursor, _)) = &appended {
            span.record("cursor", tracing::field::display(cursor));
        }
        appended
    }

    /// Writes `job`, which holds the room's turn, and then hands the turn
    /// on (also when this future is dropped mid-write). With batches on
    /// and enough waiting, the waiters behind it go in the same batch.
    async fn write(&self, room: &RoomName, job: Job, _baton: Baton) -> Appended {
        let (others, permit) = {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            // With many rooms writing at once, round trips overlap and the
            // server's CPU is the limit; a batch only adds its own work.
            let few_rooms = queues.len() <= MAX_BATCHING_ROOMS;
            match queues.get_mut(room) {
                Some(queue)
                    if few_rooms
                        && queue.len() + 1 >= MIN_BATCH
                        && self.batches.load(Ordering::Relaxed) =>
                {
                    // Without a free permit this one goes alone: rooms
                    // never wait for each other's batches.
                    match self.batch_permits.try_acquire() {
                        Ok(permit) => (
                            take_batch(queue, MAX_BATCH - 1, job.draft.encoded_len()),
                            Some(permit),
                        ),
                        Err(_) => (Vec::new(), None),
                    }
                }
                _ => (Vec::new(), None),
            }
        };
        if others.is_empty() {
            return self
                .append_one(room, job.draft, job.msg_id.as_deref(), &job.trace)
                .await;
        }
        let appended = self.append_batch(room, job, others).await;
        drop(permit);
        appended
    }

    /// One message, one round trip, with the room's last sequence expected.
    ///
    /// The expected last subject sequence makes the stored `prev_offset`
    /// exact even with several core replicas writing to one room: a
    /// concurrent append makes ours fail with "wrong last sequence", and
    /// we retry on top of it.
    async fn append_one(
        &self,
        room: &RoomName,
        mut draft: EventFields,
        msg_id: Option<&str>,
        trace: &TraceCarrier,
    ) -> Appended {
        let subject = self.subjects.log(room);
        for _ in 0..APPEND_ATTEMPTS {
            let expected = self.expected_last(room).await?;
            let epoch = self.epoch();
            draft.prev_offset = expected;
            let mut message = PublishMessage::build()
                .payload(Bytes::from(draft.encode_to_vec()))
                .header(EPOCH_HEADER, epoch.as_str())
                .expected_last_subject_sequence(expected);
            for (key, value) in trace {
                message = message.header(key.as_str(), value.as_str());
            }
            if let Some(id) = msg_id {
                message = message.message_id(id);
            }
            let ack = self
                .js
                .send_publish(subject.clone(), message)
                .await
                .map_err(|err| publish_failed(room, Stage::Send, &err, 1))?
                .await;
            match ack {
                Ok(ack) => {
                    if !ack.duplicate {
                        self.remember_last(room, ack.sequence);
                    }
                    metrics::counter!(names::JETSTREAM_APPENDS, "path" => "single").increment(1);
                    return Ok((Cursor::new(epoch, ack.sequence), ack.duplicate));
                }
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    // Another core appended (with several cores a stale
                    // cache is normal). The server names the subject's
                    // current last sequence: retry on top of it without
                    // another round trip. A refused publish registers no
                    // msg-id, so with a fresh expectation JetStream's own
                    // dedup decides whether this is a duplicate, and it
                    // honours the window: a message with our id stored
                    // after `expected` but longer ago than the window is
                    // not a duplicate (taking it for one lost acked
                    // messages).
                    self.learn_last(room, &err);
                }
                Err(err) => return Err(publish_failed(room, Stage::Ack, &err, 1)),
            }
        }
        Err(contended(room))
    }

    /// Several queued appends of one room as one JetStream atomic batch:
    /// one round trip, stored on consecutive sequences or not at all. The
    /// first message expects the room's last sequence (so the batch is
    /// refused whole if another core appended); the others store
    /// [`wire::PREV_IS_PRECEDING`] as their predecessor. What JetStream
    /// refuses as a batch (a duplicate id in it, too many batches in
    /// flight, one message too large) is sent again one message at a time,
    /// which gives each message its own answer.
    async fn append_batch(&self, room: &RoomName, own: Job, others: Vec<Pending>) -> Appended {
        let mut jobs = Vec::with_capacity(others.len() + 1);
        let mut turns = Vec::with_capacity(others.len());
        jobs.push(own);
        for pending in others {
            jobs.push(pending.job);
            turns.push(pending.turn);
        }
        match self.send_batch(room, &jobs).await {
            BatchOutcome::Committed { epoch, last } => {
                metrics::counter!(names::JETSTREAM_BATCHES, "result" => "committed").increment(1);
                metrics::counter!(names::JETSTREAM_APPENDS, "path" => "batch")
                    .increment(jobs.len() as u64);
                let first = last + 1 - jobs.len() as u64;
                for (sequence, turn) in (first + 1..).zip(turns) {
                    let cursor = Cursor::new(epoch.clone(), sequence);
                    let _ = turn.send(Turn::Done(Ok((cursor, false))));
                }
                Ok((Cursor::new(epoch, first), false))
            }
            BatchOutcome::Failed(err) => {
                for turn in turns {
                    let _ = turn.send(Turn::Done(Err(err.clone())));
                }
                Err(err)
            }
            BatchOutcome::Fallback => {
                metrics::counter!(names::JETSTREAM_BATCHES, "result" => "fallback").increment(1);
                let mut jobs = jobs.into_iter();
                let mut own = None;
                if let Some(job) = jobs.next() {
                    own = Some(
                        self.append_one(room, job.draft, job.msg_id.as_deref(), &job.trace)
                            .await,
                    );
                }
                for (job, turn) in jobs.zip(turns) {
                    let appended = self
                        .append_one(room, job.draft, job.msg_id.as_deref(), &job.trace)
                        .await;
                    let _ = turn.send(Turn::Done(appended));
                }
                own.unwrap_or_else(|| Err(BusError::Unavailable("empty batch".into())))
            }
        }
    }

    async fn send_batch(&self, room: &RoomName, batch: &[Job]) -> BatchOutcome {
        let subject = self.subjects.log(room);
        let count = batch.len() as u64;
        let client = self.js.client();
        for _ in 0..APPEND_ATTEMPTS {
            let expected = match self.expected_last(room).await {
                Ok(expected) => expected,
                Err(err) => return BatchOutcome::Failed(err),
            };
            let epoch = self.epoch();
            let batch_id = format!(
                "{}{}",
                self.batch_prefix,
                self.batch_counter.fetch_add(1, Ordering::Relaxed)
            );
            let mut commit = None;
            for (index, job) in batch.iter().enumerate() {
                let mut draft = job.draft.clone();
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(EPOCH_HEADER, epoch.as_str());
                headers.insert(BATCH_ID_HEADER, batch_id.as_str());
                headers.insert(BATCH_SEQUENCE_HEADER, (index + 1).to_string().as_str());
                if index == 0 {
                    draft.prev_offset = expected;
                    headers.insert(
                        EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
                        expected.to_string().as_str(),
                    );
                } else {
                    draft.prev_offset = wire::PREV_IS_PRECEDING;
                }
                for (key, value) in &job.trace {
                    headers.insert(key.as_str(), value.as_str());
                }
                if let Some(id) = &job.msg_id {
                    headers.insert(MSG_ID_HEADER, id.as_str());
                }
                let payload = Bytes::from(draft.encode_to_vec());
                if index + 1 < batch.len() {
                    // Staged by the server; only the commit is answered.
                    if let Err(err) = client
                        .publish_with_headers(subject.clone(), headers, payload)
                        .await
                    {
                        return BatchOutcome::Failed(BusError::Unavailable(format!(
                            "JetStream did not store the messages: {err}"
                        )));
                    }
                } else {
                    headers.insert(BATCH_COMMIT_HEADER, "1");
                    let message = PublishMessage::build().payload(payload).headers(headers);
                    commit = Some(match self.js.send_publish(subject.clone(), message).await {
                        Ok(ack) => ack,
                        Err(err) => {
                            return BatchOutcome::Failed(publish_failed(
                                room,
                                Stage::Send,
                                &err,
                                count,
                            ));
                        }
                    });
                }
            }
            let Some(commit) = commit else {
                return BatchOutcome::Fallback;
            };
            match commit.await {
                Ok(ack)
                    if !ack.duplicate && ack.batch_size == Some(count) && ack.sequence >= count =>
                {
                    self.remember_last(room, ack.sequence);
                    return BatchOutcome::Committed {
                        epoch,
                        last: ack.sequence,
                    };
                }
                // Not what a committed batch answers: let each message
                // find out on its own (dedup makes that safe).
                Ok(_) => return BatchOutcome::Fallback,
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    self.learn_last(room, &err);
                }
                Err(err) => {
                    let (_, maybe_stored) = failure_reason(Stage::Ack, &err);
                    if maybe_stored {
                        return BatchOutcome::Failed(publish_failed(room, Stage::Ack, &err, count));
                    }
                    // An explicit refusal stored nothing.
                    if api_error_code(&err) == Some(ATOMIC_PUBLISH_DISABLED) {
                        tracing::warn!(%room, "atomic batches were disabled on the stream");
                        self.batches.store(false, Ordering::Relaxed);
                    }
                    tracing::debug!(%room, %err, "batch refused: sending its messages one by one");
                    return BatchOutcome::Fallback;
                }
            }
        }
        BatchOutcome::Failed(contended(room))
    }

    async fn expected_last(&self, room: &RoomName) -> Result<u64, BusError> {
        match self.cached_last(room) {
            Some(last) => Ok(last),
            None => self.last_sequence(room).await,
        }
    }

    /// After "wrong last sequence": the server names the current one.
    fn learn_last(&self, room: &RoomName, err: &PublishError) {
        match current_last_sequence(&err.to_string()) {
            Some(last) => self.remember_last(room, last),
            None => self.forget_last(room),
        }
    }

    /// The room's event at `sequence`, if it is still stored and belongs
    /// to this room: sequences are stream-wide, so a forged cursor could
    /// otherwise read another room.
    async fn event_at(
        &self,
        subject: &str,
        sequence: u64,
    ) -> Result<Option<Arc<SharedEvent>>, BusError> {
        match self.get(Get::At(sequence)).await? {
            Some(message) if message.subject.as_str() == subject => self
                .decode_read(&message.payload, message.sequence)
                .map(Some),
            _ => Ok(None),
        }
    }

    /// The room's first event at or after `from`.
    async fn event_from(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<Option<Arc<SharedEvent>>, BusError> {
        match self.get(Get::NextFor(subject, from)).await? {
            Some(message) => self
                .decode_read(&message.payload, message.sequence)
                .map(Some),
            None => Ok(None),
        }
    }

    /// The room's newest event.
    async fn last_event(&self, subject: &str) -> Result<Option<Arc<SharedEvent>>, BusError> {
        match self.get(Get::LastFor(subject)).await? {
            Some(message) => self
                .decode_read(&message.payload, message.sequence)
                .map(Some),
            None => Ok(None),
        }
    }

    /// Decodes one event read from the stream and counts it, so the work a
    /// read does is observable (`switchboard_store_events_read_total`).
    fn decode_read(&self, payload: &[u8], sequence: u64) -> Result<Arc<SharedEvent>, BusError> {
        metrics::counter!(names::STORE_EVENTS_READ).increment(1);
        decode(payload, &self.epoch(), sequence)
    }

    /// Up to `limit` events after `after` and before `before`, oldest
    /// first. Reads only the events it returns (plus the one that shows
    /// the end): short reads by direct get, long ones with a consumer that
    /// is bounded by the limit and deleted afterwards.
    async fn read_forward(
        &self,
        room: &RoomName,
        after: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError> {
        let subject = self.subjects.log(room);
        let mut next = after
            .checked_add(1)
            .ok_or_else(|| bad_cursor(room, after))?;
        let in_range = |offset: u64| before.is_none_or(|b| offset < b);
        let mut events = Vec::new();
        // Short reads (the usual resume after a blip) by direct get.
        while events.len() < limit.min(DIRECT_READS) {
            match self.event_from(&subject, next).await? {
                Some(event) if in_range(event.offset()) => {
                    next = event.offset().saturating_add(1);
                    events.push(event);
                }
                _ => return Ok(events),
            }
        }
        if events.len() >= limit {
            return Ok(events);
        }
        // Long ones with a consumer: cheaper in bulk, but a server object,
        // so it lives only for this call.
        let mut consumer = read_consumer::create(
            &self.stream,
            subject,
            DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
        )
        .await
        .map_err(unavailable)?;
        let name = consumer.cached_info().name.clone();
        let pending = consumer.cached_info().num_pending;
        let read = if pending == 0 {
            Ok(())
        } else {
            self.drain_consumer(&mut consumer, before, limit, &mut events)
                .await
        };
        // Explicitly, not only by the inactivity threshold: hundreds of
        // concurrent reads must not leave hundreds of consumers behind.
        read_consumer::delete(&self.stream, &name).await;
        read.map(|()| events)
    }

    async fn drain_consumer(
        &self,
        consumer: &mut js::consumer::Consumer<pull::Config>,
        before: Option<u64>,
        limit: usize,
        events: &mut Vec<Arc<SharedEvent>>,
    ) -> Result<(), BusError> {
        while events.len() < limit {
            let want = (limit - events.len()).min(CONSUMER_BATCH);
            let mut batch = consumer
                .fetch()
                .max_messages(want)
                .messages()
                .await
                .map_err(unavailable)?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(unavailable)?;
                let info = message.info().map_err(unavailable)?;
                let sequence = info.stream_sequence;
                let pending = info.pending;
                if before.is_some_and(|b| sequence >= b) {
                    return Ok(());
                }
                events.push(self.decode_read(&message.payload, sequence)?);
                got += 1;
                if pending == 0 || events.len() >= limit {
                    return Ok(());
                }
            }
            if got == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Up to `limit` newest events before `before`, oldest first. Walks
    /// backwards along `prev_offset` (exact, thanks to the expected-sequence
    /// append) with direct gets, so it reads only what it returns however
    /// long the room is.
    async fn read_backward(
        &self,
        room: &RoomName,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError> {
        let subject = self.subjects.log(room);
        let mut current = match before {
            None => self.last_event(&subject).await?,
            Some(before) => self.newest_before(&subject, before).await?,
        };
        let mut events = Vec::new();
        while let Some(event) = current {
            let prev = event.event().prev_offset;
            let offset = event.offset();
            events.push(event);
            // `prev < offset` always holds for what we stored; checking it
            // keeps a corrupt record from looping.
            if events.len() >= limit || prev == 0 || prev >= offset {
                break;
            }
            // Not found: retention dropped it, and with it everything older
            // (every retention rule drops a room's oldest events first).
            current = self.event_at(&subject, prev).await?;
        }
        events.reverse();
        Ok(events)
    }

    /// The room's newest event before `before`.
    async fn newest_before(
        &self,
        subject: &str,
        before: u64,
    ) -> Result<Option<Arc<SharedEvent>>, BusError> {
        let Some(last) = self.last_event(subject).await? else {
            return Ok(None);
        };
        if last.offset() < before {
            return Ok(Some(last));
        }
        // The usual case: `before` is one of this room's events.
        if let Some(at) = self.event_at(subject, before).await? {
            let prev = at.event().prev_offset;
            if prev == 0 || prev >= before {
                return Ok(None);
            }
            return self.event_at(subject, prev).await;
        }
        // `before` is not (or no longer) this room's: if the room's oldest
        // retained event is not before it, nothing is.
        match self.event_from(subject, 0).await? {
            Some(first) if first.offset() < before => {}
            _ => return Ok(None),
        }
        // A cursor of another room, or of a dropped message between two of
        // ours: walk back from the end. Bounded by the retention count;
        // clients only get here with cursors they did not get from this room.
        let mut current = Some(last);
        while let Some(event) = current {
            if event.offset() < before {
                return Ok(Some(event));
            }
            let prev = event.event().prev_offset;
            if prev == 0 || prev >= event.offset() {
                return Ok(None);
            }
            current = self.event_at(subject, prev).await?;
        }
        Ok(None)
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
        // Each stored event names its predecessor: if the oldest one we
        // still have after `since` does not follow it, retention dropped
        // some. Look at that one event before reading the rest.
        let subject = self.subjects.log(room);
        let from = since
            .offset()
            .checked_add(1)
            .ok_or_else(|| bad_cursor(room, since.offset()))?;
        let first = match self.event_from(&subject, from).await? {
            Some(first) if first.event().prev_offset == since.offset() => first,
            _ => return Ok(unrecovered(head)),
        };
        // A room holds at most `retention_count` events, so this is bounded.
        let rest = self
            .read_forward(room, first.offset(), None, self.retention_count)
            .await?;
        let mut events = Vec::with_capacity(rest.len() + 1);
        events.push(first);
        events.extend(rest);
        let head = events.last().map_or(head, |e| e.event().cursor.clone());
        Ok(Resume {
            events,
            head,
            recovered: true,
        })
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
        match after {
            Some(after) => self.read_forward(room, after, before, limit).await,
            None => self.read_backward(room, before, limit).await,
        }
    }
}

fn bad_cursor(room: &RoomName, offset: u64) -> BusError {
    BusError::Rejected(CoreError::Protocol(ProtocolError::BadCursor(format!(
        "offset {offset} is past any event of room {room}"
    ))))
}

/// JetStream headers of an atomic batch publish (ADR-50).
const BATCH_ID_HEADER: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE_HEADER: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT_HEADER: &str = "Nats-Batch-Commit";
const EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// "atomic publish is disabled" (the stream no longer allows batches).
const ATOMIC_PUBLISH_DISABLED: u64 = 10174;

/// Which stored message [`RoomLogs::get`] reads.
enum Get<'a> {
    At(u64),
    LastFor(&'a str),
    /// The first message of the subject at or after the sequence.
    NextFor(&'a str, u64),
}

enum BatchOutcome {
    /// Stored on the `count` sequences ending at `last`.
    Committed { epoch: Epoch, last: u64 },
    /// Not stored (or not knowingly): every message gets this answer.
    Failed(BusError),
    /// Refused as a batch: send the messages one at a time.
    Fallback,
}

/// Up to `most` waiting appends from the front of `queue`, fewer if the
/// batch's payloads (`bytes` so far) would pass [`MAX_BATCH_BYTES`].
fn take_batch(queue: &mut VecDeque<Pending>, most: usize, mut bytes: usize) -> Vec<Pending> {
    let mut batch = Vec::new();
    while batch.len() < most {
        let Some(next) = queue.front() else { break };
        let size = next.job.draft.encoded_len();
        if bytes + size > MAX_BATCH_BYTES {
            break;
        }
        bytes += size;
        batch.extend(queue.pop_front());
    }
    batch
}

/// The room's turn, held by the append that writes. Dropped (the write
/// answered, its caller gone, or never received by a caller that went
/// away), it goes to the next waiting append; a waiter whose caller is
/// gone is skipped, its message not written (it was never answered). With
/// no one waiting the room is idle again.
struct Baton {
    queues: Arc<Queues>,
    room: RoomName,
    armed: bool,
}

impl Baton {
    fn new(queues: &Arc<Queues>, room: &RoomName) -> Self {
        Self {
            queues: queues.clone(),
            room: room.clone(),
            armed: true,
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = queues.get_mut(&self.room) else {
            return;
        };
        while let Some(next) = queue.pop_front() {
            let baton = Baton::new(&self.queues, &self.room);
            match next.turn.send(Turn::Write(next.job, baton)) {
                Ok(()) => return,
                // Nobody to take it: disarmed, so its drop does not re-enter.
                Err(Turn::Write(_, mut unused)) => unused.armed = false,
                Err(Turn::Done(_)) => {}
            }
        }
        queues.remove(&self.room);
    }
}

fn contended(room: &RoomName) -> BusError {
    metrics::counter!(names::JETSTREAM_PUBLISH_ERRORS, "reason" => "contended").increment(1);
    tracing::warn!(%room, attempts = APPEND_ATTEMPTS, "room too contended: append given up");
    BusError::Unavailable(format!(
        "room {room} is too contended; retry with the same id"
    ))
}

/// The JetStream API error code of a refused publish, if it was one.
fn api_error_code(err: &PublishError) -> Option<u64> {
    let source = std::error::Error::source(err)?;
    if let Some(api) = source.downcast_ref::<async_nats::jetstream::Error>() {
        return Some(api.error_code().0);
    }
    const MARK: &str = "error code ";
    let text = source.to_string();
    let tail = &text[text.rfind(MARK)? + MARK.len()..];
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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

/// Where a JetStream write failed.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Handing the message to the connection.
    Send,
    /// Waiting for, or reading, JetStream's acknowledgement.
    Ack,
}

/// Why JetStream refused or did not confirm a write: the metric's
/// `reason` label, and whether the message may have been stored anyway.
fn failure_reason(stage: Stage, err: &PublishError) -> (&'static str, bool) {
    let text = err.to_string();
    match (stage, err.kind()) {
        (Stage::Send, _) => ("send", false),
        // No ack in time, or the connection dropped while waiting: the
        // server may well have stored it (seen after reconnects).
        (_, PublishErrorKind::TimedOut) => ("timeout", true),
        (_, PublishErrorKind::BrokenPipe) => ("disconnected", true),
        (_, PublishErrorKind::MaxPayloadExceeded) => ("too_large", false),
        (_, PublishErrorKind::StreamNotFound) => ("no_stream", false),
        _ if text.contains("10054") => ("too_large", false),
        // 10023 "insufficient resources" and 10047: the server's or
        // account's store is full (seen when a flood filled max_file_store).
        _ if text.contains("10023") || text.contains("10047") || text.contains("insufficient") => {
            ("storage_full", false)
        }
        _ => ("refused", false),
    }
}

/// Counts and logs a failed write and turns it into the client's answer.
/// Always `unavailable`: the message was not (knowingly) stored. When it may
/// have been, the answer says so and asks for a retry with the same id,
/// which dedup makes safe.
/// `count` is the number of messages the failed write carried.
fn publish_failed(room: &RoomName, stage: Stage, err: &PublishError, count: u64) -> BusError {
    let (reason, maybe_stored) = failure_reason(stage, err);
    metrics::counter!(names::JETSTREAM_PUBLISH_ERRORS, "reason" => reason).increment(count);
    tracing::warn!(%room, reason, count, %err, "JetStream refused or did not confirm a write");
    if maybe_stored {
        BusError::Unavailable(format!(
            "JetStream did not confirm the write ({err}); it may have been stored: \
             retry with the same id"
        ))
    } else {
        BusError::Unavailable(format!("JetStream did not store the message: {err}"))
    }
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
    use super::{BusError, PublishError, PublishErrorKind, RoomName, Stage};
    #[test]
    fn reads_the_current_sequence_from_a_conflict() {
        let message = "wrong last sequence: wrong last sequence: 8 (code 400, error code 10071)";
        assert_eq!(super::current_last_sequence(message), Some(8));
        assert_eq!(super::current_last_sequence("something else"), None);
    }

    /// An ack timeout may hide a stored message: the answer must not say
    /// "did not store", and must ask for a retry with the same id.
    #[test]
    fn ack_timeout_is_unavailable_and_asks_for_a_retry_with_the_same_id() {
        let room = RoomName::parse("r").expect("room");
        for kind in [PublishErrorKind::TimedOut, PublishErrorKind::BrokenPipe] {
            let err = super::publish_failed(&room, Stage::Ack, &PublishError::new(kind), 1);
            let BusError::Unavailable(message) = &err else {
                panic!("{err:?} is not unavailable");
            };
            assert!(message.contains("retry with the same id"), "{message}");
            assert!(!message.contains("did not store"), "{message}");
        }
    }

    #[test]
    fn refusals_are_classified() {
        let full = PublishError::with_source(
            PublishErrorKind::Other,
            "insufficient resources (code 503, error code 10023)",
        );
        assert_eq!(
            super::failure_reason(Stage::Ack, &full),
            ("storage_full", false)
        );
        let large = PublishError::with_source(
            PublishErrorKind::Other,
            "message size exceeds maximum allowed (code 400, error code 10054)",
        );
        assert_eq!(
            super::failure_reason(Stage::Ack, &large),
            ("too_large", false)
        );
        let timeout = PublishError::new(PublishErrorKind::TimedOut);
        assert_eq!(
            super::failure_reason(Stage::Ack, &timeout),
            ("timeout", true)
        );
        // Every reason is one the telemetry registers at zero.
        let kinds = [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxPayloadExceeded,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::Other,
        ];
        for stage in [Stage::Send, Stage::Ack] {
            for kind in kinds {
                let (reason, _) = super::failure_reason(stage, &PublishError::new(kind));
                assert!(
                    switchboard_telemetry::names::JETSTREAM_PUBLISH_ERROR_REASONS.contains(&reason),
                    "{reason}"
                );
            }
        }
        let err = super::publish_failed(&RoomName::parse("r").expect("room"), Stage::Ack, &full, 1);
        assert!(err.to_string().contains("did not store"), "{err}");
    }
}
