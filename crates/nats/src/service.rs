//! The core side: answers bus requests from every gateway (queue group,
//! so replicas share the load) and is the only writer of JetStream.

use crate::presence::{ConnChange, PresenceStore, Transition};
use crate::store::RoomLogs;
use crate::subjects::Op;
use crate::wire::{self, encode_error, encode_reply};
use crate::{NatsConfig, NatsError, Subjects};
use async_nats::Client;
use async_nats::connection::State;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_bus::BusError;
use switchboard_core::{CoreConfig, CoreError, HistoryQuery};
use switchboard_protocol::pb::{self, bus_reply::Reply};
use switchboard_protocol::{Cursor, ErrorCode, EventFields, RoomName};
use switchboard_telemetry::TRACE_TARGET;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Requests handled at once by one core; more wait in the subscription.
const MAX_IN_FLIGHT: usize = 512;
/// How long a stopping core lets in-flight requests finish.
const DRAIN: Duration = Duration::from_secs(5);
/// Members one refresh chunk or sweep updates at once: enough to hide
/// round trips, few enough to leave the server to other requests.
const REFRESH_PARALLEL: usize = 16;

/// A running core service.
pub struct CoreService {
    ready: Arc<AtomicBool>,
    client: Client,
    /// The core once set up, for gateways in this process.
    serving: Arc<OnceLock<Arc<Inner>>>,
}

pub(crate) struct Inner {
    subjects: Subjects,
    logs: RoomLogs,
    presence: PresenceStore,
    config: CoreConfig,
    client: Client,
}

impl CoreService {
    /// Sets up the stream and bucket (retrying until NATS answers or
    /// `shutdown`), then serves until `shutdown`.
    pub async fn start(
        client: Client,
        nats: NatsConfig,
        config: CoreConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), NatsError> {
        let ready = Arc::new(AtomicBool::new(false));
        let serving = Arc::new(OnceLock::new());
        let service = Self {
            ready: ready.clone(),
            client: client.clone(),
            serving: serving.clone(),
        };
        let requests = client
            .queue_subscribe(nats.subjects.requests(), nats.subjects.queue_group())
            .await
            .map_err(|err| NatsError::Subscribe(err.to_string()))?;
        let refreshes = client
            .queue_subscribe(
                nats.subjects.presence_refresh(),
                nats.subjects.queue_group(),
            )
            .await
            .map_err(|err| NatsError::Subscribe(err.to_string()))?;
        let task = tokio::spawn(async move {
            let Some(inner) = set_up(client, &nats, config, &shutdown).await else {
                return;
            };
            let _ = serving.set(inner.clone());
            ready.store(true, Ordering::SeqCst);
            serve(inner, requests, refreshes, nats.presence_ttl, shutdown).await;
            ready.store(false, Ordering::SeqCst);
        });
        Ok((service, task))
    }

    /// Ready: the stream and bucket exist and NATS is connected.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.client.connection_state() == State::Connected
    }

    /// A bus for a gateway in this process (standalone with NATS): its
    /// publishes, resumes and history reads are answered by this core
    /// directly instead of by a request over NATS that this same core
    /// would answer, and everything else goes through `remote`. See
    /// [`crate::local`].
    pub fn local_bus(&self, remote: Arc<crate::NatsBus>) -> Arc<dyn switchboard_bus::Bus> {
        Arc::new(crate::local::LocalFirstBus::new(
            remote,
            self.serving.clone(),
            self.ready.clone(),
        ))
    }
}

