//! The data behind a panel: a report's latest output (`result.json` of the run the `latest` pointer names) turned
//! into series, table rows or a single value.
//!
//! What this module guarantees (the golden tests under `tests/golden/dashboards/` pin it):
//! - line and area: one series per `y` column, or per `y` column and distinct `series` value; points sorted by x;
//!   rows whose y is null are left out;
//! - bar: x is a category; rows with the same x and series are summed;
//! - table: the newest [`TABLE_ROWS_MAX`] rows by x (newest first), columns `x`, `series`, then `y`;
//! - single value: the sum of y over the rows with the greatest x;
//! - a report without a completed run, or with zero rows, is [`PanelData::Empty`] ("no data yet"); a missing result
//!   file, a missing column or a non-numeric y is [`PanelData::Problem`] with a message, never an error page.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use super::config::{ChartKind, PanelConfig};
use crate::outputs::OutputStore;
use crate::run::report_key;

/// Rows a table panel shows.
pub const TABLE_ROWS_MAX: usize = 20;
/// Series one panel draws; more are left out and the panel says so.
pub const SERIES_MAX: usize = 24;
/// Result files larger than this are not drawn (the panel says so).
pub const RESULT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// A result row.
pub type Row = serde_json::Map<String, Value>;

/// How x values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XKind {
    /// Timestamps, as milliseconds since the epoch (UTC).
    Time,
    Number,
    Category,
}

/// One x value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum X {
    Number(f64),
    Category(String),
}

impl X {
    pub fn as_f64(&self) -> f64 {
        match self {
            Self::Number(n) => *n,
            Self::Category(_) => 0.0,
        }
    }
}

/// One drawn series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The legend label.
    pub name: String,
    pub y: String,
    /// The value of the `series` column, if the panel has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    pub points: Vec<(X, f64)>,
}

/// What one panel shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PanelData {
    Chart {
        x_kind: XKind,
        /// For bar charts: the categories in drawing order.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        categories: Vec<String>,
        series: Vec<Series>,
        /// Series beyond [`SERIES_MAX`] that were left out.
        #[serde(skip_serializing_if = "is_zero")]
        series_dropped: usize,
    },
    Table {
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
        rows_total: usize,
    },
    SingleValue {
        value: f64,
        at: Value,
    },
    /// No completed run yet, or a run with zero rows.
    Empty {
        message: String,
    },
    /// The output is missing or not of the shape the panel needs.
    Problem {
        message: String,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl PanelData {
    /// Series (charts), 1 (a single value), 0 otherwise: the `data-series` attribute of the panel's SVG.
    pub fn series_count(&self) -> usize {
        match self {
            Self::Chart { series, .. } => series.len(),
            Self::SingleValue { .. } => 1,
            _ => 0,
        }
    }

    /// Points over all series (charts) or rows (tables).
    pub fn point_count(&self) -> usize {
        match self {
            Self::Chart { series, .. } => series.iter().map(|s| s.points.len()).sum(),
            Self::Table { rows, .. } => rows.len(),
            Self::SingleValue { .. } => 1,
            _ => 0,
        }
    }

    pub fn state(&self) -> &'static str {
        match self {
            Self::Empty { .. } => "empty",
            Self::Problem { .. } => "problem",
            _ => "ok",
        }
    }
}

/// A report output as read from `result.json`: column names and types, and rows as JSON objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOutput {
    pub run_id: String,
    pub columns: Vec<(String, String)>,
    pub rows: Vec<serde_json::Map<String, Value>>,
}

impl ReportOutput {
    /// Parse the `/v1/sql`-shaped JSON (`{"columns":[{"name","type"}], "rows":[{...}]}`).
    pub fn from_json(run_id: &str, bytes: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Column {
            name: String,
            #[serde(rename = "type")]
            kind: String,
        }
        #[derive(serde::Deserialize)]
        struct Doc {
            columns: Vec<Column>,
            rows: Vec<serde_json::Map<String, Value>>,
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| format!("result.json is not a result: {e}"))?;
        Ok(Self {
            run_id: run_id.to_string(),
            columns: doc.columns.into_iter().map(|c| (c.name, c.kind)).collect(),
            rows: doc.rows,
        })
    }

