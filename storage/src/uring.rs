//! Several positioned writes submitted to the kernel at once, through io_uring.
//!
//! The store's writer thread (see [`crate::pool`]) writes one group per shard and cycle. Written one `pwrite`
//! after the other, each waits for the device alone and costs its own notification of the device; submitted
//! together they go out in one system call and one batch, and the thread does other work while they are under
//! way. This module is the only `unsafe` code of the crate: the kernel reads a write's buffer after the submission
//! returns, so the ring owns the buffer until the write's answer hands it back.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};

/// Writes in flight at most.
const ENTRIES: u32 = 64;

/// An io_uring for positioned writes. A write's buffer belongs to the ring until its answer comes back, so no
/// code outside this module can touch memory the kernel is reading.
pub struct Ring {
    ring: IoUring,
    /// The buffers of the writes in flight, by the slot their `user_data` names.
    buffers: Vec<Option<Vec<u8>>>,
    in_flight: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// A write's answer: its tag, the bytes written (possibly fewer than asked) or the error, and its buffer back.
pub type Answer = (usize, io::Result<usize>, Vec<u8>);

impl Ring {
    /// A ring, or the reason there is none (an old kernel, or a sandbox that forbids io_uring, as Docker's
    /// default seccomp profile does).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            ring: IoUring::new(ENTRIES)?,
            buffers: (0..ENTRIES).map(|_| None).collect(),
            in_flight: 0,
        })
    }

    /// Queue a write of `buffer[start..start + len]` at `offset` of `file`; its answer carries `tag`. The kernel
    /// looks the file up when the write is submitted ([`Ring::submit`], or [`Ring::wait_all`]), so `file` must stay
    /// open until then. When the ring is full the buffer comes back with the error.
    pub fn write(
        &mut self,
        tag: usize,
        file: &File,
        buffer: Vec<u8>,
        start: usize,
        len: usize,
        offset: u64,
    ) -> Result<(), (Vec<u8>, io::Error)> {
        let Some(slot) = self.buffers.iter().position(Option::is_none) else {
            return Err((buffer, io::Error::other("io_uring full")));
        };
        let (Ok(len32), true) = (u32::try_from(len), start + len <= buffer.len()) else {
            return Err((buffer, io::Error::from(io::ErrorKind::InvalidInput)));
        };
        let entry = opcode::Write::new(types::Fd(file.as_raw_fd()), buffer[start..].as_ptr(), len32)
            .offset(offset)
            .build()
            .user_data(((tag as u64) << 32) | slot as u64);
        // SAFETY: the memory written from stays valid and unmoved until the kernel answers: the Vec is kept in
        // `buffers` (moving a Vec does not move its heap memory) and handed back only with the answer, and a ring
        // with writes in flight waits for them before it is dropped. (A full queue is an error `push` returns.)
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            return Err((buffer, io::Error::other("io_uring queue full")));
        }
        self.buffers[slot] = Some(buffer);
        self.in_flight += 1;
        Ok(())
    }

    /// Submit every queued write in one system call.
    pub fn submit(&mut self) {
        // Interrupted or busy: the entries stay queued and the next submit (or wait) takes them.
        if let Err(e) = self.ring.submit() {
            tracing::debug!(error = %e, "io_uring submit deferred");
        }
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Wait until every write in flight has answered, and return the answers.
    pub fn wait_all(&mut self) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(self.in_flight);
        while self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(self.in_flight)
                && !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                )
            {
                // Nothing in flight may be given up; waiting is the only safe thing left.
                tracing::error!(error = %e, "io_uring wait failed; waiting again");
                std::thread::yield_now();
            }
            for cqe in self.ring.completion() {
                let slot = (cqe.user_data() & 0xFFFF_FFFF) as usize;
                let tag = (cqe.user_data() >> 32) as usize;
                let Some(buffer) = self.buffers.get_mut(slot).and_then(Option::take) else {
                    continue;
                };
                self.in_flight -= 1;
                let result = cqe.result();
                let result = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(result as usize)
                };
                answers.push((tag, result, buffer));
            }
        }
        answers
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still be reading buffers this ring owns.
        self.wait_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn writes_land_at_their_offsets() {
        let Ok(mut ring) = Ring::new() else {
            eprintln!("no io_uring here; skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join(name))
                .unwrap()
        };
        let (a, b) = (open("a"), open("b"));
        // As many writes as the ring holds, spread over two files, each from the middle of its buffer.
        for i in 0..ENTRIES as usize {
            let file = if i % 2 == 0 { &a } else { &b };
            let mut buffer = vec![0xEEu8; 30];
            buffer[10..20].fill(i as u8);
            ring.write(i, file, buffer, 10, 10, (i / 2 * 10) as u64).unwrap();
        }
        let (full, _) = ring.write(999, &a, vec![1], 0, 1, 0).unwrap_err();
        assert_eq!(full, vec![1], "a full ring hands the buffer back");
        ring.submit();
        let mut answers = ring.wait_all();
        assert_eq!(ring.in_flight(), 0);
        answers.sort_by_key(|a| a.0);
        assert_eq!(answers.len(), ENTRIES as usize);
        for (i, (tag, result, buffer)) in answers.into_iter().enumerate() {
            assert_eq!(tag, i);
            assert_eq!(result.unwrap(), 10);
            assert_eq!(buffer[10], i as u8, "each buffer comes back with its answer");
        }
        let mut back = vec![0u8; ENTRIES as usize / 2 * 10];
        b.read_exact_at(&mut back, 0).unwrap();
        for k in 0..ENTRIES as usize / 2 {
            assert_eq!(back[k * 10..k * 10 + 10], [(2 * k + 1) as u8; 10]);
        }
        // An error comes back as an error, with its tag.
        let read_only = File::open(dir.path().join("a")).unwrap();
        ring.write(7, &read_only, vec![1], 0, 1, 0).unwrap();
        let answers = ring.wait_all();
        assert_eq!(answers[0].0, 7);
        assert_eq!(
            answers[0].1.as_ref().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
