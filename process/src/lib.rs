//! freshet-process: delivery streams (Firehose semantics) from the stream store into Delta tables.
//!
//! A delivery reads every shard of one stream (parents before children), buffers by size and time, converts JSON
//! records to Arrow with lineage and partition columns, and appends them to a Delta table, exactly once.
//!
//! # Guarantees
//!
//! - Exactly-once: each commit carries one Delta `txn` action per shard (app id `<delivery>-<shardId>`, version =
//!   last sequence number included); a delivery resumes from the table's `txn` versions, so after any crash
//!   every record is in the table once. See [`delivery`].
//! - Nothing is dropped without a trace: a record that cannot be converted is a row of `<table>_errors` with its
//!   raw bytes, the error kind and message, and its shard and sequence number. See [`convert`].
//! - A commit that returned is durable (local warehouses are fsync'd; S3 commits use put-if-absent). See [`table`].
//! - After every commit an event is appended to `_freshet_events`. See [`events`].
//!
//! This crate knows nothing of MQTT or charts.

pub mod batch;
pub mod config;
pub mod convert;
pub mod delivery;
pub mod error;
pub mod events;
pub mod http_transform;
pub mod maintenance;
pub mod staging;
pub mod table;
pub mod transform;

pub use config::{DeliveryConfig, HttpTransformConfig, MaintenanceConfig, PartitionColumn, PartitionExpr};
pub use delivery::{DeliveryCounters, DeliveryHandle, FlushReport, app_id, run_delivery, spawn_delivery};
pub use error::{ProcessError, Result};
pub use events::{CommitEvent, EVENTS_STREAM};
pub use tokio_util::sync::CancellationToken;
