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
use switchboard_auth::Identity;
use switchboard_gateway::front::{FrontIo, NativeRoute, RequestHead, write_response};
use switchboard_gateway::{ConnectionSlot, Gateway, GatewayError, Peer, Transport, request_token};
use switchboard_protocol::{ErrorCode, RoomName};
use tokio::io::AsyncWriteExt;
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
    accept(gateway, peer, params, headers, upgrade, false).await
}

async fn ws_chat(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    upgrade: WsUpgrade,
) -> Response {
    accept(gateway, peer, params, headers, upgrade, true).await
}

/// Everything that can be refused is refused here, before the upgrade, as
/// a plain HTTP error a client can read.
async fn accept(
    gateway: Arc<Gateway>,
    peer: Peer,
    params: ConnectParams,
    headers: HeaderMap,
    upgrade: WsUpgrade,
    chat: bool,
) -> Response {
    let token = request_token(&headers, params.access_token.as_deref());
    if !gateway.knows_key(token) {
        gateway.refetch_key(token).await;
    }
    match admit(&gateway, peer, &params, &headers, chat) {
        Ok(admitted) => {
            upgrade.on_upgrade(move |socket| connection::run(socket, gateway, admitted, Vec::new()))
        }
        Err(refused) => *refused,
    }
}

/// The checks of an upgrade request, shared by hyper's path and the
/// front's: who the client is and how its frames are read.
fn admit(
    gateway: &Gateway,
    peer: Peer,
    params: &ConnectParams,
    headers: &HeaderMap,
    chat: bool,
) -> Result<Admitted, Box<Response>> {
    if gateway.is_draining() {
        return Err(Box::new(
            GatewayError::refused(ErrorCode::Unavailable, "server is shutting down")
                .into_response(),
        ));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !gateway.origin_allowed(origin) {
        return Err(Box::new(
            GatewayError::refused(
                ErrorCode::Forbidden,
                format!("origin {} is not allowed", origin.unwrap_or_default()),
            )
            .into_response(),
        ));
    }
    let token = request_token(headers, params.access_token.as_deref());
    let identity = gateway
        .authenticate(token, params.user.as_deref())
        .map_err(|err| Box::new(err.into_response()))?;
    let mode = if chat {
        let room = params.room.as_deref().unwrap_or(DEFAULT_CHAT_ROOM);
        Mode::Chat(
            RoomName::parse(room)
                .map_err(|err| Box::new(GatewayError::from(err).into_response()))?,
        )
    } else {
        Mode::Json
    };
    // Last: a refused request must not hold a slot, even briefly.
    let slot = gateway
        .claim_connection(
            gateway.client_ip_of(Some(peer.0.ip()), headers),
            Transport::WebSocket,
        )
        .map_err(|err| Box::new(err.into_response()))?;
    Ok(Admitted {
        identity,
        mode,
        slot,
    })
}

/// An upgrade that passed every check, with its place under the caps.
pub(crate) struct Admitted {
    pub(crate) identity: Identity,
    pub(crate) mode: Mode,
    pub(crate) slot: ConnectionSlot,
}

/// `GET /ws` and `/ws/chat` upgrades as a connection's first request,
/// served on the raw socket: no hyper connection state is made for them,
/// which is most of the cost of a connect (see ADR 0008).
pub fn native_route(gateway: Arc<Gateway>) -> Arc<dyn NativeRoute> {
    Arc::new(NativeWs { gateway })
}

struct NativeWs {
    gateway: Arc<Gateway>,
}

/// Whether the request is one of ours, with its query as axum's `Query`
/// would decode it; `None` leaves it to hyper (and its refusals).
fn native_request(head: &RequestHead) -> Option<(bool, ConnectParams)> {
    let chat = match head.uri.path() {
        "/ws" => false,
        "/ws/chat" => true,
        _ => return None,
    };
    if head.method != axum::http::Method::GET || !upgrade::is_upgrade(&head.headers) {
        return None;
    }
    let params = serde_urlencoded::from_str(head.uri.query().unwrap_or_default()).ok()?;
    Some((chat, params))
}

impl NativeRoute for NativeWs {
    fn matches(&self, head: &RequestHead) -> bool {
        native_request(head).is_some()
    }

    fn serve(&self, head: RequestHead, conn: FrontIo, peer: Peer) {
        let Some((chat, params)) = native_request(&head) else {
            return;
        };
        let gateway = self.gateway.clone();
        let token = request_token(&head.headers, params.access_token.as_deref());
        if !gateway.knows_key(token) {
            // A JWKS key rotation (rare): refetch the provider's keys, then
            // admit as below, in a task of its own.
            let token = token.map(str::to_owned);
            tokio::spawn(async move {
                gateway.refetch_key(token.as_deref()).await;
                serve_known(gateway, head, conn, peer, chat, params);
            });
            return;
        }
        serve_known(gateway, head, conn, peer, chat, params);
    }
}

/// Admits (or refuses) a native upgrade whose keys are at hand.
fn serve_known(
    gateway: Arc<Gateway>,
    head: RequestHead,
    mut conn: FrontIo,
    peer: Peer,
    chat: bool,
    params: ConnectParams,
) {
    // Decided before any task exists, so the connection's task is
    // exactly its `run` future: the 101 goes out as its first write.
    let admitted = upgrade::Handshake::check(&head.method, head.version, &head.headers).and_then(
        |handshake| {
            admit(&gateway, peer, &params, &head.headers, chat)
                .map(|admitted| (handshake, admitted))
        },
    );
    match admitted {
        Ok((handshake, admitted)) => {
            let preface = handshake.response_head();
            tokio::spawn(connection::run(conn, gateway, admitted, preface));
        }
        Err(refused) => {
            tokio::spawn(async move {
                let _ = write_response(&mut conn, *refused, b"").await;
                let _ = conn.shutdown().await;
            });
        }
    }
}
