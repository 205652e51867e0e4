//! A TCP proxy that can break the link it carries: the network faults of
//! the fault suite (a gateway cut off from NATS) without root, iptables or
//! a second machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards bytes both ways.
    Pass,
    /// Holds every connection open but forwards nothing (a black hole:
    /// packets dropped, no reset), and new connections hang.
    Drop,
    /// Closes every connection and refuses new ones (a cut seen by both
    /// ends).
    Cut,
}

/// One proxy from a local port to `upstream`.
pub struct FaultProxy {
    pub port: u16,
    state: watch::Sender<Link>,
    delay_ms: Arc<AtomicU64>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU8>,
}

impl FaultProxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (state, watcher) = watch::channel(Link::Pass);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU8::new(0));
        let (delay, count) = (delay_ms.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let mut watcher = watcher.clone();
                if *watcher.borrow_and_update() == Link::Cut {
                    // Refused: closed at once.
                    drop(client);
                    continue;
                }
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pump(cr, sw, watcher.clone(), delay.clone()) => {}
                        () = pump(sr, cw, watcher.clone(), delay) => {}
                        () = cut(&mut watcher) => {}
                    }
                    // Both halves dropped here: both ends see the link end.
                });
            }
        });
        Self {
            port,
            state,
            delay_ms,
            accepted,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, link: Link) {
        let _ = self.state.send(link);
    }

    /// Delays every forwarded chunk by `delay` (0 for none).
    pub fn delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn accepted(&self) -> u8 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Resolves when the link is cut.
async fn cut(watcher: &mut watch::Receiver<Link>) {
    while *watcher.borrow_and_update() != Link::Cut {
        if watcher.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies one direction while the link passes; holds the bytes while it
/// drops them (they are discarded, as a black hole would).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut watcher: watch::Receiver<Link>,
    delay_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match *watcher.borrow_and_update() {
            Link::Pass => {}
            Link::Drop => continue,
            Link::Cut => return,
        }
        let delay = delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let _ = watcher.has_changed();
    }
}
