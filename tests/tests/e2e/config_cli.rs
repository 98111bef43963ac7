//! `freshet.toml` through the real binary: `freshet config check` lists every problem of a bad file at once and
//! exits non-zero; `freshet config print` masks secrets and shows environment overrides; `freshet up --config`
//! runs a custom rule → stream → delivery end to end over real MQTT; start-up failures (port in use, a data
//! directory that cannot be created) are one line and a non-zero exit, never a panic.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use freshet_tests::up::free_port;
use freshet_tests::{freshet_bin, poll_until};

use freshet_tests::up::{mosquitto_pub_lines as publish, post_sql};

use crate::roles::Proc;

fn freshet(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let mut cmd = Command::new(freshet_bin());
    cmd.args(args).current_dir(cwd).env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn no_panic(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn config_check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[store]
fsync = "sometimes"

[[streams]]
name = "climate"
shards = 0

[[gateway.rules]]
name = "climate"
sql = "SELEC temp FROM 'rooms/+/climate'"
stream = "climate"
partition_key = "${topic(2)}"

[[deliveries]]
name = "climate"
stream = "not_declared"
table = "rooms"

[[reports]]
name = "per_room"
sql = "SELECT 1"
trigger = { tables = ["no_such_table"] }
"#,
    )
    .unwrap();
    let out = freshet(
        &["config", "check", "--config", path.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "store.fsync",
        "streams[0].shards",
        "gateway.rules[0]",
        "\"not_declared\" is not declared",
        "\"no_such_table\" is not written by any delivery",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in:\n{stderr}");
    }
    let problem_lines = stderr.lines().filter(|l| l.starts_with("  - ")).count();
    assert!(problem_lines >= 5, "one line per problem:\n{stderr}");

    // Unknown keys and bad values in several sections are all listed too.
    std::fs::write(
        &path,
        "colour = \"blue\"\n[http]\naddr = \"nowhere\"\n[gateway]\nmax_conections = 3\n",
    )
    .unwrap();
    let out = freshet(
        &["config", "check", "--config", path.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["colour", "http.addr", "max_conections"] {
        assert!(stderr.contains(needle), "{needle:?} missing in:\n{stderr}");
    }

    // A good file passes; no file at all is the default pipeline.
    let out = freshet(&["config", "check"], &[], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 deliveries"));
}

#[test]
fn config_print_masks_secrets_and_shows_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("freshet.toml"),
        r#"
[http]
bearer_token = "very-secret-token"

[[kinesis.access_keys]]
access_key_id = "AKIDEXAMPLE"
secret_access_key = "wJalrXUtnFEMI"
"#,
    )
    .unwrap();
    // ./freshet.toml is read when present.
    let out = freshet(
        &["config", "print"],
        &[
            ("FRESHET_STREAMS__0__SHARDS", "7"),
            ("FRESHET_GATEWAY__MAX_CONNECTIONS", "42"),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("very-secret-token") && !text.contains("wJalrXUtnFEMI"),
        "{text}"
    );
    assert!(text.contains("AKIDEXAMPLE"), "{text}");
    assert!(text.contains("shards = 7"), "{text}");
    assert!(text.contains("max_connections = 42"), "{text}");
    // Defaults are printed too: the default pipeline's rule and report.
    assert!(
        text.contains("devices/+/telemetry") && text.contains("telemetry_minutely"),
        "{text}"
    );

    // A bad override is reported like a bad key in the file.
    let out = freshet(&["config", "check"], &[("FRESHET_HTTP__PORT", "1")], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("port"));
}

#[test]
fn up_with_a_custom_config_delivers_its_own_rule_stream_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let config = dir.path().join("custom.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{data}"
reports = []

[http]
bearer_token = "t0ken"

[[gateway.listeners]]
addr = "127.0.0.1:{mqtt}"

[[gateway.rules]]
name = "climate"
sql = "SELECT temp, hum, topic(2) AS room FROM 'rooms/+/climate' WHERE temp > 0"
stream = "climate"
partition_key = "${{topic(2)}}"

[[streams]]
name = "climate"
shards = 2

[[deliveries]]
name = "climate"
stream = "climate"
table = "rooms"
buffer_interval_ms = 1000
"#,
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();
    // The HTTP address comes from the environment, as in a container.
    let up = Proc::spawn(
        "up",
        &["up", "--config", config.to_str().unwrap()],
        &[("FRESHET_HTTP__ADDR", format!("127.0.0.1:{http}"))],
        dir.path(),
    );
    let mut up = up;
    up.wait_healthy(http);
    poll_until(Duration::from_secs(30), "the MQTT listener", || {
        std::net::TcpStream::connect(("127.0.0.1", mqtt)).ok().map(|_| ())
    });
    let lines: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"temp":{},"hum":{}}}"#, i - 2, 40 + i))
        .collect();
    publish(mqtt, "rooms/kitchen/climate", "pub-kitchen", &lines);
    publish(
        mqtt,
        "devices/d1/telemetry",
        "pub-d1",
        &[r#"{"temp":1}"#.to_string()],
    );

    // Without the token: 401. With it: the rule's WHERE kept 9 of 12 (temp > 0), in table `rooms`.
    let (status, _) = post_sql(http, "SELECT 1", None).unwrap();
    assert_eq!(status, 401);
    let sql = "SELECT room, count(*) AS n, min(temp) AS min_temp FROM rooms GROUP BY room";
    let rows = poll_until(Duration::from_secs(90), "9 rows in rooms", || {
        let (status, answer) = post_sql(http, sql, Some("t0ken"))?;
        let rows = answer["rows"].as_array()?.clone();
        (status == 200 && rows.first()?["n"].as_i64()? >= 9).then_some(rows)
    });
    assert_eq!(
        rows,
        [serde_json::json!({"room": "kitchen", "n": 9, "min_temp": 1})]
    );
    // The default pipeline is not there: its rule and table were replaced.
    let (status, answer) = post_sql(http, "SELECT count(*) FROM telemetry", Some("t0ken")).unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(up.terminate().success(), "SIGTERM exits 0");
}

#[test]
fn start_up_failures_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    // HTTP port in use.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let data = dir.path().join("data");
    let out = freshet(
        &[
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--mqtt-addr",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&format!("127.0.0.1:{port}")), "{stderr}");

    // MQTT port in use.
    let out = freshet(
        &[
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--mqtt-addr",
            &format!("127.0.0.1:{port}"),
        ],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{stderr}"
    );

    // A data directory that cannot be created (its parent is a file; this holds for root too).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = freshet(
        &[
            "up",
            "--data-dir",
            file.join("data").to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--mqtt-addr",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("data directory"), "{stderr}");

    // A role whose store never answers gives up with one line.
    let out = freshet(
        &[
            "run",
            "delivery",
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[
            (
                "FRESHET_REMOTE__ENDPOINT",
                &format!("http://127.0.0.1:{}", free_port()),
            ),
            ("FRESHET_REMOTE__CONNECT_WAIT_SECONDS", "1"),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer"), "{stderr}");
    drop(busy);
}
