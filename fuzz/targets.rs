//! The bodies of the fuzz targets: one `pub fn(&[u8])` per parser that
//! takes hostile input, each asserting what must hold for *any* input, not
//! only that nothing panics.
//!
//! They are plain functions, not `fuzz_target!` bodies, so that two crates
//! share them: the cargo-fuzz binaries in `fuzz_targets/` (this file is
//! the `switchboard-fuzz` library) and the workspace test
//! `crates/switchboard/tests/fuzz_corpus.rs` (which includes this file as a
//! module), which replays the committed corpus on stable in CI. Everything
//! used here must therefore be a dependency of both.
//!
//! A failed assertion is a finding: the input is a counterexample to a
//! property the rest of Switchboard relies on.

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Value, json};
use std::collections::HashMap;
use switchboard_auth::{AuthError, Authenticator, Identity, MAX_USER_LEN};
use switchboard_nats::Subjects;
use switchboard_protocol::frames::ClientFrame;
use switchboard_protocol::{Cursor, Epoch, ErrorCode, ProtocolError, RoomName};
use switchboard_sse::PublishBody;

/// A target: any bytes in, a panic when a property fails.
pub type Target = fn(&[u8]);

/// Every target with its corpus directory (`fuzz/corpus/<name>`) and its
/// `fuzz_targets/<name>.rs` binary.
pub const TARGETS: [(&str, Target); 5] = [
    ("client_frame", client_frame),
    ("cursor", cursor),
    ("room_name", room_name),
    ("http_body", http_body),
    ("jwt_header", jwt_header),
];

/// A WebSocket text frame as `ClientFrame::from_json` sees it.
///
/// Transports hand the parser only UTF-8 (tungstenite validates text
/// frames), so other bytes are made UTF-8 lossily rather than discarded:
/// they still reach the parser as U+FFFD.
///
/// Properties: an accepted frame says exactly what its JSON says (its
/// fields re-serialise to the same values and re-parse to the same frame),
/// and its rooms and cursors then go through their own parsers; a refused
/// one is `bad_frame` with the `id` the text carried, if any.
pub fn client_frame(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ClientFrame::from_json(&text) {
        Ok(frame) => {
            let fields = frame_json(&frame);
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("accepted frame is not JSON ({err}): {text:?}"));
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("accepted frame is not an object: {text:?}"));
            for (key, field) in fields.as_object().into_iter().flatten() {
                assert_eq!(
                    object.get(key),
                    Some(field),
                    "field {key:?} of {frame:?} differs from the text {text:?}"
                );
            }
            let again = ClientFrame::from_json(&fields.to_string())
                .unwrap_or_else(|bad| panic!("{frame:?} re-encoded does not parse: {bad:?}"));
            assert_eq!(again, frame, "re-encoded frame differs");
            // What the session does next with the raw strings.
            let (room, cursors) = frame_strings(&frame);
            if let Some(room) = room {
                check_room(room);
            }
            for cursor in cursors.into_iter().flatten() {
                check_cursor(cursor);
            }
        }
        Err(bad) => {
            assert!(
                bad.message.starts_with("not valid JSON: ")
                    || bad.message.starts_with("not a valid frame: "),
                "unexpected error message {:?}",
                bad.message
            );
            let id = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
            assert_eq!(bad.id, id, "the error's id is the text's id");
        }
    }
}

/// The JSON a client would send for `frame`, absent options left out.
fn frame_json(frame: &ClientFrame) -> Value {
    let mut v = match frame {
        ClientFrame::Subscribe { room, since } => {
            json!({"type": "subscribe", "room": room, "since": since})
        }
        ClientFrame::Unsubscribe { room } => json!({"type": "unsubscribe", "room": room}),
        ClientFrame::Publish { room, text, id } => {
            json!({"type": "publish", "room": room, "text": text, "id": id})
        }
        ClientFrame::History {
            room,
            before,
            after,
            limit,
        } => json!({
            "type": "history", "room": room, "before": before, "after": after, "limit": limit,
        }),
        ClientFrame::Presence { room } => json!({"type": "presence", "room": room}),
        ClientFrame::Refresh { token } => json!({"type": "refresh", "token": token}),
        ClientFrame::Ping => json!({"type": "ping"}),
    };
    if let Some(object) = v.as_object_mut() {
        object.retain(|_, field| !field.is_null());
    }
    v
}

