//! Kinesis batches pushed into a delivery's Delta table: the handler behind `freshet lambda delivery`, in the shape
//! of an AWS Lambda function fed by a Kinesis event source mapping (`KinesisEvent` in,
//! `KinesisEventResponse { batchItemFailures }` out).
//!
//! The rows are the streaming delivery's ([`crate::delivery`]): the same conversion, lineage columns, partitioning,
//! HTTP transform (which sees AWS's sequence numbers, and must answer before the invocation's deadline or the
//! shard is reported failed), SQL transform, error table and one Delta `txn` per shard (app id `<delivery>-<shardId>`). What differs is where
//! positions come from: the records are pushed, not read, and AWS sequence numbers do not fit a Delta `txn` version.
//!
//! # Exactly-once across invocations
//!
//! - Kinesis sequence numbers are decimal strings of up to 129 digits (AWS's are 56 today), while a `txn` version
//!   is an `i64`. They are compared as decimals: leading zeros stripped, then by (length, digits)
//!   ([`SequenceNumberText`]), which is right for AWS's numbers and freshet's own `u64` ones alike.
//! - Every commit carries, per shard it covers, a `txn` action whose version is only a counter: strictly greater
//!   than the shard's previous `txn` version and at least the table version the commit is built on plus one. A
//!   commit lands at a log version at or after its counter (a lost race only moves it later), so the commit that
//!   holds `txn` version `T` is found by reading `_delta_log/` from version `T` on, usually at `T` itself.
//! - The same commit's `commitInfo` carries the exact last sequence number of each shard it covers
//!   (`"freshetPositions": {"<app id>": {"txnVersion": T, "sequenceNumber": "<digits>"}}`). Data and position are one
//!   atomic Delta commit, so the table can never hold rows beyond its recorded position or the reverse.
//! - On each invocation the shard's `txn` version is read from the table snapshot and its exact sequence number
//!   from that commit (cached while the execution environment lives); records at or before it are skipped, so a
//!   re-delivered batch, or a retry after a partial failure, adds nothing twice.
//! - Error rows go to `<table>_errors` first, with their own `txn` counters and positions kept the same way; a
//!   retry skips error rows that are already there.
//! - A commit whose call failed is settled by re-reading the table: the shard's `txn` version equal to the counter
//!   of the attempt means it landed; any other change means another writer moved the position, and the shard is
//!   reported failed so the next delivery of its records starts from the table again.
//! - If the log entry holding a shard's position was removed by log cleanup (older than
//!   `delta.logRetentionDuration`, 30 days by default, with a newer checkpoint), the exact position is unknown: this
//!   is logged and the batch is taken whole. AWS re-delivers a batch only right after a failed invocation, so a
//!   batch older than the retention cannot be a re-delivery of committed records.
//!
//! Requirements on the event source mapping: `ParallelizationFactor` 1 (records of a shard arrive in order, one
//! batch at a time) and `FunctionResponseTypes: ["ReportBatchItemFailures"]`.
//!
//! # Partial failure
//!
//! Shards are committed one at a time. A shard whose commit cannot be made before the deadline (object store down,
//! error table unusable, another writer moved its position) or whose records are not in increasing sequence order
//! is answered with its first record not committed as a batch item failure, which is what AWS documents: the
//! mapping retries that shard from there, and the records before it count as processed.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::KinesisEventResponse;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::kernel::Transaction;
use freshet_storage::{Record, SequenceNumber, ShardId};

use crate::config::{ColumnType, DeliveryConfig};
use crate::convert::{
    Column, Converter, ErrorKind, ErrorRow, SourceRecord, TableSchema, errors_batch, errors_schema,
};
use crate::delivery::app_id;
use crate::error::{ProcessError, Result};
use crate::http_transform::HttpTransform;
use crate::table::DeltaSink;
use crate::transform::SqlTransform;
use tokio_util::sync::CancellationToken;

