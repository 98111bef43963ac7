//! The dashboards HTTP router (axum), to be nested at `/dashboards` on freshet's HTTP port.
//!
//! | path | answer |
//! |---|---|
//! | `/` | index of the dashboards |
//! | `/<name>` | the dashboard as one HTML page, every panel an inline SVG; a small script polls `version` |
//! | `/<name>/version` | `{"version": .., "panels": {"<panel>": "<run id>" or null}}`: one small file read per report |
//! | `/<name>/<panel>.svg` | one panel's SVG (what the script swaps in when the panel's run id changes) |
//! | `/<name>/<panel>.png?width=&height=` | one panel as PNG, sides [`PNG_SIDE_MIN`]..=[`PNG_SIDE_MAX`], else 400 |
//! | `/<name>/<panel>.json` | the data behind the panel (what the golden tests compare) |
//!
//! Unknown dashboards and panels answer a 404 page. Report outputs are read from the warehouse ([`OutputStore`]: a
//! directory or an object store) before drawing; drawing runs on the blocking pool, at most [`RENDERS_MAX`] at once;
//! a report whose output is missing or of the wrong shape makes that panel say so.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::config::{DashboardConfig, PanelConfig};
use super::data::{Latest, OutputCache, PanelData, panel_data};
use super::ops::{OPS_NAME, OpsSampler};
use super::render::{self, PNG_SIDE_MAX, PNG_SIDE_MIN};
use crate::outputs::OutputStore;

/// Panel renders running at once (each is CPU work on the blocking pool).
pub const RENDERS_MAX: usize = 4;
/// How often the page asks whether a report has a new run, in milliseconds.
pub const POLL_INTERVAL_MS: u64 = 2_000;

/// What the router serves: the dashboards over a warehouse's report outputs, and optionally the ops dashboard.
#[derive(Clone)]
pub struct Dashboards {
    inner: Arc<Inner>,
}

struct Inner {
    outputs: OutputStore,
    dashboards: Vec<DashboardConfig>,
    cache: OutputCache,
    /// The last drawing of each (dashboard, panel), with the report run it shows. A run's output never changes,
    /// so a request for the same run is answered with this drawing instead of drawing again.
    drawn: Mutex<HashMap<(String, String), Drawn>>,
    renders: Semaphore,
    ops: Option<OpsSampler>,
}

/// One panel drawn: its SVG, the problem note shown under it (if any), and the run it shows.
#[derive(Debug, Clone)]
struct Drawn {
    version: Option<String>,
    svg: Arc<str>,
    note: Option<Arc<str>>,
}

/// What a panel shows now: a drawing of its current run already made, or the data to draw.
enum PanelNow {
    Drawn(Drawn),
    Data(PanelData, Option<String>),
}

impl std::fmt::Debug for Dashboards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboards")
            .field("outputs", &self.inner.outputs)
            .field("dashboards", &self.inner.dashboards.len())
            .finish()
    }
}

impl Dashboards {
    /// Dashboards over the report outputs of a warehouse (`<warehouse>/reports/<name>/`): a local directory
    /// (`&Path`, `PathBuf`) or an [`OutputStore`].
    pub fn new(outputs: impl Into<OutputStore>, dashboards: Vec<DashboardConfig>) -> Self {
        Self::build(outputs.into(), dashboards, None)
    }

    /// The same, plus `/_ops` drawn from the metrics `sampler` collects.
    pub fn with_ops(
        outputs: impl Into<OutputStore>,
        dashboards: Vec<DashboardConfig>,
        sampler: OpsSampler,
    ) -> Self {
        Self::build(outputs.into(), dashboards, Some(sampler))
    }

    fn build(outputs: OutputStore, dashboards: Vec<DashboardConfig>, ops: Option<OpsSampler>) -> Self {
        Self {
            inner: Arc::new(Inner {
                outputs,
                dashboards,
                cache: OutputCache::default(),
                drawn: Mutex::new(HashMap::new()),
                renders: Semaphore::new(RENDERS_MAX),
                ops,
            }),
        }
    }

    fn dashboard(&self, name: &str) -> Option<DashboardConfig> {
        if name == OPS_NAME {
            return self.inner.ops.as_ref().map(OpsSampler::dashboard);
        }
        self.inner.dashboards.iter().find(|d| d.name == name).cloned()
    }

