//! The gRPC API (spec §5): `switchboard.v1.Chat` (the whole WebSocket
//! protocol as `Connect`, plus `Subscribe`, `Publish`, `History`,
//! `Presence`), the seed-compatible package-less `ChatService.Chat`,
//! `grpc.health.v1.Health` and server reflection.
//!
//! Like the other transports it adapts streams to the gateway's `Session`;
//! status codes are mapped from the spec's error codes in [`status`] only.

mod chat;
mod conn;
mod pump;
mod seed;
mod status;

pub use chat::ChatApi;
pub use seed::SeedChat;
pub use status::to_status;

use std::sync::Arc;
use switchboard_gateway::Gateway;
use switchboard_protocol::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Concurrent streams one HTTP/2 connection may open: each stream is a
/// session, so one connection cannot open unbounded numbers of them.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How the gRPC listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct GrpcOptions {
    /// A connection without any call for this long is closed.
    pub idle_timeout: std::time::Duration,
    /// The server pings every connection this often (HTTP/2 PING; TCP
    /// keepalive follows it)...
    pub keepalive_interval: std::time::Duration,
    /// ...and drops a peer that does not answer within this, with its
    /// streams and sessions.
    pub keepalive_timeout: std::time::Duration,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        Self {
            idle_timeout: std::time::Duration::from_secs(300),
            keepalive_interval: std::time::Duration::from_secs(20),
            keepalive_timeout: std::time::Duration::from_secs(20),
        }
    }
}
/// Streams reset by the client before the server accepted them, kept at
/// most (rapid-reset defence).
const MAX_PENDING_RESETS: usize = 50;

/// Why the gRPC server stopped.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection set-up: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves every gRPC service on `listener` until `shutdown` fires, then
/// reports NOT_SERVING and lets in-flight calls finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    options: GrpcOptions,
    shutdown: CancellationToken,
) -> Result<(), GrpcError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let status_of = |ready: bool| {
        if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        }
    };
    // The process-wide ("") and Chat statuses follow readiness: set now,
    // then kept up to date below (every service here needs the bus).
    let ready_at_start = gateway.is_ready();
    for service in ["", "switchboard.v1.Chat", "ChatService"] {
        health
            .set_service_status(service, status_of(ready_at_start))
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let gateway_for_health = gateway.clone();
    let max = gateway.limits().max_frame_bytes;
    let gateway_send_buffer = gateway.limits().socket_send_buffer;
    let chat = pb::chat_server::ChatServer::new(ChatApi::new(gateway.clone()))
        .max_decoding_message_size(max);
    let seed = pb::seed::chat_service_server::ChatServiceServer::new(SeedChat::new(gateway))
        .max_decoding_message_size(max);
    // gRPC health follows readiness (bus connected, core set up, not
    // draining), so gRPC probes and `/readyz` agree.
    let readiness_health = health.clone();
    let readiness_gateway = gateway_for_health.clone();
    let readiness_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut serving = Some(ready_at_start);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                () = readiness_stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let ready = readiness_gateway.is_ready();
            if serving == Some(ready) {
                continue;
            }
            serving = Some(ready);
            for service in ["", "switchboard.v1.Chat", "ChatService"] {
                readiness_health
                    .set_service_status(service, status_of(ready))
                    .await;
            }
        }
    });
    let stop = shutdown.clone();
    let health_on_stop = health.clone();
    let signal = async move {
        stop.cancelled().await;
        health_on_stop
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_on_stop
            .set_not_serving::<pb::chat_server::ChatServer<ChatApi>>()
            .await;
    };
    // HTTP/2 limits: bounded streams per connection (each one is a
    // session), pings that find dead peers even on idle connections, TCP
    // keepalive below them (set by `conn::incoming`), and connections
    // without a call for `idle_timeout` closed. h2 0.4.20 is past the
    // rapid-reset and CONTINUATION-flood advisories.
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(chat)
        .add_service(seed)
        .serve_with_incoming_shutdown(
            conn::incoming(
                listener,
                options.idle_timeout,
                options.keepalive_interval,
                gateway_send_buffer,
            ),
            signal,
        )
        .await?;
    Ok(())
}
