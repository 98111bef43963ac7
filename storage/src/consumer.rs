//! Consumers: read a whole stream shard by shard, in lineage order, with durable checkpoints.
//!
//! # Contract
//!
//! - A shard is *finished* for a consumer when it is closed and the consumer's checkpoint has reached its ending
//!   sequence number (or the shard is no longer described). A shard is *ready* when it is not finished and all its
//!   parents are finished. A consumer reads only ready shards, so it finishes a parent before its children and
//!   per-key order holds across splits and merges.
//! - [`GroupReader::poll`] hands out batches; [`GroupReader::commit`] records a batch as done. A batch that reaches
//!   the end of a closed shard commits the shard's ending sequence number, which is what makes it finished.
//! - Checkpoints are only advanced by `commit`, so after a crash a consumer re-reads at most what it had not
//!   committed (at-least-once; a sink that needs exactly-once keeps its own positions, as delivery does in Delta).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::StreamStore;
use crate::error::StoreResult;
use crate::types::*;

/// Whether `shard` is finished given the consumer's checkpoints.
pub fn is_finished(
    desc: &StreamDescription,
    checkpoints: &BTreeMap<ShardId, SequenceNumber>,
    shard: ShardId,
) -> bool {
    match desc.shard(shard) {
        None => true,
        Some(s) => s
            .ending_sequence_number
            .is_some_and(|end| checkpoints.get(&shard).is_some_and(|c| *c >= end)),
    }
}

/// The shards a consumer may read now, in shard order.
pub fn ready_shards(
    desc: &StreamDescription,
    checkpoints: &BTreeMap<ShardId, SequenceNumber>,
) -> Vec<ShardId> {
    desc.shards
        .iter()
        .filter(|s| !is_finished(desc, checkpoints, s.shard_id))
        .filter(|s| {
            [s.parent_shard_id, s.adjacent_parent_shard_id]
                .into_iter()
                .flatten()
                .all(|p| is_finished(desc, checkpoints, p))
        })
        .map(|s| s.shard_id)
        .collect()
}

/// Records of one shard, handed out by [`GroupReader::poll`].
#[derive(Clone, Debug)]
pub struct Batch {
    pub shard_id: ShardId,
    pub records: Vec<Record>,
    /// Set when this batch reaches the end of a closed shard: its ending sequence number.
    pub end_of_shard: Option<SequenceNumber>,
    pub millis_behind_latest: u64,
}

/// Reads a stream for a named consumer, following resharding lineage.
#[derive(Debug)]
pub struct GroupReader<S: StreamStore + ?Sized> {
    store: Arc<S>,
    stream: StreamName,
    /// `None` for an ephemeral reader, whose checkpoints live in memory only.
    consumer: Option<String>,
    checkpoints: BTreeMap<ShardId, SequenceNumber>,
    iterators: BTreeMap<ShardId, ShardIterator>,
}

impl<S: StreamStore + ?Sized> GroupReader<S> {
    /// A reader that keeps its checkpoints in memory only (for `tail`-like use). With `from_latest`, it starts at
    /// the tip of every open shard; otherwise at the trim horizon of the oldest shards.
    pub async fn ephemeral(store: Arc<S>, stream: StreamName, from_latest: bool) -> StoreResult<Self> {
        let mut reader = Self {
            store,
            stream,
            consumer: None,
            checkpoints: BTreeMap::new(),
            iterators: BTreeMap::new(),
        };
        if from_latest {
            let desc = reader.store.describe_stream(&reader.stream).await?;
            for shard in &desc.shards {
                match shard.ending_sequence_number {
                    Some(end) => {
                        reader.checkpoints.insert(shard.shard_id, end);
                    }
                    None => {
                        let it = reader
                            .store
                            .get_shard_iterator(&reader.stream, shard.shard_id, StartingPosition::Latest)
                            .await?;
                        reader.iterators.insert(shard.shard_id, it);
                    }
                }
            }
        }
        Ok(reader)
    }

    /// Start reading as `consumer`, registering it if it does not exist; resumes after its checkpoints.
    pub async fn new(store: Arc<S>, stream: StreamName, consumer: &str) -> StoreResult<Self> {
        if !store
            .list_consumers(&stream)
            .await?
            .iter()
            .any(|c| c.name == consumer)
        {
            store.register_consumer(&stream, consumer).await?;
        }
        let checkpoints = store.checkpoints(&stream, consumer).await?;
        Ok(Self {
            store,
            stream,
            consumer: Some(consumer.to_string()),
            checkpoints,
            iterators: BTreeMap::new(),
        })
    }

    pub fn checkpoints(&self) -> &BTreeMap<ShardId, SequenceNumber> {
        &self.checkpoints
    }

    /// One read from every ready shard. Batches without records are returned only when they end a shard.
    pub async fn poll(&mut self, limits: ReadLimits) -> StoreResult<Vec<Batch>> {
        let desc = self.store.describe_stream(&self.stream).await?;
        let mut batches = Vec::new();
        for shard_id in ready_shards(&desc, &self.checkpoints) {
            let iterator = match self.iterators.get(&shard_id) {
                Some(it) => it.clone(),
                None => {
                    let position = match self.checkpoints.get(&shard_id) {
                        Some(seq) => StartingPosition::AfterSequenceNumber(*seq),
                        None => StartingPosition::TrimHorizon,
                    };
                    self.store
                        .get_shard_iterator(&self.stream, shard_id, position)
                        .await?
                }
            };
            let out = self.store.get_records(&iterator, limits).await?;
            let end_of_shard = match &out.next_iterator {
                Some(next) => {
                    self.iterators.insert(shard_id, next.clone());
                    None
                }
                None => {
                    self.iterators.remove(&shard_id);
                    desc.shard(shard_id).and_then(|s| s.ending_sequence_number)
                }
            };
            if let Some(consumer) = &self.consumer {
                metrics::gauge!(
                    "freshet_store_iterator_age_ms",
                    "stream" => self.stream.to_string(),
                    "consumer" => consumer.clone(),
                    "shard" => shard_id.to_string()
                )
                .set(out.millis_behind_latest as f64);
            }
            if !out.records.is_empty() || end_of_shard.is_some() {
                batches.push(Batch {
                    shard_id,
                    records: out.records,
                    end_of_shard,
                    millis_behind_latest: out.millis_behind_latest,
                });
            }
        }
        Ok(batches)
    }

    /// Wait until some ready shard has records past this reader's position, or `timeout` passes.
    pub async fn wait(&self, timeout: std::time::Duration) -> StoreResult<()> {
        if self.iterators.is_empty() {
            return Ok(());
        }
        let waits = self
            .iterators
            .values()
            .map(|it| self.store.wait_for_records(it, timeout));
        futures::future::select_all(waits).await.0
    }

    /// Record a batch as processed, durably.
    pub async fn commit(&mut self, batch: &Batch) -> StoreResult<()> {
        let seq = match (batch.end_of_shard, batch.records.last()) {
            (Some(end), _) => end,
            (None, Some(last)) => last.sequence_number,
            (None, None) => return Ok(()),
        };
        if let Some(consumer) = &self.consumer {
            self.store
                .checkpoint(&self.stream, consumer, batch.shard_id, seq)
                .await?;
        }
        self.checkpoints.insert(batch.shard_id, seq);
        Ok(())
    }
}
