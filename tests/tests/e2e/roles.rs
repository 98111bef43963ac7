//! The roles of `freshet run` as separate processes, wired the way `compose.yaml` wires the containers: one shared
//! `freshet.toml`, per-process environment overrides (`FRESHET_HTTP__ADDR`, `FRESHET_REMOTE__ENDPOINT`, …), the
//! store role's Kinesis API between them; here the warehouse is a local directory they share (compose.yaml keeps it
//! on S3: `roles_s3.rs` runs that variant and reuses [`start_roles`]). Telemetry goes in over real MQTT
//! (`mosquitto_pub`, QoS 1); rows come back through the dashboard role's `POST /v1/sql`, and the report role's
//! `telemetry_minutely` output lands in the warehouse. SIGTERM stops every role with exit 0.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use freshet_tests::up::{free_port, http_get, mosquitto_pub_lines as publish, post_sql, sigterm_and_wait};
use freshet_tests::{freshet_bin, poll_until};

/// A `freshet` child process, killed if the test ends without stopping it.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    /// Start `freshet <args>` with extra environment variables.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, String)], cwd: &Path) -> Self {
        let mut cmd = Command::new(freshet_bin());
        cmd.args(["--log", "warn"])
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            name: name.to_string(),
            child: Some(cmd.spawn().unwrap()),
        }
    }

    /// Wait until `/health` answers on `port` (panics if the process exits first).
    pub fn wait_healthy(&mut self, port: u16) {
        let name = self.name.clone();
        let child = self.child.as_mut().unwrap();
        poll_until(
            Duration::from_secs(60),
            &format!("{name} to answer /health"),
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("{name} exited early with {status}");
                }
                (http_get(port, "/health").as_deref() == Some("ok\n")).then_some(())
            },
        );
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        sigterm_and_wait(self.child.take().unwrap(), &self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sum of `count` per device in the report's latest `result.json` (JSON lines or an array), if a run completed.
fn report_counts(warehouse: &Path) -> Option<std::collections::BTreeMap<String, i64>> {
    let dir = warehouse.join("reports/telemetry_minutely");
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("latest")).ok()?).ok()?;
    let json = latest["outputs"]
        .as_array()?
        .iter()
        .filter_map(|o| o.as_str())
        .find(|o| o.ends_with(".json"))?
        .to_string();
    let text = std::fs::read_to_string(dir.join(json)).ok()?;
    let rows: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(rows)) => rows,
        Ok(serde_json::Value::Object(o)) => o.get("rows")?.as_array()?.clone(),
        _ => text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    };
    let mut counts = std::collections::BTreeMap::new();
    for r in rows {
        *counts.entry(r["device_id"].as_str()?.to_string()).or_insert(0) += r["count"].as_i64()?;
    }
    Some(counts)
}

/// The HTTP ports of compose.yaml's five roles and the gateway's MQTT port.
#[derive(Clone, Copy)]
pub struct RolePorts {
    pub store: u16,
    pub gateway: u16,
    pub delivery: u16,
    pub reports: u16,
    pub dashboard: u16,
    pub mqtt: u16,
}

impl RolePorts {
    pub fn free() -> Self {
        RolePorts {
            store: free_port(),
            gateway: free_port(),
            delivery: free_port(),
            reports: free_port(),
            dashboard: free_port(),
            mqtt: free_port(),
        }
    }
}

