//! `freshet reports list|run <name>|history <name>` on a warehouse directly (no server needed: runs and history are
//! objects under `<warehouse>/reports/`). The warehouse is `--warehouse` (a directory or `s3://bucket/prefix` with
//! `--storage-option key=value` and the standard AWS variables), else the `[warehouse]` of `--config` when the file
//! has one, else `<data-dir>/warehouse`. The reports are the `[[reports]]` of `--config` (every problem listed at
//! once), or the default pipeline's `telemetry_minutely` without it.

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
    /// A TOML file whose `[[reports]]` define the reports (default: the default pipeline's report); its
    /// `[warehouse]`, when it has one, is the warehouse.
    #[arg(long, env = "FRESHET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The warehouse: a directory or an object_store URL such as `s3://bucket/prefix` (default: the `[warehouse]`
    /// of --config, else `<data-dir>/warehouse`).
    #[arg(long, global = true)]
    pub warehouse: Option<String>,
    /// object_store option for an object-store warehouse, `key=value` (repeatable), e.g.
    /// `AWS_ENDPOINT_URL=http://127.0.0.1:9000`; the standard AWS environment variables are read too.
    #[arg(long = "storage-option", global = true)]
    pub storage_options: Vec<String>,
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
pub fn default_reporter(warehouse: Warehouse) -> anyhow::Result<Reporter> {
    let engine = QueryEngine::new(warehouse, QueryLimits::default());
    Reporter::new(Arc::new(engine), vec![ReportConfig::telemetry_minutely()]).context("the default reports")
}

/// The warehouse of the command (see the module docs).
fn warehouse(args: &ReportsArgs) -> anyhow::Result<Warehouse> {
    if let Some(location) = &args.warehouse {
        let options = args
            .storage_options
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("storage option {kv:?} is not key=value"))
            })
            .collect::<anyhow::Result<_>>()?;
        return Ok(Warehouse::open(location, options)?);
    }
    anyhow::ensure!(
        args.storage_options.is_empty(),
        "--storage-option goes with --warehouse"
    );
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let has_warehouse = toml::from_str::<toml::Table>(&text)
            .map(|t| t.contains_key("warehouse"))
            .unwrap_or(false);
        if has_warehouse {
            let overrides = crate::config::Overrides {
                data_dir: Some(args.data_dir.clone()),
                ..Default::default()
            };
            let config = crate::config::load(Some(path), &overrides)?;
            return crate::run::warehouse(&config);
        }
    }
    Ok(Warehouse::local(args.data_dir.join("warehouse")))
}

/// The reports of `--config`, or the default ones.
fn reporter(warehouse: Warehouse, config: Option<&Path>) -> anyhow::Result<Reporter> {
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
    let engine = QueryEngine::new(warehouse, QueryLimits::default());
    Ok(Reporter::new(Arc::new(engine), reports)?)
}

pub async fn run(args: ReportsArgs) -> anyhow::Result<()> {
    let reporter = reporter(warehouse(&args)?, args.config.as_deref())?;
    let outputs = reporter.outputs().clone();
    match args.command {
        ReportsCommand::List => {
            println!("{:<24} {:<40} LATEST", "NAME", "TRIGGER");
            for report in reporter.reports() {
                let latest = outputs
                    .latest(&report.name)
                    .await?
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
            let runs = outputs.history(&name).await?;
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
