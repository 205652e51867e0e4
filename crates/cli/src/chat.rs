//! `switchboard chat`: a line-oriented chat in one room. Lines read from
//! stdin are published (each with an id, re-sent after a reconnect until
//! acknowledged, so a gateway restart neither loses nor doubles one);
//! messages, joins, leaves and presence are printed to stdout as they
//! arrive. Connection status goes to stderr.
//!
//! Commands: `/who` asks for presence, `/quit` (or end of input) leaves
//! once every line typed has been acknowledged.

use crate::link::{Happening, Link};
use crate::publish::random_id;
use crate::tail::write_line;
use crate::{CliError, Credentials, Endpoint};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

/// Lines typed but not yet acknowledged, at most: past it a line is
/// refused (printed as not sent) rather than held without bound.
const MAX_UNACKED: usize = 1000;
/// How long end of input waits for the last acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// When the server answers `unavailable` (e.g. a store fail-over), the
/// line is sent again after this long, with the same id.
const RESEND_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    pub room: String,
    /// Replay the events after this cursor first.
    pub since: Option<String>,
}

pub async fn chat(options: ChatOptions) -> Result<(), CliError> {
    let ChatOptions {
        endpoint,
        credentials,
        room,
        since,
    } = options;
    let mut link = Link::new(endpoint, credentials, room.clone(), since);
    let mut out = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut input_open = true;
    let mut drain_until = None::<Instant>;
    let mut resend_at = None::<Instant>;
    let prefix = random_id();
    let mut typed = 0u64;
    // (id, publish frame), oldest first.
    let mut unacked: VecDeque<(String, Value)> = VecDeque::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if !input_open && unacked.is_empty() {
            break;
        }
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            happening = link.next() => match happening? {
                Happening::Subscribed { gap, resumed } => {
                    let verb = if resumed { "reconnected to" } else { "joined" };
                    eprintln!("* {verb} {room}");
                    if gap {
                        say(&mut out, "* some messages were missed while away (the room's history no longer reaches back)").await?;
                    }
                    link.send(&json!({"type": "presence", "room": room})).await;
                    for (_, frame) in &unacked {
                        if !link.send(frame).await {
                            break;
                        }
                    }
                }
                Happening::Frame(frame, _) => {
                    on_frame(&frame, &room, &mut unacked, &mut resend_at, &mut out).await?;
                }
                Happening::Disconnected(why) => eprintln!("* disconnected ({why}); reconnecting"),
            },
            line = lines.next_line(), if input_open => match line {
                Ok(Some(line)) => {
                    let line = line.trim_end_matches('\r');
                    match line.trim() {
                        "" => {}
                        "/quit" => {
                            input_open = false;
                            drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
                        }
                        "/who" => {
                            if !link.send(&json!({"type": "presence", "room": room})).await {
                                say(&mut out, "* not connected; presence follows when back").await?;
                            }
                        }
                        _ if unacked.len() >= MAX_UNACKED => {
                            say(&mut out, &format!("* not sent ({MAX_UNACKED} lines wait for the server): {line}")).await?;
                        }
                        _ => {
                            typed += 1;
                            let id = format!("{prefix}-{typed}");
                            let frame = json!({"type": "publish", "room": room, "text": line, "id": id});
                            // Not connected: it goes out after the next subscribe.
                            link.send(&frame).await;
                            unacked.push_back((id, frame));
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    input_open = false;
                    drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
                }
            },
            () = tokio::time::sleep_until(resend_at.unwrap_or(far)), if resend_at.is_some() => {
                resend_at = None;
                for (_, frame) in &unacked {
                    if !link.send(frame).await {
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                link.close().await;
                return Err(CliError::GaveUp(format!(
                    "{} line(s) not acknowledged within {}s",
                    unacked.len(),
                    DRAIN_TIMEOUT.as_secs()
                )));
            }
            _ = &mut interrupted => break,
        }
    }
    link.close().await;
    Ok(())
}

async fn on_frame(
    frame: &Value,
    room: &str,
    unacked: &mut VecDeque<(String, Value)>,
    resend_at: &mut Option<Instant>,
    out: &mut tokio::io::Stdout,
) -> Result<(), CliError> {
    let text = |key: &str| frame[key].as_str().unwrap_or_default();
    let ours = text("room") == room;
    match text("type") {
        "message" if ours => {
            // `2026-11-24T10:00:00.000Z` → `10:00:00`.
            let time = text("ts").get(11..19).unwrap_or("--:--:--");
            say(out, &format!("[{time}] {}: {}", text("user"), text("text"))).await?;
        }
        "join" if ours => say(out, &format!("* {} joined", text("user"))).await?,
        "leave" if ours => say(out, &format!("* {} left", text("user"))).await?,
        "presence" if ours => {
            let users: Vec<&str> = frame["users"]
                .as_array()
                .map(|users| users.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            say(out, &format!("* here: {}", users.join(", "))).await?;
        }
        "ack" => unacked.retain(|(id, _)| id != text("id")),
        "error" => {
            let id = text("id");
            let pending = unacked
                .iter()
                .position(|(mine, _)| !id.is_empty() && mine == id);
            match (pending, text("code")) {
                // Retry with the same id: stored once whatever happened.
                (Some(_), "unavailable" | "rate_limited") => {
                    resend_at.get_or_insert(Instant::now() + RESEND_AFTER);
                }
                (Some(at), code) => {
                    let line = unacked
                        .remove(at)
                        .map(|(_, frame)| frame["text"].as_str().unwrap_or_default().to_owned())
                        .unwrap_or_default();
                    say(
                        out,
                        &format!("* not sent ({code}: {}): {line}", text("message")),
                    )
                    .await?;
                }
                (None, code) => say(out, &format!("* error: {code}: {}", text("message"))).await?,
            }
        }
        _ => {}
    }
    Ok(())
}

async fn say(out: &mut tokio::io::Stdout, line: &str) -> Result<(), CliError> {
    Ok(write_line(out, line).await?)
}
