//! Per-log configuration. Every buffer and queue the log owns has its bound here, so a log's resident
//! memory is a function of this struct, not of the data it holds (see `LogConfig::memory_bound_bytes`).

use std::time::Duration;

use crate::error::{Result, StorageError};

/// When appended data is made durable (a group-commit sync round: `O_DSYNC` writes or `fdatasync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every `append` returns only after a group-commit round made it durable.
    Always,
    /// A background task flushes at this interval; `append` returns once the batch is buffered.
    Interval(Duration),
    /// Only explicit `flush()`, segment roll and `close()` sync.
    Never,
}

/// Configuration of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll the active segment when appending would take it past this size.
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old (and non-empty).
    pub segment_ms: Option<Duration>,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Maximum size of one segment's offset index file (entries are 8 bytes; the time index gets
    /// the same number of 12-byte entries). A full index rolls the segment.
    pub index_max_bytes: u32,
    /// Largest batch `append` accepts.
    pub max_batch_bytes: usize,
    /// Size of one DMA write buffer; a full buffer is written as one I/O.
    pub write_buffer_bytes: usize,
    /// Write buffers in flight to the disk at once before `append` waits (back-pressure).
    pub max_writes_in_flight: usize,
    /// Recently appended batches kept in memory so tail reads never touch the disk.
    pub batch_cache_bytes: usize,
    /// Segment files are extended with `fallocate` in steps of this size (capped by `segment_bytes`),
    /// so a full disk is reported before data is accepted and syncs do not have to grow the file.
    /// Each step drains the in-flight DMA writes (ext4 waits for them before changing extents), so
    /// small steps cost throughput: 32 MiB steps measured ~0.75-0.85 of raw, 256 MiB ~0.95.
    pub preallocate_bytes: u64,
    /// Keep the file of the newest segment that retention deletes and reuse it for the next roll.
    /// Its blocks are already written, so appends overwrite them in place: no `fallocate`, and no
    /// extent conversion for each fdatasync to persist (ext4 writes the inode's extent metadata in
    /// every fdatasync that follows writes into fallocated space). Costs at most one segment of disk
    /// per partition beyond the log, which a log at its retention limit holds after every roll anyway.
    pub recycle_segments: bool,
    /// Delete the oldest segments while the log is larger than this. Checked at every roll and by
    /// `Log::enforce_retention`.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this: by its timestamp or, for records
    /// without one (-1), by the segment file's modification time.
    pub retention_ms: Option<Duration>,
    /// When appends are synced.
    pub flush: FlushPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: 4096,
            index_max_bytes: 10 << 20,
            max_batch_bytes: 1 << 20,
            write_buffer_bytes: 1 << 20,
            max_writes_in_flight: 8,
            batch_cache_bytes: 16 << 20,
            preallocate_bytes: 128 << 20,
            recycle_segments: true,
            retention_bytes: None,
            retention_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            flush: FlushPolicy::Always,
        }
    }
}

/// DMA alignment the log assumes for buffer sizes (the file's own alignment is checked at open).
pub(crate) const BLOCK_BYTES: usize = 4096;

impl LogConfig {
    /// Checks the configuration for values the log cannot work with.
    pub fn validate(&self) -> Result<()> {
        let bad = |why| Err(StorageError::InvalidConfig(why));
        if self.write_buffer_bytes < BLOCK_BYTES
            || !self.write_buffer_bytes.is_multiple_of(BLOCK_BYTES)
        {
            return bad("write_buffer_bytes must be a non-zero multiple of 4096");
        }
        if self.max_writes_in_flight == 0 {
            return bad("max_writes_in_flight must be at least 1");
        }
        if self.index_max_bytes < 64 {
            return bad("index_max_bytes must be at least 64");
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1");
        }
        if self.segment_bytes > u32::MAX as u64 {
            return bad("segment_bytes must fit the index's 32-bit positions");
        }
        if (self.max_batch_bytes as u64) > self.segment_bytes {
            return bad("max_batch_bytes must not exceed segment_bytes");
        }
        if self.max_batch_bytes < mlog_wire::batch::HEADER_LEN {
            return bad("max_batch_bytes is smaller than a batch header");
        }
        Ok(())
    }

    /// Upper bound of the memory one open log holds, in bytes: the batch cache (which also holds every
    /// batch not yet written to disk), the write buffers in flight plus the one being filled, one
    /// batch in transit, the in-memory indexes of the active segment and of the one sealed segment
    /// that may still wait for its finish, and the idempotent producers' state (a fixed number of
    /// producers). Finished segments' indexes are file-backed read-only maps, reclaimable by the
    /// kernel, so they are not counted.
    pub fn memory_bound_bytes(&self) -> u64 {
        let unwritten = (self.max_writes_in_flight as u64 + 1) * self.write_buffer_bytes as u64
            + self.max_batch_bytes as u64;
        let cache = (self.batch_cache_bytes as u64).max(unwritten);
        let index = 2 * (self.index_max_bytes as u64 / 8 * 20);
        cache + unwritten + index + crate::producers::MEMORY_BOUND_BYTES
    }
}
