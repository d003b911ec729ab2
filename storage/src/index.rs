//! Sparse segment indexes: in memory while their segment is appended to, memory-mapped (memmap2)
//! once written.
//!
//! * `OffsetIndex`: entries `(relative offset u32, file position u32)`, 8 bytes, big-endian. An entry
//!   says "the batch whose base offset is `base + relative` starts at `position`".
//! * `TimeIndex`: entries `(timestamp i64, relative offset u32)`, 12 bytes. An entry says "every
//!   record at an offset `<= base + relative` has a timestamp `<= timestamp`"; timestamps strictly
//!   increase from entry to entry.
//!
//! Invariants: entries are strictly increasing in both fields. The active segment's entries live in
//! anonymous memory, and a sealed segment's stay there until `IndexWrite` has written and synced
//! them to the file (off the executor, when the segment is finished or the log closed); only then is
//! the file mapped read-only. So appends never store into a file mapping: such a store can fault
//! and wait for the page's writeback or for block allocation, holding up every partition of the
//! shard for milliseconds (measured: 2-8 ms stalls of the executor under load). Index files are
//! never trusted after an unclean stop for segments past the recovery point: recovery rebuilds them
//! from the log.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{IoContext, Result};

/// Where an index's entries are.
enum Entries {
    /// In memory, growing: the active segment's index.
    Growing(Vec<u8>),
    /// In memory, final, and not yet (known to be) in the file: a sealed index before its write.
    Sealed(Arc<Vec<u8>>),
    /// In the file, mapped read-only (nothing: an empty file).
    Mapped(Option<Mmap>),
}

/// A file of fixed-size entries.
struct IndexFile {
    path: PathBuf,
    file: File,
    entries: Entries,
    entry_bytes: usize,
    max_entries: usize,
}

impl IndexFile {
    /// Opens (creating if needed) an index holding the file's whole entries. `writable` reads them
    /// into memory to append to; otherwise the file is mapped.
    fn open(path: &Path, entry_bytes: usize, max_bytes: u32, writable: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("opening index", path)?;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            file,
            entries: Entries::Mapped(None),
            entry_bytes,
            max_entries: max_bytes as usize / entry_bytes,
        };
        if writable {
            index.make_writable()?;
        } else {
            index.map_file()?;
        }
        Ok(index)
    }

    fn bytes(&self) -> &[u8] {
        match &self.entries {
            Entries::Growing(v) => v,
            Entries::Sealed(v) => v,
            Entries::Mapped(Some(m)) => m,
            Entries::Mapped(None) => &[],
        }
    }

    fn count(&self) -> usize {
        self.bytes().len() / self.entry_bytes
    }

    fn entry(&self, i: usize) -> &[u8] {
        let at = i * self.entry_bytes;
        &self.bytes()[at..at + self.entry_bytes]
    }

    /// Appends an entry; returns false when the index is full or sealed.
    fn push(&mut self, entry: &[u8]) -> bool {
        debug_assert_eq!(entry.len(), self.entry_bytes);
        if self.is_full() {
            return false;
        }
        match &mut self.entries {
            Entries::Growing(v) => v.extend_from_slice(entry),
            _ => return false,
        }
        true
    }

    fn is_full(&self) -> bool {
        self.count() >= self.max_entries
    }

    /// Keeps only the first `n` entries (of a writable index; a sealed one is never cut).
    fn truncate_entries(&mut self, n: usize) {
        if let Entries::Growing(v) = &mut self.entries {
            v.truncate(n * self.entry_bytes);
        }
    }

    /// Freezes the entries: no more pushes. They stay in memory until written (`write_job`).
    fn seal(&mut self) {
        if let Entries::Growing(v) = &mut self.entries {
            self.entries = Entries::Sealed(Arc::new(std::mem::take(v)));
        }
    }

    /// Reads the file's entries (at most the maximum) into memory to append to. Memory for the
    /// maximum is reserved up front, so pushes never reallocate; it is only address space until
    /// entries fill it.
    fn make_writable(&mut self) -> Result<()> {
        let have = match std::mem::replace(&mut self.entries, Entries::Mapped(None)) {
            Entries::Growing(v) => {
                self.entries = Entries::Growing(v);
                return Ok(());
            }
            Entries::Sealed(v) => Arc::unwrap_or_clone(v),
            Entries::Mapped(_) => {
                let len = self
                    .file
                    .metadata()
                    .ctx("reading index size", &self.path)?
                    .len()
                    .min((self.max_entries * self.entry_bytes) as u64)
                    as usize;
                let mut v = vec![0u8; len - len % self.entry_bytes];
                self.file
                    .read_exact_at(&mut v, 0)
                    .ctx("reading index", &self.path)?;
                v
            }
        };
        let mut v = Vec::with_capacity(self.max_entries * self.entry_bytes);
        v.extend_from_slice(&have);
        self.entries = Entries::Growing(v);
        Ok(())
    }

    fn map_file(&mut self) -> Result<()> {
        let len = self
            .file
            .metadata()
            .ctx("reading index size", &self.path)?
            .len();
        self.entries = Entries::Mapped(if len == 0 {
            None
        } else {
            // SAFETY: the file is owned by this log's shard, and nothing writes or shrinks it while
            // it is mapped (it is written only before mapping, by `IndexWrite`).
            Some(unsafe { Mmap::map(&self.file) }.ctx("mapping index", &self.path)?)
        });
        Ok(())
    }

    /// The work that makes a sealed index durable: its entries written over the file (when still in
    /// memory), then an fsync. Run it anywhere (it owns what it needs), then call `written`.
    fn write_job(&self) -> Result<IndexWrite> {
        Ok(IndexWrite {
            file: self
                .file
                .try_clone()
                .ctx("cloning index handle", &self.path)?,
            path: self.path.clone(),
            entries: match &self.entries {
                Entries::Sealed(v) => Some(v.clone()),
                _ => None,
            },
        })
    }

    /// After a successful `IndexWrite`: a sealed index's entries are in the file now; map it and
    /// free the memory.
    fn written(&mut self) -> Result<()> {
        match &self.entries {
            Entries::Sealed(_) => self.map_file(),
            _ => Ok(()),
        }
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
}

