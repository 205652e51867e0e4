//! Sessions end with their clients, however the client goes (issue 12):
//! cancelled gRPC streams, and subscribes aborted midway on SSE and
//! WebSocket. Each test runs real `switchboard` processes and reads their
//! gauges, presence and (in NATS mode) the server's subscription count.

mod common;

use common::WAIT;
use common::procs::{Nats, NatsOptions, Service, TempDir};
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;
use switchboard_protocol::pb;
use switchboard_protocol::pb::seed::ChatMessage;
use switchboard_protocol::pb::seed::chat_service_client::ChatServiceClient;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const GRPC_GAUGE: &str = "switchboard_connections{transport=\"grpc\"}";

/// Polls `check` until it holds, within a bounded wait.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if tokio::time::Instant::now() < deadline => {
                let _ = why;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(why) => panic!("{what}: {why}"),
        }
    }
}

async fn presence(service: &Service, room: &str) -> Vec<Value> {
    let response = tokio::time::timeout(
        WAIT,
        reqwest::get(service.url(&format!("/api/rooms/{room}/presence"))),
    )
    .await
    .expect("presence in time")
    .expect("presence sent");
    let body: Value = response.json().await.expect("JSON");
    body["users"].as_array().cloned().expect("users")
}

async fn channel(service: &Service) -> Channel {
    let addr = service.grpc.expect("gRPC");
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("gRPC connects")
}

fn with_user<T>(message: T, user: &str, room: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-user", user.parse().expect("metadata"));
    request
        .metadata_mut()
        .insert("x-room", room.parse().expect("metadata"));
    request
}

/// Users present over the rooms `<prefix>-0` … `<prefix>-<count-1>`.
///
/// Each stream has a room of its own: with all of them in one room, every
/// join is delivered to every stream, and that many tiny DATA frames on one
/// HTTP/2 connection make the client's h2 end it (ENHANCE_YOUR_CALM).
async fn present(service: &Service, prefix: &str, count: usize) -> usize {
    let mut users = 0;
    for i in 0..count {
        users += presence(service, &format!("{prefix}-{i}")).await.len();
    }
    users
}

/// Every stream is open (gauge and presence say so).
async fn expect_all_present(service: &Service, prefix: &str, count: usize) {
    eventually("every stream joined", || async {
        let users = present(service, prefix, count).await;
        let gauge = service.metric(GRPC_GAUGE).await;
        if users == count && gauge >= count as f64 {
            Ok(())
        } else {
            Err(format!("{users} present, gauge {gauge}"))
        }
    })
    .await;
}

/// Within a bounded wait, presence and the gauge are back to zero.
async fn expect_gone(service: &Service, prefix: &str, count: usize) {
    eventually("cancelled streams left", || async {
        let users = present(service, prefix, count).await;
        let gauge = service.metric(GRPC_GAUGE).await;
        if users == 0 && gauge == 0.0 {
            Ok(())
        } else {
            Err(format!("{users} ghosts in presence, gauge {gauge}"))
        }
    })
    .await;
}

/// 300 cancelled streams of each kind used to leave 300 ghosts in presence
/// and in `switchboard_connections{transport="grpc"}`, forever: the
/// stream's writer never noticed the client was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_grpc_streams_end_their_sessions() {
    const STREAMS: usize = 300;
    let server = Service::standalone(&[]);
    server.wait_ready(true).await;
    // Two HTTP/2 connections: one connection holds at most 256 streams.
    let channels = [channel(&server).await, channel(&server).await];

    // Subscribe, cancelled by dropping the response stream.
    let mut held = Vec::new();
    for i in 0..STREAMS {
        let mut client = pb::chat_client::ChatClient::new(channels[i % 2].clone());
        let request = with_user(
            pb::SubscribeRequest {
                room: format!("ghosts-sub-{i}"),
                since: String::new(),
            },
            &format!("sub-{i}"),
            "unused",
        );
        let stream = client.subscribe(request).await.expect("subscribed");
        held.push(stream.into_inner());
    }
    expect_all_present(&server, "ghosts-sub", STREAMS).await;
    drop(held);
    expect_gone(&server, "ghosts-sub", STREAMS).await;

    // Connect: half of them half-close first, then every one is dropped.
    let mut held = Vec::new();
    for i in 0..STREAMS {
        let mut client = pb::chat_client::ChatClient::new(channels[i % 2].clone());
        let (tx, rx) = mpsc::channel(4);
        let request = with_user(ReceiverStream::new(rx), &format!("conn-{i}"), "unused");
        let mut stream = client.connect(request).await.expect("Connect").into_inner();
        tx.send(pb::ClientFrame {
            frame: Some(pb::client_frame::Frame::Subscribe(pb::SubscribeRequest {
                room: format!("ghosts-conn-{i}"),
                since: String::new(),
            })),
        })
        .await
        .expect("frame sent");
        let first = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("subscribed in time")
            .expect("healthy")
            .expect("open");
        assert!(matches!(
            first.frame,
            Some(pb::server_frame::Frame::Subscribed(_))
        ));
        if i % 2 == 0 {
            drop(tx); // half-close, keep reading
            held.push((None, stream));
        } else {
            held.push((Some(tx), stream));
        }
    }
    expect_all_present(&server, "ghosts-conn", STREAMS).await;
    drop(held);
    expect_gone(&server, "ghosts-conn", STREAMS).await;

    // The seed ChatService, likewise.
    let mut held = Vec::new();
    for i in 0..STREAMS {
        let mut client = ChatServiceClient::new(channels[i % 2].clone());
        let (tx, rx) = mpsc::channel::<ChatMessage>(4);
        let room = format!("ghosts-seed-{i}");
        let request = with_user(ReceiverStream::new(rx), &format!("seed-{i}"), &room);
        let stream = client.chat(request).await.expect("Chat").into_inner();
        if i % 2 == 0 {
            drop(tx);
            held.push((None, stream));
        } else {
            held.push((Some(tx), stream));
        }
    }
    expect_all_present(&server, "ghosts-seed", STREAMS).await;
    drop(held);
    expect_gone(&server, "ghosts-seed", STREAMS).await;
}

