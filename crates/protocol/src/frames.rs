//! The frames of the WebSocket protocol (spec §3) and their protobuf twins.
//!
//! [`ClientFrame`] is what any transport's client asked for, still holding
//! raw strings: rooms and cursors are validated by the session so that a bad
//! room gets `invalid_room` rather than `bad_frame`. [`ServerFrame`] is every
//! reply that is not a stored event; events travel as [`SharedEvent`]s.

use crate::event::to_json_vec;
use crate::{ErrorCode, SharedEvent, pb};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A command from a client, on any transport.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Subscribe {
        room: String,
        #[serde(default)]
        since: Option<String>,
    },
    Unsubscribe {
        room: String,
    },
    Publish {
        room: String,
        text: String,
        #[serde(default)]
        id: Option<String>,
    },
    History {
        room: String,
        #[serde(default)]
        before: Option<String>,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    Presence {
        room: String,
    },
    /// A new token for the same user (spec §7).
    Refresh {
        token: String,
    },
    Ping,
}

/// A frame that could not be understood. `id` is the publish id when one
/// could still be read, so the client can match the error to its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    pub id: Option<String>,
    pub message: String,
}

impl ClientFrame {
    /// Parses one JSON text frame.
    ///
    /// ```
    /// use switchboard_protocol::frames::ClientFrame;
    /// let f = ClientFrame::from_json(r#"{"type":"ping"}"#).unwrap();
    /// assert_eq!(f, ClientFrame::Ping);
    /// assert!(ClientFrame::from_json(r#"{"type":"dance"}"#).is_err());
    /// ```
    pub fn from_json(text: &str) -> Result<Self, BadFrame> {
        // serde's derived visitors also read a JSON array positionally
        // (`["publish","lobby","hi"]` would be a publish): frames are
        // objects, and a second syntax is a second thing to keep safe.
        if is_json_array(text.as_bytes()) {
            return Err(BadFrame {
                id: None,
                message: "not a valid frame: a frame is a JSON object, not an array".into(),
            });
        }
        serde_json::from_str(text).map_err(|err| {
            // Second, lenient look only on the error path: recover the id.
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
            let message = if err.is_syntax() || err.is_eof() {
                format!("not valid JSON: {err}")
            } else {
                format!("not a valid frame: {err}")
            };
            BadFrame { id, message }
        })
    }

    /// Converts a gRPC `Connect` frame; an empty oneof is a bad frame.
    pub fn from_proto(frame: pb::ClientFrame) -> Result<Self, BadFrame> {
        use pb::client_frame::Frame;
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        match frame.frame {
            Some(Frame::Subscribe(s)) => Ok(ClientFrame::Subscribe {
                room: s.room,
                since: non_empty(s.since),
            }),
            Some(Frame::Unsubscribe(u)) => Ok(ClientFrame::Unsubscribe { room: u.room }),
            Some(Frame::Publish(p)) => Ok(ClientFrame::Publish {
                room: p.room,
                text: p.text,
                id: non_empty(p.id),
            }),
            Some(Frame::History(h)) => Ok(ClientFrame::History {
                room: h.room,
                before: non_empty(h.before),
                after: non_empty(h.after),
                limit: (h.limit != 0).then_some(h.limit),
            }),
            Some(Frame::Presence(p)) => Ok(ClientFrame::Presence { room: p.room }),
            Some(Frame::Ping(_)) => Ok(ClientFrame::Ping),
            Some(Frame::Refresh(r)) => Ok(ClientFrame::Refresh { token: r.token }),
            None => Err(BadFrame {
                id: None,
                message: "empty frame: set one of the oneof fields".into(),
            }),
        }
    }
}

/// Whether `json` is an array (its first non-whitespace byte is `[`).
fn is_json_array(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'[')
}

