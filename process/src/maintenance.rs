//! Table maintenance and inspection: compaction toward a target file size, vacuum, describe and list.
//!
//! Checkpoints are written by delta-rs's post-commit hook every `delta.checkpointInterval` commits (set from
//! `maintenance.checkpoint_interval_commits` when the delivery creates the table). Compaction and vacuum run in a
//! background task of the delivery ([`Maintainer`]), on their own table handle, so reading the stream and
//! committing go on meanwhile; a compaction that loses a commit race to the delivery is simply retried at the
//! next round. Vacuum removes only files unreferenced for longer than its retention (≥ 1 h), so it never removes
//! files of a commit in flight.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use deltalake::operations::vacuum::VacuumMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::TryStreamExt;
use serde::Serialize;
use url::Url;

use crate::config::{DeliveryConfig, table_url, warehouse_url};
use crate::error::{ProcessError, Result};

/// Runs compaction and vacuum for one delivery, at most one round at a time.
#[derive(Debug)]
pub struct Maintainer {
    config: Arc<DeliveryConfig>,
    commits: u32,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Maintainer {
    pub fn new(config: Arc<DeliveryConfig>) -> Self {
        Self {
            config,
            commits: 0,
            task: None,
        }
    }

    /// Count a delivery commit; every `optimize_every_commits` commits start a round unless one is running.
    pub fn after_commit(&mut self, _version: i64) {
        let every = self.config.maintenance.optimize_every_commits;
        if every == 0 {
            return;
        }
        self.commits += 1;
        if self.commits < every || self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.commits = 0;
        let config = self.config.clone();
        self.task = Some(tokio::spawn(async move {
            let m = &config.maintenance;
            let Ok(url) = config.table_url() else { return };
            match optimize_table(url.clone(), &config.storage_options, m.target_file_bytes).await {
                Ok(r) => tracing::info!(table = %config.table, ?r, "compacted"),
                Err(e) => {
                    tracing::warn!(table = %config.table, error = %e, "compaction failed; next round retries")
                }
            }
            if m.vacuum_retention_hours > 0 {
                match vacuum_table(url, &config.storage_options, m.vacuum_retention_hours, false).await {
                    Ok(files) => tracing::info!(table = %config.table, deleted = files.len(), "vacuumed"),
                    Err(e) => tracing::warn!(table = %config.table, error = %e, "vacuum failed"),
                }
            }
        }));
    }

    /// Wait for a running round to end.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

async fn load(url: &Url, options: &HashMap<String, String>) -> Result<DeltaTable> {
    deltalake::open_table_with_storage_options(url.clone(), options.clone())
        .await
        .map_err(|e| ProcessError::delta(url.as_str(), e))
}

/// What a compaction did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OptimizeReport {
    pub version: Option<i64>,
    pub files_added: u64,
    pub files_removed: u64,
    pub partitions_optimized: u64,
}

/// Compact small files of the table at `url` toward `target_file_bytes`.
pub async fn optimize_table(
    url: Url,
    options: &HashMap<String, String>,
    target_file_bytes: u64,
) -> Result<OptimizeReport> {
    let started = std::time::SystemTime::now();
    let table = load(&url, options).await?;
    let target = NonZeroU64::new(target_file_bytes.max(1 << 20)).expect("nonzero");
    let (table, metrics) = table
        .optimize()
        .with_target_size(target)
        .await
        .map_err(|e| ProcessError::delta(url.as_str(), e))?;
    if let Some(dir) = crate::config::local_path(&url) {
        sync_newer_than(dir, started).await?;
    }
    Ok(OptimizeReport {
        version: table.version().map(|v| v as i64),
        files_added: metrics.num_files_added,
        files_removed: metrics.num_files_removed,
        partitions_optimized: metrics.partitions_optimized,
    })
}

/// Delete files unreferenced by the table for longer than `retention_hours` (including files of commits that
/// never happened); returns the deleted paths (or those that would be, with `dry_run`).
pub async fn vacuum_table(
    url: Url,
    options: &HashMap<String, String>,
    retention_hours: u32,
    dry_run: bool,
) -> Result<Vec<String>> {
    if retention_hours == 0 {
        return Err(ProcessError::Config(
            "vacuum retention must be at least 1 hour, so files of commits in flight are kept".to_string(),
        ));
    }
    let table = load(&url, options).await?;
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(chrono::Duration::hours(i64::from(retention_hours)))
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .with_dry_run(dry_run)
        .await
        .map_err(|e| ProcessError::delta(url.as_str(), e))?;
    Ok(metrics.files_deleted)
}

/// A table's shape and size.
#[derive(Clone, Debug, Serialize)]
pub struct TableDescription {
    pub name: String,
    pub location: String,
    pub version: Option<i64>,
    pub partition_columns: Vec<String>,
    pub columns: Vec<(String, String)>,
    pub files: u64,
    pub bytes: u64,
    /// Per `txn` app id (delivery-shard): the last sequence number committed.
    pub app_transactions: Vec<(String, i64)>,
    pub configuration: HashMap<String, String>,
}

/// Describe the table `name` of `warehouse`, with the `txn` versions of `app_ids` (e.g. a delivery's shards).
pub async fn describe_table(
    warehouse: &str,
    name: &str,
    options: &HashMap<String, String>,
    app_ids: &[String],
) -> Result<TableDescription> {
    let url = table_url(warehouse, name)?;
    let table = load(&url, options).await?;
    let snapshot = table.snapshot().map_err(|e| ProcessError::delta(name, e))?;
    let schema = snapshot.snapshot().arrow_schema();
    let mut files = 0;
    let mut bytes = 0;
    for f in snapshot.log_data().iter() {
        files += 1;
        bytes += f.size().max(0) as u64;
    }
    let mut app_transactions = Vec::new();
    for id in app_ids {
        if let Some(v) = snapshot
            .transaction_version(table.log_store().as_ref(), id)
            .await
            .map_err(|e| ProcessError::delta(name, e))?
        {
            app_transactions.push((id.clone(), v));
        }
    }
    Ok(TableDescription {
        name: name.to_string(),
        location: url.to_string(),
        version: table.version().map(|v| v as i64),
        partition_columns: snapshot.metadata().partition_columns().to_vec(),
        columns: schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect(),
        files,
        bytes,
        app_transactions,
        configuration: snapshot.metadata().configuration().clone(),
    })
}

/// The names of the Delta tables directly under `warehouse`.
pub async fn list_tables(warehouse: &str, options: &HashMap<String, String>) -> Result<Vec<String>> {
    let url = warehouse_url(warehouse)?;
    let store = DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| ProcessError::delta(url.as_str(), e))?
        .with_storage_options(options.clone())
        .build_storage()
        .map_err(|e| ProcessError::delta(url.as_str(), e))?
        .object_store(None);
    let listing = store
        .list_with_delimiter(None)
        .await
        .map_err(|e| ProcessError::delta(url.as_str(), e.into()))?;
    let mut names = Vec::new();
    for prefix in listing.common_prefixes {
        let log = prefix.clone().join("_delta_log");
        let mut entries = store.list(Some(&log));
        if entries
            .try_next()
            .await
            .map_err(|e| ProcessError::delta(url.as_str(), e.into()))?
            .is_some()
            && let Some(name) = prefix.filename()
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// fsync every file and directory under `dir` modified at or after `since` (compaction output).
async fn sync_newer_than(dir: std::path::PathBuf, since: std::time::SystemTime) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        fn walk(d: &std::path::Path, since: std::time::SystemTime) -> std::io::Result<()> {
            for entry in std::fs::read_dir(d)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    walk(&entry.path(), since)?;
                } else if meta.modified()? >= since {
                    std::fs::File::open(entry.path())?.sync_all()?;
                }
            }
            std::fs::File::open(d)?.sync_all()
        }
        walk(&dir, since).map_err(|source| ProcessError::Io {
            path: dir.display().to_string(),
            source,
        })
    })
    .await
    .map_err(|e| ProcessError::Internal(format!("fsync task: {e}")))?
}
