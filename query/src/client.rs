//! A client of `POST /v1/sql` (what `freshet query --url` uses): asks for an Arrow IPC stream so the caller gets
//! typed batches, and turns the server's JSON errors back into [`QueryError::Remote`].

use std::time::Duration;

use crate::error::{QueryError, Result};
use crate::format::{Format, QueryResult, decode_arrow_ipc};

/// Largest response body read, so a misbehaving server cannot exhaust our memory.
pub const RESPONSE_BYTES_MAX: usize = 1 << 30;

#[derive(Debug, Clone)]
pub struct Client {
    endpoint: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8080`); `timeout` bounds each request.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| QueryError::Internal(format!("building an HTTP client: {e}")))?;
        Ok(Self {
            endpoint: format!("{}/v1/sql", base_url.trim_end_matches('/')),
            http,
        })
    }

    pub async fn sql(&self, sql: &str) -> Result<QueryResult> {
        let unreachable = |e: reqwest::Error| QueryError::Remote {
            kind: "unreachable".into(),
            message: format!("{}: {e}", self.endpoint),
            status: 503,
        };
        let body = serde_json::json!({ "sql": sql }).to_string();
        let response = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .header("accept", Format::ArrowIpc.content_type())
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        if let Some(length) = response.content_length()
            && length > RESPONSE_BYTES_MAX as u64
        {
            return Err(QueryError::ResultTooLarge {
                limit_bytes: RESPONSE_BYTES_MAX,
            });
        }
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status != 200 {
            let parsed: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            let field = |name: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v["error"][name].as_str())
                    .map(str::to_string)
            };
            return Err(QueryError::Remote {
                kind: field("kind").unwrap_or_else(|| "http_error".into()),
                message: field("message").unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
                status,
            });
        }
        decode_arrow_ipc(&bytes)
    }
}
