//! One shard's log: its segments (see [`crate::segment`] for the format), the writer that appends to it with
//! group commit (run by the store's writer thread), and reads.
//!
//! # Write path
//!
//! Producers send append requests over each shard's bounded channel (that is the backpressure). The store's one
//! writer thread ([`crate::pool`]) takes every request a shard has waiting, up to [`GROUP_BYTES_MAX`], encodes them
//! into one buffer, writes it with one `write`, and with fsync policy `always` makes it durable (with `fdatasync`)
//! before it publishes the new durable length to readers and answers the requests. So:
//!
//! - an append that returned `Ok` is on disk (policy `always`);
//! - readers never see a record that a crash could take back (policy `always`), so a sequence number once read
//!   is never reused for another record;
//! - a failed write (disk full) is cut back to the last whole frame before anything is answered, and the store
//!   keeps working when space returns.
//!
//! With policies `interval` and `never`, records are visible and acknowledged once written to the page cache;
//! a crash of the machine (not of the process) may lose the most recent of them.
//!
//! # Zeroed room ahead (policy `always`)
//!
//! An `fdatasync` after a write that makes the file longer must also commit the new size to the file system's
//! journal: more I/O and more latency than one that only writes data into blocks the file already has. So with
//! policy `always` the writer keeps [`ZERO_AHEAD_BYTES`] of zeros written past the end of its records, writes each
//! group into that room (at its offset, not appending), and extends the room (with the next group's sync) only
//! when a group would not fit. Most syncs are then data only (measured in BENCHMARKS.md). The zeros are not part of
//! the log: the durable length never covers them, a clean stop and a roll cut them off, and after a crash
//! recovery cuts them off like any torn tail (quietly when the tail is all zeros).
//!
//! # Writes past the page cache (policy `always`)
//!
//! With policy `always` every group is synced at once, so the page cache only adds work: a copy into it, and the
//! sync's search for dirty pages. The writer therefore opens the active segment with `O_DIRECT` and writes whole
//! 4 KiB blocks from block-aligned memory: each group's write starts at the block its records' end falls in (the
//! bytes of that block before the end are kept in memory, read back from the file at open) and pads its last block
//! with zeros, which lie in the zeroed room anyway. `fdatasync` then only flushes the device's cache. Measured in
//! BENCHMARKS.md (ingest, twelfth session, "Writes past the page cache"). Where the file system refuses `O_DIRECT`
//! (the open fails) or the device refuses these writes (`EINVAL`: it wants larger blocks; nothing is written), the
//! writer writes through the page cache as with the other policies. Readers keep reading through the page cache;
//! Linux drops the cached pages a direct write covers, so they read what was written, but a reader catching up on
//! what was just written now reads it from the disk.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::error::{StoreError, StoreResult};
use crate::pool::WriterPool;
use crate::segment::{self, CorruptRange, IndexEntry};
use crate::types::{PutRecord, ReadLimits, Record, SequenceNumber, ShardId};
use crate::uring::Ring;

/// Most bytes of record data one group commit takes.
pub const GROUP_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Ring tags of zeroed-room writes: this plus the tag of the group written with them.
pub(crate) const ZEROS_TAG: usize = 1 << 30;
/// A read starts with a chunk this large; later chunks are sized from the frames read so far to what the read's
/// limits still allow (up to the max), so a read of a few records at the tip costs a small buffer, a long catch-up
/// read few syscalls, and neither reads far past what it returns (every byte read is kept alive by the records
/// sliced from it until they are dropped).
const READ_CHUNK_MIN_BYTES: usize = 64 * 1024;
const READ_CHUNK_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Zeros the writer keeps written past its last record with policy `always` (see the module docs).
pub const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;
/// What zeroed room is written from.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
/// The unit of `O_DIRECT` writes: offsets, lengths and memory are multiples of it.
const BLOCK: usize = 4096;

/// Open the active segment (whose records end at `active_len`) for writing at offsets; with `direct` (policy
/// `always`), bypassing the page cache with `O_DIRECT` where the file system takes it.
fn open_active(path: &Path, active_len: u64, direct: bool) -> StoreResult<(File, Option<Direct>)> {
    use std::os::unix::fs::OpenOptionsExt;
    if direct {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => return Ok((file, Some(Direct::load(path, active_len)?))),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no O_DIRECT; writing through the page cache")
            }
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::from_io(path, "opening segment for append", e))?;
    Ok((file, None))
}

/// `len` bytes of `v` starting at a block boundary in memory (`v` grows as needed).
fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if v.len() < len + BLOCK {
        v.resize(len + BLOCK, 0);
    }
    let at = v.as_ptr().align_offset(BLOCK);
    &mut v[at..at + len]
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn align_down(n: u64) -> u64 {
    n / BLOCK as u64 * BLOCK as u64
}

/// Writing with `O_DIRECT` (policy `always`): every write covers whole blocks, from the block holding the records'
/// end, so the bytes of that block before the end are kept here and written again with the next group.
struct Direct {
    /// The active segment's bytes from `align_down(active_len)` to `active_len`.
    tail: Vec<u8>,
    staging: Vec<u8>,
}

impl Direct {
    fn load(path: &Path, active_len: u64) -> StoreResult<Self> {
        let start = align_down(active_len);
        let mut tail = vec![0; (active_len - start) as usize];
        File::open(path)
            .and_then(|f| f.read_exact_at(&mut tail, start))
            .map_err(|e| StoreError::from_io(path, "reading the segment's last block", e))?;
        Ok(Self {
            tail,
            staging: Vec::new(),
        })
    }
}

/// When the writer calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy", content = "interval_ms")]
pub enum FsyncPolicy {
    /// Once per group, before any append of the group is acknowledged. The default.
    Always,
    /// At most once per interval; appends are acknowledged when written, not when synced.
    Interval(u64),
    /// Never; the OS decides. Appends are acknowledged when written.
    Never,
}

