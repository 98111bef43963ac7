//! JSON records → Arrow record batches, with lineage columns, computed partition columns and schema inference.
//!
//! # Contract
//!
//! - A record is one JSON object. Every top-level field becomes a column; nested objects and arrays are kept as
//!   their JSON text in a `string` column. `null` is the same as absent.
//! - Inference is additive: a field never seen before becomes a new nullable column (`boolean`, `long`, `double`
//!   or `string`); columns are never dropped or narrowed. Within one batch a new `long` column widens to `double`
//!   if a fractional number shows up. A value that cannot be stored in its column's type (a string in a `long`
//!   column, a fraction in a committed `long` column) is a *type conflict*: the whole record goes to the error
//!   table. With a declared schema, unknown fields and missing required fields are *schema mismatches*.
//! - Lineage columns are authoritative: `_partition_key`, `_shard_id`, `_sequence_number` always come from the
//!   store; `_topic`, `_client_id` and `_arrival_time` are taken from the payload when present (the gateway puts
//!   them there) and are null (or the store's arrival time) otherwise. Partition columns are computed, so a
//!   payload field of the same name is replaced, unless the partition column *is* that field.
//! - Every record yields exactly one good row or exactly one error row: nothing is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use freshet_storage::{Record, ShardId};
use serde_json::Value;

use crate::config::{ColumnType, DeliveryConfig, LINEAGE_COLUMNS, PartitionExpr, invalid_column_name};
use crate::error::{ProcessError, Result};

/// Why a record went to the error table. The string forms are what the `error_kind` column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The payload is not valid UTF-8 JSON.
    NotJson,
    /// The payload is JSON but not an object.
    NotObject,
    /// A value does not fit its column's type.
    TypeConflict,
    /// A field name cannot be a Delta column name.
    InvalidFieldName,
    /// A string value is larger than `value_bytes_max`.
    ValueTooLarge,
    /// The table would grow past `columns_max` columns.
    TooManyColumns,
    /// The record does not match the declared schema.
    SchemaMismatch,
    /// The SQL transform failed on the record's batch.
    TransformFailed,
    /// The HTTP transform function returned `ProcessingFailed` for the record.
    TransformProcessingFailed,
    /// The HTTP transform's answer lacks the record, or its data is not base64, or it is not the contract's JSON.
    TransformInvalidResponse,
    /// The HTTP transform endpoint kept failing past the retry duration.
    TransformUnavailable,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotJson => "not_json",
            ErrorKind::NotObject => "not_object",
            ErrorKind::TypeConflict => "type_conflict",
            ErrorKind::InvalidFieldName => "invalid_field_name",
            ErrorKind::ValueTooLarge => "value_too_large",
            ErrorKind::TooManyColumns => "too_many_columns",
            ErrorKind::SchemaMismatch => "schema_mismatch",
            ErrorKind::TransformFailed => "transform_failed",
            ErrorKind::TransformProcessingFailed => "transform_processing_failed",
            ErrorKind::TransformInvalidResponse => "transform_invalid_response",
            ErrorKind::TransformUnavailable => "transform_unavailable",
        }
    }
}

/// A record and the shard it was read from.
#[derive(Clone, Debug)]
pub struct SourceRecord {
    pub shard_id: ShardId,
    pub record: Record,
}

/// A record that could not be converted: one row of the error table.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorRow {
    pub shard_id: ShardId,
    pub sequence_number: u64,
    pub partition_key: String,
    pub arrival_ms: i64,
    pub raw: bytes::Bytes,
    pub kind: ErrorKind,
    pub message: String,
}

/// Column type as stored. `Integer` is the `event_hour` partition type (and may be declared).
impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Integer => DataType::Int32,
            ColumnType::Long => DataType::Int64,
            ColumnType::Double => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Date => DataType::Date32,
            ColumnType::Binary => DataType::Binary,
        }
    }

    pub fn from_arrow(t: &DataType) -> Option<Self> {
        Some(match t {
            DataType::Boolean => ColumnType::Boolean,
            DataType::Int32 => ColumnType::Integer,
            DataType::Int64 => ColumnType::Long,
            DataType::Float64 => ColumnType::Double,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::String,
            DataType::Timestamp(TimeUnit::Microsecond, _) => ColumnType::Timestamp,
            DataType::Date32 => ColumnType::Date,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ColumnType::Binary,
            _ => return None,
        })
    }
}

