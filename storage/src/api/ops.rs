//! The operations of the Kinesis API and of freshet's extensions: each parses its JSON input (a member of the
//! wrong type is a `SerializationException`), validates it against the Kinesis model (`ValidationException`),
//! calls the store and shapes the answer as Kinesis does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ApiState;
use super::error::{ApiError, ErrorCode};
use super::throttle::Throttle;
use super::token::{Token, TokenKind};
use super::wire::*;
use crate::error::StoreError;
use crate::hash::hash_key;
use crate::types::{
    GET_BYTES_MAX, GET_RECORDS_MAX, HashKeyRange, PARTITION_KEY_CHARS_MAX, PUT_RECORDS_MAX, PutRecord,
    ReadLimits, SEQUENCE_NUMBER_DIGITS_MAX, SHARDS_PER_STREAM_MAX, SequenceNumber, ShardDescription, ShardId,
    ShardIterator, StartingPosition, StreamDescription, StreamName, StreamStatus,
};

type Answer = Result<Vec<u8>, ApiError>;

/// How long iterators and page tokens stay valid (Kinesis: 5 minutes).
pub const TOKEN_TTL_MS: i64 = 300_000;
/// The longest long poll of `WaitForRecords`.
pub const WAIT_MILLIS_MAX: i64 = 20_000;
/// Shards of a new stream when the request names none (Kinesis on-demand starts with 4).
const DEFAULT_SHARD_COUNT: u32 = 4;

macro_rules! call {
    ($f:ident, $state:expr, $body:expr) => {
        match parse($body) {
            Ok(input) => $f($state, input).await.and_then(|out| to_json(&out)),
            Err(e) => Err(e),
        }
    };
}

/// A `Kinesis_20131202.<operation>`; `None` when there is no such operation.
pub(super) async fn kinesis(state: &ApiState, operation: &str, body: &[u8]) -> Option<Answer> {
    Some(match operation {
        "CreateStream" => call!(create_stream, state, body),
        "DeleteStream" => call!(delete_stream, state, body),
        "ListStreams" => call!(list_streams, state, body),
        "DescribeStream" => call!(describe_stream, state, body),
        "DescribeStreamSummary" => call!(describe_stream_summary, state, body),
        "ListShards" => call!(list_shards, state, body),
        "PutRecord" => call!(put_record, state, body),
        "PutRecords" => call!(put_records, state, body),
        "GetShardIterator" => call!(get_shard_iterator, state, body),
        "GetRecords" => call!(get_records, state, body),
        "SplitShard" => call!(split_shard, state, body),
        "MergeShards" => call!(merge_shards, state, body),
        "UpdateShardCount" => call!(update_shard_count, state, body),
        "IncreaseStreamRetentionPeriod" => call!(increase_retention, state, body),
        "DecreaseStreamRetentionPeriod" => call!(decrease_retention, state, body),
        "RegisterStreamConsumer" => call!(register_stream_consumer, state, body),
        "ListStreamConsumers" => call!(list_stream_consumers, state, body),
        "DeregisterStreamConsumer" => call!(deregister_stream_consumer, state, body),
        "DescribeStreamConsumer" => call!(describe_stream_consumer, state, body),
        _ => return None,
    })
}

/// A `Freshet_20261122.<operation>`; `None` when there is no such operation.
pub(super) async fn freshet(state: &ApiState, operation: &str, body: &[u8]) -> Option<Answer> {
    Some(match operation {
        "GetCheckpoints" => call!(get_checkpoints, state, body),
        "PutCheckpoint" => call!(put_checkpoint, state, body),
        "WaitForRecords" => call!(wait_for_records, state, body),
        _ => return None,
    })
}

// ---------------------------------------------------------------- helpers

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "The request body is not valid JSON"
        } else {
            "The request body does not match the operation's input"
        };
        ApiError::serialization(format!("{what}: {e}"))
    })
}

fn to_json<T: Serialize>(value: &T) -> Answer {
    serde_json::to_vec(value).map_err(|e| ApiError::new(ErrorCode::InternalFailure, e.to_string()))
}

fn required<T>(value: Option<T>, member: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::missing(member))
}

/// An optional integer member within the model's bounds.
fn bounded(value: Option<i64>, member: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match value {
        Some(v) if v < min => Err(ApiError::validation(
            member,
            &v.to_string(),
            &format!("must have value greater than or equal to {min}"),
        )),
        Some(v) if v > max => Err(ApiError::validation(
            member,
            &v.to_string(),
            &format!("must have value less than or equal to {max}"),
        )),
        other => Ok(other),
    }
}

/// A name member: 1–128 of `[a-zA-Z0-9_.-]` (streams, consumers, shard ids).
fn check_name(value: &str, member: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 128 {
        return Err(ApiError::validation(
            member,
            value,
            "must have length between 1 and 128",
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ApiError::validation(
            member,
            value,
            "must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
        ));
    }
    Ok(())
}

/// A decimal member of at most `digits_max` digits, without leading zeros.
fn check_decimal(value: &str, member: &str, digits_max: usize) -> Result<(), ApiError> {
    let ok = value == "0"
        || (!value.is_empty()
            && value.len() <= digits_max
            && !value.starts_with('0')
            && value.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(
            member,
            value,
            &format!(
                "must satisfy regular expression pattern: 0|([1-9]\\d{{0,{}}})",
                digits_max - 1
            ),
        ))
    }
}

fn sequence_number(value: &str, member: &str) -> Result<SequenceNumber, ApiError> {
    check_decimal(value, member, 129)?;
    value.parse().map_err(|_| {
        ApiError::invalid_argument(format!(
            "{member} {value} is not a sequence number of this stream (they have at most \
             {SEQUENCE_NUMBER_DIGITS_MAX} digits)"
        ))
    })
}

fn hash_key_of(value: &str, member: &str) -> Result<u128, ApiError> {
    check_decimal(value, member, 39)?;
    value.parse().map_err(|_| {
        ApiError::invalid_argument(format!(
            "{member} {value} is outside the hash key range 0 to 2^128 - 1"
        ))
    })
}

