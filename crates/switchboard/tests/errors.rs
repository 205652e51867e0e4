//! Every error of the spec provoked by real bad input, on every transport:
//! the right code, and (except for abuse) a connection that keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Ended, TestServer, WAIT, Ws, next_grpc};
use futures::SinkExt;
use serde_json::{Value, json};
use std::time::Duration;
use switchboard_protocol::pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// Invalid room names of the spec: NATS subject tokens, empty, too long.
fn bad_rooms() -> Vec<String> {
    vec![
        "a.b".into(),
        ">".into(),
        "*".into(),
        String::new(),
        "x".repeat(65),
    ]
}

/// The next frame that is not a room event (a reply to a command).
async fn reply(ws: &mut Ws) -> Value {
    ws.recv_until(|f| !matches!(f["type"].as_str(), Some("message" | "join" | "leave")))
        .await
}

/// The next reply must be an error with `code` (and `id` when given).
async fn expect_error(ws: &mut Ws, code: &str, id: Option<&str>, what: &str) -> Value {
    let frame = reply(ws).await;
    assert_eq!(
        frame["type"], "error",
        "{what}: expected an error, got {frame}"
    );
    assert_eq!(frame["code"], code, "{what}: wrong code in {frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error without message: {frame}"
    );
    if let Some(id) = id {
        assert_eq!(frame["id"], id, "{what}: error must echo the id: {frame}");
    }
    frame
}

/// The connection still answers: ping → pong, and a publish gets its ack.
async fn assert_alive(ws: &mut Ws, tag: &str) {
    ws.send(json!({"type": "ping"})).await;
    let pong = reply(ws).await;
    assert_eq!(
        pong["type"], "pong",
        "after {tag}: ping must get pong, got {pong}"
    );
    let id = format!("alive-{tag}");
    ws.send(json!({"type": "publish", "room": "alive", "text": "still here", "id": id}))
        .await;
    let ack = reply(ws).await;
    assert_eq!(
        ack["type"], "ack",
        "after {tag}: publish must be acked, got {ack}"
    );
    assert_eq!(ack["id"], id.as_str());
    assert_eq!(ack["room"], "alive");
}

// ---------------------------------------------------------------- WebSocket

#[tokio::test]
async fn ws_invalid_json_is_bad_frame_and_connection_survives() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.send_text("this is not json").await;
    expect_error(&mut ws, "bad_frame", None, "invalid JSON").await;
    assert_alive(&mut ws, "invalid-json").await;
    ws.send_text("{\"type\":\"publish\",").await;
    expect_error(&mut ws, "bad_frame", None, "truncated JSON").await;
    assert_alive(&mut ws, "truncated-json").await;
}

#[tokio::test]
async fn ws_unknown_type_is_bad_frame() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.send(json!({"type": "dance", "room": "lobby"})).await;
    expect_error(&mut ws, "bad_frame", None, "unknown type").await;
    assert_alive(&mut ws, "unknown-type").await;
    ws.send(json!({"room": "lobby"})).await;
    expect_error(&mut ws, "bad_frame", None, "missing type").await;
    assert_alive(&mut ws, "missing-type").await;
}

#[tokio::test]
async fn ws_missing_field_is_bad_frame_with_id() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.send(json!({"type": "publish", "room": "lobby", "id": "c-9"}))
        .await;
    expect_error(&mut ws, "bad_frame", Some("c-9"), "publish without text").await;
    assert_alive(&mut ws, "missing-text").await;
    ws.send(json!({"type": "subscribe"})).await;
    expect_error(&mut ws, "bad_frame", None, "subscribe without room").await;
    assert_alive(&mut ws, "missing-room").await;
    ws.send(json!({"type": "publish", "room": "lobby", "text": 42, "id": "c-10"}))
        .await;
    expect_error(&mut ws, "bad_frame", Some("c-10"), "text of the wrong type").await;
    assert_alive(&mut ws, "wrong-type").await;
}

#[tokio::test]
async fn ws_binary_frame_is_bad_frame_and_connection_survives() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.stream
        .send(Message::binary(vec![0x7b, 0x00, 0xff, 0x01]))
        .await
        .expect("binary frame sent");
    expect_error(&mut ws, "bad_frame", None, "binary frame").await;
    assert_alive(&mut ws, "binary").await;
}

