//! End-to-end on the real binary: `freshet up` as a process, telemetry published over MQTT with the real
//! `mosquitto_pub` and paho-mqtt (Python) at QoS 1, rows read back from the Delta table with Python `deltalake`;
//! SIGTERM exits 0; a second start resumes with nothing lost and nothing twice.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use freshet_tests::up::{UpProcess, free_port, mosquitto_pub_lines, post_sql};
use freshet_tests::{poll_until, python_json};

/// `count` telemetry payloads numbered from `from`, with event times on two different days (two partitions).
fn payloads(from: usize, count: usize) -> Vec<String> {
    (from..from + count)
        .map(|i| {
            let ts = if i % 2 == 0 {
                1_763_700_000_000i64
            } else {
                1_763_800_000_000
            } + i as i64;
            format!(r#"{{"ts":{ts},"seq":{i},"temp":{}.5,"ok":true}}"#, 20 + i % 5)
        })
        .collect()
}

/// Publish `count` JSON messages for `device` at QoS 1 with mosquitto_pub (one connection per device).
fn publish(mqtt: u16, device: &str, from: usize, count: usize) {
    mosquitto_pub_lines(
        mqtt,
        &format!("devices/{device}/telemetry"),
        &format!("pub-{device}-{from}"),
        &payloads(from, count),
    );
}

/// The same with paho-mqtt (Python), MQTT 5 at QoS 1; every publish acknowledged.
fn publish_paho(mqtt: u16, device: &str, from: usize, count: usize) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payloads(from, count).join("\n")).unwrap();
    let out = python_json(
        "ingest_paho.py",
        &[
            "127.0.0.1",
            &mqtt.to_string(),
            "5",
            "1",
            &count.to_string(),
            &format!("pub-{device}-{from}"),
            &format!("devices/{device}/telemetry"),
            "tcp",
            file.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out["published"], count, "{out}");
}

fn table_rows(table: &Path) -> Vec<serde_json::Value> {
    if !table.join("_delta_log").exists() {
        return Vec::new();
    }
    python_json("delivery_rows.py", &[table.to_str().unwrap()])
        .as_array()
        .unwrap()
        .clone()
}

fn check_rows(rows: &[serde_json::Value], expected: usize) {
    let keys: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["_shard_id"].as_str().unwrap().to_string(),
                r["_sequence_number"].to_string(),
            )
        })
        .collect();
    assert_eq!(keys.len(), rows.len(), "every (shard, sequence number) once");
    let messages: BTreeSet<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["device_id"].as_str().unwrap().to_string(),
                r["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(messages.len(), expected, "every published message exactly once");
    for r in rows {
        let device = r["device_id"].as_str().unwrap();
        assert_eq!(r["_topic"], format!("devices/{device}/telemetry"));
        assert_eq!(r["_partition_key"], device, "partition key = device id");
        assert!(
            r["_client_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("pub-{device}-"))
        );
        assert!(r["temp"].as_f64().is_some() && r["ok"] == true);
    }
    let dates: BTreeSet<&str> = rows.iter().map(|r| r["event_date"].as_str().unwrap()).collect();
    assert_eq!(
        dates,
        BTreeSet::from(["2025-11-21", "2025-11-22"]),
        "partitioned by the payload's event time"
    );
}

#[test]
fn up_delivers_mqtt_telemetry_into_delta_and_resumes_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("freshet-data");
    let table = data_dir.join("warehouse/telemetry");
    let (http, mqtt) = (free_port(), free_port());

    let up = UpProcess::start(&data_dir, http, mqtt);
    for device in ["dev-a", "dev-b", "dev-c", "dev-d"] {
        publish(mqtt, device, 0, 50);
    }
    let rows = poll_until(Duration::from_secs(90), "200 rows in the Delta table", || {
        let rows = table_rows(&table);
        (rows.len() >= 200).then_some(rows)
    });
    check_rows(&rows, 200);
    assert!(up.terminate().success(), "SIGTERM exits 0");

    // Second start: publish more; the table gets exactly the new ones.
    let up = UpProcess::start(&data_dir, http, mqtt);
    publish(mqtt, "dev-a", 50, 50);
    publish_paho(mqtt, "dev-e", 50, 50);
    let rows = poll_until(Duration::from_secs(90), "300 rows in the Delta table", || {
        let rows = table_rows(&table);
        (rows.len() >= 300).then_some(rows)
    });
    assert!(up.terminate().success(), "SIGTERM exits 0");
    let rows_after_stop = table_rows(&table);
    assert_eq!(
        rows_after_stop.len(),
        rows.len(),
        "nothing more was written after the stop"
    );
    check_rows(&rows_after_stop, 300);
}

#[test]
fn up_answers_sql_over_the_delivered_table() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("freshet-data");
    let (http, mqtt) = (free_port(), free_port());
    let up = UpProcess::start(&data_dir, http, mqtt);
    let (status, answer) = post_sql(http, "SELEC 1", None).unwrap();
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["kind"], "syntax_error");
    for device in ["dev-q1", "dev-q2"] {
        publish(mqtt, device, 0, 20);
    }
    let sql = "SELECT device_id, count(*) AS n, count(DISTINCT seq) AS seqs FROM telemetry GROUP BY device_id ORDER BY device_id";
    let rows = poll_until(Duration::from_secs(90), "40 rows through /v1/sql", || {
        let (status, answer) = post_sql(http, sql, None)?;
        let rows = answer["rows"].as_array()?.clone();
        let total: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
        (status == 200 && total >= 40).then_some(rows)
    });
    assert_eq!(
        rows,
        [
            serde_json::json!({"device_id": "dev-q1", "n": 20, "seqs": 20}),
            serde_json::json!({"device_id": "dev-q2", "n": 20, "seqs": 20}),
        ]
    );
    let (status, answer) = post_sql(http, "DROP TABLE telemetry", None).unwrap();
    assert_eq!(status, 403);
    assert_eq!(answer["error"]["kind"], "forbidden_statement");
    assert!(up.terminate().success(), "SIGTERM exits 0");
}
