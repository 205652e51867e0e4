//! The payload publishers send: `<run>:<lane>:<seq>:<send-unix-nanos>:`
//! padded with `x` to the requested size. The run id keeps other traffic in
//! the room (and other runs) out of the counts; lane and sequence number let
//! every subscriber check loss, duplication and order per publisher stream;
//! the send time gives end-to-end latency (publisher and subscriber share
//! this machine's clock).

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn encode(run: u32, lane: usize, seq: u64, nanos: u64, size: usize) -> String {
    let mut text = format!("{run:08x}:{lane}:{seq}:{nanos}:");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

/// A bench payload of this run: `(lane, seq, send nanos)`; `None` for any
/// other text.
pub fn decode(run: u32, text: &str) -> Option<(usize, u64, u64)> {
    let mut parts = text.splitn(5, ':');
    let tag = u32::from_str_radix(parts.next()?, 16).ok()?;
    if tag != run {
        return None;
    }
    let lane = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((lane, seq, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let text = encode(0xabc, 3, 42, 1_700_000_000_000_000_000, 100);
        assert_eq!(text.len(), 100);
        assert_eq!(
            decode(0xabc, &text),
            Some((3, 42, 1_700_000_000_000_000_000))
        );
        assert_eq!(decode(0xabd, &text), None);
        assert_eq!(decode(0xabc, "hello"), None);
        let short = encode(1, 0, 0, 5, 0);
        assert_eq!(decode(1, &short), Some((0, 0, 5)));
    }
}
