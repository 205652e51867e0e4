//! A connection keeps several publishes in flight (the gateway's
//! `pipeline.rs`, ADR 0010). What a client can observe must not change:
//! every publish is answered once; one connection's publishes to one room
//! are stored, acknowledged and delivered in the order it sent them; and a
//! read sent after publishes (history) is answered after their acks and
//! sees them. Checked on the memory bus and on NATS (a standalone whose
//! publishes go through JetStream), on WebSocket and gRPC `Connect`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::procs::{Nats, Service, TempDir};
use common::{TestServer, UNTHROTTLED, WAIT, Ws, next_grpc};
use serde_json::{Value, json};
use std::collections::HashMap;
use switchboard_protocol::pb;

/// More than the in-flight bound, so the bound is crossed and released.
const PUBLISHES: usize = 150;

fn room_of(i: usize) -> &'static str {
    if i.is_multiple_of(3) {
        "pipe-b"
    } else {
        "pipe-a"
    }
}

fn offset(cursor: &Value) -> u64 {
    let cursor = cursor.as_str().expect("cursor string");
    cursor
        .rsplit_once(':')
        .and_then(|(_, offset)| offset.parse().ok())
        .unwrap_or_else(|| panic!("cursor {cursor} has an offset"))
}

/// Sends every publish without waiting, then a history read, and checks
/// the answers: each id acked once, per room in send order, all before
/// the history reply, which holds every message of the room in order.
async fn publishes_without_waiting_keep_order(ws_url: String) {
    let mut watcher = Ws::connect(&format!("{ws_url}?user=watcher")).await;
    watcher.subscribe("pipe-a", None).await;
    let mut ws = Ws::connect(&format!("{ws_url}?user=pipeliner")).await;
    for i in 0..PUBLISHES {
        ws.send(json!({"type":"publish","room":room_of(i),"text":format!("m{i}"),"id":format!("p-{i}")}))
            .await;
    }
    ws.send(json!({"type":"history","room":"pipe-a","limit":PUBLISHES}))
        .await;

    let mut acks: HashMap<usize, Value> = HashMap::new();
    let history = loop {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("ack") => {
                let id = frame["id"].as_str().expect("ack id");
                let i: usize = id.trim_start_matches("p-").parse().expect("our id");
                assert_eq!(frame["room"], room_of(i), "{frame}");
                assert!(
                    acks.insert(i, frame.clone()).is_none(),
                    "acked twice: {frame}"
                );
            }
            Some("history") => break frame,
            _ => panic!("unexpected frame {frame}"),
        }
    };
    assert_eq!(
        acks.len(),
        PUBLISHES,
        "every publish acked before the history reply"
    );
    for room in ["pipe-a", "pipe-b"] {
        let offsets: Vec<u64> = (0..PUBLISHES)
            .filter(|i| room_of(*i) == room)
            .map(|i| offset(&acks[&i]["cursor"]))
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{room}: stored in send order: {offsets:?}"
        );
    }
    let texts: Vec<String> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().expect("text").to_owned())
        .collect();
    let sent: Vec<String> = (0..PUBLISHES)
        .filter(|i| room_of(*i) == "pipe-a")
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(texts, sent, "history sees every earlier publish, in order");

    for expected in &sent {
        let frame = watcher.recv_type("message").await;
        assert_eq!(&frame["text"], expected, "delivered in send order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_order_on_the_memory_bus() {
    let server = TestServer::with_args(&UNTHROTTLED).await;
    publishes_without_waiting_keep_order(server.ws_url("/ws")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_order_through_jetstream() {
    let dir = TempDir::new("pipelined");
    let nats = Nats::start(&dir.0);
    let solo = Service::start("standalone", &nats.url(), &UNTHROTTLED);
    solo.wait_ready(true).await;
    publishes_without_waiting_keep_order(solo.ws_url("/ws")).await;

    // A ws-gateway without a core: its publishes are NATS requests that
    // the standalone's core answers, concurrently, still in order.
    let gateway = Service::start("ws-gateway", &nats.url(), &UNTHROTTLED);
    gateway.wait_ready(true).await;
    let mut ws = Ws::connect(&gateway.ws_url("/ws?user=remote")).await;
    for i in 0..40 {
        ws.send(json!({"type":"publish","room":"pipe-remote","text":format!("r{i}"),"id":format!("r-{i}")}))
            .await;
    }
    let mut last = 0;
    for i in 0..40 {
        let ack = ws.recv_type("ack").await;
        assert_eq!(ack["id"], format!("r-{i}"), "one room: acks in send order");
        let at = offset(&ack["cursor"]);
        assert!(at > last, "{ack}");
        last = at;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connect_pipelines_publishes_in_order() {
    let server = TestServer::with_args(&UNTHROTTLED).await;
    let mut grpc = server.grpc().await;
    let (tx, rx) = tokio::sync::mpsc::channel(PUBLISHES + 8);
    let frame = |kind: pb::client_frame::Frame| pb::ClientFrame { frame: Some(kind) };
    for i in 0..PUBLISHES {
        tx.send(frame(pb::client_frame::Frame::Publish(
            pb::PublishRequest {
                room: room_of(i).into(),
                text: format!("g{i}"),
                id: format!("g-{i}"),
            },
        )))
        .await
        .expect("queued");
    }
    let mut responses = grpc
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut acked = std::collections::HashSet::new();
    // The request stream is closed here: publishes sent before the
    // half-close are still answered.
    drop(tx);
    while acked.len() < PUBLISHES {
        let frame = tokio::time::timeout(WAIT, next_grpc(&mut responses))
            .await
            .expect("an answer in time");
        let Some(pb::server_frame::Frame::Ack(ack)) = frame.frame else {
            panic!("only acks expected: {frame:?}");
        };
        let i: usize = ack.id.trim_start_matches("g-").parse().expect("our id");
        assert!(acked.insert(i), "acked twice: {ack:?}");
        assert_eq!(ack.room, room_of(i));
        let at = offset(&json!(ack.cursor));
        let before = last.insert(room_of(i), at).unwrap_or(0);
        assert!(at > before, "{}: in send order", ack.room);
    }
}
