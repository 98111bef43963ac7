//! Report functions in the real binary (`freshet up`, or the roles of `freshet run`), fed over real MQTT
//! (`mosquitto_pub`):
//! - killed with SIGKILL while a commit-triggered run is in progress and restarted, the report still has exactly one
//!   completed run per table version announced on `_freshet_events`: runs that completed before the kill are never
//!   rewritten, the interrupted one is redone once under the same id, and each result read the version it names;
//!   the same with the report role alone killed while the other roles keep committing, and with `freshet up`
//!   killed at seeded random moments; a crash between a run's record and `latest` leaves no stale `latest`;
//! - a schedule (`rate(1 minute)`, and a `cron(...)` naming one minute) runs its slot with no commit involved, and
//!   a slot interrupted by SIGKILL is redone once after the restart, over the version its first attempt read (the
//!   test starts the process 25–60 s before a minute boundary, so the slot is due soon after start);
//! - records whose `ts` is RFC 3339 (with `Z` and with offsets) are partitioned (UTC date) and aggregated (UTC
//!   minute, in `telemetry_minutely`) by that event time.
//!
//! Runs are made slow on purpose with SQL only: a report sums `value % 7` over `generate_series(1, N)` (N = 12 or 30
//! million: a few seconds in the debug build) beside `count(*)` of the table version it reads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Timelike, Utc};
use freshet_reports::slot_run_id;
use freshet_storage::StreamName;
use freshet_storage::remote::{RemoteConfig, RemoteStore};
use freshet_tests::up::{free_port, mosquitto_pub_lines as publish, post_sql};
use freshet_tests::{freshet_bin, poll_until, read_stream};
use serde_json::{Value, json};

use crate::roles::Proc;

/// The slow part of a run: about 3 s in the debug build on this machine.
const SPIN: &str = "SELECT sum(value % 7) AS spin FROM generate_series(1, 12000000)";
/// A slower one (about 7 s), for a window in which new data lands while a run is going.
const SPIN_LONG: &str = "SELECT sum(value % 7) AS spin FROM generate_series(1, 30000000)";

/// A `freshet up` on fixed ports with `--config` and deliveries every second.
struct Up {
    proc: Proc,
    http: u16,
    mqtt: u16,
}

fn start_up(dir: &Path, config: &Path) -> Up {
    let (http, mqtt) = (free_port(), free_port());
    let data = dir.join("data");
    let mut proc = Proc::spawn(
        "freshet up",
        &[
            "up",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--buffer-interval",
            "1s",
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--mqtt-addr",
            &format!("127.0.0.1:{mqtt}"),
        ],
        &[],
        dir,
    );
    proc.wait_healthy(http);
    poll_until(Duration::from_secs(30), "the MQTT listener", || {
        TcpStream::connect(("127.0.0.1", mqtt)).ok().map(|_| ())
    });
    Up { proc, http, mqtt }
}

/// SIGKILL (what dropping a `Proc` sends), and wait for the exit.
fn sigkill(up: Up) {
    drop(up.proc);
}

fn warehouse(dir: &Path) -> PathBuf {
    dir.join("data/warehouse")
}

/// The newest committed version of `table`, from its `_delta_log` listing.
fn table_version(dir: &Path, table: &str) -> Option<u64> {
    std::fs::read_dir(warehouse(dir).join(table).join("_delta_log"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
}

/// Every `run.json` of `report`, raw, by run id.
fn run_files(dir: &Path, report: &str) -> BTreeMap<String, String> {
    let runs = warehouse(dir).join("reports").join(report).join("runs");
    let Ok(entries) = std::fs::read_dir(runs) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let text = std::fs::read_to_string(e.path().join("run.json")).ok()?;
            Some((e.file_name().into_string().ok()?, text))
        })
        .collect()
}

fn status_of(raw: &str) -> String {
    serde_json::from_str::<Value>(raw).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `freshet reports history <report> --json`: one run record per line.
fn history(dir: &Path, config: &Path, report: &str) -> BTreeMap<String, Value> {
    let out = Command::new(freshet_bin())
        .args([
            "--log", "warn", "reports", "history", report, "--json", "--config",
        ])
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "freshet reports history: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            (r["run_id"].as_str().unwrap().to_string(), r)
        })
        .collect()
}

