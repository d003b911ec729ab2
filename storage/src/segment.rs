//! One segment: a `.log` file of record batches plus its `.index` and `.timeindex`.
//!
//! Files are named by the segment's base offset, zero-padded to 20 digits. Invariants:
//! * `size` is the logical length of valid batches; bytes past it in the file (preallocation,
//!   padding of the tail block) are never read as data;
//! * batches are contiguous: the first starts at `base_offset`, each next one at the previous
//!   one's last offset + 1, and `next_offset` is one past the last;
//! * only the active segment has an `Appender`; a sealed segment's writes have all landed;
//! * a sealed segment is `unfinished` until its data is synced, its file trimmed to exactly `size`
//!   bytes and its indexes written and synced (`Log::finish_sealed`); a finished one is never written again.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use glommio::io::{DmaFile, OpenOptions};
use mlog_wire::batch::{BatchHeader, HEADER_LEN};

use crate::appender::Appender;
use crate::error::{IoContext, Result};
use crate::index::{IndexWrite, OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};

/// The suffixes of a segment's files.
pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";
/// A retired segment's `.log` file kept for reuse by the next roll (see `LogConfig::recycle_segments`).
pub(crate) const SPARE_SUFFIX: &str = "spare";

/// `dir/00000000000000000042.<suffix>`.
pub(crate) fn file_path(dir: &Path, base_offset: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// Parses a segment file name into (base offset, suffix).
pub(crate) fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, suffix) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let suffix = [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX, SPARE_SUFFIX]
        .into_iter()
        .find(|s| *s == suffix)?;
    Some((stem.parse().ok()?, suffix))
}

/// What the log knows of one appended batch, for index bookkeeping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchMeta {
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
    pub len: u64,
}

pub(crate) struct Segment {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size: u64,
    /// Largest record timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Last offset of the batch holding `max_timestamp`.
    pub max_timestamp_offset: u64,
    pub file: Rc<DmaFile>,
    pub log_path: PathBuf,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Present while active.
    pub appender: Option<Appender>,
    /// No more appends; the indexes are frozen.
    pub sealed: bool,
    /// Sealed, but not yet trimmed and synced with its indexes.
    pub unfinished: bool,
    pub bytes_since_index: u64,
    /// File length including preallocated space.
    pub allocated: u64,
    /// When this process opened or created the segment: its age for `segment_ms` when record
    /// timestamps cannot tell it (see `Log::active_segment_age`).
    pub created: Instant,
    /// Created by this process (a roll), not opened from disk: then its age by record time rolls
    /// it only once its wall-clock age agrees (`Log::roll_if_needed`).
    pub fresh: bool,
    /// Max timestamp of the batch at position 0, once known: set when that batch is tracked, or
    /// read from the file (`read_first_batch_timestamp`) for a segment opened from disk.
    pub first_batch_timestamp: Option<i64>,
    /// An index file did not exist when the segment was opened: it must be rebuilt.
    pub indexes_missing: bool,
}

