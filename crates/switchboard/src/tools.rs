//! Flags of the terminal tools `chat`, `tail` and `publish` (SPEC §14),
//! turned into the options of the `switchboard-cli` crate. Here so that
//! durations parse exactly as the server's flags do.

use crate::config::parse_duration;
use clap::Args;
use std::time::Duration;
use switchboard_cli::{ChatOptions, CliError, Credentials, Endpoint, PublishOptions, TailOptions};

/// Where and as whom: shared by every tool.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Base URL of a gateway or standalone server: `http://host:8080`
    /// (`ws://host:8080/ws`, `https://…` and `wss://…` are accepted too).
    pub url: String,
    /// The room.
    #[arg(long)]
    pub room: String,
    /// User name on a deployment without tokens (`?user=`).
    #[arg(long, conflicts_with = "token")]
    pub user: Option<String>,
    /// A JWT for deployments with tokens (sent as `Authorization: Bearer`).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Connection {
    fn parts(&self) -> Result<(Endpoint, Credentials), CliError> {
        let endpoint = Endpoint::parse(&self.url)?;
        let credentials = match (&self.token, &self.user) {
            (Some(token), _) => Credentials::Token(token.clone()),
            (None, Some(user)) => Credentials::User(user.clone()),
            (None, None) => Credentials::Anonymous,
        };
        Ok((endpoint, credentials))
    }
}

/// `switchboard chat URL --room R [--user U | --token T]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Lines typed are published; messages, joins, leaves and presence are printed \
as they arrive. /who asks who is here, /quit (or end of input) leaves once \
every line has been acknowledged. Reconnects resume from the last event \
shown, so nothing is missed or shown twice.

Example:
  switchboard chat http://localhost:8080 --room lobby --user alice")]
pub struct ChatArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Replay the events after this cursor first.
    #[arg(long)]
    pub since: Option<String>,
}

impl ChatArgs {
    pub fn options(&self) -> Result<ChatOptions, CliError> {
        let (endpoint, credentials) = self.connection.parts()?;
        Ok(ChatOptions {
            endpoint,
            credentials,
            room: self.connection.room.clone(),
            since: self.since.clone(),
        })
    }
}

/// `switchboard tail URL --room R [--since C]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Prints the room's events (message, join, leave) as JSON lines on stdout, one \
per event, as the server sent them; diagnostics go to stderr. Reconnects \
resume from the last event printed.

Example:
  switchboard tail http://localhost:8080 --room lobby --since 1a2b:41 | jq .text")]
pub struct TailArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Replay the events after this cursor first.
    #[arg(long)]
    pub since: Option<String>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

impl TailArgs {
    pub fn options(&self) -> Result<TailOptions, CliError> {
        let (endpoint, credentials) = self.connection.parts()?;
        Ok(TailOptions {
            endpoint,
            credentials,
            room: self.connection.room.clone(),
            since: self.since.clone(),
            count: self.count,
        })
    }
}

/// `switchboard publish URL --room R TEXT`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Publishes TEXT through the HTTP API and prints the answer ({\"room\", \
\"cursor\", \"duplicate\"}) as one JSON line. The publish carries an id \
(--id, else a random one), so the retries after a timeout or a 503 store it \
once.

Example:
  switchboard publish http://localhost:8080 --room lobby \"deploy finished\"")]
pub struct PublishArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The message text.
    pub text: String,
    /// The publish id (idempotency key); random when absent.
    #[arg(long)]
    pub id: Option<String>,
    /// Further attempts after a failure that may pass (no answer, 429,
    /// 502-504).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Bound of each attempt.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl PublishArgs {
    pub fn options(&self) -> Result<PublishOptions, CliError> {
        let (endpoint, credentials) = self.connection.parts()?;
        Ok(PublishOptions {
            endpoint,
            credentials,
            room: self.connection.room.clone(),
            text: self.text.clone(),
            id: self.id.clone(),
            retries: self.retries,
            timeout: self.timeout,
        })
    }
}
