//! A delivery's buffer, converted while it fills.
//!
//! Reads (one shard's records from one `GetRecords`, in order) are appended as they arrive. Once enough records
//! have gathered and a core is free, they are converted on a blocking thread while the delivery goes on reading;
//! at a flush the rest is converted (in parallel) and the parts are joined. Reading the stream and converting
//! JSON no longer take turns, so a flush of a full buffer costs little more than its last read plus the Parquet
//! write.
//!
//! The result is exactly that of converting every buffered record one after another against the committed
//! schema ([`Converter::convert`](crate::convert::Converter::convert)): a part is converted against the schema the
//! parts before it are expected to leave (the schema the latest finished part left), and converted again, in
//! order, if they left another one. That only happens in a flush that adds columns; while no part has finished
//! yet, only one part runs, so a new table's first flush learns its columns from its first part and converts the
//! rest against them.
//!
//! A part whose schema is settled (it finished, converted against the schema every part before it left) needs its
//! records no more: unless the staging must keep them (a SQL transform that fails sends every record to the error
//! table), they are let go at once, and the memory of the reads is reused by the next ones instead of growing
//! with the buffer. Positions do not depend on them (the delivery tracks what it read), and a failed flush ends
//! the delivery's run, which reads again from the table's positions.

use std::sync::Arc;

use freshet_storage::{Record, ShardId};
use tokio::sync::{Semaphore, oneshot};

use crate::config::DeliveryConfig;
use crate::convert::{
    CHUNK_RECORDS_MIN, Converted, Converter, ShardRecords, SourceRecord, TableSchema, convert_reads, merge,
};
use crate::error::{ProcessError, Result};

/// One read's records, shared with the thread converting them.
pub type Read = Arc<ShardRecords>;

/// Fewest records worth starting a conversion for while reading goes on.
const PART_RECORDS_MIN: usize = 2 * CHUNK_RECORDS_MIN;
/// Most records one part converts. Parts stay small so that at a flush no core is left alone with a long part
/// while the other has nothing to do: the rest is queued in parts the cores take as they come free.
const PART_RECORDS_MAX: usize = 8 * CHUNK_RECORDS_MIN;
/// At a flush the rest is cut into about this many parts per core (each of at least a chunk).
const FLUSH_PARTS_PER_THREAD: usize = 4;
/// Records read but not converted yet (waiting or in running parts) beyond which reading waits for the conversions
/// ([`Staging::make_room`]).
const BACKLOG_RECORDS_MAX: usize = 4 * PART_RECORDS_MAX;

/// The buffered reads of a delivery, with the conversions started on them.
pub struct Staging {
    config: Arc<DeliveryConfig>,
    /// Whether conversions start while reading (not when an HTTP transform must see the raw records first).
    eager: bool,
    /// Whether the records of settled parts stay (see the module docs); else they are let go.
    keep: bool,
    /// A part's records were let go: the buffer was converted once and can only be cleared.
    released: bool,
    threads: usize,
    /// One per conversion running: at most `threads` at once, the others wait their turn.
    permits: Arc<Semaphore>,
    /// [`PART_RECORDS_MIN`], [`PART_RECORDS_MAX`] and [`CHUNK_RECORDS_MIN`] (smaller in tests).
    part_min: usize,
    part_max: usize,
    chunk_min: usize,
    /// [`BACKLOG_RECORDS_MAX`] (smaller in tests).
    backlog_max: usize,
    /// Conversions started, in buffer order, each covering the reads before the next one's.
    parts: Vec<Part>,
    /// Reads after the last part, not being converted.
    pending: Vec<Read>,
    pending_records: usize,
    /// Without eager conversion: every record in one run, lent as is to an HTTP transform.
    lazy: Arc<Vec<SourceRecord>>,
    records: usize,
}

struct Part {
    /// Empty once let go.
    reads: Vec<Read>,
    records: usize,
    /// The schema it is converted against.
    base: TableSchema,
    state: State,
}

enum State {
    Running(oneshot::Receiver<Result<Converted>>),
    Done(Result<Converted>),
}

