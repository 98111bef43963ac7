//! Report functions triggered by commits, end to end in this process: an embedded store, the real delivery into
//! Delta (which appends commit events to `_freshet_events`), and the report runtime consuming those events with a
//! durable checkpoint. Checks: exactly one completed run per new table version of `telemetry`; an event appended
//! twice and a runtime restarted with its checkpoint rewound cause no second run; a run left `running` by a killed
//! process is redone under the same id and completes once; the outputs parse (JSON, CSV; Parquet with pyarrow)
//! with the expected per-device, per-minute aggregates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use freshet_process::{CancellationToken, DeliveryConfig, DeliveryHandle, spawn_delivery};
use freshet_query::{QueryEngine, QueryLimits, Warehouse};
use freshet_reports::{
    DEFAULT_CONSUMER, EVENTS_STREAM, ReportConfig, Reporter, RunRecord, RunStatus, RuntimeHandle, history,
    latest, report_dir, spawn_runtime,
};
use freshet_storage::{PutRecord, SequenceNumber, Store, StoreConfig, StreamName, StreamStore, SystemClock};
use freshet_tests::read_stream;
use serde_json::{Value, json};

const REPORT: &str = "telemetry_minutely";
/// A minute boundary, epoch millis.
const M0: i64 = 1_700_000_040_000;

