//! `switchboard bench`: a load generator users point at their own
//! deployment (a standalone server or a gateway) over its public protocols.
//!
//! This crate owns the client side of a benchmark: deriving WebSocket, SSE,
//! HTTP API and gRPC endpoints from a base URL, opening many connections
//! (bound round-robin to several source addresses), the four scenarios
//! (`fanout`, `publish`, `idle`, `connect`), checking every delivery for
//! loss, duplication and reordering by the sequence numbers publishers put
//! in the payload, latency histograms, its own CPU use and the report (one
//! JSON line, plus a human summary). It must not touch server internals: it
//! speaks only the wire protocols of the spec, as any client would, so it
//! measures what a user of the deployment would see. A second, bare
//! protocol ([`Protocol::Raw`]: `POST` a body, receive it verbatim over
//! WebSocket or SSE) lets the same generator, with the same checks, drive
//! the peers Switchboard is compared with. Flag parsing belongs
//! to the binary; this crate takes a validated [`Config`].

mod config;
mod net;
mod payload;
mod publish;
mod report;
mod scenario;
mod subscribe;
mod sys;
mod track;
mod ws;

pub use config::{
    Config, GrpcTarget, OutputFormat, Protocol, PubTransport, RawPaths, Scenario, SourceAddrs,
    SubTransport, Target,
};
pub use report::Report;

/// Why a benchmark could not run. Failures of single operations during a
/// run (a refused connection, a `rate_limited` publish) are not errors:
/// they are counted by code in the [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark settings: {0}")]
    Config(String),
    #[error("cannot resolve {what} {addr}: {source}")]
    Resolve {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Runs one benchmark described by `config` and returns its report. Must be
/// called inside a Tokio runtime (multi-threaded, so the generator can use
/// every core).
pub async fn run(config: &Config) -> Result<Report, BenchError> {
    config.validate()?;
    scenario::run(config).await
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit, so tens of
/// thousands of sockets can be open; returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    sys::raise_fd_limit()
}