    /// The run id each panel of `dashboard` would draw now.
    async fn versions(&self, dashboard: &DashboardConfig) -> BTreeMap<String, Option<String>> {
        if dashboard.name == OPS_NAME {
            let v = self.inner.ops.as_ref().map(|o| o.version().to_string());
            return dashboard
                .panels
                .iter()
                .map(|p| (p.name.clone(), v.clone()))
                .collect();
        }
        let mut by_report: BTreeMap<&str, Option<String>> = BTreeMap::new();
        for p in &dashboard.panels {
            if !by_report.contains_key(p.report.as_str()) {
                let run = OutputCache::latest_run_id(&self.inner.outputs, &p.report)
                    .await
                    .ok()
                    .flatten();
                by_report.insert(&p.report, run);
            }
        }
        dashboard
            .panels
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    by_report.get(p.report.as_str()).cloned().flatten(),
                )
            })
            .collect()
    }

    /// The data behind one panel now, with the run id it came from (reads the report's output).
    pub async fn load_panel_data(
        &self,
        dashboard: &DashboardConfig,
        panel: &PanelConfig,
    ) -> (PanelData, Option<String>) {
        if dashboard.name == OPS_NAME
            && let Some(ops) = &self.inner.ops
        {
            return (ops.panel_data(panel), Some(ops.version().to_string()));
        }
        let latest = self.inner.cache.latest(&self.inner.outputs, &panel.report).await;
        let version = match &latest {
            Latest::Output(o) => Some(o.run_id.clone()),
            _ => None,
        };
        (panel_data(panel, &latest), version)
    }

    /// [`Dashboards::load_panel_data`], blocking the calling thread (tests, benchmarks; not on an async worker).
    pub fn panel_data(
        &self,
        dashboard: &DashboardConfig,
        panel: &PanelConfig,
    ) -> (PanelData, Option<String>) {
        futures::executor::block_on(self.load_panel_data(dashboard, panel))
    }

    /// What `panel` shows now: the drawing of its report's current run if one was made, else the data to draw.
    /// Only the `latest` pointer is read when the drawing is there (and the output is parsed once per run).
    async fn load_panel(&self, dashboard: &DashboardConfig, panel: &PanelConfig) -> PanelNow {
        if dashboard.name == OPS_NAME {
            let (data, version) = self.load_panel_data(dashboard, panel).await;
            return PanelNow::Data(data, version);
        }
        let latest = self.inner.cache.latest(&self.inner.outputs, &panel.report).await;
        let version = match &latest {
            Latest::Output(o) => Some(o.run_id.clone()),
            _ => None,
        };
        if let Some(v) = &version
            && let Some(hit) = self
                .inner
                .drawn
                .lock()
                .unwrap()
                .get(&(dashboard.name.clone(), panel.name.clone()))
            && hit.version.as_ref() == Some(v)
        {
            return PanelNow::Drawn(hit.clone());
        }
        PanelNow::Data(panel_data(panel, &latest), version)
    }

    /// What every panel of `dashboard` shows now, read concurrently.
    async fn load_all(&self, dashboard: &DashboardConfig) -> Vec<PanelNow> {
        futures::future::join_all(dashboard.panels.iter().map(|p| self.load_panel(dashboard, p))).await
    }

    /// The panel drawn (CPU work: call it on a blocking thread). A drawing of a report run is kept for the next
    /// request of the same run; the ops dashboard and panels without a run are drawn every time.
    fn draw(&self, dashboard: &DashboardConfig, panel: &PanelConfig, now: PanelNow) -> Drawn {
        let (data, version) = match now {
            PanelNow::Drawn(d) => return d,
            PanelNow::Data(data, version) => (data, version),
        };
        let drawn = Drawn {
            svg: render::svg(panel, &data, version.as_deref()).into(),
            note: match &data {
                PanelData::Problem { message } => {
                    Some(format!("<p class=\"problem\">{}</p>", escape(message)).into())
                }
                _ => None,
            },
            version,
        };
        if dashboard.name != OPS_NAME && drawn.version.is_some() {
            self.inner
                .drawn
                .lock()
                .unwrap()
                .insert((dashboard.name.clone(), panel.name.clone()), drawn.clone());
        }
        drawn
    }

    /// Forget every drawing kept, so that the next request draws its panels again (benchmarks: the cost of
    /// drawing a page, as after a new run of every report).
    pub fn forget_drawings(&self) {
        self.inner.drawn.lock().unwrap().clear();
    }

    /// The whole dashboard page (HTML with one inline SVG per panel); `base` is the path the router is served at.
    /// Blocks the calling thread while it reads the outputs (tests, benchmarks; not on an async worker).
    pub fn page(&self, dashboard: &DashboardConfig, base: &str) -> String {
        let data = futures::executor::block_on(self.load_all(dashboard));
        self.page_from(dashboard, base, data)
    }

    /// The page from what the panels show (in panel order): drawing only, no IO. The panels are written once into
    /// one buffer sized for them.
    fn page_from(&self, dashboard: &DashboardConfig, base: &str, now: Vec<PanelNow>) -> String {
        use std::fmt::Write as _;
        let drawn: Vec<Drawn> = dashboard
            .panels
            .iter()
            .zip(now)
            .map(|(p, now)| self.draw(dashboard, p, now))
            .collect();
        let size: usize = drawn
            .iter()
            .map(|d| d.svg.len() + d.note.as_ref().map_or(0, |n| n.len()) + 512)
            .sum();
        let mut panels = String::with_capacity(size);
        let dash = escape(&dashboard.name);
        for (p, d) in dashboard.panels.iter().zip(&drawn) {
            let name = escape(&p.name);
            let _ = write!(
                panels,
                "<section class=\"panel\" id=\"panel-{name}\" data-panel=\"{name}\" data-version=\"{version}\">\
                 <div class=\"body\">",
                version = escape(d.version.as_deref().unwrap_or("")),
            );
            panels.push_str(&d.svg);
            panels.push_str(d.note.as_deref().unwrap_or(""));
            let _ = write!(
                panels,
                "</div><a class=\"png\" href=\"{base}/{dash}/{name}.png?width=1600&amp;height=720\">PNG</a></section>"
            );
        }
        page_html(
            dashboard.display_title(),
            &format!(
                "<header><a href=\"{base}\">dashboards</a> / <h1>{title}</h1>\
                 <span id=\"status\" aria-live=\"polite\"></span></header>\
                 <main class=\"grid\" data-dashboard=\"{dash}\">{panels}</main>\
                 <script>{script}</script>",
                title = escape(dashboard.display_title()),
                script = SCRIPT.replace("POLL_MS", &POLL_INTERVAL_MS.to_string()),
            ),
        )
    }

    async fn render<T: Send + 'static>(
        &self,
        f: impl FnOnce(Dashboards) -> T + Send + 'static,
    ) -> Result<T, Response> {
        let _permit = self
            .inner
            .renders
            .acquire()
            .await
            .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response())?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me)).await.map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering failed: {e}"),
            )
                .into_response()
        })
    }
}

