//! Delivery configuration: what a delivery reads, where it writes, how it buffers and partitions.
//!
//! Every field has a bound, checked by [`DeliveryConfig::validate`] before a delivery starts:
//! buffer size 1–128 MiB, buffer interval 0–900 s (default 60 s), names that are valid stream and table names.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ProcessError, Result};

pub const BUFFER_BYTES_MIN: u64 = 1 << 20;
pub const BUFFER_BYTES_MAX: u64 = 128 << 20;
pub const BUFFER_BYTES_DEFAULT: u64 = 5 << 20;
pub const BUFFER_INTERVAL_MS_MAX: u64 = 900_000;
pub const BUFFER_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Largest single string value kept in a row; larger values send the record to the error table.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Most columns a delivered table may grow to by inference.
pub const COLUMNS_MAX_DEFAULT: usize = 1_000;

/// One delivery stream: source stream → destination Delta table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Delivery name; also the prefix of the Delta `txn` app ids (`<name>-<shardId>`).
    pub name: String,
    /// Source stream in the store.
    pub stream: String,
    /// Destination table name; the table lives at `<warehouse>/<table>`, its errors at `<warehouse>/<table>_errors`.
    pub table: String,
    /// Warehouse root: a local directory path, `file:///...`, or an object_store URL such as `s3://bucket/prefix`.
    pub warehouse: String,
    /// object_store options for the warehouse (e.g. `aws_endpoint_url`, `aws_allow_http`, credentials).
    #[serde(default)]
    pub storage_options: HashMap<String, String>,
    /// Flush when this many bytes of raw records are buffered (1–128 MiB).
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: u64,
    /// Flush this long after the first record entered the buffer (0–900 s; 0 flushes after every read).
    #[serde(default = "default_buffer_interval_ms")]
    pub buffer_interval_ms: u64,
    /// Partition columns, computed per record. Default: `event_date` from the event time.
    #[serde(default = "default_partitioning")]
    pub partition_by: Vec<PartitionColumn>,
    /// A declared schema; without one, columns are inferred with additive evolution.
    #[serde(default)]
    pub schema: Option<Vec<DeclaredColumn>>,
    /// The payload field holding the event time (epoch millis or RFC 3339); arrival time when absent.
    #[serde(default = "default_event_time_field")]
    pub event_time_field: String,
    /// Largest string value (bytes) kept; a larger one sends its record to the error table.
    #[serde(default = "default_value_bytes_max")]
    pub value_bytes_max: usize,
    /// Most columns inference may grow the table to.
    #[serde(default = "default_columns_max")]
    pub columns_max: usize,
    /// Table maintenance run by the delivery in the background.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// Optional SQL over each buffered batch, read as table `batch` (e.g.
    /// `SELECT *, temp * 1.8 + 32 AS temp_f FROM batch WHERE temp IS NOT NULL`). See [`crate::transform`].
    #[serde(default)]
    pub transform_sql: Option<String>,
    /// Optional external function speaking Firehose's data-transformation contract, applied before
    /// `transform_sql`. See [`crate::http_transform`].
    #[serde(default)]
    pub transform_http: Option<HttpTransformConfig>,
}

/// Most records per invocation of an HTTP transform.
pub const TRANSFORM_RECORDS_MAX: usize = 10_000;
/// Most raw bytes per invocation (Firehose's Lambda buffer goes up to 3 MiB).
pub const TRANSFORM_BYTES_MAX: u64 = 3 << 20;
/// Longest retry duration (Firehose's `RetryOptions.DurationInSeconds` allows 0–7200 s).
pub const TRANSFORM_RETRY_SECONDS_MAX: u64 = 7_200;

/// An external transform function reached over HTTP (Firehose's Lambda transform contract).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTransformConfig {
    /// `http://` or `https://` URL the invocations are POSTed to.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Most records per invocation (1–10,000; default 500).
    #[serde(default = "default_transform_records_max")]
    pub records_max: usize,
    /// Most raw record bytes per invocation (1 KiB–3 MiB; default 1 MiB, Firehose's default).
    #[serde(default = "default_transform_bytes_max")]
    pub bytes_max: u64,
    /// How long a failing invocation is retried before its records go to the error table (0–7200 s, default 300).
    #[serde(default = "default_transform_retry_seconds")]
    pub retry_duration_seconds: u64,
    /// Timeout of one invocation (100 ms–15 min; default 60 s).
    #[serde(default = "default_transform_timeout_ms")]
    pub timeout_ms: u64,
    /// Invocations in flight at once (1–16; default 2).
    #[serde(default = "default_transform_concurrency")]
    pub concurrency: usize,
    /// The region named in the request and its ARNs.
    #[serde(default = "default_transform_region")]
    pub region: String,
}

