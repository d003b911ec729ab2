//! Apache Kafka's RecordBatch v2 ("magic 2"), byte for byte.
//!
//! # Layout
//!
//! All fixed-width integers are big-endian. The header is [`HEADER_LEN`] (61)
//! bytes:
//!
//! | offset | field                  | type | notes                                   |
//! |-------:|------------------------|------|-----------------------------------------|
//! |      0 | `baseOffset`           | i64  | rewritten by the broker; not in the CRC |
//! |      8 | `batchLength`          | i32  | bytes after this field                  |
//! |     12 | `partitionLeaderEpoch` | i32  | rewritten by the broker; not in the CRC |
//! |     16 | `magic`                | i8   | always 2                                |
//! |     17 | `crc`                  | u32  | CRC-32C of bytes `21..` (end of batch)  |
//! |     21 | `attributes`           | i16  | codec, timestamp type, flags            |
//! |     23 | `lastOffsetDelta`      | i32  |                                         |
//! |     27 | `baseTimestamp`        | i64  |                                         |
//! |     35 | `maxTimestamp`         | i64  |                                         |
//! |     43 | `producerId`           | i64  |                                         |
//! |     51 | `producerEpoch`        | i16  |                                         |
//! |     53 | `baseSequence`         | i32  |                                         |
//! |     57 | `recordCount`          | i32  |                                         |
//! |     61 | records                |      | possibly compressed                     |
//!
//! The whole batch is `batchLength + LOG_OVERHEAD` bytes. Each record is
//! (varints are zig-zag, see [`crate::varint`]):
//!
//! ```text
//! length: varint            bytes after this field
//! attributes: i8            unused: written as 0, ignored when read
//! timestampDelta: varlong   relative to baseTimestamp
//! offsetDelta: varint       relative to baseOffset
//! keyLength: varint         -1 = null key
//! key: [u8]
//! valueLength: varint       -1 = null value
//! value: [u8]
//! headersCount: varint
//! headers: [keyLength: varint (>= 0), key, valueLength: varint (-1 = null), value]
//! ```
//!
//! # Invariants
//!
//! * A [`RecordBatch`] only comes out of [`RecordBatch::parse`] or
//!   [`RecordBatch::parse_header_and_crc`], so holding one means its bytes were
//!   validated: they are exactly one batch (`as_bytes().len() ==
//!   header().total_len()`), the magic is 2, the CRC matches, `recordCount >
//!   0`, `0 <= recordCount - 1 <= lastOffsetDelta`, `baseOffset +
//!   lastOffsetDelta + 1` does not overflow, and the compression codec is
//!   known. A batch from [`RecordBatch::parse`] that is uncompressed has also
//!   had every record walked, so iterating its [`RecordBatch::records`] yields
//!   no errors.
//! * The CRC covers bytes `ATTRIBUTES_OFFSET..` only. `baseOffset` and
//!   `partitionLeaderEpoch` lie outside it so the broker can rewrite them in
//!   place ([`set_base_offset`], [`set_partition_leader_epoch`]) without
//!   recomputing it; by the same token, corruption of those 12 bytes cannot be
//!   detected here.
//! * Nothing in this module panics on input: every read from a buffer is
//!   bounds-checked, malformed input yields a [`BatchError`].
//! * Offsets and timestamps derived from deltas use wrapping arithmetic, like
//!   Kafka's Java `long`s, so any `i64` timestamp round-trips through the
//!   builder and the reader.
//!
//! This module only encodes uncompressed batches; compressed batches are
//! validated at the header and CRC level only.

use crate::varint::{
    get_varint, get_varlong, put_varint, put_varlong, varint_len, varlong_len, VarintError,
};
use thiserror::Error;

/// Byte offset of `baseOffset` (i64).
pub const BASE_OFFSET_OFFSET: usize = 0;
/// Byte offset of `batchLength` (i32).
pub const LENGTH_OFFSET: usize = 8;
/// Byte offset of `partitionLeaderEpoch` (i32).
pub const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
/// Byte offset of `magic` (i8).
pub const MAGIC_OFFSET: usize = 16;
/// Byte offset of `crc` (u32).
pub const CRC_OFFSET: usize = 17;
/// Byte offset of `attributes` (i16); also where the CRC-covered range starts.
pub const ATTRIBUTES_OFFSET: usize = 21;
/// Byte offset of `lastOffsetDelta` (i32).
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
/// Byte offset of `baseTimestamp` (i64).
pub const BASE_TIMESTAMP_OFFSET: usize = 27;
/// Byte offset of `maxTimestamp` (i64).
pub const MAX_TIMESTAMP_OFFSET: usize = 35;
/// Byte offset of `producerId` (i64).
pub const PRODUCER_ID_OFFSET: usize = 43;
/// Byte offset of `producerEpoch` (i16).
pub const PRODUCER_EPOCH_OFFSET: usize = 51;
/// Byte offset of `baseSequence` (i32).
pub const BASE_SEQUENCE_OFFSET: usize = 53;
/// Byte offset of `recordCount` (i32).
pub const RECORD_COUNT_OFFSET: usize = 57;
/// Byte offset of the first record.
pub const RECORDS_OFFSET: usize = 61;
/// Length of the fixed batch header, in bytes.
pub const HEADER_LEN: usize = 61;
/// Bytes that precede the part counted by `batchLength`: `baseOffset` and
/// `batchLength` itself.
pub const LOG_OVERHEAD: usize = 12;
/// The smallest valid `batchLength`: a header with no records.
pub const MIN_BATCH_LENGTH: i32 = (HEADER_LEN - LOG_OVERHEAD) as i32;
/// The only supported `magic` value.
pub const MAGIC: i8 = 2;

/// `attributes` bits 0-2: the compression codec.
pub const COMPRESSION_MASK: i16 = 0x07;
/// `attributes` bit 3: set for [`TimestampType::LogAppendTime`].
pub const TIMESTAMP_TYPE_FLAG: i16 = 0x08;
/// `attributes` bit 4: the batch belongs to a transaction.
pub const TRANSACTIONAL_FLAG: i16 = 0x10;
/// `attributes` bit 5: the batch holds control records (transaction markers).
pub const CONTROL_FLAG: i16 = 0x20;

const _: () = assert!(RECORDS_OFFSET == HEADER_LEN);
const _: () = assert!(RECORD_COUNT_OFFSET + 4 == HEADER_LEN);
const _: () = assert!(LENGTH_OFFSET + 4 == LOG_OVERHEAD);

/// Why bytes are not a valid record batch, or a batch could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// The buffer ends before the batch does.
    #[error("truncated record batch: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed: the header length, or the batch's total length once known.
        needed: usize,
        /// Bytes available in the buffer.
        available: usize,
    },
    /// `batchLength` is negative or too small to hold a header.
    #[error("invalid record batch length {0}: must be at least {MIN_BATCH_LENGTH}")]
    InvalidLength(i32),
    /// `magic` is not 2.
    #[error("unsupported record batch magic {0}: only magic {MAGIC} is supported")]
    UnsupportedMagic(i8),
    /// The stored CRC does not match the CRC-32C of the covered bytes.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC computed over the batch.
        computed: u32,
    },
    /// `recordCount` or `lastOffsetDelta` is impossible: a batch holds at
    /// least one record and its offset deltas are distinct values in
    /// `0..=lastOffsetDelta`.
    #[error("invalid record count {record_count} for last offset delta {last_offset_delta}")]
    InvalidRecordCount {
        /// `recordCount` from the header.
        record_count: i32,
        /// `lastOffsetDelta` from the header.
        last_offset_delta: i32,
    },
    /// `baseOffset + lastOffsetDelta + 1` overflows `i64`.
    #[error(
        "offset overflow: base offset {base_offset} plus last offset delta {last_offset_delta}"
    )]
    OffsetOverflow {
        /// `baseOffset` from the header.
        base_offset: i64,
        /// `lastOffsetDelta` from the header.
        last_offset_delta: i32,
    },
    /// The compression codec in `attributes` is not one Kafka defines (5-7).
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    /// The batch ends before `recordCount` records were read.
    #[error("record batch header counts {header} records but only {actual} are present")]
    RecordCountMismatch {
        /// `recordCount` from the header.
        header: i32,
        /// Records actually present.
        actual: usize,
    },
    /// Bytes remain after the last record the header counts.
    #[error("{len} bytes remain after the last record of the batch")]
    TrailingBytes {
        /// Number of unconsumed bytes.
        len: usize,
    },
    /// A record's fields are inconsistent with its length or the batch.
    #[error("record {index} is malformed: {reason}")]
    RecordMalformed {
        /// Zero-based position of the record in the batch.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A varint in a record could not be decoded.
    #[error("record {index}: malformed varint ({source})")]
    Varint {
        /// Zero-based position of the record in the batch.
        index: usize,
        /// The varint error.
        source: VarintError,
    },
    /// Records of a compressed batch cannot be read without decompressing.
    #[error("the batch's records are compressed; decompression is not supported here")]
    CompressedRecords,
    /// [`RecordBatchBuilder::build`] was called without any record.
    #[error("cannot build a record batch without records")]
    EmptyBatch,
    /// A batch cannot hold more than `i32::MAX` records.
    #[error("a record batch cannot hold more than {max} records", max = i32::MAX)]
    TooManyRecords,
    /// A record's encoding would not fit in an `i32` length.
    #[error("record {index} is too large to encode")]
    RecordTooLarge {
        /// Zero-based position the record would have had in the batch.
        index: usize,
    },
    /// The batch's `batchLength` would not fit in an `i32`.
    #[error("the record batch would be too large to encode")]
    BatchTooLarge,
}