/// The rows of a run's `result.json`.
fn result_rows(dir: &Path, report: &str, run_id: &str) -> Vec<Value> {
    let path = warehouse(dir).join(format!("reports/{report}/runs/{run_id}/result.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["rows"].as_array().unwrap().clone()
}

/// `SELECT count(*)` of `table` at `version`, through the server's `POST /v1/sql`.
fn rows_at(http: u16, table: &str, version: u64) -> i64 {
    let (status, body) = post_sql(
        http,
        &format!("SELECT count(*) AS n FROM \"{table}@v{version}\""),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body["rows"][0]["n"].as_i64().unwrap()
}

/// The versions of `table` announced on `_freshet_events`, read over the server's Kinesis API.
fn announced(http: u16, table: &str) -> BTreeSet<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = RemoteStore::new(RemoteConfig::new(format!("http://127.0.0.1:{http}"))).unwrap();
        let events = StreamName::new("_freshet_events").unwrap();
        let mut versions = BTreeSet::new();
        for (_, records) in read_stream(&store, &events).await {
            for r in records {
                let e: Value = serde_json::from_slice(&r.data).unwrap();
                if e["table"] == table {
                    versions.insert(e["version"].as_u64().unwrap());
                }
            }
        }
        versions
    })
}

/// Publish `n` telemetry messages for `device` (epoch-millis `ts`) and wait until the table has a new version (a
/// data commit: version 0 is the table's creation); returns it.
fn deliver_round(dir: &Path, up: &Up, device: &str, n: usize) -> u64 {
    let before = table_version(dir, "telemetry").unwrap_or(0);
    let lines: Vec<String> = (0..n)
        .map(|i| json!({"ts": 1_700_000_000_000_i64 + i as i64 * 1_000, "temp": i as f64 / 2.0}).to_string())
        .collect();
    publish(up.mqtt, &format!("devices/{device}/telemetry"), device, &lines);
    poll_until(Duration::from_secs(60), "a new telemetry version", || {
        table_version(dir, "telemetry").filter(|v| *v > before)
    })
}

