//! The whole pipeline on S3: `freshet up` as a process with `[warehouse] url = "s3://freshet/wh"` on a real
//! S3-compatible server (`moto_server` on 127.0.0.1), credentials from the standard AWS environment variables.
//! Telemetry goes in over real MQTT (`mosquitto_pub`, QoS 1); rows come back through `POST /v1/sql`; the report
//! outputs (`latest`, `runs/<id>/result.{parquet,csv,json}`, `run.json`) are read from the bucket with boto3 (and the
//! Parquet with pyarrow); the dashboard page and the ops dashboard draw from them; `freshet reports list|history`
//! read the same bucket; nothing of the warehouse lands on the local disk; SIGTERM → exit 0; a second start on the
//! same bucket adds the new rows only, and leaves the first start's runs as they were.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use freshet_tests::s3::{bucket_report, counts_by_device, start_moto};
use freshet_tests::up::{UpProcess, free_port, http_get, mosquitto_pub_lines, post_sql};
use freshet_tests::{freshet_bin, poll_until};

/// The standard AWS variables a user exports (the endpoint comes from the config file).
fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
}

/// `freshet reports <args> --config <config>` with the AWS variables; its stdout (it must succeed).
fn reports_cli(config: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = Command::new(freshet_bin())
        .args(["--log", "warn", "reports"])
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(aws_env())
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "freshet reports {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `n` telemetry messages from `device` at QoS 1 (`mosquitto_pub`), a second apart in event time.
fn publish(mqtt: u16, device: &str, n: i64) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":{},"seq":{i},"temp":{}.5}}"#,
                1_763_700_000_000i64 + i * 1_000,
                20 + i % 3
            )
        })
        .collect();
    mosquitto_pub_lines(
        mqtt,
        &format!("devices/{device}/telemetry"),
        &format!("pub-{device}"),
        &lines,
    );
}