/// The compression codec of a batch (`attributes` bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Uncompressed records (codec 0).
    None = 0,
    /// gzip (codec 1).
    Gzip = 1,
    /// Snappy (codec 2).
    Snappy = 2,
    /// LZ4 (codec 3).
    Lz4 = 3,
    /// Zstandard (codec 4).
    Zstd = 4,
}

impl Compression {
    /// The codec with Kafka id `id`.
    ///
    /// # Errors
    ///
    /// [`BatchError::UnknownCompression`] for ids other than 0-4.
    pub fn from_id(id: u8) -> Result<Self, BatchError> {
        match id {
            0 => Ok(Self::None),
            1 => Ok(Self::Gzip),
            2 => Ok(Self::Snappy),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }

    /// The codec encoded in a batch's `attributes`.
    ///
    /// # Errors
    ///
    /// [`BatchError::UnknownCompression`] for codec bits 5-7.
    pub fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        Self::from_id((attributes & COMPRESSION_MASK) as u8)
    }

    /// The codec's Kafka id.
    pub const fn id(self) -> u8 {
        self as u8
    }
}

/// What a batch's timestamps mean (`attributes` bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TimestampType {
    /// Timestamps were set by the producer.
    #[default]
    CreateTime,
    /// Timestamps were set by the broker when appending.
    LogAppendTime,
}

impl TimestampType {
    /// The timestamp type encoded in a batch's `attributes`.
    pub const fn from_attributes(attributes: i16) -> Self {
        if attributes & TIMESTAMP_TYPE_FLAG == 0 {
            Self::CreateTime
        } else {
            Self::LogAppendTime
        }
    }

    /// The `attributes` bits for this timestamp type.
    const fn attribute_bits(self) -> i16 {
        match self {
            Self::CreateTime => 0,
            Self::LogAppendTime => TIMESTAMP_TYPE_FLAG,
        }
    }
}

/// The decoded 61-byte batch header, field for field.
///
/// Parsing a header validates nothing beyond its length; see
/// [`RecordBatch::parse`] for a validated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (`baseOffset`).
    pub base_offset: i64,
    /// Bytes in the batch after this field (`batchLength`).
    pub batch_length: i32,
    /// Leader epoch of the appending broker (`partitionLeaderEpoch`).
    pub partition_leader_epoch: i32,
    /// Format version (`magic`), 2 for valid batches.
    pub magic: i8,
    /// CRC-32C of bytes `ATTRIBUTES_OFFSET..` (`crc`).
    pub crc: u32,
    /// Codec and flags (`attributes`).
    pub attributes: i16,
    /// Offset delta of the last record (`lastOffsetDelta`).
    pub last_offset_delta: i32,
    /// Timestamp of the first record (`baseTimestamp`).
    pub base_timestamp: i64,
    /// Largest timestamp in the batch (`maxTimestamp`).
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 if none (`producerId`).
    pub producer_id: i64,
    /// Producer epoch, -1 if none (`producerEpoch`).
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 if none (`baseSequence`).
    pub base_sequence: i32,
    /// Number of records (`recordCount`).
    pub record_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the start of `buf` without validating it (no
    /// magic, length or CRC check). Bytes after the header are ignored.
    ///
    /// # Errors
    ///
    /// [`BatchError::Truncated`] if `buf` is shorter than [`HEADER_LEN`].
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        let header = buf
            .first_chunk::<HEADER_LEN>()
            .ok_or(BatchError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            })?;
        Ok(Self::from_array(header))
    }

    fn from_array(h: &[u8; HEADER_LEN]) -> Self {
        Self {
            base_offset: i64::from_be_bytes(read_be(h, BASE_OFFSET_OFFSET)),
            batch_length: i32::from_be_bytes(read_be(h, LENGTH_OFFSET)),
            partition_leader_epoch: i32::from_be_bytes(read_be(h, PARTITION_LEADER_EPOCH_OFFSET)),
            magic: i8::from_be_bytes(read_be(h, MAGIC_OFFSET)),
            crc: u32::from_be_bytes(read_be(h, CRC_OFFSET)),
            attributes: i16::from_be_bytes(read_be(h, ATTRIBUTES_OFFSET)),
            last_offset_delta: i32::from_be_bytes(read_be(h, LAST_OFFSET_DELTA_OFFSET)),
            base_timestamp: i64::from_be_bytes(read_be(h, BASE_TIMESTAMP_OFFSET)),
            max_timestamp: i64::from_be_bytes(read_be(h, MAX_TIMESTAMP_OFFSET)),
            producer_id: i64::from_be_bytes(read_be(h, PRODUCER_ID_OFFSET)),
            producer_epoch: i16::from_be_bytes(read_be(h, PRODUCER_EPOCH_OFFSET)),
            base_sequence: i32::from_be_bytes(read_be(h, BASE_SEQUENCE_OFFSET)),
            record_count: i32::from_be_bytes(read_be(h, RECORD_COUNT_OFFSET)),
        }
    }

    /// Encodes the header, field for field, as it appears on the wire.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let Self {
            base_offset,
            batch_length,
            partition_leader_epoch,
            magic,
            crc,
            attributes,
            last_offset_delta,
            base_timestamp,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            record_count,
        } = self;
        let mut h = [0u8; HEADER_LEN];
        write_be(&mut h, BASE_OFFSET_OFFSET, base_offset.to_be_bytes());
        write_be(&mut h, LENGTH_OFFSET, batch_length.to_be_bytes());
        write_be(
            &mut h,
            PARTITION_LEADER_EPOCH_OFFSET,
            partition_leader_epoch.to_be_bytes(),
        );
        write_be(&mut h, MAGIC_OFFSET, magic.to_be_bytes());
        write_be(&mut h, CRC_OFFSET, crc.to_be_bytes());
        write_be(&mut h, ATTRIBUTES_OFFSET, attributes.to_be_bytes());
        write_be(
            &mut h,
            LAST_OFFSET_DELTA_OFFSET,
            last_offset_delta.to_be_bytes(),
        );
        write_be(&mut h, BASE_TIMESTAMP_OFFSET, base_timestamp.to_be_bytes());
        write_be(&mut h, MAX_TIMESTAMP_OFFSET, max_timestamp.to_be_bytes());
        write_be(&mut h, PRODUCER_ID_OFFSET, producer_id.to_be_bytes());
        write_be(&mut h, PRODUCER_EPOCH_OFFSET, producer_epoch.to_be_bytes());
        write_be(&mut h, BASE_SEQUENCE_OFFSET, base_sequence.to_be_bytes());
        write_be(&mut h, RECORD_COUNT_OFFSET, record_count.to_be_bytes());
        h
    }

    /// Checks the header fields that need no payload: magic, record count and offset deltas, and the
    /// compression codec. Returns the codec. With the CRC (checked over
    /// `[ATTRIBUTES_OFFSET, total_len)`, e.g. incrementally) this is what
    /// [`RecordBatch::parse_header_and_crc`] validates; it lets a reader check a batch too large to
    /// hold in memory at once.
    pub fn check_fields(&self) -> Result<Compression, BatchError> {
        if self.magic != MAGIC {
            return Err(BatchError::UnsupportedMagic(self.magic));
        }
        check_offsets(self)?;
        self.compression()
    }

    /// The batch's total size in bytes, `batchLength + LOG_OVERHEAD`.
    ///
    /// Only meaningful when `batch_length` is valid, which a [`RecordBatch`]
    /// guarantees; a negative `batch_length` yields [`LOG_OVERHEAD`].
    pub fn total_len(&self) -> usize {
        usize::try_from(self.batch_length)
            .unwrap_or(0)
            .saturating_add(LOG_OVERHEAD)
    }

    /// Offset of the last record, `baseOffset + lastOffsetDelta` (wrapping).
    pub const fn last_offset(&self) -> i64 {
        self.base_offset.wrapping_add(self.last_offset_delta as i64)
    }

    /// Offset following the batch, `last_offset() + 1` (wrapping).
    pub const fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }

    /// The compression codec.
    ///
    /// # Errors
    ///
    /// [`BatchError::UnknownCompression`] for codecs 5-7.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    /// What the batch's timestamps mean.
    pub const fn timestamp_type(&self) -> TimestampType {
        TimestampType::from_attributes(self.attributes)
    }

    /// Whether the batch belongs to a transaction.
    pub const fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG != 0
    }

    /// Whether the batch holds control records.
    pub const fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }
}