/// Settings of a shard's log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub fsync: FsyncPolicy,
    pub segment_bytes_max: u64,
    /// A segment older than this (by its first record) is sealed at the next append, so that age-based
    /// retention can delete whole segments of slow shards.
    pub segment_age_max_ms: i64,
    pub index_interval_bytes: u64,
    pub writer_queue_depth: usize,
    /// Submit the shards' writes together through io_uring where the kernel offers it (see [`crate::pool`]);
    /// `false` writes them one after the other, as where it does not.
    pub io_uring: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes_max: 64 * 1024 * 1024,
            segment_age_max_ms: 60 * 60 * 1000,
            index_interval_bytes: 64 * 1024,
            writer_queue_depth: 1024,
            io_uring: true,
        }
    }
}

/// A segment as the shard knows it in memory.
#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Readers see bytes up to here only.
    durable_len: u64,
    index: Vec<IndexEntry>,
    first: Option<IndexEntry>,
    last: Option<IndexEntry>,
    records: u64,
    corrupt: Vec<CorruptRange>,
}

/// The newest durable state of a shard, for readers waiting at the tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub last_seq: Option<u64>,
    pub last_arrival_ms: i64,
    pub closed: bool,
}

/// The part of a shard that readers, the writer and retention share.
#[derive(Debug)]
pub struct ShardCore {
    pub id: ShardId,
    pub dir: PathBuf,
    segments: Mutex<VecDeque<Segment>>,
    tip: watch::Sender<Tip>,
}

/// What the stream keeps per shard: the shared core and, while the shard is open, its writer.
#[derive(Debug)]
pub struct Shard {
    pub core: Arc<ShardCore>,
    writer: Option<mpsc::Sender<WriterMsg>>,
    /// Answers (or closes) once the writer thread has stopped this shard's writer.
    done: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
    /// The writer thread lives as long as any shard it writes.
    _pool: Option<Arc<WriterPool>>,
}

pub(crate) type AppendReply = oneshot::Sender<StoreResult<AppendOutcome>>;

/// Sequence numbers given to one append request, in request order, and their shared arrival time.
#[derive(Debug)]
pub struct AppendOutcome {
    pub first_seq: u64,
    pub count: usize,
    pub arrival_ms: i64,
}

impl AppendOutcome {
    pub fn seqs(&self) -> impl Iterator<Item = SequenceNumber> + '_ {
        (0..self.count as u64).map(|i| SequenceNumber::from_u64(self.first_seq + i))
    }
}

#[derive(Debug)]
pub(crate) enum WriterMsg {
    Append {
        records: Vec<PutRecord>,
        reply: AppendReply,
    },
    /// Seal the active segment (when it holds records) and start a new one.
    Roll { reply: oneshot::Sender<StoreResult<()>> },
}

fn fsync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::from_io(dir, "syncing directory", e))
}

/// Create an empty segment file with its header, durable (file and directory synced).
fn create_segment(dir: &Path, base: u64) -> StoreResult<(PathBuf, File)> {
    let path = segment::path(dir, base);
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        file.write_all(segment::MAGIC)?;
        file.sync_all()?;
        Ok(file)
    })();
    match result {
        Ok(file) => {
            fsync_dir(dir)?;
            Ok((path, file))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(StoreError::from_io(&path, "creating segment", e))
        }
    }
}

