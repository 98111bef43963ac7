//! `freshet bench query`: a fixed suite of report-style SQL queries over a telemetry-like Delta table (10 million
//! rows by default) through freshet's query engine and, in the same run, through DuckDB (the Python package, a child
//! process) over the same Parquet files; then the commit → report output visible latency of the reports runtime.
//!
//! The fixture: table `telemetry` (device_id, ts, temp, humidity, pressure, battery, rssi, status, partitioned by
//! event_date; seven days of readings, rows spread evenly in time and pseudo-randomly over `--devices` devices) and
//! a small reference table `devices` (device_id, site, model, installed_year), written with deltalake's
//! `RecordBatchWriter` one commit per million rows. It is deterministic (no RNG state, a hash of the row number), and
//! cached under `--fixture-dir` so reruns reuse it (a `fixture.json` marker is written last; a directory without it
//! is regenerated).
//!
//! Queries: each engine runs each query `--repeat` times in a row and the best time counts (the first run warms the
//! page cache and metadata for both alike); freshet's time includes opening the Delta table at its latest version,
//! DuckDB's includes reading Parquet footers. Both collect the whole result as Arrow. Approximate percentiles are
//! compared with approximate ones (`approx_percentile_cont` / `approx_quantile`, both t-digest), exact with exact
//! (`percentile_cont` / `quantile_cont`). Both engines must return the same number of rows for every query, or the
//! bench fails after printing.
//!
//! Latency: a fresh local warehouse with a small table `live` and the report `live_minutely` (per device and minute,
//! the default pipeline's report shape) under the reports runtime on an embedded stream store. Each of
//! `--latency-commits` commits appends 100 rows and publishes its commit event on `_freshet_events` (as a delivery
//! does right after committing); the latency runs from the commit's return until `latest` names a run covering that
//! version (polled every millisecond).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use deltalake::DeltaTable;
use deltalake::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use freshet_query::{QueryEngine, QueryLimits, Warehouse};
use freshet_reports::{OutputFormat, ReportConfig, ReportQuery, Trigger};
use freshet_storage::{FsyncPolicy, StreamStore};
use serde::{Deserialize, Serialize};

use super::{histogram, machine, ms, record_latency};

/// 2025-11-01T00:00:00Z in microseconds: the first reading of the fixture.
const START_US: i64 = 1_761_955_200_000_000;
/// The fixture spans seven days.
const SPAN_US: i64 = 7 * 86_400_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Rows per record batch handed to the writer, and per commit.
const BATCH_ROWS: u64 = 131_072;
const COMMIT_ROWS: u64 = 1_048_576;
/// Bumped when the fixture's contents change, so an old cache is regenerated.
const FIXTURE_FORMAT: u32 = 1;

