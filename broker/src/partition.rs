//! One partition as its owner shard serves it: the log, plus the wake-up for waiting fetches.
//!
//! Invariants: only the owner shard calls these (they run on its executor). A produce validates
//! every batch of a request before appending any, and rolls back what it appended if a later batch
//! fails, so a request is appended whole or not at all. Consumers read only below the high
//! watermark: on `flush.policy=always` topics that is the flushed (durable) offset, so no consumer
//! ever sees, and commits past, a record a crash could still take back; elsewhere it is the log end
//! (a single node is its own in-sync set).

use std::rc::Rc;
use std::time::Instant;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use event_listener::Event;
use glommio::sync::Semaphore;
use mlog_storage::{Log, LogRead, StorageError, ValidBatch};
use mlog_wire::peek_total_len;
use mlog_wire::protocol::ErrorCode;

use crate::group_offsets::{Commit, GroupOffsets};

/// A partition's log and its waiting readers.
pub(crate) struct Partition {
    pub log: Rc<Log>,
    /// Whether acks=all waits for a sync to disk (`flush.policy=always`).
    pub sync_on_ack: bool,
    /// Notified after every append, for long-polling fetches.
    pub appended: Event,
    /// For partitions of the internal offsets topic: the groups' committed offsets.
    pub groups: Option<RefCell<GroupOffsets>>,
    /// Serializes commits, so the table applies them in log order.
    pub commit_lock: Semaphore,
    /// Serializes produce requests' appends, so a request's batches are contiguous and rolling
    /// them back can never take another request's batches with them.
    pub produce_lock: Semaphore,
    /// Where the request appending now started: the high watermark stays below it until the request
    /// is appended whole, so no consumer can read batches that a failed append rolls back.
    pub appending_from: Cell<Option<u64>>,
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
        StorageError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
        StorageError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
        _ => ErrorCode::StorageError,
    }
}

/// Marks a request as appending (see `Partition::appending_from`) until dropped, also when the
/// request's future is.
struct Appending<'a>(&'a Cell<Option<u64>>);