impl ShardCore {
    /// Create the directory and first segment of a new shard.
    pub fn create(id: ShardId, dir: PathBuf, base: u64) -> StoreResult<Arc<Self>> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::from_io(&dir, "creating shard directory", e))?;
        if let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
        let (path, file) = create_segment(&dir, base)?;
        let segment = Segment {
            base,
            path,
            file: Arc::new(file),
            durable_len: segment::HEADER_BYTES,
            index: Vec::new(),
            first: None,
            last: None,
            records: 0,
            corrupt: Vec::new(),
        };
        Ok(Self::with_segments(id, dir, VecDeque::from([segment]), false))
    }

    /// Open an existing shard: scan every segment, truncate torn tails, report corruption.
    pub fn recover(
        id: ShardId,
        dir: PathBuf,
        index_interval_bytes: u64,
        closed: bool,
    ) -> StoreResult<Arc<Self>> {
        let mut bases: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(|e| StoreError::from_io(&dir, "listing shard directory", e))?
            .filter_map(|entry| {
                entry
                    .ok()?
                    .file_name()
                    .to_str()
                    .and_then(segment::parse_file_name)
            })
            .collect();
        bases.sort_unstable();
        let mut segments = VecDeque::new();
        let mut min_seq = 0;
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let path = segment::path(&dir, base);
            let contents = Bytes::from(
                std::fs::read(&path).map_err(|e| StoreError::from_io(&path, "reading segment", e))?,
            );
            let scan = segment::scan(&contents, min_seq.max(base), index_interval_bytes);
            if !scan.header_ok && scan.corrupt.is_empty() {
                // A crash while creating the file. Only the newest segment can be in this state.
                if !is_last {
                    return Err(StoreError::Corrupt {
                        path,
                        offset: 0,
                        reason: "segment without header before the newest segment".into(),
                    });
                }
                tracing::warn!(path = %path.display(), "rewriting the header of a segment cut short by a crash");
                drop(create_segment(&dir, base)?);
            } else if !scan.header_ok {
                return Err(StoreError::Corrupt {
                    path,
                    offset: 0,
                    reason: "not a freshet segment".into(),
                });
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::from_io(&path, "opening segment", e))?;
            if scan.torn_tail_bytes > 0 && scan.header_ok {
                let tail = &contents[contents.len() - scan.torn_tail_bytes as usize..];
                if tail.iter().all(|b| *b == 0) {
                    // The writer's zeroed room ahead of its records (see the module docs), left by a crash.
                    tracing::debug!(
                        path = %path.display(),
                        kept_bytes = scan.valid_len,
                        cut_bytes = scan.torn_tail_bytes,
                        "cutting the zeroed room after the last record"
                    );
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        kept_bytes = scan.valid_len,
                        cut_bytes = scan.torn_tail_bytes,
                        "truncating a torn tail to the last whole record"
                    );
                }
                file.set_len(scan.valid_len)
                    .map_err(|e| StoreError::from_io(&path, "truncating segment", e))?;
                file.sync_all()
                    .map_err(|e| StoreError::from_io(&path, "syncing segment", e))?;
            }
            for bad in &scan.corrupt {
                tracing::error!(
                    path = %path.display(),
                    start = bad.start,
                    end = bad.end,
                    reason = %bad.reason,
                    "corrupt bytes in a segment; they are skipped and never returned as records"
                );
            }
            if let Some(last) = scan.last {
                min_seq = last.seq + 1;
            }
            segments.push_back(Segment {
                base,
                path,
                file: Arc::new(file),
                durable_len: scan.valid_len.max(segment::HEADER_BYTES),
                index: scan.index,
                first: scan.first,
                last: scan.last,
                records: scan.records,
                corrupt: scan.corrupt,
            });
        }
        if segments.is_empty() && !closed {
            return Err(StoreError::Corrupt {
                path: dir,
                offset: 0,
                reason: "open shard has no segment file".into(),
            });
        }
        Ok(Self::with_segments(id, dir, segments, closed))
    }

    fn with_segments(id: ShardId, dir: PathBuf, segments: VecDeque<Segment>, closed: bool) -> Arc<Self> {
        let last = segments.iter().rev().find_map(|s| s.last);
        let tip = Tip {
            last_seq: last.map(|l| l.seq),
            last_arrival_ms: last.map_or(0, |l| l.arrival_ms),
            closed,
        };
        Arc::new(Self {
            id,
            dir,
            segments: Mutex::new(segments),
            tip: watch::channel(tip).0,
        })
    }

    pub fn tip(&self) -> Tip {
        *self.tip.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Tip> {
        self.tip.subscribe()
    }

    /// The smallest sequence number this shard's segments can hold (the base of its newest segment), used to
    /// restore the stream's sequence counter on open.
    pub fn next_seq_floor(&self) -> u64 {
        let segments = self.segments.lock().unwrap();
        let newest_base = segments.back().map_or(0, |s| s.base);
        let last = segments
            .iter()
            .rev()
            .find_map(|s| s.last)
            .map_or(0, |l| l.seq + 1);
        newest_base.max(last)
    }

    /// The oldest sequence number still held, if any record is held.
    pub fn first_seq(&self) -> Option<u64> {
        self.segments
            .lock()
            .unwrap()
            .iter()
            .find_map(|s| s.first)
            .map(|f| f.seq)
    }

    /// Total bytes of segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.lock().unwrap().iter().map(|s| s.durable_len).sum()
    }

    pub fn corrupt_ranges(&self) -> usize {
        self.segments
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.corrupt.len())
            .sum()
    }

    fn mark_closed(&self) {
        self.tip.send_modify(|t| t.closed = true);
    }

    /// Read records with sequence numbers `>= from`, within `limits`. Returns the records and the next
    /// position. At least one record is returned when one is available, however large.
    pub fn read(&self, from: u64, limits: ReadLimits) -> StoreResult<(Vec<Record>, u64)> {
        let mut records = Vec::new();
        let mut data_bytes = 0usize;
        let mut next = from;
        // Taken before the segments: every record up to it lies within the durable lengths read below, because the
        // writer publishes lengths before the tip.
        let tip_last = self.tip().last_seq;
        let mut limited = false;
        let mut chunk_bytes = READ_CHUNK_MIN_BYTES;
        // On-disk bytes of the frames returned so far (data, key and framing).
        let mut frame_bytes = 0usize;
        'segments: loop {
            let located = {
                let segments = self.segments.lock().unwrap();
                // The newest segment whose base is <= next; or the oldest, if `next` was trimmed away.
                let i = segments.partition_point(|s| s.base <= next).saturating_sub(1);
                segments.get(i).map(|s| {
                    let start = s
                        .index
                        .partition_point(|e| e.seq <= next)
                        .checked_sub(1)
                        .map_or(segment::HEADER_BYTES, |j| s.index[j].offset);
                    let is_newest = i + 1 == segments.len();
                    let next_base = segments.get(i + 1).map(|n| n.base);
                    (
                        s.file.clone(),
                        s.path.clone(),
                        start,
                        s.durable_len,
                        s.corrupt.clone(),
                        is_newest,
                        next_base,
                    )
                })
            };
            let Some((file, path, mut offset, end, corrupt, is_newest, next_base)) = located else {
                break;
            };
            while offset < end {
                if let Some(bad) = corrupt.iter().find(|c| c.start <= offset && offset < c.end) {
                    offset = bad.end;
                    continue;
                }
                // Read up to the next corrupt range or the end, in chunks.
                let stop = corrupt
                    .iter()
                    .map(|c| c.start)
                    .filter(|&s| s > offset)
                    .min()
                    .unwrap_or(end)
                    .min(end);
                let want = ((stop - offset) as usize).min(chunk_bytes);
                let mut chunk = read_at(&file, &path, offset, want)?;
                let mut pos = 0usize;
                loop {
                    if pos == chunk.len() {
                        break;
                    }
                    let frame = match segment::decode_frame(&chunk.slice(pos..)) {
                        Ok(frame) => frame,
                        Err(segment::FrameError::Incomplete { needed })
                            if offset + (pos + needed) as u64 <= stop =>
                        {
                            // The frame straddles the chunk: read it whole.
                            chunk = read_at(&file, &path, offset + pos as u64, needed)?;
                            offset += pos as u64;
                            pos = 0;
                            continue;
                        }
                        Err(e) => {
                            return Err(StoreError::Corrupt {
                                path,
                                offset: offset + pos as u64,
                                reason: format!("{e:?}"),
                            });
                        }
                    };
                    pos += frame.len;
                    if frame.seq < next {
                        continue;
                    }
                    let size = frame.data.len() + frame.partition_key.len();
                    if !records.is_empty()
                        && (records.len() >= limits.records_max || data_bytes + size > limits.bytes_max)
                    {
                        limited = true;
                        break 'segments;
                    }
                    data_bytes += size;
                    frame_bytes += frame.len;
                    next = frame.seq + 1;
                    records.push(Record {
                        sequence_number: SequenceNumber::from_u64(frame.seq),
                        partition_key: frame.partition_key,
                        data: frame.data,
                        arrival_ms: frame.arrival_ms,
                    });
                    if records.len() >= limits.records_max || data_bytes >= limits.bytes_max {
                        limited = true;
                        break 'segments;
                    }
                }
                offset += chunk.len() as u64;
                chunk_bytes = next_chunk_bytes(&limits, records.len(), data_bytes, frame_bytes, chunk_bytes);
                // Room for the records still expected, at once: growing by doubling would copy the vector several
                // times and leave up to half of it unused, in memory a delivery keeps until its flush.
                let expected =
                    records_expected(&limits, records.len(), data_bytes, frame_bytes, end - offset);
                records.reserve_exact(expected);
            }
            match next_base {
                Some(base) if !is_newest => next = next.max(base),
                _ => break,
            }
        }
        if !limited && let Some(last) = tip_last {
            // Everything held was scanned: skip what retention or corruption removed before the tip.
            next = next.max(last + 1);
        }
        Ok((records, next))
    }

    /// The sequence number of the first record that arrived at or after `at_ms`, or `None` if none has.
    pub fn seq_at_timestamp(&self, at_ms: i64) -> StoreResult<Option<u64>> {
        let start = {
            let segments = self.segments.lock().unwrap();
            let Some(segment) = segments
                .iter()
                .find(|s| s.last.is_some_and(|l| l.arrival_ms >= at_ms))
            else {
                return Ok(None);
            };
            let j = segment.index.partition_point(|e| e.arrival_ms < at_ms);
            // Start at the last index entry before the time (or the segment's first record).
            j.checked_sub(1).map_or(segment.base, |j| segment.index[j].seq)
        };
        let mut from = start;
        loop {
            let (records, next) = self.read(
                from,
                ReadLimits {
                    records_max: 1_000,
                    bytes_max: 4 << 20,
                },
            )?;
            if let Some(r) = records.iter().find(|r| r.arrival_ms >= at_ms) {
                return r.sequence_number.to_u64().map(Some);
            }
            if records.is_empty() {
                return Ok(None);
            }
            from = next;
        }
    }

    /// Delete sealed segments whose every record is older than `cutoff_ms`, then, when `bytes_max` is set,
    /// the oldest sealed segments until the shard fits. Returns the segments deleted and whether the newest
    /// segment is expired too (so the caller should roll it). `keep_newest` keeps the newest segment even when
    /// expired (an open shard appends to it).
    pub fn expire(
        &self,
        cutoff_ms: i64,
        bytes_max: Option<u64>,
        keep_newest: bool,
    ) -> StoreResult<(usize, bool)> {
        let mut removed = Vec::new();
        let newest_expired;
        {
            let mut segments = self.segments.lock().unwrap();
            let expired = |s: &Segment| s.last.is_none_or(|l| l.arrival_ms < cutoff_ms);
            let keep = usize::from(keep_newest);
            while segments.len() > keep && segments.front().is_some_and(&expired) {
                removed.push(segments.pop_front().unwrap());
            }
            if let Some(max) = bytes_max {
                while segments.len() > keep.max(1)
                    && segments.iter().map(|s| s.durable_len).sum::<u64>() > max
                {
                    removed.push(segments.pop_front().unwrap());
                }
            }
            newest_expired = segments
                .back()
                .is_some_and(|s| s.last.is_some_and(|l| l.arrival_ms < cutoff_ms));
        }
        for segment in &removed {
            std::fs::remove_file(&segment.path)
                .map_err(|e| StoreError::from_io(&segment.path, "deleting expired segment", e))?;
        }
        if !removed.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok((removed.len(), newest_expired))
    }
}