#[test]
fn reports_one_run_per_table_version_across_sigkill_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("freshet.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[reports]]
name = "heavy"
sql = "SELECT t.rows_seen, g.spin FROM (SELECT count(*) AS rows_seen FROM {{{{telemetry}}}}) t CROSS JOIN ({SPIN}) g"
trigger = {{ tables = ["telemetry"] }}
outputs = ["json"]
attempts_max = 2
"#
        ),
    )
    .unwrap();
    let id = |v: u64| format!("telemetry@v{v}");

    let up = start_up(dir, &config);
    // A run that completes before the kill.
    let v1 = deliver_round(dir, &up, "dev-a", 20);
    poll_until(Duration::from_secs(120), "the first run to complete", || {
        run_files(dir, "heavy")
            .get(&id(v1))
            .filter(|raw| status_of(raw) == "completed")
            .map(|_| ())
    });
    // Then the kill, while a later run is in progress.
    let v2 = deliver_round(dir, &up, "dev-b", 20);
    let interrupted = poll_until(Duration::from_secs(120), "a run in progress", || {
        let runs = run_files(dir, "heavy");
        let running: Vec<String> = runs
            .iter()
            .filter(|(_, raw)| status_of(raw) == "running")
            .map(|(id, _)| id.clone())
            .collect();
        (!running.is_empty()).then_some(running)
    });
    sigkill(up);
    let at_kill = run_files(dir, "heavy");
    let version_at_kill = table_version(dir, "telemetry").unwrap();
    assert!(version_at_kill >= v2);
    let completed_at_kill: BTreeMap<String, String> = at_kill
        .iter()
        .filter(|(_, raw)| status_of(raw) == "completed")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(completed_at_kill.contains_key(&id(v1)));
    assert!(interrupted.iter().all(|i| status_of(&at_kill[i]) == "running"));

    // Restart on the same data directory; more data lands after it.
    let up = start_up(dir, &config);
    let v3 = deliver_round(dir, &up, "dev-c", 20);
    let want: BTreeSet<u64> = poll_until(
        Duration::from_secs(180),
        "a completed run for every announced version",
        || {
            let announced = announced(up.http, "telemetry");
            let runs = run_files(dir, "heavy");
            let done = announced.contains(&v3)
                && announced
                    .iter()
                    .all(|v| runs.get(&id(*v)).is_some_and(|raw| status_of(raw) == "completed"))
                && runs.values().all(|raw| status_of(raw) == "completed");
            done.then_some(announced)
        },
    );
    assert!(want.contains(&v1) && want.contains(&v2) && want.contains(&v3));

    // Exactly the announced versions have runs, each completed once.
    let runs = history(dir, &config, "heavy");
    let ids: BTreeSet<String> = runs.keys().cloned().collect();
    let want_ids: BTreeSet<String> = want.iter().map(|v| id(*v)).collect();
    assert_eq!(ids, want_ids, "one run per announced table version, and no other");
    let now = run_files(dir, "heavy");
    for (run_id, raw) in &completed_at_kill {
        assert_eq!(
            &now[run_id], raw,
            "{run_id} completed before the kill and was run again"
        );
    }
    for (run_id, record) in &runs {
        assert_eq!(record["status"], "completed", "{record}");
        assert!(record["error"].is_null(), "{record}");
        let attempts = record["attempts"].as_u64().unwrap();
        if interrupted.contains(run_id) {
            assert_eq!(attempts, 2, "the interrupted run is redone once: {record}");
        } else {
            assert_eq!(attempts, 1, "{record}");
        }
        // Each run read the version it is keyed by.
        let version = record["versions"]["telemetry"].as_u64().unwrap();
        assert_eq!(run_id, &id(version));
        let rows = result_rows(dir, "heavy", run_id);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0]["rows_seen"].as_i64().unwrap(),
            rows_at(up.http, "telemetry", version),
            "{run_id}"
        );
        assert_eq!(rows[0]["spin"].as_i64().unwrap(), 36_000_000);
    }
    let latest: Value =
        serde_json::from_str(&std::fs::read_to_string(warehouse(dir).join("reports/heavy/latest")).unwrap())
            .unwrap();
    assert_eq!(latest["run_id"], id(*want.last().unwrap()));
    assert!(up.proc.terminate().success());
}

