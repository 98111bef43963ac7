//! The command line: every subcommand and its flags (clap), and dispatch to the code that runs it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use freshet_storage::{FsyncPolicy, LogConfig, StoreConfig};

use crate::{bench, config, deliveries, query, reports, run, simulate, streams, up};

#[derive(Debug, Parser)]
#[command(
    name = "freshet",
    version,
    about = "A self-hostable IoT analytics pipeline: MQTT in, Delta Lake out."
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(
        long,
        global = true,
        default_value = "info,async_nats=warn,buoyant_kernel=warn,delta_kernel=warn,deltalake_core=warn,rumqttd=warn"
    )]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline in one process (`freshet.toml`, or the default pipeline without one).
    Up(up::UpArgs),
    /// Run one stage as its own process (containers): store, gateway, delivery, reports or dashboard.
    Run(run::RunArgs),
    /// Check or print the configuration (file + environment + defaults).
    Config(config::ConfigArgs),
    /// Work with the streams of a data directory directly (no server needed; the directory is locked while in use).
    Streams(streams::StreamsArgs),
    /// Benchmarks against peer systems, in one run (use a release build).
    Bench(bench::BenchArgs),
    /// Delivery streams into Delta tables: run one, list or describe them.
    Deliveries(deliveries::DeliveriesArgs),
    /// The Delta tables of a warehouse: list, describe, optimize (compact), vacuum.
    Tables(deliveries::TablesArgs),
    /// Run one read-only SQL query against a running server or a warehouse directly.
    Query(query::QueryArgs),
    /// Report functions: list them, run one now, show a report's run history.
    Reports(reports::ReportsArgs),
    /// Simulated devices publishing telemetry over MQTT, with a progress bar and a summary.
    Simulate(simulate::SimulateArgs),
    /// AWS Lambda entry points (lambda_runtime): `delivery` (KinesisEvent) or `reports` (S3Event).
    Lambda(crate::lambda::LambdaArgs),
}

/// Where the store lives and how it syncs.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory.
    #[arg(
        long,
        env = "FRESHET_DATA_DIR",
        default_value = "./freshet-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// When appends are fsync'd: `always` (each group commit, the default), `interval:<ms>`, or `never`.
    #[arg(long, default_value = "always", value_parser = parse_fsync, global = true)]
    pub fsync: FsyncPolicy,
    /// Largest record in bytes (data + partition key), up to 10 MiB.
    #[arg(long, default_value_t = freshet_storage::RECORD_BYTES_MAX_DEFAULT, global = true)]
    pub record_bytes_max: usize,
}

impl StoreArgs {
    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            log: LogConfig {
                fsync: self.fsync,
                ..LogConfig::default()
            },
            record_bytes_max: self.record_bytes_max,
        }
    }
}

pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        other => other
            .strip_prefix("interval:")
            .and_then(|ms| ms.parse().ok())
            .map(FsyncPolicy::Interval)
            .ok_or_else(|| format!("{s:?} is not `always`, `never` or `interval:<ms>`")),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Config(args) => config::run_cli(args),
        Command::Streams(args) => streams::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Deliveries(args) => deliveries::run(args).await,
        Command::Tables(args) => deliveries::tables(args).await,
        Command::Query(args) => query::run(args).await,
        Command::Reports(args) => reports::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Lambda(args) => crate::lambda::run(args).await,
    }
}