    fn column_type(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }
}

/// Where a report's latest output stands.
#[derive(Debug, Clone)]
pub enum Latest {
    NoRun,
    Output(Arc<ReportOutput>),
    Problem(String),
}

/// Reads `latest` pointers and result files, keeping the parsed output of each report's latest run.
#[derive(Debug, Default)]
pub struct OutputCache {
    by_report: Mutex<BTreeMap<String, Arc<ReportOutput>>>,
}

impl OutputCache {
    /// The latest run id of `report`, `None` without a completed run (the version endpoint's input: one small read).
    pub async fn latest_run_id(outputs: &OutputStore, report: &str) -> Result<Option<String>, String> {
        outputs
            .latest(report)
            .await
            .map(|p| p.map(|p| p.run_id))
            .map_err(|e| e.to_string())
    }

    /// The latest output of `report`, parsed once per run.
    pub async fn latest(&self, outputs: &OutputStore, report: &str) -> Latest {
        let pointer = match outputs.latest(report).await {
            Ok(Some(p)) => p,
            Ok(None) => return Latest::NoRun,
            Err(e) => return Latest::Problem(format!("report {report}: {e}")),
        };
        if let Some(hit) = self.by_report.lock().unwrap().get(report)
            && hit.run_id == pointer.run_id
        {
            return Latest::Output(hit.clone());
        }
        let Some(rel) = pointer.outputs.iter().find(|o| o.ends_with(".json")) else {
            return Latest::Problem(format!(
                "report {report}: run {} has no JSON output (add \"json\" to its outputs)",
                pointer.run_id
            ));
        };
        let key = format!("{}/{rel}", report_key(report));
        let read = match outputs.get(&key, Some(RESULT_BYTES_MAX)).await {
            Ok(Some((bytes, _))) => ReportOutput::from_json(&pointer.run_id, &bytes),
            Ok(None) => Err("not found".to_string()),
            Err(crate::ReportError::TooLarge { bytes, .. }) => {
                Err(format!("{bytes} bytes is more than a panel draws"))
            }
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(output) => {
                let output = Arc::new(output);
                self.by_report
                    .lock()
                    .unwrap()
                    .insert(report.to_string(), output.clone());
                Latest::Output(output)
            }
            Err(e) => Latest::Problem(format!(
                "report {report}: reading {} of run {}: {e}",
                rel, pointer.run_id
            )),
        }
    }
}

fn is_time_type(t: &str) -> bool {
    t.starts_with("Timestamp") || t.starts_with("Date")
}

fn is_number_type(t: &str) -> bool {
    ["Int", "UInt", "Float", "Decimal"]
        .iter()
        .any(|p| t.starts_with(p))
}

/// A JSON value as a number: numbers, and strings holding one (large integers and decimals may come quoted).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Milliseconds since the epoch of an RFC 3339 timestamp, a date, or a number of milliseconds.
pub fn time_ms(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis() as f64)
            .ok()
            .or_else(|| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|t| t.and_utc().timestamp_millis() as f64)
            })
            .or_else(|| {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc().timestamp_millis() as f64)
            }),
        _ => None,
    }
}

fn label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// A chart series: (index of its y column, its value of the series column).
type SeriesKey = (usize, String);

/// Up to this many series, a row's series is found by comparing with each rather than through a hash index.
const LINEAR_SERIES_MAX: usize = 16;

/// How rows are ordered along x: numerically for time and number columns (rows without a value first), as text
/// otherwise.
#[derive(Clone, Debug, PartialEq)]
enum SortKey {
    Number(Option<f64>),
    Text(String),
}

