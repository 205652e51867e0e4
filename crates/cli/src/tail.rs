//! `switchboard tail`: a room's events as JSON lines on stdout, for
//! scripts. Each line is the server's frame as received (`message`,
//! `join`, `leave`); diagnostics go to stderr so stdout stays parseable.

use crate::link::{Happening, Link};
use crate::{CliError, Credentials, Endpoint};
use tokio::io::{AsyncWriteExt, Stdout};

#[derive(Debug, Clone)]
pub struct TailOptions {
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    pub room: String,
    /// Replay the events after this cursor first.
    pub since: Option<String>,
    /// Stop after this many events.
    pub count: Option<u64>,
}

/// Prints events until `count` is reached, stdout is closed, Ctrl-C, or a
/// final error (credentials refused, closed with 4001/4003).
pub async fn tail(options: TailOptions) -> Result<(), CliError> {
    let TailOptions {
        endpoint,
        credentials,
        room,
        since,
        count,
    } = options;
    let mut link = Link::new(endpoint, credentials, room, since);
    let mut out = tokio::io::stdout();
    let mut printed = 0u64;
    if count == Some(0) {
        return Ok(());
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let happening = tokio::select! {
            happening = link.next() => happening?,
            _ = &mut interrupted => break,
        };
        match happening {
            Happening::Subscribed { gap, resumed } => {
                if gap {
                    eprintln!(
                        "tail: history of {} no longer reaches back to the last cursor: \
                         events were missed; continuing live",
                        link.room()
                    );
                }
                let verb = if resumed { "resumed" } else { "subscribed to" };
                eprintln!("tail: {verb} {}", link.room());
            }
            Happening::Frame(frame, text) => {
                let kind = frame["type"].as_str().unwrap_or_default();
                if kind == "error" {
                    eprintln!(
                        "tail: server error: {}: {}",
                        frame["code"].as_str().unwrap_or_default(),
                        frame["message"].as_str().unwrap_or_default()
                    );
                    continue;
                }
                if !matches!(kind, "message" | "join" | "leave")
                    || frame["room"].as_str() != Some(link.room())
                {
                    continue;
                }
                if write_line(&mut out, &text).await.is_err() {
                    // The reader went away (`| head`): a normal end.
                    break;
                }
                printed += 1;
                if count.is_some_and(|count| printed >= count) {
                    break;
                }
            }
            Happening::Disconnected(why) => eprintln!("tail: disconnected ({why}); reconnecting"),
        }
    }
    link.close().await;
    Ok(())
}

pub(crate) async fn write_line(out: &mut Stdout, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await
}
