//! `freshet streams ...`: create, inspect, reshard, write and read the streams of a data directory directly.
//!
//! Output is meant for people (tables) unless `--json` is given; records print as JSON lines, one per record,
//! with `data` as a string when it is UTF-8 and `data_base64` otherwise.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use freshet_storage::consumer::GroupReader;
use freshet_storage::{
    PutRecord, ReadLimits, Record, SequenceNumber, ShardId, StartingPosition, Store, StreamName, StreamStore,
    SystemClock,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::cli::StoreArgs;

#[derive(Debug, Args)]
pub struct StreamsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: StreamsCommand,
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Create a stream with uniform hash-key ranges.
    Create {
        name: StreamName,
        #[arg(long, default_value_t = 4)]
        shards: u32,
        #[arg(long)]
        retention_hours: Option<u32>,
    },
    /// List streams.
    List,
    /// Show a stream's shards, hash-key ranges, lineage and sequence-number ranges.
    Describe {
        name: StreamName,
        #[arg(long)]
        json: bool,
    },
    /// Delete a stream and all its records.
    Delete { name: StreamName },
    /// Split an open shard in two at a hash key (default: the middle of its range).
    Split {
        name: StreamName,
        shard: ShardId,
        #[arg(long)]
        hash_key: Option<u128>,
    },
    /// Merge two open shards with adjacent hash-key ranges.
    Merge {
        name: StreamName,
        shard: ShardId,
        adjacent: ShardId,
    },
    /// Scale to a number of uniform shards (between half and double the open shards).
    Scale { name: StreamName, shards: u32 },
    /// Append records. With --stdin, every line of standard input is one record, and every acknowledged record is
    /// printed as `<line number>\t<shard id>\t<sequence number>` as soon as it is durable.
    Put {
        name: StreamName,
        /// Partition key (default with --stdin: the line number, which spreads records over the shards).
        #[arg(long)]
        partition_key: Option<String>,
        /// The record's data.
        #[arg(long, conflicts_with = "stdin", required_unless_present = "stdin")]
        data: Option<String>,
        #[arg(long)]
        stdin: bool,
    },
    /// Read one shard from a position.
    Get {
        name: StreamName,
        shard: ShardId,
        /// trim-horizon, latest, at:<seq>, after:<seq> or at-timestamp:<epoch ms>.
        #[arg(long, default_value = "trim-horizon", value_parser = parse_position)]
        from: StartingPosition,
        /// Most records to print.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Follow every shard of a stream in lineage order (parents before children) until interrupted.
    Tail {
        name: StreamName,
        /// Start at `latest` (the default) or `trim-horizon`.
        #[arg(long, default_value = "latest")]
        from: String,
        /// Read as this named consumer, with durable checkpoints (resumes where it stopped).
        #[arg(long)]
        consumer: Option<String>,
        /// Stop after this many records (default: never).
        #[arg(long)]
        max_records: Option<usize>,
        /// Stop when nothing new arrives for this many milliseconds (default: never).
        #[arg(long)]
        idle_exit_ms: Option<u64>,
    },
}

fn parse_position(s: &str) -> Result<StartingPosition, String> {
    let parse_seq = |v: &str| v.parse::<SequenceNumber>().map_err(|e| e.to_string());
    match s.split_once(':') {
        None if s == "trim-horizon" => Ok(StartingPosition::TrimHorizon),
        None if s == "latest" => Ok(StartingPosition::Latest),
        Some(("at", v)) => parse_seq(v).map(StartingPosition::AtSequenceNumber),
        Some(("after", v)) => parse_seq(v).map(StartingPosition::AfterSequenceNumber),
        Some(("at-timestamp", v)) => v
            .parse()
            .map(StartingPosition::AtTimestamp)
            .map_err(|_| format!("{v:?} is not epoch millis")),
        _ => Err(format!(
            "{s:?} is not trim-horizon, latest, at:<seq>, after:<seq> or at-timestamp:<epoch ms>"
        )),
    }
}

fn record_json(shard: ShardId, record: &Record) -> serde_json::Value {
    let mut value = serde_json::json!({
        "shard_id": shard.to_string(),
        "sequence_number": record.sequence_number.to_string(),
        "partition_key": record.partition_key,
        "arrival_ms": record.arrival_ms,
    });
    match std::str::from_utf8(&record.data) {
        Ok(text) => value["data"] = text.into(),
        Err(_) => {
            value["data_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&record.data)
                .into()
        }
    }
    value
}

pub async fn run(args: StreamsArgs) -> anyhow::Result<()> {
    let config = args.store.config();
    let data_dir = config.data_dir.clone();
    let store = Store::open(config, Arc::new(SystemClock))
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let result = command(&store, args.command).await;
    store.shutdown().await;
    result
}

async fn command(store: &Store, command: StreamsCommand) -> anyhow::Result<()> {
    match command {
        StreamsCommand::Create {
            name,
            shards,
            retention_hours,
        } => {
            store.create_stream(&name, shards).await?;
            if let Some(hours) = retention_hours {
                store.set_retention_hours(&name, hours).await?;
            }
            println!("created stream {name} with {shards} shards");
        }
        StreamsCommand::List => {
            for name in store.list_streams().await? {
                println!("{name}");
            }
        }
        StreamsCommand::Describe { name, json } => {
            let desc = store.describe_stream(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&desc)?);
            } else {
                println!(
                    "stream {}  status {:?}  retention {} h",
                    desc.name, desc.status, desc.retention_hours
                );
                println!(
                    "{:<22} {:<22} {:<22} {:>40} {:>40} {:>20} {:>20}",
                    "shard",
                    "parent",
                    "adjacent parent",
                    "hash key start",
                    "hash key end",
                    "starting seq",
                    "ending seq"
                );
                for s in &desc.shards {
                    let show = |id: Option<ShardId>| id.map_or("-".to_string(), |i| i.to_string());
                    println!(
                        "{:<22} {:<22} {:<22} {:>40} {:>40} {:>20} {:>20}",
                        s.shard_id.to_string(),
                        show(s.parent_shard_id),
                        show(s.adjacent_parent_shard_id),
                        s.hash_key_range.start,
                        s.hash_key_range.end,
                        s.starting_sequence_number,
                        s.ending_sequence_number
                            .map_or("open".to_string(), |e| e.to_string()),
                    );
                }
            }
        }
        StreamsCommand::Delete { name } => {
            store.delete_stream(&name).await?;
            println!("deleted stream {name}");
        }
        StreamsCommand::Split {
            name,
            shard,
            hash_key,
        } => {
            let key = match hash_key {
                Some(k) => k,
                None => {
                    let desc = store.describe_stream(&name).await?;
                    let range = desc
                        .shard(shard)
                        .with_context(|| format!("shard {shard} not found in stream {name}"))?
                        .hash_key_range;
                    range.start + (range.end - range.start) / 2 + 1
                }
            };
            store.split_shard(&name, shard, key).await?;
            println!("split {shard} of {name} at hash key {key}");
        }
        StreamsCommand::Merge {
            name,
            shard,
            adjacent,
        } => {
            store.merge_shards(&name, shard, adjacent).await?;
            println!("merged {shard} and {adjacent} of {name}");
        }
        StreamsCommand::Scale { name, shards } => {
            store.update_shard_count(&name, shards).await?;
            println!("{name} now has {shards} open shards");
        }
        StreamsCommand::Put {
            name,
            partition_key,
            data,
            stdin,
        } => {
            if stdin {
                put_stdin(store, &name, partition_key).await?;
            } else {
                let key = partition_key.context("--partition-key is required with --data")?;
                let data = data.unwrap_or_default();
                let result = store.put_record(&name, PutRecord::new(key, data)).await?;
                println!("{}\t{}", result.shard_id, result.sequence_number);
            }
        }
        StreamsCommand::Get {
            name,
            shard,
            from,
            limit,
        } => {
            let mut iterator = store.get_shard_iterator(&name, shard, from).await?;
            let mut printed = 0;
            while printed < limit {
                let limits = ReadLimits {
                    records_max: (limit - printed).min(10_000),
                    ..ReadLimits::default()
                };
                let out = store.get_records(&iterator, limits).await?;
                for record in &out.records {
                    println!("{}", record_json(shard, record));
                }
                printed += out.records.len();
                match out.next_iterator {
                    Some(next) if !out.records.is_empty() => iterator = next,
                    _ => break,
                }
            }
        }
        StreamsCommand::Tail {
            name,
            from,
            consumer,
            max_records,
            idle_exit_ms,
        } => {
            tail(store, name, &from, consumer, max_records, idle_exit_ms).await?;
        }
    }
    Ok(())
}

