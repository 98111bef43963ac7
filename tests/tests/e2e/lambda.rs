//! The AWS Lambda entry points, run as the real `freshet` binary against a local Lambda Runtime API
//! (`freshet_tests::lambda_runtime`, the one stand-in: the Lambda service cannot run here), fed with event JSON in
//! the shapes AWS documents for Kinesis event source mappings and S3 notifications.
//!
//! - delivery on a real S3-compatible server (moto_server on 127.0.0.1): a batch lands and Python `deltalake` reads
//!   it; the same batch again adds nothing; an overlapping batch adds only its new records; AWS-sized 56-digit
//!   sequence numbers and freshet's u64 ones both work; a malformed event is answered on `/error` and the next
//!   invocation still succeeds;
//! - partial failure (local warehouse): a shard whose error rows cannot be written and a shard whose records go
//!   backwards are answered with their first failed sequence number; the other shard lands; the retry lands;
//! - reports (the binary started as `bootstrap`): an S3 event for a new `_delta_log` entry runs the report once,
//!   a re-delivered event runs nothing, keys that are not log entries run nothing;
//! - reports on S3 (moto_server): `FRESHET_WAREHOUSE=s3://freshet/wh` reads the table the delivery function wrote
//!   there and writes the run and `latest` into the bucket (read back with boto3); a log entry outside the
//!   warehouse prefix is ignored.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use freshet_tests::lambda_runtime::{Outcome, RuntimeApi};
use freshet_tests::s3::{bucket_report, s3_options, start_moto};
use freshet_tests::{base64_encode, freshet_bin, python_json};
use serde_json::{Value, json};

const STREAM_ARN: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/telemetry";
/// Sequence numbers as AWS writes them: 56 digits.
const AWS_SEQ_BASE: &str = "4959033827149025660855969253836157109592157598913658";

/// A function process serving one Runtime API; killed when dropped.
struct Function(Child);

impl Function {
    fn start(program: &Path, args: &[&str], api: &RuntimeApi, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,deltalake_core=warn,delta_kernel=warn")
            .envs(api.function_env())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self(cmd.spawn().expect("the freshet binary starts"))
    }

    /// The function process must still be serving.
    fn assert_running(&mut self) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the function process exited"
        );
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One Kinesis event record as an event source mapping sends it.
fn kinesis_record(shard: u32, seq: &str, key: &str, data: &[u8]) -> Value {
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key,
            "sequenceNumber": seq,
            "data": base64_encode(data),
            "approximateArrivalTimestamp": 1_763_784_000.125
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("shardId-{shard:012}:{seq}"),
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/freshet-lambda",
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN
    })
}

/// A telemetry payload with an id the checks look for.
fn payload(id: &str) -> Vec<u8> {
    json!({"id": id, "device_id": "d1", "temp": 20.5, "ts": 1_763_784_000_000_i64})
        .to_string()
        .into_bytes()
}

/// A 56-digit sequence number ending in `n` (4 digits).
fn aws_seq(n: u32) -> String {
    format!("{AWS_SEQ_BASE}{n:04}")
}

fn event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

fn failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