#[test]
fn reports_schedule_runs_its_slot_and_redoes_it_once_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("freshet.toml");
    // rate(1 minute) slots are whole UTC minutes. Start when the next one is 25 s or more away, so the process is up
    // and data is committed before it: at most a minute of waiting, for the wall clock itself.
    let spawned = poll_until(
        Duration::from_secs(70),
        "a moment 25 s or more before a minute boundary",
        || {
            let now = Utc::now();
            (now.timestamp().rem_euclid(60) <= 35).then_some(now)
        },
    );
    let slot = spawned.duration_trunc(TimeDelta::minutes(1)).unwrap() + TimeDelta::minutes(1);
    let id = slot_run_id(slot);
    // A cron schedule whose only slot today is the same minute.
    let cron = format!("cron({} {} * * ? *)", slot.minute(), slot.hour());
    std::fs::write(
        &config,
        format!(
            r#"
[[reports]]
name = "at_that_minute"
sql = "SELECT count(*) AS n FROM {{{{telemetry}}}}"
trigger = {{ schedule = "{cron}" }}
outputs = ["json"]

[[reports]]
name = "every_minute"
sql = "SELECT t.rows_seen, g.spin FROM (SELECT count(*) AS rows_seen FROM {{{{telemetry}}}}) t CROSS JOIN ({SPIN_LONG}) g"
trigger = {{ schedule = "rate(1 minute)" }}
outputs = ["json"]
"#
        ),
    )
    .unwrap();
    let up = start_up(dir, &config);
    let version = deliver_round(dir, &up, "dev-s", 15);
    assert!(
        Utc::now() < slot - TimeDelta::seconds(1),
        "start-up and the first commit took until {}, past the slot {slot}",
        Utc::now()
    );
    assert!(
        run_files(dir, "every_minute").is_empty(),
        "a scheduled report ran before its slot (commits do not trigger it)"
    );

    let wait = (slot - Utc::now()).to_std().unwrap() + Duration::from_secs(60);
    poll_until(wait, "the slot's run to start", || {
        run_files(dir, "every_minute")
            .get(&id)
            .filter(|raw| status_of(raw) == "running")
            .map(|_| ())
    });
    assert!(Utc::now() >= slot, "the slot ran before its time");
    // A newer version lands while the slot's run is going; the kill comes after it.
    let newer = deliver_round(dir, &up, "dev-t", 5);
    let at_kill = run_files(dir, "every_minute");
    sigkill(up);
    assert_eq!(at_kill.keys().collect::<Vec<_>>(), [&id]);
    assert_eq!(
        status_of(&at_kill[&id]),
        "running",
        "the run ended before the newer version landed; the kill would not interrupt it"
    );

    let up = start_up(dir, &config);
    poll_until(
        Duration::from_secs(120),
        "the interrupted slot to be redone",
        || {
            run_files(dir, "every_minute")
                .get(&id)
                .filter(|raw| status_of(raw) == "completed")
                .map(|_| ())
        },
    );
    let runs = history(dir, &config, "every_minute");
    let record = &runs[&id];
    assert_eq!(record["attempts"], 2, "redone once after the kill: {record}");
    assert!(record["error"].is_null(), "{record}");
    // The redo read what the first attempt read (the table as it was at the slot), not the newer version.
    let read = record["versions"]["telemetry"].as_u64().unwrap();
    assert!(version <= read && read < newer, "{record}");
    let rows = result_rows(dir, "every_minute", &id);
    assert_eq!(
        rows[0]["rows_seen"].as_i64().unwrap(),
        rows_at(up.http, "telemetry", read)
    );
    assert_ne!(
        rows_at(up.http, "telemetry", read),
        rows_at(up.http, "telemetry", newer)
    );
    assert_eq!(rows[0]["spin"].as_i64().unwrap(), 89_999_997);
    // Any other run is a later slot (the test may outlast the next minute).
    for other in runs.keys().filter(|k| **k != id) {
        assert!(
            other.starts_with("schedule@") && *other > id,
            "unexpected run {other}"
        );
    }
    // The cron report ran that slot too, once, over the same kind of pinned version.
    let cron_runs = poll_until(Duration::from_secs(60), "the cron slot's run", || {
        let runs = history(dir, &config, "at_that_minute");
        runs.get(&id)
            .is_some_and(|r| r["status"] == "completed")
            .then_some(runs)
    });
    assert_eq!(cron_runs.keys().collect::<Vec<_>>(), [&id], "{cron}");
    let cron_read = cron_runs[&id]["versions"]["telemetry"].as_u64().unwrap();
    assert_eq!(
        result_rows(dir, "at_that_minute", &id)[0]["n"].as_i64().unwrap(),
        rows_at(up.http, "telemetry", cron_read)
    );
    assert!(up.proc.terminate().success());
}

