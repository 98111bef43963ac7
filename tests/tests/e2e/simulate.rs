//! `freshet simulate` on the real binary: against a `freshet up` process it publishes over five MQTT
//! connections, its summary says every message sent was acknowledged, and the Delta table `warehouse/telemetry`
//! gets exactly those messages (read back with Python `deltalake`), one client id per device. Against a port
//! nobody listens on it exits non-zero with a one-line reason.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use freshet_tests::up::{UpProcess, free_port};
use freshet_tests::{freshet_bin, poll_until, python_json};

/// The `key=value` pairs of the summary's last line.
fn summary(stdout: &str) -> std::collections::BTreeMap<String, String> {
    let last = stdout.lines().last().expect("a summary line");
    last.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn simulate_publishes_acknowledged_telemetry_that_lands_in_delta() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("freshet-data");
    let table = data_dir.join("warehouse/telemetry");
    let (http, mqtt) = (free_port(), free_port());
    let _up = UpProcess::start(&data_dir, http, mqtt);

    let out = Command::new(freshet_bin())
        .args(["simulate", "--devices", "5", "--rate", "100", "--duration", "3s"])
        .args(["--mqtt-addr", &format!("127.0.0.1:{mqtt}")])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "freshet simulate failed: {stdout}");
    let s = summary(&stdout);
    assert_eq!(s["sent"], "300", "{stdout}");
    assert_eq!(s["acknowledged"], s["sent"], "{stdout}");
    assert_eq!(s["failed"], "0", "{stdout}");
    let sent: usize = s["sent"].parse().unwrap();

    let rows = poll_until(Duration::from_secs(90), "300 rows in the Delta table", || {
        if !table.join("_delta_log").exists() {
            return None;
        }
        let rows = python_json("delivery_rows.py", &[table.to_str().unwrap()])
            .as_array()
            .unwrap()
            .clone();
        (rows.len() >= sent).then_some(rows)
    });
    assert_eq!(rows.len(), sent, "exactly the acknowledged messages");
    let devices: BTreeSet<&str> = rows.iter().map(|r| r["device_id"].as_str().unwrap()).collect();
    assert_eq!(devices.len(), 5, "{devices:?}");
    let messages: BTreeSet<(&str, i64)> = rows
        .iter()
        .map(|r| (r["device_id"].as_str().unwrap(), r["seq"].as_i64().unwrap()))
        .collect();
    assert_eq!(messages.len(), sent, "every (device, seq) once");
    for r in &rows {
        let device = r["device_id"].as_str().unwrap();
        assert_eq!(r["_client_id"], format!("sim-{device}"));
        assert_eq!(r["_topic"], format!("devices/{device}/telemetry"));
        for key in ["ts", "temp", "humidity", "battery"] {
            assert!(r[key].as_f64().is_some(), "{key} in {r}");
        }
        assert!(r["status"].is_string(), "{r}");
    }
}

#[test]
fn simulate_exits_non_zero_with_one_line_when_the_broker_is_unreachable() {
    let port = free_port(); // bound and released: nobody listens there
    let out = Command::new(freshet_bin())
        .args(["simulate", "--devices", "2", "--rate", "10", "--duration", "1s"])
        .args(["--mqtt-addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to the MQTT broker"), "{stderr}");
}
