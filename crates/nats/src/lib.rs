//! Switchboard's bus over NATS and JetStream.
//!
//! Two sides share one subject map ([`Subjects`]):
//!
//! * [`NatsBus`] implements `switchboard_bus::Bus` for gateways: publishes,
//!   resume, history and presence are NATS requests on per-room subjects
//!   answered by any core replica (queue group); live room feeds are plain
//!   subscriptions to the stream's republished subjects, only for rooms a
//!   local client needs (the hub reference-counts them). Gateways need no
//!   JetStream rights.
//! * [`CoreService`] is the one writer: it owns the room-log stream
//!   (retention, dedup window, republish) and the presence bucket, and
//!   answers the requests. Each stored event records its predecessor in
//!   the room (optimistic concurrency on the subject's last sequence), so
//!   receivers detect gaps and resume knows exactly what retention dropped.
//!
//! The subject map and stream configuration are recorded in
//! `docs/adr/0004-nats-subjects-and-streams.md`.

mod client;
mod config;
mod error;
mod local;
mod presence;
mod read_consumer;
mod service;
mod store;
mod subjects;
mod wire;

pub use client::NatsBus;
pub use config::{DEFAULT_MAX_BYTES, NatsConfig, STORED_OVERHEAD_BYTES, StorageKind};
pub use error::NatsError;
pub use service::CoreService;
pub use subjects::Subjects;