#[tokio::test]
async fn ws_bad_since_cursor_is_bad_frame() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    for (i, since) in ["garbage", "abc:notanumber", ":5", "a.b:1"]
        .iter()
        .enumerate()
    {
        ws.send(json!({"type": "subscribe", "room": "lobby", "since": since}))
            .await;
        expect_error(&mut ws, "bad_frame", None, &format!("since {since:?}")).await;
        assert_alive(&mut ws, &format!("bad-since-{i}")).await;
    }
    // The failed subscribes left nothing behind: subscribing now works.
    let subscribed = ws.subscribe("lobby", None).await;
    assert_eq!(subscribed["room"], "lobby");
}

#[tokio::test]
async fn ws_invalid_rooms_on_subscribe_and_publish() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    for (i, room) in bad_rooms().iter().enumerate() {
        ws.send(json!({"type": "subscribe", "room": room})).await;
        expect_error(
            &mut ws,
            "invalid_room",
            None,
            &format!("subscribe {room:?}"),
        )
        .await;
        assert_alive(&mut ws, &format!("sub-room-{i}")).await;

        let id = format!("bad-room-{i}");
        ws.send(json!({"type": "publish", "room": room, "text": "hi", "id": id}))
            .await;
        expect_error(
            &mut ws,
            "invalid_room",
            Some(&id),
            &format!("publish {room:?}"),
        )
        .await;
        assert_alive(&mut ws, &format!("pub-room-{i}")).await;

        ws.send(json!({"type": "history", "room": room})).await;
        expect_error(&mut ws, "invalid_room", None, &format!("history {room:?}")).await;
        ws.send(json!({"type": "presence", "room": room})).await;
        expect_error(&mut ws, "invalid_room", None, &format!("presence {room:?}")).await;
        ws.send(json!({"type": "unsubscribe", "room": room})).await;
        expect_error(
            &mut ws,
            "invalid_room",
            None,
            &format!("unsubscribe {room:?}"),
        )
        .await;
    }
    // 64 characters is still a valid room.
    let longest = "y".repeat(64);
    assert_eq!(ws.subscribe(&longest, None).await["room"], longest.as_str());
}

#[tokio::test]
async fn ws_text_over_limit_is_too_large_and_connection_survives() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.subscribe("big", None).await;
    let text = "x".repeat(4097);
    ws.send(json!({"type": "publish", "room": "big", "text": text, "id": "big-1"}))
        .await;
    expect_error(&mut ws, "too_large", Some("big-1"), "4097-byte text").await;
    assert_alive(&mut ws, "too-large").await;
    // Exactly at the limit is fine, and it reaches the subscriber.
    let text = "y".repeat(4096);
    let ack = ws.publish("big", &text, "big-2").await;
    assert_eq!(ack["type"], "ack", "4096 bytes is within the limit: {ack}");
    let event = ws
        .recv_until(|f| f["type"] == "message" && f["id"] == "big-2")
        .await;
    assert_eq!(event["text"].as_str().map(str::len), Some(4096));
    // The refused one was never stored.
    ws.send(json!({"type": "history", "room": "big"})).await;
    let history = ws.recv_type("history").await;
    let ids: Vec<&Value> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, vec!["big-2"], "history: {history}");
}

#[tokio::test]
async fn ws_publish_rate_limit() {
    let server = TestServer::with_args(&["--publish-rate", "1", "--publish-burst", "3"]).await;
    let mut ws = server.ws("/ws?user=eve").await;
    for i in 0..3 {
        let ack = ws.publish("rl", "hi", &format!("rl-{i}")).await;
        assert_eq!(ack["type"], "ack", "publish {i} within the burst: {ack}");
    }
    let refused = ws.publish("rl", "hi", "rl-3").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refused["id"], "rl-3");

    // Still open: ping works at once, and publishing works again once the
    // bucket has refilled (1 token per second).
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(reply(&mut ws).await["type"], "pong");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let frame = ws
            .publish("rl", "again", &format!("rl-retry-{attempt}"))
            .await;
        if frame["type"] == "ack" {
            break;
        }
        assert_eq!(frame["code"], "rate_limited", "{frame}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "rate limit never refilled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Refilled at 1/s: it cannot have taken fewer than a few attempts.
    assert!(attempt > 1, "the bucket refilled too fast");
}

