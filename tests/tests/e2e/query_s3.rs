//! SQL over a warehouse on a real S3-compatible server (moto_server from PyPI `moto[server]`, started here on
//! 127.0.0.1): a delivery writes a Delta table to `s3://freshet/wh/feed` in two commits; the same rows are then
//! visible through `POST /v1/sql` (the query engine over `s3://freshet/wh` with the delivery's storage options) and
//! through the `freshet query --warehouse s3://...` binary (once with `--storage-option`, once with the standard AWS
//! environment variables), and agree with the Python `deltalake` package on the row count and a checksum over every
//! row. The listing finds the table (and not a prefix without a `_delta_log/`), time travel reads the first commit,
//! and SQL still cannot name an object or a local path.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use freshet_process::{CancellationToken, DeliveryConfig, spawn_delivery};
use freshet_query::{QueryEngine, QueryLimits, Warehouse};
use freshet_storage::{PutRecord, Store, StoreConfig, StreamName, StreamStore, SystemClock};
use freshet_tests::s3::{s3_options, start_moto};
use freshet_tests::{fnv1a64_lines, freshet_bin, python_json, read_stream};
use serde_json::{Value, json};

/// (status, JSON body) of one `POST /v1/sql` with the default (JSON) format.
async fn post_sql(addr: SocketAddr, sql: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/sql"))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(120))
        .body(json!({ "sql": sql }).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
    )
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_s3_warehouse_matches_deltalake() {
    let (_moto, s3) = start_moto().await;
    let options = s3_options(&s3);

    // A delivery writes two commits into s3://freshet/wh/feed.
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
    let stream = StreamName::new("feed").unwrap();
    store.create_stream(&stream, 2).await.unwrap();
    let mut config = DeliveryConfig::new("s3q", "feed", "feed", "s3://freshet/wh");
    config.storage_options = options.clone();
    config.buffer_interval_ms = 60_000;
    config.maintenance.optimize_every_commits = 0;
    let shutdown = CancellationToken::new();
    let delivery = spawn_delivery(config, store.clone(), shutdown.clone());
    let mut n = 0u64;
    let mut committed = 0u64;
    let mut first_round = (0, 0); // (table version, rows) after the first round
    for round in 0..2 {
        let records = (0..150)
            .map(|_| {
                n += 1;
                PutRecord::new(
                    format!("dev-{}", n % 5),
                    json!({"id": format!("r{n}"), "device": format!("dev-{}", n % 5), "v": n * 3 % 17})
                        .to_string(),
                )
            })
            .collect();
        for r in store.put_records(&stream, records).await.unwrap() {
            r.unwrap();
        }
        // flush_now commits what the delivery has read so far: poll until every record is in a commit.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while committed < n {
            let flush = delivery.flush_now().await.unwrap();
            committed += flush.rows;
            if let Some(version) = flush.version {
                first_round.0 = if round == 0 { version } else { first_round.0 };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {committed} of {n} rows committed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling with a deadline
        }
        if round == 0 {
            first_round.1 = committed;
        }
    }
    delivery.shutdown().await.unwrap();
    // A prefix without a _delta_log/ is not a table.
    let put = reqwest::Client::new()
        .put(format!("http://{s3}/freshet/wh/notes/readme.txt"))
        .body("not a table")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    let mut expected = Vec::new();
    for (shard, records) in read_stream(store.as_ref(), &stream).await {
        for r in &records {
            let v: Value = serde_json::from_slice(&r.data).unwrap();
            expected.push(format!(
                "{shard}|{}|{}",
                r.sequence_number,
                v["id"].as_str().unwrap()
            ));
        }
    }
    expected.sort();
    assert_eq!(expected.len() as u64, n);
    let checksum = fnv1a64_lines(&expected).to_string();

    // POST /v1/sql over the S3 warehouse.
    let engine = QueryEngine::new(
        Warehouse::open("s3://freshet/wh", options.clone()).unwrap(),
        QueryLimits::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = freshet_query::router(Arc::new(engine));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (status, tables) = post_sql(
        addr,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .await;
    assert_eq!(status, 200, "{tables}");
    let names: Vec<String> = tables["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| text(&r["table_name"]))
        .collect();
    assert!(names.contains(&"feed".to_string()), "{names:?}");
    assert!(!names.contains(&"notes".to_string()), "{names:?}");

    let (status, rows) = post_sql(addr, "SELECT _shard_id, _sequence_number, id FROM feed").await;
    assert_eq!(status, 200, "{rows}");
    let mut ours: Vec<String> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}",
                text(&r["_shard_id"]),
                text(&r["_sequence_number"]),
                text(&r["id"])
            )
        })
        .collect();
    ours.sort();
    assert_eq!(ours.len(), expected.len());
    assert_eq!(fnv1a64_lines(&ours).to_string(), checksum);

    // The Python deltalake package reads the same table from S3 and agrees.
    let opts = serde_json::to_string(&options).unwrap();
    let seen = python_json(
        "delivery_read.py",
        &["s3://freshet/wh/feed", "id", "--options", &opts],
    );
    assert_eq!(seen["deltalake"]["rows"], json!(n), "{seen}");
    assert_eq!(seen["deltalake"]["checksum"], json!(checksum), "{seen}");

    // Time travel: the version the first round ended at holds only its rows.
    let (version, rows) = first_round;
    let (status, then) = post_sql(addr, &format!("SELECT count(*) AS n FROM feed@v{version}")).await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["rows"][0]["n"], json!(rows), "{then}");
    assert!(rows < n);
    let (status, sum) = post_sql(addr, "SELECT sum(v) AS s, count(DISTINCT device) AS d FROM feed").await;
    assert_eq!(status, 200, "{sum}");
    assert_eq!(
        sum["rows"][0]["s"],
        json!((1..=n).map(|i| i * 3 % 17).sum::<u64>()),
        "{sum}"
    );
    assert_eq!(sum["rows"][0]["d"], json!(5), "{sum}");

    // The sandbox holds: neither objects nor local files can be named through SQL.
    for sql in [
        "SELECT * FROM 's3://freshet/wh/feed/_delta_log/00000000000000000000.json'",
        "SELECT * FROM '/etc/passwd'",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION 's3://freshet/wh/feed/'",
        "SELECT * FROM notes",
    ] {
        let (status, body) = post_sql(addr, sql).await;
        assert!((400..500).contains(&status), "{sql}: {status} {body}");
    }

    // The binary, with --storage-option and with the standard AWS environment variables.
    let count_sql = "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM feed";
    let mut with_flags = Command::new(freshet_bin());
    with_flags.args(["query", "--format", "json", "--warehouse", "s3://freshet/wh"]);
    for (k, v) in &options {
        with_flags.arg("--storage-option").arg(format!("{k}={v}"));
    }
    let mut with_env = Command::new(freshet_bin());
    with_env.args(["query", "--format", "json", "--warehouse", "s3://freshet/wh"]);
    with_env.envs(&options);
    for mut command in [with_flags, with_env] {
        let out = command.arg(count_sql).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["rows"][0]["n"], json!(n), "{answer}");
        assert_eq!(answer["rows"][0]["ids"], json!(n), "{answer}");
    }
    // A bucket that does not exist is a clear error, not a crash.
    let out = Command::new(freshet_bin())
        .args(["query", "--warehouse", "s3://no-such-bucket/wh"])
        .envs(&options)
        .arg("SELECT 1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no-such-bucket"),
        "{stderr}"
    );
    shutdown.cancel();
}