/// A subscribe cancelled midway (the client closed right after sending)
/// used to leak its hub watch and, in NATS mode, its NATS subscription and
/// room task, while `connections{sse}` read 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_subscribes_leave_no_watch_behind() {
    let dir = TempDir::new("aborted");
    let nats = Nats::start_with(
        &dir.0,
        NatsOptions {
            monitor: true,
            ..NatsOptions::default()
        },
    );
    let server = Service::start("standalone", &nats.url(), &[]);
    server.wait_ready(true).await;
    let baseline = nats.subscriptions().await;
    let addr = server.http;

    // 300 SSE requests closed right after sending, each to its own room.
    let requests: Vec<_> = (0..300)
        .map(|i| {
            tokio::spawn(async move {
                let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let request =
                    format!("GET /sse/rooms/aborted-{i}?user=u{i} HTTP/1.1\r\nHost: test\r\n\r\n");
                socket.write_all(request.as_bytes()).await.expect("sent");
                // Closed at once: the handler is cancelled wherever it is.
                drop(socket);
            })
        })
        .collect();
    for request in requests {
        request.await.expect("request task");
    }

    // WebSocket subscribes whose connection drops right after the frame.
    for i in 0..100 {
        let mut ws = common::Ws::connect(&server.ws_url(&format!("/ws?user=w{i}"))).await;
        ws.send(json!({"type":"subscribe","room":format!("ws-aborted-{i}")}))
            .await;
        // No close handshake: the TCP connection just goes.
        drop(ws);
    }

    eventually("aborted subscribes were undone", || async {
        let watched = server.metric("switchboard_watched_rooms").await;
        let subscriptions = nats.subscriptions().await;
        let sse = server
            .metric("switchboard_connections{transport=\"sse\"}")
            .await;
        if watched == 0.0 && subscriptions == baseline && sse == 0.0 {
            Ok(())
        } else {
            Err(format!(
                "{watched} rooms watched, {subscriptions} NATS subscriptions (baseline {baseline}), {sse} SSE sessions"
            ))
        }
    })
    .await;
    // And the process still serves.
    let mut ws = common::Ws::connect(&server.ws_url("/ws?user=after")).await;
    ws.subscribe("after", None).await;
}

/// A gRPC connection with no call for `--grpc-idle-timeout` is closed; one
/// with an open stream is kept however quiet the stream is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_grpc_connections_are_closed_and_busy_ones_kept() {
    use tokio::io::AsyncReadExt;
    let server = Service::standalone(&["--grpc-idle-timeout", "1s"]);
    server.wait_ready(true).await;

    // A raw HTTP/2 connection that says hello and nothing else.
    let mut idle = tokio::net::TcpStream::connect(server.grpc.expect("gRPC"))
        .await
        .expect("connect");
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let opened = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(WAIT, idle.read(&mut buf))
            .await
            .expect("the idle connection is closed in time");
        if matches!(read, Ok(0) | Err(_)) {
            break;
        }
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed for idleness, not at once ({:?})",
        opened.elapsed()
    );

    // A quiet Subscribe stream keeps its connection past the timeout.
    let mut client = pb::chat_client::ChatClient::new(channel(&server).await);
    let request = with_user(
        pb::SubscribeRequest {
            room: "busy".into(),
            since: String::new(),
        },
        "patient",
        "unused",
    );
    let mut stream = client
        .subscribe(request)
        .await
        .expect("subscribed")
        .into_inner();
    // Longer than the idle timeout, on purpose.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = reqwest::Client::new()
        .post(server.url("/api/rooms/busy/messages?user=poster"))
        .json(&json!({"text": "still there?"}))
        .send()
        .await
        .expect("posted");
    assert_eq!(response.status(), 201);
    loop {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("event in time")
            .expect("stream healthy")
            .expect("stream open");
        if event.r#type == pb::EventType::Message as i32 {
            assert_eq!(event.text, "still there?");
            break;
        }
    }
}
