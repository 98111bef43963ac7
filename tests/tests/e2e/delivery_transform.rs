//! The HTTP transform (Firehose's Lambda data-transformation contract) against a real function server started
//! here: an axum server on 127.0.0.1 that is the user's transform function (not a mock of a dependency). It
//! enriches `ok` records, drops `drop` ones, fails `fail` ones, answers undecodable data for `garbage` and leaves
//! `omit` out of its answer; its very first invocation answers 500, so the delivery must retry. A second route
//! always answers 503: with a short retry duration, its records land in the error table as
//! `transform_unavailable` and the delivery keeps going. The tables are read back with Python `deltalake`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use freshet_process::{
    CancellationToken, DeliveryConfig, DeliveryHandle, HttpTransformConfig, spawn_delivery,
};
use freshet_storage::{PutRecord, Store, StoreConfig, StreamName, StreamStore, SystemClock};
use freshet_tests::python_json;
use serde_json::{Value, json};

/// One request's top-level keys, first record's keys and first record's Kinesis metadata keys.
type RequestShape = (Vec<String>, Vec<String>, Vec<String>);

#[derive(Default)]
struct Function {
    /// Whether the first invocation has been failed already.
    failed_once: AtomicBool,
    /// Invocations answered with a 2xx.
    answered: AtomicU64,
    /// Invocations of the route that is always down.
    down_calls: AtomicU64,
    /// Every request's top-level keys and first record's keys, to check the request shape.
    shapes: std::sync::Mutex<Vec<RequestShape>>,
}

fn b64(data: &[u8]) -> String {
    freshet_tests::base64_encode(data)
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

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

async fn transform(
    State(f): State<Arc<Function>>,
    headers: axum::http::HeaderMap,
    Json(event): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer secret") {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "no token"})));
    }
    if !f.failed_once.swap(true, Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "cold start"})),
        );
    }
    let records = event["records"].as_array().unwrap();
    f.shapes.lock().unwrap().push((
        keys(&event),
        keys(&records[0]),
        keys(&records[0]["kinesisRecordMetadata"]),
    ));
    let mut out = Vec::new();
    for r in records {
        let id = r["recordId"].clone();
        let mut payload: Value = serde_json::from_slice(&b64_decode(r["data"].as_str().unwrap())).unwrap();
        match payload["action"].as_str().unwrap() {
            "ok" => {
                payload["enriched"] = json!(true);
                payload["source_shard"] = r["kinesisRecordMetadata"]["shardId"].clone();
                let data = b64(payload.to_string().as_bytes());
                out.push(json!({"recordId": id, "result": "Ok", "data": data}));
            }
            "drop" => out.push(json!({"recordId": id, "result": "Dropped", "data": r["data"]})),
            "fail" => out.push(json!({"recordId": id, "result": "ProcessingFailed", "data": r["data"]})),
            "garbage" => out.push(json!({"recordId": id, "result": "Ok", "data": "%%% not base64 %%%"})),
            "omit" => {}
            other => panic!("unexpected action {other}"),
        }
    }
    f.answered.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, Json(json!({"records": out})))
}

