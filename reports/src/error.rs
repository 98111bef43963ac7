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

    pub(crate) fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Self::Json {
            context: context.into(),
            source,
        }
    }
}
