//! Report definitions: name + query + trigger + outputs (serde), and the default pipeline's `telemetry_minutely`.
//!
//! A report's SQL names the tables it reads as `{{table}}`; a run replaces each with `"table@v<N>"`, the version the
//! run is keyed by, so a rerun of the same key reads the same data. Tables named without braces are read at their
//! latest version.
//!
//! In TOML (`[[reports]]` of freshet.toml, read by [`reports_from_toml`]):
//!
//! ```toml
//! [[reports]]
//! name = "hot_devices"
//! sql = "SELECT device_id, max(temp) AS t FROM {{telemetry}} GROUP BY 1"
//! trigger = { tables = ["telemetry"], schedule = "rate(15 minutes)" }
//! outputs = ["parquet", "json"]      # default: parquet, csv, json
//! attempts_max = 5                   # default 5
//! retry_backoff_ms = 200             # default 200
//! ```
//!
//! `minutely_aggregates = { table = "telemetry", key = "device_id" }` replaces `sql` for the built-in per-minute
//! report. [`validate`] checks definitions alone; [`crate::check_reports`] also plans every SQL against the engine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ReportError, Result};
use crate::schedule::Schedule;

/// One report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportConfig {
    /// `[a-z0-9_-]`, 1–64 characters: it names the report's directory under `<warehouse>/reports/`.
    pub name: String,
    /// `sql = "..."` or `minutely_aggregates = { table, key }` beside the other keys.
    #[serde(flatten)]
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

/// When a report runs: on commits of `tables`, on `schedule`, or both (at least one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// A commit of any of these tables runs the report, keyed by the versions read (`telemetry@v3`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// `rate(5 minutes)` or `cron(0 8 * * ? *)` (EventBridge syntax, UTC; see `schedule.rs`); each slot runs
    /// once, keyed by the slot (`schedule@20261122T0800Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// What is wrong with a report definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The `[[reports]]` section cannot be read (TOML or a field of the wrong type or name).
    Syntax,
    InvalidName,
    DuplicateName,
    /// Neither trigger tables nor a schedule.
    EmptyTrigger,
    InvalidSchedule,
    InvalidTable,
    /// A table the report reads neither exists nor is produced by a declared delivery.
    UnknownTable,
    UnknownColumn,
    /// The SQL does not parse (the message has the line and column).
    SqlSyntax,
    /// The SQL is not a read-only query.
    ForbiddenStatement,
    /// Any other mistake found planning the SQL (types, functions), or empty SQL.
    InvalidSql,
    InvalidOutputs,
    InvalidAttempts,
}

/// One problem of one report (or of the set, for duplicate names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The report's name as written (`None` when the section itself is unreadable).
    pub report: Option<String>,
    pub kind: ProblemKind,
    pub message: String,
}