/// The router to nest at `/dashboards`.
pub fn router(dashboards: Dashboards) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/{name}", get(dashboard_page))
        .route("/{name}/{file}", get(panel_file))
        .fallback(|| async { not_found("no such page") })
        .with_state(dashboards)
}

/// The path the router is served at (`/dashboards` when nested there), from the original and the nested URI.
fn base_path(original: &Uri, inner: &Uri) -> String {
    let orig = original.path();
    let inner = inner.path();
    let base = if inner == "/" {
        orig.trim_end_matches('/')
    } else {
        orig.strip_suffix(inner).unwrap_or("")
    };
    base.to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(page_html(
            "not found",
            &format!(
                "<main class=\"missing\"><h1>404</h1><p>{}</p></main>",
                escape(what)
            ),
        )),
    )
        .into_response()
}

fn bad_request(what: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{what}\n")).into_response()
}

async fn index(State(d): State<Dashboards>, OriginalUri(original): OriginalUri, uri: Uri) -> Response {
    let base = base_path(&original, &uri);
    let mut items: Vec<String> = d
        .inner
        .dashboards
        .iter()
        .map(|db| {
            format!(
                "<li><a href=\"{base}/{name}\">{title}</a> <span class=\"muted\">{n} panels</span></li>",
                name = escape(&db.name),
                title = escape(db.display_title()),
                n = db.panels.len()
            )
        })
        .collect();
    if d.inner.ops.is_some() {
        items.push(format!(
            "<li><a href=\"{base}/{OPS_NAME}\">Pipeline operations</a> <span class=\"muted\">built in</span></li>"
        ));
    }
    Html(page_html(
        "dashboards",
        &format!(
            "<header><h1>Dashboards</h1></header><main><ul class=\"index\">{}</ul></main>",
            items.join("")
        ),
    ))
    .into_response()
}