impl HttpTransformConfig {
    /// Every default, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            bearer_token: None,
            headers: Default::default(),
            records_max: default_transform_records_max(),
            bytes_max: default_transform_bytes_max(),
            retry_duration_seconds: default_transform_retry_seconds(),
            timeout_ms: default_transform_timeout_ms(),
            concurrency: default_transform_concurrency(),
            region: default_transform_region(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ProcessError::Config(format!("transform_http: {m}")));
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => return bad(format!("url scheme {:?} must be http or https", u.scheme())),
            Err(e) => return bad(format!("url {:?}: {e}", self.url)),
        }
        if !(1..=TRANSFORM_RECORDS_MAX).contains(&self.records_max) {
            return bad(format!(
                "records_max must be between 1 and {TRANSFORM_RECORDS_MAX}"
            ));
        }
        if !(1024..=TRANSFORM_BYTES_MAX).contains(&self.bytes_max) {
            return bad(format!(
                "bytes_max must be between 1024 and {TRANSFORM_BYTES_MAX} (3 MiB)"
            ));
        }
        if self.retry_duration_seconds > TRANSFORM_RETRY_SECONDS_MAX {
            return bad(format!(
                "retry_duration_seconds must be between 0 and {TRANSFORM_RETRY_SECONDS_MAX}"
            ));
        }
        if !(100..=900_000).contains(&self.timeout_ms) {
            return bad("timeout_ms must be between 100 and 900000 (15 min)".to_string());
        }
        if !(1..=16).contains(&self.concurrency) {
            return bad("concurrency must be between 1 and 16".to_string());
        }
        for (k, v) in &self.headers {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return bad(format!("header name {k:?} is not a valid HTTP header name"));
            }
            if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return bad(format!("header {k:?} has a line break in its value"));
            }
        }
        Ok(())
    }
}

/// A partition column and the expression that computes it from a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionColumn {
    pub name: String,
    #[serde(flatten)]
    pub expr: PartitionExpr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartitionExpr {
    /// The UTC date of the event time (a `date` column).
    EventDate,
    /// The UTC hour of day (0–23) of the event time (an `integer` column).
    EventHour,
    /// The value of a top-level payload field, as a string (null when absent).
    Field { field: String },
}

/// A column of a declared schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    #[serde(default = "yes")]
    pub nullable: bool,
}

/// The column types a delivery writes. Nested JSON values are kept as JSON text in `string` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Boolean,
    /// 32-bit integer (the `event_hour` partition type).
    Integer,
    Long,
    Double,
    String,
    Timestamp,
    Date,
    /// Raw bytes (the error table's `raw_data`).
    Binary,
}

/// Compaction, checkpoints and vacuum, run between flushes without holding up reads of the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Write a Delta checkpoint every this many commits (`delta.checkpointInterval`).
    pub checkpoint_interval_commits: u32,
    /// Compact small files every this many delivery commits (0: never).
    pub optimize_every_commits: u32,
    /// Target file size for compaction.
    pub target_file_bytes: u64,
    /// Vacuum unreferenced files older than this (hours) after each compaction (0: never vacuum).
    pub vacuum_retention_hours: u32,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_commits: 10,
            optimize_every_commits: 60,
            target_file_bytes: 128 << 20,
            vacuum_retention_hours: 168,
        }
    }
}

