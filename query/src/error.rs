//! The one error type of `freshet-query`, classified by whose fault it is so that the HTTP status follows.
//!
//! - [`Fault::Caller`]: the SQL or the request is wrong (syntax, unknown table or column, a forbidden statement, a
//!   query over its memory, time or result-size limits, an unsupported format). 4xx; retrying the same request
//!   gives the same answer.
//! - [`Fault::Resource`]: the server cannot serve it now (all query slots busy, the warehouse unreadable). 503;
//!   a retry later may succeed.
//! - [`Fault::Internal`]: a bug or an unexpected engine failure. 500.

use std::time::Duration;

use deltalake::arrow::error::ArrowError;
use deltalake::datafusion::error::DataFusionError;

/// `Result` with [`QueryError`].
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Caller,
    Resource,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not parse; the message carries the line and column.
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    #[error("unknown table: {0}")]
    UnknownTable(String),
    #[error("unknown column: {0}")]
    UnknownColumn(String),
    /// Any other mistake in the query found while planning or running it (type errors, bad casts, division by zero).
    #[error("invalid query: {0}")]
    Invalid(String),
    /// The statement is not a read-only query (DDL, DML, COPY, SET, ...).
    #[error("forbidden statement: {0}; only read-only queries are allowed")]
    Forbidden(String),
    #[error("query stopped: it needed more than its memory limit of {limit_bytes} bytes ({message})")]
    MemoryLimit { limit_bytes: usize, message: String },
    #[error("query stopped: it ran longer than its time limit of {0:?}")]
    TimeLimit(Duration),
    #[error("query stopped: its result is larger than the limit of {limit_bytes} bytes")]
    ResultTooLarge { limit_bytes: usize },
    /// The request itself is malformed (not JSON, no `sql`, SQL too long).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No result format matches the `Accept` header.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// Every query slot is in use.
    #[error("busy: {0} queries are already running; retry later")]
    Busy(usize),
    /// The warehouse (or a table's files) could not be read.
    #[error("warehouse unavailable: {0}")]
    Warehouse(String),
    /// A server we queried (`freshet query --url`) answered with an error.
    #[error("{kind}: {message}")]
    Remote {
        kind: String,
        message: String,
        status: u16,
    },
    #[error("execution failed: {0}")]
    Execution(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn fault(&self) -> Fault {
        match self {
            Self::Syntax(_)
            | Self::UnknownTable(_)
            | Self::UnknownColumn(_)
            | Self::Invalid(_)
            | Self::Forbidden(_)
            | Self::MemoryLimit { .. }
            | Self::TimeLimit(_)
            | Self::ResultTooLarge { .. }
            | Self::BadRequest(_)
            | Self::NotAcceptable(_) => Fault::Caller,
            Self::Busy(_) | Self::Warehouse(_) => Fault::Resource,
            Self::Remote { status, .. } => match status {
                400..=499 => Fault::Caller,
                503 => Fault::Resource,
                _ => Fault::Internal,
            },
            Self::Execution(_) | Self::Internal(_) => Fault::Internal,
        }
    }

    /// The stable machine-readable name sent as `error.kind`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Syntax(_) => "syntax_error",
            Self::UnknownTable(_) => "unknown_table",
            Self::UnknownColumn(_) => "unknown_column",
            Self::Invalid(_) => "invalid_query",
            Self::Forbidden(_) => "forbidden_statement",
            Self::MemoryLimit { .. } => "memory_limit_exceeded",
            Self::TimeLimit(_) => "time_limit_exceeded",
            Self::ResultTooLarge { .. } => "result_too_large",
            Self::BadRequest(_) => "bad_request",
            Self::NotAcceptable(_) => "not_acceptable",
            Self::Busy(_) => "busy",
            Self::Warehouse(_) => "warehouse_unavailable",
            Self::Remote { kind, .. } => kind,
            Self::Execution(_) => "execution_error",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status: 4xx for the caller's mistakes, 503 for resources, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Forbidden(_) => 403,
            Self::NotAcceptable(_) => 406,
            Self::MemoryLimit { .. } | Self::TimeLimit(_) | Self::ResultTooLarge { .. } => 422,
            Self::Remote { status, .. } => *status,
            other => match other.fault() {
                Fault::Caller => 400,
                Fault::Resource => 503,
                Fault::Internal => 500,
            },
        }
    }

    /// Classify an error DataFusion returned while planning or running a query.
    pub(crate) fn from_datafusion(error: DataFusionError, memory_limit_bytes: usize) -> Self {
        let message = error.strip_backtrace();
        match error.find_root() {
            DataFusionError::SQL(..) if message.contains("found: EOF") => {
                Self::Syntax(format!("{message} (at the end of the SQL)"))
            }
            DataFusionError::SQL(..) => Self::Syntax(message),
            DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
                deltalake::datafusion::common::SchemaError::FieldNotFound { .. } => {
                    Self::UnknownColumn(message)
                }
                _ => Self::Invalid(message),
            },
            DataFusionError::Plan(plan) if plan.contains("not found") && plan.contains("table") => {
                Self::UnknownTable(message)
            }
            DataFusionError::Plan(_) | DataFusionError::NotImplemented(_) => Self::Invalid(message),
            DataFusionError::ResourcesExhausted(_) => Self::MemoryLimit {
                limit_bytes: memory_limit_bytes,
                message,
            },
            DataFusionError::ArrowError(arrow, _) => match arrow.as_ref() {
                ArrowError::DivideByZero
                | ArrowError::CastError(_)
                | ArrowError::ParseError(_)
                | ArrowError::ComputeError(_)
                | ArrowError::ArithmeticOverflow(_)
                | ArrowError::InvalidArgumentError(_) => Self::Invalid(message),
                _ => Self::Execution(message),
            },
            DataFusionError::External(inner) => match inner.downcast_ref::<QueryError>() {
                Some(QueryError::UnknownTable(t)) => Self::UnknownTable(t.clone()),
                Some(QueryError::Warehouse(w)) => Self::Warehouse(w.clone()),
                Some(QueryError::Invalid(w)) => Self::Invalid(w.clone()),
                _ => Self::Execution(message),
            },
            DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => Self::Warehouse(message),
            DataFusionError::Internal(_) | DataFusionError::ExecutionJoin(_) => Self::Internal(message),
            DataFusionError::Execution(e) if e.contains("Divide by zero") => Self::Invalid(message),
            _ => Self::Execution(message),
        }
    }
}
