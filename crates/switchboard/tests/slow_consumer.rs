//! Slow consumers (spec §6): a subscriber that stops reading is dropped
//! with close 4008 without slowing or dropping its neighbours, is counted
//! in `/metrics`, and loses nothing: it resumes by cursor.
//!
//! Alone in its file (its own test process) because it asserts on the
//! process-global metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Ended, TestServer, WAIT, Ws};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, client_async};

const ROOM: &str = "flood";
const MESSAGES: usize = 2000;
const DROPS: &str = "switchboard_slow_consumer_drops_total";
/// Bound of the whole flood and of the whole replay.
const FLOOD_WAIT: Duration = Duration::from_secs(60);

fn text_of(i: usize) -> String {
    // ~4000 bytes each: 2000 of them (~8 MB) are far more than any socket
    // buffer holds.
    format!("{i:05}-{}", "x".repeat(3994))
}

fn index_of(text: &str) -> usize {
    text[..5].parse().expect("numbered text")
}

/// A WebSocket client whose kernel receive buffer is tiny, so that a few
/// unread frames fill it.
async fn small_buffer_client(server: &TestServer, path: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = tokio::time::timeout(WAIT, socket.connect(server.http))
        .await
        .expect("connects in time")
        .expect("TCP connect");
    let (stream, _) = tokio::time::timeout(
        WAIT,
        client_async(server.ws_url(path), MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("upgrade in time")
    .expect("WebSocket upgrade");
    Ws { stream }
}

/// Value of a counter in `/metrics`, summed over its labels (0 when absent).
async fn counter(server: &TestServer, name: &str) -> f64 {
    counter_at(&server.url("/metrics"), name).await
}

async fn counter_at(metrics_url: &str, name: &str) -> f64 {
    let body = tokio::time::timeout(WAIT, async {
        reqwest::get(metrics_url)
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics body")
    })
    .await
    .expect("metrics in time");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .filter(|(series, _)| *series == name || series.starts_with(&format!("{name}{{")))
        .map(|(_, value)| value.trim().parse::<f64>().expect("numeric sample"))
        .sum()
}

/// Everything a client read before its connection ended.
struct Drained {
    messages: Vec<Value>,
    ended: Ended,
}

/// Reads every frame until the connection ends, keeping message events.
/// Bounded as a whole: server pings alone must not keep it going.
async fn drain(ws: &mut Ws) -> Drained {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut messages = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, ws.stream.next())
            .await
            .expect("the connection ends in time");
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                if frame["type"] == "message" {
                    messages.push(frame);
                }
            }
            Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                return Drained {
                    messages,
                    ended: Ended::Close(code.into()),
                };
            }
            Some(Ok(Message::Close(None)) | Err(_)) | None => {
                return Drained {
                    messages,
                    ended: Ended::Eof,
                };
            }
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_dropped_with_4008_and_neighbours_get_everything() {
    let server = TestServer::with_args(&[
        "--outbound-queue",
        "16",
        "--publish-rate",
        "100000",
        "--publish-burst",
        "100000",
        "--ping-interval",
        "1s",
        "--ping-timeout",
        "3s",
        // Room for all of the flood, so the dropped client can resume.
        "--retention-count",
        "5000",
    ])
    .await;
    let drops_before = counter(&server, DROPS).await;

    let mut slow = small_buffer_client(&server, "/ws?user=slow").await;
    let slow_head = slow.subscribe(ROOM, None).await["cursor"]
        .as_str()
        .expect("head cursor")
        .to_owned();
    let mut normal = server.ws("/ws?user=normal").await;
    normal.subscribe(ROOM, None).await;
    let mut publisher = server.ws("/ws?user=publisher").await;

    // The slow client's last sign of life: from here on it reads nothing.
    slow.send(json!({"type": "ping"})).await;

    // As soon as the server gives up on the slow client, read it: it must
    // get what was already on its way, then close 4008.
    let metrics_url = server.url("/metrics");
    let slow_reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        while counter_at(&metrics_url, DROPS).await <= drops_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the unread client was never dropped as a slow consumer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain(&mut slow).await
    });

    // The flood, in lockstep with the normal subscriber: it must see every
    // message exactly once, in publish order, however far behind the slow
    // client falls.
    // Bounded as a whole (pings every second would keep a single `recv`
    // waiting forever if a message went missing).
    tokio::time::timeout(FLOOD_WAIT, async {
        for i in 0..MESSAGES {
            let id = format!("m-{i}");
            let ack = publisher.publish(ROOM, &text_of(i), &id).await;
            assert_eq!(ack["type"], "ack", "publish {i}: {ack}");
            let event = normal.recv_type("message").await;
            assert_eq!(
                event["id"],
                id.as_str(),
                "normal subscriber out of order at {i}"
            );
            assert_eq!(index_of(event["text"].as_str().expect("text")), i);
        }
    })
    .await
    .expect("the flood completes in time");

    let slow_seen = tokio::time::timeout(WAIT, slow_reader)
        .await
        .expect("slow client drained in time")
        .expect("slow reader task");
    assert_eq!(
        slow_seen.ended,
        Ended::Close(4008),
        "a slow consumer is closed with 4008 (got {} messages first)",
        slow_seen.messages.len()
    );
    let got: Vec<usize> = slow_seen
        .messages
        .iter()
        .map(|m| index_of(m["text"].as_str().expect("text")))
        .collect();
    assert!(
        got.len() < MESSAGES,
        "the slow client cannot have received everything ({} messages)",
        got.len()
    );
    assert_eq!(
        got,
        (0..got.len()).collect::<Vec<_>>(),
        "what the slow client got is a gap-free prefix"
    );

    // Nothing is lost silently: resuming from the last cursor it saw
    // replays exactly the rest.
    let since = slow_seen.messages.last().map_or(slow_head, |m| {
        m["cursor"].as_str().expect("cursor").to_owned()
    });
    let mut resumed = server.ws("/ws?user=slow").await;
    let subscribed = resumed.subscribe(ROOM, Some(&since)).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    tokio::time::timeout(FLOOD_WAIT, async {
        for i in got.len()..MESSAGES {
            let event = resumed.recv_type("message").await;
            assert_eq!(event["id"], format!("m-{i}"), "replay out of order");
        }
        // The normal subscriber was never dropped: it still answers.
        normal.send(json!({"type": "ping"})).await;
        normal.recv_type("pong").await;
    })
    .await
    .expect("replay completes in time");

    let drops_after = counter(&server, DROPS).await;
    assert!(
        drops_after >= drops_before + 1.0,
        "{DROPS} must count the drop: before {drops_before}, after {drops_after}"
    );
}