async fn set_up(
    client: Client,
    nats: &NatsConfig,
    config: CoreConfig,
    shutdown: &CancellationToken,
) -> Option<Arc<Inner>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(jetstream_timeout(nats.request_timeout))
            .build(client.clone());
        let attempt = async {
            let logs = RoomLogs::open(js.clone(), nats, &config).await?;
            let presence = PresenceStore::open(&js, nats).await?;
            Ok::<_, NatsError>((logs, presence))
        };
        match attempt.await {
            Ok((logs, presence)) => {
                return Some(Arc::new(Inner {
                    subjects: nats.subjects.clone(),
                    logs,
                    presence,
                    config,
                    client,
                }));
            }
            Err(err) => tracing::warn!(%err, ?backoff, "JetStream set-up failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Bound of each JetStream call of the core (publish ack, direct get,
/// consumer request): half the gateways' request timeout, so the core's own
/// answer reaches the client before the gateway gives up — in particular
/// "it may have been stored: retry with the same id" after an ack timeout,
/// rather than a bare "did not answer in time".
fn jetstream_timeout(request_timeout: Duration) -> Duration {
    (request_timeout / 2).max(Duration::from_millis(250))
}

async fn serve(
    inner: Arc<Inner>,
    mut requests: async_nats::Subscriber,
    mut refreshes: async_nats::Subscriber,
    presence_ttl: Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = JoinSet::new();
    let sweeper = tokio::spawn(sweep_periodically(
        inner.clone(),
        (presence_ttl / 3).max(Duration::from_millis(100)),
        shutdown.clone(),
    ));
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = requests.next() => message,
            message = refreshes.next() => message,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        let Some(message) = message else { break };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let inner = inner.clone();
        in_flight.spawn(async move {
            inner.answer(message).await;
            drop(permit);
        });
    }
    let _ = requests.unsubscribe().await;
    let _ = refreshes.unsubscribe().await;
    // A sweep in progress finishes like any request: a member it just
    // changed still gets its leave event.
    let drained = tokio::time::timeout(DRAIN, async {
        while in_flight.join_next().await.is_some() {}
        let _ = sweeper.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("core stopped with requests still in flight");
    }
}

/// Sweeps every `every`, one sweep at a time: the next starts only after
/// the previous one finished (a slow sweep delays the next instead of
/// piling up beside it, which on a big bucket would only add load). Stops
/// at `shutdown`, after the sweep in progress.
async fn sweep_periodically(inner: Arc<Inner>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        inner.sweep().await;
        if started.elapsed() > every {
            tracing::warn!(
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "presence sweep took longer than its period; the next one was delayed"
            );
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn bad(message: impl Into<String>) -> BusError {
    BusError::Remote {
        code: ErrorCode::BadFrame,
        message: message.into(),
    }
}

fn decode<M: prost::Message + Default>(payload: &[u8]) -> Result<M, BusError> {
    M::decode(payload).map_err(|err| bad(format!("undecodable request: {err}")))
}

fn parse_cursor(text: &str) -> Result<Option<Cursor>, BusError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|err| BusError::Rejected(CoreError::Protocol(err)))
}

impl Inner {
    async fn answer(&self, message: async_nats::Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "core.request",
            otel.name = tracing::field::Empty,
            room = tracing::field::Empty,
            cursor = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        switchboard_telemetry::set_remote_parent(
            &span,
            &crate::client::trace_of(message.headers.as_ref()),
        );
        let request = if message.subject.as_str() == self.subjects.presence_refresh() {
            span.record("otel.name", "core.presence_refresh");
            None
        } else {
            let parsed = self.subjects.parse_request(&message.subject);
            if let Some((op, room)) = &parsed {
                span.record("otel.name", format!("core.{}", op.as_str()));
                span.record("room", room.as_str());
            }
            Some(parsed)
        };
        // After the name: reading the trace id starts the exported span.
        switchboard_telemetry::record_trace_id(&span);
        let outcome = match request {
            None => {
                self.refresh(&message.payload)
                    .instrument(span.clone())
                    .await
            }
            Some(Some((op, room))) => {
                self.dispatch(op, room, &message.payload)
                    .instrument(span.clone())
                    .await
            }
            Some(None) => Err(bad(format!("unknown request subject {}", message.subject))),
        };
        if let Ok(Reply::Publish(ack)) = &outcome {
            span.record("cursor", ack.cursor.as_str());
        }
        let payload = match outcome {
            Ok(reply) => encode_reply(reply),
            Err(err) => encode_error(err.code(), &err.to_string()),
        };
        if let Err(err) = self.client.publish(reply_to, payload).await {
            tracing::warn!(%err, "could not reply to a bus request");
        }
    }

    /// Validates and appends one publish: the one path for requests over
    /// NATS and for a gateway in this process.
    pub(crate) async fn publish(
        &self,
        room: &RoomName,
        req: pb::BusPublish,
    ) -> Result<(Cursor, bool), BusError> {
        switchboard_core::validate_text(&req.text, self.config.max_text_bytes)?;
        switchboard_core::validate_user(&req.user)?;
        let id = (!req.id.is_empty()).then_some(req.id);
        if let Some(id) = &id {
            switchboard_core::validate_publish_id(id)?;
        }
        let draft = EventFields {
            room: room.to_string(),
            r#type: pb::EventType::Message as i32,
            id: id.clone().unwrap_or_default(),
            user: req.user,
            text: req.text,
            ts_unix_ms: unix_ms(),
            ..Default::default()
        };
        self.logs.append(room, draft, id).await
    }

    pub(crate) fn logs(&self) -> &RoomLogs {
        &self.logs
    }

    async fn dispatch(&self, op: Op, room: RoomName, payload: &[u8]) -> Result<Reply, BusError> {
        match op {
            Op::Publish => {
                let (cursor, duplicate) = self.publish(&room, decode(payload)?).await?;
                Ok(Reply::Publish(pb::BusPublishAck {
                    cursor: cursor.to_string(),
                    duplicate,
                }))
            }
            Op::Resume => {
                let req: pb::SubscribeRequest = decode(payload)?;
                let since = parse_cursor(&req.since)?;
                let resume = self.logs.resume(&room, since.as_ref()).await?;
                Ok(Reply::Resume(pb::BusResumeReply {
                    events: wire::events_to_proto(&resume.events),
                    head: resume.head.to_string(),
                    recovered: resume.recovered,
                }))
            }
            Op::History => {
                let req: pb::HistoryRequest = decode(payload)?;
                let query = HistoryQuery {
                    after: parse_cursor(&req.after)?,
                    before: parse_cursor(&req.before)?,
                    limit: (req.limit != 0).then_some(req.limit as usize),
                };
                let events = self.logs.history(&room, &query).await?;
                Ok(Reply::Events(pb::HistoryResponse {
                    room: room.to_string(),
                    events: wire::events_to_proto(&events),
                }))
            }
            Op::Presence => Ok(Reply::Users(pb::PresenceResponse {
                room: room.to_string(),
                users: self.presence.users(&room).await?,
            })),
            Op::Join | Op::Leave => {
                let change: pb::BusPresenceChange = decode(payload)?;
                let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for entry in change.entries {
                    switchboard_core::validate_user(&entry.user)?;
                    if entry.room != room.as_str() {
                        return Err(bad("presence entry for another room"));
                    }
                    by_user.entry(entry.user).or_default().push(entry.conn);
                }
                let joining = op == Op::Join;
                for (user, conns) in by_user {
                    let changes = conns
                        .into_iter()
                        .map(|conn| {
                            if joining {
                                ConnChange::Join(conn)
                            } else {
                                ConnChange::Leave(conn)
                            }
                        })
                        .collect();
                    let transition = self.presence.change(&room, &user, changes).await?;
                    self.announce(&room, &user, transition).await?;
                }
                Ok(Reply::Done(true))
            }
        }
    }

    /// A gateway vouches for a chunk of its connections. Each member is
    /// one compare-and-set on its own key, so the cost per entry is
    /// constant; a member the core did not know yet (it missed the join)
    /// joins now, but a connection that left meanwhile stays gone.
    async fn refresh(&self, payload: &[u8]) -> Result<Reply, BusError> {
        let change: pb::BusPresenceChange = decode(payload)?;
        let mut by_member: BTreeMap<(RoomName, String), Vec<String>> = BTreeMap::new();
        for entry in change.entries {
            let Ok(room) = RoomName::parse(&entry.room) else {
                continue;
            };
            if switchboard_core::validate_user(&entry.user).is_err() {
                continue;
            }
            by_member
                .entry((room, entry.user))
                .or_default()
                .push(entry.conn);
        }
        let outcomes: Vec<Result<(), BusError>> = futures::stream::iter(by_member)
            .map(|((room, user), conns)| async move {
                let changes = conns.into_iter().map(ConnChange::Refresh).collect();
                let transition = self.presence.change(&room, &user, changes).await?;
                self.announce(&room, &user, transition).await
            })
            .buffer_unordered(REFRESH_PARALLEL)
            .collect()
            .await;
        outcomes.into_iter().collect::<Result<(), _>>()?;
        Ok(Reply::Done(true))
    }

    /// Prunes connections whose gateway stopped refreshing them (one read
    /// of the bucket, then one compare-and-set per stale member), migrates
    /// keys of the old per-room layout, and notices a recreated stream.
    async fn sweep(&self) {
        if let Err(err) = self.logs.refresh_epoch().await {
            tracing::debug!(%err, "epoch check failed");
        }
        let started = std::time::Instant::now();
        let scan = match self.presence.sweep_scan().await {
            Ok(scan) => scan,
            Err(err) => {
                tracing::debug!(%err, "presence sweep skipped");
                return;
            }
        };
        for room in &scan.legacy {
            self.migrate_legacy(room).await;
        }
        let stale = scan.stale.len();
        futures::stream::iter(scan.stale)
            .for_each_concurrent(REFRESH_PARALLEL, |member| async move {
                let outcome = match self
                    .presence
                    .update(&member.room, &member.user, |_, _| {})
                    .await
                {
                    Ok(transition) => self.announce(&member.room, &member.user, transition).await,
                    Err(err) => Err(err),
                };
                if let Err(err) = outcome {
                    tracing::warn!(room = %member.room, %err, "presence sweep failed");
                }
            })
            .await;
        tracing::debug!(
            keys = scan.keys,
            stale,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "presence sweep done"
        );
    }

    /// Moves the users of an old per-room key into member keys, so an
    /// upgrade neither repeats the join events of present users nor
    /// forgets the leave of users whose gateway died meanwhile.
    async fn migrate_legacy(&self, room: &RoomName) {
        let legacy = match self.presence.take_legacy(room).await {
            Ok(Some(legacy)) => legacy,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%room, %err, "old per-room presence key not migrated");
                return;
            }
        };
        tracing::info!(
            %room,
            present = legacy.fresh.len(),
            stale = legacy.stale.len(),
            "old per-room presence key migrated"
        );
        for (user, conns) in &legacy.fresh {
            let adopted = self
                .presence
                .update(room, user, |member, _| {
                    for (conn, seen) in conns {
                        if !member.gone.contains_key(conn) {
                            member.conns.entry(conn.clone()).or_insert(*seen);
                        }
                    }
                })
                .await;
            // A `Joined` here was announced under the old layout already.
            if let Err(err) = adopted {
                tracing::warn!(%room, %err, "presence of a migrated user lost");
            }
        }
        for user in &legacy.stale {
            // Unless a refresh already made them a member again.
            let outcome = match self.presence.is_member(room, user).await {
                Ok(true) => Ok(()),
                Ok(false) => self.announce(room, user, Some(Transition::Left)).await,
                Err(err) => Err(err),
            };
            if let Err(err) = outcome {
                tracing::warn!(%room, %err, "leave of a migrated user not stored");
            }
        }
    }

    /// Stores the join or leave event of a presence transition.
    async fn announce(
        &self,
        room: &RoomName,
        user: &str,
        transition: Option<Transition>,
    ) -> Result<(), BusError> {
        let kind = match transition {
            None => return Ok(()),
            Some(Transition::Joined) => pb::EventType::Join,
            Some(Transition::Left) => pb::EventType::Leave,
        };
        let draft = EventFields {
            room: room.to_string(),
            r#type: kind as i32,
            user: user.to_owned(),
            ts_unix_ms: unix_ms(),
            ..Default::default()
        };
        self.logs.append(room, draft, None).await?;
        Ok(())
    }
}
