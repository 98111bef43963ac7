//! `freshet bench ...`: the benchmark harness. Each benchmark measures freshet and, in the same run and with the
//! same load, a peer system, and prints the ratios. Numbers come from release builds; nothing here is a test.

pub mod api;
pub mod dashboard;
pub mod ingest;
pub mod nats;
pub mod query;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Stream store appends and reads, against NATS JetStream.
    Store(store::StoreBenchArgs),
    /// Kinesis API PutRecords and GetRecords over HTTP, against kinesalite.
    Api(api::ApiBenchArgs),
    /// MQTT publishes at QoS 1 into the gateway with durable appends, against Mosquitto and a bare rumqttd.
    Ingest(ingest::IngestBenchArgs),
    /// Delivery from the stream store into committed Delta, against DuckDB converting NDJSON to Parquet.
    Delivery(crate::deliveries::BenchArgs),
    /// Rendering a dashboard of 10 panels x 10,000 points: the HTML page with inline SVG, and a panel's PNG.
    Dashboard(dashboard::DashboardBenchArgs),
    /// Report-style SQL over 10 M rows in Delta against DuckDB on the same Parquet files; commit → report latency.
    Query(query::QueryBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Store(args) => store::run(args).await,
        BenchCommand::Api(args) => api::run(args).await,
        BenchCommand::Delivery(args) => crate::deliveries::bench(args).await,
        BenchCommand::Dashboard(args) => dashboard::run(args).await,
        BenchCommand::Ingest(args) => ingest::run(args).await,
        BenchCommand::Query(args) => query::run(args).await,
    }
}

/// Latencies in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record_latency(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 60_000_000));
}

pub fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Peak resident set size of a process, in MiB (VmHWM of /proc/<pid>/status).
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

/// Resident set size of a process now, in MiB (VmRSS).
pub fn rss_mib(pid: Option<u32>) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// A memory line (`field`, in kB) of /proc/<pid>/status (this process without a pid), in MiB.
fn status_mib(pid: Option<u32>, field: &str) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A short description of the machine, for the results table.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

/// Run `producers` tasks for `duration`; each sends a batch per `interval` (or back to back when `None`).
/// Latency is measured from when a batch was due, so a stalled store cannot hide its backlog.
pub async fn load<F, Fut>(
    producers: usize,
    duration: Duration,
    interval: Option<Duration>,
    send: F,
) -> anyhow::Result<(u64, Histogram<u64>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let send = Arc::new(send);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut sent = 0u64;
            let mut ticker = interval.map(|every| {
                let mut t = tokio::time::interval_at(
                    tokio::time::Instant::now() + every * p as u32 / producers as u32,
                    every,
                );
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while start.elapsed() < duration {
                let due = match ticker.as_mut() {
                    Some(t) => t.tick().await.into_std(),
                    None => Instant::now(),
                };
                sent += send(p).await?;
                record_latency(&mut h, due.elapsed());
            }
            anyhow::Ok((sent, h))
        }));
    }
    let mut total = 0;
    let mut h = histogram();
    for task in tasks {
        let (sent, ph) = task.await??;
        total += sent;
        h.add(ph)?;
    }
    Ok((total, h, start.elapsed()))
}

/// An embedded store with the given fsync policy in a new temporary directory under `base` (deleted on drop).
pub fn temp_store(
    base: &std::path::Path,
    fsync: freshet_storage::FsyncPolicy,
) -> anyhow::Result<(tempfile::TempDir, freshet_storage::Store)> {
    let dir = tempfile::tempdir_in(base)?;
    let mut config = freshet_storage::StoreConfig::new(dir.path());
    config.log.fsync = fsync;
    let store = freshet_storage::Store::open(config, Arc::new(freshet_storage::SystemClock))?;
    Ok((dir, store))
}

/// Wait until something accepts TCP connections on `addr` (a peer server the bench started), for at most 10 s.
pub async fn wait_listening(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("{what} did not listen on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the port with a deadline
    }
    Ok(())
}

#[cfg(test)]
mod median_tests {
    use super::median;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
