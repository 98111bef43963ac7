//! The embedded stream store: streams of shards on local disk, with Kinesis Data Streams semantics.
//!
//! # Layout
//!
//! ```text
//! <data-dir>/LOCK                                    held (flock) while a process has the store open
//! <data-dir>/streams/<stream>/stream.json            description: shards, hash ranges, lineage, retention
//! <data-dir>/streams/<stream>/shards/<index:010>/    segment files (see `segment`)
//! <data-dir>/streams/<stream>/consumers/<name>.json  a named consumer and its per-shard checkpoints
//! ```
//!
//! # Invariants
//!
//! - `stream.json` and consumer files are replaced atomically (write, fsync, rename, fsync directory).
//! - A stream directory without `stream.json` is a create that crashed before it finished, and is removed on open;
//!   a shard directory that `stream.json` does not list is a reshard that crashed before it finished, likewise.
//! - Sequence numbers come from one counter per stream, so they are unique across the stream and strictly increase
//!   within a shard (only the shard's writer takes numbers for it, in order). The counter starts at the creation
//!   time in microseconds, so a stream deleted and created again does not reuse numbers. On open it resumes above
//!   every number held, every shard's starting and ending number, and every segment's base.
//! - A parent shard's ending sequence number is taken after its writer has drained, so it is greater than every
//!   record in the parent and smaller than every record in its children.
//! - Routing, resharding and deletion take the stream's topology lock: an append is routed and queued under the read
//!   lock; a reshard closes shards under the write lock, so no record is ever queued to a closed shard.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StreamStore;
use crate::clock::Clock;
use crate::error::{StoreError, StoreResult};
use crate::hash::{hash_key_cached, uniform_ranges};
use crate::pool::WriterPool;
use crate::shard::{LogConfig, Shard, ShardCore};
use crate::types::*;

/// Records queued by [`Store::enqueue`], not yet known to be durable.
#[derive(Debug)]
pub struct Queued {
    stream: StreamName,
    /// One per record, in input order; records refused before queueing hold their error already.
    results: Vec<StoreResult<PutResult>>,
    /// Per shard: the positions of its records in the input, their data bytes, and the writer's answer.
    waits: Vec<(ShardId, Vec<usize>, usize, StoreResult<WriterAnswer>)>,
}

type WriterAnswer = tokio::sync::oneshot::Receiver<StoreResult<crate::shard::AppendOutcome>>;

impl Queued {
    /// Records in this append.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Wait until every queued record is durable (or has failed): one result per record, in input order.
    pub async fn outcome(self) -> Vec<StoreResult<PutResult>> {
        let Queued {
            stream,
            mut results,
            waits,
        } = self;
        let mut appended = 0u64;
        let mut bytes = 0u64;
        // Records refused before queueing: every record not in a shard's group.
        let mut failed = (results.len() - waits.iter().map(|w| w.1.len()).sum::<usize>()) as u64;
        for (shard_id, positions, shard_bytes, queued) in waits {
            let outcome = match queued {
                Ok(rx) => rx.await.unwrap_or(Err(StoreError::ShuttingDown)),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(outcome) => {
                    appended += positions.len() as u64;
                    bytes += shard_bytes as u64;
                    for (i, sequence_number) in positions.into_iter().zip(outcome.seqs()) {
                        results[i] = Ok(PutResult {
                            shard_id,
                            sequence_number,
                        });
                    }
                }
                Err(e) => {
                    failed += positions.len() as u64;
                    for i in positions {
                        results[i] = Err(e.clone());
                    }
                }
            }
        }
        let labels = [("stream", stream.to_string())];
        metrics::counter!("freshet_store_incoming_records_total", &labels).increment(appended);
        metrics::counter!("freshet_store_incoming_bytes_total", &labels).increment(bytes);
        if failed > 0 {
            metrics::counter!("freshet_store_put_failures_total", &labels).increment(failed);
        }
        results
    }
}

const STREAM_FILE: &str = "stream.json";
const STREAM_FILE_FORMAT: u32 = 1;

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub log: LogConfig,
    /// Largest record (data + partition key); at most [`RECORD_BYTES_MAX_CEILING`].
    pub record_bytes_max: usize,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            log: LogConfig::default(),
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
        }
    }
}

/// The embedded store. Cheap to clone; all clones share one set of streams.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    streams_dir: PathBuf,
    streams: RwLock<BTreeMap<StreamName, Arc<Stream>>>,
    /// Serialises creating and deleting streams.
    catalog: tokio::sync::Mutex<()>,
    /// The thread that writes every shard (declared after `streams`, which it outlives).
    writers: Arc<WriterPool>,
    _lock: File,
}

#[derive(Debug)]
struct Stream {
    name: StreamName,
    dir: PathBuf,
    counter: Arc<AtomicU64>,
    topology: tokio::sync::RwLock<Topology>,
    consumers: Mutex<BTreeMap<String, ConsumerFile>>,
}

#[derive(Debug)]
struct Topology {
    desc: StreamDescription,
    next_shard_index: u32,
    shards: BTreeMap<ShardId, Shard>,
    /// Open shards by hash-key range start, for routing.
    routes: Vec<(HashKeyRange, ShardId)>,
    deleted: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct StreamFile {
    format: u32,
    next_shard_index: u32,
    description: StreamDescription,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConsumerFile {
    consumer: ConsumerDescription,
    checkpoints: BTreeMap<ShardId, SequenceNumber>,
}

/// Write a file so that a crash leaves either the old or the new contents.
fn write_atomic(path: &Path, contents: &[u8]) -> StoreResult<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::from_io(path, "writing", e)
    })
}

fn shard_dir(stream_dir: &Path, id: ShardId) -> PathBuf {
    stream_dir.join("shards").join(format!("{:010}", id.0))
}

