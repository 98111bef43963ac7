//! `freshet deliveries ...` and `freshet tables ...`: run a delivery stream on a data directory, show deliveries,
//! and inspect or maintain the Delta tables of a warehouse. Wiring only; the work is in `freshet_process`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use freshet_process::config::{parse_duration, table_url};
use freshet_process::maintenance::{describe_table, list_tables, optimize_table, vacuum_table};
use freshet_process::{CancellationToken, DeliveryConfig, app_id};
use freshet_storage::{Store, StreamName, StreamStore, SystemClock};
use serde::Deserialize;

use crate::cli::StoreArgs;

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// A JSON file `{"deliveries": [ {name, stream, table, warehouse, ...}, ... ]}`.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DeliveriesCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Run one delivery until SIGTERM/SIGINT (then flush and exit). Without --config, flags define it.
    Run(RunArgs),
    /// List the deliveries of the config file.
    List,
    /// Show a delivery: its config, its table, and each shard's committed position.
    Describe { name: String },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Records of 10 fields (~200 B) to deliver.
    #[arg(long, default_value_t = 500_000)]
    pub records: u64,
    /// Records for the publish → committed latency run (1 s interval, one record every 20 ms).
    #[arg(long, default_value_t = 250)]
    pub latency_records: u64,
    /// Minutes of real time for the files-per-hour run (1,000 rows/s, default 60 s / 5 MiB buffering); 0 skips it.
    #[arg(long, default_value_t = 2)]
    pub files_minutes: u64,
    /// Throughput rounds: freshet (a new delivery into a new table each round) and DuckDB in turn; the report
    /// gives the median round and the median of the rounds' ratios.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// One throughput round of freshet: a delivery of every record of `bench` into its own table.
struct Round {
    secs: f64,
    startup_ms: f64,
    /// User and system CPU seconds and minor faults during the round.
    cpu: Option<(f64, f64, u64)>,
    rss_before: Option<u64>,
}

async fn freshet_round(
    store: &Arc<dyn StreamStore>,
    warehouse: &str,
    table: &str,
    records: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<Round> {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};
    let mut config = DeliveryConfig::new(table, "bench", table, warehouse);
    config.buffer_bytes = 128 << 20;
    config.buffer_interval_ms = 1_000;
    config.maintenance.optimize_every_commits = 0;
    // Throughput is timed from the moment the delivery has created its tables and loaded its positions (it starts
    // reading right then), as DuckDB's is timed once its connection is open: creating a table happens once per
    // delivery, not per row. How long that took is printed.
    let spawned = Instant::now();
    let d = freshet_process::spawn_delivery(config, store.clone(), shutdown.clone());
    d.started().await;
    let startup_ms = spawned.elapsed().as_secs_f64() * 1e3;
    let rss_before = rss_mib();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    // The input ends once every record is read: flush then, as DuckDB converts once it has read its whole file,
    // rather than idle until the 1 s interval (which would cap a run of N records at N rows/s).
    let mut flushed_at_end = false;
    while d.counters().rows.load(Relaxed) < records {
        anyhow::ensure!(!d.is_finished(), "the delivery stopped");
        if !flushed_at_end && d.counters().records_read.load(Relaxed) >= records {
            d.flush_now().await?;
            flushed_at_end = true;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(5)).await; // polling the delivery's counters
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| (after.0 - before.0, after.1 - before.1, after.2 - before.2));
    d.shutdown().await?;
    Ok(Round {
        secs,
        startup_ms,
        cpu,
        rss_before,
    })
}

/// A DuckDB round's seconds and CPU seconds, or what it printed when it failed.
type DuckRound = Result<(f64, Option<f64>), String>;

