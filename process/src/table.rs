//! A Delta table that a delivery appends to: create-or-open, read `txn` versions, write Parquet files, commit.
//!
//! # Guarantees
//!
//! - [`DeltaSink::commit`] writes one Delta commit holding the given Add actions, an optional schema change
//!   (Metadata action) and one `txn` action per shard. Delta commits are atomic, so data and positions land
//!   together or not at all.
//! - On a local-directory warehouse every Parquet file and its directories are fsync'd *before* the commit entry
//!   is written, and the commit entry (plus any checkpoint) and `_delta_log/` are fsync'd before `commit` returns:
//!   a commit that returned survives a machine crash. object_store 0.13's `LocalFileSystem` does not fsync, so
//!   this module does. On S3 the commit entry is written with put-if-absent (`If-None-Match: *`).
//! - Nothing here deletes data files: after a failed commit the written files stay (unreferenced) until vacuum.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use url::Url;

use crate::config::{ColumnType, LINEAGE_COLUMNS, local_path};
use crate::convert::TableSchema;
use crate::error::{ProcessError, Result};

/// Where a commit stands relative to the table's `txn` versions; see [`DeltaSink::txn_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    Ready,
    Landed,
}

/// An open Delta table plus what is needed to write to it durably.
#[derive(Debug)]
pub struct DeltaSink {
    name: String,
    url: Url,
    storage_options: HashMap<String, String>,
    table: DeltaTable,
    local_dir: Option<PathBuf>,
    partition_columns: Vec<String>,
}

