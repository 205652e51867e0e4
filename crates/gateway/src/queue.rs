//! The bounded queue between the hub/session and one connection's writer.
//!
//! One per connection, so its size is per-connection memory: tokio's
//! bounded `mpsc` allocates a cache-padded channel and a first block of 32
//! slots up front (about 1.3 KiB here), which was a quarter of an idle
//! WebSocket. This queue is a `VecDeque` under a mutex that only this
//! connection's writer and its room feeds touch: about 150 bytes when
//! empty, growing only while items wait. No global lock: each connection
//! has its own. See ADR 0008.

use crate::conn::Outbound;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use tokio::sync::Notify;

/// A drained queue keeps at most this many slots allocated.
const KEEP_SLOTS: usize = 16;

struct State {
    items: VecDeque<Outbound>,
    receiver_waker: Option<Waker>,
    senders: usize,
    receiver_alive: bool,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes senders waiting for room (replies; the hub never waits).
    space: Notify,
    capacity: usize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent deque.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// The writer is `capacity` items behind: a slow consumer.
    Full,
    /// The connection is gone.
    Closed,
}

/// The receiver is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A queue holding at most `capacity` items (at least one).
pub fn channel(capacity: usize) -> (QueueSender, QueueReceiver) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver_waker: None,
            senders: 1,
            receiver_alive: true,
        }),
        space: Notify::new(),
        capacity: capacity.max(1),
    });
    (
        QueueSender {
            inner: inner.clone(),
        },
        QueueReceiver { inner },
    )
}

pub struct QueueSender {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QueueSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSender").finish_non_exhaustive()
    }
}

impl Clone for QueueSender {
    fn clone(&self) -> Self {
        self.inner.lock().senders += 1;
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.inner.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.receiver_waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl QueueSender {
    /// Queues `item` now or says why not; never waits.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError> {
        self.push(item).map_err(|(err, _)| err)
    }

    /// Queues `item`, waiting for room.
    pub async fn send(&self, mut item: Outbound) -> Result<(), Closed> {
        loop {
            let space = self.inner.space.notified();
            tokio::pin!(space);
            // Registered before the check, so a drain in between wakes us.
            space.as_mut().enable();
            match self.push(item) {
                Ok(()) => return Ok(()),
                Err((TrySendError::Closed, _)) => return Err(Closed),
                Err((TrySendError::Full, back)) => item = back,
            }
            space.await;
        }
    }

    fn push(&self, item: Outbound) -> Result<(), (TrySendError, Outbound)> {
        let waker = {
            let mut state = self.inner.lock();
            if !state.receiver_alive {
                return Err((TrySendError::Closed, item));
            }
            if state.items.len() >= self.inner.capacity {
                return Err((TrySendError::Full, item));
            }
            state.items.push_back(item);
            state.receiver_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

pub struct QueueReceiver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QueueReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueReceiver").finish_non_exhaustive()
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let items = {
            let mut state = self.inner.lock();
            state.receiver_alive = false;
            std::mem::take(&mut state.items)
        };
        // Events are released outside the lock.
        drop(items);
        self.inner.space.notify_waiters();
    }
}

impl QueueReceiver {
    /// The next item, waiting for one; `None` once every sender is gone
    /// and the queue is empty.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            let mut state = self.inner.lock();
            if let Some(item) = self.pop(&mut state) {
                return Poll::Ready(Some(item));
            }
            if state.senders == 0 {
                return Poll::Ready(None);
            }
            match &state.receiver_waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.receiver_waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut state = self.inner.lock();
        self.pop(&mut state)
    }

    fn pop(&self, state: &mut State) -> Option<Outbound> {
        let was_full = state.items.len() >= self.inner.capacity;
        let item = state.items.pop_front()?;
        if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
            // A burst grew it; an idle connection should not keep that.
            state.items.shrink_to(KEEP_SLOTS);
        }
        if was_full {
            self.inner.space.notify_waiters();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::frames::ServerFrame;

    fn item() -> Outbound {
        Outbound::frame(ServerFrame::Pong)
    }

    #[tokio::test]
    async fn bounded_in_order_and_closes_both_ways() {
        let (tx, mut rx) = channel(2);
        tx.try_send(Outbound::frame(ServerFrame::Unsubscribed {
            room: "a".into(),
        }))
        .expect("room");
        tx.try_send(item()).expect("room");
        assert_eq!(tx.try_send(item()), Err(TrySendError::Full));
        assert!(matches!(
            rx.recv().await,
            Some(Outbound::Frame(frame)) if matches!(*frame, ServerFrame::Unsubscribed { .. })
        ));
        // A waiting sender gets in once there is room.
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(item()).await });
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_some());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("sender woken")
            .expect("task")
            .expect("sent");
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
        drop(tx);
        assert!(rx.recv().await.is_none(), "every sender gone");
        let (tx, rx) = channel(1);
        drop(rx);
        assert_eq!(tx.try_send(item()), Err(TrySendError::Closed));
        assert_eq!(tx.send(item()).await, Err(Closed));
    }

    #[tokio::test]
    async fn a_full_queue_with_a_waiting_sender_is_freed_by_a_dropped_receiver() {
        let (tx, rx) = channel(1);
        tx.try_send(item()).expect("room");
        let waiting = tokio::spawn(async move { tx.send(item()).await });
        tokio::task::yield_now().await;
        drop(rx);
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("sender woken")
            .expect("task");
        assert_eq!(sent, Err(Closed));
    }

    #[tokio::test]
    async fn a_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel(8);
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.try_send(item()).expect("room");
            tx
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(got, Ok(Some(_))));
        drop(sender.await.expect("task"));
    }
}
