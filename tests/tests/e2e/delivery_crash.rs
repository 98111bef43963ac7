//! Exactly-once delivery under crashes: a real `freshet deliveries run` process (which also serves the store's
//! Kinesis API) is killed with SIGKILL at random moments, at least 20 times, while a writer keeps putting records
//! through the API (retrying while the process is down). With a 50 ms buffer interval the process is nearly always
//! between reading, writing Parquet, committing and announcing, so kills land before writes, between the Parquet
//! write and the commit, and right after commits. At the end every (shard, sequence number) of the stream is in the
//! table exactly once, every acknowledged put among them, as read by Python `deltalake` and by DuckDB.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshet_storage::{Store, StoreConfig, StreamName, SystemClock};
use freshet_tests::{
    base64_encode, fnv1a64_lines, freshet_bin, kinesis_call, poll_until, python_json, read_stream,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const KILLS: usize = 22;

fn start(data_dir: &std::path::Path, warehouse: &std::path::Path, addr: &str) -> Child {
    let mut child = Command::new(freshet_bin())
        .args(["deliveries", "--log", "warn", "--data-dir"])
        .arg(data_dir)
        .args([
            "run",
            "--name",
            "crash",
            "--stream",
            "crash",
            "--table",
            "crash",
            "--warehouse",
        ])
        .arg(warehouse)
        .args([
            "--buffer-interval",
            "50ms",
            "--create-stream-shards",
            "4",
            "--kinesis-addr",
            addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The process prints one JSON line once the store is open, the API listens and the delivery runs.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    assert_eq!(ready["ready"], true);
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_exactly_once_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let warehouse = dir.path().join("warehouse");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");

    // The writer: batches of 25 records through the Kinesis API, retried while the process is down.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<u64, (String, String)>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked, sent, addr) = (stop.clone(), acked.clone(), sent.clone(), addr.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<u64> = (n..n + 25).collect();
                let records: Vec<Value> = ids
                    .iter()
                    .map(|i| {
                        let data = json!({"id": format!("r{i}"), "v": i % 1000, "ts": 1_700_000_000_000u64 + i});
                        json!({"Data": base64_encode(data.to_string().as_bytes()), "PartitionKey": format!("dev{}", i % 13)})
                    })
                    .collect();
                let body = json!({"StreamName": "crash", "Records": records});
                match kinesis_call(&addr, "PutRecords", &body).await {
                    Ok(out) => {
                        let mut acked = acked.lock().unwrap();
                        for (i, r) in ids.iter().zip(out["Records"].as_array().unwrap()) {
                            if let (Some(shard), Some(seq)) =
                                (r["ShardId"].as_str(), r["SequenceNumber"].as_str())
                            {
                                acked.insert(*i, (shard.to_string(), seq.to_string()));
                            }
                        }
                        n += 25;
                        sent.fetch_add(25, Ordering::Relaxed);
                    }
                    // Down (killed, restarting) or the stream not yet created: pace the retries.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(0xDE17A);
    for kill in 0..KILLS {
        let mut child = start(&data_dir, &warehouse, &addr);
        // Let it run a random while (20–1500 ms) with records arriving, then SIGKILL.
        let before = sent.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..1500))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!(
            "kill {kill}: {} records acknowledged so far (+{})",
            sent.load(Ordering::Relaxed),
            sent.load(Ordering::Relaxed) - before
        );
    }
    // Keep writing through one more run so the end is not right after a kill, then stop the writer.
    let mut child = start(&data_dir, &warehouse, &addr);
    let target = sent.load(Ordering::Relaxed) + 200;
    let sent_poll = sent.clone();
    tokio::task::spawn_blocking(move || {
        poll_until(Duration::from_secs(60), "200 more records acknowledged", || {
            (sent_poll.load(Ordering::Relaxed) >= target).then_some(())
        })
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // The truth: every record the store holds (acknowledged or not).
    let (expected, last_seq) = {
        let store = Store::open(StoreConfig::new(&data_dir), Arc::new(SystemClock)).unwrap();
        let stream = StreamName::new("crash").unwrap();
        let mut lines = Vec::new();
        let mut last_seq = BTreeMap::new();
        let mut positions = BTreeSet::new();
        for (shard, records) in read_stream(&store, &stream).await {
            for r in &records {
                let v: Value = serde_json::from_slice(&r.data).unwrap();
                lines.push(format!(
                    "{shard}|{}|{}",
                    r.sequence_number,
                    v["id"].as_str().unwrap()
                ));
                positions.insert((shard.to_string(), r.sequence_number.to_string()));
            }
            if let Some(r) = records.last() {
                last_seq.insert(shard.to_string(), r.sequence_number.to_u64().unwrap() as i64);
            }
        }
        for (i, pos) in acked.lock().unwrap().iter() {
            assert!(
                positions.contains(pos),
                "acknowledged record r{i} at {pos:?} is not in the store"
            );
        }
        store.shutdown().await;
        lines.sort();
        (lines, last_seq)
    };
    assert!(
        expected.len() >= 500,
        "only {} records were written",
        expected.len()
    );

    // A last run catches up; poll the table's txn versions (via `freshet tables describe`) until it has all.
    let mut child = start(&data_dir, &warehouse, &addr);
    let app_ids: Vec<String> = last_seq.keys().map(|s| format!("crash-{s}")).collect();
    let warehouse_arg = warehouse.display().to_string();
    tokio::task::spawn_blocking(move || {
        poll_until(
            Duration::from_secs(120),
            "the table's txn versions to reach the stream's end",
            || {
                let mut cmd = Command::new(freshet_bin());
                cmd.args([
                    "tables",
                    "--log",
                    "error",
                    "--warehouse",
                    &warehouse_arg,
                    "describe",
                    "crash",
                ]);
                for id in &app_ids {
                    cmd.args(["--app-id", id]);
                }
                let out = cmd.output().unwrap();
                let desc: Value = serde_json::from_slice(&out.stdout).ok()?;
                let txns: BTreeMap<String, i64> = desc["app_transactions"]
                    .as_array()?
                    .iter()
                    .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_i64().unwrap()))
                    .collect();
                last_seq
                    .iter()
                    .all(|(shard, seq)| txns.get(&format!("crash-{shard}")).is_some_and(|v| v >= seq))
                    .then_some(())
            },
        )
    })
    .await
    .unwrap();
    // SIGTERM: flush and exit cleanly.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "the delivery did not exit cleanly on SIGTERM"
    );

    let desc = freshet_process::maintenance::describe_table(
        &warehouse.display().to_string(),
        "crash",
        &Default::default(),
        &[],
    )
    .await
    .unwrap();
    let on_disk = count_parquet(&warehouse.join("crash"));
    eprintln!(
        "table at version {:?}: {} active files, {on_disk} Parquet files on disk (the rest: unreferenced, from \
         kills between write and commit, or compacted away)",
        desc.version, desc.files
    );
    assert!(
        desc.version.unwrap_or(0) >= KILLS as i64,
        "too few commits to have been interrupted: {desc:?}"
    );
    let seen = python_json(
        "delivery_read.py",
        &[&warehouse.join("crash").display().to_string(), "id"],
    );
    let checksum = fnv1a64_lines(&expected).to_string();
    for reader in ["deltalake", "duckdb"] {
        let r = &seen[reader];
        assert_eq!(
            r["rows"],
            json!(expected.len()),
            "{reader}: duplicates or losses: {r}"
        );
        assert_eq!(r["distinct_positions"], json!(expected.len()), "{reader}: {r}");
        assert_eq!(
            r["checksum"],
            json!(checksum),
            "{reader}: the rows differ from the stream: {r}"
        );
    }
}

fn count_parquet(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                count_parquet(&p)
            } else {
                usize::from(
                    p.extension().is_some_and(|e| e == "parquet")
                        && !p.to_string_lossy().contains("_delta_log"),
                )
            }
        })
        .sum()
}
