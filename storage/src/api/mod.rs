//! The Kinesis-compatible HTTP API of a [`StreamStore`]: the Kinesis JSON 1.1 protocol (`POST /` with
//! `X-Amz-Target: Kinesis_20131202.<Operation>` and `Content-Type: application/x-amz-json-1.1`), so boto3, the AWS
//! CLI and AWS SDKs work against freshet unchanged, pointed at its endpoint.
//!
//! - Operations: CreateStream, DeleteStream, ListStreams, DescribeStream, DescribeStreamSummary, ListShards,
//!   PutRecord, PutRecords, GetShardIterator, GetRecords, SplitShard, MergeShards, UpdateShardCount,
//!   Increase/DecreaseStreamRetentionPeriod, Register/ListStream/Deregister/DescribeStreamConsumer; plus freshet's
//!   extensions under `Freshet_20261122.` (GetCheckpoints, PutCheckpoint, WaitForRecords) that the remote client
//!   ([`crate::remote::RemoteStore`]) uses for the rest of the [`StreamStore`] trait.
//! - Errors have AWS's shape and names (see [`error`]); the server keeps serving whatever the input.
//! - Authentication: with `ApiConfig::credentials` empty (the local default, meant for a listener on 127.0.0.1)
//!   every request is accepted, signed or not. With credentials configured every request must carry a valid AWS
//!   Signature V4 for one of them, scoped to `ApiConfig::region` and service `kinesis`.
//! - Bounds: request bodies above `ApiConfig::body_bytes_max` are refused from their `Content-Length`, or as soon
//!   as the streamed body passes the bound; list and page sizes follow Kinesis's limits.
//! - Stream consumers of the Kinesis API are freshet's named consumers (consumer groups with checkpoints).

pub mod error;
mod ops;
pub mod sigv4;
pub mod throttle;
pub mod token;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

pub use error::{ApiError, ErrorCode};
pub use throttle::ThrottleConfig;

use crate::StreamStore;
use crate::clock::{Clock, SystemClock};
use throttle::Throttle;
use token::Sealer;

/// The default bound of a request body: a full PutRecords of 5 MiB in base64 with room to spare.
pub const BODY_BYTES_MAX_DEFAULT: usize = 12 * 1024 * 1024;
/// The public default token key (see [`token`]): iterators are checksummed, and survive restarts.
pub const TOKEN_KEY_DEFAULT: &[u8] = b"freshet kinesis api token key v1";

/// Settings of the API.
#[derive(Clone)]
pub struct ApiConfig {
    /// (access key id, secret access key) pairs. Empty: accept every request without checking signatures.
    pub credentials: Vec<(String, String)>,
    /// The region in ARNs and in the signature scope requests must use.
    pub region: String,
    /// The 12-digit account in ARNs and messages.
    pub account_id: String,
    /// Per-shard provisioned-mode throttling; `None` (the default) does not throttle.
    pub throttling: Option<ThrottleConfig>,
    /// Largest request body accepted, in bytes.
    pub body_bytes_max: usize,
    /// Key of the HMAC that seals shard iterators and page tokens. Set a random one to make forged iterators fail.
    pub token_key: Vec<u8>,
    /// Time for iterator expiry, signature skew and throttling.
    pub clock: Arc<dyn Clock>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            credentials: Vec::new(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            throttling: None,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            token_key: TOKEN_KEY_DEFAULT.to_vec(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.credentials.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ApiConfig")
            .field("access_keys", &keys)
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .field("throttling", &self.throttling)
            .field("body_bytes_max", &self.body_bytes_max)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct ApiState {
    store: Arc<dyn StreamStore>,
    config: ApiConfig,
    sealer: Sealer,
    throttle: Option<Throttle>,
    requests: AtomicU64,
}

/// The API as an axum router serving `POST /`. Merge it with other routes to share a listener.
pub fn router(store: Arc<dyn StreamStore>, config: ApiConfig) -> Router {
    let state = ApiState {
        store,
        sealer: Sealer::new(&config.token_key),
        throttle: config.throttling.map(|t| Throttle::new(t, config.clock.clone())),
        config,
        requests: AtomicU64::new(0),
    };
    Router::new().route("/", post(handle)).with_state(Arc::new(state))
}

/// Serve `router` on `listener` until `shutdown` completes, then finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn handle(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("{:012x}-{n:08x}", state.config.clock.now_ms());
    let (status, body, error) = match respond(&state, request).await {
        Ok(body) => (StatusCode::OK, body, None),
        Err(e) => {
            if e.code.status().is_server_error() {
                tracing::warn!(request_id, error = %e, "Kinesis API request failed");
            }
            (e.code.status(), e.body(), Some(e.code))
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(wire::CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-RequestId", v);
    }
    if let Some(code) = error
        && let Ok(v) = HeaderValue::from_str(&format!("{}:", code.name()))
    {
        headers.insert("x-amzn-ErrorType", v);
    }
    response
}

async fn respond(state: &ApiState, request: Request) -> Result<Vec<u8>, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = state.config.body_bytes_max;
    let too_large = |size: String| {
        ApiError::invalid_argument(format!(
            "The request body of {size} bytes exceeds the limit of {limit} bytes"
        ))
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > limit as u64
    {
        return Err(too_large(len.to_string()));
    }
    let body = read_body(body, limit)
        .await
        .map_err(|e| e.unwrap_or_else(|| too_large(format!("more than {limit}"))))?;

    if !state.config.credentials.is_empty() {
        let request = sigv4::RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or_default(),
            headers: &parts.headers,
            authority: parts.uri.authority().map(|a| a.as_str()),
            body: &body,
        };
        let secret_of = |key: &str| {
            state
                .config
                .credentials
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, s)| s.as_str())
        };
        sigv4::verify(
            request,
            secret_of,
            &state.config.region,
            "kinesis",
            state.config.clock.now_ms(),
        )?;
    }

    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownOperation, "Missing X-Amz-Target header"))?;
    let unknown = || {
        ApiError::new(
            ErrorCode::UnknownOperation,
            format!("Unknown operation {target:?}"),
        )
    };
    let (prefix, operation) = target.split_once('.').ok_or_else(unknown)?;
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    match prefix {
        wire::KINESIS_PREFIX => ops::kinesis(state, operation, body).await,
        wire::FRESHET_PREFIX => ops::freshet(state, operation, body).await,
        _ => None,
    }
    .unwrap_or_else(|| Err(unknown()))
}

/// Read a body of at most `limit` bytes. `Err(None)`: it is larger; `Err(Some(e))`: it could not be read.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, Option<ApiError>> {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Some(ApiError::serialization(format!(
                "The request body could not be read: {e}"
            )))
        })?;
        if out.len() + chunk.len() > limit {
            return Err(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
