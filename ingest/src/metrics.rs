//! The gateway's counts, kept twice: in atomics (read by tests, the benchmark and `GatewayHandle::stats`) and
//! through the `metrics` facade (exported by whatever recorder the binary installs, e.g. Prometheus on `/metrics`).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `freshet_ingest_publishes_received_total` | counter | PUBLISH packets accepted from clients |
//! | `freshet_ingest_publishes_matched_total` | counter | publishes that at least one rule's topic filter matched |
//! | `freshet_ingest_publishes_unmatched_total` | counter | publishes that no rule matched (kept only for MQTT subscribers) |
//! | `freshet_ingest_publishes_failed_total` | counter | publishes that produced at least one error record |
//! | `freshet_ingest_publishes_denied_total` | counter | publishes refused by the ACL |
//! | `freshet_ingest_records_appended_total{stream}` | counter | records durable in the store |
//! | `freshet_ingest_append_failures_total` | counter | records whose append failed for good (reported to the client, never silent) |
//! | `freshet_ingest_append_retries_total` | counter | record appends retried after a retryable store error |
//! | `freshet_ingest_queue_depth` | gauge | records handed to the store and not yet durable (embedded store), or waiting in the appender's input queue (any other store) |
//! | `freshet_ingest_append_latency_seconds` | histogram | from queueing a record to it being durable |
//! | `freshet_ingest_subscriber_dropped_total` | counter | QoS 0 publishes not sent to a direct MQTT subscriber: its outbox was full (it reads too slowly) or the publish was over its maximum packet size (see `fanout`) |
//! | `freshet_ingest_connections` | gauge | open client connections |
//! | `freshet_ingest_connections_refused_total{reason}` | counter | connections refused (auth, limit, protocol) |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters of one gateway.
#[derive(Debug, Default)]
pub struct Counters {
    received: AtomicU64,
    matched: AtomicU64,
    unmatched: AtomicU64,
    failed: AtomicU64,
    denied: AtomicU64,
    appended: AtomicU64,
    append_failed: AtomicU64,
    append_retries: AtomicU64,
    connections: AtomicU64,
    refused: AtomicU64,
    queued: AtomicU64,
    subscriber_dropped: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub matched: u64,
    pub unmatched: u64,
    pub failed: u64,
    pub denied: u64,
    pub appended: u64,
    pub append_failed: u64,
    pub append_retries: u64,
    pub connections: u64,
    pub refused: u64,
    /// The queue depth now (see `freshet_ingest_queue_depth`).
    pub queued: u64,
    /// See `freshet_ingest_subscriber_dropped_total`.
    pub subscriber_dropped: u64,
}

impl Counters {
    pub fn received(&self) {
        self.received.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_publishes_received_total").increment(1);
    }

    pub fn matched(&self) {
        self.matched.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_publishes_matched_total").increment(1);
    }

    pub fn unmatched(&self) {
        self.unmatched.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_publishes_unmatched_total").increment(1);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_publishes_failed_total").increment(1);
    }

    pub fn denied(&self) {
        self.denied.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_publishes_denied_total").increment(1);
    }

    /// The handles a stream's writer records its appends with, resolved once rather than per record.
    pub fn appended_metrics(&self, stream: &str) -> AppendedMetrics {
        AppendedMetrics {
            total: metrics::counter!("freshet_ingest_records_appended_total", "stream" => stream.to_string()),
            latency: metrics::histogram!("freshet_ingest_append_latency_seconds"),
        }
    }

    pub fn appended(&self, handles: &AppendedMetrics, latency: Duration) {
        self.appended.fetch_add(1, Relaxed);
        handles.total.increment(1);
        handles.latency.record(latency.as_secs_f64());
    }

    /// `records` of one stream made durable together, `latency` after they were queued.
    pub fn appended_many(&self, handles: &AppendedMetrics, records: usize, latency: Duration) {
        if records == 0 {
            return;
        }
        self.appended.fetch_add(records as u64, Relaxed);
        handles.total.increment(records as u64);
        handles.latency.record_many(latency.as_secs_f64(), records);
    }

    pub fn append_failed(&self) {
        self.append_failed.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_append_failures_total").increment(1);
    }

    pub fn append_retried(&self, records: u64) {
        self.append_retries.fetch_add(records, Relaxed);
        metrics::counter!("freshet_ingest_append_retries_total").increment(records);
    }

    pub fn queue_depth(&self, depth: u64) {
        self.queued.store(depth, Relaxed);
        metrics::gauge!("freshet_ingest_queue_depth").set(depth as f64);
    }

    /// `records` handed to the store, not yet durable.
    pub fn queued_more(&self, records: u64) {
        let depth = self.queued.fetch_add(records, Relaxed) + records;
        metrics::gauge!("freshet_ingest_queue_depth").set(depth as f64);
    }

    /// `records` handed to the store are durable or have failed.
    pub fn queued_less(&self, records: u64) {
        let depth = self.queued.fetch_sub(records, Relaxed).saturating_sub(records);
        metrics::gauge!("freshet_ingest_queue_depth").set(depth as f64);
    }

    pub fn connection_opened(&self) {
        let n = self.connections.fetch_add(1, Relaxed) + 1;
        metrics::gauge!("freshet_ingest_connections").set(n as f64);
    }

    pub fn connection_closed(&self) {
        let n = self.connections.fetch_sub(1, Relaxed).saturating_sub(1);
        metrics::gauge!("freshet_ingest_connections").set(n as f64);
    }

    pub fn subscriber_dropped(&self) {
        self.subscriber_dropped.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_subscriber_dropped_total").increment(1);
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.fetch_add(1, Relaxed);
        metrics::counter!("freshet_ingest_connections_refused_total", "reason" => reason).increment(1);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            received: self.received.load(Relaxed),
            matched: self.matched.load(Relaxed),
            unmatched: self.unmatched.load(Relaxed),
            failed: self.failed.load(Relaxed),
            denied: self.denied.load(Relaxed),
            appended: self.appended.load(Relaxed),
            append_failed: self.append_failed.load(Relaxed),
            append_retries: self.append_retries.load(Relaxed),
            connections: self.connections.load(Relaxed),
            refused: self.refused.load(Relaxed),
            queued: self.queued.load(Relaxed),
            subscriber_dropped: self.subscriber_dropped.load(Relaxed),
        }
    }
}

/// Metric handles of one stream's appends (see [`Counters::appended_metrics`]).
#[derive(Clone)]
pub struct AppendedMetrics {
    total: metrics::Counter,
    latency: metrics::Histogram,
}