async fn down(State(f): State<Arc<Function>>) -> StatusCode {
    f.down_calls.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

/// Flush until `total` records are accounted for (rows + error rows + dropped).
async fn flush_until(d: &DeliveryHandle, total: u64) -> (u64, u64, u64) {
    let (mut rows, mut errors, mut dropped) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while rows + errors + dropped < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {rows}+{errors}+{dropped} of {total} delivered"
        );
        let r = d.flush_now().await.unwrap();
        rows += r.rows;
        errors += r.error_rows;
        dropped += r.dropped_rows;
    }
    (rows, errors, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_http_transform_contract_round_trip_and_endpoint_down() {
    let function = Arc::new(Function::default());
    let app = axum::Router::new()
        .route("/transform", post(transform))
        .route("/down", post(down))
        .with_state(function.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_stop = CancellationToken::new();
    let stop = server_stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
    let warehouse = dir.path().join("wh");
    let stream = StreamName::new("tx").unwrap();
    store.create_stream(&stream, 1).await.unwrap();
    let mut config = DeliveryConfig::new("tx", "tx", "tx", warehouse.display().to_string());
    config.buffer_interval_ms = 900_000;
    config.maintenance.optimize_every_commits = 0;
    let mut http = HttpTransformConfig::new(format!("http://{addr}/transform"));
    http.records_max = 4; // several invocations per flush
    http.retry_duration_seconds = 60;
    http.bearer_token = Some("secret".into());
    config.transform_http = Some(http);
    // The SQL transform runs on what the function returned.
    config.transform_sql = Some("SELECT *, n * 10 AS n10 FROM batch".into());

    let actions = [
        "ok", "drop", "fail", "ok", "garbage", "ok", "omit", "ok", "drop", "ok", "fail", "ok",
    ];
    let records = actions
        .iter()
        .enumerate()
        .map(|(n, a)| PutRecord::new("k", json!({"n": n, "action": a}).to_string()))
        .collect();
    for r in store.put_records(&stream, records).await.unwrap() {
        r.unwrap();
    }
    let d = spawn_delivery(config.clone(), store.clone(), CancellationToken::new());
    let (rows, errors, dropped) = flush_until(&d, actions.len() as u64).await;
    assert_eq!((rows, errors, dropped), (6, 4, 2));
    assert_eq!(d.counters().dropped_rows.load(Ordering::Relaxed), 2);
    d.shutdown().await.unwrap();
    // 12 records in invocations of 4, one of them retried after the 500.
    assert!(function.failed_once.load(Ordering::SeqCst));
    assert_eq!(function.answered.load(Ordering::SeqCst), 3);
    for (top, record, meta) in function.shapes.lock().unwrap().iter() {
        assert_eq!(
            top,
            &[
                "deliveryStreamArn",
                "invocationId",
                "records",
                "region",
                "sourceKinesisStreamArn"
            ]
        );
        assert_eq!(
            record,
            &[
                "approximateArrivalTimestamp",
                "data",
                "kinesisRecordMetadata",
                "recordId"
            ]
        );
        assert_eq!(
            meta,
            &[
                "approximateArrivalTimestamp",
                "partitionKey",
                "sequenceNumber",
                "shardId",
                "subsequenceNumber"
            ]
        );
    }

    let table = |t: &str| warehouse.join(t).display().to_string();
    let good = python_json("delivery_rows.py", &[&table("tx")]);
    let mut ns: Vec<i64> = Vec::new();
    for r in good.as_array().unwrap() {
        assert_eq!(r["action"], "ok");
        assert_eq!(r["enriched"], true, "{r}");
        assert_eq!(r["source_shard"], "shardId-000000000000");
        assert_eq!(r["n10"].as_i64().unwrap(), r["n"].as_i64().unwrap() * 10);
        ns.push(r["n"].as_i64().unwrap());
    }
    ns.sort();
    assert_eq!(ns, vec![0, 3, 5, 7, 9, 11]);
    let bad = python_json("delivery_rows.py", &[&table("tx_errors")]);
    let mut kinds: Vec<(String, i64)> = bad
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let raw: Value = serde_json::from_str(r["raw_data"].as_str().unwrap()).unwrap();
            assert!(!r["error_message"].as_str().unwrap().is_empty());
            (
                r["error_kind"].as_str().unwrap().to_string(),
                raw["n"].as_i64().unwrap(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("transform_invalid_response".to_string(), 4),
            ("transform_invalid_response".to_string(), 6),
            ("transform_processing_failed".to_string(), 2),
            ("transform_processing_failed".to_string(), 10),
        ]
    );

    // An endpoint that stays down: past the retry duration, the records go to the error table and the delivery
    // keeps going (later records are delivered once the endpoint answers again).
    let stream2 = StreamName::new("tx2").unwrap();
    store.create_stream(&stream2, 1).await.unwrap();
    let mut config2 = DeliveryConfig::new("tx2", "tx2", "tx2", warehouse.display().to_string());
    config2.buffer_interval_ms = 900_000;
    config2.maintenance.optimize_every_commits = 0;
    let mut http2 = HttpTransformConfig::new(format!("http://{addr}/down"));
    http2.retry_duration_seconds = 2;
    config2.transform_http = Some(http2);
    let put = |n: usize| {
        let store = store.clone();
        let stream2 = stream2.clone();
        async move {
            let records = (0..n)
                .map(|i| PutRecord::new("k", json!({"n": i, "action": "ok"}).to_string()))
                .collect();
            for r in store.put_records(&stream2, records).await.unwrap() {
                r.unwrap();
            }
        }
    };
    put(5).await;
    let d2 = spawn_delivery(config2.clone(), store.clone(), CancellationToken::new());
    let (rows, errors, dropped) = flush_until(&d2, 5).await;
    assert_eq!((rows, errors, dropped), (0, 5, 0));
    assert!(
        function.down_calls.load(Ordering::SeqCst) >= 2,
        "the down endpoint was retried"
    );
    assert!(!d2.is_finished(), "the delivery keeps going");
    d2.shutdown().await.unwrap();
    // The same delivery pointed at the working function delivers what comes next.
    let mut http3 = HttpTransformConfig::new(format!("http://{addr}/transform"));
    http3.bearer_token = Some("secret".into());
    config2.transform_http = Some(http3);
    let d2 = spawn_delivery(config2, store.clone(), CancellationToken::new());
    put(3).await;
    let (rows, errors, _) = flush_until(&d2, 3).await;
    assert_eq!((rows, errors), (3, 0));
    d2.shutdown().await.unwrap();
    let bad = python_json("delivery_rows.py", &[&table("tx2_errors")]);
    let bad = bad.as_array().unwrap();
    assert_eq!(bad.len(), 5);
    for r in bad {
        assert_eq!(r["error_kind"], "transform_unavailable");
        let msg = r["error_message"].as_str().unwrap();
        assert!(msg.contains("503"), "{msg}");
    }
    assert_eq!(
        python_json("delivery_rows.py", &[&table("tx2")])
            .as_array()
            .unwrap()
            .len(),
        3
    );

    server_stop.cancel();
    server.await.unwrap();
}
