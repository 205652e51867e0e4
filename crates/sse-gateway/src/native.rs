//! `GET /sse/rooms/{room}` as the first request of a connection, served on
//! the raw socket (see the gateway's `front` module for why: hyper keeps
//! 24 KiB of buffers for the life of a streaming response).
//!
//! The response is the one hyper would send, with the body delimited by
//! the end of the connection (`Connection: close`, RFC 9112 §6.3) instead
//! of chunked encoding: an SSE stream has no end but its connection.

use crate::stream::EventStream;
use axum::http::{HeaderMap, Method, header};
use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use switchboard_gateway::front::{FrontIo, NativeRoute, RequestHead, write_response};
use switchboard_gateway::{Gateway, Peer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};

const PREFIX: &str = "/sse/rooms/";

/// A write buffer above this after a write is given back.
const KEEP_WRITE_BUFFER: usize = 16 * 1024;

pub(crate) struct NativeSse {
    gateway: Arc<Gateway>,
}

impl NativeSse {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

/// The room and query of a request this route serves, as axum's `Path`
/// and `Query` would decode them; `None` leaves the request to hyper.
fn request_of(head: &RequestHead) -> Option<(String, HashMap<String, String>)> {
    if head.method != Method::GET {
        return None;
    }
    let raw = head.uri.path().strip_prefix(PREFIX)?;
    if raw.is_empty() || raw.contains('/') {
        return None;
    }
    let room = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?
        .into_owned();
    let params = serde_urlencoded::from_str(head.uri.query().unwrap_or_default()).ok()?;
    Some((room, params))
}

impl NativeRoute for NativeSse {
    fn matches(&self, head: &RequestHead) -> bool {
        request_of(head).is_some()
    }

    fn serve(&self, head: RequestHead, conn: FrontIo, peer: Peer) {
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let Some((room, params)) = request_of(&head) else {
                return;
            };
            let cors = cors_headers(&gateway, &head.headers);
            let (reader, mut writer) = tokio::io::split(conn);
            let opened = EventStream::open(&gateway, peer, &room, &params, &head.headers).await;
            // The stream lives for hours: keep none of the request.
            drop((head, room, params, gateway));
            match opened {
                Ok(mut stream) => {
                    let mut response_head = b"HTTP/1.1 200 OK\r\n\
                        content-type: text/event-stream\r\n\
                        cache-control: no-cache\r\n\
                        x-accel-buffering: no\r\n\
                        connection: close\r\n"
                        .to_vec();
                    response_head.extend_from_slice(&cors);
                    response_head.extend_from_slice(b"\r\n");
                    tokio::select! {
                        () = stream_events(&mut stream, &mut writer, response_head) => {}
                        // The client left: dropping the stream drops its
                        // session, which leaves the room.
                        () = client_gone(reader) => {}
                    }
                }
                Err(refused) => {
                    let _ = write_response(&mut writer, refused, &cors).await;
                }
            }
            let _ = writer.shutdown().await;
        });
    }
}

/// Writes the head, then every chunk as it comes; chunks ready together go
/// out in one write. Ends with the stream or a failed write (the socket's
/// write timeout ends a client that stopped reading).
async fn stream_events<W: AsyncWrite + Unpin>(
    stream: &mut EventStream,
    writer: &mut W,
    head: Vec<u8>,
) {
    let mut buf = head;
    loop {
        while let Some(chunk) = stream.ready() {
            buf.extend_from_slice(&chunk);
        }
        if !buf.is_empty() {
            if writer.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
            if buf.capacity() > KEEP_WRITE_BUFFER {
                buf = Vec::new();
            }
        }
        let Some(chunk) = stream.next().await else {
            return;
        };
        buf.extend_from_slice(&chunk);
    }
}

/// Resolves when the client closes its side (or the socket fails). What
/// it sends is ignored; the read buffer lives on the stack of one poll.
async fn client_gone(mut reader: ReadHalf<FrontIo>) {
    poll_fn(|cx| {
        loop {
            let mut chunk = [0u8; 512];
            let mut buf = ReadBuf::new(&mut chunk);
            match ready!(Pin::new(&mut reader).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => continue,
                _ => return Poll::Ready(()),
            }
        }
    })
    .await;
}

/// The CORS headers the hyper path's `CorsLayer` adds to a simple GET.
fn cors_headers(gateway: &Gateway, request: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    let allowed: Vec<&String> = gateway
        .allowed_origins()
        .iter()
        .filter(|o| o.as_str() != "*")
        .collect();
    if allowed.is_empty() {
        out.extend_from_slice(b"access-control-allow-origin: *\r\n");
    } else if let Some(origin) = request.get(header::ORIGIN)
        && allowed.iter().any(|o| o.as_bytes() == origin.as_bytes())
    {
        out.extend_from_slice(b"access-control-allow-origin: ");
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        b"vary: origin, access-control-request-method, access-control-request-headers\r\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Uri, Version};

    fn head(method: Method, uri: &str) -> RequestHead {
        RequestHead::new(
            method,
            uri.parse::<Uri>().expect("uri"),
            Version::HTTP_11,
            HeaderMap::new(),
        )
    }

    #[test]
    fn decodes_like_axum_and_leaves_the_rest_to_hyper() {
        let (room, params) = request_of(&head(
            Method::GET,
            "/sse/rooms/caf%C3%A9?user=bob&since=e%3A4",
        ))
        .expect("ours");
        assert_eq!(room, "café");
        assert_eq!(params["user"], "bob");
        assert_eq!(params["since"], "e:4");
        for (method, uri) in [
            (Method::POST, "/sse/rooms/a"),
            (Method::OPTIONS, "/sse/rooms/a"),
            (Method::GET, "/sse/rooms/"),
            (Method::GET, "/sse/rooms/a/b"),
            (Method::GET, "/sse/rooms/%FF"),
            (Method::GET, "/api/rooms/a/messages"),
            (Method::GET, "/ws"),
        ] {
            assert!(
                request_of(&head(method.clone(), uri)).is_none(),
                "{method} {uri}"
            );
        }
    }
}