impl<'a> Appending<'a> {
    fn start(cell: &'a Cell<Option<u64>>, from: u64) -> Self {
        cell.set(Some(from));
        Appending(cell)
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

impl Partition {
    /// Appends every batch in `records` (one or more back to back), answering by `acks`. The batches
    /// are split off `records` without copying.
    pub(crate) async fn produce(self: &Rc<Self>, mut records: BytesMut, acks: Acks) -> Produced {
        let fail = |error| Produced {
            error,
            base_offset: -1,
            log_start_offset: self.log.log_start_offset() as i64,
        };
        // Check all first (each batch once, every record): a request is appended whole or refused
        // whole.
        let mut batches = Vec::new();
        while !records.is_empty() {
            let len = match peek_total_len(&records) {
                Ok(Some(len)) if len <= records.len() => len,
                _ => return fail(ErrorCode::CorruptBatch),
            };
            if len > self.log.config().max_batch_bytes {
                return fail(ErrorCode::MessageTooLarge);
            }
            match ValidBatch::check_records(records.split_to(len)) {
                Ok(batch) => batches.push(batch),
                Err(_) => return fail(ErrorCode::CorruptBatch),
            }
        }
        if batches.is_empty() {
            return fail(ErrorCode::CorruptBatch);
        }
        let Ok(permit) = self.produce_lock.acquire_permit(1).await else {
            return fail(ErrorCode::ShuttingDown);
        };
        // Under produce_lock: the log cannot change between this check and the appends.
        if let Err(e) = self.log.check_batches(&batches) {
            return fail(storage_error_code(&e));
        }
        let start = self.log.log_end_offset();
        let mut base_offset = None;
        {
            let _appending = Appending::start(&self.appending_from, start);
            for batch in batches {
                match self.log.append_valid(batch).await {
                    Ok(info) => {
                        base_offset.get_or_insert(info.base_offset);
                    }
                    Err(e) => {
                        if self.log.log_end_offset() > start {
                            // Undo what this request appended (a failed append may have applied
                            // its batch, too): the client is told nothing was stored, so nothing
                            // may be (a retry would duplicate it).
                            if let Err(undo) = self.log.truncate_suffix(start).await {
                                tracing::error!(error = %undo, "rolling back a partial produce failed; the partition refuses writes until the broker restarts");
                            }
                        }
                        return fail(storage_error_code(&e));
                    }
                }
            }
        }
        drop(permit);
        if !self.sync_on_ack {
            self.advance_high_watermark(self.log.log_end_offset());
        } else if acks == Acks::All {
            if let Err(e) = self.log.flush().await {
                return fail(storage_error_code(&e));
            }
            self.advance_high_watermark(self.log.flushed_offset());
        } else {
            // acks=1 on a synced topic: answer now, make the records visible once a sync covered
            // them (group commit shares that sync with every other producer of the partition).
            let me = self.clone();
            glommio::spawn_local(async move {
                if me.log.flush().await.is_ok() {
                    me.advance_high_watermark(me.log.flushed_offset());
                }
            })
            .detach();
        }
        Produced {
            error: ErrorCode::None,
            base_offset: base_offset.map_or(-1, |o| o as i64),
            log_start_offset: self.log.log_start_offset() as i64,
        }
    }

    /// Raises the high watermark (never past the log end, nor into a request still appending) and
    /// wakes waiting fetches.
    fn advance_high_watermark(&self, offset: u64) {
        let offset = self
            .appending_from
            .get()
            .map_or(offset, |start| offset.min(start));
        if offset > self.log.high_watermark() {
            self.log.set_high_watermark(offset);
            self.appended.notify(usize::MAX);
        }
    }

    /// Reads committed batches (below the high watermark) from `offset`, up to `max_bytes` (at
    /// least one whole batch when there is one). `None` for `max_bytes` reads nothing: the answer
    /// then carries only the offsets.
    pub(crate) async fn fetch(&self, offset: i64, max_bytes: Option<usize>) -> Fetched {
        let hw = self.log.high_watermark() as i64;
        let start = self.log.log_start_offset() as i64;
        let end = self.log.log_end_offset() as i64;
        let fetched = |error, data| Fetched {
            error,
            high_watermark: hw,
            log_start_offset: start,
            data,
        };
        if offset < start || offset > end {
            return fetched(ErrorCode::OffsetOutOfRange, LogRead::default());
        }
        let Some(max_bytes) = max_bytes.filter(|_| offset < hw) else {
            return fetched(ErrorCode::None, LogRead::default());
        };
        match self.log.read(offset as u64, max_bytes).await {
            Ok(mut data) => {
                data.keep_below(hw as u64);
                fetched(ErrorCode::None, data)
            }
            Err(e) => fetched(storage_error_code(&e), LogRead::default()),
        }
    }

    /// Waits until the high watermark of any of `parts` (each with the watermark its reader saw)
    /// is above what was seen, `deadline`, `cancelled`, or the broker stopping. Data that arrived
    /// after the read but before this call ends the wait at once: the listeners are registered
    /// before the watermarks are compared.
    pub(crate) async fn wait_for_any(
        parts: &[(Rc<Partition>, i64)],
        deadline: Instant,
        stopping: &AtomicBool,
        cancelled: &AtomicBool,
    ) {
        let mut listeners: Vec<_> = parts.iter().map(|(p, _)| p.appended.listen()).collect();
        let risen = || {
            parts
                .iter()
                .any(|(p, seen)| p.log.high_watermark() as i64 > *seen)
        };
        if risen() || Instant::now() >= deadline {
            return;
        }
        let any_append = std::future::poll_fn(|cx| {
            if listeners
                .iter_mut()
                .any(|l| std::pin::Pin::new(l).poll(cx).is_ready())
            {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        let over = async {
            let step = crate::shard::STOP_POLL;
            while Instant::now() < deadline
                && !stopping.load(Ordering::Acquire)
                && !cancelled.load(Ordering::Acquire)
            {
                glommio::timer::sleep(step.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        };
        futures_lite::future::or(any_append, over).await;
    }

    /// Stores `commits` of `group` durably (append + sync), then applies them.
    pub(crate) async fn commit_offsets(
        &self,
        group: &str,
        commits: Vec<Commit>,
        exists: impl Fn(&str) -> bool,
    ) -> ErrorCode {
        let Some(groups) = &self.groups else {
            return ErrorCode::Unknown;
        };
        let Ok(_permit) = self.commit_lock.acquire_permit(1).await else {
            return ErrorCode::ShuttingDown;
        };
        // Checked again under the lock the deleted-topic pass takes (`forget_deleted_topics`): a
        // topic deleted since the request was checked must not have offsets stored after that pass.
        if commits.iter().any(|(topic, ..)| !exists(topic)) {
            return ErrorCode::UnknownTopicOrPartition;
        }
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
        // The commit is durable and answered as such whatever compaction does: a failed one leaves
        // a log that still replays to the table (see `group_offsets`).
        if let Err(e) = self.compact_offsets(groups).await {
            tracing::warn!(error = %e, "compacting the group offsets failed");
        }
        ErrorCode::None
    }

    /// (Internal offsets partitions, under `commit_lock`) Compacts the log when due, as
    /// `group_offsets` describes: once it holds a sealed segment and at least as many records came
    /// since the last compaction as the table has entries. The commit that makes it due waits for
    /// it: one write of the table, once per segment of commits at most.
    async fn compact_offsets(&self, groups: &RefCell<GroupOffsets>) -> Result<(), String> {
        let from = self.log.log_end_offset();
        let snapshot = {
            let table = groups.borrow();
            let since = from.saturating_sub(table.compacted_upto);
            if self.log.segment_bases().len() < 2 || since < table.len() as u64 {
                return Ok(());
            }
            table.snapshot().map_err(|code| code.to_string())?
        };
        // Counted as done (the table's records appended) before any step may fail: a failing one is
        // tried again only after another table's worth of commits, not at every commit.
        {
            let mut table = groups.borrow_mut();
            table.compacted_upto = from + table.len() as u64;
        }
        for batch in snapshot {
            self.log.append(batch).await.map_err(|e| e.to_string())?;
        }
        self.log.flush().await.map_err(|e| e.to_string())?;
        let deleted = self
            .log
            .delete_before(from)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            entries = groups.borrow().len(),
            segments_deleted = deleted,
            log_start = from,
            "compacted the group offsets"
        );
        Ok(())
    }

    /// (Partitions of the internal offsets topic) Removes the committed offsets of topics for which
    /// `exists` is false: tombstones appended and fdatasynced, then the entries dropped. Returns how
    /// many went.
    pub(crate) async fn forget_deleted_topics(
        &self,
        exists: impl Fn(&str) -> bool,
    ) -> Result<usize, String> {
        let Some(groups) = &self.groups else {
            return Ok(0);
        };
        let Ok(_permit) = self.commit_lock.acquire_permit(1).await else {
            return Err("shutting down".into());
        };
        let entries = groups.borrow().of_missing_topics(exists);
        if entries.is_empty() {
            return Ok(0);
        }
        let batches = GroupOffsets::tombstones(&entries).map_err(|code| code.to_string())?;
        for batch in batches {
            self.log.append(batch).await.map_err(|e| e.to_string())?;
        }
        self.log.flush().await.map_err(|e| e.to_string())?;
        groups.borrow_mut().remove(&entries);
        Ok(entries.len())
    }

    /// A group's committed offsets.
    pub(crate) fn fetch_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, Vec<u32>)>>,
    ) -> Option<Vec<Commit>> {
        self.groups
            .as_ref()
            .map(|g| g.borrow().fetch(group, wanted))
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
            ts if ts < 0 => offsets(ErrorCode::InvalidRequest, -1),
            // Only committed records are found (Kafka searches below the high watermark too): an
            // offset past it could still be rolled back.
            ts => match self.log.offset_for_timestamp(ts).await {
                Ok(found) => {
                    let hw = self.log.high_watermark();
                    let committed = found.filter(|o| *o < hw);
                    offsets(ErrorCode::None, committed.map_or(-1, |o| o as i64))
                }
                Err(e) => offsets(storage_error_code(&e), -1),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use glommio::{LocalExecutorBuilder, Placement};
    use mlog_storage::{FlushPolicy, LogConfig};
    use mlog_wire::{NewRecord, RecordBatchBuilder};

    use super::*;

    /// A partition (not synced on ack) on a log in `dir` with 1 MiB segments; with `groups`, one of
    /// the offsets topic, its table replayed from the log.
    async fn test_partition(dir: &std::path::Path, groups: bool) -> Partition {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            preallocate_bytes: 1 << 20,
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        };
        let log = Log::open(dir, config).await.unwrap();
        let groups = match groups {
            true => Some(RefCell::new(GroupOffsets::replay(&log).await.unwrap())),
            false => None,
        };
        Partition {
            log,
            sync_on_ack: false,
            appended: Event::new(),
            groups,
            commit_lock: Semaphore::new(1),
            produce_lock: Semaphore::new(1),
            appending_from: Cell::new(None),
        }
    }

    #[test]
    fn a_wait_returns_at_once_for_data_that_arrived_before_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .unwrap();
        ex.run(async {
            let partition = Rc::new(test_partition(dir.path(), false).await);
            let mut batch = RecordBatchBuilder::new();
            batch.push(NewRecord::new(0, None, Some(b"v"))).unwrap();
            let records = BytesMut::from(&batch.build().unwrap()[..]);
            // A reader saw watermark 0; the append lands before its wait begins.
            let produced = partition.produce(records, Acks::Leader).await;
            assert_eq!(
                (produced.error, partition.log.high_watermark()),
                (ErrorCode::None, 1)
            );
            let (stopping, cancelled) = (AtomicBool::new(false), Rc::new(AtomicBool::new(false)));
            let start = Instant::now();
            let deadline = start + Duration::from_secs(30);
            let parts = [(partition.clone(), 0)];
            Partition::wait_for_any(&parts, deadline, &stopping, &cancelled).await;
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{:?}",
                start.elapsed()
            );
            // Nothing new since the watermark seen: the wait lasts until it is cancelled.
            let canceller = cancelled.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(200)).await;
                canceller.store(true, Ordering::Release);
            })
            .detach();
            let parts = [(partition.clone(), 1)];
            Partition::wait_for_any(&parts, deadline, &stopping, &cancelled).await;
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_millis(200) && waited < Duration::from_secs(10),
                "{waited:?}"
            );
            partition.log.close().await.unwrap();
        });
    }

    #[test]
    fn offsets_compaction_bounds_the_log_and_keeps_every_stored_offset() {
        let dir = tempfile::tempdir().unwrap();
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .unwrap();
        ex.run(async {
            let open = || test_partition(dir.path(), true);
            let stored =
                |p: &Partition| ["idle", "busy"].map(|g| p.fetch_offsets(g, None).unwrap());
            let exists = |_: &str| true;
            let partition = open().await;
            // Stored once, at the start: only a compaction's snapshot can keep it once its
            // segment goes. And offsets of a deleted topic, removed by tombstones.
            let idle = vec![("t".to_string(), 7, 70, "kept".to_string())];
            assert_eq!(
                partition.commit_offsets("idle", idle, exists).await,
                ErrorCode::None
            );
            let gone = vec![("gone".to_string(), 0, 5, String::new())];
            assert_eq!(
                partition.commit_offsets("busy", gone, exists).await,
                ErrorCode::None
            );
            assert_eq!(
                partition.forget_deleted_topics(|t| t != "gone").await,
                Ok(1)
            );
            // 200 commits of 20 offsets with 2 KiB of metadata each: ~8 MiB, 8 segments' worth.
            for round in 0..200i64 {
                let commits = (0..20)
                    .map(|p| {
                        (
                            "t".to_string(),
                            p,
                            round,
                            format!("{round}{}", "m".repeat(2048)),
                        )
                    })
                    .collect();
                assert_eq!(
                    partition.commit_offsets("busy", commits, exists).await,
                    ErrorCode::None
                );
            }
            let log = &partition.log;
            assert!(log.log_start_offset() > 0, "no compaction ran");
            // Without compaction the log would hold all ~8 MiB; with it, at most two segments plus
            // a snapshot.
            assert!(log.size_bytes() < 3 << 20, "{} bytes", log.size_bytes());
            let expected = stored(&partition);
            assert_eq!(
                expected[0],
                vec![("t".to_string(), 7, 70, "kept".to_string())]
            );
            assert_eq!(expected[1].len(), 20);
            assert!(expected[1]
                .iter()
                .all(|(t, _, o, m)| t == "t" && *o == 199 && m.starts_with("199m")));
            // What is stored is what the log replays to, also after a reopen.
            partition.log.close().await.unwrap();
            drop(partition);
            let reopened = open().await;
            assert_eq!(stored(&reopened), expected);
            reopened.log.close().await.unwrap();
        });
    }
}
