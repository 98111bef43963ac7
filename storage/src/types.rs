//! The record vocabulary of the stream store, in AWS Kinesis's words: stream, shard, partition key,
//! hash key, sequence number, record, iterator.
//!
//! Everything persisted or sent uses explicitly sized integers. Sequence numbers are two base-10^38 `u128` digits
//! inside (the embedded store's are `u64`; AWS's have 56 decimal digits) and decimal strings on the wire, like
//! Kinesis's; hash keys are `u128` inside and decimal strings on the wire.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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
/// Most shards in one stream (a sanity bound; every open shard's writer is run by the store's writer thread).
pub const SHARDS_PER_STREAM_MAX: u32 = 1_024;

/// A stream name: 1–128 characters of `[a-zA-Z0-9_.-]`, as Kinesis allows. Shared, not copied, when cloned (the
/// gateway names a record's stream once per publish).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(Arc<str>);

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
        Ok(Self(name.into()))
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
        n.0.to_string()
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

/// Most significant decimal digits of a [`SequenceNumber`]: AWS Kinesis's have 56 (about 2^186); two base-10^38
/// digits hold 76 at no extra cost. (Kinesis's API pattern, `0|([1-9]\d{0,128})`, allows 129; no real number is that long.)
pub const SEQUENCE_NUMBER_DIGITS_MAX: usize = 2 * HALF_DIGITS;
/// Decimal digits per half of a [`SequenceNumber`].
const HALF_DIGITS: usize = 38;
/// `10^38`, the base of a [`SequenceNumber`]'s two halves (below `u128::MAX` ≈ 3.4·10^38).
const HALF_BASE: u128 = 10u128.pow(HALF_DIGITS as u32);

/// A sequence number: strictly increasing within a shard, unique across the stream.
///
/// Any Kinesis sequence number: the embedded store's (64-bit) and AWS Kinesis's (56-digit decimals), up to
/// [`SEQUENCE_NUMBER_DIGITS_MAX`] digits. Kept as `high · 10^38 + low` with both halves below `10^38`, so it is
/// `Copy`, the derived order on `(high, low)` is numeric order, and printing or parsing is two `u128` conversions.
/// (A 256-bit integer crate would do the same with a dependency and a binary↔decimal conversion for every print;
/// nothing here needs more arithmetic than ±1.) On the wire and in files it is a decimal string, like Kinesis's.
///
/// The embedded store does its arithmetic in `u64`: [`SequenceNumber::from_u64`] in, [`SequenceNumber::to_u64`]
/// out, which refuses larger numbers with `InvalidArgument`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SequenceNumber {
    // Field order matters: the derived `Ord` compares `high` first.
    high: u128,
    low: u128,
}

impl SequenceNumber {
    pub const ZERO: SequenceNumber = SequenceNumber { high: 0, low: 0 };
    /// The largest number held: [`SEQUENCE_NUMBER_DIGITS_MAX`] nines.
    pub const MAX: SequenceNumber = SequenceNumber {
        high: HALF_BASE - 1,
        low: HALF_BASE - 1,
    };

    /// A number of the embedded store, which issues 64-bit sequence numbers.
    pub const fn from_u64(n: u64) -> Self {
        Self {
            high: 0,
            low: n as u128,
        }
    }

    /// The number as a `u64`: every number the embedded store issues is one. Larger numbers (AWS Kinesis's have 56
    /// digits) are refused with `InvalidArgument`.
    pub fn to_u64(self) -> StoreResult<u64> {
        match (self.high, u64::try_from(self.low)) {
            (0, Ok(n)) => Ok(n),
            _ => Err(StoreError::InvalidArgument(format!(
                "sequence number {self} is above 64 bits: freshet's own store issues 64-bit sequence numbers \
                 (numbers this large come from AWS Kinesis)"
            ))),
        }
    }

    /// The next number, `None` above [`SequenceNumber::MAX`].
    pub fn checked_next(self) -> Option<Self> {
        if self.low + 1 < HALF_BASE {
            Some(Self {
                low: self.low + 1,
                ..self
            })
        } else if self.high + 1 < HALF_BASE {
            Some(Self {
                high: self.high + 1,
                low: 0,
            })
        } else {
            None
        }
    }

    /// The number before, `None` below zero.
    pub fn checked_prev(self) -> Option<Self> {
        match (self.high, self.low) {
            (0, 0) => None,
            (high, 0) => Some(Self {
                high: high - 1,
                low: HALF_BASE - 1,
            }),
            (high, low) => Some(Self { high, low: low - 1 }),
        }
    }
}