#[tokio::test]
async fn ws_unsubscribe_unknown_room_is_not_subscribed() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.send(json!({"type": "unsubscribe", "room": "nowhere"}))
        .await;
    expect_error(&mut ws, "not_subscribed", None, "unsubscribe unknown").await;
    assert_alive(&mut ws, "not-subscribed").await;

    // Subscribe, unsubscribe (confirmed), then unsubscribing again fails.
    ws.subscribe("somewhere", None).await;
    ws.send(json!({"type": "unsubscribe", "room": "somewhere"}))
        .await;
    let confirmed = ws.recv_type("unsubscribed").await;
    assert_eq!(confirmed["room"], "somewhere");
    ws.send(json!({"type": "unsubscribe", "room": "somewhere"}))
        .await;
    expect_error(&mut ws, "not_subscribed", None, "second unsubscribe").await;
    assert_alive(&mut ws, "not-subscribed-2").await;
}

#[tokio::test]
async fn ws_double_subscribe_is_bad_frame() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.subscribe("twice", None).await;
    ws.send(json!({"type": "subscribe", "room": "twice"})).await;
    expect_error(&mut ws, "bad_frame", None, "double subscribe").await;
    assert_alive(&mut ws, "double-subscribe").await;
    // The first subscription still delivers.
    let ack = ws.publish("twice", "still subscribed", "tw-1").await;
    assert_eq!(ack["type"], "ack");
    let event = ws
        .recv_until(|f| f["type"] == "message" && f["id"] == "tw-1")
        .await;
    assert_eq!(event["text"], "still subscribed");
}

#[tokio::test]
async fn ws_room_limit_is_forbidden() {
    let server = TestServer::with_args(&["--max-rooms-per-connection", "2"]).await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.subscribe("r1", None).await;
    ws.subscribe("r2", None).await;
    ws.send(json!({"type": "subscribe", "room": "r3"})).await;
    expect_error(&mut ws, "forbidden", None, "third room").await;
    assert_alive(&mut ws, "room-limit").await;
    // Leaving a room frees a slot.
    ws.send(json!({"type": "unsubscribe", "room": "r1"})).await;
    ws.recv_type("unsubscribed").await;
    assert_eq!(ws.subscribe("r3", None).await["room"], "r3");
}

#[tokio::test]
async fn ws_frame_over_limit_closes_1009() {
    let server =
        TestServer::with_args(&["--max-frame-bytes", "8192", "--max-text-bytes", "4096"]).await;
    let mut ws = server.ws("/ws?user=eve").await;
    // A frame just under the limit with a too-long text is a plain error…
    let text = "x".repeat(5000);
    ws.send(json!({"type": "publish", "room": "lobby", "text": text, "id": "f-1"}))
        .await;
    expect_error(&mut ws, "too_large", Some("f-1"), "text within frame limit").await;
    assert_alive(&mut ws, "frame-limit").await;
    // …a frame over the limit is abuse: close 1009.
    let text = "x".repeat(9000);
    ws.send(json!({"type": "publish", "room": "lobby", "text": text, "id": "f-2"}))
        .await;
    assert_eq!(ws.ended().await, Ended::Close(1009));
}

// ------------------------------------------------------------ Origin check

fn ws_request(
    server: &TestServer,
    path: &str,
    origin: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = server.ws_url(path).into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("header value"));
    }
    request
}

