//! `freshet bench store`: append throughput (records/s, MB/s) of 100 B and 1 KiB records from concurrent
//! producers with group commit, ack latency at peak and at half of peak, read throughput, and peak RSS; then the
//! same load against NATS JetStream in the same run, and the ratios.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use freshet_storage::{FsyncPolicy, PutRecord, ReadLimits, StartingPosition, StreamName, StreamStore};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{histogram, load, machine, ms, nats, peak_rss_mib};

#[derive(Debug, Args)]
pub struct StoreBenchArgs {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Records per put (the most a put takes is 500).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Record sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100usize, 1024])]
    pub sizes: Vec<usize>,
    /// fsync policy for freshet: always (the default and the durable one), interval:<ms>, never.
    #[arg(long, default_value = "always", value_parser = crate::cli::parse_fsync)]
    pub fsync: FsyncPolicy,
    /// Directory for the data of both systems (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Skip the JetStream peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
struct Phase {
    records_per_s: f64,
    mb_per_s: f64,
    ack_ms_p50: f64,
    ack_ms_p99: f64,
}

#[derive(Debug, Default, Serialize)]
struct SizeResult {
    record_bytes: usize,
    freshet_peak: Phase,
    freshet_half_load: Phase,
    freshet_read: Phase,
    jetstream_peak: Option<Phase>,
    jetstream_read: Option<Phase>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    producers: usize,
    batch: usize,
    shards: u32,
    seconds: u64,
    fsync: String,
    peer: String,
    sizes: Vec<SizeResult>,
    freshet_peak_rss_mib: Option<f64>,
    jetstream_peak_rss_mib: Option<f64>,
}

/// A JSON-ish payload of exactly `size` bytes, like telemetry.
fn payload(size: usize) -> Bytes {
    let mut text = String::from("{\"device\":\"dev-0001\",\"temp\":21.5,\"hum\":40.1,\"v\":\"");
    while text.len() + 2 < size {
        text.push('x');
    }
    text.push_str("\"}");
    text.truncate(size);
    Bytes::from(text)
}

fn phase(records: u64, bytes_each: usize, elapsed: Duration, h: &Histogram<u64>) -> Phase {
    let secs = elapsed.as_secs_f64();
    Phase {
        records_per_s: records as f64 / secs,
        mb_per_s: (records as f64 * bytes_each as f64) / secs / 1e6,
        ack_ms_p50: ms(h, 0.5),
        ack_ms_p99: ms(h, 0.99),
    }
}

