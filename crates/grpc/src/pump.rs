//! The writer half of every streaming call: drains a session's queue
//! through [`Delivery`] into the response stream, and ends the stream with
//! a status that says why the server closed it.

use switchboard_gateway::queue::QueueReceiver;
use switchboard_gateway::{CloseReason, ConnControl, Deliver, Delivery, Gateway};
use tokio::sync::mpsc;
use tonic::Status;

const WRITE_BATCH: usize = 32;

pub(crate) type Out<T> = mpsc::Sender<Result<T, Status>>;

/// The terminal status for a server-side close.
pub(crate) fn close_status(reason: CloseReason) -> Status {
    match reason {
        CloseReason::SlowConsumer => {
            Status::resource_exhausted("slow consumer: resubscribe with since to resume")
        }
        CloseReason::TokenExpired => Status::unauthenticated("token expired"),
        CloseReason::TooLarge => Status::out_of_range("message too large"),
        CloseReason::Shutdown => Status::unavailable("server restarting"),
        CloseReason::FeedLost => Status::unavailable("room feed lost: resubscribe with since"),
        CloseReason::PingTimeout => Status::deadline_exceeded("peer unresponsive"),
    }
}

/// Sends unless the connection is closing; false when the stream is over.
pub(crate) async fn send<T>(out: &Out<T>, control: &ConnControl, item: T) -> bool {
    // The common case needs no waiting, and no close watch registered per
    // delivery.
    let item = match out.try_send(Ok(item)) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    tokio::select! {
        sent = out.send(item) => sent.is_ok(),
        _ = control.closed() => false,
    }
}

/// Runs until the client goes away (the call is cancelled or reset, which
/// drops the response stream, or a send finds it gone) or the server
/// closes the connection. The caller drops the session when this returns,
/// so the client leaves presence and the connection gauge at once.
pub(crate) async fn pump<T: Send + 'static>(
    mut queue: QueueReceiver,
    mut delivery: Delivery,
    control: &ConnControl,
    gateway: &Gateway,
    out: &Out<T>,
    map: impl Fn(Deliver) -> Option<T>,
) {
    let mut writes: Vec<Deliver> = Vec::new();
    // Made once, not per batch: each registers with its token under that
    // token's mutex, and the shutdown token is shared by every connection.
    let closed = control.closed();
    let client_gone = out.closed();
    let shutdown = gateway.shutdown().cancelled();
    tokio::pin!(closed, client_gone, shutdown);
    let mut shutting_down = false;
    let reason = loop {
        tokio::select! {
            biased;
            reason = &mut closed => break reason,
            () = &mut client_gone => return,
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                control.close(CloseReason::Shutdown);
            }
            item = queue.recv() => {
                let Some(item) = item else { return };
                delivery.accept_batch(item, &mut queue, WRITE_BATCH, control, &mut writes);
                let mut events = 0u64;
                let mut gone = false;
                for write in writes.drain(..) {
                    events += u64::from(matches!(write, Deliver::Event(_)));
                    if let Some(item) = map(write)
                        && !send(out, control, item).await
                    {
                        gone = true;
                        break;
                    }
                }
                delivery.delivered(events);
                if writes.capacity() > 4 * WRITE_BATCH {
                    writes = Vec::new();
                }
                if gone {
                    if let Some(reason) = control.reason() {
                        break reason;
                    }
                    return; // the client went away
                }
            }
        }
    };
    let _ = out.try_send(Err(close_status(reason)));
}
