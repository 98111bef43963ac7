//! `POST /v1/sql` served in-process over a fixture warehouse, driven with a real HTTP client: every result format,
//! JSON errors with 4xx statuses, each forbidden statement refused, a memory-hungry query stopped by its limit while
//! another query succeeds; and `freshet query` (the binary) against the warehouse directly and against the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use freshet_query::{QueryEngine, QueryLimits, Warehouse, decode_arrow_ipc};
use freshet_tests::freshet_bin;
use serde_json::Value;

use crate::query_golden::fixture_warehouse;

async fn serve(engine: QueryEngine) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = freshet_query::router(Arc::new(engine));
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// (status, content type, body) of one `POST /v1/sql`.
async fn post(addr: SocketAddr, accept: Option<&str>, body: String) -> (u16, String, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/v1/sql"))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(120))
        .body(body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.bytes().await.unwrap().to_vec())
}

async fn sql(addr: SocketAddr, accept: Option<&str>, sql: &str) -> (u16, String, Vec<u8>) {
    post(addr, accept, serde_json::json!({ "sql": sql }).to_string()).await
}

/// The error kind of a JSON error answer with a 4xx status.
fn caller_error(answer: &(u16, String, Vec<u8>)) -> String {
    let (status, content_type, body) = answer;
    assert!(
        (400..500).contains(status),
        "status {status}: {}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(content_type, "application/json");
    let json: Value = serde_json::from_slice(body).unwrap();
    assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    json["error"]["kind"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_http_formats_and_errors() {
    let warehouse = fixture_warehouse();
    let addr = serve(QueryEngine::new(
        Warehouse::local(warehouse.path()),
        QueryLimits::default(),
    ))
    .await;
    let count = "SELECT device_id, count(*) AS n FROM telemetry GROUP BY 1 ORDER BY 1";

    let (status, content_type, body) = sql(addr, None, count).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["columns"],
        serde_json::json!([{"name": "device_id", "type": "Utf8"}, {"name": "n", "type": "Int64"}])
    );
    assert_eq!(json["rows"].as_array().unwrap().len(), 5);
    assert_eq!(
        json["rows"][0],
        serde_json::json!({"device_id": "dev-0", "n": 600})
    );

    let (status, content_type, body) = sql(addr, Some("text/csv"), count).await;
    assert_eq!((status, content_type.as_str()), (200, "text/csv"));
    assert!(
        String::from_utf8(body)
            .unwrap()
            .starts_with("device_id,n\ndev-0,600\n")
    );

    let arrow = "application/vnd.apache.arrow.stream";
    let (status, content_type, body) = sql(addr, Some(arrow), count).await;
    assert_eq!((status, content_type.as_str()), (200, arrow));
    assert_eq!(decode_arrow_ipc(&body).unwrap().num_rows(), 5);

    let parquet = "application/vnd.apache.parquet";
    let (status, content_type, body) = sql(addr, Some(parquet), count).await;
    assert_eq!((status, content_type.as_str()), (200, parquet));
    assert!(body.starts_with(b"PAR1") && body.ends_with(b"PAR1"));

    assert_eq!(
        caller_error(&sql(addr, Some("text/html"), count).await),
        "not_acceptable"
    );
    assert_eq!(
        caller_error(&post(addr, None, "not json".into()).await),
        "bad_request"
    );
    let syntax = sql(addr, None, "SELECT 1;\n  SELEC 2").await;
    assert_eq!(caller_error(&syntax), "syntax_error");
    assert!(String::from_utf8_lossy(&syntax.2).contains("Line: 2, Column: 3"));
    assert_eq!(
        caller_error(&sql(addr, None, "SELECT * FROM nope").await),
        "unknown_table"
    );
    assert_eq!(
        caller_error(&sql(addr, None, "SELECT nope FROM telemetry").await),
        "unknown_column"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_http_forbidden_statements_are_refused() {
    let warehouse = fixture_warehouse();
    let addr = serve(QueryEngine::new(
        Warehouse::local(warehouse.path()),
        QueryLimits::default(),
    ))
    .await;
    let outside = warehouse.path().join("outside");
    let o = outside.display();
    let forbidden = [
        "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        format!(
            "CREATE EXTERNAL TABLE t2 STORED AS PARQUET LOCATION '{}/telemetry'",
            warehouse.path().display()
        ),
        format!("COPY telemetry TO '{o}.parquet'"),
        format!("COPY (SELECT 1 AS x) TO '{o}.csv' STORED AS CSV"),
        "INSERT INTO telemetry (device_id) VALUES ('x')".to_string(),
        "DELETE FROM telemetry".to_string(),
        "UPDATE telemetry SET temp = 0".to_string(),
        "SET datafusion.execution.target_partitions = 1".to_string(),
        "CREATE TABLE t3 AS SELECT 1".to_string(),
        "CREATE VIEW v AS SELECT * FROM telemetry".to_string(),
        "DROP TABLE telemetry".to_string(),
        "EXPLAIN ANALYZE INSERT INTO telemetry (device_id) VALUES ('x')".to_string(),
    ];
    for statement in &forbidden {
        let answer = sql(addr, None, statement).await;
        assert_eq!(answer.0, 403, "{statement}");
        assert_eq!(caller_error(&answer), "forbidden_statement", "{statement}");
    }
    // Paths and file-reading functions simply do not resolve.
    for statement in [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM \"../telemetry\"",
    ] {
        caller_error(&sql(addr, None, statement).await);
    }
    assert!(!warehouse.path().join("outside.parquet").exists());
    assert!(!warehouse.path().join("outside.csv").exists());
    let (status, _, body) = sql(addr, None, "SELECT count(*) AS n FROM telemetry").await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["rows"][0]["n"], 3000, "the table is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_http_memory_limit_stops_one_query_not_the_other() {
    let warehouse = fixture_warehouse();
    let limits = QueryLimits {
        memory_bytes_max: 16 << 20,
        ..QueryLimits::default()
    };
    let addr = serve(QueryEngine::new(Warehouse::local(warehouse.path()), limits)).await;
    let hungry = tokio::spawn(async move {
        sql(
            addr,
            None,
            "SELECT array_length(array_agg(value)) FROM generate_series(1, 50000000)",
        )
        .await
    });
    let modest = tokio::spawn(async move {
        sql(
            addr,
            None,
            "SELECT device_id, avg(temp) AS a FROM telemetry GROUP BY 1 ORDER BY 1",
        )
        .await
    });
    let (hungry, modest) = (hungry.await.unwrap(), modest.await.unwrap());
    assert_eq!(hungry.0, 422);
    assert_eq!(caller_error(&hungry), "memory_limit_exceeded");
    assert_eq!(modest.0, 200, "{}", String::from_utf8_lossy(&modest.2));
    let json: Value = serde_json::from_slice(&modest.2).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 5);
    // And the server still answers afterwards.
    assert_eq!(sql(addr, None, "SELECT 1 AS one").await.0, 200);
}

fn freshet_query(args: &[&str]) -> std::process::Output {
    std::process::Command::new(freshet_bin())
        .args(["query", "--log", "warn"])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_cli_reads_the_warehouse_and_a_server() {
    let warehouse = fixture_warehouse();
    let dir = warehouse.path().to_str().unwrap().to_string();
    let addr = serve(QueryEngine::new(Warehouse::local(&dir), QueryLimits::default())).await;
    let url = format!("http://{addr}");
    let sql = "SELECT count(*) AS n, count(DISTINCT device_id) AS devices FROM telemetry";
    let (d, u) = (dir.clone(), url.clone());
    let outputs = tokio::task::spawn_blocking(move || {
        [
            freshet_query(&["--warehouse", &d, sql]),
            freshet_query(&["--warehouse", &d, "--format", "csv", sql]),
            freshet_query(&["--warehouse", &d, "--format", "json", sql]),
            freshet_query(&["--url", &u, sql]),
            freshet_query(&[
                "--url",
                &u,
                "--format",
                "csv",
                "SELECT count(*) AS n FROM telemetry@v0",
            ]),
            freshet_query(&["--warehouse", &d, "DROP TABLE telemetry"]),
            freshet_query(&["--url", &u, "COPY telemetry TO '/tmp/x.csv'"]),
        ]
    })
    .await
    .unwrap();
    let stdout = |i: usize| {
        assert!(
            outputs[i].status.success(),
            "{i}: {}",
            String::from_utf8_lossy(&outputs[i].stderr)
        );
        String::from_utf8(outputs[i].stdout.clone()).unwrap()
    };
    let table = stdout(0);
    assert!(
        table.contains("| n    | devices |") && table.contains("| 3000 | 5       |"),
        "{table}"
    );
    assert_eq!(stdout(1), "n,devices\n3000,5\n");
    let json: Value = serde_json::from_str(&stdout(2)).unwrap();
    assert_eq!(json["rows"][0], serde_json::json!({"n": 3000, "devices": 5}));
    assert_eq!(stdout(3), table, "the server answers what the warehouse does");
    assert_eq!(stdout(4), "n\n2000\n");
    for i in [5, 6] {
        assert!(!outputs[i].status.success());
        let stderr = String::from_utf8_lossy(&outputs[i].stderr);
        assert!(stderr.contains("forbidden"), "{stderr}");
    }
}

/// DataFusion's own `DATAFUSION_*` variables tune the engine of `freshet query` (and of `/v1/sql`); a bad value is
/// a clear error, not a silently ignored setting.
#[test]
fn query_engine_takes_datafusion_settings_from_the_environment() {
    let warehouse = fixture_warehouse();
    let dir = warehouse.path().to_str().unwrap();
    let setting = "SELECT value FROM information_schema.df_settings \
                   WHERE name = 'datafusion.execution.target_partitions'";
    let run = |value: Option<&str>| {
        let mut cmd = std::process::Command::new(freshet_bin());
        cmd.args([
            "query",
            "--log",
            "warn",
            "--warehouse",
            dir,
            "--format",
            "csv",
            setting,
        ]);
        cmd.env_remove("DATAFUSION_EXECUTION_TARGET_PARTITIONS");
        if let Some(v) = value {
            cmd.env("DATAFUSION_EXECUTION_TARGET_PARTITIONS", v);
        }
        cmd.output().unwrap()
    };
    let tuned = run(Some("7"));
    assert!(
        tuned.status.success(),
        "{}",
        String::from_utf8_lossy(&tuned.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&tuned.stdout), "value\n7\n");
    let default = run(None);
    assert!(
        default.status.success(),
        "{}",
        String::from_utf8_lossy(&default.stderr)
    );
    assert_ne!(String::from_utf8_lossy(&default.stdout), "value\n7\n");
    let bad = run(Some("many"));
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("DATAFUSION_* environment"), "{stderr}");
}
