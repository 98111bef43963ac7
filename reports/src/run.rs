//! Runs: one report over a fixed set of table versions, with its files in the warehouse.
//!
//! Layout under `<warehouse>/reports/<name>/`, on a local directory or an object store ([`OutputStore`]):
//! - `runs/<run id>/result.{parquet,csv,json}`: the result, each file replaced atomically (locally: temp file,
//!   fsync, rename; on S3: one PUT);
//! - `runs/<run id>/run.json`: the run's record ([`RunRecord`]: status, attempts, error, times), rewritten
//!   atomically at every state change; this is what `freshet reports history` and the ops dashboard read;
//! - `latest`: JSON pointer to the newest completed run, moved atomically once the run's result files are written
//!   and before its `run.json` says `completed` (so a reader that sees a completed run finds `latest` at it or
//!   newer).
//!
//! A run id names the table versions the run read: `telemetry@v3`, or `a@v3+b@v7` for several trigger tables. A
//! run whose `run.json` says `completed` is never redone (the handler returns it as skipped), so a re-delivered
//! commit event causes no second run (it only moves `latest` to that run, in case a crash came between the two);
//! a run left `running` by a crash is redone under the same id.
//!
//! # Concurrent writers (several report processes, Lambda invocations, `freshet reports run` beside the runtime)
//!
//! - `run.json` is written with compare-and-swap ([`OutputStore::put_if`]): created only if absent, then each
//!   rewrite only over the version this writer wrote last. A writer that loses (someone else created the record,
//!   or took over the run) stops and returns the record as it found it, marked skipped: one writer at a time
//!   drives a run, and a `completed` record is never overwritten by a second writer's `running`.
//! - `latest` moves by compare-and-swap too: read it, keep it if it names newer versions, else write it over the
//!   version read; on a conflict read again ([`LATEST_ATTEMPTS_MAX`] times). Two runs finishing together never
//!   move `latest` back to older versions.
//! - Result files are plain atomic replaces: every writer of one run id reads the same table versions, so they
//!   write the same rows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use freshet_query::QueryEngine;
use freshet_query::arrow::datatypes::{DataType, Schema};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{ReportConfig, ReportQuery, validate};
use crate::error::{ReportError, Result};
use crate::outputs::{Expect, OutputStore, Put, Tag};
use crate::schedule::slot_run_id;

/// Compare-and-swap rounds of one move of `latest` before giving up.
pub const LATEST_ATTEMPTS_MAX: u32 = 16;
/// `run.json` files read at once by [`OutputStore::history`].
const RECORD_READS_CONCURRENT_MAX: usize = 16;

/// The internal stream of commit events (written by delivery).
pub const EVENTS_STREAM: &str = "_freshet_events";

/// A commit event as delivery publishes it on `_freshet_events` (same JSON; fields this crate does not need are
/// optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitEvent {
    pub table: String,
    pub version: i64,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub delivery: String,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub event_time_min: Option<String>,
    #[serde(default)]
    pub event_time_max: Option<String>,
    #[serde(default)]
    pub committed_at_ms: i64,
    #[serde(default)]
    pub replayed: bool,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// An attempt failed; another follows after a backoff.
    Retrying,
    Completed,
    /// Every attempt failed.
    Failed,
}

/// `run.json`: the record of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub report: String,
    pub run_id: String,
    /// The table versions the run read.
    pub versions: BTreeMap<String, u64>,
    pub status: RunStatus,
    /// Attempts so far, across restarts.
    pub attempts: u32,
    /// The last attempt's error, if it failed.
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub rows: Option<u64>,
    /// Result file names inside the run's directory.
    pub outputs: Vec<String>,
}

impl RunRecord {
    /// The start time, RFC 3339 in UTC to the second.
    pub fn started_at(&self) -> String {
        DateTime::from_timestamp_millis(self.started_at_ms)
            .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    }
}

/// What handling a trigger did for one report.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// True when a completed run with this key existed already and nothing ran.
    pub skipped: bool,
    pub record: RunRecord,
}

/// The `latest` pointer of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestPointer {
    pub run_id: String,
    pub versions: BTreeMap<String, u64>,
    pub finished_at_ms: i64,
    /// Paths relative to the report's directory, e.g. `runs/telemetry@v3/result.parquet`.
    pub outputs: Vec<String>,
}

/// The run id of a set of versions, in trigger order: `a@v3+b@v7`.
pub fn run_id(versions: &[(String, u64)]) -> String {
    versions
        .iter()
        .map(|(t, v)| format!("{t}@v{v}"))
        .collect::<Vec<_>>()
        .join("+")
}

