//! Startup validation of a set of reports against the query engine: every problem at once.
//!
//! On top of [`crate::problems`] (names, duplicates, triggers, schedules, outputs), each report's SQL is planned,
//! not run, with `EXPLAIN` over the warehouse as it is now, placeholders reading the latest versions:
//! - a syntax error is reported with its line and column in the report's own SQL (a `{{table}}` placeholder is
//!   replaced by a quoted name padded to the same length, so positions do not move);
//! - a statement that is not a read-only query is `forbidden_statement`;
//! - unknown columns and other planning mistakes are reported for tables that exist;
//! - a table that does not exist is a problem unless it is in `expected_tables` (tables a declared delivery will
//!   create): then the SQL cannot be planned yet and only its syntax and statement kind are checked.

use freshet_query::{QueryEngine, QueryError};

use crate::config::{Problem, ProblemKind, ReportConfig, ReportQuery, problems};
use crate::run::minutely_sql;

/// Every problem of `reports`, with their SQL checked against `engine`. `expected_tables` are tables that may be
/// missing from the warehouse now because a declared delivery creates them. Empty means the set is good.
pub async fn check_reports(
    reports: &[ReportConfig],
    engine: &QueryEngine,
    expected_tables: &[String],
) -> Vec<Problem> {
    let mut found = problems(reports);
    let existing = match engine.warehouse().table_names() {
        Ok(names) => names,
        Err(e) => {
            // Not the reports' fault; the runtime retries reading the warehouse later.
            tracing::warn!(error = %e, "cannot list the warehouse; report SQL not checked against it");
            return found;
        }
    };
    for report in reports {
        let name = report.name.as_str();
        let mut pending = Vec::new();
        let mut tables: Vec<String> = report.trigger.tables.clone();
        for t in report.placeholder_tables() {
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        for t in &tables {
            if existing.contains(t) {
                continue;
            }
            if expected_tables.contains(t) {
                pending.push(t.clone());
            } else {
                found.push(Problem::new(
                    Some(name),
                    ProblemKind::UnknownTable,
                    format!(
                        "table {t:?} is not in the warehouse and no delivery declares it (tables: {})",
                        list(&existing)
                    ),
                ));
            }
        }
        if let Some(problem) = check_sql(report, engine, &pending).await {
            found.push(problem);
        }
    }
    found
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none yet".into()
    } else {
        names.join(", ")
    }
}

/// The report's SQL as it would read the latest versions, with placeholders replaced in place (same length).
pub(crate) fn sql_at_latest(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&rest[..start]);
        let original = &rest[start..start + 2 + end + 2];
        let quoted = format!("\"{}\"", after[..end].trim().replace('"', "\"\""));
        let pad = original.chars().count().saturating_sub(quoted.chars().count());
        out.push_str(&quoted);
        out.push_str(&" ".repeat(pad));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

async fn check_sql(report: &ReportConfig, engine: &QueryEngine, pending: &[String]) -> Option<Problem> {
    let name = Some(report.name.as_str());
    let sql = match &report.query {
        ReportQuery::Sql(sql) if sql.trim().is_empty() => return None,
        ReportQuery::Sql(sql) => sql_at_latest(sql),
        ReportQuery::MinutelyAggregates { table, key } => {
            if pending.contains(table) {
                return None;
            }
            let quoted = format!("\"{}\"", table.replace('"', "\"\""));
            let schema = match engine.sql(&format!("SELECT * FROM {quoted} LIMIT 0")).await {
                Ok(r) => r.schema,
                Err(e) => return classify(report, e, pending),
            };
            match minutely_sql(&quoted, key, &schema) {
                Ok(sql) => sql,
                Err(e) => return Some(Problem::new(name, ProblemKind::UnknownColumn, e.to_string())),
            }
        }
    };
    let error = engine.sql(&format!("EXPLAIN {sql}")).await.err()?;
    if matches!(error, QueryError::Syntax(_)) {
        // Parse the statement alone so the position is the report's own; a statement that does not parse runs
        // nothing. (It may parse alone when only the EXPLAIN prefix made it invalid, e.g. it is an EXPLAIN.)
        if let Err(e @ (QueryError::Syntax(_) | QueryError::Forbidden(_))) = engine.sql(&sql).await {
            return classify(report, e, pending);
        }
        return None;
    }
    classify(report, error, pending)
}

fn classify(report: &ReportConfig, error: QueryError, pending: &[String]) -> Option<Problem> {
    let kind = match &error {
        QueryError::Syntax(_) => ProblemKind::SqlSyntax,
        QueryError::Forbidden(_) => ProblemKind::ForbiddenStatement,
        QueryError::UnknownColumn(_) => ProblemKind::UnknownColumn,
        QueryError::UnknownTable(message) => {
            let waiting = pending
                .iter()
                .any(|t| message.contains(&format!("{t}'")) || message.contains(&format!("\"{t}\"")));
            if waiting {
                return None;
            }
            ProblemKind::UnknownTable
        }
        QueryError::Invalid(_) | QueryError::BadRequest(_) => ProblemKind::InvalidSql,
        other => {
            tracing::warn!(report = %report.name, error = %other, "report SQL could not be checked");
            return None;
        }
    };
    Some(Problem::new(Some(&report.name), kind, error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_positions() {
        let sql = "SELECT x FROM {{telemetry}} WHERE y > 1";
        let out = sql_at_latest(sql);
        assert_eq!(out, "SELECT x FROM \"telemetry\"   WHERE y > 1");
        assert_eq!(out.len(), sql.len());
        assert_eq!(sql_at_latest("{{ a }} {{b"), "\"a\"     {{b");
    }
}
