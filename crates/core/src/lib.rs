//! The core domain of Switchboard: the one writer of room logs.
//!
//! [`Core`] validates publishes, de-duplicates them by client id within a
//! window, appends them to a per-room log with one order, keeps the log
//! within its retention (count and age), answers history and resume
//! queries, and tracks presence, turning first/last connections of a user
//! into join/leave events stored in the same log.
//!
//! This is the in-memory authority used by `standalone`; the live feed of a
//! room is a broadcast channel fed *under the room lock*, which is what
//! makes every subscriber see one order. It knows nothing of transports or
//! buses: gateways reach it through `switchboard-bus`.

mod config;
mod core;
mod error;
mod presence;
mod room;

pub use crate::config::CoreConfig;
pub use crate::core::{
    Core, HistoryQuery, PublishOutcome, PublishRequest, Resume, validate_publish_id, validate_text,
    validate_user,
};
pub use crate::error::CoreError;
pub use crate::room::RoomFeed;

/// Longest client publish id accepted: ids are keys of the dedup window.
pub const MAX_PUBLISH_ID_LEN: usize = 128;
/// Largest history page, whatever the client asks for.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// History page size when the client names none.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