fn stream_status(status: StreamStatus) -> &'static str {
    match status {
        StreamStatus::Active => "ACTIVE",
        StreamStatus::Updating => "UPDATING",
        StreamStatus::Deleting => "DELETING",
    }
}

fn range_out(range: &HashKeyRange) -> HashKeyRangeOut {
    HashKeyRangeOut {
        starting_hash_key: range.start.to_string(),
        ending_hash_key: range.end.to_string(),
    }
}

fn shard_out(shard: &ShardDescription) -> ShardOut {
    ShardOut {
        shard_id: shard.shard_id.to_string(),
        parent_shard_id: shard.parent_shard_id.map(|s| s.to_string()),
        adjacent_parent_shard_id: shard.adjacent_parent_shard_id.map(|s| s.to_string()),
        hash_key_range: range_out(&shard.hash_key_range),
        sequence_number_range: SequenceNumberRangeOut {
            starting_sequence_number: shard.starting_sequence_number.to_string(),
            ending_sequence_number: shard.ending_sequence_number.map(|s| s.to_string()),
        },
    }
}

fn sorted_shards(desc: &StreamDescription) -> Vec<&ShardDescription> {
    let mut shards: Vec<&ShardDescription> = desc.shards.iter().collect();
    shards.sort_by_key(|s| s.shard_id);
    shards
}

fn provisioned() -> StreamModeOut {
    StreamModeOut {
        stream_mode: "PROVISIONED".into(),
    }
}

/// Parse `arn:<partition>:kinesis:<region>:<account>:stream/<name>`.
pub fn parse_stream_arn(arn: &str) -> Option<StreamName> {
    let resource = arn_resource(arn)?;
    let name = resource.strip_prefix("stream/")?;
    StreamName::new(name).ok()
}

/// Parse `arn:<partition>:kinesis:<region>:<account>:stream/<stream>/consumer/<name>:<creation epoch seconds>`.
pub fn parse_consumer_arn(arn: &str) -> Option<(StreamName, String, i64)> {
    let resource = arn_resource(arn)?;
    let rest = resource.strip_prefix("stream/")?;
    let (stream, rest) = rest.split_once("/consumer/")?;
    let (consumer, created) = rest.rsplit_once(':')?;
    crate::types::validate_consumer_name(consumer).ok()?;
    Some((
        StreamName::new(stream).ok()?,
        consumer.to_string(),
        created.parse().ok()?,
    ))
}

fn arn_resource(arn: &str) -> Option<&str> {
    if arn.len() > 2048 {
        return None;
    }
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts[..] {
        ["arn", partition, "kinesis", _region, _account, resource] if partition.starts_with("aws") => {
            Some(resource)
        }
        _ => None,
    }
}

impl ApiState {
    fn now(&self) -> i64 {
        self.config.clock.now_ms()
    }

    fn err(&self, e: StoreError) -> ApiError {
        ApiError::from_store(&e, &self.config.account_id)
    }

    fn stream_arn(&self, stream: &StreamName) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{stream}",
            self.config.region, self.config.account_id
        )
    }

    fn consumer_arn(&self, stream: &StreamName, consumer: &str, created_ms: i64) -> String {
        format!(
            "{}/consumer/{consumer}:{}",
            self.stream_arn(stream),
            created_ms.div_euclid(1000)
        )
    }

    /// The stream named by `StreamName` and/or `StreamARN`.
    fn stream(&self, name: Option<&str>, arn: Option<&str>) -> Result<StreamName, ApiError> {
        let by_name = match name {
            Some(n) => {
                check_name(n, "StreamName")?;
                Some(StreamName::new(n).map_err(|e| ApiError::invalid_argument(e.to_string()))?)
            }
            None => None,
        };
        let by_arn = match arn {
            Some(a) => Some(parse_stream_arn(a).ok_or_else(|| {
                ApiError::validation(
                    "StreamARN",
                    a,
                    "must satisfy regular expression pattern: arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+",
                )
            })?),
            None => None,
        };
        match (by_name, by_arn) {
            (Some(n), Some(a)) if n != a => Err(ApiError::invalid_argument(format!(
                "StreamName {n} and StreamARN {} name different streams",
                arn.unwrap_or_default()
            ))),
            (Some(n), _) => Ok(n),
            (None, Some(a)) => Ok(a),
            (None, None) => Err(ApiError::invalid_argument(
                "Either StreamName or StreamARN should be provided.",
            )),
        }
    }

    /// A shard id member; one that cannot name a shard of this store does not exist.
    fn shard(&self, value: Option<String>, member: &str, stream: &StreamName) -> Result<ShardId, ApiError> {
        let value = required(value, member)?;
        check_name(&value, member)?;
        value.parse().map_err(|_| {
            self.err(StoreError::ShardNotFound {
                stream: stream.to_string(),
                shard: value.clone(),
            })
        })
    }

    async fn describe(&self, stream: &StreamName) -> Result<StreamDescription, ApiError> {
        self.store.describe_stream(stream).await.map_err(|e| self.err(e))
    }

    fn seal(&self, kind: TokenKind, a: u64, b: u64, text: String) -> String {
        self.sealer.seal(&Token {
            kind,
            created_ms: self.now(),
            a,
            b,
            text,
        })
    }

    /// Open a page token, which expires like an iterator.
    fn open_page(&self, token: &str, kind: TokenKind) -> Result<Token, ApiError> {
        let t = self
            .sealer
            .open(token, kind)
            .map_err(|why| ApiError::invalid_argument(format!("NextToken {why}.")))?;
        if self.now() - t.created_ms > TOKEN_TTL_MS {
            return Err(ApiError::new(
                ErrorCode::ExpiredNextToken,
                "The NextToken has expired; list again from the start.",
            ));
        }
        Ok(t)
    }

    fn throttled(&self, stream: &StreamName, shard: ShardId) -> ApiError {
        ApiError::new(
            ErrorCode::ProvisionedThroughputExceeded,
            format!(
                "Rate exceeded for shard {shard} in stream {stream} under account {}.",
                self.config.account_id
            ),
        )
    }

    /// The open shard each hash key goes to (for write throttling; the store routes the records itself).
    async fn routes(&self, stream: &StreamName) -> Result<Vec<(HashKeyRange, ShardId)>, ApiError> {
        let desc = self.describe(stream).await?;
        let mut routes: Vec<(HashKeyRange, ShardId)> = desc
            .open_shards()
            .map(|s| (s.hash_key_range, s.shard_id))
            .collect();
        routes.sort_by_key(|(r, _)| r.start);
        Ok(routes)
    }
}