#[derive(Debug, Args)]
pub struct QueryBenchArgs {
    /// Rows of the telemetry table.
    #[arg(long, default_value_t = 10_000_000)]
    pub rows: u64,
    /// Distinct devices.
    #[arg(long, default_value_t = 200)]
    pub devices: u32,
    /// Where the fixture is cached (one subdirectory per rows/devices); reruns reuse it.
    #[arg(long, default_value = "./freshet-bench-query")]
    pub fixture_dir: PathBuf,
    /// Runs of each query per engine; the best counts.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Commits for the commit → report latency (0 skips it).
    #[arg(long, default_value_t = 50)]
    pub latency_commits: u32,
    /// Memory limit of each freshet query, in bytes (DuckDB runs with its defaults).
    #[arg(long, default_value_t = 4 << 30)]
    pub memory_bytes_max: usize,
    /// Only freshet (no DuckDB).
    #[arg(long)]
    pub no_peer: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One query of the suite, in each engine's dialect.
struct BenchQuery {
    name: &'static str,
    /// Relative tolerance when the two engines' result fingerprints are compared.
    tolerance: f64,
    freshet: &'static str,
    duckdb: &'static str,
}

/// Exact results may differ only by the order floating-point sums were added in.
const EXACT: f64 = 1e-9;
/// Exact percentiles: DuckDB's interpolation between neighbours rounds differently from DataFusion's (measured up
/// to ~1e-8 relative per value on this fixture); a wrong percentile or row set is off by far more.
const INTERPOLATED: f64 = 1e-6;
/// The two engines' t-digests differ; their percentiles of this fixture agree well within this.
const APPROXIMATE: f64 = 0.02;

/// Time literals below fall inside the fixture: day 3 is 2025-11-04.
const SUITE: &[BenchQuery] = &[
    BenchQuery {
        name: "minute_rollup",
        tolerance: EXACT,
        freshet: "SELECT date_trunc('minute', ts) AS minute, count(*) AS n, avg(temp) AS temp, \
                  max(pressure) AS pressure FROM telemetry GROUP BY 1 ORDER BY 1",
        duckdb: "SELECT date_trunc('minute', ts) AS minute, count(*) AS n, avg(temp) AS temp, \
                 max(pressure) AS pressure FROM telemetry GROUP BY 1 ORDER BY 1",
    },
    BenchQuery {
        name: "device_minute_day",
        tolerance: EXACT,
        freshet: "SELECT device_id, date_trunc('minute', ts) AS minute, count(*) AS n, avg(temp) AS avg_temp, \
                  min(temp) AS min_temp, max(temp) AS max_temp, avg(humidity) AS avg_humidity FROM telemetry \
                  WHERE event_date = DATE '2025-11-04' GROUP BY 1, 2",
        duckdb: "SELECT device_id, date_trunc('minute', ts) AS minute, count(*) AS n, avg(temp) AS avg_temp, \
                 min(temp) AS min_temp, max(temp) AS max_temp, avg(humidity) AS avg_humidity FROM telemetry \
                 WHERE event_date = DATE '2025-11-04' GROUP BY 1, 2",
    },
    BenchQuery {
        name: "device_summary",
        tolerance: EXACT,
        freshet: "SELECT device_id, count(*) AS n, avg(temp) AS temp, stddev(temp) AS sd, min(battery) AS battery, \
                  sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS not_ok FROM telemetry GROUP BY 1 ORDER BY 1",
        duckdb: "SELECT device_id, count(*) AS n, avg(temp) AS temp, stddev(temp) AS sd, min(battery) AS battery, \
                 sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS not_ok FROM telemetry GROUP BY 1 ORDER BY 1",
    },
    BenchQuery {
        name: "approx_percentiles",
        tolerance: APPROXIMATE,
        freshet: "SELECT device_id, approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY temp) AS p50, \
                  approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY temp) AS p95, \
                  approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY temp) AS p99 FROM telemetry GROUP BY 1",
        duckdb: "SELECT device_id, approx_quantile(temp, 0.5) AS p50, approx_quantile(temp, 0.95) AS p95, \
                 approx_quantile(temp, 0.99) AS p99 FROM telemetry GROUP BY 1",
    },
    BenchQuery {
        name: "exact_percentiles_day",
        tolerance: INTERPOLATED,
        freshet: "SELECT device_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY humidity) AS p50, \
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY humidity) AS p95 FROM telemetry \
                  WHERE event_date = DATE '2025-11-04' GROUP BY 1",
        duckdb: "SELECT device_id, quantile_cont(humidity, 0.5) AS p50, quantile_cont(humidity, 0.95) AS p95 \
                 FROM telemetry WHERE event_date = DATE '2025-11-04' GROUP BY 1",
    },
    BenchQuery {
        name: "top_devices",
        tolerance: EXACT,
        freshet: "SELECT device_id, max(temp) AS hottest, avg(temp) AS temp FROM telemetry GROUP BY 1 \
                  ORDER BY hottest DESC, device_id LIMIT 10",
        duckdb: "SELECT device_id, max(temp) AS hottest, avg(temp) AS temp FROM telemetry GROUP BY 1 \
                 ORDER BY hottest DESC, device_id LIMIT 10",
    },
    BenchQuery {
        name: "top_readings",
        tolerance: EXACT,
        freshet: "SELECT device_id, ts, temp, humidity FROM telemetry ORDER BY temp DESC, ts LIMIT 100",
        duckdb: "SELECT device_id, ts, temp, humidity FROM telemetry ORDER BY temp DESC, ts LIMIT 100",
    },
    BenchQuery {
        name: "time_range_hour",
        tolerance: EXACT,
        freshet: "SELECT device_id, count(*) AS n, avg(temp) AS temp, max(rssi) AS rssi FROM telemetry \
                  WHERE ts >= TIMESTAMP '2025-11-04T12:00:00Z' AND ts < TIMESTAMP '2025-11-04T13:00:00Z' \
                  GROUP BY 1",
        duckdb: "SELECT device_id, count(*) AS n, avg(temp) AS temp, max(rssi) AS rssi FROM telemetry \
                 WHERE ts >= TIMESTAMPTZ '2025-11-04T12:00:00Z' AND ts < TIMESTAMPTZ '2025-11-04T13:00:00Z' \
                 GROUP BY 1",
    },
    BenchQuery {
        name: "time_range_alarms",
        tolerance: EXACT,
        freshet: "SELECT device_id, ts, temp, status FROM telemetry WHERE status = 'alarm' \
                  AND ts >= TIMESTAMP '2025-11-06T00:00:00Z' AND ts < TIMESTAMP '2025-11-07T06:00:00Z'",
        duckdb: "SELECT device_id, ts, temp, status FROM telemetry WHERE status = 'alarm' \
                 AND ts >= TIMESTAMPTZ '2025-11-06T00:00:00Z' AND ts < TIMESTAMPTZ '2025-11-07T06:00:00Z'",
    },
    BenchQuery {
        name: "join_sites",
        tolerance: EXACT,
        freshet: "SELECT d.site, d.model, count(*) AS n, avg(t.temp) AS temp, avg(t.battery) AS battery \
                  FROM telemetry t JOIN devices d ON t.device_id = d.device_id GROUP BY 1, 2 ORDER BY 1, 2",
        duckdb: "SELECT d.site, d.model, count(*) AS n, avg(t.temp) AS temp, avg(t.battery) AS battery \
                 FROM telemetry t JOIN devices d ON t.device_id = d.device_id GROUP BY 1, 2 ORDER BY 1, 2",
    },
    BenchQuery {
        name: "daily_distinct",
        tolerance: EXACT,
        freshet: "SELECT event_date, count(*) AS n, count(DISTINCT device_id) AS devices, avg(battery) AS battery \
                  FROM telemetry GROUP BY 1 ORDER BY 1",
        duckdb: "SELECT event_date, count(*) AS n, count(DISTINCT device_id) AS devices, avg(battery) AS battery \
                 FROM telemetry GROUP BY 1 ORDER BY 1",
    },
];

/// What DuckDB runs: views over the Parquet files (file lists inlined as literals: DuckDB refuses `?` parameters
/// in a VIEW), then each query `repeat` times; prints JSON with each query's timings and result fingerprint (the
/// same one `fingerprint` computes on freshet's side). The session time zone is UTC, as freshet's.
const DUCKDB_SCRIPT: &str = r#"
import duckdb, json, sys, time
import pyarrow as pa, pyarrow.compute as pc
spec = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
# The progress bar of long queries is printed to stdout, which carries this script's JSON answer.
con.execute("SET enable_progress_bar = false")
con.execute(f"CREATE VIEW telemetry AS SELECT * FROM read_parquet({spec['telemetry']!r}, hive_partitioning = true)")
con.execute(f"CREATE VIEW devices AS SELECT * FROM read_parquet({spec['devices']!r})")

def to_arrow(result):
    # DuckDB 1.x: fetch_arrow_table; 2.x renamed it to_arrow_table.
    f = getattr(result, "to_arrow_table", None) or getattr(result, "fetch_arrow_table")
    return f()

def fingerprint(table):
    out = {}
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_timestamp(t):
            per = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[t.unit]
            v = pc.sum(col.cast(pa.int64()).cast(pa.float64())).as_py()
            out[name] = (v or 0.0) * per
        elif pa.types.is_date32(t):
            out[name] = float(pc.sum(col.cast(pa.int32()).cast(pa.int64())).as_py() or 0)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            out[name] = float(pc.sum(col.cast(pa.float64())).as_py() or 0.0)
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            out[name] = float(len(set(v for v in col.to_pylist() if v is not None)))
    return out

out = {"version": duckdb.__version__, "threads": con.execute("SELECT current_setting('threads')").fetchone()[0], "queries": {}}
for name, sql in spec["queries"]:
    times = []
    table = None
    for _ in range(spec["repeat"]):
        t = time.perf_counter()
        table = to_arrow(con.execute(sql))
        times.append((time.perf_counter() - t) * 1000.0)
    out["queries"][name] = {"ms": times, "rows": table.num_rows, "fingerprint": fingerprint(table)}
print(json.dumps(out), flush=True)
"#;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct FixtureMarker {
    format: u32,
    rows: u64,
    devices: u32,
}

