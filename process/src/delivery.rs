//! A delivery stream: read every shard of a stream (parents before children), buffer, convert, and commit into a
//! Delta table exactly once.
//!
//! # Exactly-once
//!
//! - Positions live in the table, not in the store: every commit carries one Delta `txn` action per shard whose
//!   position moved (app id `<delivery>-<shardId>`, version = the last sequence number included, or the shard's
//!   ending sequence number once a closed shard is fully read). On start the delivery reads those versions and
//!   resumes right after them, so a crash anywhere (before a write, between the Parquet write and the commit,
//!   right after the commit) neither loses nor repeats a record. The store's consumer checkpoints are not used.
//! - One flush = at most one commit of the data table covering all shards (plus at most one commit of the error
//!   table, made first, carrying its own `txn` actions so replayed error rows are skipped).
//! - Before retrying a failed commit the table's `txn` versions are re-read: a commit that landed although its
//!   call failed (timeout, 5xx, "already exists") is never written twice. delta-rs itself does not refuse a
//!   repeated `txn` version, so this check is what makes retries safe. Data files are never deleted on error.
//! - A destination that fails stalls the delivery, never skips data: writes and commits are retried with backoff
//!   (up to 30 s apart) while nothing more is read; `freshet_delivery_destination_errors_total` counts the failed
//!   attempts, `freshet_delivery_stalled` is 1 until one succeeds, and a WARN line marks the start of the stall
//!   (an INFO line its end).
//!
//! # Bounds
//!
//! The buffer holds at most `buffer_bytes` of raw records plus one read (≤ 10 MiB); reads stop while it is full.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deltalake::kernel::Transaction;
use freshet_storage::consumer::ready_shards;
use freshet_storage::{
    ReadLimits, SequenceNumber, ShardId, ShardIterator, StartingPosition, StoreError, StreamName, StreamStore,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::convert::{Converter, ShardRecords, SourceRecord, TableSchema, errors_batch, errors_schema};
use crate::error::{ProcessError, Result};
use crate::events::{CommitEvent, ensure_events_stream, publish};
use crate::http_transform::HttpTransform;
use crate::maintenance::Maintainer;
use crate::staging::Staging;
use crate::table::{DeltaSink, TxnState};
use crate::transform::SqlTransform;

const READ_BYTES_MAX: usize = 10 << 20;
const WAIT_MAX: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What one flush did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlushReport {
    /// The data table's new version, if a commit was made.
    pub version: Option<i64>,
    pub rows: u64,
    pub error_rows: u64,
    pub files_added: u64,
    /// Records the HTTP transform returned `Dropped` for (not written, not errors).
    pub dropped_rows: u64,
}

/// Counters of one delivery since it started.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Records read from the stream into the buffer (records read again after a resync count again).
    pub records_read: AtomicU64,
    /// Commits of the data table made by this delivery.
    pub commits: AtomicU64,
    pub rows: AtomicU64,
    pub error_rows: AtomicU64,
    /// Records the HTTP transform dropped on purpose.
    pub dropped_rows: AtomicU64,
    /// Commit attempts that failed (conflicts, object-store errors) and were retried or settled.
    pub commit_failures: AtomicU64,
    /// Failed commits found to have landed after all (their txn versions were in the table).
    pub landed_after_error: AtomicU64,
    /// Times another writer had moved this delivery's positions and they were reloaded.
    pub fenced: AtomicU64,
    /// Writes or commits that failed because the destination did not answer or answered with an error (not
    /// commit races); each one is retried with backoff while the delivery stalls.
    pub destination_errors: AtomicU64,
    /// Whether the delivery is stalled on its destination right now (its last write or commit failed).
    pub stalled: std::sync::atomic::AtomicBool,
}

impl DeliveryCounters {
    /// A write or commit against the destination failed: count it, mark the delivery stalled, log the first one.
    fn destination_failed(&self, table: &str, error: &ProcessError) {
        let n = self.destination_errors.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("freshet_delivery_destination_errors_total", "table" => table.to_string())
            .increment(1);
        metrics::gauge!("freshet_delivery_stalled", "table" => table.to_string()).set(1.0);
        if !self.stalled.swap(true, Ordering::Relaxed) {
            tracing::warn!(table, %error, destination_errors = n,
                "the destination is failing; the delivery stalls (nothing is skipped) and retries with backoff");
        }
    }

    /// A write or commit succeeded: the delivery is no longer stalled.
    fn destination_ok(&self, table: &str) {
        if self.stalled.swap(false, Ordering::Relaxed) {
            metrics::gauge!("freshet_delivery_stalled", "table" => table.to_string()).set(0.0);
            tracing::info!(table, "the destination answers again; the delivery resumes");
        }
    }
}

