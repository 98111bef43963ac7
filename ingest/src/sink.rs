//! Where a connection's records go, and how it learns they are durable.
//!
//! ```text
//! embedded store:  connection ──enqueue (one per read and stream)──▶ shard writers ──group commit──▶ outcome
//! any other store: connection ──Outbox──▶ appender (batcher, writer lanes, retries) ──tickets──▶ outcome
//! ```
//!
//! - With the embedded store ([`StreamStore::embedded`]) the records of one socket read are routed and queued on
//!   their shards' writers at once ([`Store::enqueue`]). The connection waits only for the queueing (which waits
//!   while a writer's queue is full: the backpressure its client feels) and keeps a future of the records'
//!   durability until it acknowledges their publishes. No task, channel or ticket per record stands between a
//!   connection and the writers, and each writer's group commit takes every connection's queued records with one
//!   fsync. Order: a connection queues its reads one after the other, so a partition key's records keep the order
//!   in which its client published them.
//! - Any other store (a remote Kinesis endpoint) goes through the batching [`Appender`], whose writer lanes keep
//!   one put in flight per lane and retry throttling with backoff.
//!
//! Either way a submitted run of records resolves to [`Outcomes`]: which of them, if any, could not be made durable
//! and why. Every record is counted once, as appended or failed, when its run resolves.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use freshet_storage::{PutRecord, Store, StreamName, StreamStore};

use crate::appender::{AppendConfig, AppendError, Appender, Outbox};
use crate::metrics::{AppendedMetrics, Counters};

/// The records of one read's publishes, in order, before they are submitted.
#[derive(Default)]
pub(crate) struct Records {
    items: Vec<(StreamName, PutRecord)>,
}

impl Records {
    pub(crate) fn push(&mut self, stream: StreamName, record: PutRecord) {
        self.items.push((stream, record));
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// What became of a submitted run of records: the positions (in submission order) of those that could not be
/// made durable, with the reason. Empty when all of them are durable.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    failures: Vec<(usize, String)>,
}

impl Outcomes {
    /// The first failure among the records at `range`, if any.
    pub(crate) fn failure_in(&self, range: std::ops::Range<usize>) -> Option<&str> {
        let at = self.failures.partition_point(|(i, _)| *i < range.start);
        self.failures
            .get(at)
            .filter(|(i, _)| *i < range.end)
            .map(|(_, reason)| reason.as_str())
    }
}

/// Resolves once every record of a submitted run is durable or has failed for good.
pub(crate) type Durable = Pin<Box<dyn Future<Output = Outcomes> + Send>>;

/// Where the gateway's records go (see the module docs).
pub(crate) enum Sink {
    Direct {
        store: Store,
        counters: Arc<Counters>,
        /// Metric handles of every stream a rule can write to, made once.
        metrics: HashMap<StreamName, AppendedMetrics>,
    },
    Batched(Appender),
}

impl Sink {
    /// The direct path for the embedded store, the appender for any other; with the appender's task when there is
    /// one (it ends once the sink is dropped and everything it holds is written or failed).
    pub(crate) fn new(
        store: Arc<dyn StreamStore>,
        config: AppendConfig,
        counters: Arc<Counters>,
        streams: &[StreamName],
    ) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        if let Some(embedded) = store.embedded() {
            let metrics = streams
                .iter()
                .map(|s| (s.clone(), counters.appended_metrics(s.as_str())))
                .collect();
            let sink = Sink::Direct {
                store: embedded.clone(),
                counters,
                metrics,
            };
            return (sink, None);
        }
        let (appender, task) = Appender::spawn(store, config, counters);
        (Sink::Batched(appender), Some(task))
    }

    /// Queue `records` (emptying it), in order, and return the future of their outcomes. Waits while the store's
    /// queues are full. Fails only when the store or the appender has stopped; then nothing more can be written.
    pub(crate) async fn submit(&self, records: &mut Records) -> Result<Durable, AppendError> {
        // The next read's records usually number about as many: start them with that room.
        let room = records.items.len();
        let items = std::mem::replace(&mut records.items, Vec::with_capacity(room));
        match self {
            Sink::Direct {
                store,
                counters,
                metrics,
            } => submit_direct(store, counters.clone(), metrics, items).await,
            Sink::Batched(appender) => {
                let mut outbox = Outbox::default();
                let tickets: Vec<_> = items
                    .into_iter()
                    .map(|(stream, record)| outbox.push(stream, record))
                    .collect();
                appender.send(&mut outbox).await?;
                Ok(Box::pin(async move {
                    let mut outcomes = Outcomes::default();
                    for (i, ticket) in tickets.into_iter().enumerate() {
                        match ticket.await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => outcomes.failures.push((i, e.to_string())),
                            Err(_) => outcomes
                                .failures
                                .push((i, "the appender dropped the record".into())),
                        }
                    }
                    outcomes
                }))
            }
        }
    }
}

/// One stream's share of a submitted run: the positions of its records in the run (`None`: all of them).
struct Group {
    stream: StreamName,
    positions: Option<Vec<usize>>,
    records: Vec<PutRecord>,
}

