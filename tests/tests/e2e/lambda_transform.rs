//! Batch delivery (the Lambda shape) runs the HTTP transform like the streaming delivery: a real function server on
//! 127.0.0.1 (axum, the user's transform function, not a mock of a dependency) enriches `ok` records, drops `drop`
//! ones and fails `fail` ones, and must see AWS's 56-digit sequence numbers (not the delivery's internal ordinals).
//! A re-delivered batch is skipped without calling the function again. A function that keeps failing past the
//! invocation's deadline leaves nothing committed and the shard reported failed. Tables are read with Python
//! `deltalake`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use freshet_process::batch::BatchDelivery;
use freshet_process::{DeliveryConfig, HttpTransformConfig};
use freshet_tests::{base64_encode, python_json};
use serde_json::{Value, json};

const STREAM_ARN: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/telemetry";
const AWS_SEQ_BASE: &str = "4959033827149025660855969253836157109592157598913658";

#[derive(Default)]
struct Function {
    /// Invocations of the working route.
    calls: AtomicU64,
    /// Invocations of the route that is always down.
    down_calls: AtomicU64,
}

fn b64_decode(s: &str) -> Vec<u8> {
    // The test's own tiny decoder (standard alphabet), so the check does not reuse the code under test.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

async fn transform(State(f): State<Arc<Function>>, Json(event): Json<Value>) -> Json<Value> {
    f.calls.fetch_add(1, Ordering::SeqCst);
    let mut out = Vec::new();
    for r in event["records"].as_array().unwrap() {
        let id = r["recordId"].clone();
        let mut payload: Value = serde_json::from_slice(&b64_decode(r["data"].as_str().unwrap())).unwrap();
        match payload["action"].as_str().unwrap() {
            "ok" => {
                payload["enriched"] = json!(true);
                payload["seen_sequence_number"] = r["kinesisRecordMetadata"]["sequenceNumber"].clone();
                payload["seen_record_id"] = id.clone();
                let data = base64_encode(payload.to_string().as_bytes());
                out.push(json!({"recordId": id, "result": "Ok", "data": data}));
            }
            "drop" => out.push(json!({"recordId": id, "result": "Dropped", "data": r["data"]})),
            "fail" => out.push(json!({"recordId": id, "result": "ProcessingFailed", "data": r["data"]})),
            other => panic!("unexpected action {other}"),
        }
    }
    Json(json!({"records": out}))
}

async fn down(State(f): State<Arc<Function>>) -> StatusCode {
    f.down_calls.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

fn aws_seq(n: u32) -> String {
    format!("{AWS_SEQ_BASE}{n:04}")
}

/// A Kinesis event of one shard, as an event source mapping sends it.
fn event(records: &[(u32, &str)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(n, action)| {
            let data = json!({"id": format!("r{n}"), "action": action, "ts": 1_763_784_000_000_i64});
            json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "d1",
                    "sequenceNumber": aws_seq(*n),
                    "data": base64_encode(data.to_string().as_bytes()),
                    "approximateArrivalTimestamp": 1_763_784_000.125
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("shardId-000000000000:{}", aws_seq(*n)),
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/freshet-lambda",
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN
            })
        })
        .collect();
    json!({ "Records": records })
}

fn config(warehouse: &str, table: &str, url: String, retry_duration_seconds: u64) -> DeliveryConfig {
    let mut c = DeliveryConfig::new(table, "telemetry", table, warehouse);
    let mut t = HttpTransformConfig::new(url);
    t.retry_duration_seconds = retry_duration_seconds;
    c.transform_http = Some(t);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_delivery_runs_the_http_transform() {
    let f = Arc::new(Function::default());
    let app = axum::Router::new()
        .route("/transform", post(transform))
        .route("/down", post(down))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().display().to_string();

    let mut d =
        BatchDelivery::new(config(&warehouse, "tx", format!("http://{addr}/transform"), 300)).unwrap();
    let records = [(1, "ok"), (2, "drop"), (3, "fail"), (4, "ok")];
    let deadline = Instant::now() + Duration::from_secs(60);
    let (response, report) = d
        .handle(serde_json::from_value(event(&records)).unwrap(), deadline)
        .await
        .unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        report.failed_shards
    );
    assert_eq!((report.rows, report.dropped, report.error_rows), (2, 1, 1));
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);

    let mut rows: Vec<Value> = python_json("delivery_rows.py", &[&format!("{warehouse}/tx")])
        .as_array()
        .unwrap()
        .clone();
    rows.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    let got: Vec<(&str, bool, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                r["enriched"].as_bool().unwrap(),
                r["seen_sequence_number"].as_str().unwrap(),
                r["seen_record_id"].as_str().unwrap(),
                r["_source_sequence_number"].as_str().unwrap(),
            )
        })
        .collect();
    let (s1, s4) = (aws_seq(1), aws_seq(4));
    let (id1, id4) = (
        format!("shardId-000000000000:{s1}"),
        format!("shardId-000000000000:{s4}"),
    );
    assert_eq!(
        got,
        vec![
            ("r1", true, s1.as_str(), id1.as_str(), s1.as_str()),
            ("r4", true, s4.as_str(), id4.as_str(), s4.as_str()),
        ]
    );
    let errors = python_json("delivery_rows.py", &[&format!("{warehouse}/tx_errors")]);
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error_kind"], "transform_processing_failed");
    assert_eq!(errors[0]["_source_sequence_number"], aws_seq(3).as_str());
    assert!(errors[0]["raw_data"].as_str().unwrap().contains("\"fail\""));

    // The same batch again (AWS re-delivers after a failed invocation): skipped, the function is not called.
    let (response, report) = d
        .handle(serde_json::from_value(event(&records)).unwrap(), deadline)
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!((report.rows, report.skipped), (0, 4));
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);

    // A function that is down past the invocation's deadline: nothing committed, the shard reported failed from
    // its first record, and the function was tried more than once.
    let mut d = BatchDelivery::new(config(&warehouse, "down", format!("http://{addr}/down"), 300)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let (response, report) = d
        .handle(
            serde_json::from_value(event(&[(7, "ok"), (8, "ok")])).unwrap(),
            deadline,
        )
        .await
        .unwrap();
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.as_deref())
        .collect();
    assert_eq!(failed, vec![aws_seq(7).as_str()], "{:?}", report.failed_shards);
    assert_eq!(report.rows, 0);
    assert!(f.down_calls.load(Ordering::SeqCst) >= 2);
    let down_rows = python_json("delivery_rows.py", &[&format!("{warehouse}/down")]);
    assert_eq!(down_rows.as_array().map(Vec::len), Some(0), "{down_rows}");
    server.abort();
}
