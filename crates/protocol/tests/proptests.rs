//! Property tests of the parsers that take client input: room names,
//! cursors and JSON frames. Valid values round-trip; arbitrary strings
//! never panic and are accepted exactly when the grammar says so.
//! The fuzz targets in `fuzz/` check the same properties on bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::json;
use switchboard_protocol::frames::ClientFrame;
use switchboard_protocol::{Cursor, Epoch, ErrorCode, ProtocolError, RoomName};

/// `^[A-Za-z0-9_-]{1,64}$`, written independently of the parser.
fn is_room(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Strings near the grammars: their alphabets, the separators and subject
/// metacharacters, a few non-ASCII characters; more likely to hit an edge
/// than uniformly random strings.
fn near_miss() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:.*> +\\-\t\n\u{0}é😀０]{0,70}"
}

fn epoch() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{1,32}"
}

fn offset() -> impl Strategy<Value = u64> {
    0..=i64::MAX.unsigned_abs()
}

proptest! {
    #[test]
    fn valid_room_names_round_trip(name in "[A-Za-z0-9_-]{1,64}") {
        let room = RoomName::parse(&name).unwrap();
        prop_assert_eq!(room.as_str(), name.as_str());
        prop_assert_eq!(room.to_string(), name.clone());
        prop_assert_eq!(RoomName::parse(room.as_str()).unwrap(), room);
    }

    #[test]
    fn room_names_are_accepted_exactly_by_the_grammar(
        name in prop_oneof![any::<String>(), near_miss()],
    ) {
        match RoomName::parse(&name) {
            Ok(room) => {
                prop_assert!(is_room(&name), "accepted {:?}", name);
                prop_assert_eq!(room.as_str(), name.as_str());
            }
            Err(err) => {
                prop_assert!(!is_room(&name), "refused {:?}", name);
                prop_assert!(matches!(err, ProtocolError::InvalidRoom(_)));
                prop_assert_eq!(err.code(), ErrorCode::InvalidRoom);
            }
        }
    }

    /// No namespaces today: `ns:<room>` is refused like any `:`.
    #[test]
    fn namespaced_room_names_are_refused(ns in "[a-z]{0,8}", name in "[A-Za-z0-9_-]{0,60}") {
        let namespaced = format!("{ns}:{name}");
        prop_assert!(RoomName::parse(&namespaced).is_err(), "{:?}", namespaced);
    }

    #[test]
    fn valid_cursors_round_trip(epoch in epoch(), offset in offset()) {
        let text = format!("{epoch}:{offset}");
        let cursor: Cursor = text.parse().unwrap();
        prop_assert_eq!(cursor.epoch().as_str(), epoch.as_str());
        prop_assert_eq!(cursor.offset(), offset);
        prop_assert_eq!(cursor.to_string(), text);
        prop_assert_eq!(
            Cursor::new(Epoch::parse(&epoch).unwrap(), offset).to_string().parse::<Cursor>(),
            Ok(cursor)
        );
    }

    #[test]
    fn offsets_above_i64_max_are_refused(
        epoch in epoch(),
        offset in (i64::MAX.unsigned_abs() + 1)..=u64::MAX,
    ) {
        let text = format!("{epoch}:{offset}");
        prop_assert!(text.parse::<Cursor>().is_err(), "{:?}", text);
    }

    /// Only the spelling `Display` writes parses: arbitrary strings never
    /// panic, and an accepted one is its own `Display`.
    #[test]
    fn cursors_parse_only_canonical_spellings(
        text in prop_oneof![
            any::<String>(),
            near_miss(),
            (epoch(), "[+0-9 -]{0,22}").prop_map(|(e, o)| format!("{e}:{o}")),
            (epoch(), "[+0-]{0,2}[0-9]{1,20}").prop_map(|(e, o)| format!("{e}:{o}")),
        ],
    ) {
        match text.parse::<Cursor>() {
            Ok(cursor) => prop_assert_eq!(cursor.to_string(), text),
            Err(err) => prop_assert!(matches!(err, ProtocolError::BadCursor(_))),
        }
    }

    #[test]
    fn epochs_never_panic(text in prop_oneof![any::<String>(), near_miss()]) {
        let valid = (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric());
        prop_assert_eq!(Epoch::parse(&text).is_ok(), valid, "{:?}", text);
    }

    #[test]
    fn client_frames_round_trip_through_json((frame, json) in client_frame()) {
        prop_assert_eq!(ClientFrame::from_json(&json.to_string()), Ok(frame));
    }

    /// Unknown fields are ignored, for clients newer than the server.
    #[test]
    fn unknown_fields_do_not_change_a_frame(
        (frame, mut json) in client_frame(),
        key in "x[a-z]{0,8}",
        value in json_value(),
    ) {
        json[key] = value;
        prop_assert_eq!(ClientFrame::from_json(&json.to_string()), Ok(frame));
    }

    #[test]
    fn frames_never_panic_on_arbitrary_text(
        text in prop_oneof![
            any::<String>(),
            "\\{\"type\":\"[a-z]{0,12}\"(,\"[a-z]{1,6}\":(\"[^\"]{0,8}\"|[0-9.e+-]{1,8}|null|\\[\\]))*\\}",
        ],
    ) {
        if let Err(bad) = ClientFrame::from_json(&text) {
            prop_assert!(!bad.message.is_empty());
        }
    }

    /// Only objects are frames: serde would also read an array
    /// positionally.
    #[test]
    fn frames_are_objects(value in json_value()) {
        if ClientFrame::from_json(&value.to_string()).is_ok() {
            prop_assert!(value.is_object(), "{}", value);
        }
    }

    #[test]
    fn arrays_of_frame_fields_are_not_frames((_, json) in client_frame()) {
        let fields: Vec<_> = json.as_object().unwrap().values().cloned().collect();
        let array = serde_json::Value::from(fields).to_string();
        prop_assert!(ClientFrame::from_json(&array).is_err(), "{}", array);
    }
}

