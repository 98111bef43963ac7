//! [`RemoteStore`]: the [`StreamStore`] trait over the Kinesis JSON 1.1 API, so a stage can use a store in another
//! process (freshet's own API, see [`crate::api`]) or AWS Kinesis itself, with optional SigV4 signing.
//!
//! How the trait maps onto the API:
//! - A [`ShardIterator`] stays a position (`next`), as for the embedded store, so it never expires. A read turns
//!   it into a Kinesis iterator: the one the previous read of that shard returned, when it is for the same position
//!   and younger than 4 minutes, or else a new one (`AFTER_SEQUENCE_NUMBER next - 1`, or `AT_SEQUENCE_NUMBER next`).
//!   freshet's server reports the position of every iterator it hands out (`FreshetPosition`).
//! - Other endpoints (AWS Kinesis, kinesalite) do not, so there a position is known from the sequence numbers
//!   themselves: `AT`/`AFTER_SEQUENCE_NUMBER` give it, a read with records moves it past the last one, and
//!   `TRIM_HORIZON` starts at the shard's starting sequence number (from `ListShards`). `LATEST` and `AT_TIMESTAMP`
//!   have no number until their first record: such an iterator has position [`SequenceNumber::ZERO`], lives on its
//!   Kinesis iterator (renewed by every read), and once that is gone (unread for 4 minutes, like AWS's own 5-minute
//!   expiry) reading it fails with `ExpiredIterator`: ask for a new one. Two such iterators of one shard read in
//!   turn share that cache entry, so only the newest is kept (the older one then fails with `ExpiredIterator`).
//! - Control calls (create, delete, reshard, update shard count) wait until the stream is `ACTIVE` (or gone) again,
//!   polling `DescribeStreamSummary` with a bounded backoff, so they return with the same effect as the embedded
//!   store's; freshet's server is synchronous, so one poll suffices.
//! - [`StreamStore::wait_for_records`] long-polls with freshet's `WaitForRecords` extension; against an endpoint
//!   without it (AWS) it polls `GetRecords` with a backoff from 50 ms to `poll_interval_max` until the timeout.
//! - Checkpoints use freshet's `GetCheckpoints` / `PutCheckpoint` extensions: AWS Kinesis has no such calls.
//! - A `put_records` call is one HTTP request, so it is bounded by the endpoint's body limit (freshet: 12 MiB of
//!   JSON, about 9 MiB of data; AWS: 10 MiB).
//! - No call is retried here: the error says (`StoreError::is_retryable`) whether the caller may retry.
//!
//! AWS's sequence numbers (56 digits) fit [`SequenceNumber`] (up to 76); an answer with a longer one fails with
//! `StoreError::Internal`. Checkpoints need freshet's extensions, so they fail against AWS (`InvalidArgument`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::StreamStore;
use crate::api::error::{ErrorCode, ErrorContext, to_store_error};
use crate::api::sigv4;
use crate::api::wire::{self, FRESHET_PREFIX, KINESIS_PREFIX};
use crate::clock::{Clock, SystemClock};
use crate::error::{StoreError, StoreResult};
use crate::types::*;

/// An access key for signing requests.
#[derive(Clone)]
pub struct RemoteCredentials {
    pub access_key: String,
    pub secret: String,
    /// For temporary AWS credentials (`X-Amz-Security-Token`).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for RemoteCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCredentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Where and how to reach a Kinesis-API endpoint.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// `http://127.0.0.1:8080` (freshet) or `https://kinesis.<region>.amazonaws.com`.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// Sign requests with SigV4 when set; send them unsigned otherwise.
    pub credentials: Option<RemoteCredentials>,
    pub connect_timeout: Duration,
    /// Bound of one call (a long poll adds its own wait to it).
    pub request_timeout: Duration,
    /// Largest response body read.
    pub response_bytes_max: usize,
    /// How long control calls wait for the stream to be `ACTIVE` again.
    pub settle_timeout: Duration,
    /// Longest pause between polls (settling, and `wait_for_records` without the long-poll extension).
    pub poll_interval_max: Duration,
}

impl RemoteConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            region: "us-east-1".into(),
            credentials: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            response_bytes_max: 64 * 1024 * 1024,
            settle_timeout: Duration::from_secs(120),
            poll_interval_max: Duration::from_secs(1),
        }
    }
}

/// Kinesis iterators younger than this are reused for the next read of the same position.
const ITERATOR_REUSE_MAX: Duration = Duration::from_secs(240);
/// Most cached iterators and ARNs (bounds, not policies: past them the caches start over).
const CACHE_ENTRIES_MAX: usize = 4096;
/// Most pages one listing follows.
const PAGES_MAX: usize = 10_000;
/// The longest long poll one request asks for.
const WAIT_PER_REQUEST_MAX: Duration = Duration::from_secs(20);
const POLL_INTERVAL_MIN: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct CachedIterator {
    next: SequenceNumber,
    token: String,
    at: Instant,
}