/// The extra lineage column of batch deliveries: the exact source sequence number as decimal text.
/// `_sequence_number` (a long) holds it too when it fits, and is null when it does not (AWS's 56-digit numbers).
pub const SOURCE_SEQUENCE_NUMBER_COLUMN: &str = "_source_sequence_number";
/// The `commitInfo` key holding the exact positions of the shards a commit covers.
pub const POSITIONS_KEY: &str = "freshetPositions";
/// Longest Kinesis sequence number (Kinesis: `0|([1-9]\d{0,128})`).
pub const SEQUENCE_DIGITS_MAX: usize = 129;
/// Most log entries read after a `txn` version to find the commit that holds it.
const LOOKUP_ENTRIES_MAX: u64 = 1_000;

/// A malformed event, or a failure of the pipeline itself (as opposed to bad records, which are error rows).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("malformed Kinesis event: {0}")]
    Malformed(String),
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// A sequence number as decimal digits without leading zeros, ordered as a number by (length, digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SequenceNumberText(String);

impl SequenceNumberText {
    /// `s` must be 1–129 ASCII digits.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() || s.len() > SEQUENCE_DIGITS_MAX || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "sequence number {s:?} must be 1 to {SEQUENCE_DIGITS_MAX} decimal digits"
            ));
        }
        let trimmed = s.trim_start_matches('0');
        Ok(Self(if trimmed.is_empty() { "0" } else { trimmed }.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number as an `i64`, when it fits.
    pub fn to_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }
}

impl Ord for SequenceNumberText {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.0.len(), self.0.as_bytes()).cmp(&(other.0.len(), other.0.as_bytes()))
    }
}

impl PartialOrd for SequenceNumberText {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for SequenceNumberText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shard's position in one table: its `txn` counter and the exact last sequence number committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub txn_version: i64,
    /// `None` when the commit holding it is no longer in the log (see the module docs).
    pub sequence_number: Option<SequenceNumberText>,
}

/// One record of the event, checked.
#[derive(Clone, Debug)]
struct BatchRecord {
    /// As the event wrote it (the batch item failure identifier).
    raw_sequence_number: String,
    sequence_number: SequenceNumberText,
    partition_key: String,
    data: bytes::Bytes,
    arrival_ms: i64,
}

/// The records of one shard, in event order.
#[derive(Debug)]
struct ShardBatch {
    shard: ShardId,
    records: Vec<BatchRecord>,
    /// Index of the first record that is not after its predecessor, if any: it and what follows are not taken.
    out_of_order_at: Option<usize>,
}

/// What one invocation did, besides the response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchReport {
    pub rows: u64,
    pub error_rows: u64,
    /// Records skipped because the table already holds them (a re-delivery).
    pub skipped: u64,
    /// Records the HTTP transform returned `Dropped` for (not written, not errors; covered by the position).
    pub dropped: u64,
    /// Data table versions committed.
    pub versions: Vec<i64>,
    /// Shards answered as failed, with the reason.
    pub failed_shards: Vec<(String, String)>,
}

/// A delivery fed by pushed Kinesis batches. Keep one per execution environment: the tables stay open and the
/// shards' positions cached between invocations (they are checked against the table every time).
#[derive(Debug)]
pub struct BatchDelivery {
    config: Arc<DeliveryConfig>,
    converter: Converter,
    transform: Option<SqlTransform>,
    http_transform: Option<HttpTransform>,
    data: Option<DeltaSink>,
    errors: Option<DeltaSink>,
    /// (table name, app id) → the position last read or written.
    positions: HashMap<(String, String), Position>,
}

