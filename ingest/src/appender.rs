//! The batching appender: records from the rules go to the stream store in batches, through bounded queues.
//!
//! ```text
//! connections ──send(outbox)──▶ [input queue, queue_records_max] ──▶ batcher ──▶ [per-lane queue, 2 batches]
//!                                                      ──▶ writer lane (one put at a time; lanes per stream)
//! ```
//!
//! Guarantees:
//! - Bounded: the input queue holds at most `queue_records_max` records; each writer lane's queue at most two
//!   batches; a batch at most [`PUT_RECORDS_MAX`] records and `batch_bytes_max` bytes. When they are full,
//!   [`Appender::send`] waits: the caller (a connection) stops reading its socket, which is the backpressure
//!   a publisher feels. Nothing is buffered without bound. A connection gathers the records of one socket read
//!   in an [`Outbox`] and sends them together: one queue operation per read rather than one per record.
//! - A lane's records go to its writer at once when the writer is idle; while a put is in flight the next batch
//!   gathers and goes when the put finishes, when it reaches the count or byte bound, or when its first record
//!   has waited `linger_ms`, whichever comes first. Batches so grow with the load, and a lone record never
//!   waits for a timer.
//! - Records of one partition key are written in the order they were appended: each stream has
//!   `writers_per_stream` writer lanes (one put in flight each), and a key always maps to the same lane.
//! - Failures are retried with exponential backoff (1 ms doubling to 1 s) for as long as the error is retryable
//!   and `retry_ms_max` has not passed; then the record's [`Ticket`] resolves to an error and the failure is
//!   counted and logged. Nothing is dropped silently: every record's ticket resolves exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet_storage::{PUT_RECORDS_MAX, PutRecord, PutResult, StoreError, StreamName, StreamStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::{AppendedMetrics, Counters};

/// Bounds of the appender (`[gateway.append]` in the configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppendConfig {
    /// Records per put, at most 500 (Kinesis's PutRecords limit). With the embedded store (no appender), the most
    /// records of one socket read handed to the shard writers at once.
    pub batch_records_max: usize,
    /// Bytes of data + keys per put.
    pub batch_bytes_max: usize,
    /// How long the first record of a batch may wait for more, in milliseconds.
    pub linger_ms: u64,
    /// Records waiting in the input queue before `append` waits.
    pub queue_records_max: usize,
    /// How long a failing record is retried before its ticket fails, in milliseconds.
    pub retry_ms_max: u64,
    /// Puts in flight per stream. Records are spread over this many writer lanes by partition key, so records of
    /// one key keep their order while the store can group-commit several puts with one fsync.
    pub writers_per_stream: u16,
}

impl Default for AppendConfig {
    fn default() -> Self {
        Self {
            batch_records_max: PUT_RECORDS_MAX,
            batch_bytes_max: 4 * 1024 * 1024,
            linger_ms: 2,
            queue_records_max: 10_000,
            retry_ms_max: 30_000,
            writers_per_stream: 4,
        }
    }
}

/// Why a record could not be appended.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the store refused the record: {0}")]
    Store(#[from] StoreError),
    #[error("the appender stopped before the record was written")]
    Stopped,
}

/// Resolves when the record is durable in the store (`Ok`), or has failed for good.
pub type Ticket = oneshot::Receiver<Result<PutResult, AppendError>>;

struct Item {
    stream: StreamName,
    entry: Entry,
}

/// One queued record of a known stream.
struct Entry {
    record: PutRecord,
    done: oneshot::Sender<Result<PutResult, AppendError>>,
    enqueued: Instant,
}

/// Records gathered (in order) to be sent to the appender together, see [`Appender::send`].
#[derive(Default)]
pub struct Outbox {
    items: Vec<Item>,
    /// When the first record now in the outbox was added: the enqueue time of all of them (one clock read per
    /// read of a connection, not one per record).
    since: Option<Instant>,
}