/// One column of the table as the converter sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// The table's columns in order: lineage, data and partition columns, as committed.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSchema {
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// The schema of a new table: lineage, declared columns (if any), then partition columns.
    pub fn initial(config: &DeliveryConfig) -> Self {
        let mut columns: Vec<Column> = LINEAGE_COLUMNS
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                ty: lineage_type(n),
            })
            .collect();
        for c in config.schema.iter().flatten() {
            columns.push(Column {
                name: c.name.clone(),
                ty: c.data_type,
            });
        }
        for p in &config.partition_by {
            columns.push(Column {
                name: p.name.clone(),
                ty: partition_type(&p.expr),
            });
        }
        TableSchema { columns }
    }

    /// Read an existing table's schema; every column must have a type the converter can write.
    pub fn from_arrow(table: &str, schema: &Schema) -> Result<Self> {
        let mut columns = Vec::new();
        for f in schema.fields() {
            let ty = ColumnType::from_arrow(f.data_type()).ok_or_else(|| ProcessError::Incompatible {
                table: table.to_string(),
                message: format!(
                    "column {} has type {} that delivery cannot write",
                    f.name(),
                    f.data_type()
                ),
            })?;
            columns.push(Column {
                name: f.name().clone(),
                ty,
            });
        }
        Ok(TableSchema { columns })
    }

    pub fn arrow(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.arrow(), true))
                .collect::<Vec<_>>(),
        ))
    }

    fn index(&self) -> HashMap<String, usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect()
    }
}

fn lineage_type(name: &str) -> ColumnType {
    match name {
        "_sequence_number" => ColumnType::Long,
        "_arrival_time" => ColumnType::Timestamp,
        _ => ColumnType::String,
    }
}

fn partition_type(expr: &PartitionExpr) -> ColumnType {
    match expr {
        PartitionExpr::EventDate => ColumnType::Date,
        PartitionExpr::EventHour => ColumnType::Integer,
        PartitionExpr::Field { .. } => ColumnType::String,
    }
}

/// A cell value before it is put into an Arrow builder.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(bytes::Bytes),
}

/// The result of converting one buffered batch.
#[derive(Debug)]
pub struct Converted {
    /// Good rows, in the (possibly evolved) schema; `None` when there are none.
    pub batch: Option<RecordBatch>,
    /// The table schema after this batch: equal to the input schema unless columns were added.
    pub schema: TableSchema,
    pub errors: Vec<ErrorRow>,
    /// Event-time range (epoch ms) of the good rows.
    pub event_time_ms_min: Option<i64>,
    pub event_time_ms_max: Option<i64>,
}

impl Converted {
    pub fn rows(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.num_rows())
    }
}

/// Converts JSON records into rows of a table. Holds no state between batches besides the config.
#[derive(Debug, Clone)]
pub struct Converter {
    config: Arc<DeliveryConfig>,
}

type Row = Vec<(usize, Cell)>;

impl Converter {
    pub fn new(config: Arc<DeliveryConfig>) -> Self {
        Self { config }
    }