impl Problem {
    pub fn new(report: Option<&str>, kind: ProblemKind, message: impl Into<String>) -> Self {
        Self {
            report: report.map(str::to_string),
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.report {
            Some(r) => write!(f, "report {r}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
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

    /// The parsed schedule, if any (`None` also when it does not parse: [`validate`] reports that).
    pub fn schedule(&self) -> Option<Schedule> {
        self.trigger
            .schedule
            .as_deref()
            .and_then(|s| Schedule::parse(s).ok())
    }

    /// The tables named by `{{table}}` placeholders in the SQL (or the aggregated table), in order of appearance.
    pub fn placeholder_tables(&self) -> Vec<String> {
        match &self.query {
            ReportQuery::Sql(sql) => placeholders(sql),
            ReportQuery::MinutelyAggregates { table, .. } => vec![table.clone()],
        }
    }

    /// Problems of this definition alone (no engine needed).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let name = self.name.as_str();
        let mut push = |kind, message: String| problems.push(Problem::new(Some(name), kind, message));
        if !name_ok(name) {
            push(
                ProblemKind::InvalidName,
                format!("the name {name:?} is not 1-64 characters of [a-z0-9_-]"),
            );
        }
        if self.trigger.tables.is_empty() && self.trigger.schedule.is_none() {
            push(
                ProblemKind::EmptyTrigger,
                "the trigger lists no tables and no schedule".into(),
            );
        }
        for t in &self.trigger.tables {
            if !table_ok(t) {
                push(ProblemKind::InvalidTable, format!("{t:?} is not a table name"));
            }
        }
        if let Some(schedule) = &self.trigger.schedule
            && let Err(e) = Schedule::parse(schedule)
        {
            push(ProblemKind::InvalidSchedule, e);
        }
        if self.outputs.is_empty() {
            push(ProblemKind::InvalidOutputs, "no outputs".into());
        }
        if self.attempts_max == 0 || self.attempts_max > 100 {
            push(ProblemKind::InvalidAttempts, "attempts_max must be 1-100".into());
        }
        match &self.query {
            ReportQuery::Sql(sql) if sql.trim().is_empty() => {
                push(ProblemKind::InvalidSql, "the SQL is empty".into());
            }
            ReportQuery::Sql(sql) => {
                for t in placeholders(sql) {
                    if !table_ok(&t) {
                        push(
                            ProblemKind::InvalidTable,
                            format!("{{{{{t}}}}} does not name a table"),
                        );
                    }
                }
            }
            ReportQuery::MinutelyAggregates { table, key } => {
                if !table_ok(table) {
                    push(
                        ProblemKind::InvalidTable,
                        format!("{table:?} is not a table name"),
                    );
                }
                if key.is_empty() {
                    push(ProblemKind::InvalidSql, "the key column is empty".into());
                }
            }
        }
        problems
    }
}

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn table_ok(t: &str) -> bool {
    !t.is_empty() && !t.starts_with('.') && !t.contains(['@', '/', '\\', '"', '{', '}'])
}

/// The names inside `{{...}}` in `sql`, trimmed, first appearance first.
pub(crate) fn placeholders(sql: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = sql;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim().to_string();
        if !names.contains(&name) {
            names.push(name);
        }
        rest = &after[end + 2..];
    }
    names
}

/// Every problem of a set of reports that can be found without the engine: each definition's, and duplicate names.
pub fn problems(reports: &[ReportConfig]) -> Vec<Problem> {
    let mut problems: Vec<Problem> = reports.iter().flat_map(ReportConfig::problems).collect();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for r in reports {
        *counts.entry(r.name.as_str()).or_default() += 1;
    }
    for (name, n) in counts.into_iter().filter(|(_, n)| *n > 1) {
        problems.push(Problem::new(
            Some(name),
            ProblemKind::DuplicateName,
            format!("{n} reports are named {name:?}"),
        ));
    }
    problems
}

/// Check a set of reports; every problem is listed in one error.
pub fn validate(reports: &[ReportConfig]) -> Result<()> {
    let problems = problems(reports);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ReportError::Config(problems))
    }
}

/// The keys a `[[reports]]` entry may have.
const REPORT_KEYS: [&str; 7] = [
    "name",
    "sql",
    "minutely_aggregates",
    "trigger",
    "outputs",
    "attempts_max",
    "retry_backoff_ms",
];

/// The reports of a `[[reports]]` array already parsed from TOML (`value` is the array; `None` means no reports).
/// Every entry is read even when an earlier one is bad; unknown keys are problems (a typo must not silently
/// drop a setting). Definitions are then checked with [`problems`]. Use this when freshet.toml is parsed as a
/// whole and hands over its `reports` value.
pub fn reports_from_toml_value(
    value: Option<&toml::Value>,
) -> std::result::Result<Vec<ReportConfig>, Vec<Problem>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let syntax = |report: Option<&str>, m: String| Problem::new(report, ProblemKind::Syntax, m);
    let Some(entries) = value.as_array() else {
        return Err(vec![syntax(
            None,
            "reports must be an array of tables ([[reports]])".into(),
        )]);
    };
    let mut reports = Vec::new();
    let mut found = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(table) = entry.as_table() else {
            found.push(syntax(None, format!("reports[{i}] is not a table")));
            continue;
        };
        let name = table.get("name").and_then(toml::Value::as_str);
        let label = name.map_or_else(|| format!("reports[{i}]"), str::to_string);
        let mut ok = true;
        for key in table.keys().filter(|k| !REPORT_KEYS.contains(&k.as_str())) {
            ok = false;
            found.push(syntax(
                Some(&label),
                format!("unknown key {key:?} (known: {})", REPORT_KEYS.join(", ")),
            ));
        }
        match (
            table.contains_key("sql"),
            table.contains_key("minutely_aggregates"),
        ) {
            (true, true) => {
                ok = false;
                found.push(syntax(
                    Some(&label),
                    "has both sql and minutely_aggregates; keep one".into(),
                ));
            }
            (false, false) => {
                ok = false;
                found.push(syntax(Some(&label), "has no sql".into()));
            }
            _ => {}
        }
        if !ok {
            continue;
        }
        match ReportConfig::deserialize(entry.clone()) {
            Ok(r) => reports.push(r),
            Err(e) => found.push(syntax(Some(&label), e.to_string().trim().to_string())),
        }
    }
    found.extend(problems(&reports));
    if found.is_empty() { Ok(reports) } else { Err(found) }
}