#[derive(Debug, Serialize)]
struct QueryTiming {
    name: String,
    freshet_ms: Vec<f64>,
    freshet_rows: u64,
    duckdb_ms: Option<Vec<f64>>,
    duckdb_rows: Option<u64>,
    /// Per result column: the sum of its values (timestamps in microseconds, dates in days), or for text the number
    /// of distinct values.
    freshet_fingerprint: BTreeMap<String, f64>,
    duckdb_fingerprint: Option<BTreeMap<String, f64>>,
    /// Why the two engines' results differ, if they do.
    mismatch: Option<String>,
    /// Best freshet time / best DuckDB time.
    ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct LatencyResult {
    commits: u32,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct QueryBenchReport {
    machine: String,
    build: &'static str,
    rows: u64,
    devices: u32,
    data_files: usize,
    data_bytes: u64,
    repeat: u32,
    duckdb_version: Option<String>,
    queries: Vec<QueryTiming>,
    freshet_total_ms: f64,
    duckdb_total_ms: Option<f64>,
    total_ratio: Option<f64>,
    results_match: bool,
    commit_to_report: Option<LatencyResult>,
}

pub async fn run(args: QueryBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.devices > 0 && args.repeat > 0,
        "--rows, --devices and --repeat must be > 0"
    );
    let warehouse = fixture(&args).await?;
    let telemetry = data_files(&warehouse, "telemetry").await?;
    let devices = data_files(&warehouse, "devices").await?;
    let data_bytes: u64 = telemetry
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "fixture: {} rows in {} files ({:.0} MiB) under {}",
        args.rows,
        telemetry.len(),
        data_bytes as f64 / (1 << 20) as f64,
        warehouse.display()
    );

