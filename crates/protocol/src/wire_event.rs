//! `switchboard.v1.Event` as gRPC and NATS carry it.
//!
//! tonic encodes every message it sends, once per stream: with a plain
//! generated `Event`, a room event sent to a thousand gRPC subscribers would
//! be encoded a thousand times. [`WireEvent`] is that message type instead
//! (`extern_path` in `build.rs`): built from a [`SharedEvent`] it writes the
//! protobuf bytes the event already holds, so the encoding happens once per
//! event whatever the number of subscribers; decoded from a peer it holds
//! the fields, readable through `Deref`.

use crate::SharedEvent;
use bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The fields of `switchboard.v1.Event` (`proto/switchboard/v1/event.proto`;
/// a test checks that the two agree field by field).
#[derive(Clone, PartialEq, Message)]
pub struct EventFields {
    #[prost(string, tag = "1")]
    pub room: String,
    #[prost(string, tag = "2")]
    pub cursor: String,
    #[prost(enumeration = "crate::pb::EventType", tag = "3")]
    pub r#type: i32,
    #[prost(string, tag = "4")]
    pub id: String,
    #[prost(string, tag = "5")]
    pub user: String,
    #[prost(string, tag = "6")]
    pub text: String,
    #[prost(int64, tag = "7")]
    pub ts_unix_ms: i64,
    #[prost(uint64, tag = "8")]
    pub prev_offset: u64,
}

/// A `switchboard.v1.Event` message: shared pre-encoded bytes, or fields.
#[derive(Default)]
pub struct WireEvent {
    shared: Option<Arc<SharedEvent>>,
    fields: OnceLock<EventFields>,
}

impl WireEvent {
    /// Sends `event` by its cached protobuf bytes: no encoding here.
    pub fn shared(event: Arc<SharedEvent>) -> Self {
        Self {
            shared: Some(event),
            fields: OnceLock::new(),
        }
    }

    pub fn into_fields(self) -> EventFields {
        match self.fields.into_inner() {
            Some(fields) => fields,
            None => self
                .shared
                .map(|e| e.event().to_fields())
                .unwrap_or_default(),
        }
    }

    fn fields_mut(&mut self) -> &mut EventFields {
        if self.fields.get().is_none() {
            let fields = self
                .shared
                .take()
                .map(|e| e.event().to_fields())
                .unwrap_or_default();
            let _ = self.fields.set(fields);
        }
        self.shared = None;
        self.fields
            .get_mut()
            .unwrap_or_else(|| unreachable!("set above"))
    }
}

impl From<EventFields> for WireEvent {
    fn from(fields: EventFields) -> Self {
        Self {
            shared: None,
            fields: OnceLock::from(fields),
        }
    }
}

impl std::ops::Deref for WireEvent {
    type Target = EventFields;

    /// The fields; for a shared event they are built on first access (the
    /// server never reads them, only encodes).
    fn deref(&self) -> &EventFields {
        self.fields.get_or_init(|| {
            self.shared
                .as_ref()
                .map(|e| e.event().to_fields())
                .unwrap_or_default()
        })
    }
}

impl Clone for WireEvent {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            fields: self.fields.clone(),
        }
    }
}

impl PartialEq for WireEvent {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for WireEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Message for WireEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.shared, self.fields.get()) {
            (Some(shared), _) => buf.put_slice(&shared.proto_bytes()),
            (None, Some(fields)) => fields.encode_raw(buf),
            (None, None) => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.fields_mut().merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match (&self.shared, self.fields.get()) {
            (Some(shared), _) => shared.proto_bytes().len(),
            (None, Some(fields)) => fields.encoded_len(),
            (None, None) => 0,
        }
    }

    fn clear(&mut self) {
        self.shared = None;
        self.fields = OnceLock::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventKind, RoomName};
    use prost_types::field_descriptor_proto::Type;

    fn sample() -> Arc<SharedEvent> {
        SharedEvent::new(Event {
            room: RoomName::parse("r").expect("room"),
            cursor: "e:7".parse().expect("cursor"),
            prev_offset: 6,
            user: "u".into(),
            kind: EventKind::Message {
                id: Some("i".into()),
                text: "hello".into(),
            },
            ts_unix_ms: 42,
        })
    }

    #[test]
    fn shared_events_write_the_cached_bytes() {
        let shared = sample();
        let wire = WireEvent::shared(shared.clone());
        let bytes = wire.encode_to_vec();
        assert_eq!(bytes, shared.proto_bytes().to_vec());
        let decoded = WireEvent::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.cursor, "e:7");
        assert_eq!(decoded.text, "hello");
        assert_eq!(Event::from_proto(decoded).expect("valid"), *shared.event());
    }

    /// `EventFields` must be the proto's `Event`, field for field.
    #[test]
    fn fields_match_the_proto_definition() {
        let fds = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let message = fds
            .file
            .iter()
            .filter(|f| f.package() == "switchboard.v1")
            .flat_map(|f| f.message_type.iter())
            .find(|m| m.name() == "Event")
            .expect("Event in the descriptors");
        let fields: Vec<(String, i32, Type)> = message
            .field
            .iter()
            .map(|f| (f.name().to_owned(), f.number(), f.r#type()))
            .collect();
        let expected = vec![
            ("room".to_owned(), 1, Type::String),
            ("cursor".to_owned(), 2, Type::String),
            ("type".to_owned(), 3, Type::Enum),
            ("id".to_owned(), 4, Type::String),
            ("user".to_owned(), 5, Type::String),
            ("text".to_owned(), 6, Type::String),
            ("ts_unix_ms".to_owned(), 7, Type::Int64),
            ("prev_offset".to_owned(), 8, Type::Uint64),
        ];
        assert_eq!(fields, expected);
    }
}