#[test]
fn s3_pipeline_up_delivers_reports_and_dashboards_from_the_bucket() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_moto, addr) = rt.block_on(start_moto());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("freshet.toml");
    std::fs::write(
        &config,
        format!("[warehouse]\nurl = \"s3://freshet/wh\"\nendpoint = \"http://{addr}\"\nallow_http = true\n"),
    )
    .unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let up = UpProcess::start_with(
        &data,
        http,
        mqtt,
        &["--config", config.to_str().unwrap()],
        &aws_env(),
    );

    let expected = BTreeMap::from([("dev-s1".to_string(), 30), ("dev-s2".to_string(), 20)]);
    for (device, n) in &expected {
        publish(mqtt, device, *n);
    }

    // Rows through /v1/sql, read from the Delta table in the bucket.
    let sql = "SELECT device_id, count(*) AS n, count(DISTINCT seq) AS seqs FROM telemetry \
               GROUP BY device_id ORDER BY device_id";
    let rows = poll_until(Duration::from_secs(120), "50 rows through /v1/sql", || {
        let (status, answer) = post_sql(http, sql, None)?;
        let rows = answer["rows"].as_array()?.clone();
        let total: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
        (status == 200 && total >= 50).then_some(rows)
    });
    assert_eq!(
        rows,
        [
            serde_json::json!({"device_id": "dev-s1", "n": 30, "seqs": 30}),
            serde_json::json!({"device_id": "dev-s2", "n": 20, "seqs": 20}),
        ]
    );

    // The report's outputs, as boto3 finds them in the bucket.
    let bucket = poll_until(
        Duration::from_secs(120),
        "telemetry_minutely over all 50 rows in the bucket",
        || {
            let b = bucket_report(&addr, "wh", "telemetry_minutely");
            (counts_by_device(&b["result"]).as_ref() == Some(&expected)).then_some(b)
        },
    );
    let latest = &bucket["latest"];
    let run_id = latest["run_id"].as_str().unwrap().to_string();
    assert!(run_id.starts_with("telemetry@v"), "{latest}");
    let keys: Vec<&str> = bucket["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for file in ["result.parquet", "result.csv", "result.json", "run.json"] {
        let key = format!("wh/reports/telemetry_minutely/runs/{run_id}/{file}");
        assert!(keys.contains(&key.as_str()), "{key} in {keys:?}");
    }
    assert!(keys.contains(&"wh/reports/telemetry_minutely/latest"));
    // No temp files left beside the outputs (S3 PUTs replace objects whole).
    assert!(keys.iter().all(|k| !k.contains(".tmp")), "{keys:?}");
    let result_rows = bucket["result"]["rows"].as_array().unwrap().len();
    assert!(result_rows >= 2, "{}", bucket["result"]);
    assert_eq!(bucket["parquet_rows"].as_array().unwrap().len(), result_rows);
    assert_eq!(bucket["csv_rows"].as_u64(), Some(result_rows as u64));
    let records = bucket["records"].as_object().unwrap();
    assert_eq!(records[&run_id]["status"], "completed", "{records:?}");
    assert!(
        records
            .values()
            .all(|r| r["status"] == "completed" && r["attempts"] == 1),
        "{records:?}"
    );
    assert!(
        !bucket["table_log"].as_array().unwrap().is_empty(),
        "the delivery's commits are in the bucket too"
    );
    // The warehouse is on S3 only: nothing of it on the local disk.
    assert!(!data.join("warehouse").exists(), "no local warehouse");

    // The dashboard draws the bucket's report: both devices, and the run id `latest` names (or a newer one).
    let page = poll_until(
        Duration::from_secs(60),
        "the dashboard page with both devices",
        || http_get(http, "/dashboards/telemetry").filter(|p| p.contains("dev-s1") && p.contains("dev-s2")),
    );
    assert!(page.matches("<svg").count() >= 2, "{page}");
    assert!(
        records
            .keys()
            .any(|id| page.contains(&format!("data-version=\"{id}\""))),
        "the page names a run that is in the bucket: {page}"
    );
    // The ops dashboard counts the runs' records read from the bucket (sampled every 5 s).
    let runs = poll_until(
        Duration::from_secs(60),
        "the ops dashboard's completed report runs",
        || {
            let body = http_get(http, "/dashboards/_ops/report_runs.json")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let completed: f64 = v["data"]["series"]
                .as_array()?
                .iter()
                .filter(|s| s["series"] == "completed")
                .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p[1].as_f64())
                .sum();
            (completed >= 1.0).then_some(completed)
        },
    );
    assert!(runs as usize <= records.len() + 8, "{runs} runs");

    // `freshet reports` reads the same bucket (the config file's [warehouse], the AWS variables).
    let list = reports_cli(&config, dir.path(), &["list"]);
    assert!(list.contains("telemetry_minutely"), "{list}");
    assert!(list.contains("telemetry@v"), "{list}");
    let history = reports_cli(&config, dir.path(), &["history", "telemetry_minutely", "--json"]);
    let listed: Vec<serde_json::Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        listed
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["status"] == "completed"),
        "{history}"
    );
    assert!(listed.len() >= records.len(), "{history}");

    // `freshet reports run` over the latest versions: that run completed already, so nothing runs again.
    let rerun: serde_json::Value =
        serde_json::from_str(&reports_cli(&config, dir.path(), &["run", "telemetry_minutely"])).unwrap();
    assert_eq!(rerun["status"], "completed", "{rerun}");
    assert_eq!(rerun["attempts"], 1, "{rerun}");

    let status = up.terminate();
    assert!(status.success(), "freshet up exited with {status}");

    // Start again on the same bucket, publish more: the new rows and only them, the report follows, and no run of
    // the first start is redone.
    let (http, mqtt) = (free_port(), free_port());
    let up = UpProcess::start_with(
        &data,
        http,
        mqtt,
        &["--config", config.to_str().unwrap()],
        &aws_env(),
    );
    publish(mqtt, "dev-s3", 10);
    let mut expected = expected;
    expected.insert("dev-s3".to_string(), 10);
    poll_until(Duration::from_secs(120), "60 rows through /v1/sql", || {
        let (status, answer) = post_sql(http, "SELECT count(*) AS n FROM telemetry", None)?;
        let row = answer["rows"].as_array()?.first()?.clone();
        (status == 200 && row["n"].as_i64()? >= 60).then_some(())
    });
    let (_, answer) = post_sql(
        http,
        "SELECT count(*) AS n, count(DISTINCT concat(device_id, '/', CAST(seq AS VARCHAR))) AS k FROM telemetry",
        None,
    )
    .unwrap();
    assert_eq!(
        answer["rows"][0],
        serde_json::json!({"n": 60, "k": 60}),
        "no row twice"
    );
    let again = poll_until(
        Duration::from_secs(120),
        "telemetry_minutely over all 60 rows in the bucket",
        || {
            let b = bucket_report(&addr, "wh", "telemetry_minutely");
            (counts_by_device(&b["result"]).as_ref() == Some(&expected)).then_some(b)
        },
    );
    let records_after = again["records"].as_object().unwrap();
    for (id, before) in records {
        assert_eq!(
            &records_after[id], before,
            "run {id} of the first start is untouched"
        );
    }
    assert!(records_after.len() > records.len());
    let status = up.terminate();
    assert!(status.success(), "freshet up exited with {status}");
}

#[test]
fn s3_pipeline_up_with_an_unreachable_bucket_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("freshet.toml");
    // Nothing listens on this port: the start-up check of the warehouse fails, with one line and no panic.
    std::fs::write(
        &config,
        format!(
            "[warehouse]\nurl = \"s3://freshet/wh\"\nendpoint = \"http://127.0.0.1:{}\"\nallow_http = true\n",
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(freshet_bin())
        .args(["--log", "warn", "up", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--mqtt-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .envs(aws_env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("s3://freshet/wh") && errors[0].contains("not reachable"),
        "{stderr}"
    );
}
