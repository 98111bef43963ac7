//! A real S3-compatible server for tests: `moto_server` (PyPI `moto[server]`, installed by the test command) on a
//! free 127.0.0.1 port, with the bucket `freshet`, the object_store options that reach it, and a boto3 view of a
//! report's outputs in the bucket.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll_until;

/// The running server; killed when dropped.
pub struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `moto_server` on a free 127.0.0.1 port and create the bucket `freshet`; returns the server and its
/// `host:port`.
pub async fn start_moto() -> (Moto, String) {
    let port = crate::up::free_port();
    let addr = format!("127.0.0.1:{port}");
    let moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs (the test command installs moto[server])"),
    );
    let probe = addr.clone();
    tokio::task::spawn_blocking(move || {
        poll_until(Duration::from_secs(30), "moto_server to listen", || {
            std::net::TcpStream::connect(&probe).ok()
        })
    })
    .await
    .unwrap();
    let status = reqwest::Client::new()
        .put(format!("http://{addr}/freshet"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "create bucket: {status}");
    (moto, addr)
}

/// object_store options for an S3 endpoint at `addr` (plain HTTP, test credentials).
pub fn s3_options(addr: &str) -> HashMap<String, String> {
    [
        ("AWS_ENDPOINT_URL", format!("http://{addr}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A report's outputs in the bucket `freshet` under `prefix`, read with boto3 (`tests/py/s3_outputs.py`): `keys`,
/// `latest`, `result` (the JSON result `latest` names), `parquet_rows`, `csv_rows`, `records` (run id → run.json)
/// and `table_log` (the `telemetry` table's `_delta_log/` keys).
pub fn bucket_report(addr: &str, prefix: &str, report: &str) -> serde_json::Value {
    crate::python_json(
        "s3_outputs.py",
        &[&format!("http://{addr}"), "freshet", prefix, report],
    )
}

/// Rows per device (`count` summed over minutes) in a `telemetry_minutely`-shaped result, if there is one.
pub fn counts_by_device(result: &serde_json::Value) -> Option<std::collections::BTreeMap<String, i64>> {
    let mut counts = std::collections::BTreeMap::new();
    for r in result.get("rows")?.as_array()? {
        *counts.entry(r["device_id"].as_str()?.to_string()).or_insert(0) += r["count"].as_i64()?;
    }
    Some(counts)
}