/// Writes a sealed index's entries to its file and syncs it (see `IndexFile::write_job`). Blocking:
/// run it on the blocking pool, or where blocking is fine (opening a log).
pub(crate) struct IndexWrite {
    file: File,
    path: PathBuf,
    entries: Option<Arc<Vec<u8>>>,
}

impl IndexWrite {
    pub(crate) fn run(self) -> Result<()> {
        if let Some(entries) = &self.entries {
            self.file
                .write_all_at(entries, 0)
                .and_then(|()| self.file.set_len(entries.len() as u64))
                .ctx("writing index", &self.path)?;
        }
        self.file.sync_all().ctx("syncing index", &self.path)
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

    pub(crate) fn seal(&mut self) {
        self.0.seal()
    }

    pub(crate) fn make_writable(&mut self) -> Result<()> {
        self.0.make_writable()
    }

    pub(crate) fn clear(&mut self) {
        self.0.truncate_entries(0);
    }

    pub(crate) fn write_job(&self) -> Result<IndexWrite> {
        self.0.write_job()
    }

    pub(crate) fn written(&mut self) -> Result<()> {
        self.0.written()
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

    pub(crate) fn seal(&mut self) {
        self.0.seal()
    }

    pub(crate) fn make_writable(&mut self) -> Result<()> {
        self.0.make_writable()
    }

    pub(crate) fn clear(&mut self) {
        self.0.truncate_entries(0);
    }

    pub(crate) fn write_job(&self) -> Result<IndexWrite> {
        self.0.write_job()
    }

    pub(crate) fn written(&mut self) -> Result<()> {
        self.0.written()
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
        idx.seal();
        assert_eq!(
            idx.len(),
            3,
            "sealed entries stay readable before the write"
        );
        idx.write_job().unwrap().run().unwrap();
        idx.written().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 24);
        assert_eq!(idx.lookup(25).unwrap().position, 200);
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
