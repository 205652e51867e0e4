//! Connection caps (spec §6): at most `max_connections` client connections
//! per process and `max_connections_per_ip` per client address, over
//! WebSocket, SSE and gRPC streams.
//!
//! A slot is claimed when a connection is admitted (before the upgrade
//! or the stream's first byte, so a refused client costs nothing but the
//! request it sent) and released when its session ends, whichever way.

use crate::GatewayError;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use switchboard_protocol::ErrorCode;
use switchboard_telemetry::names;

/// Independent locks over the per-address counts: connects from many
/// addresses do not queue on one mutex.
const SHARDS: usize = 16;

pub(crate) struct ConnectionSlots {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Vec<Mutex<HashMap<IpAddr, usize>>>,
    hasher: RandomState,
    /// Woken when the last slot is released (graceful shutdown waits
    /// for it).
    all_released: tokio::sync::Notify,
}

/// One admitted connection's place under the caps; dropping it frees it.
pub struct ConnectionSlot {
    slots: Arc<ConnectionSlots>,
    ip: Option<IpAddr>,
}

impl ConnectionSlot {
    /// The client address the slot counts against.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

impl ConnectionSlots {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            all_released: tokio::sync::Notify::new(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.per_ip[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// A slot for a connection from `ip`, or `unavailable` (HTTP 503) over
    /// either cap; every refusal is counted by reason.
    pub(crate) fn claim(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        transport: &'static str,
    ) -> Result<ConnectionSlot, GatewayError> {
        let claimed = self.total.fetch_add(1, Ordering::AcqRel);
        if claimed >= self.max_total {
            self.release_one();
            return Err(refuse(
                "max_connections",
                transport,
                format!(
                    "server is at its connection limit ({}); retry later or elsewhere",
                    self.max_total
                ),
            ));
        }
        if let Some(ip) = ip {
            let mut counts = self
                .shard(&ip)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(counts);
                self.release_one();
                return Err(refuse(
                    "max_connections_per_ip",
                    transport,
                    format!(
                        "too many connections from {ip} (at most {}); close some first",
                        self.max_per_ip
                    ),
                ));
            }
            *count += 1;
        }
        Ok(ConnectionSlot {
            slots: self.clone(),
            ip,
        })
    }

    /// Connections holding a slot now.
    pub(crate) fn held(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn release_one(&self) {
        if self.total.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_released.notify_waiters();
        }
    }

    /// Returns once no connection holds a slot (it may be at once).
    pub(crate) async fn all_released(&self) {
        loop {
            // Created before the check: a release in between still wakes it.
            let released = self.all_released.notified();
            if self.held() == 0 {
                return;
            }
            released.await;
        }
    }
}

fn refuse(reason: &'static str, transport: &'static str, message: String) -> GatewayError {
    metrics::counter!(names::CONNECTIONS_REFUSED, "reason" => reason, "transport" => transport)
        .increment(1);
    GatewayError::refused(ErrorCode::Unavailable, message)
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut counts = self
                .slots
                .shard(&ip)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
        self.slots.release_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_come_back() {
        let slots = ConnectionSlots::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap_or(IpAddr::from([127, 0, 0, 2]));
        let b: IpAddr = IpAddr::from([127, 0, 0, 3]);
        let a1 = slots.claim(Some(a), "websocket").ok();
        let a2 = slots.claim(Some(a), "sse").ok();
        assert!(a1.is_some() && a2.is_some());
        assert!(slots.claim(Some(a), "grpc").is_err(), "per-address cap");
        let b1 = slots.claim(Some(b), "websocket").ok();
        assert!(b1.is_some());
        assert!(slots.claim(Some(b), "websocket").is_err(), "process cap");
        assert_eq!(slots.held(), 3);
        drop(a1);
        assert!(slots.claim(Some(a), "websocket").is_ok(), "freed on drop");
        drop((a2, b1));
        assert_eq!(slots.held(), 0);
        assert!(
            slots
                .per_ip
                .iter()
                .all(|s| s.lock().map(|m| m.is_empty()).unwrap_or(false))
        );
    }
}
