//! `switchboard chat`, `switchboard tail` and `switchboard publish` (SPEC
//! §14): terminal clients of a running deployment.
//!
//! This crate owns the client side of those tools: deriving the WebSocket
//! and HTTP API endpoints from a base URL, one room followed over a
//! WebSocket that reconnects with backoff and resumes from the last cursor
//! it printed (so a gateway restart loses and repeats nothing), publishes
//! that carry an id and are re-sent until acknowledged, and the output
//! (human lines for `chat`, JSON lines for `tail` and `publish`). It must
//! not touch server internals: like any user's client it speaks only the
//! wire protocols of the spec, and it never interprets cursors beyond
//! handing them back. Flag parsing belongs to the binary; this crate takes
//! the options as plain values.

mod chat;
mod endpoint;
mod link;
mod publish;
mod tail;

pub use chat::{ChatOptions, chat};
pub use endpoint::{Credentials, Endpoint};
pub use publish::{PublishOptions, publish};
pub use tail::{TailOptions, tail};

/// Why a tool stopped with a failure. Disconnects are not errors: the tools
/// reconnect and resume; only what a reconnect cannot fix ends them.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    /// The server refused the request or the credentials (HTTP status or
    /// the protocol's error code), in a way retrying will not change.
    #[error("refused by the server: {code}: {message}")]
    Refused { code: String, message: String },
    /// The server closed the connection with a code that means "do not
    /// come back as you are" (4001 token expired, 4003 forbidden).
    #[error("closed by the server ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// Retries ran out (publish), or a bounded wait passed.
    #[error("{0}")]
    GaveUp(String),
    #[error("terminal I/O: {0}")]
    Io(#[from] std::io::Error),
}