/// Reads the total length of the batch at the start of `buf` from its first
/// [`LOG_OVERHEAD`] bytes, without validating anything else.
///
/// Returns `Ok(None)` if `buf` is shorter than [`LOG_OVERHEAD`], otherwise
/// `Ok(Some(batchLength + LOG_OVERHEAD))`. This lets a stream scanner tell
/// "need more bytes" from "wrong bytes".
///
/// # Errors
///
/// [`BatchError::InvalidLength`] if `batchLength` is negative or smaller than
/// a bare header ([`MIN_BATCH_LENGTH`]).
pub fn peek_total_len(buf: &[u8]) -> Result<Option<usize>, BatchError> {
    let Some(prefix) = buf.first_chunk::<LOG_OVERHEAD>() else {
        return Ok(None);
    };
    let batch_length = i32::from_be_bytes(read_be(prefix, LENGTH_OFFSET));
    if batch_length < MIN_BATCH_LENGTH {
        return Err(BatchError::InvalidLength(batch_length));
    }
    usize::try_from(batch_length)
        .ok()
        .and_then(|len| len.checked_add(LOG_OVERHEAD))
        .map(Some)
        .ok_or(BatchError::InvalidLength(batch_length))
}

/// Overwrites `baseOffset` of the batch at the start of `batch` in place.
///
/// `baseOffset` is outside the CRC-covered range, so the CRC stays valid. If
/// `batch` is shorter than [`HEADER_LEN`] this does nothing in release builds
/// and panics on a debug assertion in debug builds: callers are expected to
/// pass a batch that has already been parsed.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    debug_assert!(
        batch.len() >= HEADER_LEN,
        "set_base_offset: not a record batch"
    );
    if batch.len() >= HEADER_LEN {
        write_be(batch, BASE_OFFSET_OFFSET, base_offset.to_be_bytes());
    }
}

/// Overwrites `partitionLeaderEpoch` of the batch at the start of `batch` in
/// place.
///
/// `partitionLeaderEpoch` is outside the CRC-covered range, so the CRC stays
/// valid. If `batch` is shorter than [`HEADER_LEN`] this does nothing in
/// release builds and panics on a debug assertion in debug builds: callers are
/// expected to pass a batch that has already been parsed.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    debug_assert!(
        batch.len() >= HEADER_LEN,
        "set_partition_leader_epoch: not a record batch"
    );
    if batch.len() >= HEADER_LEN {
        write_be(batch, PARTITION_LEADER_EPOCH_OFFSET, epoch.to_be_bytes());
    }
}

/// A validated record batch borrowed from a buffer.
///
/// The only constructors are [`RecordBatch::parse`] and
/// [`RecordBatch::parse_header_and_crc`]; see the [module docs](self) for what
/// holding one guarantees.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordBatch<'a> {
    header: BatchHeader,
    compression: Compression,
    bytes: &'a [u8],
}

impl<'a> RecordBatch<'a> {
    /// Validates the batch at the start of `buf` (which may continue past it)
    /// and, if it is uncompressed, every one of its records.
    ///
    /// # Errors
    ///
    /// Everything [`RecordBatch::parse_header_and_crc`] reports, plus for
    /// uncompressed batches [`BatchError::RecordMalformed`],
    /// [`BatchError::Varint`], [`BatchError::RecordCountMismatch`] and
    /// [`BatchError::TrailingBytes`].
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        let batch = Self::parse_header_and_crc(buf)?;
        if batch.compression == Compression::None {
            batch.validate_records()?;
        }
        Ok(batch)
    }

    /// Validates the header and CRC of the batch at the start of `buf` (which
    /// may continue past it), without walking the records.
    ///
    /// Meant for fast recovery scans of data this process wrote: the CRC
    /// already rules out corruption. Records of a batch obtained this way may
    /// still be malformed; [`RecordBatch::records`] then yields an error.
    ///
    /// # Errors
    ///
    /// [`BatchError::Truncated`], [`BatchError::InvalidLength`],
    /// [`BatchError::UnsupportedMagic`], [`BatchError::CrcMismatch`],
    /// [`BatchError::InvalidRecordCount`], [`BatchError::OffsetOverflow`] or
    /// [`BatchError::UnknownCompression`], checked in that order.
    pub fn parse_header_and_crc(buf: &'a [u8]) -> Result<Self, BatchError> {
        let total = peek_total_len(buf)?.ok_or(BatchError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        })?;
        let bytes = buf.get(..total).ok_or(BatchError::Truncated {
            needed: total,
            available: buf.len(),
        })?;
        let header = BatchHeader::parse(bytes)?;
        if header.magic != MAGIC {
            return Err(BatchError::UnsupportedMagic(header.magic));
        }
        let computed = compute_crc(bytes);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        let compression = header.check_fields()?;
        Ok(Self {
            header,
            compression,
            bytes,
        })
    }

    fn validate_records(&self) -> Result<(), BatchError> {
        let mut records = RecordIter::new(&self.header, self.records_region());
        while let Some(record) = records.next_raw(|_| {}) {
            record?;
        }
        Ok(())
    }

    fn records_region(&self) -> &'a [u8] {
        self.bytes.get(RECORDS_OFFSET..).unwrap_or_default()
    }

    /// The decoded header.
    pub const fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, exactly [`BatchHeader::total_len`] of them.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The batch's total size in bytes.
    pub const fn total_len(&self) -> usize {
        self.bytes.len()
    }

    /// Offset of the first record.
    pub const fn base_offset(&self) -> i64 {
        self.header.base_offset
    }

    /// Offset of the last record.
    pub const fn last_offset(&self) -> i64 {
        self.header.last_offset()
    }

    /// Offset following the batch (its last offset plus one).
    pub const fn next_offset(&self) -> i64 {
        self.header.next_offset()
    }

    /// Number of records, at least 1.
    pub const fn record_count(&self) -> i32 {
        self.header.record_count
    }

    /// Timestamp of the first record.
    pub const fn base_timestamp(&self) -> i64 {
        self.header.base_timestamp
    }

    /// Largest timestamp in the batch, as stored in the header.
    pub const fn max_timestamp(&self) -> i64 {
        self.header.max_timestamp
    }

    /// The compression codec.
    pub const fn compression(&self) -> Compression {
        self.compression
    }

    /// Iterates over the records.
    ///
    /// # Errors
    ///
    /// [`BatchError::CompressedRecords`] if the batch is compressed.
    pub fn records(&self) -> Result<RecordIter<'a>, BatchError> {
        if self.compression != Compression::None {
            return Err(BatchError::CompressedRecords);
        }
        Ok(RecordIter::new(&self.header, self.records_region()))
    }
}