impl Staging {
    /// `eager`: convert while reading (else everything at `finish`, lent as one run first). `keep`: keep every
    /// record until the buffer is cleared, so that [`Staging::records`] sees them all.
    pub fn new(config: Arc<DeliveryConfig>, eager: bool, keep: bool) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            config,
            eager,
            keep,
            released: false,
            threads,
            permits: Arc::new(Semaphore::new(threads)),
            part_min: PART_RECORDS_MIN,
            backlog_max: BACKLOG_RECORDS_MAX,
            part_max: PART_RECORDS_MAX,
            chunk_min: CHUNK_RECORDS_MIN,
            parts: Vec::new(),
            pending: Vec::new(),
            pending_records: 0,
            lazy: Arc::new(Vec::new()),
            records: 0,
        }
    }

    /// Records buffered.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Every buffered record with its shard, in order: without `keep`, only those of parts not yet settled.
    pub fn records(&self) -> impl Iterator<Item = (ShardId, &Record)> {
        self.parts
            .iter()
            .flat_map(|p| p.reads.iter())
            .chain(self.pending.iter())
            .flat_map(|r| r.iter())
            .chain(self.lazy.iter().map(|s| (s.shard_id, &s.record)))
    }

    /// Every buffered record as one slice: without eager conversion (else only when nothing is buffered).
    pub fn contiguous(&self) -> Option<&[SourceRecord]> {
        (!self.eager || self.records == 0).then_some(self.lazy.as_slice())
    }

    /// Drop everything buffered (conversions still running finish unobserved).
    pub fn clear(&mut self) {
        self.parts.clear();
        self.pending.clear();
        self.pending_records = 0;
        self.lazy = Arc::new(Vec::new());
        self.records = 0;
        self.released = false;
    }

    /// Append a read; start converting what has gathered if a core is free. `committed` is the table's schema.
    pub fn push(&mut self, read: ShardRecords, committed: &TableSchema) {
        if read.records.is_empty() {
            return;
        }
        self.records += read.records.len();
        if !self.eager {
            // One run, so `contiguous` can lend it (a `finish` that converts it is over before the next push).
            let shard_id = read.shard_id;
            Arc::make_mut(&mut self.lazy).extend(
                read.records
                    .into_iter()
                    .map(|record| SourceRecord { shard_id, record }),
            );
            return;
        }
        self.pending_records += read.records.len();
        self.pending.push(Arc::new(read));
        self.poll(committed);
        self.start_ready(committed);
    }

    /// Before a read: while more than `BACKLOG_RECORDS_MAX` records wait for their conversion, wait for the oldest
    /// running part. Reading then waits for the cores instead of filling fresh memory (each page of it faulted in
    /// by the kernel), and the records the finished parts let go give their memory to the next reads. Only when
    /// records are let go (without `keep`): otherwise the buffer holds them all anyway.
    pub async fn make_room(&mut self, committed: &TableSchema) {
        if !self.eager || self.keep {
            return;
        }
        loop {
            self.poll(committed);
            self.start_ready(committed);
            if self.pending_records + self.part_records(true) <= self.backlog_max {
                return;
            }
            match self
                .parts
                .iter_mut()
                .find(|p| matches!(p.state, State::Running(_)))
            {
                Some(part) => part.settle().await,
                None => return,
            }
        }
    }

    /// Records of the parts still converting (`true`) or finished (`false`).
    fn part_records(&self, running: bool) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p.state, State::Running(_)) == running)
            .map(|p| p.records)
            .sum()
    }

    /// Start converting what has gathered while a core is free (see [`Staging::push`]).
    fn start_ready(&mut self, committed: &TableSchema) {
        loop {
            let running = self
                .parts
                .iter()
                .filter(|p| matches!(p.state, State::Running(_)))
                .count();
            let informed =
                self.parts.is_empty() || self.parts.iter().any(|p| matches!(p.state, State::Done(_)));
            if self.pending_records < self.part_min || running >= self.threads || !informed {
                return;
            }
            // The oldest reads, up to `part_max` records (at least one read).
            let mut take = 0;
            let mut records = 0;
            while take < self.pending.len()
                && (take == 0 || records + self.pending[take].records.len() <= self.part_max)
            {
                records += self.pending[take].records.len();
                take += 1;
            }
            let reads: Vec<Read> = self.pending.drain(..take).collect();
            self.pending_records -= records;
            let base = self.predicted(committed);
            self.start(reads, base, committed.columns.len());
        }
    }

    /// Convert everything buffered against the committed schema. With `keep` (or without eager conversion) the
    /// buffer stays as it is and a later `finish` converts it again; otherwise a later `finish` is refused if any
    /// records were let go.
    pub async fn finish(&mut self, committed: &TableSchema) -> Result<Converted> {
        if !self.eager {
            let (config, lazy, committed) = (self.config.clone(), self.lazy.clone(), committed.clone());
            return tokio::task::spawn_blocking(move || Converter::new(config).convert(&committed, &lazy))
                .await
                .unwrap_or_else(|_| Err(panicked()));
        }
        if self.released && self.parts.is_empty() {
            return Err(ProcessError::Internal(
                "the buffer was converted and its records let go; it can only be cleared".to_string(),
            ));
        }
        let columns = committed.columns.len();
        self.poll(committed);
        let started_early = self.records - self.pending_records;
        let done_early = self.part_records(false);
        let mut reconverted = 0;
        // Know the schema before the rest is cut up: wait for the first running part, or convert the first read
        // alone if nothing was started.
        if !self.parts.iter().any(|p| matches!(p.state, State::Done(_))) {
            if let Some(part) = self.parts.first_mut() {
                part.settle().await;
            } else if self.pending.len() > 1 && self.pending_records >= 2 * self.chunk_min {
                let first = self.pending.remove(0);
                self.pending_records -= first.records.len();
                self.start(vec![first], committed.clone(), columns);
                self.parts[0].settle().await;
            }
        }
        // The rest in parts of about equal size, a few per core, which the cores take in turn.
        let pending = std::mem::take(&mut self.pending);
        let share = (self
            .pending_records
            .div_ceil(self.threads * FLUSH_PARTS_PER_THREAD))
        .clamp(self.chunk_min, self.part_max.max(self.chunk_min));
        self.pending_records = 0;
        let mut group: Vec<Read> = Vec::new();
        let mut group_records = 0;
        let last = pending.len();
        for (i, read) in pending.into_iter().enumerate() {
            group_records += read.records.len();
            group.push(read);
            if group_records >= share || i + 1 == last {
                let base = self.predicted(committed);
                self.start(std::mem::take(&mut group), base, columns);
                group_records = 0;
            }
        }
        // Join in order; a part converted against another schema than the one its predecessors left is
        // converted again.
        let mut current = committed.clone();
        let mut out = Vec::with_capacity(self.parts.len());
        for part in &mut self.parts {
            part.settle().await;
            let State::Done(result) = std::mem::replace(
                &mut part.state,
                State::Done(Ok(crate::convert::empty(&part.base))),
            ) else {
                unreachable!("settled");
            };
            let converted = if part.base == current {
                result?
            } else {
                // Only settled parts are let go, and a settled part's base is what its predecessors left.
                if part.reads.is_empty() {
                    return Err(ProcessError::Internal(
                        "a part to convert again has no records".to_string(),
                    ));
                }
                reconverted += 1;
                let again = convert_on_thread(
                    &self.config,
                    &self.permits,
                    part.reads.clone(),
                    current.clone(),
                    columns,
                );
                again.await.unwrap_or_else(|_| Err(panicked()))?
            };
            current = converted.schema.clone();
            out.push(converted);
        }
        tracing::debug!(
            records = self.records,
            started_early,
            done_early,
            parts = self.parts.len(),
            reconverted,
            "converted the buffer"
        );
        // Back to unconverted reads (unless some were let go: then the buffer is spent).
        let parts = std::mem::take(&mut self.parts);
        if !self.released {
            self.pending = parts.into_iter().flat_map(|p| p.reads).collect();
            self.pending_records = self.records;
        }
        merge(current, out)
    }

    /// The schema the parts so far are expected to leave: the latest finished part's, else the committed one.
    fn predicted(&self, committed: &TableSchema) -> TableSchema {
        self.parts
            .iter()
            .rev()
            .find_map(|p| match &p.state {
                State::Done(Ok(c)) => Some(c.schema.clone()),
                _ => None,
            })
            .unwrap_or_else(|| committed.clone())
    }

    fn start(&mut self, reads: Vec<Read>, base: TableSchema, columns: usize) {
        let rx = convert_on_thread(&self.config, &self.permits, reads.clone(), base.clone(), columns);
        self.parts.push(Part {
            records: reads.iter().map(|r| r.records.len()).sum(),
            reads,
            base,
            state: State::Running(rx),
        });
    }

    /// Note the parts that have finished, and let go of the records of those settled (unless kept).
    fn poll(&mut self, committed: &TableSchema) {
        for part in &mut self.parts {
            if let State::Running(rx) = &mut part.state {
                match rx.try_recv() {
                    Ok(result) => part.state = State::Done(result),
                    Err(oneshot::error::TryRecvError::Empty) => {}
                    Err(oneshot::error::TryRecvError::Closed) => part.state = State::Done(Err(panicked())),
                }
            }
        }
        if self.keep {
            return;
        }
        let mut current = committed;
        for part in &mut self.parts {
            let State::Done(Ok(converted)) = &part.state else {
                break;
            };
            if part.base != *current {
                break;
            }
            if !part.reads.is_empty() {
                part.reads = Vec::new();
                self.released = true;
            }
            current = &converted.schema;
        }
    }
}

