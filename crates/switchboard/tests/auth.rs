//! JWT authentication and room authorisation (spec §7) on every transport.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sign_hs256 as sign;

use common::{Ended, Sse, TestServer, WAIT, Ws};

use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_protocol::pb;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const SECRET: &str = "switchboard-test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token for `sub` valid for a minute, with extra claims merged in.
fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 60});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    sign(&claims, SECRET)
}

async fn auth_server() -> TestServer {
    TestServer::with_args(&["--jwt-secret", SECRET]).await
}

/// Expects the upgrade to be refused with an HTTP status.
async fn ws_refused(request: tungstenite::handshake::client::Request) -> u16 {
    match Ws::try_connect(request).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade must be refused"),
    }
}

fn request(
    server: &TestServer,
    path: &str,
    bearer: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = server.ws_url(path).into_client_request().expect("request");
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    request
}

async fn get_with(server: &TestServer, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(server.url(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("answered in time")
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

// ---------------------------------------------------------------- WebSocket

#[tokio::test]
async fn ws_without_token_is_401() {
    let server = auth_server().await;
    assert_eq!(
        ws_refused(request(&server, "/ws?user=alice", None)).await,
        401
    );
    assert_eq!(
        ws_refused(request(&server, "/ws/chat?user=alice", None)).await,
        401
    );
    let (status, body) = server.upgrade_refusal("/ws?user=alice", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
}

#[tokio::test]
async fn ws_with_expired_or_invalid_token_is_401() {
    let server = auth_server().await;
    let expired = sign(&json!({"sub": "alice", "exp": now() - 30}), SECRET);
    assert_eq!(
        ws_refused(request(&server, "/ws", Some(&expired))).await,
        401
    );
    assert_eq!(
        ws_refused(request(
            &server,
            &format!("/ws?access_token={expired}"),
            None
        ))
        .await,
        401
    );
    let (status, body) = server
        .upgrade_refusal(&format!("/ws?access_token={expired}"), &[])
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    let foreign = sign(
        &json!({"sub": "alice", "exp": now() + 60}),
        "another-secret-that-is-long-enough",
    );
    assert_eq!(
        ws_refused(request(&server, "/ws", Some(&foreign))).await,
        401
    );
    assert_eq!(
        ws_refused(request(&server, "/ws", Some("garbage"))).await,
        401
    );
    let no_sub = sign(&json!({"exp": now() + 60}), SECRET);
    assert_eq!(
        ws_refused(request(&server, "/ws", Some(&no_sub))).await,
        401
    );
    let no_exp = sign(&json!({"sub": "alice"}), SECRET);
    assert_eq!(
        ws_refused(request(&server, "/ws", Some(&no_exp))).await,
        401
    );
}

#[tokio::test]
async fn ws_token_in_query_sets_the_user() {
    let server = auth_server().await;
    let t = token("alice", json!({}));
    // ?user= cannot override the token's subject.
    let mut ws = server
        .ws(&format!("/ws?access_token={t}&user=mallory"))
        .await;
    ws.subscribe("authroom", None).await;
    let ack = ws.publish("authroom", "hello", "q-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = ws
        .recv_until(|f| f["type"] == "message" && f["id"] == "q-1")
        .await;
    assert_eq!(event["user"], "alice", "{event}");
    ws.send(json!({"type": "presence", "room": "authroom"}))
        .await;
    let presence = ws.recv_type("presence").await;
    assert_eq!(presence["users"], json!(["alice"]), "{presence}");
}

#[tokio::test]
async fn ws_token_in_authorization_header() {
    let server = auth_server().await;
    let t = token("bob", json!({}));
    let mut ws = Ws::try_connect(request(&server, "/ws", Some(&t)))
        .await
        .unwrap_or_else(|err| panic!("valid bearer token refused: {err}"));
    ws.subscribe("authroom", None).await;
    let ack = ws.publish("authroom", "hi from bob", "h-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = ws
        .recv_until(|f| f["type"] == "message" && f["id"] == "h-1")
        .await;
    assert_eq!(event["user"], "bob");
}

#[tokio::test]
async fn ws_rooms_and_publish_claims_are_enforced() {
    let server = auth_server().await;
    let t = token(
        "carol",
        json!({"rooms": ["team-*", "lobby"], "publish": ["lobby"]}),
    );
    let mut ws = server.ws(&format!("/ws?access_token={t}")).await;

    // Outside `rooms`: forbidden, connection stays usable.
    ws.send(json!({"type": "subscribe", "room": "other"})).await;
    let err = ws.recv_type("error").await;
    assert_eq!(err["code"], "forbidden", "{err}");
    ws.send(json!({"type": "history", "room": "other"})).await;
    let err = ws.recv_type("error").await;
    assert_eq!(err["code"], "forbidden", "history outside rooms: {err}");

    // Wildcard match: subscribe allowed, but `publish` does not include it.
    let subscribed = ws.subscribe("team-a", None).await;
    assert_eq!(subscribed["room"], "team-a");
    let refused = ws.publish("team-a", "nope", "t-1").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // `lobby` is in both.
    ws.subscribe("lobby", None).await;
    let ack = ws.publish("lobby", "yes", "l-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // Publishing to a room outside `rooms` and `publish` is refused too.
    let refused = ws.publish("other", "nope", "o-1").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // The refused publish was not stored: team-a has only the join.
    let (status, body) = get_with(&server, "/api/rooms/team-a/messages", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["type"] != "message"),
        "{body}"
    );
}

#[tokio::test]
async fn ws_publish_defaults_to_rooms_claim() {
    let server = auth_server().await;
    let t = token("dave", json!({"rooms": ["dev-*"]}));
    let mut ws = server.ws(&format!("/ws?access_token={t}")).await;
    let ack = ws.publish("dev-1", "ok", "d-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let refused = ws.publish("prod", "no", "d-2").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_token_expiry_sends_unauthorized_then_closes_4001() {
    let server = auth_server().await;
    let t = sign(&json!({"sub": "erin", "exp": now() + 2}), SECRET);
    let mut ws = server.ws(&format!("/ws?access_token={t}")).await;
    ws.subscribe("expiring", None).await;
    // Works while valid.
    let ack = ws.publish("expiring", "still valid", "e-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // Within ~2 s: an error frame, then close 4001 (bounded by WAIT).
    let err = ws.recv_type("error").await;
    assert_eq!(err["code"], "unauthorized", "{err}");
    assert_eq!(ws.ended().await, Ended::Close(4001));
}

// ---------------------------------------------------------------- HTTP API

#[tokio::test]
async fn http_publish_requires_token_and_uses_its_subject() {
    let server = auth_server().await;
    let (status, body) = server.post("api-room", json!({"text": "anon"}), &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    let expired = sign(&json!({"sub": "frank", "exp": now() - 30}), SECRET);
    let bearer = format!("Bearer {expired}");
    let (status, body) = server
        .post(
            "api-room",
            json!({"text": "old"}),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 401, "{body}");

    let t = token("frank", json!({}));
    let bearer = format!("Bearer {t}");
    // The harness adds ?user=http: the token's subject must win.
    let (status, body) = server
        .post(
            "api-room",
            json!({"text": "signed", "id": "a-1"}),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["room"], "api-room");
    assert_eq!(body["duplicate"], false);

    let (status, body) = get_with(&server, "/api/rooms/api-room/messages", None).await;
    assert_eq!(status, 401, "history without token: {body}");
    let (status, body) = get_with(&server, "/api/rooms/api-room/presence", None).await;
    assert_eq!(status, 401, "presence without token: {body}");

    let (status, body) = get_with(&server, "/api/rooms/api-room/messages", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().expect("events");
    let event = events
        .iter()
        .find(|e| e["id"] == "a-1")
        .unwrap_or_else(|| panic!("published event in history: {body}"));
    assert_eq!(event["user"], "frank", "{event}");
    assert_eq!(event["text"], "signed");
    // access_token works on the API too.
    let (status, _) = get_with(
        &server,
        &format!("/api/rooms/api-room/presence?access_token={t}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn http_publish_outside_publish_claim_is_403() {
    let server = auth_server().await;
    let t = token("gina", json!({"rooms": ["ro-*"], "publish": []}));
    let bearer = format!("Bearer {t}");
    let (status, body) = server
        .post(
            "ro-1",
            json!({"text": "nope"}),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (status, body) = get_with(&server, "/api/rooms/ro-1/messages", Some(&t)).await;
    assert_eq!(status, 200, "reading is allowed by rooms: {body}");
    let (status, body) = get_with(&server, "/api/rooms/rw/messages", Some(&t)).await;
    assert_eq!(status, 403, "reading outside rooms: {body}");
}

// ---------------------------------------------------------------------- SSE

#[tokio::test]
async fn sse_requires_token() {
    let server = auth_server().await;
    let (status, body) = Sse::connect(&server.url("/sse/rooms/lobby?user=x"), &[])
        .await
        .err()
        .expect("SSE without token refused");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    let t = token("hank", json!({"rooms": ["lobby"]}));
    let (status, body) = Sse::connect(
        &server.url(&format!("/sse/rooms/other?access_token={t}")),
        &[],
    )
    .await
    .err()
    .expect("SSE outside rooms refused");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    let mut sse = server
        .sse(&format!("/sse/rooms/lobby?access_token={t}"))
        .await;
    assert_eq!(sse.next_named("subscribed").await.data["room"], "lobby");
    let join = sse.next_named("join").await;
    assert_eq!(join.data["user"], "hank", "{:?}", join.data);

    let bearer = format!("Bearer {t}");
    let mut sse = Sse::connect(
        &server.url("/sse/rooms/lobby"),
        &[("authorization", bearer.as_str())],
    )
    .await
    .unwrap_or_else(|(status, body)| panic!("bearer SSE refused: {status} {body}"));
    assert_eq!(sse.next_named("subscribed").await.data["room"], "lobby");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_token_expiry_ends_with_error_event() {
    let server = auth_server().await;
    let t = sign(&json!({"sub": "ivan", "exp": now() + 2}), SECRET);
    let mut sse = server
        .sse(&format!("/sse/rooms/lobby?access_token={t}"))
        .await;
    sse.next_named("subscribed").await;
    let err = sse.next_named("error").await;
    assert_eq!(err.data["code"], "unauthorized", "{:?}", err.data);
    // Then the stream ends (bounded by WAIT inside `next`).
    loop {
        match sse.next().await {
            None => break,
            Some(event) => assert_ne!(event.event, "message", "event after expiry: {event:?}"),
        }
    }
}

// --------------------------------------------------------------------- gRPC

#[tokio::test]
async fn grpc_requires_token_in_metadata() {
    let server = auth_server().await;
    let mut client = server.grpc().await;
    let publish = |room: &str| pb::PublishRequest {
        room: room.into(),
        text: "grpc hello".into(),
        id: String::new(),
    };
    let status = client
        .publish(publish("grpc-room"))
        .await
        .expect_err("publish without token refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let mut request = tonic::Request::new(publish("grpc-room"));
    request
        .metadata_mut()
        .insert("authorization", "Bearer garbage".parse().unwrap());
    let status = client.publish(request).await.expect_err("garbage refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let t = token("judy", json!({"rooms": ["grpc-*"]}));
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
    let mut request = tonic::Request::new(publish("grpc-room"));
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    let ack = client
        .publish(request)
        .await
        .expect("publish with token")
        .into_inner();
    assert_eq!(ack.room, "grpc-room");

    let mut request = tonic::Request::new(publish("elsewhere"));
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    let status = client
        .publish(request)
        .await
        .expect_err("publish outside claims refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let mut request = tonic::Request::new(pb::HistoryRequest {
        room: "grpc-room".into(),
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", bearer);
    let history = client
        .history(request)
        .await
        .expect("history with token")
        .into_inner();
    let last = history.events.last().expect("an event");
    assert_eq!(last.user, "judy");
    assert_eq!(last.text, "grpc hello");
}

#[tokio::test]
async fn grpc_streams_require_token_and_seed_uses_its_subject() {
    use pb::seed::ChatMessage;
    use pb::seed::chat_service_client::ChatServiceClient;
    use tokio_stream::wrappers::ReceiverStream;
    let server = auth_server().await;

    // Connect without a token is refused at the start of the call.
    let mut client = server.grpc().await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::ClientFrame>(1);
    let status = client
        .connect(ReceiverStream::new(rx))
        .await
        .expect_err("Connect without token refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = client
        .subscribe(pb::SubscribeRequest {
            room: "lobby".into(),
            since: String::new(),
        })
        .await
        .expect_err("Subscribe without token refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let mut seed = ChatServiceClient::new(server.channel().await);
    let (_tx, rx) = tokio::sync::mpsc::channel::<ChatMessage>(1);
    let status = seed
        .chat(ReceiverStream::new(rx))
        .await
        .expect_err("seed chat without token refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // With a token the seed message's `user` cannot impersonate anyone.
    let t = token("kate", json!({}));
    let (tx, rx) = tokio::sync::mpsc::channel::<ChatMessage>(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-room", "seed-auth".parse().unwrap());
    let mut incoming = seed
        .chat(request)
        .await
        .expect("seed chat with token")
        .into_inner();
    tx.send(ChatMessage {
        user: "mallory".into(),
        message: "who am I".into(),
    })
    .await
    .unwrap();
    let echo = common::next_grpc(&mut incoming).await;
    assert_eq!(echo.message, "who am I");
    assert_eq!(
        echo.user, "kate",
        "the token's subject wins over ChatMessage.user"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_connect_ends_unauthenticated_on_token_expiry() {
    use pb::client_frame::Frame as C;
    use tokio_stream::wrappers::ReceiverStream;
    let server = auth_server().await;
    let t = sign(&json!({"sub": "liam", "exp": now() + 2}), SECRET);
    let mut client = server.grpc().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    let mut stream = client
        .connect(request)
        .await
        .expect("Connect with a valid token")
        .into_inner();
    tx.send(pb::ClientFrame {
        frame: Some(C::Ping(pb::Ping {})),
    })
    .await
    .unwrap();
    let pong = common::next_grpc(&mut stream).await;
    assert!(matches!(pong.frame, Some(pb::server_frame::Frame::Pong(_))));
    // Within ~2 s the stream ends with Unauthenticated.
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
    assert_eq!(code, Some(tonic::Code::Unauthenticated));
    drop(tx);
}

/// `--jwt-audience` and `--jwt-issuer` refuse tokens minted for another
/// service or by another issuer; `nbf` in the future is refused; a token
/// that satisfies them connects, on WebSocket and over HTTP.
#[tokio::test]
async fn audience_issuer_and_nbf_are_enforced_end_to_end() {
    let server = TestServer::with_args(&[
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "switchboard",
        "--jwt-issuer",
        "https://auth.example",
    ])
    .await;
    let good = token(
        "alice",
        json!({"aud": "switchboard", "iss": "https://auth.example"}),
    );
    let wrong_aud = token(
        "alice",
        json!({"aud": "billing", "iss": "https://auth.example"}),
    );
    let wrong_iss = token(
        "alice",
        json!({"aud": "switchboard", "iss": "https://other.example"}),
    );
    let too_early = token(
        "alice",
        json!({"aud": "switchboard", "iss": "https://auth.example", "nbf": now() + 120}),
    );
    for (bad, why) in [
        (&wrong_aud, "aud"),
        (&wrong_iss, "iss"),
        (&too_early, "nbf"),
    ] {
        assert_eq!(
            ws_refused(request(&server, "/ws", Some(bad))).await,
            401,
            "{why}"
        );
        let (status, body) = get_with(&server, "/api/rooms/lobby/messages", Some(bad)).await;
        assert_eq!(status, 401, "{why}: {body}");
    }
    let mut ws = Ws::try_connect(request(&server, "/ws", Some(&good)))
        .await
        .expect("a token for this audience and issuer connects");
    let ack = ws.publish("lobby", "hello", "a-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

// ---------------------------------------------------------------- refresh

/// A refresh before `exp` keeps the connection open past the old token's
/// expiry; rooms the new token drops are left with `forbidden`; a refresh
/// for another `sub`, or with a forged token, is refused and changes
/// nothing.
#[tokio::test]
async fn ws_refresh_replaces_the_token_without_reconnecting() {
    let server = auth_server().await;
    let first = sign(
        &json!({"sub": "rita", "exp": now() + 2, "rooms": ["lobby", "secret"]}),
        SECRET,
    );
    let mut ws = server.ws(&format!("/ws?access_token={first}")).await;
    ws.subscribe("lobby", None).await;
    ws.subscribe("secret", None).await;

    let forged = sign(
        &json!({"sub": "rita", "exp": now() + 60}),
        "wrong-secret-0123456789abcdef",
    );
    ws.send(json!({"type": "refresh", "token": forged})).await;
    let err = ws.recv_type("error").await;
    assert_eq!(err["code"], "unauthorized", "{err}");
    let other = sign(&json!({"sub": "mallory", "exp": now() + 60}), SECRET);
    ws.send(json!({"type": "refresh", "token": other})).await;
    let err = ws.recv_type("error").await;
    assert_eq!(err["code"], "unauthorized", "another sub: {err}");

    let exp = now() + 60;
    let second = sign(
        &json!({"sub": "rita", "exp": exp, "rooms": ["lobby"]}),
        SECRET,
    );
    ws.send(json!({"type": "refresh", "token": second})).await;
    let mut refreshed = None;
    let mut left = false;
    let mut forbidden = false;
    while refreshed.is_none() {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("unsubscribed") => {
                assert_eq!(frame["room"], "secret", "{frame}");
                left = true;
            }
            Some("error") => {
                assert_eq!(frame["code"], "forbidden", "{frame}");
                forbidden = true;
            }
            Some("refreshed") => refreshed = Some(frame),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(left && forbidden, "the dropped room is left with forbidden");
    assert_eq!(refreshed.expect("refreshed")["exp"], exp);

    // Past the first token's exp (2 s) the connection still works.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let ack = ws.publish("lobby", "still here", "r-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let refused = ws.publish("secret", "no longer", "r-2").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    ws.send(json!({"type": "subscribe", "room": "secret"}))
        .await;
    let err = ws.recv_type("error").await;
    assert_eq!(err["code"], "forbidden", "resume re-checks: {err}");
}

#[tokio::test]
async fn grpc_connect_refresh_is_answered_with_refreshed() {
    use pb::client_frame::Frame as C;
    use pb::server_frame::Frame as S;
    let server = auth_server().await;
    let first = sign(&json!({"sub": "gia", "exp": now() + 60}), SECRET);
    let mut client = server.grpc().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {first}").parse().expect("metadata"),
    );
    let mut stream = client.connect(request).await.expect("connect").into_inner();
    let exp = now() + 120;
    let second = sign(&json!({"sub": "gia", "exp": exp}), SECRET);
    tx.send(pb::ClientFrame {
        frame: Some(C::Refresh(pb::RefreshRequest { token: second })),
    })
    .await
    .expect("sent");
    let frame = common::next_grpc(&mut stream).await;
    match frame.frame {
        Some(S::Refreshed(r)) => assert_eq!(r.exp, exp),
        other => panic!("expected refreshed, got {other:?}"),
    }
}
