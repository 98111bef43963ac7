//! Result formats: JSON (the `/v1/sql` contract), CSV, Arrow IPC stream, Parquet, and a pretty text table.
//!
//! JSON is `{"columns":[{"name":..,"type":..}],"rows":[{..},..]}`: `type` is the Arrow data type as Arrow displays it
//! (`Int64`, `Float64`, `Utf8`, `Timestamp(µs, "UTC")`, ...; see [`type_name`]); every row has every column (nulls are `null`);
//! timestamps and dates are ISO 8601 strings; nested types are JSON objects and arrays.

use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::{DataType, SchemaRef};
use deltalake::arrow::json::writer::JsonArray;
use deltalake::parquet::arrow::ArrowWriter;

use crate::error::{QueryError, Result};

/// The rows a query returned, with their schema (known even when there are no rows).
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A result format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    ArrowIpc,
    Parquet,
}

impl Format {
    pub const ALL: [Format; 4] = [Self::Json, Self::Csv, Self::ArrowIpc, Self::Parquet];

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv",
            Self::ArrowIpc => "application/vnd.apache.arrow.stream",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The format an HTTP `Accept` header asks for: the first listed type we serve; JSON when the header is absent
    /// or accepts anything.
    pub fn from_accept(accept: Option<&str>) -> Result<Self> {
        let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
            return Ok(Self::Json);
        };
        for item in accept.split(',') {
            let media = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if matches!(media.as_str(), "*/*" | "application/*") {
                return Ok(Self::Json);
            }
            if let Some(format) = Self::ALL.into_iter().find(|f| f.content_type() == media) {
                return Ok(format);
            }
        }
        Err(QueryError::NotAcceptable(format!(
            "Accept {accept:?}; results come as {}",
            Self::ALL.map(Self::content_type).join(", ")
        )))
    }
}

/// The JSON `type` of a column: Arrow's name of its logical type, so that storage encodings do not leak:
/// dictionary-encoded columns are named after their values, `Utf8View`/`LargeUtf8` are `Utf8`, `BinaryView`/
/// `LargeBinary` are `Binary`.
pub fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Dictionary(_, values) => type_name(values),
        DataType::Utf8View | DataType::LargeUtf8 => "Utf8".into(),
        DataType::BinaryView | DataType::LargeBinary => "Binary".into(),
        other => other.to_string(),
    }
}

/// Encode a whole result in `format`.
pub fn encode(result: &QueryResult, format: Format) -> Result<Vec<u8>> {
    let internal = |e: &dyn std::fmt::Display| QueryError::Internal(format!("encoding {format:?}: {e}"));
    let mut out = Vec::new();
    match format {
        Format::Json => {
            let columns: Vec<serde_json::Value> = result
                .schema
                .fields()
                .iter()
                .map(|f| serde_json::json!({"name": f.name(), "type": type_name(f.data_type())}))
                .collect();
            out.extend_from_slice(b"{\"columns\":");
            serde_json::to_writer(&mut out, &columns).map_err(|e| internal(&e))?;
            out.extend_from_slice(b",\"rows\":");
            if result.num_rows() == 0 {
                out.extend_from_slice(b"[]");
            } else {
                let mut writer = deltalake::arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, JsonArray>(&mut out);
                for batch in &result.batches {
                    writer.write(batch).map_err(|e| internal(&e))?;
                }
                writer.finish().map_err(|e| internal(&e))?;
            }
            out.push(b'}');
        }
        Format::Csv => {
            let mut writer = deltalake::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if result.batches.is_empty() {
                writer
                    .write(&RecordBatch::new_empty(result.schema.clone()))
                    .map_err(|e| internal(&e))?;
            }
            for batch in &result.batches {
                writer.write(batch).map_err(|e| internal(&e))?;
            }
        }
        Format::ArrowIpc => {
            let mut writer = deltalake::arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)
                .map_err(|e| internal(&e))?;
            for batch in &result.batches {
                writer.write(batch).map_err(|e| internal(&e))?;
            }
            writer.finish().map_err(|e| internal(&e))?;
        }
        Format::Parquet => {
            let mut writer =
                ArrowWriter::try_new(&mut out, result.schema.clone(), None).map_err(|e| internal(&e))?;
            for batch in &result.batches {
                writer.write(batch).map_err(|e| internal(&e))?;
            }
            writer.close().map_err(|e| internal(&e))?;
        }
    }
    Ok(out)
}

/// A result as a text table (Arrow's pretty printer), header included even when there are no rows.
pub fn pretty(result: &QueryResult) -> Result<String> {
    deltalake::arrow::util::pretty::pretty_format_batches_with_schema(result.schema.clone(), &result.batches)
        .map(|table| table.to_string())
        .map_err(|e| QueryError::Internal(format!("formatting a table: {e}")))
}

/// Decode an Arrow IPC stream (what `/v1/sql` answers for `application/vnd.apache.arrow.stream`).
pub fn decode_arrow_ipc(bytes: &[u8]) -> Result<QueryResult> {
    let reader = deltalake::arrow::ipc::reader::StreamReader::try_new(bytes, None)
        .map_err(|e| QueryError::Internal(format!("reading an Arrow IPC stream: {e}")))?;
    let schema: SchemaRef = Arc::clone(&reader.schema());
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QueryError::Internal(format!("reading an Arrow IPC stream: {e}")))?;
    Ok(QueryResult { schema, batches })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_first_served_type() {
        assert_eq!(Format::from_accept(None).unwrap(), Format::Json);
        assert_eq!(Format::from_accept(Some("*/*")).unwrap(), Format::Json);
        assert_eq!(
            Format::from_accept(Some("text/html, text/csv;q=0.9")).unwrap(),
            Format::Csv
        );
        assert_eq!(
            Format::from_accept(Some("application/vnd.apache.parquet")).unwrap(),
            Format::Parquet
        );
        let e = Format::from_accept(Some("text/html")).unwrap_err();
        assert_eq!(e.http_status(), 406);
    }
}
