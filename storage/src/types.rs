//! The record vocabulary of the stream store, in AWS Kinesis's words: stream, shard, partition key,
//! hash key, sequence number, record, iterator.
//!
//! Everything persisted or sent uses explicitly sized integers. Sequence numbers are `u64` inside and
//! decimal strings on the wire, like Kinesis's; hash keys are `u128` inside and decimal strings on the wire.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, StoreResult};

/// Largest partition key, in Unicode characters (Kinesis: 256).
pub const PARTITION_KEY_CHARS_MAX: usize = 256;
/// Most records in one put (Kinesis PutRecords: 500).
pub const PUT_RECORDS_MAX: usize = 500;
/// Most records one read returns (Kinesis GetRecords: 10,000).
pub const GET_RECORDS_MAX: usize = 10_000;
/// Most bytes of record data one read returns (Kinesis GetRecords: 10 MiB).
pub const GET_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Default largest record (data + partition key), like Kinesis's 1 MiB.
pub const RECORD_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// The configurable ceiling for the largest record (Kinesis: 10 MiB).
pub const RECORD_BYTES_MAX_CEILING: usize = 10 * 1024 * 1024;
/// Retention bounds in hours (Kinesis: 24 h default, up to 8,760 h).
pub const RETENTION_HOURS_DEFAULT: u32 = 24;
pub const RETENTION_HOURS_MIN: u32 = 24;
pub const RETENTION_HOURS_MAX: u32 = 8_760;
/// Most shards in one stream (a sanity bound; each open shard has a writer thread).
pub const SHARDS_PER_STREAM_MAX: u32 = 1_024;

/// A stream name: 1–128 characters of `[a-zA-Z0-9_.-]`, as Kinesis allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

impl StreamName {
    pub fn new(name: impl Into<String>) -> StoreResult<Self> {
        let name = name.into();
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if name.is_empty() || name.len() > 128 || !valid_chars {
            return Err(StoreError::InvalidArgument(format!(
                "stream name {name:?} must be 1-128 characters of [a-zA-Z0-9_.-]"
            )));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StreamName {
    type Err = StoreError;
    fn from_str(s: &str) -> StoreResult<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for StreamName {
    type Error = StoreError;
    fn try_from(s: String) -> StoreResult<Self> {
        Self::new(s)
    }
}

impl From<StreamName> for String {
    fn from(n: StreamName) -> String {
        n.0
    }
}

/// A shard id. Shown as Kinesis shows it: `shardId-000000000007`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shardId-{:012}", self.0)
    }
}

impl FromStr for ShardId {
    type Err = StoreError;
    /// Accepts `shardId-000000000007` and, like Kinesis, the bare number suffix (`7`, `000000000007`).
    fn from_str(s: &str) -> StoreResult<Self> {
        let digits = s.strip_prefix("shardId-").unwrap_or(s);
        if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StoreError::InvalidArgument(format!(
                "shard id {s:?} is not of the form shardId-<digits>"
            )));
        }
        digits
            .parse::<u32>()
            .map(ShardId)
            .map_err(|_| StoreError::InvalidArgument(format!("shard id {s:?} is out of range")))
    }
}

impl TryFrom<String> for ShardId {
    type Error = StoreError;
    fn try_from(s: String) -> StoreResult<Self> {
        s.parse()
    }
}

impl From<ShardId> for String {
    fn from(s: ShardId) -> String {
        s.to_string()
    }
}

/// A sequence number: strictly increasing within a shard, unique across the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SequenceNumber(pub u64);

impl SequenceNumber {
    /// A number of the embedded store, which issues 64-bit sequence numbers.
    pub const fn from_u64(n: u64) -> Self {
        Self(n)
    }

    /// The number as a `u64`: every number the embedded store issues is one. Larger numbers (AWS Kinesis's have up
    /// to 56 digits) are refused with `InvalidArgument`.
    pub fn to_u64(self) -> StoreResult<u64> {
        Ok(self.0)
    }
}

impl From<u64> for SequenceNumber {
    fn from(n: u64) -> Self {
        Self::from_u64(n)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SequenceNumber {
    type Err = StoreError;
    fn from_str(s: &str) -> StoreResult<Self> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StoreError::InvalidArgument(format!(
                "sequence number {s:?} must be a decimal string of digits"
            )));
        }
        s.parse::<u64>()
            .map(SequenceNumber)
            .map_err(|_| StoreError::InvalidArgument(format!("sequence number {s:?} is out of range")))
    }
}

impl TryFrom<String> for SequenceNumber {
    type Error = StoreError;
    fn try_from(s: String) -> StoreResult<Self> {
        s.parse()
    }
}

impl From<SequenceNumber> for String {
    fn from(s: SequenceNumber) -> String {
        s.to_string()
    }
}

/// An inclusive range of 128-bit hash keys, owned by one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKeyRange {
    #[serde(with = "u128_decimal")]
    pub start: u128,
    #[serde(with = "u128_decimal")]
    pub end: u128,
}

impl HashKeyRange {
    pub const FULL: HashKeyRange = HashKeyRange {
        start: 0,
        end: u128::MAX,
    };

    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

/// Serde helper: a `u128` as a decimal string (JSON numbers cannot hold it).
pub mod u128_decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A record to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecord {
    pub partition_key: String,
    /// Overrides the MD5 of the partition key when choosing the shard.
    pub explicit_hash_key: Option<u128>,
    pub data: Bytes,
}

impl PutRecord {
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
        }
    }
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    pub shard_id: ShardId,
    pub sequence_number: SequenceNumber,
}

