//! What every Switchboard gateway shares, whatever its transport.
//!
//! [`Gateway`] is the per-process context: the bus to the core, the [`Hub`]
//! of local subscriptions, authentication, limits and the shutdown signal.
//! A [`Session`] is one client connection speaking the protocol; the
//! WebSocket, SSE and gRPC crates only adapt sockets to it (parse frames in,
//! write [`Deliver`]ies out) — the same split as centrifuge's `Client` over
//! its `Transport`s. [`ops_routes`] serves `/healthz`, `/readyz`,
//! `/metrics` and the demo page on every role.
//!
//! A gateway never writes room logs: it asks the core through the bus.

mod conn;
mod error;
pub mod front;
mod http;
mod hub;
mod limits;
mod net;
mod ops;
mod pipeline;
pub mod queue;
mod ratelimit;
mod session;
mod slots;

pub use conn::{CloseReason, ConnControl, Deliver, Delivery, Outbound, Overflow, Subscribed};
pub use error::GatewayError;
pub use http::{error_response, request_token, status_of};
pub use hub::{Hub, Subscriber};
pub use limits::Limits;
pub use net::{Listener, Peer, TimedStream, bound_send_buffer};
pub use ops::{demo_page, ops_routes};
pub use pipeline::{PUBLISHES_IN_FLIGHT, Published};
pub use ratelimit::{KeyedBuckets, TokenBucket};
pub use session::Session;
pub use slots::ConnectionSlot;

use rand::Rng;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use switchboard_auth::{Authenticator, Identity};
use switchboard_bus::{Bus, PublishAck};
use switchboard_core::{HistoryQuery, PublishRequest};
use switchboard_protocol::{Cursor, ErrorCode, RoomName, SharedEvent};
use switchboard_telemetry::names;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

fn rate_limited(transport: Transport) -> GatewayError {
    metrics::counter!(names::RATE_LIMITED, "transport" => transport.as_str()).increment(1);
    GatewayError::refused(
        ErrorCode::RateLimited,
        "publish rate limit exceeded; slow down",
    )
}

pub(crate) fn read_limited(transport: Transport) -> GatewayError {
    metrics::counter!(names::RATE_LIMITED, "transport" => transport.as_str()).increment(1);
    GatewayError::refused(
        ErrorCode::RateLimited,
        "history/presence read budget exceeded; slow down",
    )
}

/// The transport a connection or request came in on (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
    Http,
    Grpc,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::Http => "http",
            Transport::Grpc => "grpc",
        }
    }
}

/// Settings of a gateway process.
#[derive(Debug)]
pub struct GatewayConfig {
    pub limits: Limits,
    /// Allowed browser `Origin`s for WebSocket and CORS; empty allows any.
    pub allowed_origins: Vec<String>,
    pub auth: Authenticator,
}

/// Keys (users, client addresses) each keyed limiter holds before it
/// forgets idle ones.
const KEYED_BUCKETS: usize = 65_536;

/// Per-process gateway context, shared by every connection.
pub struct Gateway {
    bus: Arc<dyn Bus>,
    hub: Hub,
    auth: Authenticator,
    limits: Limits,
    allowed_origins: Vec<String>,
    shutdown: CancellationToken,
    draining: AtomicBool,
    instance: String,
    next_conn: AtomicU64,
    /// HTTP and gRPC unary publishes have no connection; they are
    /// rate-limited per user.
    user_publishes: KeyedBuckets<String>,
    /// Anonymous publishes per client address, over every transport.
    ip_publishes: KeyedBuckets<IpAddr>,
    /// HTTP history and presence reads per client address, by size.
    ip_reads: KeyedBuckets<IpAddr>,
    /// What else the process needs to be ready (the core service, say).
    also_ready: std::sync::OnceLock<ReadinessCheck>,
    /// The connection caps, per process and per client address.
    slots: Arc<slots::ConnectionSlots>,
}

/// An extra condition of readiness, added by the role that runs the gateway.
pub type ReadinessCheck = Box<dyn Fn() -> bool + Send + Sync>;

impl Gateway {
    /// `shutdown` is the process's shutdown signal; sessions close with
    /// "going away / restart" semantics when it fires.
    pub fn new(bus: Arc<dyn Bus>, config: GatewayConfig, shutdown: CancellationToken) -> Arc<Self> {
        let instance = format!("{:08x}", rand::rng().random::<u32>());
        let limits = &config.limits;
        let user_publishes =
            KeyedBuckets::new(limits.publish_rate, limits.publish_burst, KEYED_BUCKETS);
        let ip_publishes = KeyedBuckets::new(
            limits.ip_publish_rate,
            limits.ip_publish_burst,
            KEYED_BUCKETS,
        );
        let ip_reads = KeyedBuckets::new(limits.read_rate, limits.read_burst, KEYED_BUCKETS);
        let slots =
            slots::ConnectionSlots::new(limits.max_connections, limits.max_connections_per_ip);
        Arc::new(Self {
            slots,
            hub: Hub::new(bus.clone()),
            bus,
            auth: config.auth,
            limits: config.limits,
            allowed_origins: config.allowed_origins,
            shutdown,
            draining: AtomicBool::new(false),
            instance,
            next_conn: AtomicU64::new(1),
            user_publishes,
            ip_publishes,
            ip_reads,
            also_ready: std::sync::OnceLock::new(),
        })
    }

