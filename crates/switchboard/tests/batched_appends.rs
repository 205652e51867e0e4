//! Appends queued for a room while one is in flight go to JetStream as one
//! atomic batch (ADR 0011). What clients can observe must not change, so
//! these tests publish from many connections into the same rooms at once,
//! through a real nats-server, and check:
//!
//! * batches were really used (the metric), so the checks below cover them;
//! * every publish is acknowledged once, each room's acks name distinct
//!   offsets, and each room's history holds every message once;
//! * every stored event names its room's previous event as `prev_offset`
//!   (a batch lands on consecutive sequences), so the gap detection of the
//!   live feeds never fires and resume from a cursor inside a batch replays
//!   exactly the rest;
//! * a batch holding a retried id is refused whole by JetStream and sent
//!   again one message at a time: the retry gets its original cursor;
//! * an R1 file stream (where nats-server would stage each batch in a file
//!   store of its own) and `--jetstream-batches false` append one message
//!   per round trip, with the same results.
//!
//! Batches are used on replicated and memory streams: the R3 test runs a
//! real 3-node cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::procs::{Nats, NatsCluster, Service, TempDir, grpc};
use common::{UNTHROTTLED, Ws};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use switchboard_protocol::pb;

const ROOMS: usize = 3;
const PUBLISHERS: usize = 12;
/// Per publisher and room: the publishers' appends to one room queue
/// behind each other, the material of batches.
const PER_ROOM: usize = 25;

fn room(r: usize) -> String {
    format!("batch-{r}")
}

fn offset(cursor: &str) -> u64 {
    cursor
        .rsplit_once(':')
        .and_then(|(_, offset)| offset.parse().ok())
        .unwrap_or_else(|| panic!("cursor {cursor} has an offset"))
}

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = UNTHROTTLED.to_vec();
    args.extend_from_slice(extra);
    args
}

/// Every publisher sends all its publishes without waiting (up to one per
/// room in flight per connection, so the connections' appends to a room
/// meet in the core's queue), then reads its acks. Returns the cursor of
/// every publish by id.
async fn publish_from_many_connections(service: &Service) -> HashMap<String, String> {
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let url = service.ws_url(&format!("/ws?user=pub{p}"));
        tasks.push(tokio::spawn(async move {
            let mut ws = Ws::connect(&url).await;
            for i in 0..PER_ROOM {
                for r in 0..ROOMS {
                    ws.send(json!({"type":"publish","room":room(r),"text":format!("{p}-{i}"),"id":format!("{r}-{p}-{i}")}))
                        .await;
                }
            }
            let mut acks = HashMap::new();
            while acks.len() < PER_ROOM * ROOMS {
                let frame = ws.recv().await;
                assert_eq!(frame["type"], "ack", "every publish is stored: {frame}");
                let id = frame["id"].as_str().expect("ack id").to_owned();
                let cursor = frame["cursor"].as_str().expect("cursor").to_owned();
                assert!(acks.insert(id, cursor).is_none(), "acked twice: {frame}");
            }
            acks
        }));
    }
    let mut all = HashMap::new();
    for task in tasks {
        all.extend(task.await.expect("publisher"));
    }
    assert_eq!(all.len(), PUBLISHERS * PER_ROOM * ROOMS);
    all
}