impl BatchDelivery {
    /// Fails on an invalid configuration; the tables are opened by the first batch.
    pub fn new(config: DeliveryConfig) -> Result<Self> {
        config.validate()?;
        let config = Arc::new(config);
        Ok(Self {
            converter: Converter::new(config.clone()),
            transform: SqlTransform::new(&config),
            http_transform: HttpTransform::new(&config)?,
            config,
            data: None,
            errors: None,
            positions: HashMap::new(),
        })
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// Deliver `event`, committing before `deadline` or giving up on the shards not done by then. `Err` only for a
    /// malformed event (nothing is written); every other failure is a batch item failure of its shard.
    pub async fn handle(
        &mut self,
        event: KinesisEvent,
        deadline: Instant,
    ) -> std::result::Result<(KinesisEventResponse, BatchReport), BatchError> {
        let shards = parse_event(&event).map_err(BatchError::Malformed)?;
        let mut response = KinesisEventResponse::default();
        let mut report = BatchReport::default();
        for batch in shards {
            let result = if Instant::now() >= deadline {
                Err(ProcessError::Internal(
                    "no time left before the invocation's deadline".to_string(),
                ))
            } else {
                self.deliver_shard(&batch, deadline, &mut report).await
            };
            let first_failed = match result {
                Ok(()) => batch
                    .out_of_order_at
                    .map(|i| (i, "sequence numbers are not increasing".to_string())),
                Err(e) => Some((0, e.to_string())),
            };
            if let Some((i, reason)) = first_failed {
                let shard = batch.shard.to_string();
                tracing::warn!(delivery = %self.config.name, %shard, %reason,
                    sequence_number = %batch.records[i].raw_sequence_number, "shard not delivered; reported as failed");
                response.add_failure(batch.records[i].raw_sequence_number.clone());
                report.failed_shards.push((shard, reason));
            }
        }
        Ok((response, report))
    }

    /// Commit one shard's records that the table does not hold yet (up to `out_of_order_at`).
    async fn deliver_shard(
        &mut self,
        batch: &ShardBatch,
        deadline: Instant,
        report: &mut BatchReport,
    ) -> Result<()> {
        let app = app_id(&self.config.name, batch.shard);
        let records = &batch.records[..batch.out_of_order_at.unwrap_or(batch.records.len())];
        if records.is_empty() {
            return Ok(());
        }
        let data = self.open_data(deadline).await?;
        data.refresh().await?;
        let position = self.position(false, &app).await?;
        let fresh: Vec<&BatchRecord> = records
            .iter()
            .filter(|r| {
                position
                    .as_ref()
                    .and_then(|p| p.sequence_number.as_ref())
                    .is_none_or(|committed| r.sequence_number > *committed)
            })
            .collect();
        report.skipped += (records.len() - fresh.len()) as u64;
        let Some(last) = fresh.last().map(|r| r.sequence_number.clone()) else {
            tracing::info!(delivery = %self.config.name, %app, "every record is in the table already; nothing to do");
            return Ok(());
        };

        // Convert with ordinals (1-based) in place of sequence numbers, which may not fit a u64; the ordinals are
        // replaced by the exact numbers right after.
        let sources: Vec<SourceRecord> = fresh
            .iter()
            .enumerate()
            .map(|(i, r)| SourceRecord {
                shard_id: batch.shard,
                record: Record {
                    sequence_number: SequenceNumber::from_u64(i as u64 + 1),
                    partition_key: r.partition_key.clone(),
                    data: r.data.clone(),
                    arrival_ms: r.arrival_ms,
                },
            })
            .collect();
        let exact: Vec<&SequenceNumberText> = fresh.iter().map(|r| &r.sequence_number).collect();
        // The HTTP transform first, as in the streaming delivery: `Ok` records go on with their new data, `Dropped`
        // ones are counted (the position covers them), failures become error rows.
        let (sources, http_errors) = match &self.http_transform {
            Some(h) => {
                let aws_number = |s: &SourceRecord| {
                    let ordinal = s.record.sequence_number.to_u64().unwrap_or(0) as usize;
                    ordinal
                        .checked_sub(1)
                        .and_then(|i| exact.get(i))
                        .map_or_else(|| s.record.sequence_number.to_string(), |q| q.to_string())
                };
                // Retries stop at the deadline: nothing is committed then, and the shard is reported failed.
                let not_cancelled = CancellationToken::new();
                let out = tokio::select! {
                    out = h.apply_with(&sources, &not_cancelled, &aws_number) => out?,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        return Err(ProcessError::Internal(
                            "the HTTP transform did not finish before the invocation's deadline".to_string(),
                        ));
                    }
                };
                report.dropped += out.dropped;
                (out.records, out.errors)
            }
            None => (sources, Vec::new()),
        };
        let table_schema = self.data.as_ref().expect("opened above").schema()?;
        let mut converted = self.converter.convert(&table_schema, &sources)?;
        converted.errors.extend(http_errors);
        let mut schema = with_source_column(&self.config.table, converted.schema.clone())?;
        let mut batch_rows = match converted.batch()? {
            Some(b) => Some(patch_lineage(b, &exact)?),
            None => None,
        };
        if let Some(t) = &self.transform
            && let Some(rows) = batch_rows.take()
        {
            match t.apply(&schema, rows, &schema).await {
                Ok((rows, out_schema)) => {
                    batch_rows = rows;
                    schema = out_schema;
                }
                Err(reason) => {
                    tracing::warn!(delivery = %self.config.name, %reason, "transform failed; the batch goes to the error table");
                    let failed: std::collections::HashSet<SequenceNumber> = converted
                        .errors
                        .iter()
                        .map(|e| e.sequence_number.into())
                        .collect();
                    for src in sources
                        .iter()
                        .filter(|s| !failed.contains(&s.record.sequence_number))
                    {
                        converted.errors.push(ErrorRow::new(
                            src.shard_id,
                            &src.record,
                            ErrorKind::TransformFailed,
                            format!("transform_sql failed: {reason}"),
                        )?);
                    }
                    schema = with_source_column(&self.config.table, table_schema.clone())?;
                }
            }
        }

        // 1. Error rows the error table does not hold yet.
        if !converted.errors.is_empty() {
            self.open_errors(deadline).await?;
            self.errors.as_mut().expect("opened above").refresh().await?;
            let errors_position = self.position(true, &app).await?;
            let errors: Vec<ErrorRow> = converted
                .errors
                .iter()
                .filter(|e| {
                    errors_position
                        .as_ref()
                        .and_then(|p| p.sequence_number.as_ref())
                        .is_none_or(|c| *exact[e.sequence_number as usize - 1] > *c)
                })
                .cloned()
                .collect();
            if !errors.is_empty() {
                let rows = patch_lineage(errors_batch(&errors, now_ms())?, &exact)?;
                let errors_table = self.config.errors_table();
                let schema = with_source_column(&errors_table, errors_schema())?;
                self.commit(
                    true,
                    &app,
                    errors_position,
                    Some((&schema, rows)),
                    &last,
                    deadline,
                )
                .await?;
                report.error_rows += errors.len() as u64;
            }
        }

        // 2. Data rows and the shard's position, in one commit.
        let rows = batch_rows.as_ref().map_or(0, |b| b.num_rows() as u64);
        let version = self
            .commit(
                false,
                &app,
                position,
                batch_rows.map(|b| (&schema, b)),
                &last,
                deadline,
            )
            .await?;
        report.rows += rows;
        report.versions.extend(version);
        Ok(())
    }

