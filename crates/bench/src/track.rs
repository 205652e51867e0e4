//! Counting: per-subscriber sequence checks, sharded latency histograms and
//! errors by code.

use hdrhistogram::Histogram;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

/// Most gaps remembered per (subscriber, publisher stream). A gap is a
/// sequence number not seen yet while a later one was; one that arrives
/// later is counted as reordered. Beyond the cap a late arrival is counted
/// as a duplicate, so memory stays bounded under heavy loss.
const MAX_GAPS: usize = 1024;

/// One subscriber's view of one publisher stream.
#[derive(Debug, Default, Clone)]
pub struct StreamCheck {
    /// The next sequence number expected in order.
    next: u64,
    /// Distinct sequence numbers received.
    pub distinct: u64,
    pub duplicated: u64,
    pub reordered: u64,
    gaps: BTreeSet<u64>,
}

impl StreamCheck {
    pub fn observe(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            self.distinct += 1;
        } else if seq > self.next {
            let missing = seq - self.next;
            if self.gaps.len() + usize::try_from(missing).unwrap_or(usize::MAX) <= MAX_GAPS {
                self.gaps.extend(self.next..seq);
            }
            self.next = seq + 1;
            self.distinct += 1;
        } else if self.gaps.remove(&seq) {
            self.reordered += 1;
            self.distinct += 1;
        } else {
            self.duplicated += 1;
        }
    }
}

/// Latency histograms in microseconds (1 µs to 1 h, 3 significant digits),
/// sharded so thousands of tasks rarely wait for the same lock.
pub struct Shards {
    shards: Vec<Mutex<Histogram<u64>>>,
}

/// Highest value a histogram tracks: one hour in microseconds.
const MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

impl Shards {
    pub fn new(count: usize) -> Self {
        Self {
            shards: (0..count.max(1)).map(|_| Mutex::new(histogram())).collect(),
        }
    }

    pub fn record(&self, shard: usize, micros: u64) {
        if let Some(h) = self.shards.get(shard % self.shards.len()) {
            h.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .saturating_record(micros.clamp(1, MAX_US));
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in &self.shards {
            let h = h.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds everywhere: adding cannot fail.
            let _ = all.add(&*h);
        }
        all
    }
}

/// Failed operations by error code: the server's codes (`rate_limited`,
/// `unavailable`, …) where it gave one, else the bench's own
/// (`connect_failed`, `timeout`, `closed`, `http_502`, …).
#[derive(Default)]
pub struct Errors {
    by_code: Mutex<BTreeMap<String, u64>>,
}

impl Errors {
    pub fn add(&self, code: &str) {
        let mut map = self.by_code.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                map.insert(code.to_owned(), 1);
            }
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_code
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gap_late_and_duplicate() {
        let mut c = StreamCheck::default();
        for s in [0, 1, 3, 2, 3, 5] {
            c.observe(s);
        }
        assert_eq!(c.distinct, 5);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.duplicated, 1);
    }

    #[test]
    fn histograms_merge() {
        let s = Shards::new(4);
        for i in 1..=100 {
            s.record(i as usize, i);
        }
        let h = s.merged();
        assert_eq!(h.len(), 100);
        assert!(h.value_at_quantile(0.5) <= h.value_at_quantile(0.99));
    }

    #[test]
    fn errors_by_code() {
        let e = Errors::default();
        e.add("rate_limited");
        e.add("rate_limited");
        e.add("timeout");
        assert_eq!(e.snapshot().get("rate_limited"), Some(&2));
    }
}
