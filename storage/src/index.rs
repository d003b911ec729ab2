//! Sparse, memory-mapped segment indexes (memmap2).
//!
//! * `OffsetIndex`: entries `(relative offset u32, file position u32)`, 8 bytes, big-endian. An entry
//!   says "the batch whose base offset is `base + relative` starts at `position`".
//! * `TimeIndex`: entries `(timestamp i64, relative offset u32)`, 12 bytes. An entry says "every
//!   record at an offset `<= base + relative` has a timestamp `<= timestamp`"; timestamps strictly
//!   increase from entry to entry.
//!
//! Invariants: entries are strictly increasing in both fields; the active segment's index file is
//! pre-sized to `index_max_bytes` and mapped read-write, a sealed segment's file is trimmed to its
//! entries and mapped read-only. A map is always dropped before its file is resized, because touching
//! a mapping past the end of a shrunk file raises SIGBUS. Index files are never trusted after an
//! unclean stop for segments past the recovery point: recovery rebuilds them from the log.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::error::{IoContext, Result};

enum Map {
    None,
    ReadOnly(Mmap),
    ReadWrite(MmapMut),
}

/// A file of fixed-size entries, mapped into memory.
struct IndexFile {
    path: PathBuf,
    file: File,
    map: Map,
    entry_bytes: usize,
    entries: usize,
    max_entries: usize,
    /// Bytes from the start of the file whose blocks are reserved (writable map only).
    reserved: u64,
}

/// Index blocks are reserved in steps of this size.
const RESERVE_STEP_BYTES: u64 = 64 << 10;

impl IndexFile {
    /// Opens (creating if needed) an index. `writable` maps it read-write at its maximum size;
    /// otherwise the file is mapped as it is, holding `len / entry_bytes` entries.
    fn open(path: &Path, entry_bytes: usize, max_bytes: u32, writable: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("opening index", path)?;
        let len = file.metadata().ctx("reading index size", path)?.len() as usize;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            file,
            map: Map::None,
            entry_bytes,
            entries: len / entry_bytes,
            max_entries: max_bytes as usize / entry_bytes,
            reserved: 0,
        };
        if writable {
            index.make_writable()?;
        } else {
            index.map_read_only()?;
        }
        Ok(index)
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::None => &[],
            Map::ReadOnly(m) => m,
            Map::ReadWrite(m) => m,
        }
    }

    /// Entries readable now: never more than the map holds, even after a failed resize left it
    /// unmapped.
    fn count(&self) -> usize {
        self.entries.min(self.bytes().len() / self.entry_bytes)
    }

    fn entry(&self, i: usize) -> &[u8] {
        let at = i * self.entry_bytes;
        &self.bytes()[at..at + self.entry_bytes]
    }

    /// Appends an entry; returns false when the index is full or sealed.
    fn push(&mut self, entry: &[u8]) -> bool {
        debug_assert_eq!(entry.len(), self.entry_bytes);
        if self.entries >= self.max_entries {
            return false;
        }
        let at = self.entries * self.entry_bytes;
        if self.reserve((at + entry.len()) as u64).is_err() {
            // No space for the entry: skip it. The index is sparse, so a missing entry only makes
            // lookups scan a little further; the append itself already succeeded.
            return false;
        }
        match &mut self.map {
            Map::ReadWrite(m) => m[at..at + entry.len()].copy_from_slice(entry),
            _ => return false,
        }
        self.entries += 1;
        true
    }

    fn is_full(&self) -> bool {
        self.entries >= self.max_entries
    }

    /// Makes sure the blocks under the first `needed` bytes exist, reserving `RESERVE_STEP_BYTES` at a
    /// time: a store into a sparse page of the map would need a block at fault time, and on a full
    /// disk the kernel answers that with SIGBUS instead of an error. `needed` never exceeds the
    /// file's length.
    fn reserve(&mut self, needed: u64) -> std::io::Result<()> {
        if needed <= self.reserved {
            return Ok(());
        }
        let limit = (self.max_entries * self.entry_bytes) as u64;
        let target = needed
            .div_ceil(RESERVE_STEP_BYTES)
            .saturating_mul(RESERVE_STEP_BYTES)
            .min(limit)
            .max(needed);
        // SAFETY: plain syscall on a file descriptor this struct owns; no memory is passed.
        let err = unsafe {
            libc::posix_fallocate(
                self.file.as_raw_fd(),
                self.reserved as libc::off_t,
                (target - self.reserved) as libc::off_t,
            )
        };
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
        self.reserved = target;
        Ok(())
    }

    /// Keeps only the first `n` entries (zeroing the rest of a writable map).
    fn truncate_entries(&mut self, n: usize) {
        if n >= self.entries {
            return;
        }
        let from = n * self.entry_bytes;
        let to = self.entries * self.entry_bytes;
        if let Map::ReadWrite(m) = &mut self.map {
            m[from..to].fill(0);
        }
        self.entries = n;
    }

    /// Trims the file to its entries and maps it read-only.
    fn seal(&mut self) -> Result<()> {
        self.map = Map::None;
        let len = (self.entries * self.entry_bytes) as u64;
        self.file.set_len(len).ctx("trimming index", &self.path)?;
        self.map_read_only()
    }

    /// Sizes the file to its maximum and maps it read-write.
    fn make_writable(&mut self) -> Result<()> {
        self.map = Map::None;
        let len = (self.max_entries * self.entry_bytes) as u64;
        self.file.set_len(len).ctx("sizing index", &self.path)?;
        // The file is sparse; blocks are reserved step by step as entries arrive (`reserve`).
        self.reserved = 0;
        let in_use = (self.entries.min(self.max_entries) * self.entry_bytes) as u64;
        self.reserve(in_use)
            .ctx("reserving index blocks", &self.path)?;
        // SAFETY: the file is owned by this log's shard, which is the only writer; it is never
        // shrunk while this map exists (every resize drops the map first).
        let map =
            unsafe { MmapOptions::new().map_mut(&self.file) }.ctx("mapping index", &self.path)?;
        self.map = Map::ReadWrite(map);
        self.entries = self.entries.min(self.max_entries);
        Ok(())
    }

    fn map_read_only(&mut self) -> Result<()> {
        let len = self
            .file
            .metadata()
            .ctx("reading index size", &self.path)?
            .len() as usize;
        self.entries = self.entries.min(len / self.entry_bytes);
        self.map = if len == 0 {
            Map::None
        } else {
            // SAFETY: as in `make_writable`: no one shrinks the file while it is mapped.
            Map::ReadOnly(unsafe { Mmap::map(&self.file) }.ctx("mapping index", &self.path)?)
        };
        Ok(())
    }

    /// Binary search: the last entry `i` with `key(i) <= target`, if any.
    fn last_at_or_below<K: Ord>(&self, target: K, key: impl Fn(&[u8]) -> K) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.count());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if key(self.entry(mid)) <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// A handle for `fsync` on another thread (syncs pages written through the map, too).
    fn sync_handle(&self) -> Result<File> {
        self.file
            .try_clone()
            .ctx("cloning index handle", &self.path)
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

/// One offset-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset relative to the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

/// One time-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp of any record up to `relative_offset`.
    pub timestamp: i64,
    /// Offset relative to the segment's base offset.
    pub relative_offset: u32,
}

