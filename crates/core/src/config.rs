use std::time::Duration;

/// Retention, de-duplication and input limits of the core (spec §2, §6).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Events kept per room.
    pub retention_count: usize,
    /// Events older than this are dropped.
    pub retention_age: Duration,
    /// A publish id is remembered this long per room.
    pub dedup_window: Duration,
    /// Longest message text, in bytes.
    pub max_text_bytes: usize,
    /// Capacity of each room's live broadcast; a feed reader that falls
    /// further behind is told it lagged and repairs from history.
    pub feed_capacity: usize,
    /// Rooms the in-memory core holds at most. Beyond it the oldest
    /// unattended rooms are evicted; a new room is refused only when
    /// every room has a listener or a present user.
    pub max_rooms: usize,
    /// Estimated bytes of every room and stored event together, bounded
    /// the same way, so no sequence of publishes can exhaust memory.
    pub max_bytes: usize,
    /// How often unattended, emptied rooms are swept (rooms whose events
    /// aged out; rooms that never held a message are forgotten at once).
    pub sweep_interval: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            retention_count: 1000,
            retention_age: Duration::from_secs(24 * 3600),
            dedup_window: Duration::from_secs(120),
            max_text_bytes: 4 * 1024,
            feed_capacity: 1024,
            max_rooms: 1_000_000,
            max_bytes: 1 << 30,
            sweep_interval: Duration::from_secs(60),
        }
    }
}
