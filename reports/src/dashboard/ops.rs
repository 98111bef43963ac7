//! The ops dashboard (`/dashboards/_ops`): the pipeline itself, drawn from the same metrics `/metrics` serves.
//!
//! The router does not know the metrics exporter: it is given a closure returning the Prometheus text, and an
//! [`OpsSampler`] task reads it every `interval` into a bounded in-memory history ([`OpsSampler::new`]'s
//! `samples_max`), from which rates over time are drawn. Report runs and failures come from the runs' records in the
//! warehouse (`run.json`, as `freshet reports history` reads them).
//!
//! Panels: ingest rate (records/s appended to each stream), iterator age per stream/consumer/shard, delivery
//! freshness (seconds since each delivery's last flush), error-table growth (error rows per delivery, cumulative),
//! and report runs by status. Every panel goes through the same [`panel_data`] as report panels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::config::{ChartKind, DashboardConfig, PanelConfig};
use super::data::{Latest, PanelData, ReportOutput, panel_data};
use crate::outputs::OutputStore;
use crate::run::RunRecord;

/// The ops dashboard's name (names starting with `_` are reserved for built-in dashboards).
pub const OPS_NAME: &str = "_ops";

/// Returns the current Prometheus text exposition (what `/metrics` serves).
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// One scrape: metric name → label set (`k="v",…` as written) → value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    pub values: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Parse the Prometheus text format (comments skipped; unparsable lines ignored: the source is our own exporter).
pub fn parse_prometheus(text: &str, at_ms: i64) -> Sample {
    let mut values: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('}') {
            Some(end) if line[..end].contains('{') => (&line[..=end], &line[end + 1..]),
            _ => match line.split_once(' ') {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        values
            .entry(name.to_string())
            .or_default()
            .insert(labels.to_string(), value);
    }
    Sample { at_ms, values }
}

/// `stream="telemetry",shard="shardId-000000000001"` → `telemetry/shardId-000000000001`.
fn label_values(labels: &str) -> String {
    if labels.is_empty() {
        return "all".to_string();
    }
    labels
        .split("\",")
        .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.trim_matches('"').to_string()))
        .collect::<Vec<_>>()
        .join("/")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Keeps a bounded history of metric samples for the ops dashboard.
#[derive(Clone)]
pub struct OpsSampler {
    inner: Arc<Inner>,
}

struct Inner {
    source: MetricsSource,
    history: Mutex<VecDeque<Sample>>,
    samples_max: usize,
    version: AtomicU64,
    outputs: OutputStore,
    reports: Vec<String>,
    /// Each report's runs as last read: run id → record.
    runs: Mutex<BTreeMap<String, HashMap<String, RunRecord>>>,
}

impl std::fmt::Debug for OpsSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsSampler")
            .field("samples_max", &self.inner.samples_max)
            .finish()
    }
}

