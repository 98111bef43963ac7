//! `freshet reports list|run <name>|history <name>` on a data directory's warehouse (no server needed: runs and
//! history are files under `<data-dir>/warehouse/reports/`). The reports are the `[[reports]]` of `--config`
//! (every problem listed at once), or the default pipeline's `telemetry_minutely` without it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use freshet_query::{QueryEngine, QueryLimits, Warehouse};
use freshet_reports::{CancellationToken, ReportConfig, Reporter, RunStatus};

#[derive(Debug, Args)]
pub struct ReportsArgs {
    #[command(subcommand)]
    pub command: ReportsCommand,
    /// Data directory whose warehouse holds the tables and the report outputs.
    #[arg(
        long,
        env = "FRESHET_DATA_DIR",
        default_value = "./freshet-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// A TOML file whose `[[reports]]` define the reports (default: the default pipeline's report).
    #[arg(long, env = "FRESHET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ReportsCommand {
    /// The reports, their triggers and their latest runs.
    List,
    /// Run a report now over the latest versions of its trigger tables (nothing runs if that run completed); a
    /// report with only a schedule runs its latest slot.
    Run { name: String },
    /// Every run of a report: run id, status, attempts, rows, start, error (`--json`: one record per line).
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// The reports of the default pipeline (DESIGN.md).
pub fn default_reporter(warehouse: &Path) -> anyhow::Result<Reporter> {
    let engine = QueryEngine::new(Warehouse::local(warehouse), QueryLimits::default());
    Reporter::new(Arc::new(engine), vec![ReportConfig::telemetry_minutely()]).context("the default reports")
}

/// The reports of `--config`, or the default ones.
fn reporter(warehouse: &Path, config: Option<&Path>) -> anyhow::Result<Reporter> {
    let Some(path) = config else {
        return default_reporter(warehouse);
    };
    let reports = freshet_reports::load_reports(path).map_err(|e| match e {
        freshet_reports::ReportError::Config(problems) => anyhow::anyhow!(
            "{} has {} problem(s) in [[reports]]:\n  {}",
            path.display(),
            problems.len(),
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
        other => anyhow::Error::new(other),
    })?;
    let reports = if reports.is_empty() {
        vec![ReportConfig::telemetry_minutely()]
    } else {
        reports
    };
    let engine = QueryEngine::new(Warehouse::local(warehouse), QueryLimits::default());
    Ok(Reporter::new(Arc::new(engine), reports)?)
}

pub async fn run(args: ReportsArgs) -> anyhow::Result<()> {
    let warehouse = args.data_dir.join("warehouse");
    let reporter = reporter(&warehouse, args.config.as_deref())?;
    match args.command {
        ReportsCommand::List => {
            println!("{:<24} {:<40} LATEST", "NAME", "TRIGGER");
            for report in reporter.reports() {
                let latest = freshet_reports::latest(&warehouse, &report.name)?
                    .map_or_else(|| "-".to_string(), |p| p.run_id);
                let mut trigger = Vec::new();
                if !report.trigger.tables.is_empty() {
                    trigger.push(format!("commits of {}", report.trigger.tables.join(", ")));
                }
                if let Some(s) = &report.trigger.schedule {
                    trigger.push(s.clone());
                }
                println!("{:<24} {:<40} {latest}", report.name, trigger.join("; "));
            }
        }
        ReportsCommand::Run { name } => {
            let outcome = reporter.run_latest(&name, &CancellationToken::new()).await?;
            println!("{}", serde_json::to_string_pretty(&outcome.record)?);
            if outcome.skipped {
                eprintln!("run {} had completed already; nothing ran", outcome.record.run_id);
            }
            anyhow::ensure!(
                outcome.record.status == RunStatus::Completed,
                "run {} failed: {}",
                outcome.record.run_id,
                outcome.record.error.unwrap_or_default()
            );
        }
        ReportsCommand::History { name, json } => {
            reporter.report(&name)?;
            let runs = freshet_reports::history(&warehouse, &name)?;
            if json {
                for r in runs {
                    println!("{}", serde_json::to_string(&r)?);
                }
                return Ok(());
            }
            println!(
                "{:<32} {:<10} {:>8} {:>10} {:<24} ERROR",
                "RUN", "STATUS", "ATTEMPTS", "ROWS", "STARTED"
            );
            for r in runs {
                let started = r.started_at();
                let status = serde_json::to_value(r.status)?;
                println!(
                    "{:<32} {:<10} {:>8} {:>10} {:<24} {}",
                    r.run_id,
                    status.as_str().unwrap_or("?"),
                    r.attempts,
                    r.rows.map_or_else(|| "-".into(), |n| n.to_string()),
                    started,
                    r.error.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
