//! One client connection speaking the Switchboard protocol, whatever the
//! transport. A transport parses frames into [`ClientFrame`]s, hands them
//! to [`Session::handle`], and writes what arrives on the session's queue;
//! everything the protocol decides happens here, once.

use crate::conn::{CloseReason, ConnControl, Outbound, Subscribed};
use crate::hub::Subscriber;
use crate::pipeline::{PUBLISHES_IN_FLIGHT, Published, Publishes};
use crate::queue::{self, QueueReceiver, QueueSender};
use crate::ratelimit::TokenBucket;
use crate::{ConnectionSlot, Gateway, GatewayError, Transport};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;
use switchboard_auth::Identity;
use switchboard_bus::PublishAck;
use switchboard_protocol::frames::{BadFrame, ClientFrame, ServerFrame};
use switchboard_protocol::{Cursor, ErrorCode, RoomName};
use switchboard_telemetry::names;
use tokio::task::AbortHandle;

/// How many times the publish rate any frame may arrive at.
const FRAME_BUDGET_FACTOR: f64 = 4.0;

/// The protocol state of one connection.
pub struct Session {
    gateway: Arc<Gateway>,
    id: u64,
    /// Unique across gateway processes: presence is counted per connection.
    conn_key: String,
    identity: Identity,
    transport: Transport,
    rooms: HashSet<RoomName>,
    bucket: TokenBucket,
    /// Every frame, whatever it asks, spends from this larger budget, so a
    /// flood of cheap-looking requests (history, presence, pings, garbage)
    /// cannot monopolise the gateway.
    frames: TokenBucket,
    /// History events and presence users read, charged by reply size.
    reads: TokenBucket,
    /// The connection's place under the caps (and its client address,
    /// for per-address limits); freed with the session.
    slot: ConnectionSlot,
    tx: QueueSender,
    control: Arc<ConnControl>,
    expiry: Option<AbortHandle>,
    /// Publishes in flight; boxed and made on the first publish, so a
    /// connection that only listens does not carry it.
    publishes: Option<Box<Publishes>>,
}

