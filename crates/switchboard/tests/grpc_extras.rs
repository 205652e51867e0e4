//! gRPC beyond the unary calls (spec §5): health, reflection, the seed
//! `ChatService` interoperating with the other transports, and the whole
//! protocol over `Connect`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, WAIT, next_grpc};
use serde_json::json;
use switchboard_protocol::pb;
use switchboard_protocol::pb::seed::ChatMessage;
use switchboard_protocol::pb::seed::chat_service_client::ChatServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "switchboard.v1.Chat", "ChatService"] {
        let reply = tokio::time::timeout(
            WAIT,
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .expect("health answers in time")
        .unwrap_or_else(|status| panic!("health of {service:?}: {status:?}"))
        .into_inner();
        assert_eq!(
            reply.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let status = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection stream opens")
        .into_inner();
    let response = next_grpc(&mut responses).await;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "switchboard.v1.Chat",
        "ChatService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    // grpcurl also needs the descriptors behind the names.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "switchboard.v1.Chat".into(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection stream opens")
        .into_inner();
    let response = next_grpc(&mut responses).await;
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("expected descriptors, got {response:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Opens a seed `ChatService/Chat` stream in `room`.
async fn seed_chat(
    server: &TestServer,
    room: &str,
) -> (mpsc::Sender<ChatMessage>, tonic::Streaming<ChatMessage>) {
    let mut client = ChatServiceClient::new(server.channel().await);
    let (tx, rx) = mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("x-room", room.parse().expect("metadata"));
    let incoming = tokio::time::timeout(WAIT, client.chat(request))
        .await
        .expect("seed chat opens in time")
        .expect("seed chat opens")
        .into_inner();
    (tx, incoming)
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_chat_service_interoperates_with_websocket() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=wendy").await;
    ws.subscribe("seedroom", None).await;

    let (tx, mut incoming) = seed_chat(&server, "seedroom").await;

    // Seed → WebSocket, under the seed message's user name.
    tx.send(ChatMessage {
        user: "ann".into(),
        message: "from seed".into(),
    })
    .await
    .unwrap();
    let event = ws
        .recv_until(|f| f["type"] == "message" && f["text"] == "from seed")
        .await;
    assert_eq!(event["user"], "ann");
    assert_eq!(event["room"], "seedroom");
    // The seed client gets every room message, its own included.
    let echo = next_grpc(&mut incoming).await;
    assert_eq!(
        echo,
        ChatMessage {
            user: "ann".into(),
            message: "from seed".into()
        }
    );

    // WebSocket → seed.
    let ack = ws.publish("seedroom", "from ws", "w-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message = next_grpc(&mut incoming).await;
    assert_eq!(
        message,
        ChatMessage {
            user: "wendy".into(),
            message: "from ws".into()
        }
    );

    // HTTP → seed as well.
    let (status, body) = server
        .post("seedroom", json!({"text": "from http"}), &[])
        .await;
    assert_eq!(status, 201, "{body}");
    let message = next_grpc(&mut incoming).await;
    assert_eq!(message.user, "http");
    assert_eq!(message.message, "from http");
}

#[tokio::test]
async fn seed_chat_defaults_to_lobby() {
    let server = TestServer::start().await;
    let mut ws = server.ws("/ws?user=lou").await;
    ws.subscribe("lobby", None).await;
    let mut client = ChatServiceClient::new(server.channel().await);
    let (tx, rx) = mpsc::channel(4);
    let mut incoming = client
        .chat(ReceiverStream::new(rx))
        .await
        .expect("seed chat opens")
        .into_inner();
    tx.send(ChatMessage {
        user: "bea".into(),
        message: "in the lobby".into(),
    })
    .await
    .unwrap();
    let event = ws.recv_type("message").await;
    assert_eq!(event["text"], "in the lobby");
    assert_eq!(event["user"], "bea");
    assert_eq!(next_grpc(&mut incoming).await.message, "in the lobby");
}

#[tokio::test]
async fn seed_chat_invalid_room_is_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = ChatServiceClient::new(server.channel().await);
    let (_tx, rx) = mpsc::channel::<ChatMessage>(1);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("x-room", "a.b".parse().unwrap());
    let status = client
        .chat(request)
        .await
        .expect_err("invalid x-room refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

/// A `Connect` call speaking frames through a channel.
struct Connect {
    tx: mpsc::Sender<pb::ClientFrame>,
    rx: tonic::Streaming<pb::ServerFrame>,
}

impl Connect {
    async fn open(server: &TestServer, user: &str) -> Self {
        let mut client = server.grpc().await;
        let (tx, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("x-user", user.parse().expect("metadata"));
        let rx = client
            .connect(request)
            .await
            .expect("Connect opens")
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, frame: pb::client_frame::Frame) {
        self.tx
            .send(pb::ClientFrame { frame: Some(frame) })
            .await
            .expect("request stream open");
    }

    async fn next(&mut self) -> pb::server_frame::Frame {
        next_grpc(&mut self.rx).await.frame.expect("frame set")
    }

    /// Skips frames until `pick` accepts one.
    async fn until<T>(&mut self, pick: impl Fn(pb::server_frame::Frame) -> Option<T>) -> T {
        loop {
            if let Some(found) = pick(self.next().await) {
                return found;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_speaks_the_whole_protocol() {
    use pb::client_frame::Frame as C;
    use pb::server_frame::Frame as S;
    let server = TestServer::start().await;
    let mut conn = Connect::open(&server, "grace").await;

    // subscribe → subscribed, then its own join.
    conn.send(C::Subscribe(pb::SubscribeRequest {
        room: "grpcroom".into(),
        since: String::new(),
    }))
    .await;
    let subscribed = conn
        .until(|f| match f {
            S::Subscribed(s) => Some(s),
            S::Error(e) => panic!("subscribe failed: {e:?}"),
            _ => None,
        })
        .await;
    assert_eq!(subscribed.room, "grpcroom");
    assert!(subscribed.recovered);
    let head = subscribed.cursor.clone();
    assert!(head.contains(':'), "cursor is <epoch>:<offset>: {head}");
    let join = conn
        .until(|f| match f {
            S::Event(e) if e.r#type == pb::EventType::Join as i32 => Some(e),
            _ => None,
        })
        .await;
    assert_eq!(join.user, "grace");

    // publish → ack and the event, in either order.
    conn.send(C::Publish(pb::PublishRequest {
        room: "grpcroom".into(),
        text: "hello over grpc".into(),
        id: "g-1".into(),
    }))
    .await;
    let mut ack = None;
    let mut event = None;
    while ack.is_none() || event.is_none() {
        match conn.next().await {
            S::Ack(a) => ack = Some(a),
            S::Event(e) if e.r#type == pb::EventType::Message as i32 => event = Some(e),
            S::Error(e) => panic!("publish failed: {e:?}"),
            _ => {}
        }
    }
    let (ack, event) = (ack.unwrap(), event.unwrap());
    assert_eq!(ack.id, "g-1");
    assert_eq!(ack.room, "grpcroom");
    assert!(!ack.duplicate);
    assert_eq!(event.cursor, ack.cursor);
    assert_eq!(event.text, "hello over grpc");
    assert_eq!(event.user, "grace");
    assert_eq!(event.id, "g-1");
    assert!(event.ts_unix_ms > 0);

    // A WebSocket publish reaches the gRPC stream too.
    let mut ws = server.ws("/ws?user=henry").await;
    let ws_ack = ws.publish("grpcroom", "hello from ws", "w-1").await;
    assert_eq!(ws_ack["type"], "ack");
    let from_ws = conn
        .until(|f| match f {
            S::Event(e) if e.r#type == pb::EventType::Message as i32 => Some(e),
            _ => None,
        })
        .await;
    assert_eq!(from_ws.text, "hello from ws");
    assert_eq!(from_ws.user, "henry");
    assert_eq!(from_ws.prev_offset + 1, offset(&from_ws.cursor));

    // history → the events so far, oldest first.
    conn.send(C::History(pb::HistoryRequest {
        room: "grpcroom".into(),
        ..Default::default()
    }))
    .await;
    let history = conn
        .until(|f| match f {
            S::History(h) => Some(h),
            _ => None,
        })
        .await;
    assert_eq!(history.room, "grpcroom");
    let texts: Vec<&str> = history
        .events
        .iter()
        .filter(|e| e.r#type == pb::EventType::Message as i32)
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(texts, vec!["hello over grpc", "hello from ws"]);

    // presence → the subscribed user.
    conn.send(C::Presence(pb::PresenceRequest {
        room: "grpcroom".into(),
    }))
    .await;
    let presence = conn
        .until(|f| match f {
            S::Presence(p) => Some(p),
            _ => None,
        })
        .await;
    assert_eq!(presence.room, "grpcroom");
    assert_eq!(presence.users, vec!["grace".to_owned()]);

    // ping → pong.
    conn.send(C::Ping(pb::Ping {})).await;
    conn.until(|f| match f {
        S::Pong(_) => Some(()),
        _ => None,
    })
    .await;

    // unsubscribe → unsubscribed, and no more events of the room.
    conn.send(C::Unsubscribe(pb::UnsubscribeRequest {
        room: "grpcroom".into(),
    }))
    .await;
    let unsubscribed = conn
        .until(|f| match f {
            S::Unsubscribed(u) => Some(u),
            _ => None,
        })
        .await;
    assert_eq!(unsubscribed.room, "grpcroom");
    let ws_ack = ws.publish("grpcroom", "after unsubscribe", "w-2").await;
    assert_eq!(ws_ack["type"], "ack");
    conn.send(C::Ping(pb::Ping {})).await;
    match conn.next().await {
        S::Pong(_) => {}
        other => panic!("nothing of the room after unsubscribe, got {other:?}"),
    }

    // resume from the head: replays everything since.
    conn.send(C::Subscribe(pb::SubscribeRequest {
        room: "grpcroom".into(),
        since: head,
    }))
    .await;
    let resubscribed = conn
        .until(|f| match f {
            S::Subscribed(s) => Some(s),
            _ => None,
        })
        .await;
    assert!(resubscribed.recovered, "{resubscribed:?}");
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        if let S::Event(e) = conn.next().await
            && e.r#type == pb::EventType::Message as i32
        {
            replayed.push(e.text.clone());
        }
    }
    assert_eq!(
        replayed,
        vec!["hello over grpc", "hello from ws", "after unsubscribe"]
    );
}

fn offset(cursor: &str) -> u64 {
    cursor
        .rsplit_once(':')
        .and_then(|(_, o)| o.parse().ok())
        .expect("cursor offset")
}

#[tokio::test]
async fn subscribe_stream_carries_cursor_headers() {
    let server = TestServer::start().await;
    let mut client = server.grpc().await;
    let first = client
        .publish(pb::PublishRequest {
            room: "subroom".into(),
            text: "before".into(),
            id: String::new(),
        })
        .await
        .expect("publish")
        .into_inner();
    let response = client
        .subscribe(pb::SubscribeRequest {
            room: "subroom".into(),
            since: String::new(),
        })
        .await
        .expect("subscribe");
    let cursor = response
        .metadata()
        .get("x-cursor")
        .and_then(|v| v.to_str().ok())
        .expect("x-cursor header")
        .to_owned();
    assert_eq!(cursor, first.cursor, "head is the last stored event");
    assert_eq!(
        response
            .metadata()
            .get("x-recovered")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let mut events = response.into_inner();
    let ack = client
        .publish(pb::PublishRequest {
            room: "subroom".into(),
            text: "live".into(),
            id: String::new(),
        })
        .await
        .expect("publish")
        .into_inner();
    // The subscriber's own join comes first; then the live message.
    let event = loop {
        let event = next_grpc(&mut events).await;
        if event.r#type == pb::EventType::Message as i32 {
            break event;
        }
        assert_eq!(event.r#type, pb::EventType::Join as i32, "{event:?}");
    };
    assert_eq!(event.text, "live");
    assert_eq!(event.cursor, ack.cursor);
}

#[tokio::test]
async fn seed_chat_errors_become_system_notices() {
    let server = TestServer::start().await;
    let (tx, mut incoming) = seed_chat(&server, "notices").await;
    tx.send(ChatMessage {
        user: "zed".into(),
        message: "x".repeat(4097),
    })
    .await
    .unwrap();
    let notice = next_grpc(&mut incoming).await;
    assert_eq!(notice.user, "switchboard", "{notice:?}");
    assert!(notice.message.contains("too_large"), "{notice:?}");
    // The stream goes on.
    tx.send(ChatMessage {
        user: "zed".into(),
        message: "small".into(),
    })
    .await
    .unwrap();
    let echo = next_grpc(&mut incoming).await;
    assert_eq!(
        echo,
        ChatMessage {
            user: "zed".into(),
            message: "small".into()
        }
    );
}
