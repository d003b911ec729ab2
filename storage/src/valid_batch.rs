//! A batch checked once, before it reaches the log.
//!
//! Invariant: a `ValidBatch` holds exactly one Kafka v2 batch whose lengths, magic and CRC were
//! checked (what recovery checks, so an appended batch can never make recovery cut off the batches
//! after it), and `header` is its header. The constructors are the only way to make one, and they
//! check; so a caller that already validated a batch hands it over without the log checking again.

use bytes::BytesMut;
use mlog_wire::batch::{BatchError, BatchHeader, RecordBatch};

use crate::error::{Result, StorageError};

/// One checked batch, ready for `Log::append_valid`.
#[derive(Debug)]
pub struct ValidBatch {
    pub(crate) bytes: BytesMut,
    pub(crate) header: BatchHeader,
}

impl ValidBatch {
    /// Checks the header and CRC: enough for the log.
    pub fn check(bytes: BytesMut) -> Result<Self> {
        let header = *RecordBatch::parse_header_and_crc(&bytes)?.header();
        Self::whole(bytes, header)
    }

    /// Checks the header, the CRC and every record (uncompressed batches): for batches from
    /// clients, which a broker must refuse if any record is malformed.
    pub fn check_records(bytes: BytesMut) -> Result<Self> {
        let header = *RecordBatch::parse(&bytes)?.header();
        // Dense offsets, as every producer writes them (Kafka refuses the rest too): gaps belong to
        // compacted batches, which only replication may carry. A producer could otherwise move the
        // log end by 2^31 a batch, and roll a segment every other batch (a segment spans at most
        // 2^32 offsets).
        if header.last_offset_delta != header.record_count - 1 {
            return Err(BatchError::InvalidRecordCount {
                record_count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            }
            .into());
        }
        Self::whole(bytes, header)
    }

    fn whole(bytes: BytesMut, header: BatchHeader) -> Result<Self> {
        if header.total_len() != bytes.len() {
            return Err(StorageError::BatchLengthMismatch {
                declared: header.total_len(),
                actual: bytes.len(),
            });
        }
        Ok(ValidBatch { bytes, header })
    }

    /// The batch's header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a batch has at least its header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use mlog_wire::batch::{ATTRIBUTES_OFFSET, CRC_OFFSET, LAST_OFFSET_DELTA_OFFSET};
    use mlog_wire::checksum::crc32c;
    use mlog_wire::{NewRecord, RecordBatchBuilder};

    use super::*;

    /// A one-record batch whose lastOffsetDelta is `delta` (its CRC recomputed).
    fn one_record(delta: i32) -> BytesMut {
        let mut b = RecordBatchBuilder::new();
        b.push(NewRecord::new(0, None, Some(b"v"))).unwrap();
        let mut bytes = b.build().unwrap();
        bytes[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
            .copy_from_slice(&delta.to_be_bytes());
        let crc = crc32c(&bytes[ATTRIBUTES_OFFSET..]);
        bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        BytesMut::from(&bytes[..])
    }

    #[test]
    fn client_batches_must_have_dense_offsets() {
        assert!(ValidBatch::check_records(one_record(0)).is_ok());
        // Well-formed (offset deltas may have gaps in compacted batches), but not from a producer.
        assert!(ValidBatch::check(one_record(i32::MAX)).is_ok());
        let err = ValidBatch::check_records(one_record(i32::MAX)).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::InvalidBatch(BatchError::InvalidRecordCount { .. })
            ),
            "{err:?}"
        );
    }
}