/// A failed call: the AWS error name, when the endpoint sent one, and the store error it means.
#[derive(Debug)]
struct Failure {
    code: Option<ErrorCode>,
    error: StoreError,
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// A [`StreamStore`] behind a Kinesis-API endpoint.
#[derive(Debug)]
pub struct RemoteStore {
    config: RemoteConfig,
    client: reqwest::Client,
    url: reqwest::Url,
    /// The `Host` header reqwest sends for `url`, which the signature covers.
    host: String,
    clock: SystemClock,
    iterators: Mutex<HashMap<(StreamName, ShardId), CachedIterator>>,
    arns: Mutex<HashMap<StreamName, String>>,
    /// Cleared when the endpoint does not know freshet's `WaitForRecords`.
    long_poll: AtomicBool,
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(message.into())
}

fn bad_answer(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unexpected answer from the Kinesis endpoint: {what}"))
}

fn shard_id(s: &str) -> StoreResult<ShardId> {
    s.parse().map_err(|_| bad_answer(format!("shard id {s:?}")))
}

fn seq(s: &str) -> StoreResult<SequenceNumber> {
    s.parse().map_err(|e| bad_answer(format!("sequence number: {e}")))
}

fn hash(s: &str) -> StoreResult<u128> {
    s.parse().map_err(|_| bad_answer(format!("hash key {s:?}")))
}

fn ms(seconds: f64) -> StoreResult<i64> {
    wire::millis(seconds).ok_or_else(|| bad_answer(format!("timestamp {seconds}")))
}

fn status(s: &str) -> StreamStatus {
    match s {
        "ACTIVE" => StreamStatus::Active,
        "DELETING" => StreamStatus::Deleting,
        _ => StreamStatus::Updating,
    }
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CACHE_ENTRIES_MAX && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

impl RemoteStore {
    pub fn new(config: RemoteConfig) -> StoreResult<Self> {
        let url = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| invalid(format!("endpoint {:?} is not a URL: {e}", config.endpoint)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "endpoint {:?} must be http:// or https://",
                config.endpoint
            )));
        }
        let host_name = url
            .host_str()
            .ok_or_else(|| invalid(format!("endpoint {:?} has no host", config.endpoint)))?;
        let host = match url.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_string(),
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        let loopback = host_name == "localhost"
            || host_name
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::Internal(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            config,
            client,
            url,
            host,
            clock: SystemClock,
            iterators: Mutex::new(HashMap::new()),
            arns: Mutex::new(HashMap::new()),
            long_poll: AtomicBool::new(true),
        })
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// One call, signed when credentials are configured; the answer parsed as `T` (`{}` when empty).
    async fn call_raw<T: DeserializeOwned>(
        &self,
        prefix: &str,
        operation: &str,
        input: &Value,
        ctx: ErrorContext<'_>,
        extra_wait: Duration,
    ) -> Result<T, Failure> {
        let fail = |error: StoreError| Failure { code: None, error };
        let body = serde_json::to_vec(input).map_err(|e| fail(StoreError::Internal(e.to_string())))?;
        let target = format!("{prefix}.{operation}");
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.config.request_timeout + extra_wait)
            .header("content-type", wire::CONTENT_TYPE)
            .header("x-amz-target", &target);
        if let Some(creds) = &self.config.credentials {
            let amz_date = sigv4::amz_date(self.clock.now_ms());
            let mut signed: Vec<(&str, &str)> = vec![
                ("content-type", wire::CONTENT_TYPE),
                ("host", &self.host),
                ("x-amz-date", &amz_date),
                ("x-amz-target", &target),
            ];
            if let Some(token) = &creds.session_token {
                signed.push(("x-amz-security-token", token));
            }
            let params = sigv4::SigningParams {
                access_key: &creds.access_key,
                secret: &creds.secret,
                region: &self.config.region,
                service: "kinesis",
                amz_date: &amz_date,
            };
            let path = self.url.path();
            let authorization = sigv4::sign(
                params,
                "POST",
                path,
                self.url.query().unwrap_or_default(),
                &signed,
                &body,
            );
            request = request
                .header("x-amz-date", &amz_date)
                .header("authorization", authorization);
            if let Some(token) = &creds.session_token {
                request = request.header("x-amz-security-token", token);
            }
        }
        let transport = |e: reqwest::Error| {
            let kind = if e.is_timeout() {
                std::io::ErrorKind::TimedOut
            } else if e.is_connect() {
                std::io::ErrorKind::ConnectionRefused
            } else {
                std::io::ErrorKind::Other
            };
            fail(StoreError::io(
                format!("calling {target} at {}", self.url),
                std::io::Error::new(kind, e),
            ))
        };
        let mut response = request.body(body).send().await.map_err(transport)?;
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > self.config.response_bytes_max {
                return Err(fail(bad_answer(format!(
                    "{target} answered more than {} bytes",
                    self.config.response_bytes_max
                ))));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
            return serde_json::from_slice(bytes).map_err(|e| fail(bad_answer(format!("{target}: {e}"))));
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let type_name = parsed
            .as_ref()
            .and_then(|v| v.get("__type"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or(error_type);
        let message = parsed
            .as_ref()
            .and_then(|v| v.get("message").or_else(|| v.get("Message")))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned());
        match type_name {
            Some(name) => Err(Failure {
                code: ErrorCode::from_name(&name),
                error: to_store_error(&name, &message, ctx),
            }),
            None if status.is_server_error() => Err(fail(StoreError::io(
                format!("calling {target} at {}", self.url),
                std::io::Error::other(format!("HTTP {status}: {message}")),
            ))),
            None => Err(fail(bad_answer(format!("{target}: HTTP {status}: {message}")))),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        operation: &str,
        input: Value,
        ctx: ErrorContext<'_>,
    ) -> StoreResult<T> {
        Ok(self
            .call_raw(KINESIS_PREFIX, operation, &input, ctx, Duration::ZERO)
            .await?)
    }

    async fn extension<T: DeserializeOwned>(
        &self,
        operation: &str,
        input: Value,
        ctx: ErrorContext<'_>,
    ) -> StoreResult<T> {
        match self
            .call_raw(FRESHET_PREFIX, operation, &input, ctx, Duration::ZERO)
            .await
        {
            Ok(t) => Ok(t),
            Err(Failure {
                code: Some(ErrorCode::UnknownOperation),
                ..
            }) => Err(invalid(format!(
                "the Kinesis endpoint {} has no freshet extension {operation} (it is not a freshet server)",
                self.url
            ))),
            Err(f) => Err(f.error),
        }
    }

    fn ctx<'a>(stream: &'a StreamName) -> ErrorContext<'a> {
        ErrorContext {
            stream: Some(stream),
            ..Default::default()
        }
    }

    async fn summary(&self, name: &StreamName) -> StoreResult<wire::StreamDescriptionSummaryOut> {
        let out: wire::DescribeStreamSummaryOutput = self
            .call(
                "DescribeStreamSummary",
                json!({"StreamName": name}),
                Self::ctx(name),
            )
            .await?;
        let summary = out.stream_description_summary;
        bounded_insert(
            &mut self.arns.lock().unwrap_or_else(|p| p.into_inner()),
            name.clone(),
            summary.stream_arn.clone(),
        );
        Ok(summary)
    }

    async fn stream_arn(&self, name: &StreamName) -> StoreResult<String> {
        let cached = self
            .arns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        match cached {
            Some(arn) => Ok(arn),
            None => Ok(self.summary(name).await?.stream_arn),
        }
    }

    /// Poll until the stream is `ACTIVE` (or, with `gone`, no longer exists).
    async fn settle(&self, name: &StreamName, gone: bool) -> StoreResult<()> {
        let deadline = Instant::now() + self.config.settle_timeout;
        let mut pause = POLL_INTERVAL_MIN;
        loop {
            match self.summary(name).await {
                Ok(s) if !gone && s.stream_status == "ACTIVE" => return Ok(()),
                Err(StoreError::StreamNotFound(_)) if gone => return Ok(()),
                Err(e) if !gone => return Err(e),
                _ => {}
            }
            if Instant::now() + pause > deadline {
                return Err(StoreError::Internal(format!(
                    "stream {name} did not become {} within {:?}",
                    if gone { "deleted" } else { "ACTIVE" },
                    self.config.settle_timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.config.poll_interval_max);
        }
    }

    fn forget_stream(&self, name: &StreamName) {
        self.iterators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _), _| s != name);
        self.arns.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// A Kinesis iterator for `position` and the position it reads from (see the module docs for endpoints that do
    /// not report positions).
    async fn iterator_for(
        &self,
        name: &StreamName,
        shard: ShardId,
        position: StartingPosition,
    ) -> StoreResult<(String, SequenceNumber)> {
        let ctx = ErrorContext {
            stream: Some(name),
            shard: Some(shard),
            ..Default::default()
        };
        let mut input = json!({"StreamName": name, "ShardId": shard});
        let (kind, known) = match position {
            StartingPosition::TrimHorizon => ("TRIM_HORIZON", None),
            StartingPosition::Latest => ("LATEST", None),
            StartingPosition::AtSequenceNumber(s) => {
                input["StartingSequenceNumber"] = json!(s);
                ("AT_SEQUENCE_NUMBER", Some(s))
            }
            StartingPosition::AfterSequenceNumber(s) => {
                input["StartingSequenceNumber"] = json!(s);
                let next = s
                    .checked_next()
                    .ok_or_else(|| invalid(format!("no sequence number follows {s}")))?;
                ("AFTER_SEQUENCE_NUMBER", Some(next))
            }
            StartingPosition::AtTimestamp(at_ms) => {
                input["Timestamp"] = json!(wire::seconds(at_ms));
                ("AT_TIMESTAMP", None)
            }
        };
        input["ShardIteratorType"] = json!(kind);
        let out: wire::GetShardIteratorOutput = match self.call("GetShardIterator", input, ctx).await {
            Ok(out) => out,
            // Kinesis answers a missing stream as a missing shard ("Shard ... in stream ... does not exist"): ask
            // which one it is.
            Err(e @ StoreError::ShardNotFound { .. }) => {
                self.summary(name).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let next = match (out.freshet_position.as_deref(), known, position) {
            (Some(p), _, _) => seq(p)?,
            (None, Some(p), _) => p,
            (None, None, StartingPosition::TrimHorizon) => self.shard_start(name, shard).await?,
            // Not known until the first record (module docs).
            (None, None, _) => SequenceNumber::ZERO,
        };
        Ok((out.shard_iterator, next))
    }

    /// A shard's starting sequence number, from `ListShards`.
    async fn shard_start(&self, name: &StreamName, shard: ShardId) -> StoreResult<SequenceNumber> {
        let ctx = ErrorContext {
            stream: Some(name),
            shard: Some(shard),
            ..Default::default()
        };
        let mut token: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let input = match &token {
                Some(t) => json!({"NextToken": t, "MaxResults": 1000}),
                None => json!({"StreamName": name, "MaxResults": 1000}),
            };
            let out: wire::ListShardsOutput = self.call("ListShards", input, ctx).await?;
            for s in &out.shards {
                if shard_id(&s.shard_id)? == shard {
                    return seq(&s.sequence_number_range.starting_sequence_number);
                }
            }
            token = out.next_token;
            if token.is_none() {
                break;
            }
        }
        Err(StoreError::ShardNotFound {
            stream: name.to_string(),
            shard: shard.to_string(),
        })
    }

    /// The Kinesis iterator of a position: the cached one, or a new one.
    async fn token_for(&self, it: &ShardIterator) -> StoreResult<String> {
        let key = (it.stream.clone(), it.shard_id);
        if let Some(c) = self.iterators.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && c.next == it.next
            && c.at.elapsed() < ITERATOR_REUSE_MAX
        {
            return Ok(c.token.clone());
        }
        let Some(prev) = it.next.checked_prev() else {
            return Err(StoreError::ExpiredIterator(format!(
                "the Kinesis iterator of {} {} has no position yet (LATEST or AT_TIMESTAMP before its first record) \
                 and was not read for {} s; get a new iterator",
                it.stream,
                it.shard_id,
                ITERATOR_REUSE_MAX.as_secs()
            )));
        };
        let after = self
            .iterator_for(
                &it.stream,
                it.shard_id,
                StartingPosition::AfterSequenceNumber(prev),
            )
            .await;
        match after {
            Ok((token, _)) => Ok(token),
            // No record holds `prev` (the position is the shard's start or was given by AT_SEQUENCE_NUMBER), and
            // the endpoint wants a record's number there: read at the position instead.
            Err(StoreError::InvalidArgument(_)) => Ok(self
                .iterator_for(
                    &it.stream,
                    it.shard_id,
                    StartingPosition::AtSequenceNumber(it.next),
                )
                .await?
                .0),
            Err(e) => Err(e),
        }
    }

    fn remember(&self, stream: &StreamName, shard: ShardId, next: SequenceNumber, token: String) {
        bounded_insert(
            &mut self.iterators.lock().unwrap_or_else(|p| p.into_inner()),
            (stream.clone(), shard),
            CachedIterator {
                next,
                token,
                at: Instant::now(),
            },
        );
    }

    async fn get_records_once(
        &self,
        it: &ShardIterator,
        limits: ReadLimits,
        token: String,
    ) -> StoreResult<GetRecordsOutput> {
        let ctx = ErrorContext {
            stream: Some(&it.stream),
            shard: Some(it.shard_id),
            ..Default::default()
        };
        let mut input = json!({"ShardIterator": token, "Limit": limits.records_max});
        if limits.bytes_max != GET_BYTES_MAX {
            input["FreshetBytesMax"] = json!(limits.bytes_max);
        }
        let out: wire::GetRecordsOutput = self.call("GetRecords", input, ctx).await?;
        let mut records = Vec::with_capacity(out.records.len());
        for r in out.records {
            records.push(Record {
                sequence_number: seq(&r.sequence_number)?,
                partition_key: r.partition_key,
                data: r.data.0,
                arrival_ms: ms(r.approximate_arrival_timestamp)?,
            });
        }
        let next = match (&out.freshet_position, records.last()) {
            (Some(p), _) => seq(p)?,
            (None, Some(last)) => last.sequence_number.checked_next().ok_or_else(|| {
                bad_answer(format!(
                    "record {} has the largest sequence number",
                    last.sequence_number
                ))
            })?,
            (None, None) => it.next,
        };
        let next_iterator = match out.next_shard_iterator {
            Some(token) => {
                self.remember(&it.stream, it.shard_id, next, token);
                Some(ShardIterator { next, ..it.clone() })
            }
            None => {
                self.iterators
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(it.stream.clone(), it.shard_id));
                None
            }
        };
        let child_shards = match out.child_shards {
            Some(children) => children
                .iter()
                .map(|c| shard_id(&c.shard_id))
                .collect::<StoreResult<Vec<_>>>()?,
            // The shard ended, and the endpoint does not send `ChildShards` (kinesalite, AWS before 2020): its
            // children are the shards that name it as a parent.
            None if next_iterator.is_none() => self
                .describe_stream(&it.stream)
                .await?
                .shards
                .iter()
                .filter(|c| {
                    c.parent_shard_id == Some(it.shard_id) || c.adjacent_parent_shard_id == Some(it.shard_id)
                })
                .map(|c| c.shard_id)
                .collect(),
            None => Vec::new(),
        };
        Ok(GetRecordsOutput {
            records,
            next_iterator,
            millis_behind_latest: out.millis_behind_latest,
            child_shards,
        })
    }

    /// Long poll with freshet's extension. `Ok(None)`: the endpoint does not have it.
    async fn long_poll_wait(&self, it: &ShardIterator, timeout: Duration) -> StoreResult<Option<()>> {
        let deadline = Instant::now() + timeout;
        let ctx = ErrorContext {
            stream: Some(&it.stream),
            shard: Some(it.shard_id),
            ..Default::default()
        };
        loop {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(WAIT_PER_REQUEST_MAX);
            let input = json!({
                "StreamName": it.stream,
                "ShardId": it.shard_id,
                "Position": it.next.to_string(),
                "TimeoutMillis": wait.as_millis() as u64,
            });
            match self
                .call_raw::<wire::WaitForRecordsOutput>(FRESHET_PREFIX, "WaitForRecords", &input, ctx, wait)
                .await
            {
                Ok(out) if out.ready || Instant::now() >= deadline => return Ok(Some(())),
                Ok(_) => {}
                Err(Failure {
                    code: Some(ErrorCode::UnknownOperation),
                    ..
                }) => {
                    self.long_poll.store(false, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(f) => return Err(f.error),
            }
        }
    }
}

#[async_trait]
impl StreamStore for RemoteStore {
    async fn create_stream(&self, name: &StreamName, shard_count: u32) -> StoreResult<()> {
        let ctx = ErrorContext {
            stream: Some(name),
            creates: true,
            ..Default::default()
        };
        self.call::<wire::Empty>(
            "CreateStream",
            json!({"StreamName": name, "ShardCount": shard_count}),
            ctx,
        )
        .await?;
        self.forget_stream(name);
        self.settle(name, false).await
    }

    async fn delete_stream(&self, name: &StreamName) -> StoreResult<()> {
        self.call::<wire::Empty>(
            "DeleteStream",
            json!({"StreamName": name, "EnforceConsumerDeletion": true}),
            Self::ctx(name),
        )
        .await?;
        self.forget_stream(name);
        self.settle(name, true).await
    }

    async fn list_streams(&self) -> StoreResult<Vec<StreamName>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        let mut after: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let mut input = json!({"Limit": 1000});
            if let Some(t) = &token {
                input["NextToken"] = json!(t);
            } else if let Some(a) = &after {
                input["ExclusiveStartStreamName"] = json!(a);
            }
            let out: wire::ListStreamsOutput =
                self.call("ListStreams", input, ErrorContext::default()).await?;
            // Endpoints without NextToken page by the last name, as Kinesis did before NextToken.
            after = out.stream_names.last().cloned();
            for n in out.stream_names {
                names.push(StreamName::new(n).map_err(bad_answer)?);
            }
            token = out.next_token;
            if !out.has_more_streams || (token.is_none() && after.is_none()) {
                return Ok(names);
            }
        }
        Err(bad_answer(format!(
            "ListStreams did not end within {PAGES_MAX} pages"
        )))
    }

    async fn describe_stream(&self, name: &StreamName) -> StoreResult<StreamDescription> {
        let summary = self.summary(name).await?;
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let input = match &token {
                Some(t) => json!({"NextToken": t, "MaxResults": 1000}),
                None => json!({"StreamName": name, "MaxResults": 1000}),
            };
            let out: wire::ListShardsOutput = self.call("ListShards", input, Self::ctx(name)).await?;
            for s in out.shards {
                shards.push(ShardDescription {
                    shard_id: shard_id(&s.shard_id)?,
                    parent_shard_id: s.parent_shard_id.as_deref().map(shard_id).transpose()?,
                    adjacent_parent_shard_id: s
                        .adjacent_parent_shard_id
                        .as_deref()
                        .map(shard_id)
                        .transpose()?,
                    hash_key_range: HashKeyRange {
                        start: hash(&s.hash_key_range.starting_hash_key)?,
                        end: hash(&s.hash_key_range.ending_hash_key)?,
                    },
                    starting_sequence_number: seq(&s.sequence_number_range.starting_sequence_number)?,
                    ending_sequence_number: s
                        .sequence_number_range
                        .ending_sequence_number
                        .as_deref()
                        .map(seq)
                        .transpose()?,
                    // Kinesis does not describe when a shard opened or closed.
                    opened_ms: None,
                    closed_ms: None,
                });
            }
            token = out.next_token;
            if token.is_none() {
                return Ok(StreamDescription {
                    name: name.clone(),
                    status: status(&summary.stream_status),
                    retention_hours: summary.retention_period_hours,
                    retention_bytes_per_shard: summary.freshet_retention_bytes_per_shard,
                    created_ms: ms(summary.stream_creation_timestamp)?,
                    shards,
                });
            }
        }
        Err(bad_answer(format!(
            "ListShards did not end within {PAGES_MAX} pages"
        )))
    }

    async fn put_records(
        &self,
        name: &StreamName,
        records: Vec<PutRecord>,
    ) -> StoreResult<Vec<StoreResult<PutResult>>> {
        let count = records.len();
        let entries: Vec<Value> = records
            .iter()
            .map(|r| {
                let mut e = json!({"Data": STANDARD.encode(&r.data), "PartitionKey": r.partition_key});
                if let Some(k) = r.explicit_hash_key {
                    e["ExplicitHashKey"] = json!(k.to_string());
                }
                e
            })
            .collect();
        drop(records);
        let out: wire::PutRecordsOutput = self
            .call(
                "PutRecords",
                json!({"StreamName": name, "Records": entries}),
                Self::ctx(name),
            )
            .await?;
        if out.records.len() != count {
            return Err(bad_answer(format!(
                "PutRecords answered {} results for {count} records",
                out.records.len()
            )));
        }
        out.records
            .into_iter()
            .map(|r| match (r.shard_id, r.sequence_number, r.error_code) {
                (_, _, Some(code)) => Ok(Err(to_store_error(
                    &code,
                    r.error_message.as_deref().unwrap_or_default(),
                    Self::ctx(name),
                ))),
                (Some(shard), Some(sequence_number), None) => Ok(Ok(PutResult {
                    shard_id: shard_id(&shard)?,
                    sequence_number: seq(&sequence_number)?,
                })),
                _ => Err(bad_answer(
                    "a PutRecords result has neither a position nor an error",
                )),
            })
            .collect()
    }

    async fn get_shard_iterator(
        &self,
        name: &StreamName,
        shard: ShardId,
        position: StartingPosition,
    ) -> StoreResult<ShardIterator> {
        let (token, next) = self.iterator_for(name, shard, position).await?;
        self.remember(name, shard, next, token);
        Ok(ShardIterator {
            stream: name.clone(),
            shard_id: shard,
            next,
        })
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limits: ReadLimits,
    ) -> StoreResult<GetRecordsOutput> {
        limits.validate()?;
        let limits = ReadLimits {
            bytes_max: limits.bytes_max.clamp(1, GET_BYTES_MAX),
            ..limits
        };
        let token = self.token_for(iterator).await?;
        match self.get_records_once(iterator, limits, token).await {
            // A cached Kinesis iterator expired on the server: ask for a new one once.
            Err(StoreError::ExpiredIterator(_)) => {
                self.iterators
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(iterator.stream.clone(), iterator.shard_id));
                let token = self.token_for(iterator).await?;
                self.get_records_once(iterator, limits, token).await
            }
            other => other,
        }
    }

    /// Long-polls with freshet's `WaitForRecords` (at most 20 s per request, repeated until `timeout`); against
    /// an endpoint without it, polls `GetRecords` (one record) with a backoff from 50 ms up to
    /// `RemoteConfig::poll_interval_max`, until records are readable, the shard is closed, or `timeout` passes.
    async fn wait_for_records(&self, iterator: &ShardIterator, timeout: Duration) -> StoreResult<()> {
        if self.long_poll.load(Ordering::Relaxed) && self.long_poll_wait(iterator, timeout).await?.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut pause = POLL_INTERVAL_MIN;
        let probe = ReadLimits {
            records_max: 1,
            bytes_max: 1,
        };
        loop {
            let out = self.get_records(iterator, probe).await?;
            if !out.records.is_empty() || out.next_iterator.is_none() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(self.config.poll_interval_max);
        }
    }

    async fn split_shard(
        &self,
        name: &StreamName,
        shard: ShardId,
        new_starting_hash_key: u128,
    ) -> StoreResult<()> {
        let ctx = ErrorContext {
            stream: Some(name),
            shard: Some(shard),
            ..Default::default()
        };
        self.call::<wire::Empty>(
            "SplitShard",
            json!({
                "StreamName": name,
                "ShardToSplit": shard,
                "NewStartingHashKey": new_starting_hash_key.to_string(),
            }),
            ctx,
        )
        .await?;
        self.settle(name, false).await
    }

    async fn merge_shards(&self, name: &StreamName, shard: ShardId, adjacent: ShardId) -> StoreResult<()> {
        let ctx = ErrorContext {
            stream: Some(name),
            shard: Some(shard),
            ..Default::default()
        };
        self.call::<wire::Empty>(
            "MergeShards",
            json!({"StreamName": name, "ShardToMerge": shard, "AdjacentShardToMerge": adjacent}),
            ctx,
        )
        .await?;
        self.settle(name, false).await
    }

    async fn update_shard_count(&self, name: &StreamName, target: u32) -> StoreResult<()> {
        self.call::<wire::UpdateShardCountOutput>(
            "UpdateShardCount",
            json!({"StreamName": name, "TargetShardCount": target, "ScalingType": "UNIFORM_SCALING"}),
            Self::ctx(name),
        )
        .await?;
        self.settle(name, false).await
    }

    async fn set_retention_hours(&self, name: &StreamName, hours: u32) -> StoreResult<()> {
        if !(RETENTION_HOURS_MIN..=RETENTION_HOURS_MAX).contains(&hours) {
            return Err(invalid(format!(
                "retention must be {RETENTION_HOURS_MIN} to {RETENTION_HOURS_MAX} hours, not {hours}"
            )));
        }
        let current = self.summary(name).await?.retention_period_hours;
        let operation = if hours >= current {
            "IncreaseStreamRetentionPeriod"
        } else {
            "DecreaseStreamRetentionPeriod"
        };
        self.call::<wire::Empty>(
            operation,
            json!({"StreamName": name, "RetentionPeriodHours": hours}),
            Self::ctx(name),
        )
        .await?;
        Ok(())
    }

    async fn register_consumer(&self, name: &StreamName, consumer: &str) -> StoreResult<ConsumerDescription> {
        validate_consumer_name(consumer)?;
        let arn = self.stream_arn(name).await?;
        let ctx = ErrorContext {
            stream: Some(name),
            consumer: Some(consumer),
            creates: true,
            ..Default::default()
        };
        let out: wire::RegisterStreamConsumerOutput = self
            .call(
                "RegisterStreamConsumer",
                json!({"StreamARN": arn, "ConsumerName": consumer}),
                ctx,
            )
            .await?;
        Ok(ConsumerDescription {
            name: out.consumer.consumer_name,
            created_ms: ms(out.consumer.consumer_creation_timestamp)?,
        })
    }

    async fn deregister_consumer(&self, name: &StreamName, consumer: &str) -> StoreResult<()> {
        let arn = self.stream_arn(name).await?;
        let ctx = ErrorContext {
            stream: Some(name),
            consumer: Some(consumer),
            ..Default::default()
        };
        self.call::<wire::Empty>(
            "DeregisterStreamConsumer",
            json!({"StreamARN": arn, "ConsumerName": consumer}),
            ctx,
        )
        .await?;
        Ok(())
    }

    async fn list_consumers(&self, name: &StreamName) -> StoreResult<Vec<ConsumerDescription>> {
        let arn = self.stream_arn(name).await?;
        let mut consumers = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let mut input = json!({"StreamARN": arn, "MaxResults": 1000});
            if let Some(t) = &token {
                input["NextToken"] = json!(t);
            }
            let out: wire::ListStreamConsumersOutput =
                self.call("ListStreamConsumers", input, Self::ctx(name)).await?;
            for c in out.consumers {
                consumers.push(ConsumerDescription {
                    name: c.consumer_name,
                    created_ms: ms(c.consumer_creation_timestamp)?,
                });
            }
            token = out.next_token;
            if token.is_none() {
                return Ok(consumers);
            }
        }
        Err(bad_answer(format!(
            "ListStreamConsumers did not end within {PAGES_MAX} pages"
        )))
    }

    async fn checkpoints(
        &self,
        name: &StreamName,
        consumer: &str,
    ) -> StoreResult<BTreeMap<ShardId, SequenceNumber>> {
        let ctx = ErrorContext {
            stream: Some(name),
            consumer: Some(consumer),
            ..Default::default()
        };
        let out: wire::GetCheckpointsOutput = self
            .extension(
                "GetCheckpoints",
                json!({"StreamName": name, "ConsumerName": consumer}),
                ctx,
            )
            .await?;
        out.checkpoints
            .iter()
            .map(|c| Ok((shard_id(&c.shard_id)?, seq(&c.sequence_number)?)))
            .collect()
    }

    async fn checkpoint(
        &self,
        name: &StreamName,
        consumer: &str,
        shard: ShardId,
        sequence_number: SequenceNumber,
    ) -> StoreResult<()> {
        let ctx = ErrorContext {
            stream: Some(name),
            shard: Some(shard),
            consumer: Some(consumer),
            ..Default::default()
        };
        self.extension::<wire::Empty>(
            "PutCheckpoint",
            json!({
                "StreamName": name,
                "ConsumerName": consumer,
                "ShardId": shard,
                "SequenceNumber": sequence_number,
            }),
            ctx,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(RemoteStore::new(RemoteConfig::new("http://127.0.0.1:4567")).is_ok());
        assert!(RemoteStore::new(RemoteConfig::new("https://kinesis.us-east-1.amazonaws.com")).is_ok());
        for bad in ["", "127.0.0.1:4567", "ftp://host/", "http://"] {
            assert!(
                matches!(
                    RemoteStore::new(RemoteConfig::new(bad)),
                    Err(StoreError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_signed_host_is_the_one_reqwest_sends() {
        let with_port = RemoteStore::new(RemoteConfig::new("http://127.0.0.1:4567")).unwrap();
        assert_eq!(with_port.host, "127.0.0.1:4567");
        let default_port =
            RemoteStore::new(RemoteConfig::new("https://kinesis.eu-west-1.amazonaws.com:443/")).unwrap();
        assert_eq!(default_port.host, "kinesis.eu-west-1.amazonaws.com");
    }

    #[test]
    fn credentials_do_not_print_their_secret() {
        let c = RemoteCredentials {
            access_key: "AKID".into(),
            secret: "very-secret".into(),
            session_token: Some("token".into()),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKID") && !shown.contains("very-secret") && !shown.contains("token"));
    }

    /// The client against the server, both in this crate, over a loopback socket: signed calls pass, a wrong
    /// secret is refused, records and positions round-trip. (boto3, the AWS CLI and the full contract are in the
    /// e2e tests.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signed_round_trip_over_loopback() {
        use std::sync::Arc;

        use crate::api::{self, ApiConfig};
        use crate::{Store, StoreConfig};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap();
        let config = ApiConfig {
            credentials: vec![("AKIDLOCAL".into(), "local-secret".into())],
            region: "eu-west-1".into(),
            ..ApiConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(
            listener,
            api::router(Arc::new(store.clone()), config),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = |secret: &str, region: &str| {
            let mut config = RemoteConfig::new(endpoint.clone());
            config.region = region.into();
            config.credentials = Some(RemoteCredentials {
                access_key: "AKIDLOCAL".into(),
                secret: secret.into(),
                session_token: None,
            });
            RemoteStore::new(config).unwrap()
        };
        let remote = client("local-secret", "eu-west-1");
        let s = StreamName::new("loop").unwrap();
        remote.create_stream(&s, 2).await.unwrap();
        let put = remote
            .put_records(&s, vec![PutRecord::new("a", "one"), PutRecord::new("a", "two")])
            .await
            .unwrap();
        let first = put[0].as_ref().unwrap();
        let it = remote
            .get_shard_iterator(&s, first.shard_id, StartingPosition::TrimHorizon)
            .await
            .unwrap();
        let out = remote.get_records(&it, ReadLimits::default()).await.unwrap();
        let data: Vec<&[u8]> = out.records.iter().map(|r| &r.data[..]).collect();
        assert_eq!(data, [&b"one"[..], &b"two"[..]]);
        assert_eq!(out.records[0].sequence_number, first.sequence_number);
        let next = out.next_iterator.unwrap();
        assert_eq!(Some(next.next), out.records[1].sequence_number.checked_next());
        assert_eq!(
            remote.describe_stream(&s).await.unwrap(),
            store.describe_stream(&s).await.unwrap()
        );

        for (secret, region) in [("wrong", "eu-west-1"), ("local-secret", "us-east-1")] {
            match client(secret, region).list_streams().await {
                Err(StoreError::InvalidArgument(m)) => {
                    assert!(m.contains("InvalidSignatureException"), "{m}")
                }
                other => panic!("{secret}/{region}: {other:?}"),
            }
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        store.shutdown().await;
    }
}
