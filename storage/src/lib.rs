//! mlog-storage: one partition's durable log.
//!
//! A [`Log`] is a directory of segments named by base offset. Each segment is a `.log` file of Kafka
//! v2 record batches appended through glommio DMA (O_DIRECT, io_uring) writes, plus sparse,
//! memory-mapped `.index` (offset -> position) and `.timeindex` (timestamp -> offset) files.
//! Small checkpoint files (recovery point, high watermark, log start offset, leader-epoch history,
//! clean shutdown) are replaced atomically.
//!
//! Module map (one job each):
//! * [`config`]: limits and policies; every memory bound of the log derives from it;
//! * `appender`: aligned DMA writes, the rewritten tail block, ordered write completion;
//! * [`index`]: the two sparse index files;
//! * `segment`: one segment's files and metadata;
//! * `batch_cache`: recent batches in memory, including every batch not yet on disk;
//! * `recovery`: batch-by-batch validation scans;
//! * `producers`: idempotent producers' last batches, to answer a resent batch with its first
//!   offsets instead of storing it twice;
//! * [`checkpoint`]: atomic small state files (also offered to other crates: `write_named`);
//! * [`dma_probe`]: works around glommio's poll-ring probe on empty files;
//! * [`log`]: the partition log tying them together (append, read, flush, roll, retention,
//!   truncation, recovery on open).
//!
//! Architecture invariant: the storage crate knows nothing of the network; a `Log` is touched by
//! exactly one executor (it is `!Send`).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod appender;
mod batch_cache;
pub mod checkpoint;
pub mod config;
pub mod dma_probe;
pub mod error;
pub mod index;
pub mod log;
mod producers;
mod recovery;
mod segment;
mod valid_batch;

pub use config::{FlushPolicy, LogConfig};
pub use error::{Result, StorageError};
pub use log::{is_log_dir, AppendInfo, EpochEntry, Log, LogRead, ReadChunk, RecoveryStats};
pub use valid_batch::ValidBatch;