impl Session {
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        id: u64,
        conn_key: String,
        identity: Identity,
        transport: Transport,
        slot: ConnectionSlot,
    ) -> (Self, QueueReceiver) {
        let limits = gateway.limits();
        let reads = TokenBucket::new(limits.read_rate, limits.read_burst);
        let (tx, rx) = queue::channel(limits.outbound_queue);
        let bucket = TokenBucket::new(limits.publish_rate, limits.publish_burst);
        let frames = TokenBucket::new(
            limits.publish_rate * FRAME_BUDGET_FACTOR,
            limits.publish_burst * FRAME_BUDGET_FACTOR,
        );
        let control = ConnControl::new();
        let expiry = arm_expiry(&control, identity.expires_at);
        metrics::gauge!(names::CONNECTIONS, "transport" => transport.as_str()).increment(1.0);
        metrics::counter!(names::CONNECTIONS_TOTAL, "transport" => transport.as_str()).increment(1);
        let session = Self {
            gateway,
            id,
            conn_key,
            identity,
            transport,
            rooms: HashSet::new(),
            bucket,
            frames,
            reads,
            slot,
            tx,
            control,
            expiry,
            publishes: None,
        };
        (session, rx)
    }

    pub fn control(&self) -> &Arc<ConnControl> {
        &self.control
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Executes one client command; replies are queued in order with
    /// events. A publish is only started here: its acknowledgement is
    /// queued when it is stored ([`Session::published`]); any other
    /// command first waits for the publishes before it (`pipeline.rs`).
    pub async fn handle(&mut self, frame: ClientFrame) {
        if !self.frames.try_take() {
            let id = match &frame {
                ClientFrame::Publish { id, .. } => id.clone(),
                _ => None,
            };
            self.flooding(id).await;
            return;
        }
        if !matches!(frame, ClientFrame::Publish { .. }) {
            self.settle_publishes().await;
        }
        let (id, outcome) = match frame {
            ClientFrame::Subscribe { room, since } => {
                // Subscribe queues its own error (it must end the hold).
                self.subscribe(&room, since.as_deref()).await.ok();
                return;
            }
            ClientFrame::Unsubscribe { room } => match self.unsubscribe(&room).await {
                // The confirmation was queued with the end of delivery.
                Ok(()) => return,
                Err(err) => (None, Err(err)),
            },
            ClientFrame::Publish { room, text, id } => {
                match self.start_publish(&room, text, id.clone()).await {
                    Ok(()) => return,
                    Err(err) => (id, Err(err)),
                }
            }
            ClientFrame::History {
                room,
                before,
                after,
                limit,
            } => {
                let outcome = match self.take_read_budget() {
                    Err(err) => Err(err),
                    Ok(()) => self
                        .gateway
                        .history(
                            &self.identity,
                            &room,
                            after.as_deref(),
                            before.as_deref(),
                            limit,
                        )
                        .await
                        .map(|(room, events)| {
                            self.reads.spend(events.len() as f64);
                            ServerFrame::History {
                                room: room.to_string(),
                                events,
                            }
                        }),
                };
                (None, outcome)
            }
            ClientFrame::Presence { room } => {
                let outcome =
                    match self.take_read_budget() {
                        Err(err) => Err(err),
                        Ok(()) => self.gateway.presence(&self.identity, &room).await.map(
                            |(room, users)| {
                                self.reads.spend(users.len() as f64);
                                ServerFrame::Presence {
                                    room: room.to_string(),
                                    users,
                                }
                            },
                        ),
                    };
                (None, outcome)
            }
            ClientFrame::Ping => (None, Ok(ServerFrame::Pong)),
            ClientFrame::Refresh { token } => (None, self.refresh(&token).await),
        };
        let frame = outcome.unwrap_or_else(|err| self.error_frame(id, &err));
        self.push(Outbound::frame(frame)).await;
    }

    /// Checks a publish now and starts it; at the in-flight bound, first
    /// waits until an earlier one is answered.
    async fn start_publish(
        &mut self,
        room: &str,
        text: String,
        id: Option<String>,
    ) -> Result<(), GatewayError> {
        self.take_publish_token()?;
        let prepared =
            self.gateway
                .prepare_publish(&self.identity, room, text, id.clone(), self.transport)?;
        let bus = self.gateway.bus();
        let publishes = self
            .publishes
            .get_or_insert_with(|| Box::new(Publishes::new(bus.clone())));
        publishes.push(id, prepared);
        while self
            .publishes
            .as_ref()
            .is_some_and(|p| p.len() >= PUBLISHES_IN_FLIGHT)
        {
            self.answer_one().await;
        }
        Ok(())
    }

    /// The next publish of this connection that was stored or refused;
    /// pending while none is in flight. Cancel-safe, so a transport can
    /// race it against reading its next frame; hand the result to
    /// [`Session::reply_published`].
    pub async fn published(&mut self) -> Published {
        match self.publishes.as_mut() {
            Some(publishes) => publishes.next().await,
            None => std::future::pending().await,
        }
    }

    /// Queues the acknowledgement (or the error) of a finished publish.
    pub async fn reply_published(&mut self, published: Published) {
        let Published { id, outcome } = published;
        let frame = match outcome {
            Ok((room, ack)) => ServerFrame::Ack {
                id,
                room: room.to_string(),
                cursor: ack.cursor.to_string(),
                duplicate: ack.duplicate,
            },
            Err(err) => self.error_frame(id, &err),
        };
        self.push(Outbound::frame(frame)).await;
    }

    async fn answer_one(&mut self) {
        if self.publishes.as_ref().is_none_or(|p| p.is_empty()) {
            return;
        }
        let published = self.published().await;
        self.reply_published(published).await;
    }

    /// Waits until every publish in flight is answered.
    pub async fn settle_publishes(&mut self) {
        while self.publishes.as_ref().is_some_and(|p| !p.is_empty()) {
            self.answer_one().await;
        }
    }

    /// Replaces the connection's credentials with a new token of the same
    /// user (spec §7): rooms it no longer allows are left (with a
    /// `forbidden` error each), and the expiry timer follows the new
    /// `exp`. A refused refresh changes nothing: the old token stays until
    /// it expires.
    async fn refresh(&mut self, token: &str) -> Result<ServerFrame, GatewayError> {
        if !self.gateway.requires_token() {
            return Err(GatewayError::refused(
                ErrorCode::BadFrame,
                "this server does not use tokens; there is nothing to refresh",
            ));
        }
        let identity = self.gateway.authenticate_fresh(Some(token), None).await?;
        if identity.user != self.identity.user {
            return Err(GatewayError::refused(
                ErrorCode::Unauthorized,
                format!(
                    "a refresh must keep the user: this connection is {}, the token is for another sub",
                    self.identity.user
                ),
            ));
        }
        let dropped: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|room| !identity.can_subscribe(room))
            .cloned()
            .collect();
        let exp = identity
            .expires_at
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        if let Some(old) = self.expiry.take() {
            old.abort();
        }
        self.expiry = arm_expiry(&self.control, identity.expires_at);
        self.identity = identity;
        for room in dropped {
            if self.unsubscribe(room.as_str()).await.is_ok() {
                let err = GatewayError::refused(
                    ErrorCode::Forbidden,
                    format!("the refreshed token no longer allows {room}; unsubscribed"),
                );
                let frame = self.error_frame(None, &err);
                self.push(Outbound::frame(frame)).await;
            }
        }
        metrics::counter!(names::TOKEN_REFRESHES).increment(1);
        Ok(ServerFrame::Refreshed { exp })
    }

    /// Answers a frame that could not be parsed; the connection stays open.
    pub async fn reject(&mut self, bad: BadFrame) {
        if !self.frames.try_take() {
            self.flooding(bad.id).await;
            return;
        }
        let err = GatewayError::refused(ErrorCode::BadFrame, bad.message);
        let frame = self.error_frame(bad.id, &err);
        self.push(Outbound::frame(frame)).await;
    }

    async fn flooding(&mut self, id: Option<String>) {
        metrics::counter!(names::RATE_LIMITED, "transport" => self.transport.as_str()).increment(1);
        let err = GatewayError::refused(
            ErrorCode::RateLimited,
            "too many frames; slow down (this frame was not executed)",
        );
        let frame = self.error_frame(id, &err);
        self.push(Outbound::frame(frame)).await;
    }

    /// Queues an error frame for a refusal the transport detected.
    pub async fn reject_with(&mut self, id: Option<String>, err: &GatewayError) {
        let frame = self.error_frame(id, err);
        self.push(Outbound::frame(frame)).await;
    }

    fn error_frame(&self, id: Option<String>, err: &GatewayError) -> ServerFrame {
        metrics::counter!(names::ERRORS, "code" => err.code().as_str()).increment(1);
        ServerFrame::Error {
            id,
            code: err.code(),
            message: err.to_string(),
        }
    }

    /// Subscribes and queues `subscribed`, the missed events and then live
    /// events; on failure queues the error and returns it.
    pub async fn subscribe(&mut self, room: &str, since: Option<&str>) -> Result<(), GatewayError> {
        let outcome = self.try_subscribe(room, since).await;
        if let Err(err) = &outcome {
            let frame = self.error_frame(None, err);
            let item = match RoomName::parse(room) {
                Ok(room) if !self.rooms.contains(&room) => Outbound::ended(room, frame),
                _ => Outbound::frame(frame),
            };
            self.push(item).await;
        }
        outcome
    }

    async fn try_subscribe(&mut self, room: &str, since: Option<&str>) -> Result<(), GatewayError> {
        let room = RoomName::parse(room)?;
        if !self.identity.can_subscribe(&room) {
            return Err(GatewayError::refused(
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {room}"),
            ));
        }
        if self.rooms.contains(&room) {
            return Err(GatewayError::refused(
                ErrorCode::BadFrame,
                format!("already subscribed to {room}; unsubscribe first to resume elsewhere"),
            ));
        }
        let max_rooms = self.gateway.limits().max_rooms_per_connection;
        if self.rooms.len() >= max_rooms {
            return Err(GatewayError::refused(
                ErrorCode::Forbidden,
                format!("room limit reached: at most {max_rooms} rooms per connection"),
            ));
        }
        let since: Option<Cursor> = since.map(str::parse).transpose()?;
        // Recorded before the first await: if this call is cancelled there
        // (the client went away mid-subscribe), dropping the session undoes
        // the hub registration and the presence entry like any other room.
        self.rooms.insert(room.clone());
        let subscribed = self.start_subscription(&room, since.as_ref()).await;
        let resume = match subscribed {
            Ok(resume) => resume,
            Err(err) => {
                self.rooms.remove(&room);
                self.gateway.hub().unsubscribe(&room, self.id);
                return Err(err);
            }
        };
        if since.is_some() {
            let result = if resume.recovered {
                "recovered"
            } else {
                "lost"
            };
            metrics::counter!(names::RESUMES, "result" => result).increment(1);
        }
        tracing::debug!(%room, head = %resume.head, recovered = resume.recovered, replay = resume.events.len(), "subscribed");
        let gateway = self.gateway.clone();
        self.push(Outbound::Subscribed(Box::new(Subscribed {
            room: room.clone(),
            head: resume.head,
            recovered: resume.recovered,
            replay: resume.events,
        })))
        .await;
        if let Err(err) = gateway
            .bus()
            .join(&room, &self.identity.user, &self.conn_key)
            .await
        {
            tracing::warn!(%room, %err, "presence join failed");
        }
        Ok(())
    }

    /// Registers with the hub, then reads what the client missed.
    async fn start_subscription(
        &mut self,
        room: &RoomName,
        since: Option<&Cursor>,
    ) -> Result<switchboard_core::Resume, GatewayError> {
        self.push(Outbound::Subscribing(room.clone())).await;
        let subscriber = Subscriber {
            tx: self.tx.clone(),
            control: self.control.clone(),
        };
        self.gateway
            .hub()
            .subscribe(room, self.id, subscriber)
            .await?;
        // The hub's feed is live, so nothing after this head can be missed.
        Ok(self.gateway.bus().resume(room, since).await?)
    }

    async fn unsubscribe(&mut self, room: &str) -> Result<(), GatewayError> {
        let room = RoomName::parse(room)?;
        if !self.rooms.remove(&room) {
            return Err(GatewayError::refused(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {room}"),
            ));
        }
        self.gateway.hub().unsubscribe(&room, self.id);
        if let Err(err) = self
            .gateway
            .bus()
            .leave(&room, &self.identity.user, &self.conn_key)
            .await
        {
            tracing::warn!(%room, %err, "presence leave failed");
        }
        let frame = ServerFrame::Unsubscribed {
            room: room.to_string(),
        };
        self.push(Outbound::ended(room, frame)).await;
        Ok(())
    }

    /// Rate-limits, then publishes through the gateway's shared checks.
    pub async fn publish(
        &mut self,
        room: &str,
        text: String,
        id: Option<String>,
    ) -> Result<(RoomName, PublishAck), GatewayError> {
        self.take_publish_token()?;
        self.gateway
            .publish(&self.identity, room, text, id, self.transport)
            .await
    }

    /// Publishes under a per-message user name, as the seed `ChatService`
    /// protocol does. Honoured only for anonymous access; with tokens the
    /// token's subject always wins.
    pub async fn publish_as(
        &mut self,
        user: &str,
        room: &str,
        text: String,
    ) -> Result<(RoomName, PublishAck), GatewayError> {
        if user.is_empty() || self.gateway.requires_token() || user == self.identity.user {
            return self.publish(room, text, None).await;
        }
        let named = self.gateway.authenticate(None, Some(user))?;
        self.take_publish_token()?;
        self.gateway
            .publish(&named, room, text, None, self.transport)
            .await
    }

    /// History and presence need budget left; their size is charged
    /// once known.
    fn take_read_budget(&mut self) -> Result<(), GatewayError> {
        if self.reads.has_token() {
            Ok(())
        } else {
            Err(crate::read_limited(self.transport))
        }
    }

    fn take_publish_token(&mut self) -> Result<(), GatewayError> {
        if self.bucket.try_take() {
            return self
                .gateway
                .ip_publish_limit(self.slot.ip(), self.transport);
        }
        metrics::counter!(names::RATE_LIMITED, "transport" => self.transport.as_str()).increment(1);
        Err(GatewayError::refused(
            ErrorCode::RateLimited,
            "publish rate limit exceeded; slow down",
        ))
    }

    /// Queues an item unless the connection is closing.
    async fn push(&self, item: Outbound) {
        tokio::select! {
            _ = self.tx.send(item) => {}
            _ = self.control.closed() => {}
        }
    }

    pub fn subscribed_rooms(&self) -> usize {
        self.rooms.len()
    }
}

/// Closes the connection (4001) when its credentials expire.
fn arm_expiry(control: &Arc<ConnControl>, expires_at: Option<SystemTime>) -> Option<AbortHandle> {
    expires_at.map(|at| {
        let control = control.clone();
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            control.close(CloseReason::TokenExpired);
        })
        .abort_handle()
    })
}

impl Drop for Session {
    /// Leaves every room, whichever way the connection ended, so presence
    /// and the hub never keep a dead connection.
    fn drop(&mut self) {
        if let Some(expiry) = self.expiry.take() {
            expiry.abort();
        }
        metrics::gauge!(names::CONNECTIONS, "transport" => self.transport.as_str()).decrement(1.0);
        let rooms: Vec<RoomName> = self.rooms.drain().collect();
        if rooms.is_empty() {
            return;
        }
        for room in &rooms {
            self.gateway.hub().unsubscribe(room, self.id);
        }
        let gateway = self.gateway.clone();
        let user = self.identity.user.clone();
        let conn_key = std::mem::take(&mut self.conn_key);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for room in rooms {
                    if let Err(err) = gateway.bus().leave(&room, &user, &conn_key).await {
                        tracing::warn!(%room, %err, "presence leave failed");
                    }
                }
            });
        }
    }
}