fn opt_string() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(any::<String>())
}

/// A frame and the JSON a client sends for it (absent options left out,
/// as clients do; the raw strings are arbitrary, since validation is the
/// session's).
fn client_frame() -> impl Strategy<Value = (ClientFrame, serde_json::Value)> {
    let room = any::<String>;
    prop_oneof![
        (room(), opt_string()).prop_map(|(room, since)| {
            let mut json = json!({"type": "subscribe", "room": room});
            if let Some(since) = &since {
                json["since"] = json!(since);
            }
            (ClientFrame::Subscribe { room, since }, json)
        }),
        room().prop_map(|room| {
            let json = json!({"type": "unsubscribe", "room": room});
            (ClientFrame::Unsubscribe { room }, json)
        }),
        (room(), any::<String>(), opt_string()).prop_map(|(room, text, id)| {
            let mut json = json!({"type": "publish", "room": room, "text": text});
            if let Some(id) = &id {
                json["id"] = json!(id);
            }
            (ClientFrame::Publish { room, text, id }, json)
        }),
        (
            room(),
            opt_string(),
            opt_string(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(room, before, after, limit)| {
                // `null` is the same as absent.
                let json = json!({
                    "type": "history", "room": room,
                    "before": before, "after": after, "limit": limit,
                });
                (
                    ClientFrame::History {
                        room,
                        before,
                        after,
                        limit,
                    },
                    json,
                )
            }),
        room().prop_map(|room| {
            let json = json!({"type": "presence", "room": room});
            (ClientFrame::Presence { room }, json)
        }),
        any::<String>().prop_map(|token| {
            let json = json!({"type": "refresh", "token": token});
            (ClientFrame::Refresh { token }, json)
        }),
        Just((ClientFrame::Ping, json!({"type": "ping"}))),
    ]
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
        Just(json!("subscribe")),
        Just(json!("publish")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("room".to_owned()),
                    Just("text".to_owned()),
                    Just("id".to_owned()),
                    Just("limit".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6,
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}