fn route(routes: &[(HashKeyRange, ShardId)], key: u128) -> Option<ShardId> {
    let i = routes.partition_point(|(r, _)| r.start <= key).checked_sub(1)?;
    routes.get(i).filter(|(r, _)| r.contains(key)).map(|(_, id)| *id)
}

/// Validate one record of a put.
fn record(
    data: Option<Blob>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    prefix: &str,
) -> Result<PutRecord, ApiError> {
    let data = required(data, &format!("{prefix}Data"))?;
    let partition_key = required(partition_key, &format!("{prefix}PartitionKey"))?;
    let chars = partition_key.chars().count();
    if chars == 0 || chars > PARTITION_KEY_CHARS_MAX {
        return Err(ApiError::validation(
            &format!("{prefix}PartitionKey"),
            &partition_key,
            &format!("must have length between 1 and {PARTITION_KEY_CHARS_MAX}"),
        ));
    }
    let explicit_hash_key = explicit_hash_key
        .map(|k| hash_key_of(&k, &format!("{prefix}ExplicitHashKey")))
        .transpose()?;
    Ok(PutRecord {
        partition_key,
        explicit_hash_key,
        data: data.0,
    })
}

fn record_key(r: &PutRecord) -> u128 {
    r.explicit_hash_key.unwrap_or_else(|| hash_key(&r.partition_key))
}

fn record_bytes(r: &PutRecord) -> usize {
    r.data.len() + r.partition_key.len()
}

fn admit_write(throttle: &Throttle, stream: &StreamName, shard: Option<ShardId>, bytes: usize) -> bool {
    shard.is_none_or(|shard| throttle.try_write(stream, shard, bytes))
}

// ---------------------------------------------------------------- streams

async fn create_stream(state: &ApiState, input: CreateStreamInput) -> Result<Empty, ApiError> {
    let name = required(input.stream_name, "StreamName")?;
    let stream = state.stream(Some(&name), None)?;
    let mode = input.stream_mode_details.and_then(|m| m.stream_mode);
    if let Some(mode) = &mode
        && mode != "PROVISIONED"
        && mode != "ON_DEMAND"
    {
        return Err(ApiError::validation(
            "StreamModeDetails.StreamMode",
            mode,
            "must satisfy enum value set: [PROVISIONED, ON_DEMAND]",
        ));
    }
    let count = bounded(input.shard_count, "ShardCount", 1, i64::from(i32::MAX))?;
    let count = match (count, mode.as_deref()) {
        (Some(c), _) => c,
        (None, Some("PROVISIONED")) => {
            return Err(ApiError::invalid_argument(
                "ShardCount is required for a stream in PROVISIONED mode.",
            ));
        }
        (None, _) => i64::from(DEFAULT_SHARD_COUNT),
    };
    if count > i64::from(SHARDS_PER_STREAM_MAX) {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("A stream has at most {SHARDS_PER_STREAM_MAX} shards; {count} were requested."),
        ));
    }
    state
        .store
        .create_stream(&stream, count as u32)
        .await
        .map_err(|e| state.err(e))?;
    Ok(Empty {})
}

async fn delete_stream(state: &ApiState, input: DeleteStreamInput) -> Result<Empty, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    if !input.enforce_consumer_deletion.unwrap_or(false) {
        let consumers = state
            .store
            .list_consumers(&stream)
            .await
            .map_err(|e| state.err(e))?;
        if !consumers.is_empty() {
            return Err(ApiError::new(
                ErrorCode::ResourceInUse,
                format!(
                    "Stream {stream} has {} registered consumers; deregister them or set EnforceConsumerDeletion.",
                    consumers.len()
                ),
            ));
        }
    }
    state
        .store
        .delete_stream(&stream)
        .await
        .map_err(|e| state.err(e))?;
    Ok(Empty {})
}

async fn list_streams(state: &ApiState, input: ListStreamsInput) -> Result<ListStreamsOutput, ApiError> {
    let limit = bounded(input.limit, "Limit", 1, 10_000)?.unwrap_or(100) as usize;
    let after = match (&input.next_token, &input.exclusive_start_stream_name) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_argument(
                "NextToken and ExclusiveStartStreamName cannot be provided together.",
            ));
        }
        (Some(token), None) => Some(state.open_page(token, TokenKind::StreamPage)?.text),
        (None, Some(name)) => {
            check_name(name, "ExclusiveStartStreamName")?;
            Some(name.clone())
        }
        (None, None) => None,
    };
    let mut names = state.store.list_streams().await.map_err(|e| state.err(e))?;
    names.sort();
    let mut page: Vec<StreamName> = names
        .into_iter()
        .filter(|n| after.as_deref().is_none_or(|a| n.as_str() > a))
        .take(limit + 1)
        .collect();
    let has_more = page.len() > limit;
    page.truncate(limit);
    let mut summaries = Vec::with_capacity(page.len());
    for name in &page {
        // A stream deleted since it was listed is left out of the summaries.
        if let Ok(desc) = state.store.describe_stream(name).await {
            summaries.push(StreamSummaryOut {
                stream_name: name.to_string(),
                stream_arn: state.stream_arn(name),
                stream_status: stream_status(desc.status).into(),
                stream_mode_details: Some(provisioned()),
                stream_creation_timestamp: Some(seconds(desc.created_ms)),
            });
        }
    }
    let next_token = match page.last() {
        Some(last) if has_more => Some(state.seal(TokenKind::StreamPage, 0, 0, last.to_string())),
        _ => None,
    };
    Ok(ListStreamsOutput {
        stream_names: page.iter().map(|n| n.to_string()).collect(),
        has_more_streams: has_more,
        next_token,
        stream_summaries: summaries,
    })
}