#[tokio::test]
async fn origin_allowlist() {
    let server = TestServer::with_args(&["--allowed-origins", "http://good.example"]).await;

    match Ws::try_connect(ws_request(
        &server,
        "/ws?user=o",
        Some("http://evil.example"),
    ))
    .await
    {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
        }
        Err(other) => panic!("expected an HTTP 403 refusal, got {other}"),
        Ok(_) => panic!("an upgrade from a foreign origin must be refused"),
    }
    let (status, body) = server
        .upgrade_refusal("/ws?user=o", &[("origin", "http://evil.example")])
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    // /ws/chat is checked the same way.
    let (status, body) = server
        .upgrade_refusal("/ws/chat?user=o", &[("origin", "http://evil.example")])
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    let mut good = Ws::try_connect(ws_request(
        &server,
        "/ws?user=g",
        Some("http://good.example"),
    ))
    .await
    .unwrap_or_else(|err| panic!("allowed origin refused: {err}"));
    good.send(json!({"type": "ping"})).await;
    assert_eq!(good.recv().await["type"], "pong");

    let mut native = Ws::try_connect(ws_request(&server, "/ws?user=n", None))
        .await
        .unwrap_or_else(|err| panic!("client without Origin refused: {err}"));
    native.send(json!({"type": "ping"})).await;
    assert_eq!(native.recv().await["type"], "pong");
}

// ------------------------------------------------------------------ HTTP API

async fn post_raw(server: &TestServer, room: &str, body: String) -> (u16, Value) {
    let response = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(server.url(&format!("/api/rooms/{room}/messages?user=http")))
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .expect("POST answers in time")
    .expect("POST sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_api_error(status: u16, body: &Value, want_status: u16, want_code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["error"]["code"], want_code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: error without message: {body}"
    );
}

#[tokio::test]
async fn http_bad_body_is_400_bad_frame() {
    let server = TestServer::start().await;
    for (what, body) in [
        ("not JSON", "this is not json".to_owned()),
        ("truncated JSON", "{\"text\":".to_owned()),
        ("missing text", "{\"id\":\"x\"}".to_owned()),
        ("text of the wrong type", "{\"text\":42}".to_owned()),
        ("JSON array", "[1,2,3]".to_owned()),
    ] {
        let (status, reply) = post_raw(&server, "lobby", body).await;
        assert_api_error(status, &reply, 400, "bad_frame", what);
    }
    // The API still works afterwards.
    let (status, reply) = server.post("lobby", json!({"text": "fine"}), &[]).await;
    assert_eq!(status, 201, "{reply}");
}

#[tokio::test]
async fn http_invalid_room_is_400() {
    let server = TestServer::start().await;
    let long = "x".repeat(65);
    for room in ["a.b", "%3E", "*", long.as_str()] {
        let (status, body) = server.post(room, json!({"text": "hi"}), &[]).await;
        assert_api_error(
            status,
            &body,
            400,
            "invalid_room",
            &format!("POST to {room}"),
        );
        let (status, body) = server
            .get_json(&format!("/api/rooms/{room}/messages"))
            .await;
        assert_api_error(
            status,
            &body,
            400,
            "invalid_room",
            &format!("history of {room}"),
        );
        let (status, body) = server
            .get_json(&format!("/api/rooms/{room}/presence"))
            .await;
        assert_api_error(
            status,
            &body,
            400,
            "invalid_room",
            &format!("presence of {room}"),
        );
    }
}

#[tokio::test]
async fn http_history_bad_cursor_and_limit_are_400() {
    let server = TestServer::start().await;
    let (status, body) = server
        .get_json("/api/rooms/lobby/messages?after=garbage")
        .await;
    assert_api_error(status, &body, 400, "bad_frame", "bad after cursor");
    let (status, body) = server
        .get_json("/api/rooms/lobby/messages?limit=many")
        .await;
    assert_api_error(status, &body, 400, "bad_frame", "bad limit");
}

#[tokio::test]
async fn http_too_large_is_413() {
    let server =
        TestServer::with_args(&["--max-frame-bytes", "8192", "--max-text-bytes", "4096"]).await;
    // Body over --max-frame-bytes.
    let body = json!({"text": "x".repeat(9000)}).to_string();
    let (status, reply) = post_raw(&server, "lobby", body).await;
    assert_api_error(status, &reply, 413, "too_large", "oversized body");
    // Body within the limit, text over --max-text-bytes.
    let (status, reply) = server
        .post("lobby", json!({"text": "y".repeat(4097)}), &[])
        .await;
    assert_api_error(status, &reply, 413, "too_large", "text over limit");
    // At the limit it is stored.
    let (status, reply) = server
        .post("lobby", json!({"text": "y".repeat(4096)}), &[])
        .await;
    assert_eq!(status, 201, "{reply}");
}