impl Eq for SortKey {}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (SortKey::Number(a), SortKey::Number(b)) => a
                .unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&b.unwrap_or(f64::NEG_INFINITY)),
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            (SortKey::Number(_), SortKey::Text(_)) => std::cmp::Ordering::Less,
            (SortKey::Text(_), SortKey::Number(_)) => std::cmp::Ordering::Greater,
        }
    }
}

/// The data a panel draws from a report's output.
pub fn panel_data(panel: &PanelConfig, latest: &Latest) -> PanelData {
    let output = match latest {
        Latest::NoRun => {
            return PanelData::Empty {
                message: "no data yet".into(),
            };
        }
        Latest::Problem(message) => {
            return PanelData::Problem {
                message: message.clone(),
            };
        }
        Latest::Output(o) => o,
    };
    let mut missing: Vec<&str> = std::iter::once(&panel.x)
        .chain(panel.series.iter())
        .chain(panel.y.iter())
        .map(String::as_str)
        .filter(|c| output.column_type(c).is_none())
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        let have: Vec<&str> = output.columns.iter().map(|(n, _)| n.as_str()).collect();
        return PanelData::Problem {
            message: format!(
                "report {} has no column {} (columns: {})",
                panel.report,
                missing
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                have.join(", ")
            ),
        };
    }
    if panel.chart != ChartKind::Table {
        let not_numeric: Vec<&str> = panel
            .y
            .iter()
            .map(String::as_str)
            .filter(|y| !is_number_type(output.column_type(y).unwrap_or_default()))
            .collect();
        if !not_numeric.is_empty() {
            return PanelData::Problem {
                message: format!(
                    "report {}: y column {} is not numeric",
                    panel.report,
                    not_numeric.join(", ")
                ),
            };
        }
    }
    if output.rows.is_empty() {
        return PanelData::Empty {
            message: "no data yet".into(),
        };
    }
    let x_type = output.column_type(&panel.x).unwrap_or_default();
    let x_kind = if panel.chart == ChartKind::Bar {
        XKind::Category
    } else if is_time_type(x_type) {
        XKind::Time
    } else if is_number_type(x_type) {
        XKind::Number
    } else {
        XKind::Category
    };
    // Sort key of x for every chart kind (times and numbers numerically, others as text), read once per row;
    // the numeric key is also the point's x on time and number axes.
    let numeric_x = is_time_type(x_type) || is_number_type(x_type);
    let x_value = |row: &Row| -> Option<f64> {
        let v = row.get(&panel.x).unwrap_or(&Value::Null);
        if is_time_type(x_type) {
            time_ms(v)
        } else {
            number(v)
        }
    };
    let mut rows: Vec<(&Row, SortKey)> = output
        .rows
        .iter()
        .map(|r| {
            let key = if numeric_x {
                SortKey::Number(x_value(r))
            } else {
                SortKey::Text(label(r.get(&panel.x).unwrap_or(&Value::Null)))
            };
            (r, key)
        })
        .collect();
    rows.sort_by(|a, b| a.1.cmp(&b.1));

    match panel.chart {
        ChartKind::Table => {
            let mut columns = vec![panel.x.clone()];
            columns.extend(panel.series.iter().cloned());
            columns.extend(
                panel
                    .y
                    .iter()
                    .filter(|y| !columns.contains(y))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            let rows_out = rows
                .iter()
                .rev()
                .take(TABLE_ROWS_MAX)
                .map(|(r, _)| {
                    columns
                        .iter()
                        .map(|c| r.get(c).cloned().unwrap_or(Value::Null))
                        .collect()
                })
                .collect();
            PanelData::Table {
                columns,
                rows: rows_out,
                rows_total: rows.len(),
            }
        }
        ChartKind::SingleValue => {
            let Some(last) = rows.last().map(|(_, k)| k.clone()) else {
                return PanelData::Empty {
                    message: "no data yet".into(),
                };
            };
            let at_rows: Vec<_> = rows.iter().filter(|(_, k)| *k == last).collect();
            let y = &panel.y[0];
            let value = at_rows
                .iter()
                .filter_map(|(r, _)| r.get(y).and_then(number))
                .sum();
            PanelData::SingleValue {
                value,
                at: at_rows[0].0.get(&panel.x).cloned().unwrap_or(Value::Null),
            }
        }
        ChartKind::Line | ChartKind::Area | ChartKind::Bar => {
            // Series keyed by (y index, series value): ordered by y column, then series value. Rows are grouped
            // through a hash index on borrowed series values; the order is made once at the end.
            let mut index: HashMap<(usize, Cow<'_, str>), usize> = HashMap::new();
            let mut grouped: Vec<(SeriesKey, Vec<(X, f64)>)> = Vec::new();
            let mut categories: Vec<String> = Vec::new();
            let mut seen_categories: HashSet<String> = HashSet::new();
            // Bar charts: where (y index, series value, category) sits in its series, to sum in O(1).
            let mut bar_at: HashMap<(usize, String, String), usize> = HashMap::new();
            for (row, key) in &rows {
                let split: Cow<'_, str> = match &panel.series {
                    Some(s) => match row.get(s) {
                        Some(Value::String(v)) => Cow::Borrowed(v.as_str()),
                        other => Cow::Owned(label(other.unwrap_or(&Value::Null))),
                    },
                    None => Cow::Borrowed(""),
                };
                let x = match (x_kind, key) {
                    (XKind::Time | XKind::Number, SortKey::Number(Some(n))) => X::Number(*n),
                    (XKind::Time | XKind::Number, _) => continue,
                    (XKind::Category, _) => X::Category(label(row.get(&panel.x).unwrap_or(&Value::Null))),
                };
                if let X::Category(c) = &x
                    && seen_categories.insert(c.clone())
                {
                    categories.push(c.clone());
                }
                for (i, y) in panel.y.iter().enumerate() {
                    let Some(v) = row.get(y).and_then(number) else {
                        continue;
                    };
                    // A few series (the usual case) are found by comparing with each, which is cheaper than
                    // hashing the series value of every row; the index answers when there are many.
                    let found = if grouped.len() <= LINEAR_SERIES_MAX {
                        grouped
                            .iter()
                            .position(|((gi, gs), _)| *gi == i && gs.as_str() == split.as_ref())
                    } else {
                        index.get(&(i, split.clone())).copied()
                    };
                    let at = match found {
                        Some(at) => at,
                        None => {
                            grouped.push(((i, split.to_string()), Vec::new()));
                            index.insert((i, split.clone()), grouped.len() - 1);
                            grouped.len() - 1
                        }
                    };
                    let points = &mut grouped[at].1;
                    if panel.chart == ChartKind::Bar
                        && let X::Category(c) = &x
                    {
                        match bar_at.entry((i, split.to_string(), c.clone())) {
                            std::collections::hash_map::Entry::Occupied(at) => points[*at.get()].1 += v,
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                slot.insert(points.len());
                                points.push((x.clone(), v));
                            }
                        }
                        continue;
                    }
                    points.push((x.clone(), v));
                }
            }
            grouped.sort_by(|a, b| a.0.cmp(&b.0));
            let series = grouped;
            let total = series.len();
            let series: Vec<Series> = series
                .into_iter()
                .take(SERIES_MAX)
                .map(|((i, split), points)| {
                    let y = panel.y[i].clone();
                    let name = match (&panel.series, panel.y.len()) {
                        (None, _) => y.clone(),
                        (Some(_), 1) => split.clone(),
                        (Some(_), _) => format!("{split} {y}"),
                    };
                    Series {
                        name,
                        y,
                        series: panel.series.as_ref().map(|_| split),
                        points,
                    }
                })
                .collect();
            if panel.chart != ChartKind::Bar {
                categories.clear();
            }
            PanelData::Chart {
                x_kind,
                categories,
                series_dropped: total - series.len(),
                series,
            }
        }
    }
}