#[test]
fn reports_and_delivery_use_rfc3339_ts_as_event_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No keys: the default pipeline (rule, delivery into `telemetry` by event date, `telemetry_minutely`).
    let config = dir.join("freshet.toml");
    std::fs::write(&config, "").unwrap();
    let up = start_up(dir, &config);
    // (ts as sent, its UTC date, its UTC minute, temp); two of them fall on another date in UTC than locally.
    let cases = [
        ("2026-03-01T10:15:30Z", "2026-03-01", "2026-03-01T10:15", 1.0),
        ("2026-03-01T10:15:59.999Z", "2026-03-01", "2026-03-01T10:15", 3.0),
        ("2026-03-01T12:16:05+02:00", "2026-03-01", "2026-03-01T10:16", 5.0),
        ("2026-02-28T23:30:00-01:00", "2026-03-01", "2026-03-01T00:30", 7.0),
        (
            "2026-03-01T00:10:00.500+05:30",
            "2026-02-28",
            "2026-02-28T18:40",
            9.0,
        ),
    ];
    let lines: Vec<String> = cases
        .iter()
        .map(|(ts, _, _, temp)| json!({"ts": ts, "temp": temp}).to_string())
        .collect();
    let before = table_version(dir, "telemetry").unwrap_or(0);
    publish(up.mqtt, "devices/dev-r/telemetry", "dev-r", &lines);
    let version = poll_until(Duration::from_secs(60), "the rows to be committed", || {
        table_version(dir, "telemetry").filter(|v| *v > before)
    });

    // Delivery: each row is partitioned by the UTC date of its ts.
    let (status, body) = post_sql(
        up.http,
        "SELECT ts, CAST(event_date AS VARCHAR) AS d FROM telemetry ORDER BY ts",
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let dates: BTreeMap<String, String> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ts"].as_str().unwrap().to_string(),
                r["d"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = cases
        .iter()
        .map(|(ts, date, _, _)| (ts.to_string(), date.to_string()))
        .collect();
    assert_eq!(dates, want, "event_date is the UTC date of ts");
    for date in ["2026-02-28", "2026-03-01"] {
        assert!(
            warehouse(dir)
                .join(format!("telemetry/event_date={date}"))
                .is_dir()
        );
    }

    // Report: per device and UTC minute of ts.
    let latest = warehouse(dir).join("reports/telemetry_minutely/latest");
    let run_id = poll_until(
        Duration::from_secs(120),
        "telemetry_minutely over the new version",
        || {
            let p: Value = serde_json::from_str(&std::fs::read_to_string(&latest).ok()?).ok()?;
            (p["versions"]["telemetry"].as_u64()? >= version)
                .then(|| p["run_id"].as_str().unwrap().to_string())
        },
    );
    let mut got: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for row in result_rows(dir, "telemetry_minutely", &run_id) {
        if row["device_id"] == "dev-r" {
            let minute = row["minute"].as_str().unwrap();
            got.insert(
                minute[..16].to_string(),
                (row["count"].as_i64().unwrap(), row["avg_temp"].as_f64().unwrap()),
            );
        }
    }
    let mut want: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for (_, _, minute, temp) in cases {
        let e = want.entry(minute.to_string()).or_insert((0, 0.0));
        e.1 = (e.1 * e.0 as f64 + temp) / (e.0 + 1) as f64;
        e.0 += 1;
    }
    assert_eq!(got, want, "minutes of the UTC event time, not of arrival");
    assert!(up.proc.terminate().success());
}

/// A crash after a run's `run.json` says completed but before `latest` moved (simulated by removing `latest` while
/// the process is down): after the restart the re-delivered commit event finds the run completed, does not run it
/// again, and still moves `latest` to it.
#[test]
fn reports_latest_catches_up_with_a_run_completed_before_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("freshet.toml");
    std::fs::write(
        &config,
        r#"
[[reports]]
name = "light"
sql = "SELECT count(*) AS n FROM {{telemetry}}"
trigger = { tables = ["telemetry"] }
outputs = ["json"]
"#,
    )
    .unwrap();
    let up = start_up(dir, &config);
    let version = deliver_round(dir, &up, "dev-l", 10);
    let id = format!("telemetry@v{version}");
    let latest = warehouse(dir).join("reports/light/latest");
    let pointer =
        |path: &Path| -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok() };
    // `latest` moves just before `run.json` says completed: wait for both, so the kill comes after the run.
    poll_until(
        Duration::from_secs(60),
        "latest to name the completed run",
        || {
            pointer(&latest)
                .filter(|p| p["run_id"] == id.as_str())
                .filter(|_| {
                    run_files(dir, "light")
                        .get(&id)
                        .is_some_and(|r| status_of(r) == "completed")
                })
                .map(|_| ())
        },
    );
    sigkill(up);
    let record = run_files(dir, "light")[&id].clone();
    assert_eq!(status_of(&record), "completed");
    std::fs::remove_file(&latest).unwrap();

    let up = start_up(dir, &config);
    let p = poll_until(
        Duration::from_secs(60),
        "latest to name the completed run again",
        || pointer(&latest),
    );
    assert_eq!(p["run_id"], id.as_str(), "{p}");
    assert_eq!(
        run_files(dir, "light")[&id],
        record,
        "the completed run ran again"
    );
    assert!(up.proc.terminate().success());
}