struct Fixture {
    _dir: tempfile::TempDir,
    warehouse: PathBuf,
    store: Arc<Store>,
    stream: StreamName,
    events: StreamName,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
        let stream = StreamName::new("telemetry").unwrap();
        store.create_stream(&stream, 2).await.unwrap();
        Self {
            warehouse: dir.path().join("warehouse"),
            _dir: dir,
            store,
            stream,
            events: StreamName::new(EVENTS_STREAM).unwrap(),
        }
    }

    fn delivery(&self) -> DeliveryHandle {
        let mut c = DeliveryConfig::new(
            "telemetry",
            "telemetry",
            "telemetry",
            self.warehouse.display().to_string(),
        );
        c.buffer_interval_ms = 900_000;
        c.maintenance.optimize_every_commits = 0;
        spawn_delivery(c, self.store.clone(), CancellationToken::new())
    }

    fn runtime(&self, consumer: &str) -> RuntimeHandle {
        let engine = QueryEngine::new(Warehouse::local(&self.warehouse), QueryLimits::default());
        let mut report = ReportConfig::telemetry_minutely();
        report.retry_backoff_ms = 20;
        let reporter = Reporter::new(Arc::new(engine), vec![report]).unwrap();
        spawn_runtime(reporter, self.store.clone(), consumer, CancellationToken::new())
    }

    /// Append `payloads` (each keyed by its device) and flush until all are committed; the new versions.
    async fn deliver(&self, d: &DeliveryHandle, payloads: &[Value]) -> Vec<i64> {
        for p in payloads {
            let key = p["device_id"].as_str().unwrap().to_string();
            self.store
                .put_record(&self.stream, PutRecord::new(key, serde_json::to_vec(p).unwrap()))
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (mut rows, mut versions) = (0, Vec::new());
        while rows < payloads.len() as u64 {
            assert!(tokio::time::Instant::now() < deadline, "rows not flushed");
            let r = d.flush_now().await.unwrap();
            rows += r.rows;
            versions.extend(r.version);
            if r.rows == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        versions
    }

    fn runs(&self) -> Vec<RunRecord> {
        history(&self.warehouse, REPORT).unwrap()
    }

    fn run_dir(&self, version: i64) -> PathBuf {
        report_dir(&self.warehouse, REPORT).join(format!("runs/telemetry@v{version}"))
    }

    /// The table versions announced on `_freshet_events`, and the last event's sequence number.
    async fn announced(&self) -> (BTreeSet<u64>, SequenceNumber, Vec<u8>) {
        let mut versions = BTreeSet::new();
        let mut last = None;
        for (_, records) in read_stream(self.store.as_ref(), &self.events).await {
            for r in records {
                let e: Value = serde_json::from_slice(&r.data).unwrap();
                versions.insert(e["version"].as_u64().unwrap());
                last = Some((r.sequence_number, r.data.to_vec()));
            }
        }
        let (seq, data) = last.expect("some commit event");
        (versions, seq, data)
    }

    /// Wait until `consumer` has checkpointed the events stream up to `seq`.
    async fn wait_checkpoint(&self, consumer: &str, seq: SequenceNumber) {
        wait_for("the report runtime's checkpoint", || async {
            let cps = self.store.checkpoints(&self.events, consumer).await.ok()?;
            cps.values().any(|c| *c >= seq).then_some(())
        })
        .await;
    }
}

/// Poll `check` with a deadline (never a blind sleep).
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_completed(f: &Fixture, version: i64) -> RunRecord {
    let id = format!("telemetry@v{version}");
    wait_for(&format!("a completed run {id}"), || {
        let runs = f.runs();
        std::future::ready(
            runs.into_iter()
                .find(|r| r.run_id == id && r.status == RunStatus::Completed),
        )
    })
    .await
}

/// One completed run per announced version, each after one attempt unless `retried` names it.
fn assert_one_run_per_version(runs: &[RunRecord], versions: &BTreeSet<u64>) {
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    let expected: Vec<String> = versions.iter().map(|v| format!("telemetry@v{v}")).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    let mut expected_sorted: Vec<&str> = expected.iter().map(String::as_str).collect();
    expected_sorted.sort_unstable();
    assert_eq!(sorted, expected_sorted, "one run per version");
    for r in runs {
        assert_eq!(r.status, RunStatus::Completed, "{r:?}");
    }
}

fn payloads_first() -> Vec<Value> {
    vec![
        json!({"device_id": "a", "ts": M0 + 1_000, "temp": 1.0, "hum": 10}),
        json!({"device_id": "a", "ts": M0 + 59_000, "temp": 3.0, "hum": 20}),
        json!({"device_id": "a", "ts": M0 + 60_000, "temp": 5.0, "hum": 30}),
        json!({"device_id": "b", "ts": M0 + 5_000, "temp": 2.0, "note": "x"}),
    ]
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The rows of `result.json` as (device, count, avg_temp, min_temp, max_temp, max_hum).
fn json_rows(dir: &Path) -> Vec<(String, i64, f64, f64, f64, Option<i64>)> {
    let v = read_json(&dir.join("result.json"));
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["device_id"].as_str().unwrap().to_string(),
                r["count"].as_i64().unwrap(),
                r["avg_temp"].as_f64().unwrap(),
                r["min_temp"].as_f64().unwrap(),
                r["max_temp"].as_f64().unwrap(),
                r["max_hum"].as_i64(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_run_once_per_version_and_ignore_redelivery() {
    let f = Fixture::new().await;
    let d = f.delivery();
    let rt = f.runtime(DEFAULT_CONSUMER);

    let v1 = *f.deliver(&d, &payloads_first()).await.last().unwrap();
    let run1 = wait_completed(&f, v1).await;
    assert_eq!((run1.attempts, run1.rows), (1, Some(3)), "{run1:?}");
    let dir1 = f.run_dir(v1);
    assert_eq!(
        json_rows(&dir1),
        [
            ("a".into(), 2, 2.0, 1.0, 3.0, Some(20)),
            ("a".into(), 1, 5.0, 5.0, 5.0, Some(30)),
            ("b".into(), 1, 2.0, 2.0, 2.0, None),
        ]
    );
    let columns: Vec<String> = read_json(&dir1.join("result.json"))["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for absent in ["avg_ts", "avg_note", "avg__shard_id", "avg_event_date"] {
        assert!(!columns.contains(&absent.to_string()), "{columns:?}");
    }
    let csv = std::fs::read_to_string(dir1.join("result.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[..3], ["device_id", "minute", "count"]);
    assert_eq!(lines.count(), 3, "{csv}");
    // Parquet through an independent reader.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys,pyarrow.parquet as pq\n\
             t=pq.read_table(sys.argv[1]).to_pylist()\n\
             print(json.dumps([[r['device_id'],r['count'],r['avg_temp'],str(r['minute'])] for r in t]))",
        ])
        .arg(dir1.join("result.parquet"))
        .output()
        .expect("python3 with pyarrow");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parquet: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parquet[0][0], "a");
    assert_eq!(parquet[0][1], 2);
    assert_eq!(parquet[0][2], 2.0);
    assert!(
        parquet[0][3].as_str().unwrap().starts_with("2023-11-14 22:14:00"),
        "{parquet}"
    );
    assert_eq!(parquet[2][0], "b");

    // A second commit: one more run, over the new version only; `latest` follows it.
    let v2 = *f
        .deliver(&d, &[json!({"device_id": "c", "ts": M0, "temp": 7.5, "hum": 1})])
        .await
        .last()
        .unwrap();
    assert!(v2 > v1);
    let run2 = wait_completed(&f, v2).await;
    assert_eq!(run2.rows, Some(4), "{run2:?}");
    let pointer = latest(&f.warehouse, REPORT).unwrap().unwrap();
    assert_eq!(pointer.run_id, format!("telemetry@v{v2}"));
    assert!(
        report_dir(&f.warehouse, REPORT)
            .join(&pointer.outputs[0])
            .is_file()
    );

    // The same event appended twice: consumed, no second run.
    let (versions, _, last_event) = f.announced().await;
    let dup = f
        .store
        .put_record(&f.events, PutRecord::new("telemetry".to_string(), last_event))
        .await
        .unwrap();
    f.wait_checkpoint(DEFAULT_CONSUMER, dup.sequence_number).await;
    let before: Vec<Vec<u8>> = versions
        .iter()
        .map(|v| std::fs::read(f.run_dir(*v as i64).join("run.json")).unwrap())
        .collect();
    assert_one_run_per_version(&f.runs(), &versions);

    // Restart with the checkpoint rewound to the start of the stream: every event again, no run again.
    rt.shutdown().await.unwrap();
    f.store
        .deregister_consumer(&f.events, DEFAULT_CONSUMER)
        .await
        .unwrap();
    let rt = f.runtime(DEFAULT_CONSUMER);
    f.wait_checkpoint(DEFAULT_CONSUMER, dup.sequence_number).await;
    let after: Vec<Vec<u8>> = versions
        .iter()
        .map(|v| std::fs::read(f.run_dir(*v as i64).join("run.json")).unwrap())
        .collect();
    assert_eq!(before, after, "no run was redone");
    assert_one_run_per_version(&f.runs(), &versions);
    for r in f.runs() {
        assert_eq!(r.attempts, 1, "{r:?}");
    }
    rt.shutdown().await.unwrap();
    d.shutdown().await.unwrap();
}

/// What a process killed in the middle of a run leaves behind: `run.json` saying `running` and an uncommitted
/// checkpoint (the batch was never committed). The restarted runtime redoes the run under the same id, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_run_interrupted_mid_run_completes_once_after_restart() {
    let f = Fixture::new().await;
    let d = f.delivery();
    let v1 = *f.deliver(&d, &payloads_first()).await.last().unwrap();
    // A run of the first runtime, then "killed": its record rewritten to the state a crash mid-run leaves.
    let rt = f.runtime("reports_crash");
    let mut run = wait_completed(&f, v1).await;
    rt.shutdown().await.unwrap();
    run.status = RunStatus::Running;
    run.finished_at_ms = None;
    run.rows = None;
    std::fs::write(f.run_dir(v1).join("run.json"), serde_json::to_vec(&run).unwrap()).unwrap();
    std::fs::remove_file(f.run_dir(v1).join("result.json")).unwrap();
    f.store
        .deregister_consumer(&f.events, "reports_crash")
        .await
        .unwrap();

    let rt = f.runtime("reports_crash");
    let (versions, last, _) = f.announced().await;
    f.wait_checkpoint("reports_crash", last).await;
    let redone = wait_completed(&f, v1).await;
    assert_eq!(redone.attempts, 2, "{redone:?}");
    assert_eq!(json_rows(&f.run_dir(v1)).len(), 3);
    assert_one_run_per_version(&f.runs(), &versions);
    rt.shutdown().await.unwrap();
    d.shutdown().await.unwrap();
}
