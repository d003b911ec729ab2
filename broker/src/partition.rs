//! One partition as its owner shard serves it: the log, plus the wake-up for waiting fetches.
//!
//! Invariants: only the owner shard calls these (they run on its executor); a produce validates
//! every batch of a request before appending any, so a request is appended whole or not at all
//! (barring an I/O failure between batches, which fails the log); the high watermark is the log end
//! (a single node's in-sync set is itself), so consumers see every appended record.

use std::rc::Rc;
use std::time::Instant;

use std::cell::RefCell;

use bytes::BytesMut;
use event_listener::Event;
use glommio::sync::Semaphore;
use mlog_storage::{Log, LogRead, StorageError};
use mlog_wire::protocol::ErrorCode;
use mlog_wire::RecordBatch;

use crate::group_offsets::{Commit, GroupOffsets};

/// A partition's log and its waiting readers.
pub(crate) struct Partition {
    pub log: Rc<Log>,
    /// Whether acks=all waits for an fdatasync (`flush.policy=always`).
    pub sync_on_ack: bool,
    /// Notified after every append, for long-polling fetches.
    pub appended: Event,
    /// For partitions of the internal offsets topic: the groups' committed offsets.
    pub groups: Option<RefCell<GroupOffsets>>,
    /// Serializes commits, so the table applies them in log order.
    pub commit_lock: Semaphore,
}

/// Acknowledgement levels of a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acks {
    None,
    Leader,
    All,
}

impl Acks {
    pub(crate) fn from_i8(v: i8) -> Option<Acks> {
        match v {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        }
    }
}

/// The outcome of a produce to one partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Produced {
    pub error: ErrorCode,
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// What a fetch of one partition found.
pub(crate) struct Fetched {
    pub error: ErrorCode,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub data: LogRead,
}

/// Offsets of one partition for ListOffsets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offsets {
    pub error: ErrorCode,
    pub offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
}

pub(crate) fn storage_error_code(e: &StorageError) -> ErrorCode {
    match e {
        StorageError::InvalidBatch(_) | StorageError::BatchLengthMismatch { .. } => {
            ErrorCode::CorruptBatch
        }
        StorageError::BatchTooLarge { .. } => ErrorCode::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Closed => ErrorCode::ShuttingDown,
        _ => ErrorCode::StorageError,
    }
}

impl Partition {
    /// Appends every batch in `records` (one or more back to back), answering by `acks`. The batches
    /// are split off `records` without copying.
    pub(crate) async fn produce(&self, mut records: BytesMut, acks: Acks) -> Produced {
        let fail = |error| Produced {
            error,
            base_offset: -1,
            log_start_offset: self.log.log_start_offset() as i64,
        };
        // Validate all first: a request is appended whole or refused whole.
        let mut lengths = Vec::new();
        let mut rest = &records[..];
        while !rest.is_empty() {
            match RecordBatch::parse(rest) {
                Ok(b) if b.total_len() > self.log.config().max_batch_bytes => {
                    return fail(ErrorCode::MessageTooLarge)
                }
                Ok(b) => {
                    lengths.push(b.total_len());
                    rest = &rest[b.total_len()..];
                }
                Err(_) => return fail(ErrorCode::CorruptBatch),
            }
        }
        let batches: Vec<BytesMut> = lengths.into_iter().map(|n| records.split_to(n)).collect();
        if batches.is_empty() {
            return fail(ErrorCode::CorruptBatch);
        }
        let mut base_offset = None;
        for batch in batches {
            match self.log.append(batch).await {
                Ok(info) => {
                    base_offset.get_or_insert(info.base_offset);
                    self.log.set_high_watermark(self.log.log_end_offset());
                }
                Err(e) => {
                    self.appended.notify(usize::MAX);
                    return fail(storage_error_code(&e));
                }
            }
        }
        self.appended.notify(usize::MAX);
        if acks == Acks::All && self.sync_on_ack {
            if let Err(e) = self.log.flush().await {
                return fail(storage_error_code(&e));
            }
        }
        Produced {
            error: ErrorCode::None,
            base_offset: base_offset.map_or(-1, |o| o as i64),
            log_start_offset: self.log.log_start_offset() as i64,
        }
    }

    /// Reads from `offset`, up to `max_bytes` (at least one whole batch when there is one).
    pub(crate) async fn fetch(&self, offset: i64, max_bytes: usize) -> Fetched {
        let hw = self.log.high_watermark() as i64;
        let start = self.log.log_start_offset() as i64;
        let fetched = |error, data| Fetched {
            error,
            high_watermark: hw,
            log_start_offset: start,
            data,
        };
        if offset < start || offset > hw {
            return fetched(ErrorCode::OffsetOutOfRange, LogRead::default());
        }
        match self.log.read(offset as u64, max_bytes).await {
            Ok(data) => fetched(ErrorCode::None, data),
            Err(e) => fetched(storage_error_code(&e), LogRead::default()),
        }
    }

    /// Waits until the log end passes `offset` or `deadline` comes.
    pub(crate) async fn wait_for_data(&self, offset: i64, deadline: Instant) {
        let past = || self.log.log_end_offset() as i64 > offset;
        while !past() {
            let listener = self.appended.listen();
            if past() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            futures_lite::future::or(listener, async {
                glommio::timer::sleep(deadline - now).await;
            })
            .await;
        }
    }

    /// Stores `commits` of `group` durably (append + fdatasync), then applies them.
    pub(crate) async fn commit_offsets(&self, group: &str, commits: Vec<Commit>) -> ErrorCode {
        let Some(groups) = &self.groups else {
            return ErrorCode::Unknown;
        };
        let Ok(_permit) = self.commit_lock.acquire_permit(1).await else {
            return ErrorCode::ShuttingDown;
        };
        let batch = match GroupOffsets::batch(group, &commits) {
            Ok(b) => b,
            Err(code) => return code,
        };
        if let Err(e) = self.log.append(batch).await {
            return storage_error_code(&e);
        }
        if let Err(e) = self.log.flush().await {
            return storage_error_code(&e);
        }
        groups.borrow_mut().apply(group, commits);
        ErrorCode::None
    }

    /// A group's committed offsets.
    pub(crate) fn fetch_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, Vec<u32>)>>,
    ) -> Vec<Commit> {
        self.groups
            .as_ref()
            .map(|g| g.borrow().fetch(group, wanted))
            .unwrap_or_default()
    }

    /// The offset ListOffsets asks for: -2 earliest, -1 latest (high watermark), else by timestamp.
    pub(crate) async fn list_offset(&self, timestamp: i64) -> Offsets {
        let offsets = |error, offset| Offsets {
            error,
            offset,
            log_start_offset: self.log.log_start_offset() as i64,
            log_end_offset: self.log.log_end_offset() as i64,
            high_watermark: self.log.high_watermark() as i64,
        };
        match timestamp {
            mlog_wire::protocol::messages::EARLIEST_TIMESTAMP => {
                offsets(ErrorCode::None, self.log.log_start_offset() as i64)
            }
            mlog_wire::protocol::messages::LATEST_TIMESTAMP => {
                offsets(ErrorCode::None, self.log.high_watermark() as i64)
            }
            ts => match self.log.offset_for_timestamp(ts).await {
                Ok(found) => offsets(ErrorCode::None, found.map_or(-1, |o| o as i64)),
                Err(e) => offsets(storage_error_code(&e), -1),
            },
        }
    }
}
