//! A publish with a client id is stored once per room within the
//! de-duplication window; a retry gets the original cursor with
//! `duplicate: true`, on every transport, and is not delivered twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use serde_json::json;
use switchboard_protocol::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_get_the_original_cursor_on_every_transport() {
    let server = TestServer::start().await;
    let mut sub = server.ws("/ws?user=watcher").await;
    sub.subscribe("idem", None).await;

    // WebSocket.
    let mut ws = server.ws("/ws?user=alice").await;
    let first = ws.publish("idem", "once", "ws-1").await;
    let again = ws.publish("idem", "once", "ws-1").await;
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["cursor"], first["cursor"]);

    // HTTP with Idempotency-Key, then the same key in the body.
    let (status, first_http) = server
        .post(
            "idem",
            json!({"text": "http once"}),
            &[("Idempotency-Key", "http-1")],
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(first_http["duplicate"], false);
    let (status, again_http) = server
        .post(
            "idem",
            json!({"text": "http once"}),
            &[("Idempotency-Key", "http-1")],
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(again_http["duplicate"], true);
    assert_eq!(again_http["cursor"], first_http["cursor"]);
    let (_, body_id) = server
        .post("idem", json!({"text": "http once", "id": "http-1"}), &[])
        .await;
    assert_eq!(body_id["duplicate"], true);

    // gRPC.
    let mut grpc = server.grpc().await;
    let request = || pb::PublishRequest {
        room: "idem".into(),
        text: "grpc once".into(),
        id: "grpc-1".into(),
    };
    let first_grpc = grpc.publish(request()).await.expect("publish").into_inner();
    let again_grpc = grpc.publish(request()).await.expect("publish").into_inner();
    assert!(!first_grpc.duplicate && again_grpc.duplicate);
    assert_eq!(first_grpc.cursor, again_grpc.cursor);

    // The id is per room: the same id elsewhere is a new message.
    let other = ws.publish("idem-other", "elsewhere", "ws-1").await;
    assert_eq!(other["duplicate"], false);

    // The watcher saw each message exactly once, then the marker.
    let marker = ws.publish("idem", "marker", "marker").await;
    assert_eq!(marker["duplicate"], false);
    let mut ids = Vec::new();
    loop {
        let frame = sub.recv_type("message").await;
        let id = frame["id"].as_str().expect("id").to_owned();
        if id == "marker" {
            break;
        }
        ids.push(id);
    }
    assert_eq!(ids, ["ws-1", "http-1", "grpc-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_window_is_configurable() {
    let server = TestServer::with_args(&["--dedup-window", "0s"]).await;
    let mut ws = server.ws("/ws?user=alice").await;
    let first = ws.publish("win", "x", "same").await;
    // A window of zero forgets the id as soon as time moves on; wait for
    // the clock to tick past the first publish (bounded).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let again = ws.publish("win", "x", "same").await;
        if again["duplicate"] == false {
            assert_ne!(again["cursor"], first["cursor"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "id never expired");
        tokio::task::yield_now().await;
    }
}
