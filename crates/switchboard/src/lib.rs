//! Assembles Switchboard's roles from the library crates.
//!
//! [`server::start`] runs any role: `standalone` (core, WebSocket and SSE
//! gateways, HTTP and gRPC APIs in one process, on the in-memory bus or on
//! NATS), `core`, `ws-gateway` or `sse-gateway`. It returns the bound
//! addresses, so port 0 works for tests.
//! [`config`] holds the typed, validated settings the binary's flags fill;
//! [`bench`] the flags of the `bench` client tool (the generator itself is
//! the `switchboard-bench` crate); [`tools`] the flags of `chat`, `tail` and
//! `publish` (the clients themselves are the `switchboard-cli` crate).

pub mod bench;
pub mod config;
pub mod server;
pub mod standalone;
pub mod tools;

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
