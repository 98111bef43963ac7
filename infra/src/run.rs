//! `freshet run <role>`: one stage per process, for containers. The roles meet through the store role's Kinesis
//! API (`[remote] endpoint`, a [`RemoteStore`]) and the warehouse (`[warehouse]`: a shared directory or S3):
//!
//! | role | runs | needs |
//! |---|---|---|
//! | `store` | the stream store, the Kinesis API, retention; creates `[[streams]]` | `data_dir` |
//! | `gateway` | MQTT listeners and rules → the store | the store |
//! | `delivery` | every `[[deliveries]]` → Delta tables; commit events → `_freshet_events` | the store, the warehouse |
//! | `reports` | report functions consuming `_freshet_events`; outputs under `<warehouse>/reports/` | the store, the warehouse |
//! | `dashboard` | `POST /v1/sql` and `/dashboards` over the warehouse | the warehouse |
//!
//! The warehouse is a directory (shared between the containers) or `s3://bucket/prefix` with the options of
//! `[warehouse]` / the standard AWS variables; every role that uses it checks at start that it answers.
//!
//! Every role serves `/health` and `/metrics` on `[http] addr` (the store serves its Kinesis API there too).
//! SIGINT or SIGTERM: stop, flush what the role holds, exit 0. Also the pieces `freshet up` shares with the roles.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::{Args, ValueEnum};
use freshet_storage::remote::RemoteStore;
use freshet_storage::{Store, StoreError, StreamName, StreamStore};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigFlag, Overrides};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The stream store and its Kinesis API.
    Store,
    /// MQTT gateway and rules, appending to the store role.
    Gateway,
    /// Delivery streams from the store role into the warehouse.
    Delivery,
    /// Report functions on commits, reading `_freshet_events` from the store role.
    Reports,
    /// SQL and dashboards over the warehouse.
    Dashboard,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub role: Role,
    #[command(flatten)]
    pub file: ConfigFlag,
    /// Data directory (`data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This role's HTTP listener (`[http] addr`): /health, /metrics, and the role's API.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// The first MQTT listener (`gateway` role).
    #[arg(long)]
    pub mqtt_addr: Option<SocketAddr>,
    /// The store role's Kinesis API (`[remote] endpoint`), e.g. `http://store:8080`.
    #[arg(long)]
    pub store_url: Option<String>,
    /// Override every delivery's buffering interval, e.g. `1s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub buffer_interval: Option<Duration>,
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
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

/// `/health` (always open) and `/metrics` (behind the bearer token when one is configured; Prometheus sends it with
/// `authorization: {credentials: …}` in a scrape config).
pub fn base_router(metrics: PrometheusHandle, config: &Config) -> Router {
    let metrics = Router::new().route("/metrics", get(move || std::future::ready(metrics.render())));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .merge(guard(metrics, config.http.bearer_token.as_deref()))
}

/// `/dashboards`: the configured dashboards (`[[dashboards]]`, default `telemetry`) and `/dashboards/_ops`, drawn from the same metrics as
/// `/metrics` (sampled every 5 s, the last hour kept); behind the bearer token when one is configured.
pub fn dashboards_router(
    metrics: PrometheusHandle,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Router> {
    use freshet_reports::dashboard::{Dashboards, OpsSampler, router};
    let outputs = report_outputs(&warehouse(config)?)?;
    let reports = config.reports.iter().map(|r| r.name.clone()).collect();
    let ops = OpsSampler::new(Arc::new(move || metrics.render()), outputs.clone(), reports, 720);
    // Stops with the HTTP server (the token is cancelled at shutdown); nothing to join.
    let _sampler = ops.spawn(Duration::from_secs(5), shutdown.child_token());
    let dashboards = Dashboards::with_ops(outputs, config.dashboards.clone(), ops);
    Ok(Router::new().nest(
        "/dashboards",
        guard(router(dashboards), config.http.bearer_token.as_deref()),
    ))
}

/// Require `Authorization: Bearer <token>` on every route of `router` when a token is configured.
pub fn guard(router: Router, token: Option<&str>) -> Router {
    let Some(token) = token.map(|t| Arc::<str>::from(format!("Bearer {t}"))) else {
        return router;
    };
    router.route_layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let token = token.clone();
        async move {
            let ok = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| constant_time_eq(v.as_bytes(), token.as_bytes()));
            if ok { next.run(req).await } else { unauthorized() }
        }
    }))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    let body =
        serde_json::json!({"error": {"kind": "unauthorized", "message": "a valid bearer token is required"}});
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(body),
    )
        .into_response()
}

