//! The bus of a gateway that shares its process with a core (standalone
//! with `--nats-url`).
//!
//! Over NATS a publish from such a gateway is a request that travels to
//! nats-server and back into this very process (when the queue group picks
//! the local core), then a reply that makes the same trip: four socket
//! messages, and four wake-ups, besides the JetStream append itself. With
//! NATS and Switchboard sharing a core that was most of the cost of an
//! acknowledged publish (perf, docs/BENCHMARKS.md). Publishes, resumes and
//! history reads are therefore answered by the local core directly, on the
//! very code path a request over NATS takes ([`Inner::publish`], the room
//! logs), so order, dedup, acked-means-stored and `prev_offset` are the
//! same. Live feeds and presence stay on NATS: feeds are the republished
//! subjects every gateway reads, and presence entries held by this gateway
//! are refreshed through the remote bus's bookkeeping.
//!
//! Until the core is set up (or while NATS is down) requests go to the
//! remote bus, where another core replica may answer.

use crate::NatsBus;
use crate::service::Inner;
use async_nats::connection::State;
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use switchboard_bus::{Bus, BusError, LiveFeed, PublishAck};
use switchboard_core::{HistoryQuery, PublishRequest, Resume};
use switchboard_protocol::{Cursor, RoomName, SharedEvent, pb};
use switchboard_telemetry::TRACE_TARGET;
use tracing::Instrument;

pub(crate) struct LocalFirstBus {
    remote: Arc<NatsBus>,
    core: Arc<OnceLock<Arc<Inner>>>,
    ready: Arc<AtomicBool>,
}

impl LocalFirstBus {
    pub(crate) fn new(
        remote: Arc<NatsBus>,
        core: Arc<OnceLock<Arc<Inner>>>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            remote,
            core,
            ready,
        }
    }

    /// The local core while it serves: set up, and NATS connected (its
    /// appends need JetStream; without it the remote bus says so).
    fn local(&self) -> Option<&Arc<Inner>> {
        let serving = self.ready.load(Ordering::SeqCst)
            && self.remote.client().connection_state() == State::Connected;
        serving.then(|| self.core.get()).flatten()
    }
}

#[async_trait]
impl Bus for LocalFirstBus {
    async fn publish(&self, req: PublishRequest) -> Result<PublishAck, BusError> {
        let Some(core) = self.local() else {
            return self.remote.publish(req).await;
        };
        // Named like the span of a request the core answers over NATS, so
        // a trace reads the same either way.
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "core.request",
            otel.name = "core.publish",
            room = %req.room,
            local = true,
        );
        let room = req.room;
        let request = pb::BusPublish {
            room: room.to_string(),
            user: req.user,
            text: req.text,
            id: req.id.unwrap_or_default(),
        };
        let (cursor, duplicate) = core.publish(&room, request).instrument(span).await?;
        Ok(PublishAck { cursor, duplicate })
    }

    async fn resume(&self, room: &RoomName, since: Option<&Cursor>) -> Result<Resume, BusError> {
        match self.local() {
            Some(core) => core.logs().resume(room, since).await,
            None => self.remote.resume(room, since).await,
        }
    }

    async fn feed(&self, room: &RoomName) -> Result<LiveFeed, BusError> {
        self.remote.feed(room).await
    }

    async fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError> {
        match self.local() {
            Some(core) => core.logs().history(room, &query).await,
            None => self.remote.history(room, query).await,
        }
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<String>, BusError> {
        self.remote.presence(room).await
    }

    async fn join(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError> {
        self.remote.join(room, user, conn).await
    }

    async fn leave(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError> {
        self.remote.leave(room, user, conn).await
    }

    fn is_ready(&self) -> bool {
        self.remote.is_ready()
    }
}