impl Outbox {
    /// Add a record. Returns a ticket that resolves once the record is durable (or has failed for good); it
    /// resolves only after the outbox is sent.
    pub fn push(&mut self, stream: StreamName, record: PutRecord) -> Ticket {
        let (done, ticket) = oneshot::channel();
        let enqueued = *self.since.get_or_insert_with(Instant::now);
        self.items.push(Item {
            stream,
            entry: Entry {
                record,
                done,
                enqueued,
            },
        });
        ticket
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

/// A handle to the appender; cheap to clone. The appender stops when every handle is dropped, after
/// writing (or failing) everything it holds.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::UnboundedSender<Vec<Item>>,
    /// One permit per record the input queue may still take; the batcher gives them back as it takes records.
    room: Arc<Semaphore>,
    capacity: usize,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("queued", &self.queued())
            .finish()
    }
}

impl Appender {
    /// Start the batcher; returns the handle and the batcher's task (which ends once all handles are gone
    /// and every record has been written or failed).
    pub fn spawn(
        store: Arc<dyn StreamStore>,
        config: AppendConfig,
        counters: Arc<Counters>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let capacity = config.queue_records_max.clamp(1, u32::MAX as usize);
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(capacity));
        let task = tokio::spawn(batcher(store, config, rx, room.clone(), counters.clone()));
        (
            Self {
                tx,
                room,
                capacity,
                counters,
            },
            task,
        )
    }

    /// Queue one record; waits while the queue is full. Returns a ticket that resolves once the record is
    /// durable (or has failed for good).
    pub async fn append(&self, stream: StreamName, record: PutRecord) -> Result<Ticket, AppendError> {
        let mut outbox = Outbox::default();
        let ticket = outbox.push(stream, record);
        self.send(&mut outbox).await?;
        Ok(ticket)
    }

    /// Queue the outbox's records, in order, emptying it; waits while the queue is full (taking the records in
    /// runs of at most the queue's size). On error (the appender stopped) the records not queued are dropped
    /// with the outbox's tickets, which then resolve as closed.
    pub async fn send(&self, outbox: &mut Outbox) -> Result<(), AppendError> {
        outbox.since = None;
        while !outbox.items.is_empty() {
            let n = outbox.items.len().min(self.capacity);
            let Ok(permits) = self.room.acquire_many(n as u32).await else {
                outbox.items.clear();
                return Err(AppendError::Stopped);
            };
            permits.forget();
            let run: Vec<Item> = if n == outbox.items.len() {
                std::mem::take(&mut outbox.items)
            } else {
                outbox.items.drain(..n).collect()
            };
            if self.tx.send(run).is_err() {
                outbox.items.clear();
                return Err(AppendError::Stopped);
            }
        }
        self.counters.queue_depth(self.queued() as u64);
        Ok(())
    }

    /// Records waiting in the input queue now.
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }
}

/// A stream and one of its writer lanes.
type Lane = (StreamName, u16);