/// A record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub sequence_number: SequenceNumber,
    pub partition_key: String,
    pub data: Bytes,
    /// When the store accepted the record (Kinesis: ApproximateArrivalTimestamp), epoch millis.
    pub arrival_ms: i64,
}

/// Where a new iterator starts (Kinesis ShardIteratorType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
    AtSequenceNumber(SequenceNumber),
    AfterSequenceNumber(SequenceNumber),
    /// Epoch millis: the first record that arrived at or after this time.
    AtTimestamp(i64),
}

/// A position in one shard: the next read returns records with sequence numbers `>= next`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIterator {
    pub stream: StreamName,
    pub shard_id: ShardId,
    pub next: u64,
}

/// The answer to a read.
#[derive(Clone, Debug)]
pub struct GetRecordsOutput {
    pub records: Vec<Record>,
    /// `None` once a closed shard has been read to its end: continue with `child_shards`.
    pub next_iterator: Option<ShardIterator>,
    pub millis_behind_latest: u64,
    /// Set when the shard is closed and read to its end.
    pub child_shards: Vec<ShardId>,
}

/// Bounds of one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub records_max: usize,
    pub bytes_max: usize,
}

impl ReadLimits {
    /// A read asks for 1 to [`GET_RECORDS_MAX`] records (Kinesis's `Limit`).
    pub fn validate(&self) -> StoreResult<()> {
        if self.records_max == 0 || self.records_max > GET_RECORDS_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "limit must be between 1 and {GET_RECORDS_MAX}, not {}",
                self.records_max
            )));
        }
        Ok(())
    }
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            records_max: GET_RECORDS_MAX,
            bytes_max: GET_BYTES_MAX,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamStatus {
    Active,
    Updating,
    Deleting,
}

/// One shard as described (Kinesis Shard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDescription {
    pub shard_id: ShardId,
    pub parent_shard_id: Option<ShardId>,
    pub adjacent_parent_shard_id: Option<ShardId>,
    pub hash_key_range: HashKeyRange,
    pub starting_sequence_number: SequenceNumber,
    /// Set once the shard is closed by a split, merge or shard-count update.
    pub ending_sequence_number: Option<SequenceNumber>,
    /// When a reshard opened the shard (ms since the epoch); `None` for the shards a stream was created with (and in
    /// descriptions written before this was recorded). ListShards' timestamp filters use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_ms: Option<i64>,
    /// When a reshard closed the shard (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ms: Option<i64>,
}

impl ShardDescription {
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }

    /// Whether the shard was open at `at_ms`, as ListShards' `AT_TIMESTAMP` filter asks: opened at or before it and
    /// not closed before it. A closed shard whose closing time is unknown counts as open until now.
    pub fn open_at(&self, at_ms: i64) -> bool {
        self.opened_ms.is_none_or(|o| o <= at_ms) && self.open_from(at_ms)
    }

    /// Whether the shard was open at or after `at_ms` (ListShards' `FROM_TIMESTAMP`): still open, or closed then or later.
    pub fn open_from(&self, at_ms: i64) -> bool {
        self.is_open() || self.closed_ms.is_none_or(|c| c >= at_ms)
    }
}

/// A stream as described (Kinesis StreamDescription).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDescription {
    pub name: StreamName,
    pub status: StreamStatus,
    pub retention_hours: u32,
    /// Optional size bound per shard; the oldest whole segments go first when it is exceeded.
    pub retention_bytes_per_shard: Option<u64>,
    pub created_ms: i64,
    pub shards: Vec<ShardDescription>,
}

impl StreamDescription {
    pub fn open_shards(&self) -> impl Iterator<Item = &ShardDescription> {
        self.shards.iter().filter(|s| s.is_open())
    }

    pub fn shard(&self, id: ShardId) -> Option<&ShardDescription> {
        self.shards.iter().find(|s| s.shard_id == id)
    }
}

/// A named consumer of a stream (Kinesis stream consumer), with its durable per-shard checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerDescription {
    pub name: String,
    pub created_ms: i64,
}

/// Validate a consumer name (Kinesis: 1–128 of `[a-zA-Z0-9_.-]`).
pub fn validate_consumer_name(name: &str) -> StoreResult<()> {
    StreamName::new(name).map(|_| ()).map_err(|_| {
        StoreError::InvalidArgument(format!(
            "consumer name {name:?} must be 1-128 characters of [a-zA-Z0-9_.-]"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_print_and_parse_like_kinesis() {
        assert_eq!(ShardId(7).to_string(), "shardId-000000000007");
        assert_eq!("shardId-000000000007".parse::<ShardId>().unwrap(), ShardId(7));
        assert_eq!("7".parse::<ShardId>().unwrap(), ShardId(7));
        assert!("shard-7".parse::<ShardId>().is_err());
        assert!("shardId-".parse::<ShardId>().is_err());
    }

    #[test]
    fn sequence_numbers_are_strict_decimal() {
        assert_eq!("42".parse::<SequenceNumber>().unwrap(), SequenceNumber(42));
        for bad in ["", "-1", "4 2", "0x10", "99999999999999999999999"] {
            assert!(bad.parse::<SequenceNumber>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn stream_names_follow_kinesis_rules() {
        assert!(StreamName::new("telemetry_v1.a-b").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(StreamName::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