impl Topology {
    fn rebuild_routes(&mut self) {
        self.routes = self
            .desc
            .open_shards()
            .map(|s| (s.hash_key_range, s.shard_id))
            .collect();
        self.routes.sort_by_key(|(r, _)| r.start);
    }

    fn route(&self, key: u128) -> ShardId {
        let i = self.routes.partition_point(|(r, _)| r.start <= key) - 1;
        debug_assert!(self.routes[i].0.contains(key));
        self.routes[i].1
    }

    fn shard_desc(&self, stream: &StreamName, id: ShardId) -> StoreResult<&ShardDescription> {
        self.desc.shard(id).ok_or_else(|| StoreError::ShardNotFound {
            stream: stream.to_string(),
            shard: id.to_string(),
        })
    }

    fn open_shard_desc(&self, stream: &StreamName, id: ShardId) -> StoreResult<ShardDescription> {
        let desc = self.shard_desc(stream, id)?;
        if !desc.is_open() {
            return Err(StoreError::ResourceInUse(format!(
                "shard {id} of stream {stream} is closed"
            )));
        }
        Ok(desc.clone())
    }
}

impl Store {
    /// Open (or create) the store in `config.data_dir`, recovering every stream.
    pub fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> StoreResult<Self> {
        if config.record_bytes_max == 0 || config.record_bytes_max > RECORD_BYTES_MAX_CEILING {
            return Err(StoreError::InvalidArgument(format!(
                "record_bytes_max {} must be between 1 and {RECORD_BYTES_MAX_CEILING}",
                config.record_bytes_max
            )));
        }
        let streams_dir = config.data_dir.join("streams");
        std::fs::create_dir_all(&streams_dir)
            .map_err(|e| StoreError::from_io(&streams_dir, "creating data directory", e))?;
        let lock_path = config.data_dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::from_io(&lock_path, "opening", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(config.data_dir.clone()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::from_io(&lock_path, "locking", e));
            }
        }
        let writers = Arc::new(WriterPool::start(config.log.io_uring)?);
        let mut streams = BTreeMap::new();
        let entries =
            std::fs::read_dir(&streams_dir).map_err(|e| StoreError::from_io(&streams_dir, "listing", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::from_io(&streams_dir, "listing", e))?;
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !dir.join(STREAM_FILE).exists() {
                tracing::warn!(dir = %dir.display(), "removing a stream directory left by an unfinished create or delete");
                std::fs::remove_dir_all(&dir).map_err(|e| StoreError::from_io(&dir, "removing", e))?;
                continue;
            }
            let stream = Stream::recover(dir, &config, &clock, &writers)?;
            streams.insert(stream.name.clone(), Arc::new(stream));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                clock,
                streams_dir,
                streams: RwLock::new(streams),
                catalog: tokio::sync::Mutex::new(()),
                writers,
                _lock: lock,
            }),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    fn stream(&self, name: &StreamName) -> StoreResult<Arc<Stream>> {
        self.inner
            .streams
            .read()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::StreamNotFound(name.to_string()))
    }

    /// Delete expired segments of every stream (by age, then by size). Returns how many were deleted.
    /// The binary calls this periodically; tests call it with a manual clock.
    pub async fn enforce_retention(&self) -> StoreResult<usize> {
        let streams: Vec<Arc<Stream>> = self.inner.streams.read().unwrap().values().cloned().collect();
        let now = self.inner.clock.now_ms();
        let mut deleted = 0;
        for stream in streams {
            let topology = stream.topology.read().await;
            if topology.deleted {
                continue;
            }
            let cutoff = now - i64::from(topology.desc.retention_hours) * 3_600_000;
            let bytes_max = topology.desc.retention_bytes_per_shard;
            for shard in topology.shards.values() {
                let (n, newest_expired) = shard.core.expire(cutoff, bytes_max, shard.is_open())?;
                deleted += n;
                if newest_expired && shard.is_open() {
                    shard.roll().await?;
                    deleted += shard.core.expire(cutoff, bytes_max, true)?.0;
                }
            }
        }
        Ok(deleted)
    }

    /// Bound each shard's size (not a Kinesis operation; set from config). `None` removes the bound.
    pub async fn set_retention_bytes(
        &self,
        name: &StreamName,
        bytes_per_shard: Option<u64>,
    ) -> StoreResult<()> {
        let stream = self.stream(name)?;
        let mut topology = stream.topology.write().await;
        let mut desc = topology.desc.clone();
        desc.retention_bytes_per_shard = bytes_per_shard;
        stream.save(&desc, topology.next_shard_index)?;
        topology.desc = desc;
        Ok(())
    }

    /// Stop every writer after its queued appends are written. Appends after this fail.
    pub async fn shutdown(&self) {
        let streams: Vec<Arc<Stream>> = self.inner.streams.read().unwrap().values().cloned().collect();
        for stream in streams {
            let mut topology = stream.topology.write().await;
            let shards = std::mem::take(&mut topology.shards);
            let _ = tokio::task::spawn_blocking(move || drop(shards)).await;
        }
    }

    /// Route `records` to their shards and queue them on the shards' writers, in order; returns once they are
    /// queued (waiting while a writer's queue is full), and [`Queued::outcome`] then waits until they are durable.
    ///
    /// For callers that append in a pipeline (the MQTT gateway): records queued by one call are ahead of those of
    /// every later call on their shard, so a caller that waits for each `enqueue` before the next keeps its order
    /// without waiting for durability in between. Unlike [`StreamStore::put_records`] there is no limit on the
    /// count, and a record over the limits fails on its own (its result is the error) instead of the whole call.
    pub async fn enqueue(&self, name: &StreamName, records: Vec<PutRecord>) -> StoreResult<Queued> {
        let stream = self.stream(name)?;
        let count = records.len();
        let mut results: Vec<StoreResult<PutResult>> =
            (0..count).map(|_| Err(StoreError::ShuttingDown)).collect();
        let mut waits = Vec::new();
        let topology = stream.topology.read().await;
        if topology.deleted {
            return Err(StoreError::StreamNotFound(name.to_string()));
        }
        let mut groups: BTreeMap<ShardId, (Vec<usize>, Vec<PutRecord>)> = BTreeMap::new();
        for (i, record) in records.into_iter().enumerate() {
            if let Err(e) = self.validate_record(i, &record) {
                results[i] = Err(e);
                continue;
            }
            let key = record
                .explicit_hash_key
                .unwrap_or_else(|| hash_key_cached(&record.partition_key));
            // A connection's records usually share one partition key, so the first shard's room is all of them.
            let group = groups
                .entry(topology.route(key))
                .or_insert_with(|| (Vec::with_capacity(count - i), Vec::with_capacity(count - i)));
            group.0.push(i);
            group.1.push(record);
        }
        for (id, (positions, records)) in groups {
            let bytes = records.iter().map(|r| r.data.len()).sum::<usize>();
            let queued = match topology.shards.get(&id) {
                Some(shard) => shard.append(records).await,
                None => Err(StoreError::ShuttingDown),
            };
            waits.push((id, positions, bytes, queued));
        }
        Ok(Queued {
            stream: name.clone(),
            results,
            waits,
        })
    }

    fn validate_record(&self, i: usize, record: &PutRecord) -> StoreResult<()> {
        let chars = record.partition_key.chars().count();
        if chars == 0 || chars > PARTITION_KEY_CHARS_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "record {i}: partition key must be 1 to {PARTITION_KEY_CHARS_MAX} characters, not {chars}"
            )));
        }
        let max = self.inner.config.record_bytes_max;
        let size = record.data.len() + record.partition_key.len();
        if size > max {
            return Err(StoreError::InvalidArgument(format!(
                "record {i}: {size} bytes of data and partition key exceed the record limit of {max} bytes"
            )));
        }
        Ok(())
    }

    fn validate_put(&self, records: &[PutRecord]) -> StoreResult<()> {
        if records.is_empty() || records.len() > PUT_RECORDS_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "a put holds 1 to {PUT_RECORDS_MAX} records, not {}",
                records.len()
            )));
        }
        for (i, record) in records.iter().enumerate() {
            self.validate_record(i, record)?;
        }
        Ok(())
    }

    /// Close `shard` (its writer drained) and return its ending sequence number.
    async fn close_shard(
        stream: &Stream,
        topology: &mut Topology,
        id: ShardId,
    ) -> StoreResult<SequenceNumber> {
        let mut shard = topology
            .shards
            .remove(&id)
            .ok_or_else(|| StoreError::Internal(format!("{id} has no log")))?;
        let shard = tokio::task::spawn_blocking(move || {
            shard.close();
            shard
        })
        .await
        .map_err(|e| StoreError::Internal(format!("closing shard: {e}")))?;
        topology.shards.insert(id, shard);
        Ok(SequenceNumber::from_u64(
            stream.counter.fetch_add(1, Ordering::SeqCst),
        ))
    }

    /// Reopen shards closed by a reshard whose description could not be saved.
    fn reopen(&self, stream: &Stream, topology: &mut Topology, ids: &[ShardId]) -> StoreResult<()> {
        for id in ids {
            if let Some(old) = topology.shards.remove(id) {
                let core = old.core.clone();
                drop(old);
                let reopened = ShardCore::recover(
                    *id,
                    core.dir.clone(),
                    self.inner.config.log.index_interval_bytes,
                    false,
                )?;
                let shard = Shard::open(
                    reopened,
                    stream.counter.clone(),
                    self.inner.clock.clone(),
                    &self.inner.config.log,
                    &self.inner.writers,
                )?;
                topology.shards.insert(*id, shard);
            }
        }
        Ok(())
    }

    /// Replace `parents` by `children` (hash ranges with their lineage): children are created on disk first, then
    /// the parents closed, then the description saved. A crash at any point leaves the old or the new topology.
    async fn reshard(
        &self,
        stream: &Stream,
        topology: &mut Topology,
        parents: &[ShardId],
        children: Vec<(HashKeyRange, Option<ShardId>, Option<ShardId>)>,
    ) -> StoreResult<()> {
        let mut created = Vec::new();
        for (range, parent, adjacent) in children {
            let id = ShardId(topology.next_shard_index + created.len() as u32);
            let base = stream.counter.fetch_add(1, Ordering::SeqCst);
            let dir = shard_dir(&stream.dir, id);
            match ShardCore::create(id, dir.clone(), base) {
                Ok(core) => created.push((core, range, parent, adjacent, base)),
                Err(e) => {
                    for (core, ..) in &created {
                        let _ = std::fs::remove_dir_all(&core.dir);
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        }
        let saved = topology.desc.clone();
        let now_ms = self.inner.clock.now_ms();
        for &parent in parents {
            let ending = Self::close_shard(stream, topology, parent).await?;
            let desc = topology
                .desc
                .shards
                .iter_mut()
                .find(|s| s.shard_id == parent)
                .expect("parent described");
            desc.ending_sequence_number = Some(ending);
            desc.closed_ms = Some(now_ms);
        }
        let next_shard_index = topology.next_shard_index + created.len() as u32;
        for (core, range, parent, adjacent, base) in &created {
            topology.desc.shards.push(ShardDescription {
                shard_id: core.id,
                parent_shard_id: *parent,
                adjacent_parent_shard_id: *adjacent,
                hash_key_range: *range,
                starting_sequence_number: SequenceNumber::from_u64(*base),
                ending_sequence_number: None,
                opened_ms: Some(now_ms),
                closed_ms: None,
            });
        }
        if let Err(e) = stream.save(&topology.desc, next_shard_index) {
            topology.desc = saved;
            for (core, ..) in &created {
                let _ = std::fs::remove_dir_all(&core.dir);
            }
            self.reopen(stream, topology, parents)?;
            return Err(e);
        }
        topology.next_shard_index = next_shard_index;
        for (core, ..) in created {
            let id = core.id;
            let shard = Shard::open(
                core,
                stream.counter.clone(),
                self.inner.clock.clone(),
                &self.inner.config.log,
                &self.inner.writers,
            )?;
            topology.shards.insert(id, shard);
        }
        topology.rebuild_routes();
        Ok(())
    }

    async fn split_locked(
        &self,
        stream: &Stream,
        topology: &mut Topology,
        shard: ShardId,
        new_starting_hash_key: u128,
    ) -> StoreResult<()> {
        let parent = topology.open_shard_desc(&stream.name, shard)?;
        let range = parent.hash_key_range;
        if new_starting_hash_key <= range.start || new_starting_hash_key > range.end {
            return Err(StoreError::InvalidArgument(format!(
                "new starting hash key {new_starting_hash_key} must be within ({}, {}] of shard {shard}",
                range.start, range.end
            )));
        }
        let low = HashKeyRange {
            start: range.start,
            end: new_starting_hash_key - 1,
        };
        let high = HashKeyRange {
            start: new_starting_hash_key,
            end: range.end,
        };
        self.reshard(
            stream,
            topology,
            &[shard],
            vec![(low, Some(shard), None), (high, Some(shard), None)],
        )
        .await
    }

    async fn merge_locked(
        &self,
        stream: &Stream,
        topology: &mut Topology,
        shard: ShardId,
        adjacent: ShardId,
    ) -> StoreResult<ShardId> {
        let a = topology.open_shard_desc(&stream.name, shard)?;
        let b = topology.open_shard_desc(&stream.name, adjacent)?;
        let (lo, hi) = if a.hash_key_range.start < b.hash_key_range.start {
            (&a, &b)
        } else {
            (&b, &a)
        };
        if shard == adjacent || lo.hash_key_range.end.checked_add(1) != Some(hi.hash_key_range.start) {
            return Err(StoreError::InvalidArgument(format!(
                "shards {shard} and {adjacent} are not adjacent: their hash key ranges must touch"
            )));
        }
        let range = HashKeyRange {
            start: lo.hash_key_range.start,
            end: hi.hash_key_range.end,
        };
        let child = ShardId(topology.next_shard_index);
        self.reshard(
            stream,
            topology,
            &[shard, adjacent],
            vec![(range, Some(shard), Some(adjacent))],
        )
        .await?;
        Ok(child)
    }
}

impl Stream {
    fn recover(
        dir: PathBuf,
        config: &StoreConfig,
        clock: &Arc<dyn Clock>,
        writers: &Arc<WriterPool>,
    ) -> StoreResult<Self> {
        let path = dir.join(STREAM_FILE);
        let bytes = std::fs::read(&path).map_err(|e| StoreError::from_io(&path, "reading", e))?;
        let file: StreamFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if file.format != STREAM_FILE_FORMAT {
            return Err(StoreError::Corrupt {
                path,
                offset: 0,
                reason: format!("unknown format {}", file.format),
            });
        }
        let desc = file.description;
        // Shard directories the description does not list are reshards that crashed before they finished.
        let shards_dir = dir.join("shards");
        if let Ok(entries) = std::fs::read_dir(&shards_dir) {
            for entry in entries.flatten() {
                let listed = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|i| desc.shard(ShardId(i)).is_some());
                if !listed {
                    tracing::warn!(dir = %entry.path().display(), "removing a shard directory left by an unfinished reshard");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let mut floor = (desc.created_ms as u64).saturating_mul(1000);
        let mut cores = Vec::new();
        for s in &desc.shards {
            let closed = s.ending_sequence_number.is_some();
            let core = ShardCore::recover(
                s.shard_id,
                shard_dir(&dir, s.shard_id),
                config.log.index_interval_bytes,
                closed,
            )?;
            floor = floor
                .max(core.next_seq_floor())
                .max(s.starting_sequence_number.to_u64()? + 1)
                .max(s.ending_sequence_number.map_or(Ok(0), |e| e.to_u64())? + 1);
            cores.push((core, closed));
        }
        let counter = Arc::new(AtomicU64::new(floor));
        let mut shards = BTreeMap::new();
        for (core, closed) in cores {
            let id = core.id;
            let shard = if closed {
                Shard::closed(core)
            } else {
                Shard::open(core, counter.clone(), clock.clone(), &config.log, writers)?
            };
            shards.insert(id, shard);
        }
        let consumers = load_consumers(&dir.join("consumers"))?;
        let mut topology = Topology {
            desc,
            next_shard_index: file.next_shard_index,
            shards,
            routes: Vec::new(),
            deleted: false,
        };
        topology.rebuild_routes();
        Ok(Self {
            name: topology.desc.name.clone(),
            dir,
            counter,
            topology: tokio::sync::RwLock::new(topology),
            consumers: Mutex::new(consumers),
        })
    }

    fn save(&self, desc: &StreamDescription, next_shard_index: u32) -> StoreResult<()> {
        let file = StreamFile {
            format: STREAM_FILE_FORMAT,
            next_shard_index,
            description: desc.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Internal(e.to_string()))?;
        write_atomic(&self.dir.join(STREAM_FILE), &bytes)
    }

    fn consumer_path(&self, consumer: &str) -> PathBuf {
        self.dir.join("consumers").join(format!("{consumer}.json"))
    }

    fn save_consumer(&self, file: &ConsumerFile) -> StoreResult<()> {
        let dir = self.dir.join("consumers");
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::from_io(&dir, "creating", e))?;
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| StoreError::Internal(e.to_string()))?;
        write_atomic(&self.consumer_path(&file.consumer.name), &bytes)
    }

    fn consumer_not_found(&self, consumer: &str) -> StoreError {
        StoreError::ConsumerNotFound {
            stream: self.name.to_string(),
            consumer: consumer.to_string(),
        }
    }
}

fn load_consumers(dir: &Path) -> StoreResult<BTreeMap<String, ConsumerFile>> {
    let mut consumers = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(consumers);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&path).map_err(|e| StoreError::from_io(&path, "reading", e))?;
            let file: ConsumerFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: e.to_string(),
            })?;
            consumers.insert(file.consumer.name.clone(), file);
        } else if path.extension().is_some_and(|e| e == "tmp") {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(consumers)
}

