//! Encoding of bus requests, replies and stored events on NATS.

use bytes::Bytes;
use prost::Message;
use std::sync::Arc;
use switchboard_bus::BusError;
use switchboard_protocol::pb::{self, bus_reply::Reply};
use switchboard_protocol::{ErrorCode, Event, EventFields, ProtocolError, SharedEvent, WireEvent};

/// Header naming the epoch (stream instance) a stored event belongs to;
/// with the stream sequence it makes the event's cursor.
pub const EPOCH_HEADER: &str = "Sb-Epoch";

/// Stored in place of `prev_offset` by every message of an atomic batch but
/// the first: its predecessor is the stream sequence right before its own
/// (a batch lands on consecutive sequences), which is not known when the
/// batch is sent. Readers turn it back into `sequence - 1` (ADR 0011).
/// Never a real predecessor: those are always below the event's sequence.
pub const PREV_IS_PRECEDING: u64 = u64::MAX;

pub fn encode_reply(reply: Reply) -> Bytes {
    Bytes::from(pb::BusReply { reply: Some(reply) }.encode_to_vec())
}

pub fn encode_error(code: ErrorCode, message: &str) -> Bytes {
    encode_reply(Reply::Error(pb::BusError {
        code: code.as_str().to_owned(),
        message: message.to_owned(),
    }))
}

/// A core's answer, with its error turned back into a [`BusError`].
pub fn decode_reply(payload: &[u8]) -> Result<Reply, BusError> {
    let reply = pb::BusReply::decode(payload)
        .map_err(|err| BusError::Unavailable(format!("undecodable core reply: {err}")))?;
    match reply.reply {
        Some(Reply::Error(err)) => Err(BusError::Remote {
            code: ErrorCode::parse(&err.code).unwrap_or(ErrorCode::Unavailable),
            message: err.message,
        }),
        Some(reply) => Ok(reply),
        None => Err(BusError::Unavailable("empty core reply".into())),
    }
}

/// Rebuilds a stored event: the payload is an `Event` without cursor; the
/// cursor is `<epoch>:<stream sequence>`.
pub fn stored_event(
    payload: &[u8],
    epoch: &str,
    sequence: u64,
) -> Result<Arc<SharedEvent>, ProtocolError> {
    let mut event =
        EventFields::decode(payload).map_err(|err| ProtocolError::BadEvent(err.to_string()))?;
    event.cursor = format!("{epoch}:{sequence}");
    if event.prev_offset == PREV_IS_PRECEDING {
        // Sequence 1 has no predecessor; `0` is "first of the room".
        event.prev_offset = sequence.saturating_sub(1);
    }
    Ok(SharedEvent::new(Event::from_proto(event.into())?))
}

/// Events for a reply, each written from its cached protobuf bytes.
pub fn events_to_proto(events: &[Arc<SharedEvent>]) -> Vec<WireEvent> {
    events.iter().cloned().map(WireEvent::shared).collect()
}

pub fn events_from_proto(events: Vec<WireEvent>) -> Result<Vec<Arc<SharedEvent>>, BusError> {
    events
        .into_iter()
        .map(|e| {
            Event::from_proto(e)
                .map(SharedEvent::new)
                .map_err(|err| BusError::Unavailable(format!("bad event from core: {err}")))
        })
        .collect()
}
