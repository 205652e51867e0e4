//! Opening client sockets: resolved once, bound round-robin to the source
//! addresses, so one generator can exceed the ~28k ephemeral ports a single
//! source address has towards one server address.

use crate::BenchError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to one server address from the configured source addresses.
#[derive(Debug, Clone)]
pub struct Dialer {
    addr: SocketAddr,
    sources: Arc<[IpAddr]>,
    next: Arc<AtomicUsize>,
}

impl Dialer {
    /// Resolves `host:port` once (the run then never waits on DNS).
    pub async fn resolve(
        what: &'static str,
        host: &str,
        port: u16,
        sources: Arc<[IpAddr]>,
        next: Arc<AtomicUsize>,
    ) -> Result<Self, BenchError> {
        let shown = format!("{host}:{port}");
        let mut addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| BenchError::Resolve {
                what,
                addr: shown.clone(),
                source,
            })?;
        // Prefer an address of the sources' family when sources are given.
        let all: Vec<SocketAddr> = addrs.by_ref().collect();
        let wanted_v4 = sources.first().map(IpAddr::is_ipv4);
        let addr = all
            .iter()
            .find(|a| wanted_v4.is_none_or(|v4| a.is_ipv4() == v4))
            .or_else(|| all.first())
            .copied()
            .ok_or_else(|| BenchError::Resolve {
                what,
                addr: shown,
                source: io::Error::new(io::ErrorKind::NotFound, "no address"),
            })?;
        Ok(Self {
            addr,
            sources,
            next,
        })
    }

    /// The next source address, if any are configured.
    pub fn source(&self) -> Option<IpAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
        self.sources.get(i).copied()
    }

    /// A TCP connection from the next source address, with Nagle off
    /// (small frames must not wait for acknowledgements).
    pub async fn tcp(&self) -> io::Result<TcpStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = self.source() {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