    let limits = QueryLimits {
        memory_bytes_max: args.memory_bytes_max,
        time_max: Duration::from_secs(3_600),
        result_bytes_max: 4 << 30,
        queries_max: 1,
        ..QueryLimits::default()
    };
    let engine = QueryEngine::new(Warehouse::local(&warehouse), limits);
    let mut timings = Vec::new();
    for q in SUITE {
        let mut times = Vec::new();
        let mut rows = 0;
        let mut print = BTreeMap::new();
        for _ in 0..args.repeat {
            let started = Instant::now();
            let result = engine
                .sql(q.freshet)
                .await
                .with_context(|| format!("freshet: query {}", q.name))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            rows = result.batches.iter().map(|b| b.num_rows() as u64).sum();
            print = fingerprint(&result.batches)?;
        }
        eprintln!("freshet {:<22} {:>10.1} ms  {rows} rows", q.name, best(&times));
        timings.push(QueryTiming {
            name: q.name.into(),
            freshet_ms: times,
            freshet_rows: rows,
            duckdb_ms: None,
            duckdb_rows: None,
            freshet_fingerprint: print,
            duckdb_fingerprint: None,
            mismatch: None,
            ratio: None,
        });
    }

    let mut duckdb_version = None;
    if !args.no_peer {
        let peer = run_duckdb(&telemetry, &devices, args.repeat)?;
        duckdb_version = Some(format!("{} ({} threads)", peer.version, peer.threads));
        for (t, q) in timings.iter_mut().zip(SUITE) {
            let theirs = peer
                .queries
                .get(&t.name)
                .with_context(|| format!("DuckDB did not answer {}", t.name))?;
            t.ratio = Some(best(&t.freshet_ms) / best(&theirs.ms));
            t.duckdb_ms = Some(theirs.ms.clone());
            t.duckdb_rows = Some(theirs.rows);
            t.mismatch = compare(
                t.freshet_rows,
                &t.freshet_fingerprint,
                theirs.rows,
                &theirs.fingerprint,
                q.tolerance,
            );
            t.duckdb_fingerprint = Some(theirs.fingerprint.clone());
        }
    }

    let commit_to_report = if args.latency_commits > 0 {
        Some(commit_latency(args.latency_commits).await?)
    } else {
        None
    };

