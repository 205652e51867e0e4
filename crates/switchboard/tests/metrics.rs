//! `/metrics` read by a real Prometheus text parser: the series of spec §8
//! exist from the start and move by the expected amounts for a scripted
//! session. (Own test binary: metrics are process-wide.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Sse, TestServer, WAIT};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use std::time::Duration;

struct Metrics(Scrape);

impl Metrics {
    async fn scrape(server: &TestServer) -> Self {
        let text = reqwest::get(server.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        let scrape =
            Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
        Self(scrape)
    }

    /// The value of a counter or gauge with these labels (0 if absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(_) | Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// Observations in a histogram (its `+Inf` bucket).
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match &s.value {
                Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map(|b| b.count),
                _ => None,
            })
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.samples.iter().any(|s| s.metric == name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_session_moves_every_series_as_expected() {
    let server = TestServer::start().await;
    let start = Metrics::scrape(&server).await;
    for name in [
        "switchboard_connections",
        "switchboard_messages_in_total",
        "switchboard_messages_out_total",
        "switchboard_slow_consumer_drops_total",
        "switchboard_rate_limited_total",
        "switchboard_ping_failures_total",
        "switchboard_resumes_total",
        "switchboard_nats_reconnects_total",
    ] {
        assert!(start.has(name), "{name} exists before any traffic");
    }
    let ws = [("transport", "websocket")];
    let sse = [("transport", "sse")];
    assert_eq!(start.value("switchboard_connections", &ws), 0.0);

    // Connect 5 WebSocket clients and 2 SSE streams to one room.
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut client = server.ws(&format!("/ws?user=u{i}")).await;
        client.subscribe("metered", None).await;
        clients.push(client);
    }
    let mut streams = Vec::new();
    for i in 0..2 {
        let mut stream = Sse::connect(&server.url(&format!("/sse/rooms/metered?user=s{i}")), &[])
            .await
            .expect("SSE opens");
        stream.next_named("subscribed").await;
        streams.push(stream);
    }
    // Let every join event reach everyone before counting deliveries.
    let marker = clients[0].publish("metered", "marker", "marker").await;
    assert_eq!(marker["type"], "ack");
    for client in &mut clients {
        client
            .recv_until(|f| f["id"] == "marker" && f["type"] == "message")
            .await;
    }
    for stream in &mut streams {
        while stream.next_named("message").await.data["id"] != "marker" {}
    }
    let before = Metrics::scrape(&server).await;
    assert_eq!(before.value("switchboard_connections", &ws), 5.0);
    assert_eq!(before.value("switchboard_connections", &sse), 2.0);

    // Publish 10 over WebSocket and 3 over HTTP: 13 events to 7 subscribers.
    for i in 0..10 {
        let ack = clients[0].publish("metered", "hi", &format!("w{i}")).await;
        assert_eq!(ack["type"], "ack");
    }
    for i in 0..3 {
        let (status, _) = server
            .post("metered", json!({"text": "hi", "id": format!("h{i}")}), &[])
            .await;
        assert_eq!(status, 201);
    }
    for client in &mut clients {
        client.recv_until(|f| f["id"] == "h2").await;
    }
    for stream in &mut streams {
        while stream.next_named("message").await.data["id"] != "h2" {}
    }
    // Two bad subscribes.
    clients[1]
        .send(json!({"type":"subscribe","room":"a.b"}))
        .await;
    clients[1]
        .send(json!({"type":"subscribe","room":">"}))
        .await;
    for _ in 0..2 {
        assert_eq!(clients[1].recv_type("error").await["code"], "invalid_room");
    }

    let after = Metrics::scrape(&server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(delta("switchboard_messages_in_total", &ws), 10.0);
    assert_eq!(
        delta("switchboard_messages_in_total", &[("transport", "http")]),
        3.0
    );
    assert_eq!(delta("switchboard_messages_out_total", &ws), 13.0 * 5.0);
    assert_eq!(delta("switchboard_messages_out_total", &sse), 13.0 * 2.0);
    assert_eq!(
        after.histogram_count("switchboard_publish_latency_seconds", &[])
            - before.histogram_count("switchboard_publish_latency_seconds", &[]),
        13.0
    );
    assert_eq!(
        after.histogram_count("switchboard_delivery_latency_seconds", &ws)
            - before.histogram_count("switchboard_delivery_latency_seconds", &ws),
        13.0 * 5.0
    );
    assert_eq!(
        delta("switchboard_errors_total", &[("code", "invalid_room")]),
        2.0
    );

    // One resume that recovers (13 events replayed) and one that cannot.
    let cursor = marker["cursor"].as_str().expect("cursor");
    let mut resumer = server.ws("/ws?user=r").await;
    assert_eq!(
        resumer.subscribe("metered", Some(cursor)).await["recovered"],
        true
    );
    let mut lost = server.ws("/ws?user=l").await;
    assert_eq!(
        lost.subscribe("metered", Some("gone:1")).await["recovered"],
        false
    );
    let resumed = Metrics::scrape(&server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        resumed.value(name, labels) - after.value(name, labels)
    };
    assert_eq!(
        delta("switchboard_resumes_total", &[("result", "recovered")]),
        1.0
    );
    assert_eq!(
        delta("switchboard_resumes_total", &[("result", "lost")]),
        1.0
    );
    assert_eq!(resumed.value("switchboard_connections", &ws), 7.0);

    // Closing clients brings the gauge down (closing is asynchronous).
    drop(resumer);
    drop(lost);
    clients.truncate(3);
    drop(streams);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = Metrics::scrape(&server).await;
        if now.value("switchboard_connections", &ws) == 3.0
            && now.value("switchboard_connections", &sse) == 0.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges did not settle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