impl From<u64> for SequenceNumber {
    fn from(n: u64) -> Self {
        Self::from_u64(n)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.high == 0 {
            // The embedded store's numbers (every record it serves): u64 formatting is the cheaper one.
            match u64::try_from(self.low) {
                Ok(n) => fmt::Display::fmt(&n, f),
                Err(_) => fmt::Display::fmt(&self.low, f),
            }
        } else {
            f.pad(&format!("{}{:0width$}", self.high, self.low, width = HALF_DIGITS))
        }
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({self})")
    }
}

impl FromStr for SequenceNumber {
    type Err = StoreError;
    /// 1 or more ASCII digits (leading zeros allowed), at most [`SEQUENCE_NUMBER_DIGITS_MAX`] of them significant.
    fn from_str(s: &str) -> StoreResult<Self> {
        let shown = || {
            let mut head: String = s.chars().take(80).collect();
            if head.len() < s.len() {
                head.push_str("...");
            }
            head
        };
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StoreError::InvalidArgument(format!(
                "sequence number {:?} must be a decimal string of digits",
                shown()
            )));
        }
        let digits = s.trim_start_matches('0');
        if digits.len() > SEQUENCE_NUMBER_DIGITS_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "sequence number {:?} is out of range: it has {} digits, at most {SEQUENCE_NUMBER_DIGITS_MAX} are \
                 supported (AWS Kinesis's have 56)",
                shown(),
                digits.len()
            )));
        }
        let (high, low) = digits.split_at(digits.len().saturating_sub(HALF_DIGITS));
        // At most 38 digits each: below 10^38, so neither can overflow.
        let half = |d: &str| d.bytes().fold(0u128, |n, b| n * 10 + u128::from(b - b'0'));
        Ok(Self {
            high: half(high),
            low: half(low),
        })
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
    pub next: SequenceNumber,
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
        assert_eq!(
            "42".parse::<SequenceNumber>().unwrap(),
            SequenceNumber::from_u64(42)
        );
        assert_eq!(
            "0042".parse::<SequenceNumber>().unwrap(),
            SequenceNumber::from_u64(42)
        );
        assert_eq!("0".parse::<SequenceNumber>().unwrap(), SequenceNumber::ZERO);
        for bad in ["", "-1", "+1", "4 2", " 42", "0x10", "1e5", "4.2", "٤٢", "12a"] {
            match bad.parse::<SequenceNumber>() {
                Err(StoreError::InvalidArgument(m)) => assert!(m.contains("digits"), "{bad:?}: {m}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    /// A 56-digit number shaped like the ones AWS Kinesis (and kinesalite) issue.
    const AWS_56: &str = "49590338271490256608559692538361571095921575989136588898";

    #[test]
    fn sequence_numbers_round_trip_up_to_their_widest() {
        let nines_56 = "9".repeat(56);
        let nines_76 = "9".repeat(SEQUENCE_NUMBER_DIGITS_MAX);
        let one_then_75_zeros = format!("1{}", "0".repeat(75));
        let cases = [
            "0",
            "1",
            "18446744073709551615",                    // u64::MAX
            "18446744073709551616",                    // u64::MAX + 1
            "99999999999999999999999999999999999999",  // 38 nines: the low half full
            "100000000000000000000000000000000000000", // 10^38: the high half starts
            "100000000000000000000000000000000000001",
            "340282366920938463463374607431768211455", // u128::MAX
            AWS_56,
            &nines_56,
            &one_then_75_zeros,
            &nines_76,
        ];
        for text in cases {
            let n: SequenceNumber = text.parse().unwrap();
            assert_eq!(n.to_string(), text);
            assert_eq!(String::from(n), text);
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<SequenceNumber>(&json).unwrap(), n);
        }
        assert_eq!(nines_76.parse::<SequenceNumber>().unwrap(), SequenceNumber::MAX);
        assert_eq!(
            format!("{:>60}|", AWS_56.parse::<SequenceNumber>().unwrap()),
            format!("{AWS_56:>60}|")
        );
        assert_eq!(format!("{:?}", SequenceNumber::from_u64(7)), "SequenceNumber(7)");
    }

    #[test]
    fn sequence_numbers_too_long_are_refused() {
        let too_long = format!("1{}", "0".repeat(SEQUENCE_NUMBER_DIGITS_MAX));
        // Kinesis's pattern allows up to 129 digits; beyond 76 freshet says why instead of misreading them.
        for bad in [too_long, "9".repeat(77), "1".repeat(129), "7".repeat(100_000)] {
            match bad.parse::<SequenceNumber>() {
                Err(StoreError::InvalidArgument(m)) => {
                    assert!(m.contains("out of range") && m.contains("at most 76"), "{m}");
                    assert!(
                        m.len() < 300,
                        "the message repeats the whole input: {} bytes",
                        m.len()
                    );
                }
                other => panic!("{} digits gave {other:?}", bad.len()),
            }
        }
        // Leading zeros do not count.
        let padded = format!("{}{AWS_56}", "0".repeat(100));
        assert_eq!(padded.parse::<SequenceNumber>().unwrap().to_string(), AWS_56);
        assert!(serde_json::from_str::<SequenceNumber>(&format!("\"{}\"", "9".repeat(77))).is_err());
        assert!(
            serde_json::from_str::<SequenceNumber>("42").is_err(),
            "a JSON number is not a sequence number"
        );
    }

    #[test]
    fn sequence_numbers_order_as_numbers() {
        let texts = [
            "0",
            "9",
            "10",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "100000000000000000000000000000000000000",
            "100000000000000000000000000000000000001",
            "199999999999999999999999999999999999999",
            "200000000000000000000000000000000000000",
            "49590338271490256608559692538361571095921575989136588897",
            AWS_56,
            "49590338271490256608559692538361571095921575989136588899",
            "49590338271490256608559692538361571095921575989136588900",
            "100000000000000000000000000000000000000000000000000000000",
        ];
        let nums: Vec<SequenceNumber> = texts.iter().map(|t| t.parse().unwrap()).collect();
        for (i, a) in nums.iter().enumerate() {
            for (j, b) in nums.iter().enumerate() {
                assert_eq!(a.cmp(b), i.cmp(&j), "{a} vs {b}");
            }
        }
        // Against the u128 order, where both fit.
        let mut rng = 0x9e37_79b9_7f4a_7c15_u128;
        for _ in 0..2_000 {
            rng = rng.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(1);
            let (x, y) = (rng >> 3, rng.rotate_left(61) >> 3);
            let (a, b): (SequenceNumber, SequenceNumber) =
                (x.to_string().parse().unwrap(), y.to_string().parse().unwrap());
            assert_eq!(a.cmp(&b), x.cmp(&y), "{x} vs {y}");
            assert_eq!(a == b, x == y);
        }
    }

    #[test]
    fn sequence_numbers_step_across_the_halves() {
        let p = |s: &str| s.parse::<SequenceNumber>().unwrap();
        let low_full = p(&"9".repeat(38));
        let high_one = p(&format!("1{}", "0".repeat(38)));
        assert_eq!(low_full.checked_next(), Some(high_one));
        assert_eq!(high_one.checked_prev(), Some(low_full));
        assert_eq!(
            p(AWS_56).checked_next(),
            Some(p("49590338271490256608559692538361571095921575989136588899"))
        );
        assert_eq!(
            p(AWS_56).checked_prev(),
            Some(p("49590338271490256608559692538361571095921575989136588897"))
        );
        assert_eq!(SequenceNumber::MAX.checked_next(), None);
        assert_eq!(SequenceNumber::ZERO.checked_prev(), None);
        assert_eq!(
            SequenceNumber::ZERO.checked_next(),
            Some(SequenceNumber::from_u64(1))
        );
        assert_eq!(
            SequenceNumber::from_u64(u64::MAX)
                .checked_next()
                .unwrap()
                .to_string(),
            "18446744073709551616"
        );
    }

    #[test]
    fn sequence_numbers_leave_u64_only_on_request() {
        assert_eq!(SequenceNumber::from_u64(u64::MAX).to_u64().unwrap(), u64::MAX);
        assert_eq!(SequenceNumber::from(7u64).to_u64().unwrap(), 7);
        for big in ["18446744073709551616", AWS_56] {
            match big.parse::<SequenceNumber>().unwrap().to_u64() {
                Err(StoreError::InvalidArgument(m)) => {
                    assert!(m.contains(big) && m.contains("64 bits"), "{m}")
                }
                other => panic!("{big} gave {other:?}"),
            }
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