/// Every server → client frame that is not a stored event.
#[derive(Debug, Clone)]
pub enum ServerFrame {
    Subscribed {
        room: String,
        cursor: String,
        recovered: bool,
    },
    Unsubscribed {
        room: String,
    },
    Ack {
        id: Option<String>,
        room: String,
        cursor: String,
        duplicate: bool,
    },
    History {
        room: String,
        events: Vec<Arc<SharedEvent>>,
    },
    Presence {
        room: String,
        users: Vec<String>,
    },
    Error {
        id: Option<String>,
        code: ErrorCode,
        message: String,
    },
    /// A refresh was accepted; the new token's `exp` (Unix seconds).
    Refreshed {
        exp: u64,
    },
    Pong,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum JsonFrame<'a> {
    Subscribed {
        room: &'a str,
        cursor: &'a str,
        recovered: bool,
    },
    Unsubscribed {
        room: &'a str,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        room: &'a str,
        cursor: &'a str,
        duplicate: bool,
    },
    Presence {
        room: &'a str,
        users: &'a [String],
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: &'static str,
        message: &'a str,
    },
    Refreshed {
        exp: u64,
    },
    Pong,
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id: None,
            code,
            message: message.into(),
        }
    }

    /// The JSON text frame of the WebSocket protocol.
    pub fn to_json(&self) -> Bytes {
        let frame = match self {
            ServerFrame::Subscribed {
                room,
                cursor,
                recovered,
            } => JsonFrame::Subscribed {
                room,
                cursor,
                recovered: *recovered,
            },
            ServerFrame::Unsubscribed { room } => JsonFrame::Unsubscribed { room },
            ServerFrame::Ack {
                id,
                room,
                cursor,
                duplicate,
            } => JsonFrame::Ack {
                id: id.as_deref(),
                room,
                cursor,
                duplicate: *duplicate,
            },
            ServerFrame::History { room, events } => return history_json(room, events),
            ServerFrame::Presence { room, users } => JsonFrame::Presence { room, users },
            ServerFrame::Error { id, code, message } => JsonFrame::Error {
                id: id.as_deref(),
                code: code.as_str(),
                message,
            },
            ServerFrame::Refreshed { exp } => JsonFrame::Refreshed { exp: *exp },
            ServerFrame::Pong => JsonFrame::Pong,
        };
        Bytes::from(to_json_vec(&frame))
    }

    /// The protobuf frame of the gRPC `Connect` stream.
    pub fn to_proto(&self) -> pb::ServerFrame {
        use pb::server_frame::Frame;
        let frame = match self {
            ServerFrame::Subscribed {
                room,
                cursor,
                recovered,
            } => Frame::Subscribed(pb::Subscribed {
                room: room.clone(),
                cursor: cursor.clone(),
                recovered: *recovered,
            }),
            ServerFrame::Unsubscribed { room } => {
                Frame::Unsubscribed(pb::Unsubscribed { room: room.clone() })
            }
            ServerFrame::Ack {
                id,
                room,
                cursor,
                duplicate,
            } => Frame::Ack(pb::PublishResponse {
                room: room.clone(),
                cursor: cursor.clone(),
                duplicate: *duplicate,
                id: id.clone().unwrap_or_default(),
            }),
            ServerFrame::History { room, events } => Frame::History(pb::HistoryResponse {
                room: room.clone(),
                events: events
                    .iter()
                    .cloned()
                    .map(crate::WireEvent::shared)
                    .collect(),
            }),
            ServerFrame::Presence { room, users } => Frame::Presence(pb::PresenceResponse {
                room: room.clone(),
                users: users.clone(),
            }),
            ServerFrame::Error { id, code, message } => Frame::Error(pb::Error {
                id: id.clone().unwrap_or_default(),
                code: code.as_str().to_owned(),
                message: message.clone(),
            }),
            ServerFrame::Refreshed { exp } => Frame::Refreshed(pb::Refreshed { exp: *exp }),
            ServerFrame::Pong => Frame::Pong(pb::Pong {}),
        };
        pb::ServerFrame { frame: Some(frame) }
    }
}

/// `{"type":"history","room":…,"events":[…]}` spliced from the events'
/// cached JSON frames instead of re-encoding them.
fn history_json(room: &str, events: &[Arc<SharedEvent>]) -> Bytes {
    let mut out = Vec::with_capacity(64 + events.len() * 160);
    out.extend_from_slice(b"{\"type\":\"history\",\"room\":");
    out.extend_from_slice(&to_json_vec(&room));
    out.extend_from_slice(b",\"events\":");
    out.extend_from_slice(&events_json_array(events));
    out.push(b'}');
    Bytes::from(out)
}

/// A JSON array of the events' cached frames, for history answers on any
/// transport.
pub fn events_json_array(events: &[Arc<SharedEvent>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + events.len() * 160);
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&event.json_frame());
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        let cases = [
            (
                r#"{"type":"subscribe","room":"lobby","since":"e:1"}"#,
                ClientFrame::Subscribe {
                    room: "lobby".into(),
                    since: Some("e:1".into()),
                },
            ),
            (
                r#"{"type":"publish","room":"r","text":"hi","id":"c-1"}"#,
                ClientFrame::Publish {
                    room: "r".into(),
                    text: "hi".into(),
                    id: Some("c-1".into()),
                },
            ),
            (
                r#"{"type":"history","room":"r","before":"e:9","limit":5}"#,
                ClientFrame::History {
                    room: "r".into(),
                    before: Some("e:9".into()),
                    after: None,
                    limit: Some(5),
                },
            ),
            (
                r#"{"type":"presence","room":"r"}"#,
                ClientFrame::Presence { room: "r".into() },
            ),
            (
                r#"{"type":"unsubscribe","room":"r"}"#,
                ClientFrame::Unsubscribe { room: "r".into() },
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(ClientFrame::from_json(json).expect(json), expected);
        }
    }

    #[test]
    fn bad_frames_keep_the_id() {
        let err = ClientFrame::from_json(r#"{"type":"publish","room":"r","id":"c-9"}"#)
            .expect_err("text missing");
        assert_eq!(err.id.as_deref(), Some("c-9"));
        assert!(
            ClientFrame::from_json("not json")
                .expect_err("bad")
                .message
                .contains("JSON")
        );
    }

    /// The hole the `http_body` fuzz target found in the publish body,
    /// here too: a JSON array was read positionally as a frame.
    #[test]
    fn arrays_are_not_frames() {
        for text in [
            r#"["ping"]"#,
            r#" ["publish","lobby","hi","c-1"]"#,
            "\n\t[\"subscribe\",\"lobby\"]",
        ] {
            let err = ClientFrame::from_json(text).expect_err(text);
            assert!(err.message.starts_with("not a valid frame"), "{err:?}");
        }
        assert_eq!(
            ClientFrame::from_json(r#" {"type":"ping"}"#).expect("object"),
            ClientFrame::Ping
        );
    }

    #[test]
    fn error_frame_json() {
        let json = ServerFrame::Error {
            id: Some("c-1".into()),
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["id"], "c-1");
    }
}
