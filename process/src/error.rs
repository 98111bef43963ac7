//! The one error type of `freshet-process`, classified by whose fault it is and whether a retry may help.
//!
//! Bad *records* are never errors here: they become rows of the error table (see [`crate::convert`]).
//! A [`ProcessError`] is about the pipeline itself: bad configuration, an unreachable store or warehouse,
//! or a table that freshet cannot safely append to.

use freshet_storage::StoreError;

/// Whose fault an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The caller's configuration or arguments.
    Caller,
    /// Something outside: the store, the object store, the disk. Retrying may help.
    Resource,
    /// A broken invariant inside freshet.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("invalid delivery configuration: {0}")]
    Config(String),
    #[error("stream store: {0}")]
    Store(#[from] StoreError),
    #[error("delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("io on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("table {table} cannot be delivered into: {message}")]
    Incompatible { table: String, message: String },
    /// Another writer moved this delivery's positions in the table (two deliveries with one name).
    #[error("table {table}: another writer moved txn {app_id}; positions are reloaded from the table")]
    Fenced { table: String, app_id: String },
    /// Shutdown was requested while a step was being retried; nothing of that step was committed.
    #[error("stopped: {0}")]
    Stopped(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ProcessError {
    pub fn delta(table: impl Into<String>, source: deltalake::DeltaTableError) -> Self {
        ProcessError::Delta {
            table: table.into(),
            source,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProcessError::Config(_) | ProcessError::Incompatible { .. } | ProcessError::Fenced { .. } => {
                Fault::Caller
            }
            ProcessError::Store(e) => match e.fault() {
                freshet_storage::Fault::Caller => Fault::Caller,
                freshet_storage::Fault::Resource => Fault::Resource,
                freshet_storage::Fault::Internal => Fault::Internal,
            },
            ProcessError::Delta { .. } | ProcessError::Io { .. } | ProcessError::Stopped(_) => {
                Fault::Resource
            }
            ProcessError::Arrow(_) | ProcessError::Internal(_) => Fault::Internal,
        }
    }

    /// Whether retrying the same step may succeed (object-store and IO failures, store back-pressure).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcessError::Store(e) => e.is_retryable(),
            other => other.fault() == Fault::Resource,
        }
    }
}

pub type Result<T, E = ProcessError> = std::result::Result<T, E>;