fn default_transform_records_max() -> usize {
    500
}
fn default_transform_bytes_max() -> u64 {
    1 << 20
}
fn default_transform_retry_seconds() -> u64 {
    300
}
fn default_transform_timeout_ms() -> u64 {
    60_000
}
fn default_transform_concurrency() -> usize {
    2
}
fn default_transform_region() -> String {
    "us-east-1".to_string()
}
fn yes() -> bool {
    true
}
fn default_buffer_bytes() -> u64 {
    BUFFER_BYTES_DEFAULT
}
fn default_buffer_interval_ms() -> u64 {
    BUFFER_INTERVAL_MS_DEFAULT
}
fn default_event_time_field() -> String {
    "ts".to_string()
}
fn default_value_bytes_max() -> usize {
    VALUE_BYTES_MAX_DEFAULT
}
fn default_columns_max() -> usize {
    COLUMNS_MAX_DEFAULT
}
pub fn default_partitioning() -> Vec<PartitionColumn> {
    vec![PartitionColumn {
        name: "event_date".to_string(),
        expr: PartitionExpr::EventDate,
    }]
}

/// Lineage columns on every delivered row, in this order.
pub const LINEAGE_COLUMNS: [&str; 6] = [
    "_topic",
    "_client_id",
    "_partition_key",
    "_shard_id",
    "_sequence_number",
    "_arrival_time",
];

