//! `switchboard standalone`: everything in one process, on the memory bus
//! (or on NATS when `--nats-url` is given).

use crate::StartError;
use crate::config::ServeArgs;
use crate::server::{self, Role, Server};

/// A running standalone server.
pub type Standalone = Server;

/// Binds both listeners and serves until [`Server::shutdown`].
pub async fn start(args: &ServeArgs) -> Result<Standalone, StartError> {
    server::start(Role::Standalone, args).await
}
