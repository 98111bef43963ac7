//! The same aggregate queries through freshet (DataFusion over the Delta tables) and through DuckDB (Python, over
//! the same tables read with delta-rs as Arrow datasets) give the same answers (floats within 1e-9 relative).

use freshet_query::{Format, QueryEngine, QueryLimits, Warehouse, encode};
use freshet_tests::python_json;
use serde_json::Value;

use crate::query_golden::fixture_warehouse;

const QUERIES: &[&str] = &[
    "SELECT device_id, count(*) AS n, avg(temp) AS a, min(temp) AS lo, max(temp) AS hi, sum(humidity) AS h \
     FROM telemetry GROUP BY device_id ORDER BY device_id",
    "SELECT event_date, count(*) AS n, count(temp) AS t, stddev_samp(temp) AS sd FROM telemetry \
     GROUP BY event_date ORDER BY event_date",
    "SELECT d.site, count(*) AS n, avg(t.humidity) AS h FROM telemetry t JOIN devices d \
     ON t.device_id = d.device_id GROUP BY d.site ORDER BY d.site",
    "SELECT status, median(humidity) AS m, count(DISTINCT device_id) AS devices FROM telemetry \
     GROUP BY status ORDER BY status",
    "SELECT device_id, extract(hour FROM ts) AS hour, count(*) AS n, avg(temp) AS a FROM telemetry \
     WHERE ts >= TIMESTAMP '2025-11-22T06:00:00Z' AND ts < TIMESTAMP '2025-11-22T09:00:00Z' \
     GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT device_id, max(temp) AS hi FROM telemetry GROUP BY device_id ORDER BY hi DESC, device_id LIMIT 3",
];

/// The rows of freshet's JSON answer as lists in column order.
fn rows_of(json: &Value) -> Vec<Vec<Value>> {
    let names: Vec<&str> = json["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| names.iter().map(|n| row[*n].clone()).collect())
        .collect()
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_aggregates_match_duckdb() {
    let warehouse = fixture_warehouse();
    let dir = warehouse.path().to_str().unwrap();
    let duckdb = python_json(
        "query_duckdb.py",
        &[dir, &serde_json::to_string(QUERIES).unwrap()],
    );
    let engine = QueryEngine::new(Warehouse::local(warehouse.path()), QueryLimits::default());
    for (i, sql) in QUERIES.iter().enumerate() {
        let result = engine.sql(sql).await.unwrap();
        let json: Value = serde_json::from_slice(&encode(&result, Format::Json).unwrap()).unwrap();
        let ours = rows_of(&json);
        let theirs: Vec<Vec<Value>> = serde_json::from_value(duckdb[i].clone()).unwrap();
        assert!(!ours.is_empty(), "{sql}: no rows");
        let equal = ours.len() == theirs.len()
            && ours
                .iter()
                .zip(&theirs)
                .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)));
        assert!(equal, "{sql}\nfreshet: {ours:?}\nduckdb:  {theirs:?}");
    }
}