/// One DuckDB round: NDJSON → Parquet of the same records.
fn duckdb_round(path: &std::path::Path, round: usize) -> anyhow::Result<DuckRound> {
    let script = format!(
        "import duckdb,time\nc=duckdb.connect()\nt=time.perf_counter()\np=time.process_time()\n\
         c.sql(\"COPY (SELECT * FROM read_json_auto('{0}')) TO '{0}.{1}.parquet' (FORMAT parquet)\")\n\
         print(time.perf_counter()-t, time.process_time()-p)",
        path.display(),
        round
    );
    let duck = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()?;
    let out = String::from_utf8_lossy(&duck.stdout);
    let mut numbers = out.split_whitespace().map(|n| n.parse::<f64>().ok());
    Ok(match numbers.next().flatten() {
        Some(secs) => Ok((secs, numbers.next().flatten())),
        None => Err(String::from_utf8_lossy(&duck.stderr).trim().to_string()),
    })
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Delivery name (picks it from --config, or names a delivery defined by the flags below).
    #[arg(long, default_value = "telemetry")]
    pub name: String,
    #[arg(long, default_value = "telemetry")]
    pub stream: String,
    #[arg(long)]
    pub table: Option<String>,
    /// Warehouse (local directory or object_store URL); default `<data-dir>/warehouse`.
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Buffer interval, e.g. `1s`, `500ms`, `60s` (0–900 s).
    #[arg(long, value_parser = parse_duration)]
    pub buffer_interval: Option<std::time::Duration>,
    /// Buffer size in bytes (1–128 MiB).
    #[arg(long)]
    pub buffer_bytes: Option<u64>,
    /// object_store option for the warehouse, `key=value` (repeatable).
    #[arg(long = "storage-option")]
    pub storage_options: Vec<String>,
    /// Create the source stream with this many shards if it does not exist.
    #[arg(long)]
    pub create_stream_shards: Option<u32>,
    /// Also serve the store's Kinesis API here (the data directory is locked by this process).
    #[arg(long)]
    pub kinesis_addr: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    deliveries: Vec<DeliveryConfig>,
}

fn load_config(path: &PathBuf) -> anyhow::Result<Vec<DeliveryConfig>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ConfigFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for d in &file.deliveries {
        d.validate()?;
    }
    Ok(file.deliveries)
}

fn parse_options(opts: &[String]) -> anyhow::Result<HashMap<String, String>> {
    opts.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("storage option {kv:?} is not key=value"),
        })
        .collect()
}

