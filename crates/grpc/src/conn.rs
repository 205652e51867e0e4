//! Accepted gRPC connections: each counts its open calls and is closed
//! once it has had none for the idle timeout.
//!
//! HTTP/2 keepalive pings find dead peers, but a live client that opens a
//! connection and never uses it (or stops using it) would hold a socket and
//! its h2 state forever. The count lives with the socket; every call holds
//! a [`CallGuard`] for as long as it runs (a stream: until its writer
//! ends), and the socket's read side reports end-of-stream when the idle
//! deadline passes with no call open, which ends the connection.

use futures::task::AtomicWaker;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// What a call learns of its connection (a request extension).
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) remote: Option<SocketAddr>,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// Marks a call open until the guard is dropped.
    pub(crate) fn call(&self) -> CallGuard {
        self.activity.open.fetch_add(1, Ordering::SeqCst);
        CallGuard {
            activity: self.activity.clone(),
        }
    }
}

/// Keeps its connection from counting as idle.
#[derive(Debug)]
pub(crate) struct CallGuard {
    activity: Arc<Activity>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.activity.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.activity.mark_idle();
        }
    }
}

/// The guard of the call `request` belongs to (none for requests that did
/// not come through [`Incoming`], which do not count).
pub(crate) fn call_guard<T>(request: &tonic::Request<T>) -> Option<CallGuard> {
    request.extensions().get::<ConnInfo>().map(ConnInfo::call)
}

/// The client's address, for per-address limits.
/// The client's address for per-address limits: the peer, or the
/// left-most `x-forwarded-for` entry when the peer is a trusted proxy.
pub(crate) fn client_ip<T>(
    gateway: &switchboard_gateway::Gateway,
    request: &tonic::Request<T>,
) -> Option<std::net::IpAddr> {
    let forwarded = request
        .metadata()
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok());
    gateway.client_ip(peer_ip(request), forwarded)
}

pub(crate) fn peer_ip<T>(request: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|info| info.remote)
        .or_else(|| request.remote_addr())
        .map(|addr| addr.ip())
}

#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    /// When the last call ended (ms since `epoch`).
    idle_since_ms: AtomicU64,
    epoch: Instant,
    /// The connection's reader, woken when it becomes idle so that it arms
    /// its timer.
    reader: AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            reader: AtomicWaker::new(),
        }
    }

    fn mark_idle(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(now, Ordering::SeqCst);
        self.reader.wake();
    }

    /// When the connection stops being idle-but-alive, if it is idle now.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
        Some(self.epoch + since + timeout)
    }
}

/// One accepted connection.
#[derive(Debug)]
pub(crate) struct GrpcConn {
    inner: TcpStream,
    info: ConnInfo,
    idle_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.info.activity.reader.register(cx.waker());
        if let Some(deadline) = this.info.activity.idle_deadline(this.idle_timeout) {
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                // End of stream: hyper ends the connection, which has no
                // call left to lose.
                tracing::debug!(remote = ?this.info.remote, "idle gRPC connection closed");
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepted connections of the gRPC listener, with TCP keepalive and
/// `TCP_NODELAY` set (tonic's own settings apply only to its own listener).
pub(crate) fn incoming(
    listener: TcpListener,
    idle_timeout: Duration,
    keepalive: Duration,
    send_buffer: Option<usize>,
) -> impl futures::Stream<Item = io::Result<GrpcConn>> {
    futures::stream::unfold(listener, move |listener| async move {
        let (stream, remote) = loop {
            match listener.accept().await {
                Ok(accepted) => break accepted,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(err) => {
                    // Out of descriptors, typically: tonic would retry at
                    // once and spin, so back off here.
                    tracing::error!(%err, "gRPC accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let accepted = {
            let _ = stream.set_nodelay(true);
            switchboard_gateway::bound_send_buffer(&stream, send_buffer);
            let keepalive = socket2::TcpKeepalive::new().with_time(keepalive);
            if let Err(err) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(%err, "TCP keepalive not set");
            }
            GrpcConn {
                inner: stream,
                info: ConnInfo {
                    remote: Some(remote),
                    activity: Arc::new(Activity::new()),
                },
                idle_timeout,
                timer: None,
            }
        };
        Some((Ok(accepted), listener))
    })
}
