//! freshet-storage: the durable sharded stream store, with Kinesis Data Streams semantics on local disk.
//!
//! This crate owns the record vocabulary ([`types`]), the on-disk log ([`segment`], [`shard`]), the embedded
//! engine ([`engine::Store`]), consumers with durable checkpoints ([`consumer`]), and the [`StreamStore`] trait
//! that every stage uses to reach a store, embedded or remote. It knows nothing of MQTT, Delta, SQL or charts.
//!
//! # Guarantees (fsync policy `always`, the default)
//!
//! - An append that returned `Ok` survives a crash of the process or the machine.
//! - A record is readable only once it is durable, so a sequence number, once seen, always names the same record.
//! - Sequence numbers strictly increase within a shard and are unique across the stream.
//! - Reads never return a torn or corrupt record: every frame is checked against its CRC32C.

pub mod api;
pub mod clock;
pub mod consumer;
pub mod engine;
pub mod error;
pub mod hash;
pub mod pool;
pub mod remote;
pub mod segment;
pub mod shard;
pub mod types;
mod uring;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Queued, Store, StoreConfig};
pub use error::{Fault, StoreError, StoreResult};
pub use shard::{FsyncPolicy, LogConfig};
pub use types::*;

/// A stream store: the embedded engine, or a client of a Kinesis-API endpoint. Operations mirror Kinesis's.
#[async_trait]
pub trait StreamStore: Send + Sync + std::fmt::Debug + 'static {
    async fn create_stream(&self, name: &StreamName, shard_count: u32) -> StoreResult<()>;
    async fn delete_stream(&self, name: &StreamName) -> StoreResult<()>;
    async fn list_streams(&self) -> StoreResult<Vec<StreamName>>;
    async fn describe_stream(&self, name: &StreamName) -> StoreResult<StreamDescription>;

    /// Append up to [`PUT_RECORDS_MAX`] records. A bad record (key, size) fails the whole call and nothing is
    /// written; otherwise each record succeeds or fails on its own (like Kinesis PutRecords), in input order.
    async fn put_records(
        &self,
        name: &StreamName,
        records: Vec<PutRecord>,
    ) -> StoreResult<Vec<StoreResult<PutResult>>>;

    /// The embedded store behind this one, when it is one: callers that can use [`Store::enqueue`] (queue now,
    /// wait for durability later) do so; every other store is used through this trait alone.
    fn embedded(&self) -> Option<&Store> {
        None
    }

    /// Append one record.
    async fn put_record(&self, name: &StreamName, record: PutRecord) -> StoreResult<PutResult> {
        self.put_records(name, vec![record])
            .await?
            .pop()
            .expect("one result per record")
    }

    async fn get_shard_iterator(
        &self,
        name: &StreamName,
        shard: ShardId,
        position: StartingPosition,
    ) -> StoreResult<ShardIterator>;

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limits: ReadLimits,
    ) -> StoreResult<GetRecordsOutput>;

    /// Return once records at or after the iterator's position are readable, the shard is closed, or `timeout`
    /// has passed, whichever comes first (long poll; no sleep loop on the embedded store).
    async fn wait_for_records(&self, iterator: &ShardIterator, timeout: Duration) -> StoreResult<()>;

    async fn split_shard(
        &self,
        name: &StreamName,
        shard: ShardId,
        new_starting_hash_key: u128,
    ) -> StoreResult<()>;
    async fn merge_shards(&self, name: &StreamName, shard: ShardId, adjacent: ShardId) -> StoreResult<()>;
    /// Scale to `target` uniform shards (between half and double the open shards), by splits and merges.
    async fn update_shard_count(&self, name: &StreamName, target: u32) -> StoreResult<()>;
    async fn set_retention_hours(&self, name: &StreamName, hours: u32) -> StoreResult<()>;

    async fn register_consumer(&self, name: &StreamName, consumer: &str) -> StoreResult<ConsumerDescription>;
    async fn deregister_consumer(&self, name: &StreamName, consumer: &str) -> StoreResult<()>;
    async fn list_consumers(&self, name: &StreamName) -> StoreResult<Vec<ConsumerDescription>>;
    /// The consumer's durable checkpoint per shard: the last sequence number it has finished.
    async fn checkpoints(
        &self,
        name: &StreamName,
        consumer: &str,
    ) -> StoreResult<BTreeMap<ShardId, SequenceNumber>>;
    async fn checkpoint(
        &self,
        name: &StreamName,
        consumer: &str,
        shard: ShardId,
        sequence_number: SequenceNumber,
    ) -> StoreResult<()>;
}
