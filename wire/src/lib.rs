//! mlog's wire codec.
//!
//! This crate is a pure codec: it turns bytes into validated values and values
//! into bytes, and performs no I/O of any kind. Every decoder is total — any
//! input yields a value or a typed error, never a panic.
//!
//! The record batch ([`batch`]) is Apache Kafka's RecordBatch v2 ("magic 2")
//! format, byte for byte, on purpose: batches are stored on disk exactly as
//! they travel on the wire, so a future Kafka-protocol listener can serve
//! fetches straight from disk without re-encoding.
//!
//! * [`checksum`]: CRC-32C, the checksum of batches and of mlog's files.
//! * [`varint`]: Kafka's zig-zag varints and varlongs.
//! * [`batch`]: the v2 record batch — validating parser ([`RecordBatch`]),
//!   record iterator ([`RecordIter`]), builder ([`RecordBatchBuilder`]) and
//!   the in-place rewrites a broker performs on append
//!   ([`set_base_offset`], [`set_partition_leader_epoch`]).
//! * [`protocol`]: the mlog binary protocol — frames, error codes, and the
//!   request and response of every API (`docs/protocol.md`).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod checksum;
pub mod protocol;
pub mod varint;

pub use batch::{
    peek_total_len, set_base_offset, set_partition_leader_epoch, BatchError, BatchHeader,
    Compression, NewRecord, Record, RecordBatch, RecordBatchBuilder, RecordHeader, RecordIter,
    TimestampType, HEADER_LEN, LOG_OVERHEAD,
};
pub use varint::VarintError;
