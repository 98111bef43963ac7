//! Optional SQL transform over each buffered batch (DataFusion): filter, enrich, reshape before the commit.
//!
//! # Contract
//!
//! - The converted rows (lineage, data and partition columns) are the table `batch`; the configured query's result
//!   is what gets committed. Rows it filters out are dropped on purpose (they are still covered by the shards'
//!   positions, so they are not re-read). Its result MUST keep every partition column.
//! - Read-only: no DDL, DML or `SET`-like statements; there is no other table to read.
//! - If the query fails on a batch (a runtime cast error, say), or its result has a column type the delivery
//!   cannot write or that conflicts with the table, every record of the batch goes to the error table with kind
//!   `transform_failed` and the reason; the delivery keeps going.

use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::concat_batches;
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::prelude::SessionContext;

use crate::config::DeliveryConfig;
use crate::convert::{Column, TableSchema};
use crate::error::{ProcessError, Result};

/// A compiled-once SQL transform.
#[derive(Debug, Clone)]
pub struct SqlTransform {
    sql: String,
    partition_columns: Vec<String>,
}

impl SqlTransform {
    pub fn new(config: &DeliveryConfig) -> Option<Self> {
        config.transform_sql.as_ref().map(|sql| Self {
            sql: sql.clone(),
            partition_columns: config.partition_by.iter().map(|p| p.name.clone()).collect(),
        })
    }

    /// Check the query against an empty batch of `schema`: syntax, names and statement kind.
    pub async fn validate(&self, schema: &TableSchema) -> Result<()> {
        let empty = RecordBatch::new_empty(schema.arrow());
        self.apply(schema, empty, schema)
            .await
            .map(|_| ())
            .map_err(|e| ProcessError::Config(format!("transform_sql: {e}")))
    }

    /// Run the query over `batch`. Returns the result and the table schema it needs (the committed schema plus
    /// any new columns), or the reason the batch fails.
    pub async fn apply(
        &self,
        batch_schema: &TableSchema,
        batch: RecordBatch,
        table: &TableSchema,
    ) -> std::result::Result<(Option<RecordBatch>, TableSchema), String> {
        let ctx = SessionContext::new();
        let mem = MemTable::try_new(batch_schema.arrow(), vec![vec![batch]]).map_err(|e| e.to_string())?;
        ctx.register_table("batch", Arc::new(mem))
            .map_err(|e| e.to_string())?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx
            .sql_with_options(&self.sql, options)
            .await
            .map_err(|e| e.to_string())?;
        let out_schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        let mut schema = table.clone();
        for f in out_schema.fields() {
            let ty = crate::config::ColumnType::from_arrow(f.data_type()).ok_or_else(|| {
                format!(
                    "result column {} has type {} that delivery cannot write",
                    f.name(),
                    f.data_type()
                )
            })?;
            match schema.columns.iter().find(|c| c.name == *f.name()) {
                Some(c) if c.ty == ty => {}
                Some(c) => {
                    return Err(format!(
                        "result column {} is {:?} but the table column is {:?}",
                        f.name(),
                        ty,
                        c.ty
                    ));
                }
                None => schema.columns.push(Column {
                    name: f.name().clone(),
                    ty,
                }),
            }
        }
        for p in &self.partition_columns {
            if out_schema.field_with_name(p).is_err() {
                return Err(format!("the result lacks partition column {p}"));
            }
        }
        // Conform the result to the full table schema (columns it does not produce are null).
        let target = schema.arrow();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return Ok((None, schema));
        }
        let merged = concat_batches(&out_schema, &batches).map_err(|e| e.to_string())?;
        let columns = target
            .fields()
            .iter()
            .map(|f| match merged.column_by_name(f.name()) {
                Some(c) => deltalake::arrow::compute::cast(c, f.data_type()).map_err(|e| e.to_string()),
                None => Ok(deltalake::arrow::array::new_null_array(f.data_type(), rows)),
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let out = RecordBatch::try_new(target, columns).map_err(|e| e.to_string())?;
        Ok((Some(out), schema))
    }
}