/// The SQL API over the configured warehouse, behind the bearer token.
pub fn sql_router(config: &Config) -> anyhow::Result<Router> {
    let engine = freshet_query::QueryEngine::new(warehouse(config)?, Default::default());
    Ok(guard(
        freshet_query::router(Arc::new(engine)),
        config.http.bearer_token.as_deref(),
    ))
}

/// The configured warehouse (`[warehouse]`: a directory, `file://` or `s3://bucket/prefix`).
pub fn warehouse(config: &Config) -> anyhow::Result<freshet_query::Warehouse> {
    config
        .open_warehouse()
        .with_context(|| format!("the warehouse {}", config.warehouse_url()))
}

/// Where the report outputs of `warehouse` live (beside its tables).
pub fn report_outputs(warehouse: &freshet_query::Warehouse) -> anyhow::Result<freshet_reports::OutputStore> {
    freshet_reports::OutputStore::for_warehouse(warehouse)
        .with_context(|| format!("the report outputs in {}", warehouse.url()))
}

/// How long the start-up check of an object-store warehouse may take.
pub const WAREHOUSE_PROBE_SECONDS: u64 = 30;

/// Check that the warehouse answers (one listing), so a wrong endpoint, missing bucket or bad credentials are a
/// one-line failure at start rather than retries later. A local warehouse is created if missing.
pub async fn probe_warehouse(warehouse: &freshet_query::Warehouse) -> anyhow::Result<()> {
    if let Some(dir) = warehouse.local_root() {
        return std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the warehouse {}", dir.display()));
    }
    let outputs = report_outputs(warehouse)?;
    match tokio::time::timeout(
        Duration::from_secs(WAREHOUSE_PROBE_SECONDS),
        outputs.list_dirs("reports"),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "the warehouse {} is not reachable: {e}",
            warehouse.url()
        )),
        Err(_) => Err(anyhow::anyhow!(
            "the warehouse {} did not answer within {WAREHOUSE_PROBE_SECONDS} s",
            warehouse.url()
        )),
    }
}

/// The report runtime over `store`, its outputs in the configured warehouse.
pub fn spawn_reports(
    config: &Config,
    warehouse: freshet_query::Warehouse,
    store: Arc<dyn StreamStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<freshet_reports::RuntimeHandle> {
    let engine = freshet_query::QueryEngine::new(warehouse, Default::default());
    let reporter =
        freshet_reports::Reporter::new(Arc::new(engine), config.reports.clone()).context("the reports")?;
    Ok(freshet_reports::spawn_runtime(
        reporter,
        store,
        freshet_reports::DEFAULT_CONSUMER,
        shutdown,
    ))
}

/// Install the Prometheus recorder and bind the HTTP listener (so a busy port is the first, clear failure).
pub async fn listen(config: &Config) -> anyhow::Result<(PrometheusHandle, tokio::net::TcpListener)> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.addr))?;
    Ok((metrics, listener))
}

/// Create every `[[streams]]` that does not exist (existing ones are left as they are).
pub async fn ensure_streams(store: &dyn StreamStore, config: &Config) -> anyhow::Result<()> {
    for s in &config.streams {
        let name = StreamName::new(s.name.clone())?;
        match store.create_stream(&name, s.shards).await {
            Ok(()) => {
                tracing::info!(stream = %name, shards = s.shards, "created stream");
                if let Some(h) = s.retention_hours {
                    store
                        .set_retention_hours(&name, h)
                        .await
                        .with_context(|| format!("setting the retention of {name}"))?;
                }
            }
            Err(StoreError::StreamExists(_)) => {}
            Err(e) => return Err(e).with_context(|| format!("creating stream {name}")),
        }
    }
    Ok(())
}

/// Open the embedded store and create the configured streams.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let store = Store::open(config.store_config(), Arc::new(freshet_storage::SystemClock))
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    ensure_streams(&store, config).await?;
    Ok(store)
}

/// Delete expired segments every `store.retention_check_seconds` until `shutdown`.
pub fn spawn_retention(
    store: Store,
    config: &Config,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(config.store.retention_check_seconds.max(1));
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
}