    async fn open_data(&mut self, deadline: Instant) -> Result<&mut DeltaSink> {
        if self.data.is_none() {
            let initial = with_source_column(&self.config.table, TableSchema::initial(&self.config))?;
            let partition_columns: Vec<String> =
                self.config.partition_by.iter().map(|p| p.name.clone()).collect();
            let sink = open(
                &self.config,
                &self.config.table,
                self.config.table_url()?,
                &initial,
                &partition_columns,
                deadline,
            )
            .await?;
            check_compatible(&self.config, &sink.schema()?)?;
            self.data = Some(sink);
        }
        Ok(self.data.as_mut().expect("set above"))
    }

    async fn open_errors(&mut self, deadline: Instant) -> Result<()> {
        if self.errors.is_none() {
            let name = self.config.errors_table();
            let initial = with_source_column(&name, errors_schema())?;
            let sink = open(
                &self.config,
                &name,
                self.config.errors_table_url()?,
                &initial,
                &[],
                deadline,
            )
            .await?;
            self.errors = Some(sink);
        }
        Ok(())
    }

    /// The data (or error) table, which must be open, and the position cache.
    fn parts(&mut self, errors: bool) -> (&mut DeltaSink, &mut HashMap<(String, String), Position>) {
        let sink = if errors {
            self.errors.as_mut()
        } else {
            self.data.as_mut()
        };
        (sink.expect("the table is open"), &mut self.positions)
    }

