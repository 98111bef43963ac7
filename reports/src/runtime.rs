//! The report runtime: reads `_freshet_events` as a named consumer with durable checkpoints and hands every
//! commit event to [`Reporter::handle`].
//!
//! A batch of events is checkpointed only after every run it triggered has ended (completed, or failed after its
//! retries), so a crash re-delivers at most the events of one batch, and those find their runs completed (skipped)
//! or redo a run that never completed. Undecodable events are logged and skipped.
//!
//! Reports with a schedule run beside it, each slot keyed by the slot ([`crate::slot_run_id`]): at each slot the
//! report runs once; a slot whose run completed never runs again. At start, scheduled runs a crash left `running`
//! or `retrying` are redone; slots missed while the runtime was down are not caught up (as EventBridge), nor are
//! slots that passed while the same report's previous slot was still running (a warning says so).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use freshet_storage::consumer::GroupReader;
use freshet_storage::{ReadLimits, StoreError, StreamName, StreamStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ReportConfig;
use crate::error::{ReportError, Result};
use crate::run::{CommitEvent, EVENTS_STREAM, Reporter, RunStatus};
use crate::schedule::Schedule;

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

/// The runtime: commit events and schedules; returns when `cancel` fires. Store errors are retried with backoff.
pub async fn run_runtime(
    reporter: Reporter,
    store: Arc<dyn StreamStore>,
    consumer: &str,
    cancel: CancellationToken,
) -> Result<()> {
    let (events, ()) = tokio::join!(
        run_events(&reporter, store, consumer, &cancel),
        run_schedules(&reporter, &cancel)
    );
    events
}

/// Every scheduled report, each on its own loop, until `cancel` fires.
pub async fn run_schedules(reporter: &Reporter, cancel: &CancellationToken) {
    let loops = reporter
        .reports()
        .iter()
        .filter_map(|r| r.schedule().map(|s| schedule_loop(reporter, r, s, cancel)));
    futures::future::join_all(loops).await;
}

async fn schedule_loop(
    reporter: &Reporter,
    report: &ReportConfig,
    schedule: Schedule,
    cancel: &CancellationToken,
) {
    // Redo the scheduled runs a crash interrupted.
    match reporter.outputs().history(&report.name).await {
        Ok(runs) => {
            for run in runs {
                let interrupted = matches!(run.status, RunStatus::Running | RunStatus::Retrying);
                let slot = run
                    .run_id
                    .strip_prefix("schedule@")
                    .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%MZ").ok());
                if let (true, Some(slot)) = (interrupted, slot)
                    && !run_slot(reporter, report, slot.and_utc(), cancel).await
                {
                    return;
                }
            }
        }
        Err(e) => tracing::warn!(report = %report.name, error = %e, "cannot read the report's runs"),
    }
    let mut after = Utc::now();
    loop {
        let Some(slot) = schedule.next_after(after) else {
            tracing::info!(report = %report.name, schedule = %schedule, "the schedule has no further slots");
            return;
        };
        // Sleep in steps of at most a minute, so a wall clock that moves is followed.
        loop {
            let wait = (slot - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if wait.is_zero() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
                () = cancel.cancelled() => return,
            }
        }
        if !run_slot(reporter, report, slot, cancel).await {
            return;
        }
        let now = Utc::now();
        if let Some(missed) = schedule.next_after(slot).filter(|next| *next < now) {
            tracing::warn!(report = %report.name, slot = %missed, "slots passed while the previous run was going; skipped");
        }
        after = now.max(slot);
    }
}

/// One slot's run; false when the runtime is stopping.
async fn run_slot(
    reporter: &Reporter,
    report: &ReportConfig,
    slot: DateTime<Utc>,
    cancel: &CancellationToken,
) -> bool {
    match reporter.run_scheduled(report, slot, cancel).await {
        Ok(_) => true,
        Err(ReportError::Cancelled) => false,
        Err(e) => {
            tracing::error!(report = %report.name, slot = %slot, error = %e, "scheduled run could not be recorded");
            !cancel.is_cancelled()
        }
    }
}

/// The commit-event loop; returns when `cancel` fires. Store errors are retried with backoff.
async fn run_events(
    reporter: &Reporter,
    store: Arc<dyn StreamStore>,
    consumer: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    let cancel = cancel.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = consume(reporter, &store, consumer, &cancel).await;
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
