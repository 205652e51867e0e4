use crate::{Bus, BusError, FeedItem, LiveFeed, PublishAck, TraceCarrier};
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use switchboard_core::{Core, CoreConfig, HistoryQuery, PublishRequest, Resume};
use switchboard_protocol::{Cursor, RoomName, SharedEvent};
use switchboard_telemetry::names;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// The core in this process: every call is a direct, non-blocking call into
/// [`Core`], and live feeds are the core's per-room broadcast channels.
pub struct MemoryBus {
    core: Arc<Core>,
}

impl MemoryBus {
    /// Creates the bus and a background sweeper that forgets idle rooms;
    /// the sweeper ends when the bus is dropped. Needs a Tokio runtime.
    pub fn new(config: CoreConfig) -> Arc<Self> {
        let every = config.sweep_interval.max(Duration::from_millis(10));
        let core = Arc::new(Core::new(config));
        spawn_sweeper(Arc::downgrade(&core), every);
        Arc::new(Self { core })
    }

    pub fn core(&self) -> &Core {
        &self.core
    }
}

/// Sweeps one shard at a time and yields in between, so a sweep of many
/// rooms never holds a runtime worker (or a shard lock) for long.
fn spawn_sweeper(core: Weak<Core>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut removed = 0;
            let Some(shards) = core.upgrade().map(|core| core.shard_count()) else {
                break;
            };
            for shard in 0..shards {
                let Some(core) = core.upgrade() else { return };
                removed += core.sweep_shard(shard);
                drop(core);
                tokio::task::yield_now().await;
            }
            let Some(core) = core.upgrade() else { break };
            metrics::gauge!(names::MEMORY_ROOMS).set(core.room_count() as f64);
            metrics::gauge!(names::MEMORY_BYTES).set(core.stored_bytes() as f64);
            if removed > 0 {
                tracing::debug!(removed, "swept idle rooms");
            }
        }
    });
}

/// A room's live feed in this process. Dropping it (the hub stopped
/// watching the room) tells the core, which frees the room's broadcast
/// channel at once and forgets the room if nothing else holds it.
struct MemoryFeed {
    core: Arc<Core>,
    room: RoomName,
    stream: Option<BroadcastStream<Arc<SharedEvent>>>,
}

impl futures::Stream for MemoryFeed {
    type Item = FeedItem;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<FeedItem>> {
        let Some(stream) = self.stream.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        stream.poll_next_unpin(cx).map(|item| {
            item.map(|item| match item {
                Ok(event) => FeedItem::Event(event, TraceCarrier::new()),
                Err(BroadcastStreamRecvError::Lagged(_)) => FeedItem::Lagged,
            })
        })
    }
}

impl Drop for MemoryFeed {
    fn drop(&mut self) {
        // The receiver must be gone before the core counts listeners.
        self.stream.take();
        self.core.release(&self.room);
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, req: PublishRequest) -> Result<PublishAck, BusError> {
        let outcome = self.core.publish(req)?;
        Ok(PublishAck {
            cursor: outcome.cursor,
            duplicate: outcome.duplicate,
        })
    }

    async fn resume(&self, room: &RoomName, since: Option<&Cursor>) -> Result<Resume, BusError> {
        Ok(self.core.resume(room, since)?)
    }

    async fn feed(&self, room: &RoomName) -> Result<LiveFeed, BusError> {
        let (_, feed) = self.core.subscribe(room, None)?;
        Ok(MemoryFeed {
            core: self.core.clone(),
            room: room.clone(),
            stream: Some(BroadcastStream::new(feed)),
        }
        .boxed())
    }

    async fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> Result<Vec<Arc<SharedEvent>>, BusError> {
        Ok(self.core.history(room, &query)?)
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<String>, BusError> {
        Ok(self.core.presence(room))
    }

    async fn join(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError> {
        self.core.join(room, user, conn)?;
        Ok(())
    }

    async fn leave(&self, room: &RoomName, user: &str, conn: &str) -> Result<(), BusError> {
        self.core.leave(room, user, conn);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }
}
