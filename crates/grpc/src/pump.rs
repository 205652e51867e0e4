//! The writer half of every streaming call: drains a session's queue
//! through [`Delivery`] into the response stream, and ends the stream with
//! a status that says why the server closed it.

use switchboard_gateway::{CloseReason, ConnControl, Deliver, Delivery, Gateway, Outbound};
use switchboard_telemetry::names;
use tokio::sync::mpsc;
use tonic::Status;

const WRITE_BATCH: usize = 64;

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
    tokio::select! {
        sent = out.send(Ok(item)) => sent.is_ok(),
        _ = control.closed() => false,
    }
}

/// Runs until the client goes away (the call is cancelled or reset, which
/// drops the response stream, or a send finds it gone) or the server
/// closes the connection. The caller drops the session when this returns,
/// so the client leaves presence and the connection gauge at once.
pub(crate) async fn pump<T: Send + 'static>(
    mut queue: mpsc::Receiver<Outbound>,
    mut delivery: Delivery,
    control: &ConnControl,
    gateway: &Gateway,
    out: &Out<T>,
    map: impl Fn(Deliver) -> Option<T>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let reason = loop {
        tokio::select! {
            biased;
            reason = control.closed() => break reason,
            () = out.closed() => return,
            () = gateway.shutdown().cancelled() => control.close(CloseReason::Shutdown),
            count = queue.recv_many(&mut batch, WRITE_BATCH) => {
                if count == 0 {
                    return;
                }
                let writes = delivery.accept_batch(batch.drain(..), control);
                let mut events = 0u64;
                let mut gone = false;
                for write in writes {
                    events += u64::from(matches!(write, Deliver::Event(_)));
                    if let Some(item) = map(write)
                        && !send(out, control, item).await
                    {
                        gone = true;
                        break;
                    }
                }
                metrics::counter!(names::MESSAGES_OUT, "transport" => "grpc").increment(events);
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
