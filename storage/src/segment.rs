//! Segment files: the on-disk format of a shard's log, and its recovery.
//!
//! # Layout
//!
//! ```text
//! <data-dir>/streams/<stream>/shards/<shard index:010>/<base sequence number:020>.seg
//! ```
//!
//! A shard's log is its segment files in order of base sequence number. Exactly one segment, the last, is
//! *active* (appended to); the others are *sealed* and never change again until retention deletes them whole.
//! Every record in a segment has a sequence number `>= base`; a segment may be empty.
//!
//! # Segment format
//!
//! ```text
//! header:  b"FRSHSEG1"                                 8 bytes
//! frame*:  body_len: u32 LE | crc32c(body): u32 LE | body
//! body:    sequence_number: u64 LE | arrival_ms: i64 LE | partition_key_len: u16 LE
//!          | partition_key (UTF-8) | data
//! ```
//!
//! # Invariants
//!
//! - Within a segment, and across the segments of a shard, sequence numbers strictly increase and
//!   arrival times never decrease.
//! - Bytes up to a segment's *durable length* are whole frames that were fsync'd (policy `always`) before
//!   any append covering them was acknowledged.
//! - Recovery ([`scan`]) keeps whole, checksummed frames only. Bytes after the last whole frame of the active
//!   segment are a torn tail (a crash mid-write) and are truncated. A bad frame that is followed by good
//!   frames is corruption, not a torn tail: it is reported and skipped, never returned as data, and the good
//!   frames after it are kept.

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes};

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"FRSHSEG1";
pub const HEADER_BYTES: u64 = MAGIC.len() as u64;
/// Bytes before the body: length + checksum.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Fixed part of the body: sequence number + arrival time + key length.
pub const BODY_FIXED_BYTES: usize = 8 + 8 + 2;
/// A body can never be larger than this (the record ceiling plus the largest key, with room to spare);
/// a length field above it is garbage.
pub const BODY_BYTES_MAX: usize = crate::types::RECORD_BYTES_MAX_CEILING + 4096;

/// The file name of the segment whose first sequence number is `base`.
pub fn file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// The base sequence number of a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Bytes one record takes on disk.
pub fn frame_bytes(partition_key: &str, data_len: usize) -> usize {
    FRAME_HEADER_BYTES + BODY_FIXED_BYTES + partition_key.len() + data_len
}

/// Append one framed record to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, seq: u64, arrival_ms: i64, partition_key: &str, data: &[u8]) {
    let key = partition_key.as_bytes();
    debug_assert!(key.len() <= usize::from(u16::MAX));
    let body_len = BODY_FIXED_BYTES + key.len() + data.len();
    debug_assert!(body_len <= BODY_BYTES_MAX);
    let start = buf.len();
    buf.reserve(FRAME_HEADER_BYTES + body_len);
    buf.put_u32_le(body_len as u32);
    buf.put_u32_le(0); // checksum, filled below
    buf.put_u64_le(seq);
    buf.put_i64_le(arrival_ms);
    buf.put_u16_le(key.len() as u16);
    buf.put_slice(key);
    buf.put_slice(data);
    let crc = crc32c::crc32c(&buf[start + FRAME_HEADER_BYTES..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A frame decoded in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Bytes,
    /// Bytes the frame takes on disk.
    pub len: usize,
}

/// Why the bytes at some offset are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: maybe a torn write, maybe just the end of a read buffer.
    Incomplete { needed: usize },
    /// The bytes are there but are not a valid frame.
    Invalid(String),
}

