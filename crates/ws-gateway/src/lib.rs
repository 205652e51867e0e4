//! The WebSocket transport (spec §3).
//!
//! `GET /ws` speaks JSON text frames (subprotocol `switchboard.v1.json`);
//! `GET /ws/chat` also accepts plain text, published to the connection's
//! default room. Each connection is a reader and a writer joined by
//! `select!`: the reader turns frames into session commands, the writer
//! drains the session's bounded queue into the socket and keeps the peer
//! alive with pings. This crate adapts sockets only; the protocol lives in
//! `switchboard-gateway`'s `Session`.

mod connection;
mod frame;
mod socket;
mod upgrade;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;
use switchboard_gateway::{Gateway, GatewayError, Peer, request_token};
use switchboard_protocol::{ErrorCode, RoomName};
use upgrade::WsUpgrade;

/// The subprotocol of the JSON protocol; also what a client gets when it
/// asks for none.
pub const SUBPROTOCOL: &str = "switchboard.v1.json";

/// Default room of `/ws/chat` when `?room=` is absent.
pub const DEFAULT_CHAT_ROOM: &str = "lobby";

/// `/ws` and `/ws/chat`.
pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ws", get(ws_json))
        .route("/ws/chat", get(ws_chat))
        .with_state(gateway)
}

#[derive(Debug, Deserialize)]
struct ConnectParams {
    user: Option<String>,
    access_token: Option<String>,
    room: Option<String>,
}

/// How a connection treats text frames.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    Json,
    /// Plain text is published to this room, which the connection joins.
    Chat(RoomName),
}

async fn ws_json(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    upgrade: WsUpgrade,
) -> Response {
    accept(gateway, peer, params, headers, upgrade, false)
}

async fn ws_chat(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    upgrade: WsUpgrade,
) -> Response {
    accept(gateway, peer, params, headers, upgrade, true)
}

/// Everything that can be refused is refused here, before the upgrade, as
/// a plain HTTP error a client can read.
fn accept(
    gateway: Arc<Gateway>,
    peer: Peer,
    params: ConnectParams,
    headers: HeaderMap,
    upgrade: WsUpgrade,
    chat: bool,
) -> Response {
    if gateway.is_draining() {
        return GatewayError::refused(ErrorCode::Unavailable, "server is shutting down")
            .into_response();
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !gateway.origin_allowed(origin) {
        return GatewayError::refused(
            ErrorCode::Forbidden,
            format!("origin {} is not allowed", origin.unwrap_or_default()),
        )
        .into_response();
    }
    let token = request_token(&headers, params.access_token.as_deref());
    let identity = match gateway.authenticate(token, params.user.as_deref()) {
        Ok(identity) => identity,
        Err(err) => return err.into_response(),
    };
    let mode = if chat {
        let room = params.room.as_deref().unwrap_or(DEFAULT_CHAT_ROOM);
        match RoomName::parse(room) {
            Ok(room) => Mode::Chat(room),
            Err(err) => return GatewayError::from(err).into_response(),
        }
    } else {
        Mode::Json
    };
    upgrade.on_upgrade(move |socket| connection::run(socket, gateway, identity, mode, peer))
}
