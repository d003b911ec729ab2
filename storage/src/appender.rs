//! DMA (O_DIRECT) appends to one segment file, with a rewritten tail block and ordered completion.
//!
//! Bytes are copied into an aligned write buffer; a full buffer is written as one I/O. `submit_tail`
//! writes the partially filled buffer padded to the block size. The partial block it leaves behind
//! is rewritten as it fills, from a one-block buffer of its own (the *head*), written on its own:
//! no write ever spans both a block written before and fresh space. ext4 cannot issue such a write
//! into preallocated (unwritten) space under its shared inode lock, so io_uring would hand it to a
//! kernel worker thread, one thread wakeup per write (measured: one per group-commit round).
//!
//! Ordering (io_uring does not keep submission order):
//! * every write covers a *logical* range `[start, end)` of the file, contiguous with the previous
//!   write's; a write completes (advances `written_upto`) only after its predecessor did, so
//!   `written_upto` is a clean watermark: every byte below it is in the file;
//! * a write that begins inside the block a previous partial write left behind is issued only
//!   after that write completed, so the older, shorter copy of the block can never land last;
//! * after any failed or short write the appender is failed for good: nothing after a hole may be
//!   reported written. The log then refuses writes until reopened and recovered.
//!
//! A sync covers a position once `written_upto` reached it: `fdatasync` is issued only then, and
//! only if some plain write (one without `O_DSYNC`) is not yet covered by an earlier fdatasync.
//!
//! Write-through: full write buffers (the throughput case) go through the plain file handle, every
//! other write (tails and head blocks, which only a sync asks for) through a second handle opened
//! with `O_DSYNC`, so that it is durable when it completes, unless a plain write that no
//! `fdatasync` covered yet went before it (then the sync needs an `fdatasync` anyway). A sync whose
//! writes all went through needs no `fdatasync`: one I/O and one completion per round instead of
//! two, issued by the kernel right behind the write instead of after the executor saw it complete
//! (broker produce p99 at half load 3.59 ms against 4.67 in back-to-back benchmark runs;
//! `docs/architecture.md`, "Write-through tails").

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use event_listener::Event;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use crate::config::BLOCK_BYTES;
use crate::error::{IoContext, Result, StorageError};

/// State shared between the appender and its write tasks.
pub(crate) struct WriteState {
    written_upto: Cell<u64>,
    /// Logical end of the last write that went out without `O_DSYNC`.
    plain_upto: Cell<u64>,
    /// `written_upto` when the last successful `fdatasync` was issued: every write ending there or
    /// below is durable.
    synced_upto: Cell<u64>,
    /// `fdatasync`s issued (tests read it).
    fdatasyncs: Cell<u64>,
    in_flight: Cell<usize>,
    failure: RefCell<Option<String>>,
    changed: Event,
}

impl WriteState {
    fn new(written_upto: u64) -> Rc<Self> {
        Rc::new(WriteState {
            written_upto: Cell::new(written_upto),
            plain_upto: Cell::new(written_upto),
            synced_upto: Cell::new(written_upto),
            fdatasyncs: Cell::new(0),
            in_flight: Cell::new(0),
            failure: RefCell::new(None),
            changed: Event::new(),
        })
    }

    /// Every byte below this position is in the file (not necessarily synced).
    pub(crate) fn written_upto(&self) -> u64 {
        self.written_upto.get()
    }