async fn describe_stream(
    state: &ApiState,
    input: DescribeStreamInput,
) -> Result<DescribeStreamOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let limit = bounded(input.limit, "Limit", 1, 10_000)?.unwrap_or(100) as usize;
    let after = match input.exclusive_start_shard_id {
        Some(id) => {
            check_name(&id, "ExclusiveStartShardId")?;
            id.parse::<ShardId>().ok()
        }
        None => None,
    };
    let desc = state.describe(&stream).await?;
    let shards: Vec<&ShardDescription> = sorted_shards(&desc)
        .into_iter()
        .filter(|s| after.is_none_or(|a| s.shard_id > a))
        .collect();
    Ok(DescribeStreamOutput {
        stream_description: StreamDescriptionOut {
            stream_name: stream.to_string(),
            stream_arn: state.stream_arn(&stream),
            stream_status: stream_status(desc.status).into(),
            stream_mode_details: provisioned(),
            has_more_shards: shards.len() > limit,
            shards: shards.into_iter().take(limit).map(shard_out).collect(),
            retention_period_hours: desc.retention_hours,
            stream_creation_timestamp: seconds(desc.created_ms),
            enhanced_monitoring: vec![EnhancedMetricsOut {
                shard_level_metrics: Vec::new(),
            }],
            encryption_type: "NONE".into(),
        },
    })
}

async fn describe_stream_summary(
    state: &ApiState,
    input: StreamInput,
) -> Result<DescribeStreamSummaryOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let desc = state.describe(&stream).await?;
    let consumers = state
        .store
        .list_consumers(&stream)
        .await
        .map_err(|e| state.err(e))?;
    Ok(DescribeStreamSummaryOutput {
        stream_description_summary: StreamDescriptionSummaryOut {
            stream_name: stream.to_string(),
            stream_arn: state.stream_arn(&stream),
            stream_status: stream_status(desc.status).into(),
            stream_mode_details: Some(provisioned()),
            retention_period_hours: desc.retention_hours,
            stream_creation_timestamp: seconds(desc.created_ms),
            enhanced_monitoring: vec![EnhancedMetricsOut {
                shard_level_metrics: Vec::new(),
            }],
            encryption_type: Some("NONE".into()),
            open_shard_count: desc.open_shards().count() as u32,
            consumer_count: Some(consumers.len() as u32),
            freshet_retention_bytes_per_shard: desc.retention_bytes_per_shard,
        },
    })
}

/// Which shards a ListShards page holds, carried by its NextToken as one number: the kind in the top byte, a
/// timestamp in milliseconds (for the timestamp kinds) below it.
const FILTER_ALL: u64 = 0;
const FILTER_OPEN: u64 = 1;
const FILTER_AT_MS: u64 = 2;
const FILTER_FROM_MS: u64 = 3;
const FILTER_KIND_SHIFT: u32 = 56;

fn shard_filter(kind: u64, at_ms: i64) -> u64 {
    (kind << FILTER_KIND_SHIFT) | (at_ms.max(0) as u64 & ((1 << FILTER_KIND_SHIFT) - 1))
}

/// Whether a shard passes the filter a ListShards call (or its token) carries.
fn shard_passes(filter: u64, shard: &ShardDescription) -> bool {
    let at_ms = (filter & ((1 << FILTER_KIND_SHIFT) - 1)) as i64;
    match filter >> FILTER_KIND_SHIFT {
        FILTER_OPEN => shard.is_open(),
        FILTER_AT_MS => shard.open_at(at_ms),
        FILTER_FROM_MS => shard.open_from(at_ms),
        _ => true,
    }
}

async fn list_shards(state: &ApiState, input: ListShardsInput) -> Result<ListShardsOutput, ApiError> {
    let max = bounded(input.max_results, "MaxResults", 1, 10_000)?.unwrap_or(1000) as usize;
    let (stream, mut after, filter) = match &input.next_token {
        Some(token) => {
            // Kinesis documents NextToken as excluding StreamName, but SDK paginators resend the first call's
            // members with it: accept them when they name the token's stream; the token carries the rest.
            let named = match (&input.stream_name, &input.stream_arn) {
                (None, None) => None,
                (name, arn) => Some(state.stream(name.as_deref(), arn.as_deref())?),
            };
            let t = state.open_page(token, TokenKind::ShardPage)?;
            let stream = StreamName::new(t.text).map_err(|e| ApiError::invalid_argument(e.to_string()))?;
            if let Some(named) = named
                && named != stream
            {
                return Err(ApiError::invalid_argument(format!(
                    "The NextToken is for stream {stream}, not {named}."
                )));
            }
            let after = u32::try_from(t.a)
                .ok()
                .and_then(|a| a.checked_sub(1))
                .map(ShardId);
            (stream, after, t.b)
        }
        None => {
            let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
            let mut after = match &input.exclusive_start_shard_id {
                Some(id) => {
                    check_name(id, "ExclusiveStartShardId")?;
                    id.parse::<ShardId>().ok()
                }
                None => None,
            };
            let mut filter = FILTER_ALL;
            if let Some(f) = &input.shard_filter {
                let kind = required(f.filter_type.as_deref(), "ShardFilter.Type")?;
                match kind {
                    "AFTER_SHARD_ID" => {
                        let id = required(f.shard_id.as_deref(), "ShardFilter.ShardId")?;
                        check_name(id, "ShardFilter.ShardId")?;
                        after = after.max(id.parse::<ShardId>().ok());
                    }
                    // Shards open now; open at (or since) a time; open at the trim horizon; everything kept.
                    "AT_LATEST" => filter = shard_filter(FILTER_OPEN, 0),
                    "AT_TIMESTAMP" | "FROM_TIMESTAMP" => {
                        let seconds = required(f.timestamp, "ShardFilter.Timestamp")?;
                        let kind = if kind == "AT_TIMESTAMP" {
                            FILTER_AT_MS
                        } else {
                            FILTER_FROM_MS
                        };
                        filter = shard_filter(kind, (seconds * 1000.0) as i64);
                    }
                    "AT_TRIM_HORIZON" => {
                        let desc = state.describe(&stream).await?;
                        let horizon = state.now() - i64::from(desc.retention_hours) * 3_600_000;
                        filter = shard_filter(FILTER_AT_MS, horizon);
                    }
                    "FROM_TRIM_HORIZON" => {}
                    other => {
                        return Err(ApiError::validation(
                            "ShardFilter.Type",
                            other,
                            "must satisfy enum value set: [AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, \
                             AT_LATEST, AT_TIMESTAMP, FROM_TIMESTAMP]",
                        ));
                    }
                }
            }
            (stream, after, filter)
        }
    };
    let desc = state.describe(&stream).await?;
    let mut shards: Vec<&ShardDescription> = sorted_shards(&desc)
        .into_iter()
        .filter(|s| after.is_none_or(|a| s.shard_id > a))
        .filter(|s| shard_passes(filter, s))
        .take(max + 1)
        .collect();
    let has_more = shards.len() > max;
    shards.truncate(max);
    after = shards.last().map(|s| s.shard_id);
    let next_token = match after {
        Some(last) if has_more => Some(state.seal(
            TokenKind::ShardPage,
            u64::from(last.0) + 1,
            filter,
            stream.to_string(),
        )),
        _ => None,
    };
    Ok(ListShardsOutput {
        shards: shards.into_iter().map(shard_out).collect(),
        next_token,
    })
}