impl DeltaSink {
    /// Open the table at `url`, creating it with `initial` (and `partition_columns`, `configuration`) if absent.
    pub async fn open_or_create(
        name: &str,
        url: Url,
        storage_options: HashMap<String, String>,
        initial: &TableSchema,
        partition_columns: &[String],
        configuration: HashMap<String, String>,
    ) -> Result<Self> {
        let local_dir = local_path(&url);
        if let Some(dir) = &local_dir {
            create_dir_synced(dir).await?;
        }
        // A local table without a log is created without trying to open it first (which logs a kernel error).
        let absent_locally = local_dir.as_ref().is_some_and(|d| {
            std::fs::read_dir(d.join("_delta_log")).map_or(true, |mut entries| entries.next().is_none())
        });
        let opened = if absent_locally {
            Err(ProcessError::delta(
                name,
                deltalake::DeltaTableError::NotATable(url.to_string()),
            ))
        } else {
            Self::open(name, &url, &storage_options).await
        };
        let table = match opened {
            Ok(t) => t,
            Err(ProcessError::Delta {
                source: deltalake::DeltaTableError::NotATable(_),
                ..
            }) => {
                let fields: StructType = initial
                    .arrow()
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|e| ProcessError::delta(name, e.into()))?;
                let created =
                    DeltaTable::try_from_url_with_storage_options(url.clone(), storage_options.clone())
                        .await
                        .map_err(|e| ProcessError::delta(name, e))?
                        .create()
                        .with_table_name(name)
                        .with_columns(fields.fields().cloned())
                        .with_partition_columns(partition_columns.to_vec())
                        .with_configuration(configuration.into_iter().map(|(k, v)| (k, Some(v))))
                        .with_save_mode(SaveMode::Ignore)
                        .await;
                match created {
                    Ok(t) => {
                        if let Some(dir) = &local_dir {
                            sync_log_entry(dir, 0).await?;
                        }
                        t
                    }
                    // Someone else created it at the same moment: use theirs.
                    Err(_) => Self::open(name, &url, &storage_options).await?,
                }
            }
            Err(e) => return Err(e),
        };
        let partition_columns = table
            .snapshot()
            .map_err(|e| ProcessError::delta(name, e))?
            .metadata()
            .partition_columns()
            .to_vec();
        Ok(Self {
            name: name.to_string(),
            url,
            storage_options,
            table,
            local_dir,
            partition_columns,
        })
    }

    async fn open(name: &str, url: &Url, options: &HashMap<String, String>) -> Result<DeltaTable> {
        deltalake::open_table_with_storage_options(url.clone(), options.clone())
            .await
            .map_err(|e| ProcessError::delta(name, e))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn partition_columns(&self) -> &[String] {
        &self.partition_columns
    }

    /// The table's version as of the last load or commit.
    pub fn version(&self) -> Option<i64> {
        self.table.version().map(|v| v as i64)
    }

    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Load the newest version of the log.
    pub async fn refresh(&mut self) -> Result<()> {
        self.table
            .update_state()
            .await
            .map_err(|e| ProcessError::delta(&self.name, e))
    }

    /// The table's current schema.
    pub fn schema(&self) -> Result<TableSchema> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| ProcessError::delta(&self.name, e))?;
        TableSchema::from_arrow(&self.name, snapshot.snapshot().arrow_schema().as_ref())
    }

    /// The `txn` version of `app_id` in the loaded snapshot, if the table has one.
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| ProcessError::delta(&self.name, e))?;
        snapshot
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| ProcessError::delta(&self.name, e))
    }

    /// Where a commit carrying `txns` stands, after re-reading the log. `expected[i]` is the version of
    /// `txns[i].app_id` the caller believes is committed (`None`: none yet).
    ///
    /// - every txn is at or past its new version: the commit (or an identical one) already [`TxnState::Landed`];
    /// - every txn is at its expected version: [`TxnState::Ready`] to commit;
    /// - anything else means another writer moved this delivery's positions: [`ProcessError::Fenced`]; the caller
    ///   must reload its positions from the table and read again.
    pub async fn txn_state(&mut self, txns: &[Transaction], expected: &[Option<i64>]) -> Result<TxnState> {
        self.refresh().await?;
        let mut landed = 0;
        for (t, want) in txns.iter().zip(expected) {
            let have = self.txn_version(&t.app_id).await?;
            if have.is_some_and(|v| v >= t.version) {
                landed += 1;
            } else if have != *want {
                return Err(ProcessError::Fenced {
                    table: self.name.clone(),
                    app_id: t.app_id.clone(),
                });
            }
        }
        match landed {
            0 => Ok(TxnState::Ready),
            n if n == txns.len() => Ok(TxnState::Landed),
            _ => Err(ProcessError::Fenced {
                table: self.name.clone(),
                app_id: txns[0].app_id.clone(),
            }),
        }
    }

    /// Write `batches` (rows in order, in `schema`, which may be wider than the table's) as Parquet files, split
    /// by partition, and make them durable. Returns their Add actions; nothing is committed.
    ///
    /// Rows that all fall in one partition (the common case: one flush of recent records) are cut into
    /// [`write_parts`] runs written as separate files on separate tasks, so their Parquet encoding and compression
    /// use every core instead of one; each file still holds at least [`MIN_ROWS_PER_FILE`] rows, so this never
    /// makes small files. Anything else is written by one writer.
    pub async fn write_files(&self, schema: &TableSchema, batches: Vec<RecordBatch>) -> Result<Vec<Add>> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let single = single_partition(&batches, &self.partition_columns);
        let parts = if single {
            write_parts(rows, parallelism())
        } else {
            1
        };
        let adds = if parts <= 1 {
            self.write_one(schema, batches, single).await?
        } else {
            let tasks: Vec<_> = split_rows(batches, rows.div_ceil(parts))
                .into_iter()
                .map(|run| {
                    let (name, url, options) =
                        (self.name.clone(), self.url.clone(), self.storage_options.clone());
                    let (schema, partitions) = (schema.clone(), self.partition_columns.clone());
                    tokio::spawn(async move {
                        let (started, rows) = (std::time::Instant::now(), run.iter().map(|b| b.num_rows()).sum::<usize>());
                        let out = write_batch(&name, &url, &options, &schema, partitions, run, true).await;
                        tracing::debug!(table = %name, rows, ms = started.elapsed().as_millis() as u64, "wrote one part's file");
                        out
                    })
                })
                .collect();
            let mut adds = Vec::new();
            for t in tasks {
                let part = t
                    .await
                    .map_err(|e| ProcessError::Internal(format!("parquet writer task: {e}")))??;
                adds.extend(part);
            }
            adds
        };
        if let Some(dir) = &self.local_dir {
            let files: Vec<PathBuf> = adds.iter().map(|a| dir.join(percent_decode(&a.path))).collect();
            sync_files(dir.clone(), files).await?;
        }
        Ok(adds)
    }

    async fn write_one(
        &self,
        schema: &TableSchema,
        batches: Vec<RecordBatch>,
        single: bool,
    ) -> Result<Vec<Add>> {
        write_batch(
            &self.name,
            &self.url,
            &self.storage_options,
            schema,
            self.partition_columns.clone(),
            batches,
            single,
        )
        .await
    }

    /// Commit `adds`, an optional new schema, and `txns` as one Delta commit; returns the new version.
    pub async fn commit(
        &mut self,
        adds: Vec<Add>,
        new_schema: Option<&TableSchema>,
        txns: Vec<Transaction>,
        app_metadata: HashMap<String, serde_json::Value>,
    ) -> Result<i64> {
        let name = self.name.clone();
        let derr = |e| ProcessError::delta(&name, e);
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        let snapshot = self.table.snapshot().map_err(derr)?;
        if let Some(schema) = new_schema {
            // Keep every column the table has now, even one this delivery has not seen (columns only grow).
            let mut schema = schema.clone();
            let current = TableSchema::from_arrow(&name, snapshot.snapshot().arrow_schema().as_ref())?;
            for c in current.columns {
                if !schema.columns.iter().any(|s| s.name == c.name) {
                    schema.columns.push(c);
                }
            }
            let st: StructType = schema
                .arrow()
                .as_ref()
                .try_into_kernel()
                .map_err(|e| derr(e.into()))?;
            let metadata = snapshot
                .metadata()
                .clone()
                .with_schema(&st)
                .map_err(|e| ProcessError::delta(&name, e.into()))?;
            actions.push(Action::Metadata(metadata));
        }
        let partition_by = (!self.partition_columns.is_empty()).then(|| self.partition_columns.clone());
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by,
            predicate: None,
        };
        let finalized = CommitBuilder::from(
            CommitProperties::default()
                .with_application_transactions(txns)
                .with_metadata(app_metadata),
        )
        .with_actions(actions)
        .build(Some(snapshot), self.table.log_store(), operation)
        .await
        .map_err(derr)?;
        let version = finalized.version() as i64;
        self.table.state = Some(finalized.snapshot());
        if let Some(dir) = &self.local_dir {
            sync_log_entry(dir, version).await?;
        }
        Ok(version)
    }
}

