//! Report definitions: name + query + trigger + outputs (serde), and the default pipeline's `telemetry_minutely`.
//!
//! A report's SQL names the tables it reads as `{{table}}`; a run replaces each with `"table@v<N>"`, the version the
//! run is keyed by, so a rerun of the same key reads the same data. Tables named without braces are read at their
//! latest version.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ReportError, Result};

/// One report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportConfig {
    /// `[a-z0-9_-]`, 1–64 characters: it names the report's directory under `<warehouse>/reports/`.
    pub name: String,
    pub query: ReportQuery,
    pub trigger: Trigger,
    /// Result files written by every run (default: all three).
    #[serde(default = "OutputFormat::all")]
    pub outputs: Vec<OutputFormat>,
    /// Attempts of one run before it is recorded as failed (default 5); between attempts the wait doubles from
    /// `retry_backoff_ms` (default 200 ms) up to 10 s.
    #[serde(default = "default_attempts")]
    pub attempts_max: u32,
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
}

fn default_attempts() -> u32 {
    5
}

fn default_backoff_ms() -> u64 {
    200
}

/// What a report computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportQuery {
    /// SQL with `{{table}}` placeholders for the versions a run reads.
    Sql(String),
    /// Per `key` and minute of event time: `count`, and `avg_/min_/max_<field>` of every numeric column of `table`
    /// except lineage columns (`_*`), `event_date`, `ts` and the key. Built at run time from the schema of the
    /// version read, so new fields appear in the next run.
    MinutelyAggregates { table: String, key: String },
}

/// When a report runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// A commit of any of these tables runs the report.
    pub tables: Vec<String>,
    /// Not supported yet; must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// A result file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Parquet,
    Csv,
    Json,
}

impl OutputFormat {
    pub fn all() -> Vec<Self> {
        vec![Self::Parquet, Self::Csv, Self::Json]
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }

    pub(crate) fn query_format(self) -> freshet_query::Format {
        match self {
            Self::Parquet => freshet_query::Format::Parquet,
            Self::Csv => freshet_query::Format::Csv,
            Self::Json => freshet_query::Format::Json,
        }
    }
}

impl ReportConfig {
    /// The default pipeline's report (DESIGN.md): per device and minute over `telemetry`, run on its commits.
    pub fn telemetry_minutely() -> Self {
        Self {
            name: "telemetry_minutely".into(),
            query: ReportQuery::MinutelyAggregates {
                table: "telemetry".into(),
                key: "device_id".into(),
            },
            trigger: Trigger {
                tables: vec!["telemetry".into()],
                schedule: None,
            },
            outputs: OutputFormat::all(),
            attempts_max: default_attempts(),
            retry_backoff_ms: default_backoff_ms(),
        }
    }

    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .retry_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
        Duration::from_millis(ms.min(10_000))
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        let table_ok =
            |t: &str| !t.is_empty() && !t.starts_with('.') && !t.contains(['@', '/', '\\', '"', '{', '}']);
        let name = &self.name;
        if !name_ok(name) {
            problems.push(format!(
                "report name {name:?} is not 1-64 characters of [a-z0-9_-]"
            ));
        }
        if self.trigger.tables.is_empty() {
            problems.push(format!("report {name}: the trigger lists no tables"));
        }
        for t in &self.trigger.tables {
            if !table_ok(t) {
                problems.push(format!("report {name}: {t:?} is not a table name"));
            }
        }
        if self.trigger.schedule.is_some() {
            problems.push(format!("report {name}: schedules are not supported yet"));
        }
        if self.outputs.is_empty() {
            problems.push(format!("report {name}: no outputs"));
        }
        if self.attempts_max == 0 || self.attempts_max > 100 {
            problems.push(format!("report {name}: attempts_max must be 1-100"));
        }
        match &self.query {
            ReportQuery::Sql(sql) if sql.trim().is_empty() => {
                problems.push(format!("report {name}: the SQL is empty"));
            }
            ReportQuery::Sql(_) => {}
            ReportQuery::MinutelyAggregates { table, key } => {
                if !table_ok(table) {
                    problems.push(format!("report {name}: {table:?} is not a table name"));
                }
                if key.is_empty() {
                    problems.push(format!("report {name}: the key column is empty"));
                }
            }
        }
        problems
    }
}

/// Check a set of reports; every problem is listed in one error.
pub fn validate(reports: &[ReportConfig]) -> Result<()> {
    let mut problems: Vec<String> = reports.iter().flat_map(ReportConfig::problems).collect();
    let mut names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        if pair[0] == pair[1] {
            problems.push(format!("two reports are named {:?}", pair[0]));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ReportError::Config(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_report_is_valid_and_round_trips() {
        let r = ReportConfig::telemetry_minutely();
        validate(std::slice::from_ref(&r)).unwrap();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ReportConfig>(&text).unwrap(), r);
    }

    #[test]
    fn all_problems_are_listed_at_once() {
        let mut bad = ReportConfig::telemetry_minutely();
        bad.name = "Bad Name".into();
        bad.trigger.tables.clear();
        bad.outputs.clear();
        let e = validate(&[bad.clone(), bad]).unwrap_err().to_string();
        for needle in ["not 1-64", "no tables", "no outputs", "two reports"] {
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = ReportConfig::telemetry_minutely();
        assert_eq!(r.backoff(1), Duration::from_millis(200));
        assert_eq!(r.backoff(2), Duration::from_millis(400));
        assert_eq!(r.backoff(30), Duration::from_secs(10));
    }
}
