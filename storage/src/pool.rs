//! The store's writer thread: it writes the appends of every open shard, in cycles.
//!
//! A cycle takes each shard's waiting appends (its group, see [`crate::shard`]), encodes every group and starts
//! their writes, all submitted together through io_uring where the kernel offers it (one system call, one batch for
//! the device; where it does not, or [`crate::LogConfig::io_uring`] is off, they are written one after the other).
//! While those writes are under way, the groups the previous cycle wrote are made durable and answered; then the
//! cycle waits for its writes. So a group is durable two cycles after it was taken, and a flush always overlaps the
//! next groups' writes.
//!
//! With policy `always` a group written with `O_DIRECT` into room its file already has changes only data, so what
//! makes it durable is the flush of the device's write cache that `fdatasync` issues, and one flush covers every
//! write the device has completed before it. The cycle therefore calls `fdatasync` once per file system for all such
//! groups, on ext4 and XFS, whose `fdatasync` always sends that flush. A group that made its file longer, one
//! written through the page cache, and any group on another file system get an `fdatasync` of their own file.
//! When a sync fails, what the file holds past its last durable record is unknown (the kernel may have dropped what
//! it could not write), so the shard refuses writes until a restart recovers it.
//!
//! One thread for all shards replaced a thread per shard: on 2 cores, four shards' writers cost two device
//! round trips, two sleeps and two wake-ups each per group, and kept waking each other out of the CPU. Measured in
//! BENCHMARKS.md (ingest, fourteenth session). Syncs through io_uring as well (no thread blocked on them at all)
//! were slower there: io_uring runs a sync on a kernel worker thread, one more wake-up per sync.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc as std_mpsc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::error::{StoreError, StoreResult};
use crate::shard::{AfterWrite, GROUP_BYTES_MAX, Prepared, Writer, WriterMsg, ZEROS_TAG};
use crate::uring::Ring;

/// `statfs` magic numbers of the file systems whose `fdatasync` flushes the device's cache even for a file with
/// nothing of its own to write back.
const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

/// The writer thread of one store. Each open shard registers its writer; the thread stops when the pool is
/// dropped and every shard's writer has stopped.
#[derive(Debug)]
pub struct WriterPool {
    tx: Option<mpsc::UnboundedSender<Register>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Register {
    writer: Writer,
    rx: mpsc::Receiver<WriterMsg>,
    done: std_mpsc::Sender<()>,
}

impl WriterPool {
    /// Start the thread; with `io_uring`, writes go through io_uring where the kernel offers it.
    pub fn start(io_uring: bool) -> StoreResult<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(rx, io_uring))
            .map_err(|e| StoreError::io("spawning the store's writer", e))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hand a shard's writer and its queue to the thread. The receiver answers (or closes) once the writer has
    /// written everything queued before the queue's senders were dropped, and stopped.
    pub(crate) fn register(
        &self,
        writer: Writer,
        rx: mpsc::Receiver<WriterMsg>,
    ) -> StoreResult<std_mpsc::Receiver<()>> {
        let (done, stopped) = std_mpsc::channel();
        self.tx
            .as_ref()
            .ok_or(StoreError::ShuttingDown)?
            .send(Register { writer, rx, done })
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(stopped)
    }
}

