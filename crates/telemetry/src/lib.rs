//! Telemetry set-up shared by every Switchboard role.
//!
//! [`init_logging`] installs the `tracing` subscriber (human or JSON lines,
//! filtered by `RUST_LOG`); [`prometheus`] installs the process-wide
//! metrics recorder and renders `/metrics`. Metric names live in
//! [`names`] so that every crate records the same series. Labels are low
//! cardinality only: never a room or a user.

mod trace;

pub use trace::{
    TRACE_TARGET, TraceCarrier, inject, otlp_configured, record_trace_id, set_remote_parent,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Metric names (spec §8), all prefixed `switchboard_`.
pub mod names {
    /// Gauge of open client connections, label `transport`.
    pub const CONNECTIONS: &str = "switchboard_connections";
    /// Counter of client connections accepted, label `transport`.
    pub const CONNECTIONS_TOTAL: &str = "switchboard_connections_total";
    /// Counter of accepted token refreshes (spec §7).
    pub const TOKEN_REFRESHES: &str = "switchboard_token_refreshes_total";
    /// Counter of connections refused at a cap, labels `reason`
    /// (`max_connections`, `max_connections_per_ip`) and `transport`.
    pub const CONNECTIONS_REFUSED: &str = "switchboard_connections_refused_total";
    /// Counter of publishes received from clients, label `transport`.
    pub const MESSAGES_IN: &str = "switchboard_messages_in_total";
    /// Counter of events written to clients, label `transport`.
    pub const MESSAGES_OUT: &str = "switchboard_messages_out_total";
    /// Histogram of receive → ack time of publishes, seconds.
    pub const PUBLISH_LATENCY: &str = "switchboard_publish_latency_seconds";
    /// Counter of connections dropped because their queue was full.
    pub const SLOW_CONSUMER_DROPS: &str = "switchboard_slow_consumer_drops_total";
    /// Counter of publishes refused by the rate limiter, label `transport`.
    pub const RATE_LIMITED: &str = "switchboard_rate_limited_total";
    /// Counter of WebSocket peers dropped for missing pongs.
    pub const PING_FAILURES: &str = "switchboard_ping_failures_total";
    /// Counter of subscriptions with `since`, label `result` = recovered|lost.
    pub const RESUMES: &str = "switchboard_resumes_total";
    /// Counter of errors sent to clients, label `code`.
    pub const ERRORS: &str = "switchboard_errors_total";
    /// Counter of reconnections to NATS after a lost connection.
    pub const NATS_RECONNECTS: &str = "switchboard_nats_reconnects_total";
    /// Counter of JetStream publishes that failed, label `reason`.
    pub const JETSTREAM_PUBLISH_ERRORS: &str = "switchboard_jetstream_publish_errors_total";
    /// Every `reason` of [`JETSTREAM_PUBLISH_ERRORS`]: `timeout` and
    /// `disconnected` may have stored the message; the others did not.
    pub const JETSTREAM_PUBLISH_ERROR_REASONS: [&str; 8] = [
        "send",
        "timeout",
        "disconnected",
        "storage_full",
        "too_large",
        "no_stream",
        "refused",
        "contended",
    ];
    /// Counter of room-log appends that JetStream acknowledged, label
    /// `path`: `single` (one message, one round trip) or `batch` (queued
    /// appends of one room sent as one atomic batch, ADR 0011).
    pub const JETSTREAM_APPENDS: &str = "switchboard_jetstream_appends_total";
    /// Counter of atomic batches, label `result`: `committed`, or
    /// `fallback` (refused as a batch, e.g. for a duplicate id, and sent
    /// one message at a time instead).
    pub const JETSTREAM_BATCHES: &str = "switchboard_jetstream_batches_total";
    /// Histogram of append → write-to-socket time of events, seconds,
    /// label `transport`.
    pub const DELIVERY_LATENCY: &str = "switchboard_delivery_latency_seconds";
    /// Counter of live-feed gaps repaired from history.
    pub const GAP_REPAIRS: &str = "switchboard_gap_repairs_total";
    /// Counter of unattended rooms the memory bus evicted at its bounds.
    pub const ROOMS_EVICTED: &str = "switchboard_rooms_evicted_total";
    /// Gauge of rooms the memory bus holds.
    pub const MEMORY_ROOMS: &str = "switchboard_memory_rooms";
    /// Gauge of estimated bytes the memory bus holds (rooms and events).
    pub const MEMORY_BYTES: &str = "switchboard_memory_bytes";
    /// Counter of connections closed because writes made no progress.
    pub const WRITE_TIMEOUTS: &str = "switchboard_write_timeouts_total";
    /// Gauge of rooms this gateway process watches (one live feed each).
    pub const WATCHED_ROOMS: &str = "switchboard_watched_rooms";
    /// Counter of events a core read from the JetStream room logs (history,
    /// resume): the work reads do, independent of timing.
    pub const STORE_EVENTS_READ: &str = "switchboard_store_events_read_total";
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (human|json)")),
        }
    }
}

