//! The query engine: one fresh DataFusion session per query over the warehouse, read-only, with limits.
//!
//! Guarantees (MUST):
//! - Only read-only queries run: a statement whose plan holds DDL (`CREATE [EXTERNAL] TABLE`, `DROP`, views), DML
//!   (`INSERT`, `UPDATE`, `DELETE`, `COPY ... TO`) or a session statement (`SET`, transactions) is refused before
//!   anything executes (`forbidden_statement`). No file-reading table functions are registered and URL tables are
//!   off, so SQL cannot name a path: the only tables are the warehouse's (`warehouse.rs`).
//! - Each query gets its own memory pool of `memory_bytes_max` and spilling to disk is disabled, so a query that
//!   needs more stops with `memory_limit_exceeded` and no other query is affected.
//! - A query running past `time_max` is dropped (its tasks are cancelled) with `time_limit_exceeded`.
//! - A result larger than `result_bytes_max` (Arrow in-memory size) stops with `result_too_large`.
//! - At most `queries_max` queries run at once; one more is refused with `busy` rather than queued without bound.
//!
//! Sessions are per query because DataFusion's memory pool belongs to the runtime of a session; building one costs
//! microseconds next to opening a Delta table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use deltalake::datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use deltalake::datafusion::sql::parser::Statement as DfStatement;
use deltalake::datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::{QueryError, Result};
use crate::format::QueryResult;
use crate::warehouse::{Warehouse, WarehouseSchema};

/// Limits of every query. Units last in names.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory one query may use for its operators (hash tables, sorts, buffers): default 1 GiB.
    pub memory_bytes_max: usize,
    /// Wall time from planning to the last row: default 60 s.
    pub time_max: Duration,
    /// In-memory size of the result a query may return: default 256 MiB.
    pub result_bytes_max: usize,
    /// Length of the SQL text: default 1 MiB.
    pub sql_bytes_max: usize,
    /// Queries running at once: default 8.
    pub queries_max: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes_max: 1 << 30,
            time_max: Duration::from_secs(60),
            result_bytes_max: 256 << 20,
            sql_bytes_max: 1 << 20,
            queries_max: 8,
        }
    }
}

/// SQL over a warehouse. Cheap to share (`Arc`); every query reads the latest committed table versions.
#[derive(Debug)]
pub struct QueryEngine {
    warehouse: Arc<Warehouse>,
    limits: QueryLimits,
    slots: Arc<Semaphore>,
}

impl QueryEngine {
    pub fn new(warehouse: Warehouse, limits: QueryLimits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.queries_max.max(1)));
        Self {
            warehouse: Arc::new(warehouse),
            limits,
            slots,
        }
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Run one read-only SQL statement and return its whole result.
    pub async fn sql(&self, sql: &str) -> Result<QueryResult> {
        if sql.len() > self.limits.sql_bytes_max {
            return Err(QueryError::BadRequest(format!(
                "the SQL is {} bytes; the limit is {}",
                sql.len(),
                self.limits.sql_bytes_max
            )));
        }
        if sql.trim().is_empty() {
            return Err(QueryError::BadRequest("the SQL is empty".into()));
        }
        let _slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryError::Busy(self.limits.queries_max))?;
        let deadline = Instant::now() + self.limits.time_max;
        match tokio::time::timeout(self.limits.time_max, self.run(sql, deadline)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(QueryError::TimeLimit(self.limits.time_max)),
        }
    }

    /// A session for one query: its own memory pool, no disk spilling, information_schema, the warehouse as
    /// `datafusion.public`, DataFusion's settings from its `DATAFUSION_*` environment variables.
    async fn session(&self) -> Result<SessionContext> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes_max, 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(|e| QueryError::Internal(format!("building a query runtime: {e}")))?;
        // DataFusion's own `DATAFUSION_*` environment variables (e.g. `DATAFUSION_EXECUTION_TARGET_PARTITIONS`)
        // tune the engine; a bad value is an error of every query, named by DataFusion.
        let config = SessionConfig::from_env()
            .map_err(|e| QueryError::Internal(format!("DATAFUSION_* environment: {e}")))?
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public");
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| QueryError::Internal("no default catalog".into()))?;
        let schema = WarehouseSchema::list(self.warehouse.clone()).await?;
        catalog
            .register_schema("public", Arc::new(schema))
            .map_err(|e| QueryError::Internal(format!("registering the warehouse: {e}")))?;
        Ok(ctx)
    }

    async fn run(&self, sql: &str, deadline: Instant) -> Result<QueryResult> {
        let memory = self.limits.memory_bytes_max;
        let classify = |e| QueryError::from_datafusion(e, memory);
        let ctx = self.session().await?;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).map_err(classify)?;
        refuse_writes(&statement)?;
        let plan = state.statement_to_plan(statement).await.map_err(classify)?;
        // Defence in depth: the plan must hold no DDL, DML or statement node either.
        read_only()
            .verify_plan(&plan)
            .map_err(|e| QueryError::Forbidden(e.strip_backtrace()))?;
        let frame = ctx.execute_logical_plan(plan).await.map_err(classify)?;
        let schema = frame.schema().inner().clone();
        let mut stream = frame.execute_stream().await.map_err(classify)?;
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(classify)?;
            bytes = bytes.saturating_add(batch.get_array_memory_size());
            if bytes > self.limits.result_bytes_max {
                return Err(QueryError::ResultTooLarge {
                    limit_bytes: self.limits.result_bytes_max,
                });
            }
            // The timeout around `run` only fires when the stream yields; check between batches too.
            if Instant::now() > deadline {
                return Err(QueryError::TimeLimit(self.limits.time_max));
            }
            batches.push(batch);
        }
        Ok(QueryResult { schema, batches })
    }
}

