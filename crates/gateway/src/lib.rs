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
mod http;
mod hub;
mod limits;
mod ops;
mod ratelimit;
mod session;

pub use conn::{CloseReason, ConnControl, Deliver, Delivery, Outbound, Overflow};
pub use error::GatewayError;
pub use http::{error_response, request_token, status_of};
pub use hub::{Hub, Subscriber};
pub use limits::Limits;
pub use ops::{demo_page, ops_routes};
pub use ratelimit::TokenBucket;
pub use session::Session;

use rand::Rng;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use switchboard_auth::{Authenticator, Identity};
use switchboard_bus::{Bus, PublishAck};
use switchboard_core::{HistoryQuery, PublishRequest};
use switchboard_protocol::{Cursor, ErrorCode, RoomName, SharedEvent};
use switchboard_telemetry::names;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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

const API_BUCKET_SHARDS: usize = 16;
const API_BUCKETS_PER_SHARD: usize = 4096;

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
    /// HTTP publishes have no connection; they are rate-limited per user.
    api_buckets: Vec<Mutex<HashMap<String, TokenBucket>>>,
    hasher: RandomState,
    /// What else the process needs to be ready (the core service, say).
    also_ready: std::sync::OnceLock<ReadinessCheck>,
}

/// An extra condition of readiness, added by the role that runs the gateway.
pub type ReadinessCheck = Box<dyn Fn() -> bool + Send + Sync>;

impl Gateway {
    /// `shutdown` is the process's shutdown signal; sessions close with
    /// "going away / restart" semantics when it fires.
    pub fn new(bus: Arc<dyn Bus>, config: GatewayConfig, shutdown: CancellationToken) -> Arc<Self> {
        let instance = format!("{:08x}", rand::rng().random::<u32>());
        Arc::new(Self {
            hub: Hub::new(bus.clone()),
            bus,
            auth: config.auth,
            limits: config.limits,
            allowed_origins: config.allowed_origins,
            shutdown,
            draining: AtomicBool::new(false),
            instance,
            next_conn: AtomicU64::new(1),
            api_buckets: (0..API_BUCKET_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
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

    pub fn authenticate(
        &self,
        token: Option<&str>,
        requested_user: Option<&str>,
    ) -> Result<Identity, GatewayError> {
        Ok(self.auth.authenticate(token, requested_user)?)
    }

    /// Opens a protocol session; the receiver is what its writer drains.
    pub fn open_session(
        self: &Arc<Self>,
        identity: Identity,
        transport: Transport,
    ) -> (Session, mpsc::Receiver<Outbound>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn_key = format!("{}-{id}", self.instance);
        Session::new(self.clone(), id, conn_key, identity, transport)
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
            room: room.clone(),
            user: identity.user.clone(),
            text,
            id,
        };
        let ack = self
            .bus
            .publish(request)
            .instrument(span.clone())
            .await
            .inspect_err(|err| tracing::debug!(parent: &span, %err, "publish refused"))?;
        span.record("cursor", tracing::field::display(&ack.cursor));
        metrics::histogram!(names::PUBLISH_LATENCY).record(received.elapsed().as_secs_f64());
        Ok((room, ack))
    }

    /// Rate limit for connection-less publishes, keyed by user.
    pub fn api_rate_limit(&self, key: &str) -> Result<(), GatewayError> {
        let shard = &self.api_buckets[self.hasher.hash_one(key) as usize % API_BUCKET_SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= API_BUCKETS_PER_SHARD {
            let now = Instant::now();
            buckets.retain(|_, bucket| !bucket.is_full_at(now));
        }
        let allowed = buckets
            .entry(key.to_owned())
            .or_insert_with(|| {
                TokenBucket::new(self.limits.publish_rate, self.limits.publish_burst)
            })
            .try_take();
        if allowed {
            Ok(())
        } else {
            metrics::counter!(names::RATE_LIMITED, "transport" => Transport::Http.as_str())
                .increment(1);
            Err(GatewayError::refused(
                ErrorCode::RateLimited,
                "publish rate limit exceeded; slow down",
            ))
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
