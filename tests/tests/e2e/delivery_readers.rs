//! Delivery into Delta, checked by independent readers: Python `deltalake` (delta-rs) and DuckDB (over a log
//! replay of its own) must agree with what freshet wrote on row count, a checksum of the data, partition values
//! and evolved columns. Also: the error table's rows for each bad-input kind, and a reshard (split, then merge)
//! in the middle of a delivery that loses and repeats nothing.
//!
//! The delivery runs in this process on an embedded store; `flush_now` makes the commit points deterministic.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use freshet_process::{CancellationToken, DeliveryConfig, DeliveryHandle, spawn_delivery};
use freshet_storage::{PutRecord, Store, StoreConfig, StreamName, StreamStore, SystemClock};
use freshet_tests::{fnv1a64_lines, python_json, read_stream};
use serde_json::{Value, json};

struct Fixture {
    _dir: tempfile::TempDir,
    warehouse: std::path::PathBuf,
    store: Arc<Store>,
    stream: StreamName,
}

impl Fixture {
    async fn new(stream: &str, shards: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
        let stream = StreamName::new(stream).unwrap();
        store.create_stream(&stream, shards).await.unwrap();
        Self {
            warehouse: dir.path().join("warehouse"),
            _dir: dir,
            store,
            stream,
        }
    }

    fn config(&self, table: &str) -> DeliveryConfig {
        let mut c = DeliveryConfig::new(
            table,
            self.stream.as_str(),
            table,
            self.warehouse.display().to_string(),
        );
        // Commits happen only when the test asks (flush_now) or at shutdown.
        c.buffer_interval_ms = 900_000;
        c.maintenance.optimize_every_commits = 0;
        c
    }

    fn start(&self, config: DeliveryConfig) -> DeliveryHandle {
        spawn_delivery(config, self.store.clone(), CancellationToken::new())
    }

    async fn put(&self, key: &str, payloads: &[Value]) {
        let records = payloads
            .iter()
            .map(|p| PutRecord::new(key.to_string(), serde_json::to_vec(p).unwrap()))
            .collect();
        for r in self.store.put_records(&self.stream, records).await.unwrap() {
            r.unwrap();
        }
    }

    async fn put_raw(&self, key: &str, raw: &[u8]) {
        self.store
            .put_record(&self.stream, PutRecord::new(key.to_string(), raw.to_vec()))
            .await
            .unwrap();
    }

    /// Flush until every record of the stream is committed (a flush covers what has been read so far).
    async fn flush_all(&self, d: &DeliveryHandle, expected_rows: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut rows = 0;
        while rows < expected_rows {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {rows} of {expected_rows} rows flushed"
            );
            let r = d.flush_now().await.unwrap();
            rows += r.rows + r.error_rows;
            if r.rows + r.error_rows == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(rows, expected_rows);
    }

