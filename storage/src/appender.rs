//! DMA (O_DIRECT) appends to one segment file, with a rewritten tail block and ordered completion.
//!
//! Bytes are copied into an aligned write buffer; a full buffer is written as one I/O. `submit_tail`
//! writes the partially filled buffer padded to the block size, and the new buffer starts with a
//! copy of that partial block, so the block is rewritten as it fills.
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
//! A sync covers a position once `written_upto` reached it: `fdatasync` is issued only then.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use event_listener::Event;
use glommio::io::{DmaBuffer, DmaFile};

use crate::error::{IoContext, Result, StorageError};

/// State shared between the appender and its write tasks.
pub(crate) struct WriteState {
    written_upto: Cell<u64>,
    in_flight: Cell<usize>,
    failure: RefCell<Option<String>>,
    changed: Event,
}

impl WriteState {
    fn new(written_upto: u64) -> Rc<Self> {
        Rc::new(WriteState {
            written_upto: Cell::new(written_upto),
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

    /// Waits until fewer than `limit` writes are in flight.
    pub(crate) async fn wait_room(&self, limit: usize) -> Result<()> {
        self.wait_for(|s| s.in_flight.get() < limit).await
    }
}

/// Appends bytes to one segment file through aligned DMA writes.
pub(crate) struct Appender {
    file: Rc<DmaFile>,
    path: PathBuf,
    state: Rc<WriteState>,
    block: u64,
    buf: DmaBuffer,
    /// File position of `buf[0]`; always block-aligned.
    buf_pos: u64,
    /// Valid bytes in `buf`.
    buf_len: usize,
    /// Logical end of the last submitted write.
    submitted_upto: u64,
}

impl Appender {
    /// Starts appending at `end`, the logical end of the valid data in `file`. The partial block
    /// below `end`, if any, is read back so it can be rewritten as it fills.
    pub(crate) async fn new(
        file: Rc<DmaFile>,
        path: PathBuf,
        end: u64,
        buffer_bytes: usize,
    ) -> Result<Self> {
        let block = file.alignment().max(512);
        if !(buffer_bytes as u64).is_multiple_of(block) {
            return Err(StorageError::InvalidConfig(
                "write_buffer_bytes is not a multiple of the disk's DMA alignment",
            ));
        }
        let buf_pos = end / block * block;
        let buf_len = (end - buf_pos) as usize;
        let mut buf = file.alloc_dma_buffer(buffer_bytes);
        if buf_len > 0 {
            let tail = file
                .read_at_aligned(buf_pos, block as usize)
                .await
                .ctx("reading tail block", &path)?;
            if tail.len() < buf_len {
                return Err(StorageError::io(
                    "reading tail block",
                    &path,
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            buf.as_bytes_mut()[..buf_len].copy_from_slice(&tail[..buf_len]);
        }
        Ok(Appender {
            file,
            path,
            state: WriteState::new(end),
            block,
            buf,
            buf_pos,
            buf_len,
            submitted_upto: end,
        })
    }

    /// Logical end of the appended data (buffered or written).
    pub(crate) fn end(&self) -> u64 {
        self.buf_pos + self.buf_len as u64
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
                self.submit(full, pos);
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
        let padded = (self.buf_len as u64).div_ceil(self.block) * self.block;
        let tail_start = end / self.block * self.block;
        let keep = (end - tail_start) as usize;
        let mut fresh = self.file.alloc_dma_buffer(self.buf.len());
        let keep_from = (tail_start - self.buf_pos) as usize;
        fresh.as_bytes_mut()[..keep].copy_from_slice(&self.buf.as_bytes()[keep_from..self.buf_len]);
        let mut out = std::mem::replace(&mut self.buf, fresh);
        // Zero the padding: stale buffer bytes would otherwise reach the disk.
        out.as_bytes_mut()[self.buf_len..padded as usize].fill(0);
        out.trim_to_size(padded as usize);
        let pos = self.buf_pos;
        self.buf_pos = tail_start;
        self.buf_len = keep;
        self.submit(out, pos);
        end
    }

    fn submit(&mut self, buf: DmaBuffer, pos: u64) {
        let start = self.submitted_upto;
        // Callers have already moved `buf_pos`/`buf_len` past this buffer, so `end()` is where its
        // data stops: the buffer's end for a full one, the data's end for a padded tail.
        let end = (pos + buf.len() as u64).min(self.end());
        debug_assert!(end >= start && pos <= start);
        self.submitted_upto = end;
        let rewrites_tail = pos < start;
        let state = self.state.clone();
        let file = self.file.clone();
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

    /// Waits for every submitted write, then `fdatasync`s. Returns the position now durable.
    pub(crate) async fn sync_upto(
        file: &DmaFile,
        state: &WriteState,
        path: &std::path::Path,
        pos: u64,
    ) -> Result<u64> {
        state.wait_written(pos).await?;
        if let Err(e) = file.fdatasync().await {
            let err = StorageError::glommio("fdatasync", path, e);
            // A failed fdatasync leaves the page state unknown (the "fsyncgate" lesson): never retry it
            // as if it were fine.
            state.fail(err.to_string());
            return Err(err);
        }
        Ok(pos)
    }

    pub(crate) fn file(&self) -> &Rc<DmaFile> {
        &self.file
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
