//! WebSocket liveness: the server pings, a peer that answers stays, a peer
//! that stays silent past the ping timeout is dropped and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Ended, TestServer, WAIT};
use futures::StreamExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_and_counted_while_a_live_one_stays() {
    let server =
        TestServer::with_args(&["--ping-interval", "100ms", "--ping-timeout", "600ms"]).await;
    let mut live = server.ws("/ws?user=live").await;
    let mut silent = server.ws("/ws?user=silent").await;

    // The live peer reads (tungstenite answers pings while reading) and
    // sees several pings over more than two ping timeouts.
    let mut pings = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(WAIT, live.stream.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(frame)))) => panic!("live peer closed: {frame:?}"),
            other => assert!(matches!(other, Ok(Some(Ok(_)))), "{other:?}"),
        }
    }
    assert!(pings >= 3, "server pings regularly ({pings})");

    // The silent peer never read, so it never answered a ping. Its close
    // frame (1001) may be lost: the pongs it queues on its first read hit
    // a socket the server already closed, and the reset discards it.
    let ended = silent.ended().await;
    assert!(
        matches!(ended, Ended::Close(1001) | Ended::Eof),
        "{ended:?}"
    );
    let body = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metric(&body, "switchboard_ping_failures_total") >= 1.0,
        "{body}"
    );

    // And the live one still works.
    live.send(serde_json::json!({"type":"ping"})).await;
    assert_eq!(live.recv_type("pong").await["type"], "pong");
}

/// A flood of cheap frames (pings, history, garbage) is cut off with
/// `rate_limited` errors; the connection survives and recovers, and a
/// neighbour on the same server is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_floods_are_rate_limited_without_harming_neighbours() {
    let server = TestServer::with_args(&["--publish-rate", "5", "--publish-burst", "5"]).await;
    let mut flooder = server.ws("/ws?user=flood").await;
    let mut neighbour = server.ws("/ws?user=calm").await;
    // Budget: 4 × the publish burst = 20 frames at once.
    for i in 0..60 {
        let frame = match i % 3 {
            0 => serde_json::json!({"type":"ping"}),
            1 => serde_json::json!({"type":"history","room":"r"}),
            _ => serde_json::json!({"type":"nonsense"}),
        };
        flooder.send(frame).await;
    }
    let mut limited = 0;
    let mut answered = 0;
    while limited + answered < 60 {
        let frame = flooder.recv().await;
        if frame["type"] == "error" && frame["code"] == "rate_limited" {
            limited += 1;
        } else {
            answered += 1;
        }
    }
    assert!(limited >= 30, "most of the flood was refused ({limited})");
    assert!(answered >= 20, "the budget was served ({answered})");
    neighbour.send(serde_json::json!({"type":"ping"})).await;
    assert_eq!(neighbour.recv_type("pong").await["type"], "pong");
    // The budget refills (20/s): the flooder is served again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        flooder.send(serde_json::json!({"type":"ping"})).await;
        let frame = flooder.recv().await;
        if frame["type"] == "pong" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