/// Decode the frame at the start of `buf`. `backing` is the `Bytes` that `buf` is a prefix of, so record
/// data can be shared without a copy.
pub fn decode_frame(backing: &Bytes) -> Result<Frame, FrameError> {
    let buf = &backing[..];
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_BYTES,
        });
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if !(BODY_FIXED_BYTES..=BODY_BYTES_MAX).contains(&body_len) {
        return Err(FrameError::Invalid(format!(
            "frame length {body_len} out of bounds"
        )));
    }
    let len = FRAME_HEADER_BYTES + body_len;
    if buf.len() < len {
        return Err(FrameError::Incomplete { needed: len });
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let body = &buf[FRAME_HEADER_BYTES..len];
    if crc32c::crc32c(body) != crc {
        return Err(FrameError::Invalid("checksum mismatch".into()));
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let arrival_ms = i64::from_le_bytes(body[8..16].try_into().unwrap());
    let key_len = usize::from(u16::from_le_bytes(body[16..18].try_into().unwrap()));
    if BODY_FIXED_BYTES + key_len > body_len {
        return Err(FrameError::Invalid(format!(
            "partition key length {key_len} exceeds the frame"
        )));
    }
    let key_end = BODY_FIXED_BYTES + key_len;
    let partition_key = std::str::from_utf8(&body[BODY_FIXED_BYTES..key_end])
        .map_err(|_| FrameError::Invalid("partition key is not UTF-8".into()))?
        .to_owned();
    let data = backing.slice(FRAME_HEADER_BYTES + key_end..len);
    Ok(Frame {
        seq,
        arrival_ms,
        partition_key,
        data,
        len,
    })
}

/// One entry of a segment's sparse in-memory index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub offset: u64,
    pub arrival_ms: i64,
}

/// A byte range of a segment that held a bad frame and is skipped by reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptRange {
    pub start: u64,
    pub end: u64,
    pub reason: String,
}

/// What recovery learned about a segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Sparse index: the first frame, then one frame at least every `index_interval_bytes`.
    pub index: Vec<IndexEntry>,
    /// Offset just past the last whole frame: the length the file keeps.
    pub valid_len: u64,
    pub first: Option<IndexEntry>,
    pub last: Option<IndexEntry>,
    pub records: u64,
    pub corrupt: Vec<CorruptRange>,
    /// Set when bytes after `valid_len` were not whole frames (a torn tail).
    pub torn_tail_bytes: u64,
    /// False when the file lacked a whole header (a crash while creating it).
    pub header_ok: bool,
}

/// Scan a whole segment's bytes, checking every frame. `min_seq` is the smallest sequence number a frame
/// may have (the segment's base); a frame must also exceed its predecessor.
pub fn scan(contents: &Bytes, min_seq: u64, index_interval_bytes: u64) -> ScanResult {
    let mut result = ScanResult::default();
    if contents.len() < MAGIC.len() || &contents[..MAGIC.len()] != MAGIC {
        // A crash while the file was being created leaves it short; anything else is not ours.
        result.header_ok = false;
        result.valid_len = 0;
        if contents.len() >= MAGIC.len() {
            result.corrupt.push(CorruptRange {
                start: 0,
                end: contents.len() as u64,
                reason: "bad segment header".into(),
            });
        } else {
            result.torn_tail_bytes = contents.len() as u64;
        }
        return result;
    }
    result.header_ok = true;
    let total = contents.len();
    let mut offset = MAGIC.len();
    let mut next_min_seq = min_seq;
    let mut last_indexed: Option<u64> = None;
    while offset < total {
        match decode_frame(&contents.slice(offset..)) {
            Ok(frame) if frame.seq >= next_min_seq => {
                let entry = IndexEntry {
                    seq: frame.seq,
                    offset: offset as u64,
                    arrival_ms: frame.arrival_ms,
                };
                if last_indexed.is_none_or(|at| offset as u64 - at >= index_interval_bytes) {
                    result.index.push(entry);
                    last_indexed = Some(offset as u64);
                }
                result.first.get_or_insert(entry);
                result.last = Some(entry);
                result.records += 1;
                next_min_seq = frame.seq + 1;
                offset += frame.len;
                result.valid_len = offset as u64;
            }
            outcome => {
                let reason = match outcome {
                    Ok(frame) => format!("sequence number {} out of order", frame.seq),
                    Err(FrameError::Incomplete { needed }) => format!("incomplete frame of {needed} bytes"),
                    Err(FrameError::Invalid(why)) => why,
                };
                match resync(contents, offset + 1, next_min_seq) {
                    Some(good) => {
                        result.corrupt.push(CorruptRange {
                            start: offset as u64,
                            end: good as u64,
                            reason,
                        });
                        offset = good;
                    }
                    None => {
                        result.torn_tail_bytes = (total - offset) as u64;
                        break;
                    }
                }
            }
        }
    }
    if result.valid_len == 0 {
        result.valid_len = HEADER_BYTES;
    }
    result
}