/// Append stdin lines, batching whatever has arrived (up to a put's limit) into one put, so that a fast writer
/// gets group commits and a slow one gets each line acknowledged at once.
async fn put_stdin(store: &Store, name: &StreamName, partition_key: Option<String>) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, String)>(4 * freshet_storage::PUT_RECORDS_MAX);
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut n = 0u64;
        while let Some(line) = lines.next_line().await? {
            n += 1;
            if tx.send((n, line)).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    let mut out = tokio::io::stdout();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < freshet_storage::PUT_RECORDS_MAX {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        let records = batch
            .iter()
            .map(|(n, line)| {
                PutRecord::new(
                    partition_key.clone().unwrap_or_else(|| n.to_string()),
                    line.clone(),
                )
            })
            .collect();
        let results = store.put_records(name, records).await?;
        let mut text = String::new();
        for ((n, _), result) in batch.iter().zip(results) {
            let result = result.with_context(|| format!("appending line {n}"))?;
            text.push_str(&format!("{n}\t{}\t{}\n", result.shard_id, result.sequence_number));
        }
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    reader.await??;
    Ok(())
}

async fn tail(
    store: &Store,
    name: StreamName,
    from: &str,
    consumer: Option<String>,
    max_records: Option<usize>,
    idle_exit_ms: Option<u64>,
) -> anyhow::Result<()> {
    let from_latest = match from {
        "latest" => true,
        "trim-horizon" => false,
        other => bail!("--from {other:?} is not latest or trim-horizon"),
    };
    let store = Arc::new(store.clone());
    let mut reader = match consumer {
        Some(consumer) => GroupReader::new(store, name, &consumer).await?,
        None => GroupReader::ephemeral(store, name, from_latest).await?,
    };
    let mut printed = 0usize;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let batches = reader.poll(ReadLimits::default()).await?;
        let got = batches.iter().map(|b| b.records.len()).sum::<usize>();
        for batch in &batches {
            for record in &batch.records {
                println!("{}", record_json(batch.shard_id, record));
                printed += 1;
                if max_records.is_some_and(|m| printed >= m) {
                    return Ok(());
                }
            }
            reader.commit(batch).await?;
        }
        if got > 0 || !batches.is_empty() {
            idle_since = tokio::time::Instant::now();
            continue;
        }
        let wait = match idle_exit_ms {
            Some(ms) => {
                let left = Duration::from_millis(ms).saturating_sub(idle_since.elapsed());
                if left.is_zero() {
                    return Ok(());
                }
                left
            }
            None => Duration::from_secs(1),
        };
        tokio::select! {
            r = reader.wait(wait) => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