/// The reports of the `[[reports]]` section of a TOML document (other sections are ignored); every problem at once.
pub fn reports_from_toml(text: &str) -> std::result::Result<Vec<ReportConfig>, Vec<Problem>> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        vec![Problem::new(
            None,
            ProblemKind::Syntax,
            e.to_string().trim().to_string(),
        )]
    })?;
    reports_from_toml_value(doc.get("reports"))
}

/// [`reports_from_toml`] of a file; `Err(ReportError::Config)` lists every problem.
pub fn load_reports(path: &std::path::Path) -> Result<Vec<ReportConfig>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ReportError::io(format!("reading {}", path.display()), e))?;
    reports_from_toml(&text).map_err(|problems| {
        ReportError::Config(
            problems
                .into_iter()
                .map(|mut p| {
                    p.message = format!("{}: {}", path.display(), p.message);
                    p
                })
                .collect(),
        )
    })
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
        for needle in ["not 1-64", "no tables", "no outputs", "2 reports"] {
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn toml_section_loads_and_lists_every_problem() {
        let text = r#"
            [delivery]
            ignored = true

            [[reports]]
            name = "hot"
            sql = "SELECT device_id, max(temp) FROM {{telemetry}} GROUP BY 1"
            trigger = { tables = ["telemetry"], schedule = "rate(15 minutes)" }
            outputs = ["json"]

            [[reports]]
            name = "minutely"
            minutely_aggregates = { table = "telemetry", key = "device_id" }
            trigger = { schedule = "cron(0 8 * * ? *)" }
        "#;
        let reports = reports_from_toml(text).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(
            reports[0].query,
            ReportQuery::Sql("SELECT device_id, max(temp) FROM {{telemetry}} GROUP BY 1".into())
        );
        assert_eq!(reports[0].outputs, vec![OutputFormat::Json]);
        assert_eq!(reports[0].attempts_max, 5);
        assert_eq!(reports[0].placeholder_tables(), vec!["telemetry".to_string()]);
        assert!(reports[1].trigger.tables.is_empty());
        assert!(reports[1].schedule().is_some());
        assert!(reports_from_toml("x = 1").unwrap().is_empty());

        let bad = r#"
            [[reports]]
            name = "a"
            sql = "SELECT 1"
            trigger = { tables = [] }
            [[reports]]
            name = "a"
            sql = "SELECT 1"
            trigger = { schedule = "rate(5 minute)" }
            [[reports]]
            name = "b"
            sqll = "SELECT 1"
            trigger = { tables = ["t"] }
            [[reports]]
            name = "c"
            sql = "SELECT 1"
            trigger = { tables = ["t"] }
            outputs = ["xml"]
        "#;
        let problems = reports_from_toml(bad).unwrap_err();
        let kinds: Vec<(Option<&str>, ProblemKind)> =
            problems.iter().map(|p| (p.report.as_deref(), p.kind)).collect();
        for want in [
            (Some("a"), ProblemKind::EmptyTrigger),
            (Some("a"), ProblemKind::InvalidSchedule),
            (Some("a"), ProblemKind::DuplicateName),
            (Some("b"), ProblemKind::Syntax),
            (Some("c"), ProblemKind::Syntax),
        ] {
            assert!(kinds.contains(&want), "{want:?} missing from {problems:#?}");
        }
        let text = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("unknown key \"sqll\""), "{text}");
        assert!(text.contains("xml"), "{text}");
        assert!(text.contains("rate(5 minutes)"), "{text}");
        let e = reports_from_toml("[[reports]\nname=1").unwrap_err();
        assert_eq!(e[0].kind, ProblemKind::Syntax, "{e:?}");
    }

    #[test]
    fn placeholders_are_found_once_each() {
        assert_eq!(
            placeholders("SELECT * FROM {{a}} JOIN {{ b }} USING (k) UNION ALL SELECT * FROM {{a}} {{"),
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = ReportConfig::telemetry_minutely();
        assert_eq!(r.backoff(1), Duration::from_millis(200));
        assert_eq!(r.backoff(2), Duration::from_millis(400));
        assert_eq!(r.backoff(30), Duration::from_secs(10));
    }
}