/// The first offset at or after `from` where a whole, checksummed frame with a plausible sequence number
/// starts. Used to tell corruption in the middle (good frames follow) from a torn tail (nothing good follows).
fn resync(contents: &Bytes, from: usize, min_seq: u64) -> Option<usize> {
    let total = contents.len();
    let mut at = from;
    while at + FRAME_HEADER_BYTES + BODY_FIXED_BYTES <= total {
        let body_len = u32::from_le_bytes(contents[at..at + 4].try_into().unwrap()) as usize;
        let plausible = (BODY_FIXED_BYTES..=BODY_BYTES_MAX).contains(&body_len)
            && at + FRAME_HEADER_BYTES + body_len <= total
            && u64::from_le_bytes(contents[at + 8..at + 16].try_into().unwrap()) >= min_seq;
        if plausible && decode_frame(&contents.slice(at..)).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// The path of a segment in a shard directory.
pub fn path(shard_dir: &Path, base: u64) -> PathBuf {
    shard_dir.join(file_name(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, &str, &[u8])]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for (seq, key, data) in records {
            encode_frame(&mut buf, *seq, 1_000 + *seq as i64, key, data);
        }
        buf
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 123, "device-1", b"{\"t\":1}");
        assert_eq!(buf.len(), frame_bytes("device-1", 7));
        let frame = decode_frame(&Bytes::from(buf)).unwrap();
        assert_eq!(
            (frame.seq, frame.arrival_ms, frame.partition_key.as_str()),
            (7, 123, "device-1")
        );
        assert_eq!(&frame.data[..], b"{\"t\":1}");
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg"), None);
    }

    #[test]
    fn every_cut_recovers_to_last_whole_frame() {
        let records: Vec<(u64, String, Vec<u8>)> = (0..20)
            .map(|i| (10 + i, format!("k{i}"), vec![i as u8; (i * 7) as usize]))
            .collect();
        let refs: Vec<(u64, &str, &[u8])> = records
            .iter()
            .map(|(s, k, d)| (*s, k.as_str(), d.as_slice()))
            .collect();
        let whole = segment(&refs);
        // Frame boundaries.
        let mut ends = vec![HEADER_BYTES as usize];
        for (_, k, d) in &records {
            ends.push(ends.last().unwrap() + frame_bytes(k, d.len()));
        }
        for cut in 0..=whole.len() {
            let result = scan(&Bytes::copy_from_slice(&whole[..cut]), 10, 64);
            let expect_end = *ends.iter().rev().find(|&&e| e <= cut).unwrap_or(&0);
            if cut < HEADER_BYTES as usize {
                assert!(!result.header_ok);
                continue;
            }
            assert_eq!(result.valid_len as usize, expect_end, "cut at {cut}");
            assert!(result.corrupt.is_empty(), "cut at {cut}: {:?}", result.corrupt);
            let whole_frames = ends.iter().filter(|&&e| e <= cut).count() - 1;
            assert_eq!(result.records as usize, whole_frames);
        }
    }

    #[test]
    fn corruption_in_the_middle_is_reported_and_skipped() {
        let mut bytes = segment(&[(1, "a", b"one"), (2, "b", b"two"), (3, "c", b"three")]);
        let second = HEADER_BYTES as usize + frame_bytes("a", 3);
        bytes[second + FRAME_HEADER_BYTES + BODY_FIXED_BYTES + 1] ^= 0xff; // flip a data byte of record 2
        let result = scan(&Bytes::from(bytes.clone()), 1, 1);
        assert_eq!(result.records, 2);
        assert_eq!(result.corrupt.len(), 1);
        assert_eq!(result.corrupt[0].start as usize, second);
        assert_eq!(result.valid_len as usize, bytes.len());
        assert_eq!(result.last.unwrap().seq, 3);
    }
}
