//! freshet-query: SQL over the Delta tables of a warehouse, with DataFusion.
//!
//! - [`Warehouse`] (`warehouse.rs`): every subdirectory with a `_delta_log/` is a table, named after the directory,
//!   read at its latest committed version when a query plans; `<table>@v<N>` reads version N (time travel).
//! - [`QueryEngine`] (`engine.rs`): one read-only session per query with `information_schema`, a memory pool, a
//!   time limit and a result-size limit ([`QueryLimits`]).
//! - [`Format`] (`format.rs`): JSON (the `/v1/sql` contract), CSV, Arrow IPC stream, Parquet, and a pretty table.
//! - [`router`] (`http.rs`): `POST /v1/sql`; [`Client`] (`client.rs`): the same endpoint from the other side.
//! - [`QueryError`] (`error.rs`): whose fault (caller → 4xx, resources → 503, internal → 500).
//!
//! This crate knows nothing of MQTT or the stream store's internals.

mod client;
mod engine;
mod error;
mod format;
mod http;
mod warehouse;

pub use client::Client;
pub use engine::{QueryEngine, QueryLimits};
pub use error::{Fault, QueryError, Result};
pub use format::{Format, QueryResult, decode_arrow_ipc, encode, pretty, type_name};
pub use http::router;
pub use warehouse::{Warehouse, split_version};

/// The Arrow crate this one uses (for callers that inspect results).
pub use deltalake::arrow;
