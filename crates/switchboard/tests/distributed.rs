//! The distributed layout as separate processes: real `nats-server` with
//! JetStream, `switchboard core`, `ws-gateway` and `sse-gateway` replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::procs::{Nats, Service, TempDir};
use common::{Sse, WAIT, Ws, next_grpc};
use serde_json::json;
use std::collections::HashSet;
use switchboard_protocol::pb;

fn offset(cursor: &str) -> u64 {
    cursor
        .rsplit(':')
        .next()
        .expect("offset")
        .parse()
        .expect("number")
}

/// Several hundred concurrent publishes through two WebSocket gateways, the
/// HTTP API of the SSE gateway and the gRPC API of a core, shared by two
/// core replicas: every subscriber on every replica sees all of them once,
/// in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_deliver_one_order_everywhere() {
    const PER_SOURCE: usize = 60;
    let dir = TempDir::new("order");
    let nats = Nats::start(&dir.0);
    let cores = [
        Service::start("core", &nats.url(), &[]),
        Service::start("core", &nats.url(), &[]),
    ];
    let gateways = [
        Service::start("ws-gateway", &nats.url(), &[]),
        Service::start("ws-gateway", &nats.url(), &[]),
    ];
    let sse_gateway = Service::start("sse-gateway", &nats.url(), &[]);
    for service in cores.iter().chain(&gateways).chain([&sse_gateway]) {
        service.wait_ready(true).await;
    }

    let mut ws_subs = Vec::new();
    for (i, gateway) in gateways.iter().enumerate() {
        let mut ws = Ws::connect(&gateway.ws_url(&format!("/ws?user=sub{i}"))).await;
        ws.subscribe("dist", None).await;
        ws_subs.push(ws);
    }
    let mut sse = Sse::connect(&sse_gateway.url("/sse/rooms/dist?user=ssesub"), &[])
        .await
        .expect("SSE opens");
    sse.next_named("subscribed").await;
    let mut grpc_streams = Vec::new();
    for core in &cores {
        let stream = common::procs::grpc(core)
            .await
            .subscribe(pb::SubscribeRequest {
                room: "dist".into(),
                since: String::new(),
            })
            .await
            .expect("subscribe")
            .into_inner();
        grpc_streams.push(stream);
    }

    let mut publishers = tokio::task::JoinSet::new();
    for (g, gateway) in gateways.iter().enumerate() {
        let mut ws = Ws::connect(&gateway.ws_url(&format!("/ws?user=pub{g}"))).await;
        publishers.spawn(async move {
            for i in 0..PER_SOURCE {
                ws.send(
                    json!({"type":"publish","room":"dist","text":"x","id":format!("ws{g}-{i}")}),
                )
                .await;
            }
            let mut acks = 0;
            while acks < PER_SOURCE {
                let frame = ws.recv().await;
                assert_ne!(frame["type"], "error", "{frame}");
                acks += usize::from(frame["type"] == "ack");
            }
        });
    }
    let url = sse_gateway.url("/api/rooms/dist/messages?user=httppub");
    publishers.spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..PER_SOURCE {
            let response = client
                .post(&url)
                .json(&json!({"text": "y", "id": format!("http-{i}")}))
                .send()
                .await
                .expect("POST");
            assert_eq!(response.status(), 201);
        }
    });
    let mut grpc_pub = common::procs::grpc(&cores[1]).await;
    publishers.spawn(async move {
        for i in 0..PER_SOURCE {
            grpc_pub
                .publish(pb::PublishRequest {
                    room: "dist".into(),
                    text: "z".into(),
                    id: format!("grpc-{i}"),
                })
                .await
                .expect("gRPC publish");
        }
    });
    tokio::time::timeout(WAIT * 6, async {
        while let Some(joined) = publishers.join_next().await {
            joined.expect("publisher");
        }
    })
    .await
    .expect("publishers finish in time");

    let total = PER_SOURCE * 4;
    let mut orders: Vec<Vec<String>> = Vec::new();
    for ws in &mut ws_subs {
        let mut seen = Vec::new();
        while seen.len() < total {
            let frame = ws.recv().await;
            if frame["type"] == "message" {
                seen.push(frame["cursor"].as_str().expect("cursor").to_owned());
            }
        }
        orders.push(seen);
    }
    let mut seen = Vec::new();
    while seen.len() < total {
        let event = sse.next().await.expect("SSE open");
        if event.event == "message" {
            seen.push(event.id.expect("id"));
        }
    }
    orders.push(seen);
    for stream in &mut grpc_streams {
        let mut seen = Vec::new();
        while seen.len() < total {
            let event = next_grpc(stream).await;
            if event.r#type == pb::EventType::Message as i32 {
                seen.push(event.cursor.clone());
            }
        }
        orders.push(seen);
    }
    let reference = orders[0].clone();
    assert_eq!(
        reference.iter().collect::<HashSet<_>>().len(),
        total,
        "each once"
    );
    assert!(
        reference.windows(2).all(|w| offset(&w[0]) < offset(&w[1])),
        "offsets rise"
    );
    for (i, order) in orders.iter().enumerate() {
        assert_eq!(order, &reference, "subscriber {i} saw another order");
    }
}

