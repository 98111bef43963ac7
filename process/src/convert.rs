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

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder, new_null_array,
};
use deltalake::arrow::compute::{cast, concat_batches};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use freshet_storage::{Record, ShardId};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::{ColumnType, DeliveryConfig, LINEAGE_COLUMNS, PartitionExpr, invalid_column_name};
use crate::error::{ProcessError, Result};

mod scan;

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

/// One read of one shard: its records, in order. The delivery buffers reads as they come from the store, without
/// copying each record into a [`SourceRecord`].
#[derive(Clone, Debug)]
pub struct ShardRecords {
    pub shard_id: ShardId,
    pub records: Vec<Record>,
}

impl ShardRecords {
    /// The records with their shard.
    pub fn iter(&self) -> impl Iterator<Item = (ShardId, &Record)> + Clone {
        self.records.iter().map(move |r| (self.shard_id, r))
    }
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

impl ErrorRow {
    /// The error row of `record` (of shard `shard_id`). Fails for a sequence number above 64 bits, which the error
    /// table's `_sequence_number` cannot hold.
    pub fn new(shard_id: ShardId, record: &Record, kind: ErrorKind, message: String) -> Result<Self> {
        Ok(Self {
            shard_id,
            sequence_number: record.sequence_number.to_u64()?,
            partition_key: record.partition_key.clone(),
            arrival_ms: record.arrival_ms,
            raw: record.data.clone(),
            kind,
            message,
        })
    }
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

/// The result of converting one buffered batch.
#[derive(Debug)]
pub struct Converted {
    /// Good rows, in the (possibly evolved) schema, as batches in record order (one per chunk converted;
    /// none when there are no good rows). Kept apart so that nothing copies them into one batch on the way to
    /// the Parquet writers; [`Converted::batch`] joins them where one batch is needed.
    pub batches: Vec<RecordBatch>,
    /// The table schema after this batch: equal to the input schema unless columns were added.
    pub schema: TableSchema,
    pub errors: Vec<ErrorRow>,
    /// Event-time range (epoch ms) of the good rows.
    pub event_time_ms_min: Option<i64>,
    pub event_time_ms_max: Option<i64>,
}

impl Converted {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// The good rows as one batch (`None` when there are none).
    pub fn batch(&self) -> Result<Option<RecordBatch>> {
        Ok(match self.batches.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            [first, ..] => Some(concat_batches(&first.schema(), &self.batches)?),
        })
    }
}

/// Converts JSON records into rows of a table. Holds no state between batches besides the config.
///
/// # How (performance)
///
/// Each payload is parsed once, by a serde visitor, into a reused list of (field, value) pairs whose strings
/// borrow from the payload (no `serde_json::Value` tree, no per-field `String`); a good record's cells go
/// straight into one Arrow builder per column. Batches of at least [`CHUNK_RECORDS_MIN`] records are cut into
/// chunks converted on separate threads against the committed schema; a chunk converted against a schema that an
/// earlier chunk has since evolved is converted again in order, so the result is exactly that of converting the
/// records one after another.
#[derive(Debug, Clone)]
pub struct Converter {
    config: Arc<DeliveryConfig>,
}

/// Smallest chunk worth a thread of its own.
pub const CHUNK_RECORDS_MIN: usize = 4_096;
/// Most threads one conversion uses.
const CONVERT_THREADS_MAX: usize = 4;

impl Converter {
    pub fn new(config: Arc<DeliveryConfig>) -> Self {
        Self { config }
    }

    /// Convert `records` against the committed `schema`. Never fails on bad records (they become error rows);
    /// fails only when Arrow cannot build the batch, which is a bug.
    pub fn convert(&self, schema: &TableSchema, records: &[SourceRecord]) -> Result<Converted> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(CONVERT_THREADS_MAX)
            .min(records.len() / CHUNK_RECORDS_MIN)
            .max(1);
        self.convert_in(schema, records, threads)
    }

    /// [`Converter::convert`] on `threads` chunks (at most; 1 converts on the calling thread).
    fn convert_in(
        &self,
        schema: &TableSchema,
        records: &[SourceRecord],
        threads: usize,
    ) -> Result<Converted> {
        let committed = schema.columns.len();
        let chunk = |schema: &TableSchema, records: &[SourceRecord]| {
            ChunkConverter::new(&self.config, schema, committed, records.len()).run(records)
        };
        if threads <= 1 || records.len() < 2 {
            return chunk(schema, records);
        }
        // A short first chunk on its own: new fields usually show up in the first records (the first batch of
        // a new table adds every column), so the parallel chunks start from the schema they leave.
        let (head, rest) = records.split_at(CHUNK_RECORDS_MIN.min(records.len() / (threads + 1)).max(1));
        let first = chunk(schema, head)?;
        let base = first.schema.clone();
        let chunks: Vec<&[SourceRecord]> = rest.chunks(rest.len().div_ceil(threads)).collect();
        // Every other chunk against `base`, in parallel; the first of them on this thread.
        let mut results: Vec<Result<Converted>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks[1..]
                .iter()
                .map(|records| scope.spawn(|| chunk(&base, records)))
                .collect();
            let mut out = vec![chunk(&base, chunks[0])];
            for h in handles {
                out.push(h.join().unwrap_or_else(|_| {
                    Err(ProcessError::Internal("a conversion thread panicked".to_string()))
                }));
            }
            out
        });
        // In order: a chunk's result stands if the schema was still `base` when it would have started;
        // otherwise it is converted again against the schema the chunks before it left.
        let mut current = base.clone();
        let mut parts: Vec<Converted> = Vec::with_capacity(chunks.len() + 1);
        parts.push(first);
        for (i, records) in chunks.iter().enumerate() {
            let part = if current == base {
                std::mem::replace(&mut results[i], Ok(empty(&base)))?
            } else {
                chunk(&current, records)?
            };
            current = part.schema.clone();
            parts.push(part);
        }
        merge(current, parts)
    }
}

/// Convert `reads` (runs of records, in order) against `schema`, whose first `committed` columns are the table's
/// (the others were added by earlier records of the same flush and may still widen). One thread.
pub(crate) fn convert_reads(
    config: &DeliveryConfig,
    schema: &TableSchema,
    committed: usize,
    reads: &[&ShardRecords],
) -> Result<Converted> {
    let rows = reads.iter().map(|r| r.records.len()).sum();
    ChunkConverter::new(config, schema, committed, rows).run_iter(reads.iter().flat_map(|r| r.iter()))
}

pub(crate) fn empty(schema: &TableSchema) -> Converted {
    Converted {
        batches: Vec::new(),
        schema: schema.clone(),
        errors: Vec::new(),
        event_time_ms_min: None,
        event_time_ms_max: None,
    }
}

