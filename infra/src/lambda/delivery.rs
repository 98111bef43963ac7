//! `freshet lambda delivery`: KinesisEvent batches from an event source mapping → the delivery's Delta table.
//!
//! Environment: `FRESHET_WAREHOUSE` (`s3://bucket/prefix` or a local path), `FRESHET_TABLE`, `FRESHET_DELIVERY`
//! (the delivery name, prefix of the `txn` app ids; default `lambda`), optionally `FRESHET_DELIVERY_CONFIG` (a JSON
//! object of further delivery settings: `partition_by`, `schema`, `event_time_field`, `transform_sql`, ...), and the
//! standard AWS variables for S3 (see [`super::storage_options`]).

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::kinesis::KinesisEvent;
use freshet_process::DeliveryConfig;
use freshet_process::batch::BatchDelivery;
use lambda_runtime::{LambdaEvent, service_fn};

use super::{deadline_margin, finish_by, optional, required, runtime_ended, storage_options};

/// The delivery configuration from the environment.
pub fn config_from_env() -> anyhow::Result<DeliveryConfig> {
    let warehouse = required("FRESHET_WAREHOUSE")?;
    let table = required("FRESHET_TABLE")?;
    let name = optional("FRESHET_DELIVERY").unwrap_or_else(|| "lambda".to_string());
    let mut config = DeliveryConfig::new(name, "lambda", table, warehouse);
    if let Some(extra) = optional("FRESHET_DELIVERY_CONFIG") {
        let extra: serde_json::Value =
            serde_json::from_str(&extra).context("FRESHET_DELIVERY_CONFIG is not JSON")?;
        let serde_json::Value::Object(extra) = extra else {
            anyhow::bail!("FRESHET_DELIVERY_CONFIG must be a JSON object");
        };
        let mut merged = serde_json::to_value(&config)?;
        for (k, v) in extra {
            anyhow::ensure!(
                !matches!(k.as_str(), "name" | "stream" | "table" | "warehouse"),
                "FRESHET_DELIVERY_CONFIG must not set {k:?}: use the FRESHET_* variable"
            );
            merged[k] = v;
        }
        config = serde_json::from_value(merged).context("FRESHET_DELIVERY_CONFIG")?;
    }
    config.storage_options.extend(storage_options());
    config.validate()?;
    Ok(config)
}

pub async fn run() -> anyhow::Result<()> {
    let config = config_from_env()?;
    let margin = deadline_margin()?;
    tracing::info!(delivery = %config.name, table = %config.table, warehouse = %config.warehouse,
        "lambda delivery handler starting");
    let delivery = Arc::new(tokio::sync::Mutex::new(BatchDelivery::new(config)?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let delivery = delivery.clone();
        async move {
            let deadline = finish_by(event.context.deadline(), margin);
            let records = event.payload.records.len();
            let mut delivery = delivery.lock().await;
            let (response, report) = delivery.handle(event.payload, deadline).await.map_err(|e| {
                tracing::error!(request_id = %event.context.request_id, error = %e, "event refused");
                e
            })?;
            tracing::info!(request_id = %event.context.request_id, records, rows = report.rows,
                error_rows = report.error_rows, skipped = report.skipped, versions = ?report.versions,
                failed_shards = report.failed_shards.len(), "batch delivered");
            Ok::<_, lambda_runtime::Error>(response)
        }
    }))
    .await
    .map_err(runtime_ended)
}