#[async_trait]
impl StreamStore for Store {
    async fn create_stream(&self, name: &StreamName, shard_count: u32) -> StoreResult<()> {
        if shard_count == 0 || shard_count > SHARDS_PER_STREAM_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "shard count must be between 1 and {SHARDS_PER_STREAM_MAX}, not {shard_count}"
            )));
        }
        let _catalog = self.inner.catalog.lock().await;
        if self.inner.streams.read().unwrap().contains_key(name) {
            return Err(StoreError::StreamExists(name.to_string()));
        }
        let dir = self.inner.streams_dir.join(name.as_str());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| StoreError::from_io(&dir, "removing leftover", e))?;
        }
        let created_ms = self.inner.clock.now_ms();
        let counter = Arc::new(AtomicU64::new((created_ms.max(0) as u64).saturating_mul(1000)));
        let result = (|| {
            let mut shards = BTreeMap::new();
            let mut descs = Vec::new();
            for (i, range) in uniform_ranges(shard_count).into_iter().enumerate() {
                let id = ShardId(i as u32);
                let base = counter.fetch_add(1, Ordering::SeqCst);
                let core = ShardCore::create(id, shard_dir(&dir, id), base)?;
                shards.insert(id, core);
                descs.push(ShardDescription {
                    shard_id: id,
                    parent_shard_id: None,
                    adjacent_parent_shard_id: None,
                    hash_key_range: range,
                    starting_sequence_number: SequenceNumber::from_u64(base),
                    ending_sequence_number: None,
                    opened_ms: None,
                    closed_ms: None,
                });
            }
            let desc = StreamDescription {
                name: name.clone(),
                status: StreamStatus::Active,
                retention_hours: RETENTION_HOURS_DEFAULT,
                retention_bytes_per_shard: None,
                created_ms,
                shards: descs,
            };
            let mut stream = Stream {
                name: name.clone(),
                dir: dir.clone(),
                counter: counter.clone(),
                topology: tokio::sync::RwLock::new(Topology {
                    desc: desc.clone(),
                    next_shard_index: shard_count,
                    shards: BTreeMap::new(),
                    routes: Vec::new(),
                    deleted: false,
                }),
                consumers: Mutex::new(BTreeMap::new()),
            };
            stream.save(&desc, shard_count)?;
            let mut opened = BTreeMap::new();
            for (id, core) in shards {
                opened.insert(
                    id,
                    Shard::open(
                        core,
                        counter.clone(),
                        self.inner.clock.clone(),
                        &self.inner.config.log,
                        &self.inner.writers,
                    )?,
                );
            }
            let topology = stream.topology.get_mut();
            topology.shards = opened;
            topology.rebuild_routes();
            Ok(stream)
        })();
        match result {
            Ok(stream) => {
                self.inner
                    .streams
                    .write()
                    .unwrap()
                    .insert(name.clone(), Arc::new(stream));
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn delete_stream(&self, name: &StreamName) -> StoreResult<()> {
        let _catalog = self.inner.catalog.lock().await;
        let stream = self.stream(name)?;
        let mut topology = stream.topology.write().await;
        topology.deleted = true;
        topology.desc.status = StreamStatus::Deleting;
        let shards = std::mem::take(&mut topology.shards);
        tokio::task::spawn_blocking(move || drop(shards))
            .await
            .map_err(|e| StoreError::Internal(format!("stopping writers: {e}")))?;
        // Rename first so a crash mid-removal leaves a directory that open() removes, not a half stream.
        let trash = self
            .inner
            .streams_dir
            .join(format!(".deleted-{}-{}", name, self.inner.clock.now_ms()));
        std::fs::rename(&stream.dir, &trash).map_err(|e| StoreError::from_io(&stream.dir, "deleting", e))?;
        self.inner.streams.write().unwrap().remove(name);
        std::fs::remove_dir_all(&trash).map_err(|e| StoreError::from_io(&trash, "deleting", e))?;
        Ok(())
    }

    async fn list_streams(&self) -> StoreResult<Vec<StreamName>> {
        Ok(self.inner.streams.read().unwrap().keys().cloned().collect())
    }

    async fn describe_stream(&self, name: &StreamName) -> StoreResult<StreamDescription> {
        let stream = self.stream(name)?;
        let topology = stream.topology.read().await;
        if topology.deleted {
            return Err(StoreError::StreamNotFound(name.to_string()));
        }
        Ok(topology.desc.clone())
    }

    fn embedded(&self) -> Option<&Store> {
        Some(self)
    }

    async fn put_records(
        &self,
        name: &StreamName,
        records: Vec<PutRecord>,
    ) -> StoreResult<Vec<StoreResult<PutResult>>> {
        self.validate_put(&records)?;
        Ok(self.enqueue(name, records).await?.outcome().await)
    }

    async fn get_shard_iterator(
        &self,
        name: &StreamName,
        shard: ShardId,
        position: StartingPosition,
    ) -> StoreResult<ShardIterator> {
        let stream = self.stream(name)?;
        let topology = stream.topology.read().await;
        let desc = topology.shard_desc(name, shard)?;
        let core = &topology.shards.get(&shard).ok_or(StoreError::ShuttingDown)?.core;
        let tip = core.tip();
        let start = desc.starting_sequence_number.to_u64()?;
        let check = |seq: SequenceNumber| -> StoreResult<u64> {
            let newest = tip.last_seq.unwrap_or(start);
            let held = SequenceNumber::from_u64(start)..=SequenceNumber::from_u64(newest.max(start));
            if !held.contains(&seq) {
                return Err(StoreError::InvalidArgument(format!(
                    "sequence number {seq} is not in shard {shard} of stream {name} (it holds {start} to {newest})"
                )));
            }
            seq.to_u64()
        };
        let next = match position {
            StartingPosition::TrimHorizon => core.first_seq().unwrap_or(start).max(start),
            StartingPosition::Latest => tip.last_seq.map_or(start, |l| l + 1),
            StartingPosition::AtSequenceNumber(seq) => check(seq)?,
            StartingPosition::AfterSequenceNumber(seq) => check(seq)? + 1,
            StartingPosition::AtTimestamp(at_ms) => match core.seq_at_timestamp(at_ms)? {
                Some(seq) => seq,
                None => tip.last_seq.map_or(start, |l| l + 1),
            },
        };
        Ok(ShardIterator {
            stream: name.clone(),
            shard_id: shard,
            next: SequenceNumber::from_u64(next),
        })
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limits: ReadLimits,
    ) -> StoreResult<GetRecordsOutput> {
        limits.validate()?;
        let stream = self.stream(&iterator.stream)?;
        let (core, children) = {
            let topology = stream.topology.read().await;
            if topology.deleted {
                return Err(StoreError::StreamNotFound(iterator.stream.to_string()));
            }
            topology.shard_desc(&iterator.stream, iterator.shard_id)?;
            let core = topology
                .shards
                .get(&iterator.shard_id)
                .ok_or(StoreError::ShuttingDown)?
                .core
                .clone();
            let children: Vec<ShardId> = topology
                .desc
                .shards
                .iter()
                .filter(|s| {
                    s.parent_shard_id == Some(iterator.shard_id)
                        || s.adjacent_parent_shard_id == Some(iterator.shard_id)
                })
                .map(|s| s.shard_id)
                .collect();
            (core, children)
        };
        let tip = core.tip();
        // Positions of this store fit in 64 bits; a larger one is an iterator from elsewhere (AWS).
        let from = iterator.next.to_u64()?;
        let (records, next) = if tip.last_seq.is_some_and(|l| from <= l) {
            let limits = ReadLimits {
                bytes_max: limits.bytes_max.clamp(1, GET_BYTES_MAX),
                ..limits
            };
            blocking_io(|| core.read(from, limits))?
        } else {
            (Vec::new(), from)
        };
        let has_more = tip.last_seq.is_some_and(|l| next <= l);
        let millis_behind_latest = match records.last() {
            Some(last) if has_more => (self.inner.clock.now_ms() - last.arrival_ms).max(0) as u64,
            _ => 0,
        };
        let ended = tip.closed && !has_more;
        Ok(GetRecordsOutput {
            records,
            next_iterator: (!ended).then(|| ShardIterator {
                next: SequenceNumber::from_u64(next),
                ..iterator.clone()
            }),
            millis_behind_latest,
            child_shards: if ended { children } else { Vec::new() },
        })
    }

    async fn wait_for_records(&self, iterator: &ShardIterator, timeout: Duration) -> StoreResult<()> {
        let stream = self.stream(&iterator.stream)?;
        let mut tip = {
            let topology = stream.topology.read().await;
            topology.shard_desc(&iterator.stream, iterator.shard_id)?;
            topology
                .shards
                .get(&iterator.shard_id)
                .ok_or(StoreError::ShuttingDown)?
                .core
                .subscribe()
        };
        let ready = |t: &crate::shard::Tip| {
            t.closed
                || t.last_seq
                    .is_some_and(|l| iterator.next <= SequenceNumber::from_u64(l))
        };
        let _ = tokio::time::timeout(timeout, tip.wait_for(ready)).await;
        Ok(())
    }

    async fn split_shard(
        &self,
        name: &StreamName,
        shard: ShardId,
        new_starting_hash_key: u128,
    ) -> StoreResult<()> {
        let stream = self.stream(name)?;
        let mut topology = stream.topology.write().await;
        self.split_locked(&stream, &mut topology, shard, new_starting_hash_key)
            .await
    }

    async fn merge_shards(&self, name: &StreamName, shard: ShardId, adjacent: ShardId) -> StoreResult<()> {
        let stream = self.stream(name)?;
        let mut topology = stream.topology.write().await;
        self.merge_locked(&stream, &mut topology, shard, adjacent)
            .await
            .map(|_| ())
    }

    async fn update_shard_count(&self, name: &StreamName, target: u32) -> StoreResult<()> {
        let stream = self.stream(name)?;
        let mut topology = stream.topology.write().await;
        let current = topology.routes.len() as u32;
        if target == 0
            || target > SHARDS_PER_STREAM_MAX
            || target > current * 2
            || target < current.div_ceil(2)
        {
            return Err(StoreError::InvalidArgument(format!(
                "target shard count {target} must be between half and double the {current} open shards \
                 (and at most {SHARDS_PER_STREAM_MAX})"
            )));
        }
        let targets = uniform_ranges(target);
        // Split every open shard that a target boundary falls inside...
        for boundary in targets.iter().skip(1).map(|r| r.start) {
            let id = topology.route(boundary);
            let range = topology.shard_desc(name, id)?.hash_key_range;
            if range.start != boundary {
                self.split_locked(&stream, &mut topology, id, boundary).await?;
            }
        }
        // ...then merge the open shards inside each target range into one.
        for range in targets {
            loop {
                let inside: Vec<ShardId> = topology
                    .routes
                    .iter()
                    .filter(|(r, _)| range.start <= r.start && r.end <= range.end)
                    .map(|(_, id)| *id)
                    .collect();
                if inside.len() < 2 {
                    break;
                }
                self.merge_locked(&stream, &mut topology, inside[0], inside[1])
                    .await?;
            }
        }
        Ok(())
    }

    async fn set_retention_hours(&self, name: &StreamName, hours: u32) -> StoreResult<()> {
        if !(RETENTION_HOURS_MIN..=RETENTION_HOURS_MAX).contains(&hours) {
            return Err(StoreError::InvalidArgument(format!(
                "retention must be {RETENTION_HOURS_MIN} to {RETENTION_HOURS_MAX} hours, not {hours}"
            )));
        }
        let stream = self.stream(name)?;
        let mut topology = stream.topology.write().await;
        let mut desc = topology.desc.clone();
        desc.retention_hours = hours;
        stream.save(&desc, topology.next_shard_index)?;
        topology.desc = desc;
        Ok(())
    }

    async fn register_consumer(&self, name: &StreamName, consumer: &str) -> StoreResult<ConsumerDescription> {
        validate_consumer_name(consumer)?;
        let stream = self.stream(name)?;
        let mut consumers = stream.consumers.lock().unwrap();
        if consumers.contains_key(consumer) {
            return Err(StoreError::ConsumerExists {
                stream: name.to_string(),
                consumer: consumer.to_string(),
            });
        }
        let file = ConsumerFile {
            consumer: ConsumerDescription {
                name: consumer.to_string(),
                created_ms: self.inner.clock.now_ms(),
            },
            checkpoints: BTreeMap::new(),
        };
        stream.save_consumer(&file)?;
        let description = file.consumer.clone();
        consumers.insert(consumer.to_string(), file);
        Ok(description)
    }

    async fn deregister_consumer(&self, name: &StreamName, consumer: &str) -> StoreResult<()> {
        let stream = self.stream(name)?;
        let mut consumers = stream.consumers.lock().unwrap();
        if consumers.remove(consumer).is_none() {
            return Err(stream.consumer_not_found(consumer));
        }
        let path = stream.consumer_path(consumer);
        std::fs::remove_file(&path).map_err(|e| StoreError::from_io(&path, "removing", e))
    }

    async fn list_consumers(&self, name: &StreamName) -> StoreResult<Vec<ConsumerDescription>> {
        let stream = self.stream(name)?;
        Ok(stream
            .consumers
            .lock()
            .unwrap()
            .values()
            .map(|c| c.consumer.clone())
            .collect())
    }

    async fn checkpoints(
        &self,
        name: &StreamName,
        consumer: &str,
    ) -> StoreResult<BTreeMap<ShardId, SequenceNumber>> {
        let stream = self.stream(name)?;
        let consumers = stream.consumers.lock().unwrap();
        let file = consumers
            .get(consumer)
            .ok_or_else(|| stream.consumer_not_found(consumer))?;
        Ok(file.checkpoints.clone())
    }

    async fn checkpoint(
        &self,
        name: &StreamName,
        consumer: &str,
        shard: ShardId,
        sequence_number: SequenceNumber,
    ) -> StoreResult<()> {
        let stream = self.stream(name)?;
        {
            let topology = stream.topology.read().await;
            topology.shard_desc(name, shard)?;
        }
        let mut consumers = stream.consumers.lock().unwrap();
        let file = consumers
            .get_mut(consumer)
            .ok_or_else(|| stream.consumer_not_found(consumer))?;
        let mut updated = file.clone();
        updated.checkpoints.insert(shard, sequence_number);
        stream.save_consumer(&updated)?;
        *file = updated;
        Ok(())
    }
}

/// Run blocking file IO from async code: on a multi-threaded runtime tell tokio first, so other tasks move off
/// this worker; elsewhere (current-thread runtimes, tests) just run it.
fn blocking_io<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    fn open(dir: &Path, clock: Arc<ManualClock>) -> Store {
        let mut config = StoreConfig::new(dir);
        config.log.segment_bytes_max = 2048;
        Store::open(config, clock).unwrap()
    }

    fn name() -> StreamName {
        StreamName::new("s").unwrap()
    }

    async fn put(store: &Store, key: &str, data: &str) -> PutResult {
        store
            .put_record(&name(), PutRecord::new(key, data.to_string()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_data_directory_is_opened_by_one_store_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let first = open(dir.path(), clock.clone());
        let err = Store::open(StoreConfig::new(dir.path()), clock.clone()).unwrap_err();
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        drop(first);
        open(dir.path(), clock);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waiting_at_the_tip_is_woken_by_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), Arc::new(ManualClock::new(1_000)));
        store.create_stream(&name(), 1).await.unwrap();
        let it = store
            .get_shard_iterator(&name(), ShardId(0), StartingPosition::Latest)
            .await
            .unwrap();
        let waiter = {
            let (store, it) = (store.clone(), it.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                store
                    .wait_for_records(&it, Duration::from_secs(30))
                    .await
                    .unwrap();
                started.elapsed()
            })
        };
        put(&store, "k", "hello").await;
        let waited = waiter.await.unwrap();
        assert!(
            waited < Duration::from_secs(30),
            "woken by the append, not the timeout"
        );
        let out = store.get_records(&it, ReadLimits::default()).await.unwrap();
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.millis_behind_latest, 0);
    }

    /// With fsync `always` the writer writes whole blocks with `O_DIRECT`, rewriting the block its records end in
    /// (kept in memory, and read back from the file at open): groups of every size, ending anywhere in a block,
    /// read back byte for byte, before and after the store is reopened in the middle of a block.
    #[tokio::test]
    async fn groups_ending_anywhere_in_a_block_read_back_before_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let config = StoreConfig::new(dir.path());
        assert_eq!(config.log.fsync, crate::shard::FsyncPolicy::Always);
        let mut expected = Vec::new();
        let mut len = 1usize;
        for round in 0..2 {
            let store = Store::open(config.clone(), clock.clone()).unwrap();
            if round == 0 {
                store.create_stream(&name(), 1).await.unwrap();
            }
            for i in 0..60 {
                // Lengths from 1 byte to a few blocks, so group ends fall all over the blocks.
                len = (len * 7 + 13) % 9_000 + 1;
                let records: Vec<PutRecord> = (0..1 + i % 3)
                    .map(|j| {
                        let data: Vec<u8> = (0..len).map(|b| (b * 31 + i * 7 + j + round) as u8).collect();
                        PutRecord::new(format!("k{i}"), data)
                    })
                    .collect();
                expected.extend(records.iter().map(|r| r.data.clone()));
                let out = store.put_records(&name(), records).await.unwrap();
                assert!(out.iter().all(Result::is_ok));
            }
            let it = store
                .get_shard_iterator(&name(), ShardId(0), StartingPosition::TrimHorizon)
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut it = Some(it);
            while let Some(i) = it.take() {
                let out = store.get_records(&i, ReadLimits::default()).await.unwrap();
                if out.records.is_empty() {
                    break;
                }
                got.extend(out.records.into_iter().map(|r| r.data));
                it = out.next_iterator;
            }
            assert_eq!(got.len(), expected.len(), "round {round}");
            for (k, (g, w)) in got.iter().zip(&expected).enumerate() {
                assert_eq!(&g[..], &w[..], "round {round}: record {k}");
            }
        }
    }

    #[tokio::test]
    async fn at_timestamp_and_latest_follow_arrival_times() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(10_000));
        let store = open(dir.path(), clock.clone());
        store.create_stream(&name(), 1).await.unwrap();
        let a = put(&store, "k", "a").await;
        clock.set(20_000);
        let b = put(&store, "k", "b").await;
        let at = |ms| StartingPosition::AtTimestamp(ms);
        for (position, expected) in [
            (at(5_000), Some(a)),
            (at(10_001), Some(b)),
            (at(20_000), Some(b)),
            (at(30_000), None),
        ] {
            let it = store
                .get_shard_iterator(&name(), ShardId(0), position)
                .await
                .unwrap();
            let out = store.get_records(&it, ReadLimits::default()).await.unwrap();
            assert_eq!(
                out.records.first().map(|r| r.sequence_number),
                expected.map(|p| p.sequence_number)
            );
        }
        let latest = store
            .get_shard_iterator(&name(), ShardId(0), StartingPosition::Latest)
            .await
            .unwrap();
        assert!(
            store
                .get_records(&latest, ReadLimits::default())
                .await
                .unwrap()
                .records
                .is_empty()
        );
        let c = put(&store, "k", "c").await;
        let out = store.get_records(&latest, ReadLimits::default()).await.unwrap();
        assert_eq!(
            out.records.iter().map(|r| r.sequence_number).collect::<Vec<_>>(),
            vec![c.sequence_number]
        );
    }

    #[tokio::test]
    async fn size_retention_deletes_the_oldest_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), Arc::new(ManualClock::new(1_000)));
        store.create_stream(&name(), 1).await.unwrap();
        let mut seqs = Vec::new();
        for i in 0..100 {
            seqs.push(put(&store, "k", &format!("{i:0>200}")).await.sequence_number);
        }
        store.set_retention_bytes(&name(), Some(6_000)).await.unwrap();
        assert!(store.enforce_retention().await.unwrap() > 0);
        let it = store
            .get_shard_iterator(&name(), ShardId(0), StartingPosition::TrimHorizon)
            .await
            .unwrap();
        let held: Vec<SequenceNumber> = store
            .get_records(&it, ReadLimits::default())
            .await
            .unwrap()
            .records
            .iter()
            .map(|r| r.sequence_number)
            .collect();
        assert!(!held.is_empty() && held.len() < 100, "kept {}", held.len());
        assert_eq!(
            held[..],
            seqs[100 - held.len()..],
            "what remains is the newest suffix"
        );
        let bytes: u64 = {
            let stream = store.stream(&name()).unwrap();
            let topology = stream.topology.read().await;
            topology.shards.values().map(|s| s.core.bytes()).sum()
        };
        assert!(bytes <= 6_000 + 2_048, "shard holds {bytes} bytes");
    }

    #[tokio::test]
    async fn checkpoints_survive_a_restart_and_a_recreated_stream_does_not_reuse_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let store = open(dir.path(), clock.clone());
        store.create_stream(&name(), 2).await.unwrap();
        let first = put(&store, "k", "x").await;
        store.register_consumer(&name(), "c").await.unwrap();
        store
            .checkpoint(&name(), "c", first.shard_id, first.sequence_number)
            .await
            .unwrap();
        store.shutdown().await;
        drop(store);
        let store = open(dir.path(), clock.clone());
        let checkpoints = store.checkpoints(&name(), "c").await.unwrap();
        assert_eq!(checkpoints.get(&first.shard_id), Some(&first.sequence_number));
        store.delete_stream(&name()).await.unwrap();
        assert!(matches!(
            store.describe_stream(&name()).await,
            Err(StoreError::StreamNotFound(_))
        ));
        clock.advance(1);
        store.create_stream(&name(), 2).await.unwrap();
        let again = put(&store, "k", "y").await;
        assert!(again.sequence_number > first.sequence_number);
        assert!(matches!(
            store.checkpoints(&name(), "c").await,
            Err(StoreError::ConsumerNotFound { .. })
        ));
    }
}
