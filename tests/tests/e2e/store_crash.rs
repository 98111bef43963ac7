//! Crash test of the store: a real `freshet streams put --stdin` process appends continuously and prints every
//! acknowledged record; this test kills it with SIGKILL at random moments, again and again, and after each kill
//! checks that every acknowledged record is present exactly once, in order, and that no torn record is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use freshet_storage::{SequenceNumber, ShardId, Store, StoreConfig, StreamName, SystemClock};
use freshet_tests::{freshet_bin, poll_until, read_stream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KILLS: usize = 24;

/// One acknowledged record: which payload, where it landed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Acked {
    shard: ShardId,
    seq: SequenceNumber,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let stream = StreamName::new("crash").unwrap();
    let status = Command::new(freshet_bin())
        .args(["streams", "--data-dir"])
        .arg(&data_dir)
        .args(["create", "crash", "--shards", "4"])
        .status()
        .unwrap();
    assert!(status.success());

    let mut rng = StdRng::seed_from_u64(0xC0FFEE);
    let mut next_payload = 0u64;
    // payload id -> where it was acknowledged
    let mut acked: BTreeMap<u64, Acked> = BTreeMap::new();
    let mut total_acked_in_runs = Vec::new();
    for kill in 0..KILLS {
        let mut child = Command::new(freshet_bin())
            .args(["streams", "--log", "warn", "--data-dir"])
            .arg(&data_dir)
            .args(["put", "crash", "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Line n of this run (1-based) carries payload `first + n - 1`.
        let first = next_payload;
        let stop = Arc::new(AtomicBool::new(false));
        let mut stdin = child.stdin.take().unwrap();
        let writer_stop = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut n = first;
            while !writer_stop.load(Ordering::Relaxed) {
                let mut chunk = String::new();
                for _ in 0..50 {
                    // Payloads of varied length, so frames straddle page and write boundaries.
                    chunk.push_str(&format!("payload-{n}-{}\n", "x".repeat((n % 97) as usize)));
                    n += 1;
                }
                if stdin.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
            n
        });
        let stdout = child.stdout.take().unwrap();
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<(u64, Acked)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split('\t');
                let n: u64 = parts.next().unwrap().parse().unwrap();
                let shard: ShardId = parts.next().unwrap().parse().unwrap();
                let seq: SequenceNumber = parts.next().unwrap().parse().unwrap();
                if ack_tx.send((first + n - 1, Acked { shard, seq })).is_err() {
                    break;
                }
            }
        });
        // Let it acknowledge something, then kill it at a random moment.
        let mut this_run = Vec::new();
        poll_until(Duration::from_secs(30), "the first acknowledgements", || {
            this_run.extend(ack_rx.try_iter());
            (!this_run.is_empty()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(0..120))); // the random kill moment, not a wait
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        next_payload = writer.join().unwrap();
        reader.join().unwrap();
        this_run.extend(ack_rx.try_iter());
        total_acked_in_runs.push(this_run.len());
        for (payload, at) in this_run {
            assert!(
                acked.insert(payload, at).is_none(),
                "payload {payload} acknowledged twice"
            );
        }

        // Recover in this process and check everything acknowledged so far.
        let store = Store::open(StoreConfig::new(&data_dir), Arc::new(SystemClock)).unwrap();
        let shards = read_stream(&store, &stream).await;
        let mut found: BTreeMap<u64, Acked> = BTreeMap::new();
        let mut seqs = BTreeSet::new();
        for (shard, records) in shards {
            let mut last = None;
            for record in records {
                assert!(
                    last < Some(record.sequence_number),
                    "kill {kill}: {shard} out of order"
                );
                last = Some(record.sequence_number);
                assert!(seqs.insert(record.sequence_number), "sequence number reused");
                let text = std::str::from_utf8(&record.data).expect("record data is the UTF-8 we wrote");
                let payload: u64 = text
                    .strip_prefix("payload-")
                    .and_then(|t| t.split('-').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("kill {kill}: torn or foreign record {text:?}"));
                assert_eq!(
                    text,
                    format!("payload-{payload}-{}", "x".repeat((payload % 97) as usize))
                );
                let at = Acked {
                    shard,
                    seq: record.sequence_number,
                };
                assert!(
                    found.insert(payload, at).is_none(),
                    "kill {kill}: payload {payload} stored twice"
                );
            }
        }
        for (payload, at) in &acked {
            assert_eq!(
                found.get(payload),
                Some(at),
                "kill {kill}: acknowledged payload {payload} lost or moved"
            );
        }
        store.shutdown().await;
    }
    assert!(total_acked_in_runs.iter().all(|&n| n > 0));
    eprintln!("acknowledged per run before SIGKILL: {total_acked_in_runs:?}");
}
