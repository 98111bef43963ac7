//! The roles of `freshet run` as separate processes with the warehouse on S3, wired the way `compose.yaml` wires the
//! containers: no config file, every setting from the environment (`FRESHET_WAREHOUSE__URL=s3://...`,
//! `FRESHET_WAREHOUSE__ALLOW_HTTP`, `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `FRESHET_HTTP__ADDR`, `FRESHET_REMOTE__ENDPOINT`). compose.yaml runs MinIO as the S3-compatible server; here a
//! real `moto_server` on 127.0.0.1 stands in for it (both answer the S3 API, including the conditional PUTs the
//! Delta commits and the report outputs use). Telemetry goes in over MQTT (`mosquitto_pub`), rows come back through
//! the dashboard role's `/v1/sql`, the report role's outputs are read from the bucket with boto3, the dashboard role
//! draws them, and no role keeps a warehouse on its local disk. SIGTERM stops every role with exit 0.

use std::collections::BTreeMap;
use std::time::Duration;

use freshet_tests::poll_until;
use freshet_tests::s3::{bucket_report, counts_by_device, start_moto};
use freshet_tests::up::{http_get, mosquitto_pub_lines, post_sql};

use crate::roles::{RolePorts, start_roles, stop_roles};

#[test]
fn s3_roles_as_separate_processes_keep_the_warehouse_in_the_bucket() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_moto, addr) = rt.block_on(start_moto());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ports = RolePorts::free();
    let RolePorts {
        store: store_http,
        gateway: gw_http,
        delivery: del_http,
        reports: rep_http,
        dashboard: dash_http,
        mqtt,
    } = ports;
    let endpoint = format!("http://127.0.0.1:{store_http}");
    // compose.yaml's x-freshet environment, with the warehouse on the S3 server.
    let role_env = |http: u16| {
        vec![
            ("FRESHET_HTTP__ADDR", format!("127.0.0.1:{http}")),
            ("FRESHET_REMOTE__ENDPOINT", endpoint.clone()),
            ("FRESHET_REMOTE__CONNECT_WAIT_SECONDS", "60".to_string()),
            ("FRESHET_WAREHOUSE__URL", "s3://freshet/warehouse".to_string()),
            ("FRESHET_WAREHOUSE__ALLOW_HTTP", "true".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://{addr}")),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            (
                "FRESHET_DATA_DIR",
                root.join(format!("data-{http}")).display().to_string(),
            ),
        ]
    };

    let roles = start_roles(root, &ports, role_env);

    let expected = BTreeMap::from([("dev-q1".to_string(), 25), ("dev-q2".to_string(), 15)]);
    for (device, n) in &expected {
        let lines: Vec<String> = (0..*n)
            .map(|i| {
                format!(
                    r#"{{"ts":{},"seq":{i},"temp":{}.5}}"#,
                    1_763_700_000_000i64 + i,
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

    let sql = "SELECT device_id, count(*) AS n FROM telemetry GROUP BY device_id ORDER BY device_id";
    let rows = poll_until(
        Duration::from_secs(120),
        "40 rows through the dashboard role's /v1/sql",
        || {
            let (status, answer) = post_sql(dash_http, sql, None)?;
            let rows = answer["rows"].as_array()?.clone();
            let total: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
            (status == 200 && total >= 40).then_some(rows)
        },
    );
    assert_eq!(
        rows,
        [
            serde_json::json!({"device_id": "dev-q1", "n": 25}),
            serde_json::json!({"device_id": "dev-q2", "n": 15}),
        ]
    );

    // The report role wrote telemetry_minutely into the bucket (boto3's view).
    let bucket = poll_until(
        Duration::from_secs(120),
        "the report role's output over all 40 rows in the bucket",
        || {
            let b = bucket_report(&addr, "warehouse", "telemetry_minutely");
            (counts_by_device(&b["result"]).as_ref() == Some(&expected)).then_some(b)
        },
    );
    let run_id = bucket["latest"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(bucket["records"][&run_id]["status"], "completed", "{bucket}");
    assert_eq!(
        bucket["parquet_rows"].as_array().unwrap().len(),
        bucket["result"]["rows"].as_array().unwrap().len()
    );

    // The dashboard role draws it from the bucket.
    let page = poll_until(
        Duration::from_secs(60),
        "the dashboard page with both devices",
        || {
            http_get(dash_http, "/dashboards/telemetry")
                .filter(|p| p.contains("dev-q1") && p.contains("dev-q2"))
        },
    );
    assert!(page.matches("<svg").count() >= 2, "{page}");

    // No role kept a warehouse of its own on disk.
    for http in [store_http, gw_http, del_http, rep_http, dash_http] {
        let local = root.join(format!("data-{http}")).join("warehouse");
        assert!(!local.exists(), "{} exists", local.display());
    }
    assert!(!root.join("freshet-data").exists());

    stop_roles(roles);
}
