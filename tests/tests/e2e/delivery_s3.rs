//! Delivery into a Delta table on a real S3-compatible server (moto_server from PyPI `moto[server]`, started here on
//! 127.0.0.1). Commits go through object_store's conditional put (`If-None-Match: *`), which moto answers with 412
//! when the log entry exists. Two deliveries with the *same name* run at once on the same stream while records keep
//! arriving: they race for every commit; each record must still be in the table exactly once (the loser of a race
//! either finds its txn versions landed or is fenced and reloads its positions from the table).

use std::sync::Arc;
use std::time::Duration;

use freshet_process::maintenance::describe_table;
use freshet_process::{CancellationToken, DeliveryConfig, app_id, spawn_delivery};
use freshet_storage::{PutRecord, Store, StoreConfig, StreamName, StreamStore, SystemClock};
use freshet_tests::s3::{s3_options, start_moto};
use freshet_tests::{fnv1a64_lines, python_json, read_stream};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_s3_conditional_put_with_racing_writers() {
    let (_moto, addr) = start_moto().await;
    let options = s3_options(&addr);

    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
    let stream = StreamName::new("s3feed").unwrap();
    store.create_stream(&stream, 2).await.unwrap();
    let mut config = DeliveryConfig::new("s3d", "s3feed", "feed", "s3://freshet/wh");
    config.storage_options = options.clone();
    config.buffer_interval_ms = 100;
    config.maintenance.optimize_every_commits = 0;

    let shutdown = CancellationToken::new();
    let a = spawn_delivery(config.clone(), store.clone(), shutdown.clone());
    let b = spawn_delivery(config.clone(), store.clone(), shutdown.clone());
    let mut n = 0;
    for round in 0..30 {
        let records = (0..40)
            .map(|_| {
                n += 1;
                PutRecord::new(
                    format!("k{}", n % 7),
                    json!({"id": format!("r{n}"), "round": round}).to_string(),
                )
            })
            .collect();
        for r in store.put_records(&stream, records).await.unwrap() {
            r.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        if round % 10 == 9 {
            // Both flush at once what they have read: the same records, so they race for the same commit.
            let (ra, rb) = tokio::join!(a.flush_now(), b.flush_now());
            ra.unwrap();
            rb.unwrap();
        }
    }
    // Wait until the table's positions reach the end of every shard.
    let mut expected = Vec::new();
    let mut ends = Vec::new();
    for (shard, records) in read_stream(store.as_ref(), &stream).await {
        for r in &records {
            let v: Value = serde_json::from_slice(&r.data).unwrap();
            expected.push(format!(
                "{shard}|{}|{}",
                r.sequence_number,
                v["id"].as_str().unwrap()
            ));
        }
        ends.push((
            app_id("s3d", shard),
            records.last().unwrap().sequence_number.to_u64().unwrap() as i64,
        ));
    }
    expected.sort();
    let ids: Vec<String> = ends.iter().map(|(id, _)| id.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let d = describe_table("s3://freshet/wh", "feed", &options, &ids).await;
        if let Ok(d) = &d
            && ends
                .iter()
                .all(|(id, end)| d.app_transactions.iter().any(|(i, v)| i == id && v >= end))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deliveries did not catch up: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The two writers did race: commits were refused (412 / conflict) and settled as landed or fenced.
    use std::sync::atomic::Ordering::Relaxed;
    let (ca, cb) = (a.counters(), b.counters());
    let races = ca.commit_failures.load(Relaxed) + cb.commit_failures.load(Relaxed);
    let settled = ca.fenced.load(Relaxed)
        + cb.fenced.load(Relaxed)
        + ca.landed_after_error.load(Relaxed)
        + cb.landed_after_error.load(Relaxed);
    eprintln!(
        "commits {} + {}, failed attempts {races}, settled by fencing or landed-check {settled}",
        ca.commits.load(Relaxed),
        cb.commits.load(Relaxed)
    );
    assert!(races > 0 && settled > 0, "the two deliveries never raced");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    let opts = serde_json::to_string(&options).unwrap();
    let seen = python_json(
        "delivery_read.py",
        &["s3://freshet/wh/feed", "id", "--options", &opts],
    );
    let r = &seen["deltalake"];
    assert_eq!(r["rows"], json!(expected.len()), "{r}");
    assert_eq!(r["distinct_positions"], json!(expected.len()), "{r}");
    assert_eq!(r["checksum"], json!(fnv1a64_lines(&expected).to_string()), "{r}");
}