// ---------------------------------------------------------------- records

async fn put_record(state: &ApiState, input: PutRecordInput) -> Result<PutRecordOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let record = record(input.data, input.partition_key, input.explicit_hash_key, "")?;
    if let Some(ordering) = &input.sequence_number_for_ordering {
        sequence_number(ordering, "SequenceNumberForOrdering")?;
    }
    if let Some(throttle) = &state.throttle {
        let shard = route(&state.routes(&stream).await?, record_key(&record));
        if !admit_write(throttle, &stream, shard, record_bytes(&record)) {
            return Err(state.throttled(&stream, shard.unwrap_or(ShardId(0))));
        }
    }
    let put = state
        .store
        .put_record(&stream, record)
        .await
        .map_err(|e| state.err(e))?;
    Ok(PutRecordOutput {
        shard_id: put.shard_id.to_string(),
        sequence_number: put.sequence_number.to_string(),
        encryption_type: Some("NONE".into()),
    })
}

async fn put_records(state: &ApiState, input: PutRecordsInput) -> Result<PutRecordsOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let entries = required(input.records, "Records")?;
    if entries.is_empty() || entries.len() > PUT_RECORDS_MAX {
        return Err(ApiError::validation(
            "Records",
            &format!("{} records", entries.len()),
            &format!("must have length between 1 and {PUT_RECORDS_MAX}"),
        ));
    }
    let mut records = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        records.push(record(
            e.data,
            e.partition_key,
            e.explicit_hash_key,
            &format!("Records.{}.member.", i + 1),
        )?);
    }
    let count = records.len();
    let mut results: Vec<Option<PutRecordsResultEntry>> = vec![None; count];
    let mut admitted = Vec::with_capacity(count);
    let mut positions = Vec::with_capacity(count);
    match &state.throttle {
        Some(throttle) => {
            let routes = state.routes(&stream).await?;
            for (i, r) in records.into_iter().enumerate() {
                let shard = route(&routes, record_key(&r));
                if admit_write(throttle, &stream, shard, record_bytes(&r)) {
                    admitted.push(r);
                    positions.push(i);
                } else {
                    let e = state.throttled(&stream, shard.unwrap_or(ShardId(0)));
                    results[i] = Some(PutRecordsResultEntry {
                        error_code: Some(e.code.name().into()),
                        error_message: Some(e.message),
                        ..Default::default()
                    });
                }
            }
        }
        None => {
            positions.extend(0..count);
            admitted = records;
        }
    }
    if !admitted.is_empty() {
        let outcomes = state
            .store
            .put_records(&stream, admitted)
            .await
            .map_err(|e| state.err(e))?;
        for (i, outcome) in positions.into_iter().zip(outcomes) {
            results[i] = Some(match outcome {
                Ok(put) => PutRecordsResultEntry {
                    sequence_number: Some(put.sequence_number.to_string()),
                    shard_id: Some(put.shard_id.to_string()),
                    ..Default::default()
                },
                Err(e) => {
                    let e = state.err(e);
                    PutRecordsResultEntry {
                        error_code: Some(e.code.name().into()),
                        error_message: Some(e.message),
                        ..Default::default()
                    }
                }
            });
        }
    }
    let records: Vec<PutRecordsResultEntry> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| PutRecordsResultEntry {
                error_code: Some(ErrorCode::InternalFailure.name().into()),
                error_message: Some("the store returned no result for this record".into()),
                ..Default::default()
            })
        })
        .collect();
    Ok(PutRecordsOutput {
        failed_record_count: records.iter().filter(|r| r.error_code.is_some()).count() as u64,
        records,
        encryption_type: Some("NONE".into()),
    })
}

async fn get_shard_iterator(
    state: &ApiState,
    input: GetShardIteratorInput,
) -> Result<GetShardIteratorOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let shard = state.shard(input.shard_id, "ShardId", &stream)?;
    let kind = required(input.shard_iterator_type, "ShardIteratorType")?;
    let starting = || -> Result<SequenceNumber, ApiError> {
        let s = input.starting_sequence_number.as_deref().ok_or_else(|| {
            ApiError::invalid_argument(format!("StartingSequenceNumber must be provided for {kind}."))
        })?;
        sequence_number(s, "StartingSequenceNumber")
    };
    let position = match kind.as_str() {
        "TRIM_HORIZON" => StartingPosition::TrimHorizon,
        "LATEST" => StartingPosition::Latest,
        "AT_SEQUENCE_NUMBER" => StartingPosition::AtSequenceNumber(starting()?),
        "AFTER_SEQUENCE_NUMBER" => StartingPosition::AfterSequenceNumber(starting()?),
        "AT_TIMESTAMP" => {
            let at = input
                .timestamp
                .ok_or_else(|| ApiError::invalid_argument("Timestamp must be provided for AT_TIMESTAMP."))?;
            let ms = millis(at)
                .ok_or_else(|| ApiError::invalid_argument(format!("Timestamp {at} is not a time.")))?;
            StartingPosition::AtTimestamp(ms)
        }
        other => {
            return Err(ApiError::validation(
                "ShardIteratorType",
                other,
                "must satisfy enum value set: [AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST, \
                 AT_TIMESTAMP]",
            ));
        }
    };
    let iterator = state
        .store
        .get_shard_iterator(&stream, shard, position)
        .await
        .map_err(|e| state.err(e))?;
    // The token holds a 64-bit position, which is what the embedded store's positions are.
    let next = iterator.next.to_u64().map_err(|e| state.err(e))?;
    Ok(GetShardIteratorOutput {
        shard_iterator: state.seal(
            TokenKind::Iterator,
            u64::from(iterator.shard_id.0),
            next,
            iterator.stream.to_string(),
        ),
        freshet_position: Some(iterator.next.to_string()),
    })
}

