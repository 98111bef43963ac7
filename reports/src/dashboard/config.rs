//! Dashboard definitions (`[[dashboards]]` in freshet.toml): a dashboard is a titled list of panels; a panel draws
//! columns of one report's latest output as a line, bar, area, table or single-value chart.
//!
//! These types are a config contract: fields are added only with serde defaults, never renamed.

use serde::{Deserialize, Serialize};

use crate::config::ReportConfig;

/// The most panels one dashboard may have, and the most `y` columns one panel may draw.
pub const PANELS_MAX: usize = 32;
pub const Y_COLUMNS_MAX: usize = 16;

/// One dashboard, served at `/dashboards/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// `[a-z0-9_-]`, 1–64 characters, not starting with `_` (names starting with `_` are built in, like `_ops`).
    pub name: String,
    /// Shown as the page heading; the name when empty.
    #[serde(default)]
    pub title: String,
    pub panels: Vec<PanelConfig>,
}

/// One chart of a dashboard, over the latest completed run of one report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelConfig {
    /// `[a-z0-9_-]`, 1–64 characters, unique within its dashboard: `/dashboards/<dashboard>/<panel>.png`.
    pub name: String,
    /// Shown above the chart; the name when empty.
    #[serde(default)]
    pub title: String,
    /// The report whose latest output the panel draws.
    pub report: String,
    pub chart: ChartKind,
    /// The x column: timestamps (RFC 3339) give a time axis, numbers a numeric axis, anything else categories.
    /// For `table`, the first column shown; for `single_value`, the column whose greatest value picks the rows.
    pub x: String,
    /// One or more value columns (`y = "count"` or `y = ["avg_temp", "max_temp"]`); each is one series, or one per
    /// distinct `series` value.
    #[serde(deserialize_with = "one_or_many")]
    pub y: Vec<String>,
    /// A column whose distinct values split each `y` into several series (e.g. `device_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// Unit of the y values, shown on the axis and beside single values (e.g. `°C`, `msg/min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// How a panel draws its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    Line,
    Bar,
    Area,
    Table,
    SingleValue,
}