impl Drop for WriterPool {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Slot {
    writer: Writer,
    rx: mpsc::Receiver<WriterMsg>,
    done: std_mpsc::Sender<()>,
    /// A message taken from the queue and not yet handled.
    next: Option<WriterMsg>,
    /// The queue is closed and empty.
    drained: bool,
    /// The device number of the shard's file system when a flush by any of its files covers the shard's data
    /// writes (ext4, XFS).
    flush_dev: Option<u64>,
    /// This cycle's group, encoded, being written.
    prepared: Option<Prepared>,
    /// Last cycle's group, written, and what it needs to be durable.
    written: Option<(Prepared, AfterWrite)>,
}

impl Slot {
    fn new(mut r: Register, ring: bool) -> Self {
        r.writer.zeros_later = ring;
        let flush_dev = shared_flush_dev(r.writer.file());
        tracing::debug!(shard = %r.writer.id(), ?flush_dev, "shard writer started");
        Self {
            writer: r.writer,
            rx: r.rx,
            done: r.done,
            next: None,
            drained: false,
            flush_dev,
            prepared: None,
            written: None,
        }
    }
}

fn shared_flush_dev(file: &File) -> Option<u64> {
    let fs = rustix::fs::fstatfs(file).ok()?;
    let magic = fs.f_type as i64;
    (magic == EXT4_SUPER_MAGIC || magic == XFS_SUPER_MAGIC)
        .then(|| file.metadata().ok().map(|m| m.dev()))
        .flatten()
}

fn run(mut registrations: mpsc::UnboundedReceiver<Register>, io_uring: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let Ok(runtime) = runtime else {
        tracing::error!("cannot start the store writer's timer");
        return;
    };
    // Declared before the ring, so dropped after it: a ring waits for its writes in flight when it is dropped, and
    // the shards' files stay open until then.
    let mut slots: Vec<Slot> = Vec::new();
    let mut ring = match io_uring.then(Ring::new) {
        Some(Ok(ring)) => Some(ring),
        Some(Err(e)) => {
            tracing::info!(error = %e, "no io_uring; shards' groups are written one after the other");
            None
        }
        None => None,
    };
    let has_ring = ring.is_some();
    let mut open = true;
    while open || !slots.is_empty() {
        if !slots
            .iter()
            .any(|s| s.next.is_some() || s.drained || s.written.is_some())
        {
            let due = slots.iter().filter_map(|s| s.writer.sync_due()).min();
            let woke = runtime.block_on(async {
                let wait = std::future::poll_fn(|cx| {
                    let mut any = false;
                    if open {
                        match registrations.poll_recv(cx) {
                            Poll::Ready(Some(r)) => {
                                slots.push(Slot::new(r, has_ring));
                                any = true;
                            }
                            Poll::Ready(None) => {
                                open = false;
                                any = true;
                            }
                            Poll::Pending => {}
                        }
                    }
                    for slot in slots.iter_mut().filter(|s| s.next.is_none() && !s.drained) {
                        match slot.rx.poll_recv(cx) {
                            Poll::Ready(Some(msg)) => {
                                slot.next = Some(msg);
                                any = true;
                            }
                            Poll::Ready(None) => {
                                slot.drained = true;
                                any = true;
                            }
                            Poll::Pending => {}
                        }
                    }
                    if any { Poll::Ready(()) } else { Poll::Pending }
                });
                match due {
                    Some(at) => tokio::time::timeout_at(at.into(), wait).await.is_ok(),
                    None => {
                        wait.await;
                        true
                    }
                }
            });
            if !woke {
                let now = Instant::now();
                for slot in &mut slots {
                    if slot.writer.sync_due().is_some_and(|at| at <= now) {
                        slot.writer.sync_quietly();
                    }
                }
                continue;
            }
        }
        cycle(&mut slots, ring.as_mut());
        slots.retain_mut(|slot| {
            if slot.drained && slot.next.is_none() && slot.written.is_none() {
                slot.writer.stop();
                let _ = slot.done.send(());
                false
            } else {
                true
            }
        });
    }
}

/// One cycle: every shard's waiting appends are encoded and their writes started; while those are under way the
/// groups the previous cycle wrote are made durable and answered; then the writes are waited for. So a flush
/// overlaps the next cycle's writes, as it did when each shard had a thread of its own.
fn cycle(slots: &mut [Slot], mut ring: Option<&mut Ring>) {
    for slot in slots.iter_mut() {
        gather(slot);
    }
    let mut answers: Vec<Option<io::Result<usize>>> = (0..slots.len()).map(|_| None).collect();
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.prepared.is_some() {
            answers[i] = slot.writer.start_write(ring.as_deref_mut(), i);
        }
    }
    if let Some(ring) = ring.as_deref_mut() {
        ring.submit();
    }