/// A room's stored events, oldest first, over gRPC (which shows
/// `prev_offset`), read backwards from the end: that walk follows each
/// event's `prev_offset`, so a wrong predecessor would cut it short.
async fn stored(service: &Service, room: &str) -> Vec<pb::Event> {
    let mut client = grpc(service).await;
    client
        .history(pb::HistoryRequest {
            room: room.into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .events
}

/// The checks shared by every layout: clients use `service`, history is
/// read over gRPC from `api`, whose metrics count the appends. Returns how
/// many appends went out in batches.
async fn concurrent_publishes_are_stored_once_in_one_chain(
    service: &Service,
    api: &Service,
) -> f64 {
    // Watchers of every room, subscribed before the publishes.
    let mut watchers = Vec::new();
    for r in 0..ROOMS {
        let mut ws = Ws::connect(&service.ws_url(&format!("/ws?user=watch{r}"))).await;
        ws.subscribe(&room(r), None).await;
        watchers.push(ws);
    }
    let acks = publish_from_many_connections(service).await;

    for (r, watcher) in watchers.iter_mut().enumerate() {
        let room = room(r);
        let all = stored(api, &room).await;
        // The chain runs through every event, the watcher's join too.
        let mut prev = 0;
        for event in &all {
            assert_eq!(
                event.prev_offset, prev,
                "{room}: each event names the previous one: {event:?}"
            );
            prev = offset(&event.cursor);
        }
        let events: Vec<&pb::Event> = all
            .iter()
            .filter(|e| e.r#type == pb::EventType::Message as i32)
            .collect();
        assert_eq!(
            events.len(),
            PUBLISHERS * PER_ROOM,
            "{room}: history holds every message once (a wrong predecessor cuts the walk short)"
        );
        let mut ids = HashSet::new();
        for event in &events {
            assert!(
                ids.insert(event.id.clone()),
                "{room}: stored once: {event:?}"
            );
            assert_eq!(
                acks[&event.id], event.cursor,
                "{room}: the ack named the stored cursor"
            );
        }
        // Live: every event once, in stored order.
        for event in &events {
            let frame = watcher.recv_type("message").await;
            assert_eq!(frame["cursor"], event.cursor.as_str(), "{room}: live order");
        }
        // Resume from a cursor in the middle (inside a batch, if any):
        // exactly the rest, recovered.
        let middle = events.len() / 2;
        let mut late = Ws::connect(&service.ws_url("/ws?user=late")).await;
        let subscribed = late
            .subscribe(&room, Some(events[middle].cursor.as_str()))
            .await;
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
        for event in &events[middle + 1..] {
            let frame = late.recv_type("message").await;
            assert_eq!(frame["cursor"], event.cursor.as_str(), "{room}: resume");
        }
    }
    assert_eq!(
        service.metric("switchboard_gap_repairs_total").await,
        0.0,
        "no live event looked like it skipped one"
    );
    api.metric("switchboard_jetstream_appends_total{path=\"batch\"}")
        .await
}

/// Batches were used, and every append was counted once.
async fn assert_batched(service: &Service, batched: f64) {
    let committed = service
        .metric("switchboard_jetstream_batches_total{result=\"committed\"}")
        .await;
    assert!(
        committed > 0.0 && batched >= 2.0 * committed,
        "the publishes queued and went out in batches: {committed} batches, {batched} appends"
    );
    let single = service
        .metric("switchboard_jetstream_appends_total{path=\"single\"}")
        .await;
    // Joins and leaves of the test's clients are appends too.
    assert!(
        (batched + single) as usize >= PUBLISHERS * PER_ROOM * ROOMS,
        "each append counted: {batched} + {single}"
    );
}

async fn assert_not_batched(service: &Service, batched: f64) {
    assert_eq!(batched, 0.0, "no batch");
    let single = service
        .metric("switchboard_jetstream_appends_total{path=\"single\"}")
        .await;
    assert!(
        single as usize >= PUBLISHERS * PER_ROOM * ROOMS,
        "{single} single appends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_a_memory_stream_go_out_as_batches_on_one_chain() {
    let dir = TempDir::new("batches");
    let nats = Nats::start(&dir.0);
    let solo = Service::start(
        "standalone",
        &nats.url(),
        &args(&["--jetstream-storage", "memory"]),
    );
    solo.wait_ready(true).await;
    let batched = concurrent_publishes_are_stored_once_in_one_chain(&solo, &solo).await;
    assert_batched(&solo, batched).await;
}

/// The production layout: a replicated stream on a 3-node cluster, a core
/// and a separate gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_an_r3_stream_go_out_as_batches_on_one_chain() {
    let dir = TempDir::new("batches-r3");
    let cluster = NatsCluster::start(&dir.0);
    let urls = cluster.urls();
    let core = Service::start("core", &urls, &args(&["--jetstream-replicas", "3"]));
    let gateway = Service::start("ws-gateway", &urls, &UNTHROTTLED);
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let batched = concurrent_publishes_are_stored_once_in_one_chain(&gateway, &core).await;
    assert_batched(&core, batched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_file_streams_and_the_switch_off_append_one_at_a_time() {
    let dir = TempDir::new("no-batches");
    let nats = Nats::start(&dir.0);
    for extra in [
        &[][..],
        &[
            "--jetstream-storage",
            "memory",
            "--jetstream-batches",
            "false",
        ][..],
    ] {
        let prefix = format!("nb{}", extra.len());
        let mut flags = args(extra);
        flags.extend(["--nats-prefix", prefix.as_str()]);
        let solo = Service::start("standalone", &nats.url(), &flags);
        solo.wait_ready(true).await;
        let batched = concurrent_publishes_are_stored_once_in_one_chain(&solo, &solo).await;
        assert_not_batched(&solo, batched).await;
    }
}

/// Retries of stored ids, mixed into concurrent new publishes: a batch
/// that holds one is refused whole (JetStream's duplicate check) and its
/// messages go again one by one, so the retry gets its original cursor
/// and the new ones are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_retried_id_falls_back_and_every_message_gets_its_answer() {
    let dir = TempDir::new("batch-dup");
    let nats = Nats::start(&dir.0);
    let solo = Service::start(
        "standalone",
        &nats.url(),
        &args(&["--jetstream-storage", "memory"]),
    );
    solo.wait_ready(true).await;
    let room = "batch-dup";
    let mut first = Ws::connect(&solo.ws_url("/ws?user=first")).await;
    let mut original = HashMap::new();
    for i in 0..PUBLISHERS {
        let ack = first
            .publish(room, &format!("o{i}"), &format!("o-{i}"))
            .await;
        original.insert(format!("o-{i}"), ack["cursor"].clone());
    }
    let fallback = "switchboard_jetstream_batches_total{result=\"fallback\"}";
    // Each round: every publisher retries one stored id and sends new ones
    // at the same time. Which batch a retry lands in is up to timing, so
    // rounds repeat (a bounded number) until one batch held a retry.
    let mut stored_new = 0;
    for round in 0..20 {
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let url = solo.ws_url(&format!("/ws?user=p{p}"));
            let retry = format!("o-{p}");
            tasks.push(tokio::spawn(async move {
                let mut ws = Ws::connect(&url).await;
                // Three connections per publisher: one append per room and
                // connection is in flight, so these queue in the core.
                ws.send(json!({"type":"publish","room":room,"text":"again","id":retry}))
                    .await;
                let mut others = Vec::new();
                for k in 0..2 {
                    let mut other = Ws::connect(&url).await;
                    other
                        .send(json!({"type":"publish","room":room,"text":"new","id":format!("n-{round}-{p}-{k}")}))
                        .await;
                    others.push(other);
                }
                let mut answers = vec![ws.recv().await];
                for mut other in others {
                    answers.push(other.recv().await);
                }
                answers
            }));
        }
        for task in tasks {
            let answers: Vec<Value> = task.await.expect("publisher");
            for answer in answers {
                assert_eq!(answer["type"], "ack", "{answer}");
                let id = answer["id"].as_str().expect("id");
                if let Some(cursor) = original.get(id) {
                    assert_eq!(
                        &answer["cursor"], cursor,
                        "a retry gets its original cursor"
                    );
                } else {
                    stored_new += 1;
                }
            }
        }
        if solo.metric(fallback).await > 0.0 {
            break;
        }
    }
    assert!(
        solo.metric(fallback).await > 0.0,
        "a batch held a retried id"
    );
    let events: Vec<pb::Event> = stored(&solo, room)
        .await
        .into_iter()
        .filter(|e| e.r#type == pb::EventType::Message as i32)
        .collect();
    assert_eq!(
        events.len(),
        PUBLISHERS + stored_new,
        "retries were not stored again; new publishes once each"
    );
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no id stored twice");
}

/// Clients that vanish with publishes in flight (their appends waiting in
/// the room's queue, or holding its turn) never stall the room: the turn
/// passes on, and a later publish is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_that_vanish_mid_append_do_not_stall_the_room() {
    let dir = TempDir::new("batch-vanish");
    let nats = Nats::start(&dir.0);
    let solo = Service::start(
        "standalone",
        &nats.url(),
        &args(&["--jetstream-storage", "memory"]),
    );
    solo.wait_ready(true).await;
    let room = "batch-vanish";
    for round in 0..5 {
        let mut gone = Vec::new();
        for p in 0..PUBLISHERS {
            let mut ws = Ws::connect(&solo.ws_url(&format!("/ws?user=v{p}"))).await;
            ws.send(
                json!({"type":"publish","room":room,"text":"bye","id":format!("v-{round}-{p}")}),
            )
            .await;
            gone.push(ws);
        }
        // Dropped without reading: the server sees the connections end
        // while their appends are queued or in flight.
        drop(gone);
        let mut ws = Ws::connect(&solo.ws_url("/ws?user=after")).await;
        let ack = ws
            .publish(room, "still here", &format!("after-{round}"))
            .await;
        assert_eq!(ack["type"], "ack", "the room still takes publishes: {ack}");
    }
}
