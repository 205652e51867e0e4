//! Resume on every transport: exactly the missed events, then live; a
//! cursor older than retention (or from another epoch) says
//! `recovered: false`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Sse, TestServer, next_grpc};
use serde_json::{Value, json};
use switchboard_protocol::pb;

/// Publishes `n` messages over HTTP and returns their cursors.
async fn publish_n(server: &TestServer, room: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut cursors = Vec::new();
    for i in 0..n {
        let (status, body) = server
            .post(room, json!({"text": format!("{prefix}{i}")}), &[])
            .await;
        assert_eq!(status, 201, "{body}");
        cursors.push(body["cursor"].as_str().expect("cursor").to_owned());
    }
    cursors
}

fn meta<T>(response: &tonic::Response<T>, key: &str) -> String {
    response
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_resume_replays_exactly_the_missed_events_then_live() {
    let server = TestServer::start().await;
    let first = publish_n(&server, "res", "before-", 3).await;
    let missed = publish_n(&server, "res", "missed-", 4).await;

    let mut ws = server.ws("/ws?user=returning").await;
    let subscribed = ws.subscribe("res", Some(&first[2])).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["cursor"], missed[3].as_str(), "head before live");
    let mut replay = Vec::new();
    for _ in 0..4 {
        replay.push(ws.recv_type("message").await);
    }
    assert_eq!(
        texts(&replay),
        ["missed-0", "missed-1", "missed-2", "missed-3"]
    );
    let replay_cursors: Vec<_> = replay.iter().map(|f| f["cursor"].clone()).collect();
    assert_eq!(replay_cursors, missed);

    let live = publish_n(&server, "res", "live-", 2).await;
    // The next events are our own join, then the live messages: nothing
    // replayed twice, nothing skipped.
    let mut after = Vec::new();
    while after.len() < 2 {
        let frame = ws.recv().await;
        if frame["type"] == "message" {
            after.push(frame);
        }
    }
    assert_eq!(texts(&after), ["live-0", "live-1"]);
    assert_eq!(after[0]["cursor"], live[0].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_resume_from_expired_or_foreign_cursor_is_not_recovered() {
    let server = TestServer::with_args(&["--retention-count", "5"]).await;
    let early = publish_n(&server, "short", "m", 10).await;
    let mut ws = server.ws("/ws?user=late").await;
    let subscribed = ws.subscribe("short", Some(&early[0])).await;
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(subscribed["cursor"], early[9].as_str());
    // Live delivery starts at once: the next message is the new one.
    publish_n(&server, "short", "new", 1).await;
    let next = ws.recv_type("message").await;
    assert_eq!(next["text"], "new0");

    let mut other = server.ws("/ws?user=late2").await;
    let subscribed = other.subscribe("short", Some("otherepoch:3")).await;
    assert_eq!(subscribed["recovered"], false);

    // A cursor still inside retention recovers.
    let mut ok = server.ws("/ws?user=late3").await;
    let subscribed = ok.subscribe("short", Some(&early[7])).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(ok.recv_type("message").await["text"], "m8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_and_with_since() {
    let server = TestServer::start().await;
    for how in ["Last-Event-ID", "since"] {
        let room = format!("sseres-{}", how.to_lowercase());
        let first = publish_n(&server, &room, "a", 2).await;
        let missed = publish_n(&server, &room, "b", 3).await;
        let mut sse = if how == "since" {
            let url = server.url(&format!("/sse/rooms/{room}?user=y&since={}", first[1]));
            Sse::connect(&url, &[]).await
        } else {
            let url = server.url(&format!("/sse/rooms/{room}?user=x"));
            Sse::connect(&url, &[("Last-Event-ID", first[1].as_str())]).await
        }
        .expect("opens");
        let subscribed = sse.next_named("subscribed").await;
        assert_eq!(subscribed.data["recovered"], true, "{how}");
        // Its id is where it resumed from, not the head: a client cut
        // before the replay resumes from it and misses nothing.
        assert_eq!(subscribed.id.as_deref(), Some(first[1].as_str()), "{how}");
        let url = server.url(&format!("/sse/rooms/{room}?user=z"));
        let id = subscribed.id.clone().expect("an id");
        let mut again = Sse::connect(&url, &[("Last-Event-ID", id.as_str())])
            .await
            .expect("opens");
        again.next_named("subscribed").await;
        for want in &missed {
            let event = again.next_named("message").await;
            assert_eq!(
                event.id.as_ref(),
                Some(want),
                "{how}: the replay after a cut"
            );
        }
        let mut replay = Vec::new();
        for _ in 0..3 {
            replay.push(sse.next_named("message").await);
        }
        let ids: Vec<_> = replay.iter().map(|e| e.id.clone().expect("id")).collect();
        assert_eq!(ids, missed, "{how}: exactly the missed events");
        let live = publish_n(&server, &room, "live", 1).await;
        let event = sse.next_named("message").await;
        assert_eq!(
            event.id.as_deref(),
            Some(live[0].as_str()),
            "{how}: then live"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_headers_and_expired_cursor() {
    let server = TestServer::with_args(&["--retention-count", "2"]).await;
    let early = publish_n(&server, "sseold", "m", 5).await;
    let mut sse = Sse::connect(
        &server.url("/sse/rooms/sseold?user=z"),
        &[("Last-Event-ID", early[0].as_str())],
    )
    .await
    .expect("opens");
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let subscribed = sse.next_named("subscribed").await;
    assert_eq!(subscribed.data["recovered"], false);
    publish_n(&server, "sseold", "fresh", 1).await;
    assert_eq!(sse.next_named("message").await.data["text"], "fresh0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_subscribe_resumes_with_since() {
    let server = TestServer::with_args(&["--retention-count", "4"]).await;
    let first = publish_n(&server, "gres", "a", 2).await;
    let missed = publish_n(&server, "gres", "b", 2).await;
    let mut grpc = server.grpc().await;
    let response = grpc
        .subscribe(pb::SubscribeRequest {
            room: "gres".into(),
            since: first[1].clone(),
        })
        .await
        .expect("subscribe");
    assert_eq!(meta(&response, "x-recovered"), "true");
    assert_eq!(meta(&response, "x-cursor"), missed[1].as_str());
    let mut stream = response.into_inner();
    let mut replay = Vec::new();
    while replay.len() < 2 {
        let event = next_grpc(&mut stream).await;
        if event.r#type == pb::EventType::Message as i32 {
            replay.push(event.cursor.clone());
        }
    }
    assert_eq!(replay, missed);
    let live = publish_n(&server, "gres", "c", 1).await;
    loop {
        let event = next_grpc(&mut stream).await;
        if event.r#type == pb::EventType::Message as i32 {
            assert_eq!(event.cursor, live[0]);
            break;
        }
    }

    // Older than retention (4 events: a1 is gone after 5 appends).
    publish_n(&server, "gres", "d", 4).await;
    let response = grpc
        .subscribe(pb::SubscribeRequest {
            room: "gres".into(),
            since: first[0].clone(),
        })
        .await
        .expect("subscribe");
    assert_eq!(meta(&response, "x-recovered"), "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_backwards_and_forwards() {
    let server = TestServer::start().await;
    let cursors = publish_n(&server, "hist", "h", 10).await;
    let (status, body) = server
        .get_json(&format!(
            "/api/rooms/hist/messages?before={}&limit=3",
            cursors[5]
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let got: Vec<_> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["text"].clone())
        .collect();
    assert_eq!(got, [json!("h2"), json!("h3"), json!("h4")]);
    let (_, body) = server
        .get_json(&format!(
            "/api/rooms/hist/messages?after={}&limit=2",
            cursors[7]
        ))
        .await;
    let got: Vec<_> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["text"].clone())
        .collect();
    assert_eq!(got, [json!("h8"), json!("h9")]);

    let mut ws = server.ws("/ws?user=reader").await;
    ws.send(json!({"type":"history","room":"hist","before":cursors[2],"limit":50}))
        .await;
    let history = ws.recv_type("history").await;
    assert_eq!(history["room"], "hist");
    let events = history["events"].as_array().expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "message");
    assert_eq!(events[1]["cursor"], cursors[1].as_str());

    let mut grpc = server.grpc().await;
    let reply = grpc
        .history(pb::HistoryRequest {
            room: "hist".into(),
            after: String::new(),
            before: String::new(),
            limit: 4,
        })
        .await
        .expect("history")
        .into_inner();
    let got: Vec<_> = reply.events.iter().map(|e| e.text.clone()).collect();
    assert_eq!(got, ["h6", "h7", "h8", "h9"]);
}
