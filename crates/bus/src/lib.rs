//! The bus: everything a gateway may ask of the core, as one trait.
//!
//! Gateways hold an `Arc<dyn Bus>` and never know whether the core runs in
//! the same process ([`MemoryBus`]) or behind NATS. A bus carries publishes
//! to the one writer, answers history/resume/presence, and hands out live
//! room feeds in store order. It must not decide anything itself:
//! validation, de-duplication and ordering belong to the core.

mod memory;

pub use memory::MemoryBus;

use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Arc;
use switchboard_core::{CoreError, HistoryQuery, PublishRequest, Resume};
use switchboard_protocol::{Cursor, ErrorCode, RoomName, SharedEvent};
pub use switchboard_telemetry::TraceCarrier;

/// Where a publish was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    pub cursor: Cursor,
    pub duplicate: bool,
}

/// One item of a live room feed.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// A stored event, with the trace context of the append that stored
    /// it (empty when tracing is off or the bus is in-process).
    Event(Arc<SharedEvent>, TraceCarrier),
    /// The reader fell behind and events were skipped: repair from history.
    Lagged,
}

/// Live events of one room, in store order, until the room's feed ends.
pub type LiveFeed = BoxStream<'static, FeedItem>;

/// Why the bus could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Rejected(#[from] CoreError),
    #[error("core unavailable: {0}")]
    Unavailable(String),
    /// Refused by a core in another process; the code crossed the wire.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

impl BusError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BusError::Rejected(err) => err.code(),
            BusError::Unavailable(_) => ErrorCode::Unavailable,
            BusError::Remote { code, .. } => *code,
        }
    }
}

/// The gateway's view of the core.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, req: PublishRequest) -> Result<PublishAck, BusError>;

    /// Events after `since` and the current head. Without `since`, only
    /// the head (and `recovered: true`).
    async fn resume(&self, room: &RoomName, since: Option<&Cursor>) -> Result<Resume, BusError>;

    /// The room's live events from now on. Callers take the feed *before*
    /// asking [`Bus::resume`], so that no event falls between the two.
    async fn feed(&self, room: &RoomName) -> Result<LiveFeed, BusError>;

    async fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError>;

    async fn presence(&self, room: &RoomName) -> Result<Vec<String>, BusError>;

    /// Connection `conn` of `user` entered the room.
    async fn join(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError>;

    /// Connection `conn` of `user` left the room.
    async fn leave(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError>;

    /// True while requests can reach the core.
    fn is_ready(&self) -> bool;
}