pub async fn run(args: DeliveriesArgs) -> anyhow::Result<()> {
    let configs = match &args.config {
        Some(path) => load_config(path)?,
        None => Vec::new(),
    };
    match args.command {
        DeliveriesCommand::List => {
            for d in &configs {
                println!("{}\t{} -> {} ({})", d.name, d.stream, d.table, d.warehouse);
            }
            Ok(())
        }
        DeliveriesCommand::Describe { name } => {
            let d = configs
                .iter()
                .find(|d| d.name == name)
                .with_context(|| format!("no delivery {name:?} in the config"))?;
            let store = open_store(&args.store)?;
            let desc = store.describe_stream(&StreamName::new(d.stream.clone())?).await;
            let ids: Vec<String> = match &desc {
                Ok(desc) => desc.shards.iter().map(|s| app_id(&d.name, s.shard_id)).collect(),
                Err(_) => Vec::new(),
            };
            store.shutdown().await;
            let table = describe_table(&d.warehouse, &d.table, &d.storage_options, &ids).await;
            let out = serde_json::json!({
                "delivery": d,
                "table": table.as_ref().map_err(|e| e.to_string()).ok(),
                "table_error": table.as_ref().err().map(|e| e.to_string()),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        DeliveriesCommand::Run(run) => {
            let mut config = match configs.iter().find(|d| d.name == run.name) {
                Some(d) => d.clone(),
                None => {
                    let warehouse = run
                        .warehouse
                        .clone()
                        .unwrap_or_else(|| args.store.data_dir.join("warehouse").display().to_string());
                    DeliveryConfig::new(
                        &run.name,
                        &run.stream,
                        run.table.clone().unwrap_or_else(|| run.stream.clone()),
                        warehouse,
                    )
                }
            };
            if let Some(i) = run.buffer_interval {
                config.buffer_interval_ms = i.as_millis() as u64;
            }
            if let Some(b) = run.buffer_bytes {
                config.buffer_bytes = b;
            }
            config
                .storage_options
                .extend(parse_options(&run.storage_options)?);
            config.validate()?;
            run_one(&args.store, config, &run).await
        }
    }
}

fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<Store>> {
    let config = args.config();
    let dir = config.data_dir.clone();
    Ok(Arc::new(
        Store::open(config, Arc::new(SystemClock))
            .with_context(|| format!("opening the store in {}", dir.display()))?,
    ))
}

async fn run_one(store_args: &StoreArgs, config: DeliveryConfig, run: &RunArgs) -> anyhow::Result<()> {
    let store = open_store(store_args)?;
    let dyn_store: Arc<dyn StreamStore> = store.clone();
    let shutdown = CancellationToken::new();
    if let Some(shards) = run.create_stream_shards {
        let name = StreamName::new(config.stream.clone())?;
        match dyn_store.create_stream(&name, shards).await {
            Ok(()) | Err(freshet_storage::StoreError::StreamExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut api_task = None;
    let mut ready = serde_json::json!({"ready": true, "delivery": config.name, "table": config.table});
    if let Some(addr) = &run.kinesis_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the Kinesis API to {addr}"))?;
        ready["kinesis_addr"] = listener.local_addr()?.to_string().into();
        let router = freshet_storage::api::router(dyn_store.clone(), Default::default());
        let token = shutdown.clone();
        api_task = Some(tokio::spawn(freshet_storage::api::serve(
            listener,
            router,
            async move { token.cancelled().await },
        )));
    }
    let signals = {
        let token = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: flushing and stopping");
            token.cancel();
        })
    };
    let delivery = freshet_process::spawn_delivery(config, dyn_store, shutdown.clone());
    // Ready once the tables are open and positions loaded (or the delivery failed to start).
    tokio::select! {
        () = delivery.started() => {}
        () = shutdown.cancelled() => {}
    }
    println!("{ready}");
    // Stop on a signal, or when the delivery ends on its own (an error).
    while !shutdown.is_cancelled() && !delivery.is_finished() {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
    let result = delivery.shutdown().await;
    shutdown.cancel();
    signals.abort();
    if let Some(t) = api_task {
        let _ = t.await;
    }
    store.shutdown().await;
    result.map_err(Into::into)
}

#[derive(Debug, Args)]
pub struct TablesArgs {
    /// Warehouse (local directory or object_store URL).
    #[arg(
        long,
        global = true,
        env = "FRESHET_WAREHOUSE",
        default_value = "./freshet-data/warehouse"
    )]
    pub warehouse: String,
    /// object_store option for the warehouse, `key=value` (repeatable).
    #[arg(long = "storage-option", global = true)]
    pub storage_options: Vec<String>,
    #[command(subcommand)]
    pub command: TablesCommand,
}

#[derive(Debug, Subcommand)]
pub enum TablesCommand {
    /// List the Delta tables of the warehouse.
    List,
    /// Show a table's version, columns, partitioning, files and delivery positions (as JSON).
    Describe {
        name: String,
        /// Also show the txn version of these app ids (e.g. `telemetry-shardId-000000000000`).
        #[arg(long = "app-id")]
        app_ids: Vec<String>,
    },
    /// Compact small files toward a target size.
    Optimize {
        name: String,
        #[arg(long, default_value_t = 128 << 20)]
        target_file_bytes: u64,
    },
    /// Delete files no longer referenced for longer than the retention.
    Vacuum {
        name: String,
        #[arg(long, default_value_t = 168)]
        retention_hours: u32,
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn tables(args: TablesArgs) -> anyhow::Result<()> {
    let opts = parse_options(&args.storage_options)?;
    match args.command {
        TablesCommand::List => {
            for name in list_tables(&args.warehouse, &opts).await? {
                println!("{name}");
            }
        }
        TablesCommand::Describe { name, app_ids } => {
            let d = describe_table(&args.warehouse, &name, &opts, &app_ids).await?;
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
        TablesCommand::Optimize {
            name,
            target_file_bytes,
        } => {
            let r = optimize_table(table_url(&args.warehouse, &name)?, &opts, target_file_bytes).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        TablesCommand::Vacuum {
            name,
            retention_hours,
            dry_run,
        } => {
            let files = vacuum_table(
                table_url(&args.warehouse, &name)?,
                &opts,
                retention_hours,
                dry_run,
            )
            .await?;
            println!("{}", serde_json::json!({"dry_run": dry_run, "files": files}));
        }
    }
    Ok(())
}

/// One bench record: 10 fields of telemetry, about 200 B of JSON (the record size).
fn bench_record(i: u64) -> String {
    serde_json::json!({
        "device_id": format!("site-{:02}/device-{:06}", i % 17, i % 1000), "ts": 1_700_000_000_000u64 + i,
        "temp": 20.0123 + (i % 100) as f64 / 10.0, "humidity": 40.5 + (i % 7) as f64 * 0.25, "pressure": 1013.25,
        "battery": i % 100, "rssi": -67, "status": "nominal", "fw": "sensor-fw-1.2.3+build.4567", "seq": i
    })
    .to_string()
}

/// What the files-per-hour run measured.
struct FilesPerHour {
    minutes: u64,
    rows: u64,
    commits: i64,
    files_before: u64,
    files_after: u64,
    bytes: u64,
}

/// Deliver 1,000 rows/s for `minutes` of real time with every default of a delivery (60 s interval, 5 MiB
/// buffer, event-date partitions) but automatic compaction off; count the data files written, then compact the
/// table as `freshet tables optimize` does (128 MiB target) and count the active files left.
async fn files_per_hour(
    store: &Arc<dyn StreamStore>,
    warehouse: &str,
    minutes: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<FilesPerHour> {
    use freshet_storage::PutRecord;
    use std::time::{Duration, Instant};
    let stream = StreamName::new("hourly")?;
    store.create_stream(&stream, 4).await?;
    let mut config = DeliveryConfig::new("hourly", "hourly", "hourly", warehouse);
    config.maintenance.optimize_every_commits = 0;
    let d = freshet_process::spawn_delivery(config.clone(), store.clone(), shutdown.clone());
    d.started().await;
    let started = Instant::now();
    let window = Duration::from_secs(60 * minutes);
    let mut sent = 0u64;
    while started.elapsed() < window {
        anyhow::ensure!(!d.is_finished(), "the delivery stopped");
        // Keep the rate at 1,000 rows/s on average, in puts of up to 100 records every 100 ms.
        let due = (started.elapsed().as_millis() as u64).min(window.as_millis() as u64);
        let n = due.saturating_sub(sent).min(500);
        if n > 0 {
            let records = (sent..sent + n)
                .map(|i| PutRecord::new(format!("dev-{}", i % 1000), bench_record(i)))
                .collect();
            for r in store.put_records(&stream, records).await? {
                r?;
            }
            sent += n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the delivery committed during the window (the final flush at shutdown is not part of it).
    let during = describe_table(warehouse, "hourly", &config.storage_options, &[]).await?;
    let rows = d.counters().rows.load(std::sync::atomic::Ordering::Relaxed);
    d.shutdown().await?;
    let all = describe_table(warehouse, "hourly", &config.storage_options, &[]).await?;
    optimize_table(
        config.table_url()?,
        &config.storage_options,
        config.maintenance.target_file_bytes,
    )
    .await?;
    let after = describe_table(warehouse, "hourly", &config.storage_options, &[]).await?;
    Ok(FilesPerHour {
        minutes,
        rows,
        // Version 0 creates the table.
        commits: during.version.unwrap_or(0),
        files_before: during.files,
        files_after: after.files,
        bytes: all.bytes,
    })
}

/// CPU time (user, system seconds) and minor page faults this process has had so far, from /proc/self/stat (10 ms
/// resolution): on a shared machine the CPU a run costs is steadier than its wall-clock time.
fn cpu_seconds() -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3; minflt is field 10, utime and
    // stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let faults: u64 = fields.get(7)?.parse().ok()?;
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user / 100.0, system / 100.0, faults))
}

/// Resident memory of this process now and at its peak (VmRSS, VmHWM), in whole MiB.
fn rss_mib() -> Option<u64> {
    crate::bench::rss_mib(None).map(|m| m as u64)
}

fn peak_rss_mib() -> Option<u64> {
    crate::bench::peak_rss_mib(None).map(|m| m as u64)
}

/// Throughput (stream → committed Delta) vs DuckDB NDJSON → Parquet on the same records, latency at a 1 s interval,
/// peak RSS. Use a release build for numbers worth comparing.
/// `freshet bench delivery`: stream → committed Delta against DuckDB converting the same NDJSON to Parquet.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use freshet_storage::{PutRecord, StoreConfig};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir()?;
    let store: Arc<Store> = Arc::new(Store::open(
        StoreConfig::new(dir.path().join("data")),
        Arc::new(SystemClock),
    )?);
    let dyn_store: Arc<dyn StreamStore> = store.clone();
    let stream = StreamName::new("bench")?;
    dyn_store.create_stream(&stream, 4).await?;
    let mut ndjson = String::new();
    let mut batch = Vec::with_capacity(500);
    for i in 0..args.records {
        let r = bench_record(i);
        ndjson.push_str(&r);
        ndjson.push('\n');
        batch.push(PutRecord::new(format!("dev-{}", i % 1000), r));
        if batch.len() == 500 || i + 1 == args.records {
            for r in dyn_store.put_records(&stream, std::mem::take(&mut batch)).await? {
                r?;
            }
        }
    }
    let warehouse = dir.path().join("warehouse").display().to_string();
    let path = dir.path().join("bench.ndjson");
    std::fs::write(&path, &ndjson)?;
    drop(ndjson);
    let shutdown = CancellationToken::new();
    // The deliveries' own peak: the high-water mark restarts here (writing 5 to clear_refs resets VmHWM).
    let setup_peak = peak_rss_mib();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    // Rounds in turn, freshet then DuckDB, so that each round's ratio compares runs a moment apart.
    let mut rounds: Vec<(Round, DuckRound)> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let table = if round == 1 {
            "bench".to_string()
        } else {
            format!("bench_{round}")
        };
        let ours = freshet_round(&dyn_store, &warehouse, &table, args.records, &shutdown).await?;
        let theirs = duckdb_round(&path, round)?;
        rounds.push((ours, theirs));
    }
    let delivery_peak = peak_rss_mib();
    let ratio = |(ours, theirs): &(Round, DuckRound)| theirs.as_ref().ok().map(|(ds, _)| ds / ours.secs);
    let ratios: Vec<f64> = rounds.iter().filter_map(ratio).collect();
    // The median round: by ratio when DuckDB ran, else by freshet's time.
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|a, b| {
        let key = |i: usize| ratio(&rounds[i]).unwrap_or(1.0 / rounds[i].0.secs);
        key(*a).total_cmp(&key(*b))
    });
    let (median_round, duck) = &rounds[order[order.len() / 2]];
    let secs = median_round.secs;
    let startup_ms = median_round.startup_ms;
    let rss_before = median_round.rss_before;
    let cpu_split = median_round.cpu;
    let cpu = cpu_split.map(|(user, system, _)| user + system);
    let ours = args.records as f64 / secs;
    let (duck_secs, duck_cpu) = match duck {
        Ok((s, c)) => (Some(*s), *c),
        Err(_) => (None, None),
    };

    // Latency: one record every 20 ms into a fresh stream, 1 s interval; a record is queryable when the
    // delivery's committed row count covers it (each flush commits everything read so far).
    let lat_stream = StreamName::new("latency")?;
    dyn_store.create_stream(&lat_stream, 1).await?;
    let mut lat_config = DeliveryConfig::new("latency", "latency", "latency", &warehouse);
    lat_config.buffer_interval_ms = 1_000;
    let d = freshet_process::spawn_delivery(lat_config, dyn_store.clone(), shutdown.clone());
    d.started().await;
    let mut put_at = Vec::new();
    let mut latencies_ms = Vec::new();
    let mut next_put = Instant::now();
    while (latencies_ms.len() as u64) < args.latency_records {
        let committed = d.counters().rows.load(Relaxed) as usize;
        while latencies_ms.len() < committed.min(put_at.len()) {
            let t: Instant = put_at[latencies_ms.len()];
            latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if (put_at.len() as u64) < args.latency_records && Instant::now() >= next_put {
            dyn_store
                .put_record(
                    &lat_stream,
                    PutRecord::new("k", bench_record(put_at.len() as u64)),
                )
                .await?;
            put_at.push(Instant::now());
            next_put += Duration::from_millis(20);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    d.shutdown().await?;
    latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies_ms[((latencies_ms.len() as f64 - 1.0) * p) as usize];
    let files = match args.files_minutes {
        0 => None,
        m => Some(files_per_hour(&dyn_store, &warehouse, m, &shutdown).await?),
    };
    store.shutdown().await;

    println!(
        "freshet bench delivery ({} build)",
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        }
    );
    println!(
        "  records:                {} (10 fields, ~{} B each)",
        args.records,
        bench_record(1).len()
    );
    println!(
        "  freshet stream→Delta:   {ours:.0} rows/s ({secs:.2} s, 4 shards, 128 MiB / 1 s buffer, flushed once all \
         records were read; before that the delivery took {startup_ms:.0} ms to create its tables)"
    );
    if let Some((user, system, faults)) = cpu_split {
        println!(
            "  freshet CPU:            {:.2} s user+system ({user:.2} + {system:.2}; {:.2} µs per row)",
            user + system,
            (user + system) * 1e6 / args.records as f64
        );
        // Fresh memory costs system time (the kernel zeroes each page on first touch): the faults and the peak
        // show how much the delivery touched.
        println!(
            "  freshet page faults:    {faults} minor; resident {} MiB before the delivery, peak {} MiB during it",
            rss_before.unwrap_or(0),
            delivery_peak.unwrap_or(0)
        );
    }
    match duck_secs {
        Some(ds) => {
            let theirs = args.records as f64 / ds;
            println!("  DuckDB NDJSON→Parquet:  {theirs:.0} rows/s ({ds:.2} s)");
            let n = ratios.len();
            let median = crate::bench::median(ratios.clone()).unwrap_or(f64::NAN);
            println!(
                "  ratio freshet/DuckDB:   {median:.2}x (median of {n} rounds: {})",
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let (Some(dc), Some(c)) = (duck_cpu, cpu) {
                println!(
                    "  DuckDB CPU:             {dc:.2} s user+system; CPU ratio DuckDB/freshet {:.2}x (higher is \
                     better for freshet)",
                    dc / c
                );
            }
        }
        None => println!(
            "  DuckDB: not run ({})",
            duck.as_ref().err().map_or("", |e| e.as_str())
        ),
    }
    println!(
        "  publish→committed latency at 1 s interval: p50 {:.0} ms, p99 {:.0} ms ({} records)",
        pct(0.5),
        pct(0.99),
        latencies_ms.len()
    );
    if let Some(f) = files {
        // Extrapolation to an hour: files written scale with time (one file per partition per flush; the
        // flushes are periodic); after compaction an hour of data is ceil(bytes per hour / target) files per
        // partition (all rows of the run fall in one event-date partition).
        let scale = 60.0 / f.minutes as f64;
        let target = freshet_process::MaintenanceConfig::default().target_file_bytes;
        let bytes_hour = f.bytes as f64 * scale;
        let after_hour = (bytes_hour / target as f64).ceil().max(1.0);
        println!(
            "  files per hour at 1,000 rows/s, default 60 s / 5 MiB buffer: {:.0} before compaction, {after_hour:.0} after",
            f.files_before as f64 * scale
        );
        println!(
            "    measured over {} min: {} rows, {} commits, {} data files; `tables optimize` left {} file(s); \
             {:.1} MiB of Parquet per hour at a {} MiB target",
            f.minutes,
            f.rows,
            f.commits,
            f.files_before,
            f.files_after,
            bytes_hour / (1 << 20) as f64,
            target >> 20
        );
    }
    println!("  peak RSS: {} MiB", peak_rss_mib().max(setup_peak).unwrap_or(0));
    Ok(())
}