async fn dashboard_page(
    State(d): State<Dashboards>,
    Path(name): Path<String>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Response {
    let Some(dashboard) = d.dashboard(&name) else {
        return not_found(&format!("no dashboard named {name:?}"));
    };
    let base = base_path(&original, &uri);
    let data = d.load_all(&dashboard).await;
    match d.render(move |d| d.page_from(&dashboard, &base, data)).await {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct PngSize {
    width: Option<u32>,
    height: Option<u32>,
}

async fn panel_file(
    State(d): State<Dashboards>,
    Path((name, file)): Path<(String, String)>,
    size: Result<Query<PngSize>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(dashboard) = d.dashboard(&name) else {
        return not_found(&format!("no dashboard named {name:?}"));
    };
    if file == "version" {
        let panels = d.versions(&dashboard).await;
        let version: Vec<String> = panels
            .iter()
            .map(|(p, v)| format!("{p}={}", v.as_deref().unwrap_or("")))
            .collect();
        return (
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({"version": version.join(","), "panels": panels})),
        )
            .into_response();
    }
    let Some((panel_name, ext)) = file.rsplit_once('.') else {
        return not_found(&format!("no page {file:?} in dashboard {name}"));
    };
    let Some(panel) = dashboard.panel(panel_name).cloned() else {
        return not_found(&format!("dashboard {name} has no panel named {panel_name:?}"));
    };
    match ext {
        "svg" => {
            let now = d.load_panel(&dashboard, &panel).await;
            match d.render(move |d| d.draw(&dashboard, &panel, now)).await {
                Ok(Drawn { svg, version, .. }) => (
                    [
                        (header::CONTENT_TYPE, "image/svg+xml".to_string()),
                        (header::CACHE_CONTROL, "no-store".to_string()),
                        (
                            header::HeaderName::from_static("x-freshet-version"),
                            version.unwrap_or_default(),
                        ),
                    ],
                    svg.to_string(),
                )
                    .into_response(),
                Err(r) => r,
            }
        }
        "json" => {
            let (data, version) = d.load_panel_data(&dashboard, &panel).await;
            axum::Json(serde_json::json!({"panel": panel.name, "version": version, "data": data}))
                .into_response()
        }
        "png" => {
            let Ok(Query(size)) = size else {
                return bad_request("width and height must be whole numbers of pixels");
            };
            let (width, height) = (size.width.unwrap_or(800), size.height.unwrap_or(360));
            let ok = |v: u32| (PNG_SIDE_MIN..=PNG_SIDE_MAX).contains(&v);
            if !ok(width) || !ok(height) {
                return bad_request(&format!(
                    "width and height must be {PNG_SIDE_MIN}..={PNG_SIDE_MAX} pixels (got {width}x{height})"
                ));
            }
            let (data, _) = d.load_panel_data(&dashboard, &panel).await;
            match d.render(move |_| render::png(&panel, &data, width, height)).await {
                Ok(Ok(png)) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
                Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
                Err(r) => r,
            }
        }
        _ => not_found(&format!("no page {file:?} in dashboard {name}")),
    }
}

fn page_html(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · freshet</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

const STYLE: &str = "\
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;background:#f3f5f8;color:#1d2330}\
header{display:flex;gap:.5rem;align-items:baseline;padding:.75rem 1rem;background:#fff;border-bottom:1px solid #dde2ea}\
header h1{font-size:1.2rem;margin:0}header a{color:#2a5db0}#status{margin-left:auto;color:#6b7280;font-size:.85rem}\
.grid{display:grid;gap:1rem;padding:1rem;grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr))}\
.panel{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:.25rem;position:relative;min-width:0}\
.panel svg{display:block;width:100%;height:auto}.panel .png{position:absolute;top:.4rem;right:.6rem;font-size:.75rem;color:#6b7280}\
.problem{color:#b41e1e;font-size:.85rem;margin:.25rem .5rem}.index{line-height:2;padding:1rem 2rem}.muted{color:#6b7280}\
.missing{padding:2rem}";

/// Polls `<page>/version`; for each panel whose run id changed, fetches `<page>/<panel>.svg` and swaps it in.
const SCRIPT: &str = r#"
(function () {
  var page = location.pathname.replace(/\/+$/, '');
  var status = document.getElementById('status');
  function swap(name, version) {
    return fetch(page + '/' + encodeURIComponent(name) + '.svg', {cache: 'no-store'})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (svg) {
        var panel = document.getElementById('panel-' + name);
        if (!panel) return;
        panel.querySelector('.body').innerHTML = svg;
        panel.dataset.version = version || '';
      });
  }
  function poll() {
    fetch(page + '/version', {cache: 'no-store'})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (v) {
        var jobs = [];
        Object.keys(v.panels).forEach(function (name) {
          var panel = document.getElementById('panel-' + name);
          var now = v.panels[name] || '';
          if (panel && panel.dataset.version !== now) jobs.push(swap(name, now));
        });
        return Promise.all(jobs).then(function () {
          status.textContent = 'updated ' + new Date().toLocaleTimeString();
        });
      })
      .catch(function (e) { status.textContent = 'not updating: ' + e.message; })
      .then(function () { setTimeout(poll, POLL_MS); });
  }
  setTimeout(poll, POLL_MS);
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::ChartKind;

    fn write_run(warehouse: &std::path::Path, run: &str, temps: &[f64]) {
        let dir = crate::run::report_dir(warehouse, "temps");
        std::fs::create_dir_all(dir.join(format!("runs/{run}"))).unwrap();
        let rows: Vec<serde_json::Value> = temps
            .iter()
            .enumerate()
            .map(|(i, t)| serde_json::json!({"minute": 1_795_000_000_000i64 + i as i64 * 60_000, "avg_temp": t}))
            .collect();
        let doc = serde_json::json!({
            "columns": [{"name": "minute", "type": "Timestamp(µs, \"UTC\")"}, {"name": "avg_temp", "type": "Float64"}],
            "rows": rows,
        });
        std::fs::write(
            dir.join(format!("runs/{run}/result.json")),
            serde_json::to_vec(&doc).unwrap(),
        )
        .unwrap();
        let latest = serde_json::json!({
            "run_id": run, "versions": {"temps": 1}, "finished_at_ms": 0,
            "outputs": [format!("runs/{run}/result.json")],
        });
        std::fs::write(dir.join("latest"), serde_json::to_vec(&latest).unwrap()).unwrap();
    }

    #[test]
    fn a_panel_is_drawn_again_only_for_a_new_run() {
        let dir = tempfile::tempdir().unwrap();
        let dashboard = DashboardConfig {
            name: "d".into(),
            title: "D".into(),
            panels: vec![PanelConfig {
                name: "t".into(),
                title: "Temperature".into(),
                report: "temps".into(),
                chart: ChartKind::Line,
                x: "minute".into(),
                y: vec!["avg_temp".into()],
                series: None,
                unit: None,
            }],
        };
        let d = Dashboards::new(dir.path(), vec![dashboard.clone()]);
        write_run(dir.path(), "r1", &[1.0, 2.0, 3.0]);
        let first = d.page(&dashboard, "/dashboards");
        assert!(first.contains("data-version=\"r1\""), "{first}");
        assert!(first.contains("data-points=\"3\""), "{first}");
        assert_eq!(d.page(&dashboard, "/dashboards"), first, "same run, same page");
        d.forget_drawings();
        assert_eq!(d.page(&dashboard, "/dashboards"), first, "drawn again, same page");

        write_run(dir.path(), "r2", &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let second = d.page(&dashboard, "/dashboards");
        assert!(second.contains("data-version=\"r2\""), "{second}");
        assert!(second.contains("data-points=\"5\""), "{second}");
        assert!(!second.contains("data-version=\"r1\""), "{second}");
    }
}