/// The writer lane of a partition key: the same key always goes to the same lane, so its records stay in order.
fn lane_of(partition_key: &str, lanes: u16) -> u16 {
    use std::hash::{Hash, Hasher};
    if lanes <= 1 {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    partition_key.hash(&mut h);
    (h.finish() % u64::from(lanes)) as u16
}

/// A lane's records not yet handed to its writer, and how many of its batches the writer has not finished.
#[derive(Default)]
struct Batch {
    items: Vec<Entry>,
    bytes: usize,
    first: Option<Instant>,
    in_flight: usize,
}

async fn batcher(
    store: Arc<dyn StreamStore>,
    config: AppendConfig,
    mut rx: mpsc::UnboundedReceiver<Vec<Item>>,
    room: Arc<Semaphore>,
    counters: Arc<Counters>,
) {
    // If this task ends for any reason, senders waiting for room fail instead of waiting forever.
    struct CloseOnExit(Arc<Semaphore>);
    impl Drop for CloseOnExit {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = CloseOnExit(room.clone());
    let capacity = config.queue_records_max.clamp(1, u32::MAX as usize);
    let linger = Duration::from_millis(config.linger_ms);
    let count_max = config.batch_records_max.clamp(1, PUT_RECORDS_MAX);
    let mut batches: HashMap<Lane, Batch> = HashMap::new();
    let mut writers: HashMap<Lane, mpsc::Sender<Vec<Entry>>> = HashMap::new();
    let mut writer_tasks = Vec::new();
    // Writers say here when they have finished a batch, so that what gathered meanwhile goes at once.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Lane>();
    let mut w = Writers {
        store: &store,
        config: &config,
        counters: &counters,
        writers: &mut writers,
        tasks: &mut writer_tasks,
        done: &done_tx,
    };
    // One timer for the earliest linger deadline, moved only when that deadline changes (a new timer per
    // received record was a visible cost at 100k+ records/s).
    let linger_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger_timer);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = batches.values().filter_map(|b| b.first).min().map(|t| t + linger);
        if let Some(d) = deadline
            && armed != Some(d)
        {
            linger_timer.as_mut().reset(tokio::time::Instant::from_std(d));
            armed = Some(d);
        }
        let items = tokio::select! {
            items = rx.recv() => items,
            Some(lane) = done_rx.recv() => {
                if let Some(batch) = batches.get_mut(&lane) {
                    batch.in_flight = batch.in_flight.saturating_sub(1);
                    if batch.in_flight == 0 {
                        w.flush(&mut batches, &lane).await;
                    }
                }
                continue;
            }
            _ = &mut linger_timer, if deadline.is_some() => {
                armed = None;
                let now = Instant::now();
                let due: Vec<Lane> = batches
                    .iter()
                    .filter(|(_, b)| b.first.is_some_and(|t| t + linger <= now))
                    .map(|(s, _)| s.clone())
                    .collect();
                for lane in due {
                    w.flush(&mut batches, &lane).await;
                }
                continue;
            }
        };
        let Some(items) = items else { break };
        // The records have left the input queue: their room goes back to the senders.
        room.add_permits(items.len());
        counters.queue_depth(capacity.saturating_sub(room.available_permits()) as u64);
        let now = Instant::now();
        // Lanes given records by this run, to hand to their writers once the whole run is in.
        let mut touched: Vec<Lane> = Vec::new();
        for Item { stream, entry } in items {
            let size = entry.record.data.len() + entry.record.partition_key.len();
            let lane: Lane = (
                stream,
                lane_of(&entry.record.partition_key, config.writers_per_stream),
            );
            if batches
                .get(&lane)
                .is_some_and(|b| !b.items.is_empty() && b.bytes + size > config.batch_bytes_max)
            {
                w.flush(&mut batches, &lane).await;
            }
            // The lane's batch stays in the map between flushes, so the key is cloned once per lane, not per
            // record.
            let batch = match batches.get_mut(&lane) {
                Some(b) => b,
                None => batches.entry(lane.clone()).or_default(),
            };
            batch.first.get_or_insert(now);
            batch.bytes += size;
            batch.items.push(entry);
            if batch.items.len() >= count_max || batch.bytes >= config.batch_bytes_max {
                w.flush(&mut batches, &lane).await;
            } else if !touched.contains(&lane) {
                touched.push(lane);
            }
        }
        // An idle writer takes its lane's records at once (no linger): while its put is in flight the next batch
        // gathers, so batches grow with the load instead of with a timer.
        for lane in touched {
            if batches.get(&lane).is_some_and(|b| b.in_flight == 0) {
                w.flush(&mut batches, &lane).await;
            }
        }
    }
    let lanes: Vec<Lane> = batches.keys().cloned().collect();
    for lane in lanes {
        w.flush(&mut batches, &lane).await;
    }
    drop(writers);
    for task in writer_tasks {
        let _ = task.await;
    }
}

