//! Errors of report definitions and runs.

use freshet_query::QueryError;
use freshet_storage::StoreError;

use crate::config::Problem;

pub type Result<T, E = ReportError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A report definition is invalid; every problem found is listed.
    #[error("invalid report configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<Problem>),
    #[error("no report named {0:?}")]
    UnknownReport(String),
    /// A table a report reads is not in the warehouse (yet).
    #[error("table {0:?} is not in the warehouse")]
    MissingTable(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// The object store holding the report outputs failed (network, credentials, a missing bucket, ...).
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: object_store::Error,
    },
    /// An object is larger than the reader takes.
    #[error("{what}: {bytes} bytes is more than {bytes_max}")]
    TooLarge {
        what: String,
        bytes: u64,
        bytes_max: u64,
    },
    /// Writers kept changing an object between this writer's read and its conditional write.
    #[error("{0}: other writers kept changing it; gave up")]
    Contended(String),
    /// The runtime was asked to stop in the middle of a run; the run is redone after a restart.
    #[error("stopped before the run finished")]
    Cancelled,
}

impl ReportError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn storage(context: impl Into<String>, source: object_store::Error) -> Self {
        Self::Storage {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Self::Json {
            context: context.into(),
            source,
        }
    }
}
