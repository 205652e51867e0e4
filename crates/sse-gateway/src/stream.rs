use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_gateway::queue::QueueReceiver;
use switchboard_gateway::{
    CloseReason, Deliver, Delivery, Gateway, GatewayError, Outbound, Peer, Session, Transport,
    request_token,
};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ErrorCode, format_rfc3339_millis};
use tokio::time::Interval;

/// Tells `EventSource` how long to wait before reconnecting.
const RETRY_PREAMBLE: &[u8] = b"retry: 2000\n\n";
const WRITE_BATCH: usize = 32;

/// `GET /sse/rooms/{room}` when hyper serves it (a request after another
/// on a kept-alive connection; a fresh connection is served by
/// [`crate::native`]): refusals are plain HTTP errors before the stream
/// starts; after that the stream only carries events.
pub(crate) async fn sse(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(room): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let state = match EventStream::open(&gateway, peer, &room, &params, &headers).await {
        Ok(state) => state,
        Err(refused) => return refused,
    };
    let body = Body::from_stream(futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next().await?;
        Some((Ok::<Bytes, Infallible>(chunk), state))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The cursor a stream resumes from, still unparsed: the browser's own
/// reconnect (`Last-Event-ID`) is newer than the URL's `?since=`, so the
/// header wins unless it is empty or not visible ASCII (then `?since=`
/// applies, as if the header were absent). The session parses the cursor,
/// so a malformed one is refused like any other.
///
/// ```
/// use axum::http::HeaderMap;
/// use std::collections::HashMap;
/// let mut headers = HeaderMap::new();
/// let params = HashMap::from([("since".to_owned(), "e:1".to_owned())]);
/// assert_eq!(switchboard_sse::resume_from(&headers, &params), Some("e:1"));
/// headers.insert("last-event-id", "e:7".parse().unwrap());
/// assert_eq!(switchboard_sse::resume_from(&headers, &params), Some("e:7"));
/// ```
pub fn resume_from<'a>(
    headers: &'a HeaderMap,
    params: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .or_else(|| params.get("since").map(String::as_str))
}

/// The stream owns the session: when the client goes away the body is
/// dropped, and with it the session, which leaves the room. A client that
/// stops reading is dropped by the socket's write timeout (see the
/// gateway's `net` module): a stalled body is never polled, so the close
/// of a slow consumer alone could not end it.
pub(crate) struct EventStream {
    /// Why the stream ends: made once, not per chunk, because each watch
    /// registers with its token under that token's mutex, and the shutdown
    /// token is shared by every connection.
    ended: Pin<Box<dyn Future<Output = CloseReason> + Send>>,
    session: Session,
    queue: QueueReceiver,
    delivery: Delivery,
    heartbeat: Interval,
    pending: VecDeque<Bytes>,
    /// Reused from batch to batch, so a delivery allocates nothing.
    writes: Vec<Deliver>,
    finished: bool,
    /// The cursor this stream resumed from, until its `subscribed` event
    /// is encoded (see [`frame_to_sse`]).
    resumed_from: Option<String>,
}

impl EventStream {
    /// Authenticates, subscribes and returns the stream, or the refusal as
    /// a plain HTTP response.
    pub(crate) async fn open(
        gateway: &Arc<Gateway>,
        peer: Peer,
        room: &str,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Self, Response> {
        if gateway.is_draining() {
            return Err(
                GatewayError::refused(ErrorCode::Unavailable, "server is shutting down")
                    .into_response(),
            );
        }
        let token = request_token(headers, params.get("access_token").map(String::as_str));
        let identity = gateway
            .authenticate_fresh(token, params.get("user").map(String::as_str))
            .await
            .map_err(IntoResponse::into_response)?;
        let since = resume_from(headers, params);
        let slot = gateway
            .claim_connection(
                gateway.client_ip_of(Some(peer.0.ip()), headers),
                Transport::Sse,
            )
            .map_err(IntoResponse::into_response)?;
        let (mut session, queue) = gateway.open_session(identity, Transport::Sse, slot);
        // Boxed: a subscribe's future is kilobytes, and this one's caller
        // lives as long as the stream.
        Box::pin(session.subscribe(room, since))
            .await
            .map_err(IntoResponse::into_response)?;
        let heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + gateway.limits().sse_heartbeat,
            gateway.limits().sse_heartbeat,
        );
        let control = session.control().clone();
        let shutdown = gateway.shutdown().clone();
        let ended = Box::pin(async move {
            tokio::select! {
                reason = control.closed() => reason,
                () = shutdown.cancelled() => CloseReason::Shutdown,
            }
        });
        Ok(EventStream {
            ended,
            delivery: Delivery::new(gateway.limits().outbound_queue, Transport::Sse),
            session,
            queue,
            heartbeat,
            pending: VecDeque::from([Bytes::from_static(RETRY_PREAMBLE)]),
            writes: Vec::new(),
            finished: false,
            resumed_from: since.map(str::to_owned),
        })
    }

    /// A chunk encoded already, without waiting.
    pub(crate) fn ready(&mut self) -> Option<Bytes> {
        self.pending.pop_front()
    }

    /// The next chunk to write; `None` once the stream is over.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                biased;
                reason = &mut self.ended => self.finish(reason),
                item = self.queue.recv() => {
                    let item = item?;
                    self.encode(item);
                }
                _ = self.heartbeat.tick() => {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                    let ts = format_rfc3339_millis(i64::try_from(now).unwrap_or(i64::MAX));
                    self.pending.push_back(Bytes::from(format!(
                        "event: heartbeat\ndata: {{\"ts\":\"{ts}\"}}\n\n"
                    )));
                }
            }
        }
    }

    fn encode(&mut self, first: Outbound) {
        self.delivery.accept_batch(
            first,
            &mut self.queue,
            WRITE_BATCH,
            self.session.control(),
            &mut self.writes,
        );
        let mut events = 0u64;
        for write in self.writes.drain(..) {
            match write {
                Deliver::Event(event) => {
                    events += 1;
                    self.pending.push_back(event.sse_frame());
                }
                Deliver::Frame(frame) => {
                    let resumed_from = match frame.as_ref() {
                        ServerFrame::Subscribed { .. } => self.resumed_from.take(),
                        _ => None,
                    };
                    self.pending
                        .push_back(frame_to_sse(&frame, resumed_from.as_deref()));
                }
            }
        }
        self.delivery.delivered(events);
        if self.writes.capacity() > 4 * WRITE_BATCH {
            // A replay grew it; do not keep that per connection.
            self.writes = Vec::new();
        }
    }

    /// Ends the stream; a client that should not simply reconnect is told
    /// why in a last `error` event.
    fn finish(&mut self, reason: CloseReason) {
        let error = match reason {
            CloseReason::TokenExpired => Some((ErrorCode::Unauthorized, "token expired")),
            CloseReason::SlowConsumer => Some((
                ErrorCode::RateLimited,
                "slow consumer: reconnect to resume from the last event id",
            )),
            _ => None,
        };
        if let Some((code, message)) = error {
            self.pending
                .push_back(frame_to_sse(&ServerFrame::error(code, message), None));
        }
        self.finished = true;
    }
}

/// Control frames as SSE events. `subscribed` carries an `id:` so that a
/// reconnect before any event still resumes from the right place: the
/// head cursor of a fresh subscription, but the cursor it resumed from
/// (`resumed_from`) when the replay follows. Had it carried the head then,
/// an `EventSource` cut during the replay would resume from the head and
/// skip the rest of the replay. An unrecovered resume starts at the head.
fn frame_to_sse(frame: &ServerFrame, resumed_from: Option<&str>) -> Bytes {
    let json = frame.to_json();
    let (name, id) = match frame {
        ServerFrame::Subscribed {
            cursor, recovered, ..
        } => {
            let id = match resumed_from {
                Some(since) if *recovered => since,
                _ => cursor.as_str(),
            };
            ("subscribed", Some(id))
        }
        ServerFrame::Error { .. } => ("error", None),
        ServerFrame::Unsubscribed { .. } => ("unsubscribed", None),
        _ => ("message", None),
    };
    let mut out = Vec::with_capacity(json.len() + 48);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