const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;

/// The sparse offset -> position index of one segment.
pub struct OffsetIndex(IndexFile);

impl OffsetIndex {
    /// Opens the index at `path`; see `IndexFile::open`.
    pub fn open(path: &Path, max_bytes: u32, writable: bool) -> Result<Self> {
        IndexFile::open(path, OFFSET_ENTRY_BYTES, max_bytes, writable).map(OffsetIndex)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.count()
    }

    /// True when the index has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.count() == 0
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> OffsetEntry {
        let e = self.0.entry(i);
        OffsetEntry {
            relative_offset: be_u32(&e[0..4]),
            position: be_u32(&e[4..8]),
        }
    }

    /// Position of the last entry (0 when empty).
    pub fn last_position(&self) -> u64 {
        self.len()
            .checked_sub(1)
            .map_or(0, |i| self.get(i).position as u64)
    }

    /// Appends an entry; false when full.
    pub fn push(&mut self, e: OffsetEntry) -> bool {
        debug_assert!(
            self.is_empty() || self.get(self.len() - 1).relative_offset < e.relative_offset
        );
        let mut b = [0u8; OFFSET_ENTRY_BYTES];
        b[0..4].copy_from_slice(&e.relative_offset.to_be_bytes());
        b[4..8].copy_from_slice(&e.position.to_be_bytes());
        self.0.push(&b)
    }

    /// True when no further entry fits.
    pub fn is_full(&self) -> bool {
        self.0.is_full()
    }

    /// The last entry whose relative offset is `<= relative_offset`.
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        self.0
            .last_at_or_below(relative_offset, be_u32)
            .map(|i| self.get(i))
    }

    /// Drops every entry at or after position `position`.
    pub fn truncate_to_position(&mut self, position: u32) {
        let keep = (0..self.len())
            .position(|i| self.get(i).position >= position)
            .unwrap_or(self.len());
        self.0.truncate_entries(keep);
    }

    /// Checks that the entries are strictly increasing and inside the segment.
    pub fn is_sane(&self, segment_bytes: u64, offsets_in_segment: u64) -> bool {
        let mut prev: Option<OffsetEntry> = None;
        (0..self.len()).all(|i| {
            let e = self.get(i);
            let ok = (e.position as u64) < segment_bytes.max(1)
                && (e.relative_offset as u64) < offsets_in_segment.max(1)
                && prev.is_none_or(|p| {
                    p.relative_offset < e.relative_offset && p.position < e.position
                });
            prev = Some(e);
            ok
        })
    }

    pub(crate) fn seal(&mut self) -> Result<()> {
        self.0.seal()
    }

    pub(crate) fn make_writable(&mut self) -> Result<()> {
        self.0.make_writable()
    }

    pub(crate) fn clear(&mut self) {
        self.0.truncate_entries(0);
    }

    pub(crate) fn sync_handle(&self) -> Result<File> {
        self.0.sync_handle()
    }
}