/// The writer lanes, started on first use.
struct Writers<'a> {
    store: &'a Arc<dyn StreamStore>,
    config: &'a AppendConfig,
    counters: &'a Arc<Counters>,
    writers: &'a mut HashMap<Lane, mpsc::Sender<Vec<Entry>>>,
    tasks: &'a mut Vec<tokio::task::JoinHandle<()>>,
    done: &'a mpsc::UnboundedSender<Lane>,
}

impl Writers<'_> {
    /// Hand a lane's gathered records to its writer (waits while the writer's queue is full).
    async fn flush(&mut self, batches: &mut HashMap<Lane, Batch>, lane: &Lane) {
        let stream = &lane.0;
        let Some(batch) = batches.get_mut(lane) else {
            return;
        };
        if batch.items.is_empty() {
            return;
        }
        let items = std::mem::take(&mut batch.items);
        batch.bytes = 0;
        batch.first = None;
        batch.in_flight += 1;
        let writer = self.writers.entry(lane.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(2);
            self.tasks.push(tokio::spawn(writer(
                self.store.clone(),
                lane.clone(),
                Duration::from_millis(self.config.retry_ms_max),
                rx,
                self.counters.clone(),
                self.done.clone(),
            )));
            tx
        });
        if let Err(mpsc::error::SendError(items)) = writer.send(items).await {
            // The writer task is gone (it panicked): fail the records rather than lose them silently.
            tracing::error!(stream = %stream, records = items.len(), "append writer stopped; failing records");
            batch.in_flight -= 1;
            let handles = self.counters.appended_metrics(stream.as_str());
            let now = Instant::now();
            for entry in items {
                finish(self.counters, &handles, entry, Err(AppendError::Stopped), now);
            }
        }
    }
}