async fn get_records(state: &ApiState, input: GetRecordsInput) -> Result<GetRecordsOutput, ApiError> {
    let records_max =
        bounded(input.limit, "Limit", 1, GET_RECORDS_MAX as i64)?.unwrap_or(GET_RECORDS_MAX as i64);
    let bytes_max = bounded(
        input.freshet_bytes_max,
        "FreshetBytesMax",
        1,
        GET_BYTES_MAX as i64,
    )?
    .unwrap_or(GET_BYTES_MAX as i64);
    let token = required(input.shard_iterator, "ShardIterator")?;
    let t = state
        .sealer
        .open(&token, TokenKind::Iterator)
        .map_err(|why| ApiError::invalid_argument(format!("Invalid ShardIterator: it {why}.")))?;
    let now = state.now();
    if now - t.created_ms > TOKEN_TTL_MS {
        return Err(ApiError::new(
            ErrorCode::ExpiredIterator,
            format!(
                "Iterator expired. The iterator was created at time {} while right now it is {} which is further \
                 in the future than the tolerated delay of {TOKEN_TTL_MS} milliseconds.",
                t.created_ms, now
            ),
        ));
    }
    let stream = StreamName::new(t.text).map_err(|e| ApiError::invalid_argument(e.to_string()))?;
    let shard = ShardId(
        u32::try_from(t.a).map_err(|_| ApiError::invalid_argument("Invalid ShardIterator: bad shard."))?,
    );
    if let Some(arn) = input.stream_arn.as_deref() {
        let named = state.stream(None, Some(arn))?;
        if named != stream {
            return Err(ApiError::invalid_argument(format!(
                "The ShardIterator is for stream {stream}, not {named}."
            )));
        }
    }
    if let Some(throttle) = &state.throttle
        && !throttle.try_read(&stream, shard)
    {
        return Err(state.throttled(&stream, shard));
    }
    let iterator = ShardIterator {
        stream: stream.clone(),
        shard_id: shard,
        next: SequenceNumber::from_u64(t.b),
    };
    let limits = ReadLimits {
        records_max: records_max as usize,
        bytes_max: bytes_max as usize,
    };
    let out = state
        .store
        .get_records(&iterator, limits)
        .await
        .map_err(|e| state.err(e))?;
    if let Some(throttle) = &state.throttle {
        let bytes = out
            .records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum();
        throttle.charge_read(&stream, shard, bytes);
    }
    let child_shards = if out.child_shards.is_empty() {
        None
    } else {
        let desc = state.describe(&stream).await?;
        Some(
            out.child_shards
                .iter()
                .filter_map(|id| desc.shard(*id))
                .map(|child| ChildShardOut {
                    shard_id: child.shard_id.to_string(),
                    parent_shards: [child.parent_shard_id, child.adjacent_parent_shard_id]
                        .into_iter()
                        .flatten()
                        .map(|p| p.to_string())
                        .collect(),
                    hash_key_range: range_out(&child.hash_key_range),
                })
                .collect(),
        )
    };
    let next_iterator = match &out.next_iterator {
        Some(n) => Some(state.seal(
            TokenKind::Iterator,
            u64::from(n.shard_id.0),
            n.next.to_u64().map_err(|e| state.err(e))?,
            n.stream.to_string(),
        )),
        None => None,
    };
    Ok(GetRecordsOutput {
        records: out
            .records
            .into_iter()
            .map(|r| RecordOut {
                sequence_number: r.sequence_number.to_string(),
                approximate_arrival_timestamp: seconds(r.arrival_ms),
                data: Blob(r.data),
                partition_key: r.partition_key,
            })
            .collect(),
        freshet_position: out.next_iterator.as_ref().map(|n| n.next.to_string()),
        next_shard_iterator: next_iterator,
        millis_behind_latest: out.millis_behind_latest,
        child_shards,
    })
}

// ---------------------------------------------------------------- resharding and retention

async fn split_shard(state: &ApiState, input: SplitShardInput) -> Result<Empty, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let shard = state.shard(input.shard_to_split, "ShardToSplit", &stream)?;
    let key = required(input.new_starting_hash_key, "NewStartingHashKey")?;
    let key = hash_key_of(&key, "NewStartingHashKey")?;
    state
        .store
        .split_shard(&stream, shard, key)
        .await
        .map_err(|e| state.err(e))?;
    Ok(Empty {})
}

async fn merge_shards(state: &ApiState, input: MergeShardsInput) -> Result<Empty, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let shard = state.shard(input.shard_to_merge, "ShardToMerge", &stream)?;
    let adjacent = state.shard(input.adjacent_shard_to_merge, "AdjacentShardToMerge", &stream)?;
    state
        .store
        .merge_shards(&stream, shard, adjacent)
        .await
        .map_err(|e| state.err(e))?;
    Ok(Empty {})
}

async fn update_shard_count(
    state: &ApiState,
    input: UpdateShardCountInput,
) -> Result<UpdateShardCountOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let target = bounded(
        input.target_shard_count,
        "TargetShardCount",
        1,
        i64::from(i32::MAX),
    )?;
    let target = required(target, "TargetShardCount")?;
    let scaling = required(input.scaling_type, "ScalingType")?;
    if scaling != "UNIFORM_SCALING" {
        return Err(ApiError::validation(
            "ScalingType",
            &scaling,
            "must satisfy enum value set: [UNIFORM_SCALING]",
        ));
    }
    if target > i64::from(SHARDS_PER_STREAM_MAX) {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("A stream has at most {SHARDS_PER_STREAM_MAX} shards; {target} were requested."),
        ));
    }
    let current = state.describe(&stream).await?.open_shards().count() as u32;
    state
        .store
        .update_shard_count(&stream, target as u32)
        .await
        .map_err(|e| state.err(e))?;
    Ok(UpdateShardCountOutput {
        stream_name: stream.to_string(),
        current_shard_count: current,
        target_shard_count: target as u32,
        stream_arn: state.stream_arn(&stream),
    })
}

