//! `freshet bench dashboard`: time to render a dashboard of `--panels` panels × `--points` points each, as the HTML
//! page with inline SVG (what `/dashboards/<name>` answers) and as one panel's PNG (what `<panel>.png` answers).
//!
//! The report outputs are written as fixture runs into a temporary warehouse (one report per panel, `--series`
//! devices, one point per device and minute), so the numbers cover reading `latest`, the panel data and drawing.
//! "render" draws every panel from outputs already parsed (the first request after a new run of every report, its
//! output read once by the version poll or another dashboard); "cached" is a second request for the same runs,
//! which the server answers from the panels it drew then (a run's output never changes); "cold" parses the outputs
//! and draws (a fresh server). No HTTP is involved: this is the rendering cost alone.

use std::time::Instant;

use clap::Args;
use freshet_reports::dashboard::{ChartKind, DashboardConfig, Dashboards, PanelConfig};

use super::{histogram, ms, record_latency};

#[derive(Debug, Args)]
pub struct DashboardBenchArgs {
    /// Panels on the dashboard.
    #[arg(long, default_value_t = 10)]
    pub panels: usize,
    /// Points per panel (over all its series).
    #[arg(long, default_value_t = 10_000)]
    pub points: usize,
    /// Series per panel (devices).
    #[arg(long, default_value_t = 4)]
    pub series: usize,
    /// Timed renders of each kind.
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// PNG size.
    #[arg(long, default_value_t = 800)]
    pub png_width: u32,
    #[arg(long, default_value_t = 360)]
    pub png_height: u32,
}

fn fixture(warehouse: &std::path::Path, report: &str, points: usize, series: usize) -> anyhow::Result<()> {
    let per_series = points / series.max(1);
    let start_ms: i64 = 1_795_000_000_000;
    let mut rows = Vec::with_capacity(points);
    for s in 0..series {
        for i in 0..per_series {
            // Times as epoch milliseconds: the panel data reads numbers in a timestamp column as such.
            let t = start_ms + i as i64 * 60_000;
            let wave = ((i as f64) / 50.0 + s as f64).sin();
            rows.push(serde_json::json!({
                "device_id": format!("device-{s:02}"),
                "minute": t,
                "count": 60 + (i % 7) as i64,
                "avg_temp": 20.0 + 5.0 * wave + s as f64,
            }));
        }
    }
    let doc = serde_json::json!({
        "columns": [
            {"name": "device_id", "type": "Utf8"},
            {"name": "minute", "type": "Timestamp(µs, \"UTC\")"},
            {"name": "count", "type": "Int64"},
            {"name": "avg_temp", "type": "Float64"},
        ],
        "rows": rows,
    });
    let dir = freshet_reports::report_dir(warehouse, report);
    std::fs::create_dir_all(dir.join("runs/bench@v1"))?;
    std::fs::write(dir.join("runs/bench@v1/result.json"), serde_json::to_vec(&doc)?)?;
    std::fs::write(
        dir.join("latest"),
        serde_json::to_vec(&serde_json::json!({
            "run_id": "bench@v1", "versions": {"bench": 1}, "finished_at_ms": 0,
            "outputs": ["runs/bench@v1/result.json"],
        }))?,
    )?;
    Ok(())
}