impl DeliveryConfig {
    /// A configuration with every default: 5 MiB / 60 s buffering, partitioned by `event_date`, inferred schema.
    pub fn new(
        name: impl Into<String>,
        stream: impl Into<String>,
        table: impl Into<String>,
        warehouse: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            stream: stream.into(),
            table: table.into(),
            warehouse: warehouse.into(),
            storage_options: HashMap::new(),
            buffer_bytes: BUFFER_BYTES_DEFAULT,
            buffer_interval_ms: BUFFER_INTERVAL_MS_DEFAULT,
            partition_by: default_partitioning(),
            schema: None,
            event_time_field: default_event_time_field(),
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            columns_max: COLUMNS_MAX_DEFAULT,
            maintenance: MaintenanceConfig::default(),
            transform_sql: None,
            transform_http: None,
        }
    }

    pub fn buffer_interval(&self) -> Duration {
        Duration::from_millis(self.buffer_interval_ms)
    }

    /// The error table's name.
    pub fn errors_table(&self) -> String {
        format!("{}_errors", self.table)
    }

    /// Check every bound; the message names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ProcessError::Config(m));
        if !valid_name(&self.name, 64) {
            return bad(format!(
                "delivery name {:?} must be 1-64 chars of [A-Za-z0-9_.-]",
                self.name
            ));
        }
        if let Err(e) = freshet_storage::StreamName::new(self.stream.clone()) {
            return bad(format!("source stream: {e}"));
        }
        if !valid_name(&self.table, 128) || self.table.starts_with('.') {
            return bad(format!(
                "table name {:?} must be 1-128 chars of [A-Za-z0-9_.-] and not start with '.'",
                self.table
            ));
        }
        if self.warehouse.is_empty() {
            return bad("warehouse must not be empty".to_string());
        }
        if !(BUFFER_BYTES_MIN..=BUFFER_BYTES_MAX).contains(&self.buffer_bytes) {
            return bad(format!(
                "buffer_bytes {} must be between {BUFFER_BYTES_MIN} (1 MiB) and {BUFFER_BYTES_MAX} (128 MiB)",
                self.buffer_bytes
            ));
        }
        if self.buffer_interval_ms > BUFFER_INTERVAL_MS_MAX {
            return bad(format!(
                "buffer_interval_ms {} must be between 0 and {BUFFER_INTERVAL_MS_MAX} (900 s)",
                self.buffer_interval_ms
            ));
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > 16 << 20 {
            return bad("value_bytes_max must be between 1 and 16 MiB".to_string());
        }
        if self.columns_max < LINEAGE_COLUMNS.len() + self.partition_by.len() + 1 || self.columns_max > 10_000
        {
            return bad("columns_max must leave room for one data column and be at most 10000".to_string());
        }
        if self.maintenance.checkpoint_interval_commits == 0 {
            return bad("maintenance.checkpoint_interval_commits must be at least 1".to_string());
        }
        if let Some(sql) = &self.transform_sql {
            deltalake::datafusion::sql::parser::DFParser::parse_sql(sql)
                .map_err(|e| ProcessError::Config(format!("transform_sql does not parse: {e}")))?;
        }
        if let Some(t) = &self.transform_http {
            t.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.partition_by {
            if let Some(reason) = invalid_column_name(&p.name) {
                return bad(format!("partition column {:?}: {reason}", p.name));
            }
            if LINEAGE_COLUMNS.contains(&p.name.as_str()) {
                return bad(format!(
                    "partition column {:?} clashes with a lineage column",
                    p.name
                ));
            }
            if !seen.insert(p.name.to_lowercase()) {
                return bad(format!("partition column {:?} appears twice", p.name));
            }
        }
        if let Some(schema) = &self.schema {
            for c in schema {
                if let Some(reason) = invalid_column_name(&c.name) {
                    return bad(format!("declared column {:?}: {reason}", c.name));
                }
                if LINEAGE_COLUMNS.contains(&c.name.as_str()) || !seen.insert(c.name.to_lowercase()) {
                    return bad(format!(
                        "declared column {:?} clashes with a lineage or partition column or appears twice",
                        c.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The table's URL under the warehouse.
    pub fn table_url(&self) -> Result<url::Url> {
        table_url(&self.warehouse, &self.table)
    }

    pub fn errors_table_url(&self) -> Result<url::Url> {
        table_url(&self.warehouse, &self.errors_table())
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Why `name` cannot be a Delta column name (without column mapping), if it cannot.
pub fn invalid_column_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty column name");
    }
    if name.len() > 255 {
        return Some("column name longer than 255 bytes");
    }
    if name
        .chars()
        .any(|c| matches!(c, ' ' | ',' | ';' | '{' | '}' | '(' | ')' | '\n' | '\t' | '=') || c.is_control())
    {
        return Some("column name contains one of ` ,;{}()=`, a tab, a newline or a control character");
    }
    None
}

/// `<warehouse>/<table>` as a URL; a plain path is made absolute (and created) first.
pub fn table_url(warehouse: &str, table: &str) -> Result<url::Url> {
    let base = warehouse_url(warehouse)?;
    let mut s = base.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    s.push_str(table);
    s.push('/');
    url::Url::parse(&s).map_err(|e| ProcessError::Config(format!("table url {s:?}: {e}")))
}

/// The warehouse as a URL: `s3://...`, `file://...`, or a local path (made absolute; created if missing).
pub fn warehouse_url(warehouse: &str) -> Result<url::Url> {
    if warehouse.contains("://") {
        return url::Url::parse(warehouse)
            .map_err(|e| ProcessError::Config(format!("warehouse url {warehouse:?}: {e}")));
    }
    let path = Path::new(warehouse);
    std::fs::create_dir_all(path).map_err(|source| ProcessError::Io {
        path: warehouse.to_string(),
        source,
    })?;
    let abs = std::fs::canonicalize(path).map_err(|source| ProcessError::Io {
        path: warehouse.to_string(),
        source,
    })?;
    url::Url::from_directory_path(&abs)
        .map_err(|()| ProcessError::Config(format!("warehouse path {warehouse:?} is not absolute")))
}

/// The local directory behind a `file://` URL, if it is one.
pub fn local_path(url: &url::Url) -> Option<std::path::PathBuf> {
    if url.scheme() == "file" {
        url.to_file_path().ok()
    } else {
        None
    }
}

/// Parse a duration like `250ms`, `1s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 1s, 2m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1_000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("{s:?} has unit {unit:?}; use ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        let mut c = DeliveryConfig::new("d", "telemetry", "telemetry", "/tmp/wh");
        c.validate().unwrap();
        assert_eq!(c.buffer_interval_ms, 60_000);
        c.buffer_bytes = 200 << 20;
        assert!(c.validate().is_err());
        c.buffer_bytes = 1 << 20;
        c.buffer_interval_ms = 901_000;
        assert!(c.validate().is_err());
        c.buffer_interval_ms = 0;
        c.validate().unwrap();
        c.partition_by.push(PartitionColumn {
            name: "_topic".into(),
            expr: PartitionExpr::EventHour,
        });
        assert!(c.validate().is_err());
    }

    #[test]
    fn config_from_json_uses_defaults() {
        let c: DeliveryConfig = serde_json::from_str(
            r#"{"name":"d","stream":"s","table":"t","warehouse":"/w",
                "partition_by":[{"name":"device","kind":"field","field":"device_id"}]}"#,
        )
        .unwrap();
        assert_eq!(c.buffer_interval_ms, 60_000);
        assert_eq!(
            c.partition_by[0].expr,
            PartitionExpr::Field {
                field: "device_id".into()
            }
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("1d").is_err());
    }
}