async fn change_retention(
    state: &ApiState,
    input: RetentionInput,
    increase: bool,
) -> Result<Empty, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let hours = bounded(input.retention_period_hours, "RetentionPeriodHours", 1, 1_000_000)?;
    let hours = required(hours, "RetentionPeriodHours")? as u32;
    let current = state.describe(&stream).await?.retention_hours;
    if increase && hours < current {
        return Err(ApiError::invalid_argument(format!(
            "Requested retention period ({hours} hours) for stream {stream} can not be shorter than existing \
             retention period ({current} hours). Use DecreaseRetentionPeriod API."
        )));
    }
    if !increase && hours > current {
        return Err(ApiError::invalid_argument(format!(
            "Requested retention period ({hours} hours) for stream {stream} can not be longer than existing \
             retention period ({current} hours). Use IncreaseRetentionPeriod API."
        )));
    }
    state
        .store
        .set_retention_hours(&stream, hours)
        .await
        .map_err(|e| state.err(e))?;
    Ok(Empty {})
}

async fn increase_retention(state: &ApiState, input: RetentionInput) -> Result<Empty, ApiError> {
    change_retention(state, input, true).await
}

async fn decrease_retention(state: &ApiState, input: RetentionInput) -> Result<Empty, ApiError> {
    change_retention(state, input, false).await
}

// ---------------------------------------------------------------- consumers

fn consumer_name(value: Option<String>) -> Result<String, ApiError> {
    let name = required(value, "ConsumerName")?;
    check_name(&name, "ConsumerName")?;
    Ok(name)
}

fn stream_of_arn(state: &ApiState, arn: Option<&str>) -> Result<StreamName, ApiError> {
    let arn = required(arn, "StreamARN")?;
    state.stream(None, Some(arn))
}

async fn register_stream_consumer(
    state: &ApiState,
    input: RegisterStreamConsumerInput,
) -> Result<RegisterStreamConsumerOutput, ApiError> {
    let stream = stream_of_arn(state, input.stream_arn.as_deref())?;
    let name = consumer_name(input.consumer_name)?;
    let c = state
        .store
        .register_consumer(&stream, &name)
        .await
        .map_err(|e| state.err(e))?;
    Ok(RegisterStreamConsumerOutput {
        consumer: ConsumerOut {
            consumer_arn: state.consumer_arn(&stream, &c.name, c.created_ms),
            consumer_name: c.name,
            consumer_status: "ACTIVE".into(),
            consumer_creation_timestamp: seconds(c.created_ms),
        },
    })
}

async fn list_stream_consumers(
    state: &ApiState,
    input: ListStreamConsumersInput,
) -> Result<ListStreamConsumersOutput, ApiError> {
    let max = bounded(input.max_results, "MaxResults", 1, 10_000)?.unwrap_or(100) as usize;
    let stream = stream_of_arn(state, input.stream_arn.as_deref())?;
    let after = match &input.next_token {
        Some(token) => {
            let t = state.open_page(token, TokenKind::ConsumerPage)?;
            let (of, last) = t.text.split_once('/').unwrap_or_default();
            if of != stream.as_str() {
                return Err(ApiError::invalid_argument("The NextToken is for another stream."));
            }
            Some(last.to_string())
        }
        None => None,
    };
    let mut consumers = state
        .store
        .list_consumers(&stream)
        .await
        .map_err(|e| state.err(e))?;
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut page: Vec<_> = consumers
        .into_iter()
        .filter(|c| after.as_deref().is_none_or(|a| c.name.as_str() > a))
        .take(max + 1)
        .collect();
    let has_more = page.len() > max;
    page.truncate(max);
    let next_token = match page.last() {
        Some(last) if has_more => {
            Some(state.seal(TokenKind::ConsumerPage, 0, 0, format!("{stream}/{}", last.name)))
        }
        _ => None,
    };
    Ok(ListStreamConsumersOutput {
        consumers: page
            .into_iter()
            .map(|c| ConsumerOut {
                consumer_arn: state.consumer_arn(&stream, &c.name, c.created_ms),
                consumer_name: c.name,
                consumer_status: "ACTIVE".into(),
                consumer_creation_timestamp: seconds(c.created_ms),
            })
            .collect(),
        next_token,
    })
}

/// The consumer named by `ConsumerARN`, or by `StreamARN` + `ConsumerName`, with its description.
async fn find_consumer(
    state: &ApiState,
    input: ConsumerInput,
) -> Result<(StreamName, crate::types::ConsumerDescription), ApiError> {
    let (stream, name, created_secs) = match (input.consumer_arn, input.stream_arn, input.consumer_name) {
        (Some(arn), _, _) => {
            let (stream, name, created) = parse_consumer_arn(&arn).ok_or_else(|| {
                ApiError::validation(
                    "ConsumerARN",
                    &arn,
                    "must satisfy regular expression pattern: \
                     ^(arn):aws.*:kinesis:.*:\\d{12}:.*stream\\/[a-zA-Z0-9_.-]+\\/consumer\\/[a-zA-Z0-9_.-]+:[0-9]+",
                )
            })?;
            (stream, name, Some(created))
        }
        (None, Some(arn), Some(name)) => {
            let stream = state.stream(None, Some(&arn))?;
            check_name(&name, "ConsumerName")?;
            (stream, name, None)
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "Provide either ConsumerARN, or both StreamARN and ConsumerName.",
            ));
        }
    };
    let consumers = state
        .store
        .list_consumers(&stream)
        .await
        .map_err(|e| state.err(e))?;
    consumers
        .into_iter()
        .find(|c| c.name == name && created_secs.is_none_or(|s| s == c.created_ms.div_euclid(1000)))
        .map(|c| (stream.clone(), c))
        .ok_or_else(|| {
            state.err(StoreError::ConsumerNotFound {
                stream: stream.to_string(),
                consumer: name.clone(),
            })
        })
}