/// A running delivery: ask it to flush now, or to flush and stop.
#[derive(Debug)]
pub struct DeliveryHandle {
    flush_tx: mpsc::Sender<oneshot::Sender<Result<FlushReport>>>,
    started: tokio::sync::watch::Receiver<bool>,
    counters: Arc<DeliveryCounters>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl DeliveryHandle {
    /// Flush the buffer now (even if empty of records, positions that moved are committed) and report.
    pub async fn flush_now(&self) -> Result<FlushReport> {
        let (tx, rx) = oneshot::channel();
        self.flush_tx
            .send(tx)
            .await
            .map_err(|_| ProcessError::Internal("the delivery has stopped".to_string()))?;
        rx.await
            .map_err(|_| ProcessError::Internal("the delivery stopped while flushing".to_string()))?
    }

    /// Flush what is buffered, stop, and return how the delivery ended.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        self.task
            .await
            .map_err(|e| ProcessError::Internal(format!("delivery task: {e}")))?
    }

    /// Wait until the delivery has opened its tables and loaded its positions (or has ended).
    pub async fn started(&self) {
        let mut rx = self.started.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn counters(&self) -> &DeliveryCounters {
        &self.counters
    }

    /// Whether the delivery task has ended (by error or shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Start a delivery on the current tokio runtime. It stops (after a final flush) when `shutdown` is cancelled
/// or [`DeliveryHandle::shutdown`] is called.
pub fn spawn_delivery(
    config: DeliveryConfig,
    store: Arc<dyn StreamStore>,
    shutdown: CancellationToken,
) -> DeliveryHandle {
    let (flush_tx, flush_rx) = mpsc::channel(4);
    let (started_tx, started) = tokio::sync::watch::channel(false);
    let token = shutdown.child_token();
    let counters = Arc::new(DeliveryCounters::default());
    let task = tokio::spawn(run(
        config,
        store,
        token.clone(),
        Some(flush_rx),
        Some(started_tx),
        counters.clone(),
    ));
    DeliveryHandle {
        flush_tx,
        started,
        counters,
        shutdown: token,
        task,
    }
}

/// Run a delivery until `shutdown` is cancelled; what is buffered then is flushed before returning.
pub async fn run_delivery(
    config: DeliveryConfig,
    store: Arc<dyn StreamStore>,
    shutdown: CancellationToken,
) -> Result<()> {
    run(config, store, shutdown, None, None, Arc::default()).await
}

async fn run(
    config: DeliveryConfig,
    store: Arc<dyn StreamStore>,
    shutdown: CancellationToken,
    flush_rx: Option<mpsc::Receiver<oneshot::Sender<Result<FlushReport>>>>,
    started: Option<tokio::sync::watch::Sender<bool>>,
    counters: Arc<DeliveryCounters>,
) -> Result<()> {
    config.validate()?;
    let mut delivery = tokio::select! {
        d = Delivery::start(config, store, shutdown.clone(), counters) => d?,
        () = shutdown.cancelled() => return Ok(()),
    };
    if let Some(started) = started {
        let _ = started.send(true);
    }
    let result = delivery.run(flush_rx).await;
    delivery.maintainer.stop().await;
    result
}

struct Delivery {
    config: Arc<DeliveryConfig>,
    store: Arc<dyn StreamStore>,
    stream: StreamName,
    shutdown: CancellationToken,
    converter: Converter,
    data: DeltaSink,
    errors: DeltaSink,
    schema: TableSchema,
    /// Per shard: the position in the data table (last sequence number delivered, or the shard's end).
    committed: BTreeMap<ShardId, SequenceNumber>,
    /// Per shard: the error table's position; error rows at or before it are already there.
    errors_committed: BTreeMap<ShardId, SequenceNumber>,
    /// Per shard: the position including what is buffered.
    read: BTreeMap<ShardId, SequenceNumber>,
    iterators: BTreeMap<ShardId, ShardIterator>,
    /// Records read and not committed yet, converted while reading goes on.
    staging: Staging,
    buffer_bytes: u64,
    buffer_since: Option<Instant>,
    maintainer: Maintainer,
    counters: Arc<DeliveryCounters>,
    transform: Option<SqlTransform>,
    http_transform: Option<HttpTransform>,
}

impl Delivery {
    async fn start(
        config: DeliveryConfig,
        store: Arc<dyn StreamStore>,
        shutdown: CancellationToken,
        counters: Arc<DeliveryCounters>,
    ) -> Result<Self> {
        let config = Arc::new(config);
        let stream = StreamName::new(config.stream.clone())?;
        ensure_events_stream(&store).await?;
        let partition_columns: Vec<String> = config.partition_by.iter().map(|p| p.name.clone()).collect();
        let table_conf = HashMap::from([(
            "delta.checkpointInterval".to_string(),
            config.maintenance.checkpoint_interval_commits.to_string(),
        )]);
        let initial = TableSchema::initial(&config);
        let (table_url, errors_url) = (config.table_url()?, config.errors_table_url()?);
        let data = retry_forever(&shutdown, "open the table", || {
            DeltaSink::open_or_create(
                &config.table,
                table_url.clone(),
                config.storage_options.clone(),
                &initial,
                &partition_columns,
                table_conf.clone(),
            )
        })
        .await?;
        let (errors_name, errors_initial) = (config.errors_table(), errors_schema());
        let errors = retry_forever(&shutdown, "open the error table", || {
            DeltaSink::open_or_create(
                &errors_name,
                errors_url.clone(),
                config.storage_options.clone(),
                &errors_initial,
                &[],
                table_conf.clone(),
            )
        })
        .await?;
        let schema = data.schema()?;
        check_compatible(&config, &schema)?;
        let desc = store.describe_stream(&stream).await?;
        let mut committed = BTreeMap::new();
        let mut errors_committed = BTreeMap::new();
        for shard in &desc.shards {
            let app_id = app_id(&config.name, shard.shard_id);
            if let Some(v) = data.txn_version(&app_id).await? {
                committed.insert(shard.shard_id, SequenceNumber::from_u64(v as u64));
            }
            if let Some(v) = errors.txn_version(&app_id).await? {
                errors_committed.insert(shard.shard_id, SequenceNumber::from_u64(v as u64));
            }
        }
        tracing::info!(delivery = %config.name, table = %config.table, version = ?data.version(),
            positions = ?committed, "delivery starting from the table's txn versions");
        if let Some(version) = data.version().filter(|v| *v > 0) {
            publish(
                &store,
                &CommitEvent {
                    table: config.table.clone(),
                    version,
                    location: data.url().to_string(),
                    delivery: config.name.clone(),
                    rows: 0,
                    files_added: 0,
                    bytes_added: 0,
                    error_rows: 0,
                    event_time_min: None,
                    event_time_max: None,
                    committed_at_ms: now_ms(),
                    replayed: true,
                },
            )
            .await;
        }
        let http_transform = HttpTransform::new(&config)?;
        let maintainer = Maintainer::new(config.clone());
        let config_for_transform = config.clone();
        let transform = SqlTransform::new(&config_for_transform);
        // A SQL transform that fails sends every buffered record to the error table: the staging keeps them.
        let staging = Staging::new(
            config_for_transform.clone(),
            http_transform.is_none(),
            transform.is_some(),
        );
        Ok(Self {
            converter: Converter::new(config.clone()),
            read: committed.clone(),
            config,
            store,
            stream,
            shutdown,
            data,
            errors,
            schema,
            committed,
            errors_committed,
            iterators: BTreeMap::new(),
            staging,
            buffer_bytes: 0,
            buffer_since: None,
            maintainer,
            counters,
            transform,
            http_transform,
        })
    }

    async fn run(
        &mut self,
        mut flush_rx: Option<mpsc::Receiver<oneshot::Sender<Result<FlushReport>>>>,
    ) -> Result<()> {
        let mut read_backoff = Duration::from_millis(50);
        loop {
            if self.shutdown.is_cancelled() {
                self.flush().await?;
                return Ok(());
            }
            while let Some(reply) = flush_rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
                let report = self.flush().await;
                let failed = report.as_ref().err().map(|e| e.to_string());
                let _ = reply.send(report);
                if let Some(e) = failed {
                    return Err(ProcessError::Internal(format!("flush failed: {e}")));
                }
            }
            let got = match self.read_once().await {
                Ok(got) => {
                    read_backoff = Duration::from_millis(50);
                    got
                }
                Err(e) if e.fault() != crate::error::Fault::Internal => {
                    tracing::warn!(delivery = %self.config.name, error = %e, "reading the stream failed; retrying");
                    self.iterators.clear();
                    tokio::select! {
                        () = tokio::time::sleep(read_backoff) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                    read_backoff = (read_backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.flush_due() {
                self.flush().await?;
                continue;
            }
            if got {
                continue;
            }
            // Nothing new: wait for records, the buffer deadline, a flush request or shutdown.
            let mut wait = WAIT_MAX;
            if let Some(since) = self.buffer_since {
                wait = wait
                    .min((since + self.config.buffer_interval()).saturating_duration_since(Instant::now()));
            }
            let store = self.store.clone();
            let iterators: Vec<ShardIterator> = self.iterators.values().cloned().collect();
            let wait_records = async move {
                if iterators.is_empty() {
                    tokio::time::sleep(wait).await;
                    return;
                }
                let waits = iterators
                    .iter()
                    .map(|it| Box::pin(store.wait_for_records(it, wait)));
                let _ = futures::future::select_all(waits).await;
            };
            let flush_request = async {
                match flush_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait_records => {}
                () = self.shutdown.cancelled() => {}
                req = flush_request => {
                    if let Some(reply) = req {
                        let report = self.flush().await;
                        let failed = report.as_ref().err().map(|e| e.to_string());
                        let _ = reply.send(report);
                        if let Some(e) = failed {
                            return Err(ProcessError::Internal(format!("flush failed: {e}")));
                        }
                    }
                }
            }
        }
    }

    fn dirty(&self) -> bool {
        self.read != self.committed
    }

    fn flush_due(&self) -> bool {
        if self.buffer_bytes >= self.config.buffer_bytes {
            return true;
        }
        match self.buffer_since {
            Some(since) => since.elapsed() >= self.config.buffer_interval(),
            None => false,
        }
    }

    /// One read from every ready shard, while the buffer has room. Returns whether anything new was buffered or
    /// a shard was finished.
    async fn read_once(&mut self) -> Result<bool> {
        let desc = self.store.describe_stream(&self.stream).await?;
        let mut got = false;
        for shard_id in ready_shards(&desc, &self.read) {
            let room = self.config.buffer_bytes.saturating_sub(self.buffer_bytes) as usize;
            if room == 0 {
                break;
            }
            let iterator = match self.iterators.get(&shard_id) {
                Some(it) => it.clone(),
                None => {
                    let position = match self.read.get(&shard_id) {
                        Some(seq) => StartingPosition::AfterSequenceNumber(*seq),
                        None => StartingPosition::TrimHorizon,
                    };
                    self.store
                        .get_shard_iterator(&self.stream, shard_id, position)
                        .await?
                }
            };
            // Reading waits while too much of what was read is still to be converted.
            self.staging.make_room(&self.schema).await;
            let limits = ReadLimits {
                records_max: freshet_storage::GET_RECORDS_MAX,
                bytes_max: room.clamp(1 << 20, READ_BYTES_MAX),
            };
            let out = match self.store.get_records(&iterator, limits).await {
                Ok(out) => out,
                Err(StoreError::ExpiredIterator(_)) => {
                    self.iterators.remove(&shard_id);
                    got = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(last) = out.records.last() {
                self.read.insert(shard_id, last.sequence_number);
                got = true;
                if self.buffer_since.is_none() {
                    self.buffer_since = Some(Instant::now());
                }
            }
            self.counters
                .records_read
                .fetch_add(out.records.len() as u64, Ordering::Relaxed);
            self.buffer_bytes += out
                .records
                .iter()
                .map(|r| r.data.len() as u64 + r.partition_key.len() as u64)
                .sum::<u64>();
            let read = ShardRecords {
                shard_id,
                records: out.records,
            };
            self.staging.push(read, &self.schema);
            match out.next_iterator {
                Some(next) => {
                    self.iterators.insert(shard_id, next);
                }
                None => {
                    // A closed shard read to its end: its position becomes the ending sequence number, which is
                    // what marks it finished (and lets its children start) once committed.
                    self.iterators.remove(&shard_id);
                    if let Some(end) = desc.shard(shard_id).and_then(|s| s.ending_sequence_number) {
                        self.read.insert(shard_id, end);
                        got = true;
                        if self.buffer_since.is_none() {
                            self.buffer_since = Some(Instant::now());
                        }
                    }
                }
            }
        }
        Ok(got)
    }

    /// Flush; if another writer moved this delivery's positions, drop the buffer and resume from the table.
    async fn flush(&mut self) -> Result<FlushReport> {
        match self.flush_inner().await {
            Err(ProcessError::Fenced { table, app_id }) => {
                tracing::warn!(delivery = %self.config.name, %table, %app_id,
                    "another writer moved this delivery's positions; reloading them from the table");
                self.counters.fenced.fetch_add(1, Ordering::Relaxed);
                self.resync().await?;
                Ok(FlushReport::default())
            }
            other => other,
        }
    }

    /// Reload positions and schema from the tables and read again from there; the buffer is dropped.
    async fn resync(&mut self) -> Result<()> {
        self.data.refresh().await?;
        self.errors.refresh().await?;
        self.schema = self.data.schema()?;
        let desc = self.store.describe_stream(&self.stream).await?;
        self.committed.clear();
        self.errors_committed.clear();
        for shard in &desc.shards {
            let id = app_id(&self.config.name, shard.shard_id);
            if let Some(v) = self.data.txn_version(&id).await? {
                self.committed
                    .insert(shard.shard_id, SequenceNumber::from_u64(v as u64));
            }
            if let Some(v) = self.errors.txn_version(&id).await? {
                self.errors_committed
                    .insert(shard.shard_id, SequenceNumber::from_u64(v as u64));
            }
        }
        self.read = self.committed.clone();
        self.iterators.clear();
        self.staging.clear();
        self.buffer_bytes = 0;
        self.buffer_since = None;
        Ok(())
    }

    /// Convert and commit what is buffered: error rows first (error table), then data rows and every shard's
    /// new position in one commit of the data table.
    async fn flush_inner(&mut self) -> Result<FlushReport> {
        if self.staging.is_empty() && !self.dirty() {
            self.buffer_since = None;
            return Ok(FlushReport::default());
        }
        // The HTTP transform first: its Ok records go on, Dropped ones are counted, failures become error rows.
        let (http_records, http_errors, dropped) = match &self.http_transform {
            Some(h) => {
                // Without eager conversion the buffer is one run (lent as is); a copy only if it were not.
                let all = match self.staging.contiguous() {
                    Some(records) => std::borrow::Cow::Borrowed(records),
                    None => std::borrow::Cow::Owned(
                        self.staging
                            .records()
                            .map(|(shard_id, record)| SourceRecord {
                                shard_id,
                                record: record.clone(),
                            })
                            .collect(),
                    ),
                };
                let out = h.apply(&all, &self.shutdown).await?;
                (Some(out.records), out.errors, out.dropped)
            }
            None => (None, Vec::new(), 0),
        };
        let buffered_ms = self.buffer_since.map_or(0, |t| t.elapsed().as_millis() as u64);
        let convert_started = Instant::now();
        let mut converted = match &http_records {
            Some(records) => self.converter.convert(&self.schema, records)?,
            None => self.staging.finish(&self.schema).await?,
        };
        let convert_ms = convert_started.elapsed().as_millis() as u64;
        converted.errors.extend(http_errors);
        if let Some(t) = &self.transform
            && let Some(batch) = converted.batch()?
        {
            converted.batches.clear();
            match t.apply(&converted.schema, batch, &converted.schema).await {
                Ok((batch, schema)) => {
                    converted.batches = batch.into_iter().collect();
                    converted.schema = schema;
                }
                Err(reason) => {
                    tracing::warn!(delivery = %self.config.name, %reason, "transform failed; the batch goes to the error table");
                    let failed: std::collections::HashSet<(ShardId, SequenceNumber)> = converted
                        .errors
                        .iter()
                        .map(|e| (e.shard_id, e.sequence_number.into()))
                        .collect();
                    let records: Box<dyn Iterator<Item = (ShardId, &freshet_storage::Record)>> =
                        match &http_records {
                            Some(records) => Box::new(records.iter().map(|s| (s.shard_id, &s.record))),
                            None => Box::new(self.staging.records()),
                        };
                    for (shard_id, record) in
                        records.filter(|(s, r)| !failed.contains(&(*s, r.sequence_number)))
                    {
                        converted.errors.push(crate::convert::ErrorRow::new(
                            shard_id,
                            record,
                            crate::convert::ErrorKind::TransformFailed,
                            format!("transform_sql failed: {reason}"),
                        )?);
                    }
                    converted.schema = self.schema.clone();
                    converted.event_time_ms_min = None;
                    converted.event_time_ms_max = None;
                }
            }
        }
        let moved: Vec<(ShardId, SequenceNumber)> = self
            .read
            .iter()
            .filter(|(shard, seq)| self.committed.get(shard) != Some(seq))
            .map(|(s, q)| (*s, *q))
            .collect();
        let mut report = FlushReport::default();

        // 1. Error rows, skipping those an earlier run already committed.
        let errors: Vec<_> = converted
            .errors
            .iter()
            .filter(|e| {
                self.errors_committed
                    .get(&e.shard_id)
                    .is_none_or(|c| SequenceNumber::from_u64(e.sequence_number) > *c)
            })
            .cloned()
            .collect();
        if !errors.is_empty() {
            let shards: std::collections::BTreeSet<ShardId> = errors.iter().map(|e| e.shard_id).collect();
            let txns: Vec<Transaction> = moved
                .iter()
                .filter(|(s, _)| shards.contains(s))
                .map(|(s, q)| {
                    Ok(Transaction::new_with_last_update(
                        app_id(&self.config.name, *s),
                        txn_version(*q)?,
                        Some(now_ms()),
                    ))
                })
                .collect::<Result<_>>()?;
            let expected = moved
                .iter()
                .filter(|(s, _)| shards.contains(s))
                .map(|(s, _)| self.errors_committed.get(s).map(|q| txn_version(*q)).transpose())
                .collect::<Result<_>>()?;
            let batch = errors_batch(&errors, now_ms())?;
            let pending = Pending {
                schema: &errors_schema(),
                batches: vec![batch],
                new_schema: None,
                txns,
                expected,
            };
            commit_durably(&mut self.errors, &self.shutdown, pending, &self.counters).await?;
            for (s, q) in moved.iter().filter(|(s, _)| shards.contains(s)) {
                self.errors_committed.insert(*s, *q);
            }
            report.error_rows = errors.len() as u64;
        }

        // 2. Data rows and positions, in one commit.
        let txns: Vec<Transaction> = moved
            .iter()
            .map(|(s, q)| {
                Ok(Transaction::new_with_last_update(
                    app_id(&self.config.name, *s),
                    txn_version(*q)?,
                    Some(now_ms()),
                ))
            })
            .collect::<Result<_>>()?;
        let expected = moved
            .iter()
            .map(|(s, _)| self.committed.get(s).map(|q| txn_version(*q)).transpose())
            .collect::<Result<_>>()?;
        let new_schema = (converted.schema != self.schema).then_some(&converted.schema);
        let rows = converted.rows() as u64;
        let pending = Pending {
            schema: &converted.schema,
            batches: converted.batches.clone(),
            new_schema,
            txns,
            expected,
        };
        let commit_started = Instant::now();
        let outcome = commit_durably(&mut self.data, &self.shutdown, pending, &self.counters).await?;
        let write_commit_ms = commit_started.elapsed().as_millis() as u64;
        self.schema = self.data.schema()?;
        for (s, q) in &moved {
            self.committed.insert(*s, *q);
        }
        self.staging.clear();
        self.buffer_bytes = 0;
        self.buffer_since = None;
        report.rows = rows;
        report.dropped_rows = dropped;
        self.counters.dropped_rows.fetch_add(dropped, Ordering::Relaxed);
        metrics::counter!("freshet_delivery_dropped_rows_total", "delivery" => self.config.name.clone())
            .increment(dropped);
        report.files_added = outcome.files;
        report.version = outcome.version;
        self.counters.rows.fetch_add(rows, Ordering::Relaxed);
        let delivery = self.config.name.clone();
        metrics::counter!("freshet_delivery_rows_total", "delivery" => delivery.clone()).increment(rows);
        metrics::counter!("freshet_delivery_error_rows_total", "delivery" => delivery.clone())
            .increment(report.error_rows);
        metrics::gauge!("freshet_delivery_last_flush_ms", "delivery" => delivery).set(now_ms() as f64);
        self.counters
            .error_rows
            .fetch_add(report.error_rows, Ordering::Relaxed);
        if let Some(version) = outcome.version {
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("freshet_delivery_commits_total", "delivery" => self.config.name.clone())
                .increment(1);
            tracing::debug!(delivery = %self.config.name, version, rows, errors = report.error_rows, buffered_ms, convert_ms,
                write_commit_ms, "committed");
            let fmt = |ms: Option<i64>| {
                ms.and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            };
            publish(
                &self.store,
                &CommitEvent {
                    table: self.config.table.clone(),
                    version,
                    location: self.data.url().to_string(),
                    delivery: self.config.name.clone(),
                    rows,
                    files_added: outcome.files,
                    bytes_added: outcome.bytes,
                    error_rows: report.error_rows,
                    event_time_min: fmt(converted.event_time_ms_min),
                    event_time_max: fmt(converted.event_time_ms_max),
                    committed_at_ms: now_ms(),
                    replayed: false,
                },
            )
            .await;
            self.maintainer.after_commit(version);
        }
        Ok(report)
    }
}

struct CommitOutcome {
    /// `None` when an earlier attempt had already landed.
    version: Option<i64>,
    files: u64,
    bytes: u64,
}

/// One commit to make: rows in `schema`, an optional schema change, and the shards' new txn versions with the
/// versions this delivery believes the table has now (`expected`, one per txn).
struct Pending<'a> {
    schema: &'a TableSchema,
    batches: Vec<deltalake::arrow::array::RecordBatch>,
    new_schema: Option<&'a TableSchema>,
    txns: Vec<Transaction>,
    expected: Vec<Option<i64>>,
}

/// Write the files (retrying), then commit (retrying); before each retry re-read the table's txn versions so a
/// commit that landed despite an error is not made twice. Gives up only on shutdown, or with
/// [`ProcessError::Fenced`] when another writer moved the positions (`expected` are the versions this delivery
/// believes are committed, one per txn).
async fn commit_durably(
    sink: &mut DeltaSink,
    shutdown: &CancellationToken,
    pending: Pending<'_>,
    counters: &DeliveryCounters,
) -> Result<CommitOutcome> {
    let Pending {
        schema,
        batches,
        new_schema,
        txns,
        expected,
    } = pending;
    let mut backoff = Duration::from_millis(100);
    let adds = if batches.is_empty() {
        Vec::new()
    } else {
        loop {
            match sink.write_files(schema, batches.clone()).await {
                Ok(adds) => {
                    counters.destination_ok(sink.name());
                    break adds;
                }
                Err(e) => {
                    tracing::warn!(table = sink.name(), error = %e, "writing Parquet files failed; retrying");
                    counters.destination_failed(sink.name(), &e);
                    backoff_or_stop(shutdown, &mut backoff, e).await?;
                }
            }
        }
    };
    let files = adds.len() as u64;
    let bytes = adds.iter().map(|a| a.size.max(0) as u64).sum();
    if adds.is_empty() && txns.is_empty() && new_schema.is_none() {
        return Ok(CommitOutcome {
            version: None,
            files,
            bytes,
        });
    }
    // No pre-check of the table's txn versions is needed here: this commit is built on the snapshot of our own
    // last commit (or of the start), and delta-rs's conflict checker refuses it if any commit since then carries
    // one of its app ids (another writer, or an earlier attempt of ours that landed despite an error). Such a
    // refusal, like any other error, leads to the txn re-read below.
    let mut failures = 0;
    loop {
        match sink
            .commit(adds.clone(), new_schema, txns.clone(), HashMap::new())
            .await
        {
            Ok(version) => {
                counters.destination_ok(sink.name());
                return Ok(CommitOutcome {
                    version: Some(version),
                    files,
                    bytes,
                });
            }
            Err(e) => {
                tracing::warn!(table = sink.name(), error = %e,
                    "commit failed; re-reading the table's txn versions before retrying");
                // A conflict is settled by the txn re-read at once (landed, fenced, or retry on the new
                // snapshot); other errors (object store, IO) wait with backoff first.
                failures += 1;
                counters.commit_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("freshet_delivery_commit_failures_total", "table" => sink.name().to_string())
                    .increment(1);
                if !is_conflict(&e) {
                    counters.destination_failed(sink.name(), &e);
                }
                if !is_conflict(&e) || failures > 3 {
                    backoff_or_stop(shutdown, &mut backoff, e).await?;
                }
                match sink.txn_state(&txns, &expected).await {
                    Ok(TxnState::Landed) if !txns.is_empty() => {
                        counters.destination_ok(sink.name());
                        counters.landed_after_error.fetch_add(1, Ordering::Relaxed);
                        return Ok(CommitOutcome {
                            version: None,
                            files,
                            bytes,
                        });
                    }
                    Ok(_) => {}
                    Err(e @ (ProcessError::Incompatible { .. } | ProcessError::Fenced { .. })) => {
                        return Err(e);
                    }
                    Err(e) => tracing::warn!(table = sink.name(), error = %e, "re-reading the table failed"),
                }
            }
        }
    }
}

/// Whether a commit lost a race (delta-rs's conflict checker refused it).
fn is_conflict(e: &ProcessError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        e,
        ProcessError::Delta {
            source: deltalake::DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_) | TransactionError::VersionAlreadyExists(_),
            },
            ..
        }
    )
}

/// Sleep `backoff` (doubling, capped) unless shutdown is requested, in which case return `err`.
async fn backoff_or_stop(
    shutdown: &CancellationToken,
    backoff: &mut Duration,
    err: ProcessError,
) -> Result<()> {
    if matches!(
        err,
        ProcessError::Incompatible { .. } | ProcessError::Fenced { .. } | ProcessError::Internal(_)
    ) {
        return Err(err);
    }
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = shutdown.cancelled() => return Err(err),
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    Ok(())
}

/// Run `f` until it succeeds, with backoff; give up on shutdown or on an error retrying cannot fix.
async fn retry_forever<T, F, Fut>(shutdown: &CancellationToken, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(t) => return Ok(t),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot {what} yet; retrying");
                backoff_or_stop(shutdown, &mut backoff, e).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A table created with another partitioning or lineage cannot take this delivery's rows.
fn check_compatible(config: &DeliveryConfig, schema: &TableSchema) -> Result<()> {
    let want = TableSchema::initial(config);
    for c in &want.columns {
        match schema.columns.iter().find(|s| s.name == c.name) {
            Some(s) if s.ty == c.ty => {}
            Some(s) => {
                return Err(ProcessError::Incompatible {
                    table: config.table.clone(),
                    message: format!(
                        "column {} is {:?} in the table but {:?} in the delivery",
                        c.name, s.ty, c.ty
                    ),
                });
            }
            None => {
                return Err(ProcessError::Incompatible {
                    table: config.table.clone(),
                    message: format!("the table has no column {} that the delivery writes", c.name),
                });
            }
        }
    }
    Ok(())
}

/// A shard position as its Delta `txn` version (an i64): the embedded store's numbers fit; larger ones (AWS Kinesis's
/// 56-digit numbers) cannot be recorded this way, so the delivery stops with this error (batch delivery can).
fn txn_version(q: SequenceNumber) -> Result<i64> {
    i64::try_from(q.to_u64()?).map_err(|_| {
        ProcessError::Internal(format!(
            "sequence number {q} does not fit a Delta txn version (i64)"
        ))
    })
}

/// The Delta `txn` app id of a delivery's shard.
pub fn app_id(delivery: &str, shard: ShardId) -> String {
    format!("{delivery}-{shard}")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::datafusion::prelude::SessionContext;
    use freshet_storage::{PutRecord, Store, StoreConfig, SystemClock};

    /// (rows, distinct (shard, sequence number) pairs) of a table, read through DataFusion.
    async fn count(url: url::Url) -> (i64, i64) {
        let table = deltalake::open_table(url).await.unwrap();
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*) AS n, count(DISTINCT (_shard_id, _sequence_number)) AS d FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        use deltalake::arrow::array::AsArray;
        use deltalake::arrow::datatypes::Int64Type;
        let b = &batches[0];
        (
            b.column(0).as_primitive::<Int64Type>().value(0),
            b.column(1).as_primitive::<Int64Type>().value(0),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_once_across_restarts_and_skips_committed_txns() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StreamStore> =
            Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
        let stream = StreamName::new("s").unwrap();
        store.create_stream(&stream, 2).await.unwrap();
        let mut config = DeliveryConfig::new("d", "s", "t", dir.path().join("wh").display().to_string());
        config.buffer_interval_ms = 900_000;
        config.maintenance.checkpoint_interval_commits = 2;
        let mut total = 0;
        for round in 0..3 {
            let d = spawn_delivery(config.clone(), store.clone(), CancellationToken::new());
            let recs: Vec<PutRecord> = (0..50)
                .map(|i| PutRecord::new(format!("k{i}"), format!(r#"{{"i": {i}, "r{round}": true}}"#)))
                .collect();
            store.put_records(&stream, recs).await.unwrap();
            total += 50;
            let mut rows = 0;
            while rows < 50 {
                rows += d.flush_now().await.unwrap().rows;
            }
            d.shutdown().await.unwrap();
        }
        let (rows, distinct) = count(config.table_url().unwrap()).await;
        assert_eq!((rows, distinct), (total, total));
        // A checkpoint was written (every 2 commits).
        let log = dir.path().join("wh/t/_delta_log");
        assert!(log.join("_last_checkpoint").exists());
        // A commit whose txn versions are already in the table is recognised as landed.
        let mut sink = DeltaSink::open_or_create(
            "t",
            config.table_url().unwrap(),
            HashMap::new(),
            &TableSchema::initial(&config),
            &["event_date".to_string()],
            HashMap::new(),
        )
        .await
        .unwrap();
        let shard = ShardId(0);
        let v = sink.txn_version(&app_id("d", shard)).await.unwrap().unwrap();
        let t = |v| vec![Transaction::new(app_id("d", shard), v)];
        assert_eq!(
            sink.txn_state(&t(v), &[Some(v - 1)]).await.unwrap(),
            TxnState::Landed
        );
        assert_eq!(
            sink.txn_state(&t(v + 1), &[Some(v)]).await.unwrap(),
            TxnState::Ready
        );
        // Positions moved by someone else: fenced.
        assert!(matches!(
            sink.txn_state(&t(v + 1), &[Some(v - 5)]).await,
            Err(ProcessError::Fenced { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sql_transform_filters_and_enriches_and_failures_go_to_the_error_table() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StreamStore> =
            Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
        let stream = StreamName::new("s").unwrap();
        store.create_stream(&stream, 1).await.unwrap();
        let wh = dir.path().join("wh").display().to_string();
        let mut config = DeliveryConfig::new("d", "s", "t", &wh);
        config.buffer_interval_ms = 900_000;
        config.transform_sql = Some("SELECT *, i * 2 AS doubled FROM batch WHERE i % 2 = 0".into());
        let d = spawn_delivery(config.clone(), store.clone(), CancellationToken::new());
        let recs: Vec<PutRecord> = (0..50)
            .map(|i| PutRecord::new("k", format!(r#"{{"i": {i}, "s": "x{i}"}}"#)))
            .collect();
        store.put_records(&stream, recs).await.unwrap();
        let mut rows = 0;
        while rows < 25 {
            rows += d.flush_now().await.unwrap().rows;
        }
        d.shutdown().await.unwrap();
        assert_eq!(count(config.table_url().unwrap()).await, (25, 25));
        let table = deltalake::open_table(config.table_url().unwrap()).await.unwrap();
        let cols: Vec<String> = table
            .snapshot()
            .unwrap()
            .snapshot()
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert!(cols.contains(&"doubled".to_string()), "{cols:?}");

        // A transform that fails at run time: the batch's records become error rows.
        config.transform_sql = Some("SELECT *, CAST(s AS INT) AS n FROM batch".into());
        let d = spawn_delivery(config.clone(), store.clone(), CancellationToken::new());
        let recs: Vec<PutRecord> = (0..10)
            .map(|i| PutRecord::new("k", format!(r#"{{"i": {i}, "s": "y"}}"#)))
            .collect();
        store.put_records(&stream, recs).await.unwrap();
        let mut errors = 0;
        while errors < 10 {
            errors += d.flush_now().await.unwrap().error_rows;
        }
        d.shutdown().await.unwrap();
        assert_eq!(count(config.errors_table_url().unwrap()).await, (10, 10));
        assert_eq!(count(config.table_url().unwrap()).await, (25, 25));
        // A query that does not parse is a configuration error.
        config.transform_sql = Some("SELEC nonsense".into());
        assert!(config.validate().is_err());
    }
}