    fn check(&self) -> Result<()> {
        match &*self.failure.borrow() {
            Some(why) => Err(StorageError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, why: String) {
        self.failure.borrow_mut().get_or_insert(why);
        self.changed.notify(usize::MAX);
    }

    /// Waits until `cond` holds or the appender failed.
    async fn wait_for(&self, cond: impl Fn(&Self) -> bool) -> Result<()> {
        loop {
            self.check()?;
            if cond(self) {
                return Ok(());
            }
            let listener = self.changed.listen();
            self.check()?;
            if cond(self) {
                return Ok(());
            }
            listener.await;
        }
    }

    /// Waits until every byte below `pos` is written.
    pub(crate) async fn wait_written(&self, pos: u64) -> Result<()> {
        self.wait_for(|s| s.written_upto.get() >= pos).await
    }

    /// Whether a plain write went out that no `fdatasync` covered yet.
    fn plain_unsynced(&self) -> bool {
        self.plain_upto.get() > self.synced_upto.get()
    }

    /// Waits until fewer than `limit` writes are in flight.
    pub(crate) async fn wait_room(&self, limit: usize) -> Result<()> {
        self.wait_for(|s| s.in_flight.get() < limit).await
    }
}

/// The partial block at the end of the data, already (partly) written: `buf` is one block, its
/// bytes past `len` are zero.
struct Head {
    buf: DmaBuffer,
    len: usize,
}

/// Appends bytes to one segment file through aligned DMA writes.
pub(crate) struct Appender {
    file: Rc<DmaFile>,
    /// The same file opened with `O_DSYNC`: a write through it is durable when it completes.
    through: Rc<DmaFile>,
    path: PathBuf,
    state: Rc<WriteState>,
    block: u64,
    /// The block just below `buf_pos`, while the data ends inside it (then `buf_len` is 0).
    head: Option<Head>,
    buf: DmaBuffer,
    /// File position of `buf[0]`; always block-aligned.
    buf_pos: u64,
    /// Valid bytes in `buf`.
    buf_len: usize,
    /// Logical end of the last submitted write.
    submitted_upto: u64,
}

impl Appender {
    /// Starts appending at `end`, the logical end of the valid data in `file` (at `path`, which it
    /// opens a second time for write-through). The partial block below `end`, if any, is read back
    /// so it can be rewritten as it fills. The data below `end` counts as synced: the caller syncs
    /// it before relying on it.
    pub(crate) async fn new(
        file: Rc<DmaFile>,
        path: PathBuf,
        end: u64,
        buffer_bytes: usize,
    ) -> Result<Self> {
        // Writes are aligned to the filesystem's block, not only to the device's (often 512 B): ext4
        // serves a write into preallocated (unwritten) space that is not block-aligned under the
        // inode's exclusive lock, zeroing the rest of the block, so io_uring cannot issue it
        // without blocking and hands it to a kernel worker thread (seen with fio on a 512 B virtio
        // disk: 512-aligned writes into fallocated space went through io-wq, 4 KiB-aligned did not).
        let block = file.alignment().max(BLOCK_BYTES as u64);
        if !(buffer_bytes as u64).is_multiple_of(block) {
            return Err(StorageError::InvalidConfig(
                "write_buffer_bytes is not a multiple of the disk's DMA alignment",
            ));
        }
        let block_start = end / block * block;
        let head_len = (end - block_start) as usize;
        let head = if head_len > 0 {
            let tail = file
                .read_at_aligned(block_start, block as usize)
                .await
                .ctx("reading tail block", &path)?;
            if tail.len() < head_len {
                return Err(StorageError::io(
                    "reading tail block",
                    &path,
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            Some(new_head(&file, block, &tail[..head_len]))
        } else {
            None
        };
        let through = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(&path)
            .await
            .ctx("opening segment for write-through", &path)?;
        Ok(Appender {
            buf: file.alloc_dma_buffer(buffer_bytes),
            file,
            through: Rc::new(through),
            path,
            state: WriteState::new(end),
            block,
            buf_pos: if head.is_some() {
                block_start + block
            } else {
                end
            },
            head,
            buf_len: 0,
            submitted_upto: end,
        })
    }

    /// Logical end of the appended data (buffered or written).
    pub(crate) fn end(&self) -> u64 {
        match &self.head {
            Some(head) => self.buf_pos - self.block + head.len as u64,
            None => self.buf_pos + self.buf_len as u64,
        }
    }

    pub(crate) fn state(&self) -> &Rc<WriteState> {
        &self.state
    }

    pub(crate) fn check(&self) -> Result<()> {
        self.state.check()
    }

    /// Copies `data` into the write buffers, writing every buffer that fills. Never waits: the caller
    /// applies back-pressure with `WriteState::wait_room` once it released its borrows.
    pub(crate) fn append(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if let Some(head) = &mut self.head {
                let n = (self.block as usize - head.len).min(data.len());
                head.buf.as_bytes_mut()[head.len..head.len + n].copy_from_slice(&data[..n]);
                head.len += n;
                data = &data[n..];
                if head.len == self.block as usize {
                    let pos = self.buf_pos - self.block;
                    if let Some(full) = self.head.take() {
                        self.submit(full.buf, pos, Handle::Through);
                    }
                }
                continue;
            }
            let room = self.buf.len() - self.buf_len;
            let n = room.min(data.len());
            self.buf.as_bytes_mut()[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len == self.buf.len() {
                let fresh = self.file.alloc_dma_buffer(self.buf.len());
                let full = std::mem::replace(&mut self.buf, fresh);
                let pos = self.buf_pos;
                self.buf_pos += full.len() as u64;
                self.buf_len = 0;
                self.submit(full, pos, Handle::Plain);
            }
        }
    }

    /// Writes the partially filled buffer (padded to the block size) so that a following sync covers
    /// everything appended so far. Returns the logical position the write reaches.
    pub(crate) fn submit_tail(&mut self) -> u64 {
        let end = self.end();
        if end == self.submitted_upto {
            return end;
        }
        if let Some(head) = self.head.take() {
            // The data ends in the head block: write it, and keep rewriting a copy as it fills.
            self.head = Some(new_head(
                &self.file,
                self.block,
                &head.buf.as_bytes()[..head.len],
            ));
            let pos = self.buf_pos - self.block;
            self.submit(head.buf, pos, Handle::Through);
            return end;
        }
        let padded = (self.buf_len as u64).div_ceil(self.block) * self.block;
        let keep = self.buf_len % self.block as usize;
        let fresh = self.file.alloc_dma_buffer(self.buf.len());
        let mut out = std::mem::replace(&mut self.buf, fresh);
        // Zero the padding: stale buffer bytes would otherwise reach the disk.
        out.as_bytes_mut()[self.buf_len..padded as usize].fill(0);
        out.trim_to_size(padded as usize);
        let pos = self.buf_pos;
        if keep > 0 {
            let partial = &out.as_bytes()[self.buf_len - keep..self.buf_len];
            self.head = Some(new_head(&self.file, self.block, partial));
        }
        self.buf_pos += padded;
        self.buf_len = 0;
        self.submit(out, pos, Handle::Through);
        end
    }

    /// Issues a write; `handle` says which handle it wants, and a write wanting `Through` goes
    /// plain too while a plain write is unsynced (the sync that covers it needs an `fdatasync`
    /// anyway, which would make write-through's own flush of the disk cache a second one).
    fn submit(&mut self, buf: DmaBuffer, pos: u64, handle: Handle) {
        let start = self.submitted_upto;
        // Callers have already moved `buf_pos`/`buf_len` past this buffer, so `end()` is where its
        // data stops: the buffer's end for a full one, the data's end for a padded tail.
        let end = (pos + buf.len() as u64).min(self.end());
        debug_assert!(end >= start && pos <= start);
        self.submitted_upto = end;
        let rewrites_tail = pos < start;
        let state = self.state.clone();
        let file = if handle == Handle::Through && !state.plain_unsynced() {
            self.through.clone()
        } else {
            state.plain_upto.set(end);
            self.file.clone()
        };
        let path = self.path.clone();
        state.in_flight.set(state.in_flight.get() + 1);
        glommio::spawn_local(async move {
            let outcome = write_in_order(&file, &state, buf, pos, start, rewrites_tail).await;
            state.in_flight.set(state.in_flight.get() - 1);
            match outcome {
                Ok(()) => state.written_upto.set(end),
                Err(why) => state.fail(format!("writing {} at {pos}: {why}", path.display())),
            }
            state.changed.notify(usize::MAX);
        })
        .detach();
    }

    /// Waits for every submitted write, then `fdatasync`s if a plain write is not yet covered by
    /// one. Returns the position now durable.
    pub(crate) async fn sync_upto(
        file: &DmaFile,
        state: &WriteState,
        path: &std::path::Path,
        pos: u64,
    ) -> Result<u64> {
        state.wait_written(pos).await?;
        // Every write below `pos` completed. Those that went through are durable; the plain ones
        // ended at or below `plain_upto`, so if an fdatasync issued after they completed covered
        // that far, they are too. (Conservative: a plain write past `pos` also asks for one.)
        if !state.plain_unsynced() {
            return Ok(pos);
        }
        let covers = state.written_upto.get();
        state.fdatasyncs.set(state.fdatasyncs.get() + 1);
        if let Err(e) = file.fdatasync().await {
            let err = StorageError::glommio("fdatasync", path, e);
            // A failed fdatasync leaves the page state unknown (the "fsyncgate" lesson): never retry it
            // as if it were fine.
            state.fail(err.to_string());
            return Err(err);
        }
        // An overlapping sync's fdatasync of this file may have failed meanwhile, taking the error
        // report this one would otherwise have seen: it failed the state at once.
        state.check()?;
        state.synced_upto.set(state.synced_upto.get().max(covers));
        Ok(pos)
    }

    pub(crate) fn file(&self) -> &Rc<DmaFile> {
        &self.file
    }
}

/// Which of a segment's two handles a write goes through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handle {
    Plain,
    Through,
}

/// A head block holding `data` (shorter than a block), zero past it.
fn new_head(file: &DmaFile, block: u64, data: &[u8]) -> Head {
    let mut buf = file.alloc_dma_buffer(block as usize);
    buf.as_bytes_mut()[..data.len()].copy_from_slice(data);
    buf.as_bytes_mut()[data.len()..].fill(0);
    Head {
        buf,
        len: data.len(),
    }
}

/// Issues one write, respecting the two ordering rules in the module docs.
async fn write_in_order(
    file: &DmaFile,
    state: &WriteState,
    buf: DmaBuffer,
    pos: u64,
    logical_start: u64,
    rewrites_tail: bool,
) -> std::result::Result<(), String> {
    if rewrites_tail {
        state
            .wait_written(logical_start)
            .await
            .map_err(|e| e.to_string())?;
    }
    let want = buf.len();
    let written = file.write_at(buf, pos).await;
    state
        .wait_written(logical_start)
        .await
        .map_err(|e| e.to_string())?;
    match written {
        Ok(n) if n == want => Ok(()),
        Ok(n) => Err(format!("short write: {n} of {want} bytes")),
        Err(e) => Err(std::io::Error::from(e).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::fd::AsRawFd;

    /// Runs `test` on an executor, with the path of a segment file in a fresh, probed directory.
    fn with_segment_path<F: std::future::Future<Output = ()>>(test: impl FnOnce(PathBuf) -> F) {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async move {
            let dir = tempfile::tempdir().expect("temp dir");
            crate::dma_probe::ensure_probed(dir.path())
                .await
                .expect("probe");
            test(dir.path().join("seg.log")).await;
        });
    }

    async fn open_segment(path: &std::path::Path) -> Rc<DmaFile> {
        Rc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .dma_open(path)
                .await
                .expect("open"),
        )
    }

    /// Asserts that the file starts with `expected` and holds only zeros after it, up to
    /// the block's end.
    async fn assert_holds(file: &DmaFile, expected: &[u8]) {
        let on_disk = file
            .read_at_aligned(0, expected.len().next_multiple_of(BLOCK_BYTES))
            .await
            .expect("read");
        assert_eq!(&on_disk[..expected.len()], expected);
        assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
    }

    /// Appends, tail submits and syncs (as sync rounds do) and restarts (as a reopen does, at
    /// block-aligned or mid-block ends) in any order, with buffers of one to four blocks: the file
    /// always holds exactly the appended bytes, zeros after them.
    fn check(ops: Vec<(usize, u8)>, buffer_blocks: usize) {
        with_segment_path(|path| async move {
            let buffer = buffer_blocks * BLOCK_BYTES;
            let mut a = Appender::new(open_segment(&path).await, path.clone(), 0, buffer)
                .await
                .expect("appender");
            let mut expected = Vec::new();
            for (i, (len, op)) in ops.into_iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                a.append(&data);
                expected.extend_from_slice(&data);
                assert_eq!(a.end(), expected.len() as u64);
                match op % 4 {
                    0 | 1 => {}
                    2 => {
                        let end = a.submit_tail();
                        let file = a.file().clone();
                        Appender::sync_upto(&file, a.state(), &path, end)
                            .await
                            .expect("synced");
                    }
                    _ => {
                        let end = a.submit_tail();
                        a.state().wait_written(end).await.expect("written");
                        a = Appender::new(open_segment(&path).await, path.clone(), end, buffer)
                            .await
                            .expect("reopened appender");
                    }
                }
            }
            let end = a.submit_tail();
            a.state().wait_written(end).await.expect("written");
            assert_holds(&*open_segment(&path).await, &expected).await;
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn the_file_holds_exactly_what_was_appended(
            ops in proptest::collection::vec((1usize..3 * BLOCK_BYTES, any::<u8>()), 1..40),
            buffer_blocks in 1usize..5,
        ) {
            check(ops, buffer_blocks);
        }
    }

    /// Syncs of tails and head blocks need no fdatasync (their writes went through the `O_DSYNC`
    /// handle); a full buffer's plain write makes the next sync issue one, and only that sync.
    #[test]
    fn only_plain_writes_need_an_fdatasync() {
        with_segment_path(|path| async move {
            let file = open_segment(&path).await;
            let mut a = Appender::new(file.clone(), path.clone(), 0, 4 * BLOCK_BYTES)
                .await
                .expect("appender");
            // SAFETY: F_GETFL only reads the descriptor's status flags.
            let flags = unsafe { libc::fcntl(a.through.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(
                flags & libc::O_DSYNC,
                0,
                "the write-through handle lacks O_DSYNC"
            );
            let mut expected = Vec::new();
            let mut append_and_sync = async |len: usize| {
                let data: Vec<u8> = (0..len).map(|i| (expected.len() + i) as u8).collect();
                a.append(&data);
                expected.extend_from_slice(&data);
                let end = a.submit_tail();
                Appender::sync_upto(&file, &a.state, &path, end)
                    .await
                    .expect("synced");
                a.state.fdatasyncs.get()
            };
            // A tail, then the head block it left, rewritten as it fills.
            for len in [100, 1000, BLOCK_BYTES] {
                assert_eq!(append_and_sync(len).await, 0);
            }
            // More than a buffer: a full one goes out plain, and the sync covering it needs one.
            assert_eq!(append_and_sync(5 * BLOCK_BYTES).await, 1);
            assert_eq!(append_and_sync(10).await, 1);
            assert_holds(&file, &expected).await;
        });
    }
}