/// Fewest rows in a file that [`DeltaSink::write_files`] cuts out of a larger batch to write it in parallel.
pub const MIN_ROWS_PER_FILE: usize = 131_072;

/// Into how many files (each of at least [`MIN_ROWS_PER_FILE`] rows, at most `cores`) a one-partition batch of
/// `rows` rows is cut.
pub fn write_parts(rows: usize, cores: usize) -> usize {
    (rows / MIN_ROWS_PER_FILE).clamp(1, cores.max(1))
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Cut `batches` into runs of `per` rows (the last may be shorter), in order; batches are sliced, not copied.
fn split_rows(batches: Vec<RecordBatch>, per: usize) -> Vec<Vec<RecordBatch>> {
    let mut runs = Vec::new();
    let mut run: Vec<RecordBatch> = Vec::new();
    let mut in_run = 0;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (per - in_run).min(batch.num_rows() - offset);
            run.push(batch.slice(offset, take));
            (offset, in_run) = (offset + take, in_run + take);
            if in_run == per {
                runs.push(std::mem::take(&mut run));
                in_run = 0;
            }
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Whether every row of `batches` has the value of the first row in each of `partition_columns` (so it makes one
/// file per writer). Conservative: no rows, a null, or a column missing from a batch answers no.
fn single_partition(batches: &[RecordBatch], partition_columns: &[String]) -> bool {
    use deltalake::arrow::array::{Array, Scalar};
    use deltalake::arrow::compute::kernels::cmp::eq;
    let Some(head) = batches.iter().find(|b| b.num_rows() > 0) else {
        return false;
    };
    partition_columns.iter().all(|name| {
        let Some(first) = head.column_by_name(name).map(|c| Scalar::new(c.slice(0, 1))) else {
            return false;
        };
        batches.iter().all(|batch| {
            let Some(col) = batch.column_by_name(name) else {
                return false;
            };
            col.null_count() == 0 && eq(col, &first).is_ok_and(|same| same.true_count() == batch.num_rows())
        })
    })
}

/// Write `batches` with one delta-rs writer (one file per partition they touch); returns the Add actions.
/// `single`: every row is in the partition of the first ([`single_partition`]), so the batches are written as
/// that partition's as they are, rather than split row by row by the writer (which copies every column).
async fn write_batch(
    name: &str,
    url: &Url,
    storage_options: &HashMap<String, String>,
    schema: &TableSchema,
    partition_columns: Vec<String>,
    batches: Vec<RecordBatch>,
    single: bool,
) -> Result<Vec<Add>> {
    let Some(head) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    let values: Option<indexmap::IndexMap<String, _>> = (single && !partition_columns.is_empty())
        .then(|| {
            partition_columns
                .iter()
                .map(|name| {
                    let column = head.column_by_name(name)?;
                    Some((name.clone(), ScalarExt::from_array(column.as_ref(), 0)?))
                })
                .collect()
        })
        .flatten();
    let mut writer = RecordBatchWriter::try_new(
        url.as_str(),
        schema.arrow(),
        Some(partition_columns),
        Some(storage_options.clone()),
    )
    .map_err(|e| ProcessError::delta(name, e))?
    .with_writer_properties(writer_properties(schema));
    for batch in batches {
        match &values {
            Some(values) => writer
                .write_partition(batch, values, WriteMode::Default)
                .await
                .map(|_| ()),
            None => writer.write(batch).await,
        }
        .map_err(|e| ProcessError::delta(name, e))?;
    }
    writer.flush().await.map_err(|e| ProcessError::delta(name, e))
}

/// Parquet settings of the data files, chosen by measuring `freshet bench delivery` (see BENCHMARKS.md):
/// - zstd level 1: about a third of the bytes of Snappy (delta-rs's default) at no more CPU;
/// - dictionary encoding for string columns only: device ids, statuses and topics repeat, so their pages shrink
///   and stay cheap to filter; numeric columns (times, readings, sequence numbers) rarely repeat, and building
///   their dictionaries until the 1 MiB page limit gives up on them took half of the writing time;
/// - `DELTA_BINARY_PACKED` for integer, timestamp and date columns: times and sequence numbers grow by small
///   steps, so their pages shrink to a few bits per value before zstd sees them, and the Parquet writing took
///   a quarter less time (a standard Parquet encoding: deltalake, DuckDB and Spark read it);
/// - statistics and row-group size at the parquet defaults: page-level min/max (Delta's data skipping and
///   readers' page pruning) and row groups of up to 1 Mi rows (a full 128 MiB buffer is fewer rows than that);
/// - except no statistics for the lineage string columns (`_topic`, `_client_id`, `_partition_key`, `_shard_id`):
///   a flush writes every shard's records, interleaved, into each file, so their min/max span nearly every value
///   and prune nothing, while comparing each value for them cost ~7 % of `bench delivery`'s rows/s. The numeric lineage
///   columns (`_sequence_number`, `_arrival_time`) keep theirs: those grow, so their ranges do prune.
fn writer_properties(schema: &TableSchema) -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("1 is a zstd level"),
        ))
        .set_dictionary_enabled(false);
    schema
        .columns
        .iter()
        .fold(builder, |b, c| {
            let path = ColumnPath::from(c.name.as_str());
            match c.ty {
                ColumnType::String if LINEAGE_COLUMNS.contains(&c.name.as_str()) => b
                    .set_column_dictionary_enabled(path.clone(), true)
                    .set_column_statistics_enabled(path, EnabledStatistics::None),
                ColumnType::String => b.set_column_dictionary_enabled(path, true),
                ColumnType::Long | ColumnType::Integer | ColumnType::Timestamp | ColumnType::Date => {
                    b.set_column_encoding(path, Encoding::DELTA_BINARY_PACKED)
                }
                _ => b,
            }
        })
        .build()
}