/// A client that stops reading is noticed after a bounded number of bytes:
/// the kernel send buffer of its socket is capped (`--socket-send-buffer`,
/// 256 KiB), so its outbound queue fills and it is closed with 4008 long
/// before the ~4 MiB loopback autotuning would let the kernel hold for it.
/// Autotuned, 1 MB of events would vanish into that buffer and nobody
/// would be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_client_is_dropped_within_a_bounded_socket_buffer() {
    const CAP: usize = 1000;
    let server = TestServer::with_args(&[
        "--outbound-queue",
        "64",
        "--publish-rate",
        "100000",
        "--publish-burst",
        "100000",
        // Long enough that the write-progress timeout cannot be what
        // closes it.
        "--ping-timeout",
        "120s",
        "--retention-count",
        "1000",
    ])
    .await;
    let drops_before = counter(&server, DROPS).await;
    let mut stalled = small_buffer_client(&server, "/ws?user=stalled").await;
    stalled.subscribe("stalled", None).await;
    let mut publisher = server.ws("/ws?user=publisher").await;
    let text = "y".repeat(1000);
    let mut published = 0;
    tokio::time::timeout(FLOOD_WAIT, async {
        while counter(&server, DROPS).await <= drops_before {
            assert!(
                published < CAP,
                "{CAP} events of 1 KB were published and the unread client was not dropped: its socket buffer is not bounded"
            );
            for _ in 0..10 {
                let ack = publisher
                    .publish("stalled", &text, &format!("s-{published}"))
                    .await;
                assert_eq!(ack["type"], "ack", "{ack}");
                published += 1;
            }
        }
    })
    .await
    .expect("dropped in time");
    // It reads again: what was on its way, in order, then 4008.
    let seen = drain(&mut stalled).await;
    assert_eq!(seen.ended, Ended::Close(4008));
    assert!(
        seen.messages.len() < published,
        "{} of {published}",
        seen.messages.len()
    );
    for (i, message) in seen.messages.iter().enumerate() {
        assert_eq!(message["id"], format!("s-{i}"), "a gap-free prefix");
    }
}

/// A peer that stops answering pings is dropped and counted; one that
/// keeps reading (and so answers pings) stays, however quiet it is.
#[tokio::test(flavor = "multi_thread")]
async fn silent_peer_is_dropped_and_counted() {
    const FAILURES: &str = "switchboard_ping_failures_total";
    let server =
        TestServer::with_args(&["--ping-interval", "300ms", "--ping-timeout", "1500ms"]).await;
    let before = counter(&server, FAILURES).await;
    let mut reader = server.ws("/ws?user=reader").await;
    reader.subscribe("quiet", None).await;
    let mut mute = server.ws("/ws?user=mute").await;
    mute.subscribe("quiet", None).await;

    // `reader` keeps reading (tungstenite answers pings while reading);
    // `mute` reads nothing. Dropping `mute` ends its session, which shows
    // as its leave. The whole wait is bounded: pings alone arrive forever.
    let mut pings = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            match reader.stream.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                    if frame["type"] == "leave" {
                        assert_eq!(frame["user"], "mute", "only the silent peer is dropped");
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => panic!("the reading peer was closed: {frame:?}"),
                Some(Ok(_)) => {}
                other => panic!("the reading peer lost its connection: {other:?}"),
            }
        }
    })
    .await
    .expect("a peer that never answers pings is dropped in time");
    assert!(pings > 0, "the server pings its peers");

    let ended = drain(&mut mute).await.ended;
    assert!(
        matches!(ended, Ended::Close(_) | Ended::Eof),
        "the silent peer is disconnected"
    );
    let after = counter(&server, FAILURES).await;
    assert!(
        after >= before + 1.0,
        "{FAILURES} must count the drop: before {before}, after {after}"
    );

    // The reader outlived several timeouts' worth of pings and still works.
    tokio::time::timeout(WAIT, async {
        reader.send(json!({"type": "ping"})).await;
        reader.recv_type("pong").await;
    })
    .await
    .expect("the reading peer still answers");
}