/// The sparse timestamp -> offset index of one segment.
pub struct TimeIndex(IndexFile);

impl TimeIndex {
    /// Opens the index at `path`; see `IndexFile::open`. `max_offset_index_bytes` is the offset
    /// index's limit: the time index holds as many entries.
    pub fn open(path: &Path, max_offset_index_bytes: u32, writable: bool) -> Result<Self> {
        let max = max_offset_index_bytes / OFFSET_ENTRY_BYTES as u32 * TIME_ENTRY_BYTES as u32;
        IndexFile::open(path, TIME_ENTRY_BYTES, max, writable).map(TimeIndex)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.count()
    }

    /// True when the index has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.count() == 0
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> TimeEntry {
        let e = self.0.entry(i);
        TimeEntry {
            timestamp: be_i64(&e[0..8]),
            relative_offset: be_u32(&e[8..12]),
        }
    }

    /// The newest entry.
    pub fn last(&self) -> Option<TimeEntry> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    /// Appends an entry if its timestamp is newer than the last one; false when full.
    pub fn push(&mut self, e: TimeEntry) -> bool {
        if self.last().is_some_and(|l| l.timestamp >= e.timestamp) {
            return true;
        }
        let mut b = [0u8; TIME_ENTRY_BYTES];
        b[0..8].copy_from_slice(&e.timestamp.to_be_bytes());
        b[8..12].copy_from_slice(&e.relative_offset.to_be_bytes());
        self.0.push(&b)
    }

    /// True when no further entry fits.
    pub fn is_full(&self) -> bool {
        self.0.is_full()
    }

    /// The last entry whose timestamp is strictly below `timestamp`: every record up to its offset
    /// is older than `timestamp`, so a search for `timestamp` can start after it.
    pub fn last_below(&self, timestamp: i64) -> Option<TimeEntry> {
        if timestamp == i64::MIN {
            return None;
        }
        self.0
            .last_at_or_below(timestamp - 1, be_i64)
            .map(|i| self.get(i))
    }

    /// Drops every entry whose relative offset is `>= relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = (0..self.len())
            .position(|i| self.get(i).relative_offset >= relative_offset)
            .unwrap_or(self.len());
        self.0.truncate_entries(keep);
    }

    /// Checks that entries are strictly increasing and inside the segment.
    pub fn is_sane(&self, offsets_in_segment: u64) -> bool {
        let mut prev: Option<TimeEntry> = None;
        (0..self.len()).all(|i| {
            let e = self.get(i);
            let ok = (e.relative_offset as u64) < offsets_in_segment.max(1)
                && prev.is_none_or(|p| {
                    p.timestamp < e.timestamp && p.relative_offset <= e.relative_offset
                });
            prev = Some(e);
            ok
        })
    }

    pub(crate) fn seal(&mut self) -> Result<()> {
        self.0.seal()
    }

    pub(crate) fn make_writable(&mut self) -> Result<()> {
        self.0.make_writable()
    }

    pub(crate) fn clear(&mut self) {
        self.0.truncate_entries(0);
    }

    pub(crate) fn sync_handle(&self) -> Result<File> {
        self.0.sync_handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_lookup_seal_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::open(&path, 64, true).unwrap();
        for i in 0..8u32 {
            assert!(idx.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 100
            }));
        }
        assert!(idx.is_full());
        assert!(!idx.push(OffsetEntry {
            relative_offset: 100,
            position: 1000
        }));
        assert_eq!(idx.lookup(0).unwrap().position, 0);
        assert_eq!(idx.lookup(25).unwrap().position, 200);
        assert_eq!(idx.lookup(1000).unwrap().position, 700);
        idx.truncate_to_position(300);
        assert_eq!(idx.len(), 3);
        idx.seal().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 24);
        drop(idx);
        let idx = OffsetIndex::open(&path, 64, false).unwrap();
        assert_eq!(idx.len(), 3);
        assert!(idx.is_sane(1000, 100));
        assert!(!idx.is_sane(150, 100));
    }

    #[test]
    fn time_index_only_keeps_increasing_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TimeIndex::open(&dir.path().join("0.timeindex"), 64, true).unwrap();
        assert!(idx.push(TimeEntry {
            timestamp: 100,
            relative_offset: 0
        }));
        assert!(idx.push(TimeEntry {
            timestamp: 90,
            relative_offset: 5
        }));
        assert!(idx.push(TimeEntry {
            timestamp: 200,
            relative_offset: 9
        }));
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.last_below(100), None);
        assert_eq!(idx.last_below(101).unwrap().relative_offset, 0);
        assert_eq!(idx.last_below(i64::MAX).unwrap().relative_offset, 9);
        assert!(idx.is_sane(10));
        idx.truncate_to_offset(9);
        assert_eq!(idx.len(), 1);
    }
}
