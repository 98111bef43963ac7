//! The one error type of the ingest crate, with a `Result` alias. Errors of the gateway's own setup
//! (bad rule, bad config, port in use, TLS files) stop startup; bad *input* (packets, payloads) never becomes an
//! `IngestError`: it is answered on the connection or routed to an error stream as data.

use std::net::SocketAddr;

use freshet_storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A rule does not parse or check. `position` is 1-based, in characters, within `field`.
    #[error("rule {rule:?}: {field} at position {position}: {reason}")]
    Rule {
        rule: String,
        field: String,
        position: usize,
        reason: String,
    },
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("stream store: {0}")]
    Store(#[from] StoreError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl IngestError {
    /// True when the same call may succeed later without the caller changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Store(e) => e.is_retryable(),
            IngestError::Io { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
