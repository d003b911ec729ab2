//! Storage errors: every I/O failure carries the operation and the path it touched.

use std::path::PathBuf;

use mlog_wire::BatchError;

/// Result alias for the storage crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What went wrong in a partition log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the log was doing ("opening segment", "fdatasync", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An idempotent producer's batch whose sequence numbers are neither the next ones nor those of
    /// one of its last stored batches (a stale resend); nothing was appended.
    #[error("producer {producer_id}: sequence {first_seq}..={last_seq} is out of order")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: i64,
        /// First sequence of the refused batch.
        first_seq: i32,
        /// Last sequence of the refused batch.
        last_seq: i32,
    },
    /// An idempotent producer's batch from an epoch older than the producer's newest; nothing was
    /// appended.
    #[error("producer {producer_id}: epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The producer's newest epoch.
        current: i16,
    },
    /// A batch handed to `append` is not a valid record batch.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A batch is larger than the configured limit.
    #[error("record batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge {
        /// Size of the offered batch.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The batch's length field disagrees with the bytes handed to `append`.
    #[error("batch declares {declared} bytes but {actual} were given")]
    BatchLengthMismatch {
        /// Length from the batch header.
        declared: usize,
        /// Bytes given.
        actual: usize,
    },
    /// Bytes inside the valid range of a segment do not parse (damaged after they were written).
    #[error("corrupt segment {path} at position {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the damage was found.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// A read asked for an offset outside `[log_start_offset, log_end_offset]`.
    #[error("offset {offset} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: u64,
        /// First readable offset.
        log_start: u64,
        /// Next offset to be written.
        log_end: u64,
    },
    /// The data directory holds a file the log does not recognise; refusing to guess.
    #[error("unrecognised file in log directory: {0}")]
    ForeignFile(PathBuf),
    /// A checkpoint file exists but cannot be decoded (bad magic, CRC or length).
    #[error("corrupt checkpoint {path}: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The configuration is inconsistent.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(&'static str),
    /// An earlier write or sync failed; the log refuses further writes until it is reopened
    /// (recovery then restores the longest valid prefix).
    #[error("log is failed after an earlier I/O error: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// A leader epoch went backwards.
    #[error("leader epoch {epoch} is older than the latest epoch {latest}")]
    StaleLeaderEpoch {
        /// The epoch offered.
        epoch: i32,
        /// The newest epoch in the history.
        latest: i32,
    },
}

impl StorageError {
    /// Wraps an I/O error with its operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wraps a glommio error (which already names its path) with the operation.
    pub(crate) fn glommio(
        op: &'static str,
        path: impl Into<PathBuf>,
        err: glommio::GlommioError<()>,
    ) -> Self {
        StorageError::io(op, path, err.into())
    }
}

/// Shorthand for mapping `std::io::Error` results.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| StorageError::io(op, path, e))
    }
}

impl<T> IoContext<T> for glommio::Result<T, ()> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| StorageError::glommio(op, path, e))
    }
}
