//! The publishes one connection has in flight.
//!
//! A connection that waited for each publish's acknowledgement before
//! reading its next frame had one publish in flight: on NATS every publish
//! then cost its own socket write to nats-server, its own JetStream ack
//! and its own write of the client's ack, each a system call that wakes
//! another process (docs/adr/0010-pipelined-publishes.md). Consecutive
//! publish frames therefore run concurrently, up to [`PUBLISHES_IN_FLIGHT`],
//! with two rules that keep what a client can observe:
//!
//! * publishes of one connection to one room are sent to the bus one after
//!   the other, in the order they arrived, so they are stored in that
//!   order on every bus (a publish to a room waits here while the
//!   connection's previous publish to that room is in flight);
//! * any other frame waits until every publish before it is acknowledged
//!   ([`crate::Session::handle`]), so replies to reads (history, presence,
//!   subscribe) reflect the client's own earlier publishes.
//!
//! Acknowledgements of different rooms may therefore arrive in another
//! order than their publishes; they carry the room and the client's `id`.
//! A publish refused before it starts (rate limit, bad room, too large,
//! forbidden) is answered at once, so its error may also come before the
//! acks of earlier publishes.

use crate::{GatewayError, PreparedPublish};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use std::collections::VecDeque;
use std::sync::Arc;
use switchboard_bus::{Bus, PublishAck};
use switchboard_protocol::RoomName;
use sync_wrapper::SyncWrapper;

/// Publishes one connection may have accepted and not yet answered
/// (running or queued behind an earlier publish to the same room). At the
/// bound the connection reads no further frame until one is answered, so
/// a fast publisher is held back by TCP, not by memory.
pub const PUBLISHES_IN_FLIGHT: usize = 32;

/// The answer to one pipelined publish: the client's id and the outcome.
pub struct Published {
    pub id: Option<String>,
    pub outcome: Result<(RoomName, PublishAck), GatewayError>,
}

type Running = BoxFuture<'static, (RoomName, Published)>;

pub(crate) struct Publishes {
    /// Where the publishes go (the gateway's bus).
    bus: Arc<dyn Bus>,
    /// Only ever used through `&mut self`; the wrapper lets a session
    /// (held across awaits by tonic's `Sync` futures) stay `Sync` although
    /// the bus's futures are only `Send`.
    running: SyncWrapper<FuturesUnordered<Running>>,
    /// How many `running` holds (the wrapper hides it behind `&mut`).
    running_len: usize,
    /// Rooms with a publish running (at most one each; few, so a list).
    busy: Vec<RoomName>,
    /// Publishes waiting for their room's running one, in arrival order.
    queued: VecDeque<(Option<String>, PreparedPublish)>,
}

impl Publishes {
    pub(crate) fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            bus,
            running: SyncWrapper::default(),
            running_len: 0,
            busy: Vec::new(),
            queued: VecDeque::new(),
        }
    }

    /// Accepted and not yet answered.
    pub(crate) fn len(&self) -> usize {
        self.running_len + self.queued.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts the publish, or queues it behind the running one of its room.
    pub(crate) fn push(&mut self, id: Option<String>, publish: PreparedPublish) {
        if self.busy.contains(publish.room()) {
            self.queued.push_back((id, publish));
        } else {
            self.busy.push(publish.room().clone());
            self.start(id, publish);
        }
    }

    fn start(&mut self, id: Option<String>, publish: PreparedPublish) {
        let room = publish.room().clone();
        let bus = self.bus.clone();
        self.running_len += 1;
        self.running.get_mut().push(Box::pin(async move {
            let outcome = publish.send(bus).await;
            (room, Published { id, outcome })
        }));
    }

    /// The next answered publish; pending while none is in flight.
    ///
    /// Cancel-safe: nothing is taken out before it is returned, so it can
    /// race a socket read in `select!`.
    pub(crate) async fn next(&mut self) -> Published {
        let Some((room, published)) = self.running.get_mut().next().await else {
            return std::future::pending().await;
        };
        self.running_len -= 1;
        match self.queued.iter().position(|(_, p)| *p.room() == room) {
            // The room's next publish goes out now, still in arrival order.
            Some(at) => {
                if let Some((id, publish)) = self.queued.remove(at) {
                    self.start(id, publish);
                }
            }
            None => self.busy.retain(|busy| *busy != room),
        }
        published
    }
}