    /// Convert `records` against the committed `schema`. Never fails on bad records (they become error rows);
    /// fails only when Arrow cannot build the batch, which is a bug.
    pub fn convert(&self, schema: &TableSchema, records: &[SourceRecord]) -> Result<Converted> {
        let mut out_schema = schema.clone();
        let mut index = schema.index();
        let mut lower: HashMap<String, String> = schema
            .columns
            .iter()
            .map(|c| (c.name.to_lowercase(), c.name.clone()))
            .collect();
        let committed = schema.columns.len();
        let mut rows: Vec<Row> = Vec::with_capacity(records.len());
        let mut errors = Vec::new();
        let (mut tmin, mut tmax) = (None::<i64>, None::<i64>);
        for src in records {
            match self.convert_one(src, &mut out_schema, &mut index, &mut lower, committed) {
                Ok((row, event_ms)) => {
                    tmin = Some(tmin.map_or(event_ms, |m: i64| m.min(event_ms)));
                    tmax = Some(tmax.map_or(event_ms, |m: i64| m.max(event_ms)));
                    rows.push(row);
                }
                Err((kind, message)) => errors.push(ErrorRow {
                    shard_id: src.shard_id,
                    sequence_number: src.record.sequence_number.to_u64()?,
                    partition_key: src.record.partition_key.clone(),
                    arrival_ms: src.record.arrival_ms,
                    raw: src.record.data.clone(),
                    kind,
                    message,
                }),
            }
        }
        let batch = if rows.is_empty() {
            None
        } else {
            Some(build_batch(&out_schema, &rows)?)
        };
        Ok(Converted {
            batch,
            schema: out_schema,
            errors,
            event_time_ms_min: tmin,
            event_time_ms_max: tmax,
        })
    }

