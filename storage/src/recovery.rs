//! Scanning a segment file batch by batch: the heart of crash recovery.
//!
//! A scan validates every batch's length, magic, CRC and base offset (it must continue the previous
//! batch's offsets) and stops at the first byte that is not a valid next batch. It never trusts
//! zeros or padding: after a crash the tail block can hold stale non-zero bytes from an earlier
//! write, so only a valid, contiguous batch counts. Reads go through DMA in aligned windows of at
//! most `SCAN_WINDOW_BYTES` plus one block; a batch larger than a window has its CRC checked window
//! by window, so no length field on disk controls an allocation.

use std::ops::ControlFlow;
use std::path::Path;

use glommio::io::{DmaFile, ReadResult};
use mlog_wire::batch::{
    peek_total_len, BatchHeader, RecordBatch, ATTRIBUTES_OFFSET, HEADER_LEN, LOG_OVERHEAD,
};

use crate::error::{IoContext, Result};
use crate::segment::BatchMeta;

/// Bytes read per I/O while scanning.
const SCAN_WINDOW_BYTES: usize = 1 << 20;

/// Where and why a scan ended.
#[derive(Debug, Clone)]
pub(crate) struct ScanEnd {
    /// Position just past the last valid batch.
    pub valid_upto: u64,
    /// Valid batches seen.
    pub batches: u64,
    /// Why the scan stopped before `limit`, if it did (`None`: clean end or stopped by the callback).
    pub invalid: Option<String>,
}

/// Scans batches in `file` from `position` (which must start a batch with base offset `offset`) up to
/// `limit` bytes, calling `on_batch` with each valid batch and its position.
pub(crate) async fn scan_batches(
    file: &DmaFile,
    path: &Path,
    mut position: u64,
    mut offset: u64,
    limit: u64,
    mut on_batch: impl FnMut(BatchMeta, u64) -> ControlFlow<()>,
) -> Result<ScanEnd> {
    let align = file.alignment().max(512);
    let mut window = Window::default();
    let mut batches = 0;
    let invalid = loop {
        if position == limit {
            break None;
        }
        if limit - position < LOG_OVERHEAD as u64 {
            break Some(format!(
                "{} trailing bytes, shorter than a batch header",
                limit - position
            ));
        }
        let head = window
            .get(file, path, align, position, LOG_OVERHEAD, limit)
            .await?;
        let total = match peek_total_len(head) {
            Ok(Some(total)) => total as u64,
            Ok(None) => break Some("truncated batch header".into()),
            Err(e) => break Some(e.to_string()),
        };
        if total > limit - position {
            break Some(format!(
                "batch of {total} bytes runs past the end ({limit})"
            ));
        }
        let header = if total as usize <= SCAN_WINDOW_BYTES {
            let bytes = window
                .get(file, path, align, position, total as usize, limit)
                .await?;
            match RecordBatch::parse_header_and_crc(bytes) {
                Ok(b) => *b.header(),
                Err(e) => break Some(e.to_string()),
            }
        } else {
            // Too large to hold at once: check the header, then the CRC window by window, so a
            // damaged length field can never make the scan allocate more than a window.
            match check_large_batch(file, path, align, &mut window, position, total, limit).await? {
                Ok(h) => h,
                Err(e) => break Some(e),
            }
        };
        if header.base_offset != offset as i64 {
            break Some(format!(
                "batch base offset {} where {offset} was expected",
                header.base_offset
            ));
        }
        let meta = BatchMeta {
            base_offset: offset,
            last_offset: header.last_offset() as u64,
            max_timestamp: header.max_timestamp,
            len: total,
        };
        batches += 1;
        let flow = on_batch(meta, position);
        position += total;
        offset = meta.last_offset + 1;
        if flow.is_break() {
            break None;
        }
    };
    Ok(ScanEnd {
        valid_upto: position,
        batches,
        invalid,
    })
}

/// Validates a batch larger than a scan window: header fields, then the CRC computed over windows.
/// The outer `Result` is an I/O failure, the inner one a reason the batch is invalid.
async fn check_large_batch(
    file: &DmaFile,
    path: &Path,
    align: u64,
    window: &mut Window,
    position: u64,
    total: u64,
    limit: u64,
) -> Result<std::result::Result<BatchHeader, String>> {
    let head = window
        .get(file, path, align, position, HEADER_LEN, limit)
        .await?;
    let header = match BatchHeader::parse(head) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Err(e) = header.check_fields() {
        return Ok(Err(e.to_string()));
    }
    let mut crc = mlog_wire::checksum::Crc32c::new();
    let mut at = position + ATTRIBUTES_OFFSET as u64;
    let end = position + total;
    while at < end {
        let n = ((end - at) as usize).min(SCAN_WINDOW_BYTES / 2);
        crc.update(window.get(file, path, align, at, n, limit).await?);
        at += n as u64;
    }
    let crc = crc.finish();
    if crc != header.crc {
        return Ok(Err(format!(
            "CRC mismatch: stored {:#010x}, computed {crc:#010x}",
            header.crc
        )));
    }
    Ok(Ok(header))
}

/// A cached aligned read of the file.
#[derive(Default)]
struct Window {
    start: u64,
    data: ReadResult,
}

impl Window {
    /// Bytes `[position, position + len)`, reading a new window when they are not all cached.
    async fn get(
        &mut self,
        file: &DmaFile,
        path: &Path,
        align: u64,
        position: u64,
        len: usize,
        limit: u64,
    ) -> Result<&[u8]> {
        debug_assert!(len <= SCAN_WINDOW_BYTES);
        let end = position + len as u64;
        let cached_end = self.start + self.data.len() as u64;
        if position < self.start || end > cached_end {
            let start = position / align * align;
            let want = ((end - start) as usize).max(SCAN_WINDOW_BYTES);
            let want = want.min((limit.div_ceil(align) * align - start) as usize);
            self.data = file
                .read_at_aligned(start, want.div_ceil(align as usize) * align as usize)
                .await
                .ctx("reading segment", path)?;
            self.start = start;
        }
        let from = (position - self.start) as usize;
        match self.data.get(from..from + len) {
            Some(b) => Ok(b),
            None => Err(crate::error::StorageError::io(
                "reading segment",
                path,
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
        }
    }
}