    let freshet_total_ms: f64 = timings.iter().map(|t| best(&t.freshet_ms)).sum();
    let duckdb_total_ms: Option<f64> = timings
        .iter()
        .map(|t| t.duckdb_ms.as_ref().map(|m| best(m)))
        .sum();
    let results_match = timings.iter().all(|t| t.mismatch.is_none());
    let report = QueryBenchReport {
        machine: machine(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rows: args.rows,
        devices: args.devices,
        data_files: telemetry.len(),
        data_bytes,
        repeat: args.repeat,
        duckdb_version,
        total_ratio: duckdb_total_ms.map(|d| freshet_total_ms / d),
        queries: timings,
        freshet_total_ms,
        duckdb_total_ms,
        results_match,
        commit_to_report,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if !report.results_match {
        for t in report.queries.iter().filter(|t| t.mismatch.is_some()) {
            eprintln!("{}: {}", t.name, t.mismatch.as_deref().unwrap_or_default());
        }
        bail!("freshet and DuckDB gave different results (marked ✗ above)");
    }
    Ok(())
}

fn best(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

fn print_report(r: &QueryBenchReport) {
    println!(
        "freshet bench query ({} build): {} rows, {} devices, {} Parquet files ({:.0} MiB); best of {} runs; {}",
        r.build,
        r.rows,
        r.devices,
        r.data_files,
        r.data_bytes as f64 / (1 << 20) as f64,
        r.repeat,
        r.machine
    );
    if let Some(v) = &r.duckdb_version {
        println!("DuckDB {v}");
    }
    println!(
        "  {:<22} {:>12} {:>12} {:>8} {:>10}",
        "query", "freshet ms", "DuckDB ms", "ratio", "rows"
    );
    for t in &r.queries {
        let duck = t
            .duckdb_ms
            .as_ref()
            .map_or("-".into(), |m| format!("{:.1}", best(m)));
        let ratio = t.ratio.map_or("-".into(), |x| format!("{x:.2}x"));
        let rows = match (&t.mismatch, t.duckdb_rows) {
            (Some(_), Some(d)) if d != t.freshet_rows => format!("{} ✗ DuckDB {d}", t.freshet_rows),
            (Some(_), _) => format!("{} ✗ values", t.freshet_rows),
            (None, Some(_)) => format!("{} ✓", t.freshet_rows),
            (None, None) => t.freshet_rows.to_string(),
        };
        println!(
            "  {:<22} {:>12.1} {:>12} {:>8} {:>10}",
            t.name,
            best(&t.freshet_ms),
            duck,
            ratio,
            rows
        );
    }
    println!(
        "  {:<22} {:>12.1} {:>12} {:>8}",
        "total",
        r.freshet_total_ms,
        r.duckdb_total_ms.map_or("-".into(), |d| format!("{d:.1}")),
        r.total_ratio.map_or("-".into(), |x| format!("{x:.2}x"))
    );
    if let Some(l) = &r.commit_to_report {
        println!(
            "commit → report latest visible ({} commits): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.commits, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}

/// The fixture warehouse for `args`, generated unless its marker says it is complete.
async fn fixture(args: &QueryBenchArgs) -> anyhow::Result<PathBuf> {
    let dir = args
        .fixture_dir
        .join(format!("rows-{}-devices-{}", args.rows, args.devices));
    let marker = FixtureMarker {
        format: FIXTURE_FORMAT,
        rows: args.rows,
        devices: args.devices,
    };
    let marker_path = dir.join("fixture.json");
    let warehouse = std::path::absolute(dir.join("warehouse"))?;
    if let Ok(text) = std::fs::read(&marker_path)
        && serde_json::from_slice::<FixtureMarker>(&text).is_ok_and(|m| m == marker)
    {
        return Ok(warehouse);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the partial fixture {}", dir.display()))?;
    }
    std::fs::create_dir_all(&warehouse)?;
    let started = Instant::now();
    write_devices(&warehouse, args.devices).await?;
    write_telemetry(&warehouse, args.rows, args.devices).await?;
    std::fs::write(&marker_path, serde_json::to_vec(&marker)?)?;
    eprintln!(
        "fixture written in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        warehouse.display()
    );
    Ok(warehouse)
}

/// SplitMix64: a well-mixed 64-bit hash of the row number, so every value is a pure function of it.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform value in [0, 1) from `h`'s bits starting at `shift`.
fn unit(h: u64, shift: u32) -> f64 {
    ((h >> shift) & 0xFFFF) as f64 / 65_536.0
}

fn telemetry_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("ts", ts, false),
        Field::new("temp", DataType::Float64, true),
        Field::new("humidity", DataType::Float64, true),
        Field::new("pressure", DataType::Float64, true),
        Field::new("battery", DataType::Float64, true),
        Field::new("rssi", DataType::Int64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("event_date", DataType::Date32, false),
    ]))
}

fn device_name(d: u64) -> String {
    format!("dev-{d:05}")
}

/// Rows `[from, to)` of the telemetry table of `rows` rows over `devices` devices.
fn telemetry_batch(
    schema: &SchemaRef,
    from: u64,
    to: u64,
    rows: u64,
    devices: u32,
) -> anyhow::Result<RecordBatch> {
    let n = (to - from) as usize;
    let mut device = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut temp = Vec::with_capacity(n);
    let mut humidity = Vec::with_capacity(n);
    let mut pressure = Vec::with_capacity(n);
    let mut battery = Vec::with_capacity(n);
    let mut rssi = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut date = Vec::with_capacity(n);
    for i in from..to {
        let h = mix(i);
        let d = (h % u64::from(devices)) as u32;
        let t = START_US + (i128::from(i) * i128::from(SPAN_US) / i128::from(rows)) as i64;
        let progress = (t - START_US) as f64 / SPAN_US as f64;
        device.push(device_name(u64::from(d)));
        ts.push(t);
        temp.push(15.0 + f64::from(d % 10) + 10.0 * unit(h, 8));
        humidity.push(30.0 + 40.0 * unit(h, 24));
        pressure.push(990.0 + 40.0 * unit(h, 40));
        battery.push(100.0 - 60.0 * progress - 5.0 * unit(h, 12));
        rssi.push(-100 + ((h >> 48) % 60) as i64);
        status.push(match (h >> 20) % 1000 {
            0..5 => "alarm",
            5..30 => "warn",
            _ => "ok",
        });
        date.push(t.div_euclid(MICROS_PER_DAY) as i32);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(device)),
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(Float64Array::from(temp)),
        Arc::new(Float64Array::from(humidity)),
        Arc::new(Float64Array::from(pressure)),
        Arc::new(Float64Array::from(battery)),
        Arc::new(Int64Array::from(rssi)),
        Arc::new(StringArray::from(status)),
        Arc::new(Date32Array::from(date)),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

async fn create_table(
    warehouse: &Path,
    name: &str,
    schema: &SchemaRef,
    partitions: &[&str],
) -> anyhow::Result<DeltaTable> {
    let dir = warehouse.join(name);
    std::fs::create_dir_all(&dir)?;
    let url = url::Url::from_directory_path(&dir)
        .map_err(|()| anyhow::anyhow!("{} is not absolute", dir.display()))?;
    let fields: StructType = schema.as_ref().try_into_kernel()?;
    // Built without loading: the directory has no log yet.
    Ok(deltalake::DeltaTableBuilder::from_url(url)?
        .build()?
        .create()
        .with_table_name(name)
        .with_columns(fields.fields().cloned())
        .with_partition_columns(partitions.iter().map(|p| p.to_string()))
        .await?)
}

async fn write_telemetry(warehouse: &Path, rows: u64, devices: u32) -> anyhow::Result<()> {
    let schema = telemetry_schema();
    let mut table = create_table(warehouse, "telemetry", &schema, &["event_date"]).await?;
    let mut writer = RecordBatchWriter::for_table(&table)?;
    let progress = indicatif::ProgressBar::new(rows);
    let mut from = 0;
    while from < rows {
        let commit_end = (from + COMMIT_ROWS).min(rows);
        while from < commit_end {
            let to = (from + BATCH_ROWS).min(commit_end);
            writer
                .write(telemetry_batch(&schema, from, to, rows, devices)?)
                .await?;
            progress.inc(to - from);
            from = to;
        }
        writer.flush_and_commit(&mut table).await?;
    }
    progress.finish_and_clear();
    Ok(())
}

async fn write_devices(warehouse: &Path, devices: u32) -> anyhow::Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("installed_year", DataType::Int32, false),
    ]));
    let ids: Vec<u64> = (0..u64::from(devices)).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(ids.iter().map(|d| device_name(*d)))),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|d| format!("site-{:02}", mix(d + 1) % 12)),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|d| format!("model-{}", d % 3)),
            )),
            Arc::new(Int32Array::from_iter_values(
                ids.iter().map(|d| 2018 + (d % 7) as i32),
            )),
        ],
    )?;
    let mut table = create_table(warehouse, "devices", &schema, &[]).await?;
    let mut writer = RecordBatchWriter::for_table(&table)?;
    writer.write(batch).await?;
    writer.flush_and_commit(&mut table).await?;
    Ok(())
}