    fn convert_one(
        &self,
        src: &SourceRecord,
        schema: &mut TableSchema,
        index: &mut HashMap<String, usize>,
        lower: &mut HashMap<String, String>,
        committed: usize,
    ) -> std::result::Result<(Row, i64), (ErrorKind, String)> {
        let cfg = &self.config;
        let value: Value = serde_json::from_slice(&src.record.data)
            .map_err(|e| (ErrorKind::NotJson, format!("payload is not JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err((
                ErrorKind::NotObject,
                format!("payload is JSON {} but must be an object", json_kind(&value)),
            ));
        };
        let record = &src.record;
        let seq = record
            .sequence_number
            .to_u64()
            .ok()
            .and_then(|s| i64::try_from(s).ok())
            .ok_or_else(|| {
                (
                    ErrorKind::TypeConflict,
                    "sequence number does not fit a long".to_string(),
                )
            })?;
        let mut row: Row = Vec::with_capacity(object.len() + LINEAGE_COLUMNS.len() + 2);
        let mut arrival_ms = record.arrival_ms;
        let mut topic = None;
        let mut client_id = None;
        // Columns added by this record: only kept if the record turns out good.
        let mut added: Vec<Column> = Vec::new();
        let mut widened: Vec<usize> = Vec::new();
        let partition_fields: Vec<&str> = cfg
            .partition_by
            .iter()
            .filter_map(|p| match &p.expr {
                PartitionExpr::Field { field } if *field == p.name => Some(p.name.as_str()),
                _ => None,
            })
            .collect();
        let reserved = |k: &str| {
            LINEAGE_COLUMNS.contains(&k)
                || cfg
                    .partition_by
                    .iter()
                    .any(|p| p.name == k && !partition_fields.contains(&k))
        };
        for (key, value) in &object {
            match key.as_str() {
                "_topic" | "_client_id" => {
                    let v = match value {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        other => {
                            return Err((
                                ErrorKind::TypeConflict,
                                format!("lineage field {key} must be a string, not {}", json_kind(other)),
                            ));
                        }
                    };
                    if key == "_topic" {
                        topic = v;
                    } else {
                        client_id = v;
                    }
                    continue;
                }
                "_arrival_time" => {
                    if !value.is_null() {
                        arrival_ms = time_ms(value).ok_or_else(|| {
                            (
                                ErrorKind::TypeConflict,
                                "lineage field _arrival_time must be epoch millis or RFC 3339".to_string(),
                            )
                        })?;
                    }
                    continue;
                }
                k if reserved(k) => continue,
                _ => {}
            }
            if value.is_null() {
                continue;
            }
            let cell = to_cell(value);
            if let Cell::Str(s) = &cell
                && s.len() > cfg.value_bytes_max
            {
                return Err((
                    ErrorKind::ValueTooLarge,
                    format!(
                        "field {key} has {} bytes, more than the limit of {}",
                        s.len(),
                        cfg.value_bytes_max
                    ),
                ));
            }
            let (col, ty) = match index.get(key) {
                Some(&i) => (i, schema.columns[i].ty),
                // JSON object keys are unique, so a key is never both new and in `added`.
                None => {
                    if cfg.schema.is_some() {
                        return Err((
                            ErrorKind::SchemaMismatch,
                            format!("field {key} is not in the declared schema"),
                        ));
                    }
                    if let Some(reason) = invalid_column_name(key) {
                        return Err((ErrorKind::InvalidFieldName, format!("field {key:?}: {reason}")));
                    }
                    if let Some(existing) = lower.get(&key.to_lowercase()) {
                        return Err((
                            ErrorKind::InvalidFieldName,
                            format!("field {key:?} differs only in case from column {existing:?}"),
                        ));
                    }
                    if schema.columns.len() + added.len() >= cfg.columns_max {
                        return Err((
                            ErrorKind::TooManyColumns,
                            format!(
                                "field {key} would be column {} but the table is limited to {}",
                                schema.columns.len() + added.len() + 1,
                                cfg.columns_max
                            ),
                        ));
                    }
                    let ty = inferred_type(&cell);
                    added.push(Column {
                        name: key.clone(),
                        ty,
                    });
                    (schema.columns.len() + added.len() - 1, ty)
                }
            };
            let cell = match coerce(cell, ty) {
                Ok(c) => c,
                Err(cell) => {
                    // A long column added by this batch (not yet committed) may still widen to double.
                    if ty == ColumnType::Long && col >= committed && matches!(cell, Cell::Float(_)) {
                        widened.push(col);
                        cell
                    } else {
                        return Err((
                            ErrorKind::TypeConflict,
                            format!(
                                "field {key} is {} but column {key} is {}",
                                cell_kind(&cell),
                                type_name(ty)
                            ),
                        ));
                    }
                }
            };
            row.push((col, cell));
        }
        // Declared schema: required columns must be present.
        if let Some(declared) = &cfg.schema {
            for c in declared.iter().filter(|c| !c.nullable) {
                let i = index[&c.name];
                if !row.iter().any(|(col, _)| *col == i) {
                    return Err((
                        ErrorKind::SchemaMismatch,
                        format!("required field {} is missing or null", c.name),
                    ));
                }
            }
        }
        // Event time: the payload's field, else the arrival time.
        let event_ms = object
            .get(&cfg.event_time_field)
            .and_then(time_ms)
            .unwrap_or(arrival_ms);
        // The record is good: commit its schema changes.
        for c in added {
            index.insert(c.name.clone(), schema.columns.len());
            lower.insert(c.name.to_lowercase(), c.name.clone());
            schema.columns.push(c);
        }
        for col in widened {
            schema.columns[col].ty = ColumnType::Double;
        }
        let lineage = [
            ("_topic", topic.map(Cell::Str)),
            ("_client_id", client_id.map(Cell::Str)),
            ("_partition_key", Some(Cell::Str(record.partition_key.clone()))),
            ("_shard_id", Some(Cell::Str(src.shard_id.to_string()))),
            ("_sequence_number", Some(Cell::Int(seq))),
            ("_arrival_time", Some(Cell::Int(arrival_ms.saturating_mul(1_000)))),
        ];
        for (name, cell) in lineage {
            if let Some(cell) = cell {
                row.push((index[name], cell));
            }
        }
        let event_time =
            DateTime::<Utc>::from_timestamp_millis(event_ms).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        for p in &cfg.partition_by {
            let cell = match &p.expr {
                PartitionExpr::EventDate => Some(Cell::Int(i64::from(days_since_epoch(event_time)))),
                PartitionExpr::EventHour => Some(Cell::Int(i64::from(event_time.hour()))),
                PartitionExpr::Field { field } => match object.get(field) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(Cell::Str(s.clone())),
                    Some(other) => Some(Cell::Str(other.to_string())),
                },
            };
            if let Some(cell) = cell {
                let i = index[&p.name];
                row.retain(|(c, _)| *c != i);
                row.push((i, cell));
            }
        }
        Ok((row, event_ms))
    }
}

fn days_since_epoch(t: DateTime<Utc>) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    (t.date_naive() - epoch).num_days() as i32
}

