//! Dashboards end to end: a real `freshet up` fed over MQTT (`mosquitto_pub`), its `/dashboards/telemetry` page
//! opened by headless Chromium (Debian `chromium`): the DOM after the page's script ran holds one SVG per panel
//! with the expected number of series, and the screenshot is not blank. The PNG endpoint answers PNGs of the asked
//! size, 400 on absurd sizes, 404 on unknown dashboards and panels; a new report run is swapped into the page open
//! in a live Chromium (DevTools protocol) by the page's own script, without a reload; a bearer token, when
//! configured, is required. Chart-data golden tests compare the data behind every series of fixture report outputs
//! with `tests/golden/dashboards/out/` (`FRESHET_UPDATE_GOLDEN=1` rewrites them).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use freshet_reports::dashboard::{DashboardConfig, Dashboards};
use freshet_tests::poll_until;
use freshet_tests::up::{UpProcess, free_port, mosquitto_pub_lines};

/// One HTTP/1.0 GET: status, content type, body.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, content_type, response[split + 4..].to_vec()))
}

fn get_text(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = get(port, path, &[]).unwrap_or_else(|| panic!("GET {path} answers"));
    (status, String::from_utf8_lossy(&body).to_string())
}

/// Publish one telemetry message per minute of event time for `device`, `minutes` minutes from `start_ms`.
fn publish(mqtt: u16, device: &str, start_ms: i64, minutes: i64) {
    let mut lines = Vec::new();
    for m in 0..minutes {
        for k in 0..2 {
            let ts = start_ms + m * 60_000 + k * 1_000;
            lines.push(format!(
                r#"{{"ts":{ts},"temp":{},"humidity":{},"battery":{}}}"#,
                20.0 + m as f64 * 0.5 + device.len() as f64,
                40.0 + m as f64,
                90.0 - m as f64 * 0.25
            ));
        }
    }
    mosquitto_pub_lines(
        mqtt,
        &format!("devices/{device}/telemetry"),
        &format!("dash-{device}"),
        &lines,
    );
}

/// `name="value"` attributes of every `<svg ...>` start tag with `class="chart"` in `html`.
fn chart_svgs(html: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for (at, _) in html.match_indices("<svg") {
        let tag = &html[at..at + html[at..].find('>').unwrap_or(0)];
        if !tag.contains("class=\"chart\"") {
            continue;
        }
        let mut attrs = BTreeMap::new();
        for part in tag.split("\" ") {
            if let Some((k, v)) = part.rsplit_once("=\"") {
                let key = k.rsplit(' ').next().unwrap_or(k).to_string();
                attrs.insert(key, v.trim_end_matches('"').to_string());
            }
        }
        out.push(attrs);
    }
    out
}

fn chromium(args: &[&str], url: &str) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (Debian chromium) runs");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let status = poll_until(Duration::from_secs(120), "chromium to finish", || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "chromium {args:?} failed: {status}");
    reader.join().unwrap()
}