/// Logging and tracing of one process; flush it on shutdown.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber: log lines (human or JSON,
    /// `RUST_LOG` wins over `default_filter`) and, when an OTLP endpoint is
    /// configured, span export for `service`. Call inside a Tokio runtime.
    /// A second call (tests start many servers in one process) keeps the
    /// first subscriber.
    pub fn init(service: &str, format: LogFormat, default_filter: &str) -> Self {
        let provider = if trace::otlp_configured() {
            match trace::provider(service) {
                Ok(provider) => Some(provider),
                Err(err) => {
                    eprintln!("OTLP trace export disabled: {err}");
                    None
                }
            }
        } else {
            None
        };
        let mut filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        if provider.is_none() {
            // Nobody exports trace spans: keep them disabled at their call
            // sites so they cost nothing.
            if let Ok(directive) = format!("{TRACE_TARGET}=off").parse() {
                filter = filter.add_directive(directive);
            }
        }
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let log_layer = match format {
            LogFormat::Human => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_filter(filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
        };
        let trace_layer = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(trace::tracer(provider))
                .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::TRACE))
        });
        let _ = tracing_subscriber::registry()
            .with(log_layer)
            .with(trace_layer)
            .try_init();
        Self { provider }
    }

    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {err}");
        }
    }
}

/// Buckets of the latency histograms: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often the histograms' pending samples are folded into their
/// buckets (see [`prometheus`]).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Name of the thread that folds them (tests look for it).
pub const UPKEEP_THREAD: &str = "metrics-upkeep";

/// The process-wide Prometheus recorder, installed on first use.
///
/// A histogram of this exporter keeps every recorded sample until the
/// next render or upkeep folds it into the buckets, and `install_recorder`
/// (unlike `install`) starts no upkeep. Without a Prometheus scraping
/// `/metrics`, the delivery-latency histogram alone grew by 8 bytes per
/// delivered event, without bound: 129 of the 161 MB heap peak of the
/// soak's warm-up (heaptrack; `docs/RELIABILITY.md`). A thread of its own
/// (it sleeps, and needs no runtime) folds them every second.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new())
        };
        let handle = builder().install_recorder().unwrap_or_else(|err| {
            // Another recorder owns the process (an embedding application):
            // serve an empty, valid exposition rather than fail.
            tracing::warn!(%err, "metrics recorder already installed; /metrics will be empty");
            builder().build_recorder().handle()
        });
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name(UPKEEP_THREAD.into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "no metrics upkeep thread: histograms grow until scraped");
        }
        handle
    })
}

/// Creates every series at zero, so dashboards and alerts see them from
/// the first scrape instead of only after the first event.
pub fn register_series() {
    const TRANSPORTS: [&str; 4] = ["websocket", "sse", "http", "grpc"];
    for transport in TRANSPORTS {
        metrics::gauge!(names::CONNECTIONS, "transport" => transport).increment(0.0);
        metrics::counter!(names::CONNECTIONS_TOTAL, "transport" => transport).increment(0);
        metrics::counter!(names::MESSAGES_IN, "transport" => transport).increment(0);
        metrics::counter!(names::MESSAGES_OUT, "transport" => transport).increment(0);
        metrics::counter!(names::RATE_LIMITED, "transport" => transport).increment(0);
        for reason in ["max_connections", "max_connections_per_ip"] {
            metrics::counter!(names::CONNECTIONS_REFUSED, "reason" => reason, "transport" => transport)
                .increment(0);
        }
    }
    for result in ["recovered", "lost"] {
        metrics::counter!(names::RESUMES, "result" => result).increment(0);
    }
    for path in ["single", "batch"] {
        metrics::counter!(names::JETSTREAM_APPENDS, "path" => path).increment(0);
    }
    for result in ["committed", "fallback"] {
        metrics::counter!(names::JETSTREAM_BATCHES, "result" => result).increment(0);
    }
    for reason in names::JETSTREAM_PUBLISH_ERROR_REASONS {
        metrics::counter!(names::JETSTREAM_PUBLISH_ERRORS, "reason" => reason).increment(0);
    }
    for name in [
        names::SLOW_CONSUMER_DROPS,
        names::PING_FAILURES,
        names::GAP_REPAIRS,
        names::NATS_RECONNECTS,
        names::ROOMS_EVICTED,
        names::WRITE_TIMEOUTS,
        names::STORE_EVENTS_READ,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(names::WATCHED_ROOMS).increment(0.0);
}

/// Renders the Prometheus text exposition of every metric.
pub fn render_metrics() -> String {
    prometheus().render()
}

#[cfg(test)]
mod tests {
    /// Without the upkeep thread an unscraped process keeps every
    /// histogram sample it ever recorded.
    #[test]
    fn installing_the_recorder_starts_the_upkeep_thread() {
        let _ = super::prometheus();
        // A new thread carries its parent's name until it sets its own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .expect("threads listed")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect();
            if names.iter().any(|name| name == super::UPKEEP_THREAD) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{names:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