impl std::fmt::Debug for RecordBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes may be megabytes; show their length only.
        f.debug_struct("RecordBatch")
            .field("header", &self.header)
            .field("compression", &self.compression)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Checks that `recordCount` and `lastOffsetDelta` are consistent and that
/// the batch's offsets do not overflow.
fn check_offsets(header: &BatchHeader) -> Result<(), BatchError> {
    let BatchHeader {
        base_offset,
        record_count,
        last_offset_delta,
        ..
    } = *header;
    // Offset deltas are distinct values in 0..=lastOffsetDelta.
    if record_count <= 0 || last_offset_delta < 0 || record_count - 1 > last_offset_delta {
        return Err(BatchError::InvalidRecordCount {
            record_count,
            last_offset_delta,
        });
    }
    // `next_offset()` must be representable.
    if base_offset
        .checked_add(i64::from(last_offset_delta) + 1)
        .is_none()
    {
        return Err(BatchError::OffsetOverflow {
            base_offset,
            last_offset_delta,
        });
    }
    Ok(())
}

/// CRC-32C of the covered range `ATTRIBUTES_OFFSET..` of `batch`.
fn compute_crc(batch: &[u8]) -> u32 {
    crate::checksum::crc32c(batch.get(ATTRIBUTES_OFFSET..).unwrap_or_default())
}

/// Reads `N` bytes at `at`; callers only use it on buffers whose length was
/// already checked, so the zero fallback is unreachable.
fn read_be<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let field = buf.get(at..).and_then(|rest| rest.first_chunk::<N>());
    debug_assert!(field.is_some(), "read past a length-checked buffer");
    field.copied().unwrap_or([0; N])
}

/// Writes `bytes` at `at`; callers only use it on buffers whose length was
/// already checked, so the silent no-op is unreachable.
fn write_be<const N: usize>(buf: &mut [u8], at: usize, bytes: [u8; N]) {
    let field = buf
        .get_mut(at..)
        .and_then(|rest| rest.first_chunk_mut::<N>());
    debug_assert!(field.is_some(), "write past a length-checked buffer");
    if let Some(field) = field {
        *field = bytes;
    }
}

/// A record header: a key (a UTF-8 string per Kafka, not validated here) and
/// a nullable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordHeader<'a> {
    /// The header key.
    pub key: &'a [u8],
    /// The header value; `None` is null.
    pub value: Option<&'a [u8]>,
}

/// A record read from a batch, borrowing its key, value and headers from the
/// batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset: `baseOffset + offsetDelta`.
    pub offset: i64,
    /// Absolute timestamp: `baseTimestamp + timestampDelta` (wrapping).
    pub timestamp: i64,
    /// The key; `None` is null.
    pub key: Option<&'a [u8]>,
    /// The value; `None` is null.
    pub value: Option<&'a [u8]>,
    /// The headers, in order.
    pub headers: Vec<RecordHeader<'a>>,
}

/// A record's fields as decoded, before deltas are resolved.
struct RawRecord<'a> {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
}

/// Iterator over the records of an uncompressed [`RecordBatch`], from
/// [`RecordBatch::records`].
///
/// Yields `Err` at most once, then stops. For a batch from
/// [`RecordBatch::parse`] it never yields `Err`.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: Reader<'a>,
    base_offset: i64,
    base_timestamp: i64,
    last_offset_delta: i32,
    record_count: i32,
    index: usize,
    prev_offset_delta: Option<i32>,
    done: bool,
}

impl<'a> RecordIter<'a> {
    fn new(header: &BatchHeader, records: &'a [u8]) -> Self {
        Self {
            rest: Reader::new(records),
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            last_offset_delta: header.last_offset_delta,
            record_count: header.record_count,
            index: 0,
            prev_offset_delta: None,
            done: false,
        }
    }

    /// Decodes the next record, passing its headers to `on_header`; shared by
    /// validation (which discards headers) and iteration (which collects them).
    fn next_raw(
        &mut self,
        on_header: impl FnMut(RecordHeader<'a>),
    ) -> Option<Result<RawRecord<'a>, BatchError>> {
        if self.done {
            return None;
        }
        match self.step(on_header) {
            Ok(Some(raw)) => Some(Ok(raw)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }

    fn step(
        &mut self,
        on_header: impl FnMut(RecordHeader<'a>),
    ) -> Result<Option<RawRecord<'a>>, BatchError> {
        let expected = usize::try_from(self.record_count).unwrap_or(0);
        if self.index >= expected {
            return match self.rest.remaining() {
                0 => Ok(None),
                len => Err(BatchError::TrailingBytes { len }),
            };
        }
        if self.rest.remaining() == 0 {
            return Err(BatchError::RecordCountMismatch {
                header: self.record_count,
                actual: self.index,
            });
        }
        let raw = decode_record(&mut self.rest, self.index, on_header)?;
        self.check_offset_delta(raw.offset_delta)?;
        self.prev_offset_delta = Some(raw.offset_delta);
        self.index += 1;
        Ok(Some(raw))
    }

    fn check_offset_delta(&self, offset_delta: i32) -> Result<(), BatchError> {
        let reason = if offset_delta < 0 {
            "negative offset delta"
        } else if self
            .prev_offset_delta
            .is_some_and(|prev| offset_delta <= prev)
        {
            "offset deltas are not strictly increasing"
        } else if offset_delta > self.last_offset_delta {
            "offset delta exceeds the batch's lastOffsetDelta"
        } else {
            return Ok(());
        };
        Err(BatchError::RecordMalformed {
            index: self.index,
            reason,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut headers = Vec::new();
        let raw = self.next_raw(|header| headers.push(header))?;
        let (base_offset, base_timestamp) = (self.base_offset, self.base_timestamp);
        Some(raw.map(|raw| Record {
            offset: base_offset.wrapping_add(i64::from(raw.offset_delta)),
            timestamp: base_timestamp.wrapping_add(raw.timestamp_delta),
            key: raw.key,
            value: raw.value,
            headers,
        }))
    }
}

impl std::iter::FusedIterator for RecordIter<'_> {}

/// A bounds-checked cursor over a byte slice.
#[derive(Debug, Clone)]
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    const fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    const fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(len)?;
        self.rest = tail;
        Some(head)
    }

    fn varint(&mut self) -> Result<i32, VarintError> {
        let (value, len) = get_varint(self.rest)?;
        self.rest = self.rest.get(len..).unwrap_or_default();
        Ok(value)
    }

    fn varlong(&mut self) -> Result<i64, VarintError> {
        let (value, len) = get_varlong(self.rest)?;
        self.rest = self.rest.get(len..).unwrap_or_default();
        Ok(value)
    }
}

/// Error reasons for one length-prefixed field of a record.
struct Field {
    below_null: &'static str,
    overrun: &'static str,
}

const KEY: Field = Field {
    below_null: "key length is below -1",
    overrun: "key runs past the end of the record",
};
const VALUE: Field = Field {
    below_null: "value length is below -1",
    overrun: "value runs past the end of the record",
};
const HEADER_KEY: Field = Field {
    below_null: "header key length is negative",
    overrun: "header key runs past the end of the record",
};
const HEADER_VALUE: Field = Field {
    below_null: "header value length is below -1",
    overrun: "header value runs past the end of the record",
};

/// Decodes the record at the start of `rest` and advances past it.
fn decode_record<'a>(
    rest: &mut Reader<'a>,
    index: usize,
    mut on_header: impl FnMut(RecordHeader<'a>),
) -> Result<RawRecord<'a>, BatchError> {
    let malformed = |reason: &'static str| BatchError::RecordMalformed { index, reason };
    let bad_varint = |source: VarintError| BatchError::Varint { index, source };

    let len = rest.varint().map_err(bad_varint)?;
    let len = usize::try_from(len).map_err(|_| malformed("negative record length"))?;
    let body = rest
        .take(len)
        .ok_or_else(|| malformed("record runs past the end of the batch"))?;

    let mut r = Reader::new(body);
    r.take(1)
        .ok_or_else(|| malformed("record ends before its attributes"))?;
    let timestamp_delta = r.varlong().map_err(bad_varint)?;
    let offset_delta = r.varint().map_err(bad_varint)?;
    let key = nullable_bytes(&mut r, index, &KEY)?;
    let value = nullable_bytes(&mut r, index, &VALUE)?;
    let header_count = r.varint().map_err(bad_varint)?;
    if header_count < 0 {
        return Err(malformed("negative header count"));
    }
    for _ in 0..header_count {
        let key = nullable_bytes(&mut r, index, &HEADER_KEY)?
            .ok_or_else(|| malformed("header key is null"))?;
        let value = nullable_bytes(&mut r, index, &HEADER_VALUE)?;
        on_header(RecordHeader { key, value });
    }
    if r.remaining() != 0 {
        return Err(malformed("record fields end before the record length"));
    }
    Ok(RawRecord {
        timestamp_delta,
        offset_delta,
        key,
        value,
    })
}

/// Reads a varint length (-1 for null) followed by that many bytes.
fn nullable_bytes<'a>(
    r: &mut Reader<'a>,
    index: usize,
    field: &Field,
) -> Result<Option<&'a [u8]>, BatchError> {
    let len = r
        .varint()
        .map_err(|source| BatchError::Varint { index, source })?;
    if len == -1 {
        return Ok(None);
    }
    let malformed = |reason| BatchError::RecordMalformed { index, reason };
    let len = usize::try_from(len).map_err(|_| malformed(field.below_null))?;
    r.take(len)
        .map(Some)
        .ok_or_else(|| malformed(field.overrun))
}