impl Segment {
    /// Opens (creating if needed) the files of the segment at `base_offset`. The log file's current
    /// length is returned in `allocated`; `size` starts at 0 and is set by the caller (from a scan or
    /// a clean-shutdown record).
    pub(crate) async fn open(
        dir: &Path,
        base_offset: u64,
        index_max_bytes: u32,
        writable: bool,
    ) -> Result<Segment> {
        let log_path = file_path(dir, base_offset, LOG_SUFFIX);
        let index_path = file_path(dir, base_offset, INDEX_SUFFIX);
        let time_index_path = file_path(dir, base_offset, TIME_INDEX_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&log_path)
            .await
            .ctx("opening segment", &log_path)?;
        let allocated = file
            .file_size()
            .await
            .ctx("reading segment size", &log_path)?;
        let indexes_missing = !index_path.exists() || !time_index_path.exists();
        let index = OffsetIndex::open(&index_path, index_max_bytes, writable)?;
        let time_index = TimeIndex::open(&time_index_path, index_max_bytes, writable)?;
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp: i64::MIN,
            max_timestamp_offset: base_offset,
            file: Rc::new(file),
            log_path,
            index,
            time_index,
            appender: None,
            sealed: !writable,
            unfinished: false,
            bytes_since_index: 0,
            allocated,
            created: Instant::now(),
            fresh: false,
            first_batch_timestamp: None,
            indexes_missing,
        })
    }

    /// Offset relative to the base offset, as the indexes store it.
    pub(crate) fn relative(&self, offset: u64) -> u32 {
        debug_assert!(offset >= self.base_offset && offset - self.base_offset <= u32::MAX as u64);
        (offset - self.base_offset) as u32
    }

    /// Whether a batch of `len` bytes with `last_offset` still fits this segment's files and indexes.
    pub(crate) fn fits(&self, len: u64, last_offset: u64, segment_bytes: u64) -> bool {
        (self.size == 0 || self.size + len <= segment_bytes)
            && last_offset - self.base_offset <= u32::MAX as u64
            && !self.index.is_full()
            && !self.time_index.is_full()
    }

    /// Records a batch appended (or found by recovery) at `position` in the indexes and metadata.
    pub(crate) fn track_batch(
        &mut self,
        meta: BatchMeta,
        position: u64,
        index_interval_bytes: u32,
    ) {
        debug_assert_eq!(meta.base_offset, self.next_offset);
        if position == 0 {
            self.first_batch_timestamp = Some(meta.max_timestamp);
        }
        if meta.max_timestamp > self.max_timestamp || self.size == 0 {
            self.max_timestamp = meta.max_timestamp;
            self.max_timestamp_offset = meta.last_offset;
        }
        if self.bytes_since_index >= index_interval_bytes as u64 {
            // A full index is caught by `fits` before the append; recovery stops indexing silently.
            self.index.push(OffsetEntry {
                relative_offset: self.relative(meta.base_offset),
                position: position as u32,
            });
            self.time_index.push(TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset: self.relative(meta.last_offset),
            });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += meta.len;
        self.size = position + meta.len;
        self.next_offset = meta.last_offset + 1;
    }

    /// Adds the final time-index entry (the segment's max timestamp) so that the max timestamp of
    /// a sealed segment can be read back from its time index.
    pub(crate) fn push_final_time_entry(&mut self) {
        if self.size > 0 {
            let e = TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset: self.relative(self.max_timestamp_offset),
            };
            self.time_index.push(e);
        }
    }

    /// Freezes the indexes; they are written to their files when the segment is finished.
    pub(crate) fn seal(&mut self) {
        self.push_final_time_entry();
        self.index.seal();
        self.time_index.seal();
        self.sealed = true;
    }

    /// The work that writes and syncs both indexes (see `IndexWrite`); `indexes_written` after it.
    pub(crate) fn index_writes(&self) -> Result<[IndexWrite; 2]> {
        Ok([self.index.write_job()?, self.time_index.write_job()?])
    }

    /// Both indexes are in their files: they are mapped from there, and their memory is freed.
    pub(crate) fn indexes_written(&mut self) -> Result<()> {
        self.index.written()?;
        self.time_index.written()
    }

    /// Last readable byte position: data below it is in the file.
    pub(crate) fn readable_upto(&self) -> u64 {
        match &self.appender {
            Some(a) => a.state().written_upto().min(self.size),
            None => self.size,
        }
    }

    /// Where to start scanning for `offset`: the position of the last indexed batch at or below it.
    pub(crate) fn scan_start(&self, offset: u64) -> u64 {
        if offset <= self.base_offset {
            return 0;
        }
        let rel = (offset - self.base_offset).min(u32::MAX as u64) as u32;
        self.index.lookup(rel).map_or(0, |e| e.position as u64)
    }

    /// Max timestamp of a sealed segment whose indexes end with the final entry.
    pub(crate) fn load_max_timestamp(&mut self) {
        if let Some(e) = self.time_index.last() {
            self.max_timestamp = e.timestamp;
            self.max_timestamp_offset = self.base_offset + e.relative_offset as u64;
        }
    }

    /// Readies the indexes of a sealed segment for appends again (after `truncate_suffix`).
    pub(crate) fn reopen_indexes_for_append(&mut self) -> Result<()> {
        self.index.make_writable()?;
        self.time_index.make_writable()?;
        self.sealed = false;
        Ok(())
    }
}

/// Max timestamp of the batch at the start of a segment file; -1 (no timestamp) if the file holds
/// no readable batch header there.
pub(crate) async fn read_first_batch_timestamp(file: &DmaFile, path: &Path) -> Result<i64> {
    let block = file.alignment().max(HEADER_LEN as u64) as usize;
    let data = file
        .read_at_aligned(0, block)
        .await
        .ctx("reading the first batch header", path)?;
    Ok(data
        .get(..HEADER_LEN)
        .and_then(|h| BatchHeader::parse(h).ok())
        .map_or(-1, |h| h.max_timestamp))
}
