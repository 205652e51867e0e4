//! Consumers that live for one read only (history, resume, presence
//! listings): created, drained, deleted. A consumer is a server-side
//! object, so hundreds of concurrent reads must not leave hundreds behind.

use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::stream::{ConsumerError, Stream};
use std::time::Duration;

/// Should the explicit delete be lost (disconnect, crash), the server
/// removes an idle read consumer after this.
const INACTIVE: Duration = Duration::from_secs(5);

/// An unacknowledged, in-memory, single-replica pull consumer of
/// `filter_subject`, for one read.
pub(crate) async fn create(
    stream: &Stream,
    filter_subject: String,
    deliver_policy: DeliverPolicy,
) -> Result<Consumer<pull::Config>, ConsumerError> {
    stream
        .create_consumer(pull::Config {
            filter_subject,
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
}

/// Deletes the consumer `name` once its read is over.
pub(crate) async fn delete(stream: &Stream, name: &str) {
    if let Err(err) = stream.delete_consumer(name).await {
        tracing::debug!(%err, consumer = %name, "read consumer not deleted; it expires");
    }
}
