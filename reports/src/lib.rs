//! freshet-reports: report functions, SQL runs triggered by table commits, with outputs in the warehouse.
//!
//! - [`ReportConfig`] (`config.rs`): name + query + trigger + outputs (serde); [`ReportConfig::telemetry_minutely`]
//!   is the default pipeline's report. [`load_reports`] / [`reports_from_toml`] read `[[reports]]` of a TOML file;
//!   [`check_reports`] (`check.rs`) lists every problem at once, SQL planned against the engine.
//! - [`Schedule`] (`schedule.rs`): `rate(...)` / `cron(...)` in EventBridge syntax; a scheduled run is keyed by its
//!   slot.
//! - [`Reporter`] (`run.rs`): the handler. One [`CommitEvent`] in, one [`RunOutcome`] per triggered report out
//!   (the shape of a Lambda handler). A run is keyed by the table versions it reads (`telemetry@v3`); a key with a
//!   completed run is skipped, so re-delivered events never run twice over the same data. Files:
//!   `<warehouse>/reports/<name>/runs/<run id>/{result.parquet,result.csv,result.json,run.json}` and `latest`.
//! - [`OutputStore`] (`outputs.rs`): where those files live, a local directory or an object store (`s3://...`,
//!   the warehouse's URL and storage options), with atomic replaces and compare-and-swap writes.
//! - [`spawn_runtime`] (`runtime.rs`): consumes `_freshet_events` with a durable checkpoint.
//! - [`dashboard`]: dashboards over report outputs (config, plotters SVG/PNG, the axum router, the ops dashboard).
//!
//! This crate uses `freshet-query` for SQL and formats and `freshet-storage` for the events stream, nothing else of
//! freshet.

mod check;
mod config;
pub mod dashboard;
mod error;
mod outputs;
mod run;
mod runtime;
pub mod s3event;
mod schedule;

pub use check::check_reports;
pub use config::{
    OutputFormat, Problem, ProblemKind, ReportConfig, ReportQuery, Trigger, load_reports, problems,
    reports_from_toml, reports_from_toml_value, validate,
};
pub use error::{ReportError, Result};
pub use outputs::{Expect, OutputStore, Put, Tag};
pub use run::{
    CommitEvent, EVENTS_STREAM, LATEST_ATTEMPTS_MAX, LatestPointer, Reporter, RunOutcome, RunRecord,
    RunStatus, history, latest, minutely_sql, report_dir, report_key, run_id, run_key, table_version,
};
pub use runtime::{DEFAULT_CONSUMER, RuntimeHandle, run_runtime, spawn_runtime};
pub use schedule::{Schedule, slot_run_id};
pub use tokio_util::sync::CancellationToken;