/// Join chunk results (in record order) into one, every batch widened to the final `schema`: later chunks may
/// have added columns (null in earlier rows) or widened a new `long` column to `double`.
pub(crate) fn merge(schema: TableSchema, parts: Vec<Converted>) -> Result<Converted> {
    let target = schema.arrow();
    let mut batches = Vec::with_capacity(parts.len());
    let mut out = empty(&schema);
    for part in parts {
        out.errors.extend(part.errors);
        out.event_time_ms_min = min_opt(out.event_time_ms_min, part.event_time_ms_min);
        out.event_time_ms_max = max_opt(out.event_time_ms_max, part.event_time_ms_max);
        for batch in part.batches {
            if batch.schema() == target {
                batches.push(batch);
                continue;
            }
            let n = batch.num_rows();
            let mut columns = Vec::with_capacity(target.fields().len());
            for (i, field) in target.fields().iter().enumerate() {
                let column = match batch.columns().get(i) {
                    Some(c) if c.data_type() == field.data_type() => c.clone(),
                    Some(c) => cast(c, field.data_type())?,
                    None => new_null_array(field.data_type(), n),
                };
                columns.push(column);
            }
            batches.push(RecordBatch::try_new(target.clone(), columns)?);
        }
    }
    out.batches = batches;
    Ok(out)
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A top-level field's value, borrowed from the payload where it can be.
#[derive(Debug)]
enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`: stored as a double, like `serde_json::Value::as_f64` would.
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    /// A nested object or array as compact JSON text (objects with sorted keys, as `serde_json::Value` prints).
    Nested {
        text: String,
        kind: &'static str,
    },
}

impl<'a> Json<'a> {
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Nested { kind, .. } => kind,
        }
    }

    /// The value's JSON text as `serde_json::Value` prints it (strings unquoted).
    fn text(&self) -> Option<String> {
        Some(match self {
            Json::Null => return None,
            Json::Bool(b) => b.to_string(),
            Json::Int(i) => i.to_string(),
            Json::UInt(u) => u.to_string(),
            Json::Float(f) => {
                serde_json::Number::from_f64(*f).map_or_else(|| "null".to_string(), |n| n.to_string())
            }
            Json::Str(s) => s.to_string(),
            Json::Nested { text, .. } => text.clone(),
        })
    }

    /// The cell a column stores of this value (`None` for null, which is the same as absent).
    fn into_cell(self) -> Option<Cell<'a>> {
        Some(match self {
            Json::Null => return None,
            Json::Bool(b) => Cell::Bool(b),
            Json::Int(i) => Cell::Int(i),
            Json::UInt(u) => Cell::Float(u as f64),
            Json::Float(f) => Cell::Float(f),
            Json::Str(s) => Cell::Str(s),
            Json::Nested { text, .. } => Cell::Str(Cow::Owned(text)),
        })
    }

    /// A `_topic` or `_client_id` lineage value: a string or null; anything else is handed back.
    fn into_lineage_text(self) -> std::result::Result<Option<Cow<'a, str>>, Json<'a>> {
        match self {
            Json::Null => Ok(None),
            Json::Str(s) => Ok(Some(s)),
            other => Err(other),
        }
    }

    /// Epoch millis from a number (millis) or an RFC 3339 string; see [`time_ms`].
    fn time_ms(&self) -> Option<i64> {
        match self {
            Json::Int(i) => Some(*i),
            // Above i64::MAX, so past any time.
            Json::UInt(_) => None,
            Json::Float(f) => Some(*f)
                .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                .map(|f| f as i64),
            Json::Str(s) => rfc3339_ms(s),
            _ => None,
        }
        .filter(|ms| TIME_MS_RANGE.contains(ms))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Json<'de>, E> {
        Ok(i64::try_from(v).map_or(Json::UInt(v), Json::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Json<'de>, E> {
        // `serde_json::Value` turns a non-finite double into null.
        Ok(if v.is_finite() { Json::Float(v) } else { Json::Null })
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Json<'de>, A::Error> {
        let v = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(Json::Nested {
            text: v.to_string(),
            kind: "an array",
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Json<'de>, A::Error> {
        let v = Value::deserialize(MapAccessDeserializer::new(map))?;
        Ok(Json::Nested {
            text: v.to_string(),
            kind: "an object",
        })
    }
}

/// An object key, borrowed from the payload unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

/// Parses a payload's top level: an object's fields go into `fields` (in document order); anything else is
/// reported by its kind.
struct TopLevel<'s, 'de> {
    fields: &'s mut Vec<(Cow<'de, str>, Json<'de>)>,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_, 'de> {
    /// `None` for an object, else what the payload is instead.
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_, 'de> {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<Json<'de>>()?;
            self.fields.push((key, value));
        }
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Self::Value, A::Error> {
        // Parsed in full so that an array with bad JSON inside is `not_json`, as for any other payload.
        Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(Some("an array"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Ok(Some("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(Some(if v.is_finite() { "a number" } else { "null" }))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(Some("null"))
    }
}

/// Parse `data` into `fields` (cleared first): sorted by key with the last of duplicate keys kept, which is the
/// order and the values `serde_json::Value` (a `BTreeMap`) would give. Errors are `(kind, message)`. Returns
/// whether the keys were unique, so that `shape` holds them.
///
/// `shape` remembers the keys of the last record without duplicate keys, in document order, and their sorted
/// order: records of one stream mostly have the same keys in the same order, and for those the sort is a
/// comparison of each key with the remembered one.
fn parse_object<'de>(
    data: &'de [u8],
    fields: &mut Vec<(Cow<'de, str>, Json<'de>)>,
    shape: &mut Shape,
) -> std::result::Result<bool, (ErrorKind, String)> {
    fields.clear();
    // Valid UTF-8 (nearly every payload) is checked once here rather than string by string by the parser; the
    // rest is parsed as bytes, so its error is the parser's.
    let top = match std::str::from_utf8(data) {
        Ok(text) => parse_top(serde_json::Deserializer::from_str(text), fields),
        Err(_) => parse_top(serde_json::Deserializer::from_slice(data), fields),
    }
    .map_err(|e| (ErrorKind::NotJson, format!("payload is not JSON: {e}")))?;
    if let Some(kind) = top {
        return Err((
            ErrorKind::NotObject,
            format!("payload is JSON {kind} but must be an object"),
        ));
    }
    if shape.matches(fields) {
        shape.reorder(fields);
        return Ok(true);
    }
    let mut order: Vec<usize> = (0..fields.len()).collect();
    // Stable: duplicates stay in document order, and the later one wins.
    order.sort_by(|a, b| fields[*a].0.cmp(&fields[*b].0));
    if order.windows(2).all(|w| fields[w[0]].0 != fields[w[1]].0) {
        shape.keys = fields.iter().map(|(k, _)| Box::from(k.as_ref())).collect();
        shape.order = order;
        shape.reorder(fields);
        return Ok(true);
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.dedup_by(|later, kept| {
        if later.0 == kept.0 {
            std::mem::swap(&mut later.1, &mut kept.1);
            true
        } else {
            false
        }
    });
    Ok(false)
}

fn parse_top<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    fields: &mut Vec<(Cow<'de, str>, Json<'de>)>,
) -> serde_json::Result<Option<&'static str>> {
    let top = TopLevel { fields }.deserialize(&mut de)?;
    de.end()?;
    Ok(top)
}

/// The keys of a record without duplicate keys (document order) and their sorted order, see [`parse_object`].
#[derive(Default)]
struct Shape {
    keys: Vec<Box<str>>,
    /// Indexes into `keys`, in key order.
    order: Vec<usize>,
    /// A working copy of `order` while fields are permuted (kept for its allocation).
    spare: Vec<usize>,
}

impl Shape {
    fn matches(&self, fields: &[(Cow<'_, str>, Json<'_>)]) -> bool {
        self.keys.len() == fields.len() && self.keys.iter().zip(fields).all(|(k, (f, _))| **k == **f)
    }

    /// Put `fields` (in the remembered document order) into key order.
    fn reorder(&mut self, fields: &mut [(Cow<'_, str>, Json<'_>)]) {
        // Apply the permutation in place, cycle by cycle.
        self.spare.clear();
        self.spare.extend_from_slice(&self.order);
        for start in 0..fields.len() {
            let mut i = start;
            while self.spare[i] != start {
                let from = self.spare[i];
                fields.swap(i, from);
                self.spare[i] = i;
                i = from;
            }
            self.spare[i] = i;
        }
    }
}

/// A record layout met before, worked out once: records of one stream mostly have the same fields in the same
/// order with the same types, and such a record is converted by comparing each key with the plan's and putting
/// each value straight into its column ([`ChunkConverter::convert_planned`]), without the general path's field
/// list, sorting, column lookups or per-record row. Anything a plan does not cover falls back to the general path,
/// so the result is the same either way.
struct Plan {
    /// Field names in document order.
    keys: Vec<Box<str>>,
    /// Each key as compact JSON writes it, see [`scan::key_token`].
    key_tokens: Vec<Box<[u8]>>,
    /// Whether the fast path takes records of these keys (else `targets` is empty).
    usable: bool,
    /// What each field (document order) feeds.
    targets: Vec<Target>,
    /// Position of the event-time field, when the record has one.
    event_field: Option<usize>,
    /// Per column: where its cell comes from.
    fill: Vec<Fill>,
    /// Whether [`scan::scan`] may read these records (keys that need no escaping), and how often it did and did
    /// not: once it gives up on a layout's records far more often than it reads them, the serde path takes them all.
    plain_keys: bool,
    scanned: usize,
    scan_misses: usize,
}

impl Plan {
    /// Whether [`scan::scan`] is worth trying on the next record.
    fn scan_worthwhile(&self) -> bool {
        self.plain_keys && self.scan_misses <= self.scanned + 16
    }

    /// Put the value of the field at `position` where the plan says; `None` when the general path must decide.
    fn take<'r>(
        &self,
        position: usize,
        value: Json<'r>,
        value_bytes_max: usize,
        cells: &mut [Option<Cell<'r>>],
        out: &mut PlannedFields<'r>,
    ) -> Option<()> {
        if self.event_field == Some(position) {
            out.event_ms = value.time_ms();
        }
        match self.targets[position] {
            Target::Column(_, ty) => cells[position] = Some(column_cell(value, ty, value_bytes_max)?),
            Target::Ignored => {}
            Target::Topic => out.topic = value.into_lineage_text().ok()?,
            Target::ClientId => out.client_id = value.into_lineage_text().ok()?,
            Target::Arrival => {
                if !matches!(value, Json::Null) {
                    out.arrival_ms = Some(value.time_ms()?);
                }
            }
        }
        Some(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// The field's own column and its type.
    Column(usize, ColumnType),
    /// A field of a lineage or computed partition column's name: not stored.
    Ignored,
    /// The payload's `_topic`, `_client_id` or `_arrival_time` lineage field.
    Topic,
    ClientId,
    Arrival,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    /// The value of the field at this position.
    Field(usize),
    /// The lineage value with this index in [`LINEAGE_COLUMNS`].
    Lineage(usize),
    /// The computed value of the partition expression with this index.
    Partition(usize),
    /// A `Field` partition's text: the (string) value of the field at this position.
    PartitionField(usize),
    Null,
}

/// What a planned record's fields gave, besides the cells by position.
#[derive(Default)]
struct PlannedFields<'r> {
    event_ms: Option<i64>,
    topic: Option<Cow<'r, str>>,
    client_id: Option<Cow<'r, str>>,
    arrival_ms: Option<i64>,
}

/// Parses a payload laid out as a [`Plan`]: each value is checked and coerced into `cells` as it is read.
/// Fails (with an empty message, as the record then takes the general path) at the first key out of the plan,
/// null or oversized value, or value its column cannot take.
struct Planned<'p, 'r> {
    plan: &'p Plan,
    value_bytes_max: usize,
    cells: &'p mut Vec<Option<Cell<'r>>>,
    out: &'p mut PlannedFields<'r>,
}

impl<'de> DeserializeSeed<'de> for Planned<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Planned<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let off = || <A::Error as de::Error>::custom("");
        let plan = self.plan;
        let mut position = 0;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if plan.keys.get(position).is_none_or(|k| **k != *key) {
                return Err(off());
            }
            // A column's value straight into its cell (the event-time field also needs its JSON value).
            if let Target::Column(_, ty) = plan.targets[position]
                && plan.event_field != Some(position)
            {
                let seed = CellSeed {
                    ty,
                    value_bytes_max: self.value_bytes_max,
                };
                self.cells[position] = Some(map.next_value_seed(seed)?);
                position += 1;
                continue;
            }
            let value = map.next_value::<Json<'de>>()?;
            plan.take(position, value, self.value_bytes_max, self.cells, self.out)
                .ok_or_else(off)?;
            position += 1;
        }
        if position == plan.keys.len() {
            Ok(())
        } else {
            Err(off())
        }
    }
}

/// A column's value read straight from the parser into the cell [`coerce`] makes of it, as the general path stores
/// it; fails (with an empty message) where the general path must decide: null, oversized, or not the column's type.
struct CellSeed {
    ty: ColumnType,
    value_bytes_max: usize,
}

impl CellSeed {
    fn fit<'a, E: de::Error>(self, cell: Cell<'a>) -> std::result::Result<Cell<'a>, E> {
        fit(cell, self.ty, self.value_bytes_max).ok_or_else(|| E::custom(""))
    }
}

/// A planned column's cell from a value, as [`fit`] makes it (the usual cases without `coerce`).
#[inline]
fn column_cell(value: Json<'_>, ty: ColumnType, value_bytes_max: usize) -> Option<Cell<'_>> {
    match (ty, value) {
        (ColumnType::String, Json::Str(s)) if s.len() <= value_bytes_max => Some(Cell::Str(s)),
        (ColumnType::Long, Json::Int(i)) => Some(Cell::Int(i)),
        (ColumnType::Double, Json::Float(f)) => Some(Cell::Float(f)),
        (ColumnType::Double, Json::Int(i)) => Some(Cell::Float(i as f64)),
        (ty, value) => fit(value.into_cell()?, ty, value_bytes_max),
    }
}

/// A planned column's cell as the general path would store it, or `None` where the general path must decide.
fn fit(cell: Cell<'_>, ty: ColumnType, value_bytes_max: usize) -> Option<Cell<'_>> {
    if let Cell::Str(s) = &cell
        && s.len() > value_bytes_max
    {
        return None;
    }
    coerce(cell, ty).ok()
}

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Cell<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Cell<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a value of the column's type")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Cell<'de>, E> {
        self.fit(Cell::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Cell<'de>, E> {
        match self.ty {
            ColumnType::Long => Ok(Cell::Int(v)),
            ColumnType::Double => Ok(Cell::Float(v as f64)),
            _ => self.fit(Cell::Int(v)),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Cell<'de>, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => self.fit(Cell::Float(v as f64)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Cell<'de>, E> {
        match self.ty {
            // A non-finite double is null to the general path.
            _ if !v.is_finite() => Err(E::custom("")),
            ColumnType::Double => Ok(Cell::Float(v)),
            _ => self.fit(Cell::Float(v)),
        }
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Cell<'de>, E> {
        self.fit(Cell::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Cell<'de>, E> {
        self.fit(Cell::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Cell<'de>, E> {
        self.fit(Cell::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Cell<'de>, A::Error> {
        match JsonVisitor.visit_seq(seq)? {
            Json::Nested { text, .. } => self.fit(Cell::Str(Cow::Owned(text))),
            _ => Err(<A::Error as de::Error>::custom("")),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Cell<'de>, A::Error> {
        match JsonVisitor.visit_map(map)? {
            Json::Nested { text, .. } => self.fit(Cell::Str(Cow::Owned(text))),
            _ => Err(<A::Error as de::Error>::custom("")),
        }
    }
}

/// A cell value before it is put into an Arrow builder; strings borrow from the payload where they can.
#[derive(Clone, Debug, PartialEq)]
enum Cell<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
}

/// Most bytes a row that [`ColumnBuilder::append`] reserves for a string column from its first value.
const STRING_ROW_BYTES_GUESS_MAX: usize = 256;

/// Make a string column's builder for `rows` rows, sized from its first value of `first_len` bytes (half again, for
/// longer ones; at most [`STRING_ROW_BYTES_GUESS_MAX`] a row, so one long value does not reserve gigabytes): growing
/// by doubling would copy the values and touch twice the memory. Untouched room costs nothing.
#[cold]
fn size_string_builder(b: &mut StringBuilder, rows: usize, first_len: usize) {
    let per_row = (first_len + first_len / 2 + 8).min(STRING_ROW_BYTES_GUESS_MAX);
    let mut sized = StringBuilder::with_capacity(rows, rows * per_row);
    for before in b.finish().iter() {
        sized.append_option(before);
    }
    *b = sized;
}

/// One column's values so far.
enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Integer(Int32Builder),
    Long(Int64Builder),
    Double(Float64Builder),
    /// With the rows it was made for: its bytes are sized from the first value (see [`ColumnBuilder::append`]).
    String(StringBuilder, usize),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Binary(BinaryBuilder),
}

impl ColumnBuilder {
    fn new(ty: ColumnType, capacity: usize) -> Self {
        match ty {
            ColumnType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Integer => Self::Integer(Int32Builder::with_capacity(capacity)),
            ColumnType::Long => Self::Long(Int64Builder::with_capacity(capacity)),
            ColumnType::Double => Self::Double(Float64Builder::with_capacity(capacity)),
            ColumnType::String => Self::String(StringBuilder::with_capacity(capacity, 0), capacity),
            ColumnType::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"))
            }
            ColumnType::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            ColumnType::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, 64 * capacity)),
        }
    }

    /// Append a cell (already coerced to the column's type); anything else is a null.
    #[inline]
    fn append(&mut self, cell: Option<&Cell<'_>>) {
        match self {
            Self::Boolean(b) => b.append_option(match cell {
                Some(Cell::Bool(v)) => Some(*v),
                _ => None,
            }),
            Self::Integer(b) => b.append_option(match cell {
                Some(Cell::Int(v)) => i32::try_from(*v).ok(),
                _ => None,
            }),
            Self::Long(b) => b.append_option(match cell {
                Some(Cell::Int(v)) => Some(*v),
                _ => None,
            }),
            Self::Double(b) => b.append_option(match cell {
                Some(Cell::Float(v)) => Some(*v),
                Some(Cell::Int(v)) => Some(*v as f64),
                _ => None,
            }),
            Self::String(b, rows) => match cell {
                Some(Cell::Str(v)) => {
                    if *rows > 1 {
                        size_string_builder(b, *rows, v.len());
                    }
                    *rows = 0;
                    b.append_value(v)
                }
                _ => b.append_null(),
            },
            Self::Timestamp(b) => b.append_option(match cell {
                Some(Cell::Int(v)) => Some(*v),
                _ => None,
            }),
            Self::Date(b) => b.append_option(match cell {
                Some(Cell::Int(v)) => i32::try_from(*v).ok(),
                _ => None,
            }),
            // JSON has no bytes: a binary column of a declared schema only gets nulls here.
            Self::Binary(b) => b.append_null(),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        for _ in 0..n {
            self.append(None);
        }
    }

    /// A `long` column added by this batch became `double`: its values so far become doubles.
    fn widen_to_double(&mut self) {
        if let Self::Long(b) = self {
            let longs = b.finish();
            let mut doubles = Float64Builder::with_capacity(longs.len().max(1024));
            for v in longs.iter() {
                doubles.append_option(v.map(|v| v as f64));
            }
            *self = Self::Double(doubles);
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Integer(b) => Arc::new(b.finish()),
            Self::Long(b) => Arc::new(b.finish()),
            Self::Double(b) => Arc::new(b.finish()),
            Self::String(b, _) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
        }
    }
}

/// Per-record scratch space, reused for every record of a chunk.
struct Scratch<'r> {
    fields: Vec<(Cow<'r, str>, Json<'r>)>,
    /// The record's cells by column index, until the record is known to be good.
    row: Vec<(usize, Cell<'r>)>,
    /// The good record's cells, one slot per column.
    slots: Vec<Option<Cell<'r>>>,
    shape: Shape,
    /// A planned record's cells, by field position.
    planned: Vec<Option<Cell<'r>>>,
}

/// Converts one run of records, in order, against an evolving schema.
struct ChunkConverter<'c> {
    cfg: &'c DeliveryConfig,
    schema: TableSchema,
    index: HashMap<String, usize>,
    lower: HashMap<String, String>,
    /// Columns at or past this index were added by the batch (not committed) and may still widen.
    committed: usize,
    /// Per column: a lineage or computed partition column, whose payload field is ignored.
    ignored: Vec<bool>,
    /// Field names of partition columns computed from another field (or an expression), and lineage names:
    /// payload fields of these names are ignored even before they are columns.
    reserved: Vec<&'c str>,
    /// Column indexes of [`LINEAGE_COLUMNS`] and of the partition columns (columns are never removed).
    lineage_columns: [Option<usize>; 6],
    partition_columns: Vec<Option<usize>>,
    /// The column of the `j`-th (sorted) field of a recent record, for each `j`: records of one stream mostly
    /// have the same fields, so most lookups are a string comparison instead of a hash. Entries stay true because
    /// columns are never removed or moved.
    recent_fields: Vec<(Box<str>, usize)>,
    /// The layout of the last record the general path converted, see [`Plan`].
    plan: Option<Plan>,
    /// Whether plans are made (off only to compare the two paths in tests) and how many rows took one.
    planning: bool,
    planned_rows: usize,
    /// Whether planned records are first tried with [`scan::scan`] (off only to compare paths in tests), and how
    /// many rows it read.
    scanning: bool,
    scanned_rows: usize,
    builders: Vec<ColumnBuilder>,
    rows: usize,
    capacity: usize,
    errors: Vec<ErrorRow>,
    event_ms_min: Option<i64>,
    event_ms_max: Option<i64>,
}

impl<'c> ChunkConverter<'c> {
    fn new(cfg: &'c DeliveryConfig, schema: &TableSchema, committed: usize, capacity: usize) -> Self {
        let index = schema.index();
        let lower = schema
            .columns
            .iter()
            .map(|c| (c.name.to_lowercase(), c.name.clone()))
            .collect();
        let mut reserved: Vec<&'c str> = LINEAGE_COLUMNS.to_vec();
        for p in &cfg.partition_by {
            if !matches!(&p.expr, PartitionExpr::Field { field } if *field == p.name) {
                reserved.push(p.name.as_str());
            }
        }
        let ignored = schema
            .columns
            .iter()
            .map(|c| reserved.iter().any(|r| *r == c.name))
            .collect();
        let builders = schema
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(c.ty, capacity))
            .collect();
        let lineage_columns = LINEAGE_COLUMNS.map(|name| index.get(name).copied());
        let partition_columns = cfg
            .partition_by
            .iter()
            .map(|p| index.get(&p.name).copied())
            .collect();
        Self {
            cfg,
            schema: schema.clone(),
            lineage_columns,
            partition_columns,
            index,
            lower,
            committed,
            ignored,
            reserved,
            builders,
            recent_fields: Vec::new(),
            plan: None,
            planning: true,
            planned_rows: 0,
            scanning: true,
            scanned_rows: 0,
            rows: 0,
            capacity,
            errors: Vec::new(),
            event_ms_min: None,
            event_ms_max: None,
        }
    }

    fn run(self, records: &[SourceRecord]) -> Result<Converted> {
        self.run_iter(records.iter().map(|s| (s.shard_id, &s.record)))
    }

    /// [`ChunkConverter::run`], also telling how many rows a plan converted.
    #[cfg(test)]
    fn run_counted(self, records: &[SourceRecord], planned: &mut usize) -> Result<Converted> {
        self.run_counted_scans(records, planned, &mut 0)
    }

    /// [`ChunkConverter::run_counted`], also telling how many of the planned rows [`scan::scan`] read.
    #[cfg(test)]
    fn run_counted_scans(
        mut self,
        records: &[SourceRecord],
        planned: &mut usize,
        scanned: &mut usize,
    ) -> Result<Converted> {
        self.convert_all(records.iter().map(|s| (s.shard_id, &s.record)))?;
        (*planned, *scanned) = (self.planned_rows, self.scanned_rows);
        self.finish()
    }

    /// Convert records (each with its shard) one after another.
    fn run_iter<'r>(
        mut self,
        records: impl Iterator<Item = (ShardId, &'r Record)> + Clone,
    ) -> Result<Converted> {
        self.convert_all(records)?;
        self.finish()
    }

    fn convert_all<'r>(
        &mut self,
        records: impl Iterator<Item = (ShardId, &'r Record)> + Clone,
    ) -> Result<()> {
        // `_shard_id` text, once per shard.
        let mut shard_names: Vec<(ShardId, String)> = Vec::new();
        for (shard_id, _) in records.clone() {
            if !shard_names.iter().any(|(s, _)| *s == shard_id) {
                shard_names.push((shard_id, shard_id.to_string()));
            }
        }
        let mut scratch = Scratch {
            fields: Vec::new(),
            row: Vec::new(),
            slots: Vec::new(),
            shape: Shape::default(),
            planned: Vec::new(),
        };
        for (shard_id, record) in records {
            let shard_name = shard_names
                .iter()
                .find(|(s, _)| *s == shard_id)
                .map_or("", |(_, n)| n.as_str());
            if self.convert_planned(record, shard_name, &mut scratch.planned) {
                continue;
            }
            match self.convert_one(record, shard_name, &mut scratch) {
                // A layout not planned yet (or planned before the schema changed): plan it for the records after.
                Ok(true)
                    if self.planning && self.plan.as_ref().is_none_or(|p| p.keys != scratch.shape.keys) =>
                {
                    self.plan = Some(self.make_plan(&scratch.shape.keys));
                }
                Ok(_) => {}
                Err((kind, message)) => self.errors.push(ErrorRow::new(shard_id, record, kind, message)?),
            }
        }
        Ok(())
    }

    /// The converted rows as one batch, with the errors and the event-time range.
    fn finish(mut self) -> Result<Converted> {
        let mut batches = Vec::new();
        if self.rows > 0 {
            let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(ColumnBuilder::finish).collect();
            batches.push(RecordBatch::try_new(self.schema.arrow(), arrays)?);
        }
        Ok(Converted {
            batches,
            schema: self.schema,
            errors: self.errors,
            event_time_ms_min: self.event_ms_min,
            event_time_ms_max: self.event_ms_max,
        })
    }

    /// The column named `key`, the record's `position`-th field, if there is one.
    fn column_of(&mut self, position: usize, key: &str) -> Option<usize> {
        if let Some((name, col)) = self.recent_fields.get(position)
            && **name == *key
        {
            return Some(*col);
        }
        let col = self.index.get(key).copied()?;
        if position < self.recent_fields.len() {
            self.recent_fields[position] = (key.into(), col);
        } else if position == self.recent_fields.len() {
            self.recent_fields.push((key.into(), col));
        }
        Some(col)
    }

    /// Convert one record; on success its row is appended to the builders and the answer is whether its keys
    /// were unique (then `scratch.shape` holds them). Nothing changes on error.
    fn convert_one<'r>(
        &mut self,
        record: &'r Record,
        shard_name: &'r str,
        scratch: &mut Scratch<'r>,
    ) -> std::result::Result<bool, (ErrorKind, String)> {
        let cfg = self.cfg;
        let unique = parse_object(&record.data, &mut scratch.fields, &mut scratch.shape)?;
        let seq = sequence_long(record).ok_or_else(|| {
            (
                ErrorKind::TypeConflict,
                "sequence number does not fit a long".to_string(),
            )
        })?;
        // Read before the fields' values are moved into cells.
        let field = |name: &str| {
            scratch
                .fields
                .binary_search_by(|(k, _)| k.as_ref().cmp(name))
                .ok()
                .map(|i| &scratch.fields[i].1)
        };
        let event_field_ms = field(&cfg.event_time_field).and_then(Json::time_ms);
        let mut partition_texts: Vec<Option<String>> = Vec::new();
        for p in &cfg.partition_by {
            if let PartitionExpr::Field { field: name } = &p.expr {
                partition_texts.push(field(name).and_then(Json::text));
            }
        }
        let row = &mut scratch.row;
        row.clear();
        let mut arrival_ms = record.arrival_ms;
        let mut topic = None;
        let mut client_id = None;
        // Columns added by this record: only kept if the record turns out good.
        let mut added: Vec<Column> = Vec::new();
        let mut widened: Vec<usize> = Vec::new();
        for (position, (key, value)) in scratch.fields.drain(..).enumerate() {
            if key.starts_with('_') {
                match key.as_ref() {
                    "_topic" | "_client_id" => {
                        let v = value.into_lineage_text().map_err(|other| {
                            (
                                ErrorKind::TypeConflict,
                                format!("lineage field {key} must be a string, not {}", other.kind()),
                            )
                        })?;
                        if key == "_topic" {
                            topic = v;
                        } else {
                            client_id = v;
                        }
                        continue;
                    }
                    "_arrival_time" => {
                        if !matches!(value, Json::Null) {
                            arrival_ms = value.time_ms().ok_or_else(|| {
                                (
                                    ErrorKind::TypeConflict,
                                    "lineage field _arrival_time must be epoch millis or RFC 3339"
                                        .to_string(),
                                )
                            })?;
                        }
                        continue;
                    }
                    _ => {}
                }
            }
            let existing = self.column_of(position, &key);
            let ignored = match existing {
                Some(i) => self.ignored[i],
                None => self.reserved.iter().any(|r| *r == key),
            };
            if ignored {
                continue;
            }
            let Some(cell) = value.into_cell() else {
                continue;
            };
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
            let (col, ty) = match existing {
                Some(i) => (i, self.schema.columns[i].ty),
                // Keys are unique after parsing, so a key is never both new and in `added`.
                None => {
                    if cfg.schema.is_some() {
                        return Err((
                            ErrorKind::SchemaMismatch,
                            format!("field {key} is not in the declared schema"),
                        ));
                    }
                    if let Some(reason) = invalid_column_name(&key) {
                        return Err((ErrorKind::InvalidFieldName, format!("field {key:?}: {reason}")));
                    }
                    if let Some(existing) = self.lower.get(&key.to_lowercase()) {
                        return Err((
                            ErrorKind::InvalidFieldName,
                            format!("field {key:?} differs only in case from column {existing:?}"),
                        ));
                    }
                    let columns = self.schema.columns.len() + added.len();
                    if columns >= cfg.columns_max {
                        return Err((
                            ErrorKind::TooManyColumns,
                            format!(
                                "field {key} would be column {} but the table is limited to {}",
                                columns + 1,
                                cfg.columns_max
                            ),
                        ));
                    }
                    let ty = inferred_type(&cell);
                    added.push(Column {
                        name: key.to_string(),
                        ty,
                    });
                    (columns, ty)
                }
            };
            let cell = match coerce(cell, ty) {
                Ok(c) => c,
                Err(cell) => {
                    // A long column added by this batch (not yet committed) may still widen to double.
                    if ty == ColumnType::Long && col >= self.committed && matches!(cell, Cell::Float(_)) {
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
                let present = self
                    .index
                    .get(&c.name)
                    .is_some_and(|i| row.iter().any(|(col, _)| col == i));
                if !present {
                    return Err((
                        ErrorKind::SchemaMismatch,
                        format!("required field {} is missing or null", c.name),
                    ));
                }
            }
        }
        // Event time: the payload's field, else the arrival time.
        let event_ms = event_field_ms.unwrap_or(arrival_ms);
        // Every column this good row writes must exist: lineage and partition columns are in every schema the
        // delivery accepts (`check_compatible`); their absence is a bug, reported as the record's error.
        let names = LINEAGE_COLUMNS.iter().copied().zip(&self.lineage_columns);
        let partitions = cfg
            .partition_by
            .iter()
            .map(|p| p.name.as_str())
            .zip(&self.partition_columns);
        if let Some((name, _)) = names.chain(partitions).find(|(_, col)| col.is_none()) {
            return Err((
                ErrorKind::SchemaMismatch,
                format!("the table has no column {name} (lineage and partition columns are required)"),
            ));
        }
        let lineage = lineage_cells(topic, client_id, record, shard_name, seq, arrival_ms);
        // The record is good: commit its schema changes (which a plan does not know about).
        if !added.is_empty() || !widened.is_empty() {
            self.plan = None;
        }
        for c in added {
            self.index.insert(c.name.clone(), self.schema.columns.len());
            self.lower.insert(c.name.to_lowercase(), c.name.clone());
            self.ignored.push(false);
            let mut builder = ColumnBuilder::new(c.ty, self.capacity);
            builder.append_nulls(self.rows);
            self.builders.push(builder);
            self.schema.columns.push(c);
        }
        for col in widened {
            self.schema.columns[col].ty = ColumnType::Double;
            self.builders[col].widen_to_double();
        }
        let slots = &mut scratch.slots;
        slots.resize(self.schema.columns.len(), None);
        for (col, cell) in row.drain(..) {
            slots[col] = Some(cell);
        }
        for (col, cell) in self.lineage_columns.iter().zip(lineage) {
            if let (Some(col), Some(cell)) = (col, cell) {
                slots[*col] = Some(cell);
            }
        }
        let event_time = event_time(event_ms);
        let mut texts = partition_texts.into_iter();
        for (p, col) in cfg.partition_by.iter().zip(&self.partition_columns) {
            let cell = match &p.expr {
                PartitionExpr::Field { .. } => texts.next().flatten().map(|t| Cell::Str(Cow::Owned(t))),
                expr => event_partition(expr, event_time),
            };
            if let (Some(col), Some(cell)) = (col, cell) {
                slots[*col] = Some(cell);
            }
        }
        for (builder, slot) in self.builders.iter_mut().zip(slots.iter_mut()) {
            builder.append(slot.take().as_ref());
        }
        self.rows += 1;
        self.event_ms_min = min_opt(self.event_ms_min, Some(event_ms));
        self.event_ms_max = max_opt(self.event_ms_max, Some(event_ms));
        Ok(unique)
    }

    /// The plan for records with these fields (document order, unique) against the current schema; unusable when
    /// the fast path cannot take them (a field without a column, a `Field` partition over a field that is not a
    /// string column, a missing lineage or partition column).
    fn make_plan(&self, keys: &[Box<str>]) -> Plan {
        let cfg = self.cfg;
        let position = |name: &str| keys.iter().position(|k| **k == *name);
        let mut plan = Plan {
            keys: keys.to_vec(),
            key_tokens: keys.iter().map(|k| scan::key_token(k)).collect(),
            usable: false,
            targets: Vec::new(),
            event_field: position(&cfg.event_time_field),
            fill: vec![Fill::Null; self.schema.columns.len()],
            plain_keys: keys.iter().all(|k| scan::plain_key(k)),
            scanned: 0,
            scan_misses: 0,
        };
        let targets: Option<Vec<Target>> = keys
            .iter()
            .map(|key| match key.as_ref() {
                "_topic" => Some(Target::Topic),
                "_client_id" => Some(Target::ClientId),
                "_arrival_time" => Some(Target::Arrival),
                key => match self.index.get(key) {
                    Some(&i) if self.ignored[i] => Some(Target::Ignored),
                    Some(&i) => Some(Target::Column(i, self.schema.columns[i].ty)),
                    None => self.reserved.contains(&key).then_some(Target::Ignored),
                },
            })
            .collect();
        let Some(targets) = targets else {
            return plan;
        };
        // The same order as the general path fills a row: fields, then lineage, then partitions.
        for (pos, target) in targets.iter().enumerate() {
            if let Target::Column(col, _) = target {
                plan.fill[*col] = Fill::Field(pos);
            }
        }
        for (j, col) in self.lineage_columns.iter().enumerate() {
            let Some(col) = col else {
                return plan;
            };
            plan.fill[*col] = Fill::Lineage(j);
        }
        for (k, (p, col)) in cfg.partition_by.iter().zip(&self.partition_columns).enumerate() {
            let Some(col) = col else {
                return plan;
            };
            plan.fill[*col] = match &p.expr {
                PartitionExpr::Field { field } => match position(field) {
                    None => Fill::Null,
                    // The partition's text is the string itself.
                    Some(pos) if matches!(targets[pos], Target::Column(_, ColumnType::String)) => {
                        Fill::PartitionField(pos)
                    }
                    Some(_) => return plan,
                },
                _ => Fill::Partition(k),
            };
        }
        plan.targets = targets;
        plan.usable = true;
        plan
    }

    /// Convert a record laid out as the current plan and append its row. `false`, with nothing changed, when there
    /// is no usable plan or the record needs anything the plan does not cover: the general path then takes it.
    fn convert_planned<'r>(
        &mut self,
        record: &'r Record,
        shard_name: &'r str,
        cells: &mut Vec<Option<Cell<'r>>>,
    ) -> bool {
        let Some(plan) = self.plan.as_mut().filter(|p| p.usable) else {
            return false;
        };
        let Some(seq) = sequence_long(record) else {
            return false;
        };
        cells.clear();
        cells.resize(plan.keys.len(), None);
        let mut out = PlannedFields::default();
        let value_bytes_max = self.cfg.value_bytes_max;
        let tried = self.scanning && plan.scan_worthwhile();
        let scanned = tried && scan::scan(plan, &record.data, value_bytes_max, cells, &mut out).is_some();
        if tried {
            if scanned {
                plan.scanned += 1;
                self.scanned_rows += 1;
            } else {
                plan.scan_misses += 1;
            }
        }
        if !scanned {
            if tried {
                cells.clear();
                cells.resize(plan.keys.len(), None);
                out = PlannedFields::default();
            }
            // One UTF-8 check of the whole payload: a `str` parser then takes its strings as they are, where a bytes
            // parser checks each string on its own (more, shorter checks: slower on these records).
            let Ok(text) = std::str::from_utf8(&record.data) else {
                return false;
            };
            let mut de = serde_json::Deserializer::from_str(text);
            let seed = Planned {
                plan,
                value_bytes_max,
                cells,
                out: &mut out,
            };
            if seed.deserialize(&mut de).and_then(|()| de.end()).is_err() {
                return false;
            }
        }
        let arrival_ms = out.arrival_ms.unwrap_or(record.arrival_ms);
        let event_ms = out.event_ms.unwrap_or(arrival_ms);
        let lineage = lineage_cells(out.topic, out.client_id, record, shard_name, seq, arrival_ms);
        let event_time = event_time(event_ms);
        for (builder, fill) in self.builders.iter_mut().zip(&plan.fill) {
            let computed;
            let cell = match *fill {
                Fill::Field(pos) | Fill::PartitionField(pos) => cells[pos].as_ref(),
                Fill::Lineage(j) => lineage[j].as_ref(),
                Fill::Partition(k) => {
                    computed = event_partition(&self.cfg.partition_by[k].expr, event_time);
                    computed.as_ref()
                }
                Fill::Null => None,
            };
            builder.append(cell);
        }
        self.rows += 1;
        self.planned_rows += 1;
        self.event_ms_min = min_opt(self.event_ms_min, Some(event_ms));
        self.event_ms_max = max_opt(self.event_ms_max, Some(event_ms));
        true
    }
}

/// A record's `_sequence_number` cell value: its sequence number, if it fits a long.
fn sequence_long(record: &Record) -> Option<i64> {
    record
        .sequence_number
        .to_u64()
        .ok()
        .and_then(|s| i64::try_from(s).ok())
}

/// The lineage cells of a good row, in [`LINEAGE_COLUMNS`] order.
fn lineage_cells<'r>(
    topic: Option<Cow<'r, str>>,
    client_id: Option<Cow<'r, str>>,
    record: &'r Record,
    shard_name: &'r str,
    seq: i64,
    arrival_ms: i64,
) -> [Option<Cell<'r>>; 6] {
    [
        topic.map(Cell::Str),
        client_id.map(Cell::Str),
        Some(Cell::Str(Cow::Borrowed(record.partition_key.as_str()))),
        Some(Cell::Str(Cow::Borrowed(shard_name))),
        Some(Cell::Int(seq)),
        Some(Cell::Int(arrival_ms.saturating_mul(1_000))),
    ]
}

/// Event time in epoch millis, as a UTC time can hold it (millis out of chrono's range become the epoch). Every UTC
/// day is 86,400 s long, so dates and hours follow by division, with no calendar arithmetic per record.
fn event_time(event_ms: i64) -> i64 {
    const RANGE: std::ops::RangeInclusive<i64> =
        DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis();
    if RANGE.contains(&event_ms) { event_ms } else { 0 }
}

/// The value of an event-time partition expression (`None` for a field's) for an [`event_time`].
fn event_partition(expr: &PartitionExpr, event_time: i64) -> Option<Cell<'static>> {
    match expr {
        PartitionExpr::EventDate => Some(Cell::Int(event_time.div_euclid(86_400_000))),
        PartitionExpr::EventHour => Some(Cell::Int(event_time.div_euclid(3_600_000).rem_euclid(24))),
        PartitionExpr::Field { .. } => None,
    }
}

/// Event times outside years 1–9999 are not times.
const TIME_MS_RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// Epoch millis from a JSON number (millis) or an RFC 3339 string.
pub fn time_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => rfc3339_ms(s),
        _ => None,
    }
    .filter(|ms| TIME_MS_RANGE.contains(ms))
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

fn inferred_type(c: &Cell) -> ColumnType {
    match c {
        Cell::Bool(_) => ColumnType::Boolean,
        Cell::Int(_) => ColumnType::Long,
        Cell::Float(_) => ColumnType::Double,
        Cell::Str(_) => ColumnType::String,
    }
}

/// Fit a cell into a column type; hands the cell back when it does not fit.
#[inline]
fn coerce(cell: Cell<'_>, ty: ColumnType) -> std::result::Result<Cell<'_>, Cell<'_>> {
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
            Cell::Str(s) => match rfc3339_ms(s).filter(|ms| TIME_MS_RANGE.contains(ms)) {
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
        (_, c) => Err(c),
    }
}

fn cell_kind(c: &Cell) -> &'static str {
    match c {
        Cell::Bool(_) => "a boolean",
        Cell::Int(_) => "an integer",
        Cell::Float(_) => "a fractional number",
        Cell::Str(_) => "a string",
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
    let n = rows.len();
    let mut raw = BinaryBuilder::with_capacity(n, rows.iter().map(|e| e.raw.len()).sum());
    let mut kind = StringBuilder::with_capacity(n, 24 * n);
    let mut message = StringBuilder::with_capacity(n, 64 * n);
    let mut partition_key = StringBuilder::with_capacity(n, 16 * n);
    let mut shard = StringBuilder::with_capacity(n, 16 * n);
    let mut sequence_number = Int64Builder::with_capacity(n);
    let mut arrival = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut error_time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for e in rows {
        raw.append_value(&e.raw);
        kind.append_value(e.kind.as_str());
        message.append_value(&e.message);
        partition_key.append_value(&e.partition_key);
        shard.append_value(e.shard_id.to_string());
        sequence_number.append_value(e.sequence_number as i64);
        arrival.append_value(e.arrival_ms.saturating_mul(1_000));
        error_time.append_value(now_ms.saturating_mul(1_000));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(raw.finish()),
        Arc::new(kind.finish()),
        Arc::new(message.finish()),
        Arc::new(partition_key.finish()),
        Arc::new(shard.finish()),
        Arc::new(sequence_number.finish()),
        Arc::new(arrival.finish()),
        Arc::new(error_time.finish()),
    ];
    Ok(RecordBatch::try_new(errors_schema().arrow(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{Float64Type, Int64Type};
    use freshet_storage::SequenceNumber;

    /// Event dates and hours by division agree with chrono's calendar, out-of-range times included.
    #[test]
    fn event_partitions_are_the_utc_date_and_hour() {
        use chrono::Timelike;
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        for ms in [
            0,
            -1,
            1,
            3_599_999,
            3_600_000,
            86_399_999,
            86_400_000,
            -86_400_000,
            -86_400_001,
            1_700_000_000_000,
            *TIME_MS_RANGE.start(),
            *TIME_MS_RANGE.end(),
            i64::MIN,
            i64::MAX,
        ] {
            let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
            let (date, hour) = (
                event_partition(&PartitionExpr::EventDate, event_time(ms)),
                event_partition(&PartitionExpr::EventHour, event_time(ms)),
            );
            assert_eq!(date, Some(Cell::Int((t.date_naive() - epoch).num_days())), "{ms}");
            assert_eq!(hour, Some(Cell::Int(i64::from(t.hour()))), "{ms}");
        }
    }

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
        let b = out.batch().unwrap().unwrap();
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

    #[test]
    fn parsing_matches_serde_json_value() {
        let (c, s) = converter();
        let out = c
            .convert(
                &s,
                &[
                    rec(
                        0,
                        1,
                        r#"{"z": 1, "a": "x", "z": 2, "k\u0065y": "v\n", "o": {"b": 1, "a": [1, 2.5]},
                            "big": 18446744073709551615, "n": null}"#,
                    ),
                    rec(0, 2, "[1, x]"),
                    rec(0, 3, "[1, 2]"),
                    rec(0, 4, r#""text""#),
                    rec(0, 5, r#"{"a": "x"} trailing"#),
                ],
            )
            .unwrap();
        let errors: Vec<_> = out
            .errors
            .iter()
            .map(|e| (e.sequence_number, e.kind, e.message.as_str()))
            .collect();
        assert_eq!(errors[0].1, ErrorKind::NotJson);
        assert_eq!(
            errors[1],
            (
                3,
                ErrorKind::NotObject,
                "payload is JSON an array but must be an object"
            )
        );
        assert_eq!(
            errors[2],
            (
                4,
                ErrorKind::NotObject,
                "payload is JSON a string but must be an object"
            )
        );
        assert_eq!(errors[3].1, ErrorKind::NotJson);
        // New columns in key order (as a serde_json map iterates), the last of duplicate keys kept, null absent.
        let added: Vec<_> = out.schema.columns[s.columns.len()..]
            .iter()
            .map(|c| (c.name.as_str(), c.ty))
            .collect();
        assert_eq!(
            added,
            vec![
                ("a", ColumnType::String),
                ("big", ColumnType::Double),
                ("key", ColumnType::String),
                ("o", ColumnType::String),
                ("z", ColumnType::Long),
            ]
        );
        let b = out.batch().unwrap().unwrap();
        assert_eq!(
            b.column_by_name("z")
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            2
        );
        assert_eq!(
            b.column_by_name("key").unwrap().as_string::<i32>().value(0),
            "v\n"
        );
        assert_eq!(
            b.column_by_name("o").unwrap().as_string::<i32>().value(0),
            r#"{"a":[1,2.5],"b":1}"#
        );
        assert_eq!(
            b.column_by_name("big")
                .unwrap()
                .as_primitive::<Float64Type>()
                .value(0),
            18_446_744_073_709_551_615u64 as f64
        );
    }

    /// Chunks converted on threads give exactly the result of one pass, also when a later chunk adds columns
    /// or widens a column an earlier chunk added.
    /// Records around one layout, each variant something the planned path must hand to the general path (or
    /// take exactly as the general path would): both paths give the same rows, errors, schema and times.
    #[test]
    fn planned_records_convert_like_the_general_path() {
        use crate::config::{DeclaredColumn, PartitionColumn};
        let base = |i: u64| {
            format!(
                r#"{{"ts": {}, "dev": "d{}", "n": {i}, "ok": true, "tags": {{"b": 1, "a": [2]}}, "_topic": "t/{i}", "_client_id": "c", "_arrival_time": 1700000000123, "temp": 20.5}}"#,
                1_700_000_000_000 + 3_600_000 * i,
                i % 3
            )
        };
        let variants: Vec<Box<dyn Fn(u64) -> Vec<u8>>> = vec![
            Box::new(|i| base(i).into_bytes()),
            Box::new(|i| base(i).replace("20.5", &i.to_string()).into_bytes()),
            Box::new(|i| base(i).replace("20.5", "null").into_bytes()),
            Box::new(|i| {
                base(i)
                    .replace(r#""c""#, "null")
                    .replace("1700000000123", "null")
                    .into_bytes()
            }),
            Box::new(|i| base(i).replace(r#""n": "#, r#""n": 0.5, "m": "#).into_bytes()),
            Box::new(|i| base(i).replace(r#""ok": true, "#, "").into_bytes()),
            Box::new(|i| base(i).replace(r#", "temp": 20.5"#, "").into_bytes()),
            Box::new(|i| {
                base(i)
                    .replace(r#""ok": true, "#, r#""ok": true, "new": 1, "#)
                    .into_bytes()
            }),
            Box::new(|i| {
                base(i)
                    .replace(r#""dev": "#, r#""dev": "x", "dev": "#)
                    .into_bytes()
            }),
            Box::new(|i| {
                base(i)
                    .replace(r#""ok": true, "tags""#, r#""tags": 1, "ok""#)
                    .into_bytes()
            }),
            Box::new(|i| base(i).replace(r#""t/"#, r#""t\"/"#).into_bytes()),
            Box::new(|i| {
                base(i)
                    .replace(r#""d"#, &format!(r#""{}"#, "long".repeat(20)))
                    .into_bytes()
            }),
            Box::new(|i| {
                base(i)
                    .replace(r#""dev": "d"#, r#""dev": {"z": 1}, "x": "d"#)
                    .into_bytes()
            }),
            Box::new(|i| {
                base(i)
                    .replace(r#""dev": "d"#, r#""dev": 7, "x": "d"#)
                    .into_bytes()
            }),
            Box::new(|i| base(i).replace(r#""t/"#, r#"5, "y": "t/"#).into_bytes()),
            Box::new(|i| base(i).replace("1700000000123", r#""later""#).into_bytes()),
            Box::new(|i| {
                base(i)
                    .replace("1700000000123", r#""2024-05-01T10:00:00Z""#)
                    .into_bytes()
            }),
            Box::new(|i| {
                base(i)
                    .replace(r#""ts": "#, r#""ts": "2024-05-01T10:00:00Z", "z": "#)
                    .into_bytes()
            }),
            Box::new(|i| format!("{} x", base(i)).into_bytes()),
            // Not UTF-8: `#` becomes the byte 0xff.
            Box::new(|i| {
                let b = base(i).replace(r#""c""#, "\"#\"").into_bytes();
                b.into_iter().map(|b| if b == b'#' { 0xff } else { b }).collect()
            }),
            Box::new(|i| format!("[{}]", base(i)).into_bytes()),
            Box::new(|i| base(i).replace(r#""ok": true"#, r#""ok": 1"#).into_bytes()),
            Box::new(|i| base(i).replace("20.5", "18446744073709551615").into_bytes()),
            Box::new(|i| {
                base(i)
                    .replace(&format!(r#""n": {i}"#), r#""n": 18446744073709551615"#)
                    .into_bytes()
            }),
        ];
        // A flat layout that the scanner reads, and what it must leave to the serde path, or read exactly as it
        // would: whitespace, number forms, escapes, nulls, keys out of order.
        let flat = |i: u64| {
            format!(
                r#"{{"ts": {}, "dev": "d{}", "n": {i}, "ok": true, "_topic": "t/{i}", "_client_id": "c", "_arrival_time": 1700000000123, "temp": 20.5}}"#,
                1_700_000_000_000 + 3_600_000 * i,
                i % 3
            )
        };
        let temp = move |to: &'static str| move |i: u64| flat(i).replace("20.5", to);
        let n = move |to: &'static str| {
            move |i: u64| flat(i).replace(&format!(r#""n": {i}"#), &format!(r#""n": {to}"#))
        };
        let flat_variants: Vec<Box<dyn Fn(u64) -> String>> = vec![
            Box::new(flat),
            Box::new(move |i| flat(i).replace(", ", ",").replace(": ", ":")),
            Box::new(move |i| format!(" \n{}\t\r ", flat(i).replace(", ", " ,\n\t").replace(": ", " : "))),
            Box::new(move |i| flat(i).replace("20.5", &i.to_string())),
            Box::new(temp("-0")),
            Box::new(temp("-0.0")),
            Box::new(temp("1e3")),
            Box::new(temp("2.5E-3")),
            Box::new(temp("29.912299999999998")),
            Box::new(temp("1e400")),
            Box::new(temp("01")),
            Box::new(temp("\"20.5\"")),
            Box::new(n("-0")),
            Box::new(n("3.0")),
            Box::new(n("3.5")),
            Box::new(n("1234567890123456789")),
            Box::new(n("-12")),
            Box::new(move |i| flat(i).replace(r#""dev": "d"#, r#""dev": "\u0041d"#)),
            Box::new(move |i| flat(i).replace(r#""dev": "d"#, "\"dev\": \"\u{fc}n\u{ef}")),
            Box::new(move |i| flat(i).replace(r#""dev": "d"#, &format!(r#""dev": "{}"#, "long".repeat(20)))),
            Box::new(move |i| flat(i).replace("true", "false")),
            Box::new(move |i| flat(i).replace(r#""t/"#, "null, \"x\": \"")),
            Box::new(move |i| flat(i).replace(r#""c""#, "null")),
            Box::new(move |i| flat(i).replace("1700000000123", r#""later""#)),
            Box::new(move |i| {
                flat(i).replace(
                    &format!(r#""ts": {}"#, 1_700_000_000_000 + 3_600_000 * i),
                    r#""ts": "2024-05-01T10:00:00Z""#,
                )
            }),
            Box::new(move |i| {
                flat(i).replace(
                    &format!(r#""ts": {}"#, 1_700_000_000_000 + 3_600_000 * i),
                    r#""ts": 1e20"#,
                )
            }),
            Box::new(move |i| format!("{} x", flat(i))),
            Box::new(move |i| flat(i).replace(r#""ok": true, "#, "")),
            Box::new(move |i| {
                flat(i)
                    .replace(r#""ok": true, "_topic""#, r#""_topic""#)
                    .replace(r#""temp""#, r#""ok": true, "temp""#)
            }),
        ];
        let records: Vec<SourceRecord> = (0..800u64)
            .map(|i| {
                // Mostly the base layouts, so that plans are made and used between the variants.
                let pick = |n: usize| if i % 3 == 0 { 0 } else { (i as usize * 7) % n };
                let data = if i < 400 {
                    variants[pick(variants.len())](i)
                } else {
                    flat_variants[pick(flat_variants.len())](i).into_bytes()
                };
                let seq = if i == 200 { u64::MAX } else { i };
                let mut r = rec((i % 4) as u32, seq, "");
                r.record.data = bytes::Bytes::from(data);
                r
            })
            .collect();
        let event_hour = PartitionColumn {
            name: "hour".into(),
            expr: PartitionExpr::EventHour,
        };
        let by_dev = PartitionColumn {
            name: "dev".into(),
            expr: PartitionExpr::Field { field: "dev".into() },
        };
        let mut configs = Vec::new();
        let mut inferred = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        inferred.value_bytes_max = 64;
        configs.push(inferred.clone());
        inferred.partition_by.push(event_hour);
        inferred.partition_by.push(by_dev.clone());
        configs.push(inferred.clone());
        inferred.partition_by = vec![PartitionColumn {
            name: "p".into(),
            expr: PartitionExpr::Field { field: "n".into() },
        }];
        configs.push(inferred);
        let mut declared = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        declared.partition_by.push(by_dev);
        declared.schema = Some(
            [
                ("ts", ColumnType::Timestamp, false),
                ("dev", ColumnType::String, true),
            ]
            .into_iter()
            .chain([("temp", ColumnType::Double, false), ("n", ColumnType::Long, true)])
            .chain([
                ("ok", ColumnType::Boolean, true),
                ("tags", ColumnType::String, true),
            ])
            .map(|(name, data_type, nullable)| DeclaredColumn {
                name: name.into(),
                data_type,
                nullable,
            })
            .collect(),
        );
        configs.push(declared);
        for (i, cfg) in configs.iter().enumerate() {
            let schema = TableSchema::initial(cfg);
            let convert = |planning: bool, scanning: bool, schema: &TableSchema| {
                let mut c = ChunkConverter::new(cfg, schema, schema.columns.len(), records.len());
                (c.planning, c.scanning) = (planning, scanning);
                let (rows, planned, scanned) = (records.len(), &mut 0, &mut 0);
                let out = c.run_counted_scans(&records, planned, scanned).unwrap();
                assert!(out.rows() + out.errors.len() == rows);
                (out, *planned, *scanned)
            };
            for schema in [schema.clone(), convert(false, false, &schema).0.schema] {
                let (general, none, _) = convert(false, false, &schema);
                let (planned, used, not_scanned) = convert(true, false, &schema);
                let (scanned, used_too, read) = convert(true, true, &schema);
                assert_eq!((none, not_scanned), (0, 0));
                // Config 2 partitions by a long field's text, which a plan leaves to the general path.
                if i == 2 {
                    assert_eq!(used, 0, "config {i}");
                } else {
                    assert!(used > records.len() / 4, "config {i}: {used} planned rows");
                    // The first layout has a nested field: the flat one is read by the scanner.
                    assert!(
                        used_too >= used && read > records.len() / 6,
                        "config {i}: {read} scanned rows"
                    );
                }
                assert!(general.rows() > 200 && general.errors.len() > 40, "config {i}");
                test_records::assert_same(&planned, &general, &format!("config {i}"));
                test_records::assert_same(&scanned, &general, &format!("config {i}, scanned"));
            }
        }
    }

    /// A layout whose records the scanner keeps giving up on (an escape in every record) stops being scanned: each
    /// such record would otherwise be read twice. A new plan tries again.
    #[test]
    fn the_scanner_stops_trying_a_layout_it_cannot_read() {
        let cfg = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        let schema = TableSchema::initial(&cfg);
        let records: Vec<SourceRecord> = (0..1_000u64)
            .map(|i| rec(0, i, &format!(r#"{{"a": {i}, "b": "x\"{i}"}}"#)))
            .chain((1_000..1_100u64).map(|i| rec(0, i, &format!(r#"{{"a": {i}, "c": "y{i}"}}"#))))
            .collect();
        let mut c = ChunkConverter::new(&cfg, &schema, schema.columns.len(), records.len());
        c.convert_all(records.iter().map(|s| (s.shard_id, &s.record)))
            .unwrap();
        // The first record of each layout makes its plan: 999 and 99 planned records.
        assert_eq!(c.planned_rows, 999 + 99);
        let plan = c.plan.as_ref().unwrap();
        assert_eq!((plan.scanned, plan.scan_misses), (99, 0));
        assert_eq!(c.scanned_rows, 99);
        let out = c.finish().unwrap();
        assert_eq!((out.rows(), out.errors.len()), (1_100, 0));
        // The escaped layout's misses, before it stopped: counted through a converter that only sees it.
        let mut c = ChunkConverter::new(&cfg, &schema, schema.columns.len(), 1_000);
        c.convert_all(records[..1_000].iter().map(|s| (s.shard_id, &s.record)))
            .unwrap();
        let plan = c.plan.as_ref().unwrap();
        assert_eq!((plan.scanned, plan.scan_misses, c.planned_rows), (0, 17, 999));
    }

    /// A string column's bytes are reserved from its first value, at most a bounded guess a row: a first value near
    /// the size limit in a part of many rows converts (reserving 1.5 MiB for each of 100,000 rows would not).
    #[test]
    fn a_long_first_string_reserves_a_bounded_guess() {
        let cfg = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        let schema = TableSchema::initial(&cfg);
        let long = "x".repeat(cfg.value_bytes_max);
        let records = [
            rec(0, 1, &format!(r#"{{"s": "{long}"}}"#)),
            rec(0, 2, r#"{"s": "short"}"#),
        ];
        let out = ChunkConverter::new(&cfg, &schema, schema.columns.len(), 100_000)
            .run(&records)
            .unwrap();
        assert_eq!(out.rows(), 2);
        let batch = &out.batches[0];
        let s = batch.column_by_name("s").unwrap().as_string::<i32>();
        assert_eq!((s.value(0).len(), s.value(1)), (long.len(), "short"));
    }

    /// A layout whose records change the schema is planned again: a field that was only null gets its column, a
    /// new long column widens to double.
    #[test]
    fn layouts_are_planned_again_after_schema_changes() {
        let cfg = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        let schema = TableSchema::initial(&cfg);
        let records: Vec<SourceRecord> = (0..10u64)
            .map(|i| {
                let a = match i {
                    0 => "null".to_string(),
                    4 => "4.5".to_string(),
                    i if i > 4 => format!("{i}.25"),
                    i => i.to_string(),
                };
                rec(0, i, &format!(r#"{{"a": {a}, "b": "x"}}"#))
            })
            .collect();
        let mut planned = 0;
        let out = ChunkConverter::new(&cfg, &schema, schema.columns.len(), records.len())
            .run_counted(&records, &mut planned)
            .unwrap();
        // Record 0 has no column for `a`, 1 adds it, 4 widens it: the rest are planned.
        assert_eq!(planned, 7);
        let a = out.schema.columns.iter().find(|c| c.name == "a").unwrap();
        assert_eq!(a.ty, ColumnType::Double);
        assert_eq!(out.rows(), 10);
    }

    #[test]
    fn chunks_convert_like_one_pass() {
        let (cfg, s) = test_records::config();
        let c = Converter::new(cfg);
        let records = test_records::mixed(60);
        let one = c.convert_in(&s, &records, 1).unwrap();
        assert!(one.rows() > 20 && one.errors.len() > 20, "{} rows", one.rows());
        assert_eq!(
            one.schema.columns.iter().find(|c| c.name == "w").unwrap().ty,
            ColumnType::Double
        );
        for threads in 2..=7 {
            let many = c.convert_in(&s, &records, threads).unwrap();
            test_records::assert_same(&many, &one, &format!("{threads} threads"));
        }
        // Without schema changes too (the fast path: every chunk's result stands).
        let steady = c.convert_in(&one.schema, &records, 1).unwrap();
        let parallel = c.convert_in(&one.schema, &records, 3).unwrap();
        assert_eq!(steady.batch().unwrap(), parallel.batch().unwrap());
        assert_eq!(steady.errors, parallel.errors);
    }

    /// Remembering the last record's keys gives the fields a fresh sort gives: same keys in the same order,
    /// another order, other keys, fewer keys, duplicate keys (the last one wins), escaped keys, invalid UTF-8.
    #[test]
    fn remembered_shapes_sort_like_a_fresh_parse() {
        let payloads: Vec<&[u8]> = vec![
            br#"{"b": 1, "a": 2, "d": 3, "c": 4}"#,
            br#"{"b": 5, "a": 6, "d": 7, "c": 8}"#,
            br#"{"a": 1, "b": 2, "c": 3, "d": 4}"#,
            br#"{"d": 1, "c": 2, "b": 3, "a": 4, "e": 5}"#,
            br#"{"d": 9, "c": 8, "b": 7, "a": 6, "e": 5}"#,
            br#"{"d": 1, "c": 2, "d": 3, "a": 4, "e": 5}"#,
            br#"{"d": 1, "c": 2, "b": 3, "a": 4, "e": 5}"#,
            br#"{"z": "\u00e9", "y\"": [1, {"k": 2}], "x": null}"#,
            br#"{"z": "\u00e9", "y\"": [1, {"k": 2}], "x": null}"#,
            b"{\"z\": \"\xff\"}",
            br#"{"only": true}"#,
            br#"{}"#,
            br#"[1, 2]"#,
            br#"{"b": 5, "a": 6, "d": 7, "c": 8}"#,
        ];
        let show = |r: std::result::Result<bool, (ErrorKind, String)>, f: &[(Cow<str>, Json)]| {
            format!("{r:?} {f:?}")
        };
        let mut remembered = Shape::default();
        let mut fields = Vec::new();
        for p in payloads {
            let got = parse_object(p, &mut fields, &mut remembered);
            let got = show(got, &fields);
            let mut fresh = Vec::new();
            let want = parse_object(p, &mut fresh, &mut Shape::default());
            let want = show(want, &fresh);
            assert_eq!(got, want, "{}", String::from_utf8_lossy(p));
        }
        // And the order is the sorted one.
        parse_object(
            br#"{"d": 1, "c": 2, "b": 3, "a": 4, "e": 5}"#,
            &mut fields,
            &mut remembered,
        )
        .unwrap();
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e"]);
    }
}

/// Records and a delivery config for tests of conversion order (here and in `staging`).
#[cfg(test)]
pub(crate) mod test_records {
    use super::*;
    use crate::config::PartitionColumn;
    use freshet_storage::SequenceNumber;

    /// Two conversions gave the same schema, rows, errors and event times.
    pub(crate) fn assert_same(a: &Converted, b: &Converted, what: &str) {
        assert_eq!(a.schema, b.schema, "{what}");
        assert_eq!(a.batch().unwrap(), b.batch().unwrap(), "{what}");
        assert_eq!(a.errors, b.errors, "{what}");
        assert_eq!(
            (a.event_time_ms_min, a.event_time_ms_max),
            (b.event_time_ms_min, b.event_time_ms_max),
            "{what}"
        );
    }

    /// A delivery partitioned by the payload's `dev`, and a committed schema with a `long` column `n`.
    pub(crate) fn config() -> (Arc<DeliveryConfig>, TableSchema) {
        let mut cfg = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        cfg.partition_by.push(PartitionColumn {
            name: "dev".into(),
            expr: PartitionExpr::Field { field: "dev".into() },
        });
        let cfg = Arc::new(cfg);
        let mut committed = TableSchema::initial(&cfg);
        committed.columns.push(Column {
            name: "n".into(),
            ty: ColumnType::Long,
        });
        (cfg, committed)
    }

    /// `n` records (n ≥ 10) that add columns, widen a new long column to double (from the middle on), conflict
    /// with the committed column, are not JSON, or carry nested values, escapes and lineage; on 3 shards, with
    /// arrival times that increase.
    pub(crate) fn mixed(n: u64) -> Vec<SourceRecord> {
        (0..n)
            .map(|i| {
                let data = match i % 6 {
                    0 => format!(
                        r#"{{"ts": {}, "n": {i}, "dev": "d{}"}}"#,
                        86_400_000 * (i % 3),
                        i % 2
                    ),
                    1 => format!(r#"{{"n": "bad{i}"}}"#),
                    2 if i % 4 == 0 => "not json".to_string(),
                    2 => format!(r#"{{"t": {i}, "dev": "d{i}"}}"#),
                    3 if i < n / 2 => format!(r#"{{"w": {i}, "ts": "1970-01-0{}T00:00:00Z"}}"#, 1 + i % 5),
                    3 => format!(r#"{{"w": {i}.5}}"#),
                    4 => format!(r#"{{"late_{}": true, "tags": {{"i": {i}}}}}"#, i / (n / 5)),
                    _ => format!(r#"{{"esc\"aped": "x\"{i}", "_topic": "t/{i}", "dev": {i}}}"#),
                };
                SourceRecord {
                    shard_id: ShardId((i % 3) as u32),
                    record: Record {
                        sequence_number: SequenceNumber::from_u64(i),
                        partition_key: format!("pk{}", i % 5),
                        data: bytes::Bytes::from(data),
                        arrival_ms: 1_700_000_000_000 + i as i64,
                    },
                }
            })
            .collect()
    }
}