/// Epoch millis from a JSON number (millis) or an RFC 3339 string.
pub fn time_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis()),
        _ => None,
    }
    .filter(|ms| (-62_135_596_800_000..=253_402_300_799_999).contains(ms))
}

fn to_cell(v: &Value) -> Cell {
    match v {
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cell::Str(s.clone()),
        other => Cell::Str(other.to_string()),
    }
}

fn inferred_type(c: &Cell) -> ColumnType {
    match c {
        Cell::Bool(_) => ColumnType::Boolean,
        Cell::Int(_) => ColumnType::Long,
        Cell::Float(_) => ColumnType::Double,
        Cell::Str(_) => ColumnType::String,
        Cell::Bytes(_) => ColumnType::Binary,
    }
}

/// Fit a cell into a column type; hands the cell back when it does not fit.
fn coerce(cell: Cell, ty: ColumnType) -> std::result::Result<Cell, Cell> {
    match (ty, cell) {
        (ColumnType::Boolean, c @ Cell::Bool(_)) => Ok(c),
        (ColumnType::Long, c @ Cell::Int(_)) => Ok(c),
        (ColumnType::Long, Cell::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Cell::Int(f as i64)),
        (ColumnType::Integer, Cell::Int(i)) if i32::try_from(i).is_ok() => Ok(Cell::Int(i)),
        (ColumnType::Double, Cell::Int(i)) => Ok(Cell::Float(i as f64)),
        (ColumnType::Double, c @ Cell::Float(_)) => Ok(c),
        (ColumnType::String, c @ Cell::Str(_)) => Ok(c),
        (ColumnType::Timestamp, c) => match &c {
            Cell::Int(ms) => Ok(Cell::Int(ms.saturating_mul(1_000))),
            Cell::Str(s) => match time_ms(&Value::String(s.clone())) {
                Some(ms) => Ok(Cell::Int(ms * 1_000)),
                None => Err(c),
            },
            _ => Err(c),
        },
        (ColumnType::Date, c) => match &c {
            Cell::Str(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                Ok(d) => Ok(Cell::Int(i64::from(d.num_days_from_ce() - 719_163))),
                Err(_) => Err(c),
            },
            _ => Err(c),
        },
        (ColumnType::Binary, c @ Cell::Bytes(_)) => Ok(c),
        (_, c) => Err(c),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn cell_kind(c: &Cell) -> &'static str {
    match c {
        Cell::Bool(_) => "a boolean",
        Cell::Int(_) => "an integer",
        Cell::Float(_) => "a fractional number",
        Cell::Str(_) => "a string",
        Cell::Bytes(_) => "bytes",
    }
}

fn type_name(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Boolean => "boolean",
        ColumnType::Integer => "integer",
        ColumnType::Long => "long",
        ColumnType::Double => "double",
        ColumnType::String => "string",
        ColumnType::Timestamp => "timestamp",
        ColumnType::Date => "date",
        ColumnType::Binary => "binary",
    }
}