pub async fn run(args: DashboardBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.panels > 0 && args.points > 0 && args.series > 0 && args.iterations > 0,
        "all counts must be > 0"
    );
    let dir = tempfile::tempdir()?;
    let warehouse = dir.path().to_path_buf();
    let mut panels = Vec::new();
    for p in 0..args.panels {
        let report = format!("bench_{p:02}");
        fixture(&warehouse, &report, args.points, args.series)?;
        panels.push(PanelConfig {
            name: format!("panel_{p:02}"),
            title: format!("Panel {p} ({} points)", args.points),
            report,
            chart: if p % 2 == 0 {
                ChartKind::Line
            } else {
                ChartKind::Area
            },
            x: "minute".into(),
            y: vec![if p % 2 == 0 { "avg_temp" } else { "count" }.into()],
            series: Some("device_id".into()),
            unit: Some("°C".into()),
        });
    }
    let dashboard = DashboardConfig {
        name: "bench".into(),
        title: "Benchmark".into(),
        panels,
    };
    freshet_reports::dashboard::validate(std::slice::from_ref(&dashboard), &[])?;
    let (png_w, png_h) = (args.png_width, args.png_height);
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let warm = Dashboards::new(&warehouse, vec![dashboard.clone()]);
        let html = warm.page(&dashboard, "/dashboards");
        let html_bytes = html.len();
        anyhow::ensure!(
            html.matches("<svg class=\"chart\"").count() == dashboard.panels.len(),
            "every panel drew an SVG"
        );
        anyhow::ensure!(
            !html.contains("data-state=\"problem\""),
            "no panel reports a problem"
        );
        let mut html_warm = histogram();
        let mut html_cached = histogram();
        let mut html_cold = histogram();
        let mut data_only = histogram();
        let mut png_warm = histogram();
        let mut png_bytes = 0;
        for _ in 0..args.iterations {
            warm.forget_drawings();
            let t = Instant::now();
            std::hint::black_box(warm.page(&dashboard, "/dashboards"));
            record_latency(&mut html_warm, t.elapsed());

            let t = Instant::now();
            let cached = std::hint::black_box(warm.page(&dashboard, "/dashboards"));
            record_latency(&mut html_cached, t.elapsed());
            anyhow::ensure!(cached == html, "a cached page is the page drawn");

            // The data-preparation share of "render": every panel's data from the parsed outputs, nothing drawn.
            let t = Instant::now();
            for p in &dashboard.panels {
                std::hint::black_box(warm.panel_data(&dashboard, p));
            }
            record_latency(&mut data_only, t.elapsed());

            let cold = Dashboards::new(&warehouse, vec![dashboard.clone()]);
            let t = Instant::now();
            std::hint::black_box(cold.page(&dashboard, "/dashboards"));
            record_latency(&mut html_cold, t.elapsed());

            let panel = &dashboard.panels[0];
            let t = Instant::now();
            let (data, _) = warm.panel_data(&dashboard, panel);
            let png =
                freshet_reports::dashboard::png(panel, &data, png_w, png_h).map_err(anyhow::Error::msg)?;
            record_latency(&mut png_warm, t.elapsed());
            png_bytes = png.len();
        }
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        Ok(format!(
            "freshet bench dashboard ({profile} build, {machine})\n\
             {panels} panels x {points} points ({series} series each), {iterations} iterations\n\n\
             | render | p50 ms | p99 ms | size |\n|---|---|---|---|\n\
             | HTML page with SVG, outputs parsed, panels drawn (render) | {hw50:.1} | {hw99:.1} | {html_bytes} B |\n\
             | HTML page, same runs again (cached drawings) | {hx50:.1} | {hx99:.1} | |\n\
             | panel data of every panel, no drawing (part of render) | {hd50:.1} | {hd99:.1} | |\n\
             | HTML page with SVG, outputs re-read (cold) | {hc50:.1} | {hc99:.1} | |\n\
             | one panel PNG {png_w}x{png_h} (warm) | {pw50:.1} | {pw99:.1} | {png_bytes} B |\n",
            machine = super::machine(),
            panels = dashboard.panels.len(),
            points = args.points,
            series = args.series,
            iterations = args.iterations,
            hw50 = ms(&html_warm, 0.5),
            hw99 = ms(&html_warm, 0.99),
            hx50 = ms(&html_cached, 0.5),
            hx99 = ms(&html_cached, 0.99),
            hd50 = ms(&data_only, 0.5),
            hd99 = ms(&data_only, 0.99),
            hc50 = ms(&html_cold, 0.5),
            hc99 = ms(&html_cold, 0.99),
            pw50 = ms(&png_warm, 0.5),
            pw99 = ms(&png_warm, 0.99),
        ))
    })
    .await??;
    println!("{report}");
    Ok(())
}