async fn submit_direct(
    store: &Store,
    counters: Arc<Counters>,
    metrics: &HashMap<StreamName, AppendedMetrics>,
    items: Vec<(StreamName, PutRecord)>,
) -> Result<Durable, AppendError> {
    let since = Instant::now();
    let count = items.len();
    counters.queued_more(count as u64);
    // Usually every record of a read goes to one stream; records for an error stream make a second group.
    let mut groups: Vec<Group> = Vec::with_capacity(1);
    for (i, (stream, record)) in items.into_iter().enumerate() {
        if let Some(g) = groups.iter_mut().find(|g| g.stream == stream) {
            if let Some(p) = &mut g.positions {
                p.push(i);
            }
            g.records.push(record);
            continue;
        }
        let positions = if i == 0 { None } else { Some(vec![i]) };
        if let Some(first) = groups.first_mut()
            && first.positions.is_none()
        {
            // The first group is no longer "every record so far and after": give it its positions.
            first.positions = Some((0..first.records.len()).collect());
        }
        let mut records = Vec::with_capacity(count - i);
        records.push(record);
        groups.push(Group {
            stream,
            positions,
            records,
        });
    }
    let mut queued = Vec::with_capacity(groups.len());
    for g in groups {
        let handles = metrics
            .get(&g.stream)
            .cloned()
            .unwrap_or_else(|| counters.appended_metrics(g.stream.as_str()));
        let q = store.enqueue(&g.stream, g.records).await;
        if matches!(q, Err(freshet_storage::StoreError::ShuttingDown)) {
            counters.queued_less(count as u64);
            return Err(AppendError::Stopped);
        }
        queued.push((g.positions, handles, q));
    }
    Ok(Box::pin(async move {
        let mut outcomes = Outcomes::default();
        for (positions, handles, q) in queued {
            let results = match q {
                Ok(q) => q.outcome().await,
                Err(e) => {
                    let n = positions.as_ref().map_or(count, Vec::len);
                    (0..n).map(|_| Err(e.clone())).collect()
                }
            };
            let (mut ok, mut failed) = (0usize, 0usize);
            let mut first_error = None;
            for (k, result) in results.into_iter().enumerate() {
                match result {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        let at = positions.as_ref().map_or(k, |p| p[k]);
                        failed += 1;
                        counters.append_failed();
                        outcomes
                            .failures
                            .push((at, AppendError::Store(e.clone()).to_string()));
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                tracing::error!(records = failed, error = %e, "append failed");
            }
            counters.appended_many(&handles, ok, since.elapsed());
        }
        counters.queued_less(count as u64);
        outcomes.failures.sort_unstable_by_key(|(i, _)| *i);
        outcomes
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_storage::{StartingPosition, StoreConfig, SystemClock};

    /// Every record's data in `stream`, shard by shard, as text.
    async fn data(store: &Store, stream: &StreamName) -> Vec<String> {
        let desc = store.describe_stream(stream).await.unwrap();
        let mut out = Vec::new();
        for shard in desc.shards {
            let it = store
                .get_shard_iterator(stream, shard.shard_id, StartingPosition::TrimHorizon)
                .await
                .unwrap();
            let got = store.get_records(&it, Default::default()).await.unwrap();
            out.extend(
                got.records
                    .iter()
                    .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
            );
        }
        out
    }

    /// The direct path: records of two streams interleaved in one run land in order on each, a record the store
    /// refuses fails alone at its own position, and every record is counted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_over_two_streams_lands_in_order_and_fails_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.record_bytes_max = 64;
        let store = Store::open(config, Arc::new(SystemClock)).unwrap();
        let (a, b) = (StreamName::new("a").unwrap(), StreamName::new("b").unwrap());
        store.create_stream(&a, 1).await.unwrap();
        store.create_stream(&b, 1).await.unwrap();
        let counters = Arc::new(Counters::default());
        let dyn_store: Arc<dyn StreamStore> = Arc::new(store.clone());
        let (sink, task) = Sink::new(
            dyn_store,
            AppendConfig::default(),
            counters.clone(),
            std::slice::from_ref(&a),
        );
        assert!(task.is_none() && matches!(sink, Sink::Direct { .. }));
        let too_big = "x".repeat(100);
        let mut outcomes = Vec::new();
        for run in [
            vec![(&a, "0"), (&b, "1"), (&a, too_big.as_str()), (&b, "3"), (&a, "4")],
            vec![(&b, "5"), (&a, "6")],
        ] {
            let mut records = Records::default();
            for (stream, d) in run {
                records.push(stream.clone(), PutRecord::new("k", d.to_string()));
            }
            outcomes.push(sink.submit(&mut records).await.unwrap());
            assert!(records.is_empty());
        }
        assert_eq!(
            counters.snapshot().queued,
            7,
            "records handed over, not yet seen durable"
        );
        let second = outcomes.pop().unwrap().await;
        let first = outcomes.pop().unwrap().await;
        assert_eq!(first.failures.len(), 1, "{first:?}");
        assert_eq!(first.failures[0].0, 2);
        assert!(
            first.failure_in(2..3).unwrap().contains("record limit"),
            "{first:?}"
        );
        assert_eq!(first.failure_in(0..2), None);
        assert_eq!(first.failure_in(3..5), None);
        assert!(second.failures.is_empty(), "{second:?}");
        assert_eq!(data(&store, &a).await, ["0", "4", "6"]);
        assert_eq!(data(&store, &b).await, ["1", "3", "5"]);
        let stats = counters.snapshot();
        assert_eq!(
            (stats.appended, stats.append_failed, stats.queued),
            (6, 1, 0),
            "{stats:?}"
        );
    }

    #[test]
    fn failures_are_found_by_range() {
        let o = Outcomes {
            failures: vec![(2, "a".into()), (5, "b".into())],
        };
        assert_eq!(o.failure_in(0..2), None);
        assert_eq!(o.failure_in(0..3), Some("a"));
        assert_eq!(o.failure_in(3..5), None);
        assert_eq!(o.failure_in(3..6), Some("b"));
        assert_eq!(o.failure_in(6..9), None);
        assert_eq!(Outcomes::default().failure_in(0..100), None);
    }
}
