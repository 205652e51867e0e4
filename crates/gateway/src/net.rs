//! The HTTP listener of every gateway: accepted sockets carry their peer
//! address to the handlers (per-address limits) and a write-progress
//! timeout.
//!
//! A client that stops reading fills its socket; the server's writes then
//! stay pending forever, and a response body (an SSE stream) is never
//! polled again, so nothing above the socket can notice. The timeout lives
//! in the socket itself: a write that makes no progress for the bound
//! fails, hyper drops the connection, and with it the stream and its
//! session (presence leaves, memory is freed). WebSocket connections run
//! on the same sockets after their upgrade.

use crate::front::{self, FrontConfig, FrontIo};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use switchboard_telemetry::names;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// The client address of a request, from the accepted socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        *stream.remote_addr()
    }
}

/// The HTTP listener: accepts in its own task, admits each connection
/// through the front (see `front`), and yields those hyper should serve.
#[derive(Debug)]
pub struct Listener {
    admitted: mpsc::Receiver<(FrontIo, Peer)>,
    local: SocketAddr,
    accept: tokio::task::AbortHandle,
}

impl Listener {
    /// `send_buffer`: see [`bound_send_buffer`].
    pub fn new(
        inner: TcpListener,
        write_timeout: Duration,
        send_buffer: Option<usize>,
        front: FrontConfig,
    ) -> io::Result<Self> {
        let local = inner.local_addr()?;
        // Heads are read concurrently; this only bounds connections that
        // are admitted and not yet taken by hyper.
        let (to_hyper, admitted) = mpsc::channel(1024);
        let accept = tokio::spawn(accept_loop(
            inner,
            write_timeout,
            send_buffer,
            Arc::new(front),
            to_hyper,
        ))
        .abort_handle();
        Ok(Self {
            admitted,
            local,
            accept,
        })
    }
}

impl Drop for Listener {
    /// The server stopped serving: stop accepting, closing the socket.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    inner: TcpListener,
    write_timeout: Duration,
    send_buffer: Option<usize>,
    front: Arc<FrontConfig>,
    to_hyper: mpsc::Sender<(FrontIo, Peer)>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = inner.accept() => accepted,
            () = to_hyper.closed() => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                // Replies and events are small frames written as they
                // happen: Nagle would hold each one behind the previous
                // one's ACK (40 ms with a delayed-ACK peer).
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%err, "TCP_NODELAY not set");
                }
                bound_send_buffer(&stream, send_buffer);
                let stream = TimedStream::new(stream, write_timeout);
                tokio::spawn(front::admit(
                    stream,
                    Peer(addr),
                    front.clone(),
                    to_hyper.clone(),
                ));
            }
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                // Out of file descriptors, typically: accepting again at
                // once would spin, so back off as axum's listener does.
                tracing::error!(%err, "accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = FrontIo;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.admitted.recv().await {
            Some(admitted) => admitted,
            // The accept task is gone (it only ends when we are dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer(self.local))
    }
}

/// Caps the kernel send buffer of an accepted client socket at `bytes` as
/// Linux counts them (it doubles what `SO_SNDBUF` is given, keeping half
/// for its own bookkeeping, so half is asked for). Autotuned, the buffer
/// of a client that stops reading grows to `tcp_wmem`'s maximum (4 MiB by
/// default): per-connection memory no queue bound sees, and minutes of
/// events before the outbound queue fills and the server notices a slow
/// consumer. `None` leaves the kernel's choice.
pub fn bound_send_buffer(stream: &TcpStream, bytes: Option<usize>) {
    let Some(bytes) = bytes else { return };
    if let Err(err) = socket2::SockRef::from(stream).set_send_buffer_size(bytes / 2) {
        tracing::debug!(%err, bytes, "SO_SNDBUF not set");
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A socket whose writes fail once they have made no progress for
/// `timeout`. The timer is allocated only when a write first stalls.
#[derive(Debug)]
pub struct TimedStream {
    inner: TcpStream,
    timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl TimedStream {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stall: None,
            stalled: false,
        }
    }

    /// Passes a write's outcome through, arming the stall timer while it
    /// is pending and failing the write once the timer fires.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = Instant::now() + self.timeout;
                let timer = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !self.stalled {
                    self.stalled = true;
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                metrics::counter!(names::WRITE_TIMEOUTS).increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading: write made no progress",
                )))
            }
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux reports twice what `SO_SNDBUF` was given: the cap asked for is
    /// the size the kernel then accounts, not double it.
    #[tokio::test]
    async fn the_send_buffer_is_what_was_asked_for() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let autotuned = socket2::SockRef::from(&accepted)
            .send_buffer_size()
            .expect("SO_SNDBUF");
        bound_send_buffer(&accepted, None);
        assert_eq!(
            socket2::SockRef::from(&accepted).send_buffer_size().ok(),
            Some(autotuned)
        );
        bound_send_buffer(&accepted, Some(256 * 1024));
        assert_eq!(
            socket2::SockRef::from(&accepted).send_buffer_size().ok(),
            Some(256 * 1024)
        );
    }
}