/// A record to append with [`RecordBatchBuilder::push`], borrowing its data.
///
/// Headers are given as a slice of [`RecordHeader`]s, the same type records
/// are read back as. `NewRecord::default()` is a record with timestamp 0, null
/// key and value, and no headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NewRecord<'b> {
    /// Absolute timestamp.
    pub timestamp: i64,
    /// The key; `None` is null.
    pub key: Option<&'b [u8]>,
    /// The value; `None` is null.
    pub value: Option<&'b [u8]>,
    /// The headers, in order.
    pub headers: &'b [RecordHeader<'b>],
}

impl<'b> NewRecord<'b> {
    /// A record without headers.
    pub const fn new(timestamp: i64, key: Option<&'b [u8]>, value: Option<&'b [u8]>) -> Self {
        Self {
            timestamp,
            key,
            value,
            headers: &[],
        }
    }

    /// The same record with `headers`.
    #[must_use]
    pub const fn with_headers(self, headers: &'b [RecordHeader<'b>]) -> Self {
        Self { headers, ..self }
    }
}

/// Builds an uncompressed v2 record batch, encoding records as they are
/// pushed.
///
/// Defaults: base offset 0, partition leader epoch -1, no producer (id, epoch
/// and base sequence -1), [`TimestampType::CreateTime`], not transactional.
/// The base timestamp is the first record's timestamp, the max timestamp the
/// largest pushed, offset deltas run `0..n` and the CRC is filled in by
/// [`RecordBatchBuilder::build`].
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    /// Header placeholder followed by the encoded records.
    buf: Vec<u8>,
    count: usize,
    first_timestamp: Option<i64>,
    max_timestamp: i64,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    timestamp_type: TimestampType,
    transactional: bool,
}

impl Default for RecordBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordBatchBuilder {
    /// An empty builder with the defaults listed on the type.
    pub fn new() -> Self {
        Self {
            buf: vec![0; HEADER_LEN],
            count: 0,
            first_timestamp: None,
            max_timestamp: i64::MIN,
            base_offset: 0,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            timestamp_type: TimestampType::CreateTime,
            transactional: false,
        }
    }

    /// An empty builder whose buffer has room for `bytes` of batch before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut builder = Self::new();
        builder.buf.reserve(bytes.saturating_sub(HEADER_LEN));
        builder
    }

    /// Sets `baseOffset` (the broker normally assigns it on append).
    #[must_use]
    pub fn with_base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }

    /// Sets the idempotent producer's id, epoch and first sequence number.
    #[must_use]
    pub fn with_producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets `partitionLeaderEpoch`.
    #[must_use]
    pub fn with_partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Sets the timestamp type. Record timestamps are written as pushed either
    /// way.
    #[must_use]
    pub fn with_timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.timestamp_type = timestamp_type;
        self
    }

    /// Marks the batch as part of a transaction.
    #[must_use]
    pub fn with_transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// Appends a record, encoding it immediately.
    ///
    /// # Errors
    ///
    /// [`BatchError::TooManyRecords`] if the batch already holds `i32::MAX`
    /// records, [`BatchError::RecordTooLarge`] if a length in the record does
    /// not fit in an `i32`, [`BatchError::BatchTooLarge`] if the batch would
    /// outgrow an `i32` length. On error the builder is unchanged.
    pub fn push(&mut self, record: NewRecord<'_>) -> Result<(), BatchError> {
        let index = self.count;
        let offset_delta = index
            .checked_add(1)
            .and_then(|count| i32::try_from(count).ok())
            .map(|count| count - 1)
            .ok_or(BatchError::TooManyRecords)?;
        let base_timestamp = self.first_timestamp.unwrap_or(record.timestamp);
        let timestamp_delta = record.timestamp.wrapping_sub(base_timestamp);

        let too_large = || BatchError::RecordTooLarge { index };
        let body_len = encoded_body_len(&record, timestamp_delta, offset_delta)
            .and_then(|len| i32::try_from(len).ok())
            .ok_or_else(too_large)?;
        let record_len = usize::try_from(body_len)
            .ok()
            .and_then(|len| len.checked_add(varint_len(body_len)))
            .ok_or_else(too_large)?;
        let fits = self
            .buf
            .len()
            .checked_add(record_len)
            .and_then(|total| total.checked_sub(LOG_OVERHEAD))
            .is_some_and(|batch_length| i32::try_from(batch_length).is_ok());
        if !fits {
            return Err(BatchError::BatchTooLarge);
        }

        let start = self.buf.len();
        self.buf.reserve(record_len);
        put_varint(&mut self.buf, body_len);
        if encode_body(&mut self.buf, &record, timestamp_delta, offset_delta).is_none() {
            // Unreachable, as `encoded_body_len` checked every length; keep the
            // builder intact anyway.
            self.buf.truncate(start);
            return Err(too_large());
        }
        debug_assert_eq!(self.buf.len() - start, record_len);

        self.count += 1;
        self.first_timestamp = Some(base_timestamp);
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        Ok(())
    }

    /// Number of records pushed so far.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether no record was pushed yet.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size in bytes of the batch [`RecordBatchBuilder::build`] would return
    /// now ([`HEADER_LEN`] while empty, although building then fails).
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Finishes the batch: fills in the header and the CRC.
    ///
    /// # Errors
    ///
    /// [`BatchError::EmptyBatch`] if no record was pushed.
    pub fn build(mut self) -> Result<Vec<u8>, BatchError> {
        let base_timestamp = self.first_timestamp.ok_or(BatchError::EmptyBatch)?;
        let record_count = i32::try_from(self.count).map_err(|_| BatchError::TooManyRecords)?;
        let batch_length = self
            .buf
            .len()
            .checked_sub(LOG_OVERHEAD)
            .and_then(|len| i32::try_from(len).ok())
            .ok_or(BatchError::BatchTooLarge)?;
        let mut attributes = self.timestamp_type.attribute_bits();
        if self.transactional {
            attributes |= TRANSACTIONAL_FLAG;
        }
        let header = BatchHeader {
            base_offset: self.base_offset,
            batch_length,
            partition_leader_epoch: self.partition_leader_epoch,
            magic: MAGIC,
            crc: 0,
            attributes,
            last_offset_delta: record_count - 1,
            base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            record_count,
        };
        write_be(&mut self.buf, BASE_OFFSET_OFFSET, header.to_bytes());
        let crc = compute_crc(&self.buf);
        write_be(&mut self.buf, CRC_OFFSET, crc.to_be_bytes());
        Ok(self.buf)
    }
}