async fn deregister_stream_consumer(state: &ApiState, input: ConsumerInput) -> Result<Empty, ApiError> {
    let (stream, consumer) = find_consumer(state, input).await?;
    state
        .store
        .deregister_consumer(&stream, &consumer.name)
        .await
        .map_err(|e| state.err(e))?;
    Ok(Empty {})
}

async fn describe_stream_consumer(
    state: &ApiState,
    input: ConsumerInput,
) -> Result<DescribeStreamConsumerOutput, ApiError> {
    let (stream, c) = find_consumer(state, input).await?;
    Ok(DescribeStreamConsumerOutput {
        consumer_description: ConsumerDescriptionOut {
            consumer_arn: state.consumer_arn(&stream, &c.name, c.created_ms),
            consumer_name: c.name,
            consumer_status: "ACTIVE".into(),
            consumer_creation_timestamp: seconds(c.created_ms),
            stream_arn: state.stream_arn(&stream),
        },
    })
}

// ---------------------------------------------------------------- freshet extensions

async fn get_checkpoints(
    state: &ApiState,
    input: GetCheckpointsInput,
) -> Result<GetCheckpointsOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let consumer = consumer_name(input.consumer_name)?;
    let checkpoints: BTreeMap<ShardId, SequenceNumber> = state
        .store
        .checkpoints(&stream, &consumer)
        .await
        .map_err(|e| state.err(e))?;
    Ok(GetCheckpointsOutput {
        checkpoints: checkpoints
            .into_iter()
            .map(|(shard, seq)| CheckpointOut {
                shard_id: shard.to_string(),
                sequence_number: seq.to_string(),
            })
            .collect(),
    })
}

async fn put_checkpoint(state: &ApiState, input: PutCheckpointInput) -> Result<Empty, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let consumer = consumer_name(input.consumer_name)?;
    let shard = state.shard(input.shard_id, "ShardId", &stream)?;
    let seq = required(input.sequence_number, "SequenceNumber")?;
    let seq = sequence_number(&seq, "SequenceNumber")?;
    state
        .store
        .checkpoint(&stream, &consumer, shard, seq)
        .await
        .map_err(|e| state.err(e))?;
    Ok(Empty {})
}

async fn wait_for_records(
    state: &ApiState,
    input: WaitForRecordsInput,
) -> Result<WaitForRecordsOutput, ApiError> {
    let stream = state.stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let shard = state.shard(input.shard_id, "ShardId", &stream)?;
    let position = required(input.position, "Position")?;
    let position = sequence_number(&position, "Position")?;
    let timeout =
        bounded(input.timeout_millis, "TimeoutMillis", 0, WAIT_MILLIS_MAX)?.unwrap_or(WAIT_MILLIS_MAX);
    let timeout = Duration::from_millis(timeout as u64);
    let iterator = ShardIterator {
        stream,
        shard_id: shard,
        next: position,
    };
    let started = Instant::now();
    state
        .store
        .wait_for_records(&iterator, timeout)
        .await
        .map_err(|e| state.err(e))?;
    Ok(WaitForRecordsOutput {
        ready: started.elapsed() < timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_parse_like_kinesis_writes_them() {
        assert_eq!(
            parse_stream_arn("arn:aws:kinesis:us-east-1:123456789012:stream/telemetry"),
            Some(StreamName::new("telemetry").unwrap())
        );
        assert_eq!(
            parse_stream_arn("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b-c_d"),
            Some(StreamName::new("a.b-c_d").unwrap())
        );
        for bad in [
            "",
            "telemetry",
            "arn:aws:s3:::bucket",
            "arn:aws:kinesis:us-east-1:1:stream/",
            "arn:aws:kinesis:us-east-1:1:stream/a b",
            "arn:aws:kinesis:us-east-1:1:stream/a/consumer/c:1",
        ] {
            assert_eq!(parse_stream_arn(bad), None, "{bad}");
        }
        assert_eq!(
            parse_consumer_arn("arn:aws:kinesis:us-east-1:1:stream/s/consumer/c-1:1763800000"),
            Some((StreamName::new("s").unwrap(), "c-1".to_string(), 1_763_800_000))
        );
        assert_eq!(
            parse_consumer_arn("arn:aws:kinesis:us-east-1:1:stream/s/consumer/c"),
            None
        );
    }

    #[test]
    fn decimal_members_follow_the_model() {
        assert_eq!(hash_key_of("0", "K").unwrap(), 0);
        assert_eq!(hash_key_of(&u128::MAX.to_string(), "K").unwrap(), u128::MAX);
        assert_eq!(hash_key_of("01", "K").unwrap_err().code, ErrorCode::Validation);
        assert_eq!(hash_key_of("-1", "K").unwrap_err().code, ErrorCode::Validation);
        assert_eq!(
            hash_key_of("999999999999999999999999999999999999999", "K")
                .unwrap_err()
                .code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(sequence_number("42", "S").unwrap(), SequenceNumber::from_u64(42));
        // AWS's 56 digits parse (the store then says whether it holds the number); past 76 the API refuses.
        let aws = "49590338271490256608559692538361571095921575989136588898";
        assert_eq!(sequence_number(aws, "S").unwrap().to_string(), aws);
        assert_eq!(
            sequence_number(&"9".repeat(77), "S").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            sequence_number(&"9".repeat(130), "S").unwrap_err().code,
            ErrorCode::Validation
        );
    }

    #[test]
    fn routing_finds_the_open_shard_of_a_key() {
        let ranges = crate::hash::uniform_ranges(4);
        let routes: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, ShardId(i as u32)))
            .collect();
        assert_eq!(route(&routes, 0), Some(ShardId(0)));
        assert_eq!(route(&routes, u128::MAX), Some(ShardId(3)));
        assert_eq!(route(&routes, ranges[2].start), Some(ShardId(2)));
        assert_eq!(route(&[], 5), None);
    }
}
