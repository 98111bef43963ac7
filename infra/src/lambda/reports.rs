//! `freshet lambda reports`: S3 notifications of new `_delta_log/<version>.json` objects → report runs.
//!
//! Environment: `FRESHET_WAREHOUSE` (the warehouse the reports read and write: `s3://bucket/prefix`, reached with the
//! standard AWS variables as the delivery handler does, see [`super::storage_options`], or a local path such as an
//! EFS mount), and the report: `FRESHET_REPORT_SQL` with `FRESHET_REPORT_NAME`
//! (default `lambda_report`) and `FRESHET_REPORT_TABLES` (comma-separated trigger tables; default `FRESHET_TABLE`),
//! or `FRESHET_REPORT=telemetry_minutely` for the built-in per-device, per-minute report.
//! `FRESHET_S3_WAREHOUSE` (`s3://bucket/prefix`), when set, ignores notifications for keys outside it; it defaults
//! to an `s3://` `FRESHET_WAREHOUSE`.

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::s3::S3Event;
use freshet_query::{QueryEngine, QueryLimits, Warehouse};
use freshet_reports::s3event::handle_s3_event;
use freshet_reports::{CancellationToken, ReportConfig, Reporter};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::json;

use super::{optional, required, runtime_ended, storage_options};

/// The report from the environment.
pub fn report_from_env() -> anyhow::Result<ReportConfig> {
    if let Some(builtin) = optional("FRESHET_REPORT") {
        anyhow::ensure!(
            builtin == "telemetry_minutely",
            "FRESHET_REPORT={builtin:?}: the built-in report is telemetry_minutely (or set FRESHET_REPORT_SQL)"
        );
        return Ok(ReportConfig::telemetry_minutely());
    }
    let sql = required("FRESHET_REPORT_SQL").context("set FRESHET_REPORT_SQL or FRESHET_REPORT")?;
    let name = optional("FRESHET_REPORT_NAME").unwrap_or_else(|| "lambda_report".to_string());
    let tables: Vec<String> = optional("FRESHET_REPORT_TABLES")
        .or_else(|| optional("FRESHET_TABLE"))
        .context("set FRESHET_REPORT_TABLES (or FRESHET_TABLE): the tables whose commits run the report")?
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    serde_json::from_value(json!({"name": name, "sql": sql, "trigger": {"tables": tables}}))
        .context("the report from FRESHET_REPORT_*")
}

/// `s3://bucket/prefix` → (bucket, prefix).
fn s3_filter(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .with_context(|| format!("FRESHET_S3_WAREHOUSE={url:?} must be s3://bucket/prefix"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(!bucket.is_empty(), "FRESHET_S3_WAREHOUSE={url:?} has no bucket");
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

pub async fn run() -> anyhow::Result<()> {
    let warehouse = required("FRESHET_WAREHOUSE")?;
    let opened = Warehouse::open(&warehouse, storage_options())
        .with_context(|| format!("FRESHET_WAREHOUSE={warehouse:?}"))?;
    let filter = optional("FRESHET_S3_WAREHOUSE")
        .or_else(|| warehouse.starts_with("s3://").then(|| warehouse.clone()))
        .map(|u| s3_filter(&u))
        .transpose()?;
    let report = report_from_env()?;
    let engine = QueryEngine::new(opened, QueryLimits::default());
    let reporter = Arc::new(Reporter::new(Arc::new(engine), vec![report]).context("the report")?);
    tracing::info!(%warehouse, "lambda reports handler starting");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<S3Event>| {
        let reporter = reporter.clone();
        let filter = filter.clone();
        async move {
            let filter = filter.as_ref().map(|(b, p)| (b.as_str(), p.as_str()));
            let outcome =
                handle_s3_event(&reporter, &event.payload, filter, &CancellationToken::new()).await?;
            let runs: Vec<_> = outcome
                .runs
                .iter()
                .map(|r| {
                    json!({"report": r.record.report, "run_id": r.record.run_id, "status": r.record.status,
                           "skipped": r.skipped, "rows": r.record.rows, "outputs": r.record.outputs})
                })
                .collect();
            let commits: Vec<_> = outcome
                .commits
                .iter()
                .map(|c| json!({"table": c.table, "version": c.version}))
                .collect();
            let ignored: Vec<_> = outcome
                .ignored
                .iter()
                .map(|i| json!({"key": i.key, "reason": i.reason}))
                .collect();
            Ok::<_, lambda_runtime::Error>(json!({"commits": commits, "runs": runs, "ignored": ignored}))
        }
    }))
    .await
    .map_err(runtime_ended)
}
