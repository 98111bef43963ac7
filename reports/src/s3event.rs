//! S3 notifications of new Delta log entries → commit events: the report handler in the shape AWS Lambda gives it
//! (an `S3Event` for `ObjectCreated` in a bucket whose notifications are filtered on `_delta_log/`).
//!
//! # Contract
//!
//! - A key `[<prefix>/]<table>/_delta_log/<20 digits>.json` is the commit of `<table>` at that version; it becomes
//!   a [`CommitEvent`] and goes to [`Reporter::handle`], exactly as a commit event read from `_freshet_events` does.
//! - Every other key (checkpoints, `_last_checkpoint`, Parquet data files, temporary files, other prefixes) and
//!   every non-`ObjectCreated` event is ignored with a log line: no run.
//! - Runs are keyed by table versions (`telemetry@v3`), so an event delivered twice, or for a version a run already
//!   covered, runs nothing a second time.
//! - When a warehouse prefix is given, keys outside it are ignored, and the table must sit directly under it.

use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::run::{CommitEvent, Reporter, RunOutcome};

/// A Delta commit named by an S3 object key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntryKey {
    pub bucket: String,
    /// The key without the table and `_delta_log/...` (empty, or ending without a slash).
    pub prefix: String,
    pub table: String,
    pub version: u64,
}

/// Why a record of an S3 event does not name a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub key: String,
    pub reason: String,
}

/// What one S3 event did.
#[derive(Debug, Default)]
pub struct S3Outcome {
    /// The commits found, in event order (duplicates kept out).
    pub commits: Vec<LogEntryKey>,
    pub runs: Vec<RunOutcome>,
    pub ignored: Vec<Ignored>,
}

/// `key` (as S3 events write it: URL-encoded, `+` for a space) as a Delta log entry, or why it is not one.
pub fn parse_log_key(bucket: &str, key: &str) -> std::result::Result<LogEntryKey, String> {
    let key = url_decode(key);
    let parts: Vec<&str> = key.split('/').collect();
    let n = parts.len();
    if n < 3 || parts[n - 2] != "_delta_log" {
        return Err("not under a table's _delta_log/".to_string());
    }
    let file = parts[n - 1];
    let digits = file
        .strip_suffix(".json")
        .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{file:?} is not a commit entry (<20 digits>.json)"))?;
    let version = digits
        .parse::<u64>()
        .map_err(|_| format!("{file:?}: version out of range"))?;
    let table = parts[n - 3];
    if table.is_empty()
        || table.starts_with('.')
        || !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!("{table:?} is not a table name"));
    }
    Ok(LogEntryKey {
        bucket: bucket.to_string(),
        prefix: parts[..n - 3].join("/"),
        table: table.to_string(),
        version,
    })
}

/// The commit a record names, or why it names none. `warehouse`: `Some((bucket, prefix))` to accept only tables
/// directly under `s3://bucket/prefix`.
pub fn commit_of(
    record: &S3EventRecord,
    warehouse: Option<(&str, &str)>,
) -> std::result::Result<LogEntryKey, Ignored> {
    let key = record.s3.object.key.clone().unwrap_or_default();
    let ignored = |reason: String| Ignored {
        key: key.clone(),
        reason,
    };
    let name = record.event_name.as_deref().unwrap_or("");
    if !name.starts_with("ObjectCreated:") {
        return Err(ignored(format!("event {name:?} is not ObjectCreated:*")));
    }
    let bucket = record.s3.bucket.name.as_deref().unwrap_or("");
    let entry = parse_log_key(bucket, &key).map_err(ignored)?;
    if let Some((want_bucket, want_prefix)) = warehouse
        && (entry.bucket != want_bucket || entry.prefix != want_prefix.trim_matches('/'))
    {
        return Err(ignored(format!(
            "outside the warehouse s3://{want_bucket}/{}",
            want_prefix.trim_matches('/')
        )));
    }
    Ok(entry)
}

/// Handle an S3 event: every new commit entry runs the reports its table triggers (once per table version).
pub async fn handle_s3_event(
    reporter: &Reporter,
    event: &S3Event,
    warehouse: Option<(&str, &str)>,
    cancel: &CancellationToken,
) -> Result<S3Outcome> {
    let mut outcome = S3Outcome::default();
    for record in &event.records {
        match commit_of(record, warehouse) {
            Ok(entry) if outcome.commits.contains(&entry) => {}
            Ok(entry) => {
                let commit = CommitEvent {
                    table: entry.table.clone(),
                    version: i64::try_from(entry.version).unwrap_or(i64::MAX),
                    location: format!(
                        "s3://{}/{}{}",
                        entry.bucket,
                        if entry.prefix.is_empty() {
                            String::new()
                        } else {
                            format!("{}/", entry.prefix)
                        },
                        entry.table
                    ),
                    delivery: String::new(),
                    rows: 0,
                    event_time_min: None,
                    event_time_max: None,
                    committed_at_ms: record.event_time.timestamp_millis(),
                    replayed: false,
                };
                tracing::info!(table = %entry.table, version = entry.version, "commit notified by S3");
                outcome.runs.extend(reporter.handle(&commit, cancel).await?);
                outcome.commits.push(entry);
            }
            Err(ignored) => {
                tracing::info!(key = %ignored.key, reason = %ignored.reason, "S3 event record ignored");
                outcome.ignored.push(ignored);
            }
        }
    }
    Ok(outcome)
}

/// Undo S3 event key encoding: `+` is a space, `%XX` a byte.
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_name_table_and_version() {
        let k = parse_log_key("b", "wh/telemetry/_delta_log/00000000000000000003.json").unwrap();
        assert_eq!(
            (k.prefix.as_str(), k.table.as_str(), k.version),
            ("wh", "telemetry", 3)
        );
        let k = parse_log_key("b", "t/_delta_log/00000000000000000012.json").unwrap();
        assert_eq!((k.prefix.as_str(), k.table.as_str(), k.version), ("", "t", 12));
        let k = parse_log_key("b", "my%20wh/t-1/_delta_log/00000000000000000000.json").unwrap();
        assert_eq!(k.prefix, "my wh");
        for not_a_commit in [
            "wh/t/_delta_log/00000000000000000010.checkpoint.parquet",
            "wh/t/_delta_log/_last_checkpoint",
            "wh/t/_delta_log/0000000000000000003.json",
            "wh/t/_delta_log/.00000000000000000003.json.tmp",
            "wh/t/event_date=2024-01-01/part-0.parquet",
            "_delta_log/00000000000000000001.json",
        ] {
            assert!(parse_log_key("b", not_a_commit).is_err(), "{not_a_commit}");
        }
    }

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(url_decode("a+b%2Fc%zz%4"), "a b/c%zz%4");
    }
}