/// Length of a record's encoding after its length varint, or `None` if any
/// length does not fit in an `i32`.
fn encoded_body_len(
    record: &NewRecord<'_>,
    timestamp_delta: i64,
    offset_delta: i32,
) -> Option<usize> {
    let header_count = i32::try_from(record.headers.len()).ok()?;
    let mut len = 1 + varlong_len(timestamp_delta) + varint_len(offset_delta);
    len = len.checked_add(nullable_len(record.key)?)?;
    len = len.checked_add(nullable_len(record.value)?)?;
    len = len.checked_add(varint_len(header_count))?;
    for header in record.headers {
        len = len.checked_add(nullable_len(Some(header.key))?)?;
        len = len.checked_add(nullable_len(header.value)?)?;
    }
    Some(len)
}

/// Length of a length-prefixed nullable byte string.
fn nullable_len(bytes: Option<&[u8]>) -> Option<usize> {
    match bytes {
        None => Some(varint_len(-1)),
        Some(bytes) => {
            let len = i32::try_from(bytes.len()).ok()?;
            varint_len(len).checked_add(bytes.len())
        }
    }
}

/// Appends a record's encoding after its length varint; `None` if a length
/// does not fit in an `i32` (which [`encoded_body_len`] rules out beforehand).
fn encode_body(
    buf: &mut Vec<u8>,
    record: &NewRecord<'_>,
    timestamp_delta: i64,
    offset_delta: i32,
) -> Option<()> {
    buf.push(0); // attributes
    put_varlong(buf, timestamp_delta);
    put_varint(buf, offset_delta);
    put_nullable(buf, record.key)?;
    put_nullable(buf, record.value)?;
    put_varint(buf, i32::try_from(record.headers.len()).ok()?);
    for header in record.headers {
        put_nullable(buf, Some(header.key))?;
        put_nullable(buf, header.value)?;
    }
    Some(())
}