impl ChartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Line => "line",
            Self::Bar => "bar",
            Self::Area => "area",
            Self::Table => "table",
            Self::SingleValue => "single_value",
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Every problem of a set of dashboards, listed at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid dashboard configuration: {}", .0.join("; "))]
pub struct DashboardConfigError(pub Vec<String>);

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl DashboardConfig {
    /// The default pipeline's dashboard (DESIGN.md): `telemetry`, over the report `telemetry_minutely`.
    pub fn telemetry() -> Self {
        let report = ReportConfig::telemetry_minutely().name;
        let panel =
            |name: &str, title: &str, chart, x: &str, y: &[&str], series: Option<&str>, unit: &str| {
                PanelConfig {
                    name: name.into(),
                    title: title.into(),
                    report: report.clone(),
                    chart,
                    x: x.into(),
                    y: y.iter().map(|s| s.to_string()).collect(),
                    series: series.map(Into::into),
                    unit: (!unit.is_empty()).then(|| unit.to_string()),
                }
            };
        Self {
            name: "telemetry".into(),
            title: "Telemetry".into(),
            panels: vec![
                panel(
                    "messages",
                    "Messages per minute",
                    ChartKind::Line,
                    "minute",
                    &["count"],
                    Some("device_id"),
                    "msg/min",
                ),
                panel(
                    "temperature",
                    "Average temperature",
                    ChartKind::Line,
                    "minute",
                    &["avg_temp"],
                    Some("device_id"),
                    "°C",
                ),
                panel(
                    "humidity",
                    "Average humidity",
                    ChartKind::Area,
                    "minute",
                    &["avg_humidity"],
                    Some("device_id"),
                    "%",
                ),
                panel(
                    "battery",
                    "Lowest battery per minute",
                    ChartKind::Line,
                    "minute",
                    &["min_battery"],
                    Some("device_id"),
                    "%",
                ),
                panel(
                    "messages_per_device",
                    "Messages per device (all minutes)",
                    ChartKind::Bar,
                    "device_id",
                    &["count"],
                    None,
                    "msg",
                ),
                panel(
                    "last_minute",
                    "Messages in the latest minute",
                    ChartKind::SingleValue,
                    "minute",
                    &["count"],
                    None,
                    "msg",
                ),
                panel(
                    "latest",
                    "Per device and minute",
                    ChartKind::Table,
                    "minute",
                    &["count", "avg_temp", "avg_humidity", "min_battery"],
                    Some("device_id"),
                    "",
                ),
            ],
        }
    }

    /// The heading shown on the page.
    pub fn display_title(&self) -> &str {
        if self.title.is_empty() {
            &self.name
        } else {
            &self.title
        }
    }

    /// The panel called `name`.
    pub fn panel(&self, name: &str) -> Option<&PanelConfig> {
        self.panels.iter().find(|p| p.name == name)
    }

    fn problems(&self, reports: &[ReportConfig]) -> Vec<String> {
        let mut problems = Vec::new();
        let name = &self.name;
        if !name_ok(name) || name.starts_with('_') {
            problems.push(format!(
                "dashboard name {name:?} is not 1-64 characters of [a-z0-9_-] not starting with '_'"
            ));
        }
        if self.title.chars().count() > 200 {
            problems.push(format!(
                "dashboard {name}: the title is longer than 200 characters"
            ));
        }
        if self.panels.is_empty() {
            problems.push(format!("dashboard {name}: no panels"));
        }
        if self.panels.len() > PANELS_MAX {
            problems.push(format!("dashboard {name}: more than {PANELS_MAX} panels"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.panels {
            let panel = &p.name;
            let at = format!("dashboard {name}, panel {panel:?}");
            if !name_ok(panel) {
                problems.push(format!("{at}: the name is not 1-64 characters of [a-z0-9_-]"));
            }
            if !seen.insert(panel.as_str()) {
                problems.push(format!("dashboard {name}: two panels are named {panel:?}"));
            }
            if p.title.chars().count() > 200 {
                problems.push(format!("{at}: the title is longer than 200 characters"));
            }
            if !reports.is_empty() && !reports.iter().any(|r| r.name == p.report) {
                problems.push(format!("{at}: no report named {:?}", p.report));
            }
            if p.x.is_empty() {
                problems.push(format!("{at}: the x column is empty"));
            }
            if p.y.is_empty() {
                problems.push(format!("{at}: no y columns"));
            }
            if p.y.len() > Y_COLUMNS_MAX {
                problems.push(format!("{at}: more than {Y_COLUMNS_MAX} y columns"));
            }
            if p.y.iter().any(String::is_empty) {
                problems.push(format!("{at}: an empty y column"));
            }
            if p.chart == ChartKind::SingleValue && p.y.len() > 1 {
                problems.push(format!("{at}: a single_value panel shows one y column"));
            }
            if let Some(s) = &p.series {
                if s.is_empty() {
                    problems.push(format!("{at}: the series column is empty"));
                }
                if s == &p.x || p.y.contains(s) {
                    problems.push(format!("{at}: the series column {s:?} is also x or y"));
                }
            }
            if p.unit.as_ref().is_some_and(|u| u.chars().count() > 32) {
                problems.push(format!("{at}: the unit is longer than 32 characters"));
            }
        }
        problems
    }
}

/// Check a set of dashboards against the reports they draw (pass `&[]` to skip the report check); every problem is
/// listed in one error.
pub fn validate(
    dashboards: &[DashboardConfig],
    reports: &[ReportConfig],
) -> Result<(), DashboardConfigError> {
    let mut problems: Vec<String> = dashboards.iter().flat_map(|d| d.problems(reports)).collect();
    let mut names: Vec<&str> = dashboards.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        if pair[0] == pair[1] {
            problems.push(format!("two dashboards are named {:?}", pair[0]));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DashboardConfigError(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dashboard_is_valid_and_round_trips() {
        let d = DashboardConfig::telemetry();
        validate(std::slice::from_ref(&d), &[ReportConfig::telemetry_minutely()]).unwrap();
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DashboardConfig>(&text).unwrap(), d);
    }

    #[test]
    fn y_is_one_column_or_a_list() {
        let one: PanelConfig = serde_json::from_str(
            r#"{"name":"a","report":"r","chart":"single_value","x":"minute","y":"count"}"#,
        )
        .unwrap();
        assert_eq!(one.y, ["count"]);
        let many: PanelConfig = serde_json::from_str(
            r#"{"name":"a","report":"r","chart":"line","x":"m","y":["a","b"],"unit":"%"}"#,
        )
        .unwrap();
        assert_eq!(many.y, ["a", "b"]);
        assert_eq!(many.chart, ChartKind::Line);
        assert!(
            serde_json::from_str::<PanelConfig>(r#"{"name":"a","report":"r","chart":"pie","x":"m","y":"c"}"#)
                .is_err()
        );
    }

    #[test]
    fn all_problems_are_listed_at_once() {
        let mut bad = DashboardConfig::telemetry();
        bad.name = "_Bad".into();
        bad.panels[0].y.clear();
        bad.panels[1].report = "nope".into();
        bad.panels[2].series = Some("avg_humidity".into());
        bad.panels[3].name = bad.panels[4].name.clone();
        bad.panels[5].y.push("x".into());
        let e = validate(&[bad.clone(), bad], &[ReportConfig::telemetry_minutely()])
            .unwrap_err()
            .to_string();
        for needle in [
            "not starting with '_'",
            "no y columns",
            "no report named \"nope\"",
            "also x or y",
            "two panels are named",
            "single_value panel",
            "two dashboards",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