#[tokio::test]
async fn http_rate_limit_is_429() {
    let server = TestServer::with_args(&["--publish-rate", "1", "--publish-burst", "3"]).await;
    for i in 0..3 {
        let (status, body) = server
            .post("rl", json!({"text": format!("m{i}")}), &[])
            .await;
        assert_eq!(status, 201, "publish {i} within the burst: {body}");
    }
    let (status, body) = server
        .post("rl", json!({"text": "one too many"}), &[])
        .await;
    assert_api_error(status, &body, 429, "rate_limited", "fourth publish");
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let server = TestServer::start().await;
    for path in ["/nope", "/api/rooms", "/api/rooms/lobby/nothing-here"] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
}

// ----------------------------------------------------------------------- SSE

#[tokio::test]
async fn sse_invalid_room_and_bad_cursor_are_400() {
    let server = TestServer::start().await;
    for room in ["a.b", "%3E", "*"] {
        let refused = common::Sse::connect(&server.url(&format!("/sse/rooms/{room}?user=s")), &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("SSE to {room} must be refused"));
        assert_api_error(
            refused.0,
            &refused.1,
            400,
            "invalid_room",
            &format!("SSE {room}"),
        );
    }
    let refused = common::Sse::connect(&server.url("/sse/rooms/lobby?user=s&since=garbage"), &[])
        .await
        .err()
        .expect("bad since must be refused");
    assert_api_error(refused.0, &refused.1, 400, "bad_frame", "SSE bad since");
    let refused = common::Sse::connect(
        &server.url("/sse/rooms/lobby?user=s"),
        &[("last-event-id", "not-a-cursor")],
    )
    .await
    .err()
    .expect("bad Last-Event-ID must be refused");
    assert_api_error(
        refused.0,
        &refused.1,
        400,
        "bad_frame",
        "SSE bad Last-Event-ID",
    );
    // A good request still streams.
    let mut sse = server.sse("/sse/rooms/lobby?user=s").await;
    assert_eq!(sse.next_named("subscribed").await.data["room"], "lobby");
}

// ---------------------------------------------------------------------- gRPC