/// The next chunk of a read that has returned `records` records of `data_bytes` (`frame_bytes` on disk): enough for
/// the records its limits still allow at the average frame size so far, plus one frame, within the chunk bounds.
/// Before any record (the chunk held only frames before the read's start), twice the `last` chunk.
fn next_chunk_bytes(
    limits: &ReadLimits,
    records: usize,
    data_bytes: usize,
    frame_bytes: usize,
    last: usize,
) -> usize {
    if records == 0 {
        return (last * 2).min(READ_CHUNK_MAX_BYTES);
    }
    let frame_avg = frame_bytes.div_ceil(records);
    (records_allowed(limits, records, data_bytes) + 1)
        .saturating_mul(frame_avg)
        .clamp(READ_CHUNK_MIN_BYTES, READ_CHUNK_MAX_BYTES)
}

/// How many more records a read that has returned `records` records (`data_bytes` of data, `frame_bytes` on disk)
/// may still return from the `left` bytes of its segment, at the average sizes so far (0 before any record).
fn records_expected(
    limits: &ReadLimits,
    records: usize,
    data_bytes: usize,
    frame_bytes: usize,
    left: u64,
) -> usize {
    if records == 0 {
        return 0;
    }
    let frame_avg = frame_bytes.div_ceil(records).max(1);
    let in_segment = usize::try_from(left / frame_avg as u64).unwrap_or(usize::MAX);
    records_allowed(limits, records, data_bytes).min(in_segment)
}

/// How many more records the limits allow a read that has returned `records` (> 0) records of `data_bytes`, at
/// their average size (plus the one that may cross the byte limit).
fn records_allowed(limits: &ReadLimits, records: usize, data_bytes: usize) -> usize {
    let data_avg = data_bytes.div_ceil(records).max(1);
    let by_count = limits.records_max.saturating_sub(records);
    let by_bytes = limits.bytes_max.saturating_sub(data_bytes) / data_avg + 1;
    by_count.min(by_bytes)
}

fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> StoreResult<Bytes> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| StoreError::from_io(path, "reading segment", e))?;
    Ok(Bytes::from(buf))
}

