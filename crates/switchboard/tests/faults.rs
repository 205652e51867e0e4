//! Faults in the distributed layout: a core replica killed mid-stream,
//! NATS restarted, a gateway crashing with users present, a JetStream
//! cluster node lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::procs::{Nats, NatsCluster, Service, TempDir};
use common::{WAIT, Ws};
use serde_json::{Value, json};
use std::time::Duration;

/// Waits until the core's gRPC health (what Kubernetes probes) says
/// SERVING (`true`) or NOT_SERVING.
async fn wait_grpc_health(core: &Service, serving: bool) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let addr = core.grpc.expect("core serves gRPC");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("gRPC connects");
    let mut client = HealthClient::new(channel);
    let want = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.is_ok_and(|s| s == want as i32) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(service: &Service, room: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(service.url(&format!("/api/rooms/{room}/messages?user=poster")))
        .json(&body)
        .timeout(WAIT)
        .send()
        .await
        .expect("POST answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn history(service: &Service, room: &str) -> Vec<Value> {
    let body: Value = reqwest::get(service.url(&format!("/api/rooms/{room}/messages?limit=1000")))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    body["events"].as_array().expect("events").clone()
}

/// Publishes `text` with id `id`, retrying once on `unavailable`.
async fn publish_with_one_retry(ws: &mut Ws, room: &str, text: &str, id: &str) -> Value {
    let first = ws.publish(room, text, id).await;
    if first["type"] == "error" && first["code"] == "unavailable" {
        return ws.publish(room, text, id).await;
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_core_replica_loses_no_acknowledged_message() {
    let dir = TempDir::new("corekill");
    let nats = Nats::start(&dir.0);
    let mut doomed = Service::start("core", &nats.url(), &[]);
    let survivor = Service::start("core", &nats.url(), &[]);
    let gateway = Service::start("ws-gateway", &nats.url(), &[]);
    for service in [&doomed, &survivor, &gateway] {
        service.wait_ready(true).await;
    }
    let mut reader = Ws::connect(&gateway.ws_url("/ws?user=reader")).await;
    reader.subscribe("corekill", None).await;
    let mut writer = Ws::connect(&gateway.ws_url("/ws?user=writer")).await;
    let mut acked = Vec::new();
    for i in 0..60 {
        if i == 20 {
            doomed.kill();
        }
        let ack = publish_with_one_retry(&mut writer, "corekill", "m", &format!("k-{i}")).await;
        assert_eq!(ack["type"], "ack", "publish {i}: {ack}");
        acked.push(ack["cursor"].as_str().expect("cursor").to_owned());
    }
    let mut delivered = Vec::new();
    while delivered.len() < acked.len() {
        let frame = reader.recv_type("message").await;
        delivered.push(frame["cursor"].as_str().expect("cursor").to_owned());
    }
    assert_eq!(
        delivered, acked,
        "every acked message delivered once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_keeps_acked_messages_and_services_recover() {
    let dir = TempDir::new("natsrestart");
    let mut nats = Nats::start(&dir.0);
    let core = Service::start("core", &nats.url(), &[]);
    let gateway = Service::start("ws-gateway", &nats.url(), &[]);
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let (status, body) =
            post(&gateway, "durable", json!({"text": format!("before-{i}")})).await;
        assert_eq!(status, 201, "{body}");
        acked.push(body["cursor"].clone());
    }

    wait_grpc_health(&core, true).await;
    nats.kill();
    gateway.wait_ready(false).await;
    core.wait_ready(false).await;
    wait_grpc_health(&core, false).await;
    // While NATS is away, publishes fail fast with `unavailable`.
    let started = std::time::Instant::now();
    let (status, body) = post(&gateway, "durable", json!({"text": "during"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");

    nats.restart();
    gateway.wait_ready(true).await;
    core.wait_ready(true).await;
    wait_grpc_health(&core, true).await;
    let (status, body) = post(&gateway, "durable", json!({"text": "after"})).await;
    assert_eq!(status, 201, "{body}");
    acked.push(body["cursor"].clone());
    let stored: Vec<Value> = history(&gateway, "durable")
        .await
        .into_iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["cursor"].clone())
        .collect();
    assert_eq!(stored, acked, "acked messages survived the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_across_core_replicas() {
    let dir = TempDir::new("idem");
    let nats = Nats::start(&dir.0);
    let cores = [
        Service::start("core", &nats.url(), &[]),
        Service::start("core", &nats.url(), &[]),
    ];
    let gateways = [
        Service::start("ws-gateway", &nats.url(), &[]),
        Service::start("sse-gateway", &nats.url(), &[]),
    ];
    for service in cores.iter().chain(&gateways) {
        service.wait_ready(true).await;
    }
    // The queue group spreads requests over both cores; 20 retries of one
    // id through two gateways must all name the same cursor.
    let mut cursors = Vec::new();
    for i in 0..20 {
        let (status, body) = post(
            &gateways[i % 2],
            "idem",
            json!({"text": "once", "id": "same-id"}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["duplicate"], i > 0, "{body}");
        cursors.push(body["cursor"].clone());
    }
    assert!(cursors.windows(2).all(|w| w[0] == w[1]), "{cursors:?}");
    let mut grpc = common::procs::grpc(&cores[0]).await;
    let reply = grpc
        .publish(switchboard_protocol::pb::PublishRequest {
            room: "idem".into(),
            text: "once".into(),
            id: "same-id".into(),
        })
        .await
        .expect("gRPC publish")
        .into_inner();
    assert!(reply.duplicate);
    assert_eq!(json!(reply.cursor), cursors[0]);
    let messages = history(&gateways[0], "idem").await;
    assert_eq!(
        messages.iter().filter(|e| e["type"] == "message").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_crashed_gateway_leave_within_the_ttl() {
    let dir = TempDir::new("presence");
    let nats = Nats::start(&dir.0);
    let ttl = ["--presence-ttl", "1500ms"];
    let core = Service::start("core", &nats.url(), &ttl);
    let mut doomed = Service::start("ws-gateway", &nats.url(), &ttl);
    let survivor = Service::start("ws-gateway", &nats.url(), &ttl);
    for service in [&core, &doomed, &survivor] {
        service.wait_ready(true).await;
    }
    let mut watcher = Ws::connect(&survivor.ws_url("/ws?user=watcher")).await;
    watcher.subscribe("pres", None).await;
    let mut ghost = Ws::connect(&doomed.ws_url("/ws?user=ghost")).await;
    ghost.subscribe("pres", None).await;
    let join = watcher
        .recv_until(|f| f["type"] == "join" && f["user"] == "ghost")
        .await;
    assert_eq!(join["room"], "pres");
    // Presence holds through several TTLs while the gateway refreshes it.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (_, users) = get_json(&survivor, "/api/rooms/pres/presence").await;
    assert_eq!(
        users["users"],
        json!(["ghost", "watcher"]),
        "refreshed, not expired"
    );

    doomed.kill();
    let killed = std::time::Instant::now();
    let leave = watcher.recv_until(|f| f["type"] == "leave").await;
    // Within the TTL (1.5 s), with slack for a loaded test machine.
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(leave["user"], "ghost");
    let (_, users) = get_json(&survivor, "/api/rooms/pres/presence").await;
    assert_eq!(users["users"], json!(["watcher"]));
}

async fn get_json(service: &Service, path: &str) -> (u16, Value) {
    let response = reqwest::get(service.url(path)).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_cluster_survives_the_loss_of_a_node() {
    let dir = TempDir::new("cluster");
    let mut cluster = NatsCluster::start(&dir.0);
    let urls = cluster.urls();
    let replicas = ["--jetstream-replicas", "3"];
    let core = Service::start("core", &urls, &replicas);
    let gateway = Service::start("ws-gateway", &urls, &[]);
    // The cluster elects a meta leader first; readiness waits for it.
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let mut writer = Ws::connect(&gateway.ws_url("/ws?user=writer")).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        let ack = publish_with_one_retry(&mut writer, "r3", "m", &format!("a-{i}")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        acked.push(ack["cursor"].as_str().expect("cursor").to_owned());
    }
    cluster.nodes[0].kill();
    // Publishing continues (a retry may be needed while leaders move).
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut i = 10;
    while i < 20 {
        let ack = writer.publish("r3", "m", &format!("a-{i}")).await;
        if ack["type"] == "ack" {
            acked.push(ack["cursor"].as_str().expect("cursor").to_owned());
            i += 1;
        } else {
            assert_eq!(ack["code"], "unavailable", "{ack}");
            assert!(tokio::time::Instant::now() < deadline, "no recovery: {ack}");
            // Leaders move and the client fails over: retry like a client
            // would, without burning the publish rate limit.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // And resume still replays from JetStream.
    let mut reader = Ws::connect(&gateway.ws_url("/ws?user=reader")).await;
    let subscribed = reader.subscribe("r3", Some(&acked[4])).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let mut replay = Vec::new();
    while replay.len() < 15 {
        let frame = reader.recv_type("message").await;
        replay.push(frame["cursor"].as_str().expect("cursor").to_owned());
    }
    assert_eq!(replay, acked[5..].to_vec());
}

/// A NATS reconnect used to close the subscribers of a quiet room with
/// 1013: the hub repaired at once, found the core not back yet (or had no
/// position at all), and gave up. It now repairs from the head its watch
/// started at, retrying while the core comes back, and the subscriber
/// simply keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_reconnect_keeps_subscribers_of_quiet_rooms() {
    let dir = TempDir::new("quiet");
    let mut nats = Nats::start(&dir.0);
    let core = Service::start("core", &nats.url(), &[]);
    let gateway = Service::start("ws-gateway", &nats.url(), &[]);
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    let mut subscribers = Vec::new();
    for i in 0..5 {
        let mut ws = Ws::connect(&gateway.ws_url(&format!("/ws?user=quiet{i}"))).await;
        ws.subscribe(&format!("quiet{i}"), None).await;
        subscribers.push(ws);
    }
    nats.restart();
    gateway.wait_ready(true).await;
    core.wait_ready(true).await;
    for (i, ws) in subscribers.iter_mut().enumerate() {
        let room = format!("quiet{i}");
        let (status, body) = post(&gateway, &room, json!({"text": "after the blip"})).await;
        assert_eq!(status, 201, "{body}");
        // `recv` panics on a close frame: the subscriber must stay.
        let message = ws.recv_type("message").await;
        assert_eq!(message["text"], "after the blip");
    }
}