    /// The position of `app` in the data (or error) table as of its loaded snapshot.
    async fn position(&mut self, errors: bool, app: &str) -> Result<Option<Position>> {
        let (sink, positions) = self.parts(errors);
        let Some(txn_version) = sink.txn_version(app).await? else {
            return Ok(None);
        };
        let key = (sink.name().to_string(), app.to_string());
        if let Some(p) = positions.get(&key).filter(|p| p.txn_version == txn_version) {
            return Ok(Some(p.clone()));
        }
        let position = Position {
            txn_version,
            sequence_number: find_position(sink, app, txn_version).await?,
        };
        positions.insert(key, position.clone());
        Ok(Some(position))
    }

    /// Write `rows` (if any) and commit them with `app`'s new position `last`, retrying until `deadline`. Returns
    /// the new table version (`None` when a failed attempt turned out to have landed).
    async fn commit(
        &mut self,
        errors: bool,
        app: &str,
        previous: Option<Position>,
        rows: Option<(&TableSchema, RecordBatch)>,
        last: &SequenceNumberText,
        deadline: Instant,
    ) -> Result<Option<i64>> {
        let (sink, positions) = self.parts(errors);
        let table_schema = sink.schema()?;
        let mut backoff = Duration::from_millis(100);
        let adds = match &rows {
            None => Vec::new(),
            Some((schema, batch)) => loop {
                match sink.write_files(schema, vec![batch.clone()]).await {
                    Ok(adds) => break adds,
                    Err(e) => wait_or_give_up(deadline, &mut backoff, e, "writing Parquet files").await?,
                }
            },
        };
        let new_schema = rows.as_ref().map(|(s, _)| *s).filter(|s| **s != table_schema);
        let previous_version = previous.as_ref().map(|p| p.txn_version);
        let txn_version = previous_version
            .map_or(1, |v| v + 1)
            .max(sink.version().unwrap_or(0) + 1);
        let mut recorded = serde_json::Map::new();
        recorded.insert(
            app.to_string(),
            serde_json::json!({"txnVersion": txn_version, "sequenceNumber": last.as_str()}),
        );
        let metadata = HashMap::from([(POSITIONS_KEY.to_string(), serde_json::Value::Object(recorded))]);
        loop {
            let txn = Transaction::new_with_last_update(app, txn_version, Some(now_ms()));
            let failure = match sink
                .commit(adds.clone(), new_schema, vec![txn], metadata.clone())
                .await
            {
                Ok(version) => {
                    let key = (sink.name().to_string(), app.to_string());
                    positions.insert(
                        key,
                        Position {
                            txn_version,
                            sequence_number: Some(last.clone()),
                        },
                    );
                    return Ok(Some(version));
                }
                Err(e) => e,
            };
            tracing::warn!(table = sink.name(), %app, error = %failure, "commit failed; re-reading the table");
            if let Err(e) = sink.refresh().await {
                wait_or_give_up(deadline, &mut backoff, e, "re-reading the table").await?;
                continue;
            }
            match sink.txn_version(app).await? {
                Some(v) if v == txn_version => {
                    let key = (sink.name().to_string(), app.to_string());
                    positions.insert(
                        key,
                        Position {
                            txn_version,
                            sequence_number: Some(last.clone()),
                        },
                    );
                    return Ok(None);
                }
                v if v == previous_version => {
                    wait_or_give_up(deadline, &mut backoff, failure, "committing").await?;
                }
                _ => {
                    return Err(ProcessError::Fenced {
                        table: sink.name().to_string(),
                        app_id: app.to_string(),
                    });
                }
            }
        }
    }
}