/// Build the Arrow batch for `rows` in `schema`; cells were coerced to their column's type already.
fn build_batch(schema: &TableSchema, rows: &[Row]) -> Result<RecordBatch> {
    let n = rows.len();
    // Column-major view: for each column, the row's cell (or null).
    let mut cols: Vec<Vec<Option<&Cell>>> = vec![vec![None; n]; schema.columns.len()];
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row {
            cols[*c][r] = Some(cell);
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len());
    for (col, cells) in schema.columns.iter().zip(cols) {
        let array: ArrayRef = match col.ty {
            ColumnType::Boolean => {
                let mut b = BooleanBuilder::with_capacity(n);
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Bool(v)) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Integer => {
                let mut b = Int32Builder::with_capacity(n);
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Int(v)) => i32::try_from(*v).ok(),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Long => {
                let mut b = Int64Builder::with_capacity(n);
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Int(v)) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Double => {
                let mut b = Float64Builder::with_capacity(n);
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Float(v)) => Some(*v),
                        Some(Cell::Int(v)) => Some(*v as f64),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::String => {
                let mut b = StringBuilder::with_capacity(n, 16 * n);
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Str(v)) => Some(v.as_str()),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Timestamp => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Int(v)) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Date => {
                let mut b = Date32Builder::with_capacity(n);
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Int(v)) => i32::try_from(*v).ok(),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColumnType::Binary => {
                let mut b = BinaryBuilder::with_capacity(n, 64 * n);
                for c in cells {
                    b.append_option(match c {
                        Some(Cell::Bytes(v)) => Some(v.as_ref()),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    Ok(RecordBatch::try_new(schema.arrow(), arrays)?)
}

/// The error table's schema.
pub fn errors_schema() -> TableSchema {
    let cols = [
        ("raw_data", ColumnType::Binary),
        ("error_kind", ColumnType::String),
        ("error_message", ColumnType::String),
        ("_partition_key", ColumnType::String),
        ("_shard_id", ColumnType::String),
        ("_sequence_number", ColumnType::Long),
        ("_arrival_time", ColumnType::Timestamp),
        ("error_time", ColumnType::Timestamp),
    ];
    TableSchema {
        columns: cols
            .iter()
            .map(|(n, t)| Column {
                name: n.to_string(),
                ty: *t,
            })
            .collect(),
    }
}

/// The error rows as a batch of the error table, stamped with `now_ms`.
pub fn errors_batch(rows: &[ErrorRow], now_ms: i64) -> Result<RecordBatch> {
    let schema = errors_schema();
    let built: Vec<Row> = rows
        .iter()
        .map(|e| {
            vec![
                (0, Cell::Bytes(e.raw.clone())),
                (1, Cell::Str(e.kind.as_str().to_string())),
                (2, Cell::Str(e.message.clone())),
                (3, Cell::Str(e.partition_key.clone())),
                (4, Cell::Str(e.shard_id.to_string())),
                (5, Cell::Int(e.sequence_number as i64)),
                (6, Cell::Int(e.arrival_ms.saturating_mul(1_000))),
                (7, Cell::Int(now_ms.saturating_mul(1_000))),
            ]
        })
        .collect();
    build_batch(&schema, &built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{Float64Type, Int64Type};
    use freshet_storage::SequenceNumber;

    fn rec(shard: u32, seq: u64, data: &str) -> SourceRecord {
        SourceRecord {
            shard_id: ShardId(shard),
            record: Record {
                sequence_number: SequenceNumber::from_u64(seq),
                partition_key: "pk".into(),
                data: bytes::Bytes::copy_from_slice(data.as_bytes()),
                arrival_ms: 1_700_000_000_000,
            },
        }
    }

    fn converter() -> (Converter, TableSchema) {
        let cfg = Arc::new(DeliveryConfig::new("d", "s", "t", "/tmp/w"));
        let schema = TableSchema::initial(&cfg);
        (Converter::new(cfg), schema)
    }

    #[test]
    fn lineage_partition_and_inference() {
        let (c, s) = converter();
        let out = c
            .convert(
                &s,
                &[
                    rec(
                        0,
                        10,
                        r#"{"ts": 86400000, "temp": 21, "_topic": "devices/a/telemetry", "_client_id": "a"}"#,
                    ),
                    rec(1, 11, r#"{"ts": 172800000, "temp": 21.5, "tags": {"x": 1}}"#),
                ],
            )
            .unwrap();
        // RFC 3339 event times work too (in a table whose `ts` is a string column).
        let rfc = c
            .convert(&s, &[rec(0, 12, r#"{"ts": "1970-01-03T00:00:00Z"}"#)])
            .unwrap();
        assert_eq!(rfc.event_time_ms_min, Some(172_800_000));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 2);
        // temp widened to double within the batch.
        let temp = b.column_by_name("temp").unwrap();
        assert_eq!(temp.data_type(), &DataType::Float64);
        assert_eq!(temp.as_primitive::<Float64Type>().value(0), 21.0);
        let date = b.column_by_name("event_date").unwrap();
        assert_eq!(
            date.as_primitive::<deltalake::arrow::datatypes::Date32Type>()
                .value(0),
            1
        );
        assert_eq!(
            date.as_primitive::<deltalake::arrow::datatypes::Date32Type>()
                .value(1),
            2
        );
        let topic = b.column_by_name("_topic").unwrap().as_string::<i32>();
        assert_eq!(topic.value(0), "devices/a/telemetry");
        assert!(topic.is_null(1));
        let seq = b.column_by_name("_sequence_number").unwrap();
        assert_eq!(seq.as_primitive::<Int64Type>().value(1), 11);
        assert_eq!(
            b.column_by_name("tags").unwrap().as_string::<i32>().value(1),
            r#"{"x":1}"#
        );
        assert_eq!(out.event_time_ms_min, Some(86_400_000));
    }

    #[test]
    fn bad_records_become_error_rows() {
        let (c, mut s) = converter();
        s.columns.push(Column {
            name: "n".into(),
            ty: ColumnType::Long,
        });
        let out = c
            .convert(
                &s,
                &[
                    rec(0, 1, "not json"),
                    rec(0, 2, "[1,2]"),
                    rec(0, 3, r#"{"n": "seven"}"#),
                    rec(0, 4, r#"{"n": 1.5}"#),
                    rec(0, 5, r#"{"a b": 1}"#),
                    rec(0, 6, r#"{"N": 1}"#),
                    rec(0, 7, r#"{"n": 2.0, "ok": true}"#),
                ],
            )
            .unwrap();
        let kinds: Vec<_> = out.errors.iter().map(|e| (e.sequence_number, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, ErrorKind::NotJson),
                (2, ErrorKind::NotObject),
                (3, ErrorKind::TypeConflict),
                (4, ErrorKind::TypeConflict),
                (5, ErrorKind::InvalidFieldName),
                (6, ErrorKind::InvalidFieldName),
            ]
        );
        assert_eq!(out.rows(), 1);
        // The failed records added no columns.
        let names: Vec<_> = out.schema.columns.iter().map(|c| c.name.as_str()).collect();
        assert!(!names.contains(&"a b") && !names.contains(&"N") && names.contains(&"ok"));
        let eb = errors_batch(&out.errors, 5).unwrap();
        assert_eq!(eb.num_rows(), 6);
    }

    #[test]
    fn oversized_values_and_event_time_fallback() {
        let mut cfg = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        cfg.value_bytes_max = 8;
        let cfg = Arc::new(cfg);
        let s = TableSchema::initial(&cfg);
        let out = Converter::new(cfg)
            .convert(
                &s,
                &[
                    rec(0, 1, r#"{"v": "0123456789"}"#),
                    rec(0, 2, r#"{"ts": "garbage"}"#),
                ],
            )
            .unwrap();
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].kind, ErrorKind::ValueTooLarge);
        assert_eq!(out.event_time_ms_min, Some(1_700_000_000_000));
    }

    #[test]
    fn declared_schema_is_strict() {
        use crate::config::DeclaredColumn;
        let mut cfg = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        cfg.schema = Some(vec![
            DeclaredColumn {
                name: "device".into(),
                data_type: ColumnType::String,
                nullable: false,
            },
            DeclaredColumn {
                name: "at".into(),
                data_type: ColumnType::Timestamp,
                nullable: true,
            },
        ]);
        let cfg = Arc::new(cfg);
        let s = TableSchema::initial(&cfg);
        let out = Converter::new(cfg)
            .convert(
                &s,
                &[
                    rec(0, 1, r#"{"device": "a", "at": "2024-01-01T00:00:00Z"}"#),
                    rec(0, 2, r#"{"device": "b", "extra": 1}"#),
                    rec(0, 3, r#"{"at": 5}"#),
                    rec(0, 4, r#"{"device": "c", "at": true}"#),
                ],
            )
            .unwrap();
        let kinds: Vec<_> = out.errors.iter().map(|e| (e.sequence_number, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (2, ErrorKind::SchemaMismatch),
                (3, ErrorKind::SchemaMismatch),
                (4, ErrorKind::TypeConflict)
            ]
        );
        assert_eq!(out.rows(), 1);
        assert_eq!(out.schema, s, "a declared schema never grows");
    }
}