/// The room and cursors of a frame, which the session validates.
fn frame_strings(frame: &ClientFrame) -> (Option<&str>, [Option<&str>; 2]) {
    match frame {
        ClientFrame::Subscribe { room, since } => (Some(room), [since.as_deref(), None]),
        ClientFrame::History {
            room,
            before,
            after,
            ..
        } => (Some(room), [before.as_deref(), after.as_deref()]),
        ClientFrame::Unsubscribe { room }
        | ClientFrame::Publish { room, .. }
        | ClientFrame::Presence { room } => (Some(room), [None, None]),
        ClientFrame::Refresh { .. } | ClientFrame::Ping => (None, [None, None]),
    }
}

/// What `?since=` holds when a `Last-Event-ID` header is ignored.
const SINCE_PARAM: &str = "fallback0:1";

/// A cursor, from a JSON frame or query parameter (any UTF-8) and as a
/// `Last-Event-ID` header value (any bytes a header may hold), through the
/// SSE gateway's own choice between the two.
///
/// Properties: only the canonical spelling `<epoch>:<offset>` parses (so
/// a cursor *is* its `Display`), epochs are `[A-Za-z0-9]{1,32}`, offsets
/// stay at most `i64::MAX` so `offset + 1` never overflows; refusals are
/// `BadCursor`, code `bad_frame`, with a printable message.
pub fn cursor(data: &[u8]) {
    check_cursor(&String::from_utf8_lossy(data));

    let Ok(value) = HeaderValue::from_bytes(data) else {
        return; // hyper refuses such a header before we see it
    };
    let mut headers = HeaderMap::new();
    headers.insert("last-event-id", value.clone());
    let params = HashMap::from([("since".to_owned(), SINCE_PARAM.to_owned())]);
    let since = switchboard_sse::resume_from(&headers, &params);
    match value.to_str() {
        Ok(header) if !header.is_empty() => {
            assert_eq!(since, Some(header), "a usable Last-Event-ID wins")
        }
        _ => assert_eq!(since, Some(SINCE_PARAM), "an unusable one is ignored"),
    }
    if let Some(since) = since {
        check_cursor(since);
    }
}

fn check_cursor(s: &str) {
    match s.parse::<Cursor>() {
        Ok(cursor) => {
            let shown = cursor.to_string();
            assert_eq!(shown, s, "accepted a non-canonical cursor");
            assert_eq!(shown.parse::<Cursor>().as_ref(), Ok(&cursor));
            assert!(
                cursor.offset() <= i64::MAX.unsigned_abs(),
                "offset out of range: {s:?}"
            );
            let epoch = cursor.epoch().as_str();
            assert!(
                (1..=32).contains(&epoch.len()) && epoch.bytes().all(|b| b.is_ascii_alphanumeric()),
                "bad epoch accepted: {s:?}"
            );
            assert_eq!(Epoch::parse(epoch).as_ref(), Ok(cursor.epoch()));
        }
        Err(err) => {
            assert!(matches!(err, ProtocolError::BadCursor(_)), "{err:?}");
            assert_eq!(err.code(), ErrorCode::BadFrame);
            assert_printable(&err.to_string());
        }
    }
}

/// A room name, bare and with a namespace prefix (`ns:<name>`).
///
/// The grammar today is `^[A-Za-z0-9_-]{1,64}$` with no namespaces: a
/// `:` is refused like `.`. Properties: an accepted name is exactly its
/// input, re-parses to itself, and is one NATS subject token in every
/// subject Switchboard builds from it (no `.`, `*`, `>`, whitespace or
/// control character can address another room); refusals are
/// `invalid_room` with a short, printable message.
pub fn room_name(data: &[u8]) {
    let name = String::from_utf8_lossy(data);
    check_room(&name);
    check_room(&format!("ns:{name}"));
    check_room(&format!("{name}:ns"));
}