impl OpsSampler {
    /// A sampler of `source`, keeping the newest `samples_max` samples; report runs are read for `reports`.
    pub fn new(
        source: MetricsSource,
        outputs: impl Into<OutputStore>,
        reports: Vec<String>,
        samples_max: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                history: Mutex::new(VecDeque::new()),
                samples_max: samples_max.max(2),
                version: AtomicU64::new(0),
                outputs: outputs.into(),
                reports,
                runs: Mutex::default(),
            }),
        }
    }

    /// Take one sample now.
    pub fn sample(&self) {
        let text = (self.inner.source)();
        let sample = parse_prometheus(&text, now_ms());
        let mut history = self.inner.history.lock().unwrap();
        history.push_back(sample);
        while history.len() > self.inner.samples_max {
            history.pop_front();
        }
        self.inner.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Read the report runs again (what the `report_runs` panel draws).
    pub async fn refresh_runs(&self) {
        for report in &self.inner.reports {
            let known = self
                .inner
                .runs
                .lock()
                .unwrap()
                .get(report)
                .cloned()
                .unwrap_or_default();
            match self.inner.outputs.history_since(report, &known).await {
                Ok(runs) => {
                    let runs = runs.into_iter().map(|r| (r.run_id.clone(), r)).collect();
                    self.inner.runs.lock().unwrap().insert(report.clone(), runs);
                }
                Err(e) => tracing::warn!(report, error = %e, "reading report runs for the ops dashboard"),
            }
        }
    }

    /// Sample (and read the report runs) every `interval` until `cancel`.
    pub fn spawn(&self, interval: Duration, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        me.sample();
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = me.refresh_runs() => {}
                        }
                    }
                }
            }
        })
    }

    /// Changes with every sample (what the page's version poll compares).
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Relaxed)
    }

    /// The ops dashboard's panels.
    pub fn dashboard(&self) -> DashboardConfig {
        let panel = |name: &str, title: &str, chart, x: &str, y: &str, series: Option<&str>, unit: &str| {
            PanelConfig {
                name: name.into(),
                title: title.into(),
                report: OPS_NAME.into(),
                chart,
                x: x.into(),
                y: vec![y.into()],
                series: series.map(Into::into),
                unit: Some(unit.into()),
            }
        };
        DashboardConfig {
            name: OPS_NAME.into(),
            title: "Pipeline operations".into(),
            panels: vec![
                panel(
                    "ingest_rate",
                    "Ingest rate per stream",
                    ChartKind::Line,
                    "time",
                    "value",
                    Some("series"),
                    "records/s",
                ),
                panel(
                    "iterator_age",
                    "Iterator age per shard",
                    ChartKind::Line,
                    "time",
                    "value",
                    Some("series"),
                    "ms",
                ),
                panel(
                    "delivery_freshness",
                    "Delivery freshness (since last flush)",
                    ChartKind::Line,
                    "time",
                    "value",
                    Some("series"),
                    "s",
                ),
                panel(
                    "error_rows",
                    "Error-table rows per delivery",
                    ChartKind::Area,
                    "time",
                    "value",
                    Some("series"),
                    "rows",
                ),
                panel(
                    "report_runs",
                    "Report runs by status",
                    ChartKind::Bar,
                    "report",
                    "runs",
                    Some("status"),
                    "runs",
                ),
            ],
        }
    }

    /// The data of one ops panel now.
    pub fn panel_data(&self, panel: &PanelConfig) -> PanelData {
        let output = match panel.name.as_str() {
            "ingest_rate" => self.rates("freshet_store_incoming_records_total"),
            "iterator_age" => self.gauge("freshet_store_iterator_age_ms", |_, v| v),
            "delivery_freshness" => self.gauge("freshet_delivery_last_flush_ms", |at, v| {
                ((at as f64 - v) / 1000.0).max(0.0)
            }),
            "error_rows" => self.gauge("freshet_delivery_error_rows_total", |_, v| v),
            "report_runs" => self.report_runs(),
            other => {
                return PanelData::Problem {
                    message: format!("no ops panel {other:?}"),
                };
            }
        };
        panel_data(panel, &Latest::Output(Arc::new(output)))
    }

    fn time_series(&self, rows: Vec<Map<String, Value>>) -> ReportOutput {
        ReportOutput {
            run_id: self.version().to_string(),
            columns: vec![
                ("time".into(), "Timestamp(ms, \"UTC\")".into()),
                ("series".into(), "Utf8".into()),
                ("value".into(), "Float64".into()),
            ],
            rows,
        }
    }

    fn row(at_ms: i64, series: String, value: f64) -> Map<String, Value> {
        let Value::Object(m) = json!({"time": time_text(at_ms), "series": series, "value": value}) else {
            unreachable!("a JSON object literal")
        };
        m
    }

    /// Per second increase of a counter between consecutive samples (a reset counts from zero).
    fn rates(&self, metric: &str) -> ReportOutput {
        let history = self.inner.history.lock().unwrap();
        let mut rows = Vec::new();
        for pair in history.iter().collect::<Vec<_>>().windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let seconds = (b.at_ms - a.at_ms) as f64 / 1000.0;
            if seconds <= 0.0 {
                continue;
            }
            for (labels, v) in b.values.get(metric).into_iter().flatten() {
                let before = a
                    .values
                    .get(metric)
                    .and_then(|m| m.get(labels))
                    .copied()
                    .unwrap_or(0.0);
                let delta = if *v >= before { v - before } else { *v };
                rows.push(Self::row(b.at_ms, label_values(labels), delta / seconds));
            }
        }
        self.time_series(rows)
    }

    fn gauge(&self, metric: &str, f: impl Fn(i64, f64) -> f64) -> ReportOutput {
        let history = self.inner.history.lock().unwrap();
        let rows = history
            .iter()
            .flat_map(|s| {
                s.values
                    .get(metric)
                    .into_iter()
                    .flatten()
                    .map(|(labels, v)| Self::row(s.at_ms, label_values(labels), f(s.at_ms, *v)))
            })
            .collect();
        self.time_series(rows)
    }

    fn report_runs(&self) -> ReportOutput {
        let mut rows = Vec::new();
        let runs = self.inner.runs.lock().unwrap();
        for report in &self.inner.reports {
            let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
            for r in runs.get(report).into_iter().flat_map(HashMap::values) {
                let status = serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                *by_status.entry(status).or_default() += 1;
            }
            for (status, runs) in by_status {
                let Value::Object(m) = json!({"report": report, "status": status, "runs": runs}) else {
                    unreachable!("a JSON object literal")
                };
                rows.push(m);
            }
        }
        ReportOutput {
            run_id: self.version().to_string(),
            columns: vec![
                ("report".into(), "Utf8".into()),
                ("status".into(), "Utf8".into()),
                ("runs".into(), "UInt64".into()),
            ],
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_read() {
        let s = parse_prometheus(
            "# TYPE x counter\nx{stream=\"t\",shard=\"s1\"} 12\nx{stream=\"t\",shard=\"s2\"} 3.5\nup 1\n",
            5,
        );
        assert_eq!(s.values["x"]["stream=\"t\",shard=\"s1\""], 12.0);
        assert_eq!(s.values["up"][""], 1.0);
        assert_eq!(label_values("stream=\"t\",shard=\"s2\""), "t/s2");
    }

    #[test]
    fn rates_come_from_consecutive_samples_and_history_is_bounded() {
        let n = Arc::new(AtomicU64::new(0));
        let source: MetricsSource = {
            let n = n.clone();
            Arc::new(move || {
                format!(
                    "freshet_store_incoming_records_total{{stream=\"t\"}} {}\n",
                    n.load(Ordering::Relaxed)
                )
            })
        };
        let ops = OpsSampler::new(source, std::path::Path::new("/nonexistent"), vec![], 3);
        for i in 0..5 {
            n.store(i * 100, Ordering::Relaxed);
            ops.sample();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(ops.inner.history.lock().unwrap().len(), 3);
        let d = ops.dashboard();
        let PanelData::Chart { series, .. } = ops.panel_data(d.panel("ingest_rate").unwrap()) else {
            panic!("a chart")
        };
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].points.len(), 2);
        assert!(series[0].points.iter().all(|(_, r)| *r > 0.0));
    }
}
