//! The report runtime: reads `_freshet_events` as a named consumer with durable checkpoints and hands every
//! commit event to [`Reporter::handle`].
//!
//! A batch of events is checkpointed only after every run it triggered has ended (completed, or failed after its
//! retries), so a crash re-delivers at most the events of one batch, and those find their runs completed (skipped)
//! or redo a run that never completed. Undecodable events are logged and skipped.

use std::sync::Arc;
use std::time::Duration;

use freshet_storage::consumer::GroupReader;
use freshet_storage::{ReadLimits, StoreError, StreamName, StreamStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{ReportError, Result};
use crate::run::{CommitEvent, EVENTS_STREAM, Reporter};

/// The consumer name the runtime checkpoints under.
pub const DEFAULT_CONSUMER: &str = "reports";

/// A running report runtime.
#[derive(Debug)]
pub struct RuntimeHandle {
    cancel: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl RuntimeHandle {
    /// Stop reading, abandon a run in progress (it is redone after a restart), and wait for the task.
    pub async fn shutdown(self) -> Result<()> {
        self.cancel.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ReportError::io(
                "the report runtime task",
                std::io::Error::other(e),
            )),
        }
    }
}

/// Start the runtime on `store` as `consumer`.
pub fn spawn_runtime(
    reporter: Reporter,
    store: Arc<dyn StreamStore>,
    consumer: &str,
    cancel: CancellationToken,
) -> RuntimeHandle {
    let consumer = consumer.to_string();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { run_runtime(reporter, store, &consumer, cancel).await }
    });
    RuntimeHandle { cancel, task }
}

/// Create `_freshet_events` (one shard) unless it exists.
async fn ensure_events_stream(store: &Arc<dyn StreamStore>) -> Result<StreamName> {
    let name = StreamName::new(EVENTS_STREAM)?;
    match store.create_stream(&name, 1).await {
        Ok(()) | Err(StoreError::StreamExists(_)) => Ok(name),
        Err(e) => Err(e.into()),
    }
}

/// The runtime loop; returns when `cancel` fires. Store errors are retried with backoff.
pub async fn run_runtime(
    reporter: Reporter,
    store: Arc<dyn StreamStore>,
    consumer: &str,
    cancel: CancellationToken,
) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = consume(&reporter, &store, consumer, &cancel).await;
        match result {
            Ok(()) | Err(ReportError::Cancelled) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "report runtime failed; restarting after {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = cancel.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn consume(
    reporter: &Reporter,
    store: &Arc<dyn StreamStore>,
    consumer: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    let stream = ensure_events_stream(store).await?;
    let mut reader = GroupReader::new(store.clone(), stream, consumer).await?;
    let limits = ReadLimits {
        records_max: 100,
        bytes_max: 4 << 20,
    };
    while !cancel.is_cancelled() {
        let batches = reader.poll(limits).await?;
        let idle = batches.is_empty();
        for batch in batches {
            for record in &batch.records {
                match serde_json::from_slice::<CommitEvent>(&record.data) {
                    Ok(event) => {
                        reporter.handle(&event, cancel).await?;
                    }
                    Err(e) => tracing::warn!(
                        sequence_number = %record.sequence_number,
                        error = %e,
                        "not a commit event; skipped"
                    ),
                }
            }
            reader.commit(&batch).await?;
        }
        if idle {
            tokio::select! {
                r = reader.wait(Duration::from_secs(1)) => r?,
                () = cancel.cancelled() => {}
            }
        }
    }
    Ok(())
}