/// `%XX` escapes in a Delta Add path, undone (partition values may be escaped).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn io_err(path: &Path, source: std::io::Error) -> ProcessError {
    ProcessError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn fsync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(path, e))
}

/// fsync each file, then every directory between it and `root` (inclusive), each once.
async fn sync_files(root: PathBuf, files: Vec<PathBuf>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut dirs = std::collections::BTreeSet::new();
        for f in &files {
            fsync_path(f)?;
            let mut d = f.parent();
            while let Some(dir) = d {
                dirs.insert(dir.to_path_buf());
                if dir == root {
                    break;
                }
                d = dir.parent();
            }
        }
        for d in dirs.iter().rev() {
            fsync_path(d)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ProcessError::Internal(format!("fsync task: {e}")))?
}

/// fsync commit `version`'s log entry, a checkpoint of that version and `_last_checkpoint` if present, and
/// `_delta_log/` itself.
async fn sync_log_entry(table_dir: &Path, version: i64) -> Result<()> {
    let log = table_dir.join("_delta_log");
    tokio::task::spawn_blocking(move || {
        for name in [
            format!("{version:020}.json"),
            format!("{version:020}.checkpoint.parquet"),
            "_last_checkpoint".to_string(),
        ] {
            let p = log.join(name);
            if p.exists() {
                fsync_path(&p)?;
            }
        }
        fsync_path(&log)?;
        if let Some(parent) = log.parent() {
            fsync_path(parent)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ProcessError::Internal(format!("fsync task: {e}")))?
}

/// Create `dir` (and parents) and fsync it and its parent, so the table's directory entry is durable.
async fn create_dir_synced(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        fsync_path(&dir)?;
        if let Some(parent) = dir.parent() {
            fsync_path(parent)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ProcessError::Internal(format!("fsync task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::Column;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn schema() -> TableSchema {
        TableSchema {
            columns: vec![
                Column {
                    name: "n".to_string(),
                    ty: ColumnType::Long,
                },
                Column {
                    name: "day".to_string(),
                    ty: ColumnType::String,
                },
            ],
        }
    }

    fn batch(schema: &TableSchema, rows: usize, day: impl Fn(usize) -> &'static str) -> RecordBatch {
        RecordBatch::try_new(
            schema.arrow(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from_iter_values((0..rows).map(day))),
            ],
        )
        .unwrap()
    }

    /// A reader of `b` written as one Parquet file with the data files' writer properties.
    fn written(
        s: &TableSchema,
        b: &RecordBatch,
    ) -> deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder<bytes::Bytes> {
        use deltalake::parquet::arrow::ArrowWriter;
        use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let mut file = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut file, s.arrow(), Some(writer_properties(s))).unwrap();
        writer.write(b).unwrap();
        writer.close().unwrap();
        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file)).unwrap()
    }

    /// Integer columns are delta-encoded and string columns dictionary-encoded, and the values read back as written.
    #[test]
    fn data_files_use_the_chosen_encodings() {
        let s = schema();
        let b = batch(
            &s,
            5_000,
            |i| if i % 2 == 0 { "2026-01-01" } else { "2026-01-02" },
        );
        let reader = written(&s, &b);
        let chunks = reader.metadata().row_group(0).columns().to_vec();
        let encodings = |i: usize| chunks[i].encodings().collect::<Vec<_>>();
        assert!(
            encodings(0).contains(&Encoding::DELTA_BINARY_PACKED),
            "{:?}",
            encodings(0)
        );
        assert!(
            encodings(1).contains(&Encoding::RLE_DICTIONARY),
            "{:?}",
            encodings(1)
        );
        let back: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let back = deltalake::arrow::compute::concat_batches(&b.schema(), &back).unwrap();
        assert_eq!(back.columns(), b.columns());
    }

    /// Lineage string columns are written without statistics (they never prune), other string columns with them;
    /// both dictionary-encoded.
    #[test]
    fn lineage_strings_have_no_statistics() {
        let s = TableSchema {
            columns: ["dev", "_shard_id", "_partition_key"]
                .map(|name| Column {
                    name: name.to_string(),
                    ty: ColumnType::String,
                })
                .to_vec(),
        };
        let values = || StringArray::from_iter_values((0..1_000).map(|i| format!("v{}", i % 7)));
        let b = RecordBatch::try_new(
            s.arrow(),
            vec![Arc::new(values()), Arc::new(values()), Arc::new(values())],
        )
        .unwrap();
        let reader = written(&s, &b);
        let chunks = reader.metadata().row_group(0).columns().to_vec();
        let has_statistics: Vec<bool> = chunks.iter().map(|c| c.statistics().is_some()).collect();
        assert_eq!(has_statistics, [true, false, false]);
        for c in &chunks {
            assert!(
                c.encodings().any(|e| e == Encoding::RLE_DICTIONARY),
                "{:?}",
                c.column_path()
            );
        }
    }

    #[test]
    fn parts_keep_files_large() {
        assert_eq!(write_parts(0, 2), 1);
        assert_eq!(write_parts(MIN_ROWS_PER_FILE * 2 - 1, 2), 1);
        assert_eq!(write_parts(MIN_ROWS_PER_FILE * 2, 2), 2);
        assert_eq!(write_parts(MIN_ROWS_PER_FILE * 10, 4), 4);
        assert_eq!(write_parts(MIN_ROWS_PER_FILE * 10, 0), 1);
    }

    #[test]
    fn detects_one_partition() {
        let s = schema();
        let days = ["day".to_string()];
        let day = |d: &'static str| move |_| d;
        assert!(single_partition(&[batch(&s, 10, day("2026-01-01"))], &days));
        assert!(!single_partition(
            &[batch(&s, 10, |i| if i == 9 {
                "2026-01-02"
            } else {
                "2026-01-01"
            })],
            &days
        ));
        assert!(!single_partition(&[batch(&s, 0, day("x"))], &days));
        assert!(!single_partition(&[], &days));
        assert!(!single_partition(
            &[batch(&s, 3, day("x"))],
            &["missing".to_string()]
        ));
        assert!(single_partition(&[batch(&s, 3, day("x"))], &[]));
        // Across batches: the first row's partition everywhere, empty batches anywhere.
        let same = [
            batch(&s, 0, day("x")),
            batch(&s, 4, day("2026-01-01")),
            batch(&s, 5, day("2026-01-01")),
        ];
        assert!(single_partition(&same, &days));
        let other = [batch(&s, 4, day("2026-01-01")), batch(&s, 5, day("2026-01-02"))];
        assert!(!single_partition(&other, &days));
    }

    #[test]
    fn runs_cut_batches_in_order() {
        let s = schema();
        let batches = vec![
            batch(&s, 5, |_| "d"),
            batch(&s, 0, |_| "d"),
            batch(&s, 9, |_| "d"),
        ];
        let runs = split_rows(batches, 6);
        let sizes: Vec<Vec<usize>> = runs
            .iter()
            .map(|r| r.iter().map(|b| b.num_rows()).collect())
            .collect();
        assert_eq!(sizes, vec![vec![5, 1], vec![6], vec![2]]);
        let n: Vec<i64> = runs
            .iter()
            .flatten()
            .flat_map(|b| {
                use deltalake::arrow::array::AsArray;
                let col = b
                    .column_by_name("n")
                    .unwrap()
                    .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
                col.values().to_vec()
            })
            .collect();
        assert_eq!(n, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// Large one-partition batches are written as several files (in parallel) holding every row exactly once,
    /// in order; a batch spanning partitions is written by one writer (one file per partition).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_write_keeps_every_row_once() {
        use deltalake::arrow::array::AsArray;
        use deltalake::arrow::datatypes::Int64Type;
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path().join("t")).unwrap();
        let s = schema();
        let mut sink = DeltaSink::open_or_create(
            "t",
            url.clone(),
            HashMap::new(),
            &s,
            &["day".to_string()],
            HashMap::new(),
        )
        .await
        .unwrap();
        let rows = MIN_ROWS_PER_FILE * 2 + 7;
        // In three batches (as a converted flush comes), cut into files across their boundaries.
        let one = batch(&s, rows, |_| "2026-01-01");
        let batches = vec![
            one.slice(0, 1_000),
            one.slice(1_000, 150_000),
            one.slice(151_000, rows - 151_000),
        ];
        let adds = sink.write_files(&s, batches).await.unwrap();
        assert_eq!(adds.len(), write_parts(rows, parallelism()));
        let mixed = batch(&s, 1000, |i| if i % 2 == 0 { "2026-01-02" } else { "2026-01-03" });
        let more = sink.write_files(&s, vec![mixed]).await.unwrap();
        assert_eq!(more.len(), 2);
        let version = sink
            .commit(
                adds.into_iter().chain(more).collect(),
                None,
                Vec::new(),
                HashMap::new(),
            )
            .await
            .unwrap();
        assert_eq!(version, 1);

        let table = deltalake::open_table(url).await.unwrap();
        let ctx = deltalake::datafusion::prelude::SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let out = ctx
            .sql("SELECT day, count(*), count(DISTINCT n), min(n), max(n) FROM t GROUP BY day ORDER BY day")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let got: Vec<(String, i64, i64, i64, i64)> = out
            .iter()
            .flat_map(|b| {
                let day = deltalake::arrow::compute::cast(
                    b.column(0),
                    &deltalake::arrow::datatypes::DataType::Utf8,
                )
                .unwrap();
                let day = day.as_string::<i32>().clone();
                (0..b.num_rows())
                    .map(|i| {
                        let int = |c: usize| b.column(c).as_primitive::<Int64Type>().value(i);
                        (day.value(i).to_string(), int(1), int(2), int(3), int(4))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let r = rows as i64;
        assert_eq!(
            got,
            vec![
                ("2026-01-01".to_string(), r, r, 0, r - 1),
                ("2026-01-02".to_string(), 500, 500, 0, 998),
                ("2026-01-03".to_string(), 500, 500, 1, 999),
            ]
        );
    }

    #[test]
    fn decodes_escapes() {
        assert_eq!(percent_decode("a=b%20c/x.parquet"), "a=b c/x.parquet");
        assert_eq!(
            percent_decode("event_date=2024-01-01/p.parquet"),
            "event_date=2024-01-01/p.parquet"
        );
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}