async fn freshet_phases(
    args: &StoreBenchArgs,
    size: usize,
    base: &std::path::Path,
) -> anyhow::Result<(Phase, Phase, Phase)> {
    let (_dir, store) = super::temp_store(base, args.fsync)?;
    let stream = StreamName::new("bench")?;
    store.create_stream(&stream, args.shards).await?;
    let keys: Arc<Vec<String>> = Arc::new((0..1024).map(|i| format!("device-{i:04}")).collect());
    let data = payload(size);
    let batch = args.batch.min(freshet_storage::PUT_RECORDS_MAX);
    let send = {
        let (store, stream, keys, data) = (store.clone(), stream.clone(), keys.clone(), data.clone());
        move |p: usize| {
            let (store, stream, keys, data) = (store.clone(), stream.clone(), keys.clone(), data.clone());
            async move {
                let records = (0..batch)
                    .map(|i| PutRecord::new(keys[(p * 131 + i) % keys.len()].clone(), data.clone()))
                    .collect();
                for result in store.put_records(&stream, records).await? {
                    result?;
                }
                anyhow::Ok(batch as u64)
            }
        }
    };
    let duration = Duration::from_secs(args.seconds);
    let (n, h, elapsed) = load(args.producers, duration, None, send.clone()).await?;
    let peak = phase(n, size, elapsed, &h);
    eprintln!(
        "  freshet peak: {:.0} records/s, ack p99 {:.2} ms",
        peak.records_per_s, peak.ack_ms_p99
    );

    // Half of the peak rate, spread evenly over the producers.
    let per_producer = peak.records_per_s / 2.0 / args.producers as f64;
    let interval = Duration::from_secs_f64(batch as f64 / per_producer.max(1.0));
    let (n, h, elapsed) = load(args.producers, duration, Some(interval), send).await?;
    let half = phase(n, size, elapsed, &h);
    eprintln!(
        "  freshet at half load: {:.0} records/s, ack p50 {:.2} ms p99 {:.2} ms",
        half.records_per_s, half.ack_ms_p50, half.ack_ms_p99
    );

    // Read everything back, one task per shard.
    let desc = store.describe_stream(&stream).await?;
    let start = Instant::now();
    let mut readers = Vec::new();
    for shard in desc.shards {
        let (store, stream) = (store.clone(), stream.clone());
        readers.push(tokio::spawn(async move {
            let mut it = store
                .get_shard_iterator(&stream, shard.shard_id, StartingPosition::TrimHorizon)
                .await?;
            let (mut count, mut bytes) = (0u64, 0u64);
            loop {
                let out = store.get_records(&it, ReadLimits::default()).await?;
                if out.records.is_empty() {
                    break;
                }
                count += out.records.len() as u64;
                bytes += out.records.iter().map(|r| r.data.len() as u64).sum::<u64>();
                match out.next_iterator {
                    Some(next) => it = next,
                    None => break,
                }
            }
            anyhow::Ok((count, bytes))
        }));
    }
    let mut read = 0;
    for r in readers {
        read += r.await??.0;
    }
    let read_phase = phase(read, size, start.elapsed(), &histogram());
    eprintln!("  freshet read: {:.0} records/s", read_phase.records_per_s);
    store.shutdown().await;
    Ok((peak, half, read_phase))
}