impl Part {
    async fn settle(&mut self) {
        if let State::Running(rx) = &mut self.state {
            self.state = State::Done(rx.await.unwrap_or_else(|_| Err(panicked())));
        }
    }
}

/// Convert `reads` against `base` on a blocking thread once one of `permits` is free; the result arrives on the
/// receiver (which closes if the thread panicked).
fn convert_on_thread(
    config: &Arc<DeliveryConfig>,
    permits: &Arc<Semaphore>,
    reads: Vec<Read>,
    base: TableSchema,
    columns: usize,
) -> oneshot::Receiver<Result<Converted>> {
    let (tx, rx) = oneshot::channel();
    let config = config.clone();
    let permit = permits.clone().acquire_owned();
    tokio::spawn(async move {
        // The semaphore is never closed.
        let Ok(permit) = permit.await else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let slices: Vec<&ShardRecords> = reads.iter().map(|r| r.as_ref()).collect();
            let _ = tx.send(convert_reads(&config, &base, columns, &slices));
        });
    });
    rx
}

fn panicked() -> ProcessError {
    ProcessError::Internal("a conversion thread panicked".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::test_records::assert_same;
    use crate::convert::{Converter, test_records};

    /// [`test_records::mixed`] spread over reads of 1 to 7 records of one shard, the shards taking turns.
    fn reads() -> Vec<ShardRecords> {
        let mut by_shard: Vec<ShardRecords> = Vec::new();
        for src in test_records::mixed(240) {
            match by_shard.iter_mut().find(|r| r.shard_id == src.shard_id) {
                Some(r) => r.records.push(src.record),
                None => by_shard.push(ShardRecords {
                    shard_id: src.shard_id,
                    records: vec![src.record],
                }),
            }
        }
        let mut out = Vec::new();
        let mut k = 0;
        while by_shard.iter().any(|r| !r.records.is_empty()) {
            let shard = &mut by_shard[k % 3];
            let n = (1 + k % 7).min(shard.records.len());
            out.push(ShardRecords {
                shard_id: shard.shard_id,
                records: shard.records.drain(..n).collect(),
            });
            k += 1;
        }
        assert!(out.len() > 60, "{} reads", out.len());
        out
    }

    fn flatten(reads: &[ShardRecords]) -> Vec<SourceRecord> {
        reads
            .iter()
            .flat_map(|r| r.iter())
            .map(|(shard_id, record)| SourceRecord {
                shard_id,
                record: record.clone(),
            })
            .collect()
    }

    fn config() -> (Arc<DeliveryConfig>, TableSchema) {
        test_records::config()
    }

    /// Converting while reading gives exactly what converting the whole buffer in one pass gives, whether the
    /// parts finish early (their schema is known) or late (later parts are converted against a stale one and
    /// again), and with a schema that evolves or one that does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staged_conversion_equals_one_pass() {
        let (cfg, committed) = config();
        let reads = reads();
        let all = flatten(&reads);
        let serial = Converter::new(cfg.clone()).convert(&committed, &all).unwrap();
        assert!(
            serial.rows() > 100 && serial.errors.len() > 40,
            "{} rows",
            serial.rows()
        );
        assert!(serial.schema.columns.len() > committed.columns.len() + 3);
        let evolved = serial.schema.clone();
        let steady = Converter::new(cfg.clone()).convert(&evolved, &all).unwrap();
        for (schema, expected) in [(&committed, &serial), (&evolved, &steady)] {
            for threads in 1..=3 {
                for (part_min, part_max) in [(1, 1), (1, 12), (5, 30), (40, 40), (40, 1_000), (1_000, 1_000)]
                {
                    // Waiting for the parts after every read, or after every fifth (parts started together, some
                    // against a stale schema, have then all finished when the next read comes).
                    for (wait, now_and_then, keep) in [
                        (false, false, true),
                        (true, false, true),
                        (false, false, false),
                        (true, false, false),
                        (false, true, false),
                    ] {
                        let what = format!(
                            "{threads} threads, parts of {part_min} to {part_max}, waiting {wait}/{now_and_then}, \
                             keeping {keep}"
                        );
                        let mut s = Staging::new(cfg.clone(), true, keep);
                        (s.threads, s.part_min, s.part_max, s.chunk_min) = (threads, part_min, part_max, 3);
                        s.permits = Arc::new(Semaphore::new(threads));
                        s.backlog_max = 2 * part_max;
                        for (i, read) in reads.iter().enumerate() {
                            // Reading waits for the conversions (a no-op when records are kept).
                            s.make_room(schema).await;
                            if !keep {
                                let backlog = s.pending_records + s.part_records(true);
                                let running = s.parts.iter().any(|p| matches!(p.state, State::Running(_)));
                                assert!(
                                    backlog <= s.backlog_max || !running,
                                    "{what}: a backlog of {backlog}"
                                );
                            }
                            s.push(read.clone(), schema);
                            if wait || (now_and_then && i % 5 == 4) {
                                for p in &mut s.parts {
                                    p.settle().await;
                                }
                            }
                        }
                        assert_eq!(s.len(), all.len());
                        for p in &s.parts {
                            let n: usize = p.reads.iter().map(|r| r.records.len()).sum();
                            assert!(n <= part_max || p.reads.len() == 1, "{what}: a part of {n}");
                        }
                        let order: Vec<u64> = s.records().map(|(_, r)| r.arrival_ms as u64).collect();
                        let expected_order: Vec<u64> =
                            all.iter().map(|r| r.record.arrival_ms as u64).collect();
                        if keep {
                            assert_eq!(order, expected_order, "{what}");
                        } else {
                            // What is still held is the tail of the buffer.
                            assert!(expected_order.ends_with(&order), "{what}");
                            if wait && part_max < all.len() / 2 {
                                assert!(order.len() < all.len(), "{what}: nothing let go");
                            }
                        }
                        let out = s.finish(schema).await.unwrap();
                        assert_same(&out, expected, &what);
                        if keep || !s.released {
                            // The buffer stays: finishing again gives the same.
                            let again = s.finish(schema).await.unwrap();
                            assert_same(&again, expected, &format!("{what}, again"));
                        } else {
                            assert!(s.finish(schema).await.is_err(), "{what}: finished twice");
                        }
                        s.clear();
                        assert!(s.is_empty() && s.records().next().is_none());
                    }
                }
            }
        }
    }

    /// Without eager conversion (an HTTP transform sees the raw records first) nothing starts while reading, and
    /// `finish` still converts everything.
    #[tokio::test]
    async fn lazy_staging_converts_at_finish() {
        let (cfg, committed) = config();
        let reads = reads();
        let all = flatten(&reads);
        let serial = Converter::new(cfg.clone()).convert(&committed, &all).unwrap();
        let mut s = Staging::new(cfg, false, false);
        s.part_min = 1;
        for read in &reads {
            s.push(read.clone(), &committed);
        }
        assert!(s.parts.is_empty());
        let lent: Vec<u64> = s
            .contiguous()
            .unwrap()
            .iter()
            .map(|r| r.record.arrival_ms as u64)
            .collect();
        let expected: Vec<u64> = all.iter().map(|r| r.record.arrival_ms as u64).collect();
        assert_eq!(lent, expected);
        let order: Vec<u64> = s.records().map(|(_, r)| r.arrival_ms as u64).collect();
        assert_eq!(order, expected);
        assert_same(&s.finish(&committed).await.unwrap(), &serial, "lazy");
    }
}
