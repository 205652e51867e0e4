use crate::conn::call_guard;
use crate::pump;
use crate::to_status;
use futures::StreamExt;
use std::sync::Arc;
use switchboard_auth::Identity;
use switchboard_gateway::{
    CloseReason, Deliver, Delivery, Gateway, GatewayError, Session, Transport,
};
use switchboard_protocol::frames::{ClientFrame, ServerFrame};
use switchboard_protocol::{WireEvent, pb};
use switchboard_telemetry::TRACE_TARGET;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

/// Responses buffered between a stream's writer task and tonic.
const RESPONSE_BUFFER: usize = 64;

/// `switchboard.v1.Chat`.
pub struct ChatApi {
    gateway: Arc<Gateway>,
}

impl ChatApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

/// The identity of a call: `authorization: Bearer …` metadata, or for
/// anonymous access the `x-user` metadata.
pub(crate) async fn identify(
    gateway: &Gateway,
    metadata: &MetadataMap,
) -> Result<Identity, Status> {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    let token = text("authorization").map(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim()
    });
    gateway
        .authenticate_fresh(token, text("x-user"))
        .await
        .map_err(|err| to_status(&err))
}

/// A span for a call, continuing the caller's trace from its
/// `traceparent`/`tracestate` metadata.
pub(crate) fn call_span(name: &'static str, metadata: &MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(target: TRACE_TARGET, "grpc", otel.name = name);
    let mut carrier = switchboard_telemetry::TraceCarrier::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(value) = metadata.get(key).and_then(|v| v.to_str().ok()) {
            carrier.insert(key.to_owned(), value.to_owned());
        }
    }
    switchboard_telemetry::set_remote_parent(&span, &carrier);
    span
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl pb::chat_server::Chat for ChatApi {
    type ConnectStream = ReceiverStream<Result<pb::ServerFrame, Status>>;
    type SubscribeStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let identity = identify(&self.gateway, request.metadata()).await?;
        let peer = crate::conn::client_ip(&self.gateway, &request);
        let call = call_guard(&request);
        let inbound = request.into_inner();
        let slot = self
            .gateway
            .claim_connection(peer, Transport::Grpc)
            .map_err(|err| to_status(&err))?;
        let (session, queue) = self.gateway.open_session(identity, Transport::Grpc, slot);
        let (out, rx) = mpsc::channel(RESPONSE_BUFFER);
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let _call = call;
            let mut session = session;
            let control = session.control().clone();
            let delivery = Delivery::new(gateway.limits().outbound_queue, Transport::Grpc);
            let writer = pump::pump(queue, delivery, &control, &gateway, &out, |write| {
                Some(match write {
                    Deliver::Event(event) => pb::ServerFrame {
                        frame: Some(pb::server_frame::Frame::Event(WireEvent::shared(event))),
                    },
                    Deliver::Frame(frame) => frame.to_proto(),
                })
            });
            tokio::select! {
                () = writer => {}
                () = read_frames(inbound, &mut session) => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let identity = identify(&self.gateway, request.metadata()).await?;
        let peer = crate::conn::client_ip(&self.gateway, &request);
        let call = call_guard(&request);
        let req = request.into_inner();
        let slot = self
            .gateway
            .claim_connection(peer, Transport::Grpc)
            .map_err(|err| to_status(&err))?;
        let (mut session, mut queue) = self.gateway.open_session(identity, Transport::Grpc, slot);
        session
            .subscribe(&req.room, non_empty(&req.since))
            .await
            .map_err(|err| to_status(&err))?;
        // Read up to `subscribed` so its cursor can go into the headers.
        let mut delivery = Delivery::new(self.gateway.limits().outbound_queue, Transport::Grpc);
        let mut initial = Vec::new();
        let mut subscribed = None;
        while subscribed.is_none() {
            let item = queue
                .recv()
                .await
                .ok_or_else(|| Status::unavailable("subscription ended"))?;
            let mut writes = Vec::new();
            delivery
                .accept(item, &mut writes)
                .map_err(|_| pump::close_status(CloseReason::SlowConsumer))?;
            for write in writes {
                match write {
                    Deliver::Frame(frame) => {
                        if let ServerFrame::Subscribed {
                            cursor, recovered, ..
                        } = *frame
                        {
                            subscribed = Some((cursor, recovered));
                        }
                    }
                    Deliver::Event(event) => initial.push(WireEvent::shared(event)),
                }
            }
        }
        let (cursor, recovered) = subscribed.unwrap_or_default();
        let (out, rx) = mpsc::channel(RESPONSE_BUFFER);
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let _call = call;
            let control = session.control().clone();
            for event in initial {
                if !pump::send(&out, &control, event).await {
                    return;
                }
            }
            pump::pump(
                queue,
                delivery,
                &control,
                &gateway,
                &out,
                |write| match write {
                    Deliver::Event(event) => Some(WireEvent::shared(event)),
                    Deliver::Frame(_) => None,
                },
            )
            .await;
            drop(session);
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        if let Ok(value) = cursor.parse() {
            response.metadata_mut().insert("x-cursor", value);
        }
        let recovered = if recovered { "true" } else { "false" };
        response.metadata_mut().insert(
            "x-recovered",
            tonic::metadata::MetadataValue::from_static(recovered),
        );
        Ok(response)
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let _call = call_guard(&request);
        let identity = identify(&self.gateway, request.metadata()).await?;
        let span = call_span("grpc.publish", request.metadata());
        let peer = crate::conn::client_ip(&self.gateway, &request);
        let req = request.into_inner();
        let id = non_empty(&req.id).map(str::to_owned);
        let outcome = async {
            self.gateway.api_rate_limit(&identity.user, peer)?;
            self.gateway
                .publish(&identity, &req.room, req.text, id.clone(), Transport::Grpc)
                .await
        }
        .instrument(span)
        .await;
        let (room, ack) = outcome.map_err(|err: GatewayError| to_status(&err))?;
        Ok(Response::new(pb::PublishResponse {
            room: room.to_string(),
            cursor: ack.cursor.to_string(),
            duplicate: ack.duplicate,
            id: id.unwrap_or_default(),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let _call = call_guard(&request);
        let identity = identify(&self.gateway, request.metadata()).await?;
        let req = request.into_inner();
        let (room, events) = self
            .gateway
            .history(
                &identity,
                &req.room,
                non_empty(&req.after),
                non_empty(&req.before),
                (req.limit != 0).then_some(req.limit),
            )
            .await
            .map_err(|err| to_status(&err))?;
        Ok(Response::new(pb::HistoryResponse {
            room: room.to_string(),
            events: events.into_iter().map(WireEvent::shared).collect(),
        }))
    }

    async fn presence(
        &self,
        request: Request<pb::PresenceRequest>,
    ) -> Result<Response<pb::PresenceResponse>, Status> {
        let _call = call_guard(&request);
        let identity = identify(&self.gateway, request.metadata()).await?;
        let req = request.into_inner();
        let (room, users) = self
            .gateway
            .presence(&identity, &req.room)
            .await
            .map_err(|err| to_status(&err))?;
        Ok(Response::new(pb::PresenceResponse {
            room: room.to_string(),
            users,
        }))
    }
}

/// Feeds client frames to the session. A half-closed request stream keeps
/// the responses flowing (the writer ends the call once the client drops
/// it); a broken or oversized one ends the call.
async fn read_frames(mut inbound: Streaming<pb::ClientFrame>, session: &mut Session) {
    loop {
        // Publishes run while the next frame is read (the gateway's
        // pipeline.rs); both futures are cancel-safe.
        let frame = tokio::select! {
            biased;
            published = session.published() => {
                session.reply_published(published).await;
                continue;
            }
            frame = inbound.next() => frame,
        };
        let Some(frame) = frame else { break };
        match frame {
            Ok(frame) => match ClientFrame::from_proto(frame) {
                Ok(frame) => session.handle(frame).await,
                Err(bad) => session.reject(bad).await,
            },
            Err(status) => {
                if matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) {
                    session.control().close(CloseReason::TooLarge);
                    break;
                }
                return;
            }
        }
    }
    // Half-closed: publishes sent before the end still get their acks.
    session.settle_publishes().await;
    std::future::pending::<()>().await;
}