/// The (`_shard_id`, `_source_sequence_number`, `_sequence_number`, `id`) rows of a table, read by Python deltalake.
fn rows(table: &str, options: Option<&HashMap<String, String>>) -> Vec<(String, String, Value, String)> {
    let opts = options.map(|o| serde_json::to_string(o).unwrap());
    let mut args = vec![table, "_shard_id,_source_sequence_number,_sequence_number,id"];
    if let Some(o) = &opts {
        args.extend(["--options", o.as_str()]);
    }
    let out = python_json("lambda_rows.py", &args);
    out["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["_shard_id"].as_str().unwrap().to_string(),
                r["_source_sequence_number"].as_str().unwrap().to_string(),
                r["_sequence_number"].clone(),
                r["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_delivery_kinesis_batches_into_delta_on_s3_exactly_once() {
    let (_moto, addr) = start_moto().await;
    let api = RuntimeApi::start().await;
    let options = s3_options(&addr);
    let s3_env: Vec<(&str, String)> = options.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut env = s3_env.clone();
    env.extend([
        ("FRESHET_WAREHOUSE", "s3://freshet/wh".to_string()),
        ("FRESHET_TABLE", "telemetry".to_string()),
        ("FRESHET_DELIVERY", "lam".to_string()),
    ]);
    let mut function = Function::start(&freshet_bin(), &["lambda", "delivery"], &api, &env);
    let limit = Duration::from_secs(60);

    // A batch of one shard with AWS's 56-digit sequence numbers.
    let batch_a: Vec<Value> = (1..=5)
        .map(|i| kinesis_record(0, &aws_seq(i * 10), &format!("k{i}"), &payload(&format!("a{i}"))))
        .collect();
    let r = api.invoke(&event(batch_a.clone()), limit).await.response();
    assert_eq!(failures(&r), Vec::<String>::new(), "{r}");

    // The same batch re-delivered: nothing new.
    let r = api.invoke(&event(batch_a.clone()), limit).await.response();
    assert_eq!(failures(&r), Vec::<String>::new(), "{r}");

    // An overlapping batch (the last two of A, then three new) and a shard with freshet-style u64 numbers.
    let mut batch_b: Vec<Value> = batch_a[3..].to_vec();
    batch_b.extend((6..=8).map(|i| kinesis_record(0, &aws_seq(i * 10), "k", &payload(&format!("a{i}")))));
    batch_b.extend(
        [7_u64, 8, u64::MAX - 1]
            .iter()
            .map(|n| kinesis_record(1, &n.to_string(), "k", &payload(&format!("b{n}")))),
    );
    let r = api.invoke(&event(batch_b.clone()), limit).await.response();
    assert_eq!(failures(&r), Vec::<String>::new(), "{r}");

    // Malformed events: not base64 (lambda_runtime cannot deserialize it), and an eventID naming no shard.
    let mut bad = kinesis_record(0, &aws_seq(90), "k", b"{}");
    bad["kinesis"]["data"] = json!("%%% not base64 %%%");
    let out = api.invoke(&event(vec![bad]), limit).await;
    assert!(matches!(out, Outcome::Error { .. }), "{out:?}");
    let mut bad = kinesis_record(0, &aws_seq(91), "k", b"{}");
    bad["eventID"] = json!("nonsense");
    match api.invoke(&event(vec![bad]), limit).await {
        Outcome::Error { body, .. } => assert!(
            body["errorMessage"].as_str().unwrap_or("").contains("eventID"),
            "{body}"
        ),
        other => panic!("a malformed event was answered {other:?}"),
    }
    // The loop goes on: the next invocation (a re-delivery of B) succeeds and adds nothing.
    let r = api.invoke(&event(batch_b), limit).await.response();
    assert_eq!(failures(&r), Vec::<String>::new(), "{r}");
    function.assert_running();

    let seen = rows("s3://freshet/wh/telemetry", Some(&options));
    let mut expected: Vec<(String, String, Value, String)> = (1..=8)
        .map(|i| {
            (
                "shardId-000000000000".to_string(),
                aws_seq(i * 10),
                Value::Null,
                format!("a{i}"),
            )
        })
        .collect();
    for n in [7_u64, 8, u64::MAX - 1] {
        // u64::MAX - 1 does not fit a long: only the text column holds it.
        let long = i64::try_from(n).map_or(Value::Null, |v| json!(v));
        expected.push((
            "shardId-000000000001".to_string(),
            n.to_string(),
            long,
            format!("b{n}"),
        ));
    }
    let mut seen_sorted = seen.clone();
    seen_sorted.sort_by(|a, b| (&a.0, &a.3).cmp(&(&b.0, &b.3)));
    expected.sort_by(|a, b| (&a.0, &a.3).cmp(&(&b.0, &b.3)));
    assert_eq!(seen_sorted, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_delivery_partial_failure_answers_the_first_failed_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    std::fs::create_dir_all(&warehouse).unwrap();
    // The error table cannot be created: a file stands where its directory would be.
    let blocker = warehouse.join("t_errors");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let api = RuntimeApi::start().await;
    let env = vec![
        ("FRESHET_WAREHOUSE", warehouse.display().to_string()),
        ("FRESHET_TABLE", "t".to_string()),
        ("FRESHET_LAMBDA_DEADLINE_MARGIN_MS", "500".to_string()),
    ];
    let _function = Function::start(&freshet_bin(), &["lambda", "delivery"], &api, &env);

    let records = vec![
        // shard 0: good records only
        kinesis_record(0, "100", "k", &payload("s0-100")),
        kinesis_record(0, "101", "k", &payload("s0-101")),
        // shard 2: sequence numbers that go backwards at 299
        kinesis_record(2, "300", "k", &payload("s2-300")),
        kinesis_record(2, "301", "k", &payload("s2-301")),
        kinesis_record(2, "299", "k", &payload("s2-299")),
        // shard 1 (last: it uses up the invocation's time): a good record, then one that is not JSON, which needs
        // the error table
        kinesis_record(1, "200", "k", &payload("s1-200")),
        kinesis_record(1, "201", "k", b"not json"),
    ];
    let r = api
        .invoke(&event(records.clone()), Duration::from_secs(3))
        .await
        .response();
    let mut failed = failures(&r);
    failed.sort();
    assert_eq!(failed, vec!["200".to_string(), "299".to_string()], "{r}");
    let table = warehouse.join("t").display().to_string();
    let ids = |rows: Vec<(String, String, Value, String)>| -> Vec<String> {
        let mut ids: Vec<String> = rows.into_iter().map(|r| r.3).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(rows(&table, None)), ["s0-100", "s0-101", "s2-300", "s2-301"]);

    // The error table can be written again; AWS retries shard 1 from 200: it lands, shard 0 is not repeated.
    std::fs::remove_file(&blocker).unwrap();
    let mut retry: Vec<Value> = records[..2].to_vec();
    retry.extend(records[5..].iter().cloned());
    let r = api
        .invoke(&event(retry), Duration::from_secs(60))
        .await
        .response();
    assert_eq!(failures(&r), Vec::<String>::new(), "{r}");
    assert_eq!(
        ids(rows(&table, None)),
        ["s0-100", "s0-101", "s1-200", "s2-300", "s2-301"]
    );
    let errors = python_json(
        "lambda_rows.py",
        &[
            &warehouse.join("t_errors").display().to_string(),
            "_shard_id,_source_sequence_number,error_kind",
        ],
    );
    assert_eq!(
        errors["rows"],
        json!([{"_shard_id": "shardId-000000000001", "_source_sequence_number": "201", "error_kind": "not_json"}])
    );
}

/// One S3 notification record for `key` in bucket `freshet`, as AWS documents it.
fn s3_record(key: &str) -> Value {
    json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-22T04:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "freshet-delta-log",
            "bucket": {"name": "freshet", "ownerIdentity": {"principalId": "EXAMPLE"}, "arn": "arn:aws:s3:::freshet"},
            "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0055AED6DCD90281E5"}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_reports_run_once_per_new_delta_log_entry() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    std::fs::create_dir_all(&warehouse).unwrap();
    let api = RuntimeApi::start().await;

    // A table with two commits (versions 1 and 2), written by the delivery function.
    {
        let env = vec![
            ("FRESHET_WAREHOUSE", warehouse.display().to_string()),
            ("FRESHET_TABLE", "t".to_string()),
        ];
        let _delivery = Function::start(&freshet_bin(), &["lambda", "delivery"], &api, &env);
        for batch in [[1, 2], [3, 4]] {
            let records = batch
                .iter()
                .map(|n| kinesis_record(0, &n.to_string(), "k", &payload(&format!("r{n}"))))
                .collect();
            let r = api
                .invoke(&event(records), Duration::from_secs(60))
                .await
                .response();
            assert_eq!(failures(&r), Vec::<String>::new(), "{r}");
        }
    }
    assert!(warehouse.join("t/_delta_log/00000000000000000002.json").exists());

    // The same binary as `bootstrap`, choosing its handler from FRESHET_LAMBDA_HANDLER.
    let bootstrap = dir.path().join("bootstrap");
    std::os::unix::fs::symlink(freshet_bin(), &bootstrap).unwrap();
    let env = vec![
        ("FRESHET_LAMBDA_HANDLER", "reports".to_string()),
        ("FRESHET_WAREHOUSE", warehouse.display().to_string()),
        ("FRESHET_REPORT_NAME", "counts".to_string()),
        (
            "FRESHET_REPORT_SQL",
            "SELECT count(*) AS n FROM {{t}}".to_string(),
        ),
        ("FRESHET_REPORT_TABLES", "t".to_string()),
    ];
    let mut reports = Function::start(&bootstrap, &[], &api, &env);
    let limit = Duration::from_secs(60);

    let r = api
        .invoke(
            &json!({"Records": [s3_record("wh/t/_delta_log/00000000000000000001.json")]}),
            limit,
        )
        .await
        .response();
    assert_eq!(r["commits"], json!([{"table": "t", "version": 1}]), "{r}");
    assert_eq!(r["runs"][0]["run_id"], json!("t@v1"), "{r}");
    assert_eq!(r["runs"][0]["status"], json!("completed"), "{r}");
    assert_eq!(r["runs"][0]["skipped"], json!(false), "{r}");
    let result = warehouse.join("reports/counts/runs/t@v1/result.json");
    let text = std::fs::read_to_string(&result).unwrap();
    assert!(text.contains("\"n\":2"), "version 1 holds 2 rows: {text}");

    // Re-delivered: the run exists, nothing runs again.
    let r = api
        .invoke(
            &json!({"Records": [s3_record("wh/t/_delta_log/00000000000000000001.json")]}),
            limit,
        )
        .await
        .response();
    assert_eq!(r["runs"][0]["skipped"], json!(true), "{r}");

    // Keys that are not log entries: no run.
    let r = api
        .invoke(
            &json!({"Records": [
                s3_record("wh/t/event_date=2025-11-22/part-00000.parquet"),
                s3_record("wh/t/_delta_log/00000000000000000010.checkpoint.parquet"),
                s3_record("wh/t/_delta_log/_last_checkpoint"),
            ]}),
            limit,
        )
        .await
        .response();
    assert_eq!(r["runs"], json!([]), "{r}");
    assert_eq!(r["ignored"].as_array().unwrap().len(), 3, "{r}");
    assert!(!warehouse.join("reports/counts/runs/t@v10").exists());

    // A malformed event is an error; the next invocation (version 2) runs.
    let out = api.invoke(&json!({"Records": "nope"}), limit).await;
    assert!(matches!(out, Outcome::Error { .. }), "{out:?}");
    let r = api
        .invoke(
            &json!({"Records": [s3_record("wh/t/_delta_log/00000000000000000002.json")]}),
            limit,
        )
        .await
        .response();
    assert_eq!(r["runs"][0]["run_id"], json!("t@v2"), "{r}");
    let text = std::fs::read_to_string(warehouse.join("reports/counts/runs/t@v2/result.json")).unwrap();
    assert!(text.contains("\"n\":4"), "version 2 holds 4 rows: {text}");
    reports.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_reports_on_an_s3_warehouse() {
    let (_moto, addr) = start_moto().await;
    let api = RuntimeApi::start().await;
    let options = s3_options(&addr);
    let s3_env: Vec<(&str, String)> = options.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let limit = Duration::from_secs(60);

    // Two commits (versions 1 and 2) of table t in s3://freshet/wh, written by the delivery function.
    {
        let mut env = s3_env.clone();
        env.extend([
            ("FRESHET_WAREHOUSE", "s3://freshet/wh".to_string()),
            ("FRESHET_TABLE", "t".to_string()),
        ]);
        let _delivery = Function::start(&freshet_bin(), &["lambda", "delivery"], &api, &env);
        for batch in [[1, 2, 3], [4, 5, 6]] {
            let records = batch
                .iter()
                .map(|n| kinesis_record(0, &n.to_string(), "k", &payload(&format!("r{n}"))))
                .collect();
            let r = api.invoke(&event(records), limit).await.response();
            assert_eq!(failures(&r), Vec::<String>::new(), "{r}");
        }
    }

    let mut env = s3_env.clone();
    env.extend([
        ("FRESHET_WAREHOUSE", "s3://freshet/wh".to_string()),
        ("FRESHET_REPORT_NAME", "counts".to_string()),
        (
            "FRESHET_REPORT_SQL",
            "SELECT count(*) AS n FROM {{t}}".to_string(),
        ),
        ("FRESHET_REPORT_TABLES", "t".to_string()),
    ]);
    let mut reports = Function::start(&freshet_bin(), &["lambda", "reports"], &api, &env);

    // Version 1: one run, its result in the bucket with `latest` naming it.
    let r = api
        .invoke(
            &json!({"Records": [s3_record("wh/t/_delta_log/00000000000000000001.json")]}),
            limit,
        )
        .await
        .response();
    assert_eq!(r["commits"], json!([{"table": "t", "version": 1}]), "{r}");
    assert_eq!(r["runs"][0]["run_id"], json!("t@v1"), "{r}");
    assert_eq!(r["runs"][0]["status"], json!("completed"), "{r}");
    let bucket = bucket_report(&addr, "wh", "counts");
    assert_eq!(bucket["latest"]["run_id"], json!("t@v1"), "{bucket}");
    assert_eq!(bucket["result"]["rows"], json!([{"n": 3}]), "{bucket}");

    // A log entry outside s3://freshet/wh (the default filter): ignored, nothing runs.
    let r = api
        .invoke(
            &json!({"Records": [s3_record("elsewhere/t/_delta_log/00000000000000000002.json")]}),
            limit,
        )
        .await
        .response();
    assert_eq!(r["runs"], json!([]), "{r}");
    assert_eq!(r["ignored"].as_array().map(Vec::len), Some(1), "{r}");

    // Version 2 inside the warehouse: the next run, read over both commits.
    let r = api
        .invoke(
            &json!({"Records": [s3_record("wh/t/_delta_log/00000000000000000002.json")]}),
            limit,
        )
        .await
        .response();
    assert_eq!(r["runs"][0]["run_id"], json!("t@v2"), "{r}");
    let bucket = bucket_report(&addr, "wh", "counts");
    assert_eq!(bucket["latest"]["run_id"], json!("t@v2"), "{bucket}");
    assert_eq!(bucket["result"]["rows"], json!([{"n": 6}]), "{bucket}");
    reports.assert_running();
}