/// Open (or create) a table, retrying what may be transient until `deadline`.
async fn open(
    config: &DeliveryConfig,
    name: &str,
    url: url::Url,
    initial: &TableSchema,
    partition_columns: &[String],
    deadline: Instant,
) -> Result<DeltaSink> {
    let configuration = HashMap::from([(
        "delta.checkpointInterval".to_string(),
        config.maintenance.checkpoint_interval_commits.to_string(),
    )]);
    let mut backoff = Duration::from_millis(100);
    loop {
        match DeltaSink::open_or_create(
            name,
            url.clone(),
            config.storage_options.clone(),
            initial,
            partition_columns,
            configuration.clone(),
        )
        .await
        {
            Ok(sink) => return Ok(sink),
            Err(e) if e.is_retryable() => {
                wait_or_give_up(deadline, &mut backoff, e, "opening the table").await?
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sleep `backoff` (doubling up to 5 s) if that ends before `deadline`; otherwise give up with `err`.
async fn wait_or_give_up(
    deadline: Instant,
    backoff: &mut Duration,
    err: ProcessError,
    what: &str,
) -> Result<()> {
    if matches!(
        err,
        ProcessError::Incompatible { .. } | ProcessError::Fenced { .. } | ProcessError::Internal(_)
    ) || Instant::now() + *backoff >= deadline
    {
        return Err(err);
    }
    tracing::warn!(error = %err, "{what} failed; retrying in {backoff:?}");
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    Ok(())
}

/// Find the commit holding `app`'s `txn` version `txn_version` (at that log version or after it) and read the
/// exact sequence number from its `commitInfo`.
async fn find_position(sink: &DeltaSink, app: &str, txn_version: i64) -> Result<Option<SequenceNumberText>> {
    let name = sink.name().to_string();
    let latest = sink.version().unwrap_or(0);
    if txn_version > latest {
        return Err(foreign_txn(&name, app, txn_version));
    }
    let store = sink.table().log_store();
    let mut missing = false;
    let end = (latest as u64).min(txn_version as u64 + LOOKUP_ENTRIES_MAX);
    for v in txn_version as u64..=end {
        let Some(bytes) = store
            .read_commit_entry(v)
            .await
            .map_err(|e| ProcessError::delta(&name, e))?
        else {
            missing = true;
            continue;
        };
        if let Some(found) = position_in_entry(&bytes, app, txn_version) {
            return match found {
                Some(seq) => Ok(Some(seq)),
                None => Err(foreign_txn(&name, app, txn_version)),
            };
        }
    }
    if missing {
        tracing::warn!(table = %name, %app, txn_version,
            "the commit holding this shard's position is no longer in the log; its exact position is unknown");
        return Ok(None);
    }
    Err(foreign_txn(&name, app, txn_version))
}

fn foreign_txn(table: &str, app: &str, version: i64) -> ProcessError {
    ProcessError::Incompatible {
        table: table.to_string(),
        message: format!(
            "txn {app} version {version} was not written by a batch delivery (is a streaming delivery of the same \
             name writing this table?)"
        ),
    }
}

/// In one log entry: `None` if it holds no `txn` (`app`, `txn_version`); `Some(None)` if it does but without the
/// exact position; `Some(Some(seq))` otherwise.
fn position_in_entry(entry: &[u8], app: &str, txn_version: i64) -> Option<Option<SequenceNumberText>> {
    let mut has_txn = false;
    let mut seq = None;
    for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(txn) = action.get("txn")
            && txn.get("appId").and_then(|a| a.as_str()) == Some(app)
            && txn.get("version").and_then(|v| v.as_i64()) == Some(txn_version)
        {
            has_txn = true;
        }
        if let Some(p) = action
            .get("commitInfo")
            .and_then(|c| c.get(POSITIONS_KEY))
            .and_then(|p| p.get(app))
            && p.get("txnVersion").and_then(|v| v.as_i64()) == Some(txn_version)
        {
            seq = p
                .get("sequenceNumber")
                .and_then(|s| s.as_str())
                .and_then(|s| SequenceNumberText::parse(s).ok());
        }
    }
    has_txn.then_some(seq)
}

/// `schema` with the [`SOURCE_SEQUENCE_NUMBER_COLUMN`] string column (appended unless present).
fn with_source_column(table: &str, mut schema: TableSchema) -> Result<TableSchema> {
    match schema
        .columns
        .iter()
        .find(|c| c.name == SOURCE_SEQUENCE_NUMBER_COLUMN)
    {
        Some(c) if c.ty == ColumnType::String => {}
        Some(c) => {
            return Err(ProcessError::Incompatible {
                table: table.to_string(),
                message: format!(
                    "column {SOURCE_SEQUENCE_NUMBER_COLUMN} is {:?}, not a string",
                    c.ty
                ),
            });
        }
        None => schema.columns.push(Column {
            name: SOURCE_SEQUENCE_NUMBER_COLUMN.to_string(),
            ty: ColumnType::String,
        }),
    }
    Ok(schema)
}

/// Replace the ordinals in `_sequence_number` by the exact numbers: the long when it fits (else null), and the
/// decimal text in [`SOURCE_SEQUENCE_NUMBER_COLUMN`] (replaced, or appended as the last column).
fn patch_lineage(batch: RecordBatch, exact: &[&SequenceNumberText]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let internal = |m: &str| ProcessError::Internal(format!("batch lineage: {m}"));
    let seq_index = schema
        .index_of("_sequence_number")
        .map_err(|_| internal("no _sequence_number column"))?;
    let ordinals = batch
        .column(seq_index)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| internal("_sequence_number is not a long"))?;
    let mut longs = Vec::with_capacity(batch.num_rows());
    let mut texts = Vec::with_capacity(batch.num_rows());
    for i in 0..ordinals.len() {
        let seq = ordinals
            .is_valid(i)
            .then(|| ordinals.value(i))
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| o.checked_sub(1))
            .and_then(|o| exact.get(o))
            .ok_or_else(|| internal("a row's ordinal is out of range"))?;
        longs.push(seq.to_i64());
        texts.push(Some(seq.as_str().to_string()));
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    columns[seq_index] = Arc::new(Int64Array::from(longs));
    let text: ArrayRef = Arc::new(StringArray::from(texts));
    match schema.index_of(SOURCE_SEQUENCE_NUMBER_COLUMN) {
        Ok(i) => columns[i] = text,
        Err(_) => {
            columns.push(text);
            fields.push(Arc::new(deltalake::arrow::datatypes::Field::new(
                SOURCE_SEQUENCE_NUMBER_COLUMN,
                deltalake::arrow::datatypes::DataType::Utf8,
                true,
            )));
        }
    }
    let schema = Arc::new(deltalake::arrow::datatypes::Schema::new(fields));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A table created with another partitioning or lineage cannot take this delivery's rows.
fn check_compatible(config: &DeliveryConfig, schema: &TableSchema) -> Result<()> {
    for c in &TableSchema::initial(config).columns {
        match schema.columns.iter().find(|s| s.name == c.name) {
            Some(s) if s.ty == c.ty => {}
            other => {
                return Err(ProcessError::Incompatible {
                    table: config.table.clone(),
                    message: match other {
                        Some(s) => {
                            format!("column {} is {:?} in the table but {:?} here", c.name, s.ty, c.ty)
                        }
                        None => format!("the table has no column {}", c.name),
                    },
                });
            }
        }
    }
    Ok(())
}

/// Check the event and group its records by shard, in event order.
fn parse_event(event: &KinesisEvent) -> std::result::Result<Vec<ShardBatch>, String> {
    let bad = |i: usize, m: String| format!("record {i}: {m}");
    let mut shards: Vec<ShardBatch> = Vec::new();
    for (i, r) in event.records.iter().enumerate() {
        let event_id = r.event_id.as_deref().ok_or_else(|| {
            bad(
                i,
                "eventID is missing (it must be `shardId-…:<sequence number>`)".into(),
            )
        })?;
        let (shard_text, id_seq) = event_id.split_once(':').ok_or_else(|| {
            bad(
                i,
                format!("eventID {event_id:?} is not `shardId-…:<sequence number>`"),
            )
        })?;
        let shard: ShardId = shard_text
            .parse()
            .map_err(|e| bad(i, format!("eventID {event_id:?}: {e}")))?;
        let raw = &r.kinesis.sequence_number;
        let sequence_number = SequenceNumberText::parse(raw).map_err(|m| bad(i, m))?;
        if id_seq != raw {
            return Err(bad(
                i,
                format!("eventID {event_id:?} names another sequence number than {raw:?}"),
            ));
        }
        if r.kinesis.partition_key.is_empty() || r.kinesis.partition_key.len() > 256 {
            return Err(bad(i, "partitionKey must be 1 to 256 characters".into()));
        }
        let record = BatchRecord {
            raw_sequence_number: raw.clone(),
            sequence_number,
            partition_key: r.kinesis.partition_key.clone(),
            data: bytes::Bytes::from(r.kinesis.data.0.clone()),
            arrival_ms: r.kinesis.approximate_arrival_timestamp.timestamp_millis(),
        };
        let batch = match shards.iter_mut().position(|s| s.shard == shard) {
            Some(p) => &mut shards[p],
            None => {
                shards.push(ShardBatch {
                    shard,
                    records: Vec::new(),
                    out_of_order_at: None,
                });
                shards.last_mut().expect("just pushed")
            }
        };
        if batch.out_of_order_at.is_none()
            && let Some(prev) = batch.records.last()
            && record.sequence_number <= prev.sequence_number
        {
            batch.out_of_order_at = Some(batch.records.len());
        }
        batch.records.push(record);
    }
    Ok(shards)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_as_decimals_of_any_length() {
        let p = |s: &str| SequenceNumberText::parse(s).unwrap();
        let aws = "49590338271490256608559692538361571095921575989136588898";
        assert_eq!(aws.len(), 56);
        assert!(p(aws) > p("18446744073709551615"));
        assert!(p(aws) < p("49590338271490256608559692538361571095921575989136588899"));
        assert!(p("9") < p("10"));
        assert_eq!(p("007"), p("7"));
        assert_eq!(p("000").as_str(), "0");
        assert_eq!(p("42").to_i64(), Some(42));
        assert_eq!(p(aws).to_i64(), None);
        assert!(SequenceNumberText::parse("").is_err());
        assert!(SequenceNumberText::parse("12a").is_err());
        assert!(SequenceNumberText::parse(&"1".repeat(130)).is_err());
    }

    #[test]
    fn a_log_entry_gives_the_exact_position_of_its_txn() {
        let entry = concat!(
            r#"{"commitInfo":{"timestamp":1,"freshetPositions":{"d-shardId-000000000001":{"txnVersion":4,"sequenceNumber":"49590338271490256608559692538361571095921575989136588898"}}}}"#,
            "\n",
            r#"{"txn":{"appId":"d-shardId-000000000001","version":4,"lastUpdated":1}}"#,
            "\n"
        );
        let found = position_in_entry(entry.as_bytes(), "d-shardId-000000000001", 4);
        assert_eq!(
            found.unwrap().unwrap().as_str(),
            "49590338271490256608559692538361571095921575989136588898"
        );
        assert_eq!(
            position_in_entry(entry.as_bytes(), "d-shardId-000000000001", 3),
            None
        );
        assert_eq!(position_in_entry(entry.as_bytes(), "other", 4), None);
        let foreign = r#"{"txn":{"appId":"x","version":9}}"#;
        assert_eq!(position_in_entry(foreign.as_bytes(), "x", 9), Some(None));
    }
}
