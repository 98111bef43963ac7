//! `freshet up`: every built stage in one process, configured by `freshet.toml` (see `config.rs`); without a file,
//! the default pipeline of DESIGN.md:
//! - the stream store with the stream `telemetry` (4 shards);
//! - the MQTT gateway (default `127.0.0.1:1883`) with the rule
//!   `SELECT *, topic(2) AS device_id FROM 'devices/+/telemetry'` → `telemetry`, partition key = device id;
//! - the delivery `telemetry` → Delta table `telemetry` in `<data-dir>/warehouse` (or `[warehouse] url`, e.g.
//!   `s3://bucket/prefix`), partitioned by event date;
//! - the report runtime with `telemetry_minutely`, run on every commit of `telemetry` (`freshet-reports`), its
//!   outputs under `<warehouse>/reports/`; the dashboard `telemetry` over them;
//! - one HTTP listener (default `127.0.0.1:8080`) serving the Kinesis API (`POST /` with `X-Amz-Target`),
//!   `POST /v1/sql`, `/health` and `/metrics` (Prometheus text).
//!
//! SIGINT or SIGTERM: stop accepting MQTT, let the gateway finish what is in flight, flush the deliveries, stop
//! the HTTP listener, sync the store, exit 0. The next start resumes delivery from the table's `txn` versions:
//! nothing lost, nothing twice.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use clap::Args;
use freshet_storage::StreamStore;
use freshet_storage::api;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigFlag, Overrides};
use crate::run::{
    base_router, dashboards_router, open_store, probe_warehouse, shutdown_signal, spawn_http, spawn_reports,
    spawn_retention, sql_router,
};

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub file: ConfigFlag,
    /// Data directory (`data_dir`; default `./freshet-data`).
    #[arg(long, env = "FRESHET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When appends are fsync'd: `always`, `interval:<ms>`, or `never` (`[store] fsync`).
    #[arg(long)]
    pub fsync: Option<String>,
    /// Largest record in bytes, up to 10 MiB (`[store] record_bytes_max`).
    #[arg(long)]
    pub record_bytes_max: Option<usize>,
    /// HTTP listener: Kinesis API, /v1/sql, /health, /metrics (`[http] addr`; default 127.0.0.1:8080).
    #[arg(long, env = "FRESHET_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// The first MQTT listener (`[[gateway.listeners]]`; default 127.0.0.1:1883).
    #[arg(long, env = "FRESHET_MQTT_ADDR")]
    pub mqtt_addr: Option<SocketAddr>,
    /// Override every delivery's buffering interval, e.g. `1s`, `500ms`, `2m` (default 60 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub buffer_interval: Option<Duration>,
    /// How often expired segments are deleted (`[store] retention_check_seconds`).
    #[arg(long, value_name = "SECONDS")]
    pub retention_check_seconds: Option<u64>,
}

fn http_router(
    store: Arc<dyn StreamStore>,
    metrics: PrometheusHandle,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Router> {
    Ok(base_router(metrics.clone(), config)
        .merge(api::router(store, config.api_config()))
        .merge(sql_router(config)?)
        .merge(dashboards_router(metrics, config, shutdown)?))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let path = config::resolve_path(args.file.config.as_deref());
    let overrides = Overrides {
        data_dir: args.data_dir,
        http_addr: args.http_addr,
        mqtt_addr: args.mqtt_addr,
        fsync: args.fsync,
        record_bytes_max: args.record_bytes_max,
        buffer_interval: args.buffer_interval,
        retention_check_seconds: args.retention_check_seconds,
        ..Overrides::default()
    };
    let config = config::load(path.as_deref(), &overrides)?;
    let warehouse = crate::run::warehouse(&config)?;
    // Bind before anything else so "port in use" is the first, clear failure.
    let (metrics, listener) = crate::run::listen(&config).await?;
    let store = open_store(&config).await?;
    // An unreachable object store (or a warehouse directory that cannot be made) is a one-line failure at start.
    if let Err(e) = probe_warehouse(&warehouse).await {
        store.shutdown().await;
        return Err(e);
    }
    let shared: Arc<dyn StreamStore> = Arc::new(store.clone());
    // Start MQTT before spawning anything else, so a busy port or bad rule fails start-up cleanly.
    let mqtt = config.gateway.listeners.first().map(|l| l.addr);
    let gateway = match freshet_ingest::start(config.gateway.clone(), shared.clone()).await {
        Ok(g) => g,
        Err(e) => {
            store.shutdown().await;
            return Err(e).context("starting the MQTT gateway");
        }
    };

    let shutdown = CancellationToken::new();
    let retention = spawn_retention(store.clone(), &config, shutdown.clone());
    let deliveries: Vec<_> = config
        .deliveries
        .iter()
        .map(|d| {
            let handle = freshet_process::spawn_delivery(d.clone(), shared.clone(), shutdown.child_token());
            (d.name.clone(), handle)
        })
        .collect();
    let reports = spawn_reports(&config, warehouse, shared.clone(), shutdown.child_token())?;
    let mut http = spawn_http(
        listener,
        http_router(shared, metrics, &config, &shutdown)?,
        shutdown.clone(),
    );
    tracing::info!(
        http = %config.http.addr,
        mqtt = ?mqtt,
        data_dir = %config.data_dir.display(),
        "freshet is up"
    );

    let http_result = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            None
        }
        result = &mut http => Some(result),
    };
    // Stop MQTT first so everything acknowledged reaches the store, then flush the deliveries.
    gateway.shutdown().await;
    let mut delivery_result = Ok(());
    for (name, d) in deliveries {
        if let Err(e) = d.shutdown().await {
            tracing::error!(delivery = %name, error = %e, "delivery stopped with an error");
            if delivery_result.is_ok() {
                delivery_result = Err(anyhow::anyhow!("delivery {name}: {e}"));
            }
        }
    }
    shutdown.cancel();
    let http_result = match http_result {
        Some(result) => result,
        None => http.await,
    };
    let _ = retention.await;
    let reports_result = reports.shutdown().await;
    store.shutdown().await;
    reports_result.context("report runtime")?;
    http_result.context("HTTP server task")?.context("HTTP server")?;
    delivery_result?;
    tracing::info!("stopped");
    Ok(())
}
