//! Recently appended batches, in memory, so tail reads never touch the disk.
//!
//! Invariants: entries are contiguous in offset order (append pushes at the back, eviction pops at
//! the front, truncation pops at the back), and every batch not yet written to its segment file is
//! in the cache: eviction skips (stops at) the first entry whose bytes are not yet on disk. The
//! cache therefore exceeds `capacity` only by the unwritten bytes, which the appender bounds.

use std::collections::VecDeque;

use bytes::Bytes;

/// One cached batch.
#[derive(Debug, Clone)]
pub(crate) struct CachedBatch {
    pub base_offset: u64,
    pub next_offset: u64,
    /// Base offset of the segment holding the batch.
    pub segment: u64,
    /// File position just past the batch in its segment.
    pub end_position: u64,
    pub bytes: Bytes,
}

#[derive(Debug)]
pub(crate) struct BatchCache {
    entries: VecDeque<CachedBatch>,
    bytes: usize,
    capacity: usize,
}

impl BatchCache {
    pub(crate) fn new(capacity: usize) -> Self {
        BatchCache {
            entries: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    pub(crate) fn push(&mut self, batch: CachedBatch) {
        debug_assert!(self
            .entries
            .back()
            .is_none_or(|b| b.next_offset == batch.base_offset));
        self.bytes += batch.bytes.len();
        self.entries.push_back(batch);
    }

    /// Evicts the oldest batches while over capacity, but only those `is_written` says are on disk.
    pub(crate) fn evict(&mut self, is_written: impl Fn(&CachedBatch) -> bool) {
        while self.bytes > self.capacity {
            match self.entries.front() {
                Some(b) if is_written(b) => {
                    self.bytes -= b.bytes.len();
                    self.entries.pop_front();
                }
                _ => break,
            }
        }
    }

    /// First cached offset.
    pub(crate) fn first_offset(&self) -> Option<u64> {
        self.entries.front().map(|b| b.base_offset)
    }

    /// Whole batches starting with the one containing `offset`, up to `max_bytes` (the first batch is
    /// always returned whole, even when larger, so a reader can always make progress).
    pub(crate) fn read(&self, offset: u64, max_bytes: usize) -> Vec<Bytes> {
        let start = self.entries.partition_point(|b| b.next_offset <= offset);
        let mut out = Vec::new();
        let mut total = 0;
        for b in self.entries.range(start..) {
            if !out.is_empty() && total + b.bytes.len() > max_bytes {
                break;
            }
            total += b.bytes.len();
            out.push(b.bytes.clone());
        }
        out
    }

    /// Drops every batch that holds an offset `>= offset`.
    pub(crate) fn truncate_from(&mut self, offset: u64) {
        while self.entries.back().is_some_and(|b| b.next_offset > offset) {
            if let Some(b) = self.entries.pop_back() {
                self.bytes -= b.bytes.len();
            }
        }
    }

    /// Drops every batch that ends at or below `offset`.
    pub(crate) fn drop_before(&mut self, offset: u64) {
        while self
            .entries
            .front()
            .is_some_and(|b| b.next_offset <= offset)
        {
            if let Some(b) = self.entries.pop_front() {
                self.bytes -= b.bytes.len();
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, n: u64, len: usize) -> CachedBatch {
        CachedBatch {
            base_offset: base,
            next_offset: base + n,
            segment: 0,
            end_position: 0,
            bytes: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn read_evict_truncate() {
        let mut c = BatchCache::new(250);
        for i in 0..5 {
            c.push(batch(i * 10, 10, 100));
        }
        assert_eq!(c.read(15, 150).len(), 1);
        assert_eq!(c.read(15, 200).len(), 2);
        assert_eq!(c.read(49, 0).len(), 1);
        assert!(c.read(50, 1000).is_empty());
        c.evict(|b| b.base_offset < 10);
        assert_eq!(c.first_offset(), Some(10));
        c.evict(|_| true);
        assert_eq!(c.first_offset(), Some(30));
        c.truncate_from(45);
        assert_eq!(c.read(30, 1000).len(), 1);
        c.drop_before(40);
        assert_eq!(c.first_offset(), None);
    }
}