/// SIGKILL at seeded random points (while data lands and runs go), five times, then a clean run to the end: every
/// announced version has exactly one completed run, no run completed before a kill is ever rewritten, each result
/// read the version it names, and `latest` names the newest.
#[test]
fn reports_survive_sigkill_at_random_points() {
    use rand::{Rng, SeedableRng};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("freshet.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[reports]]
name = "heavy"
sql = "SELECT t.rows_seen, g.spin FROM (SELECT count(*) AS rows_seen FROM {{{{telemetry}}}}) t CROSS JOIN ({SPIN}) g"
trigger = {{ tables = ["telemetry"] }}
outputs = ["json"]
"#
        ),
    )
    .unwrap();
    let seed = 0x5EED_0006;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Every run.json seen completed at some kill, by run id: it must never change afterwards.
    let mut completed: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..5 {
        let up = start_up(dir, &config);
        deliver_round(dir, &up, &format!("dev-{round}"), 10);
        let pause = Duration::from_millis(rng.random_range(0..4_000));
        let deadline = std::time::Instant::now() + pause;
        // Waiting out a random moment, not a condition: the point of the kill is to be arbitrary.
        poll_until(pause + Duration::from_secs(1), "the kill moment", || {
            (std::time::Instant::now() >= deadline).then_some(())
        });
        sigkill(up);
        for (run_id, raw) in run_files(dir, "heavy") {
            if let Some(before) = completed.get(&run_id) {
                assert_eq!(
                    &raw, before,
                    "seed {seed:#x}, round {round}: {run_id} was rewritten after it completed"
                );
            } else if status_of(&raw) == "completed" {
                completed.insert(run_id, raw);
            }
        }
    }
    let up = start_up(dir, &config);
    let last = deliver_round(dir, &up, "dev-last", 10);
    let want = poll_until(
        Duration::from_secs(300),
        "a completed run for every announced version",
        || {
            let announced = announced(up.http, "telemetry");
            let runs = run_files(dir, "heavy");
            (announced.contains(&last)
                && announced.iter().all(|v| {
                    runs.get(&format!("telemetry@v{v}"))
                        .is_some_and(|raw| status_of(raw) == "completed")
                }))
            .then_some(announced)
        },
    );
    let runs = run_files(dir, "heavy");
    let ids: BTreeSet<&String> = runs.keys().collect();
    let want_ids: Vec<String> = want.iter().map(|v| format!("telemetry@v{v}")).collect();
    assert_eq!(
        ids,
        want_ids.iter().collect(),
        "seed {seed:#x}: one run per announced version"
    );
    for (run_id, raw) in &completed {
        assert_eq!(&runs[run_id], raw, "seed {seed:#x}: {run_id} ran again");
    }
    for (run_id, raw) in &runs {
        let record: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(record["status"], "completed", "{record}");
        let version = record["versions"]["telemetry"].as_u64().unwrap();
        assert_eq!(run_id, &format!("telemetry@v{version}"));
        let rows = result_rows(dir, "heavy", run_id);
        assert_eq!(
            rows[0]["rows_seen"].as_i64().unwrap(),
            rows_at(up.http, "telemetry", version),
            "{run_id}"
        );
    }
    let latest: Value =
        serde_json::from_str(&std::fs::read_to_string(warehouse(dir).join("reports/heavy/latest")).unwrap())
            .unwrap();
    assert_eq!(latest["run_id"], want_ids.last().unwrap().as_str());
    assert!(up.proc.terminate().success());
}

