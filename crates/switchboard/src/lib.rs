//! Assembles Switchboard's roles from the library crates.
//!
//! [`standalone::start`] runs the core (on the in-memory bus), the
//! WebSocket and SSE gateways, the HTTP API and the gRPC API in one
//! process; it returns the bound addresses, so port 0 works for tests.
//! [`config`] holds the typed, validated settings the binary's flags fill.

pub mod config;
pub mod standalone;

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}
