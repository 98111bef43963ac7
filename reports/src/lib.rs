//! freshet-reports: report functions, SQL runs triggered by table commits, with outputs in the warehouse.
//!
//! - [`ReportConfig`] (`config.rs`): name + query + trigger + outputs (serde); [`ReportConfig::telemetry_minutely`]
//!   is the default pipeline's report.
//! - [`Reporter`] (`run.rs`): the handler. One [`CommitEvent`] in, one [`RunOutcome`] per triggered report out
//!   (the shape of a Lambda handler). A run is keyed by the table versions it reads (`telemetry@v3`); a key with a
//!   completed run is skipped, so re-delivered events never run twice over the same data. Files:
//!   `<warehouse>/reports/<name>/runs/<run id>/{result.parquet,result.csv,result.json,run.json}` and `latest`.
//! - [`spawn_runtime`] (`runtime.rs`): consumes `_freshet_events` with a durable checkpoint.
//! - [`dashboard`]: dashboards over report outputs (config, plotters SVG/PNG, the axum router, the ops dashboard).
//!
//! This crate uses `freshet-query` for SQL and formats and `freshet-storage` for the events stream, nothing else of
//! freshet.

mod config;
pub mod dashboard;
mod error;
mod run;
mod runtime;
pub mod s3event;

pub use config::{OutputFormat, ReportConfig, ReportQuery, Trigger, validate};
pub use error::{ReportError, Result};
pub use run::{
    CommitEvent, EVENTS_STREAM, LatestPointer, Reporter, RunOutcome, RunRecord, RunStatus, history, latest,
    minutely_sql, report_dir, run_id, table_version,
};
pub use runtime::{DEFAULT_CONSUMER, RuntimeHandle, run_runtime, spawn_runtime};
pub use tokio_util::sync::CancellationToken;