impl Shard {
    /// Hand an open shard's writer to the store's writer thread.
    pub fn open(
        core: Arc<ShardCore>,
        counter: Arc<AtomicU64>,
        clock: Arc<dyn Clock>,
        config: &LogConfig,
        pool: &Arc<WriterPool>,
    ) -> StoreResult<Self> {
        let (path, active_base, active_len, active_first_ms, last_ms) = {
            let segments = core.segments.lock().unwrap();
            let active = segments.back().expect("an open shard has a segment");
            let last_ms = segments
                .iter()
                .rev()
                .find_map(|s| s.last)
                .map_or(i64::MIN, |l| l.arrival_ms);
            (
                active.path.clone(),
                active.base,
                active.durable_len,
                active.first.map(|f| f.arrival_ms),
                last_ms,
            )
        };
        // Written at offsets (records at the durable length, zeros past them), not in append mode.
        let (file, direct) = open_active(&path, active_len, config.fsync == FsyncPolicy::Always)?;
        let (tx, rx) = mpsc::channel(config.writer_queue_depth.max(1));
        let writer = Writer {
            core: core.clone(),
            active: file,
            active_path: path,
            active_base,
            active_len,
            zeroed_end: active_len,
            active_first_ms,
            last_indexed: None,
            counter,
            clock,
            config: config.clone(),
            last_ms,
            unsynced: false,
            last_sync: Instant::now(),
            poisoned: None,
            buf: Vec::new(),
            direct,
            grew: false,
            zeros_later: false,
            zero_job: None,
            zeros_in_flight: 0,
        };
        let done = pool.register(writer, rx)?;
        Ok(Self {
            core,
            writer: Some(tx),
            done: Some(Mutex::new(done)),
            _pool: Some(pool.clone()),
        })
    }

