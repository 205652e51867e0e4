//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), done here rather than by
//! axum's `WebSocketUpgrade` so the upgraded socket goes to our own framing
//! (see `socket`) instead of tungstenite's buffered stream.

use crate::SUBPROTOCOL;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use switchboard_gateway::GatewayError;
use switchboard_protocol::ErrorCode;

/// The upgraded connection, as a tokio stream.
pub(crate) type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A valid WebSocket upgrade request, not yet answered.
pub(crate) struct WsUpgrade {
    handshake: Handshake,
    on_upgrade: OnUpgrade,
}

fn refuse(status: StatusCode, message: &str) -> Box<Response> {
    let mut response = GatewayError::refused(ErrorCode::BadFrame, message).into_response();
    *response.status_mut() = status;
    Box::new(response)
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// The answer to a valid upgrade request.
pub(crate) struct Handshake {
    accept: HeaderValue,
    protocol: bool,
}

impl Handshake {
    /// Checks an upgrade request (RFC 6455 §4.2.1) as a refusal a client
    /// can read.
    pub(crate) fn check(
        method: &Method,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<Self, Box<Response>> {
        if version != Version::HTTP_11 {
            return Err(refuse(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "WebSocket needs an HTTP/1.1 upgrade",
            ));
        }
        if method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET",
            ));
        }
        if !is_upgrade(headers) {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket: send Connection: upgrade and Upgrade: websocket",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version: 13 is required",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing",
            ));
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept)
            .map_err(|_| refuse(StatusCode::BAD_REQUEST, "invalid Sec-WebSocket-Key"))?;
        let protocol = has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
        Ok(Self { accept, protocol })
    }

    /// The 101 response as bytes, for the front's raw socket.
    pub(crate) fn response_head(&self) -> Vec<u8> {
        let mut out = b"HTTP/1.1 101 Switching Protocols\r\n\
            connection: upgrade\r\n\
            upgrade: websocket\r\n\
            sec-websocket-accept: "
            .to_vec();
        out.extend_from_slice(self.accept.as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.protocol {
            out.extend_from_slice(b"sec-websocket-protocol: ");
            out.extend_from_slice(SUBPROTOCOL.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Whether the request asks for a WebSocket upgrade at all.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let handshake =
            Handshake::check(&parts.method, parts.version, &parts.headers).map_err(|r| *r)?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            *refuse(
                StatusCode::BAD_REQUEST,
                "this connection cannot be upgraded",
            )
        })?;
        Ok(Self {
            handshake,
            on_upgrade,
        })
    }
}

impl WsUpgrade {
    /// Answers 101 and runs `connection` on the upgraded socket in its own
    /// task. `connection` is built now, so the task holds only its state.
    pub(crate) fn on_upgrade<F, Fut>(self, connection: F) -> Response
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            // A client that vanishes between the 101 and the upgrade
            // simply ends here.
            if let Ok(upgraded) = on_upgrade.await {
                connection(TokioIo::new(upgraded)).await;
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, self.handshake.accept);
        if self.handshake.protocol {
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        response
    }
}