/// Appends a length-prefixed nullable byte string.
fn put_nullable(buf: &mut Vec<u8>, bytes: Option<&[u8]>) -> Option<()> {
    match bytes {
        None => put_varint(buf, -1),
        Some(bytes) => {
            put_varint(buf, i32::try_from(bytes.len()).ok()?);
            buf.extend_from_slice(bytes);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores the CRC-32C of bytes `21..` at bytes `17..21`, straight from the
    /// spec and independently of the code under test.
    fn fix_crc(batch: &mut [u8]) {
        let crc = crate::checksum::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    fn put_i16(batch: &mut [u8], at: usize, v: i16) {
        batch[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn put_i32(batch: &mut [u8], at: usize, v: i32) {
        batch[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// Two records, hand-encoded from the spec.
    const KAT_RECORDS: [u8; 22] = [
        // Record 0: timestamp 1000, key "k", value "v", no headers.
        0x10, // length: varint 8
        0x00, // attributes
        0x00, // timestampDelta: varlong 0
        0x00, // offsetDelta: varint 0
        0x02, b'k', // keyLength: varint 1, key
        0x02, b'v', // valueLength: varint 1, value
        0x00, // headersCount: varint 0
        // Record 1: timestamp 1005, null key, value "hi", header ("h", "x").
        0x18, // length: varint 12
        0x00, // attributes
        0x0a, // timestampDelta: varlong 5
        0x02, // offsetDelta: varint 1
        0x01, // keyLength: varint -1 (null)
        0x04, b'h', b'i', // valueLength: varint 2, value
        0x02, // headersCount: varint 1
        0x02, b'h', // header keyLength: varint 1, key
        0x02, b'x', // header valueLength: varint 1, value
    ];

    /// Hand-assembles a batch header from the spec around `records`.
    fn hand_batch(record_count: i32, last_offset_delta: i32, records: &[u8]) -> Vec<u8> {
        let batch_length = i32::try_from(49 + records.len()).unwrap();
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        b.extend_from_slice(&batch_length.to_be_bytes()); // batchLength
        b.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        b.push(2); // magic
        b.extend_from_slice(&[0; 4]); // crc, filled in below
        b.extend_from_slice(&0i16.to_be_bytes()); // attributes
        b.extend_from_slice(&last_offset_delta.to_be_bytes()); // lastOffsetDelta
        b.extend_from_slice(&1000i64.to_be_bytes()); // baseTimestamp
        b.extend_from_slice(&1005i64.to_be_bytes()); // maxTimestamp
        b.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        b.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        b.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        b.extend_from_slice(&record_count.to_be_bytes()); // recordCount
        assert_eq!(b.len(), 61);
        b.extend_from_slice(records);
        fix_crc(&mut b);
        b
    }

    fn kat_batch() -> Vec<u8> {
        hand_batch(2, 1, &KAT_RECORDS)
    }

    const KAT_HEADERS: [RecordHeader<'static>; 1] = [RecordHeader {
        key: b"h",
        value: Some(b"x".as_slice()),
    }];

    fn kat_builder() -> RecordBatchBuilder {
        let mut builder = RecordBatchBuilder::new();
        builder
            .push(NewRecord::new(
                1000,
                Some(b"k".as_slice()),
                Some(b"v".as_slice()),
            ))
            .unwrap();
        builder
            .push(NewRecord::new(1005, None, Some(b"hi".as_slice())).with_headers(&KAT_HEADERS))
            .unwrap();
        builder
    }

    /// A batch with non-default header fields, empty and null fields, and a
    /// timestamp before the base timestamp.
    fn rich_batch() -> Vec<u8> {
        let headers = [
            RecordHeader {
                key: b"",
                value: None,
            },
            RecordHeader {
                key: b"trace-id",
                value: Some(b"0123456789abcdef".as_slice()),
            },
        ];
        let mut builder = RecordBatchBuilder::new()
            .with_base_offset(1 << 40)
            .with_partition_leader_epoch(7)
            .with_producer(42, 3, 100)
            .with_timestamp_type(TimestampType::LogAppendTime)
            .with_transactional(true);
        builder
            .push(NewRecord::new(5_000, None, None).with_headers(&headers))
            .unwrap();
        builder
            .push(NewRecord::new(
                4_000,
                Some(b"".as_slice()),
                Some([0xff_u8; 200].as_slice()),
            ))
            .unwrap();
        builder.push(NewRecord::default()).unwrap();
        builder.build().unwrap()
    }

    fn single_record_batch() -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new();
        builder.push(NewRecord::new(-1, None, None)).unwrap();
        builder.build().unwrap()
    }

    #[test]
    fn known_answer_crc() {
        // Computed independently with a bitwise CRC-32C (poly 0x82F63B78).
        assert_eq!(kat_batch()[17..21], 0xa9d9_b08f_u32.to_be_bytes());
    }

    #[test]
    fn builder_produces_the_known_answer() {
        let builder = kat_builder();
        assert_eq!(builder.len(), 2);
        assert_eq!(builder.encoded_len(), 83);
        assert_eq!(builder.build().unwrap(), kat_batch());
    }

    #[test]
    fn parse_accepts_the_known_answer() {
        let bytes = kat_batch();
        let batch = RecordBatch::parse(&bytes).unwrap();
        let expected_header = BatchHeader {
            base_offset: 0,
            batch_length: 71,
            partition_leader_epoch: -1,
            magic: 2,
            crc: crate::checksum::crc32c(&bytes[21..]),
            attributes: 0,
            last_offset_delta: 1,
            base_timestamp: 1000,
            max_timestamp: 1005,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count: 2,
        };
        assert_eq!(*batch.header(), expected_header);
        assert_eq!(batch.as_bytes(), bytes.as_slice());
        assert_eq!(batch.total_len(), 83);
        assert_eq!(batch.header().total_len(), 83);
        assert_eq!(batch.base_offset(), 0);
        assert_eq!(batch.last_offset(), 1);
        assert_eq!(batch.next_offset(), 2);
        assert_eq!(batch.record_count(), 2);
        assert_eq!(batch.base_timestamp(), 1000);
        assert_eq!(batch.max_timestamp(), 1005);
        assert_eq!(batch.compression(), Compression::None);
        assert_eq!(batch.header().timestamp_type(), TimestampType::CreateTime);
        assert!(!batch.header().is_transactional());
        assert!(!batch.header().is_control());

        let records: Vec<Record<'_>> = batch.records().unwrap().map(Result::unwrap).collect();
        let expected = [
            Record {
                offset: 0,
                timestamp: 1000,
                key: Some(b"k".as_slice()),
                value: Some(b"v".as_slice()),
                headers: Vec::new(),
            },
            Record {
                offset: 1,
                timestamp: 1005,
                key: None,
                value: Some(b"hi".as_slice()),
                headers: KAT_HEADERS.to_vec(),
            },
        ];
        assert_eq!(records, expected);
    }

    #[test]
    fn header_encoding_round_trips() {
        for bytes in [kat_batch(), rich_batch(), single_record_batch()] {
            let header = BatchHeader::parse(&bytes).unwrap();
            assert_eq!(header.to_bytes().as_slice(), &bytes[..HEADER_LEN]);
        }
    }

    #[test]
    fn builder_sets_header_fields() {
        let bytes = rich_batch();
        let batch = RecordBatch::parse(&bytes).unwrap();
        let header = batch.header();
        assert_eq!(header.base_offset, 1 << 40);
        assert_eq!(header.partition_leader_epoch, 7);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, 100)
        );
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert!(header.is_transactional());
        assert!(!header.is_control());
        assert_eq!(header.base_timestamp, 5_000);
        assert_eq!(header.max_timestamp, 5_000);
        assert_eq!(header.last_offset_delta, 2);

        let records: Vec<Record<'_>> = batch.records().unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].headers.len(), 2);
        assert_eq!(records[0].headers[0].key, b"");
        assert_eq!(records[0].headers[0].value, None);
        assert_eq!(records[1].timestamp, 4_000);
        assert_eq!(records[1].key, Some(b"".as_slice()));
        assert_eq!(records[2].offset, (1 << 40) + 2);
        assert_eq!(records[2].timestamp, 0);
        assert_eq!((records[2].key, records[2].value), (None, None));
    }

    #[test]
    fn builder_defaults() {
        let bytes = single_record_batch();
        let header = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(header.base_offset, 0);
        assert_eq!(header.partition_leader_epoch, -1);
        assert_eq!(header.magic, MAGIC);
        assert_eq!(header.attributes, 0);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (-1, -1, -1)
        );
        assert_eq!((header.record_count, header.last_offset_delta), (1, 0));
        assert_eq!((header.base_timestamp, header.max_timestamp), (-1, -1));
    }

    #[test]
    fn building_an_empty_batch_fails() {
        let builder = RecordBatchBuilder::default();
        assert!(builder.is_empty());
        assert_eq!(builder.encoded_len(), HEADER_LEN);
        assert_eq!(builder.build(), Err(BatchError::EmptyBatch));
    }

    /// Every single-bit flip from `batchLength` on is detected, except in
    /// `partitionLeaderEpoch` (bytes 12..16). Neither it nor `baseOffset`
    /// (bytes 0..8) is covered by the CRC, by design: the broker rewrites both
    /// in place on append, so their flips are undetectable at this layer.
    /// Flips in `batchLength` make it disagree with the buffer or the CRC
    /// range; flips in `magic` are rejected as such; all other bytes are
    /// covered by the CRC, which detects every single-bit error.
    #[test]
    fn every_covered_bit_flip_is_detected() {
        let uncovered = PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET;
        for bytes in [kat_batch(), rich_batch(), single_record_batch()] {
            for at in (LENGTH_OFFSET..bytes.len()).filter(|at| !uncovered.contains(at)) {
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[at] ^= 1 << bit;
                    assert!(RecordBatch::parse(&flipped).is_err(), "byte {at} bit {bit}");
                    assert!(
                        RecordBatch::parse_header_and_crc(&flipped).is_err(),
                        "byte {at} bit {bit} (header and CRC only)"
                    );
                    // Same, with more data following the batch in the buffer.
                    flipped.extend_from_slice(&bytes);
                    assert!(
                        RecordBatch::parse(&flipped).is_err(),
                        "byte {at} bit {bit} (followed)"
                    );
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        for bytes in [kat_batch(), rich_batch(), single_record_batch()] {
            for len in 0..bytes.len() {
                let short = &bytes[..len];
                let needed = if len < LOG_OVERHEAD {
                    HEADER_LEN
                } else {
                    bytes.len()
                };
                let expected = Err(BatchError::Truncated {
                    needed,
                    available: len,
                });
                assert_eq!(RecordBatch::parse(short), expected, "length {len}");
                assert_eq!(
                    RecordBatch::parse_header_and_crc(short),
                    expected,
                    "length {len}"
                );
            }
        }
    }

    #[test]
    fn trailing_buffer_bytes_are_not_part_of_the_batch() {
        let bytes = kat_batch();
        let mut buf = bytes.clone();
        buf.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let batch = RecordBatch::parse(&buf).unwrap();
        assert_eq!(batch.as_bytes(), bytes.as_slice());
        assert_eq!(batch.records().unwrap().count(), 2);
    }

    #[test]
    fn peek_total_len_distinguishes_short_from_wrong() {
        let bytes = kat_batch();
        assert_eq!(peek_total_len(&[]), Ok(None));
        assert_eq!(peek_total_len(&bytes[..11]), Ok(None));
        assert_eq!(peek_total_len(&bytes[..12]), Ok(Some(83)));
        assert_eq!(peek_total_len(&bytes), Ok(Some(83)));
        for bad in [i32::MIN, -1, 0, MIN_BATCH_LENGTH - 1] {
            let mut wrong = bytes.clone();
            put_i32(&mut wrong, LENGTH_OFFSET, bad);
            assert_eq!(peek_total_len(&wrong), Err(BatchError::InvalidLength(bad)));
            assert_eq!(
                RecordBatch::parse(&wrong),
                Err(BatchError::InvalidLength(bad))
            );
        }
        let mut bare = bytes[..12].to_vec();
        put_i32(&mut bare, LENGTH_OFFSET, MIN_BATCH_LENGTH);
        assert_eq!(peek_total_len(&bare), Ok(Some(HEADER_LEN)));
    }

    #[test]
    fn rewriting_offset_and_epoch_keeps_the_crc_valid() {
        let original = rich_batch();
        let mut bytes = original.clone();
        set_base_offset(&mut bytes, 123_456_789);
        set_partition_leader_epoch(&mut bytes, 99);
        let batch = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(batch.base_offset(), 123_456_789);
        assert_eq!(batch.header().partition_leader_epoch, 99);
        assert_eq!(
            batch.records().unwrap().next().unwrap().unwrap().offset,
            123_456_789
        );
        for (at, (new, old)) in bytes.iter().zip(&original).enumerate() {
            let rewritten = (BASE_OFFSET_OFFSET..LENGTH_OFFSET).contains(&at)
                || (PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET).contains(&at);
            if !rewritten {
                assert_eq!(new, old, "byte {at} changed");
            }
        }
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut bytes = kat_batch();
        bytes[MAGIC_OFFSET] = 1;
        assert_eq!(
            RecordBatch::parse(&bytes),
            Err(BatchError::UnsupportedMagic(1))
        );
    }

    #[test]
    fn crc_mismatch_reports_both_values() {
        let mut bytes = kat_batch();
        let stored = u32::from_be_bytes(bytes[17..21].try_into().unwrap());
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let computed = crate::checksum::crc32c(&bytes[21..]);
        assert_eq!(
            RecordBatch::parse(&bytes),
            Err(BatchError::CrcMismatch { stored, computed })
        );
    }

    #[test]
    fn impossible_record_counts_are_rejected() {
        for (record_count, last_offset_delta) in [(0, 1), (-1, 1), (2, -1), (3, 1), (i32::MIN, 0)] {
            let mut bytes = kat_batch();
            put_i32(&mut bytes, RECORD_COUNT_OFFSET, record_count);
            put_i32(&mut bytes, LAST_OFFSET_DELTA_OFFSET, last_offset_delta);
            fix_crc(&mut bytes);
            assert_eq!(
                RecordBatch::parse_header_and_crc(&bytes),
                Err(BatchError::InvalidRecordCount {
                    record_count,
                    last_offset_delta
                })
            );
        }
    }

    #[test]
    fn offset_overflow_is_rejected() {
        let mut bytes = kat_batch();
        set_base_offset(&mut bytes, i64::MAX - 1);
        assert_eq!(
            RecordBatch::parse(&bytes),
            Err(BatchError::OffsetOverflow {
                base_offset: i64::MAX - 1,
                last_offset_delta: 1
            })
        );
        set_base_offset(&mut bytes, i64::MAX - 2);
        assert_eq!(RecordBatch::parse(&bytes).unwrap().next_offset(), i64::MAX);
    }

    #[test]
    fn compressed_batches_are_checked_at_header_level_only() {
        let mut bytes = kat_batch();
        put_i16(&mut bytes, ATTRIBUTES_OFFSET, 1); // gzip
        fix_crc(&mut bytes);
        let batch = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(batch.compression(), Compression::Gzip);
        assert_eq!(batch.records().err(), Some(BatchError::CompressedRecords));

        for codec in 5..=7u8 {
            put_i16(
                &mut bytes,
                ATTRIBUTES_OFFSET,
                i16::from(codec) | CONTROL_FLAG,
            );
            fix_crc(&mut bytes);
            assert_eq!(
                RecordBatch::parse(&bytes),
                Err(BatchError::UnknownCompression(codec))
            );
            let header = BatchHeader::parse(&bytes).unwrap();
            assert!(header.is_control());
            assert_eq!(
                header.compression(),
                Err(BatchError::UnknownCompression(codec))
            );
        }
    }

    #[test]
    fn compression_ids_round_trip() {
        for id in 0..=4u8 {
            assert_eq!(Compression::from_id(id).unwrap().id(), id);
        }
        assert_eq!(
            Compression::from_id(8),
            Err(BatchError::UnknownCompression(8))
        );
    }

    #[test]
    fn record_count_must_match() {
        // Header claims three records (deltas up to 5), two are present.
        let bytes = hand_batch(3, 5, &KAT_RECORDS);
        assert_eq!(
            RecordBatch::parse(&bytes),
            Err(BatchError::RecordCountMismatch {
                header: 3,
                actual: 2
            })
        );
        // Header claims one record, a second one follows.
        let bytes = hand_batch(1, 1, &KAT_RECORDS);
        assert_eq!(
            RecordBatch::parse(&bytes),
            Err(BatchError::TrailingBytes { len: 13 })
        );
    }

    fn malformed(index: usize, reason: &'static str) -> Result<(), BatchError> {
        Err(BatchError::RecordMalformed { index, reason })
    }

    fn parse_unit(bytes: &[u8]) -> Result<(), BatchError> {
        RecordBatch::parse(bytes).map(|_| ())
    }

    #[test]
    fn malformed_records_are_rejected() {
        let with = |at: usize, byte: u8| {
            let mut records = KAT_RECORDS;
            records[at] = byte;
            hand_batch(2, 1, &records)
        };
        // Record 0 claims 9 bytes: it swallows record 1's length byte.
        assert_eq!(
            parse_unit(&with(0, 0x12)),
            malformed(0, "record fields end before the record length")
        );
        // Record 0 claims 7 bytes: its headers count is cut off.
        assert_eq!(
            parse_unit(&with(0, 0x0e)),
            Err(BatchError::Varint {
                index: 0,
                source: VarintError::Truncated
            })
        );
        // Negative record length.
        assert_eq!(
            parse_unit(&with(0, 0x01)),
            malformed(0, "negative record length")
        );
        // Record 1 claims 13 bytes, one more than the batch has.
        assert_eq!(
            parse_unit(&with(9, 0x1a)),
            malformed(1, "record runs past the end of the batch")
        );
        // Record 1's offset delta repeats record 0's.
        assert_eq!(
            parse_unit(&with(12, 0x00)),
            malformed(1, "offset deltas are not strictly increasing")
        );
        // Record 1's offset delta 2 exceeds lastOffsetDelta 1.
        assert_eq!(
            parse_unit(&with(12, 0x04)),
            malformed(1, "offset delta exceeds the batch's lastOffsetDelta")
        );
        // Record 0's offset delta is -1.
        assert_eq!(
            parse_unit(&with(3, 0x01)),
            malformed(0, "negative offset delta")
        );
        // Key length -2.
        assert_eq!(
            parse_unit(&with(4, 0x03)),
            malformed(0, "key length is below -1")
        );
        // Key length 2 runs into the rest of the record.
        assert_eq!(
            parse_unit(&with(4, 0x04)),
            malformed(0, "value runs past the end of the record")
        );
        // Header count -1.
        assert_eq!(
            parse_unit(&with(17, 0x01)),
            malformed(1, "negative header count")
        );
        // Null header key.
        assert_eq!(
            parse_unit(&with(18, 0x01)),
            malformed(1, "header key is null")
        );
        // Header value length -2.
        assert_eq!(
            parse_unit(&with(20, 0x03)),
            malformed(1, "header value length is below -1")
        );
    }

    #[test]
    fn overlong_varints_are_rejected() {
        let bytes = hand_batch(1, 0, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00]);
        assert_eq!(
            parse_unit(&bytes),
            Err(BatchError::Varint {
                index: 0,
                source: VarintError::Overflow
            })
        );
    }

    #[test]
    fn header_only_parse_defers_record_errors_to_iteration() {
        let bytes = hand_batch(3, 5, &KAT_RECORDS);
        let batch = RecordBatch::parse_header_and_crc(&bytes).unwrap();
        let mut records = batch.records().unwrap();
        assert!(records.next().unwrap().is_ok());
        assert!(records.next().unwrap().is_ok());
        assert_eq!(
            records.next(),
            Some(Err(BatchError::RecordCountMismatch {
                header: 3,
                actual: 2
            }))
        );
        assert_eq!(records.next(), None);
        assert_eq!(records.next(), None);
    }

    #[test]
    fn timestamps_wrap_like_kafka() {
        let mut builder = RecordBatchBuilder::new();
        for timestamp in [i64::MAX, i64::MIN, 0, -1] {
            builder.push(NewRecord::new(timestamp, None, None)).unwrap();
        }
        let bytes = builder.build().unwrap();
        let batch = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(batch.base_timestamp(), i64::MAX);
        assert_eq!(batch.max_timestamp(), i64::MAX);
        let timestamps: Vec<i64> = batch
            .records()
            .unwrap()
            .map(|r| r.unwrap().timestamp)
            .collect();
        assert_eq!(timestamps, [i64::MAX, i64::MIN, 0, -1]);
    }

    #[test]
    fn errors_display_usefully() {
        let err = BatchError::CrcMismatch {
            stored: 0x1234,
            computed: 0xabcd,
        };
        assert_eq!(
            err.to_string(),
            "record batch CRC mismatch: stored 0x00001234, computed 0x0000abcd"
        );
        assert_eq!(
            BatchError::InvalidLength(3).to_string(),
            "invalid record batch length 3: must be at least 49"
        );
        assert_eq!(
            BatchError::TooManyRecords.to_string(),
            "a record batch cannot hold more than 2147483647 records"
        );
        let varint = BatchError::Varint {
            index: 4,
            source: VarintError::Truncated,
        };
        assert!(varint.to_string().starts_with("record 4: malformed varint"));
        assert!(std::error::Error::source(&varint).is_some());
    }
}
