//! The result of a run: one JSON object (field names are stable and listed
//! in the README) and a human summary.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles in microseconds; `count` samples.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        })
    }
}

/// The generator's own CPU use over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub user_s: f64,
    pub system_s: f64,
    pub wall_s: f64,
    pub cores: usize,
    /// `(user + system) / (wall × cores)`: near 1.0 means the generator
    /// itself was saturated and the figures say little about the server.
    pub utilization: f64,
}

/// One run. Counts are totals over the run; rates are per second of the
/// measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// `switchboard` or `raw` (a peer's bare pub/sub endpoints).
    pub protocol: &'static str,
    pub url: String,
    pub subscribe_transport: &'static str,
    pub publish_transport: Option<&'static str>,
    pub rooms: usize,
    pub subscribers: usize,
    pub subscribed: usize,
    pub publishers: usize,
    pub window: usize,
    pub rate: Option<f64>,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub publish_attempts: u64,
    pub published: u64,
    pub publishes_per_s: f64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub deliveries_per_s: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub latency_us: Option<Latency>,
    pub ack_latency_us: Option<Latency>,
    pub connections: Option<u64>,
    pub connects_per_s: Option<f64>,
    pub connect_latency_us: Option<Latency>,
    pub server_pid: Option<u32>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub rss_per_connection: Option<f64>,
    pub cpu: Cpu,
    pub fd_limit: Option<u64>,
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    pub rate_limited: bool,
}

impl Report {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "switchboard bench {} against {} ({} protocol, {:.2}s)",
            self.scenario, self.url, self.protocol, self.duration_s
        );
        let _ = writeln!(
            s,
            "  subscribers {}/{} over {}, {} room(s)",
            self.subscribed, self.subscribers, self.subscribe_transport, self.rooms
        );
        if let Some(p) = self.publish_transport {
            let _ = writeln!(
                s,
                "  publishers {} over {p}: {} of {} acknowledged, {:.0}/s",
                self.publishers, self.published, self.publish_attempts, self.publishes_per_s
            );
            let _ = writeln!(
                s,
                "  deliveries {} of {} expected, {:.0}/s; lost {}, duplicated {}, reordered {}",
                self.deliveries,
                self.expected_deliveries,
                self.deliveries_per_s,
                self.lost,
                self.duplicated,
                self.reordered
            );
        }
        for (name, l) in [
            ("end-to-end latency", &self.latency_us),
            ("ack latency", &self.ack_latency_us),
            ("connect latency", &self.connect_latency_us),
        ] {
            if let Some(l) = l {
                let _ = writeln!(
                    s,
                    "  {name}: p50 {}µs p90 {}µs p99 {}µs max {}µs ({} samples)",
                    l.p50, l.p90, l.p99, l.max, l.count
                );
            }
        }
        if let (Some(c), Some(r)) = (self.connections, self.connects_per_s) {
            let _ = writeln!(s, "  connections {c}, {r:.0}/s");
        }
        if let Some(per) = self.rss_per_connection {
            let _ = writeln!(
                s,
                "  server RSS {} -> {} bytes: {per:.0} bytes per connection",
                self.rss_before.unwrap_or(0),
                self.rss_after.unwrap_or(0)
            );
        }
        let _ = writeln!(
            s,
            "  generator CPU: user {:.2}s system {:.2}s = {:.0}% of {} core(s)",
            self.cpu.user_s,
            self.cpu.system_s,
            self.cpu.utilization * 100.0,
            self.cpu.cores
        );
        if self.error_total > 0 {
            let _ = writeln!(s, "  errors: {:?}", self.errors);
        }
        if self.rate_limited {
            let n = self.errors.get("rate_limited").copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "  WARNING: the server rate-limited {n} operation(s): these figures measure its limits \
                 (--publish-rate/--publish-burst, --ip-publish-rate/--ip-publish-burst), not its capacity"
            );
        }
        if let Some(rate) = self.rate
            && self.publish_transport.is_some()
            && self.publishes_per_s < 0.9 * rate
        {
            let _ = writeln!(
                s,
                "  WARNING: {:.0} publishes/s acknowledged of --rate {rate}: publishers wait for \
                 acknowledgements within --window, so raise --window (or --publishers)",
                self.publishes_per_s
            );
        }
        if self.cpu.utilization > 0.9 {
            let _ = writeln!(
                s,
                "  WARNING: the generator used over 90% of its CPU: it may have been the limit"
            );
        }
        s
    }
}