/// A client of a ws-gateway that is killed mid-stream reconnects to the
/// other replica with `since` and ends with every acknowledged message
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_client_resumes_on_the_other_replica() {
    let dir = TempDir::new("gwkill");
    let nats = Nats::start(&dir.0);
    let core = Service::start("core", &nats.url(), &[]);
    let mut doomed = Service::start("ws-gateway", &nats.url(), &[]);
    let survivor = Service::start("ws-gateway", &nats.url(), &[]);
    for service in [&core, &doomed, &survivor] {
        service.wait_ready(true).await;
    }
    let mut reader = Ws::connect(&doomed.ws_url("/ws?user=reader")).await;
    reader.subscribe("crash", None).await;
    let mut publisher = Ws::connect(&survivor.ws_url("/ws?user=writer")).await;

    let mut acked = Vec::new();
    let mut received = Vec::new();
    let mut last_cursor = None;
    for i in 0..40 {
        let ack = publisher
            .publish("crash", &format!("m{i}"), &format!("c-{i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        acked.push(ack["cursor"].as_str().expect("cursor").to_owned());
        if i < 20 {
            let frame = reader.recv_type("message").await;
            last_cursor = Some(frame["cursor"].as_str().expect("cursor").to_owned());
            received.push(last_cursor.clone().expect("cursor"));
        }
        if i == 20 {
            doomed.kill();
        }
    }
    // The old connection is gone.
    assert!(matches!(
        reader.ended().await,
        common::Ended::Eof | common::Ended::Close(_)
    ));
    let mut resumed = Ws::connect(&survivor.ws_url("/ws?user=reader")).await;
    let subscribed = resumed.subscribe("crash", last_cursor.as_deref()).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    while received.len() < acked.len() {
        let frame = resumed.recv_type("message").await;
        received.push(frame["cursor"].as_str().expect("cursor").to_owned());
    }
    assert_eq!(
        received, acked,
        "every acked message exactly once, in order"
    );
}

/// `standalone --nats-url` runs every role in one process on NATS, and
/// two installations with different prefixes share one NATS server
/// without seeing each other's rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_on_nats_and_prefix_isolation() {
    let dir = TempDir::new("prefix");
    let nats = Nats::start(&dir.0);
    let blue = Service::start("standalone", &nats.url(), &["--nats-prefix", "blue"]);
    let green = Service::start("standalone", &nats.url(), &["--nats-prefix", "green"]);
    blue.wait_ready(true).await;
    green.wait_ready(true).await;

    let mut blue_reader = Sse::connect(&blue.url("/sse/rooms/shared?user=b"), &[])
        .await
        .expect("SSE opens");
    blue_reader.next_named("subscribed").await;
    let mut green_reader = Ws::connect(&green.ws_url("/ws?user=g")).await;
    green_reader.subscribe("shared", None).await;

    let mut blue_writer = Ws::connect(&blue.ws_url("/ws?user=bw")).await;
    let ack = blue_writer.publish("shared", "for blue", "b-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = blue_reader.next_named("message").await;
    assert_eq!(event.data["text"], "for blue");
    assert_eq!(event.id.as_deref(), ack["cursor"].as_str());

    // Green's room of the same name is another room: its next message is
    // its own, and its history never held blue's.
    let mut green_writer = Ws::connect(&green.ws_url("/ws?user=gw")).await;
    green_writer.publish("shared", "for green", "g-1").await;
    let frame = green_reader.recv_type("message").await;
    assert_eq!(frame["text"], "for green");
    green_reader
        .send(json!({"type":"history","room":"shared","limit":100}))
        .await;
    let history = green_reader.recv_type("history").await;
    let texts: Vec<_> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].clone())
        .collect();
    assert_eq!(texts, [json!("for green")]);
}