async fn jetstream_phases(args: &StoreBenchArgs, size: usize, url: &str) -> anyhow::Result<(Phase, Phase)> {
    use async_nats::jetstream;
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let name = format!("bench{size}");
    let _ = js.delete_stream(&name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating JetStream stream: {e}"))?;
    let data = payload(size);
    let batch = args.batch;
    let send = {
        let (js, data, name) = (js.clone(), data.clone(), name.clone());
        move |p: usize| {
            let (js, data, name) = (js.clone(), data.clone(), name.clone());
            async move {
                // Pipeline a batch of publishes, then wait for every ack: the same shape as one put of a batch.
                let subject = format!("{name}.p{p}");
                let mut acks = Vec::with_capacity(batch);
                for _ in 0..batch {
                    acks.push(
                        js.publish(subject.clone(), data.clone())
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                    );
                }
                for ack in
                    futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                        .await
                {
                    ack.map_err(|e| anyhow::anyhow!("JetStream ack: {e}"))?;
                }
                anyhow::Ok(batch as u64)
            }
        }
    };
    let (n, h, elapsed) = load(args.producers, Duration::from_secs(args.seconds), None, send).await?;
    let peak = phase(n, size, elapsed, &h);
    eprintln!(
        "  JetStream peak: {:.0} records/s, ack p99 {:.2} ms",
        peak.records_per_s, peak.ack_ms_p99
    );

    let stream = js.get_stream(&name).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let mut read = 0u64;
    while read < n {
        let mut messages = consumer
            .fetch()
            .max_messages(10_000)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let before = read;
        while let Some(m) = messages.next().await {
            m.map_err(|e| anyhow::anyhow!("{e}"))?;
            read += 1;
        }
        if read == before {
            break;
        }
    }
    let read_phase = phase(read, size, start.elapsed(), &histogram());
    eprintln!("  JetStream read: {:.0} records/s", read_phase.records_per_s);
    let _ = js.delete_stream(&name).await;
    Ok((peak, read_phase))
}

pub async fn run(args: StoreBenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > freshet_storage::PUT_RECORDS_MAX {
        bail!("--batch must be 1 to {}", freshet_storage::PUT_RECORDS_MAX);
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let peer_dir = tempfile::tempdir_in(&base)?;
    let server = if args.no_peer {
        None
    } else {
        let binary = nats::find_server()
            .context("nats-server is not on PATH: install Debian's `nats-server`, or pass --no-peer")?;
        Some((
            nats::NatsServer::start(&binary, peer_dir.path()).await?,
            nats::server_version(&binary),
        ))
    };
    let mut sizes = Vec::new();
    for &size in &args.sizes {
        eprintln!("records of {size} B:");
        let (freshet_peak, freshet_half_load, freshet_read) = freshet_phases(&args, size, &base).await?;
        let (jetstream_peak, jetstream_read) = match &server {
            Some((server, _)) => {
                let (p, r) = jetstream_phases(&args, size, &server.url).await?;
                (Some(p), Some(r))
            }
            None => (None, None),
        };
        sizes.push(SizeResult {
            record_bytes: size,
            freshet_peak,
            freshet_half_load,
            freshet_read,
            jetstream_peak,
            jetstream_read,
        });
    }
    let report = Report {
        machine: machine(),
        producers: args.producers,
        batch: args.batch,
        shards: args.shards,
        seconds: args.seconds,
        fsync: format!("{:?}", args.fsync),
        peer: server.as_ref().map_or("none".into(), |(_, v)| {
            format!("NATS JetStream ({v}), file store")
        }),
        sizes,
        freshet_peak_rss_mib: peak_rss_mib(None),
        jetstream_peak_rss_mib: server.as_ref().and_then(|(s, _)| peak_rss_mib(Some(s.pid()))),
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("\nfreshet bench store — {}", r.machine);
    println!(
        "{} producers, {} records per put, {} shards, {} s per phase, freshet fsync {}, peer: {}\n",
        r.producers, r.batch, r.shards, r.seconds, r.fsync, r.peer
    );
    println!("| record | system | appends/s | MB/s | ack p50 ms | ack p99 ms | reads/s | read MB/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for s in &r.sizes {
        let row = |name: &str, w: &Phase, rd: &Phase| {
            println!(
                "| {} B | {name} | {:.0} | {:.1} | {:.2} | {:.2} | {:.0} | {:.1} |",
                s.record_bytes,
                w.records_per_s,
                w.mb_per_s,
                w.ack_ms_p50,
                w.ack_ms_p99,
                rd.records_per_s,
                rd.mb_per_s
            )
        };
        row("freshet (peak)", &s.freshet_peak, &s.freshet_read);
        println!(
            "| {} B | freshet (half of peak) | {:.0} | {:.1} | {:.2} | {:.2} | | |",
            s.record_bytes,
            s.freshet_half_load.records_per_s,
            s.freshet_half_load.mb_per_s,
            s.freshet_half_load.ack_ms_p50,
            s.freshet_half_load.ack_ms_p99
        );
        if let (Some(p), Some(rd)) = (&s.jetstream_peak, &s.jetstream_read) {
            row("JetStream (peak)", p, rd);
        }
    }
    println!();
    for s in &r.sizes {
        if let (Some(p), Some(rd)) = (&s.jetstream_peak, &s.jetstream_read) {
            println!(
                "{} B: freshet/JetStream appends {:.2}x, reads {:.2}x",
                s.record_bytes,
                s.freshet_peak.records_per_s / p.records_per_s,
                s.freshet_read.records_per_s / rd.records_per_s
            );
        }
    }
    let rss = |v: Option<f64>| v.map_or("n/a".into(), |m| format!("{m:.0} MiB"));
    println!(
        "peak RSS: freshet (store + load generator in one process) {}, nats-server {}",
        rss(r.freshet_peak_rss_mib),
        rss(r.jetstream_peak_rss_mib)
    );
}
