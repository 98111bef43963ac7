//! The one error type of the store. Every error says whose fault it is (`Fault`) and whether retrying the
//! same call may succeed, so the HTTP face can map it to Kinesis's error names and status codes.

use std::path::PathBuf;
use std::sync::Arc;

/// Whose fault an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The caller asked for something invalid or absent (4xx).
    Caller,
    /// A limit or resource is exhausted now; retry later (disk full, throttled, queue full).
    Resource,
    /// Our bug or a broken disk (5xx).
    Internal,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {0} not found")]
    StreamNotFound(String),
    #[error("stream {0} already exists")]
    StreamExists(String),
    #[error("shard {shard} not found in stream {stream}")]
    ShardNotFound { stream: String, shard: String },
    #[error("consumer {consumer} not found for stream {stream}")]
    ConsumerNotFound { stream: String, consumer: String },
    #[error("consumer {consumer} already exists for stream {stream}")]
    ConsumerExists { stream: String, consumer: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// The resource exists but is in a state that does not allow the call (closed shard, stream updating).
    #[error("{0}")]
    ResourceInUse(String),
    #[error("iterator expired: {0}")]
    ExpiredIterator(String),
    #[error("no space left on device while writing {path}")]
    DiskFull { path: PathBuf },
    #[error("corrupt data in {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("data directory {0} is in use by another freshet process")]
    Locked(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: Arc<std::io::Error>,
    },
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// An IO error, classified: ENOSPC becomes `DiskFull` so callers can tell "retry later" from "broken".
    pub fn from_io(path: &std::path::Path, context: &str, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            StoreError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::io(format!("{context} {}", path.display()), source)
        }
    }

    pub fn fault(&self) -> Fault {
        use StoreError::*;
        match self {
            StreamNotFound(_)
            | StreamExists(_)
            | ShardNotFound { .. }
            | ConsumerNotFound { .. }
            | ConsumerExists { .. }
            | InvalidArgument(_)
            | ResourceInUse(_)
            | ExpiredIterator(_) => Fault::Caller,
            LimitExceeded(_) | DiskFull { .. } | Locked(_) | ShuttingDown => Fault::Resource,
            Corrupt { .. } | Io { .. } | Internal(_) => Fault::Internal,
        }
    }

    /// True when the same call may succeed later without the caller changing it.
    pub fn is_retryable(&self) -> bool {
        matches!(self.fault(), Fault::Resource) || matches!(self, StoreError::Io { .. })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
