use crate::{NatsError, Subjects};
use std::time::Duration;

/// Where JetStream keeps the room logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    File,
    Memory,
}

impl std::str::FromStr for StorageKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "file" => Ok(StorageKind::File),
            "memory" => Ok(StorageKind::Memory),
            other => Err(format!("unknown storage {other:?} (file|memory)")),
        }
    }
}

/// Settings shared by every role that talks to NATS.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// One or more server URLs, comma-separated.
    pub url: String,
    pub subjects: Subjects,
    /// Bound of every request to the core.
    pub request_timeout: Duration,
    /// A connection not refreshed for this long is no longer present.
    pub presence_ttl: Duration,
    /// Room-log and presence storage (core only).
    pub storage: StorageKind,
    /// JetStream replicas of the stream and bucket (core only; 3 in a cluster).
    pub replicas: usize,
    /// Bound of the room-log stream in bytes (core only). With discard-old,
    /// a flood drops the oldest events instead of filling the server's
    /// store; keep it below the server's `max_file_store`.
    pub max_bytes: u64,
    /// Largest stored event, headers included (core only): the frame limit
    /// plus [`STORED_OVERHEAD_BYTES`].
    pub max_message_bytes: usize,
    /// Client name shown by the server's monitoring.
    pub name: String,
    /// Send a room's queued appends as one JetStream atomic batch (core
    /// only; ADR 0011). Needs nats-server 2.12 or later: older servers are
    /// detected and get one append per round trip.
    pub atomic_batches: bool,
}

/// Default [`NatsConfig::max_bytes`]: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// Room for what a stored event carries beyond the client's frame: user,
/// timestamps, predecessor, and the headers (epoch, msg-id, expected
/// sequence, trace context).
pub const STORED_OVERHEAD_BYTES: usize = 4096;

impl NatsConfig {
    pub fn new(url: &str, prefix: &str, name: &str) -> Result<Self, NatsError> {
        Ok(Self {
            url: url.to_owned(),
            subjects: Subjects::new(prefix)?,
            request_timeout: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(30),
            storage: StorageKind::File,
            replicas: 1,
            max_bytes: DEFAULT_MAX_BYTES,
            max_message_bytes: 65_536 + STORED_OVERHEAD_BYTES,
            name: name.to_owned(),
            atomic_batches: true,
        })
    }
}
