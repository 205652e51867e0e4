use crate::chat::identify;
use crate::pump;
use futures::StreamExt;
use std::sync::Arc;
use switchboard_gateway::{CloseReason, Deliver, Delivery, Gateway, Session, Transport};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::pb::seed::{ChatMessage, chat_service_server::ChatService};
use switchboard_protocol::{EventKind, RoomName};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

/// Room of a seed chat stream when `x-room` is absent.
pub const DEFAULT_SEED_ROOM: &str = "lobby";
/// Author of the notices the seed protocol has no frame for (errors).
pub const SYSTEM_USER: &str = "switchboard";

/// The package-less, seed-compatible `ChatService.Chat`: every message of
/// the room (from any transport) goes out as `ChatMessage{user, message}`,
/// and each incoming one is published to the room.
pub struct SeedChat {
    gateway: Arc<Gateway>,
}

impl SeedChat {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl ChatService for SeedChat {
    type ChatStream = ReceiverStream<Result<ChatMessage, Status>>;

    async fn chat(
        &self,
        request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let identity = identify(&self.gateway, request.metadata()).await?;
        let room = request
            .metadata()
            .get("x-room")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(DEFAULT_SEED_ROOM);
        let room = RoomName::parse(room)
            .map_err(|err| Status::invalid_argument(format!("x-room: {err}")))?;
        let peer = crate::conn::client_ip(&self.gateway, &request);
        let call = crate::conn::call_guard(&request);
        let inbound = request.into_inner();
        let slot = self
            .gateway
            .claim_connection(peer, Transport::Grpc)
            .map_err(|err| crate::to_status(&err))?;
        let (mut session, queue) = self.gateway.open_session(identity, Transport::Grpc, slot);
        session
            .subscribe(room.as_str(), None)
            .await
            .map_err(|err| crate::to_status(&err))?;
        let (out, rx) = mpsc::channel(64);
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let _call = call;
            let control = session.control().clone();
            let delivery = Delivery::new(gateway.limits().outbound_queue, Transport::Grpc);
            let writer = pump::pump(queue, delivery, &control, &gateway, &out, to_chat_message);
            tokio::select! {
                () = writer => {}
                () = read_messages(inbound, &mut session, &room) => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn to_chat_message(write: Deliver) -> Option<ChatMessage> {
    match write {
        Deliver::Event(event) => match &event.event().kind {
            EventKind::Message { text, .. } => Some(ChatMessage {
                user: event.event().user.clone(),
                message: text.clone(),
            }),
            EventKind::Join | EventKind::Leave => None,
        },
        // The seed protocol has no error frame: errors become notices from
        // the system user, sent to this client only.
        Deliver::Frame(frame) => match *frame {
            ServerFrame::Error { code, message, .. } => Some(ChatMessage {
                user: SYSTEM_USER.into(),
                message: format!("error {code}: {message}"),
            }),
            _ => None,
        },
    }
}

async fn read_messages(
    mut inbound: Streaming<ChatMessage>,
    session: &mut Session,
    room: &RoomName,
) {
    while let Some(message) = inbound.next().await {
        match message {
            Ok(message) => {
                if let Err(err) = session
                    .publish_as(&message.user, room.as_str(), message.message)
                    .await
                {
                    session.reject_with(None, &err).await;
                }
            }
            Err(status) => {
                if matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) {
                    session.control().close(CloseReason::TooLarge);
                    break;
                }
                return;
            }
        }
    }
    std::future::pending::<()>().await;
}