fn check_room(name: &str) {
    match RoomName::parse(name) {
        Ok(room) => {
            assert_eq!(room.as_str(), name);
            assert_eq!(RoomName::parse(room.as_str()).as_ref(), Ok(&room));
            assert!((1..=64).contains(&name.len()), "length {}", name.len());
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "outside the room alphabet: {name:?}"
            );
            assert!(
                !name.contains(['.', '*', '>', ':'])
                    && !name.chars().any(|c| c.is_whitespace() || c.is_control()),
                "a subject metacharacter in {name:?}"
            );
            let subjects = match Subjects::new("sb") {
                Ok(subjects) => subjects,
                Err(err) => panic!("a valid prefix is refused: {err}"),
            };
            for op in ["publish", "resume", "history", "presence", "join", "leave"] {
                let subject = format!("sb.req.{op}.{room}");
                let parsed = subjects.parse_request(&subject).map(|(_, room)| room);
                assert_eq!(parsed.as_ref(), Some(&room), "{subject}");
            }
            assert_eq!(subjects.log(&room).split('.').count(), 3);
            assert_eq!(subjects.live(&room).split('.').count(), 3);
        }
        Err(err) => {
            let ProtocolError::InvalidRoom(shown) = &err else {
                panic!("{name:?}: {err:?}");
            };
            assert_eq!(err.code(), ErrorCode::InvalidRoom);
            // 80 characters, each escaped to at most `\u{10ffff}`, and `…`.
            assert!(shown.chars().count() <= 80 * 10 + 1, "{shown:?}");
            assert_printable(shown);
        }
    }
}