/// A standalone on NATS answers its own gateway's publishes, resumes and
/// history reads in process: none of them crosses NATS as a request (a
/// raw NATS client listening on the request subjects sees none), the
/// acknowledged message is stored in JetStream (a separate gateway process
/// reads it back through a request the standalone's core answers), and
/// live delivery still comes from the republished subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_on_nats_answers_its_own_requests_in_process() {
    use futures::StreamExt;
    let dir = TempDir::new("local-core");
    let nats = Nats::start(&dir.0);
    let solo = Service::start("standalone", &nats.url(), &["--nats-prefix", "solo"]);
    solo.wait_ready(true).await;
    let watcher = async_nats::connect(nats.url()).await.expect("NATS");
    let mut requests = watcher.subscribe("solo.req.>").await.expect("subscribe");
    watcher.flush().await.expect("flush");

    let mut reader = Ws::connect(&solo.ws_url("/ws?user=r")).await;
    reader.subscribe("local", None).await;
    let mut writer = Ws::connect(&solo.ws_url("/ws?user=w")).await;
    let ack = writer.publish("local", "kept", "l-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let again = writer.publish("local", "kept", "l-1").await;
    assert_eq!(
        again["duplicate"], true,
        "dedup holds on the local path: {again}"
    );
    assert_eq!(again["cursor"], ack["cursor"]);
    let frame = reader.recv_type("message").await;
    assert_eq!(frame["cursor"], ack["cursor"]);
    writer
        .send(json!({"type":"history","room":"local","limit":10}))
        .await;
    let history = writer.recv_type("history").await;
    let messages = |h: &serde_json::Value| -> Vec<serde_json::Value> {
        h["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == "message")
            .cloned()
            .collect()
    };
    assert_eq!(messages(&history).len(), 1, "{history}");

    // A gateway without a core asks over NATS; the standalone answers.
    let gateway = Service::start("ws-gateway", &nats.url(), &["--nats-prefix", "solo"]);
    gateway.wait_ready(true).await;
    let mut remote = Ws::connect(&gateway.ws_url("/ws?user=x")).await;
    remote
        .send(json!({"type":"history","room":"local","limit":10}))
        .await;
    let stored = messages(&remote.recv_type("history").await);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["text"], "kept");
    assert_eq!(stored[0]["cursor"], ack["cursor"]);

    // Everything the standalone's own gateway asked is accounted for: the
    // only data requests seen on NATS are the remote gateway's history.
    drop(remote);
    watcher.flush().await.expect("flush");
    let mut seen = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), requests.next()).await
    {
        seen.push(message.subject.to_string());
    }
    let data: Vec<_> = seen
        .iter()
        .filter(|s| {
            [".publish.", ".resume.", ".history."]
                .iter()
                .any(|op| s.contains(op))
        })
        .collect();
    assert_eq!(data, ["solo.req.history.local"], "all requests: {seen:?}");
    drop(gateway);
}
