use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// True when at least one token is available (refilling first).
    pub fn has_token(&mut self) -> bool {
        self.refill(Instant::now());
        self.tokens >= 1.0
    }

    /// Spends `n` tokens after the fact, for work whose size is known only
    /// once done (events a history read returned). The debt is bounded by
    /// one burst, so a single huge read cannot lock a client out for long.
    pub fn spend(&mut self, n: f64) {
        self.refill(Instant::now());
        self.tokens = (self.tokens - n).max(-self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// True when the bucket is full again, i.e. the key can be forgotten.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

const KEYED_SHARDS: usize = 16;

/// Token buckets by key (a user, a client address), for limits that no
/// single connection owns. Memory is bounded: a shard that reaches its
/// capacity forgets the keys whose buckets are full again (idle keys).
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: f64,
    burst: f64,
    per_shard: usize,
    shards: Vec<Mutex<HashMap<K, TokenBucket>>>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// `capacity` keys are held at most before idle ones are forgotten.
    pub fn new(rate: f64, burst: f64, capacity: usize) -> Self {
        Self {
            rate,
            burst,
            per_shard: capacity.div_ceil(KEYED_SHARDS).max(1),
            shards: (0..KEYED_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// Runs `f` on the key's bucket.
    pub fn with<R>(&self, key: &K, f: impl FnOnce(&mut TokenBucket) -> R) -> R {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % KEYED_SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= self.per_shard && !buckets.contains_key(key) {
            let now = Instant::now();
            buckets.retain(|_, bucket| !bucket.is_full_at(now));
        }
        let bucket = buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst));
        f(bucket)
    }

    /// Takes one token of the key's bucket if there is one.
    pub fn try_take(&self, key: &K) -> bool {
        self.with(key, TokenBucket::try_take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0);
        bucket.last = start;
        assert!((0..3).all(|_| bucket.try_take_at(start)));
        assert!(!bucket.try_take_at(start));
        assert!(bucket.try_take_at(start + Duration::from_millis(100)));
        assert!(!bucket.try_take_at(start + Duration::from_millis(100)));
        assert!(bucket.is_full_at(start + Duration::from_secs(1)));
    }

    #[test]
    fn spending_after_the_fact_leaves_a_bounded_debt() {
        let mut bucket = TokenBucket::new(1.0, 10.0);
        assert!(bucket.has_token());
        bucket.spend(1000.0);
        assert!(!bucket.has_token());
        assert!(bucket.tokens >= -10.0, "debt is at most one burst");
    }

    #[test]
    fn keyed_buckets_are_independent_and_bounded() {
        let buckets = KeyedBuckets::new(0.001, 2.0, 16);
        assert!(buckets.try_take(&"a"));
        assert!(buckets.try_take(&"a"));
        assert!(!buckets.try_take(&"a"), "a's burst is spent");
        assert!(buckets.try_take(&"b"), "b has its own bucket");
    }
}