/// The store role's Kinesis API as a [`StreamStore`], once it answers (waiting up to
/// `remote.connect_wait_seconds`, so containers may start in any order).
pub async fn connect_remote(config: &Config) -> anyhow::Result<Arc<dyn StreamStore>> {
    let remote = RemoteStore::new(config.remote_config())
        .with_context(|| format!("the store endpoint {}", config.remote.endpoint))?;
    let deadline = Instant::now() + Duration::from_secs(config.remote.connect_wait_seconds);
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            r = remote.list_streams() => r,
            () = shutdown_signal() => anyhow::bail!("stopped while waiting for the store"),
        };
        match attempt {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!(
                    "the store at {} did not answer within {} s: {e}",
                    config.remote.endpoint,
                    config.remote.connect_wait_seconds
                )
            }
            Err(e) => {
                tracing::info!(endpoint = %config.remote.endpoint, error = %e, "waiting for the store");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
    let remote: Arc<dyn StreamStore> = Arc::new(remote);
    ensure_streams(remote.as_ref(), config).await?;
    Ok(remote)
}

/// Serve `router` on `listener` until `shutdown`.
pub fn spawn_http(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(freshet_storage::api::serve(listener, router, async move {
        shutdown.cancelled().await
    }))
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let path = config::resolve_path(args.file.config.as_deref());
    let overrides = Overrides {
        data_dir: args.data_dir,
        http_addr: args.http_addr,
        mqtt_addr: args.mqtt_addr,
        buffer_interval: args.buffer_interval,
        remote_endpoint: args.store_url,
        ..Overrides::default()
    };
    let config = config::load(path.as_deref(), &overrides)?;
    let (metrics, listener) = listen(&config).await?;
    let shutdown = CancellationToken::new();
    let role = format!("{:?}", args.role).to_lowercase();
    let mut router = base_router(metrics.clone(), &config);

    // What the role runs, and how it stops (in order, after the signal).
    let stop: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> = match args
        .role
    {
        Role::Store => {
            let store = open_store(&config).await?;
            let shared: Arc<dyn StreamStore> = Arc::new(store.clone());
            router = router.merge(freshet_storage::api::router(shared, config.api_config()));
            let retention = spawn_retention(store.clone(), &config, shutdown.clone());
            Box::pin(async move {
                let _ = retention.await;
                store.shutdown().await;
                Ok(())
            })
        }
        Role::Gateway => {
            let remote = connect_remote(&config).await?;
            let gateway = freshet_ingest::start(config.gateway.clone(), remote)
                .await
                .context("starting the MQTT gateway")?;
            Box::pin(async move {
                gateway.shutdown().await;
                Ok(())
            })
        }
        Role::Delivery => {
            probe_warehouse(&warehouse(&config)?).await?;
            let remote = connect_remote(&config).await?;
            let deliveries: Vec<_> = config
                .deliveries
                .iter()
                .map(|d| {
                    let name = d.name.clone();
                    let handle =
                        freshet_process::spawn_delivery(d.clone(), remote.clone(), shutdown.child_token());
                    (name, handle)
                })
                .collect();
            Box::pin(async move {
                let mut first_error = None;
                for (name, d) in deliveries {
                    if let Err(e) = d.shutdown().await {
                        tracing::error!(delivery = %name, error = %e, "delivery stopped with an error");
                        first_error.get_or_insert(anyhow::anyhow!("delivery {name}: {e}"));
                    }
                }
                first_error.map_or(Ok(()), Err)
            })
        }
        Role::Reports => {
            let warehouse = warehouse(&config)?;
            probe_warehouse(&warehouse).await?;
            let remote = connect_remote(&config).await?;
            let runtime = spawn_reports(&config, warehouse, remote, shutdown.child_token())?;
            Box::pin(async move { runtime.shutdown().await.context("report runtime") })
        }
        Role::Dashboard => {
            probe_warehouse(&warehouse(&config)?).await?;
            router = router
                .merge(sql_router(&config)?)
                .merge(dashboards_router(metrics, &config, &shutdown)?);
            Box::pin(async { Ok(()) })
        }
    };

    let mut http = spawn_http(listener, router, shutdown.clone());
    tracing::info!(role = %role, http = %config.http.addr, "freshet role is up");
    let http_result = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!(role = %role, "shutting down");
            None
        }
        result = &mut http => Some(result),
    };
    shutdown.cancel();
    let stopped = stop.await;
    let http_result = match http_result {
        Some(result) => result,
        None => http.await,
    };
    stopped?;
    http_result.context("HTTP server task")?.context("HTTP server")?;
    tracing::info!(role = %role, "stopped");
    Ok(())
}
