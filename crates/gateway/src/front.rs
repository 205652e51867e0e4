//! The connection front: reads each new connection's first request head
//! itself, before hyper allocates anything for it.
//!
//! Why: hyper keeps an HTTP/1 read buffer (16 KiB) and write buffer
//! (8 KiB) for the life of a connection, and an SSE stream is a response
//! that lives as long as its client — 23 KiB per idle stream, where the
//! rest of the stream costs about 3 KiB. A [`NativeRoute`] (the SSE
//! transport) serves a matching first request on the raw socket; every
//! other connection goes to hyper with the bytes already read, unchanged.
//! The head must arrive within the handshake timeout (spec §6), so a
//! slowloris client holds nothing but a socket for that long.
//!
//! This module owns the accept loop and the handover; what a native route
//! answers is the transport's business.

use crate::net::{Peer, TimedStream};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// The longest request head we read; a longer one goes to hyper, which
/// refuses it with 431.
const MAX_HEAD: usize = 16 * 1024;

/// Headers parsed at most; more go to hyper, which decides.
const MAX_HEADERS: usize = 64;

/// A connection's first request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// Bytes of the head itself; a native route reads what follows it.
    len: usize,
}

impl RequestHead {
    /// A head that was not read from a socket (tests, tools).
    pub fn new(method: Method, uri: Uri, version: Version, headers: HeaderMap) -> Self {
        Self {
            method,
            uri,
            version,
            headers,
            len: 0,
        }
    }
}

/// A request a transport serves on the raw socket instead of hyper.
pub trait NativeRoute: Send + Sync + 'static {
    /// Whether to serve this request natively. Must decide from the head
    /// alone: a `false` hands the connection to hyper untouched.
    fn matches(&self, head: &RequestHead) -> bool;

    /// Serves the request in a task of its own (spawned here, so that
    /// task holds only what the connection needs; the front's task ends).
    /// The connection closes when that task drops it.
    fn serve(&self, head: RequestHead, conn: FrontIo, peer: Peer);
}

/// A socket with the bytes the front read ahead of its user.
#[derive(Debug)]
pub struct FrontIo {
    prefix: Vec<u8>,
    at: usize,
    inner: TimedStream,
}

impl FrontIo {
    fn new(prefix: Vec<u8>, inner: TimedStream) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl FrontIo {
    fn release_if_read(&mut self) {
        if self.at >= self.prefix.len() {
            self.prefix = Vec::new();
            self.at = 0;
        }
    }
}

impl AsyncRead for FrontIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            self.release_if_read();
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FrontIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How the front treats new connections.
#[derive(Clone)]
pub struct FrontConfig {
    pub handshake_timeout: Duration,
    pub native: Vec<Arc<dyn NativeRoute>>,
}

impl std::fmt::Debug for FrontConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontConfig")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("native", &self.native.len())
            .finish()
    }
}

/// Error bodies are small JSON; anything larger is cut.
const MAX_BODY: usize = 64 * 1024;

/// Writes a whole response (a refusal: a small JSON error) the way hyper
/// would, plus `extra` header lines, and says the connection closes.
pub async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: axum::response::Response,
    extra: &[u8],
) -> io::Result<()> {
    use axum::http::header;
    use tokio::io::AsyncWriteExt;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    writer.write_all(&out).await
}

/// Reads the head of one new connection, then serves it natively or hands
/// it to hyper through `to_hyper`.
pub(crate) async fn admit(
    stream: TimedStream,
    peer: Peer,
    config: Arc<FrontConfig>,
    to_hyper: mpsc::Sender<(FrontIo, Peer)>,
) {
    let mut stream = stream;
    let read = tokio::time::timeout(config.handshake_timeout, read_head(&mut stream)).await;
    let Ok(Ok(prefix)) = read else {
        // Slowloris, or the client left: nothing was allocated for it.
        tracing::debug!(peer = %peer.0, "no request head within the handshake timeout");
        return;
    };
    let native = parse_head(&prefix).and_then(|head| {
        let route = config.native.iter().find(|route| route.matches(&head))?;
        Some((route.clone(), head))
    });
    let Some((route, head)) = native else {
        let _ = to_hyper.send((FrontIo::new(prefix, stream), peer)).await;
        return;
    };
    // The route reads what the client sent after the head (the first
    // WebSocket frames may already be there).
    let mut conn = FrontIo::new(prefix, stream);
    conn.at = head.len;
    conn.release_if_read();
    route.serve(head, conn, peer);
}

/// Reads until the end of the first request head (or `MAX_HEAD` bytes, or
/// anything that is not HTTP/1, which hyper then sorts out).
async fn read_head(stream: &mut TimedStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        // The chunk lives on the stack of one poll, not in every waiting
        // connection's future.
        let n = std::future::poll_fn(|cx| {
            let mut chunk = [0u8; 2048];
            let mut buf = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            head.extend_from_slice(buf.filled());
            Poll::Ready(Ok::<usize, io::Error>(buf.filled().len()))
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // Only the new bytes (and the three before them) can complete it.
        let from = head.len().saturating_sub(n + 3);
        let complete = head[from..].windows(4).any(|w| w == b"\r\n\r\n");
        if complete || head.len() >= MAX_HEAD {
            return Ok(head);
        }
    }
}

/// The head as an HTTP/1 request, if it is a complete and valid one.
fn parse_head(bytes: &[u8]) -> Option<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = request.parse(bytes) else {
        return None;
    };
    let method = Method::from_bytes(request.method?.as_bytes()).ok()?;
    let uri: Uri = request.path?.parse().ok()?;
    let version = match request.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut map = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        map.append(name, value);
    }
    Some(RequestHead {
        method,
        uri,
        version,
        headers: map,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_heads_only() {
        let head = parse_head(
            b"GET /sse/rooms/a%20b?user=x HTTP/1.1\r\nHost: h\r\nLast-Event-ID: e:1\r\n\r\n",
        )
        .expect("complete");
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/sse/rooms/a%20b");
        assert_eq!(head.uri.query(), Some("user=x"));
        assert_eq!(head.headers["last-event-id"], "e:1");
        let with_body = b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n\x81\x80abcd";
        assert_eq!(
            parse_head(with_body).expect("complete").len,
            with_body.len() - 6
        );
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: h\r\n").is_none());
        assert!(parse_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_none());
        assert!(parse_head(b"\x16\x03\x01garbage\r\n\r\n").is_none());
    }
}