#[tokio::test]
async fn grpc_unary_errors_map_to_status_codes() {
    let server = TestServer::start().await;
    let mut client = server.grpc().await;
    for room in bad_rooms() {
        let status = client
            .publish(pb::PublishRequest {
                room: room.clone(),
                text: "hi".into(),
                id: String::new(),
            })
            .await
            .expect_err("invalid room refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "publish {room:?}: {status:?}"
        );
        let status = client
            .history(pb::HistoryRequest {
                room: room.clone(),
                ..Default::default()
            })
            .await
            .expect_err("invalid room refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "history {room:?}: {status:?}"
        );
        let status = client
            .presence(pb::PresenceRequest { room: room.clone() })
            .await
            .expect_err("invalid room refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "presence {room:?}: {status:?}"
        );
    }
    let status = client
        .publish(pb::PublishRequest {
            room: "lobby".into(),
            text: "x".repeat(4097),
            id: String::new(),
        })
        .await
        .expect_err("too large refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let status = client
        .history(pb::HistoryRequest {
            room: "lobby".into(),
            after: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad cursor refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // The client still works.
    let ok = client
        .publish(pb::PublishRequest {
            room: "lobby".into(),
            text: "fine".into(),
            id: "g-1".into(),
        })
        .await
        .expect("valid publish")
        .into_inner();
    assert_eq!(ok.room, "lobby");
    assert_eq!(ok.id, "g-1");
}

/// The next `Connect` frame that is not a room event.
async fn grpc_reply(stream: &mut tonic::Streaming<pb::ServerFrame>) -> pb::server_frame::Frame {
    loop {
        let frame = next_grpc(stream).await.frame.expect("frame set");
        if !matches!(frame, pb::server_frame::Frame::Event(_)) {
            return frame;
        }
    }
}

#[tokio::test]
async fn grpc_connect_bad_frames_are_errors_and_stream_continues() {
    use pb::client_frame::Frame as C;
    use pb::server_frame::Frame as S;
    let server = TestServer::start().await;
    let mut client = server.grpc().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut stream = client
        .connect(ReceiverStream::new(rx))
        .await
        .expect("Connect opens")
        .into_inner();

    tx.send(pb::ClientFrame { frame: None }).await.unwrap();
    match grpc_reply(&mut stream).await {
        S::Error(err) => assert_eq!(err.code, "bad_frame", "{err:?}"),
        other => panic!("empty frame must be answered with an error, got {other:?}"),
    }
    tx.send(pb::ClientFrame {
        frame: Some(C::Ping(pb::Ping {})),
    })
    .await
    .unwrap();
    assert!(matches!(grpc_reply(&mut stream).await, S::Pong(_)));

    tx.send(pb::ClientFrame {
        frame: Some(C::Subscribe(pb::SubscribeRequest {
            room: "a.b".into(),
            since: String::new(),
        })),
    })
    .await
    .unwrap();
    match grpc_reply(&mut stream).await {
        S::Error(err) => assert_eq!(err.code, "invalid_room", "{err:?}"),
        other => panic!("invalid room must be an error, got {other:?}"),
    }
    tx.send(pb::ClientFrame {
        frame: Some(C::Publish(pb::PublishRequest {
            room: "lobby".into(),
            text: "x".repeat(4097),
            id: "big".into(),
        })),
    })
    .await
    .unwrap();
    match grpc_reply(&mut stream).await {
        S::Error(err) => {
            assert_eq!(err.code, "too_large", "{err:?}");
            assert_eq!(err.id, "big");
        }
        other => panic!("too large must be an error, got {other:?}"),
    }
    tx.send(pb::ClientFrame {
        frame: Some(C::Unsubscribe(pb::UnsubscribeRequest {
            room: "nowhere".into(),
        })),
    })
    .await
    .unwrap();
    match grpc_reply(&mut stream).await {
        S::Error(err) => assert_eq!(err.code, "not_subscribed", "{err:?}"),
        other => panic!("unsubscribe must be an error, got {other:?}"),
    }
    tx.send(pb::ClientFrame {
        frame: Some(C::Publish(pb::PublishRequest {
            room: "lobby".into(),
            text: "ok".into(),
            id: "p-1".into(),
        })),
    })
    .await
    .unwrap();
    match grpc_reply(&mut stream).await {
        S::Ack(ack) => assert_eq!(ack.id, "p-1"),
        other => panic!("publish must be acked, got {other:?}"),
    }
}

// ------------------------------------------------------- more bad input

#[tokio::test]
async fn empty_text_and_bad_publish_id_are_bad_frame() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=eve").await;
    ws.send(json!({"type": "publish", "room": "lobby", "text": "", "id": "e-1"}))
        .await;
    expect_error(&mut ws, "bad_frame", Some("e-1"), "empty text").await;
    assert_alive(&mut ws, "empty-text").await;
    let long_id = "i".repeat(129);
    ws.send(json!({"type": "publish", "room": "lobby", "text": "hi", "id": long_id}))
        .await;
    expect_error(&mut ws, "bad_frame", None, "129-byte publish id").await;
    assert_alive(&mut ws, "long-id").await;

    let (status, body) = server.post("lobby", json!({"text": ""}), &[]).await;
    assert_api_error(status, &body, 400, "bad_frame", "HTTP empty text");
}

#[tokio::test]
async fn invalid_user_name_is_refused_everywhere() {
    let server = TestServer::start().await;
    let long = "u".repeat(65);
    let path = format!("/ws?user={long}");
    match Ws::try_connect(server.ws_url(&path).into_client_request().expect("request")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400);
        }
        Err(other) => panic!("expected an HTTP 400, got {other}"),
        Ok(_) => panic!("a 65-byte user name must be refused"),
    }
    let (status, body) = server.upgrade_refusal(&path, &[]).await;
    assert_api_error(status, &body, 400, "bad_frame", "WS long user");
    let (status, body) = server
        .get_json(&format!("/api/rooms/lobby/presence?user={long}"))
        .await;
    assert_api_error(status, &body, 400, "bad_frame", "HTTP long user");
    let refused = common::Sse::connect(&server.url(&format!("/sse/rooms/lobby?user={long}")), &[])
        .await
        .err()
        .expect("SSE with a bad user refused");
    assert_api_error(refused.0, &refused.1, 400, "bad_frame", "SSE long user");
    let mut client = server.grpc().await;
    let mut request = tonic::Request::new(pb::PresenceRequest {
        room: "lobby".into(),
    });
    request
        .metadata_mut()
        .insert("x-user", long.parse().unwrap());
    let status = client.presence(request).await.expect_err("bad x-user");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn wrong_method_on_api_route_is_a_json_error() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::DELETE, "/api/rooms/lobby/messages"),
        (reqwest::Method::PUT, "/api/rooms/lobby/messages"),
        (reqwest::Method::POST, "/api/rooms/lobby/presence"),
    ] {
        let response = tokio::time::timeout(
            WAIT,
            client.request(method.clone(), server.url(path)).send(),
        )
        .await
        .expect("answered in time")
        .expect("request sent");
        let status = response.status().as_u16();
        assert!(
            status == 405 || status == 404,
            "{method} {path}: unexpected status {status}"
        );
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{method} {path} -> {status}: errors are JSON {{\"error\":{{code,message}}}}, got {body}"
        );
    }
}

