//! Switchboard's wire vocabulary, shared by every service.
//!
//! This crate owns what crosses a process boundary: validated [`RoomName`]s
//! (the only way a room reaches a NATS subject), [`Cursor`]s, stored
//! [`Event`]s and their three encodings (JSON frame, SSE frame, protobuf),
//! the JSON frames of the WebSocket protocol, the spec's [`ErrorCode`]s, and
//! the protobuf types generated from `proto/`.
//!
//! It relies on nothing but serde and prost, and it must not grow behaviour:
//! ordering, idempotency and presence live in `switchboard-core`.

mod cursor;
mod error;
mod event;
pub mod frames;
mod room;
mod time;
mod wire_event;

pub use cursor::{Cursor, Epoch};
pub use error::{ErrorCode, ProtocolError};
pub use event::{Event, EventKind, SharedEvent};
pub use room::RoomName;
pub use time::format_rfc3339_millis;
pub use wire_event::{EventFields, WireEvent};

/// Protobuf and gRPC types generated from `proto/`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("switchboard.v1");

    /// `switchboard.v1.Event`: see [`crate::WireEvent`].
    pub type Event = crate::WireEvent;

    /// The package-less, seed-compatible `ChatService`.
    pub mod seed {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("_");
    }

    /// Encoded `FileDescriptorSet` of every Switchboard proto, for gRPC
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));
}