/// Open `url` in a live headless Chromium (tests/py/chromium_watch.py), run `change` once the page has loaded, and
/// wait until the page's own script swapped `panel` to a new version with at least `min_series` series.
/// Returns the watcher's "done" and "ready" events.
fn watch_page_until_swapped(
    url: &str,
    panel: &str,
    min_series: usize,
    change: impl FnOnce(),
) -> (serde_json::Value, serde_json::Value) {
    use std::io::BufRead;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/chromium_watch.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([url, panel, &min_series.to_string(), "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs (the test command installs websocket-client and chromium)");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut event = || -> serde_json::Value {
        let line = lines.next().expect("the watcher prints an event").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let ready = event();
    assert_eq!(ready["event"], "ready", "{ready}");
    change();
    let done = event();
    assert_eq!(done["event"], "done", "{done}");
    assert!(child.wait().unwrap().success());
    (done, ready)
}

/// Decode a PNG: (width, height, RGBA-or-RGB pixels as 3-byte colours).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| match channels {
            1 | 2 => [p[0]; 3],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    (info.width, info.height, pixels)
}

/// Not blank: many distinct colours, and a fair share of pixels that are not the background.
fn assert_not_blank(what: &str, pixels: &[[u8; 3]]) {
    let distinct: std::collections::BTreeSet<[u8; 3]> = pixels.iter().copied().collect();
    let mut counts: BTreeMap<[u8; 3], usize> = BTreeMap::new();
    for p in pixels {
        *counts.entry(*p).or_default() += 1;
    }
    let background = counts.values().max().copied().unwrap_or(0);
    let other = pixels.len() - background;
    assert!(distinct.len() >= 16, "{what}: only {} colours", distinct.len());
    assert!(
        other * 100 >= pixels.len(),
        "{what}: {other} of {} pixels differ from the background",
        pixels.len()
    );
}

#[test]
fn dashboards_render_in_chromium_over_a_running_freshet() {
    let data = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let up = UpProcess::start(data.path(), http, mqtt);
    let telemetry = DashboardConfig::telemetry();

    // Before any data: every panel renders and says so.
    let (status, page) = get_text(http, "/dashboards/telemetry");
    assert_eq!(status, 200);
    let svgs = chart_svgs(&page);
    assert_eq!(svgs.len(), telemetry.panels.len(), "one svg per panel: {page}");
    assert!(svgs.iter().all(|s| s["data-state"] == "empty"), "{svgs:?}");
    assert!(page.contains("no data yet"));

    // Three devices, five minutes of event time each.
    let start_ms = 1_795_000_000_000 - 1_795_000_000_000 % 60_000;
    let devices = ["alpha", "bravo", "charlie"];
    for d in devices {
        publish(mqtt, d, start_ms, 5);
    }
    let total: f64 = (devices.len() * 5 * 2) as f64;
    let first_version = poll_until(Duration::from_secs(90), "a report run over all messages", || {
        let (status, body) = get_text(http, "/dashboards/telemetry/messages.json");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sum: f64 = v["data"]["series"]
            .as_array()?
            .iter()
            .flat_map(|s| {
                s["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p[1].as_f64().unwrap())
            })
            .sum();
        (sum == total).then(|| v["version"].as_str().unwrap().to_string())
    });

    // The page in a real browser, after its script ran.
    let url = format!("http://127.0.0.1:{http}/dashboards/telemetry");
    let dom = String::from_utf8(chromium(&["--virtual-time-budget=5000", "--dump-dom"], &url)).unwrap();
    let svgs = chart_svgs(&dom);
    assert_eq!(svgs.len(), telemetry.panels.len(), "one svg per panel in the DOM");
    let expected_series: BTreeMap<&str, usize> = [
        ("messages", 3),
        ("temperature", 3),
        ("humidity", 3),
        ("battery", 3),
        ("messages_per_device", 1),
        ("last_minute", 1),
        ("latest", 0),
    ]
    .into_iter()
    .collect();
    for svg in &svgs {
        let panel = svg["data-panel"].as_str();
        assert_eq!(svg["data-state"], "ok", "{panel}: {svg:?}");
        assert_eq!(
            svg["data-series"].parse::<usize>().unwrap(),
            expected_series[panel],
            "series of {panel}"
        );
        assert_eq!(svg["data-version"], first_version);
    }
    for d in devices {
        assert!(dom.contains(d), "the legend names device {d}");
    }

    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("dashboard.png");
    chromium(
        &[
            "--window-size=1280,1600",
            "--virtual-time-budget=3000",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let (w, h, pixels) = decode_png(&std::fs::read(&shot).unwrap());
    assert_eq!((w, h), (1280, 1600));
    assert_not_blank("screenshot", &pixels);

    // PNG export: the asked size; absurd sizes 400; unknown names 404.
    let (status, content_type, body) = get(
        http,
        "/dashboards/telemetry/messages.png?width=640&height=320",
        &[],
    )
    .unwrap();
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    let (w, h, pixels) = decode_png(&body);
    assert_eq!((w, h), (640, 320));
    assert_not_blank("messages.png", &pixels);
    for bad in [
        "width=100000&height=300",
        "width=0&height=300",
        "width=300&height=-5",
        "width=abc",
    ] {
        let (status, _) = get_text(http, &format!("/dashboards/telemetry/messages.png?{bad}"));
        assert_eq!(status, 400, "{bad}");
    }
    for missing in [
        "/dashboards/nope",
        "/dashboards/nope/messages.png",
        "/dashboards/telemetry/nope.png",
    ] {
        let (status, body) = get_text(http, missing);
        assert_eq!(status, 404, "{missing}");
        assert!(body.contains("404"), "{missing}: a 404 page");
    }
    let (status, index) = get_text(http, "/dashboards");
    assert_eq!(status, 200);
    assert!(
        index.contains("/dashboards/telemetry") && index.contains("/dashboards/_ops"),
        "{index}"
    );

    // A new run (a fourth device) is swapped into the open page by its script, without a reload: the page is
    // watched in a live Chromium over the DevTools protocol (tests/py/chromium_watch.py) while the run lands.
    let (done, ready) = watch_page_until_swapped(&url, "messages", 4, || publish(mqtt, "delta", start_ms, 5));
    let versions = |charts: &serde_json::Value| -> BTreeMap<String, String> {
        charts
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["panel"].as_str().unwrap().to_string(),
                    c["version"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let at_load = versions(&ready["charts"]);
    assert_eq!(at_load.len(), telemetry.panels.len(), "{ready}");
    assert!(
        at_load.values().all(|v| *v == first_version),
        "the page opened on the first run: {ready}"
    );
    assert_eq!(done["mark"], "kept", "the page was not reloaded: {done}");
    assert_eq!(done["loads"], 1, "{done}");
    let after = versions(&done["charts"]);
    assert_eq!(
        after.len(),
        telemetry.panels.len(),
        "still one svg per panel: {done}"
    );
    let (_, body) = get_text(http, "/dashboards/telemetry/version");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(after["messages"], first_version);
    assert_eq!(
        served["panels"]["messages"].as_str(),
        Some(after["messages"].as_str()),
        "the swapped panel carries the served run id"
    );
    assert!(done["panel_text"].as_str().unwrap().contains("delta"), "{done}");

    // The ops dashboard renders from the live metrics.
    let (status, ops) = get_text(http, "/dashboards/_ops");
    assert_eq!(status, 200);
    assert_eq!(chart_svgs(&ops).len(), 5, "five ops panels");
    poll_until(
        Duration::from_secs(30),
        "an ingest rate on the ops dashboard",
        || {
            let (_, body) = get_text(http, "/dashboards/_ops/ingest_rate.json");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (v["data"]["kind"] == "chart").then_some(())
        },
    );

    assert!(up.terminate().success());
}

#[test]
fn dashboards_require_the_bearer_token_when_one_is_set() {
    let data = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let config = data.path().join("freshet.toml");
    std::fs::write(&config, "[http]\nbearer_token = \"s3cret-token\"\n").unwrap();
    let mut child = Command::new(freshet_tests::freshet_bin())
        .args(["up", "--log", "warn", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--mqtt-addr", &format!("127.0.0.1:{mqtt}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    poll_until(Duration::from_secs(60), "/health without a token", || {
        get(http, "/health", &[]).filter(|r| r.0 == 200).map(|_| ())
    });
    for path in [
        "/dashboards",
        "/dashboards/telemetry",
        "/dashboards/telemetry/messages.png?width=200&height=100",
        "/metrics",
    ] {
        assert_eq!(get(http, path, &[]).unwrap().0, 401, "{path} without a token");
        let wrong = get(http, path, &[("Authorization", "Bearer not-it")]).unwrap();
        assert_eq!(wrong.0, 401, "{path} with a wrong token");
        let right = get(http, path, &[("Authorization", "Bearer s3cret-token")]).unwrap();
        assert_eq!(right.0, 200, "{path} with the token");
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/dashboards")
}

/// A warehouse whose reports' latest runs are the fixture outputs under `golden/dashboards/reports/`.
fn fixture_warehouse() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(golden_dir().join("reports")).unwrap() {
        let entry = entry.unwrap();
        let report = entry.file_name().to_str().unwrap().to_string();
        let run_dir = freshet_reports::report_dir(dir.path(), &report).join("runs/fixture@v1");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::copy(entry.path().join("result.json"), run_dir.join("result.json")).unwrap();
        let latest = serde_json::json!({
            "run_id": "fixture@v1",
            "versions": {"fixture": 1},
            "finished_at_ms": 0,
            "outputs": ["runs/fixture@v1/result.json"],
        });
        std::fs::write(
            freshet_reports::report_dir(dir.path(), &report).join("latest"),
            serde_json::to_vec_pretty(&latest).unwrap(),
        )
        .unwrap();
    }
    dir
}

#[test]
fn dashboard_chart_data_matches_golden_files() {
    let warehouse = fixture_warehouse();
    let mut dashboards: Vec<DashboardConfig> =
        serde_json::from_slice(&std::fs::read(golden_dir().join("dashboards.json")).unwrap()).unwrap();
    dashboards.push(DashboardConfig::telemetry());
    freshet_reports::dashboard::validate(&dashboards, &[]).unwrap();
    let server = Dashboards::new(warehouse.path(), dashboards.clone());
    let update = std::env::var("FRESHET_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let out_dir = golden_dir().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut mismatches = Vec::new();
    let mut cases = 0;
    for dashboard in &dashboards {
        for panel in &dashboard.panels {
            cases += 1;
            let (data, version) = server.panel_data(dashboard, panel);
            let actual = serde_json::to_string_pretty(&serde_json::json!({"version": version, "data": data}))
                .unwrap()
                + "\n";
            let file = out_dir.join(format!("{}.{}.json", dashboard.name, panel.name));
            if update {
                std::fs::write(&file, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&file).unwrap_or_default();
            if expected != actual {
                mismatches.push(format!(
                    "{}:\n--- expected\n{expected}--- actual\n{actual}",
                    file.display()
                ));
            }
            // The page draws every panel, whatever its data.
            let svg = freshet_reports::dashboard::svg(panel, &data, version.as_deref());
            assert!(svg.starts_with("<svg class=\"chart\""), "{}", panel.name);
            assert!(svg.contains(&format!("data-series=\"{}\"", data.series_count())));
        }
    }
    assert!(cases >= 18, "the golden cases are present");
    assert!(
        mismatches.is_empty(),
        "golden mismatches (FRESHET_UPDATE_GOLDEN=1 rewrites them):\n{}",
        mismatches.join("\n")
    );
}
