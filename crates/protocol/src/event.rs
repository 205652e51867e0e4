use crate::{Cursor, EventFields, ProtocolError, RoomName, WireEvent, format_rfc3339_millis, pb};
use bytes::Bytes;
use prost::Message;
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// What happened in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A published message; `id` is the client's idempotency key, if any.
    Message { id: Option<String>, text: String },
    /// `user` entered the room (their first connection subscribed).
    Join,
    /// `user` left the room (their last connection went away).
    Leave,
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Message { .. } => "message",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
        }
    }
}

/// One stored event of a room log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub room: RoomName,
    pub cursor: Cursor,
    /// Offset of the room's previous event (0 if none), for gap detection.
    pub prev_offset: u64,
    pub user: String,
    pub kind: EventKind,
    pub ts_unix_ms: i64,
}

impl Event {
    /// The protobuf fields of this event (an encoding step: prefer
    /// [`SharedEvent::proto_bytes`] or [`crate::WireEvent::shared`]).
    pub fn to_fields(&self) -> EventFields {
        let (event_type, id, text) = match &self.kind {
            EventKind::Message { id, text } => (
                pb::EventType::Message,
                id.clone().unwrap_or_default(),
                text.clone(),
            ),
            EventKind::Join => (pb::EventType::Join, String::new(), String::new()),
            EventKind::Leave => (pb::EventType::Leave, String::new(), String::new()),
        };
        EventFields {
            room: self.room.to_string(),
            cursor: self.cursor.to_string(),
            r#type: event_type as i32,
            id,
            user: self.user.clone(),
            text,
            ts_unix_ms: self.ts_unix_ms,
            prev_offset: self.prev_offset,
        }
    }

    pub fn to_proto(&self) -> WireEvent {
        WireEvent::from(self.to_fields())
    }

    /// Validates an event that arrived from another process.
    pub fn from_proto(event: WireEvent) -> Result<Self, ProtocolError> {
        let event = event.into_fields();
        let kind = match pb::EventType::try_from(event.r#type) {
            Ok(pb::EventType::Message) => EventKind::Message {
                id: (!event.id.is_empty()).then_some(event.id),
                text: event.text,
            },
            Ok(pb::EventType::Join) => EventKind::Join,
            Ok(pb::EventType::Leave) => EventKind::Leave,
            _ => {
                return Err(ProtocolError::BadEvent(format!(
                    "unknown event type {}",
                    event.r#type
                )));
            }
        };
        Ok(Self {
            room: RoomName::parse(&event.room)?,
            cursor: event.cursor.parse()?,
            prev_offset: event.prev_offset,
            user: event.user,
            kind,
            ts_unix_ms: event.ts_unix_ms,
        })
    }

    fn json_body(&self, with_type: bool) -> EventJson<'_> {
        let (id, text) = match &self.kind {
            EventKind::Message { id, text } => (id.as_deref(), Some(text.as_str())),
            EventKind::Join | EventKind::Leave => (None, None),
        };
        EventJson {
            kind: with_type.then(|| self.kind.name()),
            room: self.room.as_str(),
            cursor: self.cursor.to_string(),
            id,
            user: &self.user,
            text,
            ts: format_rfc3339_millis(self.ts_unix_ms),
        }
    }
}

#[derive(Serialize)]
struct EventJson<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    room: &'a str,
    cursor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    ts: String,
}

/// An event plus its wire encodings, each computed at most once and then
/// shared by every subscriber as cheap-to-clone [`Bytes`].
///
/// Fan-out hands `Arc<SharedEvent>` to each connection; a connection asks
/// for the encoding its transport speaks. Encodings are lazy so an event
/// that only ever reaches WebSockets never pays for an SSE frame.
#[derive(Debug)]
pub struct SharedEvent {
    event: Event,
    json_frame: OnceLock<Bytes>,
    sse_frame: OnceLock<Bytes>,
    proto: OnceLock<Bytes>,
}

impl SharedEvent {
    pub fn new(event: Event) -> Arc<Self> {
        Arc::new(Self {
            event,
            json_frame: OnceLock::new(),
            sse_frame: OnceLock::new(),
            proto: OnceLock::new(),
        })
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    pub fn offset(&self) -> u64 {
        self.event.cursor.offset()
    }

    /// The WebSocket text frame: `{"type":"message","room":…}`.
    pub fn json_frame(&self) -> Bytes {
        self.json_frame
            .get_or_init(|| Bytes::from(to_json_vec(&self.event.json_body(true))))
            .clone()
    }

    /// The complete SSE frame: `id:` cursor, `event:` kind, `data:` JSON.
    pub fn sse_frame(&self) -> Bytes {
        self.sse_frame
            .get_or_init(|| {
                let data = to_json_vec(&self.event.json_body(false));
                let mut frame = Vec::with_capacity(data.len() + 64);
                frame.extend_from_slice(b"id: ");
                frame.extend_from_slice(self.event.cursor.to_string().as_bytes());
                frame.extend_from_slice(b"\nevent: ");
                frame.extend_from_slice(self.event.kind.name().as_bytes());
                frame.extend_from_slice(b"\ndata: ");
                frame.extend_from_slice(&data);
                frame.extend_from_slice(b"\n\n");
                Bytes::from(frame)
            })
            .clone()
    }

    /// The protobuf `switchboard.v1.Event` bytes (the NATS payload).
    pub fn proto_bytes(&self) -> Bytes {
        self.proto
            .get_or_init(|| Bytes::from(self.event.to_fields().encode_to_vec()))
            .clone()
    }
}

/// Serialising these plain structs cannot fail (no maps with non-string
/// keys, no custom serialisers), so a failure is a programming error; the
/// fallback keeps a bad event from taking a connection down.
pub(crate) fn to_json_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            room: RoomName::parse("lobby").expect("room"),
            cursor: "e1:42".parse().expect("cursor"),
            prev_offset: 41,
            user: "alice".into(),
            kind: EventKind::Message {
                id: Some("c-1".into()),
                text: "hello\nworld".into(),
            },
            ts_unix_ms: 1_795_514_400_000,
        }
    }

    #[test]
    fn json_frame_matches_the_spec_shape() {
        let shared = SharedEvent::new(sample());
        let v: serde_json::Value = serde_json::from_slice(&shared.json_frame()).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["cursor"], "e1:42");
        assert_eq!(v["id"], "c-1");
        assert_eq!(v["text"], "hello\nworld");
        assert_eq!(v["ts"], "2026-11-24T10:00:00.000Z");
    }

    #[test]
    fn sse_frame_is_one_event_with_cursor_id() {
        let frame = SharedEvent::new(sample()).sse_frame();
        let text = std::str::from_utf8(&frame).expect("utf8");
        assert!(text.starts_with("id: e1:42\nevent: message\ndata: {"));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(
            text.matches('\n').count(),
            4,
            "newlines in text are escaped"
        );
    }

    #[test]
    fn encodings_are_computed_once_and_shared() {
        let shared = SharedEvent::new(sample());
        assert_eq!(shared.json_frame().as_ptr(), shared.json_frame().as_ptr());
        assert_eq!(shared.proto_bytes().as_ptr(), shared.proto_bytes().as_ptr());
    }

    #[test]
    fn proto_round_trip() {
        let event = sample();
        let decoded = Event::from_proto(event.to_proto()).expect("decodes");
        assert_eq!(decoded, event);
        let join = Event {
            kind: EventKind::Join,
            ..sample()
        };
        assert_eq!(Event::from_proto(join.to_proto()).expect("decodes"), join);
    }
}