    /// Makes readiness also depend on `check` (set once, at start-up).
    pub fn require_for_readiness(&self, check: ReadinessCheck) {
        let _ = self.also_ready.set(check);
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Ready: the bus reaches the core and the process is not draining.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.bus.is_ready()
            && self.also_ready.get().is_none_or(|check| check())
    }

    /// Starts a graceful shutdown: readiness goes false, new publishes are
    /// refused with `unavailable`, and every session closes.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Browser requests must come from an allowed origin; clients that send
    /// no `Origin` (non-browsers) are not subject to it.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => {
                self.allowed_origins.is_empty()
                    || self
                        .allowed_origins
                        .iter()
                        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
            }
        }
    }

    pub fn allowed_origins(&self) -> &[String] {
        &self.allowed_origins
    }

    /// True when every request must carry a token.
    pub fn requires_token(&self) -> bool {
        self.auth.requires_token()
    }

    /// Checks a request's credentials against the keys at hand (with a
    /// JWKS, the cached set: see [`Gateway::authenticate_fresh`]).
    pub fn authenticate(
        &self,
        token: Option<&str>,
        requested_user: Option<&str>,
    ) -> Result<Identity, GatewayError> {
        Ok(self.auth.authenticate(token, requested_user)?)
    }

    /// [`Gateway::authenticate`], refetching a JWKS first when the token
    /// names a key the cached set lacks (rate-limited).
    pub async fn authenticate_fresh(
        &self,
        token: Option<&str>,
        requested_user: Option<&str>,
    ) -> Result<Identity, GatewayError> {
        Ok(self.auth.authenticate_fresh(token, requested_user).await?)
    }

    /// False only when `token` names a key a JWKS has not (yet) got: a
    /// synchronous path then calls [`Gateway::refetch_key`] first.
    pub fn knows_key(&self, token: Option<&str>) -> bool {
        self.auth.knows_key(token)
    }

    pub async fn refetch_key(&self, token: Option<&str>) {
        self.auth.refetch_key(token).await;
    }

    /// A place under the connection caps for a client at `peer`, taken
    /// when its WebSocket, SSE stream or gRPC stream is admitted (before
    /// the upgrade); `unavailable` (503) over a cap.
    pub fn claim_connection(
        &self,
        peer: Option<IpAddr>,
        transport: Transport,
    ) -> Result<ConnectionSlot, GatewayError> {
        self.slots.claim(peer, transport.as_str())
    }

    /// The client's address: the socket's peer, or the left-most entry of
    /// `X-Forwarded-For` when the peer is one of `--trusted-proxies`
    /// (anyone else could name any address and dodge the per-address
    /// limits). An unreadable header from a proxy leaves the peer.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = self
            .limits
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer));
        if !trusted {
            return Some(peer);
        }
        forwarded_for
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse().ok())
            .or(Some(peer))
    }

    /// [`Gateway::client_ip`] of an HTTP request.
    pub fn client_ip_of(
        &self,
        peer: Option<IpAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Option<IpAddr> {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok());
        self.client_ip(peer, forwarded)
    }

    /// Client connections holding a slot now.
    pub fn connections_held(&self) -> usize {
        self.slots.held()
    }

    /// Returns once every client connection has ended. Connection tasks
    /// are detached, so a graceful shutdown waits here for them to have
    /// written their close frame (1012) or last SSE event before the
    /// process exits.
    pub async fn connections_closed(&self) {
        self.slots.all_released().await;
    }

    /// Opens the protocol session of an admitted connection; it keeps
    /// `slot` (its place and client address) for its life. The receiver
    /// is what its writer drains.
    pub fn open_session(
        self: &Arc<Self>,
        identity: Identity,
        transport: Transport,
        slot: ConnectionSlot,
    ) -> (Session, queue::QueueReceiver) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn_key = format!("{}-{id}", self.instance);
        Session::new(self.clone(), id, conn_key, identity, transport, slot)
    }

    /// Checks and publishes one message; rate limiting is the caller's
    /// (per connection, or [`Gateway::api_rate_limit`] for HTTP).
    pub async fn publish(
        &self,
        identity: &Identity,
        room: &str,
        text: String,
        id: Option<String>,
        transport: Transport,
    ) -> Result<(RoomName, PublishAck), GatewayError> {
        self.prepare_publish(identity, room, text, id, transport)?
            .send(self.bus.clone())
            .await
    }

    /// The checks of a publish that need no I/O (room name, permission,
    /// size, draining), done when the request arrives. What is left,
    /// [`PreparedPublish::send`], owns everything it needs, so a
    /// connection can keep several publishes in flight while it reads on.
    pub fn prepare_publish(
        &self,
        identity: &Identity,
        room: &str,
        text: String,
        id: Option<String>,
        transport: Transport,
    ) -> Result<PreparedPublish, GatewayError> {
        let received = Instant::now();
        metrics::counter!(names::MESSAGES_IN, "transport" => transport.as_str()).increment(1);
        let room = RoomName::parse(room)?;
        if !identity.can_publish(&room) {
            return Err(GatewayError::refused(
                ErrorCode::Forbidden,
                format!("not allowed to publish to {room}"),
            ));
        }
        if text.len() > self.limits.max_text_bytes {
            return Err(GatewayError::refused(
                ErrorCode::TooLarge,
                format!(
                    "text is {} bytes, the limit is {}",
                    text.len(),
                    self.limits.max_text_bytes
                ),
            ));
        }
        if self.is_draining() {
            return Err(GatewayError::refused(
                ErrorCode::Unavailable,
                "server is shutting down; retry on another replica",
            ));
        }
        let span = tracing::info_span!(
            target: switchboard_telemetry::TRACE_TARGET,
            "publish",
            room = %room,
            transport = transport.as_str(),
            cursor = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        switchboard_telemetry::record_trace_id(&span);
        let request = PublishRequest {
            room,
            user: identity.user.clone(),
            text,
            id,
        };
        Ok(PreparedPublish {
            request,
            span,
            received,
        })
    }

    /// Rate limit for connection-less publishes: per user, and for
    /// anonymous users also per client address.
    pub fn api_rate_limit(&self, user: &str, peer: Option<IpAddr>) -> Result<(), GatewayError> {
        if self.user_publishes.try_take(&user.to_owned()) {
            self.ip_publish_limit(peer, Transport::Http)
        } else {
            Err(rate_limited(Transport::Http))
        }
    }

    /// Anonymous users choose their names freely, so their publishes are
    /// also limited per client address, whatever the connection.
    pub fn ip_publish_limit(
        &self,
        peer: Option<IpAddr>,
        transport: Transport,
    ) -> Result<(), GatewayError> {
        match peer {
            Some(ip) if !self.requires_token() && !self.ip_publishes.try_take(&ip) => {
                Err(rate_limited(transport))
            }
            _ => Ok(()),
        }
    }

    /// Reads of a client address without a connection (HTTP history and
    /// presence), charged by result size: refused while in debt.
    pub fn ip_read_limit(&self, peer: Option<IpAddr>) -> Result<(), GatewayError> {
        match peer {
            Some(ip) if !self.ip_reads.with(&ip, TokenBucket::has_token) => {
                Err(read_limited(Transport::Http))
            }
            _ => Ok(()),
        }
    }

    /// Charges a read of `items` results to the client address.
    pub fn ip_read_spend(&self, peer: Option<IpAddr>, items: usize) {
        if let Some(ip) = peer {
            self.ip_reads.with(&ip, |bucket| bucket.spend(items as f64));
        }
    }

    /// A history page of a room the identity may read.
    pub async fn history(
        &self,
        identity: &Identity,
        room: &str,
        after: Option<&str>,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(RoomName, Vec<Arc<SharedEvent>>), GatewayError> {
        let room = self.readable_room(identity, room)?;
        let query = HistoryQuery {
            after: after.map(str::parse::<Cursor>).transpose()?,
            before: before.map(str::parse::<Cursor>).transpose()?,
            limit: limit.map(|l| l as usize),
        };
        let events = self.bus.history(&room, query).await?;
        Ok((room, events))
    }

    pub async fn presence(
        &self,
        identity: &Identity,
        room: &str,
    ) -> Result<(RoomName, Vec<String>), GatewayError> {
        let room = self.readable_room(identity, room)?;
        let users = self.bus.presence(&room).await?;
        Ok((room, users))
    }

    fn readable_room(&self, identity: &Identity, room: &str) -> Result<RoomName, GatewayError> {
        let room = RoomName::parse(room)?;
        if !identity.can_subscribe(&room) {
            return Err(GatewayError::refused(
                ErrorCode::Forbidden,
                format!("not allowed to read {room}"),
            ));
        }
        Ok(room)
    }
}

/// A publish that passed [`Gateway::prepare_publish`] and waits to be sent.
pub struct PreparedPublish {
    request: PublishRequest,
    span: tracing::Span,
    received: Instant,
}

impl PreparedPublish {
    pub fn room(&self) -> &RoomName {
        &self.request.room
    }

    /// Hands the publish to the bus; resolves once it is stored (or refused).
    pub async fn send(self, bus: Arc<dyn Bus>) -> Result<(RoomName, PublishAck), GatewayError> {
        let Self {
            request,
            span,
            received,
        } = self;
        let room = request.room.clone();
        let ack = bus
            .publish(request)
            .instrument(span.clone())
            .await
            .inspect_err(|err| tracing::debug!(parent: &span, %err, "publish refused"))?;
        span.record("cursor", tracing::field::display(&ack.cursor));
        metrics::histogram!(names::PUBLISH_LATENCY).record(received.elapsed().as_secs_f64());
        Ok((room, ack))
    }
}
