//! `freshet up`: every built stage in one process, on embedded defaults.
//!
//! Today that is the default pipeline of DESIGN.md up to the Delta table:
//! - the stream store with the stream `telemetry` (4 shards);
//! - the MQTT gateway (default `127.0.0.1:1883`) with the rule
//!   `SELECT *, topic(2) AS device_id FROM 'devices/+/telemetry'` → `telemetry`, partition key = device id;
//! - the delivery `telemetry` → Delta table `telemetry` in `<data-dir>/warehouse`, partitioned by event date;
//! - the report runtime with `telemetry_minutely`, run on every commit of `telemetry` (`freshet-reports`);
//! - one HTTP listener (default `127.0.0.1:8080`) serving the Kinesis API (`POST /` with `X-Amz-Target`),
//!   `/health` and `/metrics` (Prometheus text).
//!
//! SQL, reports and dashboards join here as they are built. SIGINT or SIGTERM: stop accepting MQTT, let the gateway
//! finish what is in flight, flush the delivery, stop the HTTP listener, sync the store, exit 0. The next start
//! resumes delivery from the table's `txn` versions: nothing lost, nothing twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Args;
use freshet_ingest::{GatewayConfig, ListenerConfig, RuleConfig};
use freshet_process::DeliveryConfig;
use freshet_storage::api::{self, ApiConfig};
use freshet_storage::{Store, StoreError, StreamName, StreamStore, SystemClock};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::cli::StoreArgs;

/// The stream of the default pipeline, and its shard count (DESIGN.md).
pub const DEFAULT_STREAM: &str = "telemetry";
pub const DEFAULT_STREAM_SHARDS: u32 = 4;

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// HTTP listener: Kinesis API, /health, /metrics.
    #[arg(long, env = "FRESHET_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// MQTT listener (3.1.1 and 5).
    #[arg(long, env = "FRESHET_MQTT_ADDR", default_value = "127.0.0.1:1883")]
    pub mqtt_addr: SocketAddr,
    /// Override every delivery's buffering interval, e.g. `1s`, `500ms`, `2m` (default 60 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub buffer_interval: Option<Duration>,
    /// How often expired segments are deleted.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub retention_check_seconds: u64,
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The default rule of DESIGN.md.
fn default_gateway(mqtt_addr: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        listeners: vec![ListenerConfig::tcp(mqtt_addr)],
        rules: vec![RuleConfig {
            name: "telemetry".into(),
            sql: "SELECT *, topic(2) AS device_id FROM 'devices/+/telemetry'".into(),
            stream: DEFAULT_STREAM.into(),
            partition_key: "${topic(2)}".into(),
            error_stream: None,
        }],
        ..GatewayConfig::default()
    }
}

/// The default delivery of DESIGN.md: `telemetry` into the Delta table `telemetry`, partitioned by event date.
fn default_delivery(warehouse: &std::path::Path, buffer_interval: Option<Duration>) -> DeliveryConfig {
    let mut config = DeliveryConfig::new(
        DEFAULT_STREAM,
        DEFAULT_STREAM,
        DEFAULT_STREAM,
        warehouse.display().to_string(),
    );
    if let Some(interval) = buffer_interval {
        config.buffer_interval_ms = interval.as_millis() as u64;
    }
    config
}

fn http_router(
    store: Arc<dyn StreamStore>,
    metrics: PrometheusHandle,
    warehouse: &std::path::Path,
) -> Router {
    let query =
        freshet_query::QueryEngine::new(freshet_query::Warehouse::local(warehouse), Default::default());
    let dashboards = dashboards(metrics.clone(), warehouse);
    api::router(store, ApiConfig::default())
        .merge(freshet_query::router(Arc::new(query)))
        .nest("/dashboards", freshet_reports::dashboard::router(dashboards))
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(move || std::future::ready(metrics.render())))
}

/// `/dashboards`: the default `telemetry` dashboard and `/dashboards/_ops`, drawn from the same metrics as `/metrics`
/// (sampled every 5 s, the last hour kept).
fn dashboards(
    metrics: PrometheusHandle,
    warehouse: &std::path::Path,
) -> freshet_reports::dashboard::Dashboards {
    use freshet_reports::dashboard::{DashboardConfig, Dashboards, OpsSampler};
    let reports = vec![freshet_reports::ReportConfig::telemetry_minutely().name];
    let ops = OpsSampler::new(Arc::new(move || metrics.render()), warehouse, reports, 720);
    // The sampler ends with the process; it holds nothing that needs flushing.
    let _sampler = ops.spawn(Duration::from_secs(5), CancellationToken::new());
    Dashboards::with_ops(warehouse, vec![DashboardConfig::telemetry()], ops)
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Bind before anything else so "port in use" is the first, clear failure.
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http_addr))?;
    let config = args.store.config();
    let data_dir = config.data_dir.clone();
    let store = Store::open(config, Arc::new(SystemClock))
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let telemetry = StreamName::new(DEFAULT_STREAM)?;
    match store.create_stream(&telemetry, DEFAULT_STREAM_SHARDS).await {
        Ok(()) => {
            tracing::info!(stream = %telemetry, shards = DEFAULT_STREAM_SHARDS, "created the default stream")
        }
        Err(StoreError::StreamExists(_)) => {}
        Err(e) => return Err(e).context("creating the default stream"),
    }

    let shared: Arc<dyn StreamStore> = Arc::new(store.clone());
    // Start MQTT before spawning anything else, so a busy port or bad rule fails start-up cleanly.
    let gateway = freshet_ingest::start(default_gateway(args.mqtt_addr), shared.clone())
        .await
        .with_context(|| format!("starting the MQTT gateway on {}", args.mqtt_addr))?;

    let shutdown = CancellationToken::new();
    let retention = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        let every = Duration::from_secs(args.retention_check_seconds.max(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        match store.enforce_retention().await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(segments = n, "retention deleted expired segments"),
                            Err(e) => tracing::warn!(error = %e, "retention failed; will retry"),
                        }
                    }
                    () = shutdown.cancelled() => break,
                }
            }
        })
    };

    let warehouse = data_dir.join("warehouse");
    std::fs::create_dir_all(&warehouse).with_context(|| format!("creating {}", warehouse.display()))?;
    let delivery_config = default_delivery(&warehouse, args.buffer_interval);
    delivery_config.validate().context("the default delivery")?;
    let delivery = freshet_process::spawn_delivery(delivery_config, shared.clone(), shutdown.child_token());
    let reporter = crate::reports::default_reporter(&warehouse)?;
    let reports = freshet_reports::spawn_runtime(
        reporter,
        shared.clone(),
        freshet_reports::DEFAULT_CONSUMER,
        shutdown.child_token(),
    );
    let mut http = {
        let shutdown = shutdown.clone();
        tokio::spawn(api::serve(
            listener,
            http_router(shared, metrics, &warehouse),
            async move { shutdown.cancelled().await },
        ))
    };
    tracing::info!(
        http = %args.http_addr,
        mqtt = %args.mqtt_addr,
        data_dir = %data_dir.display(),
        "freshet is up"
    );

    let http_result = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            None
        }
        result = &mut http => Some(result),
    };
    // Stop MQTT first so everything acknowledged reaches the store, then flush the delivery.
    gateway.shutdown().await;
    let delivery_result = delivery.shutdown().await;
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
    delivery_result.context("delivery telemetry")?;
    tracing::info!("stopped");
    Ok(())
}
