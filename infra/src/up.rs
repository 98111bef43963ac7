//! `freshet up`: every built stage in one process, on embedded defaults.
//!
//! Today that is the stream store with the default `telemetry` stream (4 shards) and one HTTP listener serving the
//! Kinesis API (`POST /` with `X-Amz-Target`), `/health` and `/metrics` (Prometheus text). The MQTT gateway,
//! delivery, SQL, reports and dashboards join here as they are built. SIGINT or SIGTERM: stop accepting, finish
//! what is in flight, sync, exit 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Args;
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

fn http_router(store: Arc<dyn StreamStore>, metrics: PrometheusHandle) -> Router {
    api::router(store, ApiConfig::default())
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(move || std::future::ready(metrics.render())))
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

    let shared: Arc<dyn StreamStore> = Arc::new(store.clone());
    let mut http = {
        let shutdown = shutdown.clone();
        tokio::spawn(api::serve(listener, http_router(shared, metrics), async move {
            shutdown.cancelled().await
        }))
    };
    tracing::info!(http = %args.http_addr, data_dir = %data_dir.display(), "freshet is up");

    let http_result = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            shutdown.cancel();
            http.await
        }
        result = &mut http => result,
    };
    shutdown.cancel();
    let _ = retention.await;
    store.shutdown().await;
    http_result.context("HTTP server task")?.context("HTTP server")?;
    tracing::info!("stopped");
    Ok(())
}