    /// The checksum lines of every record in the stream: `<shard>|<seq>|<key field>`.
    async fn expected_lines(&self, key: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for (shard, records) in read_stream(self.store.as_ref(), &self.stream).await {
            for r in records {
                let v: Value = serde_json::from_slice(&r.data).unwrap();
                let k = match &v[key] {
                    Value::Null => "null".to_string(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                lines.push(format!("{shard}|{}|{k}", r.sequence_number));
            }
        }
        lines.sort();
        lines
    }

    fn table_dir(&self, table: &str) -> String {
        self.warehouse.join(table).display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_independent_readers_agree_with_partitions_and_evolution() {
    let f = Fixture::new("readers", 3).await;
    let d = f.start(f.config("readers"));
    // Day 1 (epoch millis), day 2 (RFC 3339), and records without `ts` (arrival date).
    let mut batch = Vec::new();
    for i in 0..150 {
        batch.push(
            json!({"id": format!("r{i}"), "temp": i % 40, "ts": 1_700_000_000_000i64 + i,
            "_topic": format!("devices/d{}/telemetry", i % 5), "_client_id": format!("d{}", i % 5)}),
        );
    }
    for (i, p) in batch.chunks(50).enumerate() {
        f.put(&format!("dev{i}"), p).await;
    }
    f.flush_all(&d, 150).await;
    // Schema evolution: a new column, and a fractional temperature into the (committed) long column's sibling.
    let mut batch = Vec::new();
    for i in 150..250 {
        batch.push(
            json!({"id": format!("r{i}"), "temp": i % 40, "humidity": 0.5 + f64::from(i),
            "ts": 1_709_208_000_000i64}),
        );
    }
    f.put("devX", &batch).await;
    f.put("devY", &[json!({"id": "r250", "note": "no ts"})]).await;
    f.flush_all(&d, 101).await;
    d.shutdown().await.unwrap();

    let seen = python_json("delivery_read.py", &[&f.table_dir("readers"), "id", "event_date"]);
    let expected = f.expected_lines("id").await;
    let checksum = fnv1a64_lines(&expected).to_string();
    for reader in ["deltalake", "duckdb"] {
        let r = &seen[reader];
        assert_eq!(r["rows"], json!(251), "{reader}: {r}");
        assert_eq!(r["distinct_positions"], json!(251), "{reader}: {r}");
        assert_eq!(r["checksum"], json!(checksum), "{reader} checksum differs: {r}");
        let columns: BTreeSet<&str> = r["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for c in [
            "_topic",
            "_client_id",
            "_partition_key",
            "_shard_id",
            "_sequence_number",
            "_arrival_time",
            "id",
            "temp",
            "humidity",
            "note",
            "event_date",
        ] {
            assert!(columns.contains(c), "{reader} lacks column {c}: {columns:?}");
        }
        let partitions: Vec<&str> = r["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(partitions.contains(&"2023-11-14"), "{reader}: {partitions:?}");
        assert!(partitions.contains(&"2024-02-29"), "{reader}: {partitions:?}");
        assert!(
            partitions.len() >= 3,
            "arrival-date partition missing in {reader}: {partitions:?}"
        );
    }
    let rows = python_json("delivery_rows.py", &[&f.table_dir("readers")]);
    let r0 = rows.as_array().unwrap().iter().find(|r| r["id"] == "r0").unwrap();
    assert_eq!(r0["_topic"], "devices/d0/telemetry");
    assert_eq!(r0["_client_id"], "d0");
    assert_eq!(r0["_partition_key"], "dev0");
    assert_eq!(r0["humidity"], Value::Null);
    let r250 = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "r250")
        .unwrap();
    assert_eq!(r250["_topic"], Value::Null, "absent lineage is null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_error_table_has_a_row_per_bad_record_kind() {
    let f = Fixture::new("bad", 1).await;
    let mut config = f.config("bad");
    config.value_bytes_max = 64;
    let d = f.start(config);
    f.put("k", &[json!({"n": 1, "s": "text"})]).await;
    f.flush_all(&d, 1).await;
    f.put_raw("k", b"this is not json").await;
    f.put_raw("k", &[0xff, 0xfe, 0x00]).await;
    f.put_raw("k", b"[1, 2, 3]").await;
    f.put("k", &[json!({"n": "seven"})]).await;
    f.put("k", &[json!({"n": 1.5})]).await;
    f.put("k", &[json!({"bad name": 1})]).await;
    f.put("k", &[json!({"S": "case clash"})]).await;
    f.put("k", &[json!({"s": "x".repeat(100)})]).await;
    f.put("k", &[json!({"n": 2, "s": "fine"})]).await;
    f.flush_all(&d, 9).await;
    d.shutdown().await.unwrap();

    let rows = python_json("delivery_rows.py", &[&f.table_dir("bad_errors")]);
    let mut kinds: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["error_kind"].as_str().unwrap().to_string(),
                r["raw_data"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    kinds.sort();
    let want = [
        ("invalid_field_name", r#"{"S":"case clash"}"#),
        ("invalid_field_name", r#"{"bad name":1}"#),
        ("not_json", "this is not json"),
        ("not_json", "\u{fffd}\u{fffd}\u{0}"),
        ("not_object", "[1, 2, 3]"),
        ("type_conflict", r#"{"n":"seven"}"#),
        ("type_conflict", r#"{"n":1.5}"#),
    ];
    for (kind, raw) in want {
        assert!(
            kinds.contains(&(kind.to_string(), raw.to_string())),
            "missing {kind} {raw:?} in {kinds:?}"
        );
    }
    assert!(kinds.iter().any(|(k, _)| k == "value_too_large"), "{kinds:?}");
    assert_eq!(kinds.len(), 8);
    for r in rows.as_array().unwrap() {
        assert_eq!(r["_shard_id"], "shardId-000000000000");
        assert!(r["_sequence_number"].as_i64().unwrap() > 0);
        assert!(!r["error_message"].as_str().unwrap().is_empty());
        assert!(!r["error_time"].is_null());
    }
    let good = python_json("delivery_rows.py", &[&f.table_dir("bad")]);
    assert_eq!(good.as_array().unwrap().len(), 2, "good rows: {good}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_reshard_mid_delivery_loses_nothing() {
    let f = Fixture::new("reshard", 2).await;
    let d = f.start(f.config("reshard"));
    let mut next = 0;
    let mut put_some = async |f: &Fixture, n: usize| {
        for _ in 0..n {
            let key = format!("k{}", next % 17);
            f.put(&key, &[json!({"id": format!("r{next}")})]).await;
            next += 1;
        }
    };
    put_some(&f, 100).await;
    f.flush_all(&d, 100).await;
    put_some(&f, 50).await;
    // Split shard 0 while 50 records are unread, then write more into the children.
    let shard0 = freshet_storage::ShardId(0);
    f.store
        .split_shard(&f.stream, shard0, u128::MAX / 4)
        .await
        .unwrap();
    put_some(&f, 100).await;
    f.flush_all(&d, 150).await;
    // Merge two open shards (the children's hash ranges are adjacent), then write more.
    let desc = f.store.describe_stream(&f.stream).await.unwrap();
    let open: Vec<_> = desc
        .open_shards()
        .map(|s| (s.hash_key_range.start, s.shard_id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    f.store
        .merge_shards(&f.stream, open[0].1, open[1].1)
        .await
        .unwrap();
    put_some(&f, 100).await;
    f.flush_all(&d, 100).await;
    d.shutdown().await.unwrap();

    let expected = f.expected_lines("id").await;
    assert_eq!(expected.len(), 350);
    let seen = python_json("delivery_read.py", &[&f.table_dir("reshard"), "id"]);
    for reader in ["deltalake", "duckdb"] {
        assert_eq!(seen[reader]["rows"], json!(350), "{reader}: {}", seen[reader]);
        assert_eq!(seen[reader]["distinct_positions"], json!(350));
        assert_eq!(
            seen[reader]["checksum"],
            json!(fnv1a64_lines(&expected).to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_restart_resumes_from_table_txn_versions() {
    let f = Fixture::new("restart", 2).await;
    for round in 0..3 {
        let d = f.start(f.config("restart"));
        let payloads: Vec<Value> = (0..40).map(|i| json!({"id": format!("r{round}-{i}")})).collect();
        f.put(&format!("k{round}"), &payloads[..20]).await;
        f.put(&format!("j{round}"), &payloads[20..]).await;
        f.flush_all(&d, 40).await;
        d.shutdown().await.unwrap();
    }
    let expected = f.expected_lines("id").await;
    let seen = python_json("delivery_read.py", &[&f.table_dir("restart"), "id"]);
    assert_eq!(
        seen["deltalake"]["checksum"],
        json!(fnv1a64_lines(&expected).to_string()),
        "{seen}"
    );
    assert_eq!(seen["deltalake"]["rows"], json!(expected.len()));
    // Every commit announced itself on _freshet_events.
    let events = read_stream(f.store.as_ref(), &StreamName::new("_freshet_events").unwrap()).await;
    let events: Vec<Value> = events
        .into_iter()
        .flat_map(|(_, rs)| rs)
        .map(|r| serde_json::from_slice(&r.data).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["table"] == "restart" && e["rows"].as_u64() > Some(0))
    );
    assert!(events.iter().any(|e| e["replayed"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_maintenance_compacts_vacuums_and_checkpoints_without_changing_data() {
    use freshet_process::config::table_url;
    use freshet_process::maintenance::{describe_table, list_tables, optimize_table, vacuum_table};
    let f = Fixture::new("maint", 2).await;
    let mut config = f.config("maint");
    config.maintenance.checkpoint_interval_commits = 3;
    let d = f.start(config);
    for round in 0..8 {
        let payloads: Vec<Value> = (0..25)
            .map(|i| json!({"id": format!("m{round}-{i}"), "ts": 1_700_000_000_000i64}))
            .collect();
        f.put(&format!("k{round}"), &payloads).await;
        f.flush_all(&d, 25).await;
    }
    let wh = f.warehouse.display().to_string();
    let opts = std::collections::HashMap::new();
    let before = describe_table(&wh, "maint", &opts, &[]).await.unwrap();
    assert!(before.files >= 8, "one file per flush expected: {before:?}");
    assert_eq!(
        before
            .configuration
            .get("delta.checkpointInterval")
            .map(String::as_str),
        Some("3")
    );
    assert!(
        f.warehouse.join("maint/_delta_log/_last_checkpoint").exists(),
        "no checkpoint after 8 commits"
    );
    // Compact while the delivery keeps running, then deliver more.
    let report = optimize_table(table_url(&wh, "maint").unwrap(), &opts, 64 << 20)
        .await
        .unwrap();
    assert!(report.files_removed >= 8 && report.files_added >= 1, "{report:?}");
    f.put(
        "after",
        &[json!({"id": "after-compaction", "ts": 1_700_000_000_000i64})],
    )
    .await;
    f.flush_all(&d, 1).await;
    d.shutdown().await.unwrap();
    let after = describe_table(&wh, "maint", &opts, &[]).await.unwrap();
    assert!(
        after.files < before.files,
        "{} files before, {} after",
        before.files,
        after.files
    );
    // Vacuum with a 1 h retention keeps the just-removed files (still within retention).
    let deleted = vacuum_table(table_url(&wh, "maint").unwrap(), &opts, 1, false)
        .await
        .unwrap();
    assert!(deleted.is_empty(), "{deleted:?}");
    let tables = list_tables(&wh, &opts).await.unwrap();
    assert_eq!(tables, vec!["maint".to_string(), "maint_errors".to_string()]);
    let expected = f.expected_lines("id").await;
    let seen = python_json("delivery_read.py", &[&f.table_dir("maint"), "id"]);
    for reader in ["deltalake", "duckdb"] {
        assert_eq!(
            seen[reader]["rows"],
            json!(expected.len()),
            "{reader}: {}",
            seen[reader]
        );
        assert_eq!(
            seen[reader]["checksum"],
            json!(fnv1a64_lines(&expected).to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_cli_lists_describes_and_maintains_tables() {
    let f = Fixture::new("cli", 1).await;
    let d = f.start(f.config("cli"));
    for round in 0..3 {
        f.put("k", &[json!({"id": format!("c{round}"), "v": round})])
            .await;
        f.flush_all(&d, 1).await;
    }
    d.shutdown().await.unwrap();
    let wh = f.warehouse.display().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(freshet_tests::freshet_bin())
            .args(["tables", "--log", "error", "--warehouse", &wh])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&["list"]), "cli\ncli_errors\n");
    let desc: Value =
        serde_json::from_str(&run(&["describe", "cli", "--app-id", "cli-shardId-000000000000"])).unwrap();
    assert_eq!(desc["partition_columns"], json!(["event_date"]));
    assert_eq!(desc["files"], json!(3));
    assert_eq!(desc["app_transactions"][0][0], "cli-shardId-000000000000");
    let optimized: Value = serde_json::from_str(&run(&["optimize", "cli"])).unwrap();
    assert_eq!(optimized["files_removed"], json!(3), "{optimized}");
    let vacuum: Value =
        serde_json::from_str(&run(&["vacuum", "cli", "--retention-hours", "1", "--dry-run"])).unwrap();
    assert_eq!(vacuum["dry_run"], true);
    let desc: Value = serde_json::from_str(&run(&["describe", "cli"])).unwrap();
    assert_eq!(desc["files"], json!(1));

    // `freshet deliveries list|describe` read a config file.
    let config_path = f.warehouse.join("deliveries.json");
    std::fs::write(&config_path, json!({"deliveries": [f.config("cli")]}).to_string()).unwrap();
    let data_dir = f.warehouse.join("other-data");
    let deliveries = |args: &[&str]| {
        let out = std::process::Command::new(freshet_tests::freshet_bin())
            .args(["deliveries", "--log", "error", "--data-dir"])
            .arg(&data_dir)
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        deliveries(&["list"]).starts_with("cli\tcli -> cli"),
        "list output"
    );
    let described: Value = serde_json::from_str(&deliveries(&["describe", "cli"])).unwrap();
    assert_eq!(described["delivery"]["table"], "cli");
    assert_eq!(
        described["table"]["version"].as_i64().map(|v| v >= 4),
        Some(true),
        "{described}"
    );
}
