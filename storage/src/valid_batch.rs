//! A batch checked once, before it reaches the log.
//!
//! Invariant: a `ValidBatch` holds exactly one Kafka v2 batch whose lengths, magic and CRC were
//! checked (what recovery checks, so an appended batch can never make recovery cut off the batches
//! after it), and `header` is its header. The constructors are the only way to make one, and they
//! check; so a caller that already validated a batch hands it over without the log checking again.

use bytes::BytesMut;
use mlog_wire::batch::{BatchHeader, RecordBatch};

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
