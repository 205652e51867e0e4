//! The gateway side: [`NatsBus`] turns bus calls into NATS requests to the
//! core and room feeds into subscriptions of the republished live subjects.

use crate::subjects::Op;
use crate::wire::{self, EPOCH_HEADER};
use crate::{NatsConfig, NatsError, Subjects};
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event as ClientEvent, Message};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use switchboard_bus::{Bus, BusError, FeedItem, LiveFeed, PublishAck, TraceCarrier};
use switchboard_core::{HistoryQuery, PublishRequest, Resume};
use switchboard_protocol::pb::{self, bus_reply::Reply};
use switchboard_protocol::{Cursor, RoomName, SharedEvent};
use switchboard_telemetry::{TRACE_TARGET, names};
use tokio::sync::broadcast;
use tracing::Instrument;

/// Presence entries are refreshed in chunks of this many per request.
const REFRESH_CHUNK: usize = 500;

/// A NATS connection plus the signal that it came back after a loss: live
/// feeds may have missed events meanwhile and must repair.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) reconnected: broadcast::Sender<()>,
}

pub(crate) async fn connect_with_signal(config: &NatsConfig) -> Result<Connection, NatsError> {
    let (reconnected, _) = broadcast::channel(16);
    let signal = reconnected.clone();
    let lost = Arc::new(AtomicBool::new(false));
    // The client, once made: each (re)connection's server is checked.
    let made: Arc<std::sync::OnceLock<Client>> = Arc::default();
    let made_in_events = made.clone();
    let client = ConnectOptions::new()
        .name(&config.name)
        // Start even if NATS is not up yet: readiness says so meanwhile.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .request_timeout(Some(config.request_timeout))
        .event_callback(move |event| {
            let signal = signal.clone();
            let lost = lost.clone();
            let made = made_in_events.clone();
            async move {
                match event {
                    ClientEvent::Connected => {
                        tracing::info!("NATS connected");
                        if let Some(client) = made.get() {
                            check_server_version(&client.server_info().version);
                        }
                        if lost.swap(false, Ordering::SeqCst) {
                            metrics::counter!(names::NATS_RECONNECTS).increment(1);
                            // No receivers: no live feeds to repair.
                            let _ = signal.send(());
                        }
                    }
                    ClientEvent::Disconnected => {
                        lost.store(true, Ordering::SeqCst);
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            }
        })
        .connect(server_addrs(&config.url)?)
        .await
        .map_err(|err| NatsError::Connect(err.to_string()))?;
    let _ = made.set(client.clone());
    if client.connection_state() == async_nats::connection::State::Connected {
        // Connected before the client was handed over: check it here.
        check_server_version(&client.server_info().version);
    }
    Ok(Connection {
        client,
        reconnected,
    })
}

/// The oldest nats-server release Switchboard is tested against and
/// relies on (per-subject expectations, direct gets, JetStream fixes).
pub const MIN_NATS_VERSION: (u64, u64) = (2, 11);

/// Logs the server's version, and warns below [`MIN_NATS_VERSION`].
fn check_server_version(version: &str) {
    match too_old(version) {
        Some(true) => tracing::warn!(
            version,
            minimum = %format!("{}.{}", MIN_NATS_VERSION.0, MIN_NATS_VERSION.1),
            "nats-server is older than the supported minimum; upgrade it"
        ),
        Some(false) => tracing::info!(version, "nats-server version"),
        None => tracing::warn!(version, "nats-server version unreadable; cannot check it"),
    }
}

/// Whether `version` ("2.10.24", "v2.12.0-RC.1") is below the minimum;
/// `None` when it cannot be read.
fn too_old(version: &str) -> Option<bool> {
    let mut parts = version.trim().trim_start_matches('v').split(['.', '-']);
    let major: u64 = parts.next()?.parse().ok()?;
    let minor: u64 = parts.next()?.parse().ok()?;
    Some((major, minor) < MIN_NATS_VERSION)
}

/// `nats://a:4222,nats://b:4222` → every server of the list, so the
/// client fails over between cluster nodes.
fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, NatsError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|err| NatsError::Config(format!("NATS URL {u:?}: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(NatsError::Config("no NATS URL given".into()));
    }
    Ok(addrs)
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct HeldEntry {
    room: RoomName,
    user: String,
    conn: String,
}

/// `switchboard_bus::Bus` over NATS, for gateways (and the core's own
/// gRPC API, which is a client of the core like any gateway).
pub struct NatsBus {
    client: Client,
    subjects: Subjects,
    timeout: Duration,
    reconnected: broadcast::Sender<()>,
    /// Presence this process holds, refreshed so the core knows it lives.
    held: Mutex<HashSet<HeldEntry>>,
}

impl NatsBus {
    /// Connects and starts the presence refresher (ends with the bus).
    pub async fn connect(config: &NatsConfig) -> Result<Arc<Self>, NatsError> {
        let connection = connect_with_signal(config).await?;
        let bus = Arc::new(Self {
            client: connection.client,
            subjects: config.subjects.clone(),
            timeout: config.request_timeout,
            reconnected: connection.reconnected,
            held: Mutex::new(HashSet::new()),
        });
        let every = (config.presence_ttl / 3).max(Duration::from_millis(100));
        tokio::spawn(refresh_presence(Arc::downgrade(&bus), every));
        Ok(bus)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn call(&self, subject: String, payload: Vec<u8>) -> Result<Reply, BusError> {
        // A disconnected client would queue the request until its timeout;
        // callers deserve `unavailable` at once.
        if self.client.connection_state() != State::Connected {
            return Err(BusError::Unavailable("NATS is not connected".into()));
        }
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "nats.request",
            subject = %subject,
        );
        let mut headers = async_nats::HeaderMap::new();
        for (key, value) in switchboard_telemetry::inject(&span) {
            headers.insert(key.as_str(), value.as_str());
        }
        let request = self
            .client
            .request_with_headers(subject, headers, Bytes::from(payload))
            .instrument(span);
        let reply = match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => {
                use async_nats::client::RequestErrorKind;
                let why = match err.kind() {
                    RequestErrorKind::NoResponders => "no core replica is running".to_owned(),
                    RequestErrorKind::TimedOut => NO_ANSWER.to_owned(),
                    _ => err.to_string(),
                };
                return Err(BusError::Unavailable(why));
            }
            Err(_) => {
                return Err(BusError::Unavailable(NO_ANSWER.into()));
            }
        };
        wire::decode_reply(&reply.payload)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<HeldEntry>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn change_presence(
        &self,
        op: Op,
        room: &RoomName,
        user: &str,
        conn: &str,
    ) -> Result<(), BusError> {
        let change = pb::BusPresenceChange {
            entries: vec![pb::PresenceEntry {
                room: room.to_string(),
                user: user.to_owned(),
                conn: conn.to_owned(),
            }],
        };
        match self
            .call(self.subjects.request(op, room), change.encode_to_vec())
            .await?
        {
            Reply::Done(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> BusError {
    BusError::Unavailable("unexpected reply from the core".into())
}

/// Re-announces every held presence entry, so a crashed gateway's users
/// expire while live ones never do. Each chunk is re-checked against the
/// held set just before it is sent: an entry that left while earlier
/// chunks were in flight is not vouched for again (the core also ignores
/// refreshes of connections that left, for races this cannot close).
async fn refresh_presence(bus: Weak<NatsBus>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(bus) = bus.upgrade() else { break };
        let entries: Vec<HeldEntry> = bus.held().iter().cloned().collect();
        for chunk in entries.chunks(REFRESH_CHUNK) {
            let change = {
                let held = bus.held();
                pb::BusPresenceChange {
                    entries: chunk
                        .iter()
                        .filter(|e| held.contains(*e))
                        .map(|e| pb::PresenceEntry {
                            room: e.room.to_string(),
                            user: e.user.clone(),
                            conn: e.conn.clone(),
                        })
                        .collect(),
                }
            };
            if change.entries.is_empty() {
                continue;
            }
            if let Err(err) = bus
                .call(bus.subjects.presence_refresh(), change.encode_to_vec())
                .await
            {
                tracing::warn!(%err, "presence refresh failed");
            }
        }
    }
}

/// The trace context a stored message carries (set by the core's append).
pub(crate) fn trace_of(headers: Option<&async_nats::HeaderMap>) -> TraceCarrier {
    let mut carrier = TraceCarrier::new();
    if let Some(headers) = headers {
        for key in ["traceparent", "tracestate"] {
            if let Some(value) = headers.get(key) {
                carrier.insert(key.to_owned(), value.as_str().to_owned());
            }
        }
    }
    carrier
}

fn decode_live(message: &Message) -> Option<Arc<SharedEvent>> {
    let headers = message.headers.as_ref()?;
    let sequence = headers
        .get(async_nats::header::NATS_SEQUENCE)?
        .as_str()
        .parse::<u64>()
        .ok()?;
    let epoch = headers.get(EPOCH_HEADER)?.as_str();
    match wire::stored_event(&message.payload, epoch, sequence) {
        Ok(event) => Some(event),
        Err(err) => {
            tracing::warn!(subject = %message.subject, %err, "undecodable live event skipped");
            None
        }
    }
}

/// A request that timed out: the core may still have done it.
const NO_ANSWER: &str = "the core did not answer in time";

/// A publish the core did not answer may have been stored: say so, and
/// that a retry with the same id is safe (dedup), instead of implying loss.
fn publish_outcome_unknown(err: BusError) -> BusError {
    match err {
        BusError::Unavailable(why) if why == NO_ANSWER => BusError::Unavailable(format!(
            "{why}; the message may have been stored: retry with the same id"
        )),
        other => other,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, req: PublishRequest) -> Result<PublishAck, BusError> {
        let payload = pb::BusPublish {
            room: req.room.to_string(),
            user: req.user,
            text: req.text,
            id: req.id.unwrap_or_default(),
        };
        match self
            .call(
                self.subjects.request(Op::Publish, &req.room),
                payload.encode_to_vec(),
            )
            .await
            .map_err(publish_outcome_unknown)?
        {
            Reply::Publish(ack) => Ok(PublishAck {
                cursor: ack.cursor.parse().map_err(|_| unexpected())?,
                duplicate: ack.duplicate,
            }),
            _ => Err(unexpected()),
        }
    }

    async fn resume(&self, room: &RoomName, since: Option<&Cursor>) -> Result<Resume, BusError> {
        let payload = pb::SubscribeRequest {
            room: room.to_string(),
            since: since.map(Cursor::to_string).unwrap_or_default(),
        };
        match self
            .call(
                self.subjects.request(Op::Resume, room),
                payload.encode_to_vec(),
            )
            .await?
        {
            Reply::Resume(reply) => Ok(Resume {
                events: wire::events_from_proto(reply.events)?,
                head: reply.head.parse().map_err(|_| unexpected())?,
                recovered: reply.recovered,
            }),
            _ => Err(unexpected()),
        }
    }

    async fn feed(&self, room: &RoomName) -> Result<LiveFeed, BusError> {
        if self.client.connection_state() != State::Connected {
            return Err(BusError::Unavailable("NATS is not connected".into()));
        }
        let subscription = self
            .client
            .subscribe(self.subjects.live(room))
            .await
            .map_err(|err| BusError::Unavailable(err.to_string()))?;
        // The server has the subscription once a round trip completes, so
        // a resume asked after this returns cannot miss an event.
        self.client
            .flush()
            .await
            .map_err(|err| BusError::Unavailable(err.to_string()))?;
        let state = LiveState {
            subscription,
            reconnected: Some(self.reconnected.subscribe()),
        };
        Ok(futures::stream::unfold(state, LiveState::next).boxed())
    }

    async fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError> {
        let payload = pb::HistoryRequest {
            room: room.to_string(),
            after: query.after.map(|c| c.to_string()).unwrap_or_default(),
            before: query.before.map(|c| c.to_string()).unwrap_or_default(),
            limit: query
                .limit
                .map_or(0, |l| u32::try_from(l).unwrap_or(u32::MAX)),
        };
        match self
            .call(
                self.subjects.request(Op::History, room),
                payload.encode_to_vec(),
            )
            .await?
        {
            Reply::Events(events) => wire::events_from_proto(events.events),
            _ => Err(unexpected()),
        }
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<String>, BusError> {
        let payload = pb::PresenceRequest {
            room: room.to_string(),
        };
        match self
            .call(
                self.subjects.request(Op::Presence, room),
                payload.encode_to_vec(),
            )
            .await?
        {
            Reply::Users(users) => Ok(users.users),
            _ => Err(unexpected()),
        }
    }

    async fn join(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError> {
        // Held first: if the core is unreachable now, the refresher
        // announces the entry once it is back.
        self.held().insert(HeldEntry {
            room: room.clone(),
            user: user.to_owned(),
            conn: conn.to_owned(),
        });
        self.change_presence(Op::Join, room, user, conn).await
    }

    async fn leave(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError> {
        // Forgotten first: if the core misses this, the entry expires.
        self.held().remove(&HeldEntry {
            room: room.clone(),
            user: user.to_owned(),
            conn: conn.to_owned(),
        });
        self.change_presence(Op::Leave, room, user, conn).await
    }

    fn is_ready(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

struct LiveState {
    subscription: async_nats::Subscriber,
    reconnected: Option<broadcast::Receiver<()>>,
}

impl LiveState {
    /// Live events, plus `Lagged` after every reconnect: events published
    /// while the connection was down never reach this subscription.
    async fn next(mut self) -> Option<(FeedItem, Self)> {
        loop {
            let reconnected = async {
                match self.reconnected.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = self.subscription.next() => {
                    let message = message?;
                    if let Some(event) = decode_live(&message) {
                        let trace = trace_of(message.headers.as_ref());
                        return Some((FeedItem::Event(event, trace), self));
                    }
                }
                signal = reconnected => match signal {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((FeedItem::Lagged, self));
                    }
                    Err(broadcast::error::RecvError::Closed) => self.reconnected = None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::too_old;
    use switchboard_bus::BusError;

    #[test]
    fn versions_below_2_11_are_too_old() {
        assert_eq!(too_old("2.10.24"), Some(true));
        assert_eq!(too_old("1.4.1"), Some(true));
        assert_eq!(too_old("2.11.0"), Some(false));
        assert_eq!(too_old("v2.12.0-RC.1"), Some(false));
        assert_eq!(too_old("2.15.1"), Some(false));
        assert_eq!(too_old("3.0.0"), Some(false));
        assert_eq!(too_old(""), None);
        assert_eq!(too_old("nats"), None);
    }

    /// A publish timed out at the gateway may have been stored.
    #[test]
    fn unanswered_publish_asks_for_a_retry_with_the_same_id() {
        let err = super::publish_outcome_unknown(BusError::Unavailable(super::NO_ANSWER.into()));
        assert!(err.to_string().contains("retry with the same id"), "{err}");
        let other = super::publish_outcome_unknown(BusError::Unavailable("no core".into()));
        assert_eq!(other.to_string(), "core unavailable: no core");
    }

    #[test]
    fn url_lists() {
        let addrs = super::server_addrs("nats://127.0.0.1:1, nats://127.0.0.1:2").expect("valid");
        assert_eq!(addrs.len(), 2);
        assert!(super::server_addrs("").is_err());
        assert!(super::server_addrs("nats://host:notaport").is_err());
    }
}