/// Refuse, before planning, every statement but a query (and EXPLAIN / SHOW / DESCRIBE of one): planning a COPY or
/// CREATE EXTERNAL TABLE could already touch the paths it names.
fn refuse_writes(statement: &DfStatement) -> Result<()> {
    fn allowed(statement: &SqlStatement) -> bool {
        match statement {
            SqlStatement::Query(_)
            | SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ExplainTable { .. } => true,
            SqlStatement::Explain { statement, .. } => allowed(statement),
            _ => false,
        }
    }
    let ok = match statement {
        DfStatement::Statement(statement) => allowed(statement),
        DfStatement::Explain(explain) => match explain.statement.as_ref() {
            DfStatement::Statement(statement) => allowed(statement),
            _ => false,
        },
        DfStatement::CreateExternalTable(_) | DfStatement::CopyTo(_) | DfStatement::Reset(_) => false,
    };
    if ok {
        return Ok(());
    }
    let text = statement.to_string();
    let keyword: String = text
        .split_whitespace()
        .take(if text.starts_with("CREATE") { 3 } else { 1 })
        .collect::<Vec<_>>()
        .join(" ");
    Err(QueryError::Forbidden(format!("{keyword} ...")))
}

/// Queries only: no DDL, no DML (which includes COPY), no session statements.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::DeltaTable;
    use deltalake::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    use crate::format::{Format, encode};

    fn batch(rows: &[(&str, i64, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    /// A warehouse with table `t`: version 0 has 3 rows, version 1 adds 2.
    async fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let table_dir = dir.path().join("t");
        std::fs::create_dir_all(&table_dir).unwrap();
        let url = url::Url::from_directory_path(&table_dir).unwrap();
        let table = DeltaTable::try_from_url(url.clone()).await.unwrap();
        let table = table
            .write([batch(&[("a", 1, 1.5), ("b", 2, 2.5), ("a", 3, 3.5)])])
            .await
            .unwrap();
        table
            .write([batch(&[("c", 4, 4.5), ("b", 5, 5.5)])])
            .await
            .unwrap();
        dir
    }

    fn engine(dir: &tempfile::TempDir, limits: QueryLimits) -> QueryEngine {
        QueryEngine::new(Warehouse::local(dir.path()), limits)
    }

    async fn scalar(engine: &QueryEngine, sql: &str) -> String {
        let result = engine.sql(sql).await.unwrap();
        String::from_utf8(encode(&result, Format::Csv).unwrap())
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_latest_and_travels_to_versions() {
        let dir = fixture().await;
        let engine = engine(&dir, QueryLimits::default());
        assert_eq!(scalar(&engine, "SELECT count(*) FROM t").await, "5");
        assert_eq!(scalar(&engine, "SELECT count(*) FROM t@v0").await, "3");
        assert_eq!(scalar(&engine, "SELECT count(*) FROM \"t@v1\"").await, "5");
        assert_eq!(
            scalar(
                &engine,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
            .await,
            "t"
        );
        let e = engine.sql("SELECT * FROM t@v7").await.unwrap_err();
        assert_eq!(e.kind(), "unknown_table", "{e}");
        let e = engine.sql("SELECT * FROM t@seven").await.unwrap_err();
        assert_eq!(e.http_status() / 100, 4, "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sees_a_commit_made_after_the_engine_started() {
        let dir = fixture().await;
        let engine = engine(&dir, QueryLimits::default());
        assert_eq!(scalar(&engine, "SELECT count(*) FROM t").await, "5");
        let url = url::Url::from_directory_path(dir.path().join("t")).unwrap();
        let table = DeltaTable::try_from_url(url).await.unwrap();
        table.write([batch(&[("d", 6, 6.5)])]).await.unwrap();
        assert_eq!(scalar(&engine, "SELECT count(*) FROM t").await, "6");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caller_mistakes_are_classified() {
        let dir = fixture().await;
        let engine = engine(&dir, QueryLimits::default());
        let e = engine.sql("SELEC 1").await.unwrap_err();
        assert_eq!(e.kind(), "syntax_error", "{e}");
        assert!(e.to_string().contains("Line: 1"), "{e}");
        let e = engine.sql("SELECT * FROM nope").await.unwrap_err();
        assert_eq!((e.kind(), e.http_status()), ("unknown_table", 400), "{e}");
        let e = engine.sql("SELECT nope FROM t").await.unwrap_err();
        assert_eq!((e.kind(), e.http_status()), ("unknown_column", 400), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_read_only_queries_run() {
        let dir = fixture().await;
        let engine = engine(&dir, QueryLimits::default());
        let outside = dir.path().join("outside.csv");
        std::fs::write(&outside, "a,b\n1,2\n").unwrap();
        let outside = outside.display();
        for sql in [
            format!("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{outside}'"),
            format!("COPY t TO '{outside}.out' STORED AS CSV"),
            format!("COPY (SELECT 1) TO '{outside}.out'"),
            "INSERT INTO t VALUES ('x', 1, 1.0)".into(),
            "SET datafusion.execution.batch_size = 1".into(),
            "CREATE TABLE y AS SELECT 1".into(),
            "CREATE VIEW v AS SELECT 1".into(),
            "DROP TABLE t".into(),
            "DELETE FROM t".into(),
            "UPDATE t SET n = 1".into(),
        ] {
            let e = engine.sql(&sql).await.unwrap_err();
            assert_eq!(
                (e.kind(), e.http_status()),
                ("forbidden_statement", 403),
                "{sql}: {e}"
            );
        }
        for sql in [
            format!("SELECT * FROM '{outside}'"),
            format!("SELECT * FROM read_csv('{outside}')"),
            "SELECT * FROM \"../t\"".into(),
        ] {
            let e = engine.sql(&sql).await.unwrap_err();
            assert_eq!(e.http_status() / 100, 4, "{sql}: {e}");
        }
        assert!(!dir.path().join("outside.csv.out").exists());
        assert_eq!(scalar(&engine, "SELECT count(*) FROM t").await, "5");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limits_stop_runaway_queries() {
        let dir = fixture().await;
        let limits = QueryLimits {
            memory_bytes_max: 8 << 20,
            time_max: Duration::from_millis(500),
            result_bytes_max: 1 << 20,
            ..QueryLimits::default()
        };
        let engine = engine(&dir, limits);
        let e = engine
            .sql("SELECT array_length(array_agg(value)) FROM generate_series(1, 5000000)")
            .await
            .unwrap_err();
        assert_eq!((e.kind(), e.http_status()), ("memory_limit_exceeded", 422), "{e}");
        let e = engine
            .sql("SELECT count(*) FROM generate_series(1, 100000000000)")
            .await
            .unwrap_err();
        assert_eq!((e.kind(), e.http_status()), ("time_limit_exceeded", 422), "{e}");
        let e = engine
            .sql("SELECT * FROM generate_series(1, 1000000)")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "result_too_large", "{e}");
        assert_eq!(scalar(&engine, "SELECT sum(n) FROM t").await, "15");
    }
}
