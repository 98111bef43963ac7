//! Commit events: after every delivery commit, one JSON record on the internal stream `_freshet_events`.
//!
//! Events are what trigger report functions. They are appended *after* the commit, so an event always names a
//! version that exists; a crash between the commit and the append loses the event, which is why a delivery
//! re-announces the table's current version when it starts (`replayed: true`). Consumers key their work by
//! (table, version), so an event seen twice does no harm.

use std::sync::Arc;
use std::time::Duration;

use freshet_storage::{PutRecord, StoreError, StreamName, StreamStore};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The internal stream that carries commit events.
pub const EVENTS_STREAM: &str = "_freshet_events";

/// One commit of a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitEvent {
    pub table: String,
    pub version: i64,
    /// The table's URL.
    pub location: String,
    pub delivery: String,
    pub rows: u64,
    pub files_added: u64,
    pub bytes_added: u64,
    pub error_rows: u64,
    /// Event-time range (RFC 3339) of the rows in this commit; absent when it added no rows.
    pub event_time_min: Option<String>,
    pub event_time_max: Option<String>,
    pub committed_at_ms: i64,
    /// True for the re-announcement of the current version when a delivery starts.
    #[serde(default)]
    pub replayed: bool,
}

/// Create `_freshet_events` (one shard) unless it exists.
pub async fn ensure_events_stream(store: &Arc<dyn StreamStore>) -> Result<()> {
    let name = StreamName::new(EVENTS_STREAM)?;
    match store.create_stream(&name, 1).await {
        Ok(()) | Err(StoreError::StreamExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Append `event`, retrying a few times with backoff; an event that still cannot be appended is logged.
pub async fn publish(store: &Arc<dyn StreamStore>, event: &CommitEvent) {
    let name = match StreamName::new(EVENTS_STREAM) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "events stream name");
            return;
        }
    };
    let data = match serde_json::to_vec(event) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a commit event");
            return;
        }
    };
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=6 {
        match store
            .put_record(&name, PutRecord::new(event.table.clone(), data.clone()))
            .await
        {
            Ok(_) => return,
            Err(e) if attempt < 6 => {
                tracing::warn!(error = %e, attempt, "appending a commit event failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, table = %event.table, version = event.version,
                    "commit event lost; it will be re-announced when the delivery restarts");
            }
        }
    }
}
