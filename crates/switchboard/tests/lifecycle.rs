//! Process lifecycle and everyday behaviour: health endpoints, demo page,
//! graceful shutdown of every transport, the plain-text `/ws/chat`, ping
//! and presence with join/leave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Ended, TestServer, WAIT, Ws, next_grpc};
use serde_json::{Value, json};
use std::time::Duration;
use switchboard_protocol::pb;
use tokio_stream::wrappers::ReceiverStream;

async fn status_and_text(url: &str) -> (u16, String, String) {
    let response = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .expect("answered in time")
        .expect("request sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.expect("body"))
}

/// Users in the room's presence, sorted.
async fn presence(server: &TestServer, room: &str) -> Vec<String> {
    let (status, body) = server
        .get_json(&format!("/api/rooms/{room}/presence"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"], room);
    let mut users: Vec<String> = body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u.as_str().expect("user name").to_owned())
        .collect();
    users.sort();
    users
}

/// A ping round trip: every command sent before it has been executed.
async fn sync(ws: &mut Ws) {
    ws.send(json!({"type": "ping"})).await;
    ws.recv_type("pong").await;
}

#[tokio::test]
async fn health_ready_and_demo_page() {
    let server = TestServer::start().await;
    let (status, _, _) = status_and_text(&server.url("/healthz")).await;
    assert_eq!(status, 200);
    let (status, _, _) = status_and_text(&server.url("/readyz")).await;
    assert_eq!(status, 200);
    let (status, content_type, page) = status_and_text(&server.url("/")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains("Switchboard"), "demo page names the product");
    // Metrics appear once something happened: open a connection first.
    let mut ws = server.ws("/ws?user=metered").await;
    sync(&mut ws).await;
    let (status, content_type, metrics) = status_and_text(&server.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(
        metrics.contains("switchboard_connections_total"),
        "metrics exposition: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_closes_every_transport() {
    use pb::client_frame::Frame as C;
    use pb::server_frame::Frame as S;
    let mut server = TestServer::start().await;
    let (status, _, _) = status_and_text(&server.url("/healthz")).await;
    assert_eq!(status, 200);
    let (status, _, _) = status_and_text(&server.url("/readyz")).await;
    assert_eq!(status, 200);

    let mut ws = server.ws("/ws?user=w").await;
    ws.subscribe("shut", None).await;
    let mut chat = server.ws("/ws/chat?user=c&room=shut").await;
    chat.recv_type("subscribed").await;
    let mut sse = server.sse("/sse/rooms/shut?user=s").await;
    sse.next_named("subscribed").await;

    let mut client = server.grpc().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("x-user", "g".parse().unwrap());
    let mut grpc = client
        .connect(request)
        .await
        .expect("Connect opens")
        .into_inner();
    tx.send(pb::ClientFrame {
        frame: Some(C::Subscribe(pb::SubscribeRequest {
            room: "shut".into(),
            since: String::new(),
        })),
    })
    .await
    .unwrap();
    loop {
        if let Some(S::Subscribed(_)) = next_grpc(&mut grpc).await.frame {
            break;
        }
    }

    // The server-streaming Subscribe and the seed ChatService end too.
    let mut subscribe = client
        .subscribe(pb::SubscribeRequest {
            room: "shut".into(),
            since: String::new(),
        })
        .await
        .expect("Subscribe opens")
        .into_inner();
    let mut seed = pb::seed::chat_service_client::ChatServiceClient::new(server.channel().await);
    let (seed_tx, seed_rx) = tokio::sync::mpsc::channel(1);
    let mut seed_request = tonic::Request::new(ReceiverStream::new(seed_rx));
    seed_request
        .metadata_mut()
        .insert("x-room", "shut".parse().unwrap());
    let mut seed_stream = seed
        .chat(seed_request)
        .await
        .expect("seed chat opens")
        .into_inner();

    let sse_ended = async {
        while let Some(event) = sse.next().await {
            assert_ne!(event.event, "error", "shutdown is not an error: {event:?}");
        }
    };
    let grpc_ended = async {
        loop {
            match tokio::time::timeout(WAIT, grpc.message())
                .await
                .expect("gRPC stream ends in time")
            {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    };
    let subscribe_ended = async {
        loop {
            match tokio::time::timeout(WAIT, subscribe.message())
                .await
                .expect("Subscribe stream ends in time")
            {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    };
    let seed_ended = async {
        loop {
            match tokio::time::timeout(WAIT, seed_stream.message())
                .await
                .expect("seed stream ends in time")
            {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    };
    let (finished, ws_end, chat_end, (), grpc_end, subscribe_end, seed_end) = tokio::join!(
        server.shutdown(Duration::from_secs(5)),
        ws.ended(),
        chat.ended(),
        sse_ended,
        grpc_ended,
        subscribe_ended,
        seed_ended,
    );
    assert_eq!(ws_end, Ended::Close(1012), "/ws closed with 1012");
    assert_eq!(chat_end, Ended::Close(1012), "/ws/chat closed with 1012");
    assert_eq!(
        grpc_end,
        Some(tonic::Code::Unavailable),
        "Connect ends with Unavailable"
    );
    assert_eq!(
        subscribe_end,
        Some(tonic::Code::Unavailable),
        "Subscribe ends with Unavailable"
    );
    assert_eq!(
        seed_end,
        Some(tonic::Code::Unavailable),
        "seed chat ends with Unavailable"
    );
    assert!(finished, "shutdown finished within the grace period");
    drop((tx, seed_tx));
}

#[tokio::test]
async fn new_connections_are_refused_after_shutdown() {
    let mut server = TestServer::start().await;
    let url = server.url("/healthz");
    assert!(server.shutdown(Duration::from_secs(5)).await);
    let outcome = tokio::time::timeout(WAIT, reqwest::get(&url))
        .await
        .expect("answered in time");
    assert!(
        outcome.is_err(),
        "a stopped server accepts no requests: {outcome:?}"
    );
}

#[tokio::test]
async fn ws_chat_plain_text_reaches_json_subscribers() {
    let server = TestServer::start().await;
    let mut listener = server.ws("/ws?user=listener").await;
    listener.subscribe("lobby", None).await;

    // websocat ws://host/ws/chat?user=carol: plain lines in the default room.
    let mut chat = server.ws("/ws/chat?user=carol").await;
    let subscribed = chat.recv_type("subscribed").await;
    assert_eq!(subscribed["room"], "lobby");
    chat.send_text("hello there").await;
    let event = listener
        .recv_until(|f| f["type"] == "message" && f["user"] == "carol")
        .await;
    assert_eq!(event["text"], "hello there");
    assert_eq!(event["room"], "lobby");
    // The chat client sees its own line too (it is subscribed).
    let echo = chat.recv_type("message").await;
    assert_eq!(echo["text"], "hello there");
    assert_eq!(echo["user"], "carol");

    // A trailing newline (as typed in a terminal) is not part of the text.
    chat.send_text("second line\n").await;
    let event = listener
        .recv_until(|f| f["type"] == "message" && f["user"] == "carol")
        .await;
    assert_eq!(event["text"], "second line");

    // JSON frames still work on /ws/chat.
    let ack = chat.publish("lobby", "json too", "chat-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    chat.send(json!({"type": "ping"})).await;
    chat.recv_type("pong").await;
}

#[tokio::test]
async fn ws_chat_room_parameter() {
    let server = TestServer::start().await;
    let mut listener = server.ws("/ws?user=listener").await;
    listener.subscribe("kitchen", None).await;
    let mut chat = server.ws("/ws/chat?room=kitchen&user=dan").await;
    assert_eq!(chat.recv_type("subscribed").await["room"], "kitchen");
    chat.send_text("anyone hungry?").await;
    let event = listener.recv_type("message").await;
    assert_eq!(event["text"], "anyone hungry?");
    assert_eq!(event["user"], "dan");

    // An invalid ?room= is refused before the upgrade, as JSON.
    let response = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .get(server.url("/ws/chat?room=a.b&user=x"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send(),
    )
    .await
    .expect("answered in time")
    .expect("request sent");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], "invalid_room", "{body}");
    match Ws::try_connect(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.ws_url("/ws/chat?room=a.b&user=x"),
        )
        .expect("request"),
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400);
        }
        Err(other) => panic!("expected an HTTP 400, got {other}"),
        Ok(_) => panic!("an invalid room must be refused"),
    }
}

#[tokio::test]
async fn json_ping_pong() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=pinger").await;
    for _ in 0..3 {
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(ws.recv().await, json!({"type": "pong"}));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_join_and_leave() {
    let server = TestServer::start().await;
    let mut alice = server.ws("/ws?user=alice").await;
    alice.subscribe("pres", None).await;
    sync(&mut alice).await;
    let mut bob = server.ws("/ws?user=bob").await;
    bob.subscribe("pres", None).await;
    sync(&mut bob).await;

    let join = alice
        .recv_until(|f| f["type"] == "join" && f["user"] == "bob")
        .await;
    assert_eq!(join["room"], "pres");
    assert!(join["cursor"].is_string());
    assert_eq!(presence(&server, "pres").await, vec!["alice", "bob"]);
    alice
        .send(json!({"type": "presence", "room": "pres"}))
        .await;
    let frame = alice.recv_type("presence").await;
    let mut users: Vec<Value> = frame["users"].as_array().expect("users").clone();
    users.sort_by_key(|u| u.as_str().unwrap_or_default().to_owned());
    assert_eq!(users, vec![json!("alice"), json!("bob")]);

    // Bob goes away without a goodbye: alice sees him leave.
    drop(bob);
    let leave = alice.recv_until(|f| f["type"] == "leave").await;
    assert_eq!(leave["user"], "bob");
    assert_eq!(leave["room"], "pres");
    // The leave event is stored with the presence change, so presence
    // already reflects it.
    assert_eq!(presence(&server, "pres").await, vec!["alice"]);

    // Unsubscribing is a leave too.
    let mut carol = server.ws("/ws?user=carol").await;
    carol.subscribe("pres", None).await;
    alice
        .recv_until(|f| f["type"] == "join" && f["user"] == "carol")
        .await;
    carol
        .send(json!({"type": "unsubscribe", "room": "pres"}))
        .await;
    carol.recv_type("unsubscribed").await;
    let leave = alice.recv_until(|f| f["type"] == "leave").await;
    assert_eq!(leave["user"], "carol");
    assert_eq!(presence(&server, "pres").await, vec!["alice"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_user_twice_joins_once_and_leaves_when_both_are_gone() {
    let server = TestServer::start().await;
    let mut observer = server.ws("/ws?user=observer").await;
    observer.subscribe("twin", None).await;
    sync(&mut observer).await;

    let mut first = server.ws("/ws?user=dup").await;
    first.subscribe("twin", None).await;
    sync(&mut first).await;
    let mut second = server.ws("/ws?user=dup").await;
    second.subscribe("twin", None).await;
    sync(&mut second).await;
    // Published after both joins were processed: everything before it in
    // the room is the join history.
    let ack = second.publish("twin", "marker-1", "mk-1").await;
    assert_eq!(ack["type"], "ack");

    let mut joins = 0;
    loop {
        let event = observer.recv().await;
        if event["type"] == "join" && event["user"] == "dup" {
            joins += 1;
        }
        assert_ne!(event["type"], "leave", "nobody left yet: {event}");
        if event["type"] == "message" && event["id"] == "mk-1" {
            break;
        }
    }
    assert_eq!(joins, 1, "two connections of one user are one join");
    assert_eq!(presence(&server, "twin").await, vec!["dup", "observer"]);

    // The first connection closes cleanly; dup is still present through
    // the second one.
    first.stream.close(None).await.expect("close sent");
    // Whatever the server answers to a client close, the connection ends.
    first.ended().await;
    // Presence is updated asynchronously after a close; give a wrong
    // "leave" every chance to show up before checking it did not.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            presence(&server, "twin").await,
            vec!["dup", "observer"],
            "dup still has a connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ack = second.publish("twin", "marker-2", "mk-2").await;
    assert_eq!(ack["type"], "ack");
    loop {
        let event = observer.recv().await;
        assert_ne!(
            event["type"], "leave",
            "dup must not leave while a connection remains: {event}"
        );
        if event["type"] == "message" && event["id"] == "mk-2" {
            break;
        }
    }

    // The last connection goes: now dup leaves, once.
    drop(second);
    let leave = observer.recv_until(|f| f["type"] == "leave").await;
    assert_eq!(leave["user"], "dup");
    assert_eq!(presence(&server, "twin").await, vec!["observer"]);
    let ack = observer.publish("twin", "marker-3", "mk-3").await;
    assert_eq!(ack["type"], "ack");
    loop {
        let event = observer.recv().await;
        assert_ne!(event["type"], "leave", "dup left twice: {event}");
        if event["type"] == "message" && event["id"] == "mk-3" {
            break;
        }
    }
}

#[tokio::test]
async fn sse_headers_and_heartbeat() {
    let server = TestServer::with_args(&["--sse-heartbeat", "200ms"]).await;
    let mut sse = server.sse("/sse/rooms/beat?user=h").await;
    let header = |name: &str| {
        sse.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/event-stream"));
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-accel-buffering"), "no");
    let subscribed = sse.next_named("subscribed").await;
    assert_eq!(
        subscribed.id.as_deref(),
        subscribed.data["cursor"].as_str(),
        "subscribed carries the head cursor as its id"
    );
    // Two heartbeats in a row prove they repeat (bounded by WAIT).
    sse.next_named("heartbeat").await;
    sse.next_named("heartbeat").await;
}

#[tokio::test]
async fn ws_subprotocol_is_negotiated() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start().await;
    let mut request = server
        .ws_url("/ws?user=proto")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "switchboard.v1.json".parse().unwrap(),
    );
    let (stream, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade in time")
        .expect("upgrade with the subprotocol");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("switchboard.v1.json")
    );
    let mut ws = Ws { stream };
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
}

/// SIGTERM to a real process: every WebSocket gets its 1012 before the
/// process exits. (Connection tasks are detached; shutdown used to return
/// once the listeners stopped, and the exit then cut some connections with
/// no close frame at all: 1006 for ~1 in 8 clients.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_websocket_with_1012_before_the_process_exits() {
    use common::procs::Service;
    use rustix::process::{Pid, Signal, kill_process};
    let server = Service::standalone(&[]);
    server.wait_ready(true).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut ws = Ws::connect(&server.ws_url(&format!("/ws?user=u{i}"))).await;
        ws.subscribe("lobby", None).await;
        clients.push(ws);
    }
    let pid = Pid::from_raw(i32::try_from(server.pid()).expect("pid")).expect("a pid");
    kill_process(pid, Signal::TERM).expect("SIGTERM sent");
    let ends = futures::future::join_all(clients.iter_mut().map(Ws::ended)).await;
    let cut = ends
        .iter()
        .filter(|end| **end != Ended::Close(1012))
        .count();
    assert_eq!(cut, 0, "{cut} of 100 did not get 1012: {ends:?}");
}
