//! The JetStream room-log store against a real `nats-server` and real
//! `switchboard` processes: dedup honours its window with several cores,
//! a flood cannot fill the store for everyone, and reads touch only the
//! events they return and leave no consumer behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::procs::{Nats, NatsOptions, Service, TempDir};
use common::{WAIT, Ws};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The room-log stream of the default prefix.
const STREAM: &str = "SB_ROOMS";
/// Client limits out of the way: these tests measure the store (the read
/// budget would refuse 800 concurrent history pages from one address).
fn unthrottled() -> Vec<&'static str> {
    let mut flags = common::UNTHROTTLED.to_vec();
    flags.extend(["--history-rate", "1000000", "--history-burst", "1000000"]);
    flags
}

/// POSTs a message through a gateway's HTTP API: status and JSON body.
async fn post(
    client: &reqwest::Client,
    gateway: &Service,
    room: &str,
    user: &str,
    text: &str,
    id: Option<&str>,
) -> (u16, Value) {
    let mut body = json!({ "text": text });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let url = gateway.url(&format!("/api/rooms/{room}/messages?user={user}"));
    let response = tokio::time::timeout(WAIT, client.post(url).json(&body).send())
        .await
        .expect("POST answers in time")
        .expect("POST sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A publish that must be acknowledged: its cursor.
async fn publish_ok(client: &reqwest::Client, gateway: &Service, room: &str, text: &str) -> String {
    let (status, body) = post(client, gateway, room, "writer", text, None).await;
    assert_eq!(status, 201, "{body}");
    body["cursor"].as_str().expect("cursor").to_owned()
}

/// `GET /api/rooms/{room}/messages?<query>`: the events.
async fn history(
    client: &reqwest::Client,
    gateway: &Service,
    room: &str,
    query: &str,
) -> Vec<Value> {
    let url = gateway.url(&format!("/api/rooms/{room}/messages?user=reader&{query}"));
    let response = tokio::time::timeout(WAIT * 3, client.get(url).send())
        .await
        .expect("history answers in time")
        .expect("history sent");
    assert_eq!(response.status(), 200, "history of {room}");
    let body: Value = response.json().await.expect("JSON");
    body["events"].as_array().expect("events").clone()
}

/// A counter of a process's `/metrics` (0 if absent).
async fn counter(service: &Service, name: &str) -> u64 {
    let text = tokio::time::timeout(WAIT, reqwest::get(service.url("/metrics")))
        .await
        .expect("/metrics answers in time")
        .expect("/metrics reachable")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn offset(cursor: &str) -> u64 {
    cursor
        .rsplit(':')
        .next()
        .and_then(|o| o.parse().ok())
        .expect("cursor offset")
}

/// One publish as the client saw it.
#[derive(Debug, Clone)]
struct Acked {
    text: String,
    cursor: String,
    duplicate: bool,
    sent: Instant,
    acked: Instant,
}

/// With `cores` core processes and a 2 s dedup window: per room, a few
/// warm-up publishes (so every core caches a soon-stale last sequence),
/// `first` with id `dup`, its immediate retry, then — after the window —
/// `second` with the same id. Every acknowledged publish must be stored;
/// a `duplicate: true` must name a stored event with that id acknowledged
/// less than a window before the retry was sent.
async fn reused_id_after_the_window(cores: usize) {
    const ROOMS: usize = 16;
    const WINDOW: Duration = Duration::from_secs(2);
    let dir = TempDir::new("dedupwin");
    let nats = Nats::start(&dir.0);
    let cores: Vec<Service> = (0..cores)
        .map(|_| Service::start("core", &nats.url(), &["--dedup-window", "2s"]))
        .collect();
    let gateway = Service::start("ws-gateway", &nats.url(), &unthrottled());
    for service in cores.iter().chain([&gateway]) {
        service.wait_ready(true).await;
    }
    let gateway = std::sync::Arc::new(gateway);
    let client = reqwest::Client::new();

    let publish = {
        let (client, gateway) = (client.clone(), gateway.clone());
        move |room: String, text: &'static str, id: Option<String>| {
            let client = client.clone();
            let gateway = gateway.clone();
            async move {
                let sent = Instant::now();
                let (status, body) = post(&client, &gateway, &room, "u", text, id.as_deref()).await;
                assert_eq!(status, 201, "{room} {text}: {body}");
                Acked {
                    text: text.to_owned(),
                    cursor: body["cursor"].as_str().expect("cursor").to_owned(),
                    duplicate: body["duplicate"].as_bool().expect("duplicate"),
                    sent,
                    acked: Instant::now(),
                }
            }
        }
    };

    let mut rooms = JoinSet::new();
    for r in 0..ROOMS {
        let room = format!("win{r}");
        let publish = publish.clone();
        rooms.spawn(async move {
            let mut acks = Vec::new();
            for w in 0..4 {
                acks.push(publish(room.clone(), "warm", Some(format!("w{w}"))).await);
            }
            acks.push(publish(room.clone(), "first", Some("dup".into())).await);
            acks.push(publish(room.clone(), "first", Some("dup".into())).await);
            (room, acks)
        });
    }
    let mut by_room = HashMap::new();
    while let Some(joined) = rooms.join_next().await {
        let (room, acks) = joined.expect("room task");
        by_room.insert(room, acks);
    }
    // The window is time: let it pass (by a margin) after the last `first`.
    let last_first = by_room
        .values()
        .filter_map(|acks| acks.last().map(|a| a.acked))
        .max()
        .expect("acks");
    tokio::time::sleep_until(last_first + WINDOW + Duration::from_millis(1500)).await;
    let mut seconds = JoinSet::new();
    for room in by_room.keys().cloned() {
        let publish = publish.clone();
        seconds.spawn(async move {
            let ack = publish(room.clone(), "second", Some("dup".into())).await;
            (room, ack)
        });
    }
    while let Some(joined) = seconds.join_next().await {
        let (room, ack) = joined.expect("second publish");
        by_room.get_mut(&room).expect("room").push(ack);
    }

    let mut lost = Vec::new();
    for (room, acks) in &by_room {
        let stored = history(&client, &gateway, room, "limit=100").await;
        let stored: HashMap<&str, &Value> = stored
            .iter()
            .map(|e| (e["cursor"].as_str().expect("cursor"), e))
            .collect();
        for (i, ack) in acks.iter().enumerate() {
            let event = stored.get(ack.cursor.as_str());
            if !ack.duplicate {
                match event {
                    Some(event) => assert_eq!(event["text"], ack.text.as_str(), "{room}"),
                    None => lost.push(format!(
                        "{room}: {} acked {} but absent",
                        ack.text, ack.cursor
                    )),
                }
                continue;
            }
            let event = event.unwrap_or_else(|| panic!("{room}: duplicate of nothing stored"));
            let original = acks[..i]
                .iter()
                .find(|a| !a.duplicate && a.cursor == ack.cursor)
                .unwrap_or_else(|| panic!("{room}: duplicate names no earlier publish"));
            assert_eq!(event["id"], "dup", "{room}");
            if ack.sent.duration_since(original.acked) > WINDOW {
                lost.push(format!(
                    "{room}: {} acked duplicate of {} stored {:?} earlier (window {WINDOW:?})",
                    ack.text,
                    ack.cursor,
                    ack.sent.duration_since(original.acked)
                ));
            }
        }
    }
    assert!(lost.is_empty(), "acknowledged but lost: {lost:#?}");
    // The shape we expect: the immediate retry was a duplicate, the reuse
    // after the window a new message.
    for (room, acks) in &by_room {
        let [.., first, retry, second] = acks.as_slice() else {
            panic!("{room}: too few acks");
        };
        assert!(!first.duplicate, "{room}: first");
        assert!(
            retry.duplicate && retry.cursor == first.cursor,
            "{room}: retry {retry:?}"
        );
        assert!(!second.duplicate, "{room}: second {second:?}");
    }
}

/// Two core replicas: a stale cached sequence is normal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_id_after_the_window_is_stored_with_two_cores() {
    reused_id_after_the_window(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_id_after_the_window_is_stored_with_three_cores() {
    reused_id_after_the_window(3).await;
}

/// A server with a 3 MB store, a core whose stream is bounded to 1 MB, and
/// one client flooding a room with ~4 MB: the stream discards its oldest
/// events, so another user's publishes in another room keep succeeding,
/// and the flooded room's history still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_discards_old_events_instead_of_filling_the_store() {
    const FLOOD: usize = 1000;
    const BOUND: u64 = 1 << 20;
    let dir = TempDir::new("flood");
    let nats = Nats::start_with(
        &dir.0,
        NatsOptions {
            monitor: true,
            max_file_store: Some("3MB".into()),
        },
    );
    // A per-room count above the flood, so only the byte bound can help.
    let core = Service::start(
        "core",
        &nats.url(),
        &["--jetstream-max-bytes", "1MB", "--retention-count", "5000"],
    );
    let gateway = Service::start("ws-gateway", &nats.url(), &unthrottled());
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let client = reqwest::Client::new();
    let text = "f".repeat(4000);

    let mut flooder = Ws::connect(&gateway.ws_url("/ws?user=flooder")).await;
    let mut refused = Vec::new();
    let mut calm = Vec::new();
    let mut last_flood = None;
    for chunk in 0..FLOOD / 50 {
        // Pipelined: 50 publishes, then their 50 answers.
        for i in 0..50 {
            flooder
                .send(json!({"type":"publish","room":"flood","text":text,"id":format!("f{chunk}-{i}")}))
                .await;
        }
        let mut answers = 0;
        while answers < 50 {
            let frame = flooder.recv().await;
            match frame["type"].as_str() {
                Some("ack") => {
                    answers += 1;
                    last_flood = frame["cursor"].as_str().map(str::to_owned);
                }
                Some("error") => {
                    answers += 1;
                    refused.push(frame);
                }
                _ => {}
            }
        }
        let (status, body) = post(
            &client,
            &gateway,
            "calm",
            "bystander",
            &format!("still here {chunk}"),
            Some(&format!("calm-{chunk}")),
        )
        .await;
        calm.push((status, body));
    }
    let failed: Vec<_> = calm.iter().filter(|(status, _)| *status != 201).collect();
    assert!(
        failed.is_empty(),
        "the bystander's publishes failed: {failed:?}"
    );
    assert!(
        refused.is_empty(),
        "flood publishes refused: {:?}",
        refused.first()
    );

    // The stream stayed within its bound, having discarded the oldest.
    let jsz: Value = reqwest::get(nats.monitor_url("/jsz?accounts=true&streams=true"))
        .await
        .expect("/jsz")
        .json()
        .await
        .expect("JSON");
    let bytes = jsz["account_details"][0]["stream_detail"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["name"] == STREAM)
        .and_then(|s| s["state"]["bytes"].as_u64())
        .expect("stream bytes");
    assert!(bytes <= BOUND, "stream holds {bytes} bytes, bound {BOUND}");
    let events = history(&client, &gateway, "flood", "limit=1000").await;
    let messages: Vec<_> = events.iter().filter(|e| e["type"] == "message").collect();
    assert!(
        !messages.is_empty() && messages.len() < FLOOD,
        "flooded history holds {} of {FLOOD}",
        messages.len()
    );
    assert_eq!(
        messages.last().and_then(|e| e["cursor"].as_str()),
        last_flood.as_deref(),
        "the newest flood event is kept"
    );
    assert!(
        events
            .windows(2)
            .all(|w| offset(w[0]["cursor"].as_str().expect("c"))
                < offset(w[1]["cursor"].as_str().expect("c"))),
        "history in order"
    );
}

/// History reads touch only what they return, and no read leaves a
/// consumer behind: `limit=1` costs the same on a 10- and a 1000-event
/// room, and after 800 concurrent history calls (newest-first and
/// `after` pages, the latter long enough for a consumer) the stream's
/// consumer count is back to its baseline at once — well before the
/// consumers' 5 s inactivity safety net could have removed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_only_what_it_returns_and_leaves_no_consumer() {
    let dir = TempDir::new("reads");
    let nats = Nats::start_with(
        &dir.0,
        NatsOptions {
            monitor: true,
            ..NatsOptions::default()
        },
    );
    let core = Service::start("core", &nats.url(), &[]);
    let mut gateway_flags = unthrottled();
    gateway_flags.extend(["--nats-request-timeout", "30s"]);
    let gateway = std::sync::Arc::new(Service::start("ws-gateway", &nats.url(), &gateway_flags));
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let client = reqwest::Client::new();

    for i in 0..10 {
        publish_ok(&client, &gateway, "small", &format!("s{i}")).await;
    }
    let mut writers = JoinSet::new();
    for w in 0..8 {
        let (client, gateway) = (client.clone(), gateway.clone());
        writers.spawn(async move {
            let mut cursors = Vec::new();
            for i in 0..125 {
                cursors.push(publish_ok(&client, &gateway, "big", &format!("b{w}-{i}")).await);
            }
            cursors
        });
    }
    let mut big = Vec::new();
    while let Some(cursors) = writers.join_next().await {
        big.extend(cursors.expect("writer"));
    }
    big.sort_by_key(|c| offset(c));

    let mut read = Vec::new();
    for room in ["small", "big"] {
        let before = counter(&core, "switchboard_store_events_read_total").await;
        let events = history(&client, &gateway, room, "limit=1").await;
        let after = counter(&core, "switchboard_store_events_read_total").await;
        assert_eq!(events.len(), 1, "{room}");
        read.push(after - before);
    }
    assert_eq!(
        read[0], read[1],
        "limit=1 reads {read:?} events (small, big)"
    );
    assert!(
        read[0] >= 1 && read[0] <= 2,
        "limit=1 read {} events",
        read[0]
    );
    let newest = history(&client, &gateway, "big", "limit=1").await;
    assert_eq!(newest[0]["cursor"], big[big.len() - 1].as_str());

    // Pages are right: newest first, before a cursor, after a cursor.
    let page = history(&client, &gateway, "big", "limit=30").await;
    let cursors: Vec<_> = page
        .iter()
        .map(|e| e["cursor"].as_str().expect("c"))
        .collect();
    assert_eq!(
        cursors,
        big[big.len() - 30..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let page = history(
        &client,
        &gateway,
        "big",
        &format!("limit=20&before={}", big[500]),
    )
    .await;
    let cursors: Vec<_> = page
        .iter()
        .map(|e| e["cursor"].as_str().expect("c"))
        .collect();
    assert_eq!(
        cursors,
        big[480..500].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let page = history(
        &client,
        &gateway,
        "big",
        &format!("limit=100&after={}", big[10]),
    )
    .await;
    let cursors: Vec<_> = page
        .iter()
        .map(|e| e["cursor"].as_str().expect("c"))
        .collect();
    assert_eq!(
        cursors,
        big[11..111].iter().map(String::as_str).collect::<Vec<_>>()
    );

    let baseline = nats.consumer_count(STREAM).await;
    let mut calls = JoinSet::new();
    for i in 0..800 {
        let (client, gateway) = (client.clone(), gateway.clone());
        let query = if i % 2 == 0 {
            "limit=10".to_owned()
        } else {
            format!("limit=40&after={}", big[i % 900])
        };
        calls.spawn(async move { history(&client, &gateway, "big", &query).await.len() });
    }
    while let Some(len) = calls.join_next().await {
        let len = len.expect("history call");
        assert!(len == 10 || len == 40, "a page of {len}");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = nats.consumer_count(STREAM).await;
        if now <= baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{now} consumers remain after the reads (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A cursor of another room (between two of this room's events) pages
    // by offset and reads nothing of that room; u64::MAX does not overflow.
    let small = history(&client, &gateway, "small", "limit=100").await;
    for i in 0..5 {
        publish_ok(&client, &gateway, "small", &format!("late{i}")).await;
    }
    let epoch = big[0].rsplit_once(':').expect("cursor").0.to_owned();
    let foreign = history(
        &client,
        &gateway,
        "small",
        &format!("limit=5&before={}", big[900]),
    )
    .await;
    assert_eq!(foreign, small[small.len() - 5..]);
    let url = gateway.url(&format!(
        "/api/rooms/small/messages?user=reader&after={epoch}:{}",
        u64::MAX
    ));
    let response = client.get(url).send().await.expect("sent");
    assert_eq!(response.status(), 400, "u64::MAX cursor is a bad cursor");
}

/// Resume from old cursors through a gateway: a long replay (past the
/// direct-get reads, through a consumer) returns every missed event in
/// order exactly once; once retention dropped some, `recovered: false`
/// after reading at most a couple of events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_cursor_resume_replays_exactly_once_or_says_not_recovered() {
    let dir = TempDir::new("resume");
    let nats = Nats::start_with(
        &dir.0,
        NatsOptions {
            monitor: true,
            ..NatsOptions::default()
        },
    );
    let core = Service::start("core", &nats.url(), &["--retention-count", "100"]);
    let gateway = Service::start("ws-gateway", &nats.url(), &unthrottled());
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let client = reqwest::Client::new();
    let mut cursors = Vec::new();
    for i in 0..80 {
        cursors.push(publish_ok(&client, &gateway, "replay", &format!("m{i}")).await);
    }

    let mut ws = Ws::connect(&gateway.ws_url("/ws?user=returning")).await;
    let subscribed = ws.subscribe("replay", Some(&cursors[2])).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let marker = publish_ok(&client, &gateway, "replay", "marker").await;
    let mut replayed = Vec::new();
    loop {
        let frame = ws.recv_type("message").await;
        let cursor = frame["cursor"].as_str().expect("cursor").to_owned();
        if cursor == marker {
            break;
        }
        replayed.push(cursor);
    }
    assert_eq!(replayed, cursors[3..], "every missed event, in order, once");
    drop(ws);
    assert_eq!(
        nats.consumer_count(STREAM).await,
        0,
        "the replay's consumer is gone"
    );

    // 100 more: retention (100 per room) drops the old cursor's successors.
    for i in 0..100 {
        publish_ok(&client, &gateway, "replay", &format!("n{i}")).await;
    }
    let before = counter(&core, "switchboard_store_events_read_total").await;
    let mut late = Ws::connect(&gateway.ws_url("/ws?user=late")).await;
    let subscribed = late.subscribe("replay", Some(&cursors[2])).await;
    let read = counter(&core, "switchboard_store_events_read_total").await - before;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert!(read <= 2, "an unrecoverable resume read {read} events");
}

/// A publish whose answer timed out may have been stored: the client is
/// told to retry with the same id, and that retry stores nothing twice.
/// The server is frozen while the publish is in flight, so the gateway's
/// request times out with the publish still queued; thawed, it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_publish_asks_for_a_retry_with_the_same_id() {
    let dir = TempDir::new("frozen");
    let nats = Nats::start(&dir.0);
    let core = Service::start("core", &nats.url(), &[]);
    let gateway = Service::start("ws-gateway", &nats.url(), &["--nats-request-timeout", "1s"]);
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let client = reqwest::Client::new();
    publish_ok(&client, &gateway, "frozen", "before").await;

    nats.freeze(true);
    let (status, body) = post(&client, &gateway, "frozen", "u", "maybe", Some("m-1")).await;
    nats.freeze(false);
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("retry with the same id"), "{message}");

    let (status, body) = post(&client, &gateway, "frozen", "u", "maybe", Some("m-1")).await;
    assert_eq!(status, 201, "{body}");
    let stored: Vec<_> = history(&client, &gateway, "frozen", "limit=100")
        .await
        .into_iter()
        .filter(|e| e["id"] == "m-1")
        .collect();
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!(stored[0]["cursor"], body["cursor"]);
}
