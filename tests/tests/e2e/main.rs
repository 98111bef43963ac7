//! freshet's one integration-test binary.
//!
//! Every end-to-end, interop, crash and fault test lives here, one module per subject, so the workspace links one
//! test binary. Tests that run the `freshet` binary expect `cargo build -p freshet` first (the test command does it).

mod config_cli;
mod dashboards;
mod delivery_crash;
mod delivery_outage;
mod delivery_readers;
mod delivery_s3;
mod delivery_transform;
mod ingest_gateway;
mod kinesis_api;
mod lambda;
mod lambda_transform;
mod query_duckdb;
mod query_golden;
mod query_http;
mod query_s3;
mod remote_kinesalite;
mod reports_process;
mod reports_s3;
mod reports_trigger;
mod roles;
mod roles_s3;
mod simulate;
mod store_crash;
mod store_disk_full;
mod store_model;
mod store_torn_tail;
mod up_pipeline;
mod up_s3;