/// `<warehouse>/reports/<name>` of a local warehouse.
pub fn report_dir(warehouse: &Path, name: &str) -> PathBuf {
    warehouse.join("reports").join(name)
}

/// The key of report `name`'s directory: `reports/<name>`.
pub fn report_key(name: &str) -> String {
    format!("reports/{name}")
}

/// The key of a run's directory: `reports/<name>/runs/<run id>`.
pub fn run_key(name: &str, run_id: &str) -> String {
    format!("reports/{name}/runs/{run_id}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The version a `_delta_log/` file name commits or checkpoints (`<20 digits>.json`, `<20 digits>.checkpoint.parquet`).
fn log_entry_version(name: &str) -> Option<u64> {
    name.strip_suffix(".json")
        .or_else(|| name.strip_suffix(".checkpoint.parquet"))
        .filter(|d| d.len() == 20)
        .and_then(|d| d.parse::<u64>().ok())
}

impl OutputStore {
    /// The latest committed version of Delta table `table` in the warehouse, from its `_delta_log/` listing (from
    /// the last checkpoint on, when `_last_checkpoint` names one); `None` without a log.
    pub async fn table_version(&self, table: &str) -> Result<Option<u64>> {
        let log = format!("{table}/_delta_log");
        #[derive(Deserialize)]
        struct LastCheckpoint {
            version: u64,
        }
        // A torn or foreign `_last_checkpoint` only costs a full listing.
        let checkpoint = self
            .get_json::<LastCheckpoint>(&format!("{log}/_last_checkpoint"))
            .await
            .ok()
            .flatten()
            .map(|(c, _)| c.version);
        let offset = checkpoint.map(|v| format!("{v:020}"));
        let names = self.list_files(&log, offset.as_deref()).await?;
        Ok(names
            .iter()
            .filter_map(|n| log_entry_version(n))
            .max()
            .max(checkpoint))
    }

    /// The `latest` pointer of report `name`, if it has completed a run.
    pub async fn latest(&self, name: &str) -> Result<Option<LatestPointer>> {
        Ok(self
            .get_json(&format!("{}/latest", report_key(name)))
            .await?
            .map(|(p, _)| p))
    }

    /// The record of run `id` of report `name`, if it exists.
    pub async fn record(&self, name: &str, id: &str) -> Result<Option<RunRecord>> {
        Ok(self
            .get_json(&format!("{}/run.json", run_key(name, id)))
            .await?
            .map(|(r, _)| r))
    }

    /// Every run of report `name`, oldest first (by start time).
    pub async fn history(&self, name: &str) -> Result<Vec<RunRecord>> {
        self.history_since(name, &HashMap::new()).await
    }

    /// [`OutputStore::history`], taking the completed runs in `known` (by run id) as they are instead of reading
    /// them again (a completed record never changes): a poller reads only the listing and the runs still going.
    pub async fn history_since(
        &self,
        name: &str,
        known: &HashMap<String, RunRecord>,
    ) -> Result<Vec<RunRecord>> {
        let ids = self.list_dirs(&format!("{}/runs", report_key(name))).await?;
        let mut records = Vec::with_capacity(ids.len());
        let mut keys = Vec::new();
        for id in ids {
            match known.get(&id) {
                Some(r) if r.status == RunStatus::Completed => records.push(r.clone()),
                _ => keys.push(format!("{}/run.json", run_key(name, &id))),
            }
        }
        records.extend(
            self.get_many_json::<RunRecord>(keys, RECORD_READS_CONCURRENT_MAX)
                .await?,
        );
        records.sort_by(|a, b| (a.started_at_ms, &a.run_id).cmp(&(b.started_at_ms, &b.run_id)));
        Ok(records)
    }
}

/// The latest committed version of a local Delta table (see [`OutputStore::table_version`]).
pub fn table_version(warehouse: &Path, table: &str) -> Result<Option<u64>> {
    futures::executor::block_on(OutputStore::local(warehouse).table_version(table))
}

/// Every run of report `name` in the local `warehouse`, oldest first (see [`OutputStore::history`]).
pub fn history(warehouse: &Path, name: &str) -> Result<Vec<RunRecord>> {
    futures::executor::block_on(OutputStore::local(warehouse).history(name))
}

/// The `latest` pointer of report `name` in the local `warehouse` (see [`OutputStore::latest`]).
pub fn latest(warehouse: &Path, name: &str) -> Result<Option<LatestPointer>> {
    futures::executor::block_on(OutputStore::local(warehouse).latest(name))
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<bytes::Bytes> {
    serde_json::to_vec_pretty(value)
        .map(bytes::Bytes::from)
        .map_err(|e| ReportError::json(format!("encoding {what}"), e))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Epoch millis delivery accepts as an event time (years 1 to 9999).
const MILLIS_MIN: i64 = -62_135_596_800_000;
const MILLIS_MAX: i64 = 253_402_300_799_999;
/// The arrival time as a UTC timestamp without a zone, the type of the `minute` column.
const ARRIVAL: &str = "CAST(\"_arrival_time\" AS TIMESTAMP)";

/// The SQL of [`ReportQuery::MinutelyAggregates`] for a table version with `schema`.
pub fn minutely_sql(table_ref: &str, key: &str, schema: &Schema) -> Result<String> {
    if schema.field_with_name(key).is_err() {
        return Err(ReportError::Query(freshet_query::QueryError::Invalid(format!(
            "{table_ref} has no key column {key:?}"
        ))));
    }
    // DESIGN.md's event time: the payload's `ts` as epoch millis (a number) or RFC 3339 (a string), else the arrival
    // time; out-of-range millis fall back to arrival time as in delivery's partitioning.
    let minute_of = match schema.field_with_name("ts").map(|f| f.data_type().clone()) {
        Ok(t) if t.is_integer() || t.is_floating() => format!(
            "COALESCE(CASE WHEN \"ts\" BETWEEN {MILLIS_MIN} AND {MILLIS_MAX} THEN \
             CAST(to_timestamp_millis(CAST(\"ts\" AS BIGINT)) AS TIMESTAMP) END, {ARRIVAL})"
        ),
        Ok(DataType::Timestamp(..)) => format!("COALESCE(CAST(\"ts\" AS TIMESTAMP), {ARRIVAL})"),
        Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
            format!("COALESCE(TRY_CAST(\"ts\" AS TIMESTAMP), {ARRIVAL})")
        }
        _ => ARRIVAL.to_string(),
    };
    let mut select = vec![
        quote(key),
        format!("date_trunc('minute', {minute_of}) AS \"minute\""),
        "count(*) AS \"count\"".to_string(),
    ];
    for field in schema.fields() {
        let name = field.name();
        if name.starts_with('_') || name == "event_date" || name == "ts" || name == key {
            continue;
        }
        if field.data_type().is_numeric() {
            for agg in ["avg", "min", "max"] {
                select.push(format!(
                    "{agg}({}) AS {}",
                    quote(name),
                    quote(&format!("{agg}_{name}"))
                ));
            }
        }
    }
    Ok(format!(
        "SELECT {} FROM {table_ref} GROUP BY 1, 2 ORDER BY 1, 2",
        select.join(", ")
    ))
}

/// `sql` with every `{{table}}` replaced by `pinned(table)`.
fn resolve_placeholders(sql: &str, pinned: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&rest[..start]);
        out.push_str(&pinned(after[..end].trim()));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Runs reports: the handler behind the runtime, `freshet reports run`, and (by its shape: one commit event in,
/// outcomes out) a Lambda function.
#[derive(Debug, Clone)]
pub struct Reporter {
    engine: Arc<QueryEngine>,
    reports: Vec<ReportConfig>,
    /// The warehouse's report outputs (the engine's warehouse: a directory or an object store).
    outputs: OutputStore,
    /// Serialises moves of `latest` within this process (commit runs and scheduled runs of one report may end
    /// together); other processes are kept out by the compare-and-swap.
    latest_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Reporter {
    /// Fails with every configuration problem at once, or when the warehouse's object store cannot be set up.
    pub fn new(engine: Arc<QueryEngine>, reports: Vec<ReportConfig>) -> Result<Self> {
        validate(&reports)?;
        let outputs = OutputStore::for_warehouse(engine.warehouse())?;
        Ok(Self {
            engine,
            reports,
            outputs,
            latest_lock: Arc::default(),
        })
    }

    /// [`Reporter::new`] after [`crate::check_reports`]: fails with every problem at once, each report's SQL planned
    /// against `engine`. `expected_tables` may be missing from the warehouse (a declared delivery creates them).
    pub async fn checked(
        engine: Arc<QueryEngine>,
        reports: Vec<ReportConfig>,
        expected_tables: &[String],
    ) -> Result<Self> {
        let problems = crate::check::check_reports(&reports, &engine, expected_tables).await;
        if !problems.is_empty() {
            return Err(ReportError::Config(problems));
        }
        Self::new(engine, reports)
    }

    pub fn reports(&self) -> &[ReportConfig] {
        &self.reports
    }

    /// Where the report outputs are read and written.
    pub fn outputs(&self) -> &OutputStore {
        &self.outputs
    }

    pub fn report(&self, name: &str) -> Result<&ReportConfig> {
        self.reports
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ReportError::UnknownReport(name.into()))
    }

    /// The handler: run every report triggered by `event`'s table, keyed by the event's version (and the latest
    /// versions of the report's other trigger tables). Reports whose run already completed are skipped.
    pub async fn handle(&self, event: &CommitEvent, cancel: &CancellationToken) -> Result<Vec<RunOutcome>> {
        let Ok(version) = u64::try_from(event.version) else {
            return Ok(Vec::new());
        };
        let mut outcomes = Vec::new();
        for report in self
            .reports
            .iter()
            .filter(|r| r.trigger.tables.contains(&event.table))
        {
            let mut versions = Vec::new();
            for table in &report.trigger.tables {
                let v = if *table == event.table {
                    Some(version)
                } else {
                    self.outputs.table_version(table).await?
                };
                match v {
                    Some(v) => versions.push((table.clone(), v)),
                    None => {
                        tracing::warn!(report = %report.name, table = %table, "a trigger table is missing; not run");
                        break;
                    }
                }
            }
            if versions.len() == report.trigger.tables.len() {
                outcomes.push(self.run(report, &versions, cancel).await?);
            }
        }
        Ok(outcomes)
    }

    /// Run report `name` over the latest versions of its trigger tables (skipped if that run completed).
    pub async fn run_latest(&self, name: &str, cancel: &CancellationToken) -> Result<RunOutcome> {
        let report = self.report(name)?;
        if report.trigger.tables.is_empty() {
            // Only a schedule: run its latest slot (or this minute's, before the first).
            let now = Utc::now();
            let slot = report
                .schedule()
                .and_then(|s| s.slot_at_or_before(now))
                .or_else(|| DateTime::from_timestamp(now.timestamp() / 60 * 60, 0))
                .unwrap_or(now);
            return self.run_scheduled(report, slot, cancel).await;
        }
        let mut versions = Vec::new();
        for table in &report.trigger.tables {
            let v = self
                .outputs
                .table_version(table)
                .await?
                .ok_or_else(|| ReportError::MissingTable(table.clone()))?;
            versions.push((table.clone(), v));
        }
        self.run(report, &versions, cancel).await
    }

    /// Run `report` over `versions` (keyed by them), retrying with backoff; the run's record says how it ended.
    /// `Err` only when the record itself cannot be written or the runtime is stopping.
    pub async fn run(
        &self,
        report: &ReportConfig,
        versions: &[(String, u64)],
        cancel: &CancellationToken,
    ) -> Result<RunOutcome> {
        self.run_keyed(report, &run_id(versions), versions, cancel).await
    }

    /// The scheduled run of `report` for `slot`, keyed by the slot (`schedule@20261122T0350Z`): skipped if it
    /// completed. It reads the latest versions of the report's tables when it first starts; a run redone after a
    /// crash reads the versions its record names, so every attempt of a slot reads the same data.
    pub async fn run_scheduled(
        &self,
        report: &ReportConfig,
        slot: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome> {
        let mut versions = Vec::new();
        let mut tables = report.trigger.tables.clone();
        for t in report.placeholder_tables() {
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        for table in tables {
            if let Some(v) = self.outputs.table_version(&table).await? {
                versions.push((table, v));
            }
        }
        self.run_keyed(report, &slot_run_id(slot), &versions, cancel)
            .await
    }

    /// The record of run `id` of `report`, if it exists.
    pub async fn record(&self, report: &str, id: &str) -> Result<Option<RunRecord>> {
        self.outputs.record(report, id).await
    }

    /// Write `record` over the version of `run.json` this writer holds (`tag`; `None`: create it). False when
    /// another writer created or changed it first: this writer must let the run go.
    async fn write_record(&self, key: &str, record: &RunRecord, tag: &mut Option<Tag>) -> Result<bool> {
        let expect = tag.clone().map_or(Expect::Absent, Expect::Tag);
        match self.outputs.put_if(key, to_json(key, record)?, expect).await? {
            Put::Written(t) => {
                *tag = Some(t);
                Ok(true)
            }
            Put::Conflict => Ok(false),
        }
    }

    /// What a writer that lost `run.json` to another returns: the record as the other writer left it.
    async fn yielded(&self, key: &str, ours: RunRecord) -> Result<RunOutcome> {
        let theirs = self.outputs.get_json::<RunRecord>(key).await?.map(|(r, _)| r);
        tracing::info!(
            report = %ours.report,
            run = %ours.run_id,
            status = ?theirs.as_ref().map(|r| r.status),
            "another writer holds this run; left to it"
        );
        Ok(RunOutcome {
            skipped: true,
            record: theirs.unwrap_or(ours),
        })
    }

    async fn run_keyed(
        &self,
        report: &ReportConfig,
        id: &str,
        versions: &[(String, u64)],
        cancel: &CancellationToken,
    ) -> Result<RunOutcome> {
        let id = id.to_string();
        let dir = run_key(&report.name, &id);
        let record_key = format!("{dir}/run.json");
        let (previous, mut tag) = match self.outputs.get_json::<RunRecord>(&record_key).await? {
            Some((record, tag)) => (Some(record), Some(tag)),
            None => (None, None),
        };
        if let Some(record) = previous.clone().filter(|r| r.status == RunStatus::Completed) {
            tracing::debug!(report = %report.name, run = %id, "already completed; skipped");
            // A crash may have come between this record and `latest`: move it now (never backwards).
            self.advance_latest(report, &record).await?;
            return Ok(RunOutcome {
                skipped: true,
                record,
            });
        }
        let mut record = previous.unwrap_or_else(|| RunRecord {
            report: report.name.clone(),
            run_id: id.clone(),
            versions: versions.iter().cloned().collect(),
            status: RunStatus::Running,
            attempts: 0,
            error: None,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            rows: None,
            outputs: Vec::new(),
        });
        // A redone run reads what its first attempt read.
        let versions: Vec<(String, u64)> = record.versions.iter().map(|(t, v)| (t.clone(), *v)).collect();
        let versions = versions.as_slice();
        for attempt in 1..=report.attempts_max {
            if cancel.is_cancelled() {
                return Err(ReportError::Cancelled);
            }
            record.attempts += 1;
            record.status = RunStatus::Running;
            if !self.write_record(&record_key, &record, &mut tag).await? {
                return self.yielded(&record_key, record).await;
            }
            let result = tokio::select! {
                r = self.attempt(report, versions, &dir) => r,
                () = cancel.cancelled() => return Err(ReportError::Cancelled),
            };
            match result {
                Ok((rows, outputs)) => {
                    record.status = RunStatus::Completed;
                    record.error = None;
                    record.rows = Some(rows);
                    record.outputs = outputs;
                    record.finished_at_ms = Some(now_ms());
                    // `latest` first: a reader that sees the record completed finds `latest` at this run or newer.
                    // A crash in between redoes the run under the same id, over the same versions.
                    self.advance_latest(report, &record).await?;
                    if !self.write_record(&record_key, &record, &mut tag).await? {
                        return self.yielded(&record_key, record).await;
                    }
                    tracing::info!(report = %report.name, run = %id, rows, "report run completed");
                    return Ok(RunOutcome {
                        skipped: false,
                        record,
                    });
                }
                Err(e) => {
                    record.error = Some(e.to_string());
                    if attempt == report.attempts_max {
                        record.status = RunStatus::Failed;
                        record.finished_at_ms = Some(now_ms());
                        if !self.write_record(&record_key, &record, &mut tag).await? {
                            return self.yielded(&record_key, record).await;
                        }
                        tracing::error!(report = %report.name, run = %id, error = %e, "report run failed");
                        break;
                    }
                    record.status = RunStatus::Retrying;
                    if !self.write_record(&record_key, &record, &mut tag).await? {
                        return self.yielded(&record_key, record).await;
                    }
                    tracing::warn!(report = %report.name, run = %id, attempt, error = %e, "report run failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(report.backoff(attempt)) => {}
                        () = cancel.cancelled() => return Err(ReportError::Cancelled),
                    }
                }
            }
        }
        Ok(RunOutcome {
            skipped: false,
            record,
        })
    }

    /// The SQL of one run: placeholders resolved to the versions it reads.
    pub async fn sql_for(&self, report: &ReportConfig, versions: &[(String, u64)]) -> Result<String> {
        let pinned = |table: &str| -> String {
            match versions.iter().find(|(t, _)| t == table) {
                Some((t, v)) => quote(&format!("{t}@v{v}")),
                None => quote(table),
            }
        };
        match &report.query {
            ReportQuery::Sql(sql) => Ok(resolve_placeholders(sql, pinned)),
            ReportQuery::MinutelyAggregates { table, key } => {
                let table_ref = pinned(table);
                let schema = self
                    .engine
                    .sql(&format!("SELECT * FROM {table_ref} LIMIT 0"))
                    .await?
                    .schema;
                minutely_sql(&table_ref, key, &schema)
            }
        }
    }

    /// One attempt: query, then every output file. Returns the row count and the file names.
    async fn attempt(
        &self,
        report: &ReportConfig,
        versions: &[(String, u64)],
        dir: &str,
    ) -> Result<(u64, Vec<String>)> {
        let sql = self.sql_for(report, versions).await?;
        let result = self.engine.sql(&sql).await?;
        let mut files = Vec::new();
        for format in &report.outputs {
            let bytes = freshet_query::encode(&result, format.query_format())?;
            let file = format!("result.{}", format.extension());
            self.outputs
                .put(&format!("{dir}/{file}"), bytes::Bytes::from(bytes))
                .await?;
            files.push(file);
        }
        Ok((result.num_rows() as u64, files))
    }

    /// Point `latest` at `record` unless it points at a run over newer versions already (compare-and-swap, see the
    /// module docs).
    async fn advance_latest(&self, report: &ReportConfig, record: &RunRecord) -> Result<()> {
        let _guard = self.latest_lock.lock().await;
        let key = format!("{}/latest", report_key(&report.name));
        let pointer = LatestPointer {
            run_id: record.run_id.clone(),
            versions: record.versions.clone(),
            finished_at_ms: record.finished_at_ms.unwrap_or_else(now_ms),
            outputs: record
                .outputs
                .iter()
                .map(|f| format!("runs/{}/{f}", record.run_id))
                .collect(),
        };
        let bytes = to_json(&key, &pointer)?;
        for _ in 0..LATEST_ATTEMPTS_MAX {
            let current = self.outputs.get_json::<LatestPointer>(&key).await?;
            let expect = match current {
                Some((current, _))
                    if current
                        .versions
                        .iter()
                        .any(|(t, v)| record.versions.get(t).is_some_and(|mine| mine < v)) =>
                {
                    return Ok(());
                }
                Some((_, tag)) => Expect::Tag(tag),
                None => Expect::Absent,
            };
            if let Put::Written(_) = self.outputs.put_if(&key, bytes.clone(), expect).await? {
                return Ok(());
            }
            tracing::debug!(report = %report.name, "latest moved under this writer; reading it again");
        }
        Err(ReportError::Contended(self.outputs.describe(&key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_query::arrow::datatypes::{Field, TimeUnit};

    #[test]
    fn run_ids_name_the_versions() {
        assert_eq!(run_id(&[("telemetry".into(), 3)]), "telemetry@v3");
        assert_eq!(run_id(&[("a".into(), 3), ("b".into(), 7)]), "a@v3+b@v7");
    }

    #[test]
    fn minutely_sql_aggregates_numeric_fields_only() {
        let schema = Schema::new(vec![
            Field::new("ts", DataType::Int64, true),
            Field::new("temp", DataType::Float64, true),
            Field::new("hum", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("device_id", DataType::Utf8, true),
            Field::new("_shard_id", DataType::Int64, true),
            Field::new(
                "_arrival_time",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("event_date", DataType::Date32, true),
        ]);
        let sql = minutely_sql("\"telemetry@v2\"", "device_id", &schema).unwrap();
        assert!(sql.contains("avg(\"temp\") AS \"avg_temp\""), "{sql}");
        assert!(sql.contains("max(\"hum\") AS \"max_hum\""), "{sql}");
        assert!(
            !sql.contains("note") && !sql.contains("_shard_id") && !sql.contains("(\"ts\")"),
            "{sql}"
        );
        assert!(minutely_sql("t", "nope", &schema).is_err());
    }

    #[test]
    fn table_version_reads_the_log_listing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(table_version(dir.path(), "t").unwrap(), None);
        let log = dir.path().join("t/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for f in [
            "00000000000000000000.json",
            "00000000000000000001.json",
            "00000000000000000001.checkpoint.parquet",
            "_last_checkpoint",
        ] {
            std::fs::write(log.join(f), b"").unwrap();
        }
        assert_eq!(table_version(dir.path(), "t").unwrap(), Some(1));
    }
}