    sync_written(slots);

    if let Some(ring) = ring {
        for (i, result, buffer) in ring.wait_all() {
            if i >= ZEROS_TAG {
                slots[i - ZEROS_TAG].writer.zeros_written(result);
            } else {
                slots[i].writer.return_buffer(buffer);
                answers[i] = Some(result);
            }
        }
    }
    for (slot, answer) in slots.iter_mut().zip(answers) {
        let Some(mut prepared) = slot.prepared.take() else {
            continue;
        };
        let answer = answer.unwrap_or_else(|| Err(io::Error::other("the write got no answer")));
        match slot.writer.written(answer) {
            Ok(after) => {
                slot.writer.wrote(&mut prepared);
                if after == AfterWrite::Done {
                    slot.writer.durable(prepared, Ok(()));
                } else {
                    slot.written = Some((prepared, after));
                }
            }
            Err(e) => slot.writer.fail_write(prepared, e),
        }
    }
}

/// Take the shard's waiting appends, up to [`GROUP_BYTES_MAX`] of data, into its group for this cycle, and encode
/// it. A roll waits for the appends before it, and for the group written last cycle to be durable.
fn gather(slot: &mut Slot) {
    let mut group = Vec::new();
    let mut bytes = 0usize;
    loop {
        let msg = match slot.next.take() {
            Some(msg) => msg,
            None if slot.drained || bytes >= GROUP_BYTES_MAX => break,
            None => match slot.rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    slot.drained = true;
                    break;
                }
            },
        };
        match msg {
            WriterMsg::Append { records, reply } => {
                bytes += records.iter().map(|r| r.data.len()).sum::<usize>();
                group.push((records, reply));
            }
            WriterMsg::Roll { reply } if group.is_empty() && slot.written.is_none() => {
                let _ = reply.send(slot.writer.roll_if_used());
            }
            roll @ WriterMsg::Roll { .. } => {
                slot.next = Some(roll);
                break;
            }
        }
    }
    if !group.is_empty() {
        slot.prepared = slot.writer.prepare(group);
    }
}

/// Make the groups written last cycle durable and answer them: own syncs first (each also flushes its device),
/// then one flush per file system for the groups that changed only data.
fn sync_written(slots: &mut [Slot]) {
    let mut flushed: HashMap<u64, Result<(), SyncError>> = HashMap::new();
    let mut synced: Vec<Option<io::Result<()>>> = (0..slots.len()).map(|_| None).collect();
    for (i, slot) in slots.iter_mut().enumerate() {
        match (&slot.written, slot.flush_dev) {
            (Some((_, AfterWrite::SyncOwn)), Some(dev)) => {
                let r = slot.writer.file().sync_data();
                flushed
                    .entry(dev)
                    .or_insert_with(|| r.as_ref().map(|_| ()).map_err(SyncError::of));
                synced[i] = Some(r);
            }
            (Some(_), None) => {
                synced[i] = Some(slot.writer.file().sync_data());
            }
            _ => {}
        }
    }
    for (slot, synced) in slots.iter_mut().zip(synced) {
        let Some((prepared, after)) = slot.written.take() else {
            continue;
        };
        let result = match (synced, slot.flush_dev) {
            (Some(r), _) => r,
            (None, Some(dev)) if after == AfterWrite::Flush => flushed
                .entry(dev)
                .or_insert_with(|| slot.writer.file().sync_data().map_err(|e| SyncError::of(&e)))
                .clone()
                .map_err(SyncError::into_io),
            (None, _) => Ok(()),
        };
        slot.writer.durable(prepared, result);
    }
}

/// A flush's error, shared by every group it was for.
#[derive(Clone, Debug)]
struct SyncError {
    kind: io::ErrorKind,
    code: Option<i32>,
    message: String,
}

impl SyncError {
    fn of(e: &io::Error) -> Self {
        Self {
            kind: e.kind(),
            code: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    fn into_io(self) -> io::Error {
        match self.code {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message),
        }
    }
}
