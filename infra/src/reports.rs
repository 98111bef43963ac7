//! `freshet reports list|run <name>|history <name>` on a data directory's warehouse (no server needed: runs and
//! history are files under `<data-dir>/warehouse/reports/`), and the reports of the default pipeline that
//! `freshet up` runs.

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
}

#[derive(Debug, Subcommand)]
pub enum ReportsCommand {
    /// The reports, their triggers and their latest runs.
    List,
    /// Run a report now over the latest versions of its trigger tables (nothing runs if that run completed).
    Run { name: String },
    /// Every run of a report: status, attempts, times, rows, error.
    History { name: String },
}

/// The reports of the default pipeline (DESIGN.md).
pub fn default_reporter(warehouse: &Path) -> anyhow::Result<Reporter> {
    let engine = QueryEngine::new(Warehouse::local(warehouse), QueryLimits::default());
    Reporter::new(Arc::new(engine), vec![ReportConfig::telemetry_minutely()]).context("the default reports")
}

pub async fn run(args: ReportsArgs) -> anyhow::Result<()> {
    let warehouse = args.data_dir.join("warehouse");
    let reporter = default_reporter(&warehouse)?;
    match args.command {
        ReportsCommand::List => {
            println!("{:<24} {:<24} LATEST", "NAME", "TRIGGER");
            for report in reporter.reports() {
                let latest = freshet_reports::latest(&warehouse, &report.name)?
                    .map_or_else(|| "-".to_string(), |p| p.run_id);
                let trigger = format!("commits of {}", report.trigger.tables.join(", "));
                println!("{:<24} {trigger:<24} {latest}", report.name);
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
        ReportsCommand::History { name } => {
            reporter.report(&name)?;
            for r in freshet_reports::history(&warehouse, &name)? {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(())
}