/// The report role alone (`freshet run reports`, beside separate store, gateway and delivery roles joined through the
/// store's Kinesis API) SIGKILLed mid-run while commits keep landing, then restarted: its checkpoint lives in the
/// store role, and every announced version still gets exactly one completed run.
#[test]
fn reports_role_sigkilled_mid_run_keeps_one_run_per_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = root.join("freshet.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[warehouse]
url = {:?}
[remote]
connect_wait_seconds = 60

[[reports]]
name = "heavy"
sql = "SELECT t.rows_seen, g.spin FROM (SELECT count(*) AS rows_seen FROM {{{{telemetry}}}}) t CROSS JOIN ({SPIN}) g"
trigger = {{ tables = ["telemetry"] }}
outputs = ["json"]
"#,
            warehouse(root).display().to_string()
        ),
    )
    .unwrap();
    let (store_http, gw_http, del_http, mqtt) = (free_port(), free_port(), free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{store_http}");
    let env = |http: u16| {
        vec![
            ("FRESHET_HTTP__ADDR", format!("127.0.0.1:{http}")),
            ("FRESHET_REMOTE__ENDPOINT", endpoint.clone()),
            (
                "FRESHET_DATA_DIR",
                root.join(format!("data-{http}")).display().to_string(),
            ),
            ("FRESHET_CONFIG", config.display().to_string()),
        ]
    };
    let mut store = Proc::spawn("store", &["run", "store"], &env(store_http), root);
    store.wait_healthy(store_http);
    let mut gateway = Proc::spawn(
        "gateway",
        &["run", "gateway", "--mqtt-addr", &format!("127.0.0.1:{mqtt}")],
        &env(gw_http),
        root,
    );
    let mut delivery = Proc::spawn(
        "delivery",
        &["run", "delivery", "--buffer-interval", "1s"],
        &env(del_http),
        root,
    );
    gateway.wait_healthy(gw_http);
    delivery.wait_healthy(del_http);
    poll_until(Duration::from_secs(30), "the MQTT listener", || {
        TcpStream::connect(("127.0.0.1", mqtt)).ok().map(|_| ())
    });
    let start_reports = || {
        let http = free_port();
        let mut p = Proc::spawn("reports", &["run", "reports"], &env(http), root);
        p.wait_healthy(http);
        p
    };
    let publish_round = |device: &str| {
        let before = table_version(root, "telemetry").unwrap_or(0);
        let lines: Vec<String> = (0..10)
            .map(|i| json!({"ts": 1_700_000_000_000_i64 + i * 1_000, "temp": i}).to_string())
            .collect();
        publish(mqtt, &format!("devices/{device}/telemetry"), device, &lines);
        poll_until(Duration::from_secs(60), "a new telemetry version", || {
            table_version(root, "telemetry").filter(|v| *v > before)
        })
    };

    let reports = start_reports();
    publish_round("dev-1");
    publish_round("dev-2");
    let interrupted = poll_until(Duration::from_secs(120), "a run in progress", || {
        let running: Vec<String> = run_files(root, "heavy")
            .into_iter()
            .filter(|(_, raw)| status_of(raw) == "running")
            .map(|(id, _)| id)
            .collect();
        (!running.is_empty()).then_some(running)
    });
    drop(reports); // SIGKILL
    let completed_at_kill: BTreeMap<String, String> = run_files(root, "heavy")
        .into_iter()
        .filter(|(_, raw)| status_of(raw) == "completed")
        .collect();
    // Commits go on while the report role is down.
    let while_down = publish_round("dev-3");

    let reports = start_reports();
    let last = publish_round("dev-4");
    let want = poll_until(
        Duration::from_secs(240),
        "a completed run for every announced version",
        || {
            let announced = announced(store_http, "telemetry");
            let runs = run_files(root, "heavy");
            (announced.contains(&last)
                && announced.iter().all(|v| {
                    runs.get(&format!("telemetry@v{v}"))
                        .is_some_and(|raw| status_of(raw) == "completed")
                }))
            .then_some(announced)
        },
    );
    assert!(want.contains(&while_down));
    let runs = history(root, &config, "heavy");
    let ids: BTreeSet<String> = runs.keys().cloned().collect();
    let want_ids: BTreeSet<String> = want.iter().map(|v| format!("telemetry@v{v}")).collect();
    assert_eq!(ids, want_ids, "one run per announced version, and no other");
    let now = run_files(root, "heavy");
    for (run_id, raw) in &completed_at_kill {
        assert_eq!(&now[run_id], raw, "{run_id} ran again");
    }
    for (run_id, record) in &runs {
        assert_eq!(record["status"], "completed", "{record}");
        let attempts = record["attempts"].as_u64().unwrap();
        assert_eq!(
            attempts,
            if interrupted.contains(run_id) { 2 } else { 1 },
            "{record}"
        );
    }
    for p in [reports, delivery, gateway, store] {
        let name = p.name.clone();
        assert!(p.terminate().success(), "{name} did not exit cleanly");
    }
}