/// Start the five roles as compose.yaml does, each with `role_env(<its HTTP port>)`, the clients of the store first
/// (they wait for it, as containers started in any order do); returns once every role is healthy and the MQTT
/// listener accepts, with the roles in compose's stop order (clients first, the store last).
pub fn start_roles(
    root: &Path,
    ports: &RolePorts,
    role_env: impl Fn(u16) -> Vec<(&'static str, String)>,
) -> Vec<Proc> {
    let mqtt_addr = format!("127.0.0.1:{}", ports.mqtt);
    let mut roles = vec![
        Proc::spawn(
            "gateway",
            &["run", "gateway", "--mqtt-addr", &mqtt_addr],
            &role_env(ports.gateway),
            root,
        ),
        Proc::spawn(
            "delivery",
            &["run", "delivery", "--buffer-interval", "1s"],
            &role_env(ports.delivery),
            root,
        ),
        Proc::spawn("reports", &["run", "reports"], &role_env(ports.reports), root),
        Proc::spawn(
            "dashboard",
            &["run", "dashboard"],
            &role_env(ports.dashboard),
            root,
        ),
        Proc::spawn("store", &["run", "store"], &role_env(ports.store), root),
    ];
    let healthy = [
        ports.gateway,
        ports.delivery,
        ports.reports,
        ports.dashboard,
        ports.store,
    ];
    for i in [4, 0, 1, 2, 3] {
        roles[i].wait_healthy(healthy[i]);
    }
    poll_until(Duration::from_secs(30), "the MQTT listener", || {
        TcpStream::connect(("127.0.0.1", ports.mqtt)).ok().map(|_| ())
    });
    roles
}

/// SIGTERM each role in order: every one exits 0.
pub fn stop_roles(roles: Vec<Proc>) {
    for p in roles {
        let name = p.name.clone();
        let status = p.terminate();
        assert!(status.success(), "{name} exited with {status}");
    }
}

#[test]
fn roles_as_separate_processes_carry_mqtt_telemetry_to_sql_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let warehouse: PathBuf = root.join("warehouse");
    // A shared configuration: the default pipeline, with the warehouse in one local directory.
    std::fs::write(
        root.join("freshet.toml"),
        format!(
            "[warehouse]\nurl = {:?}\n[remote]\nconnect_wait_seconds = 60\n",
            warehouse.display().to_string()
        ),
    )
    .unwrap();
    let ports = RolePorts::free();
    let RolePorts {
        store: store_http,
        gateway: gw_http,
        dashboard: dash_http,
        mqtt,
        ..
    } = ports;
    let endpoint = format!("http://127.0.0.1:{store_http}");
    let role_env = |http: u16| {
        vec![
            ("FRESHET_HTTP__ADDR", format!("127.0.0.1:{http}")),
            ("FRESHET_REMOTE__ENDPOINT", endpoint.clone()),
            (
                "FRESHET_DATA_DIR",
                root.join(format!("data-{http}")).display().to_string(),
            ),
        ]
    };

    let roles = start_roles(root, &ports, role_env);

    for (device, n) in [("dev-r1", 30), ("dev-r2", 20)] {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"ts":{},"seq":{i},"temp":{}.5}}"#,
                    1_763_700_000_000i64 + i,
                    20 + i % 3
                )
            })
            .collect();
        publish(
            mqtt,
            &format!("devices/{device}/telemetry"),
            &format!("pub-{device}"),
            &lines,
        );
    }

    let sql = "SELECT device_id, count(*) AS n, count(DISTINCT seq) AS seqs, min(_shard_id) IS NOT NULL AS lineage \
               FROM telemetry GROUP BY device_id ORDER BY device_id";
    let rows = poll_until(
        Duration::from_secs(120),
        "50 rows through the dashboard's /v1/sql",
        || {
            let (status, answer) = post_sql(dash_http, sql, None)?;
            let rows = answer["rows"].as_array()?.clone();
            let total: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
            (status == 200 && total >= 50).then_some(rows)
        },
    );
    assert_eq!(
        rows,
        [
            serde_json::json!({"device_id": "dev-r1", "n": 30, "seqs": 30, "lineage": true}),
            serde_json::json!({"device_id": "dev-r2", "n": 20, "seqs": 20, "lineage": true}),
        ]
    );

    // The report role ran telemetry_minutely on the delivery's commit events (read through the store's API).
    let counts = poll_until(Duration::from_secs(120), "the report over all 50 rows", || {
        report_counts(&warehouse).filter(|c| c.values().sum::<i64>() >= 50)
    });
    assert_eq!(counts.get("dev-r1"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("dev-r2"), Some(&20), "{counts:?}");
    // The dashboard role draws that report: the default dashboard names both devices in its charts.
    let page = poll_until(
        Duration::from_secs(60),
        "the dashboard page with both devices",
        || {
            http_get(dash_http, "/dashboards/telemetry")
                .filter(|p| p.contains("dev-r1") && p.contains("dev-r2"))
        },
    );
    assert!(page.matches("<svg").count() >= 2, "{page}");
    // Metrics on each role's own port.
    assert!(http_get(gw_http, "/metrics").is_some());

    stop_roles(roles);
}