    /// A closed shard: readable, not writable.
    pub fn closed(core: Arc<ShardCore>) -> Self {
        core.mark_closed();
        Self {
            core,
            writer: None,
            done: None,
            _pool: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.writer.is_some()
    }

    /// Queue an append. The returned receiver answers once the records are durable (or failed).
    pub async fn append(
        &self,
        records: Vec<PutRecord>,
    ) -> StoreResult<oneshot::Receiver<StoreResult<AppendOutcome>>> {
        let writer = self.writer.as_ref().ok_or_else(|| closed_error(self.core.id))?;
        let (reply, rx) = oneshot::channel();
        writer
            .send(WriterMsg::Append { records, reply })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(rx)
    }

    pub async fn roll(&self) -> StoreResult<()> {
        let writer = self.writer.as_ref().ok_or_else(|| closed_error(self.core.id))?;
        let (reply, rx) = oneshot::channel();
        writer
            .send(WriterMsg::Roll { reply })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Stop the writer after every queued append is written, and mark the shard closed for readers.
    /// Blocks until the writer thread has stopped this shard's writer.
    pub fn close(&mut self) {
        self.stop();
        self.core.mark_closed();
    }

    /// Stop the writer after every queued append is written, leaving the shard open on disk
    /// (used at shutdown).
    pub fn stop(&mut self) {
        self.writer = None; // the writer drains its queue, then stops
        if let Some(done) = self.done.take() {
            let _ = done.into_inner().map(|done| done.recv());
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn closed_error(id: ShardId) -> StoreError {
    StoreError::ResourceInUse(format!("shard {id} is closed"))
}

pub(crate) struct Writer {
    core: Arc<ShardCore>,
    active: File,
    active_path: PathBuf,
    /// The first sequence number of the active segment (its name).
    active_base: u64,
    active_len: u64,
    /// The active segment's file length: `active_len` plus the zeroed room ahead, if any.
    zeroed_end: u64,
    active_first_ms: Option<i64>,
    last_indexed: Option<u64>,
    counter: Arc<AtomicU64>,
    clock: Arc<dyn Clock>,
    config: LogConfig,
    last_ms: i64,
    unsynced: bool,
    last_sync: Instant,
    poisoned: Option<StoreError>,
    buf: Vec<u8>,
    direct: Option<Direct>,
    /// The prepared group's write (with its zeroed room) makes the file longer.
    grew: bool,
    /// Zeroed room is written through the ring with the group (set by the writer thread when it has a ring).
    pub(crate) zeros_later: bool,
    /// Zeroed room to write with the prepared group (offset, length), and the length of such a write under way.
    zero_job: Option<(u64, usize)>,
    zeros_in_flight: usize,
}

/// One shard's group in a cycle of the writer thread: encoded, waiting for its write and sync.
pub(crate) struct Prepared {
    group: Vec<(Vec<PutRecord>, AppendReply)>,
    first_seq: u64,
    next_seq: u64,
    count: usize,
    now: i64,
    index: Vec<IndexEntry>,
    last_indexed_saved: Option<u64>,
    /// The segment written to, and where the group's records start and end in it (set once written).
    segment_base: u64,
    start: u64,
    end: u64,
}

/// What a shard's write still needs before its group is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterWrite {
    /// Nothing (policies `interval` and `never`, or the writer synced by itself).
    Done,
    /// A flush of the device's cache; any `fdatasync` on the same file system issues one, as the group's write
    /// changed only data (see [`crate::pool`]).
    Flush,
    /// An `fdatasync` of its own file: the write made the file longer, so its new size must be committed too.
    SyncOwn,
}

impl Writer {
    pub(crate) fn id(&self) -> ShardId {
        self.core.id
    }

    pub(crate) fn file(&self) -> &File {
        &self.active
    }

    /// The policy `interval`'s next sync, when there is something to sync.
    pub(crate) fn sync_due(&self) -> Option<Instant> {
        match (self.unsynced, self.config.fsync) {
            (true, FsyncPolicy::Interval(ms)) => Some(self.last_sync + Duration::from_millis(ms)),
            _ => None,
        }
    }

    /// Drop the zeroed room past the last record (a clean stop or a roll), durably.
    fn cut_zeroed_room(&mut self) {
        if self.zeroed_end > self.active_len {
            let cut = self
                .active
                .set_len(self.active_len)
                .and_then(|()| self.active.sync_data());
            match cut {
                Ok(()) => self.zeroed_end = self.active_len,
                Err(e) => {
                    tracing::warn!(shard = %self.core.id, error = %e, "cannot cut the zeroed room; recovery will")
                }
            }
        }
    }

    /// A clean stop: whatever is written is synced and the zeroed room cut off.
    pub(crate) fn stop(&mut self) {
        self.sync_quietly();
        self.cut_zeroed_room();
    }

    pub(crate) fn sync_quietly(&mut self) {
        if self.unsynced {
            if let Err(e) = self.active.sync_data() {
                tracing::error!(shard = %self.core.id, error = %e, "fsync failed");
            }
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
    }

    pub(crate) fn roll_if_used(&mut self) -> StoreResult<()> {
        if self.active_len <= segment::HEADER_BYTES {
            return Ok(());
        }
        let base = self.counter.load(Ordering::SeqCst);
        self.roll(base)
    }

    /// Seal the active segment (without its zeroed room) and make a new one, starting at `base`.
    fn roll(&mut self, base: u64) -> StoreResult<()> {
        self.active
            .set_len(self.active_len)
            .and_then(|()| self.active.sync_data())
            .map_err(|e| StoreError::from_io(&self.active_path, "syncing segment", e))?;
        self.zeroed_end = self.active_len;
        let (path, read_file) = create_segment(&self.core.dir, base)?;
        let (append, direct) = open_active(
            &path,
            segment::HEADER_BYTES,
            self.config.fsync == FsyncPolicy::Always,
        )?;
        self.direct = direct;
        self.core.segments.lock().unwrap().push_back(Segment {
            base,
            path: path.clone(),
            file: Arc::new(read_file),
            durable_len: segment::HEADER_BYTES,
            index: Vec::new(),
            first: None,
            last: None,
            records: 0,
            corrupt: Vec::new(),
        });
        self.active = append;
        self.active_path = path;
        self.active_base = base;
        self.active_len = segment::HEADER_BYTES;
        self.zeroed_end = segment::HEADER_BYTES;
        self.active_first_ms = None;
        self.last_indexed = None;
        self.unsynced = false;
        Ok(())
    }

    /// Take sequence numbers for the group, roll when the segment is full or old, and encode the group ready for
    /// [`Writer::start_write`]. `None` when the group has been answered already (with an error).
    pub(crate) fn prepare(&mut self, group: Vec<(Vec<PutRecord>, AppendReply)>) -> Option<Prepared> {
        if let Some(err) = &self.poisoned {
            for (_, reply) in group {
                let _ = reply.send(Err(err.clone()));
            }
            return None;
        }
        let count: usize = group.iter().map(|(r, _)| r.len()).sum();
        let first_seq = self.counter.fetch_add(count as u64, Ordering::SeqCst);
        let now = self.clock.now_ms().max(self.last_ms);
        let estimate: usize = group
            .iter()
            .flat_map(|(r, _)| r)
            .map(|r| segment::frame_bytes(&r.partition_key, r.data.len()))
            .sum();
        let too_big = self.active_len + estimate as u64 > self.config.segment_bytes_max;
        let too_old = self
            .active_first_ms
            .is_some_and(|f| now - f >= self.config.segment_age_max_ms);
        if self.active_len > segment::HEADER_BYTES
            && (too_big || too_old)
            && let Err(e) = self.roll(first_seq)
        {
            for (_, reply) in group {
                let _ = reply.send(Err(e.clone()));
            }
            return None;
        }

        let last_indexed_saved = self.last_indexed;
        self.buf.clear();
        self.buf.reserve(estimate);
        let mut index = Vec::new();
        let mut seq = first_seq;
        for (records, _) in &group {
            for record in records {
                let offset = self.active_len + self.buf.len() as u64;
                if self
                    .last_indexed
                    .is_none_or(|at| offset - at >= self.config.index_interval_bytes)
                {
                    index.push(IndexEntry {
                        seq,
                        offset,
                        arrival_ms: now,
                    });
                    self.last_indexed = Some(offset);
                }
                segment::encode_frame(&mut self.buf, seq, now, &record.partition_key, &record.data);
                seq += 1;
            }
        }
        let end = self.active_len + self.buf.len() as u64;
        self.grew = false;
        if let Err(e) = self.zero_ahead(end) {
            // The room is an optimisation: without it (a nearly full disk) the group is written all the same.
            // Whatever zeros were written stay harmless; the room is made again from the records' end next time.
            tracing::debug!(shard = %self.core.id, error = %e, "no zeroed room ahead");
            self.zeroed_end = self.active_len;
        }
        if self.zeroed_end < end {
            self.grew = true; // the group's own write makes the file longer
        }
        if let Some(direct) = &mut self.direct {
            let head = direct.tail.len();
            let total = align_up((head + self.buf.len()) as u64) as usize;
            let block = aligned(&mut direct.staging, total);
            block[..head].copy_from_slice(&direct.tail);
            block[head..head + self.buf.len()].copy_from_slice(&self.buf);
            block[head + self.buf.len()..].fill(0);
        }
        Some(Prepared {
            group,
            first_seq,
            next_seq: seq,
            count,
            now,
            index,
            last_indexed_saved,
            segment_base: self.active_base,
            start: 0,
            end: 0,
        })
    }

    /// The prepared group's write: the file, the bytes and their offset.
    fn write_job(&mut self) -> (&File, &[u8], u64) {
        match &mut self.direct {
            Some(direct) => {
                let head = direct.tail.len();
                let total = align_up((head + self.buf.len()) as u64) as usize;
                (
                    &self.active,
                    aligned(&mut direct.staging, total),
                    align_down(self.active_len),
                )
            }
            None => (&self.active, &self.buf, self.active_len),
        }
    }

    /// Start the prepared group's write: a direct one through `ring` when there is one (its answer comes from the
    /// ring, tagged `tag`, with the buffer to give back through [`Writer::return_buffer`]), any other at once.
    pub(crate) fn start_write(
        &mut self,
        ring: Option<&mut Ring>,
        tag: usize,
    ) -> Option<std::io::Result<usize>> {
        if let (Some(ring), Some(direct)) = (ring, &mut self.direct) {
            let head = direct.tail.len();
            let total = align_up((head + self.buf.len()) as u64) as usize;
            let at = aligned(&mut direct.staging, total).as_ptr() as usize - direct.staging.as_ptr() as usize;
            let staging = std::mem::take(&mut direct.staging);
            match ring.write(tag, &self.active, staging, at, total, align_down(self.active_len)) {
                Ok(()) => {
                    if let Some((offset, len)) = self.zero_job.take() {
                        let mut zeros = Vec::new();
                        let start = aligned(&mut zeros, len).as_ptr() as usize - zeros.as_ptr() as usize;
                        match ring.write(tag + ZEROS_TAG, &self.active, zeros, start, len, offset) {
                            Ok(()) => self.zeros_in_flight = len,
                            Err((zeros, _)) => {
                                let written = self.active.write_all_at(&zeros[start..start + len], offset);
                                if written.is_err() {
                                    self.zeroed_end = self.active_len;
                                }
                            }
                        }
                    }
                    return None;
                }
                Err((staging, e)) => {
                    tracing::debug!(shard = %self.core.id, error = %e, "writing without the ring");
                    direct.staging = staging;
                }
            }
        }
        if let Some((offset, len)) = self.zero_job.take() {
            let mut zeros = Vec::new();
            if let Err(e) = self.active.write_all_at(aligned(&mut zeros, len), offset) {
                tracing::debug!(shard = %self.core.id, error = %e, "no zeroed room ahead");
                self.zeroed_end = self.active_len;
            }
        }
        let (file, bytes, offset) = self.write_job();
        Some(file.write_at(bytes, offset))
    }

    /// The ring answered the zeroed room's write. Without it the next group makes the room again (this group
    /// grew the file, so it syncs its own file, size included).
    pub(crate) fn zeros_written(&mut self, result: std::io::Result<usize>) {
        let len = std::mem::take(&mut self.zeros_in_flight);
        match result {
            Ok(n) if n == len => {}
            other => {
                tracing::debug!(shard = %self.core.id, result = ?other.map_err(|e| e.to_string()), "no zeroed room ahead");
                self.zeroed_end = self.active_len;
            }
        }
    }

    /// The buffer of a write the ring has answered.
    pub(crate) fn return_buffer(&mut self, buffer: Vec<u8>) {
        if let Some(direct) = &mut self.direct {
            direct.staging = buffer;
        }
    }
    /// With policy `always`, make sure zeroed room covers `end` (and [`ZERO_AHEAD_BYTES`] past it when it has to
    /// grow); the group's sync makes it durable with the group.
    fn zero_ahead(&mut self, end: u64) -> std::io::Result<()> {
        if self.config.fsync != FsyncPolicy::Always || end <= self.zeroed_end {
            return Ok(());
        }
        let target = align_up(end + ZERO_AHEAD_BYTES);
        // The group's own bytes are written right after; zeros go past them (with O_DIRECT, from the block after
        // the group's last: the group's write fills its last block with zeros).
        let mut at = self.zeroed_end.max(end);
        self.grew = true;
        if self.direct.is_some() {
            // One write for the whole room: each O_DIRECT write waits for the device.
            at = align_up(at);
            if at < target {
                let len = (target - at) as usize;
                if self.zeros_later {
                    // Written by `start_write`, with the group: a synchronous 1 MiB write here would hold up every
                    // shard's cycle.
                    self.zero_job = Some((at, len));
                } else {
                    let mut zeros = Vec::new();
                    self.active.write_all_at(aligned(&mut zeros, len), at)?;
                }
            }
        } else {
            while at < target {
                let n = (target - at).min(ZEROS.len() as u64) as usize;
                self.active.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
        }
        self.zeroed_end = target;
        Ok(())
    }

    /// The prepared group's write returned `result` (the bytes written): finish a short write, fall back to the
    /// page cache where the device refuses direct writes, and sync per policy as far as this shard alone can.
    pub(crate) fn written(&mut self, result: std::io::Result<usize>) -> std::io::Result<AfterWrite> {
        if let Some(err) = &self.poisoned {
            return Err(std::io::Error::other(err.to_string()));
        }
        let (wanted, start) = {
            let (_, bytes, start) = self.write_job();
            (bytes.len(), start)
        };
        match result {
            Ok(n) if n >= wanted => {}
            Ok(n) => {
                let (file, bytes, _) = self.write_job();
                file.write_all_at(&bytes[n..], start + n as u64)?;
            }
            // The device wants larger blocks than these (or the file system changed its mind): write through the
            // page cache from now on. Nothing was written.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.direct.is_some() => {
                tracing::warn!(shard = %self.core.id, error = %e, "O_DIRECT write refused; writing through the page cache");
                self.direct = None;
                self.active = OpenOptions::new().write(true).open(&self.active_path)?;
                self.active.write_all_at(&self.buf, self.active_len)?;
            }
            Err(e) => return Err(e),
        }
        Ok(match self.config.fsync {
            FsyncPolicy::Always if self.grew || self.direct.is_none() => AfterWrite::SyncOwn,
            FsyncPolicy::Always => AfterWrite::Flush,
            FsyncPolicy::Interval(ms) if self.last_sync.elapsed() >= Duration::from_millis(ms) => {
                self.active.sync_data()?;
                self.last_sync = Instant::now();
                AfterWrite::Done
            }
            _ => {
                self.unsynced = true;
                AfterWrite::Done
            }
        })
    }

    /// The prepared group is written: the next group goes after it (it is not durable yet).
    pub(crate) fn wrote(&mut self, p: &mut Prepared) {
        if let Some(direct) = &mut self.direct {
            // The new last block's bytes are where the write took them from.
            let start = align_down(self.active_len);
            let total = align_up((direct.tail.len() + self.buf.len()) as u64) as usize;
            let new_end = self.active_len + self.buf.len() as u64;
            let (from, to) = ((align_down(new_end) - start) as usize, (new_end - start) as usize);
            let block = aligned(&mut direct.staging, total);
            direct.tail.clear();
            direct.tail.extend_from_slice(&block[from..to]);
        }
        p.start = self.active_len;
        self.active_len += self.buf.len() as u64;
        self.last_ms = p.now;
        self.active_first_ms.get_or_insert(p.now);
        p.end = self.active_len;
    }

    /// The prepared group's write failed: cut the segment back to its last whole frame and answer the error.
    pub(crate) fn fail_write(&mut self, p: Prepared, e: std::io::Error) {
        let error = match &self.poisoned {
            Some(poisoned) => poisoned.clone(),
            None => {
                self.last_indexed = p.last_indexed_saved; // the failed write's index entries are gone with it
                self.cut_back(e)
            }
        };
        for (_, reply) in p.group {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// A written group is durable (`Ok`): publish it to readers and answer its requests. Or its sync failed: what
    /// the file holds past the last durable record is unknown now (the kernel may have dropped the pages it could
    /// not write), so the shard refuses writes until a restart recovers it, and the group gets the error.
    pub(crate) fn durable(&mut self, p: Prepared, result: std::io::Result<()>) {
        if let Err(e) = result {
            let error = StoreError::from_io(&self.active_path, "syncing segment", e);
            tracing::error!(shard = %self.core.id, %error, "sync failed; the shard refuses writes until restart");
            let error = self.poisoned.get_or_insert(error).clone();
            for (_, reply) in p.group {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        if self.config.fsync == FsyncPolicy::Always {
            self.last_sync = Instant::now();
        }
        let now = p.now;
        let last = IndexEntry {
            seq: p.next_seq - 1,
            offset: p.start,
            arrival_ms: now,
        };
        {
            // The group's segment: the active one, or the one a roll sealed since the group was written.
            let mut segments = self.core.segments.lock().unwrap();
            let segment = segments
                .iter_mut()
                .rev()
                .find(|s| s.base == p.segment_base)
                .expect("a written group's segment is kept until it is durable");
            segment.durable_len = p.end;
            segment.index.extend(p.index.iter().copied());
            if segment.first.is_none() {
                segment.first = p.index.first().copied();
            }
            segment.last = Some(last);
            segment.records += p.count as u64;
        }
        self.core.tip.send_modify(|t| {
            t.last_seq = Some(last.seq);
            t.last_arrival_ms = now;
        });
        let mut next = p.first_seq;
        for (records, reply) in p.group {
            let outcome = AppendOutcome {
                first_seq: next,
                count: records.len(),
                arrival_ms: now,
            };
            next += records.len() as u64;
            let _ = reply.send(Ok(outcome));
        }
    }

    /// A write or sync failed: cut the file back to its last whole frame, durably, or refuse writes until restart.
    fn cut_back(&mut self, e: std::io::Error) -> StoreError {
        let error = StoreError::from_io(&self.active_path, "appending to segment", e);
        tracing::warn!(shard = %self.core.id, %error, "append failed; cutting the segment back to its last whole record");
        self.zeroed_end = self.active_len;
        if let Err(cut) = self
            .active
            .set_len(self.active_len)
            .and_then(|()| self.active.sync_data())
        {
            tracing::error!(shard = %self.core.id, error = %cut, "cannot cut back a failed append; the shard refuses writes until restart");
            self.poisoned = Some(StoreError::from_io(
                &self.active_path,
                "cutting back a failed append",
                cut,
            ));
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_chunks_are_sized_to_what_the_limits_still_allow() {
        let limits = ReadLimits {
            records_max: 10_000,
            bytes_max: 10 << 20,
        };
        // 300 records of 200 B (240 B on disk) read: 9,700 more fit the count, so about 9,701 frames.
        let next = next_chunk_bytes(&limits, 300, 300 * 200, 300 * 240, READ_CHUNK_MIN_BYTES);
        assert_eq!(next, 9_701 * 240);
        // The byte limit binds first: 1 MiB left at 200 B a record.
        let small = ReadLimits {
            records_max: 10_000,
            bytes_max: (1 << 20) + 300 * 200,
        };
        let next = next_chunk_bytes(&small, 300, 300 * 200, 300 * 240, READ_CHUNK_MIN_BYTES);
        assert_eq!(next, ((1 << 20) / 200 + 2) * 240);
        // Within the bounds: nearly done, and a huge remainder.
        assert_eq!(
            next_chunk_bytes(&limits, 9_999, 0, 9_999 * 240, READ_CHUNK_MIN_BYTES),
            READ_CHUNK_MIN_BYTES
        );
        assert_eq!(
            next_chunk_bytes(&limits, 1, 10, 100_000, READ_CHUNK_MIN_BYTES),
            READ_CHUNK_MAX_BYTES
        );
        // Only skipped frames so far: the chunk doubles.
        assert_eq!(
            next_chunk_bytes(&limits, 0, 0, 0, READ_CHUNK_MIN_BYTES),
            2 * READ_CHUNK_MIN_BYTES
        );
    }

    #[test]
    fn records_expected_follow_the_limits_and_the_segment() {
        let limits = ReadLimits {
            records_max: 10_000,
            bytes_max: 10 << 20,
        };
        // 300 records of 200 B (240 B on disk) read; the segment has 1,000 more frames, the count allows 9,700.
        assert_eq!(
            records_expected(&limits, 300, 300 * 200, 300 * 240, 1_000 * 240),
            1_000
        );
        assert_eq!(
            records_expected(&limits, 300, 300 * 200, 300 * 240, 1 << 30),
            9_700
        );
        // The byte limit binds first: 1 MiB left at 200 B a record, plus the one that may cross it.
        let small = ReadLimits {
            records_max: 10_000,
            bytes_max: (1 << 20) + 300 * 200,
        };
        assert_eq!(
            records_expected(&small, 300, 300 * 200, 300 * 240, 1 << 30),
            (1 << 20) / 200 + 1
        );
        // Nothing known yet, or nothing left.
        assert_eq!(records_expected(&limits, 0, 0, 0, 1 << 30), 0);
        assert_eq!(records_expected(&limits, 300, 300 * 200, 300 * 240, 0), 0);
    }
}