#[tokio::test]
async fn grpc_rate_limit_and_oversized_messages() {
    use pb::client_frame::Frame as C;
    use pb::server_frame::Frame as S;
    let server = TestServer::with_args(&[
        "--publish-rate",
        "1",
        "--publish-burst",
        "3",
        "--max-frame-bytes",
        "8192",
        "--max-text-bytes",
        "4096",
    ])
    .await;
    let mut client = server.grpc().await;
    let publish = |text: String| {
        let mut request = tonic::Request::new(pb::PublishRequest {
            room: "lobby".into(),
            text,
            id: String::new(),
        });
        request
            .metadata_mut()
            .insert("x-user", "rita".parse().unwrap());
        request
    };
    for i in 0..3 {
        client
            .publish(publish(format!("m{i}")))
            .await
            .unwrap_or_else(|status| panic!("publish {i} within the burst: {status:?}"));
    }
    let status = client
        .publish(publish("one too many".into()))
        .await
        .expect_err("rate limited");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // A message over --max-frame-bytes is refused as OutOfRange.
    let mut request = tonic::Request::new(pb::PublishRequest {
        room: "lobby".into(),
        text: "x".repeat(9000),
        id: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-user", "sam".parse().unwrap());
    let status = client.publish(request).await.expect_err("too large");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    // Connect: rate limit is an error frame, the stream goes on.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut stream = client
        .connect(ReceiverStream::new(rx))
        .await
        .expect("Connect opens")
        .into_inner();
    for i in 0..4 {
        tx.send(pb::ClientFrame {
            frame: Some(C::Publish(pb::PublishRequest {
                room: "lobby".into(),
                text: "burst".into(),
                id: format!("c-{i}"),
            })),
        })
        .await
        .unwrap();
        match grpc_reply(&mut stream).await {
            S::Ack(ack) if i < 3 => assert_eq!(ack.id, format!("c-{i}")),
            S::Error(err) if i == 3 => {
                assert_eq!(err.code, "rate_limited", "{err:?}");
                assert_eq!(err.id, "c-3");
            }
            other => panic!("publish {i}: unexpected {other:?}"),
        }
    }
    tx.send(pb::ClientFrame {
        frame: Some(C::Ping(pb::Ping {})),
    })
    .await
    .unwrap();
    assert!(matches!(grpc_reply(&mut stream).await, S::Pong(_)));

    // A Connect message over --max-frame-bytes is abuse: the stream ends
    // with OutOfRange (the gRPC twin of close 1009).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stream = client
        .connect(ReceiverStream::new(rx))
        .await
        .expect("Connect opens")
        .into_inner();
    tx.send(pb::ClientFrame {
        frame: Some(C::Publish(pb::PublishRequest {
            room: "lobby".into(),
            text: "x".repeat(9000),
            id: "huge".into(),
        })),
    })
    .await
    .unwrap();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends in time");
    assert_eq!(code, Some(tonic::Code::OutOfRange));
    drop(tx);
}