/// A body of `POST /api/rooms/{room}/messages`, as the handler parses it.
///
/// Properties: an accepted body is UTF-8 JSON, an object with `text` and
/// at most `id` (or `null` for it) whose values are the body's fields, and
/// re-encoding the fields parses back to the same body.
pub fn http_body(data: &[u8]) {
    let Ok(body) = PublishBody::from_json(data) else {
        return;
    };
    let text = std::str::from_utf8(data)
        .unwrap_or_else(|err| panic!("accepted a body that is not UTF-8: {err}"));
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("accepted a body that is not JSON ({err}): {text:?}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("accepted a body that is not an object: {text:?}"));
    assert!(
        object.keys().all(|key| key == "text" || key == "id"),
        "unknown field accepted: {text:?}"
    );
    assert_eq!(
        object.get("text").and_then(Value::as_str),
        Some(&*body.text)
    );
    let id = object.get("id").filter(|id| !id.is_null());
    assert_eq!(id.and_then(Value::as_str), body.id.as_deref(), "{text:?}");
    let again = json!({"text": body.text, "id": body.id}).to_string();
    assert_eq!(PublishBody::from_json(again.as_bytes()).ok(), Some(body));
}

/// The HS256 secret of the `jwt_header` target: whoever does not know it
/// cannot mint a token, and the fuzzer does not.
const SECRET: &[u8] = b"switchboard-fuzz-secret-0123456789";

/// Claims of a token that is valid until 2100 (sub `fuzz`), for inputs
/// that give only a header.
const VALID_CLAIMS: &str = r#"{"sub":"fuzz","exp":4102444800}"#;

/// The JWT path of every transport, three ways:
///
/// 1. the input as a whole token: `decode_header`, and `authenticate`
///    against an HS256 key; with the key unknown to the fuzzer, anything
///    accepted must carry a valid HS256 signature;
/// 2. the same as an `Authorization: Bearer` header, through the
///    transports' `request_token`;
/// 3. the input as the JSON *header* of a token correctly signed with the
///    key (and, after a newline, its claims; valid claims otherwise): the
///    key fixes the algorithm, so `alg: none`, `HS512` or `RS256` headers
///    are refused however they are spelled, and so is a `crit` header
///    (RFC 7515 §4.1.11: extensions we do not understand). An HS256
///    header with valid claims is accepted.
pub fn jwt_header(data: &[u8]) {
    let auth = match Authenticator::hs256(SECRET) {
        Ok(auth) => auth,
        Err(err) => panic!("a 34-byte secret is refused: {err}"),
    };
    let text = String::from_utf8_lossy(data);
    check_raw_token(&auth, &text);

    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(data);
    if let Ok(value) = HeaderValue::from_bytes(&bearer) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.clone());
        let token = switchboard_gateway::request_token(&headers, None);
        match value.to_str() {
            Ok(_) => assert_eq!(token, Some(text.trim()), "the bearer token is the header's"),
            Err(_) => assert_eq!(token, None, "a header that is not text holds no token"),
        }
        if let Some(token) = token {
            check_raw_token(&auth, token);
        }
    }

    let (header, claims) = match data.iter().position(|&b| b == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, VALID_CLAIMS.as_bytes()),
    };
    let message = format!("{}.{}", base64url(header), base64url(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap_or_else(|err| panic!("HMAC signs any message: {err}"));
    let token = format!("{message}.{signature}");
    let parsed = jsonwebtoken::decode_header(&token);
    let outcome = auth.authenticate(Some(&token), None);
    let hs256 = parsed.as_ref().is_ok_and(|h| h.alg == Algorithm::HS256);
    let crit = parsed.as_ref().is_ok_and(|h| h.crit.is_some());
    match &outcome {
        Ok(identity) => {
            assert!(hs256, "accepted a token whose header is {parsed:?}");
            assert!(
                !crit,
                "accepted a token with critical extensions: {parsed:?}"
            );
            check_identity(identity, claims);
        }
        Err(err) => {
            assert!(!matches!(
                err,
                AuthError::MissingToken | AuthError::Config(_)
            ));
            if hs256 && !crit && claims == VALID_CLAIMS.as_bytes() {
                panic!("refused an HS256 header {parsed:?} with valid claims: {err}");
            }
        }
    }
}

/// `token` as a transport hands it to the authenticator.
fn check_raw_token(auth: &Authenticator, token: &str) {
    let header = jsonwebtoken::decode_header(token);
    match auth.authenticate(Some(token), None) {
        Ok(identity) => {
            let header = header.unwrap_or_else(|err| panic!("accepted, no header: {err}"));
            assert_eq!(header.alg, Algorithm::HS256, "accepted {header:?}");
            let (message, signature) = token.rsplit_once('.').unwrap_or_default();
            let verified = jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &DecodingKey::from_secret(SECRET),
                Algorithm::HS256,
            );
            assert!(
                matches!(verified, Ok(true)),
                "accepted a token not signed with the key: {token:?}"
            );
            let claims = message.split_once('.').map(|(_, c)| c).unwrap_or_default();
            let claims = base64url_decode(claims).unwrap_or_default();
            check_identity(&identity, &claims);
        }
        Err(AuthError::MissingToken) => assert!(token.is_empty(), "{token:?}"),
        Err(err) => assert!(
            matches!(
                err,
                AuthError::InvalidToken(_) | AuthError::Expired | AuthError::BadUser(_)
            ),
            "{err:?}"
        ),
    }
}

/// An accepted identity is what the signed claims say, within the limits
/// every event relies on.
fn check_identity(identity: &Identity, claims: &[u8]) {
    // Claims Switchboard does not read are skipped by serde unvalidated,
    // so an accepted token may carry invalid UTF-8 or lone surrogates
    // there (found by this target; harmless: signed by the key holder,
    // never read). Only when the claims still parse as a `Value` can
    // `sub` be compared.
    if let Ok(claims) = serde_json::from_str::<Value>(&String::from_utf8_lossy(claims)) {
        assert_eq!(
            claims.get("sub").and_then(Value::as_str),
            Some(&*identity.user)
        );
    }
    assert!(
        !identity.user.is_empty()
            && identity.user.len() <= MAX_USER_LEN
            && !identity.user.chars().any(char::is_control),
        "bad user accepted: {:?}",
        identity.user
    );
    assert!(identity.expires_at.is_some(), "a token always expires");
    assert!(!identity.is_expired(), "accepted an expired token");
}

/// Refusals are echoed to clients and logs: one printable line.
fn assert_printable(message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "control character in {message:?}"
    );
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5), the JWS encoding; small enough to
/// keep the target free of another dependency.
fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(BASE64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The inverse of [`base64url`]; `None` for anything else.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let digit = BASE64URL.iter().position(|&d| d == c)?;
        acc = (acc << 6) | u32::try_from(digit).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}