/// The local paths of the data files of `<warehouse>/<name>` at its latest version.
async fn data_files(warehouse: &Path, name: &str) -> anyhow::Result<Vec<String>> {
    let url = url::Url::from_directory_path(warehouse.join(name))
        .map_err(|()| anyhow::anyhow!("{} is not absolute", warehouse.display()))?;
    let table = deltalake::open_table(url).await?;
    table
        .get_file_uris()?
        .map(|uri| match url::Url::parse(&uri) {
            // deltalake gives local files as plain paths, object stores as URLs.
            Err(_) => Ok(uri),
            Ok(url) => url
                .to_file_path()
                .map(|p| p.display().to_string())
                .map_err(|()| anyhow::anyhow!("data file {uri} is not local")),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct DuckdbAnswer {
    version: String,
    threads: serde_json::Value,
    queries: BTreeMap<String, DuckdbQuery>,
}

#[derive(Debug, Deserialize)]
struct DuckdbQuery {
    ms: Vec<f64>,
    rows: u64,
    fingerprint: BTreeMap<String, f64>,
}

/// Per column of `batches`: the sum of its numbers (timestamps as microseconds since the epoch, dates as days), or
/// the number of distinct texts; other types are left out. Sums are taken in f64, as DuckDB's side does.
fn fingerprint(batches: &[RecordBatch]) -> anyhow::Result<BTreeMap<String, f64>> {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::compute::cast;
    let mut out = BTreeMap::new();
    let Some(first) = batches.first() else {
        return Ok(out);
    };
    for (i, field) in first.schema().fields().iter().enumerate() {
        let dt = field.data_type();
        let per_micro = match dt {
            DataType::Timestamp(TimeUnit::Second, _) => Some(1e6),
            DataType::Timestamp(TimeUnit::Millisecond, _) => Some(1e3),
            DataType::Timestamp(TimeUnit::Microsecond, _) => Some(1.0),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(1e-3),
            _ => None,
        };
        let value = if dt.is_numeric() || per_micro.is_some() || matches!(dt, DataType::Date32) {
            let mut sum = 0.0;
            for b in batches {
                let col = b.column(i);
                let col = if per_micro.is_some() || matches!(dt, DataType::Date32) {
                    let ints = cast(col, &DataType::Int64)?;
                    cast(&ints, &DataType::Float64)?
                } else {
                    cast(col, &DataType::Float64)?
                };
                let floats = col.as_primitive::<deltalake::arrow::datatypes::Float64Type>();
                sum += floats.iter().flatten().sum::<f64>();
            }
            sum * per_micro.unwrap_or(1.0)
        } else if matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            let mut distinct = std::collections::BTreeSet::new();
            for b in batches {
                let col = cast(b.column(i), &DataType::Utf8)?;
                let strings = col.as_string::<i32>();
                distinct.extend(
                    (0..strings.len())
                        .filter(|r| strings.is_valid(*r))
                        .map(|r| strings.value(r).to_string()),
                );
            }
            distinct.len() as f64
        } else {
            continue;
        };
        out.insert(field.name().clone(), value);
    }
    Ok(out)
}

/// Why freshet's result (`rows`, `ours`) and DuckDB's (`their_rows`, `theirs`) differ, or None when they agree:
/// the same rows, the same columns, every column's fingerprint within `tolerance` (relative).
fn compare(
    rows: u64,
    ours: &BTreeMap<String, f64>,
    their_rows: u64,
    theirs: &BTreeMap<String, f64>,
    tolerance: f64,
) -> Option<String> {
    if rows != their_rows {
        return Some(format!("freshet returned {rows} rows, DuckDB {their_rows}"));
    }
    if ours.keys().ne(theirs.keys()) {
        return Some(format!(
            "compared columns differ: freshet {:?}, DuckDB {:?}",
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>()
        ));
    }
    let differ: Vec<String> = ours
        .iter()
        .filter_map(|(name, a)| {
            let b = theirs[name];
            let scale = a.abs().max(b.abs()).max(1.0);
            ((a - b).abs() > tolerance * scale).then(|| format!("{name}: freshet {a} vs DuckDB {b}"))
        })
        .collect();
    (!differ.is_empty()).then(|| differ.join("; "))
}

fn run_duckdb(telemetry: &[String], devices: &[String], repeat: u32) -> anyhow::Result<DuckdbAnswer> {
    use std::io::Write;
    let spec = serde_json::json!({
        "telemetry": telemetry,
        "devices": devices,
        "repeat": repeat,
        "queries": SUITE.iter().map(|q| [q.name, q.duckdb]).collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3 (DuckDB: pip install duckdb pyarrow, see scripts/test-deps.sh)")?;
    child
        .stdin
        .take()
        .context("python3 stdin")?
        .write_all(&serde_json::to_vec(&spec)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("DuckDB run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "DuckDB's answer: {}",
            String::from_utf8_lossy(&out.stdout)
                .chars()
                .take(500)
                .collect::<String>()
        )
    })
}

/// Commit → `latest` visible, through the reports runtime on a fresh local warehouse.
async fn commit_latency(commits: u32) -> anyhow::Result<LatencyResult> {
    let base = tempfile::tempdir()?;
    let warehouse = std::path::absolute(base.path().join("warehouse"))?;
    std::fs::create_dir_all(&warehouse)?;
    let (_store_dir, store) = super::temp_store(base.path(), FsyncPolicy::Always)?;
    let store: Arc<dyn StreamStore> = Arc::new(store);
    freshet_process::events::ensure_events_stream(&store).await?;

    // The shape of a delivered table: the telemetry columns plus delivery's `_arrival_time` lineage column (the
    // minutely report falls back to it for rows without an event time).
    let mut fields: Vec<Field> = telemetry_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        "_arrival_time",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    ));
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut table = create_table(&warehouse, "live", &schema, &["event_date"]).await?;
    // The runtime `freshet up` runs (run::spawn_reports), configured with this one report on this warehouse.
    let config = crate::config::Config {
        data_dir: base.path().to_path_buf(),
        warehouse: crate::config::WarehouseSection {
            url: Some(warehouse.display().to_string()),
            ..Default::default()
        },
        reports: vec![ReportConfig {
            name: "live_minutely".into(),
            query: ReportQuery::MinutelyAggregates {
                table: "live".into(),
                key: "device_id".into(),
            },
            trigger: Trigger {
                tables: vec!["live".into()],
                schedule: None,
            },
            outputs: OutputFormat::all(),
            attempts_max: 3,
            retry_backoff_ms: 100,
        }],
        ..Default::default()
    };
    let opened = crate::run::warehouse(&config)?;
    let outputs = crate::run::report_outputs(&opened)?;
    let cancel = freshet_reports::CancellationToken::new();
    let runtime = crate::run::spawn_reports(&config, opened, store.clone(), cancel)?;

    let mut h = histogram();
    let mut worst = Duration::ZERO;
    // One warm-up commit, then the measured ones.
    for k in 0..=u64::from(commits) {
        let rows = 100;
        let from = k * rows;
        let readings = telemetry_batch(&telemetry_schema(), from, from + rows, 1_000_000, 20)?;
        let mut columns = readings.columns().to_vec();
        columns.push(readings.column(1).clone());
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        table = table.write([batch]).await?;
        let version = table.version().context("a committed version")?;
        let committed = Instant::now();
        let event = freshet_process::CommitEvent {
            table: "live".into(),
            version: version as i64,
            location: url::Url::from_directory_path(warehouse.join("live"))
                .map_or_else(|()| String::new(), |u| u.to_string()),
            delivery: "bench".into(),
            rows,
            files_added: 1,
            bytes_added: 0,
            error_rows: 0,
            event_time_min: None,
            event_time_max: None,
            committed_at_ms: chrono_now_ms(),
            replayed: false,
        };
        freshet_process::events::publish(&store, &event).await;
        let deadline = committed + Duration::from_secs(60);
        loop {
            let latest = outputs.latest("live_minutely").await?;
            if latest.is_some_and(|p| p.versions.get("live").is_some_and(|v| *v >= version)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("no report run covered live@v{version} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await; // polling the pointer with a deadline
        }
        let latency = committed.elapsed();
        if k > 0 {
            record_latency(&mut h, latency);
            worst = worst.max(latency);
        }
    }
    runtime.shutdown().await?;
    Ok(LatencyResult {
        commits,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        max_ms: worst.as_secs_f64() * 1000.0,
    })
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_catch_a_different_answer() {
        let schema = telemetry_schema();
        let batch = telemetry_batch(&schema, 0, 1_000, 1_000, 10).unwrap();
        let ours = fingerprint(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(ours["device_id"], 10.0);
        assert_eq!(
            ours["ts"],
            (0..1_000)
                .map(|i| (START_US + i * SPAN_US / 1_000) as f64)
                .sum::<f64>()
        );
        // Split into two batches: the same fingerprint.
        let split = [batch.slice(0, 400), batch.slice(400, 600)];
        assert!(compare(1_000, &ours, 1_000, &fingerprint(&split).unwrap(), EXACT).is_none());
        // One row fewer, or one value changed in a column, is a mismatch naming the column.
        let fewer = fingerprint(&[batch.slice(0, 999)]).unwrap();
        assert!(
            compare(1_000, &ours, 999, &fewer, EXACT)
                .unwrap()
                .contains("rows")
        );
        let mut changed = ours.clone();
        *changed.get_mut("temp").unwrap() += 0.001;
        assert!(
            compare(1_000, &ours, 1_000, &changed, EXACT)
                .unwrap()
                .starts_with("temp:")
        );
        assert!(compare(1_000, &ours, 1_000, &changed, APPROXIMATE).is_none());
    }

    #[test]
    fn rows_are_spread_over_seven_days_and_every_device() {
        let schema = telemetry_schema();
        let batch = telemetry_batch(&schema, 0, 7_000, 7_000, 10).unwrap();
        let dates = batch.column(8).as_any().downcast_ref::<Date32Array>().unwrap();
        let first = dates.value(0);
        assert_eq!(first, 20_393); // 2025-11-01
        assert_eq!(dates.value(6_999), first + 6);
        let devices = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let distinct: std::collections::BTreeSet<&str> = devices.iter().flatten().collect();
        assert_eq!(distinct.len(), 10);
        // Deterministic: the same rows again are the same values.
        assert_eq!(batch, telemetry_batch(&schema, 0, 7_000, 7_000, 10).unwrap());
    }
}
