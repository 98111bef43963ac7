//! Optional provisioned-mode throttling per shard, like Kinesis's: writes up to 1 MiB/s or 1,000 records/s,
//! reads up to 2 MiB/s and 5 GetRecords calls/s, each a token bucket holding one second's worth and refilled
//! continuously from an injected clock. Over the limit the API answers `ProvisionedThroughputExceededException`.
//!
//! A read is admitted while the shard has read calls left and its byte budget is not overdrawn; the bytes it
//! returns are then charged, possibly into debt, so one large read makes the next calls wait, as on Kinesis.
//! A record larger than a full bucket is admitted when the bucket is full, so it is never refused forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::types::{ShardId, StreamName};

/// Per-shard limits (Kinesis provisioned mode by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    pub write_bytes_per_sec: u64,
    pub write_records_per_sec: u64,
    pub read_bytes_per_sec: u64,
    pub read_calls_per_sec: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            write_bytes_per_sec: 1024 * 1024,
            write_records_per_sec: 1000,
            read_bytes_per_sec: 2 * 1024 * 1024,
            read_calls_per_sec: 5,
        }
    }
}

/// Most shards tracked at once; past it the buckets start over full (a bound, not a policy).
const TRACKED_SHARDS_MAX: usize = 65_536;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
}

impl Bucket {
    fn full(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        Self { tokens: rate, rate }
    }

    fn refill(&mut self, elapsed_ms: i64) {
        let add = self.rate * elapsed_ms.max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + add).min(self.rate);
    }

    /// Enough for `amount`, or full (so oversized amounts pass one at a time).
    fn has(&self, amount: f64) -> bool {
        self.tokens >= amount.min(self.rate)
    }
}

#[derive(Debug)]
struct ShardBuckets {
    last_ms: i64,
    write_bytes: Bucket,
    write_records: Bucket,
    read_bytes: Bucket,
    read_calls: Bucket,
}

/// The buckets of every shard.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    clock: Arc<dyn Clock>,
    shards: Mutex<HashMap<(StreamName, ShardId), ShardBuckets>>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            shards: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, stream: &StreamName, shard: ShardId, f: impl FnOnce(&mut ShardBuckets) -> R) -> R {
        let now = self.clock.now_ms();
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if shards.len() >= TRACKED_SHARDS_MAX && !shards.contains_key(&(stream.clone(), shard)) {
            shards.clear();
        }
        let c = self.config;
        let buckets = shards
            .entry((stream.clone(), shard))
            .or_insert_with(|| ShardBuckets {
                last_ms: now,
                write_bytes: Bucket::full(c.write_bytes_per_sec),
                write_records: Bucket::full(c.write_records_per_sec),
                read_bytes: Bucket::full(c.read_bytes_per_sec),
                read_calls: Bucket::full(c.read_calls_per_sec),
            });
        let elapsed = now - buckets.last_ms;
        if elapsed > 0 {
            for b in [
                &mut buckets.write_bytes,
                &mut buckets.write_records,
                &mut buckets.read_bytes,
                &mut buckets.read_calls,
            ] {
                b.refill(elapsed);
            }
            buckets.last_ms = now;
        }
        f(buckets)
    }

    /// Take one record of `bytes` (data + partition key) from the shard's write budget, if it has room.
    pub fn try_write(&self, stream: &StreamName, shard: ShardId, bytes: usize) -> bool {
        self.with(stream, shard, |b| {
            let bytes = bytes as f64;
            if b.write_records.has(1.0) && b.write_bytes.has(bytes) {
                b.write_records.tokens -= 1.0;
                b.write_bytes.tokens -= bytes;
                true
            } else {
                false
            }
        })
    }

    /// Take one read call from the shard's budget, if it has one and its bytes are not overdrawn.
    pub fn try_read(&self, stream: &StreamName, shard: ShardId) -> bool {
        self.with(stream, shard, |b| {
            if b.read_calls.has(1.0) && b.read_bytes.tokens > 0.0 {
                b.read_calls.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Charge the bytes a read returned (may overdraw the budget).
    pub fn charge_read(&self, stream: &StreamName, shard: ShardId, bytes: usize) {
        self.with(stream, shard, |b| b.read_bytes.tokens -= bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn setup() -> (Arc<ManualClock>, Throttle, StreamName) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let throttle = Throttle::new(ThrottleConfig::default(), clock.clone());
        (clock, throttle, StreamName::new("s").unwrap())
    }

    #[test]
    fn writes_are_limited_by_records_and_bytes_per_shard() {
        let (clock, t, s) = setup();
        let admitted = (0..1500).filter(|_| t.try_write(&s, ShardId(0), 10)).count();
        assert_eq!(admitted, 1000);
        assert!(t.try_write(&s, ShardId(1), 10), "shards have their own budgets");
        clock.advance(500);
        let admitted = (0..1000).filter(|_| t.try_write(&s, ShardId(0), 10)).count();
        assert_eq!(admitted, 500);
        clock.advance(1000);
        assert!(
            t.try_write(&s, ShardId(0), 1024 * 1024),
            "a full bucket admits a 1 MiB record"
        );
        assert!(!t.try_write(&s, ShardId(0), 1), "and is then empty");
        clock.advance(1000);
        assert!(
            t.try_write(&s, ShardId(0), 5 * 1024 * 1024),
            "oversized records pass when full"
        );
    }

    #[test]
    fn reads_are_limited_by_calls_and_overdrawn_bytes() {
        let (clock, t, s) = setup();
        let admitted = (0..10).filter(|_| t.try_read(&s, ShardId(0))).count();
        assert_eq!(admitted, 5);
        clock.advance(1000);
        assert!(t.try_read(&s, ShardId(0)));
        t.charge_read(&s, ShardId(0), 6 * 1024 * 1024);
        clock.advance(1000);
        assert!(
            !t.try_read(&s, ShardId(0)),
            "6 MiB read at 2 MiB/s leaves debt after 1 s"
        );
        clock.advance(2500);
        assert!(t.try_read(&s, ShardId(0)), "and none after 3.5 s");
    }
}