/// Writes batches of one stream, one put at a time, retrying what may succeed later.
async fn writer(
    store: Arc<dyn StreamStore>,
    lane: Lane,
    retry_max: Duration,
    mut rx: mpsc::Receiver<Vec<Entry>>,
    counters: Arc<Counters>,
    done: mpsc::UnboundedSender<Lane>,
) {
    let stream = &lane.0;
    let handles = counters.appended_metrics(stream.as_str());
    while let Some(mut pending) = rx.recv().await {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(1);
        while !pending.is_empty() {
            let records: Vec<PutRecord> = pending.iter().map(|e| e.record.clone()).collect();
            let results = match store.put_records(stream, records).await {
                Ok(results) if results.len() == pending.len() => results,
                Ok(results) => {
                    let e = StoreError::Internal(format!(
                        "put_records answered {} results for {} records",
                        results.len(),
                        pending.len()
                    ));
                    pending.iter().map(|_| Err(e.clone())).collect()
                }
                Err(e) => pending.iter().map(|_| Err(e.clone())).collect(),
            };
            let mut retry = Vec::new();
            let mut last_error = None;
            let give_up = started.elapsed() >= retry_max;
            let now = Instant::now();
            for (item, result) in pending.drain(..).zip(results) {
                match result {
                    Ok(put) => finish(&counters, &handles, item, Ok(put), now),
                    Err(e) if e.is_retryable() && !give_up => {
                        last_error = Some(e);
                        retry.push(item);
                    }
                    Err(e) => {
                        tracing::error!(stream = %stream, error = %e, "append failed for good");
                        finish(&counters, &handles, item, Err(AppendError::Store(e)), now);
                    }
                }
            }
            if !retry.is_empty() {
                counters.append_retried(retry.len() as u64);
                tracing::warn!(
                    stream = %stream,
                    records = retry.len(),
                    error = %last_error.map(|e| e.to_string()).unwrap_or_default(),
                    backoff_ms = backoff.as_millis() as u64,
                    "append failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            pending = retry;
        }
        // The batcher may be gone already (shutting down); then nobody waits for this.
        let _ = done.send(lane.clone());
    }
}

/// Count and resolve one record's outcome, known at `now`.
fn finish(
    counters: &Counters,
    handles: &AppendedMetrics,
    entry: Entry,
    result: Result<PutResult, AppendError>,
    now: Instant,
) {
    match &result {
        Ok(_) => counters.appended(handles, now.saturating_duration_since(entry.enqueued)),
        Err(_) => counters.append_failed(),
    }
    // The waiter may have gone (its connection closed); the record's fate is counted either way.
    let _ = entry.done.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_storage::{Store, StoreConfig, SystemClock};

    /// A store in a temporary directory (kept while the first value lives) with a one-shard stream `s`.
    async fn one_shard_store() -> (tempfile::TempDir, Arc<dyn StreamStore>, StreamName, Arc<Counters>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StreamStore> =
            Arc::new(Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap());
        let stream = StreamName::new("s").unwrap();
        store.create_stream(&stream, 1).await.unwrap();
        (dir, store, stream, Arc::new(Counters::default()))
    }

    /// Wait for every ticket; their sequence numbers must increase.
    async fn resolve_in_order(tickets: Vec<Ticket>) {
        let mut last = None;
        for t in tickets {
            let put = t.await.unwrap().unwrap();
            assert!(Some(put.sequence_number) > last);
            last = Some(put.sequence_number);
        }
    }

    /// The data of shard 0's records, as text.
    async fn shard_data(store: &Arc<dyn StreamStore>, stream: &StreamName) -> Vec<String> {
        let it = store
            .get_shard_iterator(
                stream,
                freshet_storage::ShardId(0),
                freshet_storage::StartingPosition::TrimHorizon,
            )
            .await
            .unwrap();
        let out = store.get_records(&it, Default::default()).await.unwrap();
        out.records
            .iter()
            .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_reach_the_store_in_order_and_tickets_resolve() {
        let (_dir, store, stream, counters) = one_shard_store().await;
        let config = AppendConfig {
            batch_records_max: 7,
            queue_records_max: 3,
            ..AppendConfig::default()
        };
        let (appender, task) = Appender::spawn(store.clone(), config, counters.clone());
        let mut tickets = Vec::new();
        for i in 0..50 {
            let t = appender
                .append(stream.clone(), PutRecord::new("k", format!("{i}")))
                .await
                .unwrap();
            tickets.push(t);
        }
        resolve_in_order(tickets).await;
        drop(appender);
        task.await.unwrap();
        assert_eq!(counters.snapshot().appended, 50);
        assert_eq!(
            shard_data(&store, &stream).await,
            (0..50).map(|i| i.to_string()).collect::<Vec<_>>()
        );
    }

    /// Outboxes bigger than the input queue go in runs; every record lands once, in order across outboxes, and
    /// every ticket resolves; a stopped appender refuses an outbox instead of waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outboxes_larger_than_the_queue_land_in_order() {
        let (_dir, store, stream, counters) = one_shard_store().await;
        let config = AppendConfig {
            batch_records_max: 7,
            queue_records_max: 5,
            writers_per_stream: 3,
            ..AppendConfig::default()
        };
        let (appender, task) = Appender::spawn(store.clone(), config, counters.clone());
        let mut tickets = Vec::new();
        let mut i = 0;
        for size in [1, 23, 5, 4, 40, 2] {
            let mut outbox = Outbox::default();
            for _ in 0..size {
                tickets.push(outbox.push(stream.clone(), PutRecord::new("k", format!("{i}"))));
                i += 1;
            }
            assert_eq!(outbox.len(), size);
            appender.send(&mut outbox).await.unwrap();
            assert!(outbox.is_empty());
        }
        assert_eq!(tickets.len(), i);
        resolve_in_order(tickets).await;
        assert!(appender.queued() <= 5);
        assert_eq!(
            shard_data(&store, &stream).await,
            (0..i).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(counters.snapshot().appended, i as u64);

        // The batcher gone: sending fails with Stopped, and the records' tickets close.
        task.abort();
        let _ = task.await;
        let mut outbox = Outbox::default();
        let ticket = outbox.push(stream.clone(), PutRecord::new("k", "late"));
        assert!(matches!(
            appender.send(&mut outbox).await,
            Err(AppendError::Stopped)
        ));
        assert!(ticket.await.is_err());
    }

    /// The embedded store, with the first `failures` puts refused as throttled (a retryable error).
    #[derive(Debug)]
    struct Flaky {
        inner: Store,
        failures: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl StreamStore for Flaky {
        async fn create_stream(&self, n: &StreamName, c: u32) -> freshet_storage::StoreResult<()> {
            self.inner.create_stream(n, c).await
        }
        async fn delete_stream(&self, n: &StreamName) -> freshet_storage::StoreResult<()> {
            self.inner.delete_stream(n).await
        }
        async fn list_streams(&self) -> freshet_storage::StoreResult<Vec<StreamName>> {
            self.inner.list_streams().await
        }
        async fn describe_stream(
            &self,
            n: &StreamName,
        ) -> freshet_storage::StoreResult<freshet_storage::StreamDescription> {
            self.inner.describe_stream(n).await
        }
        async fn put_records(
            &self,
            n: &StreamName,
            records: Vec<PutRecord>,
        ) -> freshet_storage::StoreResult<Vec<freshet_storage::StoreResult<PutResult>>> {
            let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, std::sync::atomic::Ordering::SeqCst);
                return Err(StoreError::LimitExceeded("throttled (test)".into()));
            }
            self.inner.put_records(n, records).await
        }
        async fn get_shard_iterator(
            &self,
            n: &StreamName,
            s: freshet_storage::ShardId,
            p: freshet_storage::StartingPosition,
        ) -> freshet_storage::StoreResult<freshet_storage::ShardIterator> {
            self.inner.get_shard_iterator(n, s, p).await
        }
        async fn get_records(
            &self,
            i: &freshet_storage::ShardIterator,
            l: freshet_storage::ReadLimits,
        ) -> freshet_storage::StoreResult<freshet_storage::GetRecordsOutput> {
            self.inner.get_records(i, l).await
        }
        async fn wait_for_records(
            &self,
            i: &freshet_storage::ShardIterator,
            t: Duration,
        ) -> freshet_storage::StoreResult<()> {
            self.inner.wait_for_records(i, t).await
        }
        async fn split_shard(
            &self,
            n: &StreamName,
            s: freshet_storage::ShardId,
            k: u128,
        ) -> freshet_storage::StoreResult<()> {
            self.inner.split_shard(n, s, k).await
        }
        async fn merge_shards(
            &self,
            n: &StreamName,
            s: freshet_storage::ShardId,
            a: freshet_storage::ShardId,
        ) -> freshet_storage::StoreResult<()> {
            self.inner.merge_shards(n, s, a).await
        }
        async fn update_shard_count(&self, n: &StreamName, t: u32) -> freshet_storage::StoreResult<()> {
            self.inner.update_shard_count(n, t).await
        }
        async fn set_retention_hours(&self, n: &StreamName, h: u32) -> freshet_storage::StoreResult<()> {
            self.inner.set_retention_hours(n, h).await
        }
        async fn register_consumer(
            &self,
            n: &StreamName,
            c: &str,
        ) -> freshet_storage::StoreResult<freshet_storage::ConsumerDescription> {
            self.inner.register_consumer(n, c).await
        }
        async fn deregister_consumer(&self, n: &StreamName, c: &str) -> freshet_storage::StoreResult<()> {
            self.inner.deregister_consumer(n, c).await
        }
        async fn list_consumers(
            &self,
            n: &StreamName,
        ) -> freshet_storage::StoreResult<Vec<freshet_storage::ConsumerDescription>> {
            self.inner.list_consumers(n).await
        }
        async fn checkpoints(&self, n: &StreamName, c: &str) -> freshet_storage::StoreResult<HashMapAlias> {
            self.inner.checkpoints(n, c).await
        }
        async fn checkpoint(
            &self,
            n: &StreamName,
            c: &str,
            s: freshet_storage::ShardId,
            q: freshet_storage::SequenceNumber,
        ) -> freshet_storage::StoreResult<()> {
            self.inner.checkpoint(n, c, s, q).await
        }
    }

    type HashMapAlias = std::collections::BTreeMap<freshet_storage::ShardId, freshet_storage::SequenceNumber>;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retryable_failures_are_retried_with_backoff_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap();
        let store: Arc<dyn StreamStore> = Arc::new(Flaky {
            inner,
            failures: std::sync::atomic::AtomicU32::new(5),
        });
        let stream = StreamName::new("s").unwrap();
        store.create_stream(&stream, 2).await.unwrap();
        let counters = Arc::new(Counters::default());
        let (appender, task) = Appender::spawn(store.clone(), AppendConfig::default(), counters.clone());
        let mut tickets = Vec::new();
        for i in 0..100 {
            let t = appender
                .append(
                    stream.clone(),
                    PutRecord::new(format!("k{}", i % 7), format!("{i}")),
                )
                .await
                .unwrap();
            tickets.push(t);
        }
        for t in tickets {
            t.await.unwrap().unwrap();
        }
        drop(appender);
        task.await.unwrap();
        let stats = counters.snapshot();
        assert_eq!(stats.appended, 100);
        assert_eq!(stats.append_failed, 0);
        assert!(stats.append_retries >= 5, "{stats:?}");
    }

    #[tokio::test]
    async fn a_missing_stream_fails_the_ticket_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StreamStore> =
            Arc::new(Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap());
        let counters = Arc::new(Counters::default());
        let (appender, _task) = Appender::spawn(store, AppendConfig::default(), counters.clone());
        let t = appender
            .append(StreamName::new("nope").unwrap(), PutRecord::new("k", "x"))
            .await
            .unwrap();
        assert!(matches!(
            t.await.unwrap(),
            Err(AppendError::Store(StoreError::StreamNotFound(_)))
        ));
        assert_eq!(counters.snapshot().append_failed, 1);
    }

    /// A record reaching an idle writer is written at once, not after `linger_ms`; records that arrive while a
    /// put is in flight still go out, in order, once it finishes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_writer_does_not_wait_for_the_linger() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StreamStore> =
            Arc::new(Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap());
        let stream = StreamName::new("s").unwrap();
        store.create_stream(&stream, 1).await.unwrap();
        let config = AppendConfig {
            linger_ms: 600_000,
            writers_per_stream: 1,
            ..AppendConfig::default()
        };
        let (appender, task) = Appender::spawn(store.clone(), config, Arc::new(Counters::default()));
        let deadline = Duration::from_secs(20);
        let lone = appender
            .append(stream.clone(), PutRecord::new("k", "lone"))
            .await
            .unwrap();
        let put = tokio::time::timeout(deadline, lone)
            .await
            .expect("a lone record waited for the linger")
            .unwrap()
            .unwrap();
        let mut tickets = Vec::new();
        for i in 0..200 {
            let t = appender
                .append(stream.clone(), PutRecord::new("k", format!("{i}")))
                .await
                .unwrap();
            tickets.push(t);
        }
        let mut last = put.sequence_number;
        for t in tickets {
            let put = tokio::time::timeout(deadline, t)
                .await
                .expect("a record waited for the linger")
                .unwrap()
                .unwrap();
            assert!(put.sequence_number > last);
            last = put.sequence_number;
        }
        drop(appender);
        task.await.unwrap();
    }
}
